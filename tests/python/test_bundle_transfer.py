"""Elastic brokers (issue 13), with the official client against real `magnetar broker`
processes on etcd and three bookies, producers running throughout with deduplication on:

- `namespaces unload` (all bundles, then one bundle with `--destinationBroker`) and a SIGTERM
  of a broker move every topic to another broker: the source hands the bundle over and tells
  clients where to go (PIP-307), so the longest gap between two acknowledgements of any
  producer stays far below a lease expiry; nothing acknowledged is lost or stored twice;
- a broker that joins gets bundles from the leader's shedding within a few cycles, and the
  placement then stays put (no thrashing).

Each test prints its longest gaps (`longest ack gap`), `convergence` the shedding time.
"""

import json
import signal
import subprocess
import threading
import time
import urllib.request

import pulsar

from conftest import BIN, wait_for
from test_cluster import Cluster


def http(admin_url, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(admin_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read()
    return json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw.decode()


def owner(admin_url, topic):
    return http(admin_url, "GET", "/lookup/v2/topic/" + topic.replace("://", "/"))["brokerUrl"]


def cli(admin_url, *args):
    out = subprocess.run([BIN, "admin", "--url", admin_url, *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out
    return out.stdout.strip()


class Traffic:
    """One thread per topic sending synchronously; records each acknowledgement's time."""

    def __init__(self, client, topics, interval_s=0.005):
        self.topics = topics
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.acked = {t: [] for t in topics}
        self.times = {t: [] for t in topics}
        self.errors = []
        self.producers = {t: client.create_producer(t, producer_name=f"p-{t.rsplit('/', 1)[1]}",
                                                   batching_enabled=False,
                                                   send_timeout_millis=60_000)
                          for t in topics}
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True) for t in topics]

    def run(self, topic):
        producer = self.producers[topic]
        i = 0
        try:
            while not self.stop.is_set():
                producer.send(f"{topic}-{i:06d}".encode())
                self.acked[topic].append(i)
                self.times[topic].append(time.monotonic())
                i += 1
                time.sleep(self.interval_s)
        except Exception as e:  # reported by check()
            self.errors.append(f"{topic}: {e!r}")

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def acks(self):
        return sum(len(a) for a in self.acked.values())

    def longest_gap(self, since, until=None):
        """The longest time between two acknowledgements of one producer in [since, until]."""
        gap = 0.0
        for times in self.times.values():
            window = [t for t in times if t >= since and (until is None or t <= until)]
            gap = max([gap] + [b - a for a, b in zip(window, window[1:])])
        return gap

    def finish(self, client):
        self.stop.set()
        for t in self.threads:
            t.join(120)
        assert not self.errors, self.errors
        for p in self.producers.values():
            p.close()
        # Every acknowledged message is stored once, in order (dedup on: no duplicates).
        for topic in self.topics:
            reader = client.create_reader(topic, pulsar.MessageId.earliest)
            got = []
            while reader.has_message_available():
                got.append(reader.read_next(20_000).data())
            reader.close()
            want = [f"{topic}-{i:06d}".encode() for i in self.acked[topic]]
            assert got == want, f"{topic}: {len(got)} stored, {len(want)} acknowledged"


def test_unload_and_sigterm_move_topics_with_a_short_pause(tmp_path):
    cluster = Cluster(str(tmp_path))
    cluster.start()
    try:
        second, second_url, second_admin = cluster.start_broker("broker-2.log")
        http(cluster.admin_url, "POST", "/admin/v2/namespaces/public/default/deduplication", True)
        both = cluster.url + "," + second_url.split("://", 1)[1]
        client = pulsar.Client(both, operation_timeout_seconds=60)
        topics = [f"persistent://public/default/move-{i}" for i in range(6)]
        traffic = Traffic(client, topics).start()
        assert wait_for(lambda: all(len(a) >= 20 for a in traffic.acked.values()), timeout=60)

        # 1. Unload every bundle of the namespace: each goes to the other broker.
        before = {t: owner(cluster.admin_url, t) for t in topics}
        started = time.monotonic()
        cli(cluster.admin_url, "namespaces", "unload", "public/default")
        after = {t: owner(cluster.admin_url, t) for t in topics}
        for t in topics:
            assert after[t] != before[t], f"{t} stayed on {before[t]}"
        settled = time.monotonic()
        assert wait_for(lambda: all(traffic.times[t][-1] > settled for t in topics), timeout=30)
        unload_gap = traffic.longest_gap(started)

        # 2. One bundle to a named destination (the broker id `brokers list` shows).
        topic = topics[0]
        here = owner(cluster.admin_url, topic)
        there_admin = cluster.admin_url if here == second_url else second_admin
        there_url = cluster.url if here == second_url else second_url
        there_id = there_admin.split("://", 1)[1]
        bundle = cli(cluster.admin_url, "topics", "bundle-range", topic)
        started = time.monotonic()
        cli(cluster.admin_url, "namespaces", "unload", "public/default", "--bundle", bundle,
            "--destinationBroker", there_id)
        assert owner(cluster.admin_url, topic) == there_url
        moved_at = time.monotonic()
        assert wait_for(lambda: traffic.times[topic][-1] > moved_at, timeout=30)
        bundle_gap = traffic.longest_gap(started)

        # 3. SIGTERM of the first broker: it drains its bundles to the second, then exits.
        started = time.monotonic()
        cluster.broker.send_signal(signal.SIGTERM)
        assert cluster.broker.wait(timeout=60) == 0
        for t in topics:
            assert owner(second_admin, t) == second_url
        stopped_at = time.monotonic()
        assert wait_for(lambda: all(traffic.times[t][-1] > stopped_at for t in topics),
                        timeout=30)
        drain_gap = traffic.longest_gap(started)
        print(f"longest ack gap: namespace unload {unload_gap * 1000:.0f} ms, "
              f"bundle unload {bundle_gap * 1000:.0f} ms, SIGTERM drain {drain_gap * 1000:.0f} ms")
        # Far below a lease expiry plus the client's lookup backoff: the clients were sent to
        # the new owner directly.
        for name, gap in (("unload", unload_gap), ("bundle", bundle_gap), ("drain", drain_gap)):
            assert gap < 2.0, f"{name}: producers stalled {gap:.2f} s"
        traffic.finish(client)
        client.close()
    finally:
        cluster.stop()


def test_a_bad_unload_request_gets_a_4xx_with_a_reason(tmp_path):
    cluster = Cluster(str(tmp_path))
    cluster.start()
    try:
        base = cluster.admin_url + "/admin/v2/namespaces/public/default"
        cases = [
            (base + "/0x00000000_0x0000000g/unload", 412),
            (base + "/0x40000000_0x00000000/unload", 412),
            (base + "/0x00000000_0x20000000/unload", 404),
            (base + "/0x00000000_0x40000000/unload?destinationBroker=nowhere:1", 400),
            (cluster.admin_url + "/admin/v2/namespaces/public/nope/unload", 404),
        ]
        for url, status in cases:
            req = urllib.request.Request(url, method="PUT")
            try:
                urllib.request.urlopen(req, timeout=30)
                raise AssertionError(f"{url}: accepted")
            except urllib.error.HTTPError as e:
                body = json.loads(e.read())
                assert e.code == status, (url, e.code, body)
                assert body.get("reason"), body
        # The broker still serves.
        client = pulsar.Client(cluster.url, operation_timeout_seconds=30)
        client.create_producer("persistent://public/default/still").send(b"x")
        client.close()
    finally:
        cluster.stop()


def test_a_joining_broker_gets_load_from_shedding(tmp_path):
    fast = {
        "MAGNETAR_BROKER__LOAD_BALANCER_REPORT_UPDATE_MIN_INTERVAL_MS": "300",
        "MAGNETAR_BROKER__LOAD_BALANCER_SHEDDING_INTERVAL_SECONDS": "1",
        "MAGNETAR_BROKER__LOAD_BALANCER_SHEDDING_CONDITION_HIT_COUNT_THRESHOLD": "2",
        "MAGNETAR_BROKER__LOAD_BALANCER_SHEDDING_MIN_MESSAGE_RATE": "20",
        "MAGNETAR_BROKER__LOAD_BALANCER_SHEDDING_GRACE_PERIOD_SECONDS": "600",
    }
    cluster = Cluster(str(tmp_path), broker_env=fast)
    cluster.start()
    try:
        http(cluster.admin_url, "POST", "/admin/v2/namespaces/public/default/deduplication", True)
        client = pulsar.Client(cluster.url, operation_timeout_seconds=60)
        topics = [f"persistent://public/default/shed-{i}" for i in range(50)]
        traffic = Traffic(client, topics, interval_s=0.05).start()

        def report(admin):
            return http(admin, "GET", "/admin/v2/broker-stats/load-report")

        assert wait_for(lambda: len(report(cluster.admin_url)["bundles"]) == 4, timeout=60)
        joined = time.monotonic()
        admins = [cluster.admin_url]
        for i in (2, 3):
            _, _, admin = cluster.start_broker(f"broker-{i}.log")
            admins.append(admin)
        def spread():
            # Reports are sampled: a bundle that just moved can show on both brokers or on
            # neither for one interval. Only a snapshot naming every bundle exactly once counts.
            placement = {a: sorted(report(a)["bundles"]) for a in admins}
            named = [b for bundles in placement.values() for b in bundles]
            consistent = len(named) == 4 and len(set(named)) == 4
            return placement if consistent and all(placement.values()) else None

        seen = []
        converged = wait_for(lambda: seen.append(spread()) or seen[-1] is not None, timeout=90,
                             interval=0.2)
        spent = time.monotonic() - joined
        placement = seen[-1]
        assert converged, f"load did not spread: {[report(a)['bundles'] for a in admins]}"
        print(f"convergence {spent:.1f} s after two brokers joined: {placement}")

        # It stays put: a placement that changed again within a few cycles would be thrashing.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert {a: sorted(report(a)["bundles"]) for a in admins} == placement
            time.sleep(0.5)
        traffic.finish(client)
        client.close()
    finally:
        cluster.stop()


def test_bundles_are_split_by_admin_and_by_the_leader_past_a_threshold(tmp_path):
    """`namespaces split-bundle` halves a bundle (its topics keep their producers); with
    `load_balancer_namespace_bundle_max_topics` = 4, the leader splits a one-bundle namespace
    holding 12 busy topics until no bundle has more than 4 (or the namespace maximum)."""
    cluster = Cluster(str(tmp_path), broker_env={
        "MAGNETAR_BROKER__LOAD_BALANCER_REPORT_UPDATE_MIN_INTERVAL_MS": "300",
        "MAGNETAR_BROKER__LOAD_BALANCER_SHEDDING_INTERVAL_SECONDS": "1",
        "MAGNETAR_BROKER__LOAD_BALANCER_NAMESPACE_BUNDLE_MAX_TOPICS": "4",
        "MAGNETAR_BROKER__LOAD_BALANCER_NAMESPACE_MAXIMUM_BUNDLES": "16",
    })
    cluster.start()
    try:
        admin = cluster.admin_url
        cli(admin, "namespaces", "create", "public/split", "--bundles", "1")
        http(admin, "POST", "/admin/v2/namespaces/public/split/deduplication", True)
        # By admin: the one bundle in two.
        cli(admin, "namespaces", "split-bundle", "public/split", "--bundle",
            "0x00000000_0xffffffff")
        bundles = http(admin, "GET", "/admin/v2/namespaces/public/split/bundles")
        assert bundles == {"boundaries": ["0x00000000", "0x7fffffff", "0xffffffff"],
                           "numBundles": 2}, bundles

        client = pulsar.Client(cluster.url, operation_timeout_seconds=60)
        topics = [f"persistent://public/split/t-{i}" for i in range(12)]
        traffic = Traffic(client, topics, interval_s=0.05).start()

        def spread():
            n = http(admin, "GET", "/admin/v2/namespaces/public/split/bundles")["numBundles"]
            stats = http(admin, "GET", "/admin/v2/broker-stats/load-report")["lastStats"]
            busiest = max((s["topics"] for b, s in stats.items() if "public/split/" in b),
                          default=99)
            return n == 16 or (n > 2 and busiest <= 4)

        assert wait_for(spread, timeout=90, interval=0.5), \
            http(admin, "GET", "/admin/v2/broker-stats/load-report")["lastStats"]
        print("automatic split:", http(admin, "GET", "/admin/v2/namespaces/public/split/bundles"))
        started = time.monotonic()
        assert wait_for(lambda: all(traffic.times[t][-1] > started for t in topics), timeout=30)
        traffic.finish(client)
        client.close()
    finally:
        cluster.stop()
