"""The chaos harness: a real cluster — etcd, three `magnetar bookie` and two `magnetar broker`
processes, on fixed ports so each can be killed and started again — under producers of the
official client, with faults injected while they send, and a checker of what was acknowledged.

Faults: kill -9 of a bookie, of a topic's owning broker, of etcd; SIGSTOP of the owning broker
for longer than its session ttl, then SIGCONT (it wakes up believing it still owns its
bundles); a network cut between a broker and etcd, and between the brokers and one bookie
(TCP proxies the harness controls: each broker reaches etcd through its own, and bookie 0
advertises the address of one in front of it); kill -9 of the whole cluster and a restart.

The checker: deduplication is on and every producer has a name, so after the run each topic,
read from the start, must hold every acknowledged message, none twice, and each producer's
messages in the order they were sent.

`tests/python/test_chaos.py` runs each fault once (CI). The soak is this file run directly:

    python3 tests/python/chaos.py --duration-s 1800 --interval-s 5 --seed 1

(random faults every few seconds for half an hour; its last result is in docs/RELIABILITY.md).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pulsar  # noqa: E402

from conftest import BIN, wait_for  # noqa: E402
from test_cluster import ETCD, first_line, free_port, wait_port  # noqa: E402
from test_dedup import set_dedup  # noqa: E402
from test_metadata_partition import Proxy  # noqa: E402

SESSION_TTL_MS = 3000


class Node:
    """One restartable process: the same command, environment, ports and data every time."""

    def __init__(self, name, args, env, log, ready=None, port=None):
        self.name, self.args, self.env, self.log = name, args, env, log
        self.ready, self.port = ready, port
        self.proc = None
        self.lines = []

    def start(self):
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log,
                                     env={**os.environ, **self.env})
        log.close()
        if self.ready:
            self.lines = []
            for prefix in self.ready:
                line = first_line(self.proc, timeout=60)
                assert line.startswith(prefix), f"{self.name} did not start: {line!r}; see {self.log}"
                self.lines.append(line)
        if self.port:
            wait_port(self.port, timeout=30)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ChaosCluster:
    def __init__(self, base, brokers=2, bookies=3):
        if ETCD is None:
            raise RuntimeError("etcd is missing: install it with `apt-get install -y etcd-server` "
                               "(scripts/test.sh does), or put an etcd binary on PATH")
        self.base = base
        client_port, peer_port = free_port(), free_port()
        self.etcd = Node("etcd", [
            ETCD, "--name", "m0", "--data-dir", os.path.join(base, "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"m0=http://127.0.0.1:{peer_port}",
        ], {}, os.path.join(base, "etcd.log"), port=client_port)
        common = {
            "MAGNETAR_METADATA__BACKEND": "etcd",
            "MAGNETAR_METADATA__ETCD_ROOT": f"/chaos-{uuid.uuid4().hex[:8]}",
            "MAGNETAR_METADATA__SESSION_TTL_MS": str(SESSION_TTL_MS),
            "MAGNETAR_BOOKIE__DISK_USAGE_THRESHOLD": "1.0",
            "MAGNETAR_BOOKIE__DISK_USAGE_LWM": "1.0",
            "RUST_LOG": "info",
        }
        etcd_url = f"http://127.0.0.1:{client_port}"
        # The brokers' cut from one bookie: bookie 0 advertises a proxy in front of it.
        self.bookie_proxy = Proxy()
        self.bookies = []
        for i in range(bookies):
            port = free_port()
            env = {**common, "MAGNETAR_METADATA__ETCD_ENDPOINTS": etcd_url}
            if i == 0:
                self.bookie_proxy.upstream = ("127.0.0.1", port)
                env["MAGNETAR_BOOKIE__ADVERTISED_ADDRESS"] = f"127.0.0.1:{self.bookie_proxy.port}"
            self.bookies.append(Node(f"bookie-{i}", [
                BIN, "bookie", "--bind-address", "127.0.0.1", "--port", str(port),
                "--data-dir", os.path.join(base, f"bookie-{i}"),
            ], env, os.path.join(base, f"bookie-{i}.log"), ready=["magnetar bookie: serving "]))
        self.etcd_proxies = []
        self.brokers = []
        self.urls = []
        self.admin_urls = []
        for i in range(brokers):
            proxy = Proxy()
            proxy.upstream = ("127.0.0.1", client_port)
            self.etcd_proxies.append(proxy)
            port, admin_port = free_port(), free_port()
            self.urls.append(f"pulsar://127.0.0.1:{port}")
            self.admin_urls.append(f"http://127.0.0.1:{admin_port}")
            self.brokers.append(Node(f"broker-{i}", [BIN, "broker"], {
                **common,
                "MAGNETAR_METADATA__ETCD_ENDPOINTS": f"http://127.0.0.1:{proxy.port}",
                "MAGNETAR_BROKER__PORT": str(port),
                "MAGNETAR_BROKER__ADMIN_PORT": str(admin_port),
                # E2 over three bookies: a lost bookie always has a replacement.
                "MAGNETAR_BROKER__ENSEMBLE_SIZE": "2",
                "MAGNETAR_BROKER__WRITE_QUORUM": "2",
                "MAGNETAR_BROKER__ACK_QUORUM": "2",
            }, os.path.join(base, f"broker-{i}.log"),
                ready=["magnetar broker: serving ", "magnetar broker: admin "]))
        self.service_url = self.urls[0] + "," + ",".join(u.split("://", 1)[1] for u in self.urls[1:])

    def start(self):
        self.etcd.start()
        for node in self.bookies + self.brokers:
            node.start()
        return self

    def stop(self):
        for node in reversed([self.etcd] + self.bookies + self.brokers):
            node.stop()
        for proxy in self.etcd_proxies + [self.bookie_proxy]:
            proxy.close()

    def dump_stacks(self):
        """Every live broker's and bookie's threads (gdb), next to its log: what a stalled
        process was doing when a check failed."""
        for node in self.brokers + self.bookies:
            if not node.alive():
                continue
            out = node.log.replace(".log", ".stacks")
            try:
                with open(out, "w") as f:
                    subprocess.run(["gdb", "-p", str(node.proc.pid), "-batch", "-ex",
                                    "thread apply all bt 30"], stdout=f, stderr=subprocess.STDOUT,
                                   timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def admin(self, path):
        """GET on any broker that answers."""
        for url in self.admin_urls:
            try:
                with urllib.request.urlopen(url + path, timeout=10) as r:
                    return json.load(r)
            except OSError:
                continue
        raise RuntimeError(f"no broker answered {path}")

    def owner(self, topic):
        """The broker node serving `topic` now."""
        url = self.admin("/lookup/v2/topic/" + topic.replace("://", "/"))["brokerUrl"]
        return self.brokers[self.urls.index(url)]


class Workload:
    """Named producers with deduplication, one per topic, sending numbered messages as fast as
    their pending queues allow; records what was acknowledged."""

    def __init__(self, cluster, topics=3):
        self.cluster = cluster
        self.topics = [f"persistent://public/default/chaos-{i}" for i in range(topics)]
        self.client = pulsar.Client(cluster.service_url, operation_timeout_seconds=60,
                                    logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        self.lock = threading.Lock()
        self.acked = {t: set() for t in self.topics}
        self.errors = []
        self.sent = {t: 0 for t in self.topics}
        self.running = True
        self.threads = []

    def start(self):
        for topic in self.topics:
            # A durable subscription at the start keeps every message: without one, Pulsar's
            # retention (0 by default) trims ledgers nobody needs, even under a reader.
            self.client.subscribe(topic, "chaos-keep",
                                  initial_position=pulsar.InitialPosition.Earliest).close()
        for i, topic in enumerate(self.topics):
            # send timeout 0: never given up; with dedup the client resends until stored.
            producer = self.client.create_producer(
                topic, producer_name=f"chaos-{i}", batching_enabled=i % 2 == 1,
                batching_max_publish_delay_ms=2, send_timeout_millis=0,
                max_pending_messages=200, block_if_queue_full=True)
            t = threading.Thread(target=self.produce, args=(topic, producer), daemon=True)
            t.start()
            self.threads.append((t, producer))
        return self

    def produce(self, topic, producer):
        seq = 0
        while self.running:
            def done(res, _msg_id, seq=seq):
                with self.lock:
                    if res == pulsar.Result.Ok:
                        self.acked[topic].add(seq)
                    else:
                        self.errors.append((topic, seq, str(res)))
            producer.send_async(f"{seq:010d}".encode(), done, sequence_id=seq)
            seq += 1
            with self.lock:
                self.sent[topic] = seq

    def acked_total(self):
        with self.lock:
            return sum(len(a) for a in self.acked.values())

    def progress(self, what, messages=50, timeout=90):
        """Waits until every topic has `messages` more acknowledged."""
        with self.lock:
            before = {t: len(a) for t, a in self.acked.items()}

        def moved():
            with self.lock:
                return all(len(self.acked[t]) >= before[t] + messages for t in self.topics)
        assert wait_for(moved, timeout=timeout, interval=0.1), (
            f"no progress after {what}: acked {before} -> "
            f"{ {t: len(a) for t, a in self.acked.items()} }; logs in {self.cluster.base}")

    def finish(self, timeout=120):
        """Stops sending and waits until everything sent is acknowledged."""
        self.running = False
        for t, producer in self.threads:
            t.join(30)
        for _, producer in self.threads:
            producer.flush()

        def all_acked():
            with self.lock:
                return all(len(self.acked[t]) == self.sent[t] for t in self.topics)
        assert wait_for(all_acked, timeout=timeout, interval=0.2), (
            f"sent {self.sent}, acked { {t: len(a) for t, a in self.acked.items()} }, "
            f"errors {self.errors[:5]}")
        assert not self.errors, self.errors[:10]

    def check(self):
        """Every acknowledged message is stored once, in send order."""
        for topic in self.topics:
            reader = self.client.create_reader(topic, pulsar.MessageId.earliest)
            seqs = []
            last_acked = max(self.acked[topic], default=-1)
            # Up to the last acknowledged message every read must come (a long wait is a stall,
            # reported as such); after it, whatever else is there (duplicates, unacknowledged
            # sends that were stored) until a short silence.
            while not seqs or seqs[-1] < last_acked:
                try:
                    seqs.append(int(reader.read_next(60_000).data()))
                except pulsar.Timeout:
                    raise AssertionError(
                        f"{topic}: reading stalled for 60 s after {len(seqs)} messages "
                        f"(last seq {seqs[-1] if seqs else None}, last acknowledged {last_acked})")
            while True:
                try:
                    seqs.append(int(reader.read_next(3000).data()))
                except pulsar.Timeout:
                    break
            reader.close()
            duplicates = len(seqs) - len(set(seqs))
            assert duplicates == 0, f"{topic}: {duplicates} messages stored twice"
            assert seqs == sorted(seqs), f"{topic}: messages out of send order"
            missing = self.acked[topic] - set(seqs)
            assert not missing, f"{topic}: {len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:10]}"
        return {t: len(a) for t, a in self.acked.items()}

    def close(self):
        self.running = False
        self.client.close()


# The faults. Each takes the cluster, the workload and a random source, returns what it did,
# and leaves every process running and every link healed.

def kill_bookie(c, w, rnd):
    node = rnd.choice(c.bookies)
    node.kill9()
    w.progress(f"kill -9 of {node.name}")
    node.start()
    return f"kill -9 {node.name}"


def kill_owner(c, w, rnd):
    node = c.owner(rnd.choice(w.topics))
    node.kill9()
    w.progress(f"kill -9 of {node.name}")
    node.start()
    return f"kill -9 {node.name} (owner)"


def kill_etcd(c, w, rnd):
    c.etcd.kill9()
    time.sleep(rnd.uniform(0.5, 2 * SESSION_TTL_MS / 1000))  # etcd stays down this long
    c.etcd.start()
    w.progress("kill -9 of etcd")
    return "kill -9 etcd"


def pause_owner(c, w, rnd):
    node = c.owner(rnd.choice(w.topics))
    node.signal(signal.SIGSTOP)
    time.sleep(SESSION_TTL_MS / 1000 + 2)  # frozen past its session ttl
    node.signal(signal.SIGCONT)
    w.progress(f"SIGSTOP/SIGCONT of {node.name}")
    return f"SIGSTOP {node.name} (owner) past its ttl"


def cut_broker_from_etcd(c, w, rnd):
    i = rnd.randrange(len(c.brokers))
    c.etcd_proxies[i].drop()
    time.sleep(SESSION_TTL_MS / 1000 + 2)  # cut past its session ttl
    c.etcd_proxies[i].heal()
    w.progress(f"cut of broker-{i} from etcd")
    return f"cut broker-{i} from etcd"


def cut_bookie_from_brokers(c, w, rnd):
    c.bookie_proxy.drop()
    w.progress("cut of the brokers from bookie-0")
    c.bookie_proxy.heal()
    return "cut brokers from bookie-0"


def restart_cluster(c, w, rnd):
    for node in c.brokers + c.bookies + [c.etcd]:
        node.kill9()
    c.start()
    w.progress("kill -9 and restart of the whole cluster", timeout=120)
    return "kill -9 and restart of everything"


FAULTS = [kill_bookie, kill_owner, kill_etcd, pause_owner, cut_broker_from_etcd,
          cut_bookie_from_brokers, restart_cluster]


def run(base, faults, seed, log=print):
    rnd = random.Random(seed)
    cluster = ChaosCluster(base).start()
    workload = None
    try:
        set_dedup(cluster.admin_urls[0], "public/default", True)
        workload = Workload(cluster).start()
        workload.progress("start")
        try:
            for fault in faults(rnd):
                log(f"fault: {fault(cluster, workload, rnd)}; acked so far {workload.acked_total()}")
            workload.finish()
        except AssertionError:
            log(f"seed {seed} failed; thread stacks of the live processes in {base}/*.stacks")
            cluster.dump_stacks()
            raise
        return workload.check()
    finally:
        if workload:
            workload.close()
        cluster.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration-s", type=float, default=1800)
    p.add_argument("--interval-s", type=float, default=5)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    base = tempfile.mkdtemp(prefix="magnetar-chaos-")
    started = time.monotonic()

    def faults(rnd):
        while time.monotonic() - started < args.duration_s:
            time.sleep(rnd.uniform(0, args.interval_s))
            yield rnd.choice(FAULTS)

    counts = run(base, faults, args.seed,
                 log=lambda s: print(f"[{time.monotonic() - started:7.1f} s] {s}", flush=True))
    print(f"chaos soak passed: seed {args.seed}, {time.monotonic() - started:.0f} s, "
          f"acknowledged and verified per topic {counts}; logs in {base}")


if __name__ == "__main__":
    main()
