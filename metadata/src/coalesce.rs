//! A [`MetadataStore`] wrapper that serves concurrent reads of one key with one request.
//!
//! A broker taking over a bundle loads all its topics at once, and each load reads the same
//! namespace policies: 100 topics sent 200 identical `get`s to etcd in the same milliseconds,
//! a sixth of the takeover's requests. Here, callers asking for a key while no request for it
//! is being sent share the next one.
//!
//! Reads stay as fresh as without the wrapper: a caller never joins a request already sent —
//! it waits for the next, which starts after the caller asked — so a read that begins after a
//! write completed still sees that write. Everything else passes straight through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::rounds::Rounds;
use crate::store::{Listing, WatchStream};
use crate::{
    DeleteOutcome, Expected, MetadataStore, PutOutcome, Result, Session, Version, Versioned,
};

/// Distinct keys with callers waiting at most; past it a read goes alone.
const KEYS_WAITING_MAX: usize = 4096;
/// Callers waiting on one key at most; past it a read goes alone.
const WAITERS_PER_KEY_MAX: usize = 4096;

type KeyRounds = Arc<Rounds<Option<Versioned>>>;
/// The keys being read in rounds. Callers join under this lock, and a serving task drops its
/// key under it only when idle, so no caller joins rounds nobody will serve.
type Keys = Arc<Mutex<HashMap<String, KeyRounds>>>;

pub struct CoalescingStore {
    inner: Arc<dyn MetadataStore>,
    keys: Keys,
}

impl std::fmt::Debug for CoalescingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescingStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl CoalescingStore {
    pub fn new(inner: Arc<dyn MetadataStore>) -> Self {
        CoalescingStore {
            inner,
            keys: Arc::default(),
        }
    }

    fn keys(keys: &Keys) -> MutexGuard<'_, HashMap<String, KeyRounds>> {
        keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves the callers waiting for `key`, one read per round, until none wait.
    async fn serve(inner: Arc<dyn MetadataStore>, keys: Keys, key: String, rounds: KeyRounds) {
        loop {
            let round = rounds.next_round(usize::MAX);
            if round.is_empty() {
                let mut map = Self::keys(&keys);
                // A caller may have joined (and started another task) since: then it stays.
                if rounds.is_idle() && map.get(&key).is_some_and(|r| Arc::ptr_eq(r, &rounds)) {
                    map.remove(&key);
                }
                return;
            }
            let answer = inner.get(&key).await.ok();
            for tx in round {
                let _ = tx.send(answer.clone());
            }
        }
    }
}

#[async_trait]
impl MetadataStore for CoalescingStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        let joined = {
            let mut keys = Self::keys(&self.keys);
            if keys.len() >= KEYS_WAITING_MAX && !keys.contains_key(key) {
                None
            } else {
                let rounds = Arc::clone(keys.entry(key.to_owned()).or_default());
                rounds
                    .join(WAITERS_PER_KEY_MAX)
                    .map(|(answer, start)| (answer, start.then_some(rounds)))
            }
        };
        let Some((answer, start)) = joined else {
            return self.inner.get(key).await;
        };
        if let Some(rounds) = start {
            // Its own task: a caller giving up must not strand the others it serves.
            tokio::spawn(Self::serve(
                Arc::clone(&self.inner),
                Arc::clone(&self.keys),
                key.to_owned(),
                rounds,
            ));
        }
        match answer.await {
            Ok(Some(read)) => Ok(read),
            // The shared read failed: this caller reads alone, and gets its own error.
            _ => self.inner.get(key).await,
        }
    }

    async fn put(&self, key: &str, value: Bytes, expected: Expected) -> Result<PutOutcome> {
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

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }

    async fn watch(&self, prefix: &str, after: Version) -> Result<WatchStream> {
        self.inner.watch(prefix, after).await
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        self.inner.create_session(ttl).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::probe::Probe;

    fn waiting(store: &CoalescingStore, key: &str) -> Option<usize> {
        CoalescingStore::keys(&store.keys)
            .get(key)
            .map(|r| r.waiting())
    }

    async fn until(cond: impl Fn() -> bool) {
        while !cond() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_waiting_together_share_one_request() {
        let inner = Arc::new(Probe::holding_reads());
        inner
            .put("/k", Bytes::from_static(b"v1"), Expected::Any)
            .await
            .unwrap()
            .written()
            .expect("written");
        let store = Arc::new(CoalescingStore::new(inner.clone()));
        // The first request is held; 50 more callers queue behind it, for one more request.
        let first = tokio::spawn({
            let s = Arc::clone(&store);
            async move { s.get("/k").await }
        });
        until(|| inner.gets.load(Ordering::SeqCst) == 1).await;
        let rest: Vec<_> = (0..50)
            .map(|_| {
                let s = Arc::clone(&store);
                tokio::spawn(async move { s.get("/k").await })
            })
            .collect();
        until(|| waiting(&store, "/k") == Some(50)).await;
        inner.release_reads(2);
        assert_eq!(first.await.unwrap().unwrap().unwrap().value, "v1");
        for r in rest {
            assert_eq!(r.await.unwrap().unwrap().unwrap().value, "v1");
        }
        assert_eq!(
            inner.gets.load(Ordering::SeqCst),
            2,
            "51 callers, 2 requests"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_after_a_write_sees_it_although_an_older_read_is_in_flight() {
        let inner = Arc::new(Probe::holding_reads());
        inner
            .put("/k", Bytes::from_static(b"old"), Expected::Any)
            .await
            .unwrap()
            .written()
            .expect("written");
        let store = Arc::new(CoalescingStore::new(inner.clone()));
        let early = tokio::spawn({
            let s = Arc::clone(&store);
            async move { s.get("/k").await }
        });
        until(|| inner.gets.load(Ordering::SeqCst) == 1).await;
        // The write completes while the early read is in flight; a read started now must not
        // take the early read's answer.
        store
            .put("/k", Bytes::from_static(b"new"), Expected::Any)
            .await
            .unwrap()
            .written()
            .expect("written");
        let late = tokio::spawn({
            let s = Arc::clone(&store);
            async move { s.get("/k").await }
        });
        until(|| waiting(&store, "/k") == Some(1)).await;
        inner.release_reads(2);
        early.await.unwrap().unwrap();
        assert_eq!(late.await.unwrap().unwrap().unwrap().value, "new");
        // Nothing is left behind once every caller is served.
        until(|| CoalescingStore::keys(&store.keys).is_empty()).await;
    }
}
