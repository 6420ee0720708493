"""Fixtures of the official-client suite: a real `magnetar standalone` process.

The binary is `$MAGNETAR_BIN` (default `target/debug/magnetar`, relative to the repository
root). Each `Standalone` runs in its own data directory with `--broker-port 0 --admin-port 0` and
is ready once it prints `magnetar standalone: serving pulsar://HOST:PORT` and then
`magnetar standalone: admin http://HOST:PORT` on stdout.
"""

import os
import signal
import subprocess
import threading
import time
import uuid

import pulsar
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("MAGNETAR_BIN", os.path.join(ROOT, "target", "debug", "magnetar"))
SERVING = "magnetar standalone: serving "
ADMIN = "magnetar standalone: admin "
START_TIMEOUT_S = 30


class Standalone:
    """One `magnetar standalone` process over `data_dir` (kept across restarts)."""

    def __init__(self, data_dir, log_path):
        self.data_dir = str(data_dir)
        self.log_path = str(log_path)
        self.proc = None
        self.url = None
        self.admin_url = None

    def start(self):
        if not os.path.exists(BIN):
            raise RuntimeError(
                f"{BIN} does not exist: build it with `cargo build --bin magnetar` "
                "or point MAGNETAR_BIN at it"
            )
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        # The host's disk fill must not decide the tests (a CI disk above 95% makes every
        # bookie read-only, as it should in production).
        env.setdefault("MAGNETAR_BOOKIE__DISK_USAGE_THRESHOLD", "1.0")
        env.setdefault("MAGNETAR_BOOKIE__DISK_USAGE_LWM", "1.0")
        self.proc = subprocess.Popen(
            [BIN, "standalone", "--data-dir", self.data_dir, "--broker-port", "0",
             "--admin-port", "0"],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
        log.close()
        line = self._read_line(START_TIMEOUT_S)
        if not line.startswith(SERVING):
            self.proc.kill()
            raise RuntimeError(f"standalone did not start: {line!r}; see {self.log_path}")
        self.url = line[len(SERVING):].strip()
        line = self._read_line(START_TIMEOUT_S)
        if not line.startswith(ADMIN):
            self.proc.kill()
            raise RuntimeError(f"standalone admin did not start: {line!r}; see {self.log_path}")
        self.admin_url = line[len(ADMIN):].strip()
        return self

    def _read_line(self, timeout):
        out = {}

        def read():
            out["line"] = self.proc.stdout.readline().decode()

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        return out.get("line", "")

    @property
    def address(self):
        host, port = self.url[len("pulsar://"):].rsplit(":", 1)
        return host, int(port)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill9(self):
        return self.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def standalone(tmp_path_factory):
    base = tmp_path_factory.mktemp("standalone")
    s = Standalone(base / "data", base / "standalone.log").start()
    yield s
    s.stop()


@pytest.fixture
def fresh_standalone(tmp_path):
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    yield s
    s.stop()


def make_client(url):
    return pulsar.Client(
        url,
        operation_timeout_seconds=10,
        logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn),
    )


@pytest.fixture
def client(standalone):
    c = make_client(standalone.url)
    yield c
    c.close()


@pytest.fixture
def topic():
    return f"persistent://public/default/t-{uuid.uuid4().hex[:12]}"


def receive_all(consumer, n, timeout_ms=5000):
    out = []
    for _ in range(n):
        if isinstance(consumer, pulsar.Reader):
            out.append(consumer.read_next(timeout_ms))
        else:
            out.append(consumer.receive(timeout_millis=timeout_ms))
    return out


def receive_none(consumer, timeout_ms=500):
    try:
        m = consumer.receive(timeout_millis=timeout_ms)
    except pulsar.Timeout:
        return None
    return m


def wait_for(cond, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()
