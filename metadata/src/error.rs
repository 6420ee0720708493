//! Errors of the metadata store, split the way callers must treat them: a *determinate* failure
//! means the operation certainly did not take effect (safe to retry), an *indeterminate* one means
//! it may or may not have (the caller must re-read before deciding). Compare-and-set conflicts are
//! not errors at all; they are returned as data by [`crate::MetadataStore::put`].

use crate::{SessionId, Version};

pub type Result<T, E = MetadataError> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MetadataError {
    /// The backend could not be reached; the operation was not applied. Retryable.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The request was sent but its outcome is unknown (e.g. the connection dropped before the
    /// reply). The caller must read the key again to learn whether it was applied.
    #[error("metadata operation outcome unknown: {0}")]
    Indeterminate(String),
    /// The session is gone (closed, expired, or its keep-alive failed for longer than its ttl).
    #[error("session {0} lost")]
    SessionLost(SessionId),
    /// A watch asked for history the store no longer keeps; re-list and watch from the new version.
    #[error("watch from version {requested} impossible: history starts at {oldest}")]
    Compacted { requested: Version, oldest: Version },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The key names what was too large (a topic's record, a cursor's, …).
    #[error("value of {size_bytes} bytes for {key} exceeds the limit of {size_bytes_max} bytes")]
    ValueTooLarge {
        key: String,
        size_bytes: usize,
        size_bytes_max: usize,
    },
    /// A record could not be decoded: the stored bytes are not what the reader expects.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A read–modify–write loop gave up after too many conflicting writers.
    #[error("too much contention on {key}: gave up after {attempts} attempts")]
    Contention { key: String, attempts: u32 },
    /// Local disk failure of the embedded backend. The store refuses further writes.
    #[error("metadata storage i/o error: {0}")]
    Storage(String),
    /// The store was shut down.
    #[error("metadata store closed")]
    Closed,
}

impl MetadataError {
    /// True when retrying the same call may succeed and cannot do harm: the failure was transient
    /// and the operation is known not to have been applied.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MetadataError::Unavailable(_))
    }

    /// True when the operation may have been applied even though it failed.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, MetadataError::Indeterminate(_))
    }
}
