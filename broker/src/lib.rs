//! The serving broker: Pulsar binary protocol on port 6650, topics on managed ledgers, cursors,
//! dispatchers, the entry cache, bundle ownership, offload and the admin REST API.
//!
//! See `docs/ARCHITECTURE.md`.
//!
//! Topics are stored in managed ledgers (the `magnetar-managed-ledger` crate).
//! - [`server`], [`connection`] — the Pulsar protocol listener and one connection's reader
//!   loop and writer task; [`error`] maps failures to Pulsar `ServerError` codes;
//!   [`consumer_stats`] answers CONSUMER_STATS.
//! - [`service`], [`topic`], [`subscription`] — loaded topics under bundle leases, producers,
//!   and the per-subscription dispatcher actors ([`key_shared`] hash ownership and draining
//!   hashes, [`delayed`] delayed delivery); [`schema`] the per-topic schema versions;
//!   [`dedup`] message deduplication by producer name and sequence id.
//! - [`standalone`], [`node`] — the whole broker in one process, and the cluster broker;
//!   [`topic_admin`] the admin API's topic operations on a running broker; [`registry`] the
//!   brokers' announcements (admin URLs for redirects).

pub mod admin;
pub mod bundle;
pub mod chunks;
pub mod connection;
pub mod consumer_stats;
pub mod dedup;
pub mod delayed;
pub mod error;
pub mod key_shared;
pub mod node;
pub mod ownership;
pub mod policies;
pub mod quickack;
pub mod registry;
pub mod schema;
pub mod server;
pub mod service;
pub mod session;
pub mod standalone;
pub mod subscription;
pub mod timefmt;
pub mod topic;
pub mod topic_admin;
pub mod topic_name;
