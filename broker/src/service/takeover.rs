//! Lookups of a bundle whose owner died. After kill -9 the owner's lease lives on until its
//! metadata session expires; a lookup answered with the dead owner sends the client into its
//! reconnect backoff, which keeps growing while the lease lives (Pulsar's clients: 100 ms,
//! doubling), so clients resumed seconds after the lease was gone (24 s with a 10 s ttl).
//! Instead, a lookup whose answer would be an owner that refuses connections waits — one wait
//! per bundle, however many lookups — until the lease changes hands, then takes the bundle or
//! names the new owner: the client's one lookup returns as soon as there is someone to serve.
//!
//! Nothing is taken early: the lease still decides who owns the bundle (an owner that is only
//! cut off from this broker is waited for, never displaced); the wait is bounded by the
//! session ttl and a margin, after which the owner is named as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use magnetar_metadata::LeaseRecord;
use magnetar_metadata::clock::Clock;

use super::BrokerService;
use crate::cluster::bundle::Bundle;
use crate::cluster::ownership::{OwnershipCache, bundle_key};

/// How long a probe of the owner's service port may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the one waiter per bundle reads the lease.
pub(super) const LEASE_POLL: Duration = Duration::from_millis(100);
/// Waited beyond the session ttl before naming the owner anyway.
const WAIT_MARGIN: Duration = Duration::from_secs(2);

/// An owner that accepted a probe is not probed again for this long.
const ALIVE_FOR: Duration = Duration::from_secs(1);
/// Owners remembered as alive, at most (the cluster's brokers; the oldest is forgotten).
const ALIVE_OWNERS_MAX: usize = 1024;

/// One wait per bundle, shared by every lookup of it; owners that answered a probe lately.
#[derive(Default)]
pub(super) struct LeaseWaits {
    waits: Mutex<HashMap<Bundle, Shared<BoxFuture<'static, ()>>>>,
    alive_at_ms: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for LeaseWaits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseWaits").finish_non_exhaustive()
    }
}

/// The longest a lookup waits out a dead owner.
pub(super) fn wait_max_ms(ownership: &OwnershipCache) -> u64 {
    u64::try_from((ownership.session_ttl() + WAIT_MARGIN).as_millis()).unwrap_or(u64::MAX)
}

/// True when nothing accepts connections at `owner` (`pulsar://host:port`) within
/// [`PROBE_TIMEOUT`]: a broker that died. A live one, however loaded, accepts.
async fn probe_refused(owner: &str, clock: &dyn Clock) -> bool {
    let address = owner.split_once("://").map_or(owner, |(_, a)| a).to_owned();
    let connect = tokio::net::TcpStream::connect(address);
    tokio::select! {
        r = connect => r.is_err(),
        () = clock.sleep(PROBE_TIMEOUT) => true,
    }
}

impl BrokerService {
    /// Whether `owner` refuses connections; an owner that accepted one within [`ALIVE_FOR`]
    /// is not probed again (lookups redirected to live brokers cost no probe each).
    pub(super) async fn owner_refuses_connections(&self, owner: &str) -> bool {
        let now = self.config.clock.now_ms();
        let alive_for_ms = ALIVE_FOR.as_millis() as u64;
        {
            let alive = self
                .lease_waits
                .alive_at_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if alive
                .get(owner)
                .is_some_and(|at| now.saturating_sub(*at) < alive_for_ms)
            {
                return false;
            }
        }
        let refused = probe_refused(owner, &*self.config.clock).await;
        let mut alive = self
            .lease_waits
            .alive_at_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if refused {
            alive.remove(owner);
        } else {
            if alive.len() >= ALIVE_OWNERS_MAX
                && let Some(oldest) = alive
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(o, _)| o.clone())
            {
                alive.remove(&oldest);
            }
            alive.insert(owner.to_owned(), now);
        }
        refused
    }

    /// Returns once the lease of `bundle` no longer holds `seen` (gone, or another holder), or
    /// at `deadline_ms`.
    pub(super) async fn wait_for_lease_change(
        &self,
        bundle: &Bundle,
        seen: LeaseRecord,
        deadline_ms: u64,
    ) {
        let wait = {
            let mut waits = self
                .lease_waits
                .waits
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            waits
                .entry(bundle.clone())
                .or_insert_with(|| {
                    let store = Arc::clone(&self.store);
                    let clock = Arc::clone(&self.config.clock);
                    let key = bundle_key(bundle);
                    tracing::info!(%bundle, owner = %seen.owner,
                        "the bundle's owner refuses connections: lookups wait for its lease");
                    async move {
                        while clock.now_ms() < deadline_ms {
                            match store.get(&key).await {
                                Ok(None) => return, // gone
                                Ok(Some(v)) => {
                                    match serde_json::from_slice::<LeaseRecord>(&v.value) {
                                        Ok(h) if h != seen => return, // changed hands
                                        // The same holder, or unreadable: keep waiting.
                                        _ => {}
                                    }
                                }
                                Err(_) => {} // store unreachable: keep waiting
                            }
                            clock.sleep(LEASE_POLL).await;
                        }
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        wait.await;
        self.lease_waits
            .waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(bundle);
    }
}
