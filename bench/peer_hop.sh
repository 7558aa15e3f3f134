#!/usr/bin/env bash
# The peer hop: what a request costs when it reaches a node that does not hold the
# device's tunnel. Two `gateway serve` nodes on one PostgreSQL (started here, in a temp
# dir, as the postgres user), one `edge-agent run` connected to node a, nginx serving a
# 1 KiB file as the device's web UI. wrk loads the device's URL through node a (local
# tunnel) and then through node b (b forwards each request over the peer link to a), in
# one run on one machine. Also reports the PostgreSQL transactions committed during each
# load run, per request (the route cache should make that about zero; the nodes' lease
# renewals and polls add a few per second whatever the load).
#
#   bench/peer_hop.sh                              # builds release binaries first
#   SKIP_BUILD=1 BIN=/work/bin bench/peer_hop.sh   # existing gateway + edge-agent
#   DURATION=10 CONNS=32 THREADS=2 bench/peer_hop.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-10}"
THREADS="${THREADS:-2}"
CONNS="${CONNS:-32}"
BUILD_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
BIN="${BIN:-$BUILD_BIN}"
DOMAIN=bench.localhost
for v in DURATION THREADS CONNS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[[ -x "$PGBIN/initdb" ]] || { echo "PostgreSQL is needed (apt-get install -y postgresql)" >&2; exit 1; }
for t in wrk nginx runuser; do
  command -v "$t" >/dev/null || { echo "missing '$t' (apt-get install -y wrk nginx-light util-linux)" >&2; exit 1; }
done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$REPO" && timeout 3600 nice -n 19 cargo build --release --locked -p gateway -p edge-agent --bins)
fi
for b in gateway edge-agent; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build it, or set BIN)" >&2; exit 1; }
done

TMP="$(mktemp -d /tmp/tunnel-peer-hop.XXXXXX)"
chmod 755 "$TMP"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
log() { echo "peer_hop: $*" >&2; }
ulimit -n 65536 2>/dev/null || true

# --- PostgreSQL (refuses to run as root: as the postgres user, in a dir it owns)
start_postgres
URL="$PG_URL"
commits() { "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"; }

# --- nginx: the device's web UI
mkdir -p "$TMP/www"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 >"$TMP/www/index.html"
start_nginx

# --- two nodes, one fleet CA
wait_http() {  # URL HOST: until it answers 200 (30 s)
  local i
  for i in $(seq 1 300); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" "$1" 2>/dev/null)" == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}
node() {  # NAME DATA HTTP TUNNEL PEER
  RUST_LOG=warn "$BIN/gateway" serve --data-dir "$2" --database "$URL" --node-id "$1" --domain "$DOMAIN" \
    --http-listen "127.0.0.1:$3" --tunnel-listen "127.0.0.1:$4" --api-listen 127.0.0.1:0 \
    --peer-listen "127.0.0.1:$5" >"$TMP/$1.log" 2>&1 &
  PIDS+=("$!")
}
HTTP_A=$(free_port tcp); TUN_A=$(free_port both); PEER_A=$(free_port both)
HTTP_B=$(free_port tcp); TUN_B=$(free_port both); PEER_B=$(free_port both)
node a "$TMP/a" "$HTTP_A" "$TUN_A" "$PEER_A"
for i in $(seq 1 100); do [[ -s "$TMP/a/ca.key" ]] && break; sleep 0.1; done
mkdir -p "$TMP/b"; cp "$TMP/a/ca.pem" "$TMP/a/ca.key" "$TMP/b/"
node b "$TMP/b" "$HTTP_B" "$TUN_B" "$PEER_B"
"$BIN/gateway" device add --data-dir "$TMP/a" --database "$URL" --public-url \
  --gateway "127.0.0.1:$TUN_A" --out "$TMP/dev.toml" >"$TMP/device-add.out" 2>"$TMP/device-add.log"
UUID="$(awk 'NF {l = $0} END {gsub(/[[:space:]]/, "", l); print tolower(l)}' "$TMP/device-add.out")"
[[ "$UUID" =~ ^[0-9a-f]{32}$ ]] || { cat "$TMP/device-add.log" >&2; exit 1; }
HOST="$UUID.$DOMAIN"
env -u HTTPS_PROXY -u https_proxy RUST_LOG=warn "$BIN/edge-agent" run --config "$TMP/dev.toml" \
  --target "127.0.0.1:$NGINX_PORT" --local-api 127.0.0.1:0 --engine none >"$TMP/agent.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$HTTP_A/" "$HOST" || { tail "$TMP"/a.log "$TMP/agent.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$HTTP_B/" "$HOST" || { tail "$TMP"/b.log >&2; exit 1; }
log "device $UUID on node a (tunnel 127.0.0.1:$TUN_A); node b forwards over its peer link to 127.0.0.1:$PEER_A"

to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v } else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 } else print v }'; }
declare -A RPS P99 TXN
load() {  # NAME PORT
  local out="$TMP/$1.wrk" c0 c1 total
  timeout 30 wrk -t"$THREADS" -c"$CONNS" -d2s -H "Host: $HOST" "http://127.0.0.1:$2/" >/dev/null 2>&1 || true
  c0=$(commits)
  timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $HOST" \
    "http://127.0.0.1:$2/" >"$out" 2>&1
  c1=$(commits)
  grep -q "Non-2xx" "$out" && { log "$1: non-2xx answers"; grep "Non-2xx" "$out" >&2; }
  RPS[$1]=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$out")
  P99[$1]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  total=$(awk '/requests in/ { print $1 }' "$out")
  TXN[$1]=$(awk -v d=$((c1 - c0)) -v n="$total" 'BEGIN { printf "%d (%.5f per request)", d, d / n }')
  log "$1: ${RPS[$1]} req/s, p99 ${P99[$1]} ms, PostgreSQL commits during the run: ${TXN[$1]}"
}
load local "$HTTP_A"
load hop "$HTTP_B"
load local2 "$HTTP_A"

echo
echo "peer hop, $(date -u +%FT%TZ), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), wrk -t$THREADS -c$CONNS -d${DURATION}s, 1 KiB"
printf '| path | req/s | p99 (ms) | PostgreSQL commits during the run |\n|---|---:|---:|---|\n'
printf '| node a, local tunnel | %s | %s | %s |\n' "${RPS[local]}" "${P99[local]}" "${TXN[local]}"
printf '| node b, over the peer link to a | %s | %s | %s |\n' "${RPS[hop]}" "${P99[hop]}" "${TXN[hop]}"
printf '| node a again | %s | %s | %s |\n' "${RPS[local2]}" "${P99[local2]}" "${TXN[local2]}"
awk -v h="${RPS[hop]}" -v a="${RPS[local]}" -v b="${RPS[local2]}" \
  'BEGIN { printf "hop / local: %.2fx (local = mean of the two local runs)\n", h / ((a + b) / 2) }'
