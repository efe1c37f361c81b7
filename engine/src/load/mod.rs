//! Loading traces (SPEC §4): sources are read, validated, derived, de-duplicated and
//! committed to `traces` in one Delta commit, with rejected rows quarantined and every
//! load recorded in `tracecube.loads`.

mod commit;
pub mod derive;
pub mod source;
pub mod validate;

pub use commit::writer_properties as stored_writer_properties;
pub use commit::writer_properties_with_row_groups;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Date32Type;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::warehouse::{Warehouse, WarehouseError};
use derive::Deriver;
use source::Format;
use validate::{RowError, Validator};

/// How many row errors a failed load lists before summarising the rest.
pub const MAX_LISTED_ERRORS: usize = 20;

/// What to do with bad rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Any bad row fails the whole load (the default).
    #[default]
    Fail,
    /// Load the good rows; store each bad row in `rejects`.
    Quarantine,
}

impl OnError {
    /// Parse `fail` or `quarantine`.
    pub fn parse(s: &str) -> Option<OnError> {
        match s.to_ascii_lowercase().as_str() {
            "fail" | "abort" => Some(OnError::Fail),
            "quarantine" => Some(OnError::Quarantine),
            _ => None,
        }
    }
}

/// Options of one load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Format of every source, instead of guessing from extensions.
    pub format: Option<Format>,
    pub on_error: OnError,
    /// Show a progress bar on the terminal.
    pub progress: bool,
}

/// A bad row and the file it came from.
#[derive(Debug, Clone)]
pub struct SourceRowError {
    pub source_url: String,
    pub error: RowError,
}

impl std::fmt::Display for SourceRowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.error;
        write!(f, "{} row {}", self.source_url, e.row)?;
        if let Some(c) = &e.column {
            write!(f, " column {c}")?;
        }
        match &e.value {
            Some(v) => write!(f, " value {v:?}: {}", e.reason),
            None => write!(f, ": {}", e.reason),
        }
    }
}

/// Why a load failed. Nothing of a failed load is visible in `traces`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid source URL {url}: {message}")]
    BadUrl { url: String, message: String },
    #[error("no files found at {url}")]
    NoFiles { url: String },
    #[error(
        "cannot tell the format of {url}: name it with --format parquet|csv|ndjson (SQL: WITH (FORMAT …))"
    )]
    UnknownFormat { url: String },
    #[error("cannot read {source_url}: {message}")]
    Read { source_url: String, message: String },
    #[error("{source_url} lacks required column(s) {}", columns.join(", "))]
    MissingColumns {
        source_url: String,
        columns: Vec<String>,
    },
    #[error("{} bad row(s); the load was aborted and nothing was written (use --on-error quarantine to load the good rows):\n{}", count, listed(errors, *count))]
    BadRows {
        count: u64,
        errors: Vec<SourceRowError>,
    },
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("query on the warehouse failed: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
}

fn listed(errors: &[SourceRowError], count: u64) -> String {
    let mut s: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    if count > errors.len() as u64 {
        s.push(format!("  … and {} more", count - errors.len() as u64));
    }
    s.join("\n")
}

/// Outcome of a load, as recorded in `tracecube.loads`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadRecord {
    pub load_id: String,
    /// Microseconds since the epoch.
    pub started_at: i64,
    pub finished_at: i64,
    /// `committed`, `no-op` (every source already loaded) or `failed`.
    pub status: String,
    pub sources: Vec<String>,
    pub files: u64,
    /// Sources skipped because they were already loaded.
    pub files_skipped: u64,
    pub bytes: u64,
    pub rows_read: u64,
    pub rows_loaded: u64,
    pub rows_duplicate: u64,
    pub rows_rejected: u64,
    pub traces_version: Option<i64>,
    pub message: Option<String>,
}

impl LoadRecord {
    /// A record of a load of `sources` with nothing counted yet.
    fn new(load_id: &str, started_at: i64, status: &str, sources: Vec<String>) -> Self {
        LoadRecord {
            load_id: load_id.to_string(),
            started_at,
            finished_at: started_at,
            status: status.to_string(),
            sources,
            files: 0,
            files_skipped: 0,
            bytes: 0,
            rows_read: 0,
            rows_loaded: 0,
            rows_duplicate: 0,
            rows_rejected: 0,
            traces_version: None,
            message: None,
        }
    }

    /// Wall-clock time the load took.
    pub fn elapsed(&self) -> Duration {
        Duration::from_micros((self.finished_at - self.started_at).max(0) as u64)
    }

    /// The one-line summary printed at the end of a load.
    pub fn summary_line(&self) -> String {
        let secs = self.elapsed().as_secs_f64();
        match self.status.as_str() {
            "no-op" => format!(
                "no-op: all {} source file(s) were already loaded; nothing changed",
                self.files_skipped
            ),
            _ => format!(
                "{}: {} rows loaded, {} duplicates skipped, {} rejected, from {} file(s) ({} already loaded), {:.1} MB in {:.2} s ({:.0} rows/s); traces version {}",
                self.status,
                self.rows_loaded,
                self.rows_duplicate,
                self.rows_rejected,
                self.files,
                self.files_skipped,
                self.bytes as f64 / 1e6,
                secs,
                self.rows_read as f64 / secs.max(1e-9),
                self.traces_version
                    .map_or("-".to_string(), |v| v.to_string()),
            ),
        }
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Loads sources into a warehouse.
pub struct Loader<'a> {
    warehouse: &'a Warehouse,
    /// A session used to resolve URLs and query the warehouse.
    ctx: SessionContext,
}

impl<'a> Loader<'a> {
    /// A loader for `warehouse`.
    pub fn new(warehouse: &'a Warehouse) -> Self {
        Loader {
            warehouse,
            ctx: SessionContext::new(),
        }
    }

    /// Load `urls` atomically: all their new rows are committed in one Delta commit, or
    /// none. A failed load is recorded in `tracecube.loads` with its error.
    pub async fn load(
        &self,
        urls: &[String],
        options: &LoadOptions,
    ) -> Result<LoadRecord, LoadError> {
        let started_at = now_micros();
        let load_id = uuid::Uuid::now_v7().to_string();
        commit::reconcile_loads(self.warehouse, &self.ctx).await?;
        let result = self.run(&load_id, started_at, urls, options).await;
        if let Err(e) = &result {
            let mut record = LoadRecord::new(&load_id, started_at, "failed", urls.to_vec());
            record.finished_at = now_micros();
            record.message = Some(e.to_string());
            if let Err(log_error) = commit::record_load(self.warehouse, &record).await {
                tracing::warn!(
                    "could not record failed load {}: {log_error}",
                    record.load_id
                );
            }
        }
        result
    }

    async fn run(
        &self,
        load_id: &str,
        started_at: i64,
        urls: &[String],
        options: &LoadOptions,
    ) -> Result<LoadRecord, LoadError> {
        let files = source::resolve(&self.ctx, urls, options.format).await?;
        let traces = self
            .warehouse
            .table(crate::warehouse::Table::Traces)
            .await?;
        let mut fresh = Vec::new();
        let mut skipped = 0u64;
        for f in files {
            if commit::source_already_loaded(&traces, &f).await? {
                tracing::info!(
                    "{} was already loaded (same URL, size and ETag): skipped",
                    f.url
                );
                skipped += 1;
            } else {
                fresh.push(f);
            }
        }
        let sources = fresh.iter().map(|f| f.url.clone()).collect();
        let mut record = LoadRecord::new(load_id, started_at, "no-op", sources);
        record.files = fresh.len() as u64;
        record.files_skipped = skipped;
        record.bytes = fresh.iter().map(|f| f.meta.size).sum();
        record.traces_version = traces.version().map(|v| v as i64);
        if fresh.is_empty() {
            record.finished_at = now_micros();
            commit::record_load(self.warehouse, &record).await?;
            return Ok(record);
        }

        let bar = progress_bar(options.progress, record.bytes);
        let mut deriver = Deriver::new(self.warehouse.config()).map_err(WarehouseError::from)?;
        let mut batches = Vec::new();
        let mut rejected: Vec<SourceRowError> = Vec::new();
        let started = Instant::now();
        let validator = Validator::new();
        for file in &fresh {
            let (schema, mut stream) = file.read().await?;
            let (missing, extra) = validator.check_columns(&schema);
            if !missing.is_empty() {
                return Err(LoadError::MissingColumns {
                    source_url: file.url.clone(),
                    columns: missing,
                });
            }
            if !extra.is_empty() {
                tracing::warn!(
                    "{}: ignoring column(s) that are not trace columns: {}",
                    file.url,
                    extra.join(", ")
                );
            }
            let mut next_row = 1u64;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let validated = validator.validate(&batch, next_row);
                next_row += batch.num_rows() as u64;
                record.rows_read += batch.num_rows() as u64;
                rejected.extend(validated.rejected.into_iter().map(|error| SourceRowError {
                    source_url: file.url.clone(),
                    error,
                }));
                // A failing load keeps reading to count bad rows but holds no good ones.
                let failing = options.on_error == OnError::Fail && !rejected.is_empty();
                if failing {
                    batches.clear();
                } else if validated.good.num_rows() > 0 {
                    batches.push(deriver.derive(&validated.good));
                }
                bar.set_message(format!(
                    "{} rows, {:.0} rows/s",
                    record.rows_read,
                    record.rows_read as f64 / started.elapsed().as_secs_f64().max(1e-9)
                ));
            }
            bar.inc(file.meta.size);
        }
        record.rows_rejected = rejected.len() as u64;
        if options.on_error == OnError::Fail && !rejected.is_empty() {
            bar.abandon_with_message("aborted: bad rows");
            let count = rejected.len() as u64;
            rejected.truncate(MAX_LISTED_ERRORS);
            return Err(LoadError::BadRows {
                count,
                errors: rejected,
            });
        }

        tracing::debug!(
            "read, validated and derived {} rows in {:?}",
            record.rows_read,
            started.elapsed()
        );
        bar.set_message("checking for contacts already stored");
        let (batches, duplicates) = drop_duplicates(&self.ctx, self.warehouse, batches).await?;
        record.rows_duplicate = duplicates;
        tracing::debug!("duplicate check done at {:?}", started.elapsed());
        record.rows_loaded = batches.iter().map(|b| b.num_rows() as u64).sum();
        record.status = "committed".into();
        bar.set_message(format!("writing {} rows", record.rows_loaded));
        if !rejected.is_empty() {
            commit::write_rejects(self.warehouse, load_id, &rejected).await?;
        }
        let before = traces.version().map_or(0, |v| v as i64);
        let before_was_empty = traces
            .snapshot()
            .map_or(true, |s| s.log_data().num_files() == 0);
        let (version, rows) =
            commit::commit_traces(self.warehouse, traces, batches, &fresh, &mut record).await?;
        record.traces_version = Some(version);
        tracing::debug!(
            "committed traces version {version} at {:?}",
            started.elapsed()
        );
        bar.set_message("refreshing cubes");
        self.refresh_cubes(&rows, before, before_was_empty, version)
            .await;
        drop(rows);
        tracing::debug!("cubes refreshed at {:?}", started.elapsed());
        record.finished_at = now_micros();
        commit::record_load(self.warehouse, &record).await?;
        bar.finish_and_clear();
        Ok(record)
    }
}

impl Loader<'_> {
    /// Bring the cubes to the `traces` version a load committed. A failure is logged and
    /// leaves the cube stale (never used, rebuilt by the next load or `tracecube compact`):
    /// the load itself is committed.
    async fn refresh_cubes(
        &self,
        rows: &[RecordBatch],
        before: i64,
        before_was_empty: bool,
        after: i64,
    ) {
        let result = if after == before + 1 {
            crate::cubes::build::refresh_after_load(
                self.warehouse,
                rows,
                before,
                before_was_empty,
                after,
            )
            .await
        } else {
            // Another commit came between: this load's rows alone do not make the cubes
            // whole again.
            crate::cubes::build::rebuild_all(self.warehouse).await
        };
        match result {
            Ok(report) => {
                for r in report {
                    tracing::info!(
                        "cube {}: {} {} rows in {:.2} s (traces version {})",
                        r.cube,
                        r.action,
                        r.rows,
                        r.seconds,
                        r.traces_version
                    );
                }
            }
            Err(e) => tracing::warn!(
                "the load is committed but a cube could not be refreshed and will not be used until rebuilt (tracecube compact): {e}"
            ),
        }
    }
}

fn progress_bar(show: bool, bytes: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "loading {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .expect("valid template"),
    );
    bar
}

/// Drop rows whose (`contact_id`, `day`) is already stored, or appeared earlier in this
/// load. Returns the remaining batches and how many rows were dropped.
async fn drop_duplicates(
    ctx: &SessionContext,
    warehouse: &Warehouse,
    batches: Vec<RecordBatch>,
) -> Result<(Vec<RecordBatch>, u64), LoadError> {
    let day_of = |b: &RecordBatch| {
        b.column_by_name("day")
            .expect("day")
            .as_primitive::<Date32Type>()
            .clone()
    };
    let id_of = |b: &RecordBatch| {
        b.column_by_name("contact_id")
            .expect("contact_id")
            .as_string::<i32>()
            .clone()
    };
    let mut days: Vec<i32> = batches
        .iter()
        .flat_map(|b| day_of(b).values().to_vec())
        .collect::<HashSet<i32>>()
        .into_iter()
        .collect();
    days.sort_unstable();
    let stored = commit::stored_contact_ids(ctx, warehouse, &days).await?;
    // Keys borrow the ids from the batches, which outlive the set.
    let stored_columns: Vec<_> = stored
        .iter()
        .map(|b| {
            (
                b.column(0).as_primitive::<Date32Type>().clone(),
                b.column(1).as_string::<i32>().clone(),
            )
        })
        .collect();
    let new_columns: Vec<_> = batches.iter().map(|b| (day_of(b), id_of(b))).collect();
    let mut seen: HashSet<(i32, &str)> = HashSet::new();
    for (day, id) in &stored_columns {
        seen.extend(
            day.values()
                .iter()
                .copied()
                .zip(id.iter().map(|v| v.unwrap_or(""))),
        );
    }
    let masks: Vec<BooleanArray> = new_columns
        .iter()
        .map(|(day, id)| {
            (0..id.len())
                .map(|i| Some(seen.insert((day.value(i), id.value(i)))))
                .collect()
        })
        .collect();
    drop(seen);
    let mut dropped = 0u64;
    let mut out = Vec::with_capacity(batches.len());
    for (batch, keep) in batches.into_iter().zip(masks) {
        let kept = keep.true_count();
        dropped += (batch.num_rows() - kept) as u64;
        if kept == batch.num_rows() {
            out.push(batch);
        } else if kept > 0 {
            out.push(filter_record_batch(&batch, &keep)?);
        }
    }
    Ok((out, dropped))
}
