//! The Pulsar binary protocol (version 21), as the official clients speak it on port 6650.
//!
//! - [`api`] — the protobuf messages generated from `proto/pulsar_api.proto` (package
//!   `pulsar.proto`; field numbers, types and proto2 presence as in Apache Pulsar's
//!   `PulsarApi.proto`). Every command field of [`api::BaseCommand`] is boxed.

/// Messages of the Pulsar binary protocol, generated from `proto/pulsar_api.proto`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/pulsar.proto.rs"));
}
