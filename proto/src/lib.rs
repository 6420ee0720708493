//! Wire contracts of Magnetar: the `.proto` files and the code generated from them. No logic.
//!
//! - [`bookie`] — the bookie RPC (`proto/bookie.proto`): pipelined adds, reads, LAC long-poll,
//!   fencing, deletion, info.
//! - [`pulsar`] — the Pulsar binary protocol: the messages of `proto/pulsar_api.proto`
//!   ([`pulsar::api`]) and the frame codec ([`pulsar::frame`]).

/// Bookie RPC, generated from `proto/bookie.proto`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod bookie {
    tonic::include_proto!("magnetar.bookie.v1");
}

pub mod pulsar;
