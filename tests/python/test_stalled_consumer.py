"""A stalled consumer does not hold up the others, with the official client and real processes.

On a Shared subscription, consumer A stops reading its socket while consumer B keeps reading:
B must keep receiving at its normal pace — everything except the little that fits in A's
buffers — and once A reads again, every message has arrived, none twice.

The official client always reads its socket, so A's connection goes through a TCP proxy in this
file that can stop reading the broker's side (broker -> client) while still forwarding the
client's side (acks, pings). The client connects wherever the lookup tells it, so the broker
binds 127.0.0.1:P and advertises 127.0.0.2, and the proxy listens on 127.0.0.2:P (Linux routes
all of 127/8 locally): every client connection, lookups included, passes through the proxy.

This is the process-level counterpart of broker/tests/slow_consumer.rs (raw protocol, in-process
broker), with the same total size: ~60 MB, far more than A's buffers can hold (the broker's
per-connection queue of 1,024 frames, its socket send buffer of up to 4 MB, and the proxy's
receive buffer, which does not grow while nobody reads it).
"""

import signal
import socket
import subprocess
import threading
import time
import uuid

import pulsar
import pytest

from conftest import BIN, make_client, wait_for
from test_cluster import ETCD, Cluster, first_line

MESSAGES = 30_000
BODY_BYTES = 2048  # with the id in front: 60 MB in all
# A can absorb a few MB; B must get the rest (as in slow_consumer.rs: at least two thirds).
HEALTHY_SHARE_MIN = MESSAGES * 2 // 3
# B waiting this long for its next message while messages are still to come means it was held up.
GAP_MAX_S = 5.0
# B's share must be in this long after the producer is done (B normally keeps pace with it).
LAG_MAX_S = 10.0
ADVERTISED_HOST = "127.0.0.2"
SHARED = pulsar.ConsumerType.Shared


class AdvertisingCluster(Cluster):
    """test_cluster's etcd + bookies + `magnetar broker`, the broker advertising ADVERTISED_HOST
    (with its bound port) instead of the 127.0.0.1 it binds."""

    def start_broker(self, log, env=None):
        broker = self.spawn([BIN, "broker"], env={
            **self.env,
            "MAGNETAR_BROKER__BIND_ADDRESS": "127.0.0.1",
            "MAGNETAR_BROKER__PORT": "0",
            "MAGNETAR_BROKER__ADMIN_PORT": "0",
            "MAGNETAR_BROKER__ADVERTISED_ADDRESS": ADVERTISED_HOST,
            # One copy per entry: the test is about dispatch, not replication; it halves the
            # bookies' work on a small machine.
            "MAGNETAR_BROKER__ENSEMBLE_SIZE": "1",
            "MAGNETAR_BROKER__WRITE_QUORUM": "1",
            "MAGNETAR_BROKER__ACK_QUORUM": "1",
            **(env or {}),
        }, log=log)
        line = first_line(broker)
        assert line.startswith("magnetar broker: serving "), f"broker: {line!r}"
        admin = first_line(broker)
        assert admin.startswith("magnetar broker: admin "), f"broker admin: {admin!r}"
        return broker, line.split()[-1], admin.split()[-1]

    @property
    def port(self):
        return int(self.url.rsplit(":", 1)[1])

    def stop(self):
        # One at a time, newest first, etcd last: a broker or bookie stopping after etcd spends
        # 5 s retrying to close its session or registration (Cluster.stop signals all at once).
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


class Link:
    """One proxied connection: client <-> proxy <-> broker, a thread per direction. `pause()`
    stops reading the broker's side, so the broker's bytes stay in the kernel and its writes
    back up, exactly as if the client had stopped reading; the client's side keeps flowing."""

    CHUNK = 64 * 1024

    def __init__(self, client, broker, tag):
        self.client = client
        self.broker = broker
        self.tag = tag
        self.paused = False
        self.gate = threading.Condition()
        self.closed = threading.Event()
        self.downstream_bytes = 0
        threading.Thread(target=self._upstream, daemon=True).start()
        threading.Thread(target=self._downstream, daemon=True).start()

    def _upstream(self):
        try:
            while data := self.client.recv(self.CHUNK):
                self.broker.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def _downstream(self):
        try:
            while True:
                self._wait_flowing()
                data = self.broker.recv(self.CHUNK)
                if not data:
                    return
                # Under the gate's lock, which pause() takes too: a chunk read before a pause
                # is held back, nothing reaches the client once pause() has returned.
                with self.gate:
                    self._wait_flowing()
                    self.client.sendall(data)
                    self.downstream_bytes += len(data)
        except OSError:
            pass
        finally:
            self.close()

    def _wait_flowing(self):
        with self.gate:
            self.gate.wait_for(lambda: not self.paused or self.closed.is_set())
        if self.closed.is_set():
            raise OSError("closed")

    def pause(self):
        with self.gate:
            self.paused = True

    def resume(self):
        with self.gate:
            self.paused = False
            self.gate.notify_all()

    def close(self):
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.broker):  # unblocks a pump in recv or sendall
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.gate:  # a paused pump must wake up to exit
            self.gate.notify_all()
        for s in (self.client, self.broker):
            s.close()


class PausableProxy:
    """Listens on `listen`, forwards each connection to `upstream`. Each connection is tagged
    with `tag` as it was when accepted: a client created under a tag owns those connections."""

    def __init__(self, listen, upstream):
        self.upstream = upstream
        self.tag = None
        self.links = []
        self.lock = threading.Lock()
        self.server = socket.create_server(listen)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            try:
                broker = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for s in (client, broker):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.links.append(Link(client, broker, self.tag))

    def tagged(self, tag):
        with self.lock:
            return [link for link in self.links if link.tag == tag]

    def close(self):
        self.server.close()
        with self.lock:
            links = list(self.links)
        for link in links:
            link.close()


class Receiver:
    """An application consuming as fast as it can: receives, records the id, acknowledges."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.ids = []  # appended by the thread only; len() and copies are safe to read
        self.times = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                m = self.consumer.receive(timeout_millis=100)
            except pulsar.Timeout:
                continue
            except pulsar.PulsarException:
                if self.stop.is_set():
                    return
                raise
            self.ids.append(int(m.data()[:8]))
            self.times.append(time.monotonic())
            self.consumer.acknowledge(m)

    def join(self):
        self.stop.set()
        self.thread.join(10)

    def longest_gap(self, start, upto):
        """Longest wait (s) for the next message from `start` through the `upto`-th one."""
        times = [start] + self.times[:upto]
        return max(b - a for a, b in zip(times, times[1:]))


@pytest.fixture
def proxied_cluster(tmp_path):
    if ETCD is None:
        pytest.fail("etcd is missing: install it with `apt-get install -y etcd-server` "
                    "(scripts/test.sh does), or put an etcd binary on PATH")
    cluster = AdvertisingCluster(str(tmp_path))
    try:
        cluster.start()
        assert cluster.url == f"pulsar://{ADVERTISED_HOST}:{cluster.port}", cluster.url
        # Same port, the other loopback address: where the broker's lookups send clients.
        proxy = PausableProxy((ADVERTISED_HOST, cluster.port), ("127.0.0.1", cluster.port))
        try:
            yield cluster, proxy
        finally:
            proxy.close()
    finally:
        cluster.stop()


def test_a_consumer_that_stops_reading_does_not_hold_up_the_others(proxied_cluster):
    cluster, proxy = proxied_cluster
    url = f"pulsar://{ADVERTISED_HOST}:{cluster.port}"
    topic = f"persistent://public/default/stalled-{uuid.uuid4().hex[:8]}"
    clients, receivers = [], []
    try:
        # A: permits for every message, so only its stalled socket can stop the broker from
        # dispatching to it (a small receiver queue would stop it by flow control instead).
        proxy.tag = "A"
        clients.append(make_client(url))
        consumer_a = clients[-1].subscribe(topic, "shared", consumer_type=SHARED,
                                           receiver_queue_size=MESSAGES)
        # B: an ordinary consumer; its permits come back as it reads.
        proxy.tag = "B"
        clients.append(make_client(url))
        consumer_b = clients[-1].subscribe(topic, "shared", consumer_type=SHARED,
                                           receiver_queue_size=1000)
        proxy.tag = "producer"
        clients.append(make_client(url))
        producer = clients[-1].create_producer(topic, batching_enabled=False,
                                               block_if_queue_full=True,
                                               send_timeout_millis=60000)

        links_a = proxy.tagged("A")
        assert links_a, "client A did not connect through the proxy"
        assert proxy.tagged("B"), "client B did not connect through the proxy"
        for link in links_a:
            link.pause()
        bytes_a_at_pause = sum(link.downstream_bytes for link in links_a)

        # Both applications read as fast as they can; A's client just gets nothing.
        receiver_a, receiver_b = Receiver(consumer_a), Receiver(consumer_b)
        receivers += [receiver_a, receiver_b]

        failed = []

        def sent(result, _msg_id):
            if result != pulsar.Result.Ok:
                failed.append(result)

        start = time.monotonic()
        for i in range(MESSAGES):
            producer.send_async(f"{i:08d}".encode() + b"x" * (BODY_BYTES - 8), sent)
        producer.flush()
        produced_s = time.monotonic() - start
        assert not failed, f"sends failed: {failed[:5]}"

        # B gets everything but what A's buffers hold, keeping pace with the producer: its
        # share is in by LAG_MAX_S after the last send was acknowledged.
        wait_for(lambda: len(receiver_b.ids) >= HEALTHY_SHARE_MIN, timeout=LAG_MAX_S)
        got_b = len(receiver_b.ids)
        assert got_b >= HEALTHY_SHARE_MIN, (
            f"B got {got_b} of {MESSAGES} messages in {time.monotonic() - start:.1f} s while A was "
            f"stalled (producing took {produced_s:.1f} s): held up by the stalled consumer")
        gap = receiver_b.longest_gap(start, HEALTHY_SHARE_MIN)
        assert gap < GAP_MAX_S, f"B waited {gap:.1f} s for a message: held up by A"
        b_share_s = receiver_b.times[HEALTHY_SHARE_MIN - 1] - start
        # A really was stalled: its client got nothing since the pause (its proxy forwarded
        # nothing), so the broker had to route around it.
        assert receiver_a.ids == [], f"A received {len(receiver_a.ids)} while paused"
        assert sum(link.downstream_bytes for link in links_a) == bytes_a_at_pause

        # A reads again: between them, every message arrives.
        for link in links_a:
            link.resume()
        assert wait_for(lambda: len(set(receiver_a.ids) | set(receiver_b.ids)) == MESSAGES,
                        timeout=30), (
            f"after A resumed, {MESSAGES - len(set(receiver_a.ids) | set(receiver_b.ids))} "
            f"messages never arrived (A got {len(receiver_a.ids)}, B {len(receiver_b.ids)})")
        # Anything still to come would be a duplicate: give it a moment to show up.
        time.sleep(1)
        for r in receivers:
            r.join()
        # The broker had dispatched to A before parking it: that is what sat in its buffers.
        assert receiver_a.ids, "A received nothing: the broker never dispatched to it"

        # Pulsar redelivers only unacknowledged messages of a consumer that goes away. A's
        # connection stayed up (no reconnect through the proxy) and everything received was
        # acknowledged, so no message may come twice.
        assert proxy.tagged("A") == links_a, "A's client reconnected during the test"
        assert not any(link.closed.is_set() for link in links_a), "A's connection was closed"
        all_ids = receiver_a.ids + receiver_b.ids
        assert len(all_ids) == MESSAGES, (
            f"{len(all_ids) - MESSAGES} duplicates: A got {len(receiver_a.ids)} "
            f"({len(receiver_a.ids) - len(set(receiver_a.ids))} twice), B got "
            f"{len(receiver_b.ids)} ({len(receiver_b.ids) - len(set(receiver_b.ids))} twice)")
        print(f"\nproduced {MESSAGES} x {BODY_BYTES} B in {produced_s:.1f} s; B got "
              f"{HEALTHY_SHARE_MIN} after {b_share_s:.1f} s (longest gap {gap:.2f} s) and "
              f"{len(receiver_b.ids)} in all; A's buffers held {len(receiver_a.ids)}; proxied "
              f"connections: A {len(links_a)}, B {len(proxy.tagged('B'))}, producer "
              f"{len(proxy.tagged('producer'))}")
    finally:
        with proxy.lock:
            links = list(proxy.links)
        for link in links:
            link.resume()  # so that closing a client is not left waiting on the broker's answer
        for r in receivers:
            r.join()
        for c in clients:
            c.close()
