//! The topic operations of the admin API, as a trait the broker service implements, and the
//! Pulsar-shaped answers (`TopicStats`, `PersistentTopicInternalStats`, …) it returns.
//!
//! The admin router keeps tenants, namespaces and partitioned-topic metadata itself (through
//! [`Policies`](crate::policies::Policies)); everything that needs a loaded topic — its ledgers,
//! cursors, producers and consumers — goes through [`TopicAdmin`]. Until the broker service
//! implements it, [`NoTopics`] answers 503 "topic service not running".

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::topic_name::{NamespaceName, TopicName};

/// Why a topic operation failed; each maps to the HTTP code Pulsar answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicAdminError {
    /// 404: the topic or subscription does not exist ("Topic not found",
    /// "Subscription not found").
    #[error("{0}")]
    NotFound(String),
    /// 409: it exists already ("This topic already exists", "Subscription already exists for
    /// topic").
    #[error("{0}")]
    AlreadyExists(String),
    /// 412: the state forbids it (e.g. deleting a topic with connected producers or a
    /// subscription with connected consumers without `force`).
    #[error("{0}")]
    Precondition(String),
    /// 400: the request is malformed in a way only the service can tell.
    #[error("{0}")]
    Invalid(String),
    /// 307 to the broker that owns the topic's bundle: its admin base URL (`http://host:port`);
    /// the router appends the request's path and query to make the `Location`.
    #[error("redirect to {0}")]
    Redirect(String),
    /// 503: not served here now (bundle not owned, loading, shutting down). Retryable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: anything else.
    #[error("{0}")]
    Internal(String),
}

/// Pulsar's `LookupData`: the answer of `GET /lookup/v2/topic/{domain}/{t}/{ns}/{topic}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupData {
    pub broker_url: String,
    pub broker_url_tls: String,
    pub http_url: String,
    pub http_url_tls: String,
    pub native_url: String,
}

/// Where a new subscription starts, or where a cursor is reset to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// After the last message (Pulsar's `MessageId.latest`).
    Latest,
    /// At the first retained message (Pulsar's `MessageId.earliest`).
    Earliest,
    /// At this message id.
    At { ledger_id: u64, entry_id: u64 },
}

/// The target of a cursor reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The first message published at or after this time (ms since the epoch).
    Timestamp(u64),
    /// A message id; `excluded` starts right after it. `batch_index` is the message inside a
    /// batch entry, when the client named one.
    MessageId {
        ledger_id: u64,
        entry_id: u64,
        batch_index: Option<i32>,
        excluded: bool,
    },
}

/// Pulsar's `OffloadProcessStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OffloadProcessStatus {
    /// `NOT_RUN`, `RUNNING`, `SUCCESS` or `ERROR`.
    pub status: String,
    pub last_error: String,
    pub first_unoffloaded_message: MessageIdJson,
}

/// Pulsar's `MessageIdImpl` as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageIdJson {
    pub ledger_id: i64,
    pub entry_id: i64,
    pub partition_index: i32,
}

impl MessageIdJson {
    pub const EARLIEST: MessageIdJson = MessageIdJson {
        ledger_id: -1,
        entry_id: -1,
        partition_index: -1,
    };
}

/// One message read by peek: the ledger entry's payload and its metadata, which the REST layer
/// turns into Pulsar's `X-Pulsar-*` response headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeekedMessage {
    pub ledger_id: u64,
    pub entry_id: u64,
    /// The payload after the message metadata (a whole batch for a batch entry, as Pulsar
    /// returns it; the client splits it with `num_batch_messages`).
    pub payload: Bytes,
    pub publish_time_ms: Option<u64>,
    pub event_time_ms: Option<u64>,
    pub producer_name: Option<String>,
    pub sequence_id: Option<u64>,
    pub partition_key: Option<String>,
    pub properties: BTreeMap<String, String>,
    /// `Some(n)` for a batch entry of n messages.
    pub num_batch_messages: Option<u32>,
    /// Set when the payload is compressed (`LZ4`, `ZLIB`, `ZSTD`, `SNAPPY`).
    pub compression: Option<String>,
    pub uncompressed_size: Option<u64>,
}

/// The topic operations the broker service provides to the admin API. Names are validated
/// before a call; the namespace of `topic` is known to exist.
#[async_trait]
pub trait TopicAdmin: Send + Sync + fmt::Debug {
    /// False only for a stand-in without a broker service ([`NoTopics`]): the router then skips
    /// the topic checks of namespace and partitioned-topic deletion instead of failing them.
    fn is_running(&self) -> bool {
        true
    }
    /// Serving clients now (Pulsar's `/status.html`): false while the broker drains or shuts
    /// down, so a readiness probe stops sending new clients.
    fn is_serving(&self) -> bool {
        self.is_running()
    }
    /// Writes a message through this broker and reads it back (Pulsar's `brokers/health`).
    async fn health_check(&self) -> Result<(), TopicAdminError> {
        not_running()
    }
    /// Every persistent topic of the namespace as full names (`persistent://t/ns/x`),
    /// partitions included (`…-partition-0`), whether loaded on this broker or not.
    async fn list_topics(&self, namespace: &NamespaceName) -> Result<Vec<String>, TopicAdminError>;
    /// Creates partitions `0..count` of the partitioned topic `topic` that do not exist yet (the
    /// partitioned metadata is written by the router). Without a broker service: nothing.
    async fn create_partitions(
        &self,
        _topic: &TopicName,
        _count: u32,
    ) -> Result<(), TopicAdminError> {
        Ok(())
    }
    /// Creates a non-partitioned topic (or one partition); `AlreadyExists` if it exists.
    async fn create_topic(
        &self,
        topic: &TopicName,
        properties: BTreeMap<String, String>,
    ) -> Result<(), TopicAdminError>;
    /// Deletes a topic with its ledgers and cursors. Without `force`, `Precondition` while
    /// producers or consumers are connected.
    async fn delete_topic(&self, topic: &TopicName, force: bool) -> Result<(), TopicAdminError>;
    async fn stats(&self, topic: &TopicName) -> Result<TopicStats, TopicAdminError>;
    async fn internal_stats(
        &self,
        topic: &TopicName,
    ) -> Result<PersistentTopicInternalStats, TopicAdminError>;
    /// The names of the topic's subscriptions.
    async fn subscriptions(&self, topic: &TopicName) -> Result<Vec<String>, TopicAdminError>;
    /// Creates a durable subscription; `AlreadyExists` if it exists.
    async fn create_subscription(
        &self,
        topic: &TopicName,
        subscription: &str,
        start: StartPosition,
    ) -> Result<(), TopicAdminError>;
    /// Deletes a subscription. Without `force`, `Precondition` while consumers are connected.
    async fn delete_subscription(
        &self,
        topic: &TopicName,
        subscription: &str,
        force: bool,
    ) -> Result<(), TopicAdminError>;
    /// Moves the cursor; connected consumers are disconnected so they resume from there.
    async fn reset_cursor(
        &self,
        topic: &TopicName,
        subscription: &str,
        target: ResetTarget,
    ) -> Result<(), TopicAdminError>;
    /// Acknowledges the next `messages` messages of the backlog.
    async fn skip(
        &self,
        topic: &TopicName,
        subscription: &str,
        messages: u64,
    ) -> Result<(), TopicAdminError>;
    /// Acknowledges the whole backlog (clear-backlog).
    async fn skip_all(&self, topic: &TopicName, subscription: &str) -> Result<(), TopicAdminError>;
    /// The `position`-th (1-based) unacknowledged message of the subscription, without
    /// consuming it.
    async fn peek(
        &self,
        topic: &TopicName,
        subscription: &str,
        position: u64,
    ) -> Result<PeekedMessage, TopicAdminError>;
    /// Closes the topic where it is served (Pulsar's `PUT .../unload`): its ledger is sealed,
    /// its clients are told to reconnect, and it loads again on their next request, on the
    /// same broker (the bundle stays owned). Nothing to do for a topic not loaded.
    async fn unload(&self, _topic: &TopicName) -> Result<(), TopicAdminError> {
        not_running()
    }
    /// Starts offloading the topic's closed ledgers before `ledger` (Pulsar's
    /// `PUT .../offload`); 409 while a run is in progress.
    async fn offload(&self, _topic: &TopicName, _ledger: u64) -> Result<(), TopicAdminError> {
        not_running()
    }
    /// The last offload run (Pulsar's `GET .../offload`).
    async fn offload_status(
        &self,
        _topic: &TopicName,
    ) -> Result<OffloadProcessStatus, TopicAdminError> {
        not_running()
    }
    /// Whether the topic's managed ledger exists.
    async fn exists(&self, _topic: &TopicName) -> Result<bool, TopicAdminError> {
        not_running()
    }
    /// The offload settings in force for the topic: its policy's, its namespace's, the
    /// broker's (Pulsar's `GET .../offloadPolicies?applied=true`).
    async fn applied_offload_policies(
        &self,
        _topic: &TopicName,
    ) -> Result<crate::policies::OffloadPolicies, TopicAdminError> {
        not_running()
    }

    /// Unloads a bundle wherever it is served (to `destination`, a broker id or URL, if
    /// given); a bundle of `namespace` named by its range (`0x…_0x…`).
    async fn unload_bundle(
        &self,
        _namespace: &NamespaceName,
        _range: &str,
        _destination: Option<&str>,
    ) -> Result<(), TopicAdminError> {
        not_running()
    }

    /// Splits a bundle of `namespace` (named by its range) wherever it is served; returns the
    /// children's ranges (empty when its owner, another broker, did it).
    async fn split_bundle(
        &self,
        _namespace: &NamespaceName,
        _range: &str,
        _algorithm: &str,
        _positions: Vec<u32>,
        _unload: bool,
    ) -> Result<Vec<String>, TopicAdminError> {
        not_running()
    }

    /// Unloads every bundle of `namespace`.
    async fn unload_namespace(&self, _namespace: &NamespaceName) -> Result<(), TopicAdminError> {
        not_running()
    }

    /// This broker's load report (Pulsar's `LocalBrokerData`).
    async fn load_report(&self) -> Result<serde_json::Value, TopicAdminError> {
        not_running()
    }

    /// The range of the bundle `topic` belongs to (`0x…_0x…`).
    async fn bundle_range(&self, _topic: &TopicName) -> Result<String, TopicAdminError> {
        not_running()
    }

    /// Who serves `topic` (`/lookup/v2/topic/...`): its broker's service and admin URLs.
    async fn lookup(&self, _topic: &TopicName) -> Result<LookupData, TopicAdminError> {
        not_running()
    }
}

/// The [`TopicAdmin`] of a router without a broker service: every call answers 503.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTopics;

/// The reason [`NoTopics`] gives.
pub const NO_TOPIC_SERVICE: &str = "topic service not running";

fn not_running<T>() -> Result<T, TopicAdminError> {
    Err(TopicAdminError::Unavailable(NO_TOPIC_SERVICE.to_owned()))
}

#[async_trait]
impl TopicAdmin for NoTopics {
    fn is_running(&self) -> bool {
        false
    }
    async fn list_topics(&self, _: &NamespaceName) -> Result<Vec<String>, TopicAdminError> {
        not_running()
    }
    async fn create_topic(
        &self,
        _: &TopicName,
        _: BTreeMap<String, String>,
    ) -> Result<(), TopicAdminError> {
        not_running()
    }
    async fn delete_topic(&self, _: &TopicName, _: bool) -> Result<(), TopicAdminError> {
        not_running()
    }
    async fn stats(&self, _: &TopicName) -> Result<TopicStats, TopicAdminError> {
        not_running()
    }
    async fn internal_stats(
        &self,
        _: &TopicName,
    ) -> Result<PersistentTopicInternalStats, TopicAdminError> {
        not_running()
    }
    async fn subscriptions(&self, _: &TopicName) -> Result<Vec<String>, TopicAdminError> {
        not_running()
    }
    async fn create_subscription(
        &self,
        _: &TopicName,
        _: &str,
        _: StartPosition,
    ) -> Result<(), TopicAdminError> {
        not_running()
    }
    async fn delete_subscription(
        &self,
        _: &TopicName,
        _: &str,
        _: bool,
    ) -> Result<(), TopicAdminError> {
        not_running()
    }
    async fn reset_cursor(
        &self,
        _: &TopicName,
        _: &str,
        _: ResetTarget,
    ) -> Result<(), TopicAdminError> {
        not_running()
    }
    async fn skip(&self, _: &TopicName, _: &str, _: u64) -> Result<(), TopicAdminError> {
        not_running()
    }
    async fn skip_all(&self, _: &TopicName, _: &str) -> Result<(), TopicAdminError> {
        not_running()
    }
    async fn peek(&self, _: &TopicName, _: &str, _: u64) -> Result<PeekedMessage, TopicAdminError> {
        not_running()
    }
}

/// Pulsar's `TopicStats` (`pulsar-admin topics stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicStats {
    pub msg_rate_in: f64,
    pub msg_throughput_in: f64,
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub bytes_in_counter: u64,
    pub msg_in_counter: u64,
    pub bytes_out_counter: u64,
    pub msg_out_counter: u64,
    pub average_msg_size: f64,
    pub msg_chunk_published: bool,
    pub storage_size: u64,
    pub backlog_size: u64,
    pub earliest_msg_publish_time_in_backlogs: u64,
    pub offloaded_storage_size: u64,
    pub publishers: Vec<PublisherStats>,
    pub waiting_publishers: u32,
    pub subscriptions: BTreeMap<String, SubscriptionStats>,
    pub replication: BTreeMap<String, serde_json::Value>,
    pub deduplication_status: String,
    pub non_contiguous_deleted_messages_ranges: u64,
    pub non_contiguous_deleted_messages_ranges_serialized_size: u64,
}

/// Pulsar's `PublisherStats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PublisherStats {
    /// `Shared`, `Exclusive` or `WaitForExclusive`.
    pub access_mode: String,
    pub msg_rate_in: f64,
    pub msg_throughput_in: f64,
    pub average_msg_size: f64,
    pub chunked_message_rate: f64,
    pub producer_id: u64,
    pub producer_name: String,
    pub address: String,
    /// When the producer connected, ISO-8601.
    pub connected_since: String,
    pub client_version: String,
    pub metadata: BTreeMap<String, String>,
}

/// Pulsar's `SubscriptionStats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionStats {
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub bytes_out_counter: u64,
    pub msg_out_counter: u64,
    pub msg_rate_redeliver: f64,
    pub msg_backlog: u64,
    pub backlog_size: u64,
    pub msg_backlog_no_delayed: u64,
    pub blocked_subscription_on_unacked_msgs: bool,
    pub msg_delayed: u64,
    pub unacked_messages: u64,
    /// `Exclusive`, `Shared`, `Failover` or `Key_Shared`.
    #[serde(rename = "type")]
    pub subscription_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_consumer_name: Option<String>,
    pub msg_rate_expired: f64,
    pub last_expire_timestamp: u64,
    pub last_consumed_flow_timestamp: u64,
    pub last_consumed_timestamp: u64,
    pub last_acked_timestamp: u64,
    pub consumers: Vec<ConsumerStats>,
    pub is_durable: bool,
    pub is_replicated: bool,
    pub non_contiguous_deleted_messages_ranges: u64,
}

/// Pulsar's `ConsumerStats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerStats {
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub bytes_out_counter: u64,
    pub msg_out_counter: u64,
    pub msg_rate_redeliver: f64,
    pub consumer_name: String,
    pub available_permits: i64,
    pub unacked_messages: u64,
    pub blocked_consumer_on_unacked_msgs: bool,
    pub last_acked_timestamp: u64,
    pub last_consumed_timestamp: u64,
    pub address: String,
    pub connected_since: String,
    pub client_version: String,
    pub metadata: BTreeMap<String, String>,
}

/// Pulsar's `PersistentTopicInternalStats` (`pulsar-admin topics stats-internal`): the managed
/// ledger and its cursors. Positions are written `ledgerId:entryId`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PersistentTopicInternalStats {
    pub entries_added_counter: u64,
    pub number_of_entries: u64,
    pub total_size: u64,
    pub current_ledger_entries: u64,
    pub current_ledger_size: u64,
    pub last_ledger_created_timestamp: String,
    pub waiting_cursors_count: u32,
    pub pending_add_entries_count: u32,
    pub last_confirmed_entry: String,
    /// `LedgerOpened`, `ClosedLedger`, `Fenced`, …
    pub state: String,
    pub ledgers: Vec<LedgerInfo>,
    pub cursors: BTreeMap<String, CursorStats>,
}

/// One ledger of a managed ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LedgerInfo {
    pub ledger_id: u64,
    pub entries: u64,
    pub size: u64,
    pub offloaded: bool,
    /// Where an offloaded ledger is (`s3://bucket/prefix`); not in Pulsar's shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offloaded_to: Option<String>,
    /// The bookies no longer hold the offloaded ledger; not in Pulsar's shape.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bookie_copy_deleted: bool,
    pub under_replicated: bool,
}

/// One cursor of a managed ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CursorStats {
    pub mark_delete_position: String,
    pub read_position: String,
    pub waiting_read_op: bool,
    pub pending_read_ops: u32,
    pub messages_consumed_counter: i64,
    pub cursor_ledger: i64,
    pub cursor_ledger_last_entry: i64,
    /// Acked ranges above the mark-delete position, Pulsar-style: `[(3:5..3:9]]`.
    pub individually_deleted_messages: String,
    pub last_ledger_switch_timestamp: String,
    pub state: String,
    pub active: bool,
    pub number_of_entries_since_first_not_acked_message: u64,
    pub total_non_contiguous_deleted_messages_range: u64,
    pub properties: BTreeMap<String, i64>,
}

/// Pulsar's `PartitionedTopicStats`: the partitions' stats added up, the partition count, and
/// (with `?perPartition=true`) each partition's own stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionedTopicStats {
    #[serde(flatten)]
    pub total: TopicStats,
    pub metadata: crate::policies::PartitionedTopicMetadata,
    #[serde(default)]
    pub partitions: BTreeMap<String, TopicStats>,
}

impl TopicStats {
    /// Adds one partition's stats to a partitioned topic's total, the way Pulsar aggregates:
    /// rates, counters and sizes add up, publishers are listed together, subscriptions of the
    /// same name are merged.
    pub fn add(&mut self, p: &TopicStats) {
        self.msg_rate_in += p.msg_rate_in;
        self.msg_throughput_in += p.msg_throughput_in;
        self.msg_rate_out += p.msg_rate_out;
        self.msg_throughput_out += p.msg_throughput_out;
        self.bytes_in_counter += p.bytes_in_counter;
        self.msg_in_counter += p.msg_in_counter;
        self.bytes_out_counter += p.bytes_out_counter;
        self.msg_out_counter += p.msg_out_counter;
        self.msg_chunk_published |= p.msg_chunk_published;
        self.storage_size += p.storage_size;
        self.backlog_size += p.backlog_size;
        self.offloaded_storage_size += p.offloaded_storage_size;
        self.earliest_msg_publish_time_in_backlogs = match (
            self.earliest_msg_publish_time_in_backlogs,
            p.earliest_msg_publish_time_in_backlogs,
        ) {
            (0, t) | (t, 0) => t,
            (a, b) => a.min(b),
        };
        self.publishers.extend(p.publishers.iter().cloned());
        self.waiting_publishers += p.waiting_publishers;
        self.non_contiguous_deleted_messages_ranges += p.non_contiguous_deleted_messages_ranges;
        self.non_contiguous_deleted_messages_ranges_serialized_size +=
            p.non_contiguous_deleted_messages_ranges_serialized_size;
        if self.deduplication_status.is_empty() {
            self.deduplication_status = p.deduplication_status.clone();
        }
        for (name, s) in &p.subscriptions {
            self.subscriptions.entry(name.clone()).or_default().add(s);
        }
        self.average_msg_size = if self.msg_rate_in > 0.0 {
            self.msg_throughput_in / self.msg_rate_in
        } else {
            0.0
        };
    }
}

impl SubscriptionStats {
    /// Merges a partition's subscription of the same name.
    pub fn add(&mut self, s: &SubscriptionStats) {
        self.msg_rate_out += s.msg_rate_out;
        self.msg_throughput_out += s.msg_throughput_out;
        self.bytes_out_counter += s.bytes_out_counter;
        self.msg_out_counter += s.msg_out_counter;
        self.msg_rate_redeliver += s.msg_rate_redeliver;
        self.msg_backlog += s.msg_backlog;
        self.backlog_size += s.backlog_size;
        self.msg_backlog_no_delayed += s.msg_backlog_no_delayed;
        self.blocked_subscription_on_unacked_msgs |= s.blocked_subscription_on_unacked_msgs;
        self.msg_delayed += s.msg_delayed;
        self.unacked_messages += s.unacked_messages;
        if self.subscription_type.is_empty() {
            self.subscription_type = s.subscription_type.clone();
        }
        if self.active_consumer_name.is_none() {
            self.active_consumer_name = s.active_consumer_name.clone();
        }
        self.msg_rate_expired += s.msg_rate_expired;
        self.last_expire_timestamp = self.last_expire_timestamp.max(s.last_expire_timestamp);
        self.last_consumed_flow_timestamp = self
            .last_consumed_flow_timestamp
            .max(s.last_consumed_flow_timestamp);
        self.last_consumed_timestamp = self.last_consumed_timestamp.max(s.last_consumed_timestamp);
        self.last_acked_timestamp = self.last_acked_timestamp.max(s.last_acked_timestamp);
        self.consumers.extend(s.consumers.iter().cloned());
        self.is_durable |= s.is_durable;
        self.is_replicated |= s.is_replicated;
        self.non_contiguous_deleted_messages_ranges += s.non_contiguous_deleted_messages_ranges;
    }
}
