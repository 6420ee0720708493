//! A real S3-compatible server for tests: moto's server (PyPI `moto[server]`) on a free port of
//! 127.0.0.1, its output in a log file, killed on drop. moto checks what matters to uploads
//! (multipart part sizes, ranged GETs, 416) but not credentials.
//!
//! The binary is `$MAGNETAR_MOTO_BIN`, else `moto_server` on `PATH`. Tests do not skip without
//! it: they fail and say how to get it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

pub const MOTO_BIN_ENV: &str = "MAGNETAR_MOTO_BIN";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const HOW_TO_GET_IT: &str = "To get it: `python3 -m pip install 'moto[server]'`, or run \
    `scripts/test.sh`, which installs it. Set MAGNETAR_MOTO_BIN to use another binary.";

/// How to run moto's server: its binary, or the Python module when pip's script directory is
/// not on `PATH`.
pub fn moto_command() -> Result<Command> {
    if let Some(path) = std::env::var_os(MOTO_BIN_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(Command::new(path));
        }
        bail!(
            "{MOTO_BIN_ENV}={} is not a file. {HOW_TO_GET_IT}",
            path.display()
        );
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("moto_server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|candidate| candidate.is_file());
    if let Some(bin) = on_path {
        return Ok(Command::new(bin));
    }
    let module = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if module {
        let mut c = Command::new("python3");
        c.args(["-m", "moto.server"]);
        return Ok(c);
    }
    Err(anyhow!(
        "moto_server not found on PATH, nor the moto.server module. {HOW_TO_GET_IT}"
    ))
}

/// One S3-compatible server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server and waits until it answers HTTP.
    pub fn start() -> Result<S3Server> {
        let mut command = moto_command()?;
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log)?;
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let mut server = S3Server {
            child,
            port,
            log,
            _dir: dir,
        };
        let clock = magnetar_metadata::clock::system();
        let deadline = clock.now() + START_TIMEOUT;
        let mut waited = false;
        while clock.now() < deadline {
            if server.request("GET", "/").is_ok() {
                waited = true;
                break;
            }
            if server.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !waited {
            let tail = std::fs::read_to_string(&server.log).unwrap_or_default();
            let _ = server.child.kill();
            bail!(
                "moto_server did not answer on port {port} within {START_TIMEOUT:?}; its log:\n{tail}"
            );
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("moto_server exited at start ({status})");
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (object_store has no call for it).
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        let status = self.request("PUT", &format!("/{bucket}"))?;
        if status != 200 {
            bail!("creating bucket {bucket}: HTTP {status}");
        }
        Ok(())
    }

    /// Sends one bodiless request; returns the status code.
    fn request(&self, method: &str, path: &str) -> Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        let text = std::str::from_utf8(&head)?;
        text.get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP answer: {text:?}"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
