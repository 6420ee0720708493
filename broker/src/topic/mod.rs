//! [`Topic`]: a loaded persistent topic — its managed ledger, its producers (with Pulsar's
//! access modes) and its subscriptions.
//!
//! Producer access modes as Pulsar's (see [`Topic::add_producer`]): `Shared` producers coexist
//! (ProducerBusy next to an exclusive one); `Exclusive` needs the topic alone (ProducerFenced
//! otherwise); `ExclusiveWithFencing` closes the others and takes it; `WaitForExclusive` waits
//! until the topic has no producer. Exclusive holders carry a topic epoch, persisted in the
//! managed ledger, so a producer fenced out cannot come back.
//!
//! Closing a topic (bundle lost, broker shutdown) tells every client to reconnect
//! (CLOSE_PRODUCER / CLOSE_CONSUMER), stops the subscriptions and closes the managed ledger,
//! which flushes the cursors.
//!
//! A failed write **fences publishing** (as Pulsar's `PersistentTopic.addFailed`): the managed
//! ledger refuses appends (`suspend_appends_after_failure`), every producer is detached with
//! CLOSE_PRODUCER — SENDs still on the wire for them are ignored, the clients resend them in
//! order on their re-created producers — and once the SENDs being appended have drained,
//! appends resume. Without this a producer's later message could be stored while an earlier one
//! failed (out of order; with deduplication the resent earlier one would even be taken for a
//! duplicate and acknowledged without being stored).

pub mod dedup;
pub mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use magnetar_proto::pulsar::api::ProducerAccessMode;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::cluster::bundle::Bundle;
use crate::error::{BrokerError, BrokerResult};
use crate::subscription::{ClosedConsumer, Subscription};
use crate::topic::dedup::{DEDUP_CURSOR, Dedup};
use crate::topic_name::TopicName;
use magnetar_managed_ledger::{InitialPosition, ManagedLedger, Position};

/// A producer attached to the topic.
#[derive(Debug, Clone)]
pub struct ProducerSpec {
    /// Broker-unique key.
    pub key: u64,
    pub producer_id: u64,
    pub name: String,
    pub mode: ProducerAccessMode,
    /// The client (the protocol connection).
    pub conn: Arc<dyn ProducerSink>,
    /// True while attached; cleared (under the topic's lock) when the topic detaches it, so the
    /// SEND path checks one atomic instead of taking the topic's lock per message.
    pub attached: Arc<AtomicBool>,
}

/// How a topic reaches one producer's client (the protocol connection implements it).
/// Never waits on the client.
pub trait ProducerSink: Send + Sync + std::fmt::Debug + 'static {
    /// Tells the client the broker closed its producer (CLOSE_PRODUCER): it looks the topic up
    /// again and re-creates it. Queued without waiting, never dropped while the client is
    /// connected. `assigned_broker_service_url` names the broker the topic moved to (PIP-307),
    /// so the client reconnects there without a lookup.
    fn close_producer(&self, producer_id: u64, assigned_broker_service_url: Option<&str>);

    /// The same, but only once every receipt already due to the producer was sent: after a
    /// graceful close (whose writes all completed) no receipt may follow the CLOSE_PRODUCER —
    /// the client, its producer moved on, would drop it and send the message again.
    fn close_producer_after_receipts(
        &self,
        producer_id: u64,
        assigned_broker_service_url: Option<&str>,
    ) {
        self.close_producer(producer_id, assigned_broker_service_url);
    }
}

/// A topic's subscriptions by name.
type Subscriptions = HashMap<String, Arc<Subscription>>;

/// The clients of a quiesced topic ([`Topic::quiesce`]), still to be told to reconnect.
#[derive(Debug)]
pub struct Quiesced {
    producers: Vec<ProducerSpec>,
    consumers: Vec<ClosedConsumer>,
}

impl Quiesced {
    /// CLOSE_PRODUCER / CLOSE_CONSUMER to every client, naming the broker that serves the
    /// topic now if known (PIP-307), else none (the client looks the topic up).
    pub fn notify(&self, assigned_broker_service_url: Option<&str>) {
        for p in &self.producers {
            // The managed ledger is closed: every append is done, its receipt queued.
            p.conn
                .close_producer_after_receipts(p.producer_id, assigned_broker_service_url);
        }
        for c in &self.consumers {
            c.notify(assigned_broker_service_url);
        }
    }

    /// Producers and consumers to tell.
    pub fn clients(&self) -> usize {
        self.producers.len() + self.consumers.len()
    }
}

/// Takes every producer out of `producers`, marking each detached.
fn detach_all(producers: &mut HashMap<u64, ProducerSpec>) -> HashMap<u64, ProducerSpec> {
    let taken = std::mem::take(producers);
    for p in taken.values() {
        p.attached.store(false, Ordering::Release);
    }
    taken
}

/// Where a new cursor starts.
#[derive(Debug, Clone, Copy)]
pub enum StartAt {
    Initial(InitialPosition),
    /// Non-durable: from this position on (inclusive); past the last confirmed entry, the
    /// initial position instead.
    Position(Position, InitialPosition),
}

#[derive(Debug, Default)]
struct State {
    producers: HashMap<u64, ProducerSpec>,
    subscriptions: HashMap<String, Arc<Subscription>>,
    /// WaitForExclusive producers waiting for the topic: Shared producers are refused
    /// meanwhile (as Pulsar), or a steady stream of them would starve the waiter.
    waiting_exclusive: usize,
    /// Bumped by each ExclusiveWithFencing producer: waiters that saw an older value fail.
    fence_generation: u64,
    /// The topic epoch of exclusive producers (`pulsar.topic.epoch`; None: never held).
    topic_epoch: Option<u64>,
}

/// The managed-ledger property holding the topic epoch (Pulsar's name).
pub const TOPIC_EPOCH_PROPERTY: &str = "pulsar.topic.epoch";

/// What [`Topic::admit`] decided for a producer.
enum Admit {
    Added {
        epoch: Option<u64>,
        /// Producers an ExclusiveWithFencing producer took the topic from.
        fenced_out: Vec<ProducerSpec>,
    },
    /// WaitForExclusive: the topic has producers.
    Wait,
}

/// Counts one waiting WaitForExclusive producer while alive (its request may be dropped).
struct Waiting<'a>(&'a Topic);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.waiting_exclusive = st.waiting_exclusive.saturating_sub(1);
    }
}

/// What a topic needs of the broker that loaded it (the `BrokerService`), without depending
/// on it.
#[async_trait::async_trait]
pub trait TopicHost: Send + Sync + std::fmt::Debug {
    /// Whether the topic's namespace has deduplication enabled now.
    async fn dedup_enabled(&self, topic: &TopicName) -> BrokerResult<bool>;
    /// The topic closed itself: it is loaded again on next use.
    fn forget_topic(&self, topic: &Topic);
    /// Entries a subscription reads per dispatch round.
    fn dispatch_batch_entries(&self) -> usize;
}

/// A loaded topic. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Topic {
    name: TopicName,
    /// Its bundle: a split moves it to a child of the bundle it was loaded under.
    bundle: Mutex<Bundle>,
    ml: Arc<ManagedLedger>,
    host: Weak<dyn TopicHost>,
    state: Mutex<State>,
    producer_left: Notify,
    closed: AtomicBool,
    /// Messages and bytes published since the topic was loaded (admin stats).
    msg_in: AtomicU64,
    bytes_in: AtomicU64,
    /// Entry sizes and write latencies, for the metrics.
    publish_stats: stats::PublishStats,
    dedup: Arc<Dedup>,
    /// A write failed: producers are detached and new ones refused until appends resume.
    publish_fenced: AtomicBool,
    /// SENDs between their producer check and their hand-over to the managed ledger.
    sends_entering: AtomicU64,
    sends_drained: Notify,
    /// When the topic was last seen active (ms, the managed ledger's clock): loaded, a
    /// producer or subscription added or removed, or active at an inactive-topic check.
    last_active_ms: AtomicU64,
}

/// Marks one SEND on its way into the managed ledger (see [`Topic::enter_send`]).
#[derive(Debug)]
pub struct SendEntering<'a>(&'a Topic);

impl Drop for SendEntering<'_> {
    fn drop(&mut self) {
        if self.0.sends_entering.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.sends_drained.notify_waiters();
        }
    }
}

impl Topic {
    pub(crate) fn new(
        name: TopicName,
        bundle: Bundle,
        ml: Arc<ManagedLedger>,
        dedup: Arc<Dedup>,
        host: Weak<dyn TopicHost>,
    ) -> Arc<Self> {
        let topic_epoch = ml
            .properties()
            .get(TOPIC_EPOCH_PROPERTY)
            .and_then(|e| e.parse().ok());
        Arc::new(Topic {
            name,
            bundle: Mutex::new(bundle),
            host,
            state: Mutex::new(State {
                topic_epoch,
                ..State::default()
            }),
            producer_left: Notify::new(),
            closed: AtomicBool::new(false),
            msg_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            publish_stats: stats::PublishStats::default(),
            dedup,
            publish_fenced: AtomicBool::new(false),
            sends_entering: AtomicU64::new(0),
            sends_drained: Notify::new(),
            last_active_ms: AtomicU64::new(ml.clock().now_ms()),
            ml,
        })
    }

    pub fn name(&self) -> &TopicName {
        &self.name
    }

    /// Marks the topic active now (inactive-topic deletion counts from the last such mark).
    pub fn touch(&self) {
        self.last_active_ms
            .store(self.ml.clock().now_ms(), Ordering::Relaxed);
    }

    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }

    /// Pulsar's `isActive` for inactive-topic deletion: producers or connected consumers
    /// always make a topic active; by `mode`, so does any subscription, or any subscription
    /// with a backlog.
    pub async fn is_active(&self, mode: crate::policies::InactiveTopicDeleteMode) -> bool {
        if !self.producers().is_empty() {
            return true;
        }
        for sub in self.loaded_subscriptions() {
            if sub
                .snapshot()
                .await
                .is_some_and(|s| !s.consumers.is_empty())
            {
                return true;
            }
        }
        let cursors = self.ml.stats().cursors;
        let mut subscriptions = cursors.iter().filter(|(n, _)| n.as_str() != DEDUP_CURSOR);
        match mode {
            crate::policies::InactiveTopicDeleteMode::DeleteWhenNoSubscriptions => {
                subscriptions.next().is_some()
            }
            crate::policies::InactiveTopicDeleteMode::DeleteWhenSubscriptionsCaughtUp => {
                subscriptions.any(|(_, c)| c.backlog > 0)
            }
        }
    }

    pub fn bundle(&self) -> Bundle {
        self.bundle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a split of its bundle: the child it belongs to now.
    pub(crate) fn set_bundle(&self, bundle: Bundle) {
        *self.bundle.lock().unwrap_or_else(|p| p.into_inner()) = bundle;
    }

    pub fn managed_ledger(&self) -> &Arc<ManagedLedger> {
        &self.ml
    }

    /// The topic's message deduplication.
    pub fn dedup(&self) -> &Arc<Dedup> {
        &self.dedup
    }

    /// Brings deduplication in line with the namespace policy as it is now (called for each
    /// new producer, so enabling it on a loaded topic takes effect).
    pub async fn refresh_dedup(&self) -> BrokerResult<()> {
        let Some(host) = self.host.upgrade() else {
            return Ok(());
        };
        let enabled = host.dedup_enabled(&self.name).await?;
        self.dedup.apply_policy(enabled, &self.ml).await?;
        Ok(())
    }

    /// Counts a published entry of `messages` messages (admin stats, metrics).
    pub fn record_publish(&self, messages: u64, bytes: u64) {
        self.msg_in.fetch_add(messages, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        self.publish_stats.record_entry(bytes);
    }

    /// Entry sizes and write latencies (see [`stats`]).
    pub fn publish_stats(&self) -> &stats::PublishStats {
        &self.publish_stats
    }

    /// Messages and bytes published since the topic was loaded.
    pub fn published(&self) -> (u64, u64) {
        (
            self.msg_in.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
        )
    }

    /// The producers attached now.
    pub fn producers(&self) -> Vec<ProducerSpec> {
        self.state().producers.values().cloned().collect()
    }

    /// The running subscription (or reader) `name`, if any; no cursor is opened.
    pub fn loaded_subscription(&self, name: &str) -> Option<Arc<Subscription>> {
        self.state()
            .subscriptions
            .get(name)
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// The running subscriptions and readers.
    pub fn loaded_subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.state()
            .subscriptions
            .values()
            .filter(|s| !s.is_closed())
            .cloned()
            .collect()
    }

    /// True once [`Topic::close`] began: its producers were told to reconnect (CLOSE_PRODUCER).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// False once closed or fenced (the topic is loaded again on next use).
    pub fn is_usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.ml.is_fenced()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_open(&self) -> BrokerResult<()> {
        if self.is_usable() {
            Ok(())
        } else {
            Err(BrokerError::NotReady(format!(
                "topic {} is closing",
                self.name
            )))
        }
    }

    /// Whether the producer `key` is attached (false once the broker detached it: topic closed,
    /// publishing fenced after a failed write).
    pub fn is_attached(&self, key: u64) -> bool {
        self.state().producers.contains_key(&key)
    }

    /// Held by a SEND from its producer check until its append is queued, so a fence waits
    /// for SENDs that passed the check before it.
    pub fn enter_send(&self) -> SendEntering<'_> {
        self.sends_entering.fetch_add(1, Ordering::AcqRel);
        SendEntering(self)
    }

    /// A write of this topic failed: fence publishing (see the module doc). Idempotent while
    /// fenced.
    pub fn publish_failed(self: &Arc<Self>) {
        if self.publish_fenced.swap(true, Ordering::AcqRel) {
            return;
        }
        let producers = detach_all(&mut self.state().producers);
        warn!(topic = %self.name, producers = producers.len(),
            "a write failed: producers detached; they resend once appends resume");
        for p in producers.values() {
            self.dedup.producer_removed(&p.name);
            p.conn.close_producer(p.producer_id, None);
        }
        self.producer_left.notify_waiters();
        let topic = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let drained = topic.sends_drained.notified();
                if topic.sends_entering.load(Ordering::Acquire) == 0 {
                    break;
                }
                drained.await;
            }
            let resumed = topic.ml.resume_appends().await;
            if topic.ml.is_fenced() {
                // The ledger was fenced under us: by another owner (whose lease loss is
                // handled elsewhere), or by auto-recovery closing an idle ledger that lost a
                // replica. The topic closes for good — consumers too, so none stays on this
                // instance — and is loaded again, on a new ledger, when its clients come back.
                warn!(topic = %topic.name, "the managed ledger was fenced: the topic closes and reloads on next use");
                if topic.stop_serving() {
                    topic.finish_close().await;
                }
                return;
            }
            if let Err(e) = resumed {
                warn!(topic = %topic.name, error = %e, "appends not resumed");
            }
            topic.publish_fenced.store(false, Ordering::Release);
            info!(topic = %topic.name, "publishing resumed after a failed write");
        });
    }

    /// Attaches a producer with Pulsar's access-mode rules; returns the topic epoch for the
    /// exclusive modes (sent back in PRODUCER_SUCCESS, and by the client when it reconnects).
    ///
    /// - `Shared` joins other Shared producers; with an exclusive producer there or waiting →
    ///   ProducerBusy.
    /// - `Exclusive` needs the topic alone, else ProducerFenced at once.
    /// - `ExclusiveWithFencing` closes every producer there (CLOSE_PRODUCER) and fails every
    ///   waiting one with ProducerFenced, then takes the topic.
    /// - `WaitForExclusive` waits until the topic has no producer; `on_wait` is called once if
    ///   it has to.
    ///
    /// An exclusive producer coming back with a `topic_epoch` older than the topic's (another
    /// exclusive producer held the topic in between) is fenced; otherwise it takes the topic
    /// at its epoch, and a new one at the next epoch, stored in the managed ledger's
    /// `pulsar.topic.epoch` property before the producer is answered.
    pub async fn add_producer(
        &self,
        spec: ProducerSpec,
        requested_epoch: Option<u64>,
        mut on_wait: impl FnMut(),
    ) -> BrokerResult<Option<u64>> {
        let mut waiting: Option<(Waiting<'_>, u64)> = None;
        loop {
            self.check_open()?;
            if self.publish_fenced.load(Ordering::Acquire) {
                return Err(BrokerError::NotReady(format!(
                    "topic {} is recovering from a failed write; retry",
                    self.name
                )));
            }
            if let Some(why) = self.ml.unwritable() {
                // Refused with the reason rather than admitted into a write that must fail:
                // the client backs off and retries; the managed ledger keeps trying to get a
                // writable ledger (with its own backoff) and producers are admitted again once
                // it has one.
                return Err(BrokerError::NotReady(format!(
                    "topic {} cannot be written now: {why}; retry later",
                    self.name
                )));
            }
            let left = self.producer_left.notified();
            let (decided, started_waiting) = {
                let mut st = self.state();
                let generation = waiting.as_ref().map(|(_, g)| *g);
                let decided = self.admit(&mut st, &spec, requested_epoch, generation)?;
                let started = (matches!(decided, Admit::Wait) && waiting.is_none()).then(|| {
                    st.waiting_exclusive += 1;
                    st.fence_generation
                });
                (decided, started)
            };
            let (epoch, fenced_out) = match decided {
                Admit::Added { epoch, fenced_out } => (epoch, fenced_out),
                Admit::Wait => {
                    if let Some(generation) = started_waiting {
                        waiting = Some((Waiting(self), generation));
                    }
                    on_wait();
                    left.await;
                    continue;
                }
            };
            for p in &fenced_out {
                info!(topic = %self.name, producer = %p.name, "fenced out by an ExclusiveWithFencing producer");
                self.dedup.producer_removed(&p.name);
                p.conn.close_producer(p.producer_id, None);
            }
            if !fenced_out.is_empty() {
                // Waiters wake, see the new fence generation and fail.
                self.producer_left.notify_waiters();
            }
            if let Some(epoch) = epoch
                && self.ml.properties().get(TOPIC_EPOCH_PROPERTY) != Some(&epoch.to_string())
                && let Err(e) = self
                    .ml
                    .set_property(TOPIC_EPOCH_PROPERTY, &epoch.to_string())
                    .await
            {
                self.remove_producer(spec.key);
                return Err(e.into());
            }
            return Ok(epoch);
        }
    }

    /// The access-mode decision for `spec` (see [`Topic::add_producer`]), made under the
    /// state lock; an added producer is in `st.producers` when it returns.
    fn admit(
        &self,
        st: &mut State,
        spec: &ProducerSpec,
        requested_epoch: Option<u64>,
        waiting_since: Option<u64>,
    ) -> BrokerResult<Admit> {
        if waiting_since.is_some_and(|g| g != st.fence_generation) {
            return Err(BrokerError::ProducerFenced(format!(
                "fenced out of topic {} by an ExclusiveWithFencing producer",
                self.name
            )));
        }
        if st.producers.values().any(|p| p.name == spec.name) {
            return Err(BrokerError::ProducerBusy(format!(
                "producer with name '{}' is already connected to topic {}",
                spec.name, self.name
            )));
        }
        let exclusive = st
            .producers
            .values()
            .find(|p| p.mode != ProducerAccessMode::Shared)
            .map(|p| p.name.clone());
        let mut fenced_out = Vec::new();
        let epoch = match spec.mode {
            ProducerAccessMode::Shared => {
                if let Some(holder) = exclusive {
                    return Err(BrokerError::ProducerBusy(format!(
                        "topic {} has an existing exclusive producer: {holder}",
                        self.name
                    )));
                }
                if st.waiting_exclusive > 0 {
                    return Err(BrokerError::ProducerBusy(format!(
                        "topic {} has a producer waiting for exclusive access",
                        self.name
                    )));
                }
                None
            }
            mode => {
                if mode == ProducerAccessMode::ExclusiveWithFencing {
                    // Everyone else goes: waiters fail, producers are closed.
                    st.fence_generation += 1;
                    fenced_out = detach_all(&mut st.producers).into_values().collect();
                } else if !st.producers.is_empty() {
                    if mode == ProducerAccessMode::WaitForExclusive {
                        return Ok(Admit::Wait);
                    }
                    return Err(BrokerError::ProducerFenced(match exclusive {
                        Some(holder) => format!(
                            "topic {} has an existing exclusive producer: {holder}",
                            self.name
                        ),
                        None => format!("topic {} has existing shared producers", self.name),
                    }));
                }
                let current = st.topic_epoch;
                if let (Some(asked), Some(current)) = (requested_epoch, current)
                    && asked < current
                {
                    return Err(BrokerError::ProducerFenced(format!(
                        "topic {} epoch has already moved: current epoch {current}, producer \
                         epoch {asked}",
                        self.name
                    )));
                }
                let epoch =
                    requested_epoch.unwrap_or_else(|| current.map_or(0, |c| c.saturating_add(1)));
                st.topic_epoch = Some(epoch);
                Some(epoch)
            }
        };
        info!(topic = %self.name, producer = spec.producer_id, name = %spec.name,
            mode = ?spec.mode, epoch = ?epoch, "producer added");
        self.dedup.producer_added(&spec.name);
        st.producers.insert(spec.key, spec.clone());
        self.touch();
        Ok(Admit::Added { epoch, fenced_out })
    }

    pub fn remove_producer(&self, key: u64) {
        self.touch();
        let removed = self.state().producers.remove(&key);
        if let Some(spec) = removed {
            spec.attached.store(false, Ordering::Release);
            self.dedup.producer_removed(&spec.name);
            self.producer_left.notify_waiters();
        }
    }

    /// The subscription `name`, created (with its cursor) if needed.
    pub async fn subscription(
        &self,
        name: &str,
        durable: bool,
        start: StartAt,
    ) -> BrokerResult<Arc<Subscription>> {
        self.check_open()?;
        if name == DEDUP_CURSOR {
            return Err(BrokerError::NotAllowed(format!(
                "{DEDUP_CURSOR} is the deduplication cursor, not a subscription"
            )));
        }
        if let Some(s) = self
            .state()
            .subscriptions
            .get(name)
            .filter(|s| !s.is_closed())
        {
            return Ok(Arc::clone(s));
        }
        let cursor = match (durable, start) {
            (true, StartAt::Initial(initial)) => self.ml.open_cursor(name, initial).await?,
            (true, StartAt::Position(_, initial)) => self.ml.open_cursor(name, initial).await?,
            (false, StartAt::Initial(initial)) => self.ml.new_non_durable_cursor(initial),
            (false, StartAt::Position(p, initial)) => {
                if self.ml.last_confirmed().is_some_and(|last| p <= last) {
                    self.ml.new_non_durable_cursor_at(p)
                } else {
                    self.ml.new_non_durable_cursor(initial)
                }
            }
        };
        let batch = self
            .host
            .upgrade()
            .map_or(100, |h| h.dispatch_batch_entries());
        let mut st = self.state();
        if let Some(s) = st.subscriptions.get(name).filter(|s| !s.is_closed()) {
            return Ok(Arc::clone(s));
        }
        let sub = Subscription::start(
            self.name.to_string(),
            name.to_owned(),
            Arc::clone(&self.ml),
            cursor,
            self.name.partition(),
            batch,
        );
        st.subscriptions.insert(name.to_owned(), Arc::clone(&sub));
        drop(st);
        self.touch();
        Ok(sub)
    }

    /// Forgets a subscription (unsubscribed, or a reader that left) and stops it.
    pub async fn drop_subscription(&self, name: &str) {
        self.touch();
        let sub = self.state().subscriptions.remove(name);
        if let Some(sub) = sub {
            sub.close().await;
        }
    }

    /// The last confirmed position.
    pub fn last_confirmed(&self) -> Option<Position> {
        self.ml.last_confirmed()
    }

    /// Closes the topic (clients are told to reconnect), then deletes its managed ledger with
    /// its ledgers and cursors.
    pub async fn delete(&self) -> Result<(), magnetar_managed_ledger::ManagedLedgerError> {
        self.close().await;
        self.ml.delete().await
    }

    /// Stops the subscriptions, closes the managed ledger, then tells every client to
    /// reconnect (after the receipts of what was stored, so a producer resends nothing stored).
    pub async fn close(&self) {
        if let Some(q) = self.quiesce().await {
            q.notify(None);
        }
    }

    /// The first half of a graceful close or of a bundle transfer: new work is refused,
    /// producers are detached (SENDs already on the wire are ignored; the client resends them
    /// after reconnecting), each subscription handles what is queued to it (acks) and stops,
    /// and the managed ledger is closed (pending writes complete, cursors flushed). Clients
    /// are told nothing yet: [`Quiesced::notify`] tells them where to go once that is known.
    /// None if the topic was already closing.
    pub async fn quiesce(&self) -> Option<Quiesced> {
        let (producers, subs) = self.begin_close()?;
        let consumers: Vec<ClosedConsumer> =
            futures::future::join_all(subs.values().map(|s| s.close_detached()))
                .await
                .into_iter()
                .flatten()
                .collect();
        self.finish_close().await;
        Some(Quiesced {
            producers,
            consumers,
        })
    }

    /// Stops serving at once, waiting on nothing (the bundle's lease is lost: another broker
    /// may own the topic now): new work is refused, every producer is told to reconnect
    /// (CLOSE_PRODUCER) and every subscription stops dispatching and closes its consumers, so
    /// clients look the topic up again; the managed ledger writes nothing more
    /// ([`ManagedLedger::abandon`]). Returns false if the topic was already closing.
    /// [`Topic::finish_close`] then releases the rest.
    pub fn stop_serving(&self) -> bool {
        let Some((producers, subs)) = self.begin_close() else {
            return false;
        };
        for p in producers {
            p.conn.close_producer(p.producer_id, None);
        }
        self.ml.abandon();
        for s in subs.values() {
            s.stop_now();
        }
        true
    }

    /// Marks the topic closed and detaches every producer (nothing is sent to clients); returns
    /// them and the subscriptions to stop (None: already closing).
    fn begin_close(&self) -> Option<(Vec<ProducerSpec>, Subscriptions)> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (producers, subs) = {
            let mut st = self.state();
            (
                detach_all(&mut st.producers),
                std::mem::take(&mut st.subscriptions),
            )
        };
        self.producer_left.notify_waiters();
        Some((producers.into_values().collect(), subs))
    }

    /// The slow half of closing: snapshots deduplication state and closes the managed ledger
    /// (cursor flushes, ledger close: metadata and bookie round trips), then forgets the topic.
    pub(crate) async fn finish_close(&self) {
        self.dedup.snapshot_on_close();
        if let Err(e) = self.ml.close().await {
            warn!(topic = %self.name, error = %e, "closing the managed ledger failed");
        }
        info!(topic = %self.name, "topic closed");
        if let Some(host) = self.host.upgrade() {
            host.forget_topic(self);
        }
    }
}
