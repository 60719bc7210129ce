//! Arbitrary bytes as a write-ahead log segment body (what recovery reads after a crash or a
//! damaged disk); the checks are `tern::persist::fuzzing::scan_and_decode`'s.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tern::persist::fuzzing::scan_and_decode(data);
});
