//! The PostgreSQL server: `datafusion-postgres`'s query handlers over a Tracecube session,
//! with Tracecube's own listener (free ports for tests, graceful shutdown) and start-up
//! check (with no users configured: loopback clients as user `tracecube` only).

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
pub mod errors;
pub mod policy;
pub mod queries;

use crate::catalog;
use crate::cubes::registry::CubeRegistry;
use datafusion_postgres::pgwire::api::auth::StartupHandler;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::{ClientInfo, ConnectionManager, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::tokio::process_socket;
use futures::Sink;
use policy::Role;
use queries::{QueryHandler, QueryLog};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The user every loopback client connects as when no users are configured.
pub const DEFAULT_USER: &str = "tracecube";

/// Accepts the start-up of loopback clients connecting as [`DEFAULT_USER`].
struct LoopbackOnly {
    connections: Arc<ConnectionManager>,
}

impl NoopStartupHandler for LoopbackOnly {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }
}

/// Refuses a start-up that is not from loopback as `tracecube`, before authentication ends;
/// tells the connection's session who is connected.
struct StartupCheck {
    inner: Arc<LoopbackOnly>,
    session: Arc<SessionContext>,
    /// Set when accepting this connection went past `max_connections`.
    too_many: Option<usize>,
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

#[async_trait]
impl StartupHandler for StartupCheck {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(startup) = &message {
            if let Some(max) = self.too_many {
                return Err(fatal(
                    "53300",
                    format!("sorry, too many clients already (max_connections = {max})"),
                ));
            }
            if !client.socket_addr().ip().is_loopback() {
                return Err(fatal(
                    "28000",
                    format!(
                        "connection from {} refused: with no users configured only loopback clients are accepted",
                        client.socket_addr().ip()
                    ),
                ));
            }
            let user = startup
                .parameters
                .get("user")
                .map(String::as_str)
                .unwrap_or("");
            if user != DEFAULT_USER {
                return Err(fatal(
                    "28000",
                    format!(
                        "role \"{user}\" does not exist: with no users configured, connect as \"{DEFAULT_USER}\""
                    ),
                ));
            }
            for f in tracecube_udfs::session::user_functions(user) {
                self.session.register_udf(f);
            }
        }
        self.inner.on_startup(client, message).await
    }
}

struct Handlers {
    session: Arc<QueryHandler>,
    startup: Arc<StartupCheck>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(
        &self,
    ) -> Arc<impl datafusion_postgres::pgwire::api::query::SimpleQueryHandler> {
        self.session.clone()
    }

    fn extended_query_handler(
        &self,
    ) -> Arc<impl datafusion_postgres::pgwire::api::query::ExtendedQueryHandler> {
        self.session.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl datafusion_postgres::pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}

/// One open connection, counted while it lives.
struct Open {
    active: Arc<AtomicUsize>,
    /// Connections open with this one.
    count: usize,
}

impl Open {
    fn new(active: &Arc<AtomicUsize>) -> Self {
        let count = active.fetch_add(1, Ordering::SeqCst) + 1;
        Open {
            active: Arc::clone(active),
            count,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A bound PostgreSQL listener, not yet accepting.
pub struct Server {
    listener: TcpListener,
    max_connections: usize,
}

impl Server {
    /// Bind `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {addr}: {e} (is another server running there? choose another address with --listen)"
                ),
            )
        })?;
        Ok(Server {
            listener,
            max_connections: 100,
        })
    }

    /// Serve at most `max` connections at once.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve `ctx` to clients until `shutdown` completes, then stop accepting and end the
    /// sessions.
    pub async fn run_until(
        self,
        ctx: SessionContext,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let connections = Arc::new(ConnectionManager::new());
        let config = ctx.state().config().clone();
        let (Some(cubes), Some(log)) = (
            config.get_extension::<CubeRegistry>(),
            config.get_extension::<QueryLog>(),
        ) else {
            return Err(std::io::Error::other(
                "the session was not built by catalog::session (no cube registry or query log)",
            ));
        };
        let shared = Arc::clone(ctx.state().catalog_list());
        let loopback = Arc::new(LoopbackOnly {
            connections: connections.clone(),
        });
        let cancel = Arc::new(DefaultCancelHandler::new(connections));
        // Each connection gets its own session (settings, its own objects) over the shared
        // catalog; with no users configured, every client is the admin `tracecube`.
        let handlers = move |too_many: Option<usize>| {
            let ctx = Arc::new(catalog::connection_session(&ctx));
            let startup = Arc::new(StartupCheck {
                inner: Arc::clone(&loopback),
                session: Arc::clone(&ctx),
                too_many,
            });
            let session = QueryHandler::new(
                ctx,
                Arc::clone(&shared),
                Role::Admin,
                Arc::clone(&cubes),
                Arc::clone(&log),
            );
            Arc::new(Handlers {
                session: Arc::new(session),
                startup,
                cancel: Arc::clone(&cancel),
            })
        };
        let active = Arc::new(AtomicUsize::new(0));
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let open = Open::new(&active);
                        let over = (open.count > self.max_connections).then_some(self.max_connections);
                        let handlers = handlers(over);
                        sessions.spawn(async move {
                            let _open = open;
                            if let Err(e) = process_socket(socket, None, handlers).await {
                                tracing::debug!("session from {peer} ended with an error: {e}");
                            }
                        });
                    }
                    Err(e) => tracing::warn!("accept failed: {e}"),
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        tracing::info!("shutting down: closing {} session(s)", sessions.len());
        sessions.shutdown().await;
        Ok(())
    }
}
