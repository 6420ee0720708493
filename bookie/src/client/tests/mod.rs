//! Unit tests of the ledger client against in-memory fake bookies and the memory metadata store.

mod fake;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnetar_metadata::{EntryId, LedgerId};
use magnetar_testkit::wait;

use self::fake::{Cluster, Mode, register};
use super::metadata::write_set;
use super::*;
use crate::api::{BookieClient, BookieState, Entry};

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("entry-{i:04}"))
}

/// Appends `n` entries pipelined (all queued before any is awaited) and checks their ids.
async fn append_n(w: &LedgerWriter, from: u64, n: u64) {
    let mut handles = Vec::new();
    for i in from..from + n {
        handles.push(w.append(payload(i)).await.unwrap());
    }
    for (i, h) in (from..).zip(handles) {
        assert_eq!(h.await.unwrap(), EntryId(i));
    }
}

async fn check_all(reader: &LedgerReader, n: u64) {
    let entries = reader.read_range(0, n - 1).await.unwrap();
    assert_eq!(entries.len() as u64, n);
    for (i, e) in (0..).zip(&entries) {
        assert_eq!(e.entry, EntryId(i));
        assert_eq!(e.payload, payload(i));
        assert!(e.is_intact());
    }
}

fn total_len(n: u64) -> u64 {
    (0..n).map(|i| payload(i).len() as u64).sum()
}

#[tokio::test]
async fn create_append_close_read_striped() {
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 30).await;
    assert_eq!(w.last_add_confirmed(), 29);
    let meta = w.close().await.unwrap();
    assert_eq!(meta.state, LedgerState::Closed);
    assert_eq!(meta.last_entry_id, 29);
    assert_eq!(meta.length_bytes, total_len(30));
    assert!(matches!(
        w.append(payload(99)).await.unwrap().await,
        Err(LedgerError::LedgerClosed(_))
    ));

    // Each entry is on exactly its write set.
    let ensemble = &meta.ensembles[0].bookies;
    for e in 0..30u64 {
        let holders: Vec<usize> = (0..3)
            .filter(|&p| cluster.bookie(&ensemble[p]).has(w.id(), e))
            .collect();
        let mut expected = write_set(e, 3, 2);
        expected.sort();
        assert_eq!(holders, expected, "entry {e}");
    }

    let stored = client.ledger_metadata(w.id()).await.unwrap();
    assert_eq!(stored, meta);
    let r = client.open_ledger(w.id()).await.unwrap();
    assert_eq!(r.last_add_confirmed(), 29);
    check_all(&r, 30).await;
    assert_eq!(r.read(7).await.unwrap().payload, payload(7));
    assert!(matches!(
        r.read(30).await,
        Err(LedgerError::EntryOutOfRange {
            entry: 30,
            last_readable: 29,
            ..
        })
    ));
}

#[tokio::test]
async fn single_bookie_ledger() {
    let cluster = Cluster::new(1).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(1, 1, 1))
        .await
        .unwrap();
    append_n(&w, 0, 10).await;
    let meta = w.close().await.unwrap();
    assert_eq!(meta.last_entry_id, 9);
    let r = client.open_ledger(w.id()).await.unwrap();
    check_all(&r, 10).await;
}

#[tokio::test]
async fn empty_ledger_closes_with_no_entries() {
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(2, 2, 1))
        .await
        .unwrap();
    let meta = w.close().await.unwrap();
    assert_eq!((meta.last_entry_id, meta.length_bytes), (-1, 0));
    let r = client.open_ledger(w.id()).await.unwrap();
    assert!(r.read_range(0, 0).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_writer_parks_and_every_append_racing_its_parking_completes() {
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    let w = Arc::new(
        client
            .create_ledger(LedgerConfig::new(3, 2, 2))
            .await
            .unwrap(),
    );
    // Never written: no task at all.
    assert!(w.is_idle());
    assert_eq!(w.append_wait(payload(0)).await.unwrap(), EntryId(0));
    wait::until(
        "the writer parks once idle",
        Duration::from_secs(10),
        || w.is_idle(),
    )
    .await;
    // Appends from several tasks, each waiting for its own completion, so the actor parks
    // and is woken again and again while others queue: every append completes, in order.
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (w, next) = (Arc::clone(&w), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..150 {
                let h = w
                    .append(payload(
                        next.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    ))
                    .await
                    .unwrap();
                ids.push(h.await.unwrap());
                tokio::task::yield_now().await;
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        assert!(ids.windows(2).all(|p| p[0] < p[1]), "{ids:?}");
        all.extend(ids);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=600).map(EntryId).collect::<Vec<_>>());
    wait::until("parked again", Duration::from_secs(10), || w.is_idle()).await;
    // Close wakes it; closing again answers from the parked actor.
    let meta = w.close().await.unwrap();
    assert_eq!(meta.last_entry_id, 600);
    assert_eq!(w.close().await.unwrap().last_entry_id, 600);
    let r = client.open_ledger(w.id()).await.unwrap();
    assert_eq!(r.read_range(0, 600).await.unwrap().len(), 601);
}

#[tokio::test]
async fn invalid_quorums_are_refused() {
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    let err = client
        .create_ledger(LedgerConfig::new(2, 3, 2))
        .await
        .unwrap_err();
    assert!(matches!(err, LedgerError::InvalidConfig(_)), "{err}");
}

#[tokio::test]
async fn completions_come_in_entry_order_under_pipelining() {
    let cluster = Cluster::new(3).await;
    for b in &cluster.bookies {
        b.add_jitter_ms(5);
    }
    let client = cluster.client();
    let w = Arc::new(
        client
            .create_ledger(LedgerConfig::new(3, 2, 2))
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let h = w.append(payload(i)).await.unwrap();
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let id = h.await.unwrap();
            assert_eq!(id, EntryId(i));
            // Every earlier entry completed before this one: the LAC already covers it.
            assert!(w.last_add_confirmed() >= i as i64);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(w.last_add_confirmed(), 199);
    w.close().await.unwrap();
}

#[tokio::test]
async fn a_later_entry_waits_for_an_earlier_slow_one() {
    let cluster = Cluster::new(2).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(2, 1, 1))
        .await
        .unwrap();
    let meta = client.ledger_metadata(w.id()).await.unwrap();
    // Entry 0 goes to position 0 only, entry 1 to position 1 only.
    cluster
        .bookie(&meta.ensembles[0].bookies[0])
        .add_delay_ms(300);
    let h0 = w.append(payload(0)).await.unwrap();
    let mut h1 = w.append(payload(1)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut h1)
            .await
            .is_err(),
        "entry 1 was acked by its bookie but must wait for entry 0"
    );
    assert_eq!(w.last_add_confirmed(), -1);
    assert_eq!(h0.await.unwrap(), EntryId(0));
    assert_eq!(h1.await.unwrap(), EntryId(1));
}

#[tokio::test]
async fn backpressure_bounds_pending_adds() {
    let cluster = Cluster::new(1).await;
    cluster.bookies[0].set_mode(Mode::Hang);
    let client = LedgerClient::new(
        cluster.store.clone(),
        cluster.connector.clone(),
        LedgerClientOptions {
            max_pending_adds: 4,
            add_timeout_ms: 60_000,
            ..Cluster::options()
        },
    );
    let w = client
        .create_ledger(LedgerConfig::new(1, 1, 1))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..4 {
        handles.push(w.append(payload(i)).await.unwrap());
    }
    let fifth = tokio::time::timeout(Duration::from_millis(100), w.append(payload(4))).await;
    assert!(fifth.is_err(), "a fifth append must wait for room");
}

#[tokio::test]
async fn bookie_failure_mid_stream_changes_the_ensemble() {
    let cluster = Cluster::new(4).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 10).await;
    let first = client.ledger_metadata(w.id()).await.unwrap().ensembles[0]
        .bookies
        .clone();
    let victim = first[1].clone();
    cluster.bookie(&victim).set_mode(Mode::Down);
    append_n(&w, 10, 20).await;

    let meta = client.ledger_metadata(w.id()).await.unwrap();
    assert_eq!(meta.ensembles.len(), 2, "{meta:?}");
    let second = &meta.ensembles[1];
    assert_eq!(second.first_entry, 10);
    assert!(!second.bookies.contains(&victim));
    assert_eq!(second.bookies[0], first[0]);
    assert_eq!(second.bookies[2], first[2]);

    let meta = w.close().await.unwrap();
    assert_eq!(meta.last_entry_id, 29);
    let r = client.open_ledger(w.id()).await.unwrap();
    check_all(&r, 30).await;
}

#[tokio::test]
async fn hanging_bookie_is_replaced_after_the_add_timeout() {
    let cluster = Cluster::new(4).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 3, 2))
        .await
        .unwrap();
    append_n(&w, 0, 3).await;
    let victim = client.ledger_metadata(w.id()).await.unwrap().ensembles[0].bookies[0].clone();
    cluster.bookie(&victim).set_mode(Mode::Hang);
    // Qa=2 of Qw=3: entries still complete; the hung bookie is replaced after the timeout.
    append_n(&w, 3, 5).await;
    wait::until_async(
        "the hung bookie is replaced in the ensemble",
        Duration::from_secs(10),
        || async {
            let meta = client.ledger_metadata(w.id()).await.unwrap();
            (!meta.last_ensemble().bookies.contains(&victim)).then_some(())
        },
    )
    .await;
    append_n(&w, 8, 2).await;
    let meta = w.close().await.unwrap();
    assert!(!meta.last_ensemble().bookies.contains(&victim), "{meta:?}");
    let r = client.open_ledger(w.id()).await.unwrap();
    check_all(&r, 10).await;
}

#[tokio::test]
async fn read_only_bookie_is_replaced() {
    let cluster = Cluster::new(4).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 4).await;
    let victim = client.ledger_metadata(w.id()).await.unwrap().ensembles[0].bookies[2].clone();
    cluster.bookie(&victim).set_mode(Mode::ReadOnly);
    register(&cluster.store, &victim, BookieState::ReadOnly, None).await;
    append_n(&w, 4, 6).await;
    let meta = w.close().await.unwrap();
    assert!(!meta.last_ensemble().bookies.contains(&victim));
    check_all(&client.open_ledger(w.id()).await.unwrap(), 10).await;
}

#[tokio::test]
async fn not_enough_bookies_is_a_clear_error() {
    let cluster = Cluster::new(2).await;
    let client = cluster.client();
    let err = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::NotEnoughBookies {
                needed: 3,
                available: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "not enough writable bookies: need 3, 2 available"
    );

    // No spare for an ensemble change: pending and later appends fail with the same error.
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 3, 3))
        .await
        .unwrap();
    append_n(&w, 0, 2).await;
    cluster.bookies[0].set_mode(Mode::Down);
    let err = w.append(payload(2)).await.unwrap().await.unwrap_err();
    assert!(
        matches!(err, LedgerError::NotEnoughBookies { .. }),
        "{err:?}"
    );
    let err = w.append(payload(3)).await.unwrap().await.unwrap_err();
    assert!(
        matches!(err, LedgerError::NotEnoughBookies { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_writer_out_of_bookies_still_seals_the_ledger_at_its_lac() {
    // Every bookie read-only (full disks): the add fails, no replacement exists. The close
    // must not need a writable bookie — it is a metadata CAS at the LAC, as BookKeeper's —
    // and the failed entry, never acknowledged, is not part of the ledger.
    let cluster = Cluster::new(2).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(2, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 3).await;
    for b in &cluster.bookies {
        b.set_mode(Mode::ReadOnly);
    }
    let err = w.append(payload(3)).await.unwrap().await.unwrap_err();
    assert!(
        matches!(err, LedgerError::NotEnoughBookies { .. }),
        "{err:?}"
    );
    let meta = w.close().await.expect("sealed without writable bookies");
    assert_eq!(meta.state, LedgerState::Closed);
    assert_eq!(meta.last_entry_id, 2);
    let stored = client.ledger_metadata(w.id()).await.unwrap();
    assert_eq!(
        (stored.state, stored.last_entry_id),
        (LedgerState::Closed, 2)
    );
    check_all(&client.open_ledger(w.id()).await.unwrap(), 3).await;
}

#[tokio::test]
async fn recovery_fences_a_live_writer_and_keeps_every_acked_entry() {
    let cluster = Cluster::new(3).await;
    let writer_client = cluster.client();
    let w = writer_client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 25).await;

    let recovering = cluster.client();
    let r = recovering.open_ledger_with_recovery(w.id()).await.unwrap();
    assert!(r.is_closed());
    let meta = r.metadata();
    assert_eq!(meta.state, LedgerState::Closed);
    assert_eq!(meta.last_entry_id, 24);
    assert_eq!(meta.length_bytes, total_len(25));
    check_all(&r, 25).await;

    let err = w.append(payload(25)).await.unwrap().await.unwrap_err();
    assert!(matches!(err, LedgerError::Fenced(_)), "{err:?}");
    let err = w.append(payload(26)).await.unwrap().await.unwrap_err();
    assert!(matches!(err, LedgerError::Fenced(_)), "{err:?}");
    assert!(w.close().await.is_err());
    // Recovering again is a plain open.
    let again = recovering.open_ledger_with_recovery(w.id()).await.unwrap();
    assert_eq!(again.metadata(), meta);
}

#[tokio::test]
async fn recovery_learns_the_length_from_the_tail_without_reading_the_ledger() {
    let cluster = Cluster::new(3).await;
    let w = cluster
        .client()
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    // In rounds of 50 pipelined appends: entries carry the LAC of when they were sent, so the
    // unconfirmed tail recovery must read is at most one round.
    for round in 0..40 {
        append_n(&w, round * 50, 50).await;
    }
    let id = w.id();
    drop(w);
    let before: u64 = cluster.bookies.iter().map(|b| b.entries_read()).sum();
    let r = cluster
        .client()
        .open_ledger_with_recovery(id)
        .await
        .unwrap();
    let read: u64 = cluster
        .bookies
        .iter()
        .map(|b| b.entries_read())
        .sum::<u64>()
        - before;
    let meta = r.metadata();
    assert_eq!(meta.last_entry_id, 1999);
    assert_eq!(meta.length_bytes, total_len(2000));
    // The tail from LAC+1 on (one round), from each replica of its write set, plus the
    // not-found probe past the end: never the 2000 entries before it.
    assert!(
        read <= 2 * 51,
        "recovery read {read} entries of a 2000-entry ledger"
    );
    check_all(&r, 2000).await;
}

#[tokio::test]
async fn recovery_rereplicates_a_tail_entry_found_on_one_replica() {
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 5).await;
    let id = w.id();
    drop(w);
    let meta = client.ledger_metadata(id).await.unwrap();
    // The writer sent entry 5 to one replica of its write set and died.
    let ws = meta.write_set_bookies(5);
    let tail = Entry::new(id, EntryId(5), 4, Bytes::from_static(b"unacked tail"));
    cluster.bookie(&ws[1]).insert(tail.clone());
    assert!(!cluster.bookie(&ws[0]).has(id, 5));

    let r = cluster
        .client()
        .open_ledger_with_recovery(id)
        .await
        .unwrap();
    let meta = r.metadata();
    assert_eq!(meta.last_entry_id, 5);
    assert_eq!(meta.length_bytes, total_len(5) + tail.payload.len() as u64);
    for b in &ws {
        assert!(
            cluster.bookie(b).has(id, 5),
            "{b} lacks the recovered entry"
        );
    }
    assert_eq!(r.read(5).await.unwrap(), tail);
    for b in &cluster.bookies {
        assert!(b.is_fenced(id));
    }
}

#[tokio::test]
async fn recovery_with_a_bookie_down_changes_the_ensemble() {
    let cluster = Cluster::new(4).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 6).await;
    let id = w.id();
    drop(w);
    let meta = client.ledger_metadata(id).await.unwrap();
    let ws = meta.write_set_bookies(6);
    cluster
        .bookie(&ws[0])
        .insert(Entry::new(id, EntryId(6), 5, payload(6)));
    let down = ws[1].clone();
    cluster.bookie(&down).set_mode(Mode::Down);

    let r = cluster
        .client()
        .open_ledger_with_recovery(id)
        .await
        .unwrap();
    let meta = r.metadata();
    assert_eq!(meta.last_entry_id, 6);
    assert!(!meta.last_ensemble().bookies.contains(&down));
    assert_eq!(meta.last_ensemble().first_entry, 6);
    for b in meta.write_set_bookies(6) {
        assert!(cluster.bookie(&b).has(id, 6));
    }
    check_all(&r, 7).await;
}

#[tokio::test]
async fn recovery_fails_clearly_when_too_few_bookies_fence() {
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 3).await;
    cluster.bookies[0].set_mode(Mode::Down);
    cluster.bookies[1].set_mode(Mode::Down);
    let err = cluster
        .client()
        .open_ledger_with_recovery(w.id())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::NotEnoughReplicas { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no ack quorum"), "{err}");
}

#[tokio::test]
async fn corrupt_replica_is_read_from_another() {
    for (e, qw) in [(3, 2), (2, 2)] {
        let cluster = Cluster::new(3).await;
        let client = cluster.client();
        let w = client
            .create_ledger(LedgerConfig::new(e, qw, 2))
            .await
            .unwrap();
        append_n(&w, 0, 6).await;
        let meta = w.close().await.unwrap();
        for entry in 0..6 {
            let first = meta.write_set_bookies(entry)[0].clone();
            cluster.bookie(&first).corrupt(w.id(), entry);
        }
        let r = client.open_ledger(w.id()).await.unwrap();
        check_all(&r, 6).await;
        assert_eq!(r.read(3).await.unwrap().payload, payload(3));
    }
}

#[tokio::test]
async fn speculative_read_when_the_first_replica_hangs() {
    let cluster = Cluster::new(3).await;
    let client = LedgerClient::new(
        cluster.store.clone(),
        cluster.connector.clone(),
        LedgerClientOptions {
            read_timeout_ms: 30_000,
            ..Cluster::options()
        },
    );
    let w = client
        .create_ledger(LedgerConfig::new(3, 3, 3))
        .await
        .unwrap();
    append_n(&w, 0, 3).await;
    let meta = w.close().await.unwrap();
    let r = client.open_ledger(w.id()).await.unwrap();
    let first = meta.write_set_bookies(1)[0].clone();
    cluster.bookie(&first).hang_reads(true);
    let start = magnetar_metadata::clock::system().now();
    assert_eq!(r.read(1).await.unwrap().payload, payload(1));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn placement_spreads_over_zones() {
    let cluster = Cluster::with_zones(6, &["z1", "z2", "z3"]).await;
    let client = cluster.client();
    for _ in 0..10 {
        let w = client
            .create_ledger(LedgerConfig::new(3, 2, 2))
            .await
            .unwrap();
        let meta = client.ledger_metadata(w.id()).await.unwrap();
        // Bookie i sits in zone i % 3; its port encodes i.
        let mut zones: Vec<u16> = meta.ensembles[0]
            .bookies
            .iter()
            .map(|b| (b.0.rsplit(':').next().unwrap().parse::<u16>().unwrap() - 3181) % 3)
            .collect();
        zones.sort();
        assert_eq!(zones, vec![0, 1, 2]);
    }
}

#[tokio::test]
async fn delete_ledger_removes_it_everywhere_despite_a_down_bookie() {
    let cluster = Cluster::new(4).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 6).await;
    let meta = w.close().await.unwrap();
    let bookies = meta.ensembles[0].bookies.clone();
    cluster.bookie(&bookies[0]).set_mode(Mode::Down);
    client.delete_ledger(w.id()).await.unwrap();
    assert!(matches!(
        client.open_ledger(w.id()).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
    for b in &bookies[1..] {
        assert_eq!(cluster.bookie(b).entry_count(w.id()), 0);
    }
    assert!(matches!(
        client.delete_ledger(LedgerId(999)).await,
        Err(LedgerError::NoSuchLedger(_))
    ));
}

#[tokio::test]
async fn tailing_reader_follows_the_lac() {
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 3, 2))
        .await
        .unwrap();
    // One at a time, so each entry carries the previous one as LAC (pipelined entries carry
    // an older LAC).
    for i in 0..3 {
        assert_eq!(w.append_wait(payload(i)).await.unwrap(), EntryId(i));
    }
    let r = client.open_ledger(w.id()).await.unwrap();
    // Entries carry the LAC of the entry before them: entry 2 says 1.
    assert_eq!(r.last_add_confirmed(), 1);
    assert!(matches!(
        r.read(2).await,
        Err(LedgerError::EntryOutOfRange { .. })
    ));
    assert_eq!(r.read(1).await.unwrap().payload, payload(1));

    let poll = tokio::spawn(async move {
        let lac = r
            .read_lac_long_poll(1, Duration::from_secs(5))
            .await
            .unwrap();
        (lac, r)
    });
    // Parked at the bookies: none has a LAC above 1 yet.
    wait::until(
        "the reader's long poll waits at a bookie",
        Duration::from_secs(5),
        || cluster.bookies.iter().any(|b| b.lac_polls_waiting() > 0),
    )
    .await;
    assert!(!poll.is_finished());
    w.append_wait(payload(3)).await.unwrap();
    let (lac, r) = poll.await.unwrap();
    assert!(lac >= 2, "{lac}");
    assert_eq!(r.read(2).await.unwrap().payload, payload(2));
    w.close().await.unwrap();
    // Once closed, the reader sees the last entry.
    r.read_lac_long_poll(lac, Duration::from_millis(100))
        .await
        .unwrap();
}

#[tokio::test]
async fn tailing_reader_follows_an_ensemble_change() {
    let cluster = Cluster::new(2).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(1, 1, 1))
        .await
        .unwrap();
    for i in 0..2 {
        w.append_wait(payload(i)).await.unwrap();
    }
    let r = client.open_ledger(w.id()).await.unwrap();
    assert_eq!(r.last_add_confirmed(), 0);
    let first = r.metadata().ensembles[0].bookies[0].clone();
    cluster.bookie(&first).set_mode(Mode::Down);
    for i in 2..4 {
        w.append_wait(payload(i)).await.unwrap();
    }
    // The reader's bookie is gone; it finds the new ensemble in the metadata.
    let mut lac = 0;
    for _ in 0..3 {
        lac = r
            .read_lac_long_poll(lac, Duration::from_millis(500))
            .await
            .unwrap();
    }
    // Entry 3 carries LAC 2.
    assert_eq!(lac, 2);
    assert_eq!(r.metadata().ensembles.len(), 2);
    assert_eq!(r.read(2).await.unwrap().payload, payload(2));
}

#[tokio::test]
async fn registry_follows_registrations() {
    use magnetar_metadata::{Expected, MetadataStore};
    let cluster = Cluster::new(3).await;
    let client = cluster.client();
    client
        .create_ledger(LedgerConfig::new(3, 3, 3))
        .await
        .unwrap();
    let gone = cluster.bookies[2].id().clone();
    let _ = cluster
        .store
        .delete(&crate::api::registration_key(&gone), Expected::Any)
        .await
        .unwrap();
    // The client learns of the change through its watch of the registrations.
    wait::until_async(
        "the deregistered bookie is no longer used",
        Duration::from_secs(10),
        || async {
            matches!(
                client.create_ledger(LedgerConfig::new(3, 3, 3)).await,
                Err(LedgerError::NotEnoughBookies { available: 2, .. })
            )
            .then_some(())
        },
    )
    .await;
    register(&cluster.store, &gone, BookieState::ReadWrite, None).await;
    wait::until_async(
        "the re-registered bookie is used again",
        Duration::from_secs(10),
        || async {
            client
                .create_ledger(LedgerConfig::new(3, 3, 3))
                .await
                .is_ok()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn recovery_during_a_stalled_write_keeps_every_acked_entry() {
    let cluster = Cluster::new(4).await;
    let client = cluster.client();
    let w = client
        .create_ledger(LedgerConfig::new(3, 2, 2))
        .await
        .unwrap();
    append_n(&w, 0, 5).await;
    let meta = client.ledger_metadata(w.id()).await.unwrap();
    let stalled = meta.ensembles[0].bookies[1].clone();
    cluster.bookie(&stalled).set_mode(Mode::Hang);
    let mut handles = Vec::new();
    for i in 5..12 {
        handles.push(w.append(payload(i)).await.unwrap());
    }
    let r = cluster
        .client()
        .open_ledger_with_recovery(w.id())
        .await
        .unwrap();
    let last = r.metadata().last_entry_id;
    assert!(last >= 4, "{last}");
    let mut acked = 5;
    for h in handles {
        match h.await {
            Ok(id) => {
                assert!(
                    id.0 as i64 <= last,
                    "acked entry {id} lost by recovery ({last})"
                );
                acked += 1;
            }
            Err(e) => assert!(matches!(e, LedgerError::Fenced(_)), "{e:?}"),
        }
    }
    // Recovery may keep unacknowledged entries found on a replica, never fewer than acked.
    assert!(last + 1 >= acked);
    check_all(&r, (last + 1) as u64).await;
    let err = w.append(payload(99)).await.unwrap().await.unwrap_err();
    assert!(matches!(err, LedgerError::Fenced(_)), "{err:?}");
}
