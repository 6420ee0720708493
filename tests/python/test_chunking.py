"""Chunked messages: the official client splits a message bigger than the broker's max message
size (5 MiB, advertised in CONNECTED) into chunks sent as separate SENDs; the broker stores and
dispatches each chunk as an entry and consumers reassemble them."""

import os

import pulsar

from conftest import make_client, receive_all

BIG_BYTES = 12 * 1024 * 1024
TIMEOUT_MS = 30000


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
