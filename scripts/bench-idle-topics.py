#!/usr/bin/env python3
"""Broker memory per idle topic and topic-load rate (issue 11, "many topics").

Starts a real cluster — etcd, one `magnetar bookie`, one `magnetar broker` (ensemble 1) — so the
broker's RSS holds only what the broker keeps (no in-process metadata store or bookie, as in
standalone). Loads N topics with the official client (LOOKUP + PRODUCER, then the producer is
closed: the topic stays loaded, idle, with its managed ledger open), then reads the broker's
VmRSS. Inactive-topic deletion is off for the run.

Usage: scripts/bench-idle-topics.py [--magnetar target/release/magnetar] [-n 10000] [--send]
Needs etcd (apt-get install -y etcd-server) and python3 -m pip install pulsar-client.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

try:
    import pulsar
except ImportError:
    sys.exit("the official Pulsar client is missing: python3 -m pip install pulsar-client")

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline_s=30):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"port {port} not listening")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--magnetar", default="target/release/magnetar")
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--send", action="store_true",
                    help="send one message per topic before closing its producer (idle topics "
                         "whose current ledger holds data, with its age limit running)")
    args = ap.parse_args()
    if ETCD is None:
        sys.exit("etcd is missing: apt-get install -y etcd-server")
    base = tempfile.mkdtemp(prefix="magnetar-idle-")
    procs = []

    def spawn(cmd, env=None, log="log"):
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(os.path.join(base, log), "ab"),
                             env={**os.environ, **(env or {})})
        procs.append(p)
        return p

    try:
        cport, pport = free_port(), free_port()
        spawn([ETCD, "--name", "m0", "--data-dir", os.path.join(base, "etcd"),
               "--listen-client-urls", f"http://127.0.0.1:{cport}",
               "--advertise-client-urls", f"http://127.0.0.1:{cport}",
               "--listen-peer-urls", f"http://127.0.0.1:{pport}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
               "--initial-cluster", f"m0=http://127.0.0.1:{pport}"], log="etcd.log")
        wait_port(cport)
        env = {"MAGNETAR_METADATA__BACKEND": "etcd",
               "MAGNETAR_METADATA__ETCD_ENDPOINTS": f"http://127.0.0.1:{cport}",
               "MAGNETAR_BOOKIE__DISK_USAGE_THRESHOLD": "1.0",
               "MAGNETAR_BOOKIE__DISK_USAGE_LWM": "1.0",
               "MAGNETAR_BROKER__DELETE_INACTIVE_TOPICS_ENABLED": "false",
               "RUST_LOG": "warn"}
        bookie = spawn([args.magnetar, "bookie", "--bind-address", "127.0.0.1", "--port", "0",
                        "--data-dir", os.path.join(base, "bookie")], env=env, log="bookie.log")
        assert bookie.stdout.readline().decode().startswith("magnetar bookie: serving")
        broker = spawn([args.magnetar, "broker"], env={
            **env, "MAGNETAR_BROKER__PORT": "0", "MAGNETAR_BROKER__ADMIN_PORT": "0",
            "MAGNETAR_BROKER__ENSEMBLE_SIZE": "1", "MAGNETAR_BROKER__WRITE_QUORUM": "1",
            "MAGNETAR_BROKER__ACK_QUORUM": "1"}, log="broker.log")
        url = broker.stdout.readline().decode().split()[-1]
        client = pulsar.Client(url, operation_timeout_seconds=60,
                               logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        def load(name):
            p = client.create_producer(name)
            if args.send:
                p.send(b"x" * 100)
            p.close()

        for i in range(200):  # warm-up: first-use allocations are not per topic
            load(f"persistent://public/default/warm-{i}")
        time.sleep(1)
        before = rss_bytes(broker.pid)
        t0 = time.monotonic()
        for i in range(args.n):
            load(f"persistent://public/default/idle-{i}")
        load_s = time.monotonic() - t0
        time.sleep(2)
        after = rss_bytes(broker.pid)
        t0 = time.monotonic()
        for i in range(args.n):  # loaded already: lookup + producer only
            client.create_producer(f"persistent://public/default/idle-{i}").close()
        again_s = time.monotonic() - t0
        print(f"topics {args.n}: loaded at {args.n / load_s:.0f}/s, opened again at "
              f"{args.n / again_s:.0f}/s; broker RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
              f"{(after - before) / args.n / 1024:.1f} KiB per idle topic")
        client.close()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
