//! The dispatchers against a recording [`ConsumerSink`] (no sockets): a real managed ledger
//! over in-process bookies, a subscription actor, consumers that are recording sinks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::{BaseCommand, MessageMetadata};
use tokio::sync::Notify;

use super::*;
use magnetar_managed_ledger::ManagedLedgerConfig;
use magnetar_managed_ledger::test_support::Cluster;
use magnetar_metadata::clock::Clock as _;

/// A client that records what it is sent; it can be made "full" (not reading).
#[derive(Debug, Default)]
struct RecordingSink {
    delivered: Mutex<Vec<Position>>,
    controls: Mutex<Vec<BaseCommand>>,
    full: AtomicBool,
    waiters: Mutex<Vec<Arc<Notify>>>,
    changed: Notify,
}

impl ConsumerSink for RecordingSink {
    fn try_deliver(&self, frame: MessageFrame) -> Result<(), NotQueued> {
        if self.full.load(Ordering::SeqCst) {
            return Err(NotQueued::Full);
        }
        let id = frame.command.message.expect("a MESSAGE").message_id;
        self.delivered
            .lock()
            .unwrap()
            .push(Position::new(id.ledger_id, id.entry_id));
        self.changed.notify_waiters();
        Ok(())
    }

    fn notify_when_writable(&self, wake: &Arc<Notify>) -> bool {
        self.waiters.lock().unwrap().push(Arc::clone(wake));
        !self.full.load(Ordering::SeqCst)
    }

    fn send_control(&self, command: BaseCommand) {
        self.controls.lock().unwrap().push(command);
        self.changed.notify_waiters();
    }
}

impl RecordingSink {
    fn delivered(&self) -> Vec<Position> {
        self.delivered.lock().unwrap().clone()
    }

    /// Waits (at most 10 s) until `cond` holds of this sink.
    async fn until(&self, what: &str, cond: impl Fn(&RecordingSink) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if cond(self) {
                    return;
                }
                // Bounded: a change between the check and here is caught by the next round.
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    /// Reads again: room, and the parked subscription is woken.
    fn drain(&self) {
        self.full.store(false, Ordering::SeqCst);
        for w in self.waiters.lock().unwrap().drain(..) {
            w.notify_one();
        }
    }
}

struct Fixture {
    _cluster: Cluster,
    ml: Arc<ManagedLedger>,
    sub: Arc<Subscription>,
}

async fn fixture(name: &str) -> Fixture {
    fixture_on(name, magnetar_metadata::clock::system()).await
}

/// A fixture whose managed ledger, hence subscription, runs on `clock`.
async fn fixture_on(name: &str, clock: magnetar_metadata::clock::SharedClock) -> Fixture {
    let cluster = Cluster::start(1).await;
    let config = ManagedLedgerConfig {
        ensemble_size: 1,
        write_quorum: 1,
        ack_quorum: 1,
        ..Default::default()
    };
    let ml = cluster
        .factory()
        .with_clock(clock)
        .open(&format!("public/default/persistent/{name}"), config)
        .await
        .unwrap();
    let cursor = ml
        .open_cursor("sub", InitialPosition::Earliest)
        .await
        .unwrap();
    let sub = Subscription::start(
        name.into(),
        "sub".into(),
        Arc::clone(&ml),
        cursor,
        None,
        100,
    );
    Fixture {
        _cluster: cluster,
        ml,
        sub,
    }
}

/// Writes `n` messages, each with `key(i)` as partition key; returns their positions.
async fn publish(
    ml: &ManagedLedger,
    n: usize,
    key: impl Fn(usize) -> Option<String>,
) -> Vec<Position> {
    let mut out = Vec::new();
    for i in 0..n {
        let metadata = MessageMetadata {
            producer_name: "p".into(),
            sequence_id: i as u64,
            publish_time: 1,
            partition_key: key(i),
            ..Default::default()
        };
        let payload = Payload::new(&metadata, format!("m{i}").as_bytes());
        out.push(ml.append_wait(payload.entry()).await.unwrap());
    }
    out
}

async fn consumer(
    sub: &Subscription,
    key: u64,
    sub_type: SubType,
    permits: u32,
) -> Arc<RecordingSink> {
    let sink = Arc::new(RecordingSink::default());
    sub.add_consumer(ConsumerSpec {
        key,
        consumer_id: key,
        name: format!("c{key}"),
        priority: 0,
        sub_type,
        key_shared: KeySharedPolicy::default(),
        conn: Arc::clone(&sink) as Arc<dyn ConsumerSink>,
    })
    .await
    .unwrap();
    sub.flow(key, permits).await;
    sink
}

#[tokio::test]
async fn shared_goes_round_robin_and_respects_permits() {
    let f = fixture("shared-rr").await;
    let written = publish(&f.ml, 10, |_| None).await;
    let a = consumer(&f.sub, 1, SubType::Shared, 3).await;
    let b = consumer(&f.sub, 2, SubType::Shared, 100).await;
    b.until("the rest at b", |s| {
        s.delivered().len() + a.delivered().len() == 10
    })
    .await;
    assert_eq!(a.delivered().len(), 3, "a had 3 permits");
    let mut all: Vec<Position> = a.delivered().into_iter().chain(b.delivered()).collect();
    all.sort();
    assert_eq!(all, written, "each message once");
}

#[tokio::test]
async fn exclusive_and_failover_deliver_to_the_active_consumer_only() {
    let f = fixture("exclusive").await;
    let a = consumer(&f.sub, 1, SubType::Exclusive, 100).await;
    let refused = f
        .sub
        .add_consumer(ConsumerSpec {
            key: 2,
            consumer_id: 2,
            name: "c2".into(),
            priority: 0,
            sub_type: SubType::Exclusive,
            key_shared: KeySharedPolicy::default(),
            conn: Arc::new(RecordingSink::default()),
        })
        .await;
    assert!(
        matches!(refused, Err(BrokerError::ConsumerBusy(_))),
        "{refused:?}"
    );
    let written = publish(&f.ml, 5, |_| None).await;
    a.until("all at a", |s| s.delivered().len() == 5).await;
    assert_eq!(a.delivered(), written, "in order");

    let f = fixture("failover").await;
    let first = consumer(&f.sub, 1, SubType::Failover, 100).await;
    let second = consumer(&f.sub, 2, SubType::Failover, 100).await;
    let written = publish(&f.ml, 5, |_| None).await;
    first
        .until("all at the active one", |s| s.delivered().len() == 5)
        .await;
    assert_eq!(first.delivered(), written);
    assert!(second.delivered().is_empty());
    // Each was told whether it is active.
    let active = |s: &RecordingSink| {
        s.controls
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|c| c.r#type == Type::ActiveConsumerChange as i32)
            .find_map(|c| c.active_consumer_change.as_ref().and_then(|a| a.is_active))
    };
    second
        .until("an ACTIVE_CONSUMER_CHANGE", |s| active(s).is_some())
        .await;
    assert_eq!(active(&first), Some(true));
    assert_eq!(active(&second), Some(false));
}

#[tokio::test]
async fn key_shared_keeps_each_key_on_one_consumer() {
    let f = fixture("key-shared").await;
    let a = consumer(&f.sub, 1, SubType::KeyShared, 1000).await;
    let b = consumer(&f.sub, 2, SubType::KeyShared, 1000).await;
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
    let written = publish(&f.ml, 80, |i| Some(keys[i % keys.len()].to_owned())).await;
    a.until("all delivered", |s| {
        s.delivered().len() + b.delivered().len() == 80
    })
    .await;
    let key_of: HashMap<Position, &str> = written
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, keys[i % keys.len()]))
        .collect();
    let owner = |s: &RecordingSink| -> std::collections::HashSet<&str> {
        s.delivered().iter().map(|p| key_of[p]).collect()
    };
    assert!(
        owner(&a).is_disjoint(&owner(&b)),
        "a key went to both consumers"
    );
    // Each consumer sees its keys in publish order.
    for s in [&a, &b] {
        let d = s.delivered();
        assert!(d.windows(2).all(|w| w[0] < w[1]), "out of order");
    }
}

#[tokio::test]
async fn a_full_consumer_is_parked_and_the_others_get_everything() {
    let f = fixture("parked").await;
    let slow = consumer(&f.sub, 1, SubType::Shared, 1000).await;
    slow.full.store(true, Ordering::SeqCst);
    let fast = consumer(&f.sub, 2, SubType::Shared, 1000).await;
    let written = publish(&f.ml, 50, |_| None).await;
    fast.until("all at the reading consumer", |s| s.delivered().len() == 50)
        .await;
    assert_eq!(fast.delivered(), written, "in order, none lost");
    assert!(slow.delivered().is_empty());
    // It reads again: woken, it gets new messages.
    slow.drain();
    let more = publish(&f.ml, 20, |_| None).await;
    slow.until("the parked consumer gets messages again", |s| {
        !s.delivered().is_empty()
    })
    .await;
    fast.until("all new ones delivered", |s| {
        s.delivered().len() + slow.delivered().len() == 70
    })
    .await;
    let mut news: Vec<Position> = slow
        .delivered()
        .into_iter()
        .chain(fast.delivered().into_iter().skip(50))
        .collect();
    news.sort();
    assert_eq!(news, more);
}

/// Writes one message to be delivered at `deliver_at_ms` (none: at once).
async fn publish_at(ml: &ManagedLedger, seq: u64, deliver_at_ms: Option<u64>) -> Position {
    let metadata = MessageMetadata {
        producer_name: "p".into(),
        sequence_id: seq,
        publish_time: 1,
        deliver_at_time: deliver_at_ms.map(|t| i64::try_from(t).unwrap()),
        ..Default::default()
    };
    let payload = Payload::new(&metadata, format!("m{seq}").as_bytes());
    ml.append_wait(payload.entry()).await.unwrap()
}

#[tokio::test]
async fn delayed_messages_come_exactly_when_the_manual_clock_reaches_their_time() {
    let clock = magnetar_metadata::clock::ManualClock::new(1_700_000_000_000);
    let f = fixture_on("delayed", clock.clone()).await;
    let c = consumer(&f.sub, 1, SubType::Shared, 100).await;
    let t0 = clock.now_ms();
    let later = publish_at(&f.ml, 0, Some(t0 + 10_000)).await;
    let latest = publish_at(&f.ml, 1, Some(t0 + 20_000)).await;
    let now = publish_at(&f.ml, 2, None).await;
    c.until("the message without a delay", |s| s.delivered() == [now])
        .await;

    // Just before its time: a message written now is dispatched (the dispatcher runs, and
    // due delayed entries go first), the delayed one is not.
    clock.advance(Duration::from_millis(9_999));
    let probe = publish_at(&f.ml, 3, None).await;
    c.until("the probe", |s| s.delivered().contains(&probe))
        .await;
    assert_eq!(c.delivered(), [now, probe], "nothing delayed is early");

    clock.advance(Duration::from_millis(1));
    c.until("the first delayed message, at its time", |s| {
        s.delivered().contains(&later)
    })
    .await;
    assert!(
        !c.delivered().contains(&latest),
        "the second is not due yet"
    );
    clock.advance(Duration::from_secs(10));
    c.until("the second delayed message", |s| {
        s.delivered().contains(&latest)
    })
    .await;
    assert_eq!(c.delivered(), [now, probe, later, latest]);
}
