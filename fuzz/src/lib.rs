//! Fuzz targets: every parser of outside input, as a function of arbitrary bytes that must
//! never panic, hang or allocate without bound, and that asserts what the parser promises
//! (round trips, torn tails, status codes).
//!
//! Three drivers share these functions: `fuzz/libfuzzer` (cargo-fuzz, coverage-guided: the long
//! runs of `scripts/fuzz.sh`, recorded in `docs/RELIABILITY.md`), the corpus replay test
//! (`tests/corpus.rs`, in CI: every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`, plus seeded mutations of them), and any future one.

// A fuzz target fails by panicking: these are its assertions, not error handling.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use bytes::BytesMut;
use magnetar_broker::admin::{AdminState, NoTopics, router};
use magnetar_broker::cluster::bundle::{Bundle, HashRange};
use magnetar_broker::policies::{CompatibilityStrategy, Policies};
use magnetar_broker::schema::StoredSchema;
use magnetar_broker::schema::compat::{check_consumer, check_new_version};
use magnetar_broker::topic_name::{NamespaceName, TopicName};
use magnetar_metadata::{
    DeleteOutcome, Expected, Listing, MemoryStore, MetadataStore, PutOutcome, Result as MetaResult,
    Session, Version, Versioned, WatchStream,
};
use magnetar_proto::bookie as pb;
use magnetar_proto::pulsar::frame::encode_frame;
use magnetar_proto::pulsar::{Frame, PulsarCodec};
use prost::Message;
use tokio_util::codec::Decoder;

/// Journal replay and entry-log records (in the bookie crate: their formats are private).
pub use magnetar_bookie::server::fuzzing::{entry_log, journal};

/// A fuzz target: arbitrary bytes in, a panic on a broken promise.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory and libFuzzer binary carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("pulsar_frame", pulsar_frame),
    ("bookie_rpc", bookie_rpc),
    ("journal", journal),
    ("entry_log", entry_log),
    ("names", names),
    ("admin", admin),
    ("schema", schema),
];

/// The frame size the frame target's codec allows (small, so size checks are reached often).
const FRAME_SIZE_MAX: usize = 64 * 1024;

/// The Pulsar frame decoder, fed in two reads split where the first byte says; every frame
/// decoded has its payload layout, checksum and metadata examined and re-encodes to itself.
pub fn pulsar_frame(data: &[u8]) {
    let split = data.first().map_or(0, |&b| usize::from(b)) % (data.len() + 1);
    let mut codec = PulsarCodec::for_max_message_size(FRAME_SIZE_MAX / 2);
    let mut buf = BytesMut::from(&data[..split]);
    let mut fed = false;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => check_frame(&frame),
            Ok(None) if !fed => {
                buf.extend_from_slice(&data[split..]);
                fed = true;
            }
            Ok(None) | Err(_) => break,
        }
        assert!(
            buf.capacity() <= data.len() + FRAME_SIZE_MAX,
            "the decoder reserved more than one frame"
        );
    }
}

fn check_frame(frame: &Frame) {
    let _ = frame.command_type();
    if let Some(payload) = &frame.payload {
        let _ = payload.checksum_ok();
        let _ = payload.metadata();
        if let Some(Ok(meta)) = payload.broker_entry_metadata() {
            let _ = meta.index;
        }
        assert!(payload.payload_range().end <= payload.raw().len());
        let _ = payload.entry();
    }
    // A decoded frame encodes to bytes that decode to the same frame (a command re-encoded
    // may be longer than it came — packed fields are written unpacked — and then too large).
    let Ok(bytes) = encode_frame(frame, FRAME_SIZE_MAX) else {
        return;
    };
    let mut again = BytesMut::from(&bytes[..]);
    let decoded = PulsarCodec::for_max_message_size(FRAME_SIZE_MAX)
        .decode(&mut again)
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is whole");
    assert_eq!(&decoded, frame, "a frame survives a round trip");
}

/// Every bookie RPC message, decoded from the bytes after a selector byte, and the entry
/// conversion both ways of the wire.
pub fn bookie_rpc(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 12 {
        0 => {
            if let Ok(r) = pb::AddRequest::decode(body)
                && let Some(e) = r.entry
            {
                entry_round_trip(e);
            }
        }
        1 => {
            if let Ok(r) = pb::ReadResponse::decode(body)
                && let Some(e) = r.entry
            {
                entry_round_trip(e);
            }
        }
        2 => {
            if let Ok(r) = pb::ReadRangeResponse::decode(body) {
                r.entries.into_iter().for_each(entry_round_trip);
            }
        }
        3 => drop(pb::ReadRequest::decode(body)),
        4 => drop(pb::ReadRangeRequest::decode(body)),
        5 => drop(pb::ReadLacRequest::decode(body)),
        6 => drop(pb::FenceRequest::decode(body)),
        7 => drop(pb::DeleteLedgerRequest::decode(body)),
        8 => drop(pb::AddResponse::decode(body)),
        9 => drop(pb::ReadLacResponse::decode(body)),
        10 => drop(pb::InfoResponse::decode(body)),
        _ => drop(pb::FenceResponse::decode(body)),
    }
}

fn entry_round_trip(e: pb::Entry) {
    let entry = magnetar_bookie::api::Entry::from(e);
    let _ = entry.is_intact();
    let back = pb::Entry::from(entry.clone());
    assert_eq!(magnetar_bookie::api::Entry::from(back), entry);
}

/// Topic, namespace, bundle and hash-range names: whatever parses prints as a name that parses
/// to the same value.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(t) = text.parse::<TopicName>() {
        let again: TopicName = t.to_string().parse().expect("a printed topic name parses");
        assert_eq!(again, t);
        let _ = t.namespace();
    }
    if let Ok(n) = text.parse::<NamespaceName>() {
        let again: NamespaceName = n.to_string().parse().expect("a printed namespace parses");
        assert_eq!(again, n);
    }
    if let Ok(r) = text.parse::<HashRange>() {
        let again: HashRange = r.to_string().parse().expect("a printed range parses");
        assert_eq!(again, r);
    }
    if let Ok(b) = text.parse::<Bundle>() {
        let again: Bundle = b.to_string().parse().expect("a printed bundle parses");
        assert_eq!(again, b);
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    /// One router per thread over a store that is emptied before every input: building the
    /// router (a hundred routes) per input made the target 30 times slower, and a store
    /// emptied each time keeps inputs independent (nothing above the store caches).
    static ADMIN: (Arc<FreshStore>, axum::Router) = {
        let store = Arc::new(FreshStore::default());
        let state = AdminState::new(Policies::new(store.clone()), Arc::new(NoTopics));
        (store, router(state))
    };
}

/// A [`MetadataStore`] whose contents [`FreshStore::reset`] throws away.
#[derive(Debug, Default)]
struct FreshStore {
    inner: std::sync::Mutex<Arc<MemoryStore>>,
}

impl FreshStore {
    fn reset(&self) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(MemoryStore::new());
    }
    fn current(&self) -> Arc<MemoryStore> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl MetadataStore for FreshStore {
    async fn get(&self, key: &str) -> MetaResult<Option<Versioned>> {
        self.current().get(key).await
    }
    async fn put(
        &self,
        key: &str,
        value: bytes::Bytes,
        expected: Expected,
    ) -> MetaResult<PutOutcome> {
        self.current().put(key, value, expected).await
    }
    async fn put_ephemeral(
        &self,
        key: &str,
        value: bytes::Bytes,
        expected: Expected,
        session: &Session,
    ) -> MetaResult<PutOutcome> {
        self.current()
            .put_ephemeral(key, value, expected, session)
            .await
    }
    async fn delete(&self, key: &str, expected: Expected) -> MetaResult<DeleteOutcome> {
        self.current().delete(key, expected).await
    }
    async fn list(&self, prefix: &str) -> MetaResult<Listing> {
        self.current().list(prefix).await
    }
    async fn watch(&self, prefix: &str, after: Version) -> MetaResult<WatchStream> {
        self.current().watch(prefix, after).await
    }
    async fn create_session(&self, ttl: std::time::Duration) -> MetaResult<Session> {
        self.current().create_session(ttl).await
    }
}

/// The admin REST API (router, path and query extraction, JSON bodies, validation) on a fresh
/// in-memory store: a method, a path under `/admin/v2/` and a body from the input. Bad input is
/// a 4xx; a 500 is a failure.
pub fn admin(data: &[u8]) {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = ["GET", "PUT", "POST", "DELETE"][usize::from(m % 4)];
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let uri = format!("/admin/v2/{}", String::from_utf8_lossy(path));
    let Ok(request) = Request::builder()
        .method(method)
        .uri(&uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let status = ADMIN.with(|(store, router)| {
        store.reset();
        let router = router.clone();
        RUNTIME.with(|rt| {
            rt.block_on(async move {
                match router.oneshot(request).await {
                    Ok(response) => response.status(),
                    Err(never) => match never {},
                }
            })
        })
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {uri} answered 500"
    );
}

/// Schema compatibility between two definitions cut from the input, under every strategy, as a
/// producer's new version and as a consumer's schema.
pub fn schema(data: &[u8]) {
    let Some((&types, rest)) = data.split_first() else {
        return;
    };
    let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (a, b) = (&rest[..cut], rest.get(cut + 1..).unwrap_or(&[]));
    // Mostly the types with definitions to parse (JSON, AVRO, KEY_VALUE, PROTOBUF_NATIVE).
    const TYPES: [i32; 16] = [0, 1, 2, 2, 3, 4, 4, 4, 15, 15, 15, 20, 6, 13, -1, 99];
    let old = stored(0, TYPES[usize::from(types & 0x0f)], a);
    let new = stored(1, TYPES[usize::from(types >> 4)], b);
    for strategy in CompatibilityStrategy::ALL {
        let _ = check_new_version(std::slice::from_ref(&old), &new, strategy);
        let _ = check_consumer(std::slice::from_ref(&old), &new, strategy);
    }
}

fn stored(version: u64, schema_type: i32, data: &[u8]) -> StoredSchema {
    StoredSchema {
        version,
        schema_type,
        name: "fuzz".to_owned(),
        data: data.to_vec(),
        properties: Default::default(),
        hash: String::new(),
        timestamp_ms: 0,
    }
}
