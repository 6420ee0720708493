//! Fuzz targets over the bookie's on-disk formats (`magnetar-fuzz` and `fuzz/libfuzzer` drive
//! them; the corpus replay test runs them in CI). Each takes arbitrary bytes, must never panic,
//! hang or allocate beyond the input's size, and asserts what replay promises.

// A fuzz target fails by panicking: these are its assertions, not error handling.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use magnetar_metadata::{EntryId, LedgerId};

use super::entrylog;
use super::journal::{self, Record};
use crate::api::Entry;

/// Journal replay over arbitrary file contents, then the torn-tail promise: records written
/// whole and cut anywhere replay as exactly the records before the cut, with no damage.
pub fn journal(data: &[u8]) {
    let generation = data.first().map_or(1, |&b| u32::from(b % 4));
    let reach = data.get(1).map_or(64, |&b| usize::from(b) * 16);
    let file = Bytes::copy_from_slice(data);
    let parsed = journal::parse(&file, generation, 0, reach);
    let mut last_end = 0u64;
    for (record, end) in &parsed.records {
        assert!(
            *end > last_end && *end <= file.len() as u64,
            "record ends out of order"
        );
        last_end = *end;
        if let Record::Add(e) = record {
            assert!(e.is_intact(), "replay returned an entry failing its CRC");
        }
    }
    if let Some(damage) = parsed.damage {
        assert_eq!(
            damage.offset, last_end,
            "damage is reported where replay stopped"
        );
        assert!(damage.next_valid > damage.offset && damage.next_valid < file.len() as u64);
    }

    // Well-formed records made from the input, then a cut at an offset the input chooses.
    let records = records_from(data);
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for r in &records {
        match r {
            Record::Add(e) => journal::encode_add(&mut buf, 7, e, e.entry.0 % 2 == 0),
            Record::Fence(l) => journal::encode_ledger_op(&mut buf, 7, *l, true),
            Record::Delete(l) => journal::encode_ledger_op(&mut buf, 7, *l, false),
        }
        ends.push(buf.len() as u64);
    }
    let cut = data
        .get(2)
        .map_or(buf.len(), |&b| buf.len() * usize::from(b) / 255);
    // Preallocated space after the cut: zeros, as a torn batch leaves them.
    // The records are one batch: a payload may itself hold bytes that look like a record, so
    // only what lies beyond the last batch's reach could be damage.
    let reach = buf.len();
    let written = buf.clone();
    buf.truncate(cut);
    buf.resize(cut + 64, 0);
    // Whole: every byte of the record survived (a cut record whose lost bytes were zeros
    // anyway is whole too).
    let mut start = 0;
    let whole = ends
        .iter()
        .take_while(|&&end| {
            let (s, e) = (start, end as usize);
            start = e;
            buf.get(s..e) == Some(&written[s..e])
        })
        .count();
    let parsed = journal::parse(&Bytes::from(buf), 7, 0, reach);
    assert_eq!(
        parsed.records.len(),
        whole,
        "a cut replays exactly the whole records"
    );
    for ((got, end), (want, want_end)) in parsed.records.iter().zip(records.iter().zip(&ends)) {
        assert_eq!(got, want);
        assert_eq!(end, want_end);
    }
    assert!(parsed.damage.is_none(), "a torn tail is not damage");
}

/// Entry-log records: a header and record read from arbitrary bytes are accepted only when
/// whole and intact; a record written whole reads back equal, and any flipped byte of it is
/// refused.
pub fn entry_log(data: &[u8]) {
    if let Some((ledger, entry, loc)) = entrylog::parse_header(data, 0, 0) {
        let raw = Bytes::copy_from_slice(data);
        if let Some(e) = entrylog::decode(raw, loc, ledger, entry) {
            assert!(e.is_intact());
            assert_eq!((e.ledger, e.entry), (ledger, entry));
        }
    }
    let Some(e) = records_from(data).into_iter().find_map(|r| match r {
        Record::Add(e) => Some(e),
        _ => None,
    }) else {
        return;
    };
    let mut buf = Vec::new();
    entrylog::encode(&mut buf, &e);
    let (ledger, entry, loc) = entrylog::parse_header(&buf, 3, 0).expect("a written header parses");
    assert_eq!((ledger, entry), (e.ledger, e.entry));
    assert_eq!(loc.record_bytes(), buf.len() as u64);
    let back = entrylog::decode(Bytes::from(buf.clone()), loc, ledger, entry)
        .expect("a written record decodes");
    assert_eq!(back, e);
    let at = data.last().map_or(0, |&b| usize::from(b)) % buf.len();
    // Bytes 36..40 are the flags word: only bit 0 (has running length) means anything, and
    // the flip below leaves it; the other bits are reserved and ignored on read.
    if (36..40).contains(&at) {
        return;
    }
    let mut bad = BytesMut::from(&buf[..]);
    bad[at] ^= 0x5a;
    // A flipped byte either no longer parses as this record or fails its CRC.
    let reparsed = entrylog::parse_header(&bad, 3, 0);
    if let Some((l, n, loc)) = reparsed {
        assert!(
            entrylog::decode(bad.freeze(), loc, l, n).is_none_or(|got| got != e),
            "a damaged record was read back as the original"
        );
    }
}

/// Records made from the input's bytes (at most 64, so the work stays linear in the input).
fn records_from(data: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 && out.len() < 64 {
        let kind = rest[0] % 8;
        let ledger = LedgerId(u64::from(rest[1]));
        let len = usize::from(rest[2]).min(rest.len() - 3);
        let payload = Bytes::copy_from_slice(&rest[3..3 + len]);
        rest = &rest[3 + len..];
        out.push(match kind {
            0 => Record::Fence(ledger),
            1 => Record::Delete(ledger),
            _ => {
                let entry = EntryId(out.len() as u64);
                let lac = entry.0 as i64 - 1;
                Record::Add(Entry::with_length(
                    ledger,
                    entry,
                    lac,
                    Some(len as u64 * 3),
                    payload,
                ))
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets_accept_empty_and_small_inputs() {
        for data in [
            &b""[..],
            b"\x01",
            b"\x02\x10\x80",
            b"\x03\x01\x05hello\x00\x02\x00",
        ] {
            super::journal(data);
            super::entry_log(data);
        }
    }
}
