//! Sources of a load: URLs (local paths, `file://`, `s3://`, globs) resolved to files, and
//! each file read as a stream of record batches in its own format.

use std::io::Cursor;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::{Buf, Bytes};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::context::SessionContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

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

    /// The file's bytes in blocks of [`BLOCK_BYTES`], the next one fetched while the
    /// current one is decoded.
    fn blocks(&self) -> BoxStream<'static, Result<Bytes, LoadError>> {
        let (store, location, size) = (
            Arc::clone(&self.store),
            self.meta.location.clone(),
            self.meta.size,
        );
        let url = self.url.clone();
        futures::stream::iter((0..size).step_by(BLOCK_BYTES as usize))
            .map(move |start| {
                let (store, location, url) = (Arc::clone(&store), location.clone(), url.clone());
                async move {
                    let end = (start + BLOCK_BYTES).min(size);
                    store
                        .get_range(&location, start..end)
                        .await
                        .map_err(|e| LoadError::Read {
                            source_url: url,
                            message: e.to_string(),
                        })
                }
            })
            .buffered(2)
            .boxed()
    }

    /// Read the file as a stream of batches of at most [`BATCH_ROWS`] rows, holding one
    /// Parquet row group or a few blocks of text at a time. The schema is the file's own
    /// (all text for CSV and NDJSON).
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
                let reader = ObjectFile::new(
                    Arc::clone(&self.store),
                    self.meta.location.clone(),
                    self.meta.size,
                );
                let builder = ParquetRecordBatchStreamBuilder::new(reader)
                    .await
                    .map_err(|e| read_err(e.to_string()))?
                    .with_batch_size(BATCH_ROWS);
                let schema = Arc::clone(builder.schema());
                let stream = builder
                    .build()
                    .map_err(|e| read_err(e.to_string()))?
                    .map(move |b| b.map_err(|e| read_err(e.to_string())))
                    .boxed();
                Ok((schema, stream))
            }
            Format::Csv => {
                let (head, rest) = head(self.blocks(), |head| head.contains(&b'\n')).await?;
                let header = csv::ReaderBuilder::new()
                    .has_headers(true)
                    .from_reader(head.as_ref())
                    .headers()
                    .map_err(|e| read_err(format!("cannot read CSV header: {e}")))?
                    .iter()
                    .map(|h| h.trim().to_string())
                    .collect::<Vec<_>>();
                let schema = text_schema(header);
                let decoder = arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
                    .with_header(true)
                    .with_batch_size(BATCH_ROWS)
                    .build_decoder();
                Ok((schema, decoded(decoder, head, rest, read_err)))
            }
            Format::Ndjson => {
                // the columns are those of the first records
                let (head, rest) = head(self.blocks(), |head| head.len() >= SCHEMA_BYTES).await?;
                let complete = head
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(head.len(), |i| i + 1);
                let (inferred, _) =
                    arrow::json::reader::infer_json_schema(Cursor::new(&head[..complete]), None)
                        .map_err(|e| read_err(format!("cannot read NDJSON: {e}")))?;
                let schema = text_schema(inferred.fields().iter().map(|f| f.name().clone()));
                let decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
                    .with_coerce_primitive(true)
                    .with_batch_size(BATCH_ROWS)
                    .build_decoder()
                    .map_err(|e| read_err(e.to_string()))?;
                Ok((schema, decoded(decoder, head, rest, read_err)))
            }
        }
    }
}

/// A Parquet file of an object store, read by ranges: its footer, then the column chunks
/// of one row group at a time.
pub struct ObjectFile {
    store: Arc<dyn ObjectStore>,
    location: object_store::path::Path,
    size: u64,
}

impl ObjectFile {
    pub fn new(store: Arc<dyn ObjectStore>, location: object_store::path::Path, size: u64) -> Self {
        ObjectFile {
            store,
            location,
            size,
        }
    }
}

impl AsyncFileReader for ObjectFile {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.location, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Bytes of a file read in one request.
const BLOCK_BYTES: u64 = 8 << 20;
/// How much of an NDJSON file its columns are taken from.
const SCHEMA_BYTES: usize = 1 << 20;

/// The first blocks of `blocks`, until `enough` says so or the file ends, and the rest.
async fn head(
    mut blocks: BoxStream<'static, Result<Bytes, LoadError>>,
    enough: impl Fn(&[u8]) -> bool,
) -> Result<(Bytes, BoxStream<'static, Result<Bytes, LoadError>>), LoadError> {
    let mut head = Vec::new();
    while !enough(&head) {
        match blocks.next().await {
            Some(block) => head.extend_from_slice(&block?),
            None => break,
        }
    }
    Ok((Bytes::from(head), blocks))
}

/// A decoder of text records that takes bytes as they come.
trait Decode: Send + 'static {
    /// Decode from `buf`: the bytes consumed (0 once a batch is full or `buf` is empty).
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow::error::ArrowError>;
    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow::error::ArrowError>;
}

impl Decode for arrow::csv::reader::Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow::error::ArrowError> {
        arrow::csv::reader::Decoder::decode(self, buf)
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        arrow::csv::reader::Decoder::flush(self)
    }
}

impl Decode for arrow::json::reader::Decoder {
    fn decode(&mut self, buf: &[u8]) -> Result<usize, arrow::error::ArrowError> {
        arrow::json::reader::Decoder::decode(self, buf)
    }
    fn flush(&mut self) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
        arrow::json::reader::Decoder::flush(self)
    }
}

/// The batches `decoder` makes of `head` then `rest`.
fn decoded(
    decoder: impl Decode,
    head: Bytes,
    rest: BoxStream<'static, Result<Bytes, LoadError>>,
    error: impl Fn(String) -> LoadError + Send + Sync + 'static,
) -> BoxStream<'static, Result<RecordBatch, LoadError>> {
    let error = Arc::new(error);
    futures::stream::try_unfold(
        (decoder, rest, head, false),
        move |(mut decoder, mut rest, mut buffered, mut ended)| {
            let error = Arc::clone(&error);
            async move {
                loop {
                    // an empty buffer tells the decoder the input ended
                    while buffered.is_empty() && !ended {
                        match rest.next().await {
                            Some(block) => buffered = block?,
                            None => ended = true,
                        }
                    }
                    let used = decoder
                        .decode(&buffered)
                        .map_err(|e| error(e.to_string()))?;
                    if used == 0 {
                        break;
                    }
                    buffered.advance(used);
                }
                match decoder.flush().map_err(|e| error(e.to_string()))? {
                    Some(batch) => Ok(Some((batch, (decoder, rest, buffered, ended)))),
                    None => Ok(None),
                }
            }
        },
    )
    .boxed()
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

/// Resolve each URL (a file, a directory or a glob) to the files it names, in URL order
/// then path order. A URL that names nothing is an error.
pub async fn resolve(
    ctx: &SessionContext,
    urls: &[String],
    format: Option<Format>,
) -> Result<Vec<SourceFile>, LoadError> {
    let mut files = Vec::new();
    for raw in urls {
        let url = listing_url(raw).map_err(|e| LoadError::BadUrl {
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

/// `raw` as a listing: DataFusion reads globs in local paths only; in an object-store URL
/// (`s3://bucket/exports/2026-11-*.parquet`) the part from the folder holding the first
/// `*`, `?` or `[` on is the pattern.
fn listing_url(raw: &str) -> datafusion::error::Result<ListingTableUrl> {
    let Ok(url) = url::Url::parse(raw) else {
        return ListingTableUrl::parse(raw);
    };
    if url.scheme() == "file" || !crate::storage::is_cloud(&url) {
        return ListingTableUrl::parse(raw);
    }
    let after_authority = raw.find("://").map_or(0, |i| i + 3);
    let first_glob = raw[after_authority..]
        .find(['*', '?', '['])
        .map(|i| i + after_authority);
    let Some(first_glob) = first_glob else {
        return ListingTableUrl::parse(raw);
    };
    let folder_end = raw[..first_glob].rfind('/').map_or(first_glob, |i| i + 1);
    if folder_end <= after_authority {
        return Err(datafusion::error::DataFusionError::Plan(
            "a glob in the bucket name".into(),
        ));
    }
    let pattern = glob::Pattern::new(&raw[folder_end..])
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let folder = url::Url::parse(&raw[..folder_end])
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    ListingTableUrl::try_new(folder, Some(pattern))
}

fn absolute(path: &object_store::path::Path) -> String {
    format!("/{}", path.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_in_object_store_urls_are_patterns_under_their_folder() {
        let url = listing_url("s3://b/exports/2026-11-*.parquet").unwrap();
        assert_eq!(url.prefix().as_ref(), "exports");
        let p = |s: &str| object_store::path::Path::from(s);
        assert!(url.contains(&p("exports/2026-11-02.parquet"), true));
        assert!(!url.contains(&p("exports/2026-12-02.parquet"), true));
        assert!(!url.contains(&p("other/2026-11-02.parquet"), true));
        let plain = listing_url("s3://b/exports/").unwrap();
        assert!(plain.is_collection());
        assert!(listing_url("s3://b*/x").is_err());
    }
}
