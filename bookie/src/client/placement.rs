//! Placement: which bookies hold a ledger. Picks distinct writable bookies, spreading them over
//! zones when registrations carry zone labels — always from the least-used zone so far (round
//! robin over zones), at random within a zone — and never a bookie that is excluded (already in
//! the ensemble, or known to have failed). Distinct bookies per ensemble means no two replicas of
//! an entry ever share a bookie.

use std::collections::{BTreeMap, HashMap, HashSet};

use magnetar_metadata::clock::Random;
use rand::Rng;
use rand::seq::SliceRandom;

use super::error::{LedgerError, LedgerResult};
use crate::api::{BookieId, BookieRegistration, BookieState};

/// Chooses `count` bookies from `candidates`. `kept_zones` are the zones of bookies that stay in
/// the ensemble (an ensemble change), so the replacement goes to a zone they do not cover.
pub(crate) fn choose_bookies(
    candidates: &[BookieRegistration],
    count: usize,
    kept_zones: &[Option<String>],
    exclude: &HashSet<BookieId>,
    random: &Random,
) -> LedgerResult<Vec<BookieId>> {
    let mut by_zone: BTreeMap<Option<&str>, Vec<&BookieId>> = BTreeMap::new();
    let mut available = 0;
    for reg in candidates {
        if reg.state == BookieState::ReadWrite && !exclude.contains(&reg.id) {
            by_zone
                .entry(reg.zone.as_deref())
                .or_default()
                .push(&reg.id);
            available += 1;
        }
    }
    if available < count {
        return Err(LedgerError::NotEnoughBookies {
            needed: count,
            available,
        });
    }
    for ids in by_zone.values_mut() {
        ids.sort();
        ids.dedup();
        random.with(|rng| ids.shuffle(rng));
    }
    let mut used: HashMap<Option<&str>, usize> = HashMap::new();
    for zone in kept_zones {
        *used.entry(zone.as_deref()).or_default() += 1;
    }
    let mut chosen = Vec::with_capacity(count);
    while chosen.len() < count {
        let least = by_zone
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(z, _)| used.get(z).copied().unwrap_or(0))
            .min();
        let Some(least) = least else {
            return Err(LedgerError::NotEnoughBookies {
                needed: count,
                available: chosen.len(),
            });
        };
        let zones: Vec<Option<&str>> = by_zone
            .iter()
            .filter(|(z, ids)| !ids.is_empty() && used.get(*z).copied().unwrap_or(0) == least)
            .map(|(z, _)| *z)
            .collect();
        let zone = zones[random.with(|rng| rng.random_range(0..zones.len()))];
        if let Some(id) = by_zone.get_mut(&zone).and_then(|ids| ids.pop()) {
            chosen.push(id.clone());
            *used.entry(zone).or_default() += 1;
        }
    }
    Ok(chosen)
}

/// The ensemble `current` with each of its bookies in `failed` replaced, in place (the others
/// keep their positions): replacements are writable, neither in the ensemble nor failed, and
/// go to zones the kept bookies do not cover. The one choice of replacements, for the writer's
/// ensemble change and for recovery's re-replication alike.
pub(crate) fn replace_failed(
    registered: &[BookieRegistration],
    current: &[BookieId],
    failed: &HashSet<BookieId>,
    random: &Random,
) -> LedgerResult<Vec<BookieId>> {
    let positions: Vec<usize> = (0..current.len())
        .filter(|&p| failed.contains(&current[p]))
        .collect();
    let kept_zones: Vec<Option<String>> = current
        .iter()
        .filter(|b| !failed.contains(*b))
        .map(|b| {
            registered
                .iter()
                .find(|r| &r.id == b)
                .and_then(|r| r.zone.clone())
        })
        .collect();
    let exclude: HashSet<BookieId> = current.iter().chain(failed.iter()).cloned().collect();
    let replacements = choose_bookies(registered, positions.len(), &kept_zones, &exclude, random)?;
    let mut next = current.to_vec();
    for (&p, r) in positions.iter().zip(replacements) {
        next[p] = r;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, zone: Option<&str>, state: BookieState) -> BookieRegistration {
        BookieRegistration {
            id: BookieId(id.into()),
            state,
            free_bytes: 0,
            used_bytes: 0,
            zone: zone.map(str::to_owned),
            version: String::new(),
        }
    }

    #[test]
    fn spreads_over_zones() {
        let regs: Vec<_> = ["a", "b", "c"]
            .iter()
            .flat_map(|z| {
                (0..3).map(move |i| reg(&format!("{z}{i}:1"), Some(z), BookieState::ReadWrite))
            })
            .collect();
        for _ in 0..50 {
            let chosen =
                choose_bookies(&regs, 3, &[], &HashSet::new(), &Random::from_seed(7)).unwrap();
            let mut zones: Vec<char> = chosen.iter().map(|b| b.0.chars().next().unwrap()).collect();
            zones.sort();
            assert_eq!(zones, vec!['a', 'b', 'c'], "{chosen:?}");
        }
        // A replacement goes to the zone the kept bookies do not cover.
        let kept = vec![Some("a".to_owned()), Some("b".to_owned())];
        for _ in 0..20 {
            let r =
                choose_bookies(&regs, 1, &kept, &HashSet::new(), &Random::from_seed(7)).unwrap();
            assert!(r[0].0.starts_with('c'), "{r:?}");
        }
    }

    #[test]
    fn skips_read_only_and_excluded_and_reports_shortage() {
        let regs = vec![
            reg("a:1", None, BookieState::ReadWrite),
            reg("b:1", None, BookieState::ReadOnly),
            reg("c:1", None, BookieState::ReadWrite),
        ];
        let exclude: HashSet<_> = [BookieId("c:1".into())].into();
        let chosen = choose_bookies(&regs, 1, &[], &exclude, &Random::from_seed(7)).unwrap();
        assert_eq!(chosen, vec![BookieId("a:1".into())]);
        match choose_bookies(&regs, 3, &[], &HashSet::new(), &Random::from_seed(7)) {
            Err(LedgerError::NotEnoughBookies { needed, available }) => {
                assert_eq!((needed, available), (3, 2))
            }
            other => panic!("{other:?}"),
        }
        let two = choose_bookies(&regs, 2, &[], &HashSet::new(), &Random::from_seed(7)).unwrap();
        assert_ne!(two[0], two[1]);
    }

    #[test]
    fn replace_failed_keeps_positions_and_picks_new_zones() {
        let regs: Vec<BookieRegistration> = [
            ("a", "z1"),
            ("b", "z2"),
            ("c", "z3"),
            ("d", "z1"),
            ("e", "z3"),
        ]
        .into_iter()
        .map(|(id, zone)| BookieRegistration {
            id: format!("{id}:1").parse().unwrap(),
            state: BookieState::ReadWrite,
            free_bytes: 1 << 30,
            used_bytes: 0,
            zone: Some(zone.into()),
            version: "t".into(),
        })
        .collect();
        let id = |s: &str| -> BookieId { format!("{s}:1").parse().unwrap() };
        let current = vec![id("a"), id("b"), id("c")];
        let failed: HashSet<BookieId> = [id("b")].into_iter().collect();
        for seed in 0..20 {
            let next = replace_failed(&regs, &current, &failed, &Random::from_seed(seed)).unwrap();
            assert_eq!(next.len(), 3);
            assert_eq!(
                (&next[0], &next[2]),
                (&id("a"), &id("c")),
                "kept bookies keep their places"
            );
            // Zones z1 and z3 are kept; the only other writable bookies are d (z1) and e (z3):
            // the replacement is one of them, never a kept or failed bookie.
            assert!(next[1] == id("d") || next[1] == id("e"), "{next:?}");
        }
        // Nothing failed: the same ensemble.
        let same = replace_failed(&regs, &current, &HashSet::new(), &Random::from_seed(1)).unwrap();
        assert_eq!(same, current);
        // The same seed, the same choice.
        let a = replace_failed(&regs, &current, &failed, &Random::from_seed(9)).unwrap();
        let b = replace_failed(&regs, &current, &failed, &Random::from_seed(9)).unwrap();
        assert_eq!(a, b);
    }
}
