//! `magnetar bookie`: a bookie process — storage, gRPC server and registration
//! ([`BookieNode`]) — configured from `[bookie]` and `[metadata]`, running until SIGINT or
//! SIGTERM, then shutting down gracefully (deregister, drain, close the storage) and exiting 0.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use magnetar_bookie::node::{BookieNode, NodeOptions};
use magnetar_metadata::{EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, MetadataStore};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::cli::EXIT_OK;
use crate::config::{Config, MetadataBackend};

pub fn run(config: &Config) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("magnetar-bookie")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

/// The metadata store a separate bookie process registers in.
async fn metadata_store(config: &Config) -> anyhow::Result<Arc<dyn MetadataStore>> {
    let m = &config.metadata;
    Ok(match m.backend {
        MetadataBackend::Memory => bail!(
            "metadata.backend = \"memory\" cannot serve a separate bookie process: its \
             registration would be invisible to every broker; use \"etcd\" (or \"embedded\" \
             for a one-process trial)"
        ),
        MetadataBackend::Embedded => {
            // Resolved against `standalone.data_dir` when relative.
            let path = config.embedded_path();
            tracing::warn!(
                path = %path.display(),
                "metadata.backend is \"embedded\": this bookie registers in a file only this \
                 process can use, so no broker elsewhere will find it; use etcd for a cluster"
            );
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            Arc::new(
                EmbeddedStore::open(EmbeddedOptions::new(&path))
                    .await
                    .with_context(|| {
                        format!("cannot open the embedded metadata store {}", path.display())
                    })?,
            )
        }
        MetadataBackend::Etcd => Arc::new(
            EtcdStore::connect(EtcdOptions {
                endpoints: m.etcd_endpoints.clone(),
                root: m.etcd_root.clone(),
                ..EtcdOptions::default()
            })
            .await
            .with_context(|| format!("cannot connect to etcd at {}", m.etcd_endpoints.join(",")))?,
        ),
    })
}

async fn serve(config: &Config) -> anyhow::Result<u8> {
    // Installed first, so a signal during start-up is not the default (abrupt) exit.
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    let b = &config.bookie;
    let metadata = metadata_store(config).await?;
    let node = BookieNode::start(NodeOptions {
        bookie: b.options(b.advertised()?),
        bind: b.bind()?,
        zone: b.zone.clone(),
        metadata: Arc::clone(&metadata),
        session_ttl: Duration::from_millis(config.metadata.session_ttl_ms),
    })
    .await
    .context("cannot start the bookie")?;
    // Auto-recovery reaches the other bookies as any ledger client does (gRPC).
    let recovery = CancellationToken::new();
    magnetar_bookie::autorecovery::follow_decommission(
        Arc::clone(&metadata),
        node.bookie(),
        node.id().clone(),
        Duration::from_secs(1),
        magnetar_metadata::clock::system(),
        recovery.clone(),
    );
    if let Some(mut options) = b.auto_recovery() {
        options.session_ttl = Duration::from_millis(config.metadata.session_ttl_ms);
        let client = magnetar_bookie::client::LedgerClient::new(
            Arc::clone(&metadata),
            Arc::new(magnetar_bookie::rpc::GrpcConnector::new(
                magnetar_bookie::rpc::ClientOptions::default(),
            )),
            magnetar_bookie::client::LedgerClientOptions::default(),
        );
        magnetar_bookie::autorecovery::start(
            client,
            Arc::clone(&metadata),
            node.id().clone(),
            options,
            recovery.clone(),
        );
    }

    let mut out = std::io::stdout().lock();
    if node.id().0 == node.local_addr().to_string() {
        writeln!(out, "magnetar bookie: serving {}", node.id())?;
    } else {
        writeln!(
            out,
            "magnetar bookie: serving {} (bound to {})",
            node.id(),
            node.local_addr()
        )?;
    }
    out.flush()?;
    drop(out);

    // BookKeeper's HTTP endpoints, for probes and operators (bookie.http_port).
    let http = match b.http_port {
        Some(port) => {
            let addr = std::net::SocketAddr::new(b.bind()?.ip(), port);
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for the bookie's HTTP endpoints")
            })?;
            let local = listener
                .local_addr()
                .context("cannot read the HTTP listener's address")?;
            let stop = CancellationToken::new();
            let stopped = stop.clone();
            let router = magnetar_bookie::http::router(node.health());
            let task = tokio::spawn(async move {
                let stopped = async move { stopped.cancelled().await };
                if let Err(e) = magnetar_bookie::http::serve(listener, router, stopped).await {
                    tracing::error!(error = %e, "the bookie's HTTP server failed");
                }
            });
            let mut out = std::io::stdout().lock();
            writeln!(out, "magnetar bookie: http http://{local}")?;
            out.flush()?;
            Some((stop, task))
        }
        None => None,
    };

    let signal = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal, bookie = %node.id(), "shutting down");
    recovery.cancel();
    // The endpoints report the shutdown (not ready) until the storage is closed.
    node.shutdown().await;
    if let Some((stop, task)) = http {
        stop.cancel();
        let _ = task.await;
    }
    tracing::info!("bookie stopped");
    Ok(EXIT_OK)
}
