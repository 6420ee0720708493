#!/usr/bin/env python3
"""Failover time of a topic whose last ledger is large (issue 11: recovery reads only the tail).

Starts `magnetar standalone`, fills one topic's current ledger with --size-mib MiB, kills the
process with SIGKILL (the ledger is left open, so the next owner must recover it), restarts it on
the same ports and data, and measures:

  listen_s      restart -> the broker port accepts connections (process start-up, journal replay)
  first_write_s restart -> the first message to the big topic is acknowledged (includes ledger
                recovery of the big ledger, then a new ledger)

Usage: scripts/bench-failover.py [--magnetar target/release/magnetar] [--size-mib 1024] [--runs 3]
Needs the official client: python3 -m pip install pulsar-client
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

try:
    import pulsar
except ImportError:
    sys.exit("the official Pulsar client is missing: python3 -m pip install pulsar-client")

TOPIC = "persistent://public/default/failover-big"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, data_dir, broker_port, admin_port, log):
    return subprocess.Popen(
        [binary, "standalone", "--data-dir", data_dir,
         "--broker-port", str(broker_port), "--admin-port", str(admin_port)],
        stdout=log, stderr=subprocess.STDOUT)


def wait_listening(port, deadline_s=120):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.002)
    raise SystemExit(f"port {port} not listening after {deadline_s} s")


def quiet():
    try:
        return pulsar.ConsoleLogger(pulsar.LoggerLevel.Error)
    except AttributeError:  # older clients
        return None


def fill(url, size_mib):
    client = pulsar.Client(url, operation_timeout_seconds=60, logger=quiet())
    producer = client.create_producer(
        TOPIC, batching_enabled=True, batching_max_publish_delay_ms=5,
        batching_max_messages=64, batching_max_allowed_size_in_bytes=4 * 1024 * 1024,
        block_if_queue_full=True, max_pending_messages=256)
    chunk = os.urandom(64 * 1024)
    for _ in range(size_mib * 16):
        producer.send_async(chunk, None)
    producer.flush()
    producer.close()
    client.close()


def last_ledger_bytes(admin_port):
    url = f"http://127.0.0.1:{admin_port}/admin/v2/persistent/public/default/failover-big/internalStats"
    with urllib.request.urlopen(url, timeout=30) as r:
        stats = json.load(r)
    return stats.get("currentLedgerSize"), len(stats.get("ledgers", []))


def first_write(url):
    client = pulsar.Client(url, operation_timeout_seconds=60, connection_timeout_ms=60000,
                           logger=quiet())
    producer = client.create_producer(TOPIC, batching_enabled=False)
    producer.send(b"after failover")
    client.close()


def run_once(binary, size_mib, keep):
    data_dir = tempfile.mkdtemp(prefix="magnetar-failover-")
    broker_port, admin_port = free_port(), free_port()
    url = f"pulsar://127.0.0.1:{broker_port}"
    log = open(os.path.join(data_dir, "standalone.log"), "ab")
    proc = start(binary, data_dir, broker_port, admin_port, log)
    try:
        wait_listening(broker_port)
        fill(url, size_mib)
        size, ledgers = last_ledger_bytes(admin_port)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        proc = start(binary, data_dir, broker_port, admin_port, log)
        wait_listening(broker_port)
        t_listen = time.monotonic() - t0
        first_write(url)
        t_write = time.monotonic() - t0
        return {"current_ledger_bytes": size, "ledgers": ledgers,
                "listen_s": round(t_listen, 3), "first_write_s": round(t_write, 3)}
    finally:
        proc.kill()
        proc.wait()
        log.close()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--magnetar", default="target/release/magnetar")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the data directories")
    args = ap.parse_args()
    if not os.access(args.magnetar, os.X_OK):
        sys.exit(f"{args.magnetar} is missing: cargo build --release --bin magnetar")
    for i in range(args.runs):
        print(json.dumps({"run": i + 1, "size_mib": args.size_mib,
                          **run_once(args.magnetar, args.size_mib, args.keep)}), flush=True)


if __name__ == "__main__":
    main()
