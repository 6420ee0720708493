//! Offload policies (Pulsar's `OffloadPolicies`) and how a topic's effective offload settings
//! are resolved from its own policy, its namespace's and the broker's configuration.

use magnetar_managed_ledger::{ManagedLedgerConfig, OffloadPolicy};
use magnetar_offload::{Driver, DriverConfig, Location};
use serde::{Deserialize, Serialize};

use super::{NamespacePolicies, TopicPolicies};

/// Pulsar's `OffloadPolicies`: the fields this broker acts on are typed; every other field a
/// client sends is kept as given and returned by GET.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffloadPolicies {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_driver: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_threshold_in_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_threshold_in_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_deletion_lag_in_millis: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_ledger_offload_bucket: Option<String>,
    #[serde(
        default,
        rename = "s3ManagedLedgerOffloadBucket",
        skip_serializing_if = "Option::is_none"
    )]
    pub s3_bucket: Option<String>,
    #[serde(
        default,
        rename = "gcsManagedLedgerOffloadBucket",
        skip_serializing_if = "Option::is_none"
    )]
    pub gcs_bucket: Option<String>,
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

impl OffloadPolicies {
    /// Pulsar's checks of `POST offloadPolicies` (412 with these messages).
    pub fn validate(&self) -> Result<(), String> {
        // Pulsar's list without aliyun-oss, which this broker has no driver for (OSS speaks
        // S3: use `S3` with its endpoint).
        const DRIVERS: &str = "S3,aws-s3,google-cloud-storage,filesystem,azureblob";
        let Some(driver) = &self.managed_ledger_offload_driver else {
            return Err(format!(
                "The driver is not supported, support value: {DRIVERS}"
            ));
        };
        let lower = driver.to_ascii_lowercase();
        if !DRIVERS.to_ascii_lowercase().split(',').any(|d| d == lower) {
            return Err(format!(
                "The driver is not supported, support value: {DRIVERS}"
            ));
        }
        let bucket = self
            .managed_ledger_offload_bucket
            .as_ref()
            .or(match lower.as_str() {
                "s3" | "aws-s3" => self.s3_bucket.as_ref(),
                "google-cloud-storage" => self.gcs_bucket.as_ref(),
                _ => None,
            })
            .filter(|b| !b.is_empty());
        if lower != "filesystem" && bucket.is_none() {
            return Err("The bucket must be specified for namespace offload.".to_owned());
        }
        Ok(())
    }
}

impl OffloadPolicies {
    fn other_str(&self, key: &str) -> Option<String> {
        self.other
            .get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    /// The store this policy names, with `base` (the broker's configuration) supplying what
    /// it leaves out — credentials of the same cloud, the prefix. `None`: no driver named.
    pub fn driver_config(&self, base: &DriverConfig) -> Result<Option<DriverConfig>, String> {
        let Some(name) = &self.managed_ledger_offload_driver else {
            return Ok(None);
        };
        let driver = Driver::parse(name).map_err(|e| e.to_string())?;
        let pick = |generic: Option<String>, s3: &str, gcs: &str| {
            generic.or_else(|| match driver {
                Driver::S3 => self.other_str(s3),
                Driver::Gcs => self.other_str(gcs),
                _ => None,
            })
        };
        let bucket = self
            .managed_ledger_offload_bucket
            .clone()
            .filter(|b| !b.is_empty())
            .or_else(|| match driver {
                Driver::S3 => self.s3_bucket.clone(),
                Driver::Gcs => self.gcs_bucket.clone(),
                _ => None,
            })
            .unwrap_or_default();
        let bucket = match driver {
            // Pulsar's `fileSystemURI` (`file:///path` or a path); else the broker's directory.
            Driver::Filesystem => self
                .other_str("fileSystemURI")
                .map(|u| u.strip_prefix("file://").unwrap_or(&u).to_owned())
                .unwrap_or_else(|| base.location().bucket),
            _ => bucket,
        };
        if bucket.is_empty() {
            return Err(format!("offload driver {name}: a bucket is required"));
        }
        let at = Location {
            driver,
            bucket,
            region: pick(
                self.other_str("managedLedgerOffloadRegion"),
                "s3ManagedLedgerOffloadRegion",
                "gcsManagedLedgerOffloadRegion",
            ),
            service_endpoint: pick(
                self.other_str("managedLedgerOffloadServiceEndpoint"),
                "s3ManagedLedgerOffloadServiceEndpoint",
                "",
            ),
            prefix: base.prefix.clone(),
        };
        let mut cfg = base.at(&at);
        if let (Some(id), Some(secret)) = (
            self.other_str("s3ManagedLedgerOffloadCredentialId"),
            self.other_str("s3ManagedLedgerOffloadCredentialSecret"),
        ) {
            cfg.access_key_id = Some(id);
            cfg.secret_access_key = Some(secret);
        }
        if let Some(key_file) = self.other_str("gcsManagedLedgerOffloadServiceAccountKeyFile") {
            cfg.service_account_path = Some(key_file);
        }
        Ok(Some(cfg))
    }
}

/// A topic's offload settings and where each came from.
#[derive(Clone, Debug, PartialEq)]
pub struct OffloadResolved {
    pub policy: OffloadPolicy,
    /// A policy named a store this broker cannot use; the broker's store is used instead.
    pub driver_error: Option<String>,
}

/// The effective offload settings of a topic, field by field as Pulsar merges them: the
/// topic's offload policy, then the namespace's offload policy, then the namespace's single
/// settings (`offloadThreshold`, `offloadThresholdInSeconds`, `offloadDeletionLagMs`), then
/// the broker's configuration (`config`). The store is the one the nearest policy naming a
/// driver gives; `base_driver` is the broker's (`None`: no tiered storage on this broker).
pub fn resolve(
    topic: Option<&TopicPolicies>,
    ns: &NamespacePolicies,
    config: &ManagedLedgerConfig,
    base_driver: Option<&DriverConfig>,
) -> OffloadResolved {
    let levels: Vec<&OffloadPolicies> = topic
        .and_then(|t| t.offload_policies.as_ref())
        .into_iter()
        .chain(ns.offload_policies.as_ref())
        .collect();
    let first = |f: fn(&OffloadPolicies) -> Option<i64>| levels.iter().find_map(|p| f(p));
    let threshold_bytes = first(|p| p.managed_ledger_offload_threshold_in_bytes)
        .or(ns.offload_threshold)
        .unwrap_or(config.offload_threshold_bytes);
    let threshold_ms = first(|p| p.managed_ledger_offload_threshold_in_seconds)
        .or(ns.offload_threshold_in_seconds)
        .map(|s| if s < 0 { -1 } else { s.saturating_mul(1000) })
        .unwrap_or(config.offload_threshold_ms);
    let deletion_lag_ms = first(|p| p.managed_ledger_offload_deletion_lag_in_millis)
        .or(ns.offload_deletion_lag_ms)
        .unwrap_or(config.offload_deletion_lag_ms);
    let mut driver_error = None;
    let driver = base_driver.and_then(|base| {
        let named = levels
            .iter()
            .find(|p| p.managed_ledger_offload_driver.is_some())?;
        match named.driver_config(base) {
            Ok(cfg) => cfg,
            Err(e) => {
                driver_error = Some(e);
                None
            }
        }
    });
    OffloadResolved {
        policy: OffloadPolicy {
            threshold_bytes,
            threshold_ms,
            deletion_lag_ms,
            driver,
        },
        driver_error,
    }
}
