#!/usr/bin/env bash
# sched.sh BIN LABEL ARGS: run time vs runnable-wait time of broker and generator threads
BIN=$1; LABEL=$2; ARGS=$3; PORT=27842; OUT=/tmp/perfwork/out
cat > $OUT/tern-s.toml <<EOT
[broker]
shards = 1
[[listener]]
bind = "127.0.0.1:$PORT"
connections_max = 100000
[log]
level = "warn"
${EXTRA_CFG:-}
EOT
nice -n ${NICE:-0} taskset -c 0 $BIN/tern --config $OUT/tern-s.toml 2>>$OUT/tern.log &
BP=$!
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
nice -n ${NICE:-0} taskset -c 1 $BIN/tern-loadtest $ARGS --port $PORT --target $LABEL --label $LABEL --json $OUT/$LABEL.json 2>$OUT/$LABEL.log &
LP=$!
sleep 2
snap() { for p in $BP $LP; do for t in /proc/$p/task/*; do echo "$p/$(basename $t)/$(cat $t/comm) $(cat $t/schedstat)"; done; done; }
snap > $OUT/s1; sleep 3; snap > $OUT/s2
wait $LP; kill $BP; wait $BP 2>/dev/null
join -j1 <(sort $OUT/s1) <(sort $OUT/s2) | awk '{printf "%-28s run %6.0f ms  runnable-wait %6.0f ms  switches %d\n", $1, ($5-$2)/1e6, ($6-$3)/1e6, $7-$4}'
python3 -c "
import json
d=json.load(open('$OUT/$LABEL.json'));print('$LABEL', round(d['msgs_per_sec_out']), 'lost', d['lost'], 'p50', d['latency_us']['p50'], 'p99', d['latency_us']['p99'])"
