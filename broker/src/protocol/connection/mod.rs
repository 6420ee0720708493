//! One client connection speaking the Pulsar binary protocol.
//!
//! Shape: one **reader loop** decodes frames ([`PulsarCodec`], with the broker's message size
//! limit) and handles them; one **writer task** drains a bounded queue of outgoing frames
//! ([`ConnTx`]) into the socket, flushing when the queue runs dry. Whoever queues a frame waits
//! when the queue is full — that is the backpressure from a slow client to dispatchers and
//! receipts. No lock is held across an `.await`.
//!
//! SEND is handled inline, in frame order: checksum check (a bad one answers SEND_ERROR
//! `ChecksumError`), then the bytes after the command are appended **unchanged** to the managed
//! ledger, and the append's completion handle is queued to the producer's receipt task, which
//! awaits handles in order — so SEND_RECEIPTs go out strictly in order per producer. Request-style
//! commands (LOOKUP, PRODUCER, SUBSCRIBE, SEEK, …) run in their own tasks so a slow one (a topic
//! load, a WaitForExclusive producer) does not stall the connection.
//!
//! A malformed or oversized frame (before CONNECTED: anything over 64 KiB), a protocol
//! violation or a dead peer (idle for the keep-alive interval, pinged, and then nothing at all
//! received for another interval) closes this connection only, with the reason logged; its
//! producers and consumers are detached (unacked messages go back to their subscriptions).
//!
//! This file holds the loops and the dispatch of frames; `producer.rs` producers, SEND and
//! receipts, `consumer.rs` consumers, acks and seeks, `lookup.rs` topic lookups and schemas.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::command_ack::AckType;
use magnetar_proto::pulsar::api::command_lookup_topic_response::LookupType;
use magnetar_proto::pulsar::api::command_subscribe::{InitialPosition as WireInitial, SubType};
use magnetar_proto::pulsar::api::{
    BaseCommand, CommandAck, CommandProducer, CommandSeek, CommandSubscribe, MessageIdData,
    ProducerAccessMode, ServerError,
};
use magnetar_proto::pulsar::{Frame, MessageFrame, PROTOCOL_VERSION, PulsarCodec, commands};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use magnetar_metadata::clock::Interval;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::error::{BrokerError, BrokerResult};
use crate::protocol::consumer_stats;
use crate::service::BrokerService;
use crate::subscription::key_shared::KeySharedPolicy;
use crate::subscription::{
    AckedId, ConsumerSink, ConsumerSpec, NotQueued, SeekTarget, Subscription, entry_info,
};
use crate::topic::dedup::{self, Ticket, Verdict};
use crate::topic::{ProducerSink, ProducerSpec, StartAt, Topic};
use crate::topic_name::{NamespaceName, TopicName};
use magnetar_managed_ledger::{AppendHandle, InitialPosition, Position, batch_acks};

mod consumer;
mod lookup;
mod producer;

/// Time a new connection has to send CONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame accepted before CONNECTED: room for a CONNECT with an authentication token
/// or certificate chain, far below a message's size.
const HANDSHAKE_FRAME_SIZE_MAX: usize = 64 * 1024;
/// Read buffer of a new connection (it grows for larger frames after CONNECTED).
const HANDSHAKE_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames written per flush at most.
const WRITE_BATCH: usize = 256;

/// A frame on its way to the client.
#[derive(Debug)]
pub enum Outbound {
    Command(BaseCommand),
    Message(MessageFrame),
}

/// Bytes of MESSAGE entries in one connection's queue, bounded: delivery reserves, the writer
/// releases once written.
#[derive(Debug)]
struct QueuedBytes {
    bytes: AtomicUsize,
    max: usize,
}

impl QueuedBytes {
    /// Takes room for `len` bytes; false when the queue holds its maximum already. An entry
    /// goes whenever the queue is below its maximum, so the queue holds at most the maximum
    /// plus one entry — and "room" means the same here as in [`QueuedBytes::has_room`], which
    /// a parked consumer is told: it never retries into a refusal (no busy loop).
    fn reserve(&self, len: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max).then_some(q + len)
            })
            .is_ok()
    }

    fn release(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::AcqRel);
    }

    fn has_room(&self) -> bool {
        self.bytes.load(Ordering::Acquire) < self.max
    }

    /// Drained to half: parked consumers may go on.
    fn below_half(&self) -> bool {
        self.bytes.load(Ordering::Acquire) <= self.max / 2
    }
}

/// Subscriptions waiting for room in one connection's queue, woken by its writer.
#[derive(Debug, Default)]
struct Waiters(Mutex<Vec<Arc<Notify>>>);

/// Distinct waiters kept per connection; past it a waiter is told to retry at once.
const WAITERS_MAX: usize = 4096;

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Notify>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        let woken = std::mem::take(&mut *self.lock());
        for w in woken {
            // notify_one keeps the wake-up for a waiter not polling right now.
            w.notify_one();
        }
    }
}

impl ConsumerSink for ConnTx {
    fn try_deliver(&self, frame: MessageFrame) -> Result<(), NotQueued> {
        // Closed before full: a dead connection's queue never drains, and "full" would park
        // its consumer (woken at once because the connection is closed) over and over.
        if self.is_closed() {
            return Err(NotQueued::Closed);
        }
        let len = frame.entry.len();
        if !self.queued.reserve(len) {
            return Err(NotQueued::Full);
        }
        match self.tx.try_send(Outbound::Message(frame)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.release(len);
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => NotQueued::Full,
                    mpsc::error::TrySendError::Closed(_) => NotQueued::Closed,
                })
            }
        }
    }

    fn notify_when_writable(&self, wake: &Arc<Notify>) -> bool {
        {
            let mut waiters = self.writable.lock();
            if waiters.len() >= WAITERS_MAX {
                return true;
            }
            if !waiters.iter().any(|w| Arc::ptr_eq(w, wake)) {
                waiters.push(Arc::clone(wake));
            }
        }
        (self.tx.capacity() > 0 && self.queued.has_room()) || self.is_closed()
    }

    fn send_control(&self, command: BaseCommand) {
        self.send_command_detached(command);
    }
}

impl ProducerSink for ConnTx {
    fn close_producer(&self, producer_id: u64, assigned_broker_service_url: Option<&str>) {
        self.send_command_detached(commands::close_producer_assigned(
            producer_id,
            0,
            assigned_broker_service_url.map(str::to_owned),
        ));
    }
}

/// The sending side of a connection: a bounded queue to its writer task.
#[derive(Debug, Clone)]
pub struct ConnTx {
    tx: mpsc::Sender<Outbound>,
    closed: CancellationToken,
    writable: Arc<Waiters>,
    queued: Arc<QueuedBytes>,
    /// The broker's tasks: sends that must wait for room run there.
    tasks: TaskTracker,
}

impl ConnTx {
    /// Queues a command now if there is room, else from a task of its own (the caller never
    /// waits on a client that is not reading); dropped if the connection closes meanwhile.
    pub fn send_command_detached(&self, command: BaseCommand) {
        if let Err(mpsc::error::TrySendError::Full(item)) =
            self.tx.try_send(Outbound::Command(command))
        {
            let this = self.clone();
            self.tasks.spawn(async move {
                this.send(item).await;
            });
        }
    }

    /// Queues a frame, waiting for room; false when the connection is closed.
    pub async fn send(&self, item: Outbound) -> bool {
        tokio::select! {
            sent = self.tx.send(item) => sent.is_ok(),
            _ = self.closed.cancelled() => false,
        }
    }

    pub async fn send_command(&self, command: BaseCommand) -> bool {
        self.send(Outbound::Command(command)).await
    }

    /// Queues a frame only if there is room right now.
    pub fn try_send_command(&self, command: BaseCommand) -> bool {
        self.tx.try_send(Outbound::Command(command)).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Closes the connection (both loops stop).
    pub fn close(&self) {
        self.closed.cancel();
    }
}

/// What a producer's receipt task handles, in order.
enum Pending {
    Send(PendingSend),
    /// CLOSE_PRODUCER (naming the broker to go to), after the receipts queued before it.
    Close(Option<String>),
}

/// A producer's client as its topic sees it: the connection, and the producer's receipt
/// queue for a close that must follow its receipts.
#[derive(Debug)]
struct ProducerConn {
    tx: ConnTx,
    receipts: mpsc::Sender<Pending>,
}

impl ProducerSink for ProducerConn {
    fn close_producer(&self, producer_id: u64, assigned_broker_service_url: Option<&str>) {
        self.tx
            .close_producer(producer_id, assigned_broker_service_url);
    }

    fn close_producer_after_receipts(
        &self,
        producer_id: u64,
        assigned_broker_service_url: Option<&str>,
    ) {
        let close = Pending::Close(assigned_broker_service_url.map(str::to_owned));
        match self.receipts.try_send(close) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(close)) => {
                // Queued behind the receipts from a task (the caller never waits); the queue
                // holds at most one close per producer beyond its bounded receipts.
                let receipts = self.receipts.clone();
                self.tx.tasks.spawn(async move {
                    let _ = receipts.send(close).await;
                });
            }
            // The receipt task is gone (connection closed): nothing is owed before it.
            Err(mpsc::error::TrySendError::Closed(_)) => self
                .tx
                .close_producer(producer_id, assigned_broker_service_url),
        }
    }
}

struct PendingSend {
    sequence_id: u64,
    highest_sequence_id: Option<u64>,
    /// `None`: a duplicate, not stored (deduplication answers it).
    append: Option<Result<AppendHandle, (ServerError, String)>>,
    /// When the append was handed to the managed ledger (the write latency's start).
    appended_at: Option<std::time::Instant>,
    /// Deduplication: the append's outcome is reported with it.
    dedup: Option<Ticket>,
    /// One of the connection's pending-publish permits, returned with the receipt.
    _permit: Option<OwnedSemaphorePermit>,
}

#[derive(Debug, Clone)]
struct ProducerSlot {
    key: u64,
    topic: Arc<Topic>,
    /// The producer's name (deduplication keys on it).
    name: Arc<str>,
    sends: mpsc::Sender<Pending>,
    /// Shared with the topic's [`ProducerSpec`]: false once the topic detached the producer.
    attached: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone)]
struct ConsumerSlot {
    key: u64,
    topic: Arc<Topic>,
    sub: Arc<Subscription>,
    sub_type: SubType,
    /// When it subscribed, ms since the epoch (CONSUMER_STATS `connectedSince`).
    connected_since_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    producers: HashMap<u64, ProducerSlot>,
    /// PRODUCER requests still being served (topic load, WaitForExclusive), by producer id: a
    /// CLOSE_PRODUCER or the connection closing cancels them. One per producer id at most.
    creating: HashMap<u64, CancellationToken>,
    consumers: HashMap<u64, ConsumerSlot>,
}

/// One connection's handler; cloned into the tasks of its requests.
#[derive(Debug, Clone)]
struct Conn {
    service: Arc<BrokerService>,
    tx: ConnTx,
    state: Arc<Mutex<State>>,
    /// The client's address (CONSUMER_STATS `address`).
    peer: Option<SocketAddr>,
    /// Largest frame accepted once CONNECTED (max message size + header padding).
    frame_size_max: usize,
    /// Requests in their own tasks (LOOKUP, PRODUCER, SUBSCRIBE, …) at most: at the limit the
    /// read loop waits, so the client's socket is not read (backpressure, nothing dropped).
    requests: Arc<Semaphore>,
    /// SENDs not yet answered at most (Pulsar's `maxPendingPublishRequestsPerConnection`):
    /// at the limit the read loop waits for receipts, as Pulsar pauses reading the socket.
    publishes: Arc<Semaphore>,
}

/// Serves one accepted socket until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, service: Arc<BrokerService>) {
    let span = info_span!("conn", %peer);
    run(stream, service).instrument(span).await;
}

async fn run(stream: TcpStream, service: Arc<BrokerService>) {
    let config = service.config().clone();
    let codec = PulsarCodec::for_max_message_size(config.max_message_size);
    // Until CONNECTED, only small frames: a 4-byte length header alone must not make the broker
    // reserve megabytes for a peer that has not even said hello.
    let handshake_codec = PulsarCodec {
        frame_size_max: HANDSHAKE_FRAME_SIZE_MAX.min(codec.frame_size_max),
    };
    let peer = stream.peer_addr().ok();
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(config.outbound_queue_frames.max(1));
    let writable = Arc::new(Waiters::default());
    let queued = Arc::new(QueuedBytes {
        bytes: AtomicUsize::new(0),
        max: config.outbound_queue_bytes_max.max(1),
    });
    let closed = CancellationToken::new();
    let conn = Conn {
        service: Arc::clone(&service),
        tx: ConnTx {
            tx,
            closed: closed.clone(),
            writable: Arc::clone(&writable),
            queued: Arc::clone(&queued),
            tasks: service.tasks().clone(),
        },
        state: Arc::default(),
        peer,
        frame_size_max: codec.frame_size_max,
        requests: Arc::new(Semaphore::new(
            config.limits.max_concurrent_requests_per_connection.max(1),
        )),
        publishes: Arc::new(Semaphore::new(
            config
                .limits
                .max_pending_publish_requests_per_connection
                .max(1),
        )),
    };
    let writer = service.tasks().spawn(
        write_loop(
            FramedWrite::new(write, codec),
            rx,
            closed.clone(),
            Arc::clone(&writable),
            queued,
        )
        .in_current_span(),
    );
    let mut frames = FramedRead::with_capacity(
        crate::protocol::quickack::QuickAckRead::new(read),
        handshake_codec,
        HANDSHAKE_READ_BUFFER_BYTES,
    );

    let reason = conn
        .read_loop(&mut frames, &config.keepalive_interval)
        .await;
    match &reason {
        Close::Normal(r) => debug!(reason = %r, "connection closed"),
        Close::Error(r) => warn!(reason = %r, "closing connection"),
    }
    closed.cancel();
    conn.detach_all().await;
    let _ = writer.await;
}

enum Close {
    Normal(String),
    Error(String),
}

async fn write_loop(
    mut sink: FramedWrite<OwnedWriteHalf, PulsarCodec>,
    mut rx: mpsc::Receiver<Outbound>,
    closed: CancellationToken,
    writable: Arc<Waiters>,
    queued: Arc<QueuedBytes>,
) {
    loop {
        let first = tokio::select! {
            item = rx.recv() => item,
            _ = closed.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut item = Some(first);
        let mut n = 0;
        while let Some(next) = item.take() {
            let fed = match next {
                Outbound::Command(c) => sink.feed(c).await,
                Outbound::Message(m) => {
                    let len = m.entry.len();
                    let fed = sink.feed(m).await;
                    queued.release(len);
                    fed
                }
            };
            if let Err(e) = fed {
                warn!(error = %e, "write failed");
                closed.cancel();
                writable.wake_all();
                return;
            }
            n += 1;
            if n < WRITE_BATCH {
                item = rx.try_recv().ok();
            }
        }
        if let Err(e) = SinkExt::<BaseCommand>::flush(&mut sink).await {
            debug!(error = %e, "flush failed");
            closed.cancel();
            writable.wake_all();
            return;
        }
        if rx.len() <= rx.max_capacity() / 2 && queued.below_half() {
            writable.wake_all();
        }
    }
    // Parked consumers learn that the connection is gone (their sends now fail).
    writable.wake_all();
    // Whatever is still queued (e.g. a CLOSE_*) is written before the socket goes.
    while let Ok(item) = rx.try_recv() {
        let _ = match item {
            Outbound::Command(c) => sink.feed(c).await,
            Outbound::Message(m) => sink.feed(m).await,
        };
    }
    let _ = SinkExt::<BaseCommand>::flush(&mut sink).await;
    let _ = SinkExt::<BaseCommand>::close(&mut sink).await;
}

fn topic_of(name: &str) -> BrokerResult<TopicName> {
    Ok(name.parse::<TopicName>()?)
}

fn position(id: &MessageIdData) -> Position {
    Position::new(id.ledger_id, id.entry_id)
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send(&self, command: BaseCommand) {
        self.tx.send_command(command).await;
    }

    async fn read_loop(
        &self,
        frames: &mut FramedRead<crate::protocol::quickack::QuickAckRead, PulsarCodec>,
        keepalive: &Duration,
    ) -> Close {
        let keepalive = (*keepalive).max(Duration::from_millis(100));
        // Handshake.
        let first = tokio::select! {
            f = tokio::time::timeout(HANDSHAKE_TIMEOUT, frames.next()) => f,
            _ = self.tx.closed.cancelled() => return Close::Normal("closed".into()),
        };
        let frame = match first {
            Err(_) => return Close::Error("no CONNECT within the handshake timeout".into()),
            Ok(None) => return Close::Normal("peer closed before CONNECT".into()),
            Ok(Some(Err(e))) => return Close::Error(format!("bad frame: {e}")),
            Ok(Some(Ok(f))) => f,
        };
        let Some(connect) = frame.command.connect.as_ref() else {
            return Close::Error(format!(
                "expected CONNECT first, got {:?}",
                frame.command_type()
            ));
        };
        let version = connect.protocol_version.unwrap_or(0).min(PROTOCOL_VERSION);
        let mut connected = commands::connected(
            format!("Magnetar {}", env!("CARGO_PKG_VERSION")),
            i32::try_from(self.service.config().max_message_size).unwrap_or(i32::MAX),
        );
        if let Some(c) = connected.connected.as_mut() {
            c.protocol_version = Some(version);
        }
        info!(client = %connect.client_version, protocol = version, "connected");
        self.send(connected).await;

        // Past the handshake, frames up to the advertised maximum are accepted.
        frames.decoder_mut().frame_size_max = self.frame_size_max;

        let clock = Arc::clone(&self.service.config().clock);
        let mut last_seen = clock.now();
        // When the broker's PING went out, if nothing arrived since: only a peer silent for a
        // whole keep-alive interval after a PING is dead (as Pulsar's keep-alive), however
        // late a timer fires.
        let mut ping_unanswered: Option<Instant> = None;
        let mut ticker = Interval::new(Arc::clone(&clock), keepalive);
        let shutdown = self.service.shutdown_token().clone();
        loop {
            let next = tokio::select! {
                f = frames.next() => f,
                _ = ticker.tick() => {
                    let now = clock.now();
                    if let Some(sent) = ping_unanswered
                        && now.saturating_duration_since(sent) >= keepalive
                    {
                        return Close::Error(format!(
                            "nothing received for {:?} after a PING: peer is dead",
                            now.saturating_duration_since(sent)
                        ));
                    }
                    if ping_unanswered.is_none()
                        && now.saturating_duration_since(last_seen) >= keepalive
                    {
                        // Counted as sent even when the queue to the peer is full: a peer
                        // that neither reads nor writes for another interval is dead all
                        // the same, and must not hold its queued messages forever.
                        let _queued = self.tx.try_send_command(commands::ping());
                        ping_unanswered = Some(now);
                    }
                    continue;
                }
                _ = self.tx.closed.cancelled() => return Close::Normal("closed".into()),
                _ = shutdown.cancelled() => return Close::Normal("broker shutting down".into()),
            };
            let frame = match next {
                None => return Close::Normal("peer closed".into()),
                Some(Err(e)) => return Close::Error(format!("bad frame: {e}")),
                Some(Ok(f)) => f,
            };
            if let Err(reason) = self.handle(frame).await {
                return Close::Error(reason);
            }
            // After handling: a frame held up by backpressure (a SEND waiting for the managed
            // ledger's queue) is our wait, not the peer's silence.
            last_seen = clock.now();
            ping_unanswered = None;
        }
    }

    /// Handles one frame; `Err` closes the connection.
    async fn handle(&self, frame: Frame) -> Result<(), String> {
        let Frame {
            command: c,
            payload,
        } = frame;
        match c.r#type() {
            Type::Send => {
                let Some(send) = c.send else { return Ok(()) };
                let Some(payload) = payload else {
                    return Err("SEND without payload".into());
                };
                self.on_send(*send, payload).await;
            }
            Type::Ping => self.send(commands::pong()).await,
            Type::Pong => {}
            Type::Flow => {
                if let Some(f) = c.flow {
                    let slot = self.state().consumers.get(&f.consumer_id).cloned();
                    if let Some(slot) = slot {
                        slot.sub.flow(slot.key, f.message_permits).await;
                    }
                }
            }
            Type::Ack => {
                if let Some(ack) = c.ack {
                    self.ack(*ack).await;
                }
            }
            Type::RedeliverUnacknowledgedMessages => {
                if let Some(r) = c.redeliver_unacknowledged_messages {
                    let slot = self.state().consumers.get(&r.consumer_id).cloned();
                    if let Some(slot) = slot {
                        let ids = (!r.message_ids.is_empty())
                            .then(|| r.message_ids.iter().map(position).collect());
                        slot.sub.redeliver(slot.key, ids).await;
                    }
                }
            }
            Type::Connect => return Err("second CONNECT on a connection".into()),
            Type::Lookup => self.spawn(c, Conn::lookup).await,
            Type::PartitionedMetadata => self.spawn(c, Conn::partitioned_metadata).await,
            Type::GetTopicsOfNamespace => self.spawn(c, Conn::topics_of_namespace).await,
            Type::Producer => self.spawn(c, Conn::producer).await,
            Type::Subscribe => self.spawn(c, Conn::subscribe).await,
            Type::CloseProducer => self.spawn(c, Conn::close_producer).await,
            Type::CloseConsumer => self.spawn(c, Conn::close_consumer).await,
            Type::Unsubscribe => self.spawn(c, Conn::unsubscribe).await,
            Type::Seek => self.spawn(c, Conn::seek).await,
            Type::GetLastMessageId => self.spawn(c, Conn::last_message_id).await,
            Type::GetSchema => self.spawn(c, Conn::get_schema).await,
            Type::GetOrCreateSchema => self.spawn(c, Conn::get_or_create_schema).await,
            Type::ConsumerStats => self.spawn(c, Conn::consumer_stats).await,
            other => debug!(command = ?other, "command not handled; ignored"),
        }
        Ok(())
    }

    /// Runs a request in a task of its own, once one of the connection's request permits is
    /// free (the read loop waits for it meanwhile).
    async fn spawn<F, Fut>(&self, command: BaseCommand, f: F)
    where
        F: FnOnce(Conn, BaseCommand) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.requests).acquire_owned().await else {
            return;
        };
        let this = self.clone();
        self.service.spawn(
            async move {
                f(this, command).await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
}
