//! In-memory backend, for unit tests of other crates. Same semantics as the durable backends
//! (it passes the same conformance suite) but nothing survives the process. Sessions live as long
//! as their handle; [`MemoryStore::expire_session`] lets tests inject a lost session.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::keyspace::{Batch, Keyspace, SharedKeyspace, lock, spawn_watch};
use crate::store::{SESSION_TTL_MIN, validate_prefix};
use crate::{
    DeleteOutcome, Expected, Listing, MetadataError, MetadataStore, PutOutcome, Result, Session,
    SessionBackend, SessionId, Version, Versioned, WatchStream, validate_key, validate_value,
};

#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ks: SharedKeyspace,
    next_session: AtomicI64,
    sessions: std::sync::Mutex<BTreeMap<SessionId, CancellationToken>>,
    shutdown: CancellationToken,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                ks: Arc::new(std::sync::Mutex::new(Keyspace::new(
                    BTreeMap::new(),
                    Version::ZERO,
                ))),
                next_session: AtomicI64::new(0),
                sessions: std::sync::Mutex::new(BTreeMap::new()),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Ends a session as if its keep-alive had failed: its keys vanish and its holder's
    /// [`Session::lost`] fires. For tests of what holders do when they lose ownership.
    pub fn expire_session(&self, id: SessionId) {
        self.shared.end_session(id);
    }

    /// Ends every open session, as an outage of the store longer than any ttl would.
    pub fn expire_all_sessions(&self) {
        let ids: Vec<SessionId> = self
            .shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for id in ids {
            self.shared.end_session(id);
        }
    }
}

impl Shared {
    fn end_session(&self, id: SessionId) {
        let token = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let mut ks = lock(&self.ks);
        let keys = ks.end_session(id);
        let mut batch = Batch::new(ks.revision());
        for key in keys {
            let _ = batch.delete(&ks, &key, Expected::Any);
        }
        ks.commit(batch.into_changes());
        drop(ks);
        if let Some(token) = token {
            token.cancel();
        }
    }

    fn write<T>(&self, f: impl FnOnce(&Keyspace, &mut Batch) -> Result<T>) -> Result<T> {
        let mut ks = lock(&self.ks);
        let mut batch = Batch::new(ks.revision());
        let out = f(&ks, &mut batch)?;
        ks.commit(batch.into_changes());
        Ok(out)
    }
}

#[derive(Debug)]
struct MemorySession {
    id: SessionId,
    shared: Arc<Shared>,
}

#[async_trait]
impl SessionBackend for MemorySession {
    async fn close(&self) -> Result<()> {
        self.shared.end_session(self.id);
        Ok(())
    }

    fn release(&self) {
        self.shared.end_session(self.id);
    }
}

#[async_trait]
impl MetadataStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        validate_key(key)?;
        Ok(lock(&self.shared.ks).get(key))
    }

    async fn put(&self, key: &str, value: Bytes, expected: Expected) -> Result<PutOutcome> {
        validate_key(key)?;
        validate_value(key, &value)?;
        self.shared
            .write(|ks, batch| batch.put(ks, key, value, expected, None))
    }

    async fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
        session: &Session,
    ) -> Result<PutOutcome> {
        validate_key(key)?;
        validate_value(key, &value)?;
        if session.is_lost() {
            return Err(MetadataError::SessionLost(session.id()));
        }
        self.shared
            .write(|ks, batch| batch.put(ks, key, value, expected, Some(session.id())))
    }

    async fn delete(&self, key: &str, expected: Expected) -> Result<DeleteOutcome> {
        validate_key(key)?;
        self.shared
            .write(|ks, batch| Ok(batch.delete(ks, key, expected)))
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        validate_prefix(prefix)?;
        Ok(lock(&self.shared.ks).list(prefix))
    }

    async fn watch(&self, prefix: &str, after: Version) -> Result<WatchStream> {
        validate_prefix(prefix)?;
        spawn_watch(&self.shared.ks, prefix, after, &self.shared.shutdown)
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        let ttl = ttl.max(SESSION_TTL_MIN);
        let id = SessionId(self.shared.next_session.fetch_add(1, Ordering::Relaxed) + 1);
        lock(&self.shared.ks).register_session(id);
        let lost = CancellationToken::new();
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, lost.clone());
        Ok(Session::new(
            id,
            ttl,
            lost,
            Box::new(MemorySession {
                id,
                shared: Arc::clone(&self.shared),
            }),
        ))
    }
}
