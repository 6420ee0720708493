//! `/admin/v2/persistent/…`: partitioned-topic metadata (kept here, in the metadata store) and
//! the topic operations the broker service answers through [`TopicAdmin`](super::TopicAdmin).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::topics::{
    OffloadProcessStatus, PartitionedTopicStats, PeekedMessage, PersistentTopicInternalStats,
    ResetTarget, StartPosition, TopicAdminError, TopicStats,
};
use super::{
    AdminState, ApiError, ApiResult, PARTITIONS_MAX, json_body, namespace_name, optional_json_body,
    require_namespace, topic_name,
};
use crate::policies::{PartitionedTopicMetadata, PolicyError};
use crate::topic_name::TopicName;

type TopicPath = Path<(String, String, String)>;
type SubPath = Path<(String, String, String, String)>;

/// `?force=true`.
fn force(q: &HashMap<String, String>) -> bool {
    q.get("force").is_some_and(|v| v == "true")
}

/// A topic that exists in a namespace that exists.
async fn topic_in_namespace(
    s: &AdminState,
    (tenant, namespace, topic): &(String, String, String),
) -> ApiResult<TopicName> {
    let topic = topic_name(tenant, namespace, topic)?;
    require_namespace(s, topic.namespace()).await?;
    Ok(topic)
}

/// The body of a partitioned-topic creation: a bare count, or Pulsar's
/// `PartitionedTopicMetadata` object, which pulsar-admin sends when it has properties (not
/// kept: Magnetar keeps no topic properties).
#[derive(Deserialize)]
#[serde(untagged)]
enum PartitionsBody {
    Count(i64),
    Metadata { partitions: i64 },
}

/// A partition count from a JSON body: 406 outside `1..=PARTITIONS_MAX`.
fn partition_count(body: &Bytes) -> ApiResult<u32> {
    let n = match json_body(body)? {
        PartitionsBody::Count(n) | PartitionsBody::Metadata { partitions: n } => n,
    };
    if n <= 0 {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "Number of partitions should be more than 0",
        ));
    }
    if n > i64::from(PARTITIONS_MAX) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("Number of partitions should be less than or equal to {PARTITIONS_MAX}"),
        ));
    }
    Ok(n as u32)
}

fn not_a_partition(topic: &TopicName) -> ApiResult<()> {
    if topic.partition().is_some() {
        return Err(ApiError::precondition(format!(
            "Partitioned topic name should not contain '-partition-': {topic}"
        )));
    }
    Ok(())
}

pub(super) async fn list_partitioned(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<Vec<String>>> {
    let ns = namespace_name(&tenant, &namespace)?;
    require_namespace(&s, &ns).await?;
    Ok(Json(s.policies.partitioned_topics(&ns).await?))
}

pub(super) async fn get_partitions(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<Json<PartitionedTopicMetadata>> {
    let topic = topic_name(&p.0, &p.1, &p.2)?;
    // Like Pulsar: a non-partitioned or unknown topic has 0 partitions. A partition's own
    // metadata is its parent's only when asked by the parent's name.
    let partitions = if topic.partition().is_some() {
        0
    } else {
        s.policies.partitions(&topic).await?.unwrap_or(0)
    };
    Ok(Json(PartitionedTopicMetadata { partitions }))
}

pub(super) async fn create_partitioned(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let topic = topic_in_namespace(&s, &p).await?;
    not_a_partition(&topic)?;
    let partitions = partition_count(&body)?;
    if s.topics.is_running()
        && s.topics
            .list_topics(topic.namespace())
            .await?
            .contains(&topic.to_string())
    {
        return Err(ApiError::conflict("This topic already exists"));
    }
    match s.policies.create_partitioned(&topic, partitions).await {
        Ok(()) => {
            // As Pulsar, the partitions exist (and are listed) from now on.
            s.topics.create_partitions(&topic, partitions).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(PolicyError::AlreadyExists(_)) => {
            Err(ApiError::conflict("Partitioned topic already exists"))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn update_partitioned(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let topic = topic_in_namespace(&s, &p).await?;
    not_a_partition(&topic)?;
    let partitions = partition_count(&body)?;
    match s.policies.update_partitioned(&topic, partitions).await {
        Ok(()) => {
            s.topics.create_partitions(&topic, partitions).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        // Pulsar answers 409 for both.
        Err(PolicyError::NotFound(_)) => {
            Err(ApiError::conflict("Partitioned topic does not exist"))
        }
        Err(PolicyError::Invalid(_)) => Err(ApiError::conflict(
            "Number of new partitions must be greater than existing number of partitions",
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn delete_partitioned(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let topic = topic_in_namespace(&s, &p).await?;
    not_a_partition(&topic)?;
    let Some(partitions) = s.policies.partitions(&topic).await? else {
        return Err(ApiError::not_found("Partitioned topic does not exist"));
    };
    if s.topics.is_running() {
        let force = force(&q);
        for i in 0..partitions {
            match s.topics.delete_topic(&topic.partition_name(i), force).await {
                Ok(()) | Err(TopicAdminError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    delete_schema(&s, &topic).await?;
    s.policies
        .update_topic_policies(&topic, |t| *t = Default::default())
        .await?;
    match s.policies.delete_partitioned(&topic).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(PolicyError::NotFound(_)) => {
            Err(ApiError::not_found("Partitioned topic does not exist"))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list_topics(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<Vec<String>>> {
    let ns = namespace_name(&tenant, &namespace)?;
    require_namespace(&s, &ns).await?;
    Ok(Json(s.topics.list_topics(&ns).await?))
}

/// `GET /admin/v2/non-persistent/{tenant}/{namespace}[/partitioned]`: always empty, as
/// Magnetar has no non-persistent topics; pulsar-admin's `topics list` and
/// `list-partitioned-topics` ask both domains and fail if either answers an error.
pub(super) async fn list_non_persistent(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<Vec<String>>> {
    let ns = namespace_name(&tenant, &namespace)?;
    require_namespace(&s, &ns).await?;
    Ok(Json(Vec::new()))
}

pub(super) async fn create_topic(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let topic = topic_in_namespace(&s, &p).await?;
    let properties: BTreeMap<String, String> = optional_json_body(&body)?.unwrap_or_default();
    if topic.partition().is_none() && s.policies.partitions(&topic).await?.is_some() {
        return Err(ApiError::conflict("This topic already exists"));
    }
    s.topics.create_topic(&topic, properties).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn delete_topic(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let topic = topic_in_namespace(&s, &p).await?;
    s.topics.delete_topic(&topic, force(&q)).await?;
    // The schema goes with the topic, as in Pulsar (whatever `deleteSchema` says). A
    // partition's schema is its parent's, shared by the other partitions: it stays.
    // Its policies too (a partition's are its parent's, and stay).
    if topic.partition().is_none() {
        delete_schema(&s, &topic).await?;
        s.policies
            .update_topic_policies(&topic, |t| *t = Default::default())
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_schema(s: &AdminState, topic: &TopicName) -> ApiResult<()> {
    s.schemas.delete(topic).await.map(|_| ()).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("topic deleted, its schema not: {e}"),
        )
    })
}

pub(super) async fn stats(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<Json<TopicStats>> {
    let topic = topic_in_namespace(&s, &p).await?;
    Ok(Json(s.topics.stats(&topic).await?))
}

/// The partitions' stats added up; each partition's too unless `?perPartition=false`.
pub(super) async fn partitioned_stats(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<PartitionedTopicStats>> {
    let topic = topic_in_namespace(&s, &p).await?;
    not_a_partition(&topic)?;
    let Some(partitions) = s.policies.partitions(&topic).await? else {
        return Err(ApiError::not_found("Partitioned Topic not found"));
    };
    let per_partition = q.get("perPartition").is_none_or(|v| v != "false");
    let mut out = PartitionedTopicStats {
        total: TopicStats::default(),
        metadata: PartitionedTopicMetadata { partitions },
        partitions: BTreeMap::new(),
    };
    for i in 0..partitions {
        let partition = topic.partition_name(i);
        match s.topics.stats(&partition).await {
            Ok(stats) => {
                out.total.add(&stats);
                if per_partition {
                    out.partitions.insert(partition.to_string(), stats);
                }
            }
            // A partition no producer or consumer has created yet.
            Err(TopicAdminError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(out))
}

pub(super) async fn internal_stats(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<Json<PersistentTopicInternalStats>> {
    let topic = topic_in_namespace(&s, &p).await?;
    Ok(Json(s.topics.internal_stats(&topic).await?))
}

pub(super) async fn subscriptions(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<Json<Vec<String>>> {
    let topic = topic_in_namespace(&s, &p).await?;
    Ok(Json(s.topics.subscriptions(&topic).await?))
}

/// The topic and subscription of a subscription route.
async fn subscription_of(
    s: &AdminState,
    (tenant, namespace, topic, sub): (String, String, String, String),
) -> ApiResult<(TopicName, String)> {
    if sub.is_empty() || sub.chars().any(char::is_control) {
        return Err(ApiError::precondition(format!(
            "Subscription name is not valid: {sub:?}"
        )));
    }
    let topic = topic_in_namespace(s, &(tenant, namespace, topic)).await?;
    Ok((topic, sub))
}

/// Pulsar's `MessageIdImpl` as JSON: `-1:-1` is earliest, `Long.MAX:Long.MAX` latest.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageIdData {
    ledger_id: i64,
    entry_id: i64,
}

pub(super) async fn create_subscription(
    State(s): State<AdminState>,
    Path(p): SubPath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let (topic, sub) = subscription_of(&s, p).await?;
    let start = match optional_json_body::<MessageIdData>(&body)? {
        None => StartPosition::Latest,
        Some(MessageIdData {
            ledger_id: i64::MAX,
            entry_id: i64::MAX,
        }) => StartPosition::Latest,
        Some(MessageIdData {
            ledger_id: -1,
            entry_id: -1,
        }) => StartPosition::Earliest,
        Some(MessageIdData {
            ledger_id,
            entry_id,
        }) => match (u64::try_from(ledger_id), u64::try_from(entry_id)) {
            (Ok(ledger_id), Ok(entry_id)) => StartPosition::At {
                ledger_id,
                entry_id,
            },
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid message id {ledger_id}:{entry_id}"
                )));
            }
        },
    };
    s.topics.create_subscription(&topic, &sub, start).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn delete_subscription(
    State(s): State<AdminState>,
    Path(p): SubPath,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<StatusCode> {
    let (topic, sub) = subscription_of(&s, p).await?;
    s.topics
        .delete_subscription(&topic, &sub, force(&q))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn number<T: std::str::FromStr>(what: &str, s: &str) -> ApiResult<T> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid {what}: {s:?}")))
}

pub(super) async fn reset_cursor_to_time(
    State(s): State<AdminState>,
    Path((tenant, namespace, topic, sub, timestamp)): Path<(
        String,
        String,
        String,
        String,
        String,
    )>,
) -> ApiResult<StatusCode> {
    let timestamp: u64 = number("timestamp", &timestamp)?;
    let (topic, sub) = subscription_of(&s, (tenant, namespace, topic, sub)).await?;
    s.topics
        .reset_cursor(&topic, &sub, ResetTarget::Timestamp(timestamp))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pulsar's `ResetCursorData`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResetCursorData {
    ledger_id: i64,
    entry_id: i64,
    #[serde(default)]
    is_excluded: bool,
    #[serde(default = "no_batch_index")]
    batch_index: i32,
}

fn no_batch_index() -> i32 {
    -1
}

pub(super) async fn reset_cursor_to_message(
    State(s): State<AdminState>,
    Path(p): SubPath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let data: ResetCursorData = json_body(&body)?;
    let (Ok(ledger_id), Ok(entry_id)) =
        (u64::try_from(data.ledger_id), u64::try_from(data.entry_id))
    else {
        return Err(ApiError::bad_request(format!(
            "invalid message id {}:{}",
            data.ledger_id, data.entry_id
        )));
    };
    let (topic, sub) = subscription_of(&s, p).await?;
    let target = ResetTarget::MessageId {
        ledger_id,
        entry_id,
        batch_index: (data.batch_index >= 0).then_some(data.batch_index),
        excluded: data.is_excluded,
    };
    s.topics.reset_cursor(&topic, &sub, target).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn skip(
    State(s): State<AdminState>,
    Path((tenant, namespace, topic, sub, count)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let count: u64 = number("number of messages", &count)?;
    let (topic, sub) = subscription_of(&s, (tenant, namespace, topic, sub)).await?;
    s.topics.skip(&topic, &sub, count).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn skip_all(
    State(s): State<AdminState>,
    Path(p): SubPath,
) -> ApiResult<StatusCode> {
    let (topic, sub) = subscription_of(&s, p).await?;
    s.topics.skip_all(&topic, &sub).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn peek(
    State(s): State<AdminState>,
    Path((tenant, namespace, topic, sub, position)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    let position: u64 = number("message position", &position)?;
    if position < 1 {
        return Err(ApiError::precondition("Message position should be >= 1"));
    }
    let (topic, sub) = subscription_of(&s, (tenant, namespace, topic, sub)).await?;
    let message = s.topics.peek(&topic, &sub, position).await?;
    Ok(peek_response(message))
}

/// Pulsar's peek answer: the payload as the body, the metadata as `X-Pulsar-*` headers.
fn peek_response(m: PeekedMessage) -> Response {
    let mut headers = HeaderMap::new();
    let mut add = |name: &str, value: String| {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(&value)) {
            headers.insert(n, v);
        }
    };
    add(
        "X-Pulsar-Message-ID",
        format!("{}:{}", m.ledger_id, m.entry_id),
    );
    if let Some(t) = m.publish_time_ms {
        add("X-Pulsar-publish-time", crate::timefmt::iso8601_utc_ms(t));
    }
    if let Some(t) = m.event_time_ms {
        add("X-Pulsar-event-time", crate::timefmt::iso8601_utc_ms(t));
    }
    if let Some(p) = m.producer_name {
        add("X-Pulsar-producer-name", p);
    }
    if let Some(seq) = m.sequence_id {
        add("X-Pulsar-sequence-id", seq.to_string());
    }
    if let Some(k) = m.partition_key {
        add("X-Pulsar-partition-key", k);
    }
    if let Some(n) = m.num_batch_messages {
        add("X-Pulsar-num-batch-message", n.to_string());
        add("X-Pulsar-batch-size", m.payload.len().to_string());
    }
    if let Some(c) = m.compression {
        add("X-Pulsar-compression", c);
    }
    if let Some(u) = m.uncompressed_size {
        add("X-Pulsar-uncompressed-size", u.to_string());
    }
    for (k, v) in m.properties {
        add(&format!("X-Pulsar-PROPERTY-{k}"), v);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    (StatusCode::OK, headers, m.payload).into_response()
}

/// `PUT .../unload` (`pulsar-admin topics unload`): the topic is closed where it is served and
/// loads again on its clients' next request. A partitioned topic is unloaded by partition.
pub(super) async fn unload_topic(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<StatusCode> {
    let topic = topic_in_namespace(&s, &p).await?;
    s.topics.unload(&topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT .../offload`: offload the closed ledgers before the given message's ledger.
pub(super) async fn trigger_offload(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let Some(id) = optional_json_body::<MessageIdData>(&body)? else {
        return Err(ApiError::bad_request("messageId is null"));
    };
    let Ok(ledger) = u64::try_from(id.ledger_id) else {
        return Err(ApiError::bad_request(format!(
            "invalid message id {}:{}",
            id.ledger_id, id.entry_id
        )));
    };
    let topic = topic_in_namespace(&s, &p).await?;
    s.topics.offload(&topic, ledger).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET .../offload`: the last offload run.
pub(super) async fn offload_status(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<Json<OffloadProcessStatus>> {
    let topic = topic_in_namespace(&s, &p).await?;
    Ok(Json(s.topics.offload_status(&topic).await?))
}
