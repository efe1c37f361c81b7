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
        let file = self.object_file();
        let size = self.meta.size;
        let url = self.url.clone();
        futures::stream::iter((0..size).step_by(BLOCK_BYTES as usize))
            .map(move |start| {
                let (file, url) = (file.clone(), url.clone());
                async move {
                    let end = (start + BLOCK_BYTES).min(size);
                    file.range(start..end).await.map_err(|e| LoadError::Read {
                        source_url: url,
                        message: e.to_string(),
                    })
                }
            })
            .buffered(2)
            .boxed()
    }

    /// The file as listed: every read is of that version (same ETag), or fails.
    fn object_file(&self) -> ObjectFile {
        ObjectFile::new(
            Arc::clone(&self.store),
            self.meta.location.clone(),
            self.meta.size,
        )
        .pinned(self.meta.e_tag.clone())
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
                let reader = self.object_file();
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
                // the columns are those of the first records, checked as the file's; the
                // records are decoded with every trace column too, so that one first
                // present further on (a survey score only some records have) is read,
                // not dropped
                let late = tracecube_datasets::input_schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .filter(|n| schema.field_with_name(n).is_err())
                    .collect::<Vec<_>>();
                let decoded_as =
                    text_schema(schema.fields().iter().map(|f| f.name().clone()).chain(late));
                let decoder = arrow::json::ReaderBuilder::new(decoded_as)
                    .with_coerce_primitive(true)
                    .with_batch_size(BATCH_ROWS)
                    .build_decoder()
                    .map_err(|e| read_err(e.to_string()))?;
                Ok((schema, decoded(decoder, head, rest, read_err)))
            }
        }
    }
}

impl SourceFile {
    /// This local file opened once: named as the kernel resolved the name (every link,
    /// in any folder of the path, followed) and described by the open file's own
    /// metadata. Reads are pinned to that file's ETag (inode, mtime, size): a link or
    /// another file put at the name after this call is never read. `None` for a file
    /// of an object store.
    pub fn opened_local(&self) -> Option<std::io::Result<SourceFile>> {
        if !self.url.starts_with("file:") {
            return None;
        }
        Some(self.open_local())
    }

    fn open_local(&self) -> std::io::Result<SourceFile> {
        let path = object_store::local::LocalFileSystem::new()
            .path_to_filesystem(&self.meta.location)
            .map_err(std::io::Error::other)?;
        let file = std::fs::File::open(&path)?;
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(std::io::Error::other(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let real = opened_path(&file, &path)?;
        let location =
            object_store::path::Path::from_absolute_path(&real).map_err(std::io::Error::other)?;
        let last_modified = metadata
            .modified()
            .map(chrono::DateTime::<chrono::Utc>::from)
            .unwrap_or_default();
        let meta = ObjectMeta {
            e_tag: Some(local_e_tag(&metadata)),
            size: metadata.len(),
            last_modified,
            location,
            version: None,
        };
        Ok(SourceFile {
            url: source_url(&url::Url::parse("file:///").expect("a URL"), &meta.location),
            store: Arc::clone(&self.store),
            meta,
            format: self.format,
        })
    }

    /// The place the policy checks: the real path of a local file, or the object's URL
    /// with each segment of its key percent-encoded (checked as the store reads it).
    pub fn place(&self) -> Option<String> {
        if self.url.starts_with("file:") {
            return object_store::local::LocalFileSystem::new()
                .path_to_filesystem(&self.meta.location)
                .ok()
                .and_then(|p| p.to_str().map(str::to_string));
        }
        let at = self.url.find("://")? + 3;
        let end = self.url[at..].find('/').map_or(self.url.len(), |i| i + at);
        let mut url = url::Url::parse(&self.url[..end]).ok()?;
        url.path_segments_mut()
            .ok()?
            .clear()
            .extend(self.meta.location.parts().map(|p| p.as_ref().to_string()));
        Some(url.to_string())
    }
}

/// The name the kernel gives the open `file` (every link resolved): on Linux read from
/// `/proc/self/fd`, elsewhere `path` resolved once more.
fn opened_path(
    file: &std::fs::File,
    path: &std::path::Path,
) -> std::io::Result<std::path::PathBuf> {
    #[cfg(target_os = "linux")]
    {
        let _ = path;
        use std::os::fd::AsRawFd;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        // a file removed since it was opened: " (deleted)" is appended to its name
        if !real.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} was removed", real.display()),
            ));
        }
        Ok(real)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        std::fs::canonicalize(path)
    }
}

/// The ETag `object_store`'s local store gives a file (inode, mtime in microseconds,
/// size), so that its reads can be pinned to the file opened here.
fn local_e_tag(metadata: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    #[cfg(not(unix))]
    let inode = 0u64;
    let mtime = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    let size = metadata.len();
    format!("{inode:x}-{mtime:x}-{size:x}")
}

/// A file of an object store read by ranges (a Parquet file: its footer, then the column
/// chunks of one row group at a time), optionally pinned to one version by its ETag.
#[derive(Clone)]
pub struct ObjectFile {
    store: Arc<dyn ObjectStore>,
    location: object_store::path::Path,
    size: u64,
    e_tag: Option<String>,
}

impl ObjectFile {
    pub fn new(store: Arc<dyn ObjectStore>, location: object_store::path::Path, size: u64) -> Self {
        ObjectFile {
            store,
            location,
            size,
            e_tag: None,
        }
    }

    /// Every read fails unless the object still has this ETag: an object replaced while
    /// a load reads it (or, for a local file, another file put at its name) is never
    /// read half from one version and half from another.
    pub fn pinned(mut self, e_tag: Option<String>) -> Self {
        self.e_tag = e_tag;
        self
    }

    async fn range(&self, range: std::ops::Range<u64>) -> object_store::Result<Bytes> {
        let Some(e_tag) = &self.e_tag else {
            return self.store.get_range(&self.location, range).await;
        };
        let options = object_store::GetOptions {
            range: Some(range.into()),
            if_match: Some(e_tag.clone()),
            ..Default::default()
        };
        let read = self.store.get_opts(&self.location, options).await;
        match read {
            Err(object_store::Error::Precondition { .. }) => Err(object_store::Error::Generic {
                store: "source",
                source: format!(
                    "{} changed while it was being loaded (its ETag is no longer {e_tag}): load it again",
                    self.location
                )
                .into(),
            }),
            other => other?.bytes().await,
        }
    }
}

impl AsyncFileReader for ObjectFile {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.range(range)
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
                url: source_url(base.as_ref(), &meta.location),
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

/// The URL a file of the store at `base` is known by in errors, `rejects.source` and the
/// ledger of loaded files (`file:/data/a.csv`, `s3://bucket/exports/a.parquet`): one
/// form for a file however it was named, so that it is loaded once.
fn source_url(base: &url::Url, location: &object_store::path::Path) -> String {
    format!(
        "{}{}",
        base.as_str().trim_end_matches('/'),
        absolute(location)
    )
}

fn absolute(path: &object_store::path::Path) -> String {
    format!("/{}", path.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listed(ctx: &SessionContext, path: &std::path::Path) -> SourceFile {
        let url = path.to_str().unwrap().to_string();
        resolve(ctx, &[url], Some(Format::Csv))
            .await
            .unwrap()
            .remove(0)
    }

    async fn read_all(file: &SourceFile) -> Result<Vec<u8>, LoadError> {
        let mut bytes = Vec::new();
        let mut blocks = file.blocks();
        while let Some(block) = blocks.next().await {
            bytes.extend_from_slice(&block?);
        }
        Ok(bytes)
    }

    #[tokio::test]
    async fn a_file_replaced_after_it_was_listed_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (name, other) = (dir.path().join("a.csv"), dir.path().join("b.csv"));
        std::fs::write(&name, "first version\n").unwrap();
        std::fs::write(&other, "other file!!!\n").unwrap();
        let ctx = SessionContext::new();
        let file = listed(&ctx, &name).await;
        assert_eq!(read_all(&file).await.unwrap(), b"first version\n");
        // same size, another file at the name
        std::fs::rename(&other, &name).unwrap();
        let e = read_all(&file).await.unwrap_err().to_string();
        assert!(e.contains("changed while it was being loaded"), "{e}");
    }

    #[tokio::test]
    async fn a_local_file_opened_once_is_named_by_its_real_path_and_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("in");
        let outside = dir.path().join("out");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.csv"), "secret\n").unwrap();
        std::fs::write(inside.join("real.csv"), "public\n").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.csv"), inside.join("x.csv")).unwrap();
        let ctx = SessionContext::new();
        // a link: named by where it leads, as the check must see it
        let opened = listed(&ctx, &inside.join("x.csv"))
            .await
            .opened_local()
            .unwrap()
            .unwrap();
        let real = std::fs::canonicalize(outside.join("secret.csv")).unwrap();
        assert_eq!(opened.place().unwrap(), real.to_str().unwrap());
        // a plain file, then a link swapped in at its name after it was opened
        let name = inside.join("swap.csv");
        std::fs::write(&name, "public\n").unwrap();
        let as_listed = listed(&ctx, &name).await;
        let opened = as_listed.opened_local().unwrap().unwrap();
        // one name, one identity: loaded by `tracecube load` or by COPY, it is one file
        assert_eq!(opened.url, as_listed.url);
        assert_eq!(opened.identity(), as_listed.identity());
        assert_eq!(
            opened.place().unwrap(),
            std::fs::canonicalize(&name).unwrap().to_str().unwrap()
        );
        std::fs::remove_file(&name).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.csv"), &name).unwrap();
        let e = read_all(&opened).await.unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        // an object store's file is not opened here
        assert!(
            SourceFile {
                url: "s3://b/k.csv".into(),
                ..opened.clone()
            }
            .opened_local()
            .is_none()
        );
    }

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
