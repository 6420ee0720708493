//! A replication worker: claims a marked ledger, copies what lost bookies held to bookies the
//! placement policy chooses, records each replacement by compare-and-set and clears the mark.
//!
//! Per ensemble segment and lost position `p`: the entries whose write set holds `p` are read
//! from a surviving member of their write set and added to the replacement with the recovery
//! flag (accepted on fenced ledgers); only once all are stored does the record name the
//! replacement — a crash before leaves the old record and a mark to retry, never a record
//! naming a bookie without the entries.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use magnetar_metadata::{EntryId, Expected, LedgerId, MetadataStore, PutOutcome};
use rand::seq::SliceRandom;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{AutoRecoveryOptions, MARKS_PREFIX, lock_key, mark_key};
use crate::api::BookieId;
use crate::client::LedgerClient;
use crate::client::metadata::{LedgerState, write_set};
use crate::client::{LedgerError, LedgerResult};

/// What one pass over a ledger achieved.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// No replica is on a lost bookie any more (or the ledger is gone): the mark can go.
    Done,
    /// Something is left (an open ledger's last segment, no bookie to copy to yet).
    Pending(String),
}

pub async fn run(
    client: LedgerClient,
    store: Arc<dyn MetadataStore>,
    me: BookieId,
    options: AutoRecoveryOptions,
    stop: CancellationToken,
) {
    let clock = client.clock();
    let mut session = None;
    // Marks that could not be finished wait before the next attempt, longer each time (an
    // open ledger's last segment can take hours to close). Bounded by the marks listed.
    let mut retry_at: HashMap<LedgerId, (u64, u32)> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = clock.sleep(options.poll_interval) => {}
        }
        let s = match &session {
            Some(s) if !magnetar_metadata::Session::is_lost(s) => s,
            _ => match store.create_session(options.session_ttl).await {
                Ok(s) => session.insert(s),
                Err(e) => {
                    warn!(error = %e, "replication worker has no metadata session");
                    continue;
                }
            },
        };
        let marks = match store.list(MARKS_PREFIX).await {
            Ok(l) => l.entries,
            Err(e) => {
                warn!(error = %e, "replication worker cannot list marks");
                continue;
            }
        };
        let now = clock.now_ms();
        let mut marks: Vec<_> = marks
            .into_iter()
            .filter_map(|(k, v)| {
                let id = k.strip_prefix(MARKS_PREFIX)?.parse::<u64>().ok()?;
                Some((LedgerId(id), v.version))
            })
            .collect();
        let listed: std::collections::HashSet<LedgerId> = marks.iter().map(|(l, _)| *l).collect();
        retry_at.retain(|l, _| listed.contains(l));
        marks.retain(|(l, _)| retry_at.get(l).is_none_or(|(at, _)| *at <= now));
        if marks.is_empty() {
            continue;
        }
        // Read once per pass, not once per ledger.
        let draining = match super::decommissioned(&store).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "replication worker cannot read the decommissioned bookies");
                continue;
            }
        };
        // Workers spread over the marks instead of queueing on the same lock.
        client.random().with(|r| marks.shuffle(r));
        for (ledger, version) in marks {
            if stop.is_cancelled() {
                break;
            }
            let lock = lock_key(ledger);
            let held = match store
                .put_ephemeral(&lock, Bytes::from(me.0.clone()), Expected::Absent, s)
                .await
            {
                Ok(PutOutcome::Written(v)) => v,
                Ok(PutOutcome::Conflict { .. }) => continue, // another worker has it
                Err(e) => {
                    warn!(error = %e, "replication worker cannot take a lock");
                    break;
                }
            };
            // Only this worker's lock is released (a lost session's lock may be another's now).
            let release = || store.delete(&lock, Expected::Version(held));
            // Another worker may have finished it between the listing and the lock.
            let (version, missing, marked_ms) = match store.get(&mark_key(ledger)).await {
                Ok(Some(v)) => {
                    let (missing, marked_ms) =
                        serde_json::from_slice::<super::UnderReplicated>(&v.value)
                            .map(|m| (m.missing.into_iter().collect(), m.marked_ms))
                            .unwrap_or_else(|_| (BTreeSet::new(), clock.now_ms()));
                    (v.version, missing, marked_ms)
                }
                Ok(None) => {
                    let _ = release().await;
                    continue;
                }
                Err(_) => (version, BTreeSet::new(), clock.now_ms()),
            };
            let grace_over = clock.now_ms().saturating_sub(marked_ms)
                >= options.open_ledger_grace.as_millis() as u64;
            let pass = tokio::select! {
                () = stop.cancelled() => None,
                () = s.lost() => None,
                r = replicate(&client, ledger, &missing, &draining, grace_over, &options) => Some(r),
            };
            let backoff = |retry_at: &mut HashMap<LedgerId, (u64, u32)>| {
                let attempts = retry_at.get(&ledger).map_or(0, |(_, n)| *n);
                let wait_ms = (options.poll_interval.as_millis() as u64)
                    .saturating_mul(1 << attempts.min(16))
                    .min(RETRY_WAIT_MS_MAX);
                retry_at.insert(
                    ledger,
                    (clock.now_ms().saturating_add(wait_ms), attempts + 1),
                );
            };
            match pass {
                Some(Ok(Outcome::Done)) => {
                    // Only the mark as read: one the auditor extended meanwhile stays.
                    let _ = store
                        .delete(&mark_key(ledger), Expected::Version(version))
                        .await;
                    retry_at.remove(&ledger);
                    info!(ledger = %ledger, "ledger fully replicated again");
                }
                Some(Ok(Outcome::Pending(why))) => {
                    tracing::debug!(ledger = %ledger, why, "ledger still under-replicated");
                    backoff(&mut retry_at);
                }
                Some(Err(e)) => {
                    warn!(ledger = %ledger, error = %e, "re-replication failed; retried later");
                    backoff(&mut retry_at);
                }
                None => {}
            }
            let _ = release().await;
        }
    }
    if let Some(s) = session {
        let _ = s.close().await;
    }
}

/// The longest a worker waits before trying an unfinished mark again.
const RETRY_WAIT_MS_MAX: u64 = 60_000;

/// One pass over `ledger`: every segment that can be copied now is. Positions are replaced
/// when their bookie is one the mark names as lost (`missing`; all unregistered ones if the
/// mark could not be read) and not registered, or is being decommissioned — never a bookie
/// that is only restarting. An open ledger whose last segment lost a replica is fenced and
/// closed first once `grace_over` (its writer had its chance to move on).
async fn replicate(
    client: &LedgerClient,
    ledger: LedgerId,
    missing: &BTreeSet<BookieId>,
    draining: &BTreeSet<BookieId>,
    grace_over: bool,
    options: &AutoRecoveryOptions,
) -> LedgerResult<Outcome> {
    let mut meta = match client.ledger_metadata(ledger).await {
        Ok(m) => m,
        Err(LedgerError::NoSuchLedger(_)) => return Ok(Outcome::Done),
        Err(e) => return Err(e),
    };
    let registered: BTreeSet<BookieId> = client.registered_bookies().await?.into_iter().collect();
    // Positions on decommissioned bookies are moved as if lost.
    let lost = |b: &BookieId| {
        draining.contains(b)
            || (!registered.contains(b) && (missing.is_empty() || missing.contains(b)))
    };
    let open_tail_lost = meta.state != LedgerState::Closed
        && meta
            .ensembles
            .last()
            .is_some_and(|s| s.bookies.iter().any(&lost));
    if open_tail_lost && grace_over {
        info!(ledger = %ledger, "an open ledger lost a replica of its last segment and its \
            writer did not move on within the grace period: fencing it to copy it");
        match client.open_ledger_with_recovery(ledger).await {
            Ok(_) => {}
            Err(LedgerError::NoSuchLedger(_)) => return Ok(Outcome::Done),
            Err(e) => return Err(e),
        }
        meta = client.ledger_metadata(ledger).await?;
    }
    let mut pending = None;
    for index in 0..meta.ensembles.len() {
        let segment = &meta.ensembles[index];
        let dead: Vec<usize> = (0..segment.bookies.len())
            .filter(|p| lost(&segment.bookies[*p]))
            .collect();
        if dead.is_empty() {
            continue;
        }
        let last_entry: i64 = match meta.ensembles.get(index + 1) {
            Some(next) if meta.state == LedgerState::Closed => {
                (next.first_entry as i64 - 1).min(meta.last_entry_id)
            }
            Some(next) => next.first_entry as i64 - 1,
            None if meta.state == LedgerState::Closed => meta.last_entry_id,
            None => {
                pending = Some("the open ledger's last segment is its writer's".to_owned());
                continue;
            }
        };
        // The segment as replaced so far: two lost positions never get the same bookie.
        let mut current = segment.bookies.clone();
        for p in dead {
            let lost = segment.bookies[p].clone();
            let target = match client.choose_replacement(&current, p).await {
                Ok(t) => t,
                Err(e) => {
                    pending = Some(format!("no bookie to copy to: {e}"));
                    continue;
                }
            };
            let copied = copy_segment(
                client,
                ledger,
                &meta,
                index,
                p,
                registered.contains(&lost),
                &target,
                segment.first_entry as i64,
                last_entry,
                options.copy_concurrency,
            )
            .await?;
            client
                .replace_in_segment(ledger, index, p, &lost, &target)
                .await?;
            current[p] = target.clone();
            info!(ledger = %ledger, segment = index, from = %lost, to = %target, entries = copied,
                "replica re-created on another bookie");
        }
    }
    Ok(pending.map_or(Outcome::Done, Outcome::Pending))
}

/// Copies the entries of segment `index` whose write set holds position `p` to `target`;
/// returns how many.
#[allow(clippy::too_many_arguments)]
async fn copy_segment(
    client: &LedgerClient,
    ledger: LedgerId,
    meta: &crate::client::metadata::LedgerMetadata,
    index: usize,
    p: usize,
    lost_answers: bool,
    target: &BookieId,
    first: i64,
    last: i64,
    concurrency: usize,
) -> LedgerResult<u64> {
    let segment = &meta.ensembles[index];
    let (e, qw) = (meta.ensemble_size, meta.write_quorum);
    let entries = (first.max(0)..=last)
        .map(|x| x as u64)
        .filter(move |x| write_set(*x, e, qw).contains(&p));
    let mut count = 0u64;
    let target_client = client.bookie(target);
    let mut copies = futures::stream::iter(entries.map(|entry| {
        // The other replicas, then the bookie itself while it answers (a decommissioned one).
        let mut sources: Vec<BookieId> = write_set(entry, e, qw)
            .into_iter()
            .filter(|q| *q != p)
            .map(|q| segment.bookies[q].clone())
            .collect();
        if lost_answers {
            sources.push(segment.bookies[p].clone());
        }
        let target_client = Arc::clone(&target_client);
        async move {
            let mut last_err = None;
            for source in &sources {
                match client
                    .bookie(source)
                    .read(ledger, EntryId(entry), false)
                    .await
                {
                    Ok(r)
                        if r.entry.is_intact()
                            && r.entry.ledger == ledger
                            && r.entry.entry == EntryId(entry) =>
                    {
                        target_client.add(r.entry, true).await.map_err(|error| {
                            LedgerError::Bookie {
                                bookie: target_client.id().clone(),
                                error,
                            }
                        })?;
                        return Ok(());
                    }
                    Ok(_) => last_err = Some(format!("{source}: checksum mismatch")),
                    Err(err) => last_err = Some(format!("{source}: {err}")),
                }
            }
            Err(LedgerError::Unreadable {
                ledger,
                entry,
                reasons: format!(
                    "no surviving replica to copy from ({})",
                    last_err.unwrap_or_default()
                ),
            })
        }
    }))
    .buffer_unordered(concurrency.max(1));
    while let Some(done) = copies.next().await {
        done?;
        count += 1;
    }
    Ok(count)
}
