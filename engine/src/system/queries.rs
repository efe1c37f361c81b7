//! `tracecube.queries`: each user's most recent queries (at most [`QUERY_LOG_SIZE`] each),
//! with their duration, rows, outcome and the cubes that answered them. The log also feeds
//! the server's metrics.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::SystemRows;
use crate::schema::timestamp_type;
use crate::server::auth::Identity;
use crate::server::metrics::{Finished, Metrics};
use crate::server::policy::Role;

/// How many recent queries of each user `tracecube.queries` keeps.
pub const QUERY_LOG_SIZE: usize = 1_000;

/// One served query.
#[derive(Debug, Clone)]
pub struct LoggedQuery {
    /// Given when the query is logged.
    pub id: i64,
    pub started_at: i64,
    pub duration_ms: f64,
    pub user: Option<String>,
    pub query: String,
    pub use_cubes: bool,
    pub cubes: Option<String>,
    pub cube_misses: Option<String>,
    pub rows: i64,
    pub error: Option<String>,
    pub sqlstate: Option<String>,
    pub role: Option<&'static str>,
}

/// Each user's most recent queries, oldest first.
type ByUser = std::collections::HashMap<Option<String>, VecDeque<LoggedQuery>>;

/// The most recent queries, oldest first, and the server's metrics they feed.
#[derive(Debug, Default)]
pub struct QueryLog {
    /// The last id given, and each user's most recent queries.
    entries: Mutex<(i64, ByUser)>,
    pub metrics: Arc<Metrics>,
}

impl QueryLog {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        QueryLog {
            entries: Mutex::default(),
            metrics,
        }
    }

    /// Log a finished query (its id is given here).
    pub fn push(&self, mut entry: LoggedQuery) {
        let cubes: Vec<String> = entry
            .cubes
            .iter()
            .flat_map(|c| c.split(", ").map(str::to_string))
            .collect();
        self.metrics.finished(Finished {
            role: entry.role,
            sqlstate: entry.sqlstate.as_deref(),
            seconds: entry.duration_ms / 1e3,
            rows: entry.rows.max(0) as u64,
            cubes: &cubes,
            missed: entry.cube_misses.is_some(),
        });
        let mut guard = self.entries.lock().expect("query log lock");
        guard.0 += 1;
        entry.id = guard.0;
        // each user's own recent queries: one user's many never push out another's
        let own = guard.1.entry(entry.user.clone()).or_default();
        if own.len() == QUERY_LOG_SIZE {
            own.pop_front();
        }
        own.push_back(entry);
    }

    /// The logged queries, only those of `user` when given.
    fn batch(&self, user: Option<&str>) -> datafusion::common::Result<RecordBatch> {
        let mut entries: Vec<LoggedQuery> = self
            .entries
            .lock()
            .expect("query log lock")
            .1
            .iter()
            .filter(|(who, _)| user.is_none_or(|u| who.as_deref() == Some(u)))
            .flat_map(|(_, queries)| queries.iter().cloned())
            .collect();
        entries.sort_by_key(|e| e.id);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.id))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(entries.iter().map(|e| e.started_at))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                entries.iter().map(|e| e.duration_ms),
            )),
            Arc::new(StringArray::from_iter(
                entries.iter().map(|e| e.user.as_deref()),
            )),
            Arc::new(StringArray::from_iter_values(
                entries.iter().map(|e| e.query.as_str()),
            )),
            Arc::new(BooleanArray::from_iter(
                entries.iter().map(|e| Some(e.use_cubes)),
            )),
            Arc::new(StringArray::from_iter(
                entries.iter().map(|e| e.cubes.as_deref()),
            )),
            Arc::new(StringArray::from_iter(
                entries.iter().map(|e| e.cube_misses.as_deref()),
            )),
            Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.rows))),
            Arc::new(StringArray::from_iter(
                entries.iter().map(|e| e.error.as_deref()),
            )),
            Arc::new(StringArray::from_iter(
                entries.iter().map(|e| e.sqlstate.as_deref()),
            )),
        ];
        Ok(RecordBatch::try_new(queries_schema(), columns)?)
    }
}

/// Columns of `tracecube.queries`.
pub fn queries_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("query_id", DataType::Int64, false),
        Field::new("started_at", timestamp_type(), false),
        Field::new("duration_ms", DataType::Float64, false),
        Field::new("user_name", DataType::Utf8, true),
        Field::new("query", DataType::Utf8, false),
        Field::new("use_cubes", DataType::Boolean, false),
        Field::new("cubes", DataType::Utf8, true),
        Field::new("cube_misses", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("sqlstate", DataType::Utf8, true),
    ]))
}

/// `tracecube.queries`.
#[derive(Debug)]
pub struct QueriesTable {
    log: Arc<QueryLog>,
}

impl QueriesTable {
    pub fn new(log: Arc<QueryLog>) -> Self {
        QueriesTable { log }
    }
}

#[async_trait]
impl SystemRows for QueriesTable {
    fn schema(&self) -> SchemaRef {
        queries_schema()
    }

    /// A user sees their own queries, an admin everyone's.
    async fn rows(
        &self,
        session: &dyn datafusion::catalog::Session,
    ) -> datafusion::common::Result<RecordBatch> {
        let only = session
            .config()
            .get_extension::<Identity>()
            .filter(|who| who.role != Role::Admin)
            .map(|who| who.user.clone());
        self.log.batch(only.as_deref())
    }
}
