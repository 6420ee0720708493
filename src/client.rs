//! `magnetar produce`, `magnetar consume` and `magnetar perf produce|consume`: Pulsar clients on
//! the command line, built on the Rust `pulsar` crate.
//!
//! The service URL comes from `--service-url`, else the environment variable
//! `MAGNETAR_SERVICE_URL`, else the configuration key `client.service_url`.

// The `pulsar` crate's futures (producer and consumer calls) are 16–20 KiB; they are awaited
// inside one task per command (on tokio's heap), so boxing each per-message call buys nothing.
#![allow(clippy::large_futures)]

use magnetar_metadata::clock::{self, Interval};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use pulsar::compression::{
    Compression, CompressionLz4, CompressionSnappy, CompressionZlib, CompressionZstd,
};
use pulsar::consumer::InitialPosition;
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::{
    ConnectionRetryOptions, ConsumerOptions, OperationRetryOptions, ProducerOptions, Pulsar,
    TokioExecutor, producer,
};

use crate::cli::{ConfigArg, EXIT_OK};
use crate::config::Config;

/// Environment variable naming the service URL when `--service-url` is not given.
pub const SERVICE_URL_ENV: &str = "MAGNETAR_SERVICE_URL";

/// Largest payload `perf produce --size` accepts (the broker's default frame limit is 5 MiB).
const PERF_SIZE_MAX: usize = 5 * 1024 * 1024;
/// Largest `--max-pending`.
const MAX_PENDING_MAX: usize = 1_000_000;
/// Highest latency the histograms record, in microseconds (one hour); larger values are clamped.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Marker at the start of a `perf produce` payload, followed by the send time in µs since the
/// epoch, so `perf consume` measures end-to-end latency in µs rather than publish_time's ms.
const PERF_MAGIC: &[u8; 8] = b"mgntperf";

/// Flags every client command shares.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Broker to connect to [env: MAGNETAR_SERVICE_URL] [config: client.service_url]
    /// [default: pulsar://127.0.0.1:6650].
    #[arg(long, value_name = "URL")]
    pub service_url: Option<String>,

    #[command(flatten)]
    pub config: ConfigArg,
}

/// `magnetar produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to publish to (`my-topic` or `persistent://tenant/namespace/topic`).
    pub topic: String,
    /// Message to send; repeat for several. Without any, an empty message is sent.
    #[arg(short = 'm', long = "messages", value_name = "MESSAGE")]
    pub messages: Vec<String>,
    /// How many times to send the messages.
    #[arg(
        short = 'n',
        long = "num-produce",
        value_name = "COUNT",
        default_value_t = 1
    )]
    pub count: u64,
    /// Partition key of every message.
    #[arg(short = 'k', long, value_name = "KEY")]
    pub key: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `magnetar consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to consume from.
    pub topic: String,
    /// Subscription name.
    #[arg(short = 's', long = "subscription-name", value_name = "SUB")]
    pub subscription: String,
    /// Messages to receive before exiting; 0 runs until interrupted.
    #[arg(
        short = 'n',
        long = "num-messages",
        value_name = "COUNT",
        default_value_t = 1
    )]
    pub count: u64,
    /// Subscription type.
    #[arg(short = 't', long = "type", value_enum, default_value_t = SubKind::Exclusive)]
    pub sub_type: SubKind,
    /// Where a new subscription starts.
    #[arg(short = 'p', long, value_enum, default_value_t = Position::Latest)]
    pub initial_position: Position,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `magnetar perf`.
#[derive(Debug, Args)]
pub struct PerfArgs {
    #[command(subcommand)]
    pub command: PerfCommand,
}

/// What `magnetar perf` generates.
#[derive(Debug, Subcommand)]
pub enum PerfCommand {
    /// Publish as fast as asked and report rate and publish latency (send to receipt).
    Produce(PerfProduceArgs),
    /// Consume and acknowledge, reporting rate and end-to-end latency (publish to receive).
    Consume(PerfConsumeArgs),
}

/// `magnetar perf produce`.
#[derive(Debug, Args)]
pub struct PerfProduceArgs {
    /// Topic to publish to.
    pub topic: String,
    /// Messages per second; 0 sends as fast as receipts allow.
    #[arg(short = 'r', long, default_value_t = 0)]
    pub rate: u64,
    /// Payload size in bytes.
    #[arg(short = 's', long, value_name = "BYTES", default_value_t = 1024)]
    pub size: usize,
    /// Messages to send; 0 means no limit.
    #[arg(
        short = 'n',
        long = "num-messages",
        value_name = "COUNT",
        default_value_t = 0
    )]
    pub count: u64,
    /// Seconds to run; 0 means no limit (stop with Ctrl-C).
    #[arg(short = 'd', long, value_name = "S", default_value_t = 0)]
    pub duration_s: u64,
    /// Batch messages (up to 1000 messages or 128 KiB, 1 ms delay).
    #[arg(long, overrides_with = "no_batch", default_value_t = true)]
    pub batch: bool,
    /// Send every message in its own entry.
    #[arg(long)]
    pub no_batch: bool,
    /// Messages sent but not yet acknowledged by the broker.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_pending: usize,
    /// Payload compression.
    #[arg(long, value_enum, default_value_t = Codec::None)]
    pub compression: Codec,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `magnetar perf consume`.
#[derive(Debug, Args)]
pub struct PerfConsumeArgs {
    /// Topic to consume from.
    pub topic: String,
    /// Subscription name.
    #[arg(
        short = 's',
        long = "subscription-name",
        value_name = "SUB",
        default_value = "perf"
    )]
    pub subscription: String,
    /// Subscription type.
    #[arg(short = 't', long = "type", value_enum, default_value_t = SubKind::Exclusive)]
    pub sub_type: SubKind,
    /// Where a new subscription starts (`earliest` measures catch-up reads).
    #[arg(short = 'p', long, value_enum, default_value_t = Position::Latest)]
    pub initial_position: Position,
    /// Messages to receive; 0 means no limit.
    #[arg(
        short = 'n',
        long = "num-messages",
        value_name = "COUNT",
        default_value_t = 0
    )]
    pub count: u64,
    /// Seconds to run; 0 means no limit (stop with Ctrl-C).
    #[arg(short = 'd', long, value_name = "S", default_value_t = 0)]
    pub duration_s: u64,
    /// Consumer receive queue (flow permits).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub receiver_queue_size: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Subscription types.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SubKind {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

/// Initial positions.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Position {
    Earliest,
    Latest,
}

/// Payload codecs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Codec {
    None,
    Lz4,
    Zlib,
    Zstd,
    Snappy,
}

impl SubKind {
    fn to_pulsar(self) -> SubType {
        match self {
            SubKind::Exclusive => SubType::Exclusive,
            SubKind::Shared => SubType::Shared,
            SubKind::Failover => SubType::Failover,
            SubKind::KeyShared => SubType::KeyShared,
        }
    }
}

impl Position {
    fn to_pulsar(self) -> InitialPosition {
        match self {
            Position::Earliest => InitialPosition::Earliest,
            Position::Latest => InitialPosition::Latest,
        }
    }
}

impl Codec {
    fn to_pulsar(self) -> Option<Compression> {
        match self {
            Codec::None => None,
            Codec::Lz4 => Some(Compression::Lz4(CompressionLz4::default())),
            Codec::Zlib => Some(Compression::Zlib(CompressionZlib::default())),
            Codec::Zstd => Some(Compression::Zstd(CompressionZstd::default())),
            Codec::Snappy => Some(Compression::Snappy(CompressionSnappy::default())),
        }
    }
}

impl ClientArgs {
    fn service_url(&self, config: &Config) -> String {
        self.service_url
            .clone()
            .or_else(|| {
                std::env::var(SERVICE_URL_ENV)
                    .ok()
                    .filter(|u| !u.is_empty())
            })
            .unwrap_or_else(|| config.client.service_url.clone())
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn connect(url: &str) -> anyhow::Result<Pulsar<TokioExecutor>> {
    Pulsar::builder(url, TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            max_retries: 3,
            connection_timeout: Duration::from_secs(5),
            ..ConnectionRetryOptions::default()
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: Duration::from_secs(30),
            max_retries: Some(5),
            ..OperationRetryOptions::default()
        })
        .build()
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// `magnetar produce`.
pub fn produce(args: ProduceArgs, config: &Config) -> anyhow::Result<u8> {
    let url = args.client.service_url(config);
    runtime()?.block_on(async move {
        let pulsar = connect(&url).await?;
        let mut producer = pulsar
            .producer()
            .with_topic(&args.topic)
            .build()
            .await
            .with_context(|| format!("cannot create a producer on {}", args.topic))?;
        let messages = if args.messages.is_empty() {
            vec![String::new()]
        } else {
            args.messages
        };
        let mut sent = 0u64;
        for _ in 0..args.count {
            for text in &messages {
                let message = producer::Message {
                    payload: text.as_bytes().to_vec(),
                    partition_key: args.key.clone(),
                    ..producer::Message::default()
                };
                producer
                    .send_non_blocking(message)
                    .await?
                    .await
                    .context("the broker refused the message")?;
                sent += 1;
            }
        }
        producer.close().await.ok();
        settle(producer).await;
        eprintln!("{sent} messages successfully produced");
        Ok(EXIT_OK)
    })
}

/// `magnetar consume`: prints every message like `pulsar-client consume` and acknowledges it.
pub fn consume(args: ConsumeArgs, config: &Config) -> anyhow::Result<u8> {
    let url = args.client.service_url(config);
    runtime()?.block_on(async move {
        let pulsar = connect(&url).await?;
        let mut consumer: pulsar::Consumer<Vec<u8>, _> = pulsar
            .consumer()
            .with_topic(&args.topic)
            .with_subscription(&args.subscription)
            .with_subscription_type(args.sub_type.to_pulsar())
            .with_options(ConsumerOptions {
                initial_position: args.initial_position.to_pulsar(),
                ..ConsumerOptions::default()
            })
            .build()
            .await
            .with_context(|| format!("cannot subscribe to {}", args.topic))?;
        let mut received = 0u64;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        while args.count == 0 || received < args.count {
            let message = tokio::select! {
                next = consumer.next() => match next {
                    Some(message) => message.context("receive failed")?,
                    None => break,
                },
                _ = &mut ctrl_c => break,
            };
            let meta = &message.payload.metadata;
            let properties: Vec<String> = meta
                .properties
                .iter()
                .map(|kv| format!("{}={}", kv.key, kv.value))
                .collect();
            println!("----- got message -----");
            println!(
                "key:[{}], properties:[{}], content:{}",
                meta.partition_key.as_deref().unwrap_or(""),
                properties.join(", "),
                String::from_utf8_lossy(&message.payload.data)
            );
            consumer.ack(&message).await.context("ack failed")?;
            received += 1;
        }
        // Bounded: closing a consumer that stopped inside a batch entry can go unanswered.
        let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
        settle(consumer).await;
        eprintln!("{received} messages successfully consumed");
        Ok(EXIT_OK)
    })
}

/// `magnetar perf`.
pub fn perf(args: PerfArgs, config: &Config) -> anyhow::Result<u8> {
    match args.command {
        PerfCommand::Produce(args) => perf_produce(args, config),
        PerfCommand::Consume(args) => perf_consume(args, config),
    }
}

/// Counters and latency histograms shared by the load loop and the once-a-second reporter.
struct Stats {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// (since the last report, since the start), in µs.
    latency: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

impl Stats {
    fn new() -> anyhow::Result<Arc<Stats>> {
        let histogram = || Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_US, 3);
        Ok(Arc::new(Stats {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            latency: Mutex::new((histogram()?, histogram()?)),
        }))
    }

    fn record(&self, bytes: usize, latency_us: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let value = latency_us.clamp(1, LATENCY_MAX_US);
        if let Ok(mut h) = self.latency.lock() {
            h.0.saturating_record(value);
            h.1.saturating_record(value);
        }
    }

    /// Prints one progress line a second until dropped.
    fn reporter(self: &Arc<Self>, what: &'static str) -> tokio::task::JoinHandle<()> {
        let stats = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = Interval::new(clock::system(), Duration::from_secs(1));
            let (mut last_msgs, mut last_bytes, mut last) =
                (0u64, 0u64, magnetar_metadata::clock::system().now());
            loop {
                tick.tick().await;
                let now = magnetar_metadata::clock::system().now();
                let secs = now.duration_since(last).as_secs_f64().max(1e-9);
                let msgs = stats.messages.load(Ordering::Relaxed);
                let bytes = stats.bytes.load(Ordering::Relaxed);
                let line = match stats.latency.lock() {
                    Ok(mut h) => {
                        let line = latency_line(&h.0);
                        h.0.reset();
                        line
                    }
                    Err(_) => String::new(),
                };
                eprintln!(
                    "{what}: {:>10.0} msg/s {:>8.2} MB/s  {what} latency ms: {line}",
                    (msgs - last_msgs) as f64 / secs,
                    (bytes - last_bytes) as f64 / secs / 1e6,
                );
                (last_msgs, last_bytes, last) = (msgs, bytes, now);
            }
        })
    }

    fn summary(&self, what: &str, elapsed: Duration) {
        let msgs = self.messages.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let line = self
            .latency
            .lock()
            .map(|h| latency_line(&h.1))
            .unwrap_or_default();
        println!(
            "{what} summary: {msgs} msgs in {secs:.1} s: {:.0} msg/s {:.2} MB/s  latency ms: {line}",
            msgs as f64 / secs,
            bytes as f64 / secs / 1e6,
        );
    }
}

fn latency_line(h: &Histogram<u64>) -> String {
    let ms = |v: u64| v as f64 / 1000.0;
    if h.is_empty() {
        return "-".to_owned();
    }
    format!(
        "mean {:.3} p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        h.mean() / 1000.0,
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    )
}

/// Drops a producer or consumer while the runtime still runs and gives the close that the
/// `pulsar` crate spawns on drop a moment to finish, so it does not log a spurious
/// "could not close …: Disconnected" when the runtime stops under it.
async fn settle<T>(handle: T) {
    drop(handle);
    magnetar_metadata::clock::system()
        .sleep(Duration::from_millis(20))
        .await;
}

// End-to-end latency compares a producer's and a consumer's wall clocks (two processes): the
// system clock in microseconds is what is measured here, not time the tool schedules itself by.
#[allow(clippy::disallowed_methods)]
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn perf_produce(args: PerfProduceArgs, config: &Config) -> anyhow::Result<u8> {
    if args.size > PERF_SIZE_MAX {
        bail!(
            "--size {} is above the limit of {PERF_SIZE_MAX} bytes",
            args.size
        );
    }
    if args.max_pending == 0 || args.max_pending > MAX_PENDING_MAX {
        bail!("--max-pending must be between 1 and {MAX_PENDING_MAX}");
    }
    let url = args.client.service_url(config);
    let batch = args.batch && !args.no_batch;
    runtime()?.block_on(async move {
        let pulsar = connect(&url).await?;
        let options = ProducerOptions {
            batch_size: batch.then_some(1000),
            batch_byte_size: batch.then_some(128 * 1024),
            batch_timeout: batch.then_some(Duration::from_millis(1)),
            compression: args.compression.to_pulsar(),
            ..ProducerOptions::default()
        };
        let mut producer = pulsar
            .producer()
            .with_topic(&args.topic)
            .with_options(options)
            .build()
            .await
            .with_context(|| format!("cannot create a producer on {}", args.topic))?;

        let stats = Stats::new()?;
        let reporter = stats.reporter("produce");
        // Receipts arrive in order: one task awaits them in send order, and the channel's
        // capacity bounds the messages in flight.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(pulsar::producer::SendFuture, Instant)>(args.max_pending);
        let collector_stats = Arc::clone(&stats);
        let size = args.size;
        let collector = tokio::spawn(async move {
            while let Some((receipt, sent_at)) = rx.recv().await {
                receipt.await.context("the broker refused a message")?;
                collector_stats.record(size, sent_at.elapsed().as_micros() as u64);
            }
            anyhow::Ok(())
        });

        let start = magnetar_metadata::clock::system().now();
        let deadline = (args.duration_s > 0).then(|| start + Duration::from_secs(args.duration_s));
        let mut payload = vec![b'x'; args.size];
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut sent = 0u64;
        let result: anyhow::Result<()> = async {
            while args.count == 0 || sent < args.count {
                let now = magnetar_metadata::clock::system().now();
                if deadline.is_some_and(|d| now >= d) {
                    break;
                }
                if args.rate > 0 {
                    let due = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
                    if due > now {
                        tokio::select! {
                            _ = magnetar_metadata::clock::system().sleep_until(due) => {}
                            _ = &mut ctrl_c => break,
                        }
                    }
                }
                if payload.len() >= 16 {
                    payload[..8].copy_from_slice(PERF_MAGIC);
                    payload[8..16].copy_from_slice(&now_us().to_le_bytes());
                }
                let sent_at = magnetar_metadata::clock::system().now();
                let receipt = producer.send_non_blocking(payload.clone()).await?;
                if tx.send((receipt, sent_at)).await.is_err() {
                    break; // the collector stopped on an error; it reports it below
                }
                sent += 1;
            }
            Ok(())
        }
        .await;
        drop(tx);
        let collected = collector.await.context("receipt collector failed")?;
        let elapsed = start.elapsed();
        reporter.abort();
        result?;
        collected?;
        producer.close().await.ok();
        settle(producer).await;
        stats.summary("produce", elapsed);
        Ok(EXIT_OK)
    })
}

fn perf_consume(args: PerfConsumeArgs, config: &Config) -> anyhow::Result<u8> {
    let url = args.client.service_url(config);
    runtime()?.block_on(async move {
        let pulsar = connect(&url).await?;
        let mut consumer: pulsar::Consumer<Vec<u8>, _> = pulsar
            .consumer()
            .with_topic(&args.topic)
            .with_subscription(&args.subscription)
            .with_subscription_type(args.sub_type.to_pulsar())
            .with_options(ConsumerOptions {
                initial_position: args.initial_position.to_pulsar(),
                receiver_queue_size: Some(args.receiver_queue_size.max(1)),
                ..ConsumerOptions::default()
            })
            .build()
            .await
            .with_context(|| format!("cannot subscribe to {}", args.topic))?;
        let stats = Stats::new()?;
        let reporter = stats.reporter("consume");
        let start = magnetar_metadata::clock::system().now();
        let sleep = magnetar_metadata::clock::system().sleep(if args.duration_s > 0 {
            Duration::from_secs(args.duration_s)
        } else {
            Duration::from_secs(365 * 24 * 3600)
        });
        tokio::pin!(sleep);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut received = 0u64;
        while args.count == 0 || received < args.count {
            let message = tokio::select! {
                next = consumer.next() => match next {
                    Some(message) => message.context("receive failed")?,
                    None => break,
                },
                _ = &mut sleep => break,
                _ = &mut ctrl_c => break,
            };
            let now = now_us();
            let data = &message.payload.data;
            let sent_us = match data.get(..16) {
                Some(head) if head[..8] == PERF_MAGIC[..] => {
                    let mut stamp = [0u8; 8];
                    stamp.copy_from_slice(&head[8..16]);
                    u64::from_le_bytes(stamp)
                }
                _ => message.payload.metadata.publish_time.saturating_mul(1000),
            };
            stats.record(data.len(), now.saturating_sub(sent_us));
            consumer.ack(&message).await.context("ack failed")?;
            received += 1;
        }
        let elapsed = start.elapsed();
        reporter.abort();
        // Bounded: closing a consumer that stopped inside a batch entry can go unanswered.
        let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
        settle(consumer).await;
        stats.summary("consume", elapsed);
        Ok(EXIT_OK)
    })
}
