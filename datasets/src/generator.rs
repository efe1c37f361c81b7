//! Deterministic generation of contact traces, one independent chunk of customers at a time
//! (so chunks can be made in parallel and the output depends only on the seed).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use chrono::{Datelike, NaiveDate};
use rand::distr::{Distribution, weighted::WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_distr::{LogNormal, Normal, Poisson};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::model::{self, CHANNELS, Model};
use crate::schema::input_schema;
use crate::taxonomy::Taxonomy;

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// Days between 0001-01-01 (CE) and 1970-01-01, for chrono's day numbers.
const UNIX_EPOCH_CE_DAYS: i32 = 719_163;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Number of traces in all.
    pub rows: u64,
    /// Seed: the same seed gives the same traces, byte for byte.
    pub seed: u64,
    /// First day of the period covered (UTC).
    pub start: NaiveDate,
    /// Length of the period in days.
    pub days: u32,
    /// Traces per chunk (and per output file).
    pub chunk_rows: u64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            rows: 1_000_000,
            seed: 42,
            start: NaiveDate::from_ymd_opt(2025, 11, 1).expect("valid date"),
            days: 365,
            chunk_rows: 250_000,
        }
    }
}

impl GenOptions {
    /// Number of chunks the rows are split into.
    pub fn chunks(&self) -> u64 {
        self.rows.div_ceil(self.chunk_rows.max(1))
    }

    /// Rows in chunk `index`.
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = index * self.chunk_rows;
        self.chunk_rows.min(self.rows.saturating_sub(start))
    }
}

/// An incident day: a spike of one qualification behind some declarations.
#[derive(Debug, Clone)]
pub struct Incident {
    pub day: u32,
    pub qualification: &'static str,
    pub declarations: &'static [&'static str],
    /// Extra journeys that day, as a share of an ordinary day's.
    pub boost: f64,
}

const INCIDENT_KINDS: [(&str, &[&str]); 4] = [
    (
        "Carrier/Transit/Carrier delay",
        &["Order/Status", "Delivery/Tracking"],
    ),
    (
        "Payment risk/Payment failure/PSP outage",
        &["Order/Placement"],
    ),
    (
        "Carrier/Tracking/Tracking feed gap",
        &["Order/Status", "Delivery/Tracking"],
    ),
    (
        "Digital platform/Bug/Promo engine bug",
        &["Pricing & promotions/Promotion", "Order/Placement"],
    ),
];

/// The incident days of a seed's period: a few, spread over the period.
pub fn incidents(opts: &GenOptions) -> Vec<Incident> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(opts.seed ^ 0x1AC1_DE47);
    INCIDENT_KINDS
        .iter()
        .map(|(qualification, declarations)| Incident {
            day: rng.random_range(0..opts.days.max(1)),
            qualification,
            declarations,
            boost: rng.random_range(0.8..1.5),
        })
        .collect()
}

/// Weight of each hour of the day for contacts with people and for digital channels.
const HOURS_HUMAN: [f64; 24] = [
    0.1, 0.05, 0.05, 0.05, 0.05, 0.1, 0.3, 1.0, 2.6, 3.6, 3.8, 3.6, 2.8, 3.0, 3.6, 3.5, 3.2, 2.7,
    2.0, 1.4, 0.9, 0.6, 0.4, 0.2,
];
const HOURS_DIGITAL: [f64; 24] = [
    0.5, 0.3, 0.2, 0.15, 0.15, 0.2, 0.5, 1.0, 1.6, 2.0, 2.2, 2.2, 2.3, 2.2, 2.1, 2.0, 2.0, 2.2,
    2.5, 2.8, 3.0, 2.8, 2.0, 1.0,
];
/// Monday … Sunday.
const WEEKDAYS: [f64; 7] = [1.25, 1.15, 1.1, 1.05, 1.0, 0.6, 0.35];

/// One generated contact, as indexes into the model's tables until output.
struct Contact {
    seq: u32,
    customer: u32,
    ts: i64,
    channel: u8,
    declaration: u16,
    qualification: Option<u16>,
    action: Option<u16>,
    category: Option<u8>,
    wait_s: Option<i32>,
    handle_s: Option<i32>,
    abandoned: bool,
    resolved: bool,
    csat: Option<i16>,
    nps: Option<i16>,
    sentiment: Option<f32>,
    agent: Option<u16>,
}

struct Customer {
    /// The channel the customer turns to first more often than others.
    favourite: usize,
    birth: Option<i32>,
    since: Option<i32>,
    device: Option<&'static str>,
}

const DEVICES: [&str; 6] = ["android", "ios", "windows", "macos", "linux", "other"];
const DEVICE_WEIGHTS: [f64; 6] = [40.0, 33.0, 15.0, 8.0, 2.0, 2.0];
const AGENTS: u16 = 800;

/// Everything a chunk's generation draws from.
pub struct Generator {
    model: Model,
    opts: GenOptions,
    incidents: Vec<Incident>,
    /// Per incident: its qualification's leaf index and the declaration leaves it drives.
    incident_leaves: Vec<(u16, Vec<u16>)>,
    day_dist: WeightedIndex<f64>,
    /// Per day of the period: index into `incidents` if that day has one.
    day_incident: Vec<Option<usize>>,
    hours_human: WeightedIndex<f64>,
    hours_digital: WeightedIndex<f64>,
    devices: WeightedIndex<f64>,
    waits: Vec<Option<LogNormal<f64>>>,
    handles: Vec<LogNormal<f64>>,
    gap_hours: LogNormal<f64>,
    /// Qualification given to many contacts that follow an unresolved one.
    prior_failure: u16,
    /// Customers' ages at the start of the period.
    ages: Normal<f64>,
    /// Sentiment of a resolved and of an unresolved contact.
    sentiments: [Normal<f64>; 2],
}

impl Generator {
    /// Prepare a generator for `opts` with the shipped e-commerce taxonomy.
    pub fn new(opts: GenOptions) -> Self {
        let model = Model::new(Taxonomy::ecommerce());
        let incidents = incidents(&opts);
        let first_weekday = opts.start.weekday().num_days_from_monday() as usize;
        let mut day_incident = vec![None; opts.days as usize];
        for (i, inc) in incidents.iter().enumerate() {
            day_incident[inc.day as usize] = Some(i);
        }
        let day_weights: Vec<f64> = (0..opts.days as usize)
            .map(|d| {
                let w = WEEKDAYS[(first_weekday + d) % 7];
                w * (1.0 + day_incident[d].map_or(0.0, |i| incidents[i].boost))
            })
            .collect();
        let index_of = |leaves: &[String], leaf: &str| {
            leaves
                .iter()
                .position(|l| l == leaf)
                .expect("incident leaf in taxonomy") as u16
        };
        let incident_leaves = incidents
            .iter()
            .map(|inc| {
                let q = index_of(&model.taxonomy.qualification, inc.qualification);
                let ds = inc
                    .declarations
                    .iter()
                    .flat_map(|node| Taxonomy::leaves_under(&model.taxonomy.declaration, node))
                    .map(|leaf| index_of(&model.taxonomy.declaration, leaf))
                    .collect();
                (q, ds)
            })
            .collect();
        let lognormal =
            |median: f64, sigma: f64| LogNormal::new(median.ln(), sigma).expect("valid lognormal");
        let prior_failure = index_of(
            &model.taxonomy.qualification,
            "Service handling/Prior contact failure/Previous contact unresolved",
        );
        let normal = |mean, sd| Normal::new(mean, sd).expect("valid normal");
        Generator {
            prior_failure,
            ages: normal(43.0, 14.0),
            sentiments: [normal(0.35, 0.35), normal(-0.3, 0.4)],
            waits: model::WAIT
                .iter()
                .map(|w| w.map(|(m, s)| lognormal(m, s)))
                .collect(),
            handles: model::HANDLE
                .iter()
                .map(|&(m, s)| lognormal(m, s))
                .collect(),
            gap_hours: lognormal(20.0, 1.0),
            day_dist: WeightedIndex::new(&day_weights).expect("positive weights"),
            hours_human: WeightedIndex::new(HOURS_HUMAN).expect("positive weights"),
            hours_digital: WeightedIndex::new(HOURS_DIGITAL).expect("positive weights"),
            devices: WeightedIndex::new(DEVICE_WEIGHTS).expect("positive weights"),
            day_incident,
            incident_leaves,
            incidents,
            model,
            opts,
        }
    }

    /// The options this generator was made for.
    pub fn options(&self) -> &GenOptions {
        &self.opts
    }

    /// The incident days of the period.
    pub fn incidents(&self) -> &[Incident] {
        &self.incidents
    }

    /// Generate chunk `index` as one record batch in the input schema, sorted by time.
    pub fn chunk(&self, index: u64) -> RecordBatch {
        let target = self.opts.chunk_len(index) as usize;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(self.opts.seed, index));
        let mut contacts = Vec::with_capacity(target + 16);
        let mut customers = Vec::with_capacity(target / 2);
        let journeys_per_customer = Poisson::new(1.35).expect("valid poisson");
        while contacts.len() < target {
            let customer = customers.len() as u32;
            customers.push(self.customer(&mut rng));
            let journeys = 1 + journeys_per_customer.sample(&mut rng) as usize;
            let favourite = customers[customer as usize].favourite;
            for _ in 0..journeys {
                self.journey(&mut rng, customer, favourite, &mut contacts);
            }
        }
        contacts.truncate(target);
        // Sort small keys, not the contacts themselves.
        let mut order: Vec<(i64, u32)> = contacts.iter().map(|c| (c.ts, c.seq)).collect();
        order.sort_unstable();
        let by_time = order.iter().map(|&(_, seq)| &contacts[seq as usize]);
        self.to_batch(index, by_time, contacts.len(), &customers)
    }

    fn customer(&self, rng: &mut Xoshiro256PlusPlus) -> Customer {
        let start = days_since_epoch(self.opts.start);
        let birth = rng.random_bool(0.88).then(|| {
            let age = self.ages.sample(rng).clamp(18.0, 85.0);
            start - (age * 365.25) as i32 - rng.random_range(0..365)
        });
        let since = rng.random_bool(0.93).then(|| {
            if rng.random_bool(0.06) {
                start + rng.random_range(0..self.opts.days.max(1) as i32)
            } else {
                let tenure = (-3.5 * (1.0 - rng.random::<f64>()).ln()).min(15.0);
                start - (tenure * 365.25) as i32
            }
        });
        let device = rng
            .random_bool(0.9)
            .then(|| DEVICES[self.devices.sample(rng)]);
        let favourite = self.model.first_channel_dist.sample(rng);
        Customer {
            favourite,
            birth,
            since,
            device,
        }
    }

    fn journey(
        &self,
        rng: &mut Xoshiro256PlusPlus,
        customer: u32,
        favourite: usize,
        out: &mut Vec<Contact>,
    ) {
        let m = &self.model;
        let day = self.day_dist.sample(rng);
        let incident = self.day_incident[day].and_then(|i| {
            let inc = &self.incidents[i];
            rng.random_bool(inc.boost / (1.0 + inc.boost)).then_some(i)
        });
        let (declaration, forced_qualification) = match incident {
            Some(i) => {
                let (q, ds) = &self.incident_leaves[i];
                (
                    ds[rng.random_range(0..ds.len())],
                    rng.random_bool(0.85).then_some(*q),
                )
            }
            None => (m.declaration_dist.sample(rng) as u16, None),
        };
        let category = (!rng.random_bool(0.02))
            .then(|| m.category_dist[declaration as usize].sample(rng) as u8);
        let mut channel = if rng.random_bool(0.2) {
            favourite
        } else {
            m.first_channel_dist.sample(rng)
        };
        let end = (self.opts.days as i64) * SECONDS_PER_DAY;
        let mut t = day as i64 * SECONDS_PER_DAY + self.time_of_day(rng, channel);
        let mut previous_resolved = true;
        for n in 0..6 {
            let contact = self.contact(
                rng,
                customer,
                t,
                channel,
                declaration,
                category,
                forced_qualification,
                n > 0 && !previous_resolved,
                n == 0,
            );
            let resolved = contact.resolved;
            out.push(Contact {
                seq: out.len() as u32,
                ..contact
            });
            let again = if resolved {
                rng.random_bool(0.04)
            } else {
                !rng.random_bool(0.09)
            };
            if !again {
                break;
            }
            // The next contact comes some hours or days later, at a usual time of day.
            let gap = (self.gap_hours.sample(rng) * 3600.0).min(6.0 * SECONDS_PER_DAY as f64);
            channel = m.next_channel(channel, rng);
            let mut next = (t + gap as i64).div_euclid(SECONDS_PER_DAY) * SECONDS_PER_DAY
                + self.time_of_day(rng, channel);
            if next <= t + 60 {
                next += SECONDS_PER_DAY;
            }
            t = next;
            if t >= end {
                break;
            }
            previous_resolved = resolved;
        }
    }

    /// Seconds into the day at which a contact on `channel` starts.
    fn time_of_day(&self, rng: &mut Xoshiro256PlusPlus, channel: usize) -> i64 {
        let hours = if matches!(
            CHANNELS[channel],
            "web" | "app" | "bot" | "email" | "social"
        ) {
            &self.hours_digital
        } else {
            &self.hours_human
        };
        hours.sample(rng) as i64 * 3600 + rng.random_range(0..3600)
    }

    #[allow(clippy::too_many_arguments)]
    fn contact(
        &self,
        rng: &mut Xoshiro256PlusPlus,
        customer: u32,
        t: i64,
        channel: usize,
        declaration: u16,
        category: Option<u8>,
        forced_qualification: Option<u16>,
        after_failure: bool,
        first: bool,
    ) -> Contact {
        let m = &self.model;
        let name = CHANNELS[channel];
        let abandoned = rng.random_bool(model::ABANDON[channel]);
        let wait_s = self.waits[channel].map(|d| {
            let w = d.sample(rng);
            (if abandoned { w * 1.5 } else { w }) as i32
        });
        let handle_s = (!abandoned).then(|| self.handles[channel].sample(rng).max(5.0) as i32);
        let self_service = matches!(name, "web" | "app" | "bot");
        let p_resolved = match (first, self_service) {
            (true, false) => 0.80,
            (true, true) => 0.62,
            (false, false) => 0.82,
            (false, true) => 0.6,
        };
        let resolved = !abandoned && rng.random_bool(p_resolved);
        let qualification =
            if abandoned && rng.random_bool(0.7) || rng.random_bool(0.02) {
                None
            } else if after_failure && rng.random_bool(0.25) {
                Some(self.prior_failure)
            } else {
                Some(forced_qualification.unwrap_or_else(|| {
                    m.qualification_dist[declaration as usize].sample(rng) as u16
                }))
            };
        let action = (!abandoned && !rng.random_bool(0.015))
            .then(|| m.action_dist[declaration as usize].sample(rng) as u16);
        let surveyed = !abandoned;
        let csat = (surveyed && rng.random_bool(0.072)).then(|| survey(rng, resolved, &CSAT));
        let nps = (surveyed && rng.random_bool(0.052)).then(|| survey(rng, resolved, &NPS));
        let sentiment = rng.random_bool(0.95).then(|| {
            let sentiment = &self.sentiments[usize::from(!resolved)];
            sentiment.sample(rng).clamp(-1.0, 1.0) as f32
        });
        let agent = (!self_service && !abandoned).then(|| rng.random_range(0..AGENTS));
        let ts = self.period_start_micros()
            + t * MICROS_PER_SECOND
            + rng.random_range(0..MICROS_PER_SECOND);
        Contact {
            seq: 0,
            customer,
            ts,
            channel: channel as u8,
            declaration,
            qualification,
            action,
            category,
            wait_s,
            handle_s,
            abandoned,
            resolved,
            csat,
            nps,
            sentiment,
            agent,
        }
    }

    fn period_start_micros(&self) -> i64 {
        days_since_epoch(self.opts.start) as i64 * SECONDS_PER_DAY * MICROS_PER_SECOND
    }

    fn to_batch<'c>(
        &self,
        chunk: u64,
        contacts: impl Iterator<Item = &'c Contact>,
        n: usize,
        customers: &[Customer],
    ) -> RecordBatch {
        let tax = &self.model.taxonomy;
        let mut contact_id = StringBuilder::with_capacity(n, n * 16);
        let mut customer_id = StringBuilder::with_capacity(n, n * 16);
        let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut channel = StringBuilder::with_capacity(n, n * 5);
        let mut declaration = StringBuilder::with_capacity(n, n * 40);
        let mut qualification = StringBuilder::with_capacity(n, n * 40);
        let mut action = StringBuilder::with_capacity(n, n * 40);
        let mut category = StringBuilder::with_capacity(n, n * 8);
        let mut wait_s = Int32Builder::with_capacity(n);
        let mut handle_s = Int32Builder::with_capacity(n);
        let mut abandoned = BooleanBuilder::with_capacity(n);
        let mut resolved = BooleanBuilder::with_capacity(n);
        let mut csat = Int16Builder::with_capacity(n);
        let mut nps = Int16Builder::with_capacity(n);
        let mut sentiment = Float32Builder::with_capacity(n);
        let mut cost = Float64Builder::with_capacity(n);
        let mut birth = Date32Builder::with_capacity(n);
        let mut since = Date32Builder::with_capacity(n);
        let mut agent = StringBuilder::with_capacity(n, n * 10);
        let mut device = StringBuilder::with_capacity(n, n * 7);
        let id_key = mix(self.opts.seed, u64::MAX);
        let customer_key = mix(self.opts.seed, u64::MAX - 1);
        let mut buf = String::with_capacity(32);
        for (i, c) in contacts.enumerate() {
            use std::fmt::Write;
            let mut hex = [0u8; 16];
            let id = splitmix64(id_key ^ ((chunk << 32) | i as u64));
            contact_id.append_value(hex16(&mut hex, id));
            let key = customer_key ^ ((chunk << 32) | c.customer as u64);
            let mut customer = [0u8; 16];
            hex16(&mut customer, splitmix64(key));
            buf.clear();
            buf.push_str("cu-");
            buf.push_str(std::str::from_utf8(&customer[..12]).expect("hex digits are ASCII"));
            customer_id.append_value(&buf);
            ts.append_value(c.ts);
            channel.append_value(CHANNELS[c.channel as usize]);
            declaration.append_value(&tax.declaration[c.declaration as usize]);
            qualification.append_option(c.qualification.map(|q| &tax.qualification[q as usize]));
            action.append_option(c.action.map(|a| &tax.action[a as usize]));
            category.append_option(c.category.map(|k| model::CATEGORIES[k as usize]));
            wait_s.append_option(c.wait_s);
            handle_s.append_option(c.handle_s);
            abandoned.append_value(c.abandoned);
            resolved.append_value(c.resolved);
            csat.append_option(c.csat);
            nps.append_option(c.nps);
            sentiment.append_option(c.sentiment);
            cost.append_null();
            let cust = &customers[c.customer as usize];
            birth.append_option(cust.birth);
            since.append_option(cust.since);
            match c.agent {
                Some(a) => {
                    buf.clear();
                    let _ = write!(buf, "agent-{a:04}");
                    agent.append_value(&buf);
                }
                None => agent.append_null(),
            }
            device.append_option(cust.device);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(contact_id.finish()),
            Arc::new(customer_id.finish()),
            Arc::new(ts.finish()),
            Arc::new(channel.finish()),
            Arc::new(declaration.finish()),
            Arc::new(qualification.finish()),
            Arc::new(action.finish()),
            Arc::new(category.finish()),
            Arc::new(wait_s.finish()),
            Arc::new(handle_s.finish()),
            Arc::new(abandoned.finish()),
            Arc::new(resolved.finish()),
            Arc::new(csat.finish()),
            Arc::new(nps.finish()),
            Arc::new(sentiment.finish()),
            Arc::new(cost.finish()),
            Arc::new(birth.finish()),
            Arc::new(since.finish()),
            Arc::new(agent.finish()),
            Arc::new(device.finish()),
        ];
        RecordBatch::try_new(input_schema(), columns).expect("columns match the input schema")
    }
}

/// Score distributions for a resolved and an unresolved contact: (score, weight).
const CSAT: [&[(i16, f64)]; 2] = [
    &[(5, 0.55), (4, 0.30), (3, 0.08), (2, 0.04), (1, 0.03)],
    &[(5, 0.08), (4, 0.12), (3, 0.20), (2, 0.25), (1, 0.35)],
];
const NPS: [&[(i16, f64)]; 2] = [
    &[
        (10, 0.30),
        (9, 0.25),
        (8, 0.18),
        (7, 0.12),
        (6, 0.06),
        (5, 0.04),
        (3, 0.03),
        (0, 0.02),
    ],
    &[
        (10, 0.03),
        (9, 0.04),
        (8, 0.08),
        (7, 0.10),
        (6, 0.15),
        (5, 0.15),
        (4, 0.12),
        (3, 0.1),
        (2, 0.08),
        (1, 0.07),
        (0, 0.08),
    ],
];

fn survey(rng: &mut Xoshiro256PlusPlus, resolved: bool, table: &[&[(i16, f64)]; 2]) -> i16 {
    let dist = table[usize::from(!resolved)];
    let mut x = rng.random::<f64>() * dist.iter().map(|(_, w)| w).sum::<f64>();
    for &(score, w) in dist {
        if x < w {
            return score;
        }
        x -= w;
    }
    dist[dist.len() - 1].0
}

/// Generate chunk `index` of `opts` (a convenience for one-off use; reuse a [`Generator`]
/// for many chunks).
pub fn generate_chunk(opts: &GenOptions, index: u64) -> RecordBatch {
    Generator::new(opts.clone()).chunk(index)
}

fn days_since_epoch(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - UNIX_EPOCH_CE_DAYS
}

/// Write `v` as 16 lower-case hex digits into `out`.
fn hex16(out: &mut [u8; 16], v: u64) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xF) as usize];
    }
    std::str::from_utf8(out).expect("hex digits are ASCII")
}

/// A bijective 64-bit mixer (SplitMix64's finaliser): distinct inputs give distinct outputs.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn mix(seed: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ stream.rotate_left(17))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_chunk_and_other_seed_differs() {
        let opts = GenOptions {
            rows: 5_000,
            chunk_rows: 5_000,
            ..Default::default()
        };
        let a = generate_chunk(&opts, 0);
        let b = generate_chunk(&opts, 0);
        assert_eq!(a, b);
        assert_eq!(a.num_rows(), 5_000);
        let c = generate_chunk(&GenOptions { seed: 7, ..opts }, 0);
        assert_ne!(a, c);
    }

    #[test]
    fn splitmix_is_a_bijection_on_samples() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u64 {
            assert!(seen.insert(splitmix64(i)));
        }
    }
}
