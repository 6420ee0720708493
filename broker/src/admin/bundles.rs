//! Bundle and broker-load operations in Pulsar's shapes: namespace and bundle `unload`
//! (optionally to a destination broker), `broker-stats/load-report`, and the HTTP topic
//! lookup (`/lookup/v2/topic/...`, what `pulsar-admin topics lookup` calls).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::topics::LookupData;
use super::{AdminState, ApiError, ApiResult, namespace_name, topic_name};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UnloadQuery {
    /// A broker id as `brokers list` shows it (`host:port` of its admin URL), or its
    /// `pulsar://` service URL.
    destination_broker: Option<String>,
}

/// `PUT /admin/v2/namespaces/{tenant}/{namespace}/unload`: every bundle of the namespace.
pub(super) async fn unload_namespace(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let ns = namespace_name(&tenant, &namespace)?;
    super::namespaces::policies_of(&s, &ns).await?;
    s.topics.unload_namespace(&ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /admin/v2/namespaces/{tenant}/{namespace}/{bundle}/unload[?destinationBroker=]`.
pub(super) async fn unload_bundle(
    State(s): State<AdminState>,
    Path((tenant, namespace, bundle)): Path<(String, String, String)>,
    Query(q): Query<UnloadQuery>,
) -> ApiResult<StatusCode> {
    let ns = namespace_name(&tenant, &namespace)?;
    super::namespaces::policies_of(&s, &ns).await?;
    let destination = q.destination_broker.as_deref().filter(|d| !d.is_empty());
    s.topics.unload_bundle(&ns, &bundle, destination).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/v2/persistent/{tenant}/{namespace}/{topic}/bundle`: the range of the topic's
/// bundle, as text (pulsar-admin's `topics bundle-range`).
pub(super) async fn bundle_range(
    State(s): State<AdminState>,
    Path((tenant, namespace, topic)): Path<(String, String, String)>,
) -> ApiResult<String> {
    let name = topic_name(&tenant, &namespace, &topic)?;
    Ok(s.topics.bundle_range(&name).await?)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SplitQuery {
    #[serde(default)]
    unload: bool,
    #[serde(default = "range_equally_divide")]
    split_algorithm_name: String,
}

fn range_equally_divide() -> String {
    "range_equally_divide".to_owned()
}

/// `PUT /admin/v2/namespaces/{tenant}/{namespace}/{bundle}/split[?unload=&splitAlgorithmName=]`,
/// body: the split positions for `specified_positions_divide` (a JSON array), else empty.
pub(super) async fn split_bundle(
    State(s): State<AdminState>,
    Path((tenant, namespace, bundle)): Path<(String, String, String)>,
    Query(q): Query<SplitQuery>,
    body: bytes::Bytes,
) -> ApiResult<StatusCode> {
    let ns = namespace_name(&tenant, &namespace)?;
    super::namespaces::policies_of(&s, &ns).await?;
    let positions: Vec<i64> = super::optional_json_body(&body)?.unwrap_or_default();
    let positions = positions
        .into_iter()
        .map(|p| {
            u32::try_from(p).map_err(|_| {
                ApiError::precondition(format!("split position {p} is outside the hash range"))
            })
        })
        .collect::<ApiResult<Vec<u32>>>()?;
    s.topics
        .split_bundle(&ns, &bundle, &q.split_algorithm_name, positions, q.unload)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /admin/v2/broker-stats/load-report`: this broker's load (Pulsar's `LocalBrokerData`).
pub(super) async fn load_report(State(s): State<AdminState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(s.topics.load_report().await?))
}

/// `GET /lookup/v2/topic/{domain}/{tenant}/{namespace}/{topic}`.
pub(super) async fn lookup(
    State(s): State<AdminState>,
    Path((domain, tenant, namespace, topic)): Path<(String, String, String, String)>,
) -> ApiResult<Json<LookupData>> {
    if domain != "persistent" {
        return Err(ApiError::precondition(format!(
            "topic domain {domain} is not supported: only persistent topics exist here"
        )));
    }
    let name = topic_name(&tenant, &namespace, &topic)?;
    Ok(Json(s.topics.lookup(&name).await?))
}
