//! `/admin/v2/bookies/…`: the bookies of the cluster (Pulsar's `bookies list-bookies` shape)
//! and the ledgers auto-recovery is re-replicating (Magnetar's; BookKeeper shows them through
//! its own `list_under_replicated_ledger`).

use axum::Json;
use axum::extract::State;
use magnetar_bookie::api::{BOOKIES_PREFIX, BookieRegistration};
use magnetar_bookie::autorecovery::{MARKS_PREFIX, UnderReplicated};
use serde::Serialize;

use super::{AdminState, ApiResult};

/// Pulsar's `BookiesClusterInfo`.
#[derive(Debug, Serialize)]
pub(super) struct BookiesClusterInfo {
    bookies: Vec<RawBookieInfo>,
}

/// Pulsar's `RawBookieInfo`, plus what the registration says (state, zone, disk).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawBookieInfo {
    bookie_id: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    free_bytes: u64,
    used_bytes: u64,
}

/// `GET /admin/v2/bookies/all`: the registered bookies.
pub(super) async fn all(State(s): State<AdminState>) -> ApiResult<Json<BookiesClusterInfo>> {
    let listing = s.policies.store().list(BOOKIES_PREFIX).await?;
    let bookies = listing
        .entries
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<BookieRegistration>(&v.value).ok())
        .map(|r| RawBookieInfo {
            bookie_id: r.id.0,
            state: r.state.as_str(),
            zone: r.zone,
            free_bytes: r.free_bytes,
            used_bytes: r.used_bytes,
        })
        .collect();
    Ok(Json(BookiesClusterInfo { bookies }))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UnderReplicatedLedger {
    ledger_id: u64,
    /// The lost bookies its ensembles still name.
    missing: Vec<String>,
    marked_ms: u64,
}

/// `GET /admin/v2/bookies/underreplicated`: ledgers marked by the auditor and not yet
/// re-replicated.
pub(super) async fn under_replicated(
    State(s): State<AdminState>,
) -> ApiResult<Json<Vec<UnderReplicatedLedger>>> {
    let listing = s.policies.store().list(MARKS_PREFIX).await?;
    let mut out: Vec<UnderReplicatedLedger> = listing
        .entries
        .iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix(MARKS_PREFIX)?.parse::<u64>().ok()?;
            let mark = serde_json::from_slice::<UnderReplicated>(&v.value).ok()?;
            Some(UnderReplicatedLedger {
                ledger_id: id,
                missing: mark.missing.into_iter().map(|b| b.0).collect(),
                marked_ms: mark.marked_ms,
            })
        })
        .collect();
    out.sort_by_key(|l| l.ledger_id);
    Ok(Json(out))
}
