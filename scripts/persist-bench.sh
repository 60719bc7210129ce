#!/usr/bin/env bash
# Cost of durability (issue 12): p2p QoS 1 between persistent sessions (clean_session=0) with
# persistence off, fsync = "always" and fsync = "interval", 2 shards, in one run so the three
# share the machine's state. Release build. Bounded: 3 runs of DURATION seconds (default 10)
# plus drain. Prints the harness's table.
# Usage: scripts/persist-bench.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
PORT=${TERN_PERF_PORT:-27850}
OUT=$CARGO_TARGET_DIR/persist-bench
rm -rf "$OUT"
mkdir -p "$OUT"
if [[ ${TERN_BENCH_PREBUILT:-0} != 1 ]]; then cargo build --release -q -p tern -p tern-loadtest; fi
LOADTEST=$CARGO_TARGET_DIR/release/tern-loadtest
BROKER=$CARGO_TARGET_DIR/release/tern
PID=
cleanup() { if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi; }
trap cleanup EXIT
for mode in off always interval; do
    data=$OUT/data-$mode
    cat >"$OUT/$mode.toml" <<TOML
[broker]
shards = 2
[[listener]]
bind = "127.0.0.1:$PORT"
[log]
level = "warn"
TOML
    args=(--config "$OUT/$mode.toml")
    if [[ $mode != off ]]; then
        printf '[persistence]\nfsync = "%s"\n' "$mode" >>"$OUT/$mode.toml"
        args+=(--data-dir "$data")
    fi
    "$BROKER" "${args[@]}" 2>"$OUT/$mode.log" &
    PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
        sleep 0.1
    done
    "$LOADTEST" p2p --qos 1 --clean 0 --duration "$duration" --messages 20000000 --drain 5 \
        --port "$PORT" --broker-pid "$PID" --target tern --label "p2p-q1-persist-$mode" \
        --json "$OUT/$mode.json" 2>"$OUT/$mode.loadtest.log" || true
    tail -4 "$OUT/$mode.loadtest.log" >&2
    cleanup
    PID=
    if [[ -d $data ]]; then echo "$mode: log $(du -sh "$data" | cut -f1)" >&2; fi
done
echo "load average $(cat /proc/loadavg)" >&2
"$LOADTEST" table "$OUT/off.json" "$OUT/always.json" "$OUT/interval.json"
