//! Assembling and running a broker process.
//!
//! - [`standalone`] — the whole system in one process (embedded store, in-process bookie).
//! - [`node`] — a cluster broker (etcd, bookies over gRPC).

pub mod node;
pub mod standalone;
