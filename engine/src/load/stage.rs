//! Staging a load: its rows, as they are read, gathered per `day` and written as Parquet
//! files of the `traces` table that no commit references yet. The memory held is bounded
//! by the load's budget: when the buffered rows pass it, the days written to least
//! recently are written out (in chronological exports: the days already complete).
//!
//! Each staged file holds one day's rows without repeated `contact_id`s, sorted by
//! (channel, declaration). [`settle`] then makes each day exact: the parts of a day that
//! was written out more than once are merged into one file, and rows whose contact is
//! already stored for that day are dropped.

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

/// Where a load's rows are staged, and how they are written.
#[derive(Clone)]
pub struct Target {
    store: ObjectStoreRef,
    stats: WriterStatsConfig,
}

impl Target {
    /// Files of `traces`, written with its statistics settings.
    pub fn of(traces: &DeltaTable) -> Result<Self, LoadError> {
        let snapshot = traces.snapshot().map_err(|e| {
            LoadError::Warehouse(WarehouseError::delta(Table::Traces, traces.table_url(), e))
        })?;
        Ok(Target {
            store: traces.object_store(),
            stats: WriterStatsConfig::from_config(snapshot.snapshot().table_configuration()),
        })
    }

    /// Write `rows` (one day's, in order) without repeated contacts, sorted: the file and
    /// how many rows were repeats.
    async fn write(&self, rows: RecordBatch) -> Result<(Vec<Part>, u64), LoadError> {
        let (sorted, repeats) = tokio::task::spawn_blocking(move || distinct_sorted(&rows, None))
            .await
            .map_err(|e| LoadError::Staging(e.to_string()))??;
        Ok((self.write_sorted(sorted).await?, repeats))
    }

    async fn write_sorted(&self, rows: RecordBatch) -> Result<Vec<Part>, LoadError> {
        if rows.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let config = WriterConfig::new(
            traces_schema(),
            vec!["day".to_string()],
            Some(writer_properties()),
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

    /// Remove a staged file no commit will reference.
    async fn remove(&self, path: &str) {
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

/// What staging found: each day's parts in the order they were written, and how many
/// rows repeated a contact of the same day.
#[derive(Debug, Default)]
pub struct Staged {
    pub days: BTreeMap<i32, Vec<Part>>,
    pub repeats: u64,
}

/// One write-out: the day, the order of the write, its parts and the repeats dropped.
type Written = (i32, u64, Vec<Part>, u64);

/// Gathers a load's rows per day and writes them out within a memory budget.
pub struct Stager {
    target: Target,
    budget: usize,
    buffered: usize,
    clock: u64,
    days: HashMap<i32, Buffer>,
    /// Files being written: (day, order of the write) → parts and repeats.
    writes: JoinSet<Result<Written, LoadError>>,
    written: u64,
    done: BTreeMap<i32, Vec<(u64, Vec<Part>)>>,
    repeats: u64,
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
            writes: JoinSet::new(),
            written: 0,
            done: BTreeMap::new(),
            repeats: 0,
        }
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
        while self.buffered > self.budget {
            let Some(day) = self
                .days
                .iter()
                .min_by_key(|(_, b)| (b.touched, std::cmp::Reverse(b.bytes)))
                .map(|(day, _)| *day)
            else {
                break;
            };
            self.write_out(day).await?;
        }
        Ok(())
    }

    /// Write out the buffered rows of `day`.
    async fn write_out(&mut self, day: i32) -> Result<(), LoadError> {
        let Some(buffer) = self.days.remove(&day) else {
            return Ok(());
        };
        self.buffered -= buffer.bytes;
        while self.writes.len() >= WRITERS {
            self.collect_one().await?;
        }
        let rows = concat_batches(&traces_schema(), &buffer.batches)?;
        drop(buffer);
        let target = self.target.clone();
        let order = self.written;
        self.written += 1;
        self.writes.spawn(async move {
            let (parts, repeats) = target.write(rows).await?;
            Ok((day, order, parts, repeats))
        });
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), LoadError> {
        if let Some(joined) = self.writes.join_next().await {
            let (day, order, parts, repeats) =
                joined.map_err(|e| LoadError::Staging(e.to_string()))??;
            self.done.entry(day).or_default().push((order, parts));
            self.repeats += repeats;
        }
        Ok(())
    }

    /// Write out every buffered row: what was staged. On error, the files written so far
    /// are removed.
    pub async fn finish(mut self) -> Result<Staged, LoadError> {
        let result = self.finish_writes().await;
        if result.is_err() {
            self.abandon().await;
        }
        result?;
        let mut staged = Staged {
            days: BTreeMap::new(),
            repeats: self.repeats,
        };
        for (day, mut parts) in std::mem::take(&mut self.done) {
            parts.sort_by_key(|(order, _)| *order);
            staged
                .days
                .insert(day, parts.into_iter().flat_map(|(_, p)| p).collect());
        }
        Ok(staged)
    }

    async fn finish_writes(&mut self) -> Result<(), LoadError> {
        let mut days: Vec<(u64, i32)> = self.days.iter().map(|(d, b)| (b.touched, *d)).collect();
        days.sort_unstable();
        for (_, day) in days {
            self.write_out(day).await?;
        }
        while !self.writes.is_empty() {
            self.collect_one().await?;
        }
        Ok(())
    }

    /// Stop: remove what was staged.
    pub async fn abandon(&mut self) {
        self.writes.abort_all();
        while self.writes.join_next().await.is_some() {}
        for parts in std::mem::take(&mut self.done).into_values() {
            for (_, parts) in parts {
                for part in parts {
                    self.target.remove(&part.add.path).await;
                }
            }
        }
    }
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

/// Make each staged day exact against `stored` (files of `traces` not checked yet): a day
/// staged in several parts is merged into one file, and rows whose contact is stored for
/// the same day are dropped (the part rewritten). Returns how many rows were dropped;
/// replaced staged files are removed.
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
            (parts.len() > 1 || !files.is_empty()).then(|| (*day, parts.clone(), files))
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
    Ok(dropped)
}

/// One day of [`settle`]: its parts afterwards and the rows dropped.
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
    if parts.len() == 1 {
        let ids = target
            .contact_ids(&parts[0].add.path, parts[0].add.size.max(0) as u64)
            .await?;
        if !ids.iter().any(|id| known.contains(id)) {
            return Ok((parts.to_vec(), 0));
        }
    }
    let mut rows = Vec::with_capacity(parts.len());
    for part in parts {
        rows.push(
            target
                .read(&part.add.path, part.add.size.max(0) as u64, day)
                .await?,
        );
    }
    let schema: SchemaRef = traces_schema();
    let all = concat_batches(&schema, &rows)?;
    drop(rows);
    let (sorted, dropped) =
        tokio::task::spawn_blocking(move || distinct_sorted(&all, Some(&known)))
            .await
            .map_err(|e| LoadError::Staging(e.to_string()))??;
    let settled = target.write_sorted(sorted).await?;
    for part in parts {
        target.remove(&part.add.path).await;
    }
    Ok((settled, dropped))
}

/// Remove every staged file of `staged` (a load that will not commit them).
pub async fn remove(target: &Target, staged: &Staged) {
    for part in staged.days.values().flatten() {
        target.remove(&part.add.path).await;
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
