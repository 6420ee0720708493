//! Disk limits and the read-write / read-only state.
//!
//! The bookie is read-only while either of two reasons holds:
//! - **disk full**: the filesystem (statvfs) is used above `disk_usage_threshold`, or the
//!   bookie's own files exceed `storage_size_bytes_max`. Cleared only below `disk_usage_lwm`
//!   and below 90% of `storage_size_bytes_max` — hysteresis, so the state does not flap around
//!   one threshold.
//! - **I/O failure**: a journal or entry log write failed (e.g. ENOSPC). Cleared by the next
//!   disk check that finds the disk below the low-water marks: the usual cause, no space,
//!   is then gone, and the writer has already moved to fresh files.
//! - **sync failure**: an `fdatasync` (journal, entry log, directory) or the index commit
//!   failed. Sticky until restart, never cleared by a disk check: after a failed fsync Linux
//!   may have dropped the dirty pages and marked them clean ("fsyncgate"), so a later sync
//!   that reports success proves nothing. No checkpoint runs from then on — the index is not
//!   committed and the journal not trimmed — so a restart replays the journal from the last
//!   good checkpoint and rewrites whatever the lost pages held.
//!
//! Read-only refuses adds of every kind; reads, fences and deletes keep working (recovery
//! must still be able to fence, and deleting is how space comes back).

use std::io;
use std::path::Path;

use super::Shared;
use crate::api::BookieState;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DiskStatus {
    pub disk_full: bool,
    pub io_failed: bool,
    /// Sticky: see the module doc.
    pub sync_failed: bool,
    /// Bytes still usable by this bookie (filesystem free space, capped by the own limit).
    pub free_bytes: u64,
    /// Bytes of the bookie's own files.
    pub used_bytes: u64,
    /// An operator is decommissioning the bookie: it takes no more writes.
    pub decommissioned: bool,
}

impl DiskStatus {
    pub fn state(&self) -> BookieState {
        if self.disk_full || self.io_failed || self.sync_failed || self.decommissioned {
            BookieState::ReadOnly
        } else {
            BookieState::ReadWrite
        }
    }
}

/// Apparent size of all files under `dir` (one level of subdirectories is enough here).
fn dir_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let meta = match item.metadata() {
            Ok(meta) => meta,
            // Removed meanwhile (trimmed journal, compacted log): it no longer counts.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            total += dir_bytes(&item.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Measures and updates the state. Blocking: call from a blocking thread.
pub(crate) fn check(shared: &Shared) {
    let opts = &shared.opts;
    let fs = match rustix::fs::statvfs(&opts.data_dir) {
        Ok(fs) => fs,
        Err(e) => {
            tracing::warn!(error = %e, "statvfs of the data directory failed");
            return;
        }
    };
    let own = match dir_bytes(&shared.journal_dir)
        .and_then(|j| dir_bytes(&shared.ledgers_dir).map(|l| j + l))
    {
        Ok(own) => own,
        Err(e) => {
            tracing::warn!(error = %e, "measuring the bookie's own files failed");
            return;
        }
    };
    let block = fs.f_frsize.max(1);
    let total_bytes = fs.f_blocks.saturating_mul(block);
    let avail_bytes = fs.f_bavail.saturating_mul(block);
    let used_fraction = if total_bytes == 0 {
        0.0
    } else {
        1.0 - avail_bytes as f64 / total_bytes as f64
    };
    let over_own = opts.storage_size_bytes_max.is_some_and(|max| own > max);
    let under_own = opts
        .storage_size_bytes_max
        .is_none_or(|max| (own as f64) < 0.9 * max as f64);
    let mut free = avail_bytes;
    if let Some(max) = opts.storage_size_bytes_max {
        free = free.min(max.saturating_sub(own));
    }

    let mut disk = shared.lock_disk();
    let before = disk.state();
    if used_fraction > opts.disk_usage_threshold || over_own {
        disk.disk_full = true;
    } else if used_fraction < opts.disk_usage_lwm && under_own {
        disk.disk_full = false;
        disk.io_failed = false;
    }
    disk.free_bytes = free;
    disk.used_bytes = own;
    let after = disk.state();
    drop(disk);
    if before != after {
        tracing::warn!(
            state = after.as_str(),
            used_fraction,
            own_bytes = own,
            "bookie state changed by disk check"
        );
    }
    shared.publish_state();
}
