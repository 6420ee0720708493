//! Writes the hand-made seed inputs of every fuzz target into `fuzz/corpus/<target>/` (named
//! `seed-*`): valid frames, messages, records, names, requests and schemas for the
//! coverage-guided runs to start from. `cargo run -p magnetar-fuzz --bin fuzz-seeds`.

// A fuzz target fails by panicking: these are its assertions, not error handling.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::Path;

use bytes::Bytes;
use magnetar_proto::bookie as pb;
use magnetar_proto::pulsar::api::base_command::Type;
use magnetar_proto::pulsar::api::command_subscribe::SubType;
use magnetar_proto::pulsar::api::{
    BaseCommand, BrokerEntryMetadata, CommandAck, CommandConnect, CommandFlow, CommandLookupTopic,
    CommandProducer, CommandSend, CommandSubscribe, KeyValue, MessageIdData, MessageMetadata,
    SingleMessageMetadata,
};
use magnetar_proto::pulsar::frame::{encode_frame, prepend_broker_entry_metadata};
use magnetar_proto::pulsar::{Frame, Payload};
use prost::Message;

fn cmd(ty: Type) -> BaseCommand {
    BaseCommand {
        r#type: ty as i32,
        ..Default::default()
    }
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed written");
}

fn frame(f: &Frame) -> Vec<u8> {
    encode_frame(f, 1 << 20)
        .expect("seed frame encodes")
        .to_vec()
}

fn frames() {
    let connect = Frame::command(BaseCommand {
        connect: Some(Box::new(CommandConnect {
            client_version: "fuzz".into(),
            protocol_version: Some(21),
            ..Default::default()
        })),
        ..cmd(Type::Connect)
    });
    let producer = Frame::command(BaseCommand {
        producer: Some(Box::new(CommandProducer {
            topic: "persistent://public/default/t".into(),
            producer_id: 1,
            request_id: 2,
            ..Default::default()
        })),
        ..cmd(Type::Producer)
    });
    let batch = MessageMetadata {
        producer_name: "p".into(),
        sequence_id: 7,
        publish_time: 1,
        num_messages_in_batch: Some(2),
        properties: vec![KeyValue {
            key: "k".into(),
            value: "v".into(),
        }],
        ..Default::default()
    };
    let mut body = Vec::new();
    for text in [&b"one"[..], b"two"] {
        let single = SingleMessageMetadata {
            payload_size: text.len() as i32,
            ..Default::default()
        };
        body.extend_from_slice(&(single.encoded_len() as u32).to_be_bytes());
        single.encode(&mut body).expect("encodes");
        body.extend_from_slice(text);
    }
    let send = Frame::with_payload(
        BaseCommand {
            send: Some(Box::new(CommandSend {
                producer_id: 1,
                sequence_id: 7,
                num_messages: Some(2),
                ..Default::default()
            })),
            ..cmd(Type::Send)
        },
        Payload::new(&batch, &body),
    );
    let entry = Payload::new(&batch, &body).entry();
    let with_bem = prepend_broker_entry_metadata(
        &BrokerEntryMetadata {
            broker_timestamp: Some(1),
            index: Some(5),
        },
        &entry,
    );
    let message = Frame::with_payload(
        BaseCommand {
            message: Some(Box::new(magnetar_proto::pulsar::api::CommandMessage {
                consumer_id: 1,
                message_id: MessageIdData {
                    ledger_id: 3,
                    entry_id: 4,
                    ..Default::default()
                },
                ..Default::default()
            })),
            ..cmd(Type::Message)
        },
        Payload::parse(with_bem).expect("payload with broker entry metadata"),
    );
    let subscribe = Frame::command(BaseCommand {
        subscribe: Some(Box::new(CommandSubscribe {
            topic: "t".into(),
            subscription: "s".into(),
            sub_type: SubType::KeyShared as i32,
            consumer_id: 1,
            request_id: 3,
            ..Default::default()
        })),
        ..cmd(Type::Subscribe)
    });
    let flow = Frame::command(BaseCommand {
        flow: Some(Box::new(CommandFlow {
            consumer_id: 1,
            message_permits: 1000,
        })),
        ..cmd(Type::Flow)
    });
    let ack = Frame::command(BaseCommand {
        ack: Some(Box::new(CommandAck {
            consumer_id: 1,
            message_id: vec![MessageIdData {
                ledger_id: 3,
                entry_id: 4,
                ack_set: vec![-2],
                batch_size: Some(2),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..cmd(Type::Ack)
    });
    let lookup = Frame::command(BaseCommand {
        lookup_topic: Some(Box::new(CommandLookupTopic {
            topic: "persistent://public/default/t-partition-3".into(),
            request_id: 4,
            ..Default::default()
        })),
        ..cmd(Type::Lookup)
    });
    let all = [
        &connect, &producer, &send, &message, &subscribe, &flow, &ack, &lookup,
    ];
    let names = [
        "connect",
        "producer",
        "send",
        "message",
        "subscribe",
        "flow",
        "ack",
        "lookup",
    ];
    let mut stream = Vec::new();
    for (f, name) in all.iter().zip(names) {
        let bytes = frame(f);
        // The first byte is the frame target's split point.
        let mut input = vec![bytes.len() as u8 / 2];
        input.extend_from_slice(&bytes);
        write("pulsar_frame", name, &input);
        stream.extend_from_slice(&bytes);
    }
    let mut input = vec![17];
    input.extend_from_slice(&stream);
    write("pulsar_frame", "stream", &input);
}

fn rpc() {
    let entry = pb::Entry::from(magnetar_bookie::api::Entry::with_length(
        magnetar_metadata::LedgerId(3),
        magnetar_metadata::EntryId(4),
        3,
        Some(10),
        Bytes::from_static(b"0123456789"),
    ));
    let seeds: [(u8, Vec<u8>); 4] = [
        (
            0,
            pb::AddRequest {
                entry: Some(entry.clone()),
                recovery: true,
            }
            .encode_to_vec(),
        ),
        (
            1,
            pb::ReadResponse {
                status: 0,
                message: String::new(),
                entry: Some(entry.clone()),
                last_add_confirmed: 4,
            }
            .encode_to_vec(),
        ),
        (
            2,
            pb::ReadRangeResponse {
                status: 0,
                message: String::new(),
                entries: vec![entry.clone(), entry],
                last_add_confirmed: 4,
            }
            .encode_to_vec(),
        ),
        (
            4,
            pb::ReadRangeRequest {
                ledger_id: 3,
                first_entry_id: 0,
                last_entry_id: 9,
                max_entries: 5,
                max_bytes: 1000,
            }
            .encode_to_vec(),
        ),
    ];
    for (i, (selector, body)) in seeds.iter().enumerate() {
        let mut input = vec![*selector];
        input.extend_from_slice(body);
        write("bookie_rpc", &i.to_string(), &input);
    }
}

fn records() {
    // The bookie targets read records from [kind, ledger, len, payload...] triples.
    let mut input = vec![1, 0x40, 0];
    for (kind, payload) in [
        (2u8, &b"hello"[..]),
        (3, b"world!"),
        (0, b""),
        (1, b""),
        (4, b"x"),
    ] {
        input.extend_from_slice(&[kind, 9, payload.len() as u8]);
        input.extend_from_slice(payload);
    }
    write("journal", "records", &input);
    write("entry_log", "records", &input[3..]);
}

fn names() {
    for (i, name) in [
        "persistent://public/default/t",
        "non-persistent://public/default/t",
        "public/default/t-partition-7",
        "t",
        "public/default",
        "0x00000000_0x40000000",
        "public/default/0x40000000_0x80000000",
        "persistent://a/b/c/d",
    ]
    .iter()
    .enumerate()
    {
        write("names", &i.to_string(), name.as_bytes());
    }
}

fn admin() {
    // [method: 0 GET, 1 PUT, 2 POST, 3 DELETE] path '\n' body
    let requests: [(u8, &str, &str); 10] = [
        (
            1,
            "tenants/t",
            r#"{"adminRoles":[],"allowedClusters":["standalone"]}"#,
        ),
        (1, "namespaces/public/ns", r#"{"bundles":{"numBundles":8}}"#),
        (
            2,
            "namespaces/public/default/retention",
            r#"{"retentionTimeInMinutes":10,"retentionSizeInMB":-1}"#,
        ),
        (
            2,
            "namespaces/public/default/persistence",
            r#"{"bookkeeperEnsemble":3,"bookkeeperWriteQuorum":2,"bookkeeperAckQuorum":2,"managedLedgerMaxMarkDeleteRate":0}"#,
        ),
        (
            2,
            "namespaces/public/default/offloadPolicies",
            r#"{"managedLedgerOffloadDriver":"filesystem","managedLedgerOffloadThresholdInBytes":10}"#,
        ),
        (0, "namespaces/public/default", ""),
        (1, "persistent/public/default/t/partitions", "4"),
        (
            0,
            "persistent/public/default/t/stats?getPreciseBacklog=true",
            "",
        ),
        (
            2,
            "schemas/public/default/t/schema",
            r#"{"type":"AVRO","schema":"{\"type\":\"record\",\"name\":\"R\",\"fields\":[]}","properties":{}}"#,
        ),
        (
            3,
            "namespaces/public/default/bundles/0x00000000_0x40000000",
            "",
        ),
    ];
    for (i, (method, path, body)) in requests.iter().enumerate() {
        let mut input = vec![*method];
        input.extend_from_slice(path.as_bytes());
        input.push(b'\n');
        input.extend_from_slice(body.as_bytes());
        write("admin", &i.to_string(), &input);
    }
}

fn schemas() {
    let v1 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    let v2 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}]}"#;
    // [old type index | new type index << 4] old 0x00 new; type index 5 = AVRO, 2 = JSON.
    for (i, (types, a, b)) in [
        (0x55u8, v1, v2),
        (0x55, v2, v1),
        (0x22, v1, v2),
        (0x52, v1, "{\"legacy\":true}"),
        (0x88, "", ""),
    ]
    .iter()
    .enumerate()
    {
        let mut input = vec![*types];
        input.extend_from_slice(a.as_bytes());
        input.push(0);
        input.extend_from_slice(b.as_bytes());
        write("schema", &i.to_string(), &input);
    }
}

fn main() {
    frames();
    rpc();
    records();
    names();
    admin();
    schemas();
    println!("seeds written under fuzz/corpus/");
}
