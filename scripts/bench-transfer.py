#!/usr/bin/env python3
"""Client-visible pause of a graceful bundle transfer, and shedding convergence (issue 13).

transfer: etcd, 3 bookies, 2 brokers; a namespace of one bundle holding --topics topics, each
with a producer (async sends, --rate msg/s per topic) and a consumer (listener, acks). The
bundle is moved between the brokers --transfers times (`namespaces unload --bundle
--destinationBroker`, PIP-307 handover). A producer's pause in one transfer is the longest
send-to-acknowledgement latency of the messages it sent while the transfer ran (from 50 ms
before the request to its answer); printed: p50 / p99 / max over all (producer, transfer)
pairs, and the baseline latency of the same producers outside transfers.

shedding: 1 broker, --topics topics in 4 bundles under traffic; two brokers join; printed: the
time until every broker owns a bundle (shedding every --shed-s seconds, hysteresis 2 cycles).

Usage: scripts/bench-transfer.py [--topics 100] [--transfers 20] [--rate 20] [--shed-s 1]
Uses the binary tests/python/conftest.py picks (MAGNETAR_BIN=target/release/magnetar for
figures). Needs the official client and etcd, as the test suite does.
"""

import argparse
import os
import re
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))

import pulsar  # noqa: E402

from conftest import BIN  # noqa: E402
from test_bundle_transfer import cli, http  # noqa: E402
from test_cluster import Cluster  # noqa: E402


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p))]


class Load:
    """Async sends at a steady rate on every topic; (topic, sent_at, acked_at) per message."""

    def __init__(self, client, topics, rate):
        self.samples = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.producers = [client.create_producer(t, batching_enabled=False,
                                                 send_timeout_millis=60_000,
                                                 max_pending_messages=10_000)
                          for t in topics]
        self.consumers = [client.subscribe(t, "bench", consumer_type=pulsar.ConsumerType.Shared,
                                           message_listener=lambda c, m: c.acknowledge(m))
                          for t in topics]
        self.interval = 1.0 / rate
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        n = 0
        while not self.stop.is_set():
            tick = time.monotonic()
            for i, p in enumerate(self.producers):
                sent = time.monotonic()

                def done(res, _id, i=i, sent=sent):
                    if res == pulsar.Result.Ok:
                        with self.lock:
                            self.samples.append((i, sent, time.monotonic()))
                p.send_async(f"{n}".encode(), done)
            n += 1
            time.sleep(max(0.0, self.interval - (time.monotonic() - tick)))

    def window(self, start, end):
        with self.lock:
            return [s for s in self.samples if start <= s[1] <= end]


def transfer(args):
    with tempfile.TemporaryDirectory(prefix="transfer-") as base:
        quiet = {"RUST_LOG": "warn"}
        # The transfer's own log lines carry its phases' timings (see breakdown()).
        brokers = {"RUST_LOG": "warn,magnetar_broker::service::transfer=info"}
        cluster = Cluster(base, broker_env=brokers, bookie_env=quiet)
        cluster.start()
        try:
            _, second_url, second_admin = cluster.start_broker("broker-2.log")
            admin = cluster.admin_url
            cli(admin, "namespaces", "create", "public/bench", "--bundles", "1")
            client = pulsar.Client(cluster.url + "," + second_url.split("://", 1)[1],
                                   operation_timeout_seconds=60,
                                   logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
            topics = [f"persistent://public/bench/t-{i}" for i in range(args.topics)]
            load = Load(client, topics, args.rate)
            load.thread.start()
            time.sleep(3)
            ids = {cluster.url: admin.split("://", 1)[1], second_url: second_admin.split("://", 1)[1]}
            pauses, worst, windows = [], [], []
            for _ in range(args.transfers):
                owner = http(admin, "GET", "/lookup/v2/topic/" + topics[0].replace("://", "/"))
                target = second_url if owner["brokerUrl"] == cluster.url else cluster.url
                start = time.monotonic()
                cli(admin, "namespaces", "unload", "public/bench", "--bundle",
                    "0x00000000_0xffffffff", "--destinationBroker", ids[target])
                end = time.monotonic()
                windows.append((start - 0.05, end + 1.5))
                time.sleep(1.5)  # the window's stragglers are acknowledged
                per = {}
                for i, sent, acked in load.window(start - 0.05, end):
                    per[i] = max(per.get(i, 0.0), acked - sent)
                pauses += per.values()
                worst.append(max(per.values(), default=0.0))
            base_lat = [a - s for _, s, a in load.window(0, time.monotonic())
                        if not any(lo <= s <= hi for lo, hi in windows)]
            load.stop.set()
            load.thread.join()
            client.close()
            ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
            print(f"transfer of a {args.topics}-topic bundle, {args.transfers} transfers, "
                  f"{args.rate} msg/s per producer:")
            print(f"  pause per producer: p50 {ms(pct(pauses, 0.5))}  p99 {ms(pct(pauses, 0.99))}"
                  f"  max {ms(max(pauses))}  ({len(pauses)} samples)")
            print(f"  worst producer per transfer: p50 {ms(pct(worst, 0.5))}  max {ms(max(worst))}")
            print(f"  baseline publish latency: p50 {ms(pct(base_lat, 0.5))}  "
                  f"p99 {ms(pct(base_lat, 0.99))}")
            breakdown(base)
        finally:
            cluster.stop()


def breakdown(base):
    """p50 / max of the phases the brokers logged: the source's quiesce (topics closed) and
    whole unload, the target's wait for the lease and whole take-over (lease + topics opened)."""
    fields = {"bundle unloaded": ("quiesce_ms", "taken_ms", "total_ms"),
              "took a handed-over bundle": ("lease_ms", "marked_ms", "total_ms")}
    values = {}
    for name in os.listdir(base):
        if not name.startswith("broker"):
            continue
        for line in open(os.path.join(base, name), errors="replace"):
            for event, keys in fields.items():
                if event in line:
                    for k in keys:
                        m = re.search(rf"\b{k}=(?:Some\()?(\d+)", line)
                        if m:
                            values.setdefault(f"{event}: {k}", []).append(int(m.group(1)))
    for k, v in sorted(values.items()):
        print(f"  {k}: p50 {pct(v, 0.5)} ms  max {max(v)} ms  ({len(v)})")


def shedding(args):
    with tempfile.TemporaryDirectory(prefix="shedding-") as base:
        env = {"RUST_LOG": "warn",
               "MAGNETAR_BROKER__LOAD_BALANCER_REPORT_UPDATE_MIN_INTERVAL_MS": "500",
               "MAGNETAR_BROKER__LOAD_BALANCER_SHEDDING_INTERVAL_SECONDS": str(args.shed_s),
               "MAGNETAR_BROKER__LOAD_BALANCER_SHEDDING_CONDITION_HIT_COUNT_THRESHOLD": "2",
               "MAGNETAR_BROKER__LOAD_BALANCER_SHEDDING_MIN_MESSAGE_RATE": "20"}
        cluster = Cluster(base, broker_env=env, bookie_env={"RUST_LOG": "warn"})
        cluster.start()
        try:
            client = pulsar.Client(cluster.url, operation_timeout_seconds=60,
                                   logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
            topics = [f"persistent://public/default/shed-{i}" for i in range(args.topics)]
            load = Load(client, topics, args.rate)
            load.thread.start()
            report = lambda a: http(a, "GET", "/admin/v2/broker-stats/load-report")  # noqa: E731
            while len(report(cluster.admin_url)["bundles"]) < 4:
                time.sleep(0.2)
            joined = time.monotonic()
            admins = [cluster.admin_url] + [cluster.start_broker(f"b{i}.log")[2] for i in (2, 3)]
            while not all(report(a)["bundles"] for a in admins):
                time.sleep(0.1)
            spent = time.monotonic() - joined
            print(f"shedding: every broker owns a bundle {spent:.1f} s after two joined "
                  f"(shedding every {args.shed_s} s, hysteresis 2): "
                  + ", ".join(str(len(report(a)["bundles"])) for a in admins))
            load.stop.set()
            load.thread.join()
            client.close()
        finally:
            cluster.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topics", type=int, default=100)
    ap.add_argument("--transfers", type=int, default=20)
    ap.add_argument("--rate", type=int, default=20)
    ap.add_argument("--shed-s", type=int, default=1)
    ap.add_argument("--only", choices=["transfer", "shedding"])
    args = ap.parse_args()
    if args.only in (None, "transfer"):
        transfer(args)
    if args.only in (None, "shedding"):
        shedding(args)


if __name__ == "__main__":
    main()
