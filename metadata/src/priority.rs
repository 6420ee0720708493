//! Urgent metadata requests: those that decide who owns what (a bundle's lease, the mark that
//! sends a handover's clients on). A broker taking over a bundle opens every topic of it at
//! the same time, hundreds of requests queued for the store's batches; a lease request queued
//! behind them all would hold up the very clients those topics are opened for. A future run
//! under [`urgent`] has its requests put at the head of the queue by a store that batches
//! (the etcd store); others ignore it. Tasks the future spawns do not inherit it (see
//! [`spawn_inheriting`]).

use std::future::Future;

tokio::task_local! {
    static URGENT: ();
}

/// Runs `f` with its metadata requests ahead of ordinary ones.
pub async fn urgent<F: Future>(f: F) -> F::Output {
    URGENT.scope((), f).await
}

/// Whether the current task runs under [`urgent`].
pub fn is_urgent() -> bool {
    URGENT.try_with(|()| ()).is_ok()
}

/// Spawns `f`, urgent if the current task is: a task serving requests on behalf of its
/// spawner (a shared id allocation) keeps the spawner's priority.
pub fn spawn_inheriting<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if is_urgent() {
        tokio::spawn(urgent(f))
    } else {
        tokio::spawn(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urgency_holds_inside_the_scope_and_in_tasks_spawned_from_it() {
        assert!(!is_urgent());
        urgent(async {
            assert!(is_urgent());
            assert!(spawn_inheriting(async { is_urgent() }).await.unwrap());
            assert!(!tokio::spawn(async { is_urgent() }).await.unwrap());
        })
        .await;
        assert!(!is_urgent());
        assert!(!spawn_inheriting(async { is_urgent() }).await.unwrap());
    }
}
