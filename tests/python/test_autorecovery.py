"""Bookie auto-recovery (issue 13): etcd, four `magnetar bookie` processes (each runs an auditor
candidate and a replication worker), a broker writing E3/Qw2/Qa2 ledgers, the official client.

A bookie holding replicas is killed (SIGKILL). Without any operator action the auditor marks the
ledgers that named it, workers copy its entries from the surviving replicas to the fourth
bookie, and no ledger record names the dead bookie any more. Then a second bookie dies, and every
acknowledged message still reads back, in order (before, the first loss left one copy of many
entries for good, and the second made them unreadable).
"""

import base64
import json
import signal
import subprocess
import urllib.request

import pulsar

from conftest import BIN, make_client, wait_for
from test_cluster import Cluster

MESSAGES_BEFORE = 1200
MESSAGES_AFTER = 300


def etcd_range(cluster, prefix):
    """Every (key, value) under `prefix` of the cluster's root, through etcd's JSON gateway."""
    key = (cluster.env["MAGNETAR_METADATA__ETCD_ROOT"] + prefix).encode()
    end = key[:-1] + bytes([key[-1] + 1])
    body = json.dumps({"key": base64.b64encode(key).decode(),
                       "range_end": base64.b64encode(end).decode()}).encode()
    req = urllib.request.Request(cluster.env["MAGNETAR_METADATA__ETCD_ENDPOINTS"] + "/v3/kv/range",
                                 data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        kvs = json.loads(r.read()).get("kvs", [])
    return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"])) for kv in kvs]


def ledgers_naming(cluster, bookie):
    out = []
    for key, value in etcd_range(cluster, "/ledgers/"):
        meta = json.loads(value)
        if any(bookie in seg["bookies"] for seg in meta["ensembles"]):
            out.append(key)
    return out


def test_a_lost_bookies_replicas_come_back_and_a_second_loss_loses_nothing(tmp_path):
    cluster = Cluster(str(tmp_path), bookies=4, bookie_env={
        "MAGNETAR_BOOKIE__LOST_BOOKIE_RECOVERY_DELAY_SECONDS": "1",
    }, broker_env={
        "MAGNETAR_BROKER__ENSEMBLE_SIZE": "3",
        "MAGNETAR_BROKER__WRITE_QUORUM": "2",
        "MAGNETAR_BROKER__ACK_QUORUM": "2",
        "MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER": "200",
    })
    cluster.start()
    topic = "persistent://public/default/autorecovery"
    try:
        client = make_client(cluster.url)
        producer = client.create_producer(topic, batching_enabled=False)
        sent = [producer.send(f"a-{i:05d}".encode()) for i in range(MESSAGES_BEFORE)]

        # The bookie named by the most ledgers dies.
        ids = cluster.bookie_ids
        victim = max(range(len(ids)), key=lambda i: len(ledgers_naming(cluster, ids[i])))
        assert ledgers_naming(cluster, ids[victim]), "no ledger on the victim"
        cluster.bookies[victim].send_signal(signal.SIGKILL)
        cluster.bookies[victim].wait(timeout=30)

        # Publishing goes on (the writer replaces the bookie for new entries).
        sent += [producer.send(f"a-{i:05d}".encode()) for i in range(MESSAGES_BEFORE, MESSAGES_BEFORE + MESSAGES_AFTER)]
        producer.close()

        # Auto-recovery: no record names the dead bookie, no mark is left.
        assert wait_for(lambda: ledgers_naming(cluster, ids[victim]) == [], timeout=120), \
            ledgers_naming(cluster, ids[victim])
        assert wait_for(lambda: etcd_range(cluster, "/underreplicated/ledgers/") == [], timeout=60), \
            etcd_range(cluster, "/underreplicated/ledgers/")
        # The admin API and CLI show the same: no ledger left to copy, the victim gone.
        out = subprocess.run([BIN, "admin", "--url", cluster.admin_url, "bookies", "list-underreplicated"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "", out  # an empty list prints nothing
        with urllib.request.urlopen(cluster.admin_url + "/admin/v2/bookies/all", timeout=10) as r:
            listed = [b["bookieId"] for b in json.loads(r.read())["bookies"]]
        assert sorted(listed) == sorted(b for i, b in enumerate(ids) if i != victim), listed

        # A second bookie dies: every acknowledged message is still there, in order.
        second = next(i for i in range(len(ids)) if i != victim)
        cluster.bookies[second].send_signal(signal.SIGKILL)
        cluster.bookies[second].wait(timeout=30)
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for i, msg_id in enumerate(sent):
            m = reader.read_next(20_000)
            assert m.data() == f"a-{i:05d}".encode(), i
            assert (m.message_id().ledger_id(), m.message_id().entry_id()) == \
                (msg_id.ledger_id(), msg_id.entry_id()), i
        client.close()
    finally:
        cluster.stop()


def test_a_decommissioned_bookie_is_emptied_then_can_go(tmp_path):
    """`bookies decommission`: the bookie turns read-only (new ledgers and the writer avoid it),
    its replicas are copied elsewhere while it still serves them, and the status says when it
    can be removed; after it is stopped every message reads back."""
    cluster = Cluster(str(tmp_path), bookies=4, broker_env={
        "MAGNETAR_BROKER__ENSEMBLE_SIZE": "3",
        "MAGNETAR_BROKER__WRITE_QUORUM": "2",
        "MAGNETAR_BROKER__ACK_QUORUM": "2",
        "MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER": "200",
    })
    cluster.start()
    topic = "persistent://public/default/decommission"
    admin = [BIN, "admin", "--url", cluster.admin_url, "bookies"]
    try:
        client = make_client(cluster.url)
        producer = client.create_producer(topic, batching_enabled=False)
        sent = [producer.send(f"d-{i:05d}".encode()) for i in range(600)]
        ids = cluster.bookie_ids
        leaving = max(range(len(ids)), key=lambda i: len(ledgers_naming(cluster, ids[i])))
        assert ledgers_naming(cluster, ids[leaving])

        out = subprocess.run(admin + ["decommission", ids[leaving]], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out

        def bookie_state():
            with urllib.request.urlopen(cluster.admin_url + "/admin/v2/bookies/all", timeout=10) as r:
                return {b["bookieId"]: b["state"] for b in json.loads(r.read())["bookies"]}
        assert wait_for(lambda: bookie_state().get(ids[leaving]) == "read_only", timeout=30), bookie_state()
        # Publishing goes on; the writer leaves the read-only bookie.
        sent += [producer.send(f"d-{i:05d}".encode()) for i in range(600, 800)]
        producer.close()

        def status():
            out = subprocess.run(admin + ["decommission-status", ids[leaving]],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out
            return json.loads(out.stdout)
        assert wait_for(lambda: status()["readyToRemove"], timeout=120), status()
        assert status()["ledgersRemaining"] == 0 and ledgers_naming(cluster, ids[leaving]) == []

        cluster.bookies[leaving].send_signal(signal.SIGTERM)
        cluster.bookies[leaving].wait(timeout=30)
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for i in range(len(sent)):
            assert reader.read_next(20_000).data() == f"d-{i:05d}".encode(), i
        client.close()
    finally:
        cluster.stop()


def test_an_idle_topics_open_ledger_is_fenced_and_copied_after_the_grace_period(tmp_path):
    """A topic that stops publishing keeps its ledger open; its writer never learns that a
    bookie of it died. After `open_ledger_rereplication_grace_period_seconds` a replication
    worker fences the ledger (recovery closes it) and copies it; the topic's next publish meets
    the fenced ledger, moves to a new one without losing or duplicating anything, and the
    consumer goes on. A second bookie loss then loses nothing."""
    cluster = Cluster(str(tmp_path), bookies=4, bookie_env={
        "MAGNETAR_BOOKIE__LOST_BOOKIE_RECOVERY_DELAY_SECONDS": "1",
        "MAGNETAR_BOOKIE__OPEN_LEDGER_REREPLICATION_GRACE_PERIOD_SECONDS": "2",
    }, broker_env={
        "MAGNETAR_BROKER__ENSEMBLE_SIZE": "3",
        "MAGNETAR_BROKER__WRITE_QUORUM": "2",
        "MAGNETAR_BROKER__ACK_QUORUM": "2",
    })
    cluster.start()
    topic = "persistent://public/default/idle-open-ledger"
    try:
        client = make_client(cluster.url)
        consumer = client.subscribe(topic, "idle")
        producer = client.create_producer(topic, batching_enabled=False)
        sent = [producer.send(f"i-{i:05d}".encode()) for i in range(100)]
        for i in range(100):
            m = consumer.receive(20_000)
            assert m.data() == f"i-{i:05d}".encode()
            consumer.acknowledge(m)
        open_ledger = sent[-1].ledger_id()
        root = cluster.env["MAGNETAR_METADATA__ETCD_ROOT"]
        ensemble = next(json.loads(v)["ensembles"][-1]["bookies"]
                        for k, v in etcd_range(cluster, f"/ledgers/{open_ledger}")
                        if k == f"{root}/ledgers/{open_ledger}")
        ids = cluster.bookie_ids
        victim = ids.index(ensemble[0])
        cluster.bookies[victim].send_signal(signal.SIGKILL)
        cluster.bookies[victim].wait(timeout=30)

        # Nothing is published: only auto-recovery can close and copy the open ledger.
        assert wait_for(lambda: ledgers_naming(cluster, ids[victim]) == [], timeout=120), \
            ledgers_naming(cluster, ids[victim])
        assert wait_for(lambda: etcd_range(cluster, "/underreplicated/ledgers/") == [], timeout=60), \
            etcd_range(cluster, "/underreplicated/ledgers/")

        # The topic goes on: the producer's next messages land on a new ledger, the consumer
        # gets them (exactly those).
        more = [producer.send(f"i-{i:05d}".encode()) for i in range(100, 150)]
        assert more[0].ledger_id() != open_ledger
        for i in range(100, 150):
            m = consumer.receive(20_000)
            assert m.data() == f"i-{i:05d}".encode(), i
            consumer.acknowledge(m)

        second = next(i for i in range(len(ids)) if i != victim)
        cluster.bookies[second].send_signal(signal.SIGKILL)
        cluster.bookies[second].wait(timeout=30)
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for i in range(150):
            assert reader.read_next(20_000).data() == f"i-{i:05d}".encode(), i
        assert not reader.has_message_available()
        client.close()
    finally:
        cluster.stop()
