//! The query-shape corpus: SQL written the way BI tools and analysts write it (aliases,
//! schema-qualified and quoted names, derived tables, CTEs, grouping sets, subqueries,
//! windows over aggregates, calendar expressions, `ts` filters, prepared parameters), each
//! run with cubes on and off, over the simple and the extended protocol: the same rows
//! every time, and a cube (named by `EXPLAIN` and `tracecube.queries`) for the shapes a
//! default cube can answer.

use tokio_postgres::Client;
use tokio_postgres::types::{FromSql, ToSql, Type};

use super::{assert_same_rows, close, last_cubes, recent, rows};
use crate::common::{TestServer, TestWarehouse};
use tracecube_engine::load::LoadOptions;

/// Whether a cube must, must not, or may answer a shape.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Served {
    Yes,
    No,
    /// Part of the query may be (a decorrelated subquery): only the answers are compared.
    Either,
}
use Served::{Either, No, Yes};

/// `{recent}` is an instant (a whole minute) three hours before the newest trace.
const SHAPES: &[(&str, Served)] = &[
    // Aliases and names.
    (
        "SELECT t.channel, count(*) FROM traces t GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT a.channel, count(*) AS n FROM traces AS a GROUP BY a.channel ORDER BY n DESC, 1",
        Yes,
    ),
    // Tableau
    (
        r#"SELECT "traces"."channel" AS "channel", SUM(1) AS "cnt:traces:ok" FROM "public"."traces" "traces" GROUP BY 1 ORDER BY 1"#,
        Yes,
    ),
    (
        "SELECT public.traces.category, count(*) FROM public.traces GROUP BY public.traces.category ORDER BY 1",
        Yes,
    ),
    (
        r#"SELECT CAST(DATE_TRUNC('MONTH', CAST("traces"."day" AS DATE)) AS DATE) AS "tmn:day:ok", SUM(1) AS "sum:Number of Records:ok" FROM "public"."traces" "traces" GROUP BY 1 ORDER BY 1"#,
        Yes,
    ),
    // Power BI: nested selects under the alias "_"
    (
        r#"select "_"."channel", "_"."a0" from (select "channel", count(1) as "a0" from (select "_"."channel" from "public"."traces" "_") "_" group by "channel") "_" order by "_"."channel" limit 1001"#,
        Yes,
    ),
    (
        r#"select "rows"."category" as "category", sum("rows"."cost") as "a0" from (select "_"."category", "_"."cost" from "public"."traces" "_" where "_"."channel" = 'phone') "rows" group by "category" order by 1 limit 1001"#,
        Yes,
    ),
    // Superset
    (
        "SELECT channel AS channel, count(*) AS count FROM (SELECT * FROM traces) AS virtual_table GROUP BY channel ORDER BY count DESC, channel LIMIT 10000",
        Yes,
    ),
    (
        "SELECT date_trunc('week', day) AS __timestamp, count(*) AS count FROM (SELECT * FROM public.traces WHERE channel IN ('phone', 'chat')) AS virtual_table GROUP BY date_trunc('week', day) ORDER BY 1 LIMIT 10000",
        Yes,
    ),
    // Metabase
    (
        r#"SELECT "public"."traces"."category" AS "category", COUNT(*) AS "count" FROM "public"."traces" WHERE "public"."traces"."day" >= DATE '2026-03-01' GROUP BY "public"."traces"."category" ORDER BY "public"."traces"."category" ASC"#,
        Yes,
    ),
    (
        r#"SELECT "source"."l1" AS "l1", SUM("source"."cost") AS "sum" FROM (SELECT path_prefix("public"."traces"."declaration", 1) AS "l1", "public"."traces"."cost" AS "cost" FROM "public"."traces") AS "source" GROUP BY "source"."l1" ORDER BY "source"."l1" ASC"#,
        Yes,
    ),
    // Grafana: a time range on ts, whole days of the (UTC) warehouse
    (
        r#"SELECT date_trunc('month', day) AS "time", channel AS metric, count(*) AS value FROM traces WHERE ts >= TIMESTAMP '2026-02-01 00:00:00' AND ts < TIMESTAMP '2026-07-01 00:00:00' GROUP BY 1, 2 ORDER BY 1, 2"#,
        Yes,
    ),
    (
        r#"SELECT minute AS "time", channel, count(*) AS value FROM traces WHERE ts >= TIMESTAMP '{recent}' GROUP BY 1, 2 ORDER BY 1, 2"#,
        Yes,
    ),
    // Looker
    (
        r#"SELECT traces.category AS "traces.category", COUNT(*) AS "traces.count" FROM public.traces AS traces WHERE (traces.day) >= (DATE '2026-03-01') GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 500"#,
        Yes,
    ),
    // CTEs and derived columns grouped outside
    (
        "WITH d AS (SELECT path_prefix(declaration, 2) AS l2, channel FROM traces WHERE category = 'avoidable') SELECT l2, count(*) FROM d GROUP BY l2 ORDER BY 1",
        Yes,
    ),
    (
        "WITH base AS (SELECT * FROM traces), phone AS (SELECT * FROM base WHERE channel = 'phone') SELECT path_prefix(declaration, 1), avg(wait_s) FROM phone GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT l1, sum(cost), count(*) FROM (SELECT path_prefix(declaration, 1) AS l1, cost FROM traces x) y GROUP BY l1 ORDER BY 1",
        Yes,
    ),
    // Grouping sets
    (
        "SELECT channel, category, count(*) FROM traces GROUP BY GROUPING SETS ((channel), (category), ()) ORDER BY 1, 2",
        Yes,
    ),
    (
        "SELECT channel, category, sum(handle_s), count(*) FROM traces GROUP BY ROLLUP (channel, category) ORDER BY 1, 2",
        Yes,
    ),
    (
        "SELECT life_stage, tenure_year, count(*) FROM traces GROUP BY CUBE (life_stage, tenure_year) ORDER BY 1, 2",
        Yes,
    ),
    // HAVING, DISTINCT, count(DISTINCT), FILTER, min/max, count(1), sum(1), avg
    (
        "SELECT declaration, count(*) FROM traces GROUP BY declaration HAVING count(*) > 50 ORDER BY 1",
        Yes,
    ),
    ("SELECT DISTINCT channel FROM traces ORDER BY 1", Yes),
    (
        "SELECT DISTINCT t.category, t.channel FROM traces t WHERE t.day >= DATE '2026-05-01' ORDER BY 1, 2",
        Yes,
    ),
    (
        "SELECT channel, count(DISTINCT declaration) FROM traces GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT channel, count(*) FILTER (WHERE category = 'avoidable') AS avoidable, sum(cost) FILTER (WHERE path_is_under(declaration, 'Delivery')) FROM traces GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    ("SELECT min(day), max(day) FROM traces", Yes),
    (
        "SELECT category, count(1), sum(1), count(qualification) FROM traces GROUP BY category ORDER BY 1",
        Yes,
    ),
    (
        "SELECT channel, avg(handle_s), avg(cost), avg(wait_s), avg(sentiment) FROM traces GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT channel, sum(CASE WHEN resolved THEN 1 ELSE 0 END), avg(CASE WHEN abandoned THEN 100.0 ELSE 0 END) FROM traces GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT count(*), sum(cost), avg(handle_s), min(day) FROM traces WHERE channel = 'no such channel'",
        Yes,
    ),
    // Subqueries, windows, unions, joins
    (
        "SELECT channel, count(*) FROM traces WHERE day >= (SELECT max(day) - INTERVAL '30 days' FROM traces) GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT category, count(*) FROM traces WHERE channel IN (SELECT channel FROM traces GROUP BY channel HAVING count(*) > 100) GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT channel, count(*) AS n, 100.0 * count(*) / sum(count(*)) OVER () AS share FROM traces GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT 'channel' AS kind, channel AS value, count(*) FROM traces GROUP BY channel UNION ALL SELECT 'category', category, count(*) FROM traces GROUP BY category ORDER BY 1, 2",
        Yes,
    ),
    (
        "SELECT a.channel, a.n, b.m FROM (SELECT channel, count(*) AS n FROM traces GROUP BY channel) a JOIN (SELECT channel, sum(cost) AS m FROM traces WHERE category = 'avoidable' GROUP BY channel) b ON a.channel = b.channel ORDER BY 1",
        Yes,
    ),
    (
        "SELECT count(*) FROM traces a WHERE a.wait_s > (SELECT avg(b.wait_s) FROM traces b WHERE b.channel = a.channel)",
        Either,
    ),
    // Calendar expressions
    (
        "SELECT extract(year FROM day) AS y, extract(quarter FROM day) AS q, count(*) FROM traces GROUP BY 1, 2 ORDER BY 1, 2",
        Yes,
    ),
    (
        "SELECT CAST(day AS VARCHAR) AS d, count(*) FROM traces WHERE day < DATE '2026-01-01' GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT date_trunc('quarter', day), date_trunc('year', day), sum(effort) FROM traces GROUP BY 1, 2 ORDER BY 1, 2",
        Yes,
    ),
    (
        "SELECT date_trunc('hour', minute) AS h, channel, count(*) FROM traces WHERE minute >= TIMESTAMP '{recent}' GROUP BY 1, 2 ORDER BY 1, 2",
        Yes,
    ),
    // Keys that are functions of another key (a later optimizer rule rewrites them).
    (
        "SELECT split_part(declaration, '/', 1) AS l1, split_part(declaration, '/', 2) AS l2, declaration AS l3, count(*) AS n FROM traces GROUP BY 1, 2, 3 ORDER BY 3",
        Yes,
    ),
    // Tracecube's functions through aliases
    (
        "SELECT x.channel, csat(x.csat), nps(x.nps), service_level(x.channel, x.wait_s, x.abandoned), aht(x.handle_s) FROM traces AS x GROUP BY x.channel ORDER BY 1",
        Yes,
    ),
    (
        "SELECT declaration, impact(declaration, qualification, action, channel, category, effort) AS i FROM traces tr GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
        Yes,
    ),
    (
        "SELECT path_child(t.declaration, 'Delivery') AS c, count(*) FROM traces t WHERE path_is_under(t.declaration, 'Delivery') GROUP BY 1 ORDER BY 1",
        Yes,
    ),
    (
        "SELECT child, contacts, impact FROM drilldown('declaration', 'Delivery') ORDER BY 1",
        Yes,
    ),
    // What no cube can answer: raw, and still the same answer.
    (
        "SELECT channel, count(*) FROM traces WHERE ts >= TIMESTAMP '2026-03-01 10:00:30' GROUP BY 1 ORDER BY 1",
        No,
    ),
    (
        "SELECT agent_id, count(*) FROM traces GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
        No,
    ),
    (
        "SELECT channel, max(wait_s) FROM traces GROUP BY 1 ORDER BY 1",
        No,
    ),
    (
        "SELECT channel, sum(CAST(cost AS INT)) FROM traces GROUP BY 1 ORDER BY 1",
        No,
    ),
    (
        "SELECT count(*) FROM (SELECT * FROM traces ORDER BY contact_id LIMIT 100) s",
        No,
    ),
    ("SELECT count(*) FROM traces WHERE random() < 2", No),
    (
        "SELECT channel, sum(wait_s * 2) FROM (SELECT channel, wait_s FROM traces) w GROUP BY 1 ORDER BY 1",
        No,
    ),
];

/// Prepared statements with parameters, as psycopg 3, pgjdbc and asyncpg send them.
async fn prepared_shapes(client: &Client, check: &mut Checker) {
    let phone = "phone".to_string();
    let level = 1i64;
    // pgjdbc and asyncpg name the parameter types in Parse; psycopg leaves text untyped.
    let cases: Vec<(&str, Vec<Type>, Vec<&(dyn ToSql + Sync)>)> = vec![
        (
            "SELECT category, count(*) FROM traces t WHERE t.channel = $1 GROUP BY 1 ORDER BY 1",
            vec![],
            vec![&phone],
        ),
        (
            "SELECT path_prefix(declaration, $1) AS p, count(*) FROM traces WHERE path_is_under(declaration, $2) GROUP BY 1 ORDER BY 1",
            vec![Type::INT8, Type::TEXT],
            vec![&level, &"Delivery"],
        ),
    ];
    for (sql, types, params) in cases {
        check.extended(client, sql, &types, &params, Yes).await;
    }
}
/// A column value of any type, as the server sent it (binary).
#[derive(Debug, PartialEq)]
struct Value(Option<Vec<u8>>, Type);

impl<'a> FromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value(Some(raw.to_vec()), ty.clone()))
    }

    fn from_sql_null(ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value(None, ty.clone()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

impl Value {
    fn close_to(&self, other: &Value) -> bool {
        let float = |v: &Value| -> Option<f64> {
            let b = v.0.as_deref()?;
            match v.1 {
                Type::FLOAT8 => Some(f64::from_be_bytes(b.try_into().ok()?)),
                Type::FLOAT4 => Some(f64::from(f32::from_be_bytes(b.try_into().ok()?))),
                _ => None,
            }
        };
        match (float(self), float(other)) {
            (Some(x), Some(y)) => close(&x.to_string(), &y.to_string()),
            _ => self == other,
        }
    }
}

/// The rows of an extended-protocol query, as the server sent them.
async fn binary_rows(
    client: &Client,
    sql: &str,
    types: &[Type],
    params: &[&(dyn ToSql + Sync)],
) -> Vec<Vec<Value>> {
    let statement = client
        .prepare_typed(sql, types)
        .await
        .unwrap_or_else(|e| panic!("{sql}\n  failed to prepare: {e:?}"));
    let rows = client
        .query(&statement, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}\n  failed (extended protocol): {e:?}"));
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Value>(i)).collect())
        .collect()
}

struct Checker {
    recent: String,
    served: usize,
}

impl Checker {
    async fn set(&self, client: &Client, on: bool) {
        let value = if on { "on" } else { "off" };
        rows(client, &format!("SET tracecube.use_cubes = {value}")).await;
    }

    async fn expect_served(&mut self, client: &Client, sql: &str, expected: Served) {
        let used = last_cubes(client).await;
        match expected {
            Yes => assert!(!used.is_empty(), "{sql}\n  no cube answered it"),
            No => assert!(used.is_empty(), "{sql}\n  a cube answered it: {used}"),
            Either => {}
        }
        self.served += usize::from(!used.is_empty());
    }

    /// Simple protocol: text rows, cubes on and off, and `EXPLAIN`.
    async fn simple(&mut self, client: &Client, sql: &str, expected: Served) {
        let sql = sql.replace("{recent}", &self.recent);
        self.set(client, true).await;
        let with = rows(client, &sql).await;
        self.expect_served(client, &sql, expected).await;
        self.set(client, false).await;
        let without = rows(client, &sql).await;
        assert_same_rows(&sql, with, without);
        if expected == Yes {
            self.set(client, true).await;
            let plan = rows(client, &format!("EXPLAIN {sql}"))
                .await
                .concat()
                .join("\n");
            assert!(plan.contains("TableScan: cube_"), "{sql}\n{plan}");
        }
    }

    /// Extended protocol: binary rows, cubes on and off.
    async fn extended(
        &mut self,
        client: &Client,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
        expected: Served,
    ) {
        let sql = sql.replace("{recent}", &self.recent);
        self.set(client, true).await;
        let mut with = binary_rows(client, &sql, types, params).await;
        self.expect_served(client, &sql, expected).await;
        self.set(client, false).await;
        let mut without = binary_rows(client, &sql, types, params).await;
        let key = |r: &Vec<Value>| r.iter().map(|v| v.0.clone()).collect::<Vec<_>>();
        with.sort_by_key(key);
        without.sort_by_key(key);
        assert_eq!(with.len(), without.len(), "row counts differ for {sql}");
        for (r, (a, b)) in with.iter().zip(&without).enumerate() {
            assert!(
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.close_to(y)),
                "{sql}\n  row {r} (extended): with cubes {a:?}, from traces {b:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bi_tool_query_shapes_give_raw_answers_and_use_cubes() {
    let wh = TestWarehouse::new().await;
    for seed in [11, 12] {
        let source = wh.generate(&format!("src{seed}"), 4_000, seed);
        wh.load(&[&source], LoadOptions::default()).await.unwrap();
    }
    let server = TestServer::start(wh.config()).await;
    let client = server.connect().await;
    let mut check = Checker {
        recent: recent(&client).await,
        served: 0,
    };
    assert!(SHAPES.len() >= 40);
    for (sql, expected) in SHAPES {
        check.simple(&client, sql, *expected).await;
        check.extended(&client, sql, &[], &[], *expected).await;
    }
    prepared_shapes(&client, &mut check).await;
    assert!(check.served > 0);
    // The cubes above were held in memory as dictionaries: grouped on their keys.
    check.set(&client, true).await;
    let plan = rows(
        &client,
        "EXPLAIN SELECT t.channel, count(*) FROM traces t GROUP BY 1",
    )
    .await
    .concat()
    .join("\n");
    assert!(plan.contains("cube_key("), "{plan}");
    drop(client);
    server.stop().await;
}

/// Shapes whose meaning depends on the session's time zone: instants written without an
/// offset (`::timestamptz`, `to_timestamp`) are read in it, and `now()` is given in it.
const ZONED_SHAPES: &[&str] = &[
    "SELECT channel, count(*) FROM traces WHERE ts >= '2026-03-01 00:00:00'::timestamptz GROUP BY 1 ORDER BY 1",
    "SELECT day, count(*) FROM traces WHERE ts >= CAST('2026-03-01' AS TIMESTAMP WITH TIME ZONE) AND ts < CAST('2026-03-08' AS TIMESTAMP WITH TIME ZONE) GROUP BY 1 ORDER BY 1",
    "SELECT category, count(*) FROM traces WHERE ts < to_timestamp('2026-04-01 06:30:00') GROUP BY 1 ORDER BY 1",
    "SELECT channel, count(*) FROM traces WHERE ts >= now() - INTERVAL '3650 days' GROUP BY 1 ORDER BY 1",
    "SELECT date_trunc('day', ts) AS d, count(*) FROM traces WHERE ts >= '2026-05-01'::timestamptz GROUP BY 1 ORDER BY 1",
    "SELECT date_trunc('month', day) AS m, count(*) FROM traces WHERE ts >= '2026-02-01 00:00:00'::timestamptz AND ts < '2026-07-01 00:00:00'::timestamptz GROUP BY 1 ORDER BY 1",
    "SELECT minute, count(*) FROM traces WHERE ts >= '{recent}'::timestamptz GROUP BY 1 ORDER BY 1",
];

/// `SET TIME ZONE` changes how the connection's instants are read, and the cube rewrite
/// answers exactly what the raw plan answers in every zone: whole-hour, half- and
/// quarter-hour offsets, daylight saving, a POSIX offset (west of UTC) and a number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cube_answers_equal_raw_answers_in_every_session_time_zone() {
    let wh = TestWarehouse::new().await;
    let source = wh.generate("zoned", 6_000, 21);
    wh.load(&[&source], LoadOptions::default()).await.unwrap();
    let server = TestServer::start(wh.config()).await;
    let client = server.connect().await;
    let mut check = Checker {
        recent: recent(&client).await,
        served: 0,
    };
    let count = "SELECT count(*) FROM traces WHERE ts >= '2026-03-03 12:00:00'::timestamptz";
    let in_utc = rows(&client, count).await;
    for zone in [
        "'Pacific/Chatham'",
        "'America/St_Johns'",
        "'Asia/Kathmandu'",
        "'UTC+3'",
        "-9.5",
        "'Europe/Paris'",
    ] {
        rows(&client, &format!("SET TIME ZONE {zone}")).await;
        for sql in ZONED_SHAPES {
            check.simple(&client, sql, Either).await;
            check.extended(&client, sql, &[], &[], Either).await;
        }
        assert_ne!(rows(&client, count).await, in_utc, "{zone} was not used");
    }
    assert!(check.served > 0, "no zoned shape was answered by a cube");
    // the zone is the connection's own, and DEFAULT brings the server's back
    let other = server.connect().await;
    assert_eq!(rows(&other, count).await, in_utc);
    assert_eq!(rows(&other, "SHOW TIME ZONE").await, [["Etc/UTC"]]);
    rows(&client, "SET TIME ZONE DEFAULT").await;
    assert_eq!(rows(&client, count).await, in_utc);
    drop((client, other));
    server.stop().await;
}
