//! The ledger of loaded sources: which source files (URL, size, ETag) `traces` already
//! holds, so that loading one again is a no-op.
//!
//! The entries live in small Parquet files under `traces/_tracecube_ledger/`, and the list
//! of current ledger files lives in the `traces` table configuration (key
//! [`LEDGER_KEY`]). A load writes its entries to a new ledger file and commits the new
//! list in the same Delta commit as its rows: the rows and the record that they were
//! loaded land together or not at all, and a concurrent commit that changed the list
//! makes the load's commit conflict, so two loads never both apply one file. The ledger
//! stays cheap however many files were loaded: a load reads a few files (merged into one
//! when there are more than [`MAX_FILES`]), and the Delta log holds only the list.
//!
//! Warehouses written before the ledger recorded sources as Delta application
//! transactions; their ledger is marked `legacy` and such ids are still checked.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use deltalake::DeltaTable;
use deltalake::kernel::{Metadata, MetadataExt};
use deltalake::logstore::ObjectStoreRef;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use super::LoadError;
use super::source::SourceFile;
use crate::warehouse::{Table, WarehouseError};

/// Key of the ledger's file list in the `traces` table configuration.
pub const LEDGER_KEY: &str = "tracecube.ledger";

/// Folder of the ledger files, under the `traces` table (hidden from Delta readers).
pub const LEDGER_DIR: &str = "_tracecube_ledger";

/// Ledger files beyond which a load merges them into one.
const MAX_FILES: usize = 8;

/// The ledger's entry in the table configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerList {
    /// Ledger files, relative to the `traces` table.
    pub files: Vec<String>,
    /// Sources loaded before the ledger existed are Delta transaction ids: check those too.
    #[serde(default)]
    pub legacy: bool,
}

impl LedgerList {
    /// The list as stored in the table configuration.
    pub fn to_config(&self) -> String {
        serde_json::to_string(self).expect("the ledger list serialises")
    }
}

/// The ledger as of one `traces` snapshot.
#[derive(Debug, Clone)]
pub struct Ledger {
    list: LedgerList,
    ids: HashSet<String>,
}

fn ledger_error(message: impl std::fmt::Display) -> LoadError {
    LoadError::Ledger(message.to_string())
}

impl Ledger {
    /// The ledger of the `traces` snapshot `traces` was loaded at.
    pub async fn read(traces: &DeltaTable) -> Result<Ledger, LoadError> {
        let Ok(snapshot) = traces.snapshot() else {
            return Ok(Ledger {
                list: LedgerList::default(),
                ids: HashSet::new(),
            });
        };
        let list = match snapshot.metadata().configuration().get(LEDGER_KEY) {
            Some(text) => serde_json::from_str::<LedgerList>(text)
                .map_err(|e| ledger_error(format!("{LEDGER_KEY} = {text:?}: {e}")))?,
            // written before the ledger: its loads are transaction ids
            None => LedgerList {
                files: Vec::new(),
                legacy: traces.version().is_some_and(|v| v > 0),
            },
        };
        let store = traces.object_store();
        let mut ids = HashSet::new();
        for file in &list.files {
            ids.extend(read_ids(&store, file).await?);
        }
        Ok(Ledger { list, ids })
    }

    /// How many sources the ledger files list.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the ledger lists no source.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether `file` (same URL, size and ETag) is in the ledger of `traces`.
    pub async fn contains(
        &self,
        traces: &DeltaTable,
        file: &SourceFile,
    ) -> Result<bool, LoadError> {
        let id = file.identity();
        if self.ids.contains(&id) {
            return Ok(true);
        }
        if !self.list.legacy {
            return Ok(false);
        }
        let Ok(snapshot) = traces.snapshot() else {
            return Ok(false);
        };
        let version = snapshot
            .transaction_version(traces.log_store().as_ref(), id)
            .await
            .map_err(|e| {
                LoadError::Warehouse(WarehouseError::delta(Table::Traces, traces.table_url(), e))
            })?;
        Ok(version.is_some())
    }

    /// Write the entries of `sources` (loaded by `load_id`) to a new ledger file: the
    /// list to commit with them. When the ledger has many files, the new file holds
    /// every entry and replaces them.
    pub async fn append(
        &self,
        store: &ObjectStoreRef,
        load_id: &str,
        sources: &[SourceFile],
    ) -> Result<LedgerList, LoadError> {
        let mut ids: Vec<String> = sources.iter().map(SourceFile::identity).collect();
        let merge = self.list.files.len() >= MAX_FILES;
        if merge {
            let mut all: Vec<String> = self.ids.iter().cloned().collect();
            all.sort_unstable();
            all.extend(ids);
            ids = all;
        }
        let path = format!("{LEDGER_DIR}/{load_id}-{}.parquet", uuid::Uuid::new_v4());
        write_ids(store, &path, &ids).await?;
        let mut files = if merge {
            Vec::new()
        } else {
            self.list.files.clone()
        };
        files.push(path);
        Ok(LedgerList {
            files,
            legacy: self.list.legacy,
        })
    }

    /// The ledger files of this snapshot.
    pub fn files(&self) -> &[String] {
        &self.list.files
    }
}

/// Remove a ledger file no commit references (best effort: vacuum removes what is left).
pub async fn remove_file(store: &ObjectStoreRef, path: Option<&String>) {
    if let Some(path) = path
        && let Err(e) = store.delete(&Path::from(path.as_str())).await
    {
        tracing::warn!("cannot remove unused ledger file {path} (vacuum will): {e}");
    }
}

/// `metadata` with the ledger list `list`.
pub fn with_list(metadata: Metadata, list: &LedgerList) -> Result<Metadata, LoadError> {
    metadata
        .add_config_key(LEDGER_KEY.to_string(), list.to_config())
        .map_err(ledger_error)
}

fn ids_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new(
        "source",
        DataType::Utf8,
        false,
    )]))
}

async fn write_ids(store: &ObjectStoreRef, path: &str, ids: &[String]) -> Result<(), LoadError> {
    let batch = RecordBatch::try_new(
        ids_schema(),
        vec![Arc::new(StringArray::from_iter_values(ids))],
    )?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(
        &mut bytes,
        ids_schema(),
        Some(super::commit::writer_properties()),
    )
    .map_err(ledger_error)?;
    writer.write(&batch).map_err(ledger_error)?;
    writer.close().map_err(ledger_error)?;
    store
        .put(&Path::from(path), PutPayload::from(bytes))
        .await
        .map_err(|e| ledger_error(format!("writing {path}: {e}")))?;
    Ok(())
}

async fn read_ids(store: &ObjectStoreRef, path: &str) -> Result<Vec<String>, LoadError> {
    let bytes: Bytes = store
        .get(&Path::from(path))
        .await
        .map_err(|e| {
            ledger_error(format!(
                "reading {path}, listed in the traces table configuration ({LEDGER_KEY}): {e}"
            ))
        })?
        .bytes()
        .await
        .map_err(|e| ledger_error(format!("reading {path}: {e}")))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| ledger_error(format!("{path}: {e}")))?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch?;
        let column = batch.column(0).as_string::<i32>();
        ids.extend((0..column.len()).map(|i| column.value(i).to_string()));
    }
    Ok(ids)
}
