//! A running bookie node — what `magnetar bookie` runs: the [`Bookie`] storage, served over gRPC,
//! and registered in the metadata store so ledger clients can find it.
//!
//! The registration is the ephemeral key [`registration_key`]`(id)` holding a JSON
//! [`BookieRegistration`], tied to the node's metadata session. It is rewritten (compare-and-set
//! on its version) when the bookie turns read-only or read-write again, and every
//! [`REGISTRATION_REFRESH`] with fresh disk figures. If the session is lost (the metadata store
//! was unreachable longer than its ttl), the node opens a new session and registers again.
//! Shutdown deregisters first, so clients stop choosing the bookie, then stops the server
//! (in-flight requests are answered), then closes the storage.

use magnetar_metadata::clock::{self, Interval};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use magnetar_metadata::{Expected, MetadataError, MetadataStore, PutOutcome, Session, Version};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{
    BookieClient, BookieError, BookieId, BookieRegistration, BookieState, registration_key,
};
use crate::rpc::server::{ServerOptions, serve_with};
use crate::server::{Bookie, BookieOptions};

/// The registration is rewritten this often with fresh free/used figures (when they changed).
pub const REGISTRATION_REFRESH: Duration = Duration::from_secs(10);
/// After a failed registration attempt (metadata store unreachable), the next one waits this long.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// What a node is made of.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The storage. `bookie.id` is the advertised address; an id ending in `:0` takes the port
    /// the server was bound to (for `bind` with port 0).
    pub bookie: BookieOptions,
    /// Where the gRPC server listens; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Zone label published in the registration (placement spreads replicas over zones).
    pub zone: Option<String>,
    pub metadata: Arc<dyn MetadataStore>,
    /// Ttl of the metadata session the registration is tied to.
    pub session_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("bookie id {0:?} is not host:port")]
    BadId(String),
    #[error("cannot open the bookie storage: {0}")]
    Storage(#[from] BookieError),
    #[error("cannot register the bookie in the metadata store: {0}")]
    Metadata(#[from] MetadataError),
    #[error("cannot register the bookie: {0}")]
    Registration(String),
    #[error("{0}")]
    Cookie(#[from] crate::cookie::CookieError),
}

/// A bookie serving and registered; stop it with [`BookieNode::shutdown`].
pub struct BookieNode {
    id: BookieId,
    local_addr: SocketAddr,
    bookie: Arc<Bookie>,
    /// Stops the registration task, which deregisters on its way out.
    stop_registration: CancellationToken,
    stop_server: CancellationToken,
    tasks: Mutex<Option<(JoinHandle<()>, JoinHandle<()>)>>,
    /// Whether the registration is known to be in the metadata store now.
    registered: Arc<AtomicBool>,
}

impl fmt::Debug for BookieNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BookieNode")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for BookieNode {
    fn drop(&mut self) {
        // Without shutdown: the tasks stop; the session's keep-alive ends with it.
        self.stop_registration.cancel();
        self.stop_server.cancel();
    }
}

/// The advertised id, with the bound port filled in for an id ending in `:0`.
fn resolve_id(id: &BookieId, local: SocketAddr) -> Result<BookieId, NodeError> {
    let Some((host, port)) = id.0.rsplit_once(':') else {
        return Err(NodeError::BadId(id.0.clone()));
    };
    match port.parse::<u16>() {
        Ok(0) => Ok(BookieId(format!("{host}:{}", local.port()))),
        Ok(_) if !host.is_empty() => Ok(id.clone()),
        _ => Err(NodeError::BadId(id.0.clone())),
    }
}

impl BookieNode {
    /// Binds, opens the storage, serves, registers; returns once the bookie is registered.
    pub async fn start(options: NodeOptions) -> Result<BookieNode, NodeError> {
        let NodeOptions {
            mut bookie,
            bind,
            zone,
            metadata,
            session_ttl,
        } = options;
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| NodeError::Bind { addr: bind, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| NodeError::Bind { addr: bind, source })?;
        let id = resolve_id(&bookie.id, local_addr)?;
        bookie.id = id.clone();
        let server_options = ServerOptions::for_entry_size(bookie.entry_size_bytes_max);
        // Before the storage opens: data of another metadata store must not be served.
        crate::cookie::verify(&*metadata, &bookie.data_dir, &id).await?;
        let scan_interval = Duration::from_millis(bookie.deleted_ledgers_scan_interval_ms);
        let storage = Bookie::open(bookie).await?;

        let stop_server = CancellationToken::new();
        let server = tokio::spawn({
            let served: Arc<dyn BookieClient> = storage.clone();
            let stop = stop_server.clone();
            async move {
                if let Err(e) = serve_with(listener, served, stop, server_options).await {
                    tracing::error!(error = %e, "bookie gRPC server failed");
                }
            }
        });

        let registered = Arc::new(AtomicBool::new(false));
        let mut registrar = Registrar {
            registered: Arc::clone(&registered),
            id: id.clone(),
            zone,
            bookie: storage.clone(),
            metadata,
            session_ttl,
            session: None,
            written: None,
        };
        if let Err(e) = registrar.register().await {
            stop_server.cancel();
            let _ = server.await;
            storage.shutdown().await;
            return Err(e);
        }
        tracing::info!(bookie = %id, %local_addr, "bookie serving and registered");
        let stop_registration = CancellationToken::new();
        // Ended with the registration: a bookie leaving stops comparing itself with the store.
        let _collector = crate::orphans::spawn_collector(
            storage.clone(),
            Arc::clone(&registrar.metadata),
            clock::system(),
            scan_interval,
            stop_registration.clone(),
        );
        let registration = tokio::spawn(registrar.run(stop_registration.clone()));
        Ok(BookieNode {
            id,
            local_addr,
            bookie: storage,
            stop_registration,
            stop_server,
            tasks: Mutex::new(Some((registration, server))),
            registered,
        })
    }

    /// The advertised id (`host:port`), also the registration's key suffix.
    pub fn id(&self) -> &BookieId {
        &self.id
    }

    /// The address the gRPC server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn bookie(&self) -> Arc<Bookie> {
        self.bookie.clone()
    }

    /// What the bookie's HTTP endpoints report on (see [`crate::http`]).
    pub fn health(&self) -> crate::http::Health {
        crate::http::Health::new(self.bookie.clone(), Arc::clone(&self.registered))
    }

    /// Deregisters, stops the server (answering what is in flight), closes the storage.
    /// Idempotent.
    pub async fn shutdown(&self) {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((registration, server)) = tasks {
            self.stop_registration.cancel();
            if let Err(e) = registration.await {
                tracing::error!(error = %e, "bookie registration task failed");
            }
            self.stop_server.cancel();
            if let Err(e) = server.await {
                tracing::error!(error = %e, "bookie gRPC server task failed");
            }
        }
        self.bookie.shutdown().await;
    }
}

/// Keeps the registration current.
struct Registrar {
    /// Set once a registration write lands, cleared when it may no longer be there (session
    /// lost, a failed update, deregistration).
    registered: Arc<AtomicBool>,
    id: BookieId,
    zone: Option<String>,
    bookie: Arc<Bookie>,
    metadata: Arc<dyn MetadataStore>,
    session_ttl: Duration,
    session: Option<Session>,
    /// What was last written, and its version.
    written: Option<(BookieRegistration, Version)>,
}

impl Registrar {
    async fn current(&self) -> BookieRegistration {
        let (state, free_bytes, used_bytes) = match self.bookie.info().await {
            Ok(info) => (info.state, info.free_bytes, info.used_bytes),
            Err(_) => (self.bookie.state(), 0, 0),
        };
        BookieRegistration {
            id: self.id.clone(),
            state,
            free_bytes,
            used_bytes,
            zone: self.zone.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// Writes the registration under a live session (a new one if needed): the first write
    /// replaces whatever a previous run left; later ones compare-and-set on the version.
    async fn register(&mut self) -> Result<(), NodeError> {
        let session = match &self.session {
            Some(s) if !s.is_lost() => s.clone(),
            _ => {
                self.written = None;
                let s = self.metadata.create_session(self.session_ttl).await?;
                self.session = Some(s.clone());
                s
            }
        };
        let registration = self.current().await;
        if self
            .written
            .as_ref()
            .is_some_and(|(last, _)| *last == registration)
        {
            return Ok(());
        }
        let value = Bytes::from(
            serde_json::to_vec(&registration)
                .map_err(|e| NodeError::Registration(format!("cannot encode it: {e}")))?,
        );
        let key = registration_key(&self.id);
        let expected = match &self.written {
            Some((_, version)) => Expected::Version(*version),
            None => Expected::Any,
        };
        let outcome = self
            .metadata
            .put_ephemeral(&key, value.clone(), expected, &session)
            .await?;
        let version = match outcome {
            PutOutcome::Written(v) => v,
            PutOutcome::Conflict { current } => {
                // Someone else wrote or removed the key (an operator, or a second process with
                // the same id): say so, and put ours back.
                tracing::warn!(
                    key,
                    ?current,
                    "bookie registration changed under us; rewriting it"
                );
                match self
                    .metadata
                    .put_ephemeral(&key, value, Expected::Any, &session)
                    .await?
                {
                    PutOutcome::Written(v) => v,
                    PutOutcome::Conflict { current } => {
                        return Err(NodeError::Registration(format!(
                            "unconditional write of {key} conflicted at {current:?}"
                        )));
                    }
                }
            }
        };
        if self
            .written
            .as_ref()
            .is_none_or(|(last, _)| last.state != registration.state)
        {
            tracing::info!(
                key,
                state = registration.state.as_str(),
                "bookie registered"
            );
        }
        self.written = Some((registration, version));
        self.registered.store(true, Ordering::Release);
        Ok(())
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut states = self.bookie.state_changes();
        let clock = clock::system();
        let mut tick = Interval::new(Arc::clone(&clock), REGISTRATION_REFRESH);
        let mut retry = false;
        loop {
            let lost = self.session.clone().map(|s| s.lost_token());
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = async { match &lost { Some(t) => t.cancelled().await, None => std::future::pending().await } }, if !retry => {
                    self.registered.store(false, Ordering::Release);
                    tracing::warn!(bookie = %self.id, "metadata session lost; registering again");
                }
                changed = states.changed() => {
                    if changed.is_err() {
                        // The storage is gone (shut down): nothing more to publish.
                        states = self.bookie.state_changes();
                    }
                    let state: BookieState = *states.borrow_and_update();
                    tracing::info!(bookie = %self.id, state = state.as_str(), "bookie state changed");
                }
                _ = tick.tick() => {}
                _ = clock.sleep(RETRY_DELAY), if retry => {}
            }
            retry = match self.register().await {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(bookie = %self.id, error = %e, "cannot update the bookie registration");
                    self.registered.store(false, Ordering::Release);
                    true
                }
            };
        }
        self.deregister().await;
    }

    async fn deregister(&mut self) {
        self.registered.store(false, Ordering::Release);
        let key = registration_key(&self.id);
        let expected = match &self.written {
            Some((_, version)) => Expected::Version(*version),
            None => Expected::Any,
        };
        match self.metadata.delete(&key, expected).await {
            Ok(_) => tracing::info!(key, "bookie deregistered"),
            Err(e) => tracing::warn!(key, error = %e, "cannot delete the bookie registration"),
        }
        if let Some(session) = self.session.take()
            && let Err(e) = session.close().await
        {
            tracing::debug!(error = %e, "closing the metadata session failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_in_the_id_takes_the_bound_port() {
        let local: SocketAddr = "127.0.0.1:4567".parse().unwrap_or_else(|_| unreachable!());
        let id = |s: &str| BookieId(s.to_owned());
        assert_eq!(
            resolve_id(&id("10.0.0.1:0"), local).ok(),
            Some(id("10.0.0.1:4567"))
        );
        assert_eq!(resolve_id(&id("h:3181"), local).ok(), Some(id("h:3181")));
        assert!(resolve_id(&id("nohost"), local).is_err());
        assert!(resolve_id(&id(":1"), local).is_err());
    }
}
