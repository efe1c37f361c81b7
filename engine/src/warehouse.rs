//! The warehouse: Delta tables under one object-store URL (`traces`, `rejects`, `loads`,
//! `impact_weights`),
//! created on first use, opened at their latest version.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use deltalake::kernel::StructField;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use url::Url;

use crate::config::Config;
use crate::schema::{loads_schema, rejects_schema, traces_schema, weights_schema};

/// Errors opening or writing warehouse tables.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("invalid warehouse location {location:?}: {message}")]
    Location { location: String, message: String },
    #[error("table {table} at {url}: {source}")]
    Delta {
        table: String,
        url: String,
        source: Box<deltalake::DeltaTableError>,
    },
    #[error("cannot set up the SQL session: {0}")]
    Session(Box<datafusion::error::DataFusionError>),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "the warehouse at {url} stores values computed with {setting} = {recorded}, but the configuration says {configured}; \
         set {setting} = {recorded} (tracecube.toml or TRACECUBE_…) to use this warehouse: mixing both would compute the same column two ways"
    )]
    Settings {
        url: String,
        setting: String,
        recorded: String,
        configured: String,
    },
}

impl WarehouseError {
    /// A Delta error on the table `table` at `url`.
    pub fn delta(
        table: Table,
        url: impl std::fmt::Display,
        source: impl Into<deltalake::DeltaTableError>,
    ) -> Self {
        WarehouseError::Delta {
            table: table.dir().to_string(),
            url: url.to_string(),
            source: Box::new(source.into()),
        }
    }
}

impl From<datafusion::error::DataFusionError> for WarehouseError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        WarehouseError::Session(Box::new(e))
    }
}

/// The tables of a warehouse, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Traces,
    Rejects,
    Loads,
    ImpactWeights,
}

impl Table {
    /// Folder of the table under the warehouse root.
    pub fn dir(self) -> &'static str {
        match self {
            Table::Traces => "traces",
            Table::Rejects => "rejects",
            Table::Loads => "loads",
            Table::ImpactWeights => "impact_weights",
        }
    }

    fn schema(self) -> SchemaRef {
        match self {
            Table::Traces => traces_schema(),
            Table::Rejects => rejects_schema(),
            Table::Loads => loads_schema(),
            Table::ImpactWeights => weights_schema(),
        }
    }

    fn partition_columns(self) -> Vec<String> {
        match self {
            Table::Traces => vec!["day".to_string()],
            Table::Rejects | Table::Loads | Table::ImpactWeights => vec![],
        }
    }
}

/// A warehouse rooted at one URL.
#[derive(Debug, Clone)]
pub struct Warehouse {
    config: Arc<Config>,
    root: Url,
    storage_options: HashMap<String, String>,
}

impl Warehouse {
    /// Open the warehouse of `config`, creating its tables if they do not exist yet.
    pub async fn open(config: Config) -> Result<Self, WarehouseError> {
        config.validate()?;
        let root = root_url(&config.warehouse)?;
        crate::storage::register_with_delta();
        let storage_options = crate::storage::options(&config.storage);
        // a bad option or location is an error here, naming it, not at the first query
        crate::storage::store_for(&root, &storage_options).map_err(|e| {
            WarehouseError::Location {
                location: config.warehouse.clone(),
                message: e.to_string(),
            }
        })?;
        let warehouse = Warehouse {
            config: Arc::new(config),
            root,
            storage_options,
        };
        for table in [
            Table::Traces,
            Table::Rejects,
            Table::Loads,
            Table::ImpactWeights,
        ] {
            warehouse.create_if_missing(table).await?;
        }
        warehouse.check_settings().await?;
        Ok(warehouse)
    }

    /// Fail when the warehouse recorded other values of the settings that shape stored
    /// values than the configuration's.
    async fn check_settings(&self) -> Result<(), WarehouseError> {
        let traces = self.table(Table::Traces).await?;
        let Ok(snapshot) = traces.snapshot() else {
            return Ok(());
        };
        let recorded = snapshot.metadata().configuration();
        let mismatch =
            |setting: &str, recorded: String, configured: String| WarehouseError::Settings {
                url: self.root.to_string(),
                setting: setting.to_string(),
                recorded,
                configured,
            };
        let config = &self.config;
        if !recorded.contains_key(TIME_ZONE_KEY) && snapshot.log_data().num_files() > 0 {
            tracing::warn!(
                "the warehouse at {} was written before Tracecube recorded the time zone and costs its values were derived with: make sure time_zone and hourly_cost are the ones it was loaded with",
                self.root
            );
        }
        if let Some(zone) = recorded.get(TIME_ZONE_KEY) {
            let configured = config.tz()?;
            let same = zone
                .parse::<chrono_tz::Tz>()
                .is_ok_and(|z| same_rules(z, configured));
            if !same {
                return Err(mismatch(
                    "time_zone",
                    format!("{zone:?}"),
                    format!("{:?}", configured.name()),
                ));
            }
        }
        if let Some(text) = recorded.get(HOURLY_COST_KEY) {
            let Ok(costs) = serde_json::from_str::<RecordedCosts>(text) else {
                return Err(mismatch("hourly_cost", text.clone(), costs_text(config)));
            };
            if costs.default != config.default_hourly_cost {
                return Err(mismatch(
                    "default_hourly_cost",
                    costs.default.to_string(),
                    config.default_hourly_cost.to_string(),
                ));
            }
            let channels: std::collections::BTreeSet<&String> = costs
                .channels
                .keys()
                .chain(config.hourly_cost.keys())
                .collect();
            for channel in channels {
                // effective costs: a channel not listed costs the default
                let was = costs
                    .channels
                    .get(channel)
                    .copied()
                    .unwrap_or(costs.default);
                let is = config.hourly_cost_of(channel);
                if was != is {
                    return Err(mismatch(
                        &format!("hourly_cost.{channel}"),
                        was.to_string(),
                        is.to_string(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The configuration the warehouse was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The warehouse's root URL.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The options of its object stores (and of the stores sources are read from).
    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// URL of a table's folder.
    pub fn table_url(&self, table: Table) -> Url {
        self.dir_url(table.dir())
    }

    /// URL of a folder under the warehouse root (`dir` without a trailing slash).
    pub fn dir_url(&self, dir: &str) -> Url {
        self.root
            .join(&format!("{dir}/"))
            .expect("table folder names are valid URL paths")
    }

    /// Turns a Delta error on `table` into a warehouse error naming the table and its URL.
    pub fn delta_error(
        &self,
        table: Table,
    ) -> impl Fn(deltalake::DeltaTableError) -> WarehouseError + '_ {
        self.dir_error(table.dir())
    }

    /// Turns a Delta error on the table in folder `dir` into a warehouse error naming the
    /// folder and its URL.
    pub fn dir_error(
        &self,
        dir: &str,
    ) -> impl Fn(deltalake::DeltaTableError) -> WarehouseError + use<> {
        let table = dir.to_string();
        let url = self.dir_url(dir).to_string();
        move |source| WarehouseError::Delta {
            table: table.clone(),
            url: url.clone(),
            source: Box::new(source),
        }
    }

    /// Open `table` at its latest version.
    pub async fn table(&self, table: Table) -> Result<DeltaTable, WarehouseError> {
        self.open_dir(table.dir()).await
    }

    /// Open the Delta table in folder `dir` at its latest version.
    pub async fn open_dir(&self, dir: &str) -> Result<DeltaTable, WarehouseError> {
        let error = self.dir_error(dir);
        let mut t = DeltaTableBuilder::from_url(self.dir_url(dir))
            .map_err(&error)?
            .with_storage_options(self.storage_options.clone())
            .build()
            .map_err(&error)?;
        t.load().await.map_err(&error)?;
        Ok(t)
    }

    async fn create_if_missing(&self, table: Table) -> Result<(), WarehouseError> {
        let mut configuration = Vec::new();
        if table == Table::Traces {
            // a new table records the settings it is written with, and keeps its ledger
            configuration = recorded_settings(&self.config)?;
            configuration.push((
                crate::load::ledger::LEDGER_KEY.to_string(),
                crate::load::ledger::LedgerList::default().to_config(),
            ));
        }
        self.create_table_if_missing(
            table.dir(),
            &table.schema(),
            table.partition_columns(),
            configuration,
        )
        .await
    }

    /// Create an empty Delta table of `schema` in folder `dir` unless one exists there.
    pub async fn create_dir_if_missing(
        &self,
        dir: &str,
        schema: &SchemaRef,
        partition_columns: Vec<String>,
    ) -> Result<(), WarehouseError> {
        self.create_table_if_missing(dir, schema, partition_columns, Vec::new())
            .await
    }

    /// Create an empty Delta table of `schema` with `configuration` in folder `dir`
    /// unless one exists there.
    async fn create_table_if_missing(
        &self,
        dir: &str,
        schema: &SchemaRef,
        partition_columns: Vec<String>,
        configuration: Vec<(String, String)>,
    ) -> Result<(), WarehouseError> {
        let url = self.dir_url(dir);
        let error = self.dir_error(dir);
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|_| WarehouseError::Location {
                location: url.to_string(),
                message: "not a local path".into(),
            })?;
            std::fs::create_dir_all(&path).map_err(|e| WarehouseError::Location {
                location: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let t = DeltaTable::try_from_url_with_storage_options(
            url.clone(),
            self.storage_options.clone(),
        )
        .await
        .map_err(&error)?;
        if t.version().is_some() {
            return Ok(());
        }
        let columns = schema
            .fields()
            .iter()
            .map(|f| f.as_ref().try_into_kernel())
            .collect::<Result<Vec<StructField>, _>>()
            .map_err(|e| error(deltalake::DeltaTableError::Generic(e.to_string())))?;
        let name = dir.rsplit('/').next().unwrap_or(dir);
        t.create()
            .with_table_name(name)
            .with_columns(columns)
            .with_partition_columns(partition_columns)
            .with_configuration(configuration.into_iter().map(|(k, v)| (k, Some(v))))
            .with_raise_if_key_not_exists(false)
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(&error)?;
        Ok(())
    }

    /// Register `table` in `ctx` under `name` at its latest version.
    pub async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
        table: Table,
    ) -> Result<(), WarehouseError> {
        let t = self.table(table).await?;
        let provider = t
            .table_provider()
            .await
            .map_err(|e| self.delta_error(table)(e.into()))?;
        ctx.register_table(name, provider)
            .map_err(|e| self.delta_error(table)(e.into()))?;
        Ok(())
    }
}

/// Key of the time zone the stored values were derived in, in the `traces` configuration.
pub const TIME_ZONE_KEY: &str = "tracecube.time_zone";
/// Commits (loads) this process made: a snapshot taken before the count changed is
/// read again at once, not after its second of freshness, so the next statement of a
/// session sees what its `COPY … FROM` committed.
static LOCAL_COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many loads this process has finished (committed or not).
pub fn local_commits() -> u64 {
    LOCAL_COMMITS.load(std::sync::atomic::Ordering::Acquire)
}

/// A load of this process finished.
pub(crate) fn note_local_commit() {
    LOCAL_COMMITS.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
}

/// Key of the hourly costs `effort` was computed with, in the `traces` configuration.
pub const HOURLY_COST_KEY: &str = "tracecube.hourly_cost";

/// Hourly costs as recorded in the warehouse.
#[derive(serde::Serialize, serde::Deserialize)]
struct RecordedCosts {
    channels: std::collections::BTreeMap<String, f64>,
    default: f64,
}

fn costs_text(config: &Config) -> String {
    serde_json::to_string(&RecordedCosts {
        channels: config.hourly_cost.clone(),
        default: config.default_hourly_cost,
    })
    .expect("costs serialise")
}

/// Whether two zones give the same UTC offset at every week from 1900 to 2100 (aliases
/// such as `UTC` and `Etc/UTC` do).
fn same_rules(a: chrono_tz::Tz, b: chrono_tz::Tz) -> bool {
    use chrono::{Offset, TimeZone};
    if a == b {
        return true;
    }
    const WEEK: i64 = 7 * 86_400;
    let (from, to) = (-70 * 365 * 86_400, 130 * 365 * 86_400);
    (from / WEEK..to / WEEK).all(|w| {
        let at = chrono::DateTime::from_timestamp(w * WEEK, 0)
            .unwrap_or_default()
            .naive_utc();
        a.offset_from_utc_datetime(&at).fix() == b.offset_from_utc_datetime(&at).fix()
    })
}

/// The settings that shape stored values (`day`, `hour`, `minute`, `weekday` come from
/// the time zone; `effort` from the hourly costs), as `traces` configuration entries.
/// (SLAs shape only cubes, which are stored under a name derived from them.)
pub fn recorded_settings(config: &Config) -> Result<Vec<(String, String)>, WarehouseError> {
    Ok(vec![
        (TIME_ZONE_KEY.to_string(), config.tz()?.name().to_string()),
        (HOURLY_COST_KEY.to_string(), costs_text(config)),
    ])
}

/// The warehouse root as a URL ending in `/`: a URL as given, or a local path made absolute.
fn root_url(location: &str) -> Result<Url, WarehouseError> {
    let bad = |message: String| WarehouseError::Location {
        location: location.to_string(),
        message,
    };
    let mut url = if location.contains("://") {
        Url::parse(location).map_err(|e| bad(e.to_string()))?
    } else {
        let path = std::path::absolute(location).map_err(|e| bad(e.to_string()))?;
        std::fs::create_dir_all(&path).map_err(|e| bad(e.to_string()))?;
        Url::from_directory_path(&path).map_err(|_| bad("not an absolute path".into()))?
    };
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}
