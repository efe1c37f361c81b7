//! Staging a load: its rows, as they are read, gathered per `day` and written as Parquet
//! files of the `traces` table that no commit references yet. The memory held is bounded
//! by the load's budget: when the buffered rows pass it, the days written to least
//! recently are written out (in chronological exports: the days already complete).
//!
//! Each staged file holds one day's rows without repeated `contact_id`s, neither within
//! the load nor with the contacts stored that day when the load started, sorted by
//! (channel, declaration); the cube rows of the load are computed from the same rows as
//! they are written ([`LoadPartials`]). [`settle`] then makes each day exact against
//! files committed by other loads meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{Date32Type, SchemaRef};
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::Add;
use deltalake::logstore::ObjectStoreRef;
use deltalake::operations::write::configs::WriterStatsConfig;
use deltalake::{DeltaTable, Path};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use tokio::task::JoinSet;

use super::LoadError;
use super::commit::writer_properties;
use super::source::ObjectFile;
use crate::cubes::partials::LoadPartials;
use crate::schema::traces_schema;
use crate::warehouse::{Table, WarehouseError};

/// How many staged files are written at once.
const WRITERS: usize = 2;

/// One staged file of a day.
#[derive(Debug, Clone)]
pub struct Part {
    pub add: Add,
    pub rows: u64,
}

/// Where a load's rows are staged, and how they are written: files of a table that no
/// commit references yet.
#[derive(Clone)]
pub struct Target {
    store: ObjectStoreRef,
    stats: WriterStatsConfig,
    schema: SchemaRef,
    partitions: Vec<String>,
    properties: parquet::file::properties::WriterProperties,
}

impl Target {
    /// Files of `traces` (partitioned by `day`), written with its statistics settings.
    pub fn of(traces: &DeltaTable) -> Result<Self, LoadError> {
        let error =
            |e| LoadError::Warehouse(WarehouseError::delta(Table::Traces, traces.table_url(), e));
        Self::of_table(
            traces,
            traces_schema(),
            vec!["day".to_string()],
            writer_properties(),
        )
        .map_err(error)
    }

    /// Files of `table`, of `schema`, partitioned by `partitions`.
    pub fn of_table(
        table: &DeltaTable,
        schema: SchemaRef,
        partitions: Vec<String>,
        properties: parquet::file::properties::WriterProperties,
    ) -> Result<Self, deltalake::DeltaTableError> {
        let snapshot = table.snapshot()?;
        Ok(Target {
            store: table.object_store(),
            stats: WriterStatsConfig::from_config(snapshot.snapshot().table_configuration()),
            schema,
            partitions,
            properties,
        })
    }

    /// Write `rows` (of the target's schema, in the order they are stored) as new files.
    pub async fn write_sorted(&self, rows: RecordBatch) -> Result<Vec<Part>, LoadError> {
        if rows.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let config = WriterConfig::new(
            Arc::clone(&self.schema),
            self.partitions.clone(),
            Some(self.properties.clone()),
            None,
            None,
            self.stats.num_indexed_cols,
            self.stats.stats_columns.clone(),
        );
        let mut writer = DeltaWriter::new(Arc::clone(&self.store), config);
        writer.write(&rows).await.map_err(staging)?;
        let adds = writer.close().await.map_err(staging)?;
        Ok(adds
            .into_iter()
            .map(|add| Part {
                rows: add
                    .get_stats()
                    .ok()
                    .flatten()
                    .map_or(0, |s| s.num_records as u64),
                add,
            })
            .collect())
    }

    /// A reader of the file at `path` (relative to the table), of `size` bytes.
    async fn open(
        &self,
        path: &str,
        size: u64,
    ) -> Result<ParquetRecordBatchStreamBuilder<ObjectFile>, LoadError> {
        let location = Path::parse(path).map_err(|e| LoadError::Staging(e.to_string()))?;
        let reader = ObjectFile::new(Arc::clone(&self.store), location, size);
        ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| LoadError::Staging(format!("{path}: {e}")))
    }

    /// Every row of the staged or stored file at `path` (relative to the table), with
    /// its `day`.
    async fn read(&self, path: &str, size: u64, day: i32) -> Result<RecordBatch, LoadError> {
        let builder = self.open(path, size).await?;
        let batches: Vec<RecordBatch> = builder
            .build()
            .map_err(|e| LoadError::Staging(format!("{path}: {e}")))?
            .try_collect()
            .await
            .map_err(|e| LoadError::Staging(format!("{path}: {e}")))?;
        with_day(&batches, day)
    }

    /// The `contact_id`s of the file at `path`.
    async fn contact_ids(&self, path: &str, size: u64) -> Result<Vec<String>, LoadError> {
        let builder = self.open(path, size).await?;
        let Some(index) = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.name() == "contact_id")
        else {
            return Err(LoadError::Staging(format!("{path} has no contact_id")));
        };
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [index]);
        let mut stream = builder
            .with_projection(mask)
            .build()
            .map_err(|e| LoadError::Staging(format!("{path}: {e}")))?;
        let mut ids = Vec::new();
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| LoadError::Staging(format!("{path}: {e}")))?;
            let column = datafusion::arrow::compute::cast(
                batch.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )?;
            ids.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            );
        }
        Ok(ids)
    }

    /// The rows of the stored files `files` of `day`, sorted by (channel, declaration),
    /// written as new files (not committed).
    pub async fn merge(&self, day: i32, files: &[(String, u64)]) -> Result<Vec<Part>, LoadError> {
        let mut rows = Vec::with_capacity(files.len());
        for (path, size) in files {
            rows.push(self.read(path, *size, day).await?);
        }
        let all = concat_batches(&traces_schema(), &rows)?;
        drop(rows);
        let sorted =
            tokio::task::spawn_blocking(move || take_record_batch(&all, &sort_order(&all)))
                .await
                .map_err(|e| LoadError::Staging(e.to_string()))??;
        self.write_sorted(sorted).await
    }

    /// Remove a staged file no commit will reference.
    pub async fn remove(&self, path: &str) {
        if let Ok(location) = Path::parse(path)
            && let Err(e) =
                object_store::ObjectStoreExt::delete(self.store.as_ref(), &location).await
        {
            tracing::warn!("cannot remove staged file {path} (vacuum will): {e}");
        }
    }
}

fn staging(e: deltalake::DeltaTableError) -> LoadError {
    LoadError::Staging(e.to_string())
}

/// Rows of one file of `traces` (which does not store the partition column `day`) with
/// their `day`.
fn with_day(batches: &[RecordBatch], day: i32) -> Result<RecordBatch, LoadError> {
    let schema = traces_schema();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        if field.name() == "day" {
            columns.push(
                Arc::new(datafusion::arrow::array::Date32Array::from(vec![day; rows]))
                    as datafusion::arrow::array::ArrayRef,
            );
            continue;
        }
        let parts = batches
            .iter()
            .map(|b| {
                let column = b.column_by_name(field.name()).ok_or_else(|| {
                    LoadError::Staging(format!("a staged file lacks column {}", field.name()))
                })?;
                Ok(datafusion::arrow::compute::cast(column, field.data_type())?)
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        columns.push(if refs.is_empty() {
            datafusion::arrow::array::new_empty_array(field.data_type())
        } else {
            datafusion::arrow::compute::concat(&refs)?
        });
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `rows` without the rows whose `contact_id` is in `known` or repeats an earlier row,
/// sorted by (channel, declaration): the rows and how many were dropped.
fn distinct_sorted(
    rows: &RecordBatch,
    known: Option<&HashSet<String>>,
) -> Result<(RecordBatch, u64), LoadError> {
    let ids = rows
        .column_by_name("contact_id")
        .expect("contact_id")
        .as_string::<i32>();
    let mut seen: HashSet<&str> = HashSet::with_capacity(ids.len());
    let keep: BooleanArray = ids
        .iter()
        .map(|id| {
            let id = id.unwrap_or("");
            Some(!known.is_some_and(|k| k.contains(id)) && seen.insert(id))
        })
        .collect();
    let dropped = (rows.num_rows() - keep.true_count()) as u64;
    let kept = if dropped == 0 {
        rows.clone()
    } else {
        filter_record_batch(rows, &keep)?
    };
    drop(seen);
    let order = sort_order(&kept);
    Ok((take_record_batch(&kept, &order)?, dropped))
}

/// Row order (channel, declaration) of a day's rows, stable. Channels and declarations
/// repeat, so each distinct value is ranked once and rows are sorted on integer keys.
fn sort_order(batch: &RecordBatch) -> UInt32Array {
    let ranks = |name: &str| -> Vec<u32> {
        let a = batch
            .column_by_name(name)
            .expect("sort column")
            .as_string::<i32>();
        let mut distinct: Vec<&str> = a
            .iter()
            .flatten()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        distinct.sort_unstable();
        let rank: HashMap<&str, u32> = distinct.into_iter().zip(0..).collect();
        a.iter().map(|v| v.map_or(0, |v| rank[v])).collect()
    };
    let (channel, declaration) = (ranks("channel"), ranks("declaration"));
    let mut keys: Vec<(u32, u32, u32)> = (0..batch.num_rows())
        .map(|i| (channel[i], declaration[i], i as u32))
        .collect();
    keys.sort_unstable();
    keys.into_iter().map(|k| k.2).collect()
}

/// A day's buffered rows.
struct Buffer {
    batches: Vec<RecordBatch>,
    bytes: usize,
    /// When rows were last added (a counter).
    touched: u64,
}

/// What staging found: each day's staged files, how many rows repeated a contact of the
/// same day (in the load or stored before), and the cube rows of the staged rows.
#[derive(Debug, Default)]
pub struct Staged {
    pub days: BTreeMap<i32, Vec<Part>>,
    pub repeats: u64,
    pub partials: Option<LoadPartials>,
}

/// Gathers a load's rows per day within a memory budget, then writes each day once as
/// sorted Parquet files of `traces`. Past the budget, the days written to least
/// recently (in chronological exports: the days already complete) are spilled to Arrow
/// IPC files (LZ4) in a local temporary folder, cheap to write and read back, until half
/// the budget is free; each day is assembled from its spills when staging finishes.
pub struct Stager {
    target: Target,
    budget: usize,
    buffered: usize,
    clock: u64,
    days: HashMap<i32, Buffer>,
    /// Local folder of the spill files (removed with the stager).
    spill_dir: Option<tempfile::TempDir>,
    spilled: HashMap<i32, Vec<std::path::PathBuf>>,
    spills: JoinSet<Result<(), LoadError>>,
    spill_count: u64,
    /// Files written by `finish` so far (removed when staging fails).
    written: Vec<Part>,
    /// The cube rows of what is staged, computed as days are written.
    partials: Option<LoadPartials>,
}

impl Stager {
    /// A stager holding at most about `budget` bytes of rows.
    pub fn new(target: Target, budget: usize) -> Self {
        Stager {
            target,
            budget,
            buffered: 0,
            clock: 0,
            days: HashMap::new(),
            spill_dir: None,
            spilled: HashMap::new(),
            spills: JoinSet::new(),
            spill_count: 0,
            written: Vec::new(),
            partials: None,
        }
    }

    /// Compute the cube rows of the staged rows as each day is written.
    pub fn with_partials(mut self, partials: Option<LoadPartials>) -> Self {
        self.partials = partials;
        self
    }

    /// Add derived rows (in the order they were read).
    pub async fn push(&mut self, batch: RecordBatch) -> Result<(), LoadError> {
        self.clock += 1;
        for (day, rows) in split_by_day(&batch)? {
            let bytes = rows.get_array_memory_size();
            let buffer = self.days.entry(day).or_insert_with(|| Buffer {
                batches: Vec::new(),
                bytes: 0,
                touched: 0,
            });
            buffer.batches.push(rows);
            buffer.bytes += bytes;
            buffer.touched = self.clock;
            self.buffered += bytes;
        }
        if self.buffered > self.budget {
            let mut order: Vec<(u64, std::cmp::Reverse<usize>, i32)> = self
                .days
                .iter()
                .map(|(day, b)| (b.touched, std::cmp::Reverse(b.bytes), *day))
                .collect();
            order.sort_unstable();
            for (_, _, day) in order {
                if self.buffered <= self.budget / 2 {
                    break;
                }
                self.spill(day).await?;
            }
        }
        Ok(())
    }

    /// Spill the buffered rows of `day` to a local Arrow IPC file.
    async fn spill(&mut self, day: i32) -> Result<(), LoadError> {
        let Some(buffer) = self.days.remove(&day) else {
            return Ok(());
        };
        self.buffered -= buffer.bytes;
        while self.spills.len() >= WRITERS {
            if let Some(joined) = self.spills.join_next().await {
                joined.map_err(|e| LoadError::Staging(e.to_string()))??;
            }
        }
        if self.spill_dir.is_none() {
            sweep_spills();
            self.spill_dir = Some(
                tempfile::Builder::new()
                    .prefix(&format!(
                        "{SPILL_PREFIX}{}-{}-",
                        namespace_id(),
                        std::process::id()
                    ))
                    .tempdir()
                    .map_err(|e| {
                        LoadError::Staging(format!("cannot create a spill folder: {e}"))
                    })?,
            );
        }
        let dir = self.spill_dir.as_ref().expect("created above").path();
        let path = dir.join(format!("{day}-{}.arrow", self.spill_count));
        self.spill_count += 1;
        self.spilled.entry(day).or_default().push(path.clone());
        self.spills
            .spawn_blocking(move || write_spill(&path, &buffer.batches));
        Ok(())
    }

    /// Write every day once, from its spills and buffered rows, as sorted Parquet files
    /// without repeated contacts, neither within the load nor with the files of `stored`
    /// of the same day: what was staged. On error, the files written so far are removed.
    pub async fn finish(mut self, stored: &StoredFiles) -> Result<Staged, LoadError> {
        let result = self.finish_days(stored).await;
        match result {
            Ok(mut staged) => {
                staged.partials = self.partials.take();
                Ok(staged)
            }
            Err(e) => {
                self.abandon().await;
                Err(e)
            }
        }
    }

    async fn finish_days(&mut self, stored: &StoredFiles) -> Result<Staged, LoadError> {
        while let Some(joined) = self.spills.join_next().await {
            joined.map_err(|e| LoadError::Staging(e.to_string()))??;
        }
        let mut days: Vec<i32> = self
            .days
            .keys()
            .chain(self.spilled.keys())
            .copied()
            .collect();
        days.sort_unstable();
        days.dedup();
        let mut work = Vec::with_capacity(days.len());
        for day in days {
            let buffered = self.days.remove(&day).map_or_else(Vec::new, |b| b.batches);
            let spilled = self.spilled.remove(&day).unwrap_or_default();
            let files = stored.get(&day).cloned().unwrap_or_default();
            work.push((day, buffered, spilled, files));
        }
        let target = self.target.clone();
        let mut written = futures::stream::iter(work)
            .map(|(day, buffered, spilled, files)| {
                let target = target.clone();
                async move {
                    // the contacts already stored that day (read only for the days the
                    // load brings: memory grows with a day, not with the table)
                    let mut known = HashSet::new();
                    for (path, size) in &files {
                        known.extend(target.contact_ids(path, *size).await?);
                    }
                    let rows = tokio::task::spawn_blocking(move || {
                        let mut batches = Vec::new();
                        for path in &spilled {
                            batches.extend(read_spill(path)?);
                            let _ = std::fs::remove_file(path);
                        }
                        batches.extend(buffered);
                        let rows = concat_batches(&traces_schema(), &batches)?;
                        drop(batches);
                        distinct_sorted(&rows, (!known.is_empty()).then_some(&known))
                    })
                    .await
                    .map_err(|e| LoadError::Staging(e.to_string()))??;
                    let (sorted, repeats) = rows;
                    let parts = target.write_sorted(sorted.clone()).await?;
                    Ok::<_, LoadError>((day, parts, repeats, sorted))
                }
            })
            .buffer_unordered(WRITERS);
        // the cube rows are aggregated on a task of their own, beside the writes
        let (rows_to_aggregate, mut to_aggregate) = tokio::sync::mpsc::channel::<RecordBatch>(2);
        let aggregator = self.partials.take().map(|mut partials| {
            AbortOnDrop(tokio::spawn(async move {
                let mut result = Ok(());
                while let Some(rows) = to_aggregate.recv().await {
                    result = partials.push(rows).await;
                    if result.is_err() {
                        break;
                    }
                }
                if result.is_ok() {
                    result = partials.flush().await;
                }
                (partials, result)
            }))
        });
        let mut staged = Staged::default();
        let mut result = Ok(());
        while let Some(done) = written.next().await {
            let (day, parts, repeats, sorted) = match done {
                Ok(done) => done,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            self.written.extend(parts.iter().cloned());
            staged.repeats += repeats;
            if !parts.is_empty() {
                staged.days.insert(day, parts);
            }
            // a closed channel means the aggregation failed: its error is read below
            if aggregator.is_some() && rows_to_aggregate.send(sorted).await.is_err() {
                break;
            }
        }
        drop(written);
        drop(rows_to_aggregate);
        if let Some(mut aggregator) = aggregator {
            // the cubes are not the load: when their rows could not be computed, they
            // are computed from the committed rows instead
            match (&mut aggregator.0).await {
                Ok((partials, Ok(()))) => self.partials = Some(partials),
                Ok((mut partials, Err(e))) => {
                    tracing::warn!("the cubes' rows will be computed after the commit: {e}");
                    partials.invalidate().await;
                    self.partials = Some(partials);
                }
                Err(e) => tracing::warn!(
                    "the cubes' rows will be computed after the commit (their task failed: {e})"
                ),
            }
        }
        result.map(|()| staged)
    }

    /// Stop: remove what was staged.
    pub async fn abandon(&mut self) {
        if let Some(partials) = self.partials.as_mut() {
            partials.remove_files().await;
        }
        self.spills.abort_all();
        while self.spills.join_next().await.is_some() {}
        for part in std::mem::take(&mut self.written) {
            self.target.remove(&part.add.path).await;
        }
        self.spill_dir = None;
    }
}

/// A task stopped when its handle is dropped (a load dropped mid-way stops computing its
/// cube rows).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Name prefix of a load's spill folder, followed by the loading process's pid namespace
/// and id.
const SPILL_PREFIX: &str = "tracecube-load-";

/// The digits of this process's pid namespace (`0` when unknown).
fn namespace_id() -> String {
    let digits: String = super::inflight::pid_namespace()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    if digits.is_empty() {
        "0".into()
    } else {
        digits
    }
}

/// Remove the spill folders of loads whose process is gone (killed, out of memory).
fn sweep_spills() {
    let proc = std::path::Path::new("/proc");
    if !proc.is_dir() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // only folders of processes of this pid namespace: ids compare within one
        let mut fields = name.strip_prefix(SPILL_PREFIX).unwrap_or("").split('-');
        let (Some(namespace), Some(pid)) = (
            fields.next(),
            fields.next().and_then(|pid| pid.parse::<u32>().ok()),
        ) else {
            continue;
        };
        if !name.starts_with(SPILL_PREFIX) || namespace != namespace_id() {
            continue;
        }
        if pid != std::process::id() && !proc.join(pid.to_string()).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!("removed the spill folder {name} of a load that stopped"),
                Err(e) => tracing::debug!("cannot remove {name}: {e}"),
            }
        }
    }
}

fn spill_error(path: &std::path::Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Staging(format!("spill file {}: {e}", path.display()))
}

/// Write `batches` to an LZ4-compressed Arrow IPC file at `path`.
fn write_spill(path: &std::path::Path, batches: &[RecordBatch]) -> Result<(), LoadError> {
    use datafusion::arrow::ipc::CompressionType;
    use datafusion::arrow::ipc::writer::{FileWriter, IpcWriteOptions};
    let file = std::fs::File::create(path).map_err(|e| spill_error(path, e))?;
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::LZ4_FRAME))
        .map_err(|e| spill_error(path, e))?;
    let mut writer =
        FileWriter::try_new_with_options(std::io::BufWriter::new(file), &traces_schema(), options)
            .map_err(|e| spill_error(path, e))?;
    for batch in batches {
        writer.write(batch).map_err(|e| spill_error(path, e))?;
    }
    writer.finish().map_err(|e| spill_error(path, e))?;
    Ok(())
}

/// The batches of the spill file at `path`.
fn read_spill(path: &std::path::Path) -> Result<Vec<RecordBatch>, LoadError> {
    use datafusion::arrow::ipc::reader::FileReader;
    let file = std::fs::File::open(path).map_err(|e| spill_error(path, e))?;
    let reader = FileReader::try_new(std::io::BufReader::new(file), None)
        .map_err(|e| spill_error(path, e))?;
    reader
        .map(|b| b.map_err(|e| spill_error(path, e)))
        .collect()
}

/// The rows of `batch` per day, each in their order.
fn split_by_day(batch: &RecordBatch) -> Result<Vec<(i32, RecordBatch)>, LoadError> {
    let days = batch
        .column_by_name("day")
        .expect("day")
        .as_primitive::<Date32Type>();
    if days.is_empty() {
        return Ok(Vec::new());
    }
    let first = days.value(0);
    if days.values().iter().all(|d| *d == first) {
        return Ok(vec![(first, batch.clone())]);
    }
    let mut rows: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for (i, day) in days.values().iter().enumerate() {
        rows.entry(*day).or_default().push(i as u32);
    }
    rows.into_iter()
        .map(|(day, indices)| Ok((day, take_record_batch(batch, &UInt32Array::from(indices))?)))
        .collect()
}

/// The files of one day of `traces`: path in the table, size.
pub type StoredDay = Vec<(String, u64)>;

/// Files of `traces` per day, as in a snapshot.
pub type StoredFiles = HashMap<i32, StoredDay>;

/// The files of each day of `traces`.
pub fn stored_files(traces: &DeltaTable) -> Result<StoredFiles, LoadError> {
    let mut files = StoredFiles::new();
    let Ok(snapshot) = traces.snapshot() else {
        return Ok(files);
    };
    for file in snapshot.log_data().iter() {
        let Some(Some(day)) = file.partition_values_map().get("day").cloned() else {
            continue;
        };
        let Ok(date) = chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d") else {
            continue;
        };
        let day = (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days();
        files
            .entry(day as i32)
            .or_default()
            .push((file.path().to_string(), file.size().max(0) as u64));
    }
    Ok(files)
}

/// The files of `all` that are not in `seen`.
pub fn files_not_in(all: &StoredFiles, seen: &StoredFiles) -> StoredFiles {
    all.iter()
        .filter_map(|(day, files)| {
            let known: HashSet<&str> = seen
                .get(day)
                .map(|f| f.iter().map(|(p, _)| p.as_str()).collect())
                .unwrap_or_default();
            let new: StoredDay = files
                .iter()
                .filter(|(p, _)| !known.contains(p.as_str()))
                .cloned()
                .collect();
            (!new.is_empty()).then_some((*day, new))
        })
        .collect()
}

/// `a` with the files of `b` added.
pub fn merge_files(mut a: StoredFiles, b: &StoredFiles) -> StoredFiles {
    for (day, files) in b {
        a.entry(*day).or_default().extend(files.iter().cloned());
    }
    a
}

/// Make each staged day exact against `stored` (files of `traces` not checked yet): rows
/// whose contact is stored for the same day are dropped (the part rewritten, and the cube
/// rows computed while staging dropped). Returns how many rows were dropped; replaced
/// staged files are removed.
pub async fn settle(
    target: &Target,
    staged: &mut Staged,
    stored: &StoredFiles,
) -> Result<u64, LoadError> {
    let work: Vec<(i32, Vec<Part>, StoredDay)> = staged
        .days
        .iter()
        .filter_map(|(day, parts)| {
            let files = stored.get(day).cloned().unwrap_or_default();
            (!files.is_empty()).then(|| (*day, parts.clone(), files))
        })
        .collect();
    let results: Vec<(i32, Vec<Part>, u64)> = futures::stream::iter(work)
        .map(|(day, parts, files)| async move {
            let (settled, dropped) = settle_day(target, day, &parts, &files).await?;
            Ok::<_, LoadError>((day, settled, dropped))
        })
        .buffer_unordered(WRITERS)
        .try_collect()
        .await?;
    let mut dropped = 0;
    for (day, parts, n) in results {
        dropped += n;
        if parts.is_empty() {
            staged.days.remove(&day);
        } else {
            staged.days.insert(day, parts);
        }
    }
    if dropped > 0
        && let Some(partials) = staged.partials.as_mut()
    {
        // the cube rows were computed from rows now dropped
        partials.invalidate().await;
    }
    Ok(dropped)
}

/// One day of [`settle`]: its parts afterwards and the rows dropped. The parts of a day
/// hold no contact twice (each day is written once); a part holding contacts stored
/// before is written again without them (a filter keeps its order).
async fn settle_day(
    target: &Target,
    day: i32,
    parts: &[Part],
    stored: &[(String, u64)],
) -> Result<(Vec<Part>, u64), LoadError> {
    let mut known = HashSet::new();
    for (path, size) in stored {
        known.extend(target.contact_ids(path, *size).await?);
    }
    let mut settled = Vec::with_capacity(parts.len());
    let mut dropped = 0;
    for part in parts {
        let size = part.add.size.max(0) as u64;
        let ids = target.contact_ids(&part.add.path, size).await?;
        if !ids.iter().any(|id| known.contains(id)) {
            settled.push(part.clone());
            continue;
        }
        let rows = target.read(&part.add.path, size, day).await?;
        let (kept, n) = distinct_sorted(&rows, Some(&known))?;
        dropped += n;
        settled.extend(target.write_sorted(kept).await?);
        target.remove(&part.add.path).await;
    }
    Ok((settled, dropped))
}

/// Fail unless every staged file of `parts` is still there (a vacuum that took the load
/// for stopped would have removed them).
pub async fn check_present(target: &Target, parts: &[(i32, Part)]) -> Result<(), LoadError> {
    for (_, part) in parts {
        let location =
            Path::parse(&part.add.path).map_err(|e| LoadError::Staging(e.to_string()))?;
        if let Err(e) = object_store::ObjectStoreExt::head(target.store.as_ref(), &location).await {
            return Err(LoadError::Staging(format!(
                "staged file {} is gone ({e}): was the load paused for minutes while a vacuum ran? nothing was committed",
                part.add.path
            )));
        }
    }
    Ok(())
}

impl Staged {
    /// Every staged file with its day.
    pub fn parts(&self) -> Vec<(i32, Part)> {
        self.days
            .iter()
            .flat_map(|(day, parts)| parts.iter().map(|p| (*day, p.clone())))
            .collect()
    }
}

/// Remove every staged file of `staged` (a load that will not commit them).
pub async fn remove(target: &Target, staged: &mut Staged) {
    for part in staged.days.values().flatten() {
        target.remove(&part.add.path).await;
    }
    if let Some(partials) = staged.partials.as_mut() {
        partials.remove_files().await;
    }
}

/// The rows of staged (or just committed) parts as a table, `day` included: what the
/// cubes of a load are computed from. `None` when there are none.
pub fn parts_table(
    traces: &Target,
    parts: &[(i32, Part)],
) -> Option<Arc<dyn datafusion::catalog::TableProvider>> {
    (!parts.is_empty()).then(|| {
        Arc::new(PartsTable {
            store: Arc::clone(&traces.store),
            parts: parts.to_vec(),
        }) as _
    })
}

/// Staged parts of `traces` read as a table.
#[derive(Debug)]
struct PartsTable {
    store: ObjectStoreRef,
    parts: Vec<(i32, Part)>,
}

/// The object store URL the parts are read under.
const PARTS_STORE: &str = "tracecube-staged://traces";

impl PartsTable {
    fn table_schema() -> datafusion::datasource::table_schema::TableSchema {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = traces_schema();
        let files: Vec<Field> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != "day")
            .map(|f| f.as_ref().clone())
            .collect();
        datafusion::datasource::table_schema::TableSchema::builder(Arc::new(Schema::new(files)))
            .with_table_partition_cols(vec![Arc::new(Field::new("day", DataType::Date32, false))])
            .build()
    }
}

#[async_trait::async_trait]
impl datafusion::catalog::TableProvider for PartsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(Self::table_schema().table_schema())
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        use datafusion::datasource::listing::PartitionedFile;
        use datafusion::datasource::physical_plan::{
            FileGroup, FileScanConfigBuilder, ParquetSource,
        };
        use datafusion::datasource::source::DataSourceExec;
        use datafusion::execution::object_store::ObjectStoreUrl;
        let url = ObjectStoreUrl::parse(PARTS_STORE)?;
        state
            .runtime_env()
            .register_object_store(url.as_ref(), Arc::clone(&self.store));
        let files: Vec<PartitionedFile> = self
            .parts
            .iter()
            .map(|(day, part)| {
                PartitionedFile::new(part.add.path.clone(), part.add.size.max(0) as u64)
                    .with_partition_values(vec![datafusion::common::ScalarValue::Date32(Some(
                        *day,
                    ))])
            })
            .collect();
        let groups = state.config().target_partitions().max(1);
        let chunk = files.len().div_ceil(groups).max(1);
        let groups: Vec<FileGroup> = files
            .chunks(chunk)
            .map(|c| FileGroup::new(c.to_vec()))
            .collect();
        let source = Arc::new(ParquetSource::new(Self::table_schema()));
        let config = FileScanConfigBuilder::new(url, source)
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
