//! Loading end to end: bad rows, idempotency, quarantine, and a load killed mid-way.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestWarehouse;
use tracecube_engine::load::{LoadError, LoadOptions, OnError};

const HEADER: &str = "contact_id,customer_id,ts,channel,declaration,qualification,csat,wait_s";

fn write_csv(wh: &TestWarehouse, name: &str, rows: &[&str]) -> std::path::PathBuf {
    let path = wh.path(name);
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{HEADER}").unwrap();
    for r in rows {
        writeln!(f, "{r}").unwrap();
    }
    path
}

const GOOD: [&str; 3] = [
    "c1,u1,2026-03-02T09:15:00Z,phone,Delivery/Tracking/Parcel not received,Carrier/Transit/Lost in transit,5,30",
    "c2,u1,2026-03-02T10:15:00Z,chat, Delivery / Tracking ,,,12",
    "c3,u2,2026-03-03 11:00:00,Email,Order/Status/Where is my order,,2,",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_row_fails_whole_load_and_names_file_row_column_value() {
    let wh = TestWarehouse::new().await;
    let first = write_csv(&wh, "first.csv", &GOOD);
    wh.load(&[&first], LoadOptions::default()).await.unwrap();
    assert_eq!(wh.count("traces").await, 3);

    let bad = write_csv(
        &wh,
        "bad.csv",
        &[
            "c10,u3,2026-03-04T09:00:00Z,phone,Returns/Refund,,4,10",
            "c11,u3,2026-03-04T09:30:00Z,phone,Returns//Refund,,4,10",
            "c12,u3,not-a-time,phone,Returns/Refund,,4,10",
            "c13,u3,2026-03-04T10:30:00Z,phone,Returns/Refund,,7,10",
        ],
    );
    let err = wh.load(&[&bad], LoadOptions::default()).await.unwrap_err();
    let LoadError::BadRows { count, .. } = &err else {
        panic!("unexpected error {err}")
    };
    assert_eq!(*count, 3);
    let text = err.to_string();
    assert!(
        text.contains("bad.csv row 2 column declaration value \"Returns//Refund\""),
        "{text}"
    );
    assert!(
        text.contains("bad.csv row 3 column ts value \"not-a-time\""),
        "{text}"
    );
    assert!(
        text.contains("row 4 column csat value \"7\": must be between 1 and 5"),
        "{text}"
    );
    assert_eq!(wh.count("traces").await, 3, "a failed load writes nothing");
    let status = wh
        .query("SELECT status FROM tracecube.loads ORDER BY started_at")
        .await;
    assert_eq!(
        status,
        vec![vec!["committed".to_string()], vec!["failed".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_canonicalised_and_derived_columns_computed() {
    let wh = TestWarehouse::new().await;
    let f = write_csv(&wh, "good.csv", &GOOD);
    wh.load(&[&f], LoadOptions::default()).await.unwrap();
    let rows = wh
        .query("SELECT contact_id, channel, declaration, day, hour, weekday, cost, pain, abandoned FROM traces ORDER BY contact_id")
        .await;
    assert_eq!(
        rows[1][1..],
        [
            "chat",
            "Delivery/Tracking",
            "2026-03-02",
            "10",
            "1",
            "0.0",
            "1.5",
            "false"
        ]
    );
    assert_eq!(rows[2][1], "email");
    assert_eq!(rows[2][3..6], ["2026-03-03", "11", "2"]);
    // csat 5 ⇒ pain 1; csat 2 ⇒ pain 1.75.
    assert_eq!(rows[0][7], "1.0");
    assert_eq!(rows[2][7], "1.75");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_required_column_names_the_file_and_column() {
    let wh = TestWarehouse::new().await;
    let path = wh.path("nocustomer.csv");
    std::fs::write(
        &path,
        "contact_id,ts,channel,declaration\nc1,2026-03-02T09:15:00Z,phone,A/B\n",
    )
    .unwrap();
    let err = wh
        .load(&[&path], LoadOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nocustomer.csv") && err.contains("customer_id"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_of_same_file_is_a_no_op_and_known_contacts_are_skipped() {
    let wh = TestWarehouse::new().await;
    let src = wh.generate("src", 5_000, 3);
    let first = wh.load(&[&src], LoadOptions::default()).await.unwrap();
    assert_eq!(first.rows_loaded, 5_000);
    let again = wh.load(&[&src], LoadOptions::default()).await.unwrap();
    assert_eq!(again.status, "no-op");
    assert_eq!(again.files_skipped, 2);
    assert_eq!(wh.count("traces").await, 5_000);

    // The same contacts in another file: each is skipped and counted, never duplicated.
    let copy = wh.path("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(
            &p,
            copy.join(format!("copy-{}", p.file_name().unwrap().to_string_lossy())),
        )
        .unwrap();
    }
    let dup = wh.load(&[&copy], LoadOptions::default()).await.unwrap();
    assert_eq!((dup.rows_loaded, dup.rows_duplicate), (0, 5_000));
    assert_eq!(wh.count("traces").await, 5_000);
    let distinct = wh
        .query("SELECT count(DISTINCT contact_id) FROM traces")
        .await;
    assert_eq!(distinct[0][0], "5000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_loads_good_rows_and_keeps_every_bad_row() {
    let wh = TestWarehouse::new().await;
    let mut rows = GOOD.to_vec();
    rows.push("c4,u4,2026-03-05T09:00:00Z,ph one,A/B,,,");
    rows.push("c5,u4,2026-03-05T09:00:00Z,phone,A/B,,0,");
    rows.push("c6,,2026-03-05T09:00:00Z,phone,A/B,,,");
    let f = write_csv(&wh, "mixed.csv", &rows);
    let record = wh
        .load(
            &[&f],
            LoadOptions {
                on_error: OnError::Quarantine,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (record.rows_read, record.rows_loaded, record.rows_rejected),
        (6, 3, 3)
    );
    assert_eq!(wh.count("traces").await, 3);
    let rejects = wh
        .query("SELECT row, \"column\", value, reason, record FROM rejects ORDER BY row")
        .await;
    assert_eq!(rejects.len(), 3);
    assert_eq!(rejects[0][..3], ["4", "channel", "ph one"]);
    assert_eq!(rejects[1][..3], ["5", "csat", "0"]);
    assert_eq!(rejects[2][..2], ["6", "customer_id"]);
    assert!(
        rejects[0][4].contains("\"contact_id\":\"c4\""),
        "{}",
        rejects[0][4]
    );
    let loads = wh
        .query("SELECT rows_read, rows_loaded, rows_rejected FROM tracecube.loads")
        .await;
    assert_eq!(
        loads,
        vec![vec!["6".to_string(), "3".to_string(), "3".to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_killed_mid_way_leaves_the_table_as_before_or_after() {
    let wh = TestWarehouse::new().await;
    let base = wh.generate("base", 2_000, 11);
    wh.load(&[&base], LoadOptions::default()).await.unwrap();
    let big = wh.generate("big", 300_000, 12);
    let warehouse = wh.config().warehouse;
    for delay_ms in [150u64, 600, 1_500] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracecube"))
            .args(["load", "--warehouse", &warehouse])
            .arg(&big)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let n = wh.count("traces").await;
        assert!(
            n == 2_000 || n == 302_000,
            "after a kill at {delay_ms} ms: {n} rows"
        );
        if n == 302_000 {
            break;
        }
    }
    // Whatever happened, a complete load afterwards gives exactly the union.
    wh.load(&[&big], LoadOptions::default()).await.unwrap();
    assert_eq!(wh.count("traces").await, 302_000);
    let distinct = wh
        .query("SELECT count(DISTINCT contact_id) FROM traces")
        .await;
    assert_eq!(distinct[0][0], "302000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_sources_load_like_csv() {
    let wh = TestWarehouse::new().await;
    let path = wh.path("traces.ndjson");
    std::fs::write(
        &path,
        concat!(
            "{\"contact_id\":\"j1\",\"customer_id\":\"u1\",\"ts\":\"2026-03-02T09:15:00Z\",\"channel\":\"phone\",\"declaration\":\"A/B\",\"handle_s\":360,\"csat\":4}\n",
            "{\"contact_id\":\"j2\",\"customer_id\":\"u2\",\"ts\":\"2026-03-02T09:16:00Z\",\"channel\":\"app\",\"declaration\":\"A/C\",\"resolved\":true,\"sentiment\":0.5}\n",
        ),
    )
    .unwrap();
    let record = wh.load(&[&path], LoadOptions::default()).await.unwrap();
    assert_eq!(record.rows_loaded, 2);
    let rows = wh
        .query("SELECT contact_id, cost, pain, resolved FROM traces ORDER BY contact_id")
        .await;
    // 360 s of phone at 45/h = 4.5; csat 4 ⇒ pain 1.25. sentiment 0.5 ⇒ pain 1.25.
    assert_eq!(rows[0], ["j1", "4.5", "1.25", "false"]);
    assert_eq!(rows[1], ["j2", "0.0", "1.25", "true"]);
}
