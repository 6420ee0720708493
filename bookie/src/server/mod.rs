//! The bookie's storage (SKELETON: signatures fixed, bodies being written).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use magnetar_metadata::{EntryId, LedgerId};
use tokio::sync::watch;

use crate::api::{
    BookieClient, BookieError, BookieId, BookieInfo, BookieResult, BookieState, Entry, FenceResult,
    ReadResult,
};

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
    /// Entry logs whose live fraction is below this are compacted. Default 0.5.
    pub gc_live_ratio_min: f64,
    /// Disk usage is checked this often. Default 2,000 ms.
    pub disk_check_interval_ms: u64,
    /// Read-only above this fraction of the filesystem in use. Default 0.95.
    pub disk_usage_threshold: f64,
    /// Back to read-write below this fraction. Default 0.90.
    pub disk_usage_lwm: f64,
    /// Read-only when the bookie's own files exceed this many bytes (none: no cap).
    pub storage_size_bytes_max: Option<u64>,
    /// Largest entry accepted. Default 5 MiB + 64 KiB (Pulsar's 5 MiB message plus headers).
    pub entry_size_bytes_max: usize,
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
            gc_live_ratio_min: 0.5,
            disk_check_interval_ms: 2_000,
            disk_usage_threshold: 0.95,
            disk_usage_lwm: 0.90,
            storage_size_bytes_max: None,
            entry_size_bytes_max: 5 * 1024 * 1024 + 64 * 1024,
        }
    }
}

/// A bookie's storage; implements [`BookieClient`] (the in-process transport).
#[derive(Debug)]
pub struct Bookie {
    id: BookieId,
    state: watch::Sender<BookieState>,
}

impl Bookie {
    /// Opens (creating or replaying) the storage under `options.data_dir`.
    pub async fn open(options: BookieOptions) -> BookieResult<Arc<Bookie>> {
        let (state, _) = watch::channel(BookieState::ReadWrite);
        let _ = Arc::new(Bookie {
            id: options.id,
            state,
        });
        Err(BookieError::Internal("bookie storage not built yet".into()))
    }

    pub fn state(&self) -> BookieState {
        *self.state.borrow()
    }

    /// Changes of read-write / read-only state, for the registration.
    pub fn state_changes(&self) -> watch::Receiver<BookieState> {
        self.state.subscribe()
    }

    /// Stops accepting requests, finishes what is queued, checkpoints, and closes files.
    pub async fn shutdown(&self) {}
}

#[async_trait]
impl BookieClient for Bookie {
    fn id(&self) -> &BookieId {
        &self.id
    }
    async fn add(&self, _entry: Entry, _recovery: bool) -> BookieResult<()> {
        Err(BookieError::Internal("not built".into()))
    }
    async fn read(&self, _l: LedgerId, _e: EntryId, _fence: bool) -> BookieResult<ReadResult> {
        Err(BookieError::Internal("not built".into()))
    }
    async fn read_range(
        &self,
        _l: LedgerId,
        _f: EntryId,
        _t: EntryId,
        _n: u32,
        _b: u64,
    ) -> BookieResult<Vec<Entry>> {
        Err(BookieError::Internal("not built".into()))
    }
    async fn read_lac(&self, _l: LedgerId, _p: i64, _t: Duration) -> BookieResult<i64> {
        Err(BookieError::Internal("not built".into()))
    }
    async fn fence(&self, _l: LedgerId) -> BookieResult<FenceResult> {
        Err(BookieError::Internal("not built".into()))
    }
    async fn delete_ledger(&self, _l: LedgerId) -> BookieResult<()> {
        Err(BookieError::Internal("not built".into()))
    }
    async fn info(&self) -> BookieResult<BookieInfo> {
        Err(BookieError::Internal("not built".into()))
    }
}
