//! Embedded durable backend for `magnetar standalone`: the key space lives in memory (reads never
//! touch the disk) and every change is made durable in a redb file before it is acknowledged or
//! becomes visible.
//!
//! One writer thread owns the file. Callers queue operations on a bounded channel (backpressure);
//! the writer drains what has arrived, evaluates the compare-and-sets in order against the key
//! space plus the batch's own staged changes, commits them in one redb transaction (one fsync for
//! the whole group), then publishes them and answers. Nothing waits on a timer: a lone write is
//! committed at once, and under load the batches grow by themselves.
//!
//! The file belongs to one process at a time (redb locks it), and sessions belong to the process
//! that created them: on open, the ephemeral keys of the previous incarnation are deleted, since
//! their holders are certainly gone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::keyspace::{Batch, Change, Entry, Keyspace, SharedKeyspace, lock, spawn_watch};
use crate::store::{SESSION_TTL_MIN, validate_prefix};
use crate::{
    DeleteOutcome, Expected, Listing, MetadataError, MetadataStore, PutOutcome, Result, Session,
    SessionBackend, SessionId, Version, Versioned, WatchStream, validate_key, validate_value,
};

/// key → (version, owning session or 0, value)
const KEYS: TableDefinition<&str, (u64, i64, &[u8])> = TableDefinition::new("keys");
/// "revision" → last revision; "incarnation" → how many times the file was opened.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// The redb file; created with its parent directory if missing.
    pub path: PathBuf,
    /// Operations waiting for the writer at most; callers wait when it is full.
    pub queue_capacity: usize,
    /// Operations committed in one transaction at most.
    pub batch_ops_max: usize,
    /// Value bytes committed in one transaction at most (a batch always takes at least one op).
    pub batch_bytes_max: usize,
}

impl EmbeddedOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            path: path.into(),
            queue_capacity: 4096,
            batch_ops_max: 1024,
            batch_bytes_max: 16 * 1024 * 1024,
        }
    }
}

enum Op {
    Put {
        key: String,
        value: Bytes,
        expected: Expected,
        session: Option<SessionId>,
        reply: oneshot::Sender<Result<PutOutcome>>,
    },
    Delete {
        key: String,
        expected: Expected,
        reply: oneshot::Sender<Result<DeleteOutcome>>,
    },
    EndSession {
        id: SessionId,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
}

impl Op {
    fn size_bytes(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key, .. } => key.len(),
            Op::EndSession { .. } => 0,
        }
    }

    fn fail(self, err: impl Fn() -> MetadataError) {
        match self {
            Op::Put { reply, .. } => drop(reply.send(Err(err()))),
            Op::Delete { reply, .. } => drop(reply.send(Err(err()))),
            Op::EndSession { reply, .. } => {
                if let Some(reply) = reply {
                    drop(reply.send(Err(err())));
                }
            }
        }
    }
}

/// A durable store in one redb file. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ks: SharedKeyspace,
    ops: mpsc::Sender<Op>,
    /// Session ids are `incarnation << 32 | n`, unique across restarts of the file.
    incarnation: u64,
    next_session: AtomicI64,
    /// Set when the disk failed; from then on every write is refused.
    failed: Arc<AtomicBool>,
    shutdown: CancellationToken,
    /// Live sessions; all are lost if the disk fails, since their keys can no longer be kept.
    sessions: SessionTokens,
}

fn storage_err(e: impl std::fmt::Display) -> MetadataError {
    MetadataError::Storage(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `options.path`. Fails if another process has it open.
    pub async fn open(options: EmbeddedOptions) -> Result<EmbeddedStore> {
        let path = options.path.clone();
        let (db, keys, revision, incarnation) = tokio::task::spawn_blocking(move || load(&path))
            .await
            .map_err(storage_err)??;
        let ks = Arc::new(std::sync::Mutex::new(Keyspace::new(keys, revision)));
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let failed = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let writer = Writer {
            sessions: Arc::clone(&sessions),
            db,
            ks: Arc::clone(&ks),
            rx,
            failed: Arc::clone(&failed),
            batch_ops_max: options.batch_ops_max.max(1),
            batch_bytes_max: options.batch_bytes_max,
        };
        std::thread::Builder::new()
            .name("metadata-writer".into())
            .spawn(move || writer.run())
            .map_err(storage_err)?;
        info!(path = %options.path.display(), %revision, incarnation, "embedded metadata store open");
        Ok(EmbeddedStore {
            shared: Arc::new(Shared {
                ks,
                ops: tx,
                incarnation,
                next_session: AtomicI64::new(0),
                failed,
                shutdown: CancellationToken::new(),
                sessions,
            }),
        })
    }

    /// The revision of the last committed change.
    pub fn revision(&self) -> Version {
        lock(&self.shared.ks).revision()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Reads the file into memory and deletes the previous incarnation's ephemeral keys.
fn load(path: &std::path::Path) -> Result<(Database, BTreeMap<String, Entry>, Version, u64)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(storage_err)?;
    }
    let db = Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => MetadataError::Storage(format!(
            "{} is already open in another process (one standalone per data directory)",
            path.display()
        )),
        other => storage_err(other),
    })?;
    let txn = db.begin_write().map_err(storage_err)?;
    let mut keys = BTreeMap::new();
    let (revision, incarnation) = {
        let mut table = txn.open_table(KEYS).map_err(storage_err)?;
        let mut meta = txn.open_table(META).map_err(storage_err)?;
        let mut revision = meta
            .get("revision")
            .map_err(storage_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        let incarnation = meta
            .get("incarnation")
            .map_err(storage_err)?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        let mut stale = Vec::new();
        for row in table.iter().map_err(storage_err)? {
            let (k, v) = row.map_err(storage_err)?;
            let (version, session, value) = v.value();
            if session != 0 {
                stale.push(k.value().to_owned());
                continue;
            }
            keys.insert(
                k.value().to_owned(),
                Entry {
                    value: Bytes::copy_from_slice(value),
                    version: Version(version),
                    session: None,
                },
            );
        }
        // Each expiry is a change of its own, as if the sessions had ended just now.
        for key in &stale {
            table.remove(key.as_str()).map_err(storage_err)?;
            revision += 1;
        }
        if !stale.is_empty() {
            info!(
                count = stale.len(),
                "expired ephemeral keys of the previous incarnation"
            );
        }
        meta.insert("revision", revision).map_err(storage_err)?;
        meta.insert("incarnation", incarnation)
            .map_err(storage_err)?;
        (revision, incarnation)
    };
    txn.commit().map_err(storage_err)?;
    Ok((db, keys, Version(revision), incarnation))
}

type SessionTokens = Arc<std::sync::Mutex<BTreeMap<SessionId, CancellationToken>>>;

struct Writer {
    sessions: SessionTokens,
    db: Database,
    ks: SharedKeyspace,
    rx: mpsc::Receiver<Op>,
    failed: Arc<AtomicBool>,
    batch_ops_max: usize,
    batch_bytes_max: usize,
}

/// The answer an evaluated op owes its caller once the batch is durable.
enum Reply {
    Put(oneshot::Sender<Result<PutOutcome>>, Result<PutOutcome>),
    Delete(oneshot::Sender<Result<DeleteOutcome>>, DeleteOutcome),
    Session(Option<oneshot::Sender<Result<()>>>),
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut ops = vec![first];
            let mut size_bytes = ops[0].size_bytes();
            while ops.len() < self.batch_ops_max && size_bytes < self.batch_bytes_max {
                match self.rx.try_recv() {
                    Ok(op) => {
                        size_bytes += op.size_bytes();
                        ops.push(op);
                    }
                    Err(_) => break,
                }
            }
            if self.failed.load(Ordering::Acquire) {
                for op in ops {
                    op.fail(|| MetadataError::Storage("store failed earlier; restart it".into()));
                }
                continue;
            }
            self.apply(ops);
        }
        debug!("metadata writer stopped");
    }

    fn apply(&mut self, ops: Vec<Op>) {
        let (changes, replies) = {
            let mut ks = lock(&self.ks);
            let mut batch = Batch::new(ks.revision());
            let mut replies = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Put {
                        key,
                        value,
                        expected,
                        session,
                        reply,
                    } => {
                        let outcome = batch.put(&ks, &key, value, expected, session);
                        replies.push(Reply::Put(reply, outcome));
                    }
                    Op::Delete {
                        key,
                        expected,
                        reply,
                    } => {
                        let outcome = batch.delete(&ks, &key, expected);
                        replies.push(Reply::Delete(reply, outcome));
                    }
                    Op::EndSession { id, reply } => {
                        for key in ks.end_session(id) {
                            let _ = batch.delete(&ks, &key, Expected::Any);
                        }
                        replies.push(Reply::Session(reply));
                    }
                }
            }
            (batch.into_changes(), replies)
        };
        if !changes.is_empty() {
            if let Err(e) = self.persist(&changes) {
                error!(error = %e, "metadata store cannot write its file; refusing writes from now on");
                self.failed.store(true, Ordering::Release);
                let lost =
                    std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|p| p.into_inner()));
                for token in lost.into_values() {
                    token.cancel();
                }
                for reply in replies {
                    let err = MetadataError::Storage(e.to_string());
                    match reply {
                        Reply::Put(tx, _) => drop(tx.send(Err(err))),
                        Reply::Delete(tx, _) => drop(tx.send(Err(err))),
                        Reply::Session(Some(tx)) => drop(tx.send(Err(err))),
                        Reply::Session(None) => {}
                    }
                }
                return;
            }
            lock(&self.ks).commit(changes);
        }
        for reply in replies {
            match reply {
                Reply::Put(tx, outcome) => drop(tx.send(outcome)),
                Reply::Delete(tx, outcome) => drop(tx.send(Ok(outcome))),
                Reply::Session(Some(tx)) => drop(tx.send(Ok(()))),
                Reply::Session(None) => {}
            }
        }
    }

    /// One transaction, one fsync, for the whole batch.
    fn persist(&self, changes: &[Change]) -> Result<()> {
        let txn = self.db.begin_write().map_err(storage_err)?;
        {
            let mut table = txn.open_table(KEYS).map_err(storage_err)?;
            for change in changes {
                match &change.entry {
                    Some(e) => {
                        let session = e.session.map_or(0, |s| s.0);
                        table
                            .insert(
                                change.key.as_str(),
                                (e.version.0, session, e.value.as_ref()),
                            )
                            .map_err(storage_err)?;
                    }
                    None => {
                        table.remove(change.key.as_str()).map_err(storage_err)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(storage_err)?;
            if let Some(last) = changes.last() {
                meta.insert("revision", last.revision.0)
                    .map_err(storage_err)?;
            }
        }
        txn.commit().map_err(storage_err)
    }
}

impl Shared {
    async fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Op) -> Result<T> {
        if self.failed.load(Ordering::Acquire) {
            return Err(MetadataError::Storage(
                "store failed earlier; restart it".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(make(tx))
            .await
            .map_err(|_| MetadataError::Closed)?;
        rx.await.map_err(|_| MetadataError::Closed)?
    }

    fn forget_session(&self, id: SessionId) -> Option<CancellationToken> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }
}

#[derive(Debug)]
struct EmbeddedSession {
    id: SessionId,
    shared: Arc<Shared>,
}

#[async_trait]
impl SessionBackend for EmbeddedSession {
    async fn close(&self) -> Result<()> {
        self.shared.forget_session(self.id);
        self.shared
            .submit(|reply| Op::EndSession {
                id: self.id,
                reply: Some(reply),
            })
            .await
    }

    fn release(&self) {
        self.shared.forget_session(self.id);
        let op = Op::EndSession {
            id: self.id,
            reply: None,
        };
        match self.shared.ops.try_send(op) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                // Never block in Drop: hand the send to the runtime if there is one.
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let ops = self.shared.ops.clone();
                    handle.spawn(async move { ops.send(op).await });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>> {
        validate_key(key)?;
        Ok(lock(&self.shared.ks).get(key))
    }

    async fn put(&self, key: &str, value: Bytes, expected: Expected) -> Result<PutOutcome> {
        validate_key(key)?;
        validate_value(key, &value)?;
        self.shared
            .submit(|reply| Op::Put {
                key: key.to_owned(),
                value,
                expected,
                session: None,
                reply,
            })
            .await
    }

    async fn put_ephemeral(
        &self,
        key: &str,
        value: Bytes,
        expected: Expected,
        session: &Session,
    ) -> Result<PutOutcome> {
        validate_key(key)?;
        validate_value(key, &value)?;
        if session.is_lost() {
            return Err(MetadataError::SessionLost(session.id()));
        }
        self.shared
            .submit(|reply| Op::Put {
                key: key.to_owned(),
                value,
                expected,
                session: Some(session.id()),
                reply,
            })
            .await
    }

    async fn delete(&self, key: &str, expected: Expected) -> Result<DeleteOutcome> {
        validate_key(key)?;
        self.shared
            .submit(|reply| Op::Delete {
                key: key.to_owned(),
                expected,
                reply,
            })
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        validate_prefix(prefix)?;
        Ok(lock(&self.shared.ks).list(prefix))
    }

    async fn watch(&self, prefix: &str, after: Version) -> Result<WatchStream> {
        validate_prefix(prefix)?;
        spawn_watch(&self.shared.ks, prefix, after, &self.shared.shutdown)
    }

    async fn create_session(&self, ttl: Duration) -> Result<Session> {
        let ttl = ttl.max(SESSION_TTL_MIN);
        let n = self.shared.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let id = SessionId(((self.shared.incarnation as i64) << 32) | n);
        lock(&self.shared.ks).register_session(id);
        let lost = CancellationToken::new();
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, lost.clone());
        Ok(Session::new(
            id,
            ttl,
            lost,
            Box::new(EmbeddedSession {
                id,
                shared: Arc::clone(&self.shared),
            }),
        ))
    }
}
