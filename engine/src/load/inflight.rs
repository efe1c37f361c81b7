//! Markers of work in flight on `traces`: a load or a compaction writes files that no
//! commit references yet, and a vacuum must not take them for the leftovers of a process
//! that stopped. Each such process keeps a marker under `traces/_tracecube_inflight/`,
//! named with its start time and rewritten every [`HEARTBEAT`]; a marker not rewritten
//! for [`LIVE_FOR`] belongs to a process that stopped. Vacuum keeps every unreferenced
//! file written after the start of the oldest live marker, and every ledger file while
//! any marker is live.

use std::collections::HashSet;
use std::time::Duration;

use deltalake::logstore::ObjectStoreRef;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::LoadError;

/// Folder of the markers, under the `traces` table (hidden from Delta readers).
pub const INFLIGHT_DIR: &str = "_tracecube_inflight";

/// How often a marker is rewritten.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// How long after its last rewrite a marker counts as live.
pub const LIVE_FOR: Duration = Duration::from_secs(120);

/// The marker of one process's work, rewritten until it is finished or dropped (a
/// dropped marker stays until a vacuum finds it stale).
pub struct Inflight {
    store: ObjectStoreRef,
    path: Path,
    heartbeat: tokio::task::JoinHandle<()>,
    /// When the marker was last written (microseconds since the epoch).
    written: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// The longest time between two writes of the marker so far (microseconds): a lapse
    /// stays known after the heartbeat catches up.
    lapse: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

fn marker_error(e: impl std::fmt::Display) -> LoadError {
    LoadError::Maintenance(format!("the marker of work in progress: {e}"))
}

impl Inflight {
    /// Announce work `id` (a load id, a compaction id) on the table of `store`.
    pub async fn start(store: ObjectStoreRef, id: &str) -> Result<Inflight, LoadError> {
        let started = chrono::Utc::now().timestamp_micros();
        let path = Path::from(format!("{INFLIGHT_DIR}/{started}-{id}"));
        let body = PutPayload::from(
            serde_json::json!({
                "started": started,
                "pid": std::process::id(),
                "pid_namespace": pid_namespace(),
                "host": host(),
            })
            .to_string(),
        );
        store.put(&path, body.clone()).await.map_err(marker_error)?;
        let written = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(started));
        let lapse = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let heartbeat = tokio::spawn({
            let (store, path, written, lapse) =
                (store.clone(), path.clone(), written.clone(), lapse.clone());
            async move {
                let mut ticks = tokio::time::interval(HEARTBEAT);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let at = chrono::Utc::now().timestamp_micros();
                    match store.put(&path, body.clone()).await {
                        Ok(_) => {
                            let last = written.swap(at, std::sync::atomic::Ordering::Relaxed);
                            lapse.fetch_max(at - last, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!("cannot refresh {path}: {e}"),
                    }
                }
            }
        });
        Ok(Inflight {
            store,
            path,
            heartbeat,
            written,
            lapse,
        })
    }

    /// Fail when the marker may have looked stale to a vacuum (not rewritten for half of
    /// [`LIVE_FOR`]: the process was paused, or the store refused the rewrites): files
    /// this work wrote may be gone.
    pub fn check_alive(&self) -> Result<(), LoadError> {
        let written = self.written.load(std::sync::atomic::Ordering::Relaxed);
        let now = chrono::Utc::now().timestamp_micros();
        let age = (now - written).max(self.lapse.load(std::sync::atomic::Ordering::Relaxed));
        if age > (LIVE_FOR.as_micros() / 2) as i64 {
            return Err(marker_error(format!(
                "{} went {} s without being rewritten; a vacuum may have taken this work for stopped: nothing was committed",
                self.path,
                age / 1_000_000
            )));
        }
        Ok(())
    }

    /// The work is done: remove the marker.
    pub async fn finish(self) {
        self.heartbeat.abort();
        if let Err(e) = self.store.delete(&self.path).await {
            tracing::warn!("cannot remove {} (vacuum will): {e}", self.path);
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// The live markers of a table.
#[derive(Debug, Default)]
pub struct Live {
    /// Ids of the work in flight.
    pub ids: HashSet<String>,
    /// When the oldest work in flight started.
    pub oldest_start: Option<chrono::DateTime<chrono::Utc>>,
    /// Markers of processes that stopped, with their last rewrite.
    pub stale: Vec<(Path, chrono::DateTime<chrono::Utc>)>,
}

/// This machine's name, as markers record it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The process-id namespace of this process (`pid:[…]`): process ids compare only
/// within one.
pub(crate) fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Whether the marker `body` was written by a process of this machine that is gone.
fn process_gone(body: &[u8]) -> bool {
    let Ok(marker) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let local = host();
    let (Some(pid), Some(host), Some(namespace)) = (
        marker["pid"].as_u64(),
        marker["host"].as_str(),
        marker["pid_namespace"].as_str(),
    ) else {
        // a marker without its pid namespace is judged by its age alone
        return false;
    };
    let local_namespace = pid_namespace();
    let proc = std::path::Path::new("/proc");
    // process ids compare only within one host and pid namespace (containers may share a
    // host name)
    !local.is_empty()
        && host == local
        && !local_namespace.is_empty()
        && namespace == local_namespace
        && proc.is_dir()
        && !proc.join(pid.to_string()).exists()
}

/// The markers on the table of `store`.
pub async fn live(store: &ObjectStoreRef) -> Result<Live, LoadError> {
    let prefix = Path::from(INFLIGHT_DIR);
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(marker_error)?;
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(LIVE_FOR).expect("short");
    let mut live = Live::default();
    for meta in listed {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        let Some((started, id)) = name.split_once('-') else {
            continue;
        };
        // a marker not rewritten lately, or of a process of this machine that is gone
        let gone = match store.get(&meta.location).await {
            Ok(got) => got.bytes().await.is_ok_and(|b| process_gone(&b)),
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(marker_error(e)),
        };
        if meta.last_modified < cutoff || gone {
            live.stale.push((meta.location.clone(), meta.last_modified));
            continue;
        }
        let started = started
            .parse::<i64>()
            .ok()
            .and_then(chrono::DateTime::from_timestamp_micros)
            .unwrap_or(meta.last_modified);
        live.oldest_start = Some(live.oldest_start.map_or(started, |o| o.min(started)));
        live.ids.insert(id.to_string());
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process id that no process of this machine has.
    fn unused_pid() -> u64 {
        (4_000_000..4_100_000u64)
            .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .expect("a free process id")
    }

    fn marker(pid: u64, host: &str, namespace: Option<&str>) -> Vec<u8> {
        let mut body = serde_json::json!({ "started": 0, "pid": pid, "host": host });
        if let Some(ns) = namespace {
            body["pid_namespace"] = ns.into();
        }
        body.to_string().into_bytes()
    }

    #[test]
    fn a_process_is_gone_only_when_host_and_pid_namespace_are_ours() {
        if host().is_empty() || pid_namespace().is_empty() {
            return; // no /proc: markers are judged by age alone
        }
        let gone = unused_pid();
        let (host, ns) = (host(), pid_namespace());
        assert!(process_gone(&marker(gone, &host, Some(&ns))));
        // another container with the same host name: its ids mean nothing here
        assert!(!process_gone(&marker(gone, &host, Some("pid:[1]"))));
        // a marker that does not say its namespace is judged by its age
        assert!(!process_gone(&marker(gone, &host, None)));
        assert!(!process_gone(&marker(gone, "another-host", Some(&ns))));
        let alive = std::process::id() as u64;
        assert!(!process_gone(&marker(alive, &host, Some(&ns))));
    }

    #[tokio::test]
    async fn a_lapse_of_the_heartbeat_stays_known_after_it_catches_up() {
        let store: ObjectStoreRef = std::sync::Arc::new(object_store::memory::InMemory::new());
        let marker = Inflight::start(store, "test").await.unwrap();
        marker.check_alive().unwrap();
        // the marker was rewritten late once (a paused process), then on time again
        let half = (LIVE_FOR.as_micros() / 2) as i64;
        marker
            .lapse
            .store(half + 1, std::sync::atomic::Ordering::Relaxed);
        assert!(marker.check_alive().is_err());
        marker.finish().await;
    }
}
