#!/usr/bin/env python3
"""Scrape cost of `/metrics` on a broker with many topics (issue 14).

A release `magnetar standalone`; --topics topics are created through the admin API, each with
one durable subscription (`PUT .../subscription/sub`), so every topic is loaded and reports
its topic-level and subscription-level series. Then --scrapes scrapes are timed: printed, the
median and worst time and the body size — with topic-level series (the default) and with
`exposeTopicLevelMetricsInPrometheus` off (per-namespace sums).

Usage: MAGNETAR_BIN=target/release/magnetar scripts/bench-metrics.py [--topics 10000] [--scrapes 5]
"""

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))

from conftest import Standalone  # noqa: E402


def put(url):
    req = urllib.request.Request(url, method="PUT", data=b"")
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status


def scrape(admin):
    began = time.monotonic()
    with urllib.request.urlopen(admin + "/metrics", timeout=300) as r:
        body = r.read()
    return time.monotonic() - began, len(body)


def run(topics, scrapes, topic_level):
    os.environ["MAGNETAR_BROKER__EXPOSE_TOPIC_LEVEL_METRICS_IN_PROMETHEUS"] = \
        "true" if topic_level else "false"
    with tempfile.TemporaryDirectory() as base:
        s = Standalone(os.path.join(base, "data"), os.path.join(base, "sa.log")).start()
        try:
            admin = s.admin_url
            began = time.monotonic()

            def create(i):
                t = f"{admin}/admin/v2/persistent/public/default/scrape-{i}"
                put(t)
                put(t + "/subscription/sub")
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                list(pool.map(create, range(topics)))
            print(f"  {topics} topics with a subscription created in "
                  f"{time.monotonic() - began:.1f} s")
            scrape(admin)  # the first scrape starts every topic's period
            times, size = [], 0
            for _ in range(scrapes):
                t, size = scrape(admin)
                times.append(t * 1000)
            label = "topic-level" if topic_level else "namespace-level"
            print(f"  {label}: scrape median {statistics.median(times):.0f} ms, "
                  f"max {max(times):.0f} ms, {size / 1e6:.1f} MB")
        finally:
            s.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topics", type=int, default=10_000)
    ap.add_argument("--scrapes", type=int, default=5)
    a = ap.parse_args()
    print(f"/metrics scrape, {a.topics} topics, {a.scrapes} scrapes each:")
    run(a.topics, a.scrapes, True)
    run(a.topics, a.scrapes, False)


if __name__ == "__main__":
    main()
