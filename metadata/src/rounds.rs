//! Callers served in rounds by one task: the shared mechanism of [`crate::IdAllocator`] (one
//! compare-and-set hands ids to every caller waiting) and [`crate::CoalescingStore`] (one read
//! answers every caller waiting for a key).
//!
//! A caller joins the next round, never one already started: whatever the round's request
//! returns was asked for after the caller arrived. The first caller to find no task serving
//! starts one; the task serves round after round until a round finds nobody, and stops under
//! the same lock the callers join under, so no caller is ever left without a server.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

/// What a round answers a caller: `None` when the round's request failed (errors are not
/// `Clone`: the caller then asks alone and gets its own).
pub(crate) type Answer<T> = Option<T>;

#[derive(Debug)]
pub(crate) struct Rounds<T> {
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    waiting: Vec<oneshot::Sender<Answer<T>>>,
    serving: bool,
}

impl<T> Default for Rounds<T> {
    fn default() -> Self {
        Rounds {
            state: Mutex::new(State {
                waiting: Vec::new(),
                serving: false,
            }),
        }
    }
}

impl<T> Rounds<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a caller for the next round: its answer, and whether the caller must start the
    /// serving task (none runs). `None` when `waiters_max` callers wait already: go alone.
    pub fn join(&self, waiters_max: usize) -> Option<(oneshot::Receiver<Answer<T>>, bool)> {
        let mut st = self.state();
        if st.waiting.len() >= waiters_max {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        st.waiting.push(tx);
        let start = !std::mem::replace(&mut st.serving, true);
        Some((rx, start))
    }

    /// The callers of the next round (at most `max`). Empty: nobody waits, and the serving
    /// task must end — it is marked stopped here, so the next caller starts another.
    pub fn next_round(&self, max: usize) -> Vec<oneshot::Sender<Answer<T>>> {
        let mut st = self.state();
        if st.waiting.is_empty() {
            st.serving = false;
            return Vec::new();
        }
        let n = st.waiting.len().min(max);
        st.waiting.drain(..n).collect()
    }

    /// Nobody waits and no task serves.
    pub fn is_idle(&self) -> bool {
        let st = self.state();
        st.waiting.is_empty() && !st.serving
    }

    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.state().waiting.len()
    }
}
