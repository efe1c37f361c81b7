//! The aggregate-aware rewrite (SPEC §2.3): an optimizer rule that answers an
//! aggregation over `traces` from the smallest fresh cube that has every column its
//! filters and group keys use, re-aggregating the cube's additive measures.
//!
//! It matches `Aggregate → (Filter | SubqueryAlias)* → TableScan(traces)` right after
//! expression simplification (constants folded, `path_is_under` turned into `LIKE`,
//! weights bound), and rewrites it to
//! `Projection → Aggregate(measures) → (Filter | SubqueryAlias)* → SubqueryAlias(traces)
//! → TableScan(cube)`: the projection gives every output the name and type of the
//! original, so the rest of the plan is untouched. Anything it does not recognise is
//! left to the raw path.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, ScalarValue, TableReference};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::functions::core::expr_fn::{coalesce, nullif};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::{AggregateFunction, Case};
use datafusion::logical_expr::{
    Aggregate, Between, BinaryExpr, Expr, Filter, LogicalPlan, LogicalPlanBuilder, Operator,
    Projection, SubqueryAlias, cast, lit,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::registry::{CubeRegistry, CubeSnapshot, ServedCube};
use crate::catalog::LiveTable;
use crate::schema::traces_schema;

/// The stored `traces` schema, built once: which columns are never NULL.
static TRACES: std::sync::LazyLock<datafusion::arrow::datatypes::SchemaRef> =
    std::sync::LazyLock::new(traces_schema);
use crate::warehouse::Table;

tokio::task_local! {
    /// The query being served on this task: whether it may use cubes, and which it used.
    pub static QUERY: Arc<QueryScope>;
}

/// Per-query settings and findings of the rewrite.
#[derive(Debug)]
pub struct QueryScope {
    pub use_cubes: bool,
    pub cubes_used: Mutex<Vec<String>>,
}

impl QueryScope {
    pub fn new(use_cubes: bool) -> Arc<Self> {
        Arc::new(QueryScope {
            use_cubes,
            cubes_used: Mutex::new(Vec::new()),
        })
    }
}

/// The optimizer rule.
#[derive(Debug)]
pub struct CubeRewrite {
    registry: Arc<CubeRegistry>,
}

impl CubeRewrite {
    pub fn new(registry: Arc<CubeRegistry>) -> Self {
        CubeRewrite { registry }
    }
}

impl OptimizerRule for CubeRewrite {
    fn name(&self) -> &str {
        "tracecube_cube_rewrite"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let scope = QUERY.try_with(Arc::clone).ok();
        if scope.as_ref().is_some_and(|s| !s.use_cubes) {
            return Ok(Transformed::no(plan));
        }
        let snapshot = self.registry.current();
        if !snapshot.cubes.iter().any(|c| snapshot.is_fresh(c)) {
            return Ok(Transformed::no(plan));
        }
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::Aggregate(agg) = &node else {
                return Ok(Transformed::no(node));
            };
            match rewrite_aggregate(agg, &snapshot)? {
                Some((plan, cube)) => {
                    if let Some(scope) = &scope {
                        scope.cubes_used.lock().expect("lock").push(cube);
                    }
                    Ok(Transformed::yes(plan))
                }
                None => Ok(Transformed::no(node)),
            }
        })
    }
}

/// Nodes between the aggregate and the scan that the rewrite carries over.
enum Link {
    Filter(Expr),
    Alias(TableReference),
}

/// Whether `plan` scans the warehouse's `traces`.
fn is_traces_scan(plan: &LogicalPlan) -> Option<&datafusion::logical_expr::TableScan> {
    let LogicalPlan::TableScan(scan) = plan else {
        return None;
    };
    let provider = source_as_provider(&scan.source).ok()?;
    let live = provider.downcast_ref::<LiveTable>()?;
    (live.table() == Table::Traces && scan.filters.is_empty() && scan.fetch.is_none())
        .then_some(scan)
}

fn rewrite_aggregate(
    agg: &Aggregate,
    snapshot: &CubeSnapshot,
) -> Result<Option<(LogicalPlan, String)>> {
    if agg
        .group_expr
        .iter()
        .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return Ok(None);
    }
    let mut links = Vec::new();
    let mut node = agg.input.as_ref();
    let scan = loop {
        match node {
            LogicalPlan::Filter(f) => {
                links.push(Link::Filter(f.predicate.clone()));
                node = f.input.as_ref();
            }
            LogicalPlan::SubqueryAlias(a) => {
                links.push(Link::Alias(a.alias.clone()));
                node = a.input.as_ref();
            }
            other => match is_traces_scan(other) {
                Some(scan) => break scan,
                None => return Ok(None),
            },
        }
    };
    // Columns the cube must have as dimensions.
    let mut needed: HashSet<String> = HashSet::new();
    let mut predicates = Vec::new();
    for link in &links {
        if let Link::Filter(p) = link {
            if p.is_volatile() {
                return Ok(None);
            }
            add_columns(&mut needed, [p]);
            predicates.push(p.clone());
        }
    }
    for g in &agg.group_expr {
        if g.is_volatile() {
            return Ok(None);
        }
        add_columns(&mut needed, [g]);
    }
    let qualifier = scan.table_name.clone();
    let mut plan = Measures::new(qualifier.clone());
    let mut finishers = Vec::with_capacity(agg.aggr_expr.len());
    for e in &agg.aggr_expr {
        match plan.translate(e, &mut needed)? {
            Some(f) => finishers.push(f),
            None => return Ok(None),
        }
    }
    let Some(cube) = choose(snapshot, &needed, &predicates) else {
        return Ok(None);
    };
    let provider = cube.provider.clone().expect("fresh cubes have a provider");
    let mut input =
        LogicalPlanBuilder::scan(cube.def.name.as_str(), provider_as_source(provider), None)?
            .build()?;
    input = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(input), qualifier)?);
    for link in links.into_iter().rev() {
        input = match link {
            Link::Filter(p) => LogicalPlan::Filter(Filter::try_new(p, Arc::new(input))?),
            Link::Alias(a) => {
                LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(input), a)?)
            }
        };
    }
    let new_agg = Aggregate::try_new(Arc::new(input), agg.group_expr.clone(), plan.aggregates)?;
    let groups = agg.group_expr.len();
    let mut outputs = Vec::with_capacity(agg.schema.fields().len());
    for i in 0..groups {
        let (q, f) = new_agg.schema.qualified_field(i);
        let (oq, of) = agg.schema.qualified_field(i);
        let column = Expr::Column(Column::new(q.cloned(), f.name()));
        outputs.push(if q == oq && f.name() == of.name() {
            column
        } else {
            column.alias_qualified(oq.cloned(), of.name())
        });
    }
    for (j, finisher) in finishers.into_iter().enumerate() {
        let (q, f) = agg.schema.qualified_field(groups + j);
        outputs.push(cast(finisher, f.data_type().clone()).alias_qualified(q.cloned(), f.name()));
    }
    let projection = Projection::try_new(outputs, Arc::new(LogicalPlan::Aggregate(new_agg)))?;
    Ok(Some((
        LogicalPlan::Projection(projection),
        cube.def.name.clone(),
    )))
}

/// The smallest fresh cube with every needed dimension whose retention (if any) keeps
/// every row the predicates can select.
fn choose<'a>(
    snapshot: &'a CubeSnapshot,
    needed: &HashSet<String>,
    predicates: &[Expr],
) -> Option<&'a ServedCube> {
    snapshot
        .cubes
        .iter()
        .filter(|c| snapshot.is_fresh(c))
        .filter(|c| needed.iter().all(|d| c.def.has_dimension(d)))
        .filter(|c| match (&c.def.retention, c.status.complete_from) {
            (None, _) => true,
            (Some(r), Some(from)) => predicates
                .iter()
                .any(|p| lower_bound(p, &r.column).is_some_and(|b| b >= from)),
            (Some(_), None) => false,
        })
        .min_by_key(|c| c.status.rows)
}

/// The least instant (µs) `column` can take in rows `predicate` keeps, when a conjunct
/// bounds it from below by a constant.
fn lower_bound(predicate: &Expr, column: &str) -> Option<i64> {
    match predicate {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => match (lower_bound(left, column), lower_bound(right, column)) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            Operator::GtEq | Operator::Gt if is_column(left, column) => micros(right),
            Operator::LtEq | Operator::Lt if is_column(right, column) => micros(left),
            _ => None,
        },
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            ..
        }) if is_column(expr, column) => micros(low),
        _ => None,
    }
}

fn strip_casts(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip_casts(&c.expr),
        Expr::TryCast(c) => strip_casts(&c.expr),
        Expr::Alias(a) => strip_casts(&a.expr),
        _ => e,
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match strip_casts(e) {
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

fn is_column(e: &Expr, column: &str) -> bool {
    column_name(e) == Some(column)
}

/// A constant instant or date as microseconds since the epoch.
fn micros(e: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = strip_casts(e) else {
        return None;
    };
    match value {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(v.div_euclid(1_000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => Some(v * 1_000),
        ScalarValue::TimestampSecond(Some(v), _) => Some(v * 1_000_000),
        ScalarValue::Date32(Some(d)) => Some(i64::from(*d) * 86_400_000_000),
        _ => None,
    }
}

/// A constant number.
fn number(e: &Expr) -> Option<f64> {
    let Expr::Literal(value, _) = strip_casts(e) else {
        return None;
    };
    match value.cast_to(&DataType::Float64).ok()? {
        ScalarValue::Float64(Some(v)) => Some(v),
        _ => None,
    }
}

/// Trace columns whose non-NULL values a cube counts, and the measure counting them.
fn counted(column: &str) -> Option<&'static str> {
    Some(match column {
        "handle_s" => "handle_n",
        "wait_s" => "wait_n",
        "csat" => "csat_n",
        "nps" => "nps_n",
        "sentiment" => "sentiment_n",
        _ => return None,
    })
}

/// Trace columns a cube sums: the sum measure and the count of summed values.
fn summed(column: &str) -> Option<(&'static str, &'static str)> {
    Some(match column {
        "handle_s" => ("handle_s_sum", "handle_n"),
        "wait_s" => ("wait_s_sum", "wait_n"),
        "cost" => ("cost_sum", "contacts"),
        "effort" => ("effort_sum", "contacts"),
        "sentiment" => ("sentiment_sum", "sentiment_n"),
        _ => return None,
    })
}

/// `CASE WHEN resolved THEN a ELSE b END` (or `abandoned`): the flag's count measure and
/// the two constants.
fn flag_case(e: &Expr) -> Option<(&'static str, f64, f64)> {
    let Expr::Case(Case {
        expr: None,
        when_then_expr,
        else_expr: Some(otherwise),
    }) = strip_casts(e)
    else {
        return None;
    };
    let [(when, then)] = when_then_expr.as_slice() else {
        return None;
    };
    let measure = match column_name(when)? {
        "resolved" => "resolved_n",
        "abandoned" => "abandoned_n",
        _ => return None,
    };
    Some((measure, number(then)?, number(otherwise)?))
}

fn float(e: Expr) -> Expr {
    cast(e, DataType::Float64)
}

/// The aggregates of the rewritten plan, shared between the original aggregates.
struct Measures {
    qualifier: TableReference,
    aggregates: Vec<Expr>,
}

impl Measures {
    fn new(qualifier: TableReference) -> Self {
        Measures {
            qualifier,
            aggregates: Vec::new(),
        }
    }

    /// An aggregate of the new plan (reused when already there), as a column of its output.
    fn add(&mut self, aggregate: Expr) -> Expr {
        let index = match self.aggregates.iter().position(|a| match a {
            Expr::Alias(alias) => *alias.expr == aggregate,
            _ => false,
        }) {
            Some(i) => i,
            None => {
                let i = self.aggregates.len();
                self.aggregates
                    .push(aggregate.alias(format!("__tracecube_m{i}")));
                i
            }
        };
        Expr::Column(Column::new_unqualified(format!("__tracecube_m{index}")))
    }

    /// `sum(measure) [FILTER (WHERE filter)]` over the cube.
    fn sum(&mut self, measure: &str, filter: Option<Expr>) -> Expr {
        let column = Expr::Column(Column::new(Some(self.qualifier.clone()), measure));
        self.add(Expr::AggregateFunction(AggregateFunction::new_udf(
            sum_udaf(),
            vec![column],
            false,
            filter.map(Box::new),
            vec![],
            None,
        )))
    }

    /// A ratio `100 × num / den` of two measures, NULL when `den` is 0 or NULL.
    fn percent(&mut self, num: Expr, den: &str, filter: &Option<Expr>) -> Expr {
        let den = self.sum(den, filter.clone());
        lit(100.0) * float(num) / float(nullif(den, lit(0i64)))
    }

    /// The expression over the new aggregates that gives `e`'s value, adding to `needed`
    /// the dimensions it uses; `None` when `e` cannot be answered from a cube.
    fn translate(&mut self, e: &Expr, needed: &mut HashSet<String>) -> Result<Option<Expr>> {
        let Expr::AggregateFunction(af) = strip_alias(e) else {
            return Ok(None);
        };
        let params = &af.params;
        if !params.order_by.is_empty() || params.null_treatment.is_some() {
            return Ok(None);
        }
        let filter = params.filter.as_deref().cloned();
        if let Some(f) = &filter {
            if f.is_volatile() {
                return Ok(None);
            }
            add_columns(needed, [f]);
        }
        let args = &params.args;
        let out = match (af.func.name(), args.as_slice()) {
            // Their value over cube rows is their value over the traces.
            ("min" | "max", _) | ("count", _) if params.distinct || af.func.name() != "count" => {
                if args.iter().any(Expr::is_volatile) {
                    return Ok(None);
                }
                add_columns(needed, args);
                Some(self.add(e.clone().unalias()))
            }
            ("count", [arg]) => if let Expr::Literal(v, _) = strip_casts(arg) {
                (!v.is_null()).then(|| self.sum("contacts", filter.clone()))
            } else if let Some(m) = column_name(arg).and_then(counted) {
                Some(self.sum(m, filter.clone()))
            } else if column_name(arg)
                .and_then(|c| TRACES.field_with_name(c).ok())
                .is_some_and(|f| !f.is_nullable())
            {
                Some(self.sum("contacts", filter.clone()))
            } else if !arg.is_volatile() {
                add_columns(needed, [arg]);
                let not_null = arg.clone().is_not_null();
                let f = match filter.clone() {
                    Some(f) => f.and(not_null),
                    None => not_null,
                };
                Some(self.sum("contacts", Some(f)))
            } else {
                None
            }
            .map(|m| coalesce(vec![m, lit(0i64)])),
            ("sum", [arg]) if !params.distinct => {
                if let Some((sum, _)) = column_name(arg).and_then(summed) {
                    Some(self.sum(sum, filter.clone()))
                } else if let Some((flag, a, b)) = flag_case(arg) {
                    let hits = float(self.sum(flag, filter.clone()));
                    let all = float(self.sum("contacts", filter.clone()));
                    Some(lit(a) * hits.clone() + lit(b) * (all - hits))
                } else {
                    None
                }
            }
            ("avg", [arg]) if !params.distinct => {
                if let Some((sum, n)) = column_name(arg).and_then(summed) {
                    let sum = float(self.sum(sum, filter.clone()));
                    let n = self.sum(n, filter.clone());
                    Some(sum / float(nullif(n, lit(0i64))))
                } else if let Some((flag, a, b)) = flag_case(arg) {
                    let hits = float(self.sum(flag, filter.clone()));
                    let all = float(self.sum("contacts", filter.clone()));
                    Some((lit(a) * hits.clone() + lit(b) * (all.clone() - hits)) / all)
                } else {
                    None
                }
            }
            ("csat", [score]) if is_column(score, "csat") => {
                let sat = self.sum("csat_sat_n", filter.clone());
                Some(self.percent(sat, "csat_n", &filter))
            }
            ("nps", [score]) if is_column(score, "nps") => {
                let promoters = float(self.sum("nps_promoters_n", filter.clone()));
                let detractors = float(self.sum("nps_detractors_n", filter.clone()));
                Some(self.percent(promoters - detractors, "nps_n", &filter))
            }
            ("service_level", [channel, wait, abandoned])
                if is_column(channel, "channel")
                    && is_column(wait, "wait_s")
                    && is_column(abandoned, "abandoned") =>
            {
                needed.insert("channel".into());
                let met = self.sum("sla_met_n", filter.clone());
                Some(self.percent(met, "sla_n", &filter))
            }
            ("aht", [handle]) if is_column(handle, "handle_s") => {
                let sum = float(self.sum("handle_s_sum", filter.clone()));
                let n = self.sum("handle_n", filter.clone());
                Some(sum / float(nullif(n, lit(0i64))))
            }
            ("impact", [axes @ .., effort]) if axes.len() == 5 && is_column(effort, "effort") => {
                if axes.iter().any(Expr::is_volatile) {
                    return Ok(None);
                }
                add_columns(needed, axes);
                let mut new_args = axes.to_vec();
                new_args.push(Expr::Column(Column::new(
                    Some(self.qualifier.clone()),
                    "effort_sum",
                )));
                Some(self.add(Expr::AggregateFunction(AggregateFunction::new_udf(
                    Arc::clone(&af.func),
                    new_args,
                    false,
                    filter.clone().map(Box::new),
                    vec![],
                    None,
                ))))
            }
            _ => None,
        };
        Ok(out)
    }
}

/// Add the names of the columns `exprs` read to `needed`.
fn add_columns<'a>(needed: &mut HashSet<String>, exprs: impl IntoIterator<Item = &'a Expr>) {
    for e in exprs {
        needed.extend(e.column_refs().into_iter().map(|c| c.name.clone()));
    }
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        _ => e,
    }
}
