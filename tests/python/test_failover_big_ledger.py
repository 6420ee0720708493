"""Failover of a topic whose last ledger is large (issue 11): after kill -9 the next owner
recovers that ledger by reading only its tail, takes its length from the running length the
entries carry, and serves every acknowledged message.

The ledger here holds 20,000 unbatched 1 KiB messages (one entry each); `scripts/bench-failover.py`
measures the same path with 1 GiB. The recovery is observed in the standalone's log (the
`ledger_recovery` span's lines) and in the topic's internal stats, never timed.
"""

import json
import re
import urllib.request

import pulsar

from conftest import Standalone, make_client

MESSAGES = 20_000
PAYLOAD_BYTES = 1024


def payload(i):
    head = f"{i:08d}:".encode()
    return head + b"x" * (PAYLOAD_BYTES - len(head))


def internal_stats(s, topic):
    path = topic.replace("persistent://", "")
    url = f"{s.admin_url}/admin/v2/persistent/{path}/internalStats"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def test_failover_of_a_big_ledger_reads_only_its_tail(tmp_path):
    topic = "persistent://public/default/failover-big-ledger"
    log_path = tmp_path / "standalone.log"
    s = Standalone(tmp_path / "data", log_path).start()
    try:
        client = make_client(s.url)
        producer = client.create_producer(
            topic, batching_enabled=False, block_if_queue_full=True, max_pending_messages=1000,
            send_timeout_millis=60_000)
        acked = []
        for i in range(MESSAGES):
            producer.send_async(payload(i), lambda res, msg_id: acked.append(res))
        producer.flush()
        assert len(acked) == MESSAGES and all(r == pulsar.Result.Ok for r in acked)
        before = internal_stats(s, topic)
        assert before["currentLedgerEntries"] == MESSAGES, before
        big_ledger = before["ledgers"][-1]["ledgerId"]
        big_ledger_bytes = before["currentLedgerSize"]
        assert big_ledger_bytes >= MESSAGES * PAYLOAD_BYTES, before
        client.close()

        s.kill9()
        offset = log_path.stat().st_size
        s.start()
        client = make_client(s.url)
        producer = client.create_producer(topic, batching_enabled=False)
        producer.send(b"after failover")

        log = log_path.read_text(errors="replace")[offset:]
        span = f"ledger_recovery{{ledger={big_ledger}}}"
        tail = [l for l in log.splitlines() if span in l and "tail found" in l]
        closed = [l for l in log.splitlines() if span in l and "recovered and closed" in l]
        assert tail and closed, f"no recovery of ledger {big_ledger} in the log:\n{log[-4000:]}"
        recovered = int(re.search(r"recovered=(\d+)", tail[-1]).group(1))
        # Only the entries past the last-add-confirmed the bookies stored are read back: a few
        # at most (the producer had flushed), never the ledger.
        assert recovered <= 1000, tail[-1]
        assert "summing the ledger" not in log, "recovery read the whole ledger to size it"
        length = int(re.search(r"length_bytes=(\d+)", closed[-1]).group(1))
        last_entry = int(re.search(r"last_entry=(-?\d+)", closed[-1]).group(1))
        # The length taken from the tail is exactly what the writer had counted.
        assert (last_entry, length) == (MESSAGES - 1, big_ledger_bytes), closed[-1]

        after = internal_stats(s, topic)
        info = next(l for l in after["ledgers"] if l["ledgerId"] == big_ledger)
        assert (info["entries"], info["size"]) == (MESSAGES, big_ledger_bytes), after

        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for i in range(MESSAGES):
            m = reader.read_next(10_000)
            assert m.data() == payload(i), f"message {i} differs"
        assert reader.read_next(10_000).data() == b"after failover"
        client.close()
    finally:
        s.stop()
