"""A standalone whose bookie runs out of space (its storage cap): the bookie turns read-only,
sends fail instead of being stored, everything acknowledged stays readable — also after a
kill -9 while full, when the topic must load by recovering its last ledger on the read-only
bookie — and once consumed data is trimmed and its space reclaimed the bookie is writable again
and the same producer's sends succeed.

Before the fix the managed ledger looped on recovery adds to the read-only bookie (the entries
it re-added were already there) and a kill -9 while full left the topic unloadable."""

import time

import pulsar

from conftest import Standalone, make_client, wait_for

CAP_BYTES = 24 << 20
PAYLOAD_BYTES = 50_000


def _configure(monkeypatch):
    env = {
        "MAGNETAR_BOOKIE__STORAGE_SIZE_BYTES_MAX": str(CAP_BYTES),
        "MAGNETAR_BOOKIE__JOURNAL_FILE_SIZE_BYTES": str(2 << 20),
        "MAGNETAR_BOOKIE__ENTRY_LOG_SIZE_BYTES_MAX": str(2 << 20),
        "MAGNETAR_BOOKIE__DISK_CHECK_INTERVAL_MS": "100",
        "MAGNETAR_BOOKIE__CHECKPOINT_INTERVAL_MS": "200",
        "MAGNETAR_BOOKIE__GC_INTERVAL_MS": "500",
        "MAGNETAR_BOOKIE__GC_COMPACTION_RATE_BYTES_PER_S": str(256 << 20),
        "MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER": "40",
        "MAGNETAR_BROKER__RETENTION_CHECK_INTERVAL_IN_SECONDS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _payload(i):
    head = f"{i:08d}".encode()
    return head + b"x" * (PAYLOAD_BYTES - len(head))


def test_full_bookie_refuses_writes_keeps_reads_and_recovers_when_space_is_freed(
    tmp_path, monkeypatch
):
    _configure(monkeypatch)
    topic = "persistent://public/default/disk-full"
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    client = make_client(s.url)
    try:
        client.subscribe(topic, "hold").close()
        producer = client.create_producer(
            topic, batching_enabled=False, send_timeout_millis=2000
        )
        acked = []
        failure = None
        # The cap holds ~480 messages; the journal's preallocated files take part of it.
        for i in range(2000):
            try:
                producer.send(_payload(i))
                acked.append(i)
            except pulsar.PulsarException as e:
                failure = e
                break
        assert failure is not None, "2000 × 50 kB were stored under a 24 MiB cap"
        assert len(acked) > 50, f"the bookie refused writes after only {len(acked)} messages"
        # A send while full fails again (it is not silently stored).
        try:
            producer.send(b"while-full")
            raise AssertionError("a send was acknowledged by a full bookie")
        except pulsar.PulsarException:
            pass
        producer.close()
        client.close()

        # kill -9 while full: on restart the topic is loaded by recovering its last ledger on a
        # read-only bookie, and every acknowledged message is read back once, in order.
        s.kill9()
        s.start()
        client = make_client(s.url)
        consumer = client.subscribe(topic, "hold")
        got = []
        while len(got) < len(acked):
            m = consumer.receive(timeout_millis=20000)
            got.append(int(m.data()[:8]))
            consumer.acknowledge(m)
        assert got == acked
        try:
            extra = consumer.receive(timeout_millis=500)
            raise AssertionError(f"an unacknowledged send was stored: {extra.data()[:16]!r}")
        except pulsar.Timeout:
            pass

        # Consumed ledgers are trimmed, their space reclaimed: the bookie turns writable and a
        # send goes through. Until then the topic refuses new producers as unwritable (a
        # retryable error; the client gives up after its operation timeout) or a send times out.
        producers = []

        def send_succeeds():
            try:
                if not producers:
                    producers.append(
                        client.create_producer(
                            topic, batching_enabled=False, send_timeout_millis=2000
                        )
                    )
                producers[0].send(b"after-space-came-back")
                return True
            except pulsar.PulsarException:
                return False

        assert wait_for(send_succeeds, timeout=90, interval=0.2), (
            "the bookie never became writable again after its data was consumed and trimmed; "
            f"see {s.log_path}"
        )
        m = consumer.receive(timeout_millis=10000)
        assert m.data() == b"after-space-came-back"
        client.close()
    finally:
        s.stop()
