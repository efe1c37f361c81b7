//! `tracecube.cubes`: one row per configured cube, as the server serves it now.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Result;
use datafusion::error::DataFusionError;

use super::SystemRows;
use crate::cubes::registry::{CubeRegistry, CubeSnapshot, ServedCube};
use crate::schema::timestamp_type;

/// `tracecube.cubes`: one row per configured cube.
#[derive(Debug)]
pub struct CubesTable {
    registry: Arc<CubeRegistry>,
}

impl CubesTable {
    pub fn new(registry: Arc<CubeRegistry>) -> Self {
        CubesTable { registry }
    }

    fn batch(&self, snapshot: &CubeSnapshot) -> Result<RecordBatch> {
        let cubes = &snapshot.cubes;
        let text = |f: &dyn Fn(&ServedCube) -> Option<String>| -> ArrayRef {
            Arc::new(cubes.iter().map(f).collect::<StringArray>())
        };
        let int = |f: &dyn Fn(&ServedCube) -> Option<i64>| -> ArrayRef {
            Arc::new(cubes.iter().map(f).collect::<Int64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            text(&|c| Some(c.def.name.clone())),
            text(&|c| Some(c.def.definitions().join(", "))),
            text(&|c| {
                c.def
                    .retention
                    .as_ref()
                    .map(|r| format!("{} s on {}", r.seconds, r.column))
            }),
            text(&|c| Some(self.registry.location(c))),
            int(&|c| Some(c.status.rows as i64)),
            int(&|c| Some(c.status.bytes as i64)),
            int(&|c| Some(c.status.files as i64)),
            int(&|c| c.status.traces_version),
            int(&|_| snapshot.traces_version),
            int(&|c| c.memory_bytes.map(|b| b as i64)),
            Arc::new(
                cubes
                    .iter()
                    .map(|c| Some(snapshot.is_fresh(c)))
                    .collect::<BooleanArray>(),
            ),
            Arc::new(
                cubes
                    .iter()
                    .map(|c| c.status.complete_from)
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone("UTC"),
            ),
        ];
        Ok(RecordBatch::try_new(cubes_schema(), columns)?)
    }
}

/// Columns of `tracecube.cubes`.
pub fn cubes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("dimensions", DataType::Utf8, false),
        Field::new("retention", DataType::Utf8, true),
        Field::new("location", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("files", DataType::Int64, false),
        Field::new("source_version", DataType::Int64, true),
        Field::new("traces_version", DataType::Int64, true),
        Field::new("memory_bytes", DataType::Int64, true),
        Field::new("fresh", DataType::Boolean, false),
        Field::new("complete_from", timestamp_type(), true),
    ]))
}

#[async_trait]
impl SystemRows for CubesTable {
    fn schema(&self) -> SchemaRef {
        cubes_schema()
    }

    async fn rows(&self, _session: &dyn datafusion::catalog::Session) -> Result<RecordBatch> {
        self.registry
            .refresh()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.batch(&self.registry.current())
    }
}
