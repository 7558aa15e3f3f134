#!/usr/bin/env bash
# The reconnection herd: COUNT real agents (one swarm process) connected to a release
# gateway; the gateway is killed with SIGKILL and started again on the same data dir and
# ports. Measures how the agents' backoff spreads the herd (time to 50 %, 90 %, 100 %
# reconnected), whether the management API stays responsive during it (one request every
# 100 ms, each with a 5 s limit: max and p99 latency, failures), and whether the gateway
# logged `database is locked`.
#
#   bench/herd.sh                          # COUNT=5000, TRANSPORT=quic
#   COUNT=1000 TRANSPORT=tcp bench/herd.sh
#   SKIP_BUILD=1 BIN=/work/head-bin bench/herd.sh   # existing binaries ($BIN/examples/swarm too)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COUNT="${COUNT:-5000}"
TRANSPORT="${TRANSPORT:-quic}"
BUILD_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
BIN="${BIN:-$BUILD_BIN}"
case "$TRANSPORT" in quic | tcp) ;; *) echo "TRANSPORT must be quic or tcp, not '$TRANSPORT'" >&2; exit 2 ;; esac
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || { echo "COUNT must be a positive integer" >&2; exit 2; }
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$REPO" && timeout 3600 nice -n 19 cargo build --release -p gateway --bins --example swarm)
fi
for b in gateway examples/swarm; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build it, or set BIN)" >&2; exit 1; }
done
TMP="$(mktemp -d /tmp/tunnel-herd.XXXXXX)"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
HTTP=$(free_port tcp); TUN=$(free_port both); API=$(free_port tcp)
ulimit -n 65536 2>/dev/null || true
now_ms() { date +%s%3N; }
start_gateway() {
  RUST_LOG=warn "$BIN/gateway" serve --data-dir "$TMP/gw" --http-listen "127.0.0.1:$HTTP" \
    --tunnel-listen "127.0.0.1:$TUN" --api-listen "127.0.0.1:$API" >> "$TMP/gateway.log" 2>&1 &
  GW=$!; PIDS+=("$GW")
}
start_gateway
for _ in $(seq 1 100); do [[ -f "$TMP/gw/gateway.db" ]] && break; sleep 0.1; done
sleep 1
kill -0 "$GW" 2>/dev/null || { cat "$TMP/gateway.log"; echo "gateway exited" >&2; exit 1; }
TOKEN=$(timeout 60 "$BIN/gateway" token create --role admin --data-dir "$TMP/gw")
HOLD=$((COUNT / 20 + 240))
SWARM_TRANSPORT="$TRANSPORT" SWARM_REPORT_MS=100 RUST_LOG=error timeout "$((HOLD + 300))" \
  "$BIN/examples/swarm" "$TMP/gw" "127.0.0.1:$TUN" "$COUNT" "$HOLD" > "$TMP/swarm.out" 2>&1 &
SW=$!; PIDS+=("$SW")
for _ in $(seq 1 3000); do
  grep -q "^connected" "$TMP/swarm.out" && break
  kill -0 "$SW" 2>/dev/null || break
  sleep 0.2
done
grep -q "^connected" "$TMP/swarm.out" || { cat "$TMP/swarm.out"; echo "swarm did not connect" >&2; exit 1; }
grep "^connected" "$TMP/swarm.out"
sleep 5 & wait $!
# The API prober: one request every 100 ms, each with a 5 s limit, until told to stop.
python3 - "$API" "$TOKEN" "$TMP/probe.out" "$TMP/probe.stop" <<'PY' &
import sys, time, urllib.request
api, token, out, stop = sys.argv[1:]
import os
with open(out, "w") as f:
    while not os.path.exists(stop):
        t0 = time.time()
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{api}/v1/devices?limit=1",
                                         headers={"authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=5) as r:
                r.read(); status = r.status
        except Exception as e:
            status = type(e).__name__
        t1 = time.time()
        f.write(f"{int(t0*1000)} {int((t1-t0)*1000)} {status}\n"); f.flush()
        time.sleep(max(0, 0.1 - (t1 - t0)))
PY
PROBE=$!; PIDS+=("$PROBE")
sleep 2 & wait $!
KILL_MS=$(now_ms)
kill -9 "$GW"; wait "$GW" 2>/dev/null || true
start_gateway
START_MS=$(now_ms)
echo "gateway killed (SIGKILL) at $KILL_MS, started again at $START_MS"
ALL_MS=""
for _ in $(seq 1 3000); do
  ALL_MS=$(awk -v s="$START_MS" -v n="$COUNT" '$1 == "report" && $2 > s && $3 == n { print $2; exit }' "$TMP/swarm.out")
  [[ -n "$ALL_MS" ]] && break
  kill -0 "$SW" 2>/dev/null || break
  sleep 0.2
done
sleep 2 & wait $!
touch "$TMP/probe.stop"; wait "$PROBE" 2>/dev/null || true
[[ -n "$ALL_MS" ]] || { tail -5 "$TMP/swarm.out"; echo "not every agent came back" >&2; exit 1; }
echo "transport: $TRANSPORT, agents: $COUNT"
awk -v s="$START_MS" -v n="$COUNT" '
  $1 == "report" && $2 > s {
    if (!h && $3 >= n * 0.5) { h = $2 - s }
    if (!ninety && $3 >= n * 0.9) { ninety = $2 - s }
    if ($3 == n) { printf "reconnected after the restart: 50%% in %.1f s, 90%% in %.1f s, 100%% in %.1f s\n", h/1000, ninety/1000, ($2-s)/1000; exit }
  }' "$TMP/swarm.out"
WINDOW="$(awk -v s="$START_MS" -v e="$ALL_MS" '$1 >= s && $1 <= e' "$TMP/probe.out")"
N=$(printf '%s\n' "$WINDOW" | grep -c . || true)
FAIL=$(printf '%s\n' "$WINDOW" | awk 'NF && $3 != 200' | wc -l)
MAX=$(printf '%s\n' "$WINDOW" | awk 'NF {print $2}' | sort -n | tail -1)
P99=$(printf '%s\n' "$WINDOW" | awk 'NF {print $2}' | sort -n | awk -v n="$N" 'NR == (int(n * 0.99) > 0 ? int(n * 0.99) : 1)')
echo "API during the herd: $N requests, max ${MAX:-?} ms, p99 ${P99:-?} ms, $FAIL not 200"
LOCKED=$(grep -c "database is locked" "$TMP/gateway.log" || true)
echo "gateway log lines with \"database is locked\": $LOCKED"
