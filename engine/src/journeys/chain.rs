//! Chaining contacts into journeys (SPEC §1.4), in memory: the contacts of a set of whole
//! journeys plus new contacts in, one row per contact and one row per journey out.
//!
//! Contacts are grouped by (customer, need) and ordered by (`ts`, `contact_id`); a contact
//! starts a journey when it is its group's first or comes more than the gap after the
//! previous one. This is what the window functions of [`super::reference`] compute, for
//! a subset of the contacts that is closed under journeys.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;

use crate::schema::timestamp_type;

/// Columns a chaining reads, in this order.
pub const INPUT_COLUMNS: [&str; 6] = [
    "customer_id",
    "need",
    "ts",
    "contact_id",
    "channel",
    "resolved",
];

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// One row per contact: what chaining needs again later, the journey columns of the
/// `journeys` view, and the journey's last instant (its day partitions the table).
pub fn contacts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("need", DataType::Utf8, true),
        Field::new("ts", timestamp_type(), false),
        Field::new("contact_id", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("resolved", DataType::Boolean, false),
        Field::new("journey_id", DataType::Utf8, false),
        Field::new("journey_seq", DataType::Int32, false),
        Field::new("prev_channel", DataType::Utf8, true),
        Field::new("ended_day", DataType::Date32, false),
    ]))
}

/// One row per journey: the `journey_summary` columns but `gave_up`, which depends on the
/// latest `ts` of `traces` and is computed when read from `last_resolved`.
pub fn summary_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("journey_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("need", DataType::Utf8, true),
        Field::new("started_at", timestamp_type(), false),
        Field::new("ended_at", timestamp_type(), false),
        Field::new("contacts", DataType::Int64, false),
        Field::new("channels", DataType::Int64, false),
        Field::new("first_channel", DataType::Utf8, false),
        Field::new("last_channel", DataType::Utf8, false),
        Field::new("fcr", DataType::Boolean, false),
        Field::new("last_resolved", DataType::Boolean, false),
        Field::new("ended_day", DataType::Date32, false),
    ]))
}

/// The day (since the epoch, UTC) of an instant in microseconds.
pub fn day_of(micros: i64) -> i32 {
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// The chained rows: one batch of [`contacts_schema`], one of [`summary_schema`].
pub struct Chained {
    pub contacts: RecordBatch,
    pub summary: RecordBatch,
}

/// Chain `batches` (columns [`INPUT_COLUMNS`], strings of any string type) with journeys
/// broken by gaps longer than `gap_micros`.
pub fn chain(batches: &[RecordBatch], gap_micros: i64) -> Result<Chained, ArrowError> {
    let column = |i: usize, to: &DataType| -> Result<ArrayRef, ArrowError> {
        let parts = batches
            .iter()
            .map(|b| cast(b.column(i), to))
            .collect::<Result<Vec<_>, _>>()?;
        if parts.is_empty() {
            return Ok(datafusion::arrow::array::new_empty_array(to));
        }
        concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>())
    };
    let customers = column(0, &DataType::LargeUtf8)?;
    let needs = column(1, &DataType::LargeUtf8)?;
    let ts_array = column(2, &timestamp_type())?;
    let ids = column(3, &DataType::LargeUtf8)?;
    let channels = column(4, &DataType::LargeUtf8)?;
    let resolved_array = column(5, &DataType::Boolean)?;
    let customers = customers.as_string::<i64>();
    let needs = needs.as_string::<i64>();
    let ids = ids.as_string::<i64>();
    let channels = channels.as_string::<i64>();
    let ts = ts_array
        .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
        .values();
    let resolved = resolved_array.as_boolean();
    let n = customers.len();
    for (name, array) in [
        ("customer_id", customers as &dyn Array),
        ("ts", ts_array.as_ref()),
        ("contact_id", ids),
        ("channel", channels),
        ("resolved", resolved),
    ] {
        if array.null_count() > 0 {
            return Err(ArrowError::InvalidArgumentError(format!(
                "journeys: {name} is NULL in a stored contact"
            )));
        }
    }

    // (customer, need) as a number, then every contact in (group, ts, contact_id) order
    let mut groups: HashMap<(&str, Option<&str>), u32> = HashMap::new();
    let mut order: Vec<(u32, i64, u32)> = Vec::with_capacity(n);
    for row in 0..n {
        let need = needs.is_valid(row).then(|| needs.value(row));
        let next = groups.len() as u32;
        let group = *groups.entry((customers.value(row), need)).or_insert(next);
        order.push((group, ts[row], row as u32));
    }
    drop(groups);
    order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| ids.value(a.2 as usize).cmp(ids.value(b.2 as usize)))
    });

    // one pass: each contact's journey, and each journey's summary
    let mut journey_of = vec![0u32; n]; // by position in `order`: index of the journey
    let mut seq = Vec::with_capacity(n);
    let mut prev_channel: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut journeys: Vec<Journey> = Vec::new();
    let mut previous: Option<(u32, i64, usize)> = None; // group, ts, row
    for (at, &(group, when, row)) in order.iter().enumerate() {
        let row = row as usize;
        let continues = matches!(previous, Some((g, t, _)) if g == group && when - t <= gap_micros);
        if continues {
            let (_, _, before) = previous.expect("continues");
            let journey = journeys.last_mut().expect("a journey is open");
            journey.add(when, channels.value(row), resolved.value(row));
            seq.push(journey.contacts as i32);
            prev_channel.push(Some(channels.value(before)));
        } else {
            journeys.push(Journey::start(
                row,
                when,
                channels.value(row),
                resolved.value(row),
            ));
            seq.push(1);
            prev_channel.push(None);
        }
        journey_of[at] = (journeys.len() - 1) as u32;
        previous = Some((group, when, row));
    }

    let rows: Vec<usize> = order.iter().map(|o| o.2 as usize).collect();
    let take = |array: &dyn Array| utf8_at(array, &rows);
    let ended: Vec<i64> = journey_of
        .iter()
        .map(|&j| journeys[j as usize].ended_at)
        .collect();
    let contacts = RecordBatch::try_new(
        contacts_schema(),
        vec![
            take(customers)?,
            take(needs)?,
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(order.iter().map(|o| o.1))
                    .with_timezone("UTC"),
            ),
            take(ids)?,
            take(channels)?,
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|&r| Some(resolved.value(r))),
            )),
            Arc::new(StringArray::from_iter_values(
                journey_of
                    .iter()
                    .map(|&j| ids.value(journeys[j as usize].first_row)),
            )),
            Arc::new(Int32Array::from(seq)),
            Arc::new(StringArray::from(prev_channel)),
            Arc::new(Date32Array::from_iter_values(
                ended.iter().map(|&e| day_of(e)),
            )),
        ],
    )?;

    let first_rows: Vec<usize> = journeys.iter().map(|j| j.first_row).collect();
    let first = |array: &dyn Array| utf8_at(array, &first_rows);
    let timestamps = |values: Vec<i64>| {
        Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC")) as ArrayRef
    };
    let summary = RecordBatch::try_new(
        summary_schema(),
        vec![
            first(ids)?,
            first(customers)?,
            first(needs)?,
            timestamps(journeys.iter().map(|j| j.started_at).collect()),
            timestamps(journeys.iter().map(|j| j.ended_at).collect()),
            Arc::new(Int64Array::from_iter_values(
                journeys.iter().map(|j| j.contacts),
            )),
            Arc::new(Int64Array::from_iter_values(
                journeys.iter().map(|j| j.channels.len() as i64),
            )),
            first(channels)?,
            Arc::new(StringArray::from_iter_values(
                journeys.iter().map(|j| j.last_channel),
            )),
            Arc::new(BooleanArray::from_iter(
                journeys
                    .iter()
                    .map(|j| Some(j.contacts == 1 && j.last_resolved)),
            )),
            Arc::new(BooleanArray::from_iter(
                journeys.iter().map(|j| Some(j.last_resolved)),
            )),
            Arc::new(Date32Array::from_iter_values(
                journeys.iter().map(|j| day_of(j.ended_at)),
            )),
        ],
    )?;
    Ok(Chained { contacts, summary })
}

/// The values of `array` at `rows`, as plain strings.
fn utf8_at(array: &dyn Array, rows: &[usize]) -> Result<ArrayRef, ArrowError> {
    let indices =
        datafusion::arrow::array::UInt32Array::from_iter_values(rows.iter().map(|&r| r as u32));
    cast(
        &datafusion::arrow::compute::take(array, &indices, None)?,
        &DataType::Utf8,
    )
}

/// A journey being chained.
struct Journey<'a> {
    first_row: usize,
    started_at: i64,
    ended_at: i64,
    contacts: i64,
    /// The distinct channels (a journey has few).
    channels: Vec<&'a str>,
    last_channel: &'a str,
    last_resolved: bool,
}

impl<'a> Journey<'a> {
    fn start(row: usize, ts: i64, channel: &'a str, resolved: bool) -> Self {
        Journey {
            first_row: row,
            started_at: ts,
            ended_at: ts,
            contacts: 1,
            channels: vec![channel],
            last_channel: channel,
            last_resolved: resolved,
        }
    }

    fn add(&mut self, ts: i64, channel: &'a str, resolved: bool) {
        self.ended_at = ts;
        self.contacts += 1;
        if !self.channels.contains(&channel) {
            self.channels.push(channel);
        }
        self.last_channel = channel;
        self.last_resolved = resolved;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;

    /// customer, need, ts, contact, channel, resolved
    type Contact<'a> = (&'a str, Option<&'a str>, i64, &'a str, &'a str, bool);

    fn input(rows: &[Contact]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("need", DataType::Utf8, true),
            Field::new("ts", timestamp_type(), false),
            Field::new("contact_id", DataType::Utf8, false),
            Field::new("channel", DataType::Utf8View, false),
            Field::new("resolved", DataType::Boolean, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(datafusion::arrow::array::StringViewArray::from_iter_values(
                    rows.iter().map(|r| r.4),
                )),
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.5)))),
            ],
        )
        .unwrap()
    }

    fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let c = batch.column_by_name(name).unwrap().as_string::<i32>();
        c.iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn contacts_chain_by_customer_and_need_within_the_gap() {
        // out of order, a tie on ts broken by contact_id, a NULL need, a gap just over
        let rows = [
            ("c1", Some("billing"), 5 * HOUR, "b", "email", false),
            ("c1", Some("billing"), 0, "a", "phone", false),
            ("c1", Some("billing"), 5 * HOUR, "a2", "chat", true),
            ("c1", Some("billing"), 16 * HOUR, "z", "phone", true),
            ("c1", Some("move"), HOUR, "m", "store", true),
            ("c2", None, 0, "n1", "app", false),
            ("c2", None, 2 * HOUR, "n2", "app", false),
        ];
        let chained = chain(&[input(&rows)], 10 * HOUR).unwrap();
        let c = &chained.contacts;
        assert_eq!(
            strings(c, "contact_id"),
            ["a", "a2", "b", "z", "m", "n1", "n2"].map(|s| Some(s.to_string()))
        );
        assert_eq!(
            strings(c, "journey_id"),
            ["a", "a", "a", "z", "m", "n1", "n1"].map(|s| Some(s.to_string()))
        );
        let seq = c
            .column_by_name("journey_seq")
            .unwrap()
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        assert_eq!(seq.values().to_vec(), vec![1, 2, 3, 1, 1, 1, 2]);
        assert_eq!(
            strings(c, "prev_channel"),
            vec![
                None,
                Some("phone".into()),
                Some("chat".into()),
                None,
                None,
                None,
                Some("app".into())
            ]
        );
        let s = &chained.summary;
        assert_eq!(s.num_rows(), 4);
        assert_eq!(
            strings(s, "journey_id"),
            ["a", "z", "m", "n1"].map(|s| Some(s.to_string()))
        );
        let contacts = s
            .column_by_name("contacts")
            .unwrap()
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert_eq!(contacts.values().to_vec(), vec![3, 1, 1, 2]);
        let channels = s
            .column_by_name("channels")
            .unwrap()
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert_eq!(channels.values().to_vec(), vec![3, 1, 1, 1]);
        let fcr = s.column_by_name("fcr").unwrap().as_boolean();
        assert_eq!(
            fcr.iter().collect::<Vec<_>>(),
            [false, true, true, false].map(Some)
        );
        assert_eq!(strings(s, "last_channel")[0].as_deref(), Some("email"));
        assert_eq!(strings(s, "need")[3], None);
    }

    #[test]
    fn nothing_in_nothing_out() {
        let chained = chain(&[], HOUR).unwrap();
        assert_eq!(chained.contacts.num_rows(), 0);
        assert_eq!(chained.summary.num_rows(), 0);
    }
}
