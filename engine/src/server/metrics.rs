//! The server's Prometheus metrics (served on `http_listen` at `/metrics`): connections,
//! queries by status and role, latency, rows returned, bytes read from storage, cube
//! answers, loads and the memory pool.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use url::Url;

type Labels = Vec<(&'static str, String)>;

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    /// Client connections open now.
    pub connections: Gauge,
    /// Client connections accepted since start.
    pub connections_accepted: Counter,
    /// Connections refused, by reason (`too_many`, `auth`, `tls_required`).
    pub connections_refused: Family<Labels, Counter>,
    queries: Family<Labels, Counter>,
    latency: Histogram,
    rows: Counter,
    /// Bytes read from the warehouse's storage by queries.
    pub bytes_scanned: Counter,
    cube_answers: Family<Labels, Counter>,
    cube_misses: Counter,
    /// Loads recorded in `tracecube.loads`, by status (set when scraped).
    pub loads: Family<Labels, Gauge>,
    /// Bytes reserved in the memory pool (set when scraped).
    pub memory_reserved: Gauge,
    /// The memory pool's limit in bytes, 0 for none (set when scraped).
    pub memory_limit: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tracecube");
        let metrics = Metrics {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            queries: Family::default(),
            // 0.5 ms to ~33 s
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 17)),
            rows: Counter::default(),
            bytes_scanned: Counter::default(),
            cube_answers: Family::default(),
            cube_misses: Counter::default(),
            loads: Family::default(),
            memory_reserved: Gauge::default(),
            memory_limit: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Client connections open now",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            metrics.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections refused, by reason",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "queries",
            "Statements run, by status (ok, error, refused, cancelled) and role",
            metrics.queries.clone(),
        );
        registry.register(
            "query_duration_seconds",
            "Time from a statement's arrival to its last row sent",
            metrics.latency.clone(),
        );
        registry.register(
            "rows_returned",
            "Rows sent to clients",
            metrics.rows.clone(),
        );
        registry.register(
            "bytes_scanned",
            "Bytes read from the warehouse's storage by queries",
            metrics.bytes_scanned.clone(),
        );
        registry.register(
            "cube_answers",
            "Queries answered from a cube, by cube",
            metrics.cube_answers.clone(),
        );
        registry.register(
            "cube_misses",
            "Queries of traces that no cube could answer (run on traces)",
            metrics.cube_misses.clone(),
        );
        registry.register(
            "loads",
            "Loads recorded in tracecube.loads, by status",
            metrics.loads.clone(),
        );
        registry.register(
            "memory_pool_reserved_bytes",
            "Bytes reserved by running queries in the memory pool",
            metrics.memory_reserved.clone(),
        );
        registry.register(
            "memory_pool_limit_bytes",
            "The memory pool's limit (memory_limit_mb), 0 for none",
            metrics.memory_limit.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

/// What one finished statement tells the metrics.
pub struct Finished<'a> {
    pub role: Option<&'static str>,
    /// The SQLSTATE of its error, if it failed.
    pub sqlstate: Option<&'a str>,
    pub seconds: f64,
    pub rows: u64,
    /// The cubes that answered it.
    pub cubes: &'a [String],
    /// Whether the cube rewrite found no cube for a part of it.
    pub missed: bool,
}

impl Metrics {
    /// Count one statement.
    pub fn finished(&self, query: Finished<'_>) {
        let status = match query.sqlstate {
            None => "ok",
            Some("42501") => "refused",
            Some("57014") => "cancelled",
            Some(_) => "error",
        };
        self.queries
            .get_or_create(&vec![
                ("status", status.to_string()),
                ("role", query.role.unwrap_or("none").to_string()),
            ])
            .inc();
        self.latency.observe(query.seconds);
        self.rows.inc_by(query.rows);
        for cube in query.cubes {
            self.cube_answers
                .get_or_create(&vec![("cube", cube.clone())])
                .inc();
        }
        if query.missed {
            self.cube_misses.inc();
        }
    }

    /// A refused connection.
    pub fn refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// DataFusion's object store registry, every store counting the bytes it returns into
/// [`Metrics::bytes_scanned`] (Delta tables register their stores here when scanned).
#[derive(Debug)]
pub struct CountingRegistry {
    inner: DefaultObjectStoreRegistry,
    bytes: Counter,
}

impl CountingRegistry {
    pub fn new(bytes: Counter) -> Self {
        let registry = CountingRegistry {
            inner: DefaultObjectStoreRegistry::new(),
            bytes,
        };
        let local = Arc::new(object_store::local::LocalFileSystem::new());
        registry.register_store(&Url::parse("file://").expect("a valid URL"), local);
        registry
    }
}

impl ObjectStoreRegistry for CountingRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let counted = Arc::new(CountingStore {
            inner: store,
            bytes: self.bytes.clone(),
        });
        self.inner.register_store(url, counted)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        self.inner.get_store(url)
    }
}

/// An object store counting the bytes of the objects and ranges it returns.
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    bytes: Counter,
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if !head {
            self.bytes.inc_by(result.range.end - result.range.start);
        }
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let parts = self.inner.get_ranges(location, ranges).await?;
        self.bytes
            .inc_by(parts.iter().map(|p| p.len() as u64).sum::<u64>());
        Ok(parts)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
