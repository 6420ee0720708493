"""`magnetar broker` in a cluster: a real etcd, three `magnetar bookie` processes, and the broker
writing ledgers E2/Qw2/Qa2 over gRPC. The official client produces and consumes through it, also
after one bookie is killed with SIGKILL (the ledger client replaces it in the ensemble)."""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid

import json
import urllib.error
import urllib.request

import pulsar
import pytest

from conftest import BIN, make_client, receive_all

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def first_line(proc, timeout=30.0):
    out = {}

    def read():
        out["line"] = proc.stdout.readline().decode()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    return out.get("line", "")


class Cluster:
    def __init__(self, base, broker_env=None, bookies=3, bookie_env=None, session_ttl_ms=3000):
        self.base = base
        self.session_ttl_ms = session_ttl_ms
        self.broker_env = broker_env or {}
        self.bookie_count = bookies
        self.bookie_env = bookie_env or {}
        self.bookie_ids = []
        self.procs = []
        self.bookies = []

    def spawn(self, args, env=None, log="log"):
        log_file = open(os.path.join(self.base, log), "ab")
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log_file,
                             env={**os.environ, **(env or {})})
        log_file.close()
        self.procs.append(p)
        return p

    def start(self, first_broker_env=None):
        """Starts etcd, the bookies and the first broker; `first_broker_env(env)`, if given,
        returns extra settings for that broker (e.g. an etcd endpoint behind a proxy)."""
        client_port, peer_port = free_port(), free_port()
        self.spawn([
            ETCD, "--name", "m0", "--data-dir", os.path.join(self.base, "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"m0=http://127.0.0.1:{peer_port}",
        ], log="etcd.log")
        wait_port(client_port)
        self.env = {
            "MAGNETAR_METADATA__BACKEND": "etcd",
            "MAGNETAR_METADATA__ETCD_ENDPOINTS": f"http://127.0.0.1:{client_port}",
            "MAGNETAR_METADATA__ETCD_ROOT": f"/test-{uuid.uuid4().hex[:8]}",
            "MAGNETAR_METADATA__SESSION_TTL_MS": str(self.session_ttl_ms),
            # The host's disk fill must not decide the tests (see conftest.py).
            "MAGNETAR_BOOKIE__DISK_USAGE_THRESHOLD": "1.0",
            "MAGNETAR_BOOKIE__DISK_USAGE_LWM": "1.0",
            "RUST_LOG": "info",
        }
        for i in range(self.bookie_count):
            p = self.spawn([BIN, "bookie", "--bind-address", "127.0.0.1", "--port", "0",
                            "--data-dir", os.path.join(self.base, f"bookie-{i}")],
                           env={**self.env, **self.bookie_env}, log=f"bookie-{i}.log")
            line = first_line(p)
            assert line.startswith("magnetar bookie: serving "), f"bookie {i}: {line!r}"
            self.bookies.append(p)
            self.bookie_ids.append(line.split()[3])
        extra = first_broker_env(self.env) if first_broker_env else None
        self.broker, self.url, self.admin_url = self.start_broker("broker.log", env=extra)
        return self

    def start_broker(self, log, env=None):
        """Starts one more `magnetar broker` (with the cluster's broker settings, then `env`);
        returns (process, pulsar URL, admin URL)."""
        broker = self.spawn([BIN, "broker"], env={
            **self.env,
            "MAGNETAR_BROKER__PORT": "0",
            "MAGNETAR_BROKER__ADMIN_PORT": "0",
            "MAGNETAR_BROKER__ENSEMBLE_SIZE": "2",
            "MAGNETAR_BROKER__WRITE_QUORUM": "2",
            "MAGNETAR_BROKER__ACK_QUORUM": "2",
            **self.broker_env,
            **(env or {}),
        }, log=log)
        line = first_line(broker)
        assert line.startswith("magnetar broker: serving "), f"broker: {line!r}"
        admin = first_line(broker)
        assert admin.startswith("magnetar broker: admin "), f"broker admin: {admin!r}"
        return broker, line.split()[-1], admin.split()[-1]

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def cluster(tmp_path):
    if ETCD is None:
        pytest.fail("etcd is missing: install it with `apt-get install -y etcd-server` "
                    "(scripts/test.sh does), or put an etcd binary on PATH")
    c = Cluster(str(tmp_path))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_broker_with_three_bookie_processes_survives_a_bookie_kill(cluster):
    client = make_client(cluster.url)
    topic = f"persistent://public/default/cluster-{uuid.uuid4().hex[:8]}"
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic, batching_enabled=True,
                                      batching_max_publish_delay_ms=5,
                                      send_timeout_millis=10000)
    for i in range(200):
        producer.send_async(f"a{i}".encode(), None)
    producer.flush()
    got = receive_all(consumer, 200)
    assert [m.data() for m in got] == [f"a{i}".encode() for i in range(200)]
    for m in got:
        consumer.acknowledge(m)

    # Kill one bookie: if it is in the ledger's ensemble, the third one replaces it.
    cluster.bookies[0].kill()
    cluster.bookies[0].wait()
    for i in range(100):
        producer.send(f"b{i}".encode())
    got = receive_all(consumer, 100, timeout_ms=15000)
    assert [m.data() for m in got] == [f"b{i}".encode() for i in range(100)]
    client.close()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def test_admin_of_a_topic_owned_elsewhere_redirects_to_the_owner(cluster):
    """A second broker answers admin requests for a topic the first one owns with a 307 to the
    same path on the owner's admin API; following it gives the owner's answer."""
    client = make_client(cluster.url)
    topic = f"persistent://public/default/owned-{uuid.uuid4().hex[:8]}"
    producer = client.create_producer(topic)
    producer.send(b"x")

    _, other_url, other_admin = cluster.start_broker("broker-2.log")
    path = "/admin/v2/" + topic.replace("://", "/") + "/stats"
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(other_admin + path + "?getPreciseBacklog=true", timeout=10)
    assert answer.value.code == 307
    assert answer.value.headers["Location"] == cluster.admin_url + path + "?getPreciseBacklog=true"

    # urllib follows a GET's 307: the stats come from the owner, which has the producer.
    with urllib.request.urlopen(other_admin + path, timeout=10) as r:
        stats = json.load(r)
    assert len(stats["publishers"]) == 1

    # LOOKUP Redirect: a client of the second broker is sent to the owner and consumes there.
    other = make_client(other_url)
    consumer = other.subscribe(topic, "via-redirect",
                               initial_position=pulsar.InitialPosition.Earliest)
    assert consumer.receive(timeout_millis=10000).data() == b"x"
    other.close()
    client.close()


def test_broker_paused_past_its_session_ttl_serves_again(cluster):
    """A broker stopped (SIGSTOP) for longer than its metadata session ttl (3 s here) loses its
    session, its bundle leases and its registration; after SIGCONT it opens a new session,
    closes the topics it no longer owns (clients reconnect) and takes them again: nothing
    acknowledged is lost, and its registration is back (another broker redirects to it)."""
    client = make_client(cluster.url)
    topic = f"persistent://public/default/paused-{uuid.uuid4().hex[:8]}"
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic, send_timeout_millis=30000)
    for i in range(10):
        producer.send(f"a{i}".encode())

    cluster.broker.send_signal(signal.SIGSTOP)
    time.sleep(6)
    cluster.broker.send_signal(signal.SIGCONT)

    for i in range(10):
        producer.send(f"b{i}".encode())
    # Unacknowledged messages may come again when the consumer reconnects (at-least-once);
    # each must arrive, in order of first arrival.
    want = [f"a{i}".encode() for i in range(10)] + [f"b{i}".encode() for i in range(10)]
    seen = []
    while len(seen) < len(want):
        m = consumer.receive(timeout_millis=30000)
        if m.data() not in seen:
            seen.append(m.data())
        consumer.acknowledge(m)
    assert seen == want

    _, _, other_admin = cluster.start_broker("broker-2.log")
    path = "/admin/v2/" + topic.replace("://", "/") + "/stats"
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(other_admin + path, timeout=10)
    assert answer.value.code == 307
    assert answer.value.headers["Location"] == cluster.admin_url + path
    client.close()
