//! [`Subscription`]: one named subscription of a topic (or one reader) — its cursor, its
//! consumers, and the dispatcher that sends them entries.
//!
//! Each subscription is an **actor**: one task owns the cursor's read side, the consumers and
//! their permits, the messages delivered but not acknowledged (`pending`) and the ones to deliver
//! again (`redeliver`); connections talk to it through a bounded command queue, so no lock is
//! held across an `.await`. After every command, and whenever the managed ledger confirms new
//! entries (its last-confirmed watch), the actor dispatches:
//!
//! 1. positions to redeliver first (consumer gone, negative ack, REDELIVER), oldest first,
//!    skipping the ones acknowledged meanwhile;
//! 2. then new entries from the cursor's read position (tailing entries come from the entry
//!    cache).
//!
//! Permits are counted in **messages**: an entry holding a batch costs its
//! `num_messages_in_batch`. Exclusive and Failover subscriptions send to the active consumer
//! (Failover: the first connected for a non-partitioned topic, `partition % n` of the consumers
//! sorted by priority and name for a partition; every change is announced with
//! ACTIVE_CONSUMER_CHANGE); Shared subscriptions go round-robin over consumers with permits.
//! Key_Shared subscriptions route each entry by the sticky hash of its ordering key (else its
//! partition key) to the consumer that owns it (`key_shared.rs`: AUTO_SPLIT consistent hashing
//! or STICKY declared ranges, and PIP-379 draining hashes); an entry whose consumer has no
//! permits, whose hash is draining at another consumer, or that no STICKY consumer covers
//! waits in `redeliver` without blocking other keys (at most `REPLAY_MAX` entries). Entries
//! that find no consumer with permits go back to `redeliver`, so order is kept. On Shared
//! subscriptions the chunks of one chunked message all go to the consumer that got its chunk 0
//! (`chunks.rs`); a chunk whose consumer has no permits waits in `redeliver` like a Key_Shared
//! entry.
//!
//! Shared and Key_Shared subscriptions hold back entries whose `deliver_at_time` is in the
//! future in a [`DelayedTracker`] (`delayed.rs`) and a timer in the actor's loop releases them
//! into `redeliver` when due; Exclusive and Failover deliver them at once, as Pulsar.
//!
//! MESSAGE frames are the stored entry behind a MESSAGE command: the client's own bytes,
//! checksum included, never re-encoded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use magnetar_proto::pulsar::api::command_subscribe::SubType;
use magnetar_proto::pulsar::{MessageFrame, Payload, commands};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::chunks::{ChunkAssignor, ChunkMeta, Route};
use crate::connection::{ConnTx, Outbound};
use crate::delayed::{DelayedTracker, now_ms};
use crate::error::{BrokerError, BrokerResult};
use crate::key_shared::{KeyShared, KeySharedPolicy, sticky_hash};
use crate::managed_ledger::{ManagedCursor, ManagedLedger, Position, batch_acks};

/// Commands queued per subscription before connections wait.
const COMMAND_QUEUE: usize = 1024;
/// Bytes read per dispatch round at most (at least one entry is always read).
const READ_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Entries scanned per step when seeking by publish time.
const SEEK_SCAN_BATCH: usize = 256;
/// Key_Shared: entries waiting for a consumer without permits, at most; beyond it no new
/// entries are read until they drain.
const REPLAY_MAX: usize = 10_000;

/// One consumer as the subscription sees it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Broker-unique key of this consumer (not the client's id, which is per connection).
    pub key: u64,
    /// The client's consumer id (goes into MESSAGE frames).
    pub consumer_id: u64,
    pub name: String,
    pub priority: i32,
    pub sub_type: SubType,
    /// Key_Shared: mode, STICKY ranges and out-of-order permission (CommandSubscribe.keySharedMeta).
    pub key_shared: KeySharedPolicy,
    pub conn: ConnTx,
}

/// Where SEEK moves the subscription.
#[derive(Debug, Clone, Copy)]
pub enum SeekTarget {
    /// To this entry (it is delivered again).
    Position(Position),
    /// To the first entry published at or after this time (ms since the epoch).
    PublishTime(u64),
}

/// One acknowledged message id.
#[derive(Debug, Clone)]
pub struct AckedId {
    pub position: Position,
    /// Batch-index ack: the entry's batch indexes still unacknowledged (`BitSet` words, see
    /// [`crate::managed_ledger::batch_acks`]); empty when the whole entry is acknowledged.
    pub unacked: Vec<u64>,
}

enum Command {
    Add {
        consumer: ConsumerSpec,
        done: oneshot::Sender<BrokerResult<()>>,
    },
    Remove {
        key: u64,
        done: Option<oneshot::Sender<()>>,
    },
    Flow {
        key: u64,
        permits: u32,
    },
    Ack {
        cumulative: bool,
        ids: Vec<AckedId>,
    },
    Redeliver {
        key: u64,
        positions: Option<Vec<Position>>,
    },
    Seek {
        target: SeekTarget,
        done: oneshot::Sender<BrokerResult<()>>,
    },
    Unsubscribe {
        key: u64,
        done: oneshot::Sender<BrokerResult<()>>,
    },
    MarkDelete {
        done: oneshot::Sender<Option<Position>>,
    },
    Snapshot {
        done: oneshot::Sender<SubscriptionSnapshot>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// What the admin API's stats show of a subscription: its type, consumers and counters.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionSnapshot {
    /// The type of the connected consumers (None: no consumer connected).
    pub sub_type: Option<SubType>,
    pub consumers: Vec<ConsumerSnapshot>,
    /// Exclusive / Failover: the name of the consumer that receives.
    pub active_consumer: Option<String>,
    /// Messages and bytes dispatched since the subscription started.
    pub msg_out: u64,
    pub bytes_out: u64,
    /// Delivered and not yet acknowledged (entries).
    pub unacked: u64,
}

/// One consumer in a [`SubscriptionSnapshot`].
#[derive(Debug, Clone)]
pub struct ConsumerSnapshot {
    /// The broker-unique key of the consumer ([`ConsumerSpec::key`]).
    pub key: u64,
    pub name: String,
    pub consumer_id: u64,
    pub permits: i64,
    /// Entries delivered to it and not yet acknowledged.
    pub unacked: u64,
    pub msg_out: u64,
    pub bytes_out: u64,
}

/// Handle of a subscription actor. Cheap to share.
#[derive(Debug)]
pub struct Subscription {
    name: String,
    durable: bool,
    tx: mpsc::Sender<Command>,
}

fn gone(name: &str) -> BrokerError {
    BrokerError::NotReady(format!("subscription {name} is closed"))
}

impl Subscription {
    /// Starts the actor of subscription `name` over `cursor`. `partition` picks the active
    /// consumer of Failover subscriptions on partitions.
    pub fn start(
        topic: String,
        name: String,
        ml: Arc<ManagedLedger>,
        cursor: Arc<ManagedCursor>,
        partition: Option<u32>,
        batch_entries: usize,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let durable = cursor.is_durable();
        let lac = ml.subscribe_last_confirmed();
        let actor = Actor {
            name: name.clone(),
            ml,
            cursor,
            partition,
            batch_entries: batch_entries.max(1),
            sub_type: None,
            consumers: Vec::new(),
            active: None,
            next_rr: 0,
            pending: BTreeMap::new(),
            redeliver: BTreeSet::new(),
            redelivery_counts: HashMap::new(),
            key_hashes: HashMap::new(),
            key_shared: KeyShared::new(),
            chunks: ChunkAssignor::default(),
            delayed: DelayedTracker::new(),
            msg_out: 0,
            bytes_out: 0,
        };
        let span = info_span!("subscription", %topic, subscription = %name);
        tokio::spawn(actor.run(rx, lac).instrument(span));
        Arc::new(Subscription { name, durable, tx })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// True once the actor stopped (closed or unsubscribed).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> BrokerResult<T> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(make(done))
            .await
            .map_err(|_| gone(&self.name))?;
        rx.await.map_err(|_| gone(&self.name))
    }

    /// Adds a consumer; fails with ConsumerBusy on an exclusive conflict.
    pub async fn add_consumer(&self, consumer: ConsumerSpec) -> BrokerResult<()> {
        self.call(|done| Command::Add { consumer, done }).await?
    }

    /// Removes a consumer; its unacknowledged messages go back to the subscription.
    pub async fn remove_consumer(&self, key: u64) {
        let _ = self
            .call(|done| Command::Remove {
                key,
                done: Some(done),
            })
            .await;
    }

    pub async fn flow(&self, key: u64, permits: u32) {
        let _ = self.tx.send(Command::Flow { key, permits }).await;
    }

    pub async fn ack(&self, cumulative: bool, ids: Vec<AckedId>) {
        let _ = self.tx.send(Command::Ack { cumulative, ids }).await;
    }

    /// Delivers again the given positions (`None`: every unacked message of the consumer).
    pub async fn redeliver(&self, key: u64, positions: Option<Vec<Position>>) {
        let _ = self.tx.send(Command::Redeliver { key, positions }).await;
    }

    pub async fn seek(&self, target: SeekTarget) -> BrokerResult<()> {
        self.call(|done| Command::Seek { target, done }).await?
    }

    pub async fn unsubscribe(&self, key: u64) -> BrokerResult<()> {
        self.call(|done| Command::Unsubscribe { key, done }).await?
    }

    pub async fn mark_delete_position(&self) -> Option<Position> {
        self.call(|done| Command::MarkDelete { done })
            .await
            .ok()
            .flatten()
    }

    /// Consumers, type and counters (None once the actor stopped).
    pub async fn snapshot(&self) -> Option<SubscriptionSnapshot> {
        self.call(|done| Command::Snapshot { done }).await.ok()
    }

    /// Disconnects every consumer (CLOSE_CONSUMER) and stops the actor; the cursor's state is
    /// left for the managed ledger to flush.
    pub async fn close(&self) {
        let _ = self.call(|done| Command::Close { done }).await;
    }
}

#[derive(Debug)]
struct Consumer {
    spec: ConsumerSpec,
    permits: i64,
    msg_out: u64,
    bytes_out: u64,
}

struct Actor {
    name: String,
    ml: Arc<ManagedLedger>,
    cursor: Arc<ManagedCursor>,
    partition: Option<u32>,
    batch_entries: usize,
    sub_type: Option<SubType>,
    /// In connection order.
    consumers: Vec<Consumer>,
    /// Exclusive / Failover: the consumer that receives.
    active: Option<u64>,
    next_rr: usize,
    /// Delivered, not acknowledged: position → consumer key.
    pending: BTreeMap<Position, u64>,
    redeliver: BTreeSet<Position>,
    redelivery_counts: HashMap<Position, u32>,
    /// Key_Shared: sticky hash of entries waiting in `redeliver`.
    key_hashes: HashMap<Position, u32>,
    /// Key_Shared: hash ownership and draining hashes.
    key_shared: KeyShared,
    /// Shared: the consumer each chunked message's chunks go to.
    chunks: ChunkAssignor,
    /// Shared / Key_Shared: entries read before their delivery time.
    delayed: DelayedTracker,
    /// Messages and bytes dispatched (admin stats).
    msg_out: u64,
    bytes_out: u64,
}

enum Flow {
    Continue,
    Stop,
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut lac: watch::Receiver<Option<Position>>,
    ) {
        let mut lac_open = true;
        loop {
            // The earliest delayed entry wakes the actor (the tracker holds future times only).
            let wake = self.delayed.next_deadline_ms().map(|at| {
                tokio::time::Instant::now()
                    + std::time::Duration::from_millis(at.saturating_sub(now_ms()))
            });
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Flow::Stop = self.handle(cmd).await {
                        break;
                    }
                }
                changed = lac.changed(), if lac_open => {
                    if changed.is_err() {
                        lac_open = false;
                    }
                }
                () = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)),
                    if wake.is_some() => {}
            }
            self.dispatch().await;
        }
        debug!("subscription actor stopped");
    }

    fn consumer(&mut self, key: u64) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|c| c.spec.key == key)
    }

    async fn handle(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Add { consumer, done } => {
                let result = self.add(consumer).await;
                let _ = done.send(result);
            }
            Command::Remove { key, done } => {
                self.remove(key).await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Command::Flow { key, permits } => {
                if let Some(c) = self.consumer(key) {
                    c.permits = c.permits.saturating_add(i64::from(permits));
                }
            }
            Command::Ack { cumulative, ids } => self.ack(cumulative, ids),
            Command::Redeliver { key, positions } => self.redeliver_for(key, positions),
            Command::Seek { target, done } => {
                let result = self.seek(target).await;
                let _ = done.send(result);
            }
            Command::Unsubscribe { key, done } => {
                if self.consumers.iter().any(|c| c.spec.key != key) {
                    let _ = done.send(Err(BrokerError::NotAllowed(format!(
                        "subscription {} has other connected consumers",
                        self.name
                    ))));
                    return Flow::Continue;
                }
                let result = if self.cursor.is_durable() {
                    self.ml
                        .delete_cursor(self.cursor.name())
                        .await
                        .map_err(BrokerError::from)
                } else {
                    Ok(())
                };
                let ok = result.is_ok();
                let _ = done.send(result);
                if ok {
                    info!("unsubscribed");
                    return Flow::Stop;
                }
            }
            Command::MarkDelete { done } => {
                let _ = done.send(self.cursor.mark_delete_position());
            }
            Command::Snapshot { done } => {
                let _ = done.send(self.snapshot());
            }
            Command::Close { done } => {
                for c in std::mem::take(&mut self.consumers) {
                    c.spec
                        .conn
                        .send_command(commands::close_consumer(c.spec.consumer_id, 0))
                        .await;
                }
                let _ = done.send(());
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    async fn add(&mut self, consumer: ConsumerSpec) -> BrokerResult<()> {
        let ty = consumer.sub_type;
        if !self.consumers.is_empty() {
            if self.sub_type != Some(ty) {
                return Err(BrokerError::ConsumerBusy(format!(
                    "subscription {} is of a different type",
                    self.name
                )));
            }
            if ty == SubType::Exclusive {
                return Err(BrokerError::ConsumerBusy(format!(
                    "exclusive consumer for subscription {} is already connected",
                    self.name
                )));
            }
        }
        if ty == SubType::KeyShared {
            // Refuses STICKY range conflicts and mode mismatches before anything changes.
            self.key_shared.add(
                consumer.key,
                &consumer.name,
                &consumer.key_shared,
                &self.pending,
            )?;
        }
        if self.consumers.is_empty() {
            self.sub_type = Some(ty);
            // A new first consumer starts from the oldest unacknowledged message.
            self.requeue_all_pending();
            if !self.delays_delivery() {
                // Exclusive / Failover receive delayed messages at once.
                for p in self.delayed.take_all() {
                    self.redeliver.insert(p);
                }
            }
        }
        info!(consumer = consumer.consumer_id, key = consumer.key, name = %consumer.name,
            sub_type = ?ty, "consumer added");
        self.consumers.push(Consumer {
            spec: consumer,
            permits: 0,
            msg_out: 0,
            bytes_out: 0,
        });
        self.pick_active(true).await;
        Ok(())
    }

    async fn remove(&mut self, key: u64) {
        let before = self.consumers.len();
        self.consumers.retain(|c| c.spec.key != key);
        if self.consumers.len() == before {
            return;
        }
        info!(key, "consumer removed");
        let theirs: Vec<Position> = self
            .pending
            .iter()
            .filter(|(_, k)| **k == key)
            .map(|(p, _)| *p)
            .collect();
        for p in theirs {
            self.pending.remove(&p);
            self.requeue(p);
        }
        self.key_shared.remove(key, &self.pending);
        self.chunks.remove_consumer(key);
        self.pick_active(false).await;
    }

    fn snapshot(&self) -> SubscriptionSnapshot {
        let consumers = self
            .consumers
            .iter()
            .map(|c| ConsumerSnapshot {
                key: c.spec.key,
                name: c.spec.name.clone(),
                consumer_id: c.spec.consumer_id,
                permits: c.permits,
                unacked: self.pending.values().filter(|k| **k == c.spec.key).count() as u64,
                msg_out: c.msg_out,
                bytes_out: c.bytes_out,
            })
            .collect();
        let active_consumer = self.active.and_then(|a| {
            self.consumers
                .iter()
                .find(|c| c.spec.key == a)
                .map(|c| c.spec.name.clone())
        });
        SubscriptionSnapshot {
            sub_type: (!self.consumers.is_empty())
                .then_some(self.sub_type)
                .flatten(),
            consumers,
            active_consumer,
            msg_out: self.msg_out,
            bytes_out: self.bytes_out,
            unacked: self.pending.len() as u64,
        }
    }

    fn requeue(&mut self, p: Position) {
        if !self.cursor.is_acked(p) {
            *self.redelivery_counts.entry(p).or_default() += 1;
            self.redeliver.insert(p);
        }
    }

    fn requeue_all_pending(&mut self) {
        let all: Vec<Position> = self.pending.keys().copied().collect();
        self.pending.clear();
        for p in all {
            self.requeue(p);
        }
    }

    /// Exclusive / Failover: chooses the active consumer; announces changes (Failover).
    async fn pick_active(&mut self, added: bool) {
        let new_active = match self.sub_type {
            Some(SubType::Exclusive) => self.consumers.first().map(|c| c.spec.key),
            Some(SubType::Failover) => match self.partition {
                None => self.consumers.first().map(|c| c.spec.key),
                Some(partition) => {
                    let mut sorted: Vec<&Consumer> = self.consumers.iter().collect();
                    sorted.sort_by(|a, b| {
                        (a.spec.priority, &a.spec.name).cmp(&(b.spec.priority, &b.spec.name))
                    });
                    let n = sorted.len().max(1);
                    sorted.get(partition as usize % n).map(|c| c.spec.key)
                }
            },
            _ => None,
        };
        let changed = new_active != self.active;
        if changed {
            // The old active consumer's unacked messages go to the new one, in order.
            if let Some(old) = self.active {
                let theirs: Vec<Position> = self
                    .pending
                    .iter()
                    .filter(|(_, k)| **k == old)
                    .map(|(p, _)| *p)
                    .collect();
                for p in theirs {
                    self.pending.remove(&p);
                    self.redeliver.insert(p);
                }
            }
            self.active = new_active;
        }
        if self.sub_type == Some(SubType::Failover) && (changed || added) {
            for c in &self.consumers {
                let is_active = Some(c.spec.key) == self.active;
                c.spec
                    .conn
                    .send_command(commands::active_consumer_change(
                        c.spec.consumer_id,
                        is_active,
                    ))
                    .await;
            }
        }
    }

    fn ack(&mut self, cumulative: bool, ids: Vec<AckedId>) {
        if cumulative {
            if let Some(last) = ids.into_iter().max_by_key(|i| i.position) {
                let pos = last.position;
                // Inside a batch: the entry itself stays pending until its last index is acked.
                let whole = if last.unacked.is_empty() {
                    self.cursor.ack_cumulative(pos);
                    true
                } else {
                    self.cursor.ack_cumulative_batch(pos, &last.unacked)
                };
                let done: Vec<Position> = self
                    .pending
                    .range(..=pos)
                    .map(|(p, _)| *p)
                    .filter(|p| whole || *p < pos)
                    .collect();
                for p in done {
                    self.pending.remove(&p);
                    self.redelivery_counts.remove(&p);
                }
                let stale: Vec<Position> = self
                    .redeliver
                    .range(..=pos)
                    .copied()
                    .filter(|p| whole || *p < pos)
                    .collect();
                for p in stale {
                    self.redeliver.remove(&p);
                }
            }
            return;
        }
        let mut positions: Vec<Position> = Vec::with_capacity(ids.len());
        let mut completed: Vec<Position> = Vec::new();
        for id in ids {
            if id.unacked.is_empty() {
                positions.push(id.position);
            } else if self.cursor.ack_batch_indexes(id.position, &id.unacked) {
                completed.push(id.position);
            }
        }
        if !positions.is_empty() {
            self.cursor.ack_individual(&positions);
        }
        positions.extend(completed);
        for p in positions {
            self.pending.remove(&p);
            self.redeliver.remove(&p);
            self.redelivery_counts.remove(&p);
        }
    }

    fn redeliver_for(&mut self, key: u64, positions: Option<Vec<Position>>) {
        let chosen: Vec<Position> = match positions {
            Some(ps) => ps
                .into_iter()
                .filter(|p| self.pending.get(p) == Some(&key))
                .collect(),
            None => self
                .pending
                .iter()
                .filter(|(_, k)| **k == key)
                .map(|(p, _)| *p)
                .collect(),
        };
        for p in chosen {
            self.pending.remove(&p);
            self.requeue(p);
        }
    }

    async fn seek(&mut self, target: SeekTarget) -> BrokerResult<()> {
        let position = match target {
            SeekTarget::Position(p) => p,
            SeekTarget::PublishTime(t) => self.find_by_publish_time(t).await?,
        };
        info!(%position, "seek: consumers are disconnected and resubscribe");
        self.pending.clear();
        self.redeliver.clear();
        self.redelivery_counts.clear();
        self.key_hashes.clear();
        // Consumers are all disconnected below; entries are read again from `position`.
        self.key_shared = KeyShared::new();
        self.chunks.clear();
        self.delayed.clear();
        self.cursor.reset(position);
        for c in std::mem::take(&mut self.consumers) {
            c.spec
                .conn
                .send_command(commands::close_consumer(c.spec.consumer_id, 0))
                .await;
        }
        self.active = None;
        Ok(())
    }

    /// The first entry whose publish time is ≥ `t` (after the last entry if none).
    async fn find_by_publish_time(&self, t: u64) -> BrokerResult<Position> {
        let mut from = self.ml.first_position().unwrap_or(Position::new(0, 0));
        loop {
            let batch = self
                .ml
                .read_entries(from, SEEK_SCAN_BATCH, READ_BYTES_MAX)
                .await?;
            let Some(&(last, _)) = batch.last() else {
                return Ok(self.ml.last_confirmed().map_or(from, |p| p.next()));
            };
            for (p, entry) in &batch {
                if entry_info(entry).publish_time >= t {
                    return Ok(*p);
                }
            }
            from = last.next();
        }
    }

    fn eligible(&self) -> Vec<usize> {
        match self.sub_type {
            Some(SubType::Exclusive) | Some(SubType::Failover) => self
                .consumers
                .iter()
                .position(|c| Some(c.spec.key) == self.active && c.permits > 0)
                .into_iter()
                .collect(),
            _ => (0..self.consumers.len())
                .filter(|&i| self.consumers.get(i).is_some_and(|c| c.permits > 0))
                .collect(),
        }
    }

    fn pick(&mut self) -> Option<usize> {
        let eligible = self.eligible();
        if eligible.is_empty() {
            return None;
        }
        let i = eligible.get(self.next_rr % eligible.len()).copied();
        self.next_rr = self.next_rr.wrapping_add(1);
        i
    }

    fn key_shared(&self) -> bool {
        self.sub_type == Some(SubType::KeyShared)
    }

    /// Key_Shared: the consumer (index) to send an entry of sticky hash `hash` to now — its
    /// owner, if it has permits and the hash is not draining at another consumer.
    fn key_target(&mut self, hash: u32) -> Option<usize> {
        let owner = self.key_shared.owner(hash)?;
        let i = self.consumers.iter().position(|c| c.spec.key == owner)?;
        let has_permits = self.consumers.get(i).is_some_and(|c| c.permits > 0);
        if !has_permits || self.key_shared.blocked(hash, owner, &self.pending) {
            return None;
        }
        Some(i)
    }

    fn shared(&self) -> bool {
        self.sub_type == Some(SubType::Shared)
    }

    /// Shared: the consumer (index) for a chunk of a chunked message (`chunks.rs`) — the one
    /// that got the message's chunk 0; a chunk whose consumer has no permits waits in
    /// `redeliver` (counted in `parked`) without holding back other messages.
    fn chunk_target(
        &mut self,
        position: Position,
        chunk: &ChunkMeta,
        parked: &mut usize,
    ) -> Option<usize> {
        let Route::Owner(owner) = self.chunks.route(chunk, position) else {
            return self.pick();
        };
        let Some(i) = self.consumers.iter().position(|c| c.spec.key == owner) else {
            // Not reached (removal drops the owner's mappings); route as an unmapped chunk.
            self.chunks.remove_consumer(owner);
            return self.pick();
        };
        if self.consumers.get(i).is_some_and(|c| c.permits > 0) {
            return Some(i);
        }
        self.chunks.park(position, chunk, &self.redeliver);
        *parked += 1;
        None
    }

    /// Shared: true while the parked chunk at `p` waits for its consumer's permits.
    fn chunk_waits(&self, p: Position) -> bool {
        self.chunks.parked_owner(p).is_some_and(|owner| {
            self.consumers
                .iter()
                .any(|c| c.spec.key == owner && c.permits <= 0)
        })
    }

    /// Shared and Key_Shared hold delayed messages back; Exclusive and Failover do not.
    fn delays_delivery(&self) -> bool {
        matches!(self.sub_type, Some(SubType::Shared | SubType::KeyShared))
    }

    /// Delayed entries whose time came go to `redeliver` (dispatched oldest first).
    fn release_due_delayed(&mut self) {
        if self.delayed.is_empty() {
            return;
        }
        for p in self.delayed.take_due(now_ms()) {
            self.redeliver.insert(p);
        }
    }

    async fn dispatch(&mut self) {
        self.release_due_delayed();
        loop {
            let permits: i64 = self
                .eligible()
                .iter()
                .filter_map(|&i| self.consumers.get(i))
                .map(|c| c.permits)
                .sum();
            if permits <= 0 {
                return;
            }
            let want = (permits as usize).min(self.batch_entries);
            let entries = match self.next_entries(want).await {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "dispatch read failed");
                    return;
                }
            };
            if entries.is_empty() {
                return;
            }
            let mut sent = 0usize;
            let mut delayed = 0usize;
            let mut parked = 0usize;
            let now = now_ms();
            for (position, entry) in entries {
                let info = entry_info(&entry);
                if self.delays_delivery()
                    && let Some(at) = info.deliver_at_ms
                    && self.delayed.add(position, at, now)
                {
                    delayed += 1;
                    continue;
                }
                let hash = sticky_hash(info.key_hash);
                let target = if self.key_shared() {
                    match self.key_target(hash) {
                        Some(i) => Some(i),
                        None => {
                            self.key_hashes.insert(position, hash);
                            None
                        }
                    }
                } else if let Some(chunk) = info.chunk.filter(|_| self.shared()) {
                    self.chunk_target(position, &chunk, &mut parked)
                } else {
                    self.pick()
                };
                let Some(i) = target else {
                    self.redeliver.insert(position);
                    continue;
                };
                sent += 1;
                let redelivery_count = self.redelivery_counts.get(&position).copied().unwrap_or(0);
                let Some(c) = self.consumers.get_mut(i) else {
                    self.redeliver.insert(position);
                    continue;
                };
                // A partially acknowledged batch carries its unacked indexes; permits count
                // only those (the client skips the rest), as Pulsar's dispatcher does.
                let unacked = self.cursor.batch_ack_set(position);
                let messages = batch_acks::messages_to_deliver(unacked.as_deref(), info.messages);
                c.permits -= i64::from(messages);
                let entry_bytes = entry.len() as u64;
                c.msg_out += u64::from(messages);
                c.bytes_out += entry_bytes;
                let frame = MessageFrame {
                    command: commands::message(
                        c.spec.consumer_id,
                        commands::message_id(position.ledger.0, position.entry.0),
                        redelivery_count,
                        unacked.as_deref().map(batch_acks::to_wire).unwrap_or_default(),
                    ),
                    entry,
                };
                let key = c.spec.key;
                let conn = c.spec.conn.clone();
                self.msg_out += u64::from(messages);
                self.bytes_out += entry_bytes;
                self.pending.insert(position, key);
                if self.key_shared() {
                    self.key_shared.delivered(position, hash, &self.pending);
                }
                if let Some(chunk) = info.chunk.filter(|_| self.shared()) {
                    let cursor = &self.cursor;
                    self.chunks
                        .delivered(&chunk, position, key, |p| cursor.is_acked(p));
                }
                if !conn.send(Outbound::Message(frame)).await {
                    // The connection is gone; it removes the consumer shortly.
                    self.pending.remove(&position);
                    self.redeliver.insert(position);
                    if let Some(c) = self.consumer(key) {
                        c.permits = 0;
                    }
                }
            }
            // Parked chunks are skipped by the next read, so reading on makes progress.
            if sent == 0 && delayed == 0 && parked == 0 {
                return;
            }
        }
    }

    /// Up to `want` entries: redeliveries first, then new entries.
    async fn next_entries(
        &mut self,
        want: usize,
    ) -> crate::managed_ledger::MlResult<Vec<(Position, Bytes)>> {
        let mut out = Vec::new();
        let waiting: Vec<Position> = self.redeliver.iter().copied().collect();
        for p in waiting {
            if out.len() >= want {
                break;
            }
            if !self.cursor.is_acked(p) && !self.pending.contains_key(&p) {
                // Key_Shared: leave entries whose consumer has no permits where they are.
                if let Some(&hash) = self.key_hashes.get(&p)
                    && self.key_target(hash).is_none()
                {
                    continue;
                }
                // Shared: a chunk waiting for its message's consumer to get permits.
                if self.chunk_waits(p) {
                    continue;
                }
            }
            self.redeliver.remove(&p);
            self.key_hashes.remove(&p);
            self.chunks.unpark(p);
            if self.cursor.is_acked(p) || self.pending.contains_key(&p) {
                continue;
            }
            let mut got = self.ml.read_entries(p, 1, READ_BYTES_MAX).await?;
            match got.pop() {
                Some((q, entry)) if q == p => out.push((q, entry)),
                _ => {
                    debug!(position = %p, "redelivery of an entry no longer stored skipped");
                }
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        if !self.cursor.has_entries_available()
            || self.redeliver.len() >= REPLAY_MAX
            || self.delayed.is_full()
        {
            return Ok(out);
        }
        let batch = self.cursor.read_entries(want, READ_BYTES_MAX).await?;
        Ok(batch
            .into_iter()
            .filter(|(p, _)| !self.pending.contains_key(p))
            .collect())
    }
}

/// What the dispatcher needs from an entry's metadata.
#[derive(Debug, Clone, Copy)]
pub struct EntryInfo {
    /// Messages in the entry (`num_messages_in_batch`, 1 when absent or unreadable).
    pub messages: u32,
    pub publish_time: u64,
    /// Murmur3 hash of the ordering key, else the partition key, else of no key.
    pub key_hash: u32,
    /// `deliver_at_time`: not to be delivered before (ms since the epoch; Shared / Key_Shared).
    pub deliver_at_ms: Option<u64>,
    /// A chunk of a chunked message: its message, chunk id and chunk count.
    pub chunk: Option<ChunkMeta>,
}

/// Reads an entry's metadata; an unreadable entry counts as one message published at 0.
pub fn entry_info(entry: &Bytes) -> EntryInfo {
    match Payload::parse(entry.clone()).and_then(|p| p.metadata()) {
        Ok(m) => {
            let key: &[u8] = match (&m.ordering_key, &m.partition_key) {
                (Some(k), _) if !k.is_empty() => k,
                (_, Some(k)) => k.as_bytes(),
                _ => NO_KEY,
            };
            EntryInfo {
                messages: u32::try_from(m.num_messages_in_batch.unwrap_or(1)).unwrap_or(1),
                publish_time: m.publish_time,
                key_hash: key_hash(key),
                deliver_at_ms: m.deliver_at_time.and_then(|t| u64::try_from(t).ok()),
                chunk: ChunkMeta::from_metadata(
                    &m.producer_name,
                    m.uuid.as_deref(),
                    m.chunk_id,
                    m.num_chunks_from_msg,
                ),
            }
        }
        Err(_) => EntryInfo {
            messages: 1,
            publish_time: 0,
            key_hash: key_hash(NO_KEY),
            deliver_at_ms: None,
            chunk: None,
        },
    }
}

/// The key of entries without one (Pulsar's `NONE_KEY`).
const NO_KEY: &[u8] = b"NONE_KEY";

fn key_hash(key: &[u8]) -> u32 {
    crate::key_shared::murmur3_32(key)
}
