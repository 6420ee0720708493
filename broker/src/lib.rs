//! The serving broker: the Pulsar binary protocol on port 6650, topics on managed ledgers (the
//! `magnetar-managed-ledger` crate), dispatchers, bundle ownership and the admin REST API.
//! See `docs/ARCHITECTURE.md`. The folders follow the layers, top to bottom:
//!
//! - [`runtime`] — assembling a broker: standalone and cluster node.
//! - [`protocol`] — the Pulsar protocol: listener, connections, every command's handler.
//! - [`admin`] — the admin REST API (`/admin/v2`) and its topic operations on a running broker.
//! - [`metrics`] — `GET /metrics`: Pulsar's metric names over the loaded topics, cache, load
//!   balancer and offloads (and an in-process bookie's).
//! - [`service`] — the loaded topics under bundle leases, lookups, partition metadata.
//! - [`topic`] — one topic: producers, publishing, deduplication.
//! - [`subscription`] — one subscription's actor: cursor, consumers, dispatchers (Shared,
//!   Key_Shared, chunks, delayed delivery) and the `ConsumerSink` seam to clients.
//! - [`schema`] — per-topic schema versions and compatibility.
//! - [`cluster`] — bundles, the broker's session, ownership leases, the broker registry.
//! - [`policies`] — tenants, namespace policies, partitioned-topic metadata.
//! - [`topic_name`], [`timefmt`], [`error`] — leaves: names, time formats, the one error type
//!   and its mappings to Pulsar codes and HTTP statuses.

pub mod admin;
pub mod cluster;
pub mod error;
pub mod metrics;
pub mod policies;
pub mod protocol;
pub mod runtime;
pub mod schema;
pub mod service;
pub mod subscription;
pub mod timefmt;
pub mod topic;
pub mod topic_name;
