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
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, lit};

use super::measures::{column, is_column};

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
