//! [`LedgerError`]: everything the ledger client can fail with, typed so callers (the managed
//! ledger) can tell a fenced writer from a missing ledger from a transient bookie shortage.

use std::sync::Arc;
use std::time::Duration;

use magnetar_metadata::{LedgerId, MetadataError};

use crate::api::{BookieError, BookieId};

pub type LedgerResult<T> = Result<T, LedgerError>;

/// Cheap to clone: a writer fails every pending append with the same error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LedgerError {
    /// Another client opened the ledger for recovery (or closed it): this writer may not add.
    #[error("ledger {0} is fenced: another client recovered or closed it")]
    Fenced(LedgerId),
    #[error("not enough writable bookies: need {needed}, {available} available")]
    NotEnoughBookies { needed: usize, available: usize },
    #[error("no such ledger {0}")]
    NoSuchLedger(LedgerId),
    #[error("ledger {0} is closed")]
    LedgerClosed(LedgerId),
    #[error("invalid ledger configuration: {0}")]
    InvalidConfig(String),
    /// A read past the last entry of a closed ledger, or past the LAC of an open one.
    #[error("entry {entry} of ledger {ledger} is past the last readable entry {last_readable}")]
    EntryOutOfRange {
        ledger: LedgerId,
        entry: u64,
        last_readable: i64,
    },
    /// Too few bookies answered for a quorum decision (fencing, recovery).
    #[error("not enough replicas of ledger {ledger} answered: {context}")]
    NotEnoughReplicas { ledger: LedgerId, context: String },
    /// No replica of the entry could deliver it intact.
    #[error("entry {ledger}:{entry} is unreadable: {reasons}")]
    Unreadable {
        ledger: LedgerId,
        entry: u64,
        reasons: String,
    },
    #[error("{operation} on ledger {ledger} timed out after {after:?}")]
    Timeout {
        ledger: LedgerId,
        operation: &'static str,
        after: Duration,
    },
    #[error("metadata store: {0}")]
    Metadata(Arc<MetadataError>),
    /// The ledger's metadata record does not hold together.
    #[error("bad metadata for ledger {ledger}: {reason}")]
    BadMetadata { ledger: LedgerId, reason: String },
    #[error("bookie {bookie}: {error}")]
    Bookie {
        bookie: BookieId,
        #[source]
        error: BookieError,
    },
    /// The writer's task is gone (the runtime shut down).
    #[error("writer of ledger {0} has stopped")]
    WriterStopped(LedgerId),
}

impl From<MetadataError> for LedgerError {
    fn from(e: MetadataError) -> Self {
        LedgerError::Metadata(Arc::new(e))
    }
}

impl LedgerError {
    /// True when the same call may succeed later (bookies come back, the store recovers).
    pub fn is_retryable(&self) -> bool {
        match self {
            LedgerError::NotEnoughBookies { .. }
            | LedgerError::NotEnoughReplicas { .. }
            | LedgerError::Unreadable { .. }
            | LedgerError::Timeout { .. } => true,
            LedgerError::Metadata(e) => e.is_retryable(),
            LedgerError::Bookie { error, .. } => error.is_bookie_failure(),
            _ => false,
        }
    }
}
