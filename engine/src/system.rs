//! System tables under schema `tracecube` whose rows are computed at each scan
//! (`tracecube.cubes`, `tracecube.queries`).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// The current rows of a system table.
#[async_trait]
pub trait SystemRows: Debug + Send + Sync + 'static {
    fn schema(&self) -> SchemaRef;
    /// The rows `session` may see.
    async fn rows(&self, session: &dyn Session) -> Result<RecordBatch>;
}

/// A read-only table over [`SystemRows`].
#[derive(Debug)]
pub struct SystemTable<T>(pub T);

#[async_trait]
impl<T: SystemRows> TableProvider for SystemTable<T> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        MemTable::try_new(self.0.schema(), vec![vec![self.0.rows(state).await?]])?
            .scan(state, projection, filters, limit)
            .await
    }
}
