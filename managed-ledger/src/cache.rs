//! The entry cache (DESIGN decision 7): recent entries by `(ledger, entry)`, shared by every
//! managed ledger of a broker, weighed in bytes. Values are the `Bytes` written or read, so a
//! hit never copies the payload.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use magnetar_metadata::LedgerId;

use crate::Position;

/// Counters of a cache, since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    /// Weighed size now (approximate: moka applies changes lazily).
    pub size_bytes: u64,
    pub entries: u64,
}

#[async_trait]
pub trait EntryCache: Send + Sync + fmt::Debug + 'static {
    async fn get(&self, pos: Position) -> Option<Bytes>;
    async fn insert(&self, pos: Position, payload: Bytes);
    /// Drops every entry of `ledger` (it was deleted or trimmed).
    fn invalidate_ledger(&self, ledger: LedgerId);
    fn stats(&self) -> CacheStats;
}

/// Bookkeeping weight of one cached entry beyond its payload (key, node, counters).
const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The moka implementation, bounded by `size_bytes_max` (weigher: payload + overhead).
pub struct MokaEntryCache {
    cache: moka::future::Cache<Position, Bytes>,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
}

impl fmt::Debug for MokaEntryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MokaEntryCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MokaEntryCache {
    /// Pulsar's default broker cache is a fraction of direct memory; ours is 256 MiB.
    pub const DEFAULT_SIZE_BYTES_MAX: u64 = 256 * 1024 * 1024;

    pub fn new(size_bytes_max: u64) -> Arc<Self> {
        let cache = moka::future::Cache::builder()
            .max_capacity(size_bytes_max)
            .weigher(|_k: &Position, v: &Bytes| {
                u32::try_from(v.len() as u64 + ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures()
            .build();
        Arc::new(MokaEntryCache {
            cache,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl EntryCache for MokaEntryCache {
    async fn get(&self, pos: Position) -> Option<Bytes> {
        let v = self.cache.get(&pos).await;
        let counter = if v.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        v
    }

    async fn insert(&self, pos: Position, payload: Bytes) {
        self.inserts.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(pos, payload).await;
    }

    fn invalidate_ledger(&self, ledger: LedgerId) {
        // Only fails if closures were not enabled at build time; they are.
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| k.ledger == ledger);
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            size_bytes: self.cache.weighted_size(),
            entries: self.cache.entry_count(),
        }
    }
}
