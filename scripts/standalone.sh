#!/usr/bin/env bash
# Builds Magnetar (release) and runs `magnetar standalone`: the whole system in one process.
# Arguments are passed on, e.g. `scripts/standalone.sh --data-dir /tmp/magnetar`.
# Runs from the repository root (so the workspace's .cargo/config.toml applies): relative paths,
# including the default data directory ./data, are relative to it.
# Needs only the Rust toolchain and gcc.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo run --release --bin magnetar -- standalone "$@"
