//! The `MetadataStore` trait and the types of its contract.
//!
//! Versions are store-wide revisions: every change (put, delete, expiry of an ephemeral key) gets
//! a revision above every change completed before it began, and a key's [`Version`] is the
//! revision of its last change (changes to different keys made at the same time may share one: the
//! etcd backend sends them as one transaction). This one numbering makes watches exact:
//! `watch(prefix, after)` yields every change with a revision above `after`, so starting it from
//! the revision returned by `list`, or from a key's version to follow that key, loses nothing.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use crate::{MetadataError, Result, Session};

/// Keys are at most this long (etcd and redb both handle far more; ids are short).
pub const KEY_SIZE_MAX_BYTES: usize = 4 * 1024;
/// Values are at most 1 MiB, within etcd's default request limit of 1.5 MiB.
pub const VALUE_SIZE_MAX_BYTES: usize = 1024 * 1024;

/// A store-wide revision; a key's version is the revision of its last change. Always > 0 for an
/// existing key; `Version::ZERO` stands for "before any change" when starting a watch.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Version(pub u64);

impl Version {
    pub const ZERO: Version = Version(0);
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// What a conditional write expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Write whatever is there.
    Any,
    /// Write only if the key does not exist.
    Absent,
    /// Write only if the key exists at exactly this version.
    Version(Version),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    pub version: Version,
}

/// Result of a put: written, or a conflict reported as data with what the key holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum PutOutcome {
    Written(Version),
    /// The expectation did not hold; `current` is the key's version now (`None`: absent).
    Conflict {
        current: Option<Version>,
    },
}

impl PutOutcome {
    pub fn written(self) -> Option<Version> {
        match self {
            PutOutcome::Written(v) => Some(v),
            PutOutcome::Conflict { .. } => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum DeleteOutcome {
    Deleted,
    /// The key did not exist (only with [`Expected::Any`] or [`Expected::Absent`]).
    NotFound,
    /// The key exists at another version than expected, or is absent when a version was expected.
    Conflict {
        current: Option<Version>,
    },
}

/// A consistent snapshot of the keys under a prefix, sorted by key, taken at `revision`.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub entries: Vec<(String, Versioned)>,
    /// Start a watch from here to see every later change.
    pub revision: Version,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put(Bytes),
    Delete,
}

/// One change, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    pub kind: EventKind,
    /// The revision of this change (for a put, the key's new version).
    pub revision: Version,
}

/// An ordered stream of changes under a prefix. Ends with an error if the watch cannot go on
/// (history compacted, store closed, backend lost); the consumer then re-lists and watches again.
/// Dropping it cancels the watch.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchEvent>>,
    _guard: Option<tokio_util::sync::DropGuard>,
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

/// Capacity of the queue between a watch's producer and its consumer: the producer waits when it
/// is full, so a slow consumer slows only its own watch.
pub(crate) const WATCH_QUEUE_CAPACITY: usize = 1024;

impl WatchStream {
    /// A stream fed through `rx`; `guard` (if any) cancels the producer when the stream is dropped.
    pub(crate) fn new(
        rx: mpsc::Receiver<Result<WatchEvent>>,
        guard: Option<tokio_util::sync::DropGuard>,
    ) -> Self {
        WatchStream { rx, _guard: guard }
    }

    /// The next change, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
        self.rx.recv().await
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The metadata seam. All methods are cancel-safe in the sense that dropping the future never
/// leaves the store inconsistent, though a dropped write may or may not have been applied.
#[async_trait]
pub trait MetadataStore: Send + Sync + fmt::Debug + 'static {
    /// The value and version of `key`, if it exists.
    async fn get(&self, key: &str) -> Result<Option<Versioned>>;

    /// Writes `value` if `expected` holds; a failed expectation is returned as
    /// [`PutOutcome::Conflict`], not as an error. A put over an ephemeral key makes it persistent.
    async fn put(&self, key: &str, value: Bytes, expected: Expected) -> Result<PutOutcome>;

    /// Like [`MetadataStore::put`], but the key is deleted when `session` ends.
    async fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
        session: &Session,
    ) -> Result<PutOutcome>;

    /// Deletes `key` if `expected` holds.
    async fn delete(&self, key: &str, expected: Expected) -> Result<DeleteOutcome>;

    /// Every key starting with `prefix`, sorted, as one consistent snapshot.
    async fn list(&self, prefix: &str) -> Result<Listing>;

    /// The keys of [`MetadataStore::list`] without their values (a backend with remote values
    /// does not transfer them: listing a namespace's topics must not read every chunk and
    /// cursor record under it).
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list(prefix)
            .await?
            .entries
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Every change to keys starting with `prefix` with a revision above `after`, in order.
    async fn watch(&self, prefix: &str, after: Version) -> Result<WatchStream>;

    /// A new session that keeps itself alive in the background until closed or dropped.
    async fn create_session(&self, ttl: Duration) -> Result<Session>;
}

/// Checks a key against the rules every backend enforces: non-empty, starts with `/`, at most
/// [`KEY_SIZE_MAX_BYTES`], no NUL.
pub fn validate_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "empty"
    } else if !key.starts_with('/') {
        "must start with '/'"
    } else if key.len() > KEY_SIZE_MAX_BYTES {
        "longer than 4 KiB"
    } else if key.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(MetadataError::InvalidKey {
        key: key.chars().take(128).collect(),
        reason,
    })
}

/// Checks a value against [`VALUE_SIZE_MAX_BYTES`].
pub fn validate_value(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > VALUE_SIZE_MAX_BYTES {
        return Err(MetadataError::ValueTooLarge {
            key: key.chars().take(256).collect(),
            size_bytes: value.len(),
            size_bytes_max: VALUE_SIZE_MAX_BYTES,
        });
    }
    Ok(())
}

/// Prefixes for `list`/`watch` may be empty-ish (`/`) but follow the key rules otherwise.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix)
}

/// Default ttl bounds: a session shorter than this could not keep itself alive reliably.
pub(crate) const SESSION_TTL_MIN: Duration = Duration::from_secs(1);
