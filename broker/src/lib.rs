//! The serving broker: Pulsar binary protocol on port 6650, topics on managed ledgers, cursors,
//! dispatchers, the entry cache, bundle ownership, offload and the admin REST API.
//!
//! Not built yet: `magnetar standalone` and `magnetar broker` say so and exit non-zero.
//! See `docs/ARCHITECTURE.md`.
//!
//! - [`managed_ledger`] — a topic's log on the bookie tier: ledgers with rollover, recovery
//!   and retention, cursors with persisted acks, and the shared entry cache.

pub mod managed_ledger;

pub mod admin;
pub mod bundle;
pub mod connection;
pub mod error;
pub mod node;
pub mod ownership;
pub mod policies;
pub mod server;
pub mod service;
pub mod standalone;
pub mod subscription;
pub mod topic;
pub mod topic_name;
