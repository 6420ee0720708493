//! The one way a broker is assembled: [`Broker::start`] wires store → session → ledger client
//! → entry cache → managed ledgers → ownership → service → listener, for `magnetar broker`,
//! for `magnetar standalone` (over its embedded store and in-process bookie) and for the tests.
//! What differs between them is only what is passed in: the metadata store, how bookies are
//! reached (a [`BookieConnector`]: gRPC or in-process) and [`BrokerOptions`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use magnetar_bookie::client::{BookieConnector, LedgerClient, LedgerClientOptions};
use magnetar_managed_ledger::{ManagedLedgerFactory, MokaEntryCache};
use magnetar_metadata::clock::{self, Random, SharedClock};
use magnetar_metadata::{MetadataError, MetadataStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cluster::ownership::OwnershipCache;
use crate::cluster::session::BrokerSession;
use crate::error::{BrokerError, PolicyError};
use crate::policies::{NamespacePolicies, TenantInfo};
use crate::service::{BrokerConfig, BrokerService};
use crate::topic_name::NamespaceName;

/// Everything a broker is started with, standalone or in a cluster.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Where the Pulsar protocol listens (port 0 picks one).
    pub bind: SocketAddr,
    /// Host clients are told to connect to (Pulsar's `advertisedAddress`; default: the bound
    /// IP, or 127.0.0.1 when that is unspecified).
    pub advertised_host: Option<String>,
    /// TTL of the broker's metadata session, hence of its bundle leases.
    pub session_ttl: Duration,
    /// The ledger client's timeouts and retries.
    pub ledger_client: LedgerClientOptions,
    /// Bytes the entry cache holds at most.
    pub cache_size_bytes_max: u64,
    /// The service's settings (limits, keepalive, managed-ledger defaults, schema strategy…);
    /// its `service_url` is set from the bound address when the broker starts.
    pub service: BrokerConfig,
    /// The one clock of everything this broker times (service, session, managed ledgers,
    /// ledger client); the ones inside `service` and `ledger_client` are replaced by it.
    pub clock: SharedClock,
    /// Randomness of bookie placement (seeded in tests and simulations).
    pub random: Arc<Random>,
    /// Tiered storage; `None`: no offload driver (ledgers stay on the bookies).
    pub offload: Option<OffloadOptions>,
}

/// Where and how closed ledgers are offloaded.
#[derive(Clone, Debug)]
pub struct OffloadOptions {
    pub driver: magnetar_offload::DriverConfig,
    pub upload: magnetar_offload::UploadOptions,
    pub read: magnetar_offload::ReadOptions,
    pub retry: magnetar_offload::RetryPolicy,
    /// Offloads running at once on this broker (Pulsar's `managedLedgerOffloadMaxThreads`).
    pub max_threads: usize,
    /// How often the cleaner looks for objects no record references (0: never).
    pub cleaner_interval: Duration,
    /// … and how old such an object must be before it is deleted.
    pub cleaner_grace: Duration,
}

impl OffloadOptions {
    pub fn new(driver: magnetar_offload::DriverConfig) -> Self {
        OffloadOptions {
            driver,
            upload: magnetar_offload::UploadOptions::default(),
            read: magnetar_offload::ReadOptions::default(),
            retry: magnetar_offload::RetryPolicy::default(),
            max_threads: 2,
            cleaner_interval: Duration::from_secs(3600),
            cleaner_grace: Duration::from_secs(3600),
        }
    }
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 6650)),
            advertised_host: None,
            session_ttl: Duration::from_secs(10),
            ledger_client: LedgerClientOptions::default(),
            cache_size_bytes_max: MokaEntryCache::DEFAULT_SIZE_BYTES_MAX,
            service: BrokerConfig::new(String::new()),
            clock: clock::system(),
            random: clock::entropy(),
            offload: None,
        }
    }
}

/// Why a broker (or standalone) could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Metadata(#[from] MetadataError),
    #[error("bookie: {0}")]
    Bookie(#[from] magnetar_bookie::api::BookieError),
    #[error("policies: {0}")]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Cookie(#[from] magnetar_bookie::cookie::CookieError),
    #[error("{0}")]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Offload(#[from] magnetar_offload::OffloadError),
    #[error("{0}")]
    Other(String),
}

/// Builds the offload store (a configuration it cannot use refuses the start, naming driver
/// and bucket) and checks that it answers: an unreachable store or wrong credentials are
/// logged now, naming the bucket, and the broker serves anyway — offload runs then report the
/// error in their status and retry, while publishing never waits on them.
async fn start_offloader(
    offload: &OffloadOptions,
    clock: SharedClock,
    random: Arc<Random>,
) -> Result<Arc<magnetar_managed_ledger::Offloader>, StartError> {
    let store = magnetar_offload::OffloadStore::build(
        &offload.driver,
        offload.retry.clone(),
        Arc::clone(&clock),
    )?;
    match store.check().await {
        Ok(()) => info!(
            driver = store.driver(),
            bucket = store.bucket(),
            "offload store ready"
        ),
        Err(e) => tracing::error!(
            driver = store.driver(),
            bucket = store.bucket(),
            error = %e,
            "the offload store does not answer: offloads fail until it does"
        ),
    }
    Ok(magnetar_managed_ledger::Offloader::new(
        magnetar_offload::OffloadTargets::new(
            offload.driver.clone(),
            magnetar_offload::OffloadReader::new(store, offload.read),
            offload.retry.clone(),
            clock,
        ),
        offload.upload,
        offload.max_threads,
        random,
    ))
}

/// Runs the offload cleaner every `cleaner_interval` while the offloader lives.
fn spawn_cleaner(
    offloader: std::sync::Weak<magnetar_managed_ledger::Offloader>,
    metadata: Arc<dyn MetadataStore>,
    clock: SharedClock,
    offload: &OffloadOptions,
) {
    if offload.cleaner_interval.is_zero() {
        return;
    }
    let (every, grace_ms) = (
        offload.cleaner_interval,
        u64::try_from(offload.cleaner_grace.as_millis()).unwrap_or(u64::MAX),
    );
    tokio::spawn(async move {
        loop {
            clock.sleep(every).await;
            let Some(o) = offloader.upgrade() else { break };
            match magnetar_managed_ledger::offload::clean_orphans(
                &o,
                &metadata,
                grace_ms,
                clock.now_ms(),
            )
            .await
            {
                Ok(r) => info!(
                    seen = r.objects_seen,
                    deleted = r.objects_deleted,
                    "offload cleaner pass"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "offload cleaner pass failed; retried at the next")
                }
            }
        }
    });
}

/// A running broker: the service and its listener, under one metadata session.
#[derive(Debug)]
pub struct Broker {
    service: Arc<BrokerService>,
    session: Arc<BrokerSession>,
    server: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl Broker {
    /// Starts a broker over `store`, reaching bookies through `connector`, under `session`
    /// (a new one when `None`). Returns once the listener accepts connections.
    pub async fn start(
        store: Arc<dyn MetadataStore>,
        connector: Arc<dyn BookieConnector>,
        session: Option<Arc<BrokerSession>>,
        options: BrokerOptions,
    ) -> Result<Broker, StartError> {
        let session = match session {
            Some(s) => s,
            None => {
                BrokerSession::start(
                    Arc::clone(&store),
                    options.session_ttl,
                    Arc::clone(&options.clock),
                )
                .await?
            }
        };
        let mut ledger_client = options.ledger_client;
        ledger_client.clock = Arc::clone(&options.clock);
        ledger_client.random = Arc::clone(&options.random);
        let client = LedgerClient::new(Arc::clone(&store), connector, ledger_client);
        let cache = MokaEntryCache::new(options.cache_size_bytes_max);
        let mut factory = ManagedLedgerFactory::new(Arc::clone(&store), client, cache)
            .with_clock(Arc::clone(&options.clock));
        if let Some(offload) = &options.offload {
            let offloader = start_offloader(
                offload,
                Arc::clone(&options.clock),
                Arc::clone(&options.random),
            )
            .await?;
            spawn_cleaner(
                Arc::downgrade(&offloader),
                Arc::clone(&store),
                Arc::clone(&options.clock),
                offload,
            );
            factory = factory.with_offloader(offloader);
        }
        let factory = Arc::new(factory);
        let listener = TcpListener::bind(options.bind)
            .await
            .map_err(|source| StartError::Io {
                what: format!("cannot listen on {}", options.bind),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Io {
            what: "cannot read the listener's address".into(),
            source,
        })?;
        let service_url = service_url(options.advertised_host.as_deref(), local_addr);
        let ownership = OwnershipCache::new(
            Arc::clone(&store),
            Arc::clone(&session),
            service_url.clone(),
        );
        let mut config = options.service;
        config.service_url = service_url;
        config.clock = options.clock;
        let service = BrokerService::new(config, Arc::clone(&store), ownership, factory);
        ensure_default_namespace(&service).await?;
        let server = tokio::spawn(crate::protocol::server::serve(
            listener,
            Arc::clone(&service),
        ));
        info!(url = %service.config().service_url, "broker started");
        Ok(Broker {
            service,
            session,
            server,
            local_addr,
        })
    }

    /// Announces this broker's admin URL (once its admin server listens) so other brokers
    /// answer admin requests for topics it owns with a 307 to it.
    pub async fn register_admin_url(&self, admin_url: &str) -> Result<(), BrokerError> {
        self.service.register(&self.session, admin_url).await
    }

    /// `pulsar://host:port` clients are told to connect to.
    pub fn service_url(&self) -> &str {
        &self.service.config().service_url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn service(&self) -> &Arc<BrokerService> {
        &self.service
    }

    pub fn session(&self) -> &Arc<BrokerSession> {
        &self.session
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

/// `pulsar://host:port` for the advertised host (else the bound IP; 127.0.0.1 for an
/// unspecified one), IPv6 hosts bracketed.
fn service_url(advertised_host: Option<&str>, local_addr: SocketAddr) -> String {
    let host = advertised_host.map_or_else(
        || {
            if local_addr.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                local_addr.ip().to_string()
            }
        },
        str::to_owned,
    );
    if host.contains(':') && !host.starts_with('[') {
        format!("pulsar://[{host}]:{}", local_addr.port())
    } else {
        format!("pulsar://{host}:{}", local_addr.port())
    }
}

/// Creates tenant `public` and namespace `public/default` unless they exist.
pub async fn ensure_default_namespace(service: &BrokerService) -> Result<(), StartError> {
    let policies = service.policies();
    match policies
        .create_tenant("public", &TenantInfo::default())
        .await
    {
        Ok(()) | Err(PolicyError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let ns =
        NamespaceName::new("public", "default").map_err(|e| StartError::Other(e.to_string()))?;
    match policies
        .create_namespace(&ns, &NamespacePolicies::default())
        .await
    {
        Ok(()) | Err(PolicyError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::service_url;

    #[test]
    fn service_url_brackets_ipv6_and_replaces_an_unspecified_ip() {
        let v4 = "0.0.0.0:6650".parse().unwrap();
        assert_eq!(service_url(None, v4), "pulsar://127.0.0.1:6650");
        assert_eq!(service_url(Some("broker-0"), v4), "pulsar://broker-0:6650");
        let v6 = "[::1]:7000".parse().unwrap();
        assert_eq!(service_url(None, v6), "pulsar://[::1]:7000");
        assert_eq!(service_url(Some("fd00::2"), v6), "pulsar://[fd00::2]:7000");
    }
}
