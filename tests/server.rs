//! End-to-end: the real server on a free loopback port, queried with tokio-postgres over
//! the simple and the extended protocol.

mod access;
mod clients;
mod copy_from;

use std::collections::BTreeMap;

use crate::common::{TestServer, TestWarehouse, generated_channel_counts, simple_rows};

const ROWS: u64 = 20_000;
const SEED: u64 = 7;

async fn loaded_server() -> (TestWarehouse, TestServer) {
    let wh = TestWarehouse::new().await;
    let src = wh.generate("src", ROWS, SEED);
    wh.load(&[&src], Default::default()).await.unwrap();
    let server = TestServer::start(wh.config()).await;
    (wh, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_per_channel_equal_the_generators_over_both_protocols() {
    let (_wh, server) = loaded_server().await;
    let client = server.connect().await;
    let expected = generated_channel_counts(ROWS, SEED);

    let simple = simple_rows(
        client
            .simple_query("SELECT channel, count(*) FROM traces GROUP BY 1 ORDER BY 1")
            .await
            .unwrap(),
    );
    let simple: BTreeMap<String, i64> = simple
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    assert_eq!(simple, expected);

    let extended: BTreeMap<String, i64> = client
        .query(
            "SELECT channel, count(*) AS n FROM traces WHERE channel <> $1 GROUP BY channel",
            &[&"nothing"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    assert_eq!(extended, expected);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_level_drilldown_sums_back_to_each_parent() {
    let (_wh, server) = loaded_server().await;
    let client = server.connect().await;
    let rows = client
        .query(
            "SELECT split_part(declaration, '/', 1) AS l1, split_part(declaration, '/', 2) AS l2, \
                    declaration AS l3, count(*) AS n \
             FROM traces GROUP BY 1, 2, 3",
            &[],
        )
        .await
        .unwrap();
    let mut l1: BTreeMap<String, i64> = BTreeMap::new();
    let mut l2: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in &rows {
        let (a, b, n) = (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(3),
        );
        *l1.entry(a.clone()).or_default() += n;
        *l2.entry((a, b)).or_default() += n;
    }
    let level1 = client
        .query(
            "SELECT split_part(declaration, '/', 1), count(*) FROM traces GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(level1.len(), l1.len());
    for r in &level1 {
        let parent: String = r.get(0);
        assert_eq!(r.get::<_, i64>(1), l1[&parent], "level 1 {parent}");
        let children: i64 = l2
            .iter()
            .filter(|((a, _), _)| *a == parent)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(children, l1[&parent], "level 2 under {parent}");
    }
    let level2 = client
        .query(
            "SELECT split_part(declaration, '/', 1), split_part(declaration, '/', 2), count(*) FROM traces GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    for r in &level2 {
        let key = (r.get::<_, String>(0), r.get::<_, String>(1));
        assert_eq!(
            r.get::<_, i64>(2),
            l2[&key],
            "level 2 {key:?} sums its leaves"
        );
    }
    let total: i64 = l1.values().sum();
    assert_eq!(total, ROWS as i64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_catalog_queries_list_traces_and_its_columns() {
    let (_wh, server) = loaded_server().await;
    let client = server.connect().await;
    // What psql sends for \dt.
    let dt = simple_rows(
        client
            .simple_query(
                "SELECT n.nspname as \"Schema\", c.relname as \"Name\", \
                 CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' END as \"Type\" \
                 FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r','p','v','') AND n.nspname <> 'pg_catalog' \
                 AND n.nspname !~ '^pg_toast' AND n.nspname <> 'information_schema' \
                 AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2;",
            )
            .await
            .unwrap(),
    );
    assert!(dt.iter().any(|r| r[1] == "traces"), "{dt:?}");
    let columns: Vec<String> = client
        .query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'traces' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in [
        "contact_id",
        "declaration",
        "life_stage",
        "tenure_year",
        "day",
        "minute",
        "pain",
        "effort",
    ] {
        assert!(
            columns.iter().any(|x| x == c),
            "{c} missing from {columns:?}"
        );
    }
    let loads = client
        .query("SELECT status, rows_loaded FROM tracecube.loads", &[])
        .await
        .unwrap();
    assert_eq!(loads.len(), 1);
    assert_eq!(loads[0].get::<_, i64>(1), ROWS as i64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_tracecube_user_may_connect_without_configured_users() {
    let wh = TestWarehouse::new().await;
    let server = TestServer::start(wh.config()).await;
    let Err(err) = server.connect_as("postgres").await else {
        panic!("a user other than tracecube was accepted");
    };
    let db = err.as_db_error().expect("a PostgreSQL error");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("tracecube"), "{}", db.message());
    let client = server.connect().await;
    let rows = client
        .query("SELECT count(*) FROM traces", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sees_a_load_committed_by_another_loader() {
    let wh = TestWarehouse::new().await;
    let server = TestServer::start(wh.config()).await;
    let client = server.connect().await;
    let before: i64 = client
        .query_one("SELECT count(*) FROM traces", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, 0);
    // A second warehouse handle, as another process would have, loads new traces.
    let other = tracecube_engine::Warehouse::open(wh.config())
        .await
        .unwrap();
    let src = wh.generate("later", 3_000, 5);
    tracecube_engine::load::Loader::new(&other)
        .load(&[src.display().to_string()], &Default::default())
        .await
        .unwrap();
    // Tables are re-checked for new versions at most once a second.
    let mut seen: i64 = 0;
    for _ in 0..50 {
        seen = client
            .query_one("SELECT count(*) FROM traces", &[])
            .await
            .unwrap()
            .get(0);
        if seen == 3_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(seen, 3_000);
    server.stop().await;
}

/// The SQLSTATE of a failed statement (simple protocol).
async fn sqlstate(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(e) => e
            .as_db_error()
            .unwrap_or_else(|| panic!("{sql}: {e:?}"))
            .code()
            .code()
            .to_string(),
    }
}

async fn ok(client: &tokio_postgres::Client, sql: &str) -> Vec<Vec<String>> {
    match client.simple_query(sql).await {
        Ok(m) => simple_rows(m),
        Err(e) => panic!("{sql}: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sql_touches_server_files_or_tracecube_objects_and_connections_are_isolated() {
    let (wh, server) = loaded_server().await;
    let (a, b) = (server.connect().await, server.connect().await);

    // Server files: never written, never read.
    let target = wh.path("written-by-copy.csv");
    let copy = format!("COPY (SELECT 1) TO '{}'", target.display());
    assert_eq!(sqlstate(&a, &copy).await, "42501");
    assert!(!target.exists());
    let parquet = wh.generate("outside", 10, 1);
    let external = format!(
        "CREATE EXTERNAL TABLE outside STORED AS PARQUET LOCATION '{}'",
        parquet.display()
    );
    assert_eq!(sqlstate(&a, &external).await, "42501");
    assert_eq!(sqlstate(&a, "SELECT count(*) FROM outside").await, "42P01");
    assert_eq!(
        sqlstate(&a, "SET datafusion.runtime.temp_directory = '/tmp'").await,
        "42501"
    );
    let quoted = "SET \"datafusion\".\"runtime\".\"memory_limit\" = '1K'";
    let e = a.query(quoted, &[]).await.unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("42501"),
        "{e:?}"
    );
    // Each statement of a simple query is checked just before it runs, over what the
    // statements before it did, and one that does not plan does not run.
    let batch = format!(
        "CREATE TABLE staged AS SELECT 'x' AS a; COPY staged TO '{}'",
        target.display()
    );
    assert_eq!(sqlstate(&a, &batch).await, "42501");
    ok(&a, "SET datafusion.sql_parser.recursion_limit = 3").await;
    let batch = format!(
        "SET datafusion.sql_parser.recursion_limit = 50; \
         COPY (SELECT ((((((('x'))))))) AS a) TO '{}'",
        target.display()
    );
    assert_eq!(sqlstate(&a, &batch).await, "42501");
    assert!(!target.exists());

    // Tracecube's tables, views and schemas: read-only for everyone, over both protocols.
    let traces = ok(&b, "SELECT count(*) FROM traces").await;
    for sql in [
        "DROP VIEW journeys",
        "DROP TABLE traces",
        "DROP TABLE public.impact_weights",
        "CREATE VIEW traces AS SELECT 1 AS x",
        "CREATE OR REPLACE VIEW journey_summary AS SELECT 1 AS x",
        "CREATE TABLE \"public\".\"rejects\" AS SELECT 1 AS x",
        "DELETE FROM traces",
        "EXPLAIN ANALYZE DELETE FROM traces",
        "UPDATE traces SET channel = 'x'",
        "INSERT INTO tracecube.loads SELECT * FROM tracecube.loads",
        "DROP SCHEMA tracecube",
        "CREATE SCHEMA pg_catalog",
    ] {
        assert_eq!(sqlstate(&a, sql).await, "42501", "{sql}");
        let extended = a.query(sql, &[]).await.unwrap_err();
        let code = extended.as_db_error().map(|d| d.code().code().to_string());
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "{sql} (extended): {extended:?}"
        );
    }
    assert_eq!(ok(&b, "SELECT count(*) FROM traces").await, traces);
    assert_eq!(ok(&b, "SELECT count(*) > 0 FROM journeys").await, [["t"]]);

    // A connection's own objects and settings are its own.
    ok(&a, "CREATE TABLE mine AS SELECT 1 AS x").await;
    ok(
        &a,
        "CREATE VIEW my_channels AS SELECT DISTINCT channel FROM traces",
    )
    .await;
    assert_eq!(ok(&a, "SELECT x FROM mine").await, [["1"]]);
    assert_eq!(sqlstate(&b, "SELECT x FROM mine").await, "42P01");
    assert_eq!(sqlstate(&b, "SELECT * FROM my_channels").await, "42P01");
    ok(&b, "CREATE TABLE mine AS SELECT 2 AS x").await;
    assert_eq!(ok(&a, "SELECT x FROM mine").await, [["1"]]);
    ok(&a, "DROP VIEW my_channels").await;
    let batch = "SELECT value FROM information_schema.df_settings \
                 WHERE name = 'datafusion.execution.batch_size'";
    let before = ok(&b, batch).await;
    ok(&a, "SET datafusion.execution.batch_size = 123").await;
    assert_eq!(ok(&a, batch).await, [["123"]]);
    assert_eq!(ok(&b, batch).await, before);
    // Tracecube's settings live in the same per-connection options.
    let cubes = "SELECT value FROM information_schema.df_settings \
                 WHERE name = 'tracecube.use_cubes'";
    assert_eq!(ok(&a, cubes).await, [["on"]]);
    ok(&a, "SET \"tracecube\".\"use_cubes\" TO FALSE").await;
    assert_eq!(ok(&a, cubes).await, [["off"]]);
    assert_eq!(ok(&a, "SHOW tracecube.use_cubes").await, [["off"]]);
    assert_eq!(ok(&b, cubes).await, [["on"]]);
    for (sql, code) in [
        ("SET tracecube.use_cubes = sometimes", "22023"),
        ("SET tracecube.no_such_setting = on", "42704"),
        ("SHOW tracecube.no_such_setting", "42704"),
        ("SET datafusion.execution.batch_size = 'many'", "22023"),
        ("SET datafusion.no_such.setting = 1", "42501"),
        ("SET datafusion.execution.target_partitions = 5000", "42501"),
        (
            "SET SESSION datafusion.execution.batch_size = 10000000",
            "42501",
        ),
        ("SET datafusion.execution.time_zone = 'garbage'", "22023"),
        ("SET TIME ZONE 'Mars/Olympus_Mons'", "22023"),
        ("SET timezone = '+99'", "22023"),
        ("SET server_version = '99'", "55P02"),
    ] {
        assert_eq!(sqlstate(&a, sql).await, code, "{sql}");
        let extended = a.query(sql, &[]).await.unwrap_err();
        let got = extended.as_db_error().map(|d| d.code().code().to_string());
        assert_eq!(got.as_deref(), Some(code), "{sql} (extended): {extended:?}");
    }
    assert_eq!(ok(&a, cubes).await, [["off"]]);
    assert_eq!(ok(&a, batch).await, [["123"]]);
    // The time zone: how instants without an offset are read, and what now() gives.
    let midnight = "SELECT CAST('2026-01-01 00:00:00' AS TIMESTAMP WITH TIME ZONE) \
                    = CAST('2026-01-01 05:00:00+00:00' AS TIMESTAMP WITH TIME ZONE)";
    assert_eq!(ok(&a, midnight).await, [["f"]]);
    ok(&a, "SET TIME ZONE 'America/New_York'").await;
    assert_eq!(ok(&a, midnight).await, [["t"]]);
    assert_eq!(ok(&a, "SHOW TIME ZONE").await, [["America/New_York"]]);
    assert_eq!(ok(&a, "SHOW timezone").await, [["America/New_York"]]);
    let now = ok(&a, "SELECT arrow_typeof(now())").await;
    assert!(now[0][0].contains("America/New_York"), "{now:?}");
    assert_eq!(ok(&b, midnight).await, [["f"]]);
    assert_eq!(ok(&b, "SHOW TIME ZONE").await, [["Etc/UTC"]]);
    ok(&a, "SET TIME ZONE -5").await;
    assert_eq!(ok(&a, midnight).await, [["t"]]);
    ok(&a, "SET timezone TO 'UTC+5'").await; // POSIX: five hours west
    assert_eq!(ok(&a, midnight).await, [["t"]]);
    ok(&a, "SET TIME ZONE LOCAL").await;
    assert_eq!(ok(&a, midnight).await, [["f"]]);
    assert_eq!(ok(&a, "SHOW TIME ZONE").await, [["Etc/UTC"]]);
    // names in any case; a number shown as PostgreSQL shows it, and read back the same
    ok(&a, "SET timezone = 'america/new_york'").await;
    assert_eq!(ok(&a, "SHOW TIME ZONE").await, [["America/New_York"]]);
    ok(&a, "SET TIME ZONE -5").await;
    let shown = ok(&a, "SHOW TIME ZONE").await;
    assert_eq!(shown, [["<-05:00>+05:00"]]);
    ok(&a, &format!("SET TIME ZONE '{}'", shown[0][0])).await;
    assert_eq!(ok(&a, midnight).await, [["t"]]);
    // a number of seconds is an instant in every zone; results leave in UTC
    ok(&a, "SET TIME ZONE 'Asia/Kathmandu'").await;
    let epoch = "SELECT to_timestamp(1774742400) \
                 = CAST('2026-03-29 00:00:00+00:00' AS TIMESTAMP WITH TIME ZONE)";
    assert_eq!(ok(&a, epoch).await, [["t"]]);
    let kathmandu = ok(
        &a,
        "SELECT CAST('2026-01-01 05:45:00' AS TIMESTAMP WITH TIME ZONE)",
    )
    .await;
    assert!(
        kathmandu[0][0].starts_with("2026-01-01 00:00:00"),
        "{kathmandu:?}"
    );
    assert!(kathmandu[0][0].ends_with("+00"), "{kathmandu:?}");
    ok(&a, "RESET timezone").await;
    assert_eq!(ok(&a, "SHOW TIME ZONE").await, [["Etc/UTC"]]);
    assert_eq!(ok(&a, epoch).await, [["t"]]);

    // SET SESSION, TO DEFAULT, RESET, RESET ALL, DISCARD ALL
    ok(&a, "SET SESSION tracecube.use_cubes = on").await;
    assert_eq!(ok(&a, cubes).await, [["on"]]);
    ok(&a, "SET tracecube.use_cubes = off").await;
    ok(&a, "SET tracecube.use_cubes TO DEFAULT").await;
    assert_eq!(ok(&a, cubes).await, [["on"]]);
    ok(&a, "SET tracecube.use_cubes = off").await;
    ok(&a, "RESET tracecube.use_cubes").await;
    assert_eq!(ok(&a, cubes).await, [["on"]]);
    assert_eq!(ok(&a, batch).await, [["123"]]);
    ok(
        &a,
        "SET tracecube.use_cubes = off; SET TIME ZONE 'Asia/Tokyo'",
    )
    .await;
    ok(&a, "RESET ALL").await;
    assert_eq!(ok(&a, cubes).await, [["on"]]);
    assert_eq!(ok(&a, batch).await, before);
    assert_eq!(ok(&a, "SHOW TIME ZONE").await, [["Etc/UTC"]]);
    ok(&a, "SET tracecube.use_cubes = off").await;
    assert_eq!(ok(&a, "SELECT x FROM mine").await, [["1"]]);
    ok(&a, "DISCARD ALL").await;
    assert_eq!(ok(&a, cubes).await, [["on"]]);
    assert_eq!(sqlstate(&a, "SELECT x FROM mine").await, "42P01");
    assert_eq!(ok(&b, "SELECT x FROM mine").await, [["2"]]);
    ok(&a, "CREATE TABLE mine AS SELECT 3 AS x").await;
    assert_eq!(ok(&a, "SELECT x FROM mine").await, [["3"]]);
    assert_eq!(ok(&a, "SELECT count(*) FROM traces").await, traces);

    // The server says what it is as PostgreSQL does.
    let version = ok(&a, "SELECT version()").await;
    assert!(version[0][0].starts_with("PostgreSQL 16."), "{version:?}");
    assert!(version[0][0].contains("Tracecube"), "{version:?}");
    let who = "SELECT current_user AS u, session_user AS s, current_database() AS d";
    assert_eq!(ok(&a, who).await, [["tracecube", "tracecube", "tracecube"]]);
    assert_eq!(ok(&a, "SHOW server_version").await, [["16.6"]]);
    assert_eq!(ok(&a, "SHOW server_version_num").await, [["160006"]]);
    let row = a.query_one("SHOW server_version", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "16.6");

    // Several statements in one prepared statement are refused, none of them runs.
    let e = a
        .query("CREATE VIEW two AS SELECT 1 AS x; SELECT 2", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("42601"),
        "{e:?}"
    );
    assert_eq!(sqlstate(&a, "SELECT * FROM two").await, "42P01");

    // Errors carry the class of PostgreSQL's.
    for (sql, code) in [
        ("SELEC 1", "42601"),
        ("SELECT * FROM no_such_table", "42P01"),
        ("SELECT no_such_column FROM traces", "42703"),
        ("SELECT 1 / 0", "22012"),
        ("SELECT CAST('abc' AS INT)", "22P02"),
    ] {
        assert_eq!(sqlstate(&a, sql).await, code, "{sql}");
    }
    drop((a, b));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_refused_with_53300() {
    let wh = TestWarehouse::new().await;
    let mut config = wh.config();
    config.max_connections = 2;
    let server = TestServer::start(config).await;
    let (a, b) = (server.connect().await, server.connect().await);
    let Err(e) = server.connect_as("tracecube").await else {
        panic!("a third connection was accepted with max_connections = 2");
    };
    let code = e.as_db_error().map(|d| d.code().code().to_string());
    assert_eq!(code.as_deref(), Some("53300"), "{e:?}");
    // The others are served as before; a closed connection frees its place.
    assert_eq!(ok(&a, "SELECT 1").await, [["1"]]);
    drop(b);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let c = loop {
        match server.connect_as("tracecube").await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no place freed after a connection closed: {e:?}"),
        }
    };
    assert_eq!(ok(&c, "SELECT 1").await, [["1"]]);
    drop((a, c));
    server.stop().await;
}
