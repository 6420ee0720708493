#!/usr/bin/env python3
"""Re-replication throughput after a bookie loss (issue 13: bookie auto-recovery).

Starts etcd, four `magnetar bookie` processes and one `magnetar broker` (E3/Qw2/Qa2) with the
cluster harness of tests/python, produces --mib MiB of --entry-kib KiB messages to one topic
(ledgers of 1000 entries), kills the bookie most ledgers name (SIGKILL) and measures:

  detect_s     kill -> the first ledger is marked under-replicated (lost-bookie delay: 1 s)
  copy_s       first mark -> no closed ledger's record names the dead bookie any more (the
               open ledger's last segment is its writer's: it moves off the bookie at its next
               write, or the mark waits for the rollover)
  copied_mib   payload bytes the dead bookie held (entries whose write set included it)
  mib_per_s    copied_mib / copy_s

Usage: scripts/bench-rereplication.py [--mib 256] [--entry-kib 16]
Uses the binary tests/python/conftest.py picks (target/debug unless MAGNETAR_BIN is set).
Needs the official client and etcd, as the test suite does.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))

from conftest import make_client  # noqa: E402
from test_autorecovery import etcd_range, ledgers_naming  # noqa: E402
from test_cluster import Cluster  # noqa: E402


def closed_ledgers_naming(cluster, bookie):
    return [k for k, v in etcd_range(cluster, "/ledgers/")
            if json.loads(v)["state"] == "closed"
            and any(bookie in s["bookies"] for s in json.loads(v)["ensembles"])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--entry-kib", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rerepl-") as base:
        print(f"logs: {base}", file=sys.stderr)
        cluster = Cluster(base, bookies=4, bookie_env={
            "MAGNETAR_BOOKIE__LOST_BOOKIE_RECOVERY_DELAY_SECONDS": "1",
            "RUST_LOG": os.environ.get("BOOKIE_LOG", "warn"),
        }, broker_env={
            "MAGNETAR_BROKER__ENSEMBLE_SIZE": "3",
            "MAGNETAR_BROKER__WRITE_QUORUM": "2",
            "MAGNETAR_BROKER__ACK_QUORUM": "2",
            "MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER": "1000",
            "RUST_LOG": "warn",
        })
        cluster.start()
        try:
            client = make_client(cluster.url)
            producer = client.create_producer("persistent://public/default/rerepl",
                                              batching_enabled=False, max_pending_messages=2000,
                                              block_if_queue_full=True)
            payload = b"r" * (args.entry_kib * 1024)
            n = args.mib * 1024 // args.entry_kib
            for _ in range(n):
                producer.send_async(payload, None)
            producer.flush()
            producer.close()
            client.close()
            ids = cluster.bookie_ids
            victim = max(range(len(ids)), key=lambda i: len(ledgers_naming(cluster, ids[i])))
            held = 0
            for _, value in etcd_range(cluster, "/ledgers/"):
                meta = json.loads(value)
                if meta["state"] == "closed" and any(ids[victim] in s["bookies"] for s in meta["ensembles"]):
                    # Closed ledgers: Qw/E of the entries had a replica there.
                    held += meta["length_bytes"] * meta["write_quorum"] // meta["ensemble_size"]
            killed = time.monotonic()
            cluster.bookies[victim].send_signal(signal.SIGKILL)
            cluster.bookies[victim].wait(timeout=30)
            while not etcd_range(cluster, "/underreplicated/ledgers/"):
                time.sleep(0.05)
            marked = time.monotonic()
            while closed_ledgers_naming(cluster, ids[victim]):
                time.sleep(0.05)
            done = time.monotonic()
            if os.environ.get("KEEP_LOGS"):
                os.system(f"cp -r {base} /tmp/rerepl-logs")
            copied_mib = held / (1024 * 1024)
            print(json.dumps({
                "mib_produced": args.mib, "entry_kib": args.entry_kib,
                "detect_s": round(marked - killed, 2), "copy_s": round(done - marked, 2),
                "copied_mib": round(copied_mib, 1),
                "mib_per_s": round(copied_mib / max(done - marked, 1e-9), 1),
            }))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
