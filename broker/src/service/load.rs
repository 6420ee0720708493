//! This broker's load and the cluster jobs that read everyone's: the periodic load report
//! (sampled every `report_update_min_interval`, smoothed, written when it changed by more than
//! the threshold or at the maximum interval), the assignment of unowned bundles to the
//! least-loaded broker, and — on the leader only — shedding with hysteresis and a grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use magnetar_metadata::{Expected, MetadataStore};
use tracing::{info, warn};

use super::BrokerService;
use crate::cluster::bundle::Bundle;
use crate::cluster::load::{
    self, AssignLimits, BundleStats, Ema, LoadReport, ResourceUsage, ShedLimits,
};
use crate::cluster::registry::BrokerRecord;

/// Pulsar's load-balancer settings (`loadBalancer*`), same defaults unless said otherwise.
#[derive(Clone, Debug)]
pub struct LoadBalancerConfig {
    /// `loadBalancerEnabled`: assignment by load and shedding. Off: a lookup of an unowned
    /// bundle takes it on the broker asked.
    pub enabled: bool,
    /// `loadBalancerReportUpdateMinIntervalMillis`: how often the load is sampled (and the
    /// report written at most).
    pub report_update_min_interval: Duration,
    /// `loadBalancerReportUpdateMaxIntervalMinutes`: the report is written at least this often.
    pub report_update_max_interval: Duration,
    /// `loadBalancerReportUpdateThresholdPercentage`.
    pub report_update_threshold_percentage: f64,
    /// `loadBalancerBrokerMaxTopics`.
    pub broker_max_topics: u64,
    /// `loadBalancerBrokerOverloadedThresholdPercentage` (CPU or memory).
    pub broker_overloaded_threshold_percentage: f64,
    /// `loadBalancerDistributeBundlesEvenlyEnabled`.
    pub distribute_bundles_evenly: bool,
    /// `loadBalancerSheddingEnabled`.
    pub shedding_enabled: bool,
    /// `loadBalancerSheddingIntervalMinutes` (1 min).
    pub shedding_interval: Duration,
    /// `loadBalancerSheddingGracePeriodMinutes` (30 min): a moved bundle stays put this long.
    pub shedding_grace_period: Duration,
    /// `loadBalancerBrokerThresholdShedderPercentage` (10): above the average by this much
    /// (of the average) a broker is overloaded.
    pub broker_threshold_shedder_percentage: f64,
    /// `loadBalancerSheddingConditionHitCountThreshold` (3): cycles in a row a broker must be
    /// seen overloaded before bundles leave it.
    pub shedding_condition_hit_count_threshold: u32,
    /// `loadBalancerMaxNumberOfBrokerSheddingPerCycle` (3): bundles moved per cycle at most.
    pub max_unloads_per_cycle: usize,
    /// Below this message rate (msg/s, in + out) a broker is never shed from (idle noise).
    pub shedding_min_message_rate: f64,
    /// `loadBalancerAutoBundleSplitEnabled`: the leader splits bundles past a threshold.
    pub auto_bundle_split_enabled: bool,
    /// `loadBalancerAutoUnloadSplitBundlesEnabled`: split children are handed to the
    /// least-loaded brokers.
    pub auto_unload_split_bundles_enabled: bool,
    /// `loadBalancerNamespaceBundleMaxTopics` (1000).
    pub namespace_bundle_max_topics: u64,
    /// `loadBalancerNamespaceBundleMaxSessions` (1000): producers + consumers.
    pub namespace_bundle_max_sessions: u64,
    /// `loadBalancerNamespaceBundleMaxMsgRate` (30000): msg/s in + out.
    pub namespace_bundle_max_msg_rate: f64,
    /// `loadBalancerNamespaceBundleMaxBandwidthMbytes` (100): MB/s in + out.
    pub namespace_bundle_max_bandwidth_mbytes: f64,
    /// `loadBalancerNamespaceMaximumBundles` (128): no split past it.
    pub namespace_maximum_bundles: usize,
    /// `defaultNamespaceBundleSplitAlgorithm` (range_equally_divide).
    pub split_algorithm: super::split::SplitAlgorithm,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        LoadBalancerConfig {
            enabled: true,
            report_update_min_interval: Duration::from_secs(5),
            report_update_max_interval: Duration::from_secs(15 * 60),
            report_update_threshold_percentage: 10.0,
            broker_max_topics: 50_000,
            broker_overloaded_threshold_percentage: 85.0,
            distribute_bundles_evenly: true,
            shedding_enabled: true,
            shedding_interval: Duration::from_secs(60),
            shedding_grace_period: Duration::from_secs(30 * 60),
            broker_threshold_shedder_percentage: 10.0,
            shedding_condition_hit_count_threshold: 3,
            max_unloads_per_cycle: 3,
            shedding_min_message_rate: 100.0,
            auto_bundle_split_enabled: true,
            auto_unload_split_bundles_enabled: true,
            namespace_bundle_max_topics: 1000,
            namespace_bundle_max_sessions: 1000,
            namespace_bundle_max_msg_rate: 30_000.0,
            namespace_bundle_max_bandwidth_mbytes: 100.0,
            namespace_maximum_bundles: 128,
            split_algorithm: super::split::SplitAlgorithm::RangeEquallyDivide,
        }
    }
}

/// Subscriptions whose counters one sample reads at once.
const SNAPSHOTS_PARALLEL: usize = 64;

/// The load state of one broker.
#[derive(Debug, Default)]
pub(super) struct LoadState(Mutex<LoadInner>);

#[derive(Debug, Default)]
struct LoadInner {
    /// Per topic, at the last sample: msgs in, bytes in, msgs out, bytes out.
    counters: HashMap<String, [u64; 4]>,
    /// Per bundle, the smoothed rates in the order of `counters`.
    rates: HashMap<Bundle, [Ema; 4]>,
    /// Process CPU seconds and the monotonic time (ms) of the last sample.
    cpu_at: Option<(f64, u64)>,
    cpu: Ema,
    last_sample_ms: Option<u64>,
    /// The last report made, and the last one written (with when).
    current: Option<LoadReport>,
    written: Option<(LoadReport, u64)>,
    /// Bundles this broker assigned elsewhere, not yet in their broker's report.
    pending: HashMap<Bundle, (String, u64)>,
    /// Shedding on the leader: cycles in a row each broker was seen overloaded, and when
    /// each bundle was last moved.
    hits: HashMap<String, u32>,
    moved: HashMap<String, u64>,
}

/// What one sample read of a topic.
struct TopicSample {
    name: String,
    bundle: Bundle,
    counters: [u64; 4],
    producers: u64,
    consumers: u64,
}

impl LoadState {
    fn inner(&self) -> MutexGuard<'_, LoadInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Process CPU seconds (utime + stime of `/proc/self/stat`) and resident memory in MB, and the
/// machine's memory in MB; None where `/proc` cannot be read.
fn process_usage() -> (Option<f64>, Option<f64>, Option<f64>) {
    const CLOCK_TICKS_PER_S: f64 = 100.0;
    const PAGE_BYTES: f64 = 4096.0;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / CLOCK_TICKS_PER_S)
        });
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            let pages: f64 = s.split_whitespace().nth(1)?.parse().ok()?;
            Some(pages * PAGE_BYTES / (1024.0 * 1024.0))
        });
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    });
    (cpu, rss, total)
}

impl BrokerService {
    /// Samples the load now and returns the report (also kept for `load-report`).
    pub async fn sample_load(self: &Arc<Self>) -> LoadReport {
        use futures::StreamExt;
        let samples: Vec<TopicSample> = futures::stream::iter(self.loaded())
            .map(|t| async move {
                let (msg_in, bytes_in) = t.published();
                let (mut msg_out, mut bytes_out, mut consumers) = (0, 0, 0);
                for s in t.loaded_subscriptions() {
                    if let Some(snap) = s.snapshot().await {
                        msg_out += snap.msg_out;
                        bytes_out += snap.bytes_out;
                        consumers += snap.consumers.len() as u64;
                    }
                }
                TopicSample {
                    name: t.name().to_string(),
                    bundle: t.bundle(),
                    counters: [msg_in, bytes_in, msg_out, bytes_out],
                    producers: t.producers().len() as u64,
                    consumers,
                }
            })
            .buffer_unordered(SNAPSHOTS_PARALLEL)
            .collect()
            .await;
        let (cpu_s, rss_mb, total_mb) = tokio::task::spawn_blocking(process_usage)
            .await
            .unwrap_or((None, None, None));
        let owned = self.ownership.owned_bundles();
        let clock = &self.config.clock;
        let now_ms = clock.now_ms();
        let mono_ms = u64::try_from(
            clock
                .now()
                .saturating_duration_since(self.started)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut inner = self.load.inner();
        let dt_s = inner
            .last_sample_ms
            .map_or(0.0, |at| mono_ms.saturating_sub(at) as f64 / 1000.0);
        inner.last_sample_ms = Some(mono_ms);
        // Per-bundle raw rates over the interval (a topic new since the last sample counts
        // from zero: its first interval is unknown).
        let mut raw: HashMap<Bundle, [f64; 4]> =
            owned.iter().map(|b| (b.clone(), [0.0; 4])).collect();
        let mut stats: HashMap<Bundle, BundleStats> = HashMap::new();
        let mut counters = HashMap::with_capacity(samples.len());
        for s in &samples {
            if dt_s > 0.0
                && let Some(prev) = inner.counters.get(&s.name)
            {
                let r = raw.entry(s.bundle.clone()).or_default();
                for i in 0..4 {
                    r[i] += s.counters[i].saturating_sub(prev[i]) as f64 / dt_s;
                }
            }
            counters.insert(s.name.clone(), s.counters);
            let st = stats.entry(s.bundle.clone()).or_default();
            st.topics += 1;
            st.producer_count += s.producers;
            st.consumer_count += s.consumers;
        }
        inner.counters = counters;
        inner.rates.retain(|b, _| raw.contains_key(b));
        for (bundle, r) in &raw {
            let ema = inner.rates.entry(bundle.clone()).or_default();
            let smoothed: Vec<f64> = (0..4).map(|i| ema[i].update(r[i])).collect();
            let st = stats.entry(bundle.clone()).or_default();
            st.msg_rate_in = smoothed[0];
            st.msg_throughput_in = smoothed[1];
            st.msg_rate_out = smoothed[2];
            st.msg_throughput_out = smoothed[3];
        }
        let cpu_pct = match (cpu_s, inner.cpu_at) {
            (Some(now), Some((before, at))) if mono_ms > at => {
                let wall_s = (mono_ms - at) as f64 / 1000.0;
                Some(inner.cpu.update((now - before).max(0.0) / wall_s * 100.0))
            }
            _ => None,
        };
        if let Some(now) = cpu_s {
            inner.cpu_at = Some((now, mono_ms));
        }
        let mut report = LoadReport {
            web_service_url: self.admin_url.get().cloned().unwrap_or_default(),
            pulsar_service_url: self.config.service_url.clone(),
            cpu: ResourceUsage {
                usage: cpu_pct.unwrap_or(0.0),
                limit: 100.0 * cores,
            },
            memory: ResourceUsage {
                usage: rss_mb.unwrap_or(0.0),
                limit: total_mb.unwrap_or(0.0),
            },
            num_bundles: owned.len() as u64,
            bundles: owned.iter().map(Bundle::to_string).collect(),
            last_update: now_ms,
            broker_version_string: format!("Magnetar {}", env!("CARGO_PKG_VERSION")),
            load_report_type: "LocalBrokerData".to_owned(),
            ..Default::default()
        };
        for st in stats.values() {
            report.msg_rate_in += st.msg_rate_in;
            report.msg_rate_out += st.msg_rate_out;
            report.msg_throughput_in += st.msg_throughput_in;
            report.msg_throughput_out += st.msg_throughput_out;
            report.num_topics += st.topics;
            report.num_producers += st.producer_count;
            report.num_consumers += st.consumer_count;
        }
        report.bandwidth_in.usage = report.msg_throughput_in / 1024.0;
        report.bandwidth_out.usage = report.msg_throughput_out / 1024.0;
        let mut top: Vec<(Bundle, BundleStats)> = stats.into_iter().collect();
        top.sort_by(|a, b| {
            b.1.message_rate()
                .total_cmp(&a.1.message_rate())
                .then(a.0.cmp(&b.0))
        });
        report.last_stats = top
            .into_iter()
            .take(load::TOP_BUNDLES_MAX)
            .map(|(b, s)| (b.to_string(), s))
            .collect();
        inner.current = Some(report.clone());
        report
    }

    /// The last report made (one is made now if there is none yet).
    pub async fn load_report(self: &Arc<Self>) -> LoadReport {
        let current = self.load.inner().current.clone();
        match current {
            Some(r) => r,
            None => self.sample_load().await,
        }
    }

    /// Samples and writes the report if it changed enough or is due.
    pub(super) async fn report_load(self: &Arc<Self>, session: &magnetar_metadata::Session) {
        let report = self.sample_load().await;
        let lb = &self.config.load_balancer;
        let due = {
            let inner = self.load.inner();
            match &inner.written {
                None => true,
                Some((old, at)) => {
                    old.differs(&report, lb.report_update_threshold_percentage)
                        || report.last_update.saturating_sub(*at)
                            >= lb.report_update_max_interval.as_millis() as u64
                }
            }
        };
        if !due || self.draining.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let Ok(value) = serde_json::to_vec(&report) else {
            return;
        };
        let key = load::report_key(&self.config.service_url);
        match self
            .store
            .put_ephemeral(&key, Bytes::from(value), Expected::Any, session)
            .await
        {
            Ok(_) => {
                let at = report.last_update;
                self.load.inner().written = Some((report, at));
            }
            Err(e) => warn!(error = %e, "cannot write the load report"),
        }
    }

    /// Reports this broker's load every `report_update_min_interval` under `session`'s
    /// current session, until shutdown; the leader sheds load on its own interval.
    pub(super) fn report_load_periodically(
        self: &Arc<Self>,
        session: Arc<crate::cluster::session::BrokerSession>,
    ) {
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        let clock = Arc::clone(&self.config.clock);
        let every = self
            .config
            .load_balancer
            .report_update_min_interval
            .max(Duration::from_millis(100));
        let shed_every = self
            .config
            .load_balancer
            .shedding_interval
            .max(Duration::from_millis(100));
        self.tasks.spawn(async move {
            let mut tick = magnetar_metadata::clock::Interval::new(Arc::clone(&clock), every);
            let mut shed_tick = magnetar_metadata::clock::Interval::new(clock, shed_every);
            loop {
                let shed = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => false,
                    _ = shed_tick.tick() => true,
                };
                let Some(service) = weak.upgrade() else {
                    return;
                };
                if shed {
                    service.shed_load().await;
                } else {
                    service.report_load(&session.current()).await;
                }
            }
        });
    }

    /// Deletes this broker's report (a draining broker takes no bundles).
    pub(super) async fn withdraw_load_report(&self) {
        let key = load::report_key(&self.config.service_url);
        if let Err(e) = self.store.delete(&key, Expected::Any).await {
            warn!(error = %e, "cannot withdraw the load report");
        }
    }

    /// Every broker's last report, sorted by service URL.
    pub async fn load_reports(&self) -> Vec<LoadReport> {
        load_reports(&self.store).await
    }

    /// Where an unowned bundle should go, by the reports (None: no reports, or the load
    /// balancer is off — the broker asked takes it).
    pub(super) async fn assign(&self, bundle: &Bundle) -> Option<String> {
        if !self.config.load_balancer.enabled {
            return None;
        }
        let reports = self.load_reports().await;
        self.choose(bundle, &reports)
    }

    /// Where a bundle this broker unloads goes, among `others` (by their reports; without
    /// any, spread by the bundle's hash).
    pub(super) async fn pick_destination(
        &self,
        bundle: &Bundle,
        others: &[BrokerRecord],
    ) -> Option<String> {
        if others.is_empty() {
            return None;
        }
        let reports: Vec<LoadReport> = self
            .load_reports()
            .await
            .into_iter()
            .filter(|r| {
                others
                    .iter()
                    .any(|o| o.pulsar_service_url == r.pulsar_service_url)
            })
            .collect();
        if let Some(url) = self.choose(bundle, &reports) {
            return Some(url);
        }
        let i = (bundle.range.lower >> 16) as usize % others.len();
        Some(others[i].pulsar_service_url.clone())
    }

    fn choose(&self, bundle: &Bundle, reports: &[LoadReport]) -> Option<String> {
        if reports.is_empty() {
            return None;
        }
        let lb = &self.config.load_balancer;
        let now_ms = self.config.clock.now_ms();
        let mut inner = self.load.inner();
        // An assignment holds until its broker reports, or for two report intervals.
        let hold_ms = 2 * lb.report_update_min_interval.as_millis() as u64;
        inner.pending.retain(|b, (url, at)| {
            now_ms.saturating_sub(*at) < hold_ms
                && !reports.iter().any(|r| {
                    &r.pulsar_service_url == url
                        && r.last_update > *at
                        && r.bundles.iter().any(|x| *x == b.to_string())
                })
        });
        if let Some((url, _)) = inner.pending.get(bundle)
            && reports.iter().any(|r| &r.pulsar_service_url == url)
        {
            return Some(url.clone());
        }
        let names: Vec<(String, String)> = inner
            .pending
            .iter()
            .map(|(b, (url, _))| (url.clone(), b.namespace.to_string()))
            .collect();
        let mut pending: load::Pending<'_> = HashMap::new();
        for (url, ns) in &names {
            pending.entry(url.as_str()).or_default().push(ns.as_str());
        }
        let limits = AssignLimits {
            broker_max_topics: lb.broker_max_topics,
            overloaded_percent: lb.broker_overloaded_threshold_percentage,
            distribute_evenly: lb.distribute_bundles_evenly,
        };
        let chosen = load::least_loaded(reports, &bundle.namespace.to_string(), limits, &pending)?
            .pulsar_service_url
            .clone();
        inner
            .pending
            .insert(bundle.clone(), (chosen.clone(), now_ms));
        Some(chosen)
    }

    /// One cycle of the leader's jobs (nothing on other brokers): bundles past a split
    /// threshold are split; then shedding — brokers seen overloaded for enough cycles in a
    /// row give bundles to the least-loaded ones (handed over, PIP-307), at most
    /// `max_unloads_per_cycle`, never a bundle moved within the grace period.
    pub async fn shed_load(self: &Arc<Self>) {
        let lb = self.config.load_balancer.clone();
        let leader = self.leadership.get().is_some_and(|l| l.is_leader());
        if !lb.enabled || !leader {
            self.load.inner().hits.clear();
            return;
        }
        let reports = self.load_reports().await;
        if lb.auto_bundle_split_enabled {
            self.split_overgrown(&reports).await;
        }
        if !lb.shedding_enabled {
            return;
        }
        let limits = ShedLimits {
            threshold_percent: lb.broker_threshold_shedder_percentage,
            min_rate: lb.shedding_min_message_rate,
            max_moves: lb.max_unloads_per_cycle,
        };
        let over = load::overloaded(&reports, &limits);
        let now_ms = self.config.clock.now_ms();
        let moves = {
            let mut inner = self.load.inner();
            inner.hits.retain(|url, _| over.contains(url));
            for url in &over {
                *inner.hits.entry(url.clone()).or_default() += 1;
            }
            let sources: Vec<String> = over
                .iter()
                .filter(|u| {
                    inner.hits.get(*u).copied().unwrap_or(0)
                        >= lb.shedding_condition_hit_count_threshold
                })
                .cloned()
                .collect();
            let grace_ms = lb.shedding_grace_period.as_millis() as u64;
            inner
                .moved
                .retain(|_, at| now_ms.saturating_sub(*at) < grace_ms);
            let moved = inner.moved.clone();
            let moves = load::plan_moves(&reports, &sources, &|b| moved.contains_key(b), &limits);
            for m in &moves {
                inner.moved.insert(m.bundle.clone(), now_ms);
                inner.hits.remove(&m.from);
            }
            moves
        };
        for m in moves {
            let Ok(bundle) = m.bundle.parse::<Bundle>() else {
                continue;
            };
            info!(bundle = %m.bundle, from = %m.from, to = %m.to, "shedding: moving a bundle");
            let done = if m.from == self.config.service_url {
                self.unload_bundle(&bundle, Some(&m.to)).await.map(|_| ())
            } else {
                self.request_unload(&bundle, Some(m.to.clone())).await
            };
            if let Err(e) = done {
                warn!(bundle = %m.bundle, error = %e, "shedding: the move failed");
            }
        }
    }
}

impl BrokerService {
    /// The leader splits bundles past any of the thresholds (topics, sessions, message rate,
    /// bandwidth), at most `max_unloads_per_cycle` per cycle.
    async fn split_overgrown(self: &Arc<Self>, reports: &[LoadReport]) {
        let lb = &self.config.load_balancer;
        let mut due: Vec<(Bundle, String)> = Vec::new();
        for r in reports {
            for (name, s) in &r.last_stats {
                let over = s.topics > lb.namespace_bundle_max_topics
                    || s.producer_count + s.consumer_count > lb.namespace_bundle_max_sessions
                    || s.message_rate() > lb.namespace_bundle_max_msg_rate
                    || (s.msg_throughput_in + s.msg_throughput_out) / (1024.0 * 1024.0)
                        > lb.namespace_bundle_max_bandwidth_mbytes;
                if over && let Ok(bundle) = name.parse::<Bundle>() {
                    due.push((bundle, r.pulsar_service_url.clone()));
                }
            }
        }
        for (bundle, owner) in due.into_iter().take(lb.max_unloads_per_cycle.max(1)) {
            info!(%bundle, %owner, "bundle past its split threshold: splitting");
            // Alone, a broker would only disconnect its own clients to take them back.
            let unload = lb.auto_unload_split_bundles_enabled && reports.len() > 1;
            let done = if owner == self.config.service_url {
                self.split_bundle(&bundle, &lb.split_algorithm, unload)
                    .await
                    .map(|_| ())
            } else {
                self.request_split(&bundle, &lb.split_algorithm, unload)
                    .await
            };
            if let Err(e) = done {
                warn!(%bundle, error = %e, "automatic split failed");
            }
        }
    }
}

/// Every broker's last report in `store`, sorted by service URL (unreadable ones skipped).
pub async fn load_reports(store: &Arc<dyn MetadataStore>) -> Vec<LoadReport> {
    match store.list(load::LOAD_REPORT_PREFIX).await {
        Ok(listing) => {
            let mut reports: Vec<LoadReport> = listing
                .entries
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice(&v.value).ok())
                .collect();
            reports.sort_by(|a, b| a.pulsar_service_url.cmp(&b.pulsar_service_url));
            reports
        }
        Err(e) => {
            warn!(error = %e, "cannot read the load reports");
            Vec::new()
        }
    }
}
