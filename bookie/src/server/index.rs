//! The persistent index (`data_dir/ledgers/index.redb`) and the checkpoint that writes it.
//!
//! Why redb rather than per-ledger index files: one transaction makes a whole checkpoint atomic
//! — index entries of many ledgers, ledger states (fenced, LAC, last entry), deletions, and the
//! journal position they correspond to — so no crash can leave an index that disagrees with the
//! recorded journal position; per-ledger files would need their own commit protocol to get that.
//! redb is already a dependency (the embedded metadata store) and its copy-on-write B-tree
//! commits cost one or two fsyncs per checkpoint, once a second, off the write path.
//!
//! Tables: `entries` (ledger, entry) → (log, offset, payload length); `ledgers` ledger →
//! (fenced, LAC, last entry); `meta` "checkpoint" → (journal generation, offset).
//!
//! Checkpoint order, which is what makes trimming the journal safe: take the changes and the
//! applied journal position under the store lock → fdatasync the entry logs written since the
//! last checkpoint (and their directory) → commit the index with the position → retire the
//! journal files wholly before that position.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use magnetar_metadata::{EntryId, LedgerId};
use redb::{Database, ReadableTable, TableDefinition};

use super::Shared;
use super::entrylog::Loc;
use super::journal::{self, JournalPos};
use super::ledgers::{IndexOp, PersistedState};

const ENTRIES: TableDefinition<(u64, u64), (u32, u64, u32)> = TableDefinition::new("entries");
const LEDGERS: TableDefinition<u64, (u8, i64, i64)> = TableDefinition::new("ledgers");
const META: TableDefinition<&str, (u32, u64)> = TableDefinition::new("meta");
const CHECKPOINT_KEY: &str = "checkpoint";

fn err(e: impl std::fmt::Display) -> String {
    format!("index: {e}")
}

/// What the index held at open.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub ledgers: HashMap<LedgerId, (PersistedState, BTreeMap<u64, Loc>)>,
    pub checkpoint: JournalPos,
}

#[derive(Debug)]
pub(crate) struct Index {
    db: Database,
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, String> {
        Ok(Index {
            db: Database::create(path).map_err(err)?,
        })
    }

    pub fn load(&self) -> Result<Loaded, String> {
        let mut loaded = Loaded::default();
        // A write transaction so the tables exist from the first open on.
        let txn = self.db.begin_write().map_err(err)?;
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
                loaded
                    .ledgers
                    .insert(LedgerId(k.value()), (state, BTreeMap::new()));
            }
            let entries = txn.open_table(ENTRIES).map_err(err)?;
            for row in entries.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                let (ledger, entry) = k.value();
                let (log, offset, len) = v.value();
                let (_, map) = loaded.ledgers.entry(LedgerId(ledger)).or_insert_with(|| {
                    let state = PersistedState {
                        fenced: false,
                        lac: crate::api::NO_ENTRY,
                        last_entry: crate::api::NO_ENTRY,
                    };
                    (state, BTreeMap::new())
                });
                map.insert(entry, Loc { log, offset, len });
            }
            let meta = txn.open_table(META).map_err(err)?;
            if let Some(v) = meta.get(CHECKPOINT_KEY).map_err(err)? {
                let (generation, offset) = v.value();
                loaded.checkpoint = JournalPos { generation, offset };
            }
        }
        txn.commit().map_err(err)?;
        Ok(loaded)
    }

    /// One atomic, durable checkpoint of the changes since the last one.
    pub fn commit(
        &self,
        ops: &[IndexOp],
        states: &[(LedgerId, Option<PersistedState>)],
        pos: JournalPos,
    ) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(err)?;
            for op in ops {
                match *op {
                    IndexOp::Put(ledger, EntryId(entry), loc) => {
                        entries
                            .insert((ledger.0, entry), (loc.log, loc.offset, loc.len))
                            .map_err(err)?;
                    }
                    IndexOp::DeleteLedger(ledger) => {
                        entries
                            .retain_in((ledger.0, 0)..=(ledger.0, u64::MAX), |_, _| false)
                            .map_err(err)?;
                    }
                }
            }
            let mut ledgers = txn.open_table(LEDGERS).map_err(err)?;
            for (ledger, state) in states {
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
            let mut meta = txn.open_table(META).map_err(err)?;
            meta.insert(CHECKPOINT_KEY, (pos.generation, pos.offset))
                .map_err(err)?;
        }
        txn.commit().map_err(err)
    }
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
    let (ops, states, files, pos) = {
        let mut st = shared.write_store();
        let ops = std::mem::take(&mut st.ops);
        let dirty: Vec<LedgerId> = st.dirty_ledgers.drain().collect();
        let states: Vec<(LedgerId, Option<PersistedState>)> = dirty
            .into_iter()
            .map(|l| (l, st.ledgers.get(&l).map(|s| s.persisted())))
            .collect();
        let mut files = Vec::new();
        for (id, meta) in st.logs.iter_mut() {
            if meta.unsynced {
                meta.unsynced = false;
                files.push((*id, meta.file.clone()));
            }
        }
        (ops, states, files, st.applied)
    };
    if ops.is_empty() && states.is_empty() && files.is_empty() && pos == *last {
        return Ok(());
    }
    let restore = |why: String| {
        // Put the changes back in front so the next checkpoint retries them in order.
        let mut st = shared.write_store();
        st.ops.splice(0..0, ops.iter().copied());
        st.dirty_ledgers.extend(states.iter().map(|(l, _)| *l));
        for (id, _) in &files {
            if let Some(meta) = st.logs.get_mut(id) {
                meta.unsynced = true;
            }
        }
        tracing::error!(error = %why, "checkpoint failed");
        why
    };
    let sync_failed = |why: String| {
        shared.sync_failed(&why);
        restore(why)
    };
    for (id, file) in &files {
        #[cfg(test)]
        if shared
            .inject_log_sync_failure
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return Err(sync_failed(format!(
                "fdatasync of entry log {id:08x}: injected EIO"
            )));
        }
        if let Err(e) = rustix::fs::fdatasync(&**file) {
            return Err(sync_failed(format!("fdatasync of entry log {id:08x}: {e}")));
        }
    }
    if !files.is_empty()
        && let Err(e) = journal::sync_dir(&shared.ledgers_dir)
    {
        return Err(sync_failed(format!("fsync of the ledgers directory: {e}")));
    }
    let committed = match shared.lock_index().as_ref() {
        Some(index) => index.commit(&ops, &states, pos).map_err(|e| (e, true)),
        None => Err(("index: closed (bookie shut down)".to_owned(), false)),
    };
    match committed {
        Ok(()) => {}
        // The index store's own commit syncs; its failure is a sync failure too.
        Err((e, true)) => return Err(sync_failed(e)),
        Err((e, false)) => return Err(restore(e)),
    }
    *last = pos;
    drop(last);
    trim_journal(shared, pos);
    Ok(())
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
