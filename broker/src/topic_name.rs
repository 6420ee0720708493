//! Topic and namespace names, parsed and validated the way Pulsar clients write them.
//!
//! Accepted forms: `persistent://tenant/namespace/topic`, `tenant/namespace/topic` and a bare
//! `topic` (which means `persistent://public/default/topic`). A partition of a partitioned
//! topic is the topic with `-partition-N` appended. `non-persistent://` topics are refused with
//! a clear error rather than silently made persistent.

use std::fmt;
use std::str::FromStr;

/// Tenant, namespace and topic names longer than this are refused.
pub const NAME_SIZE_MAX_BYTES: usize = 256;
const PARTITION_SUFFIX: &str = "-partition-";

pub use crate::error::NameError;

/// `tenant/namespace`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceName {
    tenant: String,
    namespace: String,
}

/// A persistent topic (possibly one partition of a partitioned topic).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName {
    namespace: NamespaceName,
    /// The local name including any `-partition-N` suffix.
    local: String,
    partition: Option<u32>,
}

/// Pulsar's rule for tenant and namespace names: letters, digits and `-=:._`.
fn valid_entity(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty part");
    }
    if s.len() > NAME_SIZE_MAX_BYTES {
        return Err("part longer than 256 bytes");
    }
    if s == "." || s == ".." {
        return Err("'.' and '..' are not allowed as tenant or namespace names");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '=' | ':' | '.' | '_'))
    {
        return Err("only letters, digits and -=:._ are allowed in tenant and namespace names");
    }
    Ok(())
}

fn valid_local(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty topic name");
    }
    if s.len() > NAME_SIZE_MAX_BYTES {
        return Err("topic name longer than 256 bytes");
    }
    if s.contains('/') {
        return Err("'/' is not allowed in the topic's own name");
    }
    if s == "." || s == ".." {
        return Err("'.' and '..' are not allowed as topic names");
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("control characters and whitespace are not allowed");
    }
    Ok(())
}

/// Subscription names: not empty, at most 256 bytes, no `/`, no control characters (they
/// name cursor records and stats keys).
pub fn validate_subscription_name(name: &str) -> Result<(), NameError> {
    let reason = if name.is_empty() {
        Some("empty subscription name")
    } else if name.len() > NAME_SIZE_MAX_BYTES {
        Some("subscription name longer than 256 bytes")
    } else if name.contains('/') {
        Some("'/' is not allowed in subscription names")
    } else if name.chars().any(char::is_control) {
        Some("control characters are not allowed in subscription names")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(NameError::Subscription {
            name: name.chars().take(NAME_SIZE_MAX_BYTES).collect(),
            reason,
        }),
    }
}

impl NamespaceName {
    pub fn new(tenant: &str, namespace: &str) -> Result<Self, NameError> {
        let full = format!("{tenant}/{namespace}");
        valid_entity(tenant)
            .and_then(|()| valid_entity(namespace))
            .map_err(|reason| NameError::Namespace { name: full, reason })?;
        Ok(NamespaceName {
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.namespace)
    }
}

impl FromStr for NamespaceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((t, n)) if !n.contains('/') => NamespaceName::new(t, n),
            _ => Err(NameError::Namespace {
                name: s.to_owned(),
                reason: "expected tenant/namespace",
            }),
        }
    }
}

impl TopicName {
    pub fn new(namespace: NamespaceName, local: &str) -> Result<Self, NameError> {
        valid_local(local).map_err(|reason| NameError::Topic {
            name: format!("persistent://{namespace}/{local}"),
            reason,
        })?;
        let partition = local
            .rsplit_once(PARTITION_SUFFIX)
            .and_then(|(base, n)| (!base.is_empty()).then_some(n))
            .and_then(|n| n.parse::<u32>().ok().filter(|p| p.to_string() == n));
        Ok(TopicName {
            namespace,
            local: local.to_owned(),
            partition,
        })
    }

    pub fn namespace(&self) -> &NamespaceName {
        &self.namespace
    }

    /// The topic's own name, with any partition suffix.
    pub fn local_name(&self) -> &str {
        &self.local
    }

    /// `Some(n)` for `…-partition-n`.
    pub fn partition(&self) -> Option<u32> {
        self.partition
    }

    /// The partitioned topic this is a partition of (itself if it is not a partition).
    pub fn partitioned_parent(&self) -> TopicName {
        match self.partition {
            None => self.clone(),
            Some(_) => {
                let base = self
                    .local
                    .rsplit_once(PARTITION_SUFFIX)
                    .map_or(self.local.as_str(), |(b, _)| b);
                TopicName {
                    namespace: self.namespace.clone(),
                    local: base.to_owned(),
                    partition: None,
                }
            }
        }
    }

    /// Partition `n` of this topic.
    pub fn partition_name(&self, n: u32) -> TopicName {
        TopicName {
            namespace: self.namespace.clone(),
            local: format!("{}{PARTITION_SUFFIX}{n}", self.partitioned_parent().local),
            partition: Some(n),
        }
    }

    /// `tenant/namespace/persistent/topic`: the name of the topic's managed ledger, and the
    /// shape Pulsar's admin paths use.
    pub fn persistence_name(&self) -> String {
        format!("{}/persistent/{}", self.namespace, self.local)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "persistent://{}/{}", self.namespace, self.local)
    }
}

impl FromStr for TopicName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NameError::Topic {
            name: s.chars().take(300).collect(),
            reason,
        };
        let rest = if let Some(rest) = s.strip_prefix("persistent://") {
            rest
        } else if s.starts_with("non-persistent://") {
            return Err(bad("non-persistent topics are not supported"));
        } else if s.contains("://") {
            return Err(bad("unknown domain (only persistent:// is supported)"));
        } else if !s.contains('/') {
            return TopicName::new(NamespaceName::new("public", "default")?, s);
        } else {
            s
        };
        let mut parts = rest.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(n), Some(local)) => {
                let ns = NamespaceName::new(t, n).map_err(|e| match e {
                    NameError::Namespace { reason, .. } => bad(reason),
                    other => other,
                })?;
                TopicName::new(ns, local)
            }
            _ => Err(bad("expected persistent://tenant/namespace/topic")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TopicName {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn short_forms_expand_like_pulsar() {
        assert_eq!(
            t("my-topic").to_string(),
            "persistent://public/default/my-topic"
        );
        assert_eq!(
            t("acme/orders/t1").to_string(),
            "persistent://acme/orders/t1"
        );
        assert_eq!(t("persistent://a/b/c"), t("a/b/c"));
    }

    #[test]
    fn partitions_are_recognised_and_built() {
        let p = t("persistent://a/b/events-partition-3");
        assert_eq!(p.partition(), Some(3));
        assert_eq!(
            p.partitioned_parent().to_string(),
            "persistent://a/b/events"
        );
        assert_eq!(
            t("a/b/events").partition_name(7),
            t("a/b/events-partition-7")
        );
        // Not partitions: no number, a leading zero, nothing before the suffix.
        assert_eq!(t("a/b/x-partition-").partition(), None);
        assert_eq!(t("a/b/x-partition-01").partition(), None);
        assert_eq!(t("a/b/-partition-1").partition(), None);
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        for bad in [
            "",
            "non-persistent://a/b/c",
            "http://a/b/c",
            "persistent://a/b",
            "persistent://a/b/",
            "persistent://a/b/c/d",
            "persistent://a b/ns/t",
            "persistent://a/n$s/t",
            "a/b/has space",
        ] {
            assert!(bad.parse::<TopicName>().is_err(), "{bad:?} must be refused");
        }
        let long = format!("a/b/{}", "x".repeat(300));
        assert!(long.parse::<TopicName>().is_err());
    }

    #[test]
    fn persistence_name_is_stable() {
        assert_eq!(t("a/b/c").persistence_name(), "a/b/persistent/c");
    }
}
