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
        let storage_options = config
            .storage
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
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
        Ok(warehouse)
    }

    /// The configuration the warehouse was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The warehouse's root URL.
    pub fn root(&self) -> &Url {
        &self.root
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
        self.create_dir_if_missing(table.dir(), &table.schema(), table.partition_columns())
            .await
    }

    /// Create an empty Delta table of `schema` in folder `dir` unless one exists there.
    pub async fn create_dir_if_missing(
        &self,
        dir: &str,
        schema: &SchemaRef,
        partition_columns: Vec<String>,
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
