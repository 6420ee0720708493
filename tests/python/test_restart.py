"""Restarting standalone mid-stream, cleanly (SIGTERM) and brutally (kill -9): every message
whose send was acknowledged is consumed afterwards, and the subscription resumes where the
acknowledgements left it."""

import signal
import threading
import time

import pulsar
import pytest

from conftest import make_client, receive_all, receive_none

TOPIC = "persistent://public/default/restart"
EARLIEST = pulsar.InitialPosition.Earliest


def produce_in_background(client, topic, stop, acked):
    producer = client.create_producer(topic, batching_enabled=True,
                                      batching_max_publish_delay_ms=2,
                                      send_timeout_millis=3000)
    i = 0
    lock = threading.Lock()

    def cb(payload):
        def done(res, _msg_id):
            if res == pulsar.Result.Ok:
                with lock:
                    acked.add(payload)
        return done

    while not stop.is_set():
        payload = f"bg-{i}".encode()
        try:
            producer.send_async(payload, cb(payload))
        except Exception:  # queue full or closed while the broker is down
            time.sleep(0.01)
            continue
        i += 1
        if i % 50 == 0:
            time.sleep(0.005)


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_restart_keeps_acknowledged_messages_and_cursor(fresh_standalone, how):
    s = fresh_standalone
    client = make_client(s.url)
    consumer = client.subscribe(TOPIC, "sub", initial_position=EARLIEST)
    producer = client.create_producer(TOPIC, batching_enabled=False)
    for i in range(100):
        producer.send(f"m{i}".encode())
    got = receive_all(consumer, 40)
    assert [m.data() for m in got] == [f"m{i}".encode() for i in range(40)]
    for m in got[:30]:
        consumer.acknowledge(m)
    consumer.acknowledge(got[35])

    # Keep producing while the broker goes down.
    stop, acked = threading.Event(), set()
    bg = threading.Thread(target=produce_in_background, args=(client, TOPIC + "-bg", stop, acked))
    bg.start()
    time.sleep(0.5)
    if how == "kill9":
        time.sleep(0.5)  # let the cursor flusher (100 ms) persist the acks
        s.kill9()
    else:
        assert s.stop(signal.SIGTERM) == 0
    stop.set()
    bg.join(10)
    client.close()
    assert len(acked) > 0

    s.start()
    client = make_client(s.url)
    consumer = client.subscribe(TOPIC, "sub", initial_position=EARLIEST)
    expected = [f"m{i}".encode() for i in list(range(30, 35)) + list(range(36, 100))]
    again = [m.data() for m in receive_all(consumer, len(expected))]
    assert again == expected
    assert receive_none(consumer) is None

    # Every send the broker confirmed is there.
    reader = client.create_reader(TOPIC + "-bg", pulsar.MessageId.earliest)
    stored = set()
    while reader.has_message_available():
        stored.add(reader.read_next(5000).data())
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"

    # And the topic takes new messages.
    client.create_producer(TOPIC).send(b"after restart")
    assert consumer.receive(timeout_millis=5000).data() == b"after restart"
    client.close()
