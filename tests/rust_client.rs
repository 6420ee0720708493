#![allow(clippy::unwrap_used, clippy::expect_used, clippy::large_futures)] // a test binary; the pulsar crate's futures are ~20 KiB

//! A real `magnetar standalone` process driven by the Rust `pulsar` crate: batched and unbatched
//! producers with compression, Exclusive and Shared subscriptions with acks, a resumed
//! subscription, and the `magnetar produce` / `magnetar consume` commands.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use magnetar_testkit::process::{self, Server};
use pulsar::compression::{Compression, CompressionLz4, CompressionZstd};
use pulsar::consumer::InitialPosition;
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::{Consumer, ConsumerOptions, ProducerOptions, Pulsar, TokioExecutor};

const SERVING: &str = "magnetar standalone: serving ";

/// A `magnetar standalone` on a free port; killed when dropped.
struct Standalone {
    _server: Server,
    url: String,
    _dir: tempfile::TempDir,
}

/// The built binary in the current directory, logging warnings only.
fn magnetar() -> Command {
    let mut cmd = process::command(env!("CARGO_BIN_EXE_magnetar"), Path::new("."));
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn standalone() -> Standalone {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        process::command(env!("CARGO_BIN_EXE_magnetar"), dir.path())
            .env("RUST_LOG", "warn")
            .args(["standalone", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--broker-port", "0"])
            // The admin API on a free port too (the key exists with or without the flag).
            .env("MAGNETAR_STANDALONE__ADMIN_PORT", "0"),
        SERVING,
    );
    let url = server.address(SERVING);
    Standalone {
        _server: server,
        url,
        _dir: dir,
    }
}

async fn client(url: &str) -> Pulsar<TokioExecutor> {
    Pulsar::builder(url, TokioExecutor).build().await.unwrap()
}

async fn produce(pulsar: &Pulsar<TokioExecutor>, topic: &str, options: ProducerOptions, n: u32) {
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_options(options)
        .build()
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for i in 0..n {
        receipts.push(
            producer
                .send_non_blocking(format!("message-{i}"))
                .await
                .unwrap(),
        );
    }
    producer.send_batch().await.ok();
    for receipt in receipts {
        tokio::time::timeout(Duration::from_secs(10), receipt)
            .await
            .expect("no send receipt in 10 s")
            .unwrap();
    }
    producer.close().await.unwrap();
}

async fn subscribe(
    pulsar: &Pulsar<TokioExecutor>,
    topic: &str,
    sub: &str,
    sub_type: SubType,
) -> Consumer<String, TokioExecutor> {
    pulsar
        .consumer()
        .with_topic(topic)
        .with_subscription(sub)
        .with_subscription_type(sub_type)
        .with_options(ConsumerOptions {
            initial_position: InitialPosition::Earliest,
            ..ConsumerOptions::default()
        })
        .build()
        .await
        .unwrap()
}

/// Receives and acks `n` messages, returning their texts in arrival order.
async fn receive(consumer: &mut Consumer<String, TokioExecutor>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages in 10 s", out.len()))
            .expect("consumer stream ended")
            .unwrap();
        out.push(message.deserialize().unwrap());
        consumer.ack(&message).await.unwrap();
    }
    out
}

/// Nothing more arrives within `wait`.
async fn assert_quiet(consumer: &mut Consumer<String, TokioExecutor>, wait: Duration) {
    if let Ok(Some(message)) = tokio::time::timeout(wait, consumer.next()).await {
        let text = message.map(|m| m.deserialize().unwrap());
        panic!("unexpected message {text:?}");
    }
}

fn expected(n: u32) -> Vec<String> {
    (0..n).map(|i| format!("message-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_produces_and_consumes_batched_and_unbatched_with_acks() {
    let server = standalone();
    let pulsar = client(&server.url).await;
    let topic = "persistent://public/default/rust-client";

    // Unbatched, then batched with LZ4, then batched with ZSTD: 300 messages in order.
    produce(&pulsar, topic, ProducerOptions::default(), 100).await;
    let batched = |compression| ProducerOptions {
        batch_size: Some(25),
        batch_timeout: Some(Duration::from_millis(5)),
        compression: Some(compression),
        ..ProducerOptions::default()
    };
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_options(batched(Compression::Lz4(CompressionLz4::default())))
        .build()
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for i in 100..200 {
        receipts.push(
            producer
                .send_non_blocking(format!("message-{i}"))
                .await
                .unwrap(),
        );
    }
    for receipt in receipts {
        tokio::time::timeout(Duration::from_secs(10), receipt)
            .await
            .expect("no receipt")
            .unwrap();
    }
    producer.close().await.unwrap();
    drop(producer);
    let mut zstd = batched(Compression::Zstd(CompressionZstd::default()));
    zstd.batch_size = Some(50);
    let mut producer = pulsar
        .producer()
        .with_topic(topic)
        .with_options(zstd)
        .build()
        .await
        .unwrap();
    let mut receipts = Vec::new();
    for i in 200..300 {
        receipts.push(
            producer
                .send_non_blocking(format!("message-{i}"))
                .await
                .unwrap(),
        );
    }
    for receipt in receipts {
        tokio::time::timeout(Duration::from_secs(10), receipt)
            .await
            .expect("no receipt")
            .unwrap();
    }
    producer.close().await.unwrap();

    // Exclusive: every message once, in order.
    let mut exclusive = subscribe(&pulsar, topic, "ex", SubType::Exclusive).await;
    assert_eq!(receive(&mut exclusive, 300).await, expected(300));

    // Shared: two consumers split the messages; together they see each one exactly once.
    let mut a = subscribe(&pulsar, topic, "shared", SubType::Shared).await;
    let mut b = subscribe(&pulsar, topic, "shared", SubType::Shared).await;
    let mut got = Vec::new();
    while got.len() < 300 {
        let (message, from_a) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                m = a.next() => (m, true),
                m = b.next() => (m, false),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of 300 shared messages in 10 s", got.len()));
        let message = message.expect("consumer stream ended").unwrap();
        got.push(message.deserialize().unwrap());
        if from_a {
            a.ack(&message).await.unwrap();
        } else {
            b.ack(&message).await.unwrap();
        }
    }
    got.sort_by_key(|t| t.trim_start_matches("message-").parse::<u32>().unwrap());
    assert_eq!(got, expected(300));
    assert_quiet(&mut a, Duration::from_millis(300)).await;
    a.close().await.unwrap();
    b.close().await.unwrap();

    // Half acked on the exclusive subscription then closed: a new consumer resumes after them.
    let mut producer = pulsar.producer().with_topic(topic).build().await.unwrap();
    for i in 300..310 {
        producer
            .send_non_blocking(format!("message-{i}"))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    producer.close().await.unwrap();
    let first = receive(&mut exclusive, 5).await;
    assert_eq!(
        first,
        (300..305)
            .map(|i| format!("message-{i}"))
            .collect::<Vec<_>>()
    );
    exclusive.close().await.unwrap();
    drop(exclusive);
    let mut resumed = subscribe(&pulsar, topic, "ex", SubType::Exclusive).await;
    let rest = receive(&mut resumed, 5).await;
    assert_eq!(
        rest,
        (305..310)
            .map(|i| format!("message-{i}"))
            .collect::<Vec<_>>()
    );
    assert_quiet(&mut resumed, Duration::from_millis(300)).await;
}

#[test]
fn produce_and_consume_commands_round_trip() {
    let server = standalone();
    let topic = "cli-round-trip";
    let run = |args: &[&str]| {
        let out = magnetar()
            .args(args)
            .env("MAGNETAR_SERVICE_URL", &server.url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    let (_, err) = run(&[
        "produce", topic, "-m", "hello", "-m", "world", "-n", "2", "--key", "k1",
    ]);
    assert!(err.contains("4 messages successfully produced"), "{err}");
    // --service-url wins over the environment.
    let out = magnetar()
        .args([
            "consume",
            topic,
            "-s",
            "cli",
            "-n",
            "4",
            "--initial-position",
            "earliest",
        ])
        .args(["--service-url", &server.url])
        .env("MAGNETAR_SERVICE_URL", "pulsar://127.0.0.1:1")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let contents: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("content:").map(|(_, c)| c))
        .collect();
    assert_eq!(contents, ["hello", "world", "hello", "world"], "{stdout}");
    assert!(stdout.contains("key:[k1]"), "{stdout}");
    assert!(
        stderr.contains("4 messages successfully consumed"),
        "{stderr}"
    );
    // Acked: the subscription has nothing left, so a second consume of 1 message would wait;
    // produce one more and only that one arrives.
    run(&["produce", topic, "-m", "after"]);
    let (stdout, _) = run(&["consume", topic, "-s", "cli", "-n", "1"]);
    assert!(stdout.contains("content:after"), "{stdout}");
}
