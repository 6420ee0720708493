//! Bundle split, by admin request or by the leader when a bundle outgrows its thresholds:
//! the owner takes the children's leases, records the new boundaries in the namespace policies
//! (compare-and-set), moves its loaded topics to their child, then lets the parent's lease go;
//! with `unload`, the children are handed to the least-loaded brokers.
//!
//! Why this order: a broker that looked the parent up before the split and takes its lease
//! after the release would serve topics a child owner serves too; `claim` therefore checks,
//! after taking any lease, that the bundle is still one of its namespace's, and the boundaries
//! are written before the parent is released.

use std::str::FromStr;
use std::sync::Arc;

use tracing::{info, warn};

use super::BrokerService;
use crate::cluster::bundle::{Bundle, HashRange, topic_hash};
use crate::cluster::ownership::Owner;
use crate::error::{BrokerError, BrokerResult};
use crate::topic_name::TopicName;

/// Pulsar's split algorithms (`splitAlgorithmName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitAlgorithm {
    /// Halves the hash range.
    RangeEquallyDivide,
    /// Splits at the median hash of the bundle's topics (each child gets about half).
    TopicCountEquallyDivide,
    /// Splits at the given hash positions (those inside the bundle).
    SpecifiedPositionsDivide(Vec<u32>),
}

impl FromStr for SplitAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "range_equally_divide" => Ok(SplitAlgorithm::RangeEquallyDivide),
            "topic_count_equally_divide" => Ok(SplitAlgorithm::TopicCountEquallyDivide),
            "specified_positions_divide" => {
                Ok(SplitAlgorithm::SpecifiedPositionsDivide(Vec::new()))
            }
            other => Err(format!(
                "unknown split algorithm {other:?}: range_equally_divide, \
                 topic_count_equally_divide or specified_positions_divide"
            )),
        }
    }
}

impl SplitAlgorithm {
    pub fn name(&self) -> &'static str {
        match self {
            SplitAlgorithm::RangeEquallyDivide => "range_equally_divide",
            SplitAlgorithm::TopicCountEquallyDivide => "topic_count_equally_divide",
            SplitAlgorithm::SpecifiedPositionsDivide(_) => "specified_positions_divide",
        }
    }
}

/// The split points of `range` by `algorithm`, given the hashes of the bundle's topics
/// (sorted); each strictly inside the range.
pub fn split_points(
    range: HashRange,
    algorithm: &SplitAlgorithm,
    topic_hashes: &[u32],
) -> Result<Vec<u32>, String> {
    let inside = |p: u32| p > range.lower && p < range.upper;
    let points = match algorithm {
        SplitAlgorithm::RangeEquallyDivide => {
            let mid = range.lower + (range.upper - range.lower) / 2;
            vec![mid]
        }
        SplitAlgorithm::TopicCountEquallyDivide => {
            if topic_hashes.len() < 2 {
                return Err(format!(
                    "bundle {range} has {} topic(s): topic_count_equally_divide needs at least 2",
                    topic_hashes.len()
                ));
            }
            vec![topic_hashes[topic_hashes.len() / 2]]
        }
        SplitAlgorithm::SpecifiedPositionsDivide(positions) => {
            let mut p: Vec<u32> = positions.iter().copied().filter(|p| inside(*p)).collect();
            p.sort_unstable();
            p.dedup();
            p
        }
    };
    let points: Vec<u32> = points.into_iter().filter(|p| inside(*p)).collect();
    if points.is_empty() {
        return Err(format!(
            "bundle {range} cannot be split by {}: no split position inside it",
            algorithm.name()
        ));
    }
    Ok(points)
}

impl BrokerService {
    /// Splits `bundle` (this broker must own it) by `algorithm`; the children stay here
    /// unless `unload`, which hands each to the least-loaded broker. Returns the children.
    pub async fn split_bundle(
        self: &Arc<Self>,
        bundle: &Bundle,
        algorithm: &SplitAlgorithm,
        unload: bool,
    ) -> BrokerResult<Vec<Bundle>> {
        if !self.ownership.is_owned(bundle) {
            return Err(BrokerError::NotOwner(format!("bundle {bundle}")));
        }
        let ns = bundle.namespace.clone();
        let bundles = self.namespace_bundles(&ns).await?;
        if !bundles.contains(bundle) {
            return Err(BrokerError::NotFound(format!(
                "bundle {bundle} is not a bundle of {ns}"
            )));
        }
        let hashes = if matches!(algorithm, SplitAlgorithm::TopicCountEquallyDivide) {
            let mut hashes: Vec<u32> = self
                .topics_of_namespace(&ns)
                .await?
                .iter()
                .filter_map(|t| t.parse::<TopicName>().ok())
                .map(|t| topic_hash(&t))
                .filter(|h| bundle.range.contains(*h))
                .collect();
            hashes.sort_unstable();
            hashes
        } else {
            Vec::new()
        };
        let points =
            split_points(bundle.range, algorithm, &hashes).map_err(BrokerError::NotAllowed)?;
        let maximum = self.config.load_balancer.namespace_maximum_bundles;
        if bundles.len() + points.len() > maximum {
            return Err(BrokerError::NotAllowed(format!(
                "{ns} has {} bundles; splitting {bundle} would pass the maximum of {maximum}",
                bundles.len()
            )));
        }
        let mut edges = vec![bundle.range.lower];
        edges.extend(&points);
        edges.push(bundle.range.upper);
        let children: Vec<Bundle> = edges
            .windows(2)
            .map(|w| Bundle {
                namespace: ns.clone(),
                range: HashRange {
                    lower: w[0],
                    upper: w[1],
                },
            })
            .collect();
        // 1. The children's leases: nobody can hold them (their ranges are no bundle yet).
        for (i, child) in children.iter().enumerate() {
            match self.ownership.acquire(child).await {
                Ok(Owner::This { .. }) => {}
                other => {
                    for taken in &children[..i] {
                        let _ = self.ownership.release(taken).await;
                    }
                    return Err(BrokerError::NotReady(format!(
                        "cannot take the lease of {child} to split {bundle}: {other:?}"
                    )));
                }
            }
        }
        // 2. The new boundaries (merged into whatever the namespace has now).
        let updated = self
            .policies
            .update_namespace(&ns, |p| {
                let mut b =
                    crate::cluster::bundle::NamespaceBundles::of(ns.clone(), p).boundaries();
                for point in &points {
                    if !b.contains(point) {
                        b.push(*point);
                    }
                }
                b.sort_unstable();
                p.bundle_count = Some(b.len().saturating_sub(1) as u32);
                p.bundle_boundaries = Some(b);
            })
            .await;
        if let Err(e) = updated {
            for child in &children {
                let _ = self.ownership.release(child).await;
            }
            return Err(e.into());
        }
        // 3. Loaded topics belong to their child now; 4. the parent goes.
        let retag = |service: &Arc<Self>| {
            for topic in service.loaded() {
                if topic.bundle() == *bundle {
                    let h = topic_hash(topic.name());
                    if let Some(child) = children.iter().find(|c| c.range.contains(h)) {
                        topic.set_bundle(child.clone());
                    }
                }
            }
        };
        retag(self);
        if let Err(e) = self.ownership.release(bundle).await {
            warn!(%bundle, error = %e, "the split parent's lease could not be deleted; it expires with the session");
        }
        // A topic that finished loading under the parent meanwhile.
        retag(self);
        info!(%bundle, algorithm = algorithm.name(), children = ?children.iter().map(|c| c.range.to_string()).collect::<Vec<_>>(), "bundle split");
        self.bundles_split
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if unload {
            for child in &children {
                if let Err(e) = self.unload_bundle(child, None).await {
                    warn!(bundle = %child, error = %e, "unloading a split child failed");
                }
            }
        }
        Ok(children)
    }

    /// Splits `bundle` wherever it is served: here (taking it if nobody serves it), or by its
    /// owner through a split order.
    pub async fn split(
        self: &Arc<Self>,
        bundle: &Bundle,
        algorithm: &SplitAlgorithm,
        unload: bool,
    ) -> BrokerResult<Vec<Bundle>> {
        let bundles = self.namespace_bundles(&bundle.namespace).await?;
        if !bundles.contains(bundle) {
            return Err(BrokerError::NotFound(format!(
                "bundle {bundle} is not a bundle of {}",
                bundle.namespace
            )));
        }
        match self.ownership.acquire(bundle).await? {
            Owner::This { .. } => self.split_bundle(bundle, algorithm, unload).await,
            Owner::Other(_) => {
                self.request_split(bundle, algorithm, unload).await?;
                Ok(Vec::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points_follow_the_algorithm() {
        let r = HashRange {
            lower: 0x4000_0000,
            upper: 0x8000_0000,
        };
        assert_eq!(
            split_points(r, &SplitAlgorithm::RangeEquallyDivide, &[]).unwrap(),
            vec![0x6000_0000]
        );
        // The median topic hash: two topics on each side (the median goes up).
        let hashes = [0x4000_0001, 0x4000_0002, 0x4000_0003, 0x7fff_0000];
        assert_eq!(
            split_points(r, &SplitAlgorithm::TopicCountEquallyDivide, &hashes).unwrap(),
            vec![0x4000_0003]
        );
        assert!(split_points(r, &SplitAlgorithm::TopicCountEquallyDivide, &hashes[..1]).is_err());
        assert_eq!(
            split_points(
                r,
                &SplitAlgorithm::SpecifiedPositionsDivide(vec![
                    0x7000_0000,
                    0x1,
                    0x5000_0000,
                    0x4000_0000
                ]),
                &[]
            )
            .unwrap(),
            vec![0x5000_0000, 0x7000_0000]
        );
        assert!(split_points(r, &SplitAlgorithm::SpecifiedPositionsDivide(vec![1]), &[]).is_err());
        // A range of one hash cannot be halved.
        let tiny = HashRange { lower: 5, upper: 6 };
        assert!(split_points(tiny, &SplitAlgorithm::RangeEquallyDivide, &[]).is_err());
        assert!("nope".parse::<SplitAlgorithm>().is_err());
        assert_eq!(
            "topic_count_equally_divide"
                .parse::<SplitAlgorithm>()
                .unwrap(),
            SplitAlgorithm::TopicCountEquallyDivide
        );
    }
}
