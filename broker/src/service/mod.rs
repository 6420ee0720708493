//! [`BrokerService`]: the state one broker shares between its connections — configuration,
//! metadata store, policies, bundle ownership, the managed-ledger factory and the loaded topics.
//!
//! A topic is loaded (its managed ledger opened with recovery, which fences any previous owner)
//! only while this broker holds the lease of the topic's namespace bundle
//! ([`OwnershipCache`]); otherwise the request fails with [`BrokerError::NotOwner`]
//! (`ServiceNotReady`, which the official clients retry after a new lookup). Concurrent loads of
//! one topic share one `OnceCell`. When a bundle's lease is lost, the topics of that bundle are
//! closed and their clients disconnected.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use magnetar_metadata::MetadataStore;
use magnetar_metadata::clock::SharedClock;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::cluster::bundle::{Bundle, NamespaceBundles};
use crate::cluster::ownership::OwnershipCache;
use crate::error::{BrokerError, BrokerResult};
use crate::policies::{NamespacePolicies, Policies};

mod health;
mod load;
mod offload;
mod split;
mod takeover;
mod transfer;
use crate::topic::{Topic, TopicHost};
use crate::topic_name::{NamespaceName, TopicName};
pub use load::{LoadBalancerConfig, load_reports};
use magnetar_managed_ledger::record::{ROOT, ledger_record_key};
use magnetar_managed_ledger::{ManagedLedgerConfig, ManagedLedgerFactory};
pub use split::SplitAlgorithm;
pub use transfer::{Claimed, Unloaded};

/// Settings of the Pulsar protocol server.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `pulsar://host:port` clients are told to connect to (lookups answer it).
    pub service_url: String,
    /// Largest message a client may send (advertised in CONNECTED). Default 5 MiB.
    pub max_message_size: usize,
    /// A connection silent this long is pinged; silent twice as long, it is closed.
    pub keepalive_interval: Duration,
    /// Frames queued for one connection's writer before senders wait (backpressure).
    pub outbound_queue_frames: usize,
    /// Bytes of MESSAGE entries queued for one connection's writer (past it, plus the one
    /// entry that crossed it): a consumer is parked until the client reads (as Pulsar pauses dispatch while a channel is not
    /// writable), so a slow client holds at most this much of the broker's memory.
    pub outbound_queue_bytes_max: usize,
    /// Sends queued per producer awaiting their receipts before the connection waits.
    pub pending_sends_per_producer: usize,
    /// Bounds on what clients can make the broker hold.
    pub limits: ConnectionLimits,
    /// Managed-ledger settings; ensemble and quorums are overridden by namespace policies.
    pub managed_ledger: ManagedLedgerConfig,
    /// Topics are created on first use unless the namespace policy says otherwise.
    pub allow_auto_topic_creation: bool,
    /// Entries read per dispatch round of a subscription.
    pub dispatch_batch_entries: usize,
    /// Message deduplication settings (the switch itself is the namespace policy).
    pub dedup: crate::topic::dedup::DedupConfig,
    /// Pulsar's `schemaCompatibilityStrategy`: for namespaces without a strategy policy.
    pub schema_compatibility_strategy: crate::schema::CompatibilityStrategy,
    /// Pulsar's `brokerDeleteInactiveTopics*`: for namespaces without an
    /// `inactiveTopicPolicies` policy.
    pub inactive_topics: InactiveTopicsConfig,
    /// Pulsar's `enableBrokerSideSubscriptionPatternEvaluation`: GET_TOPICS_OF_NAMESPACE
    /// filters the list by the client's pattern. Default true.
    pub broker_side_pattern_evaluation: bool,
    /// Pulsar's `subscriptionPatternMaxLength`: longer patterns are left to the client.
    /// Default 50.
    pub subscription_pattern_length_max: usize,
    /// Pulsar's `exposeTopicLevelMetricsInPrometheus`: `/metrics` has per-topic and
    /// per-subscription series (true, the default) or per-namespace sums.
    pub expose_topic_level_metrics: bool,
    /// Load reports, assignment of bundles by load, shedding (`service/load.rs`).
    pub load_balancer: LoadBalancerConfig,
    /// Time of everything the broker times itself: keepalive, redelivery, delayed delivery,
    /// session renewal (tests pass a manual clock).
    pub clock: SharedClock,
}

impl BrokerConfig {
    /// Defaults for a broker reachable at `service_url`.
    pub fn new(service_url: impl Into<String>) -> Self {
        BrokerConfig {
            service_url: service_url.into(),
            max_message_size: magnetar_proto::pulsar::DEFAULT_MAX_MESSAGE_SIZE,
            keepalive_interval: Duration::from_secs(30),
            outbound_queue_frames: 1024,
            outbound_queue_bytes_max: 8 * 1024 * 1024,
            pending_sends_per_producer: 1000,
            limits: ConnectionLimits::default(),
            managed_ledger: ManagedLedgerConfig::default(),
            allow_auto_topic_creation: true,
            dispatch_batch_entries: 100,
            dedup: crate::topic::dedup::DedupConfig::default(),
            schema_compatibility_strategy: crate::schema::CompatibilityStrategy::Full,
            inactive_topics: InactiveTopicsConfig::default(),
            broker_side_pattern_evaluation: true,
            subscription_pattern_length_max: 50,
            expose_topic_level_metrics: true,
            load_balancer: LoadBalancerConfig::default(),
            clock: magnetar_metadata::clock::system(),
        }
    }
}

/// Deletion of inactive topics, as Pulsar's `brokerDeleteInactiveTopicsEnabled`,
/// `brokerDeleteInactiveTopicsFrequencySeconds`, `brokerDeleteInactiveTopicsMode` and
/// `brokerDeleteInactiveTopicsMaxInactiveDurationSeconds` (same defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InactiveTopicsConfig {
    pub enabled: bool,
    /// How often loaded topics are checked.
    pub frequency: Duration,
    pub mode: crate::policies::InactiveTopicDeleteMode,
    /// How long a topic must be inactive; `None`: `frequency`.
    pub max_inactive: Option<Duration>,
}

impl Default for InactiveTopicsConfig {
    fn default() -> Self {
        InactiveTopicsConfig {
            enabled: true,
            frequency: Duration::from_secs(60),
            mode: crate::policies::InactiveTopicDeleteMode::DeleteWhenNoSubscriptions,
            max_inactive: None,
        }
    }
}

impl InactiveTopicsConfig {
    /// The policy in force for a namespace with `policy` (its own, if set).
    pub fn effective(
        &self,
        policy: Option<crate::policies::InactiveTopicPolicies>,
    ) -> crate::policies::InactiveTopicPolicies {
        policy.unwrap_or(crate::policies::InactiveTopicPolicies {
            inactive_topic_delete_mode: self.mode,
            max_inactive_duration_seconds: i32::try_from(
                self.max_inactive.unwrap_or(self.frequency).as_secs(),
            )
            .unwrap_or(i32::MAX),
            delete_while_inactive: self.enabled,
        })
    }
}

/// Bounds on what clients can make the broker hold: connections, and per connection its
/// requests in progress and its unanswered SENDs. At a per-connection limit the broker stops
/// reading that connection's socket until work completes (backpressure: nothing accepted is
/// dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once (Pulsar's `brokerMaxConnections`); one more is closed as
    /// soon as it is accepted.
    pub max_connections: usize,
    /// Requests of one connection handled at once (LOOKUP, PRODUCER, SUBSCRIBE, …).
    pub max_concurrent_requests_per_connection: usize,
    /// Unanswered SENDs of one connection (Pulsar's `maxPendingPublishRequestsPerConnection`).
    pub max_pending_publish_requests_per_connection: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            max_concurrent_requests_per_connection: 1000,
            max_pending_publish_requests_per_connection: 1000,
        }
    }
}

/// Longest wait at shutdown for the broker's tasks to end.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

type TopicCell = Arc<OnceCell<Arc<Topic>>>;

/// The namespace and topic policies a topic's storage and load are configured by.
type StoragePolicies = (NamespacePolicies, Option<crate::policies::TopicPolicies>);

/// A topic's storage opened ahead of its load (a handover's target), with the policies it was
/// configured by: the load that follows uses them rather than reading them again.
pub(crate) struct OpenedStorage {
    policies: StoragePolicies,
    pub(crate) ml: Arc<magnetar_managed_ledger::ManagedLedger>,
}

/// One broker's shared state. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct BrokerService {
    config: BrokerConfig,
    store: Arc<dyn MetadataStore>,
    policies: Policies,
    ownership: Arc<OwnershipCache>,
    factory: Arc<ManagedLedgerFactory>,
    topics: Mutex<HashMap<String, TopicCell>>,
    shutdown: CancellationToken,
    /// Every task the broker runs for clients and for itself — connections, their requests,
    /// writers and receipt queues, background loops — so shutdown can wait for them to end.
    tasks: TaskTracker,
    next_id: std::sync::atomic::AtomicU64,
    /// Start time (ms) of this broker: makes generated names unique across restarts.
    boot_ms: u64,
    /// Lookups waiting out a dead owner's lease, one wait per bundle (`takeover.rs`).
    lease_waits: takeover::LeaseWaits,
    /// This broker's part in the leader election, once it registered.
    leadership: std::sync::OnceLock<Arc<crate::cluster::leader::Leadership>>,
    /// The admin URL it registered (load reports carry it).
    admin_url: std::sync::OnceLock<String>,
    /// Bundles being unloaded, with where they go (`transfer.rs`).
    releasing: transfer::Releasing,
    /// Policies read while preparing a handover's topics, for their load (by topic name).
    prepared_policies: Mutex<HashMap<String, StoragePolicies>>,
    /// Bundles unloaded and split by this broker since it started (the `pulsar_lb_*` metrics).
    bundles_unloaded: std::sync::atomic::AtomicU64,
    bundles_split: std::sync::atomic::AtomicU64,
    /// Set by a drain: the broker takes no more bundles.
    draining: std::sync::atomic::AtomicBool,
    /// Load samples, assignments made, shedding state (`load.rs`).
    load: load::LoadState,
    /// Monotonic time the service started (load-sample intervals).
    started: std::time::Instant,
}

impl BrokerService {
    /// A broker over `store`, owning bundles through `ownership`, storing topics with `factory`.
    pub fn new(
        config: BrokerConfig,
        store: Arc<dyn MetadataStore>,
        ownership: Arc<OwnershipCache>,
        factory: Arc<ManagedLedgerFactory>,
    ) -> Arc<Self> {
        let boot_ms = config.clock.now_ms();
        let config_clock_now = config.clock.now();
        let service = Arc::new(BrokerService {
            config,
            policies: Policies::new(Arc::clone(&store)),
            store,
            ownership,
            factory,
            topics: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
            boot_ms,
            lease_waits: takeover::LeaseWaits::default(),
            leadership: std::sync::OnceLock::new(),
            admin_url: std::sync::OnceLock::new(),
            releasing: transfer::Releasing::default(),
            prepared_policies: Mutex::default(),
            bundles_unloaded: std::sync::atomic::AtomicU64::new(0),
            bundles_split: std::sync::atomic::AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            load: load::LoadState::default(),
            started: config_clock_now,
        });
        service.watch_lost_bundles();
        service.watch_policies();
        service.watch_loadbalance();
        service.delete_inactive_topics_periodically();
        service
    }

    /// Every `inactive_topics.frequency`, deletes the loaded topics that have been inactive
    /// longer than their namespace's policy allows (Pulsar's `checkGC`).
    fn delete_inactive_topics_periodically(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        let every = self
            .config
            .inactive_topics
            .frequency
            .max(Duration::from_millis(100));
        let clock = Arc::clone(&self.config.clock);
        self.tasks.spawn(async move {
            let mut tick = magnetar_metadata::clock::Interval::new(clock, every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(service) = weak.upgrade() else {
                    return;
                };
                service.delete_inactive_topics().await;
            }
        });
    }

    /// One pass of inactive-topic deletion over the loaded topics.
    pub async fn delete_inactive_topics(&self) {
        let now_ms = self.config.clock.now_ms();
        let mut policies: HashMap<String, crate::policies::InactiveTopicPolicies> = HashMap::new();
        for topic in self.loaded() {
            let ns = topic.name().namespace();
            let key = ns.to_string();
            let policy = match policies.get(&key) {
                Some(p) => *p,
                None => {
                    let own = match self.policies.namespace(ns).await {
                        Ok(p) => p.and_then(|p| p.inactive_topic_policies),
                        Err(e) => {
                            warn!(namespace = %ns, error = %e, "inactive-topic check skipped");
                            continue;
                        }
                    };
                    let p = self.config.inactive_topics.effective(own);
                    policies.insert(key, p);
                    p
                }
            };
            if !policy.delete_while_inactive || topic.is_closed() {
                continue;
            }
            if topic.is_active(policy.inactive_topic_delete_mode).await {
                topic.touch();
                continue;
            }
            let max_ms = u64::try_from(policy.max_inactive_duration_seconds)
                .unwrap_or(0)
                .saturating_mul(1000);
            let idle_ms = now_ms.saturating_sub(topic.last_active_ms());
            if idle_ms < max_ms {
                continue;
            }
            // Checked again right before: a producer or consumer may have come meanwhile.
            if topic.is_active(policy.inactive_topic_delete_mode).await {
                topic.touch();
                continue;
            }
            match topic.delete().await {
                Ok(()) => info!(topic = %topic.name(), idle_ms, "inactive topic deleted"),
                Err(e) => {
                    warn!(topic = %topic.name(), error = %e, "deleting an inactive topic failed")
                }
            }
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The schema registry (over this broker's metadata store).
    pub fn schemas(&self) -> crate::schema::SchemaRegistry {
        crate::schema::SchemaRegistry::new(Arc::clone(&self.store))
            .with_default_strategy(self.config.schema_compatibility_strategy)
    }

    pub fn ownership(&self) -> &Arc<OwnershipCache> {
        &self.ownership
    }

    /// Cancelled when the broker shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// A process-unique id (producer names, subscription-local consumer ids).
    pub fn next_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A producer name no other producer of any broker incarnation has.
    pub fn unique_name(&self, key: u64) -> String {
        format!("magnetar-{:x}-{key}", self.boot_ms)
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, TopicCell>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn namespace_policies(&self, ns: &NamespaceName) -> BrokerResult<NamespacePolicies> {
        self.policies
            .namespace(ns)
            .await?
            .ok_or_else(|| BrokerError::NamespaceNotFound(ns.to_string()))
    }

    /// Whether message deduplication is on for `topic` (namespace policy, else the default).
    pub async fn dedup_enabled(&self, topic: &TopicName) -> BrokerResult<bool> {
        let policies = self.namespace_policies(topic.namespace()).await?;
        Ok(policies
            .deduplication_enabled
            .unwrap_or(self.config.dedup.enabled_by_default))
    }

    /// The namespace bundle `topic` belongs to.
    pub async fn bundle_of(&self, topic: &TopicName) -> BrokerResult<Bundle> {
        Ok(self.namespace_bundles(topic.namespace()).await?.find(topic))
    }

    /// The bundles of `ns` as its policies define them now.
    pub async fn namespace_bundles(&self, ns: &NamespaceName) -> BrokerResult<NamespaceBundles> {
        let policies = self.namespace_policies(ns).await?;
        Ok(NamespaceBundles::of(ns.clone(), &policies))
    }

    /// Who serves `topic`: this broker (taking the bundle's lease if it is free and this
    /// broker is the one to take it) or another broker's service URL (`claim`). An owner that
    /// refuses connections (it died; its lease lives until its session expires) is waited out
    /// instead of named (`takeover.rs`). `authoritative`: another broker sent the client here
    /// to take the bundle (the lookup's flag), so no other broker is chosen.
    pub async fn lookup(
        self: &Arc<Self>,
        topic: &TopicName,
        authoritative: bool,
    ) -> BrokerResult<Option<String>> {
        let bundle = self.bundle_of(topic).await?;
        let deadline_ms = self
            .config
            .clock
            .now_ms()
            .saturating_add(takeover::wait_max_ms(&self.ownership));
        loop {
            match self.claim(&bundle, authoritative).await? {
                Claimed::This => return Ok(None),
                Claimed::Other { url, lease: None } => return Ok(Some(url)),
                Claimed::Other {
                    url,
                    lease: Some(record),
                } => {
                    if self.config.clock.now_ms() >= deadline_ms
                        || !self.owner_refuses_connections(&url).await
                    {
                        return Ok(Some(url));
                    }
                    self.wait_for_lease_change(&bundle, record, deadline_ms)
                        .await;
                    // The wait may end on a view the next acquire does not share yet.
                    self.config.clock.sleep(takeover::LEASE_POLL).await;
                }
            }
        }
    }

    /// The admin URL of the broker whose bundle leases name it `owner` (its service URL), if
    /// that broker registered one.
    pub async fn admin_url_of(&self, owner: &str) -> BrokerResult<Option<String>> {
        Ok(crate::cluster::registry::lookup(&self.store, owner)
            .await?
            .map(|r| r.web_service_url))
    }

    /// Announces this broker (its service URL and `admin_url`) under its metadata session, so
    /// other brokers can redirect admin requests for topics it owns; announces it again under
    /// each new session after a loss, until the broker shuts down.
    pub async fn register(
        self: &Arc<Self>,
        session: &Arc<crate::cluster::session::BrokerSession>,
        admin_url: &str,
    ) -> BrokerResult<()> {
        let record = crate::cluster::registry::BrokerRecord {
            pulsar_service_url: self.config.service_url.clone(),
            web_service_url: admin_url.to_owned(),
        };
        let mut renewals = session.renewals();
        crate::cluster::registry::register(&self.store, &session.current(), &record).await?;
        let _ = self.admin_url.set(admin_url.to_owned());
        // The first report goes out now, so assignment sees this broker at once.
        self.report_load(&session.current()).await;
        self.report_load_periodically(Arc::clone(session));
        // Registered brokers campaign for leadership (the key names the leader's URLs).
        let _ = self.leadership.set(crate::cluster::leader::campaign(
            Arc::clone(&self.store),
            Arc::clone(session),
            record.clone(),
            Arc::clone(&self.config.clock),
            self.shutdown.clone(),
        ));
        let (store, session, stop, clock) = (
            Arc::clone(&self.store),
            Arc::clone(session),
            self.shutdown.clone(),
            Arc::clone(&self.config.clock),
        );
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    changed = renewals.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
                // A fresh session: the store is reachable again; retry briefly if not.
                for attempt in 1..=10u32 {
                    match crate::cluster::registry::register(&store, &session.current(), &record)
                        .await
                    {
                        Ok(()) => break,
                        Err(e) => {
                            warn!(error = %e, attempt, "registering the broker again failed");
                            clock
                                .sleep(Duration::from_millis(200 * u64::from(attempt)))
                                .await;
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Partitions of `topic` (0: not partitioned). With auto-creation of partitioned topics
    /// in the namespace policy, an unknown topic is created partitioned.
    pub async fn partitions(&self, topic: &TopicName) -> BrokerResult<u32> {
        if topic.partition().is_some() {
            return Ok(0);
        }
        if let Some(n) = self.policies.partitions(topic).await? {
            return Ok(n);
        }
        let policies = self.namespace_policies(topic.namespace()).await?;
        if let Some(auto) = &policies.auto_topic_creation_override
            && auto.allow_auto_topic_creation
            && auto.topic_type == "partitioned"
            && !self.exists(topic).await?
        {
            let n = auto.default_num_partitions.unwrap_or(1).max(1);
            match self.policies.create_partitioned(topic, n).await {
                Ok(()) | Err(crate::policies::PolicyError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(self.policies.partitions(topic).await?.unwrap_or(n));
        }
        Ok(0)
    }

    /// Whether the topic's managed ledger exists (created by a producer, consumer or admin).
    pub async fn topic_exists(&self, topic: &TopicName) -> BrokerResult<bool> {
        self.exists(topic).await
    }

    async fn exists(&self, topic: &TopicName) -> BrokerResult<bool> {
        Ok(self
            .store
            .get(&ledger_record_key(&topic.persistence_name()))
            .await?
            .is_some())
    }

    /// Creates the (empty) managed-ledger records of partitions `0..count` of `topic` that do
    /// not exist yet, as Pulsar creates a partitioned topic's partitions with it: they are
    /// listed at once and exist for consumers. No ledger is created until a partition loads.
    pub async fn create_partition_records(
        &self,
        topic: &TopicName,
        count: u32,
    ) -> BrokerResult<()> {
        let records: magnetar_metadata::RecordStore<magnetar_managed_ledger::ManagedLedgerRecord> =
            magnetar_metadata::RecordStore::new(Arc::clone(&self.store));
        for i in 0..count {
            let partition = topic.partition_name(i);
            let record = magnetar_managed_ledger::ManagedLedgerRecord {
                created_ms: self.config.clock.now_ms(),
                ..Default::default()
            };
            // An existing record (the partition was used already) is left as it is.
            let _ = records
                .put(
                    &ledger_record_key(&partition.persistence_name()),
                    &record,
                    magnetar_metadata::Expected::Absent,
                )
                .await?;
        }
        Ok(())
    }

    /// The persistent topics of `ns` (each partition listed as its own topic, as Pulsar does).
    pub async fn topics_of_namespace(&self, ns: &NamespaceName) -> BrokerResult<Vec<String>> {
        let prefix = format!("{ROOT}/{ns}/persistent/");
        // Keys only: the cursor records and ledger-list chunks under each topic stay unread.
        let keys = self.store.list_keys(&prefix).await?;
        let mut topics: Vec<String> = keys
            .iter()
            .filter_map(|key| key.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(|local| format!("persistent://{ns}/{local}"))
            .collect();
        topics.sort();
        topics.dedup();
        Ok(topics)
    }

    /// The managed-ledger factory topics are stored with.
    /// Bundles this broker unloaded and split since it started.
    pub fn bundle_operations(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.bundles_unloaded.load(Relaxed),
            self.bundles_split.load(Relaxed),
        )
    }

    /// The loaded topics (for the metrics).
    pub fn loaded_topics(&self) -> Vec<Arc<Topic>> {
        self.loaded()
    }

    pub fn managed_ledgers(&self) -> &Arc<ManagedLedgerFactory> {
        &self.factory
    }

    /// The loaded topic, if any (no ownership check, no load).
    pub fn loaded_topic(&self, topic: &TopicName) -> Option<Arc<Topic>> {
        self.topics()
            .get(&topic.to_string())
            .and_then(|c| c.get().cloned())
    }

    /// The topic, loaded if needed. Fails with `NotOwner` unless this broker holds (or can take)
    /// the lease of its bundle; with `TopicNotFound` if it does not exist and may not be created.
    pub async fn get_topic(self: &Arc<Self>, topic: &TopicName) -> BrokerResult<Arc<Topic>> {
        self.get_or_create_topic(topic, false, None).await
    }

    /// The topic, loaded if needed and created even where auto-creation is off (admin
    /// `topics create`).
    pub async fn create_topic(self: &Arc<Self>, topic: &TopicName) -> BrokerResult<Arc<Topic>> {
        self.get_or_create_topic(topic, true, None).await
    }

    /// The topic, loaded on storage a handover opened already (`open_storage`): its load does
    /// not read the policies a second time.
    pub(crate) async fn get_opened_topic(
        self: &Arc<Self>,
        topic: &TopicName,
        opened: OpenedStorage,
    ) -> BrokerResult<Arc<Topic>> {
        self.get_or_create_topic(topic, false, Some(opened.policies))
            .await
    }

    async fn get_or_create_topic(
        self: &Arc<Self>,
        topic: &TopicName,
        create: bool,
        policies: Option<StoragePolicies>,
    ) -> BrokerResult<Arc<Topic>> {
        if self.shutdown.is_cancelled() {
            return Err(BrokerError::NotReady("the broker is shutting down".into()));
        }
        if let Some(t) = self.loaded_topic(topic).filter(|t| t.is_usable()) {
            return Ok(t);
        }
        let bundle = self.bundle_of(topic).await?;
        if self.claim(&bundle, true).await? != Claimed::This {
            return Err(BrokerError::NotOwner(topic.to_string()));
        }
        let key = topic.to_string();
        let cell = {
            let mut topics = self.topics();
            let cell = topics.entry(key.clone()).or_default();
            if cell.get().is_some_and(|t| !t.is_usable()) {
                *cell = Arc::default();
            }
            Arc::clone(cell)
        };
        let this = Arc::clone(self);
        let loaded = cell
            .get_or_try_init(|| {
                this.load_topic(topic.clone(), bundle, create, policies)
                    .instrument(info_span!("topic_load", topic = %topic))
            })
            .await;
        match loaded {
            Ok(t) => Ok(Arc::clone(t)),
            Err(e) => {
                let mut topics = self.topics();
                if topics.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                    topics.remove(&key);
                }
                Err(e)
            }
        }
    }

    async fn load_topic(
        self: Arc<Self>,
        topic: TopicName,
        bundle: Bundle,
        create: bool,
        read: Option<StoragePolicies>,
    ) -> BrokerResult<Arc<Topic>> {
        let (policies, topic_policies) = match read {
            Some(read) => read,
            None => self.storage_policies(&topic).await?,
        };
        let allowed = policies
            .auto_topic_creation_override
            .as_ref()
            .map_or(self.config.allow_auto_topic_creation, |a| {
                a.allow_auto_topic_creation
            });
        // Whether it exists matters only where it could not be created.
        if !create && !allowed && !self.exists(&topic).await? {
            let partitioned_parent =
                topic.partition().is_some() && self.policies.partitions(&topic).await?.is_some();
            if !partitioned_parent {
                return Err(BrokerError::TopicNotFound(topic.to_string()));
            }
        }
        let config = self.ml_config(&topic, &policies, topic_policies.as_ref());
        let ml = self.factory.open(&topic.persistence_name(), config).await?;
        // Deduplication state is recovered before any producer can publish.
        let dedup =
            crate::topic::dedup::Dedup::new(self.config.dedup.clone(), Arc::clone(ml.clock()));
        let dedup_on = policies
            .deduplication_enabled
            .unwrap_or(self.config.dedup.enabled_by_default);
        dedup.apply_policy(dedup_on, &ml).await?;
        info!(topic = %topic, %bundle, "topic loaded");
        let host: Arc<dyn TopicHost> = Arc::clone(&self) as Arc<dyn TopicHost>;
        Ok(Topic::new(topic, bundle, ml, dedup, Arc::downgrade(&host)))
    }

    /// The namespace and topic policies a topic's storage is configured by, read at once.
    async fn storage_policies(&self, topic: &TopicName) -> BrokerResult<StoragePolicies> {
        futures::try_join!(self.namespace_policies(topic.namespace()), async {
            Ok(self.policies.topic_policies(topic).await?)
        })
    }

    /// The managed-ledger configuration of `topic` under its namespace and topic policies.
    fn ml_config(
        &self,
        topic: &TopicName,
        policies: &NamespacePolicies,
        topic_policies: Option<&crate::policies::TopicPolicies>,
    ) -> magnetar_managed_ledger::ManagedLedgerConfig {
        let mut config = self.config.managed_ledger.clone();
        // A failed write fences publishing until producers resend (topic.rs).
        config.suspend_appends_after_failure = true;
        if let Some(p) = policies.persistence {
            config.ensemble_size = p.bookkeeper_ensemble;
            config.write_quorum = p.bookkeeper_write_quorum;
            config.ack_quorum = p.bookkeeper_ack_quorum;
        }
        if let Some(r) = policies.retention_policies {
            config.retention_time_ms = if r.retention_time_in_minutes < 0 {
                -1
            } else {
                r.retention_time_in_minutes.saturating_mul(60_000)
            };
            config.retention_size_bytes = if r.retention_size_in_mb < 0 {
                -1
            } else {
                r.retention_size_in_mb.saturating_mul(1024 * 1024)
            };
        }
        let offload = self.resolve_offload(topic, topic_policies, policies);
        config.offload_threshold_bytes = offload.threshold_bytes;
        config.offload_threshold_ms = offload.threshold_ms;
        config.offload_deletion_lag_ms = offload.deletion_lag_ms;
        config.offload_driver = offload.driver;
        config
    }

    /// Opens the managed ledger of `topic` as its load would, without the topic: a broker
    /// taking over a handed-over bundle opens its topics' storage while it takes the lease
    /// (the source closed it all before handing over); the load then finds it open.
    pub(crate) async fn open_storage(&self, topic: &TopicName) -> BrokerResult<OpenedStorage> {
        let prepared = self
            .prepared_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&topic.to_string());
        let (policies, topic_policies) = match prepared {
            Some(read) => read,
            None => self.storage_policies(topic).await?,
        };
        let config = self.ml_config(topic, &policies, topic_policies.as_ref());
        let ml = self.factory.open(&topic.persistence_name(), config).await?;
        Ok(OpenedStorage {
            policies: (policies, topic_policies),
            ml,
        })
    }

    /// Forgets a topic that closed itself (it is loaded again on next use).
    pub(crate) fn forget_topic(&self, topic: &Topic) {
        let mut topics = self.topics();
        let key = topic.name().to_string();
        if topics
            .get(&key)
            .and_then(|c| c.get())
            .is_some_and(|t| std::ptr::eq(Arc::as_ptr(t), topic))
        {
            topics.remove(&key);
        }
    }

    fn loaded(&self) -> Vec<Arc<Topic>> {
        self.topics()
            .values()
            .filter_map(|c| c.get().cloned())
            .collect()
    }

    fn watch_lost_bundles(self: &Arc<Self>) {
        let mut lost = self.ownership.lost_bundles();
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        self.tasks.spawn(async move {
            loop {
                let bundle = tokio::select! {
                    _ = stop.cancelled() => return,
                    b = lost.recv() => b,
                };
                let Some(service) = weak.upgrade() else {
                    return;
                };
                let bundle = match bundle {
                    Ok(b) => Some(b),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                // Every topic of the lost bundle stops serving now, without waiting on
                // anything: another broker may own them already, and closing their storage
                // can wait on the very metadata store that is unreachable. The slow half of
                // each close then runs in a task of its own.
                let gone: Vec<Arc<Topic>> = service
                    .loaded()
                    .into_iter()
                    .filter(|topic| match &bundle {
                        Some(b) => topic.bundle() == *b,
                        None => !service.ownership.is_owned(&topic.bundle()),
                    })
                    .filter(|topic| topic.stop_serving())
                    .collect();
                if !gone.is_empty() {
                    warn!(
                        bundle = bundle.as_ref().map(|b| b.to_string()),
                        topics = gone.len(),
                        "bundle lease lost: its topics stopped serving"
                    );
                }
                for topic in gone {
                    service.forget_topic(&topic);
                    service
                        .tasks
                        .spawn(async move { topic.finish_close().await });
                }
            }
        });
    }

    /// Stops accepting work and closes every topic (disconnecting clients, flushing cursors,
    /// closing the current ledgers). Bundle leases end with the caller's metadata session.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        // Concurrently: one topic's slow close (a bookie or the store timing out) must not
        // hold back the others'.
        let topics = self.loaded();
        futures::future::join_all(topics.iter().map(|t| t.close())).await;
        self.topics().clear();
        // Connections saw the cancellation and close; their requests and receipt queues end
        // with them. Wait for all of it, within a bound (a stuck task is reported, not waited
        // for forever).
        self.tasks.close();
        let drained = magnetar_metadata::clock::timeout(
            &*self.config.clock,
            SHUTDOWN_DRAIN_MAX,
            self.tasks.wait(),
        )
        .await;
        if drained.is_err() {
            warn!(
                running = self.tasks.len(),
                "broker tasks still running after the shutdown drain"
            );
        }
    }

    /// Runs `task` as one of the broker's tasks (waited for by [`BrokerService::shutdown`]).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// The broker's task tracker (connections hand it to their sending side).
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Tasks running now: connections, their requests and queues, background loops.
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }
}

#[async_trait::async_trait]
impl TopicHost for BrokerService {
    async fn dedup_enabled(&self, topic: &TopicName) -> BrokerResult<bool> {
        BrokerService::dedup_enabled(self, topic).await
    }

    fn forget_topic(&self, topic: &Topic) {
        BrokerService::forget_topic(self, topic);
    }

    fn dispatch_batch_entries(&self) -> usize {
        self.config.dispatch_batch_entries
    }
}
