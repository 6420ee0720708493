//! Batch-index acknowledgements (Pulsar's PIP-54): for an entry holding a batch of which only
//! some messages are acknowledged, the batch indexes still **un**acknowledged.
//!
//! A set is kept as the words of Java's `BitSet.toLongArray()`, exactly as it travels in
//! `CommandAck.message_id.ack_set` and `CommandMessage.ack_set`: little-endian words, bit `i` of
//! word `w` is batch index `64·w + i`, and a set bit means "not acknowledged yet". An all-clear
//! set means the whole entry is acknowledged; the cursor then records the entry in its acked
//! ranges and drops the set.
//!
//! Acknowledgements only ever remove indexes: a new set is intersected with the stored one
//! (Pulsar's `batchDeletedIndexes` AND). Clients that received a partially acknowledged batch
//! rebuild their own set from the batch size, so the set they send still has the indexes the
//! broker skipped; the intersection keeps those acknowledged.
//!
//! Bounded: at most [`ENTRIES_MAX`] entries and [`WORDS_MAX`] words in all, so the cursor record
//! that persists them stays far below the metadata store's 1 MiB value limit. A partial ack that
//! would exceed a bound is not recorded: the entry stays wholly unacknowledged and is delivered
//! again whole — a duplicate, never a loss.

use std::collections::BTreeMap;

use magnetar_metadata::{EntryId, LedgerId};
use serde::{Deserialize, Serialize};

use crate::Position;

/// Entries with a partially acknowledged batch, at most.
pub const ENTRIES_MAX: usize = 2048;
/// Words (64 batch indexes each) over all entries, at most: worst case about 170 KiB of JSON.
pub const WORDS_MAX: usize = 8192;
/// Words of one entry's set, at most (65,536 messages in a batch).
pub const WORDS_PER_ENTRY_MAX: usize = 1024;

/// One entry's set as stored in the cursor record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAckRecord {
    pub ledger: LedgerId,
    pub entry: u64,
    /// `BitSet.toLongArray()` words (as unsigned); set bits are the unacknowledged indexes.
    pub unacked: Vec<u64>,
}

/// What an acknowledgement did to an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchAckOutcome {
    /// Some indexes are still unacknowledged.
    Partial,
    /// No index is left: the entry is acknowledged whole (its set is dropped).
    Whole,
    /// Over a bound: nothing was recorded.
    Ignored,
}

/// The partially acknowledged entries of one cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchAcks {
    sets: BTreeMap<Position, Vec<u64>>,
    /// Sum of the sets' lengths.
    words: usize,
}

/// `words` without trailing zero words (empty: nothing unacknowledged).
fn trimmed(mut words: Vec<u64>) -> Vec<u64> {
    while words.last() == Some(&0) {
        words.pop();
    }
    words
}

impl BatchAcks {
    /// The entry's unacknowledged indexes, if only part of it is acknowledged.
    pub fn get(&self, pos: Position) -> Option<&[u64]> {
        self.sets.get(&pos).map(Vec::as_slice)
    }

    /// Acknowledges the indexes that are clear in `unacked`: the entry's set becomes its
    /// intersection with `unacked` (or `unacked` itself when the entry had none).
    pub fn intersect(&mut self, pos: Position, unacked: &[u64]) -> BatchAckOutcome {
        let next = match self.sets.get(&pos) {
            Some(old) => trimmed(
                old.iter()
                    .enumerate()
                    .map(|(i, w)| w & unacked.get(i).copied().unwrap_or(0))
                    .collect(),
            ),
            None => {
                let new = trimmed(unacked.to_vec());
                if !new.is_empty()
                    && (new.len() > WORDS_PER_ENTRY_MAX
                        || self.sets.len() >= ENTRIES_MAX
                        || self.words + new.len() > WORDS_MAX)
                {
                    return BatchAckOutcome::Ignored;
                }
                new
            }
        };
        self.remove(pos);
        if next.is_empty() {
            return BatchAckOutcome::Whole;
        }
        self.words += next.len();
        self.sets.insert(pos, next);
        BatchAckOutcome::Partial
    }

    /// Forgets the entry's set (the entry was acknowledged whole).
    pub fn remove(&mut self, pos: Position) {
        if let Some(old) = self.sets.remove(&pos) {
            self.words -= old.len();
        }
    }

    /// Forgets the sets of entries below `floor` (acknowledged by the mark-delete position).
    pub fn remove_below(&mut self, floor: Position) {
        let keep = self.sets.split_off(&floor);
        let dropped = std::mem::replace(&mut self.sets, keep);
        self.words -= dropped.values().map(Vec::len).sum::<usize>();
    }

    pub fn clear(&mut self) {
        self.sets.clear();
        self.words = 0;
    }

    pub fn to_records(&self) -> Vec<BatchAckRecord> {
        self.sets
            .iter()
            .map(|(p, unacked)| BatchAckRecord {
                ledger: p.ledger,
                entry: p.entry.0,
                unacked: unacked.clone(),
            })
            .collect()
    }

    /// Restores stored sets, keeping the bounds (a record written by a build with larger bounds
    /// loses the excess: those entries are delivered again whole).
    pub fn from_records(records: &[BatchAckRecord]) -> Self {
        let mut acks = BatchAcks::default();
        for r in records {
            let pos = Position {
                ledger: r.ledger,
                entry: EntryId(r.entry),
            };
            acks.intersect(pos, &r.unacked);
        }
        acks
    }
}

/// Messages of an entry still to deliver: the unacknowledged indexes below `batch_size` when
/// the entry is partially acknowledged, else the whole batch (at least 1).
pub fn messages_to_deliver(unacked: Option<&[u64]>, batch_size: u32) -> u32 {
    let Some(words) = unacked else {
        return batch_size.max(1);
    };
    let mut n = 0u32;
    for (i, w) in words.iter().enumerate() {
        let first = (i as u64) * 64;
        if first >= u64::from(batch_size) {
            break;
        }
        let below = u64::from(batch_size) - first;
        let mask = if below >= 64 {
            u64::MAX
        } else {
            (1u64 << below) - 1
        };
        n += (w & mask).count_ones();
    }
    n.max(1)
}

/// Wire words (`repeated int64`) → stored words.
pub fn from_wire(words: &[i64]) -> Vec<u64> {
    words.iter().map(|w| *w as u64).collect()
}

/// Stored words → wire words (`repeated int64`).
pub fn to_wire(words: &[u64]) -> Vec<i64> {
    words.iter().map(|w| *w as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(indexes: &[u32]) -> Vec<u64> {
        let mut w = vec![0u64; 2];
        for &i in indexes {
            w[(i / 64) as usize] |= 1 << (i % 64);
        }
        trimmed(w)
    }

    #[test]
    fn managed_ledger_batch_acks_intersect_until_whole() {
        let mut a = BatchAcks::default();
        let p = Position::new(3, 7);
        // Client acks index 2 of a batch of 5: {0,1,3,4} remain.
        assert_eq!(
            a.intersect(p, &bits(&[0, 1, 3, 4])),
            BatchAckOutcome::Partial
        );
        assert_eq!(a.get(p), Some(bits(&[0, 1, 3, 4]).as_slice()));
        // A second consumer's set still has 2 (it rebuilt its set from the batch size).
        assert_eq!(
            a.intersect(p, &bits(&[0, 1, 2, 3])),
            BatchAckOutcome::Partial
        );
        assert_eq!(a.get(p), Some(bits(&[0, 1, 3]).as_slice()));
        assert_eq!(messages_to_deliver(a.get(p), 5), 3);
        assert_eq!(a.intersect(p, &bits(&[2, 4])), BatchAckOutcome::Whole);
        assert_eq!(a.get(p), None);
        assert!(a.sets.is_empty());
        assert_eq!(a.words, 0);
    }

    #[test]
    fn managed_ledger_batch_acks_bounded_trimmed_and_restored() {
        let mut a = BatchAcks::default();
        for e in 0..ENTRIES_MAX as u64 {
            assert_eq!(
                a.intersect(Position::new(1, e), &[0b10]),
                BatchAckOutcome::Partial
            );
        }
        let over = Position::new(2, 0);
        assert_eq!(a.intersect(over, &[0b10]), BatchAckOutcome::Ignored);
        assert_eq!(a.get(over), None);
        // Shrinking an existing set is always allowed.
        assert_eq!(
            a.intersect(Position::new(1, 5), &[0]),
            BatchAckOutcome::Whole
        );
        a.remove_below(Position::new(1, 100));
        assert_eq!(a.sets.len(), ENTRIES_MAX - 100);
        assert_eq!(a.words, ENTRIES_MAX - 100);
        assert_eq!(BatchAcks::from_records(&a.to_records()), a);
        // Trailing zero words are dropped; words beyond the batch size are not counted.
        let mut b = BatchAcks::default();
        b.intersect(over, &[0b1, 0, 0]);
        assert_eq!(b.get(over), Some([1u64].as_slice()));
        assert_eq!(messages_to_deliver(Some(&[u64::MAX, u64::MAX]), 70), 70);
        assert_eq!(messages_to_deliver(None, 0), 1);
        assert_eq!(from_wire(&to_wire(&[u64::MAX, 5])), vec![u64::MAX, 5]);
        // Too long a set for one entry is not recorded.
        let long = vec![1u64; WORDS_PER_ENTRY_MAX + 1];
        assert_eq!(
            BatchAcks::default().intersect(over, &long),
            BatchAckOutcome::Ignored
        );
    }
}
