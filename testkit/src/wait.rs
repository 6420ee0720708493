//! Waiting for a condition, never for a fixed time: poll until it holds, fail the test with
//! what was awaited when it does not within a bound.
//!
//! Two things look like waiting and are not: a client's backoff between retries of a refused
//! request, which is the client's behaviour under test ([`retrying`]); and a negative assertion
//! that only the passing of real time can show — something on a real server's clock (an etcd
//! lease) must NOT happen, and no manual clock can be driven instead — which
//! [`holds_throughout`] checks all through an explicit window.

use std::future::Future;
use std::time::Duration;

use magnetar_metadata::clock;

/// Between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Between two checks of an invariant over a window (they may ask a server).
const HOLD_POLL_INTERVAL: Duration = Duration::from_millis(20);

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
    until_async(what, within, || std::future::ready(probe())).await
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

/// Sends a request the way a client does until it is accepted: `attempt` sends it and returns
/// `Some` with the accepted answer, `None` when refused with a retryable error; between two
/// attempts the client backs off for `backoff`. Panics naming `what` after `within`.
///
/// The backoff is the client's behaviour, part of the scenario under test (a Pulsar client
/// waits at least 100 ms before retrying; a client retrying every few milliseconds is another
/// scenario), not a wait for a condition: each attempt is the check.
///
/// `attempt` is an async closure, so it can drive a connection it borrows from one attempt to
/// the next; the future is therefore not `Send` (a limitation of async closures' futures):
/// await it in a test's body, not in a spawned or boxed-`Send` future.
pub async fn retrying<T>(
    what: &str,
    within: Duration,
    backoff: Duration,
    mut attempt: impl AsyncFnMut() -> Option<T>,
) -> T {
    let clock = clock::system();
    let deadline = clock.now() + within;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(clock.now() < deadline, "not within {within:?}: {what}");
        clock.sleep(backoff).await;
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

/// Checks the async `invariant` all through `window` (at its start, its end and often in
/// between); panics naming `what` as soon as it does not hold.
///
/// For negative assertions only — something must NOT happen during `window`, and only real
/// time passing can show it (e.g. a lease on a real etcd server's clock not expiring). Never use
/// it to wait for something to happen ([`until`]), nor where the component takes a clock: drive
/// a [`clock::ManualClock`] past the timer instead.
pub async fn holds_throughout<F: Future<Output = bool>>(
    what: &str,
    window: Duration,
    mut invariant: impl FnMut() -> F,
) {
    let clock = clock::system();
    let end = clock.now() + window;
    loop {
        assert!(invariant().await, "no longer holds: {what}");
        let now = clock.now();
        if now >= end {
            return;
        }
        clock.sleep(HOLD_POLL_INTERVAL.min(end - now)).await;
    }
}
