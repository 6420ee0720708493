//! Ownership leases: one holder at a time for a key (a namespace bundle, a bookie's registration),
//! each tenure with a fresh epoch number greater than every earlier one.
//!
//! The lease key is ephemeral, tied to the holder's session, so it vanishes if the holder dies.
//! The epoch lets others fence a stale holder: anything it wrote carries an older epoch. The
//! holder must stop acting as owner as soon as [`OwnershipLease::lost`] fires — when its session
//! ends, or the key is deleted or overwritten by anyone else.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFuture};
use tracing::{info, warn};

use crate::record::{decode, encode};
use crate::{
    DeleteOutcome, EventKind, Expected, IdAllocator, MetadataStore, PutOutcome, Result, Session,
    Version,
};

/// Epoch counters live apart from the lease keys so listing the leases shows only holders.
const EPOCH_PREFIX: &str = "/_epochs";

/// What a lease key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it, e.g. a broker's advertised address.
    pub owner: String,
    pub epoch: u64,
}

#[derive(Debug)]
pub struct OwnershipLease {
    store: Arc<dyn MetadataStore>,
    key: String,
    record: LeaseRecord,
    version: Version,
    lost: CancellationToken,
    _stop_watching: DropGuard,
}

/// The result of trying to take a lease.
#[derive(Debug)]
pub enum Acquired {
    Held(OwnershipLease),
    /// Someone else holds it (`None` if it vanished while we looked; try again).
    Busy(Option<LeaseRecord>),
}

impl OwnershipLease {
    /// Takes the lease at `key` for `owner` under `session` if nobody holds it.
    pub async fn acquire(
        store: Arc<dyn MetadataStore>,
        key: &str,
        owner: &str,
        session: &Session,
    ) -> Result<Acquired> {
        crate::validate_key(key)?;
        let epochs = IdAllocator::new(Arc::clone(&store), format!("{EPOCH_PREFIX}{key}"));
        // The holder is read while the next epoch is drawn: a free lease (what a caller that
        // found no owner expects) costs one round less; a busy one skips an epoch, which
        // epochs may.
        let (current, epoch) = futures::join!(store.get(key), epochs.next());
        if let Some(current) = current? {
            return Ok(Acquired::Busy(Some(decode(key, &current.value)?)));
        }
        let record = LeaseRecord {
            owner: owner.to_owned(),
            epoch: epoch?,
        };
        let version = match store
            .put_ephemeral(key, encode(key, &record)?, Expected::Absent, session)
            .await?
        {
            PutOutcome::Written(v) => v,
            PutOutcome::Conflict { .. } => {
                let holder = match store.get(key).await? {
                    Some(v) => Some(decode(key, &v.value)?),
                    None => None,
                };
                return Ok(Acquired::Busy(holder));
            }
        };
        info!(key, owner, epoch = record.epoch, "lease acquired");
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let mut watch = store.watch(key, version).await?;
        let (key_owned, lost_tx, stop_rx, session_lost) = (
            key.to_owned(),
            lost.clone(),
            stop.clone(),
            session.lost_token(),
        );
        tokio::spawn(async move {
            let reason = loop {
                tokio::select! {
                    _ = stop_rx.cancelled() => return,
                    _ = session_lost.cancelled() => break "session ended".to_owned(),
                    event = watch.next() => match event {
                        // Watching a key also sees keys it prefixes; only the key itself counts.
                        Some(Ok(e)) if e.key != key_owned => continue,
                        Some(Ok(e)) => break match e.kind {
                            EventKind::Delete => "lease key deleted".to_owned(),
                            EventKind::Put(_) => "lease key overwritten".to_owned(),
                        },
                        Some(Err(e)) => break format!("watch failed: {e}"),
                        None => break "watch ended".to_owned(),
                    },
                }
            };
            warn!(key = %key_owned, %reason, "lease lost");
            lost_tx.cancel();
        });
        Ok(Acquired::Held(OwnershipLease {
            store,
            key: key.to_owned(),
            record,
            version,
            lost,
            _stop_watching: stop.drop_guard(),
        }))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn epoch(&self) -> u64 {
        self.record.epoch
    }

    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Completes when the lease is no longer certainly held.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.lost.cancelled()
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Gives the lease up: deletes the key if it is still ours (by version, so a key someone
    /// else took over in the meantime is left alone).
    pub async fn release(&self) -> Result<()> {
        self.lost.cancel();
        match self
            .store
            .delete(&self.key, Expected::Version(self.version))
            .await?
        {
            DeleteOutcome::Deleted | DeleteOutcome::NotFound | DeleteOutcome::Conflict { .. } => {
                Ok(())
            }
        }
    }
}
