//! Entry log files (`data_dir/ledgers/{id:08x}.log`): where entries live after the journal.
//!
//! Entries of every ledger are appended interleaved, in the order the journal writer applied
//! them, to the one *current* log; past `entry_log_size_bytes_max` a new one is started. Older
//! logs are only ever read, and deleted whole by compaction (see `gc.rs`).
//!
//! Record format (little-endian), position-independent so compaction can copy it verbatim:
//!
//! ```text
//! 0  u32 magic   0x4c45474d ("MGEL")
//! 4  u32 payload length in bytes
//! 8  u64 ledger id
//! 16 u64 entry id
//! 24 i64 LAC carried by the entry
//! 32 u32 the entry's CRC32C (api::entry_crc: ledger, entry, LAC, payload)
//! 36 u32 reserved, 0
//! 40 payload
//! ```
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

pub(crate) const MAGIC: u32 = 0x4c45_474d;
pub(crate) const HEADER_BYTES: u64 = 40;

/// Where one entry sits: the log, the byte offset of its record header, the payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub log: u32,
    pub offset: u64,
    pub len: u32,
}

impl Loc {
    /// Bytes the record takes in its log (header + payload), for live/total accounting.
    pub fn record_bytes(&self) -> u64 {
        HEADER_BYTES + u64::from(self.len)
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
    buf.extend_from_slice(&0u32.to_le_bytes());
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

/// (ledger, entry, payload length) of a record header, if it has the magic.
pub(crate) fn parse_header(h: &[u8]) -> Option<(LedgerId, EntryId, u32)> {
    if h.len() < HEADER_BYTES as usize || le_u32(h, 0) != MAGIC {
        return None;
    }
    Some((LedgerId(le_u64(h, 8)), EntryId(le_u64(h, 16)), le_u32(h, 4)))
}

/// Reads the whole record at `loc` (header + payload), raw, for compaction or a read.
pub(crate) fn read_raw(file: &File, loc: Loc) -> io::Result<BytesMut> {
    let mut buf = BytesMut::zeroed(loc.record_bytes() as usize);
    file.read_exact_at(&mut buf, loc.offset)?;
    Ok(buf)
}

/// Checks a raw record against what the index says it is and against its CRC.
pub(crate) fn decode(raw: Bytes, loc: Loc, ledger: LedgerId, entry: EntryId) -> Option<Entry> {
    let h = HEADER_BYTES as usize;
    if raw.len() != h + loc.len as usize
        || le_u32(&raw, 0) != MAGIC
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
        let e = Entry::new(LedgerId(7), EntryId(3), 2, Bytes::from_static(b"payload"));
        let mut buf = Vec::new();
        encode(&mut buf, &e);
        let loc = Loc {
            log: 0,
            offset: 0,
            len: 7,
        };
        assert_eq!(buf.len() as u64, loc.record_bytes());
        let back = decode(Bytes::from(buf.clone()), loc, LedgerId(7), EntryId(3));
        assert_eq!(back, Some(e));
        assert!(decode(Bytes::from(buf.clone()), loc, LedgerId(7), EntryId(4)).is_none());
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert!(decode(Bytes::from(buf), loc, LedgerId(7), EntryId(3)).is_none());
        assert_eq!(parse_log_name("0000000a.log"), Some(10));
        assert_eq!(parse_log_name("index.redb"), None);
    }
}
