//! The Pulsar protocol listener: accepts TCP connections on the broker port (TCP_NODELAY) and
//! serves each in its own task ([`crate::protocol::connection`]) until the broker shuts down, at most
//! `max_connections` at once (one more is closed as soon as it is accepted).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::protocol::connection;
use crate::service::BrokerService;

/// Accepts connections on `listener` until [`BrokerService::shutdown`] is called. A failed
/// accept (e.g. out of file descriptors) is logged and retried after a short pause.
pub async fn serve(listener: TcpListener, service: Arc<BrokerService>) {
    let stop = service.shutdown_token().clone();
    let connections = Arc::new(Semaphore::new(
        service.config().limits.max_connections.max(1),
    ));
    // Refusals so far (logged at powers of two, so a flood does not flood the log).
    let mut refused: u64 = 0;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, url = %service.config().service_url, "broker listening");
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    // As Pulsar at brokerMaxConnections: closed at once.
                    refused += 1;
                    if refused.is_power_of_two() {
                        warn!(%peer, refused, max = service.config().limits.max_connections,
                            "connection limit reached: connection closed");
                    }
                    drop(stream);
                    continue;
                };
                if let Err(e) = stream.set_nodelay(true) {
                    warn!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                let conn_service = Arc::clone(&service);
                service.spawn(async move {
                    connection::serve(stream, peer, conn_service).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                service
                    .config()
                    .clock
                    .sleep(std::time::Duration::from_millis(100))
                    .await;
            }
        }
    }
    info!("broker listener stopped");
}
