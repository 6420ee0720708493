//! What probes and operators ask of a broker (Pulsar's `/status.html` and
//! `/admin/v2/brokers/health`): whether it serves, and whether a message written through it
//! reads back.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use magnetar_managed_ledger::Position;

use super::BrokerService;

/// How long a health check may take before it reports the broker unhealthy.
const HEALTH_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::error::{BrokerError, BrokerResult};

/// The managed ledger of this broker's health checks: under a tenant no user topic can have
/// (a namespace name starting with `__` is refused by the admin API), one per broker, so no
/// other broker ever opens it.
fn health_ledger_name(service_url: &str) -> String {
    let broker: String = service_url
        .split("://")
        .last()
        .unwrap_or(service_url)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("pulsar/__health/persistent/{broker}")
}

impl BrokerService {
    /// Serving: not draining its bundles away, not shutting down. A readiness probe that
    /// sees false stops sending new clients here.
    pub fn is_serving(&self) -> bool {
        !self.shutdown.is_cancelled() && !self.draining.load(Ordering::Acquire)
    }

    /// Writes a message through this broker's storage path (metadata store, bookies with
    /// the configured quorums) and reads it back. Pulsar's broker health check does the same
    /// through a heartbeat topic.
    pub async fn health_check(&self) -> BrokerResult<()> {
        if !self.is_serving() {
            return Err(BrokerError::NotReady("the broker is shutting down".into()));
        }
        let name = health_ledger_name(&self.config.service_url);
        let check = async {
            let ml = self
                .factory
                .open(&name, self.config.managed_ledger.clone())
                .await?;
            let payload = Bytes::from(format!("health-check {}", self.config.clock.now_ms()));
            let at: Position = ml.append_wait(payload.clone()).await?;
            let read = ml.read_entries(at, 1, u64::MAX).await?;
            BrokerResult::Ok((at, payload, read))
        };
        // Without bookies an append waits for them: the check answers within its limit.
        let (at, payload, read) =
            magnetar_metadata::clock::timeout(&*self.config.clock, HEALTH_CHECK_TIMEOUT, check)
                .await
                .map_err(|_| {
                    BrokerError::NotReady(format!(
                        "health check: no answer within {} s",
                        HEALTH_CHECK_TIMEOUT.as_secs()
                    ))
                })??;
        match read.first() {
            Some((p, bytes)) if *p == at && *bytes == payload => Ok(()),
            other => Err(BrokerError::NotReady(format!(
                "health check: wrote {at} but read back {:?}",
                other.map(|(p, b)| (p, b.len()))
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_ledger_is_named_after_the_broker() {
        assert_eq!(
            health_ledger_name("pulsar://10.0.0.7:6650"),
            "pulsar/__health/persistent/10.0.0.7-6650"
        );
        assert_eq!(
            health_ledger_name("pulsar://[::1]:6650"),
            "pulsar/__health/persistent/---1--6650"
        );
    }
}
