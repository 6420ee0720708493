#!/usr/bin/env bash
# Builds the Magnetar container image (k8s/Dockerfile) with no registry: the base image is made
# here from this machine's Debian packages — the C libraries `magnetar` and `etcd` link, CA
# certificates, a passwd entry for the user 10000 — with `docker import` of a root file system
# (no shell, no package manager: nothing but what the binaries need).
#
#   k8s/build-image.sh [--binary PATH] [--tag magnetar:0.1.0] [--base IMAGE] [--s3-dev [PATH]]
#
#   --binary  the magnetar binary (default: target/release/magnetar, built if missing)
#   --tag     the image's name (default: magnetar:<version in Cargo.toml>)
#   --base    a base image instead of the local one, e.g. debian:bookworm-slim from a registry
#   --s3-dev  also build magnetar-s3-dev:<same tag> (k8s/Dockerfile.s3-dev), the S3-compatible
#             server of k8s/docker-compose.yaml, from PATH (default: target/release/magnetar-s3-dev,
#             built if missing)
#
# Needs docker, and etcd (Debian's etcd-server package) for the etcd binary the chart runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BINARY="$ROOT/target/release/magnetar"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
TAG="magnetar:${VERSION:-latest}"
BASE=""
BASE_TAG="magnetar-base:local"
S3_DEV=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --binary) BINARY="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --base) BASE="$2"; shift 2 ;;
    --s3-dev)
      if [[ $# -ge 2 && "$2" != --* ]]; then S3_DEV="$2"; shift 2
      else S3_DEV="$ROOT/target/release/magnetar-s3-dev"; shift; fi ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done

fail() { echo "build-image: $*" >&2; exit 1; }
command -v docker >/dev/null || fail "docker is missing"
ETCD="$(command -v etcd || true)"
[[ -z "$ETCD" && -x /usr/bin/etcd ]] && ETCD=/usr/bin/etcd
[[ -n "$ETCD" ]] || fail "etcd is missing: apt-get install -y etcd-server (its binary goes into the image)"
if [[ ! -x "$BINARY" ]]; then
  [[ "$BINARY" == "$ROOT/target/release/magnetar" ]] || fail "$BINARY does not exist"
  (cd "$ROOT" && cargo build --release --bin magnetar)
fi

if [[ -n "$S3_DEV" && ! -x "$S3_DEV" ]]; then
  [[ "$S3_DEV" == "$ROOT/target/release/magnetar-s3-dev" ]] || fail "$S3_DEV does not exist"
  (cd "$ROOT" && cargo build --release -p magnetar-testkit --bin magnetar-s3-dev)
fi

CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
# The release profile keeps debug info for profiling; the image does not need it.
strip -o "$CONTEXT/magnetar" "$BINARY" 2>/dev/null || cp "$BINARY" "$CONTEXT/magnetar"
cp "$ETCD" "$CONTEXT/etcd"
mkdir -p "$CONTEXT/data/bookie/journal" "$CONTEXT/data/standalone" "$CONTEXT/etcd-data"
cp "$ROOT/k8s/Dockerfile" "$CONTEXT/Dockerfile"
if [[ -n "$S3_DEV" ]]; then
  strip -o "$CONTEXT/magnetar-s3-dev" "$S3_DEV" 2>/dev/null || cp "$S3_DEV" "$CONTEXT/magnetar-s3-dev"
  mkdir -p "$CONTEXT/s3-data"
  cp "$ROOT/k8s/Dockerfile.s3-dev" "$CONTEXT/Dockerfile.s3-dev"
fi

if [[ -z "$BASE" ]]; then
  ROOTFS="$CONTEXT/rootfs"
  mkdir -p "$ROOTFS/etc/ssl/certs" "$ROOTFS/tmp" "$ROOTFS/usr/local/bin"
  chmod 1777 "$ROOTFS/tmp"
  # Every library either binary links, with the dynamic loader, at the paths they are found.
  bins=("$CONTEXT/magnetar" "$CONTEXT/etcd")
  [[ -n "$S3_DEV" ]] && bins+=("$CONTEXT/magnetar-s3-dev")
  libs="$(ldd "${bins[@]}" \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} NF == 2 && $1 ~ /^\// {print $1}' | sort -u)"
  [[ -n "$libs" ]] || fail "ldd found no libraries (a static binary needs none: use --base scratch?)"
  for lib in $libs; do
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L "$lib" "$ROOTFS$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nmagnetar:x:10000:10000:magnetar:/data:/sbin/nologin\n' \
    > "$ROOTFS/etc/passwd"
  printf 'root:x:0:\nmagnetar:x:10000:\n' > "$ROOTFS/etc/group"
  printf 'hosts: files dns\n' > "$ROOTFS/etc/nsswitch.conf"
  if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    # Object stores over TLS (S3, GCS, Azure) verify against these.
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/"
  fi
  tar -C "$ROOTFS" --owner=0 --group=0 -c . | docker import - "$BASE_TAG" >/dev/null
  rm -rf "$ROOTFS"
  BASE="$BASE_TAG"
fi

docker build --quiet --build-arg "BASE=$BASE" -t "$TAG" "$CONTEXT" >/dev/null
echo "built $TAG (base $BASE)"
if [[ -n "$S3_DEV" ]]; then
  S3_TAG="magnetar-s3-dev:${TAG##*:}"
  docker build --quiet --build-arg "BASE=$BASE" -f "$CONTEXT/Dockerfile.s3-dev" -t "$S3_TAG" \
    "$CONTEXT" >/dev/null
  echo "built $S3_TAG (base $BASE)"
fi
