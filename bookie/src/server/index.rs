//! The persistent index (`data_dir/ledgers/index.redb`) and the checkpoint that writes it.
//!
//! The index is the only complete record of where entries are: memory holds just what was
//! written since the last checkpoint (`ledgers.rs`), and lookups of older entries read redb's
//! B-tree through its page cache, bounded by `index_cache_size_bytes`. So memory and start-up
//! time do not grow with stored entries: opening loads the per-ledger states and per-log live
//! byte counts, then replays the journal since the checkpoint.
//!
//! Why redb rather than per-ledger index files: one transaction makes a whole checkpoint atomic
//! — index entries of many ledgers, ledger states (fenced, LAC, last entry), deletions, live
//! bytes per entry log, and the journal position they correspond to — so no crash can leave an
//! index that disagrees with the recorded journal position; per-ledger files would need their
//! own commit protocol to get that. Its copy-on-write B-tree commits cost one or two fsyncs per
//! checkpoint, once a second, off the write path; readers see the last commit without locks.
//!
//! Tables: `entries` (ledger, entry) → (log, offset, payload length); `ledgers` ledger →
//! (fenced, LAC, last entry); `logs` log → live bytes; `meta` "checkpoint" → (journal
//! generation, offset). An index written before `logs` existed gets it computed once at open.
//!
//! Checkpoint order, which is what makes trimming the journal safe: take the changes and the
//! applied journal position under the store lock → fdatasync the entry logs written since the
//! last checkpoint (and their directory) → commit the index with the position → retire the
//! journal files wholly before that position.

use std::collections::HashMap;
use std::path::Path;

use magnetar_metadata::crash_point;
use magnetar_metadata::{EntryId, LedgerId};
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition};

use super::Shared;
use super::entrylog::Loc;
use super::journal::{self, JournalPos};
use super::ledgers::{Drained, PersistedState};

const ENTRIES: TableDefinition<(u64, u64), (u32, u64, u32)> = TableDefinition::new("entries");
const LEDGERS: TableDefinition<u64, (u8, i64, i64)> = TableDefinition::new("ledgers");
const LOGS: TableDefinition<u32, u64> = TableDefinition::new("logs");
const META: TableDefinition<&str, (u32, u64)> = TableDefinition::new("meta");
const CHECKPOINT_KEY: &str = "checkpoint";
/// Present once `logs` holds every log's live bytes.
const LOGS_KEY: &str = "logs";

fn err(e: impl std::fmt::Display) -> String {
    format!("index: {e}")
}

/// The text of a caught panic, when it carried one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

fn loc_of(row: (u32, u64, u32)) -> Loc {
    Loc::from_row(row)
}

/// What the index held at open.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub ledgers: HashMap<LedgerId, PersistedState>,
    /// Live bytes per entry log, as of the checkpoint.
    pub live: HashMap<u32, u64>,
    pub checkpoint: JournalPos,
}

#[derive(Debug)]
pub(crate) struct Index {
    db: Database,
}

/// A consistent view of the index as of its last commit, for lookups.
pub(crate) struct Snapshot {
    entries: ReadOnlyTable<(u64, u64), (u32, u64, u32)>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("index::Snapshot")
    }
}

impl Snapshot {
    /// Entry locations in the index (the store keeps the count: no scan).
    pub fn len(&self) -> Result<u64, String> {
        use redb::ReadableTableMetadata;
        self.entries.len().map_err(err)
    }

    /// Where an entry is on disk. The index store panics on some corrupt tree pages instead of
    /// returning an error: the panic becomes an error naming the entry, so the read fails
    /// cleanly and the bookie keeps serving every entry whose pages are intact.
    pub fn get(&self, ledger: LedgerId, entry: EntryId) -> Result<Option<Loc>, String> {
        let looked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.entries
                .get((ledger.0, entry.0))
                .map(|found| found.map(|v| loc_of(v.value())))
        }));
        match looked {
            Ok(found) => found.map_err(|e| format!("index: ledger {ledger} entry {entry}: {e}")),
            Err(panic) => Err(format!(
                "index: the page holding ledger {ledger} entry {entry} is corrupt ({}): this \
                 bookie cannot serve it; its replicas on other bookies can",
                panic_message(panic.as_ref())
            )),
        }
    }
}

impl Index {
    pub fn open(path: &Path, cache_size_bytes: usize) -> Result<Index, String> {
        let db = Database::builder()
            .set_cache_size(cache_size_bytes)
            .create(path)
            .map_err(err)?;
        Ok(Index { db })
    }

    pub fn snapshot(&self) -> Result<Snapshot, String> {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let txn = self.db.begin_read().map_err(err)?;
            Ok(Snapshot {
                entries: txn.open_table(ENTRIES).map_err(err)?,
            })
        }));
        opened.unwrap_or_else(|panic| {
            Err(format!(
                "index: its root pages are corrupt ({})",
                panic_message(panic.as_ref())
            ))
        })
    }

    pub fn load(&self) -> Result<Loaded, String> {
        let mut loaded = Loaded::default();
        // A write transaction so the tables exist from the first open on.
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_quick_repair(true);
        {
            let ledgers = txn.open_table(LEDGERS).map_err(err)?;
            for row in ledgers.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let (fenced, lac, last_entry) = v.value();
                let state = PersistedState {
                    fenced: fenced != 0,
                    lac,
                    last_entry,
                };
                loaded.ledgers.insert(LedgerId(k.value()), state);
            }
            let entries = txn.open_table(ENTRIES).map_err(err)?;
            let mut logs = txn.open_table(LOGS).map_err(err)?;
            let mut meta = txn.open_table(META).map_err(err)?;
            if meta.get(LOGS_KEY).map_err(err)?.is_none() {
                // An index from before per-log live bytes were kept: count them once.
                let mut live: HashMap<u32, u64> = HashMap::new();
                for row in entries.iter().map_err(err)? {
                    let (_, v) = row.map_err(err)?;
                    let loc = loc_of(v.value());
                    *live.entry(loc.log).or_default() += loc.record_bytes();
                }
                for (log, bytes) in &live {
                    logs.insert(*log, *bytes).map_err(err)?;
                }
                meta.insert(LOGS_KEY, (1, 0)).map_err(err)?;
                tracing::info!(logs = live.len(), "index: per-log live bytes computed once");
            }
            for row in logs.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                loaded.live.insert(k.value(), v.value());
            }
            if let Some(v) = meta.get(CHECKPOINT_KEY).map_err(err)? {
                let (generation, offset) = v.value();
                loaded.checkpoint = JournalPos { generation, offset };
            }
        }
        txn.commit().map_err(err)?;
        Ok(loaded)
    }

    /// One atomic, durable checkpoint of the drained changes. Returns the bytes per entry log
    /// that became dead because their rows were overwritten or deleted.
    pub fn commit(&self, d: &Drained, pos: JournalPos) -> Result<HashMap<u32, u64>, String> {
        let mut dead: HashMap<u32, u64> = HashMap::new();
        let mut txn = self.db.begin_write().map_err(err)?;
        // Each commit records the allocator state (and commits in two phases), so opening the
        // index after a crash loads that state instead of walking the whole file to rebuild it:
        // a bookie's start-up after kill -9 does not grow with the entries it stores.
        txn.set_quick_repair(true);
        {
            let mut entries = txn.open_table(ENTRIES).map_err(err)?;
            for ledger in &d.deletes {
                entries
                    .retain_in((ledger.0, 0)..=(ledger.0, u64::MAX), |_, v| {
                        let loc = loc_of(v);
                        *dead.entry(loc.log).or_default() += loc.record_bytes();
                        false
                    })
                    .map_err(err)?;
            }
            for (key, loc) in d.puts.iter() {
                let old = entries
                    .insert(*key, loc.to_row())
                    .map_err(err)?
                    .map(|v| loc_of(v.value()));
                if let Some(old) = old.filter(|old| old != loc) {
                    *dead.entry(old.log).or_default() += old.record_bytes();
                }
            }
            let mut ledgers = txn.open_table(LEDGERS).map_err(err)?;
            for (ledger, state) in &d.states {
                match state {
                    Some(s) => {
                        ledgers
                            .insert(ledger.0, (u8::from(s.fenced), s.lac, s.last_entry))
                            .map_err(err)?;
                    }
                    None => {
                        ledgers.remove(ledger.0).map_err(err)?;
                    }
                }
            }
            let mut logs = txn.open_table(LOGS).map_err(err)?;
            logs.retain(|_, _| false).map_err(err)?;
            for (log, live) in &d.live {
                let bytes = live.saturating_sub(dead.get(log).copied().unwrap_or(0));
                logs.insert(*log, bytes).map_err(err)?;
            }
            let mut meta = txn.open_table(META).map_err(err)?;
            meta.insert(CHECKPOINT_KEY, (pos.generation, pos.offset))
                .map_err(err)?;
        }
        txn.commit().map_err(err)?;
        Ok(dead)
    }
}

/// Turns an index into one from before `logs` existed (tests of the one-time count at open).
#[cfg(test)]
pub(crate) fn forget_live_bytes(path: &Path) -> Result<(), String> {
    let db = Database::create(path).map_err(err)?;
    let txn = db.begin_write().map_err(err)?;
    txn.delete_table(LOGS).map_err(err)?;
    txn.open_table(META)
        .map_err(err)?
        .remove(LOGS_KEY)
        .map_err(err)?;
    txn.commit().map_err(err)
}

/// Makes everything applied so far durable outside the journal, then trims the journal.
/// Blocking: call from a blocking thread. Serialized by `checkpoint_lock`.
pub(crate) fn checkpoint(shared: &Shared) -> Result<(), String> {
    let mut last = shared.lock_checkpoint();
    if shared.has_sync_failed() {
        // A sync failed before: what the entry logs hold is unknown, so nothing may be
        // declared durable (index committed, journal trimmed) until a restart replays.
        return Err("a sync failed earlier: no checkpoint until the bookie restarts".to_owned());
    }
    let (drained, files, pos) = {
        let mut st = shared.write_store();
        let drained = st.drain();
        let mut files = Vec::new();
        for (id, meta) in st.logs.iter_mut() {
            if meta.unsynced {
                meta.unsynced = false;
                files.push((*id, meta.file.clone()));
            }
        }
        (drained, files, st.applied)
    };
    if drained.puts.is_empty()
        && drained.deletes.is_empty()
        && drained.states.is_empty()
        && files.is_empty()
        && pos == *last
    {
        shared.write_store().flushed(&HashMap::new());
        return Ok(());
    }
    let restore = |drained: Drained, why: String| {
        let mut st = shared.write_store();
        st.restore(drained);
        for (id, _) in &files {
            if let Some(meta) = st.logs.get_mut(id) {
                meta.unsynced = true;
            }
        }
        tracing::error!(error = %why, "checkpoint failed");
        why
    };
    let sync_failed = |drained: Drained, why: String| {
        shared.sync_failed(&why);
        restore(drained, why)
    };
    for (id, file) in &files {
        #[cfg(test)]
        if shared
            .inject_log_sync_failure
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            let why = format!("fdatasync of entry log {id:08x}: injected EIO");
            return Err(sync_failed(drained, why));
        }
        if let Err(e) = rustix::fs::fdatasync(&**file) {
            let why = format!("fdatasync of entry log {id:08x}: {e}");
            return Err(sync_failed(drained, why));
        }
    }
    if !files.is_empty()
        && let Err(e) = journal::sync_dir(&shared.ledgers_dir)
    {
        let why = format!("fsync of the ledgers directory: {e}");
        return Err(sync_failed(drained, why));
    }
    crash_point::reached(crash_point::CHECKPOINT_LOGS_SYNCED);
    let committed = match shared.index() {
        Some(index) => index.commit(&drained, pos).map_err(|e| (e, true)),
        None => Err(("index: closed (bookie shut down)".to_owned(), false)),
    };
    match committed {
        Ok(dead) => shared.write_store().flushed(&dead),
        // The index store's own commit syncs; its failure is a sync failure too.
        Err((e, true)) => return Err(sync_failed(drained, e)),
        Err((e, false)) => return Err(restore(drained, e)),
    }
    crash_point::reached(crash_point::CHECKPOINT_INDEX_COMMITTED);
    *last = pos;
    drop(last);
    trim_journal(shared, pos);
    Ok(())
}

/// Refreshes the count of entries in the index (for the metrics). Blocking.
pub(crate) fn count_entries(shared: &Shared) {
    let Some(index) = shared.index() else { return };
    match index.snapshot().and_then(|s| s.len()) {
        Ok(n) => shared
            .entries_indexed
            .store(n, std::sync::atomic::Ordering::Relaxed),
        Err(e) => tracing::debug!(error = %e, "index entries could not be counted"),
    }
}

/// Retires journal files wholly before `pos` (their records are all checkpointed).
fn trim_journal(shared: &Shared, pos: JournalPos) {
    let files = match journal::list(&shared.journal_dir) {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(error = %e, "listing journal files to trim");
            return;
        }
    };
    let mut removed = false;
    for (generation, path) in files {
        if generation >= pos.generation {
            break;
        }
        match journal::retire(&shared.journal_dir, generation, &path) {
            Ok(()) => removed = true,
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "trimming journal"),
        }
    }
    if removed && let Err(e) = journal::sync_dir(&shared.journal_dir) {
        tracing::warn!(error = %e, "fsync of the journal directory after trimming");
    }
}
