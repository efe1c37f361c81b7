//! The `impact_weights (axis, key, weight)` table: the experts' weights, a Delta table
//! of the warehouse. `INSERT`, `UPDATE` and `DELETE` validate the rows, rewrite the
//! table in one commit, then make the new weights current for every query planned
//! afterwards (no rebuild: cubes keep `effort_sum`).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{Float64Type, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, exec_err};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;
use futures::StreamExt;
use tokio::sync::Mutex;
use tracecube_udfs::{Axis, ImpactWeights, WeightsHandle};

use crate::load::validate::{canonical_category, canonical_channel, canonical_path};
use crate::schema::weights_schema;
use crate::warehouse::{Table, Warehouse, WarehouseError};

/// The weights shipped with the demo warehouse: avoidable contacts weigh most.
pub const DEMO_WEIGHTS: [(&str, &str, f64); 4] = [
    ("category", "avoidable", 2.0),
    ("category", "selfcare", 1.5),
    ("category", "mandatory", 1.0),
    ("category", "help", 1.0),
];

/// The `impact_weights` table provider.
#[derive(Debug, Clone)]
pub struct WeightsTable(Arc<WeightsState>);

/// The committed weights, and what a commit updates.
#[derive(Debug)]
struct WeightsState {
    warehouse: Warehouse,
    handle: Arc<WeightsHandle>,
    /// The committed rows; the lock serialises writers.
    rows: Mutex<RecordBatch>,
}

impl WeightsTable {
    /// Reads the committed weights and makes them current in `handle`.
    pub async fn open(
        warehouse: &Warehouse,
        handle: Arc<WeightsHandle>,
    ) -> Result<Self, WarehouseError> {
        let table = warehouse.table(Table::ImpactWeights).await?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| warehouse.delta_error(Table::ImpactWeights)(e.into()))?;
        let batches = SessionContext::new()
            .read_table(provider)?
            .collect()
            .await?;
        let batches = batches.iter().map(as_stored).collect::<Result<Vec<_>>>()?;
        let rows = datafusion::arrow::compute::concat_batches(&weights_schema(), &batches)
            .map_err(DataFusionError::from)?;
        let rows = conform(rows)?;
        handle.replace(snapshot(&rows)?);
        Ok(Self(Arc::new(WeightsState {
            warehouse: warehouse.clone(),
            handle,
            rows: Mutex::new(rows),
        })))
    }

    /// Replaces all weights by `entries` (used to seed the demo warehouse).
    pub async fn replace_all(&self, entries: &[(&str, &str, f64)]) -> Result<()> {
        let batch = RecordBatch::try_new(
            weights_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.0))),
                Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.1))),
                Arc::new(Float64Array::from_iter_values(entries.iter().map(|e| e.2))),
            ],
        )?;
        let mut rows = self.0.rows.lock().await;
        self.0.commit(&mut rows, batch).await
    }
}

impl WeightsState {
    /// Validates `next`, writes it as the whole table in one commit, then makes it
    /// current.
    async fn commit(&self, rows: &mut RecordBatch, next: RecordBatch) -> Result<()> {
        let next = conform(next)?;
        let weights = snapshot(&next)?;
        let table = self
            .warehouse
            .table(Table::ImpactWeights)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        table
            .write(vec![next.clone()])
            .with_save_mode(SaveMode::Overwrite)
            .await
            .map_err(|e| {
                DataFusionError::External(Box::new(self
                    .warehouse
                    .delta_error(Table::ImpactWeights)(
                    e
                )))
            })?;
        *rows = next;
        self.handle.replace(weights);
        Ok(())
    }
}

/// `batch` (from a scan or an `INSERT`) with the stored column types.
fn as_stored(batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(weights_schema().fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(weights_schema(), columns)?)
}

/// Checks every row (axis, key and weight) and that no `(axis, key)` repeats; keys
/// are canonicalised like trace values.
fn conform(batch: RecordBatch) -> Result<RecordBatch> {
    let columns = as_stored(&batch)?.columns().to_vec();
    let (axes, keys, weights) = (
        columns[0].as_string::<i32>(),
        columns[1].as_string::<i32>(),
        columns[2].as_primitive::<Float64Type>(),
    );
    let mut seen = HashSet::new();
    let mut canonical_keys = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if axes.is_null(row) || keys.is_null(row) || weights.is_null(row) {
            return exec_err!("impact_weights: axis, key and weight must not be NULL");
        }
        let (axis_name, key, weight) = (axes.value(row), keys.value(row), weights.value(row));
        let bad = |reason: String| -> Result<()> {
            exec_err!("impact_weights ({axis_name}, '{key}'): {reason}")
        };
        let Some(axis) = Axis::parse(axis_name) else {
            return exec_err!(
                "impact_weights: axis '{axis_name}' is not one of declaration, qualification, action, channel, category"
            );
        };
        let canonical = match axis {
            _ if axis.is_hierarchy() && key.is_empty() => Ok(String::new()),
            Axis::Declaration | Axis::Qualification | Axis::Action => canonical_path(key),
            Axis::Channel => canonical_channel(key),
            Axis::Category => canonical_category(key),
        };
        let key = match canonical {
            Ok(key) => key,
            Err(reason) => {
                return exec_err!("impact_weights ({axis_name}, '{key}'): invalid key: {reason}");
            }
        };
        if !(weight.is_finite() && weight >= 0.0) {
            bad(format!("weight {weight} must be a non-negative number"))?;
        }
        if !seen.insert((axis, key.clone())) {
            bad("already has a weight: UPDATE it or DELETE it first".into())?;
        }
        canonical_keys.push(key);
    }
    Ok(RecordBatch::try_new(
        weights_schema(),
        vec![
            Arc::clone(&columns[0]),
            Arc::new(StringArray::from(canonical_keys)),
            Arc::clone(&columns[2]),
        ],
    )?)
}

/// The weights of (already conformed) rows.
fn snapshot(rows: &RecordBatch) -> Result<ImpactWeights> {
    let axes = rows.column(0).as_string::<i32>();
    let keys = rows.column(1).as_string::<i32>();
    let weights = rows.column(2).as_primitive::<Float64Type>();
    Ok(ImpactWeights::new((0..rows.num_rows()).filter_map(|row| {
        Axis::parse(axes.value(row))
            .map(|axis| (axis, keys.value(row).to_string(), weights.value(row)))
    })))
}

#[async_trait]
impl TableProvider for WeightsTable {
    fn schema(&self) -> SchemaRef {
        weights_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows = self.0.rows.lock().await.clone();
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![rows]],
            weights_schema(),
            projection.cloned(),
        )?)
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return exec_err!(
                "impact_weights supports INSERT INTO … VALUES/SELECT only, not {insert_op}"
            );
        }
        Ok(self.change(Change::Insert, input))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let predicates = Self::predicates(state, &filters)?;
        Ok(self.change(Change::Delete { predicates }, nothing()))
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let predicates = Self::predicates(state, &filters)?;
        let schema = weights_schema();
        let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
        let values = assignments
            .into_iter()
            .map(|(name, expr)| {
                let Ok(index) = schema.index_of(&name) else {
                    return exec_err!(
                        "impact_weights has no column {name}: its columns are axis, key, weight"
                    );
                };
                Ok((index, state.create_physical_expr(expr, &df_schema)?))
            })
            .collect::<Result<_>>()?;
        Ok(self.change(Change::Update { predicates, values }, nothing()))
    }
}

impl WeightsTable {
    /// The DML `filters` as expressions over the stored rows.
    fn predicates(state: &dyn Session, filters: &[Expr]) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
        let schema = DFSchema::try_from(weights_schema())?;
        filters
            .iter()
            .map(|f| state.create_physical_expr(f.clone(), &schema))
            .collect()
    }

    /// A plan that applies `change` (with the rows of `input` for an `INSERT`) when it
    /// is executed, not before: planning (and so `EXPLAIN`) changes nothing.
    fn change(&self, change: Change, input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let sink = WeightsChange {
            state: Arc::clone(&self.0),
            change,
        };
        Arc::new(DataSinkExec::new(input, Arc::new(sink), None))
    }
}

/// The schema of the stored weights, for the sinks that write them.
static STORED_SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(weights_schema);

/// The input of a `DELETE` or an `UPDATE`: no rows.
fn nothing() -> Arc<dyn ExecutionPlan> {
    Arc::new(EmptyExec::new(weights_schema()))
}

/// An `INSERT`, a `DELETE` or an `UPDATE` of the weights.
#[derive(Debug)]
enum Change {
    /// Appends the input rows.
    Insert,
    Delete {
        predicates: Vec<Arc<dyn PhysicalExpr>>,
    },
    Update {
        predicates: Vec<Arc<dyn PhysicalExpr>>,
        /// (column index, new value)
        values: Vec<(usize, Arc<dyn PhysicalExpr>)>,
    },
}

/// Applies a [`Change`] to the committed rows in one commit, when executed.
#[derive(Debug)]
struct WeightsChange {
    state: Arc<WeightsState>,
    change: Change,
}

impl DisplayAs for WeightsChange {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.change {
            Change::Insert => write!(f, "ImpactWeightsInsert"),
            Change::Delete { .. } => write!(f, "ImpactWeightsDelete"),
            Change::Update { .. } => write!(f, "ImpactWeightsUpdate"),
        }
    }
}

/// Which committed rows `predicates` select (all when there are none); NULL does not
/// match (SQL three-valued logic).
fn matching(rows: &RecordBatch, predicates: &[Arc<dyn PhysicalExpr>]) -> Result<BooleanArray> {
    let mut selected = BooleanArray::from(vec![true; rows.num_rows()]);
    for predicate in predicates {
        let values = predicate.evaluate(rows)?.into_array(rows.num_rows())?;
        let values: BooleanArray = values
            .as_boolean()
            .iter()
            .map(|v| Some(v == Some(true)))
            .collect();
        selected = datafusion::arrow::compute::and(&selected, &values)?;
    }
    Ok(selected)
}

#[async_trait]
impl DataSink for WeightsChange {
    fn schema(&self) -> &SchemaRef {
        &STORED_SCHEMA
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let mut rows = self.state.rows.lock().await;
        let (count, next) = match &self.change {
            Change::Insert => {
                let mut batches = vec![rows.clone()];
                let mut inserted = 0;
                while let Some(batch) = data.next().await {
                    let batch = batch?;
                    inserted += batch.num_rows() as u64;
                    batches.push(as_stored(&batch)?);
                }
                let next = datafusion::arrow::compute::concat_batches(&STORED_SCHEMA, &batches)?;
                (inserted, next)
            }
            Change::Delete { predicates } => {
                let selected = matching(&rows, predicates)?;
                let kept =
                    filter_record_batch(&rows, &datafusion::arrow::compute::not(&selected)?)?;
                (selected.true_count() as u64, kept)
            }
            Change::Update { predicates, values } => {
                let selected = matching(&rows, predicates)?;
                let mut columns = rows.columns().to_vec();
                for (index, value) in values {
                    let value = value.evaluate(&rows)?.into_array(rows.num_rows())?;
                    let value = cast(&value, rows.schema().field(*index).data_type())?;
                    columns[*index] = zip(&selected, &value, &rows.column(*index))?;
                }
                let next = RecordBatch::try_new(rows.schema(), columns)?;
                (selected.true_count() as u64, next)
            }
        };
        if count > 0 {
            self.state.commit(&mut rows, next).await?;
        }
        Ok(count)
    }
}
