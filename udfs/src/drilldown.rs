//! The `drilldown(axis, node [, from_day, to_day])` table function (SPEC §3.1): one
//! row per child of `node` on `axis`, with volume, share, impact and the KPIs.
//!
//! It builds a logical plan over the `traces` table it was given (no I/O here), so
//! the optimizer (and the cube rewrite) treat it like the equivalent hand-written
//! query.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, plan_err};
use datafusion::datasource::provider_as_source;
use datafusion::functions::expr_fn::nullif;
use datafusion::functions_aggregate::count::count_all;
use datafusion::functions_aggregate::expr_fn::avg;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast, col, lit, when};

use crate::Functions;
use crate::impact::Axis;

/// The columns of a drill-down, in order.
pub const COLUMNS: [&str; 10] = [
    "child",
    "contacts",
    "share_pct",
    "impact",
    "impact_share_pct",
    "csat_pct",
    "nps",
    "resolved_pct",
    "aht_s",
    "service_level_pct",
];

const SYNTAX: &str = "drilldown(axis, node [, from_day, to_day])";

/// `drilldown(axis text, node text [, from_day date, to_day date])`: the children of
/// `node` on `axis` (`'declaration'`, `'qualification'` or `'action'`; `''` for the
/// roots) with `child, contacts, share_pct, impact, impact_share_pct, csat_pct, nps,
/// resolved_pct, aht_s, service_level_pct` (in no particular order, as any table).
///
/// ```sql
/// SELECT * FROM drilldown('declaration', 'Delivery', DATE '2026-01-01', DATE '2026-01-31')
/// ORDER BY impact DESC;
/// ```
#[derive(Debug)]
pub struct Drilldown {
    traces: Arc<dyn TableProvider>,
    functions: Functions,
}

impl Drilldown {
    /// The function over `traces`, using the registered `functions`.
    pub fn new(traces: Arc<dyn TableProvider>, functions: Functions) -> Self {
        Self { traces, functions }
    }
}

/// The text of a literal argument (through casts such as `'x'::text`).
fn literal_text(arg: &Expr) -> Option<Option<String>> {
    match arg {
        Expr::Literal(value, _) => value.try_as_str().map(|s| s.map(str::to_string)),
        Expr::Cast(c) => literal_text(&c.expr),
        Expr::TryCast(c) => literal_text(&c.expr),
        _ => None,
    }
}

impl TableFunctionImpl for Drilldown {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.len() != 2 && exprs.len() != 4 {
            return plan_err!(
                "drilldown takes 2 or 4 arguments, got {}: use {SYNTAX}",
                exprs.len()
            );
        }
        let axis = match literal_text(&exprs[0]) {
            Some(Some(name)) => match Axis::parse(&name) {
                Some(axis) if axis.is_hierarchy() => axis,
                _ => {
                    return plan_err!(
                        "drilldown: axis must be 'declaration', 'qualification' or 'action', got '{name}'"
                    );
                }
            },
            _ => {
                return plan_err!(
                    "drilldown: axis must be a text literal (not a parameter or column): use {SYNTAX}"
                );
            }
        };
        let node = match literal_text(&exprs[1]) {
            Some(Some(node)) => node,
            _ => {
                return plan_err!(
                    "drilldown: node must be a text literal ('' for the roots; not a parameter or column): use {SYNTAX}"
                );
            }
        };
        let days = match exprs {
            [_, _, from, to] => {
                for (name, e) in [("from_day", from), ("to_day", to)] {
                    if !e.column_refs().is_empty() {
                        return plan_err!("drilldown: {name} must be a constant date, got {e}");
                    }
                }
                Some((from.clone(), to.clone()))
            }
            _ => None,
        };
        let plan = self.plan(axis, &node, days)?;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}

impl Drilldown {
    fn plan(
        &self,
        axis: Axis,
        node: &str,
        days: Option<(Expr, Expr)>,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        let f = &self.functions;
        let path = col(axis.name());
        let mut filter = f
            .path_is_under
            .call(vec![path.clone(), lit(node)])
            .and(path.clone().not_eq(lit(node)));
        if let Some((from, to)) = days {
            filter = filter.and(col("day").gt_eq(from)).and(col("day").lt_eq(to));
        }
        let axes: Vec<Expr> = Axis::ALL.iter().map(|a| col(a.name())).collect();
        let mut impact_args = axes;
        impact_args.push(col("effort"));
        let aggregates = vec![
            count_all().alias("contacts"),
            f.impact.call(impact_args).alias("impact"),
            f.csat.call(vec![col("csat")]).alias("csat_pct"),
            f.nps.call(vec![col("nps")]).alias("nps"),
            avg(when(col("resolved"), lit(100.0)).otherwise(lit(0.0))?).alias("resolved_pct"),
            f.aht.call(vec![col("handle_s")]).alias("aht_s"),
            f.service_level
                .call(vec![col("channel"), col("wait_s"), col("abandoned")])
                .alias("service_level_pct"),
        ];
        let total = |column: &str, alias: &str| {
            Expr::from(WindowFunction::new(sum_udaf(), vec![col(column)])).alias(alias)
        };
        let float = |e: Expr| cast(e, DataType::Float64);
        LogicalPlanBuilder::scan("traces", provider_as_source(Arc::clone(&self.traces)), None)?
            .filter(filter)?
            .aggregate(
                vec![f.path_child.call(vec![path, lit(node)]).alias("child")],
                aggregates,
            )?
            .window(vec![
                total("contacts", "total_contacts"),
                total("impact", "total_impact"),
            ])?
            .project(vec![
                col("child"),
                col("contacts"),
                (lit(100.0) * float(col("contacts")) / float(col("total_contacts")))
                    .alias("share_pct"),
                col("impact"),
                (lit(100.0) * col("impact") / nullif(col("total_impact"), lit(0.0)))
                    .alias("impact_share_pct"),
                col("csat_pct"),
                col("nps"),
                col("resolved_pct"),
                col("aht_s"),
                col("service_level_pct"),
            ])?
            .build()
    }
}
