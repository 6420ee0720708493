//! Monotonic 64-bit ids (ledger ids) from a counter key advanced with compare-and-set.
//!
//! Every id handed out is greater than every id handed out before it, by any process sharing the
//! store. Ids may be skipped (a write whose outcome was unknown is retried), never repeated.
//!
//! Concurrent callers in one process share one compare-and-set: a broker taking over a bundle
//! creates a ledger for each of its topics at once, and a CAS per id on one key would serialise
//! them behind each other's conflicts (5 round trips per id with 100 at once, measured). The
//! callers waiting when a CAS starts get consecutive ids from it, once it is committed — so
//! an id is still only handed out after every smaller one is in the store, and never reserved
//! ahead (a block reserved by one broker and used later would break the order across brokers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::record::backoff;
use crate::{Expected, MetadataError, MetadataStore, PutOutcome, Result};

/// Give up after this many lost races or transient failures in a row.
const ATTEMPTS_MAX: u32 = 128;
/// Ids one compare-and-set hands out at most.
const BATCH_IDS_MAX: usize = 1024;
/// Callers waiting for a shared compare-and-set at most; more allocate on their own.
const WAITERS_MAX: usize = 8192;

#[derive(Debug, Clone)]
pub struct IdAllocator {
    store: Arc<dyn MetadataStore>,
    key: String,
    batch: Arc<Batch>,
}

/// The callers waiting for the next shared compare-and-set, and whether a task runs them.
#[derive(Debug, Default)]
struct Batch {
    waiting: Mutex<Vec<oneshot::Sender<Option<u64>>>>,
    running: AtomicBool,
}

impl Batch {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<oneshot::Sender<Option<u64>>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl IdAllocator {
    /// An allocator whose counter lives at `key`. The first id is 1.
    pub fn new(store: Arc<dyn MetadataStore>, key: impl Into<String>) -> Self {
        IdAllocator {
            store,
            key: key.into(),
            batch: Arc::default(),
        }
    }

    /// The next id. Callers waiting at the same time share one compare-and-set.
    pub async fn next(&self) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        let queued = {
            let mut waiting = self.batch.waiting();
            let room = waiting.len() < WAITERS_MAX;
            if room {
                waiting.push(tx);
            }
            room
        };
        if !queued {
            return self.reserve(1).await;
        }
        if !self.batch.running.swap(true, Ordering::AcqRel) {
            // Its own task: a caller giving up must not strand the others it serves.
            let this = self.clone();
            tokio::spawn(async move { this.serve().await });
        }
        match rx.await {
            Ok(Some(id)) => Ok(id),
            // The shared attempt failed: this caller tries alone, and gets its own error.
            _ => self.reserve(1).await,
        }
    }

    /// Hands out ids to the waiting callers, one compare-and-set per batch, until none wait.
    async fn serve(&self) {
        loop {
            let batch: Vec<_> = {
                let mut waiting = self.batch.waiting();
                let n = waiting.len().min(BATCH_IDS_MAX);
                waiting.drain(..n).collect()
            };
            if batch.is_empty() {
                self.batch.running.store(false, Ordering::Release);
                // A caller that queued before the flag went down saw it up and spawned nobody.
                if self.batch.waiting().is_empty()
                    || self.batch.running.swap(true, Ordering::AcqRel)
                {
                    return;
                }
                continue;
            }
            let n = batch.len() as u64;
            match self.reserve(n).await {
                Ok(last) => {
                    for (id, tx) in (last + 1 - n..=last).zip(batch) {
                        // A caller gone: its id is skipped, which ids may be.
                        let _ = tx.send(Some(id));
                    }
                }
                Err(_) => {
                    for tx in batch {
                        let _ = tx.send(None);
                    }
                }
            }
        }
    }

    /// Advances the counter by `n` (compare-and-set, retried); the last id of the `n` now
    /// reserved.
    async fn reserve(&self, n: u64) -> Result<u64> {
        for attempt in 0..ATTEMPTS_MAX {
            let (last, expected) = match self.store.get(&self.key).await {
                Ok(None) => (0, Expected::Absent),
                Ok(Some(v)) => (self.parse(&v.value)?, Expected::Version(v.version)),
                Err(e) if e.is_retryable() => {
                    backoff(attempt).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let next = last.checked_add(n).ok_or_else(|| MetadataError::Corrupt {
                key: self.key.clone(),
                reason: "id space exhausted".into(),
            })?;
            match self
                .store
                .put(&self.key, Bytes::from(next.to_string()), expected)
                .await
            {
                Ok(PutOutcome::Written(_)) => return Ok(next),
                Ok(PutOutcome::Conflict { .. }) => {}
                // Unknown outcome: at worst `next` was taken and is skipped; ids stay unique.
                Err(e) if e.is_retryable() || e.is_indeterminate() => {}
                Err(e) => return Err(e),
            }
            backoff(attempt.min(6)).await;
        }
        Err(MetadataError::Contention {
            key: self.key.clone(),
            attempts: ATTEMPTS_MAX,
        })
    }

    /// The highest id handed out so far (`None`: none yet). Every id ever allocated is at most
    /// this.
    pub async fn last(&self) -> Result<Option<u64>> {
        match self.store.get(&self.key).await? {
            None => Ok(None),
            Some(v) => self.parse(&v.value).map(Some),
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<u64> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| MetadataError::Corrupt {
                key: self.key.clone(),
                reason: "id counter is not a decimal u64".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::{DeleteOutcome, Listing, MemoryStore, Session, Version, Versioned, WatchStream};

    /// A memory store that counts compare-and-sets.
    #[derive(Debug, Default)]
    struct Counting {
        inner: MemoryStore,
        puts: AtomicUsize,
    }

    #[async_trait]
    impl MetadataStore for Counting {
        async fn get(&self, key: &str) -> Result<Option<Versioned>> {
            self.inner.get(key).await
        }
        async fn put(&self, key: &str, value: Bytes, expected: Expected) -> Result<PutOutcome> {
            self.puts.fetch_add(1, Ordering::Relaxed);
            // Every write takes a moment, as a replicated one does: callers pile up behind it.
            tokio::task::yield_now().await;
            self.inner.put(key, value, expected).await
        }
        async fn put_ephemeral(
            &self,
            key: &str,
            value: Bytes,
            expected: Expected,
            session: &Session,
        ) -> Result<PutOutcome> {
            self.inner
                .put_ephemeral(key, value, expected, session)
                .await
        }
        async fn delete(&self, key: &str, expected: Expected) -> Result<DeleteOutcome> {
            self.inner.delete(key, expected).await
        }
        async fn list(&self, prefix: &str) -> Result<Listing> {
            self.inner.list(prefix).await
        }
        async fn watch(&self, prefix: &str, after: Version) -> Result<WatchStream> {
            self.inner.watch(prefix, after).await
        }
        async fn create_session(&self, ttl: Duration) -> Result<Session> {
            self.inner.create_session(ttl).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_compare_and_sets() {
        let store = Arc::new(Counting::default());
        let ids = IdAllocator::new(store.clone(), "/ids/ledger");
        let got: Vec<u64> = futures::future::try_join_all((0..200).map(|_| ids.next()))
            .await
            .unwrap();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted,
            (1..=200).collect::<Vec<u64>>(),
            "every id once, none skipped"
        );
        let puts = store.puts.load(Ordering::Relaxed);
        assert!(
            puts < 50,
            "200 callers at once took {puts} compare-and-sets"
        );
        // Later callers, alone, get larger ids.
        assert_eq!(ids.next().await.unwrap(), 201);
    }
}
