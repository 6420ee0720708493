//! Topic and subscription series with Pulsar's names (`pulsar_rate_in`, `pulsar_msg_backlog`,
//! `pulsar_subscription_back_log`, `pulsar_storage_write_latency_le_*`, …), per topic or summed
//! per namespace, and the per-period figures they need ([`Periods`]: the counters at the
//! previous scrape, one entry per loaded topic, dropped with the topic).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use magnetar_bookie::metrics::Families;
use prometheus::proto::MetricType;

use super::MetricsConfig;
use crate::service::BrokerService;
use crate::topic::Topic;
use crate::topic::dedup::DEDUP_CURSOR;
use crate::topic::stats::{ENTRY_SIZE_BUCKETS, PublishCounts, WRITE_LATENCY_BUCKETS_MS};

/// Scrapes closer together than this report the previous period's figures again.
const PERIOD_MIN: Duration = Duration::from_secs(1);
/// Topics sampled at once (each subscription answers through its actor).
const SAMPLES_PARALLEL: usize = 64;

/// Counters of one subscription at a scrape: messages and bytes out, entries redelivered.
type SubCounters = [u64; 3];

/// What a topic's counters were at the previous scrape, and the figures that period gave.
#[derive(Debug, Clone)]
struct Period {
    at: Instant,
    /// Messages in, bytes in, messages out, bytes out.
    counters: [u64; 4],
    publish: PublishCounts,
    subs: HashMap<String, SubCounters>,
    /// Per second over the period, in the order of `counters`.
    rates: [f64; 4],
    /// Bucket counts of the period.
    buckets: PublishCounts,
    /// Per subscription: messages and bytes out per second, redeliveries per second.
    sub_rates: HashMap<String, [f64; 3]>,
}

/// The previous scrape's counters: per topic, and the broker-wide ones with rates.
#[derive(Debug, Default)]
pub struct Periods {
    inner: Mutex<PeriodsInner>,
}

#[derive(Debug, Default)]
struct PeriodsInner {
    topics: HashMap<String, Period>,
    /// (when, hits, misses, hit rate, miss rate).
    cache: Option<(Instant, u64, u64, f64, f64)>,
    /// (when, bytes offloaded, rate).
    offload: Option<(Instant, u64, f64)>,
}

fn per_s(now: u64, before: u64, elapsed: Duration) -> f64 {
    now.saturating_sub(before) as f64 / elapsed.as_secs_f64()
}

impl Periods {
    fn inner(&self) -> std::sync::MutexGuard<'_, PeriodsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entry-cache hits and misses per second over the last period.
    pub fn cache_rates(&self, hits: u64, misses: u64, now: Instant) -> (f64, f64) {
        let mut inner = self.inner();
        match inner.cache {
            Some((at, _, _, h, m)) if now.saturating_duration_since(at) < PERIOD_MIN => (h, m),
            Some((at, h0, m0, _, _)) => {
                let dt = now.saturating_duration_since(at);
                let rates = (per_s(hits, h0, dt), per_s(misses, m0, dt));
                inner.cache = Some((now, hits, misses, rates.0, rates.1));
                rates
            }
            None => {
                inner.cache = Some((now, hits, misses, 0.0, 0.0));
                (0.0, 0.0)
            }
        }
    }

    /// Bytes offloaded per second over the last period.
    pub fn offload_rate(&self, bytes: u64, now: Instant) -> f64 {
        let mut inner = self.inner();
        match inner.offload {
            Some((at, _, r)) if now.saturating_duration_since(at) < PERIOD_MIN => r,
            Some((at, b0, _)) => {
                let r = per_s(bytes, b0, now.saturating_duration_since(at));
                inner.offload = Some((now, bytes, r));
                r
            }
            None => {
                inner.offload = Some((now, bytes, 0.0));
                0.0
            }
        }
    }

    /// The period figures of `sample`'s topic (zero at its first scrape), remembering its
    /// counters for the next.
    fn period(&self, sample: &TopicSample, now: Instant) -> Period {
        let mut inner = self.inner();
        let fresh = || Period {
            at: now,
            counters: sample.counters,
            publish: sample.publish,
            subs: sample
                .subs
                .iter()
                .map(|s| (s.name.clone(), s.counters))
                .collect(),
            rates: [0.0; 4],
            buckets: PublishCounts::default(),
            sub_rates: HashMap::new(),
        };
        let next = match inner.topics.get(&sample.name) {
            None => fresh(),
            Some(prev) if now.saturating_duration_since(prev.at) < PERIOD_MIN => {
                return prev.clone();
            }
            Some(prev) => {
                let dt = now.saturating_duration_since(prev.at);
                let rates =
                    std::array::from_fn(|i| per_s(sample.counters[i], prev.counters[i], dt));
                let sub_rates = sample
                    .subs
                    .iter()
                    .map(|s| {
                        let before = prev.subs.get(&s.name).copied().unwrap_or_default();
                        let r = std::array::from_fn(|i| per_s(s.counters[i], before[i], dt));
                        (s.name.clone(), r)
                    })
                    .collect();
                Period {
                    rates,
                    buckets: sample.publish.since(&prev.publish),
                    sub_rates,
                    ..fresh()
                }
            }
        };
        inner.topics.insert(sample.name.clone(), next.clone());
        next
    }

    /// Forgets the topics not in `loaded`.
    fn retain(&self, loaded: &std::collections::HashSet<&str>) {
        self.inner()
            .topics
            .retain(|name, _| loaded.contains(name.as_str()));
    }
}

/// One subscription at a scrape.
#[derive(Debug, Clone)]
struct SubSample {
    name: String,
    counters: SubCounters,
    consumers: u64,
    backlog: u64,
    unacked: u64,
}

/// One topic at a scrape.
#[derive(Debug, Clone)]
struct TopicSample {
    name: String,
    namespace: String,
    counters: [u64; 4],
    publish: PublishCounts,
    producers: u64,
    storage_size: u64,
    offloaded_size: u64,
    backlog_size: u64,
    subs: Vec<SubSample>,
}

async fn sample(topic: Arc<Topic>) -> TopicSample {
    let ml = topic.managed_ledger();
    let ml_stats = ml.stats();
    let offloaded_size = ml
        .ledgers()
        .iter()
        .filter(|l| l.offload.as_ref().is_some_and(|o| o.complete))
        .map(|l| l.size_bytes)
        .sum();
    let average_entry = if ml_stats.entries > 0 {
        ml_stats.size_bytes as f64 / ml_stats.entries as f64
    } else {
        0.0
    };
    let mut subs = Vec::new();
    let (mut msg_out, mut bytes_out) = (0, 0);
    let mut backlog_size = 0u64;
    for sub in topic.loaded_subscriptions() {
        let Some(snap) = sub.snapshot().await else {
            continue;
        };
        msg_out += snap.msg_out;
        bytes_out += snap.bytes_out;
        let backlog = ml_stats.cursors.get(sub.name()).map_or(0, |c| c.backlog);
        backlog_size = backlog_size.max((backlog as f64 * average_entry) as u64);
        subs.push(SubSample {
            name: sub.name().to_owned(),
            counters: [snap.msg_out, snap.bytes_out, snap.redelivered],
            consumers: snap.consumers.len() as u64,
            backlog,
            unacked: snap.unacked,
        });
    }
    // Durable subscriptions without a consumer now (not loaded as subscriptions) still
    // hold a backlog.
    for (name, c) in &ml_stats.cursors {
        if name != DEDUP_CURSOR && c.durable && !subs.iter().any(|s| &s.name == name) {
            backlog_size = backlog_size.max((c.backlog as f64 * average_entry) as u64);
            subs.push(SubSample {
                name: name.clone(),
                counters: [0; 3],
                consumers: 0,
                backlog: c.backlog,
                unacked: 0,
            });
        }
    }
    let (msg_in, bytes_in) = topic.published();
    TopicSample {
        name: topic.name().to_string(),
        namespace: topic.name().namespace().to_string(),
        counters: [msg_in, bytes_in, msg_out, bytes_out],
        publish: topic.publish_stats().counts(),
        producers: topic.producers().len() as u64,
        storage_size: ml_stats.size_bytes,
        offloaded_size,
        backlog_size,
        subs,
    }
}

/// What one topic (or one namespace's topics together) reports.
#[derive(Debug, Default, Clone)]
struct Figures {
    topics: u64,
    subscriptions: u64,
    producers: u64,
    consumers: u64,
    rates: [f64; 4],
    counters: [u64; 4],
    storage_size: u64,
    backlog_size: u64,
    offloaded_size: u64,
    msg_backlog: u64,
    buckets: PublishCounts,
}

impl Figures {
    fn of(s: &TopicSample, p: &Period) -> Figures {
        Figures {
            topics: 1,
            subscriptions: s.subs.len() as u64,
            producers: s.producers,
            consumers: s.subs.iter().map(|x| x.consumers).sum(),
            rates: p.rates,
            counters: s.counters,
            storage_size: s.storage_size,
            backlog_size: s.backlog_size,
            offloaded_size: s.offloaded_size,
            msg_backlog: s.subs.iter().map(|x| x.backlog).sum(),
            buckets: p.buckets,
        }
    }

    fn add(&mut self, o: &Figures) {
        self.topics += o.topics;
        self.subscriptions += o.subscriptions;
        self.producers += o.producers;
        self.consumers += o.consumers;
        for i in 0..4 {
            self.rates[i] += o.rates[i];
            self.counters[i] += o.counters[i];
        }
        self.storage_size += o.storage_size;
        self.backlog_size += o.backlog_size;
        self.offloaded_size += o.offloaded_size;
        self.msg_backlog += o.msg_backlog;
        self.buckets.add(&o.buckets);
    }

    fn write(&self, labels: &[(&str, &str)], out: &mut Families) {
        use MetricType::{COUNTER, GAUGE, UNTYPED};
        let series: [(&str, &str, MetricType, f64); 17] = [
            (
                "pulsar_subscriptions_count",
                "Subscriptions",
                UNTYPED,
                self.subscriptions as f64,
            ),
            (
                "pulsar_producers_count",
                "Producers connected",
                UNTYPED,
                self.producers as f64,
            ),
            (
                "pulsar_consumers_count",
                "Consumers connected",
                UNTYPED,
                self.consumers as f64,
            ),
            (
                "pulsar_rate_in",
                "Messages published per second (last period)",
                GAUGE,
                self.rates[0],
            ),
            (
                "pulsar_throughput_in",
                "Bytes published per second (last period)",
                GAUGE,
                self.rates[1],
            ),
            (
                "pulsar_rate_out",
                "Messages dispatched per second (last period)",
                GAUGE,
                self.rates[2],
            ),
            (
                "pulsar_throughput_out",
                "Bytes dispatched per second (last period)",
                GAUGE,
                self.rates[3],
            ),
            (
                "pulsar_in_messages_total",
                "Messages published since the topic was loaded",
                COUNTER,
                self.counters[0] as f64,
            ),
            (
                "pulsar_in_bytes_total",
                "Bytes published since the topic was loaded",
                COUNTER,
                self.counters[1] as f64,
            ),
            (
                "pulsar_out_messages_total",
                "Messages dispatched since the topic was loaded",
                COUNTER,
                self.counters[2] as f64,
            ),
            (
                "pulsar_out_bytes_total",
                "Bytes dispatched since the topic was loaded",
                COUNTER,
                self.counters[3] as f64,
            ),
            (
                "pulsar_storage_size",
                "Bytes stored (bookies and object storage)",
                GAUGE,
                self.storage_size as f64,
            ),
            (
                "pulsar_storage_backlog_size",
                "Bytes not yet acknowledged by the slowest subscription (estimate)",
                GAUGE,
                self.backlog_size as f64,
            ),
            (
                "pulsar_storage_offloaded_size",
                "Bytes offloaded to object storage",
                GAUGE,
                self.offloaded_size as f64,
            ),
            (
                "pulsar_msg_backlog",
                "Entries not yet acknowledged, summed over the subscriptions",
                GAUGE,
                self.msg_backlog as f64,
            ),
            (
                "pulsar_storage_write_latency_count",
                "Writes persisted in the last period",
                UNTYPED,
                self.buckets.write_latency.iter().sum::<u64>() as f64,
            ),
            (
                "pulsar_storage_write_latency_sum",
                "Write latency summed over the last period, ms",
                UNTYPED,
                self.buckets.write_latency_sum_us as f64 / 1000.0,
            ),
        ];
        for (name, help, kind, value) in series {
            out.add(name, help, kind, labels, value);
        }
        for (i, (_, suffix)) in WRITE_LATENCY_BUCKETS_MS.iter().enumerate() {
            out.add(
                &format!("pulsar_storage_write_latency_le_{suffix}"),
                "Writes persisted in the last period within this latency (ms) and above the previous bucket's",
                GAUGE,
                labels,
                self.buckets.write_latency[i] as f64,
            );
        }
        out.add(
            "pulsar_storage_write_latency_overflow",
            "Writes persisted in the last period above 1 s",
            GAUGE,
            labels,
            self.buckets.write_latency[WRITE_LATENCY_BUCKETS_MS.len()] as f64,
        );
        for (i, (_, suffix)) in ENTRY_SIZE_BUCKETS.iter().enumerate() {
            out.add(
                &format!("pulsar_entry_size_le_{suffix}"),
                "Entries stored in the last period within this size and above the previous bucket's",
                GAUGE,
                labels,
                self.buckets.entry_size[i] as f64,
            );
        }
        out.add(
            "pulsar_entry_size_le_overflow",
            "Entries stored in the last period above 1 MB",
            GAUGE,
            labels,
            self.buckets.entry_size[ENTRY_SIZE_BUCKETS.len()] as f64,
        );
        out.add(
            "pulsar_entry_size_count",
            "Entries stored in the last period",
            UNTYPED,
            labels,
            self.buckets.entry_size.iter().sum::<u64>() as f64,
        );
        out.add(
            "pulsar_entry_size_sum",
            "Bytes of the entries stored in the last period",
            UNTYPED,
            labels,
            self.buckets.entry_size_sum as f64,
        );
    }
}

fn write_subscription(labels: &[(&str, &str)], s: &SubSample, rates: [f64; 3], out: &mut Families) {
    use MetricType::GAUGE;
    let series: [(&str, &str, f64); 5] = [
        (
            "pulsar_subscription_back_log",
            "Entries not yet acknowledged",
            s.backlog as f64,
        ),
        (
            "pulsar_subscription_unacked_messages",
            "Entries delivered and not yet acknowledged",
            s.unacked as f64,
        ),
        (
            "pulsar_subscription_msg_rate_out",
            "Messages dispatched per second (last period)",
            rates[0],
        ),
        (
            "pulsar_subscription_msg_throughput_out",
            "Bytes dispatched per second (last period)",
            rates[1],
        ),
        (
            "pulsar_subscription_msg_rate_redeliver",
            "Entries redelivered per second (last period)",
            rates[2],
        ),
    ];
    for (name, help, value) in series {
        out.add(name, help, GAUGE, labels, value);
    }
}

/// The topic-level (or namespace-level) series of every loaded topic, and
/// `pulsar_topics_count` per namespace.
pub(super) async fn collect(
    service: &Arc<BrokerService>,
    config: &MetricsConfig,
    periods: &Periods,
    now: Instant,
    out: &mut Families,
) {
    let samples: Vec<TopicSample> = futures::stream::iter(service.loaded_topics())
        .map(sample)
        .buffer_unordered(SAMPLES_PARALLEL)
        .collect()
        .await;
    let loaded: std::collections::HashSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    periods.retain(&loaded);
    let cluster = config.cluster.as_str();
    let mut namespaces: BTreeMap<&str, Figures> = BTreeMap::new();
    let mut topic_level = Vec::new();
    for s in &samples {
        let p = periods.period(s, now);
        let f = Figures::of(s, &p);
        namespaces.entry(s.namespace.as_str()).or_default().add(&f);
        if config.topic_level {
            topic_level.push((s, p, f));
        }
    }
    for (ns, f) in &namespaces {
        out.add(
            "pulsar_topics_count",
            "Topics loaded on this broker",
            MetricType::UNTYPED,
            &[("cluster", cluster), ("namespace", ns)],
            f.topics as f64,
        );
    }
    if config.topic_level {
        topic_level.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        for (s, _, f) in &topic_level {
            f.write(
                &[
                    ("cluster", cluster),
                    ("namespace", &s.namespace),
                    ("topic", &s.name),
                ],
                out,
            );
        }
        for (s, p, _) in &topic_level {
            for sub in &s.subs {
                let rates = p.sub_rates.get(&sub.name).copied().unwrap_or_default();
                write_subscription(
                    &[
                        ("cluster", cluster),
                        ("namespace", &s.namespace),
                        ("topic", &s.name),
                        ("subscription", &sub.name),
                    ],
                    sub,
                    rates,
                    out,
                );
            }
        }
    } else {
        for (ns, f) in &namespaces {
            f.write(&[("cluster", cluster), ("namespace", ns)], out);
        }
    }
}
