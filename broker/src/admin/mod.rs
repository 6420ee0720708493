//! The admin REST API: the `/admin/v2` paths `pulsar-admin` calls, with Pulsar's JSON shapes and
//! HTTP codes, served by axum.
//!
//! Tenants, namespaces with their policies and partitioned-topic metadata are records in the
//! metadata store, read and written through [`Policies`]; topic operations (create, delete,
//! stats, subscriptions, cursors, peek) go to the broker service through [`TopicAdmin`]; topic
//! schemas are read and written in the [`SchemaRegistry`] (`/admin/v2/schemas/…`).
//!
//! Conventions, as in Pulsar: a successful PUT/POST/DELETE without a result answers 204; a GET
//! answers 200 with JSON (204 for a namespace policy that is not set); errors answer
//! `{"reason": "…"}` with 400 (malformed body or number), 404 (no such tenant, namespace,
//! topic, subscription), 406 (a partition count below 1 or above [`PARTITIONS_MAX`]), 409
//! (exists already; tenant or namespace not empty; partitions may only grow), 412 (invalid name
//! or policy), 413 (body over [`BODY_SIZE_MAX_BYTES`]), 500 (metadata store failure) and 503
//! (metadata store unreachable, topic service not running). A topic another broker serves
//! answers 307 to the same path on that broker's admin API.

mod bookies;
mod brokers;
mod bundles;
mod namespaces;
mod persistent;
mod schemas;
pub mod topic_admin;
mod topic_policies;
pub mod topics;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use bytes::Bytes;
use magnetar_metadata::MetadataError;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use crate::policies::{Policies, PolicyError};
use crate::schema::SchemaRegistry;
use crate::topic_name::{NamespaceName, TopicName};

pub use namespaces::{BundlesData, NamespacePoliciesView};
pub use topics::{NoTopics, TopicAdmin, TopicAdminError};

/// Request bodies larger than this are refused with 413 (admin bodies are small JSON).
pub const BODY_SIZE_MAX_BYTES: usize = 1024 * 1024;
/// The largest partition count a partitioned topic may have (406 above it).
pub const PARTITIONS_MAX: u32 = 10_000;

/// What the admin handlers work on.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub policies: Policies,
    pub topics: Arc<dyn TopicAdmin>,
    /// The schema registry `/admin/v2/schemas` serves and topic deletion clears.
    pub schemas: SchemaRegistry,
    /// The one cluster `GET /admin/v2/clusters` lists (pulsar-admin's `tenants create` without
    /// `--allowed-clusters` asks for it).
    pub cluster_name: String,
    /// What `GET /metrics` reports (the process's series alone when no broker runs).
    pub metrics: Arc<dyn crate::metrics::Scrape>,
}

/// The cluster name of [`AdminState::new`], as Pulsar's standalone names its cluster.
pub use crate::cluster::DEFAULT_CLUSTER_NAME;

impl AdminState {
    /// With a schema registry over the policies' store and Pulsar's default strategy (FULL);
    /// see [`AdminState::with_schemas`].
    pub fn new(policies: Policies, topics: Arc<dyn TopicAdmin>) -> Self {
        AdminState {
            schemas: SchemaRegistry::new(policies.store()),
            policies,
            topics,
            cluster_name: DEFAULT_CLUSTER_NAME.to_owned(),
            metrics: Arc::new(crate::metrics::ProcessOnly),
        }
    }

    /// `GET /metrics` reports `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn crate::metrics::Scrape>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Uses `schemas` (the broker's registry, with its configured default strategy).
    pub fn with_schemas(mut self, schemas: SchemaRegistry) -> Self {
        self.schemas = schemas;
        self
    }

    pub fn with_cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = name.into();
        self
    }

    /// Admin state without a broker service: topic routes answer 503.
    pub fn without_topics(policies: Policies) -> Self {
        AdminState::new(policies, Arc::new(NoTopics))
    }
}

/// The `/admin/v2` routes.
pub fn router(state: AdminState) -> Router {
    const NS: &str = "/admin/v2/namespaces/{tenant}/{namespace}";
    const TOPIC: &str = "/admin/v2/persistent/{tenant}/{namespace}/{topic}";
    const SUB: &str =
        "/admin/v2/persistent/{tenant}/{namespace}/{topic}/subscription/{subscription}";
    const SCHEMA: &str = "/admin/v2/schemas/{tenant}/{namespace}/{topic}";
    Router::new()
        .route("/admin/v2/clusters", get(list_clusters))
        .route(
            "/admin/v2/brokers/leaderBroker",
            get(brokers::leader_broker),
        )
        .route("/admin/v2/brokers/health", get(brokers::health))
        .route("/status.html", get(brokers::status))
        .route("/metrics", get(brokers::metrics))
        .route("/metrics/", get(brokers::metrics))
        .route("/admin/v2/brokers/{cluster}", get(brokers::active))
        .route(
            "/admin/v2/broker-stats/load-report",
            get(bundles::load_report),
        )
        .route(
            "/lookup/v2/topic/{domain}/{tenant}/{namespace}/{topic}",
            get(bundles::lookup),
        )
        .route(&format!("{NS}/unload"), put(bundles::unload_namespace))
        .route(
            &format!("{NS}/{{bundle}}/unload"),
            put(bundles::unload_bundle),
        )
        .route(
            &format!("{NS}/{{bundle}}/split"),
            put(bundles::split_bundle),
        )
        .route("/admin/v2/bookies/all", get(bookies::all))
        .route(
            "/admin/v2/bookies/underreplicated",
            get(bookies::under_replicated),
        )
        .route(
            "/admin/v2/bookies/{bookie}/decommission",
            get(bookies::decommission_status)
                .put(bookies::decommission)
                .delete(bookies::cancel_decommission),
        )
        .route("/admin/v2/tenants", get(namespaces::list_tenants))
        .route(
            "/admin/v2/tenants/{tenant}",
            get(namespaces::get_tenant)
                .put(namespaces::create_tenant)
                .post(namespaces::update_tenant)
                .delete(namespaces::delete_tenant),
        )
        .route(
            "/admin/v2/namespaces/{tenant}",
            get(namespaces::list_namespaces),
        )
        .route(
            NS,
            get(namespaces::get_policies)
                .put(namespaces::create_namespace)
                .delete(namespaces::delete_namespace),
        )
        .route(
            &format!("{NS}/retention"),
            get(namespaces::get_retention)
                .post(namespaces::set_retention)
                .delete(namespaces::remove_retention),
        )
        .route(
            &format!("{NS}/deduplication"),
            get(namespaces::get_deduplication)
                .post(namespaces::set_deduplication)
                .delete(namespaces::remove_deduplication),
        )
        .route(
            &format!("{NS}/persistence"),
            get(namespaces::get_persistence)
                .post(namespaces::set_persistence)
                .delete(namespaces::remove_persistence),
        )
        .route(
            &format!("{NS}/autoTopicCreation"),
            get(namespaces::get_auto_topic_creation)
                .post(namespaces::set_auto_topic_creation)
                .delete(namespaces::remove_auto_topic_creation),
        )
        .route(
            &format!("{NS}/schemaCompatibilityStrategy"),
            get(namespaces::get_schema_compatibility_strategy)
                .put(namespaces::set_schema_compatibility_strategy)
                .post(namespaces::set_schema_compatibility_strategy),
        )
        .route(
            &format!("{NS}/isAllowAutoUpdateSchema"),
            get(namespaces::get_allow_auto_update_schema)
                .post(namespaces::set_allow_auto_update_schema),
        )
        .route(
            &format!("{NS}/inactiveTopicPolicies"),
            get(namespaces::get_inactive_topic_policies)
                .post(namespaces::set_inactive_topic_policies)
                .delete(namespaces::remove_inactive_topic_policies),
        )
        .route(
            &format!("{NS}/offloadThreshold"),
            get(namespaces::get_offload_threshold).put(namespaces::set_offload_threshold),
        )
        .route(
            &format!("{NS}/offloadThresholdInSeconds"),
            get(namespaces::get_offload_threshold_in_seconds)
                .put(namespaces::set_offload_threshold_in_seconds),
        )
        .route(
            &format!("{NS}/offloadDeletionLagMs"),
            get(namespaces::get_offload_deletion_lag)
                .put(namespaces::set_offload_deletion_lag)
                .delete(namespaces::clear_offload_deletion_lag),
        )
        .route(
            &format!("{NS}/offloadPolicies"),
            get(namespaces::get_offload_policies).post(namespaces::set_offload_policies),
        )
        .route(
            &format!("{NS}/removeOffloadPolicies"),
            delete(namespaces::remove_offload_policies),
        )
        .route(&format!("{NS}/bundles"), get(namespaces::get_bundles))
        .route(&format!("{NS}/topics"), get(persistent::list_topics))
        .route(
            "/admin/v2/persistent/{tenant}/{namespace}",
            get(persistent::list_topics),
        )
        .route(
            "/admin/v2/persistent/{tenant}/{namespace}/partitioned",
            get(persistent::list_partitioned),
        )
        .route(
            "/admin/v2/non-persistent/{tenant}/{namespace}",
            get(persistent::list_non_persistent),
        )
        .route(
            "/admin/v2/non-persistent/{tenant}/{namespace}/partitioned",
            get(persistent::list_non_persistent),
        )
        .route(
            TOPIC,
            put(persistent::create_topic).delete(persistent::delete_topic),
        )
        .route(
            &format!("{TOPIC}/partitions"),
            get(persistent::get_partitions)
                .put(persistent::create_partitioned)
                .post(persistent::update_partitioned)
                .delete(persistent::delete_partitioned),
        )
        .route(&format!("{TOPIC}/unload"), put(persistent::unload_topic))
        .route(&format!("{TOPIC}/stats"), get(persistent::stats))
        .route(&format!("{TOPIC}/bundle"), get(bundles::bundle_range))
        .route(
            &format!("{TOPIC}/partitioned-stats"),
            get(persistent::partitioned_stats),
        )
        .route(
            &format!("{TOPIC}/internalStats"),
            get(persistent::internal_stats),
        )
        .route(
            &format!("{TOPIC}/offload"),
            get(persistent::offload_status).put(persistent::trigger_offload),
        )
        .route(
            &format!("{TOPIC}/offloadPolicies"),
            get(topic_policies::get_offload_policies)
                .post(topic_policies::set_offload_policies)
                .delete(topic_policies::remove_offload_policies),
        )
        .route(
            &format!("{TOPIC}/subscriptions"),
            get(persistent::subscriptions),
        )
        .route(
            SUB,
            put(persistent::create_subscription).delete(persistent::delete_subscription),
        )
        .route(
            &format!("{SUB}/resetcursor/{{timestamp}}"),
            post(persistent::reset_cursor_to_time),
        )
        .route(
            &format!("{SUB}/resetcursor"),
            post(persistent::reset_cursor_to_message),
        )
        .route(&format!("{SUB}/skip/{{count}}"), post(persistent::skip))
        .route(&format!("{SUB}/skip_all"), post(persistent::skip_all))
        .route(
            &format!("{SUB}/position/{{position}}"),
            get(persistent::peek),
        )
        .route(
            &format!("{SCHEMA}/schema"),
            get(schemas::get_latest)
                .post(schemas::upload)
                .delete(schemas::delete),
        )
        .route(
            &format!("{SCHEMA}/schema/{{version}}"),
            get(schemas::get_version),
        )
        .route(&format!("{SCHEMA}/schemas"), get(schemas::get_all))
        .fallback(unknown_endpoint)
        .layer(DefaultBodyLimit::max(BODY_SIZE_MAX_BYTES))
        .layer(middleware::from_fn(refuse_large_bodies))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(complete_redirects))
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Answers 413 at once for a declared `Content-Length` over the limit, without reading the
/// body (bodies without a length are cut off by [`DefaultBodyLimit`] as they arrive).
async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_SIZE_MAX_BYTES as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {BODY_SIZE_MAX_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// A topic served by another broker answers 307 with that broker's admin URL as `Location`
/// ([`TopicAdminError::Redirect`]); the same path and query are appended here, where the
/// request is known, so the client repeats the very request there (as Pulsar redirects).
async fn complete_redirects(request: Request, next: Next) -> Response {
    let path_and_query = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let mut response = next.run(request).await;
    if response.status() != StatusCode::TEMPORARY_REDIRECT {
        return response;
    }
    let target = response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(|base| format!("{}{path_and_query}", base.trim_end_matches('/')));
    if let Some(location) = target.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Gives axum's own error answers (undecodable path, body over the limit, wrong method) the
/// `{"reason": "…"}` body every other error has.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let reason = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut answer = ApiError::new(status, reason).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

async fn list_clusters(State(s): State<AdminState>) -> axum::Json<Vec<String>> {
    axum::Json(vec![s.cluster_name])
}

async fn unknown_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no admin endpoint {method} {}", uri.path()),
    )
}

/// An error answer: the HTTP code and Pulsar's `{"reason": "…"}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
    /// `Location` of a 307 redirect.
    pub location: Option<String>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
            location: None,
        }
    }
    pub(crate) fn bad_request(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, reason)
    }
    pub(crate) fn not_found(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, reason)
    }
    pub(crate) fn conflict(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, reason)
    }
    pub(crate) fn precondition(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::PRECONDITION_FAILED, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "reason": self.reason });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(location) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    }
}

fn metadata_status(e: &MetadataError) -> StatusCode {
    crate::error::metadata_status(e)
}

impl From<MetadataError> for ApiError {
    fn from(e: MetadataError) -> Self {
        ApiError::new(metadata_status(&e), e.to_string())
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match &e {
            PolicyError::AlreadyExists(_) => ApiError::conflict(e.to_string()),
            PolicyError::NotFound(_) => ApiError::not_found(e.to_string()),
            PolicyError::Invalid(_) => ApiError::precondition(e.to_string()),
            PolicyError::Metadata(m) => ApiError::new(metadata_status(m), e.to_string()),
        }
    }
}

impl From<TopicAdminError> for ApiError {
    fn from(e: TopicAdminError) -> Self {
        let status = match &e {
            TopicAdminError::NotFound(_) => StatusCode::NOT_FOUND,
            TopicAdminError::AlreadyExists(_) => StatusCode::CONFLICT,
            TopicAdminError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
            TopicAdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            TopicAdminError::Redirect(url) => {
                return ApiError {
                    status: StatusCode::TEMPORARY_REDIRECT,
                    reason: e.to_string(),
                    location: Some(url.clone()),
                };
            }
            TopicAdminError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            TopicAdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A JSON body that must be present.
pub(crate) fn json_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    optional_json_body(body)?
        .ok_or_else(|| ApiError::bad_request("a JSON request body is required"))
}

/// A JSON body that may be absent (empty).
pub(crate) fn optional_json_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<Option<T>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

pub(crate) fn namespace_name(tenant: &str, namespace: &str) -> ApiResult<NamespaceName> {
    NamespaceName::new(tenant, namespace)
        .map_err(|e| ApiError::precondition(format!("Namespace name is not valid: {e}")))
}

pub(crate) fn topic_name(tenant: &str, namespace: &str, topic: &str) -> ApiResult<TopicName> {
    let ns = namespace_name(tenant, namespace)?;
    TopicName::new(ns, topic)
        .map_err(|e| ApiError::precondition(format!("Topic name is not valid: {e}")))
}

/// 404 unless the namespace exists.
pub(crate) async fn require_namespace(state: &AdminState, ns: &NamespaceName) -> ApiResult<()> {
    match state.policies.namespace(ns).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!(
            "Namespace {ns} does not exist"
        ))),
    }
}
