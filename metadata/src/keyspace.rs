//! The in-memory key space shared by the memory and embedded backends: keys with versions, the
//! sessions that own ephemeral keys, and a bounded history of changes that watches replay.
//!
//! Writes are evaluated in a [`Batch`], an overlay over the committed state, so the embedded
//! backend can evaluate many compare-and-sets, make them durable with one fsync, and only then
//! [`Keyspace::commit`] them. Readers therefore never see a change that is not yet durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{EventKind, WATCH_QUEUE_CAPACITY};
use crate::{
    DeleteOutcome, Expected, Listing, MetadataError, PutOutcome, Result, SessionId, Version,
    Versioned, WatchEvent, WatchStream,
};

/// History kept for watches: at most this many changes…
const HISTORY_EVENTS_MAX: usize = 100_000;
/// …and at most this many value bytes.
const HISTORY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Events a watch takes from the history per lock acquisition.
const WATCH_CHUNK_EVENTS_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub value: Bytes,
    pub version: Version,
    pub session: Option<SessionId>,
}

/// One change to apply, with the revision it was given.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub key: String,
    pub revision: Version,
    /// `None` deletes the key.
    pub entry: Option<Entry>,
}

#[derive(Debug, Default)]
struct SessionKeys {
    keys: BTreeSet<String>,
}

#[derive(Debug)]
pub(crate) struct Keyspace {
    keys: BTreeMap<String, Entry>,
    sessions: HashMap<SessionId, SessionKeys>,
    revision: Version,
    history: VecDeque<WatchEvent>,
    history_bytes: usize,
    /// Every change with a revision above this is in `history`.
    history_floor: Version,
    revision_tx: watch::Sender<Version>,
}

/// A key space behind a lock, shared by a backend and its watch tasks.
pub(crate) type SharedKeyspace = Arc<Mutex<Keyspace>>;

pub(crate) fn lock(ks: &SharedKeyspace) -> MutexGuard<'_, Keyspace> {
    // A panic while holding the lock cannot leave the key space half-changed: commit applies
    // changes one by one after all checks, so the state stays usable.
    ks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Keyspace {
    /// A key space holding `keys` as of `revision` (from disk, or empty), with no history before.
    pub fn new(keys: BTreeMap<String, Entry>, revision: Version) -> Self {
        let (revision_tx, _) = watch::channel(revision);
        Keyspace {
            keys,
            sessions: HashMap::new(),
            revision,
            history: VecDeque::new(),
            history_bytes: 0,
            history_floor: revision,
            revision_tx,
        }
    }

    pub fn revision(&self) -> Version {
        self.revision
    }

    pub fn get(&self, key: &str) -> Option<Versioned> {
        self.keys.get(key).map(|e| Versioned {
            value: e.value.clone(),
            version: e.version,
        })
    }

    pub fn list(&self, prefix: &str) -> Listing {
        let entries = self
            .keys
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| {
                (
                    k.clone(),
                    Versioned {
                        value: e.value.clone(),
                        version: e.version,
                    },
                )
            })
            .collect();
        Listing {
            entries,
            revision: self.revision,
        }
    }

    /// Makes `id` a live session that ephemeral puts may name.
    pub fn register_session(&mut self, id: SessionId) {
        self.sessions.insert(id, SessionKeys::default());
    }

    pub fn session_alive(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Forgets the session and returns its keys, which the caller deletes through a batch.
    pub fn end_session(&mut self, id: SessionId) -> Vec<String> {
        self.sessions
            .remove(&id)
            .map(|s| s.keys.into_iter().collect())
            .unwrap_or_default()
    }

    /// Applies evaluated changes in revision order, records them for watches and wakes watchers.
    pub fn commit(&mut self, changes: Vec<Change>) {
        let Some(last) = changes.last() else { return };
        let last_revision = last.revision;
        for change in changes {
            assert!(
                change.revision > self.revision,
                "revisions must increase: {} after {}",
                change.revision,
                self.revision
            );
            self.revision = change.revision;
            let previous = match &change.entry {
                Some(entry) => self.keys.insert(change.key.clone(), entry.clone()),
                None => self.keys.remove(&change.key),
            };
            if let Some(s) = previous
                .and_then(|p| p.session)
                .and_then(|id| self.sessions.get_mut(&id))
            {
                s.keys.remove(&change.key);
            }
            if let Some(s) = change
                .entry
                .as_ref()
                .and_then(|e| e.session)
                .and_then(|id| self.sessions.get_mut(&id))
            {
                s.keys.insert(change.key.clone());
            }
            let kind = match change.entry {
                Some(e) => {
                    self.history_bytes += e.value.len();
                    EventKind::Put(e.value)
                }
                None => EventKind::Delete,
            };
            self.history.push_back(WatchEvent {
                key: change.key,
                kind,
                revision: change.revision,
            });
        }
        while self.history.len() > HISTORY_EVENTS_MAX || self.history_bytes > HISTORY_BYTES_MAX {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            if let EventKind::Put(v) = &old.kind {
                self.history_bytes -= v.len();
            }
            self.history_floor = old.revision;
        }
        self.revision_tx.send_replace(last_revision);
    }

    /// Up to `max` events under `prefix` with a revision above `after`, and the revision the scan
    /// reached (the next call continues from there).
    fn events_after(
        &self,
        prefix: &str,
        after: Version,
        max: usize,
    ) -> Result<(Vec<WatchEvent>, Version)> {
        if after < self.history_floor {
            return Err(MetadataError::Compacted {
                requested: after,
                oldest: self.history_floor,
            });
        }
        let start = self.history.partition_point(|e| e.revision <= after);
        let mut reached = after.max(self.history_floor);
        let mut out = Vec::new();
        for event in self.history.range(start..) {
            if out.len() >= max {
                break;
            }
            reached = event.revision;
            if event.key.starts_with(prefix) {
                out.push(event.clone());
            }
        }
        if out.len() < max {
            reached = reached.max(self.revision);
        }
        Ok((out, reached))
    }
}

/// Starts a task that feeds `watch(prefix, after)` from the history of `ks`, waiting for commits.
/// The task ends when the stream is dropped or `shutdown` fires.
pub(crate) fn spawn_watch(
    ks: &SharedKeyspace,
    prefix: &str,
    after: Version,
    shutdown: &CancellationToken,
) -> Result<WatchStream> {
    let mut revision_rx = {
        let guard = lock(ks);
        // Fail at once rather than through the stream if the history is already gone.
        guard.events_after(prefix, after, 0)?;
        guard.revision_tx.subscribe()
    };
    let (tx, rx) = mpsc::channel(WATCH_QUEUE_CAPACITY);
    let cancel = shutdown.child_token();
    let stream = WatchStream::new(rx, Some(cancel.clone().drop_guard()));
    let ks = Arc::clone(ks);
    let prefix = prefix.to_owned();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut cursor = after;
        loop {
            let batch = lock(&ks).events_after(&prefix, cursor, WATCH_CHUNK_EVENTS_MAX);
            match batch {
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Ok((events, reached)) => {
                    let caught_up = events.len() < WATCH_CHUNK_EVENTS_MAX;
                    for event in events {
                        tokio::select! {
                            sent = tx.send(Ok(event)) => if sent.is_err() { return },
                            _ = cancel.cancelled() => return,
                        }
                    }
                    cursor = reached;
                    if !caught_up {
                        continue;
                    }
                }
            }
            let woke = tokio::select! {
                changed = revision_rx.wait_for(|r| *r > cursor) => changed.is_ok(),
                _ = cancel.cancelled() => {
                    if shutdown.is_cancelled() {
                        let _ = tx.try_send(Err(MetadataError::Closed));
                    }
                    return;
                }
            };
            if !woke {
                let _ = tx.send(Err(MetadataError::Closed)).await;
                return;
            }
        }
    });
    Ok(stream)
}

/// An overlay of uncommitted changes over a key space: evaluates compare-and-sets in order, each
/// seeing the ones before it, and hands out consecutive revisions.
#[derive(Debug)]
pub(crate) struct Batch {
    staged: HashMap<String, Option<Entry>>,
    changes: Vec<Change>,
    revision: Version,
}

fn holds(expected: Expected, current: Option<Version>) -> bool {
    match expected {
        Expected::Any => true,
        Expected::Absent => current.is_none(),
        Expected::Version(v) => current == Some(v),
    }
}

impl Batch {
    pub fn new(base_revision: Version) -> Self {
        Batch {
            staged: HashMap::new(),
            changes: Vec::new(),
            revision: base_revision,
        }
    }

    fn current(&self, ks: &Keyspace, key: &str) -> Option<Version> {
        match self.staged.get(key) {
            Some(staged) => staged.as_ref().map(|e| e.version),
            None => ks.keys.get(key).map(|e| e.version),
        }
    }

    fn stage(&mut self, key: &str, entry: Option<Entry>) -> Version {
        self.revision = Version(self.revision.0 + 1);
        let entry = entry.map(|mut e| {
            e.version = self.revision;
            e
        });
        self.staged.insert(key.to_owned(), entry.clone());
        self.changes.push(Change {
            key: key.to_owned(),
            revision: self.revision,
            entry,
        });
        self.revision
    }

    pub fn put(
        &mut self,
        ks: &Keyspace,
        key: &str,
        value: Bytes,
        expected: Expected,
        session: Option<SessionId>,
    ) -> Result<PutOutcome> {
        if let Some(id) = session.filter(|id| !ks.session_alive(*id)) {
            return Err(MetadataError::SessionLost(id));
        }
        let current = self.current(ks, key);
        if !holds(expected, current) {
            return Ok(PutOutcome::Conflict { current });
        }
        let entry = Entry {
            value,
            version: Version::ZERO,
            session,
        };
        Ok(PutOutcome::Written(self.stage(key, Some(entry))))
    }

    pub fn delete(&mut self, ks: &Keyspace, key: &str, expected: Expected) -> DeleteOutcome {
        let current = self.current(ks, key);
        match (expected, current) {
            (Expected::Any | Expected::Absent, None) => DeleteOutcome::NotFound,
            (Expected::Absent, Some(_)) => DeleteOutcome::Conflict { current },
            (Expected::Version(v), _) if current != Some(v) => DeleteOutcome::Conflict { current },
            _ => {
                self.stage(key, None);
                DeleteOutcome::Deleted
            }
        }
    }

    pub fn into_changes(self) -> Vec<Change> {
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(ks: &mut Keyspace, key: &str, value: &'static [u8], expected: Expected) -> PutOutcome {
        let mut batch = Batch::new(ks.revision());
        let outcome = batch
            .put(ks, key, Bytes::from_static(value), expected, None)
            .unwrap_or_else(|e| panic!("put failed: {e}"));
        ks.commit(batch.into_changes());
        outcome
    }

    #[test]
    fn batch_sees_its_own_staged_changes() {
        let ks = Keyspace::new(BTreeMap::new(), Version::ZERO);
        let mut batch = Batch::new(ks.revision());
        let first = batch.put(&ks, "/a", Bytes::from_static(b"1"), Expected::Absent, None);
        assert_eq!(first.ok(), Some(PutOutcome::Written(Version(1))));
        let second = batch.put(&ks, "/a", Bytes::from_static(b"2"), Expected::Absent, None);
        assert_eq!(
            second.ok(),
            Some(PutOutcome::Conflict {
                current: Some(Version(1))
            })
        );
        // Nothing is visible before commit.
        assert_eq!(ks.get("/a"), None);
    }

    #[test]
    fn history_is_trimmed_and_old_watches_are_refused() {
        let mut ks = Keyspace::new(BTreeMap::new(), Version::ZERO);
        for _ in 0..(HISTORY_EVENTS_MAX + 10) {
            let _ = put(&mut ks, "/k", b"v", Expected::Any);
        }
        assert!(matches!(
            ks.events_after("/", Version(5), 10),
            Err(MetadataError::Compacted { .. })
        ));
        let (events, _) = ks
            .events_after("/", Version(ks.revision().0 - 3), 10)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn session_keys_follow_overwrites() {
        let mut ks = Keyspace::new(BTreeMap::new(), Version::ZERO);
        let s = SessionId(1);
        ks.register_session(s);
        let mut batch = Batch::new(ks.revision());
        let _ = batch.put(&ks, "/e", Bytes::from_static(b"x"), Expected::Any, Some(s));
        ks.commit(batch.into_changes());
        // A persistent put over the ephemeral key takes it away from the session.
        let _ = put(&mut ks, "/e", b"y", Expected::Any);
        assert!(ks.end_session(s).is_empty());
    }
}
