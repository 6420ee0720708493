//! [`ManagedLedgerFactory`] and [`ManagedLedger`]: opening with recovery, the write actor
//! (pipelined appends, rollover, trim, close), cursors, retention and stats.
//!
//! One task per managed ledger owns the writer and the record (an actor fed by a bounded queue,
//! so no lock is held across an await). It hands each payload to the current `LedgerWriter` and
//! keeps the completions in a `FuturesOrdered`, so they resolve strictly in entry order; at most
//! `max_pending_appends` are in flight. When the current ledger reaches a limit the actor stops
//! taking commands, lets the in-flight appends complete, closes the ledger, creates the next and
//! records both with one CAS; appends queued meanwhile go to the new ledger. A CAS conflict on the
//! record or a `Fenced` ledger means another broker took over: the managed ledger becomes fenced
//! and every later append fails with [`ManagedLedgerError::Fenced`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use magnetar_bookie::client::{
    LedgerClient, LedgerConfig, LedgerError, LedgerReader, LedgerWriter,
};
use magnetar_metadata::{
    EntryId, Expected, LedgerId, MetadataStore, PutOutcome, RecordStore, Version,
};
use serde::Serialize;
use tokio::sync::{OnceCell, mpsc, oneshot, watch};
use tracing::{Instrument, info, info_span, warn};

use super::Position;
use super::cache::EntryCache;
use super::config::ManagedLedgerConfig;
use super::cursor::{CursorStats, InitialPosition, ManagedCursor};
use super::error::{ManagedLedgerError, MlResult};
use super::read::{Shared, State, Status};
use super::record::{
    CursorRecord, LedgerInfo, LedgerLocation, LedgerRecordState, ManagedLedgerRecord,
    cursor_record_key, cursors_prefix, ledger_record_key, now_ms,
};

/// Opens managed ledgers over one metadata store, one ledger client and one entry cache (all
/// shared by every topic of the broker). Opening the same name twice returns the same instance.
#[derive(Debug)]
pub struct ManagedLedgerFactory {
    metadata: Arc<dyn MetadataStore>,
    client: LedgerClient,
    cache: Arc<dyn EntryCache>,
    open: Mutex<HashMap<String, Arc<OnceCell<Arc<ManagedLedger>>>>>,
}

impl ManagedLedgerFactory {
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        client: LedgerClient,
        cache: Arc<dyn EntryCache>,
    ) -> Self {
        ManagedLedgerFactory {
            metadata,
            client,
            cache,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn cache(&self) -> &Arc<dyn EntryCache> {
        &self.cache
    }

    fn cells(&self) -> MutexGuard<'_, HashMap<String, Arc<OnceCell<Arc<ManagedLedger>>>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
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
        let ml = cell
            .get_or_try_init(|| {
                open_managed_ledger(
                    Arc::clone(&self.metadata),
                    self.client.clone(),
                    Arc::clone(&self.cache),
                    name.to_owned(),
                    config,
                )
                .instrument(info_span!("ml_open", ml = %name))
            })
            .await?;
        Ok(Arc::clone(ml))
    }
}

fn validate_name(name: &str) -> MlResult<()> {
    let ok = !name.is_empty()
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && !name.contains('\0')
        && !name
            .split('/')
            .any(|c| c == "cursors" || c == "." || c == "..");
    if ok {
        Ok(())
    } else {
        Err(ManagedLedgerError::InvalidName(name.to_owned()))
    }
}

async fn open_managed_ledger(
    metadata: Arc<dyn MetadataStore>,
    client: LedgerClient,
    cache: Arc<dyn EntryCache>,
    name: String,
    config: ManagedLedgerConfig,
) -> MlResult<Arc<ManagedLedger>> {
    let records: RecordStore<ManagedLedgerRecord> = RecordStore::new(Arc::clone(&metadata));
    let key = ledger_record_key(&name);
    let (mut record, expected) = match records.get(&key).await? {
        Some((r, v)) => (r, Expected::Version(v)),
        None => (
            ManagedLedgerRecord {
                created_ms: now_ms(),
                ..Default::default()
            },
            Expected::Absent,
        ),
    };
    // Recovery: the previous owner's open ledger is fenced and closed, and its length recorded.
    for info in record.ledgers.iter_mut() {
        if info.state == LedgerRecordState::Open {
            let reader = recover_ledger(&client, info.ledger_id).await?;
            let meta = reader.metadata();
            info.entries = u64::try_from(meta.last_entry_id + 1).unwrap_or(0);
            info.size_bytes = meta.length_bytes;
            info.state = LedgerRecordState::Closed;
            info.closed_ms = Some(now_ms());
            info!(ledger = %info.ledger_id, entries = info.entries, "recovered the last ledger");
        }
    }
    let empty: Vec<LedgerId> = record
        .ledgers
        .iter()
        .filter(|l| l.entries == 0)
        .map(|l| l.ledger_id)
        .collect();
    record.ledgers.retain(|l| l.entries > 0);
    let writer = create_ledger(&client, config.ledger_config(&name)).await?;
    record.ledgers.push(open_info(writer.id()));
    let version = match records.put(&key, &record, expected).await {
        Ok(PutOutcome::Written(v)) => v,
        Ok(PutOutcome::Conflict { .. }) => {
            let _ = delete_ledger(&client, writer.id()).await;
            return Err(ManagedLedgerError::BadVersion { name });
        }
        Err(e) => return Err(e.into()),
    };
    info!(ledger = %writer.id(), ledgers = record.ledgers.len(), "managed ledger open");
    for id in empty {
        if let Err(e) = delete_ledger(&client, id).await {
            warn!(ledger = %id, error = %e, "could not delete an empty ledger");
        }
    }
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
        current: Some(writer.id()),
        last_confirmed,
        tail: VecDeque::new(),
        status: Status::Open,
        entries_added: 0,
    };
    let shared = Shared::new(name.clone(), config.clone(), client, cache, state);
    let (commands, rx) = mpsc::channel(config.max_pending_appends.clamp(1, 4096));
    let actor = Actor {
        shared: Arc::clone(&shared),
        records,
        key,
        record,
        version,
        writer: Some(writer),
        current_created: tokio::time::Instant::now(),
        enqueued_entries: 0,
        enqueued_bytes: 0,
        inflight: FuturesOrdered::new(),
        deferred: None,
        roll_needed: false,
        retry_at: None,
        backoff: Duration::ZERO,
        last_error: None,
    };
    tokio::spawn(
        actor
            .run(rx)
            .instrument(info_span!("ml_writer", ml = %name)),
    );
    let ml = Arc::new(ManagedLedger {
        shared,
        commands,
        metadata: Arc::clone(&metadata),
        cursors: Mutex::new(BTreeMap::new()),
    });
    ml.load_cursors().await?;
    spawn_retention(&ml);
    Ok(ml)
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

fn open_info(id: LedgerId) -> LedgerInfo {
    LedgerInfo {
        ledger_id: id,
        entries: 0,
        size_bytes: 0,
        created_ms: now_ms(),
        closed_ms: None,
        state: LedgerRecordState::Open,
        location: LedgerLocation::Bookies,
    }
}

fn spawn_retention(ml: &Arc<ManagedLedger>) {
    let weak: Weak<ManagedLedger> = Arc::downgrade(ml);
    let every = Duration::from_millis(ml.shared.config.retention_check_interval_ms.max(10));
    let span = info_span!("ml_retention", ml = %ml.shared.name);
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(ml) = weak.upgrade() else { break };
                if ml.shared.status() != Status::Open {
                    break;
                }
                if let Err(e) = ml.trim().await {
                    warn!(error = %e, "retention trim failed");
                }
            }
        }
        .instrument(span),
    );
}

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

enum Command {
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
}

/// A topic's log. Cheap to share (`Arc`); all methods take `&self`.
#[derive(Debug)]
pub struct ManagedLedger {
    pub(crate) shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    metadata: Arc<dyn MetadataStore>,
    cursors: Mutex<BTreeMap<String, Arc<ManagedCursor>>>,
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
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn config(&self) -> &ManagedLedgerConfig {
        &self.shared.config
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
            .send(Command::Append { payload, done })
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

    async fn load_cursors(&self) -> MlResult<()> {
        let listing = self
            .metadata
            .list(&cursors_prefix(&self.shared.name))
            .await?;
        let prefix = cursors_prefix(&self.shared.name);
        for (key, value) in listing.entries {
            let Some(cursor) = key.strip_prefix(&prefix) else {
                continue;
            };
            let record: CursorRecord = serde_json::from_slice(&value.value).map_err(|e| {
                magnetar_metadata::MetadataError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                }
            })?;
            let c = ManagedCursor::durable(
                Arc::clone(&self.shared),
                Arc::clone(&self.metadata),
                cursor.to_owned(),
                record,
                Some(value.version),
            );
            self.cursor_map().insert(cursor.to_owned(), c);
        }
        Ok(())
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
            updated_ms: now_ms(),
            batch_acks: Vec::new(),
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
            ManagedCursor::durable(
                Arc::clone(&self.shared),
                Arc::clone(&self.metadata),
                name.to_owned(),
                record,
                version,
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
        c.stop().await;
        let key = cursor_record_key(&self.shared.name, name);
        let _ = self.metadata.delete(&key, Expected::Any).await?;
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
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Command::Trim { slowest, done })
            .await
            .map_err(|_| self.gone())?;
        let removed = rx.await.map_err(|_| self.gone())??;
        for &id in &removed {
            self.drop_ledger_data(id).await;
        }
        Ok(removed)
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
        let mut first_err = None;
        for c in cursors {
            if let Err(e) = c.flush().await {
                first_err.get_or_insert(e);
            }
        }
        let (done, rx) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok()
            && let Ok(Err(e)) = rx.await
        {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Closes, then deletes every ledger, every cursor record and the managed-ledger record.
    pub async fn delete(&self) -> MlResult<()> {
        let _ = self.close().await;
        let names = self.cursor_names();
        for n in names {
            self.delete_cursor(&n).await?;
        }
        let ids: Vec<LedgerId> = self.ledgers().iter().map(|l| l.ledger_id).collect();
        for id in ids {
            self.drop_ledger_data(id).await;
        }
        let key = ledger_record_key(&self.shared.name);
        let _ = self.metadata.delete(&key, Expected::Any).await?;
        self.shared.state().status = Status::Closed;
        info!(ml = %self.shared.name, "managed ledger deleted");
        Ok(())
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
                    offloaded: l.location != LedgerLocation::Bookies,
                })
                .collect(),
            cursors,
        }
    }
}

type Completion = Pin<
    Box<
        dyn Future<
                Output = (
                    LedgerId,
                    u64,
                    Bytes,
                    Result<EntryId, LedgerError>,
                    oneshot::Sender<MlResult<Position>>,
                ),
            > + Send,
    >,
>;

struct Actor {
    shared: Arc<Shared>,
    records: RecordStore<ManagedLedgerRecord>,
    key: String,
    /// The record as stored at `version`.
    record: ManagedLedgerRecord,
    version: Version,
    writer: Option<LedgerWriter>,
    current_created: tokio::time::Instant,
    /// Entries and bytes handed to the current writer (confirmed or not).
    enqueued_entries: u64,
    enqueued_bytes: u64,
    inflight: FuturesOrdered<Completion>,
    /// A close waiting for the in-flight appends.
    deferred: Option<oneshot::Sender<MlResult<()>>>,
    /// The current ledger reached a limit (or its writer broke): roll over once drained.
    roll_needed: bool,
    /// After a ledger failed (it could not be created, or its writer broke — e.g. too few live
    /// bookies), appends fail fast until this instant instead of each creating a new ledger:
    /// the wait doubles from 100 ms up to 10 s and resets when an append succeeds, so an outage
    /// costs a few ledgers, not a ledger id and metadata writes per append.
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
    last_error: Option<LedgerError>,
}

/// Bounds of the wait between attempts to create a ledger after a failure.
const CREATE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const CREATE_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Actor {
    fn name(&self) -> String {
        self.shared.name.clone()
    }

    fn status(&self) -> Status {
        self.shared.status()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let age = Duration::from_millis(self.shared.config.ledger_age_ms_max.max(1));
        let mut tick = tokio::time::interval(age.min(Duration::from_secs(1)));
        let max = self.shared.config.max_pending_appends;
        loop {
            if self.inflight.is_empty() {
                if let Some(done) = self.deferred.take() {
                    let r = self.close_current().await;
                    let _ = done.send(r);
                    break;
                }
                if self.roll_needed && self.status() == Status::Open && !self.backing_off() {
                    self.roll_needed = false;
                    if let Err(e) = self.rollover_with_backoff().await {
                        warn!(error = %e, "rollover failed");
                    }
                }
            }
            let backing_off = self.backing_off();
            // While backing off, appends are taken and refused at once rather than left waiting.
            let accepting = self.deferred.is_none()
                && (!self.roll_needed || backing_off)
                && self.inflight.len() < max;
            let retry_at = self.retry_at.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                _ = tokio::time::sleep_until(retry_at), if self.roll_needed && backing_off => {}
                cmd = rx.recv(), if accepting => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => {
                        self.deferred = Some(oneshot::channel().0);
                    }
                },
                Some((ledger, len, payload, result, done)) = self.inflight.next(),
                    if !self.inflight.is_empty() => {
                    self.on_completion(ledger, len, payload, result, done).await;
                }
                _ = tick.tick() => {
                    if self.enqueued_entries > 0 && self.current_created.elapsed() >= age {
                        self.roll_needed = true;
                    }
                }
            }
        }
        rx.close();
        while let Some(cmd) = rx.recv().await {
            self.refuse(cmd);
        }
    }

    fn refuse(&self, cmd: Command) {
        let err = if self.status() == Status::Fenced {
            ManagedLedgerError::Fenced(self.name())
        } else {
            ManagedLedgerError::Closed(self.name())
        };
        match cmd {
            Command::Append { done, .. } => {
                let _ = done.send(Err(err));
            }
            Command::Trim { done, .. } => {
                let _ = done.send(Err(err));
            }
            Command::Close { done } => {
                let _ = done.send(Ok(()));
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        if self.status() != Status::Open {
            return self.refuse(cmd);
        }
        match cmd {
            Command::Append { payload, done } => self.append(payload, done).await,
            Command::Trim { slowest, done } => {
                let r = self.trim(slowest).await;
                let _ = done.send(r);
            }
            Command::Close { done } => self.deferred = Some(done),
        }
    }

    /// True while the backoff after a ledger failure runs.
    fn backing_off(&self) -> bool {
        self.retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at)
    }

    fn backoff_error(&self) -> ManagedLedgerError {
        self.last_error
            .clone()
            .unwrap_or(LedgerError::NotEnoughBookies {
                needed: self.shared.config.ensemble_size as usize,
                available: 0,
            })
            .into()
    }

    /// A ledger failed: wait longer before the next attempt.
    fn note_ledger_failure(&mut self, error: LedgerError) {
        self.backoff = (self.backoff * 2).clamp(CREATE_BACKOFF_MIN, CREATE_BACKOFF_MAX);
        self.retry_at = Some(tokio::time::Instant::now() + self.backoff);
        self.last_error = Some(error);
    }

    /// Rolls over (creating the next ledger) unless a failure's backoff runs.
    async fn rollover_with_backoff(&mut self) -> MlResult<()> {
        if self.backing_off() {
            return Err(self.backoff_error());
        }
        let result = self.rollover().await;
        if self.writer.is_none() {
            let error = match &result {
                Err(ManagedLedgerError::Ledger(e)) => e.clone(),
                _ => LedgerError::NotEnoughBookies {
                    needed: self.shared.config.ensemble_size as usize,
                    available: 0,
                },
            };
            self.note_ledger_failure(error);
        }
        result
    }

    async fn append(&mut self, payload: Bytes, done: oneshot::Sender<MlResult<Position>>) {
        if self.roll_needed && self.backing_off() {
            let _ = done.send(Err(self.backoff_error()));
            return;
        }
        if self.writer.is_none()
            && let Err(e) = self.rollover_with_backoff().await
        {
            let _ = done.send(Err(e));
            return;
        }
        let Some(writer) = &self.writer else {
            let _ = done.send(Err(ManagedLedgerError::Closed(self.name())));
            return;
        };
        let ledger = writer.id();
        let len = payload.len() as u64;
        match writer.append(payload.clone()).await {
            Ok(handle) => {
                self.enqueued_entries += 1;
                self.enqueued_bytes += len;
                let cfg = &self.shared.config;
                if self.enqueued_entries >= cfg.ledger_entries_max
                    || self.enqueued_bytes >= cfg.ledger_size_bytes_max
                {
                    self.roll_needed = true;
                }
                self.inflight.push_back(Box::pin(async move {
                    let r = handle.await;
                    (ledger, len, payload, r, done)
                }));
            }
            Err(e) => self.on_writer_error(e, done),
        }
    }

    fn on_writer_error(&mut self, e: LedgerError, done: oneshot::Sender<MlResult<Position>>) {
        if matches!(e, LedgerError::Fenced(_)) {
            self.fence("the current ledger was fenced");
            let _ = done.send(Err(ManagedLedgerError::Fenced(self.name())));
        } else {
            warn!(error = %e, "append failed: the ledger will be replaced");
            self.roll_needed = true;
            self.note_ledger_failure(e.clone());
            let _ = done.send(Err(e.into()));
        }
    }

    fn fence(&mut self, why: &str) {
        let mut st = self.shared.state();
        if st.status == Status::Open {
            warn!(
                reason = why,
                "managed ledger fenced: another broker owns it"
            );
            st.status = Status::Fenced;
        }
    }

    async fn on_completion(
        &mut self,
        ledger: LedgerId,
        len: u64,
        payload: Bytes,
        result: Result<EntryId, LedgerError>,
        done: oneshot::Sender<MlResult<Position>>,
    ) {
        let entry = match result {
            Ok(entry) => entry,
            Err(e) => return self.on_writer_error(e, done),
        };
        let pos = Position { ledger, entry };
        self.backoff = Duration::ZERO;
        self.retry_at = None;
        self.shared.cache.insert(pos, payload.clone()).await;
        {
            let mut st = self.shared.state();
            if let Some(info) = st.ledgers.iter_mut().find(|l| l.ledger_id == ledger) {
                info.entries = info.entries.max(entry.0 + 1);
                info.size_bytes += len;
            }
            st.tail.push_back((entry.0, payload));
            st.last_confirmed = Some(pos);
            st.entries_added += 1;
        }
        self.shared.lac_tx.send_replace(Some(pos));
        self.shared.maybe_probe_tail();
        let _ = done.send(Ok(pos));
    }

    /// Writes `next` over the record with CAS; a conflict fences the managed ledger.
    async fn write_record(&mut self, next: ManagedLedgerRecord) -> MlResult<()> {
        match self
            .records
            .put(&self.key, &next, Expected::Version(self.version))
            .await
        {
            Ok(PutOutcome::Written(v)) => {
                self.record = next;
                self.version = v;
                Ok(())
            }
            Ok(PutOutcome::Conflict { .. }) => {
                self.fence("the managed-ledger record changed under us");
                Err(ManagedLedgerError::Fenced(self.name()))
            }
            Err(e) if e.is_indeterminate() => match self.records.get(&self.key).await? {
                Some((stored, v)) if stored == next => {
                    self.record = next;
                    self.version = v;
                    Ok(())
                }
                _ => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Closes the current writer and returns the record with that ledger closed (not written).
    async fn seal_current(&mut self) -> MlResult<ManagedLedgerRecord> {
        let mut next = self.record.clone();
        let Some(writer) = self.writer.take() else {
            return Ok(next);
        };
        let id = writer.id();
        let meta = match writer.close().await {
            Ok(meta) => meta,
            Err(LedgerError::Fenced(_)) => {
                self.fence("the current ledger was fenced at close");
                return Err(ManagedLedgerError::Fenced(self.name()));
            }
            Err(e) => {
                // The writer broke: recover our own ledger to learn what it holds.
                warn!(ledger = %id, error = %e, "close failed; recovering the ledger");
                drop(writer);
                recover_ledger(&self.shared.client, id).await?.metadata()
            }
        };
        if let Some(info) = next.ledgers.iter_mut().find(|l| l.ledger_id == id) {
            info.entries = u64::try_from(meta.last_entry_id + 1).unwrap_or(0);
            info.size_bytes = meta.length_bytes;
            info.state = LedgerRecordState::Closed;
            info.closed_ms = Some(now_ms());
        }
        Ok(next)
    }

    /// Closes the current ledger (if any), creates the next and records both with one CAS.
    async fn rollover(&mut self) -> MlResult<()> {
        let span = info_span!("ml_rollover", ledger = ?self.writer.as_ref().map(|w| w.id()));
        async {
            let old = self.writer.as_ref().map(LedgerWriter::id);
            let mut next = self.seal_current().await?;
            let created = create_ledger(
                &self.shared.client,
                self.shared.config.ledger_config(&self.shared.name),
            )
            .await;
            let mut create_error = None;
            let writer = match created {
                Ok(w) => {
                    next.ledgers.push(open_info(w.id()));
                    Some(w)
                }
                Err(e) => {
                    warn!(error = %e, "could not create the next ledger");
                    if old.is_none() {
                        // Nothing was sealed, so there is nothing to record.
                        return Err(e.into());
                    }
                    create_error = Some(e);
                    None
                }
            };
            // A sealed ledger that stayed empty is dropped from the list.
            let dropped: Vec<LedgerId> = next
                .ledgers
                .iter()
                .filter(|l| Some(l.ledger_id) == old && l.entries == 0)
                .map(|l| l.ledger_id)
                .collect();
            next.ledgers.retain(|l| !dropped.contains(&l.ledger_id));
            if let Err(e) = self.write_record(next).await {
                if let Some(w) = writer {
                    let id = w.id();
                    drop(w);
                    let _ = delete_ledger(&self.shared.client, id).await;
                }
                return Err(e);
            }
            let new_id = writer.as_ref().map(LedgerWriter::id);
            {
                let mut st = self.shared.state();
                // Keep the live counts of the sealed ledger consistent with the record.
                st.ledgers = self.record.ledgers.clone();
                st.current = new_id;
                st.tail.clear();
            }
            if let Some(old) = old {
                self.shared.forget_reader(old);
            }
            for id in dropped {
                let _ = delete_ledger(&self.shared.client, id).await;
            }
            self.writer = writer;
            self.current_created = tokio::time::Instant::now();
            self.enqueued_entries = 0;
            self.enqueued_bytes = 0;
            info!(from = ?old, to = ?new_id, "rolled over");
            match (new_id, create_error) {
                (Some(_), _) => Ok(()),
                (None, Some(e)) => Err(e.into()),
                (None, None) => Err(ManagedLedgerError::Ledger(LedgerError::NotEnoughBookies {
                    needed: self.shared.config.ensemble_size as usize,
                    available: 0,
                })),
            }
        }
        .instrument(span)
        .await
    }

    /// Close: seal the current ledger and record it closed (the next owner then needs no
    /// recovery). A fenced managed ledger only stops.
    async fn close_current(&mut self) -> MlResult<()> {
        let result = if self.status() == Status::Open {
            match self.seal_current().await {
                Ok(next) => self.write_record(next).await,
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        let mut st = self.shared.state();
        if result.is_ok() {
            st.ledgers = self.record.ledgers.clone();
        }
        st.current = None;
        st.tail.clear();
        if st.status == Status::Open {
            st.status = Status::Closed;
        }
        info!("managed ledger closed");
        result
    }

    async fn trim(&mut self, slowest: Option<Position>) -> MlResult<Vec<LedgerId>> {
        let cfg = &self.shared.config;
        if cfg.retention_time_ms == -1 && cfg.retention_size_bytes == -1 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let total: u64 = self
            .shared
            .state()
            .ledgers
            .iter()
            .map(|l| l.size_bytes)
            .sum();
        let mut trimmed = 0u64;
        let mut remove = Vec::new();
        for l in &self.record.ledgers {
            if l.state != LedgerRecordState::Closed {
                break;
            }
            let consumed = match slowest {
                None => true,
                Some(p) => {
                    p.ledger > l.ledger_id || (p.ledger == l.ledger_id && p.entry.0 >= l.entries)
                }
            };
            if !consumed {
                break;
            }
            let age = now.saturating_sub(l.closed_ms.unwrap_or(l.created_ms));
            let expired = cfg.retention_time_ms == 0
                || (cfg.retention_time_ms > 0 && age > cfg.retention_time_ms as u64);
            let over_size =
                cfg.retention_size_bytes >= 0 && total - trimmed > cfg.retention_size_bytes as u64;
            if !(expired || over_size) {
                break;
            }
            trimmed += l.size_bytes;
            remove.push(l.ledger_id);
        }
        if remove.is_empty() {
            return Ok(remove);
        }
        let mut next = self.record.clone();
        next.ledgers.retain(|l| !remove.contains(&l.ledger_id));
        self.write_record(next).await?;
        {
            let mut st = self.shared.state();
            st.ledgers.retain(|l| !remove.contains(&l.ledger_id));
        }
        info!(ledgers = ?remove, "trimmed consumed ledgers");
        Ok(remove)
    }
}
