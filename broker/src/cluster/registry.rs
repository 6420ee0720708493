//! The broker registry: each cluster broker announces itself under
//! `/brokers/{host:port}` as an ephemeral [`BrokerRecord`] tied to its metadata session, so other
//! brokers can turn the owner named in a bundle lease (its `pulsar://` service URL) into the
//! owner's admin URL — the target of an admin API's 307 redirect, as Pulsar's
//! `/loadbalance/brokers` registrations serve.

use std::sync::Arc;

use bytes::Bytes;
use magnetar_metadata::{Expected, MetadataError, MetadataStore, PutOutcome, Session};
use serde::{Deserialize, Serialize};

/// Where broker registrations live.
pub const BROKERS_PREFIX: &str = "/brokers/";

/// What a broker announces. JSON field names follow Pulsar's `BrokerLookupData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRecord {
    /// `pulsar://host:port`: what bundle leases name as the owner.
    pub pulsar_service_url: String,
    /// `http://host:port` of the broker's admin API.
    pub web_service_url: String,
}

/// The registration key of the broker serving `service_url` (`pulsar://host:port` →
/// `/brokers/host:port`).
pub fn registration_key(service_url: &str) -> String {
    let address = service_url
        .split_once("://")
        .map_or(service_url, |(_, rest)| rest);
    format!("{BROKERS_PREFIX}{address}")
}

/// Writes (or rewrites) `record` as an ephemeral key of `session`.
pub async fn register(
    store: &Arc<dyn MetadataStore>,
    session: &Session,
    record: &BrokerRecord,
) -> Result<(), MetadataError> {
    let key = registration_key(&record.pulsar_service_url);
    let value = serde_json::to_vec(record).map_err(|e| MetadataError::Corrupt {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    match store
        .put_ephemeral(&key, Bytes::from(value), Expected::Any, session)
        .await?
    {
        PutOutcome::Written(_) => Ok(()),
        // `Expected::Any` never conflicts; a backend that says otherwise is out of contract.
        PutOutcome::Conflict { .. } => Err(MetadataError::Unavailable(format!(
            "registering {key} conflicted"
        ))),
    }
}

/// The registration of the broker serving `service_url`, if it is registered.
pub async fn lookup(
    store: &Arc<dyn MetadataStore>,
    service_url: &str,
) -> Result<Option<BrokerRecord>, MetadataError> {
    let key = registration_key(service_url);
    let Some(v) = store.get(&key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&v.value)
        .map(Some)
        .map_err(|e| MetadataError::Corrupt {
            key,
            reason: e.to_string(),
        })
}

/// Every registered broker, sorted by service URL (unreadable registrations are skipped).
pub async fn list(store: &Arc<dyn MetadataStore>) -> Result<Vec<BrokerRecord>, MetadataError> {
    let listing = store.list(BROKERS_PREFIX).await?;
    let mut records: Vec<BrokerRecord> = listing
        .entries
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<BrokerRecord>(&v.value).ok())
        .collect();
    records.sort_by(|a, b| a.pulsar_service_url.cmp(&b.pulsar_service_url));
    Ok(records)
}

/// Withdraws the registration of the broker serving `service_url` (a draining broker takes
/// no new bundles).
pub async fn unregister(
    store: &Arc<dyn MetadataStore>,
    service_url: &str,
) -> Result<(), MetadataError> {
    store
        .delete(
            &registration_key(service_url),
            magnetar_metadata::Expected::Any,
        )
        .await
        .map(|_| ())
}

/// `host:port` of a URL (`pulsar://host:port` or `http://host:port/`).
pub fn address_of(url: &str) -> &str {
    url.split_once("://")
        .map_or(url, |(_, rest)| rest)
        .trim_end_matches('/')
}

/// The registration a destination names: a service URL, its `host:port`, or the broker id
/// (`host:port` of the admin URL) that `brokers list` shows.
pub fn find<'a>(records: &'a [BrokerRecord], name: &str) -> Option<&'a BrokerRecord> {
    let wanted = address_of(name.trim());
    records.iter().find(|r| {
        address_of(&r.pulsar_service_url) == wanted || address_of(&r.web_service_url) == wanted
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use magnetar_metadata::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn registration_is_found_by_service_url_and_ends_with_the_session() {
        let mem = MemoryStore::new();
        let store: Arc<dyn MetadataStore> = Arc::new(mem.clone());
        let session = store.create_session(Duration::from_secs(5)).await.unwrap();
        let record = BrokerRecord {
            pulsar_service_url: "pulsar://10.0.0.7:6650".into(),
            web_service_url: "http://10.0.0.7:8080".into(),
        };
        assert_eq!(
            registration_key(&record.pulsar_service_url),
            "/brokers/10.0.0.7:6650"
        );
        assert_eq!(
            lookup(&store, "pulsar://10.0.0.7:6650").await.unwrap(),
            None
        );
        register(&store, &session, &record).await.unwrap();
        assert_eq!(
            lookup(&store, "pulsar://10.0.0.7:6650").await.unwrap(),
            Some(record)
        );
        mem.expire_session(session.id());
        tokio::time::timeout(Duration::from_secs(5), async {
            while lookup(&store, "pulsar://10.0.0.7:6650")
                .await
                .unwrap()
                .is_some()
            {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the registration ends with the broker's session");
    }
}
