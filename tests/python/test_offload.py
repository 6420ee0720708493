"""Tiered storage end to end (issue 12): a standalone offloading to a real S3-compatible server
(moto's, on 127.0.0.1) through the `s3` driver, read back by the official client.

Several ledgers' worth is produced, offloaded through the admin API, and with a zero deletion
lag the bookies' copies are deleted; then consuming from the earliest position, seeking by
message id and by time, and a Shared subscription all see every message, in order, with its
original id. Deleting the topic deletes its objects.
"""

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pulsar
import pytest

from conftest import BIN, Standalone, make_client, wait_for

MESSAGES = 550
PER_LEDGER = 100
BUCKET = "offload"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3():
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.fail("moto[server] is missing: python3 -m pip install 'moto[server]' (scripts/test.sh installs it)")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


def objects(s3_client, prefix=""):
    out = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


def admin(s, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{s.admin_url}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_offloaded_topic_reads_back_whole_after_the_bookie_copies_are_deleted(tmp_path, monkeypatch, s3):
    endpoint, s3_client = s3
    for key, value in {
        "DRIVER": "aws-s3", "BUCKET": BUCKET, "REGION": "us-east-1",
        "SERVICE_ENDPOINT": endpoint, "ACCESS_KEY_ID": "test", "SECRET_ACCESS_KEY": "test",
        "DELETION_LAG_MS": "0",
    }.items():
        monkeypatch.setenv(f"MAGNETAR_OFFLOAD__{key}", value)
    monkeypatch.setenv("MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER", str(PER_LEDGER))
    log_path = tmp_path / "standalone.log"
    s = Standalone(tmp_path / "data", log_path).start()
    topic = "persistent://public/default/offloaded"
    path = "/admin/v2/persistent/public/default/offloaded"
    try:
        client = make_client(s.url)
        client.subscribe(topic, "hold").close()
        producer = client.create_producer(topic, batching_enabled=False)
        ids, times = [], []
        for i in range(MESSAGES):
            times.append(int(time.time() * 1000))
            ids.append(producer.send(f"m-{i:04d}".encode()))
        assert admin(s, "GET", f"{path}/offload")[1]["status"] == "NOT_RUN"

        last = ids[-1]
        status, _ = admin(s, "PUT", f"{path}/offload",
                          {"ledgerId": last.ledger_id(), "entryId": last.entry_id(), "partitionIndex": -1})
        assert status == 204
        assert wait_for(lambda: admin(s, "GET", f"{path}/offload")[1]["status"] != "RUNNING", timeout=60)
        st = admin(s, "GET", f"{path}/offload")[1]
        assert st["status"] == "SUCCESS", st
        assert st["firstUnoffloadedMessage"]["ledgerId"] == last.ledger_id(), st

        # The CLI reads the same status, as pulsar-admin prints it.
        out = subprocess.run([BIN, "admin", "--url", s.admin_url, "topics", "offload-status", topic],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "Offload was a success" in out.stdout, out

        stats = admin(s, "GET", f"{path}/internalStats")[1]
        offloaded = [l for l in stats["ledgers"] if l["offloaded"]]
        assert len(offloaded) == MESSAGES // PER_LEDGER, stats["ledgers"]
        keys = objects(s3_client)
        assert len(keys) == 2 * len(offloaded), keys
        assert all(k.startswith("magnetar/public/default/persistent/offloaded/") for k in keys), keys
        # Zero deletion lag: the bookies' copies are gone.
        assert wait_for(lambda: log_path.read_text(errors="replace").count(
            "bookies' copy of an offloaded ledger deleted") == len(offloaded), timeout=30)

        # Earliest: every message, in order, with its original id.
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for i in range(MESSAGES):
            m = reader.read_next(10_000)
            assert m.data() == f"m-{i:04d}".encode(), i
            assert (m.message_id().ledger_id(), m.message_id().entry_id()) == \
                (ids[i].ledger_id(), ids[i].entry_id()), i
        # Seek by id, backwards into an offloaded ledger (inclusive: that message comes next).
        seeker = client.create_reader(topic, pulsar.MessageId.latest, start_message_id_inclusive=True)
        seeker.seek(ids[123])
        assert seeker.read_next(10_000).data() == b"m-0123"
        # Seek by time.
        consumer = client.subscribe(topic, "by-time", initial_position=pulsar.InitialPosition.Latest)
        consumer.seek(times[301])
        first = consumer.receive(10_000).data()
        assert first in (b"m-0300", b"m-0301"), first
        # A Shared subscription over two consumers gets every message once.
        c1 = client.subscribe(topic, "shared", consumer_type=pulsar.ConsumerType.Shared,
                              initial_position=pulsar.InitialPosition.Earliest)
        c2 = client.subscribe(topic, "shared", consumer_type=pulsar.ConsumerType.Shared,
                              initial_position=pulsar.InitialPosition.Earliest)
        got = set()
        deadline = time.monotonic() + 60
        while len(got) < MESSAGES and time.monotonic() < deadline:
            for c in (c1, c2):
                # Drain what this consumer holds before turning to the other one.
                while True:
                    try:
                        m = c.receive(100)
                    except pulsar.Timeout:
                        break
                    got.add(m.data())
                    c.acknowledge(m)
        assert got == {f"m-{i:04d}".encode() for i in range(MESSAGES)}
        client.close()

        # Deleting the topic deletes its objects.
        status, body = admin(s, "DELETE", f"{path}?force=true")
        assert status == 204, body
        assert wait_for(lambda: objects(s3_client) == [], timeout=30), objects(s3_client)
    finally:
        s.stop()


def test_offload_policies_are_validated_and_round_trip(standalone):
    s = standalone
    ns = "/admin/v2/namespaces/public/default"
    status, body = admin(s, "POST", f"{ns}/offloadPolicies", {"managedLedgerOffloadDriver": "tape"})
    assert status == 412 and "driver is not supported" in body
    status, body = admin(s, "POST", f"{ns}/offloadPolicies", {"managedLedgerOffloadDriver": "aws-s3"})
    assert status == 412 and "bucket must be specified" in body
    policies = {"managedLedgerOffloadDriver": "aws-s3", "s3ManagedLedgerOffloadBucket": "b",
                "s3ManagedLedgerOffloadRegion": "eu-west-1",
                "managedLedgerOffloadThresholdInBytes": 1048576}
    assert admin(s, "POST", f"{ns}/offloadPolicies", policies)[0] == 204
    got = admin(s, "GET", f"{ns}/offloadPolicies")[1]
    assert {k: got[k] for k in policies} == policies
    assert admin(s, "GET", f"{ns}/offloadThreshold")[1] == 1048576
    assert admin(s, "PUT", f"{ns}/offloadDeletionLagMs", 60000)[0] == 204
    assert admin(s, "GET", f"{ns}/offloadDeletionLagMs")[1] == 60000
    assert admin(s, "DELETE", f"{ns}/offloadDeletionLagMs")[0] == 204
    assert admin(s, "GET", f"{ns}/offloadDeletionLagMs")[0] == 204
    assert admin(s, "PUT", f"{ns}/offloadThresholdInSeconds", 3600)[0] == 204
    assert admin(s, "GET", f"{ns}/offloadThresholdInSeconds")[1] == 3600
    assert admin(s, "DELETE", f"{ns}/removeOffloadPolicies")[0] == 204
    assert admin(s, "GET", f"{ns}/offloadPolicies")[0] == 204


def test_a_topic_policy_sends_its_ledgers_to_another_bucket_applied_live(tmp_path, monkeypatch, s3):
    """The standalone offloads to its data directory; a topic-level policy set while the topic
    is loaded sends that topic's ledgers to an S3 bucket instead, by the size threshold alone
    (no manual trigger), and everything reads back from there."""
    endpoint, s3_client = s3
    # Credentials of the policy's store come from the standard AWS chain.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER", "50")
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    topic = "persistent://public/default/own-bucket"
    path = "/admin/v2/persistent/public/default/own-bucket"
    try:
        status, _ = admin(s, "GET", "/admin/v2/persistent/public/default/no-such-topic/offloadPolicies")
        assert status == 404
        client = make_client(s.url)
        client.subscribe(topic, "hold").close()
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(220):
            producer.send(f"p-{i:04d}".encode())
        assert admin(s, "GET", f"{path}/offloadPolicies")[0] == 204

        out = subprocess.run(
            [BIN, "admin", "--url", s.admin_url, "topics", "set-offload-policies", topic,
             "-d", "aws-s3", "-b", BUCKET, "-e", endpoint, "-r", "us-east-1",
             "--offloadAfterThreshold", "0", "--offloadAfterElapsed", "0"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        own = admin(s, "GET", f"{path}/offloadPolicies")[1]
        assert own["managedLedgerOffloadDriver"] == "aws-s3" and own["s3ManagedLedgerOffloadBucket"] == BUCKET, own
        applied = admin(s, "GET", f"{path}/offloadPolicies?applied=true")[1]
        assert applied["managedLedgerOffloadDriver"] == "s3", applied
        assert applied["managedLedgerOffloadBucket"] == BUCKET, applied
        assert applied["managedLedgerOffloadThresholdInBytes"] == 0, applied

        # Four closed ledgers of 50: all offloaded by the threshold, to the topic's bucket.
        def offloaded():
            ledgers = admin(s, "GET", f"{path}/internalStats")[1]["ledgers"]
            return [l for l in ledgers if l["offloaded"]]
        assert wait_for(lambda: len(offloaded()) == 4, timeout=60), offloaded()
        assert all(l["offloadedTo"].startswith(f"s3://{BUCKET}/") for l in offloaded()), offloaded()
        assert wait_for(lambda: len(objects(s3_client)) == 8, timeout=30), objects(s3_client)
        local = tmp_path / "data" / "offload"
        assert not any(p.is_file() for p in local.rglob("*")), list(local.rglob("*"))
        assert wait_for(lambda: all(l.get("bookieCopyDeleted") for l in offloaded()), timeout=30)

        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for i in range(220):
            assert reader.read_next(10_000).data() == f"p-{i:04d}".encode(), i
        client.close()

        out = subprocess.run([BIN, "admin", "--url", s.admin_url, "topics", "remove-offload-policies", topic],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        assert admin(s, "GET", f"{path}/offloadPolicies")[0] == 204
        # Deleting the topic deletes the objects in the bucket the policy named.
        status, body = admin(s, "DELETE", f"{path}?force=true")
        assert status == 204, body
        assert wait_for(lambda: objects(s3_client) == [], timeout=30), objects(s3_client)
    finally:
        s.stop()


def test_a_namespace_threshold_set_while_topics_are_loaded_offloads_them(tmp_path, monkeypatch):
    """`offloadThreshold` on the namespace reaches a loaded topic without a reload: its closed
    ledgers go to the standalone's default store (a directory under its data dir)."""
    monkeypatch.setenv("MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER", "40")
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    topic = "persistent://public/default/ns-threshold"
    path = "/admin/v2/persistent/public/default/ns-threshold"
    try:
        client = make_client(s.url)
        client.subscribe(topic, "hold").close()
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(130):
            producer.send(f"n-{i:04d}".encode())

        def offloaded():
            return [l for l in admin(s, "GET", f"{path}/internalStats")[1]["ledgers"] if l["offloaded"]]
        assert offloaded() == []
        assert admin(s, "PUT", "/admin/v2/namespaces/public/default/offloadThreshold", 0)[0] == 204
        assert wait_for(lambda: len(offloaded()) == 3, timeout=60), offloaded()
        local = tmp_path / "data" / "offload"
        assert all(l["offloadedTo"].startswith("filesystem://") for l in offloaded()), offloaded()
        assert len([p for p in local.rglob("*") if p.is_file()]) == 6
        applied = admin(s, "GET", f"{path}/offloadPolicies?applied=true")[1]
        assert applied["managedLedgerOffloadDriver"] == "filesystem", applied
        assert applied["managedLedgerOffloadThresholdInBytes"] == 0, applied

        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for i in range(130):
            assert reader.read_next(10_000).data() == f"n-{i:04d}".encode(), i
        client.close()
    finally:
        s.stop()
