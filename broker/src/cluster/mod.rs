//! The broker's place in a cluster: which bundles it owns and how it proves it.
//!
//! - [`bundle`] — namespace bundles (hash ranges of topic names).
//! - [`session`] — the broker's metadata session, renewed when lost.
//! - [`ownership`] — bundle leases on that session (`OwnershipCache`).
//! - [`registry`] — each broker's announcement (service and admin URLs).
//! - [`leader`] — the election of the one broker that runs cluster-wide jobs.
//! - [`load`] — load reports and the choices made from them (assignment, shedding).
//! - [`handover`] — the records through which bundles move between brokers.

pub mod bundle;

/// The cluster's name, as Pulsar's standalone names its cluster: what
/// `GET /admin/v2/clusters` lists and the `cluster` label of the metrics.
pub const DEFAULT_CLUSTER_NAME: &str = "standalone";

pub mod handover;
pub mod leader;
pub mod load;
pub mod ownership;
pub mod registry;
pub mod session;
