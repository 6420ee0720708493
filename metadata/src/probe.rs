//! A test store (unit tests of this crate): a [`MemoryStore`] that counts reads and writes,
//! lets every write take a moment (as a replicated one does, so concurrent callers pile up),
//! and can hold reads until permits are given.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::store::{Listing, WatchStream};
use crate::{
    DeleteOutcome, Expected, MemoryStore, MetadataStore, PutOutcome, Result, Session, Version,
    Versioned,
};

#[derive(Debug)]
pub(crate) struct Probe {
    inner: MemoryStore,
    pub gets: AtomicUsize,
    pub puts: AtomicUsize,
    /// Reads wait for a permit each when set.
    pub read_permits: Option<Semaphore>,
}

impl Probe {
    pub fn new() -> Self {
        Probe {
            inner: MemoryStore::new(),
            gets: AtomicUsize::new(0),
            puts: AtomicUsize::new(0),
            read_permits: None,
        }
    }

    /// Reads wait until [`Probe::release_reads`] lets them through.
    pub fn holding_reads() -> Self {
        Probe {
            read_permits: Some(Semaphore::new(0)),
            ..Probe::new()
        }
    }

    pub fn release_reads(&self, n: usize) {
        if let Some(p) = &self.read_permits {
            p.add_permits(n);
        }
    }
}

#[async_trait]
impl MetadataStore for Probe {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if let Some(p) = &self.read_permits {
            p.acquire().await.expect("never closed").forget();
        }
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Bytes, expected: Expected) -> Result<PutOutcome> {
        self.puts.fetch_add(1, Ordering::SeqCst);
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
