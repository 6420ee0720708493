//! Tests of the bookie storage on real files in temporary directories, with real fsync.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use magnetar_metadata::{EntryId, LedgerId};
use magnetar_testkit::wait;

use super::*;
use crate::api::{BookieClient, BookieError, BookieState, Entry, FenceResult};

type TestResult = anyhow::Result<()>;

fn options(dir: &Path) -> BookieOptions {
    let mut o = BookieOptions::new(BookieId("127.0.0.1:3181".into()), dir);
    o.journal_file_size_bytes = 1024 * 1024;
    o.entry_log_size_bytes_max = 4 * 1024 * 1024;
    // Tests drive checkpoints and GC themselves unless they say otherwise.
    o.checkpoint_interval_ms = 3_600_000;
    o.gc_interval_ms = 3_600_000;
    o.disk_check_interval_ms = 3_600_000;
    // The host's own disk fill must not decide these tests: only the bookie's storage cap
    // (set by the tests that need it) turns it read-only.
    o.disk_usage_threshold = 1.0;
    o.disk_usage_lwm = 1.0;
    o
}

fn entry(ledger: u64, entry: u64, lac: i64, len: usize) -> Entry {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u64 + entry * 7 + ledger) as u8)
        .collect();
    Entry::new(LedgerId(ledger), EntryId(entry), lac, Bytes::from(payload))
}

async fn add_all(b: &Bookie, ledger: u64, range: std::ops::Range<u64>, len: usize) -> TestResult {
    for e in range {
        b.add(entry(ledger, e, e as i64 - 1, len), false).await?;
    }
    Ok(())
}

async fn assert_readable(
    b: &Bookie,
    ledger: u64,
    range: std::ops::Range<u64>,
    len: usize,
) -> TestResult {
    for e in range {
        let got = b.read(LedgerId(ledger), EntryId(e), false).await?;
        assert_eq!(
            got.entry,
            entry(ledger, e, e as i64 - 1, len),
            "{ledger}:{e}"
        );
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        let target = to.join(item.file_name());
        if item.file_type()?.is_dir() {
            copy_dir(&item.path(), &target)?;
        } else {
            std::fs::copy(item.path(), target)?;
        }
    }
    Ok(())
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|i| i.ok())
                .filter(|i| i.file_name().to_string_lossy().ends_with(suffix))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn add_read_round_trip_and_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    add_all(&b, 1, 0..10, 100).await?;
    assert_readable(&b, 1, 0..10, 100).await?;
    let r = b.read(LedgerId(1), EntryId(9), false).await?;
    assert_eq!(r.lac, 8);
    assert_eq!(
        b.read(LedgerId(2), EntryId(0), false).await,
        Err(BookieError::NoSuchLedger(LedgerId(2)))
    );
    assert_eq!(
        b.read(LedgerId(1), EntryId(10), false).await,
        Err(BookieError::NoSuchEntry {
            ledger: LedgerId(1),
            entry: EntryId(10)
        })
    );
    // Out of order and duplicate adds are fine.
    b.add(entry(3, 5, -1, 10), false).await?;
    b.add(entry(3, 0, -1, 10), false).await?;
    b.add(entry(3, 0, -1, 10), false).await?;
    assert_eq!(
        b.read_range(LedgerId(3), EntryId(0), EntryId(9), 0, 0)
            .await?
            .len(),
        1
    );
    let info = b.info().await?;
    assert_eq!(info.state, BookieState::ReadWrite);
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(info.used_bytes > 0 && info.free_bytes > 0);
    b.shutdown().await;
    assert_eq!(
        b.add(entry(1, 10, 9, 1), false).await,
        Err(BookieError::ShuttingDown)
    );
    Ok(())
}

#[tokio::test]
async fn bad_adds_are_refused_and_the_bookie_keeps_working() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    o.entry_size_bytes_max = 1000;
    let b = Bookie::open(o).await?;
    assert!(matches!(
        b.add(entry(1, 0, -1, 1001), false).await,
        Err(BookieError::TooLarge(_))
    ));
    let mut bad = entry(1, 0, -1, 10);
    bad.crc32c ^= 1;
    assert!(matches!(
        b.add(bad, false).await,
        Err(BookieError::BadRequest(_))
    ));
    add_all(&b, 1, 0..3, 1000).await?;
    assert_readable(&b, 1, 0..3, 1000).await?;
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn read_range_limits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    add_all(&b, 1, 0..10, 100).await?;
    add_all(&b, 1, 11..15, 100).await?;
    let l = LedgerId(1);
    let r = b.read_range(l, EntryId(0), EntryId(14), 5, 0).await?;
    assert_eq!(
        r.iter().map(|e| e.entry.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(
        b.read_range(l, EntryId(0), EntryId(14), 0, 250)
            .await?
            .len(),
        2
    );
    // At least one entry even if it alone is over max_bytes.
    assert_eq!(
        b.read_range(l, EntryId(3), EntryId(14), 0, 10).await?.len(),
        1
    );
    // Stops at the first missing entry.
    let r = b.read_range(l, EntryId(5), EntryId(14), 0, 0).await?;
    assert_eq!(r.last().map(|e| e.entry.0), Some(9));
    assert_eq!(
        b.read_range(l, EntryId(11), EntryId(12), 0, 0).await?.len(),
        2
    );
    assert!(matches!(
        b.read_range(l, EntryId(10), EntryId(14), 0, 0).await,
        Err(BookieError::NoSuchEntry { .. })
    ));
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_concurrent_adds_are_all_durable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 1_250;
    let start = magnetar_metadata::clock::system().now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let results: Vec<_> = futures::stream::iter(0..PER_TASK)
                .map(|e| {
                    let b = b.clone();
                    async move { b.add(entry(t, e, e as i64 - 1, 100), false).await }
                })
                .buffer_unordered(256)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>, _>>()
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let adds = TASKS * PER_TASK;
    println!(
        "{adds} adds of 100 B in {elapsed:?}: {:.0} adds/s",
        adds as f64 / elapsed.as_secs_f64()
    );
    for t in 0..TASKS {
        assert_readable(&b, t, 0..PER_TASK, 100).await?;
    }
    // Durable: a bookie on a copy of the files (no shutdown, no checkpoint) has them all.
    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    let c = Bookie::open(options(copy.path())).await?;
    for t in 0..TASKS {
        assert_readable(&c, t, 0..PER_TASK, 100).await?;
    }
    c.shutdown().await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn reopen_after_clean_shutdown() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    add_all(&b, 1, 0..50, 300).await?;
    add_all(&b, 2, 0..5, 10).await?;
    b.fence(LedgerId(2)).await?;
    b.shutdown().await;
    drop(b);
    let b = Bookie::open(options(dir.path())).await?;
    assert_readable(&b, 1, 0..50, 300).await?;
    assert_readable(&b, 2, 0..5, 10).await?;
    assert_eq!(b.read_lac(LedgerId(1), -1, Duration::ZERO).await?, 48);
    assert_eq!(
        b.add(entry(2, 5, 4, 10), false).await,
        Err(BookieError::Fenced(LedgerId(2)))
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn crash_replays_the_journal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    add_all(&b, 1, 0..20, 200).await?;
    b.checkpoint_now().await?;
    // After the checkpoint: only in the journal (and unsynced entry log).
    add_all(&b, 1, 20..40, 200).await?;
    add_all(&b, 2, 0..10, 50).await?;
    b.fence(LedgerId(2)).await?;
    b.delete_ledger(LedgerId(3)).await?;
    // The files as a crash would leave them: no shutdown, no final checkpoint.
    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    drop(b);

    let c = Bookie::open(options(copy.path())).await?;
    assert_readable(&c, 1, 0..40, 200).await?;
    assert_readable(&c, 2, 0..10, 50).await?;
    assert_eq!(
        c.add(entry(2, 10, 9, 10), false).await,
        Err(BookieError::Fenced(LedgerId(2)))
    );
    // And once more, after that recovery itself "crashes".
    c.add(entry(1, 40, 39, 200), false).await?;
    let again = tempfile::tempdir()?;
    copy_dir(copy.path(), again.path())?;
    drop(c);
    let d = Bookie::open(options(again.path())).await?;
    assert_readable(&d, 1, 0..41, 200).await?;
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn torn_journal_tail_is_ignored() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    add_all(&b, 1, 0..10, 100).await?;
    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    b.shutdown().await;

    // Half a record after the last complete one, as a crash mid-write leaves it.
    let journal_dir = copy.path().join("journal");
    let files = journal::list(&journal_dir)?;
    let (generation, path) = files.last().cloned().ok_or(anyhow::anyhow!("no journal"))?;
    let data = Bytes::from(std::fs::read(&path)?);
    let end = journal::parse(&data, generation, 0, 0)
        .records
        .last()
        .map_or(0, |(_, end)| *end);
    assert!(end > 0);
    let mut torn = Vec::new();
    journal::encode_add(&mut torn, generation, &entry(1, 10, 9, 100), false);
    let file = std::fs::OpenOptions::new().write(true).open(&path)?;
    file.write_all_at(&torn[..torn.len() / 2], end)?;
    drop(file);

    let c = Bookie::open(options(copy.path())).await?;
    assert_readable(&c, 1, 0..10, 100).await?;
    assert!(matches!(
        c.read(LedgerId(1), EntryId(10), false).await,
        Err(BookieError::NoSuchEntry { .. })
    ));
    c.add(entry(1, 10, 9, 100), false).await?;
    c.shutdown().await;
    drop(c);
    let d = Bookie::open(options(copy.path())).await?;
    assert_readable(&d, 1, 0..11, 100).await?;
    d.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn fencing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    let l = LedgerId(1);
    add_all(&b, 1, 0..3, 10).await?;
    assert_eq!(
        b.fence(l).await?,
        FenceResult {
            lac: 1,
            last_entry: 2
        }
    );
    assert_eq!(
        b.add(entry(1, 3, 2, 10), false).await,
        Err(BookieError::Fenced(l))
    );
    b.add(entry(1, 3, 2, 10), true).await?;
    assert_eq!(
        b.fence(l).await?,
        FenceResult {
            lac: 2,
            last_entry: 3
        }
    );
    // A fence on an unknown ledger keeps the old writer out from the start.
    assert_eq!(
        b.fence(LedgerId(9)).await?,
        FenceResult {
            lac: -1,
            last_entry: -1
        }
    );
    assert_eq!(
        b.add(entry(9, 0, -1, 10), false).await,
        Err(BookieError::Fenced(LedgerId(9)))
    );
    // A recovery read fences.
    add_all(&b, 2, 0..2, 10).await?;
    let r = b.read(LedgerId(2), EntryId(1), true).await?;
    assert_eq!(r.entry.entry, EntryId(1));
    assert_eq!(
        b.add(entry(2, 2, 1, 10), false).await,
        Err(BookieError::Fenced(LedgerId(2)))
    );
    // Concurrent adds and a fence: every add either succeeded before or is refused.
    let adds: Vec<_> = (0..200)
        .map(|e| {
            let b = b.clone();
            tokio::spawn(async move { b.add(entry(5, e, -1, 10), false).await })
        })
        .collect();
    let fenced = b.fence(LedgerId(5)).await?;
    let mut ok = 0i64;
    for a in adds {
        match a.await? {
            Ok(()) => ok += 1,
            Err(BookieError::Fenced(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let after = b.fence(LedgerId(5)).await?;
    assert_eq!(fenced, after, "no add got in after the fence");
    assert!(ok <= 200);
    b.shutdown().await;
    drop(b);
    let b = Bookie::open(options(dir.path())).await?;
    assert_eq!(
        b.add(entry(1, 4, 3, 10), false).await,
        Err(BookieError::Fenced(l))
    );
    assert_eq!(
        b.fence(l).await?,
        FenceResult {
            lac: 2,
            last_entry: 3
        }
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lac_long_poll() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    let l = LedgerId(1);
    assert_eq!(
        b.read_lac(l, -1, Duration::ZERO).await,
        Err(BookieError::NoSuchLedger(l))
    );
    add_all(&b, 1, 0..2, 10).await?;
    assert_eq!(b.read_lac(l, -1, Duration::from_secs(5)).await?, 0);
    let poll = {
        let b = b.clone();
        tokio::spawn(async move { b.read_lac(l, 0, Duration::from_secs(10)).await })
    };
    // Parked: it found no LAC above 0 and waits for one.
    wait::until(
        "the long poll waits at the bookie",
        Duration::from_secs(5),
        || b.lac_polls_waiting() == 1,
    )
    .await;
    assert!(!poll.is_finished());
    let woke_after = magnetar_metadata::clock::system().now();
    b.add(entry(1, 2, 1, 10), false).await?;
    assert_eq!(poll.await??, 1);
    assert!(woke_after.elapsed() < Duration::from_secs(2));
    let started = magnetar_metadata::clock::system().now();
    assert_eq!(b.read_lac(l, 5, Duration::from_millis(100)).await?, 1);
    assert!(started.elapsed() >= Duration::from_millis(100));
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn flipped_byte_in_entry_log_is_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    add_all(&b, 1, 0..5, 100).await?;
    b.checkpoint_now().await?;
    let (path, offset) = b
        .locate(LedgerId(1), EntryId(2))
        .ok_or(anyhow::anyhow!("entry not located"))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset + 10)?;
    byte[0] ^= 0x20;
    file.write_all_at(&byte, offset + 10)?;
    let corrupt = BookieError::Corrupt {
        ledger: LedgerId(1),
        entry: EntryId(2),
    };
    assert_eq!(
        b.read(LedgerId(1), EntryId(2), false).await,
        Err(corrupt.clone())
    );
    assert_eq!(
        b.read_range(LedgerId(1), EntryId(0), EntryId(4), 0, 0)
            .await,
        Err(corrupt)
    );
    assert_readable(&b, 1, 3..5, 100).await?;
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn delete_and_gc_reclaim_entry_logs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    o.entry_log_size_bytes_max = 64 * 1024;
    let b = Bookie::open(o.clone()).await?;
    // Ledger 1 fills several logs; ledger 2 has a few entries in the first of them.
    for e in 0..200u64 {
        b.add(entry(1, e, e as i64 - 1, 1024), false).await?;
        if e % 50 == 0 {
            b.add(entry(2, e / 50, -1, 100), false).await?;
        }
    }
    let (first_log, _) = b
        .locate(LedgerId(2), EntryId(0))
        .ok_or(anyhow::anyhow!("entry not located"))?;
    let ledgers_dir = dir.path().join("ledgers");
    let logs_before = count_files(&ledgers_dir, ".log");
    assert!(logs_before >= 3, "{logs_before} logs");
    b.delete_ledger(LedgerId(1)).await?;
    assert_eq!(
        b.read(LedgerId(1), EntryId(0), false).await,
        Err(BookieError::NoSuchLedger(LedgerId(1)))
    );
    b.gc_now().await;
    assert!(!first_log.exists(), "the mostly dead log is reclaimed");
    assert!(count_files(&ledgers_dir, ".log") < logs_before);
    for e in 0..4 {
        let r = b.read(LedgerId(2), EntryId(e), false).await?;
        assert_eq!(r.entry, entry(2, e, -1, 100));
    }
    b.shutdown().await;
    drop(b);
    let b = Bookie::open(o).await?;
    for e in 0..4 {
        assert_eq!(
            b.read(LedgerId(2), EntryId(e), false).await?.entry,
            entry(2, e, -1, 100)
        );
    }
    assert!(matches!(
        b.read(LedgerId(1), EntryId(0), false).await,
        Err(BookieError::NoSuchLedger(_))
    ));
    b.shutdown().await;
    Ok(())
}

/// Adds `range` of `ledger` with many in flight (group commit), as a writer pipelines them.
async fn add_many(
    b: &Bookie,
    ledger: u64,
    range: std::ops::Range<u64>,
    len: usize,
    recovery: bool,
) -> TestResult {
    let results: Vec<_> = futures::stream::iter(range)
        .map(|e| b.add(entry(ledger, e, e as i64 - 1, len), recovery))
        .buffer_unordered(256)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

async fn assert_range(b: &Bookie, ledger: u64, count: u64, len: usize) -> TestResult {
    let mut next = 0;
    while next < count {
        let got = b
            .read_range(LedgerId(ledger), EntryId(next), EntryId(count - 1), 0, 0)
            .await?;
        for e in &got {
            assert_eq!(
                *e,
                entry(ledger, next, next as i64 - 1, len),
                "{ledger}:{next}"
            );
            next += 1;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_is_on_disk_and_memory_holds_only_entries_since_the_checkpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    // A cache far smaller than the index: lookups must work from the file.
    o.index_cache_size_bytes = 64 * 1024;
    let b = Bookie::open(o.clone()).await?;
    for l in 1..=3 {
        add_many(&b, l, 0..2_000, 16, false).await?;
    }
    assert_eq!(b.index_entries_in_memory(), 6_000);
    b.checkpoint_now().await?;
    assert_eq!(
        b.index_entries_in_memory(),
        0,
        "checkpointed locations leave memory"
    );
    for l in 1..=3 {
        assert_range(&b, l, 2_000, 16).await?;
    }
    // New entries are found in memory, older ones on disk, in one range.
    add_many(&b, 1, 2_000..2_100, 16, false).await?;
    assert_eq!(b.index_entries_in_memory(), 100);
    assert_range(&b, 1, 2_100, 16).await?;
    b.shutdown().await;
    drop(b);

    let b = Bookie::open(o).await?;
    assert_eq!(
        b.index_entries_in_memory(),
        0,
        "opening loads no entry locations (nothing to replay after a clean shutdown)"
    );
    assert_range(&b, 1, 2_100, 16).await?;
    assert_range(&b, 3, 2_000, 16).await?;
    assert_eq!(
        b.read(LedgerId(2), EntryId(2_000), false).await,
        Err(BookieError::NoSuchEntry {
            ledger: LedgerId(2),
            entry: EntryId(2_000)
        })
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_stored_again_leave_their_old_copies_to_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    o.entry_log_size_bytes_max = 64 * 1024;
    let b = Bookie::open(o.clone()).await?;
    add_many(&b, 1, 0..100, 1024, false).await?;
    b.checkpoint_now().await?;
    let (first_log, _) = b
        .locate(LedgerId(1), EntryId(0))
        .ok_or(anyhow::anyhow!("entry not located"))?;
    // Recovery re-replicates every entry: each is stored again, the first copies turn dead.
    add_many(&b, 1, 0..100, 1024, true).await?;
    b.checkpoint_now().await?;
    let (moved_to, _) = b
        .locate(LedgerId(1), EntryId(0))
        .ok_or(anyhow::anyhow!("entry not located"))?;
    assert_ne!(moved_to, first_log, "the index points at the newer copy");
    b.gc_now().await;
    assert!(
        !first_log.exists(),
        "a log of only superseded copies is reclaimed"
    );
    assert_range(&b, 1, 100, 1024).await?;
    b.shutdown().await;
    drop(b);

    // An index written before per-log live bytes were kept gets them counted at open.
    index::forget_live_bytes(&dir.path().join("ledgers").join("index.redb"))
        .map_err(anyhow::Error::msg)?;
    let b = Bookie::open(o).await?;
    assert_range(&b, 1, 100, 1024).await?;
    b.delete_ledger(LedgerId(1)).await?;
    let ledgers_dir = dir.path().join("ledgers");
    let before = count_files(&ledgers_dir, ".log");
    b.gc_now().await;
    let after = count_files(&ledgers_dir, ".log");
    assert_eq!(
        after, 1,
        "every log but the current one reclaimed ({before} before)"
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn read_only_past_the_storage_limit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    o.journal_file_size_bytes = 256 * 1024;
    o.entry_log_size_bytes_max = 256 * 1024;
    // What stays after deleting everything: index.redb (~1 MiB), the journal file and its spares
    // (3 × 256 KiB), the current entry log: under 90% of this.
    o.storage_size_bytes_max = Some(3 * 1024 * 1024);
    let b = Bookie::open(o).await?;
    let mut changes = b.state_changes();
    assert_eq!(b.state(), BookieState::ReadWrite);
    add_all(&b, 1, 0..300, 8 * 1024).await?;
    b.check_disk_now().await;
    assert_eq!(b.state(), BookieState::ReadOnly);
    tokio::time::timeout(Duration::from_secs(1), changes.changed()).await??;
    assert_eq!(*changes.borrow_and_update(), BookieState::ReadOnly);
    assert_eq!(b.info().await?.state, BookieState::ReadOnly);
    assert_eq!(
        b.add(entry(2, 0, -1, 10), false).await,
        Err(BookieError::ReadOnly)
    );
    assert_eq!(
        b.add(entry(2, 0, -1, 10), true).await,
        Err(BookieError::ReadOnly)
    );
    // A recovery add of an entry already stored takes no space and is accepted, whether the
    // entry is still in memory or only in the index: recovery can close a ledger on full bookies.
    b.add(entry(1, 299, 298, 8 * 1024), true).await?;
    b.checkpoint_now().await?;
    b.add(entry(1, 0, -1, 8 * 1024), true).await?;
    assert_eq!(
        b.add(entry(1, 300, 299, 8 * 1024), true).await,
        Err(BookieError::ReadOnly)
    );
    assert_readable(&b, 1, 0..300, 8 * 1024).await?;
    // Space comes back: delete, compact, trim; below the low-water mark it is writable again.
    b.delete_ledger(LedgerId(1)).await?;
    b.gc_now().await;
    b.checkpoint_now().await?;
    b.check_disk_now().await;
    assert_eq!(b.state(), BookieState::ReadWrite);
    tokio::time::timeout(Duration::from_secs(1), changes.changed()).await??;
    b.add(entry(2, 0, -1, 10), false).await?;
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn journal_rotates_and_is_trimmed_after_checkpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    o.journal_file_size_bytes = 64 * 1024;
    let b = Bookie::open(o.clone()).await?;
    add_all(&b, 1, 0..300, 1024).await?;
    let journal_dir = dir.path().join("journal");
    let before = count_files(&journal_dir, ".txn");
    assert!(before >= 4, "{before} journal files");
    // Preallocated to the configured size.
    let first = journal::list(&journal_dir)?;
    let len = std::fs::metadata(&first[0].1)?.len();
    assert!(len >= 64 * 1024, "journal file of {len} bytes");
    b.checkpoint_now().await?;
    assert_eq!(count_files(&journal_dir, ".txn"), 1);
    // Trimmed files are kept as spares, a bounded number of them.
    assert_eq!(count_files(&journal_dir, ".spare"), journal::SPARES_MAX);
    // Rotating again reuses them: their stale records (older generation) are not replayed.
    add_all(&b, 1, 300..450, 1024).await?;
    assert_eq!(count_files(&journal_dir, ".spare"), 0);
    assert!(count_files(&journal_dir, ".txn") >= 3);
    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    b.shutdown().await;
    // Shut down (even before it is dropped), the directory can be opened again.
    let reopened = Bookie::open(o.clone()).await?;
    assert_readable(&reopened, 1, 0..450, 1024).await?;
    reopened.shutdown().await;
    // And the copy taken without a shutdown replays to the same.
    let mut oc = o;
    oc.data_dir = copy.path().to_owned();
    let c = Bookie::open(oc).await?;
    assert_readable(&c, 1, 0..450, 1024).await?;
    c.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn periodic_tasks_checkpoint_on_their_own() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    o.journal_file_size_bytes = 64 * 1024;
    o.checkpoint_interval_ms = 50;
    o.disk_check_interval_ms = 50;
    let b: Arc<Bookie> = Bookie::open(o).await?;
    add_all(&b, 1, 0..200, 1024).await?;
    let journal_dir = dir.path().join("journal");
    wait::until(
        "the periodic checkpoint trims the journal to one file",
        Duration::from_secs(5),
        || count_files(&journal_dir, ".txn") == 1,
    )
    .await;
    b.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn write_failure_turns_read_only_without_harm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    let mut changes = b.state_changes();
    add_all(&b, 1, 0..10, 100).await?;
    b.shared.inject_write_failure.store(true, Ordering::Relaxed);
    assert!(matches!(
        b.add(entry(1, 10, 9, 100), false).await,
        Err(BookieError::Internal(_))
    ));
    assert_eq!(b.state(), BookieState::ReadOnly);
    tokio::time::timeout(Duration::from_secs(1), changes.changed()).await??;
    assert_eq!(
        b.add(entry(1, 10, 9, 100), false).await,
        Err(BookieError::ReadOnly)
    );
    assert_readable(&b, 1, 0..10, 100).await?;
    // The disk is fine again: the next check clears the state; writes go to a fresh file.
    b.shared
        .inject_write_failure
        .store(false, Ordering::Relaxed);
    b.check_disk_now().await;
    assert_eq!(b.state(), BookieState::ReadWrite);
    add_all(&b, 1, 10..20, 100).await?;
    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    b.shutdown().await;
    let c = Bookie::open(options(copy.path())).await?;
    assert_readable(&c, 1, 0..20, 100).await?;
    c.shutdown().await;
    Ok(())
}

/// Overwrites every entry log under `data_dir` with zeros: what a replica holds when the
/// kernel dropped the pages of a failed fdatasync.
fn zero_entry_logs(data_dir: &Path) -> TestResult {
    for item in std::fs::read_dir(data_dir.join("ledgers"))? {
        let path = item?.path();
        if path.extension().is_some_and(|x| x == "log") {
            let len = std::fs::metadata(&path)?.len();
            std::fs::write(&path, vec![0u8; len as usize])?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn failed_entry_log_sync_is_sticky_and_recovered_from_the_journal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    o.journal_file_size_bytes = 64 * 1024;
    let b = Bookie::open(o.clone()).await?;
    add_all(&b, 1, 0..200, 1024).await?;
    let journal_dir = dir.path().join("journal");
    let before = count_files(&journal_dir, ".txn");
    assert!(before >= 3, "{before} journal files");
    b.shared
        .inject_log_sync_failure
        .store(true, Ordering::Relaxed);
    assert!(b.checkpoint_now().await.is_err());
    assert_eq!(b.state(), BookieState::ReadOnly);
    assert_eq!(
        b.add(entry(1, 200, 199, 1024), false).await,
        Err(BookieError::ReadOnly)
    );
    // A healthy-looking disk check does not clear it, and a later sync that would report
    // success is never trusted: no index commit, no journal trimmed.
    b.check_disk_now().await;
    assert_eq!(b.state(), BookieState::ReadOnly);
    let again = b.checkpoint_now().await;
    assert!(
        matches!(&again, Err(BookieError::Internal(m)) if m.contains("sync failed")),
        "{again:?}"
    );
    assert_eq!(count_files(&journal_dir, ".txn"), before);
    // Reads and fences keep working.
    assert_readable(&b, 1, 0..200, 1024).await?;
    b.fence(LedgerId(2)).await?;
    // The replica as the kernel may have left it: the entry logs' pages lost. A restart
    // replays the journal from the last good checkpoint and has every acknowledged entry.
    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    b.shutdown().await;
    zero_entry_logs(copy.path())?;
    let mut oc = o;
    oc.data_dir = copy.path().to_owned();
    let c = Bookie::open(oc).await?;
    assert_eq!(c.state(), BookieState::ReadWrite);
    assert_readable(&c, 1, 0..200, 1024).await?;
    add_all(&c, 1, 200..210, 1024).await?;
    c.checkpoint_now().await?;
    assert_eq!(count_files(&copy.path().join("journal"), ".txn"), 1);
    c.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn failed_journal_sync_is_sticky_and_nothing_acknowledged_is_lost() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    add_all(&b, 1, 0..10, 100).await?;
    b.shared
        .inject_journal_sync_failure
        .store(true, Ordering::Relaxed);
    assert!(matches!(
        b.add(entry(1, 10, 9, 100), false).await,
        Err(BookieError::Internal(_))
    ));
    assert_eq!(b.state(), BookieState::ReadOnly);
    // Unlike a failed write (cleared once the disk is healthy), a failed sync stays.
    b.check_disk_now().await;
    assert_eq!(b.state(), BookieState::ReadOnly);
    assert!(b.checkpoint_now().await.is_err());
    assert_readable(&b, 1, 0..10, 100).await?;
    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    b.shutdown().await;
    let c = Bookie::open(options(copy.path())).await?;
    assert_eq!(c.state(), BookieState::ReadWrite);
    assert_readable(&c, 1, 0..10, 100).await?;
    c.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn damage_in_the_middle_of_the_journal_refuses_to_start_unless_skipped() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Small batches, so that synced records lie beyond the reach of the last batch.
    let small = |dir: &Path| {
        let mut o = options(dir);
        o.journal_batch_bytes_max = 1024;
        o.entry_size_bytes_max = 1000;
        o
    };
    let b = Bookie::open(small(dir.path())).await?;
    add_all(&b, 1, 0..40, 100).await?;
    let copy = tempfile::tempdir()?;
    copy_dir(dir.path(), copy.path())?;
    b.shutdown().await;

    // Flip a byte inside the fourth record's payload: synced records follow it.
    let journal_dir = copy.path().join("journal");
    let (generation, path) = journal::list(&journal_dir)?
        .last()
        .cloned()
        .ok_or(anyhow::anyhow!("no journal"))?;
    let data = Bytes::from(std::fs::read(&path)?);
    let records = journal::parse(&data, generation, 0, 0).records;
    assert_eq!(records.len(), 40);
    let (start, end) = (records[2].1, records[3].1);
    let mut byte = [0u8; 1];
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let at = (start + end) / 2;
    file.read_exact_at(&mut byte, at)?;
    file.write_all_at(&[byte[0] ^ 0xff], at)?;
    drop(file);

    let refused = Bookie::open(small(copy.path())).await;
    let Err(e) = refused else {
        panic!("a bookie with a damaged journal started");
    };
    let msg = e.to_string();
    assert!(msg.contains("damaged in the middle"), "{msg}");
    assert!(msg.contains("journal_skip_damaged_records"), "{msg}");

    let mut skip = small(copy.path());
    skip.journal_skip_damaged_records = true;
    let c = Bookie::open(skip).await?;
    assert_readable(&c, 1, 0..3, 100).await?;
    assert_readable(&c, 1, 4..40, 100).await?;
    assert!(matches!(
        c.read(LedgerId(1), EntryId(3), false).await,
        Err(BookieError::NoSuchEntry { .. })
    ));
    c.shutdown().await;
    Ok(())
}

/// Overwrites four of the index's written pages in its second half (its tree pages).
fn corrupt_index_pages(data_dir: &Path) -> TestResult {
    let index = data_dir.join("ledgers").join("index.redb");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&index)?;
    let mut all = vec![0u8; usize::try_from(file.metadata()?.len())?];
    file.read_exact_at(&mut all, 0)?;
    let written: Vec<usize> = (0..all.len() / 4096)
        .filter(|p| all[p * 4096..(p + 1) * 4096].iter().any(|b| *b != 0))
        .collect();
    for p in written.iter().skip(written.len() / 2).take(4) {
        file.write_all_at(&[0xa5u8; 4096], (*p * 4096) as u64)?;
    }
    Ok(())
}

#[tokio::test]
async fn a_corrupt_index_refuses_to_start_naming_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b = Bookie::open(options(dir.path())).await?;
    for l in 1..=20u64 {
        add_all(&b, l, 0..500, 100).await?;
    }
    b.checkpoint_now().await?;
    b.shutdown().await;
    corrupt_index_pages(dir.path())?;
    let err = Bookie::open(options(dir.path()))
        .await
        .err()
        .ok_or(anyhow::anyhow!("a bookie opened on a corrupt index"))?;
    let message = err.to_string();
    assert!(message.contains("index.redb"), "{message}");
    assert!(message.contains("corrupt"), "{message}");
    Ok(())
}

#[tokio::test]
async fn an_index_page_corrupted_while_running_fails_only_its_reads_naming_the_ledger() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let mut o = options(dir.path());
    // A small page cache, so lookups read the index's pages from the file.
    o.index_cache_size_bytes = 16 * 1024;
    let b = Bookie::open(o).await?;
    for l in 1..=20u64 {
        add_all(&b, l, 0..500, 100).await?;
    }
    b.checkpoint_now().await?;
    corrupt_index_pages(dir.path())?;

    let (mut served, mut failed) = (0u32, 0u32);
    for l in 1..=20u64 {
        for e in 0..500u64 {
            match b.read(LedgerId(l), EntryId(e), false).await {
                Ok(got) => {
                    // Whatever is served is the entry asked for, intact.
                    assert_eq!(
                        (got.entry.ledger, got.entry.entry),
                        (LedgerId(l), EntryId(e))
                    );
                    assert!(got.entry.is_intact(), "{l}:{e} served damaged");
                    served += 1;
                }
                Err(err) => {
                    let message = err.to_string();
                    assert!(
                        message.contains(&format!("ledger {l}"))
                            || message.contains(&format!("{l}:{e}")),
                        "the error names neither the ledger nor the entry: {message}"
                    );
                    failed += 1;
                }
            }
        }
    }
    assert!(failed > 0, "no read met the corrupt pages");
    assert!(served > 0, "no read was served around the corrupt pages");
    // The bookie keeps taking and serving writes.
    add_all(&b, 99, 0..10, 100).await?;
    assert_readable(&b, 99, 0..10, 100).await?;
    Ok(())
}
