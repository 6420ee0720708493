"""`GET /metrics` with Pulsar's and BookKeeper's names, checked by `promtool check metrics`
(Debian's `prometheus` package), on a standalone (broker and its in-process bookie in one
scrape) and on a cluster's broker and bookie, while the official client produces and consumes:
values move with the traffic, and a backlog reads the same from every series that reports it.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request

import pulsar
import pytest

from conftest import ROOT, Standalone, make_client, wait_for
from test_cluster import Cluster, first_line

# Pulsar's own names for these entry-size buckets carry unit abbreviations that promtool's lint
# flags; they are kept so Pulsar's dashboards keep working. Nothing else may be reported.
PULSAR_NAMES_PROMTOOL_FLAGS = {
    f"pulsar_entry_size_le_{b} metric names should not contain abbreviated units"
    for b in ("1_kb", "2_kb", "4_kb", "16_kb", "100_kb", "1_mb")
}

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url):
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def samples(text):
    """[(name, {label: value}, value)] of every sample line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


def value(text, name, **labels):
    found = [v for n, ls, v in samples(text)
             if n == name and all(ls.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, f"{name} {labels}: {len(found)} samples"
    return found[0]


def promtool_problems(text):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (scripts/test.sh does)"
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    lines = {l.strip() for l in (out.stdout + out.stderr).splitlines() if l.strip()}
    return lines - PULSAR_NAMES_PROMTOOL_FLAGS


class Producing:
    """Sends on `topic` from a thread until stopped."""

    def __init__(self, producer):
        self.producer = producer
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            self.producer.send(b"m" * 700)
            self.sent += 1

    def finish(self):
        self.stop.set()
        self.thread.join(30)
        return self.sent


def test_standalone_metrics_move_with_traffic_and_pass_promtool(tmp_path, topic):
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    client = make_client(s.url)
    try:
        producer = client.create_producer(topic, batching_enabled=False)
        consumer = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)
        before = scrape(s.admin_url)  # the period's start
        load = Producing(producer)
        assert wait_for(lambda: load.sent >= 200, timeout=30)
        # A scrape a period later (1 s at least) reports the rates of the traffic meanwhile.
        t = dict(cluster="standalone", namespace="public/default", topic=topic)

        def moving():
            text = scrape(s.admin_url)
            return text if value(text, "pulsar_rate_in", **t) > 0 else None
        assert wait_for(moving, timeout=30), before
        during = moving() or scrape(s.admin_url)
        sent = load.finish()
        assert value(during, "pulsar_throughput_in", **t) > 0
        assert value(during, "pulsar_producers_count", **t) == 1
        assert value(during, "pulsar_consumers_count", **t) == 1
        assert value(during, "pulsar_subscriptions_count", **t) == 1
        assert value(during, "pulsar_topics_count", cluster="standalone",
                     namespace="public/default") >= 1
        entries = sum(value(during, f"pulsar_entry_size_le_{b}", **t) for b in ("128", "512", "1_kb"))
        assert entries > 0 and value(during, "pulsar_entry_size_le_1_kb", **t) == entries, \
            "700-byte messages land in the (512, 1 KiB] bucket"
        writes = sum(v for n, ls, v in samples(during)
                     if n.startswith("pulsar_storage_write_latency_le_") and ls.get("topic") == topic)
        assert writes == value(during, "pulsar_storage_write_latency_count", **t) > 0
        # The in-process bookie's series are in the same scrape.
        assert value(during, "bookie_SERVER_STATUS") == 1
        assert value(during, "bookkeeper_server_ADD_ENTRY_count", success="true") >= 200
        assert value(during, "bookkeeper_server_ADD_ENTRY", success="true", quantile="0.99") > 0
        assert value(during, "bookie_WRITE_BYTES") >= 200 * 700
        assert value(during, "process_resident_memory_bytes") > 0
        assert promtool_problems(during) == set()

        # Consume half, acknowledge it: the backlog is the rest, the same in every series.
        acked = sent // 2
        for _ in range(acked):
            consumer.acknowledge(consumer.receive(10_000))

        def settled():
            text = scrape(s.admin_url)
            backlog = value(text, "pulsar_subscription_back_log", subscription="sub", **t)
            return text if backlog == sent - acked else None
        assert wait_for(settled, timeout=30), scrape(s.admin_url)
        after = settled()
        assert value(after, "pulsar_msg_backlog", **t) == sent - acked
        assert value(after, "pulsar_in_messages_total", **t) == sent
        assert value(after, "pulsar_storage_size", **t) >= sent * 700
        assert value(after, "pulsar_storage_backlog_size", **t) > 0
        unacked = value(after, "pulsar_subscription_unacked_messages", subscription="sub", **t)
        assert 0 <= unacked <= sent - acked, "delivered, not yet acknowledged: within the backlog"
        assert value(after, "pulsar_out_messages_total", **t) >= acked
        assert promtool_problems(after) == set()
    finally:
        client.close()
        s.stop()


def test_namespace_level_metrics_sum_the_topics(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGNETAR_BROKER__EXPOSE_TOPIC_LEVEL_METRICS_IN_PROMETHEUS", "false")
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    client = make_client(s.url)
    try:
        topics = [f"persistent://public/default/ns-level-{i}" for i in range(3)]
        for i, name in enumerate(topics):
            p = client.create_producer(name, batching_enabled=False)
            client.subscribe(name, "sub")
            for _ in range(i + 1):
                p.send(b"x")
        text = scrape(s.admin_url)
        ns = dict(cluster="standalone", namespace="public/default")
        assert not any("topic" in ls for _, ls, _ in samples(text)), "no topic-level series"
        assert value(text, "pulsar_in_messages_total", **ns) == 1 + 2 + 3
        assert value(text, "pulsar_msg_backlog", **ns) == 1 + 2 + 3
        assert value(text, "pulsar_producers_count", **ns) == 3
        assert value(text, "pulsar_topics_count", **ns) == 3
        assert promtool_problems(text) == set()
    finally:
        client.close()
        s.stop()


def test_cluster_broker_and_bookie_metrics(tmp_path):
    cluster = Cluster(str(tmp_path), bookie_env={"MAGNETAR_BOOKIE__HTTP_PORT": "0"})
    cluster.start()
    client = make_client(cluster.url)
    try:
        bookie_urls = []
        for p in cluster.bookies:
            line = first_line(p)
            assert line.startswith("magnetar bookie: http http://"), line
            bookie_urls.append(line.split()[-1])
        topic = "persistent://public/default/cluster-metrics"
        producer = client.create_producer(topic, batching_enabled=False)
        for _ in range(50):
            producer.send(b"y" * 100)
        broker = scrape(cluster.admin_url)
        assert value(broker, "pulsar_in_messages_total", cluster="standalone",
                     namespace="public/default", topic=topic) == 50
        assert not any(n.startswith("bookie_") for n, _, _ in samples(broker)), \
            "a cluster broker runs no bookie"
        assert value(broker, "pulsar_lb_cpu_usage", cluster="standalone",
                     broker=cluster.url, metric="loadBalancing") >= 0
        assert promtool_problems(broker) == set()

        # Each entry is written to every bookie of its ensemble (E/Qw of the cluster's
        # settings): the bookies' add counts add up to at least 50 entries times Qa.
        adds = 0
        for url in bookie_urls:
            text = scrape(url)
            assert promtool_problems(text) == set(), url
            assert value(text, "bookie_SERVER_STATUS") == 1
            added = value(text, "bookkeeper_server_ADD_ENTRY_count", success="true")
            adds += added
            # E2 of three bookies: one may hold none of this ledger's entries.
            if added > 0:
                assert value(text, "bookie_journal_JOURNAL_SYNC_count", success="true") > 0
                assert value(text, "bookie_WRITE_BYTES") >= added * 100
            assert value(text, "process_resident_memory_bytes") > 0
        assert adds >= 50 * 2, adds

        # Ledgers and entries stored are counted (the index's count refreshes each second).
        def stored():
            return sum(value(scrape(u), "bookie_entries_count") for u in bookie_urls) >= 100
        assert wait_for(stored, timeout=30)
        assert sum(value(scrape(u), "bookie_ledgers_count") for u in bookie_urls) > 0
    finally:
        client.close()
        cluster.stop()


@pytest.mark.parametrize("path", ["/metrics", "/metrics/"])
def test_metrics_paths_answer(standalone, path):
    with urllib.request.urlopen(standalone.admin_url + path, timeout=30) as r:
        assert r.status == 200
        assert "process_resident_memory_bytes" in r.read().decode()


DASHBOARDS = os.path.join(ROOT, "k8s", "charts", "magnetar", "dashboards")
METRIC_NAME = re.compile(r"\b((?:pulsar|bookie|bookkeeper|process)_[a-zA-Z0-9_]+)")


def dashboard_metric_names():
    """Every metric name the shipped dashboards' queries and variables use, by file."""
    names = {}
    for path in sorted(glob.glob(os.path.join(DASHBOARDS, "*.json"))):
        with open(path) as f:
            board = json.load(f)
        exprs = []

        def walk(node):
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in ("expr", "query", "definition") and isinstance(v, str):
                        exprs.append(v)
                    elif isinstance(v, dict) and k == "query" and isinstance(v.get("query"), str):
                        exprs.append(v["query"])
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(board)
        names[os.path.basename(path)] = {n for e in exprs for n in METRIC_NAME.findall(e)}
    return names


def test_every_metric_the_dashboards_use_is_in_a_real_scrape(standalone):
    boards = dashboard_metric_names()
    assert set(boards) == {"magnetar-overview.json", "magnetar-topic.json",
                           "magnetar-bookie.json", "magnetar-offload.json"}
    # A topic with a producer, a subscription and reads, so that every kind of series exists:
    # standalone carries the broker's series, its bookie's and (offloading to its data
    # directory by default) the offloader's.
    client = make_client(standalone.url)
    try:
        topic = "persistent://public/default/dashboards"
        consumer = client.subscribe(topic, "dash")
        producer = client.create_producer(topic)
        producer.send(b"d")
        consumer.acknowledge(consumer.receive(10_000))
        scraped = {n for n, _, _ in samples(scrape(standalone.admin_url))}
    finally:
        client.close()
    for board, names in boards.items():
        assert names, f"{board} queries no metric"
        missing = names - scraped
        assert not missing, f"{board} queries metrics no scrape has: {sorted(missing)}"
