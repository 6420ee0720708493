//! The records through which brokers move bundles between them, under `/loadbalance/`:
//!
//! - **handover** `/loadbalance/handover/{bundle}`: written by the owner that is giving a
//!   bundle to another broker, after its topics are quiesced and before it releases the lease.
//!   Once the lease is released the source tells its clients where to reconnect (PIP-307).
//!   The named target opens the listed topics' storage while it takes the lease, marks the
//!   record `taken`, loads the topics, then deletes the record; clients reach it meanwhile and
//!   each waits only for its own topic. The source waits for the mark (or the deletion) to
//!   know the move is done. Lookups that meet a free bundle with a live handover record send
//!   clients to its target instead of taking the bundle themselves.
//! - **unload order** `/loadbalance/unload/{bundle}`: written by whoever wants a bundle it does
//!   not own moved (the leader's shedding, a namespace unload on another broker); the owner
//!   carries it out and deletes it, which is what the writer waits for.
//! - **split order** `/loadbalance/split/{bundle}`: the same for a split (the leader's
//!   automatic split, an admin split sent to a broker that does not own the bundle).
//!
//! Both are plain (not ephemeral) keys with a creation time: one whose writer died is ignored
//! once older than [`RECORD_STALE_MS`] and deleted by the next broker that meets it.

use serde::{Deserialize, Serialize};

use super::bundle::Bundle;

pub const LOADBALANCE_PREFIX: &str = "/loadbalance/";
pub const HANDOVER_PREFIX: &str = "/loadbalance/handover/";
pub const UNLOAD_ORDER_PREFIX: &str = "/loadbalance/unload/";
pub const SPLIT_ORDER_PREFIX: &str = "/loadbalance/split/";

/// A handover or order older than this is taken for abandoned (its writer died mid-way).
pub const RECORD_STALE_MS: u64 = 30_000;
/// At most this many topic names travel in a handover (the rest load on first use).
pub const HANDOVER_TOPICS_MAX: usize = 10_000;

/// A bundle on its way from `from` to `to` (service URLs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    pub from: String,
    pub to: String,
    /// Topics the source served, for the target to open before clients arrive.
    #[serde(default)]
    pub topics: Vec<String>,
    pub created_ms: u64,
    /// Set by the target once it holds the bundle's lease: clients may come.
    #[serde(default)]
    pub taken: bool,
    /// Written so before the source quiesces the bundle: the target prepares (reads the
    /// topics' policies, creates their next ledgers) while the source still serves; the
    /// source then rewrites the record without it, and the target takes the bundle.
    #[serde(default)]
    pub preparing: bool,
    /// Set by the target once it prepared: the source may quiesce.
    #[serde(default)]
    pub prepared: bool,
    /// By index of `topics`: `[ledger id, entries, size bytes]` of the topic's last ledger as
    /// the source sealed it, so that the target's open need not read that ledger's metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<Option<[u64; 3]>>,
}

impl Handover {
    /// The sealed ledgers the source reported, by managed-ledger name.
    pub fn sealed_ledgers(
        &self,
    ) -> impl Iterator<Item = (String, magnetar_managed_ledger::SealedLedger)> + '_ {
        self.topics
            .iter()
            .zip(&self.sealed)
            .filter_map(|(name, sealed)| {
                let [ledger, entries, size_bytes] = (*sealed)?;
                let topic: crate::topic_name::TopicName = name.parse().ok()?;
                Some((
                    topic.persistence_name(),
                    magnetar_managed_ledger::SealedLedger {
                        ledger: magnetar_metadata::LedgerId(ledger),
                        entries,
                        size_bytes,
                    },
                ))
            })
    }
}

/// A request to the owner of a bundle to unload it, to `destination` if given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnloadOrder {
    #[serde(default)]
    pub destination: Option<String>,
    pub created_ms: u64,
}

/// A request to the owner of a bundle to split it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitOrder {
    /// Pulsar's `splitAlgorithmName`.
    pub algorithm: String,
    /// For `specified_positions_divide`.
    #[serde(default)]
    pub positions: Vec<u32>,
    /// Hand the children to other brokers afterwards.
    #[serde(default)]
    pub unload: bool,
    pub created_ms: u64,
}

pub fn split_order_key(bundle: &Bundle) -> String {
    format!("{SPLIT_ORDER_PREFIX}{bundle}")
}

pub fn handover_key(bundle: &Bundle) -> String {
    format!("{HANDOVER_PREFIX}{bundle}")
}

pub fn unload_order_key(bundle: &Bundle) -> String {
    format!("{UNLOAD_ORDER_PREFIX}{bundle}")
}

/// The bundle a handover or order key is about.
pub fn bundle_of_key(key: &str) -> Option<Bundle> {
    key.strip_prefix(HANDOVER_PREFIX)
        .or_else(|| key.strip_prefix(UNLOAD_ORDER_PREFIX))
        .or_else(|| key.strip_prefix(SPLIT_ORDER_PREFIX))
        .and_then(|rest| rest.parse().ok())
}

/// True when a change of a handover record says its target took the bundle: the record marked
/// taken, or deleted.
pub fn marks_taken(kind: &magnetar_metadata::EventKind) -> bool {
    match kind {
        magnetar_metadata::EventKind::Delete => true,
        magnetar_metadata::EventKind::Put(value) => {
            serde_json::from_slice::<Handover>(value).is_ok_and(|h| h.taken)
        }
    }
}

/// True once a record created at `created_ms` is too old to act on at `now_ms`.
pub fn marks_prepared(kind: &magnetar_metadata::EventKind) -> bool {
    match kind {
        magnetar_metadata::EventKind::Delete => true,
        magnetar_metadata::EventKind::Put(value) => {
            serde_json::from_slice::<Handover>(value).is_ok_and(|h| h.prepared)
        }
    }
}

pub fn is_stale(created_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(created_ms) > RECORD_STALE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_bundle() {
        let b: Bundle = "public/default/0x00000000_0x40000000".parse().unwrap();
        assert_eq!(
            handover_key(&b),
            "/loadbalance/handover/public/default/0x00000000_0x40000000"
        );
        assert_eq!(bundle_of_key(&handover_key(&b)), Some(b.clone()));
        assert_eq!(bundle_of_key(&unload_order_key(&b)), Some(b.clone()));
        assert_eq!(bundle_of_key(&split_order_key(&b)), Some(b));
        assert_eq!(bundle_of_key("/loadbalance/leader"), None);
        assert!(!is_stale(1_000, 1_000 + RECORD_STALE_MS));
        assert!(is_stale(1_000, 1_001 + RECORD_STALE_MS));
    }
}
