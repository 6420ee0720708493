#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! Kill -9 in the middle of multi-step state changes, then restart: a `magnetar standalone`
//! process is armed with one crash point (`MAGNETAR_CRASH_AT`, see
//! `magnetar_metadata::crash_point`) and driven with a raw Pulsar client — a producer, an
//! acking subscription and a subscription that never acks — until the process kills itself at
//! that point (the test fails if it never gets there). Restarted on the same data, the topic
//! must be consistent:
//!
//! - every message the broker acknowledged is there, once, in order (the non-acking
//!   subscription reads the whole topic);
//! - the acking subscription resumes at or before its first unacknowledged message (nothing
//!   skipped);
//! - the topic accepts writes again.
//!
//! Rollovers are made frequent by configuration (a ledger per few entries, a cursor ledger per
//! few snapshots); the ledger-list point needs a list longer than the head holds inline, so
//! that case writes one entry per ledger past 2,000 ledgers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use magnetar_metadata::clock::system;

use futures::{SinkExt, StreamExt};
use magnetar_metadata::crash_point;
use magnetar_proto::pulsar::Frame;
use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::command_ack::AckType;
use magnetar_proto::pulsar::api::command_subscribe::SubType;
use magnetar_proto::pulsar::api::{BaseCommand, CommandAck, MessageIdData};
use magnetar_testkit::process::{self, Server};
use magnetar_testkit::wire::{self, Conn, cmd};

const SERVING: &str = "magnetar standalone: serving ";
const TOPIC: &str = "persistent://public/default/crash";
const ACKING: u64 = 1;
const KEEPER: u64 = 2;
/// Sends in flight at once.
const WINDOW: u64 = 64;

fn start(dir: &Path, env: &[(&str, String)]) -> (Server, SocketAddr) {
    let mut cmd = process::command(env!("CARGO_BIN_EXE_magnetar"), dir);
    cmd.args([
        "standalone",
        "--data-dir",
        "d",
        "--broker-port",
        "0",
        "--admin-port",
        "0",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = Server::start(&mut cmd, SERVING);
    let url = server.address(SERVING);
    let addr = url.strip_prefix("pulsar://").unwrap().parse().unwrap();
    (server, addr)
}

fn seq_of(frame: &Frame) -> u64 {
    let p = frame.payload.as_ref().expect("MESSAGE carries a payload");
    let body = &p.raw()[p.payload_range()];
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.strip_prefix('m'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected body {body:?}"))
}

async fn subscribe(conn: &mut Conn, name: &str, consumer: u64, request: u64) {
    conn.send(wire::subscribe_frame(
        TOPIC,
        name,
        SubType::Exclusive,
        consumer,
        request,
    ))
    .await
    .unwrap();
    let f = loop {
        // Deliveries to a consumer subscribed before may come first.
        let f = wire::next(conn).await;
        if f.command
            .message
            .as_ref()
            .is_none_or(|m| m.consumer_id == consumer)
        {
            break f;
        }
    };
    assert!(
        f.command.success.is_some(),
        "SUBSCRIBE {name}: {:?}",
        f.command
    );
    wire::flow(conn, consumer, 1_000_000).await;
}

async fn ack(conn: &mut Conn, consumer: u64, id: MessageIdData) -> Result<(), ()> {
    conn.send(Frame::command(BaseCommand {
        ack: Some(Box::new(CommandAck {
            consumer_id: consumer,
            ack_type: AckType::Cumulative as i32,
            message_id: vec![id],
            ..Default::default()
        })),
        ..cmd(Type::Ack)
    }))
    .await
    .map_err(|_| ())
}

/// What the client learned before the crash.
#[derive(Default)]
struct Before {
    /// Sequence ids the broker acknowledged.
    receipted: BTreeSet<u64>,
    /// The highest sequence id the acking subscription acknowledged.
    acked: Option<u64>,
}

/// Produces and consumes until the connection drops (the process died at its point).
async fn drive_until_the_crash(addr: SocketAddr, server: &mut Server, point: &str) -> Before {
    let mut conn = wire::connect(addr).await;
    conn.send(wire::producer_frame(TOPIC, 1)).await.unwrap();
    let f = wire::next(&mut conn).await;
    assert!(f.command.producer_success.is_some(), "{:?}", f.command);
    subscribe(&mut conn, "acking", ACKING, 2).await;
    subscribe(&mut conn, "keeper", KEEPER, 3).await;
    let mut before = Before::default();
    let mut next_seq = 0u64;
    let clock = system();
    let deadline = clock.now() + Duration::from_secs(120);
    'drive: loop {
        assert!(
            clock.now() < deadline,
            "crash point {point} not reached within 120 s ({} messages acknowledged)",
            before.receipted.len()
        );
        while next_seq < before.receipted.len() as u64 + WINDOW {
            let body = format!("m{next_seq}");
            if conn
                .send(wire::send_frame(next_seq, body.as_bytes()))
                .await
                .is_err()
            {
                break 'drive;
            }
            next_seq += 1;
        }
        let frame = match tokio::time::timeout(Duration::from_secs(5), conn.next()).await {
            Ok(Some(Ok(f))) => f,
            Ok(_) => break 'drive,
            Err(_) if server.has_ended() => break 'drive,
            Err(_) => continue,
        };
        if let Some(r) = &frame.command.send_receipt {
            before.receipted.insert(r.sequence_id);
        } else if let Some(m) = &frame.command.message {
            if m.consumer_id == ACKING {
                let seq = seq_of(&frame);
                if ack(&mut conn, ACKING, m.message_id.clone()).await.is_err() {
                    break 'drive;
                }
                before.acked = Some(seq);
            }
        } else if frame.command.close_producer.is_some() || frame.command.close_consumer.is_some() {
            // The broker stopping serving the topic before dying is fine; the death decides.
        }
    }
    let signal = server.wait_killed(Duration::from_secs(30));
    assert_eq!(
        signal, 9,
        "{point}: the process must die by SIGKILL at the point"
    );
    before
}

/// Reads `subscription` after the restart until every acknowledged message at or above
/// `from` has come; returns the sequence ids in delivery order.
async fn read_back(conn: &mut Conn, name: &str, consumer: u64, expect: &BTreeSet<u64>) -> Vec<u64> {
    subscribe(conn, name, consumer, 100 + consumer).await;
    let mut got = Vec::new();
    let clock = system();
    let deadline = clock.now() + Duration::from_secs(60);
    while !expect.iter().all(|s| got.contains(s)) {
        assert!(
            clock.now() < deadline,
            "{name}: {} of {} acknowledged messages came back; missing e.g. {:?}",
            expect.iter().filter(|s| got.contains(s)).count(),
            expect.len(),
            expect.iter().find(|s| !got.contains(s))
        );
        let Some(f) = wire::next_within(conn, Duration::from_secs(5)).await else {
            continue;
        };
        if let Some(m) = &f.command.message
            && m.consumer_id == consumer
        {
            got.push(seq_of(&f));
        }
    }
    got
}

async fn crash_and_recover(point: &str, extra_env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(&str, String)> = vec![
        (
            "MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER",
            "7".to_owned(),
        ),
        (
            "MAGNETAR_BROKER__MANAGED_LEDGER_CURSOR_MAX_ENTRIES_PER_LEDGER",
            "3".to_owned(),
        ),
        (
            "MAGNETAR_BROKER__DELETE_INACTIVE_TOPICS_ENABLED",
            "false".to_owned(),
        ),
    ];
    for (k, v) in extra_env {
        env.retain(|(key, _)| key != k);
        env.push((k, (*v).to_owned()));
    }
    let mut armed = env.clone();
    armed.push((crash_point::ENV, point.to_owned()));
    let (mut server, addr) = start(dir.path(), &armed);
    let before = drive_until_the_crash(addr, &mut server, point).await;
    drop(server);
    assert!(
        !before.receipted.is_empty(),
        "{point}: nothing was acknowledged before the crash"
    );

    let (_server, addr) = start(dir.path(), &env);
    let mut conn = wire::connect(addr).await;
    // The whole topic: every acknowledged message, each once, in order.
    let all = read_back(&mut conn, "keeper", KEEPER, &before.receipted).await;
    let mut sorted = all.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        all.len(),
        "{point}: a message came twice: {all:?}"
    );
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "{point}: out of order: {all:?}"
    );
    // The acking subscription skips nothing it had not acknowledged.
    let unacked: BTreeSet<u64> = before
        .receipted
        .iter()
        .copied()
        .filter(|s| before.acked.is_none_or(|a| *s > a))
        .collect();
    let resumed = read_back(&mut conn, "acking", ACKING, &unacked).await;
    if let (Some(first), Some(acked)) = (resumed.first(), before.acked) {
        assert!(
            *first <= acked + 1,
            "{point}: resumed at {first} after acking up to {acked}"
        );
    }
    // Writable again.
    conn.send(wire::producer_frame(TOPIC, 200)).await.unwrap();
    loop {
        // Deliveries to the two consumers may still come first.
        let f = wire::next(&mut conn).await;
        if f.command.message.is_some() {
            continue;
        }
        assert!(
            f.command.producer_success.is_some(),
            "{point}: {:?}",
            f.command
        );
        break;
    }
    conn.send(wire::send_frame(1 << 40, b"m1099511627776"))
        .await
        .unwrap();
    loop {
        let f = wire::next(&mut conn).await;
        if let Some(r) = f.command.send_receipt {
            assert_eq!(r.sequence_id, 1 << 40);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_a_bookie_checkpoint_after_the_entry_logs_synced() {
    // The third checkpoint (one a second): traffic has been acknowledged by then.
    crash_and_recover(&format!("{}:3", crash_point::CHECKPOINT_LOGS_SYNCED), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_a_bookie_checkpoint_after_the_index_committed() {
    crash_and_recover(
        &format!("{}:3", crash_point::CHECKPOINT_INDEX_COMMITTED),
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_a_rollover_after_the_next_ledger_was_created() {
    crash_and_recover(crash_point::ROLLOVER_LEDGER_CREATED, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_a_ledger_list_change_after_the_head_was_written() {
    // The first head write is the topic's creation; the third is its second rollover.
    crash_and_recover(&format!("{}:3", crash_point::LEDGER_LIST_HEAD_WRITTEN), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_a_ledger_list_change_after_new_chunks_were_written() {
    crash_and_recover(
        crash_point::LEDGER_LIST_CHUNKS_WRITTEN,
        &[(
            "MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER",
            "1",
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_a_cursor_ledger_rollover_after_the_new_ledger_was_written() {
    crash_and_recover(crash_point::CURSOR_LEDGER_CREATED, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_a_cursor_ledger_rollover_after_the_record_points_at_it() {
    crash_and_recover(crash_point::CURSOR_LEDGER_RECORDED, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_an_offload_after_the_upload_before_it_is_recorded() {
    // Every closed ledger is offloaded (to the standalone's directory) and its bookie copy
    // deleted at once; the process dies after the second ledger's objects are uploaded and
    // verified. After the restart, the first ledger is read from object storage and the
    // second from the bookies (its offload never counted), each message once and in order.
    crash_and_recover(
        &format!("{}:2", crash_point::OFFLOAD_UPLOADED),
        &[
            ("MAGNETAR_OFFLOAD__THRESHOLD_BYTES", "0"),
            ("MAGNETAR_OFFLOAD__DELETION_LAG_MS", "0"),
        ],
    )
    .await;
}
