//! What managed ledgers and cursors store in the metadata store (JSON records, written with CAS).
//!
//! `/managed-ledgers/{name}` holds a [`ManagedLedgerRecord`]:
//!
//! ```json
//! {"ledgers":[{"ledger_id":7,"entries":500,"size_bytes":51200,"created_ms":1700000000000,
//!              "closed_ms":1700000060000,"state":"closed","location":{"kind":"bookies"}},
//!             {"ledger_id":9,"entries":0,"size_bytes":0,"created_ms":1700000060000,
//!              "closed_ms":null,"state":"open","location":{"kind":"bookies"}}],
//!  "created_ms":1700000000000,"properties":{}}
//! ```
//!
//! That is the whole list as the managed ledger holds it in memory; stored, only the newest
//! ledgers stay in this key and older ones move to chunks (see [`crate::ledger_list`], which
//! adds a `chunks` field here). Only the last ledger may be `open`; its `entries`/`size_bytes` are filled in when it is closed
//! (by rollover, close, or the next owner's recovery). `location` says where the ledger's data
//! lives — `bookies` for now; tiered storage will add an offloaded variant.
//!
//! `/managed-ledgers/{name}/cursors/{cursor}` holds a [`CursorRecord`]:
//!
//! ```json
//! {"first_unacked":{"ledger":7,"entry":120},
//!  "acked_ranges":[{"ledger":7,"first":122,"last":130}],"properties":{},"updated_ms":1700000000000}
//! ```
//!
//! With a cursor ledger (`"cursor_ledger":12`, see [`crate::cursor_store`]) the record holds only
//! the floor and properties as of that ledger's start, and the ledger's last entry — a record
//! of this same shape — holds the current state.
//!
//! `first_unacked` is the exclusive mark-delete floor: every position below it is acknowledged
//! (Pulsar's mark-delete position is the entry just before it). `acked_ranges` are the
//! individually acknowledged ranges above it, inclusive, sorted. `batch_acks` (absent when
//! empty; records written before it existed read as empty) lists the entries of which only some
//! batch indexes are acknowledged, with the indexes still unacknowledged as `BitSet` words
//! (see [`crate::batch_acks`]): `"batch_acks":[{"ledger":7,"entry":121,"unacked":[1018]}]`.

use std::collections::BTreeMap;

use magnetar_metadata::LedgerId;
use serde::{Deserialize, Serialize};

use crate::Position;
pub use crate::batch_acks::BatchAckRecord;

/// Root of every managed-ledger key.
pub const ROOT: &str = "/managed-ledgers";

pub fn ledger_record_key(name: &str) -> String {
    format!("{ROOT}/{name}")
}

pub fn cursors_prefix(name: &str) -> String {
    format!("{ROOT}/{name}/cursors/")
}

pub fn cursor_record_key(name: &str, cursor: &str) -> String {
    format!("{}{cursor}", cursors_prefix(name))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerRecordState {
    /// Being written (only the last ledger), or left open by a broker that died.
    Open,
    Closed,
}

/// Where a ledger's entries live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerLocation {
    #[default]
    Bookies,
    /// Only in object storage: offloaded, and the bookies' copy deleted after the lag.
    Offloaded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerInfo {
    pub ledger_id: LedgerId,
    pub entries: u64,
    pub size_bytes: u64,
    pub created_ms: u64,
    #[serde(default)]
    pub closed_ms: Option<u64>,
    pub state: LedgerRecordState,
    #[serde(default)]
    pub location: LedgerLocation,
    /// Tiered storage: the ledger's copy in object storage, once an offload began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadState>,
}

impl LedgerInfo {
    /// The ledger's complete copy in object storage, if it has one.
    pub fn offloaded(&self) -> Option<&OffloadState> {
        self.offload.as_ref().filter(|o| o.complete)
    }
}

/// A ledger's offload, as recorded by compare-and-set: the attempt id is written *before*
/// anything is uploaded (objects are named from it, so no upload is ever unaccounted for), and
/// `complete` only after both objects were read back and verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffloadState {
    /// The attempt's unique id.
    pub uid: String,
    /// Which store holds the objects (`s3`, `gcs`, `azureblob`, `filesystem`) and where: what
    /// reads and the cleaner need even after the broker's configuration changed.
    pub driver: String,
    pub bucket: String,
    /// The rest of the place (absent in records written before policies could name stores:
    /// those went to the broker's store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    pub began_ms: u64,
    #[serde(default)]
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<u64>,
    /// The bookies' copy was deleted (after the deletion lag).
    #[serde(default)]
    pub bookies_deleted: bool,
}

impl OffloadState {
    /// Where the attempt's objects are; `default` is the broker's store (for records
    /// without a prefix).
    pub fn location(
        &self,
        default: &magnetar_offload::Location,
    ) -> magnetar_offload::OffloadResult<magnetar_offload::Location> {
        let driver = magnetar_offload::Driver::parse(&self.driver)?;
        if self.prefix.is_none() && driver == default.driver && self.bucket == default.bucket {
            return Ok(default.clone());
        }
        Ok(magnetar_offload::Location {
            driver,
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            service_endpoint: self.service_endpoint.clone(),
            prefix: self
                .prefix
                .clone()
                .unwrap_or_else(|| default.prefix.clone()),
        })
    }

    /// `s3://bucket/prefix`, for people.
    pub fn describe(&self) -> String {
        let prefix = self.prefix.as_deref().unwrap_or_default();
        match &self.service_endpoint {
            Some(e) => format!("{}://{}/{prefix} ({e})", self.driver, self.bucket),
            None => format!("{}://{}/{prefix}", self.driver, self.bucket),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedLedgerRecord {
    pub ledgers: Vec<LedgerInfo>,
    pub created_ms: u64,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedRange {
    pub ledger: LedgerId,
    pub first: u64,
    pub last: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    pub first_unacked: Position,
    #[serde(default)]
    pub acked_ranges: Vec<AckedRange>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub updated_ms: u64,
    /// Partially acknowledged batch entries above the floor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch_acks: Vec<BatchAckRecord>,
    /// The cursor ledger holding the state's snapshots (see [`crate::cursor_store`]); absent
    /// when the record holds the whole state itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_ledger: Option<LedgerId>,
}
