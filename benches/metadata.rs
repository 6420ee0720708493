#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts loudly on any failure
//! Metadata store benchmark: compare-and-set puts and reads per second, and their latency, on the
//! embedded (redb) and etcd backends.
//!
//! `cargo bench --bench metadata` runs criterion (mean time per operation; with `Throughput` it
//! reports ops/s) and first prints a latency table (p50/p99/max over a fixed number of sequential
//! operations) plus the throughput of 64 concurrent CAS writers, since criterion reports neither
//! percentiles nor concurrency. The etcd backend is a real `etcd` started on 127.0.0.1 (Debian
//! package `etcd-server`); without it the etcd rows fail with a message saying how to get it.

use magnetar_testkit::etcd as etcd_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use magnetar_metadata::{
    EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Expected, MetadataStore, PutOutcome,
    Version,
};

/// A backend and what keeps it alive.
struct Bench {
    name: &'static str,
    store: Arc<dyn MetadataStore>,
    _guard: Box<dyn std::any::Any>,
}

async fn backends() -> Vec<Bench> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("bench.redb")))
        .await
        .expect("open embedded store");
    out.push(Bench {
        name: "embedded",
        store: Arc::new(embedded),
        _guard: Box::new(dir),
    });
    match etcd_support::EtcdServer::launch().await {
        Ok(server) => {
            let store = EtcdStore::connect(EtcdOptions {
                endpoints: vec![server.endpoint()],
                root: "/bench".into(),
                ..EtcdOptions::default()
            })
            .await
            .expect("connect to etcd");
            out.push(Bench {
                name: "etcd",
                store: Arc::new(store),
                _guard: Box::new(server),
            });
        }
        Err(e) => eprintln!("etcd backend skipped in this run: {e:#}"),
    }
    out
}

const VALUE_SIZE_BYTES: usize = 256;

fn value() -> Bytes {
    Bytes::from(vec![b'm'; VALUE_SIZE_BYTES])
}

/// One CAS put on `key` expecting `version`; returns the new version.
async fn cas(store: &dyn MetadataStore, key: &str, version: Option<Version>) -> Version {
    let expected = version.map_or(Expected::Absent, Expected::Version);
    match store.put(key, value(), expected).await.expect("put") {
        PutOutcome::Written(v) => v,
        PutOutcome::Conflict { current } => panic!("unexpected conflict at {key}: {current:?}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(backend: &str, op: &str, mut samples: Vec<Duration>, total: Duration) {
    samples.sort_unstable();
    println!(
        "{backend:<9} {op:<28} {:>9.0} ops/s  p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}",
        samples.len() as f64 / total.as_secs_f64(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
}

/// Latency percentiles of sequential operations, and the throughput of 64 concurrent writers.
async fn latency_table(benches: &[Bench]) {
    const OPS: usize = 2000;
    const WRITERS: usize = 64;
    println!("backend   operation                    throughput       latency");
    for b in benches {
        let store = &*b.store;
        let mut version = None;
        let mut samples = Vec::with_capacity(OPS);
        let start = magnetar_metadata::clock::system().now();
        for _ in 0..OPS {
            let t = magnetar_metadata::clock::system().now();
            version = Some(cas(store, "/bench/table/seq", version).await);
            samples.push(t.elapsed());
        }
        report(b.name, "CAS put, 1 writer", samples, start.elapsed());

        let mut samples = Vec::with_capacity(OPS);
        let start = magnetar_metadata::clock::system().now();
        for _ in 0..OPS {
            let t = magnetar_metadata::clock::system().now();
            store.get("/bench/table/seq").await.expect("get");
            samples.push(t.elapsed());
        }
        report(b.name, "get, 1 reader", samples, start.elapsed());

        let start = magnetar_metadata::clock::system().now();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = Arc::clone(&b.store);
            tasks.push(tokio::spawn(async move {
                let key = format!("/bench/table/w{w}");
                let mut version = None;
                let mut samples = Vec::with_capacity(OPS / WRITERS * 4);
                for _ in 0..(OPS / WRITERS * 4) {
                    let t = magnetar_metadata::clock::system().now();
                    version = Some(cas(&*store, &key, version).await);
                    samples.push(t.elapsed());
                }
                samples
            }));
        }
        let mut samples = Vec::new();
        for t in tasks {
            samples.extend(t.await.expect("writer task"));
        }
        report(b.name, "CAS put, 64 writers", samples, start.elapsed());
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let benches = rt.block_on(backends());
    rt.block_on(latency_table(&benches));

    let mut c = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for b in &benches {
        let mut group = c.benchmark_group(format!("metadata/{}", b.name));
        group.throughput(Throughput::Elements(1));
        let store = Arc::clone(&b.store);
        let version = std::cell::Cell::new(None);
        group.bench_function("cas_put", |bench| {
            bench.to_async(&rt).iter(|| {
                let store = Arc::clone(&store);
                let current = version.get();
                let version = &version;
                async move {
                    version.set(Some(cas(&*store, "/bench/criterion/cas", current).await));
                }
            })
        });
        let store = Arc::clone(&b.store);
        group.bench_function("get", |bench| {
            bench.to_async(&rt).iter(|| {
                let store = Arc::clone(&store);
                async move { store.get("/bench/criterion/cas").await.expect("get") }
            })
        });
        group.finish();
    }
    c.final_summary();
}
