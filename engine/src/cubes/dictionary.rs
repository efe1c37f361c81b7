//! Cubes held in memory as dictionaries (issue 10, point 5).
//!
//! A cube held in memory keeps each low-cardinality text column as a
//! `Dictionary(Int32, <its type>)` array whose values are **one array shared by every
//! batch** ([`encode`]): a key then names the same value in every batch. The rewrite
//! ([`super::rewrite`]) uses that to group per key, not per string:
//!
//! - the group keys that are such columns become one `cube_key(c1, c2, …)`: their
//!   dictionary keys packed into one 64-bit integer, so the aggregate groups on a single
//!   integer instead of comparing path strings;
//! - above the aggregate, `cube_value(packed)` gives back each column's text, once per
//!   group;
//! - `impact` reads the dictionary columns themselves and looks weights up once per
//!   distinct value;
//! - every other use of the column reads `CAST(column AS <its type>)`, the very values
//!   and type the query was planned with.
//!
//! Both functions are internal to plans the rewrite builds; they are not SQL functions.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, UInt64Type};
use datafusion::common::{Column, Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The shared values of a cube's dictionary-encoded columns, by column name.
#[derive(Debug, Default)]
pub struct CubeDictionaries {
    values: HashMap<String, ArrayRef>,
}

impl CubeDictionaries {
    /// The shared values of `column`, when it is dictionary-encoded.
    pub fn values(&self, column: &str) -> Option<&ArrayRef> {
        self.values.get(column)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `cube_key(columns…)`: the keys of the dictionary columns `columns` (names of
    /// this cube's dictionary columns, qualified by `relation`) packed into one integer;
    /// `None` when they cannot all be packed in 64 bits.
    pub fn key(&self, relation: &str, columns: &[String]) -> Option<Expr> {
        let mut radices = Vec::with_capacity(columns.len());
        let mut span = 1u64;
        for c in columns {
            // key + 1, 0 for NULL
            let radix = self.values.get(c)?.len() as u64 + 1;
            span = span.checked_mul(radix)?;
            radices.push(radix);
        }
        let args = columns
            .iter()
            .map(|c| Expr::Column(Column::new(Some(relation), c)))
            .collect();
        Some(ScalarUDF::new_from_impl(CubeKey::new(radices)).call(args))
    }

    /// `cube_value(packed)`: the text of the `i`-th column of the `cube_key` call `key`,
    /// read from `packed` (that call's output).
    pub fn value(&self, key: &Expr, i: usize, packed: Expr) -> Option<Expr> {
        let (columns, radices) = packed_columns(key)?;
        let values = Arc::clone(self.values.get(columns[i])?);
        let stride = radices[..i].iter().product();
        Some(
            ScalarUDF::new_from_impl(CubeValue::new(columns[i], values, stride)).call(vec![packed]),
        )
    }
}

/// Whether `e` is `cube_key(<columns>)`: the columns' names and radices.
pub fn packed_columns(e: &Expr) -> Option<(Vec<&str>, &[u64])> {
    let Expr::ScalarFunction(f) = e else {
        return None;
    };
    let key = f.func.inner().downcast_ref::<CubeKey>()?;
    let columns = f
        .args
        .iter()
        .map(|a| match a {
            Expr::Column(c) => Some(c.name.as_str()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((columns, &key.radices))
}

/// The most values a cube dictionary holds: a function that resolves something per
/// distinct value (`impact`'s weights) does it once per batch over all of them.
const MAX_VALUES: usize = 16_384;

/// Text columns of `batches` re-encoded as dictionaries with one values array per column,
/// when a column has at most half as many distinct values as rows (and at most
/// [`MAX_VALUES`]); the new schema, the
/// batches and the shared values.
pub fn encode(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(SchemaRef, Vec<RecordBatch>, CubeDictionaries)> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<Vec<ArrayRef>> = (0..fields.len())
        .map(|i| batches.iter().map(|b| Arc::clone(b.column(i))).collect())
        .collect();
    let mut dictionaries = CubeDictionaries::default();
    for (field, column) in fields.iter_mut().zip(columns.iter_mut()) {
        let value_type = field.data_type().clone();
        if let Some((keys, values)) =
            shared_dictionary(column, &value_type, (rows / 2).min(MAX_VALUES))?
        {
            *column = keys
                .into_iter()
                .map(|k| {
                    let array = DictionaryArray::<Int32Type>::try_new(k, Arc::clone(&values))?;
                    Ok(Arc::new(array) as ArrayRef)
                })
                .collect::<Result<_>>()?;
            *field = Field::new(
                field.name(),
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(value_type)),
                field.is_nullable(),
            );
            dictionaries.values.insert(field.name().clone(), values);
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let batches = (0..batches.len())
        .map(|b| {
            let arrays = columns.iter().map(|c| Arc::clone(&c[b])).collect();
            Ok(RecordBatch::try_new(Arc::clone(&schema), arrays)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((schema, batches, dictionaries))
}

/// The keys of each array of `column` over one shared values array of type `value_type`,
/// when `column` is text with at most `limit` distinct values.
fn shared_dictionary<'c>(
    column: &'c [ArrayRef],
    value_type: &DataType,
    limit: usize,
) -> Result<Option<(Vec<Int32Array>, ArrayRef)>> {
    if !matches!(
        value_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Ok(None);
    }
    let mut index: HashMap<&'c str, i32> = HashMap::new();
    let mut distinct: Vec<&'c str> = Vec::new();
    let mut keys = Vec::with_capacity(column.len());
    for array in column {
        let mut encoded = Vec::with_capacity(array.len());
        let mut push = |v: Option<&'c str>| -> bool {
            let Some(v) = v else {
                encoded.push(None);
                return true;
            };
            let next = distinct.len();
            let key = *index.entry(v).or_insert_with(|| next as i32);
            if key as usize == next {
                distinct.push(v);
            }
            encoded.push(Some(key));
            distinct.len() <= limit
        };
        let fits = match value_type {
            DataType::Utf8 => array.as_string::<i32>().iter().all(&mut push),
            DataType::LargeUtf8 => array.as_string::<i64>().iter().all(&mut push),
            _ => array.as_string_view().iter().all(&mut push),
        };
        if !fits {
            return Ok(None);
        }
        keys.push(Int32Array::from(encoded));
    }
    let values = cast(&StringArray::from(distinct), value_type)?;
    Ok(Some((keys, values)))
}

/// `cube_key(c1, c2, …) → bigint unsigned`: Σ (key(cᵢ) + 1) × Π_{j<i} radixⱼ, with 0 for
/// a NULL key: one integer per distinct combination of the columns' values.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CubeKey {
    signature: Signature,
    radices: Vec<u64>,
}

impl CubeKey {
    fn new(radices: Vec<u64>) -> Self {
        Self {
            signature: Signature::any(radices.len(), Volatility::Immutable),
            radices,
        }
    }
}

impl ScalarUDFImpl for CubeKey {
    fn name(&self) -> &str {
        "cube_key"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut packed = vec![0u64; args.number_rows];
        let mut stride = 1u64;
        for (arg, radix) in args.args.iter().zip(&self.radices) {
            let ColumnarValue::Array(a) = arg else {
                return exec_err!("cube_key: a constant is not a cube dictionary");
            };
            let Some(d) = a.as_dictionary_opt::<Int32Type>() else {
                return exec_err!("cube_key: {} is not a cube dictionary", a.data_type());
            };
            let keys = d.keys();
            match keys.nulls() {
                None => packed
                    .iter_mut()
                    .zip(keys.values())
                    .for_each(|(p, &k)| *p += (k as u64 + 1) * stride),
                Some(nulls) => {
                    for ((p, &k), valid) in packed.iter_mut().zip(keys.values()).zip(nulls) {
                        if valid {
                            *p += (k as u64 + 1) * stride;
                        }
                    }
                }
            }
            stride *= radix;
        }
        Ok(ColumnarValue::Array(Arc::new(UInt64Array::from(packed))))
    }
}

/// `cube_value(packed) → text`: the value of one column of a `cube_key` output.
#[derive(Debug)]
struct CubeValue {
    signature: Signature,
    column: String,
    values: ArrayRef,
    stride: u64,
}

impl CubeValue {
    fn new(column: &str, values: ArrayRef, stride: u64) -> Self {
        Self {
            signature: Signature::exact(vec![DataType::UInt64], Volatility::Immutable),
            column: column.to_string(),
            values,
            stride,
        }
    }
}

impl PartialEq for CubeValue {
    fn eq(&self, other: &Self) -> bool {
        self.column == other.column
            && self.stride == other.stride
            && Arc::ptr_eq(&self.values, &other.values)
    }
}

impl Eq for CubeValue {}

impl Hash for CubeValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.column.hash(state);
        self.stride.hash(state);
        (Arc::as_ptr(&self.values) as *const () as usize).hash(state);
    }
}

impl ScalarUDFImpl for CubeValue {
    fn name(&self) -> &str {
        "cube_value"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(self.values.data_type().clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let packed = args.args[0].to_array(args.number_rows)?;
        let packed = packed.as_primitive::<UInt64Type>();
        let radix = self.values.len() as u64 + 1;
        let keys: UInt32Array = packed
            .iter()
            .map(|p| {
                let k = p? / self.stride % radix;
                (k > 0).then(|| (k - 1) as u32)
            })
            .collect();
        Ok(ColumnarValue::Array(take(&self.values, &keys, None)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringViewArray};

    fn batch(schema: &SchemaRef, names: &[Option<&str>], n: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(StringViewArray::from(names.to_vec())),
                Arc::new(Int64Array::from(n.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn text_columns_share_one_dictionary_across_batches() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("channel", DataType::Utf8View, true),
            Field::new("contacts", DataType::Int64, false),
        ]));
        let batches = vec![
            batch(&schema, &[Some("phone"), Some("chat"), None], &[1, 2, 3]),
            batch(
                &schema,
                &[Some("chat"), Some("phone"), Some("chat")],
                &[4, 5, 6],
            ),
        ];
        let (encoded, batches, dictionaries) = encode(&schema, batches).unwrap();
        assert!(matches!(
            encoded.field(0).data_type(),
            DataType::Dictionary(_, v) if **v == DataType::Utf8View
        ));
        assert_eq!(encoded.field(1).data_type(), &DataType::Int64);
        let values = dictionaries.values("channel").unwrap();
        let keys: Vec<Vec<Option<i32>>> = batches
            .iter()
            .map(|b| {
                let d = b.column(0).as_dictionary::<Int32Type>();
                assert!(Arc::ptr_eq(d.values(), values));
                d.keys().iter().collect()
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                vec![Some(0), Some(1), None],
                vec![Some(1), Some(0), Some(1)]
            ]
        );
        let text = take(values, &Int32Array::from(vec![Some(1), None]), None).unwrap();
        let text: Vec<_> = text.as_string_view().iter().collect();
        assert_eq!(text, vec![Some("chat"), None]);
    }

    /// Grouping on packed keys and reading the text back gives the groups of the text.
    #[tokio::test]
    async fn packed_keys_group_like_the_text_they_stand_for() {
        use datafusion::datasource::MemTable;
        use datafusion::functions_aggregate::expr_fn::sum;
        use datafusion::prelude::{SessionContext, col};
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8View, true),
            Field::new("b", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let text = |v: &[Option<&str>]| Arc::new(StringViewArray::from(v.to_vec())) as ArrayRef;
        let batch = |a: &[Option<&str>], b: &[Option<&str>], n: &[i64]| {
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![text(a), text(b), Arc::new(Int64Array::from(n.to_vec()))],
            )
            .unwrap()
        };
        let x = Some("x");
        let y = Some("y");
        let batches = vec![
            batch(&[x, x, None, y], &[y, y, x, None], &[1, 2, 3, 4]),
            batch(&[None, x, y, y], &[x, x, None, None], &[5, 6, 7, 8]),
        ];
        let (schema, batches, dictionaries) = encode(&schema, batches).unwrap();
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema, vec![batches]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        let columns = ["a".to_string(), "b".to_string()];
        let key = dictionaries.key("t", &columns).unwrap();
        let df = ctx.table("t").await.unwrap();
        let df = df
            .aggregate(vec![key.clone().alias("k")], vec![sum(col("n")).alias("n")])
            .unwrap();
        let a = dictionaries.value(&key, 0, col("k")).unwrap().alias("a");
        let b = dictionaries.value(&key, 1, col("k")).unwrap().alias("b");
        let df = df.select(vec![a, b, col("n")]).unwrap();
        let mut groups: Vec<String> = df
            .collect()
            .await
            .unwrap()
            .iter()
            .flat_map(|batch| {
                let a = batch.column(0).as_string_view().clone();
                let b = batch.column(1).as_string_view().clone();
                let n = batch
                    .column(2)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .clone();
                (0..batch.num_rows())
                    .map(|r| {
                        let t = |s: &StringViewArray| {
                            if s.is_null(r) {
                                "∅".to_string()
                            } else {
                                s.value(r).to_string()
                            }
                        };
                        format!("{}|{}|{}", t(&a), t(&b), n.value(r))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        groups.sort();
        assert_eq!(groups, vec!["x|x|6", "x|y|3", "y|∅|19", "∅|x|8"]);
    }

    #[test]
    fn high_cardinality_text_stays_plain() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batches = vec![batch(
            &schema,
            &[Some("a"), Some("b"), Some("c")],
            &[1, 2, 3],
        )];
        let (encoded, _, dictionaries) = encode(&schema, batches).unwrap();
        assert_eq!(encoded.field(0).data_type(), &DataType::Utf8View);
        assert!(dictionaries.is_empty());
    }
}
