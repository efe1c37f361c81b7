//! The journey views as tables that choose, at each query, where to read from: the
//! stored journeys when they reflect the very `traces` version the query would scan,
//! else the window functions of [`super::reference`] over `traces`. Both give the same
//! rows; the stored ones are read in a fraction of the time.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, JoinType, Result, ScalarValue};
use datafusion::datasource::{TableType, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, TableProviderFilterPushDown, cast, col, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::cubes::registry::{CubeRegistry, CubeSnapshot, TracesTable};

/// Which view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Journeys,
    Summary,
    Transitions,
}

impl View {
    pub const ALL: [View; 3] = [View::Journeys, View::Summary, View::Transitions];

    pub fn name(self) -> &'static str {
        match self {
            View::Journeys => "journeys",
            View::Summary => "journey_summary",
            View::Transitions => "channel_transitions",
        }
    }
}

/// One journey view.
#[derive(Debug)]
pub struct JourneyView {
    view: View,
    registry: Arc<CubeRegistry>,
    /// The window-function plan over `traces`.
    reference: LogicalPlan,
    schema: SchemaRef,
    gap_micros: i64,
}

impl JourneyView {
    /// The view `view` of `ctx` (which has `traces` and the path functions).
    pub async fn new(
        ctx: &SessionContext,
        view: View,
        registry: Arc<CubeRegistry>,
        gap_seconds: i64,
    ) -> Result<Self> {
        let reference = ctx
            .sql(&super::reference::select(view, gap_seconds))
            .await?
            .into_unoptimized_plan();
        let fields: Vec<Field> = reference
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Ok(JourneyView {
            view,
            registry,
            reference,
            schema: Arc::new(Schema::new(fields)),
            gap_micros: gap_seconds * 1_000_000,
        })
    }

    /// The plan over the stored journeys of `snapshot`, when they reflect its `traces`.
    fn stored_plan(&self, snapshot: &Arc<CubeSnapshot>) -> Result<Option<LogicalPlan>> {
        let Some(stored) = snapshot.journeys.as_ref().filter(|j| {
            j.status.traces_version.is_some() && j.status.traces_version == snapshot.traces_version
        }) else {
            return Ok(None);
        };
        let plan = match self.view {
            View::Summary => {
                let gave_up = match stored.status.max_ts {
                    // ended_at + gap < max(ts)
                    Some(max) => Expr::Not(Box::new(col("last_resolved"))).and(col("ended_at").lt(
                        lit(ScalarValue::TimestampMicrosecond(
                            Some(max - self.gap_micros),
                            Some("UTC".into()),
                        )),
                    )),
                    None => lit(ScalarValue::Boolean(None)),
                };
                let columns = [
                    "journey_id",
                    "customer_id",
                    "need",
                    "started_at",
                    "ended_at",
                    "contacts",
                    "channels",
                    "first_channel",
                    "last_channel",
                    "fcr",
                ];
                let mut exprs: Vec<Expr> = columns.iter().map(|c| col(*c)).collect();
                exprs.push(gave_up.alias("gave_up"));
                LogicalPlanBuilder::scan(
                    "s",
                    provider_as_source(Arc::clone(&stored.summary)),
                    None,
                )?
                .project(exprs)?
                .build()?
            }
            View::Transitions => LogicalPlanBuilder::scan(
                "c",
                provider_as_source(Arc::clone(&stored.contacts)),
                None,
            )?
            .filter(col("journey_seq").gt(lit(1i32)))?
            .aggregate(
                vec![col("prev_channel"), col("channel")],
                vec![datafusion::functions_aggregate::count::count_all()],
            )?
            .project(vec![
                col("prev_channel").alias("from_channel"),
                col("channel").alias("to_channel"),
                Expr::Column(Column::from_name("count(*)")).alias("contacts"),
            ])?
            .build()?,
            View::Journeys => {
                let traces = Arc::new(self.traces().pinned_to(Arc::clone(snapshot)));
                let links = LogicalPlanBuilder::scan(
                    "j",
                    provider_as_source(Arc::clone(&stored.contacts)),
                    None,
                )?
                .project(vec![
                    col("customer_id").alias("journey_customer_id"),
                    col("contact_id").alias("journey_contact_id"),
                    col("ts").alias("journey_ts"),
                    col("journey_id"),
                    col("journey_seq"),
                    col("prev_channel"),
                ])?
                .build()?;
                let trace_columns: Vec<Expr> = traces
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| Expr::Column(Column::new(Some("t"), f.name())))
                    .collect();
                let mut exprs = trace_columns;
                exprs.extend(["journey_id", "journey_seq", "prev_channel"].map(col));
                LogicalPlanBuilder::scan("t", provider_as_source(traces), None)?
                    .join(
                        links,
                        JoinType::Inner,
                        // a contact_id is unique within a day, not across days:
                        // a stored contact is its customer, id and instant
                        (
                            vec![
                                Column::new(Some("t"), "customer_id"),
                                Column::new(Some("t"), "contact_id"),
                                Column::new(Some("t"), "ts"),
                            ],
                            vec![
                                Column::from_name("journey_customer_id"),
                                Column::from_name("journey_contact_id"),
                                Column::from_name("journey_ts"),
                            ],
                        ),
                        None,
                    )?
                    .project(exprs)?
                    .build()?
            }
        };
        Ok(Some(plan))
    }

    fn traces(&self) -> TracesTable {
        TracesTable::new(Arc::clone(&self.registry))
            .expect("traces was read when the session was made")
    }

    /// `plan` with this view's columns, found by name, in its order and types.
    fn conformed(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let columns = plan.schema().columns();
        let exprs = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                let column = columns
                    .iter()
                    .find(|c| c.name == *f.name())
                    .ok_or_else(|| {
                        DataFusionError::Internal(format!(
                            "{}: the plan has no column {}",
                            self.view.name(),
                            f.name()
                        ))
                    })?;
                Ok(cast(Expr::Column(column.clone()), f.data_type().clone()).alias(f.name()))
            })
            .collect::<Result<Vec<Expr>>>()?;
        LogicalPlanBuilder::from(plan).project(exprs)?.build()
    }
}

/// `expr` with its columns unqualified (filters name the view; the plan's columns do not).
fn unqualified(expr: &Expr) -> Result<Expr> {
    expr.clone()
        .transform(|e| match e {
            Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                c.name,
            )))),
            e => Ok(Transformed::no(e)),
        })
        .map(|t| t.data)
}

#[async_trait]
impl TableProvider for JourneyView {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // applied inside (so they reach the scans) and again above
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.registry
            .refresh()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let snapshot = self.registry.current();
        let plan = match self.stored_plan(&snapshot)? {
            Some(plan) => plan,
            None => self.reference.clone(),
        };
        let plan = self.conformed(plan)?;
        // the filters are applied again above the scan: one that cannot be applied here
        // is only a missed shortcut
        let filters: Result<Vec<Expr>> = filters.iter().map(unqualified).collect();
        let filtered = filters
            .ok()
            .and_then(conjunction)
            .and_then(|f| LogicalPlanBuilder::from(plan.clone()).filter(f).ok());
        let mut builder = filtered.unwrap_or_else(|| LogicalPlanBuilder::from(plan));
        if let Some(projection) = projection {
            let columns: Vec<Expr> = projection
                .iter()
                .map(|&i| col(Column::new_unqualified(self.schema.field(i).name())))
                .collect();
            builder = builder.project(columns)?;
        }
        if let Some(limit) = limit {
            builder = builder.limit(0, Some(limit))?;
        }
        state.create_physical_plan(&builder.build()?).await
    }
}

/// Register the three views in `ctx`.
pub async fn register(
    ctx: &SessionContext,
    registry: Arc<CubeRegistry>,
    gap_seconds: i64,
) -> Result<()> {
    for view in View::ALL {
        let table = JourneyView::new(ctx, view, Arc::clone(&registry), gap_seconds).await?;
        ctx.register_table(view.name(), Arc::new(table))?;
    }
    Ok(())
}
