#!/usr/bin/env bash
# The whole test suite of Magnetar, as CI runs it (.ci/run calls exactly this script).
#
# 1. installs what the tests need when it is missing (etcd, from Debian's etcd-server);
# 2. cargo fmt --check;  3. cargo clippy -D warnings;
# 4. the tests: cargo nextest if installed (prefer it), else cargo test; then the official
#    Pulsar client's suite (tests/python, pytest) against a real `magnetar standalone`;
# 5. cargo bench --no-run, so the benchmarks keep compiling.
# Exits non-zero as soon as a step fails (the test step itself runs every test: --no-fail-fast).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${CI:-}" == "true" ]]; then
  export CARGO_TERM_COLOR=never
fi

step() {
  printf '\n==> %s\n' "$*"
}

fail() {
  printf 'scripts/test.sh: %s\n' "$*" >&2
  exit 1
}

# --- 1. What the tests need ------------------------------------------------------------------

# Run as root, or through sudo when there is one; empty when neither is possible.
as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    return 1
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  if [[ "$APT_UPDATED" -eq 0 ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update || return 1
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

step "1/5 install what the tests need"
# etcd: the metadata store's etcd backend is tested against a real etcd on 127.0.0.1.
if command -v etcd >/dev/null 2>&1 || [[ -x /usr/bin/etcd ]]; then
  echo "etcd: present ($(command -v etcd || echo /usr/bin/etcd))"
else
  echo "etcd: missing; installing the Debian package etcd-server"
  apt_install etcd-server \
    || fail "cannot install etcd: run 'apt-get install -y etcd-server' as root (Debian/Ubuntu), or put an etcd binary (v3.4 or later) on PATH, then rerun"
  command -v etcd >/dev/null 2>&1 || [[ -x /usr/bin/etcd ]] \
    || fail "etcd-server was installed but no etcd binary is on PATH or at /usr/bin/etcd"
fi
# The official Pulsar client (C++ core) and pytest: tests/python drives standalone with them.
command -v python3 >/dev/null 2>&1 \
  || fail "python3 is missing: install Python 3.9 or later (e.g. apt-get install -y python3 python3-pip), then rerun"
# pulsar-client[avro] brings fastavro, which the client's AvroSchema needs (test_schema.py);
# helm-python-sdk (Helm's Go SDK, no helm binary) and kubernetes-validate check the chart
# (test_helm_chart.py).
if python3 -c 'import pulsar, pytest, fastavro, helm_python, kubernetes_validate' >/dev/null 2>&1; then
  echo "pulsar-client[avro], pytest, helm-python-sdk, kubernetes-validate: present"
else
  echo "pulsar-client[avro], pytest, helm-python-sdk or kubernetes-validate: missing; installing them with pip"
  python3 -m pip install --quiet 'pulsar-client[avro]' pytest 'helm-python-sdk==0.2.2' kubernetes-validate \
    || fail "cannot install the Python test dependencies: run \"python3 -m pip install 'pulsar-client[avro]' pytest 'helm-python-sdk==0.2.2' kubernetes-validate\", then rerun"
fi
# An S3-compatible server for the tiered-storage tests (moto's server, started by the harness).
if command -v moto_server >/dev/null 2>&1 || [[ -n "${MAGNETAR_MOTO_BIN:-}" ]] \
  || python3 -c 'import moto.server' >/dev/null 2>&1; then
  echo "moto_server: present"
else
  echo "moto_server: missing; installing moto[server] with pip"
  python3 -m pip install --quiet 'moto[server]' \
    || fail "cannot install moto: run \"python3 -m pip install 'moto[server]'\", then rerun"
  python3 -c 'import moto.server' >/dev/null 2>&1 \
    || fail "moto[server] was installed but python3 cannot import moto.server"
fi
# Docker runs the image, the rendered chart and the compose cluster (test_k8s_docker.py).
command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 \
  || fail "docker is missing or its daemon is not running: install Docker Engine and start it (the image and chart tests run containers), then rerun"
if command -v docker-compose >/dev/null 2>&1; then
  echo "docker-compose: present"
else
  echo "docker-compose: missing; installing the Debian package docker-compose"
  apt_install docker-compose \
    || fail "cannot install docker-compose: run 'apt-get install -y docker-compose' as root, then rerun"
fi
# promtool checks /metrics (test_metrics.py): Debian's prometheus package.
if command -v promtool >/dev/null 2>&1; then
  echo "promtool: present"
else
  echo "promtool: missing; installing the Debian package prometheus"
  apt_install prometheus \
    || fail "cannot install promtool: run 'apt-get install -y prometheus' as root (Debian/Ubuntu), or put a promtool binary on PATH, then rerun"
  command -v promtool >/dev/null 2>&1 \
    || fail "prometheus was installed but no promtool is on PATH"
fi
cargo --version

# --- 2. Formatting ---------------------------------------------------------------------------
step "2/5 cargo fmt --all --check"
cargo fmt --all --check

# --- 3. Lints --------------------------------------------------------------------------------
step "3/5 cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# --- 4. Tests --------------------------------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doc tests: run them first, so that nextest's summary line
  # ("N tests run: N passed, ...") is the last word of the test step, where CI reads it.
  step "4/5 cargo test --workspace --doc"
  cargo test --workspace --doc
  step "4/5 cargo nextest run --workspace --no-fail-fast"
  cargo nextest run --workspace --no-fail-fast
else
  step "4/5 cargo test --workspace --no-fail-fast (cargo-nextest is not installed)"
  cargo test --workspace --no-fail-fast
fi
step "4/5 official Pulsar client suite: python3 -m pytest tests/python -q"
# magnetar-s3-dev: the object store of k8s/docker-compose.yaml (test_k8s_docker.py).
cargo build --bin magnetar
cargo build -p magnetar-testkit --bin magnetar-s3-dev
MAGNETAR_BIN="${MAGNETAR_BIN:-$PWD/target/debug/magnetar}" python3 -m pytest tests/python -q

# --- 5. Benchmarks compile -------------------------------------------------------------------
step "5/5 cargo bench --workspace --no-run"
cargo bench --workspace --no-run

step "all steps passed"
