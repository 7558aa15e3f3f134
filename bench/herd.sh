#!/usr/bin/env bash
# The reconnection herd: COUNT real agents (one swarm process) connected to a release
# gateway; the gateway is killed with SIGKILL and started again on the same data dir and
# ports. Measures how the agents' backoff spreads the herd (time to 50 %, 90 %, 100 %
# reconnected), whether the management API stays responsive during it (one request every
# 100 ms, each with a 5 s limit: p50, p99 and max latency, failures), and whether the gateway
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
  (cd "$REPO" && timeout 3600 nice -n 19 cargo build --release --locked -p gateway --bins --example swarm)
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
# udp_rcvbuf_errors: datagrams the kernel dropped for a full socket buffer (all sockets)
udp_rcvbuf_errors() { awk '$1 == "Udp:" && $6 ~ /^[0-9]+$/ { print $6 }' /proc/net/snmp; }
# start_gateway LOG: the gateway's `device connected` lines (info) time the herd
start_gateway() {
  RUST_LOG=warn,gateway::tunnel=info "$BIN/gateway" serve --data-dir "$TMP/gw" \
    --http-listen "127.0.0.1:$HTTP" --tunnel-listen "127.0.0.1:$TUN" \
    --api-listen "127.0.0.1:$API" > "$1" 2>&1 &
  GW=$!; PIDS+=("$GW")
}
# cpu_ms PID: user + system CPU time the process has used so far, in ms
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat"; }
# online_devices LOG: distinct devices the gateway logged as connected
online_devices() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" |
    awk '/device connected/ && match($0, /device=[0-9a-f]+/) { seen[substr($0, RSTART, RLENGTH)] = 1 }
         END { print length(seen) }'
}
start_gateway "$TMP/gateway.log"
for _ in $(seq 1 100); do [[ -f "$TMP/gw/gateway.db" ]] && break; sleep 0.1; done
sleep 1
kill -0 "$GW" 2>/dev/null || { cat "$TMP/gateway.log"; echo "gateway exited" >&2; exit 1; }
TOKEN=$(timeout 60 "$BIN/gateway" token create --role admin --data-dir "$TMP/gw")
HOLD=$((COUNT / 20 + 240))
# The probe reads the whole device table (the herd writes it) and answers an empty list.
PROBE_PATH="${PROBE_PATH:-/v1/devices?fleet=herd-probe}"
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
python3 - "$API" "$TOKEN" "$TMP/probe.out" "$TMP/probe.stop" "$PROBE_PATH" <<'PY' &
import sys, time, urllib.request
api, token, out, stop, path = sys.argv[1:]
import os
with open(out, "w") as f:
    while not os.path.exists(stop):
        t0 = time.time()
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{api}{path}",
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
UDP_DROPS0=$(udp_rcvbuf_errors)
kill -9 "$GW"; wait "$GW" 2>/dev/null || true
start_gateway "$TMP/gateway2.log"
START_MS=$(now_ms)
# the swarm itself, not its `timeout`
SWP=$(pgrep -P "$SW" -n || echo "$SW")
SW_CPU0=$(cpu_ms "$SWP")
echo "gateway killed (SIGKILL) at $KILL_MS, started again at $START_MS"
BACK=0
for _ in $(seq 1 1200); do
  BACK=$(online_devices "$TMP/gateway2.log")
  ((BACK >= COUNT)) && break
  kill -0 "$SW" 2>/dev/null || break
  sleep 0.5
done
ALL_MS=$(now_ms)
GW_CPU=$(cpu_ms "$GW")
UDP_DROPS=$(( $(udp_rcvbuf_errors) - UDP_DROPS0 ))
# Sessions the restarted gateway dropped again while the herd was still coming back.
CHURN=$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/gateway2.log" | grep -c "device disconnected" || true)
SW_CPU=$(( $(cpu_ms "$SWP") - SW_CPU0 ))
sleep 2 & wait $!
touch "$TMP/probe.stop"; wait "$PROBE" 2>/dev/null || true
((BACK >= COUNT)) || { tail -5 "$TMP/swarm.out"; echo "only $BACK of $COUNT agents came back" >&2; exit 1; }
echo "transport: $TRANSPORT, agents: $COUNT"
# The gateway's view: when each device's new session was up (its `device connected`).
python3 - "$TMP/gateway2.log" "$START_MS" "$COUNT" <<'PY'
import re, sys, datetime
log, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
first = {}
for line in open(log, errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "device connected" not in line:
        continue
    m = re.search(r"device=([0-9a-f]{32})", line)
    ts = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp() * 1000
    if m and m.group(1) not in first:
        first[m.group(1)] = ts - start
t = sorted(first.values())
at = lambda share: t[max(0, int(len(t) * share + 0.999999) - 1)] / 1000
print(f"back online after the restart (gateway view): 50% in {at(0.5):.1f} s, 90% in {at(0.9):.1f} s, 100% in {at(1.0):.1f} s")
PY
# The agents' view (swarm reports; its counters are tasks of a busy runtime, so they may
# lag): an agent counts once it noticed its connection was gone (the restarted gateway's
# stateless reset, or its own heartbeat timeout).
awk -v k="$KILL_MS" -v n="$COUNT" '
  $1 == "report" && $2 > k {
    if (!h && $4 >= n * 0.5) { h = $2 - k }
    if (!ninety && $4 >= n * 0.9) { ninety = $2 - k }
    if ($4 == n) { printf "connection seen lost after the kill (agent view): 50%% in %.1f s, 90%% in %.1f s, 100%% in %.1f s\n", h/1000, ninety/1000, ($2-k)/1000; exit }
  }' "$TMP/swarm.out"
echo "sessions of the restarted gateway that ended again before all were back: $CHURN; UDP datagrams dropped for full socket buffers (whole machine): $UDP_DROPS"
echo "CPU from the restart until all were back ($(( (ALL_MS - START_MS) / 1000 )) s): gateway ${GW_CPU} ms, swarm ${SW_CPU} ms"
# The herd window: from the restarted gateway's first answer (probes before it found
# nothing listening) until every agent was back.
FIRST_MS=$(awk -v s="$START_MS" '$1 >= s && $3 == 200 { print $1; exit }' "$TMP/probe.out")
echo "the restarted gateway's API answered $(( ${FIRST_MS:-$START_MS} - START_MS )) ms after its start"
WINDOW="$(awk -v s="${FIRST_MS:-$START_MS}" -v e="$ALL_MS" '$1 >= s && $1 <= e' "$TMP/probe.out")"
N=$(printf '%s\n' "$WINDOW" | grep -c . || true)
FAIL=$(printf '%s\n' "$WINDOW" | awk 'NF && $3 != 200' | wc -l)
MAX=$(printf '%s\n' "$WINDOW" | awk 'NF {print $2}' | sort -n | tail -1)
P99=$(printf '%s\n' "$WINDOW" | awk 'NF {print $2}' | sort -n | awk -v n="$N" 'NR == (int(n * 0.99) > 0 ? int(n * 0.99) : 1)')
P50=$(printf '%s\n' "$WINDOW" | awk 'NF {print $2}' | sort -n | awk -v n="$N" 'NR == (int(n * 0.5) > 0 ? int(n * 0.5) : 1)')
echo "API during the herd ($PROBE_PATH): $N requests, p50 ${P50:-?} ms, p99 ${P99:-?} ms, max ${MAX:-?} ms, $FAIL not 200"
LOCKED=$(cat "$TMP/gateway.log" "$TMP/gateway2.log" | grep -c "database is locked" || true)
echo "gateway log lines with \"database is locked\": $LOCKED"
