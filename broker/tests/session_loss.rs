#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! Losing the metadata session while the metadata store is unreachable: the broker can no
//! longer prove it owns anything, so every topic of every lost bundle stops serving at once —
//! each producer gets CLOSE_PRODUCER and each consumer CLOSE_CONSUMER (clients look the topic
//! up again) — even though closing the topics' storage waits on the unreachable store. Once
//! the store is back, the broker owns the topics again.
//!
//! Raw client against a cluster broker (`Broker`) over a metadata store that can be cut
//! off ([`Partitionable`]: every call waits while it is cut, as over a partition).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::SinkExt;
use magnetar_metadata::{
    DeleteOutcome, Expected, Listing, MemoryStore, MetadataError, MetadataStore, PutOutcome,
    Session, Version, Versioned, WatchStream,
};
use magnetar_proto::pulsar::Frame;
use magnetar_proto::pulsar::api::command_subscribe::SubType;
use tokio::sync::watch;

use magnetar_testkit::local::*;
use magnetar_testkit::wait;
use magnetar_testkit::wire::*;

/// A [`MemoryStore`] whose every call waits while the store is cut off.
#[derive(Debug)]
struct Partitionable {
    inner: MemoryStore,
    cut: watch::Sender<bool>,
}

impl Partitionable {
    async fn reachable(&self) {
        let mut rx = self.cut.subscribe();
        let _ = rx.wait_for(|cut| !*cut).await;
    }
}

#[async_trait]
impl MetadataStore for Partitionable {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, MetadataError> {
        self.reachable().await;
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
    ) -> Result<PutOutcome, MetadataError> {
        self.reachable().await;
        self.inner.put(key, value, expected).await
    }
    async fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
        session: &Session,
    ) -> Result<PutOutcome, MetadataError> {
        self.reachable().await;
        self.inner
            .put_ephemeral(key, value, expected, session)
            .await
    }
    async fn delete(&self, key: &str, expected: Expected) -> Result<DeleteOutcome, MetadataError> {
        self.reachable().await;
        self.inner.delete(key, expected).await
    }
    async fn list(&self, prefix: &str) -> Result<Listing, MetadataError> {
        self.reachable().await;
        self.inner.list(prefix).await
    }
    async fn watch(&self, prefix: &str, after: Version) -> Result<WatchStream, MetadataError> {
        self.reachable().await;
        self.inner.watch(prefix, after).await
    }
    async fn create_session(&self, ttl: Duration) -> Result<Session, MetadataError> {
        self.reachable().await;
        self.inner.create_session(ttl).await
    }
}

fn producer(topic: &str, request_id: u64) -> Frame {
    producer_frame(topic, request_id)
}

fn subscribe(topic: &str, request_id: u64) -> Frame {
    subscribe_frame(topic, "s", SubType::Shared, 1, request_id)
}

fn send(seq: u64) -> Frame {
    send_frame(seq, b"m")
}

/// Sends `frame` until the broker answers with something other than an error (the broker
/// answers errors while it has no session or lease), backing off 50 ms between attempts as a
/// client does; returns that answer.
async fn until_ok(conn: &mut Conn, make: impl Fn(u64) -> Frame, request_id: &mut u64) -> Frame {
    wait::retrying(
        "the broker answers without an error",
        Duration::from_secs(20),
        Duration::from_millis(50),
        async || {
            *request_id += 1;
            conn.send(make(*request_id)).await.unwrap();
            let f = next(conn).await;
            f.command.error.is_none().then_some(f)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_stops_every_topic_at_once_while_the_store_is_unreachable() {
    let (cut, _) = watch::channel(false);
    let store = Arc::new(Partitionable {
        inner: MemoryStore::new(),
        cut,
    });
    let cluster = LocalCluster::new(Arc::clone(&store) as Arc<dyn MetadataStore>).await;
    let node = cluster.node().await;

    // Several topics, each with a producer that wrote and a consumer.
    let topics: Vec<String> = (0..4)
        .map(|i| format!("persistent://public/default/lost-{i}"))
        .collect();
    let mut conns = Vec::new();
    for topic in &topics {
        let mut conn = connect(node.local_addr()).await;
        let mut request_id = 0;
        let ok = until_ok(&mut conn, |r| producer(topic, r), &mut request_id).await;
        assert!(ok.command.producer_success.is_some(), "{:?}", ok.command);
        conn.send(send(1)).await.unwrap();
        assert!(next(&mut conn).await.command.send_receipt.is_some());
        let ok = until_ok(&mut conn, |r| subscribe(topic, r), &mut request_id).await;
        assert!(ok.command.success.is_some(), "{:?}", ok.command);
        conns.push((conn, request_id));
    }

    // The store becomes unreachable and the session ends (its ttl ran out meanwhile).
    store.cut.send_replace(true);
    store.inner.expire_all_sessions();

    for (topic, (conn, _)) in topics.iter().zip(conns.iter_mut()) {
        let (mut producer_closed, mut consumer_closed) = (false, false);
        while !(producer_closed && consumer_closed) {
            let f = next_within(conn, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "{topic} still served after the session was lost \
                         (producer closed: {producer_closed}, consumer closed: {consumer_closed})"
                    )
                });
            producer_closed |= f.command.close_producer.is_some();
            consumer_closed |= f.command.close_consumer.is_some();
        }
    }
    // A SEND for the closed producer is not served.
    let (conn, _) = &mut conns[0];
    conn.send(send(2)).await.unwrap();
    if let Some(f) = next_within(conn, Duration::from_millis(500)).await {
        assert!(f.command.send_receipt.is_none(), "{:?}", f.command);
    }

    // The store is back: the broker opens a new session and owns the topics again.
    let renewals = node.session().renewals();
    let lost_generation = *renewals.borrow();
    store.cut.send_replace(false);
    wait::until(
        "the broker opens a new session",
        Duration::from_secs(20),
        || *renewals.borrow() > lost_generation,
    )
    .await;
    for (topic, (conn, request_id)) in topics.iter().zip(conns.iter_mut()) {
        let ok = until_ok(conn, |r| producer(topic, r), request_id).await;
        assert!(ok.command.producer_success.is_some(), "{:?}", ok.command);
        conn.send(send(3)).await.unwrap();
        let receipt = loop {
            let f = next(conn).await;
            if let Some(r) = f.command.send_receipt {
                break r;
            }
        };
        assert_eq!(receipt.sequence_id, 3);
    }
    node.shutdown().await;
}
