"""The HTTP endpoints probes and operators use, with Pulsar's and BookKeeper's paths: a broker's
`/status.html` and `/admin/v2/brokers/health`, a bookie's `/api/v1/bookie/state` and
`/api/v1/bookie/is_ready` on its `bookie.http_port` (what the Helm chart's probes ask)."""

import json
import subprocess
import urllib.error
import urllib.request

from conftest import BIN, wait_for
from test_cluster import Cluster, first_line


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_standalone_answers_status_and_health(standalone):
    assert get(standalone.admin_url + "/status.html") == (200, "OK")
    # Twice: the second check appends to the health ledger the first one opened.
    for _ in range(2):
        assert get(standalone.admin_url + "/admin/v2/brokers/health") == (200, "ok")


def test_cluster_probes_report_serving_ready_and_read_only_bookies(tmp_path):
    cluster = Cluster(str(tmp_path), bookie_env={"MAGNETAR_BOOKIE__HTTP_PORT": "0"})
    cluster.start()
    try:
        http = []
        for p in cluster.bookies:
            line = first_line(p)
            assert line.startswith("magnetar bookie: http http://"), line
            http.append(line.split()[-1])
        for url in http:
            code, body = get(url + "/api/v1/bookie/state")
            assert code == 200, body
            assert json.loads(body) == {
                "running": True,
                "readOnly": False,
                "shuttingDown": False,
                "availableForHighPriorityWrites": True,
            }
            assert get(url + "/api/v1/bookie/is_ready") == (200, "OK")

        # The broker writes through its bookies (E2/Qw2/Qa2) and reads back.
        assert get(cluster.admin_url + "/status.html") == (200, "OK")
        assert get(cluster.admin_url + "/admin/v2/brokers/health") == (200, "ok")

        # A decommissioned bookie turns read-only: still running, no longer ready.
        admin = [BIN, "admin", "--url", cluster.admin_url, "bookies"]
        out = subprocess.run(admin + ["decommission", cluster.bookie_ids[0]],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        assert wait_for(lambda: get(http[0] + "/api/v1/bookie/is_ready")[0] == 503, timeout=30), \
            get(http[0] + "/api/v1/bookie/state")
        state = json.loads(get(http[0] + "/api/v1/bookie/state")[1])
        assert state["running"] and state["readOnly"] and not state["availableForHighPriorityWrites"]
        assert get(http[1] + "/api/v1/bookie/is_ready") == (200, "OK")
        # Two writable bookies remain for E2: the broker is still healthy.
        assert get(cluster.admin_url + "/admin/v2/brokers/health") == (200, "ok")

        # A second one leaves: no ensemble of 2 can be formed, and the check fails within its
        # limit (10 s) instead of waiting for bookies.
        out = subprocess.run(admin + ["decommission", cluster.bookie_ids[1]],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out
        assert wait_for(lambda: get(http[1] + "/api/v1/bookie/is_ready")[0] == 503, timeout=30)
        code, body = get(cluster.admin_url + "/admin/v2/brokers/health")
        assert code == 503, (code, body)
        # Serving still: lookups and reads work, only writes wait for bookies.
        assert get(cluster.admin_url + "/status.html") == (200, "OK")
    finally:
        cluster.stop()
