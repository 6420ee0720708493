//! Monotonic 64-bit ids (ledger ids) from a counter key advanced with compare-and-set.
//!
//! Every id handed out is greater than every id handed out before it, by any process sharing the
//! store. Ids may be skipped (a write whose outcome was unknown is retried), never repeated.

use std::sync::Arc;

use bytes::Bytes;

use crate::record::backoff;
use crate::{Expected, MetadataError, MetadataStore, PutOutcome, Result};

/// Give up after this many lost races or transient failures in a row.
const ATTEMPTS_MAX: u32 = 128;

#[derive(Debug, Clone)]
pub struct IdAllocator {
    store: Arc<dyn MetadataStore>,
    key: String,
}

impl IdAllocator {
    /// An allocator whose counter lives at `key`. The first id is 1.
    pub fn new(store: Arc<dyn MetadataStore>, key: impl Into<String>) -> Self {
        IdAllocator {
            store,
            key: key.into(),
        }
    }

    /// The next id.
    pub async fn next(&self) -> Result<u64> {
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
            let next = last.checked_add(1).ok_or_else(|| MetadataError::Corrupt {
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
