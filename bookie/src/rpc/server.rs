//! The gRPC server: serves any [`BookieClient`] over `proto/bookie.proto`.
//!
//! Adds arrive on a bidirectional stream. Each request is started as soon as it is read, so many
//! adds are in flight at once (at most [`ServerOptions::adds_in_flight_max`] per stream; the
//! stream is not read further until one completes), and each is answered when it completes —
//! not necessarily in the order sent — with its ledger and entry ids. A malformed request gets a
//! `BAD_REQUEST` answer; it never ends the stream or the server.
//!
//! Shutdown (the token given to [`serve`]) is graceful: no new connections or requests, adds in
//! flight are answered, then add streams end (the client sees its stream end and reconnects
//! elsewhere), long polls answer `SHUTTING_DOWN` at once, and after
//! [`ServerOptions::shutdown_grace`] whatever is left is dropped.

use magnetar_metadata::clock;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use magnetar_metadata::{EntryId, LedgerId};
use magnetar_proto::bookie as pb;
use pb::bookie_server::{Bookie as BookieRpc, BookieServer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::{MESSAGE_OVERHEAD_BYTES, MESSAGE_SIZE_MAX_BYTES};
use crate::api::{BookieClient, BookieError, BookieState, NO_ENTRY};

/// Adds in flight per add stream by default.
pub const ADDS_IN_FLIGHT_MAX: usize = 10_000;
/// A LAC long poll waits at most this long, whatever the caller asked.
pub const LAC_POLL_TIMEOUT_MAX: Duration = Duration::from_secs(30);

/// HTTP/2 flow-control windows. The default 64 KiB would cap one add stream at one window per
/// round trip and make a 5 MiB entry take some eighty of them.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// How the server behaves; [`Default`] suits a bookie with default options.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Largest gRPC message accepted or sent. Must exceed the bookie's largest entry by
    /// [`MESSAGE_OVERHEAD_BYTES`]; `read_range` answers are cut to fit it. Default 8 MiB.
    pub message_size_max: usize,
    /// Adds in flight per stream at most; beyond, the stream is not read until one completes.
    pub adds_in_flight_max: usize,
    /// Answers waiting to be sent per add stream at most.
    pub add_responses_queued_max: usize,
    /// HTTP/2 pings on idle connections, to notice dead peers.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// After shutdown is asked, how long in-flight requests get before the server stops anyway.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            message_size_max: MESSAGE_SIZE_MAX_BYTES,
            adds_in_flight_max: ADDS_IN_FLIGHT_MAX,
            add_responses_queued_max: 1024,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServerOptions {
    /// Options whose message size fits entries of up to `entry_size_bytes_max`.
    pub fn for_entry_size(entry_size_bytes_max: usize) -> Self {
        ServerOptions {
            message_size_max: MESSAGE_SIZE_MAX_BYTES
                .max(entry_size_bytes_max.saturating_add(MESSAGE_OVERHEAD_BYTES)),
            ..ServerOptions::default()
        }
    }
}

/// Serves `bookie` on `listener` until `shutdown` fires, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    bookie: Arc<dyn BookieClient>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, bookie, shutdown, ServerOptions::default()).await
}

/// [`serve`] with explicit options.
pub async fn serve_with(
    listener: TcpListener,
    bookie: Arc<dyn BookieClient>,
    shutdown: CancellationToken,
    options: ServerOptions,
) -> Result<(), tonic::transport::Error> {
    let local = listener.local_addr().ok();
    let grace = options.shutdown_grace;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(Some(options.keepalive_interval))
        .http2_keepalive_timeout(Some(options.keepalive_timeout))
        .add_service(service(bookie, shutdown.clone(), options))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::pin!(server);
    tracing::debug!(addr = ?local, "bookie gRPC server started");
    tokio::select! {
        result = &mut server => result,
        _ = async { shutdown.cancelled().await; clock::system().sleep(grace).await } => {
            tracing::warn!(addr = ?local, ?grace, "bookie gRPC server did not drain in time; stopping");
            Ok(())
        }
    }
}

/// The tonic service, for callers that build their own `Server` (more services on one port).
pub fn service(
    bookie: Arc<dyn BookieClient>,
    shutdown: CancellationToken,
    options: ServerOptions,
) -> BookieServer<BookieService> {
    let size = options.message_size_max;
    BookieServer::new(BookieService {
        bookie,
        shutdown,
        options,
    })
    .max_decoding_message_size(size)
    .max_encoding_message_size(size)
}

/// The gRPC face of a [`BookieClient`].
pub struct BookieService {
    bookie: Arc<dyn BookieClient>,
    shutdown: CancellationToken,
    options: ServerOptions,
}

impl fmt::Debug for BookieService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BookieService")
            .field("bookie", self.bookie.id())
            .finish_non_exhaustive()
    }
}

fn code(e: &BookieError) -> i32 {
    e.status() as i32
}

const OK: i32 = pb::Status::Ok as i32;

/// Runs one add and builds its answer.
async fn add_one(bookie: Arc<dyn BookieClient>, request: pb::AddRequest) -> pb::AddResponse {
    let Some(entry) = request.entry else {
        return pb::AddResponse {
            ledger_id: 0,
            entry_id: 0,
            status: pb::Status::BadRequest as i32,
            message: "add request without an entry".into(),
        };
    };
    let (ledger_id, entry_id) = (entry.ledger_id, entry.entry_id);
    match bookie.add(entry.into(), request.recovery).await {
        Ok(()) => pb::AddResponse {
            ledger_id,
            entry_id,
            status: OK,
            message: String::new(),
        },
        Err(e) => pb::AddResponse {
            ledger_id,
            entry_id,
            status: code(&e),
            message: e.to_string(),
        },
    }
}

type AddStream = Pin<Box<dyn Stream<Item = Result<pb::AddResponse, Status>> + Send>>;

/// Reads adds from `inbound` and answers them on `out` as they complete, until the client closes
/// its side (or breaks) and everything in flight is answered, or shutdown.
async fn run_add_stream(
    bookie: Arc<dyn BookieClient>,
    mut inbound: Streaming<pb::AddRequest>,
    out: mpsc::Sender<Result<pb::AddResponse, Status>>,
    shutdown: CancellationToken,
    in_flight_max: usize,
) {
    let mut pending = FuturesUnordered::new();
    let mut reading = true;
    loop {
        if !reading && pending.is_empty() {
            break;
        }
        tokio::select! {
            Some(answer) = pending.next(), if !pending.is_empty() => {
                if out.send(Ok(answer)).await.is_err() {
                    // The client is gone; what is in flight completes in the bookie regardless.
                    return;
                }
            }
            message = inbound.message(), if reading && pending.len() < in_flight_max => {
                match message {
                    Ok(Some(request)) => pending.push(add_one(bookie.clone(), request)),
                    Ok(None) => reading = false,
                    Err(status) => {
                        tracing::debug!(%status, "add stream broke");
                        reading = false;
                    }
                }
            }
            _ = shutdown.cancelled(), if reading => reading = false,
        }
    }
}

#[tonic::async_trait]
impl BookieRpc for BookieService {
    type AddStream = AddStream;

    async fn add(
        &self,
        request: Request<Streaming<pb::AddRequest>>,
    ) -> Result<Response<Self::AddStream>, Status> {
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable("bookie shutting down"));
        }
        let (tx, rx) = mpsc::channel(self.options.add_responses_queued_max.max(1));
        tokio::spawn(run_add_stream(
            self.bookie.clone(),
            request.into_inner(),
            tx,
            self.shutdown.clone(),
            self.options.adds_in_flight_max.max(1),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let r = request.into_inner();
        let answer = match self
            .bookie
            .read(LedgerId(r.ledger_id), EntryId(r.entry_id), r.fence)
            .await
        {
            Ok(read) => pb::ReadResponse {
                status: OK,
                message: String::new(),
                entry: Some(read.entry.into()),
                last_add_confirmed: read.lac,
            },
            Err(e) => pb::ReadResponse {
                status: code(&e),
                message: e.to_string(),
                entry: None,
                last_add_confirmed: NO_ENTRY,
            },
        };
        Ok(Response::new(answer))
    }

    async fn read_range(
        &self,
        request: Request<pb::ReadRangeRequest>,
    ) -> Result<Response<pb::ReadRangeResponse>, Status> {
        let r = request.into_inner();
        // The answer must fit one message: at least one entry always does (entries are limited
        // to less than the message size), more only as far as the limit allows.
        let fit = self
            .options
            .message_size_max
            .saturating_sub(MESSAGE_OVERHEAD_BYTES) as u64;
        let max_bytes = if r.max_bytes == 0 {
            fit
        } else {
            r.max_bytes.min(fit)
        };
        let answer = match self
            .bookie
            .read_range(
                LedgerId(r.ledger_id),
                EntryId(r.first_entry_id),
                EntryId(r.last_entry_id),
                r.max_entries,
                max_bytes,
            )
            .await
        {
            Ok(entries) => pb::ReadRangeResponse {
                status: OK,
                message: String::new(),
                last_add_confirmed: entries.iter().map(|e| e.lac).max().unwrap_or(NO_ENTRY),
                entries: entries.into_iter().map(Into::into).collect(),
            },
            Err(e) => pb::ReadRangeResponse {
                status: code(&e),
                message: e.to_string(),
                entries: Vec::new(),
                last_add_confirmed: NO_ENTRY,
            },
        };
        Ok(Response::new(answer))
    }

    async fn read_lac(
        &self,
        request: Request<pb::ReadLacRequest>,
    ) -> Result<Response<pb::ReadLacResponse>, Status> {
        let r = request.into_inner();
        let wait = Duration::from_millis(u64::from(r.timeout_ms)).min(LAC_POLL_TIMEOUT_MAX);
        let result = tokio::select! {
            result = self.bookie.read_lac(LedgerId(r.ledger_id), r.previous_lac, wait) => result,
            _ = self.shutdown.cancelled(), if !wait.is_zero() => Err(BookieError::ShuttingDown),
        };
        let answer = match result {
            Ok(lac) => pb::ReadLacResponse {
                status: OK,
                message: String::new(),
                last_add_confirmed: lac,
            },
            Err(e) => pb::ReadLacResponse {
                status: code(&e),
                message: e.to_string(),
                last_add_confirmed: NO_ENTRY,
            },
        };
        Ok(Response::new(answer))
    }

    async fn fence(
        &self,
        request: Request<pb::FenceRequest>,
    ) -> Result<Response<pb::FenceResponse>, Status> {
        let r = request.into_inner();
        let answer = match self.bookie.fence(LedgerId(r.ledger_id)).await {
            Ok(fenced) => pb::FenceResponse {
                status: OK,
                message: String::new(),
                last_add_confirmed: fenced.lac,
                last_entry_id: fenced.last_entry,
            },
            Err(e) => pb::FenceResponse {
                status: code(&e),
                message: e.to_string(),
                last_add_confirmed: NO_ENTRY,
                last_entry_id: NO_ENTRY,
            },
        };
        Ok(Response::new(answer))
    }

    async fn delete_ledger(
        &self,
        request: Request<pb::DeleteLedgerRequest>,
    ) -> Result<Response<pb::DeleteLedgerResponse>, Status> {
        let r = request.into_inner();
        let answer = match self.bookie.delete_ledger(LedgerId(r.ledger_id)).await {
            Ok(()) => pb::DeleteLedgerResponse {
                status: OK,
                message: String::new(),
            },
            Err(e) => pb::DeleteLedgerResponse {
                status: code(&e),
                message: e.to_string(),
            },
        };
        Ok(Response::new(answer))
    }

    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let answer = match self.bookie.info().await {
            Ok(info) => pb::InfoResponse {
                bookie_id: info.id.0,
                state: info.state.as_str().to_owned(),
                free_bytes: info.free_bytes,
                used_bytes: info.used_bytes,
                version: info.version,
            },
            // The info answer has no status field: a bookie that cannot say is unavailable.
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        Ok(Response::new(answer))
    }
}

/// Parses the state string of an info answer.
pub(crate) fn parse_state(s: &str) -> Option<BookieState> {
    match s {
        "read_write" => Some(BookieState::ReadWrite),
        "read_only" => Some(BookieState::ReadOnly),
        _ => None,
    }
}
