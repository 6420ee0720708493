//! [`BrokerTopicAdmin`]: the admin API's topic operations ([`TopicAdmin`]) carried out by a
//! [`BrokerService`].
//!
//! Every operation on one topic first checks that the topic exists (404 otherwise, never an
//! auto-creation) and that this broker owns its bundle (taking the lease if it is free, as a
//! lookup does); a topic another broker serves answers a 307 to the owner's admin API (from its
//! [`crate::cluster::registry`] record; 503 naming the owner when it has none). The topic is then
//! loaded and the operation works on its managed ledger and cursors:
//!
//! - subscriptions are durable cursors; one created here starts no dispatcher until a consumer
//!   subscribes;
//! - reset-cursor goes through the running subscription when there is one (its consumers are
//!   disconnected and resubscribe at the new position, as Pulsar does), else moves the cursor;
//!   by timestamp it binary-searches the stored entries' publish times;
//! - skip and clear-backlog acknowledge on the cursor (the dispatcher skips acknowledged
//!   entries); peek reads the n-th unacknowledged entry without moving anything.
//!
//! Rates in stats are counter deltas between two stats calls at least a second apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use magnetar_metadata::EntryId;
use magnetar_proto::pulsar::Payload;
use magnetar_proto::pulsar::api::command_subscribe::SubType;
use magnetar_proto::pulsar::api::{CompressionType, ProducerAccessMode};

use crate::admin::topics::{
    ConsumerStats, CursorStats, LedgerInfo, LookupData, MessageIdJson, OffloadProcessStatus,
    PeekedMessage, PersistentTopicInternalStats, PublisherStats, ResetTarget, StartPosition,
    SubscriptionStats, TopicStats,
};
use crate::admin::{TopicAdmin, TopicAdminError};
use crate::error::BrokerError;
use crate::service::BrokerService;
use crate::subscription::{SeekTarget, SubscriptionSnapshot};
use crate::topic::Topic;
use crate::topic::dedup::DEDUP_CURSOR;
use crate::topic_name::{NamespaceName, TopicName};
use magnetar_managed_ledger::{InitialPosition, ManagedCursor, ManagedLedger, Position};

/// Entries read per step when scanning a backlog (skip, peek).
const SCAN_BATCH: usize = 256;
/// Bytes read per step at most when scanning.
const SCAN_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Rates are recomputed when the previous sample is at least this old.
const RATE_INTERVAL_MS: u128 = 1000;

/// The [`TopicAdmin`] of a running broker.
#[derive(Debug)]
pub struct BrokerTopicAdmin {
    service: Arc<BrokerService>,
    samples: Mutex<HashMap<String, RateSample>>,
}

#[derive(Debug, Clone, Copy)]
struct RateSample {
    at: Instant,
    msg_in: u64,
    bytes_in: u64,
    msg_out: u64,
    bytes_out: u64,
    rates: Rates,
}

#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    msg_in: f64,
    bytes_in: f64,
    msg_out: f64,
    bytes_out: f64,
}

impl BrokerTopicAdmin {
    pub fn new(service: Arc<BrokerService>) -> Arc<Self> {
        Arc::new(BrokerTopicAdmin {
            service,
            samples: Mutex::new(HashMap::new()),
        })
    }

    /// The bundle of `namespace` whose range `range` names: 412 for a malformed range, 404
    /// for one that is not a bundle of the namespace now.
    async fn bundle(
        &self,
        namespace: &NamespaceName,
        range: &str,
    ) -> Result<crate::cluster::bundle::Bundle, TopicAdminError> {
        let range: crate::cluster::bundle::HashRange = range
            .parse()
            .map_err(|e: String| TopicAdminError::Precondition(e))?;
        let bundles = self
            .service
            .namespace_bundles(namespace)
            .await
            .map_err(from_broker)?;
        bundles.bundles().find(|b| b.range == range).ok_or_else(|| {
            TopicAdminError::NotFound(format!(
                "Bundle {namespace}/{range} not found: the namespace's bundles are {}",
                bundles
                    .bundles()
                    .map(|b| b.range.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The loaded topic, after checking it exists and this broker owns it.
    async fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, TopicAdminError> {
        if !self.service.topic_exists(name).await.map_err(internal)? {
            return Err(TopicAdminError::NotFound("Topic not found".to_owned()));
        }
        self.owned(name).await?;
        self.service.get_topic(name).await.map_err(from_broker)
    }

    /// Ok when this broker serves `name` (taking its bundle's lease when free); a topic another
    /// broker serves is a redirect to that broker's admin API (503 if it registered none).
    async fn owned(&self, name: &TopicName) -> Result<(), TopicAdminError> {
        // Authoritative: the admin API takes a free bundle here rather than bounce between brokers.
        let Some(owner) = self.service.lookup(name, true).await.map_err(from_broker)? else {
            return Ok(());
        };
        match self
            .service
            .admin_url_of(&owner)
            .await
            .map_err(from_broker)?
        {
            Some(admin_url) => Err(TopicAdminError::Redirect(admin_url)),
            None => Err(TopicAdminError::Unavailable(format!(
                "topic {name} is served by the broker at {owner}"
            ))),
        }
    }

    /// The durable cursor `subscription` of `topic`, or 404.
    fn cursor(topic: &Topic, subscription: &str) -> Result<Arc<ManagedCursor>, TopicAdminError> {
        topic
            .managed_ledger()
            .cursor(subscription)
            .ok_or_else(|| TopicAdminError::NotFound("Subscription not found".to_owned()))
    }

    fn rates(&self, topic: &str, now: RateSample) -> Rates {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(prev) = samples.get(topic).copied() else {
            samples.insert(topic.to_owned(), now);
            return Rates::default();
        };
        let elapsed = now.at.duration_since(prev.at);
        if elapsed.as_millis() < RATE_INTERVAL_MS {
            return prev.rates;
        }
        let secs = elapsed.as_secs_f64();
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        let rates = Rates {
            msg_in: rate(now.msg_in, prev.msg_in),
            bytes_in: rate(now.bytes_in, prev.bytes_in),
            msg_out: rate(now.msg_out, prev.msg_out),
            bytes_out: rate(now.bytes_out, prev.bytes_out),
        };
        samples.insert(topic.to_owned(), RateSample { rates, ..now });
        rates
    }
}

fn internal(e: impl std::fmt::Display) -> TopicAdminError {
    TopicAdminError::Internal(e.to_string())
}

fn from_broker(e: BrokerError) -> TopicAdminError {
    use axum::http::StatusCode;
    // Pulsar's own wording for the 404s; the error's text otherwise.
    let reason = match &e {
        BrokerError::TopicNotFound(_) => "Topic not found".to_owned(),
        BrokerError::NamespaceNotFound(_) => "Namespace not found".to_owned(),
        BrokerError::SubscriptionNotFound(_) => "Subscription not found".to_owned(),
        e => e.to_string(),
    };
    // The status comes from the one mapping (`BrokerError::http_status`).
    match e.http_status() {
        StatusCode::NOT_FOUND => TopicAdminError::NotFound(reason),
        StatusCode::CONFLICT => TopicAdminError::AlreadyExists(reason),
        StatusCode::PRECONDITION_FAILED => TopicAdminError::Precondition(reason),
        StatusCode::BAD_REQUEST => TopicAdminError::Invalid(reason),
        StatusCode::SERVICE_UNAVAILABLE => TopicAdminError::Unavailable(reason),
        _ => TopicAdminError::Internal(reason),
    }
}

fn from_ml(e: magnetar_managed_ledger::ManagedLedgerError) -> TopicAdminError {
    from_broker(BrokerError::from(e))
}

fn sub_type_name(t: SubType) -> &'static str {
    match t {
        SubType::Exclusive => "Exclusive",
        SubType::Shared => "Shared",
        SubType::Failover => "Failover",
        SubType::KeyShared => "Key_Shared",
    }
}

fn access_mode_name(m: ProducerAccessMode) -> &'static str {
    match m {
        ProducerAccessMode::Shared => "Shared",
        ProducerAccessMode::Exclusive => "Exclusive",
        ProducerAccessMode::WaitForExclusive => "WaitForExclusive",
        ProducerAccessMode::ExclusiveWithFencing => "ExclusiveWithFencing",
    }
}

/// Up to `n` unacknowledged entries of `cursor` from its floor on, oldest first.
async fn unacked_entries(
    ml: &ManagedLedger,
    cursor: &ManagedCursor,
    n: u64,
) -> Result<Vec<(Position, Bytes)>, TopicAdminError> {
    let mut out = Vec::new();
    let mut from = cursor.first_unacked();
    while (out.len() as u64) < n {
        let batch = ml
            .read_entries(from, SCAN_BATCH, SCAN_BYTES_MAX)
            .await
            .map_err(from_ml)?;
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        for (p, entry) in batch {
            if (out.len() as u64) < n && !cursor.is_acked(p) {
                out.push((p, entry));
            }
        }
        from = last.next();
    }
    Ok(out)
}

fn peeked(position: Position, entry: Bytes) -> Result<PeekedMessage, TopicAdminError> {
    let payload = Payload::parse(entry).map_err(|e| {
        TopicAdminError::Internal(format!("entry {position} is not a message: {e}"))
    })?;
    let m = payload.metadata().map_err(|e| {
        TopicAdminError::Internal(format!("entry {position} has bad metadata: {e}"))
    })?;
    let compression = m
        .compression
        .and_then(|c| CompressionType::try_from(c).ok())
        .filter(|c| *c != CompressionType::None)
        .map(|c| c.as_str_name().to_owned());
    Ok(PeekedMessage {
        ledger_id: position.ledger.0,
        entry_id: position.entry.0,
        payload: payload.payload(),
        publish_time_ms: Some(m.publish_time),
        event_time_ms: m.event_time.filter(|t| *t > 0),
        producer_name: Some(m.producer_name.clone()),
        sequence_id: Some(m.sequence_id),
        partition_key: m.partition_key.clone(),
        properties: m
            .properties
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        num_batch_messages: m.num_messages_in_batch.and_then(|n| u32::try_from(n).ok()),
        uncompressed_size: compression
            .is_some()
            .then(|| m.uncompressed_size.map(u64::from))
            .flatten(),
        compression,
    })
}

/// `individuallyDeletedMessages` as the managed ledger renders it.
fn cursor_stats(c: &magnetar_managed_ledger::ledger::InternalCursorStats) -> CursorStats {
    CursorStats {
        mark_delete_position: c.mark_delete_position.clone(),
        read_position: c.read_position.clone(),
        individually_deleted_messages: c.individually_deleted_messages.clone(),
        number_of_entries_since_first_not_acked_message: c
            .number_of_entries_since_first_not_acked_message,
        total_non_contiguous_deleted_messages_range: c.total_non_contiguous_deleted_messages_range
            as u64,
        state: c.state.clone(),
        cursor_ledger: -1,
        cursor_ledger_last_entry: -1,
        ..CursorStats::default()
    }
}

#[async_trait]
impl TopicAdmin for BrokerTopicAdmin {
    fn is_serving(&self) -> bool {
        self.service.is_serving()
    }

    async fn health_check(&self) -> Result<(), TopicAdminError> {
        self.service.health_check().await.map_err(from_broker)
    }

    async fn list_topics(&self, namespace: &NamespaceName) -> Result<Vec<String>, TopicAdminError> {
        self.service
            .topics_of_namespace(namespace)
            .await
            .map_err(from_broker)
    }

    async fn create_partitions(
        &self,
        topic: &TopicName,
        count: u32,
    ) -> Result<(), TopicAdminError> {
        self.service
            .create_partition_records(topic, count)
            .await
            .map_err(from_broker)
    }

    async fn create_topic(
        &self,
        topic: &TopicName,
        _properties: BTreeMap<String, String>,
    ) -> Result<(), TopicAdminError> {
        if self.service.topic_exists(topic).await.map_err(internal)? {
            return Err(TopicAdminError::AlreadyExists(
                "This topic already exists".to_owned(),
            ));
        }
        self.owned(topic).await?;
        self.service
            .create_topic(topic)
            .await
            .map_err(from_broker)?;
        Ok(())
    }

    async fn delete_topic(&self, name: &TopicName, force: bool) -> Result<(), TopicAdminError> {
        let topic = self.topic(name).await?;
        if !force {
            if !topic.producers().is_empty() {
                return Err(TopicAdminError::Precondition(
                    "Topic has active producers/subscriptions".to_owned(),
                ));
            }
            for sub in topic.loaded_subscriptions() {
                if sub
                    .snapshot()
                    .await
                    .is_some_and(|s| !s.consumers.is_empty())
                {
                    return Err(TopicAdminError::Precondition(
                        "Topic has active producers/subscriptions".to_owned(),
                    ));
                }
            }
        }
        topic.delete().await.map_err(from_ml)?;
        Ok(())
    }

    async fn stats(&self, name: &TopicName) -> Result<TopicStats, TopicAdminError> {
        let topic = self.topic(name).await?;
        let ml = topic.managed_ledger();
        let ml_stats = ml.stats();
        let (msg_in, bytes_in) = topic.published();
        let average_entry = if ml_stats.entries > 0 {
            ml_stats.size_bytes as f64 / ml_stats.entries as f64
        } else {
            0.0
        };
        let mut snapshots: HashMap<String, SubscriptionSnapshot> = HashMap::new();
        let mut readers = Vec::new();
        for sub in topic.loaded_subscriptions() {
            if let Some(s) = sub.snapshot().await {
                if sub.is_durable() {
                    snapshots.insert(sub.name().to_owned(), s);
                } else {
                    readers.push((sub.name().to_owned(), s));
                }
            }
        }
        let mut subscriptions = BTreeMap::new();
        let mut msg_out = 0;
        let mut bytes_out = 0;
        let mut backlog_size = 0u64;
        let durable = ml_stats
            .cursors
            .iter()
            .filter(|(n, _)| n.as_str() != DEDUP_CURSOR)
            .map(|(n, c)| (n.clone(), Some(c.backlog), snapshots.remove(n)));
        let non_durable = readers.into_iter().map(|(n, s)| (n, None, Some(s)));
        for (sub_name, backlog, snapshot) in durable.chain(non_durable) {
            let snapshot = snapshot.unwrap_or_default();
            msg_out += snapshot.msg_out;
            bytes_out += snapshot.bytes_out;
            let backlog_entries = backlog.unwrap_or(0);
            let sub_backlog_size = (backlog_entries as f64 * average_entry) as u64;
            backlog_size = backlog_size.max(sub_backlog_size);
            let consumers = snapshot
                .consumers
                .iter()
                .map(|c| ConsumerStats {
                    consumer_name: c.name.clone(),
                    available_permits: c.permits,
                    unacked_messages: c.unacked,
                    msg_out_counter: c.msg_out,
                    bytes_out_counter: c.bytes_out,
                    ..ConsumerStats::default()
                })
                .collect();
            subscriptions.insert(
                sub_name,
                SubscriptionStats {
                    msg_backlog: backlog_entries,
                    msg_backlog_no_delayed: backlog_entries,
                    backlog_size: sub_backlog_size,
                    msg_out_counter: snapshot.msg_out,
                    bytes_out_counter: snapshot.bytes_out,
                    unacked_messages: snapshot.unacked,
                    subscription_type: sub_type_name(
                        snapshot.sub_type.unwrap_or(SubType::Exclusive),
                    )
                    .to_owned(),
                    active_consumer_name: snapshot.active_consumer.clone(),
                    consumers,
                    is_durable: backlog.is_some(),
                    ..SubscriptionStats::default()
                },
            );
        }
        let rates = self.rates(
            &name.to_string(),
            RateSample {
                at: self.service.config().clock.now(),
                msg_in,
                bytes_in,
                msg_out,
                bytes_out,
                rates: Rates::default(),
            },
        );
        let publishers = topic
            .producers()
            .iter()
            .map(|p| PublisherStats {
                access_mode: access_mode_name(p.mode).to_owned(),
                producer_id: p.producer_id,
                producer_name: p.name.clone(),
                ..PublisherStats::default()
            })
            .collect();
        Ok(TopicStats {
            msg_rate_in: rates.msg_in,
            msg_throughput_in: rates.bytes_in,
            msg_rate_out: rates.msg_out,
            msg_throughput_out: rates.bytes_out,
            bytes_in_counter: bytes_in,
            msg_in_counter: msg_in,
            bytes_out_counter: bytes_out,
            msg_out_counter: msg_out,
            average_msg_size: if msg_in > 0 {
                bytes_in as f64 / msg_in as f64
            } else {
                0.0
            },
            storage_size: ml_stats.size_bytes,
            backlog_size,
            publishers,
            subscriptions,
            deduplication_status: topic.dedup().status().as_str().to_owned(),
            ..TopicStats::default()
        })
    }

    async fn unload(&self, name: &TopicName) -> Result<(), TopicAdminError> {
        if !self.service.topic_exists(name).await.map_err(internal)? {
            return Err(TopicAdminError::NotFound("Topic not found".to_owned()));
        }
        self.owned(name).await?;
        if let Some(topic) = self.service.loaded_topic(name) {
            topic.close().await;
        }
        Ok(())
    }

    async fn offload(&self, name: &TopicName, ledger: u64) -> Result<(), TopicAdminError> {
        let topic = self.topic(name).await?;
        let ml = topic.managed_ledger();
        let up_to = magnetar_managed_ledger::Position {
            ledger: magnetar_metadata::LedgerId(ledger),
            entry: magnetar_metadata::EntryId(0),
        };
        ml.offload_up_to(up_to).map_err(|e| match e {
            magnetar_managed_ledger::ManagedLedgerError::InvalidState(m)
                if m.contains("already in progress") =>
            {
                TopicAdminError::AlreadyExists("Offload already in progress".to_owned())
            }
            magnetar_managed_ledger::ManagedLedgerError::InvalidState(m) => {
                TopicAdminError::Precondition(m)
            }
            other => internal(other),
        })
    }

    async fn offload_status(
        &self,
        name: &TopicName,
    ) -> Result<OffloadProcessStatus, TopicAdminError> {
        use magnetar_managed_ledger::OffloadRun;
        let topic = self.topic(name).await?;
        let s = topic.managed_ledger().offload_status();
        let first = match (s.status, s.first_unoffloaded) {
            (OffloadRun::Success, Some(p)) => MessageIdJson {
                ledger_id: p.ledger.0 as i64,
                entry_id: p.entry.0 as i64,
                partition_index: -1,
            },
            _ => MessageIdJson::EARLIEST,
        };
        Ok(OffloadProcessStatus {
            status: match s.status {
                OffloadRun::NotRun => "NOT_RUN",
                OffloadRun::Running => "RUNNING",
                OffloadRun::Success => "SUCCESS",
                OffloadRun::Error => "ERROR",
            }
            .to_owned(),
            last_error: s.last_error,
            first_unoffloaded_message: first,
        })
    }

    async fn exists(&self, name: &TopicName) -> Result<bool, TopicAdminError> {
        self.service.topic_exists(name).await.map_err(internal)
    }

    async fn applied_offload_policies(
        &self,
        name: &TopicName,
    ) -> Result<crate::policies::OffloadPolicies, TopicAdminError> {
        self.service
            .applied_offload_policies(name)
            .await
            .map_err(from_broker)
    }

    async fn internal_stats(
        &self,
        name: &TopicName,
    ) -> Result<PersistentTopicInternalStats, TopicAdminError> {
        let topic = self.topic(name).await?;
        let s = topic.managed_ledger().internal_stats();
        Ok(PersistentTopicInternalStats {
            entries_added_counter: s.entries_added_counter,
            number_of_entries: s.number_of_entries,
            total_size: s.total_size,
            current_ledger_entries: s.current_ledger_entries,
            current_ledger_size: s.current_ledger_size,
            last_ledger_created_timestamp: s.last_ledger_created_timestamp,
            last_confirmed_entry: s.last_confirmed_entry,
            state: s.state,
            ledgers: s
                .ledgers
                .iter()
                .map(|l| LedgerInfo {
                    ledger_id: l.ledger_id,
                    entries: l.entries,
                    size: l.size,
                    offloaded: l.offloaded,
                    offloaded_to: l.offloaded_to.clone(),
                    bookie_copy_deleted: l.bookie_copy_deleted,
                    under_replicated: false,
                })
                .collect(),
            cursors: s
                .cursors
                .iter()
                .map(|(n, c)| (n.clone(), cursor_stats(c)))
                .collect(),
            ..PersistentTopicInternalStats::default()
        })
    }

    async fn subscriptions(&self, name: &TopicName) -> Result<Vec<String>, TopicAdminError> {
        let topic = self.topic(name).await?;
        // The deduplication cursor is no subscription (Pulsar hides it too).
        Ok(topic
            .managed_ledger()
            .cursor_names()
            .into_iter()
            .filter(|n| n != DEDUP_CURSOR)
            .collect())
    }

    async fn create_subscription(
        &self,
        name: &TopicName,
        subscription: &str,
        start: StartPosition,
    ) -> Result<(), TopicAdminError> {
        crate::topic_name::validate_subscription_name(subscription)
            .map_err(|e| TopicAdminError::Precondition(e.to_string()))?;
        let topic = self.topic(name).await?;
        let ml = topic.managed_ledger();
        if ml.cursor(subscription).is_some() {
            return Err(TopicAdminError::AlreadyExists(
                "Subscription already exists for topic".to_owned(),
            ));
        }
        let initial = match start {
            StartPosition::Earliest => InitialPosition::Earliest,
            StartPosition::Latest | StartPosition::At { .. } => InitialPosition::Latest,
        };
        let cursor = ml
            .open_cursor(subscription, initial)
            .await
            .map_err(|e| match e {
                magnetar_managed_ledger::ManagedLedgerError::InvalidName(n) => {
                    TopicAdminError::Invalid(format!("invalid subscription name {n:?}"))
                }
                e => from_ml(e),
            })?;
        if let StartPosition::At {
            ledger_id,
            entry_id,
        } = start
        {
            cursor.reset(Position::new(ledger_id, entry_id));
            cursor.flush().await.map_err(from_ml)?;
        }
        Ok(())
    }

    async fn delete_subscription(
        &self,
        name: &TopicName,
        subscription: &str,
        force: bool,
    ) -> Result<(), TopicAdminError> {
        let topic = self.topic(name).await?;
        let loaded = topic.loaded_subscription(subscription);
        let cursor = topic.managed_ledger().cursor(subscription);
        if loaded.is_none() && cursor.is_none() {
            return Err(TopicAdminError::NotFound(
                "Subscription not found".to_owned(),
            ));
        }
        if let Some(sub) = &loaded
            && !force
            && sub
                .snapshot()
                .await
                .is_some_and(|s| !s.consumers.is_empty())
        {
            return Err(TopicAdminError::Precondition(
                "Subscription has active connected consumers".to_owned(),
            ));
        }
        if loaded.is_some() {
            // Disconnects its consumers and stops its dispatcher.
            topic.drop_subscription(subscription).await;
        }
        if cursor.is_some() {
            match topic.managed_ledger().delete_cursor(subscription).await {
                Ok(()) | Err(magnetar_managed_ledger::ManagedLedgerError::NoSuchCursor { .. }) => {}
                Err(e) => return Err(from_ml(e)),
            }
        }
        Ok(())
    }

    async fn reset_cursor(
        &self,
        name: &TopicName,
        subscription: &str,
        target: ResetTarget,
    ) -> Result<(), TopicAdminError> {
        let topic = self.topic(name).await?;
        let cursor = Self::cursor(&topic, subscription)?;
        let ml = topic.managed_ledger();
        let position = match target {
            ResetTarget::Timestamp(ts) => crate::subscription::find_by_publish_time(ml, ts)
                .await
                .map_err(from_ml)?,
            ResetTarget::MessageId {
                ledger_id,
                entry_id,
                excluded,
                ..
            } => {
                let p = Position {
                    ledger: magnetar_metadata::LedgerId(ledger_id),
                    entry: EntryId(entry_id),
                };
                if excluded { p.next() } else { p }
            }
        };
        match topic.loaded_subscription(subscription) {
            // The running subscription resets its cursor and disconnects its consumers.
            Some(sub) => sub
                .seek(SeekTarget::Position(position))
                .await
                .map_err(from_broker)?,
            None => cursor.reset(position),
        }
        cursor.flush().await.map_err(from_ml)
    }

    async fn skip(
        &self,
        name: &TopicName,
        subscription: &str,
        messages: u64,
    ) -> Result<(), TopicAdminError> {
        let topic = self.topic(name).await?;
        let cursor = Self::cursor(&topic, subscription)?;
        let positions: Vec<Position> = unacked_entries(topic.managed_ledger(), &cursor, messages)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        cursor.ack_individual(&positions).map_err(from_ml)?;
        cursor.flush().await.map_err(from_ml)
    }

    async fn skip_all(&self, name: &TopicName, subscription: &str) -> Result<(), TopicAdminError> {
        let topic = self.topic(name).await?;
        let cursor = Self::cursor(&topic, subscription)?;
        if let Some(last) = topic.managed_ledger().last_confirmed() {
            cursor.ack_cumulative(last).map_err(from_ml)?;
        }
        cursor.flush().await.map_err(from_ml)
    }

    async fn peek(
        &self,
        name: &TopicName,
        subscription: &str,
        position: u64,
    ) -> Result<PeekedMessage, TopicAdminError> {
        if position == 0 {
            return Err(TopicAdminError::Invalid(
                "message position starts at 1".to_owned(),
            ));
        }
        let topic = self.topic(name).await?;
        let cursor = Self::cursor(&topic, subscription)?;
        let entries = unacked_entries(topic.managed_ledger(), &cursor, position).await?;
        let index = usize::try_from(position - 1).unwrap_or(usize::MAX);
        match entries.into_iter().nth(index) {
            Some((p, entry)) => peeked(p, entry),
            None => Err(TopicAdminError::NotFound("Message not found".to_owned())),
        }
    }

    async fn unload_bundle(
        &self,
        namespace: &NamespaceName,
        range: &str,
        destination: Option<&str>,
    ) -> Result<(), TopicAdminError> {
        let bundle = self.bundle(namespace, range).await?;
        self.service
            .unload(&bundle, destination)
            .await
            .map_err(from_broker)
    }

    async fn split_bundle(
        &self,
        namespace: &NamespaceName,
        range: &str,
        algorithm: &str,
        positions: Vec<u32>,
        unload: bool,
    ) -> Result<Vec<String>, TopicAdminError> {
        let bundle = self.bundle(namespace, range).await?;
        let algorithm = match algorithm
            .parse::<crate::service::SplitAlgorithm>()
            .map_err(TopicAdminError::Precondition)?
        {
            crate::service::SplitAlgorithm::SpecifiedPositionsDivide(_) => {
                crate::service::SplitAlgorithm::SpecifiedPositionsDivide(positions)
            }
            a => a,
        };
        let children = self
            .service
            .split(&bundle, &algorithm, unload)
            .await
            .map_err(from_broker)?;
        Ok(children.iter().map(|c| c.range.to_string()).collect())
    }

    async fn unload_namespace(&self, namespace: &NamespaceName) -> Result<(), TopicAdminError> {
        let bundles = self
            .service
            .namespace_bundles(namespace)
            .await
            .map_err(from_broker)?;
        let results = futures::future::join_all(bundles.bundles().map(|b| {
            let service = std::sync::Arc::clone(&self.service);
            async move { service.unload(&b, None).await }
        }))
        .await;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
            .map_err(from_broker)
    }

    async fn bundle_range(&self, topic: &TopicName) -> Result<String, TopicAdminError> {
        let bundle = self.service.bundle_of(topic).await.map_err(from_broker)?;
        Ok(bundle.range.to_string())
    }

    async fn load_report(&self) -> Result<serde_json::Value, TopicAdminError> {
        let report = self.service.load_report().await;
        serde_json::to_value(report).map_err(|e| TopicAdminError::Internal(e.to_string()))
    }

    async fn lookup(&self, topic: &TopicName) -> Result<LookupData, TopicAdminError> {
        let owner = self
            .service
            .lookup(topic, false)
            .await
            .map_err(from_broker)?;
        let broker_url = owner.unwrap_or_else(|| self.service.config().service_url.clone());
        let http_url = self
            .service
            .admin_url_of(&broker_url)
            .await
            .map_err(from_broker)?
            .unwrap_or_default();
        Ok(LookupData {
            native_url: broker_url.clone(),
            broker_url,
            broker_url_tls: String::new(),
            http_url,
            http_url_tls: String::new(),
        })
    }
}
