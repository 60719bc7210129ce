//! The fixed header (§2.1): packet type, flags and remaining length, checked before the body is
//! buffered.

use super::error::{DecodeError, ErrorKind};
use super::primitives::{decode_varint, varint_len};
use super::ProtocolVersion;

/// MQTT control packet types (§2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type for the high nibble of the first byte; `None` for 0 (reserved).
    pub const fn from_nibble(n: u8) -> Option<Self> {
        use PacketType::*;
        Some(match n {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The fixed flags this type must carry; `None` for PUBLISH, whose flags carry data.
    pub const fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// A parsed fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHeader {
    /// Control packet type.
    pub packet_type: PacketType,
    /// Low nibble of the first byte.
    pub flags: u8,
    /// Bytes after the fixed header.
    pub remaining_len: usize,
    /// Bytes of the fixed header itself (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// Bytes of the whole packet.
    pub const fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads the fixed header at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole fixed header. The size check happens
/// here, as soon as the remaining length is known: a packet larger than `max_packet_size` (whole
/// packet, as MQTT 5 §3.1.2.11.4 counts it) is refused before its body is read. `version` only
/// selects which spec id an error cites; `None` before CONNECT.
pub fn check(
    buf: &[u8],
    max_packet_size: usize,
    version: Option<ProtocolVersion>,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let v5 = version.is_none_or(ProtocolVersion::is_v5);
    let nibble = first >> 4;
    let flags = first & 0x0F;
    let packet_type = PacketType::from_nibble(nibble)
        .ok_or_else(|| DecodeError::new(ErrorKind::ReservedPacketType(nibble), "§2.1.2"))?;
    if let Some(required) = packet_type.required_flags() {
        // MQTT 3.1 marks these bits "not used" and sets DUP when it re-sends a PUBREL, SUBSCRIBE
        // or UNSUBSCRIBE; only 3.1.1 and 5.0 reserve them with a value that must match.
        if flags != required && version != Some(ProtocolVersion::V31) {
            let spec = if v5 { "MQTT-2.1.3-1" } else { "MQTT-2.2.2-2" };
            return Err(DecodeError::new(
                ErrorKind::InvalidHeaderFlags { packet_type: nibble, flags },
                spec,
            ));
        }
    }
    let Some((remaining_len, used)) = decode_varint(&buf[1..])? else {
        return Ok(None);
    };
    debug_assert_eq!(used, varint_len(remaining_len));
    let header = FixedHeader { packet_type, flags, remaining_len, header_len: 1 + used };
    if header.packet_len() > max_packet_size {
        return Err(DecodeError::new(
            ErrorKind::PacketTooLarge { size: header.packet_len(), max: max_packet_size },
            if v5 { "MQTT-3.2.2-15" } else { "§2.2.3" },
        ));
    }
    Ok(Some(header))
}

/// The protocol version named by a CONNECT at the start of `buf` (its protocol name and level,
/// right after the fixed header), without decoding the rest. `None` when `buf` does not start
/// with a CONNECT or does not hold those bytes yet. For choosing how to refuse a CONNECT that
/// cannot be decoded (too large, too many user properties): a v5 client is told why in CONNACK.
pub fn connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    if buf.first()? >> 4 != PacketType::Connect as u8 {
        return None;
    }
    let (_, used) = decode_varint(buf.get(1..)?).ok()??;
    match buf.get(1 + used..)? {
        [0, 4, b'M', b'Q', b'T', b'T', 5, ..] => Some(ProtocolVersion::V5),
        [0, 4, b'M', b'Q', b'T', b'T', 4, ..] => Some(ProtocolVersion::V311),
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, ..] => Some(ProtocolVersion::V31),
        _ => None,
    }
}
