//! The one interface to a bookie, whatever the transport: [`BookieClient`].
//!
//! The bookie's own storage implements it (the in-process transport standalone uses, with no
//! socket or protobuf on the write path); the gRPC client implements it over the network; the gRPC
//! server serves any implementation. The ledger client only ever sees this trait.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use magnetar_metadata::{EntryId, LedgerId};
use magnetar_proto::bookie as pb;
use serde::{Deserialize, Serialize};

/// "No entry": the LAC of a ledger nothing was confirmed in, as in BookKeeper.
pub const NO_ENTRY: i64 = -1;

/// A bookie's identity: the address it serves on, `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BookieId(pub String);

impl fmt::Display for BookieId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BookieId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(BookieId(s.to_owned()))
            }
            _ => Err(format!("bookie id {s:?} is not host:port")),
        }
    }
}

/// An entry as the writer made it and the bookie stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ledger: LedgerId,
    pub entry: EntryId,
    /// The writer's last-add-confirmed when it sent this entry (-1: none).
    pub lac: i64,
    /// Payload bytes of the ledger's entries 0..=this one, as BookKeeper's entries carry it:
    /// recovery learns a ledger's length from its last entry instead of reading them all.
    /// `None` for entries stored before the field existed.
    pub length: Option<u64>,
    pub crc32c: u32,
    /// The client's bytes, never copied on the way.
    pub payload: Bytes,
}

impl Entry {
    /// An entry without a running length, with its checksum computed.
    pub fn new(ledger: LedgerId, entry: EntryId, lac: i64, payload: Bytes) -> Self {
        Self::with_length(ledger, entry, lac, None, payload)
    }

    /// An entry carrying the ledger's running length, with its checksum computed.
    pub fn with_length(
        ledger: LedgerId,
        entry: EntryId,
        lac: i64,
        length: Option<u64>,
        payload: Bytes,
    ) -> Self {
        let crc32c = entry_crc(ledger, entry, lac, length, &payload);
        Entry {
            ledger,
            entry,
            lac,
            length,
            crc32c,
            payload,
        }
    }

    /// True when the stored checksum matches the contents.
    pub fn is_intact(&self) -> bool {
        entry_crc(
            self.ledger,
            self.entry,
            self.lac,
            self.length,
            &self.payload,
        ) == self.crc32c
    }
}

/// CRC32C over ledger id, entry id, LAC and — when the entry carries it — the running length
/// (big-endian 8 bytes each), then the payload. Entries without a length keep the checksum
/// they were stored with.
pub fn entry_crc(
    ledger: LedgerId,
    entry: EntryId,
    lac: i64,
    length: Option<u64>,
    payload: &[u8],
) -> u32 {
    let mut header = BytesMut::with_capacity(32);
    header.put_u64(ledger.0);
    header.put_u64(entry.0);
    header.put_i64(lac);
    if let Some(length) = length {
        header.put_u64(length);
    }
    crc32c::crc32c_append(crc32c::crc32c(&header), payload)
}

/// What fencing a ledger on one bookie reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceResult {
    /// The highest LAC the bookie has seen for the ledger (-1: none).
    pub lac: i64,
    /// The highest entry id it stores for the ledger (-1: none).
    pub last_entry: i64,
}

/// An entry read back, with the bookie's LAC for its ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    pub entry: Entry,
    pub lac: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookieState {
    ReadWrite,
    ReadOnly,
}

impl BookieState {
    pub fn as_str(self) -> &'static str {
        match self {
            BookieState::ReadWrite => "read_write",
            BookieState::ReadOnly => "read_only",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookieInfo {
    pub id: BookieId,
    pub state: BookieState,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub version: String,
}

/// Why a bookie refused or failed a request. The codes are the wire's [`pb::Status`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BookieError {
    #[error("no such entry {ledger}:{entry}")]
    NoSuchEntry { ledger: LedgerId, entry: EntryId },
    #[error("no such ledger {0}")]
    NoSuchLedger(LedgerId),
    #[error("ledger {0} is fenced")]
    Fenced(LedgerId),
    #[error("bookie is read-only (over its disk limit)")]
    ReadOnly,
    #[error("entry {ledger}:{entry} fails its checksum")]
    Corrupt { ledger: LedgerId, entry: EntryId },
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("bookie internal error: {0}")]
    Internal(String),
    #[error("bookie shutting down")]
    ShuttingDown,
    /// The bookie could not be reached or the connection broke (not a bookie answer).
    #[error("bookie unreachable: {0}")]
    Unavailable(String),
    #[error("bookie request timed out after {0:?}")]
    Timeout(Duration),
}

impl BookieError {
    /// True when another bookie (or a later retry) may succeed where this one failed: the
    /// writer replaces the bookie (ensemble change), the reader tries the next replica.
    pub fn is_bookie_failure(&self) -> bool {
        matches!(
            self,
            BookieError::ReadOnly
                | BookieError::Internal(_)
                | BookieError::ShuttingDown
                | BookieError::Unavailable(_)
                | BookieError::Timeout(_)
                | BookieError::Corrupt { .. }
        )
    }

    /// The wire status for this error.
    pub fn status(&self) -> pb::Status {
        match self {
            BookieError::NoSuchEntry { .. } => pb::Status::NoSuchEntry,
            BookieError::NoSuchLedger(_) => pb::Status::NoSuchLedger,
            BookieError::Fenced(_) => pb::Status::Fenced,
            BookieError::ReadOnly => pb::Status::ReadOnly,
            BookieError::Corrupt { .. } => pb::Status::Corrupt,
            BookieError::TooLarge(_) => pb::Status::TooLarge,
            BookieError::BadRequest(_) => pb::Status::BadRequest,
            BookieError::Internal(_) | BookieError::Unavailable(_) | BookieError::Timeout(_) => {
                pb::Status::Internal
            }
            BookieError::ShuttingDown => pb::Status::ShuttingDown,
        }
    }

    /// Rebuilds the error a bookie answered with; `None` for [`pb::Status::Ok`].
    pub fn from_status(
        status: pb::Status,
        ledger: LedgerId,
        entry: EntryId,
        message: String,
    ) -> Option<Self> {
        Some(match status {
            pb::Status::Ok => return None,
            pb::Status::NoSuchEntry => BookieError::NoSuchEntry { ledger, entry },
            pb::Status::NoSuchLedger => BookieError::NoSuchLedger(ledger),
            pb::Status::Fenced => BookieError::Fenced(ledger),
            pb::Status::ReadOnly => BookieError::ReadOnly,
            pb::Status::Corrupt => BookieError::Corrupt { ledger, entry },
            pb::Status::TooLarge => BookieError::TooLarge(message),
            pb::Status::BadRequest => BookieError::BadRequest(message),
            pb::Status::Internal => BookieError::Internal(message),
            pb::Status::ShuttingDown => BookieError::ShuttingDown,
        })
    }
}

pub type BookieResult<T> = Result<T, BookieError>;

/// A bookie, over whatever transport. Every method may be called concurrently; `add` calls are
/// pipelined (a caller need not wait for one add before sending the next).
#[async_trait]
pub trait BookieClient: Send + Sync + fmt::Debug + 'static {
    fn id(&self) -> &BookieId;

    /// Stores the entry durably (journal fsync) before returning. `recovery` adds are accepted
    /// on fenced ledgers.
    async fn add(&self, entry: Entry, recovery: bool) -> BookieResult<()>;

    /// One entry; with `fence`, fences the ledger first (recovery read).
    async fn read(&self, ledger: LedgerId, entry: EntryId, fence: bool)
    -> BookieResult<ReadResult>;

    /// Consecutive entries from `first` up to `last`, stopping early at `max_entries`/`max_bytes`
    /// (at least one entry is returned if `first` exists) or at the first missing entry.
    async fn read_range(
        &self,
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
        max_entries: u32,
        max_bytes: u64,
    ) -> BookieResult<Vec<Entry>>;

    /// The bookie's LAC for the ledger; if `timeout` is non-zero, waits until it exceeds
    /// `previous` or the timeout passes (then returns the current value).
    async fn read_lac(
        &self,
        ledger: LedgerId,
        previous: i64,
        timeout: Duration,
    ) -> BookieResult<i64>;

    /// Fences the ledger (durably) and reports what the bookie has of it.
    async fn fence(&self, ledger: LedgerId) -> BookieResult<FenceResult>;

    async fn delete_ledger(&self, ledger: LedgerId) -> BookieResult<()>;

    async fn info(&self) -> BookieResult<BookieInfo>;
}

impl From<Entry> for pb::Entry {
    fn from(e: Entry) -> Self {
        pb::Entry {
            ledger_id: e.ledger.0,
            entry_id: e.entry.0,
            last_add_confirmed: e.lac,
            length: e.length,
            crc32c: e.crc32c,
            payload: e.payload,
        }
    }
}

impl From<pb::Entry> for Entry {
    fn from(e: pb::Entry) -> Self {
        Entry {
            ledger: LedgerId(e.ledger_id),
            entry: EntryId(e.entry_id),
            lac: e.last_add_confirmed,
            length: e.length,
            crc32c: e.crc32c,
            payload: e.payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_covers_header_and_payload() {
        let e = Entry::new(LedgerId(1), EntryId(2), 1, Bytes::from_static(b"hello"));
        assert!(e.is_intact());
        let mut flipped = e.clone();
        flipped.lac = 0;
        assert!(!flipped.is_intact());
        let mut flipped = e.clone();
        flipped.payload = Bytes::from_static(b"hellp");
        assert!(!flipped.is_intact());
        // The running length is covered too, and an entry without one keeps the old checksum.
        let long = Entry::with_length(LedgerId(1), EntryId(2), 1, Some(12), e.payload.clone());
        assert!(long.is_intact());
        assert_ne!(long.crc32c, e.crc32c);
        let mut flipped = long;
        flipped.length = Some(13);
        assert!(!flipped.is_intact());
        flipped.length = None;
        assert!(!flipped.is_intact());
    }

    #[test]
    fn bookie_ids_are_host_port() {
        assert!("127.0.0.1:3181".parse::<BookieId>().is_ok());
        assert!("nohost".parse::<BookieId>().is_err());
        assert!(":1".parse::<BookieId>().is_err());
    }

    #[test]
    fn statuses_round_trip() {
        let (l, e) = (LedgerId(3), EntryId(4));
        for err in [
            BookieError::NoSuchEntry {
                ledger: l,
                entry: e,
            },
            BookieError::NoSuchLedger(l),
            BookieError::Fenced(l),
            BookieError::ReadOnly,
            BookieError::Corrupt {
                ledger: l,
                entry: e,
            },
            BookieError::ShuttingDown,
        ] {
            assert_eq!(
                BookieError::from_status(err.status(), l, e, String::new()),
                Some(err)
            );
        }
    }
}

/// Where bookies register: one ephemeral key per bookie, `/bookies/{id}`, holding a
/// [`BookieRegistration`] as JSON, tied to the bookie's metadata session.
pub const BOOKIES_PREFIX: &str = "/bookies/";

pub fn registration_key(id: &BookieId) -> String {
    format!("{BOOKIES_PREFIX}{id}")
}

/// What a bookie publishes about itself in the metadata store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookieRegistration {
    /// Also its gRPC address, `host:port`.
    pub id: BookieId,
    pub state: BookieState,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// Placement spreads the replicas of a ledger over zones when bookies carry them.
    pub zone: Option<String>,
    pub version: String,
}
