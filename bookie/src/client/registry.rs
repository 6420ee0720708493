//! The bookies the client knows: the registrations under `/bookies/` (listed once, then kept
//! current by a watch from the listing's revision), a cache of connected [`BookieClient`]s, and a
//! short memory of bookies that just failed so readers try them last.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use magnetar_metadata::clock::SharedClock;

use magnetar_metadata::{EventKind, MetadataStore};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::error::LedgerResult;
use crate::api::{BOOKIES_PREFIX, BookieClient, BookieId, BookieRegistration};

/// How the client reaches a bookie: gRPC in a cluster, a direct call in standalone, fakes in
/// tests. Connecting must not block; a transport connects lazily and reports failures per call.
pub trait BookieConnector: Send + Sync + fmt::Debug + 'static {
    fn connect(&self, id: &BookieId) -> Arc<dyn BookieClient>;
}

/// Waits before re-listing after a watch broke.
const RELIST_DELAY: Duration = Duration::from_millis(200);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
pub(crate) struct Registry {
    store: Arc<dyn MetadataStore>,
    connector: Arc<dyn BookieConnector>,
    registered: RwLock<BTreeMap<BookieId, BookieRegistration>>,
    /// Flips to true once the first listing is in.
    loaded: watch::Sender<bool>,
    clients: Mutex<HashMap<BookieId, Arc<dyn BookieClient>>>,
    /// Bookies that failed a request recently, with when.
    failed: Mutex<HashMap<BookieId, Instant>>,
    quarantine: Duration,
    clock: SharedClock,
}

impl Registry {
    /// A registry kept current by a background task until `shutdown` fires.
    pub fn start(
        store: Arc<dyn MetadataStore>,
        connector: Arc<dyn BookieConnector>,
        quarantine: Duration,
        clock: SharedClock,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (loaded, _) = watch::channel(false);
        let registry = Arc::new(Registry {
            store,
            connector,
            registered: RwLock::new(BTreeMap::new()),
            loaded,
            clients: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            quarantine,
            clock: Arc::clone(&clock),
        });
        let weak = Arc::downgrade(&registry);
        tokio::spawn(async move {
            loop {
                let Some(reg) = weak.upgrade() else { return };
                tokio::select! {
                    () = reg.follow() => {}
                    () = shutdown.cancelled() => return,
                }
                drop(reg);
                tokio::select! {
                    () = clock.sleep(RELIST_DELAY) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
        registry
    }

    /// Lists the registrations, then applies every change from that revision on; returns when the
    /// watch breaks (the caller re-lists).
    async fn follow(&self) {
        let listing = match self.store.list(BOOKIES_PREFIX).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "listing registered bookies failed");
                return;
            }
        };
        let mut map = BTreeMap::new();
        for (key, v) in &listing.entries {
            if let Some(reg) = parse(key, &v.value) {
                map.insert(reg.id.clone(), reg);
            }
        }
        *self.registered.write().unwrap_or_else(|p| p.into_inner()) = map;
        self.loaded.send_replace(true);
        let mut stream = match self.store.watch(BOOKIES_PREFIX, listing.revision).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "watching registered bookies failed");
                return;
            }
        };
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(ev) => ev,
                Err(e) => {
                    debug!(error = %e, "bookie watch ended; re-listing");
                    return;
                }
            };
            let mut map = self.registered.write().unwrap_or_else(|p| p.into_inner());
            match event.kind {
                EventKind::Put(value) => {
                    if let Some(reg) = parse(&event.key, &value) {
                        map.insert(reg.id.clone(), reg);
                    }
                }
                EventKind::Delete => {
                    if let Some(id) = event.key.strip_prefix(BOOKIES_PREFIX) {
                        map.remove(&BookieId(id.to_owned()));
                    }
                }
            }
        }
    }

    /// The registered bookies now; waits for the first listing (reading it directly if the
    /// background task is slow).
    pub async fn registered(&self) -> LedgerResult<Vec<BookieRegistration>> {
        if !*self.loaded.borrow() {
            let listing = self.store.list(BOOKIES_PREFIX).await?;
            return Ok(listing
                .entries
                .iter()
                .filter_map(|(k, v)| parse(k, &v.value))
                .collect());
        }
        Ok(self
            .registered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect())
    }

    /// The (cached) client for a bookie.
    pub fn client(&self, id: &BookieId) -> Arc<dyn BookieClient> {
        let mut clients = lock(&self.clients);
        Arc::clone(
            clients
                .entry(id.clone())
                .or_insert_with(|| self.connector.connect(id)),
        )
    }

    /// Notes that a bookie just failed a request.
    pub fn mark_failed(&self, id: &BookieId) {
        lock(&self.failed).insert(id.clone(), self.clock.now());
    }

    /// Notes that a bookie answered.
    pub fn mark_ok(&self, id: &BookieId) {
        let mut failed = lock(&self.failed);
        if !failed.is_empty() {
            failed.remove(id);
        }
    }

    /// True when the bookie failed within the quarantine period.
    pub fn is_suspect(&self, id: &BookieId) -> bool {
        let mut failed = lock(&self.failed);
        match failed.get(id) {
            Some(at) if self.clock.now().saturating_duration_since(*at) < self.quarantine => true,
            Some(_) => {
                failed.remove(id);
                false
            }
            None => false,
        }
    }
}

fn parse(key: &str, value: &[u8]) -> Option<BookieRegistration> {
    match serde_json::from_slice::<BookieRegistration>(value) {
        Ok(reg) => Some(reg),
        Err(e) => {
            warn!(key, error = %e, "ignoring unreadable bookie registration");
            None
        }
    }
}
