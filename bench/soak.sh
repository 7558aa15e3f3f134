#!/usr/bin/env bash
# Soak: DURATION seconds of mixed load on one real device, release binaries on loopback.
# A `gateway serve`, an `edge-agent run` (container engine on, reboot/shutdown/blink
# pointed at harmless files), a python http.server as the device's web UI, and at once:
#   - HTTP visitors at RATE req/s through the device's public URL, every body checked;
#   - a `gateway ssh` session every 10 s, fed a command on stdin, its output checked;
#   - an action every 10 s (`gateway action`: reboot and blink in turn), its side effect
#     checked;
#   - a container printing numbered lines every PRINT_MS ms (edge-test/printer:v1, labelled
#     as the managed service soak-printer-PID), collected by the agent; at the end every line it printed must
#     be in the gateway's store exactly once (no gaps, no duplicates).
# Every 10 s it samples RSS (VmRSS) and open fds of the gateway and the agent into
# samples.csv, and prints least-squares slopes (KiB/min, fds/min) over the whole run and
# over its second half, plus the error counts. Exit status 1 when any check failed.
#
#   bench/soak.sh                                # builds, DURATION=1800
#   SKIP_BUILD=1 DURATION=60 bench/soak.sh       # smoke run with existing binaries
#   SKIP_BUILD=1 BIN=/work/soak-bin KEEP_TMP=1 bench/soak.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-1800}"
RATE="${RATE:-50}"              # visitor requests per second
PRINT_MS="${PRINT_MS:-10}"      # the printer's interval: 10 ms = 100 lines/s at most
EVERY="${EVERY:-10}"            # seconds between terminal sessions, actions and samples
BUILD_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release"
BIN="${BIN:-$BUILD_BIN}"
for v in DURATION RATE PRINT_MS EVERY; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  if [[ "$(cd "$BIN" 2>/dev/null && pwd || echo "$BIN")" != "$(cd "$BUILD_BIN" 2>/dev/null && pwd || echo "$BUILD_BIN")" ]]; then
    echo "BIN=$BIN is not the build output ($BUILD_BIN); not building" >&2
  else
    (cd "$REPO" && timeout 3600 nice -n 19 cargo build --release --locked -p gateway -p edge-agent --bins)
  fi
fi
for b in gateway edge-agent; do
  [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build it, or set BIN)" >&2; exit 1; }
done
command -v docker >/dev/null && timeout 30 docker info >/dev/null 2>&1 ||
  { echo "the Docker Engine is needed (the log stream comes from a container)" >&2; exit 1; }
timeout 600 "$REPO/tests/fixtures/engine/build-images.sh" >&2

TMP="$(mktemp -d /tmp/tunnel-soak.XXXXXX)"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
CNAME="edge-soak-printer-$$"
soak_cleanup() {
  touch "$TMP/stop" 2>/dev/null || true
  timeout 30 docker rm -f "$CNAME" >/dev/null 2>&1 || true
  cleanup
}
trap soak_cleanup EXIT
HTTP=$(free_port tcp); TUN=$(free_port both); API=$(free_port tcp); WEB=$(free_port tcp)
LOCAL_API=$(free_port tcp)
API_URL="http://127.0.0.1:$API"
ulimit -n 65536 2>/dev/null || true
now() { date +%s; }
log() { echo "soak: $*" >&2; }

# The device's web UI: a known 64 KiB file, checked by its sha256 at every visit.
mkdir -p "$TMP/www"
head -c 65536 /dev/urandom > "$TMP/www/blob.bin"
echo "hello from the soak device" > "$TMP/www/index.html"
timeout $((DURATION + 600)) python3 -m http.server --bind 127.0.0.1 --directory "$TMP/www" "$WEB" \
  > "$TMP/web.log" 2>&1 &
PIDS+=("$!")

RUST_LOG=warn timeout $((DURATION + 600)) "$BIN/gateway" serve --data-dir "$TMP/gw" \
  --domain devices.localhost --http-listen "127.0.0.1:$HTTP" --tunnel-listen "127.0.0.1:$TUN" \
  --api-listen "127.0.0.1:$API" > "$TMP/gateway.log" 2>&1 &
GW=$!; PIDS+=("$GW")
for _ in $(seq 1 100); do [[ -f "$TMP/gw/gateway.db" ]] && break; sleep 0.1; done
# the gateway itself, not its `timeout`: the process that is sampled
GWP=$(pgrep -P "$GW" -n || echo "$GW")
sleep 1
kill -0 "$GW" 2>/dev/null || { cat "$TMP/gateway.log"; log "gateway exited"; exit 1; }
TOKEN=$(timeout 60 "$BIN/gateway" token create --role admin --data-dir "$TMP/gw")
export GATEWAY_API="$API_URL" GATEWAY_TOKEN="$TOKEN"
mkdir -p "$TMP/agent"
timeout 60 "$BIN/gateway" device add --data-dir "$TMP/gw" --public-url \
  --gateway "127.0.0.1:$TUN" --out "$TMP/agent/device.toml" > "$TMP/device-add.out"
UUID="$(awk 'NF {l = $0} END {gsub(/[[:space:]]/, "", l); print l}' "$TMP/device-add.out")"
[[ "$UUID" =~ ^[0-9a-f]{32}$ ]] || { cat "$TMP/device-add.out"; log "no uuid from device add"; exit 1; }
HOST="$UUID.devices.localhost"

# Side effects of actions: a script that counts reboots, and a file for the LED.
cat > "$TMP/on-reboot.sh" <<EOF
#!/bin/sh
echo reboot >> "$TMP/reboots"
EOF
chmod +x "$TMP/on-reboot.sh"
: > "$TMP/reboots"
RUST_LOG=warn timeout $((DURATION + 600)) "$BIN/edge-agent" run --config "$TMP/agent/device.toml" \
  --transport quic --target "127.0.0.1:$WEB" --local-api "127.0.0.1:$LOCAL_API" \
  --reboot-command "$TMP/on-reboot.sh" --shutdown-command true --led "$TMP/led" \
  --hostname-file "$TMP/hostname" --shell /bin/sh --engine unix:///var/run/docker.sock \
  > "$TMP/agent.log" 2>&1 &
AG=$!; PIDS+=("$AG")
sleep 0.5
AGP=$(pgrep -P "$AG" -n || echo "$AG")
for _ in $(seq 1 300); do
  [[ "$(timeout 5 curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$HTTP/index.html")" == 200 ]] && break
  kill -0 "$AG" 2>/dev/null || break
  sleep 0.1
done
[[ "$(timeout 5 curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST" "http://127.0.0.1:$HTTP/index.html")" == 200 ]] ||
  { tail -20 "$TMP/agent.log" "$TMP/gateway.log"; log "the device's URL never answered"; exit 1; }
log "device $UUID online; gateway pid $GWP, agent pid $AGP; tmp $TMP"

# A service name of its own: the agent collects every managed container on the engine,
# and the tests run printers named `printer` on the same one.
SERVICE="soak-printer-$$"
timeout 60 docker run -d --name "$CNAME" --label io.edge.managed=1 \
  --label "io.edge.service-name=$SERVICE" --label io.edge.service-id=7 \
  -e "PRINT_INTERVAL_MS=$PRINT_MS" edge-test/printer:v1 > /dev/null

START=$(now)
END=$((START + DURATION))
STOP="$TMP/stop"

# Samples: seconds since start, then RSS (KiB), open fds and CPU time used so far (ms)
# of the gateway and of the agent.
HZ=$(getconf CLK_TCK)
proc_sample() {
  local rss fds cpu
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo NA)
  fds=$(ls "/proc/$1/fd" 2>/dev/null | wc -l)
  cpu=$(awk -v hz="$HZ" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat" 2>/dev/null || echo NA)
  echo "$rss,$fds,$cpu"
}
sample() {
  echo "$(($(now) - START)),$(proc_sample "$GWP"),$(proc_sample "$AGP")" >> "$TMP/samples.csv"
}
echo "t_s,gateway_rss_kib,gateway_fds,gateway_cpu_ms,agent_rss_kib,agent_fds,agent_cpu_ms" > "$TMP/samples.csv"
sample
(
  while [[ ! -e "$STOP" ]]; do
    sleep "$EVERY"
    sample
  done
) &
PIDS+=("$!")

# Visitors: RATE req/s on one keep-alive connection (every 10th request on a new one),
# each answer checked: status 200 and the exact bytes of the file.
timeout $((DURATION + 120)) python3 - "$HTTP" "$HOST" "$TMP/www/blob.bin" "$RATE" "$STOP" \
  "$TMP/visitors.json" <<'PY' &
import http.client, json, os, sys, time
port, host, blob, rate, stop, out = sys.argv[1:]
want = open(blob, "rb").read()
rate = int(rate)
stats = {"ok": 0, "http_errors": 0, "corrupt": 0, "conn_errors": 0, "max_ms": 0.0, "first_errors": []}
conn, n, t_next = None, 0, time.monotonic()
def note(kind, detail):
    stats[kind] += 1
    if len(stats["first_errors"]) < 20:
        stats["first_errors"].append(f"{time.strftime('%H:%M:%S')} {kind}: {detail}")
def dump():
    with open(out + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(out + ".tmp", out)
while not os.path.exists(stop):
    n += 1
    t0 = time.monotonic()
    try:
        if conn is None or n % 10 == 0:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
        conn.request("GET", "/blob.bin", headers={"Host": host})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            note("http_errors", f"status {r.status}: {body[:200]!r}")
        elif body != want:
            note("corrupt", f"{len(body)} bytes, want {len(want)}")
        else:
            stats["ok"] += 1
    except Exception as e:
        note("conn_errors", repr(e))
        try:
            conn.close()
        except Exception:
            pass
        conn = None
    stats["max_ms"] = max(stats["max_ms"], (time.monotonic() - t0) * 1000)
    if n % rate == 0:
        dump()
    t_next += 1 / rate
    time.sleep(max(0, t_next - time.monotonic()))
dump()
PY
VISITORS=$!; PIDS+=("$VISITORS")

# Terminals: a shell on the device host every EVERY s, fed a command on stdin; its
# answer must come back (the PTY echoes the command itself, which holds `$((6 * 7))`,
# not the 42 looked for).
(
  i=0
  while [[ ! -e "$STOP" ]]; do
    i=$((i + 1))
    out="$(printf 'echo soak-%s-$((6 * 7))\nexit 0\n' "$i" |
      timeout 30 "$BIN/gateway" ssh "$UUID" 2>&1)" && rc=0 || rc=$?
    if [[ $rc == 0 && "$out" == *"soak-$i-42"* ]]; then
      echo "ok $i" >> "$TMP/terminals"
    else
      echo "fail $i rc=$rc $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)" >> "$TMP/terminals"
    fi
    sleep "$EVERY"
  done
) &
PIDS+=("$!")

# Actions: reboot and blink in turn, every EVERY s, waiting for each result; a reboot
# must have run the reboot command once more.
(
  i=0
  while [[ ! -e "$STOP" ]]; do
    i=$((i + 1))
    if ((i % 2)); then action=reboot; else action=blink; fi
    before=$(wc -l < "$TMP/reboots")
    out="$(timeout 60 "$BIN/gateway" action "$UUID" "$action" 2>&1)" && rc=0 || rc=$?
    after=$(wc -l < "$TMP/reboots")
    if [[ $rc != 0 ]]; then
      echo "fail $i $action rc=$rc $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)" >> "$TMP/actions"
    elif [[ $action == reboot && $after != $((before + 1)) ]]; then
      echo "fail $i reboot ran the command $((after - before)) times" >> "$TMP/actions"
    else
      echo "ok $i $action" >> "$TMP/actions"
    fi
    sleep "$EVERY"
  done
) &
PIDS+=("$!")

log "running for $DURATION s (until $(date -d "@$END" +%T))"
while (($(now) < END)); do
  sleep 5 & wait $!
  for p in "$GWP" "$AGP"; do
    kill -0 "$p" 2>/dev/null || { log "process $p died"; tail -20 "$TMP/gateway.log" "$TMP/agent.log"; exit 1; }
  done
  if ! timeout 10 docker inspect -f '{{.State.Running}}' "$CNAME" 2>/dev/null | grep -q true; then
    log "the printer container is not running"; break
  fi
done
touch "$STOP"
sample
# The loops finish their current round (each bounded by its timeouts).
wait "$VISITORS" 2>/dev/null || true
sleep 2 & wait $!
# Stop the printer, then give the agent time to ship its last lines.
timeout 60 docker stop -t 2 "$CNAME" > /dev/null || true
LAST_PRINTED="$(timeout 30 docker logs --tail 1 "$CNAME" 2>&1 | sed -n 's/^line \([0-9]*\)$/\1/p')"
sleep 10 & wait $!

# The log check and the summary.
python3 - "$API_URL" "$TOKEN" "$UUID" "${LAST_PRINTED:-0}" "$TMP" "$DURATION" "$SERVICE" <<'PY'
import csv, json, os, sys, urllib.request
api, token, uuid, last_printed, tmp, duration, service = sys.argv[1:]
last_printed = int(last_printed)
def get(path):
    req = urllib.request.Request(api + path, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)
nums, after = [], 0
while True:
    v = get(f"/v1/devices/{uuid}/logs?service={service}&after={after}&limit=5000")
    for l in v["lines"]:
        m = l["message"]
        if m.startswith("line "):
            nums.append(int(m[5:]))
        after = l["id"]
    if v.get("next_after") is None:
        break
seen = set(nums)
dups = len(nums) - len(seen)
gaps = sum(1 for i in range(1, last_printed + 1) if i not in seen)
beyond = sum(1 for i in seen if i > last_printed)
out_of_order = sum(1 for a, b in zip(nums, nums[1:]) if b < a)

def slope(rows, col):
    pts = [(float(r["t_s"]) / 60, float(r[col])) for r in rows if r[col] not in ("", "NA")]
    n = len(pts)
    if n < 3:
        return float("nan")
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else float("nan")
rows = list(csv.DictReader(open(os.path.join(tmp, "samples.csv"))))
half = [r for r in rows if float(r["t_s"]) >= float(rows[-1]["t_s"]) / 2]
def cpu_share(who):
    r0, r1 = rows[0], rows[-1]
    dt = float(r1["t_s"]) - float(r0["t_s"])
    try:
        return (float(r1[who + "_cpu_ms"]) - float(r0[who + "_cpu_ms"])) / 10 / dt if dt else float("nan")
    except ValueError:
        return float("nan")
def lines(name):
    p = os.path.join(tmp, name)
    return open(p).read().splitlines() if os.path.exists(p) else []
term, act = lines("terminals"), lines("actions")
vis = json.load(open(os.path.join(tmp, "visitors.json")))
print(f"soak: {duration} s, {len(rows)} samples (samples.csv in {tmp})")
for who in ("gateway", "agent"):
    r0, r1 = rows[0], rows[-1]
    print(f"{who}: RSS {r0[who + '_rss_kib']} -> {r1[who + '_rss_kib']} KiB, fds {r0[who + '_fds']} -> {r1[who + '_fds']}; "
          f"slope RSS {slope(rows, who + '_rss_kib'):+.1f} KiB/min (second half {slope(half, who + '_rss_kib'):+.1f}), "
          f"fds {slope(rows, who + '_fds'):+.3f}/min (second half {slope(half, who + '_fds'):+.3f}); "
          f"CPU {cpu_share(who):.1f} % of one core on average")
bad_vis = vis["http_errors"] + vis["corrupt"] + vis["conn_errors"]
print(f"visitors: {vis['ok']} ok, {vis['http_errors']} HTTP errors, {vis['corrupt']} corrupt bodies, "
      f"{vis['conn_errors']} connection errors, slowest {vis['max_ms']:.0f} ms")
for e in vis["first_errors"]:
    print("  " + e)
tfail = [l for l in term if not l.startswith("ok")]
afail = [l for l in act if not l.startswith("ok")]
print(f"terminals: {len(term) - len(tfail)} ok, {len(tfail)} failed")
for l in tfail[:10]:
    print("  " + l)
print(f"actions: {len(act) - len(afail)} ok, {len(afail)} failed")
for l in afail[:10]:
    print("  " + l)
print(f"logs: the printer printed {last_printed} lines ({last_printed / float(duration):.0f}/s); the gateway holds {len(nums)} "
      f"({len(seen)} distinct): {gaps} missing, {dups} duplicated, {beyond} beyond the last printed, "
      f"{out_of_order} out of order")
ok = (bad_vis == 0 and not tfail and not afail and gaps == 0 and dups == 0 and last_printed > 0
      and vis["ok"] > 0 and term and act)
print("soak: " + ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
PY
