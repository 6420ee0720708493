//! Garbage collection: compaction of entry logs that are mostly dead.
//!
//! Deleting a ledger, or storing an entry again, makes bytes in the entry logs dead; the store
//! counts live bytes per log exactly (see `ledgers.rs`). A log (never the current one) whose
//! live fraction is below `gc_live_ratio_min` is compacted: after a checkpoint (so every entry
//! in it is in the index), the log is read sequentially and each record whose index row still
//! points at it is copied, CRC-checked, to the current log in chunks (taking the appender lock
//! per chunk so adds interleave), re-pointed only if it did not change meanwhile; once every
//! candidate is copied, one checkpoint makes the new locations durable, and only after that are
//! the old files deleted — each only if its live byte count reached zero. A crash anywhere in between leaves either the
//! old or the new location indexed, both intact.
//!
//! Nothing here walks the index or holds the store lock for more than a chunk's map updates:
//! the journal thread's adds are never stalled behind compaction. Nor behind the disk: each
//! copied chunk's writeback starts at once (outside every lock, without an fsync), so no
//! checkpoint has to write out megabytes of compaction output while the journal waits for its
//! fdatasync behind it; one checkpoint per pass (not per log) makes the copies durable;
//! and scanning is paced to `gc_compaction_rate_bytes_per_s` (BookKeeper's
//! `compactionRateByBytes`) so compaction takes a bounded share of the disk and CPU. Dead
//! records are skipped unread; the pages the scan read leave the cache as it goes, and the old
//! logs are unlinked apart, so no burst of page freeing and file-system journal commits holds
//! adds at the end of a pass.
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
/// The pause between two log deletions of a pass.
const DELETE_SPACING: std::time::Duration = std::time::Duration::from_millis(20);
/// How far the scan gets ahead before the pages it read leave the cache.
const UNCACHE_STEP_BYTES: u64 = 4 * 1024 * 1024;

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
    // Every candidate is copied first, then one checkpoint makes all new locations durable
    // and one directory sync covers every deletion: a pass costs two checkpoints, not two per
    // log (each checkpoint's fsyncs delay the journal's on the same disk).
    let clock = magnetar_metadata::clock::system();
    let started = clock.now();
    let mut compacted = Vec::new();
    for (id, path, total) in candidates {
        if copy_live(shared, id, &path, total)? {
            compacted.push(id);
        }
    }
    if compacted.is_empty() {
        return Ok(0);
    }
    // The new locations must be durable before the old bytes go; the commit also counts the
    // old copies dead.
    let copied = clock.now();
    index::checkpoint(shared)?;
    let checkpointed = clock.now();
    let mut reclaimed = 0;
    for (i, id) in compacted.into_iter().enumerate() {
        // Unlinks apart: each frees a log's blocks in the file system's journal, which the
        // bookie journal's next fdatasync waits behind; back to back, adds queued behind several.
        if i > 0 && wait_unless_closed(shared, DELETE_SPACING).is_err() {
            break;
        }
        if remove_if_dead(shared, id)? {
            reclaimed += 1;
        }
    }
    if reclaimed > 0 {
        let _ = super::journal::sync_dir(&shared.ledgers_dir);
    }
    // Each phase's share, so an add-latency spike during a pass can be put down to one.
    tracing::info!(
        reclaimed,
        copy_ms = (copied - started).as_millis() as u64,
        checkpoint_ms = (checkpointed - copied).as_millis() as u64,
        delete_ms = (clock.now() - checkpointed).as_millis() as u64,
        "compaction pass done"
    );
    Ok(reclaimed)
}

/// A record the scan found still live, with its raw bytes.
type Moved = (LedgerId, EntryId, Loc, u64);

/// Copies the live records of log `id` to the current log; false if the log must stay (a
/// corrupt live entry).
fn copy_live(shared: &Shared, id: u32, path: &PathBuf, total: u64) -> Result<bool, String> {
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
    let mut pace = Pace::new(shared.opts.gc_compaction_rate_bytes_per_s);
    let mut offset = 0u64;
    let mut uncached_to = 0u64;
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
        offset += loc.record_bytes();
        pace.advance(shared, loc.record_bytes())?;
        if offset - uncached_to >= UNCACHE_STEP_BYTES {
            uncache(reader.get_ref(), uncached_to, offset);
            uncached_to = offset;
        }
        if snapshot.get(ledger, entry)? != Some(loc) {
            // Dead: skipped unread (most of a log worth compacting).
            let rest = i64::try_from(loc.record_bytes() - header.len() as u64).unwrap_or(i64::MAX);
            reader
                .seek_relative(rest)
                .map_err(|e| format!("compaction scan of log {id:08x}: {e}"))?;
            continue;
        }
        let mut raw = vec![0u8; loc.record_bytes() as usize];
        raw[..header.len()].copy_from_slice(&header);
        reader
            .read_exact(&mut raw[header.len()..])
            .map_err(|e| format!("compaction read of log {id:08x}: {e}"))?;
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
    uncache(reader.get_ref(), uncached_to, total);
    if !buf.is_empty() {
        copy_chunk(shared, &buf, &moved)?;
    }
    Ok(true)
}

/// Drops the scanned part of an old log from the page cache as the scan goes: the log is
/// deleted after the pass, and freeing its cached pages then — all at once, inside the unlink —
/// held adds for milliseconds at the end of every pass (`cargo bench --bench bookie -- gc`).
fn uncache(file: &File, from: u64, to: u64) {
    if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
        let _ = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// Deletes log `id` if nothing in it is live any more (after the checkpoint that followed its
/// copy); true if deleted.
fn remove_if_dead(shared: &Shared, id: u32) -> Result<bool, String> {
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
        tracing::info!(log = id, "entry log reclaimed");
    }
    Ok(true)
}

/// Holds compaction to a rate of bytes scanned: sleeps (on the GC's own blocking thread) while
/// it is ahead of the rate since it started, checking every [`PACE_STEP_BYTES`] so that it
/// works and rests in short slices (a 2-core bookie's journal thread then never waits a whole
/// scheduler slice behind it).
struct Pace {
    rate_bytes_per_s: u64,
    started: std::time::Instant,
    bytes: u64,
    unchecked: u64,
}

const PACE_STEP_BYTES: u64 = 256 * 1024;

impl Pace {
    fn new(rate_bytes_per_s: u64) -> Self {
        Pace {
            rate_bytes_per_s,
            started: magnetar_metadata::clock::system().now(),
            bytes: 0,
            unchecked: 0,
        }
    }

    fn advance(&mut self, shared: &Shared, n: u64) -> Result<(), String> {
        if self.rate_bytes_per_s == 0 {
            return Ok(());
        }
        self.bytes += n;
        self.unchecked += n;
        if self.unchecked < PACE_STEP_BYTES {
            return Ok(());
        }
        self.unchecked = 0;
        let due =
            std::time::Duration::from_secs_f64(self.bytes as f64 / self.rate_bytes_per_s as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            wait_unless_closed(shared, ahead)?;
        }
        Ok(())
    }
}

/// Waits `total` on the GC's own blocking thread (never the async runtime), in short slices so
/// that a bookie shutting down (its index closed) ends a paced pass at once instead of having it
/// copy on for seconds.
fn wait_unless_closed(shared: &Shared, total: std::time::Duration) -> Result<(), String> {
    const SLICE: std::time::Duration = std::time::Duration::from_millis(50);
    let clock = magnetar_metadata::clock::system();
    let until = clock.now() + total;
    loop {
        if shared.index().is_none() {
            return Err("compaction stopped: the bookie is shutting down".to_owned());
        }
        let left = until.saturating_duration_since(clock.now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(SLICE));
    }
}

/// Appends one chunk of live records to the current log and re-points them, then flushes the
/// chunk (outside the locks) so compaction output never piles up for a checkpoint to flush.
fn copy_chunk(shared: &Shared, buf: &[u8], moved: &[Moved]) -> Result<(), String> {
    let (file, at) = copy_and_relocate(shared, buf, moved)?;
    // Starts the chunk's writeback now without waiting for it and without an fsync (which would
    // commit the file system's journal and hold the bookie journal's fdatasync behind it); the
    // pages of moved old entries leave the cache too. The checkpoint after compaction syncs.
    let _ = rustix::fs::fadvise(
        &*file,
        at,
        std::num::NonZeroU64::new(buf.len() as u64),
        rustix::fs::Advice::DontNeed,
    );
    Ok(())
}

/// The copy itself; returns the log written and where, to flush.
fn copy_and_relocate(
    shared: &Shared,
    buf: &[u8],
    moved: &[Moved],
) -> Result<(std::sync::Arc<File>, u64), String> {
    let mut app = shared.lock_appender();
    let written = app.file.clone();
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
    Ok((written, base))
}
