#!/usr/bin/env bash
# The SSE fan-out cost of the dashboard (issue 14, "Measure it"): a release `gateway
# serve` on SQLite, DEVICES real agents (one `sse_fanout` process) connecting and
# disconnecting all the time, and phases of 0 and 20 open `/events` streams. Per phase:
# the gateway's CPU time over the window, the presence changes the agents made, the
# events the streams got, and the delay of each offline event on each stream from the
# moment its agent was told to stop. See "Dashboard: SSE fan-out" in BENCHMARKS.md.
#
#   bench/dashboard/fanout.sh                       # 100 devices, phases 0,20,0,20, 10 s each
#   DURATION=10 DEVICES=200 PHASES=0,20 bench/dashboard/fanout.sh
#   SKIP_BUILD=1 BIN=/work/bin bench/dashboard/fanout.sh   # existing binaries
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DURATION="${DURATION:-10}"
DEVICES="${DEVICES:-100}"
PHASES="${PHASES:-0,20,0,20}"
FLAP_MS="${FLAP_MS:-1000}"
TRANSPORT="${TRANSPORT:-quic}"
BIN="${BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "DURATION must be a positive integer (seconds)" >&2; exit 2; }
[[ "$DEVICES" =~ ^[1-9][0-9]*$ ]] || { echo "DEVICES must be a positive integer" >&2; exit 2; }
[[ "$PHASES" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "PHASES must be a comma list of stream counts, like 0,20" >&2; exit 2; }
case "$TRANSPORT" in quic | tcp) ;; *) echo "TRANSPORT must be quic or tcp, not '$TRANSPORT'" >&2; exit 2 ;; esac
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$REPO" && timeout 3600 nice -n 19 cargo build --release --locked -p gateway --bins --example sse_fanout)
fi
for b in gateway examples/sse_fanout; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build it, or set BIN)" >&2; exit 1; }
done
TMP="$(mktemp -d /tmp/tunnel-fanout.XXXXXX)"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
HTTP=$(free_port tcp); TUN=$(free_port both); API=$(free_port tcp)
ulimit -n 65536 2>/dev/null || true
RUST_LOG=warn "$BIN/gateway" serve --data-dir "$TMP/gw" \
  --http-listen "127.0.0.1:$HTTP" --tunnel-listen "127.0.0.1:$TUN" \
  --api-listen "127.0.0.1:$API" > "$TMP/gateway.log" 2>&1 &
GW=$!; PIDS+=("$GW")
for _ in $(seq 1 100); do [[ -f "$TMP/gw/gateway.db" ]] && break; sleep 0.1; done
kill -0 "$GW" 2>/dev/null || { cat "$TMP/gateway.log"; echo "gateway exited" >&2; exit 1; }
TOKEN=$(timeout 60 "$BIN/gateway" token create --role viewer --data-dir "$TMP/gw")
n_phases=$(tr ',' '\n' <<< "$PHASES" | wc -l)
echo "gateway pid $GW; $DEVICES devices over $TRANSPORT, flapping every 0..$((2 * FLAP_MS)) ms; phases $PHASES of ${DURATION}s"
FANOUT_PHASES="$PHASES" FANOUT_DEVICES="$DEVICES" FANOUT_SECS="$DURATION" FANOUT_FLAP_MS="$FLAP_MS" \
  SWARM_TRANSPORT="$TRANSPORT" RUST_LOG=error \
  timeout "$((n_phases * (DURATION + 5) + 120))" \
  "$BIN/examples/sse_fanout" "$TMP/gw" "127.0.0.1:$TUN" "127.0.0.1:$API" "$TOKEN" "$GW"
if grep -q "database is locked" "$TMP/gateway.log"; then echo "gateway logged 'database is locked'"; fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
