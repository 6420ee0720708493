//! Waiting for a condition, never for a fixed time: poll until it holds, fail the test with
//! what was awaited when it does not within a bound.

use std::future::Future;
use std::time::Duration;

use magnetar_metadata::clock;

/// Between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `condition` until it holds; panics naming `what` after `within`.
pub async fn until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    until_some(what, within, || condition().then_some(())).await;
}

/// Polls `probe` until it returns `Some`, and returns that; panics naming `what` after `within`.
pub async fn until_some<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let clock = clock::system();
    let deadline = clock.now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(clock.now() < deadline, "not within {within:?}: {what}");
        clock.sleep(POLL_INTERVAL).await;
    }
}

/// Polls the async `probe` until it returns `Some`; panics naming `what` after `within`.
pub async fn until_async<T, F: Future<Output = Option<T>>>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let clock = clock::system();
    let deadline = clock.now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(clock.now() < deadline, "not within {within:?}: {what}");
        clock.sleep(POLL_INTERVAL).await;
    }
}

/// [`until`] for code that is not async (process-level tests).
pub fn until_blocking(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let clock = clock::system();
    let deadline = clock.now() + within;
    while !condition() {
        assert!(clock.now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}
