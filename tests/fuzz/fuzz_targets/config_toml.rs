//! cargo-fuzz target: `tern::fuzzing::config_text`, the body that `tests/parsers_props.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::config_text(data));
