//! The PostgreSQL server: `datafusion-postgres`'s query handlers over a Tracecube session,
//! with Tracecube's own listener (free ports for tests, graceful shutdown, TLS, a
//! connection limit) and authentication (configured users, or with none: loopback clients
//! as user `tracecube` only).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::prelude::SessionContext;
pub mod auth;
pub mod copy_from;
pub mod errors;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod queries;
pub mod scram;
pub mod settings;

use crate::catalog;
use crate::cubes::registry::CubeRegistry;
use crate::system::queries::QueryLog;
pub use auth::DEFAULT_USER;
use auth::{Access, Authenticator};
use datafusion_postgres::pgwire::api::auth::StartupHandler;
use datafusion_postgres::pgwire::api::cancel::DefaultCancelHandler;
use datafusion_postgres::pgwire::api::{ConnectionManager, PgWireServerHandlers};
use datafusion_postgres::pgwire::tokio::process_socket;
use metrics::Metrics;
use queries::QueryHandler;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

struct Handlers {
    session: Arc<QueryHandler>,
    startup: Arc<Authenticator>,
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
    metrics: Arc<Metrics>,
    /// Connections open with this one.
    count: usize,
}

impl Open {
    fn new(active: &Arc<AtomicUsize>, metrics: &Arc<Metrics>) -> Self {
        let count = active.fetch_add(1, Ordering::SeqCst) + 1;
        metrics.connections.inc();
        metrics.connections_accepted.inc();
        Open {
            active: Arc::clone(active),
            metrics: Arc::clone(metrics),
            count,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.metrics.connections.dec();
    }
}

/// A bound PostgreSQL listener, not yet accepting.
pub struct Server {
    listener: TcpListener,
    max_connections: usize,
    access: Arc<Access>,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    http: Option<TcpListener>,
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
            access: Arc::new(Access::default()),
            http: None,
        })
    }

    /// Also serve `/metrics` and `/healthz` over HTTP on `addr` (port 0 picks a free port).
    pub async fn with_http(mut self, addr: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot serve metrics on {addr}: {e} (choose another address with \
                     http_listen, or http_listen = \"\" for none)"
                ),
            )
        })?;
        self.http = Some(listener);
        Ok(self)
    }

    /// The address of the metrics endpoint, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Let clients in as `access` says (users, TLS, allowed locations).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = Arc::new(access);
        self
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
        let metrics = Arc::clone(&log.metrics);
        let endpoint = self.http.map(|listener| {
            let endpoint = Arc::new(http::Endpoint {
                ctx: ctx.clone(),
                metrics: Arc::clone(&metrics),
                cubes: Arc::clone(&cubes),
            });
            tokio::spawn(endpoint.serve(listener))
        });
        let shared = Arc::clone(ctx.state().catalog_list());
        let cancel = Arc::new(DefaultCancelHandler::new(Arc::clone(&connections)));
        let access = Arc::clone(&self.access);
        // Each connection gets its own session (settings, its own objects) over the shared
        // catalog, and its identity once authenticated.
        let handlers = move |too_many: Option<usize>| {
            let ctx = Arc::new(catalog::connection_session(&ctx));
            let startup = Arc::new(Authenticator::new(
                Arc::clone(&access),
                Arc::clone(&connections),
                Arc::clone(&ctx),
                too_many,
                Arc::clone(&log.metrics),
            ));
            let session = QueryHandler::new(
                ctx,
                Arc::clone(&shared),
                Arc::clone(&access),
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
                        let open = Open::new(&active, &metrics);
                        let over = (open.count > self.max_connections).then_some(self.max_connections);
                        let handlers = handlers(over);
                        let tls = self.access.tls.clone();
                        sessions.spawn(async move {
                            let _open = open;
                            if let Err(e) = process_socket(socket, tls, handlers).await {
                                tracing::debug!("session from {peer} ended with an error: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        // out of file descriptors: give sessions time to end
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        tracing::info!("shutting down: closing {} session(s)", sessions.len());
        if let Some(endpoint) = endpoint {
            endpoint.abort();
        }
        sessions.shutdown().await;
        Ok(())
    }
}
