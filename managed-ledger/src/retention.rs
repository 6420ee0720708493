//! The periodic work of every managed ledger open in one factory. One task per factory walks
//! the factory's map of open managed ledgers: it trims those whose
//! `retention_check_interval_ms` has passed, and asks those whose current ledger passed its
//! age limit (`Shared::roll_due_ms`) to roll over — rather than timers per managed ledger, which
//! every idle topic of a broker would pay for in memory (its write actor then parks with no
//! task at all).
//!
//! The task starts with the factory's first open and ends when the factory is dropped. It wakes
//! at the earliest check due, but at most every [`WAKE_INTERVAL_MS_MIN`] (so many topics with
//! staggered due times cost one walk per second, not one wake-up per topic), and at once when a
//! managed ledger is opened (its interval may be shorter than the current wait) or its current
//! ledger takes its first entry (its age limit starts).

use std::sync::atomic::Ordering;
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

/// Starts the retention task of the factory whose open map is `open`.
pub(crate) fn spawn(open: Weak<OpenMap>, clock: SharedClock, wake: Arc<Notify>) {
    let fut = async move {
        loop {
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
                })
                .await;
            let wait_ms = next_due_ms.saturating_sub(clock.now_ms());
            tokio::select! {
                () = clock.sleep(Duration::from_millis(wait_ms)) => {}
                () = wake.notified() => {}
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
