//! Wall-clock time, read in this one place for every crate: ledger and cursor timestamps,
//! publish and delivery times, retention. (Design decision 12's injected clock replaces this
//! function's body; callers already go through it.)

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2026_and_does_not_go_back() {
        let a = super::now_ms();
        let b = super::now_ms();
        assert!(a > 1_767_225_600_000, "{a}"); // 2026-01-01
        assert!(b >= a);
    }
}
