#!/usr/bin/env bash
# Runs the cargo-fuzz targets of tests/fuzz one after another, each for a bounded time. Every
# target only calls a body that a property test also runs (so `cargo test` exercises the same
# checks):
#   decode_v3, decode_v5   tern::codec::fuzzing::decode_stream   (tests/codec_props.rs)
#   scram                  tern::fuzzing::scram                  (tests/parsers_props.rs)
#   ws_handshake           tern::fuzzing::ws_handshake
#   ws_frames              tern::fuzzing::ws_frames
#   tls_stream             tern::fuzzing::tls_stream: Tern's own TLS stream on a hostile client's bytes
#   tls_records            tern::fuzzing::tls_records: Tern's TLS record layer after the handshake,
#                          a hostile client holding the client's keys (fixed test secrets)
#   cert_cn                tern::fuzzing::certificate_cn
#   acl_file               tern::fuzzing::acl_file
#   password_file          tern::fuzzing::password_file
#   config_toml            tern::fuzzing::config_text
#   wal                    tern::persist::fuzzing::scan_and_decode (src/persist/tests.rs)
#   shard_core             tern::shard::fuzzing::shard_core: the whole shard core, several
#                          shards, hostile clients (proptest in crates/tern-core/src/shard/fuzzing.rs)
#
# Usage:
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   scripts/fuzz.sh            # 600 s per target
#   scripts/fuzz.sh 10         # smoke run for CI: 10 s per target (13 targets) after one build
#   scripts/fuzz.sh 60 decode_v5
#
# Environment: FUZZ_JOBS (targets run at once, default 1; the machine has 2 shared cores, so at
# most 2).
#
# Environment: FUZZ_RSS_MB (libFuzzer -rss_limit_mb, default 2048), FUZZ_TIMEOUT_SECS (per-input
# timeout, default 10). Corpus and crashes land in tests/fuzz/corpus/<target> and
# tests/fuzz/artifacts/<target> (both gitignored); the libFuzzer log of each run is saved as
# tests/fuzz/artifacts/<target>.log. Exits non-zero if any target found a crash.
#
# Stable Rust: cargo-fuzz's default sanitizer (AddressSanitizer) needs `-Zsanitizer`, which only
# nightly accepts. We run with `--sanitizer none` (`-s none`): the coverage instrumentation
# (`-Cpasses=sancov-module`, `-Cllvm-args=-sanitizer-coverage-*`) uses only stable `-C` flags, so
# this works on the stable toolchain without RUSTC_BOOTSTRAP. Nothing is lost for this crate:
# it is `#![forbid(unsafe_code)]`, so memory errors are not what we hunt; we hunt panics,
# failed assertions (debug assertions and overflow checks are on, see tests/fuzz/Cargo.toml) and
# round-trip mismatches, which libFuzzer catches without a sanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode_v3 decode_v5 scram ws_handshake ws_frames tls_stream tls_records cert_cn acl_file
    password_file config_toml wal shard_core)
fi
jobs="${FUZZ_JOBS:-1}"
rss_mb="${FUZZ_RSS_MB:-2048}"
timeout_secs="${FUZZ_TIMEOUT_SECS:-10}"

fuzz_dir=tests/fuzz
# The fuzz crate is its own workspace with its own target dir, whatever the caller exported.
export CARGO_TARGET_DIR="$PWD/$fuzz_dir/target"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# Seeds for the text and DER targets: one file per valid (or nearly valid) input.
seed_text_corpus() {
  local target="$1" dir="$2" i=0
  local -a seeds=()
  case "$target" in
    scram)
      seeds=('n,,n=user,r=abc' $'n,,n=user,r=abc\0c=biws,r=abcfuzz-server-nonce,p=AAAA'
        '$scram-sha-256$4096$c2FsdA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='
        'r=abcdef,s=c2FsdA==,i=4096')
      ;;
    ws_handshake)
      seeds=($'GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n')
      ;;
    ws_frames)
      # chunk byte, then: masked binary "abc", ping "hi", close 1000.
      seeds=($'\x03\x82\x83\x01\x02\x03\x04\x60\x60\x60\x89\x82\x01\x02\x03\x04\x69\x6b\x88\x82\x01\x02\x03\x04\x02\xea')
      ;;
    cert_cn)
      if command -v openssl >/dev/null; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
          -subj "/O=Org/CN=device-1/C=NZ" -days 1 -outform DER -out "$dir/seed-cert.der" \
          2>/dev/null || true
      fi
      ;;
    acl_file)
      seeds=($'topic read public/#\nuser alice\ntopic readwrite home/alice/#\ntopic deny home/alice/secret/#\npattern write devices/%c/#\n')
      ;;
    password_file)
      seeds=($(grep -hv '^#' tests/fixtures/auth/mosquitto.passwd tests/fixtures/auth/argon2id.passwd))
      ;;
    config_toml)
      seeds=($'[broker]\nshards = 2\n[[listener]]\nbind = "127.0.0.1:1883"\ntransport = "tcp"\n[[listener]]\nbind = "127.0.0.1:8080"\ntransport = "ws"\n[limits]\npacket_size_bytes_max = 65536\n[runtime]\nring_depth = 256\n')
      ;;
  esac
  for seed in "${seeds[@]}"; do
    printf '%s' "$seed" >"$dir/seed-$i"
    i=$((i + 1))
  done
}

# Writes a few valid encodings as seeds when the corpus is empty. Each seed starts with the
# chunk-size byte the targets read first (0x00 = 1-byte chunks, 0xff = 256-byte chunks).
seed_corpus() {
  local target="$1" dir="$fuzz_dir/corpus/$1"
  mkdir -p "$dir"
  if [ -n "$(ls -A "$dir")" ]; then
    return
  fi
  local -a seeds
  case "$target" in
    decode_v3 | decode_v5) ;;
    # libFuzzer starts from nothing (shard_core: any bytes are ops; tls_stream: an odd first
    # byte puts a real ClientHello before the rest).
    wal | shard_core | tls_stream | tls_records) return ;;
    *)
      seed_text_corpus "$target" "$dir"
      return
      ;;
  esac
  if [ "$target" = decode_v3 ]; then
    seeds=(
      # 3.1.1 CONNECT, client id "c", keep alive 60
      '10 0f 00 04 4d 51 54 54 04 02 00 3c 00 01 63'
      # 3.1 CONNECT (MQIsdp, level 3)
      '10 11 00 06 4d 51 49 73 64 70 03 02 00 3c 00 01 63'
      # 3.1.1 CONNECT with will (QoS 1, retain), user name and password
      '10 1a 00 04 4d 51 54 54 04 ee 00 3c 00 01 63 00 01 77 00 02 68 69 00 01 75 00 01 70'
      # CONNACK session present, PUBLISH QoS 1 "a/b" "hi", PUBACK
      '20 02 01 00 32 09 00 03 61 2f 62 00 01 68 69 40 02 00 01'
      # SUBSCRIBE "a/#" QoS 1, SUBACK, UNSUBSCRIBE "a/+", UNSUBACK
      '82 08 00 01 00 03 61 2f 23 01 90 03 00 01 01 a2 07 00 02 00 03 61 2f 2b b0 02 00 02'
      # PUBREC, PUBREL, PUBCOMP, PINGREQ, PINGRESP, DISCONNECT
      '50 02 00 03 62 02 00 03 70 02 00 03 c0 00 d0 00 e0 00'
    )
  else
    seeds=(
      # CONNECT v5, Session Expiry Interval 60, client id "c"
      '10 13 00 04 4d 51 54 54 05 02 00 3c 05 11 00 00 00 3c 00 01 63'
      # CONNACK with Receive Maximum 10
      '20 06 00 00 03 21 00 0a'
      # PUBLISH QoS 1 "a/b": Payload Format 1, Topic Alias 1, Subscription Identifier 5; "hi"
      '32 11 00 03 61 2f 62 00 01 07 01 01 23 00 01 0b 05 68 69'
      # PUBLISH QoS 0 with an empty topic and Topic Alias 1
      '30 07 00 00 03 23 00 01 78'
      # SUBSCRIBE "a/#" with Subscription Identifier 1 and every option bit; SUBACK
      '82 0b 00 01 02 0b 01 00 03 61 2f 23 1d 90 05 00 01 00 01 02'
      # PUBACK 0x10 with Reason String "ok"; compact PUBREC; UNSUBACK; DISCONNECT 0x04
      '40 09 00 01 10 05 1f 00 02 6f 6b 50 02 00 01 b0 04 00 01 00 00 e0 02 04 00'
      # AUTH Continue Authentication, Authentication Method "ab"; PINGREQ; DISCONNECT
      'f0 07 18 05 15 00 02 61 62 c0 00 e0 00'
    )
  fi
  local i=0 chunk hex
  for hex in "${seeds[@]}"; do
    for chunk in 00 ff; do
      # printf turns "\xNN" escapes into bytes.
      printf "$(echo "$chunk $hex" | sed -E 's/([0-9a-f]{2}) ?/\\x\1/g')" >"$dir/seed-$i-$chunk"
    done
    i=$((i + 1))
  done
}

run_target() {
  local target="$1"
  echo "fuzz.sh: running $target for ${secs}s" >&2
  cargo fuzz run --fuzz-dir "$fuzz_dir" --sanitizer none --debug-assertions "$target" \
    -- -max_total_time="$secs" -rss_limit_mb="$rss_mb" -timeout="$timeout_secs" \
    -print_final_stats=1 >"$fuzz_dir/artifacts/$target.log" 2>&1
}

for target in "${targets[@]}"; do
  seed_corpus "$target"
  mkdir -p "$fuzz_dir/artifacts/$target"
done
# Build every target once first, so the time limit is spent fuzzing rather than compiling.
cargo fuzz build --fuzz-dir "$fuzz_dir" --sanitizer none --debug-assertions

failed=()
status_dir=$(mktemp -d)
trap 'rm -rf "$status_dir"' EXIT
running=0
for target in "${targets[@]}"; do
  (run_target "$target" || touch "$status_dir/$target") &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
for target in "${targets[@]}"; do
  log="$fuzz_dir/artifacts/$target.log"
  # libFuzzer's final stats: executions and their rate.
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  echo "fuzz.sh: $target: ${execs:-?} executions in ${secs}s (log: $log)" >&2
  if [ -e "$status_dir/$target" ]; then
    failed+=("$target")
    tail -n 30 "$log" >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]} (see tests/fuzz/artifacts/)" >&2
  exit 1
fi
