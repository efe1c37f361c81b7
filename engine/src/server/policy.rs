//! What a connection may do: every statement is checked, before it runs, against the
//! connection's role and against the rule that SQL never reaches the server's files.
//!
//! - `reader`: queries, `SHOW`, `EXPLAIN`, `SET`;
//! - `loader`: + `INSERT INTO traces` (and `COPY traces FROM`, when they exist);
//! - `admin`: + writes to `impact_weights`, DDL of the connection's own objects, `COPY …
//!   TO` a file inside `export_dir`, external tables inside `external_locations`.
//!
//! Nobody may drop, replace or write Tracecube's own tables, views and schemas (shared by
//! every connection), write files (`COPY … TO`) or read files or URLs through external
//! tables outside those configured places, or change the server's runtime settings
//! (`datafusion.runtime.*`: memory limit, spill directory). Refusals carry SQLSTATE `42501`.

use datafusion::catalog::CatalogProviderList;
use datafusion::common::TableReference;
use datafusion::datasource::{MemTable, source_as_provider};
use datafusion::logical_expr::dml::WriteOp;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement};
use datafusion::sql::sqlparser::ast;
use std::path::{Path, PathBuf};
use url::Url;

use crate::catalog::CATALOG;

/// A statement the connection may not run (SQLSTATE `42501`, insufficient privilege).
#[derive(Debug, thiserror::Error)]
#[error("permission denied: {0}")]
pub struct Forbidden(pub String);

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Reader,
    Loader,
    Admin,
}

impl Role {
    /// `reader`, `loader` or `admin`.
    pub fn parse(name: &str) -> Option<Role> {
        match name.trim().to_ascii_lowercase().as_str() {
            "reader" => Some(Role::Reader),
            "loader" => Some(Role::Loader),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Loader => "loader",
            Role::Admin => "admin",
        }
    }
}

/// The schema of unqualified names.
const DEFAULT_SCHEMA: &str = "public";

/// Where SQL may write files (`export_dir`) and read external data
/// (`external_locations`): nowhere unless configured, and only for admins.
#[derive(Debug, Default, Clone)]
pub struct Locations {
    export_dir: Option<PathBuf>,
    external: Vec<Place>,
    /// Where `COPY traces FROM` may read (loaders and admins).
    load: Vec<Place>,
}

/// A local folder (resolved, symbolic links followed) or an object-store prefix.
#[derive(Debug, Clone)]
enum Place {
    Local(PathBuf),
    Remote(Url),
}

impl Place {
    /// `text` as a place: a path (absolute, or relative to the server's folder), a
    /// `file://` URL or another URL. `None` for what cannot be checked (`..` anywhere).
    fn of(text: &str) -> Option<Place> {
        if text
            .split(['/', '\\'])
            .any(|part| part == ".." || part == ".")
        {
            return None;
        }
        // control characters are dropped by URL parsers: what is checked would not be
        // what is read
        if text.chars().any(char::is_control) {
            return None;
        }
        if text.contains("://") {
            let url = Url::parse(text).ok()?;
            // a container or credentials in the authority, a query or a fragment: not a
            // place that can be compared
            if !url.username().is_empty()
                || url.password().is_some()
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return None;
            }
            return if url.scheme() == "file" {
                Some(Place::Local(resolve(&url.to_file_path().ok()?)))
            } else if url.path().split('/').any(|p| p == ".." || p == ".")
                || object_path(&url).is_none()
            {
                // the stores read the percent-decoded path: a key that decodes to `..`,
                // `.`, an empty segment or invalid UTF-8 is not a place that can be compared
                None
            } else {
                Some(Place::Remote(url))
            };
        }
        // `file:/x` or `s3:x` are URLs to a URL parser: refused rather than read as paths
        if Url::parse(text).is_ok() {
            return None;
        }
        let path = Path::new(text);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().ok()?.join(path)
        };
        Some(Place::Local(resolve(&path)))
    }

    /// Whether `self` lies inside the folder or prefix `base`.
    fn within(&self, base: &Place) -> bool {
        match (self, base) {
            (Place::Local(path), Place::Local(base)) => path.starts_with(base),
            (Place::Remote(url), Place::Remote(base)) => {
                // compared as the stores read them: percent-decoded segments
                let segments = |u: &Url| -> Vec<String> {
                    object_path(u)
                        .map(|p| p.parts().map(|part| part.as_ref().to_string()).collect())
                        .unwrap_or_default()
                };
                // `s3a://b` is `s3://b`; `azure://c`, `abfs://c`, `abfss://c` and `adl://c`
                // are `az://c` (the schemes object_store reads as one kind of store): one
                // bucket, one container
                let store = |scheme: &str| match scheme {
                    "s3a" => "s3".to_string(),
                    "azure" | "abfs" | "abfss" | "adl" => "az".to_string(),
                    other => other.to_string(),
                };
                store(url.scheme()) == store(base.scheme())
                    && url.host_str() == base.host_str()
                    && url.port() == base.port()
                    && segments(url).starts_with(&segments(base))
            }
            _ => false,
        }
    }
}

/// The object key an object store reads for `url` (its path percent-decoded, as
/// DataFusion's listing and the loader decode it); `None` when no store would accept it.
fn object_path(url: &Url) -> Option<object_store::path::Path> {
    object_store::path::Path::from_url_path(url.path()).ok()
}

/// Whether every file and folder under `path` (links followed) lies inside `base`; a
/// folder too large to walk (past 100 000 entries) is refused.
fn links_stay_within(path: &Path, base: &Path) -> bool {
    const MAX_ENTRIES: usize = 100_000;
    let mut pending = vec![path.to_path_buf()];
    let mut seen = 0usize;
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            // a file, or nothing yet
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return false;
            }
            match std::fs::canonicalize(entry.path()) {
                Ok(real) if real.starts_with(base) => {
                    if real.is_dir() {
                        pending.push(real);
                    }
                }
                // a link out of the location, or a dangling one
                _ => return false,
            }
        }
    }
    true
}

/// `path` with its longest existing ancestor resolved (symbolic links followed), the rest
/// appended as written.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

impl Locations {
    /// The configured places; an error names one that cannot be used.
    pub fn new(
        export_dir: Option<&str>,
        external: &[String],
        load: &[String],
    ) -> Result<Self, String> {
        let export_dir = match export_dir {
            None => None,
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("export_dir {dir:?} cannot be created: {e}"))?;
                match Place::of(dir) {
                    Some(Place::Local(path)) => Some(path),
                    _ => return Err(format!("export_dir {dir:?} must be a local folder")),
                }
            }
        };
        let external = external
            .iter()
            .map(|l| {
                Place::of(l).ok_or_else(|| format!("external location {l:?} is not a path or URL"))
            })
            .collect::<Result<_, _>>()?;
        let load = load
            .iter()
            .map(|l| {
                Place::of(l).ok_or_else(|| format!("load location {l:?} is not a path or URL"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Locations {
            export_dir,
            external,
            load,
        })
    }

    fn may_export(&self, target: &str) -> bool {
        let Some(dir) = &self.export_dir else {
            return false;
        };
        Place::of(target).is_some_and(|t| t.within(&Place::Local(dir.clone())))
    }

    /// Whether `COPY traces FROM` may read `source` (as written, and then each file it
    /// names, links followed): inside a load location, never inside the warehouse `root`.
    pub fn may_load(&self, source: &str, root: &url::Url) -> bool {
        let Some(place) = Place::of(source) else {
            return false;
        };
        let inside_warehouse = Place::of(root.as_str()).is_none_or(|r| place.within(&r));
        !inside_warehouse && self.load.iter().any(|base| place.within(base))
    }

    fn may_read(&self, location: &str) -> bool {
        let Some(place) = Place::of(location) else {
            return false;
        };
        let Some(base) = self.external.iter().find(|base| place.within(base)) else {
            return false;
        };
        match (&place, base) {
            // a link inside the folder that leads out of the external location is refused
            // when the table is created (a link added later is followed: who may write
            // into an external location decides what admins can read there)
            (Place::Local(path), Place::Local(base)) => links_stay_within(path, base),
            _ => true,
        }
    }
}

/// Checks statements of one connection.
pub struct Policy<'a> {
    pub role: Role,
    /// Tracecube's own catalogs, shared by every connection.
    pub shared: &'a dyn CatalogProviderList,
    pub locations: &'a Locations,
    /// The session's default catalog and schema (unqualified names resolve there).
    pub default_catalog: &'a str,
    pub default_schema: &'a str,
}

impl Policy<'_> {
    /// Whether `name` is one of Tracecube's own tables or views.
    fn is_shared(&self, name: &TableReference) -> bool {
        let catalog = name.catalog().unwrap_or(self.default_catalog);
        let schema = name.schema().unwrap_or(self.default_schema);
        self.shared
            .catalog(catalog)
            .and_then(|c| c.schema(schema))
            .is_some_and(|s| s.table_exist(name.table()))
    }

    fn is_shared_schema(&self, catalog: Option<&str>, schema: &str) -> bool {
        self.shared
            .catalog(catalog.unwrap_or(self.default_catalog))
            .is_some_and(|c| c.schema(schema).is_some())
    }

    fn requires(&self, role: Role, what: &str) -> Result<(), Forbidden> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Forbidden(format!(
                "{what} needs the {} role; this user is a {}",
                role.name(),
                self.role.name()
            )))
        }
    }

    /// Whether `COPY <table> FROM '<source>'` may run: a loader or an admin, loading
    /// `traces`, from inside one of `load_locations` and not from the warehouse at `root`.
    pub fn check_copy_from(
        &self,
        table: &[String],
        source: &str,
        root: &Url,
    ) -> Result<(), Forbidden> {
        self.requires(Role::Loader, "COPY … FROM")?;
        let name = match table {
            [t] => TableReference::bare(t.as_str()),
            [s, t] => TableReference::partial(s.as_str(), t.as_str()),
            [c, s, t] => TableReference::full(c.as_str(), s.as_str(), t.as_str()),
            _ => {
                return Err(Forbidden(format!(
                    "COPY … FROM: no table {}",
                    table.join(".")
                )));
            }
        };
        if name.table() != "traces" || !self.is_shared(&name) {
            return Err(Forbidden(format!(
                "COPY … FROM loads only traces, not {}",
                table.join(".")
            )));
        }
        if self.locations.may_load(source, root) {
            Ok(())
        } else {
            Err(Forbidden(format!(
                "COPY traces FROM '{source}' would read outside the load locations: SQL reads \
                 only from the locations the server's configuration lists in load_locations{}",
                if self.locations.load.is_empty() {
                    " (none configured: loads go through `tracecube load`)"
                } else {
                    ""
                }
            )))
        }
    }

    /// Whether the parsed statement may run: the checks that need the SQL text (a `SET`
    /// is answered by the server before DataFusion plans it).
    pub fn check_statement(&self, statement: &ast::Statement) -> Result<(), Forbidden> {
        match statement {
            ast::Statement::Set(ast::Set::SingleAssignment {
                variable, values, ..
            }) => {
                let value = match values.as_slice() {
                    [value] => Some(super::settings::value_text(value)),
                    _ => None,
                };
                check_setting(&variable.to_string(), value.as_deref())
            }
            ast::Statement::Reset(ast::ResetStatement {
                reset: ast::Reset::ConfigurationParameter(name),
            }) => check_setting(&name.to_string(), None),
            // a COPY … FROM the server runs is sent alone (see `copy_from`)
            ast::Statement::Copy { to: false, .. } => Err(Forbidden(
                "COPY … FROM must be sent as a statement of its own".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the planned statement may run.
    pub fn check(&self, plan: &LogicalPlan) -> Result<(), Forbidden> {
        match plan {
            LogicalPlan::Explain(explain) => self.check(&explain.plan),
            LogicalPlan::Analyze(analyze) => self.check(&analyze.input),
            LogicalPlan::Copy(copy) => {
                self.requires(Role::Admin, "COPY … TO")?;
                if self.locations.may_export(&copy.output_url) {
                    Ok(())
                } else {
                    Err(Forbidden(format!(
                        "COPY … TO '{}' would write outside the export folder: SQL writes \
                         server files only inside export_dir{}",
                        copy.output_url,
                        match &self.locations.export_dir {
                            Some(dir) => format!(" ({})", dir.display()),
                            None => ", which is not configured".into(),
                        }
                    )))
                }
            }
            LogicalPlan::Dml(dml) => {
                let target = &dml.table_name;
                let what = match &dml.op {
                    WriteOp::Insert(_) => "INSERT",
                    WriteOp::Delete => "DELETE",
                    WriteOp::Update => "UPDATE",
                    WriteOp::Ctas => "CREATE TABLE AS",
                    WriteOp::Truncate => "TRUNCATE",
                    WriteOp::MergeInto(_) => "MERGE",
                    _ => "this write",
                };
                let table = target.table();
                let shared_schema = target.schema().unwrap_or(self.default_schema)
                    == DEFAULT_SCHEMA
                    && target.catalog().unwrap_or(self.default_catalog) == CATALOG;
                if !self.is_shared(target) {
                    self.requires(Role::Admin, &format!("{what} into a table of your own"))?;
                    // only in-memory tables: an external table's writes are files
                    let in_memory =
                        source_as_provider(&dml.target).is_ok_and(|t| t.is::<MemTable>());
                    if in_memory || matches!(dml.op, WriteOp::Ctas) {
                        Ok(())
                    } else {
                        Err(Forbidden(format!(
                            "{what} on {target} would write its files: external tables are \
                             read-only"
                        )))
                    }
                } else if shared_schema && table == "impact_weights" {
                    self.requires(Role::Admin, &format!("{what} on impact_weights"))
                } else if shared_schema && table == "traces" && matches!(dml.op, WriteOp::Insert(_))
                {
                    self.requires(Role::Loader, "INSERT INTO traces")
                } else {
                    Err(Forbidden(format!(
                        "{what} on {target}: it is Tracecube's and read-only"
                    )))
                }
            }
            LogicalPlan::Ddl(ddl) => self.check_ddl(ddl),
            LogicalPlan::Statement(Statement::SetVariable(set)) => {
                check_setting(&set.variable, Some(&set.value))
            }
            LogicalPlan::Statement(Statement::ResetVariable(reset)) => {
                check_setting(&reset.variable, None)
            }
            LogicalPlan::Statement(Statement::Prepare(prepare)) => self.check(&prepare.input),
            // Queries read Tracecube's tables (no table function reads files), and the
            // other statements change only the connection's own state.
            _ => Ok(()),
        }
    }

    /// DDL that an admin may run on the connection's own tables and views, never on
    /// Tracecube's.
    fn own_object(&self, what: &str, name: &TableReference, verb: &str) -> Result<(), Forbidden> {
        self.requires(Role::Admin, what)?;
        if self.is_shared(name) {
            return Err(Forbidden(format!(
                "{name} is Tracecube's: it cannot be {verb}"
            )));
        }
        Ok(())
    }

    fn check_ddl(&self, ddl: &DdlStatement) -> Result<(), Forbidden> {
        match ddl {
            DdlStatement::CreateExternalTable(table) => {
                self.own_object("CREATE EXTERNAL TABLE", &table.name, "replaced")?;
                match table.locations.iter().find(|l| !self.locations.may_read(l)) {
                    None if !table.locations.is_empty() => Ok(()),
                    outside => Err(Forbidden(format!(
                        "CREATE EXTERNAL TABLE {} reads '{}': external tables read only inside \
                         external_locations (links inside the folder included){}",
                        table.name,
                        outside.map_or("", String::as_str),
                        if self.locations.external.is_empty() {
                            ", which is not configured"
                        } else {
                            ""
                        }
                    ))),
                }
            }
            DdlStatement::CreateMemoryTable(t) => {
                self.own_object("CREATE TABLE", &t.name, "replaced")
            }
            DdlStatement::CreateView(v) => self.own_object("CREATE VIEW", &v.name, "replaced"),
            DdlStatement::DropTable(t) => self.own_object("DROP TABLE", &t.name, "dropped"),
            DdlStatement::DropView(v) => self.own_object("DROP VIEW", &v.name, "dropped"),
            DdlStatement::CreateCatalogSchema(s) => {
                self.requires(Role::Admin, "CREATE SCHEMA")?;
                let (catalog, schema) = match s.schema_name.split_once('.') {
                    Some((c, s)) => (Some(c), s),
                    None => (None, s.schema_name.as_str()),
                };
                if self.is_shared_schema(catalog, schema) {
                    return Err(Forbidden(format!(
                        "schema {} is Tracecube's: it cannot be replaced",
                        s.schema_name
                    )));
                }
                Ok(())
            }
            DdlStatement::DropCatalogSchema(s) => {
                self.requires(Role::Admin, "DROP SCHEMA")?;
                let (catalog, schema) = match &s.name {
                    datafusion::common::SchemaReference::Bare { schema } => (None, schema),
                    datafusion::common::SchemaReference::Full { catalog, schema } => {
                        (Some(catalog.as_ref()), schema)
                    }
                };
                if self.is_shared_schema(catalog, schema) {
                    return Err(Forbidden(format!(
                        "schema {schema} is Tracecube's: it cannot be dropped"
                    )));
                }
                Ok(())
            }
            DdlStatement::CreateCatalog(c) => {
                self.requires(Role::Admin, "CREATE DATABASE")?;
                if self.shared.catalog(&c.catalog_name).is_some() {
                    return Err(Forbidden(format!(
                        "database {} is Tracecube's: it cannot be replaced",
                        c.catalog_name
                    )));
                }
                Ok(())
            }
            DdlStatement::CreateIndex(_)
            | DdlStatement::CreateFunction(_)
            | DdlStatement::DropFunction(_) => self.requires(Role::Admin, "this statement"),
        }
    }
}

/// DataFusion settings a connection may change (its own session's), with the largest
/// value of the numeric ones. The others would let one connection take the server's
/// threads or memory (`target_partitions`, buffer sizes), or belong to the server's
/// configuration (`datafusion.runtime.*`: memory limit, spill folder).
const SESSION_SETTINGS: &[(&str, Option<u64>)] = &[
    ("datafusion.execution.batch_size", Some(65_536)),
    ("datafusion.execution.time_zone", None),
    ("datafusion.execution.collect_statistics", None),
    ("datafusion.execution.parquet.pushdown_filters", None),
    ("datafusion.execution.parquet.reorder_filters", None),
    ("datafusion.execution.parquet.enable_page_index", None),
    ("datafusion.execution.parquet.pruning", None),
    ("datafusion.execution.parquet.bloom_filter_on_read", None),
    ("datafusion.sql_parser.recursion_limit", Some(50)),
    ("datafusion.sql_parser.enable_ident_normalization", None),
    ("datafusion.catalog.information_schema", None),
    ("datafusion.catalog.default_schema", None),
];

/// Families of DataFusion settings a connection may change: how plans are optimized and
/// explained, and how values are formatted.
const SESSION_SETTING_PREFIXES: &[&str] = &[
    "datafusion.optimizer.",
    "datafusion.explain.",
    "datafusion.format.",
];

/// Whether a connection may set `variable` (to `value`, when known).
fn check_setting(variable: &str, value: Option<&str>) -> Result<(), Forbidden> {
    // `"datafusion"."runtime"."x"` names the same setting as `datafusion.runtime.x`.
    let variable = variable.replace('"', "").to_ascii_lowercase();
    if !variable.starts_with("datafusion.")
        || SESSION_SETTING_PREFIXES
            .iter()
            .any(|p| variable.starts_with(p))
    {
        return Ok(());
    }
    let Some((_, limit)) = SESSION_SETTINGS.iter().find(|(name, _)| *name == variable) else {
        return Err(Forbidden(format!(
            "{variable} is a server setting: it is set in the server's configuration"
        )));
    };
    if let (Some(limit), Some(value)) = (limit, value)
        && value.trim().parse::<u64>().is_ok_and(|v| v > *limit)
    {
        return Err(Forbidden(format!(
            "{variable} may be at most {limit} in a session"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bucket_under_two_schemes_is_one_place() {
        let locations = Locations::new(None, &[], &["s3://data/".to_string()]).unwrap();
        let root = url::Url::parse("s3a://data/wh/").unwrap();
        assert!(locations.may_load("s3://data/exports/a.parquet", &root));
        assert!(locations.may_load("s3a://data/exports/a.parquet", &root));
        // the warehouse, named with either scheme, is never a source
        assert!(!locations.may_load("s3://data/wh/traces/x.parquet", &root));
        assert!(!locations.may_load("s3a://data/wh/rejects/", &root));
        assert!(!locations.may_load("s3://other/exports/a.parquet", &root));
        let azure = Locations::new(None, &[], &["abfss://c/".to_string()]).unwrap();
        let root = url::Url::parse("az://c/wh/").unwrap();
        assert!(azure.may_load("az://c/exports/a.parquet", &root));
        for alias in ["az", "azure", "abfs", "abfss", "adl"] {
            assert!(!azure.may_load(&format!("{alias}://c/wh/traces/x.parquet"), &root));
        }
    }

    #[test]
    fn object_keys_are_compared_as_the_stores_decode_them() {
        let locations = Locations::new(None, &[], &["s3://data/exports/".to_string()]).unwrap();
        let root = url::Url::parse("s3://data/wh/").unwrap();
        // spaces and accented letters in keys are ordinary objects
        assert!(locations.may_load("s3://data/exports/ventes%20%C3%A9t%C3%A9.parquet", &root));
        assert!(locations.may_load("s3://data/exports/day=2026-11-01/a.parquet", &root));
        // an encoded prefix is the same prefix
        assert!(locations.may_load("s3://data/%65xports/a.parquet", &root));
        // what leaves the prefix once decoded, an empty segment or a byte that is not
        // UTF-8 is refused
        assert!(!locations.may_load("s3://data/exports/%2e%2e/wh/traces/x.parquet", &root));
        // URL parsing resolves `%2e` segments before anything reads the path: this is
        // exports/a.parquet for the check and for the store alike
        assert!(locations.may_load("s3://data/exports/%2E/a.parquet", &root));
        assert!(!locations.may_load("s3://data/exports//a.parquet", &root));
        assert!(!locations.may_load("s3://data/exports/%FF.parquet", &root));
        // an encoded slash splits a segment, as the store reads it: still inside
        assert!(locations.may_load("s3://data/exports%2Fa.parquet", &root));
        assert!(!locations.may_load("s3://data/export%2Fa.parquet", &root));
        // the warehouse reached through an encoded name is still the warehouse
        let wide = Locations::new(None, &[], &["s3://data/".to_string()]).unwrap();
        assert!(!wide.may_load("s3://data/w%68/traces/x.parquet", &root));
    }
}
