//! The in-memory state of the bookie's storage: per-ledger state (fenced, LAC, last entry — a
//! few dozen bytes a ledger, never a map of its entries), the entry logs with their live/total
//! byte counts, and the index changes since the last checkpoint.
//!
//! Entry locations live in the on-disk index (`index.rs`). Only the ones written since the last
//! checkpoint are held here, in `pending` (then in `flushing` while a checkpoint commits them),
//! so memory grows with the write rate times the checkpoint interval, not with stored data.
//! A lookup consults `pending`, then `flushing`, then the index: the checkpoint commits the
//! index before it drops `flushing`, so no location is ever out of sight.
//!
//! One `RwLock<Store>` guards it all (see `Shared`): every holder does map operations only —
//! no file or index I/O — so the journal writer, which takes it exclusively once per batch,
//! never waits on a disk.
//!
//! Live-byte accounting stays exact without reading the index under the lock: a change that
//! makes bytes dead is counted where the dead location is known — here for locations in
//! `pending`, at the checkpoint for locations the index held (an overwritten or deleted row
//! hands back its old value). Adds are not deduplicated against the index: a repeated add (a
//! retry, or recovery re-replicating) is stored again and its previous copy becomes dead, as in
//! BookKeeper.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use magnetar_metadata::{EntryId, LedgerId};
use tokio::sync::watch;

use super::entrylog::Loc;
use super::journal::JournalPos;
use crate::api::{FenceResult, NO_ENTRY};

/// Index key: (ledger, entry).
pub(crate) type Key = (u64, u64);

/// Entry locations not yet in the on-disk index.
pub(crate) type Locs = BTreeMap<Key, Loc>;

/// One ledger as this bookie knows it.
#[derive(Debug)]
pub(crate) struct LedgerState {
    pub fenced: bool,
    /// The highest LAC carried by a stored entry (-1: none).
    pub lac: i64,
    /// The highest entry id stored (-1: none).
    pub last_entry: i64,
    /// Long-polling `read_lac` callers wait on this; it always holds `lac`.
    pub lac_tx: watch::Sender<i64>,
}

impl LedgerState {
    pub fn new(fenced: bool, lac: i64, last_entry: i64) -> Self {
        LedgerState {
            fenced,
            lac,
            last_entry,
            lac_tx: watch::channel(lac).0,
        }
    }

    pub fn fence_result(&self) -> FenceResult {
        FenceResult {
            lac: self.lac,
            last_entry: self.last_entry,
        }
    }

    /// What the index persists per ledger.
    pub fn persisted(&self) -> PersistedState {
        PersistedState {
            fenced: self.fenced,
            lac: self.lac,
            last_entry: self.last_entry,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PersistedState {
    pub fenced: bool,
    pub lac: i64,
    pub last_entry: i64,
}

/// An entry log file as the store tracks it.
#[derive(Debug)]
pub(crate) struct LogMeta {
    /// Shared with readers, so a read that looked up a location keeps working even if
    /// compaction deletes the file meanwhile (the open descriptor outlives the name).
    pub file: Arc<File>,
    pub path: PathBuf,
    pub total_bytes: u64,
    pub live_bytes: u64,
    /// Written since the last checkpoint's fdatasync.
    pub unsynced: bool,
}

/// The index changes a checkpoint commits, taken from the store in one step.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    /// Ledgers deleted since the last checkpoint: their rows go first.
    pub deletes: Vec<LedgerId>,
    /// Locations written since (none of a ledger deleted after them): rows put after.
    pub puts: Arc<Locs>,
    pub states: Vec<(LedgerId, Option<PersistedState>)>,
    /// Live bytes per log as of the drain, before the index-side decrements of this commit.
    pub live: Vec<(u32, u64)>,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    pub ledgers: HashMap<LedgerId, LedgerState>,
    pub logs: BTreeMap<u32, LogMeta>,
    /// Locations written since the last checkpoint drained.
    pub pending: Locs,
    /// What the running checkpoint is committing; empty otherwise.
    pub flushing: Arc<Locs>,
    /// Ledgers deleted since the last checkpoint drained.
    pub deletes: Vec<LedgerId>,
    /// Ledgers whose persisted state (fenced, LAC, last entry, or existence) changed.
    pub dirty_ledgers: HashSet<LedgerId>,
    /// Every journal record before this is applied here.
    pub applied: JournalPos,
}

impl Store {
    pub fn ledger_mut(&mut self, ledger: LedgerId) -> &mut LedgerState {
        self.ledgers
            .entry(ledger)
            .or_insert_with(|| LedgerState::new(false, NO_ENTRY, NO_ENTRY))
    }

    /// The location of an entry written since the last checkpoint, if any. Entries older than
    /// that are in the index (see `index::Index::get`).
    pub fn recent(&self, ledger: LedgerId, entry: EntryId) -> Option<Loc> {
        let key = (ledger.0, entry.0);
        self.pending
            .get(&key)
            .or_else(|| self.flushing.get(&key))
            .copied()
    }

    pub fn is_fenced(&self, ledger: LedgerId) -> bool {
        self.ledgers.get(&ledger).is_some_and(|l| l.fenced)
    }

    fn dead(&mut self, loc: Loc) {
        if let Some(log) = self.logs.get_mut(&loc.log) {
            log.live_bytes = log.live_bytes.saturating_sub(loc.record_bytes());
        }
    }

    fn live(&mut self, loc: Loc) {
        if let Some(log) = self.logs.get_mut(&loc.log) {
            log.live_bytes += loc.record_bytes();
        }
    }

    /// Indexes a stored entry. A copy written earlier becomes dead: here if it is pending, at
    /// the checkpoint if the index has it.
    pub fn insert_entry(&mut self, ledger: LedgerId, entry: EntryId, lac: i64, loc: Loc) {
        let state = self.ledger_mut(ledger);
        state.last_entry = state.last_entry.max(entry.0 as i64);
        if lac > state.lac {
            state.lac = lac;
            state.lac_tx.send_replace(lac);
        }
        self.live(loc);
        if let Some(old) = self.pending.insert((ledger.0, entry.0), loc) {
            self.dead(old);
        }
        self.dirty_ledgers.insert(ledger);
    }

    pub fn fence(&mut self, ledger: LedgerId) -> FenceResult {
        let state = self.ledger_mut(ledger);
        state.fenced = true;
        let result = state.fence_result();
        self.dirty_ledgers.insert(ledger);
        result
    }

    /// Drops a ledger's state and locations; its bytes in the entry logs become dead (the
    /// pending ones here, the indexed ones when the checkpoint deletes their rows). Dropping
    /// the LAC sender ends the long polls on it.
    pub fn delete(&mut self, ledger: LedgerId) {
        if self.ledgers.remove(&ledger).is_none() {
            return;
        }
        let gone: Vec<Key> = self
            .pending
            .range((ledger.0, 0)..=(ledger.0, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            if let Some(loc) = self.pending.remove(&key) {
                self.dead(loc);
            }
        }
        self.dirty_ledgers.insert(ledger);
        self.deletes.push(ledger);
    }

    /// Moves an entry compaction copied out of the index's `old` location, unless it changed
    /// meanwhile (its ledger deleted, or a newer copy written). The old copy becomes dead when
    /// the checkpoint overwrites its row.
    pub fn relocate(&mut self, ledger: LedgerId, entry: EntryId, old: Loc, new: Loc) -> bool {
        if !self.ledgers.contains_key(&ledger) {
            return false;
        }
        if self.recent(ledger, entry).is_some_and(|loc| loc != old) {
            return false;
        }
        self.live(new);
        if let Some(prev) = self.pending.insert((ledger.0, entry.0), new) {
            self.dead(prev);
        }
        true
    }

    /// Counts bytes appended to a log (live or not).
    pub fn wrote(&mut self, log: u32, bytes: u64) {
        if let Some(meta) = self.logs.get_mut(&log) {
            meta.total_bytes += bytes;
            meta.unsynced = true;
        }
    }

    /// Takes the changes since the last checkpoint for the index; `pending` moves to
    /// `flushing`, where lookups still find it until [`Store::flushed`].
    pub fn drain(&mut self) -> Drained {
        let puts = Arc::new(std::mem::take(&mut self.pending));
        self.flushing = puts.clone();
        let dirty: Vec<LedgerId> = self.dirty_ledgers.drain().collect();
        let states = dirty
            .into_iter()
            .map(|l| (l, self.ledgers.get(&l).map(|s| s.persisted())))
            .collect();
        Drained {
            deletes: std::mem::take(&mut self.deletes),
            puts,
            states,
            live: self
                .logs
                .iter()
                .map(|(id, m)| (*id, m.live_bytes))
                .collect(),
        }
    }

    /// The drained changes are in the index: forget them, count the bytes the index reported
    /// dead (rows overwritten or deleted).
    pub fn flushed(&mut self, dead: &HashMap<u32, u64>) {
        self.flushing = Arc::default();
        for (log, bytes) in dead {
            if let Some(meta) = self.logs.get_mut(log) {
                meta.live_bytes = meta.live_bytes.saturating_sub(*bytes);
            }
        }
    }

    /// The drained changes could not be committed: put them back in front of what came since,
    /// so the next checkpoint retries them in order.
    pub fn restore(&mut self, d: Drained) {
        self.flushing = Arc::default();
        let newer = std::mem::take(&mut self.pending);
        self.pending = Arc::try_unwrap(d.puts).unwrap_or_else(|shared| (*shared).clone());
        // A ledger deleted after the drain must not get its drained rows back.
        for l in self.deletes.clone() {
            let gone: Vec<Key> = self
                .pending
                .range((l.0, 0)..=(l.0, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            for key in gone {
                if let Some(loc) = self.pending.remove(&key) {
                    self.dead(loc);
                }
            }
        }
        for (key, loc) in newer {
            if let Some(old) = self.pending.insert(key, loc) {
                self.dead(old);
            }
        }
        let mut deletes = d.deletes;
        deletes.append(&mut self.deletes);
        self.deletes = deletes;
        self.dirty_ledgers.extend(d.states.iter().map(|(l, _)| *l));
    }
}
