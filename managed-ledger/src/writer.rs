//! The write actor of a managed ledger: one task per managed ledger owns the current
//! `LedgerWriter` and the managed-ledger record.
//!
//! It is fed by a bounded queue (so no lock is held across an await). It hands each payload to
//! the current writer and keeps the completions in a `FuturesOrdered`, so they resolve strictly
//! in entry order; at most `max_pending_appends` are in flight. When the current ledger reaches
//! a limit the actor stops taking commands, lets the in-flight appends complete, closes the
//! ledger, creates the next and records both with one CAS; appends queued meanwhile go to the
//! new ledger. A CAS conflict on the record means another broker took over: the managed
//! ledger becomes fenced and every later append fails with [`ManagedLedgerError::Fenced`]. A
//! `Fenced` ledger alone is a failed write like any other (auto-recovery fences idle ledgers
//! that lost a replica): the ledger is recovered and replaced, and the rollover's CAS tells
//! whether someone else owns the record now. After a ledger failure appends fail fast for a backoff that
//! doubles from 100 ms to 10 s.
//!
//! The actor is a task only while it has work. Idle — nothing in flight, no rollover or close
//! pending, an empty queue — it parks in its [`Commands`] and the next command spawns it again,
//! so an idle topic costs no task. It keeps no timer either: the age limit of the current
//! ledger is published in `Shared::roll_due_ms` and the factory's periodic task sends
//! `RollIfAged` when it passes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use magnetar_bookie::client::{LedgerError, LedgerWriter};
use magnetar_metadata::crash_point;
use magnetar_metadata::{EntryId, Expected, LedgerId, PutOutcome, Version};
use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, info_span, warn};

use crate::Position;
use crate::error::{ManagedLedgerError, MlResult};
use crate::factory::{create_ledger, delete_ledger, open_info, recover_ledger};
use crate::ledger::Command;
use crate::ledger_list::LedgerList;
use crate::read::{Shared, Status};
use crate::record::{LedgerInfo, LedgerRecordState, ManagedLedgerRecord};

/// The write actor's queue, held by the managed ledger. Sending queues the command and runs
/// the actor if it is parked.
pub(crate) struct Commands {
    tx: mpsc::Sender<Box<Command>>,
    /// The actor and its receiver while idle (no task runs then).
    parked: Arc<Mutex<Option<Parked>>>,
}

struct Parked {
    actor: Actor,
    rx: mpsc::Receiver<Box<Command>>,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("parked", &lock(&self.parked).is_some())
            .finish()
    }
}

fn lock(parked: &Mutex<Option<Parked>>) -> std::sync::MutexGuard<'_, Option<Parked>> {
    parked.lock().unwrap_or_else(|p| p.into_inner())
}

impl Commands {
    /// Queues `cmd` (waiting while the queue is full) and wakes the actor.
    pub(crate) async fn send(&self, cmd: Box<Command>) -> Result<(), SendError<Box<Command>>> {
        self.tx.send(cmd).await?;
        self.wake();
        Ok(())
    }

    /// Queues `cmd` unless the queue is full or closed.
    pub(crate) fn try_send(&self, cmd: Box<Command>) -> Result<(), TrySendError<Box<Command>>> {
        self.tx.try_send(cmd)?;
        self.wake();
        Ok(())
    }

    /// Whether the actor is parked (idle, no task).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        lock(&self.parked).is_some()
    }

    fn wake(&self) {
        let parked = lock(&self.parked).take();
        if let Some(Parked { actor, rx }) = parked {
            let span = info_span!("ml_writer", ml = %actor.shared.name);
            tokio::spawn(actor.run(rx).instrument(span));
        }
    }
}

/// Starts the write actor of `shared` over `writer` (the new current ledger, already in
/// `record` as stored at `version`; `Err`: none could be created, the actor keeps trying with
/// backoff); returns its command queue.
pub(super) fn spawn(
    shared: Arc<Shared>,
    list: LedgerList,
    record: ManagedLedgerRecord,
    version: Version,
    writer: Result<LedgerWriter, LedgerError>,
) -> Commands {
    let (tx, rx) = mpsc::channel(shared.config.max_pending_appends.clamp(1, 4096));
    let parked = Arc::new(Mutex::new(None));
    let (writer, failure) = match writer {
        Ok(w) => (Some(w), None),
        Err(e) => (None, Some(e)),
    };
    let current_created = shared.clock.now();
    let current_created_ms = shared.clock.now_ms();
    let mut actor = Actor {
        shared,
        list,
        record,
        version,
        writer,
        current_created,
        current_created_ms,
        enqueued_entries: 0,
        enqueued_bytes: 0,
        inflight: FuturesOrdered::new(),
        deferred: None,
        roll_needed: false,
        retry_at: None,
        backoff: Duration::ZERO,
        last_error: None,
        suspended: false,
        unsealed: None,
        parked_slot: Arc::downgrade(&parked),
    };
    if let Some(e) = failure {
        // Opened for reading; the first ledger is created once bookies allow it.
        actor.roll_needed = true;
        actor.note_ledger_failure(e);
    }
    let commands = Commands { tx, parked };
    if actor.roll_needed {
        // Retrying the first ledger is work: run now.
        let span = info_span!("ml_writer", ml = %actor.shared.name);
        tokio::spawn(actor.run(rx).instrument(span));
    } else {
        *lock(&commands.parked) = Some(Parked { actor, rx });
    }
    commands
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
    list: LedgerList,
    /// The record as stored at `version`.
    record: ManagedLedgerRecord,
    version: Version,
    writer: Option<LedgerWriter>,
    current_created: Instant,
    /// The same instant as wall time (ms), for the age limit the factory's task watches.
    current_created_ms: u64,
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
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: Option<LedgerError>,
    /// `suspend_appends_after_failure`: a write failed; appends are refused until `Resume`.
    suspended: bool,
    /// The previous current ledger, whose writer broke and whose recovery failed too (bookies
    /// unreachable): sealing is retried at the next rollover. Until then the record still
    /// lists it open, without its length — it must not be recorded like that.
    unsealed: Option<LedgerId>,
    /// Where the actor parks when idle; gone once the managed ledger is dropped.
    parked_slot: Weak<Mutex<Option<Parked>>>,
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

    async fn run(mut self, mut rx: mpsc::Receiver<Box<Command>>) {
        let clock = Arc::clone(&self.shared.clock);
        let max = self.shared.config.max_pending_appends;
        loop {
            if self.roll_needed && self.status() != Status::Open {
                // Fenced (another owner) or closed: no rollover will ever run, and a pending
                // one must not keep the actor from parking or taking commands (which it
                // refuses) — with it set and the backoff over, no branch below was enabled
                // and the loop spun, holding a runtime thread for good (found by the chaos
                // soak: a broker stopped serving after an etcd cut).
                self.roll_needed = false;
            }
            if self.inflight.is_empty() {
                if let Some(done) = self.deferred.take() {
                    let r = Box::pin(self.close_current()).await;
                    let _ = done.send(r);
                    break;
                }
                if self.roll_needed && self.status() == Status::Open && !self.backing_off() {
                    self.roll_needed = false;
                    if let Err(e) = Box::pin(self.rollover_with_backoff()).await {
                        warn!(error = %e, "rollover failed");
                    }
                }
            }
            if self.inflight.is_empty()
                && self.deferred.is_none()
                && !self.roll_needed
                && let Some(slot) = self.parked_slot.upgrade()
            {
                // Idle: park unless a command arrived. Senders queue before they look for a
                // parked actor and both sides look under the slot's lock, so a command queued
                // meanwhile is either taken here or finds the actor parked.
                let next = {
                    let mut parked = lock(&slot);
                    match rx.try_recv() {
                        Ok(cmd) => Some(cmd),
                        Err(TryRecvError::Empty) => {
                            *parked = Some(Parked { actor: self, rx });
                            return;
                        }
                        Err(TryRecvError::Disconnected) => None,
                    }
                };
                match next {
                    Some(cmd) => self.on_command(*cmd).await,
                    None => self.deferred = Some(oneshot::channel().0),
                }
                continue;
            }
            let backing_off = self.backing_off();
            // While backing off, appends are taken and refused at once rather than left waiting.
            let accepting = self.deferred.is_none()
                && (!self.roll_needed || backing_off)
                && self.inflight.len() < max;
            let retry_at = self.retry_at;
            tokio::select! {
                // Made only when polled: no timer per loop while not backing off.
                _ = async { clock.sleep_until(retry_at.unwrap_or_else(|| clock.now())).await },
                    if self.roll_needed && backing_off => {}
                cmd = rx.recv(), if accepting => match cmd {
                    Some(cmd) => self.on_command(*cmd).await,
                    None => {
                        self.deferred = Some(oneshot::channel().0);
                    }
                },
                Some((ledger, len, payload, result, done)) = self.inflight.next(),
                    if !self.inflight.is_empty() => {
                    self.on_completion(ledger, len, payload, result, done).await;
                }
                // The backoff ended between the check at the top and `backing_off` above: no
                // branch is enabled, and the next turn of the loop rolls over.
                else => {}
            }
        }
        rx.close();
        while let Some(cmd) = rx.recv().await {
            self.refuse(*cmd);
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
            Command::Resume { done } | Command::SetProperty { done, .. } => {
                let _ = done.send(Err(err));
            }
            Command::UpdateLedger { done, .. } => {
                let _ = done.send(Err(err));
            }
            Command::RollIfAged => {}
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        if self.status() != Status::Open {
            return self.refuse(cmd);
        }
        match cmd {
            Command::Append { payload, done } => self.append(payload, done).await,
            Command::Trim { slowest, done } => {
                let r = Box::pin(self.trim(slowest)).await;
                let _ = done.send(r);
            }
            Command::Close { done } => self.deferred = Some(done),
            Command::SetProperty { key, value, done } => {
                let mut next = self.record.clone();
                next.properties.insert(key, value);
                let r = Box::pin(self.write_record(next)).await;
                if r.is_ok() {
                    self.shared.state().properties = self.record.properties.clone();
                }
                let _ = done.send(r);
            }
            Command::Resume { done } => {
                if self.suspended {
                    info!("appends resumed");
                }
                self.suspended = false;
                let _ = done.send(Ok(()));
            }
            Command::UpdateLedger {
                ledger,
                update,
                done,
            } => {
                let r = Box::pin(self.update_ledger(ledger, update)).await;
                let _ = done.send(r);
            }
            Command::RollIfAged => {
                if self.enqueued_entries > 0 && self.aged() {
                    self.roll_needed = true;
                    self.shared.roll_due_ms.store(u64::MAX, Ordering::Release);
                }
            }
        }
    }

    /// The current ledger reached its age limit.
    fn aged(&self) -> bool {
        self.shared.clock.now_ms() >= self.age_due_ms()
    }

    fn age_due_ms(&self) -> u64 {
        self.current_created_ms
            .saturating_add(self.shared.config.ledger_age_ms_max.max(1))
    }

    /// The current ledger took its first entry: from now on its age counts. Past the limit
    /// already, it rolls over once this entry completes; otherwise the factory's periodic task
    /// is told when.
    fn arm_age_limit(&mut self) {
        if self.aged() {
            self.roll_needed = true;
        } else {
            let due = self.age_due_ms();
            self.shared.roll_due_ms.store(due, Ordering::Release);
            self.shared.timers.due_at(due);
        }
    }

    /// True while the backoff after a ledger failure runs.
    fn backing_off(&self) -> bool {
        self.retry_at.is_some_and(|at| self.shared.clock.now() < at)
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

    /// A ledger failed: wait longer before the next attempt. Until a ledger takes writes again
    /// the managed ledger reports itself unwritable (the broker refuses producers with the
    /// reason, so clients back off instead of cycling).
    fn note_ledger_failure(&mut self, error: LedgerError) {
        self.backoff = (self.backoff * 2).clamp(CREATE_BACKOFF_MIN, CREATE_BACKOFF_MAX);
        self.retry_at = Some(self.shared.clock.now() + self.backoff);
        self.shared.state().unwritable = Some(error.to_string());
        self.last_error = Some(error);
    }

    /// A ledger was created after a failure: producers may come back. The backoff keeps its
    /// length until an entry is written — bookies that take a new ledger but refuse its adds
    /// (full disks the registrations do not show yet) must not make a loop without a pause.
    fn note_ledger_created(&mut self) {
        self.retry_at = None;
        let mut st = self.shared.state();
        if st.unwritable.take().is_some() {
            info!("a new ledger is open: producers may write again");
        }
    }

    /// An entry was written: the failures are over. (Called per entry: free unless they were.)
    fn note_writable(&mut self) {
        if self.backoff.is_zero() && self.retry_at.is_none() {
            return;
        }
        self.backoff = Duration::ZERO;
        self.retry_at = None;
        let mut st = self.shared.state();
        if st.unwritable.take().is_some() {
            info!("writable again");
        }
    }

    /// Rolls over (creating the next ledger) unless a failure's backoff runs.
    async fn rollover_with_backoff(&mut self) -> MlResult<()> {
        if self.backing_off() {
            return Err(self.backoff_error());
        }
        let result = self.rollover().await;
        if self.writer.is_some() {
            self.note_ledger_created();
        } else {
            let error = match &result {
                Err(ManagedLedgerError::Ledger(e)) => e.clone(),
                _ => LedgerError::NotEnoughBookies {
                    needed: self.shared.config.ensemble_size as usize,
                    available: 0,
                },
            };
            self.note_ledger_failure(error);
            // Retried by the actor itself once the backoff ends: producers are refused while
            // the managed ledger is unwritable, so no append would come to trigger it.
            self.roll_needed = true;
        }
        result
    }

    async fn append(&mut self, payload: Bytes, done: oneshot::Sender<MlResult<Position>>) {
        if self.suspended {
            let _ = done.send(Err(ManagedLedgerError::AppendsSuspended(self.name())));
            return;
        }
        // Taken while backing off; the backoff may have ended since (the loop rolls over next):
        // either way the failed writer must not get it.
        if self.roll_needed && self.retry_at.is_some() {
            let _ = done.send(Err(self.backoff_error()));
            return;
        }
        if self.writer.is_none()
            && let Err(e) = Box::pin(self.rollover_with_backoff()).await
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
                if self.enqueued_entries == 1 {
                    self.arm_age_limit();
                }
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
        // A fenced ledger is no proof of a new owner: auto-recovery also fences (and closes)
        // an open ledger that lost a replica while idle. The rollover that follows decides —
        // its CAS of the record conflicts if another broker took the managed ledger.
        {
            warn!(error = %e, "append failed: the ledger will be replaced");
            if self.shared.config.suspend_appends_after_failure && !self.suspended {
                warn!("appends suspended until the owner resumes them");
                self.suspended = true;
            }
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
        self.note_writable();
        self.shared.cache.insert(pos, payload.clone()).await;
        {
            let mut st = self.shared.state();
            // The current ledger is the last: search from the end.
            if let Some(info) = st.ledgers.iter_mut().rev().find(|l| l.ledger_id == ledger) {
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
        if self.status() == Status::Fenced {
            // Fenced by a conflict or abandoned (lease lost): the record is another owner's.
            return Err(ManagedLedgerError::Fenced(self.name()));
        }
        match self
            .list
            .write(&next, Expected::Version(self.version))
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
            Err(ManagedLedgerError::Metadata(e)) if e.is_indeterminate() => {
                match self.list.load().await? {
                    Some((stored, v)) if stored == next => {
                        self.record = next;
                        self.version = v;
                        Ok(())
                    }
                    _ => Err(ManagedLedgerError::Metadata(e)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Closes the current writer and returns the record with that ledger closed (not written).
    async fn seal_current(&mut self) -> MlResult<ManagedLedgerRecord> {
        let mut next = self.record.clone();
        let (id, meta) = if let Some(writer) = self.writer.take() {
            let id = writer.id();
            match writer.close().await {
                Ok(meta) => (id, meta),
                Err(e) => {
                    // The writer broke: recover our own ledger to learn what it holds.
                    warn!(ledger = %id, error = %e, "close failed; recovering the ledger");
                    drop(writer);
                    self.unsealed = Some(id);
                    (
                        id,
                        recover_ledger(&self.shared.client, id).await?.metadata(),
                    )
                }
            }
        } else if let Some(id) = self.unsealed {
            // An earlier seal could not learn what the ledger holds: try again.
            (
                id,
                recover_ledger(&self.shared.client, id).await?.metadata(),
            )
        } else {
            return Ok(next);
        };
        self.unsealed = None;
        if let Some(info) = next.ledgers.iter_mut().rev().find(|l| l.ledger_id == id) {
            info.entries = u64::try_from(meta.last_entry_id + 1).unwrap_or(0);
            info.size_bytes = meta.length_bytes;
            info.state = LedgerRecordState::Closed;
            info.closed_ms = Some(self.shared.clock.now_ms());
        }
        Ok(next)
    }

    /// Closes the current ledger (if any), creates the next and records both with one CAS.
    async fn rollover(&mut self) -> MlResult<()> {
        let span = info_span!("ml_rollover", ledger = ?self.writer.as_ref().map(|w| w.id()));
        async {
            let old = self.writer.as_ref().map(LedgerWriter::id).or(self.unsealed);
            let mut next = self.seal_current().await?;
            let created = create_ledger(
                &self.shared.client,
                self.shared.config.ledger_config(&self.shared.name),
            )
            .await;
            let mut create_error = None;
            let writer = match created {
                Ok(w) => {
                    crash_point::reached(crash_point::ROLLOVER_LEDGER_CREATED);
                    next.ledgers
                        .push(open_info(w.id(), self.shared.clock.now_ms()));
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
            self.current_created = self.shared.clock.now();
            self.current_created_ms = self.shared.clock.now_ms();
            self.shared.roll_due_ms.store(u64::MAX, Ordering::Release);
            self.enqueued_entries = 0;
            self.enqueued_bytes = 0;
            if old.is_some() {
                // A ledger closed: the offload thresholds may select it (Pulsar checks them at
                // rollover too). The factory's task looks at its next walk.
                self.shared.offload_check.store(true, Ordering::Release);
                self.shared.timers.due_at(self.shared.clock.now_ms());
            }
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

    /// Close: seal the current ledger; a fenced managed ledger only stops. The record is left
    /// as it is (the ledger listed open, as Pulsar leaves it in the managed ledger's metadata):
    /// the next owner reads the sealed ledger's length from its metadata in the round it reads
    /// the record, without fencing anything — one metadata write less for every topic a
    /// handover quiesces.
    async fn close_current(&mut self) -> MlResult<()> {
        let result = if self.status() == Status::Open {
            self.seal_current().await.map(|next| self.record = next)
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

    /// Applies `update` to closed ledger `ledger` of the record and stores it.
    async fn update_ledger(
        &mut self,
        ledger: LedgerId,
        update: crate::ledger::LedgerUpdate,
    ) -> MlResult<LedgerInfo> {
        let mut next = self.record.clone();
        let at = next
            .ledgers
            .binary_search_by_key(&ledger, |l| l.ledger_id)
            .map_err(|_| ManagedLedgerError::Ledger(LedgerError::NoSuchLedger(ledger)))?;
        let info = &mut next.ledgers[at];
        if info.state != LedgerRecordState::Closed {
            return Err(ManagedLedgerError::InvalidState(format!(
                "ledger {ledger} of {} is not closed",
                self.name()
            )));
        }
        update(info)?;
        let updated = info.clone();
        self.write_record(next).await?;
        let mut st = self.shared.state();
        if let Ok(i) = st.ledgers.binary_search_by_key(&ledger, |l| l.ledger_id) {
            st.ledgers[i] = updated.clone();
        }
        Ok(updated)
    }

    async fn trim(&mut self, slowest: Option<Position>) -> MlResult<Vec<LedgerId>> {
        let cfg = &self.shared.config;
        if cfg.retention_time_ms == -1 && cfg.retention_size_bytes == -1 {
            return Ok(Vec::new());
        }
        let now = self.shared.clock.now_ms();
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
        // Trimmed ledgers are a prefix of the list (a set, so lists of any length stay cheap).
        let removed: std::collections::HashSet<LedgerId> = remove.iter().copied().collect();
        let mut next = self.record.clone();
        next.ledgers.retain(|l| !removed.contains(&l.ledger_id));
        self.write_record(next).await?;
        {
            let mut st = self.shared.state();
            st.ledgers.retain(|l| !removed.contains(&l.ledger_id));
        }
        info!(ledgers = ?remove, "trimmed consumed ledgers");
        Ok(remove)
    }
}
