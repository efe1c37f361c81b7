//! Hierarchy functions over category paths (`Delivery/Tracking/Parcel not received`):
//! `path_level`, `path_prefix`, `path_segment`, `path_is_under`, `path_child`
//! (SPEC §3.1). On dictionary-encoded input each runs once per distinct value and
//! re-uses the keys; `path_is_under(col, 'node')` simplifies to a predicate that
//! Parquet statistics can prune with.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int32Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, Like, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility, lit,
};

use crate::docs::function_doc;
use crate::text::{
    arity, gather, integer_arg, map_text, map_to_text, on_first_arg, plain_text, scalar_text,
    text_arg,
};

/// Number of segments of `p`; the root `''` has none.
pub fn level(p: &str) -> i32 {
    if p.is_empty() {
        0
    } else {
        p.bytes().filter(|&b| b == b'/').count() as i32 + 1
    }
}

/// The ancestor of `p` at level `n`: `p` itself when `n ≥ level`, the root `''`
/// when `n = 0`, none when `n < 0`.
pub fn prefix(p: &str, n: i64) -> Option<&str> {
    match n {
        n if n < 0 => None,
        0 => Some(""),
        n => match p.match_indices('/').nth((n - 1) as usize) {
            Some((end, _)) => Some(&p[..end]),
            None => Some(p),
        },
    }
}

/// The `n`-th segment of `p` (1-based); none past the end or when `n < 1`.
pub fn segment(p: &str, n: i64) -> Option<&str> {
    if n < 1 || p.is_empty() {
        return None;
    }
    p.split('/').nth((n - 1) as usize)
}

/// `p = node` or `p` starts with `node/`; every path is under the root `''`.
pub fn is_under(p: &str, node: &str) -> bool {
    node.is_empty()
        || (p.starts_with(node) && (p.len() == node.len() || p.as_bytes()[node.len()] == b'/'))
}

/// The child of `node` on the way to `p`; none unless `p` is strictly under `node`.
pub fn child<'a>(p: &'a str, node: &str) -> Option<&'a str> {
    let start = if node.is_empty() {
        0
    } else if p.len() > node.len() && p.starts_with(node) && p.as_bytes()[node.len()] == b'/' {
        node.len() + 1
    } else {
        return None;
    };
    if start >= p.len() {
        return None;
    }
    match p[start..].find('/') {
        Some(end) => Some(&p[..start + end]),
        None => Some(p),
    }
}

const SECTION: &str = "Hierarchy Functions";

/// `path_level(p text) → int`: number of segments.
///
/// ```sql
/// SELECT path_level('Delivery/Tracking/Parcel not received'); -- 3
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PathLevel {
    signature: Signature,
}

impl Default for PathLevel {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PathLevel {
    fn name(&self) -> &str {
        "path_level"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        arity(self.name(), "path_level(p)", types, 1)?;
        Ok(vec![text_arg(self.name(), "p", &types[0])?])
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        on_first_arg(&args.args[0], |p| match gather(p, &level)? {
            Some((levels, nulls)) => Ok(Arc::new(Int32Array::new(levels.into(), nulls))),
            None => map_text::<Int32Array, _, _>(p, &|p| Some(level(p))),
        })
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "Number of segments of a category path (0 for the root '').",
                "path_level(p text) → integer",
                "SELECT path_level('Delivery/Tracking/Parcel not received'); -- 3",
                &[("p", "Category path, segments joined by '/'.")],
            )
        });
        Some(&DOC)
    }
}

/// `path_prefix(p text, n int) → text`: the ancestor of `p` at level `n`.
///
/// ```sql
/// SELECT path_prefix('Delivery/Tracking/Parcel not received', 2); -- Delivery/Tracking
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PathPrefix {
    signature: Signature,
}

impl Default for PathPrefix {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PathPrefix {
    fn name(&self) -> &str {
        "path_prefix"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        arity(self.name(), "path_prefix(p, n)", types, 2)?;
        Ok(vec![
            text_arg(self.name(), "p", &types[0])?,
            integer_arg(self.name(), "n", &types[1])?,
        ])
    }
    fn return_type(&self, types: &[DataType]) -> Result<DataType> {
        Ok(text_result(&types[0]))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        with_level(&args, prefix)
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "The ancestor of a path at level n: the path itself when n ≥ its level, the root '' when n = 0, NULL when n < 0.",
                "path_prefix(p text, n integer) → text",
                "SELECT path_prefix('Delivery/Tracking/Parcel not received', 2); -- Delivery/Tracking",
                &[
                    ("p", "Category path."),
                    ("n", "Level of the ancestor (0 = root)."),
                ],
            )
        });
        Some(&DOC)
    }
}

/// `path_segment(p text, n int) → text`: the `n`-th segment (1-based).
///
/// ```sql
/// SELECT path_segment('Delivery/Tracking/Parcel not received', 2); -- Tracking
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PathSegment {
    signature: Signature,
}

impl Default for PathSegment {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PathSegment {
    fn name(&self) -> &str {
        "path_segment"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        arity(self.name(), "path_segment(p, n)", types, 2)?;
        Ok(vec![
            text_arg(self.name(), "p", &types[0])?,
            integer_arg(self.name(), "n", &types[1])?,
        ])
    }
    fn return_type(&self, types: &[DataType]) -> Result<DataType> {
        Ok(text_result(&types[0]))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        with_level(&args, segment)
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "The n-th segment of a path (1-based); NULL past the end or when n < 1.",
                "path_segment(p text, n integer) → text",
                "SELECT path_segment('Delivery/Tracking/Parcel not received', 2); -- Tracking",
                &[("p", "Category path."), ("n", "Segment number, from 1.")],
            )
        });
        Some(&DOC)
    }
}

/// `path_is_under(p text, node text) → boolean`: `p = node` or `p` starts with
/// `node/`; every path is under the root `''`.
///
/// ```sql
/// SELECT count(*) FROM traces WHERE path_is_under(declaration, 'Delivery');
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PathIsUnder {
    signature: Signature,
}

impl Default for PathIsUnder {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PathIsUnder {
    fn name(&self) -> &str {
        "path_is_under"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        arity(self.name(), "path_is_under(p, node)", types, 2)?;
        Ok(vec![
            text_arg(self.name(), "p", &types[0])?,
            text_arg(self.name(), "node", &types[1])?,
        ])
    }
    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        with_node(
            self.name(),
            &args,
            |p, node| Some(is_under(p, node)),
            |p, node| map_text::<BooleanArray, _, _>(p, &|p| Some(is_under(p, node))),
        )
    }

    /// `path_is_under(col, 'A/B')` ⇒ `col = 'A/B' OR col LIKE 'A/B/%'`: the same
    /// truth value (NULL for NULL), and a form Parquet row-group statistics prune.
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let Expr::Literal(node, _) = &args[1] else {
            return Ok(ExprSimplifyResult::Original(args));
        };
        let Some(Some(node)) = node.try_as_str() else {
            return Ok(ExprSimplifyResult::Original(args));
        };
        let literal = |text: String| match info.get_data_type(&args[0]) {
            Ok(DataType::Utf8View) => Some(lit(ScalarValue::Utf8View(Some(text)))),
            Ok(DataType::LargeUtf8) => Some(lit(ScalarValue::LargeUtf8(Some(text)))),
            Ok(DataType::Utf8) => Some(lit(ScalarValue::Utf8(Some(text)))),
            _ => None,
        };
        if node.is_empty() {
            return Ok(ExprSimplifyResult::Original(args));
        }
        let escaped = node
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let (Some(equal), Some(pattern)) =
            (literal(node.to_string()), literal(format!("{escaped}/%")))
        else {
            return Ok(ExprSimplifyResult::Original(args));
        };
        let path = args[0].clone();
        let like = Expr::Like(Like::new(
            false,
            Box::new(path.clone()),
            Box::new(pattern),
            None,
            false,
        ));
        Ok(ExprSimplifyResult::Simplified(path.eq(equal).or(like)))
    }

    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "True when a path is the node or lies under it (every path is under the root ''). With a literal node it becomes a prefix predicate that prunes Parquet row groups.",
                "path_is_under(p text, node text) → boolean",
                "SELECT count(*) FROM traces WHERE path_is_under(declaration, 'Delivery');",
                &[
                    ("p", "Category path."),
                    ("node", "Node of the same tree ('' = root)."),
                ],
            )
        });
        Some(&DOC)
    }
}

/// `path_child(p text, node text) → text`: the child of `node` on the way to `p`.
///
/// ```sql
/// SELECT path_child(declaration, 'Delivery') AS child, count(*) FROM traces
/// WHERE path_is_under(declaration, 'Delivery') GROUP BY 1;
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PathChild {
    signature: Signature,
}

impl Default for PathChild {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PathChild {
    fn name(&self) -> &str {
        "path_child"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        arity(self.name(), "path_child(p, node)", types, 2)?;
        Ok(vec![
            text_arg(self.name(), "p", &types[0])?,
            text_arg(self.name(), "node", &types[1])?,
        ])
    }
    fn return_type(&self, types: &[DataType]) -> Result<DataType> {
        Ok(text_result(&types[0]))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let out_type = args.return_field.data_type().clone();
        with_node(
            self.name(),
            &args,
            |p, node| child(p, node).map(str::to_string),
            |p, node| map_to_text(p, &|p| child(p, node)),
        )
        .and_then(|v| match v {
            // the row-by-row path builds `Utf8`; give back the declared type
            ColumnarValue::Array(a) if a.data_type() != &out_type => {
                Ok(ColumnarValue::Array(cast(&a, &out_type)?))
            }
            other => Ok(other),
        })
    }
    fn documentation(&self) -> Option<&Documentation> {
        static DOC: LazyLock<Documentation> = LazyLock::new(|| {
            function_doc(
                SECTION,
                "The child of a node on the way to a path: path_child('A/B/C', 'A') = 'A/B', path_child('A/B/C', '') = 'A'; NULL when the path is not strictly under the node.",
                "path_child(p text, node text) → text",
                "SELECT path_child(declaration, 'Delivery') AS child, count(*) FROM traces WHERE path_is_under(declaration, 'Delivery') GROUP BY 1;",
                &[
                    ("p", "Category path."),
                    ("node", "Node of the same tree ('' = root)."),
                ],
            )
        });
        Some(&DOC)
    }
}

/// Text results have the type of the path argument (a dictionary keeps its keys).
fn text_result(path_type: &DataType) -> DataType {
    match path_type {
        DataType::Null => DataType::Utf8,
        other => other.clone(),
    }
}

/// Runs a `(path, level)` function: with a scalar level, over the path array (once
/// per dictionary value); with a level per row, row by row.
fn with_level(
    args: &ScalarFunctionArgs,
    f: fn(&str, i64) -> Option<&str>,
) -> Result<ColumnarValue> {
    let out_type = args.return_field.data_type();
    match &args.args[1] {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n))) => {
            let n = *n;
            on_first_arg(&args.args[0], |p| map_to_text(p, &|p| f(p, n)))
        }
        ColumnarValue::Scalar(_) => Ok(ColumnarValue::Scalar(ScalarValue::try_from(out_type)?)),
        ColumnarValue::Array(levels) => {
            let paths = plain_text(&args.args[0].to_array(args.number_rows)?)?;
            let levels = levels.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let out: StringArray = paths
                .iter()
                .zip(levels.iter())
                .map(|(p, n)| f(p?, n?))
                .collect();
            Ok(ColumnarValue::Array(cast(&out, out_type)?))
        }
    }
}

/// Runs a `(path, node)` function: with a scalar node through `fast` (once per
/// dictionary value), with a node per row through `row`.
fn with_node<T, R, F>(
    name: &str,
    args: &ScalarFunctionArgs,
    row: R,
    fast: F,
) -> Result<ColumnarValue>
where
    R: Fn(&str, &str) -> Option<T>,
    F: Fn(&dyn Array, &str) -> Result<ArrayRef>,
    ArrayRef: FromRows<T>,
{
    match &args.args[1] {
        ColumnarValue::Scalar(node) => match scalar_text(name, "node", node)? {
            Some(node) => on_first_arg(&args.args[0], |p| fast(p, node)),
            None => Ok(ColumnarValue::Scalar(ScalarValue::try_from(
                args.return_field.data_type(),
            )?)),
        },
        ColumnarValue::Array(nodes) => {
            let paths = plain_text(&args.args[0].to_array(args.number_rows)?)?;
            let nodes = plain_text(nodes)?;
            let rows = paths
                .iter()
                .zip(nodes.iter())
                .map(|(p, node)| row(p?, node?));
            Ok(ColumnarValue::Array(ArrayRef::from_rows(rows)))
        }
    }
}

/// Builds an array from row results (the general, row-by-row path).
trait FromRows<T> {
    fn from_rows(rows: impl Iterator<Item = Option<T>>) -> Self;
}

impl FromRows<bool> for ArrayRef {
    fn from_rows(rows: impl Iterator<Item = Option<bool>>) -> Self {
        Arc::new(rows.collect::<BooleanArray>())
    }
}

impl FromRows<String> for ArrayRef {
    fn from_rows(rows: impl Iterator<Item = Option<String>>) -> Self {
        Arc::new(rows.collect::<StringArray>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_counts_segments_and_root_has_none() {
        assert_eq!(level("A/B/C"), 3);
        assert_eq!(level("A"), 1);
        assert_eq!(level(""), 0);
    }

    #[test]
    fn prefix_follows_the_spec_edges() {
        assert_eq!(prefix("A/B/C", 0), Some(""));
        assert_eq!(prefix("A/B/C", 1), Some("A"));
        assert_eq!(prefix("A/B/C", 2), Some("A/B"));
        assert_eq!(prefix("A/B/C", 3), Some("A/B/C"));
        assert_eq!(prefix("A/B/C", 9), Some("A/B/C"));
        assert_eq!(prefix("A/B/C", -1), None);
        assert_eq!(prefix("", 2), Some(""));
    }

    #[test]
    fn segment_is_one_based_and_null_past_the_end() {
        assert_eq!(segment("A/B/C", 1), Some("A"));
        assert_eq!(segment("A/B/C", 3), Some("C"));
        assert_eq!(segment("A/B/C", 4), None);
        assert_eq!(segment("A/B/C", 0), None);
        assert_eq!(segment("", 1), None);
    }

    #[test]
    fn is_under_needs_a_whole_segment() {
        assert!(is_under("A/B", "A"));
        assert!(is_under("A", "A"));
        assert!(is_under("A/B", ""));
        assert!(is_under("", ""));
        assert!(!is_under("AB/C", "A"));
        assert!(!is_under("A", "A/B"));
    }

    #[test]
    fn child_is_the_next_step_towards_the_path() {
        assert_eq!(child("A/B/C", "A"), Some("A/B"));
        assert_eq!(child("A/B/C", ""), Some("A"));
        assert_eq!(child("A/B/C", "A/B"), Some("A/B/C"));
        assert_eq!(child("A/B/C", "A/B/C"), None);
        assert_eq!(child("AB/C", "A"), None);
        assert_eq!(child("", ""), None);
    }
}
