//! The journal writer: one dedicated OS thread doing group commit, and `apply`, which moves
//! journaled records into the entry log and the index (also used by replay).
//!
//! Adds, fences and deletes arrive on a bounded tokio channel (`journal_queue_capacity`: a
//! full queue makes callers wait, which is the backpressure). The thread blocks for the first
//! request, then takes whatever else is already queued up to `journal_batch_bytes_max` — no
//! timer: a batch is flushed as soon as the queue is drained, so under light load an add costs
//! one fdatasync and under heavy load many adds share one (DESIGN §3). Each batch is encoded
//! into one reusable buffer, written with one `pwrite`, fdatasynced, applied to the entry log
//! (one more `pwrite`) and index, and only then are its callers answered.
//!
//! Disk I/O and fsync never run on the async runtime: this thread owns them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use magnetar_metadata::LedgerId;
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::entrylog::{self, Appender, Loc};
use super::journal::{self, JournalFile, JournalPos, Record};
use super::ledgers::LogMeta;
use crate::api::{BookieError, BookieResult, Entry, FenceResult};

/// A request to the journal writer.
#[derive(Debug)]
pub(crate) enum Op {
    Add {
        entry: Entry,
        recovery: bool,
        done: oneshot::Sender<BookieResult<()>>,
    },
    Fence {
        ledger: LedgerId,
        done: oneshot::Sender<BookieResult<FenceResult>>,
    },
    Delete {
        ledger: LedgerId,
        done: oneshot::Sender<BookieResult<()>>,
    },
    /// Finish what is queued before this, then exit.
    Stop { done: oneshot::Sender<()> },
}

impl Op {
    fn journal_bytes(&self) -> usize {
        match self {
            Op::Add { entry, .. } => journal::add_record_bytes(entry.payload.len()),
            Op::Fence { .. } | Op::Delete { .. } => journal::LEDGER_OP_RECORD_BYTES,
            Op::Stop { .. } => 0,
        }
    }
}

/// Where to send the answer for one journaled record.
enum Reply {
    Add(oneshot::Sender<BookieResult<()>>),
    Fence(LedgerId, oneshot::Sender<BookieResult<FenceResult>>),
    Delete(oneshot::Sender<BookieResult<()>>),
}

/// The thread's body; returns when told to stop or when every sender is gone.
pub(crate) fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Op>, mut jf: JournalFile) {
    let batch_max = shared.opts.journal_batch_bytes_max.max(1);
    let mut ops: Vec<Op> = Vec::new();
    let mut jbuf: Vec<u8> = Vec::new();
    let mut ebuf: Vec<u8> = Vec::new();
    let mut rotate_next = false;
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        let mut bytes = first.journal_bytes();
        ops.push(first);
        while bytes < batch_max {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.journal_bytes();
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        let stop = commit_batch(
            &shared,
            &mut ops,
            &mut jf,
            &mut jbuf,
            &mut ebuf,
            &mut rotate_next,
        );
        // Big one-off batches should not pin their memory for the life of the thread.
        for buf in [&mut jbuf, &mut ebuf] {
            if buf.capacity() > 2 * batch_max {
                *buf = Vec::new();
            }
        }
        if let Some(done) = stop {
            // Anything still queued came after the stop: refuse it rather than drop it silently.
            rx.close();
            while let Ok(op) = rx.try_recv() {
                refuse(op, BookieError::ShuttingDown);
            }
            let _ = done.send(());
            return;
        }
    }
}

fn refuse(op: Op, err: BookieError) {
    match op {
        Op::Add { done, .. } | Op::Delete { done, .. } => {
            let _ = done.send(Err(err));
        }
        Op::Fence { done, .. } => {
            let _ = done.send(Err(err));
        }
        Op::Stop { done } => {
            let _ = done.send(());
        }
    }
}

/// Journals, syncs, applies and answers one batch. Returns the stop request if it held one.
fn commit_batch(
    shared: &Shared,
    ops: &mut Vec<Op>,
    jf: &mut JournalFile,
    jbuf: &mut Vec<u8>,
    ebuf: &mut Vec<u8>,
    rotate_next: &mut bool,
) -> Option<oneshot::Sender<()>> {
    let mut stop = None;
    let mut records: Vec<Record> = Vec::with_capacity(ops.len());
    let mut recovery: Vec<bool> = Vec::with_capacity(ops.len());
    let mut replies: Vec<Reply> = Vec::with_capacity(ops.len());
    {
        // Fencing is decided here, in journal order, so no add queued behind a fence slips by.
        let store = shared.read_store();
        let mut fenced_here: HashSet<LedgerId> = HashSet::new();
        let mut deleted_here: HashSet<LedgerId> = HashSet::new();
        for op in ops.drain(..) {
            if stop.is_some() {
                refuse(op, BookieError::ShuttingDown);
                continue;
            }
            match op {
                Op::Add {
                    entry,
                    recovery: rec,
                    done,
                } => {
                    let l = entry.ledger;
                    let fenced = fenced_here.contains(&l)
                        || (!deleted_here.contains(&l) && store.is_fenced(l));
                    if fenced && !rec {
                        tracing::debug!(ledger = %l, entry = %entry.entry, "add refused: fenced");
                        let _ = done.send(Err(BookieError::Fenced(l)));
                        continue;
                    }
                    records.push(Record::Add(entry));
                    recovery.push(rec);
                    replies.push(Reply::Add(done));
                }
                Op::Fence { ledger, done } => {
                    fenced_here.insert(ledger);
                    records.push(Record::Fence(ledger));
                    recovery.push(false);
                    replies.push(Reply::Fence(ledger, done));
                }
                Op::Delete { ledger, done } => {
                    fenced_here.remove(&ledger);
                    deleted_here.insert(ledger);
                    records.push(Record::Delete(ledger));
                    recovery.push(false);
                    replies.push(Reply::Delete(done));
                }
                Op::Stop { done } => stop = Some(done),
            }
        }
    }
    if records.is_empty() {
        return stop;
    }

    let began = shared.clock.now();
    let journal_result = write_journal(shared, jf, jbuf, &records, &recovery, rotate_next);
    shared.metrics.journal_sync.record(
        shared.clock.now().saturating_duration_since(began),
        journal_result.is_ok(),
    );
    if let Err(e) = journal_result {
        // Nothing of this batch is acknowledged; the file's tail is suspect (a failed fsync may
        // have dropped pages), so later batches go to a fresh file.
        *rotate_next = true;
        let msg = format!("journal write: {e}");
        tracing::error!(error = %e, records = records.len(), "journal write failed; read-only");
        shared.io_failed(&msg);
        for reply in replies {
            match reply {
                Reply::Add(done) | Reply::Delete(done) => {
                    let _ = done.send(Err(BookieError::Internal(msg.clone())));
                }
                Reply::Fence(_, done) => {
                    let _ = done.send(Err(BookieError::Internal(msg.clone())));
                }
            }
        }
        return stop;
    }

    let applied = apply(shared, &records, jf.pos(), ebuf);
    let add_result = applied.map_err(|e| {
        let msg = format!("entry log write: {e}");
        tracing::error!(error = %e, "entry log write failed; read-only");
        shared.io_failed(&msg);
        BookieError::Internal(msg)
    });
    let store = shared.read_store();
    for reply in replies {
        match reply {
            Reply::Add(done) => {
                let _ = done.send(add_result.clone());
            }
            Reply::Delete(done) => {
                let _ = done.send(Ok(()));
            }
            Reply::Fence(ledger, done) => {
                let result = store
                    .ledgers
                    .get(&ledger)
                    .map(|s| s.fence_result())
                    .unwrap_or(FenceResult {
                        lac: crate::api::NO_ENTRY,
                        last_entry: crate::api::NO_ENTRY,
                    });
                let _ = done.send(Ok(result));
            }
        }
    }
    stop
}

/// Encodes the batch into `jbuf`, writes it with one pwrite and fdatasyncs.
fn write_journal(
    shared: &Shared,
    jf: &mut JournalFile,
    jbuf: &mut Vec<u8>,
    records: &[Record],
    recovery: &[bool],
    rotate_next: &mut bool,
) -> std::io::Result<()> {
    let total: u64 = records
        .iter()
        .map(|r| match r {
            Record::Add(e) => journal::add_record_bytes(e.payload.len()) as u64,
            _ => journal::LEDGER_OP_RECORD_BYTES as u64,
        })
        .sum();
    // A batch larger than a whole file goes into a fresh one, which simply grows past its
    // preallocation, rather than being split across files.
    if *rotate_next || (jf.offset > 0 && jf.offset + total > jf.size) {
        let size = shared.opts.journal_file_size_bytes;
        *jf = JournalFile::create(&shared.journal_dir, jf.generation + 1, size)?;
        *rotate_next = false;
    }
    jbuf.clear();
    for (r, rec) in records.iter().zip(recovery) {
        match r {
            Record::Add(e) => journal::encode_add(jbuf, jf.generation, e, *rec),
            Record::Fence(l) => journal::encode_ledger_op(jbuf, jf.generation, *l, true),
            Record::Delete(l) => journal::encode_ledger_op(jbuf, jf.generation, *l, false),
        }
    }
    use std::os::unix::fs::FileExt;
    #[cfg(test)]
    if shared.inject_write_failure.load(Ordering::Relaxed) {
        return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
    }
    jf.file.write_all_at(jbuf, jf.offset)?;
    #[cfg(test)]
    if shared
        .inject_journal_sync_failure
        .swap(false, Ordering::Relaxed)
    {
        let e = std::io::Error::from_raw_os_error(5); // EIO
        shared.sync_failed(&format!("journal fdatasync: {e}"));
        return Err(e);
    }
    if let Err(e) = rustix::fs::fdatasync(&jf.file) {
        shared.sync_failed(&format!("journal fdatasync: {e}"));
        return Err(e.into());
    }
    jf.offset += jbuf.len() as u64;
    let stats = &shared.stats;
    stats.syncs.fetch_add(1, Ordering::Relaxed);
    stats
        .records
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    stats.bytes.fetch_add(jbuf.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Applies journaled records, in order, to the entry log and the index; `pos` is the journal
/// position just past them. Idempotent: an entry written since the last checkpoint is skipped;
/// an older one is stored again and its previous copy counted dead. Fences and deletes apply even if the entry log write
/// fails; the adds of this call are then not indexed and the error is returned.
pub(crate) fn apply(
    shared: &Shared,
    records: &[Record],
    pos: JournalPos,
    ebuf: &mut Vec<u8>,
) -> std::io::Result<()> {
    // Lock order everywhere: appender, then store.
    let mut app = shared.lock_appender();
    ebuf.clear();
    let mut locs: Vec<Option<Loc>> = Vec::with_capacity(records.len());
    {
        let store = shared.read_store();
        let mut deleted_here: HashSet<LedgerId> = HashSet::new();
        for r in records {
            match r {
                Record::Add(e) => {
                    let known = !deleted_here.contains(&e.ledger)
                        && store.recent(e.ledger, e.entry).is_some();
                    if known {
                        locs.push(None);
                        continue;
                    }
                    let loc = Loc::new(app.id, app.len + ebuf.len() as u64, e.payload.len() as u32);
                    entrylog::encode(ebuf, e);
                    locs.push(Some(loc));
                }
                Record::Delete(l) => {
                    deleted_here.insert(*l);
                    locs.push(None);
                }
                Record::Fence(_) => locs.push(None),
            }
        }
    }
    let written = if ebuf.is_empty() {
        Ok(())
    } else {
        app.append(ebuf).map(|_| ())
    };
    let next = if written.is_ok() {
        rotate_if_full(shared, &app)
    } else {
        None
    };
    let mut store = shared.write_store();
    if written.is_ok() {
        store.wrote(app.id, ebuf.len() as u64);
    }
    for (r, loc) in records.iter().zip(&locs) {
        match r {
            Record::Add(e) => {
                if let (Some(loc), true) = (loc, written.is_ok()) {
                    store.insert_entry(e.ledger, e.entry, e.lac, *loc);
                }
            }
            Record::Fence(l) => {
                store.fence(*l);
            }
            Record::Delete(l) => store.delete(*l),
        }
    }
    store.applied = store.applied.max(pos);
    if let Some((next, meta)) = next {
        store.logs.insert(next.id, meta);
        *app = next;
    }
    written
}

/// A new current log if this one is past `entry_log_size_bytes_max` (the old one is synced by
/// the next checkpoint like any other). A failure to create one is logged and the current log
/// keeps growing: better an oversized log than refused adds.
pub(crate) fn rotate_if_full(shared: &Shared, app: &Appender) -> Option<(Appender, LogMeta)> {
    if app.len < shared.opts.entry_log_size_bytes_max {
        return None;
    }
    match Appender::create(&shared.ledgers_dir, app.id.wrapping_add(1)) {
        Ok(next) => {
            let meta = LogMeta {
                file: next.file.clone(),
                path: next.path.clone(),
                total_bytes: 0,
                live_bytes: 0,
                unsynced: true,
            };
            Some((next, meta))
        }
        Err(e) => {
            tracing::warn!(log = app.id, error = %e, "entry log rotation failed");
            None
        }
    }
}
