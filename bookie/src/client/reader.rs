//! [`LedgerReader`]: reads a closed ledger, or tails an open one up to its LAC.
//!
//! A read asks the replicas of the entry's write set one after the other — bookies that failed
//! recently last — and, when one has not answered within `speculative_read_timeout_ms`, the next
//! one as well. Every entry's CRC32C is checked: a corrupt copy (or a bookie answering `Corrupt`)
//! counts as that replica failing, and the entry comes from another one. Range reads use the
//! bookies' batched `read_range` when every bookie holds every entry (Qw = E) and parallel
//! single reads when entries are striped.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::{self, FuturesUnordered, StreamExt, TryStreamExt};
use magnetar_metadata::{EntryId, LedgerId};
use tracing::{Instrument, debug, debug_span};

use super::Shared;
use super::error::{LedgerError, LedgerResult};
use super::metadata::LedgerMetadata;
use crate::api::{BookieError, BookieId, Entry, NO_ENTRY, ReadResult};

/// Longest pause of a long poll that every bookie answered at once without progress.
const IDLE_POLL_PAUSE: Duration = Duration::from_millis(200);

/// Reads one ledger. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct LedgerReader {
    shared: Arc<Shared>,
    id: LedgerId,
    meta: RwLock<LedgerMetadata>,
    /// Highest LAC learned (open ledgers).
    lac: AtomicI64,
}

impl LedgerReader {
    pub(crate) async fn open(
        shared: Arc<Shared>,
        id: LedgerId,
        meta: LedgerMetadata,
    ) -> LedgerResult<Self> {
        // Entries before the last ensemble change were all confirmed when it was made.
        let floor = meta.last_ensemble().first_entry as i64 - 1;
        let reader = LedgerReader {
            shared,
            id,
            meta: RwLock::new(meta),
            lac: AtomicI64::new(floor),
        };
        if !reader.is_closed() {
            reader.read_last_add_confirmed().await?;
        }
        Ok(reader)
    }

    pub fn id(&self) -> LedgerId {
        self.id
    }

    /// The metadata as this reader knows it.
    pub fn metadata(&self) -> LedgerMetadata {
        self.meta.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn is_closed(&self) -> bool {
        self.meta
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_closed()
    }

    /// The last readable entry: the last entry of a closed ledger, the LAC learned so far of an
    /// open one (-1: none).
    pub fn last_add_confirmed(&self) -> i64 {
        let meta = self.meta.read().unwrap_or_else(|p| p.into_inner());
        if meta.is_closed() {
            meta.last_entry_id
        } else {
            self.lac.load(Ordering::Acquire)
        }
    }

    /// Asks the bookies of the last ensemble for their LAC (no waiting) and returns the highest
    /// known. Also notices when the ledger was closed meanwhile.
    pub async fn read_last_add_confirmed(&self) -> LedgerResult<i64> {
        self.poll_lac(-1, Duration::ZERO).await
    }

    /// For tailing readers: waits until the LAC exceeds `previous` or `timeout` passes, and
    /// returns the LAC then (possibly still `previous`).
    pub async fn read_lac_long_poll(&self, previous: i64, timeout: Duration) -> LedgerResult<i64> {
        let cap = Duration::from_millis(self.shared.options.read_lac_long_poll_ms);
        self.poll_lac(previous, timeout.min(cap))
            .instrument(debug_span!("read_lac", ledger = %self.id, previous))
            .await
    }

    async fn poll_lac(&self, previous: i64, wait: Duration) -> LedgerResult<i64> {
        let known = self.last_add_confirmed();
        if self.is_closed() || known > previous {
            return Ok(known);
        }
        let bookies = self.metadata().last_ensemble().bookies.clone();
        let limit = wait + self.shared.options.read_timeout();
        let mut calls: FuturesUnordered<_> = bookies
            .iter()
            .map(|b| {
                let client = self.shared.registry.client(b);
                let timer = self.shared.options.clock.sleep(limit);
                let id = self.id;
                async move { Shared::call(limit, timer, client.read_lac(id, previous, wait)).await }
            })
            .collect();
        let clock = &self.shared.options.clock;
        let started = clock.now();
        let mut answered = 0;
        let mut best = known;
        while let Some(result) = calls.next().await {
            let lac = match result {
                Ok(lac) => lac,
                // The bookie has nothing of the ledger yet: its LAC is "none".
                Err(BookieError::NoSuchLedger(_)) => NO_ENTRY,
                Err(_) => continue,
            };
            answered += 1;
            best = best.max(lac);
            self.lac.fetch_max(lac, Ordering::AcqRel);
            // A long poll is answered by the first bookie that moved; a plain read asks every
            // bookie of the ensemble and takes the highest LAC (with E > Qw, any one bookie may
            // have seen only some of the entries).
            if lac > previous && !wait.is_zero() {
                break;
            }
        }
        if best <= previous {
            // No progress: the ensemble may have changed or the ledger been closed (its last
            // entry is never covered by a LAC carried on an entry), so look at the metadata.
            if answered == 0 {
                debug!(ledger = %self.id, "no bookie answered a LAC read");
            }
            self.refresh().await?;
            let rest = wait.saturating_sub(clock.now().saturating_duration_since(started));
            if !rest.is_zero() && self.last_add_confirmed() <= previous {
                // Every bookie answered at once (none knows the ledger yet): do not let a
                // tailing reader spin.
                clock.sleep(rest.min(IDLE_POLL_PAUSE)).await;
            }
        }
        Ok(self.last_add_confirmed())
    }

    /// Re-reads the metadata (ensemble changes, closing).
    async fn refresh(&self) -> LedgerResult<()> {
        let (meta, _) = self.shared.ledgers.read(self.id).await?;
        let floor = meta.last_ensemble().first_entry as i64 - 1;
        self.lac.fetch_max(floor, Ordering::AcqRel);
        *self.meta.write().unwrap_or_else(|p| p.into_inner()) = meta;
        Ok(())
    }

    /// Refuses entries past the last readable one (after asking once more for an open ledger).
    async fn check_readable(&self, last: u64) -> LedgerResult<()> {
        if (last as i64) <= self.last_add_confirmed() {
            return Ok(());
        }
        if !self.is_closed() {
            self.read_last_add_confirmed().await?;
        }
        let last_readable = self.last_add_confirmed();
        if (last as i64) <= last_readable {
            Ok(())
        } else {
            Err(LedgerError::EntryOutOfRange {
                ledger: self.id,
                entry: last,
                last_readable,
            })
        }
    }

    /// One entry, verified.
    pub async fn read(&self, entry: u64) -> LedgerResult<Entry> {
        self.check_readable(entry).await?;
        async {
            let meta = self.metadata();
            match read_entry(&self.shared, self.id, &meta, entry).await {
                Err(e) if !meta.is_closed() && self.metadata_moved(&meta).await? => {
                    debug!(error = %e, "retrying with fresh metadata");
                    read_entry(&self.shared, self.id, &self.metadata(), entry).await
                }
                other => other,
            }
        }
        .instrument(debug_span!("read", ledger = %self.id, entry))
        .await
    }

    /// After a failed read of an open ledger: re-reads the metadata and says whether the
    /// ensembles changed since `seen` (the writer replaced a bookie).
    async fn metadata_moved(&self, seen: &LedgerMetadata) -> LedgerResult<bool> {
        self.refresh().await?;
        Ok(self.metadata().ensembles != seen.ensembles)
    }

    /// Entries `first..=last`, verified, in order.
    pub async fn read_range(&self, first: u64, last: u64) -> LedgerResult<Vec<Entry>> {
        if first > last {
            return Ok(Vec::new());
        }
        self.check_readable(last).await?;
        async {
            let meta = self.metadata();
            match read_entries(&self.shared, self.id, &meta, first, last).await {
                Err(e) if !meta.is_closed() && self.metadata_moved(&meta).await? => {
                    debug!(error = %e, "retrying with fresh metadata");
                    read_entries(&self.shared, self.id, &self.metadata(), first, last).await
                }
                other => other,
            }
        }
        .instrument(debug_span!("read_range", ledger = %self.id, first, last))
        .await
    }
}

/// The replicas of `entry`, bookies that failed recently last.
fn replicas(shared: &Shared, meta: &LedgerMetadata, entry: u64) -> Vec<BookieId> {
    let mut bookies = meta.write_set_bookies(entry);
    bookies.sort_by_key(|b| shared.registry.is_suspect(b));
    bookies
}

fn intact(result: &ReadResult, ledger: LedgerId, entry: u64) -> bool {
    result.entry.ledger == ledger
        && result.entry.entry == EntryId(entry)
        && result.entry.is_intact()
}

/// Writes the verified `entry` over the replicas found corrupt, in the background, as recovery
/// adds (accepted on fenced and closed ledgers): the bookie indexes the new copy and the damaged
/// one becomes garbage its compaction reclaims. (BookKeeper's scrubber marks such a ledger for
/// re-replication; the reader holds a good copy already, so it repairs at once.)
fn repair(shared: &Shared, bookies: Vec<BookieId>, entry: &Entry) {
    for bookie in bookies {
        let client = shared.registry.client(&bookie);
        let limit = shared.options.add_timeout();
        let timer = shared.options.clock.sleep(limit);
        let entry = entry.clone();
        tokio::spawn(async move {
            let (ledger, id) = (entry.ledger, entry.entry);
            match Shared::call(limit, timer, client.add(entry, true)).await {
                Ok(()) => tracing::info!(%bookie, %ledger, entry = %id, "corrupt replica repaired"),
                Err(e) => {
                    tracing::warn!(%bookie, %ledger, entry = %id, error = %e, "repairing a corrupt replica failed");
                }
            }
        });
    }
}

/// Reads one entry from its write set with speculative retries; fails only when every replica
/// failed to deliver it intact. Replicas found corrupt on the way are repaired from it.
pub(crate) async fn read_entry(
    shared: &Shared,
    ledger: LedgerId,
    meta: &LedgerMetadata,
    entry: u64,
) -> LedgerResult<Entry> {
    let order = replicas(shared, meta, entry);
    let limit = shared.options.read_timeout();
    let speculative = shared.options.speculative();
    let mut next = 0;
    let mut inflight = FuturesUnordered::new();
    let mut reasons = Vec::new();
    let mut corrupt = Vec::new();
    loop {
        if inflight.is_empty() {
            let Some(bookie) = order.get(next).cloned() else {
                break;
            };
            next += 1;
            inflight.push(read_from(shared, bookie, ledger, entry, limit));
        }
        tokio::select! {
            Some((bookie, result)) = inflight.next() => match result {
                Ok(r) if intact(&r, ledger, entry) => {
                    shared.registry.mark_ok(&bookie);
                    repair(shared, std::mem::take(&mut corrupt), &r.entry);
                    return Ok(r.entry);
                }
                Ok(_) | Err(BookieError::Corrupt { .. }) => {
                    tracing::warn!(%bookie, %ledger, entry, "corrupt replica; reading another");
                    reasons.push(format!("{bookie}: corrupt"));
                    corrupt.push(bookie);
                    if let Some(b) = order.get(next).cloned() {
                        next += 1;
                        inflight.push(read_from(shared, b, ledger, entry, limit));
                    }
                }
                Err(e) => {
                    if e.is_bookie_failure() {
                        shared.registry.mark_failed(&bookie);
                    }
                    reasons.push(format!("{bookie}: {e}"));
                    if let Some(b) = order.get(next).cloned() {
                        next += 1;
                        inflight.push(read_from(shared, b, ledger, entry, limit));
                    }
                }
            },
            () = shared.options.clock.sleep(speculative), if next < order.len() => {
                if let Some(b) = order.get(next).cloned() {
                    debug!(bookie = %b, entry, "speculative read");
                    next += 1;
                    inflight.push(read_from(shared, b, ledger, entry, limit));
                }
            }
        }
    }
    Err(LedgerError::Unreadable {
        ledger,
        entry,
        reasons: reasons.join("; "),
    })
}

fn read_from(
    shared: &Shared,
    bookie: BookieId,
    ledger: LedgerId,
    entry: u64,
    limit: Duration,
) -> impl Future<Output = (BookieId, Result<ReadResult, BookieError>)> + use<> {
    let client = shared.registry.client(&bookie);
    let timer = shared.options.clock.sleep(limit);
    async move {
        let r = Shared::call(limit, timer, client.read(ledger, EntryId(entry), false)).await;
        (bookie, r)
    }
}

/// Entries `first..=last` of a ledger described by `meta`, verified, in order.
pub(crate) async fn read_entries(
    shared: &Shared,
    ledger: LedgerId,
    meta: &LedgerMetadata,
    first: u64,
    last: u64,
) -> LedgerResult<Vec<Entry>> {
    if meta.write_quorum < meta.ensemble_size {
        return stream::iter(first..=last)
            .map(|e| read_entry(shared, ledger, meta, e))
            .buffered(shared.options.read_parallelism.max(1))
            .try_collect()
            .await;
    }
    let mut out = Vec::with_capacity((last - first + 1).min(1 << 16) as usize);
    let mut cur = first;
    while cur <= last {
        let bookie = replicas(shared, meta, cur)
            .into_iter()
            .next()
            .ok_or_else(|| LedgerError::BadMetadata {
                ledger,
                reason: "empty write set".into(),
            })?;
        let seg_end = meta
            .ensembles
            .iter()
            .find(|s| s.first_entry > cur)
            .map_or(u64::MAX, |s| s.first_entry - 1);
        let chunk_last = last.min(seg_end);
        let client = shared.registry.client(&bookie);
        let answer = Shared::call(
            shared.options.read_timeout(),
            shared.options.clock.sleep(shared.options.read_timeout()),
            client.read_range(
                ledger,
                EntryId(cur),
                EntryId(chunk_last),
                shared.options.read_batch_max_entries.max(1),
                shared.options.read_batch_max_bytes,
            ),
        )
        .await;
        let before = out.len();
        match answer {
            Ok(entries) => {
                shared.registry.mark_ok(&bookie);
                for e in entries {
                    if e.ledger != ledger || e.entry.0 != cur || cur > chunk_last || !e.is_intact()
                    {
                        break;
                    }
                    out.push(e);
                    cur += 1;
                }
            }
            Err(e) => {
                if e.is_bookie_failure() {
                    shared.registry.mark_failed(&bookie);
                }
                debug!(%bookie, error = %e, "range read failed; reading entry by entry");
            }
        }
        if out.len() == before {
            // Nothing usable from that bookie: this entry from any replica, then go on.
            out.push(read_entry(shared, ledger, meta, cur).await?);
            cur += 1;
        }
    }
    Ok(out)
}

/// Sum of payload sizes of entries `0..=last` (recovery needs the ledger's length).
pub(crate) async fn payload_bytes(
    shared: &Shared,
    ledger: LedgerId,
    meta: &LedgerMetadata,
    last: i64,
) -> LedgerResult<u64> {
    let mut total = 0u64;
    let mut cur = 0u64;
    let chunk = u64::from(shared.options.read_batch_max_entries.max(1));
    while (cur as i64) <= last {
        let end = (cur + chunk - 1).min(last as u64);
        let entries = read_entries(shared, ledger, meta, cur, end).await?;
        total += entries.iter().map(|e| e.payload.len() as u64).sum::<u64>();
        cur = end + 1;
    }
    Ok(total)
}
