#!/usr/bin/env bash
# CI performance smoke test: a short scenario set against a freshly built release broker AND
# the raw relay (`tern-loadtest relay`, a trivial forwarder) in the same run, on the same CPU.
# Every figure is checked as a ratio tern/relay against the same ratio in loadtest/baseline.json,
# so what slows the machine slows both and cancels out.
#
#   scripts/perf-smoke.sh                    build, run, check (exit 1 on regression)
#   scripts/perf-smoke.sh --write-baseline   build, run, and replace loadtest/baseline.json
#                                            (what scripts/perf-baseline.sh does)
#
# Run time: about 45 s of load (3 scenarios x 2 targets x ~7 s) after the build; the release
# build itself is not counted (CI builds it anyway).
#
# Environment:
#   TERN_PERF_SLOW=1   deliberately slow the broker, to show that the check fails: the broker
#                      runs at nice 19 on the same CPU as a nice-0 busy loop, so the CFS
#                      scheduler gives it ~1.5 % of that CPU (weights 15 vs 1024). The relay
#                      is not slowed: that is the point of the comparison.
#   TERN_PERF_DEBUG=1  run a debug build of the broker instead (the other way to slow it).
#   CARGO_TARGET_DIR   build directory (default: target).
#
# The check fails when (tern-loadtest check; loadtest/README.md has the measurements)
#   - the delivered-rate ratio tern/relay of an as-fast-as-possible scenario is below 40 % of
#     the baseline's ratio,
#   - the latency ratio tern/relay at p50, p90, p99 or p99.9 is above 4x the baseline's ratio
#     AND Tern is more than 5 ms above the relay there (sub-5 ms tails are descheduling on a
#     2-vCPU machine shared with builds; a broker that cannot keep up is 100 ms and more),
#   - any QoS 1 message is lost (a correctness bug, never noise), or nothing was published.
# A rate or latency failure reruns every scenario, up to three passes, and counts only if every
# pass fails (a
# one-off 60-90 ms stall, not attributed to broker or generator, is common on this VM); a
# loss fails at once.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=check
if [[ ${1:-} == --write-baseline ]]; then MODE=write; fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
PORT=${TERN_PERF_PORT:-27840}
OUT=$CARGO_TARGET_DIR/perf-smoke
BASELINE=loadtest/baseline.json
RELAY_PORT=$((PORT + 1))
THROUGHPUT_MIN=0.4
LATENCY_MAX=4
LATENCY_SLACK_US=5000
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
    # The busy loop is bounded like everything else: it stops after 300 s (three passes).
    "${BROKER_PIN[@]}" timeout 300 sh -c 'while :; do :; done' &
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

if ss -Hltn "sport = :$RELAY_PORT" | grep -q .; then
    echo "perf-smoke: 127.0.0.1:$RELAY_PORT is already in use (set TERN_PERF_PORT)" >&2
    exit 2
fi
# The raw relay on the broker's CPU: the ceiling every figure is divided by.
"${BROKER_PIN[@]}" "$LOADTEST" relay --listen "127.0.0.1:$RELAY_PORT" --max-secs 600 \
    2>"$OUT/relay.log" &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$RELAY_PORT") 2>/dev/null; then break; fi
    sleep 0.1
done

run() { # target label args...
    local target=$1 label=$2 port=$PORT pid=$BROKER_PID
    shift 2
    if [[ $target == relay ]]; then port=$RELAY_PORT pid=$RELAY_PID; fi
    local base=$OUT/$label.$target
    "${GEN_PIN[@]}" "$LOADTEST" "$@" --port "$port" --broker-pid "$pid" --target "$target" \
        --label "$label" --json "$base.json" --hdr "$base.hdr" --svg "$base.svg" \
        --drain 2 --connect-timeout 10 2>"$base.log" || true
    if [[ -f $base.json ]]; then tail -12 "$base.log" >&2; fi
}
# As fast as possible: throughput. Fixed rate: latency at a load every build must sustain.
# Each scenario runs against the relay right after Tern, so both see the same machine.
run_all() {
    for target in tern relay; do
        run $target smoke-fanout-q0 fanout --qos 0 --publishers 1 --subscribers 4 --duration 4 --messages 4000000
    done
    for target in tern relay; do
        run $target smoke-p2p-q1 p2p --qos 1 --publishers 4 --subscribers 4 --duration 4 --messages 2000000
    done
    for target in tern relay; do
        run $target smoke-p2p-q1-2k p2p --qos 1 --publishers 4 --subscribers 4 --rate 2000 --duration 4 --messages 8000
    done
    echo "perf-smoke: load average $(cat /proc/loadavg)" >&2
}
run_all

shopt -s nullglob
results=("$OUT"/smoke-*.json)
if [[ $MODE == write ]]; then
    if [[ ${#results[@]} -ne 6 ]]; then
        echo "perf-baseline: a scenario failed, baseline not written" >&2
        exit 1
    fi
    "$LOADTEST" merge --out "$BASELINE" "${results[@]}"
    echo "perf-baseline: wrote $BASELINE (commit $(git rev-parse --short HEAD), load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    exit 0
fi
check() {
    "$LOADTEST" check --baseline "$BASELINE" --throughput-min $THROUGHPUT_MIN \
        --latency-max $LATENCY_MAX --latency-slack-us $LATENCY_SLACK_US "${results[@]}"
}
# A rate or latency failure must repeat in three passes to count: on this 2-vCPU VM a single stall of
# 60-90 ms (broker or generator: not attributed) lands in about 1 run in 5 of the 4 s scenario
# (its 8 slowest of 8 000 messages are the p99.9), in this session's builds and in the last
# CI-green one alike (issue 10 note), while a regression shows in every run. A lost QoS 1/2
# message or a run that published nothing is never noise: it fails at once.
for pass in 1 2 3; do
    if check | tee "$OUT/check.txt"; then exit 0; fi
    if grep -qE "not delivered|nothing was published" "$OUT/check.txt"; then exit 1; fi
    if [[ $pass == 3 ]]; then exit 1; fi
    echo "perf-smoke: a latency or rate figure failed in pass $pass of 3; running every scenario again" >&2
    rm -f "$OUT"/smoke-*.json
    run_all
    results=("$OUT"/smoke-*.json)
done
