//! Concurrent requests sent to etcd as one transaction: group commit for the metadata store.
//!
//! A broker taking over a bundle opens every topic of it at once, and each open reads and
//! writes a handful of keys; a source quiescing a bundle seals every topic's ledgers at once.
//! Sent one by one, those hundreds of small requests each pay a gRPC round, a raft proposal and
//! an apply step in etcd, and on a small machine that per-request cost is what the takeover
//! waits for. Here requests that arrive while earlier ones are in flight wait for the next
//! batch: each conditional write becomes a nested transaction (its own compares, its own
//! outcome) of one outer transaction, each read a range of one read-only transaction.
//!
//! A request never waits for a batch while fewer than `Kind::IN_FLIGHT_MAX` batches of its kind
//! are in flight: alone, it goes at once. A request joins a batch not yet sent, so a read still starts after
//! its caller asked and sees every write completed before. The writes of one batch get one
//! revision (etcd's transaction does): writes to different keys made at the same time may share
//! a version, while a write that starts after another completed always gets a higher one.
//!
//! etcd refuses a transaction that writes one key twice, or has more than `--max-txn-ops`
//! (default 128) operations per level: a batch takes each key once (a second write to it waits
//! for the next batch, keeping its order) and at most [`BATCH_OPS_MAX`] requests. Writes bound to
//! a lease never join (a lease that expired refuses the whole transaction). When a batch of
//! several is refused outright, each of its requests is sent again on its own, so one bad
//! request cannot fail others.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use etcd_client::{GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse, TxnResponse};
use tokio::sync::oneshot;

use super::Core;
use super::client::{Call, Kind as CallKind};
use crate::{MetadataError, Result, Version};

/// Requests per batch at most (etcd's default `--max-txn-ops` is 128).
pub(super) const BATCH_OPS_MAX: usize = 64;
/// Request bytes per batch at most, well within etcd's 1.5 MiB request limit (a larger single
/// request still goes, alone).
const BATCH_BYTES_MAX: usize = 512 * 1024;
/// What the first page of a listing counts for against [`BATCH_BYTES_MAX`]: a batch may be all
/// first pages (their replies are bounded by the page's few keys).
pub(super) const LIST_PAGE_SHARE_BYTES: usize = BATCH_BYTES_MAX / BATCH_OPS_MAX;
/// Requests waiting for a batch at most; past it a request is sent on its own.
const WAITING_MAX: usize = 16 * 1024;

/// A conditional write's outcome: the nested transaction's response and the revision the batch
/// was applied at (the revision of its writes).
pub(super) struct Written {
    pub txn: TxnResponse,
    pub revision: Version,
}

/// One queued request: what to send, the key it touches and where its answer goes.
struct Pending<Req, Resp> {
    request: Req,
    key: Vec<u8>,
    size_bytes: usize,
    /// Queued ahead of ordinary requests (see `crate::priority`).
    urgent: bool,
    reply: oneshot::Sender<Result<Resp>>,
}

struct Queue<Req, Resp> {
    waiting: VecDeque<Pending<Req, Resp>>,
    in_flight: usize,
}

/// The queue of one kind of request (reads or writes).
pub(super) struct Batcher<Req, Resp> {
    queue: Mutex<Queue<Req, Resp>>,
}

impl<Req, Resp> Default for Batcher<Req, Resp> {
    fn default() -> Self {
        Batcher {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                in_flight: 0,
            }),
        }
    }
}

impl<Req, Resp> Batcher<Req, Resp> {
    fn queue(&self) -> MutexGuard<'_, Queue<Req, Resp>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next batch: waiting requests in order within the limits; with `one_per_key`, each
    /// key once.
    fn take(queue: &mut Queue<Req, Resp>, one_per_key: bool) -> Vec<Pending<Req, Resp>> {
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut bytes = 0usize;
        let mut kept = VecDeque::new();
        while let Some(p) = queue.waiting.pop_front() {
            let full = batch.len() >= BATCH_OPS_MAX
                || (!batch.is_empty() && bytes + p.size_bytes > BATCH_BYTES_MAX);
            if full {
                kept.push_back(p);
                break;
            }
            if one_per_key && !keys.insert(p.key.clone()) {
                kept.push_back(p);
                continue;
            }
            bytes += p.size_bytes;
            batch.push(p);
        }
        kept.append(&mut queue.waiting);
        queue.waiting = kept;
        batch
    }
}

/// How one kind of request is sent as a batch and answered.
pub(super) trait Kind: Sized + Send + 'static {
    type Resp: Send + 'static;
    /// etcd refuses a transaction writing one key twice.
    const ONE_PER_KEY: bool;
    /// Batches of this kind in flight at once; more requests wait and go together.
    const IN_FLIGHT_MAX: usize;
    /// The batcher of this kind in `core`.
    fn batcher(core: &Core) -> &Batcher<Self, Self::Resp>;
    /// The request sent as it is.
    fn send_one(
        core: Arc<Core>,
        request: Self,
    ) -> impl std::future::Future<Output = Result<Self::Resp>> + Send;
    /// What a batch of this kind is, for retries, logs and errors (`key`: its first request's).
    fn batch_call(key: &str) -> Call<'_>;
    /// The store key the request is about.
    fn key(&self) -> &str;
    /// The request as one operation of a batch's transaction.
    fn as_op(&self) -> TxnOp;
    /// The request's answer: its operation's response in the batch's reply, applied at
    /// `revision` (the reply's).
    fn answer(op: TxnOpResponse, revision: Version) -> Result<Self::Resp>;
}

/// Sends `request` (touching `key`) in the next batch of its kind and waits for its answer.
pub(super) async fn submit<K: Kind>(
    core: &Arc<Core>,
    request: K,
    key: Vec<u8>,
    size_bytes: usize,
) -> Result<K::Resp> {
    let (tx, rx) = oneshot::channel();
    let queued = Pending {
        request,
        key,
        size_bytes,
        urgent: crate::priority::is_urgent(),
        reply: tx,
    };
    let start = match enqueue(K::batcher(core), queued, K::ONE_PER_KEY, K::IN_FLIGHT_MAX) {
        Ok(start) => start,
        Err(queued) => return K::send_one(Arc::clone(core), queued.request).await,
    };
    if let Some(batch) = start {
        // A task of its own: the batch answers others too, whether or not this caller waits.
        tokio::spawn(serve::<K>(Arc::clone(core), batch));
    }
    rx.await.unwrap_or_else(|_| {
        Err(MetadataError::Indeterminate(
            "the etcd batch carrying this request ended without an answer".into(),
        ))
    })
}

/// Queues `p`: the batch to send now if a slot is free (`None`: an in-flight batch's task will
/// take it), or `p` back when too many wait.
#[allow(clippy::type_complexity)]
fn enqueue<Req, Resp>(
    batcher: &Batcher<Req, Resp>,
    p: Pending<Req, Resp>,
    one_per_key: bool,
    in_flight_max: usize,
) -> std::result::Result<Option<Vec<Pending<Req, Resp>>>, Pending<Req, Resp>> {
    let urgent = p.urgent;
    let mut q = batcher.queue();
    if q.waiting.len() >= WAITING_MAX {
        return Err(p);
    }
    if urgent {
        // Ahead of the ordinary requests, behind earlier urgent ones (they are few).
        let at = q.waiting.iter().take_while(|w| w.urgent).count();
        q.waiting.insert(at, p);
    } else {
        q.waiting.push_back(p);
    }
    if q.in_flight < in_flight_max {
        q.in_flight += 1;
        Ok(Some(Batcher::take(&mut q, one_per_key)))
    } else {
        Ok(None)
    }
}

/// Sends batches until nothing waits, then gives its slot back.
async fn serve<K: Kind>(core: Arc<Core>, mut batch: Vec<Pending<K, K::Resp>>) {
    loop {
        send(&core, batch).await;
        let mut q = K::batcher(&core).queue();
        batch = Batcher::take(&mut q, K::ONE_PER_KEY);
        if batch.is_empty() {
            q.in_flight -= 1;
            return;
        }
    }
}

async fn send<K: Kind>(core: &Arc<Core>, batch: Vec<Pending<K, K::Resp>>) {
    let (requests, replies): (Vec<K>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let n = requests.len();
    let answers = match <[K; 1]>::try_from(requests) {
        Ok([one]) => K::send_one(Arc::clone(core), one)
            .await
            .map(|a| vec![Ok(a)]),
        Err(requests) if requests.is_empty() => return,
        Err(requests) => send_many(Arc::clone(core), requests).await,
    };
    match answers {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            if n > 1 {
                tracing::debug!(requests = n, error = %e, "an etcd batch failed as a whole");
            }
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Sends several requests as one transaction: one answer per request, in order.
async fn send_many<K: Kind>(core: Arc<Core>, requests: Vec<K>) -> Result<Vec<Result<K::Resp>>> {
    let call = K::batch_call(requests.first().map_or("", K::key));
    let ops: Vec<TxnOp> = requests.iter().map(K::as_op).collect();
    let resp = match core.run_txn(call, Txn::new().and_then(ops)).await {
        Ok(resp) => resp,
        // Refused as a whole: each on its own, so one bad request fails alone.
        Err(MetadataError::Storage(_)) => return Ok(each_alone(core, requests).await),
        Err(e) => return Err(e),
    };
    let revision = resp
        .header()
        .map_or(Version::ZERO, |h| super::to_version(h.revision()));
    let ops = resp.op_responses();
    if ops.len() != requests.len() {
        let message = format!(
            "etcd answered a batch of {} requests with {} responses",
            requests.len(),
            ops.len()
        );
        // A write's outcome is then unknown; a read can simply be made again.
        return Err(match call.kind {
            CallKind::Mutation => MetadataError::Indeterminate(message),
            CallKind::Idempotent => MetadataError::Unavailable(message),
        });
    }
    Ok(ops.into_iter().map(|op| K::answer(op, revision)).collect())
}

/// A conditional write (a transaction of its own compares and operations).
pub(super) struct Write {
    pub txn: Txn,
    pub op: &'static str,
    /// The store key, for logs and errors.
    pub key: String,
}

impl Kind for Write {
    type Resp = Written;
    const ONE_PER_KEY: bool = true;
    // Writes are serialised by raft anyway: two keep one being proposed while one applies.
    const IN_FLIGHT_MAX: usize = 2;

    fn batcher(core: &Core) -> &Batcher<Self, Written> {
        &core.writes
    }

    async fn send_one(core: Arc<Core>, one: Write) -> Result<Written> {
        let call = Call::write(one.op, &one.key);
        let resp = core.run_txn(call, one.txn).await?;
        let revision = super::write_revision(resp.header(), &call)?;
        Ok(Written {
            txn: resp,
            revision,
        })
    }

    fn batch_call(key: &str) -> Call<'_> {
        Call::write("batch", key)
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn as_op(&self) -> TxnOp {
        TxnOp::txn(self.txn.clone())
    }

    fn answer(op: TxnOpResponse, revision: Version) -> Result<Written> {
        match op {
            TxnOpResponse::Txn(txn) if revision > Version::ZERO => Ok(Written { txn, revision }),
            other => Err(MetadataError::Indeterminate(format!(
                "etcd answered a batched write with {other:?} at revision {revision}"
            ))),
        }
    }
}

/// A read of one key, or of the first page of a range.
pub(super) struct Read {
    /// The etcd key (the range's start).
    pub full: Vec<u8>,
    pub options: Option<GetOptions>,
    pub op: &'static str,
    /// The store key or prefix, for logs and errors.
    pub key: String,
}

impl Kind for Read {
    type Resp = GetResponse;
    const ONE_PER_KEY: bool = false;
    // As many as writes: more in flight made smaller batches and a slower takeover.
    const IN_FLIGHT_MAX: usize = 2;

    fn batcher(core: &Core) -> &Batcher<Self, GetResponse> {
        &core.reads
    }

    async fn send_one(core: Arc<Core>, one: Read) -> Result<GetResponse> {
        core.cluster
            .run(Call::read(one.op, &one.key), |mut c| {
                let (key, options) = (one.full.clone(), one.options.clone());
                async move { c.kv.get(key, options).await }
            })
            .await
    }

    fn batch_call(key: &str) -> Call<'_> {
        Call::read("batch_get", key)
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn as_op(&self) -> TxnOp {
        TxnOp::get(self.full.clone(), self.options.clone())
    }

    fn answer(op: TxnOpResponse, _revision: Version) -> Result<GetResponse> {
        match op {
            TxnOpResponse::Get(get) => Ok(get),
            other => Err(MetadataError::Unavailable(format!(
                "etcd answered a batched read with {other:?}"
            ))),
        }
    }
}

async fn each_alone<K: Kind>(core: Arc<Core>, requests: Vec<K>) -> Vec<Result<K::Resp>> {
    let sends = requests
        .into_iter()
        .map(|r| K::send_one(Arc::clone(&core), r));
    futures::future::join_all(sends).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(key: &str, size_bytes: usize) -> (Pending<(), ()>, oneshot::Receiver<Result<()>>) {
        pending_as(key, size_bytes, false)
    }

    fn pending_as(
        key: &str,
        size_bytes: usize,
        urgent: bool,
    ) -> (Pending<(), ()>, oneshot::Receiver<Result<()>>) {
        let (tx, rx) = oneshot::channel();
        (
            Pending {
                request: (),
                key: key.as_bytes().to_vec(),
                size_bytes,
                urgent,
                reply: tx,
            },
            rx,
        )
    }

    #[test]
    fn urgent_requests_queue_ahead_of_ordinary_ones_in_their_own_order() {
        let batcher: Batcher<(), ()> = Batcher::default();
        let mut rxs = Vec::new();
        for (key, urgent) in [("/a", false), ("/u1", true), ("/b", false), ("/u2", true)] {
            let (p, rx) = pending_as(key, 1, urgent);
            rxs.push(rx);
            // No slot free: everything waits for an in-flight batch.
            let queued = enqueue(&batcher, p, true, 0);
            assert!(matches!(queued, Ok(None)));
        }
        let mut q = batcher.queue();
        assert_eq!(
            keys(&Batcher::take(&mut q, true)),
            ["/u1", "/u2", "/a", "/b"]
        );
    }

    fn keys(batch: &[Pending<(), ()>]) -> Vec<String> {
        batch
            .iter()
            .map(|p| String::from_utf8_lossy(&p.key).into_owned())
            .collect()
    }

    fn queue(items: &[(&str, usize)]) -> (Queue<(), ()>, Vec<oneshot::Receiver<Result<()>>>) {
        let mut q = Queue {
            waiting: VecDeque::new(),
            in_flight: 0,
        };
        let mut rxs = Vec::new();
        for (k, size) in items {
            let (p, rx) = pending(k, *size);
            q.waiting.push_back(p);
            rxs.push(rx);
        }
        (q, rxs)
    }

    #[test]
    fn a_batch_takes_each_key_once_and_keeps_the_rest_in_order() {
        let (mut q, _rx) = queue(&[("/a", 1), ("/b", 1), ("/a", 1), ("/c", 1), ("/b", 1)]);
        let batch = Batcher::take(&mut q, true);
        assert_eq!(keys(&batch), ["/a", "/b", "/c"]);
        let rest: Vec<Pending<(), ()>> = q.waiting.drain(..).collect();
        assert_eq!(keys(&rest), ["/a", "/b"]);
        // Reads of one key may share a batch.
        let (mut q, _rx) = queue(&[("/a", 1), ("/a", 1)]);
        assert_eq!(keys(&Batcher::take(&mut q, false)), ["/a", "/a"]);
    }

    #[test]
    fn a_batch_stops_at_its_count_and_byte_limits_but_never_takes_nothing() {
        let items: Vec<(String, usize)> = (0..BATCH_OPS_MAX + 5)
            .map(|i| (format!("/k{i}"), 10))
            .collect();
        let refs: Vec<(&str, usize)> = items.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        let (mut q, _rx) = queue(&refs);
        assert_eq!(Batcher::take(&mut q, true).len(), BATCH_OPS_MAX);
        assert_eq!(q.waiting.len(), 5);

        let (mut q, _rx) = queue(&[
            ("/big", BATCH_BYTES_MAX * 2),
            ("/small", 1),
            ("/half", BATCH_BYTES_MAX / 2),
            ("/more", BATCH_BYTES_MAX / 2 + 1),
        ]);
        assert_eq!(keys(&Batcher::take(&mut q, true)), ["/big"]);
        assert_eq!(keys(&Batcher::take(&mut q, true)), ["/small", "/half"]);
        assert_eq!(keys(&Batcher::take(&mut q, true)), ["/more"]);
        assert!(Batcher::take(&mut q, true).is_empty());
    }
}
