//! Topic-level policies under `/admin/v2/persistent/{tenant}/{namespace}/{topic}/…`, as
//! pulsar-admin's `topics get-/set-/remove-offload-policies` use them. A partitioned topic's
//! policies are its partitions' too.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::{AdminState, ApiError, ApiResult, optional_json_body, require_namespace, topic_name};
use crate::policies::OffloadPolicies;
use crate::topic_name::TopicName;

type TopicPath = Path<(String, String, String)>;

/// A topic that exists (or a partitioned topic) in a namespace that exists: 404 otherwise,
/// as Pulsar answers topic-policy calls on an unknown topic.
async fn existing_topic(
    s: &AdminState,
    (tenant, namespace, topic): &(String, String, String),
) -> ApiResult<TopicName> {
    let topic = topic_name(tenant, namespace, topic)?;
    require_namespace(s, topic.namespace()).await?;
    let partitioned = s.policies.partitions(&topic).await?.is_some();
    if !partitioned && !s.topics.exists(&topic).await? {
        return Err(ApiError::not_found("Topic not found"));
    }
    Ok(topic)
}

/// `GET .../offloadPolicies[?applied=true]`: the topic's own policy (204 when it has none),
/// or with `applied` the settings in force — topic, then namespace, then broker.
pub(super) async fn get_offload_policies(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let topic = existing_topic(&s, &p).await?;
    if q.get("applied").is_some_and(|v| v == "true") {
        return Ok(Json(s.topics.applied_offload_policies(&topic).await?).into_response());
    }
    Ok(
        match s
            .policies
            .topic_policies(&topic)
            .await?
            .and_then(|t| t.offload_policies)
        {
            Some(o) => Json(o).into_response(),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    )
}

/// `POST .../offloadPolicies`: fields left out fall back to the namespace's; a driver, if
/// named, must be one this broker has, with its bucket.
pub(super) async fn set_offload_policies(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let topic = existing_topic(&s, &p).await?;
    let Some(o) = optional_json_body::<OffloadPolicies>(&body)? else {
        return Err(ApiError::precondition(
            "The offloadPolicies must be specified.",
        ));
    };
    if o.managed_ledger_offload_driver.is_some() {
        o.validate().map_err(ApiError::precondition)?;
    }
    s.policies
        .update_topic_policies(&topic, |t| t.offload_policies = Some(o.clone()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE .../offloadPolicies`.
pub(super) async fn remove_offload_policies(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<StatusCode> {
    let topic = existing_topic(&s, &p).await?;
    s.policies
        .update_topic_policies(&topic, |t| t.offload_policies = None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
