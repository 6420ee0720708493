//! The bookie's Prometheus metrics, under BookKeeper's names so that BookKeeper dashboards and
//! alerts carry over: request latencies as summaries (`bookkeeper_server_ADD_ENTRY`,
//! `bookkeeper_server_READ_ENTRY`, `bookie_journal_JOURNAL_SYNC`: milliseconds, quantiles over
//! the last one to two minutes, `_count`/`_sum` since start, label `success`), the journal
//! queue, bytes written and read, ledgers and entries stored, and the server status (1
//! read-write, 0 read-only).
//!
//! Recording is a few atomic adds (a [`prometheus::Histogram`] per outcome); quantiles are
//! worked out at scrape time from the buckets' difference with a snapshot taken at the start
//! of the window, as BookKeeper's provider rotates its sketches.
//!
//! Two naming choices keep `promtool check metrics` silent: BookKeeper's byte counters
//! (`bookie_WRITE_BYTES`, no `_total`) are typed gauges, and the `_count`-suffixed gauges
//! (`bookie_ledgers_count`) are written untyped — the names stay what dashboards query.
//! [`Families`] and [`encode`] are shared with the broker's metrics.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::proto::{Metric, MetricFamily, MetricType, Quantile, Summary};
use prometheus::{Histogram, HistogramOpts, IntCounter};

/// Quantiles reported, as BookKeeper's provider reports them.
const QUANTILES: [f64; 7] = [0.5, 0.75, 0.95, 0.99, 0.999, 0.9999, 1.0];
/// Quantiles cover from one to two of these.
const WINDOW: Duration = Duration::from_secs(60);

/// Latency bucket bounds in ms: 10 µs to about 100 s, 12 per factor of ten (a quantile is its
/// bucket's upper bound: at most 21 % above the true value).
fn latency_buckets_ms() -> Vec<f64> {
    (0..=84)
        .map(|i| 0.01 * 10f64.powf(f64::from(i) / 12.0))
        .collect()
}

/// One operation's latencies, by outcome, as a BookKeeper `OpStatsLogger` exports them.
#[derive(Debug)]
pub struct OpStats {
    name: &'static str,
    help: &'static str,
    success: Histogram,
    failure: Histogram,
    window: Mutex<Window>,
}

/// Bucket counts at the start of the current and previous windows, per outcome.
#[derive(Debug)]
struct Window {
    started: Instant,
    current: [Vec<u64>; 2],
    previous: [Vec<u64>; 2],
}

fn bucket_counts(h: &Histogram) -> Vec<u64> {
    let families = h.collect();
    families
        .first()
        .and_then(|f| f.get_metric().first())
        .map(|m| {
            m.get_histogram()
                .get_bucket()
                .iter()
                .map(|b| b.cumulative_count())
                .collect()
        })
        .unwrap_or_default()
}

impl OpStats {
    fn new(name: &'static str, help: &'static str, now: Instant) -> Self {
        let histogram = || {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets_ms()))
                .unwrap_or_else(|e| unreachable!("valid fixed buckets: {e}"))
        };
        OpStats {
            name,
            help,
            success: histogram(),
            failure: histogram(),
            window: Mutex::new(Window {
                started: now,
                current: [Vec::new(), Vec::new()],
                previous: [Vec::new(), Vec::new()],
            }),
        }
    }

    /// Records one operation that took `elapsed`.
    pub fn record(&self, elapsed: Duration, ok: bool) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        if ok {
            self.success.observe(ms);
        } else {
            self.failure.observe(ms);
        }
    }

    /// The summary family, quantiles over the window ending `now`.
    fn family(&self, now: Instant) -> MetricFamily {
        let counts = [bucket_counts(&self.success), bucket_counts(&self.failure)];
        let base = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            if now.saturating_duration_since(w.started) >= WINDOW {
                w.previous = std::mem::replace(&mut w.current, counts.clone());
                w.started = now;
            }
            w.previous.clone()
        };
        let bounds = latency_buckets_ms();
        let mut family = MetricFamily::default();
        family.set_name(self.name.to_owned());
        family.set_help(self.help.to_owned());
        family.set_field_type(MetricType::SUMMARY);
        for (i, (h, label)) in [(&self.success, "true"), (&self.failure, "false")]
            .into_iter()
            .enumerate()
        {
            let windowed: Vec<u64> = counts[i]
                .iter()
                .enumerate()
                .map(|(b, c)| c.saturating_sub(base[i].get(b).copied().unwrap_or(0)))
                .collect();
            let mut summary = Summary::default();
            summary.set_sample_count(h.get_sample_count());
            summary.set_sample_sum(h.get_sample_sum());
            summary.set_quantile(
                QUANTILES
                    .iter()
                    .map(|&q| {
                        let mut quantile = Quantile::default();
                        quantile.set_quantile(q);
                        quantile.set_value(quantile_of(&bounds, &windowed, q));
                        quantile
                    })
                    .collect(),
            );
            let mut m = Metric::default();
            m.set_label(vec![label_pair("success", label)]);
            m.set_summary(summary);
            family.mut_metric().push(m);
        }
        family
    }
}

/// The `q` quantile of cumulative bucket counts over `bounds` (the bucket's upper bound; 0
/// without samples; past the last bound, the last bound).
fn quantile_of(bounds: &[f64], cumulative: &[u64], q: f64) -> f64 {
    let total = cumulative.last().copied().unwrap_or(0);
    if total == 0 {
        return 0.0;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    cumulative
        .iter()
        .position(|&c| c >= rank)
        .and_then(|i| bounds.get(i))
        .or(bounds.last())
        .copied()
        .unwrap_or(0.0)
}

pub(crate) fn label_pair(name: &str, value: &str) -> prometheus::proto::LabelPair {
    let mut l = prometheus::proto::LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

/// A family of one sample without labels.
pub fn single(name: &str, help: &str, kind: MetricType, value: f64) -> MetricFamily {
    let mut f = Families::default();
    f.add(name, help, kind, &[], value);
    f.finish().pop().unwrap_or_default()
}

/// Builds metric families sample by sample, each family created on its first sample (so the
/// families come out in the order they were first added, as the text format wants them: all
/// samples of one name together).
#[derive(Debug, Default)]
pub struct Families {
    families: Vec<MetricFamily>,
    by_name: std::collections::HashMap<String, usize>,
}

impl Families {
    /// One sample of `name` with `labels`.
    pub fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let at = match self.by_name.get(name) {
            Some(&at) => at,
            None => {
                let mut family = MetricFamily::default();
                family.set_name(name.to_owned());
                family.set_help(help.to_owned());
                family.set_field_type(match kind {
                    MetricType::UNTYPED => MetricType::GAUGE,
                    other => other,
                });
                self.families.push(family);
                self.by_name
                    .insert(name.to_owned(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let family = &mut self.families[at];
        let mut m = Metric::default();
        if !labels.is_empty() {
            m.set_label(labels.iter().map(|(n, v)| label_pair(n, v)).collect());
        }
        match family.get_field_type() {
            MetricType::COUNTER => {
                let mut c = prometheus::proto::Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            MetricType::GAUGE => {
                let mut g = prometheus::proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
            // Untyped names are kept as gauges and written untyped by [`encode`].
            _ => {
                let mut g = prometheus::proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        family.mut_metric().push(m);
    }

    /// Families built elsewhere, appended as they are (their names must not be added here).
    pub fn extend(&mut self, families: impl IntoIterator<Item = MetricFamily>) {
        for f in families {
            self.by_name
                .insert(f.name().to_owned(), self.families.len());
            self.families.push(f);
        }
    }

    pub fn finish(self) -> Vec<MetricFamily> {
        self.families
    }
}

/// What the bookie records as it serves.
#[derive(Debug)]
pub struct BookieMetrics {
    pub(crate) add_entry: OpStats,
    pub(crate) read_entry: OpStats,
    pub(crate) journal_sync: OpStats,
    pub(crate) write_bytes: IntCounter,
    pub(crate) read_bytes: IntCounter,
}

/// What a scrape reads off the bookie beside the recorded metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub writable: bool,
    pub journal_queue_size: usize,
    pub ledgers: usize,
    pub entries: u64,
}

impl BookieMetrics {
    pub fn new(now: Instant) -> Self {
        let counter = |name: &str| {
            IntCounter::new(name, name).unwrap_or_else(|e| unreachable!("valid name: {e}"))
        };
        BookieMetrics {
            add_entry: OpStats::new(
                "bookkeeper_server_ADD_ENTRY",
                "Add-entry requests served by this bookie: latency in ms (journal sync included)",
                now,
            ),
            read_entry: OpStats::new(
                "bookkeeper_server_READ_ENTRY",
                "Read-entry requests served by this bookie: latency in ms",
                now,
            ),
            journal_sync: OpStats::new(
                "bookie_journal_JOURNAL_SYNC",
                "Journal group commits (one write and fdatasync): latency in ms",
                now,
            ),
            write_bytes: counter("bookie_WRITE_BYTES"),
            read_bytes: counter("bookie_READ_BYTES"),
        }
    }

    /// Every family, with the gauges read off the bookie now.
    pub fn families(&self, gauges: Gauges, now: Instant) -> Vec<MetricFamily> {
        vec![
            self.add_entry.family(now),
            self.read_entry.family(now),
            self.journal_sync.family(now),
            single(
                "bookie_SERVER_STATUS",
                "1 while the bookie is writable, 0 while read-only",
                MetricType::GAUGE,
                if gauges.writable { 1.0 } else { 0.0 },
            ),
            single(
                "bookie_journal_JOURNAL_QUEUE_SIZE",
                "Adds waiting for the journal's group commit",
                MetricType::GAUGE,
                gauges.journal_queue_size as f64,
            ),
            single(
                "bookie_WRITE_BYTES",
                "Entry bytes written since start (a counter; typed gauge as BookKeeper names it)",
                MetricType::GAUGE,
                self.write_bytes.get() as f64,
            ),
            single(
                "bookie_READ_BYTES",
                "Entry bytes read since start (a counter; typed gauge as BookKeeper names it)",
                MetricType::GAUGE,
                self.read_bytes.get() as f64,
            ),
            single(
                "bookie_ledgers_count",
                "Ledgers stored on this bookie",
                MetricType::UNTYPED,
                gauges.ledgers as f64,
            ),
            single(
                "bookie_entries_count",
                "Entries stored on this bookie",
                MetricType::UNTYPED,
                gauges.entries as f64,
            ),
        ]
    }
}

/// The content type of [`encode`]'s text.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// This process's CPU time, memory, open files and threads (`process_*`, Linux).
pub fn process_families() -> Vec<MetricFamily> {
    prometheus::process_collector::ProcessCollector::for_self().collect()
}

/// Whether a family is written `untyped`: gauges named like a summary's or histogram's parts
/// (`…_count`, `…_sum`), which Pulsar and BookKeeper use for plain values (see the module doc).
fn written_untyped(family: &MetricFamily) -> bool {
    family.get_field_type() == MetricType::GAUGE
        && (family.name().ends_with("_count") || family.name().ends_with("_sum"))
}

/// The text of `families` in Prometheus' exposition format.
pub fn encode(families: &[MetricFamily]) -> String {
    let encoder = prometheus::TextEncoder::new();
    let mut out = String::new();
    for family in families {
        let start = out.len();
        if let Err(e) = encoder.encode_utf8(std::slice::from_ref(family), &mut out) {
            tracing::warn!(family = family.name(), error = %e, "a metric family could not be encoded");
            out.truncate(start);
            continue;
        }
        if written_untyped(family) {
            let typed = format!("# TYPE {} gauge\n", family.name());
            if let Some(at) = out[start..].find(&typed) {
                let at = start + at;
                out.replace_range(
                    at..at + typed.len(),
                    &format!("# TYPE {} untyped\n", family.name()),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_window_and_counts_from_the_start() {
        let t0 = magnetar_metadata::clock::system().now();
        let stats = OpStats::new("x_OP", "x", t0);
        for _ in 0..99 {
            stats.record(Duration::from_millis(1), true);
        }
        stats.record(Duration::from_millis(500), true);
        stats.record(Duration::from_millis(3), false);
        let f = stats.family(t0);
        let ok = &f.get_metric()[0];
        assert_eq!(ok.get_label()[0].value(), "true");
        let q = |m: &Metric, at: f64| {
            m.get_summary()
                .get_quantile()
                .iter()
                .find(|x| x.quantile() == at)
                .map(|x| x.value())
                .unwrap()
        };
        let near = |v: f64, ms: f64| (ms * 0.99..=ms * 1.22).contains(&v);
        assert!(near(q(ok, 0.5), 1.0), "p50 {}", q(ok, 0.5));
        assert!(near(q(ok, 0.99), 1.0), "p99 {}", q(ok, 0.99));
        assert!(near(q(ok, 1.0), 500.0), "max {}", q(ok, 1.0));
        assert_eq!(ok.get_summary().sample_count(), 100);
        let failed = &f.get_metric()[1];
        assert_eq!(failed.get_summary().sample_count(), 1);
        assert!(near(q(failed, 0.5), 3.0));

        // Two windows later the old samples fall out of the quantiles, not out of the count.
        let later = t0 + WINDOW;
        stats.family(later);
        stats.record(Duration::from_millis(20), true);
        let f = stats.family(later + WINDOW);
        let ok = &f.get_metric()[0];
        assert!(near(q(ok, 0.5), 20.0), "p50 {}", q(ok, 0.5));
        assert!(near(q(ok, 1.0), 20.0));
        assert_eq!(ok.get_summary().sample_count(), 101);
    }

    #[test]
    fn gauges_named_like_summary_parts_are_written_untyped() {
        let mut f = Families::default();
        f.add(
            "x_ledgers_count",
            "n",
            MetricType::UNTYPED,
            &[("a", "b\"c")],
            3.0,
        );
        f.add("x_rate", "r", MetricType::GAUGE, &[], 1.5);
        f.add("x_in_total", "t", MetricType::COUNTER, &[], 7.0);
        let text = encode(&f.finish());
        assert!(text.contains("# TYPE x_ledgers_count untyped\n"), "{text}");
        assert!(text.contains("x_ledgers_count{a=\"b\\\"c\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE x_rate gauge\nx_rate 1.5\n"), "{text}");
        assert!(
            text.contains("# TYPE x_in_total counter\nx_in_total 7\n"),
            "{text}"
        );
    }

    #[test]
    fn quantile_of_no_samples_is_zero() {
        let bounds = latency_buckets_ms();
        assert_eq!(quantile_of(&bounds, &vec![0; bounds.len()], 0.99), 0.0);
    }
}
