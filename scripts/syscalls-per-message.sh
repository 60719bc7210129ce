#!/usr/bin/env bash
# Counts the broker's syscalls per message during a fixed-rate p2p QoS 1 run (issue 10): Tern
# (or the raw relay) on CPU 0, the harness on CPU 1, `perf stat` on the broker's tracepoints for
# 2 s in the middle of the run. Prints the harness's loss and latency line, then each count
# and its share per published message.
#
#   scripts/syscalls-per-message.sh [tern|relay] [PAIRS] [RATE]     (defaults: tern 8 5000)
#
# Environment: TERN_BIN_DIR (prebuilt tern and tern-loadtest, as in compare-peers.sh; default
# target/release, built here), TERN_EXTRA_CONFIG (TOML appended to Tern's configuration),
# PORT (default 27860). Needs perf with tracepoint access (root here).
set -euo pipefail
cd "$(dirname "$0")/.."
BROKER=${1:-tern} PAIRS=${2:-8} RATE=${3:-5000}
PORT=${PORT:-27860}
if [[ -n ${TERN_BIN_DIR:-} ]]; then
    BIN=$TERN_BIN_DIR
else
    cargo build --release -q -p tern -p tern-loadtest
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
OUT=$(mktemp -d)
trap 'kill "$BP" 2>/dev/null || true; rm -rf "$OUT"' EXIT
printf '[broker]\nshards = 1\n[[listener]]\nbind = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n%s\n' \
    "$PORT" "${TERN_EXTRA_CONFIG:-}" >"$OUT/tern.toml"
if [[ $BROKER == relay ]]; then
    taskset -c 0 "$BIN/tern-loadtest" relay --listen "127.0.0.1:$PORT" --max-secs 60 2>/dev/null &
else
    taskset -c 0 "$BIN/tern" --config "$OUT/tern.toml" 2>"$OUT/broker.log" &
fi
BP=$!
sleep 1
# Bounded: 4 s of publishing (at most RATE x 4 messages), then at most 3 s of drain.
taskset -c 1 "$BIN/tern-loadtest" p2p --qos 1 --publishers "$PAIRS" --subscribers "$PAIRS" \
    --rate "$RATE" --duration 4 --port "$PORT" --json "$OUT/run.json" >/dev/null 2>&1 &
LP=$!
sleep 1.5
EVENTS=syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto
EVENTS+=,syscalls:sys_enter_membarrier,syscalls:sys_enter_epoll_wait,raw_syscalls:sys_enter
EVENTS+=,context-switches,task-clock
perf stat -x, -e "$EVENTS" -p "$BP" -o "$OUT/perf.csv" -- sleep 2
wait "$LP"
echo "load $(cut -d' ' -f1-3 /proc/loadavg); $BROKER, $PAIRS pairs at $RATE msg/s; counts over 2 s:"
python3 - "$OUT/run.json" "$OUT/perf.csv" "$RATE" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
lat = run["latency_us"]
print(f"lost {run['lost']}  p50 {lat['p50']:.0f} us  p99 {lat['p99']:.0f} us")
published = 2 * float(sys.argv[3])
for line in open(sys.argv[2]):
    f = line.strip().split(",")
    if len(f) > 3 and f[0].replace(".", "").isdigit():
        print(f"  {f[2]:<40} {float(f[0]):>10.0f}  {float(f[0]) / published:6.2f} per message")
PY
