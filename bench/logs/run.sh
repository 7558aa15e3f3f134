#!/usr/bin/env bash
# Log throughput end to end (agent spool -> Logs stream -> gateway SQLite), from one
# device and from 100 simulated devices, with the gateway's CPU per 10k lines, and the
# lines lost across a forced disconnect (the gateway killed with SIGKILL mid-stream and
# started again). Loopback only; every process it starts is stopped on exit.
#
#   bash bench/logs/run.sh            # prints a Markdown table, writes bench/logs/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET="${CARGO_TARGET_DIR:-target}"
# BENCH_NO_BUILD=1 reuses binaries already built (e.g. while another build runs).
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --locked -p gateway --bin gateway --example logs_bench >&2
GW="$TARGET/release/gateway"
BENCH="$TARGET/release/examples/logs_bench"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

start_gateway() { # data_dir udp_port api_port -> pid on stdout
  "$GW" serve --data-dir "$1" --tunnel-listen "127.0.0.1:$2" --api-listen "127.0.0.1:$3" \
        --http-listen "127.0.0.1:0" >"$1/gateway.log" 2>&1 &
  echo $!
}

run() { # devices lines [forced]
  local dir="$work/gw-$1-$2-${3:-}"; mkdir -p "$dir"
  local udp api; udp=$(port); api=$(port)
  local pid; pid=$(start_gateway "$dir" "$udp" "$api"); pids+=("$pid")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$api/openapi.json" && break; sleep 0.1; done
  local restart=()
  if [ -n "${3:-}" ]; then
    # Kills the gateway with SIGKILL and starts it again on the same ports; prints the pid.
    printf 'kill -9 $(cat %s/pid); sleep 1; %q serve --data-dir %q --tunnel-listen 127.0.0.1:%s --api-listen 127.0.0.1:%s --http-listen 127.0.0.1:0 >>%q/gateway.log 2>&1 & echo $! | tee %s/pid\n' \
      "$dir" "$GW" "$dir" "$udp" "$api" "$dir" "$dir" > "$dir/restart.sh"
    echo "$pid" > "$dir/pid"
    restart=("bash $dir/restart.sh")
  fi
  timeout 900 "$BENCH" "$dir" "127.0.0.1:$udp" "http://127.0.0.1:$api" "$pid" "$1" "$2" "${restart[@]}"
  kill -9 "$(cat "$dir/pid" 2>/dev/null || echo "$pid")" 2>/dev/null || true
}

{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r), $(date -u +%F)"
  run 1 100000
  run 100 2000
  run 1 50000 forced
} | tee "$work/out.txt"
{
  echo '# Log throughput (bench/logs/run.sh)'
  echo
  echo '```'
  cat "$work/out.txt"
  echo '```'
} > bench/logs/RESULTS.md
