//! Bundle ownership: a broker serves a topic only while it holds the lease of the topic's
//! namespace bundle in the metadata store — even when it is the only broker, so more brokers can
//! slot in later (DESIGN decision 5).
//!
//! A lease is an ephemeral key `/namespace/{tenant}/{ns}/{range}` under the broker's metadata
//! session, holding the owner's id and a fresh epoch ([`OwnershipLease`]). The lease alone does
//! not make the owner safe — a new owner also fences the topic's last ledger on the bookies (the
//! managed ledger's recovery on load) — but it is how lookups find the owner, and losing it
//! (session expiry, someone deleting the key) tells the owner to stop serving the bundle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use magnetar_metadata::{
    Acquired, DeleteOutcome, Expected, LeaseRecord, MetadataError, MetadataStore, OwnershipLease,
};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::cluster::bundle::Bundle;
use crate::cluster::session::BrokerSession;

/// Where bundle leases live.
pub const OWNERSHIP_PREFIX: &str = "/namespace/";
/// Capacity of the channel announcing lost bundles; a lagging listener re-checks `is_owned`.
const LOST_CHANNEL_CAPACITY: usize = 256;

pub fn bundle_key(bundle: &Bundle) -> String {
    format!("{OWNERSHIP_PREFIX}{}", bundle)
}

/// Who owns a bundle, as far as this broker can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// This broker, with the lease's epoch.
    This { epoch: u64 },
    /// Another broker: its id as written in the lease.
    Other(LeaseRecord),
}

/// The bundles this broker owns, and the way to take more.
#[derive(Debug)]
pub struct OwnershipCache {
    store: Arc<dyn MetadataStore>,
    /// Leases are taken under its current session (renewed after a loss).
    session: Arc<BrokerSession>,
    broker_id: String,
    owned: Mutex<HashMap<Bundle, Arc<OwnershipLease>>>,
    /// One acquisition per bundle at a time: a second concurrent lookup of a free bundle would
    /// otherwise find the key the first one is writing, under this broker's own name, and answer
    /// "owned by another" — which clients see as ServiceNotReady and retry.
    acquiring: Mutex<HashMap<Bundle, Arc<tokio::sync::Mutex<()>>>>,
    lost_tx: broadcast::Sender<Bundle>,
}

impl OwnershipCache {
    /// `broker_id` is what other brokers and lookups see as the owner (its advertised address).
    pub fn new(
        store: Arc<dyn MetadataStore>,
        session: Arc<BrokerSession>,
        broker_id: String,
    ) -> Arc<Self> {
        let (lost_tx, _) = broadcast::channel(LOST_CHANNEL_CAPACITY);
        Arc::new(OwnershipCache {
            store,
            session,
            broker_id,
            owned: Mutex::new(HashMap::new()),
            acquiring: Mutex::new(HashMap::new()),
            lost_tx,
        })
    }

    pub fn broker_id(&self) -> &str {
        &self.broker_id
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<Bundle, Arc<OwnershipLease>>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bundles whose ownership this broker lost, as they are lost.
    pub fn lost_bundles(&self) -> broadcast::Receiver<Bundle> {
        self.lost_tx.subscribe()
    }

    /// The bundles this broker holds now.
    pub fn owned_bundles(&self) -> Vec<Bundle> {
        let mut bundles: Vec<Bundle> = self
            .owned()
            .iter()
            .filter(|(_, l)| !l.is_lost())
            .map(|(b, _)| b.clone())
            .collect();
        bundles.sort();
        bundles
    }

    /// True while this broker holds the bundle's lease.
    pub fn is_owned(&self, bundle: &Bundle) -> bool {
        self.owned().get(bundle).is_some_and(|l| !l.is_lost())
    }

    fn owned_epoch(&self, bundle: &Bundle) -> Option<u64> {
        self.owned()
            .get(bundle)
            .filter(|l| !l.is_lost())
            .map(|l| l.epoch())
    }

    /// The ttl of the sessions leases are held under (this broker's; the cluster's brokers
    /// share the setting).
    pub fn session_ttl(&self) -> std::time::Duration {
        self.session.current().ttl()
    }

    /// The owner of `bundle`, taking the lease if nobody holds it.
    pub async fn acquire(self: &Arc<Self>, bundle: &Bundle) -> Result<Owner, MetadataError> {
        if let Some(epoch) = self.owned_epoch(bundle) {
            return Ok(Owner::This { epoch });
        }
        let gate = {
            let mut acquiring = self.acquiring.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(acquiring.entry(bundle.clone()).or_default())
        };
        let result = {
            // The async gate serializes acquisitions of this bundle; no std lock is held here.
            let _single_flight = gate.lock().await;
            match self.owned_epoch(bundle) {
                Some(epoch) => Ok(Owner::This { epoch }),
                // Ahead of the topic loads that a takeover starts at the same time.
                None => magnetar_metadata::priority::urgent(self.take(bundle)).await,
            }
        };
        let mut acquiring = self.acquiring.lock().unwrap_or_else(|p| p.into_inner());
        // The last one out removes the gate (the map holds one reference, `gate` another).
        if acquiring
            .get(bundle)
            .is_some_and(|g| Arc::ptr_eq(g, &gate) && Arc::strong_count(g) == 2)
        {
            acquiring.remove(bundle);
        }
        result
    }

    async fn take(self: &Arc<Self>, bundle: &Bundle) -> Result<Owner, MetadataError> {
        let key = bundle_key(bundle);
        let mut acquired = OwnershipLease::acquire(
            Arc::clone(&self.store),
            &key,
            &self.broker_id,
            &self.session.current(),
        )
        .await?;
        if let Acquired::Busy(Some(holder)) = &acquired
            && holder.owner == self.broker_id
        {
            // A lease under this broker's own name that it does not hold: left by its previous
            // incarnation (restarted within the old session's ttl) or by a session it lost.
            // Nobody else can be using it, so it is taken over — the topic loads that follow
            // fence the old tenure's ledgers as for any new owner. Left alone, lookups would
            // redirect clients to this very broker until the ttl ran out.
            if self.delete_stale_own_lease(&key, holder.epoch).await? {
                info!(%bundle, stale_epoch = holder.epoch, "taking over this broker's stale lease");
                acquired = OwnershipLease::acquire(
                    Arc::clone(&self.store),
                    &key,
                    &self.broker_id,
                    &self.session.current(),
                )
                .await?;
            }
        }
        match acquired {
            Acquired::Held(lease) => {
                let lease = Arc::new(lease);
                let epoch = lease.epoch();
                self.owned().insert(bundle.clone(), Arc::clone(&lease));
                info!(%bundle, epoch, "bundle owned");
                self.watch_loss(bundle.clone(), lease);
                Ok(Owner::This { epoch })
            }
            Acquired::Busy(Some(holder)) if holder.owner == self.broker_id => {
                Err(MetadataError::Unavailable(format!(
                    "bundle {bundle}: this broker's stale lease changed while it was taken over; \
                     retry"
                )))
            }
            Acquired::Busy(Some(holder)) => Ok(Owner::Other(holder)),
            Acquired::Busy(None) => Err(MetadataError::Unavailable(format!(
                "bundle {bundle} changed hands during the lookup; retry"
            ))),
        }
    }

    /// Deletes the lease at `key` if it still names this broker with `epoch` (compare-and-set
    /// on its version); true when it is gone.
    async fn delete_stale_own_lease(&self, key: &str, epoch: u64) -> Result<bool, MetadataError> {
        let Some(current) = self.store.get(key).await? else {
            return Ok(true);
        };
        let still_ours = serde_json::from_slice::<LeaseRecord>(&current.value)
            .is_ok_and(|r| r.owner == self.broker_id && r.epoch == epoch);
        if !still_ours {
            return Ok(false);
        }
        Ok(matches!(
            self.store
                .delete(key, Expected::Version(current.version))
                .await?,
            DeleteOutcome::Deleted | DeleteOutcome::NotFound
        ))
    }

    /// The current owner without taking the lease.
    pub async fn lookup(&self, bundle: &Bundle) -> Result<Option<Owner>, MetadataError> {
        if let Some(lease) = self.owned().get(bundle).filter(|l| !l.is_lost()) {
            return Ok(Some(Owner::This {
                epoch: lease.epoch(),
            }));
        }
        let key = bundle_key(bundle);
        Ok(match self.store.get(&key).await? {
            None => None,
            Some(v) => match serde_json::from_slice::<LeaseRecord>(&v.value) {
                Ok(record) => Some(Owner::Other(record)),
                Err(e) => {
                    return Err(MetadataError::Corrupt {
                        key,
                        reason: e.to_string(),
                    });
                }
            },
        })
    }

    /// Gives a bundle up (graceful unload): the lease key is deleted so another broker can take it.
    pub async fn release(&self, bundle: &Bundle) -> Result<(), MetadataError> {
        let lease = self.owned().remove(bundle);
        if let Some(lease) = lease {
            info!(%bundle, "bundle released");
            lease.release().await?;
        }
        Ok(())
    }

    fn watch_loss(self: &Arc<Self>, bundle: Bundle, lease: Arc<OwnershipLease>) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            lease.lost().await;
            let Some(this) = this.upgrade() else { return };
            let removed = {
                let mut owned = this.owned();
                match owned.get(&bundle) {
                    Some(current) if Arc::ptr_eq(current, &lease) => {
                        owned.remove(&bundle).is_some()
                    }
                    _ => false,
                }
            };
            if removed {
                warn!(%bundle, "bundle ownership lost; its topics must stop serving");
                let _ = this.lost_tx.send(bundle);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use magnetar_metadata::MemoryStore;

    use super::*;
    use crate::cluster::bundle::NamespaceBundles;

    fn bundle() -> Bundle {
        let ns = "public/default".parse().unwrap();
        NamespaceBundles::even(ns, 4).bundles().next().unwrap()
    }

    #[tokio::test]
    async fn one_owner_per_bundle_and_loss_is_announced() {
        let store = MemoryStore::new();
        let shared: Arc<dyn MetadataStore> = Arc::new(store.clone());
        let s1 = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(5),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let s2 = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(5),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let b1 = OwnershipCache::new(Arc::clone(&shared), Arc::clone(&s1), "broker-1:6650".into());
        let b2 = OwnershipCache::new(Arc::clone(&shared), s2, "broker-2:6650".into());
        let bundle = bundle();

        let Owner::This { epoch } = b1.acquire(&bundle).await.unwrap() else {
            panic!("a free bundle is taken")
        };
        assert!(b1.is_owned(&bundle));
        match b2.acquire(&bundle).await.unwrap() {
            Owner::Other(r) => assert_eq!((r.owner.as_str(), r.epoch), ("broker-1:6650", epoch)),
            other => panic!("second broker must see the owner, got {other:?}"),
        }
        assert_eq!(
            b2.lookup(&bundle).await.unwrap(),
            Some(Owner::Other(LeaseRecord {
                owner: "broker-1:6650".into(),
                epoch
            }))
        );

        // Broker 1's session expires: it is told, and broker 2 can take over with a newer epoch.
        let mut lost = b1.lost_bundles();
        store.expire_session(s1.current().id());
        let gone = tokio::time::timeout(Duration::from_secs(5), lost.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gone, bundle);
        assert!(!b1.is_owned(&bundle));
        let Owner::This { epoch: epoch2 } = b2.acquire(&bundle).await.unwrap() else {
            panic!("the bundle is free after the owner's session ended")
        };
        assert!(epoch2 > epoch);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_acquisitions_by_one_broker_all_see_it_owning() {
        let shared: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
        let s1 = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(5),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let b1 = OwnershipCache::new(Arc::clone(&shared), s1, "b1".into());
        let bundle = bundle();
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let tries: Vec<_> = (0..16)
            .map(|_| {
                let b1 = Arc::clone(&b1);
                let bundle = bundle.clone();
                let start = Arc::clone(&start);
                tokio::spawn(async move {
                    start.wait().await;
                    b1.acquire(&bundle).await
                })
            })
            .collect();
        let mut epochs = Vec::new();
        for t in tries {
            match t.await.unwrap().unwrap() {
                Owner::This { epoch } => epochs.push(epoch),
                other => panic!("a broker racing itself must own the bundle, got {other:?}"),
            }
        }
        epochs.dedup();
        assert_eq!(epochs.len(), 1, "one lease, one epoch: {epochs:?}");
        assert!(b1.acquiring.lock().unwrap().is_empty(), "gates are removed");
    }

    #[tokio::test]
    async fn a_broker_owns_bundles_again_after_its_session_is_renewed() {
        let store = MemoryStore::new();
        let shared: Arc<dyn MetadataStore> = Arc::new(store.clone());
        let s1 = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(5),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let b1 = OwnershipCache::new(Arc::clone(&shared), Arc::clone(&s1), "b1".into());
        let bundle = bundle();
        let Owner::This { epoch } = b1.acquire(&bundle).await.unwrap() else {
            panic!("a free bundle is taken")
        };
        let mut lost = b1.lost_bundles();
        let mut renewals = s1.renewals();
        store.expire_session(s1.current().id());
        tokio::time::timeout(Duration::from_secs(5), lost.recv())
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), renewals.changed())
            .await
            .unwrap()
            .unwrap();
        match b1.acquire(&bundle).await.unwrap() {
            Owner::This { epoch: again } => assert!(again > epoch),
            other => panic!("the renewed session takes the bundle again, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_restarted_broker_takes_over_its_own_stale_lease() {
        let store = MemoryStore::new();
        let shared: Arc<dyn MetadataStore> = Arc::new(store.clone());
        let old_session = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(60),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let before = OwnershipCache::new(Arc::clone(&shared), old_session, "b1:6650".into());
        let bundle = bundle();
        let Owner::This { epoch } = before.acquire(&bundle).await.unwrap() else {
            panic!("a free bundle is taken")
        };
        // The process dies; its session (and lease) outlive it until the ttl runs out. The
        // restarted broker has the same advertised identity and a new session.
        std::mem::forget(before);
        let new_session = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(60),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let after = OwnershipCache::new(Arc::clone(&shared), new_session, "b1:6650".into());
        match after.acquire(&bundle).await.unwrap() {
            Owner::This { epoch: again } => assert!(again > epoch, "a new tenure, a new epoch"),
            other => panic!("its own stale lease must not be taken for another owner: {other:?}"),
        }
        // Another broker still sees the restarted one as the owner.
        let s3 = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(60),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let other = OwnershipCache::new(Arc::clone(&shared), s3, "b2:6650".into());
        assert!(matches!(
            other.acquire(&bundle).await.unwrap(),
            Owner::Other(r) if r.owner == "b1:6650"
        ));
    }

    #[tokio::test]
    async fn release_hands_the_bundle_over() {
        let shared: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
        let s1 = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(5),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let s2 = BrokerSession::start(
            Arc::clone(&shared),
            Duration::from_secs(5),
            magnetar_metadata::clock::system(),
        )
        .await
        .unwrap();
        let b1 = OwnershipCache::new(Arc::clone(&shared), s1, "b1".into());
        let b2 = OwnershipCache::new(Arc::clone(&shared), s2, "b2".into());
        let bundle = bundle();
        assert!(matches!(
            b1.acquire(&bundle).await.unwrap(),
            Owner::This { .. }
        ));
        b1.release(&bundle).await.unwrap();
        assert!(!b1.is_owned(&bundle));
        assert!(matches!(
            b2.acquire(&bundle).await.unwrap(),
            Owner::This { .. }
        ));
    }
}
