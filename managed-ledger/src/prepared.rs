//! Ledgers created ahead of a managed ledger's open. A broker about to take over a bundle
//! creates each topic's next ledger while the previous owner still serves it, so that the
//! open inside the clients' pause waits for neither an id allocation nor a metadata create.
//! A ledger is used only by an open with the same ledger configuration and only if it is newer
//! than every ledger the managed ledger already lists (the previous owner may have rolled over
//! after it was made: positions must keep growing); otherwise, and when nobody opens the
//! topic, it is deleted.
//!
//! Also kept here: the lengths of ledgers the previous owner sealed, as it reported them in the
//! handover ([`SealedLedger`]). A closed ledger's length never changes, so an open that finds
//! such a ledger still listed open takes its length from the hint instead of reading the
//! ledger's metadata — one metadata round less inside the clients' pause.

use std::collections::HashMap;
use std::sync::Mutex;

use magnetar_bookie::client::{LedgerConfig, LedgerWriter};
use magnetar_metadata::LedgerId;

/// Prepared ledgers held at most (one per topic of the bundles being taken over).
pub(crate) const PREPARED_LEDGERS_MAX: usize = 10_000;

/// Sealed-ledger hints held at most.
pub(crate) const SEALED_HINTS_MAX: usize = 10_000;

/// A ledger its writer closed, with the length its closed metadata records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedLedger {
    pub ledger: LedgerId,
    pub entries: u64,
    pub size_bytes: u64,
}

/// The prepared ledgers of one factory, by managed-ledger name.
#[derive(Debug, Default)]
pub(crate) struct PreparedLedgers {
    by_name: Mutex<HashMap<String, (LedgerConfig, LedgerWriter)>>,
    sealed: Mutex<HashMap<String, SealedLedger>>,
}

impl PreparedLedgers {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (LedgerConfig, LedgerWriter)>> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `writer` for `name`; gives it back when the limit is reached or `name` has one.
    pub(crate) fn insert(
        &self,
        name: &str,
        config: LedgerConfig,
        writer: LedgerWriter,
    ) -> Result<(), LedgerWriter> {
        let mut map = self.map();
        if map.len() >= PREPARED_LEDGERS_MAX || map.contains_key(name) {
            return Err(writer);
        }
        map.insert(name.to_owned(), (config, writer));
        Ok(())
    }

    /// The ledger prepared for `name`, if any, with the configuration it was made with.
    pub(crate) fn take(&self, name: &str) -> Option<(LedgerConfig, LedgerWriter)> {
        self.map().remove(name)
    }

    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }

    fn hints(&self) -> std::sync::MutexGuard<'_, HashMap<String, SealedLedger>> {
        self.sealed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the length of `name`'s last ledger as its previous owner sealed it (dropped when
    /// the limit is reached: the open then reads the ledger's metadata, as without a hint).
    pub(crate) fn hint_sealed(&self, name: &str, sealed: SealedLedger) {
        let mut hints = self.hints();
        if hints.len() < SEALED_HINTS_MAX || hints.contains_key(name) {
            hints.insert(name.to_owned(), sealed);
        }
    }

    pub(crate) fn take_sealed(&self, name: &str) -> Option<SealedLedger> {
        self.hints().remove(name)
    }

    pub(crate) fn sealed_count(&self) -> usize {
        self.hints().len()
    }
}
