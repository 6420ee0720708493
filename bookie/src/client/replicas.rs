//! What auto-recovery needs of the ledger client: the registered bookies, a replacement for a
//! lost bookie of a segment (the placement policy's one choice), a bookie's connection, and the
//! compare-and-set that names the replacement in the ledger's record.

use std::collections::HashSet;
use std::sync::Arc;

use magnetar_metadata::LedgerId;
use magnetar_metadata::clock::{Random, SharedClock};

use super::LedgerClient;
use super::error::{LedgerError, LedgerResult};
use super::placement::replace_failed;
use crate::api::{BookieClient, BookieId};

/// Attempts of the record update when racing with the ledger's writer.
const REPLACE_ATTEMPTS_MAX: u32 = 16;

impl LedgerClient {
    pub(crate) fn clock(&self) -> SharedClock {
        Arc::clone(&self.shared.options.clock)
    }

    pub(crate) fn random(&self) -> &Random {
        &self.shared.options.random
    }

    /// The ids of the bookies registered now.
    pub async fn registered_bookies(&self) -> LedgerResult<Vec<BookieId>> {
        Ok(self
            .shared
            .registry
            .registered()
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect())
    }

    pub(crate) fn bookie(&self, id: &BookieId) -> Arc<dyn BookieClient> {
        self.shared.registry.client(id)
    }

    /// A writable bookie outside `segment` to take its position `p` (zones respected).
    pub(crate) async fn choose_replacement(
        &self,
        segment: &[BookieId],
        p: usize,
    ) -> LedgerResult<BookieId> {
        let registered = self.shared.registry.registered().await?;
        let lost: HashSet<BookieId> = [segment[p].clone()].into_iter().collect();
        let next = replace_failed(&registered, segment, &lost, &self.shared.options.random)?;
        Ok(next[p].clone())
    }

    /// Names `target` instead of `lost` at position `p` of segment `index`, by compare-and-set
    /// (re-read on a conflict with the writer's own changes). Nothing to do when the position
    /// no longer holds `lost`.
    pub(crate) async fn replace_in_segment(
        &self,
        ledger: LedgerId,
        index: usize,
        p: usize,
        lost: &BookieId,
        target: &BookieId,
    ) -> LedgerResult<()> {
        for _ in 0..REPLACE_ATTEMPTS_MAX {
            let (mut meta, version) = self.shared.ledgers.read(ledger).await?;
            let Some(segment) = meta.ensembles.get_mut(index) else {
                return Ok(());
            };
            if segment.bookies.get(p) != Some(lost) {
                return Ok(());
            }
            segment.bookies[p] = target.clone();
            meta.validate(ledger)?;
            if self
                .shared
                .ledgers
                .write(ledger, &meta, version)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(LedgerError::BadMetadata {
            ledger,
            reason: format!(
                "could not record the replacement of {lost} after {REPLACE_ATTEMPTS_MAX} \
                 conflicting writes"
            ),
        })
    }
}
