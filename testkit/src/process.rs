//! `magnetar` processes for the binary's tests: the built binary run with an empty environment
//! ([`command`], [`run`]), and long-running servers ([`Server`]) that are ready once they print
//! their serving line — waited for by reading that line, never by sleeping — and are killed
//! when dropped, so a failing test leaves no process behind.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Disk-usage fractions a served bookie (standalone's or `magnetar bookie`) ignores the host's
/// disk fill at: only its storage cap turns it read-only in tests.
const HOST_DISK_ENV: [&str; 2] = [
    "MAGNETAR_BOOKIE__DISK_USAGE_THRESHOLD",
    "MAGNETAR_BOOKIE__DISK_USAGE_LWM",
];

/// `bin` (the test's `env!("CARGO_BIN_EXE_magnetar")`) with an empty environment (no stray
/// `MAGNETAR_*` or `RUST_LOG` from the caller), run in `dir`.
pub fn command(bin: impl AsRef<Path>, dir: &Path) -> Command {
    let mut cmd = Command::new(bin.as_ref());
    cmd.env_clear().current_dir(dir);
    cmd
}

/// Runs `cmd` to completion: exit code, stdout, stderr.
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("magnetar runs");
    (
        status.code().expect("magnetar was killed by a signal"),
        String::from_utf8(stdout).expect("stdout is UTF-8"),
        String::from_utf8(stderr).expect("stderr is UTF-8"),
    )
}

/// A server process (`magnetar standalone`, `bookie`, `broker`), killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The first stdout line, which said it serves.
    pub ready_line: String,
}

/// Why a server did not become ready.
#[derive(Debug)]
pub struct NotReady {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// Its first line (empty if none) and its stderr.
    pub first_line: String,
    pub stderr: String,
}

impl Server {
    /// Starts `cmd` and waits until its first stdout line starts with `ready` (e.g.
    /// `"magnetar bookie: serving "`). Stdout is drained in the background afterwards so the
    /// process never blocks on a full pipe; stderr is the test's own.
    pub fn start(cmd: &mut Command, ready: &str) -> Server {
        Self::try_start(cmd, ready, false).unwrap_or_else(|e| {
            panic!(
                "not ready (exit {:?}): first line {:?}",
                e.code, e.first_line
            )
        })
    }

    /// As [`Server::start`], but stderr is captured and a server that exits before serving is
    /// an `Err` with its exit code and stderr (for tests of refusals).
    pub fn try_start_capturing(cmd: &mut Command, ready: &str) -> Result<Server, NotReady> {
        Self::try_start(cmd, ready, true)
    }

    fn try_start(cmd: &mut Command, ready: &str, capture: bool) -> Result<Server, NotReady> {
        // The host's disk fill must not decide tests (a CI disk above 95% makes every bookie
        // read-only, as it should in production); a test may still set its own values.
        for key in HOST_DISK_ENV {
            if !cmd.get_envs().any(|(k, _)| k == key) {
                cmd.env(key, "1.0");
            }
        }
        let stderr = if capture {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("magnetar starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        if !line.starts_with(ready) {
            let _ = child.kill();
            let code = child.wait().ok().and_then(|s| s.code());
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(NotReady {
                code,
                first_line: line,
                stderr: err,
            });
        }
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        if let Some(mut e) = child.stderr.take() {
            std::thread::spawn(move || std::io::copy(&mut e, &mut std::io::sink()));
        }
        Ok(Server {
            child,
            ready_line: line.trim_end().to_owned(),
        })
    }

    /// The first word after `prefix` in the ready line (the URL or address it serves on).
    pub fn address(&self, prefix: &str) -> String {
        self.ready_line
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address after {prefix:?} in {:?}", self.ready_line))
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`TERM`, `INT`, `KILL`…).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// The signal that ended it, waiting at most `within` (a normal exit fails the test).
    pub fn wait_killed(&mut self, within: Duration) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let mut status = None;
        crate::wait::until_blocking("the process ends", within, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        let status = status.expect("ended");
        status
            .signal()
            .unwrap_or_else(|| panic!("exited with {status} instead of being killed"))
    }

    /// Whether it has ended (without waiting).
    pub fn has_ended(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Its exit code, waiting at most `within` (killed by a signal fails the test).
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let mut code = None;
        crate::wait::until_blocking("the process exits", within, || {
            code = self.child.try_wait().expect("try_wait").map(|s| s.code());
            code.is_some()
        });
        code.flatten().expect("exited, not killed by a signal")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
