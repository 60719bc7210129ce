#!/usr/bin/env bash
# Refreshes loadtest/baseline.json on purpose: runs the perf-smoke scenario set against a fresh
# release build and writes the results as the new baseline. Do this on a quiet machine
# (check /proc/loadavg), after a deliberate performance change, and commit the file with a
# note of the machine and load.
set -euo pipefail
exec "$(dirname "$0")/perf-smoke.sh" --write-baseline
