#!/usr/bin/env bash
# Reconciler measurements on the real engine: no-op pass, release -> all healthy (images
# present / pulled), downtime per update strategy, RSS. Needs root and a running Docker.
# Usage: bash bench/reconciler/run.sh   (from the workspace root or anywhere)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
bash tests/fixtures/engine/build-images.sh
bash tests/fixtures/engine/registry.sh start >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p edge-agent --example reconciler_bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "engine: $(docker info --format '{{.ServerVersion}} ({{.Driver}})')"
"$CARGO_TARGET_DIR/release/examples/reconciler_bench"
