//! Loading end to end: bad rows, idempotency, quarantine, and a load killed mid-way.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::TestWarehouse;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_columns_first_present_past_the_first_block_are_loaded() {
    let wh = TestWarehouse::new().await;
    let path = wh.path("late.ndjson");
    let mut text = String::new();
    // more than the first block read (8 MB) of records without csat, then records with it
    for i in 0..50_000 {
        text.push_str(&format!(
            "{{\"contact_id\":\"n{i}\",\"customer_id\":\"u{i}\",\"ts\":\"2026-03-02T09:15:00Z\",\"channel\":\"phone\",\"declaration\":\"Billing/Invoice/A rather long leaf name to make the lines longer\",\"handle_s\":360}}\n"
        ));
    }
    for i in 0..1_000 {
        text.push_str(&format!(
            "{{\"contact_id\":\"late{i}\",\"customer_id\":\"v{i}\",\"ts\":\"2026-03-03T09:15:00Z\",\"channel\":\"chat\",\"declaration\":\"Billing/Invoice\",\"csat\":5,\"nps\":9}}\n"
        ));
    }
    assert!(text.len() > 9 << 20, "{} bytes", text.len());
    std::fs::write(&path, text).unwrap();
    let record = wh.load(&[&path], LoadOptions::default()).await.unwrap();
    assert_eq!(record.rows_loaded, 51_000);
    let rows = wh
        .query("SELECT count(csat), count(nps), min(csat) FROM traces")
        .await;
    assert_eq!(rows[0], ["1000", "1000", "5"]);
}

/// Copy every file of `from` into a new folder `to` under other names: the same contacts
/// from other sources.
fn copy_sources(wh: &TestWarehouse, from: &std::path::Path, to: &str) -> std::path::PathBuf {
    let copy = wh.path(to);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        std::fs::copy(&p, copy.join(format!("{to}-{name}"))).unwrap();
    }
    copy
}

/// The files of the latest `traces` snapshot per day: (day, path in the table).
async fn stored(wh: &TestWarehouse) -> Vec<(i32, String)> {
    let traces = wh
        .warehouse
        .table(tracecube_engine::warehouse::Table::Traces)
        .await
        .unwrap();
    let mut files: Vec<(i32, String)> = tracecube_engine::load::stage::stored_files(&traces)
        .unwrap()
        .into_iter()
        .flat_map(|(day, files)| files.into_iter().map(move |(path, _)| (day, path)))
        .collect();
    files.sort();
    files
}

/// Data files of `traces` on disk that its latest snapshot does not reference.
async fn orphans(wh: &TestWarehouse) -> Vec<String> {
    let referenced: std::collections::HashSet<String> =
        stored(wh).await.into_iter().map(|(_, path)| path).collect();
    let root = std::path::Path::new(&wh.config().warehouse).join("traces");
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            if rel.starts_with('_') {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if !referenced.contains(&rel) {
                found.push(rel);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_loads_leave_orphans_that_vacuum_removes() {
    let wh = TestWarehouse::with(|c| c.load_memory_mb = 16).await;
    let base = wh.generate("base", 2_000, 21);
    wh.load(&[&base], LoadOptions::default()).await.unwrap();
    let big = wh.generate("big", 200_000, 22);
    let warehouse = wh.config().warehouse;
    // kill points spread over the load: while reading, while staging, around the commit
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis() as u64;
    let mut after = false;
    for (i, base_ms) in [100u64, 400, 900, 1_800, 3_000].into_iter().enumerate() {
        let delay_ms = base_ms + (seed * (i as u64 + 7)) % 300;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracecube"))
            .args(["load", "--warehouse", &warehouse])
            .arg(&big)
            .env("TRACECUBE_LOAD_MEMORY_MB", "16")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let n = wh.count("traces").await;
        assert!(
            n == 2_000 || n == 202_000,
            "after a kill at {delay_ms} ms: {n} rows"
        );
        if n == 202_000 {
            after = true;
            break;
        }
    }
    // vacuum with no retention removes every file no snapshot references, once files
    // never committed are older than a writer takes to commit: age them
    let aged = Command::new("find")
        .arg(std::path::Path::new(&warehouse).join("traces"))
        .args([
            "-type",
            "f",
            "-exec",
            "touch",
            "-d",
            "2 minutes ago",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(aged.success());
    let report = tracecube_engine::maintenance::vacuum(&wh.warehouse, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(orphans(&wh).await, Vec::<String>::new(), "{report:?}");
    let n = wh.count("traces").await;
    assert_eq!(n, if after { 202_000 } else { 2_000 });
    wh.load(&[&big], LoadOptions::default()).await.unwrap();
    assert_eq!(wh.count("traces").await, 202_000);
    let distinct = wh
        .query("SELECT count(DISTINCT contact_id) FROM traces")
        .await;
    assert_eq!(distinct[0][0], "202000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overlapping_loads_apply_each_file_and_contact_once() {
    let wh = TestWarehouse::new().await;
    let a = wh.generate("a", 6_000, 31);
    let b = wh.generate("b", 6_000, 32);
    let a_copy = copy_sources(&wh, &a, "acopy");
    // in one process: independent warehouse handles, as separate sessions would have
    let jobs: Vec<Vec<std::path::PathBuf>> = vec![
        vec![a.clone()],
        vec![a.clone()],
        vec![b.clone(), a_copy.clone()],
        vec![b.clone()],
        vec![a_copy.clone()],
    ];
    let config = wh.config();
    let loads = jobs.into_iter().map(|urls| {
        let config = config.clone();
        tokio::spawn(async move {
            let warehouse = tracecube_engine::Warehouse::open(config).await.unwrap();
            let urls: Vec<String> = urls.iter().map(|p| p.display().to_string()).collect();
            tracecube_engine::load::Loader::new(&warehouse)
                .load(&urls, &LoadOptions::default())
                .await
        })
    });
    let records: Vec<_> = futures::future::join_all(loads).await;
    for r in &records {
        let r = r.as_ref().unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    // and from several processes at once
    let warehouse = config.warehouse.clone();
    let c = wh.generate("c", 6_000, 33);
    let c_copy = copy_sources(&wh, &c, "ccopy");
    let children: Vec<_> = [vec![&c], vec![&c, &a], vec![&c_copy], vec![&c_copy, &b]]
        .into_iter()
        .map(|urls| {
            Command::new(env!("CARGO_BIN_EXE_tracecube"))
                .args(["load", "--warehouse", &warehouse])
                .args(urls)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(wh.count("traces").await, 18_000);
    let distinct = wh
        .query("SELECT count(DISTINCT (contact_id, day)) FROM traces")
        .await;
    assert_eq!(distinct[0][0], "18000");
    // each source file was applied by exactly one committed load
    let applied = wh
        .query(
            "SELECT sum(files), sum(rows_loaded) FROM tracecube.loads WHERE status = 'committed'",
        )
        .await;
    let files = |p: &std::path::Path| std::fs::read_dir(p).unwrap().count();
    let all_files = files(&a) + files(&b) + files(&a_copy) + files(&c) + files(&c_copy);
    assert_eq!(applied[0], [all_files.to_string(), "18000".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_compaction_loses_and_doubles_nothing() {
    let wh = TestWarehouse::with(|c| c.cubes.clear()).await;
    for seed in 41..44 {
        let src = wh.generate(&format!("s{seed}"), 3_000, seed);
        wh.load(&[&src], LoadOptions::default()).await.unwrap();
    }
    let more = wh.generate("more", 5_000, 45);
    let more_copy = copy_sources(&wh, &wh.generate("again", 3_000, 41), "again-copy");
    let (more, more_copy) = ([more.as_path()], [more_copy.as_path()]);
    let (compacted, loaded, copied) = tokio::join!(
        tracecube_engine::cubes::build::compact(&wh.warehouse),
        wh.load(&more, LoadOptions::default()),
        wh.load(&more_copy, LoadOptions::default()),
    );
    // a compaction that lost the race may fail; it never changes rows
    let _ = compacted;
    loaded.unwrap();
    assert_eq!(copied.unwrap().rows_loaded, 0);
    assert_eq!(wh.count("traces").await, 14_000);
    // compacted afterwards: one file per day, rows in (channel, declaration) order
    let report = tracecube_engine::cubes::build::compact(&wh.warehouse)
        .await
        .unwrap();
    assert!(report.traces_files_removed > 0 || report.traces_files_added == 0);
    assert_eq!(wh.count("traces").await, 14_000);
    let files = stored(&wh).await;
    let days: std::collections::HashSet<i32> = files.iter().map(|(day, _)| *day).collect();
    assert_eq!(days.len(), files.len(), "one file per day after compaction");
    let root = std::path::Path::new(&wh.config().warehouse).join("traces");
    let ctx = datafusion::prelude::SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(1),
    );
    for (_, file) in files.iter().take(5) {
        let path = root.join(file).display().to_string();
        let batches = ctx
            .read_parquet(&path, Default::default())
            .await
            .unwrap()
            .select_columns(&["channel", "declaration"])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut keys: Vec<(String, String)> = Vec::new();
        for b in batches {
            use datafusion::arrow::array::{Array, AsArray};
            let text = |i: usize| {
                datafusion::arrow::compute::cast(
                    b.column(i),
                    &datafusion::arrow::datatypes::DataType::Utf8,
                )
                .unwrap()
            };
            let (c, d) = (text(0), text(1));
            let (c, d) = (c.as_string::<i32>(), d.as_string::<i32>());
            for i in 0..c.len() {
                keys.push((c.value(i).to_string(), d.value(i).to_string()));
            }
        }
        assert!(
            keys.is_sorted(),
            "{file:?} is not in (channel, declaration) order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tiny_files_then_a_reload_is_a_no_op() {
    let wh = TestWarehouse::new().await;
    let dir = wh.path("tiny");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..10_000 {
        std::fs::write(
            dir.join(format!("t{i:05}.csv")),
            format!(
                "{HEADER}\nt{i},u{},2026-03-{:02}T09:00:00Z,phone,A/B,,4,10\n",
                i % 97,
                1 + i % 28
            ),
        )
        .unwrap();
    }
    let glob = format!("{}/*.csv", dir.display());
    let first = wh
        .load(&[std::path::Path::new(&glob)], LoadOptions::default())
        .await
        .unwrap();
    assert_eq!((first.files, first.rows_loaded), (10_000, 10_000));
    let again = wh
        .load(&[std::path::Path::new(&glob)], LoadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (again.status.as_str(), again.files_skipped),
        ("no-op", 10_000)
    );
    // the ledger is not table state in the Delta log (no transaction id per file): what a
    // checkpoint carries forward does not grow with the files loaded
    let log = std::path::Path::new(&wh.config().warehouse).join("traces/_delta_log");
    for entry in std::fs::read_dir(&log).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains("\"txn\""),
                "{} holds transaction ids",
                path.display()
            );
        }
    }
    // one more file: only it is loaded
    std::fs::write(
        dir.join("t10000.csv"),
        format!("{HEADER}\nt10000,u1,2026-03-01T09:00:00Z,chat,A/B,,4,10\n"),
    )
    .unwrap();
    let next = wh
        .load(&[std::path::Path::new(&glob)], LoadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (next.files, next.files_skipped, next.rows_loaded),
        (1, 10_000, 1)
    );
    assert_eq!(wh.count("traces").await, 10_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_opened_with_another_time_zone_or_cost_is_an_error() {
    let wh = TestWarehouse::with(|c| c.time_zone = "Europe/Paris".into()).await;
    let f = write_csv(&wh, "first.csv", &GOOD);
    wh.load(&[&f], LoadOptions::default()).await.unwrap();
    let mut other = wh.config();
    other.time_zone = "America/New_York".into();
    let err = tracecube_engine::Warehouse::open(other)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("time_zone"), "{err}");
    assert!(
        err.contains("\"Europe/Paris\"") && err.contains("\"America/New_York\""),
        "{err}"
    );
    // the same settings open it
    tracecube_engine::Warehouse::open(wh.config())
        .await
        .unwrap();
    let mut costs = wh.config();
    costs.hourly_cost.insert("phone".into(), 50.0);
    let err = tracecube_engine::Warehouse::open(costs)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hourly_cost.phone") && err.contains("45") && err.contains("50"),
        "{err}"
    );
}

/// Peak resident memory of a running process, read until it exits.
fn peak_rss_mb(child: &mut std::process::Child) -> u64 {
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status)
            && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kb: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak = peak.max(kb / 1024);
        }
        if child.try_wait().unwrap().is_some() {
            return peak;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_a_load_is_bounded_by_its_setting_not_its_size() {
    let wh = TestWarehouse::with(|c| c.cubes.clear()).await;
    let warehouse = wh.config().warehouse;
    // peak RSS of a load of `src` holding at most `budget_mb` of rows
    let peak_of = |src: &std::path::Path, budget_mb: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracecube"))
            .args(["load", "--warehouse", &warehouse])
            .arg(src)
            .env("TRACECUBE_LOAD_MEMORY_MB", budget_mb)
            .env("TRACECUBE_CUBES_ALL", "off")
            // freed memory goes back to the system at once: RSS shows what is held
            .env("MIMALLOC_PURGE_DELAY", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let peak = peak_rss_mb(&mut child);
        assert!(child.wait().unwrap().success());
        peak
    };
    let small = wh.generate("small", 250_000, 51);
    let large = wh.generate("large", 1_000_000, 52);
    let small_peak = peak_of(&small, "32");
    let large_peak = peak_of(&large, "32");
    assert_eq!(wh.count("traces").await, 1_250_000);
    // the same load holding every row: what an unbounded load needs
    let wh2 = TestWarehouse::with(|c| c.cubes.clear()).await;
    let unbounded = {
        let warehouse = wh2.config().warehouse;
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracecube"))
            .args(["load", "--warehouse", &warehouse])
            .arg(&large)
            .env("TRACECUBE_LOAD_MEMORY_MB", "100000")
            .env("TRACECUBE_CUBES_ALL", "off")
            .env("MIMALLOC_PURGE_DELAY", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let peak = peak_rss_mb(&mut child);
        assert!(child.wait().unwrap().success());
        peak
    };
    // four times the rows, about the same memory; well under what holding them takes
    assert!(
        large_peak < small_peak + small_peak / 2,
        "peak RSS {small_peak} MB for 250 000 rows, {large_peak} MB for 1 000 000"
    );
    assert!(
        large_peak * 3 < unbounded * 2,
        "peak RSS {large_peak} MB within 32 MB of rows, {unbounded} MB holding them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_with_no_retention_never_takes_the_files_of_running_loads() {
    let wh = TestWarehouse::with(|c| c.cubes.clear()).await;
    let warehouse = wh.config().warehouse;
    let big = wh.generate("big", 150_000, 61);
    let small: Vec<_> = (0..4)
        .map(|i| wh.generate(&format!("small{i}"), 500, 62 + i))
        .collect();
    let mut loads = vec![
        Command::new(env!("CARGO_BIN_EXE_tracecube"))
            .args(["load", "--warehouse", &warehouse])
            .arg(&big)
            .env("TRACECUBE_LOAD_MEMORY_MB", "16")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ];
    for s in &small {
        loads.push(
            Command::new(env!("CARGO_BIN_EXE_tracecube"))
                .args(["load", "--warehouse", &warehouse])
                .arg(s)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    // vacuum with no retention, over and over, while they run
    let mut vacuums = 0;
    while loads.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        tracecube_engine::maintenance::vacuum(&wh.warehouse, Duration::ZERO)
            .await
            .unwrap();
        vacuums += 1;
    }
    assert!(vacuums > 0);
    for child in loads {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // every committed file is there, and the ledger still answers
    assert_eq!(wh.count("traces").await, 152_000);
    let again = wh
        .load(&[&small[0], &big], LoadOptions::default())
        .await
        .unwrap();
    assert_eq!(again.status, "no-op");
    tracecube_engine::maintenance::vacuum(&wh.warehouse, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(orphans(&wh).await, Vec::<String>::new());
    assert_eq!(wh.count("traces").await, 152_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalent_settings_open_the_warehouse() {
    let wh = TestWarehouse::with(|c| c.time_zone = "UTC".into()).await;
    let f = write_csv(&wh, "first.csv", &GOOD);
    wh.load(&[&f], LoadOptions::default()).await.unwrap();
    let mut alias = wh.config();
    alias.time_zone = "Etc/UTC".into();
    // a listed cost equal to the default is the same cost
    alias
        .hourly_cost
        .insert("fax".into(), alias.default_hourly_cost);
    tracecube_engine::Warehouse::open(alias).await.unwrap();
    let mut other = wh.config();
    other.default_hourly_cost = 99.0;
    let err = tracecube_engine::Warehouse::open(other)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("default_hourly_cost") && err.contains("99"),
        "{err}"
    );
}
