//! `magnetar standalone`: the embedded metadata store, one in-process bookie (fsync on) and the
//! broker in one process ([`magnetar_broker::standalone::Standalone`]). Prints
//! `magnetar standalone: serving pulsar://HOST:PORT` on stdout once the broker accepts
//! connections, and runs until SIGINT or SIGTERM, then stops cleanly (topics closed, cursors
//! flushed, bookie journal synced).

use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use magnetar_broker::standalone::{Standalone, StandaloneOptions};
use tokio::signal::unix::{SignalKind, signal};

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
    let options = StandaloneOptions {
        data_dir: s.data_dir.clone(),
        metadata_path: config
            .metadata
            .embedded_path
            .clone()
            .unwrap_or_else(|| config.embedded_path()),
        bind_address,
        broker_port: s.broker_port,
        session_ttl: Duration::from_millis(config.metadata.session_ttl_ms),
    };
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

    let signal = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal, "shutting down");
    standalone.shutdown().await;
    Ok(EXIT_OK)
}
