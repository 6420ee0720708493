#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! The Pulsar protocol server at the byte level: an in-process [`Standalone`] on a real socket
//! on 127.0.0.1, driven with the project's own frame codec as a raw client. Checks what the
//! official-client suite (`tests/python`) cannot see: entries are the client's bytes unchanged,
//! receipts carry (ledger, entry) in order, a bad checksum is a SEND_ERROR that keeps the
//! connection, and exclusive conflicts are answered at once.

use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;

use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::command_lookup_topic_response::LookupType;
use magnetar_proto::pulsar::api::command_subscribe::{InitialPosition, SubType};
use magnetar_proto::pulsar::api::{
    BaseCommand, CommandFlow, CommandLookupTopic, CommandProducer, CommandSend, CommandSubscribe,
    MessageIdData, MessageMetadata, ServerError,
};
use magnetar_proto::pulsar::{Frame, Payload};
use tokio::net::TcpStream;

use magnetar_testkit::local::*;
use magnetar_testkit::wait;
use magnetar_testkit::wire::*;

/// Connects; CONNECTED names the broker and carries protocol 21 and the 5 MiB limit.
async fn connect(addr: std::net::SocketAddr) -> Conn {
    let (conn, connected) = magnetar_testkit::wire::connect_reply(addr).await;
    assert!(connected.server_version.starts_with("Magnetar "));
    assert_eq!(connected.protocol_version, Some(21));
    assert_eq!(connected.max_message_size, Some(5 * 1024 * 1024));
    conn
}

fn message(seq: u64, body: &[u8]) -> Payload {
    let metadata = MessageMetadata {
        producer_name: "raw".into(),
        sequence_id: seq,
        publish_time: 1,
        ..Default::default()
    };
    Payload::new(&metadata, body)
}

fn send(seq: u64, payload: Payload) -> Frame {
    let send = BaseCommand {
        send: Some(Box::new(CommandSend {
            producer_id: 1,
            sequence_id: seq,
            ..Default::default()
        })),
        ..cmd(Type::Send)
    };
    Frame::with_payload(send, payload)
}

fn subscribe(topic: &str, consumer_id: u64, request_id: u64) -> Frame {
    Frame::command(BaseCommand {
        subscribe: Some(Box::new(CommandSubscribe {
            topic: topic.into(),
            subscription: "sub".into(),
            sub_type: SubType::Exclusive as i32,
            consumer_id,
            request_id,
            initial_position: Some(InitialPosition::Earliest as i32),
            ..Default::default()
        })),
        ..cmd(Type::Subscribe)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_the_clients_bytes_and_receipts_come_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    let topic = "persistent://public/default/raw";
    let mut conn = connect(standalone.local_addr()).await;

    // LOOKUP: this broker, authoritative.
    conn.send(Frame::command(BaseCommand {
        lookup_topic: Some(Box::new(CommandLookupTopic {
            topic: topic.into(),
            request_id: 1,
            ..Default::default()
        })),
        ..cmd(Type::Lookup)
    }))
    .await
    .unwrap();
    let lookup = next(&mut conn).await.command.lookup_topic_response.unwrap();
    assert_eq!(lookup.response, Some(LookupType::Connect as i32));
    assert_eq!(
        lookup.broker_service_url.as_deref(),
        Some(standalone.service_url())
    );
    // LOOKUP Failed: an invalid name, and a namespace that does not exist.
    for (request_id, bad) in [
        (2, "persistent://public/default/"),
        (3, "persistent://nope/ns/t"),
    ] {
        conn.send(Frame::command(BaseCommand {
            lookup_topic: Some(Box::new(CommandLookupTopic {
                topic: bad.into(),
                request_id,
                ..Default::default()
            })),
            ..cmd(Type::Lookup)
        }))
        .await
        .unwrap();
        let failed = next(&mut conn).await.command.lookup_topic_response.unwrap();
        assert_eq!(failed.request_id, request_id);
        assert_eq!(failed.response, Some(LookupType::Failed as i32), "{bad}");
        assert!(
            failed.error.is_some() && failed.message.is_some(),
            "{bad}: {failed:?}"
        );
    }

    // PRODUCER without a name: the broker names it.
    conn.send(Frame::command(BaseCommand {
        producer: Some(Box::new(CommandProducer {
            topic: topic.into(),
            producer_id: 1,
            request_id: 2,
            ..Default::default()
        })),
        ..cmd(Type::Producer)
    }))
    .await
    .unwrap();
    let ok = next(&mut conn).await.command.producer_success.unwrap();
    assert!(!ok.producer_name.is_empty());
    assert_eq!(ok.last_sequence_id, Some(-1));

    // Three SENDs pipelined, one with a broken checksum in the middle.
    let sent: Vec<Payload> = (0..3u8).map(|i| message(u64::from(i), &[i; 100])).collect();
    let mut corrupt = sent[1].raw().to_vec();
    if let Some(last) = corrupt.last_mut() {
        *last ^= 0xff;
    }
    let corrupt = Payload::parse(Bytes::from(corrupt)).unwrap();
    conn.feed(send(0, sent[0].clone())).await.unwrap();
    conn.feed(send(1, corrupt)).await.unwrap();
    conn.feed(send(2, sent[2].clone())).await.unwrap();
    SinkExt::<Frame>::flush(&mut conn).await.unwrap();
    let r0 = next(&mut conn).await.command.send_receipt.unwrap();
    let e1 = next(&mut conn).await.command.send_error.unwrap();
    let r2 = next(&mut conn).await.command.send_receipt.unwrap();
    assert_eq!((r0.sequence_id, e1.sequence_id, r2.sequence_id), (0, 1, 2));
    assert_eq!(e1.error, ServerError::ChecksumError as i32);
    let (id0, id2) = (r0.message_id.unwrap(), r2.message_id.unwrap());
    assert_eq!(id0.ledger_id, id2.ledger_id);
    assert_eq!(id2.entry_id, id0.entry_id + 1);

    // SUBSCRIBE + FLOW: the stored entries come back byte for byte.
    conn.send(subscribe(topic, 7, 3)).await.unwrap();
    assert_eq!(next(&mut conn).await.command_type(), Type::Success);
    conn.send(Frame::command(BaseCommand {
        flow: Some(Box::new(CommandFlow {
            consumer_id: 7,
            message_permits: 10,
        })),
        ..cmd(Type::Flow)
    }))
    .await
    .unwrap();
    for expected in [&sent[0], &sent[2]] {
        let f = next(&mut conn).await;
        let m = f.command.message.unwrap();
        assert_eq!(m.consumer_id, 7);
        assert_eq!(m.redelivery_count, Some(0));
        let payload = f.payload.unwrap();
        assert!(payload.checksum_ok());
        assert_eq!(payload.raw(), expected.raw());
    }

    // A second exclusive consumer is refused at once.
    let mut other = connect(standalone.local_addr()).await;
    other.send(subscribe(topic, 1, 1)).await.unwrap();
    let err = next(&mut other).await.command.error.unwrap();
    assert_eq!(err.error, ServerError::ConsumerBusy as i32);

    drop(conn);
    drop(other);
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    let mut good = connect(standalone.local_addr()).await;

    let mut bad = TcpStream::connect(standalone.local_addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bad.write_all(&[0, 0, 0, 8, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
        .await
        .expect("the broker kept a malformed connection open");
    assert!(matches!(n, Ok(0) | Err(_)));

    good.send(Frame::command(magnetar_proto::pulsar::commands::ping()))
        .await
        .unwrap();
    assert_eq!(next(&mut good).await.command_type(), Type::Pong);
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_frame_before_connect_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    // A 4-byte header announcing a 1 MiB frame — within the message size limit, far beyond
    // any CONNECT: the broker must not reserve (and wait for) a megabyte for a peer that has
    // not said hello; it closes the connection.
    let mut stranger = TcpStream::connect(standalone.local_addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stranger
        .write_all(&(1024u32 * 1024).to_be_bytes())
        .await
        .unwrap();
    stranger.write_all(&[0; 16]).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stranger.read(&mut buf))
        .await
        .expect("the broker waited for a megabyte before CONNECT");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // After CONNECT the negotiated maximum applies: a 1 MiB message goes through.
    let mut conn = connect(standalone.local_addr()).await;
    conn.send(Frame::command(BaseCommand {
        producer: Some(Box::new(CommandProducer {
            topic: "persistent://public/default/big-after-connect".into(),
            producer_id: 1,
            request_id: 1,
            ..Default::default()
        })),
        ..cmd(Type::Producer)
    }))
    .await
    .unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());
    conn.send(send(0, message(0, &vec![7u8; 1024 * 1024])))
        .await
        .unwrap();
    assert!(next(&mut conn).await.command.send_receipt.is_some());
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_invalid_topic_name_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    let mut conn = connect(standalone.local_addr()).await;
    let mut request_id = 0;
    // Topics `.` and `..`: refused at once, with the reason, not a storage failure.
    for topic in [
        "persistent://public/default/..",
        "persistent://public/default/.",
    ] {
        request_id += 1;
        conn.send(Frame::command(BaseCommand {
            producer: Some(Box::new(CommandProducer {
                topic: topic.into(),
                producer_id: request_id,
                request_id,
                ..Default::default()
            })),
            ..cmd(Type::Producer)
        }))
        .await
        .unwrap();
        let error = next(&mut conn).await.command.error.expect("an error");
        assert_eq!(
            error.error,
            ServerError::InvalidTopicName as i32,
            "{error:?}"
        );
        assert!(error.message.contains("not allowed"), "{error:?}");
    }
    // Subscription names: empty, with '/', with NUL.
    for name in ["", "a/b", "nul\0"] {
        request_id += 1;
        let mut frame = subscribe("persistent://public/default/names", 1, request_id);
        if let Some(s) = frame.command.subscribe.as_mut() {
            s.subscription = name.into();
        }
        conn.send(frame).await.unwrap();
        let error = next(&mut conn).await.command.error.expect("an error");
        assert_eq!(
            error.error,
            ServerError::InvalidTopicName as i32,
            "{name:?}: {error:?}"
        );
        assert!(error.message.contains("subscription name"), "{error:?}");
    }
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_keeps_a_peer_that_answers_pings_and_closes_a_silent_one() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |o| {
        o.broker.service.keepalive_interval = Duration::from_millis(100);
    })
    .await;
    // Answers every PING and says nothing else: alive for 20 intervals.
    let mut polite = connect(standalone.local_addr()).await;
    let deadline = magnetar_metadata::clock::system().now() + Duration::from_secs(2);
    let mut pings = 0;
    while magnetar_metadata::clock::system().now() < deadline {
        match tokio::time::timeout_at(deadline.into(), futures::StreamExt::next(&mut polite)).await
        {
            Err(_) => break,
            Ok(Some(Ok(f))) => {
                assert_eq!(f.command_type(), Type::Ping, "{:?}", f.command);
                pings += 1;
                polite
                    .send(Frame::command(magnetar_proto::pulsar::commands::pong()))
                    .await
                    .unwrap();
            }
            Ok(other) => panic!("a peer answering every PING was dropped: {other:?}"),
        }
    }
    assert!(
        pings >= 5,
        "pinged {pings} times in 2 s at a 100 ms keep-alive"
    );
    // Never answers: closed after the PING goes unanswered for an interval.
    let mut silent = connect(standalone.local_addr()).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match futures::StreamExt::next(&mut silent).await {
                Some(Ok(f)) => assert_eq!(f.command_type(), Type::Ping),
                _ => return,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a silent peer was kept");
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |o| {
        o.broker.service.limits.max_connections = 2;
    })
    .await;
    let first = connect(standalone.local_addr()).await;
    let _second = connect(standalone.local_addr()).await;
    use tokio::io::AsyncReadExt;
    let mut third = TcpStream::connect(standalone.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("a connection past the limit was kept");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // One leaves: there is room again, once the broker has seen it close.
    drop(first);
    let addr = standalone.local_addr();
    let _again = wait::until_async(
        "room for a connection after one closed",
        Duration::from_secs(10),
        || async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let mut conn = tokio_util::codec::Framed::new(
                stream,
                magnetar_proto::pulsar::PulsarCodec::default(),
            );
            conn.send(Frame::command(BaseCommand {
                connect: Some(Box::new(magnetar_proto::pulsar::api::CommandConnect {
                    client_version: "raw-test".into(),
                    protocol_version: Some(21),
                    ..Default::default()
                })),
                ..cmd(Type::Connect)
            }))
            .await
            .unwrap();
            // Refused connections are closed at once: no answer.
            let f = try_next(&mut conn).await?;
            assert!(f.command.connected.is_some());
            Some(conn)
        },
    )
    .await;
    standalone.shutdown().await;
}

/// The next frame within 5 s; None on a timeout, a closed connection or a bad frame.
async fn try_next(conn: &mut Conn) -> Option<Frame> {
    match tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(conn)).await {
        Ok(Some(Ok(f))) => Some(f),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_per_connection_limits_hold_work_back_and_drop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |o| {
        o.broker
            .service
            .limits
            .max_concurrent_requests_per_connection = 1;
        o.broker
            .service
            .limits
            .max_pending_publish_requests_per_connection = 1;
    })
    .await;
    let mut conn = connect(standalone.local_addr()).await;
    // Pipelined requests: each is answered.
    for request_id in 1..=20u64 {
        conn.feed(Frame::command(BaseCommand {
            lookup_topic: Some(Box::new(CommandLookupTopic {
                topic: format!("persistent://public/default/limit-{request_id}"),
                request_id,
                ..Default::default()
            })),
            ..cmd(Type::Lookup)
        }))
        .await
        .unwrap();
    }
    SinkExt::<Frame>::flush(&mut conn).await.unwrap();
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 20 {
        let f = next(&mut conn).await;
        let r = f.command.lookup_topic_response.expect("a lookup response");
        assert_eq!(r.response, Some(LookupType::Connect as i32), "{r:?}");
        answered.insert(r.request_id);
    }
    // Pipelined SENDs with one pending at most: every one stored and answered, in order.
    conn.send(Frame::command(BaseCommand {
        producer: Some(Box::new(CommandProducer {
            topic: "persistent://public/default/limit-1".into(),
            producer_id: 1,
            request_id: 100,
            ..Default::default()
        })),
        ..cmd(Type::Producer)
    }))
    .await
    .unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());
    for seq in 0..200 {
        conn.feed(send(seq, message(seq, b"x"))).await.unwrap();
    }
    SinkExt::<Frame>::flush(&mut conn).await.unwrap();
    for seq in 0..200 {
        let r = next(&mut conn)
            .await
            .command
            .send_receipt
            .expect("a receipt");
        assert_eq!(r.sequence_id, seq);
    }
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_metadata_comes_from_the_policies() {
    use magnetar_broker::topic_name::TopicName;
    use magnetar_proto::pulsar::api::CommandPartitionedTopicMetadata;
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    let parts: TopicName = "persistent://public/default/parts".parse().unwrap();
    standalone
        .service()
        .policies()
        .create_partitioned(&parts, 3)
        .await
        .unwrap();
    let mut conn = connect(standalone.local_addr()).await;
    for (i, (topic, expected)) in [
        ("persistent://public/default/parts", 3),
        ("persistent://public/default/parts-partition-1", 0),
        ("persistent://public/default/plain", 0),
    ]
    .into_iter()
    .enumerate()
    {
        conn.send(Frame::command(BaseCommand {
            partition_metadata: Some(Box::new(CommandPartitionedTopicMetadata {
                topic: topic.into(),
                request_id: i as u64,
                ..Default::default()
            })),
            ..cmd(Type::PartitionedMetadata)
        }))
        .await
        .unwrap();
        let r = next(&mut conn)
            .await
            .command
            .partition_metadata_response
            .unwrap();
        assert_eq!(r.partitions, Some(expected), "{topic}");
    }
    // Unknown namespace: a Failed answer, not a dropped connection.
    conn.send(Frame::command(BaseCommand {
        partition_metadata: Some(Box::new(CommandPartitionedTopicMetadata {
            topic: "persistent://nope/nope/t".into(),
            request_id: 9,
            ..Default::default()
        })),
        ..cmd(Type::PartitionedMetadata)
    }))
    .await
    .unwrap();
    let r = next(&mut conn)
        .await
        .command
        .partition_metadata_response
        .unwrap();
    assert_eq!(r.response, Some(1));
    standalone.shutdown().await;
}

/// One ACK (with `request_id`, so ACK_RESPONSE orders it) of entry `id` with `ack_set`.
async fn ack(conn: &mut Conn, id: &MessageIdData, cumulative: bool, ack_set: i64, request: u64) {
    use magnetar_proto::pulsar::api::CommandAck;
    use magnetar_proto::pulsar::api::command_ack::AckType;
    let ack_type = if cumulative {
        AckType::Cumulative
    } else {
        AckType::Individual
    };
    conn.send(Frame::command(BaseCommand {
        ack: Some(Box::new(CommandAck {
            consumer_id: 7,
            ack_type: ack_type as i32,
            message_id: vec![MessageIdData {
                ack_set: vec![ack_set],
                batch_size: Some(10),
                ..id.clone()
            }],
            request_id: Some(request),
            ..Default::default()
        })),
        ..cmd(Type::Ack)
    }))
    .await
    .unwrap();
    let r = next(conn).await.command.ack_response.expect("ACK_RESPONSE");
    assert_eq!(r.request_id, Some(request));
}

async fn redeliver_all(conn: &mut Conn) {
    use magnetar_proto::pulsar::api::CommandRedeliverUnacknowledgedMessages;
    conn.send(Frame::command(BaseCommand {
        redeliver_unacknowledged_messages: Some(Box::new(CommandRedeliverUnacknowledgedMessages {
            consumer_id: 7,
            ..Default::default()
        })),
        ..cmd(Type::RedeliverUnacknowledgedMessages)
    }))
    .await
    .unwrap();
}

async fn consumer_stats(
    conn: &mut Conn,
    consumer_id: u64,
    request_id: u64,
) -> magnetar_proto::pulsar::api::CommandConsumerStatsResponse {
    use magnetar_proto::pulsar::api::CommandConsumerStats;
    conn.send(Frame::command(BaseCommand {
        consumer_stats: Some(Box::new(CommandConsumerStats {
            request_id,
            consumer_id,
        })),
        ..cmd(Type::ConsumerStats)
    }))
    .await
    .unwrap();
    let f = next(conn).await;
    assert_eq!(f.command_type(), Type::ConsumerStatsResponse);
    let r = *f.command.consumer_stats_response.unwrap();
    assert_eq!(r.request_id, request_id);
    r
}

/// A batch entry of 10 messages acknowledged index by index: the broker answers CONSUMER_STATS,
/// puts the unacknowledged indexes into the MESSAGE `ack_set` of every redelivery, charges
/// permits only for them, and acknowledges the entry once no index is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_index_acks_and_consumer_stats_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    let topic = "persistent://public/default/raw-batch";
    let mut conn = connect(standalone.local_addr()).await;
    conn.send(Frame::command(BaseCommand {
        producer: Some(Box::new(CommandProducer {
            topic: topic.into(),
            producer_id: 1,
            request_id: 1,
            ..Default::default()
        })),
        ..cmd(Type::Producer)
    }))
    .await
    .unwrap();
    next(&mut conn).await.command.producer_success.unwrap();
    let metadata = MessageMetadata {
        producer_name: "raw".into(),
        sequence_id: 0,
        publish_time: 1,
        num_messages_in_batch: Some(10),
        ..Default::default()
    };
    conn.send(send(0, Payload::new(&metadata, b"ten messages")))
        .await
        .unwrap();
    next(&mut conn).await.command.send_receipt.unwrap();

    let mut sub = subscribe(topic, 7, 2);
    if let Some(s) = sub.command.subscribe.as_mut() {
        s.consumer_name = Some("stats-consumer".into());
    }
    conn.send(sub).await.unwrap();
    assert_eq!(next(&mut conn).await.command_type(), Type::Success);
    conn.send(Frame::command(BaseCommand {
        flow: Some(Box::new(CommandFlow {
            consumer_id: 7,
            message_permits: 100,
        })),
        ..cmd(Type::Flow)
    }))
    .await
    .unwrap();
    let m = next(&mut conn).await.command.message.unwrap();
    assert!(m.ack_set.is_empty(), "nothing acknowledged yet");
    let id = m.message_id;

    let stats = consumer_stats(&mut conn, 7, 10).await;
    assert_eq!(stats.error_code, None);
    assert_eq!(stats.consumer_name.as_deref(), Some("stats-consumer"));
    assert_eq!(stats.available_permits, Some(90), "a batch of 10 costs 10");
    assert_eq!(stats.unacked_messages, Some(1));
    assert_eq!(stats.r#type.as_deref(), Some("Exclusive"));
    assert_eq!(stats.msg_backlog, Some(1));
    assert!(stats.address.unwrap().starts_with("/127.0.0.1:"));
    let since = stats.connected_since.unwrap();
    assert!(since.len() == 24 && since.ends_with('Z'), "{since}");
    let unknown = consumer_stats(&mut conn, 99, 11).await;
    assert_eq!(
        unknown.error_code,
        Some(ServerError::ConsumerNotFound as i32)
    );

    // Indexes 0 and 2 acknowledged: the redelivery carries the other 8 and costs 8 permits.
    let all: i64 = 0b11_1111_1111;
    ack(&mut conn, &id, false, all & !0b101, 20).await;
    redeliver_all(&mut conn).await;
    let m = next(&mut conn).await.command.message.unwrap();
    assert_eq!(m.ack_set, vec![all & !0b101]);
    assert_eq!(m.redelivery_count, Some(1));
    let stats = consumer_stats(&mut conn, 7, 12).await;
    assert_eq!(stats.available_permits, Some(82));

    // Cumulative inside the entry up to index 3 (the client's set still has 0 and 2).
    ack(&mut conn, &id, true, all & !0b1111, 21).await;
    redeliver_all(&mut conn).await;
    let m = next(&mut conn).await.command.message.unwrap();
    assert_eq!(m.ack_set, vec![all & !0b1111]);

    // The rest: the entry is acknowledged whole, nothing is left to deliver.
    ack(&mut conn, &id, false, 0b11_1100_0000, 22).await;
    ack(&mut conn, &id, false, 0b00_0011_0000, 23).await;
    let stats = consumer_stats(&mut conn, 7, 13).await;
    assert_eq!(
        (stats.msg_backlog, stats.unacked_messages),
        (Some(0), Some(0))
    );
    redeliver_all(&mut conn).await;
    let stats = consumer_stats(&mut conn, 7, 14).await;
    assert_eq!(stats.unacked_messages, Some(0), "nothing redelivered");
    standalone.shutdown().await;
}

/// Reads frames until the broker closes the connection; false if it is still open after 5 s.
async fn closed_by_broker(conn: &mut Conn) -> bool {
    let clock = magnetar_metadata::clock::system();
    let deadline = clock.now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(clock.now());
        match tokio::time::timeout(left, futures::StreamExt::next(conn)).await {
            Err(_) => return false,
            Ok(None | Some(Err(_))) => return true,
            Ok(Some(Ok(_))) => {} // CLOSE_PRODUCER / CLOSE_CONSUMER first
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_and_waits_for_all_broker_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    let service = std::sync::Arc::clone(standalone.service());
    let topic = "persistent://public/default/drain";
    // A producer with receipts answered, a consumer with messages delivered and unacked, and
    // an idle connection: each has tasks running in the broker.
    let mut producer = connect(standalone.local_addr()).await;
    producer.send(producer_frame(topic, 1)).await.unwrap();
    assert!(next(&mut producer).await.command.producer_success.is_some());
    for seq in 0..10 {
        producer.send(send_frame(seq, b"m")).await.unwrap();
        assert!(next(&mut producer).await.command.send_receipt.is_some());
    }
    let mut consumer = connect(standalone.local_addr()).await;
    consumer
        .send(subscribe_frame(topic, "s", SubType::Shared, 1, 2))
        .await
        .unwrap();
    assert!(next(&mut consumer).await.command.success.is_some());
    flow(&mut consumer, 1, 5).await;
    assert!(next(&mut consumer).await.command.message.is_some());
    let mut idle = connect(standalone.local_addr()).await;
    assert!(
        service.running_tasks() >= 3,
        "connections run as broker tasks: {}",
        service.running_tasks()
    );

    standalone.shutdown().await;
    assert_eq!(
        service.running_tasks(),
        0,
        "shutdown returned with broker tasks still running"
    );
    for (name, conn) in [
        ("producer", &mut producer),
        ("consumer", &mut consumer),
        ("idle", &mut idle),
    ] {
        assert!(closed_by_broker(conn).await, "{name} connection left open");
    }
}
