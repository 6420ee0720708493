//! The journal (`data_dir/journal/{generation:010}.txn`): its record format, its files, and
//! replay. The group-commit writer thread that fills it lives in `writer.rs`.
//!
//! Files are preallocated with `fallocate` to `journal_file_size_bytes` (writing into allocated
//! blocks is far cheaper than extending a file, DESIGN §3) and a new one (the next generation)
//! is started when a batch would not fit. A file is retired once a checkpoint has recorded a
//! position in a later generation (everything in it is then in the entry logs and the index):
//! up to `SPARES_MAX` retired files are kept as `{generation}.spare` and renamed into the next
//! generation instead of allocating a new file; the rest are deleted.
//!
//! Record format (little-endian), 16-byte header then body:
//!
//! ```text
//! 0  u32 body length in bytes
//! 4  u32 CRC32C over bytes 0..4, 8..16 and the body's fixed part (see below)
//! 8  u32 generation of the file the record was written to
//! 12 u8  type: 4 Add, 2 Fence, 3 Delete (1: the Add of older files);  13..16 reserved, 0
//! 16 body — Add:    u64 ledger, u64 entry, i64 LAC, u32 entry CRC32C,
//!                   u32 flags (1: recovery, 2: has running length), u64 running length,
//!                   then the payload (fixed part: the first 40 bytes)
//!           Add(1): as Add without the running length (fixed part: 32 bytes), still replayed
//!           Fence:  u64 ledger          Delete: u64 ledger   (fixed part: all 8 bytes)
//! ```
//!
//! The record CRC does not cover an Add's payload because the entry's own CRC32C already does
//! (ledger, entry, LAC, payload): replay checks both, so a torn payload is caught without hashing
//! every payload twice on the write path. Replay of a file stops at the first record that is
//! short, zero (preallocated space), from another generation, or fails a CRC: a torn tail.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use magnetar_metadata::{EntryId, LedgerId};

use crate::api::Entry;

pub(crate) const HEADER_BYTES: usize = 16;
const ADD_FIXED_BYTES: usize = 40;
const ADD_V1_FIXED_BYTES: usize = 32;
const LEDGER_OP_BYTES: usize = 8;
const TYPE_ADD_V1: u8 = 1;
const TYPE_FENCE: u8 = 2;
const TYPE_DELETE: u8 = 3;
const TYPE_ADD: u8 = 4;
const FLAG_RECOVERY: u32 = 1;
const FLAG_HAS_LENGTH: u32 = 2;

/// A point in the journal: generation and byte offset within that file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct JournalPos {
    pub generation: u32,
    pub offset: u64,
}

/// A journaled operation, as replay finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Add(Entry),
    Fence(LedgerId),
    Delete(LedgerId),
}

pub(crate) fn add_record_bytes(payload_len: usize) -> usize {
    HEADER_BYTES + ADD_FIXED_BYTES + payload_len
}

pub(crate) const LEDGER_OP_RECORD_BYTES: usize = HEADER_BYTES + LEDGER_OP_BYTES;

fn record_crc(fixed: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&fixed[0..4]), &fixed[8..])
}

fn put_header(buf: &mut Vec<u8>, body_len: usize, generation: u32, kind: u8) {
    // Body lengths fit in u32: entries are capped far below 4 GiB before they get here.
    buf.extend_from_slice(&(body_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&generation.to_le_bytes());
    buf.extend_from_slice(&[kind, 0, 0, 0]);
}

fn seal(buf: &mut [u8], start: usize, fixed_len: usize) {
    let crc = record_crc(&buf[start..start + HEADER_BYTES + fixed_len]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends an Add record to `buf` (one copy of the payload into the batch buffer).
pub(crate) fn encode_add(buf: &mut Vec<u8>, generation: u32, e: &Entry, recovery: bool) {
    let start = buf.len();
    buf.reserve(add_record_bytes(e.payload.len()));
    put_header(buf, ADD_FIXED_BYTES + e.payload.len(), generation, TYPE_ADD);
    buf.extend_from_slice(&e.ledger.0.to_le_bytes());
    buf.extend_from_slice(&e.entry.0.to_le_bytes());
    buf.extend_from_slice(&e.lac.to_le_bytes());
    buf.extend_from_slice(&e.crc32c.to_le_bytes());
    let mut flags = if recovery { FLAG_RECOVERY } else { 0 };
    if e.length.is_some() {
        flags |= FLAG_HAS_LENGTH;
    }
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&e.length.unwrap_or(0).to_le_bytes());
    seal(buf, start, ADD_FIXED_BYTES);
    buf.extend_from_slice(&e.payload);
}

/// Appends a Fence or Delete record.
pub(crate) fn encode_ledger_op(buf: &mut Vec<u8>, generation: u32, ledger: LedgerId, fence: bool) {
    let start = buf.len();
    let kind = if fence { TYPE_FENCE } else { TYPE_DELETE };
    put_header(buf, LEDGER_OP_BYTES, generation, kind);
    buf.extend_from_slice(&ledger.0.to_le_bytes());
    seal(buf, start, LEDGER_OP_BYTES);
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

/// What replay of one journal file found.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// The valid records from the start offset on, each with the offset just past it.
    pub records: Vec<(Record, u64)>,
    /// Set when valid records of this file's generation lie beyond the first bad record — and
    /// further beyond it than the last batch could reach: the damage is not a torn tail.
    pub damage: Option<Damage>,
}

/// A bad record in the middle of a journal file (see [`Parsed::damage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    /// Offset of the first bad record.
    pub offset: u64,
    /// Offset of the first valid record after it, where replay around the damage resumes.
    pub next_valid: u64,
}

/// The record at `off`, if it is whole and valid for `generation`, and the offset past it.
fn record_at(data: &Bytes, generation: u32, off: usize) -> Option<(Record, usize)> {
    if off + HEADER_BYTES > data.len() {
        return None;
    }
    let body_len = le_u32(data, off) as usize;
    let kind = data[off + 12];
    let fixed = match kind {
        TYPE_ADD => ADD_FIXED_BYTES,
        TYPE_ADD_V1 => ADD_V1_FIXED_BYTES,
        TYPE_FENCE | TYPE_DELETE => LEDGER_OP_BYTES,
        _ => return None,
    };
    let end = off.checked_add(HEADER_BYTES + body_len)?;
    if le_u32(data, off + 8) != generation || body_len < fixed || end > data.len() {
        return None;
    }
    if le_u32(data, off + 4) != record_crc(&data[off..off + HEADER_BYTES + fixed]) {
        return None;
    }
    let b = off + HEADER_BYTES;
    let ledger = LedgerId(le_u64(data, b));
    let record = match kind {
        TYPE_ADD | TYPE_ADD_V1 => {
            let has_length = kind == TYPE_ADD && le_u32(data, b + 28) & FLAG_HAS_LENGTH != 0;
            let e = Entry {
                ledger,
                entry: EntryId(le_u64(data, b + 8)),
                lac: le_u64(data, b + 16) as i64,
                length: has_length.then(|| le_u64(data, b + 32)),
                crc32c: le_u32(data, b + 24),
                payload: data.slice(b + fixed..end),
            };
            if !e.is_intact() {
                return None;
            }
            Record::Add(e)
        }
        TYPE_FENCE => Record::Fence(ledger),
        _ => Record::Delete(ledger),
    };
    Some((record, end))
}

/// The first offset after `from` holding a valid record of `generation`. Zero bytes
/// (preallocated space) are skipped at once; elsewhere every offset is a candidate, the
/// generation and type bytes rejecting almost all of them before any CRC is computed.
fn next_valid_record(data: &Bytes, generation: u32, from: usize) -> Option<usize> {
    let first_nonzero = from + data.get(from..)?.iter().position(|&b| b != 0)?;
    // A header's first non-zero byte may be any of its first 12 (a short body length).
    let mut off = first_nonzero.saturating_sub(HEADER_BYTES).max(from);
    while off + HEADER_BYTES <= data.len() {
        if matches!(
            data[off + 12],
            TYPE_ADD | TYPE_ADD_V1 | TYPE_FENCE | TYPE_DELETE
        ) && le_u32(data, off + 8) == generation
            && record_at(data, generation, off).is_some()
        {
            return Some(off);
        }
        off += 1;
    }
    None
}

/// Parses the valid records of one journal file's contents from `start`, stopping at the
/// first record that is short, zero, from another generation or fails a CRC.
///
/// Such a stop is normally the torn tail of the last batch (written, not yet synced, when the
/// process died): nothing after it was acknowledged. Records are written in batches of at most
/// `batch_reach_bytes`, each synced before the next is written, so a valid record further than
/// that past the stop was written *and synced* after the bad one: the file is damaged in the
/// middle, and [`Parsed::damage`] says where.
pub(crate) fn parse(
    data: &Bytes,
    generation: u32,
    start: usize,
    batch_reach_bytes: usize,
) -> Parsed {
    let mut parsed = Parsed::default();
    let mut off = start;
    while let Some((record, end)) = record_at(data, generation, off) {
        parsed.records.push((record, end as u64));
        off = end;
    }
    let reach = off.saturating_add(batch_reach_bytes);
    if next_valid_record(data, generation, reach).is_some() {
        // Damage: replay around it resumes at the first valid record after the bad one (it
        // exists — the one just found beyond the reach qualifies).
        let next = next_valid_record(data, generation, off + 1).unwrap_or(reach);
        parsed.damage = Some(Damage {
            offset: off as u64,
            next_valid: next as u64,
        });
    }
    parsed
}

pub(crate) fn journal_path(dir: &Path, generation: u32) -> PathBuf {
    dir.join(format!("{generation:010}.txn"))
}

/// The journal files in `dir`, by generation.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".txn")) else {
            continue;
        };
        if let Ok(generation) = stem.parse::<u32>() {
            out.push((generation, item.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// fsyncs a directory so files created or removed in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The file the writer appends to.
#[derive(Debug)]
pub(crate) struct JournalFile {
    pub generation: u32,
    pub file: File,
    /// Next write position.
    pub offset: u64,
    /// Preallocated size: a batch that would cross it goes to a new file.
    pub size: u64,
}

/// Trimmed journal files kept for reuse at most: overwriting written blocks of a file that is
/// already in place is much cheaper than filling a fresh one (DESIGN §3), and a couple cover
/// the rotations between two checkpoints.
pub(crate) const SPARES_MAX: usize = 2;

fn spare_path(dir: &Path, generation: u32) -> PathBuf {
    dir.join(format!("{generation:010}.spare"))
}

fn list_spares(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        if item.file_name().to_string_lossy().ends_with(".spare") {
            out.push(item.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Retires a wholly checkpointed journal file: kept as a spare if there are few, else deleted.
/// Its old records stay in it, harmlessly: they carry its old generation, which replay of the
/// file under a new generation rejects.
pub(crate) fn retire(dir: &Path, generation: u32, path: &Path) -> io::Result<()> {
    if list_spares(dir)?.len() < SPARES_MAX {
        fs::rename(path, spare_path(dir, generation))
    } else {
        fs::remove_file(path)
    }
}

impl JournalFile {
    /// The file for `generation`: a renamed spare if there is one, else a new preallocated one.
    pub fn create(dir: &Path, generation: u32, size: u64) -> io::Result<JournalFile> {
        let path = journal_path(dir, generation);
        if let Some(spare) = list_spares(dir)?.into_iter().next() {
            fs::rename(&spare, &path)?;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            sync_dir(dir)?;
            return Ok(JournalFile {
                generation,
                file,
                offset: 0,
                size: size.max(len),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size) {
            // Not fatal: the file grows as written, only slower (e.g. a filesystem without it).
            tracing::warn!(path = %path.display(), error = %e, "journal preallocation failed");
        }
        // The new name must be durable before acknowledged records depend on it.
        sync_dir(dir)?;
        Ok(JournalFile {
            generation,
            file,
            offset: 0,
            size,
        })
    }

    pub fn pos(&self) -> JournalPos {
        JournalPos {
            generation: self.generation,
            offset: self.offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stops_at_torn_tail_and_foreign_generation() {
        let e1 = Entry::new(LedgerId(1), EntryId(0), -1, Bytes::from_static(b"one"));
        let e2 = Entry::new(LedgerId(1), EntryId(1), 0, Bytes::from_static(b"two"));
        let mut buf = Vec::new();
        encode_add(&mut buf, 5, &e1, false);
        encode_ledger_op(&mut buf, 5, LedgerId(1), true);
        let good = buf.len();
        encode_add(&mut buf, 5, &e2, true);
        buf.extend_from_slice(&[0; 64]);
        let all = parse(&Bytes::from(buf.clone()), 5, 0, 0).records;
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].0, Record::Add(e1));
        assert_eq!(all[1], (Record::Fence(LedgerId(1)), good as u64));
        // Another generation's records (a reused file) are not replayed.
        assert!(parse(&Bytes::from(buf.clone()), 6, 0, 0).records.is_empty());
        // A torn payload fails the entry CRC: replay stops before it.
        let mut torn = buf.clone();
        torn[good + add_record_bytes(3) - 1] ^= 0xff;
        let parsed = parse(&Bytes::from(torn), 5, 0, 0);
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(
            parsed.damage, None,
            "the bad record is the last one: a torn tail"
        );
        // A cut-off record is ignored.
        buf.truncate(good + 20);
        assert_eq!(parse(&Bytes::from(buf), 5, 0, 0).records.len(), 2);
    }

    #[test]
    fn adds_keep_their_running_length_and_older_records_still_replay() {
        let with = Entry::with_length(
            LedgerId(2),
            EntryId(4),
            3,
            Some(500),
            Bytes::from_static(b"five"),
        );
        let without = Entry::new(LedgerId(2), EntryId(5), 4, Bytes::from_static(b"six"));
        let mut buf = Vec::new();
        encode_add(&mut buf, 1, &with, false);
        encode_add(&mut buf, 1, &without, false);
        // An Add as older versions wrote it: type 1, a 32-byte fixed part, no length.
        let old = Entry::new(LedgerId(2), EntryId(6), 5, Bytes::from_static(b"seven"));
        let start = buf.len();
        put_header(&mut buf, ADD_V1_FIXED_BYTES + 5, 1, TYPE_ADD_V1);
        buf.extend_from_slice(&old.ledger.0.to_le_bytes());
        buf.extend_from_slice(&old.entry.0.to_le_bytes());
        buf.extend_from_slice(&old.lac.to_le_bytes());
        buf.extend_from_slice(&old.crc32c.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        seal(&mut buf, start, ADD_V1_FIXED_BYTES);
        buf.extend_from_slice(&old.payload);
        let records: Vec<Record> = parse(&Bytes::from(buf), 1, 0, 0)
            .records
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(
            records,
            vec![Record::Add(with), Record::Add(without), Record::Add(old)]
        );
    }

    #[test]
    fn a_bad_record_followed_by_synced_records_is_damage_not_a_torn_tail() {
        let entry = |i: u64| {
            Entry::new(
                LedgerId(1),
                EntryId(i),
                i as i64 - 1,
                Bytes::from(vec![7u8; 100]),
            )
        };
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for i in 0..20 {
            encode_add(&mut buf, 3, &entry(i), false);
            ends.push(buf.len());
        }
        buf.extend_from_slice(&[0; 4096]);
        let clean = parse(&Bytes::from(buf.clone()), 3, 0, 256);
        assert_eq!((clean.records.len(), clean.damage), (20, None));
        // A flipped byte in record 5's fixed part: records 6.. are valid but lie beyond it.
        let mut bad = buf.clone();
        bad[ends[4] + HEADER_BYTES + 3] ^= 0x40;
        let parsed = parse(&Bytes::from(bad.clone()), 3, 0, 256);
        assert_eq!(parsed.records.len(), 5, "replay stops at the bad record");
        let damage = parsed
            .damage
            .expect("valid records after it: damage, not a tail");
        assert_eq!(damage.offset, ends[4] as u64);
        assert_eq!(
            damage.next_valid, ends[5] as u64,
            "replay around it resumes at record 6"
        );
        // Within the reach of one batch the same layout is a torn last batch.
        let within = parse(&Bytes::from(bad), 3, 0, 1 << 20);
        assert_eq!((within.records.len(), within.damage), (5, None));
    }
}
