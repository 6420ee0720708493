#![allow(clippy::unwrap_used, clippy::expect_used)] // a test binary: a panic is the failure report

//! The gRPC transport over real sockets on 127.0.0.1: the server serving a small in-memory fake
//! (to control timing and answers) and the real `Bookie` storage in a tempdir, the client, and
//! the bookie node's registration.
//!
//! A "killed" server runs in its own tokio runtime that is dropped: every task and socket of it
//! goes at once, as with a crashed process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use magnetar_bookie::api::{
    BookieClient, BookieError, BookieId, BookieInfo, BookieRegistration, BookieResult, BookieState,
    Entry, FenceResult, NO_ENTRY, ReadResult, registration_key,
};
use magnetar_bookie::node::{BookieNode, NodeOptions};
use magnetar_bookie::rpc::{ClientOptions, GrpcBookieClient, GrpcConnector, serve};
use magnetar_bookie::server::{Bookie, BookieOptions};
use magnetar_metadata::{EntryId, LedgerId, MemoryStore, MetadataStore, SessionId};
use magnetar_proto::bookie as pb;
use magnetar_testkit::wait;
use tokio_util::sync::CancellationToken;

/// Ledger on which the fake's adds never complete.
const HANGING_LEDGER: LedgerId = LedgerId(99);
/// Entries of this ledger with id % 10 == 3 are refused as fenced by the fake.
const PICKY_LEDGER: LedgerId = LedgerId(7);

/// An in-memory bookie whose adds complete after a delay that makes answers come out of order.
#[derive(Debug)]
struct Fake {
    id: BookieId,
    entries: Mutex<HashMap<(u64, u64), Entry>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    adds_seen: AtomicUsize,
    completion_order: Mutex<Vec<u64>>,
}

impl Fake {
    fn new(id: BookieId) -> Arc<Self> {
        Arc::new(Fake {
            id,
            entries: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            adds_seen: AtomicUsize::new(0),
            completion_order: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl BookieClient for Fake {
    fn id(&self) -> &BookieId {
        &self.id
    }

    async fn add(&self, entry: Entry, _recovery: bool) -> BookieResult<()> {
        self.adds_seen.fetch_add(1, Ordering::SeqCst);
        if entry.ledger == HANGING_LEDGER {
            std::future::pending::<()>().await;
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        // Later entries of each group of 8 finish first.
        let delay = 20 - (entry.entry.0 % 8) * 2;
        magnetar_metadata::clock::system()
            .sleep(Duration::from_millis(delay))
            .await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.completion_order.lock().unwrap().push(entry.entry.0);
        if entry.ledger == PICKY_LEDGER && entry.entry.0 % 10 == 3 {
            return Err(BookieError::Fenced(entry.ledger));
        }
        self.entries
            .lock()
            .unwrap()
            .insert((entry.ledger.0, entry.entry.0), entry);
        Ok(())
    }

    async fn read(&self, ledger: LedgerId, entry: EntryId, _: bool) -> BookieResult<ReadResult> {
        let found = self
            .entries
            .lock()
            .unwrap()
            .get(&(ledger.0, entry.0))
            .cloned();
        match found {
            Some(entry) => Ok(ReadResult {
                entry,
                lac: NO_ENTRY,
            }),
            None => Err(BookieError::NoSuchEntry { ledger, entry }),
        }
    }

    async fn read_range(
        &self,
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
        _: u32,
        _: u64,
    ) -> BookieResult<Vec<Entry>> {
        let map = self.entries.lock().unwrap();
        Ok((first.0..=last.0)
            .map_while(|e| map.get(&(ledger.0, e)).cloned())
            .collect())
    }

    async fn read_lac(&self, _: LedgerId, previous: i64, timeout: Duration) -> BookieResult<i64> {
        magnetar_metadata::clock::system().sleep(timeout).await;
        Ok(previous)
    }

    async fn fence(&self, ledger: LedgerId) -> BookieResult<FenceResult> {
        Err(BookieError::NoSuchLedger(ledger))
    }

    async fn delete_ledger(&self, _: LedgerId) -> BookieResult<()> {
        Err(BookieError::ShuttingDown)
    }

    async fn info(&self) -> BookieResult<BookieInfo> {
        Ok(BookieInfo {
            id: self.id.clone(),
            state: BookieState::ReadOnly,
            free_bytes: 1,
            used_bytes: 2,
            version: "fake".into(),
        })
    }
}

/// A gRPC server in its own runtime: `kill` drops the runtime with every task and socket.
struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl Server {
    /// Serves `bookie` on `addr` (port 0: a free one).
    async fn start(bookie: Arc<dyn BookieClient>, addr: SocketAddr) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (bound, bound_rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            // tokio's listener sets SO_REUSEADDR: a restart can take the port back at once.
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            bound.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, bookie, CancellationToken::new()).await
        });
        let addr = bound_rx.await.unwrap();
        Server {
            runtime: Some(runtime),
            addr,
        }
    }

    fn id(&self) -> BookieId {
        BookieId(self.addr.to_string())
    }

    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn fake_server() -> (Server, Arc<Fake>) {
    // The fake's id is not its address (it does not matter to the transport).
    let fake = Fake::new(BookieId("fake:1".into()));
    let server = Server::start(fake.clone(), any_port()).await;
    (server, fake)
}

fn client(id: BookieId) -> GrpcBookieClient {
    GrpcBookieClient::new(id, ClientOptions::default())
}

fn entry(ledger: u64, id: u64, payload: &str) -> Entry {
    Entry::new(
        LedgerId(ledger),
        EntryId(id),
        id as i64 - 1,
        Bytes::copy_from_slice(payload.as_bytes()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_pipelined_adds_are_matched_to_their_answers() {
    let (server, fake) = fake_server().await;
    let client = Arc::new(client(server.id()));
    let n = 5_000u64;
    let results = join_all((0..n).map(|i| {
        let client = client.clone();
        async move { (i, client.add(entry(PICKY_LEDGER.0, i, "x"), false).await) }
    }))
    .await;
    for (i, result) in results {
        if i % 10 == 3 {
            assert_eq!(result, Err(BookieError::Fenced(PICKY_LEDGER)), "entry {i}");
        } else {
            assert_eq!(result, Ok(()), "entry {i}");
        }
    }
    let peak = fake.peak_in_flight.load(Ordering::SeqCst);
    assert!(
        peak >= 500,
        "adds were not pipelined: at most {peak} in flight"
    );
    let order = fake.completion_order.lock().unwrap().clone();
    assert_eq!(order.len(), n as usize);
    assert!(
        order.windows(2).any(|w| w[0] > w[1]),
        "answers were not out of order, the test proves nothing"
    );
    // Everything travelled over one stream: the adds saw the payload intact.
    let read = client.read(PICKY_LEDGER, EntryId(4), false).await.unwrap();
    assert_eq!(read.entry, entry(PICKY_LEDGER.0, 4, "x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookie_errors_cross_the_wire_with_their_codes() {
    let (server, _fake) = fake_server().await;
    let client = client(server.id());
    assert_eq!(
        client.read(LedgerId(1), EntryId(2), false).await,
        Err(BookieError::NoSuchEntry {
            ledger: LedgerId(1),
            entry: EntryId(2)
        })
    );
    assert_eq!(
        client.fence(LedgerId(5)).await,
        Err(BookieError::NoSuchLedger(LedgerId(5)))
    );
    assert_eq!(
        client.delete_ledger(LedgerId(5)).await,
        Err(BookieError::ShuttingDown)
    );
    let info = client.info().await.unwrap();
    assert_eq!(info.state, BookieState::ReadOnly);
    assert_eq!((info.free_bytes, info.used_bytes), (1, 2));
    assert_eq!(info.id, BookieId("fake:1".into()));
    // The long poll waits as asked (the fake sleeps the whole timeout).
    let started = magnetar_metadata::clock::system().now();
    assert_eq!(
        client
            .read_lac(LedgerId(1), 4, Duration::from_millis(300))
            .await,
        Ok(4)
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_add_gets_bad_request_and_the_stream_goes_on() {
    let (server, _fake) = fake_server().await;
    let mut raw = pb::bookie_client::BookieClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = raw
        .add(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(pb::AddRequest {
        entry: None,
        recovery: false,
    })
    .await
    .unwrap();
    let bad = answers.message().await.unwrap().unwrap();
    assert_eq!(bad.status, pb::Status::BadRequest as i32);
    assert!(bad.message.contains("without an entry"), "{}", bad.message);
    tx.send(pb::AddRequest {
        entry: Some(entry(1, 0, "ok").into()),
        recovery: false,
    })
    .await
    .unwrap();
    let good = answers.message().await.unwrap().unwrap();
    assert_eq!(
        (good.ledger_id, good.entry_id, good.status),
        (1, 0, pb::Status::Ok as i32)
    );
    // Closing our side ends the answers once everything is answered.
    drop(tx);
    assert!(answers.message().await.unwrap().is_none());
    // And the server still serves.
    assert!(client(server.id()).info().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_pending_adds_promptly_and_a_restarted_one_is_reconnected() {
    let (mut server, fake) = fake_server().await;
    let addr = server.addr;
    let client = Arc::new(client(server.id()));
    let pending: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .add(entry(HANGING_LEDGER.0, i, "never answered"), false)
                    .await
            })
        })
        .collect();
    wait::until("the adds reach the bookie", Duration::from_secs(5), || {
        fake.adds_seen.load(Ordering::SeqCst) >= 100
    })
    .await;
    let killed = magnetar_metadata::clock::system().now();
    server.kill();
    for add in pending {
        let result = add.await.unwrap();
        assert!(
            matches!(result, Err(BookieError::Unavailable(_))),
            "{result:?}"
        );
    }
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "pending adds took {:?} to fail",
        killed.elapsed()
    );
    // While the bookie is down, adds fail as unavailable (not hang).
    let down = client.add(entry(1, 0, "x"), false).await;
    assert!(matches!(down, Err(BookieError::Unavailable(_))), "{down:?}");

    // Same address, new process: the client reconnects by itself.
    let fake = Fake::new(BookieId("fake:1".into()));
    let _server = Server::start(fake.clone(), addr).await;
    wait::until_async(
        "the client reconnects to the restarted server",
        Duration::from_secs(5),
        || async { client.add(entry(1, 1, "again"), false).await.ok() },
    )
    .await;
    assert!(client.read(LedgerId(1), EntryId(1), false).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_time_out_and_an_absent_bookie_is_unavailable() {
    let (server, _fake) = fake_server().await;
    let options = ClientOptions {
        request_timeout: Duration::from_millis(200),
        ..ClientOptions::default()
    };
    let client = GrpcBookieClient::new(server.id(), options.clone());
    let result = client.add(entry(HANGING_LEDGER.0, 0, "x"), false).await;
    assert_eq!(
        result,
        Err(BookieError::Timeout(Duration::from_millis(200)))
    );
    // The stream survives a timed-out add.
    assert_eq!(client.add(entry(1, 0, "x"), false).await, Ok(()));

    // Nobody listens on a port we just had and closed.
    let port = {
        let l = std::net::TcpListener::bind(any_port()).unwrap();
        l.local_addr().unwrap()
    };
    let absent = GrpcBookieClient::new(BookieId(port.to_string()), options);
    let started = magnetar_metadata::clock::system().now();
    let result = absent.read(LedgerId(1), EntryId(0), false).await;
    assert!(
        matches!(result, Err(BookieError::Unavailable(_))),
        "{result:?}"
    );
    let result = absent.add(entry(1, 0, "x"), false).await;
    assert!(
        matches!(result, Err(BookieError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_hands_out_one_client_per_bookie() {
    use magnetar_bookie::client::BookieConnector;
    let connector = GrpcConnector::default();
    let a: BookieId = "127.0.0.1:1".parse().unwrap();
    let b: BookieId = "127.0.0.1:2".parse().unwrap();
    let a1 = connector.connect(&a);
    let a2 = connector.connect(&a);
    assert!(Arc::ptr_eq(&a1, &a2));
    assert_eq!(connector.connect(&b).id(), &b);
}

// ---- the real storage ----

fn options(dir: &std::path::Path) -> BookieOptions {
    let mut o = BookieOptions::new(BookieId("127.0.0.1:0".into()), dir);
    o.journal_file_size_bytes = 1024 * 1024;
    o.entry_size_bytes_max = 64 * 1024;
    // The host's disk fill must not decide tests: only a storage cap would.
    o.disk_usage_threshold = 1.0;
    o.disk_usage_lwm = 1.0;
    o
}

async fn real_server(o: BookieOptions) -> (Server, Arc<Bookie>) {
    let bookie = Bookie::open(o).await.unwrap();
    let server = Server::start(bookie.clone(), any_port()).await;
    (server, bookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_bookie_round_trips_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (server, bookie) = real_server(options(dir.path())).await;
    let client = Arc::new(client(server.id()));
    let l = 1u64;

    // Pipelined adds to the real storage.
    let n = 2_000u64;
    let results = join_all((0..n).map(|i| {
        let client = client.clone();
        async move { client.add(entry(l, i, &format!("entry {i}")), false).await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let read = client.read(LedgerId(l), EntryId(7), false).await.unwrap();
    assert_eq!(read.entry, entry(l, 7, "entry 7"));
    assert!(read.entry.is_intact());
    assert_eq!(
        client.read(LedgerId(l), EntryId(n), false).await,
        Err(BookieError::NoSuchEntry {
            ledger: LedgerId(l),
            entry: EntryId(n)
        })
    );
    let range = client
        .read_range(LedgerId(l), EntryId(10), EntryId(19), 0, 0)
        .await
        .unwrap();
    assert_eq!(range.len(), 10);
    assert_eq!(range[0], entry(l, 10, "entry 10"));
    let cut = client
        .read_range(LedgerId(l), EntryId(0), EntryId(n - 1), 5, 0)
        .await
        .unwrap();
    assert_eq!(cut.len(), 5);
    assert!(matches!(
        client
            .read_range(LedgerId(l), EntryId(5), EntryId(4), 0, 0)
            .await,
        Err(BookieError::BadRequest(_))
    ));

    // LAC: the bookie knows what the writer piggybacked (entry n-1 carried n-2).
    let lac = client
        .read_lac(LedgerId(l), NO_ENTRY, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(lac, n as i64 - 2);
    // Long poll: answered when a higher LAC arrives…
    let poll = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .read_lac(LedgerId(l), lac, Duration::from_secs(10))
                .await
        })
    };
    // Parked at the bookie: no LAC above `lac` yet.
    wait::until(
        "the long poll waits at the bookie",
        Duration::from_secs(5),
        || bookie.lac_polls_waiting() == 1,
    )
    .await;
    assert!(!poll.is_finished());
    client.add(entry(l, n, "one more"), false).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .unwrap()
            .unwrap(),
        Ok(n as i64 - 1)
    );
    // …or with the current value when the wait ends.
    let started = magnetar_metadata::clock::system().now();
    assert_eq!(
        client
            .read_lac(LedgerId(l), n as i64 - 1, Duration::from_millis(200))
            .await,
        Ok(n as i64 - 1)
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        client
            .read_lac(LedgerId(404), NO_ENTRY, Duration::ZERO)
            .await,
        Err(BookieError::NoSuchLedger(LedgerId(404)))
    );

    // Checksums and size limits are the bookie's answers, carried with their codes.
    let mut bad = entry(2, 0, "payload");
    bad.crc32c ^= 1;
    assert!(matches!(
        client.add(bad, false).await,
        Err(BookieError::BadRequest(_))
    ));
    let big = Entry::new(
        LedgerId(2),
        EntryId(0),
        NO_ENTRY,
        Bytes::from(vec![7u8; 100 * 1024]),
    );
    assert!(matches!(
        client.add(big, false).await,
        Err(BookieError::TooLarge(_))
    ));

    // Fencing: the old writer's adds fail, recovery adds go through.
    let fenced = client.fence(LedgerId(l)).await.unwrap();
    assert_eq!(
        fenced,
        FenceResult {
            lac: n as i64 - 1,
            last_entry: n as i64
        }
    );
    assert_eq!(
        client.add(entry(l, n + 1, "late"), false).await,
        Err(BookieError::Fenced(LedgerId(l)))
    );
    assert_eq!(client.add(entry(l, n + 1, "recovered"), true).await, Ok(()));
    // A recovery read fences too.
    assert!(client.read(LedgerId(3), EntryId(0), true).await.is_err());
    client.add(entry(3, 0, "x"), true).await.unwrap();
    assert_eq!(
        client.add(entry(3, 1, "x"), false).await,
        Err(BookieError::Fenced(LedgerId(3)))
    );

    // Deletion.
    client.delete_ledger(LedgerId(l)).await.unwrap();
    let gone = client.read(LedgerId(l), EntryId(7), false).await;
    assert!(
        matches!(
            gone,
            Err(BookieError::NoSuchLedger(_) | BookieError::NoSuchEntry { .. })
        ),
        "{gone:?}"
    );

    let info = client.info().await.unwrap();
    assert_eq!(info.state, BookieState::ReadWrite);
    assert_eq!(info.id, bookie.id().clone());
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));

    bookie.shutdown().await;
    assert_eq!(
        client.read(LedgerId(3), EntryId(0), false).await,
        Err(BookieError::ShuttingDown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_bookie_refuses_adds_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.storage_size_bytes_max = Some(1);
    let (server, _bookie) = real_server(o).await;
    let client = client(server.id());
    assert_eq!(
        client.add(entry(1, 0, "x"), false).await,
        Err(BookieError::ReadOnly)
    );
    assert_eq!(client.info().await.unwrap().state, BookieState::ReadOnly);
}

// ---- the node ----

async fn registration(store: &MemoryStore, id: &BookieId) -> Option<BookieRegistration> {
    let value = store.get(&registration_key(id)).await.unwrap()?;
    Some(serde_json::from_slice(&value.value).unwrap())
}

fn node_options(dir: &std::path::Path, store: &MemoryStore) -> NodeOptions {
    NodeOptions {
        bookie: options(dir),
        bind: any_port(),
        zone: Some("zone-a".into()),
        metadata: Arc::new(store.clone()),
        session_ttl: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registers_serves_survives_session_loss_and_deregisters() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let node = BookieNode::start(node_options(dir.path(), &store))
        .await
        .unwrap();
    let id = node.id().clone();
    assert_eq!(id.0, node.local_addr().to_string(), "port 0 resolved");
    assert_eq!(node.bookie().id(), &id);

    let reg = registration(&store, &id).await.expect("registered");
    assert_eq!(reg.id, id);
    assert_eq!(reg.state, BookieState::ReadWrite);
    assert_eq!(reg.zone.as_deref(), Some("zone-a"));
    let listed = store.list("/bookies/").await.unwrap();
    assert_eq!(listed.entries.len(), 1);
    assert!(
        String::from_utf8_lossy(&listed.entries[0].1.value).contains("\"read_write\""),
        "state is spelled read_write in the JSON"
    );

    // It serves at its id.
    let client = client(id.clone());
    client.add(entry(1, 0, "hello"), false).await.unwrap();
    assert_eq!(
        client
            .read(LedgerId(1), EntryId(0), false)
            .await
            .unwrap()
            .entry,
        entry(1, 0, "hello")
    );

    // The first session of a fresh memory store is number 1: expire it, as if keep-alives had
    // failed. The key vanishes, and the node registers again under a new session.
    store.expire_session(SessionId(1));
    wait::until_async("re-registration", Duration::from_secs(10), || async {
        registration(&store, &id).await.map(|_| ())
    })
    .await;

    node.shutdown().await;
    assert_eq!(registration(&store, &id).await, None, "deregistered");
    assert!(matches!(
        client.info().await,
        Err(BookieError::Unavailable(_))
    ));
    node.shutdown().await; // idempotent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_node_says_so_in_its_registration() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let mut o = node_options(dir.path(), &store);
    o.bookie.storage_size_bytes_max = Some(1);
    let node = BookieNode::start(o).await.unwrap();
    let reg = registration(&store, node.id()).await.unwrap();
    assert_eq!(reg.state, BookieState::ReadOnly);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_taken_port_fails_to_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let taken = std::net::TcpListener::bind(any_port()).unwrap();
    let mut o = node_options(dir.path(), &store);
    o.bind = taken.local_addr().unwrap();
    let err = BookieNode::start(o).await.unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    assert!(store.list("/bookies/").await.unwrap().entries.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_adds_in_flight_and_does_not_wait_for_connected_clients() {
    let fake = Fake::new(BookieId("fake:1".into()));
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let id = BookieId(listener.local_addr().unwrap().to_string());
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, fake.clone(), stop.clone()));
    let client = Arc::new(client(id));
    client.add(entry(1, 0, "x"), false).await.unwrap();
    // An add in flight when shutdown starts is still answered.
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.add(entry(1, 1, "y"), false).await })
    };
    wait::until(
        "the second add reaches the bookie",
        Duration::from_secs(5),
        || fake.adds_seen.load(Ordering::SeqCst) >= 2,
    )
    .await;
    let started = magnetar_metadata::clock::system().now();
    stop.cancel();
    assert_eq!(in_flight.await.unwrap(), Ok(()));
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the server waited for its idle clients")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    // The client holds on, and sees the bookie gone.
    let gone = client.add(entry(1, 2, "z"), false).await;
    assert!(matches!(gone, Err(BookieError::Unavailable(_))), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_entries_travel_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path());
    o.entry_size_bytes_max = BookieOptions::new(BookieId("x:1".into()), "d").entry_size_bytes_max;
    let (server, _bookie) = real_server(o.clone()).await;
    let client = client(server.id());
    let payload = Bytes::from(vec![0xa5u8; o.entry_size_bytes_max]);
    for i in 0..3 {
        let e = Entry::new(LedgerId(1), EntryId(i), i as i64 - 1, payload.clone());
        client.add(e, false).await.unwrap();
    }
    let read = client.read(LedgerId(1), EntryId(2), false).await.unwrap();
    assert_eq!(read.entry.payload.len(), o.entry_size_bytes_max);
    assert!(read.entry.is_intact());
    // A range of them is cut to fit one message, but never empty.
    let range = client
        .read_range(LedgerId(1), EntryId(0), EntryId(2), 0, 0)
        .await
        .unwrap();
    assert!(!range.is_empty() && range.len() < 3, "{}", range.len());
}
