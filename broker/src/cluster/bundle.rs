//! Namespace bundles: a namespace's topics split by the hash of their names into ranges of the
//! 32-bit hash space, the unit a broker owns (DESIGN decision 5).
//!
//! The hash is Murmur3 (32 bit, seed 0) of the full topic name — what Pulsar uses — so a topic's
//! bundle depends on nothing but its name and the namespace's bundle boundaries.

use std::fmt;
use std::io::Cursor;

use crate::topic_name::{NamespaceName, TopicName};

/// Pulsar's default number of bundles of a new namespace.
pub const DEFAULT_BUNDLE_COUNT: u32 = 4;
/// More bundles than this in one namespace are refused.
pub const BUNDLE_COUNT_MAX: u32 = 1024;

/// A range of the hash space, `[lower, upper)`, except that the last range includes
/// `0xffffffff`. Displayed like Pulsar: `0x00000000_0x40000000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashRange {
    pub lower: u32,
    /// Exclusive, except `u32::MAX` which closes the last range.
    pub upper: u32,
}

impl HashRange {
    pub fn contains(&self, hash: u32) -> bool {
        hash >= self.lower && (hash < self.upper || (self.upper == u32::MAX && hash == u32::MAX))
    }
}

impl fmt::Display for HashRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:08x}_0x{:08x}", self.lower, self.upper)
    }
}

impl std::str::FromStr for HashRange {
    type Err = String;

    /// `0x00000000_0x40000000`, as Pulsar names a bundle (lower below upper).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid bundle range {s:?}: expected 0xLLLLLLLL_0xUUUUUUUU");
        let (lower, upper) = s.split_once('_').ok_or_else(bad)?;
        let hex = |h: &str| {
            h.strip_prefix("0x")
                .or_else(|| h.strip_prefix("0X"))
                .filter(|d| !d.is_empty() && d.len() <= 8)
                .and_then(|d| u32::from_str_radix(d, 16).ok())
        };
        let (lower, upper) = (hex(lower).ok_or_else(bad)?, hex(upper).ok_or_else(bad)?);
        if lower >= upper {
            return Err(format!(
                "invalid bundle range {s:?}: the lower bound must be below the upper"
            ));
        }
        Ok(HashRange { lower, upper })
    }
}

/// One bundle: a namespace and a hash range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bundle {
    pub namespace: NamespaceName,
    pub range: HashRange,
}

impl fmt::Display for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.range)
    }
}

impl std::str::FromStr for Bundle {
    type Err = String;

    /// `tenant/namespace/0x00000000_0x40000000`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ns, range) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("invalid bundle {s:?}: expected tenant/namespace/range"))?;
        Ok(Bundle {
            namespace: ns
                .parse()
                .map_err(|e| format!("invalid bundle {s:?}: {e}"))?,
            range: range.parse()?,
        })
    }
}

/// The bundles of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceBundles {
    namespace: NamespaceName,
    ranges: Vec<HashRange>,
}

/// The bundle hash of a topic name.
pub fn topic_hash(topic: &TopicName) -> u32 {
    let name = topic.to_string();
    // Reading from an in-memory slice cannot fail; 0 is a valid hash should it ever.
    murmur3::murmur3_32(&mut Cursor::new(name.as_bytes()), 0).unwrap_or(0)
}

impl NamespaceBundles {
    /// `count` equal bundles (clamped to 1..=`BUNDLE_COUNT_MAX`).
    pub fn even(namespace: NamespaceName, count: u32) -> Self {
        let count = count.clamp(1, BUNDLE_COUNT_MAX) as u64;
        let span = (u32::MAX as u64 + 1) / count;
        let ranges = (0..count)
            .map(|i| HashRange {
                lower: (i * span) as u32,
                upper: if i + 1 == count {
                    u32::MAX
                } else {
                    ((i + 1) * span) as u32
                },
            })
            .collect();
        NamespaceBundles { namespace, ranges }
    }

    /// The bundles between `boundaries` (`[0, …, 0xffffffff]`, strictly increasing); None if
    /// they are not such a list.
    pub fn from_boundaries(namespace: NamespaceName, boundaries: &[u32]) -> Option<Self> {
        let valid = boundaries.len() >= 2
            && boundaries.len() <= BUNDLE_COUNT_MAX as usize + 1
            && boundaries.first() == Some(&0)
            && boundaries.last() == Some(&u32::MAX)
            && boundaries.windows(2).all(|w| w[0] < w[1]);
        valid.then(|| NamespaceBundles {
            namespace,
            ranges: boundaries
                .windows(2)
                .map(|w| HashRange {
                    lower: w[0],
                    upper: w[1],
                })
                .collect(),
        })
    }

    /// The bundles a namespace's policies define: its boundaries after a split, else
    /// `bundle_count` equal ones.
    pub fn of(namespace: NamespaceName, policies: &crate::policies::NamespacePolicies) -> Self {
        policies
            .bundle_boundaries
            .as_deref()
            .and_then(|b| Self::from_boundaries(namespace.clone(), b))
            .unwrap_or_else(|| {
                Self::even(
                    namespace,
                    policies.bundle_count.unwrap_or(DEFAULT_BUNDLE_COUNT),
                )
            })
    }

    /// The boundaries: every lower bound, then `0xffffffff`.
    pub fn boundaries(&self) -> Vec<u32> {
        let mut b: Vec<u32> = self.ranges.iter().map(|r| r.lower).collect();
        b.push(u32::MAX);
        b
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, bundle: &Bundle) -> bool {
        bundle.namespace == self.namespace && self.ranges.contains(&bundle.range)
    }

    pub fn namespace(&self) -> &NamespaceName {
        &self.namespace
    }

    pub fn bundles(&self) -> impl Iterator<Item = Bundle> + '_ {
        self.ranges.iter().map(|r| Bundle {
            namespace: self.namespace.clone(),
            range: *r,
        })
    }

    /// The bundle `topic` belongs to. The topic must be in this namespace.
    pub fn find(&self, topic: &TopicName) -> Bundle {
        debug_assert_eq!(topic.namespace(), &self.namespace);
        let hash = topic_hash(topic);
        let range = self
            .ranges
            .iter()
            .find(|r| r.contains(hash))
            .copied()
            // The ranges cover the whole space by construction; the last one is the fallback.
            .or_else(|| self.ranges.last().copied())
            .unwrap_or(HashRange {
                lower: 0,
                upper: u32::MAX,
            });
        Bundle {
            namespace: self.namespace.clone(),
            range,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_bundles_cover_the_whole_hash_space() {
        let ns: NamespaceName = "public/default".parse().unwrap();
        for count in [1, 3, 4, 16] {
            let b = NamespaceBundles::even(ns.clone(), count);
            let ranges: Vec<_> = b.bundles().map(|b| b.range).collect();
            assert_eq!(ranges.len(), count as usize);
            assert_eq!(ranges[0].lower, 0);
            assert_eq!(ranges.last().unwrap().upper, u32::MAX);
            for w in ranges.windows(2) {
                assert_eq!(w[0].upper, w[1].lower, "no gaps, no overlaps");
            }
            for hash in [0, 1, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
                assert_eq!(ranges.iter().filter(|r| r.contains(hash)).count(), 1);
            }
        }
    }

    #[test]
    fn boundaries_define_bundles_and_bad_ones_are_refused() {
        let ns: NamespaceName = "public/default".parse().unwrap();
        let b = NamespaceBundles::from_boundaries(ns.clone(), &[0, 0x4000_0000, u32::MAX]).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.boundaries(), vec![0, 0x4000_0000, u32::MAX]);
        assert_eq!(
            NamespaceBundles::even(ns.clone(), 4).boundaries(),
            vec![0, 0x4000_0000, 0x8000_0000, 0xc000_0000, u32::MAX]
        );
        for bad in [&[0u32][..], &[1, u32::MAX], &[0, 5, 5, u32::MAX], &[0, 7]] {
            assert!(
                NamespaceBundles::from_boundaries(ns.clone(), bad).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bundles_parse_from_their_names() {
        let b: Bundle = "public/default/0x40000000_0x80000000".parse().unwrap();
        assert_eq!(b.to_string(), "public/default/0x40000000_0x80000000");
        assert_eq!((b.range.lower, b.range.upper), (0x4000_0000, 0x8000_0000));
        for bad in [
            "public/default/0x80000000_0x40000000",
            "public/default/0x1_",
            "public/default/40000000_80000000",
            "public/default/0x1_0x1ffffffff",
            "default/0x0_0x1",
            "0x0_0x1",
        ] {
            assert!(bad.parse::<Bundle>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn topics_map_to_a_stable_bundle() {
        let ns: NamespaceName = "public/default".parse().unwrap();
        let bundles = NamespaceBundles::even(ns, 4);
        let t: TopicName = "persistent://public/default/orders".parse().unwrap();
        assert_eq!(bundles.find(&t), bundles.find(&t));
        assert!(bundles.find(&t).range.contains(topic_hash(&t)));
        assert_eq!(
            bundles.bundles().next().unwrap().to_string(),
            "public/default/0x00000000_0x40000000"
        );
        // Spread: 200 topics land in more than one bundle.
        let used: std::collections::BTreeSet<_> = (0..200)
            .map(|i| {
                let t: TopicName = format!("public/default/t{i}").parse().unwrap();
                bundles.find(&t).range
            })
            .collect();
        assert_eq!(used.len(), 4);
    }
}
