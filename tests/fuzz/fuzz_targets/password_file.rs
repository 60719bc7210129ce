//! cargo-fuzz target: `tern::fuzzing::password_file`, the body that `tests/parsers_props.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::password_file(data));
