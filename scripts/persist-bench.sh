#!/usr/bin/env bash
# Cost of durability (issue 12): p2p QoS 1 between persistent sessions (clean_session=0) with
# persistence off, fsync = "always" and fsync = "interval", 2 shards, in one run so the three
# share the machine's state. Release build. Bounded: 3 runs of DURATION seconds (default 10)
# plus drain. Prints the harness's table. INFLIGHT (default 16, the harness's default) is each
# publisher's QoS 1 window: with `always` a PUBACK waits for a sync, so the rate is about
# 8 x INFLIGHT / (PUBACK latency) and a larger window shows what group commit batches.
# Usage: [INFLIGHT=N] scripts/persist-bench.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
inflight=${INFLIGHT:-16}
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
port=$PORT
for mode in off always interval; do
    # A port per mode: the previous broker's closed connections sit in TIME_WAIT on its port,
    # and a bind there can fail with "address already in use".
    port=$((port + 1))
    data=$OUT/data-$mode
    cat >"$OUT/$mode.toml" <<TOML
[broker]
shards = 2
[[listener]]
bind = "127.0.0.1:$port"
[log]
level = "warn"
[admin]
bind = "127.0.0.1:$((port + 100))"
TOML
    args=(--config "$OUT/$mode.toml")
    if [[ $mode != off ]]; then
        printf '[persistence]\nfsync = "%s"\n' "$mode" >>"$OUT/$mode.toml"
        args+=(--data-dir "$data")
    fi
    "$BROKER" "${args[@]}" 2>"$OUT/$mode.log" &
    PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "$mode: the broker did not start:" >&2
        tail -3 "$OUT/$mode.log" >&2
        exit 1
    fi
    "$LOADTEST" p2p --qos 1 --clean 0 --inflight "$inflight" --duration "$duration" \
        --messages 20000000 --drain 5 \
        --port "$port" --broker-pid "$PID" --target tern --label "p2p-q1-persist-$mode" \
        --json "$OUT/$mode.json" 2>"$OUT/$mode.loadtest.log" || true
    tail -4 "$OUT/$mode.loadtest.log" >&2
    # The log's own view: fsyncs, records per fsync, mean commit latency (all shards).
    curl -s "http://127.0.0.1:$((port + 100))/metrics" >"$OUT/$mode.metrics" || true
    awk -v mode="$mode" '/^tern_wal_(fsyncs|records_synced|commit_us_sum)_total[ {]/ {
            sub(/\{.*\}/, "", $1); t[$1] += $2 }
        END { f = t["tern_wal_fsyncs_total"]; if (f > 0) printf "%s: %d fsyncs, %.1f records/fsync, %.2f ms/commit\n",
            mode, f, t["tern_wal_records_synced_total"] / f, t["tern_wal_commit_us_sum_total"] / f / 1000 }' \
        "$OUT/$mode.metrics" >&2
    cleanup
    PID=
    if [[ -d $data ]]; then echo "$mode: log $(du -sh "$data" | cut -f1)" >&2; fi
done
echo "load average $(cat /proc/loadavg)" >&2
"$LOADTEST" table "$OUT/off.json" "$OUT/always.json" "$OUT/interval.json"
