//! The gRPC client: [`GrpcBookieClient`] is a [`BookieClient`] for a bookie across the network.
//!
//! The connection is made lazily, on the first call, and remade after it breaks (tonic's
//! channel reconnects on the next call). Adds go over one long-lived bidirectional stream per
//! client: a bounded queue feeds the request stream, and each add waits on a oneshot registered
//! under its (ledger, entry) before it is sent; a task reading the answers completes the waiters.
//! If the stream breaks or ends, every add still waiting fails with
//! [`BookieError::Unavailable`] at once, and the next add opens a new stream.
//!
//! Every call is bounded by [`ClientOptions::request_timeout`] (a LAC long poll by its own wait
//! on top) and fails with [`BookieError::Timeout`] beyond it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use magnetar_metadata::{EntryId, LedgerId};
use magnetar_proto::bookie as pb;
use pb::bookie_client::BookieClient as RpcClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::server::{
    CONNECTION_WINDOW_BYTES, LAC_POLL_TIMEOUT_MAX, STREAM_WINDOW_BYTES, parse_state,
};
use crate::api::{
    BookieClient, BookieError, BookieId, BookieInfo, BookieResult, Entry, FenceResult, ReadResult,
};
use crate::client::BookieConnector;

/// Largest message the client accepts by default: more than any bookie's answer could be.
pub const CLIENT_MESSAGE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// How a [`GrpcBookieClient`] connects and how long it waits.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Longest wait for a TCP connection. Default 2 s.
    pub connect_timeout: Duration,
    /// Longest wait for any one call (a LAC long poll adds its own wait). Default 10 s.
    pub request_timeout: Duration,
    /// HTTP/2 pings, also on idle connections, so a dead bookie is noticed. Default 5 s / 5 s.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Adds queued for the stream at most (callers wait beyond). Default 10,000.
    pub add_queue_capacity: usize,
    /// Largest message accepted from a bookie. Default 64 MiB.
    pub message_size_max: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            add_queue_capacity: 10_000,
            message_size_max: CLIENT_MESSAGE_SIZE_MAX_BYTES,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Key = (u64, u64);
type Waiter = oneshot::Sender<BookieResult<()>>;

/// The waiters of one add stream. Once `broken`, no waiter is added any more.
#[derive(Default)]
struct Waiters {
    broken: bool,
    /// Several adds of the same entry may be in flight (a re-send); answers go first-come.
    map: HashMap<Key, Vec<(u64, Waiter)>>,
}

#[derive(Default)]
struct StreamState {
    waiters: Mutex<Waiters>,
}

impl StreamState {
    /// Marks the stream broken and fails every waiter with `why`.
    fn fail_all(&self, why: &str) {
        let map = {
            let mut w = lock(&self.waiters);
            w.broken = true;
            std::mem::take(&mut w.map)
        };
        let n: usize = map.values().map(Vec::len).sum();
        if n > 0 {
            tracing::debug!(waiters = n, reason = why, "add stream broke");
        }
        for (_, waiter) in map.into_values().flatten() {
            let _ = waiter.send(Err(BookieError::Unavailable(why.to_owned())));
        }
    }

    fn complete(&self, answer: pb::AddResponse) {
        let key = (answer.ledger_id, answer.entry_id);
        let waiter = {
            let mut w = lock(&self.waiters);
            match w.map.get_mut(&key) {
                Some(list) if !list.is_empty() => {
                    let (_, waiter) = list.remove(0);
                    if list.is_empty() {
                        w.map.remove(&key);
                    }
                    Some(waiter)
                }
                _ => None,
            }
        };
        let Some(waiter) = waiter else {
            // A late answer for an add that timed out or was abandoned, or a BAD_REQUEST
            // without ids.
            tracing::debug!(
                ledger = key.0,
                entry = key.1,
                status = answer.status,
                "unmatched add answer"
            );
            return;
        };
        let result = match status_of(answer.status) {
            Ok(status) => match BookieError::from_status(
                status,
                LedgerId(key.0),
                EntryId(key.1),
                answer.message,
            ) {
                None => Ok(()),
                Some(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let _ = waiter.send(result);
    }

    fn remove(&self, key: Key, seq: u64) {
        let mut w = lock(&self.waiters);
        if let Some(list) = w.map.get_mut(&key) {
            list.retain(|(s, _)| *s != seq);
            if list.is_empty() {
                w.map.remove(&key);
            }
        }
    }
}

/// One open add stream: the queue into it and its waiters.
struct AddStream {
    tx: mpsc::Sender<pb::AddRequest>,
    state: Arc<StreamState>,
}

/// Removes an add's waiter if the add is abandoned (timeout, or the caller's future dropped).
struct WaiterGuard<'a> {
    state: &'a StreamState,
    key: Key,
    seq: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.state.remove(self.key, self.seq);
    }
}

/// A [`BookieClient`] for a bookie reached over gRPC at its id, `host:port`.
pub struct GrpcBookieClient {
    id: BookieId,
    options: ClientOptions,
    /// `Err` when the id is not a usable address: every call fails with `Unavailable`.
    channel: Result<Channel, String>,
    adds: Mutex<Option<Arc<AddStream>>>,
    seq: AtomicU64,
}

impl fmt::Debug for GrpcBookieClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcBookieClient")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Maps a wire status number; an unknown number is a bookie newer than this client.
fn status_of(n: i32) -> BookieResult<pb::Status> {
    pb::Status::try_from(n)
        .map_err(|_| BookieError::Internal(format!("bookie answered unknown status {n}")))
}

/// Rebuilds the result of a unary answer from its status and message.
fn answer(status: i32, message: String, ledger: LedgerId, entry: EntryId) -> BookieResult<()> {
    match BookieError::from_status(status_of(status)?, ledger, entry, message) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// A gRPC-level failure: the transport, not the bookie, failed.
fn transport_error(status: tonic::Status) -> BookieError {
    use tonic::Code;
    match status.code() {
        Code::ResourceExhausted | Code::OutOfRange => {
            BookieError::TooLarge(status.message().to_owned())
        }
        Code::Unimplemented | Code::InvalidArgument | Code::Internal | Code::DataLoss => {
            BookieError::Internal(format!("{}: {}", status.code(), status.message()))
        }
        _ => BookieError::Unavailable(status_text(&status)),
    }
}

fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = format!("{}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl GrpcBookieClient {
    /// A client for `id`; connects on first use.
    pub fn new(id: BookieId, options: ClientOptions) -> Self {
        let channel = Endpoint::from_shared(format!("http://{id}"))
            .map(|e| {
                e.connect_timeout(options.connect_timeout)
                    .tcp_nodelay(true)
                    .initial_stream_window_size(STREAM_WINDOW_BYTES)
                    .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
                    .http2_keep_alive_interval(options.keepalive_interval)
                    .keep_alive_timeout(options.keepalive_timeout)
                    .keep_alive_while_idle(true)
                    .connect_lazy()
            })
            .map_err(|e| format!("bookie id {id} is not a usable address: {e}"));
        GrpcBookieClient {
            id,
            options,
            channel,
            adds: Mutex::new(None),
            seq: AtomicU64::new(0),
        }
    }

    fn rpc(&self) -> BookieResult<RpcClient<Channel>> {
        let channel = self.channel.clone().map_err(BookieError::Unavailable)?;
        Ok(RpcClient::new(channel).max_decoding_message_size(self.options.message_size_max))
    }

    /// Runs a unary call within `limit`.
    async fn call<T, F>(&self, limit: Duration, call: F) -> BookieResult<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(transport_error(status)),
            Err(_) => Err(BookieError::Timeout(limit)),
        }
    }

    /// The current add stream, or a new one if there is none or it broke.
    fn add_stream(&self) -> BookieResult<Arc<AddStream>> {
        let mut current = lock(&self.adds);
        if let Some(stream) = current.as_ref()
            && !lock(&stream.state.waiters).broken
        {
            return Ok(stream.clone());
        }
        let mut rpc = self.rpc()?;
        let (tx, rx) = mpsc::channel(self.options.add_queue_capacity.max(1));
        let state = Arc::new(StreamState::default());
        let stream = Arc::new(AddStream {
            tx,
            state: state.clone(),
        });
        *current = Some(stream.clone());
        drop(current);
        let id = self.id.clone();
        // When the answers end, the requests end too, so the bookie's side of the stream closes.
        let answers_done = tokio_util::sync::CancellationToken::new();
        let requests = ReceiverStream::new(rx).take_until(answers_done.clone().cancelled_owned());
        // The reader holds only the waiters: when the client and its adds are gone, the request
        // stream ends, the bookie ends its answers, and this task ends.
        tokio::spawn(async move {
            let _done = answers_done.drop_guard();
            let why = match rpc.add(requests).await {
                Err(status) => status_text(&status),
                Ok(response) => {
                    let mut answers = response.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(answer)) => state.complete(answer),
                            Ok(None) => break "add stream ended by the bookie".to_owned(),
                            Err(status) => break status_text(&status),
                        }
                    }
                }
            };
            tracing::debug!(bookie = %id, reason = %why, "add stream closed");
            state.fail_all(&format!("bookie {id}: {why}"));
        });
        Ok(stream)
    }

    async fn add_inner(&self, entry: Entry, recovery: bool) -> BookieResult<()> {
        let key = (entry.ledger.0, entry.entry.0);
        let request = pb::AddRequest {
            entry: Some(entry.into()),
            recovery,
        };
        // A stream that broke between being handed out and the waiter's registration is
        // replaced once; a second break is the answer.
        for attempt in 0..2 {
            let stream = self.add_stream()?;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            {
                let mut w = lock(&stream.state.waiters);
                if w.broken {
                    if attempt == 0 {
                        continue;
                    }
                    return Err(BookieError::Unavailable(format!(
                        "bookie {}: add stream broke",
                        self.id
                    )));
                }
                w.map.entry(key).or_default().push((seq, tx));
            }
            let _guard = WaiterGuard {
                state: &stream.state,
                key,
                seq,
            };
            if stream.tx.send(request).await.is_err() {
                return Err(BookieError::Unavailable(format!(
                    "bookie {}: add stream closed",
                    self.id
                )));
            }
            return match rx.await {
                Ok(result) => result,
                Err(_) => Err(BookieError::Unavailable(format!(
                    "bookie {}: add stream closed",
                    self.id
                ))),
            };
        }
        Err(BookieError::Unavailable(format!(
            "bookie {}: add stream broke",
            self.id
        )))
    }
}

#[async_trait]
impl BookieClient for GrpcBookieClient {
    fn id(&self) -> &BookieId {
        &self.id
    }

    async fn add(&self, entry: Entry, recovery: bool) -> BookieResult<()> {
        let limit = self.options.request_timeout;
        match tokio::time::timeout(limit, self.add_inner(entry, recovery)).await {
            Ok(result) => result,
            Err(_) => Err(BookieError::Timeout(limit)),
        }
    }

    async fn read(
        &self,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> BookieResult<ReadResult> {
        let mut rpc = self.rpc()?;
        let request = pb::ReadRequest {
            ledger_id: ledger.0,
            entry_id: entry.0,
            fence,
        };
        let r = self
            .call(self.options.request_timeout, rpc.read(request))
            .await?;
        answer(r.status, r.message, ledger, entry)?;
        let Some(found) = r.entry else {
            return Err(BookieError::Internal(
                "bookie answered OK to a read without the entry".into(),
            ));
        };
        Ok(ReadResult {
            entry: found.into(),
            lac: r.last_add_confirmed,
        })
    }

    async fn read_range(
        &self,
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
        max_entries: u32,
        max_bytes: u64,
    ) -> BookieResult<Vec<Entry>> {
        let mut rpc = self.rpc()?;
        let request = pb::ReadRangeRequest {
            ledger_id: ledger.0,
            first_entry_id: first.0,
            last_entry_id: last.0,
            max_entries,
            max_bytes,
        };
        let r = self
            .call(self.options.request_timeout, rpc.read_range(request))
            .await?;
        answer(r.status, r.message, ledger, first)?;
        Ok(r.entries.into_iter().map(Into::into).collect())
    }

    async fn read_lac(
        &self,
        ledger: LedgerId,
        previous: i64,
        timeout: Duration,
    ) -> BookieResult<i64> {
        let mut rpc = self.rpc()?;
        let wait = timeout.min(LAC_POLL_TIMEOUT_MAX);
        let request = pb::ReadLacRequest {
            ledger_id: ledger.0,
            previous_lac: previous,
            timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let limit = self.options.request_timeout + wait;
        let r = self.call(limit, rpc.read_lac(request)).await?;
        answer(r.status, r.message, ledger, EntryId(0))?;
        Ok(r.last_add_confirmed)
    }

    async fn fence(&self, ledger: LedgerId) -> BookieResult<FenceResult> {
        let mut rpc = self.rpc()?;
        let request = pb::FenceRequest {
            ledger_id: ledger.0,
        };
        let r = self
            .call(self.options.request_timeout, rpc.fence(request))
            .await?;
        answer(r.status, r.message, ledger, EntryId(0))?;
        Ok(FenceResult {
            lac: r.last_add_confirmed,
            last_entry: r.last_entry_id,
        })
    }

    async fn delete_ledger(&self, ledger: LedgerId) -> BookieResult<()> {
        let mut rpc = self.rpc()?;
        let request = pb::DeleteLedgerRequest {
            ledger_id: ledger.0,
        };
        let r = self
            .call(self.options.request_timeout, rpc.delete_ledger(request))
            .await?;
        answer(r.status, r.message, ledger, EntryId(0))
    }

    async fn info(&self) -> BookieResult<BookieInfo> {
        let mut rpc = self.rpc()?;
        let r = self
            .call(self.options.request_timeout, rpc.info(pb::InfoRequest {}))
            .await?;
        let state = parse_state(&r.state).ok_or_else(|| {
            BookieError::Internal(format!("bookie answered unknown state {:?}", r.state))
        })?;
        Ok(BookieInfo {
            id: BookieId(r.bookie_id),
            state,
            free_bytes: r.free_bytes,
            used_bytes: r.used_bytes,
            version: r.version,
        })
    }
}

/// Hands out one [`GrpcBookieClient`] per bookie id, made on first request and kept.
#[derive(Debug, Default)]
pub struct GrpcConnector {
    options: ClientOptions,
    clients: Mutex<HashMap<BookieId, Arc<GrpcBookieClient>>>,
}

impl GrpcConnector {
    pub fn new(options: ClientOptions) -> Self {
        GrpcConnector {
            options,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `id`, the same one on every call.
    pub fn client(&self, id: &BookieId) -> Arc<GrpcBookieClient> {
        lock(&self.clients)
            .entry(id.clone())
            .or_insert_with(|| Arc::new(GrpcBookieClient::new(id.clone(), self.options.clone())))
            .clone()
    }
}

impl BookieConnector for GrpcConnector {
    fn connect(&self, id: &BookieId) -> Arc<dyn BookieClient> {
        self.client(id)
    }
}
