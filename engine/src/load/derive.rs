//! Derived columns computed at load (SPEC §1.3, §2.1 cost, §3.3 pain and effort), in the
//! warehouse's time zone.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate, Offset, TimeZone};
use chrono_tz::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int32Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{
    Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, TimestampMicrosecondType,
};

use crate::config::Config;
use crate::schema::traces_schema;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
const SECONDS_PER_DAY: i64 = 86_400;
const UNIX_EPOCH_CE_DAYS: i32 = 719_163;

/// Life-stage bands of SPEC §1.3, by lower age bound.
const LIFE_STAGES: [(i32, &str); 7] = [
    (65, "65+"),
    (55, "55-64"),
    (45, "45-54"),
    (35, "35-44"),
    (25, "25-34"),
    (18, "18-24"),
    (i32::MIN, "<18"),
];

/// Computes the derived columns for one time zone and cost table.
pub struct Deriver {
    tz: Tz,
    hourly_cost: HashMap<String, f64>,
    default_hourly_cost: f64,
    /// UTC offset (seconds) per quarter hour since the epoch; zones change offset on such
    /// boundaries, so one look-up serves every contact in the same quarter hour.
    offsets: HashMap<i64, i32>,
}

impl Deriver {
    /// A deriver for the configuration's time zone and costs.
    pub fn new(config: &Config) -> Result<Self, crate::config::ConfigError> {
        Ok(Deriver {
            tz: config.tz()?,
            hourly_cost: config
                .hourly_cost
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            default_hourly_cost: config.default_hourly_cost,
            offsets: HashMap::new(),
        })
    }

    fn offset_seconds(&mut self, ts_micros: i64) -> i32 {
        if self.tz == Tz::UTC {
            return 0;
        }
        let quarter = ts_micros.div_euclid(15 * MICROS_PER_MINUTE);
        let tz = self.tz;
        *self.offsets.entry(quarter).or_insert_with(|| {
            let secs = quarter * 15 * 60;
            tz.offset_from_utc_datetime(
                &chrono::DateTime::from_timestamp(secs, 0)
                    .unwrap_or_default()
                    .naive_utc(),
            )
            .fix()
            .local_minus_utc()
        })
    }

    /// Turn a validated batch (input schema) into a `traces` batch.
    pub fn derive(&mut self, batch: &RecordBatch) -> RecordBatch {
        let n = batch.num_rows();
        let col = |name: &str| batch.column_by_name(name).expect("input column");
        let ts = col("ts").as_primitive::<TimestampMicrosecondType>();
        let birth = col("customer_birth_date").as_primitive::<Date32Type>();
        let since = col("customer_since").as_primitive::<Date32Type>();
        let channel = col("channel").as_string::<i32>();
        let handle = col("handle_s").as_primitive::<Int32Type>();
        let cost_in = col("cost").as_primitive::<Float64Type>();
        let csat = col("csat").as_primitive::<Int16Type>();
        let nps = col("nps").as_primitive::<Int16Type>();
        let sentiment = col("sentiment").as_primitive::<Float32Type>();

        let mut day = Vec::with_capacity(n);
        let mut hour = Vec::with_capacity(n);
        let mut weekday = Vec::with_capacity(n);
        let mut minute = Vec::with_capacity(n);
        let mut life_stage: Vec<Option<&'static str>> = Vec::with_capacity(n);
        let mut tenure = Vec::with_capacity(n);
        let mut cost = Vec::with_capacity(n);
        let mut pain = Vec::with_capacity(n);
        let mut effort = Vec::with_capacity(n);
        for i in 0..n {
            let t = ts.value(i);
            let local_secs = t.div_euclid(MICROS_PER_SECOND) + self.offset_seconds(t) as i64;
            let local_day = local_secs.div_euclid(SECONDS_PER_DAY) as i32;
            day.push(local_day);
            hour.push((local_secs.rem_euclid(SECONDS_PER_DAY) / 3600) as i32);
            // 1970-01-01 was a Thursday (ISO weekday 4).
            weekday.push(((local_day as i64 + 3).rem_euclid(7) + 1) as i32);
            minute.push(t - t.rem_euclid(MICROS_PER_MINUTE));
            let local_date = date_of(local_day);
            // unknown when the birth date is unknown or after the contact
            let born = birth.is_valid(i) && birth.value(i) <= local_day;
            life_stage.push(born.then(|| life_stage_of(date_of(birth.value(i)), local_date)));
            tenure.push(if since.is_valid(i) && since.value(i) <= local_day {
                Some(whole_years(date_of(since.value(i)), local_date))
            } else {
                None
            });
            let c = if cost_in.is_valid(i) {
                cost_in.value(i)
            } else if handle.is_valid(i) {
                handle.value(i) as f64 / 3600.0 * self.hourly_cost_of(channel.value(i))
            } else {
                0.0
            };
            let dissatisfaction = if csat.is_valid(i) {
                (5.0 - csat.value(i) as f64) / 4.0
            } else if nps.is_valid(i) {
                (10.0 - nps.value(i) as f64) / 10.0
            } else if sentiment.is_valid(i) {
                (1.0 - sentiment.value(i) as f64) / 2.0
            } else {
                0.5
            };
            let p = 1.0 + dissatisfaction;
            cost.push(c);
            pain.push(p);
            effort.push(c * p);
        }
        let not_null = |name: &str| -> ArrayRef {
            let a = col(name).as_boolean();
            Arc::new(
                a.iter()
                    .map(|v| Some(v.unwrap_or(false)))
                    .collect::<BooleanArray>(),
            )
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(28);
        for field in batch.schema().fields() {
            columns.push(match field.name().as_str() {
                "abandoned" | "resolved" => not_null(field.name()),
                "cost" => Arc::new(Float64Array::from(cost.clone())),
                name => col(name).clone(),
            });
        }
        let utc_micros =
            |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"));
        columns.extend([
            Arc::new(StringArray::from(life_stage)) as ArrayRef,
            Arc::new(Int32Array::from(tenure)),
            Arc::new(Date32Array::from(day)),
            Arc::new(Int32Array::from(hour)),
            Arc::new(Int32Array::from(weekday)),
            utc_micros(minute),
            Arc::new(Float64Array::from(pain)),
            Arc::new(Float64Array::from(effort)),
        ]);
        RecordBatch::try_new(traces_schema(), columns).expect("derived columns match traces schema")
    }

    fn hourly_cost_of(&self, channel: &str) -> f64 {
        self.hourly_cost
            .get(channel)
            .copied()
            .unwrap_or(self.default_hourly_cost)
    }
}

fn date_of(days_since_epoch: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days_since_epoch + UNIX_EPOCH_CE_DAYS).unwrap_or_default()
}

/// Whole years from `from` to `to` (an anniversary on Feb 29 falls on Mar 1 in other years).
fn whole_years(from: NaiveDate, to: NaiveDate) -> i32 {
    let mut years = to.year() - from.year();
    if (to.month(), to.day()) < (from.month(), from.day()) {
        years -= 1;
    }
    years
}

/// The life-stage band of a customer born on `birth`, at `date` (not before `birth`).
fn life_stage_of(birth: NaiveDate, date: NaiveDate) -> &'static str {
    let age = whole_years(birth, date);
    LIFE_STAGES
        .iter()
        .find(|(lo, _)| age >= *lo)
        .map_or("<18", |(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn whole_years_counts_birthdays() {
        assert_eq!(whole_years(d(2000, 3, 15), d(2026, 3, 14)), 25);
        assert_eq!(whole_years(d(2000, 3, 15), d(2026, 3, 15)), 26);
        assert_eq!(whole_years(d(2000, 2, 29), d(2025, 2, 28)), 24);
        assert_eq!(whole_years(d(2000, 2, 29), d(2025, 3, 1)), 25);
        assert_eq!(whole_years(d(2026, 1, 1), d(2026, 12, 31)), 0);
    }

    #[test]
    fn a_birth_date_after_the_contact_gives_no_life_stage() {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let births = [
            Some("2026-01-02"),
            Some("2026-01-01"),
            None,
            Some("1990-06-01"),
        ];
        let n = births.len();
        let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let columns = [
            ("contact_id", text((0..n).map(|_| Some("c")).collect())),
            ("customer_id", text(vec![Some("u"); n])),
            ("ts", text(vec![Some("2026-01-01T10:00:00Z"); n])),
            ("channel", text(vec![Some("phone"); n])),
            ("declaration", text(vec![Some("A"); n])),
            ("customer_birth_date", text(births.to_vec())),
        ];
        let schema = Schema::new(
            columns
                .iter()
                .map(|(name, _)| Field::new(*name, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        );
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, c)| c).collect(),
        )
        .unwrap();
        let valid = crate::load::validate::Validator::new().validate(&batch, 1);
        assert!(valid.rejected.is_empty(), "{:?}", valid.rejected);
        let derived = Deriver::new(&Config::default())
            .unwrap()
            .derive(&valid.good);
        let stages = derived
            .column_by_name("life_stage")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .collect::<Vec<_>>();
        assert_eq!(stages, [None, Some("<18"), None, Some("35-44")]);
    }

    #[test]
    fn local_day_and_hour_follow_the_time_zone() {
        let config = Config {
            time_zone: "Europe/Paris".into(),
            ..Default::default()
        };
        let mut deriver = Deriver::new(&config).unwrap();
        // 2026-07-01T22:30:00Z is 00:30 on 2 July in Paris (UTC+2).
        let t = 1_782_945_000 * MICROS_PER_SECOND;
        let offset = deriver.offset_seconds(t);
        assert_eq!(offset, 7200);
        let winter = 1_767_225_600 * MICROS_PER_SECOND; // 2026-01-01T00:00:00Z
        assert_eq!(deriver.offset_seconds(winter), 3600);
    }
}
