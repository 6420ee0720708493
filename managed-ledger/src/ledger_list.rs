//! How a managed ledger's list of ledgers is stored, so that it has no size cliff.
//!
//! A metadata value holds at most 1 MiB (a few thousand [`LedgerInfo`]s), and a topic kept for
//! years rolls over far more often than that. So the list is split:
//!
//! - the **head** `/managed-ledgers/{name}` ([`StoredHead`]) holds the newest ledgers (at most
//!   [`HEAD_LEDGERS_MAX`]), the properties, and references to the chunks, in order;
//! - each **chunk** `/managed-ledgers/{name}/ledgers/{nonce}` ([`LedgerChunk`]) holds
//!   [`CHUNK_LEDGERS`] older, closed ledgers. A chunk is immutable: when its ledgers change
//!   (trimmed from the front, or their location changes), the head skips the trimmed ones
//!   ([`ChunkRef::skip`]) or refers to a rewritten copy under a new name.
//!
//! **CAS discipline.** The head is the only commit point, written with compare-and-set exactly
//! as the single record was; chunks are written (create-only, under fresh random names) *before*
//! the head that refers to them, and deleted only *after* a head that no longer refers to them
//! is stored. So every head a reader can see refers only to chunks that exist, a crash leaves at
//! worst unreferenced chunks (orphans), and a writer that lost the head CAS (a stale owner)
//! never changes anything the winner refers to. Orphans — from a crash between the two writes,
//! or a lost CAS — are deleted by the next owner once its own head CAS succeeded
//! ([`LedgerList::orphans`] of the chunks listed when it opened); from then on no writer holding
//! an older version can make a head refer to them.
//!
//! A missing or malformed chunk fails the open with an error naming the topic and the chunk: the
//! topic fails closed instead of serving a history with a hole.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::try_join_all;
use magnetar_metadata::crash_point;
use magnetar_metadata::{
    DeleteOutcome, Expected, LedgerId, MetadataError, MetadataStore, PutOutcome, Version,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{ManagedLedgerError, MlResult};
use crate::record::{LedgerInfo, LedgerRecordState, ManagedLedgerRecord, ROOT};

/// Ledgers per chunk: about 170 KiB of JSON, far below the 1 MiB value limit.
pub const CHUNK_LEDGERS: usize = 1000;
/// The head keeps at most this many ledgers inline; past it the oldest [`CHUNK_LEDGERS`] go to
/// a new chunk. With a chunk reference at ~120 bytes, the head stays below 1 MiB up to several
/// million ledgers.
pub const HEAD_LEDGERS_MAX: usize = 2 * CHUNK_LEDGERS;

pub fn chunks_prefix(name: &str) -> String {
    format!("{ROOT}/{name}/ledgers/")
}

fn chunk_key(name: &str, chunk: &str) -> String {
    format!("{}{chunk}", chunks_prefix(name))
}

/// A reference from the head to one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's name under `{name}/ledgers/`.
    pub chunk: String,
    pub first_ledger: LedgerId,
    pub last_ledger: LedgerId,
    /// Ledgers stored in the chunk.
    pub ledgers: usize,
    /// Leading ledgers of the chunk that were trimmed since it was written.
    #[serde(default)]
    pub skip: usize,
}

/// What the head key stores: a [`ManagedLedgerRecord`] whose `ledgers` are only the newest,
/// plus the chunks holding the older ones. A record written before chunks existed reads as a
/// head without chunks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHead {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    pub ledgers: Vec<LedgerInfo>,
    pub created_ms: u64,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerChunk {
    pub ledgers: Vec<LedgerInfo>,
}

#[derive(Clone, Debug)]
struct Chunk {
    r: ChunkRef,
    /// Every ledger the chunk stores (including the skipped ones).
    ledgers: Arc<[LedgerInfo]>,
}

impl Chunk {
    fn live(&self) -> &[LedgerInfo] {
        &self.ledgers[self.r.skip.min(self.ledgers.len())..]
    }
}

/// The stored form of one managed ledger's list: reads and writes whole
/// [`ManagedLedgerRecord`]s, splitting them into a head and chunks.
#[derive(Debug)]
pub(crate) struct LedgerList {
    store: Arc<dyn MetadataStore>,
    name: String,
    /// The chunks the stored head refers to, in order.
    chunks: Vec<Chunk>,
}

fn corrupt(name: &str, key: &str, reason: impl std::fmt::Display) -> ManagedLedgerError {
    ManagedLedgerError::from(MetadataError::Corrupt {
        key: key.to_owned(),
        reason: format!("ledger list of {name}: {reason}"),
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> MlResult<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| corrupt("", key, format!("cannot encode: {e}")))
}

impl LedgerList {
    pub fn new(store: Arc<dyn MetadataStore>, name: &str) -> Self {
        LedgerList {
            store,
            name: name.to_owned(),
            chunks: Vec::new(),
        }
    }

    fn head_key(&self) -> String {
        crate::record::ledger_record_key(&self.name)
    }

    /// The whole record and the head's version, reading every chunk the head refers to.
    pub async fn load(&mut self) -> MlResult<Option<(ManagedLedgerRecord, Version)>> {
        let key = self.head_key();
        let Some(v) = self.store.get(&key).await? else {
            self.chunks.clear();
            return Ok(None);
        };
        let head: StoredHead =
            serde_json::from_slice(&v.value).map_err(|e| corrupt(&self.name, &key, e))?;
        let chunks = try_join_all(head.chunks.iter().map(|r| self.read_chunk(r))).await?;
        let mut ledgers = Vec::with_capacity(
            chunks.iter().map(|c| c.live().len()).sum::<usize>() + head.ledgers.len(),
        );
        for c in &chunks {
            ledgers.extend_from_slice(c.live());
        }
        ledgers.extend(head.ledgers);
        if !ledgers.windows(2).all(|w| w[0].ledger_id < w[1].ledger_id) {
            return Err(corrupt(
                &self.name,
                &key,
                "ledgers are not in ascending order",
            ));
        }
        self.chunks = chunks;
        let record = ManagedLedgerRecord {
            ledgers,
            created_ms: head.created_ms,
            properties: head.properties,
        };
        Ok(Some((record, v.version)))
    }

    async fn read_chunk(&self, r: &ChunkRef) -> MlResult<Chunk> {
        let key = chunk_key(&self.name, &r.chunk);
        let v =
            self.store.get(&key).await?.ok_or_else(|| {
                corrupt(&self.name, &key, "a chunk the head refers to is missing")
            })?;
        let chunk: LedgerChunk =
            serde_json::from_slice(&v.value).map_err(|e| corrupt(&self.name, &key, e))?;
        let matches = chunk.ledgers.len() == r.ledgers
            && r.skip <= r.ledgers
            && chunk.ledgers.first().map(|l| l.ledger_id) == Some(r.first_ledger)
            && chunk.ledgers.last().map(|l| l.ledger_id) == Some(r.last_ledger);
        if !matches {
            return Err(corrupt(
                &self.name,
                &key,
                format!("the chunk does not hold what the head says ({r:?})"),
            ));
        }
        Ok(Chunk {
            r: r.clone(),
            ledgers: chunk.ledgers.into(),
        })
    }

    /// Writes `next` if the head is as `expected`: new chunks first, then the head with CAS,
    /// then (best effort) the chunks no longer referred to. A conflict is returned as data.
    pub async fn write(
        &mut self,
        next: &ManagedLedgerRecord,
        expected: Expected,
    ) -> MlResult<PutOutcome> {
        let (chunks, inline, fresh) = self.split(next);
        let mut written = Vec::new();
        for c in &fresh {
            match self.put_chunk(c).await {
                Ok(()) => written.push(c.r.chunk.clone()),
                Err(e) => {
                    self.delete_chunks(written.iter()).await;
                    return Err(e);
                }
            }
        }
        if !fresh.is_empty() {
            crash_point::reached(crash_point::LEDGER_LIST_CHUNKS_WRITTEN);
        }
        let head = StoredHead {
            chunks: chunks.iter().map(|c| c.r.clone()).collect(),
            ledgers: inline.to_vec(),
            created_ms: next.created_ms,
            properties: next.properties.clone(),
        };
        let key = self.head_key();
        let value = encode(&key, &head)?;
        let outcome = match self.store.put(&key, value, expected).await {
            Ok(o) => o,
            Err(e) => {
                // Indeterminate: the head may refer to the new chunks now. Keep them; if the
                // head did not change, the next owner deletes them as orphans.
                if !e.is_indeterminate() {
                    self.delete_chunks(written.iter()).await;
                }
                return Err(e.into());
            }
        };
        match outcome {
            PutOutcome::Written(_) => {
                crash_point::reached(crash_point::LEDGER_LIST_HEAD_WRITTEN);
                let keep: HashSet<&str> = chunks.iter().map(|c| c.r.chunk.as_str()).collect();
                let gone: Vec<String> = self
                    .chunks
                    .iter()
                    .filter(|c| !keep.contains(c.r.chunk.as_str()))
                    .map(|c| c.r.chunk.clone())
                    .collect();
                self.chunks = chunks;
                self.delete_chunks(gone.iter()).await;
            }
            PutOutcome::Conflict { .. } => self.delete_chunks(written.iter()).await,
        }
        Ok(outcome)
    }

    /// Deletes the chunks under this list's prefix that the stored head does not refer to.
    /// Call only as the owner, after a successful head write.
    #[cfg(test)]
    pub async fn delete_orphans(&self) -> MlResult<usize> {
        let listed = list_chunk_keys(&self.store, &self.name).await?;
        let orphans = self.orphans(&listed);
        let n = orphans.len();
        delete_chunk_keys(Arc::clone(&self.store), orphans).await;
        Ok(n)
    }

    /// The chunk keys among `listed` that the stored head does not refer to. Call only as the
    /// owner, after a successful head write; `listed` may come from before that write (an
    /// open lists them in its first round): a chunk written after the listing is one of ours
    /// (a fresh name) or an orphan of a writer our head fenced, which the next owner collects.
    pub fn orphans(&self, listed: &[String]) -> Vec<String> {
        let prefix = chunks_prefix(&self.name);
        let referred: HashSet<&str> = self.chunks.iter().map(|c| c.r.chunk.as_str()).collect();
        let orphans: Vec<String> = listed
            .iter()
            .filter(|k| {
                k.strip_prefix(&prefix)
                    .is_some_and(|c| !referred.contains(c))
            })
            .cloned()
            .collect();
        if !orphans.is_empty() {
            info!(ml = %self.name, orphans = orphans.len(), "deleting unreferenced ledger-list chunks");
        }
        orphans
    }

    /// Deletes the head and every chunk (the managed ledger is being deleted).
    pub async fn delete_all(&mut self) -> MlResult<()> {
        let _ = self.store.delete(&self.head_key(), Expected::Any).await?;
        for key in self.store.list_keys(&chunks_prefix(&self.name)).await? {
            let _ = self.store.delete(&key, Expected::Any).await?;
        }
        self.chunks.clear();
        Ok(())
    }

    /// Splits `next` into the chunks to refer to (kept as they are, with more skipped, or new)
    /// and the ledgers to keep inline; also returns the new chunks, which must be written.
    fn split<'a>(
        &self,
        next: &'a ManagedLedgerRecord,
    ) -> (Vec<Chunk>, &'a [LedgerInfo], Vec<Chunk>) {
        let all = &next.ledgers[..];
        let mut i = 0;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut fresh: Vec<Chunk> = Vec::new();
        for c in &self.chunks {
            let live = c.live();
            let rest = &all[i..];
            // Ledgers trimmed from the front of the list: the chunk's leading ones now absent.
            let gone = match rest.first() {
                Some(first) => live.partition_point(|l| l.ledger_id < first.ledger_id),
                None => live.len(),
            };
            let remaining = &live[gone..];
            if remaining.is_empty() {
                continue;
            }
            if rest.starts_with(remaining) {
                let mut kept = c.clone();
                kept.r.skip += gone;
                chunks.push(kept);
                i += remaining.len();
                continue;
            }
            // Changed inside: rewrite what of it is still listed, under a new name.
            let end = i + rest.partition_point(|l| l.ledger_id <= c.r.last_ledger);
            if end > i {
                let c = self.new_chunk(&all[i..end]);
                chunks.push(c.clone());
                fresh.push(c);
            }
            i = end;
        }
        let mut inline = &all[i..];
        while inline.len() > HEAD_LEDGERS_MAX
            && inline[..CHUNK_LEDGERS]
                .iter()
                .all(|l| l.state == LedgerRecordState::Closed)
        {
            let c = self.new_chunk(&inline[..CHUNK_LEDGERS]);
            chunks.push(c.clone());
            fresh.push(c);
            inline = &inline[CHUNK_LEDGERS..];
        }
        (chunks, inline, fresh)
    }

    fn new_chunk(&self, ledgers: &[LedgerInfo]) -> Chunk {
        let nonce = magnetar_metadata::clock::entropy().below(u64::MAX);
        Chunk {
            r: ChunkRef {
                chunk: format!("{nonce:016x}"),
                first_ledger: ledgers[0].ledger_id,
                last_ledger: ledgers[ledgers.len() - 1].ledger_id,
                ledgers: ledgers.len(),
                skip: 0,
            },
            ledgers: ledgers.into(),
        }
    }

    async fn put_chunk(&self, c: &Chunk) -> MlResult<()> {
        let key = chunk_key(&self.name, &c.r.chunk);
        let value = encode(
            &key,
            &LedgerChunk {
                ledgers: c.ledgers.to_vec(),
            },
        )?;
        match self.store.put(&key, value, Expected::Absent).await? {
            PutOutcome::Written(_) => Ok(()),
            PutOutcome::Conflict { .. } => Err(corrupt(
                &self.name,
                &key,
                "a chunk name drawn at random is taken",
            )),
        }
    }

    async fn delete_chunks(&self, chunks: impl Iterator<Item = &String>) {
        let keys = chunks.map(|c| chunk_key(&self.name, c)).collect();
        delete_chunk_keys(Arc::clone(&self.store), keys).await;
    }
}

/// The keys of every chunk stored under `name`'s prefix.
pub(crate) async fn list_chunk_keys(
    store: &Arc<dyn MetadataStore>,
    name: &str,
) -> MlResult<Vec<String>> {
    Ok(store.list_keys(&chunks_prefix(name)).await?)
}

/// Deletes chunks by key; one that cannot be deleted stays an orphan (logged).
pub(crate) async fn delete_chunk_keys(store: Arc<dyn MetadataStore>, keys: Vec<String>) {
    for key in keys {
        match store.delete(&key, Expected::Any).await {
            Ok(DeleteOutcome::Deleted | DeleteOutcome::NotFound) => {}
            Ok(other) => warn!(%key, ?other, "ledger-list chunk not deleted"),
            Err(e) => warn!(%key, error = %e, "ledger-list chunk not deleted; an orphan now"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use magnetar_metadata::MemoryStore;

    use super::*;
    use crate::record::LedgerLocation;

    const NAME: &str = "t/ns/persistent/long";

    fn closed(id: u64) -> LedgerInfo {
        LedgerInfo {
            ledger_id: LedgerId(id),
            entries: 10,
            size_bytes: 1000,
            created_ms: 1_700_000_000_000 + id,
            closed_ms: Some(1_700_000_000_500 + id),
            state: LedgerRecordState::Closed,
            location: LedgerLocation::Bookies,
            offload: None,
        }
    }

    fn record(ids: impl Iterator<Item = u64>) -> ManagedLedgerRecord {
        ManagedLedgerRecord {
            ledgers: ids.map(closed).collect(),
            created_ms: 1_700_000_000_000,
            properties: BTreeMap::new(),
        }
    }

    async fn chunk_keys(store: &Arc<dyn MetadataStore>) -> Vec<String> {
        let listing = store.list(&chunks_prefix(NAME)).await.unwrap();
        listing.entries.into_iter().map(|(k, _)| k).collect()
    }

    async fn written(list: &mut LedgerList, r: &ManagedLedgerRecord, e: Expected) -> Version {
        match list.write(r, e).await.unwrap() {
            PutOutcome::Written(v) => v,
            other => panic!("write refused: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_list_of_100000_ledgers_is_stored_in_chunks_and_read_back_whole() {
        let store: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
        let mut list = LedgerList::new(Arc::clone(&store), NAME);
        let mut r = record(1..=100_000);
        let mut v = written(&mut list, &r, Expected::Absent).await;
        let head = store
            .get(&crate::record::ledger_record_key(NAME))
            .await
            .unwrap()
            .unwrap();
        let stored: StoredHead = serde_json::from_slice(&head.value).unwrap();
        assert!(stored.ledgers.len() <= HEAD_LEDGERS_MAX);
        assert_eq!(
            stored.chunks.len(),
            (100_000 - stored.ledgers.len()) / CHUNK_LEDGERS
        );
        assert!(
            head.value.len() < 512 * 1024,
            "head is {} bytes",
            head.value.len()
        );
        assert_eq!(chunk_keys(&store).await.len(), stored.chunks.len());

        // Another reader (a new owner) sees the whole list.
        let mut other = LedgerList::new(Arc::clone(&store), NAME);
        assert_eq!(other.load().await.unwrap(), Some((r.clone(), v)));

        // Rollovers touch only the head until it overflows into one more chunk.
        let before = chunk_keys(&store).await;
        for id in 100_001..=100_000 + CHUNK_LEDGERS as u64 {
            r.ledgers.push(closed(id));
            v = written(&mut list, &r, Expected::Version(v)).await;
            let now = chunk_keys(&store).await.len();
            assert!(now == before.len() || now == before.len() + 1);
        }
        assert_eq!(list.load().await.unwrap(), Some((r.clone(), v)));

        // Trimming 1500 from the front: the first chunk goes, the second is skipped into.
        let first = chunk_key(NAME, &list.chunks[0].r.chunk);
        r.ledgers.drain(..1500);
        v = written(&mut list, &r, Expected::Version(v)).await;
        let keys = chunk_keys(&store).await;
        assert!(!keys.contains(&first), "a wholly trimmed chunk is deleted");
        assert_eq!(keys.len(), list.chunks.len());
        assert_eq!(list.chunks[0].r.skip, 500);
        assert_eq!(other.load().await.unwrap(), Some((r.clone(), v)));

        // A ledger changed inside a chunk: that chunk alone is rewritten under a new name.
        let old_keys = chunk_keys(&store).await;
        r.ledgers[40_000].size_bytes = 7;
        v = written(&mut list, &r, Expected::Version(v)).await;
        let new_keys = chunk_keys(&store).await;
        assert_eq!(new_keys.len(), old_keys.len());
        assert_eq!(
            new_keys.iter().filter(|k| !old_keys.contains(k)).count(),
            1,
            "exactly one chunk rewritten"
        );
        assert_eq!(other.load().await.unwrap(), Some((r, v)));
    }

    #[tokio::test]
    async fn a_stale_writer_loses_the_cas_and_leaves_nothing_the_winner_uses() {
        let store: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
        let mut a = LedgerList::new(Arc::clone(&store), NAME);
        let r = record(1..=3_000);
        let v = written(&mut a, &r, Expected::Absent).await;
        // b takes over (reads, then writes with its own CAS).
        let mut b = LedgerList::new(Arc::clone(&store), NAME);
        let (mut rb, vb) = b.load().await.unwrap().unwrap();
        rb.ledgers.extend((3_001..=4_500).map(closed));
        let vb = written(&mut b, &rb, Expected::Version(vb)).await;
        // a, stale, tries to write a list that needs new chunks too: refused, and its chunks
        // are gone again.
        let mut ra = r.clone();
        ra.ledgers.extend((5_000..=6_600).map(closed));
        let out = a.write(&ra, Expected::Version(v)).await.unwrap();
        assert!(matches!(out, PutOutcome::Conflict { .. }), "{out:?}");
        assert_eq!(chunk_keys(&store).await.len(), b.chunks.len());
        let mut reader = LedgerList::new(Arc::clone(&store), NAME);
        assert_eq!(reader.load().await.unwrap(), Some((rb, vb)));
    }

    #[tokio::test]
    async fn orphans_from_a_crash_are_deleted_and_a_missing_chunk_fails_the_load() {
        let store: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
        let mut list = LedgerList::new(Arc::clone(&store), NAME);
        let r = record(1..=2_500);
        written(&mut list, &r, Expected::Absent).await;
        // A crash between writing a chunk and the head that would refer to it.
        let orphan = format!("{}00000000deadbeef", chunks_prefix(NAME));
        let _ = store
            .put(
                &orphan,
                Bytes::from_static(b"{\"ledgers\":[]}"),
                Expected::Absent,
            )
            .await
            .unwrap();
        assert_eq!(list.delete_orphans().await.unwrap(), 1);
        assert!(store.get(&orphan).await.unwrap().is_none());
        assert_eq!(chunk_keys(&store).await.len(), list.chunks.len());

        // A chunk the head refers to is lost: the load names the topic and the chunk.
        let lost = chunk_keys(&store).await.remove(0);
        let _ = store.delete(&lost, Expected::Any).await.unwrap();
        let err = LedgerList::new(Arc::clone(&store), NAME)
            .load()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(NAME) && err.contains(&lost), "{err}");

        // Deleting the managed ledger removes the head and every chunk.
        list.delete_all().await.unwrap();
        assert!(chunk_keys(&store).await.is_empty());
        assert!(
            store
                .get(&crate::record::ledger_record_key(NAME))
                .await
                .unwrap()
                .is_none()
        );
    }
}
