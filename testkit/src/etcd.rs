//! Real etcd processes for tests: a single server ([`EtcdServer`]) or an n-member cluster
//! ([`EtcdCluster`]) on 127.0.0.1, with free ports, data in a temporary directory, and each
//! member's output in a log file next to its data (its tail is printed when a start fails).
//! Members are killed with SIGKILL — a crash, not a clean stop — by `kill`/`kill_member` and on
//! drop.
//!
//! The binary is `$MAGNETAR_ETCD_BIN`, else `etcd` on `PATH`, else `/usr/bin/etcd` (Debian package
//! `etcd-server`; flags are those of etcd 3.4). Tests do not skip without it: they fail and say
//! how to get it.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// Environment variable naming the etcd binary to use.
pub const ETCD_BIN_ENV: &str = "MAGNETAR_ETCD_BIN";
/// How long a cluster may take to elect a leader and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A start is retried with new ports this many times (another process may take a port between
/// the probe that found it free and etcd binding it).
const START_ATTEMPTS: usize = 3;
/// Raft timing for tests: a cluster re-elects within about a second after its leader dies.
const HEARTBEAT_INTERVAL_MS: &str = "50";
const ELECTION_TIMEOUT_MS: &str = "500";
const LOG_TAIL_LINES: usize = 40;

static CLUSTERS_STARTED: AtomicU64 = AtomicU64::new(0);

/// Finds the etcd binary, or says how to get one.
pub fn etcd_binary() -> Result<PathBuf> {
    const HOW_TO_GET_IT: &str = "To get it: `apt-get install -y etcd-server` (Debian/Ubuntu), \
        or run `scripts/test.sh`, which installs it. Set MAGNETAR_ETCD_BIN to use another binary.";
    if let Some(path) = std::env::var_os(ETCD_BIN_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{ETCD_BIN_ENV}={} is not a file. {HOW_TO_GET_IT}",
            path.display()
        );
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            anyhow!(
                "etcd binary not found (looked at ${ETCD_BIN_ENV}, PATH and /usr/bin/etcd). \
                 {HOW_TO_GET_IT}"
            )
        })
}

/// One etcd server: a single-member cluster.
#[derive(Debug)]
pub struct EtcdServer {
    cluster: EtcdCluster,
}

impl EtcdServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> Result<EtcdServer> {
        Ok(EtcdServer {
            cluster: EtcdCluster::start(1)?,
        })
    }

    /// [`EtcdServer::start`] for async callers: starting and the health polling block, so they
    /// run on a blocking thread instead of stalling a runtime worker.
    pub async fn launch() -> Result<EtcdServer> {
        tokio::task::spawn_blocking(EtcdServer::start)
            .await
            .map_err(|e| anyhow!("etcd start task failed: {e}"))?
    }

    /// Its client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.cluster.endpoint(0)
    }

    /// Kills it with SIGKILL (its data stays until drop).
    pub fn kill(&mut self) -> Result<()> {
        self.cluster.kill_member(0)
    }

    /// Starts it again on the same data and port after [`EtcdServer::kill`].
    pub fn restart(&mut self) -> Result<()> {
        self.cluster.restart_member(0)
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.cluster.log_tail(0)
    }
}

/// An n-member etcd cluster on 127.0.0.1.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    // Dropped after `Drop::drop` killed the members.
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct Member {
    args: Vec<String>,
    client_port: u16,
    log: PathBuf,
    process: Option<Child>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one of them answers `/health` as healthy (which
    /// needs an elected leader).
    pub async fn launch(n: usize) -> Result<EtcdCluster> {
        tokio::task::spawn_blocking(move || EtcdCluster::start(n))
            .await
            .map_err(|e| anyhow!("etcd start task failed: {e}"))?
    }

    /// Like [`EtcdCluster::launch`], for callers outside a runtime.
    pub fn start(n: usize) -> Result<EtcdCluster> {
        if n == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let binary = etcd_binary()?;
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(&binary, n) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => {
                    eprintln!("etcd cluster of {n} failed to start (attempt {attempt}): {e:#}");
                    failures.push(format!("{e:#}"));
                }
            }
        }
        bail!(
            "etcd cluster of {n} did not start after {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n---\n")
        )
    }

    fn try_start(binary: &Path, n: usize) -> Result<EtcdCluster> {
        let dir = tempfile::Builder::new()
            .prefix("magnetar-etcd-")
            .tempdir()
            .context("creating the etcd data directory")?;
        let ports = free_ports(2 * n)?;
        let nanos = magnetar_metadata::clock::entropy().u128();
        let token = format!(
            "magnetar-test-{}-{}-{nanos}",
            std::process::id(),
            CLUSTERS_STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial_cluster = (0..n)
            .map(|i| format!("m{i}={}", peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..n)
            .map(|i| {
                let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
                let data_dir = dir.path().join(format!("m{i}.etcd"));
                let args = [
                    "--name",
                    &format!("m{i}"),
                    "--data-dir",
                    &data_dir.display().to_string(),
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                    "--listen-peer-urls",
                    &peer_url(i),
                    "--initial-advertise-peer-urls",
                    &peer_url(i),
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &token,
                    "--heartbeat-interval",
                    HEARTBEAT_INTERVAL_MS,
                    "--election-timeout",
                    ELECTION_TIMEOUT_MS,
                    "--logger",
                    "zap",
                    "--log-outputs",
                    "stderr",
                ]
                .map(str::to_owned)
                .to_vec();
                Member {
                    args,
                    client_port: ports[2 * i],
                    log: dir.path().join(format!("m{i}.log")),
                    process: None,
                }
            })
            .collect();
        let mut cluster = EtcdCluster {
            binary: binary.to_owned(),
            members,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy((0..n).collect())?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let binary = self.binary.clone();
        let member = self.member_mut(i)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .with_context(|| format!("opening {}", member.log.display()))?;
        let child = Command::new(&binary)
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        member.process = Some(child);
        Ok(())
    }

    /// Waits until the given members answer `/health` as healthy.
    fn wait_healthy(&mut self, which: Vec<usize>) -> Result<()> {
        let deadline = magnetar_metadata::clock::system().now() + START_TIMEOUT;
        let mut pending = which;
        while !pending.is_empty() {
            for &i in &pending {
                let member = self.member_mut(i)?;
                if let Some(process) = member.process.as_mut()
                    && let Some(status) = process.try_wait()?
                {
                    bail!(
                        "etcd member m{i} exited with {status} while starting; log tail:\n{}",
                        self.log_tail(i)
                    );
                }
            }
            pending.retain(|&i| !self.members.get(i).is_some_and(|m| healthy(m.client_port)));
            if pending.is_empty() {
                break;
            }
            if magnetar_metadata::clock::system().now() >= deadline {
                let mut tails = String::new();
                for &i in &pending {
                    let _ = writeln!(tails, "--- m{i} log tail:\n{}", self.log_tail(i));
                }
                bail!("etcd members {pending:?} not healthy within {START_TIMEOUT:?}\n{tails}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn member_mut(&mut self, i: usize) -> Result<&mut Member> {
        let n = self.members.len();
        self.members
            .get_mut(i)
            .ok_or_else(|| anyhow!("no etcd member {i} in a cluster of {n}"))
    }

    /// Client URLs of all members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        self.members
            .get(i)
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Kills member `i` with SIGKILL and reaps it. Killing a dead member does nothing.
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        if let Some(mut process) = self.member_mut(i)?.process.take() {
            // `Child::kill` is SIGKILL on Unix.
            process
                .kill()
                .with_context(|| format!("killing etcd member m{i}"))?;
            process.wait()?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data directory and ports, and waits until it is healthy.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        self.kill_member(i)?;
        self.spawn(i)?;
        self.wait_healthy(vec![i])
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let Some(member) = self.members.get(i) else {
            return String::new();
        };
        let mut text = String::new();
        if let Err(e) = File::open(&member.log).and_then(|mut f| f.read_to_string(&mut text)) {
            return format!("(cannot read {}: {e})", member.log.display());
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut process) = member.process.take() {
                let _ = process.kill();
                let _ = process.wait();
            }
        }
    }
}

/// `count` distinct free TCP ports on 127.0.0.1 (all held open until all are found).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// True when the member on `port` says `{"health":"true"}` on `/health` (etcd serves HTTP and
/// gRPC on its client port).
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") && response.contains(r#""health":"true""#)
}
