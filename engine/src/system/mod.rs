//! The system tables, schema `tracecube` of the catalog: `tracecube.loads` (the load
//! history, a warehouse table), and `tracecube.cubes` and `tracecube.queries`, whose rows
//! are computed at each scan from the server's state.

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
use datafusion::prelude::SessionContext;

use crate::cubes::registry::CubeRegistry;
use cubes::CubesTable;
use queries::{QueriesTable, QueryLog};

pub mod cubes;
pub mod queries;

/// Name of the schema of the system tables.
pub const SYSTEM_SCHEMA: &str = "tracecube";

/// Register the schema `tracecube` in `ctx`'s catalog `catalog`, with `loads` (the load
/// history table), the cubes of `registry` and the queries of `log`.
pub fn register(
    ctx: &SessionContext,
    catalog: &str,
    loads: Arc<dyn TableProvider>,
    registry: Arc<CubeRegistry>,
    log: Arc<QueryLog>,
) -> Result<()> {
    let schema = Arc::new(datafusion::catalog::MemorySchemaProvider::new());
    let Some(catalog) = ctx.catalog(catalog) else {
        return datafusion::common::plan_err!("no catalog {catalog}");
    };
    catalog.register_schema(SYSTEM_SCHEMA, Arc::clone(&schema) as _)?;
    use datafusion::catalog::SchemaProvider;
    schema.register_table("loads".into(), loads)?;
    schema.register_table(
        "cubes".into(),
        Arc::new(SystemTable(CubesTable::new(registry))),
    )?;
    schema.register_table(
        "queries".into(),
        Arc::new(SystemTable(QueriesTable::new(log))),
    )?;
    Ok(())
}

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
