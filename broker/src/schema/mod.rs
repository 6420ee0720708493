//! Schema registry: the schema versions of each topic, and the GET_SCHEMA /
//! GET_OR_CREATE_SCHEMA answers.
//!
//! A topic's schemas are one compare-and-set record in the metadata store,
//! `/schemas/{tenant}/{namespace}/{topic}`, holding the ordered versions (0, 1, …). The key is the
//! **partitioned parent**, so all partitions of a topic share their schemas, as in Pulsar. On the
//! wire a version is Pulsar's `LongSchemaVersion`: the number as an 8-byte big-endian long.
//!
//! A producer's schema (Pulsar's `putSchemaIfAbsent`):
//! - no schema, or type `None` (Pulsar's BYTES): always allowed, nothing registered;
//! - a schema equal (type and definition bytes) to any stored version → that version;
//! - otherwise, when the namespace's `isAllowAutoUpdateSchema` is false → `IncompatibleSchema`
//!   ("schema auto updating is disabled"), even on a topic without schema, as Pulsar;
//! - otherwise a new version if it passes the compatibility check of the topic's strategy
//!   ([`compat`]: the namespace's `schema_compatibility_strategy`, or the broker's default,
//!   FULL unless configured) against the latest version (all versions for `*_TRANSITIVE`);
//!   else `IncompatibleSchema` naming the topic, the strategy and the reason;
//! - AVRO and JSON definitions must be JSON documents (Pulsar rejects unparsable ones too).
//!
//! Consumers only check (Pulsar's `checkSchemaCompatibleForConsumer`): a consumer schema equal
//! to a stored version passes; otherwise it must be able to read the latest version (BACKWARD,
//! FORWARD, FORWARD_TRANSITIVE, FULL) or pass the strategy against all versions (the others;
//! nothing under ALWAYS_COMPATIBLE). A consumer on a topic without schema and without stored
//! messages registers its schema (Pulsar's `addSchemaIfIdleOrCheckCompatible`); `AutoConsume`
//! consumers are never checked. Deleting a topic (or a partitioned topic) deletes its schemas,
//! as in Pulsar, through [`SchemaRegistry::delete`], which the admin API also serves.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use magnetar_metadata::{MetadataStore, RecordStore, Update};
use magnetar_proto::pulsar::api::base_command::Type as CommandType;
use magnetar_proto::pulsar::api::schema::Type as SchemaType;
use magnetar_proto::pulsar::api::{
    BaseCommand, CommandGetOrCreateSchema, CommandGetOrCreateSchemaResponse, CommandGetSchema,
    CommandGetSchemaResponse, KeyValue, Schema, ServerError,
};
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, BrokerResult};
use crate::policies::Policies;
use crate::topic_name::TopicName;

mod avro_resolve;
pub mod compat;

pub use compat::CompatibilityStrategy;

/// Root of the schema records in the metadata store.
pub const SCHEMAS_ROOT: &str = "/schemas";

/// One registered schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSchema {
    /// 0, 1, … in registration order.
    pub version: u64,
    /// `Schema.Type` wire value.
    #[serde(rename = "type")]
    pub schema_type: i32,
    pub name: String,
    /// The schema definition as sent; stored as a JSON string when it is UTF-8 (AVRO/JSON
    /// definitions), as an array of bytes otherwise.
    #[serde(with = "definition")]
    pub data: Vec<u8>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// FNV-1a 64 of type and data, hex (informational; equality compares type and data).
    pub hash: String,
    pub timestamp_ms: u64,
}

/// Serde of a definition: text when UTF-8 (a third of an array's size, and readable).
mod definition {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(data) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(data),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Stored::deserialize(d)? {
            Stored::Text(t) => t.into_bytes(),
            Stored::Bytes(b) => b,
        })
    }
}

/// The schema record of one topic: its versions, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaHistory {
    pub versions: Vec<StoredSchema>,
}

impl StoredSchema {
    /// The wire form.
    pub fn to_wire(&self) -> Schema {
        Schema {
            name: self.name.clone(),
            schema_data: Bytes::from(self.data.clone()),
            r#type: self.schema_type,
            properties: self
                .properties
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        }
    }

    fn same_definition(&self, other: &StoredSchema) -> bool {
        self.schema_type == other.schema_type && self.data == other.data
    }
}

/// Pulsar's name of a schema type (`JSON`, `KEY_VALUE`, `BYTES` for `None`).
pub fn type_name(schema_type: i32) -> String {
    match SchemaType::try_from(schema_type) {
        Ok(SchemaType::None) => "BYTES".to_owned(),
        Ok(t) => {
            let mut out = String::new();
            for (i, ch) in t.as_str_name().chars().enumerate() {
                if ch.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(ch.to_ascii_uppercase());
            }
            out
        }
        Err(_) => format!("UNKNOWN({schema_type})"),
    }
}

/// The version as Pulsar's `LongSchemaVersion` bytes.
pub fn version_bytes(version: u64) -> Bytes {
    Bytes::copy_from_slice(&version.to_be_bytes())
}

/// A wire version: `None` for absent/empty or negative (latest); `Err` if not 8 bytes.
pub fn parse_version(bytes: Option<&[u8]>) -> Result<Option<u64>, String> {
    match bytes {
        None | Some([]) => Ok(None),
        Some(b) => {
            let arr: [u8; 8] = b
                .try_into()
                .map_err(|_| format!("schema version must be 8 bytes, got {}", b.len()))?;
            let v = i64::from_be_bytes(arr);
            Ok(u64::try_from(v).ok())
        }
    }
}

fn fnv1a(schema_type: i32, data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schema_type.to_be_bytes().iter().chain(data) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

use magnetar_metadata::clock::now_ms;

/// Whether a wire schema means "no schema" for a producer or consumer.
fn is_schemaless(schema: &Schema) -> bool {
    matches!(
        SchemaType::try_from(schema.r#type),
        Ok(SchemaType::None | SchemaType::AutoConsume)
    )
}

/// Validates a wire schema and turns it into a version-to-be (version number set on insert).
fn candidate(topic: &TopicName, schema: &Schema) -> BrokerResult<StoredSchema> {
    let ty = SchemaType::try_from(schema.r#type).map_err(|_| {
        BrokerError::IncompatibleSchema(format!("unknown schema type {}", schema.r#type))
    })?;
    if matches!(ty, SchemaType::Avro | SchemaType::Json)
        && serde_json::from_slice::<serde_json::Value>(&schema.schema_data).is_err()
    {
        return Err(BrokerError::IncompatibleSchema(format!(
            "invalid {} schema definition for {topic}: not a JSON document",
            type_name(schema.r#type)
        )));
    }
    Ok(StoredSchema {
        version: 0,
        schema_type: schema.r#type,
        name: schema.name.clone(),
        data: schema.schema_data.to_vec(),
        properties: schema
            .properties
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        hash: fnv1a(schema.r#type, &schema.schema_data),
        timestamp_ms: now_ms(),
    })
}

/// What registering `new` on `history` leads to.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Existing(u64),
    Register(SchemaHistory),
    Incompatible(String),
    /// Consumers: compatible, nothing to register.
    Compatible,
}

/// The namespace settings a schema is checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaPolicy {
    pub strategy: CompatibilityStrategy,
    /// Pulsar's `isAllowAutoUpdateSchema`: whether producers may register new versions.
    pub allow_auto_update: bool,
}

impl Default for SchemaPolicy {
    fn default() -> Self {
        SchemaPolicy {
            strategy: CompatibilityStrategy::Full,
            allow_auto_update: true,
        }
    }
}

fn rejected(topic: &TopicName, policy: SchemaPolicy, who: &str, reason: &str) -> String {
    format!(
        "incompatible schema: a {who} of topic {topic} is not accepted under schema \
         compatibility strategy {}: {reason}",
        policy.strategy
    )
}

fn decide_producer(
    topic: &TopicName,
    history: Option<&SchemaHistory>,
    new: &StoredSchema,
    policy: SchemaPolicy,
) -> Decision {
    let versions = history.map_or(&[][..], |h| &h.versions[..]);
    if let Some(found) = versions.iter().find(|v| v.same_definition(new)) {
        return Decision::Existing(found.version);
    }
    if !policy.allow_auto_update {
        return Decision::Incompatible(format!(
            "incompatible schema: schema not found on topic {topic} and schema auto updating is \
             disabled (isAllowAutoUpdateSchema=false)"
        ));
    }
    if !versions.is_empty()
        && let Err(reason) = compat::check_new_version(versions, new, policy.strategy)
    {
        return Decision::Incompatible(rejected(topic, policy, "producer", &reason));
    }
    let mut next = history.cloned().unwrap_or_default();
    let version = versions.last().map_or(0, |l| l.version.saturating_add(1));
    next.versions.push(StoredSchema {
        version,
        ..new.clone()
    });
    Decision::Register(next)
}

fn decide_consumer(
    topic: &TopicName,
    history: Option<&SchemaHistory>,
    new: &StoredSchema,
    may_register: bool,
    policy: SchemaPolicy,
) -> Decision {
    let versions = history.map_or(&[][..], |h| &h.versions[..]);
    if versions.is_empty() {
        return if may_register {
            decide_producer(topic, history, new, policy)
        } else {
            Decision::Compatible
        };
    }
    if versions.iter().any(|v| v.same_definition(new)) {
        return Decision::Compatible;
    }
    match compat::check_consumer(versions, new, policy.strategy) {
        Ok(()) => Decision::Compatible,
        Err(reason) => Decision::Incompatible(rejected(topic, policy, "consumer", &reason)),
    }
}

/// The schema versions of every topic, in the metadata store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    records: RecordStore<SchemaHistory>,
    policies: Policies,
    /// The broker's `schema_compatibility_strategy`, for namespaces that set none.
    default_strategy: CompatibilityStrategy,
}

impl SchemaRegistry {
    /// A registry over `store` with Pulsar's default strategy (FULL).
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        SchemaRegistry {
            records: RecordStore::new(Arc::clone(&store)),
            policies: Policies::new(store),
            default_strategy: CompatibilityStrategy::default(),
        }
    }

    /// Uses `strategy` for namespaces without a `schema_compatibility_strategy` policy.
    #[must_use]
    pub fn with_default_strategy(mut self, strategy: CompatibilityStrategy) -> Self {
        self.default_strategy = strategy;
        self
    }

    /// The strategy and auto-update switch of `topic`'s namespace (broker defaults when unset).
    pub async fn policy(&self, topic: &TopicName) -> BrokerResult<SchemaPolicy> {
        let ns = self
            .policies
            .namespace(topic.namespace())
            .await?
            .unwrap_or_default();
        Ok(SchemaPolicy {
            strategy: ns
                .schema_compatibility_strategy
                .unwrap_or(self.default_strategy),
            allow_auto_update: ns.is_allow_auto_update_schema.unwrap_or(true),
        })
    }

    /// The record key of `topic`'s schemas (its partitioned parent's).
    pub fn key(topic: &TopicName) -> String {
        let parent = topic.partitioned_parent();
        format!(
            "{SCHEMAS_ROOT}/{}/{}",
            parent.namespace(),
            parent.local_name()
        )
    }

    /// Every version of `topic`'s schema (empty: none).
    pub async fn history(&self, topic: &TopicName) -> BrokerResult<SchemaHistory> {
        Ok(self
            .records
            .get(&Self::key(topic))
            .await?
            .map(|(h, _)| h)
            .unwrap_or_default())
    }

    /// Version `version` of `topic`'s schema, or the latest (`None`).
    pub async fn get(
        &self,
        topic: &TopicName,
        version: Option<u64>,
    ) -> BrokerResult<Option<StoredSchema>> {
        let mut history = self.history(topic).await?;
        Ok(match version {
            None => history.versions.pop(),
            Some(v) => history.versions.into_iter().find(|s| s.version == v),
        })
    }

    /// A producer's schema: its version (registered if new), `None` for a schemaless producer,
    /// or `IncompatibleSchema`.
    pub async fn put_producer_schema(
        &self,
        topic: &TopicName,
        schema: Option<&Schema>,
    ) -> BrokerResult<Option<u64>> {
        let Some(schema) = schema.filter(|s| !is_schemaless(s)) else {
            return Ok(None);
        };
        let new = candidate(topic, schema)?;
        let policy = self.policy(topic).await?;
        self.apply(topic, |h| decide_producer(topic, h, &new, policy))
            .await
            .map(Some)
    }

    /// A consumer's schema: compatible (Ok) or `IncompatibleSchema`. With `topic_is_idle` (no
    /// stored messages) a topic without schema takes the consumer's schema.
    pub async fn check_consumer_schema(
        &self,
        topic: &TopicName,
        schema: Option<&Schema>,
        topic_is_idle: bool,
    ) -> BrokerResult<()> {
        let Some(schema) = schema.filter(|s| !is_schemaless(s)) else {
            return Ok(());
        };
        let new = candidate(topic, schema)?;
        let policy = self.policy(topic).await?;
        self.apply(topic, |h| {
            decide_consumer(topic, h, &new, topic_is_idle, policy)
        })
        .await
        .map(|_| ())
    }

    /// Deletes every version of `topic`'s schema (admin, topic deletion); the latest version
    /// deleted, `None` if there was none.
    pub async fn delete(&self, topic: &TopicName) -> BrokerResult<Option<u64>> {
        let mut latest = None;
        self.records
            .update(&Self::key(topic), |h| {
                latest = h.and_then(|h| h.versions.last()).map(|v| v.version);
                Update::Delete
            })
            .await?;
        Ok(latest)
    }

    /// An admin upload (Pulsar's `postSchema`): registered like a producer's schema under the
    /// namespace's strategy, but not subject to `isAllowAutoUpdateSchema`, which in Pulsar
    /// governs producers only. `IncompatibleSchema` for a schemaless (BYTES) one.
    pub async fn put_admin_schema(&self, topic: &TopicName, schema: &Schema) -> BrokerResult<u64> {
        if is_schemaless(schema) {
            return Err(BrokerError::IncompatibleSchema(
                "a BYTES schema is not registered".to_owned(),
            ));
        }
        let new = candidate(topic, schema)?;
        let policy = SchemaPolicy {
            allow_auto_update: true,
            ..self.policy(topic).await?
        };
        self.apply(topic, |h| decide_producer(topic, h, &new, policy))
            .await
    }

    /// Runs `decide` on the stored history with compare-and-set; the answer is decided again
    /// on what was stored, so a racing registration of the same schema yields one version.
    async fn apply<F>(&self, topic: &TopicName, decide: F) -> BrokerResult<u64>
    where
        F: Fn(Option<&SchemaHistory>) -> Decision + Send + Sync,
    {
        let stored = self
            .records
            .update(&Self::key(topic), |h| match decide(h) {
                Decision::Register(next) => Update::Set(next),
                _ => Update::Keep,
            })
            .await?;
        match decide(stored.as_ref().map(|(h, _)| h)) {
            Decision::Existing(v) => Ok(v),
            Decision::Compatible => Ok(0),
            Decision::Incompatible(msg) => Err(BrokerError::IncompatibleSchema(msg)),
            Decision::Register(_) => Err(BrokerError::NotReady(format!(
                "schema of {topic} changed concurrently; retry"
            ))),
        }
    }
}

fn get_schema_response(
    request_id: u64,
    answer: Result<StoredSchema, (ServerError, String)>,
) -> BaseCommand {
    let response = match answer {
        Ok(s) => CommandGetSchemaResponse {
            request_id,
            schema_version: Some(version_bytes(s.version)),
            schema: Some(s.to_wire()),
            ..Default::default()
        },
        Err((code, message)) => CommandGetSchemaResponse {
            request_id,
            error_code: Some(code as i32),
            error_message: Some(message),
            ..Default::default()
        },
    };
    BaseCommand {
        r#type: CommandType::GetSchemaResponse as i32,
        get_schema_response: Some(Box::new(response)),
        ..Default::default()
    }
}

fn get_or_create_schema_response(
    request_id: u64,
    answer: Result<u64, (ServerError, String)>,
) -> BaseCommand {
    let response = match answer {
        Ok(v) => CommandGetOrCreateSchemaResponse {
            request_id,
            schema_version: Some(version_bytes(v)),
            ..Default::default()
        },
        Err((code, message)) => CommandGetOrCreateSchemaResponse {
            request_id,
            error_code: Some(code as i32),
            error_message: Some(message),
            ..Default::default()
        },
    };
    BaseCommand {
        r#type: CommandType::GetOrCreateSchemaResponse as i32,
        get_or_create_schema_response: Some(Box::new(response)),
        ..Default::default()
    }
}

fn wire_error(e: &BrokerError) -> (ServerError, String) {
    (e.server_error(), e.to_string())
}

/// The answer to GET_SCHEMA: the version asked for (or the latest), or `TopicNotFound`
/// "Topic not found or no-schema" as Pulsar answers when there is none.
pub async fn answer_get_schema(registry: &SchemaRegistry, g: &CommandGetSchema) -> BaseCommand {
    let answer = async {
        let topic: TopicName = g
            .topic
            .parse()
            .map_err(|e| wire_error(&BrokerError::from(e)))?;
        let version = parse_version(g.schema_version.as_deref())
            .map_err(|m| BrokerError::IncompatibleSchema(m).wire())?;
        match registry.get(&topic, version).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(BrokerError::SchemaNotFound(g.topic.clone()).wire()),
            Err(e) => Err(wire_error(&e)),
        }
    }
    .await;
    get_schema_response(g.request_id, answer)
}

/// The answer to GET_OR_CREATE_SCHEMA: the schema's version (registered if new) or
/// `IncompatibleSchema`.
pub async fn answer_get_or_create_schema(
    registry: &SchemaRegistry,
    g: &CommandGetOrCreateSchema,
) -> BaseCommand {
    let answer = async {
        let topic: TopicName = g
            .topic
            .parse()
            .map_err(|e| wire_error(&BrokerError::from(e)))?;
        match registry.put_producer_schema(&topic, Some(&g.schema)).await {
            Ok(Some(v)) => Ok(v),
            // A schemaless (BYTES) schema has no version: Pulsar answers an empty one.
            Ok(None) => Err(BrokerError::IncompatibleSchema(
                "a BYTES schema is not registered".to_owned(),
            )
            .wire()),
            Err(e) => Err(wire_error(&e)),
        }
    }
    .await;
    get_or_create_schema_response(g.request_id, answer)
}

#[cfg(test)]
mod tests {
    use magnetar_metadata::MemoryStore;

    use super::*;

    fn topic(name: &str) -> TopicName {
        name.parse().unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn schema(ty: SchemaType, data: &str) -> Schema {
        Schema {
            name: "t".into(),
            schema_data: Bytes::copy_from_slice(data.as_bytes()),
            r#type: ty as i32,
            properties: vec![KeyValue {
                key: "k".into(),
                value: "v".into(),
            }],
        }
    }

    fn registry() -> SchemaRegistry {
        SchemaRegistry::new(Arc::new(MemoryStore::new()))
    }

    const A: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#;
    // A with an optional field: compatible with A under the default FULL strategy.
    const B: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"},{"name":"y","type":["null","string"],"default":null}]}"#;

    #[tokio::test]
    async fn versions_are_registered_in_order_and_reused() -> BrokerResult<()> {
        let r = registry();
        let t = topic("persistent://public/default/s");
        let json_a = schema(SchemaType::Json, A);
        assert_eq!(r.put_producer_schema(&t, Some(&json_a)).await?, Some(0));
        assert_eq!(r.put_producer_schema(&t, Some(&json_a)).await?, Some(0));
        let json_b = schema(SchemaType::Json, B);
        assert_eq!(r.put_producer_schema(&t, Some(&json_b)).await?, Some(1));
        // An older definition keeps its version.
        assert_eq!(r.put_producer_schema(&t, Some(&json_a)).await?, Some(0));
        let latest = r
            .get(&t, None)
            .await?
            .ok_or_else(|| BrokerError::NotReady("none".into()))?;
        assert_eq!(latest.version, 1);
        assert_eq!(latest.data, B.as_bytes());
        assert_eq!(latest.properties.get("k").map(String::as_str), Some("v"));
        assert_eq!(
            r.get(&t, Some(0)).await?.map(|s| s.data),
            Some(A.as_bytes().to_vec())
        );
        assert_eq!(r.get(&t, Some(7)).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn another_type_is_incompatible() -> BrokerResult<()> {
        let r = registry();
        let t = topic("persistent://public/default/s");
        r.put_producer_schema(&t, Some(&schema(SchemaType::Json, A)))
            .await?;
        let err = r
            .put_producer_schema(&t, Some(&schema(SchemaType::Avro, A)))
            .await;
        match err {
            Err(e @ BrokerError::IncompatibleSchema(_)) => {
                assert_eq!(e.server_error(), ServerError::IncompatibleSchema);
                let msg = e.to_string();
                assert!(msg.contains("JSON") && msg.contains("AVRO"), "{msg}");
            }
            other => panic!("expected IncompatibleSchema, got {other:?}"),
        }
        assert!(matches!(
            r.put_producer_schema(&t, Some(&schema(SchemaType::String, "")))
                .await,
            Err(BrokerError::IncompatibleSchema(_))
        ));
        // BYTES (None) producers and no-schema producers are always allowed.
        assert_eq!(
            r.put_producer_schema(&t, Some(&schema(SchemaType::None, "")))
                .await?,
            None
        );
        assert_eq!(r.put_producer_schema(&t, None).await?, None);
        assert_eq!(r.history(&t).await?.versions.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn partitions_share_the_parent_schema() -> BrokerResult<()> {
        let r = registry();
        let p0 = topic("persistent://public/default/p-partition-0");
        let p1 = topic("persistent://public/default/p-partition-1");
        assert_eq!(SchemaRegistry::key(&p0), "/schemas/public/default/p");
        r.put_producer_schema(&p0, Some(&schema(SchemaType::String, "")))
            .await?;
        assert_eq!(
            r.put_producer_schema(&p1, Some(&schema(SchemaType::String, "")))
                .await?,
            Some(0)
        );
        assert!(
            r.get(&topic("persistent://public/default/p"), None)
                .await?
                .is_some()
        );
        Ok(())
    }

    #[tokio::test]
    async fn consumers_check_and_register_only_on_idle_topics() -> BrokerResult<()> {
        let r = registry();
        let t = topic("persistent://public/default/c");
        let json = schema(SchemaType::Json, A);
        // Not idle: allowed, nothing registered.
        r.check_consumer_schema(&t, Some(&json), false).await?;
        assert!(r.history(&t).await?.versions.is_empty());
        // Idle: registered.
        r.check_consumer_schema(&t, Some(&json), true).await?;
        assert_eq!(r.history(&t).await?.versions.len(), 1);
        // Same type, other definition: compatible, not registered by a consumer.
        r.check_consumer_schema(&t, Some(&schema(SchemaType::Json, B)), true)
            .await?;
        assert_eq!(r.history(&t).await?.versions.len(), 1);
        assert!(matches!(
            r.check_consumer_schema(&t, Some(&schema(SchemaType::Avro, A)), true)
                .await,
            Err(BrokerError::IncompatibleSchema(_))
        ));
        // AUTO_CONSUME and BYTES consumers are not checked.
        r.check_consumer_schema(&t, Some(&schema(SchemaType::AutoConsume, "")), true)
            .await?;
        r.check_consumer_schema(&t, Some(&schema(SchemaType::None, "")), true)
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn invalid_definitions_are_refused() {
        let r = registry();
        let t = topic("persistent://public/default/bad");
        assert!(matches!(
            r.put_producer_schema(&t, Some(&schema(SchemaType::Avro, "{not json")))
                .await,
            Err(BrokerError::IncompatibleSchema(_))
        ));
        assert!(matches!(
            r.put_producer_schema(
                &t,
                Some(&Schema {
                    r#type: 99,
                    ..schema(SchemaType::Json, A)
                })
            )
            .await,
            Err(BrokerError::IncompatibleSchema(_))
        ));
    }

    #[tokio::test]
    async fn wire_answers() -> BrokerResult<()> {
        let r = registry();
        let get = |version: Option<u64>| CommandGetSchema {
            request_id: 5,
            topic: "persistent://public/default/w".into(),
            schema_version: version.map(version_bytes),
        };
        let none = answer_get_schema(&r, &get(None)).await;
        let resp = none
            .get_schema_response
            .ok_or_else(|| BrokerError::NotReady("x".into()))?;
        assert_eq!(resp.error_code, Some(ServerError::TopicNotFound as i32));

        let create = CommandGetOrCreateSchema {
            request_id: 6,
            topic: "persistent://public/default/w".into(),
            schema: schema(SchemaType::Json, A),
            producer_name: None,
        };
        let created = answer_get_or_create_schema(&r, &create).await;
        let resp = created
            .get_or_create_schema_response
            .ok_or_else(|| BrokerError::NotReady("x".into()))?;
        assert_eq!(resp.schema_version, Some(version_bytes(0)));
        assert_eq!(resp.error_code, None);

        let got = answer_get_schema(&r, &get(Some(0))).await;
        let resp = got
            .get_schema_response
            .ok_or_else(|| BrokerError::NotReady("x".into()))?;
        assert_eq!(resp.request_id, 5);
        assert_eq!(resp.schema_version, Some(version_bytes(0)));
        assert_eq!(
            resp.schema.map(|s| s.schema_data),
            Some(Bytes::from_static(A.as_bytes()))
        );
        Ok(())
    }

    #[test]
    fn definitions_are_stored_as_text_or_bytes() -> Result<(), serde_json::Error> {
        for data in [A.as_bytes().to_vec(), vec![0xff, 0x00, 0x80], vec![]] {
            let s = StoredSchema {
                version: 3,
                schema_type: SchemaType::Protobuf as i32,
                name: "n".into(),
                data: data.clone(),
                properties: BTreeMap::new(),
                hash: fnv1a(3, &data),
                timestamp_ms: 1,
            };
            let json = serde_json::to_string(&s)?;
            if data.first() == Some(&b'{') {
                assert!(json.contains(r#""data":"{\"type\""#), "{json}");
            }
            assert_eq!(serde_json::from_str::<StoredSchema>(&json)?, s);
        }
        Ok(())
    }

    #[test]
    fn versions_on_the_wire() {
        assert_eq!(&version_bytes(1)[..], &[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(parse_version(Some(&version_bytes(42))), Ok(Some(42)));
        assert_eq!(parse_version(None), Ok(None));
        assert_eq!(parse_version(Some(&[0xff; 8])), Ok(None));
        assert!(parse_version(Some(&[1, 2])).is_err());
        assert_eq!(type_name(SchemaType::KeyValue as i32), "KEY_VALUE");
        assert_eq!(type_name(SchemaType::None as i32), "BYTES");
    }
}
