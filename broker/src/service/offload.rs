//! The offload settings of the topics this broker serves: resolved from the topic's policy,
//! its namespace's and the broker's configuration when the topic loads, and applied again
//! while it is loaded whenever one of those policies changes — through a watch on both
//! record prefixes, so a change made through any broker reaches every broker serving an
//! affected topic (Pulsar applies offload policy changes to loaded topics too).

use std::sync::Arc;
use std::time::Duration;

use magnetar_managed_ledger::OffloadPolicy;
use tracing::{info, warn};

use super::BrokerService;
use crate::policies::offload::resolve;
use crate::policies::{
    NamespacePolicies, OffloadPolicies, POLICIES_PREFIX, TopicPolicies, topic_of_policies_key,
};
use crate::topic_name::{NamespaceName, TopicName};

/// Both prefixes the watch covers live under this one.
const ADMIN_PREFIX: &str = "/admin/";
/// After the watch ends (store unreachable, history compacted), wait this long and start over.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Which loaded topics one change affects.
enum Changed {
    Namespace(NamespaceName),
    /// A topic's policy (by the persistence name of its partitioned parent).
    Topic(String),
}

fn changed(key: &str) -> Option<Changed> {
    if let Some(topic) = topic_of_policies_key(key) {
        return Some(Changed::Topic(topic.to_owned()));
    }
    key.strip_prefix(POLICIES_PREFIX)
        .and_then(|ns| ns.parse::<NamespaceName>().ok())
        .map(Changed::Namespace)
}

impl BrokerService {
    /// The offload settings of `topic` given its policies.
    pub(super) fn resolve_offload(
        &self,
        topic: &TopicName,
        topic_policies: Option<&TopicPolicies>,
        ns: &NamespacePolicies,
    ) -> OffloadPolicy {
        let targets = self.factory.offloader().map(|o| o.targets());
        let resolved = resolve(
            topic_policies,
            ns,
            &self.config.managed_ledger,
            targets.as_ref().map(|t| t.base()),
        );
        if let Some(e) = &resolved.driver_error {
            warn!(topic = %topic, error = %e,
                "the offload policy names a store this broker cannot use; offloading to the \
                 broker's store instead");
        }
        resolved.policy
    }

    /// The offload settings in force for `topic`, in Pulsar's `OffloadPolicies` shape.
    pub async fn applied_offload_policies(
        &self,
        topic: &TopicName,
    ) -> crate::error::BrokerResult<OffloadPolicies> {
        let ns = self
            .policies
            .namespace(topic.namespace())
            .await?
            .unwrap_or_default();
        let tp = self.policies.topic_policies(topic).await?;
        let policy = self.resolve_offload(topic, tp.as_ref(), &ns);
        let place = policy.driver.as_ref().map(|d| d.location()).or_else(|| {
            self.factory
                .offloader()
                .map(|o| o.store().location().clone())
        });
        let mut other = std::collections::BTreeMap::new();
        if let Some(region) = place.as_ref().and_then(|p| p.region.clone()) {
            other.insert("managedLedgerOffloadRegion".to_owned(), region.into());
        }
        if let Some(endpoint) = place.as_ref().and_then(|p| p.service_endpoint.clone()) {
            other.insert(
                "managedLedgerOffloadServiceEndpoint".to_owned(),
                endpoint.into(),
            );
        }
        Ok(OffloadPolicies {
            managed_ledger_offload_driver: place.as_ref().map(|p| p.driver.name().to_owned()),
            managed_ledger_offload_threshold_in_bytes: Some(policy.threshold_bytes),
            managed_ledger_offload_threshold_in_seconds: Some(if policy.threshold_ms < 0 {
                -1
            } else {
                policy.threshold_ms / 1000
            }),
            managed_ledger_offload_deletion_lag_in_millis: Some(policy.deletion_lag_ms),
            managed_ledger_offload_bucket: place.map(|p| p.bucket),
            s3_bucket: None,
            gcs_bucket: None,
            other,
        })
    }

    /// Applies the current policies to every loaded topic of `ns` (one read of the namespace,
    /// one listing of its topic policies).
    async fn refresh_namespace(&self, ns: &NamespaceName) {
        let topics: Vec<_> = self
            .loaded()
            .into_iter()
            .filter(|t| t.name().namespace() == ns)
            .collect();
        if topics.is_empty() {
            return;
        }
        let policies = match self.policies.namespace(ns).await {
            Ok(Some(p)) => p,
            Ok(None) => return, // being deleted
            Err(e) => {
                warn!(namespace = %ns, error = %e, "cannot read changed namespace policies");
                return;
            }
        };
        let by_topic = match self.policies.topic_policies_in(ns).await {
            Ok(m) => m,
            Err(e) => {
                warn!(namespace = %ns, error = %e, "cannot read the namespace's topic policies");
                return;
            }
        };
        for topic in topics {
            let parent = topic.name().partitioned_parent().persistence_name();
            let policy = self.resolve_offload(topic.name(), by_topic.get(&parent), &policies);
            topic.managed_ledger().set_offload_policy(policy);
        }
    }

    /// Applies the current policies to the loaded partitions (or the topic) of `parent`.
    async fn refresh_topic(&self, parent: &str) {
        let topics: Vec<_> = self
            .loaded()
            .into_iter()
            .filter(|t| t.name().partitioned_parent().persistence_name() == parent)
            .collect();
        let Some(first) = topics.first() else { return };
        let name = first.name().clone();
        let read = async {
            let ns = self.policies.namespace(name.namespace()).await?;
            let tp = self.policies.topic_policies(&name).await?;
            Ok::<_, crate::policies::PolicyError>((ns, tp))
        };
        match read.await {
            Ok((Some(ns), tp)) => {
                for topic in &topics {
                    let policy = self.resolve_offload(topic.name(), tp.as_ref(), &ns);
                    topic.managed_ledger().set_offload_policy(policy);
                }
            }
            Ok((None, _)) => {}
            Err(e) => warn!(topic = parent, error = %e, "cannot read changed topic policies"),
        }
    }

    async fn refresh_all(&self) {
        let mut namespaces: Vec<NamespaceName> = self
            .loaded()
            .iter()
            .map(|t| t.name().namespace().clone())
            .collect();
        namespaces.sort_by_key(|n| n.to_string());
        namespaces.dedup();
        for ns in namespaces {
            self.refresh_namespace(&ns).await;
        }
    }

    /// Watches namespace and topic policy records for as long as the service runs.
    pub(super) fn watch_policies(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        let store = Arc::clone(&self.store);
        let clock = Arc::clone(&self.config.clock);
        self.tasks.spawn(async move {
            loop {
                // The listing gives the revision to watch from; it is of a prefix that holds
                // nothing, so it costs nothing however many policies there are.
                let started = async {
                    let from = store.list(&format!("{ADMIN_PREFIX}watch-anchor/")).await?;
                    store.watch(ADMIN_PREFIX, from.revision).await
                };
                let mut events = match started.await {
                    Ok(w) => w,
                    Err(e) => {
                        warn!(error = %e, "cannot watch policy changes; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = clock.sleep(REWATCH_DELAY) => continue,
                        }
                    }
                };
                // Changes made before the watch ran (topics loaded meanwhile, or while it was
                // down) were not seen: apply everything once it runs.
                {
                    let Some(service) = weak.upgrade() else {
                        return;
                    };
                    service.refresh_all().await;
                }
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        e = events.next() => e,
                    };
                    let Some(service) = weak.upgrade() else {
                        return;
                    };
                    match event {
                        Some(Ok(ev)) => match changed(&ev.key) {
                            Some(Changed::Namespace(ns)) => service.refresh_namespace(&ns).await,
                            Some(Changed::Topic(t)) => service.refresh_topic(&t).await,
                            None => {}
                        },
                        Some(Err(e)) => {
                            info!(error = %e, "policy watch ended; starting it again");
                            break;
                        }
                        None => break,
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = clock.sleep(REWATCH_DELAY) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_keys_name_what_changed() {
        assert!(matches!(
            changed("/admin/policies/public/default"),
            Some(Changed::Namespace(ns)) if ns.to_string() == "public/default"
        ));
        assert!(matches!(
            changed("/admin/topic-policies/public/default/persistent/t"),
            Some(Changed::Topic(t)) if t == "public/default/persistent/t"
        ));
        assert!(changed("/admin/tenants/public").is_none());
        assert!(changed("/admin/partitioned-topics/public/default/persistent/t").is_none());
    }
}
