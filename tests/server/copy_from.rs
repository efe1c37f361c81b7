//! `COPY traces FROM '<url>'` over the wire: who may, from where, with which options, and
//! the guarantees of a load (atomic, idempotent, checked).

use super::access::users;
use super::{ok, sqlstate};
use crate::common::{TestServer, TestWarehouse, generated_channel_counts};

const ROWS: u64 = 6_000;
const SEED: u64 = 11;

/// A server with the test users whose one load location is `exports`, holding `rows`
/// generated traces (seed [`SEED`]), and a connection of its loader.
async fn serving_exports(
    rows: u64,
) -> (
    TestWarehouse,
    std::path::PathBuf,
    TestServer,
    tokio_postgres::Client,
) {
    let wh = TestWarehouse::with(|c| c.users = users()).await;
    let exports = wh.generate("exports", rows, SEED);
    let mut config = wh.config();
    config.load_locations = vec![exports.display().to_string()];
    let server = TestServer::start(config).await;
    let loader = server
        .connect_with("user=lou password=lou-pw")
        .await
        .unwrap();
    (wh, exports, server, loader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaders_copy_traces_from_the_load_locations_only() {
    let (wh, exports, server, loader) = serving_exports(ROWS).await;
    let elsewhere = wh.generate("elsewhere", 100, 12);
    let reader = server
        .connect_with("user=ana password=ana-pw")
        .await
        .unwrap();
    let source = format!("{}/*.parquet", exports.display());

    // a reader may not load; nobody loads from outside the load locations, nor the
    // warehouse's own files, nor into another table
    assert_eq!(
        sqlstate(&reader, &format!("COPY traces FROM '{source}'")).await,
        "42501"
    );
    for refused in [
        format!("COPY traces FROM '{}'", elsewhere.display()),
        format!("COPY traces FROM '{}/../elsewhere'", exports.display()),
        format!("COPY traces FROM '{}'", wh.path("warehouse").display()),
        format!("COPY rejects FROM '{source}'"),
    ] {
        assert_eq!(sqlstate(&loader, &refused).await, "42501", "{refused}");
    }
    assert_eq!(
        sqlstate(
            &loader,
            &format!("COPY traces FROM '{source}' WITH (FORMAT xml)")
        )
        .await,
        "42601"
    );
    assert_eq!(sqlstate(&loader, "COPY traces FROM STDIN").await, "0A000");
    assert_eq!(ok(&loader, "SELECT count(*) FROM traces").await[0][0], "0");

    // the simple protocol: `COPY <rows>`, then the rows are there for every connection
    let copied = loader
        .simple_query(&format!("COPY traces FROM '{source}'"))
        .await
        .unwrap();
    let tag = copied
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .expect("a command tag");
    assert_eq!(tag, ROWS);
    let counts = ok(
        &reader,
        "SELECT channel, count(*) FROM traces GROUP BY 1 ORDER BY 1",
    )
    .await;
    let expected = generated_channel_counts(ROWS, SEED);
    assert_eq!(counts.len(), expected.len());
    for row in counts {
        assert_eq!(row[1].parse::<i64>().unwrap(), expected[&row[0]], "{row:?}");
    }

    // the extended protocol (a driver's `execute`): loading the same files again is a no-op
    assert_eq!(
        loader
            .execute(&format!("COPY traces FROM '{source}'"), &[])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        ok(&reader, "SELECT count(*) FROM traces").await[0][0],
        ROWS.to_string()
    );
    let loads = ok(
        &loader,
        "SELECT status, rows_loaded FROM tracecube.loads ORDER BY started_at",
    )
    .await;
    assert_eq!(
        loads,
        vec![
            vec!["committed".to_string(), ROWS.to_string()],
            vec!["no-op".to_string(), "0".to_string()]
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_csv_fails_whole_or_quarantines_bad_rows() {
    let wh = TestWarehouse::new().await;
    let exports = wh.path("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let csv = exports.join("day.txt");
    std::fs::write(
        &csv,
        "contact_id,customer_id,ts,channel,declaration\n\
         c1,u1,2026-03-01T09:30:00Z,phone,Delivery/Late\n\
         c2,u2,not-a-time,chat,Delivery/Late\n\
         c3,u1,2026-03-02T10:00:00Z,email,Billing/Refund\n",
    )
    .unwrap();
    // a load location holding the warehouse, and a link from the exports to it
    std::os::unix::fs::symlink(wh.path("warehouse"), exports.join("link")).unwrap();
    let mut config = wh.config();
    config.load_locations = vec![wh.dir.path().display().to_string()];
    let server = TestServer::start(config).await;
    let client = server.connect().await;
    for refused in [
        format!("COPY traces FROM '{}/w*'", wh.dir.path().display()),
        format!(
            "COPY traces FROM '{}/lin[k]' WITH (FORMAT json)",
            exports.display()
        ),
        format!("COPY traces FROM '{}/link/traces/'", exports.display()),
        format!("COPY traces FROM 'file:{}'", csv.display()),
        format!("COPY traces FROM '{}	'", csv.display()),
    ] {
        assert_eq!(sqlstate(&client, &refused).await, "42501", "{refused}");
    }
    std::fs::remove_file(exports.join("link")).unwrap();

    // the extension does not say CSV: without FORMAT the load cannot tell
    assert_eq!(
        sqlstate(&client, &format!("COPY traces FROM '{}'", csv.display())).await,
        "22P04"
    );
    // one bad row fails the whole load, naming the row, column and value
    let error = client
        .simple_query(&format!(
            "COPY traces FROM '{}' WITH (FORMAT csv)",
            csv.display()
        ))
        .await
        .unwrap_err();
    let db = error.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22P04");
    assert!(
        db.message().contains("column ts") && db.message().contains("not-a-time"),
        "{}",
        db.message()
    );
    assert_eq!(ok(&client, "SELECT count(*) FROM traces").await[0][0], "0");

    // quarantine: the good rows are loaded, the bad one kept in rejects
    let n = client
        .execute(
            &format!(
                "COPY traces FROM '{}' (FORMAT 'csv', HEADER, ON_ERROR 'quarantine')",
                csv.display()
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(ok(&client, "SELECT count(*) FROM traces").await[0][0], "2");
    assert_eq!(ok(&client, "SELECT count(*) FROM rejects").await[0][0], "1");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_sent_at_once_each_apply_once() {
    let wh = TestWarehouse::with(|c| c.users = users()).await;
    let a = wh.generate("exports/a", ROWS, SEED);
    let b = wh.generate("exports/b", ROWS / 2, 13);
    let mut config = wh.config();
    config.load_locations = vec![wh.path("exports").display().to_string()];
    let server = TestServer::start(config).await;
    let mut loaders = Vec::new();
    for _ in 0..3 {
        loaders.push(
            server
                .connect_with("user=lou password=lou-pw")
                .await
                .unwrap(),
        );
    }
    let copy = |dir: &std::path::Path| format!("COPY traces FROM '{}/*.parquet'", dir.display());
    // two loads of the same files and one of others, sent at once: they run one after
    // the other, the same files apply once
    let (copy_a, copy_b) = (copy(&a), copy(&b));
    let (first, second, other) = tokio::join!(
        loaders[0].execute(&copy_a, &[]),
        loaders[1].execute(&copy_a, &[]),
        loaders[2].execute(&copy_b, &[]),
    );
    let (first, second, other) = (first.unwrap(), second.unwrap(), other.unwrap());
    assert_eq!(first + second, ROWS, "{first} + {second}");
    assert_eq!(other, ROWS / 2);
    let mut expected = generated_channel_counts(ROWS, SEED);
    for (channel, n) in generated_channel_counts(ROWS / 2, 13) {
        *expected.entry(channel).or_default() += n;
    }
    let counts = ok(
        &loaders[0],
        "SELECT channel, count(*) FROM traces GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(counts.len(), expected.len());
    for row in counts {
        assert_eq!(row[1].parse::<i64>().unwrap(), expected[&row[0]], "{row:?}");
    }
    let statuses = ok(
        &loaders[0],
        "SELECT status, count(*) FROM tracecube.loads GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(
        statuses,
        vec![
            vec!["committed".to_string(), "2".to_string()],
            vec!["no-op".to_string(), "1".to_string()]
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_stopped_by_its_timeout_loads_all_or_nothing() {
    const BIG: u64 = 60_000;
    let (_wh, exports, server, loader) = serving_exports(BIG).await;
    let copy = format!("COPY traces FROM '{}'", exports.display());
    ok(&loader, "SET statement_timeout = '150ms'").await;
    let stopped = loader.execute(&copy, &[]).await;
    ok(&loader, "SET statement_timeout = 0").await;
    let count: u64 = ok(&loader, "SELECT count(*) FROM traces").await[0][0]
        .parse()
        .unwrap();
    let committed = ok(
        &loader,
        "SELECT count(*) FROM tracecube.loads WHERE status = 'committed'",
    )
    .await;
    match stopped {
        // stopped before its commit: nothing written, recorded as failed
        Err(e) => {
            assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
            assert_eq!(count, 0);
            assert_eq!(committed, [["0"]]);
        }
        // the timeout came once the commit had begun: the whole load
        Ok(rows) => {
            assert_eq!((rows, count), (BIG, BIG));
            assert_eq!(committed, [["1"]]);
        }
    }
    // the same COPY again completes the warehouse, whichever way the first one went
    loader.execute(&copy, &[]).await.unwrap();
    assert_eq!(
        ok(&loader, "SELECT count(*) FROM traces").await[0][0],
        BIG.to_string()
    );
    assert_eq!(ok(&loader, "SELECT count(*) FROM rejects").await[0][0], "0");
    server.stop().await;
}
