//! The SQL session: warehouse tables registered (and kept fresh), the system schema
//! `tracecube`, Tracecube's functions, and PostgreSQL's `pg_catalog`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::metrics::{CountingRegistry, Metrics};
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown, col};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use tokio::sync::Mutex;

use crate::cubes::registry::{CubeRegistry, TracesTable};
use crate::cubes::rewrite::CubeRewrite;
use crate::cubes::time_filters::LocalDays;
use crate::journeys;
use crate::system::{self, queries::QueryLog};
use crate::warehouse::{Table, Warehouse, WarehouseError};
use crate::weights::WeightsTable;
use settings::TracecubeOptions;
use tracecube_udfs::{Functions, SlaTable, WeightsHandle};

pub mod isolation;
pub mod memory;
pub mod pg_functions;
pub mod settings;
pub mod utc_output;

/// Name of the catalog (the PostgreSQL database clients connect to).
pub const CATALOG: &str = "tracecube";
/// How long a table's snapshot is trusted before checking for a newer version.
const FRESHNESS: Duration = Duration::from_secs(1);

/// A warehouse Delta table that follows new commits (from this or another process):
/// each scan checks, at most once per second, whether the log has a newer version, and
/// only then replays the new commits.
#[derive(Debug)]
pub struct LiveTable {
    warehouse: Warehouse,
    table: Table,
    schema: SchemaRef,
    current: Mutex<Current>,
}

/// The snapshot a [`LiveTable`] serves and when it was last checked.
#[derive(Debug)]
struct Current {
    checked: Instant,
    /// [`crate::warehouse::local_commits`] when checked.
    commits: u64,
    delta: deltalake::DeltaTable,
    provider: Arc<dyn TableProvider>,
}

impl LiveTable {
    /// Open `table` of `warehouse` at its latest version.
    pub async fn open(warehouse: &Warehouse, table: Table) -> Result<Self, WarehouseError> {
        let delta = warehouse.table(table).await?;
        let provider = provider_of(warehouse, table, &delta).await?;
        Ok(LiveTable {
            warehouse: warehouse.clone(),
            table,
            schema: provider.schema(),
            current: Mutex::new(Current {
                checked: Instant::now(),
                commits: crate::warehouse::local_commits(),
                delta,
                provider,
            }),
        })
    }

    /// Which warehouse table this is.
    pub fn table(&self) -> Table {
        self.table
    }

    async fn provider(&self) -> Result<Arc<dyn TableProvider>> {
        let mut current = self.current.lock().await;
        let commits = crate::warehouse::local_commits();
        if current.checked.elapsed() >= FRESHNESS || current.commits != commits {
            let external = |e: deltalake::DeltaTableError| {
                DataFusionError::External(Box::new(self.warehouse.delta_error(self.table)(e)))
            };
            let latest = current.delta.get_latest_version().await.map_err(external)?;
            if current.delta.version() != Some(latest) {
                current
                    .delta
                    .update_incremental(None)
                    .await
                    .map_err(external)?;
                current.provider = provider_of(&self.warehouse, self.table, &current.delta)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
            }
            current.checked = Instant::now();
            current.commits = commits;
        }
        Ok(current.provider.clone())
    }
}

async fn provider_of(
    warehouse: &Warehouse,
    table: Table,
    t: &deltalake::DeltaTable,
) -> Result<Arc<dyn TableProvider>, WarehouseError> {
    t.table_provider()
        .await
        .map_err(|e| warehouse.delta_error(table)(e.into()))
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        None
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters are used for pruning; DataFusion re-applies them to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.provider()
            .await?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// The session of one connection: the settings of `shared` (then its own), Tracecube's
/// tables, views and functions of `shared` (read-only), and the objects it creates itself,
/// which no other connection sees.
pub fn connection_session(shared: &SessionContext) -> SessionContext {
    let state = shared.state();
    let catalogs = Arc::new(isolation::ConnectionCatalogs::new(Arc::clone(
        state.catalog_list(),
    )));
    // the connection's statements draw on the shared pool, each at most its share
    let runtime = state.runtime_env();
    let runtime = match memory::ConnectionShare::of(&runtime.memory_pool) {
        Some(share) => RuntimeEnvBuilder::from_runtime_env(runtime)
            .with_memory_pool(Arc::new(share))
            .build_arc()
            .unwrap_or_else(|_| Arc::clone(runtime)),
        None => Arc::clone(runtime),
    };
    let state = SessionStateBuilder::new_from_existing(state)
        .with_catalog_list(catalogs)
        .with_runtime_env(runtime)
        .build();
    SessionContext::new_with_state(state)
}

/// How long the file listing of an external table is reused before its folder is
/// listed again.
pub const EXTERNAL_LISTING_TTL: Duration = Duration::from_secs(30);

/// The runtime of the server's queries: a memory pool of `limit_mb` (0: none) fairly
/// shared by the queries running at once, operators that can (sorts, aggregations) spilling
/// to temporary files; a query that needs more fails alone with SQLSTATE `53200`.
/// Every object store counts the bytes it returns into `bytes_scanned`; the store of a
/// bucket is created the first time it is read (external tables). The listing of an
/// external table is reused for [`EXTERNAL_LISTING_TTL`] (files dropped into its folder
/// appear within that time); Parquet footers are cached until their file changes.
fn runtime(
    limit_mb: u64,
    bytes_scanned: prometheus_client::metrics::counter::Counter,
    storage_options: std::collections::HashMap<String, String>,
) -> Result<Arc<RuntimeEnv>, WarehouseError> {
    let registry = crate::storage::CloudRegistry::wrapping(
        CountingRegistry::new(bytes_scanned),
        storage_options,
    );
    let caches = datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
        .with_list_files_cache_ttl(Some(EXTERNAL_LISTING_TTL));
    let mut builder = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(registry))
        .with_cache_manager(caches);
    if limit_mb > 0 {
        let bytes = usize::try_from(limit_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        // the error of a query past the limit names its largest consumers
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(bytes),
            std::num::NonZeroUsize::new(5).expect("5 is not zero"),
        );
        builder = builder.with_memory_pool(Arc::new(pool));
    }
    builder
        .build_arc()
        .map_err(|e| WarehouseError::Session(Box::new(e)))
}

/// A session over `warehouse`: `traces`, `rejects`, `impact_weights`, the journey
/// views, `tracecube.loads`, Tracecube's functions, pg_catalog and information_schema.
pub async fn session(warehouse: &Warehouse) -> Result<SessionContext, WarehouseError> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema(CATALOG, "public")
        .with_create_default_catalog_and_schema(true)
        .with_option_extension(TracecubeOptions::default())
        // sessions start in UTC (`SET TIME ZONE` changes one)
        .set_str("datafusion.execution.time_zone", "UTC");
    let cubes = CubeRegistry::open(warehouse).await?;
    let metrics = Arc::new(Metrics::default());
    let queries = Arc::new(QueryLog::new(Arc::clone(&metrics)));
    // The server finds both here to scope and log each query.
    let config = config
        .with_extension(Arc::clone(&cubes))
        .with_extension(Arc::clone(&queries));
    let mut rules = datafusion::optimizer::Optimizer::new().rules;
    // After expression simplification (constants folded, weights bound), before filters
    // and projections are pushed into the scan.
    let at = rules
        .iter()
        .position(|r| r.name() == "simplify_expressions")
        .map_or(0, |i| i + 1);
    let days = LocalDays::new(warehouse.config().tz()?);
    rules.insert(at, Arc::new(CubeRewrite::new(Arc::clone(&cubes), days)));
    rules.push(Arc::new(utc_output::UtcOutput));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime(
            warehouse.config().memory_limit_mb,
            metrics.bytes_scanned.clone(),
            warehouse.storage_options().clone(),
        )?)
        .with_default_features()
        .with_optimizer_rules(rules)
        .build();
    let ctx = SessionContext::new_with_state(state);
    // `traces` follows the cube registry's snapshot: one clock for raw scans and cubes.
    let traces = Arc::new(TracesTable::new(Arc::clone(&cubes))?);
    ctx.register_table("traces", traces.clone())?;

    let weights = Arc::new(WeightsHandle::default());
    let weights_table = WeightsTable::open(warehouse, Arc::clone(&weights)).await?;
    ctx.register_table("impact_weights", Arc::new(weights_table))?;
    let slas = SlaTable::new(warehouse.config().sla_seconds.clone());
    Functions::new(slas, weights).register(&ctx, traces);
    journeys::register(
        &ctx,
        Arc::clone(&cubes),
        warehouse.config().journey_gap_seconds()?,
    )
    .await?;

    let loads = Arc::new(LiveTable::open(warehouse, Table::Loads).await?);
    system::register(&ctx, CATALOG, loads.clone(), Arc::clone(&cubes), queries)?;

    // Rejected rows are visible once their load committed: a load stopped between writing
    // its rejects and committing its rows leaves nothing behind.
    let rejects = Arc::new(LiveTable::open(warehouse, Table::Rejects).await?);
    let committed = ctx
        .read_table(loads)
        .and_then(|df| df.filter(col("status").eq(datafusion::prelude::lit("committed"))))
        .and_then(|df| df.select(vec![col("load_id").alias("committed_load_id")]))?;
    let visible = ctx.read_table(rejects).and_then(|df| {
        df.join(
            committed,
            datafusion::common::JoinType::LeftSemi,
            &["load_id"],
            &["committed_load_id"],
            None,
        )
    })?;
    ctx.register_table("rejects", visible.into_view())?;

    setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider).map_err(WarehouseError::Session)?;
    pg_functions::add_to_pg_catalog(&ctx, CATALOG)
        .await
        .map_err(|e| WarehouseError::Session(Box::new(e)))?;
    ctx.register_udf(tracecube_udfs::session::version());
    Ok(ctx)
}
