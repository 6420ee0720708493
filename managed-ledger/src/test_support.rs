//! Test support shared by the managed-ledger and broker unit tests: real bookies in this process
//! (temp dirs, journal fsync on) behind a [`LocalConnector`], and an in-memory metadata store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

use std::sync::Arc;

use bytes::Bytes;
use magnetar_bookie::api::{BookieId, BookieRegistration, BookieState, registration_key};
use magnetar_bookie::client::{LedgerClient, LedgerClientOptions};
use magnetar_bookie::local::LocalConnector;
use magnetar_bookie::server::{Bookie, BookieOptions};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use magnetar_metadata::clock::SharedClock;
use magnetar_metadata::{
    DeleteOutcome, Expected, Listing, MemoryStore, MetadataError, MetadataStore, PutOutcome,
    Session, Versioned, WatchStream,
};

use crate::{ManagedLedgerFactory, MokaEntryCache};

/// Bookies and a metadata store for managed ledgers.
pub struct Cluster {
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
            // The host's disk fill must not decide tests: only a storage cap would.
            opts.disk_usage_threshold = 1.0;
            opts.disk_usage_lwm = 1.0;
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

    /// A broker's view whose managed ledgers and ledger client run on `clock` (e.g. a
    /// [`ManualClock`](magnetar_metadata::clock::ManualClock): flushes, backoff, rollover age
    /// and retention then move only when the test advances it).
    pub fn factory_with_clock(&self, clock: SharedClock) -> ManagedLedgerFactory {
        let client = LedgerClient::new(
            Arc::clone(&self.metadata),
            Arc::new(self.connector.clone()),
            LedgerClientOptions {
                clock: Arc::clone(&clock),
                ..LedgerClientOptions::default()
            },
        );
        ManagedLedgerFactory::new(
            Arc::clone(&self.metadata),
            client,
            MokaEntryCache::new(MokaEntryCache::DEFAULT_SIZE_BYTES_MAX),
        )
        .with_clock(clock)
    }

    pub async fn stop(self) {
        for b in &self.bookies {
            b.shutdown().await;
        }
    }
}

/// A metadata store whose next put to a key with a given prefix fails as `Indeterminate`, with
/// or without having been applied first — the answer lost on the way back, or the request lost
/// on the way there.
#[derive(Debug)]
pub struct IndeterminateStore {
    inner: Arc<dyn MetadataStore>,
    /// (key prefix, applied, matching puts to let through first).
    next: Mutex<Option<(String, bool, u32)>>,
    /// Puts seen (for measuring metadata write rates).
    puts: std::sync::atomic::AtomicU64,
    /// Gets of one key counted (key, gets).
    counted: Mutex<Option<(String, u64)>>,
}

impl IndeterminateStore {
    pub fn new(inner: Arc<dyn MetadataStore>) -> Arc<Self> {
        Arc::new(IndeterminateStore {
            inner,
            next: Mutex::new(None),
            puts: std::sync::atomic::AtomicU64::new(0),
            counted: Mutex::new(None),
        })
    }

    /// Counts the gets of `key` from now on (see [`Self::counted_gets`]).
    pub fn count_gets(&self, key: &str) {
        *self.counted.lock().unwrap() = Some((key.to_owned(), 0));
    }

    /// Gets of the key given to [`Self::count_gets`] since.
    pub fn counted_gets(&self) -> u64 {
        self.counted.lock().unwrap().as_ref().map_or(0, |c| c.1)
    }

    /// Puts made through this store so far.
    pub fn puts(&self) -> u64 {
        self.puts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The next put to a key starting with `prefix` fails indeterminately (`applied`: after
    /// being applied).
    pub fn fail_next_put(&self, prefix: &str, applied: bool) {
        self.fail_nth_put(prefix, 0, applied);
    }

    /// Lets `skip` puts to keys starting with `prefix` through, then fails the next one.
    pub fn fail_nth_put(&self, prefix: &str, skip: u32, applied: bool) {
        *self.next.lock().unwrap() = Some((prefix.to_owned(), applied, skip));
    }
}

#[async_trait]
impl MetadataStore for IndeterminateStore {
    async fn get(&self, key: &str) -> magnetar_metadata::Result<Option<Versioned>> {
        if let Some((counted, gets)) = self.counted.lock().unwrap().as_mut()
            && counted == key
        {
            *gets += 1;
        }
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
    ) -> magnetar_metadata::Result<PutOutcome> {
        self.puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fail = {
            let mut next = self.next.lock().unwrap();
            match next.as_mut() {
                Some((prefix, _, skip)) if key.starts_with(prefix.as_str()) && *skip > 0 => {
                    *skip -= 1;
                    None
                }
                Some((prefix, applied, _)) if key.starts_with(prefix.as_str()) => {
                    let applied = *applied;
                    *next = None;
                    Some(applied)
                }
                _ => None,
            }
        };
        match fail {
            None => self.inner.put(key, value, expected).await,
            Some(applied) => {
                if applied {
                    let _ = self.inner.put(key, value, expected).await?;
                }
                Err(MetadataError::Indeterminate("injected: answer lost".into()))
            }
        }
    }
    async fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
        session: &Session,
    ) -> magnetar_metadata::Result<PutOutcome> {
        self.inner
            .put_ephemeral(key, value, expected, session)
            .await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Expected,
    ) -> magnetar_metadata::Result<DeleteOutcome> {
        self.inner.delete(key, expected).await
    }
    async fn list(&self, prefix: &str) -> magnetar_metadata::Result<Listing> {
        self.inner.list(prefix).await
    }
    async fn list_keys(&self, prefix: &str) -> magnetar_metadata::Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }
    async fn watch(
        &self,
        prefix: &str,
        after: magnetar_metadata::Version,
    ) -> magnetar_metadata::Result<WatchStream> {
        self.inner.watch(prefix, after).await
    }
    async fn create_session(&self, ttl: Duration) -> magnetar_metadata::Result<Session> {
        self.inner.create_session(ttl).await
    }
}

impl Cluster {
    /// A broker's view whose metadata store is `metadata` (e.g. a fault-injecting wrapper of
    /// [`Cluster::metadata`]).
    pub fn factory_with(&self, metadata: Arc<dyn MetadataStore>) -> ManagedLedgerFactory {
        ManagedLedgerFactory::new(
            Arc::clone(&metadata),
            LedgerClient::new(
                metadata,
                Arc::new(self.connector.clone()),
                LedgerClientOptions::default(),
            ),
            MokaEntryCache::new(MokaEntryCache::DEFAULT_SIZE_BYTES_MAX),
        )
    }
}
