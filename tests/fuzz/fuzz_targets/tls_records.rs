//! cargo-fuzz target: `tern::fuzzing::tls_records`, the body that `tests/parsers_props.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::tls_records(data));
