//! [`BrokerSession`]: the broker's metadata session, renewed when it is lost.
//!
//! Bundle leases and the broker's registration are ephemeral keys of one session. The session
//! ends when the broker cannot reach the metadata store for longer than its ttl (a network
//! partition, a long pause of the process): every lease is lost then and the broker closes
//! those bundles' topics (see [`crate::ownership`]). Without a new session it could never own
//! anything again and would answer ServiceNotReady forever; so a keeper task opens a new
//! session as soon as the old one is lost (retrying with backoff while the store is
//! unreachable) and announces it, so the registration is written again. Leases are then
//! taken again on demand, by lookups, each fencing the previous owner as usual.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use magnetar_metadata::{MetadataError, MetadataStore, Session};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Bounds of the wait between attempts to open a new session.
const RENEW_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RENEW_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The broker's current metadata session. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct BrokerSession {
    current: Mutex<Session>,
    /// Generation of the current session: 0 for the first, +1 per renewal.
    renewed: watch::Sender<u64>,
    stop: CancellationToken,
}

impl BrokerSession {
    /// Opens the first session and starts the keeper that renews it.
    pub async fn start(
        store: Arc<dyn MetadataStore>,
        ttl: Duration,
    ) -> Result<Arc<BrokerSession>, MetadataError> {
        let first = store.create_session(ttl).await?;
        let (renewed, _) = watch::channel(0);
        let this = Arc::new(BrokerSession {
            current: Mutex::new(first),
            renewed,
            stop: CancellationToken::new(),
        });
        tokio::spawn(keep(Arc::downgrade(&this), store, ttl, this.stop.clone()));
        Ok(this)
    }

    /// The live session (or, for a moment after a loss, the lost one: writes under it fail
    /// and callers retry).
    pub fn current(&self) -> Session {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes each time a new session replaces a lost one.
    pub fn renewals(&self) -> watch::Receiver<u64> {
        self.renewed.subscribe()
    }

    /// Stops renewing and closes the session (its ephemeral keys go at once).
    pub async fn close(&self) -> Result<(), MetadataError> {
        self.stop.cancel();
        self.current().close().await
    }
}

async fn keep(
    this: std::sync::Weak<BrokerSession>,
    store: Arc<dyn MetadataStore>,
    ttl: Duration,
    stop: CancellationToken,
) {
    loop {
        let Some(lost) = this.upgrade().map(|s| s.current().lost_token()) else {
            return;
        };
        tokio::select! {
            _ = lost.cancelled() => {}
            _ = stop.cancelled() => return,
        }
        warn!("metadata session lost: bundle leases are gone; opening a new session");
        let mut backoff = RENEW_BACKOFF_MIN;
        let session = loop {
            match store.create_session(ttl).await {
                Ok(s) => break s,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "cannot open a new metadata session");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(RENEW_BACKOFF_MAX);
                }
            }
        };
        let Some(me) = this.upgrade() else {
            let _ = session.close().await;
            return;
        };
        if stop.is_cancelled() {
            let _ = session.close().await;
            return;
        }
        *me.current.lock().unwrap_or_else(|p| p.into_inner()) = session;
        me.renewed.send_modify(|g| *g += 1);
        info!(
            generation = *me.renewed.borrow(),
            "metadata session renewed"
        );
    }
}

#[cfg(test)]
mod tests {
    use magnetar_metadata::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn a_lost_session_is_replaced_and_announced() {
        let mem = MemoryStore::new();
        let store: Arc<dyn MetadataStore> = Arc::new(mem.clone());
        let session = BrokerSession::start(store, Duration::from_secs(5))
            .await
            .unwrap();
        let first = session.current();
        let mut renewals = session.renewals();
        mem.expire_session(first.id());
        tokio::time::timeout(Duration::from_secs(5), renewals.changed())
            .await
            .expect("a renewal is announced")
            .unwrap();
        let second = session.current();
        assert_ne!(first.id(), second.id());
        assert!(first.is_lost() && !second.is_lost());
        session.close().await.unwrap();
        assert!(second.is_lost(), "close ends the current session");
    }
}
