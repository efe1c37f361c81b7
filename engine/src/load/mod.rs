//! Loading traces (SPEC §4): sources are read, validated, derived, de-duplicated and
//! committed to `traces` in one Delta commit, with rejected rows quarantined and every
//! load recorded in `tracecube.loads`.

mod commit;
pub mod derive;
pub mod inflight;
pub mod ledger;
pub mod source;
pub mod stage;
pub mod validate;

pub use commit::writer_properties as stored_writer_properties;
pub use commit::writer_properties_with_row_groups;
pub use commit::{checkpoint_if_due, committed_with as commit_with, is_conflict, quiet_commit};

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::cubes::build::NewRows;
use crate::warehouse::{Warehouse, WarehouseError};
use derive::Deriver;
pub use source::{Format, SourceFile};
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
    /// Stops the load at its next safe point before the commit (then nothing is written,
    /// and it fails with [`LoadError::Stopped`]); once the commit has begun it goes on.
    pub stop: Option<tokio_util::sync::CancellationToken>,
    /// Kept up to date as the load goes, for a caller that reports progress.
    pub report: Option<Arc<LoadProgress>>,
}

/// How far a running load got.
#[derive(Debug, Default)]
pub struct LoadProgress {
    rows_read: std::sync::atomic::AtomicU64,
    read_all: std::sync::atomic::AtomicBool,
}

impl LoadProgress {
    /// `Reading N rows so far`, or, once every source is read, what comes after.
    pub fn describe(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let rows = self.rows_read.load(Relaxed);
        if self.read_all.load(Relaxed) {
            format!("all {rows} rows read; writing, checking for duplicates and committing")
        } else {
            format!("{rows} rows read so far")
        }
    }
}

impl LoadOptions {
    /// Fail with [`LoadError::Stopped`] when the load was asked to stop.
    fn check_stop(&self) -> Result<(), LoadError> {
        match &self.stop {
            Some(stop) if stop.is_cancelled() => Err(LoadError::Stopped),
            _ => Ok(()),
        }
    }
}

/// What a load reads: names to resolve, or files already resolved (and checked).
enum Sources {
    Urls(Vec<String>),
    Files(Vec<SourceFile>),
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
    #[error("{} bad row(s); the load was aborted and nothing was written (to load the good rows and keep the bad ones in `rejects`: `--on-error quarantine` on the command line, `WITH (ON_ERROR 'quarantine')` in COPY):\n{}", count, listed(errors, *count))]
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
    #[error("cannot stage the load's rows in the warehouse: {0}")]
    Staging(String),
    #[error(
        "other commits to traces kept coming while this load committed ({attempts} attempts); nothing was written: run the load again"
    )]
    Contended { attempts: usize },
    #[error("the ledger of loaded sources: {0}")]
    Ledger(String),
    #[error("{0}")]
    Maintenance(String),
    #[error("the load was stopped before its commit: nothing was written")]
    Stopped,
}

/// How often a load checks its rows again after another commit took its turn, and how
/// often it starts again when another load committed some of its sources.
const MAX_COMMIT_ATTEMPTS: usize = 20;
const MAX_RESTARTS: usize = 3;

/// How one attempt of a load ended.
enum Run {
    Done(LoadRecord),
    /// A concurrent load committed some of the sources: start again (they are skipped).
    Again,
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

/// Notes, when dropped, that a load of this process ended.
struct LoadEnded;

impl Drop for LoadEnded {
    fn drop(&mut self) {
        crate::warehouse::note_local_commit();
    }
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
        // sources on object stores are read with the warehouse's storage options
        let registry = crate::storage::CloudRegistry::new(warehouse.storage_options().clone());
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_object_store_registry(std::sync::Arc::new(registry))
            .build_arc()
            .expect("a runtime without limits builds");
        Loader {
            warehouse,
            ctx: SessionContext::new_with_config_rt(Default::default(), runtime),
        }
    }

    /// The files `urls` name (each a file, a folder or a glob), as URLs, in load order.
    pub async fn resolve(
        &self,
        urls: &[String],
        format: Option<Format>,
    ) -> Result<Vec<SourceFile>, LoadError> {
        source::resolve(&self.ctx, urls, format).await
    }

    /// Load `files` as [`Loader::resolve`] found them (and the caller checked them): the
    /// same objects are read, not a new listing of their names.
    pub async fn load_files(
        &self,
        files: Vec<SourceFile>,
        options: &LoadOptions,
    ) -> Result<LoadRecord, LoadError> {
        self.load_sources(Sources::Files(files), options).await
    }

    /// Load `urls` atomically: all their new rows are committed in one Delta commit, or
    /// none. A failed load is recorded in `tracecube.loads` with its error.
    pub async fn load(
        &self,
        urls: &[String],
        options: &LoadOptions,
    ) -> Result<LoadRecord, LoadError> {
        self.load_sources(Sources::Urls(urls.to_vec()), options)
            .await
    }

    async fn load_sources(
        &self,
        sources: Sources,
        options: &LoadOptions,
    ) -> Result<LoadRecord, LoadError> {
        let started_at = now_micros();
        let load_id = uuid::Uuid::now_v7().to_string();
        let traces = self
            .warehouse
            .table(crate::warehouse::Table::Traces)
            .await?;
        // vacuum keeps what this load writes, and reconciling loads leaves it alone
        let marker = inflight::Inflight::start(traces.object_store(), &load_id).await?;
        drop(traces);
        // this process's readers look for a new version when the load ends, even when it
        // is dropped (a cancelled COPY) after its commit
        let _ended = LoadEnded;
        let result = self
            .run_marked(&marker, &load_id, started_at, sources, options)
            .await;
        marker.finish().await;
        result
    }

    async fn run_marked(
        &self,
        marker: &inflight::Inflight,
        load_id: &str,
        started_at: i64,
        sources: Sources,
        options: &LoadOptions,
    ) -> Result<LoadRecord, LoadError> {
        let load_id = load_id.to_string();
        let urls = match &sources {
            Sources::Urls(urls) => urls.clone(),
            Sources::Files(files) => files.iter().map(|f| f.url.clone()).collect(),
        };
        commit::reconcile_loads(self.warehouse, &self.ctx).await?;
        let files = match sources {
            Sources::Files(files) => Ok(files),
            Sources::Urls(urls) => source::resolve(&self.ctx, &urls, options.format).await,
        };
        let mut result = match &files {
            Ok(files) => self.run(marker, &load_id, started_at, files, options).await,
            Err(_) => Ok(Run::Again),
        };
        for _ in 1..MAX_RESTARTS {
            let Ok(files) = &files else { break };
            if !matches!(result, Ok(Run::Again)) {
                break;
            }
            tracing::info!("a concurrent load committed some of the same sources: loading again");
            result = self.run(marker, &load_id, started_at, files, options).await;
        }
        let result = match (files, result) {
            (Err(e), _) => Err(e),
            (Ok(_), result) => result,
        };
        let result = match result {
            Ok(Run::Done(record)) => Ok(record),
            Ok(Run::Again) => Err(LoadError::Contended {
                attempts: MAX_RESTARTS,
            }),
            Err(e) => Err(e),
        };
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
        marker: &inflight::Inflight,
        load_id: &str,
        started_at: i64,
        files: &[SourceFile],
        options: &LoadOptions,
    ) -> Result<Run, LoadError> {
        let files = files.to_vec();
        let mut traces = self
            .warehouse
            .table(crate::warehouse::Table::Traces)
            .await?;
        let mut ledger = ledger::Ledger::read(&traces).await?;
        let mut fresh = Vec::new();
        let mut skipped = 0u64;
        for f in files {
            if ledger.contains(&traces, &f).await? {
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
            return Ok(Run::Done(record));
        }

        let bar = progress_bar(options.progress, record.bytes);
        let target = stage::Target::of(&traces)?;
        let budget = usize::try_from(self.warehouse.config().load_memory_mb.max(16) << 20)
            .unwrap_or(usize::MAX);
        let partials =
            match crate::cubes::partials::LoadPartials::open(self.warehouse, budget).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("the cubes' rows will be computed after the commit: {e}");
                    None
                }
            };
        let mut stager = stage::Stager::new(target.clone(), budget).with_partials(partials);
        let mut rejected: Vec<SourceRowError> = Vec::new();
        let started = Instant::now();
        let read = self
            .stage_sources(
                &fresh,
                options,
                &mut stager,
                &mut record,
                &mut rejected,
                &bar,
            )
            .await;
        let failing = options.on_error == OnError::Fail && !rejected.is_empty();
        if read.is_err() || failing {
            stager.abandon().await;
        }
        read?;
        if let Some(report) = &options.report {
            report
                .read_all
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        record.rows_rejected = rejected.len() as u64;
        if failing {
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
        // the duplicate check against the stored contacts is made as each day is staged
        let mut checked = stage::stored_files(&traces)?;
        let mut staged = stager.finish(&checked).await?;
        tracing::debug!(
            "read, validated, derived and staged {} rows in {:?}",
            record.rows_read,
            started.elapsed()
        );
        bar.set_message("checking for contacts already stored");
        if let Err(e) = options.check_stop() {
            self.abandon(&target, &mut staged, load_id, false).await;
            return Err(e);
        }
        if !rejected.is_empty() {
            // stored before the rows they were rejected from, so that none is lost
            commit::write_rejects(self.warehouse, load_id, &rejected).await?;
        }
        let mut stored = stage::StoredFiles::new();
        let mut dropped = 0;
        let mut attempts = 0;
        let version = loop {
            // the staged days made exact against the files stored that were not checked yet
            match stage::settle(&target, &mut staged, &stored).await {
                Ok(n) => dropped += n,
                Err(e) => {
                    self.abandon(&target, &mut staged, load_id, !rejected.is_empty())
                        .await;
                    return Err(e);
                }
            }
            tracing::debug!("duplicate check done at {:?}", started.elapsed());
            record.rows_duplicate = staged.repeats + dropped;
            record.rows_loaded = staged.days.values().flatten().map(|p| p.rows).sum();
            record.status = "committed".into();
            bar.set_message(format!("committing {} rows", record.rows_loaded));
            let parts = staged.parts();
            if let Err(e) = stage::check_present(&target, &parts).await {
                self.abandon(&target, &mut staged, load_id, !rejected.is_empty())
                    .await;
                return Err(e);
            }
            // the last point where the load may stop: past it, it commits
            if let Err(e) = options.check_stop() {
                self.abandon(&target, &mut staged, load_id, !rejected.is_empty())
                    .await;
                return Err(e);
            }
            let read_version = traces.version().map_or(-1, |v| v as i64);
            let committed = match ledger.append(&traces.object_store(), load_id, &fresh).await {
                Ok(list) => {
                    // a vacuum takes this load for stopped when its marker goes stale:
                    // never commit files that may be gone (checked last before the commit)
                    if let Err(e) = marker.check_alive() {
                        ledger::remove_file(&traces.object_store(), list.files.last()).await;
                        self.abandon(&target, &mut staged, load_id, !rejected.is_empty())
                            .await;
                        return Err(e);
                    }
                    let mut committed =
                        commit::commit_traces(self.warehouse, &traces, &parts, &list, &record)
                            .await;
                    if !matches!(committed, Ok(commit::Committed::Version(_))) {
                        // the commit may have landed though the call failed (a retried
                        // write, a failed step after it): never delete what it references
                        match commit::landed(self.warehouse, read_version, load_id).await {
                            Ok(Some(version)) => {
                                committed = Ok(commit::Committed::Version(version))
                            }
                            // another commit took the version: this one was not written
                            Ok(None) if matches!(committed, Ok(commit::Committed::Conflict)) => {
                                ledger::remove_file(&traces.object_store(), list.files.last()).await
                            }
                            Ok(None) => {
                                // failed otherwise: it may still land (a write the store
                                // completes late), so every file stays (vacuum removes
                                // them if unused)
                                let e = committed.err().map_or_else(String::new, |e| e.to_string());
                                return Err(LoadError::Maintenance(format!(
                                    "the commit of load {load_id} failed ({e}); its files were kept in case it lands late: \
                                     run the load again (a no-op if it landed) and vacuum later"
                                )));
                            }
                            Err(e) => {
                                // unknown: keep every file (vacuum removes them if unused)
                                return Err(LoadError::Maintenance(format!(
                                    "cannot tell whether load {load_id} was committed ({e}); nothing was removed: \
                                     run the load again (a no-op if it was) and vacuum later"
                                )));
                            }
                        }
                    }
                    committed
                }
                Err(e) => Err(e),
            };
            match committed {
                Ok(commit::Committed::Version(version)) => break version,
                Ok(commit::Committed::Conflict) if attempts + 1 < MAX_COMMIT_ATTEMPTS => {
                    attempts += 1;
                }
                Ok(commit::Committed::Conflict) => {
                    stage::remove(&target, &mut staged).await;
                    if !rejected.is_empty() {
                        commit::remove_rejects(self.warehouse, load_id).await?;
                    }
                    return Err(LoadError::Contended {
                        attempts: MAX_COMMIT_ATTEMPTS,
                    });
                }
                Err(e) => {
                    stage::remove(&target, &mut staged).await;
                    if !rejected.is_empty()
                        && let Err(cleanup) = commit::remove_rejects(self.warehouse, load_id).await
                    {
                        tracing::warn!(
                            "cannot remove the rejected rows of failed load {load_id}: {cleanup}"
                        );
                    }
                    return Err(e);
                }
            }
            // another commit came first: check against what it changed
            tracing::info!("traces changed while this load committed: checking again");
            let latest = self.warehouse.table(crate::warehouse::Table::Traces).await;
            let reread = match latest {
                Ok(latest) => ledger::Ledger::read(&latest).await.map(|l| (latest, l)),
                Err(e) => Err(e.into()),
            };
            let (latest, latest_ledger) = match reread {
                Ok(read) => read,
                Err(e) => {
                    stage::remove(&target, &mut staged).await;
                    return Err(e);
                }
            };
            for f in &fresh {
                if latest_ledger.contains(&latest, f).await? {
                    stage::remove(&target, &mut staged).await;
                    if !rejected.is_empty() {
                        commit::remove_rejects(self.warehouse, load_id).await?;
                    }
                    bar.finish_and_clear();
                    return Ok(Run::Again);
                }
            }
            // only the files added since are checked on the next turn
            let now = stage::stored_files(&latest)?;
            checked = stage::merge_files(checked, &stored);
            stored = stage::files_not_in(&now, &checked);
            traces = latest;
            ledger = latest_ledger;
        };
        record.traces_version = Some(version);
        tracing::debug!(
            "committed traces version {version} at {:?}",
            started.elapsed()
        );
        bar.set_message("refreshing cubes");
        let parts = staged.parts();
        let was_empty = traces
            .snapshot()
            .map_or(true, |s| s.log_data().num_files() == 0);
        let new_rows = match staged.partials.as_mut() {
            _ if parts.is_empty() => NewRows::Nothing,
            Some(partials) if partials.is_valid() => NewRows::Partials(partials),
            _ => match stage::parts_table(&target, &parts) {
                Some(table) => NewRows::Table(table),
                None => NewRows::Nothing,
            },
        };
        self.refresh_cubes(new_rows, version - 1, was_empty, version, marker)
            .await;
        bar.set_message("chaining journeys");
        self.refresh_journeys(
            stage::parts_table(&target, &parts),
            version - 1,
            was_empty,
            version,
        )
        .await;
        if let Some(partials) = staged.partials.as_mut() {
            // files of cubes not committed (rebuilt instead, or none computed)
            partials.remove_files().await;
        }
        tracing::debug!("cubes refreshed at {:?}", started.elapsed());
        record.finished_at = now_micros();
        commit::record_load(self.warehouse, &record).await?;
        bar.finish_and_clear();
        Ok(Run::Done(record))
    }

    /// Read, validate and derive every source, staging the good rows; bad rows are
    /// listed in `rejected` (a failing load keeps reading to count them, staging nothing
    /// more).
    async fn stage_sources(
        &self,
        files: &[source::SourceFile],
        options: &LoadOptions,
        stager: &mut stage::Stager,
        record: &mut LoadRecord,
        rejected: &mut Vec<SourceRowError>,
        bar: &ProgressBar,
    ) -> Result<(), LoadError> {
        let validator = Arc::new(Validator::new());
        let config = Arc::new(self.warehouse.config().clone());
        let started = Instant::now();
        for file in files {
            options.check_stop()?;
            let (schema, stream) = file.read().await?;
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
            // batches are validated and derived on two threads, and staged in order
            let mut next_row = 1u64;
            let mut checked = stream
                .map(|batch| {
                    let first_row = next_row;
                    if let Ok(b) = &batch {
                        next_row += b.num_rows() as u64;
                    }
                    let (validator, config) = (Arc::clone(&validator), Arc::clone(&config));
                    tokio::task::spawn_blocking(move || {
                        let batch = batch?;
                        let validated = validator.validate(&batch, first_row);
                        let derived = if validated.good.num_rows() > 0 {
                            let mut deriver =
                                Deriver::new(&config).map_err(WarehouseError::from)?;
                            Some(deriver.derive(&validated.good))
                        } else {
                            None
                        };
                        Ok::<_, LoadError>((batch.num_rows() as u64, validated.rejected, derived))
                    })
                })
                .buffered(2);
            while let Some(joined) = checked.next().await {
                options.check_stop()?;
                let (rows, bad, derived) =
                    joined.map_err(|e| LoadError::Staging(e.to_string()))??;
                record.rows_read += rows;
                if let Some(report) = &options.report {
                    report
                        .rows_read
                        .store(record.rows_read, std::sync::atomic::Ordering::Relaxed);
                }
                rejected.extend(bad.into_iter().map(|error| SourceRowError {
                    source_url: file.url.clone(),
                    error,
                }));
                let failing = options.on_error == OnError::Fail && !rejected.is_empty();
                if let Some(derived) = derived
                    && !failing
                {
                    stager.push(derived).await?;
                }
                bar.set_message(format!(
                    "{} rows, {:.0} rows/s",
                    record.rows_read,
                    record.rows_read as f64 / started.elapsed().as_secs_f64().max(1e-9)
                ));
            }
            bar.inc(file.meta.size);
        }
        Ok(())
    }
}

impl Loader<'_> {
    /// A load that will not commit: remove its staged files and, when it stored rejected
    /// rows, those rows (a later run stores them again).
    async fn abandon(
        &self,
        target: &stage::Target,
        staged: &mut stage::Staged,
        load_id: &str,
        has_rejects: bool,
    ) {
        stage::remove(target, staged).await;
        if has_rejects && let Err(e) = commit::remove_rejects(self.warehouse, load_id).await {
            tracing::warn!("cannot remove the rejected rows of failed load {load_id}: {e}");
        }
    }

    /// Bring the cubes to the `traces` version a load committed. A failure is logged and
    /// leaves the cube stale (never used, rebuilt by the next load or `tracecube compact`):
    /// the load itself is committed.
    async fn refresh_cubes(
        &self,
        rows: NewRows<'_>,
        before: i64,
        before_was_empty: bool,
        after: i64,
        marker: &inflight::Inflight,
    ) {
        let result = if after == before + 1 {
            crate::cubes::build::refresh_after_load(
                self.warehouse,
                rows,
                before,
                before_was_empty,
                after,
                marker,
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

impl Loader<'_> {
    /// Bring the stored journeys to the `traces` version a load committed. A failure is
    /// logged and leaves them stale (the journey views then read `traces`; the next load
    /// rebuilds them): the load itself is committed.
    async fn refresh_journeys(
        &self,
        rows: Option<Arc<dyn datafusion::catalog::TableProvider>>,
        before: i64,
        before_was_empty: bool,
        after: i64,
    ) {
        match crate::journeys::maintain::refresh_after_load(
            self.warehouse,
            rows,
            before,
            before_was_empty,
            after,
        )
        .await
        {
            Ok(r) => tracing::info!(
                "journeys: {} {} contacts, {} journeys in {:.2} s (traces version {})",
                r.action,
                r.contacts,
                r.journeys,
                r.seconds,
                r.traces_version
            ),
            Err(e) => tracing::warn!(
                "the load is committed but the stored journeys could not be refreshed; the journey views read traces until the next load rebuilds them: {e}"
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
