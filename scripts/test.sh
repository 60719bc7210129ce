#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds, and runs every test.
# This is the README's test command and what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the build needs from Debian (glommio's build script wants git and a C compiler).
need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v cc >/dev/null || need_apt+=(gcc)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# Transport tests: openssl s_client (tests/tls.rs); headless Chromium with mqtt.js from npm
# (tests/browser.rs, which fails, never skips, without them).
command -v openssl >/dev/null || need_apt+=(openssl)
# A real Mosquitto as the remote end of the bridge tests (tests/bridge_mosquitto.rs).
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || need_apt+=(mosquitto)
command -v npm >/dev/null || need_apt+=(nodejs npm)
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# Python clients used as independent peers in end-to-end tests.
if ! python3 -c 'import paho.mqtt' 2>/dev/null; then
  python3 -m pip install -q 'paho-mqtt>=2,<3' || echo "warning: paho-mqtt could not be installed" >&2
fi

# mqtt.js for the browser test, into tests/browser/node_modules (git-ignored).
if [ ! -f tests/browser/node_modules/mqtt/dist/mqtt.min.js ]; then
  (cd tests/browser && npm install --no-audit --no-fund --loglevel=error)
fi

cargo test --workspace --all-targets --locked
# The tests that need what was installed above (Chromium, mqtt.js, Python paho-mqtt) are
# #[ignore]d so that `cargo test` alone downloads nothing; run them here.
cargo test --locked --test browser --test interop_paho -- --ignored
cargo test --workspace --doc --locked
