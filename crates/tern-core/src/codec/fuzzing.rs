//! Bodies shared by the property tests (`tests/codec_props.rs`) and the cargo-fuzz targets
//! (`tests/fuzz/`), so both exercise exactly the same checks.
#![doc(hidden)]

use bytes::BytesMut;

use super::{decode, encode, ProtocolVersion};

/// Largest packet the fuzz bodies accept; also bounds what the decoder may buffer.
pub const FUZZ_MAX_PACKET: usize = 1 << 16;

/// Feeds `data` to the streaming decoder as a connection of `version` would receive it, in
/// chunks of `chunk` bytes. Checks the decoder's contract on arbitrary input:
/// - it never panics;
/// - `Ok(None)` leaves the buffer untouched; `Ok(Some)` consumes exactly one packet;
/// - a decoded packet re-encodes, and the re-encoding decodes to the same packet.
///
/// Returns the number of packets decoded.
pub fn decode_stream(data: &[u8], version: ProtocolVersion, chunk: usize) -> usize {
    let chunk = chunk.max(1);
    let mut buf = BytesMut::new();
    let mut decoded = 0;
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match decode(&mut buf, version, FUZZ_MAX_PACKET) {
                Ok(None) => {
                    assert_eq!(buf.len(), before, "Ok(None) must not consume input");
                    break;
                }
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a decoded packet consumes input");
                    decoded += 1;
                    check_round_trip(&packet, version);
                }
                Err(_) => return decoded,
            }
        }
    }
    decoded
}

/// Asserts `decode(encode(packet)) == packet` for `version`.
pub fn check_round_trip(packet: &super::Packet, version: ProtocolVersion) {
    let mut out = BytesMut::new();
    let n = encode(packet, version, &mut out).expect("a decoded packet is encodable");
    assert_eq!(n, out.len());
    let again = decode(&mut out, version, usize::MAX)
        .expect("re-encoded packet decodes")
        .expect("re-encoded packet is complete");
    assert_eq!(&again, packet, "round trip changed the packet");
    assert!(out.is_empty(), "decode consumed the whole encoding");
}
