"""Message deduplication (namespace policy `deduplication`): a producer name's sequence ids are
stored once, PRODUCER_SUCCESS carries the last one, and the state survives kill -9."""

import json
import os
import urllib.error
import urllib.request
import uuid

import pulsar

from conftest import make_client, receive_all, receive_none

BIG_BYTES = 12 * 1024 * 1024

# Explicit sequence ids start at 1: the Python client ignores `sequence_id=0` (falsy) and
# assigns its own.


def http(admin_url, method, path, body=None):
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(admin_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, (json.loads(raw) if raw.startswith(b"{") else raw)


def namespace(admin_url, dedup):
    """A fresh namespace of tenant `public`, deduplication on or off by policy (None: unset)."""
    ns = f"public/dedup-{uuid.uuid4().hex[:8]}"
    status, body = http(admin_url, "PUT", f"/admin/v2/namespaces/{ns}")
    assert status == 204, body
    if dedup is not None:
        set_dedup(admin_url, ns, dedup)
    return ns


def set_dedup(admin_url, ns, enabled):
    status, body = http(admin_url, "POST", f"/admin/v2/namespaces/{ns}/deduplication", enabled)
    assert status == 204, body


def dedup_status(admin_url, topic):
    path = "/admin/v2/persistent/" + topic[len("persistent://"):] + "/stats"
    status, body = http(admin_url, "GET", path)
    assert status == 200, body
    return body["deduplicationStatus"]


def topic_in(ns):
    return f"persistent://{ns}/t-{uuid.uuid4().hex[:8]}"


def subscribe(client, topic, sub="s"):
    return client.subscribe(topic, sub,
                            initial_position=pulsar.InitialPosition.Earliest)


def payloads(consumer, n):
    out = []
    for m in receive_all(consumer, n):
        out.append(m.data())
        consumer.acknowledge(m)
    return out


def test_duplicate_sequence_ids_are_stored_once(standalone, client):
    ns = namespace(standalone.admin_url, True)
    topic = topic_in(ns)
    consumer = subscribe(client, topic)
    producer = client.create_producer(topic, producer_name="fixed", batching_enabled=False)
    assert producer.last_sequence_id() == -1
    for seq in range(1, 6):
        producer.send(f"m{seq}".encode(), sequence_id=seq)
    # Resends of stored sequence ids are acknowledged but not stored (Pulsar: id -1:-1).
    for seq in (3, 4, 5):
        msg_id = producer.send(f"dup{seq}".encode(), sequence_id=seq)
        assert (msg_id.ledger_id(), msg_id.entry_id()) == (-1, -1)
    producer.send(b"m6", sequence_id=6)
    assert payloads(consumer, 6) == [f"m{i}".encode() for i in range(1, 7)]
    assert receive_none(consumer) is None
    assert dedup_status(standalone.admin_url, topic) == "Enabled"


def test_recreated_producer_continues_after_its_last_sequence_id(standalone, client):
    ns = namespace(standalone.admin_url, True)
    topic = topic_in(ns)
    consumer = subscribe(client, topic)
    producer = client.create_producer(topic, producer_name="again", batching_enabled=False)
    for i in range(10):
        producer.send(f"m{i}".encode())
    producer.close()
    producer = client.create_producer(topic, producer_name="again", batching_enabled=False)
    assert producer.last_sequence_id() == 9
    # Without explicit ids the client continues after it: stored, not taken for duplicates.
    producer.send(b"m10")
    assert producer.last_sequence_id() == 10
    assert payloads(consumer, 11) == [f"m{i}".encode() for i in range(11)]
    assert receive_none(consumer) is None


def test_duplicates_are_stored_when_dedup_is_disabled(standalone, client):
    ns = namespace(standalone.admin_url, None)
    topic = topic_in(ns)
    consumer = subscribe(client, topic)
    producer = client.create_producer(topic, producer_name="plain", batching_enabled=False)
    producer.send(b"a", sequence_id=1)
    producer.send(b"b", sequence_id=2)
    msg_id = producer.send(b"a again", sequence_id=1)
    assert msg_id.entry_id() >= 0
    assert payloads(consumer, 3) == [b"a", b"b", b"a again"]
    producer.close()
    producer = client.create_producer(topic, producer_name="plain", batching_enabled=False)
    assert producer.last_sequence_id() == -1
    assert dedup_status(standalone.admin_url, topic) == "Disabled"


def test_enabling_dedup_applies_to_producers_created_afterwards(standalone, client):
    ns = namespace(standalone.admin_url, False)
    topic = topic_in(ns)
    consumer = subscribe(client, topic)
    before = client.create_producer(topic, producer_name="before", batching_enabled=False)
    before.send(b"x", sequence_id=1)
    before.send(b"x", sequence_id=1)
    assert payloads(consumer, 2) == [b"x", b"x"]
    assert dedup_status(standalone.admin_url, topic) == "Disabled"

    set_dedup(standalone.admin_url, ns, True)
    after = client.create_producer(topic, producer_name="after", batching_enabled=False)
    after.send(b"y", sequence_id=1)
    after.send(b"y again", sequence_id=1)
    after.send(b"z", sequence_id=2)
    assert payloads(consumer, 2) == [b"y", b"z"]
    assert receive_none(consumer) is None
    assert dedup_status(standalone.admin_url, topic) == "Enabled"

    # Turning it off again: duplicates are stored, the last sequence id is no longer known.
    set_dedup(standalone.admin_url, ns, False)
    after.close()
    again = client.create_producer(topic, producer_name="after", batching_enabled=False)
    assert again.last_sequence_id() == -1
    again.send(b"z again", sequence_id=2)
    assert payloads(consumer, 1) == [b"z again"]
    assert dedup_status(standalone.admin_url, topic) == "Disabled"


def send_batch(producer, first, n, prefix):
    """Sends ids first..first+n-1 asynchronously (one batch) and waits for all receipts."""
    results = []
    for seq in range(first, first + n):
        producer.send_async(f"{prefix}{seq}".encode(), lambda res, _id: results.append(res),
                            sequence_id=seq)
    producer.flush()
    assert results == [pulsar.Result.Ok] * n


def test_batches_are_deduplicated_by_their_highest_sequence_id(standalone, client):
    ns = namespace(standalone.admin_url, True)
    topic = topic_in(ns)
    consumer = subscribe(client, topic)
    producer = client.create_producer(topic, producer_name="batcher", batching_enabled=True,
                                      batching_max_messages=5,
                                      batching_max_publish_delay_ms=1000)
    send_batch(producer, 1, 5, "m")
    send_batch(producer, 6, 5, "m")
    # The whole first batch again, then the second again: both duplicates.
    send_batch(producer, 1, 5, "dup")
    send_batch(producer, 6, 5, "dup")
    send_batch(producer, 11, 5, "m")
    assert payloads(consumer, 15) == [f"m{i}".encode() for i in range(1, 16)]
    assert receive_none(consumer) is None
    producer.close()
    producer = client.create_producer(topic, producer_name="batcher", batching_enabled=True)
    # A batch counts up to the SEND's highest_sequence_id; the C++ client sends none, so (as
    # with Pulsar's broker) the last batch counts by its first id.
    assert producer.last_sequence_id() == 11


def test_a_resent_chunked_message_is_stored_once(standalone, client):
    ns = namespace(standalone.admin_url, True)
    topic = topic_in(ns)
    consumer = subscribe(client, topic)
    producer = client.create_producer(topic, producer_name="chunker", chunking_enabled=True,
                                      batching_enabled=False)
    big = os.urandom(BIG_BYTES)
    producer.send(big, sequence_id=1)
    # Only the last chunk counts for deduplication: the resend's last chunk is dropped.
    producer.send(big, sequence_id=1)
    producer.send(b"after", sequence_id=2)
    got = receive_all(consumer, 2, timeout_ms=30000)
    assert got[0].data() == big
    assert got[1].data() == b"after"
    assert receive_none(consumer) is None
    producer.close()
    producer = client.create_producer(topic, producer_name="chunker", chunking_enabled=True)
    assert producer.last_sequence_id() == 2


def test_dedup_state_survives_kill9(fresh_standalone):
    s = fresh_standalone
    ns = namespace(s.admin_url, True)
    topic = topic_in(ns)
    client = make_client(s.url)
    subscribe(client, topic).close()
    producer = client.create_producer(topic, producer_name="survivor", batching_enabled=False)
    for seq in range(1, 11):
        producer.send(f"m{seq}".encode(), sequence_id=seq)
    s.kill9()
    client.close()

    s.start()
    client = make_client(s.url)
    try:
        producer = client.create_producer(topic, producer_name="survivor",
                                          batching_enabled=False)
        assert producer.last_sequence_id() == 10
        for seq in range(6, 11):
            producer.send(f"dup{seq}".encode(), sequence_id=seq)
        producer.send(b"m11", sequence_id=11)
        consumer = subscribe(client, topic)
        assert payloads(consumer, 11) == [f"m{i}".encode() for i in range(1, 12)]
        assert receive_none(consumer) is None
        assert dedup_status(s.admin_url, topic) == "Enabled"
    finally:
        client.close()
