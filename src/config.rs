//! Configuration of the `magnetar` binary.
//!
//! Layers, each overriding the one before:
//!
//! 1. the defaults of [`Config::default`];
//! 2. a TOML file (`--config FILE`, or the `MAGNETAR_CONFIG` environment variable);
//! 3. `RUST_LOG`, for `log.level` only;
//! 4. environment variables `MAGNETAR_<SECTION>__<KEY>` (the double underscore separates the
//!    section from the key, e.g. `MAGNETAR_METADATA__BACKEND=etcd`); variables starting with
//!    `MAGNETAR_` without a double underscore are not configuration and are ignored;
//! 5. command-line flags.
//!
//! Unknown keys are an error naming the key and where it came from, in the file as in the
//! environment. Every key and its default is documented in `docs/CONFIGURATION.md`; a unit test
//! below keeps the two in step.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use magnetar_bookie::api::BookieId;
use magnetar_bookie::server::BookieOptions;
use serde::{Deserialize, Deserializer, Serialize};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MAGNETAR_";
/// Separator between section and key in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";
/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_FILE_ENV: &str = "MAGNETAR_CONFIG";
/// File name of the embedded metadata store inside the data directory.
pub const EMBEDDED_FILE_NAME: &str = "metadata.redb";

/// The whole configuration.
// Not `Eq`: the bookie's ratios are floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[metadata]`: which metadata store, and how to reach it.
    pub metadata: MetadataConfig,
    /// `[standalone]`: `magnetar standalone`.
    pub standalone: StandaloneConfig,
    /// `[bookie]`: `magnetar bookie`.
    pub bookie: BookieConfig,
    /// `[broker]`: `magnetar broker`, a cluster broker.
    pub broker: BrokerServerConfig,
    /// `[log]`: diagnostics on stderr.
    pub log: LogConfig,
    /// `[admin]`: `magnetar admin`, the command-line client of the admin REST API.
    pub admin: AdminConfig,
    /// `[client]`: `magnetar produce`, `consume` and `perf`.
    pub client: ClientConfig,
    /// `[offload]`: tiered storage, for `magnetar broker` and `magnetar standalone`.
    pub offload: OffloadConfig,
}

/// Which metadata-store backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    /// Durable file store (redb) in the process: standalone.
    #[default]
    Embedded,
    /// An etcd cluster: brokers and bookies in a cluster.
    Etcd,
    /// In memory, lost at exit: tests only.
    Memory,
}

/// `[metadata]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// Backend of the metadata store.
    pub backend: MetadataBackend,
    /// etcd client endpoints (etcd backend). A list, or in an environment variable also a
    /// comma-separated string.
    #[serde(deserialize_with = "string_or_list")]
    pub etcd_endpoints: Vec<String>,
    /// Prefix under which all of Magnetar's keys live in etcd, so clusters can share one etcd.
    pub etcd_root: String,
    /// Time to live of a metadata session (a lease): ephemeral keys such as ownership and bookie
    /// registrations vanish this long after their holder stops renewing.
    pub session_ttl_ms: u64,
    /// File of the embedded backend. Unset means `<standalone.data_dir>/metadata.redb`; a relative
    /// path is taken relative to `standalone.data_dir`.
    /// (No `skip_serializing_if`: the docs test walks the serialized keys and must see this one;
    /// TOML leaves unset options out on its own.)
    pub embedded_path: Option<PathBuf>,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            backend: MetadataBackend::default(),
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            etcd_root: "/magnetar".to_owned(),
            session_ttl_ms: 10_000,
            embedded_path: None,
        }
    }
}

/// `[standalone]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandaloneConfig {
    /// Directory for all standalone state.
    pub data_dir: PathBuf,
    /// Address the broker and admin listeners bind to.
    pub bind_address: String,
    /// Pulsar binary protocol port.
    pub broker_port: u16,
    /// Admin REST API port.
    pub admin_port: u16,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig {
            data_dir: PathBuf::from("./data"),
            bind_address: "127.0.0.1".to_owned(),
            broker_port: 6650,
            admin_port: 8080,
        }
    }
}

/// `[broker]`: a cluster broker (`magnetar broker`): the Pulsar protocol over etcd and
/// bookies reached with gRPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerServerConfig {
    /// IP address the Pulsar protocol listener binds to.
    pub bind_address: String,
    /// Pulsar binary protocol port; 0 picks a free one.
    pub port: u16,
    /// Host clients are told to connect to (lookups answer it); unset: `bind_address`.
    pub advertised_address: Option<String>,
    /// Admin REST API port (on `bind_address`); 0 picks a free one.
    pub admin_port: u16,
    /// Bookies each new ledger is striped over (namespace policies override).
    pub ensemble_size: u32,
    /// Copies of each entry.
    pub write_quorum: u32,
    /// Copies that must be durable before an entry is acknowledged.
    pub ack_quorum: u32,
    /// Pulsar's `schemaCompatibilityStrategy`: the strategy of namespaces without a
    /// `schema_compatibility_strategy` policy (also used by `magnetar standalone`).
    pub schema_compatibility_strategy: magnetar_broker::schema::CompatibilityStrategy,
    /// Pulsar's `brokerMaxConnections`: connections served at once (also standalone's).
    pub max_connections: usize,
    /// Requests of one connection in progress at once (LOOKUP, PRODUCER, SUBSCRIBE, …).
    pub max_concurrent_requests_per_connection: usize,
    /// Pulsar's `maxPendingPublishRequestsPerConnection`: unanswered SENDs of one connection.
    pub max_pending_publish_requests_per_connection: usize,
    /// Pulsar's `brokerDeleteInactiveTopicsEnabled`.
    pub delete_inactive_topics_enabled: bool,
    /// Pulsar's `brokerDeleteInactiveTopicsFrequencySeconds`.
    pub delete_inactive_topics_frequency_s: u64,
    /// Pulsar's `brokerDeleteInactiveTopicsMode`.
    pub delete_inactive_topics_mode: magnetar_broker::policies::InactiveTopicDeleteMode,
    /// Pulsar's `brokerDeleteInactiveTopicsMaxInactiveDurationSeconds`; unset: the frequency.
    pub delete_inactive_topics_max_inactive_duration_s: Option<u64>,
    /// Pulsar's `enableBrokerSideSubscriptionPatternEvaluation`: topic lists asked for by
    /// pattern consumers are filtered by their pattern on the broker.
    pub enable_broker_side_subscription_pattern_evaluation: bool,
    /// Pulsar's `subscriptionPatternMaxLength`: longer patterns are left to the client.
    pub subscription_pattern_max_length: usize,
    /// Pulsar's `exposeTopicLevelMetricsInPrometheus`: `/metrics` has per-topic and
    /// per-subscription series; false: sums per namespace (cheaper with very many topics).
    pub expose_topic_level_metrics_in_prometheus: bool,
    /// Pulsar's `managedLedgerMaxEntriesPerLedger`: a topic's ledger rolls over at this many
    /// entries.
    pub managed_ledger_max_entries_per_ledger: u64,
    /// Pulsar's `managedLedgerMaxSizePerLedgerMbytes`: … or at this many MiB.
    pub managed_ledger_max_size_per_ledger_mbytes: u64,
    /// Pulsar's `managedLedgerMaxLedgerRolloverTimeMinutes`: … or at this age (with entries).
    pub managed_ledger_max_ledger_rollover_time_minutes: u64,
    /// Pulsar's `retentionCheckIntervalInSeconds`: how often each topic's consumed ledgers are
    /// trimmed (and its retention limits applied).
    pub retention_check_interval_in_seconds: u64,
    /// Pulsar's `managedLedgerCursorMaxEntriesPerLedger`: a cursor ledger rolls over after
    /// this many state snapshots (each rollover is one metadata write).
    pub managed_ledger_cursor_max_entries_per_ledger: u64,
    /// Pulsar's `managedLedgerCursorRolloverTimeInSeconds`: … or at this age.
    pub managed_ledger_cursor_rollover_time_in_seconds: u64,
    /// Pulsar's `loadBalancerEnabled`: unowned bundles go to the least-loaded broker, and the
    /// leader sheds load. Off: a bundle stays with whichever broker was asked first.
    pub load_balancer_enabled: bool,
    /// Pulsar's `loadBalancerReportUpdateMinIntervalMillis`: how often the load is sampled.
    pub load_balancer_report_update_min_interval_ms: u64,
    /// Pulsar's `loadBalancerReportUpdateMaxIntervalMinutes`.
    pub load_balancer_report_update_max_interval_minutes: u64,
    /// Pulsar's `loadBalancerReportUpdateThresholdPercentage`.
    pub load_balancer_report_update_threshold_percentage: u32,
    /// Pulsar's `loadBalancerBrokerMaxTopics`.
    pub load_balancer_broker_max_topics: u64,
    /// Pulsar's `loadBalancerBrokerOverloadedThresholdPercentage`.
    pub load_balancer_broker_overloaded_threshold_percentage: u32,
    /// Pulsar's `loadBalancerDistributeBundlesEvenlyEnabled`.
    pub load_balancer_distribute_bundles_evenly_enabled: bool,
    /// Pulsar's `loadBalancerSheddingEnabled`.
    pub load_balancer_shedding_enabled: bool,
    /// Pulsar's `loadBalancerSheddingIntervalMinutes`, in seconds.
    pub load_balancer_shedding_interval_seconds: u64,
    /// Pulsar's `loadBalancerSheddingGracePeriodMinutes`, in seconds.
    pub load_balancer_shedding_grace_period_seconds: u64,
    /// Pulsar's `loadBalancerBrokerThresholdShedderPercentage`.
    pub load_balancer_broker_threshold_shedder_percentage: u32,
    /// Pulsar's `loadBalancerSheddingConditionHitCountThreshold`.
    pub load_balancer_shedding_condition_hit_count_threshold: u32,
    /// Pulsar's `loadBalancerMaxNumberOfBrokerSheddingPerCycle`.
    pub load_balancer_max_number_of_broker_shedding_per_cycle: usize,
    /// Below this message rate (msg/s in + out) a broker is never shed from.
    pub load_balancer_shedding_min_message_rate: u64,
    /// Pulsar's `loadBalancerAutoBundleSplitEnabled`.
    pub load_balancer_auto_bundle_split_enabled: bool,
    /// Pulsar's `loadBalancerAutoUnloadSplitBundlesEnabled`.
    pub load_balancer_auto_unload_split_bundles_enabled: bool,
    /// Pulsar's `loadBalancerNamespaceBundleMaxTopics`.
    pub load_balancer_namespace_bundle_max_topics: u64,
    /// Pulsar's `loadBalancerNamespaceBundleMaxSessions`.
    pub load_balancer_namespace_bundle_max_sessions: u64,
    /// Pulsar's `loadBalancerNamespaceBundleMaxMsgRate`.
    pub load_balancer_namespace_bundle_max_msg_rate: u64,
    /// Pulsar's `loadBalancerNamespaceBundleMaxBandwidthMbytes`.
    pub load_balancer_namespace_bundle_max_bandwidth_mbytes: u64,
    /// Pulsar's `loadBalancerNamespaceMaximumBundles`.
    pub load_balancer_namespace_maximum_bundles: usize,
    /// Pulsar's `defaultNamespaceBundleSplitAlgorithm`: `range_equally_divide` or
    /// `topic_count_equally_divide`.
    pub default_namespace_bundle_split_algorithm: String,
    /// Pulsar's `brokerShutdownTimeoutMs`: how long SIGTERM's drain (bundles handed to other
    /// brokers) may take before the broker closes what is left and exits.
    pub broker_shutdown_timeout_ms: u64,
}

impl Default for BrokerServerConfig {
    fn default() -> Self {
        let limits = magnetar_broker::service::ConnectionLimits::default();
        let lb = magnetar_broker::service::LoadBalancerConfig::default();
        BrokerServerConfig {
            bind_address: "127.0.0.1".to_owned(),
            port: 6650,
            advertised_address: None,
            admin_port: 8080,
            ensemble_size: 2,
            write_quorum: 2,
            ack_quorum: 2,
            schema_compatibility_strategy: magnetar_broker::schema::CompatibilityStrategy::Full,
            max_connections: limits.max_connections,
            max_concurrent_requests_per_connection: limits.max_concurrent_requests_per_connection,
            max_pending_publish_requests_per_connection: limits
                .max_pending_publish_requests_per_connection,
            delete_inactive_topics_enabled: true,
            delete_inactive_topics_frequency_s: 60,
            delete_inactive_topics_mode:
                magnetar_broker::policies::InactiveTopicDeleteMode::DeleteWhenNoSubscriptions,
            delete_inactive_topics_max_inactive_duration_s: None,
            enable_broker_side_subscription_pattern_evaluation: true,
            subscription_pattern_max_length: 50,
            expose_topic_level_metrics_in_prometheus: true,
            managed_ledger_max_entries_per_ledger: 50_000,
            managed_ledger_max_size_per_ledger_mbytes: 2048,
            managed_ledger_max_ledger_rollover_time_minutes: 240,
            retention_check_interval_in_seconds: 60,
            managed_ledger_cursor_max_entries_per_ledger: 50_000,
            managed_ledger_cursor_rollover_time_in_seconds: 4 * 3600,
            load_balancer_enabled: lb.enabled,
            load_balancer_report_update_min_interval_ms: 5000,
            load_balancer_report_update_max_interval_minutes: 15,
            load_balancer_report_update_threshold_percentage: 10,
            load_balancer_broker_max_topics: lb.broker_max_topics,
            load_balancer_broker_overloaded_threshold_percentage: 85,
            load_balancer_distribute_bundles_evenly_enabled: lb.distribute_bundles_evenly,
            load_balancer_shedding_enabled: lb.shedding_enabled,
            load_balancer_shedding_interval_seconds: 60,
            load_balancer_shedding_grace_period_seconds: 30 * 60,
            load_balancer_broker_threshold_shedder_percentage: 10,
            load_balancer_shedding_condition_hit_count_threshold: lb
                .shedding_condition_hit_count_threshold,
            load_balancer_max_number_of_broker_shedding_per_cycle: lb.max_unloads_per_cycle,
            load_balancer_shedding_min_message_rate: 100,
            load_balancer_auto_bundle_split_enabled: true,
            load_balancer_auto_unload_split_bundles_enabled: true,
            load_balancer_namespace_bundle_max_topics: 1000,
            load_balancer_namespace_bundle_max_sessions: 1000,
            load_balancer_namespace_bundle_max_msg_rate: 30_000,
            load_balancer_namespace_bundle_max_bandwidth_mbytes: 100,
            load_balancer_namespace_maximum_bundles: 128,
            default_namespace_bundle_split_algorithm: "range_equally_divide".to_owned(),
            broker_shutdown_timeout_ms: 60_000,
        }
    }
}

impl BrokerServerConfig {
    /// The connection limits, as the broker takes them.
    pub fn limits(&self) -> magnetar_broker::service::ConnectionLimits {
        magnetar_broker::service::ConnectionLimits {
            max_connections: self.max_connections,
            max_concurrent_requests_per_connection: self.max_concurrent_requests_per_connection,
            max_pending_publish_requests_per_connection: self
                .max_pending_publish_requests_per_connection,
        }
    }

    /// Sets what this section configures of the broker service (shared by `magnetar broker`
    /// and `magnetar standalone`).
    pub fn apply(&self, service: &mut magnetar_broker::service::BrokerConfig) {
        service.schema_compatibility_strategy = self.schema_compatibility_strategy;
        service.limits = self.limits();
        service.inactive_topics = self.inactive_topics();
        service.broker_side_pattern_evaluation =
            self.enable_broker_side_subscription_pattern_evaluation;
        service.subscription_pattern_length_max = self.subscription_pattern_max_length;
        service.expose_topic_level_metrics = self.expose_topic_level_metrics_in_prometheus;
        service.load_balancer = self.load_balancer();
        let ml = &mut service.managed_ledger;
        ml.ledger_entries_max = self.managed_ledger_max_entries_per_ledger;
        ml.ledger_size_bytes_max = self
            .managed_ledger_max_size_per_ledger_mbytes
            .saturating_mul(1024 * 1024);
        ml.ledger_age_ms_max = self
            .managed_ledger_max_ledger_rollover_time_minutes
            .saturating_mul(60_000);
        ml.retention_check_interval_ms = self
            .retention_check_interval_in_seconds
            .saturating_mul(1000);
        ml.cursor_ledger_entries_max = self.managed_ledger_cursor_max_entries_per_ledger;
        ml.cursor_ledger_age_ms_max = self
            .managed_ledger_cursor_rollover_time_in_seconds
            .saturating_mul(1000);
    }

    /// The load balancer's settings, as the broker takes them.
    pub fn load_balancer(&self) -> magnetar_broker::service::LoadBalancerConfig {
        use std::time::Duration;
        magnetar_broker::service::LoadBalancerConfig {
            enabled: self.load_balancer_enabled,
            report_update_min_interval: Duration::from_millis(
                self.load_balancer_report_update_min_interval_ms,
            ),
            report_update_max_interval: Duration::from_secs(
                self.load_balancer_report_update_max_interval_minutes
                    .saturating_mul(60),
            ),
            report_update_threshold_percentage: f64::from(
                self.load_balancer_report_update_threshold_percentage,
            ),
            broker_max_topics: self.load_balancer_broker_max_topics,
            broker_overloaded_threshold_percentage: f64::from(
                self.load_balancer_broker_overloaded_threshold_percentage,
            ),
            distribute_bundles_evenly: self.load_balancer_distribute_bundles_evenly_enabled,
            shedding_enabled: self.load_balancer_shedding_enabled,
            shedding_interval: Duration::from_secs(self.load_balancer_shedding_interval_seconds),
            shedding_grace_period: Duration::from_secs(
                self.load_balancer_shedding_grace_period_seconds,
            ),
            broker_threshold_shedder_percentage: f64::from(
                self.load_balancer_broker_threshold_shedder_percentage,
            ),
            shedding_condition_hit_count_threshold: self
                .load_balancer_shedding_condition_hit_count_threshold
                .max(1),
            max_unloads_per_cycle: self.load_balancer_max_number_of_broker_shedding_per_cycle,
            shedding_min_message_rate: self.load_balancer_shedding_min_message_rate as f64,
            auto_bundle_split_enabled: self.load_balancer_auto_bundle_split_enabled,
            auto_unload_split_bundles_enabled: self.load_balancer_auto_unload_split_bundles_enabled,
            namespace_bundle_max_topics: self.load_balancer_namespace_bundle_max_topics,
            namespace_bundle_max_sessions: self.load_balancer_namespace_bundle_max_sessions,
            namespace_bundle_max_msg_rate: self.load_balancer_namespace_bundle_max_msg_rate as f64,
            namespace_bundle_max_bandwidth_mbytes: self
                .load_balancer_namespace_bundle_max_bandwidth_mbytes
                as f64,
            namespace_maximum_bundles: self.load_balancer_namespace_maximum_bundles.clamp(
                1,
                magnetar_broker::cluster::bundle::BUNDLE_COUNT_MAX as usize,
            ),
            // Checked by `validate`.
            split_algorithm: self
                .default_namespace_bundle_split_algorithm
                .parse()
                .unwrap_or(magnetar_broker::service::SplitAlgorithm::RangeEquallyDivide),
        }
    }

    /// Inactive-topic deletion, as the broker takes it.
    pub fn inactive_topics(&self) -> magnetar_broker::service::InactiveTopicsConfig {
        magnetar_broker::service::InactiveTopicsConfig {
            enabled: self.delete_inactive_topics_enabled,
            frequency: std::time::Duration::from_secs(self.delete_inactive_topics_frequency_s),
            mode: self.delete_inactive_topics_mode,
            max_inactive: self
                .delete_inactive_topics_max_inactive_duration_s
                .map(std::time::Duration::from_secs),
        }
    }

    /// The address the Pulsar protocol listener binds to.
    pub fn bind(&self) -> anyhow::Result<SocketAddr> {
        let ip: IpAddr = self.bind_address.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid configuration: broker.bind_address must be an IP address, got {:?}",
                self.bind_address
            )
        })?;
        Ok(SocketAddr::new(ip, self.port))
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.bind()?;
        match self
            .default_namespace_bundle_split_algorithm
            .parse::<magnetar_broker::service::SplitAlgorithm>()
        {
            Ok(magnetar_broker::service::SplitAlgorithm::SpecifiedPositionsDivide(_)) | Err(_) => {
                anyhow::bail!(
                    "invalid configuration: broker.default_namespace_bundle_split_algorithm must \
                     be range_equally_divide or topic_count_equally_divide, got {:?}",
                    self.default_namespace_bundle_split_algorithm
                )
            }
            Ok(_) => {}
        }
        for (key, v) in [
            ("max_connections", self.max_connections),
            (
                "max_concurrent_requests_per_connection",
                self.max_concurrent_requests_per_connection,
            ),
            (
                "max_pending_publish_requests_per_connection",
                self.max_pending_publish_requests_per_connection,
            ),
            (
                "delete_inactive_topics_frequency_s",
                usize::try_from(self.delete_inactive_topics_frequency_s).unwrap_or(usize::MAX),
            ),
            (
                "load_balancer_report_update_min_interval_ms",
                usize::try_from(self.load_balancer_report_update_min_interval_ms)
                    .unwrap_or(usize::MAX),
            ),
            (
                "load_balancer_shedding_interval_seconds",
                usize::try_from(self.load_balancer_shedding_interval_seconds).unwrap_or(usize::MAX),
            ),
            (
                "managed_ledger_max_entries_per_ledger",
                usize::try_from(self.managed_ledger_max_entries_per_ledger).unwrap_or(usize::MAX),
            ),
            (
                "retention_check_interval_in_seconds",
                usize::try_from(self.retention_check_interval_in_seconds).unwrap_or(usize::MAX),
            ),
            (
                "managed_ledger_max_size_per_ledger_mbytes",
                usize::try_from(self.managed_ledger_max_size_per_ledger_mbytes)
                    .unwrap_or(usize::MAX),
            ),
            (
                "managed_ledger_max_ledger_rollover_time_minutes",
                usize::try_from(self.managed_ledger_max_ledger_rollover_time_minutes)
                    .unwrap_or(usize::MAX),
            ),
            (
                "managed_ledger_cursor_max_entries_per_ledger",
                usize::try_from(self.managed_ledger_cursor_max_entries_per_ledger)
                    .unwrap_or(usize::MAX),
            ),
            (
                "managed_ledger_cursor_rollover_time_in_seconds",
                usize::try_from(self.managed_ledger_cursor_rollover_time_in_seconds)
                    .unwrap_or(usize::MAX),
            ),
        ] {
            if v == 0 {
                bail!("invalid configuration: broker.{key} must be at least 1");
            }
        }
        if !(self.ack_quorum >= 1
            && self.write_quorum >= self.ack_quorum
            && self.ensemble_size >= self.write_quorum)
        {
            bail!(
                "invalid configuration: broker needs ensemble_size ≥ write_quorum ≥ ack_quorum ≥ 1, \
                 got {}/{}/{}",
                self.ensemble_size,
                self.write_quorum,
                self.ack_quorum
            );
        }
        if self
            .advertised_address
            .as_ref()
            .is_some_and(|a| a.is_empty() || a.contains(['/', ' ']))
        {
            bail!("invalid configuration: broker.advertised_address must be a host name or IP");
        }
        Ok(())
    }
}

/// `[bookie]`: a bookie process. The storage knobs mirror
/// [`BookieOptions`](magnetar_bookie::server::BookieOptions) and take its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BookieConfig {
    /// Holds the bookie's journal and entry storage.
    pub data_dir: PathBuf,
    /// IP address the gRPC server binds to.
    pub bind_address: String,
    /// gRPC port; 0 picks a free one.
    pub port: u16,
    /// Address clients reach the bookie at, `host` or `host:port`; unset: `bind_address:port`.
    /// It is also the bookie's identity in ledger metadata.
    pub advertised_address: Option<String>,
    /// Zone label; placement spreads a ledger's replicas over zones.
    pub zone: Option<String>,
    /// Port of the HTTP endpoints (BookKeeper's `httpServerPort`; unset: no HTTP server, as
    /// BookKeeper's `httpServerEnabled` defaults to off); 0 picks a free one.
    pub http_port: Option<u16>,
    pub journal_file_size_bytes: u64,
    pub entry_log_size_bytes_max: u64,
    pub checkpoint_interval_ms: u64,
    pub gc_interval_ms: u64,
    pub deleted_ledgers_scan_interval_ms: u64,
    pub gc_live_ratio_min: f64,
    /// BookKeeper's `compactionRateByBytes`: entry-log bytes compaction scans per second;
    /// 0: unpaced.
    pub gc_compaction_rate_bytes_per_s: u64,
    pub disk_check_interval_ms: u64,
    pub disk_usage_threshold: f64,
    pub disk_usage_lwm: f64,
    pub storage_size_bytes_max: Option<u64>,
    pub entry_size_bytes_max: u64,
    /// Page cache of the on-disk entry index: bounds the index's memory whatever is stored.
    pub index_cache_size_bytes: u64,
    /// Start even when journal replay finds a damaged record that synced records follow,
    /// skipping it (an operator's decision after reading the error; the entries are lost
    /// on this replica and must come back from the others).
    pub journal_skip_damaged_records: bool,
    /// Runs an auditor candidate and a replication worker in this bookie (BookKeeper's
    /// `autoRecoveryDaemonEnabled`): ledgers that had a replica on a lost bookie are
    /// re-replicated without an operator.
    pub auto_recovery_enabled: bool,
    /// A bookie whose registration has been gone this long is lost and its ledgers are
    /// re-replicated (BookKeeper's `lostBookieRecoveryDelay`).
    pub lost_bookie_recovery_delay_seconds: u64,
    /// The auditor also checks every ledger this often (BookKeeper's
    /// `auditorPeriodicCheckInterval`).
    pub auditor_periodic_check_interval_seconds: u64,
    /// An open ledger that lost a replica of its last segment is left to its writer this long,
    /// then fenced and re-replicated (BookKeeper's `openLedgerRereplicationGracePeriod`).
    pub open_ledger_rereplication_grace_period_seconds: u64,
}

impl Default for BookieConfig {
    fn default() -> Self {
        let o = BookieOptions::new(BookieId(String::new()), "");
        BookieConfig {
            data_dir: PathBuf::from("./data/bookie"),
            bind_address: "127.0.0.1".to_owned(),
            port: 3181,
            advertised_address: None,
            zone: None,
            http_port: None,
            journal_file_size_bytes: o.journal_file_size_bytes,
            entry_log_size_bytes_max: o.entry_log_size_bytes_max,
            checkpoint_interval_ms: o.checkpoint_interval_ms,
            gc_interval_ms: o.gc_interval_ms,
            deleted_ledgers_scan_interval_ms: o.deleted_ledgers_scan_interval_ms,
            gc_live_ratio_min: o.gc_live_ratio_min,
            gc_compaction_rate_bytes_per_s: o.gc_compaction_rate_bytes_per_s,
            disk_check_interval_ms: o.disk_check_interval_ms,
            disk_usage_threshold: o.disk_usage_threshold,
            disk_usage_lwm: o.disk_usage_lwm,
            storage_size_bytes_max: o.storage_size_bytes_max,
            entry_size_bytes_max: o.entry_size_bytes_max as u64,
            index_cache_size_bytes: o.index_cache_size_bytes as u64,
            journal_skip_damaged_records: o.journal_skip_damaged_records,
            auto_recovery_enabled: true,
            lost_bookie_recovery_delay_seconds: 60,
            auditor_periodic_check_interval_seconds: 3600,
            open_ledger_rereplication_grace_period_seconds: 30,
        }
    }
}

impl BookieConfig {
    /// Auto-recovery's settings; `None` when it is off.
    pub fn auto_recovery(&self) -> Option<magnetar_bookie::autorecovery::AutoRecoveryOptions> {
        self.auto_recovery_enabled
            .then(|| magnetar_bookie::autorecovery::AutoRecoveryOptions {
                lost_bookie_delay: std::time::Duration::from_secs(
                    self.lost_bookie_recovery_delay_seconds,
                ),
                periodic_check_interval: std::time::Duration::from_secs(
                    self.auditor_periodic_check_interval_seconds.max(1),
                ),
                open_ledger_grace: std::time::Duration::from_secs(
                    self.open_ledger_rereplication_grace_period_seconds,
                ),
                ..Default::default()
            })
    }

    /// The address the gRPC server binds to.
    pub fn bind(&self) -> anyhow::Result<SocketAddr> {
        let ip: IpAddr = self.bind_address.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid configuration: bookie.bind_address must be an IP address, got {:?}",
                self.bind_address
            )
        })?;
        Ok(SocketAddr::new(ip, self.port))
    }

    /// The advertised `host:port`, the bookie's id (port 0 stands for the port bound).
    pub fn advertised(&self) -> anyhow::Result<BookieId> {
        let bind = self.bind()?;
        let Some(addr) = &self.advertised_address else {
            return Ok(BookieId(bind.to_string()));
        };
        if addr.parse::<SocketAddr>().is_ok() {
            return Ok(BookieId(addr.clone()));
        }
        if let Ok(ip) = addr.parse::<IpAddr>() {
            return Ok(BookieId(SocketAddr::new(ip, self.port).to_string()));
        }
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(BookieId(addr.clone()))
            }
            _ if !addr.is_empty() && !addr.contains([':', '/', ' ']) => {
                Ok(BookieId(format!("{addr}:{}", self.port)))
            }
            _ => bail!(
                "invalid configuration: bookie.advertised_address must be a host or host:port, got {addr:?}"
            ),
        }
    }

    /// The storage options.
    pub fn options(&self, id: BookieId) -> BookieOptions {
        let mut o = BookieOptions::new(id, &self.data_dir);
        o.journal_file_size_bytes = self.journal_file_size_bytes;
        o.entry_log_size_bytes_max = self.entry_log_size_bytes_max;
        o.checkpoint_interval_ms = self.checkpoint_interval_ms;
        o.gc_interval_ms = self.gc_interval_ms;
        o.deleted_ledgers_scan_interval_ms = self.deleted_ledgers_scan_interval_ms;
        o.gc_live_ratio_min = self.gc_live_ratio_min;
        o.gc_compaction_rate_bytes_per_s = self.gc_compaction_rate_bytes_per_s;
        o.disk_check_interval_ms = self.disk_check_interval_ms;
        o.disk_usage_threshold = self.disk_usage_threshold;
        o.disk_usage_lwm = self.disk_usage_lwm;
        o.storage_size_bytes_max = self.storage_size_bytes_max;
        o.entry_size_bytes_max = usize::try_from(self.entry_size_bytes_max).unwrap_or(usize::MAX);
        o.index_cache_size_bytes =
            usize::try_from(self.index_cache_size_bytes).unwrap_or(usize::MAX);
        o.journal_skip_damaged_records = self.journal_skip_damaged_records;
        o
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            bail!("invalid configuration: bookie.data_dir is empty");
        }
        let bind = self.bind()?;
        if bind.ip().is_unspecified() && self.advertised_address.is_none() {
            bail!(
                "invalid configuration: bookie.bind_address {} listens everywhere; set \
                 bookie.advertised_address to the address clients reach this bookie at",
                self.bind_address
            );
        }
        self.advertised()?;
        if self.zone.as_deref().is_some_and(str::is_empty) {
            bail!("invalid configuration: bookie.zone is empty (leave it unset instead)");
        }
        for (key, value) in [
            ("journal_file_size_bytes", self.journal_file_size_bytes),
            ("entry_log_size_bytes_max", self.entry_log_size_bytes_max),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("gc_interval_ms", self.gc_interval_ms),
            (
                "deleted_ledgers_scan_interval_ms",
                self.deleted_ledgers_scan_interval_ms,
            ),
            ("disk_check_interval_ms", self.disk_check_interval_ms),
            ("entry_size_bytes_max", self.entry_size_bytes_max),
        ] {
            if value == 0 {
                bail!("invalid configuration: bookie.{key} must be at least 1");
            }
        }
        for (key, value) in [
            ("gc_live_ratio_min", self.gc_live_ratio_min),
            ("disk_usage_threshold", self.disk_usage_threshold),
            ("disk_usage_lwm", self.disk_usage_lwm),
        ] {
            if !(0.0..=1.0).contains(&value) {
                bail!("invalid configuration: bookie.{key} must be between 0 and 1, got {value}");
            }
        }
        if self.disk_usage_lwm > self.disk_usage_threshold {
            bail!(
                "invalid configuration: bookie.disk_usage_lwm ({}) is above bookie.disk_usage_threshold ({})",
                self.disk_usage_lwm,
                self.disk_usage_threshold
            );
        }
        Ok(())
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// URL of the admin REST API `magnetar admin` talks to (`--url` and `MAGNETAR_ADMIN_URL`
    /// override it).
    pub url: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            url: "http://127.0.0.1:8080".to_owned(),
        }
    }
}

/// `[client]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Broker URL of `magnetar produce`, `consume` and `perf` (`--service-url` and
    /// `MAGNETAR_SERVICE_URL` override it).
    pub service_url: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            service_url: "pulsar://127.0.0.1:6650".to_owned(),
        }
    }
}

/// `[offload]`: tiered storage — closed ledgers copied to object storage (Pulsar's
/// `managedLedgerOffload*` and `s3ManagedLedgerOffload*` settings). Credentials not set here
/// come from each cloud's standard chain (for S3: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
/// web identity `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, container and instance roles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OffloadConfig {
    /// `s3` (or `aws-s3`), `gcs` (`google-cloud-storage`), `azureblob`, `filesystem`, or `none`.
    /// Unset: `magnetar standalone` offloads to `<data_dir>/offload`; a broker does not offload.
    pub driver: Option<String>,
    /// Bucket (S3, GCS) or container (Azure).
    pub bucket: String,
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store (`http://` allowed) or of Azure.
    pub service_endpoint: Option<String>,
    /// S3 path-style addressing (what most S3-compatible stores want); false: virtual-hosted.
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// GCS service-account key file.
    pub service_account_path: Option<String>,
    pub azure_account: Option<String>,
    pub azure_access_key: Option<String>,
    /// The `filesystem` driver's directory (standalone default: `<data_dir>/offload`).
    pub directory: Option<PathBuf>,
    /// Every object of this cluster lives under this prefix.
    pub prefix: String,
    /// Offloads at once per broker (`managedLedgerOffloadMaxThreads`).
    pub max_threads: usize,
    /// Keep at most this many bytes of a topic on the bookies; -1 off
    /// (`managedLedgerOffloadAutoTriggerSizeThresholdBytes`). Namespace policies override it.
    pub threshold_bytes: i64,
    /// Offload closed ledgers older than this; -1 off (`managedLedgerOffloadThresholdInSeconds`).
    pub threshold_seconds: i64,
    /// Delete the bookies' copy this long after an offload completed; -1 never
    /// (`managedLedgerOffloadDeletionLagMs`).
    pub deletion_lag_ms: i64,
    /// Size of an upload part (`s3ManagedLedgerOffloadMaxBlockSizeInBytes`; at least 5 MiB).
    pub max_block_size_bytes: u64,
    /// Bytes per ranged read and cached block (`s3ManagedLedgerOffloadReadBufferSizeInBytes`).
    pub read_buffer_size_bytes: u64,
    /// Blocks read ahead of a reader, in parallel.
    pub read_prefetch_blocks: u64,
    /// Blocks ahead fetched by one ranged GET.
    pub read_prefetch_request_blocks: u64,
    /// Bytes being read ahead at once by all readers of the broker.
    pub read_prefetch_inflight_bytes_max: u64,
    /// The block cache's bound (bytes, shared by all readers of the broker).
    pub read_cache_size_bytes: u64,
    /// How often the cleaner deletes objects no topic references (0: never).
    pub cleaner_interval_seconds: u64,
    /// … once they are this old.
    pub cleaner_grace_period_seconds: u64,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            driver: None,
            bucket: String::new(),
            region: None,
            service_endpoint: None,
            path_style: true,
            access_key_id: None,
            secret_access_key: None,
            service_account_path: None,
            azure_account: None,
            azure_access_key: None,
            directory: None,
            prefix: "magnetar".to_owned(),
            max_threads: 2,
            threshold_bytes: -1,
            threshold_seconds: -1,
            deletion_lag_ms: 4 * 3600 * 1000,
            max_block_size_bytes: 64 * 1024 * 1024,
            read_buffer_size_bytes: 1024 * 1024,
            read_prefetch_blocks: 16,
            read_prefetch_request_blocks: 4,
            read_prefetch_inflight_bytes_max: 128 * 1024 * 1024,
            read_cache_size_bytes: 256 * 1024 * 1024,
            cleaner_interval_seconds: 3600,
            cleaner_grace_period_seconds: 3600,
        }
    }
}

impl OffloadConfig {
    /// The broker's offload options; `standalone_data_dir` is given for `magnetar standalone`,
    /// whose default is the `filesystem` driver under its data directory.
    pub fn options(
        &self,
        standalone_data_dir: Option<&Path>,
    ) -> anyhow::Result<Option<magnetar_broker::runtime::broker::OffloadOptions>> {
        use magnetar_offload::{Driver, DriverConfig};
        let driver = match (self.driver.as_deref(), standalone_data_dir) {
            (Some("none") | Some(""), _) | (None, None) => return Ok(None),
            (Some(name), _) => {
                Driver::parse(name).map_err(|e| anyhow::anyhow!("offload.driver: {e}"))?
            }
            (None, Some(_)) => Driver::Filesystem,
        };
        let directory = match (&self.directory, standalone_data_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(data)) => data.join("offload"),
            (None, None) if driver == Driver::Filesystem => {
                bail!("offload.directory is required with the filesystem driver")
            }
            (None, None) => PathBuf::new(),
        };
        let cfg = DriverConfig {
            driver,
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            service_endpoint: self.service_endpoint.clone(),
            path_style: self.path_style,
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            service_account_path: self.service_account_path.clone(),
            azure_account: self.azure_account.clone(),
            azure_access_key: self.azure_access_key.clone(),
            directory,
            prefix: self.prefix.clone(),
        };
        let mut o = magnetar_broker::runtime::broker::OffloadOptions::new(cfg);
        o.max_threads = self.max_threads.max(1);
        o.upload.part_size_bytes = usize::try_from(self.max_block_size_bytes).unwrap_or(usize::MAX);
        o.read.block_size_bytes = self.read_buffer_size_bytes;
        o.read.prefetch_blocks = self.read_prefetch_blocks;
        o.read.prefetch_request_blocks = self.read_prefetch_request_blocks;
        o.read.prefetch_inflight_bytes_max = self.read_prefetch_inflight_bytes_max;
        o.read.cache_size_bytes = self.read_cache_size_bytes;
        o.cleaner_interval = std::time::Duration::from_secs(self.cleaner_interval_seconds);
        o.cleaner_grace = std::time::Duration::from_secs(self.cleaner_grace_period_seconds);
        Ok(Some(o))
    }

    /// The broker-wide thresholds every managed ledger starts from.
    pub fn apply(&self, ml: &mut magnetar_managed_ledger::ManagedLedgerConfig) {
        ml.offload_threshold_bytes = self.threshold_bytes;
        ml.offload_threshold_ms = if self.threshold_seconds < 0 {
            -1
        } else {
            self.threshold_seconds.saturating_mul(1000)
        };
        ml.offload_deletion_lag_ms = self.deletion_lag_ms;
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or directives such
    /// as `info,magnetar_metadata=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    /// `standalone --data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `standalone --bind-address`.
    pub standalone_bind_address: Option<String>,
    /// `standalone --broker-port`.
    pub standalone_broker_port: Option<u16>,
    /// `standalone --admin-port`.
    pub standalone_admin_port: Option<u16>,
    /// `bookie --data-dir`, `--bind-address`, `--port`, `--advertised-address`, `--zone`.
    pub bookie: BookieFlags,
}

/// The flags of `magnetar bookie`, each setting the `bookie.` key of its name.
#[derive(Debug, Clone, Default)]
pub struct BookieFlags {
    pub data_dir: Option<PathBuf>,
    pub bind_address: Option<String>,
    pub port: Option<u16>,
    pub advertised_address: Option<String>,
    pub zone: Option<String>,
}

/// Wraps a provider so that errors name a key the way the operator wrote it: `metadata.backend`
/// for the file (figment would say `default.metadata.backend`), the variable name
/// `MAGNETAR_METADATA__BACKEND` for the environment (figment would say `METADATA.BACKEND`).
struct KeyNames<P> {
    inner: P,
    style: KeyStyle,
}

#[derive(Clone, Copy)]
enum KeyStyle {
    Dotted,
    Env,
    RustLog,
}

impl<P: Provider> KeyNames<P> {
    fn dotted(inner: P) -> Self {
        KeyNames {
            inner,
            style: KeyStyle::Dotted,
        }
    }
    fn env(inner: P) -> Self {
        KeyNames {
            inner,
            style: KeyStyle::Env,
        }
    }
    fn rust_log(inner: P) -> Self {
        KeyNames {
            inner,
            style: KeyStyle::RustLog,
        }
    }
}

impl<P: Provider> Provider for KeyNames<P> {
    fn metadata(&self) -> Metadata {
        let style = self.style;
        self.inner
            .metadata()
            .interpolater(move |_: &Profile, keys: &[&str]| match style {
                KeyStyle::Dotted => keys.join("."),
                KeyStyle::Env => {
                    format!(
                        "{ENV_PREFIX}{}",
                        keys.join(ENV_SEPARATOR).to_ascii_uppercase()
                    )
                }
                KeyStyle::RustLog => "RUST_LOG".to_owned(),
            })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }

    fn profile(&self) -> Option<Profile> {
        self.inner.profile()
    }
}

/// Accepts `["a", "b"]` or `"a,b"` (environment variables are easier to write the second way).
fn string_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrList {
        String(String),
        List(Vec<String>),
    }
    Ok(match StringOrList::deserialize(deserializer)? {
        StringOrList::List(list) => list,
        StringOrList::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Config {
    /// The layered figment: defaults < `file` < `RUST_LOG` < `MAGNETAR_*__*` < `flags`.
    ///
    /// A `file` that is given must exist: a typo in `--config` is an error, not silently the
    /// defaults.
    pub fn figment(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<Figment> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            std::fs::File::open(file)
                .with_context(|| format!("cannot read configuration file {}", file.display()))?;
            figment = figment.merge(KeyNames::dotted(Toml::file_exact(file)));
        }
        figment = figment
            .merge(KeyNames::rust_log(
                Env::raw().only(&["RUST_LOG"]).map(|_| "log.level".into()),
            ))
            .merge(KeyNames::env(
                Env::prefixed(ENV_PREFIX)
                    .filter(|key| key.as_str().contains(ENV_SEPARATOR))
                    .split(ENV_SEPARATOR),
            ));
        if let Some(data_dir) = &flags.data_dir {
            figment = figment.merge(Serialized::default("standalone.data_dir", data_dir));
        }
        if let Some(v) = &flags.standalone_bind_address {
            figment = figment.merge(Serialized::default("standalone.bind_address", v));
        }
        if let Some(v) = flags.standalone_broker_port {
            figment = figment.merge(Serialized::default("standalone.broker_port", v));
        }
        if let Some(v) = flags.standalone_admin_port {
            figment = figment.merge(Serialized::default("standalone.admin_port", v));
        }
        let b = &flags.bookie;
        if let Some(v) = &b.data_dir {
            figment = figment.merge(Serialized::default("bookie.data_dir", v));
        }
        if let Some(v) = &b.bind_address {
            figment = figment.merge(Serialized::default("bookie.bind_address", v));
        }
        if let Some(v) = b.port {
            figment = figment.merge(Serialized::default("bookie.port", v));
        }
        if let Some(v) = &b.advertised_address {
            figment = figment.merge(Serialized::default("bookie.advertised_address", v));
        }
        if let Some(v) = &b.zone {
            figment = figment.merge(Serialized::default("bookie.zone", v));
        }
        Ok(figment)
    }

    /// Loads, merges and validates the configuration. Values are kept as given, so that
    /// `--print-config` output loads back to the same configuration: paths derived from other
    /// keys are resolved where they are used ([`Config::embedded_path`]).
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<Config> {
        let figment = Config::figment(file, flags)?;
        let config: Config = figment.extract().map_err(|err| {
            // figment chains several errors; show every one of them, one per line.
            let all: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
            anyhow::anyhow!("invalid configuration: {}", all.join("\n"))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Path of the embedded metadata file, resolved against `standalone.data_dir`.
    pub fn embedded_path(&self) -> PathBuf {
        match &self.metadata.embedded_path {
            Some(path) => self.standalone.data_dir.join(path),
            None => self.standalone.data_dir.join(EMBEDDED_FILE_NAME),
        }
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        let m = &self.metadata;
        if m.backend == MetadataBackend::Etcd && m.etcd_endpoints.is_empty() {
            bail!(
                "invalid configuration: metadata.etcd_endpoints is empty but the backend is etcd"
            );
        }
        if !m.etcd_root.starts_with('/') {
            bail!(
                "invalid configuration: metadata.etcd_root must start with '/', got {:?}",
                m.etcd_root
            );
        }
        if m.session_ttl_ms == 0 {
            bail!("invalid configuration: metadata.session_ttl_ms must be at least 1");
        }
        if m.embedded_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            bail!(
                "invalid configuration: metadata.embedded_path is empty (leave it unset instead)"
            );
        }
        let s = &self.standalone;
        if s.data_dir.as_os_str().is_empty() {
            bail!("invalid configuration: standalone.data_dir is empty");
        }
        if s.bind_address.parse::<IpAddr>().is_err() {
            bail!(
                "invalid configuration: standalone.bind_address must be an IP address, got {:?}",
                s.bind_address
            );
        }
        if s.broker_port != 0 && s.broker_port == s.admin_port {
            bail!(
                "invalid configuration: standalone.broker_port and standalone.admin_port are both {}",
                s.broker_port
            );
        }
        self.bookie.validate()?;
        self.broker.validate()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            anyhow::anyhow!(
                "invalid configuration: log.level {:?} is not a tracing filter: {e}",
                self.log.level
            )
        })?;
        Ok(())
    }

    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("cannot render the configuration as TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::value::Value;

    const DOCS: &str = include_str!("../docs/CONFIGURATION.md");

    /// `section.key` paths of every leaf of `dict`, with the value (None for an unset option).
    fn leaves(prefix: &str, dict: &Dict, out: &mut Vec<(String, Option<toml::Value>)>) {
        for (key, value) in dict {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Dict(_, inner) => leaves(&path, inner, out),
                Value::Empty(..) => out.push((path, None)),
                other => {
                    let toml = toml::Value::try_from(other).unwrap();
                    out.push((path, Some(toml)));
                }
            }
        }
    }

    fn default_keys() -> Vec<(String, Option<toml::Value>)> {
        // figment's serializer keeps `None` options (TOML's drops them), so no key is missed.
        let data = Figment::from(Serialized::defaults(Config::default()))
            .data()
            .unwrap();
        let dict = data.get(&figment::Profile::Default).unwrap();
        let mut out = Vec::new();
        leaves("", dict, &mut out);
        out
    }

    fn env_name(path: &str) -> String {
        format!(
            "{ENV_PREFIX}{}",
            path.replace('.', ENV_SEPARATOR).to_uppercase()
        )
    }

    #[test]
    fn every_key_is_documented_with_its_default_and_env_var() {
        let keys = default_keys();
        assert!(keys.len() >= 10, "walked too few keys: {keys:?}");
        for (path, default) in keys {
            let marker = format!("| `{path}` |");
            let row = DOCS
                .lines()
                .find(|line| line.starts_with(&marker))
                .unwrap_or_else(|| {
                    panic!("docs/CONFIGURATION.md has no table row starting with {marker}")
                });
            let env = env_name(&path);
            assert!(
                row.contains(&format!("`{env}`")),
                "row of {path} lacks `{env}`: {row}"
            );
            if let Some(default) = default {
                let shown = format!("`{default}`");
                assert!(
                    row.contains(&shown),
                    "row of {path} lacks its default {shown}: {row}"
                );
            }
        }
    }

    #[test]
    fn every_documented_key_exists() {
        let keys: Vec<String> = default_keys().into_iter().map(|(k, _)| k).collect();
        for line in DOCS.lines().filter(|l| l.starts_with("| `")) {
            let path = line.trim_start_matches("| `").split('`').next().unwrap();
            assert!(
                keys.iter().any(|k| k == path),
                "docs document unknown key {path}"
            );
        }
    }

    #[test]
    fn defaults_are_valid_and_resolve_the_embedded_path() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(
            config.embedded_path(),
            PathBuf::from("./data/metadata.redb")
        );
    }

    #[test]
    fn relative_embedded_path_is_under_data_dir_and_absolute_stays() {
        let mut config = Config::default();
        config.standalone.data_dir = "/var/lib/magnetar".into();
        config.metadata.embedded_path = Some("meta/store.redb".into());
        assert_eq!(
            config.embedded_path(),
            PathBuf::from("/var/lib/magnetar/meta/store.redb")
        );
        config.metadata.embedded_path = Some("/elsewhere/m.redb".into());
        assert_eq!(config.embedded_path(), PathBuf::from("/elsewhere/m.redb"));
    }

    #[test]
    fn printed_config_parses_back_to_the_same_config() {
        let config = Config::default();
        let text = config.to_toml().unwrap();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn a_printed_config_loads_back_to_the_same_paths() {
        // `--print-config` once wrote the resolved metadata path, which loading resolved
        // against data_dir a second time (`./data/./data/metadata.redb`): a new, empty store.
        let dir = tempfile::tempdir().unwrap();
        for embedded_path in [None, Some("meta/m.redb")] {
            let first = dir.path().join("first.toml");
            let mut text = "[standalone]\ndata_dir = \"./rel-data\"\n".to_owned();
            if let Some(p) = embedded_path {
                text.push_str(&format!("[metadata]\nembedded_path = \"{p}\"\n"));
            }
            std::fs::write(&first, text).unwrap();
            let loaded = Config::load(Some(&first), &FlagOverrides::default()).unwrap();
            let printed = dir.path().join("printed.toml");
            std::fs::write(&printed, loaded.to_toml().unwrap()).unwrap();
            let again = Config::load(Some(&printed), &FlagOverrides::default()).unwrap();
            assert_eq!(again, loaded);
            assert_eq!(again.embedded_path(), loaded.embedded_path());
            let expected =
                PathBuf::from("./rel-data").join(embedded_path.unwrap_or("metadata.redb"));
            assert_eq!(again.embedded_path(), expected);
        }
    }

    #[test]
    fn unset_options_are_left_out_of_toml() {
        let text = Config::default().to_toml().unwrap();
        assert!(!text.contains("embedded_path"), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), Config::default());
    }

    #[test]
    fn bookie_defaults_are_the_storage_defaults_and_the_id_is_advertised() {
        let b = BookieConfig::default();
        let o = BookieOptions::new(BookieId("x:1".into()), "d");
        let from_config = b.options(BookieId("x:1".into()));
        assert_eq!(
            format!("{:?}", from_config),
            format!(
                "{:?}",
                BookieOptions {
                    data_dir: "./data/bookie".into(),
                    ..o
                }
            )
        );
        assert_eq!(b.advertised().unwrap().0, "127.0.0.1:3181");
        let with = |a: &str| BookieConfig {
            advertised_address: Some(a.into()),
            ..BookieConfig::default()
        };
        assert_eq!(
            with("bk-1.example").advertised().unwrap().0,
            "bk-1.example:3181"
        );
        assert_eq!(
            with("bk-1.example:4000").advertised().unwrap().0,
            "bk-1.example:4000"
        );
        assert_eq!(with("10.1.2.3").advertised().unwrap().0, "10.1.2.3:3181");
        assert_eq!(with("::1").advertised().unwrap().0, "[::1]:3181");
        assert_eq!(with("[::1]:5").advertised().unwrap().0, "[::1]:5");
        assert!(with("").advertised().is_err());
    }

    #[test]
    fn endpoints_accept_a_comma_separated_string() {
        let config: Config =
            toml::from_str("[metadata]\netcd_endpoints = \"http://a:2379, http://b:2379\"\n")
                .unwrap();
        assert_eq!(
            config.metadata.etcd_endpoints,
            ["http://a:2379", "http://b:2379"]
        );
    }

    #[test]
    fn validation_rejects_bad_values() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.standalone.bind_address = "localhost:1".into()).contains("bind_address"));
        assert!(bad(|c| c.metadata.session_ttl_ms = 0).contains("session_ttl_ms"));
        assert!(bad(|c| c.metadata.etcd_root = "magnetar".into()).contains("etcd_root"));
        assert!(bad(|c| c.standalone.admin_port = 6650).contains("admin_port"));
        assert!(bad(|c| c.log.level = "info,=[".into()).contains("log.level"));
        assert!(bad(|c| c.bookie.bind_address = "0.0.0.0".into()).contains("advertised_address"));
        assert!(bad(|c| c.bookie.bind_address = "bookie-1".into()).contains("bookie.bind_address"));
        assert!(bad(|c| c.bookie.disk_usage_lwm = 0.99).contains("disk_usage_lwm"));
        assert!(bad(|c| c.bookie.gc_live_ratio_min = 1.5).contains("gc_live_ratio_min"));
        assert!(bad(|c| c.bookie.entry_size_bytes_max = 0).contains("entry_size_bytes_max"));
        assert!(
            bad(|c| c.bookie.advertised_address = Some("a b".into()))
                .contains("advertised_address")
        );
        assert!(
            bad(|c| {
                c.metadata.backend = MetadataBackend::Etcd;
                c.metadata.etcd_endpoints.clear();
            })
            .contains("etcd_endpoints")
        );
    }
}
