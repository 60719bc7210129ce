#!/usr/bin/env bash
# Builds the release broker and replays the memory attacks of issue 9 against it on 127.0.0.1,
# printing the broker's RSS growth (and, for `stall`, an honest client's round trips).
#
#   scripts/memory-attacks.sh              the "Done when" check: stalled subscriber, 300 000 x 1 KiB
#   scripts/memory-attacks.sh all          every scenario (stall will-props retain-props
#                                          retain-pin sub-repeat), about 1 min of load
#   scripts/memory-attacks.sh SCENARIO...  the named ones
#
# Extra tern.toml settings: TERN_SET="limits.memory_budget_bytes=67108864 ..." (space separated).
# Each scenario is bounded in count and time (see scripts/memory-attacks.py); the broker is
# started and stopped by the script. Numbers on a shared 2-vCPU machine are noisy: compare
# builds in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin tern
broker="${CARGO_TARGET_DIR:-target}/release/tern"
scenarios=("$@")
if [[ ${#scenarios[@]} -eq 0 ]]; then scenarios=(stall); fi
if [[ ${scenarios[0]} == all ]]; then
  scenarios=(stall will-props retain-props retain-pin sub-repeat)
fi
sets=()
for kv in ${TERN_SET:-}; do sets+=(--set "$kv"); done
for s in "${scenarios[@]}"; do
  echo "== $s"
  timeout 300 python3 scripts/memory-attacks.py --broker "$broker" --scenario "$s" "${sets[@]}"
done
