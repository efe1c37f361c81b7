//! Who may connect: the configured users (SCRAM-SHA-256 passwords, a role each), or with
//! none configured, loopback clients as the admin `tracecube`; TLS, required or not; the
//! connection limit. What a connection is allowed afterwards lives in its [`Identity`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::BufReader;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::prelude::SessionContext;
use datafusion_postgres::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::{
    ClientInfo, ConnectionManager, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use futures::{Sink, SinkExt};
use tokio::sync::Mutex;

use super::metrics::Metrics;
use super::policy::{Locations, Role};
use super::scram::{self, Challenge, ScramError, Verifier};
use crate::config::Config;

/// The user every loopback client connects as when no users are configured.
pub const DEFAULT_USER: &str = "tracecube";

/// Who a connection is, set once its authentication succeeded (kept in the connection's
/// session extensions, which no SQL can reach).
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

/// Where a connection's cancel requests arrive.
pub struct CancelHandle(pub Arc<datafusion_postgres::pgwire::api::ConnectionHandle>);

/// How clients are let in, and what the server allows them: built once from the
/// configuration.
pub struct Access {
    /// Configured users; empty: loopback clients as [`DEFAULT_USER`].
    users: HashMap<String, (Role, Verifier)>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub tls_only: bool,
    pub locations: Locations,
    /// Default `statement_timeout` of each session, in milliseconds (0: none).
    pub statement_timeout_ms: u64,
    /// `COPY … FROM` loads run one at a time (each holds up to `load_memory_mb`): the
    /// next one waits for this permit, still stopped by a cancel or its timeout.
    pub copy_permit: Arc<tokio::sync::Semaphore>,
    pids: RandomPidSecretKeyGenerator,
}

impl Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("tls", &self.tls.is_some())
            .field("tls_only", &self.tls_only)
            .finish()
    }
}

impl Default for Access {
    /// No users (loopback only), no TLS, no export folder or external location.
    fn default() -> Self {
        Access {
            users: HashMap::new(),
            tls: None,
            tls_only: false,
            locations: Locations::default(),
            statement_timeout_ms: 0,
            copy_permit: Arc::new(tokio::sync::Semaphore::new(1)),
            pids: RandomPidSecretKeyGenerator::default(),
        }
    }
}

impl Access {
    /// From the configuration: verifiers parsed, certificate and key read.
    pub fn from_config(config: &Config) -> Result<Access, String> {
        let mut users = HashMap::new();
        for user in &config.users {
            let verifier = Verifier::parse(&user.password)
                .map_err(|e| format!("users.{}.password: {e}", user.name))?;
            users.insert(user.name.clone(), (user.role, verifier));
        }
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        Ok(Access {
            users,
            tls,
            tls_only: config.requires_tls(),
            locations: Locations::new(
                config.export_dir.as_deref(),
                &config.external_locations,
                &config.load_locations,
            )?,
            statement_timeout_ms: config.statement_timeout,
            copy_permit: Arc::new(tokio::sync::Semaphore::new(1)),
            pids: RandomPidSecretKeyGenerator::default(),
        })
    }

    /// Whether users are configured (otherwise: loopback only).
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }
}

/// The TLS acceptor of `[tls]`: a PEM certificate chain and private key.
fn tls_acceptor(tls: &crate::config::TlsConfig) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read =
        |path: &str| std::fs::read(path).map_err(|e| format!("cannot read TLS file {path}: {e}"));
    let certs = CertificateDer::pem_reader_iter(BufReader::new(&read(&tls.cert)?[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert {}: not a PEM certificate chain: {e}", tls.cert))?;
    if certs.is_empty() {
        return Err(format!("tls.cert {}: no certificate in the file", tls.cert));
    }
    let key = PrivateKeyDer::from_pem_reader(BufReader::new(&read(&tls.key)?[..]))
        .map_err(|e| format!("tls.key {}: not a PEM private key: {e}", tls.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate {} and key {}: {e}", tls.cert, tls.key))?;
    // direct TLS negotiation (PostgreSQL 17 clients with sslnegotiation=direct)
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A FATAL start-up error with its SQLSTATE.
pub fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

/// Where one connection's authentication stands.
#[derive(Debug)]
enum Step {
    /// Waiting for the start-up message.
    Start,
    /// SCRAM offered to a configured user.
    Offered { user: String },
    /// Server-first message sent.
    Challenged {
        user: String,
        challenge: Box<Challenge>,
    },
}

/// The start-up of one connection.
pub struct Authenticator {
    pub access: Arc<Access>,
    pub connections: Arc<ConnectionManager>,
    /// The connection's session: its user functions are registered once it is known.
    pub session: Arc<SessionContext>,
    /// Set when accepting this connection went past `max_connections`.
    pub too_many: Option<usize>,
    metrics: Arc<Metrics>,
    step: Mutex<Step>,
}

impl Authenticator {
    pub fn new(
        access: Arc<Access>,
        connections: Arc<ConnectionManager>,
        session: Arc<SessionContext>,
        too_many: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Authenticator {
            access,
            connections,
            session,
            too_many,
            metrics,
            step: Mutex::new(Step::Start),
        }
    }

    /// Authentication succeeded: the connection gets its identity, its cancel key and its
    /// session settings, and is ready for queries.
    async fn admit<C>(&self, client: &mut C, user: String, role: Role) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = self.access.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.connections.register(pid, secret);
        // kept under Tracecube's own type: the query handler, not pgwire, listens for
        // cancel requests (through the whole statement, its rows included)
        client.session_extensions().insert(CancelHandle(handle));
        client.session_extensions().insert(guard);
        for f in tracecube_udfs::session::user_functions(&user) {
            self.session.register_udf(f);
        }
        if self.access.statement_timeout_ms > 0 {
            client.metadata_mut().insert(
                super::queries::STATEMENT_TIMEOUT_KEY.into(),
                self.access.statement_timeout_ms.to_string(),
            );
        }
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = tracecube_udfs::session::POSTGRES_VERSION.to_string();
        parameters.is_superuser = role == Role::Admin;
        parameters.session_authorization = Some(user.clone());
        tracing::debug!("{user} ({}) connected", role.name());
        let identity = Identity { user, role };
        // the session's tables (tracecube.queries) see who is asking
        self.session
            .state_ref()
            .write()
            .config_mut()
            .set_extension(Arc::new(identity.clone()));
        client.session_extensions().insert(identity);
        finish_authentication(client, &parameters).await
    }
}

#[async_trait]
impl StartupHandler for Authenticator {
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
        let result = self.step(client, message).await;
        if let Err(PgWireError::UserError(info)) = &result {
            self.metrics.refused(match info.code.as_str() {
                "53300" => "too_many",
                "28P01" => "wrong_password",
                "28000" => "not_allowed",
                _ => "protocol",
            });
        }
        result
    }
}

impl Authenticator {
    /// One start-up message.
    async fn step<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut step = self.step.lock().await;
        match (std::mem::replace(&mut *step, Step::Start), message) {
            (Step::Start, PgWireFrontendMessage::Startup(startup)) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                if let Some(max) = self.too_many {
                    return Err(fatal(
                        "53300",
                        format!("sorry, too many clients already (max_connections = {max})"),
                    ));
                }
                if self.access.tls_only && !client.is_secure() {
                    return Err(fatal(
                        "28000",
                        "this server accepts only TLS connections (tls_only): connect with \
                         sslmode=require"
                            .into(),
                    ));
                }
                let user = startup.parameters.get("user").cloned().unwrap_or_default();
                if !self.access.has_users() {
                    let ip = client.socket_addr().ip();
                    if !ip.is_loopback() {
                        return Err(fatal(
                            "28000",
                            format!(
                                "connection from {ip} refused: with no users configured only \
                                 loopback clients are accepted"
                            ),
                        ));
                    }
                    if user != DEFAULT_USER {
                        return Err(fatal(
                            "28000",
                            format!(
                                "role \"{user}\" does not exist: with no users configured, \
                                 connect as \"{DEFAULT_USER}\""
                            ),
                        ));
                    }
                    return self.admit(client, user, Role::Admin).await;
                }
                if !self.access.users.contains_key(&user) {
                    return Err(fatal("28000", format!("role \"{user}\" does not exist")));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        vec![scram::MECHANISM.to_string()],
                    )))
                    .await?;
                *step = Step::Offered { user };
                Ok(())
            }
            (Step::Offered { user }, PgWireFrontendMessage::PasswordMessageFamily(message)) => {
                let initial = message.into_sasl_initial_response()?;
                if initial.auth_method != scram::MECHANISM {
                    return Err(fatal(
                        "28000",
                        format!(
                            "authentication method {} is not offered: use {}",
                            initial.auth_method,
                            scram::MECHANISM
                        ),
                    ));
                }
                let (_, verifier) = &self.access.users[&user];
                let (server_first, challenge) = verifier
                    .first(initial.data.as_deref().unwrap_or_default())
                    .map_err(|e| fatal("08P01", e.to_string()))?;
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLContinue(server_first.into_bytes().into()),
                    ))
                    .await?;
                *step = Step::Challenged {
                    user,
                    challenge: Box::new(challenge),
                };
                Ok(())
            }
            (
                Step::Challenged { user, challenge },
                PgWireFrontendMessage::PasswordMessageFamily(message),
            ) => {
                let response = message.into_sasl_response()?;
                match challenge.finish(&response.data) {
                    Ok(server_final) => {
                        client
                            .feed(PgWireBackendMessage::Authentication(
                                Authentication::SASLFinal(server_final.into_bytes().into()),
                            ))
                            .await?;
                        let role = self.access.users[&user].0;
                        self.admit(client, user, role).await
                    }
                    Err(ScramError::WrongPassword) => {
                        tracing::info!(
                            "password authentication failed for user {user} from {}",
                            client.socket_addr().ip()
                        );
                        Err(fatal(
                            "28P01",
                            format!("password authentication failed for user \"{user}\""),
                        ))
                    }
                    Err(e) => Err(fatal("08P01", e.to_string())),
                }
            }
            (_, PgWireFrontendMessage::Startup(_))
            | (_, PgWireFrontendMessage::PasswordMessageFamily(_)) => Err(fatal(
                "08P01",
                "unexpected message during authentication".into(),
            )),
            (previous, _) => {
                *step = previous;
                Ok(())
            }
        }
    }
}
