#!/bin/sh
# "Look it up again" in the shard's non-test code (crates/tern-core/src/shard/*.rs, test modules
# excluded): per method, each lookup of a connection (self.conn/conn_mut, self.conns.get/get_mut)
# after the first, plus each lookup of a session slot (self.slot/slot_mut,
# self.sessions.get/get_mut) after the first; and every `.expect(` outside tests.
# Usage: scripts/count-relookups.sh [repo root] [-v]   (issue 15: the count before/after the
# connection state machine split)
cd "${1:-.}/crates/tern-core/src/shard" || exit 1
for f in *.rs; do
  case $f in tests.rs|sim.rs|size_tests.rs|flow_tests.rs|fuzzing.rs) continue;; esac
  awk -v F="$f" -v V="$2" '
    function flush() { r = (c > 1 ? c - 1 : 0) + (s > 1 ? s - 1 : 0); if (r && V) print "  " F ": " name " +" r; re += r; c = 0; s = 0 }
    /^#\[cfg\(test\)\]/ { if (getline nxt > 0 && nxt ~ /^mod /) exit; }
    /^    (pub(\([a-z]+\))? )?fn / { flush(); name = $0; sub(/^ +/, "", name); sub(/^pub(\([a-z]+\))? /, "", name); sub(/\(.*/, "", name) }
    { line = $0
      while (match(line, /self\.(conn|conn_mut)\(|self\.conns\.get(_mut)?\(/)) { c++; tot++; line = substr(line, RSTART + RLENGTH) }
      line = $0
      while (match(line, /self\.(slot|slot_mut)\(|self\.sessions\.get(_mut)?\(/)) { s++; tot++; line = substr(line, RSTART + RLENGTH) }
      line = $0
      while (match(line, /\.expect\(/)) { ex++; line = substr(line, RSTART + RLENGTH) } }
    END { flush(); printf "%s lookups=%d relookups=%d expects=%d\n", F, tot, re, ex }' "$f"
done | awk '{print} /lookups=/ {split($3,a,"=");split($4,b,"=");r+=a[2];e+=b[2]} END{print "TOTAL relookups=" r " expects=" e}'
