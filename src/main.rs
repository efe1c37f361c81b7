//! `tracecube`: serve a warehouse over the PostgreSQL protocol, load traces, generate data.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracecube_datasets::GenOptions;
use tracecube_engine::Config;
use tracecube_engine::load::source::Format;
use tracecube_engine::load::{LoadOptions, OnError};
use tracecube_engine::server::scram::Verifier;

/// mimalloc instead of the system allocator: a query allocates and frees many short-lived
/// buffers, and glibc's coalescing of large free blocks was a third of the fixed cost of
/// a small query (see benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t`, mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// A load allocates and frees its buffers (a group of rows, a day being sorted, a cube's
/// partial rows) over and over: freed memory kept for reuse instead of returned to the
/// system after a second saves the kernel zeroing fresh pages (a quarter of a load's
/// time, see benches/README.md). The load's memory stays bounded by its budget; its
/// resident size is its high-water mark. An explicit `MIMALLOC_PURGE_DELAY` wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a global mimalloc option (an integer), allowed at any time
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(
    name = "tracecube",
    version,
    about = "Metrics engine for customer-contact traces"
)]
struct Cli {
    /// Configuration file (default: ./tracecube.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Warehouse location (overrides the configuration): a path, file://… or s3://…
    #[arg(long, global = true)]
    warehouse: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the warehouse to PostgreSQL clients (generating the demo data set when empty).
    Serve {
        /// Listen address (default 127.0.0.1:5433).
        #[arg(long)]
        listen: Option<String>,
        /// Do not generate the demo data set into an empty warehouse.
        #[arg(long)]
        no_demo: bool,
    },
    /// Load trace files (Parquet, CSV, NDJSON; paths, file://, s3://, globs).
    Load {
        #[arg(required = true)]
        urls: Vec<String>,
        /// Format of every source (default: from each file's extension).
        #[arg(long)]
        format: Option<String>,
        /// `fail` (default): any bad row fails the load; `quarantine`: bad rows go to `rejects`.
        #[arg(long, default_value = "fail")]
        on_error: String,
    },
    /// Compact the warehouse: merge small files of `traces`, merge each cube's partial rows
    /// into one row per cell, apply cube retentions, rebuild stale cubes.
    Compact,
    /// Delete files no table references any more (replaced by compactions, staged by loads
    /// that stopped) once they are older than the retention.
    Vacuum {
        /// How long unreferenced files are kept, e.g. "7 days", "1 hour", or 0 (default:
        /// `vacuum_retention`, 1 day). A query reading an older snapshot for longer may
        /// fail; loads and compactions in progress are protected by their markers.
        #[arg(long)]
        retention: Option<String>,
    },
    /// Print the SCRAM-SHA-256 verifier of a password read from standard input (first line;
    /// asked twice, not echoed, on a terminal): the value of `password` in `[[users]]`.
    Passwd,
    /// Generate a synthetic trace set as Parquet files.
    Gen {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// First day of the period (YYYY-MM-DD).
        #[arg(long)]
        start: Option<chrono::NaiveDate>,
        /// Length of the period in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Traces per output file.
        #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..))]
        file_rows: u64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,datafusion_postgres=warn,pgwire=warn,buoyant_kernel=off,delta_kernel=warn,deltalake_core=warn,deltalake_core::kernel::transaction=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Passwd = cli.command {
        println!("{}", Verifier::new(&read_password()?));
        return Ok(());
    }
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(w) = cli.warehouse {
        config.warehouse = w;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve { listen, no_demo } => {
            if let Some(l) = listen {
                config.listen = l;
            }
            config.demo &= !no_demo;
            config.validate()?;
            runtime
                .block_on(async {
                    // handlers are installed before the server reports ready
                    let shutdown = shutdown_signal()?;
                    tracecube_engine::app::serve(config, shutdown).await
                })
                .map_err(|e| anyhow::anyhow!(e))?;
        }
        Command::Load {
            urls,
            format,
            on_error,
        } => {
            let format = format
                .map(|f| {
                    Format::parse(&f).with_context(|| {
                        format!("unknown format {f:?}: use parquet, csv or ndjson")
                    })
                })
                .transpose()?;
            let on_error = OnError::parse(&on_error).with_context(|| {
                format!("unknown --on-error {on_error:?}: use fail or quarantine")
            })?;
            let options = LoadOptions {
                format,
                on_error,
                progress: true,
                stop: None,
                report: None,
            };
            keep_freed_memory();
            let record = runtime
                .block_on(tracecube_engine::app::load(config, &urls, &options))
                .map_err(|e| anyhow::anyhow!("load failed: {e}"))?;
            println!("{}", record.summary_line());
        }
        Command::Compact => {
            let report = runtime
                .block_on(tracecube_engine::app::compact(config))
                .map_err(|e| anyhow::anyhow!("compaction failed: {e}"))?;
            println!(
                "traces: {} file(s) merged into {} in {:.2} s (version {})",
                report.traces_files_removed,
                report.traces_files_added,
                report.traces_seconds,
                report.traces_version
            );
            for c in report.cubes {
                println!(
                    "{}: {} to {} rows in {:.2} s (reflects traces version {})",
                    c.cube, c.action, c.rows, c.seconds, c.traces_version
                );
            }
        }
        Command::Vacuum { retention } => {
            let retention = retention
                .map(|r| {
                    let text = r.trim();
                    // no retention at all: "0", or 0 of a valid unit
                    match text.split_once(char::is_whitespace) {
                        _ if text == "0" => Ok(0),
                        Some(("0", unit)) => tracecube_engine::config::parse_duration(
                            "--retention",
                            &format!("1 {unit}"),
                        )
                        .map(|_| 0),
                        _ => tracecube_engine::config::parse_duration("--retention", text),
                    }
                })
                .transpose()?
                .map(|s| std::time::Duration::from_secs(s as u64));
            let report = runtime
                .block_on(tracecube_engine::app::vacuum(config, retention))
                .map_err(|e| anyhow::anyhow!("vacuum failed: {e}"))?;
            for (table, files) in &report.tables {
                if *files > 0 {
                    println!("{table}: {files} file(s) deleted");
                }
            }
            println!(
                "vacuum: {} unreferenced file(s) deleted in {:.2} s",
                report.files(),
                report.seconds
            );
        }
        Command::Passwd => unreachable!("answered before the configuration is read"),
        Command::Gen {
            rows,
            seed,
            out,
            start,
            days,
            file_rows,
        } => {
            let mut opts = GenOptions {
                rows,
                seed,
                days,
                chunk_rows: file_rows,
                ..Default::default()
            };
            if let Some(s) = start {
                opts.start = s;
            }
            let summary = tracecube_datasets::write_parquet(&opts, &out, true)?;
            println!(
                "generated {} traces in {} file(s), {:.1} MB, in {:.2} s ({:.0} rows/s) under {}",
                summary.rows,
                summary.files.len(),
                summary.bytes as f64 / 1e6,
                summary.elapsed.as_secs_f64(),
                summary.rows_per_second(),
                out.display()
            );
        }
    }
    Ok(())
}

/// The password to make a verifier of: typed twice on a terminal, else the first line of
/// standard input.
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    Ok(password)
}

/// Installs the Ctrl-C and SIGTERM handlers now; the future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("stop requested");
    })
}
