//! [`DelayedTracker`]: the entries of one Shared or Key_Shared subscription that were read from
//! the cursor before their delivery time (`MessageMetadata.deliver_at_time`, ms since the
//! epoch, set by the client's `deliver_at` / `deliver_after`).
//!
//! Pulsar semantics carried over: only dispatchers of several consumers (Shared, Key_Shared)
//! hold messages back; Exclusive and Failover subscriptions (and readers) receive them at once.
//! A message whose time has passed when it is read is dispatched at once. The tracker lives in
//! memory only: a delayed entry is never acknowledged before it is delivered, so after a broker
//! restart the cursor reads it again from the mark-delete position and the tracker is rebuilt
//! (Pulsar's in-memory tracker behaves the same way). Delayed messages stay in the backlog.
//!
//! The tracker is ordered by (delivery time, position); due entries are handed back oldest time
//! first and the subscription dispatches them like redeliveries, skipping the ones acknowledged
//! meanwhile (so the ack path needs no hook; an acked entry holds its slot until its time). It holds at most
//! [`DELAYED_MAX`] entries (plus at most one read batch): when full, the subscription stops
//! reading new entries from the cursor until some become due — messages behind a full tracker
//! wait rather than the broker's memory growing without bound.

use std::collections::{BTreeSet, HashMap};

use magnetar_managed_ledger::Position;

/// Delayed entries kept per subscription before it stops reading ahead (about 40 bytes each).
pub const DELAYED_MAX: usize = 100_000;

/// Delayed entries of one subscription, by delivery time then position.
#[derive(Debug, Default)]
pub struct DelayedTracker {
    by_time: BTreeSet<(u64, Position)>,
    at_ms: HashMap<Position, u64>,
}

impl DelayedTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.at_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at_ms.is_empty()
    }

    /// True when the subscription must stop reading new entries.
    pub fn is_full(&self) -> bool {
        self.len() >= DELAYED_MAX
    }

    /// Keeps `position` until `deliver_at_ms` when that is later than `now_ms`; false when the
    /// entry is due already and must be dispatched now.
    pub fn add(&mut self, position: Position, deliver_at_ms: u64, now_ms: u64) -> bool {
        if deliver_at_ms <= now_ms {
            return false;
        }
        if let Some(old) = self.at_ms.insert(position, deliver_at_ms) {
            self.by_time.remove(&(old, position));
        }
        self.by_time.insert((deliver_at_ms, position));
        true
    }

    /// The earliest delivery time held.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.by_time.first().map(|&(at, _)| at)
    }

    /// Removes and returns the entries due at `now_ms`, earliest delivery time first.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<Position> {
        let mut due = Vec::new();
        while let Some(&(at, p)) = self.by_time.first() {
            if at > now_ms {
                break;
            }
            self.by_time.pop_first();
            self.at_ms.remove(&p);
            due.push(p);
        }
        due
    }

    /// Removes and returns every entry, by position (the subscription no longer delays).
    pub fn take_all(&mut self) -> Vec<Position> {
        self.by_time.clear();
        let mut all: Vec<Position> = self.at_ms.drain().map(|(p, _)| p).collect();
        all.sort();
        all
    }

    pub fn clear(&mut self) {
        self.by_time.clear();
        self.at_ms.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(e: u64) -> Position {
        Position::new(1, e)
    }

    #[test]
    fn due_entries_are_not_kept() {
        let mut t = DelayedTracker::new();
        assert!(!t.add(pos(0), 100, 100));
        assert!(!t.add(pos(1), 50, 100));
        assert!(t.is_empty());
        assert_eq!(t.next_deadline_ms(), None);
    }

    #[test]
    fn entries_come_back_by_time_then_position() {
        let mut t = DelayedTracker::new();
        assert!(t.add(pos(3), 300, 0));
        assert!(t.add(pos(1), 200, 0));
        assert!(t.add(pos(2), 200, 0));
        assert!(t.add(pos(0), 400, 0));
        assert_eq!(t.next_deadline_ms(), Some(200));
        assert_eq!(t.take_due(199), Vec::<Position>::new());
        assert_eq!(t.take_due(300), vec![pos(1), pos(2), pos(3)]);
        assert_eq!(t.next_deadline_ms(), Some(400));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn re_adding_moves_the_deadline() {
        let mut t = DelayedTracker::new();
        assert!(t.add(pos(0), 500, 0));
        assert!(t.add(pos(0), 100, 0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.take_due(100), vec![pos(0)]);
        assert_eq!(t.take_due(500), Vec::<Position>::new());
    }

    #[test]
    fn full_at_the_bound_and_take_all_empties() {
        let mut t = DelayedTracker::new();
        for e in 0..DELAYED_MAX as u64 {
            t.add(pos(e), 10 + e, 0);
        }
        assert!(t.is_full());
        let all = t.take_all();
        assert_eq!(all.len(), DELAYED_MAX);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(t.is_empty() && !t.is_full());
    }
}
