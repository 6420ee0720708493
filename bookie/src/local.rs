//! The in-process transport: a [`BookieConnector`] that hands the ledger client the bookies of this
//! process directly, so standalone pays no socket or protobuf cost on the write path and runs the
//! very same ledger-client logic as a cluster (DESIGN decision 9).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use std::time::Duration;

use async_trait::async_trait;

use magnetar_metadata::{EntryId, LedgerId};

use crate::api::{
    BookieClient, BookieError, BookieId, BookieInfo, BookieResult, Entry, FenceResult, ReadResult,
};
use crate::client::BookieConnector;

/// Bookies living in this process, by id. A bookie not (or no longer) here is unreachable.
type Bookies = Arc<RwLock<HashMap<BookieId, Arc<dyn BookieClient>>>>;

/// Cheap to clone; clones share the set of bookies.
#[derive(Clone, Debug, Default)]
pub struct LocalConnector {
    bookies: Bookies,
}

impl LocalConnector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, bookie: Arc<dyn BookieClient>) {
        let id = bookie.id().clone();
        self.bookies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, bookie);
    }

    /// Takes a bookie away (it stopped); clients holding it get `Unavailable` from then on.
    pub fn remove(&self, id: &BookieId) {
        self.bookies
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

impl BookieConnector for LocalConnector {
    fn connect(&self, id: &BookieId) -> Arc<dyn BookieClient> {
        Arc::new(LocalClient {
            id: id.clone(),
            bookies: Arc::clone(&self.bookies),
        })
    }
}

/// A handle that looks the bookie up on every call, so a bookie removed from the process is seen
/// as down rather than kept alive by the handle.
#[derive(Debug)]
struct LocalClient {
    id: BookieId,
    bookies: Bookies,
}

impl LocalClient {
    fn bookie(&self) -> BookieResult<Arc<dyn BookieClient>> {
        self.bookies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.id)
            .cloned()
            .ok_or_else(|| {
                BookieError::Unavailable(format!("no bookie {} in this process", self.id))
            })
    }
}

#[async_trait]
impl BookieClient for LocalClient {
    fn id(&self) -> &BookieId {
        &self.id
    }
    async fn add(&self, entry: Entry, recovery: bool) -> BookieResult<()> {
        self.bookie()?.add(entry, recovery).await
    }
    async fn read(
        &self,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> BookieResult<ReadResult> {
        self.bookie()?.read(ledger, entry, fence).await
    }
    async fn read_range(
        &self,
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
        max_entries: u32,
        max_bytes: u64,
    ) -> BookieResult<Vec<Entry>> {
        self.bookie()?
            .read_range(ledger, first, last, max_entries, max_bytes)
            .await
    }
    async fn read_lac(
        &self,
        ledger: LedgerId,
        previous: i64,
        timeout: Duration,
    ) -> BookieResult<i64> {
        self.bookie()?.read_lac(ledger, previous, timeout).await
    }
    async fn fence(&self, ledger: LedgerId) -> BookieResult<FenceResult> {
        self.bookie()?.fence(ledger).await
    }
    async fn delete_ledger(&self, ledger: LedgerId) -> BookieResult<()> {
        self.bookie()?.delete_ledger(ledger).await
    }
    async fn info(&self) -> BookieResult<BookieInfo> {
        self.bookie()?.info().await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::server::{Bookie, BookieOptions};

    #[tokio::test]
    async fn calls_reach_the_bookie_until_it_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let id: BookieId = "local:1".parse().unwrap();
        let mut options = BookieOptions::new(id.clone(), dir.path());
        // The host's disk fill must not decide this test (CI's disk ran above 95%).
        options.disk_usage_threshold = 1.0;
        options.disk_usage_lwm = 1.0;
        let bookie = Bookie::open(options).await.unwrap();
        let connector = LocalConnector::new();
        connector.insert(bookie.clone());
        let client = connector.connect(&id);
        let entry = Entry::new(LedgerId(7), EntryId(0), -1, Bytes::from_static(b"direct"));
        client.add(entry.clone(), false).await.unwrap();
        let read = client.read(LedgerId(7), EntryId(0), false).await.unwrap();
        assert_eq!(read.entry, entry);
        connector.remove(&id);
        assert!(matches!(
            client.read(LedgerId(7), EntryId(0), false).await,
            Err(BookieError::Unavailable(_))
        ));
        bookie.shutdown().await;
    }
}
