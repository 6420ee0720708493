"""The chaos suite's short version (see chaos.py): each fault once, in turn, on one cluster
under named producers with deduplication; after the last, every acknowledged message must be
stored once and in send order. The long soak is `python3 tests/python/chaos.py`."""

import chaos


def test_every_fault_once_loses_nothing_acknowledged(tmp_path):
    order = [chaos.kill_bookie, chaos.kill_owner, chaos.pause_owner, chaos.cut_broker_from_etcd,
             chaos.cut_bookie_from_brokers, chaos.kill_etcd, chaos.restart_cluster]
    done = []
    counts = chaos.run(str(tmp_path), lambda rnd: iter(order), seed=7, log=done.append)
    assert len(done) == len(order), done
    assert all(n > 0 for n in counts.values()), counts
    print("chaos:", done, counts)
