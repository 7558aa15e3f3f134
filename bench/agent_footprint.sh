#!/usr/bin/env bash
# The agent's footprint on a device: its stripped binary's size, and its idle memory once
# connected (VmRSS, and how much of it is private memory and how much file-backed code
# pages), with the container engine on (the default socket) and with `--engine none`.
#
#   bench/agent_footprint.sh                          # the release build in target/release
#   AGENT=target/device/edge-agent bench/agent_footprint.sh   # another agent binary
#   GATEWAY=/path/gateway HOLD=20 bench/agent_footprint.sh
#   SMAPS=1 bench/agent_footprint.sh                 # also: resident KiB per mapping
#
# It builds nothing: build first with `cargo build --release -p gateway -p edge-agent`
# (or `--profile device -p edge-agent` for the device build, see docs/design-notes.md).
# The gateway runs on loopback with a fresh data dir; the agent is enrolled with `gateway
# device add`, connects, idles HOLD seconds, and is read from /proc/PID/status.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REL="${CARGO_TARGET_DIR:-$REPO/target}/release"
GATEWAY="${GATEWAY:-$REL/gateway}"
AGENT="${AGENT:-$REL/edge-agent}"
HOLD="${HOLD:-10}"
[[ "$HOLD" =~ ^[0-9]+$ ]] || { echo "HOLD must be a whole number of seconds" >&2; exit 2; }
for b in "$GATEWAY" "$AGENT"; do
  [[ -x "$b" ]] || { echo "missing $b (cargo build --release -p gateway -p edge-agent)" >&2; exit 1; }
done
command -v strip >/dev/null || { echo "missing strip (apt-get install binutils)" >&2; exit 1; }
TMP="$(mktemp -d /tmp/tunnel-footprint.XXXXXX)"
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
HTTP=$(free_port tcp); TUN=$(free_port both)
export RUST_LOG=warn
unset HTTPS_PROXY https_proxy EDGE_AGENT_TRANSPORT EDGE_AGENT_GATEWAY_TCP

cp "$AGENT" "$TMP/edge-agent.stripped"
strip "$TMP/edge-agent.stripped"
echo "agent binary: $AGENT"
printf 'binary size, unstripped: %s bytes\n' "$(stat -c %s "$AGENT")"
printf 'binary size, stripped:   %s bytes (%.1f MiB)\n' "$(stat -c %s "$TMP/edge-agent.stripped")" \
  "$(awk -v b="$(stat -c %s "$TMP/edge-agent.stripped")" 'BEGIN { print b / 1048576 }')"

"$GATEWAY" serve --data-dir "$TMP/gw" --domain devices.localhost --http-listen "127.0.0.1:$HTTP" \
  --tunnel-listen "127.0.0.1:$TUN" --api-listen 127.0.0.1:0 > "$TMP/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do [[ -f "$TMP/gw/gateway.db" ]] && break; sleep 0.1; done
sleep 1

measure() { # measure LABEL AGENT-ARGS...: connect, idle, print /proc/PID/status figures
  local label="$1"; shift
  local uuid pid ok=""
  uuid=$(timeout 60 "$GATEWAY" device add --data-dir "$TMP/gw" --public-url \
    --gateway "127.0.0.1:$TUN" --out "$TMP/$label.toml" 2>/dev/null | tail -1)
  "$TMP/edge-agent.stripped" run --config "$TMP/$label.toml" --target 127.0.0.1:9 \
    --local-api 127.0.0.1:0 --reboot-command true "$@" > "$TMP/$label.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  # Connected: the public URL answers (502 from the unreachable target port 9 is fine).
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Host: $uuid.devices.localhost" "http://127.0.0.1:$HTTP/" || true)
    [[ "$code" == 502 || "$code" == 200 ]] && { ok=1; break; }
    sleep 0.2
  done
  [[ -n "$ok" ]] || { tail "$TMP/$label.log"; echo "the agent ($label) never connected" >&2; exit 1; }
  sleep "$HOLD"
  kill -0 "$pid" || { tail "$TMP/$label.log"; echo "the agent ($label) exited" >&2; exit 1; }
  awk -v l="$label" '/^(VmRSS|VmHWM|RssAnon|RssFile):/ { v[$1] = $2 }
    END { printf "%-12s VmRSS %6d KiB (%.1f MiB)  RssAnon %5d KiB  RssFile %5d KiB  VmHWM %6d KiB\n",
          l, v["VmRSS:"], v["VmRSS:"] / 1024, v["RssAnon:"], v["RssFile:"], v["VmHWM:"] }' "/proc/$pid/status"
  if [[ "${SMAPS:-0}" == 1 ]]; then   # where the resident pages are, largest first
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = $6 " " $2 } /^Rss:/ { rss[name] += $2 }
      END { for (n in rss) if (rss[n] > 0) printf "  %6d KiB  %s\n", rss[n], n }' "/proc/$pid/smaps" | sort -rn | head -8
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
if [[ -S /var/run/docker.sock ]]; then
  measure engine
else
  echo "engine       not measured: no /var/run/docker.sock"
fi
measure no-engine --engine none
