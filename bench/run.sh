#!/usr/bin/env bash
# Side-by-side benchmark: direct nginx vs. our tunnel (gateway + edge-agent)
# vs. rathole (tcp, noise) vs. bore, same nginx backend, same wrk/curl load,
# one run on this machine. See bench/README.md.
set -euo pipefail

# ---------------------------------------------------------------- settings --
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BIN="${BIN:-$REPO_DIR/target/release}"
TOOLS_BIN="${TOOLS_BIN:-$BENCH_DIR/.tools/bin}"
RATHOLE="${RATHOLE:-$TOOLS_BIN/rathole}"
BORE="${BORE:-$TOOLS_BIN/bore}"

DURATION="${DURATION:-10}"        # seconds of wrk per setup
WARMUP="${WARMUP:-2}"             # seconds of untimed wrk warm-up (0 = none)
THREADS="${THREADS:-2}"           # wrk -t
CONNS="${CONNS:-32}"              # wrk -c
BULK_N="${BULK_N:-20}"            # sequential 10 MiB downloads per setup (median)
READY_TIMEOUT="${READY_TIMEOUT:-30}"  # seconds to wait for a setup to serve 200
NGINX_WORKERS="${NGINX_WORKERS:-1}"
SKIP_BUILD="${SKIP_BUILD:-0}"
ONLY="${ONLY:-direct,tunnel,rathole-tcp,rathole-noise,bore}"  # comma list
KEEP_TMP="${KEEP_TMP:-0}"
export RUST_LOG="${RUST_LOG:-warn}"   # same log level for every Rust tool

BULK_BYTES=$((10 * 1024 * 1024))
DOMAIN="devices.localhost"
RESULTS_DIR="$BENCH_DIR/results"

exec 3>&2   # original stderr: log() keeps working inside redirected functions/traps
log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
die()  { log "FATAL: $*"; exit 1; }

for t in wrk nginx curl ss awk timeout setsid; do
  command -v "$t" >/dev/null || die "missing '$t' (apt-get install -y wrk nginx-light curl iproute2)"
done
[[ "$DURATION" =~ ^[0-9]+$ && "$BULK_N" =~ ^[0-9]+$ && "$BULK_N" -ge 1 ]] \
  || die "DURATION and BULK_N must be positive integers"

want() { [[ ",$ONLY," == *",$1,"* ]]; }

# ------------------------------------------------------ process management --
TMP="$(mktemp -d /tmp/tunnel-bench.XXXXXX)"
chmod 755 "$TMP"            # nginx workers may run as another user
PIDS=()                     # every process we started (each leads its own group)

stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

FGPID=""
# run_fg CMD...: run a long command so that INT/TERM interrupt it promptly
# (bash defers traps until a foreground child exits, but not during `wait`).
run_fg() {
  local rc=0
  "$@" 3>&- &
  FGPID=$!
  wait "$FGPID" || rc=$?
  FGPID=""
  return "$rc"
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  [[ -n "$FGPID" ]] && { kill -TERM "$FGPID" 2>/dev/null || true; wait "$FGPID" 2>/dev/null || true; }
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$p"; done
  if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then
    rm -f "$TMP/www/10m.bin"
    log "temp dir kept (logs): $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD... : runs CMD in background in its own process group,
# output to $TMP/NAME.log; sets LAST_PID.
LAST_PID=""
start() {
  local name="$1"; shift
  setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null 3>&- &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# stop the processes started since index $1 of PIDS
stop_since() {
  local from="$1" i
  for ((i = ${#PIDS[@]} - 1; i >= from; i--)); do stop_pid "${PIDS[$i]}"; done
  PIDS=("${PIDS[@]:0:$from}")
}

show_logs() {  # show_logs NAME... : dump log tails on failure
  local n
  for n in "$@"; do
    [[ -f "$TMP/$n.log" ]] && { log "--- tail $n.log ---"; tail -n 20 "$TMP/$n.log" >&3; }
  done
  return 0
}

# -------------------------------------------------------------------- ports --
USED_PORTS=" "
port_free() {
  [[ "$USED_PORTS" != *" $1 "* ]] &&
    [[ -z "$(ss -Htln "sport = :$1" 2>/dev/null)" ]] &&
    [[ -z "$(ss -Hlun "sport = :$1" 2>/dev/null)" ]]
}
free_port() {  # free_port VAR: random high port free for TCP and UDP, reserved
  local p i
  for i in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if port_free "$p"; then USED_PORTS+="$p "; printf -v "$1" '%s' "$p"; return 0; fi
  done
  die "no free port found"
}

# ------------------------------------------------------------- measurement --
# wait_ready URL [HOST]: poll until HTTP 200 or READY_TIMEOUT
wait_ready() {
  local url="$1" host="${2:-}" deadline code
  local -a hdr=()
  [[ -n "$host" ]] && hdr=(-H "Host: $host")
  deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${hdr[@]+"${hdr[@]}"}" "$url" || true)"
    [[ "$code" == 200 ]] && return 0
    sleep 0.2
  done
  log "not ready after ${READY_TIMEOUT}s: $url (last code: ${code:-none})"
  return 1
}

to_ms() {  # wrk latency token (e.g. 812.00us, 1.20ms, 2.01s) -> ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else { print "NaN" } }'
}

declare -A RPS P99 BULK NOTE
ROWS=()

# measure NAME BASE_URL [HOST]
measure() {
  local name="$1" base="$2" host="${3:-}" out rps p99raw errs
  local -a hdr=()
  [[ -n "$host" ]] && hdr=(-H "Host: $host")

  if ((WARMUP > 0)); then
    run_fg timeout $((WARMUP + 20)) wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" \
      "${hdr[@]+"${hdr[@]}"}" "$base/" >/dev/null 2>&1 || true
  fi

  log "$name: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency $base/"
  out="$TMP/$name.wrk.txt"
  if ! run_fg timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency \
      "${hdr[@]+"${hdr[@]}"}" "$base/" >"$out" 2>&1; then
    log "$name: wrk failed"; cat "$out" >&3 || true
  fi
  rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
  p99raw="$(awk '/Latency Distribution/ {f = 1} f && $1 == "99%" {print $2; exit}' "$out")"
  RPS[$name]="${rps:-NaN}"
  P99[$name]="$( [[ -n "$p99raw" ]] && to_ms "$p99raw" || echo NaN)"
  errs="$(grep -E 'Socket errors|Non-2xx' "$out" | sed 's/^ *//' | paste -sd';' - || true)"
  [[ -n "$errs" ]] && NOTE[$name]="wrk: $errs"
  log "$name: ${RPS[$name]} req/s, p99 ${P99[$name]} ms${errs:+ ($errs)}"

  log "$name: $BULK_N x curl 10 MiB"
  local i line code size speed bad=0 speeds="$TMP/$name.bulk.txt"
  : >"$speeds"
  for ((i = 0; i < BULK_N; i++)); do
    line="$(curl -s -o /dev/null --max-time 60 "${hdr[@]+"${hdr[@]}"}" \
      -w '%{http_code} %{size_download} %{speed_download}' "$base/10m.bin" || true)"
    read -r code size speed <<<"$line"
    if [[ "$code" == 200 && "$size" == "$BULK_BYTES" ]]; then
      echo "$speed" >>"$speeds"
    else
      bad=$((bad + 1))
    fi
  done
  BULK[$name]="$(sort -g "$speeds" | awk '{a[NR] = $1}
      END { if (NR == 0) { print "NaN"; exit }
            m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
            printf "%.1f", m / 1e6 }')"
  ((bad > 0)) && NOTE[$name]="${NOTE[$name]:+${NOTE[$name]}; }$bad/$BULK_N bulk downloads failed"
  log "$name: 10 MiB median ${BULK[$name]} MB/s"
  ROWS+=("$name")
}

skip() {  # skip NAME REASON
  log "SKIP $1: $2"
  RPS[$1]="-"; P99[$1]="-"; BULK[$1]="-"; NOTE[$1]="skipped: $2"
  ROWS+=("$1")
}

# ------------------------------------------------------------------- build --
if want tunnel && [[ "$SKIP_BUILD" != 1 ]]; then
  if [[ -f "$REPO_DIR/Cargo.toml" ]]; then
    log "building gateway + edge-agent (release)"
    run_fg nice -n 19 cargo build --manifest-path "$REPO_DIR/Cargo.toml" --release -p gateway -p edge-agent \
      || die "cargo build failed (use SKIP_BUILD=1 to bench existing binaries)"
  else
    log "no $REPO_DIR/Cargo.toml yet; not building"
  fi
fi

# ------------------------------------------------------------------- nginx --
mkdir -p "$TMP/www" "$TMP/nginx"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 >"$TMP/www/index.html"
head -c "$BULK_BYTES" /dev/urandom >"$TMP/www/10m.bin"
chmod -R a+rX "$TMP/www"

free_port NGINX_PORT
NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user root root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
$NGINX_USER
worker_processes $NGINX_WORKERS;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 120s;
  keepalive_requests 10000000;
  client_body_temp_path $TMP/nginx/client_body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$NGINX_PORT default_server;
    server_name _;
    root $TMP/www;
  }
}
EOF
NGINX_CMD=(nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf")
"${NGINX_CMD[@]}" -t >"$TMP/nginx-test.log" 2>&1 || { cat "$TMP/nginx-test.log" >&2; die "nginx config test failed"; }
start nginx "${NGINX_CMD[@]}" -g 'daemon off;'
wait_ready "http://127.0.0.1:$NGINX_PORT/" || { show_logs nginx; die "nginx did not start"; }
log "nginx backend on 127.0.0.1:$NGINX_PORT ($NGINX_WORKERS worker(s))"
NGINX_PIDS_END=${#PIDS[@]}

# ---------------------------------------------------------- a) direct -------
if want direct; then
  measure direct "http://127.0.0.1:$NGINX_PORT"
fi

# ---------------------------------------------------------- b) our tunnel ---
bench_tunnel() {
  local mark=${#PIDS[@]} http_port tun_port d="$TMP/tunnel" uuid
  mkdir -p "$d"
  free_port http_port; free_port tun_port
  start gateway "$BIN/gateway" serve --data-dir "$d" --domain "$DOMAIN" \
    --http-listen "127.0.0.1:$http_port" --tunnel-listen "127.0.0.1:$tun_port" --api-listen 127.0.0.1:0
  sleep 0.5
  kill -0 "$LAST_PID" 2>/dev/null || { show_logs gateway; skip tunnel "gateway serve exited"; stop_since "$mark"; return 0; }
  if ! timeout 30 "$BIN/gateway" device add --data-dir "$d" --public-url \
      --gateway "127.0.0.1:$tun_port" --out "$d/dev.toml" \
      >"$TMP/device-add.out" 2>"$TMP/device-add.log"; then
    cat "$TMP/device-add.out" >>"$TMP/device-add.log"
    show_logs device-add gateway; skip tunnel "gateway device add failed"; stop_since "$mark"; return 0
  fi
  # the device uuid is the last (non-empty) line of stdout
  uuid="$(awk 'NF {l = $0} END {gsub(/[[:space:]]/, "", l); print tolower(l)}' "$TMP/device-add.out")"
  if [[ ! "$uuid" =~ ^[0-9a-f]{32}$ ]]; then
    cat "$TMP/device-add.out" >>"$TMP/device-add.log"
    show_logs device-add; skip tunnel "last stdout line of device add is not a 32-hex uuid: '$uuid'"
    stop_since "$mark"; return 0
  fi
  start edge-agent "$BIN/edge-agent" run --config "$d/dev.toml" --target "127.0.0.1:$NGINX_PORT" --local-api 127.0.0.1:0
  if ! wait_ready "http://127.0.0.1:$http_port/" "$uuid.$DOMAIN"; then
    show_logs gateway edge-agent; skip tunnel "not ready"; stop_since "$mark"; return 0
  fi
  log "tunnel: gateway http 127.0.0.1:$http_port, tunnel 127.0.0.1:$tun_port (udp), device $uuid"
  measure tunnel "http://127.0.0.1:$http_port" "$uuid.$DOMAIN"
  stop_since "$mark"
}
if want tunnel; then
  if [[ -x "$BIN/gateway" && -x "$BIN/edge-agent" ]]; then
    bench_tunnel
  else
    skip tunnel "$BIN/gateway or $BIN/edge-agent not built yet"
  fi
fi

# ---------------------------------------------------------- c/d) rathole ----
bench_rathole() {  # bench_rathole NAME tcp|noise
  local name="$1" kind="$2" mark=${#PIDS[@]} ctl pub d="$TMP/$1" priv="" pubkey=""
  mkdir -p "$d"
  free_port ctl; free_port pub
  if [[ "$kind" == noise ]]; then
    # default pattern Noise_NK_25519_ChaChaPoly_BLAKE2s: server has a static key,
    # client pins the server public key (same security shape as TLS server auth).
    "$RATHOLE" --genkey >"$d/keys.txt"
    priv="$(awk '/^Private Key:/ {getline; print; exit}' "$d/keys.txt")"
    pubkey="$(awk '/^Public Key:/ {getline; print; exit}' "$d/keys.txt")"
    [[ -n "$priv" && -n "$pubkey" ]] || { skip "$name" "rathole --genkey output not parsed"; return 0; }
  fi
  {
    echo '[server]'
    echo "bind_addr = \"127.0.0.1:$ctl\""
    echo 'default_token = "bench-token"'
    if [[ "$kind" == noise ]]; then
      echo '[server.transport]'; echo 'type = "noise"'
      echo '[server.transport.noise]'; echo "local_private_key = \"$priv\""
    fi
    echo '[server.services.web]'
    echo "bind_addr = \"127.0.0.1:$pub\""
  } >"$d/server.toml"
  {
    echo '[client]'
    echo "remote_addr = \"127.0.0.1:$ctl\""
    echo 'default_token = "bench-token"'
    if [[ "$kind" == noise ]]; then
      echo '[client.transport]'; echo 'type = "noise"'
      echo '[client.transport.noise]'; echo "remote_public_key = \"$pubkey\""
    fi
    echo '[client.services.web]'
    echo "local_addr = \"127.0.0.1:$NGINX_PORT\""
  } >"$d/client.toml"
  start "$name-server" "$RATHOLE" -s "$d/server.toml"
  start "$name-client" "$RATHOLE" -c "$d/client.toml"
  if ! wait_ready "http://127.0.0.1:$pub/"; then
    show_logs "$name-server" "$name-client"; skip "$name" "not ready"; stop_since "$mark"; return 0
  fi
  log "$name: control 127.0.0.1:$ctl, public 127.0.0.1:$pub"
  measure "$name" "http://127.0.0.1:$pub"
  stop_since "$mark"
}
for kind in tcp noise; do
  if want "rathole-$kind"; then
    if [[ -x "$RATHOLE" ]]; then bench_rathole "rathole-$kind" "$kind"
    else skip "rathole-$kind" "$RATHOLE not installed (see bench/README.md)"; fi
  fi
done

# ---------------------------------------------------------- e) bore ---------
bench_bore() {
  local mark=${#PIDS[@]} pub
  # bore's control port is hard-coded to 7835 (no flag), so it must be free.
  if ! port_free 7835; then skip bore "control port 7835 (hard-coded in bore) is in use"; return 0; fi
  free_port pub
  start bore-server "$BORE" server --bind-addr 127.0.0.1 --min-port "$pub" --max-port "$pub"
  sleep 0.3
  start bore-local "$BORE" local "$NGINX_PORT" --local-host 127.0.0.1 --to 127.0.0.1 --port "$pub"
  if ! wait_ready "http://127.0.0.1:$pub/"; then
    show_logs bore-server bore-local; skip bore "not ready"; stop_since "$mark"; return 0
  fi
  log "bore: control 127.0.0.1:7835, public 127.0.0.1:$pub"
  measure bore "http://127.0.0.1:$pub"
  stop_since "$mark"
}
if want bore; then
  if [[ -x "$BORE" ]]; then bench_bore
  else skip bore "$BORE not installed (see bench/README.md)"; fi
fi

stop_since 0   # nginx

# ------------------------------------------------------------------ report --
label() {
  case "$1" in
    direct) echo "direct nginx (limit)" ;;
    tunnel) echo "our tunnel (gateway+edge-agent, QUIC)" ;;
    rathole-tcp) echo "rathole (tcp)" ;;
    rathole-noise) echo "rathole (noise NK)" ;;
    bore) echo "bore" ;;
    *) echo "$1" ;;
  esac
}
isnum() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; }

BASE="${RPS[rathole-tcp]:-}"
TABLE="| setup | req/s | p99 (ms) | 10 MiB MB/s | ratio vs rathole-tcp req/s |
|---|---:|---:|---:|---:|"
for r in "${ROWS[@]+"${ROWS[@]}"}"; do
  ratio="-"
  if isnum "${RPS[$r]}" && isnum "$BASE" && awk -v b="$BASE" 'BEGIN {exit !(b > 0)}'; then
    ratio="$(awk -v a="${RPS[$r]}" -v b="$BASE" 'BEGIN {printf "%.2fx", a / b}')"
  fi
  TABLE+=$'\n'"| $(label "$r") | ${RPS[$r]} | ${P99[$r]} | ${BULK[$r]} | $ratio |"
done
NOTES=""
for r in "${ROWS[@]+"${ROWS[@]}"}"; do
  [[ -n "${NOTE[$r]:-}" ]] && NOTES+="- $(label "$r"): ${NOTE[$r]}"$'\n'
done

LOAD="wrk -t$THREADS -c$CONNS -d${DURATION}s --latency on a 1 KiB file (keep-alive, ${WARMUP}s warm-up); 10 MiB = median of $BULK_N sequential curl downloads (new connection each, MB = 10^6 bytes); nginx $NGINX_WORKERS worker(s); RUST_LOG=$RUST_LOG"

echo
echo "$TABLE"
[[ -n "$NOTES" ]] && { echo; printf '%s' "$NOTES"; }
echo
echo "$LOAD"

mkdir -p "$RESULTS_DIR"
{
  echo "# Tunnel benchmark — $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo
  echo "$TABLE"
  echo
  [[ -n "$NOTES" ]] && { echo "Notes:"; echo; printf '%s' "$NOTES"; echo; }
  echo "Load: $LOAD"
  echo
  echo "## Machine"
  echo
  echo '```'
  echo "date:  $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
  echo "uname: $(uname -a)"
  echo "nproc: $(nproc)"
  echo "cpu:   $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "wrk:   $(wrk -v 2>&1 | head -n1 || true)"
  echo "nginx: $(nginx -v 2>&1)"
  echo "rathole: $("$RATHOLE" --version 2>/dev/null | awk '/Build Version/ {print $NF; exit}' || true)"
  echo "bore:  $("$BORE" --version 2>/dev/null || echo n/a)"
  echo "BIN:   $BIN"
  echo '```'
} >"$RESULTS_DIR/latest.md"
log "wrote $RESULTS_DIR/latest.md"
