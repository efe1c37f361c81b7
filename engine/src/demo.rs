//! The embedded demo warehouse: when `serve` finds an empty warehouse it generates the demo
//! data set (1 000 000 traces, fixed seed) and loads it through the ordinary load path.

use tracecube_datasets::GenOptions;

use crate::load::{LoadError, LoadOptions, LoadRecord, Loader};
use crate::warehouse::{Table, Warehouse};
use crate::weights::{DEMO_WEIGHTS, WeightsTable};

/// Rows of the demo data set.
pub const DEMO_ROWS: u64 = 1_000_000;
/// Seed of the demo data set.
pub const DEMO_SEED: u64 = 42;

/// Whether `traces` has never received a commit beyond its creation.
pub async fn is_empty(warehouse: &Warehouse) -> Result<bool, LoadError> {
    Ok(warehouse.table(Table::Traces).await?.version().unwrap_or(0) == 0)
}

/// Generate the demo data set into a temporary folder and load it.
pub async fn load_demo(
    warehouse: &Warehouse,
    rows: u64,
    progress: bool,
) -> Result<LoadRecord, LoadError> {
    let dir = tempfile::tempdir().map_err(|e| LoadError::Read {
        source_url: "demo data set".into(),
        message: format!("cannot create a temporary folder: {e}"),
    })?;
    let opts = GenOptions {
        rows,
        seed: DEMO_SEED,
        ..Default::default()
    };
    let out = dir.path().to_path_buf();
    let summary = tokio::task::spawn_blocking(move || {
        tracecube_datasets::write_parquet(&opts, &out, progress)
    })
    .await
    .map_err(|e| LoadError::Read {
        source_url: "demo data set".into(),
        message: e.to_string(),
    })?
    .map_err(|e| LoadError::Read {
        source_url: "demo data set".into(),
        message: e.to_string(),
    })?;
    tracing::info!(
        "generated {} demo traces in {:.2} s ({:.0} rows/s)",
        summary.rows,
        summary.elapsed.as_secs_f64(),
        summary.rows_per_second()
    );
    let urls: Vec<String> = summary
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Loader::new(warehouse)
        .load(
            &urls,
            &LoadOptions {
                progress,
                ..Default::default()
            },
        )
        .await
}

/// Give the demo warehouse the category weights of `weights::DEMO_WEIGHTS`.
pub async fn seed_weights(warehouse: &Warehouse) -> Result<(), crate::app::AppError> {
    let handle = std::sync::Arc::new(tracecube_udfs::WeightsHandle::default());
    WeightsTable::open(warehouse, handle)
        .await?
        .replace_all(&DEMO_WEIGHTS)
        .await?;
    Ok(())
}
