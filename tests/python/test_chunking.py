"""Chunked messages: the official client splits a message bigger than the broker's max message
size (5 MiB, advertised in CONNECTED) into chunks sent as separate SENDs; the broker stores and
dispatches each chunk as an entry and consumers reassemble them."""

import hashlib
import os
import threading
import time
from collections import Counter

import pulsar
import pytest

from conftest import make_client, receive_all

BIG_BYTES = 12 * 1024 * 1024
TIMEOUT_MS = 30000
# Shared tests: ~7 MiB is two chunks at the 5 MiB max message size; three of them keep CI quick.
SHARED_BIG_BYTES = 7 * 1024 * 1024
SHARED_BIG_COUNT = 3
SHARED_DEADLINE_S = 60


def produce(client, topic, big):
    """A small message, the big one (chunked), two small ones; returns the payloads in order."""
    producer = client.create_producer(topic, chunking_enabled=True, batching_enabled=False)
    sent = [b"first", big, b"second", b"third"]
    for p in sent:
        producer.send(p)
    producer.close()
    return sent


def check(received, expected):
    assert len(received) == len(expected)
    for got, want in zip(received, expected):
        # Compare lengths first: a failure message of two 12 MiB values is useless.
        assert len(got.data()) == len(want)
        assert got.data() == want


def test_chunked_message_reaches_exclusive_shared_and_reader(standalone, client, topic):
    big = os.urandom(BIG_BYTES)
    exclusive = client.subscribe(topic, "excl", consumer_type=pulsar.ConsumerType.Exclusive)
    shared = client.subscribe(topic, "shared", consumer_type=pulsar.ConsumerType.Shared)
    sent = produce(client, topic, big)

    for consumer in (exclusive, shared):
        got = receive_all(consumer, len(sent), timeout_ms=TIMEOUT_MS)
        check(got, sent)
        for m in got:
            consumer.acknowledge(m)

    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    check(receive_all(reader, len(sent), timeout_ms=TIMEOUT_MS), sent)
    reader.close()


def test_chunked_message_survives_a_restart(fresh_standalone, topic):
    s = fresh_standalone
    big = os.urandom(BIG_BYTES)
    client = make_client(s.url)
    client.subscribe(topic, "durable").close()
    sent = produce(client, topic, big)
    client.close()
    s.stop()

    s.start()
    client = make_client(s.url)
    try:
        consumer = client.subscribe(topic, "durable")
        check(receive_all(consumer, len(sent), timeout_ms=TIMEOUT_MS), sent)
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        check(receive_all(reader, len(sent), timeout_ms=TIMEOUT_MS), sent)
    finally:
        client.close()


def digest(data):
    return hashlib.sha256(data).hexdigest()


def interleaved_payloads():
    """Small messages around each big (chunked) one: s0 B0 s1 B1 s2 B2 s3."""
    out = []
    for i in range(SHARED_BIG_COUNT):
        out.append(b"small-%d" % i)
        out.append(os.urandom(SHARED_BIG_BYTES))
    out.append(b"small-%d" % SHARED_BIG_COUNT)
    return out


def send_all(client, topic, payloads):
    producer = client.create_producer(topic, chunking_enabled=True, batching_enabled=False)
    for p in payloads:
        producer.send(p)
    producer.close()


def drain(consumers, n, deadline_s=SHARED_DEADLINE_S):
    """Receives from all consumers in turn until n messages arrived (or the deadline); acks each.
    Returns {consumer index: [digest, ...]}."""
    got = {i: [] for i in range(len(consumers))}
    deadline = time.monotonic() + deadline_s
    while sum(len(v) for v in got.values()) < n and time.monotonic() < deadline:
        for i, c in enumerate(consumers):
            try:
                m = c.receive(timeout_millis=200)
            except pulsar.Timeout:
                continue
            got[i].append(digest(m.data()))
            c.acknowledge(m)
    return got


@pytest.mark.parametrize("n_consumers", [2, 3])
def test_chunked_messages_on_shared_subscription_with_several_consumers(
        standalone, client, topic, n_consumers):
    consumers = [
        client.subscribe(topic, "shared", consumer_type=pulsar.ConsumerType.Shared,
                         consumer_name=f"c{i}")
        for i in range(n_consumers)
    ]
    payloads = interleaved_payloads()
    send_all(client, topic, payloads)

    got = drain(consumers, len(payloads))
    everything = [d for v in got.values() for d in v]
    # Every message exactly once across the consumers, the big ones intact (same hash).
    assert Counter(everything) == Counter(digest(p) for p in payloads)
    # Really spread over several consumers (a single receiver would prove nothing).
    assert sum(1 for v in got.values() if v) > 1, got
    # Nothing more arrives afterwards (no leftover chunk redelivered).
    for c in consumers:
        with pytest.raises(pulsar.Timeout):
            c.receive(timeout_millis=300)


def test_chunked_messages_survive_a_shared_consumer_closing_mid_stream(standalone, client, topic):
    leaving = client.subscribe(topic, "shared", consumer_type=pulsar.ConsumerType.Shared,
                               consumer_name="leaving")
    staying = client.subscribe(topic, "shared", consumer_type=pulsar.ConsumerType.Shared,
                               consumer_name="staying")
    payloads = interleaved_payloads()
    first, rest = payloads[:4], payloads[4:]  # s0 B0 s1 B1 | s2 B2 s3
    producer = client.create_producer(topic, chunking_enabled=True, batching_enabled=False)
    for p in first:
        producer.send(p)
    # The leaving consumer has its share of the first part (whole messages, chunks included)
    # prefetched; it takes one and closes without acknowledging anything while the producer
    # sends the rest, so its chunks go back to the subscription mid-stream.
    leaving.receive(timeout_millis=TIMEOUT_MS)
    sender = threading.Thread(target=lambda: [producer.send(p) for p in rest])
    sender.start()
    try:
        leaving.close()
        got = drain([staying], len(payloads))[0]
    finally:
        sender.join()
        producer.close()
    # The staying consumer gets every message exactly once, the big ones intact.
    assert Counter(got) == Counter(digest(p) for p in payloads)
    with pytest.raises(pulsar.Timeout):
        staying.receive(timeout_millis=300)
