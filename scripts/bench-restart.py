#!/usr/bin/env python3
"""Start-up time of `magnetar standalone` vs entries stored, after a clean stop or a kill -9.

Fills a fresh standalone with N unbatched 100-byte messages (one bookie entry each; the official
Python client, send_async), stops it (SIGTERM, or SIGKILL with --kill9), restarts it on the same
data and reports the time from the restart to its `serving` line, the process's VmRSS a second
later and the size of the bookie's index file.

Usage: scripts/bench-restart.py [--magnetar target/release/magnetar] [-n 1000000] [--kill9]
Needs python3 -m pip install pulsar-client.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import pulsar
except ImportError:
    sys.exit("the official Pulsar client is missing: python3 -m pip install pulsar-client")


def start(binary, data):
    env = {**os.environ, "RUST_LOG": "warn",
           "MAGNETAR_BOOKIE__DISK_USAGE_THRESHOLD": "1.0", "MAGNETAR_BOOKIE__DISK_USAGE_LWM": "1.0"}
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "standalone", "--data-dir", data, "--broker-port", "0",
                          "--admin-port", "0"], stdout=subprocess.PIPE, env=env)
    line = p.stdout.readline().decode()
    took = time.monotonic() - t0
    if not line.startswith("magnetar standalone: serving "):
        sys.exit(f"standalone did not start: {line!r}")
    return p, line.split()[3], took


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--magnetar", default="target/release/magnetar")
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--kill9", action="store_true")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="magnetar-restart-")
    data = os.path.join(base, "data")
    try:
        p, url, _ = start(args.magnetar, data)
        client = pulsar.Client(url, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
        producer = client.create_producer("persistent://public/default/fill", batching_enabled=False,
                                          max_pending_messages=5000, block_if_queue_full=True)
        body = b"x" * 100
        for _ in range(args.n):
            producer.send_async(body, None)
        producer.flush()
        client.close()
        p.send_signal(signal.SIGKILL if args.kill9 else signal.SIGTERM)
        p.wait(60)
        p, _, took = start(args.magnetar, data)
        time.sleep(1)
        index = os.path.join(data, "bookie", "ledgers", "index.redb")
        size = os.path.getsize(index) / 2**20 if os.path.exists(index) else 0
        print(f"{args.n} entries, {'kill -9' if args.kill9 else 'SIGTERM'}: restart -> serving "
              f"{took:.2f} s, RSS {rss_mib(p.pid):.0f} MiB, index.redb {size:.0f} MiB")
        p.send_signal(signal.SIGTERM)
        p.wait(60)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
