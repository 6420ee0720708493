//! The read side of a managed ledger, shared by the managed ledger, its write actor and its
//! cursors: the live ledger list, the tail of the current ledger, open readers per ledger, and
//! `read_entries` across ledger boundaries (cache first, otherwise the ledger's
//! [`LedgerSource`] — chosen by where the ledger lives — with read-ahead).
//!
//! The current (open) ledger: a `LedgerReader` only serves entries up to the LAC the bookies
//! report, and each entry carries the writer's LAC from when it was *sent*, so the last entries
//! written are not readable from the bookies until later entries cover them. The managed ledger
//! knows what it wrote: every confirmed entry of the current ledger above what its reader has
//! confirmed stays in `tail` (the same `Bytes`, no copy). The tail is trimmed to the reader's LAC,
//! which a background probe refreshes when the tail grows past [`TAIL_PROBE_ENTRIES`]. Readers of
//! the current ledger therefore never fail on an entry that was confirmed to a producer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use magnetar_bookie::client::{LedgerClient, LedgerError};
use magnetar_metadata::clock::SharedClock;
use magnetar_metadata::{EntryId, LedgerId};
use tokio::sync::watch;
use tracing::{Instrument, debug, debug_span};

use crate::Position;
use crate::cache::EntryCache;
use crate::config::ManagedLedgerConfig;
use crate::error::{ManagedLedgerError, MlResult};
use crate::record::{LedgerInfo, LedgerLocation};
use crate::source::{LedgerSource, LedgerSources};

/// Tail length (entries) past which the current ledger's LAC is probed to trim the tail.
pub(crate) const TAIL_PROBE_ENTRIES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Open,
    Fenced,
    Closed,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Every ledger in order; the current one carries live (confirmed) counts.
    pub ledgers: Vec<LedgerInfo>,
    /// The ledger being written, if any.
    pub current: Option<LedgerId>,
    pub last_confirmed: Option<Position>,
    /// Confirmed entries of the current ledger that its reader may not serve yet, in order.
    pub tail: VecDeque<(u64, Bytes)>,
    pub status: Status,
    /// Entries confirmed since this managed ledger was opened (Pulsar's entriesAddedCounter).
    pub entries_added: u64,
    /// Why no ledger takes writes now (none could be created, or the current one failed and
    /// its replacement waits for a backoff); `None` while writable.
    pub unwritable: Option<String>,
    /// The record's properties as stored.
    pub properties: std::collections::BTreeMap<String, String>,
}

/// A stretch of one ledger to read: entries `first..=last`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    ledger: LedgerId,
    first: u64,
    last: u64,
    current: bool,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub name: String,
    pub config: ManagedLedgerConfig,
    /// Writes, recovery and deletion of ledgers (reads go through `sources`).
    pub client: LedgerClient,
    /// Timestamps, rollover age, retention, flush and retry timers.
    pub clock: SharedClock,
    sources: Arc<dyn LedgerSources>,
    pub cache: Arc<dyn EntryCache>,
    pub state: Mutex<State>,
    readers: Mutex<HashMap<LedgerId, Arc<dyn LedgerSource>>>,
    pub lac_tx: watch::Sender<Option<Position>>,
    probing: AtomicBool,
    /// When the current ledger reaches its age limit (ms, wall time of `clock`); `u64::MAX`
    /// while it holds no entries. The factory's periodic task sends `RollIfAged` then.
    pub roll_due_ms: AtomicU64,
    /// Tells the factory's periodic task when `roll_due_ms` is set.
    pub timers: Arc<crate::retention::Timers>,
    /// A ledger closed since the factory's task last looked: check the offload thresholds.
    pub offload_check: AtomicBool,
}

impl Shared {
    #[allow(clippy::too_many_arguments)] // one call site (the factory), every part distinct
    pub fn new(
        name: String,
        config: ManagedLedgerConfig,
        client: LedgerClient,
        clock: SharedClock,
        sources: Arc<dyn LedgerSources>,
        cache: Arc<dyn EntryCache>,
        state: State,
        timers: Arc<crate::retention::Timers>,
    ) -> Arc<Self> {
        let (lac_tx, _) = watch::channel(state.last_confirmed);
        Arc::new(Shared {
            name,
            config,
            client,
            clock,
            sources,
            cache,
            state: Mutex::new(state),
            readers: Mutex::new(HashMap::new()),
            lac_tx,
            probing: AtomicBool::new(false),
            roll_due_ms: AtomicU64::new(u64::MAX),
            timers,
            offload_check: AtomicBool::new(false),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn readers(&self) -> MutexGuard<'_, HashMap<LedgerId, Arc<dyn LedgerSource>>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn forget_reader(&self, ledger: LedgerId) {
        self.readers().remove(&ledger);
    }

    /// Entries of ledger `l` readable now (confirmed).
    fn readable_entries(l: &LedgerInfo) -> u64 {
        l.entries
    }

    /// Moves a boundary position (past the end of a closed ledger, or in a trimmed or empty
    /// ledger) to the first position that can hold an entry.
    pub fn normalize(&self, pos: Position) -> Position {
        let st = self.state();
        let mut p = pos;
        // Ledgers are sorted by id: start at the first that can hold `pos` (a topic may list
        // many thousands of ledgers).
        let start = st.ledgers.partition_point(|l| l.ledger_id < pos.ledger);
        for l in &st.ledgers[start..] {
            if l.ledger_id > p.ledger {
                p = Position {
                    ledger: l.ledger_id,
                    entry: EntryId(0),
                };
            }
            if st.current == Some(l.ledger_id) || p.entry.0 < Self::readable_entries(l) {
                return p;
            }
        }
        p
    }

    /// The entry just before `pos` (None: nothing before it). Used to show Pulsar's inclusive
    /// mark-delete position for an exclusive floor.
    pub fn previous(&self, pos: Position) -> Option<Position> {
        if pos.entry.0 > 0 {
            return Some(Position {
                ledger: pos.ledger,
                entry: EntryId(pos.entry.0 - 1),
            });
        }
        let st = self.state();
        st.ledgers
            .iter()
            .rev()
            .find(|l| l.ledger_id < pos.ledger && l.entries > 0)
            .map(|l| Position {
                ledger: l.ledger_id,
                entry: EntryId(l.entries - 1),
            })
    }

    /// Entries at or after `from` that are confirmed, and, per ledger, the readable range
    /// (for subtracting individually acked ranges).
    pub fn entries_from(&self, from: Position) -> (u64, Vec<(LedgerId, u64, u64)>) {
        let st = self.state();
        let mut total = 0;
        let mut spans = Vec::new();
        let start = st.ledgers.partition_point(|l| l.ledger_id < from.ledger);
        for l in &st.ledgers[start..] {
            if l.entries == 0 {
                continue;
            }
            let first = if l.ledger_id == from.ledger {
                from.entry.0
            } else {
                0
            };
            if first < l.entries {
                total += l.entries - first;
                spans.push((l.ledger_id, first, l.entries - 1));
            }
        }
        (total, spans)
    }

    fn segment_at(&self, pos: Position) -> Option<Segment> {
        let st = self.state();
        let start = st.ledgers.partition_point(|l| l.ledger_id < pos.ledger);
        for l in &st.ledgers[start..] {
            if l.entries == 0 {
                continue;
            }
            let first = if l.ledger_id == pos.ledger {
                pos.entry.0
            } else {
                0
            };
            if first < l.entries {
                return Some(Segment {
                    ledger: l.ledger_id,
                    first,
                    last: l.entries - 1,
                    current: st.current == Some(l.ledger_id),
                });
            }
        }
        None
    }

    fn tail_entry(&self, ledger: LedgerId, entry: u64) -> Option<Bytes> {
        let st = self.state();
        if st.current != Some(ledger) {
            return None;
        }
        let (first, _) = st.tail.front()?;
        let idx = usize::try_from(entry.checked_sub(*first)?).ok()?;
        st.tail.get(idx).map(|(_, b)| b.clone())
    }

    /// The first entry of the current ledger that only the tail is sure to hold.
    fn tail_start(&self, ledger: LedgerId) -> Option<u64> {
        let st = self.state();
        if st.current != Some(ledger) {
            return None;
        }
        st.tail.front().map(|(e, _)| *e)
    }

    /// The source of `ledger`, opened on first use from the ledger's record.
    async fn reader(&self, ledger: LedgerId) -> MlResult<Arc<dyn LedgerSource>> {
        if let Some(r) = self.readers().get(&ledger).cloned() {
            return Ok(r);
        }
        let info = {
            let st = self.state();
            st.ledgers
                .binary_search_by_key(&ledger, |l| l.ledger_id)
                .ok()
                .map(|i| st.ledgers[i].clone())
        }
        .ok_or(ManagedLedgerError::Ledger(LedgerError::NoSuchLedger(
            ledger,
        )))?;
        let source = self.sources.open(&self.name, &info).await?;
        Ok(Arc::clone(self.readers().entry(ledger).or_insert(source)))
    }

    /// Where a ledger of the list is (offloaded, and whether the bookies still have it);
    /// `None` once it left the list.
    fn where_is(&self, ledger: LedgerId) -> Option<(bool, LedgerLocation)> {
        let st = self.state();
        st.ledgers
            .binary_search_by_key(&ledger, |l| l.ledger_id)
            .ok()
            .map(|i| {
                let l = &st.ledgers[i];
                (l.offloaded().is_some(), l.location.clone())
            })
    }

    /// Up to `max_entries` entries from `from` on (at least one if any is readable, even when it
    /// exceeds `max_bytes`), crossing ledger boundaries and skipping empty ledgers.
    pub async fn read_entries(
        &self,
        from: Position,
        max_entries: usize,
        max_bytes: u64,
    ) -> MlResult<Vec<(Position, Bytes)>> {
        let mut out: Vec<(Position, Bytes)> = Vec::new();
        let mut bytes = 0u64;
        let mut pos = from;
        let mut reread = false;
        while out.len() < max_entries && (out.is_empty() || bytes < max_bytes) {
            let Some(seg) = self.segment_at(pos) else {
                break;
            };
            let here = Position {
                ledger: seg.ledger,
                entry: EntryId(seg.first),
            };
            let cached = match self.tail_entry(seg.ledger, seg.first) {
                Some(b) => Some(b),
                None => self.cache.get(here).await,
            };
            if let Some(b) = cached {
                bytes += b.len() as u64;
                out.push((here, b));
                pos = here.next();
                continue;
            }
            let wanted = (max_entries - out.len()) as u64;
            let before = self.where_is(seg.ledger);
            let batch = match self.fetch(seg, wanted).await {
                Ok(b) => b,
                // Retention trimmed the ledger, or its bookies' copy was deleted after its
                // offload, while this read was in flight (Pulsar's #21737 failed the consumer
                // then): read again from what the record says now — the next ledger, or the
                // ledger's other copy. Once: a second failure is the read's.
                Err(e) => {
                    let now = self.where_is(seg.ledger);
                    if now.is_none() {
                        debug!(ledger = %seg.ledger, "read raced with a trim; going on past it");
                        continue;
                    }
                    if now != before && !reread {
                        reread = true;
                        self.forget_reader(seg.ledger);
                        continue;
                    }
                    return Err(e);
                }
            };
            if batch.is_empty() {
                break;
            }
            for (p, b) in batch {
                if out.len() >= max_entries || (!out.is_empty() && bytes >= max_bytes) {
                    break;
                }
                bytes += b.len() as u64;
                pos = p.next();
                out.push((p, b));
            }
        }
        Ok(out)
    }

    /// Reads from the bookies from `seg.first` on: at least `wanted` entries or the read-ahead,
    /// within the segment (and below the tail of the current ledger). Everything read goes into
    /// the cache.
    async fn fetch(&self, seg: Segment, wanted: u64) -> MlResult<Vec<(Position, Bytes)>> {
        let mut last = seg
            .last
            .min(seg.first + wanted.max(self.config.read_ahead_entries).max(1) - 1);
        if seg.current
            && let Some(t) = self.tail_start(seg.ledger)
        {
            if t <= seg.first {
                // Raced with the tail moving: the entry is in the tail again or readable now.
                return Ok(self
                    .tail_entry(seg.ledger, seg.first)
                    .map(|b| {
                        vec![(
                            Position {
                                ledger: seg.ledger,
                                entry: EntryId(seg.first),
                            },
                            b,
                        )]
                    })
                    .unwrap_or_default());
            }
            last = last.min(t - 1);
        }
        let span =
            debug_span!("ml_read", ml = %self.name, ledger = %seg.ledger, first = seg.first, last);
        let entries = async {
            let source = self.reader(seg.ledger).await?;
            source.read_range(seg.first, last).await
        }
        .instrument(span)
        .await?;
        for (pos, payload) in &entries {
            self.cache.insert(*pos, payload.clone()).await;
        }
        Ok(entries)
    }

    /// Trims the tail of the current ledger to what its reader can serve, asking the bookies for
    /// their LAC in the background once the tail is long.
    pub fn maybe_probe_tail(self: &Arc<Self>) {
        let (ledger, long) = {
            let st = self.state();
            (st.current, st.tail.len() > TAIL_PROBE_ENTRIES)
        };
        let Some(ledger) = ledger else { return };
        if !long || self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            if let Ok(reader) = shared.reader(ledger).await
                && let Ok(lac) = reader.last_readable().await
            {
                let mut st = shared.state();
                if st.current == Some(ledger) {
                    while st.tail.front().is_some_and(|(e, _)| (*e as i64) <= lac) {
                        st.tail.pop_front();
                    }
                }
            }
            shared.probing.store(false, Ordering::Release);
        });
    }

    pub fn status(&self) -> Status {
        self.state().status
    }
}
