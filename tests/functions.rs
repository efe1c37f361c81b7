//! End-to-end through the wire protocol: drill-down sums, weighted impact against its
//! formula as `impact_weights` changes (and persists), the journey views, pruning.

use std::collections::BTreeMap;

use crate::common::{TestServer, TestWarehouse, simple_rows};
use tokio_postgres::Client;

const ROWS: u64 = 20_000;
const SEED: u64 = 11;

async fn loaded() -> (TestWarehouse, TestServer) {
    let wh = TestWarehouse::new().await;
    let src = wh.generate("src", ROWS, SEED);
    wh.load(&[&src], Default::default()).await.unwrap();
    let server = TestServer::start(wh.config()).await;
    (wh, server)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// `(child, contacts, impact)` of `drilldown(axis, node)`.
async fn drilldown(client: &Client, axis: &str, node: &str) -> Vec<(String, i64, f64)> {
    client
        .query(
            &format!(
                "SELECT child, contacts, impact FROM drilldown('{axis}', '{}') ORDER BY child",
                node.replace('\'', "''")
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drilldown_of_every_node_sums_to_its_parent() {
    let (_wh, server) = loaded().await;
    let client = server.connect().await;
    for axis in ["declaration", "qualification", "action"] {
        let roots = drilldown(&client, axis, "").await;
        assert!(!roots.is_empty(), "{axis} has roots");
        let total: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM traces WHERE {axis} IS NOT NULL"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            roots.iter().map(|r| r.1).sum::<i64>(),
            total,
            "{axis} roots"
        );
        let mut level = roots;
        for depth in 1..3 {
            let mut next = Vec::new();
            for (node, contacts, impact) in &level {
                let children = drilldown(&client, axis, node).await;
                let at_node: i64 = client
                    .query_one(
                        &format!("SELECT count(*) FROM traces WHERE {axis} = $1"),
                        &[node],
                    )
                    .await
                    .unwrap()
                    .get(0);
                let sum: i64 = children.iter().map(|c| c.1).sum();
                assert_eq!(
                    sum + at_node,
                    *contacts,
                    "{axis} level {depth}: children of {node}"
                );
                if at_node == 0 {
                    let sum: f64 = children.iter().map(|c| c.2).sum();
                    assert!(
                        close(sum, *impact),
                        "{axis} {node}: impact {sum} vs {impact}"
                    );
                }
                for c in &children {
                    assert!(c.0.starts_with(&format!("{node}/")), "{} under {node}", c.0);
                }
                next.extend(children);
            }
            level = next;
        }
    }
    server.stop().await;
}

/// `(child, contacts, share_pct, csat_pct, service_level_pct)`
type DrilldownRow = (String, i64, f64, Option<f64>, Option<f64>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drilldown_matches_the_hand_written_query_and_its_shares_add_up() {
    let (_wh, server) = loaded().await;
    let client = server.connect().await;
    let by_function: Vec<DrilldownRow> = client
        .query(
            "SELECT child, contacts, share_pct, csat_pct, service_level_pct \
             FROM drilldown('declaration', 'Delivery', DATE '2025-12-01', DATE '2026-03-31') ORDER BY child",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let by_hand: Vec<(String, i64, Option<f64>, Option<f64>)> = client
        .query(
            "SELECT path_child(declaration, 'Delivery') AS child, count(*), csat(csat), \
                    service_level(channel, wait_s, abandoned) \
             FROM traces WHERE path_is_under(declaration, 'Delivery') AND declaration <> 'Delivery' \
               AND day BETWEEN DATE '2025-12-01' AND DATE '2026-03-31' \
             GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(by_function.len(), by_hand.len());
    for (f, h) in by_function.iter().zip(&by_hand) {
        assert_eq!((&f.0, f.1, f.3, f.4), (&h.0, h.1, h.2, h.3));
    }
    let shares: f64 = by_function.iter().map(|r| r.2).sum();
    assert!(close(shares, 100.0), "shares add up to {shares}");
    server.stop().await;
}

/// `aggregate` per category (NULL category as `-`).
async fn by_category(client: &Client, aggregate: &str) -> BTreeMap<String, f64> {
    client
        .query(
            &format!("SELECT coalesce(category, '-'), {aggregate} FROM traces GROUP BY 1"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Impact per category, through `impact()`.
async fn impact_by_category(client: &Client) -> BTreeMap<String, f64> {
    by_category(
        client,
        "impact(declaration, qualification, action, channel, category, effort)",
    )
    .await
}

/// Σ weight × effort per category, with the weights written out by hand.
async fn formula_by_category(client: &Client, weights_sql: &str) -> BTreeMap<String, f64> {
    by_category(client, &format!("sum(({weights_sql}) * effort)")).await
}

fn assert_same(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in a {
        assert!(close(*v, b[k]), "{k}: {v} vs {}", b[k]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_weight_changes_impact_exactly_as_the_formula_says() {
    let (wh, server) = loaded().await;
    let client = server.connect().await;
    assert_same(
        &impact_by_category(&client).await,
        &formula_by_category(&client, "1.0").await,
    );

    client
        .batch_execute(
            "INSERT INTO impact_weights VALUES ('category', 'avoidable', 2.0), \
             ('declaration', 'Delivery', 3.0), ('declaration', 'Delivery/Tracking', 0.5), \
             ('channel', 'phone', 1.5)",
        )
        .await
        .unwrap();
    let weighted = "CASE WHEN category = 'avoidable' THEN 2.0 ELSE 1.0 END \
         * CASE WHEN path_is_under(declaration, 'Delivery/Tracking') THEN 0.5 \
                WHEN path_is_under(declaration, 'Delivery') THEN 3.0 ELSE 1.0 END \
         * CASE WHEN channel = 'phone' THEN 1.5 ELSE 1.0 END";
    assert_same(
        &impact_by_category(&client).await,
        &formula_by_category(&client, weighted).await,
    );
    let w: f64 = client
        .query_one(
            "SELECT impact_weight('Delivery/Tracking/Parcel not received', NULL, NULL, 'phone', 'avoidable')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(close(w, 0.5 * 1.5 * 2.0));

    client
        .batch_execute("UPDATE impact_weights SET weight = 4.0 WHERE axis = 'category'")
        .await
        .unwrap();
    let updated = weighted.replace("THEN 2.0", "THEN 4.0");
    assert_same(
        &impact_by_category(&client).await,
        &formula_by_category(&client, &updated).await,
    );

    // a duplicate key is refused and changes nothing
    let err = client
        .batch_execute("INSERT INTO impact_weights VALUES ('channel', 'phone', 9.0)")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("already has a weight"),
        "{err:?}"
    );
    assert_same(
        &impact_by_category(&client).await,
        &formula_by_category(&client, &updated).await,
    );

    // the weights survive a restart
    server.stop().await;
    let server = TestServer::start(wh.config()).await;
    let client = server.connect().await;
    assert_same(
        &impact_by_category(&client).await,
        &formula_by_category(&client, &updated).await,
    );

    client
        .batch_execute("DELETE FROM impact_weights WHERE axis <> 'channel'")
        .await
        .unwrap();
    let phone_only = "CASE WHEN channel = 'phone' THEN 1.5 ELSE 1.0 END";
    assert_same(
        &impact_by_category(&client).await,
        &formula_by_category(&client, phone_only).await,
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_views_are_consistent_and_follow_the_domain_figures() {
    let (_wh, server) = loaded().await;
    let client = server.connect().await;
    let row = client
        .query_one(
            "SELECT count(*), sum(contacts), \
                    100 * avg(CASE WHEN fcr THEN 1.0 ELSE 0 END), \
                    100 * avg(CASE WHEN gave_up THEN 1.0 ELSE 0 END) \
             FROM journey_summary",
            &[],
        )
        .await
        .unwrap();
    let (journeys, contacts, fcr, gave_up): (i64, i64, f64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(contacts, ROWS as i64, "every trace is in one journey");
    assert!((60.0..80.0).contains(&fcr), "FCR {fcr} % (DOMAIN: ≈ 70 %)");
    assert!(
        (1.0..8.0).contains(&gave_up),
        "give-up {gave_up} % (DOMAIN: ≈ 3.2 %)"
    );

    let firsts: i64 = client
        .query_one(
            "SELECT count(*) FROM journeys WHERE journey_seq = 1 AND prev_channel IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(firsts, journeys, "one first contact per journey");
    let repeats: i64 = client
        .query_one(
            "SELECT count(*) FROM journeys WHERE journey_seq > 1 AND prev_channel IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let transitions: i64 = client
        .query_one("SELECT sum(contacts) FROM channel_transitions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(transitions, repeats);
    assert_eq!(journeys + repeats, ROWS as i64);

    // within a journey: same customer and need, consecutive gaps ≤ 7 days
    let bad = simple_rows(
        client
            .simple_query(
                "SELECT count(*) FROM ( \
                   SELECT journey_id, customer_id, ts, \
                          lag(ts) OVER (PARTITION BY journey_id ORDER BY journey_seq) AS prev \
                   FROM journeys) j \
                 WHERE prev IS NOT NULL AND ts > prev + INTERVAL '7 days'",
            )
            .await
            .unwrap(),
    );
    assert_eq!(bad[0][0], "0");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_is_under_a_literal_becomes_a_pruning_predicate() {
    let (_wh, server) = loaded().await;
    let client = server.connect().await;
    // on the traces themselves (a cube would answer this count otherwise)
    client
        .simple_query("SET tracecube.use_cubes = off")
        .await
        .unwrap();
    let plan = simple_rows(
        client
            .simple_query(
                "EXPLAIN SELECT count(*) FROM traces WHERE path_is_under(declaration, 'Delivery')",
            )
            .await
            .unwrap(),
    );
    let text = plan
        .iter()
        .map(|r| r.join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("LIKE Delivery/%"), "{text}");
    assert!(text.contains("pruning_predicate="), "{text}");

    let routines = simple_rows(
        client
            .simple_query(
                "SELECT routine_name FROM information_schema.routines \
                 WHERE routine_name IN ('path_level', 'path_prefix', 'path_segment', 'path_is_under', \
                   'path_child', 'csat', 'nps', 'service_level', 'sla_seconds', 'aht', \
                   'impact_weight', 'impact', 'drilldown') ORDER BY 1",
            )
            .await
            .unwrap(),
    );
    assert_eq!(routines.len(), 13, "{routines:?}");
    server.stop().await;
}
