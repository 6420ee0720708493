//! Ledger metadata: the record at `/ledgers/{id}` (JSON, written with compare-and-set) that says
//! how a ledger is striped (E, Qw, Qa), which bookies hold which entries (ensembles by first
//! entry), and whether it is open, being recovered, or closed with a known last entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use magnetar_metadata::{
    Expected, IdAllocator, LedgerId, MetadataStore, PutOutcome, RecordStore, Version,
};
use serde::{Deserialize, Serialize};

use super::error::{LedgerError, LedgerResult};
use crate::api::{BookieId, NO_ENTRY};

/// Where ledger metadata lives: `/ledgers/{id}`.
pub const LEDGERS_PREFIX: &str = "/ledgers/";
/// The counter ledger ids are allocated from.
pub const LEDGER_ID_KEY: &str = "/ids/ledger";

pub fn ledger_key(id: LedgerId) -> String {
    format!("{LEDGERS_PREFIX}{id}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    /// A writer may be adding to it.
    Open,
    /// A client is fencing and closing it; the writer, if alive, is being cut off.
    InRecovery,
    /// Sealed: `last_entry_id` and `length_bytes` are final.
    Closed,
}

/// The bookies holding entries from `first_entry` up to the next segment's first entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnsembleSegment {
    pub first_entry: u64,
    pub bookies: Vec<BookieId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerMetadata {
    pub ensemble_size: u32,
    pub write_quorum: u32,
    pub ack_quorum: u32,
    pub state: LedgerState,
    /// The last entry of a closed ledger (-1: empty); -1 while open.
    pub last_entry_id: i64,
    /// Sum of the payload sizes of entries 0..=last_entry_id, once closed.
    pub length_bytes: u64,
    /// Sorted by `first_entry`; the first starts at 0; each has `ensemble_size` distinct bookies.
    pub ensembles: Vec<EnsembleSegment>,
    pub created_ms: u64,
    #[serde(default)]
    pub custom: BTreeMap<String, String>,
}

/// Checks E ≥ Qw ≥ Qa ≥ 1.
pub fn validate_quorums(ensemble: u32, write: u32, ack: u32) -> LedgerResult<()> {
    if ack >= 1 && write >= ack && ensemble >= write {
        Ok(())
    } else {
        Err(LedgerError::InvalidConfig(format!(
            "need ensemble ≥ write quorum ≥ ack quorum ≥ 1, got E={ensemble} Qw={write} Qa={ack}"
        )))
    }
}

/// Ensemble positions of entry `entry`'s write set: (entry + i) mod E for i < Qw.
pub fn write_set(entry: u64, ensemble_size: u32, write_quorum: u32) -> Vec<usize> {
    let e = u64::from(ensemble_size.max(1));
    (0..u64::from(write_quorum))
        .map(|i| ((entry + i) % e) as usize)
        .collect()
}

impl LedgerMetadata {
    /// Checks the invariants a reader relies on, so bad records fail clearly, not with a panic.
    pub fn validate(&self, ledger: LedgerId) -> LedgerResult<()> {
        validate_quorums(self.ensemble_size, self.write_quorum, self.ack_quorum)?;
        let bad = |reason: String| LedgerError::BadMetadata { ledger, reason };
        let Some(first) = self.ensembles.first() else {
            return Err(bad("no ensembles".into()));
        };
        if first.first_entry != 0 {
            return Err(bad("first ensemble does not start at entry 0".into()));
        }
        for pair in self.ensembles.windows(2) {
            if pair[0].first_entry >= pair[1].first_entry {
                return Err(bad("ensembles not sorted by first entry".into()));
            }
        }
        for seg in &self.ensembles {
            let mut ids: Vec<&BookieId> = seg.bookies.iter().collect();
            ids.sort();
            ids.dedup();
            if seg.bookies.len() != self.ensemble_size as usize || ids.len() != seg.bookies.len() {
                return Err(bad(format!(
                    "ensemble from entry {} has {} bookies ({} distinct), expected {}",
                    seg.first_entry,
                    seg.bookies.len(),
                    ids.len(),
                    self.ensemble_size
                )));
            }
        }
        if self.last_entry_id < NO_ENTRY {
            return Err(bad(format!("last entry {}", self.last_entry_id)));
        }
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.state == LedgerState::Closed
    }

    /// The segment holding `entry` (validated metadata always has one).
    pub fn segment_for(&self, entry: u64) -> &EnsembleSegment {
        let idx = self
            .ensembles
            .partition_point(|s| s.first_entry <= entry)
            .saturating_sub(1);
        &self.ensembles[idx.min(self.ensembles.len().saturating_sub(1))]
    }

    /// The bookies of entry `entry`'s write set, in write-set order.
    pub fn write_set_bookies(&self, entry: u64) -> Vec<BookieId> {
        let seg = self.segment_for(entry);
        write_set(entry, self.ensemble_size, self.write_quorum)
            .into_iter()
            .filter_map(|p| seg.bookies.get(p).cloned())
            .collect()
    }

    /// The ensemble new entries go to.
    pub fn last_ensemble(&self) -> &EnsembleSegment {
        self.segment_for(u64::MAX)
    }

    /// Records `bookies` as the ensemble from `first_entry` on: replaces the last segment if it
    /// starts there (nothing completed under it yet), appends a segment otherwise.
    pub fn set_ensemble_from(&mut self, first_entry: u64, bookies: Vec<BookieId>) {
        self.ensembles.retain(|s| s.first_entry < first_entry);
        self.ensembles.push(EnsembleSegment {
            first_entry,
            bookies,
        });
    }

    /// Every distinct bookie that holds (or held) entries of the ledger.
    pub fn all_bookies(&self) -> Vec<BookieId> {
        let mut all: Vec<BookieId> = self
            .ensembles
            .iter()
            .flat_map(|s| s.bookies.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Typed access to ledger records and the id counter.
#[derive(Clone, Debug)]
pub(crate) struct LedgerStore {
    records: RecordStore<LedgerMetadata>,
    ids: IdAllocator,
}

impl LedgerStore {
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        LedgerStore {
            records: RecordStore::new(Arc::clone(&store)),
            ids: IdAllocator::new(store, LEDGER_ID_KEY),
        }
    }

    pub async fn allocate_id(&self) -> LedgerResult<LedgerId> {
        Ok(LedgerId(self.ids.next().await?))
    }

    pub async fn create(&self, id: LedgerId, meta: &LedgerMetadata) -> LedgerResult<Version> {
        match self.records.create(&ledger_key(id), meta).await? {
            PutOutcome::Written(v) => Ok(v),
            PutOutcome::Conflict { .. } => Err(LedgerError::BadMetadata {
                ledger: id,
                reason: "a ledger with this freshly allocated id already exists".into(),
            }),
        }
    }

    /// The record, validated; `NoSuchLedger` if absent.
    pub async fn read(&self, id: LedgerId) -> LedgerResult<(LedgerMetadata, Version)> {
        match self.records.get(&ledger_key(id)).await? {
            None => Err(LedgerError::NoSuchLedger(id)),
            Some((meta, version)) => {
                meta.validate(id)?;
                Ok((meta, version))
            }
        }
    }

    /// Compare-and-set: `Ok(Some(version))` if written, `Ok(None)` on a conflict.
    pub async fn write(
        &self,
        id: LedgerId,
        meta: &LedgerMetadata,
        expected: Version,
    ) -> LedgerResult<Option<Version>> {
        Ok(self
            .records
            .put(&ledger_key(id), meta, Expected::Version(expected))
            .await?
            .written())
    }

    /// Deletes the record if still at `expected`; false on a conflict.
    pub async fn delete(&self, id: LedgerId, expected: Version) -> LedgerResult<bool> {
        use magnetar_metadata::DeleteOutcome;
        Ok(matches!(
            self.records
                .delete(&ledger_key(id), Expected::Version(expected))
                .await?,
            DeleteOutcome::Deleted | DeleteOutcome::NotFound
        ))
    }
}

pub(crate) use magnetar_metadata::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> LedgerMetadata {
        let b = |s: &str| BookieId(s.into());
        LedgerMetadata {
            ensemble_size: 3,
            write_quorum: 2,
            ack_quorum: 2,
            state: LedgerState::Open,
            last_entry_id: -1,
            length_bytes: 0,
            ensembles: vec![EnsembleSegment {
                first_entry: 0,
                bookies: vec![b("a:1"), b("b:1"), b("c:1")],
            }],
            created_ms: 0,
            custom: BTreeMap::new(),
        }
    }

    #[test]
    fn write_sets_stripe_over_the_ensemble() {
        assert_eq!(write_set(0, 3, 2), vec![0, 1]);
        assert_eq!(write_set(2, 3, 2), vec![2, 0]);
        assert_eq!(write_set(4, 1, 1), vec![0]);
    }

    #[test]
    fn ensemble_changes_add_or_replace_segments() {
        let mut m = meta();
        m.set_ensemble_from(
            5,
            vec![
                BookieId("a:1".into()),
                BookieId("d:1".into()),
                BookieId("c:1".into()),
            ],
        );
        assert_eq!(m.ensembles.len(), 2);
        let names = |e| {
            m.write_set_bookies(e)
                .into_iter()
                .map(|b| b.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(4), vec!["b:1", "c:1"]);
        assert_eq!(names(6), vec!["a:1", "d:1"]);
        assert_eq!(names(7), vec!["d:1", "c:1"]);
        m.set_ensemble_from(
            5,
            vec![
                BookieId("a:1".into()),
                BookieId("e:1".into()),
                BookieId("c:1".into()),
            ],
        );
        assert_eq!(m.ensembles.len(), 2);
        m.validate(LedgerId(1)).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"state\":\"open\""));
        assert_eq!(serde_json::from_str::<LedgerMetadata>(&json).unwrap(), m);
    }

    #[test]
    fn quorums_are_validated() {
        assert!(validate_quorums(3, 2, 2).is_ok());
        assert!(validate_quorums(1, 1, 1).is_ok());
        assert!(validate_quorums(2, 3, 1).is_err());
        assert!(validate_quorums(3, 2, 0).is_err());
        let mut m = meta();
        m.ensembles[0].bookies[1] = BookieId("a:1".into());
        assert!(m.validate(LedgerId(1)).is_err());
    }
}
