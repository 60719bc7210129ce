//! cargo-fuzz target: `tern::shard::fuzzing::shard_core`, the stateful body (several shards in
//! one thread, hostile clients, arbitrary splits, mesh order and clock) that the property test
//! `shard::fuzzing::tests` also runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tern::shard::fuzzing::shard_core(data, std::time::Instant::now())
});
