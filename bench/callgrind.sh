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
#
# Prints one line per process: Ir per request. The raw callgrind files stay in the temp
# dir it names (callgrind_annotate FILE shows where the instructions go).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
TRANSPORT="${TRANSPORT:-quic}"
N="${N:-4000}"
C="${C:-32}"
case "$TRANSPORT" in quic | tcp) ;; *) echo "TRANSPORT must be quic or tcp" >&2; exit 2 ;; esac
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
export RUST_LOG=warn
# No CONNECT proxy for the agent's TCP tunnel (it would read HTTPS_PROXY).
unset HTTPS_PROXY https_proxy EDGE_AGENT_TRANSPORT EDGE_AGENT_GATEWAY_TCP
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
ok=""
for _ in $(seq 1 600); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Host: $HOST" "http://127.0.0.1:$HTTP/")" == 200 ]] && { ok=1; break; }
  sleep 0.2
done
[[ -n "$ok" ]] || { tail "$TMP"/*.log; echo "the device never answered" >&2; exit 1; }
# Warm-up (connections, pools, allocator), uncounted.
timeout 600 h2load --h1 -n 1000 -c "$C" -H ":authority: $HOST" "http://127.0.0.1:$HTTP/" > /dev/null
callgrind_control -i on "$GW" > /dev/null 2>&1
callgrind_control -i on "$AG" > /dev/null 2>&1
timeout 1200 h2load --h1 -n "$N" -c "$C" -H ":authority: $HOST" "http://127.0.0.1:$HTTP/" > "$TMP/h2load.txt"
callgrind_control -i off "$GW" > /dev/null 2>&1
callgrind_control -i off "$AG" > /dev/null 2>&1
callgrind_control -d "$GW" > /dev/null 2>&1
callgrind_control -d "$AG" > /dev/null 2>&1
grep -E "^requests:|^status codes:" "$TMP/h2load.txt"
ok2=$(awk '/^status codes:/ {print $3}' "$TMP/h2load.txt")
[[ "$ok2" == "$N" ]] || echo "warning: $ok2 of $N requests got 2xx" >&2
sleep 1
per() { # per NAME PID
  local f total
  f=$(ls -t "$TMP/$1.$2.out"* 2>/dev/null | grep -v '\.out$' | head -1 || true)
  [[ -n "$f" ]] || f="$TMP/$1.$2.out"
  total=$(awk '/^totals:/ {print $2; exit}' "$f")
  printf '%-8s %s Ir per request (%s Ir over %s requests, %s)\n' "$1" \
    "$(awk -v t="$total" -v n="$N" 'BEGIN { printf "%.0f", t / n }')" "$total" "$N" "$f"
}
echo "transport=$TRANSPORT N=$N C=$C binaries=$BIN"
per gateway "$GW"
per agent "$AG"
echo "callgrind files in $TMP"
