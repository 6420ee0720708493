//! Managed ledgers: how a topic is stored on the bookie tier (DESIGN decisions 4–7).
//!
//! A [`ManagedLedger`] is one topic's log: an ordered list of bookie ledgers recorded with
//! compare-and-set at `/managed-ledgers/{name}` ([`record`]). Exactly one broker writes it; owner
//! safety rests on fencing: [`ManagedLedgerFactory::open`] recovers the last ledger with
//! `open_ledger_with_recovery` (which fences the previous owner's writer), then starts a new
//! ledger recorded with CAS. Appends are pipelined and complete strictly in order; ledgers roll
//! over by entries, bytes or age; reads cross ledger boundaries and are served from the shared
//! [`EntryCache`] when recent, from the bookies with read-ahead otherwise.
//!
//! [`ManagedCursor`]s track consumption: a mark-delete floor plus individually acked ranges above
//! it, persisted (coalesced writes) at `/managed-ledgers/{name}/cursors/{cursor}`. Retention trims
//! whole ledgers that every durable cursor has consumed once they are older or larger than the
//! retention limits.
//!
//! - [`position`] — [`Position`] (`ledger:entry`).
//! - [`config`] — [`ManagedLedgerConfig`] with documented defaults.
//! - [`cache`] — the [`EntryCache`] trait and its moka implementation.
//! - [`factory`] — opening with recovery; [`ledger`] — the managed ledger's handle and stats;
//!   `writer` — its write actor (appends, rollover, trim, close); `retention` — the one task
//!   per factory that runs every open managed ledger's periodic retention check.
//! - [`ledger_list`] — how the list of ledgers is stored: a head plus immutable chunks, so a
//!   topic with any number of ledgers can still roll over.
//! - [`cursor`] — cursors; `cursor_store` — their persistence in cursor ledgers.
//! - [`batch_acks`] — batch-index acknowledgements of a cursor (partially acked batch entries).
//! - [`source`] — the per-ledger read seam: each ledger is read through a [`LedgerSource`]
//!   chosen by where it lives (the bookies today; object storage with tiered storage).

pub mod batch_acks;
pub mod cache;
pub mod config;
pub mod cursor;
mod cursor_store;
mod error;
pub mod factory;
pub mod ledger;
pub mod ledger_list;
pub mod offload;
pub mod position;
mod prepared;
mod ranges;
mod read;
pub mod record;
mod retention;
pub mod source;
mod writer;

#[cfg(test)]
mod offload_tests;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
#[cfg(test)]
mod tests;

pub use cache::{CacheStats, EntryCache, MokaEntryCache};
pub use config::ManagedLedgerConfig;
pub use cursor::{CursorStats, InitialPosition, ManagedCursor};
pub use error::{ManagedLedgerError, MlResult};
pub use factory::ManagedLedgerFactory;
pub use ledger::{AppendHandle, InternalStats, ManagedLedger, ManagedLedgerStats};
pub use offload::{OffloadPolicy, OffloadRun, OffloadStatus, OffloadTotals, Offloader};
pub use position::Position;
pub use prepared::SealedLedger;
pub use record::{
    CursorRecord, LedgerInfo, LedgerLocation, LedgerRecordState, ManagedLedgerRecord,
};
pub use source::{BookieSources, LedgerSource, LedgerSources};
