//! Arbitrary bytes into the MQTT 3.1 and 3.1.1 stream decoder. The first byte picks the chunk
//! size the bytes arrive in; the checks are `tern::codec::fuzzing::decode_stream`'s.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::codec::fuzzing::decode_stream;
use tern::codec::ProtocolVersion;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) + 1;
    decode_stream(rest, ProtocolVersion::V31, chunk);
    decode_stream(rest, ProtocolVersion::V311, chunk);
});
