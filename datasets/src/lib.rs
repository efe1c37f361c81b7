//! Tracecube data sets: the shipped taxonomies and a deterministic generator of realistic
//! customer-contact traces (the field's figures it reproduces are checked by `datasets/tests/figures.rs`).

pub mod generator;
pub mod model;
pub mod schema;
pub mod taxonomy;
pub mod writer;

pub use generator::{GenOptions, generate_chunk};
pub use schema::input_schema;
pub use taxonomy::Taxonomy;
pub use writer::{GenSummary, write_parquet};
