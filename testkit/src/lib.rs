//! The one test harness of the workspace: it starts real parts and waits for them by polling
//! a condition, never by sleeping a fixed time.
//!
//! - [`etcd`] — real etcd processes (one server or a cluster) on free ports of 127.0.0.1; a
//!   test without etcd fails and says how to get it.
//! - [`local`] — in-process parts: a metadata store with a bookie the test can take away and
//!   give back, cluster brokers and standalones on free ports.
//! - [`process`] — the `magnetar` binary: run to completion, or as a server that is ready
//!   once it prints its serving line, killed on drop.
//! - [`s3`] — a real S3-compatible server (moto) on a free port; a test without it fails
//!   and says how to get it.
//! - [`wire`] — a raw Pulsar-protocol client (handshake, frames, bounded waits).
//! - [`wait`] — waiting for a condition with a bound and a message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations,
    clippy::missing_panics_doc,
    clippy::len_without_is_empty
)]

pub mod etcd;
pub mod local;
pub mod process;
pub mod s3;
pub mod s3fs;
pub mod wait;
pub mod wire;
