//! The generator reproduces each figure of `shared/DOMAIN.md` on a 200 000-row sample,
//! within the tolerances stated next to each check.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, Float32Type, Int16Type, Int32Type, TimestampMicrosecondType};
use tracecube_datasets::{GenOptions, generate_chunk};

const ROWS: u64 = 200_000;
const DAY_US: i64 = 86_400_000_000;

struct Sample {
    batch: RecordBatch,
}

impl Sample {
    fn new() -> Self {
        let opts = GenOptions {
            rows: ROWS,
            chunk_rows: ROWS,
            ..Default::default()
        };
        Sample {
            batch: generate_chunk(&opts, 0),
        }
    }
    fn str(&self, name: &str, i: usize) -> Option<&str> {
        let a = self.batch.column_by_name(name).unwrap().as_string::<i32>();
        a.is_valid(i).then(|| a.value(i))
    }
    fn i32(&self, name: &str, i: usize) -> Option<i32> {
        let a = self
            .batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Int32Type>();
        a.is_valid(i).then(|| a.value(i))
    }
    fn i16(&self, name: &str, i: usize) -> Option<i16> {
        let a = self
            .batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Int16Type>();
        a.is_valid(i).then(|| a.value(i))
    }
    fn date(&self, name: &str, i: usize) -> Option<i32> {
        let a = self
            .batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Date32Type>();
        a.is_valid(i).then(|| a.value(i))
    }
    fn ts(&self, i: usize) -> i64 {
        self.batch
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(i)
    }
    fn flag(&self, name: &str, i: usize) -> bool {
        self.batch
            .column_by_name(name)
            .unwrap()
            .as_boolean()
            .value(i)
    }
    fn len(&self) -> usize {
        self.batch.num_rows()
    }

    /// Journeys by SPEC §1.4: same customer and first declaration segment, each contact at
    /// most 7 days after the previous one; contacts ordered by (ts, contact_id).
    fn journeys(&self) -> Vec<Vec<usize>> {
        let mut by_key: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for i in 0..self.len() {
            let need = self
                .str("declaration", i)
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            by_key
                .entry((self.str("customer_id", i).unwrap(), need))
                .or_default()
                .push(i);
        }
        let mut journeys = Vec::new();
        for (_, mut rows) in by_key {
            rows.sort_by_key(|&i| (self.ts(i), self.str("contact_id", i).unwrap().to_string()));
            let mut current: Vec<usize> = Vec::new();
            for i in rows {
                if let Some(&last) = current.last()
                    && self.ts(i) - self.ts(last) > 7 * DAY_US
                {
                    journeys.push(std::mem::take(&mut current));
                }
                current.push(i);
            }
            journeys.push(current);
        }
        journeys
    }
}

fn pct(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole as f64
}

fn assert_near(what: &str, value: f64, target: f64, tolerance: f64) {
    println!("{what}: {value:.2} (target {target} ± {tolerance})");
    assert!(
        (value - target).abs() <= tolerance,
        "{what}: {value:.2} is not within {tolerance} of {target}"
    );
}

#[test]
fn channel_shares_match_domain_within_two_points() {
    let s = Sample::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for i in 0..s.len() {
        *counts.entry(s.str("channel", i).unwrap()).or_default() += 1;
    }
    for (channel, target) in [
        ("phone", 40.0),
        ("email", 18.0),
        ("chat", 14.0),
        ("web", 9.0),
        ("app", 7.0),
        ("social", 5.0),
        ("mail", 3.0),
        ("store", 3.0),
        ("bot", 1.0),
    ] {
        assert_near(channel, pct(counts[channel], s.len()), target, 2.0);
    }
}

#[test]
fn journeys_match_fcr_switching_and_give_up() {
    let s = Sample::new();
    let journeys = s.journeys();
    let max_ts = (0..s.len()).map(|i| s.ts(i)).max().unwrap();
    // FCR and give-up only over journeys whose 7-day window has closed.
    let closed: Vec<&Vec<usize>> = journeys
        .iter()
        .filter(|j| s.ts(*j.last().unwrap()) + 7 * DAY_US < max_ts)
        .collect();
    let fcr = closed
        .iter()
        .filter(|j| j.len() == 1 && s.flag("resolved", j[0]))
        .count();
    assert_near("FCR %", pct(fcr, closed.len()), 70.0, 4.0);
    let gave_up = closed
        .iter()
        .filter(|j| !s.flag("resolved", *j.last().unwrap()))
        .count();
    assert_near("give-up %", pct(gave_up, closed.len()), 3.2, 1.5);

    let (mut after_phone, mut switched, mut to_chat) = (0, 0, 0);
    for j in &journeys {
        for w in j.windows(2) {
            if s.str("channel", w[0]) == Some("phone") {
                after_phone += 1;
                let next = s.str("channel", w[1]).unwrap();
                switched += usize::from(next != "phone");
                to_chat += usize::from(next == "chat");
            }
        }
    }
    assert_near(
        "next contact after phone on another channel %",
        pct(switched, after_phone),
        40.0,
        5.0,
    );
    assert_near(
        "next contact after phone on chat %",
        pct(to_chat, after_phone),
        6.4,
        2.5,
    );
}

#[test]
fn customers_with_three_contacts_use_about_2_7_channels() {
    let s = Sample::new();
    let mut channels: HashMap<&str, (usize, HashSet<&str>)> = HashMap::new();
    for i in 0..s.len() {
        let e = channels
            .entry(s.str("customer_id", i).unwrap())
            .or_default();
        e.0 += 1;
        e.1.insert(s.str("channel", i).unwrap());
    }
    let multi: Vec<_> = channels.values().filter(|(n, _)| *n >= 3).collect();
    let mean = multi.iter().map(|(_, c)| c.len()).sum::<usize>() as f64 / multi.len() as f64;
    assert_near("channels per customer with >= 3 contacts", mean, 2.7, 0.2);
    let per_customer = s.len() as f64 / channels.len() as f64;
    assert!(
        (2.0..=4.0).contains(&per_customer),
        "contacts per customer per year {per_customer}"
    );
}

#[test]
fn phone_queue_and_handle_times_are_lognormal_as_published() {
    let s = Sample::new();
    let mut phone_waits = Vec::new();
    let mut handles: HashMap<&str, Vec<f64>> = HashMap::new();
    let (mut phone, mut abandoned) = (0, 0);
    for i in 0..s.len() {
        let ch = s.str("channel", i).unwrap();
        if ch == "phone" {
            phone += 1;
            if s.flag("abandoned", i) {
                abandoned += 1;
            } else {
                phone_waits.push(s.i32("wait_s", i).unwrap());
            }
        }
        if let Some(h) = s.i32("handle_s", i) {
            handles.entry(ch).or_default().push(h as f64);
        }
    }
    let abandonment = pct(abandoned, phone);
    assert!(
        (5.0..=8.0).contains(&abandonment),
        "phone abandonment {abandonment}"
    );
    let within = phone_waits.iter().filter(|&&w| w <= 90).count();
    assert_near(
        "phone answered within 90 s %",
        pct(within, phone_waits.len()),
        80.0,
        4.0,
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    assert_near(
        "phone median handle s",
        median(handles.get_mut("phone").unwrap()),
        360.0,
        30.0,
    );
    assert_near("chat mean handle s", mean(&handles["chat"]), 780.0, 60.0);
    assert_near(
        "email median handle s",
        median(handles.get_mut("email").unwrap()),
        240.0,
        25.0,
    );
}

#[test]
fn surveys_cover_a_few_percent_and_sentiment_almost_all() {
    let s = Sample::new();
    let csat = (0..s.len()).filter(|&i| s.i16("csat", i).is_some()).count();
    let nps = (0..s.len()).filter(|&i| s.i16("nps", i).is_some()).count();
    let sentiment = s
        .batch
        .column_by_name("sentiment")
        .unwrap()
        .as_primitive::<Float32Type>();
    assert_near("csat coverage %", pct(csat, s.len()), 7.0, 1.0);
    assert_near("nps coverage %", pct(nps, s.len()), 5.0, 1.0);
    assert_near(
        "sentiment coverage %",
        pct(s.len() - sentiment.null_count(), s.len()),
        95.0,
        1.0,
    );
    assert!((0..s.len()).all(|i| s.i16("csat", i).is_none_or(|v| (1..=5).contains(&v))));
    assert!((0..s.len()).all(|i| s.i16("nps", i).is_none_or(|v| (0..=10).contains(&v))));
}

#[test]
fn categories_match_price_and_jaffe_shares() {
    let s = Sample::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut known = 0;
    for i in 0..s.len() {
        if let Some(c) = s.str("category", i) {
            *counts.entry(c).or_default() += 1;
            known += 1;
        }
    }
    for (category, target) in [
        ("avoidable", 35.0),
        ("help", 30.0),
        ("selfcare", 25.0),
        ("mandatory", 10.0),
    ] {
        assert_near(category, pct(counts[category], known), target, 3.0);
    }
}

#[test]
fn reasons_are_zipf_like_and_qualification_follows_declaration() {
    let s = Sample::new();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut behind_parcel: HashMap<&str, usize> = HashMap::new();
    for i in 0..s.len() {
        let d = s.str("declaration", i).unwrap();
        *counts.entry(d).or_default() += 1;
        if d == "Delivery/Tracking/Parcel not received"
            && let Some(q) = s.str("qualification", i)
        {
            *behind_parcel
                .entry(q.split('/').next().unwrap())
                .or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    assert_eq!(ranked[0].0, "Order/Status/Where is my order");
    let top = pct(ranked[0].1, s.len());
    assert!((15.0..=19.0).contains(&top), "where is my order {top}%");
    assert!(
        ranked[0].1 > 2 * ranked[4].1 && ranked[4].1 > 2 * ranked[30].1,
        "not Zipf-like: {ranked:?}"
    );
    let total: usize = behind_parcel.values().sum();
    assert!(
        pct(behind_parcel["Carrier"], total) > 40.0,
        "{behind_parcel:?}"
    );
}

#[test]
fn customers_are_adults_with_up_to_fifteen_years_of_tenure() {
    let s = Sample::new();
    for i in 0..s.len() {
        let day = (s.ts(i).div_euclid(DAY_US)) as i32;
        if let Some(birth) = s.date("customer_birth_date", i) {
            let age = (day - birth) as f64 / 365.25;
            assert!((18.0..87.0).contains(&age), "age {age}");
        }
        if let Some(since) = s.date("customer_since", i) {
            assert!((day - since) as f64 / 365.25 < 16.5, "tenure");
        }
    }
}

#[test]
fn contacts_peak_in_business_hours_on_weekdays_with_incident_spikes() {
    let s = Sample::new();
    let (mut business, mut night) = (0, 0);
    let mut weekday = [0usize; 7];
    let mut per_day: HashMap<(i64, &str), usize> = HashMap::new();
    for i in 0..s.len() {
        let ts = s.ts(i);
        let hour = ts.rem_euclid(DAY_US) / 3_600_000_000;
        if (9..17).contains(&hour) {
            business += 1;
        } else if hour < 6 {
            night += 1;
        }
        let day = ts.div_euclid(DAY_US);
        weekday[((day + 3).rem_euclid(7)) as usize] += 1; // 1970-01-01 was a Thursday
        if let Some(q) = s.str("qualification", i) {
            *per_day.entry((day, q)).or_default() += 1;
        }
    }
    assert!(business > 8 * night, "business {business} night {night}");
    assert!(
        weekday[0] > 2 * weekday[6],
        "monday {} sunday {}",
        weekday[0],
        weekday[6]
    );
    let delays: Vec<usize> = per_day
        .iter()
        .filter(|((_, q), _)| *q == "Carrier/Transit/Carrier delay")
        .map(|(_, n)| *n)
        .collect();
    let mut sorted = delays.clone();
    sorted.sort();
    let (median, max) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
    assert!(
        max > 5 * median.max(1),
        "carrier delay spike: max {max}, median {median}"
    );
}
