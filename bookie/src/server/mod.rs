//! The bookie's storage: [`Bookie`] implements [`BookieClient`] over local files.
//!
//! Layout under `data_dir`: `journal/` (write-ahead journal, `journal.rs`, written by the group
//! commit thread in `writer.rs`) and `ledgers/` (entry logs, `entrylog.rs`, and the persistent
//! index `index.redb`, `index.rs`). In memory: `ledgers.rs`. Compaction: `gc.rs`. Disk limits and
//! the read-only state: `disk.rs`. Opening with journal replay: `recovery.rs`. This file owns
//! the options, the shared state, the request paths, the periodic tasks and shutdown.
//!
//! Life of an add: validated on the caller's task (CRC, size, state, fence) → bounded queue →
//! journal thread: batch, one pwrite, fdatasync → appended to the current entry log and indexed
//! (readable from here) → caller answered. Every `checkpoint_interval_ms` the entry logs are
//! fdatasynced, the index committed with the journal position, and older journal files retired.
//! On open, the index is loaded and journal records after the checkpoint are re-applied
//! (idempotently), so every acknowledged add survives a crash.
//!
//! Public additions beyond the `BookieClient` surface, for tests and operators:
//! [`Bookie::checkpoint_now`], [`Bookie::gc_now`], [`Bookie::check_disk_now`],
//! [`Bookie::locate`] (fault injection), [`Bookie::journal_stats`] (group-commit efficiency).

mod disk;
mod entrylog;
#[doc(hidden)]
pub mod fuzzing;
mod gc;
mod index;
mod journal;
mod ledgers;
mod recovery;
mod writer;

#[cfg(test)]
mod tests;

use magnetar_metadata::clock::{self, Interval};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use magnetar_metadata::{EntryId, LedgerId};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::api::{
    BookieClient, BookieError, BookieId, BookieInfo, BookieResult, BookieState, Entry, FenceResult,
    ReadResult,
};
use disk::DiskStatus;
use entrylog::{Appender, Loc};
use index::Index;
use journal::JournalPos;
use ledgers::Store;
use writer::Op;

/// Long polls on LACs waiting at once at most; beyond, `read_lac` answers at once.
const LAC_POLLS_MAX: usize = 10_000;
/// A long poll never waits longer than this, whatever the caller asked.
const LAC_POLL_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// `read_range` limits when the caller passes 0 ("no limit"), so one request cannot pull a whole
/// ledger into memory.
const READ_RANGE_ENTRIES_MAX: u32 = 100_000;
const READ_RANGE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Reads running on blocking threads at once at most; further reads wait (asynchronously) for a
/// slot, so a burst of reads cannot grow tokio's blocking pool without bound.
const READS_IN_FLIGHT_MAX: usize = 64;

/// How a bookie stores entries. Every field has a default (see `Default`).
#[derive(Clone, Debug)]
pub struct BookieOptions {
    /// Identity and advertised address, `host:port`.
    pub id: BookieId,
    /// Holds `journal/` and `ledgers/`.
    pub data_dir: PathBuf,
    /// Journal files are preallocated to this size, then rotated. Default 64 MiB.
    pub journal_file_size_bytes: u64,
    /// Adds waiting for the journal writer at most (backpressure beyond). Default 16,384.
    pub journal_queue_capacity: usize,
    /// Bytes written per group commit at most. Default 4 MiB.
    pub journal_batch_bytes_max: usize,
    /// Entry log files are rotated past this size. Default 256 MiB.
    pub entry_log_size_bytes_max: u64,
    /// Entry logs and index are flushed and the journal trimmed this often. Default 1,000 ms.
    pub checkpoint_interval_ms: u64,
    /// Garbage collection runs this often. Default 60,000 ms.
    pub gc_interval_ms: u64,
    /// The ledgers stored here are compared with the metadata store this often, and those
    /// deleted while the bookie was down are deleted here too (see `orphans`; run by the
    /// process serving the bookie). Default 900,000 ms (15 min).
    pub deleted_ledgers_scan_interval_ms: u64,
    /// Entry logs whose live fraction is below this are compacted. Default 0.5.
    pub gc_live_ratio_min: f64,
    /// Compaction scans at most this many entry-log bytes a second (BookKeeper's
    /// `compactionRateByBytes`); 0: unpaced. Default 8 MiB/s.
    pub gc_compaction_rate_bytes_per_s: u64,
    /// Disk usage is checked this often. Default 2,000 ms.
    pub disk_check_interval_ms: u64,
    /// Read-only above this fraction of the filesystem in use. Default 0.95.
    pub disk_usage_threshold: f64,
    /// Back to read-write below this fraction. Default 0.90.
    pub disk_usage_lwm: f64,
    /// Read-only when the bookie's own files exceed this many bytes (none: no cap).
    pub storage_size_bytes_max: Option<u64>,
    /// Memory for the on-disk index's page cache (redb), in bytes: what bounds the index's
    /// memory however many entries are stored. Default 64 MiB.
    pub index_cache_size_bytes: usize,
    /// Largest entry accepted. Default 5 MiB + 64 KiB (Pulsar's 5 MiB message plus headers).
    pub entry_size_bytes_max: usize,
    /// A journal damaged in the middle (not a torn tail) makes the bookie refuse to start
    /// (default); true replays around the damage, logging what was skipped.
    pub journal_skip_damaged_records: bool,
}

impl BookieOptions {
    pub fn new(id: BookieId, data_dir: impl Into<PathBuf>) -> Self {
        BookieOptions {
            id,
            data_dir: data_dir.into(),
            journal_file_size_bytes: 64 * 1024 * 1024,
            journal_queue_capacity: 16_384,
            journal_batch_bytes_max: 4 * 1024 * 1024,
            entry_log_size_bytes_max: 256 * 1024 * 1024,
            checkpoint_interval_ms: 1_000,
            gc_interval_ms: 60_000,
            deleted_ledgers_scan_interval_ms: 900_000,
            gc_live_ratio_min: 0.5,
            gc_compaction_rate_bytes_per_s: 8 * 1024 * 1024,
            disk_check_interval_ms: 2_000,
            disk_usage_threshold: 0.95,
            disk_usage_lwm: 0.90,
            storage_size_bytes_max: None,
            index_cache_size_bytes: 64 * 1024 * 1024,
            entry_size_bytes_max: 5 * 1024 * 1024 + 64 * 1024,
            journal_skip_damaged_records: false,
        }
    }
}

/// Totals of the journal's group commits since open: `records / syncs` is the group-commit
/// efficiency (records per fdatasync), `bytes` over time the journal's bandwidth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub syncs: u64,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct JournalCounters {
    syncs: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
}

/// What the request paths, the journal thread and the periodic tasks share.
pub(crate) struct Shared {
    opts: BookieOptions,
    journal_dir: PathBuf,
    ledgers_dir: PathBuf,
    store: RwLock<Store>,
    appender: Mutex<Appender>,
    /// `None` once shut down: closing the database releases its lock, so the directory can be
    /// opened again in the same process. Lookups and checkpoints clone the `Arc` and release the
    /// mutex at once: redb serves concurrent readers by itself.
    index: Mutex<Option<Arc<Index>>>,
    /// The last checkpointed journal position; the lock also serializes checkpoints.
    checkpoint_pos: Mutex<JournalPos>,
    disk: Mutex<DiskStatus>,
    state: watch::Sender<BookieState>,
    stats: JournalCounters,
    clock: magnetar_metadata::clock::SharedClock,
    metrics: crate::metrics::BookieMetrics,
    /// Entry locations in the on-disk index, as of the last checkpoint.
    entries_indexed: AtomicU64,
    /// Makes journal writes fail as if the disk were full (tests of the error path).
    #[cfg(test)]
    inject_write_failure: AtomicBool,
    /// Makes the next journal fdatasync fail (tests of the error path).
    #[cfg(test)]
    inject_journal_sync_failure: AtomicBool,
    /// Makes the next entry-log fdatasync of a checkpoint fail (tests of the error path).
    #[cfg(test)]
    inject_log_sync_failure: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("data_dir", &self.opts.data_dir)
            .finish_non_exhaustive()
    }
}

// A panic while holding one of these locks cannot leave the data half-updated in a way that a
// later user could not cope with (every update is a few map operations), so poisoning is
// ignored rather than turned into a panic cascade.
impl Shared {
    fn read_store(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_store(&self) -> RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }
    fn lock_appender(&self) -> MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn lock_checkpoint(&self) -> MutexGuard<'_, JournalPos> {
        self.checkpoint_pos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
    fn lock_index(&self) -> MutexGuard<'_, Option<Arc<Index>>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn index(&self) -> Option<Arc<Index>> {
        self.lock_index().clone()
    }

    /// Where an entry is: written since the last checkpoint (memory) or in the index (disk).
    /// Blocking when it reaches the index.
    fn lookup(&self, ledger: LedgerId, entry: EntryId) -> Result<Option<Loc>, String> {
        if let Some(loc) = self.read_store().recent(ledger, entry) {
            return Ok(Some(loc));
        }
        match self.index() {
            Some(index) => index.snapshot()?.get(ledger, entry),
            None => Err("index: closed (bookie shut down)".to_owned()),
        }
    }
    fn lock_disk(&self) -> MutexGuard<'_, DiskStatus> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An fdatasync (or the index commit) failed: read-only, and no checkpoint, until restart.
    fn sync_failed(&self, why: &str) {
        let mut disk = self.lock_disk();
        if !disk.sync_failed {
            tracing::error!(
                error = why,
                "sync failed: data written since the last good sync may be lost on this bookie; \
                 read-only and no more checkpoints until restart, which replays the journal"
            );
        }
        disk.sync_failed = true;
        drop(disk);
        self.publish_state();
    }

    fn has_sync_failed(&self) -> bool {
        self.lock_disk().sync_failed
    }

    /// A write failed: read-only until a disk check finds the disk healthy again.
    fn io_failed(&self, why: &str) {
        let mut disk = self.lock_disk();
        if !disk.io_failed {
            tracing::error!(error = why, "disk I/O failure: bookie turns read-only");
        }
        disk.io_failed = true;
        drop(disk);
        self.publish_state();
    }

    fn publish_state(&self) {
        let state = self.lock_disk().state();
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }
}

/// A bookie's storage; implements [`BookieClient`] (the in-process transport).
pub struct Bookie {
    id: BookieId,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Stops the periodic tasks and long polls (shutdown, or the bookie dropped).
    cancel: CancellationToken,
    closing: AtomicBool,
    /// Held through shutdown; true once it finished.
    shutdown_done: tokio::sync::Mutex<bool>,
    lac_polls: Arc<Semaphore>,
    reads: Semaphore,
}

impl fmt::Debug for Bookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bookie")
            .field("id", &self.id)
            .field("data_dir", &self.shared.opts.data_dir)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Drop for Bookie {
    fn drop(&mut self) {
        // Without shutdown (e.g. a crash test): the tasks stop; the journal thread drains what
        // is queued and exits when the channel closes with `tx`.
        self.cancel.cancel();
    }
}

fn internal(e: impl fmt::Display) -> BookieError {
    BookieError::Internal(e.to_string())
}

/// A periodic piece of blocking storage work.
type Chore = fn(&Shared);

/// Runs `work` on a blocking thread every `every` until cancelled.
fn spawn_periodic(shared: Arc<Shared>, cancel: CancellationToken, every: Duration, work: Chore) {
    tokio::spawn(async move {
        let mut tick = Interval::new(clock::system(), every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let s = shared.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || work(&s)).await {
                tracing::error!(error = %e, "periodic storage task failed");
            }
        }
    });
}

fn periodic_checkpoint(shared: &Shared) {
    // A failure is logged and, where it concerns durability, made sticky by the checkpoint.
    let _ = index::checkpoint(shared);
    index::count_entries(shared);
}

fn periodic_gc(shared: &Shared) {
    if let Err(e) = gc::gc_pass(shared) {
        tracing::error!(error = %e, "garbage collection failed");
    }
}

impl Bookie {
    /// Opens (creating or replaying) the storage under `options.data_dir`.
    pub async fn open(options: BookieOptions) -> BookieResult<Arc<Bookie>> {
        if options.journal_queue_capacity == 0 || options.journal_file_size_bytes == 0 {
            return Err(BookieError::BadRequest(
                "journal queue capacity and file size must be positive".into(),
            ));
        }
        let id = options.id.clone();
        let (shared, jf) = tokio::task::spawn_blocking(move || recovery::recover(options))
            .await
            .map_err(internal)?
            .map_err(BookieError::Internal)?;
        let (tx, rx) = mpsc::channel(shared.opts.journal_queue_capacity);
        let for_writer = shared.clone();
        let writer = std::thread::Builder::new()
            .name("bookie-journal".into())
            .spawn(move || writer::run(for_writer, rx, jf))
            .map_err(internal)?;
        let s = shared.clone();
        tokio::task::spawn_blocking(move || disk::check(&s))
            .await
            .map_err(internal)?;

        let cancel = CancellationToken::new();
        let ms = Duration::from_millis;
        let o = &shared.opts;
        let periodic: [(u64, Chore); 3] = [
            (o.checkpoint_interval_ms, periodic_checkpoint),
            (o.gc_interval_ms, periodic_gc),
            (o.disk_check_interval_ms, disk::check),
        ];
        for (every, work) in periodic {
            spawn_periodic(shared.clone(), cancel.clone(), ms(every), work);
        }
        Ok(Arc::new(Bookie {
            id,
            shared,
            tx,
            writer: Mutex::new(Some(writer)),
            cancel,
            closing: AtomicBool::new(false),
            shutdown_done: tokio::sync::Mutex::new(false),
            lac_polls: Arc::new(Semaphore::new(LAC_POLLS_MAX)),
            reads: Semaphore::new(READS_IN_FLIGHT_MAX),
        }))
    }

    pub fn state(&self) -> BookieState {
        *self.shared.state.borrow()
    }

    /// Shutting down (or shut down): refusing new requests.
    pub fn is_shutting_down(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Being decommissioned: read-only (placement stops choosing it, its writers move on)
    /// until `false` again.
    pub fn set_decommissioned(&self, on: bool) {
        let mut disk = self.shared.lock_disk();
        if disk.decommissioned != on {
            tracing::info!(bookie = %self.id, decommissioned = on, "decommission state changed");
        }
        disk.decommissioned = on;
        drop(disk);
        self.shared.publish_state();
    }

    /// Changes of read-write / read-only state, for the registration.
    pub fn state_changes(&self) -> watch::Receiver<BookieState> {
        self.shared.state.subscribe()
    }

    /// The ledgers this bookie stores (for comparing with the metadata store).
    pub fn ledger_ids(&self) -> Vec<LedgerId> {
        let mut ids: Vec<LedgerId> = self.shared.read_store().ledgers.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Entry locations held in memory (written since the last checkpoint): the part of the
    /// index that is not on disk yet.
    pub fn index_entries_in_memory(&self) -> usize {
        let store = self.shared.read_store();
        store.pending.len() + store.flushing.len()
    }

    /// Stops accepting requests, finishes what is queued, checkpoints, and closes files.
    /// Idempotent; later requests get `ShuttingDown`.
    pub async fn shutdown(&self) {
        let mut done = self.shutdown_done.lock().await;
        if *done {
            return;
        }
        self.closing.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        let (stop, stopped) = oneshot::channel();
        if self.tx.send(Op::Stop { done: stop }).await.is_ok() {
            let _ = stopped.await;
        }
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle
            && tokio::task::spawn_blocking(move || handle.join())
                .await
                .is_err()
        {
            tracing::error!("journal thread did not end cleanly");
        }
        let shared = self.shared.clone();
        let closed = move || {
            let result = index::checkpoint(&shared);
            shared.lock_index().take();
            result
        };
        match tokio::task::spawn_blocking(closed).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "final checkpoint failed"),
            Err(e) => tracing::error!(error = %e, "final checkpoint task failed"),
        }
        tracing::info!(id = %self.id, "bookie storage shut down");
        *done = true;
    }

    /// Runs a checkpoint now: entry logs synced, index persisted, journal trimmed.
    pub async fn checkpoint_now(&self) -> BookieResult<()> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || index::checkpoint(&shared))
            .await
            .map_err(internal)?
            .map_err(BookieError::Internal)
    }

    /// Runs a garbage collection pass now (tests; operators).
    pub async fn gc_now(&self) {
        let shared = self.shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || periodic_gc(&shared)).await {
            tracing::error!(error = %e, "garbage collection task failed");
        }
    }

    /// Measures the disk now and updates the state.
    pub async fn check_disk_now(&self) {
        let shared = self.shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || disk::check(&shared)).await {
            tracing::error!(error = %e, "disk check task failed");
        }
    }

    /// LAC long polls waiting for a higher LAC now (for metrics, and for tests to know a poll
    /// is parked before they make it return).
    pub fn lac_polls_waiting(&self) -> usize {
        LAC_POLLS_MAX - self.lac_polls.available_permits()
    }

    /// The bookie's metric families (see [`crate::metrics`]) as of now.
    pub fn metric_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        let (ledgers, entries) = {
            let store = self.shared.read_store();
            let recent = store.pending.len() + store.flushing.len();
            (
                store.ledgers.len(),
                self.shared.entries_indexed.load(Ordering::Relaxed) + recent as u64,
            )
        };
        let gauges = crate::metrics::Gauges {
            writable: self.state() == BookieState::ReadWrite,
            journal_queue_size: self.tx.max_capacity() - self.tx.capacity(),
            ledgers,
            entries,
        };
        self.shared
            .metrics
            .families(gauges, self.shared.clock.now())
    }

    /// Group-commit totals since open (for benchmarks and metrics).
    pub fn journal_stats(&self) -> JournalStats {
        let c = &self.shared.stats;
        JournalStats {
            syncs: c.syncs.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }

    /// The entry log file holding an entry and the byte offset of its payload in it (for
    /// fault-injection tests). Blocking: it may read the index.
    pub fn locate(&self, ledger: LedgerId, entry: EntryId) -> Option<(PathBuf, u64)> {
        let loc = self.shared.lookup(ledger, entry).ok()??;
        let store = self.shared.read_store();
        store.ledgers.get(&ledger)?;
        let meta = store.logs.get(&loc.log)?;
        Some((meta.path.clone(), loc.offset + loc.header_bytes()))
    }

    fn check_open(&self) -> BookieResult<()> {
        if self.closing.load(Ordering::Relaxed) {
            Err(BookieError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Queues an op for the journal thread and waits for its answer.
    async fn submit<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<BookieResult<T>>) -> Op,
    ) -> BookieResult<T> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(op(done))
            .await
            .map_err(|_| BookieError::ShuttingDown)?;
        answer.await.map_err(|_| BookieError::ShuttingDown)?
    }

    /// Looks up consecutive entries and reads them, both on a blocking thread (the lookup may
    /// read the on-disk index).
    /// Whether the entry is stored here (memory or index). Any failure to look counts as no.
    async fn holds(&self, ledger: LedgerId, entry: EntryId) -> bool {
        let shared = self.shared.clone();
        matches!(
            tokio::task::spawn_blocking(move || shared.lookup(ledger, entry)).await,
            Ok(Ok(Some(_)))
        )
    }

    async fn read_entries(
        &self,
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
        entries_max: u32,
        bytes_max: u64,
    ) -> BookieResult<(Vec<Entry>, i64)> {
        if !self.shared.read_store().ledgers.contains_key(&ledger) {
            return Err(BookieError::NoSuchLedger(ledger));
        }
        let began = self.shared.clock.now();
        let _slot = self
            .reads
            .acquire()
            .await
            .map_err(|_| BookieError::ShuttingDown)?;
        let shared = self.shared.clone();
        let read = tokio::task::spawn_blocking(move || {
            read_blocking(&shared, ledger, first, last, entries_max, bytes_max)
        })
        .await
        .map_err(internal)?;
        let m = &self.shared.metrics;
        m.read_entry.record(
            self.shared.clock.now().saturating_duration_since(began),
            read.is_ok(),
        );
        if let Ok((entries, _)) = &read {
            m.read_bytes
                .inc_by(entries.iter().map(|e| e.payload.len() as u64).sum());
        }
        read
    }
}

/// Lookups of a consecutive run of entries, then their reads. Blocking.
///
/// Locations come from memory (written since the last checkpoint, taken first) and from one
/// index snapshot (taken after, so it holds everything the checkpoint moved out of memory in
/// between). If compaction retired a log between the lookup and the read, the lookup is
/// repeated: compaction commits the new locations before it removes a log.
fn read_blocking(
    shared: &Shared,
    ledger: LedgerId,
    first: EntryId,
    last: EntryId,
    entries_max: u32,
    bytes_max: u64,
) -> BookieResult<(Vec<Entry>, i64)> {
    const LOOKUP_ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (recent, lac) = {
            let store = shared.read_store();
            let state = store
                .ledgers
                .get(&ledger)
                .ok_or(BookieError::NoSuchLedger(ledger))?;
            let range = (ledger.0, first.0)..=(ledger.0, last.0);
            let mut recent: std::collections::BTreeMap<u64, entrylog::Loc> = store
                .flushing
                .range(range.clone())
                .map(|((_, e), loc)| (*e, *loc))
                .collect();
            recent.extend(store.pending.range(range).map(|((_, e), loc)| (*e, *loc)));
            (recent, state.lac)
        };
        let index = shared
            .index()
            .ok_or(BookieError::ShuttingDown)?
            .snapshot()
            .map_err(BookieError::Internal)?;
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        let mut id = first.0;
        while id <= last.0 && wanted.len() < entries_max as usize {
            let loc = match recent.get(&id) {
                Some(loc) => *loc,
                None => match index
                    .get(ledger, EntryId(id))
                    .map_err(BookieError::Internal)?
                {
                    Some(loc) => loc,
                    None => break,
                },
            };
            let next = bytes + u64::from(loc.len);
            if !wanted.is_empty() && next > bytes_max {
                break;
            }
            bytes = next;
            wanted.push((EntryId(id), loc));
            if id == u64::MAX {
                break;
            }
            id += 1;
        }
        drop(index);
        if wanted.is_empty() {
            return Err(BookieError::NoSuchEntry {
                ledger,
                entry: first,
            });
        }
        let files: Option<Vec<_>> = {
            let store = shared.read_store();
            wanted
                .iter()
                .map(|(_, loc)| store.logs.get(&loc.log).map(|m| m.file.clone()))
                .collect()
        };
        let Some(files) = files else {
            if attempt < LOOKUP_ATTEMPTS {
                continue;
            }
            tracing::error!(%ledger, entry = %first, "index points at a missing entry log");
            return Err(BookieError::Internal(format!(
                "entry {ledger}:{first}: its entry log is missing"
            )));
        };
        let entries = wanted
            .into_iter()
            .zip(files)
            .map(|((entry, loc), file)| entrylog::read_entry(&file, loc, ledger, entry))
            .collect::<BookieResult<Vec<Entry>>>()?;
        return Ok((entries, lac));
    }
}

#[async_trait]
impl BookieClient for Bookie {
    fn id(&self) -> &BookieId {
        &self.id
    }

    async fn add(&self, entry: Entry, recovery: bool) -> BookieResult<()> {
        self.check_open()?;
        let (ledger, id) = (entry.ledger, entry.entry);
        // Also keeps record lengths well inside the u32 fields of the file formats.
        let size_max = self
            .shared
            .opts
            .entry_size_bytes_max
            .min(u32::MAX as usize / 2);
        if entry.payload.len() > size_max {
            return Err(BookieError::TooLarge(format!(
                "entry {ledger}:{id} has {} bytes, over {size_max}",
                entry.payload.len()
            )));
        }
        if !entry.is_intact() {
            tracing::warn!(%ledger, entry = %id, "add refused: CRC32C mismatch");
            return Err(BookieError::BadRequest(format!(
                "entry {ledger}:{id} fails its CRC32C"
            )));
        }
        if self.state() == BookieState::ReadOnly {
            // A recovery add rewrites an entry that recovery read from the ensemble. One this
            // bookie already holds takes no space, so a full bookie does not keep recovery from
            // closing a ledger (a standalone's only bookie, an ensemble of full bookies): the
            // topic still loads and its messages can still be read.
            if recovery && self.holds(ledger, id).await {
                return Ok(());
            }
            return Err(BookieError::ReadOnly);
        }
        {
            let store = self.shared.read_store();
            if let Some(state) = store.ledgers.get(&ledger) {
                if state.fenced && !recovery {
                    return Err(BookieError::Fenced(ledger));
                }
                if store.recent(ledger, id).is_some() {
                    // Already durable: a retried add is idempotent. (Older copies are not
                    // looked up on disk here; storing one again only makes the old one dead.)
                    return Ok(());
                }
            }
        }
        let began = self.shared.clock.now();
        let bytes = entry.payload.len() as u64;
        let added = self
            .submit(|done| Op::Add {
                entry,
                recovery,
                done,
            })
            .await;
        let m = &self.shared.metrics;
        m.add_entry.record(
            self.shared.clock.now().saturating_duration_since(began),
            added.is_ok(),
        );
        if added.is_ok() {
            m.write_bytes.inc_by(bytes);
        }
        added
    }

    async fn read(
        &self,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> BookieResult<ReadResult> {
        self.check_open()?;
        if fence {
            self.fence(ledger).await?;
        }
        let (mut entries, lac) = self.read_entries(ledger, entry, entry, 1, u64::MAX).await?;
        let entry = entries
            .pop()
            .ok_or(BookieError::NoSuchEntry { ledger, entry })?;
        Ok(ReadResult { entry, lac })
    }

    async fn read_range(
        &self,
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
        max_entries: u32,
        max_bytes: u64,
    ) -> BookieResult<Vec<Entry>> {
        self.check_open()?;
        if first > last {
            return Err(BookieError::BadRequest(format!(
                "range {first}..={last} of ledger {ledger} is empty"
            )));
        }
        let entries_max = match max_entries {
            0 => READ_RANGE_ENTRIES_MAX,
            n => n.min(READ_RANGE_ENTRIES_MAX),
        };
        let bytes_max = match max_bytes {
            0 => READ_RANGE_BYTES_MAX,
            n => n.min(READ_RANGE_BYTES_MAX),
        };
        let (entries, _) = self
            .read_entries(ledger, first, last, entries_max, bytes_max)
            .await?;
        Ok(entries)
    }

    async fn read_lac(
        &self,
        ledger: LedgerId,
        previous: i64,
        timeout: Duration,
    ) -> BookieResult<i64> {
        self.check_open()?;
        let mut rx = {
            let store = self.shared.read_store();
            let state = store
                .ledgers
                .get(&ledger)
                .ok_or(BookieError::NoSuchLedger(ledger))?;
            state.lac_tx.subscribe()
        };
        let current = *rx.borrow_and_update();
        if current > previous || timeout.is_zero() {
            return Ok(current);
        }
        let Ok(_permit) = self.lac_polls.clone().try_acquire_owned() else {
            return Ok(current);
        };
        let wait = timeout.min(LAC_POLL_TIMEOUT_MAX);
        let woke = tokio::select! {
            woke = tokio::time::timeout(wait, rx.wait_for(|lac| *lac > previous)) => {
                woke.map(|r| r.map(|lac| *lac))
            }
            _ = self.cancel.cancelled() => return Err(BookieError::ShuttingDown),
        };
        match woke {
            Ok(Ok(lac)) => Ok(lac),
            // The sender is gone: the ledger was deleted meanwhile.
            Ok(Err(_)) => Err(BookieError::NoSuchLedger(ledger)),
            Err(_) => Ok(*rx.borrow()),
        }
    }

    #[tracing::instrument(level = "debug", skip(self), fields(bookie = %self.id), err)]
    async fn fence(&self, ledger: LedgerId) -> BookieResult<FenceResult> {
        self.check_open()?;
        {
            let store = self.shared.read_store();
            if let Some(state) = store.ledgers.get(&ledger).filter(|s| s.fenced) {
                // Already durably fenced; nothing to journal.
                return Ok(state.fence_result());
            }
        }
        self.submit(|done| Op::Fence { ledger, done }).await
    }

    #[tracing::instrument(level = "debug", skip(self), fields(bookie = %self.id), err)]
    async fn delete_ledger(&self, ledger: LedgerId) -> BookieResult<()> {
        self.check_open()?;
        self.submit(|done| Op::Delete { ledger, done }).await
    }

    async fn info(&self) -> BookieResult<BookieInfo> {
        self.check_open()?;
        let disk = *self.shared.lock_disk();
        Ok(BookieInfo {
            id: self.id.clone(),
            state: disk.state(),
            free_bytes: disk.free_bytes,
            used_bytes: disk.used_bytes,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        })
    }
}
