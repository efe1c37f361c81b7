//! What the server knows of `traces` and its cubes: the `traces` version to scan, and for
//! each cube its definition, its size, the `traces` version it reflects and a table
//! provider over it. [`CubeRegistry::refresh`] follows new commits (at most once per
//! second); the rewrite reads [`CubeRegistry::current`] without waiting.
//!
//! There is one clock: the `traces` table of a session ([`TracesTable`]) scans the version
//! of the registry's snapshot, and a query that uses cubes is pinned to one snapshot
//! ([`TracesTable::pinned_to`]), so a cube answers only for the very `traces` version the same query
//! would otherwise scan. `tracecube.cubes` shows the same state.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;
use tokio::sync::Mutex;

use super::CubeDef;
use super::build::{CubeStatus, status};
use super::dictionary::CubeDictionaries;
use super::memory::MemoryCube;
use crate::warehouse::{Table, Warehouse, WarehouseError};

/// How long the known versions are trusted before the logs are checked again.
const FRESHNESS: Duration = Duration::from_secs(1);

/// One cube as the server sees it.
#[derive(Debug, Clone)]
pub struct ServedCube {
    pub def: CubeDef,
    pub dir: String,
    pub status: CubeStatus,
    /// Reads the cube at `status.version`: from memory when it is held, else `storage`.
    pub provider: Option<Arc<dyn TableProvider>>,
    /// Reads the cube's Parquet files at `status.version`.
    pub storage: Option<Arc<dyn TableProvider>>,
    /// Bytes of Arrow memory when the cube is held in memory (else it is read from its
    /// Parquet files at each query).
    pub memory_bytes: Option<u64>,
    /// Bytes of Arrow memory the cube took when it was last read whole, held or not: a
    /// cube found too large is not read again until its version changes.
    pub arrow_bytes: Option<u64>,
    /// The shared values of the dictionary-encoded columns of a cube held in memory.
    pub dictionaries: Arc<CubeDictionaries>,
}

/// The `traces` version to scan, a provider reading exactly that version, and the cubes
/// as they were when it was read.
#[derive(Debug, Clone, Default)]
pub struct CubeSnapshot {
    pub traces_version: Option<i64>,
    pub traces: Option<Arc<dyn TableProvider>>,
    pub cubes: Vec<ServedCube>,
    /// The stored journeys, when they were ever written.
    pub journeys: Option<StoredJourneys>,
}

/// The stored journeys as the server sees them: read only when
/// `status.traces_version` is the snapshot's.
#[derive(Debug, Clone)]
pub struct StoredJourneys {
    pub status: crate::journeys::maintain::JourneyStatus,
    /// The versions of the two tables read.
    versions: (i64, i64),
    pub contacts: Arc<dyn TableProvider>,
    pub summary: Arc<dyn TableProvider>,
}

impl CubeSnapshot {
    /// Whether `cube` reflects the current `traces` and can be read.
    pub fn is_fresh(&self, cube: &ServedCube) -> bool {
        cube.provider.is_some()
            && cube.status.traces_version.is_some()
            && cube.status.traces_version == self.traces_version
    }
}

/// Delta handles kept between refreshes.
struct Handles {
    checked: Option<Instant>,
    /// [`crate::warehouse::local_commits`] when checked.
    commits: u64,
    traces: Option<DeltaTable>,
    cubes: Vec<Option<DeltaTable>>,
    journeys: Option<[DeltaTable; 2]>,
}

/// The server's cubes.
pub struct CubeRegistry {
    warehouse: Warehouse,
    defs: Vec<CubeDef>,
    current: RwLock<Arc<CubeSnapshot>>,
    handles: Mutex<Handles>,
    /// Held while cubes are read into memory (one reader at a time).
    holding: Arc<Mutex<()>>,
}

impl std::fmt::Debug for CubeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CubeRegistry")
            .field("defs", &self.defs)
            .finish()
    }
}

impl CubeRegistry {
    /// The warehouse whose cubes these are.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Where `cube`'s table is stored.
    pub fn location(&self, cube: &ServedCube) -> String {
        self.warehouse.dir_url(&cube.dir).to_string()
    }

    /// The cubes configured for `warehouse`, read once.
    pub async fn open(warehouse: &Warehouse) -> Result<Arc<Self>, WarehouseError> {
        let defs = CubeDef::all(&warehouse.config().cubes)?;
        let registry = Arc::new(CubeRegistry {
            warehouse: warehouse.clone(),
            handles: Mutex::new(Handles {
                checked: None,
                commits: 0,
                traces: None,
                cubes: vec![None; defs.len()],
                journeys: None,
            }),
            defs,
            current: RwLock::new(Arc::new(CubeSnapshot::default())),
            holding: Arc::new(Mutex::new(())),
        });
        // At start-up the cubes that fit are read into memory before the first query.
        registry.read_versions().await?;
        registry.hold_new_versions().await;
        Ok(registry)
    }

    /// The state last read: never waits.
    pub fn current(&self) -> Arc<CubeSnapshot> {
        self.current.read().expect("registry lock").clone()
    }

    /// Read new commits of `traces` and of the cubes, unless checked less than a second
    /// ago. New cube versions are served from their Parquet files at once, and read into
    /// memory in the background (queries do not wait for it).
    pub async fn refresh(self: &Arc<Self>) -> Result<(), WarehouseError> {
        if self.read_versions().await? {
            let Ok(guard) = Arc::clone(&self.holding).try_lock_owned() else {
                // Another task is holding cubes; it reads the latest snapshot again when done.
                return Ok(());
            };
            let registry = Arc::clone(self);
            tokio::spawn(async move {
                let _guard = guard;
                registry.hold_new_versions().await;
            });
        }
        Ok(())
    }

    /// Publish a snapshot of the latest versions of `traces` and of the cubes, keeping in
    /// memory the cubes held at the same version that still fit; whether it was checked.
    async fn read_versions(&self) -> Result<bool, WarehouseError> {
        let mut handles = self.handles.lock().await;
        let commits = crate::warehouse::local_commits();
        if handles.checked.is_some_and(|t| t.elapsed() < FRESHNESS) && handles.commits == commits {
            return Ok(false);
        }
        handles.commits = commits;
        let traces_version = match &mut handles.traces {
            Some(t) => latest(t, &self.warehouse, "traces").await?,
            slot @ None => {
                let t = self.warehouse.table(Table::Traces).await?;
                let v = t.version().map(|v| v as i64);
                *slot = Some(t);
                v
            }
        };
        let previous = self.current();
        let traces = match &previous.traces {
            Some(p) if previous.traces_version == traces_version => Arc::clone(p),
            _ => {
                let table = handles.traces.as_ref().expect("opened above");
                table
                    .table_provider()
                    .await
                    .map_err(|e| self.warehouse.delta_error(Table::Traces)(e.into()))?
            }
        };
        let mut cubes = Vec::with_capacity(self.defs.len());
        for (i, def) in self.defs.iter().enumerate() {
            let dir = def.dir(&self.warehouse.config().sla_seconds);
            let known = previous.cubes.get(i).filter(|c| c.provider.is_some());
            let unusable = ServedCube {
                def: def.clone(),
                dir: dir.clone(),
                status: CubeStatus::default(),
                provider: None,
                storage: None,
                memory_bytes: None,
                arrow_bytes: None,
                dictionaries: Arc::default(),
            };
            let slot = &mut handles.cubes[i];
            if slot.is_none() {
                // A cube no load has written yet has no table: it is simply not there.
                match self.warehouse.open_dir(&dir).await {
                    Ok(t) if t.version().is_some() => *slot = Some(t),
                    _ => {
                        cubes.push(unusable);
                        continue;
                    }
                }
            }
            let table = slot.as_mut().expect("opened above");
            match self.read_cube(table, def, &dir, known).await {
                Ok(cube) => cubes.push(cube),
                Err(e) => {
                    // A cube that cannot be read is not used (queries go to `traces`), and
                    // is opened anew at the next refresh.
                    tracing::warn!("cube {} is not used: {e}", def.name);
                    *slot = None;
                    cubes.push(unusable);
                }
            }
        }
        hold_in_memory(self.budget(), &previous, &mut cubes, false).await;
        let journeys = match self
            .read_journeys(&mut handles.journeys, previous.journeys.as_ref())
            .await
        {
            Ok(j) => j,
            Err(e) => {
                // not used (the views read `traces`), opened anew at the next refresh
                tracing::warn!("the stored journeys are not used: {e}");
                handles.journeys = None;
                None
            }
        };
        *self.current.write().expect("registry lock") = Arc::new(CubeSnapshot {
            traces_version,
            traces: Some(traces),
            cubes,
            journeys,
        });
        handles.checked = Some(Instant::now());
        Ok(true)
    }

    fn budget(&self) -> u64 {
        self.warehouse
            .config()
            .cube_memory_mb
            .saturating_mul(1 << 20)
    }

    /// Read into memory the cubes of the current snapshot that fit and are not held yet,
    /// then publish them unless a newer snapshot was published meanwhile (then start over
    /// from that one).
    async fn hold_new_versions(&self) {
        loop {
            let snapshot = self.current();
            let mut cubes = snapshot.cubes.clone();
            hold_in_memory(self.budget(), &snapshot, &mut cubes, true).await;
            let unchanged = cubes
                .iter()
                .zip(&snapshot.cubes)
                .all(|(a, b)| (a.memory_bytes, a.arrow_bytes) == (b.memory_bytes, b.arrow_bytes));
            if unchanged {
                return;
            }
            let _handles = self.handles.lock().await;
            if Arc::ptr_eq(&self.current(), &snapshot) {
                *self.current.write().expect("registry lock") = Arc::new(CubeSnapshot {
                    cubes,
                    ..(*snapshot).clone()
                });
                return;
            }
        }
    }
}

impl CubeRegistry {
    /// The stored journeys at their latest versions (`None` while no load wrote them).
    async fn read_journeys(
        &self,
        slot: &mut Option<[DeltaTable; 2]>,
        known: Option<&StoredJourneys>,
    ) -> Result<Option<StoredJourneys>, WarehouseError> {
        let dirs = crate::journeys::maintain::dirs(self.warehouse.config().journey_gap_seconds()?);
        if slot.is_none() {
            let (Ok(contacts), Ok(summary)) = (
                self.warehouse.open_dir(&dirs[0]).await,
                self.warehouse.open_dir(&dirs[1]).await,
            ) else {
                return Ok(None);
            };
            if contacts.version().is_none() || summary.version().is_none() {
                return Ok(None);
            }
            *slot = Some([contacts, summary]);
        }
        let [contacts, summary] = slot.as_mut().expect("opened above");
        let versions = (
            latest(contacts, &self.warehouse, &dirs[0])
                .await?
                .unwrap_or(-1),
            latest(summary, &self.warehouse, &dirs[1])
                .await?
                .unwrap_or(-1),
        );
        if let Some(known) = known.filter(|k| k.versions == versions) {
            return Ok(Some(known.clone()));
        }
        let status = crate::journeys::maintain::status(contacts, summary)
            .await
            .map_err(self.warehouse.dir_error(&dirs[1]))?;
        let provider = |t: &DeltaTable, dir: &str| {
            let t = t.clone();
            let error = self.warehouse.dir_error(dir);
            async move {
                let p = t.table_provider().await.map_err(|e| error(e.into()))?;
                Ok::<_, WarehouseError>(Arc::new(PruningOnly(p)) as Arc<dyn TableProvider>)
            }
        };
        Ok(Some(StoredJourneys {
            status,
            versions,
            contacts: provider(contacts, &dirs[0]).await?,
            summary: provider(summary, &dirs[1]).await?,
        }))
    }

    /// The cube in `table` at its latest version (`known` when that is the version held).
    async fn read_cube(
        &self,
        table: &mut DeltaTable,
        def: &CubeDef,
        dir: &str,
        known: Option<&ServedCube>,
    ) -> Result<ServedCube, WarehouseError> {
        let version = latest(table, &self.warehouse, dir).await?;
        if let Some(known) = known.filter(|k| Some(k.status.version) == version) {
            return Ok(known.clone());
        }
        let error = self.warehouse.dir_error(dir);
        let status = status(table).await.map_err(&error)?;
        let provider: Arc<dyn TableProvider> = Arc::new(PruningOnly(
            table.table_provider().await.map_err(|e| error(e.into()))?,
        ));
        Ok(ServedCube {
            def: def.clone(),
            dir: dir.to_string(),
            status,
            provider: Some(Arc::clone(&provider)),
            storage: Some(provider),
            memory_bytes: None,
            arrow_bytes: None,
            dictionaries: Arc::default(),
        })
    }
}

/// Hold the smallest cubes in memory as Arrow batches, within `budget` bytes: a query then
/// skips opening and decoding Parquet files. A cube `previous` held at the same version
/// stays as it is while it fits; one that no longer fits goes back to its Parquet files.
/// Others that fit are read into memory when `load` is set.
async fn hold_in_memory(
    budget: u64,
    previous: &CubeSnapshot,
    cubes: &mut [ServedCube],
    load: bool,
) {
    for cube in cubes.iter_mut() {
        cube.provider.clone_from(&cube.storage);
        cube.memory_bytes = None;
        cube.dictionaries = Arc::default();
    }
    let mut order: Vec<usize> = (0..cubes.len()).collect();
    order.sort_by_key(|&i| cubes[i].status.bytes);
    let mut used = 0u64;
    for i in order {
        let cube = &mut cubes[i];
        let Some(provider) = cube.storage.clone() else {
            continue;
        };
        let same = previous
            .cubes
            .iter()
            .find(|c| c.def == cube.def && c.status.version == cube.status.version);
        if let Some(held) = same.filter(|c| c.memory_bytes.is_some()) {
            let bytes = held.memory_bytes.unwrap_or(0);
            if used + bytes <= budget {
                used += bytes;
                cube.provider = held.provider.clone();
                cube.memory_bytes = held.memory_bytes;
                cube.dictionaries = Arc::clone(&held.dictionaries);
            }
            cube.arrow_bytes = held.arrow_bytes;
            continue;
        }
        // The size measured when this version was last read; else an estimate (Parquet
        // is a fourth to a tenth of the Arrow size): skip what cannot fit.
        cube.arrow_bytes = same.and_then(|c| c.arrow_bytes);
        let estimate = cube.arrow_bytes.unwrap_or(cube.status.bytes * 4);
        if !load || used + estimate > budget {
            continue;
        }
        match in_memory(provider).await {
            Ok((table, bytes, dictionaries)) => {
                cube.arrow_bytes = Some(bytes);
                if used + bytes <= budget {
                    used += bytes;
                    cube.provider = Some(table);
                    cube.memory_bytes = Some(bytes);
                    cube.dictionaries = Arc::new(dictionaries);
                }
            }
            Err(e) => tracing::warn!("cube {} stays on storage: {e}", cube.def.name),
        }
    }
}

/// Read a whole table into memory ([`MemoryCube`]: sorted by time, text columns as
/// dictionaries, split in as many partitions as cores); its Arrow size.
async fn in_memory(
    provider: Arc<dyn TableProvider>,
) -> Result<(Arc<dyn TableProvider>, u64, CubeDictionaries)> {
    let ctx = datafusion::prelude::SessionContext::new();
    let batches = ctx.read_table(Arc::clone(&provider))?.collect().await?;
    let parts = std::thread::available_parallelism().map_or(2, |n| n.get());
    let schema = provider.schema();
    // Sorting and encoding take CPU time, not I/O: off the async workers.
    let (cube, bytes, dictionaries) =
        tokio::task::spawn_blocking(move || MemoryCube::try_new(&schema, batches, parts))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
    Ok((Arc::new(cube), bytes, dictionaries))
}

/// Bring `table` to its latest version; returns it.
async fn latest(
    table: &mut DeltaTable,
    warehouse: &Warehouse,
    dir: &str,
) -> Result<Option<i64>, WarehouseError> {
    let error = warehouse.dir_error(dir);
    let newest = table.get_latest_version().await.map_err(&error)?;
    if table.version() != Some(newest) {
        table.update_incremental(None).await.map_err(&error)?;
    }
    Ok(table.version().map(|v| v as i64))
}

/// The `traces` table of a session. Live, it scans the version of the registry's current
/// snapshot after refreshing it (at most once per second, like the cubes); pinned (by the
/// rewrite, for a query that may use cubes), it scans the version of one snapshot.
#[derive(Debug)]
pub struct TracesTable {
    registry: Arc<CubeRegistry>,
    schema: SchemaRef,
    pinned: Option<Arc<CubeSnapshot>>,
}

impl TracesTable {
    pub fn new(registry: Arc<CubeRegistry>) -> Result<Self, WarehouseError> {
        let schema = registry
            .current()
            .traces
            .as_ref()
            .map(|t| t.schema())
            .ok_or_else(|| {
                WarehouseError::Session(Box::new(DataFusionError::Internal(
                    "traces was not read".into(),
                )))
            })?;
        Ok(TracesTable {
            registry,
            schema,
            pinned: None,
        })
    }

    /// The snapshot this table is pinned to, if it is.
    pub fn pinned(&self) -> Option<&Arc<CubeSnapshot>> {
        self.pinned.as_ref()
    }

    /// The same table pinned to `snapshot`.
    pub fn pinned_to(&self, snapshot: Arc<CubeSnapshot>) -> Self {
        TracesTable {
            registry: Arc::clone(&self.registry),
            schema: self.schema.clone(),
            pinned: Some(snapshot),
        }
    }

    async fn snapshot(&self) -> Result<Arc<CubeSnapshot>> {
        if let Some(s) = &self.pinned {
            return Ok(Arc::clone(s));
        }
        self.registry
            .refresh()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(self.registry.current())
    }
}

#[async_trait]
impl TableProvider for TracesTable {
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
        let snapshot = self.snapshot().await?;
        let traces = snapshot
            .traces
            .as_ref()
            .ok_or_else(|| DataFusionError::Execution("traces could not be read".into()))?;
        traces.scan(state, projection, filters, limit).await
    }
}

/// A cube's Delta table whose scan uses filters only to prune files: DataFusion applies
/// every filter to the rows itself. (The Delta scan takes some filters as exact and then
/// drops those it cannot turn into a predicate, such as a constant `NULL` condition.)
#[derive(Debug)]
struct PruningOnly(Arc<dyn TableProvider>);

#[async_trait]
impl TableProvider for PruningOnly {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use datafusion::datasource::MemTable;

    use super::*;
    use crate::config::CubeConfig;

    /// A cube of `rows` rows on its Parquet files (here: a `MemTable`), at version 1.
    fn cube(name: &str, rows: usize) -> ServedCube {
        let def = CubeDef::new(
            name,
            &CubeConfig {
                dimensions: vec!["channel".into()],
                retention: None,
            },
        )
        .unwrap();
        let channel: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| ["phone", "email", "chat"][i % 3]),
        ));
        let contacts: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows as i64));
        let batch =
            RecordBatch::try_from_iter([("channel", channel), ("contacts", contacts)]).unwrap();
        let storage: Arc<dyn TableProvider> =
            Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap());
        ServedCube {
            def,
            dir: format!("cubes/{name}"),
            status: CubeStatus {
                rows: rows as u64,
                bytes: rows as u64,
                version: 1,
                ..CubeStatus::default()
            },
            provider: Some(Arc::clone(&storage)),
            storage: Some(storage),
            memory_bytes: None,
            arrow_bytes: None,
            dictionaries: Arc::default(),
        }
    }

    fn held(cubes: &[ServedCube]) -> Vec<bool> {
        cubes.iter().map(|c| c.memory_bytes.is_some()).collect()
    }

    #[tokio::test]
    async fn held_cubes_stay_within_the_budget() {
        let mut all = vec![cube("small", 1_000), cube("large", 100_000)];
        let mut unread = all.clone();
        hold_in_memory(u64::MAX, &CubeSnapshot::default(), &mut unread, false).await;
        assert_eq!(held(&unread), [false, false], "only a load reads cubes");
        hold_in_memory(u64::MAX, &CubeSnapshot::default(), &mut all, true).await;
        assert_eq!(held(&all), [true, true]);
        let small = all[0].memory_bytes.unwrap();
        let large = all[1].memory_bytes.unwrap();
        assert!(small < large);
        for cube in &all {
            assert!(!Arc::ptr_eq(
                cube.provider.as_ref().unwrap(),
                cube.storage.as_ref().unwrap()
            ));
        }
        let previous = CubeSnapshot {
            cubes: all,
            ..CubeSnapshot::default()
        };

        // Same versions (a refresh keeps the cubes it held, as `read_cube` does), a budget
        // that now holds only the smaller: the larger goes back to its files, never left
        // in memory uncharged.
        let mut next = previous.cubes.clone();
        hold_in_memory(small + large - 1, &previous, &mut next, false).await;
        assert_eq!(held(&next), [true, false]);
        assert!(Arc::ptr_eq(
            next[0].provider.as_ref().unwrap(),
            previous.cubes[0].provider.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            next[1].provider.as_ref().unwrap(),
            next[1].storage.as_ref().unwrap()
        ));
        assert!(next[1].dictionaries.values("channel").is_none());
        assert_eq!(next[1].arrow_bytes, Some(large));

        // A budget of nothing holds nothing.
        let mut none = previous.cubes.clone();
        hold_in_memory(0, &previous, &mut none, true).await;
        assert_eq!(held(&none), [false, false]);
    }
}
