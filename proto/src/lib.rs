//! Wire contracts of Magnetar: the `.proto` files and the code generated from them. No logic.
//!
//! - [`bookie`] — the bookie RPC (`proto/bookie.proto`): pipelined adds, reads, LAC long-poll,
//!   fencing, deletion, info.
//! - The Pulsar binary protocol subset arrives with the broker.

/// Bookie RPC, generated from `proto/bookie.proto`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod bookie {
    tonic::include_proto!("magnetar.bookie.v1");
}
