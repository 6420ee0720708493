//! Ledgers created ahead of a managed ledger's open. A broker about to take over a bundle
//! creates each topic's next ledger while the previous owner still serves it, so that the
//! open inside the clients' pause waits for neither an id allocation nor a metadata create.
//! A ledger is used only by an open with the same ledger configuration and only if it is newer
//! than every ledger the managed ledger already lists (the previous owner may have rolled over
//! after it was made: positions must keep growing); otherwise, and when nobody opens the
//! topic, it is deleted.

use std::collections::HashMap;
use std::sync::Mutex;

use magnetar_bookie::client::{LedgerConfig, LedgerWriter};

/// Prepared ledgers held at most (one per topic of the bundles being taken over).
pub(crate) const PREPARED_LEDGERS_MAX: usize = 10_000;

/// The prepared ledgers of one factory, by managed-ledger name.
#[derive(Debug, Default)]
pub(crate) struct PreparedLedgers {
    by_name: Mutex<HashMap<String, (LedgerConfig, LedgerWriter)>>,
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
}
