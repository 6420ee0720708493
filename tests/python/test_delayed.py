"""Delayed delivery (deliver_at / deliver_after) with the official client.

Pulsar holds a delayed message back on Shared and Key_Shared subscriptions until its
`deliver_at_time`, and delivers it at once on Exclusive and Failover ones. The broker keeps the
delayed entries in memory; after a restart the cursor reads them again, so they are still
delivered, and not before their time.
"""

import time
from datetime import timedelta

import pulsar
import pytest

from conftest import make_client, receive_none

EARLIEST = pulsar.InitialPosition.Earliest
DELAY_S = 2.0
# Not received during the first EARLY_S seconds (margin for clocks and scheduling).
EARLY_S = 1.5


def receive_one(consumer, timeout_ms):
    return consumer.receive(timeout_millis=timeout_ms)


def assert_held_until(consumer, sent_at, delay_s, expected):
    """Nothing arrives until `delay_s - 0.5` s after `sent_at`; then `expected` does."""
    quiet_until = sent_at + delay_s - 0.5
    while (left_s := quiet_until - time.monotonic()) > 0:
        m = receive_none(consumer, max(1, int(left_s * 1000)))
        assert m is None, f"{m.data()!r} arrived {time.monotonic() - sent_at:.2f} s after send"
    m = receive_one(consumer, 10_000)
    elapsed = time.monotonic() - sent_at
    assert m.data() == expected
    assert elapsed >= delay_s - 0.5, f"delivered after {elapsed:.2f} s"
    consumer.acknowledge(m)
    return elapsed


@pytest.mark.parametrize("consumer_type", [pulsar.ConsumerType.Shared,
                                           pulsar.ConsumerType.KeyShared])
def test_deliver_after_holds_the_message_on_shared_subscriptions(client, topic, consumer_type):
    c = client.subscribe(topic, "sub", consumer_type=consumer_type, initial_position=EARLIEST)
    p = client.create_producer(topic, batching_enabled=False)
    p.send(b"later", deliver_after=timedelta(seconds=DELAY_S))
    sent_at = time.monotonic()
    p.send(b"now")
    # The immediate message is not stuck behind the delayed one.
    m = receive_one(c, 5000)
    assert m.data() == b"now"
    assert time.monotonic() - sent_at < EARLY_S
    c.acknowledge(m)
    elapsed = assert_held_until(c, sent_at, DELAY_S, b"later")
    assert elapsed < DELAY_S + 5
    assert receive_none(c) is None


def test_deliver_at_holds_the_message_until_that_time(client, topic):
    c = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)
    p = client.create_producer(topic, batching_enabled=False)
    at_ms = int(time.time() * 1000) + int(DELAY_S * 1000)
    sent_at = time.monotonic()
    p.send(b"at", deliver_at=at_ms)
    assert_held_until(c, sent_at, DELAY_S, b"at")
    assert time.time() * 1000 >= at_ms - 100


def test_delayed_messages_come_out_in_time_order(client, topic):
    c = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)
    p = client.create_producer(topic, batching_enabled=False)
    p.send(b"third", deliver_after=timedelta(milliseconds=2500))
    p.send(b"first", deliver_after=timedelta(milliseconds=1000))
    p.send(b"second", deliver_after=timedelta(milliseconds=1800))
    got = []
    for _ in range(3):
        m = receive_one(c, 10_000)
        got.append(m.data())
        c.acknowledge(m)
    assert got == [b"first", b"second", b"third"]


@pytest.mark.parametrize("consumer_type", [pulsar.ConsumerType.Exclusive,
                                           pulsar.ConsumerType.Failover])
def test_exclusive_and_failover_receive_delayed_messages_at_once(client, topic, consumer_type):
    c = client.subscribe(topic, "sub", consumer_type=consumer_type)
    p = client.create_producer(topic, batching_enabled=False)
    sent_at = time.monotonic()
    p.send(b"delayed", deliver_after=timedelta(seconds=30))
    m = receive_one(c, 5000)
    assert m.data() == b"delayed"
    assert time.monotonic() - sent_at < 5


def test_client_sends_delayed_messages_outside_batches(client, topic):
    """The C++ client never batches a delayed message (ProducerImpl::canAddToBatch); the
    immediate messages around it still travel in one batch and are not held back."""
    c = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)
    p = client.create_producer(topic, batching_enabled=True,
                               batching_max_publish_delay_ms=50)
    sent_at = time.monotonic()
    p.send_async(b"a", None)
    p.send_async(b"late", None, deliver_after=timedelta(seconds=DELAY_S))
    p.send_async(b"b", None)
    p.flush()
    now = {}
    for _ in range(2):
        m = receive_one(c, 5000)
        now[m.data()] = m.message_id()
        c.acknowledge(m)
    assert set(now) == {b"a", b"b"}
    assert time.monotonic() - sent_at < EARLY_S
    late = receive_one(c, 10_000)
    assert late.data() == b"late"
    assert time.monotonic() - sent_at >= DELAY_S - 0.5
    assert late.message_id().batch_index() == -1, "the delayed message was batched"


def test_delayed_messages_survive_a_restart(fresh_standalone, topic):
    delay_s = 10.0
    cl = make_client(fresh_standalone.url)
    c = cl.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)
    p = cl.create_producer(topic, batching_enabled=False)
    sent_at = time.monotonic()
    p.send(b"delayed", deliver_after=timedelta(seconds=delay_s))
    p.send(b"now")
    m = receive_one(c, 5000)
    assert m.data() == b"now"
    c.acknowledge(m)
    cl.close()
    fresh_standalone.stop()
    fresh_standalone.start()
    assert time.monotonic() - sent_at < delay_s - 1.5, "the restart took too long to test"
    cl = make_client(fresh_standalone.url)
    try:
        c = cl.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)
        assert_held_until(c, sent_at, delay_s, b"delayed")
        assert receive_none(c) is None
    finally:
        cl.close()
