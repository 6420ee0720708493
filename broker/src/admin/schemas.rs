//! `/admin/v2/schemas/{tenant}/{namespace}/{topic}/…`: the schema registry as `pulsar-admin
//! schemas get / upload / delete` use it, with Pulsar's JSON (`GetSchemaResponse`,
//! `GetAllVersionsSchemaResponse`, `PostSchemaPayload`, `PostSchemaResponse`,
//! `DeleteSchemaResponse`) and codes: 404 without a schema (or namespace), 409 for a schema
//! the namespace's compatibility strategy refuses, 422 for invalid schema data.
//!
//! A partition's schema is its partitioned parent's (the registry keys by the parent). The
//! topic itself need not exist: a schema may be uploaded before any producer, as in Pulsar.
//! `KEY_VALUE` definitions are passed through as stored; Pulsar's JSON rendering of the
//! key and value schemas is not done here, so a `KEY_VALUE` upload is refused with 422.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use magnetar_proto::pulsar::api::schema::Type as SchemaType;
use magnetar_proto::pulsar::api::{KeyValue, Schema};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AdminState, ApiError, ApiResult, json_body, require_namespace, topic_name};
use crate::error::BrokerError;
use crate::schema::{StoredSchema, type_name};
use crate::topic_name::TopicName;

type TopicPath = Path<(String, String, String)>;

/// Pulsar's `GetSchemaResponse`.
#[derive(Debug, Serialize)]
pub(super) struct GetSchemaResponse {
    version: u64,
    /// `AVRO`, `JSON`, `STRING`, … (`BYTES` for none).
    #[serde(rename = "type")]
    schema_type: String,
    timestamp: u64,
    /// The definition as text (AVRO/JSON definitions are JSON documents).
    data: String,
    properties: BTreeMap<String, String>,
}

impl GetSchemaResponse {
    fn of(s: StoredSchema) -> Self {
        GetSchemaResponse {
            version: s.version,
            schema_type: type_name(s.schema_type),
            timestamp: s.timestamp_ms,
            data: String::from_utf8_lossy(&s.data).into_owned(),
            properties: s.properties,
        }
    }
}

/// Pulsar's `PostSchemaPayload`.
#[derive(Debug, Deserialize)]
struct PostSchemaPayload {
    #[serde(rename = "type")]
    schema_type: String,
    #[serde(default)]
    schema: String,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

fn not_found() -> ApiError {
    ApiError::not_found("Schema not found")
}

fn unprocessable(reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)
}

fn broker_error(e: BrokerError) -> ApiError {
    let status = e.http_status();
    match e {
        // The bare reason: the compatibility check's explanation, the shutdown's cause.
        BrokerError::IncompatibleSchema(m) | BrokerError::NotReady(m) => ApiError::new(status, m),
        BrokerError::Metadata(m) => ApiError::new(status, m.to_string()),
        e => ApiError::new(status, e.to_string()),
    }
}

/// The topic of a schema route, in a namespace that exists.
async fn schema_topic(
    s: &AdminState,
    (tenant, namespace, topic): &(String, String, String),
) -> ApiResult<TopicName> {
    let topic = topic_name(tenant, namespace, topic)?;
    require_namespace(s, topic.namespace()).await?;
    Ok(topic)
}

/// The wire type of a Pulsar type name (`BYTES` is `None`).
fn schema_type(name: &str) -> Option<SchemaType> {
    (0..=i32::from(u8::MAX))
        .filter_map(|n| SchemaType::try_from(n).ok())
        .find(|t| type_name(*t as i32) == name)
}

pub(super) async fn get_latest(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<Json<GetSchemaResponse>> {
    let topic = schema_topic(&s, &p).await?;
    let found = s.schemas.get(&topic, None).await.map_err(broker_error)?;
    found
        .map(|v| Json(GetSchemaResponse::of(v)))
        .ok_or_else(not_found)
}

pub(super) async fn get_version(
    State(s): State<AdminState>,
    Path((tenant, namespace, topic, version)): Path<(String, String, String, String)>,
) -> ApiResult<Json<GetSchemaResponse>> {
    let version: u64 = version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid schema version {version:?}")))?;
    let topic = schema_topic(&s, &(tenant, namespace, topic)).await?;
    let found = s
        .schemas
        .get(&topic, Some(version))
        .await
        .map_err(broker_error)?;
    found
        .map(|v| Json(GetSchemaResponse::of(v)))
        .ok_or_else(not_found)
}

/// `GetAllVersionsSchemaResponse`: every version, oldest first (404 when there is none).
pub(super) async fn get_all(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<Json<Value>> {
    let topic = schema_topic(&s, &p).await?;
    let history = s.schemas.history(&topic).await.map_err(broker_error)?;
    if history.versions.is_empty() {
        return Err(ApiError::not_found("Schemas not found"));
    }
    let all: Vec<GetSchemaResponse> = history
        .versions
        .into_iter()
        .map(GetSchemaResponse::of)
        .collect();
    Ok(Json(json!({ "getSchemaResponses": all })))
}

/// `PostSchemaResponse`: the version, as Pulsar's `LongSchemaVersion` serializes.
pub(super) async fn upload(
    State(s): State<AdminState>,
    Path(p): TopicPath,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let payload: PostSchemaPayload = json_body(&body)?;
    let topic = schema_topic(&s, &p).await?;
    let Some(ty) = schema_type(&payload.schema_type) else {
        return Err(unprocessable(format!(
            "Invalid schema data: unknown schema type {:?}",
            payload.schema_type
        )));
    };
    if ty == SchemaType::KeyValue {
        return Err(unprocessable(
            "Invalid schema data: KEY_VALUE schemas cannot be uploaded through the admin API",
        ));
    }
    if matches!(ty, SchemaType::Avro | SchemaType::Json)
        && serde_json::from_str::<Value>(&payload.schema).is_err()
    {
        return Err(unprocessable(format!(
            "Invalid schema data: the {} definition is not a JSON document",
            payload.schema_type
        )));
    }
    if ty == SchemaType::None {
        return Err(unprocessable(
            "Invalid schema data: a BYTES schema (no schema) is not registered",
        ));
    }
    let schema = Schema {
        name: topic.local_name().to_owned(),
        schema_data: Bytes::from(payload.schema.into_bytes()),
        r#type: ty as i32,
        properties: payload
            .properties
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect(),
    };
    let version = s
        .schemas
        .put_admin_schema(&topic, &schema)
        .await
        .map_err(broker_error)?;
    Ok(Json(json!({ "version": { "version": version } })))
}

/// `DeleteSchemaResponse`: the latest version deleted, -1 when there was none (as Pulsar).
pub(super) async fn delete(
    State(s): State<AdminState>,
    Path(p): TopicPath,
) -> ApiResult<Json<Value>> {
    let topic = schema_topic(&s, &p).await?;
    let latest = s.schemas.delete(&topic).await.map_err(broker_error)?;
    let version = latest.and_then(|v| i64::try_from(v).ok()).unwrap_or(-1);
    Ok(Json(json!({ "version": version })))
}
