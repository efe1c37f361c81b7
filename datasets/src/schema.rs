//! The input trace schema (SPEC §2.1) the generator writes and loaders accept.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Arrow schema of an input trace file, in SPEC §2.1 column order.
pub fn input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("contact_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("channel", DataType::Utf8, false),
        Field::new("declaration", DataType::Utf8, false),
        Field::new("qualification", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("wait_s", DataType::Int32, true),
        Field::new("handle_s", DataType::Int32, true),
        Field::new("abandoned", DataType::Boolean, true),
        Field::new("resolved", DataType::Boolean, true),
        Field::new("csat", DataType::Int16, true),
        Field::new("nps", DataType::Int16, true),
        Field::new("sentiment", DataType::Float32, true),
        Field::new("cost", DataType::Float64, true),
        Field::new("customer_birth_date", DataType::Date32, true),
        Field::new("customer_since", DataType::Date32, true),
        Field::new("agent_id", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
    ]))
}
