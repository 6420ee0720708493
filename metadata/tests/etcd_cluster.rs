//! The etcd backend against real etcd processes: the contract on one server, and failover in a
//! three-member cluster when the member the store talks to, the leader, or the first listed
//! endpoint is dead. The general contract is the conformance suite's job; this file is about what
//! only etcd can get wrong (root prefixes, paging, compaction, members dying).

use magnetar_testkit::etcd as etcd_support;
use magnetar_testkit::wait;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use etcd_support::{EtcdCluster, EtcdServer};
use futures::StreamExt;
use magnetar_metadata::{
    DeleteOutcome, EtcdOptions, EtcdStore, EventKind, Expected, MetadataError, MetadataStore,
    PutOutcome, VALUE_SIZE_MAX_BYTES, Version, WatchEvent, WatchStream,
};

static ROOTS: AtomicU64 = AtomicU64::new(0);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "magnetar_metadata=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A root no other test in this process uses.
fn unique_root() -> String {
    format!(
        "/test-{}-{}",
        std::process::id(),
        ROOTS.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(endpoints: Vec<String>, root: &str) -> Result<EtcdStore> {
    EtcdStore::connect(EtcdOptions {
        endpoints: endpoints.clone(),
        root: root.to_owned(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        ..EtcdOptions::default()
    })
    .await
    .with_context(|| format!("connecting to {endpoints:?}"))
}

fn bytes(s: impl Into<String>) -> Bytes {
    Bytes::from(s.into())
}

async fn next_event(stream: &mut WatchStream, what: &str) -> Result<WatchEvent> {
    match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
        Err(_) => bail!("no watch event within 15 s while waiting for {what}"),
        Ok(None) => bail!("watch ended while waiting for {what}"),
        Ok(Some(event)) => event.with_context(|| format!("watch failed while waiting for {what}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_on_one_server() -> Result<()> {
    init_tracing();
    let server = EtcdServer::launch().await?;
    let root = unique_root();
    let store = connect(vec![server.endpoint()], &root).await?;
    // A neighbouring root whose name extends this one: its keys must never show up here.
    let other_root = connect(vec![server.endpoint()], &format!("{root}x")).await?;

    // Compare-and-set, with conflicts as data.
    ensure!(store.get("/a").await?.is_none());
    let PutOutcome::Written(v1) = store.put("/a", bytes("1"), Expected::Absent).await? else {
        bail!("create failed")
    };
    ensure!(
        store.put("/a", bytes("x"), Expected::Absent).await?
            == PutOutcome::Conflict { current: Some(v1) }
    );
    let PutOutcome::Written(v2) = store.put("/a", bytes("2"), Expected::Version(v1)).await? else {
        bail!("CAS at the current version failed")
    };
    ensure!(v2 > v1, "versions increase: {v1} then {v2}");
    ensure!(
        store.put("/a", bytes("y"), Expected::Version(v1)).await?
            == PutOutcome::Conflict { current: Some(v2) }
    );
    ensure!(
        store
            .put("/none", bytes("y"), Expected::Version(Version::ZERO))
            .await?
            == PutOutcome::Conflict { current: None },
        "version 0 never matches, not even an absent key"
    );
    let got = store.get("/a").await?.context("/a vanished")?;
    ensure!(got.value == bytes("2") && got.version == v2, "get: {got:?}");
    ensure!(
        other_root.get("/a").await?.is_none(),
        "a key is visible only under its own root"
    );

    // Deletes follow the same rules as the in-memory key space.
    ensure!(store.delete("/none", Expected::Any).await? == DeleteOutcome::NotFound);
    ensure!(store.delete("/none", Expected::Absent).await? == DeleteOutcome::NotFound);
    ensure!(
        store.delete("/a", Expected::Absent).await?
            == DeleteOutcome::Conflict { current: Some(v2) }
    );
    ensure!(
        store.delete("/a", Expected::Version(v1)).await?
            == DeleteOutcome::Conflict { current: Some(v2) }
    );
    ensure!(
        store.delete("/none", Expected::Version(v1)).await?
            == DeleteOutcome::Conflict { current: None }
    );
    ensure!(store.delete("/a", Expected::Version(v2)).await? == DeleteOutcome::Deleted);
    ensure!(store.delete("/a", Expected::Any).await? == DeleteOutcome::NotFound);

    // Listing: keys relative to the root, sorted, nothing from outside the prefix or root.
    for k in ["/l/b", "/l/a", "/l/c/d", "/lx"] {
        let _ = store.put(k, bytes(k), Expected::Any).await?;
    }
    let _ = other_root
        .put("/l/other", bytes("o"), Expected::Any)
        .await?;
    let listing = store.list("/l/").await?;
    let keys: Vec<&str> = listing.entries.iter().map(|(k, _)| k.as_str()).collect();
    ensure!(keys == ["/l/a", "/l/b", "/l/c/d"], "listing: {keys:?}");
    let newest = listing.entries.iter().map(|(_, v)| v.version).max();
    ensure!(
        Some(listing.revision) >= newest,
        "listing revision {}",
        listing.revision
    );
    for prefix in ["/", ""] {
        let all = store.list(prefix).await?;
        let keys: Vec<&str> = all.entries.iter().map(|(k, _)| k.as_str()).collect();
        ensure!(
            keys == ["/l/a", "/l/b", "/l/c/d", "/lx"],
            "list({prefix:?}) lists the whole root and nothing else: {keys:?}"
        );
    }

    // Watch from the listing's revision sees later changes in order, with their revisions.
    let mut watch = store.watch("/l/", listing.revision).await?;
    let PutOutcome::Written(w1) = store.put("/l/a", bytes("new"), Expected::Any).await? else {
        bail!("put failed")
    };
    let _ = store.put("/lx", bytes("outside"), Expected::Any).await?;
    ensure!(store.delete("/l/b", Expected::Any).await? == DeleteOutcome::Deleted);
    let e1 = next_event(&mut watch, "put /l/a").await?;
    ensure!(
        e1 == WatchEvent {
            key: "/l/a".into(),
            kind: EventKind::Put(bytes("new")),
            revision: w1
        },
        "{e1:?}"
    );
    let e2 = next_event(&mut watch, "delete /l/b").await?;
    ensure!(
        e2.key == "/l/b" && e2.kind == EventKind::Delete && e2.revision > w1,
        "{e2:?}"
    );

    // Sessions: ttl rounded up to whole seconds; keys vanish on close; a lost session refuses.
    let session = store.create_session(Duration::from_millis(1500)).await?;
    ensure!(
        session.ttl() == Duration::from_secs(2),
        "ttl {:?}",
        session.ttl()
    );
    let _ = store
        .put_ephemeral("/l/eph", bytes("e"), Expected::Absent, &session)
        .await?;
    let _ = store
        .put_ephemeral("/l/kept", bytes("e"), Expected::Absent, &session)
        .await?;
    // A plain put over an ephemeral key makes it persistent.
    let _ = store.put("/l/kept", bytes("p"), Expected::Any).await?;
    // Observation window for a negative assertion, not a wait for a condition: etcd expires
    // the lease on its own clock unless keep-alives renew it, so only real time past the ttl
    // shows that they do.
    wait::holds_throughout(
        "keep-alive holds the session and its key past the ttl",
        session.ttl() + Duration::from_secs(1),
        || async { !session.is_lost() && store.get("/l/eph").await.is_ok_and(|v| v.is_some()) },
    )
    .await;
    session.close().await?;
    ensure!(
        store.get("/l/eph").await?.is_none(),
        "closing deletes ephemeral keys"
    );
    ensure!(
        store.get("/l/kept").await?.is_some(),
        "persistent put detached the key"
    );
    let e3 = next_event(&mut watch, "put /l/eph").await?;
    let e4 = next_event(&mut watch, "put /l/kept").await?;
    let e5 = next_event(&mut watch, "overwrite /l/kept").await?;
    let e6 = next_event(&mut watch, "expiry of /l/eph").await?;
    ensure!(
        (
            e3.key.as_str(),
            e4.key.as_str(),
            e5.key.as_str(),
            e6.key.as_str()
        ) == ("/l/eph", "/l/kept", "/l/kept", "/l/eph")
            && e6.kind == EventKind::Delete,
        "{e3:?} {e4:?} {e5:?} {e6:?}"
    );
    match store
        .put_ephemeral("/l/late", bytes("x"), Expected::Any, &session)
        .await
    {
        Err(MetadataError::SessionLost(id)) if id == session.id() => {}
        other => bail!("put_ephemeral on a closed session: {other:?}"),
    }

    // A dropped session is revoked in the background.
    let dropped = store.create_session(Duration::from_secs(5)).await?;
    let _ = store
        .put_ephemeral("/l/dropped", bytes("d"), Expected::Any, &dropped)
        .await?;
    drop(dropped);
    wait::until_async(
        "the dropped session's key is deleted",
        Duration::from_secs(3),
        || async {
            match store.get("/l/dropped").await {
                Ok(Some(_)) => None,
                Ok(None) => Some(Ok(())),
                Err(e) => Some(Err(e)),
            }
        },
    )
    .await?;

    // A lease revoked behind the session's back: writes under it are refused, and the session
    // learns it is lost.
    let mut raw = etcd_client::Client::connect([server.endpoint()], None).await?;
    let revoked = store.create_session(Duration::from_secs(2)).await?;
    let _ = raw.lease_revoke(revoked.id().0).await?;
    match store
        .put_ephemeral("/l/revoked", bytes("x"), Expected::Absent, &revoked)
        .await
    {
        Err(MetadataError::SessionLost(id)) if id == revoked.id() => {}
        other => bail!("put_ephemeral on a revoked lease: {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(3), revoked.lost())
        .await
        .context("session not marked lost within 3 s of its lease being revoked")?;

    // Invalid keys are refused before anything is sent.
    ensure!(matches!(
        store.put("no-slash", bytes("x"), Expected::Any).await,
        Err(MetadataError::InvalidKey { .. })
    ));

    // Watching from compacted history ends the stream with `Compacted`.
    let head = store.list("/").await?.revision;
    let _ = raw.compact(i64::try_from(head.0)?, None).await?;
    let mut stale = store.watch("/l/", Version(1)).await?;
    match tokio::time::timeout(Duration::from_secs(10), stale.next()).await {
        Ok(Some(Err(MetadataError::Compacted { .. }))) => {}
        other => bail!("watch from compacted history: {other:?}"),
    }

    // Shut down: watches end with Closed, operations refuse.
    // (Events already queued are still delivered first.)
    store.shutdown();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(MetadataError::Closed)) | None) => break,
            other => bail!("watch after shutdown: {other:?}"),
        }
    }
    ensure!(matches!(
        store.get("/l/a").await,
        Err(MetadataError::Closed)
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_10000_keys_and_1_mib_values() -> Result<()> {
    init_tracing();
    let server = EtcdServer::launch().await?;
    let store = connect(vec![server.endpoint()], &unique_root()).await?;
    const KEYS: usize = 10_000;
    let started = magnetar_metadata::clock::system().now();
    let writes = futures::stream::iter(0..KEYS)
        .map(|i| {
            let store = store.clone();
            async move {
                store
                    .put(
                        &format!("/many/{i:05}"),
                        bytes(format!("v{i}")),
                        Expected::Absent,
                    )
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for w in writes {
        ensure!(matches!(w?, PutOutcome::Written(_)));
    }
    eprintln!("wrote {KEYS} keys in {:?}", started.elapsed());
    let started = magnetar_metadata::clock::system().now();
    let listing = store.list("/many/").await?;
    eprintln!(
        "listed {} keys in {:?}",
        listing.entries.len(),
        started.elapsed()
    );
    ensure!(
        listing.entries.len() == KEYS,
        "got {} keys",
        listing.entries.len()
    );
    for (i, (key, value)) in listing.entries.iter().enumerate() {
        ensure!(
            key == &format!("/many/{i:05}") && value.value == bytes(format!("v{i}")),
            "entry {i} is {key} = {:?}",
            value.value
        );
    }

    // Values of the maximum size, listed and watched (several per message).
    let watch = store.watch("/big/", listing.revision).await?;
    let mut expected = Vec::new();
    for i in 0..6u8 {
        let value = Bytes::from(vec![b'a' + i; VALUE_SIZE_MAX_BYTES]);
        let _ = store
            .put(&format!("/big/{i}"), value.clone(), Expected::Any)
            .await?;
        expected.push(value);
    }
    let big = store.list("/big/").await?;
    ensure!(big.entries.len() == expected.len());
    for ((_, got), want) in big.entries.iter().zip(&expected) {
        ensure!(got.value == want, "1 MiB value listed intact");
    }
    let events: Vec<_> = watch.take(expected.len()).collect().await;
    for (event, want) in events.into_iter().zip(&expected) {
        ensure!(
            event?.kind == EventKind::Put(want.clone()),
            "1 MiB value watched intact"
        );
    }
    Ok(())
}

/// Requests made at the same time go to etcd as shared transactions (`etcd/batch.rs`), yet each
/// keeps its own outcome: conditional writes win or conflict one by one, a write to a key
/// another request of the batch also writes still lands, and reads see what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_transactions_and_keep_their_own_outcomes() -> Result<()> {
    init_tracing();
    let server = EtcdServer::launch().await?;
    let store = connect(vec![server.endpoint()], &unique_root()).await?;
    const KEYS: usize = 200;
    let contested = store
        .put("/batch/contested", bytes("v0"), Expected::Absent)
        .await?
        .written()
        .context("creating the contested key")?;
    let doomed = store
        .put("/batch/doomed", bytes("x"), Expected::Absent)
        .await?
        .written()
        .context("creating the key to delete")?;
    // All at once: distinct keys, 20 compare-and-sets racing on one key, the same key written
    // unconditionally twice, a delete at the right version and one at a wrong version.
    let puts = (0..KEYS).map(|i| {
        let store = store.clone();
        async move {
            let key = format!("/batch/k{i:03}");
            let outcome = store
                .put(&key, bytes(format!("v{i}")), Expected::Absent)
                .await?;
            anyhow::Ok((key, outcome))
        }
    });
    let races = (0..20).map(|i| {
        let store = store.clone();
        async move {
            store
                .put(
                    "/batch/contested",
                    bytes(format!("racer{i}")),
                    Expected::Version(contested),
                )
                .await
        }
    });
    let twice = (0..2).map(|i| {
        let store = store.clone();
        async move {
            store
                .put("/batch/twice", bytes(format!("t{i}")), Expected::Any)
                .await
        }
    });
    let (puts, races, twice, deleted, refused) = tokio::join!(
        futures::future::join_all(puts),
        futures::future::join_all(races),
        futures::future::join_all(twice),
        store.delete("/batch/doomed", Expected::Version(doomed)),
        store.delete(
            "/batch/contested",
            Expected::Version(Version(doomed.0 + 1_000_000))
        ),
    );
    let mut versions = std::collections::BTreeSet::new();
    for p in puts {
        let (key, outcome) = p?;
        let PutOutcome::Written(v) = outcome else {
            bail!("{key}: a fresh key conflicted: {outcome:?}");
        };
        versions.insert(v);
        let read = store.get(&key).await?.context("written key missing")?;
        ensure!(
            read.version == v,
            "{key} reads back at {} not {v}",
            read.version
        );
    }
    ensure!(
        versions.len() < KEYS / 2,
        "{KEYS} concurrent writes took {} revisions: they were not batched",
        versions.len()
    );
    let winners: Vec<Version> = races
        .into_iter()
        .filter_map(|r| r.ok().and_then(PutOutcome::written))
        .collect();
    ensure!(winners.len() == 1, "one racer wins, got {winners:?}");
    let current = store
        .get("/batch/contested")
        .await?
        .context("contested key")?;
    ensure!(current.version == winners[0]);
    for t in twice {
        ensure!(
            matches!(t?, PutOutcome::Written(_)),
            "unconditional put lands"
        );
    }
    ensure!(store.get("/batch/twice").await?.is_some());
    ensure!(
        deleted? == DeleteOutcome::Deleted,
        "delete at the right version"
    );
    ensure!(store.get("/batch/doomed").await?.is_none());
    ensure!(
        matches!(refused?, DeleteOutcome::Conflict { current: Some(_) }),
        "delete at a wrong version conflicts"
    );
    // Reads at the same time, of keys that exist and one that does not.
    let reads = (0..KEYS).map(|i| {
        let store = store.clone();
        async move { store.get(&format!("/batch/k{i:03}")).await }
    });
    let (reads, missing) = tokio::join!(futures::future::join_all(reads), store.get("/batch/none"));
    for (i, r) in reads.into_iter().enumerate() {
        let got = r?.with_context(|| format!("k{i:03} missing"))?;
        ensure!(
            got.value == bytes(format!("v{i}")),
            "k{i:03} = {:?}",
            got.value
        );
    }
    ensure!(missing?.is_none());
    Ok(())
}

/// Which member a failover test kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// The member the store is talking to (after connecting, the first endpoint).
    Current,
    /// The raft leader, whichever endpoint it is.
    Leader,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_killing_the_member_it_talks_to() -> Result<()> {
    failover(Victim::Current).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_killing_the_leader() -> Result<()> {
    failover(Victim::Leader).await
}

/// Writes, reads, a watch and a session keep working across the death of one of three members.
async fn failover(victim: Victim) -> Result<()> {
    init_tracing();
    let mut cluster = EtcdCluster::launch(3).await?;
    let endpoints = cluster.endpoints();
    let store = connect(endpoints.clone(), &unique_root()).await?;
    let session = store.create_session(Duration::from_secs(2)).await?;
    let _ = store
        .put_ephemeral("/owner", bytes("me"), Expected::Absent, &session)
        .await?;
    let start = store.list("/data/").await?.revision;
    let mut watch = store.watch("/data/", start).await?;

    // One writer runs without pause while the member dies under it, so requests are in flight
    // at the moment of the kill.
    let progress = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (store, progress) = (store.clone(), Arc::clone(&progress));
        async move {
            let mut log = WriteLog::default();
            for i in 0..WRITER_ROUNDS {
                log.increment(&store).await?;
                log.create(&store, &format!("/data/k{i:02}")).await?;
                progress.store(i + 1, Ordering::SeqCst);
            }
            anyhow::Ok(log)
        }
    });
    wait::until(
        "the writer a quarter through its rounds (or ended)",
        Duration::from_secs(30),
        || progress.load(Ordering::SeqCst) >= WRITER_ROUNDS / 4 || writer.is_finished(),
    )
    .await;
    ensure!(
        progress.load(Ordering::SeqCst) >= WRITER_ROUNDS / 4,
        "writer ended early"
    );
    let victim_index = match victim {
        Victim::Current => endpoints
            .iter()
            .position(|e| *e == store.current_endpoint())
            .context("current endpoint not in the list")?,
        Victim::Leader => leader_index(&endpoints).await?,
    };
    eprintln!(
        "{victim:?}: killing member {victim_index} ({}) after {} writer rounds; store talks to {}",
        endpoints[victim_index],
        progress.load(Ordering::SeqCst),
        store.current_endpoint()
    );
    cluster.kill_member(victim_index)?;
    let killed_at = magnetar_metadata::clock::system().now();
    let log = writer.await??;
    eprintln!(
        "{WRITER_ROUNDS} increments and creates done, {:?} after the kill; store now talks to {}; \
         {} indeterminate writes resolved by re-reading",
        killed_at.elapsed(),
        store.current_endpoint(),
        log.indeterminate
    );

    // Reads return the latest values.
    let counter = store
        .get("/data/counter")
        .await?
        .context("counter missing")?;
    ensure!(
        counter.value == bytes(WRITER_ROUNDS.to_string()),
        "counter is {:?}",
        counter.value
    );
    let listing = store.list("/data/").await?;
    ensure!(
        listing.entries.len() == 1 + WRITER_ROUNDS as usize,
        "{} keys listed",
        listing.entries.len()
    );

    // The watch delivered every change exactly once, in order, across the failover.
    let _ = store
        .put("/data/zz-end", bytes("end"), Expected::Any)
        .await?;
    let mut seen = Vec::new();
    loop {
        let event = next_event(
            &mut watch,
            &format!("event {} of {}", seen.len() + 1, log.writes.len() + 1),
        )
        .await?;
        if event.key == "/data/zz-end" {
            break;
        }
        let value = match event.kind {
            EventKind::Put(v) => v,
            EventKind::Delete => bail!("unexpected delete of {}", event.key),
        };
        seen.push((event.key, value, event.revision));
    }
    if seen != log.writes {
        let first_difference = seen.iter().zip(&log.writes).position(|(a, b)| a != b);
        bail!(
            "watch saw {} events, {} writes were made; first difference at {first_difference:?}\n\
             seen:   {:?}\nwrites: {:?}",
            seen.len(),
            log.writes.len(),
            seen,
            log.writes
        );
    }

    // The session survived: its keep-alive moved to a live member before the ttl ran out.
    // Observation window for a negative assertion, not a wait for a condition: etcd would
    // expire the lease on its own clock, so only real time past two ttls after the kill shows
    // that it did not.
    let window = (killed_at + 2 * session.ttl())
        .saturating_duration_since(magnetar_metadata::clock::system().now());
    wait::holds_throughout("the session is not lost after the kill", window, || async {
        !session.is_lost()
    })
    .await;
    ensure!(
        store.get("/owner").await?.is_some(),
        "ephemeral key gone after the kill"
    );
    session.close().await?;
    ensure!(store.get("/owner").await?.is_none());
    Ok(())
}

/// The writes a failover test made, with the versions they got, resolving indeterminate
/// outcomes by reading back (the only correct way: a lost reply does not mean a lost write).
#[derive(Default)]
struct WriteLog {
    writes: Vec<(String, Bytes, Version)>,
    counter: u64,
    indeterminate: usize,
}

const ATTEMPTS_MAX: usize = 20;
/// Rounds of the failover tests' writer: each increments the counter and creates a key.
const WRITER_ROUNDS: u64 = 40;

/// The writer's pause before it retries a request that failed while a member was dying, as
/// any etcd client backs off while the cluster elects a leader. Not a wait for a condition:
/// the caller's next attempt is the check, and it gives up after [`ATTEMPTS_MAX`].
async fn retry_pause() {
    magnetar_metadata::clock::system()
        .sleep(Duration::from_millis(100))
        .await;
}

impl WriteLog {
    /// Increments `/data/counter` by compare-and-set.
    async fn increment(&mut self, store: &EtcdStore) -> Result<()> {
        let key = "/data/counter";
        let value = bytes((self.counter + 1).to_string());
        for attempt in 1..=ATTEMPTS_MAX {
            let current = read(store, key).await?;
            let expected = match &current {
                None => Expected::Absent,
                Some(v) if v.value == value => {
                    // An earlier indeterminate attempt was applied.
                    return self.record(key, value, v.version);
                }
                Some(v) => Expected::Version(v.version),
            };
            match store.put(key, value.clone(), expected).await {
                Ok(PutOutcome::Written(v)) => return self.record(key, value, v),
                Ok(PutOutcome::Conflict { current }) => {
                    eprintln!("increment attempt {attempt}: conflict at {current:?}; re-reading");
                }
                Err(e) if e.is_retryable() || e.is_indeterminate() => {
                    self.indeterminate += usize::from(e.is_indeterminate());
                    eprintln!("increment attempt {attempt}: {e}; re-reading");
                    retry_pause().await;
                }
                Err(e) => return Err(e).context("increment"),
            }
        }
        bail!("increment to {value:?} failed {ATTEMPTS_MAX} times")
    }

    /// Creates `key` (it must not exist yet).
    async fn create(&mut self, store: &EtcdStore, key: &str) -> Result<()> {
        let value = bytes(format!("value of {key}"));
        for attempt in 1..=ATTEMPTS_MAX {
            match store.put(key, value.clone(), Expected::Absent).await {
                Ok(PutOutcome::Written(v)) => return self.record(key, value, v),
                Ok(PutOutcome::Conflict { .. }) => {
                    // Only an earlier indeterminate attempt of ours can have created it.
                    let v = read(store, key)
                        .await?
                        .context("conflicting key vanished")?;
                    ensure!(v.value == value, "{key} holds a foreign value");
                    return self.record(key, value, v.version);
                }
                Err(e) if e.is_retryable() || e.is_indeterminate() => {
                    self.indeterminate += usize::from(e.is_indeterminate());
                    eprintln!("create {key} attempt {attempt}: {e}");
                    retry_pause().await;
                }
                Err(e) => return Err(e).with_context(|| format!("create {key}")),
            }
        }
        bail!("create {key} failed {ATTEMPTS_MAX} times")
    }

    fn record(&mut self, key: &str, value: Bytes, version: Version) -> Result<()> {
        if key == "/data/counter" {
            self.counter += 1;
        }
        self.writes.push((key.to_owned(), value, version));
        Ok(())
    }
}

/// A read, retried on retryable errors only.
async fn read(store: &EtcdStore, key: &str) -> Result<Option<magnetar_metadata::Versioned>> {
    for attempt in 1..=ATTEMPTS_MAX {
        match store.get(key).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                eprintln!("get {key} attempt {attempt}: {e}");
                retry_pause().await;
            }
            Err(e) => return Err(e).with_context(|| format!("get {key}")),
        }
    }
    bail!("get {key} failed {ATTEMPTS_MAX} times")
}

/// Index of the endpoint whose member is the raft leader.
async fn leader_index(endpoints: &[String]) -> Result<usize> {
    for (i, endpoint) in endpoints.iter().enumerate() {
        let mut client = etcd_client::Client::connect([endpoint], None).await?;
        let status = client.status().await?;
        let member = status
            .header()
            .context("status without header")?
            .member_id();
        if status.leader() == member {
            return Ok(i);
        }
    }
    bail!("no member of {endpoints:?} says it is the leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_with_a_dead_first_endpoint() -> Result<()> {
    init_tracing();
    let mut cluster = EtcdCluster::launch(3).await?;
    cluster.kill_member(0)?;
    let endpoints = cluster.endpoints();
    let started = magnetar_metadata::clock::system().now();
    let store = connect(endpoints.clone(), &unique_root()).await?;
    eprintln!(
        "connected in {:?} with {} dead; talking to {}",
        started.elapsed(),
        endpoints[0],
        store.current_endpoint()
    );
    ensure!(store.current_endpoint() != endpoints[0]);
    let session = store.create_session(Duration::from_secs(2)).await?;
    let _ = store
        .put_ephemeral("/eph", bytes("e"), Expected::Absent, &session)
        .await?;
    let mut watch = store.watch("/w/", Version::ZERO).await?;
    let PutOutcome::Written(v1) = store.put("/w/a", bytes("1"), Expected::Absent).await? else {
        bail!("create failed")
    };
    let PutOutcome::Written(v2) = store.put("/w/a", bytes("2"), Expected::Version(v1)).await?
    else {
        bail!("CAS failed")
    };
    ensure!(store.get("/w/a").await?.map(|v| v.version) == Some(v2));
    ensure!(store.list("/w/").await?.entries.len() == 1);
    let e1 = next_event(&mut watch, "create").await?;
    let e2 = next_event(&mut watch, "CAS").await?;
    ensure!(e1.revision == v1 && e2.revision == v2, "{e1:?} {e2:?}");
    // Observation window for a negative assertion, not a wait for a condition: etcd expires
    // the lease on its own clock unless keep-alives (to a live member) renew it, so only real
    // time past the ttl shows that they do.
    wait::holds_throughout(
        "keep-alive holds the session and its key past the ttl",
        session.ttl() + Duration::from_secs(1),
        || async { !session.is_lost() && store.get("/eph").await.is_ok_and(|v| v.is_some()) },
    )
    .await;
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "a dead first endpoint made things slow: {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_unavailable_when_no_member_is_alive() -> Result<()> {
    init_tracing();
    let request_timeout = Duration::from_secs(1);
    let options = |endpoints: Vec<String>| EtcdOptions {
        endpoints,
        root: unique_root(),
        connect_timeout: Duration::from_millis(500),
        request_timeout,
        ..EtcdOptions::default()
    };
    // Nothing listens on these ports.
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            Ok(format!("http://{}", listener.local_addr()?))
        })
        .collect::<Result<_>>()?;
    let started = magnetar_metadata::clock::system().now();
    let result = EtcdStore::connect(options(dead)).await;
    let took = started.elapsed();
    ensure!(
        matches!(result, Err(MetadataError::Unavailable(_))),
        "connect to nothing: {result:?}"
    );
    ensure!(took < request_timeout * 3, "connect took {took:?}");

    // A store whose only member dies.
    let mut server = EtcdServer::launch().await?;
    let store = EtcdStore::connect(options(vec![server.endpoint()])).await?;
    let _ = store.put("/k", bytes("v"), Expected::Any).await?;
    server.kill()?;
    // A request already on the connection when the member died may have reached it (a put is
    // then Indeterminate, rightly); what is checked below is requests made once the store knows
    // the member is gone, which a read tells.
    wait::until_async(
        "the store finds its only member gone",
        Duration::from_secs(10),
        || async {
            matches!(store.get("/k").await, Err(MetadataError::Unavailable(_))).then_some(())
        },
    )
    .await;
    for op in ["get", "put", "list", "create_session"] {
        let started = magnetar_metadata::clock::system().now();
        let result = match op {
            "get" => store.get("/k").await.map(|_| ()),
            "put" => store.put("/k", bytes("w"), Expected::Any).await.map(|_| ()),
            "list" => store.list("/").await.map(|_| ()),
            _ => store
                .create_session(Duration::from_secs(1))
                .await
                .map(|_| ()),
        };
        let took = started.elapsed();
        eprintln!("{op} with the only member dead: {result:?} after {took:?}");
        ensure!(
            matches!(result, Err(MetadataError::Unavailable(_))),
            "{op}: a request that never reached etcd is Unavailable, got {result:?}"
        );
        ensure!(took < request_timeout * 3, "{op} took {took:?}");
    }
    Ok(())
}
