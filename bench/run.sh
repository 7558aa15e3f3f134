#!/usr/bin/env bash
# Side-by-side benchmark: direct nginx vs. our tunnel (gateway + edge-agent,
# over QUIC and over TLS on TCP, and the parent commit's QUIC-only binaries)
# vs. rathole (tcp, noise) vs. bore, same nginx backend, same wrk/curl load,
# one run on this machine. See bench/README.md.
set -euo pipefail

# ---------------------------------------------------------------- settings --
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
BUILD_BIN="${CARGO_TARGET_DIR:-$REPO_DIR/target}/release"   # where `cargo build --release` puts them
BIN="${BIN:-$BUILD_BIN}"          # our gateway + edge-agent
PARENT_BIN="${PARENT_BIN:-}"      # the parent commit's gateway + edge-agent (tunnel-parent)
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
DEFAULT_ONLY="direct,tunnel,tunnel-tcp,rathole-tcp,rathole-noise,bore"
[[ -n "$PARENT_BIN" ]] && DEFAULT_ONLY="direct,tunnel,tunnel-tcp,tunnel-parent,rathole-tcp,rathole-noise,bore"
ONLY="${ONLY:-$DEFAULT_ONLY}"     # comma list
KEEP_TMP="${KEEP_TMP:-0}"
export RUST_LOG="${RUST_LOG:-warn}"   # same log level for every Rust tool

BULK_BYTES=$((10 * 1024 * 1024))
DOMAIN="devices.localhost"
RESULTS_DIR="${RESULTS_DIR:-$BENCH_DIR/results}"   # latest.md goes here

exec 3>&2   # original stderr: log() keeps working inside redirected functions/traps
log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
die()  { log "FATAL: $*"; exit 1; }

for t in wrk nginx curl ss awk timeout setsid; do
  command -v "$t" >/dev/null || die "missing '$t' (apt-get install -y wrk nginx-light curl iproute2)"
done
[[ "$DURATION" =~ ^[0-9]+$ && "$BULK_N" =~ ^[0-9]+$ && "$BULK_N" -ge 1 ]] \
  || die "DURATION and BULK_N must be positive integers"

want() { [[ ",$ONLY," == *",$1,"* ]]; }
if [[ -z "$PARENT_BIN" ]] && ! want tunnel-parent; then
  log "tunnel-parent not run: PARENT_BIN is not set (see bench/README.md)"
fi

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
# Pick below the kernel's ephemeral range: a port in it can be taken between
# the check and the bind by the local end of an outgoing connection (wrk,
# curl, the agents, nginx upstreams) or still be held in TIME_WAIT, and then
# a server fails with "Address already in use".
PORT_LO=20000 PORT_HI=59999
if read -r eph_lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null &&
    [[ "$eph_lo" =~ ^[0-9]+$ ]] && ((eph_lo - 1 - 10000 >= 2000)); then
  PORT_LO=10000 PORT_HI=$((eph_lo - 1))
fi
port_free() {  # no TCP or UDP socket in any state (listening, connected, TIME_WAIT) on port $1
  [[ "$USED_PORTS" != *" $1 "* ]] &&
    [[ -z "$(ss -Htan "sport = :$1" 2>/dev/null)" ]] &&
    [[ -z "$(ss -Huan "sport = :$1" 2>/dev/null)" ]]
}
free_port() {  # free_port VAR: random port free for TCP and UDP, reserved
  local p i
  for i in $(seq 1 200); do
    p=$((PORT_LO + (RANDOM * 32768 + RANDOM) % (PORT_HI - PORT_LO + 1)))
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
if { want tunnel || want tunnel-tcp; } && [[ "$SKIP_BUILD" != 1 ]]; then
  if [[ ! -f "$REPO_DIR/Cargo.toml" ]]; then
    log "no $REPO_DIR/Cargo.toml yet; not building"
  elif [[ "$(cd "$BIN" 2>/dev/null && pwd || echo "$BIN")" != "$(cd "$BUILD_BIN" 2>/dev/null && pwd || echo "$BUILD_BIN")" ]]; then
    log "BIN=$BIN is not the build output ($BUILD_BIN); not building (benching the binaries in BIN)"
  else
    log "building gateway + edge-agent (release)"
    run_fg nice -n 19 cargo build --manifest-path "$REPO_DIR/Cargo.toml" --release -p gateway -p edge-agent --bins \
      || die "cargo build failed (use SKIP_BUILD=1 to bench existing binaries)"
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
# has_flag BINARY SUBCOMMAND FLAG: does `BINARY SUBCOMMAND --help` list FLAG?
has_flag() {
  local help
  help="$(timeout 10 "$1" "$2" --help 2>/dev/null)" || true
  [[ "$help" == *"$3"* ]]
}

# tunnel_transport PORT: which transport the agent's tunnel to PORT uses, seen
# from the sockets: an established TCP connection to PORT is TLS over TCP,
# none is QUIC (UDP; quinn's sockets are not connected, so ss cannot see them).
tunnel_transport() {
  if [[ -n "$(ss -Htn state established "dport = :$1" 2>/dev/null)" ]]; then echo tcp; else echo quic; fi
}

# bench_tunnel NAME BINDIR quic|tcp|default : gateway serve + device add +
# edge-agent run from BINDIR. `default` passes no --transport (for binaries
# that have no such flag, like the parent commit's QUIC-only agent).
bench_tunnel() {
  local name="$1" bindir="$2" transport="$3" mark=${#PIDS[@]} http_port tun_port d="$TMP/$1" uuid seen
  local -a agent_args=()
  mkdir -p "$d"
  if [[ "$transport" != default ]]; then
    if ! has_flag "$bindir/edge-agent" run --transport; then
      skip "$name" "$bindir/edge-agent run has no --transport flag (binaries from before the transport seam?)"
      return 0
    fi
    agent_args=(--transport "$transport")
  fi
  # free_port checks TCP and UDP: the gateway's TCP tunnel listener
  # (--tunnel-tcp-listen) defaults to the UDP tunnel's address and port, and
  # the agent's --gateway-tcp defaults to the same host:port as --gateway.
  free_port http_port; free_port tun_port
  start "$name-gateway" "$bindir/gateway" serve --data-dir "$d" --domain "$DOMAIN" \
    --http-listen "127.0.0.1:$http_port" --tunnel-listen "127.0.0.1:$tun_port" --api-listen 127.0.0.1:0
  sleep 0.5
  kill -0 "$LAST_PID" 2>/dev/null || { show_logs "$name-gateway"; skip "$name" "gateway serve exited"; stop_since "$mark"; return 0; }
  if ! timeout 30 "$bindir/gateway" device add --data-dir "$d" --public-url \
      --gateway "127.0.0.1:$tun_port" --out "$d/dev.toml" \
      >"$TMP/$name-device-add.out" 2>"$TMP/$name-device-add.log"; then
    cat "$TMP/$name-device-add.out" >>"$TMP/$name-device-add.log"
    show_logs "$name-device-add" "$name-gateway"; skip "$name" "gateway device add failed"; stop_since "$mark"; return 0
  fi
  # the device uuid is the last (non-empty) line of stdout
  uuid="$(awk 'NF {l = $0} END {gsub(/[[:space:]]/, "", l); print tolower(l)}' "$TMP/$name-device-add.out")"
  if [[ ! "$uuid" =~ ^[0-9a-f]{32}$ ]]; then
    cat "$TMP/$name-device-add.out" >>"$TMP/$name-device-add.log"
    show_logs "$name-device-add"; skip "$name" "last stdout line of device add is not a 32-hex uuid: '$uuid'"
    stop_since "$mark"; return 0
  fi
  # no proxy (HTTPS_PROXY is the agent's default CONNECT proxy for TCP), no EDGE_AGENT_* overrides
  start "$name-edge-agent" env -u HTTPS_PROXY -u https_proxy -u EDGE_AGENT_TRANSPORT -u EDGE_AGENT_GATEWAY_TCP "$bindir/edge-agent" run --config "$d/dev.toml" \
    --target "127.0.0.1:$NGINX_PORT" --local-api 127.0.0.1:0 "${agent_args[@]+"${agent_args[@]}"}"
  if ! wait_ready "http://127.0.0.1:$http_port/" "$uuid.$DOMAIN"; then
    show_logs "$name-gateway" "$name-edge-agent"; skip "$name" "not ready"; stop_since "$mark"; return 0
  fi
  seen="$(tunnel_transport "$tun_port")"
  log "$name: gateway http 127.0.0.1:$http_port, tunnel 127.0.0.1:$tun_port, agent ${agent_args[*]:-(no --transport)}, tunnel is $seen, device $uuid"
  if [[ "$transport" == default ]]; then transport=quic; fi
  if [[ "$seen" != "$transport" ]]; then
    show_logs "$name-edge-agent"; skip "$name" "agent should use $transport but its tunnel is $seen"
    stop_since "$mark"; return 0
  fi
  measure "$name" "http://127.0.0.1:$http_port" "$uuid.$DOMAIN"
  stop_since "$mark"
}
have_bins() { [[ -x "$1/gateway" && -x "$1/edge-agent" ]]; }
if want tunnel; then
  if have_bins "$BIN"; then
    # --transport quic when the agent has it (its default, auto, could fall back to TCP)
    if has_flag "$BIN/edge-agent" run --transport; then bench_tunnel tunnel "$BIN" quic
    else bench_tunnel tunnel "$BIN" default; fi
  else
    skip tunnel "$BIN/gateway or $BIN/edge-agent not built yet"
  fi
fi
if want tunnel-tcp; then
  if have_bins "$BIN"; then bench_tunnel tunnel-tcp "$BIN" tcp
  else skip tunnel-tcp "$BIN/gateway or $BIN/edge-agent not built yet"; fi
fi
if want tunnel-parent; then
  if [[ -z "$PARENT_BIN" ]]; then
    skip tunnel-parent "PARENT_BIN is not set"
  elif have_bins "$PARENT_BIN"; then
    bench_tunnel tunnel-parent "$PARENT_BIN" default
  else
    skip tunnel-parent "$PARENT_BIN/gateway or $PARENT_BIN/edge-agent missing"
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
  # Only a listener blocks it: bore binds with SO_REUSEADDR (tokio), and the
  # previous run's accepted connections on 7835 may still be in TIME_WAIT.
  if [[ -n "$(ss -Htln "sport = :7835" 2>/dev/null)" ]]; then
    skip bore "control port 7835 (hard-coded in bore) is in use"; return 0
  fi
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
    tunnel-tcp) echo "our tunnel (gateway+edge-agent, TLS over TCP)" ;;
    tunnel-parent) echo "our tunnel, parent binaries (QUIC)" ;;
    rathole-tcp) echo "rathole (tcp)" ;;
    rathole-noise) echo "rathole (noise NK)" ;;
    bore) echo "bore" ;;
    *) echo "$1" ;;
  esac
}
isnum() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; }
ratio() {  # ratio A B: "A/B" as 1.23x, or "-" when either is not a positive number
  if isnum "$1" && isnum "$2" && awk -v b="$2" 'BEGIN {exit !(b > 0)}'; then
    awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'
  else
    echo "-"
  fi
}

RT="rathole-tcp" RN="rathole-noise"
TABLE="| setup | req/s | p99 (ms) | 10 MiB MB/s | req/s ÷ rathole-tcp | req/s ÷ rathole-noise |
|---|---:|---:|---:|---:|---:|"
for r in "${ROWS[@]+"${ROWS[@]}"}"; do
  TABLE+=$'\n'"| $(label "$r") | ${RPS[$r]} | ${P99[$r]} | ${BULK[$r]} | $(ratio "${RPS[$r]}" "${RPS[$RT]:-}") | $(ratio "${RPS[$r]}" "${RPS[$RN]:-}") |"
done

# our tunnel rows against both rathole rows, on all three measures
RATIOS=""
for r in tunnel tunnel-tcp tunnel-parent; do
  [[ -n "${RPS[$r]:-}" ]] || continue
  RATIOS+=$'\n'"| $(label "$r") | $(ratio "${RPS[$r]}" "${RPS[$RT]:-}") | $(ratio "${RPS[$r]}" "${RPS[$RN]:-}") | $(ratio "${BULK[$r]}" "${BULK[$RT]:-}") | $(ratio "${BULK[$r]}" "${BULK[$RN]:-}") | $(ratio "${P99[$r]}" "${P99[$RT]:-}") | $(ratio "${P99[$r]}" "${P99[$RN]:-}") |"
done
if [[ -n "$RATIOS" ]]; then
  RATIOS="| our tunnel vs rathole | req/s ÷ tcp | req/s ÷ noise | MB/s ÷ tcp | MB/s ÷ noise | p99 ÷ tcp | p99 ÷ noise |
|---|---:|---:|---:|---:|---:|---:|$RATIOS"
fi
# this commit against the parent commit (both QUIC, and TCP against the parent's QUIC)
VS_PARENT=""
if [[ -n "${RPS[tunnel-parent]:-}" ]]; then
  for r in tunnel tunnel-tcp; do
    [[ -n "${RPS[$r]:-}" ]] || continue
    VS_PARENT+="- $(label "$r") ÷ parent (QUIC): req/s $(ratio "${RPS[$r]}" "${RPS[tunnel-parent]}"), 10 MiB MB/s $(ratio "${BULK[$r]}" "${BULK[tunnel-parent]}"), p99 $(ratio "${P99[$r]}" "${P99[tunnel-parent]}")"$'\n'
  done
fi
NOTES=""
for r in "${ROWS[@]+"${ROWS[@]}"}"; do
  [[ -n "${NOTE[$r]:-}" ]] && NOTES+="- $(label "$r"): ${NOTE[$r]}"$'\n'
done

LOAD="wrk -t$THREADS -c$CONNS -d${DURATION}s --latency on a 1 KiB file (keep-alive, ${WARMUP}s warm-up); 10 MiB = median of $BULK_N sequential curl downloads (new connection each, MB = 10^6 bytes); nginx $NGINX_WORKERS worker(s); RUST_LOG=$RUST_LOG"

echo
echo "$TABLE"
[[ -n "$RATIOS" ]] && { echo; echo "$RATIOS"; }
[[ -n "$VS_PARENT" ]] && { echo; printf '%s' "$VS_PARENT"; }
[[ -n "$NOTES" ]] && { echo; printf '%s' "$NOTES"; }
echo
echo "$LOAD"

mkdir -p "$RESULTS_DIR"
{
  echo "# Tunnel benchmark — $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo
  echo "$TABLE"
  echo
  [[ -n "$RATIOS" ]] && { echo "$RATIOS"; echo; }
  [[ -n "$VS_PARENT" ]] && { printf '%s' "$VS_PARENT"; echo; }
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
  echo "PARENT_BIN: ${PARENT_BIN:-n/a}"
  echo '```'
} >"$RESULTS_DIR/latest.md"
log "wrote $RESULTS_DIR/latest.md"
