//! Time stamps as Pulsar shows them: ISO 8601 in UTC with milliseconds
//! (`2024-03-01T12:00:00.250Z`), for admin headers and stats.

use chrono::{DateTime, SecondsFormat};

/// `ms` since the epoch as ISO 8601 UTC with milliseconds. Times past chrono's range (year
/// 262143) are shown as the epoch's upper bound rather than failing a stats answer.
pub fn iso8601_utc_ms(ms: u64) -> String {
    let dt = i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or(DateTime::<chrono::Utc>::MAX_UTC);
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::iso8601_utc_ms;

    #[test]
    fn iso_dates_in_utc_with_milliseconds() {
        assert_eq!(iso8601_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_utc_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            iso8601_utc_ms(1_709_294_400_250),
            "2024-03-01T12:00:00.250Z"
        );
        assert_eq!(
            iso8601_utc_ms(4_102_444_799_999),
            "2099-12-31T23:59:59.999Z"
        );
    }
}
