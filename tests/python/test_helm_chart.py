"""The Helm chart (k8s/charts/magnetar), offline: no cluster, no helm binary, no magnetar binary.

Helm's Go SDK comes from PyPI `helm-python-sdk` (ctypes over libhelm_c: lint, render), the
Kubernetes API schemas from PyPI `kubernetes-validate` (strict variants: unknown fields are
errors), checked at Kubernetes 1.30.0. Both are required: without them every test here fails
and says `pip install helm-python-sdk==0.2.2 kubernetes-validate`.

What is checked: lint of the defaults and of every example values file; every rendered
manifest against the strict 1.30 schemas (the Prometheus Operator's ServiceMonitor/PodMonitor
are CRDs that kubernetes-validate has no schema for: they are checked by shape only); the
wiring (bookie identity from the pod's DNS name, separate journal and ledgers volumes, no Job,
checksum annotations that follow the configuration, standalone mode, etcd endpoints, offload
credentials); every MAGNETAR_<SECTION>__<KEY> the chart sets is a key of
docs/CONFIGURATION.md; bad values are refused with a message naming them.
"""

import copy
import glob
import os
import re

import pytest
import yaml

try:
    import helm_python as helm
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    IMPORT_ERROR = None
except Exception as e:  # ImportError, or OSError when libhelm_c cannot be loaded
    IMPORT_ERROR = e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "k8s", "charts", "magnetar")
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "k8s", "examples", "*.yaml")))
CONFIGURATION_MD = os.path.join(ROOT, "docs", "CONFIGURATION.md")
KUBE_VERSION = "1.30.0"
RELEASE = "rel"
NAMESPACE = "ns"
INSTALL_HINT = "pip install helm-python-sdk==0.2.2 kubernetes-validate"
# CRDs kubernetes-validate carries no schema for (checked by shape in test_monitoring_objects).
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}
# Configuration keys the chart may use that docs/CONFIGURATION.md does not list: none.
KEYS_NOT_YET_DOCUMENTED = set()

# Feature combinations rendered and validated besides the defaults and the examples.
VARIANTS = {
    "monitoring": {
        "monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "grafana": {"dashboards": {"enabled": True}},
    },
    "preferred-anti-affinity": {
        "etcd": {"podAntiAffinity": "preferred"},
        "bookie": {"podAntiAffinity": "preferred", "topologySpread": {"enabled": False}},
        "broker": {"podAntiAffinity": "required", "preStopSleepSeconds": 5},
    },
    "single-etcd": {"etcd": {"replicaCount": 1}, "monitoring": {"scrapeAnnotations": False}},
    "gcs-offload": {"offload": {"driver": "gcs", "bucket": "b", "gcs": {"existingSecret": "gcs-key"}}},
    "azure-offload": {
        "offload": {
            "driver": "azureblob",
            "bucket": "container",
            "azure": {"account": "acct", "existingSecret": "azure-key"},
        }
    },
    "filesystem-offload": {
        "offload": {"driver": "filesystem", "filesystem": {"existingClaim": "shared-offload"}}
    },
    "standalone-monitored": {
        "standalone": {"enabled": True, "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}]},
        "offload": {"driver": "filesystem"},
        "monitoring": {"serviceMonitor": {"enabled": True}},
    },
}


@pytest.fixture(scope="session")
def chart():
    if IMPORT_ERROR is not None:
        pytest.fail(
            f"the Helm chart tests need helm-python-sdk and kubernetes-validate ({IMPORT_ERROR!r}): "
            f"{INSTALL_HINT}",
            pytrace=False,
        )
    c = helm.Chart.load(CHART)
    yield c
    c.close()


def load_example(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def value_sets():
    """(id, values) of the defaults, every example file and the variants."""
    out = [("defaults", {})]
    out += [(os.path.basename(p), load_example(p)) for p in EXAMPLES]
    out += [(f"variant-{k}", v) for k, v in VARIANTS.items()]
    return out


VALUE_SETS = value_sets()


def merged(base, override):
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class Rendered:
    """The manifests of one render, by kind and name."""

    def __init__(self, files):
        self.files = files
        self.docs = []
        for name, text in sorted(files.items()):
            if not name.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.docs.append(doc)

    @property
    def notes(self):
        return next((t for n, t in self.files.items() if n.endswith("NOTES.txt")), "")

    def kinds(self):
        return {d["kind"] for d in self.docs}

    def of_kind(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind, name):
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert found, f"no {kind} {name} in {[(d['kind'], d['metadata']['name']) for d in self.docs]}"
        assert len(found) == 1, f"{kind} {name} rendered {len(found)} times"
        return found[0]

    def container(self, kind, name, container=None):
        spec = self.get(kind, name)["spec"]["template"]["spec"]
        cs = spec["containers"]
        if container is None:
            assert len(cs) == 1
            return cs[0]
        return next(c for c in cs if c["name"] == container)

    def env(self, kind, name):
        """The container's environment as Kubernetes builds it: envFrom ConfigMaps, then env
        (which wins). Values from the downward API or Secrets are returned as their source."""
        c = self.container(kind, name)
        out = {}
        for src in c.get("envFrom", []):
            cm = self.get("ConfigMap", src["configMapRef"]["name"])
            out.update(cm.get("data", {}))
        for e in c.get("env", []):
            out[e["name"]] = e["value"] if "value" in e else e["valueFrom"]
        return out


def render(chart, values=None, name=RELEASE, namespace=NAMESPACE):
    return Rendered(chart.render(values or {}, name=name, namespace=namespace, is_install=True))


def refused(chart, values):
    """The message of the refusal of `values` (schema or template check); fails if accepted."""
    with pytest.raises(helm.HelmError) as info:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(info.value)


# --- lint and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("values_id,values", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_lint_passes(chart, values_id, values):
    # strict: warnings count as errors (only the info "icon is recommended" may remain).
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report.get("errors"), f"helm lint ({values_id}): {report}"


def test_examples_exist():
    names = {os.path.basename(p) for p in EXAMPLES}
    assert {"standalone.yaml", "external-etcd.yaml", "s3-offload.yaml", "production.yaml"} <= names


@pytest.mark.parametrize("values_id,values", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_manifests_pass_strict_kubernetes_schemas(chart, values_id, values):
    r = render(chart, values)
    assert r.docs, "nothing rendered"
    failures, unchecked = [], set()
    for doc in r.docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") == NAMESPACE, f"{what} lacks the namespace"
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            failures.append(f"{what}: {path}: {e.message}")
        except SchemaNotFoundError:
            unchecked.add((doc["apiVersion"], doc["kind"]))
    assert not failures, "\n".join(failures)
    # Only the Prometheus Operator's CRDs may lack a schema.
    assert unchecked <= CRD_KINDS, f"no schema for {unchecked - CRD_KINDS}"


@pytest.mark.parametrize("values_id,values", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_no_job_and_no_hooks(chart, values_id, values):
    r = render(chart, values)
    assert not r.kinds() & {"Job", "CronJob"}, "cluster initialisation must not be a Job"
    for doc in r.docs:
        annotations = doc["metadata"].get("annotations") or {}
        assert "helm.sh/hook" not in annotations, f"{doc['kind']} {doc['metadata']['name']} is a hook"


@pytest.mark.parametrize("values_id,values", VALUE_SETS, ids=[v[0] for v in VALUE_SETS])
def test_only_documented_configuration_keys(chart, values_id, values):
    """magnetar refuses to start on an unknown MAGNETAR_<SECTION>__<KEY>: every one the chart
    sets must be a key of docs/CONFIGURATION.md."""
    with open(CONFIGURATION_MD) as f:
        documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_0-9]+)` \|", f.read(), re.M))
    assert len(documented) > 50, "could not read the keys of docs/CONFIGURATION.md"
    documented |= KEYS_NOT_YET_DOCUMENTED
    r = render(chart, values)
    names = set()
    for cm in r.of_kind("ConfigMap"):
        names |= {k for k in (cm.get("data") or {}) if k.startswith("MAGNETAR_")}
    for kind in ("Deployment", "StatefulSet"):
        for w in r.of_kind(kind):
            for c in w["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("MAGNETAR_")}
    assert names
    for name in names:
        section, _, key = name[len("MAGNETAR_"):].partition("__")
        assert key, f"{name} is not MAGNETAR_<SECTION>__<KEY>"
        assert f"{section.lower()}.{key.lower()}" in documented, (
            f"{name}: {section.lower()}.{key.lower()} is not a configuration key"
        )


# --- wiring -------------------------------------------------------------------------------


def test_default_objects(chart):
    r = render(chart)
    assert r.get("StatefulSet", "rel-etcd")["spec"]["replicas"] == 3
    assert r.get("StatefulSet", "rel-bookie")["spec"]["replicas"] == 3
    assert r.get("Deployment", "rel-broker")["spec"]["replicas"] == 2
    pdbs = {d["metadata"]["name"] for d in r.of_kind("PodDisruptionBudget")}
    assert pdbs == {"rel-etcd", "rel-bookie", "rel-broker"}
    assert r.get("PodDisruptionBudget", "rel-bookie")["spec"]["maxUnavailable"] == 1
    assert not r.of_kind("HorizontalPodAutoscaler")
    assert not r.of_kind("ServiceMonitor") and not r.of_kind("PodMonitor")


def test_pods_run_as_non_root_with_read_only_root(chart):
    image = f"magnetar:{chart.metadata['appVersion']}"
    for values in ({}, {"standalone": {"enabled": True}}):
        r = render(chart, values)
        for kind in ("Deployment", "StatefulSet"):
            for w in r.of_kind(kind):
                spec = w["spec"]["template"]["spec"]
                assert spec["securityContext"]["runAsNonRoot"] is True
                assert spec["securityContext"]["runAsUser"] == 10000
                assert spec["securityContext"]["fsGroup"] == 10000
                assert not spec.get("initContainers"), "no init containers"
                for c in spec["containers"]:
                    assert c["securityContext"]["readOnlyRootFilesystem"] is True
                    assert c["image"] == image
                    assert c["imagePullPolicy"] == "IfNotPresent"
                    assert "limits" in c["resources"] and "memory" in c["resources"]["limits"]


def test_etcd_members_have_stable_dns_names(chart):
    r = render(chart)
    sts = r.get("StatefulSet", "rel-etcd")
    assert sts["spec"]["serviceName"] == "rel-etcd"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    svc = r.get("Service", "rel-etcd")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    args = r.container("StatefulSet", "rel-etcd")["args"]
    initial = next(a for a in args if a.startswith("--initial-cluster="))
    assert initial == "--initial-cluster=" + ",".join(
        f"rel-etcd-{i}=http://rel-etcd-{i}.rel-etcd.ns.svc.cluster.local:2380" for i in range(3)
    )
    assert "--name=$(POD_NAME)" in args
    assert "--initial-advertise-peer-urls=http://$(POD_NAME).rel-etcd.ns.svc.cluster.local:2380" in args
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in anti
    assert r.get("PodDisruptionBudget", "rel-etcd")["spec"]["minAvailable"] == 2
    # The etcd image defaults to the project image; its own repository can replace it.
    assert r.container("StatefulSet", "rel-etcd")["image"] == f"magnetar:{chart.metadata['appVersion']}"
    assert r.container("StatefulSet", "rel-etcd")["command"] == ["etcd"]
    r2 = render(chart, {"etcd": {"image": {"repository": "quay.io/coreos/etcd", "tag": "v3.5.17"},
                                 "command": ["/usr/local/bin/etcd"]}})
    c = r2.container("StatefulSet", "rel-etcd")
    assert c["image"] == "quay.io/coreos/etcd:v3.5.17" and c["command"] == ["/usr/local/bin/etcd"]


def test_bookie_identity_is_the_pod_dns_name(chart):
    r = render(chart)
    c = r.container("StatefulSet", "rel-bookie")
    assert c["args"] == ["bookie"]
    env = r.env("StatefulSet", "rel-bookie")
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MAGNETAR_BOOKIE__ADVERTISED_ADDRESS"] == "$(POD_NAME).rel-bookie.ns.svc.cluster.local"
    # Kubernetes expands $(POD_NAME) only from variables defined before it.
    names = [e["name"] for e in c["env"]]
    assert names.index("POD_NAME") < names.index("MAGNETAR_BOOKIE__ADVERTISED_ADDRESS")
    assert env["MAGNETAR_BOOKIE__BIND_ADDRESS"] == "0.0.0.0"
    assert env["MAGNETAR_BOOKIE__PORT"] == "3181"
    assert env["MAGNETAR_BOOKIE__HTTP_PORT"] == "8000"
    assert "MAGNETAR_BOOKIE__ZONE" not in env
    # Never the pod IP (apache/pulsar#7569: bookies crash-looping on a changed IP).
    assert "status.podIP" not in yaml.safe_dump(r.get("StatefulSet", "rel-bookie"))
    sts = r.get("StatefulSet", "rel-bookie")
    assert sts["spec"]["serviceName"] == "rel-bookie"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    svc = r.get("Service", "rel-bookie")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in svc["spec"]["ports"]} == {3181, 8000}
    assert render(chart, {"bookie": {"zone": "eu-1a"}}).env("StatefulSet", "rel-bookie")[
        "MAGNETAR_BOOKIE__ZONE"
    ] == "eu-1a"


def test_bookie_journal_and_ledgers_are_separate_volumes(chart):
    values = {"bookie": {"journal": {"size": "7Gi", "storageClass": "fast"},
                         "ledgers": {"size": "99Gi", "storageClass": "big"},
                         "data_dir": "/var/lib/bookie"}}
    r = render(chart, values)
    sts = r.get("StatefulSet", "rel-bookie")
    templates = {t["metadata"]["name"]: t["spec"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert set(templates) == {"journal", "ledgers"}
    assert templates["journal"]["resources"]["requests"]["storage"] == "7Gi"
    assert templates["journal"]["storageClassName"] == "fast"
    assert templates["ledgers"]["resources"]["requests"]["storage"] == "99Gi"
    assert templates["ledgers"]["storageClassName"] == "big"
    mounts = {m["name"]: m for m in r.container("StatefulSet", "rel-bookie")["volumeMounts"]}
    assert r.env("StatefulSet", "rel-bookie")["MAGNETAR_BOOKIE__DATA_DIR"] == "/var/lib/bookie"
    # The ledgers volume is the data directory (its COOKIE and ledgers/), the journal volume
    # is <data_dir>/journal: the bookie's journal/ and ledgers/ sub-folders live on their own
    # volumes.
    assert mounts["ledgers"]["mountPath"] == "/var/lib/bookie"
    assert mounts["journal"]["mountPath"] == "/var/lib/bookie/journal"
    assert mounts["journal"]["subPath"] == "journal"
    # No storage class given: the cluster's default.
    r = render(chart)
    for t in r.get("StatefulSet", "rel-bookie")["spec"]["volumeClaimTemplates"]:
        assert "storageClassName" not in t["spec"]


def test_bookie_probes_placement_and_budget(chart):
    r = render(chart)
    c = r.container("StatefulSet", "rel-bookie")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 3181, "http": 8000}
    assert c["readinessProbe"]["httpGet"] == {"path": "/api/v1/bookie/is_ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/api/v1/bookie/state", "port": "http"}
    spec = r.get("StatefulSet", "rel-bookie")["spec"]["template"]["spec"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    annotations = r.get("StatefulSet", "rel-bookie")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"
    r = render(chart, {"bookie": {"podAntiAffinity": "preferred", "http_port": 9000}})
    spec = r.get("StatefulSet", "rel-bookie")["spec"]["template"]["spec"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" in spec["affinity"]["podAntiAffinity"]
    assert r.env("StatefulSet", "rel-bookie")["MAGNETAR_BOOKIE__HTTP_PORT"] == "9000"


def test_broker_wiring(chart):
    r = render(chart)
    dep = r.get("Deployment", "rel-broker")
    c = r.container("Deployment", "rel-broker")
    assert c["args"] == ["broker"]
    env = r.env("Deployment", "rel-broker")
    assert env["MAGNETAR_METADATA__BACKEND"] == "etcd"
    assert env["MAGNETAR_BROKER__BIND_ADDRESS"] == "0.0.0.0"
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["MAGNETAR_BROKER__ADVERTISED_ADDRESS"] == "$(POD_IP)"
    assert (env["MAGNETAR_BROKER__ENSEMBLE_SIZE"], env["MAGNETAR_BROKER__WRITE_QUORUM"],
            env["MAGNETAR_BROKER__ACK_QUORUM"]) == ("2", "2", "2")
    assert env["MAGNETAR_METADATA__ETCD_ROOT"] == "/magnetar"
    # The drain fits in the grace period (60 s - 5 s margin).
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    assert env["MAGNETAR_BROKER__BROKER_SHUTDOWN_TIMEOUT_MS"] == "55000"
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/status.html", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"pulsar": 6650, "http": 8080}
    assert "lifecycle" not in c
    svc = r.get("Service", "rel-broker")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"pulsar": 6650, "http": 8080}
    # No offload unless asked.
    assert not [k for k in env if k.startswith("MAGNETAR_OFFLOAD__")]

    r = render(chart, {"broker": {"ensemble_size": 3, "write_quorum": 3, "ack_quorum": 2,
                                  "terminationGracePeriodSeconds": 120, "preStopSleepSeconds": 10,
                                  "strategy": {"type": "Recreate"},
                                  "config": {"max_connections": 20000,
                                             "metadata.session_ttl_ms": 6000}}})
    env = r.env("Deployment", "rel-broker")
    assert (env["MAGNETAR_BROKER__ENSEMBLE_SIZE"], env["MAGNETAR_BROKER__WRITE_QUORUM"],
            env["MAGNETAR_BROKER__ACK_QUORUM"]) == ("3", "3", "2")
    assert env["MAGNETAR_BROKER__BROKER_SHUTDOWN_TIMEOUT_MS"] == "105000"
    assert env["MAGNETAR_BROKER__MAX_CONNECTIONS"] == "20000"
    assert env["MAGNETAR_METADATA__SESSION_TTL_MS"] == "6000"
    assert r.get("Deployment", "rel-broker")["spec"]["strategy"] == {"type": "Recreate"}
    c = r.container("Deployment", "rel-broker")
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 10}}}


def test_broker_autoscaling(chart):
    r = render(chart, {"broker": {"autoscaling": {"enabled": True, "minReplicas": 3,
                                                  "maxReplicas": 9}}})
    assert "replicas" not in r.get("Deployment", "rel-broker")["spec"]
    hpa = r.get("HorizontalPodAutoscaler", "rel-broker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "rel-broker"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_brokers_and_bookies_use_the_etcd_members(chart):
    expected = ",".join(f"http://rel-etcd-{i}.rel-etcd.ns.svc.cluster.local:2379" for i in range(3))
    r = render(chart)
    for kind, name in (("Deployment", "rel-broker"), ("StatefulSet", "rel-bookie")):
        assert r.env(kind, name)["MAGNETAR_METADATA__ETCD_ENDPOINTS"] == expected
    # The endpoints name pods the etcd StatefulSet and its service really create.
    sts = r.get("StatefulSet", "rel-etcd")
    assert sts["spec"]["serviceName"] == "rel-etcd" and r.get("Service", "rel-etcd")
    ports = {p["name"]: p["port"] for p in r.get("Service", "rel-etcd")["spec"]["ports"]}
    assert ports["client"] == 2379


def test_external_etcd(chart):
    endpoints = ["http://etcd-a:2379", "http://etcd-b:2379"]
    r = render(chart, {"etcd": {"enabled": False, "externalEndpoints": endpoints}})
    assert not [d for d in r.docs if d["metadata"]["name"].startswith("rel-etcd")]
    for kind, name in (("Deployment", "rel-broker"), ("StatefulSet", "rel-bookie")):
        assert r.env(kind, name)["MAGNETAR_METADATA__ETCD_ENDPOINTS"] == ",".join(endpoints)
    r = render(chart, load_example(os.path.join(ROOT, "k8s", "examples", "external-etcd.yaml")))
    env = r.env("Deployment", "rel-broker")
    assert env["MAGNETAR_METADATA__ETCD_ENDPOINTS"].startswith("http://etcd-0.etcd.infra")
    assert env["MAGNETAR_METADATA__ETCD_ROOT"] == "/magnetar/mq"


@pytest.mark.parametrize(
    "kind,name,change",
    [
        ("Deployment", "rel-broker", {"broker": {"config": {"max_connections": 123}}}),
        ("Deployment", "rel-broker", {"broker": {"ack_quorum": 1}}),
        ("Deployment", "rel-broker", {"offload": {"driver": "s3", "bucket": "b"}}),
        ("Deployment", "rel-broker", {"log": {"level": "debug"}}),
        ("StatefulSet", "rel-bookie", {"bookie": {"config": {"gc_interval_ms": 1234}}}),
        ("StatefulSet", "rel-bookie", {"metadata": {"session_ttl_ms": 5000}}),
        ("StatefulSet", "rel-standalone", {"standalone": {"config": {"broker.max_connections": 9}}}),
    ],
)
def test_checksum_follows_the_configuration(chart, kind, name, change):
    base = {"standalone": {"enabled": True}} if "standalone" in name else {}
    before = render(chart, base)
    after = render(chart, merged(base, change))

    def checksum(r):
        return r.get(kind, name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert re.fullmatch(r"[0-9a-f]{64}", checksum(before))
    assert checksum(before) != checksum(after), f"{change} left {kind} {name}'s checksum alone"
    # …and the ConfigMap the pods read really changed.
    assert before.get("ConfigMap", name)["data"] != after.get("ConfigMap", name)["data"]
    # A change that is not configuration leaves it alone.
    same = render(chart, merged(base, {"broker": {"replicaCount": 5}, "bookie": {"replicaCount": 4}}))
    assert checksum(same) == checksum(before)


def test_standalone_mode(chart):
    r = render(chart, {"standalone": {"enabled": True}})
    names = {(d["kind"], d["metadata"]["name"]) for d in r.docs}
    assert not [n for k, n in names if re.match(r"rel-(etcd|bookie|broker)", n)], names
    assert not r.kinds() & {"Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"}
    (sts,) = r.of_kind("StatefulSet")
    assert sts["metadata"]["name"] == "rel-standalone"
    assert sts["spec"]["replicas"] == 1
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    c = r.container("StatefulSet", "rel-standalone")
    assert c["args"] == ["standalone"]
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/data"}
    env = r.env("StatefulSet", "rel-standalone")
    assert env["MAGNETAR_STANDALONE__DATA_DIR"].startswith("/data/")
    assert env["MAGNETAR_STANDALONE__BIND_ADDRESS"] == "0.0.0.0"
    assert env["MAGNETAR_BROKER__ADVERTISED_ADDRESS"] == "rel-standalone.ns.svc.cluster.local"
    assert "MAGNETAR_METADATA__BACKEND" not in env  # standalone's embedded store
    assert c["readinessProbe"]["httpGet"]["path"] == "/status.html"
    svc = r.get("Service", "rel-standalone")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"pulsar": 6650, "http": 8080}
    assert "pulsar://rel-standalone.ns.svc.cluster.local:6650" in r.notes
    # The filesystem driver offloads to the pod's own volume.
    r = render(chart, {"standalone": {"enabled": True}, "offload": {"driver": "filesystem"}})
    env = r.env("StatefulSet", "rel-standalone")
    assert env["MAGNETAR_OFFLOAD__DIRECTORY"].startswith("/data/")


def test_s3_offload_with_secret(chart):
    r = render(chart, load_example(os.path.join(ROOT, "k8s", "examples", "s3-offload.yaml")))
    env = r.env("Deployment", "rel-broker")
    assert env["MAGNETAR_OFFLOAD__DRIVER"] == "aws-s3"
    assert env["MAGNETAR_OFFLOAD__BUCKET"] == "magnetar-offload"
    assert env["MAGNETAR_OFFLOAD__REGION"] == "eu-west-1"
    assert env["MAGNETAR_OFFLOAD__THRESHOLD_BYTES"] == "1073741824"  # no 1.073741824e+09
    assert env["AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "magnetar-s3", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "magnetar-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert "MAGNETAR_OFFLOAD__SERVICE_ENDPOINT" not in env  # empty values are left unset
    # Bookies do not offload.
    assert not [k for k in r.env("StatefulSet", "rel-bookie") if "OFFLOAD" in k or k.startswith("AWS_")]

    r = render(chart, {"offload": {"driver": "s3", "bucket": "b",
                                   "service_endpoint": "http://minio:9000", "path_style": True}})
    env = r.env("Deployment", "rel-broker")
    assert env["MAGNETAR_OFFLOAD__SERVICE_ENDPOINT"] == "http://minio:9000"
    assert env["MAGNETAR_OFFLOAD__PATH_STYLE"] == "true"
    assert "AWS_ACCESS_KEY_ID" not in env


def test_offload_through_cloud_iam(chart):
    role = "arn:aws:iam::123456789012:role/magnetar-offload"
    r = render(chart, {"offload": {"driver": "s3", "bucket": "b"},
                       "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": role}}})
    sa = r.get("ServiceAccount", "rel-magnetar")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role
    assert r.get("Deployment", "rel-broker")["spec"]["template"]["spec"]["serviceAccountName"] == "rel-magnetar"
    assert "AWS_ACCESS_KEY_ID" not in r.env("Deployment", "rel-broker")


def test_gcs_azure_and_filesystem_offload(chart):
    r = render(chart, VARIANTS["gcs-offload"])
    env = r.env("Deployment", "rel-broker")
    path = env["MAGNETAR_OFFLOAD__SERVICE_ACCOUNT_PATH"]
    spec = r.get("Deployment", "rel-broker")["spec"]["template"]["spec"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "offload-gcs")
    assert path == f"{mount['mountPath']}/service-account.json"
    assert any(v.get("secret", {}).get("secretName") == "gcs-key" for v in spec["volumes"])

    env = render(chart, VARIANTS["azure-offload"]).env("Deployment", "rel-broker")
    assert env["MAGNETAR_OFFLOAD__AZURE_ACCOUNT"] == "acct"
    assert env["MAGNETAR_OFFLOAD__AZURE_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "azure-key", "key": "AZURE_STORAGE_ACCOUNT_KEY"}}

    r = render(chart, VARIANTS["filesystem-offload"])
    env = r.env("Deployment", "rel-broker")
    assert env["MAGNETAR_OFFLOAD__DIRECTORY"] == "/offload"
    spec = r.get("Deployment", "rel-broker")["spec"]["template"]["spec"]
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "shared-offload"
               for v in spec["volumes"])


def test_monitoring_objects(chart):
    r = render(chart, VARIANTS["monitoring"])
    monitors = {d["metadata"]["name"]: d for d in r.of_kind("ServiceMonitor")}
    assert set(monitors) == {"rel-broker", "rel-bookie", "rel-etcd"}
    services = {d["metadata"]["name"]: d for d in r.of_kind("Service")}
    for name, m in monitors.items():
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        (endpoint,) = m["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["honorLabels"] is True, "a Pulsar namespace label must not be renamed"
        # The named port exists on the service the monitor selects.
        selected = [s for s in services.values()
                    if all(s["metadata"]["labels"].get(k) == v
                           for k, v in m["spec"]["selector"]["matchLabels"].items())]
        assert [s["metadata"]["name"] for s in selected] == [name]
        assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    pods = {d["metadata"]["name"]: d for d in r.of_kind("PodMonitor")}
    assert set(pods) == {"rel-broker", "rel-bookie", "rel-etcd"}
    for m in pods.values():
        (endpoint,) = m["spec"]["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics"
    # Standalone: one monitor, selecting the client service (not the governing one).
    r2 = render(chart, VARIANTS["standalone-monitored"])
    (m,) = r2.of_kind("ServiceMonitor")
    selector = m["spec"]["selector"]
    selected = [s["metadata"]["name"] for s in r2.of_kind("Service")
                if all(s["metadata"]["labels"].get(k) == v for k, v in selector["matchLabels"].items())
                and not any(e["key"] in s["metadata"]["labels"] for e in selector.get("matchExpressions", [])
                            if e["operator"] == "DoesNotExist")]
    assert selected == ["rel-standalone"]
    # One ConfigMap per shipped dashboard (overview, topic, bookie, offload).
    shipped = glob.glob(os.path.join(CHART, "dashboards", "*.json"))
    assert len(shipped) == 4
    dashboards = [d for d in r.of_kind("ConfigMap")
                  if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dashboards) == len(shipped)


def test_notes_name_the_service_and_the_admin_api(chart):
    notes = render(chart).notes
    assert "pulsar://rel-broker.ns.svc.cluster.local:6650" in notes
    assert "kubectl -n ns port-forward svc/rel-broker 8080:8080" in notes


def test_long_release_names_fit(chart):
    name = "a" * 53  # Helm's longest release name
    r = render(chart, name=name)
    for d in r.docs:
        assert len(d["metadata"]["name"]) <= 63
        if d["kind"] == "StatefulSet":
            # StatefulSet pods get a controller-revision-hash label of <name>-<10 chars>.
            assert len(d["metadata"]["name"]) <= 52, d["metadata"]["name"]


# --- refused values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values,expected",
    [
        ({"broker": {"replicaCount": -1}}, r"/broker/replicaCount.*minimum"),
        ({"bookie": {"replicaCount": 0}}, r"/bookie/replicaCount.*minimum"),
        ({"bookie": {"replicaCount": -1}}, r"/bookie/replicaCount.*minimum"),
        ({"etcd": {"replicaCount": 2}}, r"/etcd/replicaCount"),
        ({"broker": {"ack_quorum": 0}}, r"/broker/ack_quorum.*minimum"),
        ({"broker": {"ack_quorum": 3, "write_quorum": 2, "ensemble_size": 3}},
         r"broker\.ack_quorum \(3\) must not exceed broker\.write_quorum \(2\)"),
        ({"broker": {"write_quorum": 3, "ensemble_size": 2}},
         r"broker\.write_quorum \(3\) must not exceed broker\.ensemble_size \(2\)"),
        ({"broker": {"ensemble_size": 4, "write_quorum": 2}},
         r"broker\.ensemble_size \(4\) is larger than bookie\.replicaCount \(3\)"),
        ({"offload": {"driver": "dropbox"}}, r"/offload/driver.*one of"),
        ({"offload": {"driver": "s3"}}, r"offload\.bucket is empty"),
        ({"offload": {"driver": "filesystem"}}, r"offload\.filesystem\.existingClaim is empty"),
        ({"etcd": {"enabled": False}}, r"/etcd/externalEndpoints"),
        ({"etcd": {"enabled": False, "externalEndpoints": ["etcd:2379"]}}, r"/etcd/externalEndpoints/0"),
        ({"broker": {"replicas": 3}}, r"'replicas' not allowed"),
        ({"broker": {"config": {"Max-Connections": 1}}}, r"'Max-Connections' does not match pattern"),
        ({"broker": {"autoscaling": {"enabled": True}, "resources": {"requests": None}}},
         r"needs broker\.resources\.requests\.cpu"),
        ({"bookie": {"podAntiAffinity": "sometimes"}}, r"/bookie/podAntiAffinity"),
        ({"bookie": {"journal": {"size": "lots"}}}, r"/bookie/journal/size"),
    ],
)
def test_bad_values_are_refused_with_a_message(chart, values, expected):
    message = refused(chart, values)
    assert re.search(expected, message), f"refusal of {values} does not say {expected!r}: {message}"
    if "schema" in message:
        # helm lint reports schema violations too. (Checks between values are the templates'
        # `fail`, which helm lint only logs: its lint mode turns `fail` into a log line, while
        # install, upgrade and template refuse.)
        report = helm.lint(CHART, values, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
        assert [m for m in report["messages"] if m["severity"] == 3] or report.get("errors"), report


def test_grafana_dashboards_hook(chart, tmp_path):
    """A dashboards/*.json file becomes a ConfigMap for Grafana's sidecar when enabled."""
    import shutil

    copy_dir = tmp_path / "magnetar"
    shutil.copytree(CHART, copy_dir)
    for shipped in (copy_dir / "dashboards").glob("*.json"):
        shipped.unlink()
    (copy_dir / "dashboards" / "Magnetar_Overview.json").write_text('{"title": "Magnetar overview"}\n')
    with helm.Chart.load(str(copy_dir)) as c:
        off = Rendered(c.render({}, name=RELEASE, namespace=NAMESPACE, is_install=True))
        on = Rendered(c.render({"grafana": {"dashboards": {"enabled": True, "labels": {"team": "mq"}}}},
                               name=RELEASE, namespace=NAMESPACE, is_install=True))
    assert not [d for d in off.of_kind("ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    (cm,) = [d for d in on.of_kind("ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["team"] == "mq"
    assert cm["metadata"]["name"] == "rel-dashboard-magnetar-overview"
    assert cm["data"] == {"Magnetar_Overview.json": '{"title": "Magnetar overview"}'}
    kubernetes_validate.validate(cm, KUBE_VERSION, strict=True)
