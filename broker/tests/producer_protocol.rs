#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! Producer lifecycle on the wire, with a raw client against an in-process [`Standalone`]:
//! what the broker does with SENDs for a producer it closed itself (topic closed: Pulsar
//! ignores them, as the client resends them once it has re-created the producer), and with a
//! WaitForExclusive producer the client closed while it was still waiting.

use std::time::Duration;

use futures::SinkExt;

use magnetar_broker::topic_name::TopicName;
use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::{
    BaseCommand, CommandCloseProducer, CommandProducer, CommandSend, MessageMetadata,
    ProducerAccessMode, ServerError,
};
use magnetar_proto::pulsar::{Frame, Payload, commands};

use magnetar_broker::runtime::standalone::Standalone;
use magnetar_testkit::local::*;
use magnetar_testkit::wait;
use magnetar_testkit::wire::*;

fn producer(topic: &str, id: u64, request_id: u64, mode: ProducerAccessMode) -> Frame {
    Frame::command(BaseCommand {
        producer: Some(Box::new(CommandProducer {
            topic: topic.into(),
            producer_id: id,
            request_id,
            producer_access_mode: Some(mode as i32),
            ..Default::default()
        })),
        ..cmd(Type::Producer)
    })
}

fn close_producer(id: u64, request_id: u64) -> Frame {
    Frame::command(BaseCommand {
        close_producer: Some(Box::new(CommandCloseProducer {
            producer_id: id,
            request_id,
            ..Default::default()
        })),
        ..cmd(Type::CloseProducer)
    })
}

fn send(producer_id: u64, seq: u64) -> Frame {
    let metadata = MessageMetadata {
        producer_name: "raw".into(),
        sequence_id: seq,
        publish_time: 1,
        ..Default::default()
    };
    let send = BaseCommand {
        send: Some(Box::new(CommandSend {
            producer_id,
            sequence_id: seq,
            ..Default::default()
        })),
        ..cmd(Type::Send)
    };
    Frame::with_payload(send, Payload::new(&metadata, b"m"))
}

async fn start() -> (tempfile::TempDir, Standalone) {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    (dir, standalone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_for_a_producer_the_broker_closed_are_ignored_not_failed() {
    let (_dir, standalone) = start().await;
    let topic = "persistent://public/default/closed-producer";
    let mut conn = connect(standalone.local_addr()).await;
    conn.send(producer(topic, 1, 1, ProducerAccessMode::Shared))
        .await
        .unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());
    conn.send(send(1, 0)).await.unwrap();
    assert!(next(&mut conn).await.command.send_receipt.is_some());

    // The broker closes the topic (bundle unload): CLOSE_PRODUCER.
    let name: TopicName = topic.parse().unwrap();
    let loaded = standalone.service().loaded_topic(&name).expect("loaded");
    loaded.close().await;
    let closed = next(&mut conn).await;
    assert_eq!(closed.command_type(), Type::CloseProducer);

    // A SEND the client had on the wire before it saw CLOSE_PRODUCER: Pulsar ignores it (the
    // client resends it on the re-created producer). A SEND_ERROR would make the client close
    // the whole connection, consumers included.
    conn.send(send(1, 1)).await.unwrap();
    conn.send(Frame::command(commands::ping())).await.unwrap();
    let answer = next(&mut conn).await;
    assert_eq!(
        answer.command_type(),
        Type::Pong,
        "expected the SEND to be ignored, got {:?}",
        answer.command.send_error
    );

    // The client re-creates the producer (same id) and resends: stored once, after entry 0.
    conn.send(producer(topic, 1, 2, ProducerAccessMode::Shared))
        .await
        .unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());
    conn.send(send(1, 1)).await.unwrap();
    let receipt = next(&mut conn).await.command.send_receipt.expect("receipt");
    assert_eq!(receipt.sequence_id, 1);
    let reloaded = standalone.service().get_topic(&name).await.unwrap();
    assert_eq!(reloaded.managed_ledger().entries(), 2);

    drop(conn);
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_exclusive_producer_closed_by_the_client_never_takes_the_topic() {
    let (_dir, standalone) = start().await;
    let topic = "persistent://public/default/wait-closed";
    let mut a = connect(standalone.local_addr()).await;
    a.send(producer(topic, 1, 1, ProducerAccessMode::Exclusive))
        .await
        .unwrap();
    assert!(next(&mut a).await.command.producer_success.is_some());

    // B waits for the topic, then gives up (closes the producer) before getting it.
    let mut b = connect(standalone.local_addr()).await;
    b.send(producer(topic, 1, 1, ProducerAccessMode::WaitForExclusive))
        .await
        .unwrap();
    let waiting = next(&mut b)
        .await
        .command
        .producer_success
        .expect("waiting");
    assert_eq!(waiting.producer_ready, Some(false));
    b.send(close_producer(1, 2)).await.unwrap();
    assert_eq!(next(&mut b).await.command_type(), Type::Success);

    // A leaves: the topic is free for C, not held by B's closed producer.
    a.send(close_producer(1, 2)).await.unwrap();
    assert_eq!(next(&mut a).await.command_type(), Type::Success);
    let mut c = connect(standalone.local_addr()).await;
    let mut request_id = 0;
    wait::retrying(
        "the topic is free for C (not held by a producer its client closed)",
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || {
            request_id += 1;
            c.send(producer(
                topic,
                1,
                request_id,
                ProducerAccessMode::Exclusive,
            ))
            .await
            .unwrap();
            let f = next(&mut c).await;
            if f.command.producer_success.is_some() {
                return Some(());
            }
            let err = f.command.error.expect("PRODUCER answer");
            assert_eq!(err.error, ServerError::ProducerBusy as i32);
            None
        },
    )
    .await;
    // B's connection hears nothing more about producer 1 (no late PRODUCER_SUCCESS).
    b.send(Frame::command(commands::ping())).await.unwrap();
    assert_eq!(next(&mut b).await.command_type(), Type::Pong);

    drop((a, b, c));
    standalone.shutdown().await;
}
