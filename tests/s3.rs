//! The warehouse and its sources on a real S3 server: Ceph's radosgw on loopback, booted
//! by `tests/s3/up` (CI boots it first and exports `TRACECUBE_TEST_S3`; otherwise the
//! first test that needs it boots one for this test process, stopped when it exits). A
//! server that cannot be booted fails these tests: they never skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, LazyLock};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::common::{TestServer, generated_channel_counts_in, simple_rows};
use tracecube_engine::load::{LoadOptions, Loader};
use tracecube_engine::{Config, Warehouse};

/// The bucket the S3 set-up script creates.
const BUCKET: &str = "tracecube-test";
const ACCESS_KEY: &str = "test";
const SECRET_KEY: &str = "testsecret";

/// The endpoint of the loopback S3 server (`http://127.0.0.1:<port>`).
static ENDPOINT: LazyLock<String> = LazyLock::new(|| {
    if let Ok(endpoint) = std::env::var("TRACECUBE_TEST_S3") {
        return endpoint;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/tmp/s3");
    let out = Command::new(root.join("tests/s3/up"))
        .arg(&dir)
        .arg("--owner")
        .arg(std::process::id().to_string())
        .output()
        .expect("tests/s3/up runs");
    assert!(
        out.status.success(),
        "the S3 tests need a loopback S3 server and tests/s3/up could not boot one:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(dir.join("env")).expect("tests/s3/up writes its env file");
    env.lines()
        .find_map(|l| l.strip_prefix("TRACECUBE_TEST_S3="))
        .expect("TRACECUBE_TEST_S3 in the env file")
        .trim()
        .to_string()
});

/// `[storage]` options reaching the loopback server.
fn storage() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("endpoint".into(), ENDPOINT.clone()),
        ("access_key_id".into(), ACCESS_KEY.into()),
        ("secret_access_key".into(), SECRET_KEY.into()),
        ("region".into(), "us-east-1".into()),
        ("allow_http".into(), "true".into()),
        ("path_style".into(), "true".into()),
    ])
}

/// The test bucket, to put sources in and look at what the warehouse wrote.
fn bucket() -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(ENDPOINT.as_str())
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

/// A prefix of the bucket of its own for one test, and a local folder for its sources.
struct Place {
    prefix: String,
    local: tempfile::TempDir,
}

impl Place {
    fn new() -> Self {
        Place {
            prefix: format!("t-{}", uuid::Uuid::new_v4().simple()),
            local: tempfile::tempdir().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("s3://{BUCKET}/{}/{path}", self.prefix)
    }

    fn config(&self) -> Config {
        Config {
            warehouse: self.url("warehouse"),
            storage: storage(),
            listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            demo: false,
            ..Default::default()
        }
    }

    /// Generate `rows` traces into `files` Parquet files and put them under `name/`.
    async fn sources(&self, name: &str, rows: u64, seed: u64, files: u64) -> Vec<PathBuf> {
        let out = self.local.path().join(name);
        let opts = tracecube_datasets::GenOptions {
            rows,
            seed,
            chunk_rows: rows.div_ceil(files).max(1),
            ..Default::default()
        };
        tracecube_datasets::write_parquet(&opts, &out, false).unwrap();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in &paths {
            self.put(
                &format!("{name}/{}", path.file_name().unwrap().to_str().unwrap()),
                std::fs::read(path).unwrap(),
            )
            .await;
        }
        paths
    }

    async fn put(&self, path: &str, bytes: Vec<u8>) {
        bucket()
            .put(
                &ObjectPath::from(format!("{}/{path}", self.prefix)),
                bytes.into(),
            )
            .await
            .unwrap();
    }
}

async fn count_traces(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM traces", &[])
        .await
        .unwrap()
        .get(0)
}

async fn channel_counts(client: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    let rows = simple_rows(
        client
            .simple_query("SELECT channel, count(*) FROM traces GROUP BY 1 ORDER BY 1")
            .await
            .unwrap(),
    );
    rows.into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_on_s3_loads_from_s3_serves_and_reopens() {
    let place = Place::new();
    let (rows, seed) = (12_000, 21);
    place.sources("exports", rows, seed, 4).await;
    let warehouse = Warehouse::open(place.config()).await.unwrap();
    let record = Loader::new(&warehouse)
        .load(&[place.url("exports/*.parquet")], &LoadOptions::default())
        .await
        .unwrap();
    assert_eq!(record.rows_loaded, rows);
    assert_eq!(record.files, 4);
    // the Delta log and the data are in the bucket
    let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(bucket().list(Some(
        &ObjectPath::from(format!("{}/warehouse/traces/_delta_log", place.prefix)),
    )))
    .await
    .unwrap();
    assert!(!listed.is_empty());

    let expected = generated_channel_counts_in(rows, seed, 4);
    let server = TestServer::start(place.config()).await;
    let client = server.connect().await;
    assert_eq!(channel_counts(&client).await, expected);
    server.stop().await;

    // a reload is a no-op; a new server process sees the same data
    let again = Loader::new(&warehouse)
        .load(&[place.url("exports/")], &LoadOptions::default())
        .await
        .unwrap();
    assert_eq!((again.status.as_str(), again.files_skipped), ("no-op", 4));
    let server = TestServer::start(place.config()).await;
    let client = server.connect().await;
    assert_eq!(channel_counts(&client).await, expected);
    let loads = simple_rows(
        client
            .simple_query("SELECT status FROM tracecube.loads ORDER BY started_at")
            .await
            .unwrap(),
    );
    assert_eq!(loads, vec![vec!["committed"], vec!["no-op"]]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_of_good_and_bad_objects_fails_whole_then_quarantines() {
    let place = Place::new();
    place.sources("good", 3_000, 5, 2).await;
    place
        .put(
            "good/zz-bad.csv",
            b"contact_id,customer_id,ts,channel,declaration\n\
              b1,u1,2026-03-01T09:30:00Z,phone,Delivery/Late\n\
              b2,u2,yesterday,chat,Delivery/Late\n"
                .to_vec(),
        )
        .await;
    let warehouse = Warehouse::open(place.config()).await.unwrap();
    let error = Loader::new(&warehouse)
        .load(&[place.url("good/")], &LoadOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&place.url("good/zz-bad.csv"))
            && error.contains("column ts")
            && error.contains("yesterday"),
        "{error}"
    );
    let server = TestServer::start(place.config()).await;
    let client = server.connect().await;
    assert_eq!(count_traces(&client).await, 0);
    // the same sources over SQL, from a load location on S3, keeping the bad row
    server.stop().await;
    let mut config = place.config();
    config.load_locations = vec![place.url("good")];
    let server = TestServer::start(config).await;
    let client = server.connect().await;
    let n = client
        .execute(
            &format!(
                "COPY traces FROM '{}' WITH (ON_ERROR 'quarantine')",
                place.url("good/")
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 3_001);
    assert_eq!(
        simple_rows(
            client
                .simple_query("SELECT count(*) FROM rejects")
                .await
                .unwrap()
        ),
        vec![vec!["1"]]
    );
    // nothing outside the load locations, nothing of the warehouse itself
    for refused in [
        format!("COPY traces FROM '{}'", place.url("other/")),
        format!("COPY traces FROM '{}'", place.url("warehouse/traces/")),
    ] {
        let e = client.simple_query(&refused).await.unwrap_err();
        assert_eq!(e.as_db_error().unwrap().code().code(), "42501", "{refused}");
    }
    server.stop().await;
}

/// `tracecube load` with only the standard AWS environment variables: no `[storage]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_aws_environment_variables() {
    let place = Place::new();
    place.sources("exports", 2_000, 8, 1).await;
    let out = Command::new(env!("CARGO_BIN_EXE_tracecube"))
        .arg("load")
        .arg(place.url("exports/*.parquet"))
        .env("TRACECUBE_WAREHOUSE", place.url("warehouse"))
        .env("AWS_ENDPOINT_URL", ENDPOINT.as_str())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .current_dir(place.local.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warehouse = Warehouse::open(place.config()).await.unwrap();
    let server = TestServer::start(warehouse.config().clone()).await;
    let client = server.connect().await;
    assert_eq!(
        channel_counts(&client).await,
        generated_channel_counts_in(2_000, 8, 1)
    );
    server.stop().await;

    // a misspelt option is an error naming it, before anything is read
    let mut config = place.config();
    config.storage.insert("endpiont".into(), ENDPOINT.clone());
    let error = Warehouse::open(config).await.unwrap_err().to_string();
    assert!(error.contains("endpiont"), "{error}");
}

/// Parquet bytes of one `channel, team` table.
fn teams_parquet(rows: &[(&str, &str)]) -> Vec<u8> {
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new("team", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_query_parquet_in_place_on_s3_and_join_it_with_traces() {
    let place = Place::new();
    let (rows, seed) = (4_000, 31);
    place.sources("exports", rows, seed, 2).await;
    // hive-partitioned Parquet: region=north holds the voice channels, region=south the rest
    place
        .put(
            "teams/region=north/part-0.parquet",
            teams_parquet(&[("phone", "voice"), ("store", "voice")]),
        )
        .await;
    place
        .put(
            "teams/region=south/part-0.parquet",
            teams_parquet(&[
                ("chat", "digital"),
                ("email", "digital"),
                ("web", "digital"),
            ]),
        )
        .await;
    let warehouse = Warehouse::open(place.config()).await.unwrap();
    Loader::new(&warehouse)
        .load(&[place.url("exports/")], &LoadOptions::default())
        .await
        .unwrap();
    let mut config = place.config();
    config.external_locations = vec![place.url("teams")];
    let server = TestServer::start(config).await;
    let client = server.connect().await;
    client
        .simple_query(&format!(
            "CREATE EXTERNAL TABLE teams STORED AS PARQUET LOCATION '{}'",
            place.url("teams/")
        ))
        .await
        .unwrap();
    let by_region = simple_rows(
        client
            .simple_query("SELECT region, count(*) FROM teams GROUP BY 1 ORDER BY 1")
            .await
            .unwrap(),
    );
    assert_eq!(by_region, vec![vec!["north", "2"], vec!["south", "3"]]);
    let expected = generated_channel_counts_in(rows, seed, 2);
    let joined = simple_rows(
        client
            .simple_query(
                "SELECT e.team, e.region, count(*) FROM traces t JOIN teams e \
                 ON t.channel = e.channel GROUP BY 1, 2 ORDER BY 1",
            )
            .await
            .unwrap(),
    );
    let sum = |channels: &[&str]| -> i64 { channels.iter().map(|c| expected[*c]).sum() };
    assert_eq!(
        joined,
        vec![
            vec![
                "digital".to_string(),
                "south".to_string(),
                sum(&["chat", "email", "web"]).to_string()
            ],
            vec![
                "voice".to_string(),
                "north".to_string(),
                sum(&["phone", "store"]).to_string()
            ],
        ]
    );
    // outside the external locations: refused
    let refused = client
        .simple_query(&format!(
            "CREATE EXTERNAL TABLE w STORED AS PARQUET LOCATION '{}'",
            place.url("warehouse/traces/")
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.as_db_error().unwrap().code().code(), "42501");
    server.stop().await;
}

/// Another engine reads what Tracecube wrote: Python's `deltalake` (from PyPI, installed by
/// `tests/clients/install`) opens `traces` in the bucket and finds the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_deltalake_reads_traces_from_the_bucket() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let clients = root.join("target/tmp/clients");
    let install = Command::new(root.join("tests/clients/install"))
        .arg(&clients)
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let place = Place::new();
    place.sources("exports", 5_000, 41, 2).await;
    let warehouse = Warehouse::open(place.config()).await.unwrap();
    Loader::new(&warehouse)
        .load(&[place.url("exports/")], &LoadOptions::default())
        .await
        .unwrap();
    let server = TestServer::start(place.config()).await;
    let client = server.connect().await;
    let ours = simple_rows(
        client
            .simple_query("SELECT count(*), round(sum(effort), 6) FROM traces")
            .await
            .unwrap(),
    );
    server.stop().await;

    let script = r#"
import os, sys
from deltalake import DeltaTable
options = {
    "AWS_ENDPOINT_URL": os.environ["ENDPOINT"],
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "testsecret",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}
table = DeltaTable(sys.argv[1], storage_options=options).to_pyarrow_table(columns=["effort"])
effort = sum(v for v in table.column("effort").to_pylist() if v is not None)
print(f"{table.num_rows} {effort:.6f}")
"#;
    let out = Command::new(clients.join("venv/bin/python"))
        .arg("-c")
        .arg(script)
        .arg(place.url("warehouse/traces"))
        .env("ENDPOINT", ENDPOINT.as_str())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = String::from_utf8_lossy(&out.stdout);
    let (count, effort) = theirs.trim().split_once(' ').unwrap();
    assert_eq!(count, ours[0][0]);
    let (a, b): (f64, f64) = (effort.parse().unwrap(), ours[0][1].parse().unwrap());
    // both printed to 6 decimals, summed in different orders
    assert!((a - b).abs() <= 2e-6 + 1e-9 * b.abs(), "{a} vs {b}");
}

/// A TCP proxy in front of the S3 server that can be cut: while cut, open connections are
/// dropped and new ones closed at once, as when the endpoint goes down.
struct Proxy {
    port: u16,
    bytes: Arc<std::sync::atomic::AtomicU64>,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let upstream = ENDPOINT.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut, watch) = tokio::sync::watch::channel(false);
        let counted = Arc::clone(&bytes);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    continue; // dropped: the connection closes
                }
                let mut watch = watch.clone();
                let upstream = upstream.clone();
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let both = async {
                        tokio::join!(
                            pump(client_read, server_write, None),
                            pump(server_read, client_write, Some(&counted))
                        )
                    };
                    tokio::select! {
                        _ = both => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy {
            port,
            bytes,
            cut,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set_down(&self, down: bool) {
        self.cut.send_replace(down);
    }
}

/// Copy `from` to `to` until either ends, counting the bytes into `counted`.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    counted: Option<&std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        if let Some(counted) = counted {
            counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The endpoint goes down in the middle of a load of many objects: the load fails with an
/// error naming the store, nothing of it is visible, and once the endpoint is back the same
/// load succeeds whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_mid_load_fails_clearly_and_a_retry_loads_everything() {
    let place = Place::new();
    let (rows, seed) = (40_000, 51);
    place.sources("exports", rows, seed, 10).await;
    let proxy = Proxy::start().await;
    let mut config = place.config();
    config.storage.insert("endpoint".into(), proxy.endpoint());
    config.storage.insert("max_retries".into(), "1".into());
    config
        .storage
        .insert("retry_timeout".into(), "2 seconds".into());
    config.cubes.clear();
    let warehouse = Warehouse::open(config).await.unwrap();
    let loader = Loader::new(&warehouse);
    let sources = [place.url("exports/")];
    let options = LoadOptions::default();
    let start = proxy.bytes.load(std::sync::atomic::Ordering::Relaxed);
    let load = loader.load(&sources, &options);
    let cut = async {
        // down once the load has read a few objects
        while proxy.bytes.load(std::sync::atomic::Ordering::Relaxed) < start + 400_000 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        proxy.set_down(true);
    };
    let (result, ()) = tokio::join!(load, cut);
    let error = result
        .expect_err("the load fails while the endpoint is down")
        .to_string();
    assert!(
        error.contains(&place.prefix) || error.contains(&proxy.endpoint()),
        "the error names the object or the endpoint: {error}"
    );

    // nothing of it is visible (read through the real endpoint)
    let direct = Warehouse::open(place.config()).await.unwrap();
    let server = TestServer::start(direct.config().clone()).await;
    let client = server.connect().await;
    assert_eq!(count_traces(&client).await, 0);
    server.stop().await;

    // back up: the same load succeeds, whole
    proxy.set_down(false);
    let record = loader.load(&sources, &options).await.unwrap();
    assert_eq!(record.rows_loaded, rows);
    let server = TestServer::start(direct.config().clone()).await;
    let client = server.connect().await;
    assert_eq!(
        channel_counts(&client).await,
        generated_channel_counts_in(rows, seed, 10)
    );
    server.stop().await;
}

/// `tracecube load` killed at several points of a load from S3 into a warehouse on S3: the
/// table is exactly as before or as after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_load_killed_mid_way_leaves_the_s3_warehouse_as_before_or_after() {
    let place = Place::new();
    place.sources("base", 2_000, 61, 1).await;
    place.sources("big", 120_000, 62, 6).await;
    let warehouse = Warehouse::open(place.config()).await.unwrap();
    Loader::new(&warehouse)
        .load(&[place.url("base/")], &LoadOptions::default())
        .await
        .unwrap();
    let count = || async {
        let server = TestServer::start(place.config()).await;
        let n = count_traces(&server.connect().await).await;
        server.stop().await;
        n
    };
    for delay_ms in [300u64, 1_200, 3_000] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracecube"))
            .arg("load")
            .arg(place.url("big/"))
            .env("TRACECUBE_WAREHOUSE", place.url("warehouse"))
            .env("AWS_ENDPOINT_URL", ENDPOINT.as_str())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true")
            .current_dir(place.local.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        let _ = child.kill();
        let _ = child.wait();
        let n = count().await;
        assert!(
            n == 2_000 || n == 122_000,
            "after a kill at {delay_ms} ms: {n} rows"
        );
        if n == 122_000 {
            break;
        }
    }
    Loader::new(&warehouse)
        .load(&[place.url("big/")], &LoadOptions::default())
        .await
        .unwrap();
    assert_eq!(count().await, 122_000);
}
