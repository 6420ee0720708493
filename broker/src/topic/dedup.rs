//! Message deduplication of one topic (Pulsar's `MessageDeduplication`): a SEND whose sequence
//! id is not above the highest one already pushed by the same producer **name** is not stored
//! again but answered with a receipt for ledger/entry -1/-1.
//!
//! This module owns the per-topic state and its persistence:
//!
//! - per producer name the highest sequence id **pushed** (handed to the managed ledger) and
//!   the highest **persisted** (its append completed). A SEND is a duplicate when its
//!   `sequence_id` ≤ pushed; a new one raises pushed to `max(sequence_id, highest_sequence_id)`
//!   (batches). Of a chunked message only the last chunk counts (Pulsar #20948): the other
//!   chunks are always stored and leave the state alone, so a resent chunked message is not cut
//!   short.
//! - a duplicate's receipt waits (bounded, [`DedupConfig::duplicate_wait_ms`]) until the
//!   original is persisted. A producer's receipts go out in order, so a duplicate of the same
//!   producer finds its original completed; one of an earlier producer of the same name (a
//!   reconnect while its appends were in flight) waits for that append. If the original fails
//!   or the wait times out the answer is SEND_ERROR `PersistenceError` — Pulsar's answer for a
//!   duplicate it cannot decide yet — and the client reconnects and resends.
//! - PRODUCER_SUCCESS carries `last_sequence_id` = the name's highest pushed id (as Pulsar's
//!   `getLastPublishedSequenceId`; -1 unknown), so a restarted client continues after it.
//! - snapshots: the durable cursor [`DEDUP_CURSOR`] (`pulsar.dedup`) holds producer name →
//!   highest persisted id as its properties and the snapshot position as its mark-delete
//!   position, written together ([`ManagedCursor::mark_delete_with_properties`]) every
//!   `snapshot_interval_entries` persisted entries or after `snapshot_interval_ms`, and on
//!   topic close. Receipt tasks of different producers record completions in any order, so a
//!   snapshot at position P is written only once every append pushed before P was recorded
//!   (the ledger completes appends in order, so those are all entries ≤ P). On topic load the
//!   snapshot is read and every entry after its position replayed (MessageMetadata
//!   `producer_name`, `sequence_id`, `highest_sequence_id`, chunk fields).
//! - bounds: at most `max_producers` names tracked (a new name evicts the least recently
//!   active inactive one, else the least recently active); names inactive longer than
//!   `producer_inactivity_timeout_ms` are purged (Pulsar purges inactive producers too);
//!   snapshots hold at most `max_producers` names in `snapshot_max_bytes`.
//! - policy: enabled by the namespace policy `deduplication_enabled` (absent:
//!   [`DedupConfig::enabled_by_default`], false as Pulsar's `brokerDeduplicationEnabled`),
//!   applied on topic load and on every producer creation ([`Dedup::apply_policy`]). Enabling
//!   opens the cursor at the end of the topic; disabling deletes it (it would hold back
//!   retention). Messages sent while deduplication is being enabled on a live topic are not
//!   deduplicated, as in Pulsar.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use magnetar_proto::pulsar::Payload;
use magnetar_proto::pulsar::api::MessageMetadata;
use tokio::sync::Notify;
use tracing::{info, warn};

use magnetar_managed_ledger::{InitialPosition, ManagedCursor, ManagedLedger, MlResult, Position};

/// The cursor that stores deduplication snapshots (Pulsar's name; not a subscription).
pub const DEDUP_CURSOR: &str = "pulsar.dedup";

/// Entries read per round while replaying the log after a snapshot.
const REPLAY_BATCH_ENTRIES: usize = 100;
const REPLAY_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// Deduplication settings (Pulsar's `brokerDeduplication*` defaults).
#[derive(Clone, Debug)]
pub struct DedupConfig {
    /// For namespaces without a `deduplication_enabled` policy.
    pub enabled_by_default: bool,
    /// Persisted entries between two snapshots (`brokerDeduplicationEntriesInterval`).
    pub snapshot_interval_entries: u64,
    /// A snapshot is also due after this long with new entries
    /// (`brokerDeduplicationSnapshotIntervalSeconds`).
    pub snapshot_interval_ms: u64,
    /// Producer names tracked per topic (`brokerDeduplicationMaxNumberOfProducers`).
    pub max_producers: usize,
    /// A name without a producer for this long is forgotten
    /// (`brokerDeduplicationProducerInactivityTimeoutMinutes`, 6 h).
    pub producer_inactivity_timeout_ms: u64,
    /// Bytes of names and ids in one snapshot: the cursor record must stay well inside the
    /// metadata store's 1 MiB value limit.
    pub snapshot_max_bytes: usize,
    /// How long a duplicate's receipt waits for its original to be persisted.
    pub duplicate_wait_ms: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled_by_default: false,
            snapshot_interval_entries: 1000,
            snapshot_interval_ms: 120_000,
            max_producers: 10_000,
            producer_inactivity_timeout_ms: 6 * 60 * 60 * 1000,
            snapshot_max_bytes: 512 * 1024,
            duplicate_wait_ms: 10_000,
        }
    }
}

/// Deduplication state of a topic (admin stats show it as `deduplicationStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Disabled,
    /// Reading the snapshot and replaying the log.
    Recovering,
    Enabled,
    /// Enabling failed (cursor or replay); the next policy check tries again.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Disabled => "Disabled",
            Status::Recovering => "Recovering",
            Status::Enabled => "Enabled",
            Status::Failed => "Failed",
        }
    }
}

/// What to do with a SEND.
#[derive(Debug)]
pub enum Verdict {
    /// Store it; with a ticket when the outcome must be reported ([`Dedup::completed`]).
    Publish(Option<Ticket>),
    /// Already pushed: do not store; answer once the original is persisted
    /// ([`Dedup::await_duplicate`]).
    Duplicate,
}

/// A tracked append: reported back with its outcome.
#[derive(Debug)]
pub struct Ticket {
    epoch: u64,
    push_id: u64,
    producer: String,
    highest: u64,
}

#[derive(Debug, Default)]
struct ProducerSeq {
    pushed: Option<u64>,
    persisted: Option<u64>,
    /// Producers of this name attached now.
    active: u32,
    last_active_ms: u64,
}

#[derive(Debug)]
struct Inner {
    status: Status,
    /// Bumped on every enable/disable: tickets of an earlier epoch are ignored.
    epoch: u64,
    producers: HashMap<String, ProducerSeq>,
    next_push: u64,
    /// Pushed appends whose outcome is not recorded yet (bounded by the producers' pending
    /// send queues).
    in_flight: BTreeSet<u64>,
    entries_since_snapshot: u64,
    last_snapshot_ms: u64,
    max_recorded: Option<Position>,
    /// A due snapshot at this position, written once no push below the barrier is in flight.
    pending_snapshot: Option<(Position, u64)>,
    cursor: Option<Arc<ManagedCursor>>,
}

/// One topic's deduplication. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Dedup {
    config: DedupConfig,
    /// `status == Enabled`, read without the lock: a SEND to a topic without deduplication
    /// (the default) costs one atomic load, no lock and no metadata parse.
    enabled: AtomicBool,
    inner: Mutex<Inner>,
    /// Woken when a persisted id rises or the state is reset (waiting duplicates).
    changed: Notify,
    /// Serializes enable/disable transitions, which await cursor I/O and the replay; the
    /// state itself is only touched under the std mutex, never across an await.
    transition: tokio::sync::Mutex<()>,
    clock: SharedClock,
}

use magnetar_metadata::clock::{self, SharedClock};

/// `(chunk_id, num_chunks_from_msg)` of a chunk, from its metadata.
fn chunk_of(md: &MessageMetadata) -> Option<(i32, i32)> {
    Some((md.chunk_id?, md.num_chunks_from_msg?))
}

/// True unless the metadata marks a chunk other than the last of its message.
fn counts_for_dedup(md: &MessageMetadata) -> bool {
    chunk_of(md).is_none_or(|(id, n)| id >= n - 1)
}

/// True unless `payload` is a chunk other than the last of its message (parses the metadata;
/// an unparsable one counts).
pub fn payload_counts(payload: &Payload) -> bool {
    payload.metadata().map_or(true, |md| counts_for_dedup(&md))
}

impl Dedup {
    pub fn new(config: DedupConfig, clock: SharedClock) -> Arc<Self> {
        Arc::new(Dedup {
            config,
            enabled: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                status: Status::Disabled,
                epoch: 0,
                producers: HashMap::new(),
                next_push: 0,
                in_flight: BTreeSet::new(),
                entries_since_snapshot: 0,
                last_snapshot_ms: clock.now_ms(),
                max_recorded: None,
                pending_snapshot: None,
                cursor: None,
            }),
            changed: Notify::new(),
            clock,
            transition: tokio::sync::Mutex::new(()),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &DedupConfig {
        &self.config
    }

    pub fn status(&self) -> Status {
        self.inner().status
    }

    /// Enables or disables deduplication to match the policy. Enabling opens (or reopens)
    /// [`DEDUP_CURSOR`] and recovers the state from its snapshot and the entries after it;
    /// disabling deletes the cursor. A no-op when already in that state.
    pub async fn apply_policy(&self, enabled: bool, ml: &ManagedLedger) -> MlResult<()> {
        let _transition = self.transition.lock().await;
        let status = self.status();
        if enabled {
            if status == Status::Enabled {
                return Ok(());
            }
            self.inner().status = Status::Recovering;
            match self.recover(ml).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    warn!(ml = %ml.name(), error = %e, "enabling deduplication failed");
                    self.inner().status = Status::Failed;
                    Err(e)
                }
            }
        } else {
            if status != Status::Disabled {
                self.reset(Status::Disabled, None, HashMap::new(), None);
                info!(ml = %ml.name(), "deduplication disabled");
            }
            if ml.cursor(DEDUP_CURSOR).is_some() {
                ml.delete_cursor(DEDUP_CURSOR).await?;
            }
            Ok(())
        }
    }

    /// Starts a new epoch with this state. One lock for all of it: a SEND checked between a
    /// status change and the state it goes with would be judged against the wrong names.
    fn reset(
        &self,
        status: Status,
        cursor: Option<Arc<ManagedCursor>>,
        producers: HashMap<String, ProducerSeq>,
        max_recorded: Option<Position>,
    ) {
        {
            let mut st = self.inner();
            st.status = status;
            self.enabled
                .store(status == Status::Enabled, Ordering::Release);
            st.epoch += 1;
            st.producers = producers;
            st.in_flight.clear();
            st.pending_snapshot = None;
            st.entries_since_snapshot = 0;
            st.max_recorded = max_recorded;
            st.cursor = cursor;
            if let Some(pos) = max_recorded {
                // Everything up to `pos` is in the state now: store it, so the next load
                // replays less.
                st.pending_snapshot = Some((pos, st.next_push));
                self.try_snapshot(&mut st, self.clock.now_ms());
            }
        }
        self.changed.notify_waiters();
    }

    async fn recover(&self, ml: &ManagedLedger) -> MlResult<()> {
        let cursor = ml
            .open_cursor(DEDUP_CURSOR, InitialPosition::Latest)
            .await?;
        let now = self.clock.now_ms();
        let mut producers = HashMap::new();
        for (name, value) in cursor.properties() {
            if let Ok(seq) = value.parse::<u64>() {
                record_replayed(&mut producers, name, seq, now, self.config.max_producers);
            }
        }
        // Replay everything after the snapshot's position.
        cursor.rewind();
        let mut replayed = 0u64;
        let mut last = None;
        loop {
            let batch = cursor
                .read_entries(REPLAY_BATCH_ENTRIES, REPLAY_BATCH_BYTES)
                .await?;
            if batch.is_empty() {
                break;
            }
            for (pos, entry) in batch {
                replayed += 1;
                last = Some(pos);
                if let Some((name, seq)) = entry_sequence(&entry) {
                    record_replayed(&mut producers, name, seq, now, self.config.max_producers);
                }
            }
        }
        let tracked = producers.len();
        self.reset(Status::Enabled, Some(Arc::clone(&cursor)), producers, last);
        info!(ml = %ml.name(), producers = tracked, replayed, "deduplication enabled");
        Ok(())
    }

    /// Decides about a SEND of `producer`. `counts` says whether the message counts for
    /// deduplication (false for a chunk other than the last); it is asked only when
    /// deduplication is enabled.
    pub fn check(
        &self,
        producer: &str,
        sequence_id: u64,
        highest_sequence_id: Option<u64>,
        counts: impl FnOnce() -> bool,
    ) -> Verdict {
        self.check_at(
            producer,
            sequence_id,
            highest_sequence_id,
            counts,
            self.clock.now_ms(),
        )
    }

    fn check_at(
        &self,
        producer: &str,
        sequence_id: u64,
        highest_sequence_id: Option<u64>,
        counts: impl FnOnce() -> bool,
        now: u64,
    ) -> Verdict {
        if !self.enabled.load(Ordering::Acquire) {
            return Verdict::Publish(None);
        }
        let mut st = self.inner();
        if st.status != Status::Enabled || !counts() {
            return Verdict::Publish(None);
        }
        let highest = highest_sequence_id.map_or(sequence_id, |h| h.max(sequence_id));
        let max = self.config.max_producers;
        let p = entry(&mut st.producers, producer, now, max);
        if p.pushed.is_some_and(|pushed| sequence_id <= pushed) {
            return Verdict::Duplicate;
        }
        p.pushed = Some(highest);
        p.last_active_ms = now;
        let push_id = st.next_push;
        st.next_push += 1;
        st.in_flight.insert(push_id);
        Verdict::Publish(Some(Ticket {
            epoch: st.epoch,
            push_id,
            producer: producer.to_owned(),
            highest,
        }))
    }

    /// Records the outcome of a tracked append: its position, or `None` when it failed (then
    /// the name's pushed id falls back to the persisted one, so a resend is stored).
    pub fn completed(&self, ticket: Ticket, stored_at: Option<Position>) {
        self.completed_at(ticket, stored_at, self.clock.now_ms());
    }

    fn completed_at(&self, ticket: Ticket, stored_at: Option<Position>, now: u64) {
        {
            let mut st = self.inner();
            if ticket.epoch != st.epoch || st.status != Status::Enabled {
                return;
            }
            st.in_flight.remove(&ticket.push_id);
            let max = self.config.max_producers;
            let p = entry(&mut st.producers, &ticket.producer, now, max);
            match stored_at {
                Some(pos) => {
                    p.persisted = Some(
                        p.persisted
                            .map_or(ticket.highest, |s| s.max(ticket.highest)),
                    );
                    p.pushed = p.pushed.max(p.persisted);
                    st.max_recorded = st.max_recorded.max(Some(pos));
                    st.entries_since_snapshot += 1;
                    let due = st.entries_since_snapshot >= self.config.snapshot_interval_entries
                        || now.saturating_sub(st.last_snapshot_ms)
                            >= self.config.snapshot_interval_ms;
                    if due && st.pending_snapshot.is_none() {
                        // Every entry up to the highest recorded one was pushed before now.
                        st.pending_snapshot = Some((st.max_recorded.unwrap_or(pos), st.next_push));
                        st.entries_since_snapshot = 0;
                    }
                }
                None => p.pushed = p.persisted,
            }
            self.try_snapshot(&mut st, now);
        }
        self.changed.notify_waiters();
    }

    /// Writes a due snapshot once every push below its barrier is recorded.
    fn try_snapshot(&self, st: &mut Inner, now: u64) {
        let Some((pos, barrier)) = st.pending_snapshot else {
            return;
        };
        if st.in_flight.first().is_some_and(|id| *id < barrier) {
            return;
        }
        st.pending_snapshot = None;
        st.last_snapshot_ms = now;
        self.purge_inactive(st, now);
        let Some(cursor) = st.cursor.clone() else {
            return;
        };
        cursor.mark_delete_with_properties(pos, self.snapshot_properties(st));
    }

    /// The persisted ids to store, most recently active names first, within the bounds.
    fn snapshot_properties(&self, st: &Inner) -> BTreeMap<String, String> {
        let mut names: Vec<(&String, &ProducerSeq)> = st
            .producers
            .iter()
            .filter(|(_, p)| p.persisted.is_some())
            .collect();
        names.sort_by_key(|(_, p)| std::cmp::Reverse(p.last_active_ms));
        let mut out = BTreeMap::new();
        let mut bytes = 0usize;
        for (name, p) in names {
            let Some(seq) = p.persisted else { continue };
            let value = seq.to_string();
            bytes += name.len() + value.len();
            if out.len() >= self.config.max_producers || bytes > self.config.snapshot_max_bytes {
                warn!(
                    kept = out.len(),
                    "deduplication snapshot full: older names left out"
                );
                break;
            }
            out.insert(name.clone(), value);
        }
        out
    }

    fn purge_inactive(&self, st: &mut Inner, now: u64) {
        let timeout = self.config.producer_inactivity_timeout_ms;
        st.producers
            .retain(|_, p| p.active > 0 || now.saturating_sub(p.last_active_ms) < timeout);
    }

    /// Stores a snapshot now if nothing is in flight (topic close).
    pub fn snapshot_on_close(&self) {
        let mut st = self.inner();
        if st.status != Status::Enabled || !st.in_flight.is_empty() {
            return;
        }
        let Some(pos) = st.max_recorded else { return };
        let already = st
            .cursor
            .as_ref()
            .and_then(|c| c.mark_delete_position())
            .is_some_and(|md| md >= pos);
        if !already {
            st.pending_snapshot = Some((pos, st.next_push));
            self.try_snapshot(&mut st, self.clock.now_ms());
        }
    }

    /// Waits until the original of a duplicate (`sequence_id` of `producer`) is persisted:
    /// true then; false when it failed, deduplication was turned off, or after
    /// `duplicate_wait_ms`.
    pub async fn await_duplicate(&self, producer: &str, sequence_id: u64) -> bool {
        let deadline = self.clock.now() + Duration::from_millis(self.config.duplicate_wait_ms);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = self.inner();
                if st.status != Status::Enabled {
                    return false;
                }
                let Some(p) = st.producers.get(producer) else {
                    return false;
                };
                if p.persisted.is_some_and(|s| sequence_id <= s) {
                    return true;
                }
                if p.pushed.is_none_or(|s| sequence_id > s) {
                    return false;
                }
            }
            let left = deadline.saturating_duration_since(self.clock.now());
            if clock::timeout(&*self.clock, left, changed).await.is_err() {
                return false;
            }
        }
    }

    /// A producer of this name attached (it is active: never purged meanwhile).
    pub fn producer_added(&self, producer: &str) {
        let now = self.clock.now_ms();
        let mut st = self.inner();
        if st.status != Status::Enabled {
            return;
        }
        self.purge_inactive(&mut st, now);
        let max = self.config.max_producers;
        let p = entry(&mut st.producers, producer, now, max);
        p.active += 1;
        p.last_active_ms = now;
    }

    /// A producer of this name detached.
    pub fn producer_removed(&self, producer: &str) {
        let now = self.clock.now_ms();
        let mut st = self.inner();
        if let Some(p) = st.producers.get_mut(producer) {
            p.active = p.active.saturating_sub(1);
            p.last_active_ms = now;
        }
    }

    /// The highest sequence id pushed by `producer` (-1: unknown or deduplication off), for
    /// PRODUCER_SUCCESS.
    pub fn last_sequence_id(&self, producer: &str) -> i64 {
        let st = self.inner();
        if st.status != Status::Enabled {
            return -1;
        }
        st.producers
            .get(producer)
            .and_then(|p| p.pushed)
            .map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX))
    }

    /// Names tracked now.
    pub fn tracked_producers(&self) -> usize {
        self.inner().producers.len()
    }
}

/// The entry of `name`, created if needed; a new name beyond `max` evicts another first.
fn entry<'a>(
    producers: &'a mut HashMap<String, ProducerSeq>,
    name: &str,
    now: u64,
    max: usize,
) -> &'a mut ProducerSeq {
    if !producers.contains_key(name) {
        evict_for_one(producers, max);
        producers.insert(
            name.to_owned(),
            ProducerSeq {
                last_active_ms: now,
                ..ProducerSeq::default()
            },
        );
    }
    // Inserted just above when missing.
    producers.entry(name.to_owned()).or_default()
}

/// Makes room for one more name: the least recently active inactive name goes first, else
/// the least recently active one.
fn evict_for_one(producers: &mut HashMap<String, ProducerSeq>, max: usize) {
    while producers.len() >= max.max(1) {
        let victim = producers
            .iter()
            .min_by_key(|(_, p)| (p.active > 0, p.last_active_ms))
            .map(|(n, _)| n.clone());
        let Some(victim) = victim else { return };
        warn!(producer = %victim, "deduplication forgets a producer name: too many names");
        producers.remove(&victim);
    }
}

fn record_replayed(
    producers: &mut HashMap<String, ProducerSeq>,
    name: String,
    seq: u64,
    now: u64,
    max: usize,
) {
    let p = entry(producers, &name, now, max);
    p.pushed = p.pushed.max(Some(seq));
    p.persisted = p.persisted.max(Some(seq));
}

/// Producer name and highest sequence id of a stored entry, unless it does not count (a chunk
/// other than the last) or its metadata does not parse.
fn entry_sequence(entry: &Bytes) -> Option<(String, u64)> {
    let md = Payload::parse(entry.clone()).ok()?.metadata().ok()?;
    if !counts_for_dedup(&md) {
        return None;
    }
    let seq = md.sequence_id.max(md.highest_sequence_id.unwrap_or(0));
    Some((md.producer_name, seq))
}

#[cfg(test)]
mod tests;
