//! Cube dimensions: a column of `traces`, or an expression of one that makes a coarser
//! cube (`path_prefix(declaration, 2)`: the level-2 ancestor; `date_trunc('month', day)`:
//! the month), and which expressions of the source column such a dimension still answers
//! exactly ([`Dimension::answer`]).
//!
//! | dimension (in `[cubes]`) | cube column | answers, over the source column `s` |
//! |---|---|---|
//! | `s` | `s` | everything |
//! | `path_prefix(s, k)` | `s_lk` | `path_prefix(s, n ≤ k)`, `path_segment(s, n ≤ k)`, `split_part(s, '/', 1 ≤ n ≤ k)`, `path_child(s, node)` and `s LIKE 'node/%'` for nodes above level `k`, `path_is_under(s, node)` for nodes at level ≤ `k`, `s = v`, `s <> v`, `s IN (…)` for values above level `k`, `s IS [NOT] NULL` |
//! | `date_trunc('month', day)` | `month` (a date, first of the month) | `date_trunc('month' / 'quarter' / 'year', day)`, `extract(year / quarter / month FROM day)`, and bounds `day >= D`, `day < D` (`>`, `<=`) that fall on the first of a month |
//!
//! Each rule holds for every stored value: the ancestor at level `k` keeps the first `k`
//! segments, which decide all of those; a month's first day has the same month, quarter
//! and year as every day of the month. The path rules rely on paths being canonical
//! (non-empty segments, no leading, trailing or doubled `/`), which every load enforces
//! (`load::validate::canonical_path`).

use chrono::{Datelike, NaiveDate};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr::{InList, Like, ScalarFunction};
use datafusion::logical_expr::{BinaryExpr, Cast, Expr, Operator, TryCast, lit};

use super::measures::column;
use crate::schema::traces_schema;

/// The path columns: `path_prefix` dimensions are taken of these.
const PATH_COLUMNS: [&str; 3] = ["declaration", "qualification", "action"];

/// How a dimension is computed from a `traces` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// The column itself.
    Column,
    /// `path_prefix(column, level)`.
    PathPrefix(i64),
    /// `date_trunc('month', day)`, stored as the month's first day (a date).
    Month,
}

/// A dimension of a cube.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimension {
    /// The cube's column.
    pub name: String,
    /// The `traces` column it is computed from.
    pub source: String,
    pub derivation: Derivation,
}

impl Dimension {
    /// A dimension as configured: a `traces` column, `path_prefix(<path column>, <level>)`
    /// (level 1–9) or `date_trunc('month', day)`; spaces and case do not matter.
    pub fn parse(text: &str) -> Option<Dimension> {
        let compact: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some(args) = compact
            .strip_prefix("path_prefix(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let (source, level) = args.split_once(',')?;
            let level: i64 = level.parse().ok()?;
            if !PATH_COLUMNS.contains(&source) || !(1..=9).contains(&level) {
                return None;
            }
            return Some(Dimension {
                name: format!("{source}_l{level}"),
                source: source.to_string(),
                derivation: Derivation::PathPrefix(level),
            });
        }
        if compact == "date_trunc('month',day)" {
            return Some(Dimension {
                name: "month".into(),
                source: "day".into(),
                derivation: Derivation::Month,
            });
        }
        let name = text.trim().to_ascii_lowercase();
        traces_schema().field_with_name(&name).ok()?;
        Some(Dimension {
            source: name.clone(),
            name,
            derivation: Derivation::Column,
        })
    }

    /// The definition, spelled one way (as shown in `tracecube.cubes` and fingerprinted).
    pub fn definition(&self) -> String {
        match self.derivation {
            Derivation::Column => self.name.clone(),
            Derivation::PathPrefix(k) => format!("path_prefix({}, {k})", self.source),
            Derivation::Month => "date_trunc('month', day)".into(),
        }
    }

    /// SQL computing the dimension from a row with the source column.
    pub fn sql(&self) -> String {
        let source = format!("\"{}\"", self.source);
        match self.derivation {
            Derivation::Column => source,
            Derivation::PathPrefix(k) => format!("path_prefix({source}, {k})"),
            Derivation::Month => format!("CAST(date_trunc('month', {source}) AS DATE)"),
        }
    }

    /// Type of the cube column: the source column's, a date for a month.
    pub fn data_type(&self) -> DataType {
        match self.derivation {
            Derivation::Month => DataType::Date32,
            _ => traces_schema()
                .field_with_name(&self.source)
                .expect("dimension sources are trace columns")
                .data_type()
                .clone(),
        }
    }
}

/// `e` (over `traces` columns) with the expressions of source columns that an expression
/// dimension of `dims` answers rewritten over that dimension's column. A source column
/// that is itself a dimension is left as it is. What remains of other source columns is
/// for the caller to refuse.
pub fn answer(e: Expr, dims: &[Dimension]) -> Expr {
    let derived: Vec<&Dimension> = dims
        .iter()
        .filter(|d| {
            d.derivation != Derivation::Column
                && !dims
                    .iter()
                    .any(|p| p.derivation == Derivation::Column && p.name == d.source)
        })
        .collect();
    if derived.is_empty() {
        return e;
    }
    e.transform_down(|e| {
        for d in &derived {
            let answered = match d.derivation {
                Derivation::PathPrefix(k) => path_answers(&e, &d.source, k),
                Derivation::Month => month_answers(&e),
                Derivation::Column => false,
            };
            if answered {
                let renamed = rename(e, &d.source, &d.name);
                return Ok(Transformed::new(renamed, true, TreeNodeRecursion::Jump));
            }
            if d.derivation == Derivation::Month
                && let Some(bound) = month_bound(&e)
            {
                return Ok(Transformed::new(bound, true, TreeNodeRecursion::Jump));
            }
        }
        Ok(Transformed::no(e))
    })
    .map(|t| t.data)
    .expect("the rewrite never fails")
}

/// `e` with every reference to column `from` turned into column `to` (same type).
fn rename(e: Expr, from: &str, to: &str) -> Expr {
    e.transform_up(|e| match e {
        Expr::Column(c) if c.name == from => Ok(Transformed::yes(column(to))),
        e => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
    .expect("renaming never fails")
}

/// Whether `e` is column `source`, possibly cast to another text type.
fn is_text_column(e: &Expr, source: &str) -> bool {
    match e {
        Expr::Column(c) => c.name == source,
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
            matches!(
                field.data_type(),
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
            ) && is_text_column(expr, source)
        }
        _ => false,
    }
}

fn text_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Literal(v, _) => v.try_as_str().flatten(),
        Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => text_literal(expr),
        _ => None,
    }
}

fn integer_literal(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int8(Some(n)) => Some(i64::from(*n)),
            ScalarValue::Int16(Some(n)) => Some(i64::from(*n)),
            ScalarValue::Int32(Some(n)) => Some(i64::from(*n)),
            ScalarValue::Int64(Some(n)) => Some(*n),
            ScalarValue::UInt8(Some(n)) => Some(i64::from(*n)),
            ScalarValue::UInt16(Some(n)) => Some(i64::from(*n)),
            ScalarValue::UInt32(Some(n)) => Some(i64::from(*n)),
            _ => None,
        },
        Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => {
            integer_literal(expr)
        }
        _ => None,
    }
}

/// Level of a path value (segments; the root `''` has none).
fn level(p: &str) -> i64 {
    tracecube_udfs::path::level(p).into()
}

/// The node of a `LIKE` pattern `node/%` where node has no wildcard or escape.
fn strictly_under(pattern: &str) -> Option<&str> {
    let node = pattern.strip_suffix("/%")?;
    (!node.contains(['%', '_', '\\'])).then_some(node)
}

/// Whether `e` over the path column `source` has the same value over its level-`k`
/// ancestor.
fn path_answers(e: &Expr, source: &str, k: i64) -> bool {
    let is_source = |e: &Expr| is_text_column(e, source);
    match e {
        Expr::ScalarFunction(ScalarFunction { func, args }) => match (func.name(), &args[..]) {
            ("path_prefix" | "path_segment", [p, n]) => {
                is_source(p) && integer_literal(n).is_some_and(|n| n <= k)
            }
            ("split_part", [p, sep, n]) => {
                is_source(p)
                    && text_literal(sep) == Some("/")
                    && integer_literal(n).is_some_and(|n| (1..=k).contains(&n))
            }
            ("path_child", [p, node]) => {
                is_source(p) && text_literal(node).is_some_and(|n| level(n) < k)
            }
            ("path_is_under", [p, node]) => {
                is_source(p) && text_literal(node).is_some_and(|n| level(n) <= k)
            }
            _ => false,
        },
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Eq | Operator::NotEq => {
                let value = if is_source(left) {
                    text_literal(right)
                } else if is_source(right) {
                    text_literal(left)
                } else {
                    None
                };
                value.is_some_and(|v| level(v) < k)
            }
            // `path_is_under` as simplified: `s = node OR s LIKE 'node/%'`, and its negation
            // `s <> node AND s NOT LIKE 'node/%'`.
            Operator::Or | Operator::And => {
                let (equal, negated) = if *op == Operator::Or {
                    (Operator::Eq, false)
                } else {
                    (Operator::NotEq, true)
                };
                let node_of = |e: &'_ Expr| -> Option<String> {
                    match e {
                        Expr::BinaryExpr(BinaryExpr { left, op, right })
                            if *op == equal && is_source(left) =>
                        {
                            text_literal(right).map(str::to_string)
                        }
                        _ => None,
                    }
                };
                let pattern_of = |e: &'_ Expr| -> Option<String> {
                    match e {
                        Expr::Like(Like {
                            negated: n,
                            expr,
                            pattern,
                            escape_char: None,
                            case_insensitive: false,
                        }) if *n == negated && is_source(expr) => text_literal(pattern)
                            .and_then(strictly_under)
                            .map(str::to_string),
                        _ => None,
                    }
                };
                let under = |a: &Expr, b: &Expr| {
                    matches!(
                        (node_of(a), pattern_of(b)),
                        (Some(n), Some(p)) if n == p && level(&n) <= k
                    )
                };
                under(left, right) || under(right, left)
            }
            _ => false,
        },
        Expr::Like(Like {
            expr,
            pattern,
            escape_char: None,
            case_insensitive: false,
            ..
        }) => {
            is_source(expr)
                && text_literal(pattern)
                    .and_then(strictly_under)
                    .is_some_and(|n| level(n) < k)
        }
        Expr::InList(InList { expr, list, .. }) => {
            is_source(expr)
                && list
                    .iter()
                    .all(|v| text_literal(v).is_some_and(|v| level(v) < k))
        }
        Expr::IsNull(x) | Expr::IsNotNull(x) => is_source(x),
        _ => false,
    }
}

/// Whether `e` is `day` as a date or a timestamp without time zone (midnight).
fn is_plain_day(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == "day",
        Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
            matches!(
                field.data_type(),
                DataType::Date32 | DataType::Timestamp(_, None)
            ) && is_plain_day(expr)
        }
        _ => false,
    }
}

/// Whether `e` over `day` has the same value over the first day of its month.
fn month_answers(e: &Expr) -> bool {
    let Expr::ScalarFunction(ScalarFunction { func, args }) = e else {
        return false;
    };
    let unit = |u: &Expr| text_literal(u).map(str::to_ascii_lowercase);
    match (func.name(), &args[..]) {
        ("date_trunc", [u, d]) => {
            is_plain_day(d)
                && unit(u).is_some_and(|u| matches!(u.as_str(), "month" | "quarter" | "year"))
        }
        ("date_part", [u, d]) => {
            is_plain_day(d)
                && unit(u).is_some_and(|u| matches!(u.as_str(), "month" | "quarter" | "year"))
        }
        _ => false,
    }
}

/// `day >= D` / `day > D` / `day < D` / `day <= D` (either side) as the same bound on
/// `month`, when the first day it keeps or drops is the first of a month.
fn month_bound(e: &Expr) -> Option<Expr> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let is_day = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "day");
    let (op, value) = if is_day(left) {
        (*op, right)
    } else if is_day(right) {
        (op.swap()?, left)
    } else {
        return None;
    };
    let Expr::Literal(ScalarValue::Date32(Some(d)), _) = value.as_ref() else {
        return None;
    };
    // `day >= start` or `day < start`.
    let (op, start) = match op {
        Operator::GtEq => (Operator::GtEq, *d),
        Operator::Gt => (Operator::GtEq, d.checked_add(1)?),
        Operator::Lt => (Operator::Lt, *d),
        Operator::LtEq => (Operator::Lt, d.checked_add(1)?),
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(1970, 1, 1)?
        .checked_add_signed(chrono::Duration::days(start.into()))?;
    (date.day() == 1).then(|| {
        Expr::BinaryExpr(BinaryExpr::new(
            Box::new(column("month")),
            op,
            Box::new(lit(ScalarValue::Date32(Some(start)))),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::col;

    fn dims(list: &[&str]) -> Vec<Dimension> {
        list.iter().map(|d| Dimension::parse(d).unwrap()).collect()
    }

    fn columns(e: &Expr) -> Vec<String> {
        let mut c: Vec<String> = e.column_refs().iter().map(|c| c.name.clone()).collect();
        c.sort();
        c
    }

    #[test]
    fn parse_spellings() {
        let d = Dimension::parse(" PATH_PREFIX( declaration ,2 ) ").unwrap();
        assert_eq!(d.name, "declaration_l2");
        assert_eq!(d.definition(), "path_prefix(declaration, 2)");
        assert_eq!(d.data_type(), DataType::Utf8);
        let m = Dimension::parse("date_trunc('MONTH', day)").unwrap();
        assert_eq!(
            (m.name.as_str(), m.data_type()),
            ("month", DataType::Date32)
        );
        assert_eq!(Dimension::parse("channel").unwrap().definition(), "channel");
        for bad in [
            "path_prefix(channel, 2)",
            "path_prefix(declaration, 0)",
            "path_prefix(declaration, x)",
            "date_trunc('week', day)",
            "colour",
        ] {
            assert!(Dimension::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn path_expressions_answered_by_an_ancestor_level() {
        let functions =
            tracecube_udfs::Functions::new(tracecube_udfs::SlaTable::default(), Default::default());
        let f = |name: &str, args: Vec<Expr>| {
            let udf = match name {
                "path_prefix" => &functions.path_prefix,
                "path_segment" => &functions.path_segment,
                "path_child" => &functions.path_child,
                "path_is_under" => &functions.path_is_under,
                _ => &functions.path_level,
            };
            udf.call(args)
        };
        let d = dims(&["path_prefix(declaration, 2)", "channel"]);
        let yes = [
            f("path_prefix", vec![col("declaration"), lit(2i64)]),
            f("path_prefix", vec![col("declaration"), lit(1i64)]),
            f("path_segment", vec![col("declaration"), lit(2i64)]),
            f("path_child", vec![col("declaration"), lit("Delivery")]),
            f(
                "path_is_under",
                vec![col("declaration"), lit("Delivery/Tracking")],
            ),
            col("declaration").eq(lit("Delivery")),
            col("declaration").like(lit("Delivery/%")),
            col("declaration")
                .eq(lit("Delivery/Tracking"))
                .or(col("declaration").like(lit("Delivery/Tracking/%"))),
            col("declaration").is_null(),
            col("channel").eq(lit("phone")),
            col("declaration")
                .not_eq(lit("Delivery/Tracking"))
                .and(col("declaration").not_like(lit("Delivery/Tracking/%"))),
        ];
        for e in yes {
            let answered = answer(e.clone(), &d);
            assert!(
                !columns(&answered).contains(&"declaration".to_string()),
                "{e} should be answered: {answered}"
            );
        }
        let no = [
            f("path_prefix", vec![col("declaration"), lit(3i64)]),
            f("path_segment", vec![col("declaration"), lit(3i64)]),
            f(
                "path_child",
                vec![col("declaration"), lit("Delivery/Tracking")],
            ),
            f("path_level", vec![col("declaration")]),
            col("declaration").eq(lit("Delivery/Tracking")),
            col("declaration").like(lit("Delivery/Tracking/%")),
            col("declaration").like(lit("Deliv%")),
            col("declaration")
                .eq(lit("Delivery/Tracking"))
                .or(col("declaration").like(lit("Delivery/Tracking/x/%"))),
        ];
        for e in no {
            let answered = answer(e.clone(), &d);
            assert!(
                columns(&answered).contains(&"declaration".to_string()),
                "{e} must stay on declaration: {answered}"
            );
        }
    }

    #[test]
    fn month_bounds_only_on_first_days() {
        let day = |s: &str| {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
            lit(ScalarValue::Date32(Some(
                (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32,
            )))
        };
        let d = dims(&["date_trunc('month', day)"]);
        for e in [
            col("day").gt_eq(day("2026-10-01")),
            col("day").lt(day("2026-11-01")),
            col("day").gt(day("2026-09-30")),
            col("day").lt_eq(day("2026-10-31")),
            day("2026-10-01").lt_eq(col("day")),
        ] {
            assert_eq!(columns(&answer(e.clone(), &d)), ["month"], "{e}");
        }
        for e in [
            col("day").gt_eq(day("2026-10-02")),
            col("day").lt_eq(day("2026-10-01")),
            col("day").eq(day("2026-10-01")),
        ] {
            assert_eq!(columns(&answer(e.clone(), &d)), ["day"], "{e}");
        }
    }
}
