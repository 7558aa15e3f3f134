#!/usr/bin/env bash
# Idle tunnel traffic per device: one release gateway and one edge-agent with nothing to
# do, the tunnel's packets counted at the IP layer by iptables on the tunnel port (both
# directions, loopback), for each link profile and transport asked for.
#
#   bench/idle_traffic.sh                         # LINKS="normal metered" TRANSPORTS=quic, 300 s each
#   DURATION=600 LINKS=metered TRANSPORTS="quic tcp" bench/idle_traffic.sh
#
# Needs root (iptables). Prints packets per minute, bytes per hour and bytes per day.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
DURATION="${DURATION:-300}"     # seconds counted per run
SETTLE="${SETTLE:-10}"          # seconds after connecting before counting starts
LINKS="${LINKS:-normal metered}"
TRANSPORTS="${TRANSPORTS:-quic}"
CHAIN="IDLE_TRAFFIC_$$"

[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 10 ]] || { echo "DURATION must be >= 10 s" >&2; exit 2; }
for b in gateway edge-agent; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (cargo build --release -p gateway -p edge-agent --bins, or set BIN)" >&2; exit 2; }
done
command -v iptables >/dev/null || { echo "missing iptables (apt-get install -y iptables)" >&2; exit 2; }

TMP="$(mktemp -d /tmp/idle-traffic.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  iptables -D INPUT -j "$CHAIN" 2>/dev/null || true
  iptables -F "$CHAIN" 2>/dev/null || true
  iptables -X "$CHAIN" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
# Whether the device is online, by the ONLINE column of `device list`.
online() {
  timeout 30 "$BIN/gateway" device list --data-dir "$1" 2>/dev/null |
    awk 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "ONLINE") c = i; next} c && $c == "yes" {n++} END {exit !n}'
}
free_port() { python3 -c 'import socket
for _ in range(100):
    t=socket.socket(); t.bind(("127.0.0.1",0)); p=t.getsockname()[1]
    u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1",p)); print(p); break
    except OSError: pass'; }

iptables -N "$CHAIN"
iptables -I INPUT -j "$CHAIN"

echo "| link | transport | packets/min | bytes/hour | bytes/day |"
echo "|---|---|---:|---:|---:|"
for transport in $TRANSPORTS; do
  for link in $LINKS; do
    d="$TMP/$link-$transport"; mkdir -p "$d"
    HTTP=$(free_port); TUN=$(free_port)
    RUST_LOG=warn "$BIN/gateway" serve --data-dir "$d/gw" --http-listen "127.0.0.1:$HTTP" \
      --tunnel-listen "127.0.0.1:$TUN" --api-listen 127.0.0.1:0 >"$d/gateway.log" 2>&1 &
    GW=$!; PIDS+=("$GW")
    for _ in $(seq 1 100); do [[ -f "$d/gw/gateway.db" ]] && break; sleep 0.1; done
    timeout 30 "$BIN/gateway" device add --data-dir "$d/gw" --gateway "127.0.0.1:$TUN" \
      --out "$d/dev.toml" >"$d/add.out" 2>"$d/add.log"
    RUST_LOG=warn "$BIN/edge-agent" run --config "$d/dev.toml" \
      --link "$link" --transport "$transport" --engine none --local-api 127.0.0.1:0 \
      --target 127.0.0.1:9 >"$d/agent.log" 2>&1 &
    AG=$!; PIDS+=("$AG")
    online=0
    for _ in $(seq 1 300); do
      if online "$d/gw"; then online=1; break; fi
      sleep 0.1
    done
    [[ "$online" == 1 ]] || { cat "$d/agent.log" >&2; echo "the agent did not come online ($link, $transport)" >&2; exit 1; }
    sleep "$SETTLE"
    iptables -F "$CHAIN"
    proto=udp; [[ "$transport" == tcp ]] && proto=tcp
    iptables -A "$CHAIN" -p "$proto" --dport "$TUN"
    iptables -A "$CHAIN" -p "$proto" --sport "$TUN"
    sleep "$DURATION"
    read -r pk by < <(iptables -L "$CHAIN" -v -x -n | awk 'NR>2 {p+=$1; b+=$2} END {print p+0, b+0}')
    online "$d/gw" || echo "warning: the device went offline during the run ($link, $transport)" >&2
    awk -v p="$pk" -v b="$by" -v s="$DURATION" -v l="$link" -v t="$transport" 'BEGIN {
      printf "| %s | %s | %.1f | %.0f | %.0f |\n", l, t, p*60/s, b*3600/s, b*86400/s }'
    kill "$AG" "$GW" 2>/dev/null || true
    wait "$AG" "$GW" 2>/dev/null || true
    PIDS=()
  done
done
echo
echo "$(date -u +%FT%TZ), $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), ${DURATION} s per row (after ${SETTLE} s settling), IP-layer bytes both ways, agent --engine none"
