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
//! checksum included, never re-encoded. Delivery never waits on a client: a consumer whose
//! connection's queue is full is **parked** (its permits set aside, the entry back in
//! `redeliver`) until that connection's writer reports room, so one client that stops reading
//! holds up no other consumer of the subscription.
//!
//! This file holds the handle, the commands and the actor's state; `actor.rs` the command
//! handling (consumers, acks, redelivery, seek), `dispatch.rs` the dispatcher, `entry.rs`
//! the per-entry metadata it routes by and `sink.rs` the seam to the clients.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use magnetar_proto::pulsar::api::command_subscribe::SubType;
use magnetar_proto::pulsar::{MessageFrame, Payload, commands};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::error::{BrokerError, BrokerResult};
use crate::subscription::chunks::{ChunkAssignor, ChunkMeta, Route};
use crate::subscription::delayed::DelayedTracker;
use crate::subscription::key_shared::{KeyShared, KeySharedPolicy, sticky_hash};
use magnetar_managed_ledger::{
    InitialPosition, ManagedCursor, ManagedLedger, Position, batch_acks,
};

mod actor;
pub mod chunks;
pub mod delayed;
mod dispatch;
mod entry;
pub use entry::find_by_publish_time;
pub mod key_shared;
mod sink;
#[cfg(test)]
mod tests;

pub use entry::{EntryInfo, entry_info};
pub use sink::{ConsumerSink, NotQueued};

/// Commands queued per subscription before connections wait.
const COMMAND_QUEUE: usize = 1024;
/// Bytes read per dispatch round at most (at least one entry is always read).
const READ_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Bounds of the wait before a failed dispatch read is retried (doubling from the first).
const READ_RETRY_MIN_MS: u64 = 50;
const READ_RETRY_MAX_MS: u64 = 5_000;
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
    /// The client (the protocol connection; a recording sink in tests).
    pub conn: Arc<dyn ConsumerSink>,
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
    /// [`magnetar_managed_ledger::batch_acks`]); empty when the whole entry is acknowledged.
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
        /// Answered when the client asked for an ack receipt.
        done: Option<oneshot::Sender<BrokerResult<()>>>,
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
    /// Stops the actor; its consumers are handed back, not told (the caller tells them when
    /// and where to reconnect).
    Close {
        done: oneshot::Sender<Vec<ClosedConsumer>>,
    },
}

/// A consumer of a subscription that stopped, still to be told to reconnect.
#[derive(Debug)]
pub struct ClosedConsumer {
    conn: Arc<dyn ConsumerSink>,
    consumer_id: u64,
}

impl ClosedConsumer {
    /// CLOSE_CONSUMER, naming the broker to reconnect to if the topic moved (PIP-307).
    pub fn notify(&self, assigned_broker_service_url: Option<&str>) {
        self.conn.send_control(commands::close_consumer_assigned(
            self.consumer_id,
            0,
            assigned_broker_service_url.map(str::to_owned),
        ));
    }
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
    /// Entries put back for redelivery since the subscription started (consumer gone,
    /// negative ack, redelivery request, ack timeout).
    pub redelivered: u64,
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
    /// Cancelled by [`Subscription::stop_now`]: the actor stops before anything queued.
    stop: CancellationToken,
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
        let stop = CancellationToken::new();
        let durable = cursor.is_durable();
        let lac = ml.subscribe_last_confirmed();
        let clock = Arc::clone(ml.clock());
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
            redelivered: 0,
            read_failures: 0,
            read_retry_at: None,
            clock,
            stop: stop.clone(),
            wake: Arc::default(),
        };
        let span = info_span!("subscription", %topic, subscription = %name);
        tokio::spawn(actor.run(rx, lac).instrument(span));
        Arc::new(Subscription {
            name,
            durable,
            tx,
            stop,
        })
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

    /// Acknowledges without waiting for the outcome (a refused ack is logged).
    pub async fn ack(&self, cumulative: bool, ids: Vec<AckedId>) {
        let _ = self
            .tx
            .send(Command::Ack {
                cumulative,
                ids,
                done: None,
            })
            .await;
    }

    /// Acknowledges and reports whether the ack was accepted (ack receipts).
    pub async fn ack_with_receipt(&self, cumulative: bool, ids: Vec<AckedId>) -> BrokerResult<()> {
        self.call(|done| Command::Ack {
            cumulative,
            ids,
            done: Some(done),
        })
        .await?
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
        for c in self.close_detached().await {
            c.notify(None);
        }
    }

    /// Stops the actor after what is queued to it (acks) and hands back its consumers without
    /// telling them anything yet (a bundle transfer tells them once the new owner serves).
    pub async fn close_detached(&self) -> Vec<ClosedConsumer> {
        self.call(|done| Command::Close { done })
            .await
            .unwrap_or_default()
    }

    /// Stops the actor without waiting and before anything queued to it (the topic's lease
    /// is lost): it dispatches nothing more and closes its consumers (CLOSE_CONSUMER). The
    /// cursor's state is left for the managed ledger, as with [`Subscription::close`].
    pub fn stop_now(&self) {
        self.stop.cancel();
    }
}

#[derive(Debug)]
struct Consumer {
    spec: ConsumerSpec,
    permits: i64,
    /// Permits set aside while the consumer is parked: its connection's queue was full, so
    /// it gets nothing until the queue drains (the actor's `wake`), and the others go on.
    parked_permits: i64,
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
    /// Entries put back for redelivery (see [`SubscriptionSnapshot::redelivered`]).
    redelivered: u64,
    /// Dispatch reads failed in a row, and when the next attempt is due.
    read_failures: u32,
    read_retry_at: Option<std::time::Instant>,
    /// The managed ledger's clock: delayed delivery and read retries.
    clock: magnetar_metadata::clock::SharedClock,
    /// See [`Subscription::stop_now`].
    stop: CancellationToken,
    /// Notified by a parked consumer's connection once its queue has room.
    wake: Arc<tokio::sync::Notify>,
}

enum Flow {
    Continue,
    Stop,
}
