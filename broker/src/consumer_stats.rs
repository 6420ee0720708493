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
        connected_since: Some(format_utc_ms(ctx.connected_since_ms)),
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

/// `ms` since the epoch as ISO 8601 UTC with milliseconds, e.g. `2024-03-01T12:00:00.250Z`.
pub fn format_utc_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_stats_dates_are_iso_8601_utc() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_utc_ms(1_709_294_400_250), "2024-03-01T12:00:00.250Z");
        assert_eq!(format_utc_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
