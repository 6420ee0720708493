#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts loudly on any failure
#![allow(clippy::disallowed_methods)] // it measures wall-clock time and paces itself by it
//! Metadata writes per second vs acking subscriptions (issue 11: cursor ledgers).
//!
//! One topic, N durable subscriptions, each acknowledging a new entry every 10 ms for the run —
//! so every cursor has a dirty state at every flush (`cursor_flush_interval_ms`, 100 ms). Two
//! ways of persisting cursor state are compared in the same run:
//!
//! - `record-per-flush`: `cursor_ledger_entries_max = 1`, a new cursor ledger and a metadata
//!   record write at every flush — the metadata load of storing each snapshot in the store;
//! - `cursor-ledger`: the default (50,000 snapshots per cursor ledger): snapshots go to the
//!   bookies, the metadata store sees a write only at a cursor-ledger rollover.
//!
//! Reported: metadata puts/s and journal records/s (bookie appends) over the measured window
//! (after a warm-up in which every cursor starts its first ledger). In-process bookie with
//! journal fsync, in-memory metadata store (counting puts).
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
    mode: &'static str,
    subscriptions: usize,
    metadata_puts_per_s: f64,
    bookie_appends_per_s: f64,
}

async fn run(mode: &'static str, subscriptions: usize) -> Row {
    let cluster = Cluster::start(1).await;
    let counting = IndeterminateStore::new(Arc::clone(&cluster.metadata));
    let factory = cluster.factory_with(counting.clone());
    let cfg = ManagedLedgerConfig {
        cursor_ledger_entries_max: if mode == "record-per-flush" {
            1
        } else {
            50_000
        },
        ..ManagedLedgerConfig::default()
    };
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
        mode,
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
    println!("| subscriptions | mode | metadata puts/s | bookie appends/s |");
    println!("|---:|---|---:|---:|");
    for n in sizes {
        for mode in ["record-per-flush", "cursor-ledger"] {
            let r = rt.block_on(run(mode, n));
            println!(
                "| {} | {} | {:.0} | {:.0} |",
                r.subscriptions, r.mode, r.metadata_puts_per_s, r.bookie_appends_per_s
            );
        }
    }
}
