//! Recovery: how a ledger whose writer may be dead (or alive on a partitioned broker) gets
//! closed, following BookKeeper's rules.
//!
//! 1. Closed already → nothing to do. Otherwise the state goes to `in_recovery` (CAS), which
//!    also stops the writer from recording ensemble changes.
//! 2. **Fence** the ledger on the bookies of the last ensemble. Enough must answer that no ack
//!    quorum can still form without a fenced bookie: every write set (Qw consecutive positions)
//!    must hold at least Qw − Qa + 1 fenced bookies — implied by E − Qa + 1 answers, and exactly
//!    the condition BookKeeper checks. Fewer → [`LedgerError::NotEnoughReplicas`].
//! 3. Start after the highest LAC reported (and never below the last ensemble's first entry − 1,
//!    since entries before an ensemble change were confirmed). Read forward with fencing reads
//!    sent to the whole write set: an entry **exists** if any replica returns it intact; the end
//!    is the first entry that Qw − Qa + 1 replicas of its write set report missing (then at most
//!    Qa − 1 could hold it, so it was never acknowledged). If neither can be decided (too many
//!    replicas failing), recovery fails rather than guess.
//! 4. **Re-replicate** each recovered entry to its whole write set with recovery adds (accepted
//!    on fenced ledgers); a bookie that fails is replaced by an ensemble change from the first
//!    recovered entry, recorded with CAS.
//! 5. CAS the state to closed with the last entry and the length. The length is the running
//!    total the last entry carries (the last recovered one, else the entry at LAC: one read,
//!    whatever the ledger's size); only a ledger written before entries carried it is summed
//!    by reading it whole. If another recoverer won, its result stands.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use magnetar_metadata::{EntryId, LedgerId, Version};
use tracing::{info, warn};

use super::Shared;
use super::error::{LedgerError, LedgerResult};
use super::metadata::{LedgerMetadata, LedgerState, write_set};
use super::placement::replace_failed;
use super::reader::{payload_bytes, read_entry};
use crate::api::{BookieError, BookieId, Entry};

/// Whole recovery attempts (each starts from a fresh read of the metadata) before giving up.
const RECOVERY_ATTEMPTS_MAX: u32 = 8;

enum Step<T> {
    Done(T),
    /// The metadata changed under us: start over.
    Retry,
}

/// Recovers and closes ledger `id` if needed; returns the closed ledger's metadata.
pub(crate) async fn recover(shared: &Arc<Shared>, id: LedgerId) -> LedgerResult<LedgerMetadata> {
    for _ in 0..RECOVERY_ATTEMPTS_MAX {
        let (meta, version) = shared.ledgers.read(id).await?;
        if meta.is_closed() {
            return Ok(meta);
        }
        match attempt(shared, id, meta, version).await? {
            Step::Done(meta) => return Ok(meta),
            Step::Retry => continue,
        }
    }
    Err(LedgerError::NotEnoughReplicas {
        ledger: id,
        context: format!(
            "recovery raced with other metadata writers {RECOVERY_ATTEMPTS_MAX} times"
        ),
    })
}

async fn attempt(
    shared: &Arc<Shared>,
    id: LedgerId,
    mut meta: LedgerMetadata,
    mut version: Version,
) -> LedgerResult<Step<LedgerMetadata>> {
    if meta.state == LedgerState::Open {
        meta.state = LedgerState::InRecovery;
        match shared.ledgers.write(id, &meta, version).await? {
            Some(v) => version = v,
            None => return Ok(Step::Retry),
        }
        info!("ledger marked in recovery");
    }

    // 2. Fence.
    let ensemble = meta.last_ensemble().bookies.clone();
    let limit = shared.options.read_timeout();
    let answers = join_all(ensemble.iter().map(|b| {
        let client = shared.registry.client(b);
        let timer = shared.options.clock.sleep(limit);
        async move { Shared::call(limit, timer, client.fence(id)).await }
    }))
    .await;
    let mut fenced = vec![false; ensemble.len()];
    let mut failed: HashSet<BookieId> = HashSet::new();
    let mut lac = meta.last_ensemble().first_entry as i64 - 1;
    let mut errors = Vec::new();
    for (pos, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(r) => {
                fenced[pos] = true;
                lac = lac.max(r.lac);
            }
            Err(e) => {
                warn!(bookie = %ensemble[pos], error = %e, "fencing failed on a bookie");
                errors.push(format!("{}: {e}", ensemble[pos]));
                if e.is_bookie_failure() {
                    shared.registry.mark_failed(&ensemble[pos]);
                    failed.insert(ensemble[pos].clone());
                }
            }
        }
    }
    let (e, qw, qa) = (meta.ensemble_size, meta.write_quorum, meta.ack_quorum);
    let needed = (qw - qa + 1) as usize;
    let covered = (0..u64::from(e)).all(|start| {
        write_set(start, e, qw)
            .into_iter()
            .filter(|&p| fenced.get(p).copied().unwrap_or(false))
            .count()
            >= needed
    });
    if !covered {
        return Err(LedgerError::NotEnoughReplicas {
            ledger: id,
            context: format!(
                "fenced {} of {e} bookies of the last ensemble, but every write set of {qw} \
                 needs {needed} fenced so that no ack quorum of {qa} can form ({})",
                fenced.iter().filter(|f| **f).count(),
                errors.join("; ")
            ),
        });
    }
    info!(lac, "fenced; reading the tail");

    // 3. Read forward from LAC+1.
    let mut recovered: Vec<Entry> = Vec::new();
    let mut next = (lac + 1) as u64;
    while let Some(entry) = recovery_read(shared, id, &meta, next).await? {
        recovered.push(entry);
        next += 1;
    }
    let last_entry = recovered.last().map_or(lac, |e| e.entry.0 as i64);
    info!(
        recovered = recovered.len(),
        last_entry, "tail found; re-replicating"
    );

    // 4. Re-replicate.
    if !recovered.is_empty() {
        match rereplicate(shared, id, meta, version, &recovered, failed).await? {
            Step::Done((m, v)) => (meta, version) = (m, v),
            Step::Retry => return Ok(Step::Retry),
        }
    }

    // 5. Close.
    let length = ledger_length(shared, id, &meta, lac, &recovered).await?;
    meta.state = LedgerState::Closed;
    meta.last_entry_id = last_entry;
    meta.length_bytes = length;
    match shared.ledgers.write(id, &meta, version).await? {
        Some(_) => {
            info!(
                last_entry,
                length_bytes = length,
                "ledger recovered and closed"
            );
            Ok(Step::Done(meta))
        }
        None => Ok(Step::Retry),
    }
}

/// Payload bytes of entries 0..=last recovered, from the running length the entries carry.
async fn ledger_length(
    shared: &Shared,
    id: LedgerId,
    meta: &LedgerMetadata,
    lac: i64,
    recovered: &[Entry],
) -> LedgerResult<u64> {
    if let Some(length) = recovered.last().and_then(|e| e.length) {
        return Ok(length);
    }
    let tail_bytes: u64 = recovered.iter().map(|e| e.payload.len() as u64).sum();
    if lac < 0 {
        return Ok(tail_bytes);
    }
    if recovered.is_empty()
        && let Some(length) = read_entry(shared, id, meta, lac as u64).await?.length
    {
        return Ok(length);
    }
    warn!(
        lac,
        "entries carry no running length (written by an older version): summing the ledger"
    );
    Ok(payload_bytes(shared, id, meta, lac).await? + tail_bytes)
}

/// Reads `entry` with fencing reads from its whole write set: `Some` if any replica has it
/// intact, `None` if enough replicas report it missing, an error if that cannot be decided.
async fn recovery_read(
    shared: &Shared,
    id: LedgerId,
    meta: &LedgerMetadata,
    entry: u64,
) -> LedgerResult<Option<Entry>> {
    let bookies = meta.write_set_bookies(entry);
    let limit = shared.options.read_timeout();
    let needed_missing = (meta.write_quorum - meta.ack_quorum + 1) as usize;
    let mut calls: FuturesUnordered<_> = bookies
        .iter()
        .map(|b| {
            let client = shared.registry.client(b);
            let timer = shared.options.clock.sleep(limit);
            let bookie = b.clone();
            async move {
                (
                    bookie,
                    Shared::call(limit, timer, client.read(id, EntryId(entry), true)).await,
                )
            }
        })
        .collect();
    let mut missing = 0;
    let mut reasons = Vec::new();
    while let Some((bookie, result)) = calls.next().await {
        match result {
            Ok(r) if intact(&r.entry, id, entry) => {
                return Ok(Some(r.entry));
            }
            Ok(_) => reasons.push(format!("{bookie}: corrupt")),
            Err(BookieError::NoSuchEntry { .. } | BookieError::NoSuchLedger(_)) => {
                missing += 1;
                if missing >= needed_missing {
                    // Decided: it was never acknowledged. Still give the other replicas a moment,
                    // so an unacknowledged copy that exists is kept rather than lost by a race.
                    let grace = shared.options.clock.sleep(shared.options.speculative());
                    tokio::pin!(grace);
                    loop {
                        tokio::select! {
                            next = calls.next() => match next {
                                Some((_, Ok(r))) if intact(&r.entry, id, entry) => {
                                    return Ok(Some(r.entry));
                                }
                                Some(_) => {}
                                None => return Ok(None),
                            },
                            () = &mut grace => return Ok(None),
                        }
                    }
                }
            }
            Err(e) => reasons.push(format!("{bookie}: {e}")),
        }
    }
    Err(LedgerError::NotEnoughReplicas {
        ledger: id,
        context: format!(
            "cannot tell whether entry {entry} exists: {missing} of {} replicas report it \
             missing (need {needed_missing}), others failed ({})",
            bookies.len(),
            reasons.join("; ")
        ),
    })
}

fn intact(e: &Entry, ledger: LedgerId, entry: u64) -> bool {
    e.ledger == ledger && e.entry == EntryId(entry) && e.is_intact()
}

/// Sends every recovered entry to every bookie of its write set with recovery adds, replacing
/// bookies that fail; returns the metadata (with any ensemble change) and its version.
async fn rereplicate(
    shared: &Shared,
    id: LedgerId,
    mut meta: LedgerMetadata,
    mut version: Version,
    entries: &[Entry],
    mut failed: HashSet<BookieId>,
) -> LedgerResult<Step<(LedgerMetadata, Version)>> {
    let first = entries.first().map_or(0, |e| e.entry.0);
    let mut done: HashSet<(u64, BookieId)> = HashSet::new();
    let limit = shared.options.add_timeout();
    for _ in 0..shared.options.ensemble_change_attempts_max.max(1) {
        let current = meta.last_ensemble().bookies.clone();
        if current.iter().any(|b| failed.contains(b)) {
            let registered = shared.registry.registered().await?;
            let next = replace_failed(&registered, &current, &failed, &shared.options.random)?;
            meta.set_ensemble_from(first, next);
            match shared.ledgers.write(id, &meta, version).await? {
                Some(v) => version = v,
                None => return Ok(Step::Retry),
            }
            info!(from_entry = first, ensemble = ?meta.last_ensemble().bookies,
                "ensemble changed during recovery");
        }
        // Collected before awaiting: an iterator borrowing `&Entry` held across the await would
        // make the whole recovery future not provably `Send`.
        let sends: Vec<_> = entries
            .iter()
            .flat_map(|entry| {
                meta.write_set_bookies(entry.entry.0)
                    .into_iter()
                    .filter(|b| !done.contains(&(entry.entry.0, b.clone())))
                    .map(|b| {
                        let client = shared.registry.client(&b);
                        let timer = shared.options.clock.sleep(limit);
                        let entry = entry.clone();
                        async move {
                            let n = entry.entry.0;
                            (
                                n,
                                b,
                                Shared::call(limit, timer, client.add(entry, true)).await,
                            )
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(sends)
            .buffer_unordered(shared.options.read_parallelism.max(1) * 4)
            .collect()
            .await;
        let mut all_ok = true;
        for (n, bookie, result) in results {
            match result {
                Ok(()) => {
                    done.insert((n, bookie));
                }
                Err(e) if e.is_bookie_failure() => {
                    warn!(%bookie, entry = n, error = %e, "recovery add failed");
                    shared.registry.mark_failed(&bookie);
                    failed.insert(bookie);
                    all_ok = false;
                }
                Err(error) => return Err(LedgerError::Bookie { bookie, error }),
            }
        }
        if all_ok {
            return Ok(Step::Done((meta, version)));
        }
    }
    Err(LedgerError::NotEnoughReplicas {
        ledger: id,
        context: "re-replicating the recovered tail kept failing".into(),
    })
}
