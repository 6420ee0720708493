#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

//! GET_TOPICS_OF_NAMESPACE on the wire, against an in-process standalone on a real socket:
//! the pattern a pattern consumer sends is evaluated on the broker, the answer carries
//! Pulsar's list hash and leaves the list out when the client's hash is current, and a list
//! too large for one frame is refused with a reason instead of sent.

use futures::SinkExt;
use magnetar_broker::protocol::topic_list;
use magnetar_broker::topic_name::TopicName;
use magnetar_proto::pulsar::Frame;
use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::command_get_topics_of_namespace::Mode;
use magnetar_proto::pulsar::api::{
    BaseCommand, CommandGetTopicsOfNamespace, CommandGetTopicsOfNamespaceResponse, ServerError,
};
use magnetar_testkit::local::standalone;
use magnetar_testkit::wire::*;

async fn ask(
    conn: &mut Conn,
    request_id: u64,
    pattern: Option<&str>,
    hash: Option<&str>,
    mode: Mode,
) -> Result<CommandGetTopicsOfNamespaceResponse, (i32, String)> {
    conn.send(Frame::command(BaseCommand {
        get_topics_of_namespace: Some(Box::new(CommandGetTopicsOfNamespace {
            request_id,
            namespace: "public/default".into(),
            mode: Some(mode as i32),
            topics_pattern: pattern.map(str::to_owned),
            topics_hash: hash.map(str::to_owned),
            ..Default::default()
        })),
        ..cmd(Type::GetTopicsOfNamespace)
    }))
    .await
    .unwrap();
    let reply = next(conn).await.command;
    if let Some(e) = reply.error {
        assert_eq!(e.request_id, request_id);
        return Err((e.error, e.message));
    }
    let r = *reply
        .get_topics_of_namespace_response
        .expect("a GET_TOPICS_OF_NAMESPACE_RESPONSE or an ERROR");
    assert_eq!(r.request_id, request_id);
    Ok(r)
}

const TOPICS: [&str; 4] = ["orders-eu", "orders-us", "payments", "audit"];

fn full(local: &str) -> String {
    format!("persistent://public/default/{local}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_filtering_and_the_list_hash_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = standalone(dir.path(), |_| {}).await;
    let service = standalone.service();
    for local in TOPICS {
        let name: TopicName = full(local).parse().unwrap();
        service.create_topic(&name).await.unwrap();
    }
    let parts: TopicName = full("orders-all").parse().unwrap();
    service
        .policies()
        .create_partitioned(&parts, 2)
        .await
        .unwrap();
    service.create_partition_records(&parts, 2).await.unwrap();
    let mut conn = connect(standalone.local_addr()).await;

    let mut everything: Vec<String> = TOPICS.iter().map(|t| full(t)).collect();
    everything.extend([
        full("orders-all-partition-0"),
        full("orders-all-partition-1"),
    ]);
    everything.sort();
    let all = ask(&mut conn, 1, None, None, Mode::Persistent)
        .await
        .unwrap();
    let mut got = all.topics.clone();
    got.sort();
    assert_eq!(got, everything);
    assert_eq!(all.filtered, Some(false));
    assert_eq!(all.changed, Some(true));
    assert_eq!(
        all.topics_hash.as_deref(),
        Some(topic_list::hash(&everything).as_str())
    );

    // The pattern is applied on the broker: partitions by their topic's name, anchored.
    let orders = ask(
        &mut conn,
        2,
        Some("persistent://public/default/orders-.*"),
        None,
        Mode::Persistent,
    )
    .await
    .unwrap();
    let mut got = orders.topics.clone();
    got.sort();
    let expected: Vec<String> = [
        "orders-all-partition-0",
        "orders-all-partition-1",
        "orders-eu",
        "orders-us",
    ]
    .iter()
    .map(|t| full(t))
    .collect();
    assert_eq!(got, expected);
    assert_eq!(orders.filtered, Some(true));

    // A client holding the current list is told it is unchanged, without the list.
    let again = ask(
        &mut conn,
        3,
        Some("persistent://public/default/orders-.*"),
        orders.topics_hash.as_deref(),
        Mode::Persistent,
    )
    .await
    .unwrap();
    assert_eq!(again.changed, Some(false));
    assert!(again.topics.is_empty());
    assert_eq!(again.topics_hash, orders.topics_hash);
    // A new matching topic changes the hash and the list comes again.
    service
        .create_topic(&full("orders-asia").parse().unwrap())
        .await
        .unwrap();
    let changed = ask(
        &mut conn,
        4,
        Some("persistent://public/default/orders-.*"),
        orders.topics_hash.as_deref(),
        Mode::Persistent,
    )
    .await
    .unwrap();
    assert_eq!(changed.changed, Some(true));
    assert_eq!(changed.topics.len(), 5);
    assert_ne!(changed.topics_hash, orders.topics_hash);

    // Pulsar's default limit of 50 characters: a longer pattern is left to the client.
    let long = format!("persistent://public/default/(orders|{})-.*", "x".repeat(40));
    let unfiltered = ask(&mut conn, 5, Some(&long), None, Mode::Persistent)
        .await
        .unwrap();
    assert_eq!(unfiltered.filtered, Some(false));
    assert_eq!(unfiltered.topics.len(), everything.len() + 1);

    // No non-persistent topics exist here.
    let np = ask(&mut conn, 6, None, None, Mode::NonPersistent)
        .await
        .unwrap();
    assert!(np.topics.is_empty());
    standalone.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_too_large_for_one_frame_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Room for about two topic names per answer.
    let standalone = standalone(dir.path(), |o| o.broker.service.max_message_size = 80).await;
    let service = standalone.service();
    for local in TOPICS {
        service
            .create_topic(&full(local).parse().unwrap())
            .await
            .unwrap();
    }
    let mut conn = connect(standalone.local_addr()).await;
    let (code, message) = ask(&mut conn, 1, None, None, Mode::Persistent)
        .await
        .expect_err("four names do not fit in 80 bytes");
    assert_eq!(code, ServerError::NotAllowedError as i32);
    assert!(message.contains("4 matching topics"), "{message}");
    // The connection stays usable, and a narrower pattern is answered.
    let one = ask(
        &mut conn,
        2,
        Some("public/default/audit"),
        None,
        Mode::Persistent,
    )
    .await
    .unwrap();
    assert_eq!(one.topics, vec![full("audit")]);
    standalone.shutdown().await;
}
