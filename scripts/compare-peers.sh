#!/usr/bin/env bash
# Runs the same scenario set against Tern, Mosquitto, rumqttd and the harness's raw relay
# (the loopback ceiling), one broker at a time, and prints a Markdown table with Tern/peer ratios.
# Every delivered rate is printed with its loss beside it; a rate ratio is given only when Tern
# lost nothing ("lossy" otherwise): a rate with loss is not a throughput and never a win.
#
#   scripts/compare-peers.sh [OUTDIR]
#
# Each broker is restarted for every scenario (fresh memory, no leftover sessions), pinned to
# CPU $BROKER_CPU (default 0); the generator is pinned to CPU $GEN_CPU (default 1). Everything
# listens on 127.0.0.1 only. Output: OUTDIR/<broker>/<scenario>.json|.svg, OUTDIR/<scenario>.svg
# (all brokers on one plot), OUTDIR/table.md.
#
# Environment:
#   PEERS="tern rumqttd mosquitto relay"   which brokers to run
#   ONLY="p2p-q1 fanout-q0"                run only these scenario labels
#   DURATION=10                            seconds of publishing per scenario
#   CONNS=5000                             connections of the conn-* row
#   CARGO_TARGET_DIR                       where the release build goes (default: target)
#   RUMQTTD_ROOT=/opt/rumqttd                where rumqttd is (or gets) installed
#   TERN_BIN_DIR=DIR                       use DIR/tern and DIR/tern-loadtest, build nothing
#   TERN_EXTRA_CONFIG='[runtime]...'       TOML appended to Tern's configuration (A/B runs)
# Installs mosquitto (apt) and rumqttd 0.20.0 (cargo install, minutes) when missing;
# with CI set it installs nothing and leaves rumqttd out.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-target/compare-peers/$(date -u +%Y%m%dT%H%M%SZ)}
PEERS=${PEERS:-"tern rumqttd mosquitto relay"}
DURATION=${DURATION:-10}
CONNS=${CONNS:-5000}
BROKER_CPU=${BROKER_CPU:-0}
GEN_CPU=${GEN_CPU:-1}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$CARGO_TARGET_DIR/release
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- Installs -------------------------------------------------------------------------------
if [[ " $PEERS " == *" mosquitto "* ]] && ! command -v mosquitto >/dev/null; then
    echo "installing mosquitto (Debian package)" >&2
    apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
# rumqttd goes to its own root (not ~/.cargo/bin): RUMQTTD_ROOT=/opt/rumqttd by default.
RUMQTTD_ROOT=${RUMQTTD_ROOT:-/opt/rumqttd}
export PATH="$RUMQTTD_ROOT/bin:$HOME/.cargo/bin:$PATH"
if [[ " $PEERS " == *" rumqttd "* ]] && ! command -v rumqttd >/dev/null; then
    if [[ -n ${CI:-} ]]; then
        # CI compares against the raw relay only (scripts/perf-smoke.sh); peers are a manual run.
        echo "rumqttd missing and CI is set: not installing it; run without it" >&2
        PEERS=${PEERS//rumqttd/}
    else
        echo "installing rumqttd 0.20.0 into $RUMQTTD_ROOT (cargo install, minutes here)" >&2
        # The pinned version. Not --locked: its locked metrics 0.22.1 no longer borrow-checks on
        # rustc 1.95 (E0521), so its dependencies resolve to their newest compatible releases.
        cargo install rumqttd --version 0.20.0 --root "$RUMQTTD_ROOT"
    fi
fi
if [[ -n ${TERN_BIN_DIR:-} ]]; then
    # A/B runs: prebuilt `tern` and `tern-loadtest` (copied aside), so that editing or building
    # the tree meanwhile changes nothing under test.
    BIN=$TERN_BIN_DIR
else
    echo "building tern and tern-loadtest (release)" >&2
    cargo build --release -q -p tern -p tern-loadtest
fi

# --- Brokers --------------------------------------------------------------------------------
PORT_TERN=27830 PORT_MOSQ=27831 PORT_RUMQ4=27832 PORT_RUMQ5=27833 PORT_RELAY=27834
BROKER_PID=""

cat >"$OUT/tern.toml" <<EOF
[broker]
shards = 1
[[listener]]
bind = "127.0.0.1:$PORT_TERN"
connections_max = 100000
[log]
level = "warn"
${TERN_EXTRA_CONFIG:-}
EOF

cat >"$OUT/mosquitto.conf" <<EOF
listener $PORT_MOSQ 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
EOF

# rumqttd: one plain TCP listener per protocol version (it serves 3.1.1 and 5 on separate
# listeners), nothing else (no console, no prometheus, no websocket). Limits are its defaults but
# for max_connections (the conn-* row) and max_payload_size.
cat >"$OUT/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 100010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT_RUMQ4"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "127.0.0.1:$PORT_RUMQ5"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
EOF

port_of() { # broker mqtt-version
    case $1 in
    tern) echo $PORT_TERN ;;
    mosquitto) echo $PORT_MOSQ ;;
    rumqttd) if [[ $2 == 5 ]]; then echo $PORT_RUMQ5; else echo $PORT_RUMQ4; fi ;;
    relay) echo $PORT_RELAY ;;
    esac
}

wait_port() { # port: up to 10 s
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

port_free() { # port: refuse to start when something already listens there. Tern binds with
    # SO_REUSEPORT, so a second listener on the same port would silently get half the clients.
    if ss -Hltn "sport = :$1" | grep -q .; then
        echo "127.0.0.1:$1 is already in use: stop that process first" >&2
        return 1
    fi
}

start_broker() { # name
    port_free "$(port_of "$1" 4)"
    if [[ $1 == rumqttd ]]; then port_free $PORT_RUMQ5; fi
    case $1 in
    tern) taskset -c "$BROKER_CPU" "$BIN/tern" --config "$OUT/tern.toml" 2>>"$OUT/tern.log" &
        BROKER_PID=$! ;;
    mosquitto) taskset -c "$BROKER_CPU" mosquitto -c "$OUT/mosquitto.conf" 2>>"$OUT/mosquitto.log" &
        BROKER_PID=$! ;;
    rumqttd) taskset -c "$BROKER_CPU" rumqttd -c "$OUT/rumqttd.toml" -q >>"$OUT/rumqttd.log" 2>&1 &
        BROKER_PID=$! ;;
    relay) taskset -c "$BROKER_CPU" "$BIN/tern-loadtest" relay --listen "127.0.0.1:$PORT_RELAY" \
        --max-secs 900 2>>"$OUT/relay.log" &
        BROKER_PID=$! ;;
    esac
    wait_port "$(port_of "$1" 4)"
    if [[ $1 == rumqttd ]]; then wait_port $PORT_RUMQ5; fi
    sleep 0.5 # let it settle before the RSS baseline is read
}

stop_broker() {
    if [[ -n $BROKER_PID ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=""
    fi
}
trap stop_broker EXIT

# --- Scenarios ------------------------------------------------------------------------------
# label|arguments. 64-byte payloads; as fast as possible unless --rate is given. Every run is
# bounded by --duration and --messages.
D="--duration $DURATION --messages 20000000"
SCENARIOS=(
    "fanout-q0|fanout --qos 0 --publishers 1 --subscribers 8 $D"
    "fanin-q0|fanin --qos 0 --publishers 8 --subscribers 1 $D"
    "fanout-q1|fanout --qos 1 --publishers 1 --subscribers 8 $D"
    "fanin-q1|fanin --qos 1 --publishers 8 --subscribers 1 $D"
    "p2p-q1|p2p --qos 1 --publishers 8 --subscribers 8 $D"
    "p2p-q1-5k|p2p --qos 1 --publishers 8 --subscribers 8 --rate 5000 $D"
    "probe-flood|p2p --qos 1 --publishers 1 --subscribers 1 --rate 1000 $D"
    "p2p-q2|p2p --qos 2 --publishers 8 --subscribers 8 $D"
    "p2p-q0-1k|p2p --qos 0 --publishers 8 --subscribers 8 --payload 1024 $D"
    "sharedsub-q1|sharedsub --qos 1 --publishers 8 --subscribers 4 $D"
    "fanout-q1-v5|fanout --qos 1 --mqtt 5 --publishers 1 --subscribers 8 $D"
    "p2p-q1-persist|p2p --qos 1 --clean 0 --publishers 8 --subscribers 8 $D"
    "retained-10k|retained --qos 1 --retained 10000 --subscribers 4 --duration 30"
    "conn-$CONNS|conn --connections $CONNS --hold 6 --connect-timeout 60"
)

echo "load before the run: $(cat /proc/loadavg)" | tee "$OUT/loadavg.txt" >&2
for entry in "${SCENARIOS[@]}"; do
    label=${entry%%|*}
    args=${entry#*|}
    if [[ -n ${ONLY:-} && " $ONLY " != *" $label "* ]]; then continue; fi
    mqtt=4
    if [[ $args == *"--mqtt 5"* ]]; then mqtt=5; fi
    for b in $PEERS; do
        # The relay stores nothing: it has no retained messages to deliver.
        if [[ $b == relay && $label == retained* ]]; then continue; fi
        mkdir -p "$OUT/$b"
        start_broker "$b"
        echo "=== $label against $b (pid $BROKER_PID) ===" >&2
        flood_pid=""
        if [[ $label == probe-flood ]]; then
            # The probe pair shares the broker with a 200 000 msg/s fan-in QoS 0 flood from a
            # second generator (its own topics), started first and outlasting the probe.
            # shellcheck disable=SC2086
            taskset -c "$GEN_CPU" "$BIN/tern-loadtest" fanin --qos 0 --publishers 8 \
                --subscribers 1 --rate 200000 --duration $((DURATION + 3)) --messages 20000000 \
                --port "$(port_of "$b" 4)" --target "$b" --label flood \
                --json "$OUT/$b/flood.json" 2>"$OUT/$b/flood.log" &
            flood_pid=$!
            sleep 1.5
        fi
        # shellcheck disable=SC2086
        taskset -c "$GEN_CPU" "$BIN/tern-loadtest" $args --port "$(port_of "$b" $mqtt)" \
            --broker-pid "$BROKER_PID" --target "$b" --label "$label" \
            --json "$OUT/$b/$label.json" --svg "$OUT/$b/$label.svg" --hdr "$OUT/$b/$label.hdr" \
            || echo "!!! $label against $b failed" >&2
        if [[ -n $flood_pid ]]; then
            wait "$flood_pid" || echo "!!! flood beside $label against $b failed" >&2
        fi
        stop_broker
    done
    # One plot per scenario with every broker on it.
    files=()
    for b in $PEERS; do [[ -f $OUT/$b/$label.json ]] && files+=("$OUT/$b/$label.json"); done
    if [[ ${#files[@]} -gt 0 && $label != conn* ]]; then
        "$BIN/tern-loadtest" plot --out "$OUT/$label.svg" --title "$label latency" "${files[@]}"
    fi
done
echo "load after the run: $(cat /proc/loadavg)" | tee -a "$OUT/loadavg.txt" >&2

{
    echo "Tern $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo '+dirty'), $(date -u +%F), $(nproc) CPUs, broker on CPU $BROKER_CPU, generator on CPU $GEN_CPU"
    echo "$(cat "$OUT/loadavg.txt" | tr '\n' ';')"
    echo
    # Rows in the order of SCENARIOS, whatever subset of brokers each has.
    rows=()
    for entry in "${SCENARIOS[@]}"; do
        for f in "$OUT"/*/"${entry%%|*}.json"; do [[ -f $f ]] && rows+=("$f"); done
    done
    "$BIN/tern-loadtest" table --primary tern "${rows[@]}"
} | tee "$OUT/table.md"
echo "results in $OUT" >&2
