//! `magnetar broker`: a cluster broker ([`magnetar_broker::runtime::broker::Broker`]) over etcd and
//! bookies reached with gRPC. Prints `magnetar broker: serving pulsar://HOST:PORT` on stdout once
//! it accepts connections, and runs until SIGINT or SIGTERM, then stops cleanly (topics closed,
//! cursors flushed, bundle leases released with its metadata session).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use magnetar_bookie::rpc::{ClientOptions, GrpcConnector};
use magnetar_broker::runtime::broker::{Broker, BrokerOptions};
use magnetar_managed_ledger::ManagedLedgerConfig;
use magnetar_metadata::{CoalescingStore, EtcdOptions, EtcdStore, MetadataStore};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::EXIT_OK;
use crate::config::{Config, MetadataBackend};

pub fn run(config: &Config) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("magnetar-broker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: &Config) -> anyhow::Result<u8> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    let m = &config.metadata;
    if m.backend != MetadataBackend::Etcd {
        bail!(
            "magnetar broker needs metadata.backend = \"etcd\" (shared with the bookies and other \
             brokers); for a one-process trial run `magnetar standalone`"
        );
    }
    // Concurrent reads of one key (a takeover's topics all reading their namespace's
    // policies) share one etcd request.
    let store: Arc<dyn MetadataStore> = Arc::new(CoalescingStore::new(Arc::new(
        EtcdStore::connect(EtcdOptions {
            endpoints: m.etcd_endpoints.clone(),
            root: m.etcd_root.clone(),
            ..EtcdOptions::default()
        })
        .await
        .with_context(|| format!("cannot connect to etcd at {}", m.etcd_endpoints.join(",")))?,
    )));
    let b = &config.broker;
    let managed_ledger = ManagedLedgerConfig {
        ensemble_size: b.ensemble_size,
        write_quorum: b.write_quorum,
        ack_quorum: b.ack_quorum,
        ..ManagedLedgerConfig::default()
    };
    let mut options = BrokerOptions {
        bind: b.bind()?,
        advertised_host: b.advertised_address.clone(),
        session_ttl: Duration::from_millis(m.session_ttl_ms),
        ..BrokerOptions::default()
    };
    options.service.managed_ledger = managed_ledger;
    b.apply(&mut options.service);
    config.offload.apply(&mut options.service.managed_ledger);
    options.offload = config.offload.options(None)?;
    let node = Broker::start(
        store,
        Arc::new(GrpcConnector::new(ClientOptions::default())),
        None,
        options,
    )
    .await
    .context("cannot start the broker")?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "magnetar broker: serving {}", node.service_url())?;
    out.flush()?;
    drop(out);

    let admin = crate::standalone::AdminServer::start(
        std::net::SocketAddr::new(b.bind()?.ip(), b.admin_port),
        node.service(),
        Vec::new(),
    )
    .await?;
    // Other brokers redirect admin requests here: advertise the host clients can reach.
    let admin_url = match &b.advertised_address {
        Some(host) if host.contains(':') => format!("http://[{host}]:{}", admin.port()),
        Some(host) => format!("http://{host}:{}", admin.port()),
        None => admin.url(),
    };
    node.register_admin_url(&admin_url)
        .await
        .context("cannot register the broker's admin URL")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "magnetar broker: admin {}", admin.url())?;
    out.flush()?;
    drop(out);

    let signal = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal, "shutting down");
    // Bundles go to the other brokers first (what a rolling update needs); the admin API
    // keeps answering meanwhile. Whatever is left after the timeout is closed as before.
    let drain_timeout = std::time::Duration::from_millis(b.broker_shutdown_timeout_ms);
    if tokio::time::timeout(drain_timeout, node.service().drain())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = b.broker_shutdown_timeout_ms,
            "drain did not finish in time"
        );
    }
    admin.stop().await;
    node.shutdown().await;
    Ok(EXIT_OK)
}
