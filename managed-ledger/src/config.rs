//! [`ManagedLedgerConfig`]: how one managed ledger stripes, rolls over, retains, reads and
//! persists cursors. Every field has a default ([`Default`]); units are in the names.

use std::time::Duration;

use magnetar_bookie::client::LedgerConfig;

use crate::error::{ManagedLedgerError, MlResult};

#[derive(Clone, Debug, PartialEq)]
pub struct ManagedLedgerConfig {
    /// Bookies per ledger (E). Default 1 (standalone); clusters set 2–3 by namespace policy.
    pub ensemble_size: u32,
    /// Copies of each entry (Qw). Default 1.
    pub write_quorum: u32,
    /// Acknowledgements an append waits for (Qa). Default 1.
    pub ack_quorum: u32,
    /// A ledger is rolled over once it holds this many entries. Default 50 000 (Pulsar's
    /// `managedLedgerMaxEntriesPerLedger`).
    pub ledger_entries_max: u64,
    /// … or this many payload bytes. Default 2 GiB (Pulsar's `managedLedgerMaxSizePerLedgerMbytes`).
    pub ledger_size_bytes_max: u64,
    /// … or is this old and holds at least one entry. Default 4 h
    /// (Pulsar's `managedLedgerMaxLedgerRolloverTimeMinutes`).
    pub ledger_age_ms_max: u64,
    /// Consumed ledgers are kept this long after they were closed: -1 forever, 0 not at all
    /// (Pulsar semantics; a ledger is trimmed when it exceeds *either* limit). Default 0.
    pub retention_time_ms: i64,
    /// Consumed ledgers are kept while the managed ledger is at most this large: -1 no limit,
    /// 0 none kept. Default 0.
    pub retention_size_bytes: i64,
    /// How often the background task trims. Default 60 000 ms.
    pub retention_check_interval_ms: u64,
    /// Appends accepted but not yet confirmed; `append` waits beyond that. Default 10 000.
    pub max_pending_appends: usize,
    /// Entries fetched from the bookies at least, when a read misses the cache (read-ahead; the
    /// surplus goes into the cache for the next read). Default 100.
    pub read_ahead_entries: u64,
    /// Durable cursors write their state at most this often; acks in between are coalesced into
    /// one write, and at most one write per cursor is in flight. Default 100 ms.
    pub cursor_flush_interval_ms: u64,
    /// A cursor record keeps at most this many individually acked ranges — the ones nearest
    /// the mark-delete position — so it stays far below the metadata store's value limit
    /// (Pulsar's `managedLedgerMaxUnackedRangesToPersistInMetadataStore`). Acks in ranges past
    /// the cap hold in memory; after a restart those messages are delivered again (never lost).
    /// Default 10 000 (~40 bytes each as JSON).
    pub cursor_acked_ranges_persist_max: usize,
    /// A cursor ledger (where a durable cursor's state snapshots go) is rolled over after this
    /// many snapshots; each rollover is one metadata write. Default 50 000 (Pulsar's
    /// `managedLedgerCursorMaxEntriesPerLedger`).
    pub cursor_ledger_entries_max: u64,
    /// … or once it is this old. Default 4 h (Pulsar's
    /// `managedLedgerCursorRolloverTimeInSeconds`).
    pub cursor_ledger_age_ms_max: u64,
    /// After a failed write (other than fencing), refuse every append with
    /// [`ManagedLedgerError::AppendsSuspended`] until [`ManagedLedger::resume_appends`]: the
    /// broker uses it to stop a producer's later messages from being stored before the failed
    /// one is resent (Pulsar fences the topic the same way). Default false: appends resume by
    /// themselves after the failure's backoff.
    ///
    /// [`ManagedLedger::resume_appends`]: crate::ManagedLedger::resume_appends
    pub suspend_appends_after_failure: bool,
    /// Tiered storage: keep at most this many bytes on the bookies, offloading older closed
    /// ledgers; -1 off (Pulsar's `managedLedgerOffloadThresholdInBytes` /
    /// `managedLedgerOffloadAutoTriggerSizeThresholdBytes`). Default -1.
    pub offload_threshold_bytes: i64,
    /// … and offload closed ledgers older than this; -1 off (Pulsar's
    /// `managedLedgerOffloadThresholdInSeconds`). Default -1.
    pub offload_threshold_ms: i64,
    /// The bookies' copy of an offloaded ledger is deleted this long after the offload
    /// completed; -1 never (Pulsar's `managedLedgerOffloadDeletionLagMs`). Default 4 h.
    pub offload_deletion_lag_ms: i64,
    /// Where this managed ledger offloads: `None` the broker's store; a namespace's or topic's
    /// offload policy may name another driver or bucket.
    pub offload_driver: Option<magnetar_offload::DriverConfig>,
}

impl Default for ManagedLedgerConfig {
    fn default() -> Self {
        ManagedLedgerConfig {
            ensemble_size: 1,
            write_quorum: 1,
            ack_quorum: 1,
            ledger_entries_max: 50_000,
            ledger_size_bytes_max: 2 * 1024 * 1024 * 1024,
            ledger_age_ms_max: 4 * 3600 * 1000,
            retention_time_ms: 0,
            retention_size_bytes: 0,
            retention_check_interval_ms: 60_000,
            max_pending_appends: 10_000,
            read_ahead_entries: 100,
            cursor_flush_interval_ms: 100,
            cursor_acked_ranges_persist_max: 10_000,
            cursor_ledger_entries_max: 50_000,
            cursor_ledger_age_ms_max: 4 * 60 * 60 * 1000,
            suspend_appends_after_failure: false,
            offload_threshold_bytes: -1,
            offload_threshold_ms: -1,
            offload_deletion_lag_ms: 4 * 3600 * 1000,
            offload_driver: None,
        }
    }
}

impl ManagedLedgerConfig {
    pub(crate) fn validate(&self) -> MlResult<()> {
        let bad = |m: &str| Err(ManagedLedgerError::InvalidConfig(m.to_owned()));
        if !(self.ack_quorum >= 1
            && self.write_quorum >= self.ack_quorum
            && self.ensemble_size >= self.write_quorum)
        {
            return bad("need ensemble_size ≥ write_quorum ≥ ack_quorum ≥ 1");
        }
        if self.ledger_entries_max == 0 || self.ledger_size_bytes_max == 0 {
            return bad("ledger_entries_max and ledger_size_bytes_max must be > 0");
        }
        if self.retention_time_ms < -1 || self.retention_size_bytes < -1 {
            return bad("retention limits are -1 (infinite), 0 or positive");
        }
        if self.max_pending_appends == 0 {
            return bad("max_pending_appends must be > 0");
        }
        Ok(())
    }

    pub(crate) fn ledger_config(&self, name: &str) -> LedgerConfig {
        let mut c = LedgerConfig::new(self.ensemble_size, self.write_quorum, self.ack_quorum);
        c.custom.insert("managed-ledger".into(), name.to_owned());
        c
    }

    pub(crate) fn cursor_flush_interval(&self) -> Duration {
        Duration::from_millis(self.cursor_flush_interval_ms)
    }
}
