//! Broker load: the report each broker publishes (Pulsar's `LocalBrokerData` JSON at
//! `/loadbalance/brokers/{host:port}`, ephemeral under its session), the smoothing that keeps
//! one spike from moving anything, and the choices made from the reports — where an unowned
//! bundle goes (assignment) and which bundles leave an overloaded broker (shedding). Pure
//! functions over reports, so they are tested without a cluster.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Where load reports live (Pulsar's path).
pub const LOAD_REPORT_PREFIX: &str = "/loadbalance/brokers/";

/// Smoothing of every rate and usage in a report: each sample moves the average this much.
pub const EMA_ALPHA: f64 = 0.3;

pub fn report_key(service_url: &str) -> String {
    format!(
        "{LOAD_REPORT_PREFIX}{}",
        super::registry::address_of(service_url)
    )
}

/// Pulsar's `ResourceUsage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceUsage {
    pub usage: f64,
    pub limit: f64,
}

impl ResourceUsage {
    /// Usage as a percentage of the limit (0 when the limit is unknown).
    pub fn percent(&self) -> f64 {
        if self.limit > 0.0 {
            self.usage / self.limit * 100.0
        } else {
            0.0
        }
    }
}

/// Pulsar's `NamespaceBundleStats`: one bundle's smoothed load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleStats {
    pub msg_rate_in: f64,
    pub msg_throughput_in: f64,
    pub msg_rate_out: f64,
    pub msg_throughput_out: f64,
    pub consumer_count: u64,
    pub producer_count: u64,
    pub topics: u64,
    pub cache_size: u64,
}

impl BundleStats {
    /// The figure assignment and shedding compare: messages in and out per second (Pulsar's
    /// default placement strategy, `LeastLongTermMessageRate`, ranks brokers by it too).
    pub fn message_rate(&self) -> f64 {
        self.msg_rate_in + self.msg_rate_out
    }
}

/// Pulsar's `LocalBrokerData`, the fields Magnetar fills.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub web_service_url: String,
    pub pulsar_service_url: String,
    /// Process CPU in percent of one core; limit = 100 × cores.
    pub cpu: ResourceUsage,
    /// Resident memory in MB; limit = the machine's memory in MB.
    pub memory: ResourceUsage,
    /// Message bytes in / out, KB/s (no NIC limit is known: limit 0).
    pub bandwidth_in: ResourceUsage,
    pub bandwidth_out: ResourceUsage,
    pub msg_throughput_in: f64,
    pub msg_throughput_out: f64,
    pub msg_rate_in: f64,
    pub msg_rate_out: f64,
    pub num_topics: u64,
    pub num_bundles: u64,
    pub num_consumers: u64,
    pub num_producers: u64,
    /// Every bundle the broker owns.
    pub bundles: Vec<String>,
    /// Stats of the broker's busiest bundles (at most [`TOP_BUNDLES_MAX`]).
    pub last_stats: BTreeMap<String, BundleStats>,
    /// When the report was made (ms since the epoch).
    pub last_update: u64,
    pub broker_version_string: String,
    #[serde(default = "local_broker_data")]
    pub load_report_type: String,
}

fn local_broker_data() -> String {
    "LocalBrokerData".to_owned()
}

/// Bundles whose stats a report carries.
pub const TOP_BUNDLES_MAX: usize = 100;

impl LoadReport {
    pub fn message_rate(&self) -> f64 {
        self.msg_rate_in + self.msg_rate_out
    }

    /// The highest of CPU and memory usage, in percent.
    pub fn max_resource_usage_percent(&self) -> f64 {
        self.cpu.percent().max(self.memory.percent())
    }

    /// Bundles of `namespace` (`tenant/ns`) in the report.
    pub fn bundles_of(&self, namespace: &str) -> usize {
        self.bundles
            .iter()
            .filter(|b| b.rsplit_once('/').is_some_and(|(ns, _)| ns == namespace))
            .count()
    }

    /// Whether a new report differs enough from this published one to be written before the
    /// maximum interval (Pulsar's `loadBalancerReportUpdateThresholdPercentage`): a change of
    /// more than `threshold_percent` in message rate, throughput, topics, bundles, producers
    /// or consumers, or a different set of bundles.
    pub fn differs(&self, new: &LoadReport, threshold_percent: f64) -> bool {
        fn changed(old: f64, new: f64, pct: f64) -> bool {
            let base = old.abs().max(new.abs());
            // Below one unit, noise is not load.
            base >= 1.0 && (new - old).abs() / base * 100.0 > pct
        }
        let pairs = [
            (self.message_rate(), new.message_rate()),
            (
                self.msg_throughput_in + self.msg_throughput_out,
                new.msg_throughput_in + new.msg_throughput_out,
            ),
            (self.num_topics as f64, new.num_topics as f64),
            (self.num_producers as f64, new.num_producers as f64),
            (self.num_consumers as f64, new.num_consumers as f64),
        ];
        self.bundles != new.bundles
            || pairs
                .iter()
                .any(|(a, b)| changed(*a, *b, threshold_percent))
    }
}

/// An exponential moving average.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ema(Option<f64>);

impl Ema {
    pub fn update(&mut self, sample: f64) -> f64 {
        let v = match self.0 {
            None => sample,
            Some(prev) => prev + EMA_ALPHA * (sample - prev),
        };
        self.0 = Some(v);
        v
    }
}

/// What assignment weighs.
#[derive(Debug, Clone, Copy)]
pub struct AssignLimits {
    /// Pulsar's `loadBalancerBrokerMaxTopics`: brokers at it take no more bundles.
    pub broker_max_topics: u64,
    /// Pulsar's `loadBalancerBrokerOverloadedThresholdPercentage`: brokers above it (CPU or
    /// memory) are chosen only if every broker is.
    pub overloaded_percent: f64,
    /// Pulsar's `loadBalancerDistributeBundlesEvenlyEnabled`: prefer the brokers with the
    /// fewest bundles of the bundle's namespace.
    pub distribute_evenly: bool,
}

/// Bundles assigned but not yet in their broker's report, per broker (counted as theirs so a
/// burst of lookups does not pile onto one broker between reports).
pub type Pending<'a> = HashMap<&'a str, Vec<&'a str>>;

/// The broker an unowned bundle of `namespace` goes to: among those under the topic limit
/// (all, if none is), not overloaded (if any is not), with the fewest bundles of the namespace
/// (when distributing evenly), then the lowest message rate, then the fewest bundles; ties by
/// service URL.
pub fn least_loaded<'a>(
    reports: &'a [LoadReport],
    namespace: &str,
    limits: AssignLimits,
    pending: &Pending<'_>,
) -> Option<&'a LoadReport> {
    let pending_of = |r: &LoadReport| -> (usize, usize) {
        let p = pending
            .get(r.pulsar_service_url.as_str())
            .map_or(&[][..], |v| &v[..]);
        let ns = p.iter().filter(|ns| **ns == namespace).count();
        (p.len(), ns)
    };
    let under_topics: Vec<&LoadReport> = reports
        .iter()
        .filter(|r| r.num_topics < limits.broker_max_topics)
        .collect();
    let pool: Vec<&LoadReport> = if under_topics.is_empty() {
        reports.iter().collect()
    } else {
        under_topics
    };
    let calm: Vec<&LoadReport> = pool
        .iter()
        .copied()
        .filter(|r| r.max_resource_usage_percent() <= limits.overloaded_percent)
        .collect();
    let pool = if calm.is_empty() { pool } else { calm };
    pool.into_iter().min_by(|a, b| {
        let (pa, pa_ns) = pending_of(a);
        let (pb, pb_ns) = pending_of(b);
        let ns_a = if limits.distribute_evenly {
            a.bundles_of(namespace) + pa_ns
        } else {
            0
        };
        let ns_b = if limits.distribute_evenly {
            b.bundles_of(namespace) + pb_ns
        } else {
            0
        };
        ns_a.cmp(&ns_b)
            .then(a.message_rate().total_cmp(&b.message_rate()))
            .then((a.bundles.len() + pa).cmp(&(b.bundles.len() + pb)))
            .then(a.pulsar_service_url.cmp(&b.pulsar_service_url))
    })
}

/// What shedding weighs (Pulsar's `loadBalancerBrokerThresholdShedderPercentage`,
/// `loadBalancerSheddingConditionHitCountThreshold`, `loadBalancerMaxNumberOfBrokerSheddingPerCycle`).
#[derive(Debug, Clone, Copy)]
pub struct ShedLimits {
    /// A broker is overloaded when its message rate is above the cluster average by more than
    /// this percentage of the average.
    pub threshold_percent: f64,
    /// Below this message rate (msg/s) differences between brokers are not worth a move.
    pub min_rate: f64,
    /// Bundles moved per cycle at most.
    pub max_moves: usize,
}

/// One move shedding wants: a bundle from its broker to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub bundle: String,
    pub from: String,
    pub to: String,
}

/// The brokers above the average by more than the threshold, by service URL.
pub fn overloaded(reports: &[LoadReport], limits: &ShedLimits) -> Vec<String> {
    if reports.len() < 2 {
        return Vec::new();
    }
    let avg = reports.iter().map(LoadReport::message_rate).sum::<f64>() / reports.len() as f64;
    reports
        .iter()
        .filter(|r| {
            let rate = r.message_rate();
            rate >= limits.min_rate && rate > avg * (1.0 + limits.threshold_percent / 100.0)
        })
        .map(|r| r.pulsar_service_url.clone())
        .collect()
}

/// Moves from the `sources` (overloaded brokers, confirmed by hysteresis) to the least-loaded
/// brokers: each move takes the busiest bundle that fits — one whose rate is at most half the
/// gap between the two brokers, so the move narrows the spread and never swaps the roles (no
/// ping-pong) — skipping idle bundles and those in `recently_moved`; at most `max_moves`, and
/// a broker keeps at least one bundle.
pub fn plan_moves(
    reports: &[LoadReport],
    sources: &[String],
    recently_moved: &dyn Fn(&str) -> bool,
    limits: &ShedLimits,
) -> Vec<Move> {
    let mut rates: BTreeMap<&str, f64> = reports
        .iter()
        .map(|r| (r.pulsar_service_url.as_str(), r.message_rate()))
        .collect();
    let mut moves = Vec::new();
    for source in sources {
        let Some(report) = reports.iter().find(|r| &r.pulsar_service_url == source) else {
            continue;
        };
        let mut bundles: Vec<(&String, f64)> = report
            .last_stats
            .iter()
            .map(|(b, s)| (b, s.message_rate()))
            .filter(|(b, _)| !recently_moved(b))
            .collect();
        bundles.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        let mut left = report.bundles.len();
        for (bundle, rate) in bundles {
            if moves.len() >= limits.max_moves || left <= 1 {
                break;
            }
            let Some((target, target_rate)) = rates
                .iter()
                .filter(|(url, _)| **url != source.as_str())
                .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)))
                .map(|(u, r)| (u.to_string(), *r))
            else {
                break;
            };
            let source_rate = rates.get(source.as_str()).copied().unwrap_or(0.0);
            // At most half the gap: the source stays at least as loaded as the target.
            if rate <= 0.0 || rate > (source_rate - target_rate) / 2.0 {
                continue;
            }
            rates.insert(source.as_str(), source_rate - rate);
            if let Some(r) = rates.get_mut(target.as_str()) {
                *r += rate;
            }
            left -= 1;
            moves.push(Move {
                bundle: bundle.clone(),
                from: source.clone(),
                to: target,
            });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(url: &str, bundles: &[(&str, f64)]) -> LoadReport {
        let mut r = LoadReport {
            pulsar_service_url: url.to_owned(),
            ..Default::default()
        };
        for (b, rate) in bundles {
            r.bundles.push((*b).to_owned());
            r.last_stats.insert(
                (*b).to_owned(),
                BundleStats {
                    msg_rate_in: *rate,
                    topics: 1,
                    ..Default::default()
                },
            );
            r.msg_rate_in += rate;
            r.num_topics += 1;
        }
        r
    }

    const LIMITS: AssignLimits = AssignLimits {
        broker_max_topics: 50_000,
        overloaded_percent: 85.0,
        distribute_evenly: true,
    };

    #[test]
    fn assignment_spreads_a_namespace_then_follows_the_message_rate() {
        let reports = vec![
            report("pulsar://a:6650", &[("t/n/0x00000000_0x40000000", 10.0)]),
            report("pulsar://b:6650", &[("o/x/0x00000000_0x40000000", 500.0)]),
        ];
        let none = Pending::new();
        // b is busier, but a holds a bundle of t/n already.
        assert_eq!(
            least_loaded(&reports, "t/n", LIMITS, &none)
                .unwrap()
                .pulsar_service_url,
            "pulsar://b:6650"
        );
        // For another namespace, the message rate decides.
        assert_eq!(
            least_loaded(&reports, "o/y", LIMITS, &none)
                .unwrap()
                .pulsar_service_url,
            "pulsar://a:6650"
        );
        // Bundles assigned to b and not reported yet count as b's.
        let pending: Pending = [("pulsar://b:6650", vec!["t/n", "t/n"])]
            .into_iter()
            .collect();
        assert_eq!(
            least_loaded(&reports, "t/n", LIMITS, &pending)
                .unwrap()
                .pulsar_service_url,
            "pulsar://a:6650"
        );
        // A broker at the topic limit takes nothing while another can.
        let capped = AssignLimits {
            broker_max_topics: 1,
            ..LIMITS
        };
        let mut reports2 = reports.clone();
        reports2.push(report("pulsar://c:6650", &[]));
        reports2[2].num_topics = 0;
        assert_eq!(
            least_loaded(&reports2, "o/y", capped, &none)
                .unwrap()
                .pulsar_service_url,
            "pulsar://c:6650"
        );
        // An overloaded broker is passed over.
        let mut hot = reports.clone();
        hot[0].cpu = ResourceUsage {
            usage: 190.0,
            limit: 200.0,
        };
        assert_eq!(
            least_loaded(&hot, "o/y", LIMITS, &none)
                .unwrap()
                .pulsar_service_url,
            "pulsar://b:6650"
        );
        assert!(least_loaded(&[], "o/y", LIMITS, &none).is_none());
    }

    const SHED: ShedLimits = ShedLimits {
        threshold_percent: 10.0,
        min_rate: 10.0,
        max_moves: 3,
    };

    #[test]
    fn shedding_moves_bundles_that_narrow_the_gap_and_never_swaps_roles() {
        let reports = vec![
            report(
                "pulsar://a:6650",
                &[
                    ("t/n/b1", 400.0),
                    ("t/n/b2", 300.0),
                    ("t/n/b3", 200.0),
                    ("t/n/b4", 100.0),
                ],
            ),
            report("pulsar://b:6650", &[]),
            report("pulsar://c:6650", &[]),
        ];
        let hot = overloaded(&reports, &SHED);
        assert_eq!(hot, vec!["pulsar://a:6650".to_owned()]);
        let moves = plan_moves(&reports, &hot, &|_| false, &SHED);
        // 1000 on a: b1 (400) to b, b2 (300) to c; then a has 300, b 400, c 300, and no
        // bundle is smaller than a's gap to the least loaded (0): nothing more moves.
        assert_eq!(
            moves,
            vec![
                Move {
                    bundle: "t/n/b1".into(),
                    from: "pulsar://a:6650".into(),
                    to: "pulsar://b:6650".into()
                },
                Move {
                    bundle: "t/n/b2".into(),
                    from: "pulsar://a:6650".into(),
                    to: "pulsar://c:6650".into()
                },
            ]
        );
        // A bundle moved recently stays.
        let moves = plan_moves(&reports, &hot, &|b| b == "t/n/b1", &SHED);
        assert_eq!(moves[0].bundle, "t/n/b2");
        // A balanced cluster, or one under the minimum rate, sheds nothing.
        let even = vec![
            report("pulsar://a:6650", &[("t/n/b1", 100.0)]),
            report("pulsar://b:6650", &[("t/n/b2", 105.0)]),
        ];
        assert!(overloaded(&even, &SHED).is_empty());
        let idle = vec![
            report("pulsar://a:6650", &[("t/n/b1", 5.0)]),
            report("pulsar://b:6650", &[]),
        ];
        assert!(overloaded(&idle, &SHED).is_empty());
        // One bundle carrying everything cannot move usefully (it would swap the roles).
        let single = vec![
            report("pulsar://a:6650", &[("t/n/b1", 1000.0), ("t/n/b2", 0.0)]),
            report("pulsar://b:6650", &[]),
        ];
        assert!(plan_moves(&single, &overloaded(&single, &SHED), &|_| false, &SHED).is_empty());
    }

    #[test]
    fn reports_are_rewritten_on_significant_change_only() {
        let a = report("pulsar://a:6650", &[("t/n/b1", 100.0)]);
        let mut b = a.clone();
        b.msg_rate_in = 105.0;
        assert!(!a.differs(&b, 10.0));
        b.msg_rate_in = 150.0;
        assert!(a.differs(&b, 10.0));
        let mut c = a.clone();
        c.bundles.push("t/n/b2".into());
        assert!(a.differs(&c, 10.0));
        let mut ema = Ema::default();
        assert_eq!(ema.update(100.0), 100.0);
        let smoothed = ema.update(1000.0);
        assert!(
            smoothed > 100.0 && smoothed < 500.0,
            "one spike moves the average little: {smoothed}"
        );
    }

    #[test]
    fn the_report_has_pulsars_field_names() {
        let json = serde_json::to_value(report("pulsar://a:6650", &[("t/n/b1", 1.0)])).unwrap();
        for field in [
            "webServiceUrl",
            "pulsarServiceUrl",
            "cpu",
            "memory",
            "bandwidthIn",
            "bandwidthOut",
            "msgThroughputIn",
            "msgThroughputOut",
            "msgRateIn",
            "msgRateOut",
            "numTopics",
            "numBundles",
            "numConsumers",
            "numProducers",
            "bundles",
            "lastStats",
            "lastUpdate",
        ] {
            assert!(json.get(field).is_some(), "{field} missing: {json}");
        }
        assert!(json["lastStats"]["t/n/b1"].get("msgRateIn").is_some());
    }
}
