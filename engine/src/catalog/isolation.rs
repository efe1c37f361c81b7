//! Each connection's view of the catalog: Tracecube's tables, views and schemas, shared by
//! every connection and read-only, with the connection's own objects beside them. A
//! connection can create tables, views and schemas of new names (its role permitting),
//! which no other connection sees; it can never drop, replace or shadow a shared one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemorySchemaProvider,
    SchemaProvider, TableProvider,
};
use datafusion::common::Result;
use datafusion::error::DataFusionError;

use crate::server::policy::Forbidden;

fn forbidden(what: String) -> DataFusionError {
    DataFusionError::External(Box::new(Forbidden(what)))
}

/// The shared names, then the connection's own (a shared name is never shadowed).
fn union(mut shared: Vec<String>, own: Vec<String>) -> Vec<String> {
    for name in own {
        if !shared.contains(&name) {
            shared.push(name);
        }
    }
    shared
}

/// The catalogs of one connection over the shared ones.
#[derive(Debug)]
pub struct ConnectionCatalogs {
    shared: Arc<dyn CatalogProviderList>,
    /// One overlay per shared catalog (kept, so that the connection's objects stay).
    overlays: RwLock<HashMap<String, Arc<dyn CatalogProvider>>>,
    /// Catalogs the connection created.
    own: RwLock<HashMap<String, Arc<dyn CatalogProvider>>>,
}

impl ConnectionCatalogs {
    pub fn new(shared: Arc<dyn CatalogProviderList>) -> Self {
        let overlays = RwLock::new(Self::overlays_of(shared.as_ref()));
        ConnectionCatalogs {
            shared,
            overlays,
            own: RwLock::default(),
        }
    }

    /// Forget every object the connection created (`DISCARD ALL`).
    pub fn clear(&self) {
        *self.overlays.write().expect("catalog lock") = Self::overlays_of(self.shared.as_ref());
        self.own.write().expect("catalog lock").clear();
    }

    fn overlays_of(shared: &dyn CatalogProviderList) -> HashMap<String, Arc<dyn CatalogProvider>> {
        shared
            .catalog_names()
            .into_iter()
            .filter_map(|name| {
                let catalog = shared.catalog(&name)?;
                let overlay: Arc<dyn CatalogProvider> = Arc::new(ConnectionCatalog::new(catalog));
                Some((name, overlay))
            })
            .collect()
    }
}

impl CatalogProviderList for ConnectionCatalogs {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        // The trait cannot refuse: statements that would replace a shared catalog are
        // refused before they run (`policy`), and a shared catalog is looked up first.
        self.own
            .write()
            .expect("catalog lock")
            .insert(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        let own = self
            .own
            .read()
            .expect("catalog lock")
            .keys()
            .cloned()
            .collect();
        union(self.shared.catalog_names(), own)
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let overlay = self
            .overlays
            .read()
            .expect("catalog lock")
            .get(name)
            .cloned();
        match overlay {
            Some(overlay) => Some(overlay),
            None => self.own.read().expect("catalog lock").get(name).cloned(),
        }
    }
}

/// A shared catalog with the connection's own schemas, and its own objects in the
/// shared schemas.
#[derive(Debug)]
struct ConnectionCatalog {
    shared: Arc<dyn CatalogProvider>,
    overlays: HashMap<String, Arc<dyn SchemaProvider>>,
    own: MemoryCatalogProvider,
}

impl ConnectionCatalog {
    fn new(shared: Arc<dyn CatalogProvider>) -> Self {
        let overlays = shared
            .schema_names()
            .into_iter()
            .filter_map(|name| {
                let schema = shared.schema(&name)?;
                let overlay: Arc<dyn SchemaProvider> = Arc::new(ConnectionSchema {
                    name: name.clone(),
                    shared: schema,
                    own: MemorySchemaProvider::new(),
                });
                Some((name, overlay))
            })
            .collect();
        ConnectionCatalog {
            shared,
            overlays,
            own: MemoryCatalogProvider::new(),
        }
    }
}

impl CatalogProvider for ConnectionCatalog {
    fn schema_names(&self) -> Vec<String> {
        union(self.shared.schema_names(), self.own.schema_names())
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match self.overlays.get(name) {
            Some(overlay) => Some(Arc::clone(overlay)),
            // A schema added to the shared catalog later (pg_catalog's are all there).
            None => self.shared.schema(name).or_else(|| self.own.schema(name)),
        }
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        if self.shared.schema(name).is_some() {
            return Err(forbidden(format!(
                "schema \"{name}\" is Tracecube's: it cannot be replaced"
            )));
        }
        self.own.register_schema(name, schema)
    }

    fn deregister_schema(
        &self,
        name: &str,
        cascade: bool,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        if self.shared.schema(name).is_some() {
            return Err(forbidden(format!(
                "schema \"{name}\" is Tracecube's: it cannot be dropped"
            )));
        }
        self.own.deregister_schema(name, cascade)
    }
}

/// A shared schema with the connection's own tables and views beside its tables.
#[derive(Debug)]
struct ConnectionSchema {
    name: String,
    shared: Arc<dyn SchemaProvider>,
    own: MemorySchemaProvider,
}

#[async_trait]
impl SchemaProvider for ConnectionSchema {
    fn table_names(&self) -> Vec<String> {
        union(self.shared.table_names(), self.own.table_names())
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.shared.table(name).await? {
            Some(table) => Ok(Some(table)),
            None => self.own.table(name).await,
        }
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.shared.table_exist(&name) {
            return Err(forbidden(format!(
                "\"{}.{name}\" is Tracecube's: it cannot be replaced",
                self.name
            )));
        }
        self.own.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.shared.table_exist(name) {
            return Err(forbidden(format!(
                "\"{}.{name}\" is Tracecube's: it cannot be dropped",
                self.name
            )));
        }
        self.own.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.shared.table_exist(name) || self.own.table_exist(name)
    }
}
