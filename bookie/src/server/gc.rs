//! Garbage collection: compaction of entry logs that are mostly dead.
//!
//! Deleting a ledger only drops its index; its bytes stay in the entry logs, counted as dead.
//! A log (never the current one) whose live fraction is below `gc_live_ratio_min` is compacted:
//! its live entries are read back (CRC-checked), appended to the current log in chunks (taking
//! the appender lock per chunk so adds interleave), re-pointed in the index only if they did not
//! change meanwhile, then a checkpoint makes the new locations durable, and only after that is
//! the old file deleted. A crash anywhere in between leaves either the old or the new location
//! indexed, both intact.
//!
//! If a live entry in the old log fails its CRC, that log is left alone (logged): deleting it
//! would turn "corrupt" into "missing" for that entry, and the reader's retry on another replica
//! works better with the former.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use magnetar_metadata::{EntryId, LedgerId};

use super::Shared;
use super::entrylog::{self, Loc};
use super::index;
use super::writer::rotate_if_full;

/// Bytes copied per appender-lock hold, so compaction never stalls adds for long.
const CHUNK_BYTES: usize = 1024 * 1024;

/// One pass over all logs; returns how many log files it reclaimed.
pub(crate) fn gc_pass(shared: &Shared) -> Result<usize, String> {
    let current = shared.lock_appender().id;
    let ratio = shared.opts.gc_live_ratio_min;
    // One scan of the index finds the live entries of every candidate. Entries never move
    // *into* a non-current log, so the lists stay complete; ones deleted meanwhile are skipped
    // by `relocate`.
    let mut candidates: HashMap<u32, (Arc<File>, Vec<Live>)> = HashMap::new();
    {
        let store = shared.read_store();
        for (id, m) in &store.logs {
            if *id != current && (m.live_bytes as f64) < ratio * (m.total_bytes.max(1) as f64) {
                candidates.insert(*id, (m.file.clone(), Vec::new()));
            }
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        for (ledger, state) in &store.ledgers {
            for (entry, loc) in &state.entries {
                if let Some((_, live)) = candidates.get_mut(&loc.log) {
                    live.push((*ledger, EntryId(*entry), *loc));
                }
            }
        }
    }
    let mut candidates: Vec<_> = candidates.into_iter().collect();
    candidates.sort_by_key(|(id, _)| *id);
    let mut reclaimed = 0;
    for (id, (file, live)) in candidates {
        if compact(shared, id, &file, live)? {
            reclaimed += 1;
        }
    }
    Ok(reclaimed)
}

type Live = (LedgerId, EntryId, Loc);

fn compact(shared: &Shared, id: u32, file: &File, mut live: Vec<Live>) -> Result<bool, String> {
    // In file order: sequential reads.
    live.sort_by_key(|(_, _, loc)| loc.offset);
    tracing::info!(log = id, live_entries = live.len(), "compacting entry log");

    let mut buf: Vec<u8> = Vec::new();
    let mut moved: Vec<(LedgerId, EntryId, Loc, u64)> = Vec::new();
    let mut start = 0;
    while start < live.len() {
        buf.clear();
        moved.clear();
        let mut i = start;
        while i < live.len() && (buf.is_empty() || buf.len() < CHUNK_BYTES) {
            let (ledger, entry, loc) = live[i];
            let raw = entrylog::read_raw(file, loc)
                .map_err(|e| format!("compaction read of log {id:08x}: {e}"))?;
            if entrylog::decode(raw.clone().freeze(), loc, ledger, entry).is_none() {
                tracing::error!(%ledger, %entry, log = id, "corrupt entry; log not compacted");
                return Ok(false);
            }
            moved.push((ledger, entry, loc, buf.len() as u64));
            buf.extend_from_slice(&raw);
            i += 1;
        }
        start = i;
        let mut app = shared.lock_appender();
        let base = app
            .append(&buf)
            .map_err(|e| format!("compaction write: {e}"))?;
        let next = rotate_if_full(shared, &app);
        let mut store = shared.write_store();
        store.wrote(app.id, buf.len() as u64);
        for (ledger, entry, old, rel) in &moved {
            let new = Loc {
                log: app.id,
                offset: base + rel,
                len: old.len,
            };
            store.relocate(*ledger, *entry, *old, new);
        }
        if let Some((next, meta)) = next {
            store.logs.insert(next.id, meta);
            *app = next;
        }
    }
    // The new locations must be durable before the old bytes go.
    index::checkpoint(shared)?;
    let meta = {
        let mut store = shared.write_store();
        if store.logs.get(&id).is_some_and(|m| m.live_bytes > 0) {
            // Cannot happen (only the current log gains entries); keep the file if it does.
            tracing::warn!(log = id, "entry log still has live bytes after compaction");
            return Ok(false);
        }
        store.logs.remove(&id)
    };
    if let Some(meta) = meta {
        std::fs::remove_file(&meta.path)
            .map_err(|e| format!("removing entry log {}: {e}", meta.path.display()))?;
        let _ = super::journal::sync_dir(&shared.ledgers_dir);
        tracing::info!(log = id, "entry log reclaimed");
    }
    Ok(true)
}
