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
    assert_eq!(
        simple_rows(
            client
                .simple_query("SELECT count(*) FROM traces")
                .await
                .unwrap()
        ),
        vec![vec!["0"]]
    );
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
