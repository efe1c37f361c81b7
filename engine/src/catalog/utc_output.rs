//! Timestamps leave the server labelled UTC: a result column typed in the session's time
//! zone (`now()`, `'…'::timestamptz` after `SET TIME ZONE 'Asia/Kathmandu'`) is sent as
//! the same instant in UTC. (The wire encoder writes only the hours of an offset, so an
//! instant written in a zone of `+05:45` would be read 45 minutes off.)

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, cast};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The optimizer rule: a projection to UTC over a result with zoned timestamps.
#[derive(Debug, Default)]
pub struct UtcOutput;

fn is_utc(zone: &str) -> bool {
    matches!(zone, "UTC" | "Etc/UTC" | "+00:00" | "Z" | "+00")
}

fn zoned(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Timestamp(_, Some(zone)) if !is_utc(zone))
}

impl OptimizerRule for UtcOutput {
    fn name(&self) -> &str {
        "tracecube_utc_output"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    /// The plan's root only: the columns the client receives.
    fn apply_order(&self) -> Option<ApplyOrder> {
        None
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let answers_rows = !matches!(
            plan,
            LogicalPlan::Explain(_)
                | LogicalPlan::Analyze(_)
                | LogicalPlan::Dml(_)
                | LogicalPlan::Ddl(_)
                | LogicalPlan::Copy(_)
                | LogicalPlan::Statement(_)
                | LogicalPlan::DescribeTable(_)
        );
        if !answers_rows || !plan.schema().fields().iter().any(|f| zoned(f.data_type())) {
            return Ok(Transformed::no(plan));
        }
        let exprs = plan
            .schema()
            .iter()
            .map(|(qualifier, field)| {
                let column = Expr::Column(Column::from((qualifier, field)));
                match field.data_type() {
                    DataType::Timestamp(unit, Some(zone)) if !is_utc(zone) => {
                        cast(column, DataType::Timestamp(*unit, Some("UTC".into())))
                            .alias_qualified(qualifier.cloned(), field.name())
                    }
                    _ => column,
                }
            })
            .collect();
        let projection = Projection::try_new(exprs, Arc::new(plan))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}
