//! Managed-ledger tests against real bookies in this process (temp dirs, journal fsync on) and
//! an in-memory metadata store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnetar_bookie::api::BookieClient;
use magnetar_bookie::client::LedgerError;
use magnetar_metadata::clock::ManualClock;
use magnetar_testkit::wait;

use crate::*;

use crate::record::{CursorRecord, cursor_record_key};
use crate::test_support::Cluster;

/// A manual clock for timer-driven tests: it moves only when the test advances it.
fn manual_clock() -> Arc<ManualClock> {
    ManualClock::new(1_700_000_000_000)
}

fn config(entries_max: u64) -> ManagedLedgerConfig {
    ManagedLedgerConfig {
        ensemble_size: 2,
        write_quorum: 2,
        ack_quorum: 2,
        ledger_entries_max: entries_max,
        ..Default::default()
    }
}

fn payload(i: usize) -> Bytes {
    Bytes::from(format!("message-{i:05}"))
}

async fn append_n(ml: &ManagedLedger, from: usize, n: usize) -> Vec<Position> {
    let mut handles = Vec::new();
    for i in from..from + n {
        handles.push(ml.append(payload(i)).await.unwrap());
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

async fn read_all(ml: &ManagedLedger, from: Position) -> Vec<(Position, Bytes)> {
    let mut out = Vec::new();
    let mut pos = from;
    loop {
        let batch = ml.read_entries(pos, 7, u64::MAX).await.unwrap();
        let Some(&(last, _)) = batch.last() else {
            return out;
        };
        pos = last.next();
        out.extend(batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_appends_in_order_and_reads_across_rollovers() {
    let cluster = Cluster::start(3).await;
    let factory = cluster.factory();
    let ml = factory
        .open("t/ns/persistent/roll", config(10))
        .await
        .unwrap();
    let positions = append_n(&ml, 0, 35).await;
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(ml.last_confirmed(), positions.last().copied());
    assert_eq!(ml.entries(), 35);
    let ledgers = ml.ledgers();
    assert!(ledgers.len() >= 4, "{ledgers:?}");
    assert!(ledgers.iter().all(|l| l.entries <= 10));
    // Reads from another broker's cold cache go to the bookies and cross every boundary.
    let other = cluster.factory();
    let cold = other.cache().stats();
    let all = read_all(&ml, Position::new(0, 0)).await;
    assert_eq!(all.len(), 35);
    for (i, (p, b)) in all.iter().enumerate() {
        assert_eq!((*p, b), (positions[i], &payload(i)));
    }
    assert_eq!(cold.hits, 0);
    // Byte limit: at least one entry, then stop.
    let one = ml.read_entries(positions[0], 10, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    let stats = ml.internal_stats();
    assert_eq!(stats.number_of_entries, 35);
    assert_eq!(stats.entries_added_counter, 35);
    ml.close().await.unwrap();
    assert!(matches!(
        ml.append(payload(0)).await,
        Err(ManagedLedgerError::Closed(_))
    ));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_reopen_recovers_and_fences_previous_owner() {
    let cluster = Cluster::start(3).await;
    let first = cluster.factory();
    let ml1 = first
        .open("t/ns/persistent/own", config(1000))
        .await
        .unwrap();
    let written = append_n(&ml1, 0, 20).await;
    let old_ledger = written[0].ledger;

    // A second broker takes over without the first closing anything.
    let second = cluster.factory();
    let ml2 = second
        .open("t/ns/persistent/own", config(1000))
        .await
        .unwrap();
    let record = ml2.ledgers();
    assert_eq!(record[0].ledger_id, old_ledger);
    assert_eq!(record[0].entries, 20);
    assert_eq!(record[0].state, LedgerRecordState::Closed);
    assert_eq!(record.last().unwrap().state, LedgerRecordState::Open);

    // The old owner's append meets the fenced ledger; the rollover it starts then meets the
    // new owner's record and fences the managed ledger. No append of the old owner succeeds.
    let err = ml1.append_wait(payload(99)).await.unwrap_err();
    assert!(!err.to_string().is_empty());
    let real = magnetar_metadata::clock::system();
    let fenced = magnetar_metadata::clock::timeout(&*real, Duration::from_secs(20), async {
        loop {
            match ml1.append_wait(payload(100)).await {
                Ok(p) => panic!("the old owner's append was acknowledged at {p:?}"),
                Err(e) if e.is_fenced() => break,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(fenced.is_ok(), "the old owner was never fenced");
    assert!(ml1.is_fenced());
    assert!(ml1.append(payload(100)).await.unwrap_err().is_fenced());

    let next = ml2.append_wait(payload(20)).await.unwrap();
    assert!(next.ledger > old_ledger);
    let all = read_all(&ml2, Position::new(0, 0)).await;
    let got: Vec<Bytes> = all.into_iter().map(|(_, b)| b).collect();
    let want: Vec<Bytes> = (0..21).map(payload).collect();
    assert_eq!(got, want);

    // A clean close seals the last ledger; reopening reads its length from its metadata.
    ml2.close().await.unwrap();
    let third = cluster.factory();
    let ml3 = third
        .open("t/ns/persistent/own", config(1000))
        .await
        .unwrap();
    assert_eq!(ml3.entries(), 21);
    assert_eq!(ml3.ledgers().len(), 3);
    ml3.close().await.unwrap();
    cluster.stop().await;
}

#[test]
fn a_managed_ledger_fenced_by_a_failed_rollover_still_answers_after_the_backoff() {
    // The old owner's append fails on its fenced ledger, its rollover meets the new owner's
    // record (the managed ledger is fenced) and a retry is left pending with a backoff. Once
    // the backoff has passed, the write actor must still answer commands (it refuses them) —
    // it used to spin with no branch enabled, holding a runtime thread for good (found by the
    // chaos soak). Its own runtime, so that a spinning task cannot hang the test's end.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let answered = rt.block_on(async {
        let cluster = Cluster::start(3).await;
        let clock = manual_clock();
        let ml1 = cluster
            .factory_with_clock(clock.clone())
            .open("t/ns/persistent/fenced-spin", config(1000))
            .await
            .unwrap();
        append_n(&ml1, 0, 5).await;
        let ml2 = cluster
            .factory()
            .open("t/ns/persistent/fenced-spin", config(1000))
            .await
            .unwrap();
        assert!(ml1.append_wait(payload(5)).await.is_err());
        // The rollover waits out the failed ledger's backoff on the manual clock.
        wait::until(
            "the old owner's managed ledger is fenced",
            Duration::from_secs(10),
            || {
                clock.advance(Duration::from_millis(100));
                ml1.is_fenced()
            },
        )
        .await;
        // Each round moves the clock past any backoff, then asks the actor something it must
        // refuse at once (resume goes to the actor whatever the status).
        let real = magnetar_metadata::clock::system();
        for round in 0..20 {
            clock.advance(Duration::from_secs(11));
            let answer = magnetar_metadata::clock::timeout(
                &*real,
                Duration::from_secs(5),
                ml1.resume_appends(),
            )
            .await;
            if answer.is_err() {
                return Err(format!(
                    "round {round}: the fenced managed ledger's actor did not answer"
                ));
            }
        }
        ml2.append_wait(payload(6)).await.unwrap();
        Ok(())
    });
    rt.shutdown_background();
    answered.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_cursor_acks_persist_across_reopen() {
    let cluster = Cluster::start(2).await;
    let name = "t/ns/persistent/acks";
    let factory = cluster.factory();
    let ml = factory.open(name, config(8)).await.unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 20).await;
    assert_eq!(c.backlog(), 20);

    let read = c.read_entries(5, u64::MAX).await.unwrap();
    assert_eq!(read.len(), 5);
    c.ack_individual(&[p[1], p[3], p[4]]).unwrap();
    assert!(c.is_acked(p[3]) && !c.is_acked(p[0]));
    assert_eq!(c.mark_delete_position(), None);
    assert_eq!(c.backlog(), 17);
    c.ack_individual(&[p[0]]).unwrap();
    assert_eq!(c.mark_delete_position(), Some(p[1]));
    c.ack_individual(&[p[2]]).unwrap();
    // 0..=4 now contiguous: the ranges collapsed into the mark-delete position.
    assert_eq!(c.mark_delete_position(), Some(p[4]));
    assert_eq!(c.stats().acked_ranges, 0);
    // Across a ledger boundary (entries 7 | 8 are in different ledgers).
    c.ack_individual(&[p[9], p[10], p[12]]).unwrap();
    c.ack_cumulative(p[8]).unwrap();
    assert_eq!(c.mark_delete_position(), Some(p[10]));
    assert_eq!(c.stats().acked_ranges, 1);
    c.ack_individual(&[p[15]]).unwrap();
    assert_eq!(c.backlog(), 20 - 11 - 2);

    // Crash: a new broker, same metadata and bookies; the old one never closed (it stays
    // around, fenced, as a partitioned broker would). The new one runs on a manual clock, so
    // its cursor flushes happen exactly when the test moves time.
    c.flush().await.unwrap();
    let _crashed = (c, ml, factory);
    let clock = manual_clock();
    let factory = cluster.factory_with_clock(clock.clone());
    let ml = factory.open(name, config(8)).await.unwrap();
    let c = ml.cursor("sub").expect("restored");
    assert_eq!(c.mark_delete_position(), Some(p[10]));
    let mut got = Vec::new();
    loop {
        let batch = c.read_entries(3, u64::MAX).await.unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch.into_iter().map(|(_, b)| b));
    }
    let want: Vec<Bytes> = [11, 13, 14, 16, 17, 18, 19]
        .into_iter()
        .map(payload)
        .collect();
    assert_eq!(got, want);

    // Coalesced writes: acks only mark the cursor dirty; no flush, no close — once a flush
    // interval has passed the cursor's flusher has written them all to its record.
    let key = cursor_record_key(name, "sub");
    let stored_floor = async || {
        let stored = cluster
            .metadata
            .get(&key)
            .await
            .unwrap()
            .expect("cursor record");
        serde_json::from_slice::<CursorRecord>(&stored.value)
            .unwrap()
            .first_unacked
    };
    let before = stored_floor().await;
    c.ack_individual(&[p[11], p[13]]).unwrap();
    c.ack_cumulative(p[19]).unwrap();
    let floor = c.first_unacked();
    assert!(floor > before);
    assert_eq!(
        stored_floor().await,
        before,
        "nothing is written before the flush interval has passed"
    );
    let interval = Duration::from_millis(config(8).cursor_flush_interval_ms);
    wait::until_async(
        "the cursor's flusher writes the acks a flush interval later",
        Duration::from_secs(10),
        || {
            clock.advance(interval);
            async { (stored_floor().await == floor).then_some(()) }
        },
    )
    .await;
    // Crash again: only what the flusher wrote can be restored.
    let _crashed_again = (c, ml, factory);
    let factory = cluster.factory();
    let ml = factory.open(name, config(8)).await.unwrap();
    let c = ml.cursor("sub").unwrap();
    assert_eq!(c.backlog(), 0);
    assert!(c.read_entries(10, u64::MAX).await.unwrap().is_empty());
    ml.delete_cursor("sub").await.unwrap();
    assert!(ml.cursor("sub").is_none());
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_cursor_refuses_acks_beyond_the_last_confirmed_entry() {
    let cluster = Cluster::start(2).await;
    let factory = cluster.factory();
    let ml = factory
        .open("t/ns/persistent/ack-range", config(100))
        .await
        .unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    // Nothing written yet: every ack is beyond the end.
    assert!(matches!(
        c.ack_cumulative(Position::new(999, 5)),
        Err(ManagedLedgerError::InvalidAck { .. })
    ));
    let p = append_n(&ml, 0, 5).await;
    let beyond = Position::new(p[4].ledger.0, p[4].entry.0 + 10);
    assert!(matches!(
        c.ack_cumulative(beyond),
        Err(ManagedLedgerError::InvalidAck { .. })
    ));
    assert!(c.ack_individual(&[p[1], beyond]).is_err());
    assert!(!c.is_acked(p[1]), "a refused ack changes nothing");
    assert!(c.ack_batch_indexes(beyond, &[0b10]).is_err());
    assert!(c.ack_cumulative_batch(beyond, &[0b10]).is_err());
    assert_eq!(c.backlog(), 5);
    // Messages written after the refused ack are all still delivered.
    let later = append_n(&ml, 5, 3).await;
    let read: Vec<Position> = c
        .read_entries(100, u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(read.len(), 8);
    assert_eq!(read.last(), later.last());
    c.ack_cumulative(p[4]).unwrap();
    assert_eq!(c.backlog(), 3);
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_cursor_adopts_an_indeterminate_write_only_if_it_finds_its_own_record() {
    let cluster = Cluster::start(2).await;
    let name = "t/ns/persistent/indeterminate";
    let flaky = crate::test_support::IndeterminateStore::new(Arc::clone(&cluster.metadata));
    let factory = cluster.factory_with(flaky.clone());
    // A new cursor ledger (and so a record write) at every flush.
    let every_flush = ManagedLedgerConfig {
        cursor_ledger_entries_max: 1,
        ..config(100)
    };
    let ml = factory.open(name, every_flush).await.unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 10).await;
    let key = record::cursor_record_key(name, "sub");
    let records: magnetar_metadata::RecordStore<CursorRecord> =
        magnetar_metadata::RecordStore::new(Arc::clone(&cluster.metadata));

    // 1. The write landed but its answer was lost: found as ours, adopted, later writes go on.
    flaky.fail_next_put(&key, true);
    c.ack_cumulative(p[2]).unwrap();
    c.flush().await.unwrap();
    c.ack_cumulative(p[3]).unwrap();
    c.flush().await.unwrap();
    let (stored, _) = records.get(&key).await.unwrap().unwrap();
    assert_eq!(stored.first_unacked, p[4]);

    // 2. The write was lost and a new owner wrote the record meanwhile: never adopted, never
    //    overwritten — the cursor is fenced.
    flaky.fail_next_put(&key, false);
    let (mut theirs, version) = records.get(&key).await.unwrap().unwrap();
    theirs.first_unacked = p[1];
    theirs.updated_ms += 1;
    let _ = records
        .put(&key, &theirs, magnetar_metadata::Expected::Version(version))
        .await
        .unwrap();
    c.ack_cumulative(p[6]).unwrap();
    assert!(
        c.flush().await.is_err(),
        "the indeterminate write must not be taken as ours"
    );
    c.ack_cumulative(p[7]).unwrap();
    assert!(matches!(
        c.flush().await,
        Err(ManagedLedgerError::Fenced(_))
    ));
    let (stored, _) = records.get(&key).await.unwrap().unwrap();
    assert_eq!(stored, theirs, "the new owner's record is left alone");
    cluster.stop().await;
}

/// Auto-recovery fences (and closes) an idle open ledger that lost a replica. That is no new
/// owner: the writer replaces the ledger and goes on, nothing acknowledged is lost, and its
/// cursor, whose ledger was fenced the same way, keeps persisting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_fenced_by_recovery_alone_is_replaced_not_taken_as_a_new_owner() {
    let cluster = Cluster::start(3).await;
    let factory = cluster.factory();
    let name = "t/ns/persistent/recovered-under";
    let ml = factory.open(name, config(1000)).await.unwrap();
    let cursor = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let written = append_n(&ml, 0, 10).await;
    cursor.ack_cumulative(written[3]).unwrap();
    cursor.flush().await.unwrap();
    let cursor_ledger = {
        let records: magnetar_metadata::RecordStore<crate::record::CursorRecord> =
            magnetar_metadata::RecordStore::new(Arc::clone(&cluster.metadata));
        let (r, _) = records
            .get(&format!("/managed-ledgers/{name}/cursors/sub"))
            .await
            .unwrap()
            .expect("cursor record");
        r.cursor_ledger.expect("a cursor ledger")
    };

    // A replication worker's recovery of both (the managed ledger's record is untouched).
    let other = cluster.client();
    other
        .open_ledger_with_recovery(written[0].ledger)
        .await
        .unwrap();
    other
        .open_ledger_with_recovery(cursor_ledger)
        .await
        .unwrap();

    // The next append fails (its producer resends); then appends go to a new ledger.
    assert!(ml.append_wait(payload(10)).await.is_err());
    let real = magnetar_metadata::clock::system();
    let next = magnetar_metadata::clock::timeout(&*real, Duration::from_secs(20), async {
        loop {
            match ml.append_wait(payload(10)).await {
                Ok(p) => break p,
                Err(e) => {
                    assert!(!e.is_fenced(), "taken for a new owner: {e}");
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await
    .expect("appends resume on a new ledger");
    assert!(next.ledger > written[0].ledger);
    assert!(!ml.is_fenced());
    let got: Vec<Bytes> = read_all(&ml, Position::new(0, 0))
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(&got[..10], &(0..10).map(payload).collect::<Vec<_>>()[..]);
    assert_eq!(got.last(), Some(&payload(10)));

    // The cursor rolls over to a new ledger and its state survives a reload.
    cursor.ack_cumulative(written[7]).unwrap();
    cursor.flush().await.unwrap();
    ml.close().await.unwrap();
    let reopened = cluster.factory().open(name, config(1000)).await.unwrap();
    assert_eq!(
        reopened.cursor("sub").unwrap().mark_delete_position(),
        Some(written[7])
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_new_owner_claims_cursors_so_the_old_owner_cannot_overwrite_them() {
    let cluster = Cluster::start(2).await;
    let name = "t/ns/persistent/claim";
    let old_factory = cluster.factory();
    let old = old_factory.open(name, config(100)).await.unwrap();
    let old_cursor = old
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&old, 0, 10).await;
    old_cursor.ack_cumulative(p[2]).unwrap();
    old_cursor.flush().await.unwrap();

    // A new owner loads the topic while the old one has not noticed it lost it.
    let new_factory = cluster.factory();
    let new = new_factory.open(name, config(100)).await.unwrap();
    let new_cursor = new.cursor("sub").unwrap();
    assert_eq!(new_cursor.mark_delete_position(), Some(p[2]));

    // The old owner's late flush meets the claim and stops; the new owner's writes go on.
    old_cursor.ack_cumulative(p[9]).unwrap();
    assert!(matches!(
        old_cursor.flush().await,
        Err(ManagedLedgerError::Fenced(_))
    ));
    new_cursor.ack_cumulative(p[4]).unwrap();
    new_cursor.flush().await.unwrap();
    let key = record::cursor_record_key(name, "sub");
    let records: magnetar_metadata::RecordStore<CursorRecord> =
        magnetar_metadata::RecordStore::new(Arc::clone(&cluster.metadata));
    let (stored, _) = records.get(&key).await.unwrap().unwrap();
    assert_eq!(
        stored.first_unacked, p[5],
        "the new owner's state, not the old one's"
    );
    new.close().await.unwrap();
    cluster.stop().await;
}

/// The managed ledger's current ledger (the last listed).
fn current_ledger(ml: &ManagedLedger) -> magnetar_metadata::LedgerId {
    ml.ledgers().last().unwrap().ledger_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_open_takes_a_sealed_ledgers_length_from_its_previous_owners_hint() {
    let cluster = Cluster::start(2).await;
    let name = "t/ns/persistent/sealed-hint";
    let ml = cluster.factory().open(name, config(100)).await.unwrap();
    append_n(&ml, 0, 3).await;
    assert_eq!(ml.sealed_ledger(), None, "open: nothing sealed yet");
    let first = current_ledger(&ml);
    ml.close().await.unwrap();
    let sealed = ml
        .sealed_ledger()
        .expect("closed: its last ledger is sealed");
    assert_eq!((sealed.ledger, sealed.entries), (first, 3));
    assert!(sealed.size_bytes > 0);

    // A hint about another ledger is ignored: the open reads the listed ledger's metadata.
    let store = crate::test_support::IndeterminateStore::new(Arc::clone(&cluster.metadata));
    store.count_gets(&magnetar_bookie::client::metadata::ledger_key(first));
    let target = cluster.factory_with(store.clone());
    target.hint_sealed(
        name,
        SealedLedger {
            ledger: magnetar_metadata::LedgerId(first.0 + 1_000),
            entries: 99,
            size_bytes: 99,
        },
    );
    let ml = target.open(name, config(100)).await.unwrap();
    assert_eq!(target.sealed_hint_count(), 0, "the open consumed the hint");
    assert!(
        store.counted_gets() > 0,
        "no hint for it: the ledger's metadata is read"
    );
    assert_eq!(ml.ledgers()[0].entries, 3);
    append_n(&ml, 3, 2).await;
    let second = current_ledger(&ml);
    ml.close().await.unwrap();
    let sealed = ml.sealed_ledger().unwrap();
    assert_eq!((sealed.ledger, sealed.entries), (second, 2));

    // With the previous owner's hint, the length comes from it: no read of that ledger.
    let store = crate::test_support::IndeterminateStore::new(Arc::clone(&cluster.metadata));
    store.count_gets(&magnetar_bookie::client::metadata::ledger_key(second));
    let target = cluster.factory_with(store.clone());
    target.hint_sealed(name, sealed);
    let ml = target.open(name, config(100)).await.unwrap();
    assert_eq!(store.counted_gets(), 0, "the hint spared the metadata read");
    let listed: Vec<(magnetar_metadata::LedgerId, u64)> = ml
        .ledgers()
        .iter()
        .filter(|l| l.entries > 0)
        .map(|l| (l.ledger_id, l.entries))
        .collect();
    assert_eq!(listed, vec![(first, 3), (second, 2)]);
    append_n(&ml, 5, 1).await;
    let c = ml.new_non_durable_cursor(InitialPosition::Earliest);
    let read = c.read_entries(100, u64::MAX).await.unwrap();
    let got: Vec<Bytes> = read.into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, (0..6).map(payload).collect::<Vec<_>>());

    // Unused hints are forgotten on request.
    target.hint_sealed(name, sealed);
    target.discard_hints(&[name.to_owned()]);
    assert_eq!(target.sealed_hint_count(), 0);
    ml.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_open_uses_a_prepared_ledger_only_when_it_is_newest_and_alike() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client();
    let name = "t/ns/persistent/prepared";
    let first = cluster.factory();
    let ml = first.open(name, config(100)).await.unwrap();
    append_n(&ml, 0, 3).await;
    ml.close().await.unwrap();

    // Prepared, then opened: the open writes to the prepared ledger.
    let target = cluster.factory();
    let prepared = target.prepare(name, &config(100)).await.unwrap().unwrap();
    assert_eq!(target.prepared_count(), 1);
    let ml = target.open(name, config(100)).await.unwrap();
    assert_eq!(target.prepared_count(), 0);
    assert_eq!(current_ledger(&ml), prepared);
    assert_eq!(target.prepared_used_count(), 1);
    append_n(&ml, 3, 2).await;
    // Open here already: nothing to prepare.
    assert_eq!(target.prepare(name, &config(100)).await.unwrap(), None);

    // Prepared elsewhere, then the owner rolls over to a newer ledger: the prepared one would
    // put new entries behind old ones, so the open makes another and deletes it.
    let late = cluster.factory();
    let stale = late.prepare(name, &config(100)).await.unwrap().unwrap();
    ml.close().await.unwrap();
    let between = cluster.factory().open(name, config(100)).await.unwrap();
    append_n(&between, 5, 2).await;
    assert!(current_ledger(&between) > stale);
    between.close().await.unwrap();
    let ml = late.open(name, config(100)).await.unwrap();
    assert_ne!(current_ledger(&ml), stale);
    assert_eq!(late.prepared_used_count(), 0);
    assert!(ml.ledgers().iter().all(|l| l.ledger_id != stale));
    wait::until_async(
        "the stale prepared ledger is deleted",
        Duration::from_secs(10),
        || async {
            matches!(
                client.open_ledger(stale).await,
                Err(LedgerError::NoSuchLedger(_))
            )
            .then_some(())
        },
    )
    .await;
    ml.close().await.unwrap();

    // Prepared with another ledger configuration: not used, deleted.
    let other = cluster.factory();
    let wide = ManagedLedgerConfig {
        ack_quorum: 1,
        ..config(100)
    };
    let unlike = other.prepare(name, &wide).await.unwrap().unwrap();
    let ml = other.open(name, config(100)).await.unwrap();
    assert_ne!(current_ledger(&ml), unlike);
    wait::until_async(
        "the unlike prepared ledger is deleted",
        Duration::from_secs(10),
        || async {
            matches!(
                client.open_ledger(unlike).await,
                Err(LedgerError::NoSuchLedger(_))
            )
            .then_some(())
        },
    )
    .await;
    // Every entry reads back in order across the ledgers.
    let c = ml.new_non_durable_cursor(InitialPosition::Earliest);
    let read = c.read_entries(100, u64::MAX).await.unwrap();
    let got: Vec<Bytes> = read.into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, (0..7).map(payload).collect::<Vec<_>>());
    ml.close().await.unwrap();

    // Prepared and never opened: discarded.
    let idle = cluster.factory();
    let unused = idle.prepare(name, &config(100)).await.unwrap().unwrap();
    idle.discard_prepared(&[name.to_owned()]).await;
    assert_eq!(idle.prepared_count(), 0);
    assert!(matches!(
        client.open_ledger(unused).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_two_openers_racing_leave_the_winner_with_persisting_cursors() {
    // Cursors are claimed beside the head write: the opener that loses the head write may
    // have claimed a cursor record first, and the winner must still end up its only writer.
    let cluster = Cluster::start(2).await;
    let name = "t/ns/persistent/race";
    let first = cluster.factory();
    let ml = first.open(name, config(100)).await.unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 10).await;
    c.ack_cumulative(p[1]).unwrap();
    ml.close().await.unwrap();
    for round in 0..8 {
        let (a, b) = (cluster.factory(), cluster.factory());
        let (ra, rb) = futures::join!(a.open(name, config(100)), b.open(name, config(100)));
        let winner = match (ra, rb) {
            (Ok(w), Err(ManagedLedgerError::BadVersion { .. }))
            | (Err(ManagedLedgerError::BadVersion { .. }), Ok(w)) => w,
            (Ok(x), Ok(y)) => {
                // Both opened in turn (the second read the head after the first wrote it):
                // the second, whose new ledger came later, fenced the first.
                let newest = |m: &ManagedLedger| m.ledgers().last().map(|l| l.ledger_id);
                if newest(&x) > newest(&y) { x } else { y }
            }
            (Err(e), Err(f)) => panic!("round {round}: both opens failed: {e} / {f}"),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => panic!("round {round}: unexpected error {e}"),
        };
        let cursor = winner.cursor("sub").unwrap();
        let at = p[2 + round];
        cursor.ack_cumulative(at).unwrap();
        cursor
            .flush()
            .await
            .unwrap_or_else(|e| panic!("round {round}: the winner's cursor was fenced: {e}"));
        assert_eq!(
            cursor.mark_delete_position(),
            Some(at),
            "round {round}: the winner's cursor moved"
        );
        winner.close().await.unwrap();
    }
    // The last winner's close left its state; a new owner reads it back.
    let last = cluster.factory().open(name, config(100)).await.unwrap();
    assert_eq!(
        last.cursor("sub").unwrap().mark_delete_position(),
        Some(p[9])
    );
    last.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_cursor_record_keeps_the_lowest_acked_ranges_up_to_the_cap() {
    let cluster = Cluster::start(2).await;
    let name = "t/ns/persistent/many-ranges";
    let cfg = ManagedLedgerConfig {
        cursor_acked_ranges_persist_max: 3,
        ..config(100)
    };
    let factory = cluster.factory();
    let ml = factory.open(name, cfg.clone()).await.unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 12).await;
    // Every odd entry: six ranges (1, 3, 5, 7, 9, 11) above an unacked entry 0.
    let odd: Vec<Position> = p.iter().skip(1).step_by(2).copied().collect();
    c.ack_individual(&odd).unwrap();
    assert_eq!(c.stats().acked_ranges, 6);
    c.flush().await.unwrap();
    let _crashed = (c, ml, factory);

    let factory = cluster.factory();
    let ml = factory.open(name, cfg).await.unwrap();
    let c = ml.cursor("sub").expect("restored");
    assert_eq!(
        c.stats().acked_ranges,
        3,
        "the record holds the lowest three ranges"
    );
    let mut got = Vec::new();
    loop {
        let batch = c.read_entries(20, u64::MAX).await.unwrap();
        if batch.is_empty() {
            break;
        }
        got.extend(batch.into_iter().map(|(_, b)| b));
    }
    // 1, 3, 5 stay acked; the acks of 7, 9, 11 were past the cap: delivered again, not lost.
    let want: Vec<Bytes> = [0, 2, 4, 6, 7, 8, 9, 10, 11]
        .into_iter()
        .map(payload)
        .collect();
    assert_eq!(got, want);
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_cursor_rewind_seek_initial_positions_and_readers() {
    let cluster = Cluster::start(2).await;
    let factory = cluster.factory();
    let ml = factory
        .open("t/ns/persistent/seek", config(4))
        .await
        .unwrap();
    let p = append_n(&ml, 0, 6).await;
    let late = ml
        .open_cursor("late", InitialPosition::Latest)
        .await
        .unwrap();
    let early = ml
        .open_cursor("early", InitialPosition::Earliest)
        .await
        .unwrap();
    assert!(late.read_entries(10, u64::MAX).await.unwrap().is_empty());
    assert_eq!(late.backlog(), 0);
    let q = append_n(&ml, 6, 2).await;
    let got = late.read_entries(10, u64::MAX).await.unwrap();
    assert_eq!(got.iter().map(|(p, _)| *p).collect::<Vec<_>>(), q);

    let first = early.read_entries(10, u64::MAX).await.unwrap();
    assert_eq!(first.len(), 8);
    early.ack_individual(&[p[1]]).unwrap();
    early.rewind();
    let again = early.read_entries(10, u64::MAX).await.unwrap();
    assert_eq!(again.len(), 7, "acked p1 is not redelivered");
    early.seek(p[5]);
    let from5 = early.read_entries(10, u64::MAX).await.unwrap();
    assert_eq!(from5[0].0, p[5]);
    early.reset(q[0]);
    assert_eq!(early.backlog(), 2);
    assert_eq!(early.read_entries(1, u64::MAX).await.unwrap()[0].0, q[0]);

    // Readers: not stored, not counted for retention.
    let reader = ml.new_non_durable_cursor(InitialPosition::Earliest);
    assert!(!reader.is_durable());
    assert_eq!(reader.read_entries(100, u64::MAX).await.unwrap().len(), 8);
    let tail = ml.new_non_durable_cursor_at(q[1]);
    assert_eq!(tail.read_entries(100, u64::MAX).await.unwrap().len(), 1);
    assert_eq!(
        ml.cursor_names(),
        vec!["early".to_owned(), "late".to_owned()]
    );
    let stats = ml.stats();
    assert_eq!(stats.cursors["late"].backlog, 2);
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_tailing_reads_come_from_the_cache() {
    let cluster = Cluster::start(2).await;
    let factory = cluster.factory();
    let ml = factory
        .open("t/ns/persistent/tail", config(1000))
        .await
        .unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Latest)
        .await
        .unwrap();
    let mut watch = ml.subscribe_last_confirmed();
    let p = append_n(&ml, 0, 50).await;
    watch.changed().await.unwrap();
    assert_eq!(*watch.borrow(), p.last().copied());
    // Every bookie gone: tailing reads must not need them.
    for b in &cluster.bookies {
        cluster.connector.remove(b.id());
    }
    let before = factory.cache().stats();
    let mut got = 0;
    while got < 50 {
        let batch = c.read_entries(20, u64::MAX).await.unwrap();
        assert!(!batch.is_empty());
        got += batch.len();
    }
    let after = factory.cache().stats();
    assert_eq!(got, 50);
    assert_eq!(after.misses, before.misses, "no cache miss on the tail");
    assert!(after.hits > before.hits || ml.last_confirmed().is_some());
    assert!(after.inserts >= 50);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_retention_trims_only_consumed_ledgers() {
    let cluster = Cluster::start(2).await;
    let factory = cluster.factory();
    let client = cluster.client();
    let ml = factory
        .open("t/ns/persistent/ret", config(5))
        .await
        .unwrap();
    let fast = ml
        .open_cursor("fast", InitialPosition::Earliest)
        .await
        .unwrap();
    let slow = ml
        .open_cursor("slow", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 20).await;
    // The rollover after the 20th entry runs once its append completed: wait for it.
    wait::until(
        "the rollover after the 20th entry",
        Duration::from_secs(10),
        || ml.ledgers().len() == 5,
    )
    .await;
    let ledgers: Vec<_> = ml.ledgers().iter().map(|l| l.ledger_id).collect();
    assert_eq!(ledgers.len(), 5, "4 full ledgers and the current one");
    fast.ack_cumulative(p[19]).unwrap();
    assert!(
        ml.trim().await.unwrap().is_empty(),
        "slow has consumed nothing"
    );
    // slow consumed the first ledger fully and part of the second.
    slow.ack_cumulative(p[6]).unwrap();
    let trimmed = ml.trim().await.unwrap();
    assert_eq!(trimmed, vec![ledgers[0]]);
    assert!(matches!(
        client.ledger_metadata(ledgers[0]).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    assert!(client.ledger_metadata(ledgers[1]).await.is_ok());
    assert_eq!(ml.first_position(), Some(p[5]));
    let all = read_all(&ml, Position::new(0, 0)).await;
    assert_eq!(all.len(), 15);

    // With infinite retention nothing is trimmed even when consumed.
    slow.ack_cumulative(p[19]).unwrap();
    ml.close().await.unwrap();
    let keep = ManagedLedgerConfig {
        retention_time_ms: -1,
        retention_size_bytes: -1,
        ..config(5)
    };
    let other = cluster.factory();
    let ml = other.open("t/ns/persistent/ret", keep).await.unwrap();
    assert!(ml.trim().await.unwrap().is_empty());
    ml.close().await.unwrap();
    // Default retention (0/0): everything consumed goes, the current ledger stays.
    let ml = cluster
        .factory()
        .open("t/ns/persistent/ret", config(5))
        .await
        .unwrap();
    let trimmed = ml.trim().await.unwrap();
    assert_eq!(trimmed.len(), 3);
    assert_eq!(ml.ledgers().len(), 1);
    ml.delete().await.unwrap();
    assert!(
        cluster
            .metadata
            .get("/managed-ledgers/t/ns/persistent/ret")
            .await
            .unwrap()
            .is_none()
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_backs_off_while_no_ledger_can_be_created() {
    // E=Qw=Qa=1 with entries_max 1: every append needs a new ledger. The backoff runs on a
    // manual clock: the test decides how much time passes between appends.
    let cluster = Cluster::start(1).await;
    let clock = manual_clock();
    let factory = cluster.factory_with_clock(clock.clone());
    let ml = factory
        .open(
            "t/ns/persistent/outage",
            ManagedLedgerConfig {
                ensemble_size: 1,
                write_quorum: 1,
                ack_quorum: 1,
                ..config(1)
            },
        )
        .await
        .unwrap();
    append_n(&ml, 0, 1).await;
    // The only bookie dies but stays registered (its session has not expired yet): ledgers can
    // still be created on it, and every write to them fails.
    let id = cluster.bookies[0].id().clone();
    cluster.connector.remove(&id);
    // The rollover the first append asked for (ledger creation is metadata only, so it
    // succeeds without the bookie): counting starts once it is recorded.
    wait::until(
        "the rollover after the first append",
        Duration::from_secs(10),
        || ml.ledgers().len() == 2,
    )
    .await;
    let ids_before = cluster.metadata.get("/ids/ledger").await.unwrap();
    // A producer retrying hard for a second, an append every 5 ms: each append fails, fast —
    // at once, while the clock stands still (one waiting for the backoff would never end).
    let real = magnetar_metadata::clock::system();
    let started = real.now();
    let mut failures = 0;
    for _ in 0..200 {
        let result = magnetar_metadata::clock::timeout(&*real, Duration::from_secs(5), async {
            match ml.append(Bytes::from_static(b"x")).await {
                Ok(handle) => handle.await,
                Err(e) => Err(e),
            }
        })
        .await
        .expect("a failing append answers without waiting for the clock");
        assert!(result.is_err(), "no bookie: appends must fail");
        failures += 1;
        clock.advance(Duration::from_millis(5));
    }
    let took = started.elapsed();
    let ids_after = cluster.metadata.get("/ids/ledger").await.unwrap();
    let allocated = |v: Option<magnetar_metadata::Versioned>| {
        v.map_or(0, |v| {
            std::str::from_utf8(&v.value)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
    };
    let attempts = allocated(ids_after) - allocated(ids_before);
    assert!(
        failures > 50 && took < Duration::from_secs(4),
        "appends fail fast during the outage ({failures} in {took:?})"
    );
    assert!(
        attempts <= 6,
        "ledger creation is retried with backoff, not per append: {attempts} ids in 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_becomes_writable_again_without_appends() {
    // The broker refuses producers while the managed ledger is unwritable, so no append comes
    // to retry the rollover: the write actor must retry on its own once the backoff ends. The
    // backoff runs on a manual clock, moved on only by the test.
    let cluster = Cluster::start(1).await;
    let clock = manual_clock();
    let ml = cluster
        .factory_with_clock(clock.clone())
        .open(
            "t/ns/persistent/heals",
            ManagedLedgerConfig {
                ensemble_size: 1,
                write_quorum: 1,
                ack_quorum: 1,
                ..config(100)
            },
        )
        .await
        .unwrap();
    let before = append_n(&ml, 0, 2).await;
    let bookie = Arc::clone(&cluster.bookies[0]);
    cluster.connector.remove(bookie.id());
    let failed = ml.append(payload(2)).await.unwrap().await;
    assert!(failed.is_err(), "no bookie: the write fails");
    wait::until(
        "the managed ledger reports itself unwritable",
        Duration::from_secs(10),
        || ml.unwritable().is_some(),
    )
    .await;
    // A rollover attempt fails too while the bookie is away (its error replaces the write's):
    // it comes once the backoff has passed on the clock.
    let first = ml.unwritable();
    let step = Duration::from_millis(100);
    wait::until(
        "a rollover attempted once the backoff passed",
        Duration::from_secs(10),
        || {
            clock.advance(step);
            ml.unwritable() != first
        },
    )
    .await;
    cluster.connector.insert(bookie.clone());
    // No append from here until the managed ledger says it is writable: only time passes.
    wait::until(
        "writable again once the bookie is back and the backoff passed, without an append",
        Duration::from_secs(10),
        || {
            clock.advance(step);
            ml.unwritable().is_none()
        },
    )
    .await;
    let after = append_n(&ml, 3, 1).await;
    assert!(after[0] > before[1]);
    ml.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_suspends_appends_after_a_failed_write_until_resumed() {
    let cluster = Cluster::start(1).await;
    let clock = manual_clock();
    let ml = cluster
        .factory_with_clock(clock.clone())
        .open(
            "t/ns/persistent/suspend",
            ManagedLedgerConfig {
                ensemble_size: 1,
                write_quorum: 1,
                ack_quorum: 1,
                suspend_appends_after_failure: true,
                ..config(100)
            },
        )
        .await
        .unwrap();
    let before = append_n(&ml, 0, 2).await;
    let bookie = Arc::clone(&cluster.bookies[0]);
    cluster.connector.remove(bookie.id());
    let failed = ml.append(payload(2)).await.unwrap().await;
    assert!(failed.is_err(), "no bookie: the write fails");
    // The bookie is back, the failure's backoff over and the managed ledger writable again
    // (the write actor rolled over on its own): appends stay refused all the same.
    cluster.connector.insert(bookie.clone());
    wait::until(
        "writable again once the backoff passed",
        Duration::from_secs(10),
        || {
            clock.advance(Duration::from_millis(100));
            ml.unwritable().is_none()
        },
    )
    .await;
    let refused = ml.append(payload(3)).await.unwrap().await;
    assert!(
        matches!(refused, Err(ManagedLedgerError::AppendsSuspended(_))),
        "refused until resumed: {refused:?}"
    );
    ml.resume_appends().await.unwrap();
    let after = append_n(&ml, 4, 2).await;
    assert!(after[0] > before[1], "appends go on after the stored ones");
    let stored: Vec<Bytes> = ml
        .read_entries(before[0], 10, u64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(stored, vec![payload(0), payload(1), payload(4), payload(5)]);
    ml.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_cursor_batch_index_acks_persist_across_reopen() {
    let cluster = Cluster::start(2).await;
    let name = "t/ns/persistent/batch-acks";
    let factory = cluster.factory();
    let ml = factory.open(name, config(100)).await.unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 4).await;
    // Entry 1 (a batch of 10): indexes 0, 2 and 5 acknowledged.
    let all: u64 = 0b11_1111_1111;
    assert!(!c.ack_batch_indexes(p[1], &[all & !0b1]).unwrap());
    // A consumer that rebuilt its set from the batch size still has 0 set: intersected.
    assert!(!c.ack_batch_indexes(p[1], &[all & !0b10_0100]).unwrap());
    assert_eq!(c.batch_ack_set(p[1]), Some(vec![all & !0b10_0101]));
    // Cumulative inside entry 2: entries 0 and 1 acknowledged, 2 keeps indexes 4..10.
    assert!(!c.ack_cumulative_batch(p[2], &[all & !0b1111]).unwrap());
    assert_eq!(c.mark_delete_position(), Some(p[1]));
    assert_eq!(c.batch_ack_set(p[1]), None, "dropped below the floor");
    assert_eq!(c.batch_ack_set(p[2]), Some(vec![all & !0b1111]));
    // Entry 3: partially, then the rest acknowledged individually.
    assert!(!c.ack_batch_indexes(p[3], &[0b110]).unwrap());
    assert!(c.ack_batch_indexes(p[3], &[0b001]).unwrap());
    assert!(c.is_acked(p[3]) && c.batch_ack_set(p[3]).is_none());

    // Crash after a flush: a new broker restores the sets with the cursor.
    c.flush().await.unwrap();
    let _crashed = (c, ml, factory);
    let factory = cluster.factory();
    let ml = factory.open(name, config(100)).await.unwrap();
    let c = ml.cursor("sub").expect("restored");
    assert_eq!(c.mark_delete_position(), Some(p[1]));
    assert_eq!(c.batch_ack_set(p[2]), Some(vec![all & !0b1111]));
    assert!(c.is_acked(p[3]));
    let read = c.read_entries(10, u64::MAX).await.unwrap();
    assert_eq!(read.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![p[2]]);
    // The rest of entry 2 acknowledged: the floor passes it and the set is gone.
    assert!(c.ack_batch_indexes(p[2], &[0]).unwrap());
    assert_eq!(c.mark_delete_position(), Some(p[3]));
    assert_eq!(c.batch_ack_set(p[2]), None);
    c.flush().await.unwrap();
    ml.close().await.unwrap();
    cluster.stop().await;
}

/// Sources that count which ledgers were opened and read, over the bookies' sources.
#[derive(Debug)]
struct CountingSources {
    inner: Arc<dyn LedgerSources>,
    opened: std::sync::Mutex<Vec<magnetar_metadata::LedgerId>>,
}

#[async_trait::async_trait]
impl LedgerSources for CountingSources {
    async fn open(&self, name: &str, ledger: &LedgerInfo) -> MlResult<Arc<dyn LedgerSource>> {
        self.opened.lock().unwrap().push(ledger.ledger_id);
        self.inner.open(name, ledger).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_reads_each_ledger_through_the_source_chosen_for_it() {
    let cluster = Cluster::start(2).await;
    let writer = cluster.factory();
    let ml = writer
        .open("t/ns/persistent/sources", config(10))
        .await
        .unwrap();
    let written = append_n(&ml, 0, 25).await;
    ml.close().await.unwrap();

    // Another broker, cold cache, its reads through counting sources.
    let sources = Arc::new(CountingSources {
        inner: BookieSources::new(cluster.client()),
        opened: std::sync::Mutex::new(Vec::new()),
    });
    let reader = cluster
        .factory()
        .with_sources(Arc::clone(&sources) as Arc<dyn LedgerSources>);
    let ml = reader
        .open("t/ns/persistent/sources", config(10))
        .await
        .unwrap();
    let all = read_all(&ml, Position::new(0, 0)).await;
    let got: Vec<Bytes> = all.into_iter().map(|(_, b)| b).collect();
    assert_eq!(got, (0..25).map(payload).collect::<Vec<_>>());
    // Every ledger that held entries was opened through the sources, once each.
    let mut want: Vec<_> = written.iter().map(|p| p.ledger).collect();
    want.dedup();
    assert_eq!(*sources.opened.lock().unwrap(), want);
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_with_100000_ledgers_still_rolls_over_trims_and_reads() {
    use crate::ledger_list::{LedgerList, chunks_prefix};
    use crate::record::{LedgerRecordState, ManagedLedgerRecord, ledger_record_key};
    use magnetar_metadata::{EntryId, Expected, LedgerId};

    const NAME: &str = "t/ns/persistent/history";
    let cluster = Cluster::start(2).await;
    // Years of retention: 100,000 closed ledgers (far past the ~6,000 one 1 MiB value held).
    // Their data is not on this test's bookies; new ledgers get higher ids.
    let history = ManagedLedgerRecord {
        ledgers: (1..=100_000u64)
            .map(|id| LedgerInfo {
                ledger_id: LedgerId(id),
                entries: 1,
                size_bytes: 100,
                created_ms: 1_600_000_000_000 + id,
                closed_ms: Some(1_600_000_000_000 + id),
                state: LedgerRecordState::Closed,
                location: LedgerLocation::Bookies,
                offload: None,
            })
            .collect(),
        created_ms: 1_600_000_000_000,
        properties: Default::default(),
    };
    let mut list = LedgerList::new(Arc::clone(&cluster.metadata), NAME);
    let seeded = list.write(&history, Expected::Absent).await.unwrap();
    assert!(seeded.written().is_some());
    let _ = cluster
        .metadata
        .put(
            magnetar_bookie::client::metadata::LEDGER_ID_KEY,
            Bytes::from_static(b"100000"),
            Expected::Any,
        )
        .await
        .unwrap();

    let keep = ManagedLedgerConfig {
        retention_time_ms: -1,
        retention_size_bytes: -1,
        ..config(10)
    };
    let ml = cluster.factory().open(NAME, keep.clone()).await.unwrap();
    let p = append_n(&ml, 0, 35).await;
    wait::until("three rollovers", Duration::from_secs(10), || {
        ml.ledgers().len() == 100_004
    })
    .await;
    assert!(p[0].ledger > LedgerId(100_000));
    let all = read_all(&ml, p[0]).await;
    assert_eq!(all.len(), 35);
    assert_eq!(all.last().map(|(_, b)| b.clone()), Some(payload(34)));
    let head = cluster
        .metadata
        .get(&ledger_record_key(NAME))
        .await
        .unwrap()
        .unwrap();
    assert!(
        head.value.len() < 1024 * 1024 / 2,
        "head {} bytes",
        head.value.len()
    );
    ml.close().await.unwrap();

    // A new owner loads the whole list and goes on.
    let ml = cluster.factory().open(NAME, keep).await.unwrap();
    let ledgers = ml.ledgers();
    assert_eq!(
        ledgers.len(),
        100_005,
        "3 full, 1 closed at close, the new current"
    );
    assert_eq!(ledgers[0].ledger_id, LedgerId(1));
    assert_eq!(read_all(&ml, p[0]).await.len(), 35);
    ml.close().await.unwrap();

    // Retention 0 and no cursor: every closed ledger is trimmed, chunks and all.
    let ml = cluster.factory().open(NAME, config(10)).await.unwrap();
    let trimmed = ml.trim().await.unwrap();
    assert_eq!(trimmed.len(), 100_004);
    assert_eq!(ml.ledgers().len(), 1);
    let chunks = cluster.metadata.list(&chunks_prefix(NAME)).await.unwrap();
    assert!(
        chunks.entries.is_empty(),
        "{} chunks left",
        chunks.entries.len()
    );
    assert_eq!(ml.first_position(), None);
    let q = append_n(&ml, 100, 1).await;
    assert_eq!(read_all(&ml, Position::new(0, 0)).await.len(), 1);
    assert_eq!(q[0].entry, EntryId(0));
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_cursor_state_goes_to_a_cursor_ledger_not_to_the_metadata_store() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client();
    let name = "t/ns/persistent/cursor-ledger";
    let cfg = ManagedLedgerConfig {
        cursor_ledger_entries_max: 10,
        ..config(1000)
    };
    let ml = cluster.factory().open(name, cfg.clone()).await.unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 100).await;
    let key = record::cursor_record_key(name, "sub");
    let version = |v: magnetar_metadata::Versioned| v.version;
    let created = version(cluster.metadata.get(&key).await.unwrap().unwrap());

    // 35 flushes: the first starts a cursor ledger, every 10th snapshot rolls it over. The
    // record is written only then — 4 times, not 35.
    let mut ledgers = Vec::new();
    let mut writes = 0;
    let mut last_version = created;
    for (i, pos) in p.iter().enumerate().take(35) {
        if i % 2 == 0 {
            c.ack_cumulative(*pos).unwrap();
        } else {
            c.ack_individual(&[p[i + 1]]).unwrap();
        }
        c.flush().await.unwrap();
        let v = cluster.metadata.get(&key).await.unwrap().unwrap();
        if v.version != last_version {
            writes += 1;
            last_version = v.version;
            let r: CursorRecord = serde_json::from_slice(&v.value).unwrap();
            ledgers.push(r.cursor_ledger.expect("the record names the cursor ledger"));
        }
    }
    assert_eq!(
        writes, 4,
        "record writes for 35 snapshots, 10 per cursor ledger"
    );
    // Rolled-over cursor ledgers are deleted; the current one holds the state.
    for old in &ledgers[..ledgers.len() - 1] {
        assert!(matches!(
            client.ledger_metadata(*old).await,
            Err(LedgerError::NoSuchLedger(_))
        ));
    }
    let expected_floor = c.first_unacked();
    let expected_acked: Vec<bool> = p.iter().map(|q| c.is_acked(*q)).collect();

    // A new owner (the old one crashed: nothing sealed) recovers the state from the ledger.
    let other = cluster.factory();
    let ml2 = other.open(name, cfg.clone()).await.unwrap();
    let c2 = ml2.cursor("sub").unwrap();
    assert_eq!(c2.first_unacked(), expected_floor);
    assert_eq!(
        p.iter().map(|q| c2.is_acked(*q)).collect::<Vec<_>>(),
        expected_acked
    );
    // ... and the old owner's next snapshot meets the fenced cursor ledger.
    c.ack_cumulative(p[60]).unwrap();
    assert!(matches!(
        c.flush().await,
        Err(ManagedLedgerError::Fenced(_))
    ));
    assert_eq!(c2.first_unacked(), expected_floor);

    // Unsubscribing deletes the record and the cursor ledger.
    c2.ack_cumulative(p[70]).unwrap();
    c2.flush().await.unwrap();
    let r: CursorRecord =
        serde_json::from_slice(&cluster.metadata.get(&key).await.unwrap().unwrap().value).unwrap();
    let current = r.cursor_ledger.unwrap();
    ml2.delete_cursor("sub").await.unwrap();
    assert!(cluster.metadata.get(&key).await.unwrap().is_none());
    assert!(matches!(
        client.ledger_metadata(current).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    ml2.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_leaves_a_small_cursor_state_in_its_record_and_a_large_one_in_its_sealed_ledger() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client();
    let name = "t/ns/persistent/close-inline";
    let ml = cluster.factory().open(name, config(10_000)).await.unwrap();
    let small = ml
        .open_cursor("small", InitialPosition::Earliest)
        .await
        .unwrap();
    let large = ml
        .open_cursor("large", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 6000).await;
    small.ack_cumulative(p[4]).unwrap();
    small.ack_individual(&[p[7], p[9]]).unwrap();
    // Every other entry: 3000 acked ranges, a snapshot far above what goes into a record.
    let every_other: Vec<Position> = p.iter().skip(1).step_by(2).copied().collect();
    large.ack_individual(&every_other).unwrap();
    small.flush().await.unwrap();
    large.flush().await.unwrap();
    let record = async |cursor: &str| {
        let key = cursor_record_key(name, cursor);
        let v = cluster
            .metadata
            .get(&key)
            .await
            .unwrap()
            .expect("cursor record");
        serde_json::from_slice::<CursorRecord>(&v.value).unwrap()
    };
    let small_ledger = record("small")
        .await
        .cursor_ledger
        .expect("flushes go to a cursor ledger");
    let large_ledger = record("large").await.cursor_ledger.unwrap();
    assert_eq!(large.stats().acked_ranges, 3000);
    // Changed after the last flush: the close's own write carries it.
    small.ack_individual(&[p[11]]).unwrap();
    ml.close().await.unwrap();

    // The small state is in the record; its ledger is deleted.
    let r = record("small").await;
    assert_eq!(
        r.cursor_ledger, None,
        "a closed cursor's record holds its state"
    );
    assert_eq!(r.first_unacked, p[5]);
    wait::until_async(
        "the closed cursor's ledger is deleted",
        Duration::from_secs(10),
        || async {
            matches!(
                client.ledger_metadata(small_ledger).await,
                Err(LedgerError::NoSuchLedger(_))
            )
            .then_some(())
        },
    )
    .await;
    // The large one stays in its ledger, sealed: the next owner reads it without fencing.
    assert_eq!(record("large").await.cursor_ledger, Some(large_ledger));
    let sealed = client.open_ledger(large_ledger).await.unwrap();
    assert!(sealed.metadata().is_closed());
    let last = sealed.metadata().last_entry_id as u64;
    let snapshot = sealed.read(last).await.unwrap().payload;
    assert!(
        snapshot.len() > crate::cursor_store::INLINE_ON_CLOSE_BYTES_MAX,
        "the large snapshot ({} bytes) must exceed what goes into a record",
        snapshot.len()
    );

    // The next owner has both states.
    let ml = cluster.factory().open(name, config(10_000)).await.unwrap();
    let small = ml.cursor("small").unwrap();
    assert_eq!(small.first_unacked(), p[5]);
    assert!(small.is_acked(p[7]) && small.is_acked(p[9]) && small.is_acked(p[11]));
    assert!(!small.is_acked(p[8]) && !small.is_acked(p[10]));
    let large = ml.cursor("large").unwrap();
    assert!(every_other.iter().all(|q| large.is_acked(*q)));
    assert!(!large.is_acked(p[0]) && !large.is_acked(p[5998]));
    // Its acks go to a new cursor ledger.
    small.ack_cumulative(p[20]).unwrap();
    small.flush().await.unwrap();
    let again = record("small").await.cursor_ledger;
    assert!(again.is_some_and(|l| l != small_ledger), "{again:?}");
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_with_a_lost_cursor_ledger_fails_to_load_naming_it() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client();
    let name = "t/ns/persistent/lost-cursor-ledger";
    let ml = cluster.factory().open(name, config(100)).await.unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 5).await;
    c.ack_cumulative(p[3]).unwrap();
    c.flush().await.unwrap();
    let key = record::cursor_record_key(name, "sub");
    let r: CursorRecord =
        serde_json::from_slice(&cluster.metadata.get(&key).await.unwrap().unwrap().value).unwrap();
    let lost = r.cursor_ledger.expect("the record names the cursor ledger");
    // The ledger the record names is lost while its owner still runs (a crash without a clean
    // close: a closing cursor would move its state into the record).
    let _old_owner = (ml, c);
    client.delete_ledger(lost).await.unwrap();

    let err = cluster.factory().open(name, config(100)).await.unwrap_err();
    match &err {
        ManagedLedgerError::CursorLedger { cursor, ledger, .. } => {
            assert_eq!((cursor.as_str(), *ledger), ("sub", lost));
        }
        other => panic!("expected a cursor-ledger error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(name) && text.contains(&lost.to_string()),
        "{text}"
    );
    // The rest keeps serving.
    let other = cluster
        .factory()
        .open("t/ns/persistent/unrelated", config(100))
        .await
        .unwrap();
    append_n(&other, 0, 3).await;
    other.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_managed_ledgers_and_their_tasks_are_released() {
    let cluster = Cluster::start(2).await;
    let factory = cluster.factory();
    let mut weak = Vec::new();
    for i in 0..20 {
        let ml = factory
            .open(&format!("t/ns/persistent/released-{i}"), config(5))
            .await
            .unwrap();
        let c = ml
            .open_cursor("sub", InitialPosition::Earliest)
            .await
            .unwrap();
        let p = append_n(&ml, 0, 7).await;
        c.ack_cumulative(p[3]).unwrap();
        weak.push(Arc::downgrade(&ml.shared));
        ml.close().await.unwrap();
    }
    assert_eq!(
        factory.open_count(),
        0,
        "closed managed ledgers leave the factory"
    );
    // With the handles gone, the write actors, cursor flushers and retention tasks end and
    // drop every reference to the shared state.
    wait::until(
        "every closed managed ledger's state freed",
        Duration::from_secs(10),
        || weak.iter().all(|w| w.upgrade().is_none()),
    )
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_ledger_rolls_over_by_age_only_when_its_ledger_holds_entries() {
    let cluster = Cluster::start(2).await;
    let clock = manual_clock();
    let factory = cluster.factory_with_clock(clock.clone());
    let cfg = ManagedLedgerConfig {
        ledger_age_ms_max: 60_000,
        retention_time_ms: -1,
        retention_size_bytes: -1,
        ..config(1000)
    };
    let ml = factory.open("t/ns/persistent/aged", cfg).await.unwrap();
    // An empty current ledger has no age timer: idle, it stays.
    clock.advance(Duration::from_secs(600));
    assert_eq!(ml.ledgers().len(), 1);
    // Its first entry finds it past the limit (counted from its creation): rolled over.
    append_n(&ml, 0, 1).await;
    wait::until("the rollover by age", Duration::from_secs(10), || {
        ml.ledgers().len() == 2
    })
    .await;
    // The next ledger rolls over once it is 60 s old, not before.
    append_n(&ml, 1, 1).await;
    clock.advance(Duration::from_secs(59));
    append_n(&ml, 2, 1).await;
    assert_eq!(ml.ledgers().len(), 2, "59 s old: not yet");
    clock.advance(Duration::from_secs(2));
    wait::until(
        "the second rollover by age",
        Duration::from_secs(10),
        || ml.ledgers().len() == 3,
    )
    .await;
    let entries: Vec<u64> = ml.ledgers().iter().map(|l| l.entries).collect();
    assert_eq!(entries, vec![1, 2, 0]);
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_managed_ledger_runs_no_task_and_wakes_for_every_command() {
    let cluster = Cluster::start(2).await;
    let factory = cluster.factory();
    let ml = factory
        .open("t/ns/persistent/parked", config(3))
        .await
        .unwrap();
    // Opened with an empty ledger: the write actor is parked from the start.
    assert!(ml.commands.is_idle());
    // Appends from several tasks, each awaiting its own before the next, so the actor parks
    // and is woken while others queue; rollovers (every 3 entries) run in between.
    let mut tasks = Vec::new();
    for t in 0..4u8 {
        let ml = Arc::clone(&ml);
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..30u8 {
                positions.push(ml.append_wait(Bytes::from(vec![t, i])).await.unwrap());
                tokio::task::yield_now().await;
            }
            positions
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let p = t.await.unwrap();
        assert!(p.windows(2).all(|w| w[0] < w[1]), "{p:?}");
        all.extend(p);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 120);
    assert_eq!(ml.ledgers().iter().map(|l| l.entries).sum::<u64>(), 120);
    wait::until("the actor parks again", Duration::from_secs(10), || {
        ml.commands.is_idle()
    })
    .await;
    // A property write and a close each wake it.
    ml.set_property("k", "v").await.unwrap();
    ml.close().await.unwrap();
    let reopened = cluster
        .factory()
        .open("t/ns/persistent/parked", config(3))
        .await
        .unwrap();
    assert_eq!(
        reopened.properties().get("k").map(String::as_str),
        Some("v")
    );
    assert_eq!(
        reopened.ledgers().iter().map(|l| l.entries).sum::<u64>(),
        120
    );
    reopened.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_periodically_and_close_does_not_wait_out_the_cursor_flush_interval() {
    let cluster = Cluster::start(2).await;
    let clock = manual_clock();
    let factory = cluster.factory_with_clock(clock.clone());
    let ml = factory
        .open("t/ns/persistent/periodic", config(5))
        .await
        .unwrap();
    let c = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let p = append_n(&ml, 0, 12).await;
    wait::until("two rollovers", Duration::from_secs(10), || {
        ml.ledgers().len() == 3
    })
    .await;
    c.ack_cumulative(p[9]).unwrap();
    // The retention check (every 60 s by default) trims the two consumed ledgers on its own.
    clock.advance(Duration::from_secs(61));
    wait::until("the periodic trim", Duration::from_secs(10), || {
        ml.ledgers().len() == 1
    })
    .await;
    // The ack leaves the cursor's flusher in its coalescing wait, on a clock that no longer
    // moves: close's flush is answered at once all the same, and the acks are stored.
    c.ack_cumulative(p[10]).unwrap();
    ml.close().await.unwrap();
    let reopened = cluster
        .factory()
        .open("t/ns/persistent/periodic", config(5))
        .await
        .unwrap();
    assert_eq!(reopened.cursor("sub").unwrap().first_unacked(), p[11]);
    reopened.close().await.unwrap();
    cluster.stop().await;
}
