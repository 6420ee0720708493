#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts loudly on any failure
#![allow(clippy::disallowed_methods)] // it measures wall-clock time and paces itself by it
//! Tiered storage (issue 12): catch-up read of an offloaded topic against the same topic read
//! from the bookies, in one run; the offload's upload rate; requests and bytes per entry read.
//!
//! One managed ledger on one in-process bookie (fsync on) is filled with `--mib` MiB of 16 KiB
//! entries (a batched producer's entries) in ledgers of 512 entries. Then, each with a fresh
//! factory (cold entry cache, cold block cache):
//! 1. catch-up read of everything from the bookies (batches of 100 entries, as a dispatcher);
//! 2. offload of every closed ledger (upload + read-back verification), timed;
//! 3. catch-up read of everything again, now from object storage.
//!
//! Stores: `fs` (the filesystem driver, a local directory), `s3s` (the s3 driver against
//! s3s-fs, an S3-compatible server in this process on its own threads, over HTTP on
//! 127.0.0.1, checking signatures) and `s3` (the s3 driver against moto's server, a Python
//! process; `pip install 'moto[server]'` — its per-request cost bounds the read).
//!
//! `s3s-stock` is s3s-fs without [`RangedReads`](magnetar_testkit::s3fs), which serves a
//! GET as 4 KiB reads through tokio's blocking pool (~200 MB/s on this machine, whatever
//! the client does).
//!
//! `cargo bench --bench offload [-- fs|s3s|s3s-stock|s3 ...] [mib=N] [prefetch=N]
//! [per-request=N] [block-kib=N]` (default: fs and s3s, 64 MiB, the broker's read defaults:
//! 1 MiB blocks, 16 prefetched, 4 per prefetch request).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use magnetar_managed_ledger::test_support::Cluster;
use magnetar_managed_ledger::{ManagedLedgerConfig, OffloadRun, Offloader, Position};
use magnetar_metadata::EntryId;
use magnetar_metadata::clock::{self, Random};
use magnetar_offload::store::Driver;
use magnetar_offload::{
    DriverConfig, OffloadReader, OffloadStore, OffloadTargets, ReadOptions, RetryPolicy,
    UploadOptions,
};

const ENTRY_BYTES: usize = 16 * 1024;
const NAME: &str = "bench/ns/persistent/offload";

fn config() -> ManagedLedgerConfig {
    ManagedLedgerConfig {
        ledger_entries_max: 512,
        retention_time_ms: -1,
        retention_size_bytes: -1,
        offload_deletion_lag_ms: -1,
        ..ManagedLedgerConfig::default()
    }
}

/// `prefetch=N`, `per-request=N` and `block-kib=N` override the read options.
fn read_options() -> ReadOptions {
    let arg = |name: &str| {
        std::env::args().find_map(|a| a.strip_prefix(name).and_then(|v| v.parse::<u64>().ok()))
    };
    let mut o = ReadOptions::default();
    if let Some(p) = arg("per-request=") {
        o.prefetch_request_blocks = p;
    }
    if let Some(p) = arg("prefetch=") {
        o.prefetch_blocks = p;
    }
    if let Some(k) = arg("block-kib=") {
        o.block_size_bytes = k * 1024;
    }
    o
}

fn offloader(cfg: &DriverConfig) -> Arc<Offloader> {
    let store = OffloadStore::build(cfg, RetryPolicy::default(), clock::system()).unwrap();
    Offloader::new(
        OffloadTargets::new(
            cfg.clone(),
            OffloadReader::new(store, read_options()),
            RetryPolicy::default(),
            clock::system(),
        ),
        UploadOptions::default(),
        2,
        Random::from_seed(1),
    )
}

/// Reads every entry from the first; returns (entries, bytes, seconds).
async fn catch_up(ml: &magnetar_managed_ledger::ManagedLedger) -> (u64, u64, f64) {
    let started = Instant::now();
    let mut pos = ml.first_position().unwrap();
    let (mut entries, mut bytes) = (0u64, 0u64);
    loop {
        let got = ml.read_entries(pos, 100, u64::MAX).await.unwrap();
        let Some((last, _)) = got.last().cloned() else {
            break;
        };
        entries += got.len() as u64;
        bytes += got.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        pos = Position {
            ledger: last.ledger,
            entry: EntryId(last.entry.0 + 1),
        };
    }
    (entries, bytes, started.elapsed().as_secs_f64())
}

async fn run(store: &str, mib: usize) {
    let _s3;
    let _s3s;
    let dir = tempfile::tempdir().unwrap();
    let cfg = match store {
        "fs" => DriverConfig {
            driver: Driver::Filesystem,
            directory: dir.path().join("bucket"),
            ..DriverConfig::default()
        },
        "s3s" | "s3s-stock" => {
            let server =
                magnetar_testkit::s3fs::InProcessS3::start_with("bench", "bench", store == "s3s")
                    .unwrap();
            server.create_bucket("bench").unwrap();
            let cfg = DriverConfig {
                driver: Driver::S3,
                bucket: "bench".into(),
                region: Some("us-east-1".into()),
                service_endpoint: Some(server.endpoint()),
                access_key_id: Some("bench".into()),
                secret_access_key: Some("bench".into()),
                ..DriverConfig::default()
            };
            _s3s = server;
            cfg
        }
        _ => {
            let server = magnetar_testkit::s3::S3Server::start().expect("an S3-compatible server");
            server.create_bucket("bench").unwrap();
            let cfg = DriverConfig {
                driver: Driver::S3,
                bucket: "bench".into(),
                region: Some("us-east-1".into()),
                service_endpoint: Some(server.endpoint()),
                access_key_id: Some("bench".into()),
                secret_access_key: Some("bench".into()),
                ..DriverConfig::default()
            };
            _s3 = server;
            cfg
        }
    };
    let cluster = Cluster::start(1).await;
    let ml = cluster.factory().open(NAME, config()).await.unwrap();
    let payload = Bytes::from(vec![b'o'; ENTRY_BYTES]);
    let total = mib * 1024 * 1024 / ENTRY_BYTES;
    let mut pending = Vec::new();
    for _ in 0..total {
        pending.push(ml.append(payload.clone()).await.unwrap());
        if pending.len() >= 256 {
            for h in pending.drain(..) {
                h.await.unwrap();
            }
        }
    }
    for h in pending {
        h.await.unwrap();
    }
    // One more so the last full ledger is closed too.
    ml.append(payload.clone()).await.unwrap().await.unwrap();
    let last = ml.last_confirmed().unwrap();
    ml.close().await.unwrap();

    let from_bookies = {
        let ml = cluster.factory().open(NAME, config()).await.unwrap();
        let r = catch_up(&ml).await;
        ml.close().await.unwrap();
        r
    };

    let o = offloader(&cfg);
    let (upload_s, uploaded, up_counters) = {
        let ml = cluster
            .factory()
            .with_offloader(Arc::clone(&o))
            .open(NAME, config())
            .await
            .unwrap();
        let before = o.store().counters().snapshot();
        let started = Instant::now();
        ml.offload_up_to(last).unwrap();
        loop {
            let s = ml.offload_status();
            match s.status {
                OffloadRun::Running | OffloadRun::NotRun => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                OffloadRun::Success => break,
                OffloadRun::Error => panic!("offload failed: {}", s.last_error),
            }
        }
        let took = started.elapsed().as_secs_f64();
        let offloaded: u64 = ml
            .ledgers()
            .iter()
            .filter(|l| l.offloaded().is_some())
            .map(|l| l.size_bytes)
            .sum();
        let after = o.store().counters().snapshot();
        ml.close().await.unwrap();
        (
            took,
            offloaded,
            (after.put_requests - before.put_requests + after.part_requests - before.part_requests),
        )
    };

    // A fresh offloader: cold block and index caches.
    let o = offloader(&cfg);
    let (from_store, reads) = {
        let ml = cluster
            .factory()
            .with_offloader(Arc::clone(&o))
            .open(NAME, config())
            .await
            .unwrap();
        let before = o.store().counters().snapshot();
        let r = catch_up(&ml).await;
        let after = o.store().counters().snapshot();
        ml.close().await.unwrap();
        (
            r,
            (
                after.get_requests - before.get_requests,
                after.get_bytes - before.get_bytes,
            ),
        )
    };
    cluster.stop().await;

    let mb_s = |(_, bytes, s): (u64, u64, f64)| bytes as f64 / 1e6 / s;
    println!(
        "| {store} | {mib} MiB, {} entries | {:.0} MB/s | {:.1} MB/s ({} requests) | {:.0} MB/s | {:.2}× | {:.3} GETs, {:.0} bytes per entry |",
        from_bookies.0,
        mb_s(from_bookies),
        uploaded as f64 / 1e6 / upload_s,
        up_counters,
        mb_s(from_store),
        mb_s(from_store) / mb_s(from_bookies),
        reads.0 as f64 / from_store.0 as f64,
        reads.1 as f64 / from_store.0 as f64,
    );
    assert_eq!(
        from_store.0, from_bookies.0,
        "the offloaded topic reads back whole"
    );
}

fn main() {
    // `cargo test --benches` runs this without --bench: only check that it starts.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut stores: Vec<String> = std::env::args()
        .filter(|a| ["fs", "s3", "s3s", "s3s-stock"].contains(&a.as_str()))
        .collect();
    if stores.is_empty() {
        stores = vec!["fs".into(), "s3s".into()];
    }
    let mib = std::env::args()
        .find_map(|a| a.strip_prefix("mib=").and_then(|m| m.parse().ok()))
        .unwrap_or(64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| store | data | catch-up from bookies | offload (upload + verify) | catch-up from object storage | ratio | reads per entry |"
    );
    println!("|---|---|---:|---:|---:|---:|---|");
    for store in stores {
        rt.block_on(run(&store, mib));
    }
}
