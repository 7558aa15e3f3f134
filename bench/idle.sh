#!/usr/bin/env bash
# Gateway memory per idle connected device: start a release gateway, measure its RSS,
# connect COUNT real agents (each its own identity and connection, over QUIC or over
# TLS on TCP) from one swarm process, wait until all are connected and settled,
# measure again.
#
#   bench/idle.sh                    # COUNT=1000, TRANSPORT=quic
#   COUNT=200 TRANSPORT=tcp bench/idle.sh
#   SKIP_BUILD=1 BIN=/work/head-bin bench/idle.sh   # existing binaries ($BIN/examples/swarm too)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COUNT="${COUNT:-1000}"
HOLD="${HOLD:-20}"
TRANSPORT="${TRANSPORT:-quic}"     # the agents' transport: quic | tcp
BUILD_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
BIN="${BIN:-$BUILD_BIN}"           # gateway and examples/swarm
case "$TRANSPORT" in quic | tcp) ;; *) echo "TRANSPORT must be quic or tcp, not '$TRANSPORT'" >&2; exit 2 ;; esac
[[ "$COUNT" =~ ^[1-9][0-9]*$ && "$HOLD" =~ ^[0-9]+$ ]] || { echo "COUNT and HOLD must be integers" >&2; exit 2; }
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  if [[ "$(cd "$BIN" 2>/dev/null && pwd || echo "$BIN")" != "$(cd "$BUILD_BIN" 2>/dev/null && pwd || echo "$BUILD_BIN")" ]]; then
    echo "BIN=$BIN is not the build output ($BUILD_BIN); not building" >&2
  else
    (cd "$REPO" && timeout 3600 nice -n 19 cargo build --release -p gateway --bins --example swarm)
  fi
fi
for b in gateway examples/swarm; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build it, or set BIN)" >&2; exit 1; }
done
TMP="$(mktemp -d /tmp/tunnel-idle.XXXXXX)"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
HTTP=$(free_port tcp); TUN=$(free_port both)
ulimit -n 65536 2>/dev/null || true
RUST_LOG=warn "$BIN/gateway" serve --data-dir "$TMP/gw" --http-listen "127.0.0.1:$HTTP" \
  --tunnel-listen "127.0.0.1:$TUN" --api-listen 127.0.0.1:0 > "$TMP/gateway.log" 2>&1 &
GW=$!; PIDS+=("$GW")
for _ in $(seq 1 100); do [[ -f "$TMP/gw/gateway.db" ]] && break; sleep 0.1; done
sleep 1
kill -0 "$GW" 2>/dev/null || { cat "$TMP/gateway.log"; echo "gateway exited" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
BEFORE=$(rss "$GW")
SWARM_TRANSPORT="$TRANSPORT" RUST_LOG=warn timeout "$((HOLD + 300))" \
  "$BIN/examples/swarm" "$TMP/gw" "127.0.0.1:$TUN" "$COUNT" "$HOLD" > "$TMP/swarm.out" 2>&1 &
SW=$!; PIDS+=("$SW")
for _ in $(seq 1 600); do
  grep -q "^connected" "$TMP/swarm.out" && break
  kill -0 "$SW" 2>/dev/null || break
  sleep 0.2
done
grep -q "^connected" "$TMP/swarm.out" || { cat "$TMP/swarm.out"; echo "swarm did not connect" >&2; exit 1; }
sleep "$((HOLD / 2))" & wait $!   # let heartbeats settle (`wait`: INT/TERM interrupt it)
AFTER=$(rss "$GW")
# ONLINE is a column of `device list`; find it by its header
ONLINE=$(timeout 60 "$BIN/gateway" device list --data-dir "$TMP/gw" |
  awk 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "ONLINE") c = i; next} c && $c == "yes"' | wc -l)
# agents over TCP hold one established TCP connection each to the tunnel port; over
# QUIC none (UDP)
TCP_CONNS=$(ss -Htn state established "dport = :$TUN" 2>/dev/null | wc -l)
wait "$SW" || true   # the swarm exits after HOLD s (timeout HOLD+300 s)
cat "$TMP/swarm.out"
echo "transport: $TRANSPORT ($TCP_CONNS established TCP connections to the tunnel port 127.0.0.1:$TUN)"
EXPECT_TCP=0; [[ "$TRANSPORT" == tcp ]] && EXPECT_TCP=$COUNT
((TCP_CONNS == EXPECT_TCP)) || echo "WARNING: expected $EXPECT_TCP TCP connections for TRANSPORT=$TRANSPORT, saw $TCP_CONNS" >&2
echo "gateway RSS before: ${BEFORE} KiB, with ${ONLINE} idle devices online over $TRANSPORT: ${AFTER} KiB"
if ((ONLINE > 0)); then
  awk -v b="$BEFORE" -v a="$AFTER" -v n="$ONLINE" -v t="$TRANSPORT" \
    'BEGIN { printf "per device (%s): %.1f KiB\n", t, (a-b)/n }'
else
  echo "per device ($TRANSPORT): n/a (no device online)" >&2; exit 1
fi
