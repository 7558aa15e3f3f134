#!/usr/bin/env bash
# Access modes on a public URL: req/s and p99 of `public`, `basic` (the password checked
# with argon2 once, then from the cache), `link` (the signed cookie checked per request)
# and `login` (the device host's signed cookie checked per request, and who its session
# is, from a cache re-read every 5 s), one after the other against the same device, then
# `public` again.
#
# One `gateway serve` on its SQLite data dir, one `edge-agent run --engine none`, nginx
# (1 worker) serving a 1 KiB file as the device's web UI; wrk on loopback. The modes are
# switched live through the CLI (`gateway device access`), the agent stays connected. For
# `login` the script signs a dashboard user (`gateway user add`) in on the bare domain's
# sign-in page with curl and exchanges the ticket for the device host's cookie.
#
#   bench/access.sh                 # builds release binaries first
#   SKIP_BUILD=1 BIN=/path/to/release DURATION=10 bench/access.sh
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
for t in wrk nginx curl base64 python3; do
  command -v "$t" >/dev/null || { echo "missing '$t' (apt-get install -y wrk nginx-light curl)" >&2; exit 1; }
done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$REPO" && timeout 3600 nice -n 19 cargo build --release --locked -p gateway -p edge-agent --bins)
fi
for b in gateway edge-agent; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build it, or set BIN)" >&2; exit 1; }
done

TMP="$(mktemp -d /tmp/tunnel-access.XXXXXX)"
chmod 755 "$TMP"
source "$REPO/bench/lib.sh"
log() { echo "access: $*" >&2; }
ulimit -n 65536 2>/dev/null || true

mkdir -p "$TMP/www"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 >"$TMP/www/index.html"
start_nginx

HTTP=$(free_port tcp); TUN=$(free_port both); API=$(free_port tcp)
RUST_LOG=warn "$BIN/gateway" serve --data-dir "$TMP/gw" --domain "$DOMAIN" \
  --http-listen "127.0.0.1:$HTTP" --tunnel-listen "127.0.0.1:$TUN" --api-listen "127.0.0.1:$API" \
  >"$TMP/gateway.log" 2>&1 &
PIDS+=("$!")
for i in $(seq 1 100); do [[ -s "$TMP/gw/ca.key" ]] && break; sleep 0.1; done
export GATEWAY_API="http://127.0.0.1:$API"
GATEWAY_TOKEN="$("$BIN/gateway" token create --data-dir "$TMP/gw" --role admin)"
export GATEWAY_TOKEN
"$BIN/gateway" device add --data-dir "$TMP/gw" --public-url \
  --gateway "127.0.0.1:$TUN" --out "$TMP/dev.toml" >"$TMP/device-add.out" 2>"$TMP/device-add.log"
UUID="$(awk 'NF {l = $0} END {gsub(/[[:space:]]/, "", l); print tolower(l)}' "$TMP/device-add.out")"
[[ "$UUID" =~ ^[0-9a-f]{32}$ ]] || { cat "$TMP/device-add.log" >&2; exit 1; }
HOST="$UUID.$DOMAIN"
env -u HTTPS_PROXY -u https_proxy RUST_LOG=warn "$BIN/edge-agent" run --config "$TMP/dev.toml" \
  --target "127.0.0.1:$NGINX_PORT" --local-api 127.0.0.1:0 --engine none >"$TMP/agent.log" 2>&1 &
PIDS+=("$!")

status() {  # [HEADER]: the status of one GET of the device's URL
  curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" ${1:+-H "$1"} "http://127.0.0.1:$HTTP/" 2>/dev/null || true
}
wait_status() {  # WANT [HEADER]: until a GET answers WANT (30 s)
  local i
  for i in $(seq 1 300); do
    [[ "$(status "${2:-}")" == "$1" ]] && return 0
    sleep 0.1
  done
  log "never got $1 (last: $(status "${2:-}"))"; tail "$TMP/gateway.log" "$TMP/agent.log" >&2
  exit 1
}
wait_status 200

to_ms() { awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v } else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 } else print v }'; }
declare -A RPS P99
load() {  # NAME [HEADER]
  local out="$TMP/$1.wrk" h=()
  [[ -n "${2:-}" ]] && h=(-H "$2")
  timeout 30 wrk -t"$THREADS" -c"$CONNS" -d2s -H "Host: $HOST" "${h[@]}" "http://127.0.0.1:$HTTP/" >/dev/null 2>&1 || true
  timeout $((DURATION + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $HOST" "${h[@]}" \
    "http://127.0.0.1:$HTTP/" >"$out" 2>&1
  if grep -q "Non-2xx" "$out"; then log "$1: non-2xx answers"; grep "Non-2xx" "$out" >&2; fi
  RPS[$1]=$(awk '/^Requests\/sec:/ { printf "%d", $2 }' "$out")
  P99[$1]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  log "$1: ${RPS[$1]} req/s, p99 ${P99[$1]} ms"
}

load public

printf 'bench-password\n' >"$TMP/pw"
"$BIN/gateway" device access "$UUID" basic --user bench --password-file "$TMP/pw" >/dev/null
AUTH="Authorization: Basic $(printf 'bench:bench-password' | base64 -w0)"
wait_status 401
wait_status 200 "$AUTH"
load basic "$AUTH"

"$BIN/gateway" device access "$UUID" link >/dev/null
wait_status 401
LINK="$("$BIN/gateway" device share "$UUID" --for 1h 2>/dev/null)"
PATH_Q="/${LINK#*://*/}"
COOKIE="$(curl -s -o /dev/null -D - -H "Host: $HOST" "http://127.0.0.1:$HTTP$PATH_Q" \
  | awk -F'[:;] *' 'tolower($1) == "set-cookie" { print $2 }')"
[[ "$COOKIE" == gw_access=* ]] || { log "no cookie from the share link ($LINK)"; exit 1; }
wait_status 200 "Cookie: $COOKIE"
load link "Cookie: $COOKIE"

printf 'bench-password\n' | "$BIN/gateway" user add bench --role viewer --data-dir "$TMP/gw" >/dev/null
"$BIN/gateway" device access "$UUID" login >/dev/null
wait_status 303
FORM="$(curl -s -D "$TMP/form.h" -H "Host: $DOMAIN" "http://127.0.0.1:$HTTP/login?device=$UUID&next=/")"
CSRF="$(grep -o 'name="csrf" value="[0-9a-f]*"' <<<"$FORM" | head -1 | sed 's/.*value="//; s/"//')"
FORM_COOKIE="$(awk -F'[:;] *' 'tolower($1) == "set-cookie" && $2 ~ /^gw_portal_form=/ { print $2 }' "$TMP/form.h")"
[[ -n "$CSRF" && -n "$FORM_COOKIE" ]] || { log "no sign-in form on the bare domain"; exit 1; }
TICKET_URL="$(curl -s -o /dev/null -w '%{redirect_url}' -H "Host: $DOMAIN" -H "Cookie: $FORM_COOKIE" \
  --data "csrf=$CSRF&device=$UUID&next=/&user=bench&password=bench-password" "http://127.0.0.1:$HTTP/login")"
[[ "$TICKET_URL" == *gw_ticket=* ]] || { log "sign-in did not send back a ticket ($TICKET_URL)"; exit 1; }
LOGIN_COOKIE="$(curl -s -o /dev/null -D - -H "Host: $HOST" "http://127.0.0.1:$HTTP/${TICKET_URL#*://*/}" \
  | awk -F'[:;] *' 'tolower($1) == "set-cookie" { print $2 }')"
[[ "$LOGIN_COOKIE" == gw_login=* ]] || { log "no cookie for the ticket"; exit 1; }
wait_status 200 "Cookie: $LOGIN_COOKIE"
load login "Cookie: $LOGIN_COOKIE"

"$BIN/gateway" device access "$UUID" public >/dev/null
wait_status 200
load public2

echo
echo "access modes, $(date -u +%FT%TZ), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), wrk -t$THREADS -c$CONNS -d${DURATION}s, 1 KiB"
printf '| mode | req/s | p99 (ms) | ÷ mean public |\n|---|---:|---:|---:|\n'
for m in public basic link login public2; do
  awk -v m="$m" -v r="${RPS[$m]}" -v p="${P99[$m]}" -v a="${RPS[public]}" -v b="${RPS[public2]}" \
    'BEGIN { printf "| %s | %d | %s | %.2fx |\n", m, r, p, r / ((a + b) / 2) }'
done
