"""Broker failover (issue 13): two `magnetar broker` processes on a real etcd and three bookies;
the official client is given both brokers' addresses. The owner of a topic is killed (SIGKILL)
under a producer: lookups at the surviving broker wait out the dead owner's lease instead of
naming it (which sent clients into their growing reconnect backoff), the survivor takes the
topic over, and every message the producer was told is stored reads back once, in order.

The pause is printed (`failover pause`); `scripts/bench-failover.py --broker` measures it.
"""

import signal
import time

import pulsar

from conftest import make_client
from test_cluster import Cluster

MESSAGES = 400


def lookup(admin_url, topic):
    """`GET /lookup/v2/topic/...`: the broker serving `topic` (pulsar-admin's `topics lookup`)."""
    import json
    import urllib.request

    path = "/lookup/v2/topic/" + topic.replace("://", "/")
    with urllib.request.urlopen(admin_url + path, timeout=10) as r:
        return json.load(r)


def test_a_killed_owner_is_taken_over_and_nothing_acknowledged_is_lost(tmp_path):
    # A 10 s session ttl, as the issue measured: the client's backoff had grown past it.
    cluster = Cluster(str(tmp_path), session_ttl_ms=10_000)
    cluster.start()
    try:
        other, other_url, other_admin = cluster.start_broker("broker-2.log")
        first = make_client(cluster.url)
        topic = "persistent://public/default/failover"
        first.create_producer(topic).close()
        first.close()
        # The lookup assigned the topic's bundle to one of the two (the less loaded): that one
        # is killed.
        owner = lookup(cluster.admin_url, topic)["brokerUrl"]
        victim = cluster.broker if owner == cluster.url else other
        assert owner in (cluster.url, other_url), owner

        both = cluster.url + "," + other_url.split("://", 1)[1]
        client = pulsar.Client(both, operation_timeout_seconds=60)
        producer = client.create_producer(topic, batching_enabled=False, send_timeout_millis=60_000)
        acked = []
        for i in range(MESSAGES // 2):
            producer.send(f"f-{i:05d}".encode())
            acked.append(i)

        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        started = time.monotonic()
        producer.send(f"f-{MESSAGES // 2:05d}".encode())
        pause = time.monotonic() - started
        print(f"failover pause {pause:.2f} s (session ttl 10 s)")
        acked.append(MESSAGES // 2)
        for i in range(MESSAGES // 2 + 1, MESSAGES):
            producer.send(f"f-{i:05d}".encode())
            acked.append(i)

        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        got = [reader.read_next(20_000).data() for _ in acked]
        assert got == [f"f-{i:05d}".encode() for i in acked]
        client.close()
    finally:
        cluster.stop()


def test_brokers_are_listed_and_a_new_leader_follows_a_dead_one(tmp_path):
    """`brokers list` shows every registered broker; `brokers leader-broker` one of them, and
    after the leader is killed the survivor becomes the leader (its campaign takes the key once
    the dead leader's session expires)."""
    import json
    import subprocess
    import urllib.error
    import urllib.request

    from conftest import BIN, wait_for

    cluster = Cluster(str(tmp_path))
    cluster.start()
    try:
        other, _, other_admin = cluster.start_broker("broker-2.log")
        ids = sorted(u.split("://", 1)[1] for u in (cluster.admin_url, other_admin))

        def cli(admin_url, *args):
            out = subprocess.run([BIN, "admin", "--url", admin_url, "brokers", *args],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out
            return out.stdout

        assert wait_for(lambda: sorted(cli(other_admin, "list", "standalone").split()) == ids, timeout=30)

        def leader(admin_url):
            try:
                with urllib.request.urlopen(admin_url + "/admin/v2/brokers/leaderBroker", timeout=10) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError:
                return None
        assert wait_for(lambda: leader(other_admin) is not None, timeout=30)
        first = leader(other_admin)
        assert first["brokerId"] in ids and first["serviceUrl"].endswith(first["brokerId"]), first
        assert json.loads(cli(cluster.admin_url, "leader-broker")) == first

        # Kill whichever broker leads; the other one takes over.
        first_leads = first["brokerId"] == cluster.admin_url.split("://", 1)[1]
        dead = cluster.broker if first_leads else other
        survivor_admin = other_admin if first_leads else cluster.admin_url
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=30)
        assert wait_for(lambda: (leader(survivor_admin) or {}).get("brokerId") == survivor_admin.split("://", 1)[1],
                        timeout=30), leader(survivor_admin)
        assert cli(survivor_admin, "list", "standalone").split() == [survivor_admin.split("://", 1)[1]]
    finally:
        cluster.stop()
