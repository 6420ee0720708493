//! Entry log files (`data_dir/ledgers/{id:08x}.log`): where entries live after the journal.
//!
//! Entries of every ledger are appended interleaved, in the order the journal writer applied
//! them, to the one *current* log; past `entry_log_size_bytes_max` a new one is started. Older
//! logs are only ever read, and deleted whole by compaction (see `gc.rs`).
//!
//! Record format (little-endian), position-independent so compaction can copy it verbatim:
//!
//! ```text
//! 0  u32 magic   0x3245474d ("MGE2")
//! 4  u32 payload length in bytes
//! 8  u64 ledger id
//! 16 u64 entry id
//! 24 i64 LAC carried by the entry
//! 32 u32 the entry's CRC32C (api::entry_crc: ledger, entry, LAC, running length, payload)
//! 36 u32 flags: 1 = the entry carries a running length
//! 40 u64 the ledger's running length (0 without the flag)
//! 48 payload
//! ```
//!
//! Records of older versions (magic 0x4c45474d "MGEL", no flags or length, payload at 40) are
//! still read and compacted; a [`Loc`] says which of the two a record is.
//!
//! Appends are plain buffered `pwrite`s (no fsync per entry: the journal already made the entry
//! durable); the checkpoint fdatasyncs logs before the index that points into them is persisted.
//! Every read re-checks the entry CRC, so a flipped bit surfaces as `Corrupt`, never as data.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use magnetar_metadata::{EntryId, LedgerId};

use crate::api::{BookieError, BookieResult, Entry};

pub(crate) const MAGIC: u32 = 0x3245_474d;
pub(crate) const HEADER_BYTES: u64 = 48;
const MAGIC_V1: u32 = 0x4c45_474d;
const HEADER_V1_BYTES: u64 = 40;
const FLAG_HAS_LENGTH: u32 = 1;
/// The smallest header of any format: what a scan reads before it knows the format.
pub(crate) const HEADER_MIN_BYTES: u64 = HEADER_V1_BYTES;

/// Where one entry sits: the log, the byte offset of its record header, the payload length,
/// and whether the record is in the older format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub log: u32,
    pub offset: u64,
    pub len: u32,
    pub v1: bool,
}

/// Set in the index's stored length when the record is in the current format: rows written
/// before the format changed have it clear. Payloads are far below 2 GiB.
const CURRENT_FORMAT_BIT: u32 = 1 << 31;

impl Loc {
    /// A record in the current format.
    pub fn new(log: u32, offset: u64, len: u32) -> Loc {
        Loc {
            log,
            offset,
            len,
            v1: false,
        }
    }

    pub fn header_bytes(&self) -> u64 {
        if self.v1 {
            HEADER_V1_BYTES
        } else {
            HEADER_BYTES
        }
    }

    /// Bytes the record takes in its log (header + payload), for live/total accounting.
    pub fn record_bytes(&self) -> u64 {
        self.header_bytes() + u64::from(self.len)
    }

    /// The index row: (log, offset, length with the format bit).
    pub fn to_row(self) -> (u32, u64, u32) {
        let bit = if self.v1 { 0 } else { CURRENT_FORMAT_BIT };
        (self.log, self.offset, self.len | bit)
    }

    pub fn from_row((log, offset, len): (u32, u64, u32)) -> Loc {
        Loc {
            log,
            offset,
            len: len & !CURRENT_FORMAT_BIT,
            v1: len & CURRENT_FORMAT_BIT == 0,
        }
    }
}

pub(crate) fn log_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08x}.log"))
}

/// The log id in a file name made by [`log_path`]; `None` for any other file.
pub(crate) fn parse_log_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".log")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Appends the record of `e` to `buf`.
pub(crate) fn encode(buf: &mut Vec<u8>, e: &Entry) {
    buf.reserve(HEADER_BYTES as usize + e.payload.len());
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    // Payload length fits: adds over entry_size_bytes_max (far below 4 GiB) are refused.
    buf.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&e.ledger.0.to_le_bytes());
    buf.extend_from_slice(&e.entry.0.to_le_bytes());
    buf.extend_from_slice(&e.lac.to_le_bytes());
    buf.extend_from_slice(&e.crc32c.to_le_bytes());
    let flags = if e.length.is_some() {
        FLAG_HAS_LENGTH
    } else {
        0
    };
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&e.length.unwrap_or(0).to_le_bytes());
    buf.extend_from_slice(&e.payload);
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Ledger, entry and where the record at `offset` of log `log` lies, from its first
/// [`HEADER_MIN_BYTES`] bytes; `None` without a known magic.
pub(crate) fn parse_header(h: &[u8], log: u32, offset: u64) -> Option<(LedgerId, EntryId, Loc)> {
    if h.len() < HEADER_MIN_BYTES as usize {
        return None;
    }
    let v1 = match le_u32(h, 0) {
        MAGIC => false,
        MAGIC_V1 => true,
        _ => return None,
    };
    let loc = Loc {
        log,
        offset,
        len: le_u32(h, 4),
        v1,
    };
    Some((LedgerId(le_u64(h, 8)), EntryId(le_u64(h, 16)), loc))
}

/// Reads the whole record at `loc` (header + payload), raw, for compaction or a read.
pub(crate) fn read_raw(file: &File, loc: Loc) -> io::Result<BytesMut> {
    let mut buf = BytesMut::zeroed(loc.record_bytes() as usize);
    file.read_exact_at(&mut buf, loc.offset)?;
    Ok(buf)
}

/// Checks a raw record against what the index says it is and against its CRC.
pub(crate) fn decode(raw: Bytes, loc: Loc, ledger: LedgerId, entry: EntryId) -> Option<Entry> {
    let h = loc.header_bytes() as usize;
    let magic = if loc.v1 { MAGIC_V1 } else { MAGIC };
    if raw.len() != h + loc.len as usize
        || le_u32(&raw, 0) != magic
        || le_u32(&raw, 4) != loc.len
        || le_u64(&raw, 8) != ledger.0
        || le_u64(&raw, 16) != entry.0
    {
        return None;
    }
    let e = Entry {
        ledger,
        entry,
        lac: le_u64(&raw, 24) as i64,
        length: (!loc.v1 && le_u32(&raw, 36) & FLAG_HAS_LENGTH != 0).then(|| le_u64(&raw, 40)),
        crc32c: le_u32(&raw, 32),
        payload: raw.slice(h..),
    };
    e.is_intact().then_some(e)
}

/// Reads one entry with `pread` (call off the async runtime) and verifies it.
pub(crate) fn read_entry(
    file: &File,
    loc: Loc,
    ledger: LedgerId,
    entry: EntryId,
) -> BookieResult<Entry> {
    let raw = match read_raw(file, loc) {
        Ok(raw) => raw.freeze(),
        // A log shorter than the index says: the bytes are gone, which is corruption.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::error!(%ledger, %entry, ?loc, "entry log shorter than its index");
            return Err(BookieError::Corrupt { ledger, entry });
        }
        Err(e) => {
            tracing::error!(%ledger, %entry, ?loc, error = %e, "entry log read failed");
            return Err(BookieError::Internal(format!("entry log read: {e}")));
        }
    };
    decode(raw, loc, ledger, entry).ok_or_else(|| {
        tracing::error!(%ledger, %entry, ?loc, "entry fails its CRC32C in the entry log");
        BookieError::Corrupt { ledger, entry }
    })
}

/// The log new entries go to. Guarded by a mutex in `Shared`: the journal writer and the
/// compactor both append, each a whole buffer at a time.
#[derive(Debug)]
pub(crate) struct Appender {
    pub id: u32,
    pub file: Arc<File>,
    pub path: PathBuf,
    /// Bytes written so far: the offset of the next record.
    pub len: u64,
}

impl Appender {
    pub fn create(dir: &Path, id: u32) -> io::Result<Appender> {
        let path = log_path(dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Appender {
            id,
            file: Arc::new(file),
            path,
            len: 0,
        })
    }

    /// Writes `buf` at the end; returns its offset. On error nothing is counted as written, so
    /// the next append overwrites whatever part of `buf` reached the file.
    pub fn append(&mut self, buf: &[u8]) -> io::Result<u64> {
        let at = self.len;
        self.file.write_all_at(buf, at)?;
        self.len += buf.len() as u64;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_corruption() {
        let e = Entry::with_length(
            LedgerId(7),
            EntryId(3),
            2,
            Some(90),
            Bytes::from_static(b"payload"),
        );
        let mut buf = Vec::new();
        encode(&mut buf, &e);
        let loc = Loc::new(0, 0, 7);
        assert_eq!(buf.len() as u64, loc.record_bytes());
        assert_eq!(
            parse_header(&buf, 0, 0),
            Some((LedgerId(7), EntryId(3), loc))
        );
        assert_eq!(Loc::from_row(loc.to_row()), loc);
        let back = decode(Bytes::from(buf.clone()), loc, LedgerId(7), EntryId(3));
        assert_eq!(back, Some(e));
        assert!(decode(Bytes::from(buf.clone()), loc, LedgerId(7), EntryId(4)).is_none());
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert!(decode(Bytes::from(buf), loc, LedgerId(7), EntryId(3)).is_none());
        assert_eq!(parse_log_name("0000000a.log"), Some(10));
        assert_eq!(parse_log_name("index.redb"), None);
    }

    #[test]
    fn records_of_the_older_format_are_still_read() {
        let e = Entry::new(LedgerId(7), EntryId(3), 2, Bytes::from_static(b"old"));
        let mut buf = Vec::new();
        buf.extend_from_slice(&MAGIC_V1.to_le_bytes());
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&7u64.to_le_bytes());
        buf.extend_from_slice(&3u64.to_le_bytes());
        buf.extend_from_slice(&2i64.to_le_bytes());
        buf.extend_from_slice(&e.crc32c.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(b"old");
        let (_, _, loc) = parse_header(&buf, 4, 0).expect("a v1 header parses");
        assert!(loc.v1);
        assert_eq!(loc.record_bytes(), buf.len() as u64);
        // An index row written before the format bit existed means the older format.
        assert_eq!(Loc::from_row((4, 0, 3)), loc);
        assert_eq!(
            decode(Bytes::from(buf), loc, LedgerId(7), EntryId(3)),
            Some(e)
        );
    }
}
