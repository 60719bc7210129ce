//! cargo-fuzz target: `tern::fuzzing::acl_file`, the body that `tests/parsers_props.rs` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern::fuzzing::acl_file(data));
