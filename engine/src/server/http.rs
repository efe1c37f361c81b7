//! The HTTP endpoint of `http_listen`: `GET /metrics` (Prometheus/OpenMetrics text) and
//! `GET /healthz`. A deliberately small HTTP/1.1 responder (one request per connection,
//! bounded request size and time): the HTTP stack in Tracecube's dependency tree is built
//! client-only.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{AsArray, Int64Array};
use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::prelude::SessionContext;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::Metrics;
use crate::cubes::registry::CubeRegistry;

/// Longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Requests answered at once.
const MAX_CONNECTIONS: usize = 16;
/// A client has this long to send its request and read the answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the endpoint reads from the server.
pub struct Endpoint {
    pub ctx: SessionContext,
    pub metrics: Arc<Metrics>,
    pub cubes: Arc<CubeRegistry>,
}

impl Endpoint {
    /// Answer requests on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            // at most MAX_CONNECTIONS requests at once; the others wait to be accepted
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((socket, _)) => {
                    let endpoint = Arc::clone(&self);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(TIMEOUT, endpoint.answer(socket)).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    // out of file descriptors: give running requests time to end
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn answer(&self, mut socket: TcpStream) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > MAX_REQUEST {
                let status = "431 Request Header Fields Too Large";
                return respond(&mut socket, status, "", b"", false).await;
            }
        }
        let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        if method != "GET" && method != "HEAD" {
            return respond(&mut socket, "405 Method Not Allowed", "", b"", false).await;
        }
        let (status, content_type, body) = match path {
            "/metrics" => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics_text().await.into_bytes(),
            ),
            "/healthz" => match self.cubes.refresh().await {
                Ok(()) => ("200 OK", "text/plain", b"ok\n".to_vec()),
                Err(e) => {
                    // the details (paths) are for the server's log, not for any caller
                    tracing::warn!("health check: the warehouse cannot be read: {e}");
                    (
                        "503 Service Unavailable",
                        "text/plain",
                        b"the warehouse cannot be read (see the server log)\n".to_vec(),
                    )
                }
            },
            _ => (
                "404 Not Found",
                "text/plain",
                b"not found: /metrics or /healthz\n".to_vec(),
            ),
        };
        respond(&mut socket, status, content_type, &body, method == "GET").await
    }

    /// The metrics, with the values read when scraped (memory pool, loads) brought up to
    /// date.
    async fn metrics_text(&self) -> String {
        let pool = &self.ctx.runtime_env().memory_pool;
        self.metrics
            .memory_reserved
            .set(i64::try_from(pool.reserved()).unwrap_or(i64::MAX));
        let limit = match pool.memory_limit() {
            MemoryLimit::Finite(bytes) => i64::try_from(bytes).unwrap_or(i64::MAX),
            _ => 0,
        };
        self.metrics.memory_limit.set(limit);
        match self.loads_by_status().await {
            Ok(counts) => {
                for (status, count) in counts {
                    self.metrics
                        .loads
                        .get_or_create(&vec![("status", status)])
                        .set(count);
                }
            }
            Err(e) => tracing::warn!("metrics: cannot count loads: {e}"),
        }
        self.metrics.render()
    }

    async fn loads_by_status(&self) -> datafusion::common::Result<Vec<(String, i64)>> {
        let batches = self
            .ctx
            .sql("SELECT status, count(*) FROM tracecube.loads GROUP BY status")
            .await?
            .collect()
            .await?;
        let mut counts = Vec::new();
        for batch in batches {
            let status = datafusion::arrow::compute::cast(
                batch.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )?;
            let status = status.as_string::<i32>();
            let count = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("count(*) is an Int64");
            for i in 0..batch.num_rows() {
                counts.push((status.value(i).to_string(), count.value(i)));
            }
        }
        Ok(counts)
    }
}

async fn respond(
    socket: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    send_body: bool,
) -> std::io::Result<()> {
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !content_type.is_empty() {
        answer.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    answer.push_str("\r\n");
    socket.write_all(answer.as_bytes()).await?;
    if send_body {
        socket.write_all(body).await?;
    }
    socket.shutdown().await
}
