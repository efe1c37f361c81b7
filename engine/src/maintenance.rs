//! Housekeeping of the warehouse: compaction of `traces` (each day's small files merged
//! into files sorted by (channel, declaration), as loads write them) and vacuum (files
//! that no current snapshot references, deleted once a retention has passed), run by
//! `tracecube compact` / `tracecube vacuum` and by the server in the background.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::load::LoadError;
use crate::load::inflight::{self, Inflight};
use crate::load::ledger::{LEDGER_DIR, Ledger};
use crate::load::stage::{self, Part, Target};
use crate::warehouse::{Table, Warehouse, WarehouseError};

/// Compressed bytes of stored files merged into one by a compaction (one group at a
/// time is held in memory, about ten times this size).
const MERGED_BYTES: u64 = 48 << 20;

/// Key of a compaction's id in its commit's metadata.
const COMPACTION_KEY: &str = "tracecube.compaction";

/// How many times a compaction commits again after another commit came first.
const COMMIT_ATTEMPTS: usize = 5;

/// What a compaction of `traces` did.
#[derive(Debug, Clone, Default)]
pub struct TracesCompaction {
    pub files_removed: u64,
    pub files_added: u64,
    /// The version before and after (equal when nothing was merged).
    pub version_before: i64,
    pub version_after: i64,
}

fn delta(traces: &DeltaTable) -> impl Fn(deltalake::DeltaTableError) -> LoadError + '_ {
    move |e| LoadError::Warehouse(WarehouseError::delta(Table::Traces, traces.table_url(), e))
}

/// Merge the files of each day of `traces` (groups of up to [`MERGED_BYTES`]) into files
/// sorted by (channel, declaration), in one commit that changes no row. A concurrent
/// load is never lost: the commit only removes files that are still current, and a load
/// committing after it checks its rows against the merged files.
pub async fn compact_traces(warehouse: &Warehouse) -> Result<TracesCompaction, LoadError> {
    let traces = warehouse.table(Table::Traces).await?;
    let id = uuid::Uuid::now_v7().to_string();
    // vacuum keeps the merged files until they are committed
    let marker = Inflight::start(traces.object_store(), &id).await?;
    let result = compact_marked(warehouse, traces, &id, &marker).await;
    marker.finish().await;
    result
}

async fn compact_marked(
    warehouse: &Warehouse,
    mut traces: DeltaTable,
    id: &str,
    marker: &Inflight,
) -> Result<TracesCompaction, LoadError> {
    let before = traces.version().map_or(0, |v| v as i64);
    let mut report = TracesCompaction {
        version_before: before,
        version_after: before,
        ..Default::default()
    };
    let stored = stage::stored_files(&traces)?;
    let mut groups: Vec<(i32, Vec<(String, u64)>)> = Vec::new();
    for (day, files) in stored {
        let mut group: Vec<(String, u64)> = Vec::new();
        let mut bytes = 0;
        let mut sorted = files;
        sorted.sort_by_key(|(_, size)| *size);
        for (path, size) in sorted {
            if bytes + size > MERGED_BYTES && !group.is_empty() {
                groups.push((day, std::mem::take(&mut group)));
                bytes = 0;
            }
            bytes += size;
            group.push((path, size));
        }
        groups.push((day, group));
    }
    groups.retain(|(_, g)| g.len() > 1);
    groups.sort_by_key(|(day, _)| *day);
    if groups.is_empty() {
        return Ok(report);
    }
    let target = Target::of(&traces)?;
    let merged: Vec<(i32, stage::StoredDay, Vec<Part>)> = futures::stream::iter(groups)
        .map(|(day, files)| {
            let target = target.clone();
            async move {
                let parts = target.merge(day, &files).await?;
                Ok::<_, LoadError>((day, files, parts))
            }
        })
        .buffered(1)
        .try_collect()
        .await?;
    let removed: HashSet<String> = merged
        .iter()
        .flat_map(|(_, files, _)| files.iter().map(|(p, _)| p.clone()))
        .collect();
    let added: Vec<Part> = merged.iter().flat_map(|(_, _, p)| p.clone()).collect();
    let mut attempts = 0;
    let version = loop {
        marker.check_alive()?;
        let committed = commit_merge(&traces, &removed, &added, id).await;
        if let Ok(Some(version)) = committed {
            break version;
        }
        // the commit may have landed though the call failed (a retried write reported as
        // a conflict): look at every commit since the compaction began
        match crate::load::commit_with(warehouse, before, COMPACTION_KEY, |v| {
            v.as_str() == Some(id)
        })
        .await
        {
            Ok(Some(version)) => break version,
            Ok(None) => {}
            Err(e) => {
                // unknown: keep every file (vacuum removes them if unused)
                return Err(LoadError::Maintenance(format!(
                    "cannot tell whether the compaction was committed ({e}); nothing was removed"
                )));
            }
        }
        match committed {
            Ok(None) if attempts + 1 < COMMIT_ATTEMPTS => attempts += 1,
            outcome => {
                for part in &added {
                    target.remove(&part.add.path).await;
                }
                outcome?;
                return Err(LoadError::Contended {
                    attempts: COMMIT_ATTEMPTS,
                });
            }
        }
        traces = warehouse.table(Table::Traces).await?;
    };
    crate::load::checkpoint_if_due(warehouse, Table::Traces.dir(), version).await;
    report.files_removed = removed.len() as u64;
    report.files_added = added.len() as u64;
    report.version_after = version;
    Ok(report)
}

/// Commit the merge at the snapshot of `traces`: `Some(version)`, or `None` when another
/// commit came first (retry on a newer snapshot). Fails when a merged file is no longer
/// current (another compaction took it).
async fn commit_merge(
    traces: &DeltaTable,
    removed: &HashSet<String>,
    added: &[Part],
    id: &str,
) -> Result<Option<i64>, LoadError> {
    let snapshot = traces.snapshot().map_err(delta(traces))?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut actions: Vec<Action> = Vec::new();
    for file in snapshot.log_data().iter() {
        if removed.contains(file.path().as_ref()) {
            let mut remove = file.remove_action(false);
            remove.deletion_timestamp = Some(now);
            actions.push(Action::Remove(remove));
        }
    }
    if actions.len() != removed.len() {
        return Err(LoadError::Maintenance(
            "another compaction merged some of the same files first; nothing was changed".into(),
        ));
    }
    actions.extend(added.iter().map(|p| {
        let mut add = p.add.clone();
        add.data_change = false;
        Action::Add(add)
    }));
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: MERGED_BYTES as i64,
    };
    let properties: CommitProperties = crate::load::quiet_commit()
        .with_metadata([(COMPACTION_KEY.to_string(), serde_json::json!(id))]);
    let done = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(snapshot), traces.log_store(), operation)
        .await;
    match done {
        Ok(done) => Ok(Some(done.version() as i64)),
        Err(e) if crate::load::is_conflict(&e) => Ok(None),
        Err(e) => Err(delta(traces)(e)),
    }
}

/// What a vacuum removed.
#[derive(Debug, Clone, Default)]
pub struct VacuumReport {
    /// Per table folder: files deleted.
    pub tables: Vec<(String, u64)>,
    pub seconds: f64,
}

impl VacuumReport {
    /// Files deleted in all.
    pub fn files(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// Delete the files of every warehouse table that its latest snapshot does not
/// reference and that were replaced (or written without being committed, by a load
/// that stopped) more than `retention` ago: data files replaced by compactions and
/// rewrites, staged files of failed or killed loads, ledger files no longer listed.
/// A query or load started less than `retention` ago still finds every file it may
/// read. No commit is written: table versions do not move.
pub async fn vacuum(warehouse: &Warehouse, retention: Duration) -> Result<VacuumReport, LoadError> {
    let started = Instant::now();
    let mut dirs: Vec<String> = [
        Table::Traces,
        Table::Rejects,
        Table::Loads,
        Table::ImpactWeights,
    ]
    .iter()
    .map(|t| t.dir().to_string())
    .collect();
    let slas = &warehouse.config().sla_seconds;
    for def in crate::cubes::CubeDef::all(&warehouse.config().cubes)
        .map_err(|e| LoadError::Warehouse(e.into()))?
    {
        dirs.push(def.dir(slas));
    }
    // the stored journeys (written by loads and compactions, under their markers)
    let gap = warehouse
        .config()
        .journey_gap_seconds()
        .map_err(|e| LoadError::Warehouse(e.into()))?;
    dirs.extend(crate::journeys::maintain::dirs(gap));
    // the work in flight anywhere in the warehouse (markers are kept next to traces)
    let markers = warehouse.table(Table::Traces).await?.object_store();
    let mut report = VacuumReport::default();
    for dir in dirs {
        let table = match warehouse.open_dir(&dir).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("vacuum: skipping {dir}: {e}");
                continue;
            }
        };
        let (mut deleted, live) = vacuum_table(&table, retention, &dir, &markers).await?;
        if dir == Table::Traces.dir() {
            deleted += vacuum_ledger(warehouse, &table, retention, &live).await?;
            deleted += remove_stale_markers(&table, retention, &live).await;
        }
        report.tables.push((dir, deleted));
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Files never committed are deleted only past this age, whatever the retention: a
/// writer with no marker (a cube refresh, an `impact_weights` change) commits its files
/// within it.
pub const UNCOMMITTED_MIN_AGE: Duration = Duration::from_secs(60);

/// Vacuum one table: the files deleted, and the work in flight it honoured.
async fn vacuum_table(
    table: &DeltaTable,
    retention: Duration,
    dir: &str,
    markers: &deltalake::logstore::ObjectStoreRef,
) -> Result<(u64, inflight::Live), LoadError> {
    let error = |e: deltalake::DeltaTableError| {
        LoadError::Warehouse(WarehouseError::Delta {
            table: dir.to_string(),
            url: table.table_url().to_string(),
            source: Box::new(e),
        })
    };
    // plans only (a vacuum commit would move the table's version and make cubes stale):
    // the files removed by commits longer ago than the retention, and every file no
    // snapshot references
    let plan = |mode: VacuumMode| {
        table
            .clone()
            .vacuum()
            .with_mode(mode)
            .with_retention_period(retention_delta(retention))
            .with_enforce_retention_duration(false)
            .with_dry_run(true)
    };
    let (_, removed) = plan(VacuumMode::Lite).await.map_err(error)?;
    let (_, all) = plan(VacuumMode::Full).await.map_err(error)?;
    let removed: HashSet<String> = removed.files_deleted.into_iter().collect();
    // markers read after the listing: work that wrote a listed file and has not
    // committed it yet is live now, or it has stopped (a paused writer finds its marker
    // lapsed and does not commit)
    let live = inflight::live(markers).await?;
    // a snapshot read after the markers: files committed meanwhile are referenced
    let mut latest = table.clone();
    latest.update_state().await.map_err(error)?;
    let referenced: HashSet<String> = latest
        .snapshot()
        .map_err(error)?
        .log_data()
        .iter()
        .map(|f| f.path().to_string())
        .collect();
    let store = table.object_store();
    let now = chrono::Utc::now();
    // a file never committed may be a writer's that has not committed yet
    let mut young = now - retention_delta(retention.max(UNCOMMITTED_MIN_AGE));
    if let Some(oldest) = live.oldest_start {
        young = young.min(oldest - chrono::Duration::from_std(inflight::LIVE_FOR).expect("short"));
    }
    let mut files: Vec<object_store::path::Path> = Vec::new();
    for path in all.files_deleted {
        let location = object_store::path::Path::from(path.as_str());
        if referenced.contains(&path) || referenced.contains(location.as_ref()) {
            continue;
        }
        if removed.contains(&path) {
            files.push(location);
            continue;
        }
        match store.head(&location).await {
            Ok(meta) if meta.last_modified < young => files.push(location),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(error(e.into())),
        }
    }
    let locations = futures::stream::iter(files.into_iter().map(Ok)).boxed();
    let deleted: Vec<_> = store
        .delete_stream(locations)
        .filter_map(|r| async move {
            match r {
                Ok(path) => Some(Ok(path)),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .try_collect()
        .await
        .map_err(|e| error(e.into()))?;
    let mut count = deleted.len() as u64;
    if let Ok(root) = table.table_url().to_file_path() {
        let cutoff = std::time::SystemTime::from(young);
        count += tokio::task::spawn_blocking(move || remove_upload_leftovers(&root, cutoff))
            .await
            .map_err(|e| LoadError::Maintenance(format!("vacuum: {e}")))?
            .map_err(|e| LoadError::Maintenance(format!("vacuum: {e}")))?;
    }
    Ok((count, live))
}

/// A file written to the local file system goes to `<name>#<n>` first and is renamed
/// when complete: a process killed mid-write leaves that file behind, and the object
/// store never lists it. Delete those last modified before `cutoff` under `root`
/// (a writer still writing one touches it all the while). The table's log folder is
/// left alone.
fn remove_upload_leftovers(
    root: &std::path::Path,
    cutoff: std::time::SystemTime,
) -> std::io::Result<u64> {
    let is_leftover = |name: &str| {
        name.rsplit_once('#').is_some_and(|(stem, n)| {
            !stem.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
    };
    let mut deleted = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() {
                if dir != root || name != "_delta_log" {
                    dirs.push(entry.path());
                }
            } else if kind.is_file() && is_leftover(&name) && entry.metadata()?.modified()? < cutoff
            {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => deleted += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(deleted)
}

/// Delete the markers of processes that stopped.
async fn remove_stale_markers(
    table: &DeltaTable,
    retention: Duration,
    live: &inflight::Live,
) -> u64 {
    let store = table.object_store();
    let cutoff = chrono::Utc::now() - retention_delta(retention);
    let mut removed = 0;
    for (path, last) in &live.stale {
        if *last < cutoff && store.delete(path).await.is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Delete ledger files that the latest `traces` snapshot does not list and that are
/// older than `retention`.
async fn vacuum_ledger(
    warehouse: &Warehouse,
    traces: &DeltaTable,
    retention: Duration,
    live: &inflight::Live,
) -> Result<u64, LoadError> {
    let store = traces.object_store();
    // a load in flight may still read a list that no longer holds some files
    if !live.ids.is_empty() {
        return Ok(0);
    }
    // the latest list, read after the markers: a load starting now reads it or a later one
    let latest = warehouse.table(Table::Traces).await?;
    let ledger = Ledger::read(&latest).await?;
    let current: HashSet<&str> = ledger.files().iter().map(String::as_str).collect();
    let cutoff = chrono::Utc::now() - retention_delta(retention.max(UNCOMMITTED_MIN_AGE));
    let prefix = object_store::path::Path::from(LEDGER_DIR);
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| LoadError::Maintenance(format!("listing {LEDGER_DIR}: {e}")))?;
    let mut deleted = 0;
    for meta in listed {
        if current.contains(meta.location.as_ref()) || meta.last_modified > cutoff {
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => return Err(LoadError::Maintenance(format!("{}: {e}", meta.location))),
        }
    }
    Ok(deleted)
}

/// `retention` as a chrono duration, at most a century.
fn retention_delta(retention: Duration) -> chrono::Duration {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    chrono::Duration::from_std(retention.min(CENTURY)).expect("a century fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_upload_leftovers_outside_the_log_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let day = root.join("day=2026-01-10");
        std::fs::create_dir_all(&day).unwrap();
        std::fs::create_dir_all(root.join("_delta_log")).unwrap();
        for name in ["part-1.parquet#1", "part-1.parquet", "part-2#x", "#3"] {
            std::fs::write(day.join(name), b"x").unwrap();
        }
        std::fs::write(root.join("_delta_log/00000.json#1"), b"x").unwrap();
        // nothing is old enough yet
        let past = std::time::SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(remove_upload_leftovers(root, past).unwrap(), 0);
        let later = std::time::SystemTime::now() + Duration::from_secs(1);
        assert_eq!(remove_upload_leftovers(root, later).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(&day)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["#3", "part-1.parquet", "part-2#x"]);
        assert!(root.join("_delta_log/00000.json#1").exists());
        assert_eq!(
            remove_upload_leftovers(&root.join("gone"), later).unwrap(),
            0
        );
    }
}
