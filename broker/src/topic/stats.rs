//! A topic's publish statistics in Pulsar's metric buckets: the managed ledger's write latency
//! (`pulsar_storage_write_latency_le_*`, ms) and the stored entries' sizes
//! (`pulsar_entry_size_le_*`, bytes). As Pulsar's `StatsBuckets`, each bucket counts the values
//! between the previous bound and its own (not cumulative), plus one overflow bucket; the
//! metrics report the counts of the last period (see `crate::metrics`). Recording is two
//! relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (ms) of the write-latency buckets and their names' suffixes.
pub const WRITE_LATENCY_BUCKETS_MS: [(f64, &str); 9] = [
    (0.5, "0_5"),
    (1.0, "1"),
    (5.0, "5"),
    (10.0, "10"),
    (20.0, "20"),
    (50.0, "50"),
    (100.0, "100"),
    (200.0, "200"),
    (1000.0, "1000"),
];

/// Upper bounds (bytes) of the entry-size buckets and their names' suffixes.
pub const ENTRY_SIZE_BUCKETS: [(u64, &str); 8] = [
    (128, "128"),
    (512, "512"),
    (1024, "1_kb"),
    (2048, "2_kb"),
    (4096, "4_kb"),
    (16 * 1024, "16_kb"),
    (100 * 1024, "100_kb"),
    (1024 * 1024, "1_mb"),
];

/// Bucket counts and sums; `[..n]` the bounded buckets, `[n]` the overflow.
#[derive(Debug, Default)]
pub struct PublishStats {
    write_latency: [AtomicU64; WRITE_LATENCY_BUCKETS_MS.len() + 1],
    write_latency_sum_us: AtomicU64,
    entry_size: [AtomicU64; ENTRY_SIZE_BUCKETS.len() + 1],
    entry_size_sum: AtomicU64,
}

/// A copy of the counts at one moment (differences of two make a period's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishCounts {
    pub write_latency: [u64; WRITE_LATENCY_BUCKETS_MS.len() + 1],
    pub write_latency_sum_us: u64,
    pub entry_size: [u64; ENTRY_SIZE_BUCKETS.len() + 1],
    pub entry_size_sum: u64,
}

impl PublishCounts {
    /// What was counted between `before` and `self`.
    pub fn since(&self, before: &PublishCounts) -> PublishCounts {
        let mut d = *self;
        for (a, b) in d.write_latency.iter_mut().zip(before.write_latency) {
            *a = a.saturating_sub(b);
        }
        for (a, b) in d.entry_size.iter_mut().zip(before.entry_size) {
            *a = a.saturating_sub(b);
        }
        d.write_latency_sum_us = d
            .write_latency_sum_us
            .saturating_sub(before.write_latency_sum_us);
        d.entry_size_sum = d.entry_size_sum.saturating_sub(before.entry_size_sum);
        d
    }

    /// Adds `other` (a namespace's total of its topics).
    pub fn add(&mut self, other: &PublishCounts) {
        for (a, b) in self.write_latency.iter_mut().zip(other.write_latency) {
            *a += b;
        }
        for (a, b) in self.entry_size.iter_mut().zip(other.entry_size) {
            *a += b;
        }
        self.write_latency_sum_us += other.write_latency_sum_us;
        self.entry_size_sum += other.entry_size_sum;
    }
}

impl PublishStats {
    /// One entry stored: its size in bytes.
    pub fn record_entry(&self, bytes: u64) {
        let at = ENTRY_SIZE_BUCKETS
            .iter()
            .position(|(bound, _)| bytes <= *bound)
            .unwrap_or(ENTRY_SIZE_BUCKETS.len());
        self.entry_size[at].fetch_add(1, Ordering::Relaxed);
        self.entry_size_sum.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One write persisted `elapsed` after it was handed to the managed ledger.
    pub fn record_write(&self, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let at = WRITE_LATENCY_BUCKETS_MS
            .iter()
            .position(|(bound, _)| ms <= *bound)
            .unwrap_or(WRITE_LATENCY_BUCKETS_MS.len());
        self.write_latency[at].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.write_latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn counts(&self) -> PublishCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PublishCounts {
            write_latency: std::array::from_fn(|i| load(&self.write_latency[i])),
            write_latency_sum_us: load(&self.write_latency_sum_us),
            entry_size: std::array::from_fn(|i| load(&self.entry_size[i])),
            entry_size_sum: load(&self.entry_size_sum),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_bucket_of_the_first_bound_at_or_above_them() {
        let s = PublishStats::default();
        s.record_entry(100);
        s.record_entry(128);
        s.record_entry(129);
        s.record_entry(5 * 1024 * 1024);
        s.record_write(Duration::from_micros(300));
        s.record_write(Duration::from_millis(7));
        s.record_write(Duration::from_secs(3));
        let c = s.counts();
        assert_eq!(c.entry_size[0], 2, "≤ 128");
        assert_eq!(c.entry_size[1], 1, "(128, 512]");
        assert_eq!(c.entry_size[ENTRY_SIZE_BUCKETS.len()], 1, "overflow");
        assert_eq!(c.entry_size_sum, 100 + 128 + 129 + 5 * 1024 * 1024);
        assert_eq!(c.write_latency[0], 1, "≤ 0.5 ms");
        assert_eq!(c.write_latency[3], 1, "(5, 10] ms");
        assert_eq!(c.write_latency[WRITE_LATENCY_BUCKETS_MS.len()], 1);
        assert_eq!(c.write_latency_sum_us, 300 + 7_000 + 3_000_000);

        let before = c;
        s.record_entry(1000);
        let d = s.counts().since(&before);
        assert_eq!(d.entry_size.iter().sum::<u64>(), 1);
        assert_eq!(d.entry_size[2], 1, "(512, 1 KiB]");
        assert_eq!(d.entry_size_sum, 1000);
    }
}
