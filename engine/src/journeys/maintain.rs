//! The stored journeys: two Delta tables kept by every load beside the cubes, one row
//! per contact (`contacts`) and one per journey (`summary`), both partitioned by the day
//! the journey ended. Each commit records the `traces` version the tables reflect (and,
//! for the summary, the latest `ts` of that version); the views read them only when that
//! is the version they would scan, and window over `traces` otherwise.
//!
//! A load re-chains only what its contacts can change. A contact at `t` can extend or
//! join only journeys that end at or after `t - gap`, so with `from` = the day of
//! (earliest new `ts` - gap), every journey ending before `from` stays as it is and every
//! journey ending on or after it is re-chained from its stored contacts plus the new ones
//! — a set that is closed under journeys, so chaining it gives what a chaining of all
//! contacts would. The partitions from `from` on are replaced in one commit per table.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::{DeltaOperation, SaveMode};

use super::chain::{self, Chained};
use crate::cubes::TRACES_VERSION_TXN;
use crate::warehouse::{Table, Warehouse, WarehouseError};

/// The application transaction of a summary commit recording the latest `ts` (µs) of the
/// `traces` version it reflects (absent when `traces` is empty).
pub const MAX_TS_TXN: &str = "tracecube.max_ts";

/// Errors maintaining the stored journeys.
#[derive(Debug, thiserror::Error)]
pub enum JourneyError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("journeys: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("journeys: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "chaining {rows} contacts would take about {needed_mb} MB, more than load_memory_mb = {budget_mb}: \
         the journey views compute journeys from traces until `tracecube compact` stores them"
    )]
    OverBudget {
        rows: u64,
        needed_mb: u64,
        budget_mb: u64,
    },
}

/// Memory a chaining takes per contact, input and output held together (measured: about
/// 560 MB more for 750 000 more contacts).
const CHAIN_BYTES_PER_CONTACT: u64 = 800;

/// Chaining is done in memory: within a load, only when it fits the load's memory
/// setting (`None`: no limit, as in `tracecube compact`).
fn check_budget(budget_mb: Option<u64>, rows: u64) -> Result<(), JourneyError> {
    let needed_mb = (rows * CHAIN_BYTES_PER_CONTACT).div_ceil(1 << 20);
    match budget_mb {
        Some(budget_mb) if needed_mb > budget_mb => Err(JourneyError::OverBudget {
            rows,
            needed_mb,
            budget_mb,
        }),
        _ => Ok(()),
    }
}

/// The row count of the single-value query `sql`.
async fn count(ctx: &SessionContext, sql: &str) -> Result<u64, JourneyError> {
    use datafusion::arrow::array::AsArray;
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(batches.first().filter(|b| b.num_rows() > 0).map_or(0, |b| {
        b.column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0) as u64
    }))
}

/// The folders of the two tables for a journey gap: another gap, other tables.
pub fn dirs(gap_seconds: i64) -> [String; 2] {
    [
        format!("journeys/gap={gap_seconds}/contacts"),
        format!("journeys/gap={gap_seconds}/summary"),
    ]
}

/// What the stored journeys say about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JourneyStatus {
    /// The `traces` version both tables reflect; `None` when they differ or were never
    /// written.
    pub traces_version: Option<i64>,
    /// The latest `ts` of that version.
    pub max_ts: Option<i64>,
}

/// What a refresh did.
#[derive(Debug, Clone, PartialEq)]
pub struct JourneyRefresh {
    /// `appended` (the partitions from `from_day` on re-chained) or `rebuilt`.
    pub action: &'static str,
    pub contacts: u64,
    pub journeys: u64,
    pub traces_version: i64,
    pub seconds: f64,
}

/// Read the status of the two tables.
pub async fn status(
    contacts: &DeltaTable,
    summary: &DeltaTable,
) -> Result<JourneyStatus, deltalake::DeltaTableError> {
    let version = |t: &DeltaTable, app: &'static str| {
        let t = t.clone();
        async move {
            if t.version().is_none() {
                return Ok(None);
            }
            let snapshot = t.snapshot()?;
            snapshot
                .transaction_version(t.log_store().as_ref(), app)
                .await
        }
    };
    let of_contacts = version(contacts, TRACES_VERSION_TXN).await?;
    let of_summary = version(summary, TRACES_VERSION_TXN).await?;
    Ok(JourneyStatus {
        traces_version: of_contacts.filter(|_| of_contacts == of_summary),
        max_ts: version(summary, MAX_TS_TXN).await?,
    })
}

/// Open the two tables, creating them when missing.
pub async fn open(warehouse: &Warehouse) -> Result<[DeltaTable; 2], JourneyError> {
    let [contacts_dir, summary_dir] = dirs(warehouse.config().journey_gap_seconds()?);
    let partitions = vec!["ended_day".to_string()];
    warehouse
        .create_dir_if_missing(&contacts_dir, &chain::contacts_schema(), partitions.clone())
        .await?;
    warehouse
        .create_dir_if_missing(&summary_dir, &chain::summary_schema(), partitions)
        .await?;
    Ok([
        warehouse.open_dir(&contacts_dir).await?,
        warehouse.open_dir(&summary_dir).await?,
    ])
}

fn session() -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_batch_size(64 * 1024));
    let functions = tracecube_udfs::Functions::new(Default::default(), Default::default());
    ctx.register_udf(functions.path_segment.as_ref().clone());
    ctx
}

/// The chaining columns of trace rows (`need` is the first declaration segment, as the
/// reference views compute it).
const TRACE_COLUMNS: &str =
    "customer_id, path_segment(declaration, 1) AS need, ts, contact_id, channel, resolved";

/// Bring the stored journeys to `traces` version `after`, which a load reached from
/// `before` by committing the rows of `new_rows` (`None`: no row). Journeys that do not
/// reflect `before` are rebuilt from `traces` instead.
pub async fn refresh_after_load(
    warehouse: &Warehouse,
    new_rows: Option<Arc<dyn TableProvider>>,
    before: i64,
    before_was_empty: bool,
    after: i64,
) -> Result<JourneyRefresh, JourneyError> {
    let started = Instant::now();
    let gap = warehouse.config().journey_gap_seconds()? * 1_000_000;
    let budget_mb = warehouse.config().load_memory_mb;
    let [contacts, summary] = open(warehouse).await?;
    let error = |dir: &str| warehouse.dir_error(dir);
    let [contacts_dir, summary_dir] = dirs(warehouse.config().journey_gap_seconds()?);
    let known = status(&contacts, &summary)
        .await
        .map_err(error(&contacts_dir))?;
    let never_written =
        known.traces_version.is_none() && table_rows(&contacts) == 0 && table_rows(&summary) == 0;
    let reflects = known
        .traces_version
        .or_else(|| (before_was_empty && never_written).then_some(before));
    if known.traces_version.is_some_and(|v| v >= after) {
        // a later load or a rebuild got there first: a version is recorded only with
        // that version's rows
        return Ok(refreshed("appended", 0, 0, after, started));
    }
    if reflects != Some(before) || after != before + 1 {
        tracing::info!(
            "journeys reflect traces version {:?}, not {before}: rebuilding them",
            known.traces_version
        );
        return rebuild_within(warehouse, Some(budget_mb)).await;
    }
    let ctx = session();
    let new = match new_rows {
        Some(table) => {
            ctx.register_table("new_traces", table)?;
            let rows = count(&ctx, "SELECT count(*) FROM new_traces").await?;
            check_budget(Some(budget_mb), rows)?;
            ctx.sql(&format!("SELECT {TRACE_COLUMNS} FROM new_traces"))
                .await?
                .collect()
                .await?
        }
        None => Vec::new(),
    };
    let (new_min, new_max) = ts_range(&new);
    let max_ts = match (known.max_ts, new_max) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let Some(new_min) = new_min else {
        // nothing to chain: record the new version
        commit_nothing(&contacts, after, None)
            .await
            .map_err(error(&contacts_dir))?;
        commit_nothing(&summary, after, max_ts)
            .await
            .map_err(error(&summary_dir))?;
        return Ok(refreshed("appended", 0, 0, after, started));
    };
    let from_day = chain::day_of(new_min - gap);
    // the stored contacts of every journey ending on or after `from_day`
    ctx.register_table(
        "stored",
        contacts
            .table_provider()
            .await
            .map_err(|e| error(&contacts_dir)(e.into()))?,
    )?;
    let since = format!(
        "FROM stored WHERE ended_day >= DATE '{}'",
        date_text(from_day)
    );
    let new_rows: usize = new.iter().map(|b| b.num_rows()).sum();
    let stored_rows = count(&ctx, &format!("SELECT count(*) {since}")).await?;
    check_budget(Some(budget_mb), stored_rows + new_rows as u64)?;
    let mut input = ctx
        .sql(&format!(
            "SELECT customer_id, need, ts, contact_id, channel, resolved {since}"
        ))
        .await?
        .collect()
        .await?;
    let stored = input.iter().map(|b| b.num_rows()).sum::<usize>();
    input.extend(new);
    let chained = tokio::task::spawn_blocking(move || chain::chain(&input, gap))
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))??;
    tracing::debug!(
        "journeys: {stored} stored contacts re-chained with the new ones from day {from_day}"
    );
    let predicate = format!("ended_day >= '{}'", date_text(from_day));
    write(
        warehouse,
        contacts,
        summary,
        chained,
        Some(predicate),
        after,
        max_ts,
        "appended",
        started,
    )
    .await
}

/// Rebuild the stored journeys from `traces` at its latest version.
pub async fn rebuild(warehouse: &Warehouse) -> Result<JourneyRefresh, JourneyError> {
    rebuild_within(warehouse, None).await
}

/// [`rebuild`], unless it would take more than `budget_mb`.
async fn rebuild_within(
    warehouse: &Warehouse,
    budget_mb: Option<u64>,
) -> Result<JourneyRefresh, JourneyError> {
    let started = Instant::now();
    let gap = warehouse.config().journey_gap_seconds()? * 1_000_000;
    let [contacts, summary] = open(warehouse).await?;
    let traces = warehouse.table(Table::Traces).await?;
    check_budget(budget_mb, table_rows(&traces))?;
    let version = traces.version().map_or(0, |v| v as i64);
    let provider = traces
        .table_provider()
        .await
        .map_err(|e| warehouse.delta_error(Table::Traces)(e.into()))?;
    let ctx = session();
    ctx.register_table("traces", provider)?;
    let input = ctx
        .sql(&format!("SELECT {TRACE_COLUMNS} FROM traces"))
        .await?
        .collect()
        .await?;
    let (_, max_ts) = ts_range(&input);
    let chained = tokio::task::spawn_blocking(move || chain::chain(&input, gap))
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))??;
    write(
        warehouse, contacts, summary, chained, None, version, max_ts, "rebuilt", started,
    )
    .await
}

/// After a compaction of `traces` (a commit that changes no row): journeys reflecting
/// `same_rows_as` now reflect `version`; others are rebuilt.
pub async fn follow_compaction(
    warehouse: &Warehouse,
    same_rows_as: i64,
    version: i64,
) -> Result<JourneyRefresh, JourneyError> {
    let started = Instant::now();
    let [contacts, summary] = open(warehouse).await?;
    let [contacts_dir, summary_dir] = dirs(warehouse.config().journey_gap_seconds()?);
    let known = status(&contacts, &summary)
        .await
        .map_err(warehouse.dir_error(&contacts_dir))?;
    match known.traces_version {
        Some(v) if v >= version => Ok(refreshed("appended", 0, 0, v, started)),
        Some(v) if v == same_rows_as => {
            commit_nothing(&contacts, version, None)
                .await
                .map_err(warehouse.dir_error(&contacts_dir))?;
            commit_nothing(&summary, version, known.max_ts)
                .await
                .map_err(warehouse.dir_error(&summary_dir))?;
            Ok(refreshed("appended", 0, 0, version, started))
        }
        _ => rebuild(warehouse).await,
    }
}

/// Replace the rows of both tables (all of them, or those `predicate` selects) by the
/// chained rows, contacts first: a failure between the two commits leaves the tables
/// reflecting different versions, which is read as not up to date.
#[allow(clippy::too_many_arguments)]
async fn write(
    warehouse: &Warehouse,
    contacts: DeltaTable,
    summary: DeltaTable,
    chained: Chained,
    predicate: Option<String>,
    traces_version: i64,
    max_ts: Option<i64>,
    action: &'static str,
    started: Instant,
) -> Result<JourneyRefresh, JourneyError> {
    let [contacts_dir, summary_dir] = dirs(warehouse.config().journey_gap_seconds()?);
    let rows = (
        chained.contacts.num_rows() as u64,
        chained.summary.num_rows() as u64,
    );
    replace(
        &contacts,
        chained.contacts,
        predicate.clone(),
        traces_version,
        None,
    )
    .await
    .map_err(warehouse.dir_error(&contacts_dir))?;
    replace(&summary, chained.summary, predicate, traces_version, max_ts)
        .await
        .map_err(warehouse.dir_error(&summary_dir))?;
    Ok(refreshed(action, rows.0, rows.1, traces_version, started))
}

fn transactions(traces_version: i64, max_ts: Option<i64>) -> CommitProperties {
    let mut txns = vec![Transaction::new(TRACES_VERSION_TXN, traces_version)];
    if let Some(max) = max_ts {
        txns.push(Transaction::new(MAX_TS_TXN, max));
    }
    CommitProperties::default().with_application_transactions(txns)
}

async fn replace(
    table: &DeltaTable,
    rows: RecordBatch,
    predicate: Option<String>,
    traces_version: i64,
    max_ts: Option<i64>,
) -> Result<(), deltalake::DeltaTableError> {
    let mut write = table
        .clone()
        .write(vec![rows])
        .with_save_mode(SaveMode::Overwrite)
        .with_writer_properties(crate::load::writer_properties_with_row_groups(1 << 17))
        .with_commit_properties(transactions(traces_version, max_ts));
    if let Some(p) = predicate {
        write = write.with_replace_where(p);
    }
    write.await?;
    Ok(())
}

/// A commit that changes no row and records the versions.
async fn commit_nothing(
    table: &DeltaTable,
    traces_version: i64,
    max_ts: Option<i64>,
) -> Result<(), deltalake::DeltaTableError> {
    let snapshot = table.snapshot()?;
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    CommitBuilder::from(transactions(traces_version, max_ts))
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    Ok(())
}

fn table_rows(table: &DeltaTable) -> u64 {
    table.snapshot().map_or(0, |s| {
        s.log_data()
            .iter()
            .map(|f| f.num_records().unwrap_or(1) as u64)
            .sum()
    })
}

/// The earliest and latest `ts` of `batches`, per batch by the arrow kernels.
fn ts_range(batches: &[RecordBatch]) -> (Option<i64>, Option<i64>) {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::{max, min};
    use datafusion::arrow::datatypes::TimestampMicrosecondType;
    let ts = || {
        batches.iter().map(|b| {
            b.column_by_name("ts")
                .expect("ts is read")
                .as_primitive::<TimestampMicrosecondType>()
        })
    };
    (ts().filter_map(min).min(), ts().filter_map(max).max())
}

/// `YYYY-MM-DD` of a day since the epoch.
fn date_text(day: i32) -> String {
    let date = chrono::DateTime::from_timestamp(i64::from(day) * 86_400, 0)
        .expect("a day in range")
        .date_naive();
    date.format("%Y-%m-%d").to_string()
}

fn refreshed(
    action: &'static str,
    contacts: u64,
    journeys: u64,
    traces_version: i64,
    started: Instant,
) -> JourneyRefresh {
    JourneyRefresh {
        action,
        contacts,
        journeys,
        traces_version,
        seconds: started.elapsed().as_secs_f64(),
    }
}
