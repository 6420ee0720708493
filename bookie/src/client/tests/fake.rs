//! An in-memory bookie for unit tests: entries in a map, and switches to make it fail, hang,
//! refuse adds as read-only, delay adds, or corrupt a stored entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use magnetar_metadata::{EntryId, Expected, LedgerId, MemoryStore, MetadataStore};
use tokio::sync::watch;

use crate::api::{
    BookieClient, BookieError, BookieId, BookieInfo, BookieRegistration, BookieResult, BookieState,
    Entry, FenceResult, NO_ENTRY, ReadResult, registration_key,
};
use crate::client::{BookieConnector, LedgerClient, LedgerClientOptions};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Up,
    /// Every call fails as unreachable.
    Down,
    /// Every call hangs.
    Hang,
    /// Adds are refused as read-only.
    ReadOnly,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<(u64, u64), Entry>,
    fenced: HashSet<u64>,
    mode: Mode,
    hang_reads: bool,
    add_delay_ms: u64,
    add_jitter_ms: u64,
    /// Entries returned by reads, to check what recovery reads.
    entries_read: u64,
}

#[derive(Debug)]
pub struct FakeBookie {
    id: BookieId,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl FakeBookie {
    pub fn new(id: BookieId) -> Arc<Self> {
        Arc::new(FakeBookie {
            id,
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state().mode = mode;
    }

    pub fn hang_reads(&self, hang: bool) {
        self.state().hang_reads = hang;
    }

    pub fn add_delay_ms(&self, ms: u64) {
        self.state().add_delay_ms = ms;
    }

    pub fn add_jitter_ms(&self, ms: u64) {
        self.state().add_jitter_ms = ms;
    }

    /// Stores an entry directly, as if a writer had sent it only here.
    pub fn insert(&self, entry: Entry) {
        self.state()
            .entries
            .insert((entry.ledger.0, entry.entry.0), entry);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Flips a payload byte of a stored entry, keeping its old checksum.
    pub fn corrupt(&self, ledger: LedgerId, entry: u64) {
        let mut st = self.state();
        let e = st.entries.get_mut(&(ledger.0, entry)).unwrap();
        let mut bytes = e.payload.to_vec();
        bytes[0] ^= 0xff;
        e.payload = Bytes::from(bytes);
    }

    pub fn has(&self, ledger: LedgerId, entry: u64) -> bool {
        self.state().entries.contains_key(&(ledger.0, entry))
    }

    pub fn entry_count(&self, ledger: LedgerId) -> usize {
        self.state()
            .entries
            .keys()
            .filter(|(l, _)| *l == ledger.0)
            .count()
    }

    pub fn entries_read(&self) -> u64 {
        self.state().entries_read
    }

    pub fn is_fenced(&self, ledger: LedgerId) -> bool {
        self.state().fenced.contains(&ledger.0)
    }

    /// LAC long polls waiting here for a change (each holds a receiver of `changed`).
    pub fn lac_polls_waiting(&self) -> usize {
        self.changed.receiver_count()
    }

    fn lac_of(st: &State, ledger: u64) -> i64 {
        st.entries
            .range((ledger, 0)..=(ledger, u64::MAX))
            .map(|(_, e)| e.lac)
            .max()
            .unwrap_or(NO_ENTRY)
    }

    /// Fails or hangs according to the mode.
    async fn gate(&self, read: bool) -> BookieResult<()> {
        let (mode, hang_reads) = {
            let st = self.state();
            (st.mode, st.hang_reads)
        };
        match mode {
            Mode::Down => Err(BookieError::Unavailable(format!("{} is down", self.id))),
            Mode::Hang => futures::future::pending().await,
            _ if read && hang_reads => futures::future::pending().await,
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl BookieClient for FakeBookie {
    fn id(&self) -> &BookieId {
        &self.id
    }

    async fn add(&self, entry: Entry, recovery: bool) -> BookieResult<()> {
        self.gate(false).await?;
        let (jitter, delay) = {
            let st = self.state();
            (st.add_jitter_ms, st.add_delay_ms)
        };
        let ms = delay
            + if jitter > 0 {
                magnetar_metadata::clock::entropy().below(jitter)
            } else {
                0
            };
        if ms > 0 {
            magnetar_metadata::clock::system()
                .sleep(Duration::from_millis(ms))
                .await;
        }
        {
            let mut st = self.state();
            if st.mode == Mode::ReadOnly {
                return Err(BookieError::ReadOnly);
            }
            if st.fenced.contains(&entry.ledger.0) && !recovery {
                return Err(BookieError::Fenced(entry.ledger));
            }
            st.entries.insert((entry.ledger.0, entry.entry.0), entry);
        }
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    async fn read(
        &self,
        ledger: LedgerId,
        entry: EntryId,
        fence: bool,
    ) -> BookieResult<ReadResult> {
        self.gate(true).await?;
        let mut st = self.state();
        if fence {
            st.fenced.insert(ledger.0);
        }
        let lac = Self::lac_of(&st, ledger.0);
        match st.entries.get(&(ledger.0, entry.0)).cloned() {
            Some(e) => {
                st.entries_read += 1;
                Ok(ReadResult { entry: e, lac })
            }
            None => Err(BookieError::NoSuchEntry { ledger, entry }),
        }
    }

    async fn read_range(
        &self,
        ledger: LedgerId,
        first: EntryId,
        last: EntryId,
        max_entries: u32,
        _max_bytes: u64,
    ) -> BookieResult<Vec<Entry>> {
        self.gate(true).await?;
        let mut st = self.state();
        let mut out = Vec::new();
        for n in first.0..=last.0 {
            match st.entries.get(&(ledger.0, n)) {
                Some(e) if out.len() < max_entries as usize => out.push(e.clone()),
                _ => break,
            }
        }
        if out.is_empty() {
            return Err(BookieError::NoSuchEntry {
                ledger,
                entry: first,
            });
        }
        st.entries_read += out.len() as u64;
        Ok(out)
    }

    async fn read_lac(
        &self,
        ledger: LedgerId,
        previous: i64,
        timeout: Duration,
    ) -> BookieResult<i64> {
        self.gate(true).await?;
        let mut rx = self.changed.subscribe();
        let deadline = magnetar_metadata::clock::system().now() + timeout;
        loop {
            let lac = Self::lac_of(&self.state(), ledger.0);
            if lac > previous || timeout.is_zero() {
                return Ok(lac);
            }
            if tokio::time::timeout_at(deadline.into(), rx.changed())
                .await
                .is_err()
            {
                return Ok(lac);
            }
        }
    }

    async fn fence(&self, ledger: LedgerId) -> BookieResult<FenceResult> {
        self.gate(false).await?;
        let mut st = self.state();
        st.fenced.insert(ledger.0);
        let last_entry = st
            .entries
            .range((ledger.0, 0)..=(ledger.0, u64::MAX))
            .map(|((_, e), _)| *e as i64)
            .max()
            .unwrap_or(NO_ENTRY);
        Ok(FenceResult {
            lac: Self::lac_of(&st, ledger.0),
            last_entry,
        })
    }

    async fn delete_ledger(&self, ledger: LedgerId) -> BookieResult<()> {
        self.gate(false).await?;
        self.state().entries.retain(|(l, _), _| *l != ledger.0);
        Ok(())
    }

    async fn info(&self) -> BookieResult<BookieInfo> {
        self.gate(false).await?;
        Ok(BookieInfo {
            id: self.id.clone(),
            state: BookieState::ReadWrite,
            free_bytes: 1 << 30,
            used_bytes: 0,
            version: "fake".into(),
        })
    }
}

/// Hands out the fake bookies by id; an unknown id gets a bookie that is down.
#[derive(Debug, Default)]
pub struct FakeConnector {
    bookies: Mutex<HashMap<BookieId, Arc<FakeBookie>>>,
}

impl BookieConnector for FakeConnector {
    fn connect(&self, id: &BookieId) -> Arc<dyn BookieClient> {
        let mut bookies = self.bookies.lock().unwrap();
        bookies
            .entry(id.clone())
            .or_insert_with(|| {
                let b = FakeBookie::new(id.clone());
                b.set_mode(Mode::Down);
                b
            })
            .clone()
    }
}

/// A metadata store with `n` registered fake bookies.
#[derive(Debug)]
pub struct Cluster {
    pub store: Arc<MemoryStore>,
    pub connector: Arc<FakeConnector>,
    pub bookies: Vec<Arc<FakeBookie>>,
}

impl Cluster {
    pub async fn new(n: usize) -> Self {
        Self::with_zones(n, &[]).await
    }

    /// Bookie i is in zone `zones[i % zones.len()]` (no zones if empty).
    pub async fn with_zones(n: usize, zones: &[&str]) -> Self {
        let store = Arc::new(MemoryStore::new());
        let connector = Arc::new(FakeConnector::default());
        let mut bookies = Vec::new();
        for i in 0..n {
            let id = BookieId(format!("127.0.0.1:{}", 3181 + i));
            let zone = (!zones.is_empty()).then(|| zones[i % zones.len()].to_owned());
            let bookie = FakeBookie::new(id.clone());
            connector
                .bookies
                .lock()
                .unwrap()
                .insert(id.clone(), bookie.clone());
            register(&store, &id, BookieState::ReadWrite, zone).await;
            bookies.push(bookie);
        }
        Cluster {
            store,
            connector,
            bookies,
        }
    }

    pub fn options() -> LedgerClientOptions {
        LedgerClientOptions {
            add_timeout_ms: 500,
            read_timeout_ms: 500,
            speculative_read_timeout_ms: 20,
            read_lac_long_poll_ms: 2_000,
            ..LedgerClientOptions::default()
        }
    }

    pub fn client(&self) -> LedgerClient {
        LedgerClient::new(
            self.store.clone() as Arc<dyn MetadataStore>,
            self.connector.clone(),
            Self::options(),
        )
    }

    pub fn bookie(&self, id: &BookieId) -> Arc<FakeBookie> {
        self.bookies.iter().find(|b| &b.id == id).unwrap().clone()
    }
}

pub async fn register(
    store: &MemoryStore,
    id: &BookieId,
    state: BookieState,
    zone: Option<String>,
) {
    let reg = BookieRegistration {
        id: id.clone(),
        state,
        free_bytes: 1 << 30,
        used_bytes: 0,
        zone,
        version: "fake".into(),
    };
    let value = Bytes::from(serde_json::to_vec(&reg).unwrap());
    store
        .put(&registration_key(id), value, Expected::Any)
        .await
        .unwrap()
        .written()
        .unwrap();
}
