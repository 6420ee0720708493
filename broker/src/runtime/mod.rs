//! Assembling and running a broker process.
//!
//! - [`broker`] — the one builder: [`broker::Broker::start`] assembles a broker from a metadata
//!   store, a way to reach bookies and [`broker::BrokerOptions`]; `magnetar broker` and the
//!   tests use it directly.
//! - [`standalone`] — the whole system in one process: the embedded store and an in-process
//!   bookie, then the same builder.

pub mod broker;
pub mod standalone;
