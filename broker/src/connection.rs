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
//! A malformed or oversized frame, a protocol violation or a dead peer (no frame for twice the
//! keep-alive interval, after a PING) closes this connection only, with the reason logged; its
//! producers and consumers are detached (unacked messages go back to their subscriptions).

use std::collections::HashMap;
use std::net::SocketAddr;
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
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::consumer_stats;
use crate::dedup::{self, Dedup, Ticket, Verdict};
use crate::error::{BrokerError, BrokerResult};
use crate::key_shared::KeySharedPolicy;
use crate::managed_ledger::{AppendHandle, InitialPosition, Position, batch_acks};
use crate::service::BrokerService;
use crate::subscription::{AckedId, ConsumerSpec, SeekTarget, Subscription, entry_info};
use crate::topic::{ProducerSpec, StartAt, Topic};
use crate::topic_name::{NamespaceName, TopicName};

/// Time a new connection has to send CONNECT.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames written per flush at most.
const WRITE_BATCH: usize = 256;

/// A frame on its way to the client.
#[derive(Debug)]
pub enum Outbound {
    Command(BaseCommand),
    Message(MessageFrame),
}

/// The sending side of a connection: a bounded queue to its writer task.
#[derive(Debug, Clone)]
pub struct ConnTx {
    tx: mpsc::Sender<Outbound>,
    closed: CancellationToken,
}

impl ConnTx {
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

struct PendingSend {
    sequence_id: u64,
    highest_sequence_id: Option<u64>,
    /// `None`: a duplicate, not stored (deduplication answers it).
    append: Option<Result<AppendHandle, (ServerError, String)>>,
    /// Deduplication: the append's outcome is reported with it.
    dedup: Option<Ticket>,
}

#[derive(Debug, Clone)]
struct ProducerSlot {
    key: u64,
    topic: Arc<Topic>,
    /// The producer's name (deduplication keys on it).
    name: Arc<str>,
    sends: mpsc::Sender<PendingSend>,
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
}

/// Serves one accepted socket until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, service: Arc<BrokerService>) {
    let span = info_span!("conn", %peer);
    run(stream, service).instrument(span).await;
}

async fn run(stream: TcpStream, service: Arc<BrokerService>) {
    let config = service.config().clone();
    let codec = PulsarCodec::for_max_message_size(config.max_message_size);
    let peer = stream.peer_addr().ok();
    let (read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel(config.outbound_queue_frames.max(1));
    let closed = CancellationToken::new();
    let conn = Conn {
        service: Arc::clone(&service),
        tx: ConnTx {
            tx,
            closed: closed.clone(),
        },
        state: Arc::default(),
        peer,
    };
    let writer = tokio::spawn(
        write_loop(FramedWrite::new(write, codec), rx, closed.clone()).in_current_span(),
    );
    let mut frames = FramedRead::new(crate::quickack::QuickAckRead::new(read), codec);

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
                Outbound::Message(m) => sink.feed(m).await,
            };
            if let Err(e) = fed {
                warn!(error = %e, "write failed");
                closed.cancel();
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
            return;
        }
    }
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
        frames: &mut FramedRead<crate::quickack::QuickAckRead, PulsarCodec>,
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

        let mut last_seen = Instant::now();
        let mut ticker = tokio::time::interval(keepalive);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.service.shutdown_token().clone();
        loop {
            let next = tokio::select! {
                f = frames.next() => f,
                _ = ticker.tick() => {
                    let idle = last_seen.elapsed();
                    if idle >= keepalive * 2 {
                        return Close::Error(format!("no frame for {idle:?}: peer is dead"));
                    }
                    if idle >= keepalive {
                        self.tx.try_send_command(commands::ping());
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
            last_seen = Instant::now();
            if let Err(reason) = self.handle(frame).await {
                return Close::Error(reason);
            }
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
                let slot = self.state().producers.get(&send.producer_id).cloned();
                let Some(slot) = slot else {
                    debug!(producer = send.producer_id, "SEND for an unknown producer");
                    self.send(commands::send_error(
                        send.producer_id,
                        send.sequence_id,
                        ServerError::NotAllowedError,
                        "producer not found on this connection",
                    ))
                    .await;
                    return Ok(());
                };
                let highest = send.highest_sequence_id.filter(|h| *h > 0);
                let mut ticket = None;
                let append = if !payload.checksum_ok() {
                    Some(Err((
                        ServerError::ChecksumError,
                        "checksum mismatch".to_owned(),
                    )))
                } else {
                    let verdict =
                        slot.topic
                            .dedup()
                            .check(&slot.name, send.sequence_id, highest, || {
                                dedup::payload_counts(&payload)
                            });
                    match verdict {
                        Verdict::Duplicate => None,
                        Verdict::Publish(t) => {
                            ticket = t;
                            let messages = send
                                .num_messages
                                .map_or(1, |n| u64::try_from(n).unwrap_or(1));
                            slot.topic
                                .record_publish(messages, payload.payload_range().len() as u64);
                            Some(
                                slot.topic
                                    .managed_ledger()
                                    .append(payload.entry())
                                    .await
                                    .map_err(|e| {
                                        let e = BrokerError::from(e);
                                        (e.server_error(), e.to_string())
                                    }),
                            )
                        }
                    }
                };
                let pending = PendingSend {
                    sequence_id: send.sequence_id,
                    highest_sequence_id: highest,
                    append,
                    dedup: ticket,
                };
                if slot.sends.send(pending).await.is_err() {
                    debug!(
                        producer = send.producer_id,
                        "SEND after the producer closed"
                    );
                }
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
            Type::Lookup => self.spawn(c, Conn::lookup),
            Type::PartitionedMetadata => self.spawn(c, Conn::partitioned_metadata),
            Type::GetTopicsOfNamespace => self.spawn(c, Conn::topics_of_namespace),
            Type::Producer => self.spawn(c, Conn::producer),
            Type::Subscribe => self.spawn(c, Conn::subscribe),
            Type::CloseProducer => self.spawn(c, Conn::close_producer),
            Type::CloseConsumer => self.spawn(c, Conn::close_consumer),
            Type::Unsubscribe => self.spawn(c, Conn::unsubscribe),
            Type::Seek => self.spawn(c, Conn::seek),
            Type::GetLastMessageId => self.spawn(c, Conn::last_message_id),
            Type::GetSchema => self.spawn(c, Conn::get_schema),
            Type::GetOrCreateSchema => self.spawn(c, Conn::get_or_create_schema),
            Type::ConsumerStats => self.spawn(c, Conn::consumer_stats),
            other => debug!(command = ?other, "command not handled; ignored"),
        }
        Ok(())
    }

    fn spawn<F, Fut>(&self, command: BaseCommand, f: F)
    where
        F: FnOnce(Conn, BaseCommand) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(f(self.clone(), command).in_current_span());
    }

    async fn lookup(self, c: BaseCommand) {
        let Some(l) = c.lookup_topic else { return };
        let answer = match topic_of(&l.topic) {
            Err(e) => commands::lookup_failed(l.request_id, e.server_error(), e.to_string()),
            Ok(topic) => match self.service.lookup(&topic).await {
                Ok(None) => commands::lookup_response(
                    l.request_id,
                    LookupType::Connect,
                    self.service.config().service_url.clone(),
                    true,
                ),
                Ok(Some(owner)) => {
                    commands::lookup_response(l.request_id, LookupType::Redirect, owner, true)
                }
                Err(e) => {
                    warn!(topic = %l.topic, error = %e, "lookup failed");
                    commands::lookup_failed(l.request_id, e.server_error(), e.to_string())
                }
            },
        };
        self.send(answer).await;
    }

    async fn partitioned_metadata(self, c: BaseCommand) {
        let Some(p) = c.partition_metadata else {
            return;
        };
        let result = match topic_of(&p.topic) {
            Ok(topic) => self.service.partitions(&topic).await,
            Err(e) => Err(e),
        };
        let answer = match result {
            Ok(n) => commands::partitioned_metadata_response(p.request_id, n),
            Err(e) => {
                commands::partitioned_metadata_failed(p.request_id, e.server_error(), e.to_string())
            }
        };
        self.send(answer).await;
    }

    async fn topics_of_namespace(self, c: BaseCommand) {
        let Some(g) = c.get_topics_of_namespace else {
            return;
        };
        let result = match g.namespace.parse::<NamespaceName>() {
            Ok(ns) => self.service.topics_of_namespace(&ns).await,
            Err(e) => Err(e.into()),
        };
        let answer = match result {
            Ok(topics) => commands::get_topics_of_namespace_response(g.request_id, topics, false),
            Err(e) => commands::error(g.request_id, e.server_error(), e.to_string()),
        };
        self.send(answer).await;
    }

    async fn producer(self, c: BaseCommand) {
        let Some(p) = c.producer else { return };
        let request_id = p.request_id;
        let producer_id = p.producer_id;
        let span = info_span!("producer", topic = %p.topic, producer = producer_id);
        let answer = match self.create_producer(*p).instrument(span).await {
            Ok((name, schema_version, last_sequence_id)) => commands::producer_success(
                request_id,
                name,
                last_sequence_id,
                schema_version.map(crate::schema::version_bytes),
            ),
            Err(e) => {
                info!(producer = producer_id, error = %e, "producer refused");
                commands::error(request_id, e.server_error(), e.to_string())
            }
        };
        self.send(answer).await;
    }

    /// Attaches a producer; its name, schema version (`None`: no schema) and the last
    /// sequence id deduplication knows for its name (-1: none).
    async fn create_producer(
        &self,
        p: CommandProducer,
    ) -> BrokerResult<(String, Option<u64>, i64)> {
        let topic_name = topic_of(&p.topic)?;
        let topic = self.service.get_topic(&topic_name).await?;
        topic.refresh_dedup().await?;
        let schema_version = self
            .service
            .schemas()
            .put_producer_schema(&topic_name, p.schema.as_ref())
            .await?;
        let key = self.service.next_id();
        let name = p
            .producer_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| self.service.unique_name(key));
        let mode = match ProducerAccessMode::try_from(p.producer_access_mode.unwrap_or(0)) {
            Ok(ProducerAccessMode::ExclusiveWithFencing) => ProducerAccessMode::Exclusive,
            Ok(m) => m,
            Err(_) => ProducerAccessMode::Shared,
        };
        let spec = ProducerSpec {
            key,
            producer_id: p.producer_id,
            name: name.clone(),
            mode,
            conn: self.tx.clone(),
        };
        let tx = self.tx.clone();
        let (request_id, waiting_name) = (p.request_id, name.clone());
        let mut told = false;
        topic
            .add_producer(spec, || {
                if !told {
                    told = true;
                    let mut c =
                        commands::producer_success(request_id, waiting_name.clone(), -1, None);
                    if let Some(s) = c.producer_success.as_mut() {
                        s.producer_ready = Some(false);
                    }
                    tx.try_send_command(c);
                }
            })
            .await?;
        if self.tx.is_closed() {
            topic.remove_producer(key);
            return Err(BrokerError::NotReady("connection closed".into()));
        }
        let (sends, rx) = mpsc::channel(self.service.config().pending_sends_per_producer.max(1));
        tokio::spawn(
            receipts(
                p.producer_id,
                rx,
                self.tx.clone(),
                Arc::clone(topic.dedup()),
                Arc::from(name.as_str()),
            )
            .instrument(info_span!("receipts", topic = %topic_name, producer = p.producer_id)),
        );
        let old = self.state().producers.insert(
            p.producer_id,
            ProducerSlot {
                key,
                topic: Arc::clone(&topic),
                name: Arc::from(name.as_str()),
                sends,
            },
        );
        if let Some(old) = old {
            old.topic.remove_producer(old.key);
        }
        let last_sequence_id = topic.dedup().last_sequence_id(&name);
        Ok((name, schema_version, last_sequence_id))
    }

    async fn get_schema(self, c: BaseCommand) {
        let Some(g) = c.get_schema else { return };
        let answer = crate::schema::answer_get_schema(&self.service.schemas(), &g).await;
        self.send(answer).await;
    }

    async fn get_or_create_schema(self, c: BaseCommand) {
        let Some(g) = c.get_or_create_schema else {
            return;
        };
        let answer = crate::schema::answer_get_or_create_schema(&self.service.schemas(), &g).await;
        self.send(answer).await;
    }

    async fn close_producer(self, c: BaseCommand) {
        let Some(p) = c.close_producer else { return };
        let slot = self.state().producers.remove(&p.producer_id);
        if let Some(slot) = slot {
            slot.topic.remove_producer(slot.key);
            info!(producer = p.producer_id, "producer closed by the client");
        }
        self.send(commands::success(p.request_id)).await;
    }

    async fn subscribe(self, c: BaseCommand) {
        let Some(s) = c.subscribe else { return };
        let request_id = s.request_id;
        let consumer_id = s.consumer_id;
        let span = info_span!("consumer", topic = %s.topic, subscription = %s.subscription,
            consumer = consumer_id);
        let answer = match self.create_consumer(*s).instrument(span).await {
            Ok(()) => commands::success(request_id),
            Err(e) => {
                info!(consumer = consumer_id, error = %e, "subscribe refused");
                commands::error(request_id, e.server_error(), e.to_string())
            }
        };
        self.send(answer).await;
    }

    async fn create_consumer(&self, s: CommandSubscribe) -> BrokerResult<()> {
        let topic_name = topic_of(&s.topic)?;
        // Resubscribing with a consumer id still in use (after the broker closed it): replace.
        let old = self.state().consumers.remove(&s.consumer_id);
        if let Some(old) = old {
            self.detach_consumer(old).await;
        }
        let topic = self.service.get_topic(&topic_name).await?;
        let idle = topic.managed_ledger().last_confirmed().is_none();
        self.service
            .schemas()
            .check_consumer_schema(&topic_name, s.schema.as_ref(), idle)
            .await?;
        let sub_type = SubType::try_from(s.sub_type).unwrap_or(SubType::Exclusive);
        let key_shared = KeySharedPolicy::from_wire(s.key_shared_meta.as_ref());
        let durable = s.durable.unwrap_or(true);
        let initial = match s.initial_position.map(WireInitial::try_from) {
            Some(Ok(WireInitial::Earliest)) => InitialPosition::Earliest,
            _ => InitialPosition::Latest,
        };
        let start = match (&s.start_message_id, durable) {
            (Some(id), false) => start_of(id, initial),
            _ => StartAt::Initial(initial),
        };
        let sub = topic.subscription(&s.subscription, durable, start).await?;
        let key = self.service.next_id();
        let spec = ConsumerSpec {
            key,
            consumer_id: s.consumer_id,
            name: s.consumer_name.clone().unwrap_or_default(),
            priority: s.priority_level.unwrap_or(0),
            sub_type,
            key_shared,
            conn: self.tx.clone(),
        };
        if let Err(e) = sub.add_consumer(spec).await {
            if !durable {
                topic.drop_subscription(&s.subscription).await;
            }
            return Err(e);
        }
        let slot = ConsumerSlot {
            key,
            topic: Arc::clone(&topic),
            sub,
            sub_type,
            connected_since_ms: crate::managed_ledger::record::now_ms(),
        };
        if self.tx.is_closed() {
            self.detach_consumer(slot).await;
            return Err(BrokerError::NotReady("connection closed".into()));
        }
        self.state().consumers.insert(s.consumer_id, slot);
        Ok(())
    }

    async fn detach_consumer(&self, slot: ConsumerSlot) {
        slot.sub.remove_consumer(slot.key).await;
        if !slot.sub.is_durable() {
            slot.topic.drop_subscription(slot.sub.name()).await;
        }
    }

    async fn close_consumer(self, c: BaseCommand) {
        let Some(cc) = c.close_consumer else { return };
        let slot = self.state().consumers.remove(&cc.consumer_id);
        if let Some(slot) = slot {
            self.detach_consumer(slot).await;
            info!(consumer = cc.consumer_id, "consumer closed by the client");
        }
        self.send(commands::success(cc.request_id)).await;
    }

    async fn unsubscribe(self, c: BaseCommand) {
        let Some(u) = c.unsubscribe else { return };
        let slot = self.state().consumers.get(&u.consumer_id).cloned();
        let answer = match slot {
            None => commands::error(
                u.request_id,
                ServerError::ConsumerNotFound,
                "consumer not found on this connection",
            ),
            Some(slot) => match slot.sub.unsubscribe(slot.key).await {
                Ok(()) => {
                    self.state().consumers.remove(&u.consumer_id);
                    slot.topic.drop_subscription(slot.sub.name()).await;
                    commands::success(u.request_id)
                }
                Err(e) => commands::error(u.request_id, e.server_error(), e.to_string()),
            },
        };
        self.send(answer).await;
    }

    async fn seek(self, c: BaseCommand) {
        let Some(s) = c.seek else { return };
        let CommandSeek {
            consumer_id,
            request_id,
            message_id,
            message_publish_time,
        } = *s;
        let slot = self.state().consumers.get(&consumer_id).cloned();
        let target = match (message_id, message_publish_time) {
            (Some(id), _) => Some(SeekTarget::Position(position(&id))),
            (None, Some(t)) => Some(SeekTarget::PublishTime(t)),
            (None, None) => None,
        };
        let answer = match (slot, target) {
            (None, _) => commands::error(
                request_id,
                ServerError::ConsumerNotFound,
                "consumer not found on this connection",
            ),
            (Some(_), None) => commands::error(
                request_id,
                ServerError::NotAllowedError,
                "SEEK needs a message id or a publish time",
            ),
            (Some(slot), Some(target)) => match slot.sub.seek(target).await {
                Ok(()) => commands::success(request_id),
                Err(e) => commands::error(request_id, e.server_error(), e.to_string()),
            },
        };
        self.send(answer).await;
    }

    async fn last_message_id(self, c: BaseCommand) {
        let Some(g) = c.get_last_message_id else {
            return;
        };
        let slot = self.state().consumers.get(&g.consumer_id).cloned();
        let Some(slot) = slot else {
            self.send(commands::error(
                g.request_id,
                ServerError::ConsumerNotFound,
                "consumer not found on this connection",
            ))
            .await;
            return;
        };
        let ml = slot.topic.managed_ledger();
        let last = match ml.last_confirmed() {
            Some(p) => {
                let mut id = commands::message_id(p.ledger.0, p.entry.0);
                if let Ok(mut entries) = ml.read_entries(p, 1, 1).await
                    && let Some((q, entry)) = entries.pop()
                    && q == p
                {
                    let info = entry_info(&entry);
                    if info.messages > 1 {
                        id.batch_index = Some(i32::try_from(info.messages - 1).unwrap_or(0));
                    }
                }
                id
            }
            // Nothing stored: entry -1 of the current ledger, as Pulsar answers.
            None => {
                let ledger = ml.ledgers().last().map_or(u64::MAX, |l| l.ledger_id.0);
                commands::message_id(ledger, u64::MAX)
            }
        };
        let mark_delete = slot
            .sub
            .mark_delete_position()
            .await
            .map(|p| commands::message_id(p.ledger.0, p.entry.0));
        self.send(commands::get_last_message_id_response(
            g.request_id,
            last,
            mark_delete,
        ))
        .await;
    }

    async fn consumer_stats(self, c: BaseCommand) {
        let Some(s) = c.consumer_stats else { return };
        let slot = self.state().consumers.get(&s.consumer_id).cloned();
        let snapshot = match &slot {
            Some(slot) => slot.sub.snapshot().await.and_then(|snap| {
                snap.consumers.into_iter().find(|c| c.key == slot.key)
            }),
            None => None,
        };
        let answer = match (slot, snapshot) {
            (Some(slot), Some(consumer)) => {
                let backlog_entries = slot
                    .topic
                    .managed_ledger()
                    .cursor(slot.sub.name())
                    .map_or(0, |c| c.backlog());
                let ctx = consumer_stats::ConsumerContext {
                    sub_type: slot.sub_type,
                    backlog_entries,
                    address: self.peer,
                    connected_since_ms: slot.connected_since_ms,
                };
                commands::consumer_stats_response(consumer_stats::response(
                    s.request_id,
                    &consumer,
                    ctx,
                ))
            }
            _ => commands::consumer_stats_error(
                s.request_id,
                ServerError::ConsumerNotFound,
                format!("Consumer {} not found", s.consumer_id),
            ),
        };
        self.send(answer).await;
    }

    async fn ack(&self, ack: CommandAck) {
        let slot = self.state().consumers.get(&ack.consumer_id).cloned();
        let Some(slot) = slot else {
            debug!(consumer = ack.consumer_id, "ACK for an unknown consumer");
            return;
        };
        let cumulative = ack.ack_type == AckType::Cumulative as i32;
        // A non-empty ack_set with a bit set is a batch-index ack (set bits: indexes still
        // unacknowledged); an absent or all-clear one acknowledges the whole entry.
        let ids: Vec<AckedId> = ack
            .message_id
            .iter()
            .map(|id| AckedId {
                position: position(id),
                unacked: if id.ack_set.iter().all(|w| *w == 0) {
                    Vec::new()
                } else {
                    batch_acks::from_wire(&id.ack_set)
                },
            })
            .collect();
        slot.sub.ack(cumulative, ids).await;
        if let Some(request_id) = ack.request_id {
            self.send(commands::ack_response(ack.consumer_id, request_id))
                .await;
        }
    }

    /// Detaches every producer and consumer of a closed connection.
    async fn detach_all(&self) {
        let (producers, consumers) = {
            let mut st = self.state();
            (
                std::mem::take(&mut st.producers),
                std::mem::take(&mut st.consumers),
            )
        };
        for p in producers.into_values() {
            p.topic.remove_producer(p.key);
        }
        for c in consumers.into_values() {
            self.detach_consumer(c).await;
        }
    }
}

/// Where a reader starts: the wire's start message id, exclusive unless it points into a batch
/// (the client then skips the messages before its batch index itself).
fn start_of(id: &MessageIdData, initial: InitialPosition) -> StartAt {
    const EARLIEST: u64 = u64::MAX; // -1 on the wire
    const LATEST: u64 = i64::MAX as u64;
    if id.ledger_id == EARLIEST && id.entry_id == EARLIEST {
        return StartAt::Initial(InitialPosition::Earliest);
    }
    if id.ledger_id == LATEST || id.ledger_id == EARLIEST {
        return StartAt::Initial(if id.ledger_id == LATEST {
            InitialPosition::Latest
        } else {
            initial
        });
    }
    if id.batch_index.is_some_and(|b| b >= 0) {
        StartAt::Position(position(id))
    } else {
        StartAt::Position(Position::new(id.ledger_id, id.entry_id.saturating_add(1)))
    }
}

/// A producer's receipt task: completes appends in order and answers each SEND. It drains
/// its queue even after the connection closed, so deduplication learns every outcome.
async fn receipts(
    producer_id: u64,
    mut rx: mpsc::Receiver<PendingSend>,
    tx: ConnTx,
    dedup: Arc<Dedup>,
    name: Arc<str>,
) {
    let mut connected = true;
    while let Some(p) = rx.recv().await {
        let result = match p.append {
            Some(Ok(handle)) => handle.await.map(Some).map_err(|e| {
                let e = BrokerError::from(e);
                (e.server_error(), e.to_string())
            }),
            Some(Err(e)) => Err(e),
            // A duplicate: answered once its original is persisted (ledger/entry -1/-1, as
            // Pulsar); undecidable (original failed or still pending) → PersistenceError,
            // after which the client reconnects and resends.
            None => {
                if dedup.await_duplicate(&name, p.sequence_id).await {
                    Ok(None)
                } else {
                    Err((
                        ServerError::PersistenceError,
                        "cannot tell yet whether the message is a duplicate".to_owned(),
                    ))
                }
            }
        };
        if let Some(ticket) = p.dedup {
            dedup.completed(ticket, result.as_ref().ok().copied().flatten());
        }
        if !connected {
            continue;
        }
        let answer = match result {
            Ok(pos) => {
                let (ledger, entry) = pos.map_or((u64::MAX, u64::MAX), |p| (p.ledger.0, p.entry.0));
                commands::send_receipt(
                    producer_id,
                    p.sequence_id,
                    commands::message_id(ledger, entry),
                    p.highest_sequence_id,
                )
            }
            Err((code, message)) => {
                warn!(sequence_id = p.sequence_id, error = %message, "send failed");
                commands::send_error(producer_id, p.sequence_id, code, message)
            }
        };
        connected = tx.send_command(answer).await;
    }
}
