//! Offload tests: a managed ledger on real in-process bookies offloading to a real directory
//! through the `filesystem` driver, with faults injected by the store's wrapper. (The S3 driver
//! is tested on a real S3-compatible server in `magnetar-offload`'s tests and end to end in the
//! broker's.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use magnetar_bookie::client::LedgerError;
use magnetar_metadata::EntryId;
use magnetar_metadata::clock::{self, Random};
use magnetar_offload::store::Driver;
use magnetar_offload::{
    DriverConfig, OffloadReader, OffloadStore, OffloadTargets, ReadOptions, RetryPolicy,
    UploadOptions,
};
use magnetar_testkit::wait;

use crate::test_support::Cluster;
use crate::*;

fn config(entries_max: u64, deletion_lag_ms: i64) -> ManagedLedgerConfig {
    ManagedLedgerConfig {
        ensemble_size: 2,
        write_quorum: 2,
        ack_quorum: 2,
        ledger_entries_max: entries_max,
        retention_time_ms: -1,
        retention_size_bytes: -1,
        offload_deletion_lag_ms: deletion_lag_ms,
        ..Default::default()
    }
}

fn payload(i: usize) -> Bytes {
    Bytes::from(format!("message-{i:05}-{}", "x".repeat(i % 300)))
}

fn offloader(dir: &std::path::Path) -> Arc<Offloader> {
    let cfg = DriverConfig {
        driver: Driver::Filesystem,
        directory: dir.join("bucket"),
        ..DriverConfig::default()
    };
    let retry = RetryPolicy {
        attempts_max: 2,
        delay_min: Duration::from_millis(5),
        delay_max: Duration::from_millis(10),
        ..RetryPolicy::default()
    };
    let store = OffloadStore::build(&cfg, retry.clone(), clock::system()).unwrap();
    let reader = OffloadReader::new(
        store,
        ReadOptions {
            block_size_bytes: 8 * 1024,
            ..ReadOptions::default()
        },
    );
    Offloader::new(
        OffloadTargets::new(cfg, reader, retry, clock::system()),
        UploadOptions::default(),
        2,
        Random::from_seed(7),
    )
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

async fn read_all(ml: &ManagedLedger) -> Vec<(Position, Bytes)> {
    let mut out = Vec::new();
    let Some(mut pos) = ml.first_position() else {
        return out;
    };
    loop {
        let got = ml.read_entries(pos, 7, u64::MAX).await.unwrap();
        let Some((last, _)) = got.last().cloned() else {
            break;
        };
        out.extend(got);
        pos = Position {
            ledger: last.ledger,
            entry: EntryId(last.entry.0 + 1),
        };
    }
    out
}

async fn wait_run(ml: &ManagedLedger) -> OffloadStatus {
    wait::until_some("the offload run ends", Duration::from_secs(30), || {
        let s = ml.offload_status();
        (s.status != OffloadRun::Running).then_some(s)
    })
    .await
}

async fn objects(o: &Offloader) -> Vec<String> {
    o.store()
        .list(o.store().prefix())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_ledgers_offload_and_read_back_the_same_after_the_bookie_copy_is_gone() {
    let cluster = Cluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let o = offloader(dir.path());
    let factory = cluster.factory().with_offloader(Arc::clone(&o));
    let ml = factory
        .open("t/ns/persistent/off", config(10, 0))
        .await
        .unwrap();
    let written = append_n(&ml, 0, 35).await;
    let before = read_all(&ml).await;
    assert_eq!(before.len(), 35);

    ml.offload_up_to(*written.last().unwrap()).unwrap();
    let status = wait_run(&ml).await;
    assert_eq!(status.status, OffloadRun::Success, "{status:?}");
    let ledgers = ml.ledgers();
    let closed: Vec<&record::LedgerInfo> = ledgers.iter().filter(|l| l.entries == 10).collect();
    assert_eq!(closed.len(), 3);
    for l in &closed {
        let state = l.offloaded().expect("offloaded");
        // Zero deletion lag: the bookies' copy is gone, and recorded so.
        assert!(
            state.bookies_deleted && l.location == LedgerLocation::Offloaded,
            "{l:?}"
        );
        assert!(matches!(
            cluster.client().open_ledger(l.ledger_id).await,
            Err(LedgerError::NoSuchLedger(_))
        ));
    }
    // The ledger being written stays on the bookies.
    assert!(ledgers.last().unwrap().offload.is_none());
    assert_eq!(
        objects(&o).await.len(),
        6,
        "one data and one index object per ledger"
    );

    // Same positions, same bytes, from object storage — also after a new owner loads it.
    assert_eq!(read_all(&ml).await, before);
    ml.close().await.unwrap();
    let again = cluster.factory().with_offloader(Arc::clone(&o));
    let ml = again
        .open("t/ns/persistent/off", config(10, 0))
        .await
        .unwrap();
    assert_eq!(read_all(&ml).await[..35], before[..]);
    let stats = ml.internal_stats();
    assert_eq!(stats.ledgers.iter().filter(|l| l.offloaded).count(), 3);

    // Deleting the managed ledger deletes its objects.
    ml.delete().await.unwrap();
    assert!(objects(&o).await.is_empty(), "{:?}", objects(&o).await);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_keeps_the_bookie_copy_reports_the_error_and_leaves_no_objects() {
    let cluster = Cluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let o = offloader(dir.path());
    let factory = cluster.factory().with_offloader(Arc::clone(&o));
    let ml = factory
        .open("t/ns/persistent/fail", config(10, 0))
        .await
        .unwrap();
    let written = append_n(&ml, 0, 25).await;
    let before = read_all(&ml).await;

    o.store().faults().set_down(true);
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    let status = wait_run(&ml).await;
    assert_eq!(status.status, OffloadRun::Error);
    assert!(status.last_error.contains("filesystem"), "{status:?}");
    // Nothing offloaded, bookies keep everything, reads unaffected, publishing goes on.
    assert!(ml.ledgers().iter().all(|l| l.offloaded().is_none()));
    assert_eq!(read_all(&ml).await, before);
    append_n(&ml, 25, 6).await;

    o.store().faults().set_down(false);
    assert!(
        objects(&o).await.is_empty(),
        "the failed attempt left {:?}",
        objects(&o).await
    );
    let last = ml.last_confirmed().unwrap();
    ml.offload_up_to(last).unwrap();
    assert_eq!(wait_run(&ml).await.status, OffloadRun::Success);
    assert_eq!(
        ml.ledgers()
            .iter()
            .filter(|l| l.offloaded().is_some())
            .count(),
        3
    );
    assert_eq!(read_all(&ml).await.len(), 31);
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_part_is_retried_by_the_next_run_under_a_new_attempt() {
    let cluster = Cluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let o = offloader(dir.path());
    let factory = cluster.factory().with_offloader(Arc::clone(&o));
    // Deletion lag of an hour: the bookies keep their copy.
    let ml = factory
        .open("t/ns/persistent/part", config(10, 3_600_000))
        .await
        .unwrap();
    let written = append_n(&ml, 0, 15).await;
    // Small ledgers take the single-put path: fail that put (the data object's) more times
    // than the store's retries cover.
    o.store().faults().fail_puts.store(2, Ordering::SeqCst);
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    assert_eq!(wait_run(&ml).await.status, OffloadRun::Error);
    let first = ml.ledgers()[0]
        .offload
        .clone()
        .expect("the attempt was recorded before uploading");
    assert!(!first.complete);
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    assert_eq!(wait_run(&ml).await.status, OffloadRun::Success);
    let done = ml.ledgers()[0].offload.clone().unwrap();
    assert!(done.complete && done.uid != first.uid && !done.bookies_deleted);
    // Only the complete attempt's two objects remain.
    let objs = objects(&o).await;
    assert_eq!(objs.len(), 2, "{objs:?}");
    assert!(objs.iter().all(|p| p.contains(&done.uid)), "{objs:?}");
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trimming_an_offloaded_ledger_deletes_its_objects() {
    let cluster = Cluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let o = offloader(dir.path());
    let factory = cluster.factory().with_offloader(Arc::clone(&o));
    let mut cfg = config(10, 0);
    cfg.retention_time_ms = 0;
    cfg.retention_size_bytes = 0;
    let ml = factory.open("t/ns/persistent/trim", cfg).await.unwrap();
    let written = append_n(&ml, 0, 25).await;
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    assert_eq!(wait_run(&ml).await.status, OffloadRun::Success);
    assert_eq!(objects(&o).await.len(), 4);
    // No cursor holds the history back: a trim removes both closed ledgers and their objects.
    let removed = ml.trim().await.unwrap();
    assert_eq!(removed.len(), 2);
    assert!(objects(&o).await.is_empty(), "{:?}", objects(&o).await);
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleaner_deletes_only_objects_no_record_references() {
    use object_store::ObjectStoreExt;
    let cluster = Cluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let o = offloader(dir.path());
    let factory = cluster.factory().with_offloader(Arc::clone(&o));
    let ml = factory
        .open("t/ns/persistent/clean", config(10, 3_600_000))
        .await
        .unwrap();
    let written = append_n(&ml, 0, 15).await;
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    assert_eq!(wait_run(&ml).await.status, OffloadRun::Success);
    let kept = objects(&o).await;
    assert_eq!(kept.len(), 2);
    // Orphans: a crashed attempt of the same ledger, a ledger no record holds, a deleted
    // topic's objects, and something that is not ours at all.
    let ledger = ml.ledgers()[0].ledger_id;
    let root = o.store().prefix().clone();
    let orphans = [
        format!("t/ns/persistent/clean/{ledger}/deadbeef.data"),
        format!("t/ns/persistent/clean/{ledger}/deadbeef.index"),
        "t/ns/persistent/clean/999999/abc.data".to_owned(),
        "t/ns/persistent/gone/5/abc.index".to_owned(),
    ];
    for p in &orphans {
        let path = object_store::path::Path::parse(format!("{root}/{p}")).unwrap();
        o.store()
            .object_store()
            .put(&path, Bytes::from_static(b"x").into())
            .await
            .unwrap();
    }
    let foreign = object_store::path::Path::parse(format!("{root}/README")).unwrap();
    o.store()
        .object_store()
        .put(&foreign, Bytes::from_static(b"x").into())
        .await
        .unwrap();

    // Within the grace period nothing goes.
    let now = clock::system().now_ms();
    let r = offload::clean_orphans(&o, &cluster.metadata, 3_600_000, now)
        .await
        .unwrap();
    assert_eq!(r.objects_deleted, 0);
    let r = offload::clean_orphans(&o, &cluster.metadata, 0, now + 1_000)
        .await
        .unwrap();
    assert_eq!(r.objects_deleted, orphans.len(), "{r:?}");
    let mut left = objects(&o).await;
    left.sort();
    let mut want = kept.clone();
    want.push(foreign.to_string());
    want.sort();
    assert_eq!(left, want);
    // The offloaded ledger still reads.
    assert_eq!(read_all(&ml).await.len(), 15);
    ml.close().await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_stored_completion_counts() {
    use crate::test_support::IndeterminateStore;
    let cluster = Cluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let o = offloader(dir.path());
    let store = IndeterminateStore::new(Arc::clone(&cluster.metadata));
    let factory = cluster
        .factory_with(store.clone())
        .with_offloader(Arc::clone(&o));
    let name = "t/ns/persistent/cas";
    let ml = factory.open(name, config(10, 3_600_000)).await.unwrap();
    let written = append_n(&ml, 0, 15).await;
    let key = record::ledger_record_key(name);

    // The completion write is lost on its way (not applied): nothing counts as offloaded, the
    // attempt's objects are deleted, the bookies keep the ledger, reads are unaffected.
    store.fail_nth_put(&key, 1, false);
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    let status = wait_run(&ml).await;
    assert_eq!(status.status, OffloadRun::Error, "{status:?}");
    let l = ml.ledgers()[0].clone();
    assert!(
        l.offloaded().is_none() && l.offload.as_ref().is_some_and(|o| !o.complete),
        "{l:?}"
    );
    assert!(objects(&o).await.is_empty(), "{:?}", objects(&o).await);
    assert_eq!(read_all(&ml).await.len(), 15);

    // Its answer is lost (applied): the re-read record shows it stored, so it counts.
    store.fail_nth_put(&key, 1, true);
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    assert_eq!(wait_run(&ml).await.status, OffloadRun::Success);
    assert!(ml.ledgers()[0].offloaded().is_some());
    assert_eq!(objects(&o).await.len(), 2);
    assert_eq!(read_all(&ml).await.len(), 15);
    ml.close().await.unwrap();
    cluster.stop().await;
}

/// Every object under `dir`'s prefix, as a filesystem store `cfg` sees it.
async fn objects_in(cfg: &DriverConfig) -> Vec<String> {
    let store = OffloadStore::build(cfg, RetryPolicy::default(), clock::system()).unwrap();
    store
        .list(store.prefix())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_naming_another_store_offloads_there_and_reads_and_deletes_from_there() {
    let cluster = Cluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let o = offloader(dir.path());
    let other = DriverConfig {
        driver: Driver::Filesystem,
        directory: dir.path().join("other-bucket"),
        ..DriverConfig::default()
    };
    let factory = cluster.factory().with_offloader(Arc::clone(&o));
    let name = "t/ns/persistent/elsewhere";
    let ml = factory.open(name, config(10, 0)).await.unwrap();
    let written = append_n(&ml, 0, 25).await;
    let before = read_all(&ml).await;

    // The policy changes while the managed ledger is open (as a namespace or topic policy
    // update reaches a loaded topic).
    let mut policy = (*ml.offload_policy()).clone();
    policy.driver = Some(other.clone());
    ml.set_offload_policy(policy);
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    let status = wait_run(&ml).await;
    assert_eq!(status.status, OffloadRun::Success, "{status:?}");
    assert!(
        objects(&o).await.is_empty(),
        "nothing in the broker's store"
    );
    assert_eq!(
        objects_in(&other).await.len(),
        4,
        "two ledgers, two objects each"
    );
    let stats = ml.internal_stats();
    let offloaded: Vec<_> = stats.ledgers.iter().filter(|l| l.offloaded).collect();
    assert_eq!(offloaded.len(), 2);
    for l in offloaded {
        let to = l.offloaded_to.as_deref().unwrap_or_default();
        assert!(to.contains("other-bucket"), "{to}");
        assert!(l.bookie_copy_deleted, "{l:?}");
    }

    // Read back from there, also by a new owner whose policy names the broker's store again
    // (the record says where each ledger is).
    assert_eq!(read_all(&ml).await, before);
    ml.close().await.unwrap();
    let again = cluster.factory().with_offloader(Arc::clone(&o));
    let ml = again.open(name, config(10, 0)).await.unwrap();
    assert_eq!(read_all(&ml).await[..25], before[..]);

    // Deleting the managed ledger deletes its objects there too.
    ml.delete().await.unwrap();
    assert!(
        objects_in(&other).await.is_empty(),
        "{:?}",
        objects_in(&other).await
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_racing_with_the_trim_of_its_offloaded_ledger_goes_on_past_it() {
    let cluster = Cluster::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let o = offloader(dir.path());
    let mut cfg = config(10, 0);
    cfg.retention_time_ms = 0;
    cfg.retention_size_bytes = 0;
    let name = "t/ns/persistent/race";
    let ml = cluster
        .factory()
        .with_offloader(Arc::clone(&o))
        .open(name, cfg.clone())
        .await
        .unwrap();
    let written = append_n(&ml, 0, 35).await;
    ml.offload_up_to(*written.last().unwrap()).unwrap();
    assert_eq!(wait_run(&ml).await.status, OffloadRun::Success);
    ml.close().await.unwrap();
    // A new owner: cold caches, so the read goes to object storage.
    let ml = cluster
        .factory()
        .with_offloader(Arc::clone(&o))
        .open(name, cfg)
        .await
        .unwrap();
    // Reopening closed the ledger holding 30..34; these go to the new current one.
    append_n(&ml, 35, 5).await;
    let faults = Arc::clone(o.store().faults());
    faults.get_delay_ms.store(300, Ordering::SeqCst);
    let started = faults.gets_started.load(Ordering::SeqCst);
    let first = written[0];
    let reading = tokio::spawn({
        let ml = Arc::clone(&ml);
        async move { ml.read_entries(first, 5, u64::MAX).await }
    });
    wait::until(
        "the read's GET is in flight",
        Duration::from_secs(10),
        || faults.gets_started.load(Ordering::SeqCst) > started,
    )
    .await;
    // Retention removes every closed ledger (three offloaded, one on the bookies) and their
    // objects under the read.
    assert_eq!(ml.trim().await.unwrap().len(), 4);
    let got = reading
        .await
        .unwrap()
        .expect("the read goes on to what is left");
    let current = ml.ledgers().last().unwrap().ledger_id;
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|(p, _)| p.ledger == current), "{got:?}");
    let payloads: Vec<Bytes> = got.into_iter().map(|(_, b)| b).collect();
    assert_eq!(payloads, (35..40).map(payload).collect::<Vec<_>>());
    faults.get_delay_ms.store(0, Ordering::SeqCst);
    ml.close().await.unwrap();
    cluster.stop().await;
}
