//! A raw Pulsar-protocol client for the broker's wire tests: framed connection, CONNECT
//! handshake, bounded waits for the next frame, and the commands several tests send.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::command_subscribe::{InitialPosition, SubType};
use magnetar_proto::pulsar::api::{
    BaseCommand, CommandConnect, CommandConnected, CommandFlow, CommandProducer, CommandSend,
    CommandSubscribe, MessageMetadata,
};
use magnetar_proto::pulsar::{Frame, Payload, PulsarCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub type Conn = Framed<TcpStream, PulsarCodec>;

/// An empty command of type `ty`, to fill with struct update syntax.
pub fn cmd(ty: Type) -> BaseCommand {
    BaseCommand {
        r#type: ty as i32,
        ..Default::default()
    }
}

/// The next frame; fails the test after 10 s, on a closed connection or a bad frame.
pub async fn next(conn: &mut Conn) -> Frame {
    tokio::time::timeout(Duration::from_secs(10), conn.next())
        .await
        .expect("no frame within 10 s")
        .expect("connection closed")
        .expect("bad frame from the broker")
}

/// The next frame within `within`, if one comes.
pub async fn next_within(conn: &mut Conn, within: Duration) -> Option<Frame> {
    match tokio::time::timeout(within, conn.next()).await {
        Err(_) => None,
        Ok(f) => Some(
            f.expect("connection closed")
                .expect("bad frame from the broker"),
        ),
    }
}

/// Connects and handshakes (protocol version 21); returns the broker's CONNECTED.
pub async fn connect_reply(addr: SocketAddr) -> (Conn, CommandConnected) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut conn = Framed::new(stream, PulsarCodec::default());
    conn.send(Frame::command(BaseCommand {
        connect: Some(Box::new(CommandConnect {
            client_version: "raw-test".into(),
            protocol_version: Some(21),
            ..Default::default()
        })),
        ..cmd(Type::Connect)
    }))
    .await
    .unwrap();
    let connected = next(&mut conn).await.command.connected.expect("CONNECTED");
    (conn, *connected)
}

/// Connects and handshakes.
pub async fn connect(addr: SocketAddr) -> Conn {
    connect_reply(addr).await.0
}

/// FLOW: `permits` more messages for `consumer_id`.
pub async fn flow(conn: &mut Conn, consumer_id: u64, permits: u32) {
    conn.send(Frame::command(BaseCommand {
        flow: Some(Box::new(CommandFlow {
            consumer_id,
            message_permits: permits,
        })),
        ..cmd(Type::Flow)
    }))
    .await
    .unwrap();
}

/// PRODUCER for producer 1 on `topic`.
pub fn producer_frame(topic: &str, request_id: u64) -> Frame {
    Frame::command(BaseCommand {
        producer: Some(Box::new(CommandProducer {
            topic: topic.into(),
            producer_id: 1,
            request_id,
            producer_name: Some("p".into()),
            ..Default::default()
        })),
        ..cmd(Type::Producer)
    })
}

/// SEND of message `seq` of producer 1 (named "p"), with `body`.
pub fn send_frame(seq: u64, body: &[u8]) -> Frame {
    let metadata = MessageMetadata {
        producer_name: "p".into(),
        sequence_id: seq,
        publish_time: 1,
        ..Default::default()
    };
    let send = BaseCommand {
        send: Some(Box::new(CommandSend {
            producer_id: 1,
            sequence_id: seq,
            ..Default::default()
        })),
        ..cmd(Type::Send)
    };
    Frame::with_payload(send, Payload::new(&metadata, body))
}

/// SUBSCRIBE from the earliest message.
pub fn subscribe_frame(
    topic: &str,
    subscription: &str,
    sub_type: SubType,
    consumer_id: u64,
    request_id: u64,
) -> Frame {
    Frame::command(BaseCommand {
        subscribe: Some(Box::new(CommandSubscribe {
            topic: topic.into(),
            subscription: subscription.into(),
            sub_type: sub_type as i32,
            consumer_id,
            request_id,
            initial_position: Some(InitialPosition::Earliest as i32),
            ..Default::default()
        })),
        ..cmd(Type::Subscribe)
    })
}
