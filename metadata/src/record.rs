//! Typed records over the metadata store: JSON values read, modified and written back with
//! compare-and-set, retried when another writer got there first. Ledger metadata, managed-ledger
//! state and cursors are all records.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{DeleteOutcome, Expected, MetadataError, MetadataStore, PutOutcome, Result, Version};

/// What an update function decides, given the current record.
#[derive(Debug)]
pub enum Update<T> {
    /// Write this record (creating it if absent).
    Set(T),
    /// Delete the record.
    Delete,
    /// Leave it as it is.
    Keep,
}

/// Conflicting writers tolerated before [`RecordStore::update`] gives up.
const UPDATE_ATTEMPTS_MAX: u32 = 64;
/// Transient-failure retries within one update attempt.
const UNAVAILABLE_RETRIES_MAX: u32 = 5;

pub struct RecordStore<T> {
    store: Arc<dyn MetadataStore>,
    _record: PhantomData<fn() -> T>,
}

impl<T> Clone for RecordStore<T> {
    fn clone(&self) -> Self {
        RecordStore {
            store: Arc::clone(&self.store),
            _record: PhantomData,
        }
    }
}

impl<T> fmt::Debug for RecordStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordStore")
            .field("store", &self.store)
            .finish()
    }
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| MetadataError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(key: &str, record: &T) -> Result<Bytes> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| MetadataError::Corrupt {
            key: key.to_owned(),
            reason: format!("cannot encode: {e}"),
        })
}

/// Waits a little before retrying, longer each attempt, so racing writers spread out.
pub(crate) async fn backoff(attempt: u32) {
    let base_us = 200u64 << attempt.min(8);
    let jitter_us = crate::clock::entropy().below(base_us);
    crate::clock::system()
        .sleep(Duration::from_micros(base_us + jitter_us))
        .await;
}

impl<T: Serialize + DeserializeOwned + Send> RecordStore<T> {
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        RecordStore {
            store,
            _record: PhantomData,
        }
    }

    /// A record as read some other way (e.g. in a listing).
    pub fn decode(&self, key: &str, read: &crate::Versioned) -> Result<(T, Version)> {
        Ok((decode(key, &read.value)?, read.version))
    }

    pub async fn get(&self, key: &str) -> Result<Option<(T, Version)>> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(v) => Ok(Some((decode(key, &v.value)?, v.version))),
        }
    }

    /// Creates the record if absent; a conflict (it exists) is returned as data.
    pub async fn create(&self, key: &str, record: &T) -> Result<PutOutcome> {
        self.store
            .put(key, encode(key, record)?, Expected::Absent)
            .await
    }

    /// Writes the record if it is still at `expected`.
    pub async fn put(&self, key: &str, record: &T, expected: Expected) -> Result<PutOutcome> {
        self.store.put(key, encode(key, record)?, expected).await
    }

    pub async fn delete(&self, key: &str, expected: Expected) -> Result<DeleteOutcome> {
        self.store.delete(key, expected).await
    }

    /// Reads the record, applies `f`, and writes the result with compare-and-set, retrying with
    /// the fresh value when another writer changed it in between. Returns the record as stored
    /// afterwards (`None`: absent). `f` may run several times and must not have side effects.
    ///
    /// An [`MetadataError::Indeterminate`] write is returned as the error it is: whether `f`'s
    /// result was stored is unknown, and only the caller knows whether applying it twice is safe.
    pub async fn update<F>(&self, key: &str, mut f: F) -> Result<Option<(T, Version)>>
    where
        F: FnMut(Option<&T>) -> Update<T> + Send,
    {
        for attempt in 0..UPDATE_ATTEMPTS_MAX {
            let current = self.retrying(|| self.get(key)).await?;
            let (value, version) = match current {
                Some((v, ver)) => (Some(v), Some(ver)),
                None => (None, None),
            };
            let expected = version.map_or(Expected::Absent, Expected::Version);
            match f(value.as_ref()) {
                Update::Keep => return Ok(value.zip(version)),
                Update::Set(next) => {
                    let bytes = encode(key, &next)?;
                    match self
                        .retrying(|| self.store.put(key, bytes.clone(), expected))
                        .await?
                    {
                        PutOutcome::Written(v) => return Ok(Some((next, v))),
                        PutOutcome::Conflict { .. } => {}
                    }
                }
                Update::Delete => {
                    let Some(version) = version else {
                        return Ok(None);
                    };
                    match self
                        .retrying(|| self.store.delete(key, Expected::Version(version)))
                        .await?
                    {
                        DeleteOutcome::Deleted | DeleteOutcome::NotFound => return Ok(None),
                        DeleteOutcome::Conflict { .. } => {}
                    }
                }
            }
            backoff(attempt).await;
        }
        Err(MetadataError::Contention {
            key: key.to_owned(),
            attempts: UPDATE_ATTEMPTS_MAX,
        })
    }

    /// Retries a call whose failure is known to be harmless to repeat.
    async fn retrying<R, Fut>(&self, mut call: impl FnMut() -> Fut) -> Result<R>
    where
        Fut: std::future::Future<Output = Result<R>>,
    {
        let mut attempt = 0;
        loop {
            match call().await {
                Err(e) if e.is_retryable() && attempt < UNAVAILABLE_RETRIES_MAX => {
                    attempt += 1;
                    backoff(attempt + 4).await;
                }
                other => return other,
            }
        }
    }
}
