#!/usr/bin/env bash
# Memory after a slow-POST burst: N visitors each announce a 100 MB body and send one
# byte every 2 s (issue 9's attack), held for a while, then all close. Prints, per run,
# gateway and agent RSS in MiB: before / peak / while held / 2 s, 10 s and 30 s after the
# visitors left. Loopback only, bounded. See BENCHMARKS.md ("Memory after a slow-POST
# burst").
#
#   bench/slowpost/run.sh                       # the binaries of this tree, as built
#   BENCH_VISITORS=1000 bench/slowpost/run.sh
#   BENCH_BIN_DIR=/tmp/old bench/slowpost/run.sh   # other builds of gateway/edge-agent
#   MALLOC_ARENA_MAX=2 BENCH_LABEL=arena2 bench/slowpost/run.sh   # glibc knob (inherited)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
PROFILE="${BENCH_PROFILE:-release}"
if [ -z "${BENCH_BIN_DIR:-}" ]; then
  if [ "$PROFILE" = release ]; then
    cargo build --release --locked -q -p gateway -p edge-agent --bins
  else
    cargo build --locked -q -p gateway -p edge-agent --bins
  fi
  export BENCH_BIN_DIR="$CARGO_TARGET_DIR/$PROFILE"
fi
export BENCH_VISITORS="${BENCH_VISITORS:-3000}"
# The test process holds both ends of every visitor and backend connection.
ulimit -n "$(ulimit -Hn)"
echo "| run | visitors | gateway MiB: before / peak / held / +2 s / +10 s / +30 s | agent MiB: before / peak / held / +2 s / +10 s / +30 s |"
echo "|---|---|---|---|"
timeout 600 cargo test --locked -q -p e2e-tests --test visitors -- \
  --ignored --exact bench_slow_post_burst --nocapture 2>&1 | grep '^|'
