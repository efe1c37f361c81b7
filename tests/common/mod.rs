//! Shared set-up for end-to-end tests: temporary warehouses, generated sources, and the real
//! server on a free loopback port.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};
use tracecube_datasets::{GenOptions, generate_chunk};
use tracecube_engine::load::{LoadOptions, LoadRecord, Loader};
use tracecube_engine::{Config, Warehouse, catalog};

/// A temporary warehouse and the folder its sources are written to.
pub struct TestWarehouse {
    pub dir: TempDir,
    pub warehouse: Warehouse,
}

impl TestWarehouse {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    /// A warehouse whose configuration `change` adjusts (cubes, memory…).
    pub async fn with(change: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            warehouse: dir.path().join("warehouse").display().to_string(),
            listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            demo: false,
            ..Default::default()
        };
        change(&mut config);
        let warehouse = Warehouse::open(config).await.unwrap();
        TestWarehouse { dir, warehouse }
    }

    pub fn config(&self) -> Config {
        self.warehouse.config().clone()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Generate `rows` traces with `seed` into a folder of Parquet files.
    pub fn generate(&self, name: &str, rows: u64, seed: u64) -> PathBuf {
        let out = self.path(name);
        let opts = GenOptions {
            rows,
            seed,
            chunk_rows: rows.div_ceil(2).max(1),
            ..Default::default()
        };
        tracecube_datasets::write_parquet(&opts, &out, false).unwrap();
        out
    }

    pub async fn load(
        &self,
        urls: &[&Path],
        options: LoadOptions,
    ) -> Result<LoadRecord, tracecube_engine::load::LoadError> {
        let urls: Vec<String> = urls.iter().map(|p| p.display().to_string()).collect();
        Loader::new(&self.warehouse).load(&urls, &options).await
    }

    /// Run SQL on a fresh session over the warehouse and return rows as text.
    pub async fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let ctx = catalog::session(&self.warehouse).await.unwrap();
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut rows = Vec::new();
        for b in batches {
            let formatters: Vec<_> = b
                .columns()
                .iter()
                .map(|c| {
                    datafusion::arrow::util::display::ArrayFormatter::try_new(
                        c.as_ref(),
                        &Default::default(),
                    )
                    .unwrap()
                })
                .collect();
            for i in 0..b.num_rows() {
                rows.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
            }
        }
        rows
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.query(&format!("SELECT count(*) FROM {table}")).await[0][0]
            .parse()
            .unwrap()
    }
}

/// Channel counts of generated traces, computed from the generator itself.
pub fn generated_channel_counts(rows: u64, seed: u64) -> BTreeMap<String, i64> {
    generated_channel_counts_in(rows, seed, 2)
}

/// Channel counts of `rows` traces generated with `seed` into `files` files.
pub fn generated_channel_counts_in(rows: u64, seed: u64, files: u64) -> BTreeMap<String, i64> {
    let opts = GenOptions {
        rows,
        seed,
        chunk_rows: rows.div_ceil(files).max(1),
        ..Default::default()
    };
    let mut counts = BTreeMap::new();
    for chunk in 0..opts.chunks() {
        let b = generate_chunk(&opts, chunk);
        let ch = datafusion::arrow::array::AsArray::as_string::<i32>(
            b.column_by_name("channel").unwrap(),
        );
        for v in ch.iter().flatten() {
            *counts.entry(v.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// A running server on a free loopback port; stops when dropped.
pub struct TestServer {
    pub port: u16,
    /// The port of `/metrics` and `/healthz`, when served.
    pub http_port: Option<u16>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let (server, ctx) = tracecube_engine::app::prepare_server(config, false)
            .await
            .unwrap();
        let port = server.local_addr().unwrap().port();
        let http_port = server.http_addr().map(|a| a.port());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run_until(ctx, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestServer {
            port,
            http_port,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn connect_as(&self, user: &str) -> Result<Client, tokio_postgres::Error> {
        let conn_str = format!(
            "host=127.0.0.1 port={} user={user} dbname=tracecube",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conn_str, NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Connect with more connection parameters (`user=… password=…`).
    pub async fn connect_with(&self, params: &str) -> Result<Client, tokio_postgres::Error> {
        let conn_str = format!(
            "host=127.0.0.1 port={} dbname=tracecube {params}",
            self.port
        );
        let (client, connection) = tokio_postgres::connect(&conn_str, NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// `GET path` on the metrics endpoint: the status line and the body.
    pub async fn http_get(&self, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = self.http_port.expect("the server serves HTTP");
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    pub async fn connect(&self) -> Client {
        self.connect_as("tracecube").await.unwrap()
    }

    /// Stop accepting, end sessions and wait for the server task.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The rows of a simple-protocol answer, as text (NULL as the empty string).
pub fn simple_rows(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<String>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
