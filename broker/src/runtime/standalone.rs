//! [`Standalone`]: the whole of Magnetar in one process (DESIGN decision 9) — the embedded
//! metadata store, one in-process bookie (journal fsync on) reached through the
//! [`LocalConnector`] (no socket, no protobuf on the write path), and the broker, which owns its
//! bundles through [`OwnershipCache`] leases exactly as it would in a cluster.
//!
//! Layout of the data directory: `metadata.redb` (unless configured elsewhere) and `bookie/`.
//! The first start creates tenant `public` and namespace `public/default`.
//!
//! Safety after `kill -9`: the embedded store drops the dead incarnation's ephemeral keys
//! (bundle leases, bookie registration) when it is opened again; the bookie replays its journal;
//! managed ledgers recover (fence and close) their last ledger on load; cursors resume from their
//! last persisted state, so acknowledged messages may at worst be redelivered within the cursor
//! flush interval, and no unacknowledged one is lost.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnetar_bookie::api::{
    BookieClient, BookieId, BookieRegistration, BookieState, registration_key,
};
use magnetar_bookie::client::{LedgerClient, LedgerClientOptions};
use magnetar_bookie::local::LocalConnector;
use magnetar_bookie::server::{Bookie, BookieOptions};
use magnetar_metadata::{EmbeddedOptions, EmbeddedStore, Expected, MetadataError, MetadataStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cluster::ownership::OwnershipCache;
use crate::cluster::session::BrokerSession;
use crate::policies::{NamespacePolicies, PolicyError, TenantInfo};
use crate::service::{BrokerConfig, BrokerService};
use crate::topic_name::NamespaceName;
use magnetar_managed_ledger::{ManagedLedgerFactory, MokaEntryCache};

/// Id of the in-process bookie: stable across restarts, since ledger metadata names it.
pub const STANDALONE_BOOKIE_ID: &str = "standalone-bookie:0";

/// What `magnetar standalone` needs to start.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    pub data_dir: PathBuf,
    /// The embedded metadata file (default `<data_dir>/metadata.redb`).
    pub metadata_path: PathBuf,
    pub bind_address: IpAddr,
    /// 0 picks a free port.
    pub broker_port: u16,
    pub session_ttl: Duration,
    /// The broker's default schema compatibility strategy (namespace policies override).
    pub schema_compatibility_strategy: crate::schema::CompatibilityStrategy,
    /// Idle time after which a connection is pinged (and, silent for as long again, closed).
    pub keepalive_interval: Duration,
    /// Connections, and per connection requests and unanswered SENDs, at most.
    pub limits: crate::service::ConnectionLimits,
}

impl StandaloneOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        StandaloneOptions {
            metadata_path: data_dir.join("metadata.redb"),
            data_dir,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            broker_port: 6650,
            session_ttl: Duration::from_secs(10),
            schema_compatibility_strategy: crate::schema::CompatibilityStrategy::default(),
            keepalive_interval: BrokerConfig::new(String::new()).keepalive_interval,
            limits: crate::service::ConnectionLimits::default(),
        }
    }
}

/// Why standalone could not start.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
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
    Other(String),
}

/// A running standalone.
#[derive(Debug)]
pub struct Standalone {
    service: Arc<BrokerService>,
    bookie: Arc<Bookie>,
    session: Arc<BrokerSession>,
    server: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl Standalone {
    /// Opens the stores, starts the bookie and the broker, and returns once the broker accepts
    /// connections.
    pub async fn start(options: StandaloneOptions) -> Result<Standalone, StandaloneError> {
        let io = |what: String| move |source| StandaloneError::Io { what, source };
        std::fs::create_dir_all(&options.data_dir)
            .map_err(io(format!("cannot create {}", options.data_dir.display())))?;
        if let Some(parent) = options.metadata_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        let store: Arc<dyn MetadataStore> =
            Arc::new(EmbeddedStore::open(EmbeddedOptions::new(&options.metadata_path)).await?);
        // The embedded store's sessions end only when closed, so this one is never renewed
        // and the bookie registration below lives as long as the process.
        let session = BrokerSession::start(Arc::clone(&store), options.session_ttl).await?;

        let bookie_id: BookieId = STANDALONE_BOOKIE_ID
            .parse()
            .map_err(StandaloneError::Other)?;
        let bookie_dir = options.data_dir.join("bookie");
        // The bookie's data must belong to this metadata file (a mistyped path opens a new,
        // empty one, whose ledger ids would alias the old data's).
        magnetar_bookie::cookie::verify(&*store, &bookie_dir, &bookie_id).await?;
        let bookie = Bookie::open(BookieOptions::new(bookie_id, bookie_dir)).await?;
        let local = LocalConnector::new();
        local.insert(Arc::clone(&bookie) as Arc<dyn BookieClient>);
        let registration = BookieRegistration {
            id: bookie.id().clone(),
            state: BookieState::ReadWrite,
            free_bytes: u64::MAX / 2,
            used_bytes: 0,
            zone: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let value = serde_json::to_vec(&registration)
            .map_err(|e| StandaloneError::Other(format!("bookie registration: {e}")))?;
        let _written = store
            .put_ephemeral(
                &registration_key(bookie.id()),
                Bytes::from(value),
                Expected::Any,
                &session.current(),
            )
            .await?;
        let client = LedgerClient::new(
            Arc::clone(&store),
            Arc::new(local),
            LedgerClientOptions::default(),
        );
        let cache = MokaEntryCache::new(MokaEntryCache::DEFAULT_SIZE_BYTES_MAX);
        let factory = Arc::new(ManagedLedgerFactory::new(Arc::clone(&store), client, cache));

        let listener = TcpListener::bind((options.bind_address, options.broker_port))
            .await
            .map_err(io(format!(
                "cannot listen on {}:{}",
                options.bind_address, options.broker_port
            )))?;
        let local_addr = listener
            .local_addr()
            .map_err(io("cannot read the listener's address".into()))?;
        let host = if local_addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local_addr.ip()
        };
        let service_url = format!("pulsar://{}", SocketAddr::new(host, local_addr.port()));
        let ownership = OwnershipCache::new(
            Arc::clone(&store),
            Arc::clone(&session),
            service_url.clone(),
        );
        let mut config = BrokerConfig::new(service_url);
        config.schema_compatibility_strategy = options.schema_compatibility_strategy;
        config.keepalive_interval = options.keepalive_interval;
        config.limits = options.limits;
        let service = BrokerService::new(config, Arc::clone(&store), ownership, factory);
        ensure_default_namespace(&service).await?;
        let server = tokio::spawn(crate::protocol::server::serve(
            listener,
            Arc::clone(&service),
        ));
        Ok(Standalone {
            service,
            bookie,
            session,
            server,
            local_addr,
        })
    }

    /// `pulsar://host:port` of the broker.
    pub fn service_url(&self) -> &str {
        &self.service.config().service_url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn service(&self) -> &Arc<BrokerService> {
        &self.service
    }

    /// Clean stop: clients are disconnected, topics closed (cursors flushed, ledgers closed),
    /// the bookie's journal synced, the metadata session closed.
    pub async fn shutdown(self) {
        self.service.shutdown().await;
        if let Err(e) = self.server.await {
            warn!(error = %e, "broker listener task failed");
        }
        self.bookie.shutdown().await;
        if let Err(e) = self.session.close().await {
            warn!(error = %e, "closing the metadata session failed");
        }
        info!("standalone stopped");
    }
}

/// Creates tenant `public` and namespace `public/default` unless they exist.
pub async fn ensure_default_namespace(service: &BrokerService) -> Result<(), StandaloneError> {
    let policies = service.policies();
    match policies
        .create_tenant("public", &TenantInfo::default())
        .await
    {
        Ok(()) | Err(PolicyError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let ns = NamespaceName::new("public", "default")
        .map_err(|e| StandaloneError::Other(e.to_string()))?;
    match policies
        .create_namespace(&ns, &NamespacePolicies::default())
        .await
    {
        Ok(()) | Err(PolicyError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
