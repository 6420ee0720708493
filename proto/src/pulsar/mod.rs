//! The Pulsar binary protocol (version 21), as the official clients speak it on port 6650.
//!
//! - [`api`] — the protobuf messages generated from `proto/pulsar_api.proto` (package
//!   `pulsar.proto`; field numbers, types and proto2 presence as in Apache Pulsar's
//!   `PulsarApi.proto`). Every command field of [`api::BaseCommand`] is boxed.
//! - [`frame`] — framing: [`PulsarCodec`] (a `tokio_util` `Decoder`/`Encoder`), [`Frame`],
//!   [`Payload`] (the client's bytes after the command, kept unchanged), [`MessageFrame`]
//!   (dispatch of a stored entry), [`FrameError`].
//! - [`commands`] — constructors of the commands the broker sends.

/// Messages of the Pulsar binary protocol, generated from `proto/pulsar_api.proto`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/pulsar.proto.rs"));
}

pub mod commands;
pub mod frame;

#[cfg(test)]
mod tests;

pub use frame::{
    DEFAULT_FRAME_SIZE_MAX, DEFAULT_MAX_MESSAGE_SIZE, Frame, FrameError, MessageFrame,
    PROTOCOL_VERSION, Payload, PulsarCodec,
};
