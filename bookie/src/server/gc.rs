//! Garbage collection: compaction of entry logs that are mostly dead.
//!
//! Deleting a ledger, or storing an entry again, makes bytes in the entry logs dead; the store
//! counts live bytes per log exactly (see `ledgers.rs`). A log (never the current one) whose
//! live fraction is below `gc_live_ratio_min` is compacted: after a checkpoint (so every entry
//! in it is in the index), the log is read sequentially and each record whose index row still
//! points at it is copied, CRC-checked, to the current log in chunks (taking the appender lock
//! per chunk so adds interleave), re-pointed only if it did not change meanwhile, then a
//! checkpoint makes the new locations durable, and only after that is the old file deleted —
//! and only if its live byte count reached zero. A crash anywhere in between leaves either the
//! old or the new location indexed, both intact.
//!
//! Nothing here walks the index or holds the store lock for more than a chunk's map updates:
//! the journal thread's adds are never stalled behind compaction.
//!
//! If a live entry in the old log fails its CRC, that log is left alone (logged): deleting it
//! would turn "corrupt" into "missing" for that entry, and the reader's retry on another replica
//! works better with the former.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;

use bytes::Bytes;
use magnetar_metadata::{EntryId, LedgerId};

use super::Shared;
use super::entrylog::{self, Loc};
use super::index;
use super::writer::rotate_if_full;

/// Bytes copied per appender-lock hold, so compaction never stalls adds for long.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Read buffer of the sequential scan of a log.
const SCAN_BUFFER_BYTES: usize = 1024 * 1024;

/// One pass over all logs; returns how many log files it reclaimed.
pub(crate) fn gc_pass(shared: &Shared) -> Result<usize, String> {
    // Logs before the current one hold only entries written before this checkpoint, so all of
    // theirs are in the index after it; the checkpoint also counts the bytes of ledgers deleted
    // since the last one dead (their rows leave the index there).
    let current = shared.lock_appender().id;
    index::checkpoint(shared)?;
    let ratio = shared.opts.gc_live_ratio_min;
    let candidates: Vec<(u32, PathBuf, u64)> = {
        let store = shared.read_store();
        store
            .logs
            .range(..current)
            .filter(|(_, m)| (m.live_bytes as f64) < ratio * (m.total_bytes.max(1) as f64))
            .map(|(id, m)| (*id, m.path.clone(), m.total_bytes))
            .collect()
    };
    let mut reclaimed = 0;
    for (id, path, total) in candidates {
        if compact(shared, id, &path, total)? {
            reclaimed += 1;
        }
    }
    Ok(reclaimed)
}

/// A record the scan found still live, with its raw bytes.
type Moved = (LedgerId, EntryId, Loc, u64);

fn compact(shared: &Shared, id: u32, path: &PathBuf, total: u64) -> Result<bool, String> {
    let live_before = shared
        .read_store()
        .logs
        .get(&id)
        .map_or(0, |m| m.live_bytes);
    tracing::info!(
        log = id,
        live_bytes = live_before,
        total_bytes = total,
        "compacting entry log"
    );
    let file = File::open(path).map_err(|e| format!("opening log {id:08x} to compact: {e}"))?;
    let mut reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, file);
    let snapshot = shared
        .index()
        .ok_or("index: closed (bookie shut down)")?
        .snapshot()?;
    let mut buf: Vec<u8> = Vec::new();
    let mut moved: Vec<Moved> = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; entrylog::HEADER_MIN_BYTES as usize];
    while offset + entrylog::HEADER_MIN_BYTES <= total {
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let Some((ledger, entry, loc)) = entrylog::parse_header(&header, id, offset) else {
            tracing::warn!(
                log = id,
                offset,
                "entry log scan stopped at an invalid record"
            );
            break;
        };
        if offset + loc.record_bytes() > total {
            break;
        }
        let mut raw = vec![0u8; loc.record_bytes() as usize];
        raw[..header.len()].copy_from_slice(&header);
        reader
            .read_exact(&mut raw[header.len()..])
            .map_err(|e| format!("compaction read of log {id:08x}: {e}"))?;
        offset += loc.record_bytes();
        if snapshot.get(ledger, entry)? != Some(loc) {
            continue;
        }
        let raw = Bytes::from(raw);
        if entrylog::decode(raw.clone(), loc, ledger, entry).is_none() {
            tracing::error!(%ledger, %entry, log = id, "corrupt entry; log not compacted");
            return Ok(false);
        }
        moved.push((ledger, entry, loc, buf.len() as u64));
        buf.extend_from_slice(&raw);
        if buf.len() >= CHUNK_BYTES {
            copy_chunk(shared, &buf, &moved)?;
            buf.clear();
            moved.clear();
        }
    }
    drop(snapshot);
    if !buf.is_empty() {
        copy_chunk(shared, &buf, &moved)?;
    }
    // The new locations must be durable before the old bytes go; the commit also counts the
    // old copies dead.
    index::checkpoint(shared)?;
    let meta = {
        let mut store = shared.write_store();
        if let Some(live) = store.logs.get(&id).map(|m| m.live_bytes).filter(|l| *l > 0) {
            // Live entries the scan did not reach (a damaged record stopped it): keep the file.
            tracing::warn!(
                log = id,
                live_bytes = live,
                "entry log still live after compaction; kept"
            );
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

/// Appends one chunk of live records to the current log and re-points them.
fn copy_chunk(shared: &Shared, buf: &[u8], moved: &[Moved]) -> Result<(), String> {
    let mut app = shared.lock_appender();
    let base = app
        .append(buf)
        .map_err(|e| format!("compaction write: {e}"))?;
    let next = rotate_if_full(shared, &app);
    let mut store = shared.write_store();
    store.wrote(app.id, buf.len() as u64);
    for (ledger, entry, old, rel) in moved {
        // Copied verbatim: the record keeps its format.
        let new = Loc {
            log: app.id,
            offset: base + rel,
            ..*old
        };
        store.relocate(*ledger, *entry, *old, new);
    }
    if let Some((next, meta)) = next {
        store.logs.insert(next.id, meta);
        *app = next;
    }
    Ok(())
}
