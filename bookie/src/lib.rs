//! The bookie tier: the bookie server and the ledger client brokers use.
//!
//! - [`api`] — [`BookieClient`](api::BookieClient), the one interface to a bookie whatever the
//!   transport, with the entry type, its CRC32C, and the numbered error codes.
//! - [`server`] — the bookie's storage: journal with group commit and fsync before ack, entry
//!   logs with a per-ledger index, fencing, garbage collection, disk limits. Its [`server::Bookie`]
//!   implements `BookieClient` directly: that is the in-process transport.
//! - [`rpc`] — the gRPC transport: a tonic server for any `BookieClient`, and a client that is one.
//! - [`node`] — a running `magnetar bookie`: storage + gRPC server + registration in the metadata
//!   store.
//! - [`metrics`] — the bookie's Prometheus metrics, with BookKeeper's names.
//! - [`cookie`] — instance identity: ties a bookie's data directory to its metadata store,
//!   checked before the storage opens.
//! - [`local`] — the in-process transport: bookies of this process called directly.
//! - [`orphans`] — collection of ledgers deleted while this bookie was down (scan and compare
//!   with the metadata store).
//! - [`client`] — the ledger client: create ledgers over ensembles with (E, Qw, Qa), pipelined
//!   appends, ensemble change, close, reads with speculative retries, recovery with fencing.

pub mod api;
pub mod autorecovery;
pub mod client;
pub mod cookie;
pub mod http;
pub mod local;
pub mod metrics;
pub mod node;
pub mod orphans;
pub mod rpc;
pub mod server;
