#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! Moving bundles between two cluster brokers (issue 13): an unload to a destination hands the
//! bundle over — the target owns it and has its topics open *before* the clients hear
//! CLOSE_PRODUCER / CLOSE_CONSUMER naming the target (PIP-307 `assignedBrokerServiceUrl`) —;
//! an unload order reaches the owner from another broker; a drain moves every bundle; bad
//! destinations are refused; load reports are published and an unowned bundle is assigned to
//! the broker with fewer bundles of its namespace.
//!
//! Raw client against two in-process cluster brokers over one metadata store and bookie.

use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use magnetar_broker::cluster::bundle::Bundle;
use magnetar_broker::error::BrokerError;
use magnetar_broker::runtime::broker::Broker;
use magnetar_broker::topic_name::TopicName;
use magnetar_metadata::{MemoryStore, MetadataStore};
use magnetar_proto::pulsar::api::command_subscribe::SubType;

use magnetar_testkit::local::*;
use magnetar_testkit::wait;
use magnetar_testkit::wire::*;

/// Two registered brokers with fast load reports.
async fn two_brokers() -> (LocalCluster, Broker, Broker) {
    let store: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
    let cluster = LocalCluster::new(store).await;
    let fast = |o: &mut magnetar_broker::runtime::broker::BrokerOptions| {
        o.service.load_balancer.report_update_min_interval = Duration::from_millis(100);
        o.service.load_balancer.shedding_enabled = false;
    };
    let a = cluster.node_with(fast).await;
    let b = cluster.node_with(fast).await;
    let (a_admin, b_admin) = (
        format!("http://{}", a.local_addr()),
        format!("http://{}", b.local_addr()),
    );
    a.register_admin_url(&a_admin).await.unwrap();
    b.register_admin_url(&b_admin).await.unwrap();
    (cluster, a, b)
}

async fn bundle_of(node: &Broker, topic: &str) -> Bundle {
    let t: TopicName = topic.parse().unwrap();
    node.service().bundle_of(&t).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unload_hands_the_bundle_over_and_sends_clients_straight_to_the_target() {
    let (_cluster, a, b) = two_brokers().await;
    let topic = "persistent://public/default/moving";
    // PRODUCER and SUBSCRIBE straight to A: it takes the bundle.
    let mut conn = connect(a.local_addr()).await;
    conn.send(producer_frame(topic, 1)).await.unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());
    for seq in 1..=3 {
        conn.send(send_frame(seq, b"before")).await.unwrap();
        assert!(next(&mut conn).await.command.send_receipt.is_some());
    }
    conn.send(subscribe_frame(topic, "s", SubType::Shared, 7, 2))
        .await
        .unwrap();
    assert!(next(&mut conn).await.command.success.is_some());
    let bundle = bundle_of(&a, topic).await;
    assert!(a.service().ownership().is_owned(&bundle));

    // Refused: an unknown destination, the owner itself, a bundle B does not own.
    for bad in ["pulsar://127.0.0.1:1", a.service_url()] {
        let e = a
            .service()
            .unload_bundle(&bundle, Some(bad))
            .await
            .unwrap_err();
        assert!(matches!(e, BrokerError::BadRequest(_)), "{bad}: {e}");
    }
    assert!(
        a.service().ownership().is_owned(&bundle),
        "a refused unload changes nothing"
    );
    assert!(matches!(
        b.service().unload_bundle(&bundle, None).await.unwrap_err(),
        BrokerError::NotOwner(_)
    ));

    let t: TopicName = topic.parse().unwrap();
    let unloaded = a
        .service()
        .unload_bundle(&bundle, Some(b.service_url()))
        .await
        .unwrap();
    assert_eq!(unloaded.to.as_deref(), Some(b.service_url()));
    assert_eq!(unloaded.topics, 1);
    // By the time the unload returns (clients told), B owns the bundle; it opens the handed-over
    // topic on its own, before any client asks for it there.
    assert!(b.service().ownership().is_owned(&bundle));
    assert!(!a.service().ownership().is_owned(&bundle));
    wait::until(
        "the target opens the handed-over topic",
        Duration::from_secs(10),
        || b.service().loaded_topic(&t).is_some(),
    )
    .await;
    // B prepared the topic's next ledger while A still served it, and its open wrote to it.
    assert_eq!(b.service().managed_ledgers().prepared_used_count(), 1);
    assert_eq!(b.service().managed_ledgers().prepared_count(), 0);

    let (mut producer_to, mut consumer_to) = (None, None);
    while producer_to.is_none() || consumer_to.is_none() {
        let f = next_within(&mut conn, Duration::from_secs(10))
            .await
            .expect("CLOSE_PRODUCER and CLOSE_CONSUMER arrive");
        if let Some(c) = f.command.close_producer {
            producer_to = Some(c.assigned_broker_service_url);
        }
        if let Some(c) = f.command.close_consumer {
            consumer_to = Some(c.assigned_broker_service_url);
        }
    }
    assert_eq!(producer_to.unwrap().as_deref(), Some(b.service_url()));
    assert_eq!(consumer_to.unwrap().as_deref(), Some(b.service_url()));

    // The client reconnects to B directly: the producer goes on, the consumer gets everything.
    let mut at_b = connect(b.local_addr()).await;
    at_b.send(producer_frame(topic, 1)).await.unwrap();
    assert!(next(&mut at_b).await.command.producer_success.is_some());
    at_b.send(send_frame(4, b"after")).await.unwrap();
    let receipt = next(&mut at_b)
        .await
        .command
        .send_receipt
        .expect("stored at B");
    assert_eq!(receipt.sequence_id, 4);
    at_b.send(subscribe_frame(topic, "s", SubType::Shared, 7, 2))
        .await
        .unwrap();
    assert!(next(&mut at_b).await.command.success.is_some());
    flow(&mut at_b, 7, 100).await;
    let mut got = 0;
    while got < 4 {
        let f = next_within(&mut at_b, Duration::from_secs(10))
            .await
            .expect("the four messages reach the consumer at B");
        got += usize::from(f.command.message.is_some());
    }

    // An unload order from A (which does not own it now) reaches B, the owner.
    a.service()
        .unload(&bundle, Some(a.service_url()))
        .await
        .unwrap();
    assert!(
        a.service().ownership().is_owned(&bundle),
        "moved back through an order"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_every_bundle_to_the_other_broker() {
    let (_cluster, a, b) = two_brokers().await;
    let mut owned = Vec::new();
    for i in 0..12 {
        let topic = format!("persistent://public/default/drain-{i}");
        let t: TopicName = topic.parse().unwrap();
        a.service().create_topic(&t).await.unwrap();
        owned.push(bundle_of(&a, &topic).await);
    }
    owned.sort();
    owned.dedup();
    assert!(owned.len() > 1, "the topics span several bundles");
    let moved = a.service().drain().await;
    assert_eq!(moved, owned.len());
    assert!(a.service().ownership().owned_bundles().is_empty());
    for bundle in &owned {
        assert!(b.service().ownership().is_owned(bundle), "{bundle} at B");
    }
    // A draining broker takes nothing new and sends lookups elsewhere.
    let t: TopicName = "persistent://public/default/after-drain".parse().unwrap();
    assert_eq!(
        a.service().lookup(&t, false).await.unwrap().as_deref(),
        Some(b.service_url())
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_are_published_and_unowned_bundles_go_to_the_less_loaded_broker() {
    let (_cluster, a, b) = two_brokers().await;
    // A takes one bundle of public/default.
    let first = "persistent://public/default/first";
    let t: TopicName = first.parse().unwrap();
    a.service().create_topic(&t).await.unwrap();
    let first_bundle = bundle_of(&a, first).await;
    let service = Arc::clone(a.service());
    let (url, listed) = (a.service_url().to_owned(), first_bundle.to_string());
    wait::until_async(
        "A's report lists its bundle",
        Duration::from_secs(10),
        || {
            let (service, url, listed) = (Arc::clone(&service), url.clone(), listed.clone());
            async move {
                let reports = service.load_reports().await;
                reports
                    .iter()
                    .any(|r| {
                        r.pulsar_service_url == url
                            && r.bundles.contains(&listed)
                            && r.num_topics == 1
                    })
                    .then_some(())
            }
        },
    )
    .await;
    let reports = a.service().load_reports().await;
    assert_eq!(reports.len(), 2, "both brokers report");
    let report = a.service().load_report().await;
    assert_eq!(report.pulsar_service_url, a.service_url());
    assert!(report.memory.limit > 0.0 && report.cpu.limit > 0.0);

    // A topic of another bundle of the same namespace, looked up at A: B holds none of the
    // namespace's bundles, so the lookup names B (and B, asked authoritatively, takes it).
    let other = (0..1000)
        .map(|i| format!("persistent://public/default/other-{i}"))
        .find(|name| {
            let t: TopicName = name.parse().unwrap();
            magnetar_broker::cluster::bundle::NamespaceBundles::even(t.namespace().clone(), 4)
                .find(&t)
                != first_bundle
        })
        .unwrap();
    let t: TopicName = other.parse().unwrap();
    assert_eq!(
        a.service().lookup(&t, false).await.unwrap().as_deref(),
        Some(b.service_url())
    );
    assert_eq!(b.service().lookup(&t, true).await.unwrap(), None);
    let bundle = bundle_of(&b, &other).await;
    assert!(b.service().ownership().is_owned(&bundle));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_bundle_keeps_serving_its_topics_and_a_retired_parent_cannot_be_taken() {
    use magnetar_broker::service::SplitAlgorithm;
    let (_cluster, a, b) = two_brokers().await;
    // Topics until one bundle holds three of them.
    let mut names = Vec::new();
    let bundle = loop {
        let name = format!("persistent://public/default/split-{}", names.len());
        let t: TopicName = name.parse().unwrap();
        a.service().create_topic(&t).await.unwrap();
        names.push(name);
        let first = bundle_of(&a, &names[0]).await;
        let mut same = Vec::new();
        for n in &names {
            if bundle_of(&a, n).await == first {
                same.push(n.clone());
            }
        }
        if same.len() >= 3 {
            names = same;
            break first;
        }
    };
    // A producer stays connected across the split.
    let mut conn = connect(a.local_addr()).await;
    conn.send(producer_frame(&names[0], 1)).await.unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());

    let children = a
        .service()
        .split_bundle(&bundle, &SplitAlgorithm::RangeEquallyDivide, false)
        .await
        .unwrap();
    assert_eq!(children.len(), 2);
    let mid = bundle.range.lower + (bundle.range.upper - bundle.range.lower) / 2;
    assert_eq!(
        (children[0].range.upper, children[1].range.lower),
        (mid, mid)
    );
    let ns = bundle.namespace.clone();
    let now = a.service().namespace_bundles(&ns).await.unwrap();
    assert_eq!(now.len(), 5);
    assert!(!now.contains(&bundle) && now.contains(&children[0]) && now.contains(&children[1]));
    for child in &children {
        assert!(a.service().ownership().is_owned(child));
    }
    assert!(!a.service().ownership().is_owned(&bundle));
    for n in &names {
        let t: TopicName = n.parse().unwrap();
        let topic = a.service().loaded_topic(&t).expect("still loaded");
        assert_eq!(
            topic.bundle(),
            bundle_of(&a, n).await,
            "{n} belongs to its child"
        );
    }
    conn.send(send_frame(1, b"after the split")).await.unwrap();
    assert!(
        next(&mut conn).await.command.send_receipt.is_some(),
        "still served"
    );

    // B still holding the old boundaries cannot serve the retired parent.
    let e = b.service().claim(&bundle, true).await.unwrap_err();
    assert!(matches!(e, BrokerError::NotReady(_)), "{e}");
    assert!(!b.service().ownership().is_owned(&bundle));

    // Topic-count halving of a child with fewer than two topics is refused; a bundle that is
    // not one of the namespace's is not found.
    let lonely = children.iter().find(|c| {
        names
            .iter()
            .filter(|n| {
                let t: TopicName = n.parse().unwrap();
                c.range
                    .contains(magnetar_broker::cluster::bundle::topic_hash(&t))
            })
            .count()
            < 2
    });
    if let Some(c) = lonely {
        assert!(matches!(
            a.service()
                .split_bundle(c, &SplitAlgorithm::TopicCountEquallyDivide, false)
                .await,
            Err(BrokerError::NotAllowed(_))
        ));
    }
    assert!(matches!(
        a.service()
            .split(&bundle, &SplitAlgorithm::RangeEquallyDivide, false)
            .await,
        Err(BrokerError::NotFound(_))
    ));

    // Split through B (not the owner): a split order; the children are handed over (unload).
    let busy = children
        .iter()
        .max_by_key(|c| {
            names
                .iter()
                .filter(|n| {
                    let t: TopicName = n.parse().unwrap();
                    c.range
                        .contains(magnetar_broker::cluster::bundle::topic_hash(&t))
                })
                .count()
        })
        .unwrap()
        .clone();
    b.service()
        .split(&busy, &SplitAlgorithm::TopicCountEquallyDivide, true)
        .await
        .unwrap();
    let after = a.service().namespace_bundles(&ns).await.unwrap();
    assert_eq!(after.len(), 6);
    assert!(!after.contains(&busy));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_the_target_refuses_leaves_the_bundle_served() {
    let (_cluster, a, b) = two_brokers().await;
    let topic = "persistent://public/default/refused";
    let mut conn = connect(a.local_addr()).await;
    conn.send(producer_frame(topic, 1)).await.unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());
    conn.send(send_frame(1, b"one")).await.unwrap();
    assert!(next(&mut conn).await.command.send_receipt.is_some());
    let bundle = bundle_of(&a, topic).await;

    // B drains (it takes no bundles) but still looks registered to A.
    assert_eq!(b.service().drain().await, 0);
    let record = magnetar_broker::cluster::registry::BrokerRecord {
        pulsar_service_url: b.service_url().to_owned(),
        web_service_url: format!("http://{}", b.local_addr()),
    };
    magnetar_broker::cluster::registry::register(
        &b.service().policies().store(),
        &b.session().current(),
        &record,
    )
    .await
    .unwrap();

    let unloaded = a
        .service()
        .unload_bundle(&bundle, Some(b.service_url()))
        .await
        .unwrap();
    assert_eq!(unloaded.to, None, "the target did not take it");
    assert!(!b.service().ownership().is_owned(&bundle));
    // The client was sent to the named target as soon as the lease was free; B refuses it,
    // and the topic's lookup finds A serving it again.
    let f = next_within(&mut conn, Duration::from_secs(10))
        .await
        .expect("CLOSE_PRODUCER");
    let close = f.command.close_producer.expect("CLOSE_PRODUCER");
    assert_eq!(
        close.assigned_broker_service_url.as_deref(),
        Some(b.service_url())
    );
    let mut at_b = connect(b.local_addr()).await;
    at_b.send(producer_frame(topic, 1)).await.unwrap();
    let refused = next(&mut at_b).await.command;
    assert!(
        refused.producer_success.is_none() && refused.error.is_some(),
        "{refused:?}"
    );
    assert!(!b.service().ownership().is_owned(&bundle));
    let t: TopicName = topic.parse().unwrap();
    assert_eq!(a.service().lookup(&t, true).await.unwrap(), None);
    conn.send(producer_frame(topic, 2)).await.unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());
    conn.send(send_frame(2, b"two")).await.unwrap();
    assert!(next(&mut conn).await.command.send_receipt.is_some());
    a.shutdown().await;
    b.shutdown().await;
}

/// A graceful unload while SENDs are in flight: every message the old owner stored was
/// receipted *before* CLOSE_PRODUCER. A receipt after it would reach a client whose producer
/// moved on (it drops it, "invalid producer id") and resends the message: a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_unload_receipts_every_stored_message_before_close_producer() {
    let (_cluster, a, b) = two_brokers().await;
    let topic = "persistent://public/default/receipts-first";
    let mut conn = connect(a.local_addr()).await;
    conn.send(producer_frame(topic, 1)).await.unwrap();
    assert!(next(&mut conn).await.command.producer_success.is_some());
    conn.send(send_frame(1, b"first")).await.unwrap();
    assert!(next(&mut conn).await.command.send_receipt.is_some());
    let bundle = bundle_of(&a, topic).await;

    // SENDs pipelined while the bundle is handed over: some are stored and receipted, the
    // rest arrive after the producer was detached and are ignored (the client resends them).
    const SENDS: u64 = 2_000;
    for seq in 2..=SENDS {
        conn.send(send_frame(seq, b"in flight")).await.unwrap();
    }
    let mut receipted = 1u64;
    let mut unload = None;
    loop {
        let f = next_within(&mut conn, Duration::from_secs(10))
            .await
            .expect("CLOSE_PRODUCER arrives");
        assert!(f.command.send_error.is_none(), "{:?}", f.command);
        if f.command.send_receipt.is_some() {
            receipted += 1;
        }
        if f.command.close_producer.is_some() {
            break;
        }
        if receipted == 10 && unload.is_none() {
            let service = Arc::clone(a.service());
            let (bundle, target) = (bundle.clone(), b.service_url().to_owned());
            unload = Some(tokio::spawn(async move {
                service.unload_bundle(&bundle, Some(&target)).await.unwrap()
            }));
        }
    }
    assert!(
        receipted < SENDS,
        "the unload came after every SEND: nothing was in flight"
    );
    let unload = unload.expect("the unload started");
    assert_eq!(unload.await.unwrap().to.as_deref(), Some(b.service_url()));

    // What the old owner stored is exactly what it receipted before the close.
    let t: TopicName = topic.parse().unwrap();
    wait::until(
        "the target opens the handed-over topic",
        Duration::from_secs(10),
        || b.service().loaded_topic(&t).is_some(),
    )
    .await;
    let stored = b
        .service()
        .loaded_topic(&t)
        .unwrap()
        .managed_ledger()
        .stats()
        .entries;
    assert_eq!(
        stored, receipted,
        "messages stored without a receipt before CLOSE_PRODUCER would be sent twice"
    );
}
