//! `/admin/v2/bookies/…`: the bookies of the cluster (Pulsar's `bookies list-bookies` shape)
//! and the ledgers auto-recovery is re-replicating (Magnetar's; BookKeeper shows them through
//! its own `list_under_replicated_ledger`), and decommissioning a bookie: it turns read-only,
//! auto-recovery copies its replicas elsewhere, and the status says when it can be removed.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use magnetar_bookie::api::{BOOKIES_PREFIX, BookieId, BookieRegistration, registration_key};
use magnetar_bookie::autorecovery::{MARKS_PREFIX, UnderReplicated, decommission_key};
use magnetar_bookie::client::{LedgerMetadata, metadata::LEDGERS_PREFIX};
use magnetar_metadata::Expected;
use serde::Serialize;

use super::{AdminState, ApiError, ApiResult};

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

/// Decommission progress of one bookie.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DecommissionStatus {
    bookie_id: String,
    decommissioning: bool,
    /// Ledgers whose records still name the bookie.
    ledgers_remaining: usize,
    /// Decommissioning and no ledger names it: it can be stopped and removed.
    ready_to_remove: bool,
}

fn bookie_id(raw: &str) -> ApiResult<BookieId> {
    if raw.is_empty() || raw.contains('/') {
        return Err(ApiError::bad_request(format!("invalid bookie id {raw:?}")));
    }
    Ok(BookieId(raw.to_owned()))
}

/// `PUT /admin/v2/bookies/{bookie}/decommission`: starts decommissioning a registered bookie.
pub(super) async fn decommission(
    State(s): State<AdminState>,
    Path(raw): Path<String>,
) -> ApiResult<StatusCode> {
    let id = bookie_id(&raw)?;
    let store = s.policies.store();
    if store.get(&registration_key(&id)).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "bookie {id} is not registered"
        )));
    }
    let _ = store
        .put(&decommission_key(&id), "{}".into(), Expected::Any)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /admin/v2/bookies/{bookie}/decommission`: the bookie takes writes again.
pub(super) async fn cancel_decommission(
    State(s): State<AdminState>,
    Path(raw): Path<String>,
) -> ApiResult<StatusCode> {
    let id = bookie_id(&raw)?;
    let _ = s
        .policies
        .store()
        .delete(&decommission_key(&id), Expected::Any)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/v2/bookies/{bookie}/decommission`.
pub(super) async fn decommission_status(
    State(s): State<AdminState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<DecommissionStatus>> {
    let id = bookie_id(&raw)?;
    let store = s.policies.store();
    let decommissioning = store.get(&decommission_key(&id)).await?.is_some();
    let ledgers = store.list(LEDGERS_PREFIX).await?;
    let ledgers_remaining = ledgers
        .entries
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<LedgerMetadata>(&v.value).ok())
        .filter(|m| m.all_bookies().contains(&id))
        .count();
    Ok(Json(DecommissionStatus {
        bookie_id: id.0,
        decommissioning,
        ledgers_remaining,
        ready_to_remove: decommissioning && ledgers_remaining == 0,
    }))
}
