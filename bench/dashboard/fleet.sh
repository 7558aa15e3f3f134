#!/usr/bin/env bash
# Server time to render the dashboard's fleet page (releases with, per release, how many
# devices should run it) for a fleet of 10,000 devices and 20 releases, and one of its
# device pages. Loopback, sequential requests. See the "Dashboard" sections of
# BENCHMARKS.md.
#
#   bench/dashboard/fleet.sh                               # 10,000 devices, 20 releases
#   BENCH_DEVICES=2000 BENCH_RELEASES=50 bench/dashboard/fleet.sh
#   PROFILE=dev bench/dashboard/fleet.sh                   # without a release build
set -euo pipefail
cd "$(dirname "$0")/../.."
export BENCH_DEVICES="${BENCH_DEVICES:-10000}"
export BENCH_RELEASES="${BENCH_RELEASES:-20}"
export BENCH_ITERATIONS="${BENCH_ITERATIONS:-50}"
profile=(--release)
[ "${PROFILE:-release}" = dev ] && profile=()
timeout 1200 cargo test "${profile[@]}" --locked -q -p e2e-tests --test dashboard_releases -- \
  --ignored --exact bench_fleet_page --nocapture 2>&1 | grep -E '^\||stored in'
