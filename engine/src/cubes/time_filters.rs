//! Comparisons of `ts` that a cube without `ts` can still answer exactly: `ts >= T` and
//! `ts < T` where `T` is a whole minute (then `minute >= T`, `minute < T`) or the first
//! instant of a local day of the warehouse's time zone (then `day >= D`, `day < D`).
//!
//! The day form is exact only when local dates never go backwards in the zone (a clock
//! turned back across midnight would put later instants on an earlier date); zones where
//! that ever happens between 1900 and 2200 keep `ts` filters on the raw path.

use chrono::{DateTime, Duration, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, lit};

use super::measures::{column, is_column, strip_lossless_casts};

const MICROS_PER_MINUTE: i64 = 60_000_000;

/// The warehouse's time zone, as far as `ts` filters are concerned.
#[derive(Debug, Clone)]
pub struct LocalDays {
    zone: Tz,
    /// Whether local dates never decrease as time goes on.
    monotonic: bool,
}

impl LocalDays {
    pub fn new(zone: Tz) -> Self {
        // Computed once per zone and process (about 100 000 offset lookups).
        static KNOWN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<Tz, bool>>> =
            std::sync::LazyLock::new(Default::default);
        let monotonic = *KNOWN
            .lock()
            .expect("zone cache lock")
            .entry(zone)
            .or_insert_with(|| dates_never_go_back(zone));
        LocalDays { zone, monotonic }
    }

    fn date(&self, micros: i64) -> Option<NaiveDate> {
        Some(
            DateTime::<Utc>::from_timestamp_micros(micros)?
                .with_timezone(&self.zone)
                .date_naive(),
        )
    }

    /// The local date `micros` is the first instant of, if it is one.
    fn day_starting_at(&self, micros: i64) -> Option<NaiveDate> {
        if !self.monotonic {
            return None;
        }
        let date = self.date(micros)?;
        (self.date(micros - 1)? < date).then_some(date)
    }

    /// `e` with its `ts` comparisons rewritten onto `minute` (when `has_minute`) or `day`
    /// (when `has_day`) where that keeps exactly the same rows.
    pub fn rewrite(&self, e: Expr, has_minute: bool, has_day: bool) -> Expr {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        e.transform_up(|e| {
            let Some((op, micros)) = ts_comparison(&e) else {
                return Ok(Transformed::no(e));
            };
            let op_expr = |left: Expr, right: Expr| {
                Expr::BinaryExpr(BinaryExpr::new(Box::new(left), op, Box::new(right)))
            };
            if has_minute && micros.rem_euclid(MICROS_PER_MINUTE) == 0 {
                let t = ScalarValue::TimestampMicrosecond(Some(micros), Some("UTC".into()));
                return Ok(Transformed::yes(op_expr(column("minute"), lit(t))));
            }
            if has_day && let Some(date) = self.day_starting_at(micros) {
                let days = (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days();
                let d = ScalarValue::Date32(Some(days as i32));
                return Ok(Transformed::yes(op_expr(column("day"), lit(d))));
            }
            Ok(Transformed::no(e))
        })
        .map(|t| t.data)
        .expect("the rewrite never fails")
    }
}

/// `ts >= T` or `ts < T` (either side), as the operator with `ts` on the left and `T` in µs.
fn ts_comparison(e: &Expr) -> Option<(Operator, i64)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return None;
    };
    let (op, value) = if is_column(left, "ts") {
        (*op, right)
    } else if is_column(right, "ts") {
        (op.swap()?, left)
    } else {
        return None;
    };
    if !matches!(op, Operator::GtEq | Operator::Lt) {
        return None;
    }
    Some((op, micros(value)?))
}

/// A constant instant as microseconds since the epoch, when it is exactly one.
fn micros(e: &Expr) -> Option<i64> {
    let e = match e {
        Expr::Cast(c)
            if matches!(
                c.field.data_type(),
                datafusion::arrow::datatypes::DataType::Timestamp(..)
            ) =>
        {
            c.expr.as_ref()
        }
        e => e,
    };
    let Expr::Literal(value, _) = e else {
        return None;
    };
    match value {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampNanosecond(Some(v), _) => (v % 1_000 == 0).then_some(v / 1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000),
        _ => None,
    }
}

/// The range `[lo, hi]` (µs since the epoch, a date as its midnight UTC) that the date or
/// timestamp column `column` must fall in for a row to pass every conjunct of `predicates`
/// that compares it with a constant (`=`, `<`, `<=`, `>`, `>=`, either side, `BETWEEN`);
/// `i64::MIN` / `i64::MAX` where nothing bounds it.
pub fn time_bounds(predicates: &[Expr], column: &str) -> (i64, i64) {
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for p in predicates.iter().flat_map(split_conjunction) {
        // The column holds whole µs: for a value `v` (rounded down, `exact` or not), the
        // least it may be at or above and the greatest it may be below.
        let (lower, upper) = match p {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, value) = if is_column(left, column) {
                    (*op, right)
                } else if is_column(right, column) {
                    match op.swap() {
                        Some(op) => (op, left),
                        None => continue,
                    }
                } else {
                    continue;
                };
                let Some((v, exact)) = floor_micros(value) else {
                    continue;
                };
                let (at_or_above, below) = if exact {
                    (v, v.saturating_sub(1))
                } else {
                    (v.saturating_add(1), v)
                };
                match op {
                    Operator::Eq => (Some(at_or_above), Some(v)),
                    Operator::GtEq => (Some(at_or_above), None),
                    Operator::Gt => (Some(v.saturating_add(1)), None),
                    Operator::Lt => (None, Some(below)),
                    Operator::LtEq => (None, Some(v)),
                    _ => continue,
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if is_column(expr, column) => (
                floor_micros(low).map(|(v, exact)| if exact { v } else { v.saturating_add(1) }),
                floor_micros(high).map(|(v, _)| v),
            ),
            _ => continue,
        };
        lo = lo.max(lower.unwrap_or(i64::MIN));
        hi = hi.min(upper.unwrap_or(i64::MAX));
    }
    (lo, hi)
}

/// A constant date or instant as µs since the epoch rounded down, and whether that is
/// exact.
fn floor_micros(e: &Expr) -> Option<(i64, bool)> {
    let Expr::Literal(value, _) = strip_lossless_casts(e) else {
        return None;
    };
    match value {
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some((*v, true)),
        ScalarValue::TimestampNanosecond(Some(v), _) => {
            Some((v.div_euclid(1_000), v.rem_euclid(1_000) == 0))
        }
        ScalarValue::TimestampMillisecond(Some(v), _) => Some((v.checked_mul(1_000)?, true)),
        ScalarValue::TimestampSecond(Some(v), _) => Some((v.checked_mul(1_000_000)?, true)),
        ScalarValue::Date32(Some(d)) => Some((i64::from(*d) * MICROS_PER_DAY, true)),
        _ => None,
    }
}

/// µs in a day: a `Date32` as an instant.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Whether, from 1900 to 2200, no change of the zone's UTC offset moves local time back
/// across midnight. Offset changes are found day by day and located to the second.
fn dates_never_go_back(zone: Tz) -> bool {
    let offset = |t: DateTime<Utc>| zone.offset_from_utc_datetime(&t.naive_utc()).fix();
    let date = |t: DateTime<Utc>| t.with_timezone(&zone).date_naive();
    let Some(mut day) = Utc.with_ymd_and_hms(1900, 1, 1, 0, 0, 0).single() else {
        return false;
    };
    let Some(end) = Utc.with_ymd_and_hms(2200, 1, 1, 0, 0, 0).single() else {
        return false;
    };
    while day < end {
        let next = day + Duration::days(1);
        if offset(day) != offset(next) {
            // Locate the change to the second, then compare the dates on either side.
            let (mut lo, mut hi) = (day, next);
            while hi - lo > Duration::seconds(1) {
                let mid = lo + (hi - lo) / 2;
                if offset(mid) == offset(lo) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            if date(lo) > date(hi) {
                return false;
            }
        }
        day = next;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::col;

    /// Bounds from every comparison shape, in µs, rounded inwards for a column of whole µs.
    #[test]
    fn time_bounds_of_comparisons() {
        let ts = |v: i64| lit(ScalarValue::TimestampMicrosecond(Some(v), None));
        let ns = |v: i64| lit(ScalarValue::TimestampNanosecond(Some(v), None));
        let day = |d: i32| lit(ScalarValue::Date32(Some(d)));
        let m = || col("minute");
        let bounds = |p: Vec<Expr>| time_bounds(&p, "minute");
        let (min, max) = (i64::MIN, i64::MAX);
        assert_eq!(bounds(vec![m().gt_eq(ts(10))]), (10, max));
        assert_eq!(bounds(vec![ts(10).lt(m())]), (11, max));
        assert_eq!(bounds(vec![m().lt(ts(10)), m().gt(ts(2))]), (3, 9));
        assert_eq!(
            bounds(vec![m().lt_eq(ts(10)).and(ts(4).lt_eq(m()))]),
            (4, 10)
        );
        assert_eq!(bounds(vec![m().eq(ts(7))]), (7, 7));
        assert_eq!(bounds(vec![m().between(ts(3), ts(5))]), (3, 5));
        // 1.5 µs: `>= 1.5` is `>= 2`, `< 1.5` is `<= 1`, `= 1.5` selects nothing
        assert_eq!(bounds(vec![m().gt_eq(ns(1_500))]), (2, max));
        assert_eq!(bounds(vec![m().lt(ns(1_500))]), (min, 1));
        let (lo, hi) = bounds(vec![m().eq(ns(1_500))]);
        assert!(lo > hi);
        assert_eq!(bounds(vec![col("day").gt_eq(day(2))]), (min, max));
        assert_eq!(
            time_bounds(&[col("day").lt(day(2))], "day"),
            (min, 2 * MICROS_PER_DAY - 1)
        );
        // not bounds: OR, <>, other columns, non-constants
        assert_eq!(bounds(vec![m().gt(ts(1)).or(m().lt(ts(0)))]), (min, max));
        assert_eq!(bounds(vec![m().not_eq(ts(1))]), (min, max));
        assert_eq!(bounds(vec![m().gt(col("day"))]), (min, max));
    }

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn first_instants_of_local_days() {
        let utc = LocalDays::new(Tz::UTC);
        assert!(utc.day_starting_at(at("2026-10-01T00:00:00Z")).is_some());
        assert!(utc.day_starting_at(at("2026-10-01T00:00:01Z")).is_none());
        let paris = LocalDays::new(Tz::Europe__Paris);
        assert!(paris.monotonic);
        assert!(paris.day_starting_at(at("2026-10-01T00:00:00Z")).is_none());
        assert_eq!(
            paris.day_starting_at(at("2026-09-30T22:00:00Z")),
            NaiveDate::from_ymd_opt(2026, 10, 1)
        );
    }

    #[test]
    fn zones_with_skipped_days_or_midnight_fall_back_keep_monotonic_dates() {
        // Samoa skipped 30 December 2011 forwards: dates still never go back.
        assert!(LocalDays::new(Tz::Pacific__Apia).monotonic);
        // Paraguay ends summer time at midnight, back to 23:00 of the same date: fine.
        assert!(LocalDays::new(Tz::America__Asuncion).monotonic);
    }
}
