//! Sessions on etcd: a session is a lease. A background task renews it about every ttl/3 over a
//! keep-alive stream, reopening the stream on another member when one fails; when no renewal
//! has succeeded for a whole ttl, or etcd says the lease is gone, the session is lost (its
//! `lost` token fires). Closing revokes the lease, which deletes its keys in one revision.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::Core;
use super::client::Call;
use crate::clock;
use crate::{MetadataError, Result, Session, SessionBackend, SessionId};

/// Renewals are never sent more often than this, whatever the ttl.
const RENEW_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Pause before reopening a keep-alive stream after a failed attempt.
const REOPEN_BACKOFF: Duration = Duration::from_millis(100);

/// Grants a lease of `ttl` (rounded up to whole seconds, at least 1 s; etcd may raise it to its
/// own minimum) and starts keeping it alive.
pub(super) async fn create(core: Arc<Core>, ttl: Duration) -> Result<Session> {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let seconds = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
    let asked_at = core.cluster.clock.now();
    let resp = core
        .cluster
        .run(Call::write("create_session", "lease"), |mut c| async move {
            c.lease.grant(seconds, None).await
        })
        .await?;
    if !resp.error().is_empty() || resp.ttl() <= 0 {
        return Err(MetadataError::Storage(format!(
            "etcd refused a lease of {seconds} s: {:?} (ttl {})",
            resp.error(),
            resp.ttl()
        )));
    }
    let id = resp.id();
    let ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(1));
    let lost = core.cluster.shutdown.child_token();
    let span = tracing::info_span!("etcd_session", lease = format_args!("{id:x}"));
    tokio::spawn(keep_alive(Arc::clone(&core), id, ttl, asked_at, lost.clone()).instrument(span));
    Ok(Session::new(
        SessionId(id),
        ttl,
        lost,
        Box::new(EtcdSession { core, id }),
    ))
}

/// Renews lease `id` until `lost` fires (session closed or dropped, store shut down), or marks
/// it lost. `renewed_at` is when the last successful renewal was *sent*: etcd extended the lease
/// no earlier than that, so it lives at least until `renewed_at + ttl`.
async fn keep_alive(
    core: Arc<Core>,
    id: i64,
    ttl: Duration,
    mut renewed_at: Instant,
    lost: CancellationToken,
) {
    let interval = (ttl / 3).max(RENEW_INTERVAL_MIN);
    let name = format!("lease {id:x}");
    loop {
        // Open a keep-alive stream; its first round trip is a renewal.
        let asked = core.cluster.clock.now();
        let Some(left) = (renewed_at + ttl).checked_duration_since(asked) else {
            return expire(&lost, "no renewal succeeded within the ttl");
        };
        let call = Call::read("keep_alive", &name).with_lease(id);
        let opened = tokio::select! {
            opened = clock::timeout(&*core.cluster.clock, left, core.cluster.run(call, |mut c| async move {
                c.lease.keep_alive(id).await
            })) => opened,
            () = lost.cancelled() => return,
        };
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => {
                renewed_at = asked;
                pair
            }
            Ok(Err(MetadataError::SessionLost(_))) => {
                return expire(&lost, "etcd says the lease is gone");
            }
            Ok(Err(MetadataError::Closed)) => return,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot renew the session; trying again");
                tokio::select! {
                    () = core.cluster.clock.sleep(REOPEN_BACKOFF) => {}
                    () = lost.cancelled() => return,
                }
                continue;
            }
            // The ttl ran out while trying: the top of the loop declares the session lost.
            Err(_) => continue,
        };
        debug!(
            endpoint = core.cluster.current_endpoint(),
            "keep-alive stream open"
        );
        loop {
            tokio::select! {
                () = core.cluster.clock.sleep(interval) => {}
                () = lost.cancelled() => return,
            }
            let asked = core.cluster.clock.now();
            let renewal = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            let reply = tokio::select! {
                reply = clock::timeout(&*core.cluster.clock, interval, renewal) => reply,
                () = lost.cancelled() => return,
            };
            match reply {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => renewed_at = asked,
                Ok(Ok(Some(_))) => return expire(&lost, "etcd says the lease expired"),
                Ok(Ok(None)) => {
                    warn!("keep-alive stream ended; reopening it on another member");
                    break;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "keep-alive stream failed; reopening it on another member");
                    break;
                }
                Err(_) => {
                    warn!(waited = ?interval, "keep-alive reply late; reopening the stream on another member");
                    break;
                }
            }
        }
    }
}

fn expire(lost: &CancellationToken, why: &str) {
    if !lost.is_cancelled() {
        warn!(why, "session lost");
        lost.cancel();
    }
}

/// Revokes lease `id`, deleting its keys. A lease already gone counts as revoked.
async fn revoke(core: &Core, id: i64) -> Result<()> {
    let name = format!("lease {id:x}");
    let call = Call::read("close_session", &name).with_lease(id);
    match core
        .cluster
        .run(call, |mut c| async move { c.lease.revoke(id).await })
        .await
    {
        Ok(_) | Err(MetadataError::SessionLost(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

struct EtcdSession {
    core: Arc<Core>,
    id: i64,
}

impl fmt::Debug for EtcdSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSession")
            .field("lease", &format_args!("{:x}", self.id))
            .finish()
    }
}

#[async_trait]
impl SessionBackend for EtcdSession {
    async fn close(&self) -> Result<()> {
        revoke(&self.core, self.id).await?;
        info!(lease = format_args!("{:x}", self.id), "session closed");
        Ok(())
    }

    fn release(&self) {
        // Without a runtime nothing can be sent; the lease then expires after its ttl.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (core, id) = (Arc::clone(&self.core), self.id);
            runtime.spawn(async move {
                if let Err(e) = revoke(&core, id).await {
                    debug!(lease = format_args!("{id:x}"), error = %e,
                        "revoking a dropped session failed; it expires after its ttl");
                }
            });
        }
    }
}
