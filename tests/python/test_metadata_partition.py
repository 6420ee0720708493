"""A broker cut off from etcd (issue 13): its etcd traffic goes through a TCP proxy the test
controls. Once the proxy drops everything, the broker can no longer prove it owns its bundles:
when its session's ttl runs out it stops serving them — before the other broker (which reaches
etcd directly) takes them over, which its log shows — and the new owner's recovery fences the
old ledger, so nothing acknowledged is lost and nothing is written twice. When the proxy heals,
the cut-off broker opens a new session, registers again and serves again.
"""

import json
import re
import socket
import subprocess
import threading
import time
import urllib.request

import pulsar

from conftest import BIN, wait_for
from test_cluster import Cluster, free_port
from test_dedup import set_dedup


class Proxy:
    """A TCP proxy to `upstream` that the test can cut (every connection closed, new ones
    closed at once) and heal."""

    def __init__(self):
        self.port = free_port()
        self.upstream = None
        self.cut = threading.Event()
        self.lock = threading.Lock()
        self.sockets = []
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    def pump(self, src, dst):
        try:
            while not self.cut.is_set():
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def drop(self):
        self.cut.set()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets = []

    def heal(self):
        self.cut.clear()

    def close(self):
        self.drop()
        self.listener.close()


def log_time(path, pattern):
    """The timestamp (seconds, from the tracing line) of the first log line matching pattern."""
    text = open(path, errors="replace").read()
    for line in text.splitlines():
        if re.search(pattern, line):
            m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:(\d\d\.\d+))", line)
            if m:
                return line, m.group(1)
    return None, None


def admin_get(admin_url, path):
    with urllib.request.urlopen(admin_url + path, timeout=20) as r:
        return json.load(r)


def test_a_broker_cut_off_from_etcd_stops_serving_before_another_takes_over(tmp_path):
    proxy = Proxy()

    def through_proxy(env):
        endpoint = env["MAGNETAR_METADATA__ETCD_ENDPOINTS"].rsplit(":", 1)
        proxy.upstream = ("127.0.0.1", int(endpoint[1]))
        return {"MAGNETAR_METADATA__ETCD_ENDPOINTS": f"http://127.0.0.1:{proxy.port}"}

    cluster = Cluster(str(tmp_path))
    cluster.start(first_broker_env=through_proxy)
    try:
        # Deduplication on, as Pulsar users run for exactly-once: a send whose receipt the
        # cut-off broker sent after closing the producer (the client drops such a receipt) is
        # resent to the other broker and must not be stored twice.
        set_dedup(cluster.admin_url, "public/default", True)
        # The first broker takes the topic while it is alone (with two, the assignment would
        # pick the less loaded one).
        first = pulsar.Client(cluster.url, operation_timeout_seconds=60)
        topic = "persistent://public/default/partitioned-off"
        producer = first.create_producer(topic, batching_enabled=False,
                                         send_timeout_millis=60_000)
        lookup = admin_get(cluster.admin_url, "/lookup/v2/topic/" + topic.replace("://", "/"))
        assert lookup["brokerUrl"] == cluster.url
        acked = []
        for i in range(50):
            producer.send(f"m-{i:04d}".encode())
            acked.append(i)
        producer.close()
        first.close()
        _, second_url, second_admin = cluster.start_broker("broker-2.log")

        # A client of both brokers produces across the cut.
        both = cluster.url + "," + second_url.split("://", 1)[1]
        client = pulsar.Client(both, operation_timeout_seconds=60)
        producer = client.create_producer(topic, batching_enabled=False,
                                          send_timeout_millis=60_000)
        cut_at = time.time()
        proxy.drop()
        path = "/lookup/v2/topic/" + topic.replace("://", "/")
        i = 50
        deadline = time.monotonic() + 60
        # Produce (through the takeover) until the other broker serves the topic, then more.
        while admin_get(second_admin, path)["brokerUrl"] != second_url:
            assert time.monotonic() < deadline, "the other broker never took the topic over"
            producer.send(f"m-{i:04d}".encode())
            acked.append(i)
            i += 1
            time.sleep(0.01)
        for j in range(i, i + 50):
            producer.send(f"m-{j:04d}".encode())
            acked.append(j)

        # The cut-off broker stopped serving before the other took the bundle over.
        base = str(tmp_path)
        stop_line, stopped = log_time(f"{base}/broker.log", r"topics stopped serving")
        take_line, taken = log_time(f"{base}/broker-2.log", r"bundle owned")
        assert stopped and taken, (stop_line, take_line)
        assert stopped < taken, f"stopped {stopped} / taken over {taken}"
        print(f"cut-off broker stopped serving {stopped}, other took over {taken} "
              f"(cut at {time.strftime('%H:%M:%S', time.gmtime(cut_at))})")

        # Every acknowledged message is there once, in order: the old ledger was fenced.
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        got = []
        while reader.has_message_available():
            got.append(reader.read_next(20_000).data())
        assert got == [f"m-{i:04d}".encode() for i in acked]
        stats = admin_get(second_admin, "/admin/v2/persistent/public/default/partitioned-off"
                                        "/internalStats")
        assert len(stats["ledgers"]) >= 2, stats

        # Healed: the broker registers again under a new session and serves again.
        proxy.heal()

        def listed():
            out = subprocess.run([BIN, "admin", "--url", second_admin, "brokers", "list",
                                  "standalone"], capture_output=True, text=True, timeout=30)
            return cluster.admin_url.split("://", 1)[1] in out.stdout

        assert wait_for(listed, timeout=60, interval=0.5), "the healed broker never came back"
        again = pulsar.Client(cluster.url, operation_timeout_seconds=60)
        p = again.create_producer("persistent://public/default/after-heal")
        p.send(b"served again")
        again.close()
        client.close()
    finally:
        cluster.stop()
        proxy.close()
