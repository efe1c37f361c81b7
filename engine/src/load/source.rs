//! Sources of a load: URLs (local paths, `file://`, `s3://`, globs) resolved to files, and
//! each file read as a stream of record batches in its own format.

use std::io::Cursor;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::context::SessionContext;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::LoadError;
use arrow::array::RecordBatch;

/// Rows per batch read from a source.
pub const BATCH_ROWS: usize = 65_536;

/// File formats a load reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Csv,
    Ndjson,
}

impl Format {
    /// The format named in `WITH (FORMAT …)` or `--format`.
    pub fn parse(name: &str) -> Option<Format> {
        match name.to_ascii_lowercase().as_str() {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "ndjson" | "json" | "jsonl" => Some(Format::Ndjson),
            _ => None,
        }
    }

    /// The format a file's extension implies.
    pub fn from_extension(path: &str) -> Option<Format> {
        let lower = path.to_ascii_lowercase();
        let ext = lower.rsplit('.').next()?;
        match ext {
            "parquet" | "parq" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// One file to load.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The file's URL as shown to users and recorded in `tracecube.loads`.
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub meta: ObjectMeta,
    pub format: Format,
}

impl SourceFile {
    /// What makes a source "the same file" for idempotency: its URL, size and ETag.
    pub fn identity(&self) -> String {
        format!(
            "tracecube-source:{}#{}#{}",
            self.url,
            self.meta.size,
            self.meta.e_tag.as_deref().unwrap_or("")
        )
    }

    /// The whole file's bytes.
    async fn fetch(&self) -> Result<bytes::Bytes, String> {
        let get = self
            .store
            .get(&self.meta.location)
            .await
            .map_err(|e| e.to_string())?;
        get.bytes().await.map_err(|e| e.to_string())
    }

    /// Read the file as batches; the schema is the file's own (text for CSV and NDJSON).
    pub async fn read(
        &self,
    ) -> Result<
        (
            SchemaRef,
            BoxStream<'static, Result<RecordBatch, LoadError>>,
        ),
        LoadError,
    > {
        let url = self.url.clone();
        let read_err = move |e: String| LoadError::Read {
            source_url: url.clone(),
            message: e,
        };
        match self.format {
            Format::Parquet => {
                let bytes = self.fetch().await.map_err(&read_err)?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .map_err(|e| read_err(e.to_string()))?
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .map_err(|e| read_err(e.to_string()))?;
                let schema = datafusion::arrow::array::RecordBatchReader::schema(&reader);
                let stream = futures::stream::iter(
                    reader.map(move |b| b.map_err(|e| read_err(e.to_string()))),
                )
                .boxed();
                Ok((schema, stream))
            }
            Format::Csv | Format::Ndjson => {
                let bytes = self.fetch().await.map_err(&read_err)?;
                let (schema, batches) = if self.format == Format::Csv {
                    read_csv(&bytes)
                } else {
                    read_ndjson(&bytes)
                }
                .map_err(&read_err)?;
                Ok((
                    schema,
                    futures::stream::iter(batches.into_iter().map(Ok)).boxed(),
                ))
            }
        }
    }
}

/// All columns as nullable text: values are converted and checked by the validator.
fn text_schema(names: impl IntoIterator<Item = String>) -> SchemaRef {
    Arc::new(Schema::new(
        names
            .into_iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

fn read_csv(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let header = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes)
        .headers()
        .map_err(|e| format!("cannot read CSV header: {e}"))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect::<Vec<_>>();
    let schema = text_schema(header);
    let reader = arrow::csv::ReaderBuilder::new(schema.clone())
        .with_header(true)
        .with_batch_size(BATCH_ROWS)
        .build(Cursor::new(bytes))
        .map_err(|e| e.to_string())?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((schema, batches))
}

fn read_ndjson(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let (inferred, _) = arrow::json::reader::infer_json_schema(Cursor::new(bytes), None)
        .map_err(|e| format!("cannot read NDJSON: {e}"))?;
    let schema = text_schema(inferred.fields().iter().map(|f| f.name().clone()));
    let reader = arrow::json::ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .with_batch_size(BATCH_ROWS)
        .build(Cursor::new(bytes))
        .map_err(|e| e.to_string())?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((schema, batches))
}

/// Resolve each URL (a file, a directory or a glob) to the files it names, in URL order
/// then path order. A URL that names nothing is an error.
pub async fn resolve(
    ctx: &SessionContext,
    urls: &[String],
    format: Option<Format>,
) -> Result<Vec<SourceFile>, LoadError> {
    let mut files = Vec::new();
    for raw in urls {
        let url = ListingTableUrl::parse(raw).map_err(|e| LoadError::BadUrl {
            url: raw.clone(),
            message: e.to_string(),
        })?;
        let store = ctx
            .runtime_env()
            .object_store(url.object_store())
            .map_err(|e| LoadError::BadUrl {
                url: raw.clone(),
                message: e.to_string(),
            })?;
        let state = ctx.state();
        let mut metas: Vec<ObjectMeta> = url
            .list_all_files(&state, store.as_ref(), "")
            .await
            .map_err(|e| LoadError::BadUrl {
                url: raw.clone(),
                message: e.to_string(),
            })?
            .try_collect()
            .await
            .map_err(|e| LoadError::BadUrl {
                url: raw.clone(),
                message: e.to_string(),
            })?;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let before = files.len();
        let base = url.object_store();
        for meta in metas {
            let file_format = match format
                .or_else(|| Format::from_extension(meta.location.as_ref()))
            {
                Some(f) => f,
                // In a directory or glob, files of unknown formats are not sources.
                None if url.is_collection() || url.as_str().contains(['*', '?', '[']) => continue,
                None => {
                    return Err(LoadError::UnknownFormat { url: raw.clone() });
                }
            };
            files.push(SourceFile {
                url: format!(
                    "{}{}",
                    base.as_str().trim_end_matches('/'),
                    absolute(&meta.location)
                ),
                store: store.clone(),
                meta,
                format: file_format,
            });
        }
        if files.len() == before {
            return Err(LoadError::NoFiles { url: raw.clone() });
        }
    }
    Ok(files)
}

fn absolute(path: &object_store::path::Path) -> String {
    format!("/{}", path.as_ref())
}
