//! [`LedgerWriter`]: appends to an open ledger. One task per ledger owns all of the writer's
//! state (an actor fed by a queue, so no lock is ever held across an await):
//!
//! - entry e goes to ensemble positions (e+i) mod E for i < Qw, carrying the writer's LAC;
//! - an add completes when Qa bookies of its write set acked it *and* every earlier entry
//!   completed, so completions come strictly in entry order;
//! - a bookie that fails an add (or times out) is replaced: placement picks a new bookie, the
//!   new ensemble is recorded with CAS from the first entry not yet completed (LAC+1), and the
//!   pending entries whose write set changed are re-sent there;
//! - a `Fenced` answer, or metadata showing the ledger is no longer open, fails every pending and
//!   later append with [`LedgerError::Fenced`];
//! - at most `max_pending_adds` appends are pending: `append` waits for room (backpressure).
//!
//! The task runs only while there is work: with nothing pending and nothing queued the actor
//! parks itself in the writer (no task, no timer) and the next append or close spawns it again.
//! A broker holds one open ledger per topic, so most idle topics' ledgers cost no task.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use magnetar_metadata::{EntryId, LedgerId, Version};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{Instrument, debug, info, info_span, warn};

use super::Shared;
use super::error::{LedgerError, LedgerResult};
use super::metadata::{LedgerMetadata, LedgerState, write_set};
use super::placement::replace_failed;
use crate::api::{BookieClient, BookieError, BookieId, BookieResult, Entry, NO_ENTRY};

/// Writes one ledger. Dropping it without [`LedgerWriter::close`] leaves the ledger open (a
/// reader must recover it); appends already accepted still complete.
#[derive(Debug)]
pub struct LedgerWriter {
    id: LedgerId,
    /// Boxed: an idle ledger's channel then holds a block of pointers, not of 56-byte
    /// commands (tokio allocates a channel's first block of 32 slots up front).
    commands: mpsc::UnboundedSender<Box<Command>>,
    room: Arc<Semaphore>,
    lac: Arc<AtomicI64>,
    /// The actor and its queue while it has nothing to do (no task runs then). Whoever queues
    /// a command takes them out and spawns the task; the actor puts itself back when idle.
    parked: Arc<Mutex<Option<Parked>>>,
}

struct Parked {
    actor: Actor,
    rx: mpsc::UnboundedReceiver<Box<Command>>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parked")
            .field("ledger", &self.actor.id)
            .finish()
    }
}

/// The completion of one append: resolves to the entry's id once it is durable on an ack quorum
/// and every earlier entry is too. Handles of one writer resolve in entry order.
#[derive(Debug)]
pub struct AddHandle {
    ledger: LedgerId,
    rx: oneshot::Receiver<LedgerResult<EntryId>>,
}

impl Future for AddHandle {
    type Output = LedgerResult<EntryId>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let ledger = self.ledger;
        self.rx
            .poll_unpin(cx)
            .map(|r| r.unwrap_or(Err(LedgerError::WriterStopped(ledger))))
    }
}

enum Command {
    Append {
        payload: Bytes,
        done: oneshot::Sender<LedgerResult<EntryId>>,
        permit: OwnedSemaphorePermit,
    },
    Close {
        done: oneshot::Sender<LedgerResult<LedgerMetadata>>,
    },
}

impl LedgerWriter {
    pub(crate) fn start(
        shared: Arc<Shared>,
        id: LedgerId,
        meta: LedgerMetadata,
        version: Version,
    ) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(shared.options.max_pending_adds.max(1)));
        let lac = Arc::new(AtomicI64::new(NO_ENTRY));
        let clients = clients_for(&shared, &meta);
        let parked = Arc::new(Mutex::new(None));
        let actor = Actor {
            shared,
            id,
            meta,
            version,
            clients,
            next_entry: 0,
            lac: NO_ENTRY,
            length: 0,
            sent_length: 0,
            pending: VecDeque::new(),
            inflight: FuturesUnordered::new(),
            failed: HashSet::new(),
            broken: None,
            closing: Vec::new(),
            closed: None,
            close_requested: false,
            shared_lac: Arc::clone(&lac),
            parked_slot: Arc::downgrade(&parked),
        };
        // Parked from the start: a ledger that is never written never runs a task.
        *lock(&parked) = Some(Parked { actor, rx });
        LedgerWriter {
            id,
            commands,
            room,
            lac,
            parked,
        }
    }

    /// Runs the actor if it is parked (after a command was queued for it).
    fn wake(&self) {
        let parked = lock(&self.parked).take();
        if let Some(Parked { actor, rx }) = parked {
            let span = info_span!("ledger_writer", ledger = %self.id);
            tokio::spawn(actor.run(rx).instrument(span));
        }
    }

    pub fn id(&self) -> LedgerId {
        self.id
    }

    /// Whether the writer's task is parked (nothing pending, no task running).
    pub fn is_idle(&self) -> bool {
        lock(&self.parked).is_some()
    }

    /// The last entry completed (-1: none yet).
    pub fn last_add_confirmed(&self) -> i64 {
        self.lac.load(Ordering::Acquire)
    }

    /// Queues `payload` as the next entry. Returns once the writer has room for it (at most
    /// `max_pending_adds` pending); the returned handle resolves when the entry is confirmed.
    /// Entries are numbered in the order `append` calls return; await the handles (in any
    /// order) to learn the outcome — many may be in flight at once.
    pub async fn append(&self, payload: Bytes) -> LedgerResult<AddHandle> {
        let permit = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_| LedgerError::WriterStopped(self.id))?;
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Box::new(Command::Append {
                payload,
                done,
                permit,
            }))
            .map_err(|_| LedgerError::WriterStopped(self.id))?;
        self.wake();
        Ok(AddHandle {
            ledger: self.id,
            rx,
        })
    }

    /// Appends and waits for the confirmation.
    pub async fn append_wait(&self, payload: Bytes) -> LedgerResult<EntryId> {
        self.append(payload).await?.await
    }

    /// Waits for every pending append, then seals the ledger: state closed, last entry = LAC,
    /// length = bytes confirmed. Appends after `close` fail with [`LedgerError::LedgerClosed`].
    /// Returns the closed ledger's metadata; closing again returns it again.
    pub async fn close(&self) -> LedgerResult<LedgerMetadata> {
        let (done, rx) = oneshot::channel();
        self.commands
            .send(Box::new(Command::Close { done }))
            .map_err(|_| LedgerError::WriterStopped(self.id))?;
        self.wake();
        rx.await.unwrap_or(Err(LedgerError::WriterStopped(self.id)))
    }
}

fn lock(parked: &Mutex<Option<Parked>>) -> std::sync::MutexGuard<'_, Option<Parked>> {
    parked.lock().unwrap_or_else(|p| p.into_inner())
}

fn clients_for(shared: &Shared, meta: &LedgerMetadata) -> Vec<Arc<dyn BookieClient>> {
    meta.last_ensemble()
        .bookies
        .iter()
        .map(|b| shared.registry.client(b))
        .collect()
}

struct Pending {
    entry: Entry,
    /// Bookies that acknowledged it (only those still in its write set count).
    acks: Vec<BookieId>,
    done: Option<oneshot::Sender<LedgerResult<EntryId>>>,
    _permit: OwnedSemaphorePermit,
}

struct AddOutcome {
    entry: u64,
    bookie: BookieId,
    result: BookieResult<()>,
}

struct Actor {
    shared: Arc<Shared>,
    id: LedgerId,
    meta: LedgerMetadata,
    version: Version,
    /// Clients of the current (last) ensemble, by position.
    clients: Vec<Arc<dyn BookieClient>>,
    next_entry: u64,
    lac: i64,
    /// Payload bytes confirmed (entries 0..=LAC).
    length: u64,
    /// Payload bytes sent (entries 0..next_entry): each entry carries it, so recovery learns
    /// the ledger's length from the last entry it finds.
    sent_length: u64,
    /// Entries LAC+1 .. next_entry, in order.
    pending: VecDeque<Pending>,
    inflight: FuturesUnordered<BoxFuture<'static, AddOutcome>>,
    /// Bookies that failed an add; never chosen again by this writer.
    failed: HashSet<BookieId>,
    /// Set once the writer can add no more (fenced, out of bookies, metadata failure).
    broken: Option<LedgerError>,
    /// Close requests waiting for the pending entries.
    closing: Vec<oneshot::Sender<LedgerResult<LedgerMetadata>>>,
    closed: Option<LedgerMetadata>,
    /// Set by the first `close`: later appends are refused even if sealing fails.
    close_requested: bool,
    shared_lac: Arc<AtomicI64>,
    /// Where the actor parks when idle (the writer's); gone once the writer is dropped.
    parked_slot: Weak<Mutex<Option<Parked>>>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Box<Command>>) {
        let mut rx_open = true;
        loop {
            if !self.closing.is_empty() && (self.pending.is_empty() || self.broken.is_some()) {
                Box::pin(self.finish_close()).await;
            }
            if !rx_open && self.pending.is_empty() {
                break;
            }
            if rx_open
                && self.pending.is_empty()
                && self.inflight.is_empty()
                && self.closing.is_empty()
                && let Some(slot) = self.parked_slot.upgrade()
            {
                // Idle: park, unless a command arrived. Senders queue before they look for a
                // parked actor, and both sides hold the slot's lock to look, so a command
                // queued meanwhile is either seen here or finds the actor parked.
                let mut parked = lock(&slot);
                match rx.try_recv() {
                    Ok(cmd) => {
                        drop(parked);
                        self.on_command(*cmd);
                        continue;
                    }
                    Err(TryRecvError::Empty) => {
                        *parked = Some(Parked { actor: self, rx });
                        return;
                    }
                    Err(TryRecvError::Disconnected) => rx_open = false,
                }
            }
            tokio::select! {
                cmd = rx.recv(), if rx_open => match cmd {
                    Some(cmd) => self.on_command(*cmd),
                    None => rx_open = false,
                },
                Some(outcome) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.on_outcome(outcome).await;
                }
                else => {
                    // Pending entries with nothing in flight cannot complete.
                    self.break_with(LedgerError::WriterStopped(self.id));
                    break;
                }
            }
        }
        debug!("writer stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Append {
                payload,
                done,
                permit,
            } => {
                if let Some(e) = &self.broken {
                    let _ = done.send(Err(e.clone()));
                    return;
                }
                if self.close_requested {
                    let _ = done.send(Err(LedgerError::LedgerClosed(self.id)));
                    return;
                }
                self.sent_length += payload.len() as u64;
                let entry = Entry::with_length(
                    self.id,
                    EntryId(self.next_entry),
                    self.lac,
                    Some(self.sent_length),
                    payload,
                );
                self.next_entry += 1;
                for pos in write_set(
                    entry.entry.0,
                    self.meta.ensemble_size,
                    self.meta.write_quorum,
                ) {
                    self.send(&entry, pos);
                }
                self.pending.push_back(Pending {
                    entry,
                    acks: Vec::new(),
                    done: Some(done),
                    _permit: permit,
                });
            }
            Command::Close { done } => {
                self.close_requested = true;
                if let Some(meta) = &self.closed {
                    let _ = done.send(Ok(meta.clone()));
                } else {
                    self.closing.push(done);
                }
            }
        }
    }

    /// Sends `entry` to the bookie at `pos` of the current ensemble.
    fn send(&mut self, entry: &Entry, pos: usize) {
        let (Some(client), Some(bookie)) = (
            self.clients.get(pos).cloned(),
            self.meta.last_ensemble().bookies.get(pos).cloned(),
        ) else {
            return;
        };
        let entry = entry.clone();
        let limit = self.shared.options.add_timeout();
        let timer = self.shared.options.clock.sleep(limit);
        self.inflight.push(Box::pin(async move {
            let id = entry.entry.0;
            let result = Shared::call(limit, timer, client.add(entry, false)).await;
            AddOutcome {
                entry: id,
                bookie,
                result,
            }
        }));
    }

    async fn on_outcome(&mut self, out: AddOutcome) {
        if self.broken.is_some() {
            return;
        }
        match out.result {
            Ok(()) => {
                self.shared.registry.mark_ok(&out.bookie);
                let Some(first) = self.pending.front().map(|p| p.entry.entry.0) else {
                    return;
                };
                if out.entry < first {
                    return;
                }
                let idx = (out.entry - first) as usize;
                if let Some(p) = self.pending.get_mut(idx)
                    && !p.acks.contains(&out.bookie)
                {
                    p.acks.push(out.bookie);
                }
                self.complete_ready();
            }
            Err(BookieError::Fenced(_)) => {
                info!(entry = out.entry, bookie = %out.bookie, "writer fenced by a bookie");
                self.break_with(LedgerError::Fenced(self.id));
            }
            Err(e) if e.is_bookie_failure() => {
                warn!(entry = out.entry, bookie = %out.bookie, error = %e, "bookie failed an add");
                self.shared.registry.mark_failed(&out.bookie);
                self.failed.insert(out.bookie.clone());
                if self.meta.last_ensemble().bookies.contains(&out.bookie) {
                    Box::pin(self.change_ensemble()).await;
                }
            }
            Err(e) => {
                warn!(entry = out.entry, bookie = %out.bookie, error = %e, "add refused");
                self.break_with(LedgerError::Bookie {
                    bookie: out.bookie,
                    error: e,
                });
            }
        }
    }

    /// Completes entries from the head of the queue while they have an ack quorum.
    fn complete_ready(&mut self) {
        let qa = self.meta.ack_quorum as usize;
        while let Some(front) = self.pending.front() {
            let ws = self.meta.write_set_bookies(front.entry.entry.0);
            let acked = front.acks.iter().filter(|b| ws.contains(b)).count();
            if acked < qa {
                break;
            }
            let Some(mut p) = self.pending.pop_front() else {
                break;
            };
            self.lac = p.entry.entry.0 as i64;
            self.length += p.entry.payload.len() as u64;
            // Published before the handle resolves: a completed entry is always within the LAC.
            self.shared_lac.store(self.lac, Ordering::Release);
            if let Some(done) = p.done.take() {
                let _ = done.send(Ok(p.entry.entry));
            }
        }
    }

    /// Fails every pending entry and every later append with `error`.
    fn break_with(&mut self, error: LedgerError) {
        for mut p in self.pending.drain(..) {
            if let Some(done) = p.done.take() {
                let _ = done.send(Err(error.clone()));
            }
        }
        self.inflight = FuturesUnordered::new();
        self.broken = Some(error);
    }

    /// Replaces the failed bookies of the current ensemble, records the new ensemble from LAC+1
    /// with CAS and re-sends pending entries to the replacements.
    async fn change_ensemble(&mut self) {
        let attempts = self.shared.options.ensemble_change_attempts_max.max(1);
        for _ in 0..attempts {
            let current = self.meta.last_ensemble().bookies.clone();
            if !current.iter().any(|b| self.failed.contains(b)) {
                return;
            }
            let registered = match self.shared.registry.registered().await {
                Ok(r) => r,
                Err(e) => return self.break_with(e),
            };
            let next = match replace_failed(
                &registered,
                &current,
                &self.failed,
                &self.shared.options.random,
            ) {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %e, "no replacement bookie: writer stops");
                    return self.break_with(e);
                }
            };
            let first = (self.lac + 1) as u64;
            let mut proposed = self.meta.clone();
            proposed.set_ensemble_from(first, next.clone());
            let outcome = self
                .shared
                .ledgers
                .write(self.id, &proposed, self.version)
                .await;
            match outcome {
                Ok(Some(version)) => return self.adopt(proposed, version, &current),
                Ok(None) => {}
                Err(LedgerError::Metadata(e)) if e.is_indeterminate() || e.is_retryable() => {}
                Err(e) => return self.break_with(e),
            }
            // Someone else wrote the record (a recovering reader), or our write's fate is unknown.
            match self.shared.ledgers.read(self.id).await {
                Ok((meta, version)) => {
                    if meta.state != LedgerState::Open {
                        info!(state = ?meta.state, "ledger no longer open: writer fenced");
                        return self.break_with(LedgerError::Fenced(self.id));
                    }
                    if meta == proposed {
                        return self.adopt(proposed, version, &current);
                    }
                    let old = self.meta.last_ensemble().bookies.clone();
                    self.meta = meta;
                    self.version = version;
                    if self.meta.last_ensemble().bookies != old {
                        self.clients = clients_for(&self.shared, &self.meta);
                    }
                }
                Err(e) => return self.break_with(e),
            }
        }
        self.break_with(LedgerError::NotEnoughReplicas {
            ledger: self.id,
            context: format!("ensemble change did not settle after {attempts} attempts"),
        });
    }

    fn adopt(&mut self, meta: LedgerMetadata, version: Version, previous: &[BookieId]) {
        info!(from_entry = self.lac + 1, ensemble = ?meta.last_ensemble().bookies,
            "ensemble changed");
        self.meta = meta;
        self.version = version;
        self.clients = clients_for(&self.shared, &self.meta);
        let current = self.meta.last_ensemble().bookies.clone();
        let resend: Vec<(Entry, usize)> = self
            .pending
            .iter()
            .flat_map(|p| {
                write_set(
                    p.entry.entry.0,
                    self.meta.ensemble_size,
                    self.meta.write_quorum,
                )
                .into_iter()
                .filter(|&pos| previous.get(pos) != current.get(pos))
                .map(|pos| (p.entry.clone(), pos))
                .collect::<Vec<_>>()
            })
            .collect();
        for (entry, pos) in resend {
            self.send(&entry, pos);
        }
        self.complete_ready();
    }

    /// Seals the ledger once nothing is pending (or the writer is broken).
    async fn finish_close(&mut self) {
        let result = match self.broken.clone() {
            // Someone else is recovering the ledger: its close decides the length.
            Some(e @ LedgerError::Fenced(_)) => Err(e),
            // Out of bookies, or an add refused: every entry past the LAC has been failed to
            // its caller, so the ledger is sealed at the LAC by CAS, as BookKeeper's handle
            // does. Recovery instead would need writable bookies to re-replicate a tail nobody
            // was promised (and would keep it, duplicating what producers resend).
            _ => self.write_closed().await,
        };
        if let Ok(meta) = &result {
            self.closed = Some(meta.clone());
            info!(
                last_entry = meta.last_entry_id,
                length_bytes = meta.length_bytes,
                "ledger closed"
            );
        }
        for done in self.closing.drain(..) {
            let _ = done.send(result.clone());
        }
    }

    async fn write_closed(&mut self) -> LedgerResult<LedgerMetadata> {
        for _ in 0..self.shared.options.ensemble_change_attempts_max.max(1) {
            let mut sealed = self.meta.clone();
            sealed.state = LedgerState::Closed;
            sealed.last_entry_id = self.lac;
            sealed.length_bytes = self.length;
            match self
                .shared
                .ledgers
                .write(self.id, &sealed, self.version)
                .await
            {
                Ok(Some(version)) => {
                    self.meta = sealed.clone();
                    self.version = version;
                    return Ok(sealed);
                }
                Ok(None) => {}
                Err(LedgerError::Metadata(e)) if e.is_indeterminate() || e.is_retryable() => {}
                Err(e) => return Err(e),
            }
            let (meta, version) = self.shared.ledgers.read(self.id).await?;
            match meta.state {
                LedgerState::Closed if meta.last_entry_id == self.lac => return Ok(meta),
                LedgerState::Open => {
                    self.meta = meta;
                    self.version = version;
                }
                _ => {
                    self.broken = Some(LedgerError::Fenced(self.id));
                    return Err(LedgerError::Fenced(self.id));
                }
            }
        }
        Err(LedgerError::NotEnoughReplicas {
            ledger: self.id,
            context: "closing raced with other metadata writers too often".into(),
        })
    }
}
