#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! Chunked messages on a Shared subscription, at the byte level, where the official client
//! cannot control permits: every chunk of a message goes to the consumer that got chunk 0; a
//! chunk whose consumer has no permits waits without holding back other messages and without
//! overtaking the chunk before it; when that consumer leaves, its unacknowledged chunks go, in
//! order, to another consumer.

use std::time::Duration;

use futures::{SinkExt, StreamExt};

use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::command_subscribe::{InitialPosition, SubType};
use magnetar_proto::pulsar::api::{
    BaseCommand, CommandProducer, CommandSend, CommandSubscribe, MessageMetadata,
};
use magnetar_proto::pulsar::{Frame, Payload};

use magnetar_testkit::local::*;
use magnetar_testkit::wire::*;

const TOPIC: &str = "persistent://public/default/chunked-shared";

/// The body of the next MESSAGE on `conn` and its redelivery count.
async fn next_message(conn: &mut Conn) -> (Vec<u8>, u32) {
    let f = next(conn).await;
    let m = f.command.message.expect("MESSAGE");
    let payload = f.payload.expect("payload");
    (payload.payload().to_vec(), m.redelivery_count.unwrap_or(0))
}

/// Nothing arrives on `conn` for a while (a bounded wait for an absence).
async fn nothing_more(conn: &mut Conn) {
    if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(500), conn.next()).await {
        panic!("unexpected frame: {:?}", f.map(|f| f.command));
    }
}

/// An entry: a chunk (`uuid`, chunk `id` of `n`) or, without `chunk`, a plain message.
fn entry(seq: u64, body: &[u8], chunk: Option<(&str, i32, i32)>) -> Payload {
    let mut metadata = MessageMetadata {
        producer_name: "raw".into(),
        sequence_id: seq,
        publish_time: 1,
        ..Default::default()
    };
    if let Some((uuid, id, n)) = chunk {
        metadata.uuid = Some(uuid.into());
        metadata.chunk_id = Some(id);
        metadata.num_chunks_from_msg = Some(n);
        metadata.total_chunk_msg_size = Some(n * body.len() as i32);
    }
    Payload::new(&metadata, body)
}

async fn produce(conn: &mut Conn, entries: Vec<Payload>) {
    conn.send(Frame::command(BaseCommand {
        producer: Some(Box::new(CommandProducer {
            topic: TOPIC.into(),
            producer_id: 1,
            request_id: 1,
            ..Default::default()
        })),
        ..cmd(Type::Producer)
    }))
    .await
    .unwrap();
    assert!(next(conn).await.command.producer_success.is_some());
    for (seq, payload) in entries.into_iter().enumerate() {
        let send = BaseCommand {
            send: Some(Box::new(CommandSend {
                producer_id: 1,
                sequence_id: seq as u64,
                ..Default::default()
            })),
            ..cmd(Type::Send)
        };
        conn.send(Frame::with_payload(send, payload)).await.unwrap();
        assert!(next(conn).await.command.send_receipt.is_some());
    }
}

async fn subscribe_shared(conn: &mut Conn, consumer_id: u64) {
    conn.send(Frame::command(BaseCommand {
        subscribe: Some(Box::new(CommandSubscribe {
            topic: TOPIC.into(),
            subscription: "sub".into(),
            sub_type: SubType::Shared as i32,
            consumer_id,
            request_id: 10 + consumer_id,
            initial_position: Some(InitialPosition::Earliest as i32),
            ..Default::default()
        })),
        ..cmd(Type::Subscribe)
    }))
    .await
    .unwrap();
    assert_eq!(next(conn).await.command_type(), Type::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_wait_for_their_consumers_permits_in_order_and_move_when_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;

    // Message "m" in three chunks, interleaved with plain messages x, y, z.
    let mut producer = connect(standalone.local_addr()).await;
    produce(
        &mut producer,
        vec![
            entry(0, b"m0", Some(("m", 0, 3))),
            entry(1, b"x", None),
            entry(2, b"m1", Some(("m", 1, 3))),
            entry(3, b"y", None),
            entry(4, b"m2", Some(("m", 2, 3))),
            entry(5, b"z", None),
        ],
    )
    .await;

    let mut a = connect(standalone.local_addr()).await;
    let mut b = connect(standalone.local_addr()).await;
    subscribe_shared(&mut a, 1).await;
    subscribe_shared(&mut b, 2).await;

    // A takes chunk 0 with its one permit: "m" is A's from now on.
    flow(&mut a, 1, 1).await;
    assert_eq!(next_message(&mut a).await, (b"m0".to_vec(), 0));

    // B has permits, A has none: B gets the plain messages, never a chunk of "m", and the
    // chunks waiting for A do not hold B back.
    flow(&mut b, 2, 10).await;
    for want in [&b"x"[..], b"y", b"z"] {
        assert_eq!(next_message(&mut b).await.0, want);
    }
    nothing_more(&mut b).await;

    // One permit at a time: chunk 1 first, chunk 2 only after it.
    flow(&mut a, 1, 1).await;
    assert_eq!(next_message(&mut a).await.0, b"m1");
    nothing_more(&mut a).await;
    flow(&mut a, 1, 1).await;
    assert_eq!(next_message(&mut a).await.0, b"m2");

    // A leaves without acknowledging: B gets the whole message, in order, redelivered.
    drop(a);
    for want in [&b"m0"[..], b"m1", b"m2"] {
        assert_eq!(next_message(&mut b).await, (want.to_vec(), 1));
    }
    nothing_more(&mut b).await;

    drop(b);
    drop(producer);
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_without_its_first_chunk_does_not_stall_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;

    // Chunk 1 of "o" with no chunk 0 before it (as after chunk 0 was acknowledged and the
    // mapping lost), then a plain message.
    let mut producer = connect(standalone.local_addr()).await;
    produce(
        &mut producer,
        vec![entry(0, b"o1", Some(("o", 1, 2))), entry(1, b"w", None)],
    )
    .await;

    let mut a = connect(standalone.local_addr()).await;
    let mut b = connect(standalone.local_addr()).await;
    subscribe_shared(&mut a, 1).await;
    subscribe_shared(&mut b, 2).await;
    // Only A has permits: it gets the orphan chunk (which the client discards) and the message
    // after it; nothing waits for a chunk 0 that will never come.
    flow(&mut a, 1, 10).await;
    assert_eq!(next_message(&mut a).await.0, b"o1");
    assert_eq!(next_message(&mut a).await.0, b"w");

    drop((a, b, producer));
    standalone.shutdown().await;
}
