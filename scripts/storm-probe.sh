#!/usr/bin/env bash
# Issue 11, connection storms: does a storm of new connections stall the clients already
# connected, or run the broker out of memory? One Tern shard (pinned to CPU $BROKER_CPU) serves
# a QoS 1 probe pair at 1 000 msg/s; STORM_AT seconds in, CONNS new MQTT connections arrive as
# fast as the generator can open them (`tern-loadtest conn --conn-rate 0`), are held HOLD
# seconds and closed. The probe's client runs at real-time priority (chrt -f 10) so that the
# storm's generator on the same CPU does not delay it. The probe's latency over the whole run (p50/p99/p99.9/max, and loss) and
# the broker's peak RSS (VmHWM) say whether the storm held up the connected clients: a probe
# delayed beyond its keep-alive would be a stall.
#
#   scripts/storm-probe.sh [OUTDIR]
#
# Environment: CONNS (default 18000: this host caps a process at 20 000 files), HOLD (5),
# STORM_AT (3), PROBE_SECS (20), BROKER_CPU (0), GEN_CPU (1), BASELINE=1 also runs the probe
# alone first (same length) for comparison, TERN_BIN_DIR=DIR runs DIR/tern and
# DIR/tern-loadtest without building, TLS=1 makes the storm a TLS one (TLS 1.3, a
# throw-away P-256 certificate made with openssl, a second listener on PORT+2; the probe stays
# on plain TCP): every handshake is CPU on the broker's one core. Loopback only; every run is
# bounded by its --duration/--hold and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-target/storm-probe/$(date -u +%Y%m%dT%H%M%SZ)}
CONNS=${CONNS:-18000}
HOLD=${HOLD:-5}
STORM_AT=${STORM_AT:-3}
PROBE_SECS=${PROBE_SECS:-20}
BROKER_CPU=${BROKER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
PORT=${PORT:-27850}
ADMIN=${ADMIN:-27851}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$CARGO_TARGET_DIR/release
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ -n ${TERN_BIN_DIR:-} ]]; then
    BIN=$TERN_BIN_DIR # prebuilt binaries (A/B runs); nothing is built
else
    cargo build --release -q -p tern -p tern-loadtest
fi

cat >"$OUT/tern.toml" <<EOF
[broker]
shards = 1
[[listener]]
bind = "127.0.0.1:$PORT"
connections_max = 100000
[log]
level = "warn"
[admin]
bind = "127.0.0.1:$ADMIN"
EOF

STORM_PORT=$PORT
STORM_TLS=()
if [[ -n ${TLS:-} ]]; then
    STORM_PORT=$((PORT + 2))
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$OUT/key.pem" -out "$OUT/cert.pem" -days 2 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost" 2>/dev/null
    cat >>"$OUT/tern.toml" <<EOF
[[listener]]
bind = "127.0.0.1:$STORM_PORT"
transport = "tls"
certfile = "$OUT/cert.pem"
keyfile = "$OUT/key.pem"
connections_max = 100000
EOF
    # No verification: the storm measures the broker, and the generator shares a core with
    # the probe (loopback only).
    STORM_TLS=(--tls-insecure)
fi

BROKER_PID=""
stop_broker() {
    if [[ -n $BROKER_PID ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=""
        # The listener outlives the process for a moment (io_uring closes it in the
        # background): a client connecting then would reach the old broker's backlog.
        for _ in $(seq 50); do
            ss -Hltn "sport = :$PORT" | grep -q . || break
            sleep 0.1
        done
    fi
}
trap stop_broker EXIT

start_broker() {
    taskset -c "$BROKER_CPU" "$BIN/tern" --config "$OUT/tern.toml" 2>>"$OUT/tern.log" &
    BROKER_PID=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "tern did not listen on $PORT" >&2
    return 1
}

probe() { # label
    # Real-time priority (root): the probe's client shares CPU $GEN_CPU with the storm's
    # generator and would otherwise wait behind it, which is not the broker's doing.
    chrt -f 10 taskset -c "$GEN_CPU" "$BIN/tern-loadtest" p2p --port "$PORT" --qos 1 --publishers 1 \
        --subscribers 1 --rate 1000 --duration "$PROBE_SECS" --messages 1000000 --target tern \
        --label "$1" --json "$OUT/$1.json" >"$OUT/$1.log" 2>&1
}

summary() { # label
    python3 - "$OUT/$1.json" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_us"]
print(f"{sys.argv[2]}: delivered {r['received']} lost {r['lost']} p50 {lat['p50']} "
      f"p99 {lat['p99']} p99.9 {lat['p999']} max {lat['max']} us")
EOF
}

if [[ -n ${BASELINE:-} ]]; then
    start_broker
    probe alone
    summary alone | tee -a "$OUT/summary.txt"
    stop_broker
fi

start_broker
probe storm &
PROBE=$!
sleep "$STORM_AT"
taskset -c "$GEN_CPU" "$BIN/tern-loadtest" conn --port "$STORM_PORT" --connections "$CONNS" \
    --conn-rate 0 --hold "$HOLD" --procs 2 --broker-pid "$BROKER_PID" "${STORM_TLS[@]}" \
    --json "$OUT/conn.json" >"$OUT/conn.log" 2>&1 || echo "!!! the storm's generator failed" >&2
wait "$PROBE" || echo "!!! the probe failed" >&2
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$BROKER_PID/status")
METRICS=$(curl -s "127.0.0.1:$ADMIN/metrics" | grep -E '^tern_(accepts_deferred|connections_total|connect_refused)' || true)
{
    summary storm
    grep -E 'connect(ed|s)|conn/s|failed|bytes per' "$OUT/conn.log" | tail -6 || true
    echo "broker peak RSS (VmHWM): $HWM kB"
    echo "$METRICS"
    echo "load: $(cat /proc/loadavg)"
} | tee -a "$OUT/summary.txt"
