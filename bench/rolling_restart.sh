#!/usr/bin/env bash
# Rolling restart under a steady load, measured: the test
# `a_rolling_restart_under_steady_load_fails_requests_only_in_each_devices_reconnect_window`
# (tests/tests/netns_cluster.rs) at a longer length. Three `gateway serve` nodes, each in
# a network namespace of its own on its own address, on one PostgreSQL (the test
# set-up's, on the host); DEVICES real `edge-agent` processes in another namespace; a
# client in the test sends RATE requests a second to every device, each on its own
# schedule (not after the last answer), through a node that stays up, while the nodes
# are restarted one by one (SIGTERM, started again) ROUNDS times, with SETTLE seconds
# of load between steps. Prints every device's reconnect windows (first failed request
# to first success after it) and their p50 and max, and fails if a request failed
# outside a window of a device whose node was restarting, or a window passed 10 s.
#
#   bench/rolling_restart.sh                          # 30 devices, 5 req/s each, 2 rounds
#   DEVICES=60 RATE=2 ROUNDS=3 SETTLE=10 bench/rolling_restart.sh
#
# Needs root (network namespaces, nft), iproute2, nftables and PostgreSQL
# (apt-get install -y postgresql). Debug build, as the test suite builds it.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICES="${DEVICES:-30}"
RATE="${RATE:-5}"
ROUNDS="${ROUNDS:-2}"
SETTLE="${SETTLE:-5}"
for v in DEVICES RATE ROUNDS SETTLE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
((DEVICES <= 240)) || { echo "DEVICES is at most 240" >&2; exit 2; }
((RATE <= 100)) || { echo "RATE is at most 100 requests a second per device" >&2; exit 2; }
[[ "$(id -u)" == 0 ]] || { echo "run as root: the test makes network namespaces" >&2; exit 1; }
for t in ip nft; do
  command -v "$t" >/dev/null || { echo "missing '$t' (apt-get install -y iproute2 nftables)" >&2; exit 1; }
done
cd "$REPO"
CI=true ROLLING_DEVICES="$DEVICES" ROLLING_RATE="$RATE" ROLLING_ROUNDS="$ROUNDS" \
  ROLLING_SETTLE="$SETTLE" timeout 3600 cargo test -p e2e-tests --locked --test netns_cluster \
  a_rolling_restart -- --nocapture --test-threads=1 2>&1 \
  | grep -E '^(restarted node|netns-device-|rolling restart|test |thread|  )'
