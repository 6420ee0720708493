//! [`ChunkAssignor`]: keeps the chunks of one chunked message together on a Shared
//! subscription (PIP-37 for Shared, as Pulsar's `SharedConsumerAssignor`).
//!
//! The client splits a message larger than the max message size into chunks, each stored and
//! dispatched as its own entry; every chunk carries the message's `uuid`, `chunk_id` and
//! `num_chunks_from_msg`. The consumer reassembles them, so all chunks of one message must reach
//! the same consumer, whereas the Shared dispatcher would spread them round-robin. This module
//! owns the mapping message → consumer:
//!
//! - chunk 0 of an unmapped message goes wherever round-robin sends it, and that consumer
//!   becomes the message's owner ([`ChunkAssignor::delivered`]);
//! - later chunks go to the owner ([`ChunkAssignor::route`]); when the owner has no permits the
//!   chunk waits in the subscription's redelivery set ([`ChunkAssignor::park`]) without blocking
//!   other messages, and since redeliveries are dispatched oldest first the chunks of one message
//!   still arrive in order;
//! - the mapping is dropped after the last chunk is delivered, when its owner leaves (its
//!   unacknowledged chunks, chunk 0 included, are redelivered oldest first, so chunk 0 seeds a
//!   new owner and the rest follow it) and on SEEK ([`ChunkAssignor::clear`]);
//! - a later chunk of an unmapped message (its chunk 0 already acknowledged, or the mapping lost
//!   to a restart or to the bound below) can never be reassembled: it goes round-robin like any
//!   entry so the subscription never stalls, and the client discards the incomplete message
//!   (Pulsar PR #26396).
//!
//! **Bound**: at most [`MAPPINGS_MAX`] messages mapped per subscription. Beyond it, mappings whose
//! chunk 0 is acknowledged are pruned, then the oldest (by chunk 0's position) is evicted; the
//! rest of an evicted message is delivered as orphan chunks. A mapping outlives its message only
//! when its last chunk is never delivered (a producer that died mid-message, a partial
//! redelivery), which is what the bound is for. Parked positions are at most the subscription's
//! redelivery set (pruned against it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use tracing::warn;

use magnetar_managed_ledger::Position;

/// Chunked messages mapped to a consumer per subscription, at most.
pub const MAPPINGS_MAX: usize = 10_000;
/// Parked positions tolerated beyond twice the redelivery set before pruning.
const PARKED_SLACK: usize = 1024;

/// The chunk fields of an entry's `MessageMetadata` (uuid 26, num_chunks_from_msg 27,
/// chunk_id 29).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Identity of the chunked message: a hash of the producer name and the uuid (the client
    /// builds the uuid from both already; hashing keeps [`crate::subscription::EntryInfo`]
    /// `Copy`, and a 64-bit collision would at worst send two messages to one consumer).
    pub message: u64,
    pub chunk_id: u32,
    pub num_chunks: u32,
}

impl ChunkMeta {
    /// The chunk fields, when all three are present and sane.
    pub fn from_metadata(
        producer_name: &str,
        uuid: Option<&str>,
        chunk_id: Option<i32>,
        num_chunks: Option<i32>,
    ) -> Option<Self> {
        let uuid = uuid?;
        let chunk_id = u32::try_from(chunk_id?).ok()?;
        let num_chunks = u32::try_from(num_chunks?).ok()?;
        if chunk_id >= num_chunks {
            return None;
        }
        let mut h = DefaultHasher::new();
        producer_name.hash(&mut h);
        uuid.hash(&mut h);
        Some(ChunkMeta {
            message: h.finish(),
            chunk_id,
            num_chunks,
        })
    }

    fn is_last(&self) -> bool {
        self.chunk_id + 1 >= self.num_chunks
    }
}

/// Where a chunk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Round-robin, as any entry (chunk 0 of a new message, or an orphan chunk).
    Any,
    /// To this consumer (key), the owner of the message.
    Owner(u64),
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    owner: u64,
    first: Position,
}

/// Message → consumer mapping of one Shared subscription.
#[derive(Debug)]
pub struct ChunkAssignor {
    max: usize,
    by_message: HashMap<u64, Mapping>,
    /// Chunk 0's position → message, to evict the oldest and prune acknowledged ones.
    by_first: BTreeMap<Position, u64>,
    /// Chunks waiting in the redelivery set for their owner's permits.
    parked: HashMap<Position, u64>,
}

impl Default for ChunkAssignor {
    fn default() -> Self {
        Self::new(MAPPINGS_MAX)
    }
}

impl ChunkAssignor {
    pub fn new(max: usize) -> Self {
        ChunkAssignor {
            max: max.max(1),
            by_message: HashMap::new(),
            by_first: BTreeMap::new(),
            parked: HashMap::new(),
        }
    }

    /// Where the chunk at `position` goes now.
    pub fn route(&self, chunk: &ChunkMeta, position: Position) -> Route {
        if let Some(m) = self.by_message.get(&chunk.message) {
            return Route::Owner(m.owner);
        }
        if chunk.chunk_id > 0 {
            warn!(%position, chunk_id = chunk.chunk_id, num_chunks = chunk.num_chunks,
                "chunk of a message whose first chunk is acknowledged or unmapped: delivered \
                 to any consumer, which discards the incomplete message");
        }
        Route::Any
    }

    /// The chunk at `position` was sent to `consumer`: chunk 0 makes it the owner, the last
    /// chunk ends the mapping. `is_acked` tells the bound which mappings are finished.
    pub fn delivered(
        &mut self,
        chunk: &ChunkMeta,
        position: Position,
        consumer: u64,
        is_acked: impl Fn(Position) -> bool,
    ) {
        if chunk.is_last() {
            self.forget(chunk.message);
            return;
        }
        if chunk.chunk_id != 0 || self.by_message.contains_key(&chunk.message) {
            return;
        }
        if self.by_message.len() >= self.max {
            self.make_room(is_acked);
        }
        self.by_message.insert(
            chunk.message,
            Mapping {
                owner: consumer,
                first: position,
            },
        );
        self.by_first.insert(position, chunk.message);
    }

    /// The chunk at `position` waits in the redelivery set for its owner's permits.
    /// `redeliver` is the subscription's redelivery set: positions that left it without passing
    /// through [`unpark`](Self::unpark) (acknowledged meanwhile) are pruned against it once the
    /// parked map outgrows it, so parked positions stay within 2 × its size + 1,024.
    pub fn park(&mut self, position: Position, chunk: &ChunkMeta, redeliver: &BTreeSet<Position>) {
        if self.parked.len() >= redeliver.len().saturating_mul(2) + PARKED_SLACK {
            self.parked.retain(|p, _| redeliver.contains(p));
        }
        self.parked.insert(position, chunk.message);
    }

    /// The owner a parked position waits for (None: not parked, or its mapping is gone and it
    /// is to be routed again).
    pub fn parked_owner(&self, position: Position) -> Option<u64> {
        let message = self.parked.get(&position)?;
        self.by_message.get(message).map(|m| m.owner)
    }

    /// The position left the redelivery set (read for dispatch).
    pub fn unpark(&mut self, position: Position) {
        self.parked.remove(&position);
    }

    /// The consumer left: its messages lose their owner. Their unacknowledged chunks are
    /// redelivered oldest first, so each chunk 0 seeds a new owner for the chunks after it.
    pub fn remove_consumer(&mut self, consumer: u64) {
        let gone: Vec<u64> = self
            .by_message
            .iter()
            .filter(|(_, m)| m.owner == consumer)
            .map(|(k, _)| *k)
            .collect();
        for message in gone {
            self.forget(message);
        }
    }

    /// SEEK: every mapping and parked chunk is dropped (entries are read again).
    pub fn clear(&mut self) {
        self.by_message.clear();
        self.by_first.clear();
        self.parked.clear();
    }

    /// Messages mapped now.
    pub fn len(&self) -> usize {
        self.by_message.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_message.is_empty()
    }

    fn forget(&mut self, message: u64) {
        if let Some(m) = self.by_message.remove(&message) {
            self.by_first.remove(&m.first);
        }
    }

    fn make_room(&mut self, is_acked: impl Fn(Position) -> bool) {
        let done: Vec<u64> = self
            .by_first
            .iter()
            .filter(|(p, _)| is_acked(**p))
            .map(|(_, m)| *m)
            .collect();
        for message in done {
            self.forget(message);
        }
        while self.by_message.len() >= self.max {
            let Some((first, message)) = self.by_first.pop_first() else {
                break;
            };
            warn!(position = %first, max = self.max,
                "chunked-message mappings full: the oldest is dropped, its later chunks go to \
                 any consumer");
            self.by_message.remove(&message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(e: u64) -> Position {
        Position::new(1, e)
    }

    fn chunk(uuid: &str, id: i32, n: i32) -> ChunkMeta {
        ChunkMeta::from_metadata("p", Some(uuid), Some(id), Some(n)).unwrap()
    }

    const NONE_ACKED: fn(Position) -> bool = |_| false;

    #[test]
    fn metadata_without_all_fields_or_out_of_range_is_not_a_chunk() {
        assert!(ChunkMeta::from_metadata("p", None, Some(0), Some(2)).is_none());
        assert!(ChunkMeta::from_metadata("p", Some("u"), None, Some(2)).is_none());
        assert!(ChunkMeta::from_metadata("p", Some("u"), Some(0), None).is_none());
        assert!(ChunkMeta::from_metadata("p", Some("u"), Some(2), Some(2)).is_none());
        assert!(ChunkMeta::from_metadata("p", Some("u"), Some(-1), Some(2)).is_none());
        // The producer is part of the identity.
        let a = ChunkMeta::from_metadata("a", Some("u"), Some(0), Some(2)).unwrap();
        let b = ChunkMeta::from_metadata("b", Some("u"), Some(0), Some(2)).unwrap();
        assert_ne!(a.message, b.message);
    }

    #[test]
    fn chunks_follow_chunk_zero_until_the_last() {
        let mut a = ChunkAssignor::default();
        let c0 = chunk("m", 0, 3);
        assert_eq!(a.route(&c0, pos(0)), Route::Any);
        a.delivered(&c0, pos(0), 7, NONE_ACKED);
        let c1 = chunk("m", 1, 3);
        assert_eq!(a.route(&c1, pos(1)), Route::Owner(7));
        a.delivered(&c1, pos(1), 7, NONE_ACKED);
        let c2 = chunk("m", 2, 3);
        assert_eq!(a.route(&c2, pos(2)), Route::Owner(7));
        a.delivered(&c2, pos(2), 7, NONE_ACKED);
        assert!(a.is_empty(), "the last chunk ends the mapping");
    }

    #[test]
    fn interleaved_messages_keep_their_own_owners() {
        let mut a = ChunkAssignor::default();
        a.delivered(&chunk("x", 0, 2), pos(0), 1, NONE_ACKED);
        a.delivered(&chunk("y", 0, 2), pos(1), 2, NONE_ACKED);
        assert_eq!(a.route(&chunk("x", 1, 2), pos(2)), Route::Owner(1));
        assert_eq!(a.route(&chunk("y", 1, 2), pos(3)), Route::Owner(2));
    }

    #[test]
    fn a_single_chunk_message_maps_nothing() {
        let mut a = ChunkAssignor::default();
        a.delivered(&chunk("s", 0, 1), pos(0), 1, NONE_ACKED);
        assert!(a.is_empty());
    }

    #[test]
    fn an_orphan_chunk_goes_to_any_consumer() {
        let a = ChunkAssignor::default();
        assert_eq!(a.route(&chunk("o", 2, 3), pos(5)), Route::Any);
    }

    #[test]
    fn a_leaving_owner_frees_its_messages_and_chunk_zero_reseeds() {
        let mut a = ChunkAssignor::default();
        a.delivered(&chunk("m", 0, 3), pos(0), 1, NONE_ACKED);
        a.delivered(&chunk("n", 0, 3), pos(1), 2, NONE_ACKED);
        a.park(pos(3), &chunk("m", 1, 3), &BTreeSet::from([pos(3)]));
        assert_eq!(a.parked_owner(pos(3)), Some(1));
        a.remove_consumer(1);
        assert_eq!(a.route(&chunk("m", 1, 3), pos(3)), Route::Any);
        assert_eq!(
            a.parked_owner(pos(3)),
            None,
            "no longer waits for the gone owner"
        );
        assert_eq!(a.route(&chunk("n", 1, 3), pos(4)), Route::Owner(2));
        // Chunk 0 redelivered first: the next consumer becomes the owner.
        a.delivered(&chunk("m", 0, 3), pos(0), 2, NONE_ACKED);
        assert_eq!(a.route(&chunk("m", 1, 3), pos(3)), Route::Owner(2));
    }

    #[test]
    fn parked_chunks_are_released_by_unpark_and_clear() {
        let mut a = ChunkAssignor::default();
        a.delivered(&chunk("m", 0, 3), pos(0), 1, NONE_ACKED);
        let redeliver = BTreeSet::from([pos(1), pos(2)]);
        a.park(pos(1), &chunk("m", 1, 3), &redeliver);
        a.park(pos(2), &chunk("m", 2, 3), &redeliver);
        a.unpark(pos(1));
        assert_eq!(a.parked_owner(pos(1)), None);
        assert_eq!(a.parked_owner(pos(2)), Some(1));
        a.clear();
        assert!(a.is_empty());
        assert_eq!(a.parked_owner(pos(2)), None);
    }

    #[test]
    fn the_bound_prunes_acknowledged_then_evicts_the_oldest() {
        let mut a = ChunkAssignor::new(2);
        a.delivered(&chunk("a", 0, 2), pos(0), 1, NONE_ACKED);
        a.delivered(&chunk("b", 0, 2), pos(1), 1, NONE_ACKED);
        // "b"'s chunk 0 is acknowledged: it goes first, "a" stays.
        a.delivered(&chunk("c", 0, 2), pos(2), 1, |p| p == pos(1));
        assert_eq!(a.len(), 2);
        assert_eq!(a.route(&chunk("a", 1, 2), pos(9)), Route::Owner(1));
        assert_eq!(a.route(&chunk("b", 1, 2), pos(9)), Route::Any);
        // Nothing acknowledged: the oldest ("a") is evicted.
        a.delivered(&chunk("d", 0, 2), pos(3), 2, NONE_ACKED);
        assert_eq!(a.len(), 2);
        assert_eq!(a.route(&chunk("a", 1, 2), pos(9)), Route::Any);
        assert_eq!(a.route(&chunk("c", 1, 2), pos(9)), Route::Owner(1));
        assert_eq!(a.route(&chunk("d", 1, 2), pos(9)), Route::Owner(2));
    }

    #[test]
    fn parked_positions_stay_bounded_by_the_redelivery_set() {
        let mut a = ChunkAssignor::default();
        a.delivered(&chunk("m", 0, 100_000), pos(0), 1, NONE_ACKED);
        // Parked positions later acknowledged (gone from the redelivery set, never unparked).
        let redeliver = BTreeSet::from([pos(1)]);
        for e in 1..5000u64 {
            a.park(pos(e), &chunk("m", e as i32, 100_000), &redeliver);
        }
        assert!(a.parked.len() <= 2 + PARKED_SLACK, "{}", a.parked.len());
        assert_eq!(
            a.parked_owner(pos(1)),
            Some(1),
            "a position still waiting is kept"
        );
    }
}
