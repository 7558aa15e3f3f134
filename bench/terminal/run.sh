#!/usr/bin/env bash
# Terminal keystroke-to-echo round trip: through the gateway (WebSocket → QUIC stream →
# agent PTY → back) beside a local PTY running the same shell (the limit). Loopback only,
# bounded iterations. See bench/terminal/RESULTS.md.
#
#   bench/terminal/run.sh                 # 2000 keystrokes per path
#   BENCH_ITERATIONS=500 bench/terminal/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Release binaries for the gateway and the agent (separate processes, as deployed) and a
# release build of the client side (the ignored test `bench_keystroke_echo`).
cargo build --release --locked -q -p gateway -p edge-agent --bins
export BENCH_BIN_DIR="$CARGO_TARGET_DIR/release"
export BENCH_ITERATIONS="${BENCH_ITERATIONS:-2000}"
timeout 600 cargo test --release --locked -q -p e2e-tests --test terminal -- \
  --ignored --exact bench_keystroke_echo --nocapture 2>&1 | grep '^|'
