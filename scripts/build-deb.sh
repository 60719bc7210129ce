#!/usr/bin/env bash
# Builds the Debian package (target/debian/tern_VERSION_ARCH.deb) with cargo-deb, installing
# cargo-deb first if it is missing, then lists the package's control data and contents.
# The release build (fat LTO) takes minutes: this is not part of scripts/test.sh.
#
#   bash scripts/build-deb.sh                 # build and list
#   bash scripts/build-deb.sh --no-build      # package an existing target/release/tern
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "installing cargo-deb (cargo install cargo-deb --locked)" >&2
    cargo install cargo-deb --locked
fi
if command -v systemd-analyze >/dev/null 2>&1; then
    # Syntax and directive check of the unit; the missing /usr/bin/tern is expected here.
    systemd-analyze verify debian/tern.service 2>&1 | grep -v 'Command /usr/bin/tern is not executable' || true
fi

# --strip: the release profile keeps line tables for profiling; the package ships without them.
deb=$(cargo deb --locked --strip "$@" | tail -n 1)
echo "== $deb"
dpkg-deb --info "$deb"
echo "== contents"
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
echo "== maintainer scripts"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb --control "$deb" "$tmp"
ls -l "$tmp"
# The package must hold what the unit and the docs promise.
for path in ./usr/bin/tern ./etc/tern/tern.toml ./usr/share/doc/tern/OPERATIONS.md; do
    grep -q " $path\$" <<<"$contents" || { echo "missing $path" >&2; exit 1; }
done
grep -Eq ' \./(usr/)?lib/systemd/system/tern\.service$' <<<"$contents" \
    || { echo "missing the systemd unit" >&2; exit 1; }
grep -qx '/etc/tern/tern.toml' "$tmp/conffiles" || { echo "tern.toml is not a conffile" >&2; exit 1; }
echo "ok: $deb"
