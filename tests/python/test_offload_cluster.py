"""Tiered storage in a cluster (issue 12): etcd, three bookies, brokers and a real S3-compatible
server (moto's), all separate processes on 127.0.0.1, driven by the official client.

The broker is killed (SIGKILL, from its own crash point) in the middle of an offload: the
ledger's data object is in the bucket, its index is not, and the managed ledger's record holds
the attempt. A new broker takes the topic over; the offload is run again and completes, the
crashed attempt's object is deleted, the bookies' copies go after a zero deletion lag, and every
acknowledged message reads back once and in order, with its original id.
"""

import time

import pulsar

from conftest import make_client, wait_for
from test_cluster import Cluster
from test_offload import BUCKET, admin, objects, s3  # noqa: F401 (s3 is a fixture)

PER_LEDGER = 100
MESSAGES = 350


class Admin:
    """What `admin()` needs of a server: its admin URL."""

    def __init__(self, url):
        self.admin_url = url


def test_a_broker_killed_mid_upload_leaves_nothing_behind_and_loses_nothing(tmp_path, s3):  # noqa: F811
    endpoint, s3_client = s3
    offload_env = {
        "MAGNETAR_OFFLOAD__DRIVER": "aws-s3",
        "MAGNETAR_OFFLOAD__BUCKET": BUCKET,
        "MAGNETAR_OFFLOAD__REGION": "us-east-1",
        "MAGNETAR_OFFLOAD__SERVICE_ENDPOINT": endpoint,
        "MAGNETAR_OFFLOAD__ACCESS_KEY_ID": "test",
        "MAGNETAR_OFFLOAD__SECRET_ACCESS_KEY": "test",
        "MAGNETAR_OFFLOAD__DELETION_LAG_MS": "0",
        "MAGNETAR_BROKER__MANAGED_LEDGER_MAX_ENTRIES_PER_LEDGER": str(PER_LEDGER),
    }
    # The first broker dies once the first ledger's data object is written.
    cluster = Cluster(str(tmp_path), broker_env={**offload_env, "MAGNETAR_CRASH_AT": "offload.data_written"})
    cluster.start()
    topic = "persistent://public/default/cluster-offload"
    path = "/admin/v2/persistent/public/default/cluster-offload"
    try:
        client = make_client(cluster.url)
        client.subscribe(topic, "hold").close()
        producer = client.create_producer(topic, batching_enabled=False)
        ids = [producer.send(f"c-{i:04d}".encode()) for i in range(MESSAGES)]
        client.close()
        first = Admin(cluster.admin_url)
        last = ids[-1]
        status, body = admin(first, "PUT", f"{path}/offload",
                             {"ledgerId": last.ledger_id(), "entryId": last.entry_id(), "partitionIndex": -1})
        assert status == 204, body
        assert wait_for(lambda: cluster.broker.poll() is not None, timeout=60), "the broker did not crash"
        assert cluster.broker.returncode == -9, cluster.broker.returncode
        # Mid-upload: a data object without its index.
        left = objects(s3_client)
        assert len(left) == 1 and left[0].endswith(".data"), left

        # A new broker (the old one's bundle lease expires with its session) takes over.
        cluster.broker_env = offload_env
        _broker, url, admin_url = cluster.start_broker("broker-2.log", env={
            "MAGNETAR_OFFLOAD__CLEANER_INTERVAL_SECONDS": "1",
            "MAGNETAR_OFFLOAD__CLEANER_GRACE_PERIOD_SECONDS": "0",
        })
        second = Admin(admin_url)

        def retriggered():
            status, _ = admin(second, "PUT", f"{path}/offload",
                              {"ledgerId": last.ledger_id(), "entryId": last.entry_id(),
                               "partitionIndex": -1})
            return status == 204
        assert wait_for(retriggered, timeout=60), "the new broker never took the offload"
        assert wait_for(lambda: admin(second, "GET", f"{path}/offload")[1]["status"] != "RUNNING", timeout=120)
        st = admin(second, "GET", f"{path}/offload")[1]
        assert st["status"] == "SUCCESS", st

        ledgers = admin(second, "GET", f"{path}/internalStats")[1]["ledgers"]
        offloaded = [l for l in ledgers if l["offloaded"]]
        assert len(offloaded) == MESSAGES // PER_LEDGER, ledgers
        # Two objects per offloaded ledger and nothing else: the crashed attempt's is gone.
        assert wait_for(lambda: len(objects(s3_client)) == 2 * len(offloaded), timeout=30), objects(s3_client)
        assert left[0] not in objects(s3_client)
        assert wait_for(lambda: all(
            l.get("bookieCopyDeleted") for l in admin(second, "GET", f"{path}/internalStats")[1]["ledgers"]
            if l["offloaded"]), timeout=60)

        client = make_client(url)
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        for i in range(MESSAGES):
            m = reader.read_next(10_000)
            assert m.data() == f"c-{i:04d}".encode(), i
            assert (m.message_id().ledger_id(), m.message_id().entry_id()) == \
                (ids[i].ledger_id(), ids[i].entry_id()), i
        client.close()
    finally:
        cluster.stop()
