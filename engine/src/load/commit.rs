//! Writing a load to the warehouse: rejects, the one `traces` commit (which carries the
//! ledger of loaded sources in the table configuration and the load record as commit
//! metadata), and the `tracecube.loads` row.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, MetadataExt};
use deltalake::protocol::{DeltaOperation, SaveMode};
use futures::TryStreamExt;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::ledger::{self, LedgerList};
use super::stage::Part;
use super::{LoadError, LoadRecord, SourceRowError};
use crate::schema::{loads_schema, rejects_schema};
use crate::warehouse::{Table, Warehouse, WarehouseError};

/// Key of the load record in a `traces` commit's metadata.
const LOAD_METADATA_KEY: &str = "tracecube.load";

fn delta_err(table: Table, url: url::Url) -> impl Fn(deltalake::DeltaTableError) -> LoadError {
    move |source| LoadError::Warehouse(WarehouseError::delta(table, &url, source))
}

/// Parquet settings of stored `traces` files: zstd, dictionary pages, statistics, large
/// row groups.
pub fn writer_properties() -> WriterProperties {
    writer_properties_with_row_groups(1 << 20)
}

/// Parquet settings of every warehouse file, with row groups of at most `rows` rows.
pub fn writer_properties_with_row_groups(rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid zstd level"),
        ))
        .set_dictionary_enabled(true)
        .set_max_row_group_row_count(Some(rows))
        .build()
}

/// Cast string-view columns (as DataFusion reads them) to plain strings.
fn cast_strings(batch: &RecordBatch) -> Result<RecordBatch, LoadError> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(
            f.data_type(),
            DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(..)
        ) {
            columns.push(datafusion::arrow::compute::cast(c, &DataType::Utf8)?);
            fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
        } else {
            columns.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// How a commit of a load ended.
pub enum Committed {
    /// The new `traces` version.
    Version(i64),
    /// Another commit came first: the load must check its rows and sources again.
    Conflict,
}

/// Commit the staged files of a load in one commit that also records the sources in the
/// ledger (`ledger`, the list naming the ledger file of this load) and the settings that
/// shaped the stored values. Fails with [`Committed::Conflict`] when `traces` moved past
/// the snapshot of `traces` (no automatic retry: the caller re-checks and retries).
pub async fn commit_traces(
    warehouse: &Warehouse,
    traces: &DeltaTable,
    parts: &[(i32, Part)],
    ledger: &LedgerList,
    record: &LoadRecord,
) -> Result<Committed, LoadError> {
    let error = delta_err(Table::Traces, warehouse.table_url(Table::Traces));
    let record = serde_json::to_value(record).expect("load record serialises");
    let commit = quiet_commit().with_metadata([(LOAD_METADATA_KEY.to_string(), record)]);
    let snapshot = traces.snapshot().map_err(&error)?;
    let mut metadata = ledger::with_list(snapshot.metadata().clone(), ledger)?;
    // a table written before settings were recorded is not checked: recording the
    // settings of whichever load comes first could lock out the right ones
    let recorded = snapshot
        .metadata()
        .configuration()
        .contains_key(crate::warehouse::TIME_ZONE_KEY);
    if recorded || snapshot.log_data().num_files() == 0 {
        for (key, value) in crate::warehouse::recorded_settings(warehouse.config())? {
            metadata = metadata
                .add_config_key(key, value)
                .map_err(|e| error(e.into()))?;
        }
    }
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(vec!["day".to_string()]),
        predicate: None,
    };
    let mut actions = vec![Action::Metadata(metadata)];
    actions.extend(parts.iter().map(|(_, part)| Action::Add(part.add.clone())));
    let done = CommitBuilder::from(commit)
        .with_actions(actions)
        .build(Some(snapshot), traces.log_store(), operation)
        .await;
    match done {
        Ok(done) => {
            let version = done.version() as i64;
            checkpoint_if_due(warehouse, Table::Traces.dir(), version).await;
            Ok(Committed::Version(version))
        }
        Err(e) if is_conflict(&e) => Ok(Committed::Conflict),
        Err(e) => Err(error(e)),
    }
}

/// Commits that fail at once when another commit came first (the caller checks again),
/// with no checkpoint or log clean-up after them: a failure there would report a commit
/// that landed as failed. [`checkpoint_if_due`] writes checkpoints instead.
pub fn quiet_commit() -> CommitProperties {
    CommitProperties::default()
        .with_max_retries(0)
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
}

/// How many commits apart checkpoints of `traces` are written.
const CHECKPOINT_EVERY: i64 = 100;

/// Write a checkpoint of the table in folder `dir` when `version` is due one; a failure
/// is logged (the table stays readable from its log).
pub async fn checkpoint_if_due(warehouse: &Warehouse, dir: &str, version: i64) {
    if version <= 0 || version % CHECKPOINT_EVERY != 0 {
        return;
    }
    let result = match warehouse.open_dir(dir).await {
        Ok(table) => match deltalake::checkpoints::create_checkpoint(&table, None).await {
            // and the log entries past the table's log retention go
            Ok(()) => deltalake::checkpoints::cleanup_metadata(&table, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!("checkpoint of {dir} at version {version} not written: {e}");
    }
}

/// The version of `traces` after `read_version` whose commit carries load `load_id`, if
/// any: a commit that landed though the call reported a failure. An error means the log
/// could not be read: whether the commit landed is unknown.
pub async fn landed(
    warehouse: &Warehouse,
    read_version: i64,
    load_id: &str,
) -> Result<Option<i64>, String> {
    committed_with(warehouse, read_version, LOAD_METADATA_KEY, |value| {
        value.get("load_id").and_then(|v| v.as_str()) == Some(load_id)
    })
    .await
}

/// The version of `traces` after `read_version` whose commit metadata has `key` with a
/// value `matches` accepts, read from each commit file after `read_version`.
pub async fn committed_with(
    warehouse: &Warehouse,
    read_version: i64,
    key: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> Result<Option<i64>, String> {
    let traces = warehouse
        .table(Table::Traces)
        .await
        .map_err(|e| e.to_string())?;
    let store = traces.log_store();
    let mut version = read_version + 1;
    loop {
        let Some(bytes) = store
            .read_commit_entry(version as _)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        for line in bytes.split(|b| *b == b'\n') {
            let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if action
                .get("commitInfo")
                .and_then(|info| info.get(key))
                .is_some_and(&matches)
            {
                return Ok(Some(version));
            }
        }
        version += 1;
    }
}

/// Whether a commit failed because another commit took its version.
pub fn is_conflict(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError;
    matches!(
        e,
        deltalake::DeltaTableError::VersionAlreadyExists(_)
            | deltalake::DeltaTableError::Transaction {
                source: TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
                    | TransactionError::CommitConflict(_)
            }
    )
}

/// Store rejected rows in `rejects`, tagged with the load id.
pub async fn write_rejects(
    warehouse: &Warehouse,
    load_id: &str,
    rows: &[SourceRowError],
) -> Result<(), LoadError> {
    let n = rows.len();
    let now = chrono::Utc::now().timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![load_id; n])),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.source_url.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.error.row as i64),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.error.column.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.error.value.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.error.reason.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.error.record.as_str()),
        )),
        Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
    ];
    let batch = RecordBatch::try_new(rejects_schema(), columns)?;
    let table = warehouse.table(Table::Rejects).await?;
    table
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .map_err(delta_err(
            Table::Rejects,
            warehouse.table_url(Table::Rejects),
        ))?;
    Ok(())
}

/// Remove the rejected rows a load stored (a load that starts again).
pub async fn remove_rejects(warehouse: &Warehouse, load_id: &str) -> Result<(), LoadError> {
    let table = warehouse.table(Table::Rejects).await?;
    let predicate = datafusion::prelude::col("load_id").eq(datafusion::prelude::lit(load_id));
    table
        .delete()
        .with_predicate(predicate)
        .await
        .map_err(delta_err(
            Table::Rejects,
            warehouse.table_url(Table::Rejects),
        ))?;
    Ok(())
}

fn loads_batch(records: &[LoadRecord]) -> Result<RecordBatch, LoadError> {
    let ts =
        |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    let int = |f: fn(&LoadRecord) -> u64| {
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| f(r) as i64),
        )) as ArrayRef
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.load_id.as_str()),
        )),
        ts(records.iter().map(|r| r.started_at).collect()),
        ts(records.iter().map(|r| r.finished_at).collect()),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.status.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(records.iter().map(|r| {
            serde_json::to_string(&r.sources).expect("strings serialise")
        }))),
        int(|r| r.files),
        int(|r| r.files_skipped),
        int(|r| r.bytes),
        int(|r| r.rows_read),
        int(|r| r.rows_loaded),
        int(|r| r.rows_duplicate),
        int(|r| r.rows_rejected),
        Arc::new(Int64Array::from_iter(
            records.iter().map(|r| r.traces_version),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.message.as_deref()),
        )),
    ];
    Ok(RecordBatch::try_new(loads_schema(), columns)?)
}

/// Append `record` to `tracecube.loads`.
pub async fn record_load(warehouse: &Warehouse, record: &LoadRecord) -> Result<(), LoadError> {
    append_loads(warehouse, std::slice::from_ref(record)).await
}

async fn append_loads(warehouse: &Warehouse, records: &[LoadRecord]) -> Result<(), LoadError> {
    let table = warehouse.table(Table::Loads).await?;
    table
        .write(vec![loads_batch(records)?])
        .with_save_mode(SaveMode::Append)
        .await
        .map_err(delta_err(Table::Loads, warehouse.table_url(Table::Loads)))?;
    Ok(())
}

/// Record in `tracecube.loads` any committed load whose process stopped before it could
/// log itself: its record travels in the `traces` commit metadata.
pub async fn reconcile_loads(warehouse: &Warehouse, ctx: &SessionContext) -> Result<(), LoadError> {
    let traces = warehouse.table(Table::Traces).await?;
    let Some(latest) = traces.version() else {
        return Ok(());
    };
    let infos: Vec<_> = traces
        .history(Some(50))
        .try_collect()
        .await
        .map_err(delta_err(Table::Traces, warehouse.table_url(Table::Traces)))?;
    // loads still running log themselves (listed before the loads table is read: a load
    // finishing in between is then in the table)
    let running = super::inflight::live(&traces.object_store()).await?.ids;
    // a session of its own (the loader's catalog is shared and reused by its next load)
    let session = SessionContext::new_with_config_rt(ctx.copied_config(), ctx.runtime_env());
    warehouse.register(&session, "loads", Table::Loads).await?;
    let known: HashSet<String> = session
        .sql("SELECT load_id FROM loads WHERE status = 'committed'")
        .await?
        .collect()
        .await?
        .iter()
        .map(cast_strings)
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .flat_map(|b| {
            let a = b.column(0).as_string::<i32>();
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut missing = Vec::new();
    for (age, info) in infos.iter().enumerate() {
        let Some(value) = info.info.get(LOAD_METADATA_KEY) else {
            continue;
        };
        let Ok(mut record) = serde_json::from_value::<LoadRecord>(value.clone()) else {
            continue;
        };
        // not `break`: a load stopped after its commit may be older than one that logged
        // itself since
        if known.contains(&record.load_id) {
            continue;
        }
        if running.contains(&record.load_id) {
            continue;
        }
        record.traces_version = Some(latest as i64 - age as i64);
        record.finished_at = info.timestamp.map_or(record.finished_at, |ms| ms * 1000);
        record.message =
            Some("recorded after the loading process stopped before logging it".into());
        missing.push(record);
    }
    if !missing.is_empty() {
        tracing::info!(
            "recording {} committed load(s) missing from tracecube.loads",
            missing.len()
        );
        missing.reverse();
        append_loads(warehouse, &missing).await?;
    }
    Ok(())
}
