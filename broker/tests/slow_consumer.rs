#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! One consumer of a Shared subscription that grants permits and then stops reading its
//! socket must not hold up the others: delivery never waits on one client. Raw clients
//! against an in-process [`Standalone`]: the stalled one is a connection nobody polls (its
//! socket buffers and the broker's queue for it fill up), the healthy one keeps reading.
//! Once the stalled one reads again, every message has arrived exactly once between them.

use std::collections::HashSet;
use std::time::Duration;

use futures::SinkExt;

use magnetar_proto::pulsar::Frame;
use magnetar_proto::pulsar::api::command_subscribe::SubType;

use magnetar_testkit::local::*;
use magnetar_testkit::wire::*;

const TOPIC: &str = "persistent://public/default/slow-consumer";
const MESSAGES: u64 = 60_000;
const BODY_BYTES: usize = 1024;

fn subscribe(consumer_id: u64) -> Frame {
    subscribe_frame(TOPIC, "shared", SubType::Shared, consumer_id, consumer_id)
}

fn send(seq: u64) -> Frame {
    send_frame(seq, &[7u8; BODY_BYTES])
}

/// Receives MESSAGE frames (granting permits as it goes) until `until` says stop or nothing
/// comes for `idle`; returns the (ledger, entry) ids received.
async fn receive(
    conn: &mut Conn,
    consumer_id: u64,
    idle: Duration,
    got: &mut Vec<(u64, u64)>,
    until: impl Fn(usize) -> bool,
) {
    let mut since_flow = 0;
    while !until(got.len()) {
        let Some(f) = next_within(conn, idle).await else {
            return;
        };
        if let Some(m) = f.command.message {
            got.push((m.message_id.ledger_id, m.message_id.entry_id));
            since_flow += 1;
            if since_flow == 500 {
                flow(conn, consumer_id, 500).await;
                since_flow = 0;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    let addr = standalone.local_addr();

    // The stalled consumer: asks for everything, then never reads its socket.
    let mut stalled = connect(addr).await;
    stalled.send(subscribe(1)).await.unwrap();
    assert!(next(&mut stalled).await.command.success.is_some());
    flow(&mut stalled, 1, MESSAGES as u32).await;
    // The healthy one.
    let mut healthy = connect(addr).await;
    healthy.send(subscribe(2)).await.unwrap();
    assert!(next(&mut healthy).await.command.success.is_some());
    flow(&mut healthy, 2, 1000).await;

    // Publish, pipelined, from a task of its own; the healthy consumer reads meanwhile.
    let producer = tokio::spawn(async move {
        let mut conn = connect(addr).await;
        conn.send(producer_frame(TOPIC, 1)).await.unwrap();
        assert!(next(&mut conn).await.command.producer_success.is_some());
        for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(500) {
            for &seq in chunk {
                conn.feed(send(seq)).await.unwrap();
            }
            SinkExt::<Frame>::flush(&mut conn).await.unwrap();
            for _ in chunk {
                let f = next(&mut conn).await;
                assert!(f.command.send_receipt.is_some(), "{:?}", f.command);
            }
        }
    });

    // The stalled consumer can absorb some MB (both sockets' buffers, up to ~10 MB with
    // Linux's defaults, and the broker's queue for it): a third of the messages is more than
    // that. Everything else must reach the healthy one, without a pause of 5 s.
    let mut healthy_got = Vec::new();
    receive(
        &mut healthy,
        2,
        Duration::from_secs(5),
        &mut healthy_got,
        |n| n as u64 >= MESSAGES * 2 / 3,
    )
    .await;
    assert!(
        healthy_got.len() as u64 >= MESSAGES * 2 / 3,
        "the healthy consumer got {} of {MESSAGES} messages, then nothing for 5 s: held up by \
         the stalled one",
        healthy_got.len()
    );
    producer.await.unwrap();
    receive(
        &mut healthy,
        2,
        Duration::from_secs(1),
        &mut healthy_got,
        |_| false,
    )
    .await;

    // The stalled one reads again: between them, every message exactly once.
    let mut stalled_got = Vec::new();
    receive(
        &mut stalled,
        1,
        Duration::from_secs(2),
        &mut stalled_got,
        |_| false,
    )
    .await;
    let all: Vec<_> = healthy_got.iter().chain(&stalled_got).copied().collect();
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(unique.len() as u64, MESSAGES, "every message delivered");
    assert_eq!(all.len(), unique.len(), "none delivered twice");
    standalone.shutdown().await;
}

/// Large messages: what a stalled consumer holds is bounded in bytes (the broker's queue for
/// its connection holds at most `outbound_queue_bytes_max` of entries), not only by frames —
/// 1,024 frames of large batches could otherwise pin gigabytes of broker memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_holds_a_bounded_number_of_bytes() {
    const BIG: usize = 256 * 1024;
    const COUNT: u64 = 256; // 64 MiB in all
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |o| {
        o.broker.service.outbound_queue_bytes_max = 1024 * 1024;
    })
    .await;
    let addr = standalone.local_addr();
    let topic = "persistent://public/default/slow-consumer-bytes";
    let sub = |id: u64| subscribe_frame(topic, "shared", SubType::Shared, id, id);
    let mut stalled = connect(addr).await;
    stalled.send(sub(1)).await.unwrap();
    assert!(next(&mut stalled).await.command.success.is_some());
    flow(&mut stalled, 1, COUNT as u32).await;
    let mut healthy = connect(addr).await;
    healthy.send(sub(2)).await.unwrap();
    assert!(next(&mut healthy).await.command.success.is_some());
    flow(&mut healthy, 2, COUNT as u32).await;

    let mut producer = connect(addr).await;
    producer.send(producer_frame(topic, 1)).await.unwrap();
    assert!(next(&mut producer).await.command.producer_success.is_some());
    for seq in 0..COUNT {
        producer.send(send_frame(seq, &[9u8; BIG])).await.unwrap();
        assert!(next(&mut producer).await.command.send_receipt.is_some());
    }
    // The stalled one can hold 1 MiB in the broker's queue plus both sockets' buffers (up to
    // ~10 MB with Linux's defaults): about 44 messages of 256 KiB. Round robin with a queue
    // bounded only by its 1,024 frames would have given it every other message (128).
    let mut healthy_got = Vec::new();
    receive(
        &mut healthy,
        2,
        Duration::from_secs(5),
        &mut healthy_got,
        |n| n as u64 >= COUNT - 64,
    )
    .await;
    assert!(
        healthy_got.len() as u64 >= COUNT - 64,
        "the healthy consumer got only {} of {COUNT}: the stalled one holds too much",
        healthy_got.len()
    );
    // The stalled client goes away with its queue full: what it held comes to the healthy
    // one (its consumer is removed although its queue never drained).
    drop(stalled);
    receive(
        &mut healthy,
        2,
        Duration::from_secs(10),
        &mut healthy_got,
        |n| n as u64 >= COUNT,
    )
    .await;
    let unique: HashSet<_> = healthy_got.iter().copied().collect();
    assert_eq!(
        unique.len() as u64,
        COUNT,
        "after the stalled client left, the healthy one has every message"
    );
    standalone.shutdown().await;
}
