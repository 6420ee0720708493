"""A topic rolled over past the old cap of its ledger list (issue 11): one metadata value held
about 6,000 ledgers, after which a topic could no longer roll over and stopped taking writes.

Each ledger here holds one entry (`managed_ledger_max_entries_per_ledger = 1`), so 6,500
messages make 6,500 ledgers, kept by a subscription's backlog. After kill -9 and a restart the
topic still takes writes (rolls over again) and the subscription receives every message in
order.
"""

import json
import urllib.request

import pulsar

from conftest import Standalone, make_client

LEDGERS = 6_500


def internal_stats(s, topic):
    path = topic.replace("persistent://", "")
    url = f"{s.admin_url}/admin/v2/persistent/{path}/internalStats"
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def test_a_topic_rolled_over_past_the_old_ledger_list_cap_keeps_working(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER", "1")
    topic = "persistent://public/default/long-history"
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    try:
        client = make_client(s.url)
        client.subscribe(topic, "hold").close()
        producer = client.create_producer(
            topic, batching_enabled=False, block_if_queue_full=True, max_pending_messages=500,
            send_timeout_millis=120_000)
        acked = []
        for i in range(LEDGERS):
            producer.send_async(f"m-{i}".encode(), lambda res, msg_id: acked.append(res))
        producer.flush()
        assert len(acked) == LEDGERS and all(r == pulsar.Result.Ok for r in acked)
        stats = internal_stats(s, topic)
        assert len(stats["ledgers"]) >= LEDGERS, len(stats["ledgers"])
        client.close()

        s.kill9()
        s.start()
        client = make_client(s.url)
        producer = client.create_producer(topic, batching_enabled=False,
                                          send_timeout_millis=60_000)
        producer.send(b"after restart")
        consumer = client.subscribe(topic, "hold")
        for i in range(LEDGERS):
            m = consumer.receive(timeout_millis=30_000)
            assert m.data() == f"m-{i}".encode(), f"message {i}: {m.data()!r}"
            consumer.acknowledge(m)
        assert consumer.receive(timeout_millis=30_000).data() == b"after restart"
        assert len(internal_stats(s, topic)["ledgers"]) > LEDGERS
        client.close()
    finally:
        s.stop()
