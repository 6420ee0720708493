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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnetar_bookie::api::{BookieClient, BookieId, BookieRegistration, registration_key};
use magnetar_bookie::local::LocalConnector;
use magnetar_bookie::server::{Bookie, BookieOptions};
use magnetar_metadata::{EmbeddedOptions, EmbeddedStore, Expected, MetadataStore};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cluster::session::BrokerSession;
use crate::runtime::broker::{Broker, BrokerOptions, StartError};
use crate::service::BrokerService;

/// Id of the in-process bookie: stable across restarts, since ledger metadata names it.
pub const STANDALONE_BOOKIE_ID: &str = "standalone-bookie:0";

/// What `magnetar standalone` needs to start.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    pub data_dir: PathBuf,
    /// The embedded metadata file (default `<data_dir>/metadata.redb`).
    pub metadata_path: PathBuf,
    /// The broker's options, as a cluster broker has them.
    pub broker: BrokerOptions,
    /// The in-process bookie's storage options, as `magnetar bookie` has them (disk limits,
    /// journal and entry-log sizes, checkpoints, GC). Its `id` and `data_dir` are the
    /// standalone's own ([`STANDALONE_BOOKIE_ID`], `<data_dir>/bookie`) whatever is set here.
    pub bookie: BookieOptions,
}

impl StandaloneOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        StandaloneOptions {
            metadata_path: data_dir.join("metadata.redb"),
            broker: BrokerOptions::default(),
            bookie: BookieOptions::new(
                BookieId(STANDALONE_BOOKIE_ID.to_owned()),
                data_dir.join("bookie"),
            ),
            data_dir,
        }
    }
}

/// A running standalone.
#[derive(Debug)]
pub struct Standalone {
    broker: Broker,
    bookie: Arc<Bookie>,
    /// Stops the bookie's scan for ledgers deleted while it was down.
    stop: CancellationToken,
}

impl Standalone {
    /// Opens the stores, starts the bookie and the broker, and returns once the broker accepts
    /// connections.
    pub async fn start(options: StandaloneOptions) -> Result<Standalone, StartError> {
        let io = |what: String| move |source| StartError::Io { what, source };
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
        let session = BrokerSession::start(
            Arc::clone(&store),
            options.broker.session_ttl,
            Arc::clone(&options.broker.clock),
        )
        .await?;

        let bookie_id: BookieId = STANDALONE_BOOKIE_ID.parse().map_err(StartError::Other)?;
        let bookie_dir = options.data_dir.join("bookie");
        // The bookie's data must belong to this metadata file (a mistyped path opens a new,
        // empty one, whose ledger ids would alias the old data's).
        magnetar_bookie::cookie::verify(&*store, &bookie_dir, &bookie_id).await?;
        let mut bookie_options = options.bookie.clone();
        bookie_options.id = bookie_id;
        bookie_options.data_dir = bookie_dir;
        let scan_interval = Duration::from_millis(bookie_options.deleted_ledgers_scan_interval_ms);
        let bookie = Bookie::open(bookie_options).await?;
        let local = LocalConnector::new();
        local.insert(Arc::clone(&bookie) as Arc<dyn BookieClient>);
        let registration = BookieRegistration {
            id: bookie.id().clone(),
            // A bookie that starts full is read-only from the first registration on.
            state: bookie.state(),
            free_bytes: u64::MAX / 2,
            used_bytes: 0,
            zone: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let value = serde_json::to_vec(&registration)
            .map_err(|e| StartError::Other(format!("bookie registration: {e}")))?;

        let _written = store
            .put_ephemeral(
                &registration_key(bookie.id()),
                Bytes::from(value),
                Expected::Any,
                &session.current(),
            )
            .await?;
        let stop = CancellationToken::new();
        tokio::spawn(follow_bookie_state(
            Arc::clone(&bookie),
            Arc::clone(&store),
            session.current(),
            registration,
            stop.clone(),
        ));
        let _collector = magnetar_bookie::orphans::spawn_collector(
            Arc::clone(&bookie),
            Arc::clone(&store),
            Arc::clone(&options.broker.clock),
            scan_interval,
            stop.clone(),
        );
        let broker = Broker::start(store, Arc::new(local), Some(session), options.broker).await?;
        Ok(Standalone {
            broker,
            bookie,
            stop,
        })
    }

    /// `pulsar://host:port` of the broker.
    pub fn service_url(&self) -> &str {
        self.broker.service_url()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// The in-process bookie.
    pub fn bookie(&self) -> &Arc<Bookie> {
        &self.bookie
    }

    pub fn service(&self) -> &Arc<BrokerService> {
        self.broker.service()
    }

    /// Announces the admin URL (as a cluster broker does): the standalone lists itself among
    /// the active brokers and is the leader.
    pub async fn register_admin_url(
        &self,
        admin_url: &str,
    ) -> Result<(), crate::error::BrokerError> {
        self.broker.register_admin_url(admin_url).await
    }

    /// Clean stop: clients are disconnected, topics closed (cursors flushed, ledgers closed),
    /// the metadata session closed, the bookie's journal synced.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.broker.shutdown().await;
        self.bookie.shutdown().await;
        info!("standalone stopped");
    }
}

/// Keeps the in-process bookie's registration's state current (as `magnetar bookie`'s
/// registrar does), so that placement stops choosing a full bookie for new ledgers at once
/// instead of learning it from every refused add.
async fn follow_bookie_state(
    bookie: Arc<Bookie>,
    store: Arc<dyn MetadataStore>,
    session: magnetar_metadata::Session,
    mut registration: BookieRegistration,
    stop: CancellationToken,
) {
    let mut states = bookie.state_changes();
    loop {
        let state = *states.borrow_and_update();
        if state != registration.state {
            registration.state = state;
            match serde_json::to_vec(&registration) {
                Ok(value) => {
                    let written = store
                        .put_ephemeral(
                            &registration_key(bookie.id()),
                            Bytes::from(value),
                            Expected::Any,
                            &session,
                        )
                        .await;
                    match written {
                        Ok(_) => info!(state = state.as_str(), "bookie registration updated"),
                        Err(e) => tracing::warn!(error = %e, "bookie registration update failed"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, "bookie registration cannot be encoded"),
            }
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}
