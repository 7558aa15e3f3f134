#!/usr/bin/env bash
# Server time to render the dashboard's devices page (50 rows) with 10,000 devices in the
# store (SQLite), first page, last page, filters, search. Loopback, sequential requests.
# See the "Dashboard" section of BENCHMARKS.md.
#
#   bench/dashboard/run.sh                       # 10,000 devices, 50 requests per page
#   BENCH_DEVICES=50000 bench/dashboard/run.sh
#   PROFILE=dev bench/dashboard/run.sh           # without a release build
set -euo pipefail
cd "$(dirname "$0")/../.."
export BENCH_DEVICES="${BENCH_DEVICES:-10000}"
export BENCH_ITERATIONS="${BENCH_ITERATIONS:-50}"
profile=(--release)
[ "${PROFILE:-release}" = dev ] && profile=()
timeout 1200 cargo test "${profile[@]}" --locked -q -p e2e-tests --test dashboard -- \
  --ignored --exact bench_devices_page --nocapture 2>&1 | grep -E '^\||devices stored'
