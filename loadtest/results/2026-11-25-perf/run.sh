#!/usr/bin/env bash
# run.sh BIN_DIR LABEL "loadtest args" [perf]
set -u
BIN=$1; LABEL=$2; ARGS=$3; PERF=${4:-}
PORT=${PORT:-27840}
OUT=/tmp/perfwork/out; mkdir -p $OUT
cat > $OUT/tern.toml <<EOT
[broker]
shards = 1
[[listener]]
bind = "127.0.0.1:$PORT"
connections_max = 100000
[log]
level = "warn"
${EXTRA_CFG:-}
EOT
nice -n ${NICE:-0} taskset -c 0 $BIN/tern --config $OUT/tern.toml 2>>$OUT/tern.log &
BP=$!
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
sleep 0.3
nice -n ${NICE:-0} taskset -c 1 /usr/bin/time -f "gen cpu %U+%S s wall %e s" -o $OUT/$LABEL.time $BIN/tern-loadtest $ARGS --port $PORT --broker-pid $BP --target $LABEL --label $LABEL --json $OUT/$LABEL.json 2>$OUT/$LABEL.log &
LP=$!
if [[ -n $PERF ]]; then
  sleep 2.5
  ${PERFCMD:-perf record -F ${FREQ:-499} --call-graph dwarf,16384 -p $BP -o $OUT/$LABEL.perf.data} -- sleep 4 2>$OUT/$LABEL.perf.log
fi
wait $LP
kill $BP; wait $BP 2>/dev/null
python3 - $OUT/$LABEL.json <<'PY'
import json,sys
d=json.load(open(sys.argv[1]))
b=d.get('broker') or {}
print(f"{d['label']}: out {d['msgs_per_sec_out']:.0f}/s lost {d['lost']} dup {d['duplicates']} p50 {d['latency_us']['p50']:.0f} p99 {d['latency_us']['p99']:.0f} brokerCPU {b.get('cpu_percent')}")
PY
cat $OUT/$LABEL.time
