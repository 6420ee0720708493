//! The conformance suite every `MetadataStore` backend must pass: memory, embedded (redb) and a
//! real etcd on 127.0.0.1. The same cases run against each; a backend is only as good as this file
//! says it is.
//!
//! Runs with its own harness (libtest-mimic) so the cases are generated per backend, and so the
//! binary can also act as the *child process* that holds a session and gets killed with SIGKILL
//! (`MAGNETAR_CONFORMANCE_CHILD` set).

use magnetar_testkit::etcd as etcd_support;
use magnetar_testkit::wait;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use libtest_mimic::{Arguments, Failed, Trial};
use magnetar_metadata::{
    Acquired, CoalescingStore, DeleteOutcome, EmbeddedOptions, EmbeddedStore, EtcdOptions,
    EtcdStore, EventKind, Expected, IdAllocator, MemoryStore, MetadataError, MetadataStore,
    OwnershipLease, PutOutcome, RecordStore, Update, VALUE_SIZE_MAX_BYTES, Version, WatchEvent,
};
use tokio::sync::Barrier;

const CHILD_ENV: &str = "MAGNETAR_CONFORMANCE_CHILD";

/// A backend under test and whatever keeps it alive (temp dir, etcd process).
struct Backend {
    store: Arc<dyn MetadataStore>,
    spec: BackendSpec,
    _guard: Box<dyn std::any::Any + Send>,
}

/// How a child process reaches the same backend.
#[derive(Clone, Debug)]
enum BackendSpec {
    Memory,
    Embedded(PathBuf),
    Etcd { endpoint: String, root: String },
}

impl BackendSpec {
    fn encode(&self) -> String {
        match self {
            BackendSpec::Memory => "memory".into(),
            BackendSpec::Embedded(p) => format!("embedded|{}", p.display()),
            BackendSpec::Etcd { endpoint, root } => format!("etcd|{endpoint}|{root}"),
        }
    }

    fn decode(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('|').collect();
        match parts.as_slice() {
            ["memory"] => Ok(BackendSpec::Memory),
            ["embedded", path] => Ok(BackendSpec::Embedded(PathBuf::from(path))),
            ["etcd", endpoint, root] => Ok(BackendSpec::Etcd {
                endpoint: (*endpoint).into(),
                root: (*root).into(),
            }),
            _ => bail!("bad backend spec {s:?}"),
        }
    }

    async fn open(&self) -> Result<Arc<dyn MetadataStore>> {
        Ok(match self {
            BackendSpec::Memory => Arc::new(MemoryStore::new()),
            BackendSpec::Embedded(path) => {
                // The file is locked to one process; the previous holder (a killed child, or
                // the parent's own store whose writer thread is still winding down) may need a
                // moment to let go of it.
                wait::until_async(
                    "the embedded store's file is let go by its previous holder",
                    Duration::from_secs(10),
                    || async move {
                        match EmbeddedStore::open(EmbeddedOptions::new(path.clone())).await {
                            Ok(store) => Some(Ok(Arc::new(store))),
                            Err(MetadataError::Storage(msg)) if msg.contains("already open") => {
                                None
                            }
                            Err(e) => Some(Err(e)),
                        }
                    },
                )
                .await?
            }
            BackendSpec::Etcd { endpoint, root } => Arc::new(
                EtcdStore::connect(EtcdOptions {
                    endpoints: vec![endpoint.clone()],
                    root: root.clone(),
                    ..EtcdOptions::default()
                })
                .await?,
            ),
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    /// The memory backend behind the read-coalescing wrapper: wrappers pass the suite too.
    CoalescedMemory,
    Embedded,
    Etcd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::CoalescedMemory => "coalesced_memory",
            Kind::Embedded => "embedded",
            Kind::Etcd => "etcd",
        }
    }

    async fn start(self) -> Result<Backend> {
        match self {
            Kind::Memory => Ok(Backend {
                store: Arc::new(MemoryStore::new()),
                spec: BackendSpec::Memory,
                _guard: Box::new(()),
            }),
            Kind::CoalescedMemory => Ok(Backend {
                store: Arc::new(CoalescingStore::new(Arc::new(MemoryStore::new()))),
                spec: BackendSpec::Memory,
                _guard: Box::new(()),
            }),
            Kind::Embedded => {
                let dir = tempfile::tempdir()?;
                let spec = BackendSpec::Embedded(dir.path().join("metadata.redb"));
                Ok(Backend {
                    store: spec.open().await?,
                    spec,
                    _guard: Box::new(dir),
                })
            }
            Kind::Etcd => {
                let server = etcd_support::EtcdServer::launch().await?;
                let spec = BackendSpec::Etcd {
                    endpoint: server.endpoint(),
                    root: "/conformance".into(),
                };
                Ok(Backend {
                    store: spec.open().await?,
                    spec,
                    _guard: Box::new(server),
                })
            }
        }
    }
}

type Case = fn(Backend) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), (|b| Box::pin($name(b))) as Case)),*]
    };
}

/// Cases about processes dying: the memory backend lives and dies with its one process, so they
/// do not apply to it (its session-drop case covers a holder that goes away).
const MULTI_PROCESS_CASES: &[&str] = &[
    "ephemeral_keys_vanish_when_holder_killed",
    "acknowledged_writes_survive_kill",
];

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_main(&spec);
        return;
    }
    let args = Arguments::from_args();
    let all: &[(&str, Case)] = cases![
        cas_conflicts_are_data,
        racing_cas_has_one_winner_per_version,
        counter_loses_no_update,
        watch_sees_every_change_in_order,
        watch_from_a_read_version_misses_nothing,
        list_by_prefix_over_10000_keys,
        values_of_1_mib,
        invalid_keys_and_values_are_refused,
        ephemeral_keys_vanish_when_session_closes,
        ephemeral_keys_vanish_when_session_dropped,
        ephemeral_keys_vanish_when_holder_killed,
        acknowledged_writes_survive_kill,
        record_updates_retry_on_conflict,
        ids_are_unique_and_increasing,
        lease_has_one_holder_and_observes_loss,
    ];
    let mut trials = Vec::new();
    for kind in [
        Kind::Memory,
        Kind::CoalescedMemory,
        Kind::Embedded,
        Kind::Etcd,
    ] {
        for (name, case) in all {
            if matches!(kind, Kind::Memory | Kind::CoalescedMemory)
                && MULTI_PROCESS_CASES.contains(name)
            {
                continue;
            }
            let case = *case;
            trials.push(Trial::test(format!("{}::{name}", kind.name()), move || {
                run(kind, case)
            }));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn run(kind: Kind, case: Case) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("runtime: {e}")))?;
    rt.block_on(async move {
        let backend = kind.start().await.map_err(|e| format!("{e:#}"))?;
        tokio::time::timeout(Duration::from_secs(120), case(backend))
            .await
            .map_err(|_| "timed out after 120 s".to_string())?
            .map_err(|e| format!("{e:#}"))
    })
    .map_err(Failed::from)
}

fn bytes(s: impl Into<String>) -> Bytes {
    Bytes::from(s.into())
}

async fn cas_conflicts_are_data(b: Backend) -> Result<()> {
    let s = &b.store;
    let v1 = s.put("/cas/a", bytes("1"), Expected::Absent).await?;
    let PutOutcome::Written(v1) = v1 else {
        bail!("create failed: {v1:?}")
    };
    ensure!(
        s.put("/cas/a", bytes("x"), Expected::Absent).await?
            == PutOutcome::Conflict { current: Some(v1) },
        "create over an existing key must conflict with its version"
    );
    let PutOutcome::Written(v2) = s.put("/cas/a", bytes("2"), Expected::Version(v1)).await? else {
        bail!("CAS at the current version must succeed")
    };
    ensure!(v2 > v1, "versions increase: {v1} then {v2}");
    ensure!(
        s.put("/cas/a", bytes("y"), Expected::Version(v1)).await?
            == PutOutcome::Conflict { current: Some(v2) },
        "CAS at a stale version must conflict and report the current one"
    );
    ensure!(
        s.put("/cas/none", bytes("y"), Expected::Version(v1))
            .await?
            == PutOutcome::Conflict { current: None },
        "CAS on an absent key must conflict with current None"
    );
    let got = s.get("/cas/a").await?.context("key vanished")?;
    ensure!(
        got.value == bytes("2") && got.version == v2,
        "get returns the last write: {got:?}"
    );
    let PutOutcome::Written(v3) = s.put("/cas/a", bytes("3"), Expected::Any).await? else {
        bail!("unconditional put must succeed")
    };
    ensure!(v3 > v2);
    ensure!(
        s.delete("/cas/a", Expected::Version(v2)).await?
            == DeleteOutcome::Conflict { current: Some(v3) }
    );
    ensure!(s.delete("/cas/a", Expected::Version(v3)).await? == DeleteOutcome::Deleted);
    ensure!(s.get("/cas/a").await?.is_none(), "deleted key must be gone");
    ensure!(s.delete("/cas/a", Expected::Any).await? == DeleteOutcome::NotFound);
    ensure!(
        s.delete("/cas/a", Expected::Version(v3)).await?
            == DeleteOutcome::Conflict { current: None }
    );
    // A fresh create after delete gets a newer version than anything before.
    let PutOutcome::Written(v4) = s.put("/cas/a", bytes("4"), Expected::Absent).await? else {
        bail!("re-create after delete must succeed")
    };
    ensure!(v4 > v3);
    Ok(())
}

async fn racing_cas_has_one_winner_per_version(b: Backend) -> Result<()> {
    const TASKS: usize = 16;
    const ROUNDS: usize = 20;
    let store = b.store;
    let _ = store.put("/race/k", bytes("0"), Expected::Any).await?;
    for round in 0..ROUNDS {
        let current = store.get("/race/k").await?.context("missing")?.version;
        let barrier = Arc::new(Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .put(
                        "/race/k",
                        bytes(format!("{round}-{t}")),
                        Expected::Version(current),
                    )
                    .await
            }));
        }
        let mut winners = Vec::new();
        for (t, task) in tasks.into_iter().enumerate() {
            match task.await?? {
                PutOutcome::Written(v) => winners.push((t, v)),
                PutOutcome::Conflict { current: Some(c) } => ensure!(c > current),
                other => bail!("unexpected outcome {other:?}"),
            }
        }
        ensure!(
            winners.len() == 1,
            "round {round}: exactly one winner, got {winners:?}"
        );
        let (t, v) = winners[0];
        let now = store.get("/race/k").await?.context("missing")?;
        ensure!(
            now.version == v && now.value == bytes(format!("{round}-{t}")),
            "the winner's write is stored"
        );
    }
    Ok(())
}

async fn counter_loses_no_update(b: Backend) -> Result<()> {
    const TASKS: usize = 16;
    const INCREMENTS: usize = 1000;
    let store = b.store;
    let remaining = Arc::new(AtomicUsize::new(INCREMENTS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, remaining) = (Arc::clone(&store), Arc::clone(&remaining));
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            while remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
                .is_ok()
            {
                loop {
                    let (n, expected) = match store.get("/counter").await? {
                        None => (0u64, Expected::Absent),
                        Some(v) => (
                            std::str::from_utf8(&v.value)?.parse::<u64>()?,
                            Expected::Version(v.version),
                        ),
                    };
                    match store
                        .put("/counter", bytes((n + 1).to_string()), expected)
                        .await?
                    {
                        PutOutcome::Written(v) => {
                            versions.push(v);
                            break;
                        }
                        PutOutcome::Conflict { .. } => tokio::task::yield_now().await,
                    }
                }
            }
            anyhow::Ok(versions)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let value = store.get("/counter").await?.context("counter missing")?;
    ensure!(
        value.value == bytes(INCREMENTS.to_string()),
        "counter is {:?}, want {INCREMENTS}",
        value.value
    );
    all.sort();
    all.dedup();
    ensure!(
        all.len() == INCREMENTS,
        "every successful CAS got its own version"
    );
    Ok(())
}

/// Applies `changes` and returns the events they must produce under `prefix`.
async fn apply_changes(
    store: &Arc<dyn MetadataStore>,
    prefix: &str,
    count: usize,
) -> Result<Vec<WatchEvent>> {
    let mut expected = Vec::new();
    for i in 0..count {
        let key = format!("{prefix}{}", i % 17);
        if i % 5 == 4 {
            if store.delete(&key, Expected::Any).await? == DeleteOutcome::Deleted {
                // The revision of a delete is not returned; the watch fills it in.
                expected.push(WatchEvent {
                    key,
                    kind: EventKind::Delete,
                    revision: Version::ZERO,
                });
            }
        } else {
            let value = bytes(format!("value-{i}"));
            let PutOutcome::Written(v) = store.put(&key, value.clone(), Expected::Any).await?
            else {
                bail!("unconditional put conflicted")
            };
            expected.push(WatchEvent {
                key,
                kind: EventKind::Put(value),
                revision: v,
            });
        }
        // Noise outside the prefix must not show up.
        let _ = store
            .put("/elsewhere/x", bytes(i.to_string()), Expected::Any)
            .await?;
    }
    Ok(expected)
}

async fn collect_events(
    stream: &mut magnetar_metadata::WatchStream,
    n: usize,
) -> Result<Vec<WatchEvent>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .map_err(|_| anyhow!("watch stalled after {} of {n} events", out.len()))?;
        out.push(next.context("watch ended early")??);
    }
    Ok(out)
}

fn check_events(got: &[WatchEvent], want: &[WatchEvent]) -> Result<()> {
    ensure!(
        got.len() == want.len(),
        "got {} events, want {}",
        got.len(),
        want.len()
    );
    let mut last = Version::ZERO;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        ensure!(
            g.revision > last,
            "event {i}: revisions must increase ({} after {last})",
            g.revision
        );
        last = g.revision;
        ensure!(
            g.key == w.key && g.kind == w.kind,
            "event {i}: got {g:?}, want {w:?}"
        );
        if w.revision != Version::ZERO {
            ensure!(
                g.revision == w.revision,
                "event {i}: revision {} want {}",
                g.revision,
                w.revision
            );
        }
    }
    Ok(())
}

async fn watch_sees_every_change_in_order(b: Backend) -> Result<()> {
    let store = b.store;
    let start = store.list("/watched/").await?.revision;
    let mut stream = store.watch("/watched/", start).await?;
    let want = apply_changes(&store, "/watched/", 500).await?;
    let got = collect_events(&mut stream, want.len()).await?;
    check_events(&got, &want)?;
    // Nothing more: the noise outside the prefix was filtered.
    let _ = store
        .put("/watched/end", bytes("end"), Expected::Any)
        .await?;
    let last = collect_events(&mut stream, 1).await?;
    ensure!(
        last[0].key == "/watched/end",
        "no stray events before the end marker: {last:?}"
    );
    Ok(())
}

async fn watch_from_a_read_version_misses_nothing(b: Backend) -> Result<()> {
    let store = b.store;
    let PutOutcome::Written(v) = store.put("/gap/a", bytes("read"), Expected::Any).await? else {
        bail!("put failed")
    };
    let read = store.get("/gap/a").await?.context("missing")?;
    ensure!(read.version == v);
    // Changes made between the read and the start of the watch must still be delivered.
    let want = apply_changes(&store, "/gap/", 50).await?;
    let mut stream = store.watch("/gap/", read.version).await?;
    let got = collect_events(&mut stream, want.len()).await?;
    check_events(&got, &want)
}

async fn list_by_prefix_over_10000_keys(b: Backend) -> Result<()> {
    const KEYS: usize = 10_000;
    let store = b.store;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, next) = (Arc::clone(&store), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= KEYS {
                    return anyhow::Ok(());
                }
                let _ = store
                    .put(
                        &format!("/many/{i:05}"),
                        bytes(format!("v{i}")),
                        Expected::Absent,
                    )
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    // Neighbours that share a textual prefix but not the path must stay out.
    let _ = store.put("/many", bytes("parent"), Expected::Any).await?;
    let _ = store
        .put("/many0/x", bytes("sibling"), Expected::Any)
        .await?;
    let listing = store.list("/many/").await?;
    let keys = store.list_keys("/many/").await?;
    ensure!(
        keys.iter().eq(listing.entries.iter().map(|(k, _)| k)),
        "list_keys must list exactly the keys of list"
    );
    ensure!(
        listing.entries.len() == KEYS,
        "listed {} keys, want {KEYS}",
        listing.entries.len()
    );
    for (i, (key, v)) in listing.entries.iter().enumerate() {
        ensure!(
            key == &format!("/many/{i:05}"),
            "entry {i} is {key}: keys must be sorted and complete"
        );
        ensure!(v.value == bytes(format!("v{i}")), "value of {key}");
    }
    ensure!(
        listing.revision
            >= listing
                .entries
                .iter()
                .map(|(_, v)| v.version)
                .max()
                .unwrap_or_default()
    );
    Ok(())
}

async fn values_of_1_mib(b: Backend) -> Result<()> {
    let store = b.store;
    let mut stream = store
        .watch("/big/", store.list("/big/").await?.revision)
        .await?;
    let mut values = Vec::new();
    for i in 0..6u8 {
        let value = Bytes::from(
            (0..VALUE_SIZE_MAX_BYTES)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect::<Vec<u8>>(),
        );
        let _ = store
            .put(&format!("/big/{i}"), value.clone(), Expected::Absent)
            .await?;
        values.push(value);
    }
    for (i, want) in values.iter().enumerate() {
        let got = store.get(&format!("/big/{i}")).await?.context("missing")?;
        ensure!(got.value == *want, "1 MiB value {i} read back differently");
    }
    let listing = store.list("/big/").await?;
    ensure!(listing.entries.len() == values.len());
    for ((_, got), want) in listing.entries.iter().zip(&values) {
        ensure!(got.value == *want, "listed 1 MiB value differs");
    }
    let events = collect_events(&mut stream, values.len()).await?;
    for (e, want) in events.iter().zip(&values) {
        ensure!(
            e.kind == EventKind::Put(want.clone()),
            "watched 1 MiB value differs"
        );
    }
    let too_big = Bytes::from(vec![0u8; VALUE_SIZE_MAX_BYTES + 1]);
    match store.put("/big/too", too_big, Expected::Any).await {
        Err(e @ MetadataError::ValueTooLarge { .. }) => {
            ensure!(
                e.to_string().contains("/big/too"),
                "the error names no key: {e}"
            );
        }
        other => bail!("a value over 1 MiB must be refused, got {other:?}"),
    }
    Ok(())
}

async fn invalid_keys_and_values_are_refused(b: Backend) -> Result<()> {
    let store = b.store;
    for key in ["", "no-slash", "/nul\0inside"] {
        match store.put(key, bytes("x"), Expected::Any).await {
            Err(MetadataError::InvalidKey { .. }) => {}
            other => bail!("key {key:?} must be refused, got {other:?}"),
        }
    }
    let long = format!("/{}", "k".repeat(5000));
    ensure!(matches!(
        store.get(&long).await,
        Err(MetadataError::InvalidKey { .. })
    ));
    // The store keeps working after refusing bad input.
    ensure!(
        store
            .put("/ok", bytes("x"), Expected::Any)
            .await?
            .written()
            .is_some()
    );
    Ok(())
}

async fn ephemeral_keys_vanish_when_session_closes(b: Backend) -> Result<()> {
    let store = b.store;
    let session = store.create_session(Duration::from_secs(2)).await?;
    let PutOutcome::Written(v) = store
        .put_ephemeral("/eph/a", bytes("held"), Expected::Absent, &session)
        .await?
    else {
        bail!("ephemeral create failed")
    };
    let _ = store
        .put("/eph/persistent", bytes("stays"), Expected::Any)
        .await?;
    let mut stream = store.watch("/eph/a", v).await?;
    ensure!(
        store.get("/eph/a").await?.is_some(),
        "ephemeral key visible while the session lives"
    );
    ensure!(!session.is_lost());
    session.close().await?;
    ensure!(session.is_lost(), "a closed session reports lost");
    ensure!(
        store.get("/eph/a").await?.is_none(),
        "ephemeral key gone once close returns"
    );
    let events = collect_events(&mut stream, 1).await?;
    ensure!(
        events[0].kind == EventKind::Delete && events[0].key == "/eph/a",
        "watch sees the expiry: {events:?}"
    );
    ensure!(
        store.get("/eph/persistent").await?.is_some(),
        "persistent keys are untouched"
    );
    match store
        .put_ephemeral("/eph/b", bytes("x"), Expected::Any, &session)
        .await
    {
        Err(MetadataError::SessionLost(_)) => {}
        other => {
            bail!("put_ephemeral on a closed session must fail with SessionLost, got {other:?}")
        }
    }
    Ok(())
}

/// Waits until `key` is gone, at most `within` after `since` (when its holder ended); returns
/// how long after `since` that was.
async fn wait_gone(
    store: &Arc<dyn MetadataStore>,
    key: &str,
    since: Instant,
    within: Duration,
) -> Result<Duration> {
    wait::until_async(
        &format!("{key} gone after its holder ended"),
        within.saturating_sub(since.elapsed()),
        || async move {
            match store.get(key).await {
                Ok(Some(_)) => None,
                Ok(None) => Some(Ok(())),
                Err(e) => Some(Err(e)),
            }
        },
    )
    .await?;
    Ok(since.elapsed())
}

async fn ephemeral_keys_vanish_when_session_dropped(b: Backend) -> Result<()> {
    let store = b.store;
    let ttl = Duration::from_secs(2);
    let session = store.create_session(ttl).await?;
    let _ = store
        .put_ephemeral("/drop/a", bytes("x"), Expected::Absent, &session)
        .await?;
    let lost = session.lost_token();
    drop(session);
    ensure!(
        lost.is_cancelled(),
        "dropping the last handle ends the session"
    );
    wait_gone(
        &store,
        "/drop/a",
        magnetar_metadata::clock::system().now(),
        ttl + Duration::from_secs(1),
    )
    .await?;
    Ok(())
}

/// Child process: opens the backend, holds a session with an ephemeral key, writes persistent keys
/// one by one reporting each acknowledgement, and waits to be killed.
fn child_main(spec: &str) {
    let result = (|| -> Result<()> {
        let spec = BackendSpec::decode(spec)?;
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            let store = spec.open().await?;
            let session = store.create_session(Duration::from_secs(2)).await?;
            let _ = store
                .put_ephemeral("/child/eph", bytes("child"), Expected::Any, &session)
                .await?;
            println!("READY");
            for i in 0u64.. {
                let _ = store
                    .put(
                        &format!("/child/acked/{i:08}"),
                        bytes(i.to_string()),
                        Expected::Absent,
                    )
                    .await?;
                println!("ACK {i}");
            }
            Ok(())
        })
    })();
    if let Err(e) = result {
        eprintln!("child failed: {e:#}");
        std::process::exit(1);
    }
}

struct ChildHolder {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    acked: std::cell::RefCell<Vec<u64>>,
}

impl ChildHolder {
    fn spawn(spec: &BackendSpec) -> Result<ChildHolder> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, spec.encode())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning the child holder")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildHolder {
            child,
            lines,
            acked: Default::default(),
        })
    }

    fn wait_for(&self, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = magnetar_metadata::clock::system().now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(magnetar_metadata::clock::system().now());
            let line = self
                .lines
                .recv_timeout(left)
                .context("child did not report in time")?;
            self.note_ack(&line);
            if want(&line) {
                return Ok(line);
            }
        }
    }

    fn note_ack(&self, line: &str) {
        if let Some(n) = line.strip_prefix("ACK ").and_then(|n| n.parse().ok()) {
            self.acked.borrow_mut().push(n);
        }
    }

    /// SIGKILL, then every acknowledgement the child printed before it died.
    fn kill(mut self) -> Result<Vec<u64>> {
        self.child.kill()?;
        self.child.wait()?;
        // The reader thread ends at EOF once the child is dead; take everything it read.
        for line in self.lines.iter() {
            self.note_ack(&line);
        }
        Ok(self.acked.take())
    }
}

/// Embedded stores belong to one process at a time: the parent closes its own before the child
/// opens the file, and reopens it after the kill.
async fn hand_over(
    b: Backend,
) -> Result<(
    Option<Box<dyn std::any::Any + Send>>,
    BackendSpec,
    Option<Arc<dyn MetadataStore>>,
)> {
    let Backend {
        store,
        spec,
        _guard,
    } = b;
    match spec {
        BackendSpec::Embedded(_) => {
            // The writer thread releases the file when the last handle is gone; whoever opens
            // it next (the child, the parent after the kill) waits for that in
            // `BackendSpec::open`.
            drop(store);
            Ok((Some(_guard), spec, None))
        }
        _ => Ok((Some(_guard), spec, Some(store))),
    }
}

async fn ephemeral_keys_vanish_when_holder_killed(b: Backend) -> Result<()> {
    let (_guard, spec, store) = hand_over(b).await?;
    let child = ChildHolder::spawn(&spec)?;
    child.wait_for(|l| l == "READY")?;
    if let Some(store) = &store {
        ensure!(
            store.get("/child/eph").await?.is_some(),
            "child's ephemeral key visible while it lives"
        );
    }
    let killed_at = magnetar_metadata::clock::system().now();
    child.kill()?;
    let store = match store {
        Some(s) => s,
        None => spec.open().await?,
    };
    let took = wait_gone(&store, "/child/eph", killed_at, Duration::from_secs(3)).await?;
    eprintln!("ephemeral key of a killed holder gone after {took:?}");
    Ok(())
}

async fn acknowledged_writes_survive_kill(b: Backend) -> Result<()> {
    let (_guard, spec, _) = hand_over(b).await?;
    let child = ChildHolder::spawn(&spec)?;
    child.wait_for(|l| l.starts_with("ACK 200"))?;
    let acked = child.kill()?;
    let store = spec.open().await?;
    let last = *acked.last().context("no acks seen")?;
    ensure!(last >= 200);
    let listing = store.list("/child/acked/").await?;
    for i in 0..=last {
        let key = format!("/child/acked/{i:08}");
        ensure!(
            listing.entries.iter().any(|(k, _)| k == &key),
            "acknowledged write {key} lost after kill -9 ({} keys survived, last ack {last})",
            listing.entries.len()
        );
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Tally {
    count: u64,
    writers: Vec<u32>,
}

async fn record_updates_retry_on_conflict(b: Backend) -> Result<()> {
    let records: RecordStore<Tally> = RecordStore::new(Arc::clone(&b.store));
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let records = records.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                records
                    .update("/records/tally", |current| {
                        let mut next = current.map_or(
                            Tally {
                                count: 0,
                                writers: vec![],
                            },
                            |c| Tally {
                                count: c.count,
                                writers: c.writers.clone(),
                            },
                        );
                        next.count += 1;
                        next.writers.push(t);
                        Update::Set(next)
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (tally, _) = records
        .get("/records/tally")
        .await?
        .context("record missing")?;
    ensure!(
        tally.count == 160 && tally.writers.len() == 160,
        "no update lost: {}",
        tally.count
    );
    // Keep leaves the record alone; Delete removes it.
    let kept = records.update("/records/tally", |_| Update::Keep).await?;
    ensure!(kept.map(|(t, _)| t.count) == Some(160));
    ensure!(
        records
            .update("/records/tally", |_| Update::Delete)
            .await?
            .is_none()
    );
    ensure!(records.get("/records/tally").await?.is_none());
    // Garbage where a record should be is reported, not misread.
    let _ = b
        .store
        .put("/records/bad", bytes("not json"), Expected::Any)
        .await?;
    ensure!(matches!(
        records.get("/records/bad").await,
        Err(MetadataError::Corrupt { .. })
    ));
    Ok(())
}

async fn ids_are_unique_and_increasing(b: Backend) -> Result<()> {
    // Two allocators on one key stand for two processes; each batches its own callers.
    let ids = IdAllocator::new(Arc::clone(&b.store), "/ids/ledger");
    let other = IdAllocator::new(Arc::clone(&b.store), "/ids/ledger");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ids = if i % 2 == 0 {
            ids.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..25 {
                mine.push(ids.next().await?);
            }
            anyhow::Ok(mine)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let mine = t.await??;
        ensure!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "each caller sees increasing ids: {mine:?}"
        );
        all.extend(mine);
    }
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    ensure!(all.len() == n, "ids are unique");
    ensure!(
        ids.next().await? > *all.last().context("no ids")?,
        "later ids are larger than all earlier"
    );
    Ok(())
}

async fn lease_has_one_holder_and_observes_loss(b: Backend) -> Result<()> {
    let store = b.store;
    let s1 = store.create_session(Duration::from_secs(2)).await?;
    let s2 = store.create_session(Duration::from_secs(2)).await?;
    let Acquired::Held(first) =
        OwnershipLease::acquire(Arc::clone(&store), "/leases/bundle-0", "broker-1", &s1).await?
    else {
        bail!("a free lease must be acquired")
    };
    match OwnershipLease::acquire(Arc::clone(&store), "/leases/bundle-0", "broker-2", &s2).await? {
        Acquired::Busy(Some(holder)) => {
            ensure!(holder.owner == "broker-1" && holder.epoch == first.epoch())
        }
        other => bail!("a held lease must be busy, got {other:?}"),
    }
    let epoch1 = first.epoch();
    first.release().await?;
    let Acquired::Held(second) =
        OwnershipLease::acquire(Arc::clone(&store), "/leases/bundle-0", "broker-2", &s2).await?
    else {
        bail!("a released lease must be free")
    };
    ensure!(
        second.epoch() > epoch1,
        "each tenure has a fresh, larger epoch"
    );
    ensure!(!second.is_lost());
    // Someone deleting the key (an operator, a new owner after expiry) ends the tenure.
    ensure!(store.delete("/leases/bundle-0", Expected::Any).await? == DeleteOutcome::Deleted);
    tokio::time::timeout(Duration::from_secs(5), second.lost())
        .await
        .context("lease loss not observed after delete")?;
    // Losing the session ends it too.
    let Acquired::Held(third) =
        OwnershipLease::acquire(Arc::clone(&store), "/leases/bundle-0", "broker-1", &s1).await?
    else {
        bail!("lease must be free after delete")
    };
    ensure!(third.epoch() > second.epoch());
    s1.close().await?;
    tokio::time::timeout(Duration::from_secs(5), third.lost())
        .await
        .context("lease loss not observed after session end")?;
    ensure!(
        store.get("/leases/bundle-0").await?.is_none(),
        "the lease key goes with the session"
    );
    Ok(())
}
