//! The cube rewrite, differentially: random aggregation queries over `traces` (group keys,
//! filters and aggregates drawn from what the rewrite supports, and from what it must
//! refuse) are answered over the wire with `tracecube.use_cubes` on and off, and must
//! agree (floating results within 1e-9 relative) after several loads, after a
//! compaction, while the cubes are stale, and after they were rebuilt.

mod shapes;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{TestServer, TestWarehouse, simple_rows};
use tokio_postgres::Client;
use tracecube_engine::Warehouse;
use tracecube_engine::config::default_cubes;
use tracecube_engine::load::LoadOptions;

/// One piece of a query: its SQL, the trace columns it reads, and whether the rewrite
/// can answer it from a cube that has those columns.
#[derive(Clone, Copy)]
struct Part {
    sql: &'static str,
    columns: &'static [&'static str],
    supported: bool,
}

const fn part(sql: &'static str, columns: &'static [&'static str], supported: bool) -> Part {
    Part {
        sql,
        columns,
        supported,
    }
}

const GROUP_KEYS: &[Part] = &[
    part("channel", &["channel"], true),
    part("category", &["category"], true),
    part("path_prefix(declaration, 1)", &["declaration"], true),
    part("path_prefix(declaration, 2)", &["declaration"], true),
    part(
        "path_child(declaration, 'Delivery')",
        &["declaration"],
        true,
    ),
    part("path_prefix(qualification, 2)", &["qualification"], true),
    part("action", &["action"], true),
    part("day", &["day"], true),
    part("date_trunc('month', day)", &["day"], true),
    part("extract(year FROM day)", &["day"], true),
    part("path_segment(declaration, 2)", &["declaration"], true),
    part(
        "split_part(qualification, '/', 1)",
        &["qualification"],
        true,
    ),
    part("life_stage", &["life_stage"], true),
    part("tenure_year", &["tenure_year"], true),
    part("hour", &["hour"], true),
    part("weekday", &["weekday"], true),
    part("date_trunc('hour', minute)", &["minute"], true),
    part("agent_id", &["agent_id"], false),
];

/// Filters; `{recent}` is replaced by an instant three hours before the newest trace.
const FILTERS: &[Part] = &[
    part("day >= DATE '2026-03-01'", &["day"], true),
    part(
        "day BETWEEN DATE '2026-02-01' AND DATE '2026-06-30'",
        &["day"],
        true,
    ),
    part(
        "path_is_under(declaration, 'Delivery')",
        &["declaration"],
        true,
    ),
    part("channel IN ('phone', 'chat', 'email')", &["channel"], true),
    part("declaration LIKE 'Delivery/%'", &["declaration"], true),
    part("day < DATE '2026-07-01'", &["day"], true),
    part("category = 'avoidable'", &["category"], true),
    part("tenure_year >= 2", &["tenure_year"], true),
    part("hour BETWEEN 9 AND 17", &["hour"], true),
    part("qualification IS NULL", &["qualification"], true),
    part("minute >= TIMESTAMP '{recent}'", &["minute"], true),
    // Whole local days (the test warehouse is UTC): `day` or `minute` answers it.
    part(
        "ts >= TIMESTAMP '2026-03-01 00:00:00' AND ts < TIMESTAMP '2026-09-01 00:00:00'",
        &["day|minute"],
        true,
    ),
    part("ts < TIMESTAMP '2026-04-01 12:00:30'", &["ts"], false),
    part("wait_s > 60", &["wait_s"], false),
    part("customer_id < 'C5'", &["customer_id"], false),
];

const AGGREGATES: &[Part] = &[
    part("count(*)", &[], true),
    part("count(csat)", &[], true),
    part("count(qualification)", &["qualification"], true),
    part("sum(cost)", &[], true),
    part("sum(handle_s)", &[], true),
    part("sum(effort)", &[], true),
    part("avg(wait_s)", &[], true),
    part("avg(sentiment)", &[], true),
    part("avg(cost)", &[], true),
    part("csat(csat)", &[], true),
    part("nps(nps)", &[], true),
    part(
        "service_level(channel, wait_s, abandoned)",
        &["channel"],
        true,
    ),
    part("aht(handle_s)", &[], true),
    part(
        "impact(declaration, qualification, action, channel, category, effort)",
        &[
            "declaration",
            "qualification",
            "action",
            "channel",
            "category",
        ],
        true,
    ),
    part("avg(CASE WHEN resolved THEN 100.0 ELSE 0.0 END)", &[], true),
    part("sum(CASE WHEN abandoned THEN 1 ELSE 0 END)", &[], true),
    part(
        "count(*) FILTER (WHERE channel = 'phone')",
        &["channel"],
        true,
    ),
    part("min(day)", &["day"], true),
    part("max(channel)", &["channel"], true),
    part("count(DISTINCT category)", &["category"], true),
    part("max(wait_s)", &["wait_s"], false),
    part("sum(wait_s * 2)", &["wait_s"], false),
    part("count(DISTINCT customer_id)", &["customer_id"], false),
    part("avg(csat)", &["csat"], false),
    part("sum(cost) FILTER (WHERE nps > 8)", &["nps"], false),
];

/// A small deterministic generator (SplitMix64): the same queries on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Up to `max` distinct parts of `from`.
    fn pick(&mut self, from: &[Part], min: usize, max: usize) -> Vec<Part> {
        let n = min + self.below(max - min + 1);
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < n {
            let i = self.below(from.len());
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        chosen.into_iter().map(|i| from[i]).collect()
    }
}

/// The relation a random query reads: how BI tools and analysts name `traces`.
const FROMS: &[(&str, &str)] = &[
    ("", "traces"),
    ("", "traces t"),
    ("", "public.traces AS \"Traces\""),
    ("", "(SELECT * FROM traces) AS virtual_table"),
    ("WITH v AS (SELECT * FROM public.traces) ", "v"),
];

/// A random query and whether a default cube must answer it. Its shape is drawn too: the
/// relation (alias, schema, derived table, CTE), plain `GROUP BY` or `ROLLUP`, and an
/// uncorrelated `IN` subquery over `traces` among the filters.
fn random_query(rng: &mut Rng, recent: &str) -> (String, bool) {
    let keys = rng.pick(GROUP_KEYS, 0, 2);
    let filters = rng.pick(FILTERS, 0, 2);
    let aggregates = rng.pick(AGGREGATES, 1, 3);
    let (with, from) = FROMS[rng.below(FROMS.len())];
    let mut select: Vec<String> = keys.iter().map(|k| k.sql.to_string()).collect();
    select.extend(aggregates.iter().map(|a| a.sql.to_string()));
    let mut sql = format!("{with}SELECT {} FROM {from}", select.join(", "));
    let mut conditions: Vec<String> = filters
        .iter()
        .map(|f| f.sql.replace("{recent}", recent))
        .collect();
    let subquery = rng.below(4) == 0;
    if subquery {
        conditions.push(
            "channel IN (SELECT channel FROM traces GROUP BY channel HAVING count(*) > 10)".into(),
        );
    }
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    if !keys.is_empty() {
        let positions: Vec<String> = (1..=keys.len()).map(|i| i.to_string()).collect();
        let exprs: Vec<&str> = keys.iter().map(|k| k.sql).collect();
        if rng.below(3) == 0 {
            sql.push_str(&format!(" GROUP BY ROLLUP ({})", exprs.join(", ")));
        } else {
            sql.push_str(&format!(" GROUP BY {}", positions.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY {}", positions.join(", ")));
    }
    let parts: Vec<&Part> = keys.iter().chain(&filters).chain(&aggregates).collect();
    let mut columns: Vec<&str> = parts
        .iter()
        .flat_map(|p| p.columns.iter().copied())
        .collect();
    if subquery {
        columns.push("channel");
    }
    let minute_bounded = filters.iter().any(|f| f.sql.starts_with("minute >="));
    let served = parts.iter().all(|p| p.supported)
        && default_cubes().values().any(|cube| {
            columns.iter().all(|c| {
                c.split('|')
                    .any(|alt| cube.dimensions.iter().any(|d| d == alt))
            }) && (cube.retention.is_none() || minute_bounded)
        });
    // The IN subquery is always answered by a cube: some cube is used.
    (sql, served || subquery)
}

fn close(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-9),
        _ => false,
    }
}

async fn rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    match client.simple_query(sql).await {
        Ok(m) => simple_rows(m),
        Err(e) => panic!(
            "{sql}\n  failed: {}",
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string())
        ),
    }
}

/// An instant (a whole minute) three hours before the newest trace.
async fn recent(client: &Client) -> String {
    rows(
        client,
        "SELECT to_char(max(minute) - INTERVAL '3 hours', '%Y-%m-%d %H:%M:%S') FROM traces",
    )
    .await[0][0]
        .clone()
}

/// Text answers with and without cubes: the same rows, as sets (grouping sets give rows
/// whose ORDER BY keys tie, a NULL key and a subtotal), floats within 1e-9 relative.
fn assert_same_rows(sql: &str, mut with: Vec<Vec<String>>, mut without: Vec<Vec<String>>) {
    with.sort();
    without.sort();
    assert_eq!(with.len(), without.len(), "row counts differ for {sql}");
    for (r, (a, b)) in with.iter().zip(&without).enumerate() {
        assert!(
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(x, y)),
            "{sql}\n  row {r}: with cubes {a:?}, from traces {b:?}"
        );
    }
}

/// The cubes (if any) that answered the previous query on this connection.
async fn last_cubes(client: &Client) -> String {
    rows(
        client,
        "SELECT coalesce(cubes, '') FROM tracecube.queries ORDER BY query_id DESC LIMIT 1",
    )
    .await[0][0]
        .clone()
}

/// Run `count` random queries with cubes on and off; every answer must agree, and every
/// query a default cube can serve must be served by one (unless `cubes_usable` is false,
/// when none may be). Returns how many were served by cubes.
/// What the differential test expects of the cubes.
#[derive(Clone, Copy)]
enum Expect {
    /// The default cubes are fresh: a cube answers exactly the queries predicted.
    AsPredicted,
    /// No cube is usable.
    Raw,
    /// Other cubes than the defaults: only the answers are compared.
    Any,
}

async fn differential(
    client: &Client,
    rng: &mut Rng,
    count: usize,
    recent: &str,
    expect: Expect,
) -> usize {
    let mut served_count = 0;
    for _ in 0..count {
        let (sql, served) = random_query(rng, recent);
        rows(client, "SET tracecube.use_cubes = on").await;
        let with = rows(client, &sql).await;
        let used = last_cubes(client).await;
        rows(client, "SET tracecube.use_cubes = off").await;
        let without = rows(client, &sql).await;
        assert_eq!(
            last_cubes(client).await,
            "",
            "cubes are off but one was used: {sql}"
        );
        assert_same_rows(&sql, with, without);
        match expect {
            Expect::AsPredicted => assert_eq!(
                !used.is_empty(),
                served,
                "{sql}\n  expected {} but cubes used: {used:?}",
                if served { "a cube" } else { "the raw path" }
            ),
            Expect::Raw => assert_eq!(used, "", "stale cubes were used for {sql}"),
            Expect::Any => {}
        }
        served_count += usize::from(!used.is_empty());
    }
    served_count
}

async fn freshness(client: &Client) -> BTreeMap<String, String> {
    rows(client, "SELECT name, fresh FROM tracecube.cubes")
        .await
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect()
}

/// Wait until the server has read the latest commits (it checks at most once a second).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1_200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_answers_equal_raw_answers_across_loads_compaction_and_staleness() {
    let wh = TestWarehouse::new().await;
    let sources: Vec<_> = (1..=4)
        .map(|seed| wh.generate(&format!("src{seed}"), 4_000, seed))
        .collect();
    wh.load(&[&sources[0]], LoadOptions::default())
        .await
        .unwrap();
    wh.load(&[&sources[1]], LoadOptions::default())
        .await
        .unwrap();

    let server = TestServer::start(wh.config()).await;
    let client = server.connect().await;
    let recent = recent(&client).await;
    let fresh = freshness(&client).await;
    assert_eq!(fresh.len(), default_cubes().len());
    assert!(fresh.values().all(|f| f == "t"), "{fresh:?}");
    let mut rng = Rng(2026);

    // Two loads: every cube holds two partial rows per cell at most.
    let served = differential(&client, &mut rng, 60, &recent, Expect::AsPredicted).await;
    assert!(served > 10, "only {served} of 60 queries used a cube");

    // Compaction merges them (and moves the traces version: the cubes follow).
    tracecube_engine::cubes::build::compact(&wh.warehouse)
        .await
        .unwrap();
    settle().await;
    assert!(freshness(&client).await.values().all(|f| f == "t"));
    differential(&client, &mut rng, 60, &recent, Expect::AsPredicted).await;

    // A load by a process configured without cubes leaves them stale: never used.
    let mut config = wh.config();
    config.cubes.clear();
    let no_cubes = Warehouse::open(config).await.unwrap();
    tracecube_engine::load::Loader::new(&no_cubes)
        .load(&[sources[2].display().to_string()], &LoadOptions::default())
        .await
        .unwrap();
    settle().await;
    assert!(freshness(&client).await.values().all(|f| f == "f"));
    differential(&client, &mut rng, 20, &recent, Expect::Raw).await;

    // The next load finds them stale and rebuilds them from traces.
    wh.load(&[&sources[3]], LoadOptions::default())
        .await
        .unwrap();
    settle().await;
    assert!(freshness(&client).await.values().all(|f| f == "t"));
    differential(&client, &mut rng, 40, &recent, Expect::AsPredicted).await;

    // EXPLAIN names the cube; with cubes off it scans traces.
    let sql = "EXPLAIN SELECT channel, count(*) FROM traces GROUP BY channel";
    let plan = rows(&client, "SET tracecube.use_cubes = on").await;
    assert!(plan.is_empty());
    let plan = rows(&client, sql).await.concat().join("\n");
    assert!(plan.contains("TableScan: cube_"), "{plan}");
    rows(&client, "SET tracecube.use_cubes = off").await;
    let plan = rows(&client, sql).await.concat().join("\n");
    assert!(plan.contains("TableScan: traces"), "{plan}");
    assert!(!plan.contains("cube_"), "{plan}");
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_cubes_is_a_per_connection_setting() {
    let wh = TestWarehouse::new().await;
    let source = wh.generate("src", 2_000, 7);
    wh.load(&[&source], LoadOptions::default()).await.unwrap();
    let server = TestServer::start(wh.config()).await;
    let (a, b) = (server.connect().await, server.connect().await);
    rows(&a, "SET tracecube.use_cubes = off").await;
    assert_eq!(rows(&a, "SHOW tracecube.use_cubes").await, [["off"]]);
    assert_eq!(rows(&b, "SHOW tracecube.use_cubes").await, [["on"]]);
    let sql = "SELECT channel, count(*) FROM traces GROUP BY channel";
    rows(&a, sql).await;
    assert_eq!(last_cubes(&a).await, "");
    rows(&b, sql).await;
    assert!(last_cubes(&b).await.starts_with("cube_"));
    // A statement prepared while cubes are on is planned again at each EXECUTE, with the
    // setting (and the traces version) of that moment.
    rows(&b, &format!("PREPARE per_connection AS {sql}")).await;
    rows(&b, "EXECUTE per_connection").await;
    assert!(last_cubes(&b).await.starts_with("cube_"));
    rows(&b, "SET tracecube.use_cubes = off").await;
    rows(&b, "EXECUTE per_connection").await;
    assert_eq!(last_cubes(&b).await, "");
    // … and reads the traces version current at EXECUTE, not the one of PREPARE.
    rows(&a, "PREPARE counted AS SELECT count(*) FROM traces").await;
    let before = rows(&a, "EXECUTE counted").await;
    let more = wh.generate("more", 500, 8);
    wh.load(&[&more], LoadOptions::default()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let after = rows(&a, "EXECUTE counted").await;
    assert_eq!(after, rows(&a, "SELECT count(*) FROM traces").await);
    assert_ne!(before, after);
    let e = b
        .simple_query("SET tracecube.use_cubes = sometimes")
        .await
        .unwrap_err();
    let message = e.as_db_error().map(|d| d.message().to_string());
    assert!(
        message.as_deref().is_some_and(|m| m.contains("on or off")),
        "{e:?}"
    );
    drop((a, b));
    server.stop().await;
}

/// Loads committed while queries run: a cube answer never misses rows that an earlier raw
/// answer had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_answers_follow_the_traces_version_a_raw_query_saw() {
    let wh = TestWarehouse::new().await;
    let sources: Vec<_> = (0..4)
        .map(|i| wh.generate(&format!("src{i}"), 1_500, 100 + i))
        .collect();
    wh.load(&[&sources[0]], LoadOptions::default())
        .await
        .unwrap();
    let server = TestServer::start(wh.config()).await;
    let client = server.connect().await;
    // Another writer (its own warehouse handle, as another process would have).
    let writer = Warehouse::open(wh.config()).await.unwrap();
    let loads = {
        let sources: Vec<String> = sources[1..]
            .iter()
            .map(|s| s.display().to_string())
            .collect();
        tokio::spawn(async move {
            for s in sources {
                tokio::time::sleep(Duration::from_millis(700)).await;
                tracecube_engine::load::Loader::new(&writer)
                    .load(&[s], &LoadOptions::default())
                    .await
                    .unwrap();
            }
        })
    };
    let count = |rows: Vec<Vec<String>>| rows[0][0].parse::<i64>().unwrap();
    let sql = "SELECT count(*) FROM traces t WHERE t.day >= DATE '2000-01-01'";
    let mut cube_answers = 0;
    while !loads.is_finished() {
        rows(&client, "SET tracecube.use_cubes = off").await;
        let raw = count(rows(&client, sql).await);
        rows(&client, "SET tracecube.use_cubes = on").await;
        let with = count(rows(&client, sql).await);
        let used = last_cubes(&client).await;
        assert!(
            with >= raw,
            "the cube answer {with} misses rows the raw answer {raw} had"
        );
        cube_answers += usize::from(!used.is_empty());
    }
    loads.await.unwrap();
    settle().await;
    let with = count(rows(&client, sql).await);
    assert!(!last_cubes(&client).await.is_empty());
    rows(&client, "SET tracecube.use_cubes = off").await;
    assert_eq!(with, count(rows(&client, sql).await));
    assert!(cube_answers > 0);
    // The new cube versions were served from their files at once, and are read into
    // memory in the background: all of them in the end (the default budget holds them).
    let held = "SELECT count(*) = count(memory_bytes) AND count(*) > 0 FROM tracecube.cubes";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rows(&client, held).await != [["t"]] {
        assert!(
            std::time::Instant::now() < deadline,
            "cubes not held in memory after the loads: {:?}",
            rows(&client, "SELECT name, memory_bytes FROM tracecube.cubes").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(client);
    server.stop().await;
}

/// Cubes of expression dimensions only (level-2 paths by day and by month), read from
/// Parquet and then held in memory as dictionaries: every question they can answer is
/// answered by one of them, and exactly as from `traces`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_dimensions_answer_coarser_questions_exactly() {
    let defaults = default_cubes();
    let cubes = ["cube_l2_day", "cube_l2_month"]
        .into_iter()
        .map(|n| (n.to_string(), defaults[n].clone()))
        .collect();
    let wh = TestWarehouse::with(|c| c.cubes = cubes).await;
    for seed in [31, 32] {
        let source = wh.generate(&format!("src{seed}"), 4_000, seed);
        wh.load(&[&source], LoadOptions::default()).await.unwrap();
    }
    for memory_mb in [0, 64] {
        let mut config = wh.config();
        config.cube_memory_mb = memory_mb;
        let server = TestServer::start(config).await;
        expression_dimension_checks(&server, memory_mb).await;
        server.stop().await;
    }
}

async fn expression_dimension_checks(server: &TestServer, memory_mb: u64) {
    let client = server.connect().await;
    let served = [
        (
            "SELECT path_prefix(declaration, 1) AS l1, count(*) FROM traces GROUP BY 1",
            "cube_l2_month",
        ),
        (
            "SELECT path_prefix(declaration, 2) AS d, path_prefix(qualification, 1) AS q, count(*), sum(cost) \
             FROM traces WHERE path_is_under(declaration, 'Delivery') AND day >= DATE '2026-06-15' GROUP BY 1, 2",
            "cube_l2_day",
        ),
        (
            "SELECT date_trunc('quarter', day) AS q, path_segment(qualification, 2) AS s, csat(csat), nps(nps) \
             FROM traces t WHERE t.day >= DATE '2026-03-01' AND t.day <= DATE '2026-08-31' GROUP BY 1, 2",
            "cube_l2_month",
        ),
        (
            "SELECT EXTRACT(YEAR FROM day) AS y, channel, count(*) FROM traces \
             WHERE ts >= TIMESTAMP '2026-03-01 00:00:00' AND ts < TIMESTAMP '2026-09-01 00:00:00' GROUP BY 1, 2",
            "cube_l2_month",
        ),
        (
            "SELECT path_child(declaration, 'Delivery') AS child, count(*) FROM traces \
             WHERE declaration LIKE 'Delivery/%' GROUP BY 1",
            "cube_l2_month",
        ),
        (
            "SELECT split_part(qualification, '/', 2) AS q, sum(cost) FROM (SELECT * FROM traces) AS virtual_table \
             WHERE category = 'avoidable' AND qualification IS NOT NULL GROUP BY 1",
            "cube_l2_month",
        ),
        (
            "SELECT count(DISTINCT path_prefix(declaration, 2)) FROM traces \
             WHERE declaration NOT IN ('Delivery', 'Billing')",
            "cube_l2_month",
        ),
        (
            r#"SELECT CAST(DATE_TRUNC('MONTH', CAST("traces"."day" AS DATE)) AS DATE) AS "tmn:day:ok", SUM(1) AS "cnt" FROM "public"."traces" "traces" WHERE path_is_under("traces"."declaration", 'Delivery/Tracking') GROUP BY 1"#,
            "cube_l2_month",
        ),
        (
            "SELECT path_prefix(qualification, 2) AS q, aht(handle_s), service_level(channel, wait_s, abandoned) \
             FROM traces WHERE day >= DATE '2026-05-03' AND day < DATE '2026-06-02' GROUP BY ROLLUP (path_prefix(qualification, 2))",
            "cube_l2_day",
        ),
    ];
    // Constant NULL conditions are kept by the cube scan too (not dropped as "exact").
    let served: Vec<(&str, &str)> = served
        .into_iter()
        .chain([
            (
                "SELECT channel, count(*) FROM traces WHERE channel NOT IN ('phone', NULL) GROUP BY 1",
                "cube_l2_month",
            ),
            (
                "SELECT count(*) FROM traces WHERE channel = 'phone' AND CAST(NULL AS BOOLEAN)",
                "cube_l2_month",
            ),
        ])
        .collect();
    let raw = [
        "SELECT path_prefix(declaration, 3) AS d, count(*) FROM traces GROUP BY 1",
        "SELECT count(*) FROM traces WHERE declaration = 'Delivery/Tracking'",
        "SELECT count(*) FROM traces WHERE declaration LIKE 'Delivery/Tracking/%'",
        "SELECT path_level(declaration) AS l, count(*) FROM traces GROUP BY 1",
        "SELECT max(declaration), min(day) FROM traces",
        "SELECT date_trunc('month', ts) AS m, count(*) FROM traces GROUP BY 1",
    ];
    let checks = served
        .iter()
        .map(|(sql, cube)| (*sql, *cube))
        .chain(raw.iter().map(|sql| (*sql, "")));
    for (sql, cube) in checks {
        rows(&client, "SET tracecube.use_cubes = on").await;
        let with = rows(&client, sql).await;
        assert_eq!(last_cubes(&client).await, cube, "{sql}");
        rows(&client, "SET tracecube.use_cubes = off").await;
        let without = rows(&client, sql).await;
        assert_same_rows(sql, with, without);
    }
    let recent = recent(&client).await;
    let mut rng = Rng(77);
    let used = differential(&client, &mut rng, 60, &recent, Expect::Any).await;
    assert!(used > 5, "only {used} of 60 queries used a cube");
    let held = rows(&client, "SELECT count(memory_bytes) FROM tracecube.cubes").await;
    assert_eq!(held[0][0], if memory_mb == 0 { "0" } else { "2" });
}

/// Every cell of a cube table summed per group of its dimensions, as text, in order;
/// for a cube with a retention only the rows from `from` (µs) on. Also the cube's status.
async fn cube_cells(
    wh: &TestWarehouse,
    def: &tracecube_engine::cubes::CubeDef,
    from: Option<i64>,
) -> (Vec<Vec<String>>, tracecube_engine::cubes::build::CubeStatus) {
    use datafusion::prelude::SessionContext;
    let table = wh
        .warehouse
        .open_dir(&def.dir(&wh.config().sla_seconds))
        .await
        .unwrap();
    let status = tracecube_engine::cubes::build::status(&table)
        .await
        .unwrap();
    let ctx = SessionContext::new();
    ctx.register_table("cube", table.table_provider().await.unwrap())
        .unwrap();
    let schema = def.schema();
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect();
    let (dims, measures) = names.split_at(def.dimensions.len());
    let sums: Vec<String> = measures.iter().map(|m| format!("sum({m})")).collect();
    let filter = match (&def.retention, from) {
        (Some(r), Some(from)) if r.column == "day" => {
            format!("WHERE CAST(CAST(day AS INT) AS BIGINT) * 86400000000 >= {from}")
        }
        (Some(r), Some(from)) => format!("WHERE CAST(\"{}\" AS BIGINT) >= {from}", r.column),
        _ => String::new(),
    };
    let sql = format!(
        "SELECT {}, {} FROM cube {filter} GROUP BY {} ORDER BY {}",
        dims.join(", "),
        sums.join(", "),
        dims.join(", "),
        dims.join(", ")
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
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
    (rows, status)
}

/// Cube rows computed while a load stages its rows (in groups of days under a small memory
/// bound, day-grain cubes written as files, coarser ones merged in memory, retention cubes
/// pruned) hold the same cells as the cubes rebuilt from `traces` afterwards: across
/// several loads, a source whose contacts are partly known already, rows within one load
/// repeated, and newer days that move the retentions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_rows_computed_while_loading_equal_a_rebuild_from_traces() {
    let wh = TestWarehouse::with(|c| {
        c.load_memory_mb = 16;
        // coarse cubes held in memory while loading, one with a retention on `day`
        c.cubes.insert(
            "cube_month_channel".into(),
            tracecube_engine::config::CubeConfig {
                dimensions: vec!["channel".into(), "date_trunc('month', day)".into()],
                retention: None,
            },
        );
        c.cubes.insert(
            "cube_recent_days".into(),
            tracecube_engine::config::CubeConfig {
                dimensions: vec!["channel".into(), "category".into(), "day".into()],
                retention: Some("30 days".into()),
            },
        );
    })
    .await;
    let first = wh.generate("first", 40_000, 71);
    let second = wh.generate("second", 30_000, 72);
    // a folder mixing known contacts (a copy of a file of `first`), a new file, and the
    // new file again under another name
    let newer = wh.path("newer");
    tracecube_datasets::write_parquet(
        &tracecube_datasets::GenOptions {
            rows: 12_000,
            seed: 73,
            start: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            days: 5,
            chunk_rows: 12_000,
        },
        &newer,
        false,
    )
    .unwrap();
    let mix = wh.path("mix");
    std::fs::create_dir_all(&mix).unwrap();
    let one_of = |dir: &std::path::Path| {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        files.sort();
        files.remove(0)
    };
    std::fs::copy(one_of(&first), mix.join("known.parquet")).unwrap();
    std::fs::copy(one_of(&newer), mix.join("new.parquet")).unwrap();
    std::fs::copy(one_of(&newer), mix.join("new-again.parquet")).unwrap();

    let defs = tracecube_engine::cubes::CubeDef::all(&wh.config().cubes).unwrap();
    let check = |step: &'static str| {
        let wh = &wh;
        let defs = &defs;
        async move {
            let traces = wh
                .warehouse
                .table(tracecube_engine::warehouse::Table::Traces)
                .await
                .unwrap();
            let version = traces.version().unwrap() as i64;
            let mut loaded = Vec::new();
            for def in defs {
                let (_, status) = cube_cells(wh, def, None).await;
                assert_eq!(
                    status.traces_version,
                    Some(version),
                    "{step}: {} does not reflect traces",
                    def.name
                );
                loaded.push(status.complete_from);
            }
            let before: Vec<_> = {
                let mut cells = Vec::new();
                for (def, from) in defs.iter().zip(&loaded) {
                    cells.push(cube_cells(wh, def, *from).await.0);
                }
                cells
            };
            tracecube_engine::cubes::build::rebuild_all(&wh.warehouse)
                .await
                .unwrap();
            for ((def, from), before) in defs.iter().zip(&loaded).zip(before) {
                let (_, rebuilt) = cube_cells(wh, def, None).await;
                // a retention cube computed while loading is complete from a later instant
                // than (or the same as) the rebuilt one: compare from there
                if def.retention.is_some() {
                    assert!(
                        from.is_some() && *from >= rebuilt.complete_from,
                        "{step}: {} complete from {from:?}, rebuilt from {:?}",
                        def.name,
                        rebuilt.complete_from
                    );
                }
                let (after, _) = cube_cells(wh, def, *from).await;
                assert!(!after.is_empty(), "{step}: {} is empty", def.name);
                assert_eq!(before.len(), after.len(), "{step}: cells of {}", def.name);
                for (b, a) in before.iter().zip(&after) {
                    assert!(
                        b.iter().zip(a).all(|(x, y)| close(x, y)),
                        "{step}: {} loaded {b:?}, rebuilt {a:?}",
                        def.name
                    );
                }
            }
        }
    };
    wh.load(&[&first], LoadOptions::default()).await.unwrap();
    check("first load").await;
    wh.load(&[&second], LoadOptions::default()).await.unwrap();
    check("second load").await;
    let record = wh.load(&[&mix], LoadOptions::default()).await.unwrap();
    assert_eq!(wh.count("traces").await, 82_000, "{record:?}");
    check("partly known sources with newer days").await;
}
