"""Batch-index acknowledgements (Pulsar's PIP-54): a consumer with `batch_index_ack_enabled`
acknowledges single messages of a batch entry; the broker keeps the entry's unacknowledged
indexes in the cursor (persisted with it) and sends them as the MESSAGE `ack_set`, so a later
consumer of the subscription receives exactly the messages still unacknowledged."""

import pulsar

from conftest import make_client, receive_all, receive_none

EARLIEST = pulsar.InitialPosition.Earliest
BATCH = 10


def produce_batch(client, topic, prefix="m", n=BATCH):
    """n messages in one entry: the batch is sent when full, never by the (long) timer."""
    p = client.create_producer(topic, batching_enabled=True, batching_max_messages=n,
                               batching_max_publish_delay_ms=60_000)
    for i in range(n):
        p.send_async(f"{prefix}{i}".encode(), None)
    p.flush()
    p.close()


def subscribe(client, topic, batch_index_ack=True, **kw):
    return client.subscribe(topic, "sub", initial_position=EARLIEST,
                            batch_index_ack_enabled=batch_index_ack, **kw)


def receive_batch(consumer, prefix="m", n=BATCH):
    msgs = receive_all(consumer, n)
    assert [m.data() for m in msgs] == [f"{prefix}{i}".encode() for i in range(n)]
    ids = [m.message_id() for m in msgs]
    assert len({(i.ledger_id(), i.entry_id()) for i in ids}) == 1, "not one batch entry"
    assert [i.batch_index() for i in ids] == list(range(n))
    return msgs


def datas(msgs):
    return [m.data() for m in msgs]


def test_individual_batch_index_acks_are_not_redelivered(client, topic):
    produce_batch(client, topic)
    c = subscribe(client, topic)
    msgs = receive_batch(c)
    for i in (1, 3, 5, 7):
        c.acknowledge(msgs[i])
    c.close()  # flushes the grouped acks before CLOSE_CONSUMER

    c = subscribe(client, topic)
    want = [f"m{i}".encode() for i in (0, 2, 4, 6, 8, 9)]
    got = receive_all(c, len(want))
    assert datas(got) == want
    assert [m.message_id().batch_index() for m in got] == [0, 2, 4, 6, 8, 9]
    assert receive_none(c) is None
    # This consumer acks part of the rest; the next one gets the remainder only.
    for m in got[:3]:
        c.acknowledge(m)
    c.close()

    c = subscribe(client, topic)
    got = receive_all(c, 3)
    assert datas(got) == [b"m6", b"m8", b"m9"]
    assert receive_none(c) is None
    for m in got:
        c.acknowledge(m)
    c.close()

    # Every index acknowledged: the entry is acknowledged whole.
    c = subscribe(client, topic)
    assert receive_none(c) is None


def test_batch_index_acks_survive_a_restart(fresh_standalone, topic):
    s = fresh_standalone
    client = make_client(s.url)
    produce_batch(client, topic, "a")
    produce_batch(client, topic, "b")
    c = subscribe(client, topic)
    a = receive_batch(c, "a")
    b = receive_batch(c, "b")
    for i in (0, 4, 9):
        c.acknowledge(a[i])
    for i in range(BATCH - 1):
        c.acknowledge(b[i])
    c.close()
    client.close()

    assert s.stop() == 0  # SIGTERM: the cursor record is written on close
    s.start()
    client = make_client(s.url)
    c = subscribe(client, topic)
    want = [f"a{i}".encode() for i in (1, 2, 3, 5, 6, 7, 8)] + [b"b9"]
    got = receive_all(c, len(want))
    assert datas(got) == want
    assert receive_none(c) is None
    client.close()


def test_cumulative_ack_inside_a_batch(client, topic):
    produce_batch(client, topic, "a")
    produce_batch(client, topic, "b")
    c = subscribe(client, topic)
    receive_batch(c, "a")
    b = receive_batch(c, "b")
    # Everything before the entry, and indexes 0..=3 of it.
    c.acknowledge_cumulative(b[3])
    c.close()

    c = subscribe(client, topic)
    want = [f"b{i}".encode() for i in range(4, BATCH)]
    got = receive_all(c, len(want))
    assert datas(got) == want
    assert receive_none(c) is None


def test_shared_consumers_continue_a_partially_acked_batch(client, topic):
    produce_batch(client, topic)
    shared = pulsar.ConsumerType.Shared
    a = subscribe(client, topic, consumer_type=shared)
    msgs = receive_batch(a)
    for m in msgs[:5]:
        a.acknowledge(m)
    b = subscribe(client, topic, consumer_type=shared)
    a.close()  # the entry goes back to the subscription with its unacked indexes
    got = receive_all(b, 5)
    assert datas(got) == [f"m{i}".encode() for i in range(5, BATCH)]
    assert receive_none(b) is None


def test_without_batch_index_ack_a_partial_batch_is_redelivered_whole(client, topic):
    produce_batch(client, topic)
    c = subscribe(client, topic, batch_index_ack=False)
    msgs = receive_batch(c)
    for i in (1, 3, 5):
        c.acknowledge(msgs[i])
    c.close()

    # The client acks an entry only once all its messages are acked: nothing reached the broker.
    c = subscribe(client, topic, batch_index_ack=False)
    msgs = receive_batch(c)
    for m in msgs:
        c.acknowledge(m)
    c.close()

    c = subscribe(client, topic, batch_index_ack=False)
    assert receive_none(c) is None
