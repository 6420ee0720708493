//! Reading offloaded ledgers: entries `a..=b` of a ledger are found in its dense index and
//! read with ranged GETs of fixed-size blocks of the data object, several blocks in parallel
//! (the read's own and the next `prefetch_blocks` ones, so a catch-up reader finds its next
//! entries fetched), through a byte-weighted block cache shared by every reader (moka;
//! concurrent misses of one block make one request).
//!
//! Block-aligned reads make the cache useful to readers at different positions; the index
//! makes any position one lookup away — a backward seek costs what a forward read does.
//! A read's own blocks are fetched one block per request (the first byte comes soonest);
//! blocks ahead are fetched `prefetch_request_blocks` per request and cut into cached blocks
//! (per-request cost is what bounds a catch-up reader, not bytes), within a broker-wide bound
//! on the bytes being prefetched (beyond it, reads fetch on demand).

use std::sync::Arc;

use bytes::Bytes;
use futures::future::try_join_all;
use magnetar_metadata::LedgerId;
use moka::future::Cache;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::error::{OffloadError, OffloadResult, StoreError};
use crate::format::{self, Index};
use crate::store::OffloadStore;
use crate::upload::ObjectNames;

#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// Bytes per ranged GET and per cached block (Pulsar's
    /// `managedLedgerOffloadReadBufferSizeInBytes`, 1 MiB).
    pub block_size_bytes: u64,
    /// Blocks fetched ahead of a read, in parallel with it.
    pub prefetch_blocks: u64,
    /// Blocks ahead fetched by one ranged GET.
    pub prefetch_request_blocks: u64,
    /// Bytes being prefetched at once by all readers of the broker.
    pub prefetch_inflight_bytes_max: u64,
    /// The block cache's bound.
    pub cache_size_bytes: u64,
    /// Indexes kept in memory, bounded by their bytes.
    pub index_cache_size_bytes: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            block_size_bytes: 1024 * 1024,
            prefetch_blocks: 16,
            prefetch_request_blocks: 4,
            prefetch_inflight_bytes_max: 128 * 1024 * 1024,
            cache_size_bytes: 256 * 1024 * 1024,
            index_cache_size_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Reads of every offloaded ledger of a broker, with the shared caches.
#[derive(Clone, Debug)]
pub struct OffloadReader {
    store: OffloadStore,
    /// Tells this store's objects apart from another's of the same path in the shared caches.
    store_id: u32,
    opts: ReadOptions,
    indexes: Cache<(u32, Path), Arc<Index>>,
    blocks: Cache<(u32, Path, u64), Bytes>,
    /// Permits are bytes being prefetched.
    prefetching: Arc<tokio::sync::Semaphore>,
    /// Blocks being prefetched (the cache does not show loads in progress); bounded by the
    /// permits.
    inflight: Arc<std::sync::Mutex<std::collections::HashSet<(u32, Path, u64)>>>,
}

impl OffloadReader {
    pub fn new(store: OffloadStore, opts: ReadOptions) -> Self {
        let opts = ReadOptions {
            block_size_bytes: opts.block_size_bytes.max(4096),
            prefetch_request_blocks: opts.prefetch_request_blocks.max(1),
            ..opts
        };
        let prefetch_permits = usize::try_from(opts.prefetch_inflight_bytes_max)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        OffloadReader {
            store,
            store_id: 0,
            opts,
            indexes: Cache::builder()
                .weigher(|_, i: &Arc<Index>| u32::try_from(i.size_bytes()).unwrap_or(u32::MAX))
                .max_capacity(opts.index_cache_size_bytes)
                .build(),
            blocks: Cache::builder()
                .weigher(|_, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
                .max_capacity(opts.cache_size_bytes)
                .support_invalidation_closures()
                .build(),
            prefetching: Arc::new(tokio::sync::Semaphore::new(prefetch_permits)),
            inflight: Arc::default(),
        }
    }

    /// A reader of `store` sharing this reader's caches (and so their bound): one broker
    /// reads from every store its topics' policies name through one cache budget.
    /// `store_id` must differ between the stores sharing the caches.
    pub fn for_store(&self, store: OffloadStore, store_id: u32) -> OffloadReader {
        OffloadReader {
            store,
            store_id,
            opts: self.opts,
            indexes: self.indexes.clone(),
            blocks: self.blocks.clone(),
            prefetching: Arc::clone(&self.prefetching),
            inflight: Arc::clone(&self.inflight),
        }
    }

    pub fn store(&self) -> &OffloadStore {
        &self.store
    }

    /// The ledger's index (cached).
    pub async fn index(&self, ledger: LedgerId, names: &ObjectNames) -> OffloadResult<Arc<Index>> {
        let store = self.store.clone();
        let path = names.index.clone();
        self.indexes
            .try_get_with((self.store_id, names.index.clone()), async move {
                let raw = store
                    .object_store()
                    .get(&path)
                    .await
                    .map_err(|e| store.error("get", &path, e))?
                    .bytes()
                    .await
                    .map_err(|e| store.error("get", &path, e))?;
                Index::decode(ledger, &raw).map(Arc::new)
            })
            .await
            .map_err(unshare)
    }

    /// Entries `first..=last` of an offloaded ledger, in order, each checked.
    pub async fn read(
        &self,
        ledger: LedgerId,
        names: &ObjectNames,
        first: u64,
        last: u64,
    ) -> OffloadResult<Vec<(u64, Bytes)>> {
        let index = self.index(ledger, names).await?;
        let range = index.range(first, last)?;
        let block = self.opts.block_size_bytes;
        let first_block = range.start / block;
        let last_block = (range.end - 1) / block;
        let blocks_total = index.data_bytes.div_ceil(block);
        // This read's blocks and the next few, all at once; only this read's are awaited.
        let ahead_end = (last_block + 1 + self.opts.prefetch_blocks).min(blocks_total);
        self.prefetch(&names.data, last_block + 1..ahead_end, index.data_bytes);
        let wanted = try_join_all(
            (first_block..=last_block).map(|b| self.block(&names.data, b, index.data_bytes)),
        )
        .await?;
        let mut pieces = Vec::with_capacity(wanted.len());
        let mut got_bytes = 0u64;
        for (i, bytes) in wanted.iter().enumerate() {
            let at = (first_block + i as u64) * block;
            let from = range.start.saturating_sub(at) as usize;
            let to = ((range.end - at) as usize).min(bytes.len());
            if from > to {
                return Err(OffloadError::Corrupt {
                    ledger,
                    what: format!(
                        "block {} is shorter than the index says",
                        first_block + i as u64
                    ),
                });
            }
            got_bytes += (to - from) as u64;
            pieces.push(bytes.slice(from..to));
        }
        if got_bytes != range.end - range.start {
            return Err(OffloadError::Corrupt {
                ledger,
                what: "the data object is shorter than its index says".to_owned(),
            });
        }
        // Entries are slices of the cached blocks; only one straddling two blocks is copied.
        format::decode_records(ledger, first, pieces)
    }

    /// Starts fetching the blocks of `ahead` that are neither cached nor being fetched, in
    /// runs of `prefetch_request_blocks` per request; each block of a run is loaded through
    /// the cache (so a read wanting it meanwhile waits for the run instead of asking again).
    fn prefetch(&self, path: &Path, ahead: std::ops::Range<u64>, data_bytes: u64) {
        use futures::FutureExt;
        let block = self.opts.block_size_bytes;
        let busy = |b: u64| {
            let key = (self.store_id, path.clone(), b);
            self.blocks.contains_key(&key)
                || self
                    .inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&key)
        };
        let mut b = ahead.start;
        while b < ahead.end {
            if busy(b) {
                b += 1;
                continue;
            }
            let mut run_end = b + 1;
            while run_end < ahead.end
                && run_end - b < self.opts.prefetch_request_blocks
                && !busy(run_end)
            {
                run_end += 1;
            }
            let range = b * block..(run_end * block).min(data_bytes);
            let Ok(permit) = Arc::clone(&self.prefetching)
                .try_acquire_many_owned(u32::try_from(range.end - range.start).unwrap_or(u32::MAX))
            else {
                return; // enough is being prefetched: reads fetch on demand
            };
            {
                let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                for i in b..run_end {
                    inflight.insert((self.store_id, path.clone(), i));
                }
            }
            let store = self.store.clone();
            let p = path.clone();
            let start = range.start;
            let run = async move {
                let got = store
                    .object_store()
                    .get_range(&p, range)
                    .await
                    .map_err(|e| Arc::new(store.error("get range", &p, e)));
                drop(permit);
                got
            }
            .boxed()
            .shared();
            for i in b..run_end {
                let this = self.clone();
                let (path, run) = (path.clone(), run.clone());
                let from = (i * block - start) as usize;
                tokio::spawn(async move {
                    let key = (this.store_id, path, i);
                    let _ = this
                        .blocks
                        .try_get_with(key.clone(), async move {
                            let all = run.await.map_err(unshare)?;
                            let to = (from + block as usize).min(all.len());
                            if from > to {
                                return Err(OffloadError::Source(
                                    "a prefetched range came back short".to_owned(),
                                ));
                            }
                            Ok(all.slice(from..to))
                        })
                        .await;
                    this.inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                });
            }
            b = run_end;
        }
    }

    /// Block `b` of a data object (cached; one request for concurrent misses).
    async fn block(&self, path: &Path, b: u64, data_bytes: u64) -> OffloadResult<Bytes> {
        let block = self.opts.block_size_bytes;
        let range = b * block..((b + 1) * block).min(data_bytes);
        let store = self.store.clone();
        let p = path.clone();
        self.blocks
            .try_get_with((self.store_id, path.clone(), b), async move {
                store
                    .object_store()
                    .get_range(&p, range)
                    .await
                    .map_err(|e| store.error("get range", &p, e))
            })
            .await
            .map_err(unshare)
    }

    /// Forgets what is cached of a ledger's objects (deleted, or re-offloaded).
    pub async fn forget(&self, names: &ObjectNames) {
        self.indexes
            .invalidate(&(self.store_id, names.index.clone()))
            .await;
        let (id, data) = (self.store_id, names.data.clone());
        let _ = self
            .blocks
            .invalidate_entries_if(move |(i, p, _), _| *i == id && *p == data);
    }
}

/// moka shares one loader's error among its waiters; each gets its own copy.
fn unshare(e: Arc<OffloadError>) -> OffloadError {
    Arc::try_unwrap(e).unwrap_or_else(|shared| match &*shared {
        OffloadError::Store(e) => OffloadError::Store(Box::new(StoreError {
            driver: e.driver,
            bucket: e.bucket.clone(),
            op: e.op,
            path: e.path.clone(),
            // Kind kept where it matters to callers (retryable, not found); text kept always.
            source: match &e.source {
                object_store::Error::NotFound { path, .. } => object_store::Error::NotFound {
                    path: path.clone(),
                    source: e.source.to_string().into(),
                },
                other => object_store::Error::Generic {
                    store: e.driver,
                    source: other.to_string().into(),
                },
            },
        })),
        OffloadError::Corrupt { ledger, what } => OffloadError::Corrupt {
            ledger: *ledger,
            what: what.clone(),
        },
        other => OffloadError::Source(other.to_string()),
    })
}
