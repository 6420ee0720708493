//! Auto-recovery: a ledger that had a replica on a bookie that is gone gets its copies back
//! without an operator (BookKeeper's auditor and replication workers).
//!
//! - The **auditor** ([`auditor`]), one at a time (elected through an ephemeral key), notices
//!   bookies whose registration is gone for longer than the lost-bookie delay, scans the
//!   ledger records and marks each ledger with a replica on such a bookie as under-replicated
//!   (`/underreplicated/ledgers/{id}`, naming the lost bookies).
//! - Every bookie runs a **replication worker** ([`worker`]): it claims a marked ledger
//!   (an ephemeral lock, so one worker per ledger), copies the lost replicas' entries from
//!   surviving ones to a bookie the placement policy chooses (zones respected), records the new
//!   ensemble by compare-and-set and clears the mark. The last segment of an open ledger is its
//!   writer's (a failed write already replaces the bookie) for a grace period; a ledger still
//!   open after it (an idle topic's) is fenced and closed by recovery, then copied.

pub mod auditor;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use magnetar_metadata::{LedgerId, MetadataStore};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::BookieId;
use crate::client::LedgerClient;

/// Marks: `/underreplicated/ledgers/{ledger}` → [`UnderReplicated`].
pub const MARKS_PREFIX: &str = "/underreplicated/ledgers/";
/// A worker's claim on a marked ledger (ephemeral).
pub const LOCKS_PREFIX: &str = "/underreplicated/locks/";
/// Who the auditor is (ephemeral).
pub const AUDITOR_KEY: &str = "/underreplicated/auditor";
/// Bookies an operator is decommissioning: `/underreplicated/decommission/{bookie}`.
pub const DECOMMISSION_PREFIX: &str = "/underreplicated/decommission/";

pub fn decommission_key(bookie: &BookieId) -> String {
    format!("{DECOMMISSION_PREFIX}{bookie}")
}

/// The bookies being decommissioned: read-only, and their replicas copied elsewhere as if
/// they were lost (from themselves too, while they still answer).
pub async fn decommissioned(
    store: &Arc<dyn MetadataStore>,
) -> Result<std::collections::BTreeSet<BookieId>, magnetar_metadata::MetadataError> {
    Ok(store
        .list(DECOMMISSION_PREFIX)
        .await?
        .entries
        .into_iter()
        .filter_map(|(k, _)| {
            k.strip_prefix(DECOMMISSION_PREFIX)
                .map(|b| BookieId(b.to_owned()))
        })
        .collect())
}

/// Keeps `bookie` read-only while an operator decommissions it, until `stop` fires.
pub fn follow_decommission(
    store: Arc<dyn MetadataStore>,
    bookie: Arc<crate::server::Bookie>,
    me: BookieId,
    poll: Duration,
    clock: magnetar_metadata::clock::SharedClock,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            match store.get(&decommission_key(&me)).await {
                Ok(v) => bookie.set_decommissioned(v.is_some()),
                Err(e) => tracing::warn!(error = %e, "cannot read the decommission state"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = clock.sleep(poll) => {}
            }
        }
    });
}

pub fn mark_key(ledger: LedgerId) -> String {
    format!("{MARKS_PREFIX}{ledger}")
}

fn lock_key(ledger: LedgerId) -> String {
    format!("{LOCKS_PREFIX}{ledger}")
}

/// Why a ledger is marked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderReplicated {
    /// The bookies its ensembles name that are gone.
    pub missing: Vec<BookieId>,
    pub marked_ms: u64,
}

/// The settings of both halves (BookKeeper's names in brackets).
#[derive(Clone, Debug)]
pub struct AutoRecoveryOptions {
    /// A bookie whose registration has been gone this long is lost (`lostBookieRecoveryDelay`).
    pub lost_bookie_delay: Duration,
    /// How often the auditor looks at the registrations and a worker for marks.
    pub poll_interval: Duration,
    /// The auditor also scans every ledger this often (`auditorPeriodicCheckInterval`).
    pub periodic_check_interval: Duration,
    /// Entries being copied at once by one worker.
    pub copy_concurrency: usize,
    /// Ttl of the sessions holding the auditor key and the workers' locks.
    pub session_ttl: Duration,
    /// An open ledger's last segment is left to its writer this long after the ledger was
    /// marked; then the worker fences the ledger (recovery closes it) and copies it like a
    /// closed one (`openLedgerRereplicationGracePeriod`). The writer's next append finds the
    /// ledger fenced and its managed ledger moves on to a new one.
    pub open_ledger_grace: Duration,
}

impl Default for AutoRecoveryOptions {
    fn default() -> Self {
        AutoRecoveryOptions {
            lost_bookie_delay: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            periodic_check_interval: Duration::from_secs(3600),
            copy_concurrency: 64,
            session_ttl: Duration::from_secs(10),
            open_ledger_grace: Duration::from_secs(30),
        }
    }
}

/// Runs the auditor candidate and a replication worker of bookie `me` until `stop` fires.
pub fn start(
    client: LedgerClient,
    store: Arc<dyn MetadataStore>,
    me: BookieId,
    options: AutoRecoveryOptions,
    stop: CancellationToken,
) {
    tokio::spawn(auditor::run(
        client.clone(),
        Arc::clone(&store),
        me.clone(),
        options.clone(),
        stop.clone(),
    ));
    tokio::spawn(worker::run(client, store, me, options, stop));
}
