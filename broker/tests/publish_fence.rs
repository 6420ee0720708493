#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! A failed write fences publishing: with deduplication on, a producer's messages sent while
//! the only bookie is unreachable are neither stored out of order nor acknowledged unstored.
//! Raw client against a cluster broker ([`Broker`](magnetar_broker::runtime::broker::Broker)) whose bookie (in this process, behind a
//! [`LocalConnector`]) is taken away and given back.

use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use magnetar_broker::topic_name::TopicName;
use magnetar_managed_ledger::Position;
use magnetar_metadata::MemoryStore;
use magnetar_proto::pulsar::api::ServerError;
use magnetar_proto::pulsar::{Frame, Payload};

use magnetar_testkit::local::*;
use magnetar_testkit::wait;
use magnetar_testkit::wire::*;

fn producer(topic: &str, request_id: u64) -> Frame {
    producer_frame(topic, request_id)
}

fn send(seq: u64) -> Frame {
    send_frame(seq, b"m")
}

/// Creates producer 1, retrying while the broker answers an error (fence in progress) after
/// 100 ms, as a Pulsar client backs off.
async fn create_producer(conn: &mut Conn, topic: &str, request_id: &mut u64) {
    wait::retrying(
        "producer 1 created",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            *request_id += 1;
            conn.send(producer(topic, *request_id)).await.unwrap();
            loop {
                let f = next_within(conn, Duration::from_secs(10))
                    .await
                    .expect("an answer");
                if f.command.producer_success.is_some() {
                    return Some(());
                }
                if f.command.error.is_some() {
                    return None;
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_resent_in_order_not_acknowledged_as_a_duplicate() {
    let cluster = LocalCluster::new(Arc::new(MemoryStore::new())).await;
    let node = cluster.node().await;
    let ns = "public/default".parse().unwrap();
    node.service()
        .policies()
        .update_namespace(&ns, |p| p.deduplication_enabled = Some(true))
        .await
        .unwrap();
    let topic = "persistent://public/default/fenced";

    let mut conn = connect(node.local_addr()).await;
    let mut request_id = 0;
    create_producer(&mut conn, topic, &mut request_id).await;
    for seq in 1..=3 {
        conn.send(send(seq)).await.unwrap();
        let f = next_within(&mut conn, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(f.command.send_receipt.map(|r| r.sequence_id), Some(seq));
    }

    // The bookie goes away: 4 fails; 5 and 6 follow on the wire before the client hears.
    cluster.take_bookie_away();
    for seq in 4..=6 {
        conn.send(send(seq)).await.unwrap();
    }
    let mut closed = false;
    while let Some(f) = next_within(&mut conn, Duration::from_secs(3)).await {
        assert!(
            f.command.send_receipt.is_none(),
            "nothing is acknowledged while the bookie is away: {:?}",
            f.command
        );
        assert!(
            f.command.send_error.is_none(),
            "the producer is closed, not failed"
        );
        closed |= f.command.close_producer.is_some();
    }
    assert!(
        closed,
        "the broker detaches the producer after the failed write"
    );

    // The bookie is back; the client re-creates the producer and resends 4..=6.
    cluster.give_bookie_back();
    create_producer(&mut conn, topic, &mut request_id).await;
    let mut acked = Vec::new();
    for seq in 4..=6 {
        loop {
            conn.send(send(seq)).await.unwrap();
            let f = next_within(&mut conn, Duration::from_secs(10))
                .await
                .unwrap();
            if let Some(r) = f.command.send_receipt {
                let id = r.message_id.unwrap();
                assert_ne!(
                    id.ledger_id,
                    u64::MAX,
                    "message {seq} acknowledged unstored"
                );
                acked.push(seq);
                break;
            }
            // Another write failed while the new ledger came up: re-create and resend.
            assert!(
                f.command.close_producer.is_some(),
                "unexpected {:?}",
                f.command
            );
            create_producer(&mut conn, topic, &mut request_id).await;
        }
    }
    assert_eq!(acked, vec![4, 5, 6]);

    let t = node
        .service()
        .loaded_topic(&topic.parse::<TopicName>().unwrap())
        .unwrap();
    let entries = t
        .managed_ledger()
        .read_entries(Position::new(0, 0), 100, u64::MAX)
        .await
        .unwrap();
    let stored: Vec<u64> = entries
        .into_iter()
        .map(|(_, e)| Payload::parse(e).unwrap().metadata().unwrap().sequence_id)
        .collect();
    assert_eq!(stored, vec![1, 2, 3, 4, 5, 6], "each once, in order");
    node.shutdown().await;
}

/// A producer whose topic cannot be written (no bookie to write to) is refused with a
/// retryable error naming the reason — not admitted and closed in a loop — and is admitted
/// again, and writes, once a bookie is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_is_told_when_its_topic_cannot_be_written_and_writes_once_it_can() {
    let cluster = LocalCluster::new(Arc::new(MemoryStore::new())).await;
    let node = cluster.node().await;
    let topic = "persistent://public/default/unwritable";
    let mut conn = connect(node.local_addr()).await;
    let mut request_id = 0;
    create_producer(&mut conn, topic, &mut request_id).await;
    conn.send(send(1)).await.unwrap();
    let f = next_within(&mut conn, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(f.command.send_receipt.is_some(), "{:?}", f.command);

    // The only bookie goes away: the next write fails and the producer is detached.
    cluster.take_bookie_away();
    conn.send(send(2)).await.unwrap();
    loop {
        let f = next_within(&mut conn, Duration::from_secs(10))
            .await
            .expect("the producer is closed after the failed write");
        assert!(f.command.send_receipt.is_none(), "{:?}", f.command);
        if f.command.close_producer.is_some() {
            break;
        }
    }
    // While no ledger can be created, PRODUCER is answered with a retryable error that says
    // why, every time: never admitted into writes that must fail. (One admission is allowed
    // while the managed ledger is still learning that it cannot roll over.)
    let mut admitted = 0;
    let mut refused = 0;
    while refused < 3 {
        request_id += 1;
        conn.send(producer(topic, request_id)).await.unwrap();
        let f = next_within(&mut conn, Duration::from_secs(10))
            .await
            .expect("an answer to PRODUCER");
        if let Some(error) = f.command.error {
            assert_eq!(
                error.error,
                ServerError::ServiceNotReady as i32,
                "{error:?}"
            );
            // Unwritable, or still fenced by the failed write (its fence lifts in the
            // background): retryable either way, with the reason.
            assert!(
                error.message.contains("cannot be written")
                    || error.message.contains("recovering from a failed write"),
                "{error:?}"
            );
            refused += 1;
            continue;
        }
        assert!(
            refused == 0 && admitted == 0,
            "admitted while unwritable: {:?}",
            f.command
        );
        assert!(f.command.producer_success.is_some(), "{:?}", f.command);
        admitted += 1;
        conn.send(send(2)).await.unwrap();
        loop {
            let f = next_within(&mut conn, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(f.command.send_receipt.is_none(), "{:?}", f.command);
            if f.command.close_producer.is_some() {
                break;
            }
        }
    }
    // The bookie is back: the producer is admitted again and writes (message 2 resent).
    cluster.give_bookie_back();
    create_producer(&mut conn, topic, &mut request_id).await;
    loop {
        conn.send(send(2)).await.unwrap();
        let f = next_within(&mut conn, Duration::from_secs(10))
            .await
            .unwrap();
        if let Some(r) = f.command.send_receipt {
            assert_eq!(r.sequence_id, 2);
            break;
        }
        assert!(f.command.close_producer.is_some(), "{:?}", f.command);
        create_producer(&mut conn, topic, &mut request_id).await;
    }
    node.shutdown().await;
}

/// A dispatch read that fails (the only bookie holding the entries is away) is retried with
/// backoff: once the bookie is back the consumer receives everything, with no new command
/// from it to wake the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_is_retried_until_the_consumer_gets_its_messages() {
    use magnetar_proto::pulsar::api::command_subscribe::SubType;

    let cluster = LocalCluster::new(Arc::new(MemoryStore::new())).await;
    let topic = "persistent://public/default/read-retry";
    let first = cluster.node().await;
    let mut conn = connect(first.local_addr()).await;
    let mut request_id = 0;
    create_producer(&mut conn, topic, &mut request_id).await;
    for seq in 1..=20 {
        conn.send(send(seq)).await.unwrap();
        let f = next_within(&mut conn, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(f.command.send_receipt.is_some(), "{:?}", f.command);
    }
    drop(conn);
    first.shutdown().await;

    // Another broker (an empty entry cache) serves the topic; the consumer asks for messages
    // only once the bookie is away.
    let node = cluster.node().await;
    let mut conn = connect(node.local_addr()).await;
    let mut request_id = 1000;
    wait::retrying(
        "the consumer subscribed",
        Duration::from_secs(20),
        Duration::from_millis(100),
        async || {
            request_id += 1;
            conn.send(subscribe_frame(
                topic,
                "s",
                SubType::Exclusive,
                1,
                request_id,
            ))
            .await
            .unwrap();
            let f = next_within(&mut conn, Duration::from_secs(10))
                .await
                .unwrap();
            if f.command.success.is_some() {
                return Some(());
            }
            assert!(f.command.error.is_some(), "{:?}", f.command);
            None
        },
    )
    .await;
    cluster.take_bookie_away();
    flow(&mut conn, 1, 100).await;
    if let Some(f) = next_within(&mut conn, Duration::from_millis(500)).await {
        assert!(
            f.command.message.is_none(),
            "read while the bookie is away: {:?}",
            f.command
        );
    }
    cluster.give_bookie_back();
    let mut got = 0;
    while got < 20 {
        let f = next_within(&mut conn, Duration::from_secs(10))
            .await
            .expect("the consumer receives its messages once the bookie is back");
        if f.command.message.is_some() {
            got += 1;
        }
    }
    node.shutdown().await;
}
