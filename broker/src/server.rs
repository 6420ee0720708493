//! The Pulsar protocol listener: accepts TCP connections on the broker port (TCP_NODELAY) and
//! serves each in its own task ([`crate::connection`]) until the broker shuts down.

use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::connection;
use crate::service::BrokerService;

/// Accepts connections on `listener` until [`BrokerService::shutdown`] is called. A failed
/// accept (e.g. out of file descriptors) is logged and retried after a short pause.
pub async fn serve(listener: TcpListener, service: Arc<BrokerService>) {
    let stop = service.shutdown_token().clone();
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
                if let Err(e) = stream.set_nodelay(true) {
                    warn!(%peer, error = %e, "cannot set TCP_NODELAY");
                }
                tokio::spawn(connection::serve(stream, peer, Arc::clone(&service)));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    info!("broker listener stopped");
}
