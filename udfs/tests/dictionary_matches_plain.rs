//! Property test: the dictionary fast path (once per distinct value, keys re-used)
//! gives exactly the results of the plain per-row path, for every path function and
//! `impact_weight`, on random paths with NULLs, roots and repeated values.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, DictionaryArray, StringArray, StringViewArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use proptest::prelude::*;
use tracecube_udfs::{Axis, Functions, ImpactWeights, SlaTable, WeightsHandle};

fn functions() -> Functions {
    let weights = ImpactWeights::new([
        (Axis::Declaration, "A".to_string(), 2.0),
        (Axis::Declaration, "A/B/C".to_string(), 0.5),
        (Axis::Qualification, "B".to_string(), 3.0),
        (Axis::Channel, "phone".to_string(), 1.5),
        (Axis::Category, "avoidable".to_string(), 2.0),
    ]);
    Functions::new(SlaTable::default(), Arc::new(WeightsHandle::new(weights)))
}

/// Calls `f` on `args` as a query would, and returns the result as a plain array.
fn call(f: &ScalarUDF, args: Vec<ColumnarValue>, rows: usize) -> ArrayRef {
    let arg_fields: Vec<_> = args
        .iter()
        .enumerate()
        .map(|(i, a)| Arc::new(Field::new(format!("a{i}"), a.data_type(), true)))
        .collect();
    let types: Vec<DataType> = args.iter().map(|a| a.data_type()).collect();
    let return_type = f.return_type(&types).unwrap();
    let out = f
        .invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("out", return_type, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
        .unwrap()
        .into_array(rows)
        .unwrap();
    match out.data_type() {
        DataType::Dictionary(_, _) | DataType::Utf8View | DataType::LargeUtf8 => {
            cast(&out, &DataType::Utf8).unwrap()
        }
        _ => out,
    }
}

fn path() -> impl Strategy<Value = Option<String>> {
    let segment = prop::sample::select(vec!["A", "B", "C", "AB", "x y"]);
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(String::new())),
        8 => prop::collection::vec(segment, 1..=4).prop_map(|s| Some(s.join("/"))),
    ]
}

fn encodings(values: &[Option<String>]) -> Vec<ArrayRef> {
    let refs: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
    vec![
        Arc::new(StringArray::from(refs.clone())),
        Arc::new(StringViewArray::from(refs.clone())),
        Arc::new(refs.iter().copied().collect::<DictionaryArray<Int32Type>>()),
    ]
}

proptest! {
    #[test]
    fn path_functions_agree_on_every_encoding(
        paths in prop::collection::vec(path(), 0..200),
        n in -1i64..6,
        node in prop::sample::select(vec!["", "A", "A/B", "AB", "A/B/C", "Z"]),
    ) {
        let f = functions();
        let rows = paths.len();
        let encoded = encodings(&paths);
        let level = ColumnarValue::Scalar(ScalarValue::Int64(Some(n)));
        let node = ColumnarValue::Scalar(ScalarValue::Utf8(Some(node.to_string())));
        for (udf, second) in [
            (&f.path_level, None),
            (&f.path_prefix, Some(&level)),
            (&f.path_segment, Some(&level)),
            (&f.path_is_under, Some(&node)),
            (&f.path_child, Some(&node)),
        ] {
            let results: Vec<ArrayRef> = encoded
                .iter()
                .map(|p| {
                    let mut args = vec![ColumnarValue::Array(Arc::clone(p))];
                    args.extend(second.cloned());
                    call(udf, args, rows)
                })
                .collect();
            prop_assert_eq!(&results[0], &results[1], "{} plain vs view", udf.name());
            prop_assert_eq!(&results[0], &results[2], "{} plain vs dictionary", udf.name());
        }
    }

    #[test]
    fn impact_weight_agrees_on_every_encoding(
        declarations in prop::collection::vec(path(), 1..100),
        qualifications in prop::collection::vec(path(), 100),
        channel in prop::sample::select(vec!["phone", "web"]),
    ) {
        let f = functions();
        let rows = declarations.len();
        let qualifications = &qualifications[..rows];
        let channels: Vec<Option<String>> = vec![Some(channel.to_string()); rows];
        let categories: Vec<Option<String>> =
            (0..rows).map(|i| (i % 3 != 0).then(|| "avoidable".to_string())).collect();
        let columns = [&declarations[..], qualifications, qualifications, &channels, &categories];
        let results: Vec<ArrayRef> = (0..3)
            .map(|encoding| {
                let args = columns
                    .iter()
                    .map(|c| ColumnarValue::Array(Arc::clone(&encodings(c)[encoding])))
                    .collect();
                call(&f.impact_weight, args, rows)
            })
            .collect();
        prop_assert_eq!(&results[0], &results[1]);
        prop_assert_eq!(&results[0], &results[2]);
    }
}

#[test]
fn scalar_arguments_give_scalar_results() {
    let f = functions();
    let out = f
        .path_child
        .invoke_with_args(ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("A/B/C".into()))),
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("A".into()))),
            ],
            arg_fields: vec![
                Arc::new(Field::new("p", DataType::Utf8, true)),
                Arc::new(Field::new("node", DataType::Utf8, true)),
            ],
            number_rows: 1,
            return_field: Arc::new(Field::new("out", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
        .unwrap();
    match out {
        ColumnarValue::Scalar(s) => assert_eq!(s, ScalarValue::Utf8(Some("A/B".into()))),
        ColumnarValue::Array(_) => panic!("expected a scalar"),
    }
}

#[test]
fn dictionary_results_keep_the_keys() {
    let f = functions();
    let paths: DictionaryArray<Int32Type> = vec![Some("A/B/C"), Some("A/B/C"), None, Some("B")]
        .into_iter()
        .collect();
    let rows = paths.len();
    let args = vec![
        ColumnarValue::Array(Arc::new(paths.clone())),
        ColumnarValue::Scalar(ScalarValue::Int64(Some(1))),
    ];
    let arg_fields = vec![
        Arc::new(Field::new("p", paths.data_type().clone(), true)),
        Arc::new(Field::new("n", DataType::Int64, true)),
    ];
    let out = f
        .path_prefix
        .invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("out", paths.data_type().clone(), true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
        .unwrap()
        .into_array(rows)
        .unwrap();
    let out = out
        .as_any()
        .downcast_ref::<DictionaryArray<Int32Type>>()
        .unwrap();
    assert_eq!(out.keys(), paths.keys());
}
