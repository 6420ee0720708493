"""Render and run: the Helm chart's wiring proven on real containers, no Kubernetes cluster.

The chart is rendered (helm-python-sdk, as in test_helm_chart.py); the etcd, bookie and broker
containers' image, command, arguments and environment are taken from the rendered manifests
(ConfigMaps resolved, `$(VAR)` expanded, the downward API's pod name and IP supplied) and run as
containers of the image k8s/build-image.sh builds, on a private Docker network, each with the
DNS names its pod would have (`rel-bookie-0.rel-bookie.ns.svc.cluster.local`, the services'
names) and its own IP. Volumes stand in for the claims, tmpfs for the emptyDirs, and the root
file system is read-only as the chart's security context asks. Then:

- every probe's HTTP path (or TCP port) answers on every container;
- the official Python client produces and consumes through the broker service;
- a bookie is replaced by a new container with the same volumes and pod name but another IP:
  same identity, its data kept (the Pulsar chart's bookies crash-looped on a new pod IP,
  apache/pulsar#7569);
- a broker gets SIGTERM (`docker stop`): it drains its bundles to the other broker and no
  acknowledged message is lost;
- a fourth bookie joins (the StatefulSet scaled) and new ledgers write to it.

Needs docker and etcd (its binary goes into the image); fails saying so without them.
"""

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
import uuid

import pulsar
import pytest

from conftest import BIN, ROOT, make_client, receive_all, wait_for
from test_helm_chart import IMPORT_ERROR, INSTALL_HINT, render

NAMESPACE = "ns"
RELEASE = "rel"
DOMAIN = f"{NAMESPACE}.svc.cluster.local"
VALUES = {
    "image": {"repository": "magnetar", "tag": "render-run"},
    # One etcd member is enough to prove the wiring (the chart's three-member default is
    # rendered and validated by test_helm_chart.py).
    "etcd": {"replicaCount": 1},
    "broker": {"replicaCount": 2},
    "metadata": {"session_ttl_ms": 4000},
}


def docker(*args, check=True, timeout=120):
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def expand(text, env):
    """Kubernetes' `$(VAR)` expansion of args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def http_get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return None, str(e)


class Pod:
    """One container standing in for a pod of a rendered workload."""

    def __init__(self, run, workload, pod_name, ip, volumes):
        self.run, self.workload, self.name, self.ip, self.volumes = run, workload, pod_name, ip, volumes
        self.container = f"{run.prefix}-{pod_name}"
        spec = workload["spec"]["template"]["spec"]
        self.spec = spec["containers"][0]
        self.service = workload["spec"].get("serviceName")

    def env(self):
        downward = {"metadata.name": self.name, "status.podIP": self.ip,
                    "metadata.namespace": NAMESPACE}
        env = {}
        for src in self.spec.get("envFrom", []):
            cm = self.run.rendered.get("ConfigMap", src["configMapRef"]["name"])
            env.update(cm.get("data", {}))
        for e in self.spec.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            else:
                ref = e["valueFrom"].get("fieldRef", {}).get("fieldPath")
                assert ref in downward, f"{self.name}: unsupported env source {e}"
                env[e["name"]] = downward[ref]
        # The tests' hosts may be nearly full; the bookies must not turn read-only for it.
        env.setdefault("MAGNETAR_BOOKIE__DISK_USAGE_THRESHOLD", "1.0")
        env.setdefault("MAGNETAR_BOOKIE__DISK_USAGE_LWM", "1.0")
        return env

    def start(self):
        env = self.env()
        aliases = [self.name]
        if self.service:  # a StatefulSet's pod: its stable DNS name under the headless service
            aliases += [f"{self.name}.{self.service}", f"{self.name}.{self.service}.{DOMAIN}"]
        for svc in self.run.services_of(self.workload):
            aliases += [svc, f"{svc}.{NAMESPACE}", f"{svc}.{DOMAIN}"]
        args = ["run", "-d", "--name", self.container, "--hostname", self.name,
                "--network", self.run.network, "--ip", self.ip, "--read-only",
                "--label", f"magnetar-render-run={self.run.prefix}"]
        for a in aliases:
            args += ["--network-alias", a]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        claims = {m["name"]: m for m in self.spec.get("volumeMounts", [])}
        for name, mount in claims.items():
            if name in self.volumes:
                args += ["-v", f"{self.volumes[name]}:{mount['mountPath']}"]
            else:  # emptyDir
                args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
        command = self.spec.get("command")
        if command:
            args += ["--entrypoint", command[0]]
        args.append(self.spec["image"])
        args += [expand(a, env) for a in (command or [])[1:] + self.spec.get("args", [])]
        docker(*args)
        return self

    def port(self, name_or_number):
        if isinstance(name_or_number, int):
            return name_or_number
        return next(p["containerPort"] for p in self.spec["ports"] if p["name"] == name_or_number)

    def probes_answer(self):
        """Every probe of the container succeeds now (as the kubelet would ask it)."""
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = self.spec.get(kind)
            if not probe:
                continue
            if "httpGet" in probe:
                g = probe["httpGet"]
                code, _ = http_get(f"http://{self.ip}:{self.port(g['port'])}{g['path']}")
                if code is None or not 200 <= code < 400:
                    return False
            elif "tcpSocket" in probe:
                try:
                    socket.create_connection((self.ip, self.port(probe["tcpSocket"]["port"])), 2).close()
                except OSError:
                    return False
        return True

    def logs(self):
        out = docker("logs", "--tail", "60", self.container, check=False)
        return out.stdout + out.stderr

    def stop(self, timeout_s=70):
        return docker("stop", "-t", str(timeout_s), self.container, timeout=timeout_s + 30)

    def exit_code(self):
        return int(docker("inspect", "-f", "{{.State.ExitCode}}", self.container).stdout.strip())

    def remove(self):
        docker("rm", "-f", self.container, check=False)


class RenderRun:
    def __init__(self, rendered):
        self.rendered = rendered
        self.prefix = f"mrr-{uuid.uuid4().hex[:8]}"
        self.network = self.prefix
        self.volumes = []
        self.pods = []
        # A subnet no other test network uses: 172.30.X.0/24 by the prefix's hash.
        self.subnet = ipaddress.ip_network(f"172.30.{int(self.prefix[-2:], 16)}.0/24")
        self.next_ip = 10

    def services_of(self, workload):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        out = []
        for s in self.rendered.of_kind("Service"):
            sel = s["spec"].get("selector", {})
            if sel and all(labels.get(k) == v for k, v in sel.items()):
                out.append(s["metadata"]["name"])
        return out

    def ip(self):
        self.next_ip += 1
        return str(self.subnet.network_address + self.next_ip)

    def volume(self, name):
        v = f"{self.prefix}-{name}"
        docker("volume", "create", "--label", f"magnetar-render-run={self.prefix}", v)
        self.volumes.append(v)
        return v

    def start_network(self):
        docker("network", "create", "--subnet", str(self.subnet),
               "--label", f"magnetar-render-run={self.prefix}", self.network)

    def pod(self, kind, name, ordinal=None, volumes=None, ip=None):
        workload = self.rendered.get(kind, name)
        pod_name = f"{name}-{ordinal}" if ordinal is not None else f"{name}-{uuid.uuid4().hex[:5]}"
        if volumes is None:
            volumes = {}
            for claim in workload["spec"].get("volumeClaimTemplates", []):
                cname = claim["metadata"]["name"]
                volumes[cname] = self.volume(f"{cname}-{pod_name}")
        p = Pod(self, workload, pod_name, ip or self.ip(), volumes).start()
        self.pods.append(p)
        return p

    def cleanup(self):
        for p in self.pods:
            p.remove()
        docker("network", "rm", self.network, check=False)
        for v in self.volumes:
            docker("volume", "rm", "-f", v, check=False)


@pytest.fixture(scope="module")
def image():
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.fail("docker is missing or its daemon is not running: the render-and-run test "
                    "runs the chart's containers on Docker", pytrace=False)
    if IMPORT_ERROR is not None:
        pytest.fail(f"helm-python-sdk is missing ({IMPORT_ERROR!r}): {INSTALL_HINT}", pytrace=False)
    tag = f"{VALUES['image']['repository']}:{VALUES['image']['tag']}"
    out = subprocess.run([os.path.join(ROOT, "k8s", "build-image.sh"), "--binary", BIN,
                          "--tag", tag], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"k8s/build-image.sh failed:\n{out.stdout}\n{out.stderr}"
    return tag


@pytest.fixture
def cluster(image):
    import helm_python as helm
    from test_helm_chart import CHART
    chart = helm.Chart.load(CHART)
    try:
        rendered = render(chart, VALUES, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    run = RenderRun(rendered)
    run.start_network()
    try:
        yield run
    finally:
        run.cleanup()


def ready(pods, timeout=90):
    for p in pods:
        assert wait_for(p.probes_answer, timeout=timeout), f"{p.name} never passed its probes:\n{p.logs()}"


def admin_json(url):
    code, body = http_get(url, timeout=20)
    assert code == 200, (url, code, body)
    return json.loads(body)


def test_rendered_chart_runs_on_docker(cluster):
    etcd = cluster.pod("StatefulSet", f"{RELEASE}-etcd", 0)
    ready([etcd])
    bookies = [cluster.pod("StatefulSet", f"{RELEASE}-bookie", i) for i in range(3)]
    ready(bookies)
    brokers = [cluster.pod("Deployment", f"{RELEASE}-broker") for _ in range(2)]
    ready(brokers)
    for b in bookies:
        code, body = http_get(f"http://{b.ip}:8000/metrics")
        assert code == 200 and "bookie_SERVER_STATUS 1" in body, body[:500]
    code, body = http_get(f"http://{brokers[0].ip}:8080/metrics")
    assert code == 200 and "process_resident_memory_bytes" in body

    # Produce and consume through the broker service: its endpoints, as the service's name
    # resolves inside a cluster (the client tries the next one when one is gone).
    service = "pulsar://" + ",".join(f"{b.ip}:6650" for b in brokers)
    client = make_client(service)
    topic = "persistent://public/default/render-run"
    try:
        consumer = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(100):
            producer.send(f"m-{i}".encode())
        got = receive_all(consumer, 100, timeout_ms=20_000)
        assert sorted(m.data().decode() for m in got) == sorted(f"m-{i}" for i in range(100))
        for m in got:
            consumer.acknowledge(m)

        # A bookie replaced: new container, same volumes and pod name, another IP.
        old = bookies[1]
        old.stop()
        old.remove()
        cluster.pods.remove(old)
        replaced = cluster.pod("StatefulSet", f"{RELEASE}-bookie", 1, volumes=old.volumes)
        assert replaced.ip != old.ip
        ready([replaced])
        bookie_ids = [b["bookieId"] if isinstance(b, dict) else b for b in
                      admin_json(f"http://{brokers[0].ip}:8080/admin/v2/bookies/all").get("bookies", [])]
        assert any(f"{RELEASE}-bookie-1.{RELEASE}-bookie" in str(b) for b in bookie_ids), bookie_ids
        # Its data is still there: a new subscription reads everything from the start.
        reader = client.subscribe(topic, "from-start", initial_position=pulsar.InitialPosition.Earliest)
        again = receive_all(reader, 100, timeout_ms=20_000)
        assert len(again) == 100

        # SIGTERM to the broker serving the topic: it hands its bundles over, nothing is lost.
        sent = []
        for i in range(100, 200):
            producer.send(f"m-{i}".encode())
            sent.append(f"m-{i}")
        owner_url = admin_json(f"http://{brokers[0].ip}:8080/lookup/v2/topic/persistent/public/default/render-run")
        owner = next(b for b in brokers if b.ip in owner_url.get("brokerUrl", ""))
        other = next(b for b in brokers if b is not owner)
        owner.stop()
        logs = owner.logs()
        assert owner.exit_code() == 0, logs
        assert "drain done moved=1" in logs, f"the broker did not hand its bundle over:\n{logs}"
        for i in range(200, 300):
            producer.send(f"m-{i}".encode())
            sent.append(f"m-{i}")
        got = receive_all(consumer, 200, timeout_ms=30_000)
        assert sorted(m.data().decode() for m in got) == sorted(sent)
        moved = admin_json(f"http://{other.ip}:8080/lookup/v2/topic/persistent/public/default/render-run")
        assert other.ip in moved["brokerUrl"], moved

        # Scaled to four bookies: the new one registers, turns ready, and new ledgers use it.
        # (The service has one endpoint left: the stopped pod is gone from it.)
        fourth = cluster.pod("StatefulSet", f"{RELEASE}-bookie", 3)
        ready([fourth])
        scaled = make_client(f"pulsar://{other.ip}:6650")
        try:
            for n in range(20):
                p = scaled.create_producer(f"persistent://public/default/scaled-{n}")
                p.send(b"x")
                p.close()
        finally:
            scaled.close()

        def fourth_written():
            code, body = http_get(f"http://{fourth.ip}:8000/metrics")
            m = re.search(r'^bookkeeper_server_ADD_ENTRY_count\{success="true"\} (\S+)$', body, re.M)
            return m and float(m.group(1)) > 0
        assert wait_for(fourth_written, timeout=30), "no entry reached the fourth bookie"
    finally:
        client.close()


COMPOSE = os.path.join(ROOT, "k8s", "docker-compose.yaml")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_call(url, method, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_docker_compose_cluster_serves_and_offloads_to_s3(image):
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: apt-get install -y docker-compose", pytrace=False)
    s3_dev = os.path.join(os.path.dirname(BIN), "magnetar-s3-dev")
    assert os.path.exists(s3_dev), \
        f"{s3_dev} is missing: cargo build --bin magnetar-s3-dev (scripts/test.sh does)"
    tag = image.split(":")[1]
    out = subprocess.run([os.path.join(ROOT, "k8s", "build-image.sh"), "--binary", BIN,
                          "--tag", image, "--s3-dev", s3_dev],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"k8s/build-image.sh --s3-dev failed:\n{out.stdout}\n{out.stderr}"
    ports = {name: free_port() for name in (
        "MAGNETAR_BROKER_1_PORT", "MAGNETAR_BROKER_1_ADMIN_PORT", "MAGNETAR_BROKER_2_PORT",
        "MAGNETAR_BROKER_2_ADMIN_PORT", "MAGNETAR_BOOKIE_0_HTTP_PORT",
        "MAGNETAR_BOOKIE_1_HTTP_PORT", "MAGNETAR_BOOKIE_2_HTTP_PORT")}
    # A subnet of its own (the render-and-run test takes 172.30.X.0/24), whose gateway is the
    # address the brokers advertise.
    subnet = ipaddress.ip_network(f"172.29.{uuid.uuid4().int % 250}.0/24")
    host = str(subnet.network_address + 1)
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "MAGNETAR_TAG": tag,
           "MAGNETAR_DISK_USAGE_THRESHOLD": "1.0", "MAGNETAR_SUBNET": str(subnet),
           "MAGNETAR_ADVERTISED_HOST": host}
    compose = ["docker-compose", "-f", COMPOSE, "-p", f"mcompose{uuid.uuid4().hex[:8]}"]

    def run(*args, timeout=300):
        return subprocess.run(compose + list(args), capture_output=True, text=True, env=env,
                              timeout=timeout)
    up = run("up", "-d")
    try:
        assert up.returncode == 0, f"docker-compose up:\n{up.stdout}\n{up.stderr}"
        admin = f"http://{host}:{ports['MAGNETAR_BROKER_1_ADMIN_PORT']}"
        admin2 = f"http://{host}:{ports['MAGNETAR_BROKER_2_ADMIN_PORT']}"
        for url in (admin, admin2):
            assert wait_for(lambda: http_get(url + "/status.html")[0] == 200, timeout=90), \
                run("logs", "--tail", "50").stdout
        for i in range(3):
            url = f"http://127.0.0.1:{ports[f'MAGNETAR_BOOKIE_{i}_HTTP_PORT']}/api/v1/bookie/is_ready"
            assert wait_for(lambda: http_get(url)[0] == 200, timeout=90), run("logs", "bookie-0").stdout

        client = make_client(f"pulsar://{host}:{ports['MAGNETAR_BROKER_1_PORT']}")
        topic = "persistent://public/default/compose"
        path = "/admin/v2/persistent/public/default/compose"
        try:
            consumer = client.subscribe(topic, "sub")
            producer = client.create_producer(topic, batching_enabled=False)
            for i in range(50):
                producer.send(f"c-{i}".encode())
            got = receive_all(consumer, 50, timeout_ms=20_000)
            assert [m.data().decode() for m in got] == [f"c-{i}" for i in range(50)]
            # Close the first ledger (unload the namespace's bundles), write on the next, then
            # offload what is closed to the compose file's S3 server.
            status, body = admin_call(admin + "/admin/v2/namespaces/public/default/unload", "PUT")
            assert status == 204, body
            last = producer.send(b"after-unload")
            owner = admin_call(admin + f"/lookup/v2/topic/persistent/public/default/compose", "GET")[1]
            owner_admin = admin if f":{ports['MAGNETAR_BROKER_1_PORT']}" in owner["brokerUrl"] else admin2
            status, body = admin_call(owner_admin + path + "/offload", "PUT",
                                      {"ledgerId": last.ledger_id(), "entryId": last.entry_id(),
                                       "partitionIndex": -1})
            assert status == 204, body
            assert wait_for(lambda: admin_call(owner_admin + path + "/offload", "GET")[1]["status"]
                            != "RUNNING", timeout=60)
            st = admin_call(owner_admin + path + "/offload", "GET")[1]
            assert st["status"] == "SUCCESS", st
            stats = admin_call(owner_admin + path + "/internalStats", "GET")[1]
            assert any(l["offloaded"] for l in stats["ledgers"]), stats
        except Exception as e:
            logs = run("logs", "--no-color", "broker-1", "broker-2").stdout
            raise AssertionError(f"{e!r} (ports {ports})\n{logs}") from e
        finally:
            client.close()
    finally:
        down = run("down", "-v", "--timeout", "30")
        assert down.returncode == 0, down.stderr
