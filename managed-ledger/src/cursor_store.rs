//! Where a durable cursor's state is persisted: a **cursor ledger** of its own, as Pulsar keeps
//! it, with only a pointer in the metadata store.
//!
//! Each flush appends one snapshot (a [`CursorRecord`] as JSON: mark-delete floor, acked ranges,
//! batch acks, properties) to the cursor's current ledger; the metadata record
//! `/managed-ledgers/{name}/cursors/{cursor}` names that ledger and the floor at the time it was
//! started. So the metadata store sees one write per cursor-ledger rollover
//! (`cursor_ledger_entries_max` snapshots or `cursor_ledger_age_ms_max`), not one per flush:
//! its write rate no longer grows with the ack rate.
//!
//! **Rollover** (also the first flush after a load — ledgers are created lazily, so idle
//! subscriptions cost none): create a ledger, append the current snapshot, then CAS the record
//! to point at it, then seal and delete the previous ledger. A crash before the CAS leaves the
//! record pointing at the old ledger, which still holds a complete snapshot (the new ledger is
//! an orphan the bookies' garbage collection of unreferenced ledgers will have to reclaim).
//!
//! **Ownership.** A new owner claims the record with one CAS (the old owner's next rollover
//! then conflicts) and recovers the cursor ledger, which fences it (the old owner's next append
//! fails with `Fenced`, and the rollover it then tries conflicts on the record — a fence by
//! auto-recovery, which leaves the record alone, only costs a new ledger); the state is the
//! ledger's last snapshot, or the record's own fields when the ledger holds none. A ledger the record names that no longer exists, or a snapshot
//! that does not parse, fails the load with an error naming topic, cursor and ledger: the
//! cursor is never silently moved.
//!
//! **Fallback.** When no ledger can be created (too few bookies), the whole snapshot goes into
//! the record as before cursor ledgers existed (acked ranges capped); the next flush tries a
//! ledger again. Records written before cursor ledgers existed read as such snapshots.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use magnetar_bookie::client::{LedgerError, LedgerWriter};
use magnetar_metadata::crash_point;
use magnetar_metadata::{Expected, LedgerId, PutOutcome, RecordStore, Version};
use tracing::{debug, info, warn};

use crate::error::{ManagedLedgerError, MlResult};
use crate::factory::{create_ledger, delete_ledger, recover_ledger};
use crate::read::Shared;
use crate::record::CursorRecord;

/// A closing cursor's snapshot up to this size goes into its record rather than its ledger.
pub(crate) const INLINE_ON_CLOSE_BYTES_MAX: usize = 64 * 1024;

/// The persistence of one durable cursor. Owned by the cursor's flusher task.
#[derive(Debug)]
pub(crate) struct CursorStore {
    shared: Arc<Shared>,
    cursor: String,
    records: RecordStore<CursorRecord>,
    key: String,
    /// The record's version as we last wrote or claimed it (`None`: not stored yet).
    version: Option<Version>,
    /// The ledger the stored record names.
    stored_ledger: Option<LedgerId>,
    /// Our open cursor ledger (the one the record names), if any.
    writer: Option<LedgerWriter>,
    writer_entries: u64,
    writer_created: Option<Instant>,
    /// Set once another owner took the cursor over.
    fenced: bool,
}

impl CursorStore {
    pub fn new(
        shared: Arc<Shared>,
        cursor: &str,
        records: RecordStore<CursorRecord>,
        key: String,
        version: Option<Version>,
        stored_ledger: Option<LedgerId>,
    ) -> Self {
        CursorStore {
            shared,
            cursor: cursor.to_owned(),
            records,
            key,
            version,
            stored_ledger,
            writer: None,
            writer_entries: 0,
            writer_created: None,
            fenced: false,
        }
    }

    fn fenced_error(&self) -> ManagedLedgerError {
        ManagedLedgerError::Fenced(self.shared.name.clone())
    }

    fn fence(&mut self, why: &str) -> ManagedLedgerError {
        warn!(why, "cursor fenced: another owner took it over");
        self.fenced = true;
        self.fenced_error()
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Makes `snapshot` durable: appended to the cursor ledger, or, when it is time for a new
    /// one (or there is none yet), through a rollover.
    pub async fn persist(&mut self, snapshot: &CursorRecord) -> MlResult<()> {
        if self.fenced {
            return Err(self.fenced_error());
        }
        let cfg = &self.shared.config;
        let due = self.writer.is_none()
            || self.writer_entries >= cfg.cursor_ledger_entries_max
            || self.writer_created.is_some_and(|t| {
                let age = self.shared.clock.now().saturating_duration_since(t);
                age.as_millis() >= u128::from(cfg.cursor_ledger_age_ms_max)
            });
        if due {
            return self.rollover(snapshot).await;
        }
        let payload = encode(snapshot)?;
        let Some(writer) = self.writer.as_ref() else {
            return self.rollover(snapshot).await;
        };
        match writer.append_wait(payload).await {
            Ok(_) => {
                self.writer_entries += 1;
                Ok(())
            }
            // Fenced by a new owner, or by auto-recovery closing it after it lost a replica:
            // a new ledger, whose record CAS conflicts (and fences the cursor) in the first case.
            Err(LedgerError::Fenced(_)) => {
                info!("cursor ledger fenced; rolling over to a new one");
                self.writer = None;
                self.rollover(snapshot).await
            }
            Err(e) => {
                // The ledger is unusable now; the next flush rolls over to a new one.
                warn!(error = %e, "cursor ledger append failed; rolling over at the next flush");
                self.writer = None;
                Err(e.into())
            }
        }
    }

    /// Starts a new cursor ledger holding `snapshot` and points the record at it; without
    /// bookies to write to, stores the snapshot in the record itself.
    async fn rollover(&mut self, snapshot: &CursorRecord) -> MlResult<()> {
        let mut config = self.shared.config.ledger_config(&self.shared.name);
        config.custom.insert("cursor".into(), self.cursor.clone());
        let created = create_ledger(&self.shared.client, config).await;
        let (record, new_writer) = match created {
            Ok(w) => match w.append_wait(encode(snapshot)?).await {
                Ok(_) => {
                    crash_point::reached(crash_point::CURSOR_LEDGER_CREATED);
                    let record = CursorRecord {
                        first_unacked: snapshot.first_unacked,
                        acked_ranges: Vec::new(),
                        properties: snapshot.properties.clone(),
                        updated_ms: self.shared.clock.now_ms(),
                        batch_acks: Vec::new(),
                        cursor_ledger: Some(w.id()),
                    };
                    (record, Some(w))
                }
                Err(e) => {
                    warn!(error = %e, "new cursor ledger failed its first append");
                    let id = w.id();
                    drop(w);
                    let _ = delete_ledger(&self.shared.client, id).await;
                    (self.inline(snapshot), None)
                }
            },
            Err(e) => {
                debug!(error = %e, "no cursor ledger can be created: state kept in the record");
                (self.inline(snapshot), None)
            }
        };
        match self.write_record(&record).await {
            Ok(()) => {}
            Err(e) => {
                if let Some(w) = new_writer {
                    let id = w.id();
                    drop(w);
                    let _ = delete_ledger(&self.shared.client, id).await;
                }
                return Err(e);
            }
        }
        if record.cursor_ledger.is_some() {
            crash_point::reached(crash_point::CURSOR_LEDGER_RECORDED);
        }
        let previous = std::mem::replace(&mut self.stored_ledger, record.cursor_ledger);
        let old_writer = std::mem::replace(&mut self.writer, new_writer);
        self.writer_entries = u64::from(self.writer.is_some());
        self.writer_created = self.writer.as_ref().map(|_| self.shared.clock.now());
        if let Some(w) = old_writer {
            let _ = w.close().await;
        }
        if let Some(old) = previous.filter(|old| Some(*old) != self.stored_ledger)
            && let Err(e) = delete_ledger(&self.shared.client, old).await
        {
            warn!(ledger = %old, error = %e, "could not delete the previous cursor ledger");
        }
        if let Some(id) = self.stored_ledger {
            debug!(ledger = %id, "cursor ledger rolled over");
        }
        Ok(())
    }

    /// The whole snapshot as a record of its own (no cursor ledger).
    fn inline(&self, snapshot: &CursorRecord) -> CursorRecord {
        CursorRecord {
            updated_ms: self.shared.clock.now_ms(),
            cursor_ledger: None,
            ..snapshot.clone()
        }
    }

    /// CAS of the record; a conflict fences the cursor.
    async fn write_record(&mut self, record: &CursorRecord) -> MlResult<()> {
        let expected = self.version.map_or(Expected::Absent, Expected::Version);
        match self.records.put(&self.key, record, expected).await {
            Ok(PutOutcome::Written(v)) => {
                self.version = Some(v);
                Ok(())
            }
            Ok(PutOutcome::Conflict { .. }) => Err(self.fence("the cursor record changed")),
            Err(e) if e.is_indeterminate() => {
                // Only a stored record equal to ours (timestamp included) proves the write
                // landed; anything else is another writer's and must never be adopted.
                match self.records.get(&self.key).await {
                    Ok(Some((stored, v))) if stored == *record => {
                        self.version = Some(v);
                        Ok(())
                    }
                    Ok(Some((_, v))) if Some(v) != self.version => {
                        Err(self.fence("the cursor record changed"))
                    }
                    Ok(None) if self.version.is_some() => {
                        Err(self.fence("the cursor record was deleted"))
                    }
                    _ => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The last write of a closing cursor. A snapshot of at most [`INLINE_ON_CLOSE_BYTES_MAX`]
    /// goes whole into the record (one CAS), as Pulsar persists a closing cursor's position
    /// in the metadata store: the next owner claims it and is done — no cursor ledger to
    /// recover, no bookie read. The ledger the record named is then deleted in the background
    /// (a crash before that leaves it unreferenced, as a crash mid-rollover does). A larger
    /// snapshot (or a record write that fails) is appended to the cursor ledger if it changed,
    /// and the ledger sealed, so the next owner reads it without fencing.
    pub async fn close_with(&mut self, snapshot: &CursorRecord, dirty: bool) -> MlResult<()> {
        if self.fenced {
            return Err(self.fenced_error());
        }
        if !dirty && self.stored_ledger.is_none() {
            return Ok(()); // the record holds the state already
        }
        if encode(snapshot)?.len() <= INLINE_ON_CLOSE_BYTES_MAX {
            match self.write_record(&self.inline(snapshot)).await {
                Ok(()) => {
                    drop(self.writer.take());
                    if let Some(old) = self.stored_ledger.take() {
                        let delete = delete_ledger(&self.shared.client, old);
                        tokio::spawn(async move {
                            if let Err(e) = delete.await {
                                warn!(ledger = %old, error = %e,
                                    "could not delete a closed cursor's ledger");
                            }
                        });
                    }
                    return Ok(());
                }
                Err(e) if e.is_fenced() => return Err(e),
                Err(e) => {
                    debug!(error = %e, "closing cursor: record write failed; using its ledger");
                }
            }
        }
        let r = if dirty {
            self.persist(snapshot).await
        } else {
            Ok(())
        };
        if let Some(w) = self.writer.take()
            && let Err(e) = w.close().await
        {
            debug!(error = %e, "cursor ledger close failed; the next owner recovers it");
        }
        r
    }

    /// Deletes the cursor ledger (the record is deleted by the caller).
    pub async fn delete_ledger(&mut self) {
        self.writer = None;
        if let Some(id) = self.stored_ledger.take()
            && let Err(e) = delete_ledger(&self.shared.client, id).await
        {
            warn!(ledger = %id, error = %e, "could not delete a deleted cursor's ledger");
        }
    }
}

fn encode(snapshot: &CursorRecord) -> MlResult<Bytes> {
    serde_json::to_vec(snapshot)
        .map(Bytes::from)
        .map_err(|e| ManagedLedgerError::InvalidConfig(format!("cursor snapshot: {e}")))
}

/// The cursor's state as its record says: the last snapshot in the cursor ledger the record
/// names (recovered, which fences a previous owner still appending), or the record itself.
pub(crate) async fn recover_state(
    shared: &Shared,
    cursor: &str,
    record: CursorRecord,
) -> MlResult<CursorRecord> {
    let Some(id) = record.cursor_ledger else {
        return Ok(record);
    };
    let lost = |reason: String| ManagedLedgerError::CursorLedger {
        name: shared.name.clone(),
        cursor: cursor.to_owned(),
        ledger: id,
        reason,
    };
    let reader = match recover_ledger(&shared.client, id).await {
        Ok(r) => r,
        Err(LedgerError::NoSuchLedger(_)) => return Err(lost("the ledger does not exist".into())),
        Err(e) => return Err(e.into()),
    };
    let last = reader.metadata().last_entry_id;
    if last < 0 {
        // Created, but its first snapshot never landed: the record's floor is the state.
        return Ok(record);
    }
    let entry = reader.read(last as u64).await?;
    let mut snapshot: CursorRecord = serde_json::from_slice(&entry.payload)
        .map_err(|e| lost(format!("snapshot {last} does not parse: {e}")))?;
    snapshot.cursor_ledger = Some(id);
    info!(%cursor, ledger = %id, entry = last, "cursor state recovered from its ledger");
    Ok(snapshot)
}
