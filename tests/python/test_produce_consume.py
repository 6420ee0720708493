"""Producing and consuming with the official Python client (C++ core) against standalone."""

import re
import threading
import urllib.request

import pulsar
import pytest

from conftest import receive_all, receive_none


def test_round_trip(client, topic):
    producer = client.create_producer(topic)
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    sent = [producer.send(f"msg-{i}".encode(), properties={"i": str(i)}) for i in range(20)]
    got = receive_all(consumer, 20)
    assert [m.data() for m in got] == [f"msg-{i}".encode() for i in range(20)]
    assert [m.properties()["i"] for m in got] == [str(i) for i in range(20)]
    assert [str(m.message_id()) for m in got] == [str(s) for s in sent]
    for m in got:
        consumer.acknowledge(m)
    assert receive_none(consumer) is None


@pytest.mark.parametrize(
    "compression",
    [
        pulsar.CompressionType.NONE,
        pulsar.CompressionType.LZ4,
        pulsar.CompressionType.ZLib,
        pulsar.CompressionType.ZSTD,
        pulsar.CompressionType.SNAPPY,
    ],
    ids=["none", "lz4", "zlib", "zstd", "snappy"],
)
def test_batches_with_every_compression_arrive_intact(client, topic, compression):
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(
        topic,
        compression_type=compression,
        batching_enabled=True,
        batching_max_messages=50,
        batching_max_publish_delay_ms=50,
    )
    payloads = [(f"payload-{i}-" + "x" * (i % 300)).encode() for i in range(300)]
    for p in payloads:
        producer.send_async(p, None)
    producer.flush()
    got = receive_all(consumer, len(payloads))
    assert [m.data() for m in got] == payloads
    # Batching really happened: several messages share an entry.
    entries = {(m.message_id().ledger_id(), m.message_id().entry_id()) for m in got}
    assert len(entries) < len(payloads)
    for m in got:
        consumer.acknowledge(m)


def test_send_receipts_arrive_in_order(client, topic):
    producer = client.create_producer(topic, batching_enabled=False, max_pending_messages=2000)
    results = []
    lock = threading.Lock()
    done = threading.Event()
    n = 1000

    def callback(i):
        def cb(res, msg_id):
            with lock:
                results.append((i, res, msg_id))
                if len(results) == n:
                    done.set()

        return cb

    for i in range(n):
        producer.send_async(f"m{i}".encode(), callback(i))
    producer.flush()
    assert done.wait(30)
    assert [r[0] for r in results] == list(range(n))
    assert all(r[1] == pulsar.Result.Ok for r in results)
    ids = [(r[2].ledger_id(), r[2].entry_id()) for r in results]
    assert ids == sorted(ids) and len(set(ids)) == n


def test_broker_assigns_unique_producer_names(client, topic):
    a = client.create_producer(topic)
    b = client.create_producer(topic)
    assert a.producer_name() and b.producer_name()
    assert a.producer_name() != b.producer_name()


def test_exclusive_producer_conflict_is_fenced_and_shared_ones_are_busy(client, topic):
    first = client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
    # As Pulsar: another Exclusive producer is fenced, a Shared one is busy.
    with pytest.raises(pulsar.ProducerFenced):
        client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
    with pytest.raises(pulsar.ProducerBusy):
        client.create_producer(topic)
    first.close()
    # Once it left, another exclusive producer gets the topic.
    client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive).close()


def test_wait_for_exclusive_producer_gets_the_topic_when_the_other_leaves(client, topic):
    first = client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
    got = {}

    def create():
        got["p"] = client.create_producer(
            topic, access_mode=pulsar.ProducerAccessMode.WaitForExclusive
        )

    t = threading.Thread(target=create)
    t.start()
    t.join(1.0)
    assert t.is_alive(), "WaitForExclusive did not wait"
    first.close()
    t.join(10)
    assert "p" in got
    got["p"].send(b"mine")


def test_shared_producers_are_refused_while_an_exclusive_one_waits(client, topic):
    """As Pulsar: a WaitForExclusive producer in line makes new Shared producers ProducerBusy,
    so a stream of Shared producers cannot starve it."""
    first = client.create_producer(topic)  # Shared
    got = {}

    def create():
        got["p"] = client.create_producer(
            topic, access_mode=pulsar.ProducerAccessMode.WaitForExclusive
        )

    t = threading.Thread(target=create)
    t.start()
    t.join(1.0)
    assert t.is_alive(), "WaitForExclusive did not wait for the Shared producer"
    with pytest.raises(pulsar.ProducerBusy):
        client.create_producer(topic)
    first.close()
    t.join(10)
    assert "p" in got, "the waiting producer got the topic once the Shared one left"
    got["p"].close()
    client.create_producer(topic).close()  # nobody waits any more


def test_regex_subscription_lists_topics_of_namespace(client):
    import uuid

    prefix = f"rx-{uuid.uuid4().hex[:8]}"
    names = [f"persistent://public/default/{prefix}-{i}" for i in range(3)]
    for n in names:
        client.create_producer(n).send(b"hello " + n.encode())
    consumer = client.subscribe(
        re.compile(f"persistent://public/default/{prefix}-.*"),
        "sub",
        initial_position=pulsar.InitialPosition.Earliest,
    )
    got = sorted(m.data() for m in receive_all(consumer, 3, timeout_ms=10000))
    assert got == sorted(b"hello " + n.encode() for n in names)


def test_exclusive_with_fencing_takes_the_topic_from_the_current_producer(client, topic):
    first = client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
    first.send(b"one")
    second = client.create_producer(
        topic, access_mode=pulsar.ProducerAccessMode.ExclusiveWithFencing
    )
    second.send(b"two")
    # The fenced producer cannot publish any more.
    with pytest.raises(Exception):
        first.send(b"fenced")
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    assert [m.data() for m in receive_all(consumer, 2)] == [b"one", b"two"]


def test_messages_of_a_partitioned_topic_carry_their_partition(standalone, client, topic):
    path = "/admin/v2/persistent/" + topic[len("persistent://"):] + "/partitions"
    req = urllib.request.Request(
        standalone.admin_url + path, data=b"3", method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 204
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)

    def router(msg, num_partitions):
        return int(msg.partition_key()) % num_partitions

    producer = client.create_producer(topic, message_router=router, batching_enabled=False)
    sent = {}
    for i in range(6):
        mid = producer.send(f"m{i}".encode(), partition_key=str(i))
        assert mid.partition() == i % 3
        sent[f"m{i}".encode()] = i % 3
    got = receive_all(consumer, 6)
    assert {m.data(): m.message_id().partition() for m in got} == sent
