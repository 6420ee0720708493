"""Subscription types, acknowledgements, redelivery, readers, seek and unsubscribe."""

import time
from datetime import timedelta

import pulsar
import pytest

from conftest import make_client, receive_all, receive_none

EARLIEST = pulsar.InitialPosition.Earliest


def produce(client, topic, n, prefix="m"):
    p = client.create_producer(topic, batching_enabled=False)
    ids = [p.send(f"{prefix}{i}".encode()) for i in range(n)]
    p.close()
    return ids


def test_second_exclusive_consumer_is_consumer_busy(client, topic):
    client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Exclusive)
    with pytest.raises(pulsar.ConsumerBusy):
        client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Exclusive)
    # A different type on the same subscription is refused too.
    with pytest.raises(pulsar.ConsumerBusy):
        client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)


def test_shared_subscription_spreads_messages(client, topic):
    a = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared,
                         receiver_queue_size=10, initial_position=EARLIEST)
    b = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared,
                         receiver_queue_size=10, initial_position=EARLIEST)
    produce(client, topic, 100)
    seen = {"a": [], "b": []}
    deadline = time.monotonic() + 15
    while len(seen["a"]) + len(seen["b"]) < 100 and time.monotonic() < deadline:
        for name, c in (("a", a), ("b", b)):
            m = receive_none(c, 100)
            if m is not None:
                seen[name].append(m.data())
                c.acknowledge(m)
    assert len(seen["a"]) + len(seen["b"]) == 100
    assert sorted(seen["a"] + seen["b"]) == sorted(f"m{i}".encode() for i in range(100))
    assert seen["a"] and seen["b"], "one consumer got everything"


def test_failover_sends_to_the_active_consumer_then_fails_over(client, topic):
    a = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Failover,
                         consumer_name="a", initial_position=EARLIEST)
    b = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Failover,
                         consumer_name="b", initial_position=EARLIEST)
    produce(client, topic, 10)
    got = receive_all(a, 10)
    assert [m.data() for m in got] == [f"m{i}".encode() for i in range(10)]
    assert receive_none(b) is None
    for m in got[:5]:
        a.acknowledge(m)
    a.close()
    # The unacknowledged half goes to the new active consumer.
    rest = receive_all(b, 5)
    assert [m.data() for m in rest] == [f"m{i}".encode() for i in range(5, 10)]


def test_unacked_messages_come_back_after_consumer_close(client, topic):
    c = client.subscribe(topic, "sub", initial_position=EARLIEST)
    produce(client, topic, 10)
    got = receive_all(c, 10)
    for m in got[:3]:
        c.acknowledge(m)  # individual
    c.acknowledge_cumulative(got[5])  # cumulative up to m5
    c.acknowledge(got[8])
    c.close()
    c2 = client.subscribe(topic, "sub", initial_position=EARLIEST)
    again = [m.data() for m in receive_all(c2, 2)]
    assert again == [b"m6", b"m7"] or again == [b"m6", b"m9"]
    rest = [again[1]] + ([m.data() for m in receive_all(c2, 1)] if again[1] == b"m7" else [])
    assert b"m9" in rest
    assert receive_none(c2) is None


def test_redelivery_count_and_negative_ack(client, topic):
    c = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared,
                         negative_ack_redelivery_delay_ms=100, initial_position=EARLIEST)
    produce(client, topic, 3)
    got = receive_all(c, 3)
    assert all(m.redelivery_count() == 0 for m in got)
    c.acknowledge(got[0])
    c.acknowledge(got[2])
    c.negative_acknowledge(got[1])
    m = c.receive(timeout_millis=5000)
    assert m.data() == b"m1"
    assert m.redelivery_count() >= 1
    c.acknowledge(m)
    assert receive_none(c) is None


def test_acks_persist_across_resubscribe(client, topic):
    c = client.subscribe(topic, "sub", initial_position=EARLIEST)
    produce(client, topic, 6)
    got = receive_all(c, 6)
    for m in got[:4]:
        c.acknowledge(m)
    c.close()
    c = client.subscribe(topic, "sub", initial_position=EARLIEST)
    assert [m.data() for m in receive_all(c, 2)] == [b"m4", b"m5"]


def test_reader_from_earliest_and_from_a_message_id(client, topic):
    ids = produce(client, topic, 10)
    r = client.create_reader(topic, pulsar.MessageId.earliest)
    assert [m.data() for m in receive_all(r, 10)] == [f"m{i}".encode() for i in range(10)]
    assert not r.has_message_available()
    r.close()
    r = client.create_reader(topic, ids[4])
    assert [m.data() for m in receive_all(r, 5)] == [f"m{i}".encode() for i in range(5, 10)]
    r.close()
    r = client.create_reader(topic, pulsar.MessageId.latest)
    assert not r.has_message_available()
    p = client.create_producer(topic)
    p.send(b"after")
    assert r.read_next(5000).data() == b"after"


def test_seek_by_message_id_and_by_time(client, topic):
    c = client.subscribe(topic, "sub", initial_position=EARLIEST)
    ids = produce(client, topic, 5, prefix="a")
    time.sleep(0.05)
    cut = int(time.time() * 1000)
    time.sleep(0.05)
    produce(client, topic, 5, prefix="b")
    got = receive_all(c, 10)
    for m in got:
        c.acknowledge(m)
    c.seek(ids[2])
    # The broker rewinds to a2's entry; the C++ client skips the seek id itself.
    again = [m.data() for m in receive_all(c, 7)]
    if again[0] == b"a2":
        again = again[1:] + [m.data() for m in receive_all(c, 1)]
    assert again == [b"a3", b"a4"] + [f"b{i}".encode() for i in range(5)]
    assert receive_none(c) is None
    c.seek(cut)
    again = [m.data() for m in receive_all(c, 5)]
    assert again == [f"b{i}".encode() for i in range(5)]


def test_unsubscribe_removes_the_subscription(client, topic):
    c = client.subscribe(topic, "sub", initial_position=EARLIEST)
    produce(client, topic, 3)
    receive_all(c, 3)
    c.unsubscribe()
    # A new subscription of that name starts over from its initial position.
    c = client.subscribe(topic, "sub", initial_position=EARLIEST)
    assert [m.data() for m in receive_all(c, 3)] == [b"m0", b"m1", b"m2"]


def test_key_shared_keeps_each_key_on_one_consumer_in_order(client, topic):
    consumers = [
        client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.KeyShared,
                         receiver_queue_size=20, initial_position=EARLIEST)
        for _ in range(2)
    ]
    p = client.create_producer(topic, batching_enabled=False)
    keys = [f"key-{k}" for k in range(16)]
    n = 320
    for i in range(n):
        p.send(f"{i}".encode(), partition_key=keys[i % len(keys)])
    owner, order = {}, {}
    deadline = time.monotonic() + 20
    received = 0
    while received < n and time.monotonic() < deadline:
        for idx, c in enumerate(consumers):
            m = receive_none(c, 50)
            if m is None:
                continue
            received += 1
            key = m.partition_key()
            assert owner.setdefault(key, idx) == idx, f"{key} went to both consumers"
            order.setdefault(key, []).append(int(m.data()))
            c.acknowledge(m)
    assert received == n
    for key, seq in order.items():
        assert seq == sorted(seq), f"{key} out of order"
    assert set(owner.values()) == {0, 1}, "one consumer got every key"


def test_dead_letter_topic_gets_messages_after_max_redeliveries(client, topic):
    dlq = topic + "-DLQ"
    dead = client.subscribe(dlq, "dlq-sub", initial_position=EARLIEST)
    c = client.subscribe(
        topic, "sub", consumer_type=pulsar.ConsumerType.Shared,
        negative_ack_redelivery_delay_ms=100, initial_position=EARLIEST,
        dead_letter_policy=pulsar.ConsumerDeadLetterPolicy(
            max_redeliver_count=2, dead_letter_topic=dlq),
    )
    produce(client, topic, 1)
    deliveries = 0
    while True:
        m = receive_none(c, 3000)
        if m is None:
            break
        deliveries += 1
        c.negative_acknowledge(m)
    assert deliveries == 3
    assert dead.receive(timeout_millis=5000).data() == b"m0"


def test_has_message_available_on_an_empty_topic(client, topic):
    client.create_producer(topic)  # creates the topic
    r = client.create_reader(topic, pulsar.MessageId.earliest)
    assert not r.has_message_available()


def test_retry_topic_as_the_java_client_drives_it(client, topic):
    """Retry topics are client-side (Java's `enableRetry` + `reconsumeLater`; the C++/Python
    client has none): the consumer subscribes Shared to the topic and its `{sub}-RETRY` topic,
    and a message to retry later is re-published to the retry topic with deliver_after and the
    RECONSUMETIMES / REAL_TOPIC / ORIGIN_MESSAGE_ID properties, then acknowledged. After
    max retries it goes to `{sub}-DLQ`. This drives the same frames against the broker:
    multi-topic Shared subscription, delayed delivery on the retry topic, DLQ production."""
    sub = "retrying"
    retry_topic = f"{topic}-{sub}-RETRY"
    dlq_topic = f"{topic}-{sub}-DLQ"
    max_retries = 2
    delay = timedelta(milliseconds=800)
    c = client.subscribe([topic, retry_topic], sub, consumer_type=pulsar.ConsumerType.Shared,
                         initial_position=EARLIEST)
    dead = client.subscribe(dlq_topic, "dlq-sub", initial_position=EARLIEST)
    retry_producer = client.create_producer(retry_topic, batching_enabled=False)
    dlq_producer = client.create_producer(dlq_topic)
    client.create_producer(topic).send(b"job", properties={"k": "v"})

    deliveries = []
    while len(deliveries) <= max_retries:
        m = c.receive(timeout_millis=10_000)
        props = m.properties()
        times = int(props.get("RECONSUMETIMES", "0"))
        deliveries.append((time.monotonic(), times, m.topic_name()))
        assert m.data() == b"job" and props.get("k") == "v"
        if times >= max_retries:
            dlq_producer.send(m.data(), properties=props)
        else:
            retry_producer.send(m.data(), properties={
                **props,
                "RECONSUMETIMES": str(times + 1),
                "REAL_TOPIC": topic,
                "ORIGIN_MESSAGE_ID": str(m.message_id()),
            }, deliver_after=delay)
        c.acknowledge(m)

    assert [d[1] for d in deliveries] == [0, 1, 2]
    assert deliveries[0][2] == topic and deliveries[1][2] == retry_topic
    for (t0, _, _), (t1, _, _) in zip(deliveries, deliveries[1:]):
        assert t1 - t0 >= delay.total_seconds() - 0.2, "a retry came back before its delay"
    dead_letter = dead.receive(timeout_millis=5000)
    assert dead_letter.data() == b"job"
    assert dead_letter.properties()["RECONSUMETIMES"] == "2"
    assert receive_none(c, 1000) is None, "nothing is delivered again once acknowledged"


def test_seek_to_earliest_rewinds_to_the_first_message(client, topic):
    """The client sends MessageId.earliest as ledger and entry -1; it means the beginning."""
    c = client.subscribe(topic, "sub", initial_position=EARLIEST)
    produce(client, topic, 3)
    for m in receive_all(c, 3):
        c.acknowledge(m)
    c.seek(pulsar.MessageId.earliest)
    assert [m.data() for m in receive_all(c, 3)] == [b"m0", b"m1", b"m2"]
    c.seek(pulsar.MessageId.latest)
    assert receive_none(c) is None
    produce(client, topic, 1, prefix="after")
    assert c.receive(timeout_millis=5000).data() == b"after0"


def test_inclusive_reader_starts_at_the_given_message(client, topic):
    ids = produce(client, topic, 4)
    r = client.create_reader(topic, ids[1], start_message_id_inclusive=True)
    assert [m.data() for m in receive_all(r, 3)] == [b"m1", b"m2", b"m3"]
    r.close()
    # Exclusive of it (the default), the reader starts after it.
    r = client.create_reader(topic, ids[1])
    assert r.read_next(5000).data() == b"m2"
    r.close()
    # MessageId.latest, inclusive: the last message is read (the C++ client seeks to it —
    # GET_LAST_MESSAGE_ID, then SEEK — when asked whether a message is available).
    r = client.create_reader(topic, pulsar.MessageId.latest, start_message_id_inclusive=True)
    assert r.has_message_available()
    assert r.read_next(5000).data() == b"m3"
    # Seeking an inclusive reader to a message id delivers that message.
    r.seek(ids[0])
    assert r.read_next(5000).data() == b"m0"
    r.close()


def test_seek_on_a_shared_consumer_by_id_and_by_time(client, topic):
    c = client.subscribe(
        topic, "sub", consumer_type=pulsar.ConsumerType.Shared, initial_position=EARLIEST
    )
    ids = produce(client, topic, 3, prefix="a")
    time.sleep(0.05)
    cut = int(time.time() * 1000)
    time.sleep(0.05)
    produce(client, topic, 2, prefix="b")
    for m in receive_all(c, 5):
        c.acknowledge(m)
    c.seek(ids[1])
    got = [m.data() for m in receive_all(c, 3)]
    assert got in ([b"a1", b"a2", b"b0"], [b"a2", b"b0", b"b1"]), got
    c.seek(cut)
    assert [m.data() for m in receive_all(c, 2)] == [b"b0", b"b1"]


def test_an_ack_beyond_the_last_message_is_refused_and_skips_nothing(standalone, client, topic):
    c = client.subscribe(topic, "sub", initial_position=EARLIEST)
    ids = produce(client, topic, 2)
    # An id far beyond anything written, on the topic's current ledger.
    beyond = pulsar.MessageId(-1, ids[-1].ledger_id(), ids[-1].entry_id() + 1000, -1)
    c.acknowledge_cumulative(beyond)
    c.close()  # flushes the ack
    produce(client, topic, 2, prefix="later")
    # Another client (this one's ack tracker would filter ids below its own ack).
    other = make_client(standalone.url)
    try:
        c = other.subscribe(topic, "sub", initial_position=EARLIEST)
        got = [m.data() for m in receive_all(c, 4)]
        assert got == [b"m0", b"m1", b"later0", b"later1"]
    finally:
        other.close()
