//! `GET /metrics` of a broker: Prometheus text with Pulsar's metric names and labels, so that
//! Pulsar's dashboards and alerts work unchanged.
//!
//! - per topic (labels `cluster`, `namespace`, `topic`) and per subscription (plus
//!   `subscription`): [`topics`]; with `exposeTopicLevelMetricsInPrometheus` off, the same
//!   names per namespace instead (labels `cluster`, `namespace`), which keeps a broker with
//!   very many topics cheap to scrape;
//! - `pulsar_topics_count` per namespace; the entry cache (`pulsar_ml_cache_*`); the load
//!   balancer (`pulsar_lb_*`); tiered storage (`pulsar_ledgeroffloader_*`);
//! - the process's CPU and memory (`process_*`), and in standalone mode the in-process
//!   bookie's series ([`magnetar_bookie::metrics`]) — one scrape for the whole process.
//!
//! Rates and the latency/size buckets are those of the last period: the time since the
//! previous scrape (one second at least; scrapes closer together see the same values), as
//! Pulsar reports the figures of its last stats interval.
//!
//! Pulsar's names are kept even where `promtool`'s lint would want others; the types are
//! chosen so that it stays silent: counters without `_total` are typed gauges, and gauges
//! named `…_count` / `…_sum` are untyped.

pub mod topics;

use std::sync::Arc;

use magnetar_bookie::metrics::Families;
use magnetar_bookie::server::Bookie;
use prometheus::proto::{MetricFamily, MetricType};

use crate::service::BrokerService;

/// What `/metrics` reports on.
#[async_trait::async_trait]
pub trait Scrape: Send + Sync + std::fmt::Debug {
    async fn families(&self) -> Vec<MetricFamily>;
}

/// Metric settings (Pulsar's names).
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// The `cluster` label.
    pub cluster: String,
    /// `exposeTopicLevelMetricsInPrometheus` (true): per-topic and per-subscription series;
    /// false: per-namespace aggregates.
    pub topic_level: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            cluster: crate::cluster::DEFAULT_CLUSTER_NAME.to_owned(),
            topic_level: true,
        }
    }
}

/// A running broker's metrics, with the bookies of its process (standalone).
#[derive(Debug)]
pub struct BrokerMetrics {
    service: Arc<BrokerService>,
    bookies: Vec<Arc<Bookie>>,
    config: MetricsConfig,
    periods: topics::Periods,
}

impl BrokerMetrics {
    /// Over `service` (its `expose_topic_level_metrics`), with `bookies` of the same process.
    pub fn new(service: Arc<BrokerService>, bookies: Vec<Arc<Bookie>>) -> Arc<Self> {
        let config = MetricsConfig {
            topic_level: service.config().expose_topic_level_metrics,
            ..MetricsConfig::default()
        };
        Arc::new(BrokerMetrics {
            service,
            bookies,
            config,
            periods: topics::Periods::default(),
        })
    }

    fn cache(&self, out: &mut Families) {
        let stats = self.service.managed_ledgers().cache().stats();
        let c = [("cluster", self.config.cluster.as_str())];
        let (hits, misses) = self
            .periods
            .cache_rates(stats.hits, stats.misses, self.now());
        out.add(
            "pulsar_ml_cache_hits_rate",
            "Entry cache hits per second (last period)",
            MetricType::GAUGE,
            &c,
            hits,
        );
        out.add(
            "pulsar_ml_cache_misses_rate",
            "Entry cache misses per second (last period)",
            MetricType::GAUGE,
            &c,
            misses,
        );
        out.add(
            "pulsar_ml_cache_used_size",
            "Bytes held by the entry cache",
            MetricType::GAUGE,
            &c,
            stats.size_bytes as f64,
        );
        out.add(
            "pulsar_ml_cache_entries",
            "Entries held by the entry cache",
            MetricType::GAUGE,
            &c,
            stats.entries as f64,
        );
    }

    async fn load_balancing(&self, out: &mut Families) {
        let report = self.service.load_report().await;
        let broker = report.pulsar_service_url.clone();
        let labels = [
            ("cluster", self.config.cluster.as_str()),
            ("broker", broker.as_str()),
            ("metric", "loadBalancing"),
        ];
        let pct = |u: &crate::cluster::load::ResourceUsage| {
            if u.limit > 0.0 {
                u.usage / u.limit * 100.0
            } else {
                0.0
            }
        };
        out.add(
            "pulsar_lb_cpu_usage",
            "Broker CPU use, percent of the cores available (smoothed)",
            MetricType::GAUGE,
            &labels,
            pct(&report.cpu),
        );
        out.add(
            "pulsar_lb_memory_usage",
            "Broker memory use, percent of the machine's memory",
            MetricType::GAUGE,
            &labels,
            pct(&report.memory),
        );
        out.add(
            "pulsar_lb_bandwidth_in_usage",
            "Inbound message throughput, KB/s (smoothed)",
            MetricType::GAUGE,
            &labels,
            report.bandwidth_in.usage,
        );
        out.add(
            "pulsar_lb_bandwidth_out_usage",
            "Outbound message throughput, KB/s (smoothed)",
            MetricType::GAUGE,
            &labels,
            report.bandwidth_out.usage,
        );
        out.add(
            "pulsar_lb_bundles_owned",
            "Bundles this broker owns",
            MetricType::GAUGE,
            &labels,
            report.num_bundles as f64,
        );
        let (unloaded, split) = self.service.bundle_operations();
        let c = [("cluster", self.config.cluster.as_str())];
        out.add(
            "pulsar_lb_unload_bundles_total",
            "Bundles this broker unloaded (handed over or released) since it started",
            MetricType::COUNTER,
            &c,
            unloaded as f64,
        );
        out.add(
            "pulsar_lb_bundles_split_total",
            "Bundles this broker split since it started",
            MetricType::COUNTER,
            &c,
            split as f64,
        );
    }

    fn offload(&self, out: &mut Families) {
        let Some(offloader) = self.service.managed_ledgers().offloader() else {
            return;
        };
        let t = offloader.totals();
        let rate = self.periods.offload_rate(t.bytes, self.now());
        let c = [("cluster", self.config.cluster.as_str())];
        out.add(
            "pulsar_ledgeroffloader_offload_rate",
            "Bytes offloaded to object storage per second (last period)",
            MetricType::GAUGE,
            &c,
            rate,
        );
        out.add(
            "pulsar_ledgeroffloader_offload_error",
            "Ledger offloads that failed since the broker started (a counter, Pulsar's name)",
            MetricType::GAUGE,
            &c,
            t.errors as f64,
        );
        out.add(
            "pulsar_ledgeroffloader_offloaded_ledgers",
            "Ledgers offloaded since the broker started (a counter)",
            MetricType::GAUGE,
            &c,
            t.ledgers as f64,
        );
        out.add(
            "pulsar_ledgeroffloader_offloaded_bytes",
            "Bytes offloaded since the broker started (a counter)",
            MetricType::GAUGE,
            &c,
            t.bytes as f64,
        );
    }

    fn now(&self) -> std::time::Instant {
        self.service.config().clock.now()
    }
}

#[async_trait::async_trait]
impl Scrape for BrokerMetrics {
    async fn families(&self) -> Vec<MetricFamily> {
        let mut out = Families::default();
        topics::collect(
            &self.service,
            &self.config,
            &self.periods,
            self.now(),
            &mut out,
        )
        .await;
        self.cache(&mut out);
        self.load_balancing(&mut out).await;
        self.offload(&mut out);
        for bookie in &self.bookies {
            out.extend(bookie.metric_families());
        }
        out.extend(magnetar_bookie::metrics::process_families());
        out.finish()
    }
}

/// Only the process's series: a broker whose service is not running.
#[derive(Debug, Default)]
pub struct ProcessOnly;

#[async_trait::async_trait]
impl Scrape for ProcessOnly {
    async fn families(&self) -> Vec<MetricFamily> {
        magnetar_bookie::metrics::process_families()
    }
}
