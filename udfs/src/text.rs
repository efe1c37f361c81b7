//! Array helpers shared by the functions: map every string of a text array
//! (`Utf8`, `LargeUtf8`, `Utf8View` or a dictionary of them), computing once per
//! distinct dictionary value, and argument-type checks with clear planning errors.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, LargeStringArray, StringArray, StringViewArray,
    downcast_integer_array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::ArrowNativeType;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::ColumnarValue;

/// True for the text types the functions accept as they are.
fn is_plain_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Checks that `t` is text (plain or dictionary-encoded) and returns the type the
/// argument is used as: unchanged, so that dictionaries reach the fast path; an
/// untyped NULL becomes `Utf8`.
pub(crate) fn text_arg(function: &str, arg: &str, t: &DataType) -> Result<DataType> {
    match t {
        t if is_plain_text(t) => Ok(t.clone()),
        DataType::Dictionary(_, v) if is_plain_text(v) => Ok(t.clone()),
        DataType::Null => Ok(DataType::Utf8),
        other => plan_err!("{function}: argument `{arg}` must be text, got {other}"),
    }
}

/// Checks that `t` is an integer (or NULL); it is used as `Int64`.
pub(crate) fn integer_arg(function: &str, arg: &str, t: &DataType) -> Result<DataType> {
    if t.is_integer() || t.is_null() {
        Ok(DataType::Int64)
    } else {
        plan_err!("{function}: argument `{arg}` must be an integer, got {t}")
    }
}

/// Checks that `t` is numeric (or NULL); it is used as `Float64`.
pub(crate) fn numeric_arg(function: &str, arg: &str, t: &DataType) -> Result<DataType> {
    if t.is_numeric() || t.is_null() {
        Ok(DataType::Float64)
    } else {
        plan_err!("{function}: argument `{arg}` must be a number, got {t}")
    }
}

/// Checks that `t` is boolean (or NULL).
pub(crate) fn boolean_arg(function: &str, arg: &str, t: &DataType) -> Result<DataType> {
    match t {
        DataType::Boolean | DataType::Null => Ok(DataType::Boolean),
        other => plan_err!("{function}: argument `{arg}` must be a boolean, got {other}"),
    }
}

/// Fails unless exactly `expected` arguments were given; `syntax` is shown.
pub(crate) fn arity(
    function: &str,
    syntax: &str,
    types: &[DataType],
    expected: usize,
) -> Result<()> {
    if types.len() == expected {
        Ok(())
    } else {
        plan_err!(
            "{function} takes {expected} argument{}, got {}: use {syntax}",
            if expected == 1 { "" } else { "s" },
            types.len()
        )
    }
}

/// Maps every string of `array` to a string of the same array type (a dictionary
/// keeps its keys: `f` runs once per dictionary value). NULL stays NULL.
pub(crate) fn map_to_text<F>(array: &dyn Array, f: &F) -> Result<ArrayRef>
where
    F: Fn(&str) -> Option<&str>,
{
    Ok(match array.data_type() {
        DataType::Utf8 => Arc::new(
            array
                .as_string::<i32>()
                .iter()
                .map(|v| v.and_then(f))
                .collect::<StringArray>(),
        ),
        DataType::LargeUtf8 => Arc::new(
            array
                .as_string::<i64>()
                .iter()
                .map(|v| v.and_then(f))
                .collect::<LargeStringArray>(),
        ),
        DataType::Utf8View => Arc::new(
            array
                .as_string_view()
                .iter()
                .map(|v| v.and_then(f))
                .collect::<StringViewArray>(),
        ),
        DataType::Dictionary(_, _) => {
            let dictionary = array.as_any_dictionary();
            dictionary.with_values(map_to_text(dictionary.values().as_ref(), f)?)
        }
        other => return exec_err!("expected a text array, got {other}"),
    })
}

/// Maps every string of `array` to a value collected into `C` (a primitive or
/// boolean array). For a dictionary, `f` runs once per dictionary value and the
/// result is gathered through the keys. NULL stays NULL.
pub(crate) fn map_text<C, V, F>(array: &dyn Array, f: &F) -> Result<ArrayRef>
where
    C: FromIterator<Option<V>> + Array + 'static,
    F: Fn(&str) -> Option<V>,
{
    Ok(match array.data_type() {
        DataType::Utf8 => Arc::new(
            array
                .as_string::<i32>()
                .iter()
                .map(|v| v.and_then(f))
                .collect::<C>(),
        ),
        DataType::LargeUtf8 => Arc::new(
            array
                .as_string::<i64>()
                .iter()
                .map(|v| v.and_then(f))
                .collect::<C>(),
        ),
        DataType::Utf8View => Arc::new(
            array
                .as_string_view()
                .iter()
                .map(|v| v.and_then(f))
                .collect::<C>(),
        ),
        DataType::Dictionary(_, _) => {
            let dictionary = array.as_any_dictionary();
            let values = map_text::<C, V, F>(dictionary.values().as_ref(), f)?;
            take(values.as_ref(), dictionary.keys(), None)?
        }
        other => return exec_err!("expected a text array, got {other}"),
    })
}

/// For a dictionary array: `f` once per dictionary value, gathered per row through
/// the keys in one tight loop, with the rows' validity (a NULL key or value is
/// invalid; its slot holds `V::default()`). `None` when `array` is not a dictionary.
pub(crate) fn gather<V, F>(array: &dyn Array, f: &F) -> Result<Option<(Vec<V>, Option<NullBuffer>)>>
where
    V: Copy + Default,
    F: Fn(&str) -> V,
{
    let Some(dictionary) = array.as_any_dictionary_opt() else {
        return Ok(None);
    };
    let values = plain_text(dictionary.values())?;
    let table: Vec<V> = values.iter().map(|v| v.map_or(V::default(), f)).collect();
    let keys = dictionary.keys();
    let per_row: Vec<V> = downcast_integer_array!(
        keys => keys
            .values()
            .iter()
            .map(|k| table.get(k.as_usize()).copied().unwrap_or_default())
            .collect(),
        other => return exec_err!("unsupported dictionary key type {other}")
    );
    let nulls = if values.null_count() == 0 {
        keys.nulls().cloned()
    } else {
        let valid: Vec<bool> = downcast_integer_array!(
            keys => keys
                .iter()
                .map(|k| k.is_some_and(|k| values.is_valid(k.as_usize())))
                .collect(),
            other => return exec_err!("unsupported dictionary key type {other}")
        );
        Some(NullBuffer::from(valid))
    };
    Ok(Some((per_row, nulls)))
}

/// `array` as a plain `Utf8` array, for the general (row by row) paths.
pub(crate) fn plain_text(array: &ArrayRef) -> Result<StringArray> {
    let utf8 = if array.data_type() == &DataType::Utf8 {
        Arc::clone(array)
    } else {
        cast(array, &DataType::Utf8)?
    };
    Ok(utf8.as_string::<i32>().clone())
}

/// The text of a scalar argument (`None` for NULL), or an error naming the argument.
pub(crate) fn scalar_text<'a>(
    function: &str,
    arg: &str,
    value: &'a ScalarValue,
) -> Result<Option<&'a str>> {
    match value.try_as_str() {
        Some(text) => Ok(text),
        None if value.is_null() => Ok(None),
        None => exec_err!(
            "{function}: argument `{arg}` must be text, got {}",
            value.data_type()
        ),
    }
}

/// Runs `f` over the first argument as an array; a scalar comes back as a scalar.
pub(crate) fn on_first_arg(
    first: &ColumnarValue,
    f: impl Fn(&dyn Array) -> Result<ArrayRef>,
) -> Result<ColumnarValue> {
    match first {
        ColumnarValue::Array(array) => Ok(ColumnarValue::Array(f(array.as_ref())?)),
        ColumnarValue::Scalar(scalar) => {
            let out = f(scalar.to_array_of_size(1)?.as_ref())?;
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        }
    }
}
