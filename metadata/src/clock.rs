//! Time and randomness, injected (DESIGN decision 12): the one place that reads the system
//! clock, sleeps on the runtime's timer or draws from the operating system's entropy.
//!
//! Protocol logic — leases and session renewal, bookie placement, ensemble change, rollover
//! and retention, cursor flushes, redelivery and delayed delivery — takes a [`Clock`] and a
//! [`Random`] from whoever builds it. Production passes [`system()`] and
//! [`Random::from_entropy`]; tests pass a [`ManualClock`] that moves only when told, and a
//! seeded [`Random`] that replays exactly. Clippy's `disallowed-methods` (see `clippy.toml`)
//! refuses `SystemTime::now`, `Instant::now`, `tokio::time::sleep` and unseeded RNGs anywhere
//! else.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

/// A sleep that ends at its deadline on the clock that made it.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Wall-clock and monotonic time, and sleeping.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Milliseconds since the Unix epoch (wall clock: timestamps, publish and delivery times).
    fn now_ms(&self) -> u64;
    /// Monotonic time (deadlines, intervals, backoff).
    fn now(&self) -> Instant;
    /// Completes once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Sleep;

    /// Completes after `duration` on this clock.
    fn sleep(&self, duration: Duration) -> Sleep {
        self.sleep_until(self.now() + duration)
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks and the tokio runtime's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one reading of the wall clock
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    #[allow(clippy::disallowed_methods)] // the one reading of the monotonic clock
    fn now(&self) -> Instant {
        Instant::now()
    }

    #[allow(clippy::disallowed_methods)] // the one sleep on the runtime's timer
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            deadline,
        )))
    }
}

/// The process's system clock, shared.
pub fn system() -> SharedClock {
    static SYSTEM: OnceLock<SharedClock> = OnceLock::new();
    Arc::clone(SYSTEM.get_or_init(|| Arc::new(SystemClock)))
}

/// Milliseconds since the Unix epoch on the system clock, for code that has no clock of its
/// own to ask (command-line tools, log lines).
pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// A clock that moves only when [`ManualClock::advance`] is called: sleeps end exactly when
/// time is advanced past their deadline, so timer-driven logic runs deterministically.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    wall_origin_ms: u64,
    elapsed: watch::Sender<Duration>,
}

impl ManualClock {
    /// A clock whose wall time starts at `wall_ms` (milliseconds since the epoch).
    pub fn new(wall_ms: u64) -> Arc<ManualClock> {
        let (elapsed, _) = watch::channel(Duration::ZERO);
        Arc::new(ManualClock {
            origin: SystemClock.now(),
            wall_origin_ms: wall_ms,
            elapsed,
        })
    }

    /// Moves time forward by `by`, ending every sleep whose deadline is reached.
    pub fn advance(&self, by: Duration) {
        self.elapsed.send_modify(|e| *e += by);
    }

    /// Time advanced since the clock was made.
    pub fn elapsed(&self) -> Duration {
        *self.elapsed.borrow()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        let ms = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.wall_origin_ms.saturating_add(ms)
    }

    fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let due = deadline.saturating_duration_since(self.origin);
        let mut elapsed = self.elapsed.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if the clock is gone, never wake.
            if elapsed.wait_for(|e| *e >= due).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

/// `future`, or `Err(Elapsed)` if it takes longer than `duration` on `clock`.
pub async fn timeout<F: Future>(
    clock: &dyn Clock,
    duration: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    let sleep = clock.sleep(duration);
    tokio::select! {
        biased;
        out = future => Ok(out),
        () = sleep => Err(Elapsed(duration)),
    }
}

/// A [`timeout`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

/// Periodic ticks on a clock, the first one period after creation. A tick missed because the
/// owner was busy is taken at once, but never more than one (no burst to catch up).
pub struct Interval {
    clock: SharedClock,
    period: Duration,
    next: Instant,
    /// The sleep to `next`, kept across calls so a `tick()` raced in a `select!` loop costs
    /// nothing until it is due (no timer made and dropped per iteration).
    sleep: Option<Sleep>,
}

impl std::fmt::Debug for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interval")
            .field("period", &self.period)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Interval {
    pub fn new(clock: SharedClock, period: Duration) -> Interval {
        let period = period.max(Duration::from_millis(1));
        let next = clock.now() + period;
        Interval {
            clock,
            period,
            next,
            sleep: None,
        }
    }

    /// Waits for the next tick. Cancel-safe: dropping the future loses no tick.
    pub async fn tick(&mut self) {
        let (clock, next) = (&self.clock, self.next);
        self.sleep
            .get_or_insert_with(|| clock.sleep_until(next))
            .as_mut()
            .await;
        self.sleep = None;
        let now = self.clock.now();
        self.next += self.period;
        if self.next <= now {
            self.next = now + self.period;
        }
    }
}

/// Randomness: seeded, so a run replays exactly, or from the OS's entropy in production.
#[derive(Debug)]
pub struct Random {
    seed: u64,
    rng: Mutex<StdRng>,
}

impl Random {
    pub fn from_seed(seed: u64) -> Arc<Random> {
        Arc::new(Random {
            seed,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        })
    }

    /// Seeded from the operating system: the one unseeded source; its seed is still known
    /// (see [`Random::seed`]), so a run can be replayed.
    #[allow(clippy::disallowed_methods)]
    pub fn from_entropy() -> Arc<Random> {
        Random::from_seed(rand::random())
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Runs `f` with the generator (held for `f` only: keep it short, never across `.await`).
    pub fn with<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rng)
    }

    /// A uniformly random number below `bound` (0 for a bound of 0).
    pub fn below(&self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.with(|r| r.random_range(0..bound))
    }

    /// 128 random bits.
    pub fn u128(&self) -> u128 {
        self.with(|r| r.random())
    }
}

/// The process's entropy-seeded generator, shared by whoever was given none.
pub fn entropy() -> Arc<Random> {
    static ENTROPY: OnceLock<Arc<Random>> = OnceLock::new();
    Arc::clone(ENTROPY.get_or_init(Random::from_entropy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_now_is_after_2026_and_does_not_go_back() {
        let a = now_ms();
        let b = system().now_ms();
        assert!(a > 1_767_225_600_000, "{a}"); // 2026-01-01
        assert!(b >= a);
    }

    #[tokio::test]
    async fn manual_sleeps_end_exactly_when_time_reaches_them() {
        let clock = ManualClock::new(1_000);
        let start = clock.now();
        let short = tokio::spawn(clock.sleep(Duration::from_secs(1)));
        let long = tokio::spawn(clock.sleep_until(start + Duration::from_secs(5)));
        tokio::task::yield_now().await;
        clock.advance(Duration::from_millis(999));
        tokio::task::yield_now().await;
        assert!(!short.is_finished());
        clock.advance(Duration::from_millis(1));
        short.await.unwrap();
        assert!(!long.is_finished());
        assert_eq!(clock.now_ms(), 2_000);
        assert_eq!(clock.now() - start, Duration::from_secs(1));
        clock.advance(Duration::from_secs(4));
        long.await.unwrap();
    }

    #[tokio::test]
    async fn timeout_and_interval_run_on_the_manual_clock() {
        let clock = ManualClock::new(0);
        let shared: SharedClock = clock.clone();
        let waiting = {
            let c = Arc::clone(&shared);
            tokio::spawn(async move {
                timeout(&*c, Duration::from_secs(3), std::future::pending::<()>()).await
            })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(3));
        assert_eq!(waiting.await.unwrap(), Err(Elapsed(Duration::from_secs(3))));
        assert_eq!(timeout(&*shared, Duration::ZERO, async { 7 }).await, Ok(7));

        let mut interval = Interval::new(Arc::clone(&shared), Duration::from_secs(2));
        clock.advance(Duration::from_secs(7)); // three periods missed: one tick, no burst
        interval.tick().await;
        let next = tokio::spawn(async move {
            interval.tick().await;
        });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        clock.advance(Duration::from_secs(2));
        next.await.unwrap();
    }

    #[test]
    fn a_seed_replays_the_same_numbers() {
        let a = Random::from_seed(42);
        let b = Random::from_seed(42);
        let xs: Vec<u64> = (0..8).map(|_| a.below(1_000_000)).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.below(1_000_000)).collect();
        assert_eq!(xs, ys);
        assert_eq!(a.seed(), 42);
        assert_eq!(a.below(0), 0);
        let c = Random::from_seed(43);
        let zs: Vec<u64> = (0..8).map(|_| c.below(1_000_000)).collect();
        assert_ne!(xs, zs);
    }
}
