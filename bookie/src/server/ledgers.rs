//! The in-memory state of the bookie's storage: per-ledger state and index, the entry logs with
//! their live/total byte counts, and what changed since the last checkpoint.
//!
//! One `RwLock<Store>` guards it all (see `Shared`): reads take it shared for a map lookup and
//! release it before any file I/O; the journal writer takes it exclusively once per batch.
//! Every change is also recorded in `ops`/`dirty_ledgers`, which the checkpoint drains into the
//! persistent index (`index.rs`) in the same order, so the index on disk is always a prefix of
//! the in-memory history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use magnetar_metadata::{EntryId, LedgerId};
use tokio::sync::watch;

use super::entrylog::Loc;
use super::journal::JournalPos;
use crate::api::{FenceResult, NO_ENTRY};

/// One ledger as this bookie knows it.
#[derive(Debug)]
pub(crate) struct LedgerState {
    pub fenced: bool,
    /// The highest LAC carried by a stored entry (-1: none).
    pub lac: i64,
    /// The highest entry id stored (-1: none).
    pub last_entry: i64,
    pub entries: BTreeMap<u64, Loc>,
    /// Long-polling `read_lac` callers wait on this; it always holds `lac`.
    pub lac_tx: watch::Sender<i64>,
}

impl LedgerState {
    pub fn new(fenced: bool, lac: i64, last_entry: i64) -> Self {
        LedgerState {
            fenced,
            lac,
            last_entry,
            entries: BTreeMap::new(),
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

/// A change to the persistent index, in the order it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IndexOp {
    Put(LedgerId, EntryId, Loc),
    DeleteLedger(LedgerId),
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    pub ledgers: HashMap<LedgerId, LedgerState>,
    pub logs: BTreeMap<u32, LogMeta>,
    /// Index changes since the last checkpoint.
    pub ops: Vec<IndexOp>,
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

    pub fn contains(&self, ledger: LedgerId, entry: EntryId) -> bool {
        self.ledgers
            .get(&ledger)
            .is_some_and(|l| l.entries.contains_key(&entry.0))
    }

    pub fn is_fenced(&self, ledger: LedgerId) -> bool {
        self.ledgers.get(&ledger).is_some_and(|l| l.fenced)
    }

    /// Indexes a stored entry; `false` (and its bytes stay dead) if it was already there.
    pub fn insert_entry(&mut self, ledger: LedgerId, entry: EntryId, lac: i64, loc: Loc) -> bool {
        let state = self.ledger_mut(ledger);
        if state.entries.contains_key(&entry.0) {
            return false;
        }
        state.entries.insert(entry.0, loc);
        state.last_entry = state.last_entry.max(entry.0 as i64);
        if lac > state.lac {
            state.lac = lac;
            state.lac_tx.send_replace(lac);
        }
        if let Some(log) = self.logs.get_mut(&loc.log) {
            log.live_bytes += loc.record_bytes();
        }
        self.dirty_ledgers.insert(ledger);
        self.ops.push(IndexOp::Put(ledger, entry, loc));
        true
    }

    pub fn fence(&mut self, ledger: LedgerId) -> FenceResult {
        let state = self.ledger_mut(ledger);
        state.fenced = true;
        let result = state.fence_result();
        self.dirty_ledgers.insert(ledger);
        result
    }

    /// Drops a ledger's state and index; its bytes in the entry logs become dead. Dropping
    /// the LAC sender ends the long polls on it.
    pub fn delete(&mut self, ledger: LedgerId) {
        let Some(state) = self.ledgers.remove(&ledger) else {
            return;
        };
        for loc in state.entries.values() {
            if let Some(log) = self.logs.get_mut(&loc.log) {
                log.live_bytes = log.live_bytes.saturating_sub(loc.record_bytes());
            }
        }
        self.dirty_ledgers.insert(ledger);
        self.ops.push(IndexOp::DeleteLedger(ledger));
    }

    /// Moves an entry compaction copied, unless it changed meanwhile (deleted, or moved).
    pub fn relocate(&mut self, ledger: LedgerId, entry: EntryId, old: Loc, new: Loc) -> bool {
        let Some(state) = self.ledgers.get_mut(&ledger) else {
            return false;
        };
        match state.entries.get_mut(&entry.0) {
            Some(loc) if *loc == old => *loc = new,
            _ => return false,
        }
        if let Some(log) = self.logs.get_mut(&old.log) {
            log.live_bytes = log.live_bytes.saturating_sub(old.record_bytes());
        }
        if let Some(log) = self.logs.get_mut(&new.log) {
            log.live_bytes += new.record_bytes();
        }
        self.ops.push(IndexOp::Put(ledger, entry, new));
        true
    }

    /// Counts bytes appended to a log (live or not).
    pub fn wrote(&mut self, log: u32, bytes: u64) {
        if let Some(meta) = self.logs.get_mut(&log) {
            meta.total_bytes += bytes;
            meta.unsynced = true;
        }
    }
}
