"""Key_Shared STICKY ranges and AUTO_SPLIT ordering protection with the official client.

Pulsar's sticky key hash of a message is Murmur3-32 (seed 0) of its ordering key, else its
partition key, with the sign bit cleared, modulo 65,536 (0 counts as 1). STICKY consumers own
exactly the ranges they declare; overlapping ranges are refused with ConsumerAssignError.
AUTO_SPLIT keeps each key in order when a consumer joins (PIP-379 draining hashes): a key
that moves to the new consumer reaches it only after the old consumer acknowledged that key's
earlier messages.
"""

import time

import pulsar
import pytest

from conftest import receive_none

EARLIEST = pulsar.InitialPosition.Earliest
KEY_SHARED = pulsar.ConsumerType.KeyShared


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """Reference Murmur3 x86 32-bit, as Pulsar's Murmur3_32Hash (before its sign mask)."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & mask

    h = seed
    body = len(data) // 4 * 4
    for i in range(0, body, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = rotl((k * c1) & mask, 15) * c2 & mask
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & mask
    k = 0
    for i, b in enumerate(data[body:]):
        k |= b << (8 * i)
    if len(data) % 4:
        h ^= rotl((k * c1) & mask, 15) * c2 & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def sticky_hash(key: str) -> int:
    h = (murmur3_32(key.encode()) & 0x7FFFFFFF) % 65536
    return h or 1


def in_ranges(h, ranges):
    return any(start <= h <= end for start, end in ranges)


def sticky(client, topic, ranges, **kw):
    return client.subscribe(
        topic, "sub", consumer_type=KEY_SHARED, initial_position=EARLIEST,
        key_shared_policy=pulsar.ConsumerKeySharedPolicy(
            key_shared_mode=pulsar.KeySharedMode.Sticky, sticky_ranges=ranges),
        **kw)


def drain(consumer, idle_ms=700):
    """Every message the consumer gets until it stays idle for `idle_ms`, acknowledged."""
    out = []
    while (m := receive_none(consumer, idle_ms)) is not None:
        out.append(m)
        consumer.acknowledge(m)
    return out


def test_murmur3_reference_values():
    assert murmur3_32(b"") == 0
    assert murmur3_32(b"hello") == 0x248BFA47
    assert murmur3_32(b"The quick brown fox jumps over the lazy dog") == 0x2E4FF723


def test_sticky_consumers_receive_only_keys_in_their_ranges(client, topic):
    low, high = [(0, 20000)], [(20001, 40000), (40001, 65535)]
    c_low = sticky(client, topic, low)
    c_high = sticky(client, topic, high)
    p = client.create_producer(topic, batching_enabled=False)
    keys = [f"key-{i}" for i in range(40)]
    for i in range(120):
        p.send(f"{i}".encode(), partition_key=keys[i % len(keys)])
    got_low, got_high = drain(c_low), drain(c_high)
    assert len(got_low) + len(got_high) == 120
    assert got_low and got_high
    for m in got_low:
        assert in_ranges(sticky_hash(m.partition_key()), low), m.partition_key()
    for m in got_high:
        assert in_ranges(sticky_hash(m.partition_key()), high), m.partition_key()
    for got in (got_low, got_high):
        per_key = {}
        for m in got:
            per_key.setdefault(m.partition_key(), []).append(int(m.data()))
        assert all(seq == sorted(seq) for seq in per_key.values())


def test_ordering_key_takes_precedence_for_sticky_ranges(client, topic):
    ranges = [(0, 32767)]
    c = sticky(client, topic, ranges)
    p = client.create_producer(topic, batching_enabled=False)
    keys = [f"ok-{i}" for i in range(30)]
    for k in keys:
        # The partition key would route elsewhere; the ordering key decides.
        p.send(k.encode(), partition_key="partition", ordering_key=k)
    want = {k.encode() for k in keys if in_ranges(sticky_hash(k), ranges)}
    assert want and len(want) < len(keys)
    assert {m.data() for m in drain(c)} == want


def test_uncovered_hashes_wait_for_a_sticky_consumer(client, topic):
    first = [(0, 32767)]
    c1 = sticky(client, topic, first)
    p = client.create_producer(topic, batching_enabled=False)
    keys = [f"k{i}" for i in range(30)]
    for i, k in enumerate(keys):
        p.send(f"{i}".encode(), partition_key=k)
    covered = [k for k in keys if in_ranges(sticky_hash(k), first)]
    assert 0 < len(covered) < len(keys)
    got1 = drain(c1)
    assert sorted(m.partition_key() for m in got1) == sorted(covered)
    # The rest waits for a consumer of the other half, then arrives in order.
    c2 = sticky(client, topic, [(32768, 65535)])
    got2 = drain(c2, idle_ms=1500)
    assert [m.partition_key() for m in got2] == [k for k in keys if k not in covered]


@pytest.mark.parametrize("second", [[(1000, 3000)], [(0, 1000)], [(2000, 2000)],
                                    [(0, 10), (1500, 1600)]])
def test_overlapping_sticky_ranges_are_refused(client, topic, second):
    c1 = sticky(client, topic, [(1000, 2000)])
    with pytest.raises(pulsar.ConsumerAssignError):
        sticky(client, topic, second)
    # The first consumer is unaffected, and a disjoint range is accepted.
    c3 = sticky(client, topic, [(2001, 65535)])
    c1.close()
    c3.close()


def test_a_consumer_of_another_key_shared_mode_is_refused(client, topic):
    auto = client.subscribe(topic, "sub", consumer_type=KEY_SHARED)
    with pytest.raises(pulsar.ConsumerBusy):
        sticky(client, topic, [(0, 100)])
    auto.close()
    # With the subscription empty again, STICKY may start it.
    sticky(client, topic, [(0, 100)]).close()


def test_auto_split_join_waits_for_the_old_consumer_acks(client, topic):
    """A second AUTO_SPLIT consumer joins while the first holds every key unacknowledged:
    no message of a key reaches the newcomer before the first consumer acknowledged that
    key's earlier messages; afterwards each key stays in order on one consumer."""
    keys = [f"key-{i}" for i in range(12)]
    p = client.create_producer(topic, batching_enabled=False)
    c1 = client.subscribe(topic, "sub", consumer_type=KEY_SHARED, receiver_queue_size=1000,
                          initial_position=EARLIEST, consumer_name="old")
    first = 120
    for i in range(first):
        p.send(f"{i}".encode(), partition_key=keys[i % len(keys)])
    held = {}
    for _ in range(first):
        m = c1.receive(timeout_millis=5000)
        held.setdefault(m.partition_key(), []).append(m)
    assert len(held) == len(keys)

    c2 = client.subscribe(topic, "sub", consumer_type=KEY_SHARED, receiver_queue_size=1000,
                          consumer_name="new")
    for i in range(first, 2 * first):
        p.send(f"{i}".encode(), partition_key=keys[i % len(keys)])

    # Nothing reaches the newcomer while the old consumer holds every key.
    assert receive_none(c2, 1500) is None

    got = {"old": [], "new": []}
    acked = set()

    def poll(consumer, name, ms):
        while (m := receive_none(consumer, ms)) is not None:
            got[name].append(m)
            if name == "new":
                assert m.partition_key() in acked, (
                    f"{m.partition_key()} reached the new consumer before the old one acked it")
            consumer.acknowledge(m)

    # Release one key at a time: the newcomer only ever gets keys already released.
    for k in keys:
        for m in held[k]:
            c1.acknowledge(m)
        acked.add(k)
        poll(c2, "new", 300)
    poll(c1, "old", 500)
    poll(c2, "new", 500)

    assert len(got["old"]) + len(got["new"]) == first
    assert got["new"], "no key moved to the new consumer"
    owner = {}
    for name, msgs in got.items():
        seqs = {}
        for m in msgs:
            assert owner.setdefault(m.partition_key(), name) == name, "a key went to both"
            seqs.setdefault(m.partition_key(), []).append(int(m.data()))
        for seq in seqs.values():
            assert seq == sorted(seq)


def test_auto_split_out_of_order_delivery_skips_the_wait(client, topic):
    """With allow_out_of_order_delivery a joining consumer gets moved keys at once."""
    policy = pulsar.ConsumerKeySharedPolicy(allow_out_of_order_delivery=True)
    keys = [f"key-{i}" for i in range(12)]
    p = client.create_producer(topic, batching_enabled=False)
    c1 = client.subscribe(topic, "sub", consumer_type=KEY_SHARED, receiver_queue_size=1000,
                          initial_position=EARLIEST, key_shared_policy=policy)
    for i in range(60):
        p.send(f"{i}".encode(), partition_key=keys[i % len(keys)])
    for _ in range(60):
        c1.receive(timeout_millis=5000)
    c2 = client.subscribe(topic, "sub", consumer_type=KEY_SHARED, receiver_queue_size=1000,
                          key_shared_policy=policy)
    for i in range(60, 120):
        p.send(f"{i}".encode(), partition_key=keys[i % len(keys)])
    deadline = time.monotonic() + 5
    m = None
    while m is None and time.monotonic() < deadline:
        m = receive_none(c2, 500)
    assert m is not None, "the new consumer got nothing although out-of-order is allowed"
