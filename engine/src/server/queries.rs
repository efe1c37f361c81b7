//! Serving one query: checked against the user's role, the cube state refreshed before
//! planning, cancel and `statement_timeout` watched, rows streamed, and the outcome logged
//! in `tracecube.queries`.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{DiscardObject, SetExpr, Statement};
use datafusion_postgres::pgwire::api::portal::PortalExecutionState;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::query::{send_execution_response, send_query_response};
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::stmt::StoredStatement;
use datafusion_postgres::pgwire::api::store::Entry;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, Type};
use datafusion_postgres::pgwire::api::{DEFAULT_NAME, PgWireConnectionState};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use datafusion_postgres::pgwire::messages::extendedquery::Execute;
use datafusion_postgres::pgwire::messages::extendedquery::{Parse, ParseComplete};
use datafusion_postgres::pgwire::messages::response::EmptyQueryResponse;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::SinkExt;
use futures::{Sink, StreamExt};

use super::auth::{Access, Identity};
use super::errors::{forbidden, load_sqlstate, user_error, with_sqlstate};
use super::policy::Policy;
use super::settings::SettingsHook;
use crate::catalog::settings::TracecubeOptions;
use crate::cubes::registry::CubeRegistry;
use crate::cubes::rewrite::{QUERY, QueryScope};
use crate::system::queries::{LoggedQuery, QueryLog};
use datafusion::catalog::CatalogProviderList;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

/// Where a connection's `statement_timeout` (milliseconds) is kept: the key
/// `datafusion-postgres`'s `SET statement_timeout` writes and its `SHOW` reads.
pub const STATEMENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

/// Why a running statement stops early.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Cancelled,
    TimedOut,
}

impl Stop {
    fn error(self) -> PgWireError {
        let message = match self {
            Stop::Cancelled => "canceling statement due to user request",
            Stop::TimedOut => "canceling statement due to statement timeout",
        };
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "57014".into(),
            message.into(),
        )))
    }
}

/// Resolves when the statement must stop: a cancel request for the connection (psql's
/// Ctrl-C) or the end of its `statement_timeout`, counted from the start of the statement.
type Interrupt = futures::future::Shared<futures::future::BoxFuture<'static, Stop>>;

async fn interrupt(client: &impl ClientInfo) -> Interrupt {
    use futures::FutureExt;
    let deadline = client
        .metadata()
        .get(STATEMENT_TIMEOUT_KEY)
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms));
    let handle = client
        .session_extensions()
        .get::<super::auth::CancelHandle>();
    // a new receiver per statement: a late cancel request never stops the next statement
    let cancelled = match handle {
        Some(handle) => Some(handle.0.start_query().await),
        None => None,
    };
    async move {
        let cancelled = async {
            let fired = match cancelled {
                Some(rx) => rx.await.is_ok(),
                None => false,
            };
            if !fired {
                futures::future::pending::<()>().await
            }
        };
        let timed_out = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = cancelled => Stop::Cancelled,
            () = timed_out => Stop::TimedOut,
        }
    }
    .boxed()
    .shared()
}

/// Run `work` unless `stop` resolves first (then `work` is dropped: nothing more of it runs).
async fn unless<T>(
    stop: &Interrupt,
    work: impl std::future::Future<Output = PgWireResult<T>>,
) -> PgWireResult<T> {
    tokio::select! {
        result = work => result,
        reason = stop.clone() => Err(reason.error()),
    }
}

/// The rows of `responses` stop (with `57014`) when `stop` resolves: the query's
/// execution is dropped with its stream.
fn rows_unless(stop: Interrupt, responses: &mut [Response]) {
    for response in responses {
        if let Response::Query(q) = response {
            let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
            let stop = stop.clone();
            q.data_rows = Box::pin(futures::stream::unfold(
                Some((rows, stop)),
                |state| async move {
                    let (mut rows, stop) = state?;
                    tokio::select! {
                        biased;
                        reason = stop.clone() => Some((Err(reason.error()), None)),
                        next = rows.next() => next.map(|row| (row, Some((rows, stop)))),
                    }
                },
            ));
        }
    }
}

/// Run `COPY traces FROM …` (already allowed for its user): one COPY of the server at a
/// time, every file its source names checked again, then loaded by its resolved name;
/// `halt` stops it before its commit.
async fn run_copy(
    access: &Access,
    cubes: &Arc<CubeRegistry>,
    warehouse: &crate::Warehouse,
    copy: &super::copy_from::CopyFrom,
    halt: tokio_util::sync::CancellationToken,
    report: Arc<crate::load::LoadProgress>,
    user: &str,
) -> PgWireResult<CopyDone> {
    // one COPY at a time: each may hold `load_memory_mb` of rows
    let _permit = tokio::select! {
        permit = access.copy_permit.acquire() => permit
            .map_err(|e| user_error("57P01", format!("the server is stopping: {e}")))?,
        () = halt.cancelled() => return Err(user_error("57014", "COPY stopped before it began")),
    };
    let loader = crate::load::Loader::new(warehouse);
    let failed = |e: crate::load::LoadError| user_error(load_sqlstate(&e), e.to_string());
    // what the source names, file by file (globs expanded, links followed), is checked
    // again, and exactly those files are loaded: a local file is opened once and checked
    // by the name the kernel resolved for it, and every read of a file (local or not) is
    // pinned to the version checked, so a glob, a link or a file swapped in after the
    // check cannot reach past the load locations or into the warehouse
    let files = loader
        .resolve(std::slice::from_ref(&copy.source), copy.format)
        .await
        .map_err(failed)?;
    let outside = |file: &str| {
        forbidden(super::policy::Forbidden(format!(
            "COPY traces FROM '{}' names {file}, outside the load locations (or inside the warehouse, or with a glob character in its name)",
            copy.source
        )))
    };
    let mut checked = Vec::with_capacity(files.len());
    for file in files {
        let file = match file.opened_local() {
            None => file,
            Some(Ok(opened)) => opened,
            Some(Err(e)) => {
                return Err(user_error(
                    "58P01",
                    format!("COPY traces FROM: cannot open {}: {e}", file.url),
                ));
            }
        };
        let place = file.place().ok_or_else(|| outside(&file.url))?;
        // a glob character in the name: refused as in the name the COPY gives
        if place.contains(['*', '?', '[']) || !access.locations.may_load(&place, warehouse.root()) {
            return Err(outside(&file.url));
        }
        checked.push(file);
    }
    let mut options = copy.options();
    options.stop = Some(halt);
    options.report = Some(report);
    let record = loader.load_files(checked, &options).await.map_err(failed)?;
    // the rows are visible to the next statement of every connection
    if let Err(e) = cubes.refresh().await {
        tracing::warn!("after COPY: the cubes and traces snapshot were not refreshed: {e}");
    }
    tracing::info!("COPY by {user}: {}", record.summary_line());
    // what the row count alone does not say: files already loaded, rows skipped as
    // duplicates or kept in `rejects`
    let notable = record.files_skipped > 0 || record.rows_duplicate > 0 || record.rows_rejected > 0;
    Ok(CopyDone {
        response: Response::Execution(Tag::new("COPY").with_rows(record.rows_loaded as usize)),
        notice: notable.then(|| format!("COPY traces: {}", record.summary_line())),
    })
}

/// How often a running COPY tells its client how far it got (and finds out whether the
/// client is still there).
const COPY_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A finished COPY: its command tag and a notice for its client.
struct CopyDone {
    response: Response,
    notice: Option<String>,
}

/// A `NOTICE` message.
fn notice(text: String) -> PgWireBackendMessage {
    PgWireBackendMessage::NoticeResponse(
        ErrorInfo::new("NOTICE".into(), "00000".into(), text).into(),
    )
}

/// The SQLSTATE of an error answered to a client.
fn sqlstate_of(error: &PgWireError) -> Option<&str> {
    match error {
        PgWireError::UserError(info) => Some(info.code.as_str()),
        _ => None,
    }
}

/// The answer of a `DELETE` or `UPDATE` as PostgreSQL gives it: its count in the command
/// tag (`DELETE 3`), not as a row (clients described it as returning no rows).
async fn counted_write(
    statement: Option<&Statement>,
    stop: &Interrupt,
    result: PgWireResult<Vec<Response>>,
) -> PgWireResult<Vec<Response>> {
    let verb = match statement {
        Some(Statement::Delete(_)) => "DELETE",
        Some(Statement::Update { .. }) => "UPDATE",
        _ => return result,
    };
    let mut answers = result?;
    if !matches!(answers.as_slice(), [Response::Query(_)]) {
        return Ok(answers);
    }
    let Some(Response::Query(q)) = answers.pop() else {
        unreachable!("matched one query answer")
    };
    unless(stop, command_tag(verb, q)).await.map(|r| vec![r])
}

/// The command tag `<verb> <count>` of a write whose answer is one row holding its count.
async fn command_tag(verb: &str, mut answer: QueryResponse) -> PgWireResult<Response> {
    let mut count = 0u64;
    while let Some(row) = answer.data_rows.next().await {
        let row = row?;
        // one field: a 4-byte length, then the value: text digits, or a big-endian
        // integer when the client asked for binary results
        let value = row.data.get(4..).unwrap_or_default();
        let text = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        count += match (text, <[u8; 8]>::try_from(value)) {
            (Some(n), _) => n,
            (None, Ok(bytes)) => u64::from_be_bytes(bytes),
            (None, Err(_)) => binary_numeric(value),
        };
    }
    Ok(Response::Execution(
        Tag::new(verb).with_rows(count as usize),
    ))
}

/// A non-negative whole PostgreSQL `numeric` in binary form: digit count, weight, sign
/// and scale (2 bytes each), then base-10 000 digits.
fn binary_numeric(value: &[u8]) -> u64 {
    let word = |i: usize| {
        value
            .get(2 * i..2 * i + 2)
            .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]))
    };
    let (digits, weight) = (word(0).max(0) as usize, word(1));
    (0..digits).fold(0u64, |n, i| {
        let power = weight as i64 - i as i64;
        if power < 0 {
            return n;
        }
        n.saturating_add((word(4 + i).max(0) as u64).saturating_mul(10_000u64.pow(power as u32)))
    })
}

/// `answers` with their rows computed: the statement has run to its end.
async fn run_to_end(answers: Vec<Response>) -> PgWireResult<Vec<Response>> {
    let mut done = Vec::with_capacity(answers.len());
    for answer in answers {
        done.push(match answer {
            Response::Query(mut q) => {
                let rows: Vec<_> = q.data_rows.by_ref().collect().await;
                let rows = rows.into_iter().collect::<PgWireResult<Vec<_>>>()?;
                Response::Query(QueryResponse::new(
                    q.row_schema(),
                    futures::stream::iter(rows.into_iter().map(Ok)),
                ))
            }
            other => other,
        });
    }
    Ok(done)
}

/// `error` as the `ErrorResponse` the client receives.
fn error_info(error: PgWireError) -> ErrorInfo {
    match error {
        PgWireError::UserError(info) => *info,
        other => match with_sqlstate(other) {
            PgWireError::UserError(info) => *info,
            other => ErrorInfo::new("ERROR".into(), "XX000".into(), other.to_string()),
        },
    }
}

/// The SQLSTATE a client receives for `error`.
fn code_of(error: &PgWireError) -> String {
    match error {
        PgWireError::UserError(info) => info.code.clone(),
        PgWireError::ApiError(e) => super::errors::sqlstate(e.as_ref()).to_string(),
        _ => "XX000".to_string(),
    }
}

/// The identity of an authenticated connection: no statement runs without one.
fn identity(client: &impl ClientInfo) -> PgWireResult<Arc<Identity>> {
    client
        .session_extensions()
        .get::<Identity>()
        .ok_or_else(|| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "the connection is not authenticated".into(),
            )))
        })
}

/// Records a query in the log when dropped: after its last row was sent (or the client
/// went away).
struct Pending {
    log: Arc<QueryLog>,
    started: Instant,
    entry: LoggedQuery,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.entry.duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.log.push(self.entry.clone());
    }
}

/// DataFusion-postgres's handlers, with the per-query scope of the cube rewrite and the
/// query log around them.
pub struct QueryHandler {
    inner: Arc<DfSessionService>,
    ctx: Arc<SessionContext>,
    cubes: Arc<CubeRegistry>,
    log: Arc<QueryLog>,
    /// Tracecube's own catalogs, shared by every connection.
    shared: Arc<dyn CatalogProviderList>,
    access: Arc<Access>,
    parser: PostgresCompatibilityParser,
    /// The parser of prepared statements.
    prepared: Arc<OneStatement>,
    /// Names of the connection's prepared statements: protocol-level (`Parse`) and SQL
    /// `PREPARE`d, for `DEALLOCATE ALL`.
    /// (name, whether it was prepared with SQL `PREPARE`)
    statement_names: Mutex<std::collections::BTreeSet<(String, bool)>>,
    /// The connection's `SET` and `RESET`.
    settings: Arc<SettingsHook>,
}

impl QueryHandler {
    /// The handler of one connection, over its own session `ctx`.
    pub fn new(
        ctx: Arc<SessionContext>,
        shared: Arc<dyn CatalogProviderList>,
        access: Arc<Access>,
        cubes: Arc<CubeRegistry>,
        log: Arc<QueryLog>,
    ) -> Self {
        let settings = Arc::new(SettingsHook::new(&ctx, access.statement_timeout_ms));
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::clone(&settings) as Arc<dyn QueryHook>,
            Arc::new(datafusion_postgres::hooks::cursor::CursorStatementHook),
            Arc::new(datafusion_postgres::hooks::set_show::SetShowHook),
            Arc::new(datafusion_postgres::hooks::transactions::TransactionStatementHook),
        ];
        let inner = Arc::new(DfSessionService::new_with_hooks(Arc::clone(&ctx), hooks));
        let prepared = Arc::new(OneStatement {
            inner: inner.query_parser(),
            parser: PostgresCompatibilityParser::new(),
        });
        QueryHandler {
            inner,
            ctx,
            cubes,
            log,
            shared,
            access,
            parser: PostgresCompatibilityParser::new(),
            prepared,
            statement_names: Mutex::default(),
            settings,
        }
    }

    /// `DEALLOCATE name` and `DEALLOCATE ALL`, of statements prepared over the protocol
    /// (`Parse`, as drivers do) or with SQL `PREPARE`.
    async fn deallocate<C>(
        &self,
        client: &C,
        name: &str,
        quoted: bool,
    ) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore,
        C::PortalStore: PortalStore,
    {
        let all = !quoted && name.eq_ignore_ascii_case("all");
        let (protocol, sql): (Vec<String>, Vec<String>) = {
            let mut names = self.statement_names.lock().expect("statement names lock");
            let taken: Vec<(String, bool)> = if all {
                std::mem::take(&mut *names).into_iter().collect()
            } else {
                names
                    .take(&(name.to_string(), false))
                    .into_iter()
                    .chain(names.take(&(name.to_string(), true)))
                    .collect()
            };
            let (sql, protocol): (Vec<_>, Vec<_>) = taken.into_iter().partition(|(_, sql)| *sql);
            (
                protocol.into_iter().map(|(n, _)| n).collect(),
                sql.into_iter().map(|(n, _)| n).collect(),
            )
        };
        if !all && protocol.is_empty() && sql.is_empty() {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "26000".into(),
                format!("prepared statement \"{name}\" does not exist"),
            ))));
        }
        for name in &protocol {
            client.portal_store().rm_statement(name);
        }
        for name in &sql {
            // DataFusion removes what SQL PREPARE stored
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            if let Err(e) = self.ctx.sql(&format!("DEALLOCATE {quoted}")).await {
                tracing::debug!("DEALLOCATE {quoted}: {e}");
            }
        }
        if all {
            client.portal_store().clear_portals();
            return Ok(vec![Response::Execution(Tag::new("DEALLOCATE ALL"))]);
        }
        Ok(vec![Response::Execution(Tag::new("DEALLOCATE"))])
    }

    /// `DISCARD ALL` (what connection poolers send before handing the connection to
    /// another client): settings reset, prepared statements deallocated, the connection's
    /// own tables and views dropped. `DISCARD PLANS` and `SEQUENCES` have nothing to do.
    async fn discard<C>(&self, client: &mut C, object: DiscardObject) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match object {
            DiscardObject::ALL => {
                self.deallocate(client, "all", false).await?;
                self.settings.discard_all(&self.ctx, client).await?;
                Ok(vec![Response::Execution(Tag::new("DISCARD ALL"))])
            }
            DiscardObject::TEMP => {
                crate::server::settings::drop_own_objects(&self.ctx);
                Ok(vec![Response::Execution(Tag::new("DISCARD TEMP"))])
            }
            DiscardObject::PLANS => Ok(vec![Response::Execution(Tag::new("DISCARD PLANS"))]),
            DiscardObject::SEQUENCES => {
                Ok(vec![Response::Execution(Tag::new("DISCARD SEQUENCES"))])
            }
        }
    }

    fn policy<'a>(&'a self, identity: &Identity, defaults: &'a (String, String)) -> Policy<'a> {
        Policy {
            role: identity.role,
            shared: self.shared.as_ref(),
            locations: &self.access.locations,
            default_catalog: &defaults.0,
            default_schema: &defaults.1,
        }
    }

    /// The session's default catalog and schema.
    fn defaults(&self) -> (String, String) {
        let state = self.ctx.state_ref();
        let state = state.read();
        let options = &state.config_options().catalog;
        (
            options.default_catalog.clone(),
            options.default_schema.clone(),
        )
    }

    /// Check one statement just before it runs (so that it is planned over what the
    /// statements before it did): refused, or failing to plan, it does not run.
    async fn check(&self, identity: &Identity, statement: &Statement) -> Result<(), PgWireError> {
        let defaults = self.defaults();
        let policy = self.policy(identity, &defaults);
        policy.check_statement(statement).map_err(forbidden)?;
        let state = self.ctx.state();
        // A cursor runs its query.
        let planned = match statement {
            Statement::Declare { stmts } => {
                for query in stmts.iter().filter_map(|d| d.for_query.as_ref()) {
                    let plan = state
                        .create_logical_plan(&query.to_string())
                        .await
                        .map_err(|e| with_sqlstate(PgWireError::ApiError(Box::new(e))))?;
                    policy.check(&plan).map_err(forbidden)?;
                }
                return Ok(());
            }
            s => state.create_logical_plan(&s.to_string()).await,
        };
        match planned {
            Ok(plan) => policy.check(&plan).map_err(forbidden),
            // Statements the server answers itself, without DataFusion's planner.
            Err(_) if answered_by_hooks(statement) => Ok(()),
            Err(e) => Err(with_sqlstate(PgWireError::ApiError(Box::new(e)))),
        }
    }

    /// One statement of a simple query: checked, run (again from `traces` if its cube
    /// plan failed), logged.
    async fn run_simple<C>(
        &self,
        client: &mut C,
        statement: &Statement,
    ) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let identity = identity(client)?;
        if let Statement::Deallocate { name, .. } = statement {
            return self
                .deallocate(client, &name.value, name.quote_style.is_some())
                .await;
        }
        if let Statement::Discard { object_type } = statement {
            return self.discard(client, *object_type).await;
        }
        if let Statement::Prepare { name, .. } = statement {
            let mut names = self.statement_names.lock().expect("statement names lock");
            names.insert((name.value.clone(), true));
        }
        let query = statement.to_string();
        let (mut scope, pending) = self.begin(client, &query).await;
        let stop = interrupt(client).await;
        if let Err(error) = unless(&stop, self.check(&identity, statement)).await {
            return Err(self.refuse(pending, &scope, error));
        }
        let mut result = unless(
            &stop,
            QUERY.scope(
                Arc::clone(&scope),
                SimpleQueryHandler::do_query(self.inner.as_ref(), client, &query),
            ),
        )
        .await;
        if let Err(e) = &result
            && let Some(raw) = raw_retry(&scope, &query, e)
        {
            scope = raw;
            result = unless(
                &stop,
                QUERY.scope(
                    Arc::clone(&scope),
                    SimpleQueryHandler::do_query(self.inner.as_ref(), client, &query),
                ),
            )
            .await;
        }
        let result = counted_write(Some(statement), &stop, result).await;
        let mut result = result.map_err(with_sqlstate);
        if let Ok(responses) = &mut result {
            rows_unless(stop, responses);
        }
        Self::finish(&scope, pending, &mut result);
        result
    }

    /// `COPY traces FROM …`: checked (role, table, location), run as a load of the
    /// warehouse, logged, answered `COPY <rows loaded>`; cancelled with the query (before
    /// its commit, the load writes nothing; a commit already made stays).
    async fn copy_from<C>(
        &self,
        client: &mut C,
        query: &str,
        copy: Result<super::copy_from::CopyFrom, (&'static str, String)>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let identity = identity(client)?;
        let (scope, pending) = self.begin(client, query).await;
        let copy = match copy {
            Ok(copy) => copy,
            Err((code, message)) => {
                return Err(self.refuse(pending, &scope, user_error(code, message)));
            }
        };
        let warehouse = self.cubes.warehouse().clone();
        let defaults = self.defaults();
        let checked = self.policy(&identity, &defaults).check_copy_from(
            &copy.table,
            &copy.source,
            warehouse.root(),
        );
        if let Err(refusal) = checked {
            return Err(self.refuse(pending, &scope, forbidden(refusal)));
        }
        let stop = interrupt(client).await;
        // The load runs as a task of its own: a cancel or a timeout asks it to stop at
        // its next safe point before its commit (then nothing is written and the
        // statement fails as cancelled); once it commits, it finishes, as PostgreSQL
        // finishes a statement whose cancel comes too late.
        // A client that goes away stops it too: the progress notice sent every
        // COPY_PROGRESS_EVERY cannot be written to it.
        let halt = tokio_util::sync::CancellationToken::new();
        let _halt_when_dropped = halt.clone().drop_guard();
        let (access, cubes) = (Arc::clone(&self.access), Arc::clone(&self.cubes));
        let user = identity.user.clone();
        let report = Arc::new(crate::load::LoadProgress::default());
        let mut task = tokio::spawn({
            let (halt, report) = (halt.clone(), Arc::clone(&report));
            async move { run_copy(&access, &cubes, &warehouse, &copy, halt, report, &user).await }
        });
        let joined = |r: Result<PgWireResult<CopyDone>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(user_error("XX000", format!("COPY failed: {e}"))))
        };
        // the statement's own error when the load stopped because it was asked to, its
        // real error when it failed otherwise meanwhile
        let stopped = |result: PgWireResult<CopyDone>, why: PgWireError| match result {
            Err(e) if sqlstate_of(&e) == Some("57014") => Err(why),
            other => other,
        };
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + COPY_PROGRESS_EVERY,
            COPY_PROGRESS_EVERY,
        );
        let done = loop {
            tokio::select! {
                r = &mut task => break joined(r),
                reason = stop.clone() => {
                    halt.cancel();
                    break stopped(joined(task.await), reason.error());
                }
                _ = progress.tick() => {
                    let notice = notice(format!("COPY traces: {}", report.describe()));
                    if client.send(notice).await.is_err() {
                        halt.cancel();
                        let gone = user_error("08006", "COPY stopped: the client went away");
                        break stopped(joined(task.await), gone);
                    }
                }
            }
        };
        let mut result = match done {
            Ok(CopyDone {
                response,
                notice: Some(text),
            }) => {
                // the rows are committed whether or not the client still hears of it
                let _ = client.send(notice(text)).await;
                Ok(vec![response])
            }
            Ok(CopyDone {
                response,
                notice: None,
            }) => Ok(vec![response]),
            Err(e) => Err(e),
        };
        Self::finish(&scope, pending, &mut result);
        result.map(|mut r| r.remove(0))
    }

    /// A statement that does not run: logged, and answered with `error`.
    fn refuse(&self, pending: Pending, scope: &QueryScope, error: PgWireError) -> PgWireError {
        tracing::info!("not run: {error}");
        let mut result = Err(error);
        Self::finish(scope, pending, &mut result);
        let Err(error) = result else {
            unreachable!("finish keeps an error an error")
        };
        error
    }

    /// Refresh the cube state and open the scope of one query.
    async fn begin(&self, client: &impl ClientInfo, query: &str) -> (Arc<QueryScope>, Pending) {
        if let Err(e) = self.cubes.refresh().await {
            tracing::warn!("cannot read the cubes' state, answering from traces: {e}");
        }
        let use_cubes = {
            let state = self.ctx.state_ref();
            let state = state.read();
            TracecubeOptions::of(state.config_options()).use_cubes.0
        };
        let scope = QueryScope::new();
        let pending = Pending {
            log: Arc::clone(&self.log),
            started: Instant::now(),
            entry: LoggedQuery {
                id: 0,
                started_at: chrono::Utc::now().timestamp_micros(),
                duration_ms: 0.0,
                user: client
                    .session_extensions()
                    .get::<Identity>()
                    .map(|who| who.user.clone()),
                query: query.to_string(),
                use_cubes,
                cubes: None,
                cube_misses: None,
                rows: 0,
                error: None,
                sqlstate: None,
                role: client
                    .session_extensions()
                    .get::<Identity>()
                    .map(|who| who.role.name()),
            },
        };
        (scope, pending)
    }

    /// Note the outcome; the entry is logged when the last response stream ends.
    fn finish(scope: &QueryScope, mut pending: Pending, result: &mut PgWireResult<Vec<Response>>) {
        let joined = |list: &Mutex<Vec<String>>| {
            let list = list.lock().expect("query scope lock");
            (!list.is_empty()).then(|| list.join("; "))
        };
        pending.entry.cubes = joined(&scope.cubes_used).map(|c| c.replace("; ", ", "));
        pending.entry.cube_misses = joined(&scope.misses);
        match result {
            Err(e) => {
                pending.entry.sqlstate = Some(code_of(e));
                pending.entry.error = Some(e.to_string());
            }
            Ok(responses) => {
                if let Some(Response::Query(q)) = responses
                    .iter_mut()
                    .rev()
                    .find(|r| matches!(r, Response::Query(_)))
                {
                    let rows =
                        std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
                    let mut pending = pending;
                    q.data_rows = Box::pin(rows.map(move |row| {
                        // the whole entry moves into the stream: logged when it is dropped
                        let pending = &mut pending;
                        let row = row.map_err(with_sqlstate);
                        match &row {
                            Ok(_) => pending.entry.rows += 1,
                            Err(e) => {
                                pending.entry.sqlstate = Some(code_of(e));
                                pending.entry.error = Some(e.to_string());
                            }
                        }
                        row
                    }));
                }
            }
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        identity(client)?;
        if let Some(copy) = super::copy_from::parse(query) {
            return self.copy_from(client, query, copy).await.map(|r| vec![r]);
        }
        let statements = self
            .parser
            .parse(query)
            .map_err(|e| with_sqlstate(PgWireError::ApiError(Box::new(e))))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        // One statement after the other, each checked just before it runs and run to its
        // end before the next starts (its rows kept for the client); the first that fails
        // ends the query, as in PostgreSQL.
        let last = statements.len() - 1;
        let mut responses = Vec::with_capacity(statements.len());
        for (i, statement) in statements.iter().enumerate() {
            let result = match self.run_simple(client, statement).await {
                Ok(answers) if i < last => run_to_end(answers).await,
                other => other,
            };
            match result {
                Ok(answers) => responses.extend(answers),
                Err(_) if responses.is_empty() => return result,
                Err(error) => {
                    responses.push(Response::Error(Box::new(error_info(error))));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = OneStatement;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.prepared)
    }

    /// `Execute` of a whole portal streams its rows to the client as they are computed
    /// (pgwire's default gathers every row in memory first); a portal fetched a few rows
    /// at a time (`max_rows > 0`, cursors of JDBC's `setFetchSize`) is pgwire's.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) if message.max_rows == 0 => portal,
            _ => return self._on_execute(client, message).await,
        };
        if !matches!(*portal.state().lock().await, PortalExecutionState::Initial) {
            return self._on_execute(client, message).await;
        }
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let mut status = client.transaction_status();
        client.set_state(PgWireConnectionState::QueryInProgress);
        match ExtendedQueryHandler::do_query(self, client, portal.as_ref(), 0).await? {
            Response::Query(results) => {
                let schema = results.row_schema();
                send_query_response(client, results, false).await?;
                // executing the finished portal again answers no rows
                portal
                    .start(QueryResponse::new(schema, futures::stream::empty()))
                    .await;
                let _ = portal.fetch(0).await;
            }
            Response::EmptyQuery => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?
            }
            Response::Execution(tag) => send_execution_response(client, tag).await?,
            Response::TransactionStart(tag) => {
                send_execution_response(client, tag).await?;
                status = status.to_in_transaction_state();
            }
            Response::TransactionEnd(tag) => {
                send_execution_response(client, tag).await?;
                status = status.to_idle_state();
                client.portal_store().rm_portal(DEFAULT_NAME);
            }
            Response::Error(error) => {
                client
                    .send(PgWireBackendMessage::ErrorResponse((*error).into()))
                    .await?;
                status = status.to_error_state();
            }
            Response::CopyIn(_) | Response::CopyOut(_) | Response::CopyBoth(_) => {
                return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "ERROR".into(),
                    "0A000".into(),
                    "COPY is not supported over the extended protocol".into(),
                ))));
            }
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
        Ok(())
    }

    /// pgwire's `Parse`, noting the statement's name for `DEALLOCATE ALL`.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.clone().unwrap_or_default();
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        if !name.is_empty() {
            let mut names = self.statement_names.lock().expect("statement names lock");
            names.insert((name, false));
        }
        client
            .send(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let identity = identity(client)?;
        let query = &portal.statement.statement.0;
        if portal.statement.statement.1.is_none()
            && let Some(copy) = super::copy_from::parse(query)
        {
            return self.copy_from(client, query, copy).await;
        }
        let (mut scope, pending) = self.begin(client, query).await;
        if let (_, Some((statement, plan))) = &portal.statement.statement {
            let checked = match statement {
                // the plan of a cursor is a placeholder: check the query it runs
                Statement::Declare { .. } => self.check(&identity, statement).await,
                _ => {
                    let defaults = self.defaults();
                    let policy = self.policy(&identity, &defaults);
                    policy
                        .check_statement(statement)
                        .and_then(|()| policy.check(plan))
                        .map_err(forbidden)
                }
            };
            if let Err(error) = checked {
                return Err(self.refuse(pending, &scope, error));
            }
        }
        let stop = interrupt(client).await;
        let mut result = unless(
            &stop,
            QUERY.scope(
                Arc::clone(&scope),
                ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows),
            ),
        )
        .await;
        if let Err(e) = &result
            && let Some(raw) = raw_retry(&scope, query, e)
        {
            scope = raw;
            result = unless(
                &stop,
                QUERY.scope(
                    Arc::clone(&scope),
                    ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows),
                ),
            )
            .await;
        }
        let statement = portal.statement.statement.1.as_ref().map(|(s, _)| s);
        let result = counted_write(statement, &stop, result.map(|r| vec![r])).await;
        let mut results = result.map_err(with_sqlstate);
        if let Ok(responses) = &mut results {
            rows_unless(stop, responses);
        }
        Self::finish(&scope, pending, &mut results);
        results.map(|mut r| r.remove(0))
    }
}

/// The scope of a second, raw run of a query that failed after the rewrite used a cube:
/// the rewrite must never turn a working query into a failing one. Only a single
/// read-only statement (a query or its `EXPLAIN`) is run again; nothing of it ran.
fn raw_retry(scope: &QueryScope, query: &str, error: &PgWireError) -> Option<Arc<QueryScope>> {
    if scope
        .cubes_used
        .lock()
        .expect("query scope lock")
        .is_empty()
    {
        return None;
    }
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let statements = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, query).ok()?;
    let [statement] = statements.as_slice() else {
        return None;
    };
    // `SELECT … INTO t` creates a table: not read-only.
    let plain_query = |s: &Statement| match s {
        Statement::Query(q) => !matches!(q.body.as_ref(), SetExpr::Select(s) if s.into.is_some()),
        _ => false,
    };
    let read_only = match statement {
        Statement::Explain { statement, .. } => plain_query(statement),
        s => plain_query(s),
    };
    if !read_only {
        return None;
    }
    let reason = format!("the cube plan failed ({error}); run again from traces");
    tracing::warn!("{reason}: {query}");
    Some(QueryScope::raw(reason))
}

/// `datafusion-postgres`'s parser of prepared statements, refusing several statements in
/// one (as PostgreSQL does, `42601`) instead of running only the first.
pub struct OneStatement {
    inner: Arc<<DfSessionService as ExtendedQueryHandler>::QueryParser>,
    parser: PostgresCompatibilityParser,
}

#[async_trait]
impl QueryParser for OneStatement {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        identity(client)?;
        // answered by the server itself, with no rows (see `copy_from`)
        if let Some(copy) = super::copy_from::parse(sql) {
            copy.map_err(|(code, message)| user_error(code, message))?;
            return Ok(Some((sql.to_string(), None)));
        }
        let count = self.parser.parse(sql).map_or(0, |s| s.len());
        if count > 1 {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "42601".into(),
                "cannot insert multiple commands into a prepared statement".into(),
            ))));
        }
        self.inner
            .parse_sql(client, sql, types)
            .await
            .map_err(with_sqlstate)
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}

/// Statements the query hooks answer (settings, transactions, cursors): DataFusion does
/// not plan all of them.
fn answered_by_hooks(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Deallocate { .. }
            | Statement::Discard { .. }
            | Statement::Reset(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_numerics_are_read() {
        // 12 345 678: digits 1234, 5678, weight 1
        let value = [0, 2, 0, 1, 0, 0, 0, 0, 0x04, 0xD2, 0x16, 0x2E];
        assert_eq!(binary_numeric(&value), 12_345_678);
        assert_eq!(binary_numeric(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 7]), 7);
        assert_eq!(binary_numeric(&[0, 0, 0, 0, 0, 0, 0, 0]), 0);
    }

    #[test]
    fn only_one_read_only_statement_that_used_a_cube_runs_again_raw() {
        let error = PgWireError::ApiError("boom".into());
        let used = QueryScope::new();
        QueryScope::note(&used.cubes_used, "cube_axes".into());
        let retried = |scope: &QueryScope, sql: &str| raw_retry(scope, sql, &error).is_some();
        assert!(retried(
            &used,
            "SELECT channel, count(*) FROM traces GROUP BY 1"
        ));
        assert!(retried(&used, "EXPLAIN SELECT count(*) FROM traces"));
        let raw = raw_retry(&used, "SELECT count(*) FROM traces", &error).unwrap();
        assert!(raw.raw_only);
        assert!(raw.misses.lock().unwrap()[0].contains("boom"));
        for sql in [
            "INSERT INTO impact_weights SELECT 'channel', channel, count(*) FROM traces GROUP BY 1",
            "SELECT 1; SELECT count(*) FROM traces",
            "CREATE VIEW v AS SELECT count(*) FROM traces",
            "not sql at all",
            "SELECT channel, count(*) INTO copy FROM traces GROUP BY 1",
        ] {
            assert!(!retried(&used, sql), "{sql}");
        }
        let unused = QueryScope::new();
        assert!(!retried(&unused, "SELECT count(*) FROM traces"));
    }
}
