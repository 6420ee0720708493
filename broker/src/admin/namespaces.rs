//! `/admin/v2/tenants/…` and `/admin/v2/namespaces/…`: tenants, namespaces and their policies.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    AdminState, ApiError, ApiResult, json_body, namespace_name, optional_json_body,
    require_namespace,
};
use crate::cluster::bundle::{BUNDLE_COUNT_MAX, NamespaceBundles};
use crate::policies::{
    AutoTopicCreation, InactiveTopicPolicies, NamespacePolicies, OffloadPolicies,
    PersistencePolicies, PolicyError, RetentionPolicies, TenantInfo,
};
use crate::schema::CompatibilityStrategy;
use crate::topic_name::NamespaceName;

/// Pulsar's `BundlesData`: the hash boundaries of a namespace's bundles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundlesData {
    #[serde(default)]
    pub boundaries: Option<Vec<String>>,
    #[serde(default)]
    pub num_bundles: u32,
}

impl BundlesData {
    fn of(ns: &NamespaceName, p: &NamespacePolicies) -> Self {
        let bundles = NamespaceBundles::of(ns.clone(), p);
        let boundaries: Vec<String> = bundles
            .boundaries()
            .iter()
            .map(|b| format!("0x{b:08x}"))
            .collect();
        BundlesData {
            num_bundles: bundles.len() as u32,
            boundaries: Some(boundaries),
        }
    }
}

/// A namespace's policies as Pulsar's `Policies` JSON writes them (the fields Magnetar keeps):
/// the body of `GET /admin/v2/namespaces/{tenant}/{namespace}` and of namespace creation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamespacePoliciesView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundles: Option<BundlesData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policies: Option<RetentionPolicies>,
    #[serde(
        rename = "deduplicationEnabled",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub deduplication_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<PersistencePolicies>,
    #[serde(
        rename = "autoTopicCreationOverride",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub auto_topic_creation_override: Option<AutoTopicCreation>,
    /// Left out when unset (Pulsar writes `UNDEFINED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_compatibility_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_allow_auto_update_schema: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_topic_policies: Option<InactiveTopicPolicies>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_threshold_in_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_deletion_lag_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_policies: Option<OffloadPolicies>,
}

impl NamespacePoliciesView {
    fn of(ns: &NamespaceName, p: &NamespacePolicies) -> Self {
        NamespacePoliciesView {
            bundles: Some(BundlesData::of(ns, p)),
            retention_policies: p.retention_policies,
            deduplication_enabled: p.deduplication_enabled,
            persistence: p.persistence,
            auto_topic_creation_override: p.auto_topic_creation_override.clone(),
            schema_compatibility_strategy: p
                .schema_compatibility_strategy
                .map(|c| c.as_str().to_owned()),
            is_allow_auto_update_schema: p.is_allow_auto_update_schema,
            inactive_topic_policies: p.inactive_topic_policies,
            offload_threshold: p.offload_threshold,
            offload_threshold_in_seconds: p.offload_threshold_in_seconds,
            offload_deletion_lag_ms: p.offload_deletion_lag_ms,
            offload_policies: p.offload_policies.clone(),
        }
    }

    fn into_policies(self) -> ApiResult<NamespacePolicies> {
        let bundle_count = self.bundles.map(bundle_count).transpose()?.flatten();
        if let Some(r) = &self.retention_policies {
            validate_retention(r)?;
        }
        if let Some(p) = &self.persistence {
            validate_persistence(p)?;
        }
        if let Some(a) = &self.auto_topic_creation_override {
            validate_auto_topic_creation(a)?;
        }
        Ok(NamespacePolicies {
            retention_policies: self.retention_policies,
            deduplication_enabled: self.deduplication_enabled,
            persistence: self.persistence,
            auto_topic_creation_override: self.auto_topic_creation_override,
            bundle_count,
            bundle_boundaries: None,
            schema_compatibility_strategy: self
                .schema_compatibility_strategy
                .as_deref()
                .map(parse_strategy)
                .transpose()?
                .flatten(),
            is_allow_auto_update_schema: self.is_allow_auto_update_schema,
            inactive_topic_policies: self.inactive_topic_policies,
            offload_threshold: self.offload_threshold,
            offload_threshold_in_seconds: self.offload_threshold_in_seconds,
            offload_deletion_lag_ms: self.offload_deletion_lag_ms,
            offload_policies: self.offload_policies,
        })
    }
}

/// The bundle count a `BundlesData` asks for; `None` for an empty one, which pulsar-admin
/// sends to mean "the default".
fn bundle_count(b: BundlesData) -> ApiResult<Option<u32>> {
    let count = match (b.num_bundles, b.boundaries) {
        (0, None) => return Ok(None),
        (0, Some(bounds)) if bounds.is_empty() => return Ok(None),
        (0, Some(bounds)) => bounds.len().saturating_sub(1) as u32,
        (n, _) => n,
    };
    if !(1..=BUNDLE_COUNT_MAX).contains(&count) {
        return Err(ApiError::precondition(format!(
            "Invalid number of bundles {count}: between 1 and {BUNDLE_COUNT_MAX}"
        )));
    }
    Ok(Some(count))
}

fn validate_retention(r: &RetentionPolicies) -> ApiResult<()> {
    if r.retention_time_in_minutes < -1 || r.retention_size_in_mb < -1 {
        return Err(ApiError::precondition(
            "Invalid retention policy: time and size must be -1 (unlimited) or more",
        ));
    }
    Ok(())
}

fn validate_persistence(p: &PersistencePolicies) -> ApiResult<()> {
    let (e, qw, qa) = (
        p.bookkeeper_ensemble,
        p.bookkeeper_write_quorum,
        p.bookkeeper_ack_quorum,
    );
    if !(e >= qw && qw >= qa && qa >= 1) {
        return Err(ApiError::bad_request(format!(
            "Bookkeeper Ensemble ({e}) >= WriteQuorum ({qw}) >= AckQuorum ({qa}) >= 1 is required"
        )));
    }
    if !p.managed_ledger_max_mark_delete_rate.is_finite()
        || p.managed_ledger_max_mark_delete_rate < 0.0
    {
        return Err(ApiError::bad_request(
            "managedLedgerMaxMarkDeleteRate must be 0 or more",
        ));
    }
    Ok(())
}

fn validate_auto_topic_creation(a: &AutoTopicCreation) -> ApiResult<()> {
    let invalid = |detail: &str| {
        Err(ApiError::precondition(format!(
            "Invalid configuration for autoTopicCreationOverride. the detail is {detail}"
        )))
    };
    if !a.allow_auto_topic_creation {
        return Ok(());
    }
    match (a.topic_type.as_str(), a.default_num_partitions) {
        ("non-partitioned", None) => Ok(()),
        ("non-partitioned", Some(_)) => {
            invalid("[defaultNumPartitions] cannot be set if the type is non-partitioned.")
        }
        ("partitioned", Some(n)) if n > super::PARTITIONS_MAX => Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Number of partitions should be less than or equal to {}",
                super::PARTITIONS_MAX
            ),
        )),
        ("partitioned", Some(n)) if n >= 1 => Ok(()),
        ("partitioned", _) => invalid(
            "[defaultNumPartitions] cannot be null or less than 1 when the type is partitioned.",
        ),
        (other, _) => invalid(&format!(
            "[topicType] must be non-partitioned or partitioned, not {other:?}."
        )),
    }
}

/// A strategy name from a request; `None` for `UNDEFINED`.
fn parse_strategy(name: &str) -> ApiResult<Option<CompatibilityStrategy>> {
    CompatibilityStrategy::parse_policy(name).map_err(ApiError::precondition)
}

/// A namespace's strategy as Pulsar's admin API writes it (`UNDEFINED` when unset).
fn strategy_name(strategy: Option<CompatibilityStrategy>) -> String {
    strategy
        .map_or("UNDEFINED", CompatibilityStrategy::as_str)
        .to_owned()
}

fn tenant_name_valid(tenant: &str) -> ApiResult<()> {
    NamespaceName::new(tenant, "x")
        .map(|_| ())
        .map_err(|_| ApiError::precondition(format!("Tenant name is not valid: {tenant:?}")))
}

fn tenant_missing(tenant: &str) -> ApiError {
    ApiError::not_found(format!("Tenant {tenant} does not exist"))
}

pub(super) async fn list_tenants(State(s): State<AdminState>) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(s.policies.tenants().await?))
}

pub(super) async fn get_tenant(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<TenantInfo>> {
    tenant_name_valid(&tenant)?;
    s.policies
        .tenant(&tenant)
        .await?
        .map(Json)
        .ok_or_else(|| tenant_missing(&tenant))
}

pub(super) async fn create_tenant(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    tenant_name_valid(&tenant)?;
    let info: TenantInfo = optional_json_body(&body)?.unwrap_or_default();
    match s.policies.create_tenant(&tenant, &info).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(PolicyError::AlreadyExists(_)) => Err(ApiError::conflict(format!(
            "Tenant {tenant} already exists"
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn update_tenant(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    tenant_name_valid(&tenant)?;
    let info: TenantInfo = json_body(&body)?;
    match s.policies.update_tenant(&tenant, &info).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(PolicyError::NotFound(_)) => Err(tenant_missing(&tenant)),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn delete_tenant(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
) -> ApiResult<StatusCode> {
    tenant_name_valid(&tenant)?;
    if s.policies.tenant(&tenant).await?.is_none() {
        return Err(tenant_missing(&tenant));
    }
    match s.policies.delete_tenant(&tenant).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(PolicyError::NotFound(_)) => Err(tenant_missing(&tenant)),
        // Pulsar answers 409 for a tenant that still has namespaces.
        Err(PolicyError::Invalid(_)) => {
            Err(ApiError::conflict("The tenant still has active namespaces"))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list_namespaces(
    State(s): State<AdminState>,
    Path(tenant): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    tenant_name_valid(&tenant)?;
    if s.policies.tenant(&tenant).await?.is_none() {
        return Err(tenant_missing(&tenant));
    }
    Ok(Json(s.policies.namespaces(&tenant).await?))
}

/// The namespace's stored policies, 404 if it does not exist.
pub(super) async fn policies_of(
    s: &AdminState,
    ns: &NamespaceName,
) -> ApiResult<NamespacePolicies> {
    s.policies
        .namespace(ns)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Namespace {ns} does not exist")))
}

pub(super) async fn get_policies(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<NamespacePoliciesView>> {
    let ns = namespace_name(&tenant, &namespace)?;
    let p = policies_of(&s, &ns).await?;
    Ok(Json(NamespacePoliciesView::of(&ns, &p)))
}

pub(super) async fn create_namespace(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let ns = namespace_name(&tenant, &namespace)?;
    let view: NamespacePoliciesView = optional_json_body(&body)?.unwrap_or_default();
    let policies = view.into_policies()?;
    match s.policies.create_namespace(&ns, &policies).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(PolicyError::AlreadyExists(_)) => {
            Err(ApiError::conflict(format!("Namespace {ns} already exists")))
        }
        Err(PolicyError::NotFound(_)) => Err(tenant_missing(&tenant)),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn delete_namespace(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let ns = namespace_name(&tenant, &namespace)?;
    require_namespace(&s, &ns).await?;
    let non_empty = || ApiError::conflict(format!("Cannot delete non empty namespace {ns}"));
    if !s.policies.partitioned_topics(&ns).await?.is_empty() {
        return Err(non_empty());
    }
    if s.topics.is_running() && !s.topics.list_topics(&ns).await?.is_empty() {
        return Err(non_empty());
    }
    s.policies.delete_namespace(&ns).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// 200 with the value, or 204 when the policy is not set (Pulsar answers `null` that way).
fn json_or_no_content<T: Serialize>(value: Option<T>) -> Response {
    match value {
        Some(v) => Json(v).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// Reads one policy of a namespace.
async fn read_policy<T: Serialize>(
    s: &AdminState,
    tenant: &str,
    namespace: &str,
    field: impl FnOnce(NamespacePolicies) -> Option<T>,
) -> ApiResult<Response> {
    let ns = namespace_name(tenant, namespace)?;
    Ok(json_or_no_content(field(policies_of(s, &ns).await?)))
}

/// Changes a namespace's policies with `f`; 204.
async fn write_policy(
    s: &AdminState,
    tenant: &str,
    namespace: &str,
    f: impl FnMut(&mut NamespacePolicies) + Send,
) -> ApiResult<StatusCode> {
    let ns = namespace_name(tenant, namespace)?;
    match s.policies.update_namespace(&ns, f).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(PolicyError::NotFound(_)) => Err(ApiError::not_found(format!(
            "Namespace {ns} does not exist"
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn get_retention(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Response> {
    read_policy(&s, &tenant, &namespace, |p| p.retention_policies).await
}

pub(super) async fn set_retention(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(&tenant, &namespace)?;
    let r: RetentionPolicies = json_body(&body)?;
    validate_retention(&r)?;
    write_policy(&s, &tenant, &namespace, |p| p.retention_policies = Some(r)).await
}

pub(super) async fn remove_retention(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    write_policy(&s, &tenant, &namespace, |p| p.retention_policies = None).await
}

pub(super) async fn get_inactive_topic_policies(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Response> {
    read_policy(&s, &tenant, &namespace, |p| p.inactive_topic_policies).await
}

pub(super) async fn set_inactive_topic_policies(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(&tenant, &namespace)?;
    let p: InactiveTopicPolicies = json_body(&body)?;
    if p.max_inactive_duration_seconds < 0 {
        return Err(ApiError::precondition(
            "Invalid inactive topic policy: maxInactiveDurationSeconds must be 0 or more",
        ));
    }
    write_policy(&s, &tenant, &namespace, |n| {
        n.inactive_topic_policies = Some(p)
    })
    .await
}

pub(super) async fn remove_inactive_topic_policies(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    write_policy(&s, &tenant, &namespace, |n| {
        n.inactive_topic_policies = None
    })
    .await
}

pub(super) async fn get_deduplication(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Response> {
    read_policy(&s, &tenant, &namespace, |p| p.deduplication_enabled).await
}

pub(super) async fn set_deduplication(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(&tenant, &namespace)?;
    let enabled: bool = json_body(&body)?;
    write_policy(&s, &tenant, &namespace, |p| {
        p.deduplication_enabled = Some(enabled)
    })
    .await
}

pub(super) async fn remove_deduplication(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    write_policy(&s, &tenant, &namespace, |p| p.deduplication_enabled = None).await
}

pub(super) async fn get_persistence(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Response> {
    read_policy(&s, &tenant, &namespace, |p| p.persistence).await
}

pub(super) async fn set_persistence(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(&tenant, &namespace)?;
    let persistence: PersistencePolicies = json_body(&body)?;
    validate_persistence(&persistence)?;
    write_policy(&s, &tenant, &namespace, |p| {
        p.persistence = Some(persistence)
    })
    .await
}

pub(super) async fn remove_persistence(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    write_policy(&s, &tenant, &namespace, |p| p.persistence = None).await
}

pub(super) async fn get_auto_topic_creation(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Response> {
    read_policy(&s, &tenant, &namespace, |p| p.auto_topic_creation_override).await
}

pub(super) async fn set_auto_topic_creation(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(&tenant, &namespace)?;
    let auto: AutoTopicCreation = json_body(&body)?;
    validate_auto_topic_creation(&auto)?;
    write_policy(&s, &tenant, &namespace, |p| {
        p.auto_topic_creation_override = Some(auto.clone())
    })
    .await
}

pub(super) async fn remove_auto_topic_creation(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    write_policy(&s, &tenant, &namespace, |p| {
        p.auto_topic_creation_override = None
    })
    .await
}

pub(super) async fn get_bundles(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<BundlesData>> {
    let ns = namespace_name(&tenant, &namespace)?;
    let p = policies_of(&s, &ns).await?;
    Ok(Json(BundlesData::of(&ns, &p)))
}

pub(super) async fn get_schema_compatibility_strategy(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<String>> {
    let ns = namespace_name(&tenant, &namespace)?;
    let p = policies_of(&s, &ns).await?;
    Ok(Json(strategy_name(p.schema_compatibility_strategy)))
}

/// Body: a JSON string such as `"BACKWARD"` (pulsar-admin sends it quoted); `UNDEFINED`
/// clears the policy (the broker's default applies).
pub(super) async fn set_schema_compatibility_strategy(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(&tenant, &namespace)?;
    let name: String = match json_body(&body) {
        Ok(name) => name,
        // Tolerate an unquoted name (curl -d BACKWARD).
        Err(_) => String::from_utf8_lossy(&body).trim().to_owned(),
    };
    let strategy = parse_strategy(&name)?;
    write_policy(&s, &tenant, &namespace, |p| {
        p.schema_compatibility_strategy = strategy
    })
    .await
}

pub(super) async fn get_allow_auto_update_schema(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<bool>> {
    let ns = namespace_name(&tenant, &namespace)?;
    let p = policies_of(&s, &ns).await?;
    Ok(Json(p.is_allow_auto_update_schema.unwrap_or(true)))
}

pub(super) async fn set_allow_auto_update_schema(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(&tenant, &namespace)?;
    let allow: bool = json_body(&body)?;
    write_policy(&s, &tenant, &namespace, |p| {
        p.is_allow_auto_update_schema = Some(allow)
    })
    .await
}

/// One of the namespace's single-value offload policies. Each is kept twice, as Pulsar keeps
/// it: in its own field and in `offload_policies`; reads prefer the latter.
#[derive(Clone, Copy)]
enum OffloadSetting {
    ThresholdBytes,
    ThresholdSeconds,
    DeletionLagMs,
}

impl OffloadSetting {
    fn get(self, p: &NamespacePolicies) -> Option<i64> {
        let o = p.offload_policies.as_ref();
        match self {
            OffloadSetting::ThresholdBytes => o
                .and_then(|o| o.managed_ledger_offload_threshold_in_bytes)
                .or(p.offload_threshold),
            OffloadSetting::ThresholdSeconds => o
                .and_then(|o| o.managed_ledger_offload_threshold_in_seconds)
                .or(p.offload_threshold_in_seconds),
            OffloadSetting::DeletionLagMs => o
                .and_then(|o| o.managed_ledger_offload_deletion_lag_in_millis)
                .or(p.offload_deletion_lag_ms),
        }
    }

    /// Sets (or with `None` clears) both copies; setting creates `offload_policies`.
    fn set(self, p: &mut NamespacePolicies, v: Option<i64>) {
        let (own, in_policies) = match self {
            OffloadSetting::ThresholdBytes => (&mut p.offload_threshold, {
                let o = p.offload_policies.get_or_insert_with(Default::default);
                &mut o.managed_ledger_offload_threshold_in_bytes
            }),
            OffloadSetting::ThresholdSeconds => (&mut p.offload_threshold_in_seconds, {
                let o = p.offload_policies.get_or_insert_with(Default::default);
                &mut o.managed_ledger_offload_threshold_in_seconds
            }),
            OffloadSetting::DeletionLagMs => (&mut p.offload_deletion_lag_ms, {
                let o = p.offload_policies.get_or_insert_with(Default::default);
                &mut o.managed_ledger_offload_deletion_lag_in_millis
            }),
        };
        *own = v;
        *in_policies = v;
    }
}

/// A threshold: its value, -1 (off) when unset.
async fn get_offload_threshold_of(
    s: &AdminState,
    tenant: &str,
    namespace: &str,
    setting: OffloadSetting,
) -> ApiResult<Json<i64>> {
    let ns = namespace_name(tenant, namespace)?;
    Ok(Json(setting.get(&policies_of(s, &ns).await?).unwrap_or(-1)))
}

async fn set_offload_setting(
    s: &AdminState,
    tenant: &str,
    namespace: &str,
    setting: OffloadSetting,
    body: &Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(tenant, namespace)?;
    let v: i64 = json_body(body)?;
    write_policy(s, tenant, namespace, |p| setting.set(p, Some(v))).await
}

/// `GET offloadThreshold`: bytes (the offload policies' value first, as Pulsar answers).
pub(super) async fn get_offload_threshold(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<i64>> {
    get_offload_threshold_of(&s, &tenant, &namespace, OffloadSetting::ThresholdBytes).await
}

pub(super) async fn set_offload_threshold(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    set_offload_setting(
        &s,
        &tenant,
        &namespace,
        OffloadSetting::ThresholdBytes,
        &body,
    )
    .await
}

pub(super) async fn get_offload_threshold_in_seconds(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<i64>> {
    get_offload_threshold_of(&s, &tenant, &namespace, OffloadSetting::ThresholdSeconds).await
}

pub(super) async fn set_offload_threshold_in_seconds(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    set_offload_setting(
        &s,
        &tenant,
        &namespace,
        OffloadSetting::ThresholdSeconds,
        &body,
    )
    .await
}

/// `GET offloadDeletionLagMs`: the lag, or no content when unset (the broker's applies).
pub(super) async fn get_offload_deletion_lag(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Response> {
    read_policy(&s, &tenant, &namespace, |p| {
        OffloadSetting::DeletionLagMs.get(&p)
    })
    .await
}

pub(super) async fn set_offload_deletion_lag(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    set_offload_setting(
        &s,
        &tenant,
        &namespace,
        OffloadSetting::DeletionLagMs,
        &body,
    )
    .await
}

pub(super) async fn clear_offload_deletion_lag(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    write_policy(&s, &tenant, &namespace, |p| {
        if p.offload_policies.is_some() {
            OffloadSetting::DeletionLagMs.set(p, None);
        } else {
            p.offload_deletion_lag_ms = None;
        }
    })
    .await
}

pub(super) async fn get_offload_policies(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Response> {
    read_policy(&s, &tenant, &namespace, |p| p.offload_policies).await
}

pub(super) async fn set_offload_policies(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    namespace_name(&tenant, &namespace)?;
    let Some(o) = optional_json_body::<OffloadPolicies>(&body)? else {
        return Err(ApiError::precondition(
            "The offloadPolicies must be specified for namespace offload.",
        ));
    };
    o.validate().map_err(ApiError::precondition)?;
    write_policy(&s, &tenant, &namespace, |p| {
        // Unset thresholds and lag come from the namespace's older single-value policies.
        let mut o = o.clone();
        if o.managed_ledger_offload_threshold_in_bytes.is_none() {
            o.managed_ledger_offload_threshold_in_bytes = p.offload_threshold;
        } else {
            p.offload_threshold = o.managed_ledger_offload_threshold_in_bytes;
        }
        if o.managed_ledger_offload_deletion_lag_in_millis.is_none() {
            o.managed_ledger_offload_deletion_lag_in_millis = p.offload_deletion_lag_ms;
        } else {
            p.offload_deletion_lag_ms = o.managed_ledger_offload_deletion_lag_in_millis;
        }
        p.offload_policies = Some(o);
    })
    .await
}

pub(super) async fn remove_offload_policies(
    State(s): State<AdminState>,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    write_policy(&s, &tenant, &namespace, |p| p.offload_policies = None).await
}
