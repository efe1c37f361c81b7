//! Journeys kept by loads (SPEC §1.4): after every load of a sequence of loads in time
//! order, out of order, overlapping, repeated, and after a compaction, the journey views
//! read from the stored journeys and give exactly what the window functions over all of
//! `traces` (the reference definition) give.

use std::path::PathBuf;

use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use tracecube_engine::journeys::maintain;
use tracecube_engine::journeys::reference;
use tracecube_engine::journeys::views::View;
use tracecube_engine::load::LoadOptions;
use tracecube_engine::warehouse::Table;

use crate::common::TestWarehouse;

/// Columns compared, per view (all of the journey columns, and enough trace columns to
/// see the join is right).
fn compared(view: View) -> &'static str {
    match view {
        View::Journeys => {
            "contact_id, customer_id, ts, channel, journey_id, journey_seq, prev_channel"
        }
        View::Summary => {
            "journey_id, customer_id, need, started_at, ended_at, contacts, channels, \
             first_channel, last_channel, fcr, gave_up"
        }
        View::Transitions => "from_channel, to_channel, contacts",
    }
}

async fn rows(wh: &TestWarehouse, sql: &str) -> Vec<Vec<String>> {
    let mut rows = wh.query(sql).await;
    rows.sort();
    rows
}

/// Every view equals its reference, and was read from the stored journeys.
async fn assert_views_match_reference(wh: &TestWarehouse, step: &str) {
    let gap = wh.config().journey_gap_seconds().unwrap();
    let traces = wh.warehouse.table(Table::Traces).await.unwrap();
    let [contacts, summary] = maintain::open(&wh.warehouse).await.unwrap();
    let status = maintain::status(&contacts, &summary).await.unwrap();
    assert_eq!(
        status.traces_version,
        traces.version().map(|v| v as i64),
        "{step}: the stored journeys reflect the latest traces"
    );
    for view in View::ALL {
        let columns = compared(view);
        let plan = wh
            .query(&format!("EXPLAIN SELECT {columns} FROM {}", view.name()))
            .await;
        let plan = format!("{plan:?}");
        assert!(
            plan.contains("journeys/gap=") && !plan.contains("WindowAggExec"),
            "{step}: {} is read from the stored journeys: {plan}",
            view.name()
        );
        let stored = rows(wh, &format!("SELECT {columns} FROM {}", view.name())).await;
        let expected = rows(
            wh,
            &format!(
                "SELECT {columns} FROM ({}) AS reference",
                reference::select(view, gap)
            ),
        )
        .await;
        assert!(!expected.is_empty(), "{step}: {} has rows", view.name());
        assert_eq!(
            stored.len(),
            expected.len(),
            "{step}: {} row count",
            view.name()
        );
        assert!(
            stored == expected,
            "{step}: {} differs from the reference",
            view.name()
        );
    }
}

/// The generated traces of `days` days split into files by day ranges.
struct Source {
    ctx: SessionContext,
    dir: PathBuf,
}

impl Source {
    async fn new(wh: &TestWarehouse) -> Self {
        let opts = tracecube_datasets::GenOptions {
            rows: 6_000,
            seed: 11,
            days: 60,
            chunk_rows: 6_000,
            ..Default::default()
        };
        let all = wh.path("all");
        tracecube_datasets::write_parquet(&opts, &all, false).unwrap();
        let ctx = SessionContext::new();
        ctx.register_parquet(
            "src",
            all.display().to_string(),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap();
        Source {
            ctx,
            dir: wh.path("parts"),
        }
    }

    /// The traces of days [from, to) of the period, as one Parquet file.
    async fn days(&self, from: u32, to: u32) -> PathBuf {
        let path = self.dir.join(format!("days_{from}_{to}.parquet"));
        if path.exists() {
            return path;
        }
        let start = "TIMESTAMP '2025-11-01 00:00:00+00:00'";
        self.write(
            &format!(
                "SELECT * FROM src WHERE ts >= {start} + INTERVAL '{from} days' \
                 AND ts < {start} + INTERVAL '{to} days'"
            ),
            path,
        )
        .await
    }

    /// The rows of `sql` over the generated traces, as one Parquet file at `path`.
    async fn write(&self, sql: &str, path: PathBuf) -> PathBuf {
        self.ctx
            .sql(sql)
            .await
            .unwrap()
            .write_parquet(
                path.to_str().unwrap(),
                DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await
            .unwrap();
        path
    }

    /// `rows` traces of days [from, to) again, `days_later` days later: the same
    /// `contact_id`s on other days (a contact id is unique within a day only).
    async fn repeated_ids(&self, from: u32, to: u32, days_later: u32, rows: u32) -> PathBuf {
        let path = self.dir.join(format!("again_{from}_{to}.parquet"));
        let columns: Vec<String> = self
            .ctx
            .table("src")
            .await
            .unwrap()
            .schema()
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "ts" => format!("ts + INTERVAL '{days_later} days' AS ts"),
                name => format!("\"{name}\""),
            })
            .collect();
        let start = "TIMESTAMP '2025-11-01 00:00:00+00:00'";
        self.write(
            &format!(
                "SELECT {} FROM src WHERE ts >= {start} + INTERVAL '{from} days' \
                 AND ts < {start} + INTERVAL '{to} days' ORDER BY contact_id LIMIT {rows}",
                columns.join(", ")
            ),
            path,
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journeys_kept_by_loads_equal_a_recomputation_from_all_traces() {
    let wh = TestWarehouse::new().await;
    let source = Source::new(&wh).await;
    // later days first, backfills before and between, overlaps, a repeated file
    let steps: [(u32, u32); 6] = [(20, 30), (0, 10), (40, 60), (25, 45), (10, 21), (20, 30)];
    for (from, to) in steps {
        let file = source.days(from, to).await;
        let record = wh.load(&[&file], LoadOptions::default()).await.unwrap();
        let step = format!(
            "load of days {from}..{to} ({} loaded, {} duplicate)",
            record.rows_loaded, record.rows_duplicate
        );
        assert_views_match_reference(&wh, &step).await;
    }
    assert_eq!(wh.count("traces").await, 6_000);

    // contact ids seen before, on other days: other contacts, in journeys of their own
    let again = source.repeated_ids(0, 10, 2, 200).await;
    let record = wh.load(&[&again], LoadOptions::default()).await.unwrap();
    assert!(record.rows_loaded > 0, "{record:?}");
    assert_views_match_reference(&wh, "contact ids repeated on other days").await;
    assert_eq!(
        wh.count("journeys").await,
        wh.count("traces").await,
        "one journey row per trace"
    );

    // a compaction moves traces to a version with the same rows: the journeys follow
    tracecube_engine::cubes::build::compact(&wh.warehouse)
        .await
        .unwrap();
    assert_views_match_reference(&wh, "after a compaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journey_views_read_traces_while_the_stored_journeys_are_stale() {
    let wh = TestWarehouse::new().await;
    let source = Source::new(&wh).await;
    let file = source.days(0, 30).await;
    wh.load(&[&file], LoadOptions::default()).await.unwrap();
    let gap = wh.config().journey_gap_seconds().unwrap();
    let summary = "SELECT journey_id, contacts, fcr, gave_up FROM journey_summary";
    let before = rows(&wh, summary).await;
    // the stored journeys removed (as a crash between two commits could leave them)
    let dir = wh.path("warehouse").join("journeys");
    std::fs::remove_dir_all(&dir).unwrap();
    let after = rows(&wh, summary).await;
    assert_eq!(before, after, "the views fall back to the window functions");
    let reference = rows(
        &wh,
        &format!(
            "SELECT journey_id, contacts, fcr, gave_up FROM ({}) AS r",
            reference::select(View::Summary, gap)
        ),
    )
    .await;
    assert_eq!(after, reference);
    // the next load rebuilds them
    let file = source.days(30, 60).await;
    wh.load(&[&file], LoadOptions::default()).await.unwrap();
    assert_views_match_reference(&wh, "after the rebuild").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journeys_too_large_for_a_load_are_stored_by_compact() {
    // 2 MB of load memory holds the chaining of about 2 600 contacts
    let wh = TestWarehouse::with(|c| c.load_memory_mb = 2).await;
    let source = Source::new(&wh).await;
    let file = source.days(0, 40).await;
    wh.load(&[&file], LoadOptions::default()).await.unwrap();
    let [contacts, summary] = maintain::open(&wh.warehouse).await.unwrap();
    let status = maintain::status(&contacts, &summary).await.unwrap();
    assert_eq!(status.traces_version, None, "not stored by the load");
    let gap = wh.config().journey_gap_seconds().unwrap();
    for view in View::ALL {
        let columns = compared(view);
        assert_eq!(
            rows(&wh, &format!("SELECT {columns} FROM {}", view.name())).await,
            rows(
                &wh,
                &format!(
                    "SELECT {columns} FROM ({}) AS r",
                    reference::select(view, gap)
                )
            )
            .await,
            "{} computed from traces",
            view.name()
        );
    }
    tracecube_engine::cubes::build::compact(&wh.warehouse)
        .await
        .unwrap();
    assert_views_match_reference(&wh, "after tracecube compact").await;
    // a small load then keeps them
    let file = source.days(40, 42).await;
    wh.load(&[&file], LoadOptions::default()).await.unwrap();
    assert_views_match_reference(&wh, "after a small load").await;
}
