#!/usr/bin/env bash
# CI performance smoke test: a short scenario set against a freshly built release broker,
# compared with loadtest/baseline.json. Fails only on a gross regression.
#
#   scripts/perf-smoke.sh                    build, run, check (exit 1 on regression)
#   scripts/perf-smoke.sh --write-baseline   build, run, and replace loadtest/baseline.json
#                                            (what scripts/perf-baseline.sh does)
#
# Run time: about 30 s of load (3 scenarios x ~8 s, plus broker start) after the build; the
# release build itself is not counted (CI builds it anyway).
#
# Environment:
#   TERN_PERF_SLOW=1   deliberately slow the broker, to show that the check fails: the broker
#                      runs at nice 19 on the same CPU as a nice-0 busy loop, so the CFS
#                      scheduler gives it ~1.5 % of that CPU (weights 15 vs 1024).
#   TERN_PERF_DEBUG=1  run a debug build of the broker instead (the other way to slow it).
#   CARGO_TARGET_DIR   build directory (default: target).
#
# How the bounds were chosen (loadtest/README.md has the measurements):
#   Three smoke runs of one build on a quiet machine (load ~2) gave throughput within
#   0.99-1.17x and p99 within 0.75-0.97x of a baseline taken the same way. But the committed
#   baseline was taken at load 0.4, and two runs of the same build at load 3.5 gave 0.36x and
#   0.39x its p2p QoS 1 throughput and 8.8-9.2x its p99 (4.8-5.0 ms against 0.55 ms); at load
#   6-15 compare-peers runs showed 0.54x against load-2 runs. Both processes share 2 vCPUs
#   with whatever else runs, and p99 of a loopback hop is milliseconds as soon as either waits
#   for a CPU. So the check fails only when
#     - throughput of an as-fast-as-possible scenario is below 20 % of the baseline (a 5x
#       slowdown: beyond the worst noise seen; TERN_PERF_SLOW=1 reaches 3 %), or
#     - p99 is above 8x the baseline AND more than 20 ms above it (both: the baseline p99 of a
#       quiet run is 0.5-1.5 ms, and runs at load 2-3 showed p99 of 6-9 ms for Tern and for
#       the trivial relay alike, i.e. descheduling; a broker that cannot keep up pushes p99 to
#       100 ms and more, as the slowed run below shows), or
#     - any QoS 1 message is lost (a correctness bug, never noise), or nothing was published.
#   Refresh the baseline (scripts/perf-baseline.sh) on a quiet machine; a baseline taken under
#   load would make the throughput bound lax, never flaky.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=check
if [[ ${1:-} == --write-baseline ]]; then MODE=write; fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
PORT=${TERN_PERF_PORT:-27840}
OUT=$CARGO_TARGET_DIR/perf-smoke
BASELINE=loadtest/baseline.json
THROUGHPUT_MIN=0.2
P99_MAX=8
P99_SLACK_US=20000
rm -rf "$OUT"
mkdir -p "$OUT"

echo "perf-smoke: building (release)" >&2
cargo build --release -q -p tern -p tern-loadtest
LOADTEST=$CARGO_TARGET_DIR/release/tern-loadtest
BROKER=$CARGO_TARGET_DIR/release/tern
if [[ ${TERN_PERF_DEBUG:-0} == 1 ]]; then
    cargo build -q -p tern
    BROKER=$CARGO_TARGET_DIR/debug/tern
    echo "perf-smoke: TERN_PERF_DEBUG=1: using the debug build $BROKER" >&2
fi

# Broker on CPU 0 and generator on CPU 1 when there are two CPUs, as in compare-peers.sh.
BROKER_PIN=() GEN_PIN=()
if [[ $(nproc) -ge 2 ]]; then BROKER_PIN=(taskset -c 0) GEN_PIN=(taskset -c 1); fi

cat >"$OUT/tern.toml" <<EOF
[broker]
shards = 1
[[listener]]
bind = "127.0.0.1:$PORT"
[log]
level = "warn"
EOF

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Tern binds with SO_REUSEPORT: a second listener on the port would silently take half the
# clients, so refuse to run when the port is taken.
if ss -Hltn "sport = :$PORT" | grep -q .; then
    echo "perf-smoke: 127.0.0.1:$PORT is already in use (set TERN_PERF_PORT)" >&2
    exit 2
fi
BROKER_CMD=("${BROKER_PIN[@]}" "$BROKER" --config "$OUT/tern.toml")
if [[ ${TERN_PERF_SLOW:-0} == 1 ]]; then
    echo "perf-smoke: TERN_PERF_SLOW=1: broker at nice 19 sharing its CPU with a busy loop" >&2
    # The busy loop is bounded like everything else: it stops after 120 s.
    "${BROKER_PIN[@]}" timeout 120 sh -c 'while :; do :; done' &
    PIDS+=($!)
    BROKER_CMD=(nice -n 19 "${BROKER_CMD[@]}")
fi
"${BROKER_CMD[@]}" 2>"$OUT/tern.log" &
BROKER_PID=$!
PIDS+=("$BROKER_PID")
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done

run() { # label args...
    local label=$1
    shift
    "${GEN_PIN[@]}" "$LOADTEST" "$@" --port "$PORT" --broker-pid "$BROKER_PID" --target tern \
        --label "$label" --json "$OUT/$label.json" --hdr "$OUT/$label.hdr" --svg "$OUT/$label.svg" \
        --drain 2 --connect-timeout 10 2>"$OUT/$label.log" || true
    if [[ -f $OUT/$label.json ]]; then tail -8 "$OUT/$label.log" >&2; fi
}
# As fast as possible: throughput. Fixed rate: latency at a load every build must sustain.
run smoke-fanout-q0 fanout --qos 0 --publishers 1 --subscribers 4 --duration 5 --messages 5000000
run smoke-p2p-q1 p2p --qos 1 --publishers 4 --subscribers 4 --duration 5 --messages 2000000
run smoke-p2p-q1-2k p2p --qos 1 --publishers 4 --subscribers 4 --rate 2000 --duration 5 --messages 10000
echo "perf-smoke: load average $(cat /proc/loadavg)" >&2

shopt -s nullglob
results=("$OUT"/smoke-*.json)
if [[ $MODE == write ]]; then
    if [[ ${#results[@]} -ne 3 ]]; then
        echo "perf-baseline: a scenario failed, baseline not written" >&2
        exit 1
    fi
    "$LOADTEST" merge --out "$BASELINE" "${results[@]}"
    echo "perf-baseline: wrote $BASELINE (commit $(git rev-parse --short HEAD), load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    exit 0
fi
"$LOADTEST" check --baseline "$BASELINE" --throughput-min $THROUGHPUT_MIN --p99-max $P99_MAX \
    --p99-slack-us $P99_SLACK_US "${results[@]}"
