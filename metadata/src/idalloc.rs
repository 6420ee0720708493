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

use std::sync::Arc;

use bytes::Bytes;

use crate::record::backoff;
use crate::rounds::Rounds;
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
    rounds: Arc<Rounds<u64>>,
}

impl IdAllocator {
    /// An allocator whose counter lives at `key`. The first id is 1.
    pub fn new(store: Arc<dyn MetadataStore>, key: impl Into<String>) -> Self {
        IdAllocator {
            store,
            key: key.into(),
            rounds: Arc::default(),
        }
    }

    /// The next id. Callers waiting at the same time share one compare-and-set.
    pub async fn next(&self) -> Result<u64> {
        let Some((answer, start)) = self.rounds.join(WAITERS_MAX) else {
            return self.reserve(1).await;
        };
        if start {
            // Its own task: a caller giving up must not strand the others it serves.
            let this = self.clone();
            crate::priority::spawn_inheriting(async move { this.serve().await });
        }
        match answer.await {
            Ok(Some(id)) => Ok(id),
            // The shared attempt failed: this caller tries alone, and gets its own error.
            _ => self.reserve(1).await,
        }
    }

    /// Hands out ids to the waiting callers, one compare-and-set per round, until none wait.
    async fn serve(&self) {
        loop {
            let round = self.rounds.next_round(BATCH_IDS_MAX);
            if round.is_empty() {
                return;
            }
            let n = round.len() as u64;
            let last = self.reserve(n).await.ok();
            for (i, tx) in (0..n).zip(round) {
                // A caller gone: its id is skipped, which ids may be.
                let _ = tx.send(last.map(|last| last + 1 - n + i));
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
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::probe::Probe;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_compare_and_sets() {
        let store = Arc::new(Probe::new());
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
