//! Ledgers deleted while this bookie was down: their data stays here unless the bookie notices.
//!
//! A ledger is deleted by the ledger client from every bookie it can reach, then from the
//! metadata store; a bookie that was down (or unreachable) at that moment keeps the ledger's
//! entries for good. So, as BookKeeper's scan-and-compare garbage collector does, every
//! `interval` the bookie compares the ledgers it stores with the metadata store and deletes
//! those whose metadata is gone; entry-log compaction then reclaims the space.
//!
//! Safe by construction: a ledger's metadata is written before any of its entries reach a
//! bookie, and ledger ids are never reused, so a stored ledger without metadata can only be a
//! deleted one. A ledger above the id counter, or any error reading the store, deletes nothing
//! (a bookie pointed at the wrong store is stopped earlier by its cookie).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use magnetar_metadata::clock::{Interval, SharedClock};
use magnetar_metadata::{IdAllocator, LedgerId, MetadataError, MetadataStore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::BookieClient;
use crate::client::ledger_key;
use crate::client::metadata::LEDGER_ID_KEY;
use crate::server::Bookie;

/// Metadata reads in flight at once during a scan.
const SCAN_PARALLELISM: usize = 16;

/// Deletes the ledgers stored here whose metadata no longer exists; returns them.
pub async fn collect_deleted_ledgers(
    bookie: &Bookie,
    store: &Arc<dyn MetadataStore>,
) -> Result<Vec<LedgerId>, MetadataError> {
    let ids = IdAllocator::new(Arc::clone(store), LEDGER_ID_KEY);
    let Some(allocated) = ids.last().await? else {
        return Ok(Vec::new()); // no ledger was ever created through this store
    };
    let candidates: Vec<LedgerId> = bookie
        .ledger_ids()
        .into_iter()
        .filter(|id| id.0 <= allocated)
        .collect();
    let missing: Vec<Result<Option<LedgerId>, MetadataError>> = stream::iter(candidates)
        .map(|id| async move { Ok(store.get(&ledger_key(id)).await?.is_none().then_some(id)) })
        .buffer_unordered(SCAN_PARALLELISM)
        .collect()
        .await;
    let mut deleted = Vec::new();
    for id in missing {
        let Some(id) = id? else { continue };
        match bookie.delete_ledger(id).await {
            Ok(()) => deleted.push(id),
            Err(e) => {
                warn!(ledger = %id, error = %e, "could not delete a ledger deleted elsewhere")
            }
        }
    }
    deleted.sort();
    if !deleted.is_empty() {
        info!(count = deleted.len(), ledgers = ?deleted, "deleted ledgers whose metadata is gone");
    }
    Ok(deleted)
}

/// Runs [`collect_deleted_ledgers`] every `interval` until `stop`.
pub fn spawn_collector(
    bookie: Arc<Bookie>,
    store: Arc<dyn MetadataStore>,
    clock: SharedClock,
    interval: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = Interval::new(clock, interval.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = collect_deleted_ledgers(&bookie, &store).await {
                warn!(error = %e, "scan for deleted ledgers failed; retried at the next interval");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use bytes::Bytes;
    use magnetar_metadata::{EntryId, Expected, MemoryStore};

    use super::*;
    use crate::api::{BookieId, Entry};
    use crate::server::BookieOptions;

    #[tokio::test]
    async fn ledgers_deleted_while_down_are_collected_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id: BookieId = "127.0.0.1:3181".parse().unwrap();
        let mut opts = BookieOptions::new(id, dir.path());
        opts.disk_usage_threshold = 1.0;
        opts.disk_usage_lwm = 1.0;
        let bookie = Bookie::open(opts).await.unwrap();
        let store: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
        for ledger in 1..=4u64 {
            let e = Entry::new(LedgerId(ledger), EntryId(0), -1, Bytes::from_static(b"x"));
            bookie.add(e, false).await.unwrap();
        }
        // Nothing was ever allocated through this store: nothing can be decided.
        assert!(
            collect_deleted_ledgers(&bookie, &store)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(bookie.ledger_ids().len(), 4);

        // Ledgers 1 and 3 still have metadata; 2 was deleted while this bookie was down; 4 is
        // above the id counter (not allocated as far as this store knows) and stays.
        let put = |k: String, v: &'static [u8]| {
            let store = Arc::clone(&store);
            async move {
                let _ = store
                    .put(&k, Bytes::from_static(v), Expected::Any)
                    .await
                    .unwrap();
            }
        };
        put(LEDGER_ID_KEY.to_owned(), b"3").await;
        put(ledger_key(LedgerId(1)), b"{}").await;
        put(ledger_key(LedgerId(3)), b"{}").await;
        let deleted = collect_deleted_ledgers(&bookie, &store).await.unwrap();
        assert_eq!(deleted, vec![LedgerId(2)]);
        assert_eq!(
            bookie.ledger_ids(),
            vec![LedgerId(1), LedgerId(3), LedgerId(4)]
        );
        assert!(bookie.read(LedgerId(2), EntryId(0), false).await.is_err());
        assert_eq!(
            bookie
                .read(LedgerId(1), EntryId(0), false)
                .await
                .unwrap()
                .entry
                .payload,
            Bytes::from_static(b"x")
        );
        bookie.shutdown().await;
    }
}
