//! Moving bundles between brokers without losing a message and without making clients search:
//! who serves a bundle (`claim`: owned, on its way somewhere, assigned, or taken here), the
//! unload that admin requests, shedding and the shutdown drain all run (`unload_bundle`), the
//! target's side of a handover, and unload orders for bundles another broker owns.
//!
//! A handover, step by step (records in `cluster::handover`):
//! 1. the source marks the bundle releasing here (its lookups answer the target once the
//!    lease is let go; while it holds the lease they still answer this broker),
//! 2. writes the handover record marked `preparing`, and keeps serving while the target reads
//!    the topics' policies and creates their next ledgers (kept by its factory for their
//!    opens: the open in the clients' pause then reads the head, writes it and claims the
//!    cursors, nothing more) and marks the record `prepared` — the source waits at most
//!    [`PREPARE_WAIT`] for it,
//! 3. quiesces the bundle's topics — producers detached (SENDs on the wire are ignored; the
//!    client resends them), subscriptions stopped after their queued acks, cursors' states left
//!    in their records, ledgers sealed —,
//! 4. releases the lease (lookups elsewhere find the `preparing` record naming the target),
//!    then rewrites the handover record, no longer `preparing`,
//! 5. and at once tells each client CLOSE_PRODUCER / CLOSE_CONSUMER with
//!    `assignedBrokerServiceUrl` = the target (PIP-307): clients reconnect there directly;
//! 6. the target (watching `/loadbalance/`) opens the topics' storage while it takes the lease
//!    (or a client's request takes it first: the lease is free and the record names this
//!    broker), marks the record taken, loads the topics, deletes the record; a client's request
//!    waits only for its own topic's load.
//!
//! If the target does not take the bundle within [`HANDOVER_WAIT`], the record is deleted and
//! the bundle is served by whoever a lookup reaches; if the lease cannot be released, clients
//! are told without a URL, look the topic up and find the bundle here again — an unload never
//! leaves a bundle unserved.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use magnetar_metadata::{EventKind, Expected, LeaseRecord, PutOutcome};
use tracing::{info, warn};

use super::BrokerService;
use crate::cluster::bundle::Bundle;
use crate::cluster::handover::{self, Handover, SplitOrder, UnloadOrder};
use crate::cluster::ownership::Owner;
use crate::cluster::registry::{self, BrokerRecord};
use crate::error::{BrokerError, BrokerResult};
use crate::topic::{Quiesced, Topic};
use crate::topic_name::TopicName;

/// How long a source waits for its target to take a handed-over bundle.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// How long a source, still serving, waits for its target to prepare before it quiesces.
const PREPARE_WAIT: Duration = Duration::from_secs(2);
/// How long a target keeps what it prepared for a handover that does not come.
const PREPARED_KEEP: Duration = Duration::from_secs(10);
/// Topics' policies a target keeps from its preparations at most.
const PREPARED_POLICIES_MAX: usize = 10_000;
/// How long an unload order waits for the bundle's owner to carry it out.
const ORDER_WAIT: Duration = Duration::from_secs(30);
/// How often a target tries the lease again while its source still holds it.
const LEASE_RETRY: Duration = Duration::from_millis(2);
/// Bundles a drain moves at once.
const DRAIN_PARALLEL: usize = 4;
/// Topics a target opens at once when it takes a bundle.
const TARGET_LOADS_PARALLEL: usize = 128;
/// After the `/loadbalance/` watch ends, wait this long and start over.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Waits for the outcome of a handover's lease acquisition: true once it is taken.
async fn lease_taken(lease: &mut tokio::sync::watch::Receiver<Option<bool>>) -> bool {
    lease
        .wait_for(Option::is_some)
        .await
        .is_ok_and(|taken| *taken == Some(true))
}

/// Who serves a bundle, as a lookup answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    This,
    /// Another broker's service URL; `lease` when it holds the lease (otherwise the bundle is
    /// being handed over to it, or it was chosen to take the bundle).
    Other {
        url: String,
        lease: Option<LeaseRecord>,
    },
}

/// What an unload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unloaded {
    /// Topics that were open and were closed.
    pub topics: usize,
    /// The broker that took the bundle (clients were sent to it), if it was handed over.
    pub to: Option<String>,
}

/// Bundles this broker is giving up, with where they go (None: released for anyone).
#[derive(Debug, Default)]
pub(super) struct Releasing(std::sync::Mutex<HashMap<Bundle, Release>>);

#[derive(Debug)]
struct Release {
    to: Option<String>,
    /// The latest revision at which the `/loadbalance/` watch saw the bundle's handover record
    /// marked taken or deleted: the source waits for one above its record's version.
    taken: tokio::sync::watch::Sender<magnetar_metadata::Version>,
}

impl Releasing {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Bundle, Release>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn get(&self, bundle: &Bundle) -> Option<Option<String>> {
        self.map().get(bundle).map(|r| r.to.clone())
    }
    /// Where the watch reports the handover taken; None if the bundle is being released
    /// already.
    fn insert(
        &self,
        bundle: &Bundle,
        to: Option<String>,
    ) -> Option<tokio::sync::watch::Receiver<magnetar_metadata::Version>> {
        let mut map = self.map();
        if map.contains_key(bundle) {
            return None;
        }
        let (taken, rx) = tokio::sync::watch::channel(magnetar_metadata::Version::ZERO);
        map.insert(bundle.clone(), Release { to, taken });
        Some(rx)
    }
    fn remove(&self, bundle: &Bundle) {
        self.map().remove(bundle);
    }
    /// The watch saw `bundle`'s handover record taken or deleted at `revision`.
    fn taken(&self, bundle: &Bundle, revision: magnetar_metadata::Version) {
        if let Some(r) = self.map().get(bundle) {
            r.taken.send_if_modified(|v| {
                let newer = revision > *v;
                if newer {
                    *v = revision;
                }
                newer
            });
        }
    }
}

impl BrokerService {
    /// Who serves `bundle`: this broker if it holds the lease; else the lease's holder; else the
    /// target of a handover in progress; else — unless the request is `authoritative` (another
    /// broker chose this one already) — the broker the assignment picks; else this broker,
    /// taking the lease.
    pub async fn claim(
        self: &Arc<Self>,
        bundle: &Bundle,
        authoritative: bool,
    ) -> BrokerResult<Claimed> {
        if self.ownership.is_owned(bundle) {
            return Ok(Claimed::This);
        }
        if let Some(to) = self.releasing.get(bundle) {
            return match to {
                Some(url) => Ok(Claimed::Other { url, lease: None }),
                None => Err(BrokerError::NotReady(format!(
                    "bundle {bundle} is being unloaded"
                ))),
            };
        }
        let me = self.config.service_url.as_str();
        match self.ownership.lookup(bundle).await? {
            Some(Owner::This { .. }) => return Ok(Claimed::This),
            // A lease under this broker's own name that it does not hold is a stale one of a
            // previous incarnation: `acquire` takes it over.
            Some(Owner::Other(r)) if r.owner != me => {
                return Ok(Claimed::Other {
                    url: r.owner.clone(),
                    lease: Some(r),
                });
            }
            _ => {}
        }
        if let Some(to) = self.handover_target(bundle).await?
            && to != me
        {
            return Ok(Claimed::Other {
                url: to,
                lease: None,
            });
        }
        let draining = self.draining.load(Ordering::Acquire);
        if draining || !authoritative {
            match self.assign(bundle).await {
                Some(url) if url != me => return Ok(Claimed::Other { url, lease: None }),
                _ if draining => {
                    return Err(BrokerError::NotReady(
                        "this broker is shutting down and takes no bundles".into(),
                    ));
                }
                _ => {}
            }
        }
        match self.ownership.acquire(bundle).await? {
            Owner::This { .. } => {
                // The lookup computed the bundle from boundaries read before; if a split
                // retired it meanwhile (its owner releases the parent only after writing the
                // new boundaries), this lease must not serve anything.
                if !self
                    .namespace_bundles(&bundle.namespace)
                    .await?
                    .contains(bundle)
                {
                    let _ = self.ownership.release(bundle).await;
                    return Err(BrokerError::NotReady(format!(
                        "bundle {bundle} was split; look the topic up again"
                    )));
                }
                Ok(Claimed::This)
            }
            Owner::Other(r) => Ok(Claimed::Other {
                url: r.owner.clone(),
                lease: Some(r),
            }),
        }
    }

    /// The target of a live handover of `bundle`; a stale record is deleted.
    async fn handover_target(&self, bundle: &Bundle) -> BrokerResult<Option<String>> {
        let key = handover::handover_key(bundle);
        let Some(v) = self.store.get(&key).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<Handover>(&v.value) {
            Ok(h) if !handover::is_stale(h.created_ms, self.config.clock.now_ms()) => {
                Ok(Some(h.to))
            }
            _ => {
                let _ = self.store.delete(&key, Expected::Version(v.version)).await;
                Ok(None)
            }
        }
    }

    /// Unloads a bundle this broker owns: to `destination` (a registered broker: service URL,
    /// its `host:port`, or the broker id `brokers list` shows) or, without one, to the broker
    /// the assignment picks among the others (none: the bundle is released for whoever is
    /// asked next). Fails with `NotOwner` for a bundle this broker does not hold.
    pub async fn unload_bundle(
        self: &Arc<Self>,
        bundle: &Bundle,
        destination: Option<&str>,
    ) -> BrokerResult<Unloaded> {
        if !self.ownership.is_owned(bundle) {
            return Err(BrokerError::NotOwner(format!("bundle {bundle}")));
        }
        let records = registry::list(&self.store).await?;
        let me = self.config.service_url.clone();
        let to = match destination {
            Some(name) => {
                let record = registry::find(&records, name).ok_or_else(|| {
                    BrokerError::BadRequest(format!(
                        "destination broker {name} is not an active broker of this cluster"
                    ))
                })?;
                if record.pulsar_service_url == me {
                    return Err(BrokerError::BadRequest(format!(
                        "destination broker {name} owns bundle {bundle} already"
                    )));
                }
                Some(record.pulsar_service_url.clone())
            }
            None => {
                let others: Vec<BrokerRecord> = records
                    .into_iter()
                    .filter(|r| r.pulsar_service_url != me)
                    .collect();
                self.pick_destination(bundle, &others).await
            }
        };
        let Some(taken) = self.releasing.insert(bundle, to.clone()) else {
            return Err(BrokerError::NotReady(format!(
                "bundle {bundle} is being unloaded already"
            )));
        };
        let result = self.hand_over(bundle, to, taken).await;
        self.releasing.remove(bundle);
        result
    }

    async fn hand_over(
        self: &Arc<Self>,
        bundle: &Bundle,
        to: Option<String>,
        taken: tokio::sync::watch::Receiver<magnetar_metadata::Version>,
    ) -> BrokerResult<Unloaded> {
        let topics: Vec<Arc<Topic>> = self
            .loaded()
            .into_iter()
            .filter(|t| t.bundle() == *bundle)
            .collect();
        let names: Vec<String> = topics
            .iter()
            .take(handover::HANDOVER_TOPICS_MAX)
            .map(|t| t.name().to_string())
            .collect();
        if let Some(target) = &to {
            // The target prepares while this broker still serves: no client waits for it.
            let prepare_began = self.config.clock.now();
            let prepared = self.prepare_target(bundle, target, names.clone()).await;
            info!(%bundle, %target, prepared, prepare_ms = self.ms_since(prepare_began),
                "handover target prepared");
        }
        let began = self.config.clock.now();
        let quiesced: Vec<Quiesced> = futures::future::join_all(topics.iter().map(|t| t.quiesce()))
            .await
            .into_iter()
            .flatten()
            .collect();
        let quiesce_ms = self.ms_since(began);
        let sealed: Vec<Option<[u64; 3]>> = topics
            .iter()
            .take(handover::HANDOVER_TOPICS_MAX)
            .map(|t| {
                let s = t.managed_ledger().sealed_ledger()?;
                Some([s.ledger.0, s.entries, s.size_bytes])
            })
            .collect();
        let mut taken_ms = None;
        let mut assigned = None;
        let released = match &to {
            Some(target) => {
                // The lease goes first: the `preparing` record already sends lookups to the
                // target, and the target, told by the rewrite, then takes a free lease at its
                // first attempt instead of retrying while this broker lets go.
                let released = self.ownership.release(bundle).await;
                let handed = match &released {
                    Ok(()) => {
                        self.write_handover(bundle, target, names, sealed, false)
                            .await
                    }
                    Err(_) => {
                        let key = handover::handover_key(bundle);
                        let _ = self.store.delete(&key, Expected::Any).await;
                        None
                    }
                };
                if released.is_ok()
                    && let Some((key, version)) = handed
                {
                    // The lease is free and the record names the target: clients go there at
                    // once (PIP-307). The target takes the lease on the record, or on the
                    // first client's request — whichever comes first — and opens the topics
                    // meanwhile; a client waits there only for its own topic.
                    for q in &quiesced {
                        q.notify(Some(target));
                    }
                    if !self.wait_taken(&key, version, taken, HANDOVER_WAIT).await {
                        warn!(%bundle, %target, "the target did not take the bundle in time");
                        let _ = self.store.delete(&key, Expected::Version(version)).await;
                    }
                    taken_ms = Some(self.ms_since(began));
                    match self.ownership.lookup(bundle).await {
                        Ok(Some(Owner::Other(r))) if &r.owner == target => {
                            assigned = Some(target.clone());
                        }
                        other => {
                            warn!(%bundle, %target, now = ?other, "the bundle did not reach its target");
                        }
                    }
                } else {
                    // No record, or the lease is still here: clients look the topic up (and
                    // find this broker again if the lease could not be let go).
                    for q in &quiesced {
                        q.notify(None);
                    }
                }
                released
            }
            None => {
                let released = self.ownership.release(bundle).await;
                for q in &quiesced {
                    q.notify(None);
                }
                released
            }
        };
        let clients: usize = quiesced.iter().map(Quiesced::clients).sum();
        match released {
            Ok(()) => {
                self.bundles_unloaded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let total_ms = self.ms_since(began);
                info!(%bundle, to = ?assigned, topics = topics.len(), clients, quiesce_ms, taken_ms,
                    total_ms, "bundle unloaded");
                Ok(Unloaded {
                    topics: topics.len(),
                    to: assigned,
                })
            }
            Err(e) => {
                warn!(%bundle, error = %e, "the bundle's lease could not be released; it stays here");
                Err(e.into())
            }
        }
    }

    /// Milliseconds since `began` (the phases a transfer logs).
    fn ms_since(&self, began: std::time::Instant) -> u64 {
        let elapsed = self.config.clock.now().saturating_duration_since(began);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Writes the handover record marked `preparing` and waits (at most [`PREPARE_WAIT`])
    /// for the target to mark it prepared; true if it did.
    async fn prepare_target(&self, bundle: &Bundle, target: &str, topics: Vec<String>) -> bool {
        let Some((key, version)) = self
            .write_handover(bundle, target, topics, Vec::new(), true)
            .await
        else {
            return false;
        };
        self.wait_event(&key, version, PREPARE_WAIT, handover::marks_prepared)
            .await
    }

    /// Writes the handover record (over a `preparing` one); its key and version, or None if
    /// it could not be written (the bundle is then released without one and the target learns
    /// of it on lookups).
    async fn write_handover(
        &self,
        bundle: &Bundle,
        target: &str,
        topics: Vec<String>,
        sealed: Vec<Option<[u64; 3]>>,
        preparing: bool,
    ) -> Option<(String, magnetar_metadata::Version)> {
        let key = handover::handover_key(bundle);
        let record = Handover {
            from: self.config.service_url.clone(),
            to: target.to_owned(),
            topics,
            created_ms: self.config.clock.now_ms(),
            taken: false,
            preparing,
            prepared: false,
            sealed,
        };
        let value = Bytes::from(serde_json::to_vec(&record).ok()?);
        match self.store.put(&key, value, Expected::Any).await {
            Ok(PutOutcome::Written(version)) => Some((key, version)),
            Ok(PutOutcome::Conflict { .. }) => None,
            Err(e) => {
                warn!(%bundle, error = %e, "cannot write the handover record");
                None
            }
        }
    }

    /// True once the handover record `key` (written at `version`) is marked taken by its
    /// target, or deleted, within `wait`. The `/loadbalance/` watch, long established, reports
    /// it through `taken` at once; a watch of the key alone backs it up while that watch is
    /// being restarted (a new watch from a past revision is only caught up by etcd every
    /// 100 ms).
    async fn wait_taken(
        &self,
        key: &str,
        version: magnetar_metadata::Version,
        mut taken: tokio::sync::watch::Receiver<magnetar_metadata::Version>,
        wait: Duration,
    ) -> bool {
        let reported = async move { taken.wait_for(|v| *v > version).await.is_ok() };
        let watched = self.wait_event(key, version, wait, handover::marks_taken);
        tokio::select! {
            true = reported => true,
            seen = watched => seen,
        }
    }

    /// True once `key` (at `version`) is deleted, within `wait`.
    async fn wait_deleted(
        &self,
        key: &str,
        version: magnetar_metadata::Version,
        wait: Duration,
    ) -> bool {
        self.wait_event(key, version, wait, |kind| matches!(kind, EventKind::Delete))
            .await
    }

    /// True once a change of `key` after `version` satisfies `done`, within `wait`.
    async fn wait_event(
        &self,
        key: &str,
        version: magnetar_metadata::Version,
        wait: Duration,
        done: impl Fn(&EventKind) -> bool,
    ) -> bool {
        let watched = async {
            let mut events = match self.store.watch(key, version).await {
                Ok(w) => w,
                Err(_) => return false,
            };
            while let Some(Ok(ev)) = events.next().await {
                if ev.key == key && done(&ev.kind) {
                    return true;
                }
            }
            false
        };
        magnetar_metadata::clock::timeout(&*self.config.clock, wait, watched)
            .await
            .unwrap_or(false)
    }

    /// The target's side of a handover: takes the lease (waiting briefly while the source
    /// still holds it), marks the record taken — which tells the source the move is done —,
    /// loads the topics, then deletes the record. The topics' storage is opened while
    /// the lease is being taken: the source closed all of it before writing the record, and
    /// the managed ledgers' own fencing (CAS of their records, ledger recovery) keeps it safe
    /// if the lease ends elsewhere after all — storage opened for nothing is closed again.
    async fn take_handover(
        self: Arc<Self>,
        bundle: Bundle,
        version: magnetar_metadata::Version,
        h: Handover,
    ) {
        let began = self.config.clock.now();
        let deadline = began + HANDOVER_WAIT;
        let (lease_tx, lease_rx) = tokio::sync::watch::channel(None::<bool>);
        let acquire = async {
            let taken = loop {
                if self.draining.load(Ordering::Acquire) {
                    break false;
                }
                match self.ownership.acquire(&bundle).await {
                    Ok(Owner::This { .. }) => break true,
                    Ok(Owner::Other(r))
                        if r.owner == h.from && self.config.clock.now() < deadline =>
                    {
                        self.config.clock.sleep(LEASE_RETRY).await;
                    }
                    Ok(Owner::Other(r)) => {
                        warn!(%bundle, owner = %r.owner, "handed-over bundle taken by another broker");
                        break false;
                    }
                    Err(e) => {
                        warn!(%bundle, error = %e, "cannot take a handed-over bundle");
                        break false;
                    }
                }
            };
            lease_tx.send_replace(Some(taken));
            (taken, self.ms_since(began))
        };
        let hinted: Vec<String> = h
            .sealed_ledgers()
            .map(|(ml_name, sealed)| {
                self.factory.hint_sealed(&ml_name, sealed);
                ml_name
            })
            .collect();
        let key = handover::handover_key(&bundle);
        // The mark tells the source the move is done (its clients were sent here already).
        let mark = async {
            let mut lease = lease_rx.clone();
            if !lease_taken(&mut lease).await {
                return None;
            }
            let marked = Handover {
                taken: true,
                ..h.clone()
            };
            let value = Bytes::from(serde_json::to_vec(&marked).ok()?);
            let put = self.store.put(&key, value, Expected::Version(version));
            match magnetar_metadata::priority::urgent(put).await {
                Ok(PutOutcome::Written(v)) => Some((v, self.ms_since(began))),
                Ok(PutOutcome::Conflict { .. }) => None,
                Err(e) => {
                    warn!(%bundle, error = %e, "cannot mark the handover taken");
                    None
                }
            }
        };
        let loads = futures::stream::iter(h.topics.clone())
            .map(|name| {
                let this = Arc::clone(&self);
                let mut lease = lease_rx.clone();
                async move {
                    let topic: TopicName = name.parse().ok()?;
                    let storage = this.open_storage(&topic).await.ok();
                    if lease_taken(&mut lease).await {
                        return match storage {
                            Some(opened) => this.get_opened_topic(&topic, opened).await.ok(),
                            None => this.get_topic(&topic).await.ok(),
                        };
                    }
                    if let Some(opened) = storage
                        && this.loaded_topic(&topic).is_none()
                    {
                        let _ = opened.ml.close().await;
                    }
                    None
                }
            })
            .buffer_unordered(TARGET_LOADS_PARALLEL)
            .filter(|t| futures::future::ready(t.is_some()))
            .count();
        let ((taken, lease_ms), marked, loaded) = futures::join!(acquire, mark, loads);
        self.factory.discard_hints(&hinted);
        let version = match marked {
            Some((v, marked_ms)) => {
                let total_ms = self.ms_since(began);
                info!(%bundle, from = %h.from, topics = loaded, lease_ms, marked_ms, total_ms,
                    "took a handed-over bundle");
                v
            }
            None => {
                if taken {
                    info!(%bundle, from = %h.from, topics = loaded, lease_ms,
                        "took a handed-over bundle whose record could not be marked");
                }
                version
            }
        };
        let _ = self.store.delete(&key, Expected::Version(version)).await;
    }

    /// The target's side of a handover's first step, while the source still serves: reads
    /// the topics' policies and creates their next ledgers (kept for their load: the open in
    /// the clients' pause then neither reads policies nor waits for a ledger's id and
    /// metadata), then marks the record prepared. What no load used is given up after
    /// [`PREPARED_KEEP`].
    async fn prepare_handover(
        self: Arc<Self>,
        bundle: Bundle,
        version: magnetar_metadata::Version,
        h: Handover,
    ) {
        let began = self.config.clock.now();
        let names: Vec<String> = futures::stream::iter(h.topics.clone())
            .map(|name| {
                let this = Arc::clone(&self);
                async move {
                    let topic: TopicName = name.parse().ok()?;
                    let (policies, topic_policies) = this.storage_policies(&topic).await.ok()?;
                    let config = this.ml_config(&topic, &policies, topic_policies.as_ref());
                    let ml_name = topic.persistence_name();
                    this.factory.prepare(&ml_name, &config).await.ok()?;
                    let mut kept = this
                        .prepared_policies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if kept.len() < PREPARED_POLICIES_MAX {
                        kept.insert(name, (policies, topic_policies));
                    }
                    Some(ml_name)
                }
            })
            .buffer_unordered(TARGET_LOADS_PARALLEL)
            .filter_map(futures::future::ready)
            .collect()
            .await;
        let key = handover::handover_key(&bundle);
        let marked = Handover {
            prepared: true,
            ..h.clone()
        };
        if let Ok(value) = serde_json::to_vec(&marked) {
            // A conflict: the source moved on (it waits for this mark only so long).
            let _ = self
                .store
                .put(&key, Bytes::from(value), Expected::Version(version))
                .await;
        }
        info!(%bundle, from = %h.from, topics = names.len(), prepare_ms = self.ms_since(began),
            "prepared a handover");
        let stop = self.shutdown.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.config.clock.sleep(PREPARED_KEEP) => {}
        }
        self.factory.discard_prepared(&names).await;
        let mut kept = self
            .prepared_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for name in &h.topics {
            kept.remove(name);
        }
    }

    /// Unloads `bundle` wherever it is served: here, or by its owner through an unload order
    /// (waiting until it is done). A bundle nobody serves is left as it is. `destination` must
    /// be a registered broker other than the owner (400 otherwise).
    pub async fn unload(
        self: &Arc<Self>,
        bundle: &Bundle,
        destination: Option<&str>,
    ) -> BrokerResult<()> {
        let target = match destination {
            Some(name) => {
                let records = registry::list(&self.store).await?;
                let record = registry::find(&records, name).ok_or_else(|| {
                    BrokerError::BadRequest(format!(
                        "destination broker {name} is not an active broker of this cluster"
                    ))
                })?;
                Some(record.pulsar_service_url.clone())
            }
            None => None,
        };
        if self.ownership.is_owned(bundle) {
            return self
                .unload_bundle(bundle, target.as_deref())
                .await
                .map(|_| ());
        }
        match self.ownership.lookup(bundle).await? {
            Some(Owner::Other(r)) if r.owner != self.config.service_url => {
                if target.as_deref() == Some(r.owner.as_str()) {
                    return Err(BrokerError::BadRequest(format!(
                        "destination broker {} owns bundle {bundle} already",
                        destination.unwrap_or_default()
                    )));
                }
                self.request_unload(bundle, target).await
            }
            _ => Ok(()),
        }
    }

    /// Asks the owner of `bundle` (another broker) to unload it, and waits until it did.
    pub async fn request_unload(
        &self,
        bundle: &Bundle,
        destination: Option<String>,
    ) -> BrokerResult<()> {
        let order = UnloadOrder {
            destination,
            created_ms: self.config.clock.now_ms(),
        };
        let value = Bytes::from(
            serde_json::to_vec(&order).map_err(|e| BrokerError::NotReady(e.to_string()))?,
        );
        self.place_order(bundle, &handover::unload_order_key(bundle), value, "unload")
            .await
    }

    /// Asks the owner of `bundle` (another broker) to split it, and waits until it did.
    pub async fn request_split(
        &self,
        bundle: &Bundle,
        algorithm: &super::split::SplitAlgorithm,
        unload: bool,
    ) -> BrokerResult<()> {
        let order = SplitOrder {
            algorithm: algorithm.name().to_owned(),
            positions: match algorithm {
                super::split::SplitAlgorithm::SpecifiedPositionsDivide(p) => p.clone(),
                _ => Vec::new(),
            },
            unload,
            created_ms: self.config.clock.now_ms(),
        };
        let value = Bytes::from(
            serde_json::to_vec(&order).map_err(|e| BrokerError::NotReady(e.to_string()))?,
        );
        self.place_order(bundle, &handover::split_order_key(bundle), value, "split")
            .await
    }

    /// Writes an order for the owner of `bundle` and waits for it to be carried out (the
    /// owner deletes it).
    async fn place_order(
        &self,
        bundle: &Bundle,
        key: &str,
        value: Bytes,
        what: &str,
    ) -> BrokerResult<()> {
        let version = match self.store.put(key, value, Expected::Absent).await? {
            PutOutcome::Written(v) => v,
            PutOutcome::Conflict { .. } => {
                return Err(BrokerError::NotReady(format!(
                    "a {what} of bundle {bundle} is in progress already"
                )));
            }
        };
        if self.wait_deleted(key, version, ORDER_WAIT).await {
            return Ok(());
        }
        let _ = self.store.delete(key, Expected::Version(version)).await;
        Err(BrokerError::NotReady(format!(
            "the owner of bundle {bundle} did not {what} it within {} s",
            ORDER_WAIT.as_secs()
        )))
    }

    /// Carries out a split order for a bundle this broker owns, then deletes the order.
    async fn carry_out_split(
        self: Arc<Self>,
        bundle: Bundle,
        version: magnetar_metadata::Version,
        order: SplitOrder,
    ) {
        let algorithm = match order.algorithm.parse::<super::split::SplitAlgorithm>() {
            Ok(super::split::SplitAlgorithm::SpecifiedPositionsDivide(_)) => Ok(
                super::split::SplitAlgorithm::SpecifiedPositionsDivide(order.positions.clone()),
            ),
            other => other,
        };
        match algorithm {
            Ok(a) => match self.split_bundle(&bundle, &a, order.unload).await {
                Ok(children) => {
                    info!(%bundle, children = children.len(), "split order carried out")
                }
                Err(e) => warn!(%bundle, error = %e, "split order failed"),
            },
            Err(e) => warn!(%bundle, error = %e, "split order refused"),
        }
        let _ = self
            .store
            .delete(
                &handover::split_order_key(&bundle),
                Expected::Version(version),
            )
            .await;
    }

    /// Carries out an unload order for a bundle this broker owns, then deletes the order.
    async fn carry_out_order(
        self: Arc<Self>,
        bundle: Bundle,
        version: magnetar_metadata::Version,
        order: UnloadOrder,
    ) {
        match self
            .unload_bundle(&bundle, order.destination.as_deref())
            .await
        {
            Ok(u) => info!(%bundle, to = ?u.to, "unload order carried out"),
            Err(e) => warn!(%bundle, error = %e, "unload order failed"),
        }
        let _ = self
            .store
            .delete(
                &handover::unload_order_key(&bundle),
                Expected::Version(version),
            )
            .await;
    }

    /// Tells a handover this broker is making that its target took the bundle (the record
    /// marked taken, or deleted). Only a bundle this broker is releasing has a waiter, and it
    /// only counts changes after its own record's version.
    fn note_handover_taken(&self, ev: &magnetar_metadata::WatchEvent) {
        if ev.key.starts_with(handover::HANDOVER_PREFIX)
            && let Some(bundle) = handover::bundle_of_key(&ev.key)
            && handover::marks_taken(&ev.kind)
        {
            self.releasing.taken(&bundle, ev.revision);
        }
    }

    /// One handover or order record seen (listed at start or watched).
    fn on_loadbalance_record(
        self: &Arc<Self>,
        key: &str,
        version: magnetar_metadata::Version,
        value: &[u8],
    ) {
        let Some(bundle) = handover::bundle_of_key(key) else {
            return;
        };
        let now_ms = self.config.clock.now_ms();
        if key.starts_with(handover::HANDOVER_PREFIX) {
            if let Ok(h) = serde_json::from_slice::<Handover>(value)
                && h.to == self.config.service_url
                && !h.taken
                && !handover::is_stale(h.created_ms, now_ms)
            {
                if !h.preparing {
                    self.spawn(Arc::clone(self).take_handover(bundle, version, h));
                } else if !h.prepared {
                    self.spawn(Arc::clone(self).prepare_handover(bundle, version, h));
                }
            }
        } else if key.starts_with(handover::SPLIT_ORDER_PREFIX) {
            if let Ok(order) = serde_json::from_slice::<SplitOrder>(value)
                && !handover::is_stale(order.created_ms, now_ms)
                && self.ownership.is_owned(&bundle)
            {
                self.spawn(Arc::clone(self).carry_out_split(bundle, version, order));
            }
        } else if let Ok(order) = serde_json::from_slice::<UnloadOrder>(value)
            && !handover::is_stale(order.created_ms, now_ms)
            && self.ownership.is_owned(&bundle)
        {
            self.spawn(Arc::clone(self).carry_out_order(bundle, version, order));
        }
    }

    /// Watches `/loadbalance/` for handovers to this broker and unload orders for its bundles,
    /// for as long as the service runs.
    pub(super) fn watch_loadbalance(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        let store = Arc::clone(&self.store);
        let clock = Arc::clone(&self.config.clock);
        self.tasks.spawn(async move {
            loop {
                let started = async {
                    let handovers = store.list(handover::HANDOVER_PREFIX).await?;
                    let mut orders = store.list(handover::UNLOAD_ORDER_PREFIX).await?;
                    let splits = store.list(handover::SPLIT_ORDER_PREFIX).await?;
                    let from = handovers.revision.max(orders.revision).max(splits.revision);
                    orders.entries.extend(splits.entries);
                    let events = store.watch(handover::LOADBALANCE_PREFIX, from).await?;
                    Ok::<_, magnetar_metadata::MetadataError>((handovers, orders, events))
                };
                let mut events = match started.await {
                    Ok((handovers, orders, events)) => {
                        let Some(service) = weak.upgrade() else {
                            return;
                        };
                        for (key, v) in handovers.entries.iter().chain(orders.entries.iter()) {
                            service.on_loadbalance_record(key, v.version, &v.value);
                        }
                        events
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot watch /loadbalance/; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = clock.sleep(REWATCH_DELAY) => continue,
                        }
                    }
                };
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        e = events.next() => e,
                    };
                    let Some(service) = weak.upgrade() else {
                        return;
                    };
                    match event {
                        Some(Ok(ev)) => {
                            service.note_handover_taken(&ev);
                            if let EventKind::Put(value) = &ev.kind {
                                service.on_loadbalance_record(&ev.key, ev.revision, value);
                            }
                        }
                        Some(Err(e)) => {
                            info!(error = %e, "/loadbalance/ watch ended; starting it again");
                            break;
                        }
                        None => break,
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = clock.sleep(REWATCH_DELAY) => {}
                }
            }
        });
    }

    /// Moves every bundle this broker owns to other brokers (a SIGTERM's graceful drain, what a
    /// rolling update needs): the broker first withdraws its registration so nobody assigns it
    /// more, then hands bundles over, [`DRAIN_PARALLEL`] at a time. Returns the bundles moved.
    /// With no other broker registered nothing moves (shutdown closes the topics as before).
    pub async fn drain(self: &Arc<Self>) -> usize {
        self.draining.store(true, Ordering::Release);
        let me = self.config.service_url.clone();
        if let Err(e) = registry::unregister(&self.store, &me).await {
            warn!(error = %e, "cannot withdraw this broker's registration");
        }
        self.withdraw_load_report().await;
        let others = match registry::list(&self.store).await {
            Ok(records) => records
                .into_iter()
                .filter(|r| r.pulsar_service_url != me)
                .count(),
            Err(e) => {
                warn!(error = %e, "cannot list the brokers to drain to");
                0
            }
        };
        let bundles = self.ownership.owned_bundles();
        if others == 0 || bundles.is_empty() {
            info!(
                bundles = bundles.len(),
                "nothing to drain to, or nothing to drain"
            );
            return 0;
        }
        info!(
            bundles = bundles.len(),
            brokers = others,
            "draining bundles to the other brokers"
        );
        let moved = futures::stream::iter(bundles)
            .map(|b| {
                let this = Arc::clone(self);
                async move {
                    match this.unload_bundle(&b, None).await {
                        Ok(u) => u.to.is_some(),
                        Err(e) => {
                            warn!(bundle = %b, error = %e, "drain: bundle not moved");
                            false
                        }
                    }
                }
            })
            .buffer_unordered(DRAIN_PARALLEL)
            .filter(|moved| futures::future::ready(*moved))
            .count()
            .await;
        info!(moved, "drain done");
        moved
    }
}
