//! Validation and canonicalisation of source rows into the input schema (SPEC §1.1, §1.2,
//! §2.1): types are converted, paths trimmed, tokens lower-cased, ranges checked. Each bad
//! row is reported once, with its row number in the file, the column, the value and why.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, StringBuilder,
    new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int16Type, Int32Type, Schema, SchemaRef,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Columns a source must have.
pub const REQUIRED_COLUMNS: [&str; 5] =
    ["contact_id", "customer_id", "ts", "channel", "declaration"];
/// Channels SPEC §1.2 names; others are accepted when they match the token pattern.
pub const KNOWN_CHANNELS: [&str; 9] = [
    "phone", "email", "chat", "social", "mail", "store", "app", "web", "bot",
];
/// Contact categories (SPEC §1.2).
pub const CATEGORIES: [&str; 4] = ["help", "selfcare", "avoidable", "mandatory"];
/// Limits of a path (SPEC §1.1).
pub const MAX_PATH_SEGMENTS: usize = 4;
pub const MAX_PATH_BYTES: usize = 200;

/// Why one source row was rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// 1-based row number in the source file (data rows, header excluded).
    pub row: u64,
    pub column: Option<String>,
    pub value: Option<String>,
    pub reason: String,
    /// The whole source row as a JSON object of its displayed values.
    pub record: String,
}

/// A batch split into its canonical good rows and its rejected rows.
pub struct Validated {
    pub good: RecordBatch,
    pub rejected: Vec<RowError>,
}

/// Canonicalise a path: trim each `/`-separated segment; reject empty segments, more than
/// four segments or more than 200 bytes.
pub fn canonical_path(raw: &str) -> Result<String, String> {
    let segments: Vec<&str> = raw.split('/').map(str::trim).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(if raw.trim().is_empty() {
            "empty path".to_string()
        } else {
            "empty path segment (leading, trailing or doubled '/')".to_string()
        });
    }
    if segments.len() > MAX_PATH_SEGMENTS {
        return Err(format!(
            "{} segments, at most {MAX_PATH_SEGMENTS} allowed",
            segments.len()
        ));
    }
    let path = segments.join("/");
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "{} bytes, at most {MAX_PATH_BYTES} allowed",
            path.len()
        ));
    }
    Ok(path)
}

/// Canonicalise a channel token: trimmed, lower-cased, `[a-z][a-z0-9_]{0,31}`.
pub fn canonical_channel(raw: &str) -> Result<String, String> {
    let token = raw.trim().to_ascii_lowercase();
    let mut chars = token.chars();
    let ok = token.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(token)
    } else {
        Err("channel must match [a-z][a-z0-9_]{0,31}".to_string())
    }
}

/// Canonicalise a contact category: trimmed, lower-cased, one of the four.
pub fn canonical_category(raw: &str) -> Result<String, String> {
    let token = raw.trim().to_ascii_lowercase();
    if CATEGORIES.contains(&token.as_str()) {
        Ok(token)
    } else {
        Err(format!("category must be one of {}", CATEGORIES.join(", ")))
    }
}

/// Validates source batches against the input schema.
pub struct Validator {
    target: SchemaRef,
    /// The target schema with every column nullable.
    staging: SchemaRef,
    cast: CastOptions<'static>,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    /// A validator for the input schema of SPEC §2.1.
    pub fn new() -> Self {
        let target = tracecube_datasets::input_schema();
        let staging = Arc::new(Schema::new(
            target
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        Validator {
            target,
            staging,
            cast: CastOptions {
                safe: true,
                format_options: FormatOptions::default(),
            },
        }
    }

    /// Input columns missing from `schema` that are required, and columns that are not
    /// input columns (to be ignored with a warning).
    pub fn check_columns(&self, schema: &SchemaRef) -> (Vec<String>, Vec<String>) {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let missing = REQUIRED_COLUMNS
            .iter()
            .filter(|c| !names.contains(c))
            .map(|c| c.to_string())
            .collect();
        let extra = names
            .iter()
            .filter(|n| self.target.field_with_name(n).is_err())
            .map(|n| n.to_string())
            .collect();
        (missing, extra)
    }

    /// Validate `batch`, whose first row is row `first_row` (1-based) of the source.
    pub fn validate(&self, batch: &RecordBatch, first_row: u64) -> Validated {
        let n = batch.num_rows();
        let mut errors: Vec<Option<(String, Option<String>, String)>> = vec![None; n];
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.target.fields().len());
        for field in self.target.fields() {
            let Some(raw) = batch.column_by_name(field.name()) else {
                columns.push(new_null_array(field.data_type(), n));
                continue;
            };
            let mut column = match cast_with_options(raw, field.data_type(), &self.cast) {
                Ok(c) => c,
                Err(e) => {
                    // The whole column is of a type that cannot be converted.
                    let reason = format!(
                        "cannot convert {} to {}: {e}",
                        raw.data_type(),
                        field.data_type()
                    );
                    for (i, slot) in errors.iter_mut().enumerate() {
                        if slot.is_none() {
                            *slot = Some((field.name().clone(), display(raw, i), reason.clone()));
                        }
                    }
                    columns.push(new_null_array(field.data_type(), n));
                    continue;
                }
            };
            for (i, slot) in errors.iter_mut().enumerate() {
                if raw.is_valid(i) && column.is_null(i) && slot.is_none() {
                    *slot = Some((
                        field.name().clone(),
                        display(raw, i),
                        format!("not a valid {}", type_name(field.data_type())),
                    ));
                }
            }
            let mut check = |i: usize, reason: String| {
                if errors[i].is_none() {
                    errors[i] = Some((field.name().clone(), display(raw, i), reason));
                }
            };
            match field.name().as_str() {
                "declaration" | "qualification" | "action" => {
                    column = canonicalise_strings(&column, canonical_path, &mut check);
                }
                "channel" => column = canonicalise_strings(&column, canonical_channel, &mut check),
                "category" => {
                    column = canonicalise_strings(&column, canonical_category, &mut check)
                }
                "contact_id" | "customer_id" => {
                    let a = column.as_string::<i32>();
                    for i in 0..n {
                        if a.is_valid(i) && a.value(i).trim().is_empty() {
                            check(i, "must not be empty".into());
                        }
                    }
                }
                "wait_s" | "handle_s" => {
                    let a = column.as_primitive::<Int32Type>();
                    for i in 0..n {
                        if a.is_valid(i) && a.value(i) < 0 {
                            check(i, "must be >= 0".into());
                        }
                    }
                }
                "csat" | "nps" => {
                    let (lo, hi) = if field.name() == "csat" {
                        (1, 5)
                    } else {
                        (0, 10)
                    };
                    let a = column.as_primitive::<Int16Type>();
                    for i in 0..n {
                        if a.is_valid(i) && !(lo..=hi).contains(&a.value(i)) {
                            check(i, format!("must be between {lo} and {hi}"));
                        }
                    }
                }
                "sentiment" => {
                    let a = column.as_primitive::<Float32Type>();
                    for i in 0..n {
                        if a.is_valid(i) && !(-1.0..=1.0).contains(&a.value(i)) {
                            check(i, "must be between -1 and 1".into());
                        }
                    }
                }
                "cost" => {
                    let a = column.as_primitive::<Float64Type>();
                    for i in 0..n {
                        if a.is_valid(i) && !(a.value(i).is_finite() && a.value(i) >= 0.0) {
                            check(i, "must be a finite number >= 0".into());
                        }
                    }
                }
                _ => {}
            }
            if !field.is_nullable() {
                for (i, slot) in errors.iter_mut().enumerate() {
                    if column.is_null(i) && slot.is_none() {
                        *slot = Some((
                            field.name().clone(),
                            None,
                            "required value is missing".into(),
                        ));
                    }
                }
            }
            columns.push(column);
        }
        let mut keep = BooleanBufferBuilder::new(n);
        let mut rejected = Vec::new();
        for (i, e) in errors.into_iter().enumerate() {
            keep.append(e.is_none());
            if let Some((column, value, reason)) = e {
                rejected.push(RowError {
                    row: first_row + i as u64,
                    column: Some(column),
                    value,
                    reason,
                    record: record_json(batch, i),
                });
            }
        }
        // Bad rows may hold NULLs in required columns until they are filtered out.
        let staging = RecordBatch::try_new(self.staging.clone(), columns)
            .expect("columns were cast to the input types");
        let good = if rejected.is_empty() {
            staging
        } else {
            filter_record_batch(&staging, &BooleanArray::new(keep.finish(), None))
                .expect("mask has one entry per row")
        };
        let good = RecordBatch::try_new(self.target.clone(), good.columns().to_vec())
            .expect("rows with a missing required value were rejected");
        Validated { good, rejected }
    }
}

/// Apply `canon` once per distinct value of a string column (paths and tokens repeat).
fn canonicalise_strings(
    column: &ArrayRef,
    canon: fn(&str) -> Result<String, String>,
    check: &mut impl FnMut(usize, String),
) -> ArrayRef {
    let a = column.as_string::<i32>();
    let mut memo: HashMap<&str, Result<String, String>> = HashMap::new();
    let mut out = StringBuilder::with_capacity(a.len(), a.value_data().len());
    for i in 0..a.len() {
        if a.is_null(i) {
            out.append_null();
            continue;
        }
        let v = a.value(i);
        match memo.entry(v).or_insert_with(|| canon(v)) {
            Ok(s) => out.append_value(s),
            Err(reason) => {
                check(i, reason.clone());
                out.append_null();
            }
        }
    }
    Arc::new(out.finish())
}

fn type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Utf8 => "text",
        DataType::Int16 | DataType::Int32 => "integer",
        DataType::Float32 | DataType::Float64 => "number",
        DataType::Boolean => "boolean",
        DataType::Date32 => "date (YYYY-MM-DD)",
        DataType::Timestamp(..) => "timestamp (e.g. 2026-03-01T09:30:00Z)",
        _ => "value",
    }
}

fn display(array: &ArrayRef, i: usize) -> Option<String> {
    if array.is_null(i) {
        return None;
    }
    ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
        .ok()
        .map(|f| f.value(i).to_string())
}

/// The source row `i` as a JSON object of displayed values, so a rejected row keeps all it had.
fn record_json(batch: &RecordBatch, i: usize) -> String {
    let map: serde_json::Map<String, serde_json::Value> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let v = display(c, i).map_or(serde_json::Value::Null, serde_json::Value::String);
            (f.name().clone(), v)
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;

    #[test]
    fn paths_are_trimmed_and_limits_enforced() {
        assert_eq!(
            canonical_path(" Delivery / Tracking ").unwrap(),
            "Delivery/Tracking"
        );
        assert_eq!(canonical_path("A/B/C/D").unwrap(), "A/B/C/D");
        assert!(
            canonical_path("A/B/C/D/E")
                .unwrap_err()
                .contains("5 segments")
        );
        assert!(canonical_path("/A").is_err());
        assert!(canonical_path("A/").is_err());
        assert!(canonical_path("A//B").is_err());
        assert!(canonical_path("").unwrap_err().contains("empty path"));
        assert!(
            canonical_path(&"x".repeat(201))
                .unwrap_err()
                .contains("201 bytes")
        );
        assert_eq!(canonical_path("Case/Kept").unwrap(), "Case/Kept");
    }

    #[test]
    fn channel_tokens_are_lowercased_and_checked() {
        assert_eq!(canonical_channel(" Phone ").unwrap(), "phone");
        assert_eq!(canonical_channel("whatsapp_2").unwrap(), "whatsapp_2");
        assert!(canonical_channel("2fa").is_err());
        assert!(canonical_channel("a-b").is_err());
        assert!(canonical_channel(&"a".repeat(33)).is_err());
    }

    fn text_batch(columns: &[(&str, Vec<Option<&str>>)]) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, true))
            .collect();
        let arrays: Vec<ArrayRef> = columns
            .iter()
            .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as ArrayRef)
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    #[test]
    fn bad_rows_name_row_column_and_value() {
        let batch = text_batch(&[
            (
                "contact_id",
                vec![Some("c1"), Some("c2"), Some("c3"), Some("c4")],
            ),
            (
                "customer_id",
                vec![Some("u1"), Some("u1"), Some("u2"), Some("u3")],
            ),
            (
                "ts",
                vec![
                    Some("2026-01-05T10:00:00Z"),
                    Some("yesterday"),
                    Some("2026-01-05 11:00:00"),
                    Some("2026-01-05T10:00:00Z"),
                ],
            ),
            (
                "channel",
                vec![Some("Phone"), Some("chat"), Some("email"), Some("chat")],
            ),
            (
                "declaration",
                vec![
                    Some(" Delivery / Late "),
                    Some("A"),
                    Some("A//B"),
                    Some("A"),
                ],
            ),
            ("csat", vec![None, None, None, Some("9")]),
        ]);
        let v = Validator::new().validate(&batch, 10);
        assert_eq!(v.good.num_rows(), 1);
        let good_decl = v
            .good
            .column_by_name("declaration")
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_string();
        assert_eq!(good_decl, "Delivery/Late");
        assert_eq!(
            v.good
                .column_by_name("channel")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "phone"
        );
        let rows: Vec<(u64, &str)> = v
            .rejected
            .iter()
            .map(|e| (e.row, e.column.as_deref().unwrap()))
            .collect();
        assert_eq!(rows, vec![(11, "ts"), (12, "declaration"), (13, "csat")]);
        assert_eq!(v.rejected[0].value.as_deref(), Some("yesterday"));
        assert_eq!(v.rejected[2].reason, "must be between 1 and 5");
        assert!(v.rejected[0].record.contains("\"contact_id\":\"c2\""));
    }

    #[test]
    fn missing_required_and_extra_columns_are_reported() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("contact_id", DataType::Utf8, true),
            Field::new("colour", DataType::Int64, true),
        ]));
        let (missing, extra) = Validator::new().check_columns(&schema);
        assert_eq!(missing, vec!["customer_id", "ts", "channel", "declaration"]);
        assert_eq!(extra, vec!["colour"]);
        let _ = Int64Array::from(vec![1]);
    }
}
