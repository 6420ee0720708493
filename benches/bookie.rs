#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts loudly on any failure
//! Bookie-tier benchmark: ledger appends through the real ledger client into real bookies with
//! fsync on, reporting entries/s, add latency p50/p99, and how well the journal's group commit
//! uses the disk — measured against the disk's own fdatasync rate and sequential bandwidth in the
//! same run.
//!
//! `cargo bench --bench bookie` (optionally `-- quick` for a short run). Scenarios: entry size
//! 100 B and 1 KiB × (E,Qw,Qa) = (1,1,1) and (3,2,2) × transport in-process (standalone's path)
//! and gRPC over loopback (a cluster's path). Three bookies share this machine's one disk, so
//! (3,2,2) does twice the disk work of (1,1,1) on the same device.
//!
//! `cargo bench --bench bookie -- gc [quick]`: the add path while garbage collection compacts.
//! One bookie is filled with 40 interleaved ledgers of 1 KiB entries in 16 MiB entry logs, 32 of
//! them are deleted (every log becomes 80 % dead), then 1 KiB adds are timed one at a time at
//! 1,000/s — first with no GC, then while one GC pass compacts every log (`unpaced`: with
//! `gc_compaction_rate_bytes_per_s` = 0; `rate-mib=N`: at N MiB/s).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use magnetar_bookie::api::{BookieClient, BookieRegistration, BookieState, registration_key};
use magnetar_bookie::client::{BookieConnector, LedgerClient, LedgerClientOptions, LedgerConfig};
use magnetar_bookie::local::LocalConnector;
use magnetar_bookie::rpc::{ClientOptions, GrpcConnector};
use magnetar_bookie::server::{Bookie, BookieOptions};
use magnetar_metadata::{Expected, MemoryStore, MetadataStore};
use tokio_util::sync::CancellationToken;

const BOOKIES: usize = 3;
const IN_FLIGHT: usize = 1000;

/// fdatasync/s after a 4 KiB write into an already written (preallocated) file, as the journal
/// does, and MB/s of 1 MiB writes each followed by fdatasync.
fn disk_baseline(dir: &std::path::Path) -> (f64, f64) {
    let path = dir.join("disk-probe");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let block = vec![0x5au8; 4096];
    let region_blocks = 16 * 1024u64; // 64 MiB, written once so later writes change no metadata
    for i in 0..region_blocks / 256 {
        file.write_at(&vec![0u8; 1 << 20], i << 20).unwrap();
    }
    file.sync_all().unwrap();
    let start = magnetar_metadata::clock::system().now();
    let mut syncs = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        file.write_at(&block, (syncs % region_blocks) * 4096)
            .unwrap();
        file.sync_data().unwrap();
        syncs += 1;
    }
    let syncs_per_s = syncs as f64 / start.elapsed().as_secs_f64();
    let big = vec![0xa5u8; 1 << 20];
    let start = magnetar_metadata::clock::system().now();
    let mut written = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        file.write_at(&big, written).unwrap();
        file.sync_data().unwrap();
        written += big.len() as u64;
    }
    let mb_per_s = written as f64 / 1e6 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    (syncs_per_s, mb_per_s)
}

struct Cluster {
    bookies: Vec<Arc<Bookie>>,
    client: LedgerClient,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

/// Registers `bookie` as writable with plenty of room, as a running bookie does.
async fn register(metadata: &Arc<dyn MetadataStore>, bookie: &Bookie) {
    let registration = BookieRegistration {
        id: bookie.id().clone(),
        state: BookieState::ReadWrite,
        free_bytes: 1 << 40,
        used_bytes: 0,
        zone: None,
        version: "bench".into(),
    };
    let _ = metadata
        .put(
            &registration_key(bookie.id()),
            Bytes::from(serde_json::to_vec(&registration).unwrap()),
            Expected::Any,
        )
        .await
        .unwrap();
}

async fn cluster(grpc: bool) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let metadata: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
    let stop = CancellationToken::new();
    let local = LocalConnector::new();
    let mut bookies = Vec::new();
    for i in 0..BOOKIES {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let id = listener.local_addr().unwrap().to_string().parse().unwrap();
        let bookie = Bookie::open(BookieOptions::new(
            id,
            dir.path().join(format!("bookie-{i}")),
        ))
        .await
        .unwrap();
        if grpc {
            let served: Arc<dyn BookieClient> = bookie.clone();
            tokio::spawn(magnetar_bookie::rpc::serve(listener, served, stop.clone()));
        } else {
            local.insert(bookie.clone());
        }
        register(&metadata, &bookie).await;
        bookies.push(bookie);
    }
    let connector: Arc<dyn BookieConnector> = if grpc {
        Arc::new(GrpcConnector::new(ClientOptions::default()))
    } else {
        Arc::new(local)
    };
    let options = LedgerClientOptions {
        max_pending_adds: IN_FLIGHT * 2,
        ..LedgerClientOptions::default()
    };
    let client = LedgerClient::new(metadata, connector, options);
    Cluster {
        bookies,
        client,
        stop,
        _dir: dir,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct Run {
    entries_per_s: f64,
    p50: Duration,
    p99: Duration,
    records_per_sync: f64,
    journal_mb_per_s: f64,
}

/// Appends `count` entries keeping `in_flight` outstanding; latency is append call → completion.
async fn run(
    c: &Cluster,
    (e, qw, qa): (u32, u32, u32),
    size: usize,
    count: usize,
    in_flight: usize,
) -> Run {
    let writer = c
        .client
        .create_ledger(LedgerConfig::new(e, qw, qa))
        .await
        .unwrap();
    let payload = Bytes::from(vec![b'x'; size]);
    let before: Vec<_> = c.bookies.iter().map(|b| b.journal_stats()).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(
        Instant,
        Option<magnetar_bookie::client::AddHandle>,
    )>(in_flight);
    let start = magnetar_metadata::clock::system().now();
    let collector = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(count);
        while let Some((sent, handle)) = rx.recv().await {
            let handle: Option<magnetar_bookie::client::AddHandle> = handle;
            if let Some(handle) = handle {
                handle.await.unwrap();
            }
            latencies.push(sent.elapsed());
        }
        latencies
    });
    for _ in 0..count {
        let sent = magnetar_metadata::clock::system().now();
        let handle = writer.append(payload.clone()).await.unwrap();
        if in_flight == 1 {
            // Strictly one at a time: the latency floor of one add.
            handle.await.unwrap();
            tx.send((sent, None)).await.unwrap();
        } else {
            tx.send((sent, Some(handle))).await.unwrap();
        }
    }
    drop(tx);
    let mut latencies = collector.await.unwrap();
    let elapsed = start.elapsed();
    writer.close().await.unwrap();
    let (mut syncs, mut records, mut bytes) = (0, 0, 0);
    for (b, before) in c.bookies.iter().zip(before) {
        let now = b.journal_stats();
        syncs += now.syncs - before.syncs;
        records += now.records - before.records;
        bytes += now.bytes - before.bytes;
    }
    latencies.sort_unstable();
    Run {
        entries_per_s: count as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        records_per_sync: records as f64 / syncs.max(1) as f64,
        journal_mb_per_s: bytes as f64 / 1e6 / elapsed.as_secs_f64(),
    }
}

/// Times one add at a time at `rate_per_s` until `until` says stop; latencies sorted.
/// Adds one 1 KiB entry at a time at `rate_per_s` until `until(adds so far)`; returns each add's
/// (time sent since the phase began, latency), in the order sent.
async fn paced_adds(
    writer: &magnetar_bookie::client::LedgerWriter,
    rate_per_s: u32,
    mut until: impl FnMut(usize) -> bool,
) -> Vec<(Duration, Duration)> {
    let clock = magnetar_metadata::clock::system();
    let payload = Bytes::from(vec![b'y'; 1024]);
    let period = Duration::from_secs(1) / rate_per_s;
    let began = clock.now();
    let mut next = began;
    let mut adds = Vec::new();
    while !until(adds.len()) {
        next += period;
        clock.sleep_until(next).await;
        let sent = clock.now();
        writer.append_wait(payload.clone()).await.unwrap();
        adds.push((sent - began, sent.elapsed()));
    }
    adds
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

async fn gc_scenario(quick: bool) {
    // The pass logs each log it compacts and its phases' times.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .try_init();
    const LEDGERS: usize = 40;
    let per_ledger = if quick { 1_000 } else { 5_000 };
    let dir = tempfile::tempdir().unwrap();
    let metadata: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
    let local = LocalConnector::new();
    let mut options = BookieOptions::new("127.0.0.1:1".parse().unwrap(), dir.path().join("b"));
    options.entry_log_size_bytes_max = 16 << 20;
    // Only the pass this benchmark starts runs.
    options.gc_interval_ms = 24 * 3600 * 1000;
    if std::env::args().any(|a| a == "unpaced") {
        options.gc_compaction_rate_bytes_per_s = 0;
    }
    if let Some(mib) = std::env::args().find_map(|a| {
        a.strip_prefix("rate-mib=")
            .and_then(|r| r.parse::<u64>().ok())
    }) {
        options.gc_compaction_rate_bytes_per_s = mib << 20;
    }
    println!(
        "compaction rate: {}",
        match options.gc_compaction_rate_bytes_per_s {
            0 => "unpaced".to_owned(),
            r => format!("{} MiB/s", r >> 20),
        }
    );
    let bookie = Bookie::open(options).await.unwrap();
    local.insert(bookie.clone());
    register(&metadata, &bookie).await;
    let client = LedgerClient::new(
        metadata,
        Arc::new(local),
        LedgerClientOptions {
            max_pending_adds: IN_FLIGHT * 2,
            ..LedgerClientOptions::default()
        },
    );
    let mut writers = Vec::new();
    for _ in 0..LEDGERS {
        writers.push(
            client
                .create_ledger(LedgerConfig::new(1, 1, 1))
                .await
                .unwrap(),
        );
    }
    let payload = Bytes::from(vec![b'x'; 1024]);
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..per_ledger {
        for w in &writers {
            pending.push_back(w.append(payload.clone()).await.unwrap());
            if pending.len() >= IN_FLIGHT {
                pending.pop_front().unwrap().await.unwrap();
            }
        }
    }
    for h in pending {
        h.await.unwrap();
    }
    let ids: Vec<_> = writers.iter().map(|w| w.id()).collect();
    for w in &writers {
        w.close().await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 5 != 0 {
            client.delete_ledger(*id).await.unwrap();
        }
    }
    bookie.checkpoint_now().await.unwrap();
    let before_bytes = dir_bytes(dir.path());
    let probe = client
        .create_ledger(LedgerConfig::new(1, 1, 1))
        .await
        .unwrap();
    // As many adds before and after the pass as during it (at the default pace), so the three
    // phases' tails are estimated from like samples and the disk's own jitter shows in the
    // before/after pair.
    let samples = if quick { 1_000 } else { 20_000 };
    let before = paced_adds(&probe, 1_000, |n| n >= samples).await;
    let clock = magnetar_metadata::clock::system();
    let gc_started = clock.now();
    let gc = tokio::spawn({
        let bookie = bookie.clone();
        async move { bookie.gc_now().await }
    });
    let during = paced_adds(&probe, 1_000, |_| gc.is_finished()).await;
    let gc_took = gc_started.elapsed();
    gc.await.unwrap();
    let after = paced_adds(&probe, 1_000, |n| n >= samples).await;
    let after_bytes = dir_bytes(dir.path());
    println!(
        "filled {} MB in {LEDGERS} ledgers, deleted 32; GC pass took {gc_took:.2?}, data dir {} MB → {} MB",
        (LEDGERS * per_ledger * 1024) >> 20,
        before_bytes >> 20,
        after_bytes >> 20
    );
    println!("phase          adds   p50        p99        p99.9      max");
    for (name, adds) in [
        ("before GC", &before),
        ("during GC", &during),
        ("after GC", &after),
    ] {
        let mut l: Vec<Duration> = adds.iter().map(|(_, took)| *took).collect();
        l.sort_unstable();
        if l.is_empty() {
            println!("{name:<13} no add completed in this phase");
            continue;
        }
        println!(
            "{name:<13} {:>5}   {:>8.2?}   {:>8.2?}   {:>8.2?}   {:>8.2?}",
            l.len(),
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            percentile(&l, 0.999),
            l.last().copied().unwrap_or_default()
        );
    }
    // Where in the pass the slowest adds fell: a cluster at its end points at the final
    // checkpoint and the file deletions, a spread at the copying.
    let mut slowest = during.clone();
    slowest.sort_unstable_by_key(|(_, took)| std::cmp::Reverse(*took));
    let at: Vec<String> = slowest
        .iter()
        .take(10)
        .map(|(sent, took)| {
            format!(
                "{took:.1?} at {:.0}%",
                100.0 * sent.as_secs_f64() / gc_took.as_secs_f64()
            )
        })
        .collect();
    println!(
        "slowest adds during GC (when sent, as a share of the pass): {}",
        at.join(", ")
    );
    probe.close().await.unwrap();
    bookie.shutdown().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    // `cargo bench` passes --bench; `cargo test --benches` does not: then just check it starts.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|a| a == "gc") {
        rt.block_on(gc_scenario(quick));
        return;
    }
    rt.block_on(async {
        let probe = tempfile::tempdir().unwrap();
        let (syncs_per_s, mb_per_s) = disk_baseline(probe.path());
        println!("disk: {syncs_per_s:.0} fdatasync/s after a 4 KiB write; {mb_per_s:.0} MB/s sequential with fdatasync per 1 MiB");
        println!();
        println!("transport   E/Qw/Qa  entry   in-flight   entries/s    p50        p99      records/fsync  journal MB/s");
        for grpc in [false, true] {
            let c = cluster(grpc).await;
            for quorum in [(1, 1, 1), (3, 2, 2)] {
                for size in [100usize, 1024] {
                    for in_flight in [IN_FLIGHT, 1] {
                        let count = match (in_flight, quick) {
                            (1, true) => 500,
                            (1, false) => 3_000,
                            (_, true) => 20_000,
                            (_, false) => if size == 100 { 200_000 } else { 100_000 },
                        };
                        let r = run(&c, quorum, size, count, in_flight).await;
                        println!(
                            "{:<11} {}/{}/{}    {:>5}B  {:>6}   {:>10.0}  {:>8.2?}  {:>8.2?}   {:>10.1}   {:>8.1}",
                            if grpc { "grpc" } else { "in-process" },
                            quorum.0, quorum.1, quorum.2, size, in_flight,
                            r.entries_per_s, r.p50, r.p99, r.records_per_sync, r.journal_mb_per_s
                        );
                    }
                }
            }
            c.stop.cancel();
            for b in &c.bookies {
                b.shutdown().await;
            }
        }
    });
}
