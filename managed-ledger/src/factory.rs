//! [`ManagedLedgerFactory`]: opens managed ledgers — recovery of the previous owner's last
//! ledger (fenced and closed through the ledger client), a new ledger recorded with one CAS,
//! the write actor started — and the helpers the writer shares (create, recover and delete
//! ledgers). The periodic retention check of everything a factory opened is one task
//! (`retention`), started with the first open.
//!
//! Opening the same name twice returns the same instance (one `OnceCell` per name), so
//! concurrent loads of one topic share one recovery.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use magnetar_bookie::client::{
    LedgerClient, LedgerConfig, LedgerError, LedgerReader, LedgerWriter,
};
use magnetar_metadata::clock::SharedClock;
use magnetar_metadata::{EntryId, Expected, LedgerId, MetadataStore, PutOutcome};
use tokio::sync::OnceCell;
use tracing::{Instrument, info, info_span, warn};

use crate::Position;
use crate::cache::EntryCache;
use crate::config::ManagedLedgerConfig;
use crate::error::{ManagedLedgerError, MlResult};
use crate::ledger::ManagedLedger;
use crate::ledger_list::LedgerList;
use crate::offload::Offloader;
use crate::read::{Shared, State, Status};
use crate::record::{LedgerInfo, LedgerLocation, LedgerRecordState, ManagedLedgerRecord};
use crate::source::{BookieSources, LedgerSources};

/// Opens managed ledgers over one metadata store, one ledger client, one entry cache and one
/// choice of read sources (all shared by every topic of the broker). Opening the same name
/// twice returns the same instance.
#[derive(Debug)]
pub struct ManagedLedgerFactory {
    metadata: Arc<dyn MetadataStore>,
    client: LedgerClient,
    clock: SharedClock,
    sources: Arc<dyn LedgerSources>,
    cache: Arc<dyn EntryCache>,
    /// Managed ledgers open here, by name. A managed ledger removes itself when it closes, so
    /// a broker that served many topics over time holds only those it serves now.
    open: Arc<OpenMap>,
    /// Wakes the retention task when a managed ledger opens; the task starts with the first.
    retention_timers: Arc<crate::retention::Timers>,
    retention_started: std::sync::Once,
    /// Tiered storage, when the broker configures an offload driver.
    offloader: Option<Arc<Offloader>>,
    /// Ledgers created ahead of their managed ledger's open (see [`Self::prepare`]).
    prepared: Arc<crate::prepared::PreparedLedgers>,
    /// Opens that wrote to a prepared ledger.
    prepared_used: AtomicU64,
}

/// One cell per name, so concurrent opens of a name share one recovery.
pub(crate) type OpenMap = Mutex<HashMap<String, Arc<OnceCell<Arc<ManagedLedger>>>>>;

/// Removes `ml` from the map it was opened through, if it is still the instance there.
pub(crate) fn forget(map: &std::sync::Weak<OpenMap>, ml: &ManagedLedger) {
    let Some(map) = map.upgrade() else { return };
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    let name = &ml.shared.name;
    if map
        .get(name)
        .and_then(|c| c.get())
        .is_some_and(|open| std::ptr::eq(Arc::as_ptr(open), ml))
    {
        map.remove(name);
    }
}

impl ManagedLedgerFactory {
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        client: LedgerClient,
        cache: Arc<dyn EntryCache>,
    ) -> Self {
        ManagedLedgerFactory {
            metadata,
            sources: BookieSources::new(client.clone()),
            clock: magnetar_metadata::clock::system(),
            client,
            cache,
            open: Arc::new(Mutex::new(HashMap::new())),
            retention_timers: Arc::new(crate::retention::Timers::new()),
            retention_started: std::sync::Once::new(),
            offloader: None,
            prepared: Arc::default(),
            prepared_used: AtomicU64::new(0),
        }
    }

    /// Times everything (timestamps, rollover, retention, flushes) on `clock`.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Reads ledgers through `sources` instead of from the bookies alone (e.g. object storage
    /// for offloaded ledgers).
    pub fn with_sources(mut self, sources: Arc<dyn LedgerSources>) -> Self {
        self.sources = sources;
        self
    }

    /// Offloads closed ledgers through `offloader` (by policy and on request), and reads
    /// offloaded ledgers from its store.
    pub fn with_offloader(mut self, offloader: Arc<Offloader>) -> Self {
        self.sources = BookieSources::with_offload(self.client.clone(), offloader.targets());
        self.offloader = Some(offloader);
        self
    }

    pub fn offloader(&self) -> Option<&Arc<Offloader>> {
        self.offloader.as_ref()
    }

    pub fn cache(&self) -> &Arc<dyn EntryCache> {
        &self.cache
    }

    fn cells(&self) -> MutexGuard<'_, HashMap<String, Arc<OnceCell<Arc<ManagedLedger>>>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Managed ledgers open here now.
    pub fn open_count(&self) -> usize {
        self.cells().values().filter(|c| c.get().is_some()).count()
    }

    /// Creates the next ledger of `name` ahead of its open here (a bundle about to be taken
    /// over, while its owner still serves it): the open then uses it instead of creating one,
    /// if its configuration is the same and it is newer than every ledger listed by then.
    /// Nothing is done for a managed ledger open here already. A ledger nobody opens must be
    /// given up with [`Self::discard_prepared`]. The id of the ledger kept, if one was.
    pub async fn prepare(
        &self,
        name: &str,
        config: &ManagedLedgerConfig,
    ) -> MlResult<Option<LedgerId>> {
        validate_name(name)?;
        config.validate()?;
        if self.cells().get(name).is_some_and(|c| c.get().is_some()) {
            return Ok(None);
        }
        let ledger_config = config.ledger_config(name);
        let writer = create_ledger(&self.client, ledger_config.clone()).await?;
        let id = writer.id();
        if let Err(writer) = self.prepared.insert(name, ledger_config, writer) {
            delete_ledger(&self.client, writer.id()).await?;
            return Ok(None);
        }
        Ok(Some(id))
    }

    /// Deletes the ledgers prepared for `names` that no open used.
    pub async fn discard_prepared(&self, names: &[String]) {
        let unused: Vec<LedgerId> = names
            .iter()
            .filter_map(|n| self.prepared.take(n))
            .map(|(_, w)| w.id())
            .collect();
        for id in unused {
            if let Err(e) = delete_ledger(&self.client, id).await {
                warn!(ledger = %id, error = %e, "could not delete an unused prepared ledger");
            }
        }
    }

    /// Tells the next open of `name` the length of a ledger its previous owner sealed (a
    /// handover carries it): if the managed-ledger record still lists that ledger open, the
    /// open takes the length from here instead of the ledger's metadata. Always safe: a closed
    /// ledger's length never changes, and a hint for any other ledger is ignored.
    pub fn hint_sealed(&self, name: &str, sealed: crate::prepared::SealedLedger) {
        self.prepared.hint_sealed(name, sealed);
    }

    /// Forgets the sealed-ledger hints of `names` that no open used.
    pub fn discard_hints(&self, names: &[String]) {
        for n in names {
            self.prepared.take_sealed(n);
        }
    }

    /// Sealed-ledger hints not yet used or discarded.
    pub fn sealed_hint_count(&self) -> usize {
        self.prepared.sealed_count()
    }

    /// Ledgers prepared and not yet used or discarded.
    pub fn prepared_count(&self) -> usize {
        self.prepared.len()
    }

    /// Opens here that wrote to a ledger prepared for them.
    pub fn prepared_used_count(&self) -> u64 {
        self.prepared_used
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens (recovering if needed) the managed ledger `name`, e.g. `tenant/ns/persistent/topic`.
    /// An instance already open here and still usable is returned as is.
    pub async fn open(
        &self,
        name: &str,
        config: ManagedLedgerConfig,
    ) -> MlResult<Arc<ManagedLedger>> {
        validate_name(name)?;
        config.validate()?;
        let cell = {
            let mut cells = self.cells();
            let cell = cells.entry(name.to_owned()).or_default();
            if cell
                .get()
                .is_some_and(|ml| ml.shared.status() != Status::Open)
            {
                *cell = Arc::default();
            }
            Arc::clone(cell)
        };
        let mut prepared_id = None;
        let ml = cell
            .get_or_try_init(|| {
                let prepared = match self.prepared.take(name) {
                    Some((made_with, writer)) if made_with == config.ledger_config(name) => {
                        prepared_id = Some(writer.id());
                        Some(writer)
                    }
                    Some((_, other)) => {
                        let delete = delete_ledger(&self.client, other.id());
                        tokio::spawn(async move { drop(delete.await) });
                        None
                    }
                    None => None,
                };
                let sealed = self.prepared.take_sealed(name);
                open_managed_ledger(
                    Arc::downgrade(&self.open),
                    Arc::clone(&self.retention_timers),
                    Arc::clone(&self.metadata),
                    self.client.clone(),
                    Arc::clone(&self.clock),
                    Arc::clone(&self.sources),
                    Arc::clone(&self.cache),
                    self.offloader.clone(),
                    name.to_owned(),
                    config,
                    prepared,
                    sealed,
                )
                .instrument(info_span!("ml_open", ml = %name))
            })
            .await?;
        if prepared_id.is_some() && ml.ledgers().last().map(|l| l.ledger_id) == prepared_id {
            self.prepared_used
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.retention_started.call_once(|| {
            crate::retention::spawn(
                Arc::downgrade(&self.open),
                Arc::clone(&self.clock),
                Arc::clone(&self.retention_timers),
            );
        });
        self.retention_timers
            .due_at(ml.next_trim_ms.load(std::sync::atomic::Ordering::Acquire));
        Ok(Arc::clone(ml))
    }
}

/// Names must be clean key paths. A cursor record lives at `{name}/cursors/{cursor}` (cursor
/// names have no `/`) and a ledger-list chunk at `{name}/ledgers/{chunk}`, so only a name whose
/// second-to-last part is `cursors` or `ledgers` could collide with another ledger's keys; a
/// topic, tenant or namespace called so is fine.
fn validate_name(name: &str) -> MlResult<()> {
    let parts: Vec<&str> = name.split('/').collect();
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && !name.contains('\0')
        && !parts.iter().any(|c| *c == "." || *c == "..")
        && !(parts.len() >= 2 && matches!(parts[parts.len() - 2], "cursors" | "ledgers"));
    if ok {
        Ok(())
    } else {
        Err(ManagedLedgerError::InvalidName(name.to_owned()))
    }
}

#[allow(clippy::too_many_arguments)]
async fn open_managed_ledger(
    registry: std::sync::Weak<OpenMap>,
    timers: Arc<crate::retention::Timers>,
    metadata: Arc<dyn MetadataStore>,
    client: LedgerClient,
    clock: SharedClock,
    sources: Arc<dyn LedgerSources>,
    cache: Arc<dyn EntryCache>,
    offloader: Option<Arc<Offloader>>,
    name: String,
    config: ManagedLedgerConfig,
    prepared: Option<LedgerWriter>,
    sealed: Option<crate::prepared::SealedLedger>,
) -> MlResult<Arc<ManagedLedger>> {
    let mut list = LedgerList::new(Arc::clone(&metadata), &name);
    // The new ledger does not depend on the list: it is created while the list is read and
    // the previous owner's ledger recovered (a takeover opens every topic of a bundle here).
    let read_and_recover = async {
        let (mut record, expected) = match list.load().await? {
            Some((r, v)) => (r, Expected::Version(v)),
            None => (
                ManagedLedgerRecord {
                    created_ms: clock.now_ms(),
                    ..Default::default()
                },
                Expected::Absent,
            ),
        };
        // Recovery: the previous owner's open ledger is fenced and closed, and its length
        // recorded — or, when the previous owner sealed it and said so, only recorded.
        for info in record.ledgers.iter_mut() {
            if info.state == LedgerRecordState::Open
                && let Some(s) = sealed.filter(|s| s.ledger == info.ledger_id)
            {
                info.entries = s.entries;
                info.size_bytes = s.size_bytes;
                info.state = LedgerRecordState::Closed;
                info.closed_ms = Some(clock.now_ms());
                continue;
            }
            if info.state == LedgerRecordState::Open {
                let reader = recover_ledger(&client, info.ledger_id).await?;
                let meta = reader.metadata();
                info.entries = u64::try_from(meta.last_entry_id + 1).unwrap_or(0);
                info.size_bytes = meta.length_bytes;
                info.state = LedgerRecordState::Closed;
                info.closed_ms = Some(clock.now_ms());
                info!(ledger = %info.ledger_id, entries = info.entries, "recovered the last ledger");
            }
        }
        MlResult::Ok((record, expected))
    };
    // The cursors are listed in the same round: a claim of a record that changed after the
    // listing conflicts and reads it again, as it would had the listing come later.
    let create = async {
        match prepared {
            Some(writer) => Ok(writer),
            None => create_ledger(&client, config.ledger_config(&name)).await,
        }
    };
    let (read, writer, cursors, chunks) = futures::join!(
        read_and_recover,
        create,
        crate::ledger::list_cursors(&metadata, &name),
        crate::ledger_list::list_chunk_keys(&metadata, &name)
    );
    let (mut record, expected) = match read {
        Ok(r) => r,
        Err(e) => {
            if let Ok(w) = &writer {
                let _ = delete_ledger(&client, w.id()).await;
            }
            return Err(e);
        }
    };
    // Positions order by ledger id: a ledger made before the previous owner's last rollover
    // (a prepared one) would put new entries behind old ones. Replaced by a new ledger.
    let writer = match writer {
        Ok(w) if record.ledgers.iter().any(|l| l.ledger_id >= w.id()) => {
            info!(ledger = %w.id(), "a prepared ledger predates the last one listed; creating another");
            let stale = delete_ledger(&client, w.id());
            tokio::spawn(async move { drop(stale.await) });
            create_ledger(&client, config.ledger_config(&name)).await
        }
        other => other,
    };
    let empty: Vec<LedgerId> = record
        .ledgers
        .iter()
        .filter(|l| l.entries == 0)
        .map(|l| l.ledger_id)
        .collect();
    record.ledgers.retain(|l| l.entries > 0);
    // No writable ledger (too few writable bookies) does not stop the topic from loading: its
    // history stays readable and the write actor keeps trying, with backoff.
    let writer = match writer {
        Ok(w) => Ok(w),
        Err(e) if is_unavailable(&e) => {
            warn!(error = %e, "no ledger can be created now: open for reading, writes wait");
            Err(e)
        }
        Err(e) => return Err(e.into()),
    };
    if let Ok(w) = &writer {
        record.ledgers.push(open_info(w.id(), clock.now_ms()));
    }
    // The cursors are claimed beside the head write (see `claim_listed`).
    let claims = async {
        match cursors {
            Ok(listing) => crate::ledger::claim_listed(&metadata, &name, &*clock, listing).await,
            Err(e) => Err(e),
        }
    };
    let (written, claims) = futures::join!(list.write(&record, expected), claims);
    let version = match written {
        Ok(PutOutcome::Written(v)) => v,
        Ok(PutOutcome::Conflict { .. }) => {
            if let Ok(w) = &writer {
                let _ = delete_ledger(&client, w.id()).await;
            }
            return Err(ManagedLedgerError::BadVersion { name });
        }
        Err(e) => return Err(e),
    };
    let current = writer.as_ref().ok().map(LedgerWriter::id);
    info!(ledger = ?current, ledgers = record.ledgers.len(), "managed ledger open");
    // Our head write fenced every earlier writer's: chunks listed before it that it does not
    // refer to are garbage, as are the empty ledgers it dropped. Collected in the background:
    // a takeover opens a bundle's topics while their clients wait.
    let orphans = match &chunks {
        Ok(listed) => list.orphans(listed),
        Err(e) => {
            warn!(error = %e, "could not list the ledger-list chunks to collect orphans");
            Vec::new()
        }
    };
    let collect_client = client.clone();
    let collect_store = Arc::clone(&metadata);
    tokio::spawn(
        async move {
            crate::ledger_list::delete_chunk_keys(collect_store, orphans).await;
            for id in empty {
                if let Err(e) = delete_ledger(&collect_client, id).await {
                    warn!(ledger = %id, error = %e, "could not delete an empty ledger");
                }
            }
        }
        .instrument(info_span!("ml_collect", ml = %name)),
    );
    let last_confirmed = record
        .ledgers
        .iter()
        .rev()
        .find(|l| l.entries > 0)
        .map(|l| Position {
            ledger: l.ledger_id,
            entry: EntryId(l.entries - 1),
        });
    let state = State {
        ledgers: record.ledgers.clone(),
        current,
        last_confirmed,
        tail: VecDeque::new(),
        status: Status::Open,
        entries_added: 0,
        unwritable: writer.as_ref().err().map(ToString::to_string),
        properties: record.properties.clone(),
    };
    let opened_ms = clock.now_ms();
    let shared = Shared::new(
        name.clone(),
        config.clone(),
        client,
        clock,
        sources,
        cache,
        state,
        timers,
    );
    let commands = crate::writer::spawn(Arc::clone(&shared), list, record, version, writer);
    let ml = Arc::new(ManagedLedger {
        shared,
        commands,
        metadata: Arc::clone(&metadata),
        cursors: Mutex::new(BTreeMap::new()),
        registry,
        next_trim_ms: AtomicU64::new(opened_ms + config.retention_check_interval_ms.max(10)),
        offloader,
        offload: crate::offload::OffloadSlot::new(crate::offload::OffloadPolicy::of(&config)),
    });
    ml.load_cursors(claims?).await?;
    Ok(ml)
}

/// Failures that mean "no bookies to write to right now", as opposed to broken metadata.
fn is_unavailable(e: &LedgerError) -> bool {
    matches!(
        e,
        LedgerError::NotEnoughBookies { .. }
            | LedgerError::Bookie { .. }
            | LedgerError::Timeout { .. }
            | LedgerError::NotEnoughReplicas { .. }
    )
}

// The ledger client's futures are boxed here with `Send` checked at a concrete lifetime: awaited
// directly inside the spawned actor they trip the compiler's higher-ranked `Send` inference.
pub(crate) fn create_ledger(
    client: &LedgerClient,
    config: LedgerConfig,
) -> BoxFuture<'static, Result<LedgerWriter, LedgerError>> {
    let client = client.clone();
    Box::pin(async move { client.create_ledger(config).await })
}

/// Recovers (fences and closes) a ledger another writer may still hold.
pub(crate) async fn recover_ledger(
    client: &LedgerClient,
    id: LedgerId,
) -> Result<LedgerReader, LedgerError> {
    client.open_ledger_with_recovery(id).await
}

pub(crate) fn delete_ledger(
    client: &LedgerClient,
    id: LedgerId,
) -> BoxFuture<'static, Result<(), LedgerError>> {
    let client = client.clone();
    Box::pin(async move { client.delete_ledger(id).await })
}

pub(super) fn open_info(id: LedgerId, now_ms: u64) -> LedgerInfo {
    LedgerInfo {
        ledger_id: id,
        entries: 0,
        size_bytes: 0,
        created_ms: now_ms,
        closed_ms: None,
        state: LedgerRecordState::Open,
        location: LedgerLocation::Bookies,
        offload: None,
    }
}
