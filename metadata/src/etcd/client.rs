//! Connections to the etcd members and the one place requests are sent and retried.
//!
//! etcd-client's own balanced channel misbehaves when an endpoint is dead (a request can wait for
//! a member that never comes back), so the store keeps one single-endpoint client per member,
//! remembers the member that answered last, and rotates to the next on a connection failure —
//! within the store's overall request timeout.
//!
//! Failures are sorted the way callers must treat them (as in Materialize's persist): a request
//! that certainly never reached a member (the connection could not be made, or the member refused
//! it before proposing it to raft) is retried on the next member and ends as
//! [`MetadataError::Unavailable`]; a write whose reply was lost after it was sent ends as
//! [`MetadataError::Indeterminate`], because retrying it blindly could apply it twice. Reads and
//! other idempotent requests are retried in both cases.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, KvClient, LeaseClient, WatchClient};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock::SharedClock;
use crate::{MetadataError, Result, SessionId, Version};

/// Largest message the client accepts from etcd. etcd itself sends up to `i32::MAX` bytes (a
/// catch-up watch response batches up to 1000 revisions, each may carry 1 MiB values); a smaller
/// limit would turn such a response into a watch that can never make progress.
const MESSAGE_SIZE_MAX_BYTES: usize = i32::MAX as usize;
/// HTTP/2 keep-alive ping interval on streams (watches, lease keep-alives). etcd refuses pings
/// more often than every 5 s (`--grpc-keepalive-min-time`), so stay above that.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after every member failed once, doubling up to the maximum.
const ROUND_BACKOFF_MIN: Duration = Duration::from_millis(25);
const ROUND_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A read gives one member at most this share of what is left of its timeout, so that a member
/// that accepts the request but never answers leaves time to ask another.
const READ_ATTEMPT_SHARE: u32 = 2;
const READ_ATTEMPT_MIN: Duration = Duration::from_millis(250);

/// The clients of one etcd member, cheap to clone (they share one HTTP/2 connection).
#[derive(Clone)]
pub(super) struct Conn {
    pub kv: KvClient,
    pub watch: WatchClient,
    pub lease: LeaseClient,
}

struct Member {
    url: String,
    /// Built lazily, dropped after a failure so the next use starts from a fresh connection.
    conn: Mutex<Option<Conn>>,
}

/// Whether a request may be sent again after its outcome became unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Reads, watch and keep-alive streams, lease revoke: repeating them does no harm.
    Idempotent,
    /// Writes: once sent, a lost reply means the outcome is unknown.
    Mutation,
}

/// What a request is, for retries, logs and error messages.
#[derive(Clone, Copy, Debug)]
pub(super) struct Call<'a> {
    pub op: &'static str,
    pub key: &'a str,
    pub kind: Kind,
    /// The lease the request uses: "lease not found" then means the session is lost.
    pub lease: Option<i64>,
    /// The revision a read asks for: "compacted" then names it.
    pub revision: Option<Version>,
}

impl<'a> Call<'a> {
    pub fn read(op: &'static str, key: &'a str) -> Self {
        Call {
            op,
            key,
            kind: Kind::Idempotent,
            lease: None,
            revision: None,
        }
    }

    pub fn write(op: &'static str, key: &'a str) -> Self {
        Call {
            kind: Kind::Mutation,
            ..Call::read(op, key)
        }
    }

    pub fn with_lease(self, lease: i64) -> Self {
        Call {
            lease: Some(lease),
            ..self
        }
    }

    pub fn at_revision(self, revision: Version) -> Self {
        Call {
            revision: Some(revision),
            ..self
        }
    }
}

/// How a failed request ended.
enum Failure {
    /// The request certainly did not take effect: try another member.
    NotSent(String),
    /// The request may have been applied.
    Unknown(String),
    /// A member answered with a definite error that another member would repeat.
    Rejected(tonic::Status),
}

/// The members of one etcd cluster and the request loop over them.
pub(super) struct Cluster {
    members: Vec<Member>,
    /// Index of the member that answered last; requests start there.
    current: AtomicUsize,
    connect_options: ConnectOptions,
    request_timeout: Duration,
    pub clock: SharedClock,
    pub shutdown: CancellationToken,
}

impl Cluster {
    pub fn new(
        endpoints: &[String],
        connect_timeout: Duration,
        request_timeout: Duration,
        clock: SharedClock,
    ) -> Self {
        let connect_options = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            // A member cut off from the quorum refuses requests (and ends watches) at once
            // instead of serving stale data or waiting; the store then moves to another member.
            .with_require_leader(true)
            .with_keep_alive(
                HTTP2_KEEPALIVE_INTERVAL,
                connect_timeout.max(Duration::from_secs(1)),
            )
            // etcd closes connections that ping while no stream is open.
            .with_keep_alive_while_idle(false);
        Cluster {
            members: endpoints
                .iter()
                .map(|url| Member {
                    url: url.clone(),
                    conn: Mutex::new(None),
                })
                .collect(),
            current: AtomicUsize::new(0),
            connect_options,
            request_timeout,
            clock,
            shutdown: CancellationToken::new(),
        }
    }

    /// The endpoint requests go to first.
    pub fn current_endpoint(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.members.len().max(1);
        self.members.get(i).map_or("", |m| m.url.as_str())
    }

    /// The clients of member `i`, built on first use (building does not connect; the connection
    /// is made by the first request, bounded by the connect timeout).
    async fn conn(&self, i: usize) -> std::result::Result<Conn, etcd_client::Error> {
        let member = &self.members[i];
        if let Some(conn) = lock(&member.conn).clone() {
            return Ok(conn);
        }
        let client =
            Client::connect([member.url.as_str()], Some(self.connect_options.clone())).await?;
        let conn = Conn {
            kv: client
                .kv_client()
                .max_decoding_message_size(MESSAGE_SIZE_MAX_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MESSAGE_SIZE_MAX_BYTES),
            lease: client.lease_client(),
        };
        Ok(lock(&member.conn).get_or_insert(conn).clone())
    }

    /// Checks that every endpoint is a well-formed URL, so a typo fails at connect.
    pub async fn check_endpoints(&self) -> Result<()> {
        if self.members.is_empty() {
            return Err(MetadataError::Unavailable(
                "no etcd endpoints configured".into(),
            ));
        }
        for i in 0..self.members.len() {
            if let Err(e) = self.conn(i).await {
                return Err(MetadataError::Unavailable(format!(
                    "invalid etcd endpoint {:?}: {e}",
                    self.members[i].url
                )));
            }
        }
        Ok(())
    }

    fn forget(&self, i: usize) {
        lock(&self.members[i].conn).take();
    }

    /// Sends `call` through `send` to the current member, rotating through the others on
    /// connection failures until the request timeout, and sorts the failure as described in the
    /// module documentation.
    pub async fn run<T, F, Fut>(&self, call: Call<'_>, mut send: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        if self.shutdown.is_cancelled() {
            return Err(MetadataError::Closed);
        }
        // One line per request at trace level: which keys a code path touches, and how often.
        tracing::trace!(op = call.op, key = call.key, "etcd request");
        let n = self.members.len();
        if n == 0 {
            return Err(MetadataError::Unavailable(
                "no etcd endpoints configured".into(),
            ));
        }
        let deadline = self.clock.now() + self.request_timeout;
        let start = self.current.load(Ordering::Relaxed);
        let mut backoff = ROUND_BACKOFF_MIN;
        let mut last_error = String::from("no member was tried");
        for attempt in 0usize.. {
            if attempt > 0 && attempt % n == 0 {
                // Every member failed once; they may be electing a leader. Pause, then go round again.
                let pause = backoff.min(deadline.saturating_duration_since(self.clock.now()));
                backoff = (backoff * 2).min(ROUND_BACKOFF_MAX);
                tokio::select! {
                    () = self.clock.sleep(pause) => {}
                    () = self.shutdown.cancelled() => return Err(MetadataError::Closed),
                }
            }
            let remaining = deadline.saturating_duration_since(self.clock.now());
            if remaining.is_zero() {
                break;
            }
            let i = (start + attempt) % n;
            let url = self.members[i].url.as_str();
            let conn = match self.conn(i).await {
                Ok(conn) => conn,
                Err(e) => {
                    last_error = format!("{url}: {e}");
                    continue;
                }
            };
            let budget = match call.kind {
                Kind::Idempotent if n > 1 => (remaining / READ_ATTEMPT_SHARE)
                    .max(READ_ATTEMPT_MIN)
                    .min(remaining),
                _ => remaining,
            };
            let outcome = tokio::select! {
                outcome = tokio::time::timeout(budget, send(conn)) => outcome,
                () = self.shutdown.cancelled() => {
                    return Err(match call.kind {
                        Kind::Idempotent => MetadataError::Closed,
                        Kind::Mutation => MetadataError::Indeterminate(format!(
                            "{} {}: store shut down while the request was in flight",
                            call.op, call.key
                        )),
                    });
                }
            };
            let failure = match outcome {
                Ok(Ok(value)) => {
                    if i != start % n {
                        debug!(
                            endpoint = url,
                            op = call.op,
                            "etcd requests now go to this member"
                        );
                    }
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) => classify(e),
                Err(_) => Failure::Unknown(format!("no reply within {budget:?}")),
            };
            match failure {
                Failure::Rejected(status) => return Err(rejected(&call, url, status)),
                Failure::Unknown(e) if call.kind == Kind::Mutation => {
                    warn!(endpoint = url, op = call.op, key = call.key, error = %e,
                        "etcd write outcome unknown");
                    self.forget(i);
                    return Err(MetadataError::Indeterminate(format!(
                        "{} {} at {url}: {e}",
                        call.op, call.key
                    )));
                }
                Failure::NotSent(e) | Failure::Unknown(e) => {
                    warn!(endpoint = url, op = call.op, key = call.key, error = %e,
                        "etcd request failed; trying the next member");
                    self.forget(i);
                    last_error = format!("{url}: {e}");
                }
            }
        }
        Err(MetadataError::Unavailable(format!(
            "{} {}: no etcd member answered within {:?}; last error: {last_error}",
            call.op, call.key, self.request_timeout
        )))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sorts an etcd-client error: see the module documentation.
fn classify(error: etcd_client::Error) -> Failure {
    use tonic::Code;
    let status = match error {
        etcd_client::Error::GRpcStatus(status) => status,
        // Raised while building the channel, before anything is sent.
        etcd_client::Error::TransportError(e) => return Failure::NotSent(e.to_string()),
        etcd_client::Error::InvalidUri(e) => return Failure::NotSent(e.to_string()),
        // The keep-alive stream's first reply said the lease has no time left.
        etcd_client::Error::LeaseKeepAliveError(e) if e.contains("not found") => {
            return Failure::Rejected(tonic::Status::not_found(e));
        }
        other => return Failure::Unknown(other.to_string()),
    };
    let message = status.message();
    match status.code() {
        _ if caused_by_connect_error(&status) => Failure::NotSent(status.to_string()),
        // With `require_leader`, a member without a leader refuses a request before proposing it.
        Code::Unavailable if message.contains("no leader") => Failure::NotSent(status.to_string()),
        Code::ResourceExhausted if message.contains("too many requests") => {
            Failure::NotSent(status.to_string())
        }
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Unauthenticated => Failure::Rejected(status),
        // Unavailable ("request timed out", "leader changed", a reset connection), Unknown,
        // Internal, Cancelled, DeadlineExceeded…: the request may have been applied.
        _ => Failure::Unknown(status.to_string()),
    }
}

/// True when the status stems from failing to open the connection: nothing was sent.
fn caused_by_connect_error(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The error for a definite refusal by etcd.
fn rejected(call: &Call<'_>, url: &str, status: tonic::Status) -> MetadataError {
    let message = status.message();
    if let Some(lease) = call.lease
        && message.contains("lease not found")
    {
        return MetadataError::SessionLost(SessionId(lease));
    }
    if message.contains("compacted") {
        let requested = call.revision.unwrap_or_default();
        return MetadataError::Compacted {
            requested,
            oldest: Version(requested.0 + 1),
        };
    }
    warn!(endpoint = url, op = call.op, key = call.key, error = %status, "etcd refused the request");
    MetadataError::Storage(format!(
        "etcd at {url} refused {} {}: {:?}: {message}",
        call.op,
        call.key,
        status.code()
    ))
}
