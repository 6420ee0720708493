//! Errors of tiered storage, split as the metadata store's are: whether retrying can help
//! ([`OffloadError::is_retryable`]) is decided here once, not by every caller.

use magnetar_metadata::LedgerId;

pub type OffloadResult<T> = Result<T, OffloadError>;

#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// The object store refused or failed a request (boxed: the rest of the variants are small).
    #[error(transparent)]
    Store(Box<StoreError>),
    /// An object read back is not what was written (or not an object of ours at all).
    #[error("offloaded ledger {ledger} is corrupt: {what}")]
    Corrupt { ledger: LedgerId, what: String },
    #[error("offloaded ledger {ledger} holds entries 0..{entries}; asked for {first}..={last}")]
    EntryOutOfRange {
        ledger: LedgerId,
        first: u64,
        last: u64,
        entries: u64,
    },
    /// The configuration names no usable store (unknown driver, missing bucket, …).
    #[error("offload configuration: {0}")]
    Config(String),
    /// Something that cannot be laid out in the object format (an entry over 4 GiB).
    #[error("offload format: {0}")]
    Format(String),
    /// The source of the entries (the bookies) failed during an upload.
    #[error("reading the ledger to offload: {0}")]
    Source(String),
}

impl OffloadError {
    /// Whether trying again later can succeed: a network failure, a 5xx or throttling from the
    /// store (object_store's `Generic` after its own retries), the entries' source failing.
    /// Not: wrong credentials, a missing bucket, a corrupt object, bad configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            OffloadError::Store(e) => store_error_is_retryable(&e.source),
            OffloadError::Source(_) => true,
            _ => false,
        }
    }

    /// Whether the object asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, OffloadError::Store(e) if matches!(e.source, object_store::Error::NotFound { .. }))
    }
}

/// A failed request, naming the store so an operator can tell which configuration is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{driver} object store ({bucket}): {op} {path}: {source}")]
pub struct StoreError {
    pub driver: &'static str,
    pub bucket: String,
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: object_store::Error,
}

/// Transient failures of an object store request.
pub fn store_error_is_retryable(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}
