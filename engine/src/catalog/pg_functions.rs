//! `pg_catalog.pg_proc` with Tracecube's functions in schema `public`, so that psql's
//! `\df`, DBeaver and other clients list them with their arguments and results.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Int16Array, Int32Array, RecordBatch, StringArray,
    new_null_array,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use tracecube_udfs::catalog::{FUNCTIONS, oid, type_oid};

const PG_CATALOG: &str = "pg_catalog";
const PG_PROC: &str = "pg_proc";

/// Replace `catalog`'s `pg_catalog` schema by one whose `pg_proc` also lists Tracecube's
/// functions, and register the catalog functions that describe them.
pub async fn add_to_pg_catalog(ctx: &SessionContext, catalog: &str) -> Result<()> {
    for f in tracecube_udfs::catalog::catalog_functions() {
        ctx.register_udf(f);
    }
    let provider = ctx
        .catalog(catalog)
        .ok_or_else(|| DataFusionError::Plan(format!("no catalog {catalog}")))?;
    let Some(inner) = provider.schema(PG_CATALOG) else {
        return Err(DataFusionError::Plan("no pg_catalog schema".into()));
    };
    let Some(builtin) = inner.table(PG_PROC).await? else {
        return Err(DataFusionError::Plan("no pg_catalog.pg_proc".into()));
    };
    let namespace = public_namespace(ctx).await?;
    let mut batches = ctx.read_table(Arc::clone(&builtin))?.collect().await?;
    batches.push(rows(builtin.schema(), namespace)?);
    let pg_proc = Arc::new(MemTable::try_new(builtin.schema(), vec![batches])?);
    provider.register_schema(PG_CATALOG, Arc::new(WithFunctions { inner, pg_proc }))?;
    Ok(())
}

/// The oid of schema `public` in `pg_namespace`.
async fn public_namespace(ctx: &SessionContext) -> Result<i32> {
    let batches = ctx
        .sql("SELECT CAST(oid AS INT) FROM pg_catalog.pg_namespace WHERE nspname = 'public'")
        .await?
        .collect()
        .await?;
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| b.column(0).as_any().downcast_ref::<Int32Array>())
        .map(|a| a.value(0))
        .ok_or_else(|| DataFusionError::Plan("no schema public in pg_namespace".into()))
}

/// One `pg_proc` row per Tracecube function, in the columns of PostgreSQL's `pg_proc`.
fn rows(schema: SchemaRef, namespace: i32) -> Result<RecordBatch> {
    let n = FUNCTIONS.len();
    let ints = |f: &dyn Fn(usize) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values((0..n).map(f)))
    };
    let texts = |f: &dyn Fn(usize) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values((0..n).map(f)))
    };
    let bools = |f: &dyn Fn(usize) -> bool| -> ArrayRef {
        Arc::new(BooleanArray::from_iter((0..n).map(|i| Some(f(i)))))
    };
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let p = |i: usize| &FUNCTIONS[i];
            let column: ArrayRef = match field.name().as_str() {
                "oid" => ints(&oid),
                "proname" => texts(&|i| p(i).name.to_string()),
                "pronamespace" => ints(&|_| namespace),
                "proowner" => ints(&|_| 10),
                "prolang" => ints(&|_| 12), // internal
                "procost" => Arc::new(Float32Array::from(vec![1.0; n])),
                "prorows" => Arc::new(Float32Array::from_iter_values(
                    (0..n).map(|i| if p(i).returns_set { 1000.0 } else { 0.0 }),
                )),
                "provariadic" => ints(&|_| 0),
                "prosupport" => texts(&|_| "-".into()),
                "prokind" => texts(&|i| p(i).kind.to_string()),
                "prosecdef" | "proleakproof" => bools(&|_| false),
                "proisstrict" => bools(&|_| true),
                "proretset" => bools(&|i| p(i).returns_set),
                "provolatile" | "proparallel" => texts(&|_| "s".into()),
                "pronargs" => Arc::new(Int16Array::from_iter_values(
                    (0..n).map(|i| p(i).args.len() as i16),
                )),
                // drilldown's day range is optional
                "pronargdefaults" => Arc::new(Int16Array::from_iter_values(
                    (0..n).map(|i| if p(i).returns_set { 2 } else { 0 }),
                )),
                "prorettype" => ints(&|i| type_oid(p(i).result)),
                "proargtypes" => texts(&|i| {
                    let types: Vec<String> = p(i)
                        .args
                        .iter()
                        .map(|(_, t)| type_oid(t).to_string())
                        .collect();
                    types.join(" ")
                }),
                "proargnames" => texts(&|i| {
                    let names: Vec<&str> = p(i).args.iter().map(|(n, _)| *n).collect();
                    format!("{{{}}}", names.join(","))
                }),
                "prosrc" => texts(&|i| p(i).name.to_string()),
                _ => new_null_array(field.data_type(), n),
            };
            if column.data_type() != field.data_type() {
                return datafusion::arrow::compute::cast(&column, field.data_type())
                    .map_err(DataFusionError::from);
            }
            Ok(column)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `pg_catalog` with its `pg_proc` replaced.
#[derive(Debug)]
struct WithFunctions {
    inner: Arc<dyn SchemaProvider>,
    pg_proc: Arc<MemTable>,
}

#[async_trait]
impl SchemaProvider for WithFunctions {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name == PG_PROC {
            return Ok(Some(Arc::clone(&self.pg_proc) as Arc<dyn TableProvider>));
        }
        self.inner.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}
