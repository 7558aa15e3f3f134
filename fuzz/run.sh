#!/bin/sh
# Runs fuzz targets one after another, each until 10 million executions or MAX_SECS
# seconds, whichever comes first, at the lowest CPU priority, starting from the committed
# seeds (and the local corpus of earlier runs). Build first (see README.md):
#
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -O
#   MAX_SECS=1800 ./run.sh                 # every target, the campaign's full length
#   MAX_SECS=60 ./run.sh frame duration    # a quick look at two
#
# Each run's libFuzzer output goes to $LOGS/<target>.log (default /tmp/fuzzlogs); the
# last lines hold the execution count ("Done N runs in S second(s)") and crashes land in
# artifacts/<target>/.
set -eu
cd "$(dirname "$0")"
MAX_SECS=${MAX_SECS:-1800}
RUNS=${RUNS:-10000000}
LOGS=${LOGS:-/tmp/fuzzlogs}
BIN=${BIN:-target/x86_64-unknown-linux-gnu/release}
if [ $# -eq 0 ]; then
    set -- $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^tunnel-protocol-fuzz$')
fi
mkdir -p "$LOGS"
for t in "$@"; do
    mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
    max_len=4096
    case "$t" in bundle | compose) max_len=65536 ;; esac
    echo "$(date -u +%FT%TZ) $t: up to $RUNS runs or ${MAX_SECS}s" >&2
    nice -n 19 "$BIN/$t" "corpus/$t" "seeds/$t" \
        -runs="$RUNS" -max_total_time="$MAX_SECS" -max_len="$max_len" -timeout=20 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"$LOGS/$t.log" 2>&1 || echo "$t: exit $? (see $LOGS/$t.log)" >&2
    grep -E '^Done|stat::number_of_executed_units|stat::average_exec_per_sec' "$LOGS/$t.log" >&2 || true
done
