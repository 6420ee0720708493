#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts loudly on any failure
#![allow(clippy::disallowed_methods)] // it measures wall-clock time and paces itself by it
//! Metadata writes per second vs acking subscriptions (issue 11: cursor ledgers).
//!
//! One topic, N durable subscriptions, each acknowledging a new entry every 10 ms for the run —
//! so every cursor has a dirty state at every flush (`cursor_flush_interval_ms`, 100 ms), and
//! every flush persists one snapshot. Before cursor ledgers each snapshot was one compare-and-set
//! write of the cursor's record to the metadata store, so the metadata write rate of that design
//! is the snapshot rate; now snapshots are bookie appends to the cursor's ledger and the metadata
//! store sees a write only when a cursor ledger rolls over (every 50,000 snapshots by default).
//!
//! Reported over the measured window (after a warm-up in which every cursor starts its first
//! ledger): snapshots/s (journal records of the in-process bookie, fsync on) and metadata
//! puts/s (in-memory store, counting puts).
//!
//! `cargo bench --bench cursors [-- SUBSCRIPTIONS...]` (default 100 1000 10000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use magnetar_managed_ledger::test_support::{Cluster, IndeterminateStore};
use magnetar_managed_ledger::{InitialPosition, ManagedLedgerConfig};

const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(5);
const ENTRIES: usize = 2_000;

struct Row {
    subscriptions: usize,
    metadata_puts_per_s: f64,
    bookie_appends_per_s: f64,
}

async fn run(subscriptions: usize) -> Row {
    let cluster = Cluster::start(1).await;
    let counting = IndeterminateStore::new(Arc::clone(&cluster.metadata));
    let factory = cluster.factory_with(counting.clone());
    let cfg = ManagedLedgerConfig::default();
    let ml = factory
        .open("bench/ns/persistent/acks", cfg)
        .await
        .expect("open");
    let mut positions = Vec::with_capacity(ENTRIES);
    let mut handles = Vec::new();
    for i in 0..ENTRIES {
        handles.push(ml.append(Bytes::from(format!("m{i}"))).await.unwrap());
    }
    for h in handles {
        positions.push(h.await.unwrap());
    }
    let mut cursors = Vec::with_capacity(subscriptions);
    for s in 0..subscriptions {
        cursors.push(
            ml.open_cursor(&format!("sub-{s}"), InitialPosition::Earliest)
                .await
                .unwrap(),
        );
    }
    let start = Instant::now();
    let mut tick = 0usize;
    let mut window: Option<(Instant, u64, u64)> = None;
    loop {
        let now = Instant::now();
        if window.is_none() && now - start >= WARMUP {
            let records = cluster.bookies[0].journal_stats().records;
            window = Some((now, counting.puts(), records));
        }
        if now - start >= WARMUP + MEASURE {
            break;
        }
        // Individual acks of spread-out positions: ranges, not a moving floor, as many
        // subscriptions with shared consumers produce.
        let pos = positions[(tick * 2 + 1) % ENTRIES];
        for c in &cursors {
            c.ack_individual(&[pos]).unwrap();
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (t0, puts0, records0) = window.expect("measured window");
    let secs = t0.elapsed().as_secs_f64();
    let row = Row {
        subscriptions,
        metadata_puts_per_s: (counting.puts() - puts0) as f64 / secs,
        bookie_appends_per_s: (cluster.bookies[0].journal_stats().records - records0) as f64 / secs,
    };
    drop(cursors);
    ml.close().await.unwrap();
    cluster.stop().await;
    row
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if args.is_empty() {
        vec![100, 1_000, 10_000]
    } else {
        args
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| subscriptions | snapshots/s (= metadata puts/s before cursor ledgers) | metadata puts/s now |"
    );
    println!("|---:|---:|---:|");
    for n in sizes {
        let r = rt.block_on(run(n));
        println!(
            "| {} | {:.0} | {:.0} |",
            r.subscriptions, r.bookie_appends_per_s, r.metadata_puts_per_s
        );
    }
}
