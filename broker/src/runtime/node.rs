//! [`BrokerNode`]: a cluster broker — the Pulsar protocol server over a shared metadata store
//! (etcd) and bookies reached through any [`BookieConnector`] (gRPC in a cluster). It owns
//! bundles through [`OwnershipCache`] leases tied to its own metadata session, so several
//! brokers share one cluster: each lookup is answered Connect by the owner and Redirect by the
//! others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use magnetar_bookie::client::{BookieConnector, LedgerClient, LedgerClientOptions};
use magnetar_metadata::MetadataStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cluster::ownership::OwnershipCache;
use crate::cluster::session::BrokerSession;
use crate::runtime::standalone::{StandaloneError, ensure_default_namespace};
use crate::service::{BrokerConfig, BrokerService};
use magnetar_managed_ledger::{ManagedLedgerConfig, ManagedLedgerFactory, MokaEntryCache};

/// What a cluster broker needs.
#[derive(Debug, Clone)]
pub struct BrokerNodeOptions {
    /// Where the Pulsar protocol listens (port 0 picks one).
    pub bind: SocketAddr,
    /// Host clients are told to connect to (default: the bound IP, or 127.0.0.1 when that is
    /// unspecified).
    pub advertised_host: Option<String>,
    /// Ensemble, quorums and rollover of new managed ledgers (namespace policies override the
    /// first three).
    pub managed_ledger: ManagedLedgerConfig,
    pub session_ttl: Duration,
    /// The broker's default schema compatibility strategy (namespace policies override).
    pub schema_compatibility_strategy: crate::schema::CompatibilityStrategy,
    /// Connections, and per connection requests and unanswered SENDs, at most.
    pub limits: crate::service::ConnectionLimits,
}

/// A running cluster broker.
#[derive(Debug)]
pub struct BrokerNode {
    service: Arc<BrokerService>,
    session: Arc<BrokerSession>,
    server: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl BrokerNode {
    /// Starts serving; returns once the listener accepts connections.
    pub async fn start(
        store: Arc<dyn MetadataStore>,
        connector: Arc<dyn BookieConnector>,
        options: BrokerNodeOptions,
    ) -> Result<BrokerNode, StandaloneError> {
        let session = BrokerSession::start(Arc::clone(&store), options.session_ttl).await?;
        let client = LedgerClient::new(
            Arc::clone(&store),
            connector,
            LedgerClientOptions::default(),
        );
        let cache = MokaEntryCache::new(MokaEntryCache::DEFAULT_SIZE_BYTES_MAX);
        let factory = Arc::new(ManagedLedgerFactory::new(Arc::clone(&store), client, cache));
        let listener =
            TcpListener::bind(options.bind)
                .await
                .map_err(|source| StandaloneError::Io {
                    what: format!("cannot listen on {}", options.bind),
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StandaloneError::Io {
                what: "cannot read the listener's address".into(),
                source,
            })?;
        let host = options.advertised_host.clone().unwrap_or_else(|| {
            if local_addr.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                local_addr.ip().to_string()
            }
        });
        let service_url = if host.contains(':') && !host.starts_with('[') {
            format!("pulsar://[{host}]:{}", local_addr.port())
        } else {
            format!("pulsar://{host}:{}", local_addr.port())
        };
        let ownership = OwnershipCache::new(
            Arc::clone(&store),
            Arc::clone(&session),
            service_url.clone(),
        );
        let mut config = BrokerConfig::new(service_url);
        config.managed_ledger = options.managed_ledger;
        config.schema_compatibility_strategy = options.schema_compatibility_strategy;
        config.limits = options.limits;
        let service = BrokerService::new(config, Arc::clone(&store), ownership, factory);
        ensure_default_namespace(&service).await?;
        let server = tokio::spawn(crate::protocol::server::serve(
            listener,
            Arc::clone(&service),
        ));
        info!(url = %service.config().service_url, "broker started");
        Ok(BrokerNode {
            service,
            session,
            server,
            local_addr,
        })
    }

    /// Announces this broker's admin URL (once its admin server listens) so other brokers
    /// answer admin requests for topics it owns with a 307 to it.
    pub async fn register_admin_url(
        &self,
        admin_url: &str,
    ) -> Result<(), crate::error::BrokerError> {
        self.service.register(&self.session, admin_url).await
    }

    pub fn service_url(&self) -> &str {
        &self.service.config().service_url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn service(&self) -> &Arc<BrokerService> {
        &self.service
    }

    /// Disconnects clients, closes topics (cursors flushed, ledgers closed) and ends the
    /// metadata session, which releases the bundle leases for other brokers.
    pub async fn shutdown(self) {
        self.service.shutdown().await;
        if let Err(e) = self.server.await {
            warn!(error = %e, "broker listener task failed");
        }
        if let Err(e) = self.session.close().await {
            warn!(error = %e, "closing the metadata session failed");
        }
        info!("broker stopped");
    }
}
