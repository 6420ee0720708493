//! The Pulsar binary protocol side of the broker: where every command a client sends is
//! handled.
//!
//! - [`server`] — the TCP listener (connection limit, TCP_NODELAY).
//! - [`connection`] — one client connection: the reader loop and its command dispatch
//!   (`connection/mod.rs`), producers and SEND (`producer.rs`), consumers, FLOW, ACK, SEEK,
//!   REDELIVER (`consumer.rs`), LOOKUP and partitioned metadata (`lookup.rs`), and the writer task
//!   whose queue implements the topic's `ProducerSink` and the subscription's `ConsumerSink`.
//! - [`consumer_stats`] — CONSUMER_STATS.
//! - [`quickack`] — TCP_QUICKACK on the connection socket.
//! - [`topic_list`] — GET_TOPICS_OF_NAMESPACE's answer: pattern filtering and the list hash.

pub mod connection;
pub mod consumer_stats;
pub mod quickack;
pub mod server;
pub mod topic_list;
