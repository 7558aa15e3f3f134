#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (not timed: the count is the same
# on a loaded machine, so it compares changes on the hot path where req/s cannot).
#
# One nginx backend (1 KiB index.html), one `gateway serve` and one `edge-agent run`, both
# under `valgrind --tool=callgrind` with collection off; after a warm-up, collection is
# switched on in both, exactly N requests go through the public URL (h2load --h1, C
# connections), collection is dumped, and the totals are divided by N.
#
#   bench/callgrind.sh                      # TRANSPORT=quic, N=4000, C=32
#   TRANSPORT=tcp bench/callgrind.sh
#   BIN=/work/parent-bin bench/callgrind.sh # other binaries (gateway + edge-agent)
#   PEER=1 bench/callgrind.sh               # the peer hop (issue 13), see below
#
# Prints one line per process: Ir per request. The raw callgrind files stay in the temp
# dir it names (callgrind_annotate FILE shows where the instructions go).
#
# PEER=1: two nodes (`gateway serve --database` on a throwaway PostgreSQL, one fleet CA,
# like bench/peer_hop.sh), both under callgrind, the agent on node a. N requests go
# through node a (its own tunnel: "local"), then N through node b (which forwards each
# over the mTLS QUIC peer link to a: "hop"), each counted separately; prints Ir per
# request of node a, node b and the agent for both, and the sum per request.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
TRANSPORT="${TRANSPORT:-quic}"
N="${N:-4000}"
C="${C:-32}"
PEER="${PEER:-0}"
case "$TRANSPORT" in quic | tcp) ;; *) echo "TRANSPORT must be quic or tcp" >&2; exit 2 ;; esac
case "$PEER" in 0 | 1) ;; *) echo "PEER must be 0 or 1" >&2; exit 2 ;; esac
for v in N C; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
for t in valgrind callgrind_control callgrind_annotate h2load nginx curl; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install valgrind nghttp2-client nginx-light curl)" >&2; exit 1; }
done
for b in gateway edge-agent; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (cargo build --release -p gateway -p edge-agent)" >&2; exit 1; }
done
TMP="$(mktemp -d /tmp/tunnel-callgrind.XXXXXX)"
KEEP_TMP=1   # the callgrind files are the result
chmod 755 "$TMP"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
NGINX=$(free_port tcp); HTTP=$(free_port tcp); TUN=$(free_port both)

mkdir -p "$TMP/www" "$TMP/nginx"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 > "$TMP/www/index.html"
chmod -R a+rX "$TMP/www"
user=""; [[ $EUID -eq 0 ]] && user="user root root;"
cat > "$TMP/nginx/nginx.conf" <<EOF
$user
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $TMP/nginx/cb;
  proxy_temp_path $TMP/nginx/p;
  fastcgi_temp_path $TMP/nginx/f;
  uwsgi_temp_path $TMP/nginx/u;
  scgi_temp_path $TMP/nginx/s;
  server { listen 127.0.0.1:$NGINX; root $TMP/www; }
}
EOF
nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

vg() { # vg NAME CMD...: CMD under callgrind, instrumentation off until switched on
  local name="$1"; shift
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/$name.%p.out" \
    "$@" > "$TMP/$name.log" 2>&1 &
  PIDS+=($!)
}
wait_ok() { # wait_ok PORT: until the device answers 200 through that node (120 s)
  local _
  for _ in $(seq 1 600); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $HOST" "http://127.0.0.1:$1/")" == 200 ]] && return 0
    sleep 0.2
  done
  tail "$TMP"/*.log
  echo "the device never answered through 127.0.0.1:$1" >&2
  exit 1
}
# count PORT PIDS...: exactly N requests through 127.0.0.1:PORT with collection on in
# PIDS, then one dump each (a dump zeroes the counters, so each count is its own part).
count() {
  local port="$1" p ok2; shift
  for p in "$@"; do callgrind_control -i on "$p" > /dev/null 2>&1; done
  timeout 1200 h2load --h1 -n "$N" -c "$C" -H ":authority: $HOST" "http://127.0.0.1:$port/" > "$TMP/h2load.$port.txt"
  for p in "$@"; do callgrind_control -i off "$p" > /dev/null 2>&1; done
  for p in "$@"; do callgrind_control -d "$p" > /dev/null 2>&1; done
  grep -E "^requests:|^status codes:" "$TMP/h2load.$port.txt"
  ok2=$(awk '/^status codes:/ {print $3}' "$TMP/h2load.$port.txt")
  [[ "$ok2" == "$N" ]] || echo "warning: $ok2 of $N requests got 2xx" >&2
  sleep 1
}
# ir NAME PID [PART]: the Ir total of that process's dump PART (default: its latest)
ir() {
  local f
  if [[ -n "${3:-}" ]]; then
    f="$TMP/$1.$2.out.$3"
  else
    f=$(ls -t "$TMP/$1.$2.out"* 2>/dev/null | grep -v '\.out$' | head -1 || true)
    [[ -n "$f" ]] || f="$TMP/$1.$2.out"
  fi
  awk '/^totals:/ {print $2; exit}' "$f"
}
per() { # per LABEL TOTAL: one line, Ir per request
  printf '%-18s %8s Ir per request (%s Ir over %s requests)\n' "$1" \
    "$(awk -v t="$2" -v n="$N" 'BEGIN { printf "%.0f", t / n }')" "$2" "$N"
}
export RUST_LOG=warn
# No CONNECT proxy for the agent's TCP tunnel (it would read HTTPS_PROXY).
unset HTTPS_PROXY https_proxy EDGE_AGENT_TRANSPORT EDGE_AGENT_GATEWAY_TCP

if [[ "$PEER" == 1 ]]; then
  PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
  [[ -x "$PGBIN/initdb" ]] || { echo "PostgreSQL is needed (apt-get install -y postgresql)" >&2; exit 1; }
  command -v runuser >/dev/null || { echo "missing runuser (apt-get install util-linux)" >&2; exit 1; }
  start_postgres
  DOMAIN=devices.localhost
  node() { # node NAME HTTP TUNNEL PEER
    vg "gw-$1" "$BIN/gateway" serve --data-dir "$TMP/$1" --database "$PG_URL" --node-id "$1" \
      --domain "$DOMAIN" --http-listen "127.0.0.1:$2" --tunnel-listen "127.0.0.1:$3" \
      --api-listen 127.0.0.1:0 --peer-listen "127.0.0.1:$4"
  }
  HTTP_B=$(free_port tcp); TUN_B=$(free_port both); PEER_A=$(free_port both); PEER_B=$(free_port both)
  node a "$HTTP" "$TUN" "$PEER_A"
  GA=$!
  for _ in $(seq 1 1200); do [[ -s "$TMP/a/ca.key" ]] && break; sleep 0.1; done
  mkdir -p "$TMP/b"; cp "$TMP/a/ca.pem" "$TMP/a/ca.key" "$TMP/b/"
  node b "$HTTP_B" "$TUN_B" "$PEER_B"
  GB=$!
  UUID=$(timeout 120 "$BIN/gateway" device add --data-dir "$TMP/a" --database "$PG_URL" --public-url \
    --gateway "127.0.0.1:$TUN" --out "$TMP/dev.toml" 2>/dev/null | tail -1 | tr -d '[:space:]' | tr 'A-F' 'a-f')
  vg agent "$BIN/edge-agent" run --config "$TMP/dev.toml" \
    --target "127.0.0.1:$NGINX" --local-api 127.0.0.1:0 --transport "$TRANSPORT" --engine none
  AG=$!
  HOST="$UUID.$DOMAIN"
  wait_ok "$HTTP"
  wait_ok "$HTTP_B"
  # Warm-up of both paths (connections, pools, the peer link and route cache), uncounted.
  timeout 600 h2load --h1 -n 1000 -c "$C" -H ":authority: $HOST" "http://127.0.0.1:$HTTP/" > /dev/null
  timeout 600 h2load --h1 -n 1000 -c "$C" -H ":authority: $HOST" "http://127.0.0.1:$HTTP_B/" > /dev/null
  echo "local: through node a"
  count "$HTTP" "$GA" "$GB" "$AG"
  echo "hop: through node b, over the peer link to node a"
  count "$HTTP_B" "$GA" "$GB" "$AG"
  echo "peer hop: transport=$TRANSPORT N=$N C=$C binaries=$BIN"
  for run in local hop; do
    part=1; [[ "$run" == hop ]] && part=2
    a=$(ir gw-a "$GA" "$part"); b=$(ir gw-b "$GB" "$part"); g=$(ir agent "$AG" "$part")
    per "$run node a" "$a"
    per "$run node b" "$b"
    per "$run agent" "$g"
    per "$run sum" "$((a + b + g))"
  done
  echo "callgrind files in $TMP (part 1: local, part 2: hop)"
  exit 0
fi

vg gateway "$BIN/gateway" serve --data-dir "$TMP/gw" --domain devices.localhost \
  --http-listen "127.0.0.1:$HTTP" --tunnel-listen "127.0.0.1:$TUN" --api-listen 127.0.0.1:0
GW=$!
for _ in $(seq 1 600); do [[ -f "$TMP/gw/gateway.db" ]] && break; sleep 0.1; done
sleep 2
UUID=$(timeout 120 "$BIN/gateway" device add --data-dir "$TMP/gw" --public-url \
  --gateway "127.0.0.1:$TUN" --out "$TMP/dev.toml" 2>/dev/null | tail -1)
# --engine none: the request path needs no engine, and with one the agent would also ship
# the output of whatever containers run on this machine (a soak's, a test's), which the
# gateway then stores, inside the counted window.
vg agent "$BIN/edge-agent" run --config "$TMP/dev.toml" --engine none \
  --target "127.0.0.1:$NGINX" --local-api 127.0.0.1:0 --transport "$TRANSPORT"
AG=$!
HOST="$UUID.devices.localhost"
wait_ok "$HTTP"
# Warm-up (connections, pools, allocator), uncounted.
timeout 600 h2load --h1 -n 1000 -c "$C" -H ":authority: $HOST" "http://127.0.0.1:$HTTP/" > /dev/null
count "$HTTP" "$GW" "$AG"
echo "transport=$TRANSPORT N=$N C=$C binaries=$BIN"
per gateway "$(ir gateway "$GW")"
per agent "$(ir agent "$AG")"
echo "callgrind files in $TMP"
