"""Many subscriptions acking on a real standalone, whose cursor state goes to cursor ledgers that
roll over every few snapshots (managedLedgerCursorMaxEntriesPerLedger set low): after a clean
restart every subscription resumes exactly where its acknowledgements left it; after kill -9
none skips a message it had not acknowledged."""

import signal

import pulsar
import pytest

from conftest import Standalone, make_client, receive_all, receive_none, wait_for

SUBSCRIPTIONS = 120
MESSAGES = 150
EARLIEST = pulsar.InitialPosition.Earliest


def acked_count(i):
    # Every subscription stops at a different place, a few of them nowhere and at the end.
    return (i * 7) % (MESSAGES + 1)


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_many_acking_subscriptions_resume_where_they_acked(tmp_path, monkeypatch, how):
    monkeypatch.setenv("MAGNETAR_BROKER__MANAGED_LEDGER_CURSOR_MAX_ENTRIES_PER_LEDGER", "3")
    s = Standalone(tmp_path / "data", tmp_path / "standalone.log").start()
    try:
        topic = f"persistent://public/default/many-subs-{how}"
        client = make_client(s.url)
        consumers = [
            client.subscribe(topic, f"sub-{i}", initial_position=EARLIEST,
                             receiver_queue_size=MESSAGES)
            for i in range(SUBSCRIPTIONS)
        ]
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(MESSAGES):
            producer.send_async(f"m{i}".encode(), None)
        producer.flush()
        for i, c in enumerate(consumers):
            got = receive_all(c, MESSAGES)
            assert [m.data() for m in got] == [f"m{j}".encode() for j in range(MESSAGES)]
            # Acked one by one: each ack is a cursor change (a snapshot, or several coalesced).
            for m in got[:acked_count(i)]:
                c.acknowledge(m)

        def backlogs_settled():
            import json
            import urllib.request
            path = "/admin/v2/persistent/" + topic[len("persistent://"):] + "/stats"
            with urllib.request.urlopen(s.admin_url + path, timeout=5) as r:
                subs = json.load(r)["subscriptions"]
            return all(subs[f"sub-{i}"]["msgBacklog"] == MESSAGES - acked_count(i)
                       for i in range(SUBSCRIPTIONS))

        assert wait_for(backlogs_settled, timeout=30), "the broker saw every acknowledgement"
        client.close()
        if how == "kill9":
            s.kill9()
        else:
            assert s.stop(signal.SIGTERM) == 0

        s.start()
        client = make_client(s.url)
        for i in range(SUBSCRIPTIONS):
            c = client.subscribe(topic, f"sub-{i}", initial_position=EARLIEST,
                                 receiver_queue_size=MESSAGES)
            first_unacked = acked_count(i)
            if how == "sigterm":
                # A clean stop flushed every cursor: exactly the unacknowledged messages.
                rest = [m.data() for m in receive_all(c, MESSAGES - first_unacked)]
                assert rest == [f"m{j}".encode() for j in range(first_unacked, MESSAGES)], f"sub-{i}"
                assert receive_none(c, timeout_ms=200) is None, f"sub-{i}: more than expected"
            else:
                # kill -9 may lose the last 100 ms of acks (redelivered), never skip one.
                if first_unacked == MESSAGES:
                    continue
                m = c.receive(timeout_millis=5000)
                start = int(m.data()[1:])
                assert start <= first_unacked, f"sub-{i} resumed at m{start} after acking {first_unacked}"
                rest = [m.data()] + [x.data() for x in receive_all(c, MESSAGES - start - 1)]
                assert rest == [f"m{j}".encode() for j in range(start, MESSAGES)], f"sub-{i}"
            c.close()
        client.close()
    finally:
        s.stop()
