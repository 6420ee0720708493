//! What GET_TOPICS_OF_NAMESPACE answers, as Pulsar's broker does: the namespace's topics,
//! filtered on the broker by the client's `topics_pattern` (a pattern consumer then receives
//! only the topics it subscribes to, not the whole namespace), with the hash of the list so a
//! client that already holds it is answered "unchanged" without the list.
//!
//! - The pattern is a regular expression matched against the whole topic name without its
//!   domain (`tenant/ns/topic`; a `persistent://` or `non-persistent://` prefix in the pattern
//!   is dropped first), partitions by their partitioned topic's name — Pulsar's
//!   `TopicList.filterTopics`. Patterns longer than `subscriptionPatternMaxLength` (or not
//!   understood) are not applied: the answer is the whole list with `filtered = false`, and
//!   the client filters, as Pulsar does.
//! - The hash is Pulsar's: CRC32C of the sorted names joined with `,`, printed as Guava prints
//!   a 32-bit hash (the four bytes little-endian, in hex), so a Java client's cached hash
//!   compares equal.

use std::collections::BTreeSet;

use regex::Regex;

/// A pattern compiling to more than this is not applied (the regex engine refuses it rather
/// than growing the broker's memory).
const PATTERN_COMPILED_BYTES_MAX: usize = 1 << 20;

/// The answer to one GET_TOPICS_OF_NAMESPACE.
#[derive(Debug, PartialEq, Eq)]
pub struct TopicListAnswer {
    /// Empty when `changed` is false.
    pub topics: Vec<String>,
    pub filtered: bool,
    pub hash: String,
    pub changed: bool,
}

/// Filters `topics` (full names, sorted or not) by `pattern` when allowed, then hashes them and
/// compares with the client's `client_hash`.
pub fn answer(
    topics: Vec<String>,
    pattern: Option<&str>,
    pattern_length_max: Option<usize>,
    client_hash: Option<&str>,
) -> TopicListAnswer {
    let compiled = match (pattern, pattern_length_max) {
        (Some(p), Some(max)) if p.chars().count() <= max => compile(p),
        _ => None,
    };
    let filtered = compiled.is_some();
    let topics = match &compiled {
        Some(re) => topics
            .into_iter()
            .filter(|t| re.is_match(&domainless_partitioned(t)))
            .collect(),
        None => topics,
    };
    let hash = hash(&topics);
    let changed = client_hash != Some(hash.as_str());
    TopicListAnswer {
        topics: if changed { topics } else { Vec::new() },
        filtered,
        hash,
        changed,
    }
}

/// The pattern anchored at both ends (Java's `Matcher.matches`), without a domain prefix.
fn compile(pattern: &str) -> Option<Regex> {
    let body = match pattern.split_once("://") {
        Some(("persistent" | "non-persistent", rest)) => rest,
        Some(_) => return None,
        None => pattern,
    };
    regex::RegexBuilder::new(&format!("^(?:{body})$"))
        .size_limit(PATTERN_COMPILED_BYTES_MAX)
        .build()
        .ok()
}

/// `persistent://t/ns/topic-partition-3` → `t/ns/topic`.
fn domainless_partitioned(topic: &str) -> String {
    let rest = topic.split_once("://").map_or(topic, |(_, r)| r);
    match rest.rsplit_once("-partition-") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            base.to_owned()
        }
        _ => rest.to_owned(),
    }
}

/// Bytes `topics` take in the response (each a length-delimited protobuf field).
pub fn encoded_len(topics: &[String]) -> usize {
    topics
        .iter()
        .map(|t| t.len() + 1 + varint_len(t.len()))
        .sum()
}

fn varint_len(n: usize) -> usize {
    (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize
}

/// Pulsar's `TopicList.calculateHash`.
pub fn hash(topics: &[String]) -> String {
    let sorted: BTreeSet<&str> = topics.iter().map(String::as_str).collect();
    let mut crc = 0u32;
    for (i, t) in sorted.iter().enumerate() {
        if i > 0 {
            crc = crc32c::crc32c_append(crc, b",");
        }
        crc = crc32c::crc32c_append(crc, t.as_bytes());
    }
    crc.to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_pattern_keeps_matching_topics_and_partitions_by_their_base_name() {
        let all = names(&[
            "persistent://t/ns/orders-eu",
            "persistent://t/ns/orders-us-partition-0",
            "persistent://t/ns/orders-us-partition-1",
            "persistent://t/ns/payments",
            "persistent://t/ns/orders",
        ]);
        let a = answer(all, Some("persistent://t/ns/orders-.*"), Some(50), None);
        assert!(a.filtered && a.changed);
        assert_eq!(
            a.topics,
            names(&[
                "persistent://t/ns/orders-eu",
                "persistent://t/ns/orders-us-partition-0",
                "persistent://t/ns/orders-us-partition-1",
            ])
        );
        // Anchored: `t/ns/orders` alone matches neither `orders-.*` nor a prefix of it.
        let a = answer(
            names(&["persistent://t/ns/xorders-1"]),
            Some("t/ns/orders-.*"),
            Some(50),
            None,
        );
        assert!(a.topics.is_empty() && a.filtered);
    }

    #[test]
    fn a_pattern_too_long_or_not_understood_leaves_the_list_unfiltered() {
        let all = names(&["persistent://t/ns/a", "persistent://t/ns/b"]);
        let long = format!("t/ns/{}", "a".repeat(60));
        for p in [long.as_str(), "t/ns/(unclosed", "http://t/ns/a"] {
            let a = answer(all.clone(), Some(p), Some(50), None);
            assert!(!a.filtered, "{p}");
            assert_eq!(a.topics, all, "{p}");
        }
        let a = answer(all.clone(), Some("t/ns/a"), None, None);
        assert!(!a.filtered, "evaluation off");
    }

    #[test]
    fn the_hash_is_pulsars_and_an_equal_hash_answers_unchanged_without_the_list() {
        // The order of the input does not matter; the digits are the CRC's little-endian bytes.
        let h = hash(&names(&["b", "a"]));
        let crc = crc32c::crc32c(b"a,b");
        assert_eq!(h, format!("{:08x}", crc.swap_bytes()));
        assert_eq!(hash(&[]), "00000000");
        let all = names(&["persistent://t/ns/a", "persistent://t/ns/b"]);
        let first = answer(all.clone(), None, Some(50), None);
        let again = answer(all.clone(), None, Some(50), Some(&first.hash));
        assert!(!again.changed && again.topics.is_empty());
        assert_eq!(again.hash, first.hash);
        let other = answer(all, None, Some(50), Some("deadbeef"));
        assert!(other.changed && other.topics.len() == 2);
    }
}
