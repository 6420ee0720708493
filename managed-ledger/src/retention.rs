//! The periodic work of every managed ledger open in one factory. One task per factory walks
//! the factory's map of open managed ledgers: it trims those whose
//! `retention_check_interval_ms` has passed, and asks those whose current ledger passed its
//! age limit (`Shared::roll_due_ms`) to roll over — rather than timers per managed ledger, which
//! every idle topic of a broker would pay for in memory (its write actor then parks with no
//! task at all).
//!
//! The task starts with the factory's first open and ends when the factory is dropped. It wakes
//! at the earliest check due, but at most every [`WAKE_INTERVAL_MS_MIN`] (so many topics with
//! staggered due times cost one walk per second, not one wake-up per topic), and early only when
//! a managed ledger reports a due time before its planned wake ([`Timers`]): a newly opened one
//! with a shorter interval, or a current ledger whose age limit starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use magnetar_metadata::clock::SharedClock;
use tokio::sync::Notify;
use tracing::{Instrument, info_span, warn};

use crate::factory::OpenMap;
use crate::ledger::{Command, ManagedLedger};
use crate::read::Status;

/// The task sleeps at least this long between walks unless a managed ledger's own interval is
/// shorter (tests use intervals of a few milliseconds).
const WAKE_INTERVAL_MS_MIN: u64 = 1_000;
/// Without any managed ledger open, the task looks again after this long (or when one opens).
const WAKE_INTERVAL_MS_IDLE: u64 = 60_000;
/// Trims run concurrently up to this many: a slow bookie delete delays only its own topic.
const TRIMS_CONCURRENT_MAX: usize = 8;

/// How managed ledgers tell the factory's task about a new due time. The task publishes when
/// it plans to wake next; a due time earlier than that wakes it, any other costs one atomic
/// load — so opening many topics does not make the task walk all of them once per open.
#[derive(Debug)]
pub(crate) struct Timers {
    wake: Notify,
    /// When the task wakes next (ms, the factory clock's wall time); 0 while it walks.
    next_wake_ms: AtomicU64,
}

impl Timers {
    pub(crate) fn new() -> Self {
        Timers {
            wake: Notify::new(),
            next_wake_ms: AtomicU64::new(0),
        }
    }

    /// Something is due at `at_ms`: wakes the task if it would sleep past that.
    pub(crate) fn due_at(&self, at_ms: u64) {
        if at_ms < self.next_wake_ms.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }
}

/// Starts the retention task of the factory whose open map is `open`.
pub(crate) fn spawn(open: Weak<OpenMap>, clock: SharedClock, timers: Arc<Timers>) {
    let fut = async move {
        loop {
            // Walking: a due time set meanwhile is seen by this walk or wakes the next.
            timers.next_wake_ms.store(0, Ordering::Release);
            let Some(map) = open.upgrade() else { break };
            let mls: Vec<Arc<ManagedLedger>> = map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter_map(|cell| cell.get().cloned())
                .collect();
            drop(map);
            let now = clock.now_ms();
            let (due, next_due_ms) = select_due(&mls, now);
            for ml in &mls {
                if ml.shared.roll_due_ms.load(Ordering::Acquire) <= now {
                    // A full queue means a busy actor: asked again at the next walk.
                    let _ = ml.commands.try_send(Box::new(Command::RollIfAged));
                }
                if ml.shared.offload_check.swap(false, Ordering::AcqRel) {
                    ml.offload_due();
                }
            }
            drop(mls);
            futures::stream::iter(due)
                .for_each_concurrent(TRIMS_CONCURRENT_MAX, |ml| async move {
                    if ml.shared.status() != Status::Open {
                        return;
                    }
                    if let Err(e) = ml.trim().await {
                        warn!(ml = %ml.shared.name, error = %e, "retention trim failed");
                    }
                    // Starts a background run when the thresholds select ledgers (never waits).
                    ml.offload_due();
                })
                .await;
            timers.next_wake_ms.store(next_due_ms, Ordering::Release);
            let wait_ms = next_due_ms.saturating_sub(clock.now_ms());
            tokio::select! {
                () = clock.sleep(Duration::from_millis(wait_ms)) => {}
                () = timers.wake.notified() => {}
            }
        }
    }
    .instrument(info_span!("ml_retention"));
    tokio::spawn(fut);
}

/// The managed ledgers due for a check at `now` (their next check moved one interval on), and
/// when the task should look again.
fn select_due(mls: &[Arc<ManagedLedger>], now: u64) -> (Vec<Arc<ManagedLedger>>, u64) {
    let mut due = Vec::new();
    let mut next_ms = now + WAKE_INTERVAL_MS_IDLE;
    let mut floor_ms = WAKE_INTERVAL_MS_MIN;
    for ml in mls {
        let interval = ml.shared.config.retention_check_interval_ms.max(10);
        floor_ms = floor_ms.min(interval);
        let roll_at = ml.shared.roll_due_ms.load(Ordering::Acquire);
        if roll_at > now {
            next_ms = next_ms.min(roll_at);
        }
        let at = ml.next_trim_ms.load(Ordering::Acquire);
        if at <= now {
            ml.next_trim_ms.store(now + interval, Ordering::Release);
            due.push(Arc::clone(ml));
            next_ms = next_ms.min(now + interval);
        } else {
            next_ms = next_ms.min(at);
        }
    }
    (due, next_ms.max(now + floor_ms))
}
