#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! Key_Shared dispatching at the byte level, where the official client cannot control permits:
//! a consumer without permits must not hold back the keys of a consumer that has some, however
//! many of its own entries come first in the backlog.

use futures::SinkExt;

use magnetar_broker::subscription::key_shared::{murmur3_32, sticky_hash};
use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::command_subscribe::{InitialPosition, SubType};
use magnetar_proto::pulsar::api::{
    BaseCommand, CommandProducer, CommandSend, CommandSubscribe, IntRange, KeySharedMeta,
    MessageMetadata,
};
use magnetar_proto::pulsar::{Frame, Payload};

use magnetar_testkit::local::*;
use magnetar_testkit::wire::*;

const TOPIC: &str = "persistent://public/default/key-shared-dispatch";
/// STICKY ranges: A owns the lower half of the hash space, B the upper half.
const A_RANGE: (i32, i32) = (0, 32_767);
const B_RANGE: (i32, i32) = (32_768, 65_535);

/// The body of the next MESSAGE on `conn`.
async fn next_body(conn: &mut Conn) -> Vec<u8> {
    let f = next(conn).await;
    assert!(
        f.command.message.is_some(),
        "MESSAGE expected: {:?}",
        f.command
    );
    f.payload.expect("payload").payload().to_vec()
}

/// A key whose sticky hash falls in `range` (inclusive).
fn key_in(range: (i32, i32), prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| {
            let h = sticky_hash(murmur3_32(k.as_bytes())) as i32;
            h >= range.0 && h <= range.1
        })
        .unwrap()
}

async fn produce(conn: &mut Conn, messages: &[(String, Vec<u8>)]) {
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
    for (seq, (key, body)) in messages.iter().enumerate() {
        let metadata = MessageMetadata {
            producer_name: "raw".into(),
            sequence_id: seq as u64,
            publish_time: 1,
            partition_key: Some(key.clone()),
            ..Default::default()
        };
        let send = BaseCommand {
            send: Some(Box::new(CommandSend {
                producer_id: 1,
                sequence_id: seq as u64,
                ..Default::default()
            })),
            ..cmd(Type::Send)
        };
        conn.send(Frame::with_payload(send, Payload::new(&metadata, body)))
            .await
            .unwrap();
        assert!(next(conn).await.command.send_receipt.is_some());
    }
}

async fn subscribe_sticky(conn: &mut Conn, consumer_id: u64, range: (i32, i32)) {
    conn.send(Frame::command(BaseCommand {
        subscribe: Some(Box::new(CommandSubscribe {
            topic: TOPIC.into(),
            subscription: "sub".into(),
            sub_type: SubType::KeyShared as i32,
            consumer_id,
            request_id: 10 + consumer_id,
            initial_position: Some(InitialPosition::Earliest as i32),
            key_shared_meta: Some(KeySharedMeta {
                key_shared_mode: 1, // STICKY
                hash_ranges: vec![IntRange {
                    start: range.0,
                    end: range.1,
                }],
                allow_out_of_order_delivery: None,
            }),
            ..Default::default()
        })),
        ..cmd(Type::Subscribe)
    }))
    .await
    .unwrap();
    assert_eq!(next(conn).await.command_type(), Type::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_without_permits_does_not_hold_back_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;

    // 25 messages of A's key, then one of B's: more of A's than B has permits, so every
    // entry of the first reads is A's.
    let key_a = key_in(A_RANGE, "a");
    let key_b = key_in(B_RANGE, "b");
    let mut messages: Vec<(String, Vec<u8>)> = (0..25)
        .map(|i| (key_a.clone(), format!("a{i}").into_bytes()))
        .collect();
    messages.push((key_b.clone(), b"b0".to_vec()));
    let mut producer = connect(standalone.local_addr()).await;
    produce(&mut producer, &messages).await;

    let mut a = connect(standalone.local_addr()).await;
    let mut b = connect(standalone.local_addr()).await;
    subscribe_sticky(&mut a, 1, A_RANGE).await;
    subscribe_sticky(&mut b, 2, B_RANGE).await;

    // A has no permits: B must still get its message, with no further event to wake the
    // subscription.
    flow(&mut b, 2, 10).await;
    assert_eq!(next_body(&mut b).await, b"b0");

    // A's messages waited, and come in order once A has permits.
    flow(&mut a, 1, 100).await;
    for i in 0..25 {
        assert_eq!(next_body(&mut a).await, format!("a{i}").into_bytes());
    }

    drop((a, b, producer));
    standalone.shutdown().await;
}
