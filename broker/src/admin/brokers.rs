//! `/admin/v2/brokers/…`: the active brokers of the cluster (their registrations) and the
//! leader, in Pulsar's shapes (`brokers list`, `brokers leader-broker`).

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::{AdminState, ApiError, ApiResult};
use crate::cluster::leader;
use crate::cluster::registry::{BROKERS_PREFIX, BrokerRecord};

/// `host:port` of a broker's admin URL: the broker id pulsar-admin shows.
fn broker_id(record: &BrokerRecord) -> String {
    record
        .web_service_url
        .split_once("://")
        .map_or(record.web_service_url.as_str(), |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

/// `GET /admin/v2/brokers/{cluster}`: the registered brokers' ids.
pub(super) async fn active(
    State(s): State<AdminState>,
    Path(cluster): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    if cluster != s.cluster_name {
        return Err(ApiError::not_found(format!(
            "Cluster {cluster} does not exist"
        )));
    }
    let listing = s.policies.store().list(BROKERS_PREFIX).await?;
    let mut ids: Vec<String> = listing
        .entries
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<BrokerRecord>(&v.value).ok())
        .map(|r| broker_id(&r))
        .collect();
    ids.sort();
    Ok(Json(ids))
}

/// Pulsar's `LeaderBroker`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LeaderBroker {
    broker_id: String,
    service_url: String,
}

/// `GET /admin/v2/brokers/leaderBroker`.
pub(super) async fn leader_broker(State(s): State<AdminState>) -> ApiResult<Json<LeaderBroker>> {
    match leader::leader(&s.policies.store()).await? {
        Some(r) => Ok(Json(LeaderBroker {
            broker_id: broker_id(&r),
            service_url: r.web_service_url,
        })),
        None => Err(ApiError::not_found("No leader broker")),
    }
}

/// `GET /admin/v2/brokers/health`: `ok` once a message written through this broker (its
/// metadata store and bookies) reads back; 503 with the reason otherwise.
pub(super) async fn health(State(s): State<AdminState>) -> ApiResult<&'static str> {
    s.topics.health_check().await?;
    Ok("ok")
}

/// `GET /status.html` (Pulsar's load-balancer and probe check): `OK` while this broker
/// serves; 503 once it drains its bundles or shuts down, so no new client is sent here.
pub(super) async fn status(State(s): State<AdminState>) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    if s.topics.is_serving() {
        (StatusCode::OK, "OK").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response()
    }
}

/// `GET /metrics` (and Pulsar's `/metrics/`): Prometheus text, see [`crate::metrics`].
pub(super) async fn metrics(State(s): State<AdminState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let families = s.metrics.families().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            magnetar_bookie::metrics::TEXT_CONTENT_TYPE,
        )],
        magnetar_bookie::metrics::encode(&families),
    )
        .into_response()
}
