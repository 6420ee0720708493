//! The leader among brokers: whoever holds the ephemeral `/loadbalance/leader` key (Pulsar's
//! `/loadbalance/leader`), holding its [`BrokerRecord`]. The cluster-wide jobs (assignment,
//! splitting, shedding) run on the leader; when it dies its key ends with its session and
//! another broker's campaign takes it within one session ttl.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use magnetar_metadata::clock::SharedClock;
use magnetar_metadata::{Expected, MetadataError, MetadataStore, PutOutcome};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::registry::BrokerRecord;
use super::session::BrokerSession;

pub const LEADER_KEY: &str = "/loadbalance/leader";

/// How often a broker that is not the leader tries again.
const CAMPAIGN_RETRY: Duration = Duration::from_secs(1);

/// This broker's view of the election.
#[derive(Debug, Default)]
pub struct Leadership {
    leader: AtomicBool,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }
}

/// The current leader, if any.
pub async fn leader(store: &Arc<dyn MetadataStore>) -> Result<Option<BrokerRecord>, MetadataError> {
    let Some(v) = store.get(LEADER_KEY).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&v.value)
        .map(Some)
        .map_err(|e| MetadataError::Corrupt {
            key: LEADER_KEY.to_owned(),
            reason: e.to_string(),
        })
}

/// Campaigns for leadership under `session` (its current session, renewed after a loss) until
/// `stop` fires.
pub fn campaign(
    store: Arc<dyn MetadataStore>,
    session: Arc<BrokerSession>,
    record: BrokerRecord,
    clock: SharedClock,
    stop: CancellationToken,
) -> Arc<Leadership> {
    let leadership = Arc::new(Leadership::default());
    let state = Arc::clone(&leadership);
    tokio::spawn(async move {
        let value = match serde_json::to_vec(&record) {
            Ok(v) => Bytes::from(v),
            Err(_) => return,
        };
        loop {
            let current = session.current();
            let won = store
                .put_ephemeral(LEADER_KEY, value.clone(), Expected::Absent, &current)
                .await;
            if let Ok(PutOutcome::Written(_)) = won {
                state.leader.store(true, Ordering::Release);
                info!(broker = %record.pulsar_service_url, "this broker is the leader");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = current.lost() => {}
                }
                state.leader.store(false, Ordering::Release);
                info!(broker = %record.pulsar_service_url, "leadership ended");
                if stop.is_cancelled() {
                    // Hand over at once rather than at the session's expiry.
                    let _ = store.delete(LEADER_KEY, Expected::Any).await;
                    return;
                }
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = clock.sleep(CAMPAIGN_RETRY) => {}
            }
        }
    });
    leadership
}
