//! [`ManagedLedgerError`]: typed failures of managed ledgers and cursors, shaped so the broker can
//! map each to one Pulsar `ServerError` (noted per variant).

use std::sync::Arc;

use magnetar_bookie::client::LedgerError;
use magnetar_metadata::MetadataError;

pub type MlResult<T> = Result<T, ManagedLedgerError>;

/// Cheap to clone: one failure may be handed to many pending appends.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ManagedLedgerError {
    /// Another broker took the managed ledger over (its recovery fenced our ledger, or it changed
    /// the record under us). Every later append fails too; the broker must give up the topic.
    /// Pulsar: `TopicFencedError` / `ServiceNotReady`.
    #[error("managed ledger {0} is fenced: another broker owns it now")]
    Fenced(String),
    /// The record changed between our read and our write while opening: someone else is opening
    /// or owns it. Pulsar: `ServiceNotReady` (the client retries the lookup).
    #[error("managed ledger {name}: record changed concurrently (another owner?)")]
    BadVersion { name: String },
    #[error("managed ledger {0} is closed")]
    Closed(String),
    /// A write failed and appends are refused until the owner resumes them
    /// (`suspend_appends_after_failure`). Pulsar: `ServiceNotReady` (the producer reconnects).
    #[error("appends to managed ledger {0} are suspended after a failed write")]
    AppendsSuspended(String),
    /// An acknowledgement of a position beyond the last confirmed entry (or of an empty managed
    /// ledger): refused as Pulsar's `ManagedCursorImpl` refuses it ("Invalid mark deleted
    /// position"), since accepting it would skip messages not yet written.
    #[error("invalid acknowledgement of {position} on managed ledger {name}: {reason}")]
    InvalidAck {
        name: String,
        position: String,
        reason: String,
    },
    #[error("no cursor {cursor} on managed ledger {name}")]
    NoSuchCursor { name: String, cursor: String },
    /// A cursor's state ledger is gone or unreadable: the cursor is not silently moved.
    /// Pulsar: `PersistenceError`.
    #[error(
        "cursor {cursor} of managed ledger {name}: its state ledger {ledger} cannot be read: {reason}"
    )]
    CursorLedger {
        name: String,
        cursor: String,
        ledger: magnetar_metadata::LedgerId,
        reason: String,
    },
    #[error("invalid managed ledger name {0:?}")]
    InvalidName(String),
    #[error("invalid managed ledger configuration: {0}")]
    InvalidConfig(String),
    /// Pulsar: `MetadataError`.
    #[error("metadata store: {0}")]
    Metadata(Arc<MetadataError>),
    /// Pulsar: `PersistenceError`.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// An operation that the managed ledger's state does not allow now (offloading the ledger
    /// being written; completing an offload attempt that another one superseded).
    #[error("{0}")]
    InvalidState(String),
    /// Tiered storage failed (object store down, throttling, a corrupt object).
    /// Pulsar: `PersistenceError`.
    #[error("offload: {0}")]
    Offload(Arc<magnetar_offload::OffloadError>),
}

impl From<magnetar_offload::OffloadError> for ManagedLedgerError {
    fn from(e: magnetar_offload::OffloadError) -> Self {
        ManagedLedgerError::Offload(Arc::new(e))
    }
}

impl From<MetadataError> for ManagedLedgerError {
    fn from(e: MetadataError) -> Self {
        ManagedLedgerError::Metadata(Arc::new(e))
    }
}

impl ManagedLedgerError {
    /// True when the same call may succeed later without a change of ownership.
    pub fn is_retryable(&self) -> bool {
        match self {
            ManagedLedgerError::Metadata(e) => e.is_retryable(),
            ManagedLedgerError::Ledger(e) => e.is_retryable(),
            ManagedLedgerError::Offload(e) => e.is_retryable(),
            _ => false,
        }
    }

    pub fn is_fenced(&self) -> bool {
        matches!(self, ManagedLedgerError::Fenced(_))
    }
}
