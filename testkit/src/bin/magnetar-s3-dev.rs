//! `magnetar-s3-dev`: an S3-compatible server over a directory (s3s-fs, see
//! `magnetar_testkit::s3fs`), for local clusters — the object store of `k8s/docker-compose.yaml`
//! — where no cloud or MinIO image can be had. Not for production: one key pair, no TLS.
//!
//! Environment: `S3_ADDRESS` (default `0.0.0.0:9000`), `S3_ROOT` (default `/data/s3`),
//! `S3_ACCESS_KEY` / `S3_SECRET_KEY` (required), `S3_BUCKETS` (comma-separated, created at
//! start). Runs until SIGTERM or SIGINT.

use anyhow::{Context, Result};
use magnetar_testkit::s3fs::InProcessS3;

fn env(name: &str, default: Option<&str>) -> Result<String> {
    match (std::env::var(name), default) {
        (Ok(v), _) if !v.is_empty() => Ok(v),
        (_, Some(d)) => Ok(d.to_owned()),
        _ => anyhow::bail!("{name} is required"),
    }
}

fn main() -> Result<()> {
    let listen = env("S3_ADDRESS", Some("0.0.0.0:9000"))?
        .parse()
        .context("S3_ADDRESS must be IP:PORT")?;
    let root = std::path::PathBuf::from(env("S3_ROOT", Some("/data/s3"))?);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let server = InProcessS3::serve(
        listen,
        root,
        &env("S3_ACCESS_KEY", None)?,
        &env("S3_SECRET_KEY", None)?,
        true,
    )?;
    for bucket in env("S3_BUCKETS", Some(""))?
        .split(',')
        .filter(|b| !b.is_empty())
    {
        server.create_bucket(bucket.trim())?;
    }
    println!("magnetar-s3-dev: serving {}", server.endpoint());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        anyhow::Ok(())
    })?;
    drop(server);
    Ok(())
}
