//! Weighted impact (SPEC §3.3): expert weights per axis value, inherited down the
//! hierarchies; the `impact_weight` scalar and the `impact` aggregate.
//!
//! The weights live in a [`WeightsHandle`] that the engine swaps when
//! `impact_weights` changes. Each query binds the snapshot current when it is
//! planned (in `simplify`), so all its batches see the same weights, and weights
//! are resolved once per distinct dictionary value, never per row of a dictionary.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::function::{
    AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs,
};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Documentation, Expr,
    GroupsAccumulator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::docs::function_doc;
use crate::kpi::{SumAccumulator, SumGroups, Terms, sum_state_fields};
use crate::text::{arity, gather, map_text, numeric_arg, scalar_text, text_arg};

/// The five weighted axes, in the argument order of `impact_weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    /// What the customer declared (a hierarchy).
    Declaration,
    /// What the company diagnosed (a hierarchy).
    Qualification,
    /// What the company did (a hierarchy).
    Action,
    /// The contact channel.
    Channel,
    /// The contact category.
    Category,
}

impl Axis {
    /// All axes, in argument order.
    pub const ALL: [Axis; 5] = [
        Axis::Declaration,
        Axis::Qualification,
        Axis::Action,
        Axis::Channel,
        Axis::Category,
    ];

    /// The name used in `impact_weights.axis`.
    pub fn name(self) -> &'static str {
        match self {
            Axis::Declaration => "declaration",
            Axis::Qualification => "qualification",
            Axis::Action => "action",
            Axis::Channel => "channel",
            Axis::Category => "category",
        }
    }

    /// The axis called `name`, if any.
    pub fn parse(name: &str) -> Option<Axis> {
        Axis::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether keys are paths whose weights are inherited by descendants.
    pub fn is_hierarchy(self) -> bool {
        matches!(self, Axis::Declaration | Axis::Qualification | Axis::Action)
    }
}

/// A snapshot of the expert weights.
#[derive(Debug, Default)]
pub struct ImpactWeights {
    version: u64,
    axes: [HashMap<String, f64>; 5],
}

static VERSIONS: AtomicU64 = AtomicU64::new(1);

impl ImpactWeights {
    /// Weights from `(axis, key, weight)` entries.
    pub fn new(entries: impl IntoIterator<Item = (Axis, String, f64)>) -> Self {
        let mut axes: [HashMap<String, f64>; 5] = Default::default();
        for (axis, key, weight) in entries {
            axes[axis as usize].insert(key, weight);
        }
        Self {
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
            axes,
        }
    }

    /// The weight of `key` on `axis`: for a hierarchy that of its deepest
    /// ancestor-or-self that has one (the root `''` included), else 1.0.
    pub fn weight(&self, axis: Axis, key: &str) -> f64 {
        let weights = &self.axes[axis as usize];
        if weights.is_empty() {
            return 1.0;
        }
        if !axis.is_hierarchy() {
            return weights.get(key).copied().unwrap_or(1.0);
        }
        let mut node = key;
        loop {
            if let Some(w) = weights.get(node) {
                return *w;
            }
            if node.is_empty() {
                return 1.0;
            }
            node = node.rfind('/').map_or("", |end| &node[..end]);
        }
    }

    /// Per row, the product of the inherited weights of `columns`. A NULL key
    /// weighs 1.0; an axis without weights is not even read; a dictionary column is
    /// resolved once per distinct value.
    pub fn row_weights(&self, columns: &[(Axis, ArrayRef)], rows: usize) -> Result<Float64Array> {
        let mut product = vec![1.0; rows];
        for &(axis, ref column) in columns {
            if self.axes[axis as usize].is_empty() {
                continue;
            }
            if let Some((weights, nulls)) = gather(column.as_ref(), &|key| self.weight(axis, key))?
            {
                // a NULL key weighs 1.0
                match nulls {
                    None => product.iter_mut().zip(&weights).for_each(|(p, w)| *p *= w),
                    Some(nulls) => {
                        for ((p, w), valid) in product.iter_mut().zip(&weights).zip(nulls.iter()) {
                            if valid {
                                *p *= w;
                            }
                        }
                    }
                }
                continue;
            }
            let weights = map_text::<Float64Array, _, _>(column.as_ref(), &|key| {
                Some(self.weight(axis, key))
            })?;
            let weights = weights.as_primitive::<Float64Type>();
            for (row, p) in product.iter_mut().enumerate() {
                if weights.is_valid(row) {
                    *p *= weights.value(row);
                }
            }
        }
        Ok(Float64Array::from(product))
    }
}

/// The current weights, swapped by the engine when `impact_weights` changes.
#[derive(Debug, Default)]
pub struct WeightsHandle(RwLock<Arc<ImpactWeights>>);

impl WeightsHandle {
    /// A handle holding `weights`.
    pub fn new(weights: ImpactWeights) -> Self {
        Self(RwLock::new(Arc::new(weights)))
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<ImpactWeights> {
        Arc::clone(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes `weights` current for every query planned from now on.
    pub fn replace(&self, weights: ImpactWeights) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(weights);
    }
}

/// Where a function instance takes its weights from.
#[derive(Debug, Clone)]
enum Source {
    /// The handle: registered instances, bound at planning.
    Live(Arc<WeightsHandle>),
    /// One snapshot: the instance a planned query runs with.
    Bound(Arc<ImpactWeights>),
}

impl Source {
    fn current(&self) -> Arc<ImpactWeights> {
        match self {
            Source::Live(handle) => handle.current(),
            Source::Bound(weights) => Arc::clone(weights),
        }
    }
    fn key(&self) -> (usize, u64) {
        match self {
            Source::Live(handle) => (Arc::as_ptr(handle) as usize, 0),
            Source::Bound(weights) => (0, weights.version),
        }
    }
}

impl PartialEq for Source {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Source {}

impl Hash for Source {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

const SECTION: &str = "Impact Functions";
const ARGS: [&str; 5] = [
    "declaration",
    "qualification",
    "action",
    "channel",
    "category",
];

fn coerce_axes(
    function: &str,
    syntax: &str,
    types: &[DataType],
    extra: usize,
) -> Result<Vec<DataType>> {
    arity(function, syntax, types, 5 + extra)?;
    ARGS.iter()
        .zip(types)
        .map(|(arg, t)| text_arg(function, arg, t))
        .collect()
}

/// `impact_weight(declaration, qualification, action, channel, category) → double`:
/// the product of the five inherited weights of `impact_weights`.
///
/// ```sql
/// SELECT impact_weight(declaration, qualification, action, channel, category) FROM traces LIMIT 3;
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ImpactWeight {
    signature: Signature,
    source: Source,
}

impl ImpactWeight {
    /// The function reading the weights of `handle`.
    pub fn new(handle: Arc<WeightsHandle>) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Stable),
            source: Source::Live(handle),
        }
    }
}

impl ScalarUDFImpl for ImpactWeight {
    fn name(&self) -> &str {
        "impact_weight"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_axes(
            self.name(),
            "impact_weight(declaration, qualification, action, channel, category)",
            types,
            0,
        )
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let weights = self.source.current();
        // a constant argument weighs the same on every row: resolved once
        let mut constant = 1.0;
        let mut columns = Vec::new();
        for (axis, arg) in Axis::ALL.into_iter().zip(&args.args) {
            match arg {
                ColumnarValue::Scalar(key) => {
                    if let Some(key) = scalar_text(self.name(), axis.name(), key)? {
                        constant *= weights.weight(axis, key);
                    }
                }
                ColumnarValue::Array(column) => columns.push((axis, Arc::clone(column))),
            }
        }
        if columns.is_empty() {
            return Ok(ColumnarValue::Scalar(ScalarValue::Float64(Some(constant))));
        }
        let per_row = weights.row_weights(&columns, args.number_rows)?;
        Ok(ColumnarValue::Array(if constant == 1.0 {
            Arc::new(per_row)
        } else {
            Arc::new(per_row.unary::<_, Float64Type>(|w| w * constant))
        }))
    }
    /// Binds the weights current at planning, so one query sees one snapshot.
    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let Source::Live(handle) = &self.source else {
            return Ok(ExprSimplifyResult::Original(args));
        };
        let bound = Self {
            signature: self.signature.clone(),
            source: Source::Bound(handle.current()),
        };
        let udf = Arc::new(ScalarUDF::new_from_impl(bound));
        Ok(ExprSimplifyResult::Simplified(Expr::ScalarFunction(
            ScalarFunction::new_udf(udf, args),
        )))
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "Product of the five weights of impact_weights; a path inherits the weight of its deepest weighted ancestor-or-self, anything unweighted (or NULL) weighs 1.0.",
                "impact_weight(declaration text, qualification text, action text, channel text, category text) → double precision",
                "SELECT impact_weight(declaration, qualification, action, channel, category) FROM traces LIMIT 3;",
                &[
                    ("declaration", "Declaration path."),
                    ("qualification", "Qualification path."),
                    ("action", "Action path."),
                    ("channel", "Channel token."),
                    ("category", "Contact category."),
                ],
            )
        });
        Some(&DOC)
    }
}

/// `impact(declaration, qualification, action, channel, category, effort) → double`:
/// Σ `impact_weight(…) × effort`.
///
/// ```sql
/// SELECT declaration, impact(declaration, qualification, action, channel, category, effort) AS impact
/// FROM traces GROUP BY 1 ORDER BY 2 DESC LIMIT 20;
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Impact {
    signature: Signature,
    source: Source,
}

impl Impact {
    /// The aggregate reading the weights of `handle`.
    pub fn new(handle: Arc<WeightsHandle>) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Stable),
            source: Source::Live(handle),
        }
    }
}

/// The terms of `impact`: weight × effort, NULL when the effort is.
struct WeightedEffort(Arc<ImpactWeights>);

impl Terms for WeightedEffort {
    fn terms(&self, args: &[ArrayRef]) -> Result<Float64Array> {
        let effort = args[5].as_primitive::<Float64Type>();
        let columns: Vec<(Axis, ArrayRef)> =
            Axis::ALL.into_iter().zip(args.iter().cloned()).collect();
        let weights = self.0.row_weights(&columns, effort.len())?;
        Ok(weights
            .values()
            .iter()
            .zip(effort.iter())
            .map(|(w, e)| e.map(|e| w * e))
            .collect())
    }
    fn finish(&self, n: u64, sum: f64) -> Option<f64> {
        (n > 0).then_some(sum)
    }
}

impl AggregateUDFImpl for Impact {
    fn name(&self) -> &str {
        "impact"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let syntax = "impact(declaration, qualification, action, channel, category, effort)";
        let mut coerced = coerce_axes(self.name(), syntax, types, 1)?;
        coerced.push(numeric_arg(self.name(), "effort", &types[5])?);
        Ok(coerced)
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(sum_state_fields("impact"))
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SumAccumulator::new(WeightedEffort(
            self.source.current(),
        ))))
    }
    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SumGroups::new(WeightedEffort(
            self.source.current(),
        ))))
    }
    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(None))
    }
    /// Binds the weights current at planning, so one query sees one snapshot.
    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        let Source::Live(handle) = &self.source else {
            return None;
        };
        let bound = Self {
            signature: self.signature.clone(),
            source: Source::Bound(handle.current()),
        };
        let udaf = Arc::new(AggregateUDF::new_from_impl(bound));
        Some(Box::new(move |mut call: AggregateFunction, _info| {
            call.func = Arc::clone(&udaf);
            Ok(Expr::AggregateFunction(call))
        }))
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "Weighted impact: Σ impact_weight(declaration, qualification, action, channel, category) × effort, where effort = cost × pain; NULL on no input.",
                "impact(declaration text, qualification text, action text, channel text, category text, effort double precision) → double precision",
                "SELECT declaration, impact(declaration, qualification, action, channel, category, effort) AS impact FROM traces GROUP BY 1 ORDER BY 2 DESC LIMIT 20;",
                &[
                    ("declaration", "Declaration path."),
                    ("qualification", "Qualification path."),
                    ("action", "Action path."),
                    ("channel", "Channel token."),
                    ("category", "Contact category."),
                    ("effort", "Per-contact effort (cost × pain)."),
                ],
            )
        });
        Some(&DOC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    fn weights() -> ImpactWeights {
        ImpactWeights::new([
            (Axis::Declaration, "Delivery".to_string(), 2.0),
            (
                Axis::Declaration,
                "Delivery/Tracking/Parcel not received".to_string(),
                3.0,
            ),
            (Axis::Category, "avoidable".to_string(), 1.5),
        ])
    }

    #[test]
    fn weights_are_inherited_from_the_deepest_weighted_ancestor() {
        let w = weights();
        assert_eq!(w.weight(Axis::Declaration, "Delivery"), 2.0);
        assert_eq!(w.weight(Axis::Declaration, "Delivery/Tracking"), 2.0);
        assert_eq!(
            w.weight(Axis::Declaration, "Delivery/Tracking/Parcel not received"),
            3.0
        );
        assert_eq!(w.weight(Axis::Declaration, "Deliveryman"), 1.0);
        assert_eq!(w.weight(Axis::Declaration, "Payment/Refund"), 1.0);
        assert_eq!(w.weight(Axis::Category, "avoidable"), 1.5);
        assert_eq!(w.weight(Axis::Category, "help"), 1.0);
    }

    #[test]
    fn a_root_weight_applies_to_every_path_of_the_axis() {
        let w = ImpactWeights::new([(Axis::Action, String::new(), 0.5)]);
        assert_eq!(w.weight(Axis::Action, "Refund/Full"), 0.5);
        assert_eq!(w.weight(Axis::Declaration, "Refund/Full"), 1.0);
    }

    #[test]
    fn row_weights_multiply_the_axes_and_null_weighs_one() {
        let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
        let columns: Vec<(Axis, ArrayRef)> = Axis::ALL
            .into_iter()
            .zip([
                text(vec![Some("Delivery/Tracking"), Some("Payment"), None]),
                text(vec![None, None, None]),
                text(vec![None, None, None]),
                text(vec![Some("phone"), Some("phone"), Some("web")]),
                text(vec![Some("avoidable"), None, Some("avoidable")]),
            ])
            .collect();
        let out = weights().row_weights(&columns, 3).unwrap();
        assert_eq!(out.values().to_vec(), vec![3.0, 1.0, 1.5]);
    }
}
