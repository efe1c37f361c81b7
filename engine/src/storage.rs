//! Object stores: where the warehouse lives and where loads read from. Local paths and
//! `file://` URLs, `s3://` (AWS or any S3-compatible server: endpoint, path-style
//! requests, plain HTTP on request), `gs://` and `az://`/`abfss://`, built by
//! `object_store` from the `[storage]` options of the configuration over the standard
//! environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), as the AWS CLI and DuckDB read them.
//!
//! Commits on object stores rely on conditional writes: the Delta log's next version is
//! created with `If-None-Match: *` (S3 has enforced it since 2024, as do Ceph radosgw,
//! MinIO and R2), so two writers never both create one version.
//!
//! - [`options`]: `[storage]` as `object_store` options (`path_style` translated).
//! - [`store_for`]: the store of a URL's bucket (or container), and the path in it.
//! - [`register_with_delta`]: teaches `deltalake` to open tables at these URLs.
//! - [`CloudRegistry`]: DataFusion's registry of stores, creating a bucket's store the
//!   first time a URL of it is read (sources of a load, external tables).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Once};

use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use deltalake::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

/// URL schemes of object stores besides the local file system.
pub const CLOUD_SCHEMES: [&str; 7] = ["s3", "s3a", "gs", "az", "azure", "abfs", "abfss"];

/// A store that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage option {key:?} is not an option of {scheme}:// stores{hint}")]
    UnknownOption {
        key: String,
        scheme: String,
        hint: String,
    },
    #[error("cannot open {url}: {message}")]
    Open { url: String, message: String },
}

/// Whether `url` names an object store (not the local file system).
pub fn is_cloud(url: &Url) -> bool {
    CLOUD_SCHEMES.contains(&url.scheme())
}

/// The `[storage]` options as `object_store` spells them: `path_style = true` (requests to
/// `endpoint/bucket/key`, what most S3-compatible servers want; also the default) is
/// `virtual_hosted_style_request = false`. Keys are lower case.
pub fn options(storage: &BTreeMap<String, String>) -> HashMap<String, String> {
    storage
        .iter()
        .map(|(key, value)| {
            let key = key.to_ascii_lowercase();
            if key == "path_style" {
                let path_style = !matches!(value.trim(), "false" | "0" | "no" | "off");
                (
                    "virtual_hosted_style_request".to_string(),
                    (!path_style).to_string(),
                )
            } else {
                (key, value.clone())
            }
        })
        .collect()
}

fn unknown(scheme: &str, key: &str) -> StorageError {
    let hint = match scheme {
        "s3" | "s3a" | "file" => {
            ": use endpoint, region, access_key_id, secret_access_key, session_token, \
             allow_http, path_style, or an aws_… option"
        }
        "gs" => ": use a google_… option (google_service_account, google_application_credentials…)",
        _ => ": use an azure_… option (azure_storage_account_name, azure_storage_account_key…)",
    };
    StorageError::UnknownOption {
        key: key.to_string(),
        scheme: scheme.to_string(),
        hint: hint.to_string(),
    }
}

/// The store `$builder` (from the environment, with the retries) builds for `$url` with
/// `$options`, whose keys must parse as `$key`: an option it does not know is an error
/// naming it (a misspelt `endpoint` must not silently reach AWS).
macro_rules! built {
    ($builder:expr, $key:ty, $url:expr, $options:expr, $open:expr) => {{
        let mut builder = $builder;
        for (key, value) in $options {
            let parsed: $key = key
                .parse()
                .map_err(|_| unknown($url.scheme(), key.as_str()))?;
            builder = builder.with_config(parsed, (*value).clone());
        }
        Arc::new(
            builder
                .with_url($url.as_str())
                .build()
                .map_err(|e| $open(e.to_string()))?,
        )
    }};
}

/// The store of the bucket (or container) of `url`, built from the environment then
/// `options` (which win), and the path of `url` in it.
pub fn store_for(
    url: &Url,
    options: &HashMap<String, String>,
) -> Result<(Arc<dyn ObjectStore>, Path), StorageError> {
    let open = |message: String| StorageError::Open {
        url: url.to_string(),
        message,
    };
    let path = Path::from_url_path(url.path()).map_err(|e| open(e.to_string()))?;
    let retry = retry_config(options)?;
    // `deltalake` passes its own runtime options through: they are not the store's
    let mut own = Vec::new();
    for (key, value) in options {
        if is_delta_option(key) || RETRY_OPTIONS.contains(&key.as_str()) {
            continue;
        }
        // every option must be one of its kind of store, whichever store is built now
        let kind = option_kind(key)?;
        if Some(kind) == scheme_kind(url.scheme()) {
            own.push((key, value));
        }
    }
    let options = own;
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        // the options are those of the object stores sources may be read from
        "file" => Arc::new(object_store::local::LocalFileSystem::new()),
        "s3" | "s3a" => {
            use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
            let mut builder = AmazonS3Builder::from_env().with_retry(retry);
            // a configured endpoint wins over `AWS_ENDPOINT_URL_S3` of the environment
            // too (the store prefers that one to the general endpoint); a configured
            // `aws_endpoint_url_s3`, applied below, still wins over both
            let endpoint = options.iter().find(|(k, _)| {
                k.parse::<AmazonS3ConfigKey>()
                    .is_ok_and(|k| k == AmazonS3ConfigKey::Endpoint)
            });
            if let Some((_, endpoint)) = endpoint {
                builder = builder.with_config(AmazonS3ConfigKey::S3Endpoint, (*endpoint).clone());
            }
            built!(builder, AmazonS3ConfigKey, url, &options, open)
        }
        "gs" => {
            use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
            let builder = GoogleCloudStorageBuilder::from_env().with_retry(retry);
            built!(builder, GoogleConfigKey, url, &options, open)
        }
        "az" | "azure" | "abfs" | "abfss" => {
            use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
            let builder = MicrosoftAzureBuilder::from_env().with_retry(retry);
            built!(builder, AzureConfigKey, url, &options, open)
        }
        other => {
            return Err(open(format!(
                "{other}:// is not a supported location (local paths, file://, s3://, gs://, az://)"
            )));
        }
    };
    Ok((store, path))
}

/// The kind of store an option is for: `google_…` options for `gs://`, `azure_…` for
/// `az://` (and its other schemes), every other one for `s3://` (so an S3 warehouse's
/// `endpoint` does not reach a `gs://` external table); an error when that kind of
/// store does not know it.
fn option_kind(key: &str) -> Result<&'static str, StorageError> {
    let kind = if key.starts_with("google_") {
        "gs"
    } else if key.starts_with("azure_") {
        "az"
    } else {
        "s3"
    };
    let known = match kind {
        "gs" => key.parse::<object_store::gcp::GoogleConfigKey>().is_ok(),
        "az" => key.parse::<object_store::azure::AzureConfigKey>().is_ok(),
        _ => key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok(),
    };
    if known {
        Ok(kind)
    } else {
        Err(unknown(kind, key))
    }
}

/// The kind of store of a URL scheme, as [`option_kind`] names it; none for local files.
fn scheme_kind(scheme: &str) -> Option<&'static str> {
    match scheme {
        "s3" | "s3a" => Some("s3"),
        "gs" => Some("gs"),
        "az" | "azure" | "abfs" | "abfss" => Some("az"),
        _ => None,
    }
}

/// Options of the retries of requests to an object store: how many times a failed request
/// is retried (`max_retries`, default 10) and for how long at most (`retry_timeout`, e.g.
/// `"30s"`, default 3 minutes), with exponential backoff.
pub const RETRY_OPTIONS: [&str; 2] = ["max_retries", "retry_timeout"];

fn retry_config(
    options: &HashMap<String, String>,
) -> Result<object_store::RetryConfig, StorageError> {
    let mut retry = object_store::RetryConfig::default();
    let invalid = |key: &str, value: &str, reason: String| StorageError::Open {
        url: format!("storage option {key} = {value:?}"),
        message: reason,
    };
    if let Some(value) = options.get("max_retries") {
        retry.max_retries = value
            .trim()
            .parse()
            .map_err(|e: std::num::ParseIntError| invalid("max_retries", value, e.to_string()))?;
    }
    if let Some(value) = options.get("retry_timeout") {
        let seconds = crate::config::parse_duration("storage.retry_timeout", value)
            .map_err(|e| invalid("retry_timeout", value, e.to_string()))?;
        retry.retry_timeout = std::time::Duration::from_secs(seconds.max(0) as u64);
    }
    Ok(retry)
}

/// Options `deltalake` reads itself (its I/O runtime, retries, limits), not a store's.
fn is_delta_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with("delta_")
}

struct DeltaStores;

impl ObjectStoreFactory for DeltaStores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> deltalake::DeltaResult<(ObjectStoreRef, Path)> {
        store_for(url, &config.raw).map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))
    }
}

struct DeltaLogs;

impl LogStoreFactory for DeltaLogs {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        // commits create the log's next version with a conditional write
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Let `deltalake` open tables on every object store of [`CLOUD_SCHEMES`] (once per process).
pub fn register_with_delta() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let stores = object_store_factories();
        let logs = logstore_factories();
        for scheme in CLOUD_SCHEMES {
            let url = Url::parse(&format!("{scheme}://")).expect("a valid scheme");
            stores.insert(url.clone(), Arc::new(DeltaStores));
            logs.insert(url, Arc::new(DeltaLogs));
        }
    });
}

/// DataFusion's registry of object stores, which builds the store of a bucket the first
/// time a URL of it is used, with the warehouse's storage options, and registers it in
/// `inner` (which may wrap it). It only makes stores reachable: what SQL may read is
/// decided before (see the server's policy).
#[derive(Debug)]
pub struct CloudRegistry<R = DefaultObjectStoreRegistry> {
    inner: R,
    options: HashMap<String, String>,
    /// Serialises the creation of stores (one per bucket).
    creating: Mutex<()>,
}

impl CloudRegistry {
    pub fn new(options: HashMap<String, String>) -> Self {
        CloudRegistry::wrapping(DefaultObjectStoreRegistry::new(), options)
    }
}

impl<R: ObjectStoreRegistry> CloudRegistry<R> {
    /// Stores created in (and looked up from) `inner`.
    pub fn wrapping(inner: R, options: HashMap<String, String>) -> Self {
        CloudRegistry {
            inner,
            options,
            creating: Mutex::new(()),
        }
    }
}

impl<R: ObjectStoreRegistry> ObjectStoreRegistry for CloudRegistry<R> {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        if !is_cloud(url) {
            return self.inner.get_store(url);
        }
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        let mut root = url.clone();
        root.set_path("/");
        root.set_query(None);
        root.set_fragment(None);
        let (store, _) = store_for(&root, &self.options)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        self.inner.register_store(&root, store);
        self.inner.get_store(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_is_the_opposite_of_virtual_hosted_requests() {
        let storage = BTreeMap::from([
            ("path_style".to_string(), "true".to_string()),
            ("Endpoint".to_string(), "http://127.0.0.1:9000".to_string()),
        ]);
        let options = options(&storage);
        assert_eq!(options["virtual_hosted_style_request"], "false");
        assert_eq!(options["endpoint"], "http://127.0.0.1:9000");
    }

    #[test]
    fn an_unknown_option_is_an_error_naming_it() {
        let url = Url::parse("s3://bucket/prefix/").unwrap();
        let options = HashMap::from([("endpiont".to_string(), "http://x".to_string())]);
        let e = store_for(&url, &options).expect_err("an error");
        assert!(e.to_string().contains("\"endpiont\""), "{e}");
        let options = HashMap::from([
            ("endpoint".to_string(), "http://127.0.0.1:1".to_string()),
            ("allow_http".to_string(), "true".to_string()),
            ("region".to_string(), "us-east-1".to_string()),
        ]);
        let (_, path) = store_for(&url, &options).unwrap();
        assert_eq!(path.as_ref(), "prefix");
    }

    #[test]
    fn each_store_takes_the_options_of_its_kind() {
        let options = options(&BTreeMap::from([
            ("endpoint".to_string(), "http://127.0.0.1:1".to_string()),
            ("path_style".to_string(), "true".to_string()),
            ("google_bucket".to_string(), "other".to_string()),
        ]));
        // an S3 warehouse's endpoint does not reach a gs:// or az:// store
        let gs = store_for(&Url::parse("gs://bucket/x/").unwrap(), &options);
        assert!(!matches!(gs, Err(StorageError::UnknownOption { .. })));
        let az = store_for(&Url::parse("az://container/x/").unwrap(), &options);
        assert!(!matches!(az, Err(StorageError::UnknownOption { .. })));
        assert!(store_for(&Url::parse("s3://bucket/x/").unwrap(), &options).is_ok());
        // a misspelt option of any kind is an error whichever store is opened
        let mut wrong = options.clone();
        wrong.insert("google_servce_account".into(), "x".into());
        let e = store_for(&Url::parse("s3://bucket/x/").unwrap(), &wrong).expect_err("error");
        assert!(e.to_string().contains("google_servce_account"), "{e}");
        let e = store_for(&Url::parse("file:///tmp/x/").unwrap(), &wrong).expect_err("error");
        assert!(e.to_string().contains("gs://"), "{e}");
    }

    #[test]
    fn a_bucket_store_is_built_once_per_bucket() {
        let registry = CloudRegistry::new(HashMap::from([
            ("endpoint".to_string(), "http://127.0.0.1:1".to_string()),
            ("allow_http".to_string(), "true".to_string()),
        ]));
        let a = registry
            .get_store(&Url::parse("s3://bucket/a/x.parquet").unwrap())
            .unwrap();
        let b = registry
            .get_store(&Url::parse("s3://bucket/b/").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(
            registry
                .get_store(&Url::parse("ftp://host/x").unwrap())
                .is_err()
        );
    }
}
