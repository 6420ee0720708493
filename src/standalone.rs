//! `magnetar standalone`: the embedded metadata store, one in-process bookie (fsync on) and the
//! broker in one process ([`magnetar_broker::runtime::standalone::Standalone`]). Prints
//! `magnetar standalone: serving pulsar://HOST:PORT` on stdout once the broker accepts
//! connections, then `magnetar standalone: admin http://HOST:PORT` once the admin REST API
//! listens, and runs until SIGINT or SIGTERM, then stops cleanly (topics closed, cursors
//! flushed, bookie journal synced).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use magnetar_broker::admin::topic_admin::BrokerTopicAdmin;
use magnetar_broker::admin::{self, AdminState};
use magnetar_broker::runtime::standalone::{Standalone, StandaloneOptions};
use magnetar_broker::service::BrokerService;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cli::EXIT_OK;
use crate::config::Config;

pub fn run(config: &Config) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("magnetar-standalone")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: &Config) -> anyhow::Result<u8> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    let s = &config.standalone;
    let bind_address: IpAddr = s
        .bind_address
        .parse()
        .with_context(|| format!("standalone.bind_address {:?}", s.bind_address))?;
    let mut options = StandaloneOptions::new(s.data_dir.clone());
    options.metadata_path = config.embedded_path();
    options.broker.bind = SocketAddr::new(bind_address, s.broker_port);
    options.broker.advertised_host = config.broker.advertised_address.clone();
    options.broker.session_ttl = Duration::from_millis(config.metadata.session_ttl_ms);
    config.broker.apply(&mut options.broker.service);
    config
        .offload
        .apply(&mut options.broker.service.managed_ledger);
    options.broker.offload = config.offload.options(Some(&s.data_dir))?;
    // The in-process bookie honours the bookie section's storage settings (disk limits,
    // journal, entry logs, GC), as `magnetar bookie` does; id and directory stay standalone's.
    options.bookie = config.bookie.options(options.bookie.id.clone());
    let standalone = Standalone::start(options)
        .await
        .context("cannot start standalone")?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "magnetar standalone: serving {}",
        standalone.service_url()
    )?;
    out.flush()?;
    drop(out);

    let admin = AdminServer::start(
        SocketAddr::new(bind_address, s.admin_port),
        standalone.service(),
        vec![Arc::clone(standalone.bookie())],
    )
    .await?;
    standalone
        .register_admin_url(&admin.url())
        .await
        .context("cannot register the standalone's admin URL")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "magnetar standalone: admin {}", admin.url())?;
    out.flush()?;
    drop(out);

    let signal = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal, "shutting down");
    admin.stop().await;
    standalone.shutdown().await;
    Ok(EXIT_OK)
}

/// The admin REST API of a running broker service, served until [`AdminServer::stop`].
pub(crate) struct AdminServer {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    /// `bookies`: those of this process, whose series `/metrics` adds (standalone).
    pub(crate) async fn start(
        bind: SocketAddr,
        service: &Arc<BrokerService>,
        bookies: Vec<Arc<magnetar_bookie::server::Bookie>>,
    ) -> anyhow::Result<AdminServer> {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind} for the admin API"))?;
        let local_addr = listener
            .local_addr()
            .context("cannot read the admin listener's address")?;
        let state = AdminState::new(
            service.policies().clone(),
            BrokerTopicAdmin::new(Arc::clone(service)),
        )
        .with_schemas(service.schemas())
        .with_metrics(magnetar_broker::metrics::BrokerMetrics::new(
            Arc::clone(service),
            bookies,
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(admin::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Ok(AdminServer {
            local_addr,
            stop,
            task,
        })
    }

    /// `http://HOST:PORT` (127.0.0.1 for an unspecified bind address).
    pub(crate) fn url(&self) -> String {
        let mut addr = self.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        }
        format!("http://{addr}")
    }

    pub(crate) fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Stops accepting requests and waits for those in flight.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin API server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "admin API task failed"),
            Err(_) => tracing::warn!("admin API requests still running at shutdown"),
        }
    }
}
