#!/usr/bin/env bash
# Gateway memory per idle connected device: start a release gateway, measure its RSS,
# connect COUNT real agents (each its own identity and QUIC connection) from one swarm
# process, wait until all are connected and settled, measure again.
#
#   bench/idle.sh            # COUNT=1000
#   COUNT=200 bench/idle.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COUNT="${COUNT:-1000}"
HOLD="${HOLD:-20}"
BIN="$REPO/target/release"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$REPO" && cargo build --release -p gateway --bins --example swarm)
fi
TMP="$(mktemp -d /tmp/tunnel-idle.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, int(sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
HTTP=$(free_port 1); TUN=$(free_port 2)
ulimit -n 65536 2>/dev/null || true
RUST_LOG=warn "$BIN/gateway" serve --data-dir "$TMP/gw" --http-listen "127.0.0.1:$HTTP" \
  --tunnel-listen "127.0.0.1:$TUN" --api-listen 127.0.0.1:0 > "$TMP/gateway.log" 2>&1 &
GW=$!; PIDS+=("$GW")
for _ in $(seq 1 100); do [[ -f "$TMP/gw/gateway.db" ]] && break; sleep 0.1; done
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
BEFORE=$(rss "$GW")
RUST_LOG=warn "$BIN/examples/swarm" "$TMP/gw" "127.0.0.1:$TUN" "$COUNT" "$HOLD" > "$TMP/swarm.out" 2>&1 &
SW=$!; PIDS+=("$SW")
for _ in $(seq 1 600); do grep -q "^connected" "$TMP/swarm.out" && break; sleep 0.2; done
grep -q "^connected" "$TMP/swarm.out" || { cat "$TMP/swarm.out"; echo "swarm did not connect" >&2; exit 1; }
sleep "$((HOLD / 2))"   # let heartbeats settle
AFTER=$(rss "$GW")
ONLINE=$("$BIN/gateway" device list --data-dir "$TMP/gw" | awk 'NR>1 && $2=="yes"' | wc -l)
wait "$SW" || true
cat "$TMP/swarm.out"
echo "gateway RSS before: ${BEFORE} KiB, with ${ONLINE} idle devices online: ${AFTER} KiB"
awk -v b="$BEFORE" -v a="$AFTER" -v n="$ONLINE" 'BEGIN { printf "per device: %.1f KiB\n", (a-b)/n }'
