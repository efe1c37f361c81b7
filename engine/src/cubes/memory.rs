//! A cube held in memory ([`MemoryCube`]): its rows sorted by its time dimension
//! (`minute`, `day` or `month`), in batches that know their time range, so a query on a
//! recent window reads only the batches that overlap it (the way Parquet row-group
//! statistics prune a file), and its text columns as dictionaries ([`super::dictionary`]).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayData, AsArray, RecordBatch};
use datafusion::arrow::compute::{
    cast, concat_batches, max, min, sort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::dictionary::{CubeDictionaries, encode};
use super::time_filters::{MICROS_PER_DAY, time_bounds};

/// Rows per batch: the unit of pruning.
const BATCH_ROWS: usize = 8192;

/// A cube's rows in memory, sorted by its time dimension.
#[derive(Debug)]
pub struct MemoryCube {
    schema: SchemaRef,
    /// The time column, when the cube has one.
    time: Option<String>,
    /// Each batch with the least and greatest value of the time column (µs).
    batches: Vec<(RecordBatch, Option<(i64, i64)>)>,
    partitions: usize,
}

impl MemoryCube {
    /// `batches` (of `schema`) sorted by the first of `minute`, `day`, `month` they have,
    /// their text columns as dictionaries; its Arrow size and the dictionaries.
    pub fn try_new(
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        partitions: usize,
    ) -> Result<(Self, u64, CubeDictionaries)> {
        let time = ["minute", "day", "month"]
            .into_iter()
            .find(|c| schema.index_of(c).is_ok())
            .map(str::to_string);
        let all = concat_batches(schema, &batches)?;
        drop(batches);
        let all = match &time {
            Some(t) => {
                let order =
                    sort_to_indices(all.column_by_name(t).expect("found above"), None, None)?;
                take_record_batch(&all, &order)?
            }
            None => all,
        };
        let sliced: Vec<RecordBatch> = (0..all.num_rows())
            .step_by(BATCH_ROWS)
            .map(|start| all.slice(start, BATCH_ROWS.min(all.num_rows() - start)))
            .collect();
        let (schema, batches, dictionaries) = encode(schema, sliced)?;
        let bytes = distinct_bytes(&batches);
        let batches = batches
            .into_iter()
            .map(|b| {
                let range = match &time {
                    Some(t) => time_range(b.column_by_name(t).expect("kept by encode"))?,
                    None => None,
                };
                Ok((b, range))
            })
            .collect::<Result<Vec<_>>>()?;
        let cube = MemoryCube {
            schema,
            time,
            batches,
            partitions: partitions.max(1),
        };
        Ok((cube, bytes, dictionaries))
    }
}

/// The memory `batches` hold, each buffer counted once however many arrays share it
/// (slices of one array, dictionaries sharing their values).
pub fn distinct_bytes(batches: &[RecordBatch]) -> u64 {
    fn walk(data: &ArrayData, seen: &mut HashSet<usize>, total: &mut u64) {
        let nulls = data.nulls().map(|n| n.buffer());
        for buffer in data.buffers().iter().chain(nulls) {
            if seen.insert(buffer.data_ptr().as_ptr() as usize) {
                *total += buffer.capacity() as u64;
            }
        }
        for child in data.child_data() {
            walk(child, seen, total);
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for column in batches.iter().flat_map(|b| b.columns()) {
        walk(&column.to_data(), &mut seen, &mut total);
    }
    total
}

/// The least and greatest non-NULL value of a date or timestamp column, in µs since the
/// epoch as [`time_bounds`] gives bounds.
fn time_range(column: &dyn Array) -> Result<Option<(i64, i64)>> {
    let unit = match column.data_type() {
        DataType::Date32 => MICROS_PER_DAY,
        _ => 1,
    };
    let values = cast(column, &DataType::Int64)?;
    let values = values.as_primitive::<Int64Type>();
    Ok(min(values)
        .zip(max(values))
        .map(|(lo, hi)| (lo.saturating_mul(unit), hi.saturating_mul(unit))))
}

#[async_trait]
impl TableProvider for MemoryCube {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters only choose the batches to read: every one is applied again above.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (lo, hi) = match &self.time {
            Some(time) => time_bounds(filters, time),
            None => (i64::MIN, i64::MAX),
        };
        let mut partitions = vec![Vec::new(); self.partitions];
        let kept = self.batches.iter().filter(|(_, range)| match range {
            Some((min, max)) => *max >= lo && *min <= hi,
            // only NULL times: no comparison selects them
            None => self.time.is_none() || (lo, hi) == (i64::MIN, i64::MAX),
        });
        for (i, (batch, _)) in kept.enumerate() {
            partitions[i % self.partitions].push(batch.clone());
        }
        Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Date32Array, Int64Array};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::common::ScalarValue;
    use datafusion::prelude::{SessionContext, col, lit};

    /// Rows sorted by day; a day filter reads only the batches of those days and gives
    /// the same rows as without pruning.
    #[tokio::test]
    async fn time_filters_read_only_overlapping_batches() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Date32, true),
            Field::new("contacts", DataType::Int64, false),
        ]));
        // 40 000 rows, days 0..400 in reverse order; row 7 (day 399) NULL
        let n = 40_000;
        let days: Vec<Option<i32>> = (0..n)
            .map(|i| (i != 7).then_some(((n - 1 - i) / 100) as i32))
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Date32Array::from(days)),
                Arc::new(Int64Array::from(vec![1i64; n])),
            ],
        )
        .unwrap();
        let size = distinct_bytes(std::slice::from_ref(&batch)) as f64;
        let (cube, bytes, _) = MemoryCube::try_new(&schema, vec![batch], 2).unwrap();
        assert_eq!(cube.batches.len(), n.div_ceil(BATCH_ROWS));
        // the batches are slices of one sorted copy: counted once
        assert!((bytes as f64) < size * 1.5, "{bytes} bytes for {size}");
        let ctx = SessionContext::new();
        ctx.register_table("c", Arc::new(cube)).unwrap();
        let count = |filter: Expr| {
            let ctx = ctx.clone();
            async move {
                let df = ctx.table("c").await.unwrap().filter(filter).unwrap();
                df.count().await.unwrap()
            }
        };
        let day = |d: i32| lit(ScalarValue::Date32(Some(d)));
        assert_eq!(count(col("day").gt_eq(day(390))).await, 999); // row 7 is NULL
        assert_eq!(count(col("day").eq(day(0))).await, 100);
        assert_eq!(count(day(10).gt(col("day"))).await, 1000);
        assert_eq!(count(col("day").between(day(5), day(6))).await, 200);
        assert_eq!(count(col("day").is_null()).await, 1);
        assert_eq!(count(col("day").lt(day(0))).await, 0);
        // the plan of a recent window reads one batch
        let df = ctx
            .table("c")
            .await
            .unwrap()
            .filter(col("day").gt_eq(day(399)))
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        assert!(shown.contains("partition_sizes=[1, 0]"), "{shown}");
    }
}
