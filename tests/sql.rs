//! Runs every `tests/sql/*.slt` file (sqllogictest) against the real server over the
//! PostgreSQL wire protocol, each file on its own warehouse holding the fixture traces
//! of `tests/sql/traces.csv`. Values are compared as psql shows them (simple query
//! protocol); NULL prints as `NULL` and the empty string as `(empty)`.
//!
//! `SLT_COMPLETE=1 cargo test --workspace --test e2e sql::` rewrites the expected results from the
//! server's answers: review the diff before committing it.

use std::path::{Path, PathBuf};

use crate::common::{TestServer, TestWarehouse};
use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use tokio_postgres::{Client, SimpleQueryMessage};

/// A server error as its message (what `statement error <regex>` matches).
#[derive(Debug)]
struct SqlError(String);

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SqlError {}

impl From<tokio_postgres::Error> for SqlError {
    fn from(e: tokio_postgres::Error) -> Self {
        SqlError(match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        })
    }
}

/// One connection to the server under test.
struct Wire(Client);

#[async_trait]
impl AsyncDB for Wire {
    type Error = SqlError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SqlError> {
        let mut columns = None;
        let mut rows = Vec::new();
        let mut affected = 0;
        for message in self.0.simple_query(sql).await? {
            match message {
                SimpleQueryMessage::RowDescription(c) => columns = Some(c.len()),
                SimpleQueryMessage::Row(row) => rows.push(
                    (0..row.len())
                        .map(|i| match row.get(i) {
                            None => "NULL".to_string(),
                            Some("") => "(empty)".to_string(),
                            Some(v) => v.to_string(),
                        })
                        .collect(),
                ),
                SimpleQueryMessage::CommandComplete(n) => affected = n,
                _ => {}
            }
        }
        Ok(match columns {
            Some(n) => DBOutput::Rows {
                types: vec![DefaultColumnType::Any; n],
                rows,
            },
            None => DBOutput::StatementComplete(affected),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tracecube"
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_logic_tests_pass_over_the_wire() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql/traces.csv");
    let files = slt_files();
    assert!(files.len() >= 4, "slt files found: {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let wh = TestWarehouse::new().await;
        wh.load(&[&fixture], Default::default()).await.unwrap();
        let server = TestServer::start(wh.config()).await;
        let port = server.port;
        let mut runner = Runner::new(move || async move {
            let conn = format!("host=127.0.0.1 port={port} user=tracecube dbname=tracecube");
            let (client, connection) =
                tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            Ok::<_, SqlError>(Wire(client))
        });
        if std::env::var_os("SLT_COMPLETE").is_some() {
            // rewrite the expected results from what the server answers; review the diff
            runner
                .update_test_file(
                    file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap();
        } else if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}:\n{}", file.display(), e.display(false)));
        }
        server.stop().await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
