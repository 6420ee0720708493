//! Topic-level policies: one record per topic that has any, overriding its namespace's.
//! Pulsar keeps them in the namespace's `__change_events` system topic; here they are records
//! beside the namespace policies, so every broker can watch them.

use magnetar_metadata::Update;
use serde::{Deserialize, Serialize};

use super::{OffloadPolicies, Policies, PolicyError};
use crate::topic_name::TopicName;

pub const TOPIC_POLICIES_PREFIX: &str = "/admin/topic-policies/";

/// Pulsar's `TopicPolicies` (the parts this broker acts on); `None`: the namespace's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicPolicies {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_policies: Option<OffloadPolicies>,
}

impl TopicPolicies {
    fn is_empty(&self) -> bool {
        *self == TopicPolicies::default()
    }
}

/// A partition's policies are its partitioned topic's (as in Pulsar).
pub(super) fn topic_policies_key(topic: &TopicName) -> String {
    format!(
        "{TOPIC_POLICIES_PREFIX}{}",
        topic.partitioned_parent().persistence_name()
    )
}

/// The topic (persistence name, `tenant/ns/persistent/topic`) a topic-policies key is of.
pub fn topic_of_policies_key(key: &str) -> Option<&str> {
    key.strip_prefix(TOPIC_POLICIES_PREFIX)
}

impl Policies {
    /// Every topic-level policy record in `ns`, by topic persistence name (one listing).
    pub async fn topic_policies_in(
        &self,
        ns: &crate::topic_name::NamespaceName,
    ) -> Result<std::collections::HashMap<String, TopicPolicies>, PolicyError> {
        let prefix = format!("{TOPIC_POLICIES_PREFIX}{ns}/");
        let listing = self.store.list(&prefix).await?;
        let mut out = std::collections::HashMap::new();
        for (key, v) in listing.entries {
            let Some(topic) = topic_of_policies_key(&key) else {
                continue;
            };
            match serde_json::from_slice::<TopicPolicies>(&v.value) {
                Ok(p) => {
                    out.insert(topic.to_owned(), p);
                }
                Err(e) => {
                    return Err(PolicyError::Metadata(
                        magnetar_metadata::MetadataError::Corrupt {
                            key,
                            reason: e.to_string(),
                        },
                    ));
                }
            }
        }
        Ok(out)
    }

    pub async fn topic_policies(
        &self,
        topic: &TopicName,
    ) -> Result<Option<TopicPolicies>, PolicyError> {
        Ok(self
            .topics
            .get(&topic_policies_key(topic))
            .await?
            .map(|(p, _)| p))
    }

    /// Changes a topic's policies with `f` (read–modify–CAS); a record left empty is deleted.
    pub async fn update_topic_policies(
        &self,
        topic: &TopicName,
        mut f: impl FnMut(&mut TopicPolicies) + Send,
    ) -> Result<(), PolicyError> {
        self.topics
            .update(&topic_policies_key(topic), |current| {
                let mut next = current.cloned().unwrap_or_default();
                f(&mut next);
                match (next.is_empty(), current) {
                    (true, None) => Update::Keep,
                    (true, Some(_)) => Update::Delete,
                    (false, _) => Update::Set(next),
                }
            })
            .await?;
        Ok(())
    }
}
