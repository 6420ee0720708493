//! CONSUMER_STATS: the figures of one consumer a client asks its broker for
//! (`CommandConsumerStats` → `CommandConsumerStatsResponse`, answered like Pulsar's
//! `ServerCnx.handleConsumerStats`).
//!
//! Filled from what the subscription actor knows ([`ConsumerSnapshot`]): name, available
//! permits, unacknowledged messages (entries delivered and not acknowledged), the subscription
//! type and its backlog (entries), plus the connection's address and the time the consumer
//! subscribed. Rates (`msgRateOut`, `msgThroughputOut`, `msgRateRedeliver`, `msgRateExpired`,
//! `messageAckRate`) are 0: the broker keeps counters, not per-consumer rate windows. A consumer
//! id unknown on the connection is answered with `ConsumerNotFound`.

use std::net::SocketAddr;

use magnetar_proto::pulsar::api::CommandConsumerStatsResponse;
use magnetar_proto::pulsar::api::command_subscribe::SubType;

use crate::subscription::ConsumerSnapshot;

/// What the answer is made of besides the subscription actor's snapshot of the consumer.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerContext {
    pub sub_type: SubType,
    /// Entries of the subscription not yet acknowledged (0 for readers).
    pub backlog_entries: u64,
    /// The client's address as the broker sees it.
    pub address: Option<SocketAddr>,
    /// When the consumer subscribed, ms since the epoch.
    pub connected_since_ms: u64,
}

/// The successful answer for `consumer`.
pub fn response(
    request_id: u64,
    consumer: &ConsumerSnapshot,
    ctx: ConsumerContext,
) -> CommandConsumerStatsResponse {
    CommandConsumerStatsResponse {
        request_id,
        error_code: None,
        error_message: None,
        msg_rate_out: Some(0.0),
        msg_throughput_out: Some(0.0),
        msg_rate_redeliver: Some(0.0),
        consumer_name: Some(consumer.name.clone()),
        available_permits: Some(u64::try_from(consumer.permits).unwrap_or(0)),
        unacked_messages: Some(consumer.unacked),
        blocked_consumer_on_unacked_msgs: Some(false),
        // Java's InetSocketAddress.toString(), as Pulsar reports it.
        address: ctx.address.map(|a| format!("/{a}")),
        connected_since: Some(crate::timefmt::iso8601_utc_ms(ctx.connected_since_ms)),
        r#type: Some(sub_type_name(ctx.sub_type).to_owned()),
        msg_rate_expired: Some(0.0),
        msg_backlog: Some(ctx.backlog_entries),
        message_ack_rate: Some(0.0),
    }
}

/// Pulsar's subscription type names (`Subscription.getTypeString`).
pub fn sub_type_name(t: SubType) -> &'static str {
    match t {
        SubType::Exclusive => "Exclusive",
        SubType::Shared => "Shared",
        SubType::Failover => "Failover",
        SubType::KeyShared => "Key_Shared",
    }
}
