#!/usr/bin/env bash
# Chaos test of persistence (issue 12): kills the broker with SIGKILL at random moments while a
# persistent publisher runs, restarts it on the same data directory and checks what was
# acknowledged. Bounded: N cycles (default 100), each at most a few seconds.
# Usage: scripts/chaos.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-100}"
TERN_CHAOS_CYCLES="$cycles" exec cargo test --release --test persistence chaos_kill_9_cycles \
    -- --ignored --nocapture --test-threads 1
