"""The admin REST API of `magnetar standalone` (`/admin/v2`, Pulsar's paths, JSON and codes),
driven with plain HTTP (urllib) next to the official client, and `magnetar admin` against it."""

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pulsar
import pytest

from conftest import BIN, receive_all, receive_none, wait_for


def http(admin_url, method, path, body=None):
    """(status, parsed JSON or raw bytes, headers)."""
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(admin_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    ctype = hdrs.get("Content-Type", "")
    if raw and ctype.startswith("application/json"):
        return status, json.loads(raw), hdrs
    return status, raw, hdrs


def rest(topic):
    """`persistent://t/ns/x` → `/admin/v2/persistent/t/ns/x`."""
    return "/admin/v2/persistent/" + topic[len("persistent://"):]


def producer_of(client, topic, **kw):
    return client.create_producer(topic, batching_enabled=False, **kw)


def stats(admin, topic):
    status, body, _ = http(admin, "GET", rest(topic) + "/stats")
    assert status == 200, body
    return body


def test_partitioned_topic_created_by_rest(standalone, client):
    admin = standalone.admin_url
    tenant = f"tn-{uuid.uuid4().hex[:8]}"
    status, body, _ = http(admin, "PUT", f"/admin/v2/tenants/{tenant}",
                           {"adminRoles": [], "allowedClusters": ["standalone"]})
    assert status == 204, body
    status, body, _ = http(admin, "PUT", f"/admin/v2/namespaces/{tenant}/ns")
    assert status == 204, body
    topic = f"persistent://{tenant}/ns/parts"
    status, body, _ = http(admin, "PUT", rest(topic) + "/partitions", 3)
    assert status == 204, body
    status, body, _ = http(admin, "GET", rest(topic) + "/partitions")
    assert (status, body["partitions"]) == (200, 3)
    # As Pulsar, the partitions exist from creation on: listed before any client used them.
    status, body, _ = http(admin, "GET", f"/admin/v2/persistent/{tenant}/ns")
    assert status == 200
    assert {f"{topic}-partition-{i}" for i in range(3)} <= set(body), body

    consumer = client.subscribe(topic, "all", consumer_type=pulsar.ConsumerType.Shared)
    producer = producer_of(client, topic,
                           message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
    sent = {f"m-{i}" for i in range(30)}
    for m in sorted(sent):
        producer.send(m.encode(), partition_key=m)
    got = set()
    for msg in receive_all(consumer, 30):
        got.add(msg.data().decode())
        consumer.acknowledge(msg)
    assert got == sent

    status, body, _ = http(admin, "GET", rest(topic) + "/partitioned-stats")
    assert status == 200, body
    assert body["msgInCounter"] == 30
    assert body["metadata"]["partitions"] == 3
    assert len(body["partitions"]) == 3
    # Round robin spreads the messages over every partition.
    assert all(p["msgInCounter"] > 0 for p in body["partitions"].values())
    status, body, _ = http(admin, "GET", f"/admin/v2/namespaces/{tenant}/ns/topics")
    assert status == 200
    assert {f"{topic}-partition-{i}" for i in range(3)} <= set(body)
    producer.close()
    consumer.close()

    # Growing the topic creates the new partitions too.
    status, body, _ = http(admin, "POST", rest(topic) + "/partitions", 5)
    assert status == 204, body
    status, body, _ = http(admin, "GET", f"/admin/v2/persistent/{tenant}/ns")
    assert {f"{topic}-partition-{i}" for i in range(5)} <= set(body), body


def test_stats_and_internal_stats(standalone, client, topic):
    admin = standalone.admin_url
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared)
    producer = producer_of(client, topic)
    for i in range(10):
        producer.send(f"p-{i}".encode())
    s = stats(admin, topic)
    assert s["msgInCounter"] == 10
    assert s["bytesInCounter"] == sum(len(f"p-{i}") for i in range(10))
    assert s["storageSize"] > 0
    assert [p["producerName"] for p in s["publishers"]] == [producer.producer_name()]
    sub = s["subscriptions"]["s"]
    assert sub["type"] == "Shared"
    assert sub["msgBacklog"] == 10
    assert len(sub["consumers"]) == 1

    internal = http(admin, "GET", rest(topic) + "/internalStats")[1]
    assert internal["numberOfEntries"] == 10
    assert internal["entriesAddedCounter"] == 10
    assert "s" in internal["cursors"]
    assert sum(l["entries"] for l in internal["ledgers"]) == 10

    for msg in receive_all(consumer, 10):
        consumer.acknowledge(msg)
    wait_for(lambda: stats(admin, topic)["subscriptions"]["s"]["msgBacklog"] == 0)
    assert stats(admin, topic)["msgOutCounter"] == 10

    # Deleting needs force while clients are connected.
    assert http(admin, "DELETE", rest(topic))[0] == 412
    status, body, _ = http(admin, "DELETE", rest(topic) + "/subscription/s")
    assert status == 412, body
    producer.close()
    consumer.close()
    assert http(admin, "DELETE", rest(topic))[0] == 204
    assert http(admin, "GET", rest(topic) + "/stats")[0] == 404


def test_subscriptions_skip_clear_peek(standalone, client, topic):
    admin = standalone.admin_url
    assert http(admin, "PUT", rest(topic))[0] == 204
    assert http(admin, "PUT", rest(topic))[0] == 409
    producer = producer_of(client, topic)
    for i in range(10):
        producer.send(f"v-{i}".encode(), properties={"i": str(i)})
    sub = rest(topic) + "/subscription/admin-sub"
    assert http(admin, "PUT", sub, {"ledgerId": -1, "entryId": -1})[0] == 204
    assert http(admin, "PUT", sub, {"ledgerId": -1, "entryId": -1})[0] == 409
    assert http(admin, "PUT", rest(topic) + "/subscription/late")[0] == 204
    status, body, _ = http(admin, "GET", rest(topic) + "/subscriptions")
    assert status == 200 and set(body) == {"admin-sub", "late"}
    subs = stats(admin, topic)["subscriptions"]
    assert subs["admin-sub"]["msgBacklog"] == 10
    assert subs["late"]["msgBacklog"] == 0

    assert http(admin, "POST", sub + "/skip/3")[0] == 204
    assert stats(admin, topic)["subscriptions"]["admin-sub"]["msgBacklog"] == 7
    status, body, headers = http(admin, "GET", sub + "/position/1")
    assert status == 200
    assert body == b"v-3"
    assert headers["X-Pulsar-PROPERTY-i"] == "3"
    assert http(admin, "GET", sub + "/position/2")[1] == b"v-4"
    assert http(admin, "GET", sub + "/position/8")[0] == 404

    assert http(admin, "POST", sub + "/skip_all")[0] == 204
    assert stats(admin, topic)["subscriptions"]["admin-sub"]["msgBacklog"] == 0

    # A consumer of the admin-made subscription starts where the cursor is.
    producer.send(b"after")
    consumer = client.subscribe(topic, "admin-sub")
    assert receive_all(consumer, 1)[0].data() == b"after"
    consumer.close()

    assert http(admin, "DELETE", sub)[0] == 204
    assert http(admin, "DELETE", sub)[0] == 404
    assert set(http(admin, "GET", rest(topic) + "/subscriptions")[1]) == {"late"}
    missing = rest(topic + "-missing")
    assert http(admin, "GET", missing + "/stats")[0] == 404
    assert http(admin, "GET", missing + "/subscriptions")[0] == 404
    producer.close()


def test_reset_cursor_by_time_and_message_id(standalone, client, topic):
    admin = standalone.admin_url
    consumer = client.subscribe(topic, "r")
    producer = producer_of(client, topic)
    ids = []
    for i in range(5):
        ids.append(producer.send(f"r-{i}".encode()))
    time.sleep(0.05)
    middle = int(time.time() * 1000)
    time.sleep(0.05)
    for i in range(5, 10):
        ids.append(producer.send(f"r-{i}".encode()))
    for msg in receive_all(consumer, 10):
        consumer.acknowledge(msg)
    wait_for(lambda: stats(admin, topic)["subscriptions"]["r"]["msgBacklog"] == 0)

    sub = rest(topic) + "/subscription/r"
    assert http(admin, "POST", f"{sub}/resetcursor/{middle}")[0] == 204
    # The consumer is disconnected and resubscribes at the new position.
    again = [m.data().decode() for m in receive_all(consumer, 5, timeout_ms=10000)]
    assert again == [f"r-{i}" for i in range(5, 10)]

    target = ids[2]
    status, body, _ = http(admin, "POST", f"{sub}/resetcursor",
                           {"ledgerId": target.ledger_id(), "entryId": target.entry_id()})
    assert status == 204, body
    again = [m.data().decode() for m in receive_all(consumer, 8, timeout_ms=10000)]
    assert again == [f"r-{i}" for i in range(2, 10)]
    receive_none(consumer)
    consumer.close()
    producer.close()


def test_magnetar_admin_cli_topic_stats(standalone, client, topic):
    producer = producer_of(client, topic)
    for i in range(4):
        producer.send(b"x")
    out = subprocess.run(
        [BIN, "admin", "--url", standalone.admin_url, "topics", "stats", topic],
        capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    body = json.loads(out.stdout)
    assert body["msgInCounter"] == 4
    assert body["publishers"][0]["producerName"] == producer.producer_name()
    producer.close()


def test_dot_names_are_refused_at_the_edge(standalone, client):
    admin = standalone.admin_url
    for path in ["/admin/v2/tenants/..", "/admin/v2/tenants/."]:
        status, body, _ = http(admin, "PUT", path, {"allowedClusters": ["standalone"]})
        assert status == 412, (path, status, body)
    for path in ["/admin/v2/namespaces/public/..", "/admin/v2/namespaces/public/."]:
        status, body, _ = http(admin, "PUT", path)
        assert status == 412, (path, status, body)
    # Topic and subscription names: the broker answers InvalidTopicName (the C++ client
    # retries that result until its operation timeout, so the wire answer is checked by the
    # raw-protocol test `bad_names_are_invalid_topic_name_on_the_wire`).


def test_a_topic_named_cursors_is_an_ordinary_topic(client):
    topic = "persistent://public/default/cursors"
    consumer = client.subscribe(topic, f"s-{uuid.uuid4().hex[:6]}",
                                initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic)
    producer.send(b"x")
    assert consumer.receive(timeout_millis=5000).data() == b"x"


def test_topic_unload_closes_the_topic_and_clients_carry_on(standalone, client, topic):
    admin = standalone.admin_url
    producer = producer_of(client, topic)
    consumer = client.subscribe(topic, "unload")
    first = producer.send(b"before")
    status, body, _ = http(admin, "PUT", rest(topic) + "/unload")
    assert status == 204, body
    # The clients reconnect (the topic loads again on the same broker, with a new ledger).
    second = producer.send(b"after")
    assert second.ledger_id() > first.ledger_id(), "the unload sealed the ledger"
    got = receive_all(consumer, 2, timeout_ms=10_000)
    assert [m.data() for m in got] == [b"before", b"after"]
    status, internal, _ = http(admin, "GET", rest(topic) + "/internalStats")
    assert status == 200
    assert [l["ledgerId"] for l in internal["ledgers"]][-2:] == [first.ledger_id(), second.ledger_id()]
    # Pulsar's answers for a topic that does not exist.
    missing = rest(topic) + "-missing/unload"
    assert http(admin, "PUT", missing)[0] == 404
