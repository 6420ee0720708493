//! etcd backend, for clusters: the [`MetadataStore`] contract on a real etcd (v3 API, tested
//! against 3.4), with every key stored under a configurable root.
//!
//! This module owns the mapping of the contract onto etcd: a key's [`Version`] is its
//! `mod_revision`; compare-and-set is one etcd transaction whose else-branch reads the current
//! version, so a conflict comes back as data from the same atomic step; a listing reads pages at
//! the revision of its first page, so it is one snapshot; a session is an etcd lease; requests
//! made at the same time go as one transaction (`batch`). Submodules:
//! `client` (one connection per member, failover, and sorting failures into retryable,
//! indeterminate and refused), `watch` (watches that resume on another member from the last
//! revision seen) and `session` (lease keep-alive and loss).

mod batch;
mod client;
mod session;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, ResponseHeader, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};

use self::client::{Call, Cluster};
use crate::clock::SharedClock;
use crate::store::validate_prefix;
use crate::{
    DeleteOutcome, Expected, Listing, MetadataError, MetadataStore, PutOutcome, Result, Session,
    Version, Versioned, WatchStream, validate_key, validate_value,
};

/// Keys asked for by the first page of a listing; later pages are sized from the bytes per key
/// seen so far, so a page stays near [`LIST_PAGE_BYTES_TARGET`] whatever the value sizes. The
/// first page joins a batch of other reads: few keys keep that batch's reply bounded (64 pages
/// of 10 values of at most 1.5 MiB stay below gRPC's 2 GiB) while most listings — a topic's
/// cursors, its ledger-list chunks — fit in it whole.
const LIST_FIRST_PAGE_KEYS: i64 = 10;
const LIST_PAGE_KEYS_MAX: i64 = 500;
const LIST_PAGE_BYTES_TARGET: usize = 4 * 1024 * 1024;
/// A listing whose snapshot revision is compacted while it is read starts over, this many times.
const LIST_RESTARTS_MAX: u32 = 3;

/// How to reach an etcd cluster.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs of the members (`http://host:2379`). Requests go to one member at a time and
    /// move on to the next when it cannot be reached; listing every member lets the store
    /// survive the loss of any minority of them.
    pub endpoints: Vec<String>,
    /// Prefix under which every key is stored, e.g. `/magnetar`: it must start with `/`, and a
    /// trailing `/` is ignored. Lets several clusters or tests share one etcd; keys seen through
    /// the store are relative to it. Empty (the default): keys are stored as they are.
    pub root: String,
    /// Longest wait for a connection to one member before trying the next.
    pub connect_timeout: Duration,
    /// Longest time one store operation may take, across all its retries and members. Also
    /// bounds how long a dead cluster takes to report [`MetadataError::Unavailable`].
    pub request_timeout: Duration,
    /// Deadlines, backoff and lease keep-alive timing.
    pub clock: SharedClock,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            root: String::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            clock: crate::clock::system(),
        }
    }
}

/// A [`MetadataStore`] on an etcd cluster. Cheap to clone; when the last clone is dropped (or
/// [`EtcdStore::shutdown`] is called) its watches end and its sessions stop being kept alive.
#[derive(Clone)]
pub struct EtcdStore {
    handle: Arc<Handle>,
}

/// Shuts the background tasks down when the last [`EtcdStore`] clone goes. The tasks hold the
/// [`Core`], not this, so they do not keep the store alive.
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.cluster.shutdown.cancel();
    }
}

/// What the store's operations and background tasks share.
pub(super) struct Core {
    cluster: Cluster,
    /// Normalized: empty or `/…` without a trailing `/`.
    root: String,
    /// Concurrent conditional writes and reads, sent as one transaction each (`batch`).
    writes: batch::Batcher<batch::Write, batch::Written>,
    reads: batch::Batcher<batch::Read, etcd_client::GetResponse>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("root", &self.core().root)
            .field("current_endpoint", &self.core().cluster.current_endpoint())
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that some member answers within the request timeout
    /// ([`MetadataError::Unavailable`] otherwise).
    pub async fn connect(options: EtcdOptions) -> Result<EtcdStore> {
        let root = options.root.trim_end_matches('/').to_owned();
        if !root.is_empty() {
            validate_key(&root)?;
        }
        let core = Arc::new(Core {
            cluster: Cluster::new(
                &options.endpoints,
                options.connect_timeout,
                options.request_timeout,
                options.clock,
            ),
            root,
            writes: batch::Batcher::default(),
            reads: batch::Batcher::default(),
        });
        core.cluster.check_endpoints().await?;
        let store = EtcdStore {
            handle: Arc::new(Handle { core }),
        };
        let probe = store.core().full_key("/");
        store
            .core()
            .cluster
            .run(Call::read("connect", &store.core().root), |mut c| {
                let key = probe.clone();
                async move {
                    c.kv.get(key, Some(GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await?;
        Ok(store)
    }

    /// Ends the store's watches (they yield [`MetadataError::Closed`]) and stops keeping its
    /// sessions alive; later operations fail with [`MetadataError::Closed`].
    pub fn shutdown(&self) {
        self.core().cluster.shutdown.cancel();
    }

    /// The endpoint requests currently go to first (the member that answered last).
    pub fn current_endpoint(&self) -> String {
        self.core().cluster.current_endpoint().to_owned()
    }

    fn core(&self) -> &Arc<Core> {
        &self.handle.core
    }

    async fn put_with(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
        lease: Option<i64>,
    ) -> Result<PutOutcome> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let core = self.core();
        let full = core.full_key(key);
        let value = Vec::from(value);
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        if let Some(id) = lease {
            // Alone: a lease that expired refuses the whole transaction it is in.
            let call = Call::write("put_ephemeral", key).with_lease(id);
            let txn = put_txn(&full, value, expected, options);
            let resp = core.run_txn(call, txn).await?;
            let revision = write_revision(resp.header(), &call)?;
            return Ok(put_outcome(&resp, revision));
        }
        let size_bytes = full.len() + value.len();
        let txn = put_txn(&full, value, expected, options);
        let written = batch::submit(
            core,
            batch::Write {
                txn,
                op: "put",
                key: key.to_owned(),
            },
            full,
            size_bytes,
        )
        .await?;
        Ok(put_outcome(&written.txn, written.revision))
    }
}

/// The transaction of a conditional put: the put if `expected` holds, else a read of the key's
/// version (so a conflict comes back as data from the same atomic step).
fn put_txn(full: &[u8], value: Vec<u8>, expected: Expected, options: Option<PutOptions>) -> Txn {
    let put = TxnOp::put(full.to_vec(), value, options);
    let compares = match expected {
        Expected::Any => return Txn::new().and_then([put]),
        Expected::Absent => vec![Compare::create_revision(full.to_vec(), CompareOp::Equal, 0)],
        Expected::Version(v) => exists_at(full, v),
    };
    Txn::new()
        .when(compares)
        .and_then([put])
        .or_else([TxnOp::get(
            full.to_vec(),
            Some(GetOptions::new().with_keys_only()),
        )])
}

fn put_outcome(resp: &TxnResponse, revision: Version) -> PutOutcome {
    if resp.succeeded() {
        PutOutcome::Written(revision)
    } else {
        PutOutcome::Conflict {
            current: current_version(resp),
        }
    }
}

impl Core {
    /// The etcd key of a store key (or prefix).
    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.root.len() + key.len());
        full.extend_from_slice(self.root.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// The etcd key range `[start, end)` holding every key under `prefix`.
    fn prefix_range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        // Every store key starts with '/': under root `/m`, the empty prefix means `/m/`, which
        // leaves out the keys of a neighbouring root such as `/m2`.
        let start = self.full_key(if prefix.is_empty() { "/" } else { prefix });
        if start.is_empty() {
            // All keys: etcd spells it "from \0 to \0".
            return (vec![0], vec![0]);
        }
        let mut end = start.clone();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return (start, end);
            }
        }
        (start, vec![0])
    }

    /// The store key of an etcd key under the root.
    fn store_key(&self, full: &[u8]) -> Result<String> {
        let corrupt = |reason: &str| MetadataError::Corrupt {
            key: String::from_utf8_lossy(full).chars().take(128).collect(),
            reason: reason.into(),
        };
        let rest = full
            .strip_prefix(self.root.as_bytes())
            .ok_or_else(|| corrupt("etcd key outside the store's root"))?;
        String::from_utf8(rest.to_vec()).map_err(|_| corrupt("etcd key is not UTF-8"))
    }

    async fn run_txn(&self, call: Call<'_>, txn: Txn) -> Result<TxnResponse> {
        self.cluster
            .run(call, |mut c| {
                let txn = txn.clone();
                async move { c.kv.txn(txn).await }
            })
            .await
    }
}

/// Compares that hold when `key` exists at exactly version `v` (a bare `mod_revision == 0`
/// would also match an absent key).
fn exists_at(key: &[u8], v: Version) -> Vec<Compare> {
    vec![
        Compare::create_revision(key.to_vec(), CompareOp::Greater, 0),
        Compare::mod_revision(key.to_vec(), CompareOp::Equal, to_revision(v)),
    ]
}

pub(super) fn to_version(revision: i64) -> Version {
    Version(u64::try_from(revision).unwrap_or(0))
}

fn to_revision(v: Version) -> i64 {
    // A version beyond i64 cannot exist in etcd; i64::MAX will not match either.
    i64::try_from(v.0).unwrap_or(i64::MAX)
}

/// The revision a successful write was given.
fn write_revision(header: Option<&ResponseHeader>, call: &Call<'_>) -> Result<Version> {
    match header.map(|h| to_version(h.revision())) {
        Some(v) if v > Version::ZERO => Ok(v),
        _ => Err(MetadataError::Indeterminate(format!(
            "{} {}: etcd applied the write but its reply carries no revision",
            call.op, call.key
        ))),
    }
}

/// The key's version as read by the else-branch of a failed compare-and-set.
fn current_version(resp: &TxnResponse) -> Option<Version> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| to_version(kv.mod_revision())),
        _ => None,
    })
}

#[async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        validate_key(key)?;
        let full = self.core().full_key(key);
        let size_bytes = full.len();
        let read = batch::Read {
            full: full.clone(),
            options: None,
            op: "get",
            key: key.to_owned(),
        };
        let mut resp = batch::submit(self.core(), read, full, size_bytes).await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let version = to_version(kv.mod_revision());
            let (_, value) = kv.into_key_value();
            Versioned {
                value: Bytes::from(value),
                version,
            }
        }))
    }

    async fn put(&self, key: &str, value: Bytes, expected: Expected) -> Result<PutOutcome> {
        self.put_with(key, value, expected, None).await
    }

    async fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
        session: &Session,
    ) -> Result<PutOutcome> {
        if session.is_lost() {
            return Err(MetadataError::SessionLost(session.id()));
        }
        self.put_with(key, value, expected, Some(session.id().0))
            .await
    }

    async fn delete(&self, key: &str, expected: Expected) -> Result<DeleteOutcome> {
        validate_key(key)?;
        let core = self.core();
        let full = core.full_key(key);
        let txn = match expected {
            Expected::Any => Txn::new().and_then([TxnOp::delete(full.clone(), None)]),
            // Deleting only an absent key deletes nothing: a read answers it.
            Expected::Absent => {
                return Ok(match self.get(key).await? {
                    None => DeleteOutcome::NotFound,
                    Some(v) => DeleteOutcome::Conflict {
                        current: Some(v.version),
                    },
                });
            }
            Expected::Version(v) => Txn::new()
                .when(exists_at(&full, v))
                .and_then([TxnOp::delete(full.clone(), None)])
                .or_else([TxnOp::get(
                    full.clone(),
                    Some(GetOptions::new().with_keys_only()),
                )]),
        };
        let size_bytes = full.len();
        let write = batch::Write {
            txn,
            op: "delete",
            key: key.to_owned(),
        };
        let resp = batch::submit(core, write, full, size_bytes).await?.txn;
        if !resp.succeeded() {
            return Ok(DeleteOutcome::Conflict {
                current: current_version(&resp),
            });
        }
        let deleted = resp.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        });
        Ok(match (deleted, expected) {
            (true, _) => DeleteOutcome::Deleted,
            // The key was there at the expected version: the delete took it.
            (false, Expected::Version(_)) => DeleteOutcome::Deleted,
            (false, _) => DeleteOutcome::NotFound,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        validate_prefix(prefix)?;
        let mut restarts = 0;
        loop {
            match list_snapshot(self.core(), prefix, false).await {
                Err(MetadataError::Compacted { .. }) if restarts < LIST_RESTARTS_MAX => {
                    restarts += 1;
                    tracing::debug!(
                        prefix,
                        "listing snapshot compacted while paging; starting over"
                    );
                }
                other => return other,
            }
        }
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        validate_prefix(prefix)?;
        let mut restarts = 0;
        loop {
            match list_snapshot(self.core(), prefix, true).await {
                Err(MetadataError::Compacted { .. }) if restarts < LIST_RESTARTS_MAX => {
                    restarts += 1;
                }
                other => return other.map(|l| l.entries.into_iter().map(|(k, _)| k).collect()),
            }
        }
    }

    async fn watch(&self, prefix: &str, after: Version) -> Result<WatchStream> {
        validate_prefix(prefix)?;
        watch::start(Arc::clone(self.core()), prefix, after).await
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        session::create(Arc::clone(self.core()), ttl).await
    }
}

/// Reads every key under `prefix` in pages, all at the revision of the first page.
/// The keys under `prefix` at one revision, paged; with `keys_only` the values are left empty
/// (not transferred).
async fn list_snapshot(core: &Arc<Core>, prefix: &str, keys_only: bool) -> Result<Listing> {
    let (mut from, end) = core.prefix_range(prefix);
    let mut entries = Vec::new();
    let mut snapshot: Option<i64> = None;
    let mut limit = LIST_FIRST_PAGE_KEYS;
    let (mut keys_read, mut bytes_read) = (0usize, 0usize);
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if keys_only {
            options = options.with_keys_only();
        }
        let mut resp = match snapshot {
            // The first page joins other reads made at the same time.
            None => {
                let read = batch::Read {
                    full: from.clone(),
                    options: Some(options),
                    op: "list",
                    key: prefix.to_owned(),
                };
                // A first page is small (see LIST_FIRST_PAGE_KEYS): it counts in a batch
                // as any request does.
                batch::submit(core, read, from.clone(), batch::LIST_PAGE_SHARE_BYTES).await?
            }
            Some(revision) => {
                let options = options.with_revision(revision);
                let call = Call::read("list", prefix).at_revision(to_version(revision));
                core.cluster
                    .run(call, |mut c| {
                        let (key, options) = (from.clone(), options.clone());
                        async move { c.kv.get(key, Some(options)).await }
                    })
                    .await?
            }
        };
        if snapshot.is_none() {
            let r = resp.header().map_or(0, |h| h.revision());
            if r <= 0 {
                return Err(MetadataError::Storage(format!(
                    "list {prefix}: etcd reply carries no revision"
                )));
            }
            snapshot = Some(r);
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        let Some(last) = kvs.last() else { break };
        from = last.key().to_vec();
        from.push(0);
        for kv in kvs {
            let version = to_version(kv.mod_revision());
            let (key, value) = kv.into_key_value();
            keys_read += 1;
            bytes_read += key.len() + value.len();
            entries.push((
                core.store_key(&key)?,
                Versioned {
                    value: Bytes::from(value),
                    version,
                },
            ));
        }
        if !more {
            break;
        }
        let bytes_per_key = (bytes_read / keys_read.max(1)).max(1);
        limit = i64::try_from(LIST_PAGE_BYTES_TARGET / bytes_per_key)
            .unwrap_or(LIST_PAGE_KEYS_MAX)
            .clamp(1, LIST_PAGE_KEYS_MAX);
    }
    Ok(Listing {
        entries,
        revision: snapshot.map(to_version).unwrap_or_default(),
    })
}
