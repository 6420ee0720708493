//! The object store of tiered storage: one `Arc<dyn ObjectStore>` built from the configured
//! driver (S3 and S3-compatible stores, GCS, Azure Blob, a local directory — object_store's
//! drivers, no client of our own), wrapped by behaviour that implements the same trait:
//! [`faults::FaultyStore`] (tests), [`retry::RetryingStore`], [`metered::MeteredStore`].
//! [`OffloadStore`] carries the wrapped store with the names an error must mention (driver,
//! bucket) and the root prefix every object of this cluster lives under.

pub mod aws_profile;
pub mod faults;
pub mod metered;
pub mod retry;

use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use magnetar_metadata::clock::Clock;
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{OffloadError, OffloadResult, StoreError};
use faults::{Faults, FaultyStore};
use metered::{MeteredStore, StoreCounters};
use retry::{RetryPolicy, RetryingStore};

/// Which object store (Pulsar's `managedLedgerOffloadDriver` values are accepted too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    /// A directory on a local file system (standalone's default).
    #[serde(alias = "file-system")]
    Filesystem,
    /// Amazon S3 or an S3-compatible store (MinIO, Ceph, …).
    #[serde(alias = "aws-s3", alias = "S3")]
    S3,
    #[serde(alias = "google-cloud-storage")]
    Gcs,
    #[serde(alias = "azure-blob")]
    Azureblob,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Filesystem => "filesystem",
            Driver::S3 => "s3",
            Driver::Gcs => "gcs",
            Driver::Azureblob => "azureblob",
        }
    }

    pub fn parse(s: &str) -> OffloadResult<Driver> {
        match s.to_ascii_lowercase().as_str() {
            "filesystem" | "file-system" => Ok(Driver::Filesystem),
            "s3" | "aws-s3" => Ok(Driver::S3),
            "gcs" | "google-cloud-storage" => Ok(Driver::Gcs),
            "azureblob" | "azure-blob" => Ok(Driver::Azureblob),
            other => Err(OffloadError::Config(format!(
                "unknown offload driver {other:?}: use s3 (aws-s3), gcs \
                 (google-cloud-storage), azureblob or filesystem"
            ))),
        }
    }
}

/// Where offloaded ledgers go. Credentials not given here come from each cloud's standard
/// chain (for S3: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, the shared files' profile
/// (`AWS_PROFILE`, `~/.aws/credentials`, `~/.aws/config`), web identity
/// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` as Kubernetes service accounts give them,
/// container and instance credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DriverConfig {
    pub driver: Driver,
    /// Bucket (S3, GCS) or container (Azure).
    pub bucket: String,
    pub region: Option<String>,
    /// A custom endpoint (an S3-compatible store); `http://` ones are allowed.
    pub service_endpoint: Option<String>,
    /// S3 path-style addressing (`endpoint/bucket/key`), what most S3-compatible stores want;
    /// false for virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// GCS: the service-account key file.
    pub service_account_path: Option<String>,
    /// Azure: the storage account and its key.
    pub azure_account: Option<String>,
    pub azure_access_key: Option<String>,
    /// The directory of the `filesystem` driver.
    pub directory: PathBuf,
    /// Every object of this cluster lives under this prefix in the bucket.
    pub prefix: String,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            driver: Driver::Filesystem,
            bucket: String::new(),
            region: None,
            service_endpoint: None,
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
            service_account_path: None,
            azure_account: None,
            azure_access_key: None,
            directory: PathBuf::from("offload"),
            prefix: "magnetar".to_owned(),
        }
    }
}

/// Where a ledger's objects are: what a read needs to find them again after the broker's
/// configuration or the topic's policy changed. Credentials are not part of it (they come
/// from the configuration that names this place, or the broker's).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    pub driver: Driver,
    /// Bucket or container; the directory of the `filesystem` driver.
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_endpoint: Option<String>,
    pub prefix: String,
}

impl DriverConfig {
    /// Where this configuration puts objects.
    pub fn location(&self) -> Location {
        Location {
            driver: self.driver,
            bucket: match self.driver {
                Driver::Filesystem => self.directory.display().to_string(),
                _ => self.bucket.clone(),
            },
            region: self.region.clone(),
            service_endpoint: self.service_endpoint.clone(),
            prefix: self.prefix.clone(),
        }
    }

    /// This configuration (its credentials and addressing style) pointed at `at`.
    pub fn at(&self, at: &Location) -> DriverConfig {
        let mut cfg = self.clone();
        if at.driver != self.driver {
            // Another cloud: none of these credentials apply; its standard chain does.
            cfg = DriverConfig {
                path_style: self.path_style,
                ..DriverConfig::default()
            };
        }
        cfg.driver = at.driver;
        match at.driver {
            Driver::Filesystem => cfg.directory = PathBuf::from(&at.bucket),
            _ => cfg.bucket = at.bucket.clone(),
        }
        cfg.region = at.region.clone();
        cfg.service_endpoint = at.service_endpoint.clone();
        cfg.prefix = at.prefix.clone();
        cfg
    }
}

/// Installs the TLS provider reqwest uses for the cloud drivers (ring, as the rest of the
/// binary); a no-op when one is installed already.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn config_err(driver: Driver, bucket: &str, e: impl std::fmt::Display) -> OffloadError {
    OffloadError::Config(format!(
        "{} object store ({}): {e}",
        driver.name(),
        if bucket.is_empty() {
            "no bucket"
        } else {
            bucket
        }
    ))
}

/// The store the driver names, unwrapped.
pub fn build_base(cfg: &DriverConfig) -> OffloadResult<Arc<dyn ObjectStore>> {
    let err = |e: object_store::Error| config_err(cfg.driver, &cfg.bucket, e);
    let need_bucket = || {
        if cfg.bucket.is_empty() {
            Err(config_err(cfg.driver, "", "a bucket is required"))
        } else {
            Ok(())
        }
    };
    match cfg.driver {
        Driver::Filesystem => {
            std::fs::create_dir_all(&cfg.directory)
                .map_err(|e| config_err(cfg.driver, &cfg.directory.display().to_string(), e))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&cfg.directory)
                .map_err(err)?;
            Ok(Arc::new(fs))
        }
        Driver::S3 => {
            need_bucket()?;
            install_tls_provider();
            let env_keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
            let profile = (!env_keys).then(aws_profile::from_env).flatten();
            Ok(Arc::new(s3_builder(cfg, profile).build().map_err(err)?))
        }
        Driver::Gcs => {
            need_bucket()?;
            install_tls_provider();
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(&cfg.bucket);
            if let Some(path) = &cfg.service_account_path {
                b = b.with_service_account_path(path);
            }
            Ok(Arc::new(b.build().map_err(err)?))
        }
        Driver::Azureblob => {
            need_bucket()?;
            install_tls_provider();
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(&cfg.bucket);
            if let Some(account) = &cfg.azure_account {
                b = b.with_account(account);
            }
            if let Some(key) = &cfg.azure_access_key {
                b = b.with_access_key(key);
            }
            if let Some(endpoint) = &cfg.service_endpoint {
                b = b
                    .with_endpoint(endpoint.clone())
                    .with_allow_http(endpoint.starts_with("http://"));
            }
            Ok(Arc::new(b.build().map_err(err)?))
        }
    }
}

/// The S3 builder for `cfg`: the environment first (object_store's `from_env`), then what
/// `cfg` sets, then `profile` (the shared files, read only when the environment has no keys)
/// for what neither gives. What is still missing falls through to web identity, container
/// and instance credentials.
fn s3_builder(
    cfg: &DriverConfig,
    profile: Option<aws_profile::Profile>,
) -> object_store::aws::AmazonS3Builder {
    install_tls_provider();
    let mut b = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.bucket)
        .with_virtual_hosted_style_request(!cfg.path_style);
    if let Some(endpoint) = &cfg.service_endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let region_set = cfg.region.is_some()
        || std::env::var_os("AWS_REGION").is_some()
        || std::env::var_os("AWS_DEFAULT_REGION").is_some();
    if let Some(region) = &cfg.region {
        b = b.with_region(region);
    }
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    } else if let Some(p) = &profile
        && let (Some(id), Some(secret)) = (&p.access_key_id, &p.secret_access_key)
    {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(token) = &p.session_token {
            b = b.with_token(token);
        }
    }
    if let (false, Some(region)) = (region_set, profile.as_ref().and_then(|p| p.region.as_ref())) {
        b = b.with_region(region);
    }
    b
}

/// The wrapped store of tiered storage, with what its errors must name.
#[derive(Clone, Debug)]
pub struct OffloadStore {
    store: Arc<dyn ObjectStore>,
    location: Arc<Location>,
    driver: &'static str,
    bucket: String,
    prefix: Path,
    counters: Arc<StoreCounters>,
    faults: Arc<Faults>,
}

impl OffloadStore {
    /// Builds the configured store: base → faults (inactive unless a test sets them) →
    /// retries → counters.
    pub fn build(
        cfg: &DriverConfig,
        retry: RetryPolicy,
        clock: Arc<dyn Clock>,
    ) -> OffloadResult<OffloadStore> {
        Ok(Self::wrap(build_base(cfg)?, cfg.location(), retry, clock))
    }

    /// Wraps a store built elsewhere (tests: an in-memory store).
    pub fn wrap(
        base: Arc<dyn ObjectStore>,
        location: Location,
        retry: RetryPolicy,
        clock: Arc<dyn Clock>,
    ) -> OffloadStore {
        let faulty = FaultyStore::new(base, Arc::clone(&clock));
        let faults = faulty.faults();
        let retrying = RetryingStore::new(Arc::new(faulty), retry, clock);
        let metered = MeteredStore::new(Arc::new(retrying));
        let counters = metered.counters();
        OffloadStore {
            store: Arc::new(metered),
            driver: location.driver.name(),
            bucket: location.bucket.clone(),
            prefix: Path::from(location.prefix.as_str()),
            location: Arc::new(location),
            counters,
            faults,
        }
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn driver(&self) -> &'static str {
        self.driver
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    /// The fault switches (tests).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// An error of request `op` on `path`, naming the driver and bucket.
    pub fn error(
        &self,
        op: &'static str,
        path: &Path,
        source: object_store::Error,
    ) -> OffloadError {
        OffloadError::Store(Box::new(StoreError {
            driver: self.driver,
            bucket: self.bucket.clone(),
            op,
            path: path.to_string(),
            source,
        }))
    }

    /// One listing under the prefix: wrong credentials, a missing bucket or an unreachable
    /// endpoint show here (at start-up) with the driver and bucket named, not at the first
    /// offload hours later.
    pub async fn check(&self) -> OffloadResult<()> {
        self.store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map(|_| ())
            .map_err(|e| self.error("list", &self.prefix, e))
    }

    /// Every object under `prefix` (relative to nothing: full paths).
    pub async fn list(&self, prefix: &Path) -> OffloadResult<Vec<object_store::ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.error("list", prefix, e))
    }

    /// Deletes `path`; an object already gone counts as deleted.
    pub async fn delete(&self, path: &Path) -> OffloadResult<()> {
        use object_store::ObjectStoreExt;
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use object_store::ObjectStoreExt;

    /// Keys from a profile sign requests a server checking signatures accepts (and keys in
    /// the configuration win over the profile's).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_keys_come_from_the_profile_when_nothing_else_gives_them() {
        let server =
            magnetar_testkit::s3fs::InProcessS3::start("profile-key", "profile-secret").unwrap();
        server.create_bucket("profiled").unwrap();
        let cfg = DriverConfig {
            driver: Driver::S3,
            bucket: "profiled".into(),
            service_endpoint: Some(server.endpoint()),
            region: Some("us-east-1".into()),
            ..DriverConfig::default()
        };
        let profile = aws_profile::Profile {
            access_key_id: Some("profile-key".into()),
            secret_access_key: Some("profile-secret".into()),
            session_token: None,
            region: Some("eu-west-1".into()),
        };
        let store = s3_builder(&cfg, Some(profile.clone())).build().unwrap();
        let path = Path::from("x/y");
        store.put(&path, "hello".into()).await.unwrap();
        let got = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"hello");

        // The configuration's keys come first: wrong ones are refused by the server.
        let wrong = DriverConfig {
            access_key_id: Some("other".into()),
            secret_access_key: Some("other-secret".into()),
            ..cfg
        };
        let store = s3_builder(&wrong, Some(profile)).build().unwrap();
        assert!(store.get(&path).await.is_err());
    }
}
