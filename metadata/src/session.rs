//! Sessions: a lease with a ttl, kept alive in the background by its backend, owning the ephemeral
//! keys written under it. When the session ends — closed, dropped, or its keep-alive failing for
//! longer than the ttl — those keys vanish and [`Session::lost`] fires. A holder that used the
//! session to own something must stop acting as owner when `lost` fires: the store may already
//! have handed the key to someone else.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{Result, SessionId};

/// What a backend does to end a session.
#[async_trait]
pub trait SessionBackend: Send + Sync + fmt::Debug + 'static {
    /// Ends the session now and deletes its ephemeral keys; returns once the store has done so.
    async fn close(&self) -> Result<()>;
    /// Ends the session without waiting (the last handle was dropped). Must not block.
    fn release(&self);
}

/// A live session. Cheap to clone; the session ends when the last clone is dropped or
/// [`Session::close`] is called.
#[derive(Clone, Debug)]
pub struct Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: SessionId,
    ttl: Duration,
    lost: CancellationToken,
    backend: Box<dyn SessionBackend>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.lost.is_cancelled() {
            self.lost.cancel();
            self.backend.release();
        }
    }
}

impl Session {
    /// Built by backends. `lost` must be cancelled by the backend when the session expires.
    pub fn new(
        id: SessionId,
        ttl: Duration,
        lost: CancellationToken,
        backend: Box<dyn SessionBackend>,
    ) -> Self {
        Session {
            inner: Arc::new(Inner {
                id,
                ttl,
                lost,
                backend,
            }),
        }
    }

    pub fn id(&self) -> SessionId {
        self.inner.id
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Completes when the session has ended for any reason.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.inner.lost.cancelled()
    }

    /// A token cancelled when the session ends, for holders that outlive a borrow of `self`.
    pub fn lost_token(&self) -> CancellationToken {
        self.inner.lost.clone()
    }

    pub fn is_lost(&self) -> bool {
        self.inner.lost.is_cancelled()
    }

    /// Ends the session and waits until its ephemeral keys are gone.
    pub async fn close(&self) -> Result<()> {
        let was_lost = self.inner.lost.is_cancelled();
        self.inner.lost.cancel();
        if was_lost {
            return Ok(());
        }
        self.inner.backend.close().await
    }
}
