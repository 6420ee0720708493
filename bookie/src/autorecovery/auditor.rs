//! The auditor: at most one in the cluster (whoever holds [`AUDITOR_KEY`]). It follows the
//! bookie registrations; a bookie gone longer than the lost-bookie delay is lost, and every
//! ledger whose ensembles name it is marked under-replicated. It scans the ledger records when
//! a loss matures, when it becomes auditor, and every `periodic_check_interval`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use magnetar_metadata::{Expected, LedgerId, MetadataStore, PutOutcome, RecordStore, Update};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{AUDITOR_KEY, AutoRecoveryOptions, UnderReplicated, mark_key};
use crate::api::BookieId;
use crate::client::LedgerClient;
use crate::client::metadata::{LEDGERS_PREFIX, LedgerMetadata};

/// Campaigns for the auditor key and audits while holding it, until `stop` fires.
pub async fn run(
    client: LedgerClient,
    store: Arc<dyn MetadataStore>,
    me: BookieId,
    options: AutoRecoveryOptions,
    stop: CancellationToken,
) {
    let clock = client.clock();
    loop {
        let elected = async {
            let session = store.create_session(options.session_ttl).await?;
            loop {
                let outcome = store
                    .put_ephemeral(
                        AUDITOR_KEY,
                        Bytes::from(me.0.clone()),
                        Expected::Absent,
                        &session,
                    )
                    .await?;
                if matches!(outcome, PutOutcome::Written(_)) {
                    return Ok::<_, magnetar_metadata::MetadataError>(session);
                }
                clock.sleep(options.poll_interval).await;
            }
        };
        let session = tokio::select! {
            () = stop.cancelled() => return,
            s = elected => s,
        };
        match session {
            Ok(session) => {
                info!(bookie = %me, "auditor elected");
                let mut auditor = Auditor::new(&client, &store, &options);
                tokio::select! {
                    () = stop.cancelled() => {
                        let _ = session.close().await;
                        return;
                    }
                    () = session.lost() => warn!(bookie = %me, "auditor session lost; campaigning again"),
                    () = auditor.audit_forever() => {}
                }
            }
            Err(e) => warn!(bookie = %me, error = %e, "auditor election failed; retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = clock.sleep(options.poll_interval) => {}
        }
    }
}

struct Auditor<'a> {
    client: &'a LedgerClient,
    store: &'a Arc<dyn MetadataStore>,
    options: &'a AutoRecoveryOptions,
    marks: RecordStore<UnderReplicated>,
    /// Bookies seen (registered, or named by a ledger) and not registered now, since when.
    gone_since_ms: HashMap<BookieId, u64>,
    /// Bookies known from registrations and ledger records.
    known: BTreeSet<BookieId>,
    /// Lost bookies whose ledgers the last scan marked.
    marked_for: BTreeSet<BookieId>,
}

impl<'a> Auditor<'a> {
    fn new(
        client: &'a LedgerClient,
        store: &'a Arc<dyn MetadataStore>,
        options: &'a AutoRecoveryOptions,
    ) -> Self {
        Auditor {
            client,
            store,
            options,
            marks: RecordStore::new(Arc::clone(store)),
            gone_since_ms: HashMap::new(),
            known: BTreeSet::new(),
            marked_for: BTreeSet::new(),
        }
    }

    async fn audit_forever(&mut self) {
        let clock = self.client.clock();
        let period_ms =
            u64::try_from(self.options.periodic_check_interval.as_millis()).unwrap_or(u64::MAX);
        let delay_ms =
            u64::try_from(self.options.lost_bookie_delay.as_millis()).unwrap_or(u64::MAX);
        let mut next_scan_ms = 0u64; // at once: a new auditor checks everything
        loop {
            let now = clock.now_ms();
            match self.client.registered_bookies().await {
                Ok(registered) => {
                    let registered: BTreeSet<BookieId> = registered.into_iter().collect();
                    self.known.extend(registered.iter().cloned());
                    for b in &self.known {
                        if registered.contains(b) {
                            self.gone_since_ms.remove(b);
                        } else {
                            self.gone_since_ms.entry(b.clone()).or_insert(now);
                        }
                    }
                    let draining = super::decommissioned(self.store).await.unwrap_or_default();
                    self.marked_for
                        .retain(|b| !registered.contains(b) || draining.contains(b));
                    let matured = self.gone_since_ms.iter().any(|(b, since)| {
                        now.saturating_sub(*since) >= delay_ms && !self.marked_for.contains(b)
                    }) || draining.iter().any(|b| !self.marked_for.contains(b));
                    if matured || now >= next_scan_ms {
                        match self.scan(&registered, now, delay_ms).await {
                            Ok(()) => next_scan_ms = now.saturating_add(period_ms),
                            Err(e) => warn!(error = %e, "auditor scan failed; retrying"),
                        }
                    }
                }
                Err(e) => warn!(error = %e, "auditor cannot list the bookies"),
            }
            clock.sleep(self.options.poll_interval).await;
        }
    }

    /// Reads every ledger record; marks those naming a lost bookie.
    async fn scan(
        &mut self,
        registered: &BTreeSet<BookieId>,
        now: u64,
        delay_ms: u64,
    ) -> Result<(), magnetar_metadata::MetadataError> {
        let listing = self.store.list(LEDGERS_PREFIX).await?;
        let mut ledgers = Vec::with_capacity(listing.entries.len());
        for (key, value) in &listing.entries {
            let Some(id) = key
                .strip_prefix(LEDGERS_PREFIX)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            match serde_json::from_slice::<LedgerMetadata>(&value.value) {
                Ok(meta) => ledgers.push((LedgerId(id), meta.all_bookies())),
                Err(e) => {
                    warn!(key = %key, error = %e, "auditor skips an unreadable ledger record")
                }
            }
        }
        // Bookies only ledgers remember (gone before this auditor started) count from now.
        for (_, bookies) in &ledgers {
            for b in bookies {
                if !registered.contains(b) && self.known.insert(b.clone()) {
                    self.gone_since_ms.entry(b.clone()).or_insert(now);
                }
            }
        }
        // Lost: gone past the delay, or being decommissioned (at once).
        let mut lost: BTreeSet<BookieId> = self
            .gone_since_ms
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= delay_ms)
            .map(|(b, _)| b.clone())
            .collect();
        lost.extend(super::decommissioned(self.store).await?);
        let mut marked = 0usize;
        let mut failed = 0usize;
        for (id, bookies) in &ledgers {
            let missing: Vec<BookieId> = bookies
                .iter()
                .filter(|b| lost.contains(*b))
                .cloned()
                .collect();
            if missing.is_empty() {
                continue;
            }
            let stored = self
                .marks
                .update(&mark_key(*id), |current| {
                    let mut all: BTreeSet<BookieId> = current
                        .map(|c| c.missing.iter().cloned().collect())
                        .unwrap_or_default();
                    let before = all.len();
                    all.extend(missing.iter().cloned());
                    if current.is_some() && all.len() == before {
                        return Update::Keep;
                    }
                    Update::Set(UnderReplicated {
                        missing: all.into_iter().collect(),
                        marked_ms: current.map_or(now, |c| c.marked_ms),
                    })
                })
                .await;
            match stored {
                Ok(_) => marked += 1,
                Err(e) => {
                    failed += 1;
                    warn!(ledger = %id, error = %e, "cannot mark an under-replicated ledger");
                }
            }
        }
        if !lost.is_empty() {
            info!(lost = ?lost, ledgers = ledgers.len(), marked, "auditor scan: ledgers with replicas on lost bookies marked");
        }
        if failed > 0 {
            // Scanned again at the next poll, not at the next periodic check.
            return Err(magnetar_metadata::MetadataError::Unavailable(format!(
                "{failed} under-replicated ledgers could not be marked"
            )));
        }
        self.marked_for = lost;
        Ok(())
    }
}
