//! Contact-centre KPIs with their standard definitions (SPEC §3.2): `csat`, `nps`,
//! `service_level` and `aht` aggregates (each with a `GroupsAccumulator` for grouped
//! speed) and the `sla_seconds` scalar. All return NULL on no input rows.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int32Type, Int64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDFImpl, ColumnarValue, Documentation, EmitTo, GroupsAccumulator,
    ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::docs::function_doc;
use crate::text::{arity, boolean_arg, map_text, numeric_arg, on_first_arg, text_arg};

const SECTION: &str = "KPI Functions";

/// Service-level thresholds per channel, in seconds (configurable).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlaTable(BTreeMap<String, i32>);

impl Default for SlaTable {
    /// NF Service commitments: phone 90 s, chat 60 s, email 2 days, mail 20 days,
    /// social 1 day; other channels have none.
    fn default() -> Self {
        Self::new([
            ("phone", 90),
            ("chat", 60),
            ("email", 172_800),
            ("mail", 1_728_000),
            ("social", 86_400),
        ])
    }
}

impl SlaTable {
    /// A table from `(channel, seconds)` pairs.
    pub fn new<S: Into<String>>(entries: impl IntoIterator<Item = (S, i32)>) -> Self {
        Self(entries.into_iter().map(|(c, s)| (c.into(), s)).collect())
    }

    /// The threshold of `channel`, if it has one.
    pub fn seconds(&self, channel: &str) -> Option<i32> {
        self.0.get(channel).copied()
    }

    /// The threshold of every row's channel (once per distinct dictionary value).
    fn per_row(&self, channels: &dyn Array) -> Result<ArrayRef> {
        map_text::<Int32Array, _, _>(channels, &|c| self.seconds(c))
    }
}

/// `sla_seconds(channel text) → int`: the channel's service-level threshold.
///
/// ```sql
/// SELECT sla_seconds('phone'); -- 90
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SlaSeconds {
    signature: Signature,
    slas: SlaTable,
}

impl SlaSeconds {
    /// The function over the configured thresholds.
    pub fn new(slas: SlaTable) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            slas,
        }
    }
}

impl ScalarUDFImpl for SlaSeconds {
    fn name(&self) -> &str {
        "sla_seconds"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        arity(self.name(), "sla_seconds(channel)", types, 1)?;
        Ok(vec![text_arg(self.name(), "channel", &types[0])?])
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        on_first_arg(&args.args[0], |channels| self.slas.per_row(channels))
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "The channel's service-level threshold in seconds: phone 90, chat 60, email 172800, mail 1728000, social 86400 (configurable); NULL for other channels.",
                "sla_seconds(channel text) → integer",
                "SELECT sla_seconds('phone'); -- 90",
                &[("channel", "Channel token.")],
            )
        });
        Some(&DOC)
    }
}

/// What each row adds to a tally: nothing, one counted row, a counted "hit", or a
/// counted "miss" (NPS detractors).
const SKIP: u8 = 0;
const COUNT: u8 = 1;
const HIT: u8 = 2;
const MISS: u8 = 3;

/// The KPIs that are ratios of counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Tally {
    Csat,
    Nps,
    ServiceLevel(SlaTable),
}

impl Tally {
    /// One code per row of the arguments.
    fn codes(&self, args: &[ArrayRef]) -> Result<Vec<u8>> {
        Ok(match self {
            Tally::Csat => scores(&args[0], |s| if s >= 4.0 { HIT } else { COUNT }),
            Tally::Nps => scores(&args[0], |s| match s {
                s if s >= 9.0 => HIT,
                s if s <= 6.0 => MISS,
                _ => COUNT,
            }),
            Tally::ServiceLevel(slas) => {
                let slas = slas.per_row(args[0].as_ref())?;
                let slas = slas.as_primitive::<Int32Type>();
                let waits = args[1].as_primitive::<Float64Type>();
                let abandoned = args[2].as_boolean();
                (0..slas.len())
                    .map(|i| {
                        if slas.is_null(i) || waits.is_null(i) {
                            SKIP
                        } else if abandoned.is_valid(i) && abandoned.value(i) {
                            COUNT
                        } else if waits.value(i) <= f64::from(slas.value(i)) {
                            HIT
                        } else {
                            COUNT
                        }
                    })
                    .collect()
            }
        })
    }

    /// The KPI of one group's counts; NULL when nothing was counted.
    fn value(&self, [n, hit, miss]: [u64; 3]) -> Option<f64> {
        (n > 0).then(|| match self {
            Tally::Nps => 100.0 * (hit as f64 - miss as f64) / n as f64,
            Tally::Csat | Tally::ServiceLevel(_) => 100.0 * hit as f64 / n as f64,
        })
    }
}

fn scores(scores: &ArrayRef, code: impl Fn(f64) -> u8) -> Vec<u8> {
    scores
        .as_primitive::<Float64Type>()
        .iter()
        .map(|s| s.map_or(SKIP, &code))
        .collect()
}

/// Adds one row's code to a group's `[n, hit, miss]` counts.
fn add(counts: &mut [u64; 3], code: u8) {
    if code != SKIP {
        counts[0] += 1;
        counts[1] += u64::from(code == HIT);
        counts[2] += u64::from(code == MISS);
    }
}

/// An aggregate that is a ratio of counts: `csat`, `nps`, `service_level`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TallyKpi {
    name: &'static str,
    signature: Signature,
    tally: Tally,
}

impl TallyKpi {
    /// `csat(score)`: 100 × count(score ≥ 4) / count(score).
    ///
    /// ```sql
    /// SELECT channel, csat(csat) FROM traces GROUP BY channel;
    /// ```
    pub fn csat() -> Self {
        Self::new("csat", Tally::Csat)
    }

    /// `nps(score)`: 100 × (count(score ≥ 9) − count(score ≤ 6)) / count(score).
    ///
    /// ```sql
    /// SELECT life_stage, nps(nps) FROM traces GROUP BY life_stage;
    /// ```
    pub fn nps() -> Self {
        Self::new("nps", Tally::Nps)
    }

    /// `service_level(channel, wait_s, abandoned)`: % answered within the channel's
    /// threshold among answered + abandoned contacts of channels that have one.
    ///
    /// ```sql
    /// SELECT channel, service_level(channel, wait_s, abandoned) FROM traces GROUP BY 1;
    /// ```
    pub fn service_level(slas: SlaTable) -> Self {
        Self::new("service_level", Tally::ServiceLevel(slas))
    }

    fn new(name: &'static str, tally: Tally) -> Self {
        Self {
            name,
            signature: Signature::user_defined(Volatility::Immutable),
            tally,
        }
    }
}

impl AggregateUDFImpl for TallyKpi {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        match self.tally {
            Tally::Csat | Tally::Nps => {
                arity(self.name, &format!("{}(score)", self.name), types, 1)?;
                Ok(vec![numeric_arg(self.name, "score", &types[0])?])
            }
            Tally::ServiceLevel(_) => {
                arity(
                    self.name,
                    "service_level(channel, wait_s, abandoned)",
                    types,
                    3,
                )?;
                Ok(vec![
                    text_arg(self.name, "channel", &types[0])?,
                    numeric_arg(self.name, "wait_s", &types[1])?,
                    boolean_arg(self.name, "abandoned", &types[2])?,
                ])
            }
        }
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(["n", "hit", "miss"]
            .iter()
            .map(|s| {
                Arc::new(Field::new(
                    format!("{}_{s}", self.name),
                    DataType::Int64,
                    false,
                ))
            })
            .collect())
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(TallyAccumulator {
            tally: self.tally.clone(),
            counts: [0; 3],
        }))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(TallyGroups {
            tally: self.tally.clone(),
            counts: Vec::new(),
        }))
    }
    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(None))
    }
    fn documentation(&self) -> Option<&Documentation> {
        static CSAT: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "% satisfied: 100 × count(score ≥ 4) / count(score) over 1–5 survey scores; NULL scores ignored, NULL on no scores.",
                "csat(score smallint) → double precision",
                "SELECT channel, csat(csat) FROM traces GROUP BY channel;",
                &[("score", "CSAT survey score, 1–5.")],
            )
        });
        static NPS: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "Net promoter score: 100 × (count(score ≥ 9) − count(score ≤ 6)) / count(score) over 0–10 scores; NULL scores ignored, NULL on no scores.",
                "nps(score smallint) → double precision",
                "SELECT life_stage, nps(nps) FROM traces GROUP BY life_stage;",
                &[("score", "NPS survey score, 0–10.")],
            )
        });
        static SERVICE_LEVEL: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "% of contacts answered within the channel's SLA (sla_seconds) among answered + abandoned contacts whose channel has an SLA and whose wait is known.",
                "service_level(channel text, wait_s integer, abandoned boolean) → double precision",
                "SELECT channel, service_level(channel, wait_s, abandoned) FROM traces GROUP BY 1;",
                &[
                    ("channel", "Channel token, for its SLA."),
                    ("wait_s", "Seconds before the company answered."),
                    (
                        "abandoned",
                        "The customer left before an answer (NULL = false).",
                    ),
                ],
            )
        });
        Some(match self.tally {
            Tally::Csat => &CSAT,
            Tally::Nps => &NPS,
            Tally::ServiceLevel(_) => &SERVICE_LEVEL,
        })
    }
}

#[derive(Debug)]
struct TallyAccumulator {
    tally: Tally,
    counts: [u64; 3],
}

impl Accumulator for TallyAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for code in self.tally.codes(values)? {
            add(&mut self.counts, code);
        }
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for (k, state) in states.iter().enumerate() {
            self.counts[k] += state
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .sum::<i64>() as u64;
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(self
            .counts
            .iter()
            .map(|&c| ScalarValue::Int64(Some(c as i64)))
            .collect())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.tally.value(self.counts)))
    }
    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// Per-group `[n, hit, miss]` counts.
struct TallyGroups {
    tally: Tally,
    counts: Vec<[u64; 3]>,
}

impl GroupsAccumulator for TallyGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.counts.resize(total_num_groups, [0; 3]);
        let codes = self.tally.codes(values)?;
        for (row, (&group, &code)) in group_indices.iter().zip(&codes).enumerate() {
            if passes(opt_filter, row) {
                add(&mut self.counts[group], code);
            }
        }
        Ok(())
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.counts.resize(total_num_groups, [0; 3]);
        let states: Vec<&Int64Array> = values
            .iter()
            .map(|v| v.as_primitive::<Int64Type>())
            .collect();
        for (row, &group) in group_indices.iter().enumerate() {
            for (k, state) in states.iter().enumerate() {
                self.counts[group][k] += state.value(row) as u64;
            }
        }
        Ok(())
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let counts = emit_to.take_needed(&mut self.counts);
        Ok(Arc::new(
            counts
                .into_iter()
                .map(|c| self.tally.value(c))
                .collect::<Float64Array>(),
        ))
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let counts = emit_to.take_needed(&mut self.counts);
        Ok(count_columns(&counts))
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let counts: Vec<[u64; 3]> = self
            .tally
            .codes(values)?
            .into_iter()
            .enumerate()
            .map(|(row, code)| {
                let mut c = [0; 3];
                if passes(opt_filter, row) {
                    add(&mut c, code);
                }
                c
            })
            .collect();
        Ok(count_columns(&counts))
    }
    fn size(&self) -> usize {
        self.counts.capacity() * size_of::<[u64; 3]>()
    }
}

/// The `[n, hit, miss]` state columns of per-group counts.
fn count_columns(counts: &[[u64; 3]]) -> Vec<ArrayRef> {
    (0..3)
        .map(|k| Arc::new(counts.iter().map(|c| c[k] as i64).collect::<Int64Array>()) as ArrayRef)
        .collect()
}

/// Whether `row` passes the aggregate's `FILTER (WHERE …)` clause, if any.
pub(crate) fn passes(filter: Option<&BooleanArray>, row: usize) -> bool {
    filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

/// `aht(handle_s)`: average handling time in seconds, NULLs ignored.
///
/// ```sql
/// SELECT channel, aht(handle_s) FROM traces GROUP BY channel;
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Aht {
    signature: Signature,
}

impl Default for Aht {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for Aht {
    fn name(&self) -> &str {
        "aht"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        arity("aht", "aht(handle_s)", types, 1)?;
        Ok(vec![numeric_arg("aht", "handle_s", &types[0])?])
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(sum_state_fields("aht"))
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SumAccumulator::new(Average)))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SumGroups::new(Average)))
    }
    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(None))
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "Average handling time in seconds (talk + hold + after-contact work); NULLs ignored, NULL on no input.",
                "aht(handle_s integer) → double precision",
                "SELECT channel, aht(handle_s) FROM traces GROUP BY channel;",
                &[("handle_s", "Handling time of the contact, seconds.")],
            )
        });
        Some(&DOC)
    }
}

/// Turns the rows of an aggregate's arguments into the terms it sums (NULL = skipped).
pub(crate) trait Terms: Send + Sync + 'static {
    /// The terms of one batch.
    fn terms(&self, args: &[ArrayRef]) -> Result<Float64Array>;
    /// The aggregate from the count and sum of terms.
    fn finish(&self, n: u64, sum: f64) -> Option<f64>;
}

/// `aht`: the terms are the handle times; the result their mean.
struct Average;

impl Terms for Average {
    fn terms(&self, args: &[ArrayRef]) -> Result<Float64Array> {
        Ok(args[0].as_primitive::<Float64Type>().clone())
    }
    fn finish(&self, n: u64, sum: f64) -> Option<f64> {
        (n > 0).then(|| sum / n as f64)
    }
}

/// State fields `(n, sum)` of a summing aggregate.
pub(crate) fn sum_state_fields(name: &str) -> Vec<FieldRef> {
    vec![
        Arc::new(Field::new(format!("{name}_n"), DataType::Int64, false)),
        Arc::new(Field::new(format!("{name}_sum"), DataType::Float64, false)),
    ]
}

/// Row accumulator of a summing aggregate.
pub(crate) struct SumAccumulator<T> {
    terms: T,
    n: u64,
    sum: f64,
}

impl<T> SumAccumulator<T> {
    pub(crate) fn new(terms: T) -> Self {
        Self {
            terms,
            n: 0,
            sum: 0.0,
        }
    }
}

impl<T> std::fmt::Debug for SumAccumulator<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SumAccumulator(n={}, sum={})", self.n, self.sum)
    }
}

impl<T: Terms> Accumulator for SumAccumulator<T> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for term in self.terms.terms(values)?.iter().flatten() {
            self.n += 1;
            self.sum += term;
        }
        Ok(())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.n += states[0]
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .sum::<i64>() as u64;
        self.sum += states[1]
            .as_primitive::<Float64Type>()
            .iter()
            .flatten()
            .sum::<f64>();
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Int64(Some(self.n as i64)),
            ScalarValue::Float64(Some(self.sum)),
        ])
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.terms.finish(self.n, self.sum)))
    }
    fn size(&self) -> usize {
        size_of_val(self)
    }
}

/// Groups accumulator of a summing aggregate: per-group count and sum of terms.
pub(crate) struct SumGroups<T> {
    terms: T,
    n: Vec<u64>,
    sum: Vec<f64>,
}

impl<T> SumGroups<T> {
    pub(crate) fn new(terms: T) -> Self {
        Self {
            terms,
            n: Vec::new(),
            sum: Vec::new(),
        }
    }
}

impl<T: Terms> GroupsAccumulator for SumGroups<T> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.n.resize(total_num_groups, 0);
        self.sum.resize(total_num_groups, 0.0);
        let terms = self.terms.terms(values)?;
        for (row, &group) in group_indices.iter().enumerate() {
            if terms.is_valid(row) && passes(opt_filter, row) {
                self.n[group] += 1;
                self.sum[group] += terms.value(row);
            }
        }
        Ok(())
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.n.resize(total_num_groups, 0);
        self.sum.resize(total_num_groups, 0.0);
        let n = values[0].as_primitive::<Int64Type>();
        let sum = values[1].as_primitive::<Float64Type>();
        for (row, &group) in group_indices.iter().enumerate() {
            self.n[group] += n.value(row) as u64;
            self.sum[group] += sum.value(row);
        }
        Ok(())
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = emit_to.take_needed(&mut self.n);
        let sum = emit_to.take_needed(&mut self.sum);
        Ok(Arc::new(
            n.into_iter()
                .zip(sum)
                .map(|(n, sum)| self.terms.finish(n, sum))
                .collect::<Float64Array>(),
        ))
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let n = emit_to.take_needed(&mut self.n);
        let sum = emit_to.take_needed(&mut self.sum);
        Ok(vec![
            Arc::new(n.into_iter().map(|n| n as i64).collect::<Int64Array>()),
            Arc::new(Float64Array::from(sum)),
        ])
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let terms = self.terms.terms(values)?;
        let kept = |row: usize| terms.is_valid(row) && passes(opt_filter, row);
        let n: Int64Array = (0..terms.len()).map(|row| i64::from(kept(row))).collect();
        let sum: Float64Array = (0..terms.len())
            .map(|row| if kept(row) { terms.value(row) } else { 0.0 })
            .collect();
        Ok(vec![Arc::new(n), Arc::new(sum)])
    }
    fn size(&self) -> usize {
        self.n.capacity() * 8 + self.sum.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(values: &[Option<f64>]) -> ArrayRef {
        Arc::new(Float64Array::from(values.to_vec()))
    }

    fn tally(t: &Tally, args: &[ArrayRef]) -> Option<f64> {
        let mut counts = [0; 3];
        for code in t.codes(args).unwrap() {
            add(&mut counts, code);
        }
        t.value(counts)
    }

    #[test]
    fn csat_is_share_of_four_and_five() {
        // 4, 5, 5 satisfied out of 5 scores, NULL ignored: 60 %
        let scores = floats(&[Some(1.0), Some(4.0), Some(5.0), None, Some(3.0), Some(5.0)]);
        assert_eq!(tally(&Tally::Csat, &[scores]), Some(60.0));
    }

    #[test]
    fn nps_is_promoters_minus_detractors() {
        // promoters 9, 10, 10; passives 7, 8; detractors 0, 6, 3 → (3 − 3) / 8 = 0
        let scores = floats(&[9.0, 10.0, 10.0, 7.0, 8.0, 0.0, 6.0, 3.0].map(Some));
        assert_eq!(tally(&Tally::Nps, &[scores]), Some(0.0));
        // 2 promoters, 1 detractor, 1 passive → 25
        let scores = floats(&[10.0, 9.0, 2.0, 8.0].map(Some));
        assert_eq!(tally(&Tally::Nps, &[scores]), Some(25.0));
    }

    #[test]
    fn kpis_are_null_without_input() {
        assert_eq!(tally(&Tally::Csat, &[floats(&[None, None])]), None);
        assert_eq!(tally(&Tally::Nps, &[floats(&[])]), None);
        assert_eq!(Average.finish(0, 0.0), None);
    }

    #[test]
    fn service_level_counts_answered_within_threshold_over_answered_and_abandoned() {
        use datafusion::arrow::array::StringArray;
        let channels: ArrayRef = Arc::new(StringArray::from(vec![
            "phone", "phone", "phone", "phone", "web", "chat",
        ]));
        let waits = floats(&[
            Some(30.0),
            Some(90.0),
            Some(200.0),
            Some(10.0),
            Some(5.0),
            None,
        ]);
        let abandoned: ArrayRef = Arc::new(BooleanArray::from(vec![
            Some(false),
            None,
            Some(false),
            Some(true),
            Some(false),
            Some(false),
        ]));
        // phone: 30 s and 90 s met; 200 s late; 10 s abandoned → 2 / 4; web has no SLA,
        // the chat wait is unknown
        let sl = Tally::ServiceLevel(SlaTable::default());
        assert_eq!(tally(&sl, &[channels, waits, abandoned]), Some(50.0));
    }

    #[test]
    fn sla_defaults_follow_nf_service() {
        let slas = SlaTable::default();
        assert_eq!(slas.seconds("phone"), Some(90));
        assert_eq!(slas.seconds("email"), Some(172_800));
        assert_eq!(slas.seconds("mail"), Some(1_728_000));
        assert_eq!(slas.seconds("web"), None);
    }

    #[test]
    fn grouped_and_row_tallies_agree() {
        let scores = floats(&[Some(5.0), Some(2.0), Some(4.0), None, Some(1.0)]);
        let mut groups = TallyGroups {
            tally: Tally::Csat,
            counts: Vec::new(),
        };
        groups
            .update_batch(&[scores], &[0, 1, 0, 1, 1], None, 2)
            .unwrap();
        let out = groups.evaluate(EmitTo::All).unwrap();
        let out = out.as_primitive::<Float64Type>();
        assert_eq!(out.value(0), 100.0);
        assert_eq!(out.value(1), 0.0);
    }
}
