//! The aggregate-aware rewrite (SPEC §2.3): an optimizer rule that answers an aggregation
//! over `traces` from the smallest fresh cube that has every column its filters, group
//! keys and aggregates use, re-aggregating the cube's additive measures.
//!
//! It runs right after expression simplification (constants folded, prepared parameters
//! bound, `path_is_under` turned into `LIKE`), and in every later optimizer pass.
//!
//! 1. Every scan of `traces` in the plan is pinned to one registry snapshot
//!    ([`TracesTable::pinned_to`]): cubes are used only when they reflect exactly that version.
//! 2. For each `Aggregate`, the nodes between it and a `traces` scan (filters, projections,
//!    aliases: derived tables, CTEs, views, any table alias) are followed down, and every
//!    group key, predicate and aggregate argument is written over the scan's own columns.
//! 3. The aggregates become sums of measures ([`Measures`]); the smallest fresh cube whose
//!    dimensions cover every remaining column (after `ts` filters are moved onto `day` or
//!    `minute`, [`LocalDays`]) and whose retention keeps every selected row is chosen.
//! 4. The plan `Projection → Aggregate → Filter → TableScan(cube)` replaces the aggregate;
//!    the projection gives each output the original's name, qualifier and type.
//!
//! Whatever cannot be matched, or any error while building, leaves that aggregate raw: the
//! reason goes to the debug log and to `tracecube.queries`. The rule never fails a query.

use std::sync::{Arc, Mutex};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DataFusionError, Result};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::utils::{conjunction, grouping_set_to_exprlist, split_conjunction};
use datafusion::logical_expr::{
    Aggregate, Expr, ExprSchemable, GroupingSet, LogicalPlan, LogicalPlanBuilder, Projection,
    TableScan, cast,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::dictionary::packed_columns;
use super::measures::{Measures, column, strip_alias};
use super::registry::{CubeRegistry, CubeSnapshot, ServedCube, TracesTable};
use super::time_filters::{LocalDays, time_bounds};
use crate::catalog::settings::TracecubeOptions;

tokio::task_local! {
    /// The query being served on this task: what the rewrite found, for the query log.
    pub static QUERY: Arc<QueryScope>;
}

/// What the rewrite found for one served query. (Whether cubes may be used at all is the
/// session setting `tracecube.use_cubes`, read from the optimizer's options.)
#[derive(Debug, Default)]
pub struct QueryScope {
    /// A second run of a query whose cube plan failed: answered from `traces` whatever
    /// the setting.
    pub raw_only: bool,
    pub cubes_used: Mutex<Vec<String>>,
    /// Why aggregations over `traces` were left to the raw path.
    pub misses: Mutex<Vec<String>>,
}

impl QueryScope {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The scope of a run that must not use cubes, noting `reason`.
    pub fn raw(reason: String) -> Arc<Self> {
        let scope = QueryScope {
            raw_only: true,
            ..QueryScope::default()
        };
        QueryScope::note(&scope.misses, reason);
        Arc::new(scope)
    }

    pub fn note(list: &Mutex<Vec<String>>, item: String) {
        let mut list = list.lock().expect("query scope lock");
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The optimizer rule.
#[derive(Debug)]
pub struct CubeRewrite {
    registry: Arc<CubeRegistry>,
    days: LocalDays,
}

impl CubeRewrite {
    pub fn new(registry: Arc<CubeRegistry>, days: LocalDays) -> Self {
        CubeRewrite { registry, days }
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
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let scope = QUERY.try_with(Arc::clone).ok();
        let use_cubes = TracecubeOptions::of(&config.options()).use_cubes.0;
        if !use_cubes || scope.as_ref().is_some_and(|s| s.raw_only) {
            return Ok(Transformed::no(plan));
        }
        // A plan optimized for later runs (SQL `PREPARE`) has no start time: it is
        // neither pinned nor rewritten now, but at each `EXECUTE`, with that
        // connection's setting and the snapshot current then.
        if config.query_execution_start_time().is_none() {
            return Ok(Transformed::no(plan));
        }
        // A plan pinned in an earlier pass keeps its snapshot.
        let snapshot = pinned_snapshot(&plan).unwrap_or_else(|| self.registry.current());
        if snapshot.traces.is_none() || !snapshot.cubes.iter().any(|c| snapshot.is_fresh(c)) {
            return Ok(Transformed::no(plan));
        }
        plan.transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(scan) => Ok(pin(scan, &snapshot)),
            LogicalPlan::Aggregate(agg) => {
                match self.rewrite_aggregate(&agg) {
                    Ok(Some((plan, cube))) => {
                        if let Some(scope) = &scope {
                            QueryScope::note(&scope.cubes_used, cube);
                        }
                        return Ok(Transformed::yes(plan));
                    }
                    Ok(None) => {}
                    Err(Miss::NotTraces) => {}
                    Err(Miss::Reason(reason)) => {
                        tracing::debug!("aggregation left to traces: {reason}");
                        if let Some(scope) = &scope {
                            QueryScope::note(&scope.misses, reason);
                        }
                    }
                }
                Ok(Transformed::no(LogicalPlan::Aggregate(agg)))
            }
            node => Ok(Transformed::no(node)),
        })
    }
}

/// The snapshot a plan's `traces` scans were pinned to, if any.
fn pinned_snapshot(plan: &LogicalPlan) -> Option<Arc<CubeSnapshot>> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(snapshot) = pinned(scan)
        {
            found = Some(snapshot);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The `traces` table `scan` reads, if it does.
fn traces_table(scan: &TableScan) -> Option<Arc<dyn datafusion::catalog::TableProvider>> {
    let provider = source_as_provider(&scan.source).ok()?;
    let any: &dyn std::any::Any = provider.as_ref();
    any.is::<TracesTable>().then_some(provider)
}

fn as_traces(provider: &Arc<dyn datafusion::catalog::TableProvider>) -> &TracesTable {
    let any: &dyn std::any::Any = provider.as_ref();
    any.downcast_ref::<TracesTable>()
        .expect("checked by traces_table")
}

/// The snapshot `scan` reads, when it is a pinned scan of `traces`.
fn pinned(scan: &TableScan) -> Option<Arc<CubeSnapshot>> {
    let provider = traces_table(scan)?;
    as_traces(&provider).pinned().cloned()
}

/// A scan of the live `traces` turned into a scan of `snapshot`'s version.
fn pin(mut scan: TableScan, snapshot: &Arc<CubeSnapshot>) -> Transformed<LogicalPlan> {
    let Some(provider) = traces_table(&scan) else {
        return Transformed::no(LogicalPlan::TableScan(scan));
    };
    let table = as_traces(&provider);
    if table.pinned().is_some() {
        return Transformed::no(LogicalPlan::TableScan(scan));
    }
    scan.source = provider_as_source(Arc::new(table.pinned_to(Arc::clone(snapshot))));
    Transformed::yes(LogicalPlan::TableScan(scan))
}

/// Why an aggregate was not rewritten.
enum Miss {
    /// It does not aggregate a `traces` scan through filters, projections and aliases.
    NotTraces,
    /// It does, but no cube can answer it: why.
    Reason(String),
}

impl From<DataFusionError> for Miss {
    fn from(e: DataFusionError) -> Self {
        Miss::Reason(format!("the cube plan could not be built: {e}"))
    }
}

/// The input of an aggregate followed down to a `traces` scan: each output column of the
/// node as an expression over the scan's columns (unqualified), and the predicates of the
/// filters on the way.
struct Resolved {
    columns: Vec<Expr>,
    predicates: Vec<Expr>,
    snapshot: Arc<CubeSnapshot>,
}

fn resolve(plan: &LogicalPlan) -> Result<Resolved, Miss> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let Some(snapshot) = pinned(scan) else {
                return Err(Miss::NotTraces);
            };
            if scan.fetch.is_some() {
                return Err(Miss::Reason("a row limit is applied to the scan".into()));
            }
            let unqualify = |e: &Expr| -> Result<Expr, Miss> {
                let e = e
                    .clone()
                    .transform_up(|e| match e {
                        Expr::Column(c) => Ok(Transformed::yes(column(&c.name))),
                        e => Ok(Transformed::no(e)),
                    })?
                    .data;
                check(&e)?;
                Ok(e)
            };
            Ok(Resolved {
                columns: scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|f| column(f.name()))
                    .collect(),
                predicates: scan
                    .filters
                    .iter()
                    .map(unqualify)
                    .collect::<Result<_, _>>()?,
                snapshot,
            })
        }
        LogicalPlan::Filter(filter) => {
            let mut r = resolve(&filter.input)?;
            let p = substitute(&filter.predicate, filter.input.schema(), &r.columns)?;
            r.predicates.push(p);
            Ok(r)
        }
        LogicalPlan::Projection(p) => {
            let mut r = resolve(&p.input)?;
            r.columns = p
                .expr
                .iter()
                .map(|e| substitute(strip_alias(e), p.input.schema(), &r.columns))
                .collect::<Result<_, _>>()?;
            Ok(r)
        }
        LogicalPlan::SubqueryAlias(a) => resolve(&a.input),
        _ => Err(Miss::NotTraces),
    }
}

/// `e` (over `schema`) with each column replaced by its expression in `columns`.
fn substitute(e: &Expr, schema: &DFSchema, columns: &[Expr]) -> Result<Expr, Miss> {
    let e = e.clone().transform_up(|e| match e {
        Expr::Column(c) => {
            let i = schema.index_of_column(&c)?;
            Ok(Transformed::yes(columns[i].clone()))
        }
        e => Ok(Transformed::no(e)),
    })?;
    check(&e.data)?;
    Ok(e.data)
}

/// Refuse what cannot be moved onto cube rows: volatile functions, references to an outer
/// query, correlated subqueries, unbound parameters.
fn check(e: &Expr) -> Result<(), Miss> {
    if e.is_volatile() {
        return Err(Miss::Reason(format!("{e} is volatile")));
    }
    let mut bad = None;
    let _ = e.apply(|e| {
        let correlated = match e {
            Expr::OuterReferenceColumn(..) | Expr::Placeholder(_) => true,
            Expr::ScalarSubquery(s) => !s.outer_ref_columns.is_empty(),
            Expr::Exists(x) => !x.subquery.outer_ref_columns.is_empty(),
            Expr::InSubquery(x) => !x.subquery.outer_ref_columns.is_empty(),
            _ => false,
        };
        if correlated {
            bad = Some(format!("{e} refers to an outer query or a parameter"));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    bad.map_or(Ok(()), |b| Err(Miss::Reason(b)))
}

impl CubeRewrite {
    fn rewrite_aggregate(&self, agg: &Aggregate) -> Result<Option<(LogicalPlan, String)>, Miss> {
        let input = resolve(&agg.input)?;
        let schema = agg.input.schema();
        let groups = agg
            .group_expr
            .iter()
            .map(|g| substitute(g, schema, &input.columns))
            .collect::<Result<Vec<_>, _>>()?;
        let mut measures = Measures::default();
        let mut finishers = Vec::with_capacity(agg.aggr_expr.len());
        for e in &agg.aggr_expr {
            let e = substitute(e, schema, &input.columns)?;
            finishers.push(measures.translate(&e).map_err(Miss::Reason)?);
        }
        let predicates: Vec<Expr> = input
            .predicates
            .iter()
            .flat_map(|p| split_conjunction(p).into_iter().cloned())
            .collect();
        let snapshot = &input.snapshot;
        let mut candidates: Vec<&ServedCube> = snapshot
            .cubes
            .iter()
            .filter(|c| snapshot.is_fresh(c))
            .collect();
        if candidates.is_empty() {
            return Err(Miss::Reason(format!(
                "no cube reflects traces version {}",
                snapshot.traces_version.unwrap_or(-1)
            )));
        }
        candidates.sort_by_key(|c| c.status.rows);
        for cube in candidates {
            if let Some(fitted) = self.fit(cube, &groups, &predicates, &measures.aggregates) {
                let plan = build(agg, cube, fitted, &finishers)?;
                return Ok(Some((plan, cube.def.name.clone())));
            }
        }
        let mut columns: Vec<String> = groups
            .iter()
            .chain(&predicates)
            .chain(&measures.aggregates)
            .flat_map(|e| e.column_refs())
            .map(|c| c.name.clone())
            .filter(|c| !super::MEASURES.iter().any(|(m, ..)| m == c))
            .collect();
        columns.sort();
        columns.dedup();
        Err(Miss::Reason(format!(
            "no fresh cube has all of {} (and keeps every row the filters select)",
            columns.join(", ")
        )))
    }

    /// The group keys, predicates and aggregates written over `cube`'s columns, when its
    /// dimensions cover them and its retention keeps every row the predicates select.
    fn fit(
        &self,
        cube: &ServedCube,
        groups: &[Expr],
        predicates: &[Expr],
        aggregates: &[Expr],
    ) -> Option<Fitted> {
        let def = &cube.def;
        let plain = |c: &str| {
            def.dimensions
                .iter()
                .any(|d| d.name == c && d.derivation == super::Derivation::Column)
        };
        // `ts` bounds on whole days also serve a month dimension (through `day` bounds).
        let (has_minute, has_day) = (plain("minute"), plain("day") || def.has_dimension("month"));
        let fit_one = |e: &Expr| -> Option<Expr> {
            let e = if plain("ts") {
                e.clone()
            } else {
                self.days.rewrite(e.clone(), has_minute, has_day)
            };
            let e = super::dimensions::answer(e, &def.dimensions);
            e.column_refs()
                .iter()
                .all(|c| {
                    def.has_dimension(&c.name) || super::MEASURES.iter().any(|(m, ..)| *m == c.name)
                })
                .then_some(e)
        };
        let groups = groups.iter().map(fit_one).collect::<Option<Vec<_>>>()?;
        let predicates = predicates.iter().map(fit_one).collect::<Option<Vec<_>>>()?;
        let aggregates = aggregates.iter().map(fit_one).collect::<Option<Vec<_>>>()?;
        if let Some(retention) = &def.retention {
            let from = cube.status.complete_from?;
            if time_bounds(&predicates, &retention.column).0 < from {
                return None;
            }
        }
        Some(Fitted {
            groups,
            predicates,
            aggregates,
        })
    }
}

/// What a cube's plan is made of.
struct Fitted {
    groups: Vec<Expr>,
    predicates: Vec<Expr>,
    aggregates: Vec<Expr>,
}

/// Where a group key of the query is read in the cube aggregate's output.
enum GroupSlot {
    /// The aggregate's `j`-th field.
    Field(usize),
    /// The text of a `cube_key` of one column, the `j`-th field.
    Single(usize),
    /// The text of the `i`-th column packed in the first field.
    Packed(usize),
}

/// `Projection → Aggregate → Filter → TableScan(cube)` with the outputs of `agg`.
fn build(
    agg: &Aggregate,
    cube: &ServedCube,
    fitted: Fitted,
    finishers: &[Expr],
) -> Result<LogicalPlan, Miss> {
    let provider = cube
        .provider
        .clone()
        .ok_or_else(|| Miss::Reason(format!("{} cannot be read", cube.def.name)))?;
    let name = cube.def.name.as_str();
    let dictionaries = &cube.dictionaries;
    // Columns qualified by the cube's scan, as the SQL planner writes them: later rules
    // match expressions to fields by qualified name. A dictionary column of a cube held in
    // memory is read as its values' type, the type the query was planned with.
    let qualify = |e: Expr| -> Result<Expr> {
        e.transform_up(|e| match e {
            Expr::Column(c) if c.relation.is_none() => {
                let values = dictionaries.values(&c.name).map(|v| v.data_type().clone());
                let e = Expr::Column(Column::new(Some(name), c.name));
                Ok(Transformed::yes(match values {
                    Some(t) => cast(e, t),
                    None => e,
                }))
            }
            e => Ok(Transformed::no(e)),
        })
        .map(|t| t.data)
    };
    let all = |exprs: Vec<Expr>| exprs.into_iter().map(qualify).collect::<Result<Vec<_>>>();
    // Dictionary columns grouped on as they are: grouped on their packed keys
    // (`cube_key`); `outputs` says where each of the query's group keys is read.
    let is_dictionary = |e: &Expr| matches!(e, Expr::Column(c) if c.relation.is_none() && dictionaries.values(&c.name).is_some());
    let single_key = |e: Expr| -> Result<Expr> {
        match &e {
            Expr::Column(c) if is_dictionary(&e) => Ok(dictionaries
                .key(name, std::slice::from_ref(&c.name))
                .unwrap_or(e)),
            _ => qualify(e),
        }
    };
    let single_keys = |v: Vec<Expr>| v.into_iter().map(single_key).collect::<Result<Vec<_>>>();
    let (groups, packed) = match fitted.groups.as_slice() {
        [Expr::GroupingSet(_)] => {
            let groups = fitted
                .groups
                .into_iter()
                .map(|g| {
                    Ok(match g {
                        Expr::GroupingSet(GroupingSet::Rollup(v)) => {
                            Expr::GroupingSet(GroupingSet::Rollup(single_keys(v)?))
                        }
                        Expr::GroupingSet(GroupingSet::Cube(v)) => {
                            Expr::GroupingSet(GroupingSet::Cube(single_keys(v)?))
                        }
                        Expr::GroupingSet(GroupingSet::GroupingSets(sets)) => {
                            Expr::GroupingSet(GroupingSet::GroupingSets(
                                sets.into_iter().map(single_keys).collect::<Result<_>>()?,
                            ))
                        }
                        g => single_key(g)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (groups, None)
        }
        _ => {
            // One packed key first, then the other group keys in their order.
            let columns: Vec<String> = fitted
                .groups
                .iter()
                .filter(|g| is_dictionary(g))
                .filter_map(|g| g.try_as_col().map(|c| c.name.clone()))
                .collect();
            match dictionaries
                .key(name, &columns)
                .filter(|_| !columns.is_empty())
            {
                Some(key) => {
                    let mut groups = vec![key];
                    let mut slots = Vec::with_capacity(fitted.groups.len());
                    let mut packed_i = 0;
                    for g in fitted.groups {
                        if is_dictionary(&g) {
                            slots.push(GroupSlot::Packed(packed_i));
                            packed_i += 1;
                        } else {
                            slots.push(GroupSlot::Field(groups.len()));
                            groups.push(qualify(g)?);
                        }
                    }
                    (groups, Some(slots))
                }
                None => (all(fitted.groups)?, None),
            }
        }
    };
    // `impact` reads dictionary columns as they are: one weight lookup per distinct value.
    let aggregates = fitted
        .aggregates
        .into_iter()
        .map(|a| {
            a.transform_down(|e| match e {
                Expr::AggregateFunction(mut af)
                    if af.func.name() == "impact" && af.params.args.len() == 6 =>
                {
                    for arg in af.params.args.iter_mut().take(5) {
                        if let Expr::Column(c) = arg
                            && c.relation.is_none()
                        {
                            c.relation = Some(name.into());
                        }
                    }
                    Ok(Transformed::yes(Expr::AggregateFunction(af)))
                }
                e => Ok(Transformed::no(e)),
            })
            .map(|t| t.data)
            .and_then(qualify)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut input = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?;
    if let Some(p) = conjunction(all(fitted.predicates)?) {
        input = input.filter(p)?;
    }
    let input = input.build()?;
    let new_agg = Aggregate::try_new(Arc::new(input), groups, aggregates)?;
    let groups = agg.group_expr_len()?;
    let new_keys = grouping_set_to_exprlist(&new_agg.group_expr)?;
    // Where each of the query's group keys is read in the new aggregate's output.
    let slots = match packed {
        Some(slots) => slots,
        None if new_agg.group_expr_len()? == groups => (0..groups)
            .map(|i| match new_keys.get(i).and_then(|k| packed_columns(k)) {
                Some(_) => GroupSlot::Single(i),
                None => GroupSlot::Field(i),
            })
            .collect(),
        None => return Err(Miss::Reason("the grouping changed shape".into())),
    };
    let mut outputs = Vec::with_capacity(agg.schema.fields().len());
    for (i, slot) in slots.into_iter().enumerate() {
        let (oq, of) = agg.schema.qualified_field(i);
        let field = |j: usize| {
            let (q, f) = new_agg.schema.qualified_field(j);
            Expr::Column(Column::new(q.cloned(), f.name()))
        };
        let decoded = |key: usize, column: usize| {
            dictionaries
                .value(new_keys[key], column, field(key))
                .ok_or_else(|| Miss::Reason("a packed key lost its dictionary".into()))
        };
        let mut e = match slot {
            GroupSlot::Field(j) => field(j),
            GroupSlot::Single(j) => decoded(j, 0)?,
            GroupSlot::Packed(column) => decoded(0, column)?,
        };
        if e.get_type(&new_agg.schema)? != *of.data_type() {
            e = cast(e, of.data_type().clone());
        }
        outputs.push(e.alias_qualified(oq.cloned(), of.name()));
    }
    for (j, finisher) in finishers.iter().enumerate() {
        let (q, f) = agg.schema.qualified_field(groups + j);
        outputs.push(
            cast(finisher.clone(), f.data_type().clone()).alias_qualified(q.cloned(), f.name()),
        );
    }
    let projection = Projection::try_new(outputs, Arc::new(LogicalPlan::Aggregate(new_agg)))?;
    if !projection
        .schema
        .logically_equivalent_names_and_types(&agg.schema)
    {
        return Err(Miss::Reason(format!(
            "the cube plan's columns differ from the query's: {} vs {}",
            projection.schema, agg.schema
        )));
    }
    Ok(LogicalPlan::Projection(projection))
}
