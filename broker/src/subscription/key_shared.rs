//! [`KeyShared`]: who owns which key hash in a Key_Shared subscription, and which hashes are
//! *draining* — Pulsar 4's rules, carried over as facts.
//!
//! - **Sticky hash.** An entry's key (ordering key, else partition key, else `NONE_KEY`) hashes
//!   with Murmur3-32 (seed 0, sign bit cleared) modulo 65,536; 0 becomes 1 because Pulsar keeps 0
//!   as "no hash" ([`sticky_hash`]).
//! - **AUTO_SPLIT** uses Pulsar's consistent-hashing selector: every consumer puts 100 points on
//!   a ring over the hash space, at the sticky hash of `"{name}\0{name index}\0{point}"` (the
//!   name index tells apart connected consumers of the same name); a hash belongs to the
//!   consumer of the first point at or above it (wrapping). On a collision the point keeps its
//!   first consumer and the next one takes over when it leaves. A consumer joining or leaving
//!   moves only the hashes next to its own points.
//! - **STICKY** consumers own exactly the inclusive ranges of `0..=65535` they declare. A
//!   consumer with no range, a range with start > end or outside the space, or a range
//!   overlapping another consumer's is refused with `ConsumerAssignError`, as Pulsar's
//!   `HashRangeExclusiveStickyKeyConsumerSelector` does. Hashes nobody declared wait.
//! - Every consumer of a subscription must use the same mode and the same
//!   `allowOutOfOrderDelivery`, else `ConsumerBusy` with Pulsar's "Subscription is of different
//!   type" message.
//! - **Draining hashes (PIP-379)**, AUTO_SPLIT without out-of-order delivery: when consumers
//!   join or leave, a hash that moved away from consumer A while A still holds unacknowledged
//!   entries of it is *draining*: no other consumer gets an entry of that hash until A has
//!   acknowledged those entries, or they came back for redelivery (A nacked them or left). If
//!   the hash moves back to A it stops draining at once. Entries of a blocked hash wait in the
//!   subscription's redelivery set, oldest first, so per-key order holds.
//!
//! State is the subscription actor's own (no locks). What A still holds is the actor's pending
//! map, passed in: the tracker remembers the hash of each delivered entry and prunes its
//! records lazily against that map (entries acked, nacked or reassigned drop out), so the ack
//! path needs no hook and the bookkeeping stays proportional to the unacknowledged entries.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use magnetar_proto::pulsar::api::KeySharedMeta;

use crate::error::{BrokerError, BrokerResult};
use magnetar_managed_ledger::Position;

/// Size of the hash space (Pulsar's `DEFAULT_HASH_RANGE_SIZE`).
pub const KEY_HASH_RANGE: u32 = 65_536;
/// Ring points per AUTO_SPLIT consumer (Pulsar's `subscriptionKeySharedConsistentHashingReplicaPoints`).
const RING_POINTS: u32 = 100;
/// Delivered-entry hashes kept beyond twice the pending entries before they are pruned.
const DELIVERED_SLACK: usize = 1024;

/// Key_Shared mode of a consumer (`KeySharedMeta.keySharedMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeySharedMode {
    #[default]
    AutoSplit,
    Sticky,
}

impl std::fmt::Display for KeySharedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeySharedMode::AutoSplit => "AUTO_SPLIT",
            KeySharedMode::Sticky => "STICKY",
        })
    }
}

/// What a Key_Shared consumer asked for in CommandSubscribe.keySharedMeta.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySharedPolicy {
    pub mode: KeySharedMode,
    /// STICKY: the inclusive hash ranges the consumer owns, as sent (checked on add).
    pub ranges: Vec<(i32, i32)>,
    pub allow_out_of_order: bool,
}

impl KeySharedPolicy {
    /// The policy of a SUBSCRIBE; no meta means AUTO_SPLIT in order, as Pulsar.
    pub fn from_wire(meta: Option<&KeySharedMeta>) -> Self {
        let Some(m) = meta else {
            return Self::default();
        };
        KeySharedPolicy {
            mode: if m.key_shared_mode == 1 {
                KeySharedMode::Sticky
            } else {
                KeySharedMode::AutoSplit
            },
            ranges: m.hash_ranges.iter().map(|r| (r.start, r.end)).collect(),
            allow_out_of_order: m.allow_out_of_order_delivery.unwrap_or(false),
        }
    }
}

/// The raw Murmur3-32 (seed 0) of a key.
pub fn murmur3_32(key: &[u8]) -> u32 {
    // Reading from an in-memory slice cannot fail.
    murmur3::murmur3_32(&mut std::io::Cursor::new(key), 0).unwrap_or(0)
}

/// Pulsar's sticky key hash of a raw Murmur3 hash: in `1..KEY_HASH_RANGE`.
pub fn sticky_hash(raw: u32) -> u32 {
    match (raw & 0x7fff_ffff) % KEY_HASH_RANGE {
        0 => 1,
        h => h,
    }
}

/// A hash that moved away from `consumer` while it held these unacknowledged entries of it.
#[derive(Debug)]
struct Drain {
    consumer: u64,
    positions: BTreeSet<Position>,
}

/// Hash ownership and draining hashes of one Key_Shared subscription.
#[derive(Debug, Default)]
pub struct KeyShared {
    mode: KeySharedMode,
    allow_out_of_order: bool,
    /// Connected consumers: key → name.
    names: HashMap<u64, String>,
    /// AUTO_SPLIT ring: point → consumers placed there (the first one owns it).
    ring: BTreeMap<u32, Vec<u64>>,
    /// AUTO_SPLIT: each consumer's name index.
    name_index: HashMap<u64, u32>,
    /// STICKY: range start → (inclusive end, consumer).
    sticky: BTreeMap<u32, (u32, u64)>,
    /// Sticky hash of delivered entries (pruned against the pending map).
    delivered: HashMap<Position, u32>,
    draining: HashMap<u32, Drain>,
}

impl KeyShared {
    pub fn new() -> Self {
        Self::default()
    }

    fn draining_required(&self) -> bool {
        self.mode == KeySharedMode::AutoSplit && !self.allow_out_of_order
    }

    /// Adds consumer `key`; `pending` is the subscription's unacknowledged entries → consumer.
    pub fn add(
        &mut self,
        key: u64,
        name: &str,
        policy: &KeySharedPolicy,
        pending: &BTreeMap<Position, u64>,
    ) -> BrokerResult<()> {
        if self.names.is_empty() {
            *self = KeyShared {
                mode: policy.mode,
                allow_out_of_order: policy.allow_out_of_order,
                ..KeyShared::default()
            };
        } else if policy.mode != self.mode {
            return Err(BrokerError::ConsumerBusy(format!(
                "Subscription is of different type. Active subscription key_shared mode of '{}' \
                 is different than the connecting consumer's key_shared mode '{}'.",
                self.mode, policy.mode
            )));
        } else if policy.allow_out_of_order != self.allow_out_of_order {
            return Err(BrokerError::ConsumerBusy(format!(
                "Subscription is of different type. {}",
                if self.allow_out_of_order {
                    "Active subscription allows out of order delivery while the connecting \
                     consumer does not allow it."
                } else {
                    "Active subscription does not allow out of order delivery while the \
                     connecting consumer allows it."
                }
            )));
        }
        match self.mode {
            KeySharedMode::Sticky => {
                let ranges = self.check_sticky_ranges(&policy.ranges)?;
                for (start, end) in ranges {
                    self.sticky.insert(start, (end, key));
                }
            }
            KeySharedMode::AutoSplit => {
                let index = (0..)
                    .find(|i| {
                        !self.name_index.iter().any(|(k, idx)| {
                            idx == i && self.names.get(k).is_some_and(|n| n == name)
                        })
                    })
                    .unwrap_or(0);
                self.name_index.insert(key, index);
                for point in ring_points(name, index) {
                    self.ring.entry(point).or_default().push(key);
                }
            }
        }
        self.names.insert(key, name.to_owned());
        self.register_draining(pending);
        Ok(())
    }

    /// STICKY: the declared ranges, checked against each other and the other consumers'.
    fn check_sticky_ranges(&self, declared: &[(i32, i32)]) -> BrokerResult<Vec<(u32, u32)>> {
        if declared.is_empty() {
            return Err(BrokerError::ConsumerAssign(
                "Ranges for KeyShared policy must not be empty.".into(),
            ));
        }
        let mut ranges: Vec<(u32, u32)> = Vec::with_capacity(declared.len());
        for &(start, end) in declared {
            if start > end {
                return Err(BrokerError::ConsumerAssign(
                    "Fixed hash range start > end".into(),
                ));
            }
            let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(end)) else {
                return Err(BrokerError::ConsumerAssign(format!(
                    "Fixed hash range [{start}, {end}] is outside [0, {}]",
                    KEY_HASH_RANGE - 1
                )));
            };
            if end >= KEY_HASH_RANGE {
                return Err(BrokerError::ConsumerAssign(format!(
                    "Fixed hash range [{start}, {end}] is outside [0, {}]",
                    KEY_HASH_RANGE - 1
                )));
            }
            ranges.push((start, end));
        }
        ranges.sort_unstable();
        if let Some(w) = ranges.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(BrokerError::ConsumerAssign(format!(
                "Range conflict: [{}, {}] overlaps [{}, {}] of the same consumer",
                w[0].0, w[0].1, w[1].0, w[1].1
            )));
        }
        for &(start, end) in &ranges {
            // The one range starting at or before `end` with the greatest start is the only
            // one that can overlap, since existing ranges are disjoint.
            if let Some((&s, &(e, owner))) = self.sticky.range(..=end).next_back()
                && e >= start
            {
                let name = self.names.get(&owner).map_or("?", String::as_str);
                return Err(BrokerError::ConsumerAssign(format!(
                    "Range conflict with consumer {name}: [{start}, {end}] overlaps [{s}, {e}]"
                )));
            }
        }
        Ok(ranges)
    }

    /// Removes consumer `key` (its pending entries are already back in the redelivery set).
    pub fn remove(&mut self, key: u64, pending: &BTreeMap<Position, u64>) {
        let Some(name) = self.names.remove(&key) else {
            return;
        };
        if let Some(index) = self.name_index.remove(&key) {
            for point in ring_points(&name, index) {
                if let Some(keys) = self.ring.get_mut(&point) {
                    keys.retain(|k| *k != key);
                    if keys.is_empty() {
                        self.ring.remove(&point);
                    }
                }
            }
        }
        self.sticky.retain(|_, (_, k)| *k != key);
        if self.names.is_empty() {
            self.delivered.clear();
            self.draining.clear();
        } else {
            self.register_draining(pending);
        }
    }

    /// The consumer owning sticky hash `hash` (None: nobody, e.g. an undeclared STICKY range).
    pub fn owner(&self, hash: u32) -> Option<u64> {
        match self.mode {
            KeySharedMode::AutoSplit => self
                .ring
                .range(hash..)
                .next()
                .or_else(|| self.ring.iter().next())
                .and_then(|(_, keys)| keys.first().copied()),
            KeySharedMode::Sticky => self
                .sticky
                .range(..=hash)
                .next_back()
                .filter(|(_, (end, _))| hash <= *end)
                .map(|(_, (_, k))| *k),
        }
    }

    /// True when `hash` is draining at another consumer than `consumer`: its entries must wait.
    pub fn blocked(&mut self, hash: u32, consumer: u64, pending: &BTreeMap<Position, u64>) -> bool {
        let Some(drain) = self.draining.get_mut(&hash) else {
            return false;
        };
        if drain.consumer != consumer {
            let holder = drain.consumer;
            drain.positions.retain(|p| pending.get(p) == Some(&holder));
            if !drain.positions.is_empty() {
                return true;
            }
        }
        // Drained, or the hash came back to the consumer that holds its entries.
        self.draining.remove(&hash);
        false
    }

    /// Records that the entry at `position` (sticky hash `hash`) went to a consumer.
    pub fn delivered(&mut self, position: Position, hash: u32, pending: &BTreeMap<Position, u64>) {
        if !self.draining_required() {
            return;
        }
        self.delivered.insert(position, hash);
        if self.delivered.len() > pending.len() * 2 + DELIVERED_SLACK {
            self.delivered.retain(|p, _| pending.contains_key(p));
        }
    }

    /// Forgets delivered entries and draining hashes (the subscription was reset).
    pub fn clear_deliveries(&mut self) {
        self.delivered.clear();
        self.draining.clear();
    }

    /// Draining hashes: every unacknowledged entry held by a consumer that no longer owns its
    /// hash makes that hash drain at the holder.
    fn register_draining(&mut self, pending: &BTreeMap<Position, u64>) {
        if !self.draining_required() {
            return;
        }
        self.delivered.retain(|p, _| pending.contains_key(p));
        // Hashes that came back to the consumer holding their entries no longer drain.
        let back: Vec<u32> = self
            .draining
            .iter()
            .filter(|(h, d)| self.owner(**h) == Some(d.consumer))
            .map(|(h, _)| *h)
            .collect();
        for h in back {
            self.draining.remove(&h);
        }
        for (p, &holder) in pending {
            let Some(&hash) = self.delivered.get(p) else {
                continue;
            };
            if self.owner(hash) == Some(holder) {
                continue;
            }
            let drain = self.draining.entry(hash).or_insert_with(|| Drain {
                consumer: holder,
                positions: BTreeSet::new(),
            });
            // One holder per hash: while it drains, no other consumer received that hash.
            if drain.consumer == holder {
                drain.positions.insert(*p);
            }
        }
    }

    /// Number of draining hashes (stats and tests).
    pub fn draining_hashes(&self) -> usize {
        self.draining.len()
    }
}

/// The ring points of a consumer: Pulsar's `name + "\0" + nameIndex + "\0" + point`.
fn ring_points(name: &str, index: u32) -> impl Iterator<Item = u32> + '_ {
    (0..RING_POINTS)
        .map(move |i| sticky_hash(murmur3_32(format!("{name}\0{index}\0{i}").as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(ranges: &[(i32, i32)]) -> KeySharedPolicy {
        KeySharedPolicy {
            mode: KeySharedMode::Sticky,
            ranges: ranges.to_vec(),
            allow_out_of_order: false,
        }
    }

    fn pos(e: u64) -> Position {
        Position::new(1, e)
    }

    #[test]
    fn sticky_hash_matches_pulsar() {
        // Murmur3-32 reference values (seed 0).
        assert_eq!(murmur3_32(b""), 0);
        assert_eq!(murmur3_32(b"hello"), 0x248b_fa47);
        assert_eq!(sticky_hash(0x248b_fa47), 0xfa47);
        assert_eq!(sticky_hash(0x8001_0000), 1);
        assert_eq!(sticky_hash(0xffff_ffff), 0xffff);
    }

    #[test]
    fn sticky_consumers_own_their_ranges_only() {
        let mut ks = KeyShared::new();
        let none = BTreeMap::new();
        ks.add(1, "a", &sticky(&[(0, 99), (200, 299)]), &none)
            .unwrap();
        ks.add(2, "b", &sticky(&[(100, 199)]), &none).unwrap();
        assert_eq!(ks.owner(1), Some(1));
        assert_eq!(ks.owner(99), Some(1));
        assert_eq!(ks.owner(100), Some(2));
        assert_eq!(ks.owner(199), Some(2));
        assert_eq!(ks.owner(250), Some(1));
        assert_eq!(ks.owner(300), None);
        ks.remove(2, &none);
        assert_eq!(ks.owner(150), None);
    }

    #[test]
    fn sticky_conflicts_and_bad_ranges_are_consumer_assign_errors() {
        let mut ks = KeyShared::new();
        let none = BTreeMap::new();
        ks.add(1, "a", &sticky(&[(100, 199)]), &none).unwrap();
        for bad in [
            vec![(150, 250)],
            vec![(0, 100)],
            vec![(199, 199)],
            vec![(0, 65535)],
            vec![],
            vec![(10, 5)],
            vec![(0, 65536)],
            vec![(-1, 5)],
            vec![(0, 10), (5, 20)],
        ] {
            let err = ks.add(2, "b", &sticky(&bad), &none).unwrap_err();
            assert!(
                matches!(err, BrokerError::ConsumerAssign(_)),
                "{bad:?}: {err}"
            );
        }
        ks.add(2, "b", &sticky(&[(0, 99), (200, 65535)]), &none)
            .unwrap();
    }

    #[test]
    fn mode_and_ordering_must_match_the_subscription() {
        let mut ks = KeyShared::new();
        let none = BTreeMap::new();
        ks.add(1, "a", &KeySharedPolicy::default(), &none).unwrap();
        let err = ks.add(2, "b", &sticky(&[(0, 10)]), &none).unwrap_err();
        assert!(matches!(err, BrokerError::ConsumerBusy(_)));
        let ooo = KeySharedPolicy {
            allow_out_of_order: true,
            ..KeySharedPolicy::default()
        };
        let err = ks.add(2, "b", &ooo, &none).unwrap_err();
        assert!(matches!(err, BrokerError::ConsumerBusy(_)));
        // Once empty, the next consumer sets the mode.
        ks.remove(1, &none);
        ks.add(3, "c", &sticky(&[(0, 10)]), &none).unwrap();
        assert_eq!(ks.owner(5), Some(3));
    }

    #[test]
    fn auto_split_spreads_hashes_and_moves_few_on_join() {
        let mut ks = KeyShared::new();
        let none = BTreeMap::new();
        let auto = KeySharedPolicy::default();
        ks.add(1, "a", &auto, &none).unwrap();
        assert!((1..KEY_HASH_RANGE).all(|h| ks.owner(h) == Some(1)));
        ks.add(2, "b", &auto, &none).unwrap();
        let before: Vec<Option<u64>> = (1..KEY_HASH_RANGE).map(|h| ks.owner(h)).collect();
        let b = before.iter().filter(|o| **o == Some(2)).count();
        assert!(b > 16_000 && b < 50_000, "b owns {b}");
        ks.add(3, "c", &auto, &none).unwrap();
        let after: Vec<Option<u64>> = (1..KEY_HASH_RANGE).map(|h| ks.owner(h)).collect();
        // Only hashes that went to the new consumer moved.
        for (x, y) in before.iter().zip(&after) {
            assert!(x == y || *y == Some(3));
        }
        ks.remove(3, &none);
        let back: Vec<Option<u64>> = (1..KEY_HASH_RANGE).map(|h| ks.owner(h)).collect();
        assert_eq!(back, before);
    }

    #[test]
    fn same_name_consumers_get_distinct_points() {
        let mut ks = KeyShared::new();
        let none = BTreeMap::new();
        let auto = KeySharedPolicy::default();
        ks.add(1, "same", &auto, &none).unwrap();
        ks.add(2, "same", &auto, &none).unwrap();
        let two = (1..KEY_HASH_RANGE)
            .filter(|h| ks.owner(*h) == Some(2))
            .count();
        assert!(two > 10_000, "second consumer owns {two}");
    }

    #[test]
    fn a_moved_hash_drains_until_its_entries_are_acked() {
        let mut ks = KeyShared::new();
        let auto = KeySharedPolicy::default();
        let mut pending = BTreeMap::new();
        ks.add(1, "a", &auto, &pending).unwrap();
        // Consumer 1 holds entries of every hash 1..=400.
        for h in 1..=400u32 {
            pending.insert(pos(u64::from(h)), 1);
            ks.delivered(pos(u64::from(h)), h, &pending);
        }
        ks.add(2, "b", &auto, &pending).unwrap();
        let moved: Vec<u32> = (1..=400).filter(|h| ks.owner(*h) == Some(2)).collect();
        assert!(!moved.is_empty());
        assert_eq!(ks.draining_hashes(), moved.len());
        let h = moved[0];
        assert!(ks.blocked(h, 2, &pending));
        // Hashes that stayed are not blocked.
        let stayed = (1..=400).find(|h| ks.owner(*h) == Some(1)).unwrap();
        assert!(!ks.blocked(stayed, 1, &pending));
        // Acked (gone from pending): the hash is free.
        pending.remove(&pos(u64::from(h)));
        assert!(!ks.blocked(h, 2, &pending));
        assert_eq!(ks.draining_hashes(), moved.len() - 1);
    }

    #[test]
    fn a_hash_that_comes_back_stops_draining() {
        let mut ks = KeyShared::new();
        let auto = KeySharedPolicy::default();
        let mut pending = BTreeMap::new();
        ks.add(1, "a", &auto, &pending).unwrap();
        for h in 1..=400u32 {
            pending.insert(pos(u64::from(h)), 1);
            ks.delivered(pos(u64::from(h)), h, &pending);
        }
        ks.add(2, "b", &auto, &pending).unwrap();
        let h = (1..=400).find(|h| ks.owner(*h) == Some(2)).unwrap();
        ks.remove(2, &pending);
        assert_eq!(ks.owner(h), Some(1));
        assert!(!ks.blocked(h, 1, &pending));
        assert_eq!(ks.draining_hashes(), 0);
    }

    #[test]
    fn no_draining_when_out_of_order_is_allowed() {
        let mut ks = KeyShared::new();
        let ooo = KeySharedPolicy {
            allow_out_of_order: true,
            ..KeySharedPolicy::default()
        };
        let mut pending = BTreeMap::new();
        ks.add(1, "a", &ooo, &pending).unwrap();
        for h in 1..=400u32 {
            pending.insert(pos(u64::from(h)), 1);
            ks.delivered(pos(u64::from(h)), h, &pending);
        }
        ks.add(2, "b", &ooo, &pending).unwrap();
        assert_eq!(ks.draining_hashes(), 0);
    }
}
