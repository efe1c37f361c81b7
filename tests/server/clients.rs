//! The client matrix: real clients (psql, psycopg 3, psycopg2, asyncpg, SQLAlchemy with
//! pandas, node-postgres, pgjdbc) against a server with users and TLS, each checking real
//! answers; and the catalog queries BI tools (Metabase, Grafana, DBeaver, pgAdmin, pgcli)
//! send on connect, replayed as a reader. The clients are installed by
//! `tests/clients/install` (under target/tmp/clients).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::access::{certificate, users};
use crate::common::{TestServer, TestWarehouse, generated_channel_counts};

const ROWS: u64 = 3_000;
const SEED: u64 = 11;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("clients")
}

fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// The queries of `catalog_queries.sql`, with the tool that sends each.
fn catalog_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(source("catalog_queries.sql")).unwrap();
    let mut queries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(tool) = line.strip_prefix("-- @") {
            queries.push((tool.trim().to_string(), String::new()));
        } else if let Some((_, query)) = queries.last_mut() {
            query.push_str(line);
            query.push('\n');
        }
    }
    queries
}

/// Run `command` (blocking, off the server's runtime): its standard output, or a panic
/// with everything it printed.
async fn run(mut command: Command) -> String {
    let shown = format!("{command:?}");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{shown} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_connect_with_scram_over_tls_and_get_real_answers() {
    let dir = clients_dir();
    let mut install = Command::new(source("install"));
    install.arg(&dir);
    run(install).await;

    let wh = TestWarehouse::with(|c| c.users = users()).await;
    let src = wh.generate("src", ROWS, SEED);
    wh.load(&[&src], Default::default()).await.unwrap();
    let tls = certificate(wh.dir.path());
    let root_cert = tls.cert.clone();
    let mut config = wh.config();
    config.tls = Some(tls);
    let server = TestServer::start(config).await;
    let phone = generated_channel_counts(ROWS, SEED)["phone"];

    // What BI tools send on connect, as a reader.
    let ana = server
        .connect_with("user=ana password=ana-pw")
        .await
        .unwrap();
    for (tool, query) in catalog_queries() {
        let result = ana.simple_query(&query).await;
        if tool.ends_with("known-gap") {
            assert!(
                result.is_err(),
                "{tool} now works: drop its known-gap mark\n{query}"
            );
        } else if let Err(e) = result {
            panic!("{tool} query failed: {e:?}\n{query}");
        }
    }

    let client = |program: &str| {
        let mut command = Command::new(program);
        command
            .env("PGHOST", "localhost")
            .env("PGPORT", server.port.to_string())
            .env("PGUSER", "ana")
            .env("PGPASSWORD", "ana-pw")
            .env("PGDATABASE", "tracecube")
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &root_cert)
            .env("PGCONNECT_TIMEOUT", "20")
            .env("EXPECT_TRACES", ROWS.to_string())
            .env("EXPECT_PHONE", phone.to_string());
        command
    };

    // psql's describe commands
    let psql = |meta: &str| {
        let mut command = client("psql");
        command.args(["-X", "-A", "-v", "ON_ERROR_STOP=1", "-c", meta]);
        command
    };
    for (meta, expected) in [
        ("\\dt", vec!["traces", "impact_weights"]),
        (
            "\\d traces",
            vec!["channel", "declaration", "timestamp with time zone"],
        ),
        ("\\l", vec!["tracecube"]),
        ("\\dn", vec!["public", "tracecube"]),
        ("\\dv", vec!["journeys", "journey_summary"]),
        (
            "\\df",
            vec!["path_prefix", "p text, n integer", "impact", "agg"],
        ),
    ] {
        let out = run(psql(meta)).await;
        for word in expected {
            assert!(out.contains(word), "psql {meta}: no {word} in\n{out}");
        }
    }
    let mut expanded = client("psql");
    expanded.args(["-X", "-c", "\\x", "-c", "SELECT count(*) AS n FROM traces"]);
    let out = run(expanded).await;
    assert!(out.contains(&format!("n | {ROWS}")), "psql \\x:\n{out}");

    let mut python = client(dir.join("venv/bin/python").to_str().unwrap());
    python.arg(source("python_clients.py"));
    let out = run(python).await;
    for name in ["psycopg3", "psycopg2", "asyncpg", "sqlalchemy+pandas"] {
        assert!(out.contains(&format!("ok {name}")), "{out}");
    }

    let mut node = client("node");
    node.arg(source("node_pg.js"))
        .env("NODE_PATH", dir.join("node/node_modules"));
    assert!(run(node).await.contains("ok node-postgres"));

    let mut java = client("java");
    java.args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(source("Jdbc.java"));
    assert!(run(java).await.contains("ok pgjdbc"));
    server.stop().await;
}
