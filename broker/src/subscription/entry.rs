//! What the dispatcher reads from a stored entry's metadata: message count, publish time, key
//! hash, delivery time and chunk fields — parsed once per entry.

use magnetar_managed_ledger::MlResult;

use super::*;

/// What the dispatcher needs from an entry's metadata.
#[derive(Debug, Clone, Copy)]
pub struct EntryInfo {
    /// Messages in the entry (`num_messages_in_batch`, 1 when absent or unreadable).
    pub messages: u32,
    pub publish_time: u64,
    /// Murmur3 hash of the ordering key, else the partition key, else of no key.
    pub key_hash: u32,
    /// `deliver_at_time`: not to be delivered before (ms since the epoch; Shared / Key_Shared).
    pub deliver_at_ms: Option<u64>,
    /// A chunk of a chunked message: its message, chunk id and chunk count.
    pub chunk: Option<ChunkMeta>,
}

/// Reads an entry's metadata; an unreadable entry counts as one message published at 0.
pub fn entry_info(entry: &Bytes) -> EntryInfo {
    match Payload::parse(entry.clone()).and_then(|p| p.metadata()) {
        Ok(m) => {
            let key: &[u8] = match (&m.ordering_key, &m.partition_key) {
                (Some(k), _) if !k.is_empty() => k,
                (_, Some(k)) => k.as_bytes(),
                _ => NO_KEY,
            };
            EntryInfo {
                messages: u32::try_from(m.num_messages_in_batch.unwrap_or(1)).unwrap_or(1),
                publish_time: m.publish_time,
                key_hash: key_hash(key),
                deliver_at_ms: m.deliver_at_time.and_then(|t| u64::try_from(t).ok()),
                chunk: ChunkMeta::from_metadata(
                    &m.producer_name,
                    m.uuid.as_deref(),
                    m.chunk_id,
                    m.num_chunks_from_msg,
                ),
            }
        }
        Err(_) => EntryInfo {
            messages: 1,
            publish_time: 0,
            key_hash: key_hash(NO_KEY),
            deliver_at_ms: None,
            chunk: None,
        },
    }
}

/// The key of entries without one (Pulsar's `NONE_KEY`).
const NO_KEY: &[u8] = b"NONE_KEY";

fn key_hash(key: &[u8]) -> u32 {
    crate::subscription::key_shared::murmur3_32(key)
}

/// The first stored entry published at or after `ts`, or the position after the last entry
/// when none is: a binary search over entry indexes, as Pulsar's message finder (publish times
/// grow with positions). An unreadable entry counts as published at 0. The one search by
/// publish time, for SEEK and for the admin API's reset-cursor alike.
pub async fn find_by_publish_time(ml: &ManagedLedger, ts: u64) -> MlResult<Position> {
    let ledgers: Vec<(u64, u64)> = ml
        .ledgers()
        .iter()
        .filter(|l| l.entries > 0)
        .map(|l| (l.ledger_id.0, l.entries))
        .collect();
    let total: u64 = ledgers.iter().map(|(_, n)| n).sum();
    let (mut lo, mut hi) = (0u64, total);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let Some(p) = position_at(&ledgers, mid) else {
            break;
        };
        let published = ml
            .read_entries(p, 1, READ_BYTES_MAX)
            .await?
            .first()
            .map_or(0, |(_, entry)| entry_info(entry).publish_time);
        if published >= ts {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(position_at(&ledgers, lo).unwrap_or_else(|| {
        ml.last_confirmed()
            .map_or(Position::new(0, 0), |p| p.next())
    }))
}

/// Entry index `i` (0-based over the stored ledgers) as a position.
fn position_at(ledgers: &[(u64, u64)], mut i: u64) -> Option<Position> {
    for &(id, entries) in ledgers {
        if i < entries {
            return Some(Position::new(id, i));
        }
        i -= entries;
    }
    None
}
