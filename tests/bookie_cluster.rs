//! The bookie tier proved with real processes: `magnetar bookie` processes on 127.0.0.1 sharing a
//! real etcd, driven by the ledger client over gRPC, and killed with SIGKILL.
//!
//! Each test starts its own etcd and bookies, so tests run in parallel without sharing state.

use magnetar_testkit::etcd as etcd_support;
use magnetar_testkit::wait;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use magnetar_bookie::api::{
    BookieClient, BookieError, BookieId, BookieRegistration, BookieState, registration_key,
};
use magnetar_bookie::client::{
    AddHandle, LedgerClient, LedgerClientOptions, LedgerConfig, LedgerError, LedgerWriter,
};
use magnetar_bookie::rpc::{ClientOptions, GrpcBookieClient, GrpcConnector};
use magnetar_bookie::server::{Bookie, BookieOptions};
use magnetar_metadata::{EntryId, EtcdOptions, EtcdStore, LedgerId, MetadataStore};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `magnetar bookie` process with its data directory and port, restartable in place. Driven
/// with tokio's process API so that waiting for it never blocks the test's runtime.
struct BookieProcess {
    child: Option<Child>,
    data_dir: PathBuf,
    port: u16,
    id: BookieId,
    env: Vec<(String, String)>,
}

impl BookieProcess {
    async fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_magnetar"))
            .args([
                "bookie",
                "--bind-address",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            // The host's disk fill must not decide tests: only a storage cap would.
            .env("MAGNETAR_BOOKIE__DISK_USAGE_THRESHOLD", "1.0")
            .env("MAGNETAR_BOOKIE__DISK_USAGE_LWM", "1.0")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("MAGNETAR_LOG__LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning magnetar bookie")?;
        let stdout = child.stdout.take().context("bookie stdout")?;
        self.child = Some(child);
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| {
                anyhow!(
                    "bookie on port {} did not report serving in 20 s",
                    self.port
                )
            })??
            .context("bookie closed its stdout before serving")?;
        // Keep draining stdout so the bookie never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = line
            .strip_prefix("magnetar bookie: serving ")
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("unexpected first line from the bookie: {line:?}"))?;
        self.id = addr.parse().map_err(|e: String| anyhow!(e))?;
        self.port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .context("no port in serving line")?;
        Ok(())
    }

    /// SIGKILL: no shutdown, no checkpoint, no deregistration.
    async fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().context("bookie not running")?;
        child.kill().await?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    async fn terminate(&mut self) -> Result<()> {
        let mut child = self.child.take().context("bookie not running")?;
        let pid = child.id().context("bookie already reaped")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        ensure!(status.success(), "kill -TERM failed");
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(status) => {
                let status = status?;
                ensure!(
                    status.success(),
                    "bookie exited with {status} after SIGTERM"
                );
                Ok(())
            }
            Err(_) => {
                let _ = child.kill().await;
                bail!("bookie did not stop within 20 s of SIGTERM")
            }
        }
    }
}

struct Cluster {
    etcd: etcd_support::EtcdServer,
    root: String,
    dir: tempfile::TempDir,
    bookies: Vec<BookieProcess>,
    store: Arc<dyn MetadataStore>,
}

impl Cluster {
    async fn start(bookies: usize) -> Result<Cluster> {
        let etcd = etcd_support::EtcdServer::launch().await?;
        let root = "/bookie-cluster".to_owned();
        let store: Arc<dyn MetadataStore> = Arc::new(
            EtcdStore::connect(EtcdOptions {
                endpoints: vec![etcd.endpoint()],
                root: root.clone(),
                ..EtcdOptions::default()
            })
            .await?,
        );
        let mut cluster = Cluster {
            etcd,
            root,
            dir: tempfile::tempdir()?,
            bookies: Vec::new(),
            store,
        };
        for _ in 0..bookies {
            cluster.add_bookie(&[]).await?;
        }
        Ok(cluster)
    }

    /// Starts one more bookie process with extra `MAGNETAR_*` settings.
    async fn add_bookie(&mut self, extra_env: &[(&str, &str)]) -> Result<usize> {
        let index = self.bookies.len();
        let mut env = vec![
            ("MAGNETAR_METADATA__BACKEND".to_owned(), "etcd".to_owned()),
            (
                "MAGNETAR_METADATA__ETCD_ENDPOINTS".to_owned(),
                self.etcd.endpoint(),
            ),
            ("MAGNETAR_METADATA__ETCD_ROOT".to_owned(), self.root.clone()),
            (
                "MAGNETAR_METADATA__SESSION_TTL_MS".to_owned(),
                "3000".to_owned(),
            ),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut bookie = BookieProcess {
            child: None,
            data_dir: self.dir.path().join(format!("bookie-{index}")),
            port: 0,
            id: BookieId(String::new()),
            env,
        };
        bookie.spawn().await?;
        self.bookies.push(bookie);
        Ok(index)
    }

    fn index_of(&self, id: &BookieId) -> Result<usize> {
        self.bookies
            .iter()
            .position(|b| &b.id == id)
            .with_context(|| format!("{id} is not one of this cluster's bookies"))
    }

    /// A ledger client as a broker would have: its own metadata connection, gRPC to bookies.
    async fn client(&self) -> Result<LedgerClient> {
        let store: Arc<dyn MetadataStore> = Arc::new(
            EtcdStore::connect(EtcdOptions {
                endpoints: vec![self.etcd.endpoint()],
                root: self.root.clone(),
                ..EtcdOptions::default()
            })
            .await?,
        );
        let connector = Arc::new(GrpcConnector::new(ClientOptions {
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        }));
        Ok(LedgerClient::new(
            store,
            connector,
            LedgerClientOptions::default(),
        ))
    }

    async fn registration(&self, id: &BookieId) -> Result<Option<BookieRegistration>> {
        Ok(match self.store.get(&registration_key(id)).await? {
            Some(v) => Some(serde_json::from_slice(&v.value)?),
            None => None,
        })
    }
}

/// Creating a ledger right after bookies start can race the client's first view of the
/// registrations: creates it once the client sees enough bookies (a refusal for too few is the
/// only one retried).
async fn create(client: &LedgerClient, e: u32, qw: u32, qa: u32) -> Result<LedgerWriter> {
    let writer = wait::until_async(
        "the client sees enough bookies to create a ledger",
        Duration::from_secs(10),
        || async {
            match client.create_ledger(LedgerConfig::new(e, qw, qa)).await {
                Err(LedgerError::NotEnoughBookies { .. }) => None,
                other => Some(other),
            }
        },
    )
    .await?;
    Ok(writer)
}

fn payload(i: u64, size: usize) -> Bytes {
    let mut v = format!("entry-{i:06}-").into_bytes();
    v.resize(size.max(v.len()), (i % 251) as u8);
    Bytes::from(v)
}

/// Appends `range` pipelined; returns each entry's completion in order.
async fn append_all(
    writer: &LedgerWriter,
    range: std::ops::Range<u64>,
    size: usize,
) -> Result<Vec<AddHandle>> {
    let mut handles = Vec::new();
    for i in range {
        handles.push(writer.append(payload(i, size)).await?);
    }
    Ok(handles)
}

async fn expect_acked(handles: Vec<AddHandle>, first: u64) -> Result<()> {
    for (n, h) in handles.into_iter().enumerate() {
        let id = h
            .await
            .with_context(|| format!("append {} failed", first + n as u64))?;
        ensure!(
            id == EntryId(first + n as u64),
            "entry ids follow append order"
        );
    }
    Ok(())
}

async fn read_back(client: &LedgerClient, ledger: LedgerId, count: u64, size: usize) -> Result<()> {
    let reader = client.open_ledger(ledger).await?;
    ensure!(
        reader.last_add_confirmed() >= count as i64 - 1,
        "ledger {ledger} ends at {} but {count} entries were acknowledged",
        reader.last_add_confirmed()
    );
    let entries = reader.read_range(0, count - 1).await?;
    ensure!(
        entries.len() as u64 == count,
        "read {} of {count} entries",
        entries.len()
    );
    for (i, e) in entries.iter().enumerate() {
        ensure!(e.is_intact(), "entry {i} fails its CRC");
        ensure!(
            e.payload == payload(i as u64, size),
            "entry {i} has the wrong payload"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_keeps_going_when_a_bookie_is_killed() -> Result<()> {
    let mut cluster = Cluster::start(5).await?;
    let client = cluster.client().await?;
    let writer = create(&client, 3, 2, 2).await?;
    let ledger = writer.id();
    let first = append_all(&writer, 0..500, 1024).await?;
    expect_acked(first, 0).await?;

    // Kill one bookie of the ensemble while appends are in flight.
    let ensemble = client
        .ledger_metadata(ledger)
        .await?
        .last_ensemble()
        .bookies
        .clone();
    let victim = cluster.index_of(&ensemble[0])?;
    let in_flight = append_all(&writer, 500..1000, 1024).await?;
    cluster.bookies[victim].kill9().await?;
    let after = append_all(&writer, 1000..2000, 1024).await?;
    expect_acked(in_flight, 500).await?;
    expect_acked(after, 1000).await?;
    writer.close().await?;

    let meta = client.ledger_metadata(ledger).await?;
    ensure!(
        meta.ensembles.len() >= 2,
        "the bookie's failure is recorded as an ensemble change"
    );
    ensure!(
        !meta.last_ensemble().bookies.contains(&ensemble[0]),
        "the killed bookie was replaced"
    );
    ensure!(meta.last_entry_id == 1999);
    read_back(&client, ledger, 2000, 1024).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_kill_and_restart_of_a_bookie() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let client = cluster.client().await?;
    // Qa = E: every bookie acknowledged every entry before the writer saw it complete.
    let writer = create(&client, 3, 3, 3).await?;
    let ledger = writer.id();
    let handles = append_all(&writer, 0..1000, 512).await?;
    expect_acked(handles, 0).await?;
    cluster.bookies[0].kill9().await?;
    cluster.bookies[0].spawn().await?;

    let bookie = GrpcBookieClient::new(cluster.bookies[0].id.clone(), ClientOptions::default());
    let entries = bookie
        .read_range(ledger, EntryId(0), EntryId(999), 1000, 64 << 20)
        .await?;
    let mut seen = entries.len() as u64;
    for e in &entries {
        ensure!(
            e.is_intact() && e.payload == payload(e.entry.0, 512),
            "entry {} intact",
            e.entry
        );
    }
    // read_range may stop early at its byte limit; read the rest one by one.
    while seen < 1000 {
        let r = bookie.read(ledger, EntryId(seen), false).await?;
        ensure!(
            r.entry.payload == payload(seen, 512),
            "entry {seen} intact after restart"
        );
        seen += 1;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_fences_a_live_writer() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let old_owner = cluster.client().await?;
    let writer = create(&old_owner, 3, 2, 2).await?;
    let ledger = writer.id();
    expect_acked(append_all(&writer, 0..300, 256).await?, 0).await?;

    // A new owner recovers the ledger while the old writer is still alive.
    let new_owner = cluster.client().await?;
    let reader = new_owner.open_ledger_with_recovery(ledger).await?;
    ensure!(reader.is_closed(), "recovery closes the ledger");
    ensure!(
        reader.last_add_confirmed() >= 299,
        "every acknowledged entry is inside the recovered ledger (last {})",
        reader.last_add_confirmed()
    );
    let last = reader.last_add_confirmed() as u64;
    let entries = reader.read_range(0, last).await?;
    for (i, e) in entries.iter().enumerate().take(300) {
        ensure!(
            e.payload == payload(i as u64, 256),
            "acknowledged entry {i} readable after recovery"
        );
    }

    // The old writer's next add fails: it is fenced.
    let outcome = match writer.append(payload(300, 256)).await {
        Ok(handle) => handle.await,
        Err(e) => Err(e),
    };
    match outcome {
        Err(LedgerError::Fenced(_)) => {}
        other => bail!("the old writer must be fenced, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entry_is_detected_read_from_another_replica_and_repaired() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let client = cluster.client().await?;
    let writer = create(&client, 3, 3, 3).await?;
    let ledger = writer.id();
    expect_acked(append_all(&writer, 0..50, 300).await?, 0).await?;
    let meta = writer.close().await?;
    let target = EntryId(10);

    // Flip a byte of entry 10 in the entry logs of the first two replicas the reader asks
    // (its write set's order), so that it meets both damaged copies before the good one.
    let write_set = meta.write_set_bookies(target.0);
    let damaged = [
        cluster.index_of(&write_set[0])?,
        cluster.index_of(&write_set[1])?,
    ];
    for b in damaged {
        cluster.bookies[b].terminate().await?;
        flip_payload_byte(
            &cluster.bookies[b].data_dir,
            &cluster.bookies[b].id,
            ledger,
            target,
        )
        .await?;
        cluster.bookies[b].spawn().await?;
    }
    for b in damaged {
        let direct = GrpcBookieClient::new(cluster.bookies[b].id.clone(), ClientOptions::default());
        match direct.read(ledger, target, false).await {
            Err(BookieError::Corrupt { .. }) => {}
            other => bail!("bookie {b} must detect the flipped byte, got {other:?}"),
        }
    }
    // The ledger client gets the entry intact from the third replica...
    let reader = client.open_ledger(ledger).await?;
    let entry = reader.read(target.0).await?;
    ensure!(
        entry.is_intact() && entry.payload == payload(10, 300),
        "entry 10 served intact"
    );
    // ...and writes it back over both damaged copies: each bookie serves it intact again.
    for b in damaged {
        let direct = GrpcBookieClient::new(cluster.bookies[b].id.clone(), ClientOptions::default());
        wait::until_async(
            "the damaged copy is repaired by the reader",
            Duration::from_secs(10),
            || async {
                match direct.read(ledger, target, false).await {
                    Ok(r) if r.entry.is_intact() && r.entry.payload == payload(10, 300) => Some(()),
                    _ => None,
                }
            },
        )
        .await;
    }
    read_back(&client, ledger, 50, 300).await
}

/// Opens a stopped bookie's storage in this process to find where the entry's payload lies, then
/// flips one byte there.
async fn flip_payload_byte(
    data_dir: &Path,
    id: &BookieId,
    ledger: LedgerId,
    entry: EntryId,
) -> Result<()> {
    let bookie = Bookie::open(BookieOptions::new(id.clone(), data_dir))
        .await
        .map_err(|e| anyhow!("opening the stopped bookie's storage: {e}"))?;
    let located = bookie.locate(ledger, entry);
    bookie.shutdown().await;
    drop(bookie);
    let (path, offset) = located.context("entry not found in the entry logs")?;
    let mut bytes = std::fs::read(&path)?;
    let at = usize::try_from(offset)?;
    ensure!(
        at < bytes.len(),
        "payload offset past the end of {}",
        path.display()
    );
    bytes[at] ^= 0xff;
    std::fs::write(&path, bytes)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_bookie_turns_read_only_and_adds_move_to_others() -> Result<()> {
    let mut cluster = Cluster::start(2).await?;
    // A third bookie with a small storage cap, checked often. No checkpoint while the test
    // runs: a checkpoint trims the journal, and that can give back enough space to drop below
    // 90% of the cap and leave read-only again (as it should) before the probe below.
    let small = cluster
        .add_bookie(&[
            ("MAGNETAR_BOOKIE__STORAGE_SIZE_BYTES_MAX", "16777216"),
            ("MAGNETAR_BOOKIE__JOURNAL_FILE_SIZE_BYTES", "1048576"),
            ("MAGNETAR_BOOKIE__DISK_CHECK_INTERVAL_MS", "100"),
            ("MAGNETAR_BOOKIE__CHECKPOINT_INTERVAL_MS", "3600000"),
        ])
        .await?;
    let small_id = cluster.bookies[small].id.clone();
    let client = cluster.client().await?;
    // With exactly three bookies registered, the ensemble must include the small one.
    let writer = create(&client, 3, 2, 2).await?;
    let ledger = writer.id();
    ensure!(
        client
            .ledger_metadata(ledger)
            .await?
            .last_ensemble()
            .bookies
            .contains(&small_id)
    );
    cluster.add_bookie(&[]).await?;

    const SIZE: usize = 64 * 1024;
    let mut written = 0u64;
    let deadline = magnetar_metadata::clock::system().now() + Duration::from_secs(60);
    loop {
        let handles = append_all(&writer, written..written + 16, SIZE).await?;
        expect_acked(handles, written).await?;
        written += 16;
        let state = cluster.registration(&small_id).await?.map(|r| r.state);
        if state == Some(BookieState::ReadOnly) {
            break;
        }
        ensure!(
            written < 2000 && magnetar_metadata::clock::system().now() < deadline,
            "the small bookie never turned read-only"
        );
    }
    // Adds keep succeeding: they go to the other bookies.
    expect_acked(
        append_all(&writer, written..written + 64, SIZE).await?,
        written,
    )
    .await?;
    written += 64;
    writer.close().await?;
    let meta = client.ledger_metadata(ledger).await?;
    ensure!(
        !meta.last_ensemble().bookies.contains(&small_id),
        "the read-only bookie left the ensemble: {:?}",
        meta.ensembles
    );
    // It refuses adds itself, and still serves what it stores.
    let direct = GrpcBookieClient::new(small_id.clone(), ClientOptions::default());
    let probe = magnetar_bookie::api::Entry::new(
        LedgerId(u64::MAX - 1),
        EntryId(0),
        -1,
        Bytes::from_static(b"x"),
    );
    match direct.add(probe, false).await {
        Err(BookieError::ReadOnly) => {}
        other => bail!("a read-only bookie must refuse adds, got {other:?}"),
    }
    read_back(&client, ledger, written, SIZE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookie_whose_index_outgrows_its_cache_restarts_after_kill_9_with_every_entry()
-> Result<()> {
    let mut cluster = Cluster::start(0).await?;
    // Checkpoints while the data goes in; an index cache far smaller than the index.
    cluster
        .add_bookie(&[
            ("MAGNETAR_BOOKIE__CHECKPOINT_INTERVAL_MS", "200"),
            ("MAGNETAR_BOOKIE__INDEX_CACHE_SIZE_BYTES", "65536"),
        ])
        .await?;
    let client = cluster.client().await?;
    const LEDGERS: u64 = 10;
    const PER_LEDGER: u64 = 5_000;
    let mut ledgers = Vec::new();
    for _ in 0..LEDGERS {
        let writer = create(&client, 1, 1, 1).await?;
        let handles = append_all(&writer, 0..PER_LEDGER, 64).await?;
        expect_acked(handles, 0).await?;
        writer.close().await?;
        ledgers.push(writer.id());
    }
    let index = cluster.bookies[0]
        .data_dir
        .join("ledgers")
        .join("index.redb");
    wait::until(
        "the index holds the checkpointed entries",
        Duration::from_secs(30),
        || std::fs::metadata(&index).is_ok_and(|m| m.len() > 4 * 65_536),
    )
    .await;
    // More entries after the last checkpoint, still open: only the journal holds their index.
    let open = create(&client, 1, 1, 1).await?;
    let handles = append_all(&open, 0..2_000, 64).await?;
    expect_acked(handles, 0).await?;
    cluster.bookies[0].kill9().await?;
    cluster.bookies[0].spawn().await?;

    let client = cluster.client().await?;
    for ledger in ledgers {
        read_back(&client, ledger, PER_LEDGER, 64).await?;
    }
    // The open ledger is recovered (fenced, closed at its last entry) and read whole.
    let recovered = client.open_ledger_with_recovery(open.id()).await?;
    ensure!(
        recovered.metadata().last_entry_id == 1_999,
        "recovered the open ledger at {}",
        recovered.metadata().last_entry_id
    );
    read_back(&client, open.id(), 2_000, 64).await
}
