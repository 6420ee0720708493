//! The gRPC transport of [`BookieClient`](crate::api::BookieClient) (`proto/bookie.proto`).
//!
//! - [`server`] serves any `BookieClient` — in a bookie process, the [`Bookie`](crate::server::Bookie)
//!   storage — with adds pipelined over one bidirectional stream per connection.
//! - [`client`] is a `BookieClient` for a remote bookie: [`GrpcBookieClient`], lazily connected,
//!   adds multiplexed over one long-lived stream; [`GrpcConnector`] hands them out per bookie id.
//!
//! Bookie answers (fenced, no such entry, read-only, …) travel in-band as the numbered
//! [`Status`](magnetar_proto::bookie::Status) with a message; a gRPC-level error means the
//! transport failed and becomes [`BookieError::Unavailable`](crate::api::BookieError).

pub mod client;
pub mod server;

pub use client::{ClientOptions, GrpcBookieClient, GrpcConnector};
pub use server::{ServerOptions, serve, serve_with};

/// Room for the protobuf framing and the other fields around an entry's payload.
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;
/// Default largest gRPC message either side accepts: a bookie's default largest entry
/// (5 MiB + 64 KiB) with generous room to spare.
pub const MESSAGE_SIZE_MAX_BYTES: usize = 8 * 1024 * 1024;
