//! Schemas of the warehouse tables: `traces` (SPEC §2.2), `rejects` and `tracecube.loads`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Timestamp type of every stored instant: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Columns derived at load (SPEC §1.3 and §3.3), in stored order after the input columns.
pub const DERIVED_COLUMNS: [&str; 8] = [
    "life_stage",
    "tenure_year",
    "day",
    "hour",
    "weekday",
    "minute",
    "pain",
    "effort",
];

/// The stored `traces` table: canonical input columns then derived ones. `cost` is stored
/// resolved (never NULL); `abandoned` and `resolved` default to false.
pub fn traces_schema() -> SchemaRef {
    let input = tracecube_datasets::input_schema();
    let mut fields: Vec<Field> = input
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "abandoned" | "resolved" | "cost" => f.as_ref().clone().with_nullable(false),
            _ => f.as_ref().clone(),
        })
        .collect();
    fields.extend([
        Field::new("life_stage", DataType::Utf8, true),
        Field::new("tenure_year", DataType::Int32, true),
        Field::new("day", DataType::Date32, false),
        Field::new("hour", DataType::Int32, false),
        Field::new("weekday", DataType::Int32, false),
        Field::new("minute", timestamp_type(), false),
        Field::new("pain", DataType::Float64, false),
        Field::new("effort", DataType::Float64, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// The experts' weights (SPEC §3.3): one row per weighted axis value.
pub fn weights_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("axis", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("weight", DataType::Float64, false),
    ]))
}

/// Rows a quarantine load rejected, with where they came from and why.
pub fn rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("load_id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("row", DataType::Int64, false),
        Field::new("column", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("rejected_at", timestamp_type(), false),
    ]))
}

/// One row per load attempt: `tracecube.loads`.
pub fn loads_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("load_id", DataType::Utf8, false),
        Field::new("started_at", timestamp_type(), false),
        Field::new("finished_at", timestamp_type(), false),
        Field::new("status", DataType::Utf8, false),
        Field::new("sources", DataType::Utf8, false),
        Field::new("files", DataType::Int64, false),
        Field::new("files_skipped", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("rows_read", DataType::Int64, false),
        Field::new("rows_loaded", DataType::Int64, false),
        Field::new("rows_duplicate", DataType::Int64, false),
        Field::new("rows_rejected", DataType::Int64, false),
        Field::new("traces_version", DataType::Int64, true),
        Field::new("message", DataType::Utf8, true),
    ]))
}
