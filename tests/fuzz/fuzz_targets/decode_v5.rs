//! Arbitrary bytes into the MQTT 5.0 stream decoder. The first byte picks the chunk size the bytes
//! arrive in; the checks are `tern::codec::fuzzing::decode_stream`'s.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::codec::fuzzing::decode_stream;
use tern::codec::ProtocolVersion;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    decode_stream(rest, ProtocolVersion::V5, usize::from(first) + 1);
});
