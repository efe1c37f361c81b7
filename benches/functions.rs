//! Criterion benchmarks of the path functions and `impact_weight` on 10 M rows with
//! 60 distinct paths, dictionary-encoded vs plain `Utf8`, called the way DataFusion
//! calls them (`invoke_with_args` on whole arrays). See README.md for the figures.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use datafusion::arrow::array::{ArrayRef, DictionaryArray, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int32Type};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use tracecube_udfs::{Axis, Functions, ImpactWeights, SlaTable, WeightsHandle};

const ROWS: usize = 10_000_000;

/// 60 distinct three-level paths, drawn with a skew like real reasons.
fn paths(rows: usize) -> Vec<String> {
    let distinct: Vec<String> = (0..60)
        .map(|i| format!("Reason {}/Sub-reason {}/Detail {i}", i % 6, i % 12))
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..rows)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // squaring a uniform draw favours the first paths
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            distinct[((u * u) * 60.0) as usize].clone()
        })
        .collect()
}

fn encodings(values: &[String]) -> [(&'static str, ArrayRef); 2] {
    let dictionary: DictionaryArray<Int32Type> = values.iter().map(String::as_str).collect();
    let plain: StringArray = values.iter().map(|v| Some(v.as_str())).collect();
    [
        ("dictionary", Arc::new(dictionary)),
        ("plain", Arc::new(plain)),
    ]
}

fn invoke(f: &ScalarUDF, args: &[ColumnarValue], rows: usize) -> ColumnarValue {
    let types: Vec<DataType> = args.iter().map(|a| a.data_type()).collect();
    let arg_fields = types
        .iter()
        .enumerate()
        .map(|(i, t)| Arc::new(Field::new(format!("a{i}"), t.clone(), true)))
        .collect();
    let return_type = f.return_type(&types).expect("argument types are accepted");
    f.invoke_with_args(ScalarFunctionArgs {
        args: args.to_vec(),
        arg_fields,
        number_rows: rows,
        return_field: Arc::new(Field::new("out", return_type, true)),
        config_options: Arc::new(ConfigOptions::default()),
    })
    .expect("the function runs")
}

fn path_functions(c: &mut Criterion) {
    let weights = ImpactWeights::new([
        (Axis::Declaration, "Reason 1".to_string(), 2.0),
        (
            Axis::Declaration,
            "Reason 1/Sub-reason 7/Detail 19".to_string(),
            0.5,
        ),
        (Axis::Category, "avoidable".to_string(), 2.0),
    ]);
    let f = Functions::new(SlaTable::default(), Arc::new(WeightsHandle::new(weights)));
    let values = paths(ROWS);
    let level = ColumnarValue::Scalar(ScalarValue::Int64(Some(2)));
    let node = ColumnarValue::Scalar(ScalarValue::Utf8(Some("Reason 1".into())));
    let mut group = c.benchmark_group("10M rows, 60 distinct paths");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for (encoding, paths) in encodings(&values) {
        let p = ColumnarValue::Array(paths);
        for (udf, extra) in [
            (&f.path_level, None),
            (&f.path_prefix, Some(&level)),
            (&f.path_segment, Some(&level)),
            (&f.path_is_under, Some(&node)),
            (&f.path_child, Some(&node)),
        ] {
            let mut args = vec![p.clone()];
            args.extend(extra.cloned());
            group.bench_with_input(BenchmarkId::new(udf.name(), encoding), &args, |b, args| {
                b.iter(|| invoke(udf, args, ROWS))
            });
        }
        let category = ColumnarValue::Scalar(ScalarValue::Utf8(Some("avoidable".into())));
        let none = ColumnarValue::Scalar(ScalarValue::Utf8(None));
        let args = [p.clone(), p.clone(), p.clone(), none, category];
        group.bench_with_input(
            BenchmarkId::new("impact_weight", encoding),
            &args,
            |b, args| b.iter(|| invoke(&f.impact_weight, args, ROWS)),
        );
    }
    group.finish();
}

criterion_group!(benches, path_functions);
criterion_main!(benches);
