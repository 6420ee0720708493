//! Deduplication state machine tests, and snapshot + replay against a real managed ledger
//! (in-process bookies, in-memory metadata store).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use magnetar_proto::pulsar::Payload;
use magnetar_proto::pulsar::api::MessageMetadata;

use super::*;
use magnetar_managed_ledger::ManagedLedgerConfig;

fn enabled(config: DedupConfig) -> Arc<Dedup> {
    let d = Dedup::new(config, magnetar_metadata::clock::system());
    d.reset(Status::Enabled, None, HashMap::new(), None);
    d
}

fn ticket(v: Verdict) -> Ticket {
    match v {
        Verdict::Publish(Some(t)) => t,
        other => panic!("expected a tracked publish, got {other:?}"),
    }
}

fn is_dup(v: &Verdict) -> bool {
    matches!(v, Verdict::Duplicate)
}

#[test]
fn disabled_dedup_stores_everything_untracked() {
    let d = Dedup::new(DedupConfig::default(), magnetar_metadata::clock::system());
    for _ in 0..2 {
        assert!(matches!(
            d.check("p", 1, None, || true),
            Verdict::Publish(None)
        ));
    }
    assert_eq!(d.last_sequence_id("p"), -1);
    // Off, a SEND's metadata is never parsed.
    assert!(matches!(
        d.check("p", 1, None, || panic!(
            "metadata parsed with deduplication off"
        )),
        Verdict::Publish(None)
    ));
}

#[test]
fn duplicates_are_judged_per_producer_name() {
    let d = enabled(DedupConfig::default());
    let t0 = ticket(d.check("a", 0, None, || true));
    let t1 = ticket(d.check("a", 1, None, || true));
    // In flight: a resend is a duplicate already (the pushed id counts).
    assert!(is_dup(&d.check("a", 1, None, || true)));
    assert!(is_dup(&d.check("a", 0, None, || true)));
    // Another name has its own sequence.
    let _ = ticket(d.check("b", 0, None, || true));
    d.completed(t0, Some(Position::new(1, 0)));
    d.completed(t1, Some(Position::new(1, 1)));
    assert!(is_dup(&d.check("a", 1, None, || true)));
    let _ = ticket(d.check("a", 2, None, || true));
    assert_eq!(d.last_sequence_id("a"), 2);
    assert_eq!(d.last_sequence_id("b"), 0);
    assert_eq!(d.last_sequence_id("c"), -1);
}

#[test]
fn batches_count_up_to_their_highest_sequence_id() {
    let d = enabled(DedupConfig::default());
    let t = ticket(d.check("a", 10, Some(14), || true));
    d.completed(t, Some(Position::new(1, 0)));
    assert_eq!(d.last_sequence_id("a"), 14);
    // A resent batch starting inside the stored one is a duplicate; the next one is not.
    assert!(is_dup(&d.check("a", 10, Some(14), || true)));
    assert!(is_dup(&d.check("a", 12, Some(16), || true)));
    let _ = ticket(d.check("a", 15, Some(19), || true));
}

#[test]
fn only_the_last_chunk_of_a_message_counts() {
    let d = enabled(DedupConfig::default());
    // Chunks 0 and 1 of message 5: stored, untracked, state unchanged.
    assert!(matches!(
        d.check("a", 5, None, || false),
        Verdict::Publish(None)
    ));
    assert!(matches!(
        d.check("a", 5, None, || false),
        Verdict::Publish(None)
    ));
    assert_eq!(d.last_sequence_id("a"), -1);
    // The last chunk is tracked; a resent message's last chunk is then a duplicate, its
    // earlier chunks are stored again (the consumer drops repeated chunks).
    let t = ticket(d.check("a", 5, None, || true));
    d.completed(t, Some(Position::new(1, 2)));
    assert!(matches!(
        d.check("a", 5, None, || false),
        Verdict::Publish(None)
    ));
    assert!(is_dup(&d.check("a", 5, None, || true)));
}

#[test]
fn chunk_metadata_marks_only_the_last_chunk() {
    let mut md = MessageMetadata {
        producer_name: "a".into(),
        sequence_id: 3,
        ..Default::default()
    };
    assert!(payload_counts(&Payload::new(&md, b"x")));
    md.chunk_id = Some(0);
    md.num_chunks_from_msg = Some(3);
    assert!(!payload_counts(&Payload::new(&md, b"x")));
    md.chunk_id = Some(2);
    assert!(payload_counts(&Payload::new(&md, b"x")));
}

#[test]
fn a_failed_append_lets_its_resend_through() {
    let d = enabled(DedupConfig::default());
    let t0 = ticket(d.check("a", 0, None, || true));
    d.completed(t0, Some(Position::new(1, 0)));
    let t1 = ticket(d.check("a", 1, None, || true));
    d.completed(t1, None);
    assert_eq!(d.last_sequence_id("a"), 0);
    let _ = ticket(d.check("a", 1, None, || true));
}

#[test]
fn a_snapshot_waits_for_appends_pushed_before_it() {
    let d = enabled(DedupConfig {
        snapshot_interval_entries: 2,
        ..DedupConfig::default()
    });
    let ta = ticket(d.check("a", 0, None, || true)); // entry 1:0
    let tb = ticket(d.check("b", 0, None, || true)); // entry 1:1
    let tc = ticket(d.check("c", 0, None, || true)); // entry 1:2
    // Receipt tasks record out of order: 1:1 and 1:2 first.
    d.completed(tb, Some(Position::new(1, 1)));
    d.completed(tc, Some(Position::new(1, 2)));
    // Due, but 1:0 is not recorded yet: a snapshot at 1:2 would lose producer a.
    assert_eq!(
        d.inner().pending_snapshot.map(|(p, _)| p),
        Some(Position::new(1, 2))
    );
    d.completed(ta, Some(Position::new(1, 0)));
    assert!(d.inner().pending_snapshot.is_none());
}

#[test]
fn tracked_names_are_bounded_inactive_ones_go_first() {
    let d = enabled(DedupConfig {
        max_producers: 3,
        ..DedupConfig::default()
    });
    d.check_at("active", 0, None, || true, 1);
    d.producer_added("active");
    d.check_at("old", 0, None, || true, 2);
    d.check_at("newer", 0, None, || true, 3);
    d.check_at("newest", 0, None, || true, 4);
    assert_eq!(d.tracked_producers(), 3);
    let st = d.inner();
    assert!(
        st.producers.contains_key("active"),
        "an attached producer is kept"
    );
    assert!(!st.producers.contains_key("old"));
    assert!(st.producers.contains_key("newest"));
}

#[test]
fn inactive_names_are_purged_after_the_timeout() {
    let d = enabled(DedupConfig {
        producer_inactivity_timeout_ms: 1000,
        ..DedupConfig::default()
    });
    d.check_at("gone", 0, None, || true, 10);
    d.check_at("here", 0, None, || true, 10);
    d.producer_added("here");
    let mut st = d.inner();
    d.purge_inactive(&mut st, 5000);
    assert!(!st.producers.contains_key("gone"));
    assert!(st.producers.contains_key("here"));
}

#[tokio::test]
async fn a_duplicate_of_an_in_flight_message_waits_for_it() {
    let d = enabled(DedupConfig::default());
    let t = ticket(d.check("a", 7, None, || true));
    assert!(is_dup(&d.check("a", 7, None, || true)));
    let waiter = {
        let d = Arc::clone(&d);
        tokio::spawn(async move { d.await_duplicate("a", 7).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    d.completed(t, Some(Position::new(3, 0)));
    assert!(waiter.await.unwrap());

    // The original fails: the duplicate is answered with an error (the client resends).
    let t = ticket(d.check("a", 8, None, || true));
    let waiter = {
        let d = Arc::clone(&d);
        tokio::spawn(async move { d.await_duplicate("a", 8).await })
    };
    tokio::task::yield_now().await;
    d.completed(t, None);
    assert!(!waiter.await.unwrap());
}

#[tokio::test]
async fn a_duplicate_wait_is_bounded() {
    let d = enabled(DedupConfig {
        duplicate_wait_ms: 50,
        ..DedupConfig::default()
    });
    let _t = ticket(d.check("a", 1, None, || true));
    assert!(!d.await_duplicate("a", 1).await);
}

// --- against a real managed ledger ---

use magnetar_managed_ledger::test_support::Cluster;

fn ml_config() -> ManagedLedgerConfig {
    ManagedLedgerConfig {
        ensemble_size: 2,
        write_quorum: 2,
        ack_quorum: 2,
        ..Default::default()
    }
}

fn entry(producer: &str, seq: u64, highest: Option<u64>, chunk: Option<(i32, i32)>) -> Bytes {
    let md = MessageMetadata {
        producer_name: producer.into(),
        sequence_id: seq,
        highest_sequence_id: highest,
        chunk_id: chunk.map(|c| c.0),
        num_chunks_from_msg: chunk.map(|c| c.1),
        ..Default::default()
    };
    Payload::new(&md, b"payload").entry()
}

/// What the SEND path does: check, append, record.
async fn send(d: &Dedup, ml: &ManagedLedger, producer: &str, seq: u64, highest: Option<u64>) {
    let bytes = entry(producer, seq, highest, None);
    match d.check(producer, seq, highest, || true) {
        Verdict::Publish(t) => {
            let pos = ml.append_wait(bytes).await.unwrap();
            if let Some(t) = t {
                d.completed(t, Some(pos));
            }
        }
        Verdict::Duplicate => panic!("unexpected duplicate {producer}/{seq}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_recovered_from_snapshot_and_replay_after_a_crash() {
    let cluster = Cluster::start(2).await;
    let config = DedupConfig {
        snapshot_interval_entries: 3,
        ..DedupConfig::default()
    };
    let name = "public/default/persistent/dedup";
    let f1 = cluster.factory();
    let ml = f1.open(name, ml_config()).await.unwrap();
    // Stored before deduplication was on: not part of its state.
    ml.append_wait(entry("a", 100, None, None)).await.unwrap();
    let d = Dedup::new(config.clone(), magnetar_metadata::clock::system());
    d.apply_policy(true, &ml).await.unwrap();
    assert_eq!(d.status(), Status::Enabled);
    assert_eq!(d.last_sequence_id("a"), -1);
    for seq in 0..4 {
        send(&d, &ml, "a", seq, None).await;
    }
    send(&d, &ml, "b", 10, Some(12)).await;
    // A chunk that is not the last one after the snapshot must not count on replay.
    ml.append_wait(entry("b", 13, None, Some((0, 2))))
        .await
        .unwrap();
    let cursor = ml.cursor(DEDUP_CURSOR).expect("dedup cursor");
    cursor.flush().await.unwrap();
    let snapshot = cursor.properties();
    assert_eq!(
        snapshot.get("a").map(String::as_str),
        Some("2"),
        "{snapshot:?}"
    );

    // "kill -9": no close, no snapshot; another broker opens the ledger (fencing this one).
    let f2 = cluster.factory();
    let ml2 = f2.open(name, ml_config()).await.unwrap();
    let d2 = Dedup::new(config.clone(), magnetar_metadata::clock::system());
    d2.apply_policy(true, &ml2).await.unwrap();
    assert_eq!(d2.last_sequence_id("a"), 3);
    assert_eq!(d2.last_sequence_id("b"), 12);
    assert!(is_dup(&d2.check("a", 3, None, || true)));
    assert!(is_dup(&d2.check("b", 11, None, || true)));
    assert!(matches!(
        d2.check("b", 13, None, || true),
        Verdict::Publish(Some(_))
    ));

    // Recovery stored a fresh snapshot; disabling deletes the cursor.
    let c2 = ml2.cursor(DEDUP_CURSOR).unwrap();
    c2.flush().await.unwrap();
    assert_eq!(c2.properties().get("b").map(String::as_str), Some("12"));
    d2.apply_policy(false, &ml2).await.unwrap();
    assert_eq!(d2.status(), Status::Disabled);
    assert!(ml2.cursor(DEDUP_CURSOR).is_none());
    assert_eq!(d2.last_sequence_id("a"), -1);
}
