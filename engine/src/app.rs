//! What the `tracecube` commands do, callable from the binary and from tests.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::catalog;
use crate::config::Config;
use crate::demo;
use crate::load::{LoadOptions, LoadRecord, Loader};
use crate::server::Server;
use crate::server::auth::Access;
use crate::warehouse::Warehouse;
use datafusion::prelude::SessionContext;

/// Errors of a command, with the message to show.
pub type AppError = Box<dyn std::error::Error + Send + Sync>;

/// Bind the PostgreSQL address, open the warehouse, fill it with the demo data set if it
/// is empty and `config.demo` is set, and build the SQL session: a server ready to accept.
pub async fn prepare_server(
    config: Config,
    progress: bool,
) -> Result<(Server, SessionContext), AppError> {
    let started = Instant::now();
    let listen: SocketAddr = config.listen.parse()?;
    let access = Access::from_config(&config)?;
    if !access.has_users() && !listen.ip().is_loopback() {
        return Err(format!(
            "refusing to listen on {listen}: with no [[users]] configured, anyone reaching \
             this address could connect as the admin `tracecube`; listen on a loopback \
             address (127.0.0.1:5433) or configure users (see `tracecube passwd`)"
        )
        .into());
    }
    let mut server = Server::bind(listen)
        .await?
        .with_max_connections(config.max_connections)
        .with_access(access);
    if let Some(http) = config.http_addr()? {
        server = server.with_http(http).await?;
    }
    let demo = config.demo;
    let warehouse = Warehouse::open(config).await?;
    tracing::info!("warehouse at {}", warehouse.root());
    if demo && demo::is_empty(&warehouse).await? {
        tracing::info!(
            "the warehouse is empty: generating and loading the demo data set ({} traces)",
            demo::DEMO_ROWS
        );
        let record = demo::load_demo(&warehouse, demo::DEMO_ROWS, progress).await?;
        tracing::info!("{}", record.summary_line());
        demo::seed_weights(&warehouse).await?;
    }
    if let Some(every) = warehouse.config().maintenance_interval_seconds()? {
        spawn_maintenance(warehouse.clone(), Duration::from_secs(every as u64));
    }
    let ctx = catalog::session(&warehouse).await?;
    let user = match warehouse.config().users.first() {
        Some(user) => user.name.as_str(),
        None => crate::server::DEFAULT_USER,
    };
    tracing::info!(
        "ready in {:.2} s: PostgreSQL clients can connect to {} (e.g. psql -h {} -p {} -U {user})",
        started.elapsed().as_secs_f64(),
        server.local_addr()?,
        server.local_addr()?.ip(),
        server.local_addr()?.port()
    );
    if let Some(http) = server.http_addr() {
        tracing::info!("metrics on http://{http}/metrics, health on http://{http}/healthz");
    }
    Ok((server, ctx))
}

/// `tracecube serve`: serve until `shutdown` completes.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let (server, ctx) = prepare_server(config, true).await?;
    server.run_until(ctx, shutdown).await?;
    Ok(())
}

/// `tracecube load`: load `urls` into the configured warehouse.
pub async fn load(
    config: Config,
    urls: &[String],
    options: &LoadOptions,
) -> Result<LoadRecord, AppError> {
    let warehouse = Warehouse::open(config).await?;
    Ok(Loader::new(&warehouse).load(urls, options).await?)
}

/// `tracecube compact`: merge small files of `traces` and of every cube, merge each cube's
/// partial rows, apply retentions, and rebuild any cube that is stale.
pub async fn compact(config: Config) -> Result<crate::cubes::build::CompactReport, AppError> {
    let warehouse = Warehouse::open(config).await?;
    Ok(crate::cubes::build::compact(&warehouse).await?)
}

/// `tracecube vacuum`: delete the files no table references any more, replaced or staged
/// more than `retention` ago (default: the configured `vacuum_retention`).
pub async fn vacuum(
    config: Config,
    retention: Option<Duration>,
) -> Result<crate::maintenance::VacuumReport, AppError> {
    let warehouse = Warehouse::open(config).await?;
    let retention = match retention {
        Some(r) => r,
        None => Duration::from_secs(warehouse.config().vacuum_retention_seconds()? as u64),
    };
    Ok(crate::maintenance::vacuum(&warehouse, retention).await?)
}

/// Compact and vacuum `warehouse` every `every`, first after one interval (the server's
/// background housekeeping). A failure is logged and retried at the next turn.
fn spawn_maintenance(warehouse: Warehouse, every: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match crate::cubes::build::compact(&warehouse).await {
                Ok(report) => tracing::info!(
                    "background compaction: traces {} file(s) merged into {} (version {})",
                    report.traces_files_removed,
                    report.traces_files_added,
                    report.traces_version
                ),
                Err(e) => tracing::warn!("background compaction failed (retried later): {e}"),
            }
            let retention = warehouse
                .config()
                .vacuum_retention_seconds()
                .map_or(Duration::from_secs(86_400), |s| {
                    Duration::from_secs(s as u64)
                });
            match crate::maintenance::vacuum(&warehouse, retention).await {
                Ok(report) => tracing::info!(
                    "background vacuum: {} unreferenced file(s) deleted in {:.2} s",
                    report.files(),
                    report.seconds
                ),
                Err(e) => tracing::warn!("background vacuum failed (retried later): {e}"),
            }
        }
    });
}
