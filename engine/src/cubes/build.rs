//! Computing and writing cube rows.
//!
//! A load appends to each cube the partial rows of its own new traces, in the same
//! command, with a Delta transaction recording the `traces` version they bring the cube
//! to. Coarser cubes are aggregated from the partial rows of a finer one rather than
//! from the traces. A cube that does not reflect the `traces` version the load started
//! from (a load stopped half-way, a new definition) is rebuilt from `traces` instead.
//! [`compact`] merges each cube's partial rows and small files, and applies retentions.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};
use parquet::file::properties::WriterProperties;

use super::{COMPLETE_FROM_TXN, CubeDef, MEASURES, TRACES_VERSION_TXN, sla_case};
use crate::warehouse::{Table, Warehouse, WarehouseError};

/// Errors computing or writing cubes.
#[derive(Debug, thiserror::Error)]
pub enum CubeError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("cube {cube}: {source}")]
    Query {
        cube: String,
        source: Box<datafusion::error::DataFusionError>,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("compacting traces: {0}")]
    Traces(Box<crate::load::LoadError>),
}

/// What a refresh did to one cube.
#[derive(Debug, Clone, PartialEq)]
pub struct CubeRefresh {
    pub cube: String,
    /// `appended`, `rebuilt` or `compacted`.
    pub action: &'static str,
    /// Rows written.
    pub rows: u64,
    /// The `traces` version the cube now reflects.
    pub traces_version: i64,
    pub seconds: f64,
}

/// What a cube table says about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CubeStatus {
    /// The `traces` version the cube reflects; `None` when it was never filled.
    pub traces_version: Option<i64>,
    /// For a cube with a retention: the first instant (µs) from which it is complete.
    pub complete_from: Option<i64>,
    pub rows: u64,
    pub bytes: u64,
    pub files: u64,
    /// The cube table's own Delta version.
    pub version: i64,
}

/// Read what `table` (a cube) records: the versions of its transactions and its size.
pub async fn status(table: &DeltaTable) -> Result<CubeStatus, deltalake::DeltaTableError> {
    let snapshot = table.snapshot()?;
    let store = table.log_store();
    let traces_version = snapshot
        .transaction_version(store.as_ref(), TRACES_VERSION_TXN)
        .await?;
    let complete_from = snapshot
        .transaction_version(store.as_ref(), COMPLETE_FROM_TXN)
        .await?;
    let mut status = CubeStatus {
        traces_version,
        complete_from,
        version: table.version().map_or(0, |v| v as i64),
        ..Default::default()
    };
    for file in snapshot.log_data().iter() {
        status.files += 1;
        status.bytes += file.size().max(0) as u64;
        status.rows += file.num_records().unwrap_or(0) as u64;
    }
    Ok(status)
}

/// Parquet settings of cube files: small row groups, so that a time filter prunes well.
pub(super) fn writer_properties() -> WriterProperties {
    crate::load::writer_properties_with_row_groups(1 << 16)
}

fn quoted(column: &str) -> String {
    format!("\"{column}\"")
}

/// `SELECT dims, measures FROM source [WHERE …] GROUP BY dims [ORDER BY time]`: from trace
/// rows when `finer` is `None`, else re-aggregating rows of cube `finer` (partial rows of
/// the same load, or the cube itself), whose dimensions `def` derives from.
pub(super) fn aggregate_sql(
    def: &CubeDef,
    slas: &std::collections::BTreeMap<String, i32>,
    source: &str,
    finer: Option<&CubeDef>,
    filter: Option<String>,
) -> String {
    let from_traces = finer.is_none();
    let dims: Vec<String> = def
        .dimensions
        .iter()
        .map(|d| match finer {
            Some(f) if f.has_dimension(&d.name) => quoted(&d.name),
            _ => format!("{} AS {}", d.sql(), quoted(&d.name)),
        })
        .collect();
    let sla = sla_case(slas);
    let measures: Vec<String> = MEASURES
        .iter()
        .map(|(name, _, sql)| {
            if from_traces {
                format!("{} AS {name}", sql.replace("{sla}", &sla))
            } else {
                format!("sum({name}) AS {name}")
            }
        })
        .collect();
    let mut text = format!(
        "SELECT {}, {} FROM {source}",
        dims.join(", "),
        measures.join(", ")
    );
    if let Some(f) = filter {
        text.push_str(&format!(" WHERE {f}"));
    }
    let positions: Vec<String> = (1..=dims.len()).map(|i| i.to_string()).collect();
    text.push_str(&format!(" GROUP BY {}", positions.join(", ")));
    if let Some(time) = def.time_dimension() {
        text.push_str(&format!(" ORDER BY {}", quoted(time)));
    }
    text
}

/// The time column of a retention as microseconds, in SQL.
fn micros_sql(column: &str) -> String {
    match column {
        "day" => format!(
            "CAST(CAST({} AS INT) AS BIGINT) * 86400000000",
            quoted(column)
        ),
        _ => format!("CAST({} AS BIGINT)", quoted(column)),
    }
}

/// A session for building cubes, with the functions of expression dimensions.
pub(super) fn build_session() -> SessionContext {
    session_of(SessionConfig::new())
}

/// A session for building cubes on one thread: a load aggregates its cube rows beside
/// the writing of its staged files, one group of days at a time, with no repartitioning.
pub(super) fn single_thread_session() -> SessionContext {
    session_of(SessionConfig::new().with_target_partitions(1))
}

fn session_of(config: SessionConfig) -> SessionContext {
    let ctx = SessionContext::new_with_config(config.with_batch_size(64 * 1024));
    let functions = tracecube_udfs::Functions::new(Default::default(), Default::default());
    ctx.register_udf(functions.path_prefix.as_ref().clone());
    ctx
}

pub(super) async fn run(
    ctx: &SessionContext,
    cube: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, CubeError> {
    let query = |source| CubeError::Query {
        cube: cube.to_string(),
        source: Box::new(source),
    };
    ctx.sql(sql)
        .await
        .map_err(query)?
        .collect()
        .await
        .map_err(query)
}

/// The newest instant (µs) of `column` in `source`, if any row.
async fn newest(
    ctx: &SessionContext,
    cube: &str,
    source: &str,
    column: &str,
) -> Result<Option<i64>, CubeError> {
    let batches = run(
        ctx,
        cube,
        &format!("SELECT max({}) FROM {source}", micros_sql(column)),
    )
    .await?;
    Ok(batches
        .first()
        .map(|b| b.column(0).as_primitive::<Int64Type>())
        .filter(|a| a.is_valid(0))
        .map(|a| a.value(0)))
}

/// For a cube with a retention: the SQL filter keeping the rows of `source` it retains
/// (those within the retention of the newest one, and not before `complete_from`, where
/// the cube is already complete), and the instant from which it will be complete.
pub(super) async fn retained(
    ctx: &SessionContext,
    def: &CubeDef,
    source: &str,
    complete_from: Option<i64>,
) -> Result<(Option<String>, Option<i64>), CubeError> {
    let Some(retention) = &def.retention else {
        return Ok((None, complete_from));
    };
    let Some(newest) = newest(ctx, &def.name, source, &retention.column).await? else {
        return Ok((None, complete_from));
    };
    let bound = newest - retention.seconds * 1_000_000;
    let from = complete_from.map_or(bound, |c| c.max(bound));
    let filter = format!("{} >= {bound}", micros_sql(&retention.column));
    Ok((Some(filter), Some(from)))
}

/// Cast `batches` to the cube's schema (string views and nullability as stored).
pub(super) fn conform(
    def: &CubeDef,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, CubeError> {
    let error = |e: datafusion::arrow::error::ArrowError| CubeError::Query {
        cube: def.name.clone(),
        source: Box::new(e.into()),
    };
    batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .zip(b.columns())
                .map(|(f, c)| cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(&error)?;
            RecordBatch::try_new(schema.clone(), columns).map_err(&error)
        })
        .collect()
}

/// Open the cube's table, creating it when missing.
pub(super) async fn open(warehouse: &Warehouse, def: &CubeDef) -> Result<DeltaTable, CubeError> {
    let dir = def.dir(&warehouse.config().sla_seconds);
    warehouse
        .create_dir_if_missing(&dir, &def.schema(), vec![])
        .await?;
    Ok(warehouse.open_dir(&dir).await?)
}

/// Write `batches` to the cube in one commit that records the `traces` version they
/// reflect (and where a retention cube is complete from).
async fn write(
    warehouse: &Warehouse,
    def: &CubeDef,
    table: DeltaTable,
    batches: Vec<RecordBatch>,
    mode: SaveMode,
    traces_version: i64,
    complete_from: Option<i64>,
) -> Result<u64, CubeError> {
    let schema = def.schema();
    let mut data = conform(def, &schema, batches)?;
    let rows = data.iter().map(|b| b.num_rows() as u64).sum();
    let mut txns = vec![Transaction::new(TRACES_VERSION_TXN, traces_version)];
    if let Some(from) = complete_from {
        txns.push(Transaction::new(COMPLETE_FROM_TXN, from));
    }
    let commit = CommitProperties::default().with_application_transactions(txns);
    let error = delta_error(warehouse, def);
    if data.is_empty() && mode == SaveMode::Append {
        // Nothing to add: record the new version without writing an empty file.
        let snapshot = table.snapshot().map_err(&error)?;
        let operation = DeltaOperation::Write {
            mode,
            partition_by: None,
            predicate: None,
        };
        CommitBuilder::from(commit)
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(&error)?;
        return Ok(0);
    }
    if data.is_empty() {
        // An overwrite with no rows still replaces every file.
        data.push(RecordBatch::new_empty(schema));
    }
    table
        .write(data)
        .with_save_mode(mode)
        .with_writer_properties(writer_properties())
        .with_commit_properties(commit)
        .await
        .map_err(&error)?;
    Ok(rows)
}

fn delta_error(
    warehouse: &Warehouse,
    def: &CubeDef,
) -> impl Fn(deltalake::DeltaTableError) -> CubeError + use<> {
    let error = warehouse.dir_error(&def.dir(&warehouse.config().sla_seconds));
    move |e| CubeError::Warehouse(error(e))
}

/// The rows a load committed, as the cubes are refreshed from them.
pub enum NewRows<'a> {
    /// None.
    Nothing,
    /// The committed rows, read as a table.
    Table(Arc<dyn TableProvider>),
    /// The cube rows computed while the load was staged.
    Partials(&'a mut super::partials::LoadPartials),
}

/// Bring every cube to `traces` version `after`, which a load reached from `before` by
/// committing `new_rows` (`before_was_empty`: `traces` held no file at `before`). Files
/// written before are committed only while `marker` (the load's) is live: a vacuum that
/// took the load for stopped may have removed them.
pub async fn refresh_after_load(
    warehouse: &Warehouse,
    new_rows: NewRows<'_>,
    before: i64,
    before_was_empty: bool,
    after: i64,
    marker: &crate::load::inflight::Inflight,
) -> Result<Vec<CubeRefresh>, CubeError> {
    let config = warehouse.config();
    let defs = CubeDef::all(&config.cubes)?;
    if defs.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = build_session();
    let mut partials = None;
    let no_rows = match new_rows {
        NewRows::Nothing => true,
        NewRows::Table(table) => {
            ctx.register_table("new_traces", table)
                .expect("fresh session");
            false
        }
        NewRows::Partials(p) => {
            partials = Some(p);
            false
        }
    };
    let mut done: Vec<(&CubeDef, u64)> = Vec::new();
    let mut report = Vec::new();
    for def in &defs {
        let started = Instant::now();
        let table = open(warehouse, def).await?;
        let status = status(&table).await.map_err(delta_error(warehouse, def))?;
        let reflects = status.traces_version.or_else(|| {
            // A cube created empty next to an empty `traces` reflects it.
            (before_was_empty && status.rows == 0).then_some(before)
        });
        if reflects != Some(before) {
            tracing::info!(
                "cube {} reflects traces version {:?}, not {before}: rebuilding it",
                def.name,
                status.traces_version
            );
            if let Some(p) = partials.as_deref_mut() {
                p.discard(&def.name).await;
            }
            match rebuild(warehouse, def).await {
                Ok(r) => report.push(r),
                Err(e) => stays_stale(def, &e),
            }
            continue;
        }
        if no_rows {
            let rows = write(
                warehouse,
                def,
                table,
                vec![],
                SaveMode::Append,
                after,
                status.complete_from,
            )
            .await?;
            report.push(refreshed(def, "appended", rows, after, started));
            continue;
        }
        if let Some(p) = partials.as_deref_mut() {
            let taken = match p.take(&def.name, status.complete_from).await {
                Ok(taken) => taken,
                Err(e) => {
                    p.discard(&def.name).await;
                    stays_stale(def, &e);
                    continue;
                }
            };
            let Some(rows) = taken else {
                match rebuild(warehouse, def).await {
                    Ok(r) => report.push(r),
                    Err(e) => stays_stale(def, &e),
                }
                continue;
            };
            match append_files(warehouse, def, table, rows, after, marker).await {
                Ok(written) => report.push(refreshed(def, "appended", written, after, started)),
                Err(e) => stays_stale(def, &e),
            }
            continue;
        }
        // The smallest cube already computed for this load that it derives from.
        let parent = done
            .iter()
            .filter(|(p, _)| p.retention.is_none() && def.derives_from(p))
            .min_by_key(|(_, rows)| *rows)
            .map(|(p, _)| *p);
        let source = match parent {
            Some(p) => format!("partial_{}", p.name),
            None => "new_traces".to_string(),
        };
        let (filter, complete_from) =
            retained(&ctx, def, "new_traces", status.complete_from).await?;
        let sql = aggregate_sql(def, &config.sla_seconds, &source, parent, filter);
        let batches = run(&ctx, &def.name, &sql).await?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if def.retention.is_none() && !batches.is_empty() {
            let partial =
                MemTable::try_new(batches[0].schema(), vec![batches.clone()]).map_err(|e| {
                    CubeError::Query {
                        cube: def.name.clone(),
                        source: Box::new(e),
                    }
                })?;
            ctx.register_table(format!("partial_{}", def.name).as_str(), Arc::new(partial))
                .map_err(|e| CubeError::Query {
                    cube: def.name.clone(),
                    source: Box::new(e),
                })?;
            done.push((def, rows));
        }
        // a cube written meanwhile by a compaction or another load stays stale: the
        // other cubes are still refreshed
        match write(
            warehouse,
            def,
            table,
            batches,
            SaveMode::Append,
            after,
            complete_from,
        )
        .await
        {
            Ok(written) => report.push(refreshed(def, "appended", written, after, started)),
            Err(e) => stays_stale(def, &e),
        }
    }
    Ok(report)
}

/// Append a load's cube rows (files written while it was staged, and rows still held) to
/// the cube in one commit recording the `traces` version they bring it to. Returns the
/// rows added.
async fn append_files(
    warehouse: &Warehouse,
    def: &CubeDef,
    table: DeltaTable,
    rows: super::partials::CubeRows,
    traces_version: i64,
    marker: &crate::load::inflight::Inflight,
) -> Result<u64, CubeError> {
    let error = delta_error(warehouse, def);
    let staging = |e: crate::load::LoadError| CubeError::Query {
        cube: def.name.clone(),
        source: Box::new(datafusion::error::DataFusionError::External(Box::new(e))),
    };
    let mut files = rows.files;
    if !rows.rows.is_empty() {
        let target =
            crate::load::stage::Target::of_table(&table, def.schema(), vec![], writer_properties())
                .map_err(&error)?;
        let all = datafusion::arrow::compute::concat_batches(&def.schema(), &rows.rows)
            .map_err(|e| staging(e.into()))?;
        files.extend(target.write_sorted(all).await.map_err(staging)?);
    }
    let added = files.iter().map(|p| p.rows).sum();
    let mut txns = vec![Transaction::new(TRACES_VERSION_TXN, traces_version)];
    if let Some(from) = rows.complete_from {
        txns.push(Transaction::new(COMPLETE_FROM_TXN, from));
    }
    let commit = CommitProperties::default().with_application_transactions(txns);
    let snapshot = table.snapshot().map_err(&error)?;
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    let actions = files
        .into_iter()
        .map(|p| deltalake::kernel::Action::Add(p.add))
        .collect();
    // last: files written long ago are committed only if no vacuum may have removed them
    marker.check_alive().map_err(staging)?;
    CommitBuilder::from(commit)
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(&error)?;
    Ok(added)
}

fn stays_stale(def: &CubeDef, e: &CubeError) {
    tracing::warn!(
        "cube {} could not be refreshed and will not be used until rebuilt (tracecube compact, or the next load): {e}",
        def.name
    );
}

fn refreshed(
    def: &CubeDef,
    action: &'static str,
    rows: u64,
    traces_version: i64,
    started: Instant,
) -> CubeRefresh {
    let r = CubeRefresh {
        cube: def.name.clone(),
        action,
        rows,
        traces_version,
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::debug!("{r:?}");
    r
}

/// Rebuild a cube from `traces` at its latest version, replacing its rows.
pub async fn rebuild(warehouse: &Warehouse, def: &CubeDef) -> Result<CubeRefresh, CubeError> {
    let started = Instant::now();
    let table = open(warehouse, def).await?;
    let traces = warehouse.table(Table::Traces).await?;
    let version = traces.version().map_or(0, |v| v as i64);
    let provider = traces
        .table_provider()
        .await
        .map_err(|e| warehouse.delta_error(Table::Traces)(e.into()))?;
    let source = Source::Traces(provider);
    let rows = replace(warehouse, def, table, source, None, version).await?;
    Ok(refreshed(def, "rebuilt", rows, version, started))
}

/// Rebuild every configured cube from `traces`.
pub async fn rebuild_all(warehouse: &Warehouse) -> Result<Vec<CubeRefresh>, CubeError> {
    let mut report = Vec::new();
    for def in CubeDef::all(&warehouse.config().cubes)? {
        report.push(rebuild(warehouse, &def).await?);
    }
    Ok(report)
}

/// Where [`replace`] reads rows from.
enum Source {
    /// `traces` rows, aggregated into cube rows.
    Traces(Arc<dyn datafusion::catalog::TableProvider>),
    /// The cube's own partial rows, re-aggregated.
    Cube(Arc<dyn datafusion::catalog::TableProvider>),
}

/// Replace the cube's rows by the aggregate of `source` (within its retention), in one
/// commit recording `version` as the `traces` version it reflects. Returns the rows written.
async fn replace(
    warehouse: &Warehouse,
    def: &CubeDef,
    table: DeltaTable,
    source: Source,
    complete_from: Option<i64>,
    version: i64,
) -> Result<u64, CubeError> {
    let (name, provider, finer) = match source {
        Source::Traces(p) => ("traces", p, None),
        Source::Cube(p) => ("cube", p, Some(def)),
    };
    let ctx = build_session();
    ctx.register_table(name, provider)
        .map_err(|e| CubeError::Query {
            cube: def.name.clone(),
            source: Box::new(e),
        })?;
    let (filter, complete_from) = retained(&ctx, def, name, complete_from).await?;
    let sql = aggregate_sql(def, &warehouse.config().sla_seconds, name, finer, filter);
    let batches = run(&ctx, &def.name, &sql).await?;
    write(
        warehouse,
        def,
        table,
        batches,
        SaveMode::Overwrite,
        version,
        complete_from,
    )
    .await
}

/// Compact one cube: merge its partial rows into one row per cell and its files into
/// few, and drop rows a retention no longer keeps. The cube then reflects `traces` at
/// `version`, which holds the same rows as `same_rows_as` (a compaction of `traces` moves
/// its version without changing its rows). A stale cube is rebuilt instead.
pub async fn compact_cube(
    warehouse: &Warehouse,
    def: &CubeDef,
    same_rows_as: i64,
    version: i64,
) -> Result<CubeRefresh, CubeError> {
    let started = Instant::now();
    let table = open(warehouse, def).await?;
    let status = status(&table).await.map_err(delta_error(warehouse, def))?;
    if !matches!(status.traces_version, Some(v) if v == same_rows_as || v == version) {
        return rebuild(warehouse, def).await;
    }
    let provider = table
        .table_provider()
        .await
        .map_err(|e| delta_error(warehouse, def)(e.into()))?;
    let source = Source::Cube(provider);
    let rows = replace(warehouse, def, table, source, status.complete_from, version).await?;
    Ok(refreshed(def, "compacted", rows, version, started))
}

/// What `tracecube compact` did.
#[derive(Debug, Clone)]
pub struct CompactReport {
    pub traces_files_removed: u64,
    pub traces_files_added: u64,
    pub traces_version: i64,
    pub traces_seconds: f64,
    pub cubes: Vec<CubeRefresh>,
}

/// `tracecube compact`: merge the small files of `traces` (per day, keeping the
/// (channel, declaration) order) and compact every cube.
pub async fn compact(warehouse: &Warehouse) -> Result<CompactReport, CubeError> {
    // vacuum keeps the cube files written until they are committed
    let traces = warehouse.table(Table::Traces).await?;
    let marker = crate::load::inflight::Inflight::start(
        traces.object_store(),
        &uuid::Uuid::now_v7().to_string(),
    )
    .await
    .map_err(|e| CubeError::Traces(Box::new(e)))?;
    let result = compact_marked(warehouse).await;
    marker.finish().await;
    result
}

async fn compact_marked(warehouse: &Warehouse) -> Result<CompactReport, CubeError> {
    let started = Instant::now();
    let merged = crate::maintenance::compact_traces(warehouse)
        .await
        .map_err(|e| CubeError::Traces(Box::new(e)))?;
    // the compaction commit changes no row: the version before it has the same rows
    let after = merged.version_after;
    let before = if merged.files_removed > 0 {
        after - 1
    } else {
        after
    };
    let mut report = CompactReport {
        traces_files_removed: merged.files_removed,
        traces_files_added: merged.files_added,
        traces_version: after,
        traces_seconds: started.elapsed().as_secs_f64(),
        cubes: Vec::new(),
    };
    // first, so that a load committed while the cubes are compacted finds them current
    match crate::journeys::maintain::follow_compaction(warehouse, before, after).await {
        Ok(r) => tracing::info!(
            "journeys: {} (traces version {})",
            r.action,
            r.traces_version
        ),
        Err(e) => tracing::warn!("the stored journeys are stale until the next load: {e}"),
    }
    for def in CubeDef::all(&warehouse.config().cubes)? {
        report
            .cubes
            .push(compact_cube(warehouse, &def, before, after).await?);
    }
    Ok(report)
}
