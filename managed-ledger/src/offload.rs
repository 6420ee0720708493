//! Offloading a managed ledger's closed ledgers to object storage, and the protocol that keeps
//! the record and the bucket consistent.
//!
//! One ledger's offload, each step able to fail or crash:
//! 1. **Begin** — a new attempt id is written into the ledger's record entry by CAS (the write
//!    actor's `UpdateLedger`) *before* anything is uploaded: every object ever uploaded is named
//!    from an id some record held. An earlier incomplete attempt's objects are deleted then.
//! 2. **Upload** the data and index objects (`magnetar_offload::upload_ledger`), reading the
//!    ledger from the bookies in batches; **verify** by reading both back.
//! 3. **Complete** — `complete = true` by CAS, only if the record still holds this attempt's id.
//!    Only a stored CAS counts (Pulsar's PR #9306 marked `complete` locally after a failed
//!    metadata write). A failure before it deletes this attempt's objects (best effort; an
//!    attempt that crashed leaves its id in the record, and the next attempt deletes them).
//!
//! Reads of a complete ledger go to object storage (the sources re-open it), and after the
//! deletion lag the bookies' copy is deleted (`bookies_deleted` recorded after). Nothing here
//! runs on the append path: offloads run in their own tasks, one at a time per managed ledger
//! and at most `offload_concurrent_max` per broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use magnetar_bookie::client::LedgerClient;
use magnetar_metadata::LedgerId;
use magnetar_metadata::clock::Random;
use magnetar_offload::{
    DriverConfig, ObjectNames, OffloadReader, OffloadStore, OffloadTargets, UploadOptions,
};
use serde::Serialize;
use tokio::sync::{Semaphore, oneshot};
use tracing::{Instrument, info, info_span, warn};

use crate::error::{ManagedLedgerError, MlResult};
use crate::ledger::{Command, LedgerUpdate, ManagedLedger};
use crate::record::{LedgerInfo, LedgerRecordState, OffloadState};
use crate::{LedgerLocation, Position};

/// Entries read from the bookies per request while uploading.
const READ_BATCH_ENTRIES: u64 = 256;

/// The object store side of one broker's tiered storage, shared by its managed ledgers: the
/// cluster's store and those offload policies name ([`OffloadTargets`]).
#[derive(Debug)]
pub struct Offloader {
    targets: Arc<OffloadTargets>,
    upload: UploadOptions,
    permits: Semaphore,
    random: Arc<Random>,
    counters: OffloadCounters,
}

/// What this broker's offloads did since it started (for the metrics).
#[derive(Debug, Default)]
struct OffloadCounters {
    ledgers: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

/// [`Offloader::totals`]: ledgers and bytes offloaded, and failed offloads, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadTotals {
    pub ledgers: u64,
    pub bytes: u64,
    pub errors: u64,
}

impl Offloader {
    /// `concurrent_max` offloads run at once on this broker (Pulsar's
    /// `managedLedgerOffloadMaxThreads`).
    pub fn new(
        targets: OffloadTargets,
        upload: UploadOptions,
        concurrent_max: usize,
        random: Arc<Random>,
    ) -> Arc<Self> {
        Arc::new(Offloader {
            targets: Arc::new(targets),
            upload,
            permits: Semaphore::new(concurrent_max.max(1)),
            random,
            counters: OffloadCounters::default(),
        })
    }

    /// Offloads completed and failed since this broker started.
    pub fn totals(&self) -> OffloadTotals {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counters;
        OffloadTotals {
            ledgers: c.ledgers.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            errors: c.errors.load(Relaxed),
        }
    }

    /// The cluster's store.
    pub fn store(&self) -> &OffloadStore {
        self.targets.default_reader().store()
    }

    /// Reads of the cluster's store.
    pub fn reader(&self) -> &OffloadReader {
        self.targets.default_reader()
    }

    pub fn targets(&self) -> Arc<OffloadTargets> {
        Arc::clone(&self.targets)
    }

    /// The store an attempt recorded as `state` wrote to.
    pub(crate) fn target_of(&self, state: &OffloadState) -> MlResult<OffloadReader> {
        let at = state.location(self.store().location())?;
        Ok(self.targets.for_location(&at)?)
    }

    fn new_uid(&self) -> String {
        let (a, b) = self.random.with(|r| {
            use rand::Rng;
            (r.random::<u64>(), r.random::<u64>())
        });
        format!("{a:016x}{b:016x}")
    }

    /// Deletes every object of `ledger` (all attempts) in `store`.
    pub(crate) async fn delete_ledger_objects(
        store: &OffloadStore,
        name: &str,
        ledger: LedgerId,
    ) -> MlResult<()> {
        let dir = magnetar_offload::upload::ledger_dir(store.prefix(), name, ledger);
        Self::delete_under(store, &dir).await
    }

    /// Deletes every object of managed ledger `name` in `store`.
    pub(crate) async fn delete_all_objects(store: &OffloadStore, name: &str) -> MlResult<()> {
        let dir = magnetar_offload::upload::managed_ledger_dir(store.prefix(), name);
        Self::delete_under(store, &dir).await
    }

    async fn delete_under(store: &OffloadStore, dir: &object_store::path::Path) -> MlResult<()> {
        for meta in store.list(dir).await? {
            store.delete(&meta.location).await?;
        }
        Ok(())
    }
}

/// What decides a managed ledger's offloads: set from its configuration when it opens and
/// replaced whenever its namespace's or topic's policy changes
/// ([`ManagedLedger::set_offload_policy`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OffloadPolicy {
    /// See [`ManagedLedgerConfig`](crate::ManagedLedgerConfig)'s fields of the same names.
    pub threshold_bytes: i64,
    pub threshold_ms: i64,
    pub deletion_lag_ms: i64,
    /// `None`: the broker's store.
    pub driver: Option<DriverConfig>,
}

impl OffloadPolicy {
    pub fn of(cfg: &crate::ManagedLedgerConfig) -> OffloadPolicy {
        OffloadPolicy {
            threshold_bytes: cfg.offload_threshold_bytes,
            threshold_ms: cfg.offload_threshold_ms,
            deletion_lag_ms: cfg.offload_deletion_lag_ms,
            driver: cfg.offload_driver.clone(),
        }
    }
}

/// Pulsar's `OffloadProcessStatus.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OffloadRun {
    NotRun,
    Running,
    Success,
    Error,
}

/// The last manual or automatic offload run of a managed ledger (Pulsar's
/// `OffloadProcessStatus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffloadStatus {
    pub status: OffloadRun,
    pub last_error: String,
    /// The first position not offloaded after the last successful run.
    pub first_unoffloaded: Option<Position>,
}

/// A managed ledger's offload runs: at most one at a time.
#[derive(Debug)]
pub(crate) struct OffloadSlot {
    running: AtomicBool,
    status: std::sync::Mutex<OffloadStatus>,
    policy: std::sync::Mutex<Arc<OffloadPolicy>>,
}

impl OffloadSlot {
    pub(crate) fn new(policy: OffloadPolicy) -> Self {
        OffloadSlot {
            running: AtomicBool::new(false),
            policy: std::sync::Mutex::new(Arc::new(policy)),
            status: std::sync::Mutex::new(OffloadStatus {
                status: OffloadRun::NotRun,
                last_error: String::new(),
                first_unoffloaded: None,
            }),
        }
    }
}

impl OffloadSlot {
    fn policy(&self) -> Arc<OffloadPolicy> {
        Arc::clone(&self.policy.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn set(&self, status: OffloadStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    pub(crate) fn get(&self) -> OffloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ManagedLedger {
    fn offloader(&self) -> MlResult<&Arc<Offloader>> {
        self.offloader.as_ref().ok_or_else(|| {
            ManagedLedgerError::InvalidState(
                "tiered storage is not configured on this broker (no offload driver)".to_owned(),
            )
        })
    }

    /// The last offload run's outcome.
    pub fn offload_status(&self) -> OffloadStatus {
        self.offload.get()
    }

    /// The thresholds, lag and store in force.
    pub fn offload_policy(&self) -> Arc<OffloadPolicy> {
        self.offload.policy()
    }

    /// Replaces the offload policy (a namespace or topic policy changed); the next periodic
    /// check applies it. Ledgers offloaded already stay where they are.
    pub fn set_offload_policy(&self, policy: OffloadPolicy) {
        let mut current = self
            .offload
            .policy
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if **current != policy {
            info!(ml = %self.shared.name, ?policy, "offload policy changed");
            *current = Arc::new(policy);
            self.shared.offload_check.store(true, Ordering::Release);
            self.shared.timers.due_at(self.shared.clock.now_ms());
        }
    }

    /// Starts offloading every closed ledger before the one holding `up_to` (Pulsar's
    /// `PUT .../offload`); returns once the run started. Refused while a run is in progress.
    pub fn offload_up_to(self: &Arc<Self>, up_to: Position) -> MlResult<()> {
        self.offloader()?;
        let candidates: Vec<LedgerId> = {
            let st = self.shared.state();
            st.ledgers
                .iter()
                .filter(|l| l.ledger_id < up_to.ledger && Self::offloadable_given(l, st.current))
                .map(|l| l.ledger_id)
                .collect()
        };
        self.start_run(candidates, true)
    }

    /// The automatic trigger (the factory's periodic task): offloads what the size and time
    /// thresholds select, and deletes bookie copies whose deletion lag has passed.
    pub(crate) fn offload_due(self: &Arc<Self>) {
        let policy = self.offload.policy();
        let nothing_to_check =
            policy.threshold_bytes < 0 && policy.threshold_ms < 0 && policy.deletion_lag_ms < 0;
        if self.offloader.is_none()
            || nothing_to_check
            || self.offload.running.load(Ordering::Acquire)
        {
            return;
        }
        let now = self.shared.clock.now_ms();
        // One pass under the state lock, no copy of the list (a topic may hold 100,000 ledgers
        // and this runs at every rollover).
        let (chosen, lagged) = {
            let st = self.shared.state();
            let offloadable = |l: &LedgerInfo| Self::offloadable_given(l, st.current);
            let mut chosen = Vec::new();
            // Size: keep at most `threshold` bytes on the bookies, newest first.
            if policy.threshold_bytes >= 0 {
                let mut kept = 0u64;
                for l in st.ledgers.iter().rev().filter(|l| l.offloaded().is_none()) {
                    kept += l.size_bytes;
                    if kept > policy.threshold_bytes as u64 && offloadable(l) {
                        chosen.push(l.ledger_id);
                    }
                }
            }
            // Time: closed ledgers older than the threshold.
            if policy.threshold_ms >= 0 {
                chosen.extend(
                    st.ledgers
                        .iter()
                        .filter(|l| {
                            let closed = l.closed_ms.unwrap_or(l.created_ms);
                            offloadable(l)
                                && now.saturating_sub(closed) >= policy.threshold_ms as u64
                        })
                        .map(|l| l.ledger_id),
                );
            }
            chosen.sort_unstable();
            chosen.dedup();
            let lagged = st
                .ledgers
                .iter()
                .any(|l| Self::bookie_copy_due(l, policy.deletion_lag_ms, now));
            (chosen, lagged)
        };
        if !chosen.is_empty() || lagged {
            let _ = self.start_run(chosen, false);
        }
    }

    /// Closed, not the ledger being written, not offloaded yet, holding entries.
    fn offloadable(&self, l: &LedgerInfo) -> bool {
        Self::offloadable_given(l, self.shared.state().current)
    }

    fn offloadable_given(l: &LedgerInfo, current: Option<LedgerId>) -> bool {
        l.state == LedgerRecordState::Closed
            && l.offloaded().is_none()
            && l.entries > 0
            && current != Some(l.ledger_id)
    }

    fn bookie_copy_due(l: &LedgerInfo, lag: i64, now: u64) -> bool {
        l.offloaded().is_some_and(|o| {
            !o.bookies_deleted
                && lag >= 0
                && now.saturating_sub(o.completed_ms.unwrap_or(now)) >= lag as u64
        })
    }

    fn start_run(self: &Arc<Self>, ledgers: Vec<LedgerId>, manual: bool) -> MlResult<()> {
        if self
            .offload
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ManagedLedgerError::InvalidState(format!(
                "an offload of {} is already in progress",
                self.shared.name
            )));
        }
        if manual || !ledgers.is_empty() {
            self.offload.set(OffloadStatus {
                status: OffloadRun::Running,
                last_error: String::new(),
                first_unoffloaded: None,
            });
        }
        let ml = Arc::clone(self);
        let span = info_span!("offload", ml = %self.shared.name);
        tokio::spawn(
            async move {
                let result = ml.run(&ledgers).await;
                let first_unoffloaded =
                    ml.ledgers()
                        .iter()
                        .find(|l| l.offloaded().is_none())
                        .map(|l| Position {
                            ledger: l.ledger_id,
                            entry: magnetar_metadata::EntryId(0),
                        });
                if manual || !ledgers.is_empty() {
                    ml.offload.set(match &result {
                        Ok(()) => OffloadStatus {
                            status: OffloadRun::Success,
                            last_error: String::new(),
                            first_unoffloaded,
                        },
                        Err(e) => OffloadStatus {
                            status: OffloadRun::Error,
                            last_error: e.to_string(),
                            first_unoffloaded,
                        },
                    });
                }
                ml.offload.running.store(false, Ordering::Release);
            }
            .instrument(span),
        );
        Ok(())
    }

    async fn run(self: &Arc<Self>, ledgers: &[LedgerId]) -> MlResult<()> {
        let offloader = Arc::clone(self.offloader()?);
        let mut first_err = None;
        for &id in ledgers {
            if self.shared.status() != crate::read::Status::Open {
                break;
            }
            let result = {
                let _permit = offloader
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| ManagedLedgerError::Closed(self.shared.name.clone()))?;
                self.offload_ledger(&offloader, id).await
            };
            if let Err(e) = result {
                offloader
                    .counters
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(ledger = %id, error = %e, "offload failed; the bookies keep the ledger");
                first_err.get_or_insert(e);
            }
        }
        self.delete_lagged_bookie_copies().await;
        first_err.map_or(Ok(()), Err)
    }

    async fn update_ledger(&self, ledger: LedgerId, update: LedgerUpdate) -> MlResult<LedgerInfo> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Box::new(Command::UpdateLedger {
                ledger,
                update,
                done,
            }))
            .await
            .map_err(|_| ManagedLedgerError::Closed(self.shared.name.clone()))?;
        rx.await
            .map_err(|_| ManagedLedgerError::Closed(self.shared.name.clone()))?
    }

    /// Offloads one closed ledger (the protocol in the module doc).
    async fn offload_ledger(&self, offloader: &Offloader, id: LedgerId) -> MlResult<()> {
        let name = self.shared.name.clone();
        let Some(info) = self.ledgers().into_iter().find(|l| l.ledger_id == id) else {
            return Ok(()); // trimmed meanwhile
        };
        if !self.offloadable(&info) {
            return Ok(());
        }
        let target = offloader
            .targets
            .for_config(self.offload.policy().driver.as_ref())?;
        let store = target.store();
        let uid = offloader.new_uid();
        let now = self.shared.clock.now_ms();
        let at = store.location();
        let state = OffloadState {
            uid: uid.clone(),
            driver: store.driver().to_owned(),
            bucket: store.bucket().to_owned(),
            region: at.region.clone(),
            service_endpoint: at.service_endpoint.clone(),
            prefix: Some(at.prefix.clone()),
            began_ms: now,
            complete: false,
            completed_ms: None,
            bookies_deleted: false,
        };
        // 1. Begin.
        let previous = info.offload.clone();
        self.update_ledger(
            id,
            Box::new(move |l: &mut LedgerInfo| {
                if l.offloaded().is_some() {
                    return Err(ManagedLedgerError::InvalidState(format!(
                        "ledger {} is offloaded already",
                        l.ledger_id
                    )));
                }
                l.offload = Some(state);
                Ok(())
            }),
        )
        .await?;
        if let Some(prev) = previous
            && let Ok(old_target) = offloader.target_of(&prev)
        {
            // A crashed or failed attempt: its objects are nobody's now.
            let old_store = old_target.store();
            let old = ObjectNames::new(old_store.prefix(), &name, id, &prev.uid);
            for path in [&old.data, &old.index] {
                let _ = old_store.delete(path).await;
            }
        }
        let names = ObjectNames::new(store.prefix(), &name, id, &uid);
        info!(ledger = %id, attempt = %uid, entries = info.entries, bytes = info.size_bytes,
            "offloading ledger");
        // 2. Upload and verify.
        let uploaded = async {
            let source = self.bookie_entries(id, info.entries).await?;
            let up = magnetar_offload::upload_ledger(
                store,
                &names,
                id,
                info.entries,
                info.size_bytes,
                source,
                offloader.upload,
            )
            .await?;
            magnetar_offload::verify(store, &names, &up.index).await?;
            magnetar_metadata::crash_point::reached(
                magnetar_metadata::crash_point::OFFLOAD_UPLOADED,
            );
            if up.index.payload_bytes != info.size_bytes {
                return Err(ManagedLedgerError::InvalidState(format!(
                    "ledger {id}: {} bytes uploaded, the record says {}",
                    up.index.payload_bytes, info.size_bytes
                )));
            }
            Ok::<_, ManagedLedgerError>(())
        }
        .await;
        // 3. Complete.
        let completed = match uploaded {
            Ok(()) => {
                let uid = uid.clone();
                let now = self.shared.clock.now_ms();
                self.update_ledger(
                    id,
                    Box::new(move |l: &mut LedgerInfo| match &mut l.offload {
                        Some(o) if o.uid == uid => {
                            o.complete = true;
                            o.completed_ms = Some(now);
                            Ok(())
                        }
                        _ => Err(ManagedLedgerError::InvalidState(format!(
                            "offload attempt {uid} of ledger {} was superseded",
                            l.ledger_id
                        ))),
                    }),
                )
                .await
                .map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = completed {
            for path in [&names.data, &names.index] {
                let _ = store.delete(path).await;
            }
            return Err(e);
        }
        // Reads of this ledger go to object storage from now on.
        self.shared.forget_reader(id);
        info!(ledger = %id, attempt = %uid, to = %store.location().bucket, "ledger offloaded");
        let c = &offloader.counters;
        c.ledgers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.bytes
            .fetch_add(info.size_bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The ledger's entries from the bookies, in order, read in batches.
    async fn bookie_entries(
        &self,
        id: LedgerId,
        entries: u64,
    ) -> MlResult<
        impl futures::Stream<Item = magnetar_offload::OffloadResult<(u64, Bytes)>> + Send + use<>,
    > {
        let reader = Arc::new(open_reader(&self.shared.client, id).await?);
        let batches = futures::stream::unfold(0u64, move |next| {
            let reader = Arc::clone(&reader);
            async move {
                if next >= entries {
                    return None;
                }
                let last = (next + READ_BATCH_ENTRIES - 1).min(entries - 1);
                let batch = reader
                    .read_range(next, last)
                    .await
                    .map(|es| {
                        es.into_iter()
                            .map(|e| Ok((e.entry.0, e.payload)))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_else(|e| {
                        vec![Err(magnetar_offload::OffloadError::Source(format!(
                            "ledger {id} entries {next}..={last}: {e}"
                        )))]
                    });
                Some((futures::stream::iter(batch), last + 1))
            }
        });
        Ok(batches.flatten())
    }

    /// Deletes the bookies' copy of offloaded ledgers whose deletion lag has passed.
    async fn delete_lagged_bookie_copies(&self) {
        let now = self.shared.clock.now_ms();
        let lag = self.offload.policy().deletion_lag_ms;
        let due: Vec<LedgerInfo> = self
            .ledgers()
            .into_iter()
            .filter(|l| Self::bookie_copy_due(l, lag, now))
            .collect();
        for l in due {
            let id = l.ledger_id;
            self.shared.forget_reader(id);
            match delete_bookie_copy(&self.shared.client, id).await {
                Ok(()) => {}
                Err(e) => {
                    warn!(ledger = %id, error = %e, "deleting the bookies' copy of an offloaded ledger failed; retried later");
                    continue;
                }
            }
            let marked = self
                .update_ledger(
                    id,
                    Box::new(|l: &mut LedgerInfo| {
                        if let Some(o) = &mut l.offload {
                            o.bookies_deleted = true;
                        }
                        l.location = LedgerLocation::Offloaded;
                        Ok(())
                    }),
                )
                .await;
            match marked {
                Ok(_) => info!(ledger = %id, "bookies' copy of an offloaded ledger deleted"),
                Err(e) => warn!(ledger = %id, error = %e, "recording a deleted bookie copy failed"),
            }
        }
    }
}

async fn open_reader(
    client: &LedgerClient,
    ledger: LedgerId,
) -> MlResult<magnetar_bookie::client::LedgerReader> {
    let client = client.clone();
    let opening: futures::future::BoxFuture<'static, _> =
        Box::pin(async move { client.open_ledger(ledger).await });
    Ok(opening.await?)
}

async fn delete_bookie_copy(client: &LedgerClient, ledger: LedgerId) -> MlResult<()> {
    let client = client.clone();
    let deleting: futures::future::BoxFuture<'static, _> =
        Box::pin(async move { client.delete_ledger(ledger).await });
    match deleting.await {
        Ok(()) | Err(magnetar_bookie::client::LedgerError::NoSuchLedger(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What one pass of the cleaner did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub objects_seen: usize,
    pub objects_deleted: usize,
}

/// The cleaner: deletes objects under the offload prefix that no managed-ledger record
/// references — those of failed or crashed attempts, of trimmed ledgers and deleted topics
/// whose deletion did not finish — once older than `grace_ms`.
///
/// Objects are listed *before* the records are read: an attempt's id is recorded before its
/// first upload, so an object that exists when the listing is taken and is absent from a
/// record read afterwards belongs to no attempt that can still complete. The grace period is a
/// second guard (clock skew between brokers and the store, slow listings).
///
/// Every store in use is scanned: the cluster's and those policies named since start-up.
pub async fn clean_orphans(
    offloader: &Offloader,
    metadata: &Arc<dyn magnetar_metadata::MetadataStore>,
    grace_ms: u64,
    now_ms: u64,
) -> MlResult<CleanReport> {
    let mut report = CleanReport::default();
    let mut first_err = None;
    for target in offloader.targets.all() {
        match clean_store(target.store(), metadata, grace_ms, now_ms).await {
            Ok(r) => {
                report.objects_seen += r.objects_seen;
                report.objects_deleted += r.objects_deleted;
            }
            Err(e) => {
                warn!(driver = target.store().driver(), bucket = target.store().bucket(),
                    error = %e, "offload cleaner: a store failed; the others are cleaned");
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(report), Err)
}

async fn clean_store(
    store: &OffloadStore,
    metadata: &Arc<dyn magnetar_metadata::MetadataStore>,
    grace_ms: u64,
    now_ms: u64,
) -> MlResult<CleanReport> {
    let prefix = store.prefix().clone();
    let listed = store.list(&prefix).await?;
    let mut report = CleanReport {
        objects_seen: listed.len(),
        ..CleanReport::default()
    };
    // managed ledger → its objects' (ledger, attempt, path).
    let mut by_ml: std::collections::BTreeMap<
        String,
        Vec<(u64, String, object_store::path::Path)>,
    > = std::collections::BTreeMap::new();
    for meta in listed {
        let age_ms = now_ms.saturating_sub(meta.last_modified.timestamp_millis().max(0) as u64);
        if age_ms < grace_ms {
            continue;
        }
        let Some((ml, ledger, attempt)) = parse_object(&prefix, &meta.location) else {
            continue; // not one of ours: left alone
        };
        by_ml
            .entry(ml)
            .or_default()
            .push((ledger, attempt, meta.location));
    }
    for (ml, objects) in by_ml {
        let record = crate::ledger_list::LedgerList::new(Arc::clone(metadata), &ml)
            .load()
            .await?;
        let referenced: std::collections::HashSet<(u64, String)> = record
            .map(|(r, _)| {
                r.ledgers
                    .iter()
                    .filter_map(|l| l.offload.as_ref().map(|o| (l.ledger_id.0, o.uid.clone())))
                    .collect()
            })
            .unwrap_or_default();
        for (ledger, attempt, path) in objects {
            if referenced.contains(&(ledger, attempt)) {
                continue;
            }
            store.delete(&path).await?;
            report.objects_deleted += 1;
            info!(object = %path, "cleaner deleted an unreferenced offload object");
        }
    }
    Ok(report)
}

/// `{prefix}/{managed ledger…}/{ledger}/{attempt}.data|.index` → its three parts.
fn parse_object(
    prefix: &object_store::path::Path,
    path: &object_store::path::Path,
) -> Option<(String, u64, String)> {
    let mut parts: Vec<String> = path
        .prefix_match(prefix)?
        .map(|p| p.as_ref().to_owned())
        .collect();
    let file = parts.pop()?;
    let ledger: u64 = parts.pop()?.parse().ok()?;
    let attempt = file
        .strip_suffix(".data")
        .or_else(|| file.strip_suffix(".index"))?
        .to_owned();
    if parts.is_empty() {
        return None;
    }
    Some((parts.join("/"), ledger, attempt))
}
