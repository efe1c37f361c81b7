//! Users, roles and passwords; the places SQL may write and read; TLS; statement timeout,
//! cancel requests and the memory limit; the metrics endpoint.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{ok, sqlstate};
use crate::common::{TestServer, TestWarehouse};
use tracecube_engine::Config;
use tracecube_engine::config::{TlsConfig, UserConfig};
use tracecube_engine::server::policy::Role;
use tracecube_engine::server::scram::Verifier;

/// The verifier `tracecube passwd` prints for `password` given on standard input.
fn passwd(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracecube"))
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn user(name: &str, role: Role, verifier: String) -> UserConfig {
    UserConfig {
        name: name.into(),
        role,
        password: verifier,
    }
}

/// ana (reader), lou (loader), root (admin); passwords `<name>-pw`. The verifiers come from
/// three makers: PostgreSQL's client library, `tracecube passwd`, and the engine itself.
pub(super) fn users() -> Vec<UserConfig> {
    vec![
        user(
            "ana",
            Role::Reader,
            postgres_protocol::password::scram_sha_256(b"ana-pw"),
        ),
        user("lou", Role::Loader, passwd("lou-pw")),
        user("root", Role::Admin, Verifier::new("root-pw").to_string()),
    ]
}

async fn login_error(server: &TestServer, params: &str) -> String {
    match server.connect_with(params).await {
        Ok(_) => panic!("{params}: connected"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| format!("client-side: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_log_in_with_scram_and_each_role_runs_only_its_statements() {
    let wh = TestWarehouse::with(|c| c.users = users()).await;
    let src = wh.generate("src", 2_000, 3);
    wh.load(&[&src], Default::default()).await.unwrap();
    let server = TestServer::start(wh.config()).await;

    // Passwords: right, wrong, none; unknown users; no more default user.
    assert_eq!(
        login_error(&server, "user=ana password=wrong").await,
        "28P01"
    );
    assert_eq!(
        login_error(&server, "user=nobody password=x").await,
        "28000"
    );
    assert_eq!(
        login_error(&server, "user=tracecube password=x").await,
        "28000"
    );
    assert!(
        login_error(&server, "user=ana")
            .await
            .starts_with("client-side")
    );
    let ana = server
        .connect_with("user=ana password=ana-pw")
        .await
        .unwrap();
    let lou = server
        .connect_with("user=lou password=lou-pw")
        .await
        .unwrap();
    let root = server
        .connect_with("user=root password=root-pw")
        .await
        .unwrap();
    assert_eq!(
        ok(&ana, "SELECT current_user, session_user AS s").await,
        [["ana", "ana"]]
    );
    assert_eq!(ok(&root, "SELECT current_user").await, [["root"]]);

    // reader: queries, SHOW, EXPLAIN, SET; nothing else
    assert_eq!(ok(&ana, "SELECT count(*) FROM traces").await, [["2000"]]);
    ok(&ana, "SHOW server_version").await;
    ok(&ana, "EXPLAIN SELECT count(*) FROM traces").await;
    ok(&ana, "SET tracecube.use_cubes = off").await;
    for sql in [
        "INSERT INTO impact_weights VALUES ('channel', 'phone', 2.0)",
        "DELETE FROM impact_weights",
        "EXPLAIN ANALYZE DELETE FROM impact_weights",
        "CREATE TABLE mine AS SELECT 1 AS x",
        "CREATE VIEW v AS SELECT 1 AS x",
        "INSERT INTO traces SELECT * FROM traces LIMIT 1",
        "CREATE SCHEMA s",
    ] {
        assert_eq!(sqlstate(&ana, sql).await, "42501", "reader: {sql}");
    }
    // a cursor's query is checked, over both protocols
    let declare = "DECLARE c CURSOR FOR SELECT 1 AS x INTO reader_table";
    assert_eq!(sqlstate(&ana, declare).await, "42501");
    let refused = ana.execute(declare, &[]).await.unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"));
    assert_eq!(sqlstate(&ana, "SELECT * FROM reader_table").await, "42P01");
    // the extended protocol is checked the same way
    let refused = ana
        .execute("DELETE FROM impact_weights WHERE key = $1", &[&"x"])
        .await
        .unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"));

    // loader: + INSERT INTO traces (not refused for its role); no weights, no DDL
    assert_ne!(
        sqlstate(&lou, "INSERT INTO traces SELECT * FROM traces LIMIT 0").await,
        "42501"
    );
    for sql in [
        "INSERT INTO impact_weights VALUES ('channel', 'phone', 2.0)",
        "CREATE TABLE mine AS SELECT 1 AS x",
    ] {
        assert_eq!(sqlstate(&lou, sql).await, "42501", "loader: {sql}");
    }

    // admin: weights and the connection's own objects
    ok(
        &root,
        "INSERT INTO impact_weights VALUES ('channel', 'phone', 2.0)",
    )
    .await;
    assert_eq!(
        ok(
            &ana,
            "SELECT count(*) FROM impact_weights WHERE key = 'phone'"
        )
        .await,
        [["1"]]
    );
    // over the extended protocol, a DELETE answers its count as a command tag
    let deleted = root
        .execute("DELETE FROM impact_weights WHERE key = $1", &[&"phone"])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    ok(&root, "CREATE TABLE mine AS SELECT 1 AS x").await;
    // still no server file, configured nowhere
    let target = wh.path("x.csv");
    let copy = format!("COPY (SELECT 1) TO '{}'", target.display());
    assert_eq!(sqlstate(&root, &copy).await, "42501");
    assert!(!target.exists());

    // tracecube.queries: one's own queries; an admin sees everyone's
    let seen = |rows: Vec<Vec<String>>| {
        let mut users: Vec<String> = rows.into_iter().map(|r| r[0].clone()).collect();
        users.sort();
        users.dedup();
        users
    };
    let sql = "SELECT DISTINCT user_name FROM tracecube.queries";
    assert_eq!(seen(ok(&ana, sql).await), ["ana"]);
    assert_eq!(seen(ok(&root, sql).await), ["ana", "lou", "root"]);
    let refused = "SELECT count(*) FROM tracecube.queries WHERE sqlstate = '42501'";
    assert_ne!(ok(&ana, refused).await, [["0"]]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_passwords_and_open_listening_without_users_are_refused_at_start() {
    let mut config = Config {
        users: vec![user("ana", Role::Reader, "hunter2-secret".into())],
        ..Default::default()
    };
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("plaintext"), "{error}");
    assert!(!error.contains("hunter2"), "the password is shown: {error}");
    assert!(!format!("{:?}", config.users).contains("hunter2"));

    config.users.clear();
    let wh = TestWarehouse::new().await;
    let mut config = wh.config();
    config.listen = "0.0.0.0:0".into();
    let Err(error) = tracecube_engine::app::prepare_server(config, false).await else {
        panic!("listening on every address with no users was accepted");
    };
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_write_only_inside_export_dir_and_read_only_inside_external_locations() {
    let wh = TestWarehouse::new().await;
    let (exports, shared) = (wh.path("exports"), wh.path("shared"));
    std::fs::create_dir_all(&shared).unwrap();
    let mut config = wh.config();
    config.export_dir = Some(exports.display().to_string());
    config.external_locations = vec![shared.display().to_string()];
    config.users = users();
    let server = TestServer::start(config).await;
    let root = server
        .connect_with("user=root password=root-pw")
        .await
        .unwrap();
    let ana = server
        .connect_with("user=ana password=ana-pw")
        .await
        .unwrap();

    let inside = exports.join("one.parquet");
    let copy = |to: &Path| format!("COPY (SELECT 7 AS x) TO '{}'", to.display());
    assert_eq!(sqlstate(&ana, &copy(&inside)).await, "42501");
    ok(&root, &copy(&inside)).await;
    assert!(inside.exists());
    for outside in [
        wh.path("escape.parquet"),
        exports.join("..").join("escape.parquet"),
        Path::new("relative.parquet").to_path_buf(),
    ] {
        assert_eq!(
            sqlstate(&root, &copy(&outside)).await,
            "42501",
            "{outside:?}"
        );
        assert!(!outside.exists());
    }
    // URLs as DataFusion reads them: file://, file:/ (no authority)
    for url in [
        format!("file://{}", wh.path("url.parquet").display()),
        format!("file:{}", wh.path("url.parquet").display()),
    ] {
        let copy = format!("COPY (SELECT 1) TO '{url}'");
        assert_eq!(sqlstate(&root, &copy).await, "42501", "{url}");
    }
    assert!(!wh.path("url.parquet").exists());

    std::fs::copy(&inside, shared.join("one.parquet")).unwrap();
    // a link inside the shared folder to a file outside it reads outside: refused
    std::os::unix::fs::symlink(&inside, shared.join("link.parquet")).unwrap();
    let external = |name: &str, at: &Path| {
        format!(
            "CREATE EXTERNAL TABLE {name} STORED AS PARQUET LOCATION '{}'",
            at.display()
        )
    };
    assert_eq!(
        sqlstate(&ana, &external("e", &shared.join("one.parquet"))).await,
        "42501"
    );
    ok(&root, &external("e", &shared.join("one.parquet"))).await;
    assert_eq!(ok(&root, "SELECT x FROM e").await, [["7"]]);
    // an external table is read-only: inserting would write files
    assert_eq!(sqlstate(&root, "INSERT INTO e VALUES (8)").await, "42501");
    let files = std::fs::read_dir(&shared).unwrap().count();
    assert_eq!(files, 2, "a file was written into the shared folder");
    // the folder itself holds that link: reading it would follow the link out
    for outside in [inside.clone(), shared.join("link.parquet"), shared.clone()] {
        assert_eq!(
            sqlstate(&root, &external("o", &outside)).await,
            "42501",
            "{outside:?}"
        );
    }
    std::fs::remove_file(shared.join("link.parquet")).unwrap();
    ok(&root, &external("o", &shared)).await;
    assert_eq!(ok(&root, "SELECT count(*) FROM o").await, [["1"]]);
    server.stop().await;
}

/// A statement that runs until stopped.
const ENDLESS: &str = "SELECT sum(v) FROM generate_series(1, 1000000000000) AS t(v)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_cancel_requests_stop_a_statement_with_57014_and_the_session_goes_on() {
    let wh = TestWarehouse::new().await;
    let mut config = wh.config();
    config.statement_timeout = 60_000;
    let server = TestServer::start(config).await;
    let a = server.connect().await;
    assert_eq!(ok(&a, "SHOW statement_timeout").await, [["60000ms"]]);

    ok(&a, "SET statement_timeout = '200ms'").await;
    let e = a.simple_query(ENDLESS).await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "57014");
    assert!(db.message().contains("statement timeout"), "{db:?}");
    // over the extended protocol too
    let e = a.query(ENDLESS, &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("57014"));
    assert_eq!(ok(&a, "SELECT 1").await, [["1"]]);

    // a cancel request (psql's Ctrl-C) from another connection
    // statements of one query run one after the other: the first that fails ends it
    let both = format!("{ENDLESS}; CREATE TABLE ran_anyway AS SELECT 1 AS x");
    assert_eq!(sqlstate(&a, &both).await, "57014");
    assert_eq!(sqlstate(&a, "SELECT * FROM ran_anyway").await, "42P01");
    let rows = ok(&a, "SELECT 1 AS a; SELECT 2 AS b").await;
    assert_eq!(rows, [["1"], ["2"]]);

    ok(&a, "SET statement_timeout = 0").await;
    let token = a.cancel_token();
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let e = a.simple_query(ENDLESS).await.unwrap_err();
    cancel.await.unwrap();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "57014");
    assert!(db.message().contains("user request"), "{db:?}");
    assert_eq!(ok(&a, "SELECT 2").await, [["2"]]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_memory_limit_fails_alone_with_53200() {
    let wh = TestWarehouse::new().await;
    let mut config = wh.config();
    config.memory_limit_mb = 4;
    let server = TestServer::start(config).await;
    let (a, b) = (server.connect().await, server.connect().await);
    // a hash join's build side cannot spill
    let join = "SELECT count(*) FROM generate_series(1, 3000000) AS l(x) \
                JOIN generate_series(1, 3000000) AS r(y) ON x = y";
    assert_eq!(sqlstate(&a, join).await, "53200");
    assert_eq!(
        ok(&b, "SELECT count(*) FROM generate_series(1, 1000)").await,
        [["1000"]]
    );
    assert_eq!(ok(&a, "SELECT 1").await, [["1"]]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_queries_rows_bytes_and_cube_answers() {
    let wh = TestWarehouse::new().await;
    let src = wh.generate("src", 2_000, 5);
    wh.load(&[&src], Default::default()).await.unwrap();
    let server = TestServer::start(wh.config()).await;
    let a = server.connect().await;
    ok(&a, "SELECT channel, count(*) FROM traces GROUP BY channel").await;
    ok(&a, "SET tracecube.use_cubes = off").await;
    ok(&a, "SELECT customer_id FROM traces LIMIT 5").await;
    assert_eq!(sqlstate(&a, "SELECT nope FROM traces").await, "42703");

    let (status, health) = server.http_get("/healthz").await;
    assert_eq!(
        (status.as_str(), health.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, text) = server.http_get("/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("tracecube_connections "), 1.0);
    assert!(value("tracecube_queries_total{status=\"ok\",role=\"admin\"}") >= 3.0);
    assert_eq!(
        value("tracecube_queries_total{status=\"error\",role=\"admin\"}"),
        1.0
    );
    assert!(value("tracecube_rows_returned_total") >= 5.0);
    assert!(value("tracecube_bytes_scanned_total") > 0.0);
    assert!(value("tracecube_cube_answers_total{cube=") >= 1.0);
    assert!(value("tracecube_query_duration_seconds_count") >= 4.0);
    assert_eq!(value("tracecube_loads{status=\"committed\"}"), 1.0);
    assert_eq!(
        server.http_get("/nothing").await.0,
        "HTTP/1.1 404 Not Found"
    );
    server.stop().await;
}

/// A self-signed certificate for localhost and 127.0.0.1, made with openssl.
pub(super) fn certificate(dir: &Path) -> TlsConfig {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    TlsConfig {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        tls_only: false,
    }
}

/// `psql -c sql` with this connection string: its output, or its error.
fn psql(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            conninfo,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql is installed");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_with_require_and_verify_full_work_and_tls_only_refuses_plain() {
    let wh = TestWarehouse::new().await;
    let mut tls = certificate(wh.dir.path());
    let root_cert = tls.cert.clone();
    tls.tls_only = true;
    let mut config = wh.config();
    config.tls = Some(tls);
    config.users = users();
    let server = TestServer::start(config).await;
    let port = server.port;
    let run = move |conninfo: String, sql: &'static str| {
        tokio::task::spawn_blocking(move || psql(&conninfo, "ana-pw", sql))
    };
    let base = format!("host=localhost port={port} user=ana dbname=tracecube");
    let require = run(
        format!("{base} sslmode=require"),
        "SELECT ssl FROM (SELECT true AS ssl) t",
    );
    assert_eq!(require.await.unwrap().unwrap(), "t");
    let verify = run(
        format!("{base} sslmode=verify-full sslrootcert={root_cert}"),
        "SELECT current_user",
    );
    assert_eq!(verify.await.unwrap().unwrap(), "ana");
    let plain = run(format!("{base} sslmode=disable"), "SELECT 1");
    let error = plain.await.unwrap().unwrap_err();
    assert!(error.contains("TLS"), "{error}");
    server.stop().await;
}
