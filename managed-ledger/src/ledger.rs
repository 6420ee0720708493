//! [`ManagedLedger`]: the handle of one topic's log — appends (handed to the write actor in
//! [`crate::writer`]), reads across ledgers, cursors, trimming, close and delete, and the
//! stats the admin API shows.
//!
//! The handle is shared by every producer and subscription of the topic; all methods take
//! `&self`. Appends complete strictly in order ([`AppendHandle`]s resolve in append order).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt;
use magnetar_bookie::client::LedgerError;
use magnetar_metadata::clock::Clock;
use magnetar_metadata::{
    EntryId, Expected, LedgerId, MetadataStore, PutOutcome, RecordStore, Version,
};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::Position;
use crate::config::ManagedLedgerConfig;
use crate::cursor::{CursorStats, InitialPosition, ManagedCursor};
use crate::cursor_store::CursorStore;
use crate::error::{ManagedLedgerError, MlResult};
use crate::factory::delete_ledger;
use crate::read::{Shared, Status};
use crate::record::LedgerRecordState;
use crate::record::{CursorRecord, LedgerInfo, cursor_record_key, cursors_prefix};

/// The completion of one append: resolves to the entry's position once it is durable. Handles
/// of one managed ledger resolve in append order.
#[derive(Debug)]
pub struct AppendHandle {
    name: Arc<str>,
    rx: oneshot::Receiver<MlResult<Position>>,
}

impl Future for AppendHandle {
    type Output = MlResult<Position>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let name = Arc::clone(&self.name);
        self.rx
            .poll_unpin(cx)
            .map(|r| r.unwrap_or_else(|_| Err(ManagedLedgerError::Closed(name.to_string()))))
    }
}

pub(super) enum Command {
    Append {
        payload: Bytes,
        done: oneshot::Sender<MlResult<Position>>,
    },
    /// Removes the given ledgers from the record (trim); answers with the ones removed.
    Trim {
        slowest: Option<Position>,
        done: oneshot::Sender<MlResult<Vec<LedgerId>>>,
    },
    /// Completes in-flight appends, closes the current ledger and stops.
    Close { done: oneshot::Sender<MlResult<()>> },
    /// Ends the suspension of appends after a failed write.
    Resume { done: oneshot::Sender<MlResult<()>> },
    /// Sets one property of the managed-ledger record (stored with CAS before answering).
    SetProperty {
        key: String,
        value: String,
        done: oneshot::Sender<MlResult<()>>,
    },
    /// The current ledger's age limit may have passed (sent by the factory's periodic task).
    RollIfAged,
    /// Changes one closed ledger's entry in the record (stored with CAS before answering);
    /// `update` refuses by returning an error, and nothing is written then.
    UpdateLedger {
        ledger: LedgerId,
        update: LedgerUpdate,
        done: oneshot::Sender<MlResult<LedgerInfo>>,
    },
}

/// A change to one ledger's record entry, run by the write actor on its current record.
pub(crate) type LedgerUpdate = Box<dyn FnOnce(&mut LedgerInfo) -> MlResult<()> + Send>;

/// Conflicting writers tolerated while claiming one cursor record at load.
const CURSOR_CLAIM_ATTEMPTS_MAX: u32 = 16;

/// Reads a cursor record and writes it back with compare-and-set, until one write lands (see
/// [`claim_listed`]); `None` when the record does not exist.
async fn claim_cursor(
    store: &RecordStore<CursorRecord>,
    key: &str,
    clock: &dyn Clock,
) -> MlResult<Option<(CursorRecord, Version)>> {
    for attempt in 0..CURSOR_CLAIM_ATTEMPTS_MAX {
        if attempt > 0 {
            let ms = 20u64 << attempt.min(6);
            clock.sleep(std::time::Duration::from_millis(ms)).await;
        }
        let Some((mut record, version)) = store.get(key).await? else {
            return Ok(None);
        };
        record.updated_ms = clock.now_ms();
        match store.put(key, &record, Expected::Version(version)).await {
            Ok(PutOutcome::Written(v)) => return Ok(Some((record, v))),
            Ok(PutOutcome::Conflict { .. }) => continue,
            // Landed or not: the next read tells (a landed claim reads back as ours to claim
            // again, which is harmless).
            Err(e) if e.is_indeterminate() || e.is_retryable() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(magnetar_metadata::MetadataError::Contention {
        key: key.to_owned(),
        attempts: CURSOR_CLAIM_ATTEMPTS_MAX,
    }
    .into())
}

/// A topic's log. Cheap to share (`Arc`); all methods take `&self`.
#[derive(Debug)]
pub struct ManagedLedger {
    pub(crate) shared: Arc<Shared>,
    /// Commands go boxed: an idle topic's channel then holds a block of pointers, not of
    /// 56-byte commands (tokio allocates a channel's first block of 32 slots up front).
    pub(super) commands: crate::writer::Commands,
    pub(super) metadata: Arc<dyn MetadataStore>,
    pub(super) cursors: Mutex<BTreeMap<String, Arc<ManagedCursor>>>,
    /// The factory's map of open managed ledgers, left at close.
    pub(super) registry: std::sync::Weak<crate::factory::OpenMap>,
    /// When the factory's retention task checks this managed ledger next (ms, its clock).
    pub(crate) next_trim_ms: std::sync::atomic::AtomicU64,
    /// Tiered storage of this broker, if configured.
    pub(crate) offloader: Option<Arc<crate::offload::Offloader>>,
    pub(crate) offload: crate::offload::OffloadSlot,
}

/// Summary counters (Pulsar topic stats).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManagedLedgerStats {
    pub entries: u64,
    pub size_bytes: u64,
    pub ledgers: usize,
    pub last_confirmed: Option<Position>,
    pub cursors: BTreeMap<String, CursorStats>,
}

/// Shaped like Pulsar's `PersistentTopicInternalStats` (camelCase JSON).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalStats {
    pub entries_added_counter: u64,
    pub number_of_entries: u64,
    pub total_size: u64,
    pub current_ledger_entries: u64,
    pub current_ledger_size: u64,
    pub last_ledger_created_timestamp: String,
    pub last_confirmed_entry: String,
    pub state: String,
    pub ledgers: Vec<InternalLedgerInfo>,
    pub cursors: BTreeMap<String, InternalCursorStats>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalLedgerInfo {
    pub ledger_id: u64,
    pub entries: u64,
    pub size: u64,
    pub offloaded: bool,
    /// Where an offloaded ledger is (`s3://bucket/prefix`).
    pub offloaded_to: Option<String>,
    /// The bookies no longer hold an offloaded ledger (its deletion lag passed).
    pub bookie_copy_deleted: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalCursorStats {
    pub mark_delete_position: String,
    pub read_position: String,
    pub individually_deleted_messages: String,
    pub number_of_entries_since_first_not_acked_message: u64,
    pub total_non_contiguous_deleted_messages_range: usize,
    pub state: String,
}

impl ManagedLedger {
    /// The clock this managed ledger runs on (its users time their own logic with it).
    pub fn clock(&self) -> &magnetar_metadata::clock::SharedClock {
        &self.shared.clock
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn config(&self) -> &ManagedLedgerConfig {
        &self.shared.config
    }

    /// Stops writing at once, touching no storage: the topic's lease is lost, so another
    /// broker may own this managed ledger already, and anything written now could only
    /// conflict with its records. Appends are refused as fenced; the writer and the cursor
    /// flushers write nothing more (acks not yet flushed are redelivered by the new owner),
    /// and the current ledger is left to the new owner's recovery, which fences and seals it.
    pub fn abandon(&self) {
        let mut st = self.shared.state();
        if st.status == Status::Open {
            st.status = Status::Fenced;
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.shared.status() == Status::Fenced
    }

    fn check_open(&self) -> MlResult<()> {
        match self.shared.status() {
            Status::Open => Ok(()),
            Status::Fenced => Err(ManagedLedgerError::Fenced(self.shared.name.clone())),
            Status::Closed => Err(ManagedLedgerError::Closed(self.shared.name.clone())),
        }
    }

    fn gone(&self) -> ManagedLedgerError {
        match self.shared.status() {
            Status::Fenced => ManagedLedgerError::Fenced(self.shared.name.clone()),
            _ => ManagedLedgerError::Closed(self.shared.name.clone()),
        }
    }

    /// Queues `payload` as the next entry; returns once there is room (backpressure). The
    /// handle resolves to the entry's position when it is durable; handles resolve in order.
    pub async fn append(&self, payload: Bytes) -> MlResult<AppendHandle> {
        self.check_open()?;
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Box::new(Command::Append { payload, done }))
            .await
            .map_err(|_| self.gone())?;
        Ok(AppendHandle {
            name: Arc::from(self.shared.name.as_str()),
            rx,
        })
    }

    /// Appends and waits for the position.
    pub async fn append_wait(&self, payload: Bytes) -> MlResult<Position> {
        self.append(payload).await?.await
    }

    pub fn last_confirmed(&self) -> Option<Position> {
        self.shared.state().last_confirmed
    }

    /// Why appends cannot succeed now (no ledger could be created or the current one failed;
    /// the write actor retries with backoff); `None` while writable.
    pub fn unwritable(&self) -> Option<String> {
        self.shared.state().unwritable.clone()
    }

    /// Follows the last confirmed position (tailing readers wait on `changed()`).
    pub fn subscribe_last_confirmed(&self) -> watch::Receiver<Option<Position>> {
        self.shared.lac_tx.subscribe()
    }

    /// The first position that holds an entry (None: the managed ledger is empty).
    pub fn first_position(&self) -> Option<Position> {
        let st = self.shared.state();
        st.ledgers.iter().find(|l| l.entries > 0).map(|l| Position {
            ledger: l.ledger_id,
            entry: EntryId(0),
        })
    }

    pub fn entries(&self) -> u64 {
        self.shared.state().ledgers.iter().map(|l| l.entries).sum()
    }

    pub fn size_bytes(&self) -> u64 {
        self.shared
            .state()
            .ledgers
            .iter()
            .map(|l| l.size_bytes)
            .sum()
    }

    pub fn ledgers(&self) -> Vec<LedgerInfo> {
        self.shared.state().ledgers.clone()
    }

    /// Up to `max_entries` entries from `from` on (at least one if any, even beyond
    /// `max_bytes`), across ledgers.
    pub async fn read_entries(
        &self,
        from: Position,
        max_entries: usize,
        max_bytes: u64,
    ) -> MlResult<Vec<(Position, Bytes)>> {
        self.shared.read_entries(from, max_entries, max_bytes).await
    }

    fn cursor_map(&self) -> MutexGuard<'_, BTreeMap<String, Arc<ManagedCursor>>> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens every stored cursor from its `claims` (see [`claim_listed`]): a record whose
    /// first claim did not land is read and claimed again now — the caller's head write has
    /// made this the managed ledger's owner, and only an owner claims more than once.
    pub(super) async fn load_cursors(&self, claims: CursorClaims) -> MlResult<()> {
        let store: RecordStore<CursorRecord> = RecordStore::new(Arc::clone(&self.metadata));
        let CursorClaims { names, first } = claims;
        let claims = names.iter().zip(first).map(|(name, first)| {
            let store = store.clone();
            let key = cursor_record_key(&self.shared.name, name);
            let clock = Arc::clone(&self.shared.clock);
            async move {
                match first {
                    FirstClaim::Landed(claimed) => Ok(Some(claimed)),
                    FirstClaim::Again => claim_cursor(&store, &key, &*clock).await,
                }
            }
        });
        let claimed = futures::future::try_join_all(claims).await?;
        let claimed: Vec<(String, CursorRecord, Version)> = names
            .into_iter()
            .zip(claimed)
            .filter_map(|(name, c)| c.map(|(record, version)| (name, record, version)))
            .collect();
        // Recovering each cursor ledger fences a previous owner still appending to it.
        let states = claimed.iter().map(|(name, record, _)| {
            crate::cursor_store::recover_state(&self.shared, name, record.clone())
        });
        let states = futures::future::try_join_all(states).await?;
        for ((name, record, version), state) in claimed.into_iter().zip(states) {
            let cursor_store = CursorStore::new(
                Arc::clone(&self.shared),
                &name,
                store.clone(),
                cursor_record_key(&self.shared.name, &name),
                Some(version),
                record.cursor_ledger,
            );
            let c =
                ManagedCursor::durable(Arc::clone(&self.shared), name.clone(), state, cursor_store);
            self.cursor_map().insert(name, c);
        }
        Ok(())
    }

    /// Where a cursor starting at `initial` starts: the first stored entry (Earliest) or just
    /// past the last confirmed one (Latest).
    pub fn start_position(&self, initial: InitialPosition) -> Position {
        self.initial(initial)
    }

    fn initial(&self, initial: InitialPosition) -> Position {
        let st = self.shared.state();
        match initial {
            InitialPosition::Earliest => st
                .ledgers
                .first()
                .map(|l| Position {
                    ledger: l.ledger_id,
                    entry: EntryId(0),
                })
                .unwrap_or(Position::new(0, 0)),
            InitialPosition::Latest => match (st.last_confirmed, st.current) {
                (Some(p), _) => p.next(),
                (None, Some(c)) => Position {
                    ledger: c,
                    entry: EntryId(0),
                },
                (None, None) => Position::new(0, 0),
            },
        }
    }

    /// The durable cursor `name` (a subscription), created at `initial` if it does not exist;
    /// its state is stored at once so the subscription survives a restart.
    pub async fn open_cursor(
        &self,
        name: &str,
        initial: InitialPosition,
    ) -> MlResult<Arc<ManagedCursor>> {
        self.check_open()?;
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(ManagedLedgerError::InvalidName(name.to_owned()));
        }
        if let Some(c) = self.cursor_map().get(name) {
            return Ok(Arc::clone(c));
        }
        let record = CursorRecord {
            first_unacked: self.initial(initial),
            acked_ranges: Vec::new(),
            properties: BTreeMap::new(),
            updated_ms: self.shared.clock.now_ms(),
            batch_acks: Vec::new(),
            cursor_ledger: None,
        };
        let store: RecordStore<CursorRecord> = RecordStore::new(Arc::clone(&self.metadata));
        let key = cursor_record_key(&self.shared.name, name);
        let (record, version) = match store.create(&key, &record).await? {
            PutOutcome::Written(v) => (record, v),
            // Created meanwhile (by this broker racing itself): use what is stored.
            PutOutcome::Conflict { .. } => match store.get(&key).await? {
                Some(rv) => rv,
                None => (record, Version::ZERO),
            },
        };
        let version = (version != Version::ZERO).then_some(version);
        let mut map = self.cursor_map();
        let c = map.entry(name.to_owned()).or_insert_with(|| {
            let cursor_store = CursorStore::new(
                Arc::clone(&self.shared),
                name,
                store.clone(),
                key.clone(),
                version,
                record.cursor_ledger,
            );
            ManagedCursor::durable(
                Arc::clone(&self.shared),
                name.to_owned(),
                record,
                cursor_store,
            )
        });
        Ok(Arc::clone(c))
    }

    /// A cursor that is neither stored nor counted for retention (Pulsar readers).
    pub fn new_non_durable_cursor(&self, start: InitialPosition) -> Arc<ManagedCursor> {
        ManagedCursor::non_durable(Arc::clone(&self.shared), self.initial(start))
    }

    /// A non-durable cursor reading from `start` on.
    pub fn new_non_durable_cursor_at(&self, start: Position) -> Arc<ManagedCursor> {
        ManagedCursor::non_durable(Arc::clone(&self.shared), start)
    }

    pub fn cursor(&self, name: &str) -> Option<Arc<ManagedCursor>> {
        self.cursor_map().get(name).cloned()
    }

    pub fn cursor_names(&self) -> Vec<String> {
        self.cursor_map().keys().cloned().collect()
    }

    /// Removes the durable cursor and its record (unsubscribe).
    pub async fn delete_cursor(&self, name: &str) -> MlResult<()> {
        let Some(c) = self.cursor_map().remove(name) else {
            return Err(ManagedLedgerError::NoSuchCursor {
                name: self.shared.name.clone(),
                cursor: name.to_owned(),
            });
        };
        // The record goes first: a crash after it leaves only a ledger for garbage collection,
        // never a record naming a deleted ledger.
        let key = cursor_record_key(&self.shared.name, name);
        let _ = self.metadata.delete(&key, Expected::Any).await?;
        c.stop_deleted().await;
        Ok(())
    }

    /// The slowest durable cursor's floor (None: no durable cursor).
    fn slowest_floor(&self) -> Option<Position> {
        let cursors: Vec<Arc<ManagedCursor>> = self.cursor_map().values().cloned().collect();
        cursors
            .iter()
            .map(|c| self.shared.normalize(c.first_unacked()))
            .min()
    }

    /// Deletes the ledgers that every durable cursor consumed and that exceed the retention
    /// limits; returns their ids. Also run periodically (`retention_check_interval_ms`).
    pub async fn trim(&self) -> MlResult<Vec<LedgerId>> {
        self.check_open()?;
        let slowest = self.slowest_floor();
        // Only with tiered storage is there anything in object storage to delete.
        let with_objects: std::collections::HashMap<LedgerId, crate::record::OffloadState> =
            match &self.offloader {
                None => std::collections::HashMap::new(),
                Some(_) => self
                    .shared
                    .state()
                    .ledgers
                    .iter()
                    .filter_map(|l| l.offload.clone().map(|o| (l.ledger_id, o)))
                    .collect(),
            };
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Box::new(Command::Trim { slowest, done }))
            .await
            .map_err(|_| self.gone())?;
        let removed = rx.await.map_err(|_| self.gone())??;
        for &id in &removed {
            self.drop_ledger_data(id).await;
            if let Some(state) = with_objects.get(&id) {
                self.drop_ledger_objects(id, state).await;
            }
        }
        Ok(removed)
    }

    /// Deletes a trimmed ledger's objects in object storage (every attempt's).
    async fn drop_ledger_objects(&self, id: LedgerId, state: &crate::record::OffloadState) {
        let Some(o) = &self.offloader else { return };
        let deleted = match o.target_of(state) {
            Ok(t) => {
                crate::offload::Offloader::delete_ledger_objects(t.store(), &self.shared.name, id)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            warn!(ml = %self.shared.name, ledger = %id, error = %e,
                "could not delete a trimmed ledger's offloaded objects; the cleaner retries");
        }
    }

    async fn drop_ledger_data(&self, id: LedgerId) {
        self.shared.forget_reader(id);
        self.shared.cache.invalidate_ledger(id);
        match delete_ledger(&self.shared.client, id).await {
            Ok(()) | Err(LedgerError::NoSuchLedger(_)) => {}
            Err(e) => warn!(ml = %self.shared.name, ledger = %id, error = %e,
                "could not delete a trimmed ledger; it stays on the bookies"),
        }
    }

    /// Flushes every cursor, completes in-flight appends and closes the current ledger.
    pub async fn close(&self) -> MlResult<()> {
        let cursors: Vec<Arc<ManagedCursor>> = self.cursor_map().values().cloned().collect();
        // Each cursor's last write (its state left where the next owner reads it without
        // recovery) and the ledger's close are independent: all at once, a topic closes in
        // the time of its slowest part (a handover quiesces a bundle's topics this way).
        let stops = futures::future::join_all(cursors.iter().map(|c| c.stop()));
        let ledger = async {
            let (done, rx) = oneshot::channel();
            if self
                .commands
                .send(Box::new(Command::Close { done }))
                .await
                .is_ok()
            {
                rx.await.unwrap_or(Ok(()))
            } else {
                Ok(())
            }
        };
        let (stopped, closed) = futures::join!(stops, ledger);
        crate::factory::forget(&self.registry, self);
        stopped
            .into_iter()
            .chain([closed])
            .collect::<MlResult<Vec<()>>>()
            .map(|_| ())
    }

    /// The managed ledger's properties as stored (Pulsar's `ManagedLedger.getProperties`).
    pub fn properties(&self) -> BTreeMap<String, String> {
        self.shared.state().properties.clone()
    }

    /// Stores one property in the managed-ledger record; returns once it is durable.
    pub async fn set_property(&self, key: &str, value: &str) -> MlResult<()> {
        self.check_open()?;
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Box::new(Command::SetProperty {
                key: key.to_owned(),
                value: value.to_owned(),
                done,
            }))
            .await
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Accepts appends again after a failed write suspended them
    /// (`suspend_appends_after_failure`). Appends queued before this call were refused.
    pub async fn resume_appends(&self) -> MlResult<()> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Box::new(Command::Resume { done }))
            .await
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// Closes, then deletes every ledger, every cursor record and the managed-ledger record.
    pub async fn delete(&self) -> MlResult<()> {
        let _ = self.close().await;
        let names = self.cursor_names();
        for n in names {
            self.delete_cursor(&n).await?;
        }
        let ledgers = self.ledgers();
        for l in &ledgers {
            self.drop_ledger_data(l.ledger_id).await;
        }
        if let Some(o) = &self.offloader {
            // Everything under the managed ledger's prefix (failed attempts' objects too) in
            // the cluster's store and every store one of its ledgers went to.
            let mut stores = vec![o.store().clone()];
            for state in ledgers.iter().filter_map(|l| l.offload.as_ref()) {
                let t = o.target_of(state)?;
                if !stores.iter().any(|s| s.location() == t.store().location()) {
                    stores.push(t.store().clone());
                }
            }
            for store in &stores {
                crate::offload::Offloader::delete_all_objects(store, &self.shared.name).await?;
            }
        }
        crate::ledger_list::LedgerList::new(Arc::clone(&self.metadata), &self.shared.name)
            .delete_all()
            .await?;
        self.shared.state().status = Status::Closed;
        info!(ml = %self.shared.name, "managed ledger deleted");
        Ok(())
    }

    /// The last ledger, with its final length, once this instance closed and sealed it (what
    /// a handover tells the next owner, see [`crate::ManagedLedgerFactory::hint_sealed`]).
    /// None while open, after a fence, or when the close could not seal it.
    pub fn sealed_ledger(&self) -> Option<crate::SealedLedger> {
        let st = self.shared.state();
        if st.status != Status::Closed {
            return None;
        }
        st.ledgers
            .last()
            .filter(|l| l.state == LedgerRecordState::Closed)
            .map(|l| crate::SealedLedger {
                ledger: l.ledger_id,
                entries: l.entries,
                size_bytes: l.size_bytes,
            })
    }

    pub fn stats(&self) -> ManagedLedgerStats {
        let cursors = self
            .cursor_map()
            .iter()
            .map(|(n, c)| (n.clone(), c.stats()))
            .collect();
        let st = self.shared.state();
        ManagedLedgerStats {
            entries: st.ledgers.iter().map(|l| l.entries).sum(),
            size_bytes: st.ledgers.iter().map(|l| l.size_bytes).sum(),
            ledgers: st.ledgers.len(),
            last_confirmed: st.last_confirmed,
            cursors,
        }
    }

    pub fn internal_stats(&self) -> InternalStats {
        let cursors = self
            .cursor_map()
            .iter()
            .map(|(n, c)| (n.clone(), c.internal_stats()))
            .collect();
        let st = self.shared.state();
        let current = st
            .current
            .and_then(|c| st.ledgers.iter().find(|l| l.ledger_id == c));
        InternalStats {
            entries_added_counter: st.entries_added,
            number_of_entries: st.ledgers.iter().map(|l| l.entries).sum(),
            total_size: st.ledgers.iter().map(|l| l.size_bytes).sum(),
            current_ledger_entries: current.map_or(0, |l| l.entries),
            current_ledger_size: current.map_or(0, |l| l.size_bytes),
            last_ledger_created_timestamp: st
                .ledgers
                .last()
                .map_or(String::new(), |l| l.created_ms.to_string()),
            last_confirmed_entry: st
                .last_confirmed
                .map_or_else(|| "-1:-1".to_owned(), |p| p.to_string()),
            state: match st.status {
                Status::Open if st.current.is_some() => "LedgerOpened",
                Status::Open => "ClosedLedger",
                Status::Fenced => "Fenced",
                Status::Closed => "Closed",
            }
            .to_owned(),
            ledgers: st
                .ledgers
                .iter()
                .map(|l| InternalLedgerInfo {
                    ledger_id: l.ledger_id.0,
                    entries: l.entries,
                    size: l.size_bytes,
                    offloaded: l.offloaded().is_some(),
                    offloaded_to: l.offloaded().map(|o| o.describe()),
                    bookie_copy_deleted: l.location == crate::LedgerLocation::Offloaded,
                })
                .collect(),
            cursors,
        }
    }
}

/// The outcome of a cursor record's first claim.
pub(super) enum FirstClaim {
    /// Claimed as listed: the record and its new version.
    Landed((CursorRecord, Version)),
    /// Changed since the listing, unreadable, or the write's outcome is unknown: claimed again
    /// (read first) once the managed ledger is ours.
    Again,
}

/// The cursor records of one managed ledger with their first claims.
pub(super) struct CursorClaims {
    names: Vec<String>,
    first: Vec<FirstClaim>,
}

/// Claims each cursor record of `listing` once, as listed, with one compare-and-set write:
/// a previous owner still flushing (it lost its lease but has not noticed yet) then meets a
/// conflict and stops writing, instead of this owner's first write meeting one and losing the
/// cursor's persistence; a flush that lands before the claim makes the claim conflict, and
/// the claim is made again from a fresh read ([`ManagedLedger::load_cursors`]).
///
/// Run beside the open's head write, so that the claims cost no round of their own. That is
/// safe even if the head write then fails: a first claim only rewrites the record it listed,
/// so of two openers listing the same version only one lands, and the owner's load claims
/// again whatever did not — the owner's claim is always the last.
pub(super) async fn claim_listed(
    metadata: &Arc<dyn MetadataStore>,
    name: &str,
    clock: &dyn Clock,
    listing: magnetar_metadata::Listing,
) -> MlResult<CursorClaims> {
    let prefix = cursors_prefix(name);
    let store: RecordStore<CursorRecord> = RecordStore::new(Arc::clone(metadata));
    let (names, listed): (Vec<String>, Vec<Option<(CursorRecord, Version)>>) = listing
        .entries
        .iter()
        .filter_map(|(key, read)| {
            let cursor = key.strip_prefix(&prefix)?.to_owned();
            // One that does not parse is read again by its second claim, which reports it.
            Some((cursor, store.decode(key, read).ok()))
        })
        .unzip();
    let now_ms = clock.now_ms();
    let first = names.iter().zip(listed).map(|(cursor, listed)| {
        let store = store.clone();
        let key = cursor_record_key(name, cursor);
        async move {
            let Some((mut record, version)) = listed else {
                return Ok(FirstClaim::Again);
            };
            record.updated_ms = now_ms;
            match store.put(&key, &record, Expected::Version(version)).await {
                Ok(PutOutcome::Written(v)) => Ok(FirstClaim::Landed((record, v))),
                Ok(PutOutcome::Conflict { .. }) => Ok(FirstClaim::Again),
                Err(e) if e.is_indeterminate() || e.is_retryable() => Ok(FirstClaim::Again),
                Err(e) => Err(ManagedLedgerError::from(e)),
            }
        }
    });
    let first = futures::future::try_join_all(first).await?;
    Ok(CursorClaims { names, first })
}

/// The cursor records of managed ledger `name`, with their values: each claim starts from the
/// record as listed (one read for all cursors rather than one per cursor; a takeover opens many
/// topics at once).
pub(super) async fn list_cursors(
    metadata: &Arc<dyn MetadataStore>,
    name: &str,
) -> MlResult<magnetar_metadata::Listing> {
    Ok(metadata.list(&cursors_prefix(name)).await?)
}
