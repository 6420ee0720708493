//! Test support shared by the managed-ledger and broker unit tests: real bookies in this process
//! (temp dirs, journal fsync on) behind a [`LocalConnector`], and an in-memory metadata store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use magnetar_bookie::api::{BookieId, BookieRegistration, BookieState, registration_key};
use magnetar_bookie::client::{LedgerClient, LedgerClientOptions};
use magnetar_bookie::local::LocalConnector;
use magnetar_bookie::server::{Bookie, BookieOptions};
use magnetar_metadata::{Expected, MemoryStore, MetadataStore};

use super::{ManagedLedgerFactory, MokaEntryCache};

/// Bookies and a metadata store for managed ledgers.
pub(crate) struct Cluster {
    pub metadata: Arc<dyn MetadataStore>,
    pub connector: LocalConnector,
    pub bookies: Vec<Arc<Bookie>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` bookies in temp dirs (journal fsync on), registered read-write.
    pub async fn start(n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let metadata: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
        let connector = LocalConnector::new();
        let mut bookies = Vec::new();
        for i in 0..n {
            let id: BookieId = format!("local:{}", i + 1).parse().unwrap();
            let mut opts = BookieOptions::new(id.clone(), dir.path().join(format!("b{i}")));
            opts.journal_file_size_bytes = 4 * 1024 * 1024;
            let bookie = Bookie::open(opts).await.unwrap();
            connector.insert(bookie.clone());
            let reg = BookieRegistration {
                id: id.clone(),
                state: BookieState::ReadWrite,
                free_bytes: 1 << 40,
                used_bytes: 0,
                zone: None,
                version: "test".into(),
            };
            let _ = metadata
                .put(
                    &registration_key(&id),
                    Bytes::from(serde_json::to_vec(&reg).unwrap()),
                    Expected::Any,
                )
                .await
                .unwrap();
            bookies.push(bookie);
        }
        Cluster {
            metadata,
            connector,
            bookies,
            _dir: dir,
        }
    }

    pub fn client(&self) -> LedgerClient {
        LedgerClient::new(
            Arc::clone(&self.metadata),
            Arc::new(self.connector.clone()),
            LedgerClientOptions::default(),
        )
    }

    /// A broker's view: its own ledger client and cache.
    pub fn factory(&self) -> ManagedLedgerFactory {
        ManagedLedgerFactory::new(
            Arc::clone(&self.metadata),
            self.client(),
            MokaEntryCache::new(MokaEntryCache::DEFAULT_SIZE_BYTES_MAX),
        )
    }

    pub async fn stop(self) {
        for b in &self.bookies {
            b.shutdown().await;
        }
    }
}
