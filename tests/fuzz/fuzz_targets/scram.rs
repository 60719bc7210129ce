//! cargo-fuzz target: `tern::fuzzing::scram`, the body that `tests/parsers_props.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::scram(data));
