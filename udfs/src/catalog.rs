//! Tracecube's functions as PostgreSQL's catalog shows them (`pg_proc`, psql's `\df`,
//! DBeaver's function list), and the catalog functions clients call to describe them:
//! `pg_get_function_arguments`, `pg_get_function_result`, `pg_function_is_visible`,
//! `pg_type_is_visible`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringArray};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

/// One Tracecube function in PostgreSQL's terms.
#[derive(Debug, Clone, Copy)]
pub struct PgFunction {
    pub name: &'static str,
    /// `'f'` function, `'a'` aggregate.
    pub kind: char,
    /// Arguments: name and PostgreSQL type.
    pub args: &'static [(&'static str, &'static str)],
    /// The result type as `pg_get_function_result` prints it.
    pub result: &'static str,
    /// Whether it returns rows (a table function).
    pub returns_set: bool,
}

const fn f(
    name: &'static str,
    args: &'static [(&'static str, &'static str)],
    result: &'static str,
) -> PgFunction {
    PgFunction {
        name,
        kind: 'f',
        args,
        result,
        returns_set: false,
    }
}

const fn agg(
    name: &'static str,
    args: &'static [(&'static str, &'static str)],
    result: &'static str,
) -> PgFunction {
    PgFunction {
        kind: 'a',
        ..f(name, args, result)
    }
}

/// Every Tracecube function (SPEC §3), as `\df` lists them.
pub const FUNCTIONS: &[PgFunction] = &[
    f("path_level", &[("p", "text")], "integer"),
    f("path_prefix", &[("p", "text"), ("n", "integer")], "text"),
    f("path_segment", &[("p", "text"), ("n", "integer")], "text"),
    f(
        "path_is_under",
        &[("p", "text"), ("node", "text")],
        "boolean",
    ),
    f("path_child", &[("p", "text"), ("node", "text")], "text"),
    f("sla_seconds", &[("channel", "text")], "integer"),
    f(
        "impact_weight",
        &[
            ("declaration", "text"),
            ("qualification", "text"),
            ("action", "text"),
            ("channel", "text"),
            ("category", "text"),
        ],
        "double precision",
    ),
    agg("csat", &[("score", "integer")], "double precision"),
    agg("nps", &[("score", "integer")], "double precision"),
    agg(
        "service_level",
        &[
            ("channel", "text"),
            ("wait_s", "integer"),
            ("abandoned", "boolean"),
        ],
        "double precision",
    ),
    agg("aht", &[("handle_s", "integer")], "double precision"),
    agg(
        "impact",
        &[
            ("declaration", "text"),
            ("qualification", "text"),
            ("action", "text"),
            ("channel", "text"),
            ("category", "text"),
            ("effort", "double precision"),
        ],
        "double precision",
    ),
    PgFunction {
        returns_set: true,
        ..f(
            "drilldown",
            &[
                ("axis", "text"),
                ("node", "text"),
                ("from_day", "date"),
                ("to_day", "date"),
            ],
            "TABLE(child text, contacts bigint, share_pct double precision, impact double \
             precision, impact_share_pct double precision, csat_pct double precision, nps \
             double precision, resolved_pct double precision, aht_s double precision, \
             service_level_pct double precision)",
        )
    },
];

/// The oid of the `i`-th function of [`FUNCTIONS`] in `pg_proc`: past PostgreSQL's own.
pub fn oid(i: usize) -> i32 {
    FIRST_OID + i as i32
}

const FIRST_OID: i32 = 900_000;

/// PostgreSQL's oid of a type named as in [`PgFunction::args`].
pub fn type_oid(name: &str) -> i32 {
    match name {
        "boolean" => 16,
        "bigint" => 20,
        "smallint" => 21,
        "integer" => 23,
        "text" => 25,
        "double precision" => 701,
        "date" => 1082,
        "timestamp with time zone" => 1184,
        _ => 2249, // record
    }
}

impl PgFunction {
    /// `p text, n integer`
    pub fn arguments(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|(n, t)| format!("{n} {t}")).collect();
        args.join(", ")
    }
}

/// `pg_get_function_arguments(oid)` or `pg_get_function_result(oid)`: the text of a
/// Tracecube function's arguments or result; NULL for other oids.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Describe {
    name: &'static str,
    signature: Signature,
    result: bool,
}

impl ScalarUDFImpl for Describe {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // the function of an oid is found by its position: oids are FIRST_OID + index
        let describe = |oid: i64| {
            let f = FUNCTIONS.get(usize::try_from(oid - FIRST_OID as i64).ok()?)?;
            Some(if self.result {
                f.result.to_string()
            } else {
                f.arguments()
            })
        };
        map_oids(&args.args[0], args.number_rows, describe)
            .map(|a| ColumnarValue::Array(Arc::new(StringArray::from(a))))
    }
}

/// `pg_function_is_visible(oid)`, `pg_type_is_visible(oid)`: every function and type is
/// in a schema of the search path (`pg_catalog`, `public`) and none is shadowed.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Visible {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for Visible {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let visible = map_oids(&args.args[0], args.number_rows, |_| Some(true))?;
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(visible))))
    }
}

/// `f` of each non-NULL oid (an integer of any width), NULL for NULL.
fn map_oids<T>(
    value: &ColumnarValue,
    rows: usize,
    f: impl Fn(i64) -> Option<T>,
) -> Result<Vec<Option<T>>> {
    let array: ArrayRef = value.to_array(rows)?;
    let oids: Vec<Option<i64>> = match array.data_type() {
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(i64::from))
            .collect(),
        DataType::Int64 => array.as_primitive::<Int64Type>().iter().collect(),
        DataType::Null => vec![None; array.len()],
        other => return exec_err!("an oid must be an integer, not {other}"),
    };
    Ok(oids.into_iter().map(|o| o.and_then(&f)).collect())
}

fn oid_signature() -> Signature {
    Signature::one_of(
        vec![
            TypeSignature::Exact(vec![DataType::Int32]),
            TypeSignature::Exact(vec![DataType::Int64]),
        ],
        Volatility::Stable,
    )
}

/// The catalog functions of this module.
pub fn catalog_functions() -> Vec<ScalarUDF> {
    let describe = |name, result| {
        ScalarUDF::new_from_impl(Describe {
            name,
            signature: oid_signature(),
            result,
        })
    };
    let visible = |name| {
        ScalarUDF::new_from_impl(Visible {
            name,
            signature: oid_signature(),
        })
    };
    vec![
        describe("pg_get_function_arguments", false),
        describe("pg_get_function_result", true),
        visible("pg_function_is_visible"),
        visible("pg_type_is_visible"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Functions, SlaTable, WeightsHandle};
    use datafusion::prelude::SessionContext;
    use std::collections::BTreeSet;

    #[test]
    fn every_registered_function_is_in_the_catalog_with_its_argument_count() {
        let functions = Functions::new(SlaTable::default(), Arc::new(WeightsHandle::default()));
        let mut registered: BTreeSet<&str> = functions.scalars().iter().map(|f| f.name()).collect();
        registered.extend(functions.aggregates().iter().map(|f| f.name()));
        registered.insert("drilldown");
        let listed: BTreeSet<&str> = FUNCTIONS.iter().map(|f| f.name).collect();
        assert_eq!(registered, listed);
        for f in functions.scalars() {
            let listed = FUNCTIONS.iter().find(|p| p.name == f.name()).unwrap();
            let syntax = &f.documentation().unwrap().syntax_example;
            assert_eq!(
                syntax.matches(',').count() + 1,
                listed.args.len(),
                "{syntax}"
            );
        }
    }

    #[tokio::test]
    async fn describe_functions_by_oid() {
        let ctx = SessionContext::new();
        for f in catalog_functions() {
            ctx.register_udf(f);
        }
        let i = FUNCTIONS
            .iter()
            .position(|f| f.name == "path_prefix")
            .unwrap();
        let sql = format!(
            "SELECT pg_get_function_arguments({0}), pg_get_function_result({0}), \
             pg_get_function_result(1), pg_function_is_visible({0}), \
             pg_type_is_visible(NULL)",
            oid(i)
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| p text, n integer"), "{text}");
        assert!(text.contains("| text "), "{text}");
        assert!(text.contains("| true "), "{text}");
    }
}
