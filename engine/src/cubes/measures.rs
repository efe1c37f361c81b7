//! How an aggregate over trace rows is computed from a cube's additive measures: the
//! aggregates of the rewritten plan, and the expression over them that gives each original
//! aggregate's value.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, ScalarValue};
use datafusion::functions::core::expr_fn::{coalesce, nullif};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::{AggregateFunction, Case};
use datafusion::logical_expr::{Expr, cast, lit};

use crate::schema::traces_schema;

/// The stored `traces` schema, built once: which columns are never NULL.
static TRACES: std::sync::LazyLock<datafusion::arrow::datatypes::SchemaRef> =
    std::sync::LazyLock::new(traces_schema);

/// A column of the cube or of `traces` (the rewrite works on unqualified names).
pub fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// `e` without the casts that keep every value (widening numbers, timestamp units).
pub fn strip_lossless_casts(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_lossless_casts(&a.expr),
        Expr::Cast(c)
            if value_type(&c.expr).is_some_and(|from| lossless(&from, c.field.data_type())) =>
        {
            strip_lossless_casts(&c.expr)
        }
        _ => e,
    }
}

/// The type of a trace column, a cast or a constant.
fn value_type(e: &Expr) -> Option<DataType> {
    match e {
        Expr::Alias(a) => value_type(&a.expr),
        Expr::Column(c) => TRACES
            .field_with_name(&c.name)
            .ok()
            .map(|f| f.data_type().clone()),
        Expr::Cast(c) => Some(c.field.data_type().clone()),
        Expr::Literal(v, _) => Some(v.data_type()),
        _ => None,
    }
}

/// Whether a cast from `from` to `to` keeps every value: integers widened to `BIGINT` or
/// `DOUBLE`, floats to `DOUBLE`, instants to another unit or zone. Anything else (to a
/// narrower number, float to integer, text, dates) changes values, so an aggregate over it
/// is left raw.
fn lossless(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (Int8 | Int16 | Int32 | Int64, Int64 | Float64) => true,
        (Float32 | Float64, Float64) => true,
        (Timestamp(..), Timestamp(..)) => true,
        _ => from == to,
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match strip_lossless_casts(e) {
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

pub fn is_column(e: &Expr, name: &str) -> bool {
    column_name(e) == Some(name)
}

/// A constant non-NULL number.
fn number(e: &Expr) -> Option<f64> {
    let Expr::Literal(value, _) = strip_lossless_casts(e) else {
        return None;
    };
    match value.cast_to(&DataType::Float64).ok()? {
        ScalarValue::Float64(Some(v)) => Some(v),
        _ => None,
    }
}

/// A constant integer small enough that its sum over any table fits a `BIGINT` as the
/// raw sum does (`sum(1)`, `SUM(1)` of Tableau's record count).
fn small_integer(e: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = strip_lossless_casts(e) else {
        return None;
    };
    if !value.data_type().is_integer() {
        return None;
    }
    match value.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(v)) if v.abs() <= 1_000_000 => Some(v),
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
    }) = strip_lossless_casts(e)
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

/// The aggregates of the rewritten plan, shared between the original aggregates. They are
/// over unqualified columns: the cube's measures, and dimensions (trace column names).
#[derive(Default)]
pub struct Measures {
    pub aggregates: Vec<Expr>,
}

/// The name of the `i`-th aggregate of the rewritten plan.
pub fn measure_alias(i: usize) -> String {
    format!("__tracecube_m{i}")
}

impl Measures {
    /// An aggregate of the new plan (reused when already there), as a column of its output.
    fn add(&mut self, aggregate: Expr) -> Expr {
        let index = match self.aggregates.iter().position(|a| match a {
            Expr::Alias(alias) => *alias.expr == aggregate,
            _ => false,
        }) {
            Some(i) => i,
            None => {
                let i = self.aggregates.len();
                self.aggregates.push(aggregate.alias(measure_alias(i)));
                i
            }
        };
        column(&measure_alias(index))
    }

    /// `sum(measure) [FILTER (WHERE filter)]` over the cube.
    fn sum(&mut self, measure: &str, filter: Option<Expr>) -> Expr {
        self.add(Expr::AggregateFunction(AggregateFunction::new_udf(
            sum_udaf(),
            vec![column(measure)],
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

    /// The expression over the new aggregates that gives `e`'s value (`e` is over
    /// unqualified trace columns); `Err` says why it cannot be answered from a cube.
    /// Dimension expressions it keeps (arguments of `min`, `max`, `count(DISTINCT …)`,
    /// `impact`'s axes, filters) must then be fitted to the chosen cube.
    pub fn translate(&mut self, e: &Expr) -> Result<Expr, String> {
        let unsupported = || format!("{e} cannot be computed from a cube's measures");
        let Expr::AggregateFunction(af) = strip_alias(e) else {
            return Err(unsupported());
        };
        let params = &af.params;
        if !params.order_by.is_empty() || params.null_treatment.is_some() {
            return Err(unsupported());
        }
        let name = af.func.name();
        if params.distinct && !matches!(name, "min" | "max" | "count") {
            return Err(unsupported());
        }
        let filter = params.filter.as_deref().cloned();
        let args = &params.args;
        let out = match (af.func.name(), args.as_slice()) {
            // Their value over cube rows is their value over the traces (every cube row
            // stands for at least one trace with those dimension values).
            ("min" | "max", _) | ("count", _) if params.distinct || af.func.name() != "count" => {
                Some(self.add(strip_alias(e).clone()))
            }
            ("count", [arg]) => if let Expr::Literal(v, _) = strip_lossless_casts(arg) {
                Some(if v.is_null() {
                    lit(0i64)
                } else {
                    self.sum("contacts", filter.clone())
                })
            } else if let Some(m) = column_name(arg).and_then(counted) {
                Some(self.sum(m, filter.clone()))
            } else if column_name(arg)
                .and_then(|c| TRACES.field_with_name(c).ok())
                .is_some_and(|f| !f.is_nullable())
            {
                Some(self.sum("contacts", filter.clone()))
            } else {
                // count(dimension): the contacts of the cells where it is not NULL.
                let not_null = arg.clone().is_not_null();
                let f = match filter.clone() {
                    Some(f) => f.and(not_null),
                    None => not_null,
                };
                Some(self.sum("contacts", Some(f)))
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
                    // sum(1): the constant times the contacts; NULL over no row.
                    small_integer(arg).map(|c| self.sum("contacts", filter.clone()) * lit(c))
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
                // sla_n and sla_met_n count each trace against its own channel's SLA:
                // their sums are right at any grain.
                let met = self.sum("sla_met_n", filter.clone());
                Some(self.percent(met, "sla_n", &filter))
            }
            ("aht", [handle]) if is_column(handle, "handle_s") => {
                let sum = float(self.sum("handle_s_sum", filter.clone()));
                let n = self.sum("handle_n", filter.clone());
                Some(sum / float(nullif(n, lit(0i64))))
            }
            ("impact", [axes @ .., effort]) if axes.len() == 5 && is_column(effort, "effort") => {
                let mut new_args = axes.to_vec();
                new_args.push(column("effort_sum"));
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
        out.ok_or_else(unsupported)
    }
}

pub fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        _ => e,
    }
}
