//! [`ManagedCursor`]: a subscription's (durable) or a reader's (non-durable) place in a managed
//! ledger.
//!
//! State: `first_unacked` — every position below it is acknowledged (Pulsar's mark-delete
//! position is the entry just before it) — plus the individually acknowledged ranges above it
//! ([`RangeSet`]), the batch indexes still unacknowledged of partially acknowledged batch
//! entries ([`BatchAcks`], persisted with the rest), and the read position (where the next
//! `read_entries` starts; not persisted: after a restart reading resumes at the first
//! unacknowledged entry, so nothing unacked is lost and acked entries above the floor are
//! skipped).
//!
//! Persistence of durable cursors ([`crate::cursor_store`]: snapshots appended to a cursor
//! ledger of their own, the metadata record only naming it): acks only mark the state dirty and
//! wake the cursor's flusher task, which waits `cursor_flush_interval_ms` (default 100 ms) to
//! coalesce further acks, then persists one snapshot. One task per cursor means at most one
//! write in flight. [`ManagedCursor::flush`] writes at once; a stopping cursor's last write
//! puts the whole state into its record when small enough (see [`CursorStore::close_with`]).
//! Fencing (another
//! broker owns the cursor now: its record changed, or its ledger was fenced by recovery) stops
//! the flusher and `flush` reports [`ManagedLedgerError::Fenced`]. A snapshot keeps at most
//! `cursor_acked_ranges_persist_max` acked ranges (the lowest), so a subscription acking
//! sparsely cannot grow it without bound; acks beyond are redelivered after a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use magnetar_metadata::EntryId;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{Instrument, debug, info_span, warn};

use crate::Position;
use crate::batch_acks::{BatchAckOutcome, BatchAcks};
use crate::cursor_store::CursorStore;
use crate::error::{ManagedLedgerError, MlResult};
use crate::ledger::InternalCursorStats;
use crate::ranges::RangeSet;
use crate::read::Shared;
use crate::record::CursorRecord;

/// Where a new cursor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    /// At the first entry still stored.
    Earliest,
    /// After the last confirmed entry: only entries appended from now on.
    Latest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CursorStats {
    /// The last position of the acknowledged prefix (None: nothing acknowledged below the floor).
    pub mark_delete_position: Option<Position>,
    pub read_position: Position,
    /// Entries not yet acknowledged.
    pub backlog: u64,
    pub acked_ranges: usize,
    pub durable: bool,
}

#[derive(Debug)]
struct CursorState {
    first_unacked: Position,
    acked: RangeSet,
    /// Partially acknowledged batch entries above the floor (never in `acked`).
    batch_acks: BatchAcks,
    read_position: Position,
    properties: BTreeMap<String, String>,
    dirty: bool,
    /// The cursor was deleted (unsubscribed): nothing more is written, its ledger goes.
    deleted: bool,
}

#[derive(Debug)]
struct Core {
    name: String,
    shared: Arc<Shared>,
    state: Mutex<CursorState>,
    notify: Notify,
}

impl Core {
    fn state(&self) -> MutexGuard<'_, CursorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type FlushRequest = oneshot::Sender<MlResult<()>>;

#[derive(Debug)]
pub struct ManagedCursor {
    core: Arc<Core>,
    durable: bool,
    /// Durable cursors: explicit flush requests to the flusher task. Dropping it stops the task
    /// after a last write.
    flush_tx: Mutex<Option<mpsc::Sender<FlushRequest>>>,
    /// The flusher task (durable cursors), awaited when the cursor stops; it ends with the
    /// outcome of its last write.
    task: Mutex<Option<tokio::task::JoinHandle<MlResult<()>>>>,
}

impl ManagedCursor {
    /// A durable cursor in the state `record` holds (recovered by the caller), persisted
    /// through `store`.
    pub(crate) fn durable(
        shared: Arc<Shared>,
        name: String,
        record: CursorRecord,
        store: CursorStore,
    ) -> Arc<Self> {
        let mut acked = RangeSet::from_records(&record.acked_ranges);
        acked.remove_below(record.first_unacked);
        let mut batch_acks = BatchAcks::from_records(&record.batch_acks);
        batch_acks.remove_below(record.first_unacked);
        let core = Arc::new(Core {
            name: name.clone(),
            state: Mutex::new(CursorState {
                first_unacked: record.first_unacked,
                acked,
                batch_acks,
                read_position: record.first_unacked,
                properties: record.properties,
                dirty: false,
                deleted: false,
            }),
            notify: Notify::new(),
            shared,
        });
        let (tx, rx) = mpsc::channel(8);
        let span = info_span!("ml_cursor", ml = %core.shared.name, cursor = %name);
        let task = tokio::spawn(flusher(Arc::clone(&core), store, rx).instrument(span));
        Arc::new(ManagedCursor {
            core,
            durable: true,
            flush_tx: Mutex::new(Some(tx)),
            task: Mutex::new(Some(task)),
        })
    }

    pub(crate) fn non_durable(shared: Arc<Shared>, start: Position) -> Arc<Self> {
        Arc::new(ManagedCursor {
            core: Arc::new(Core {
                name: String::new(),
                state: Mutex::new(CursorState {
                    first_unacked: start,
                    acked: RangeSet::default(),
                    batch_acks: BatchAcks::default(),
                    read_position: start,
                    properties: BTreeMap::new(),
                    dirty: false,
                    deleted: false,
                }),
                notify: Notify::new(),
                shared,
            }),
            durable: false,
            flush_tx: Mutex::new(None),
            task: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.core.name
    }

    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Every position below this one is acknowledged.
    pub fn first_unacked(&self) -> Position {
        self.core.state().first_unacked
    }

    /// Pulsar's mark-delete position: the last entry of the acknowledged prefix.
    pub fn mark_delete_position(&self) -> Option<Position> {
        let floor = self.first_unacked();
        self.core.shared.previous(floor)
    }

    pub fn read_position(&self) -> Position {
        self.core.state().read_position
    }

    pub fn is_acked(&self, pos: Position) -> bool {
        let st = self.core.state();
        pos < st.first_unacked || st.acked.contains(pos)
    }

    /// True when an entry at or after the read position is confirmed.
    pub fn has_entries_available(&self) -> bool {
        let read = self.core.shared.normalize(self.read_position());
        self.core
            .shared
            .state()
            .last_confirmed
            .is_some_and(|last| read <= last)
    }

    /// Up to `max_entries` unacknowledged entries from the read position on (at least one if any,
    /// even beyond `max_bytes`); the read position moves past them. Acked entries are skipped.
    pub async fn read_entries(
        &self,
        max_entries: usize,
        max_bytes: u64,
    ) -> MlResult<Vec<(Position, Bytes)>> {
        loop {
            let from = self.read_position();
            let batch = self
                .core
                .shared
                .read_entries(from, max_entries, max_bytes)
                .await?;
            let Some(&(last, _)) = batch.last() else {
                return Ok(Vec::new());
            };
            let mut st = self.core.state();
            if st.read_position != from {
                // Moved by seek/rewind meanwhile: read again from there.
                continue;
            }
            st.read_position = last.next();
            let out: Vec<(Position, Bytes)> = batch
                .into_iter()
                .filter(|(p, _)| !(*p < st.first_unacked || st.acked.contains(*p)))
                .collect();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Refuses a position beyond the last confirmed entry: an ack there would mark messages
    /// not yet written as consumed (Pulsar refuses it too).
    pub fn check_ack(&self, pos: Position) -> MlResult<()> {
        let last = self.core.shared.state().last_confirmed;
        match last {
            Some(last) if pos <= last => Ok(()),
            _ => Err(ManagedLedgerError::InvalidAck {
                name: self.core.shared.name.clone(),
                position: pos.to_string(),
                reason: match last {
                    Some(last) => format!("beyond the last confirmed entry {last}"),
                    None => "nothing was written yet".to_owned(),
                },
            }),
        }
    }

    /// Acknowledges single positions; the floor moves up when they close the gap above it.
    /// Refused as a whole, changing nothing, when any position is beyond the last confirmed
    /// entry.
    pub fn ack_individual(&self, positions: &[Position]) -> MlResult<()> {
        for &p in positions {
            self.check_ack(p)?;
        }
        let mut st = self.core.state();
        for &p in positions {
            if p >= st.first_unacked {
                st.acked.insert(p);
                st.batch_acks.remove(p);
            }
        }
        self.collapse(&mut st);
        self.touch(st);
        Ok(())
    }

    /// Acknowledges everything up to and including `pos` (refused beyond the last confirmed
    /// entry).
    pub fn ack_cumulative(&self, pos: Position) -> MlResult<()> {
        self.check_ack(pos)?;
        let mut st = self.core.state();
        if pos.next() > st.first_unacked {
            st.first_unacked = pos.next();
        }
        self.collapse(&mut st);
        self.touch(st);
        Ok(())
    }

    /// Batch-index acknowledgement of one entry: `unacked` (`BitSet` words, set bits = indexes
    /// not acknowledged) is intersected with what the entry still has unacknowledged. True when
    /// the entry is now acknowledged whole (or already was).
    pub fn ack_batch_indexes(&self, pos: Position, unacked: &[u64]) -> MlResult<bool> {
        self.check_ack(pos)?;
        let mut st = self.core.state();
        Ok(match self.ack_indexes_locked(&mut st, pos, unacked) {
            Some(whole) => {
                self.touch(st);
                whole
            }
            None => false,
        })
    }

    /// Cumulative acknowledgement inside a batch: every entry before `pos` is acknowledged, and
    /// of `pos` the indexes clear in `unacked`. True when `pos` is now acknowledged whole.
    pub fn ack_cumulative_batch(&self, pos: Position, unacked: &[u64]) -> MlResult<bool> {
        self.check_ack(pos)?;
        let mut st = self.core.state();
        if pos > st.first_unacked {
            st.first_unacked = pos;
        }
        self.collapse(&mut st);
        let whole = self
            .ack_indexes_locked(&mut st, pos, unacked)
            .unwrap_or(false);
        self.touch(st);
        Ok(whole)
    }

    /// `Some(whole)` when the state changed (or the entry was acknowledged already), `None`
    /// when the set was over the bounds and not recorded.
    fn ack_indexes_locked(
        &self,
        st: &mut CursorState,
        pos: Position,
        unacked: &[u64],
    ) -> Option<bool> {
        if pos < st.first_unacked || st.acked.contains(pos) {
            return Some(true);
        }
        match st.batch_acks.intersect(pos, unacked) {
            BatchAckOutcome::Partial => Some(false),
            BatchAckOutcome::Whole => {
                st.acked.insert(pos);
                self.collapse(st);
                Some(true)
            }
            BatchAckOutcome::Ignored => {
                debug!(position = %pos, "batch-index ack not recorded: too many partial batches");
                None
            }
        }
    }

    /// The batch indexes of `pos` still unacknowledged (`BitSet` words), when only part of the
    /// entry is acknowledged.
    pub fn batch_ack_set(&self, pos: Position) -> Option<Vec<u64>> {
        self.core.state().batch_acks.get(pos).map(<[u64]>::to_vec)
    }

    /// Moves the floor over acknowledged ranges and boundaries, and drops ranges below it.
    fn collapse(&self, st: &mut CursorState) {
        loop {
            let floor = self.core.shared.normalize(st.first_unacked);
            st.first_unacked = floor;
            match st.acked.range_starting_at(floor) {
                Some(last) => {
                    st.first_unacked = Position {
                        ledger: floor.ledger,
                        entry: EntryId(last + 1),
                    }
                }
                None => break,
            }
        }
        let floor = st.first_unacked;
        st.acked.remove_below(floor);
        st.batch_acks.remove_below(floor);
        if st.read_position < floor {
            st.read_position = floor;
        }
    }

    fn touch(&self, mut st: MutexGuard<'_, CursorState>) {
        if self.durable {
            st.dirty = true;
            drop(st);
            self.core.notify.notify_one();
        }
    }

    /// Entries not yet acknowledged (confirmed entries at or above the floor, minus the
    /// individually acked ones).
    pub fn backlog(&self) -> u64 {
        let (floor, acked) = {
            let st = self.core.state();
            (st.first_unacked, st.acked.clone())
        };
        let (total, spans) = self.core.shared.entries_from(floor);
        let acked: u64 = spans
            .iter()
            .map(|&(l, first, last)| acked.count_within(l, first, last))
            .sum();
        total.saturating_sub(acked)
    }

    /// Read position back to the first unacknowledged entry (redelivery of everything unacked).
    pub fn rewind(&self) {
        let mut st = self.core.state();
        st.read_position = st.first_unacked;
    }

    /// Read position to `pos` (acknowledgements unchanged). The dispatcher redelivers specific
    /// positions by reading them with [`crate::ManagedLedger::read_entries`] and checking
    /// [`ManagedCursor::is_acked`].
    pub fn seek(&self, pos: Position) {
        self.core.state().read_position = pos;
    }

    /// Resets the subscription to `pos`: everything from `pos` on is unacknowledged again,
    /// everything below it acknowledged (Pulsar's reset-cursor).
    pub fn reset(&self, pos: Position) {
        let mut st = self.core.state();
        st.first_unacked = pos;
        st.acked.clear();
        st.batch_acks.clear();
        st.read_position = pos;
        self.touch(st);
    }

    pub fn set_property(&self, key: &str, value: &str) {
        let mut st = self.core.state();
        st.properties.insert(key.to_owned(), value.to_owned());
        self.touch(st);
    }

    pub fn properties(&self) -> BTreeMap<String, String> {
        self.core.state().properties.clone()
    }

    /// Pulsar's mark-delete with properties: acknowledges everything up to `pos` and replaces
    /// the properties in one state change, so a stored record never has one without the other
    /// (deduplication snapshots rely on it).
    pub fn mark_delete_with_properties(&self, pos: Position, properties: BTreeMap<String, String>) {
        let mut st = self.core.state();
        if pos.next() > st.first_unacked {
            st.first_unacked = pos.next();
        }
        st.properties = properties;
        self.collapse(&mut st);
        self.touch(st);
    }

    /// Writes the state now if it changed (durable cursors; a no-op for others).
    pub async fn flush(&self) -> MlResult<()> {
        let tx = self
            .flush_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(tx) = tx else { return Ok(()) };
        let (done, rx) = oneshot::channel();
        if tx.send(done).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// Stops the flusher after a last write of the state (managed ledger closed), which the
    /// next owner reads without recovering anything (see [`CursorStore::close_with`]); its
    /// outcome is returned.
    pub(crate) async fn stop(&self) -> MlResult<()> {
        self.stop_flusher().await
    }

    /// Stops the flusher without a last write; it deletes the cursor ledger (unsubscribe).
    pub(crate) async fn stop_deleted(&self) {
        self.core.state().deleted = true;
        let _ = self.stop_flusher().await;
    }

    /// Drops the flush queue and waits until the flusher has finished with the cursor ledger.
    async fn stop_flusher(&self) -> MlResult<()> {
        let tx = self
            .flush_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(tx);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        match task {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    pub fn stats(&self) -> CursorStats {
        let (read_position, acked_ranges) = {
            let st = self.core.state();
            (st.read_position, st.acked.range_count())
        };
        CursorStats {
            mark_delete_position: self.mark_delete_position(),
            read_position,
            backlog: self.backlog(),
            acked_ranges,
            durable: self.durable,
        }
    }

    pub(crate) fn internal_stats(&self) -> InternalCursorStats {
        let (read, ranges) = {
            let st = self.core.state();
            (st.read_position, st.acked.to_records(usize::MAX))
        };
        let individually = ranges
            .iter()
            .map(|r| {
                format!(
                    "({}:{}..{}:{}]",
                    r.ledger,
                    r.first as i64 - 1,
                    r.ledger,
                    r.last
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let md = self.mark_delete_position().map_or_else(
            || format!("{}:-1", self.first_unacked().ledger),
            |p| p.to_string(),
        );
        InternalCursorStats {
            mark_delete_position: md,
            read_position: read.to_string(),
            individually_deleted_messages: format!("[{individually}]"),
            number_of_entries_since_first_not_acked_message: self.backlog(),
            total_non_contiguous_deleted_messages_range: ranges.len(),
            state: "Open".to_owned(),
        }
    }
}

/// Bounds of the wait before retrying a failed cursor write (doubling from the first).
const RETRY_BACKOFF_MIN_MS: u64 = 100;
const RETRY_BACKOFF_MAX_MS: u64 = 10_000;

/// Writes the cursor's state when it changed, coalescing acks over the flush interval; answers
/// explicit flush requests; makes a last write when the cursor is dropped or stopped, and
/// returns its outcome. A failed write is retried after a growing backoff (not every flush
/// interval), so an unreachable metadata store is not hammered by every cursor of the broker.
async fn flusher(
    core: Arc<Core>,
    mut store: CursorStore,
    mut rx: mpsc::Receiver<FlushRequest>,
) -> MlResult<()> {
    let interval = core.shared.config.cursor_flush_interval();
    let mut failures: u32 = 0;
    loop {
        // `None`: the coalescing wait after an ack ended; `Some(req)`: an explicit flush (or the
        // queue closed), which is answered at once — also in the middle of that wait, so a close
        // never waits out the flush interval or a failure's backoff.
        let req = tokio::select! {
            _ = core.notify.notified() => {
                let wait = if failures == 0 {
                    interval
                } else {
                    let ms = RETRY_BACKOFF_MIN_MS
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(RETRY_BACKOFF_MAX_MS);
                    std::time::Duration::from_millis(ms).max(interval)
                };
                tokio::select! {
                    () = core.shared.clock.sleep(wait) => None,
                    req = rx.recv() => Some(req),
                }
            }
            req = rx.recv() => Some(req),
        };
        // The queue closed: the last write below replaces this one.
        if matches!(req, Some(None)) {
            break;
        }
        let r = write_if_dirty(&core, &mut store).await;
        failures = next_failures(failures, &r);
        if let Some(Some(done)) = req {
            let _ = done.send(r);
        }
    }
    let r = if core.state().deleted {
        store.delete_ledger().await;
        Ok(())
    } else {
        write_last(&core, &mut store).await
    };
    debug!("cursor flusher stopped");
    r
}

/// The last write of a stopping cursor: the whole state into the record when it is small
/// enough, so the next owner needs no cursor-ledger recovery (a bundle handover opens every
/// topic on the new owner while clients wait); otherwise a last snapshot in the ledger.
async fn write_last(core: &Core, store: &mut CursorStore) -> MlResult<()> {
    if store.is_fenced() || core.shared.status() == crate::read::Status::Fenced {
        return Err(ManagedLedgerError::Fenced(core.shared.name.clone()));
    }
    let (snapshot, dirty) = {
        let mut st = core.state();
        let dirty = std::mem::replace(&mut st.dirty, false);
        (snapshot_of(core, &st), dirty)
    };
    store.close_with(&snapshot, dirty).await
}

/// The state to persist; at most `cursor_acked_ranges_persist_max` acked ranges.
fn snapshot_of(core: &Core, st: &CursorState) -> CursorRecord {
    let max = core.shared.config.cursor_acked_ranges_persist_max;
    let ranges = st.acked.range_count();
    if ranges > max {
        // Acks above the cap hold in memory only: redelivered after a restart, never lost.
        debug!(
            ranges,
            max, "cursor snapshot keeps only the lowest acked ranges"
        );
    }
    CursorRecord {
        first_unacked: st.first_unacked,
        acked_ranges: st.acked.to_records(max),
        properties: st.properties.clone(),
        updated_ms: core.shared.clock.now_ms(),
        batch_acks: st.batch_acks.to_records(),
        cursor_ledger: None,
    }
}

fn next_failures(failures: u32, result: &MlResult<()>) -> u32 {
    match result {
        Ok(()) => 0,
        Err(e) if e.is_fenced() => failures,
        Err(_) => failures.saturating_add(1),
    }
}

async fn write_if_dirty(core: &Core, store: &mut CursorStore) -> MlResult<()> {
    // Fenced here or on the managed ledger (another owner, or the lease lost): any write
    // now could only conflict with the new owner's state.
    if store.is_fenced() || core.shared.status() == crate::read::Status::Fenced {
        return Err(ManagedLedgerError::Fenced(core.shared.name.clone()));
    }
    let snapshot = {
        let mut st = core.state();
        if !st.dirty || st.deleted {
            return Ok(());
        }
        st.dirty = false;
        snapshot_of(core, &st)
    };
    match store.persist(&snapshot).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_fenced() => Err(e),
        Err(e) => {
            warn!(error = %e, "cursor write failed; will retry with backoff");
            core.state().dirty = true;
            core.notify.notify_one();
            Err(e)
        }
    }
}
