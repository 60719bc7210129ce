//! The MQTT wire codec for 3.1, 3.1.1 and 5.0. It does no IO: no sockets, no glommio, no clock.
//!
//! One packet model ([`Packet`]) serves every version; fields that only exist in v5 (properties,
//! reason codes on acknowledgements) are empty or `Success` for v3. Encoding for v3 leaves
//! properties out (a v5 message forwarded to a 3.x subscriber loses them by design) but refuses
//! what the version cannot say or forbids: a reason other than Success on an acknowledgement or
//! DISCONNECT, v5 subscription options, a password without a user name, an empty topic, a
//! failure code in a 3.1 SUBACK, AUTH ([`EncodeError::NotForVersion`]). Decoding is streaming
//! over a [`bytes::BytesMut`]:
//!
//! 1. [`check`] reads the fixed header and answers "need more bytes" (`Ok(None)`), "malformed",
//!    or "packet too large", before any of the body is buffered. The maximum packet size is
//!    enforced here, so a peer can never make the decoder hold more than that.
//! 2. [`decode()`] splits exactly one whole frame off the buffer and parses it. Payloads and binary
//!    fields are slices of the receive buffer (`Bytes`), never copies.
//!
//! Every rule the spec makes on the wire format is checked, and each failure carries the
//! normative statement id and the reason code ([`DecodeError`]).

pub mod error;
pub mod fuzzing;
pub mod primitives;
pub mod properties;
pub mod reason;
pub mod topic;
pub use topic::{TopicFilter, TopicName};

mod decode;
mod encode;
mod header;

use std::num::NonZeroU16;

use bytes::Bytes;

pub use decode::{decode, decode_slice, decode_with, decode_with_hint, DecodeLimits};
pub use encode::{encode, encode_publish, encoded_len, publish_len, PublishView};
pub use error::{DecodeError, EncodeError, ErrorKind};
pub use header::{check, connect_version, FixedHeader, PacketType};
pub use properties::{Properties, Property, PropertyContext, UserPropertyBudget, Variable};
pub use reason::{ReasonCode, ReasonContext};

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            ProtocolVersion::V31 => 3,
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V31 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// True for MQTT 5.0.
    pub const fn is_v5(self) -> bool {
        matches!(self, ProtocolVersion::V5)
    }
}

/// Quality of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for 0, 1 or 2; `None` for 3 and above.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A non-zero packet identifier ([MQTT-2.2.1-3]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The id for `v`, or `None` for 0.
    pub const fn new(v: u16) -> Option<Self> {
        match NonZeroU16::new(v) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The raw value (1..=65535).
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

/// Last Will and Testament carried in CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: TopicName,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will publish.
    pub qos: QoS,
    /// Whether the will is retained.
    pub retain: bool,
    /// Will properties (v5).
    pub properties: Properties,
}

/// CONNECT (§3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// Version named by the protocol name and level.
    pub version: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables it.
    pub keep_alive_secs: u16,
    /// Client identifier; may be empty.
    pub client_id: String,
    /// The will, if the Will Flag is set.
    pub will: Option<Will>,
    /// User name, if the flag is set.
    pub username: Option<String>,
    /// Password, if the flag is set (binary data).
    pub password: Option<Bytes>,
    /// CONNECT properties (v5).
    pub properties: Properties,
}

/// CONNACK (§3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present (not on the wire in 3.1, where it is always false).
    pub session_present: bool,
    /// Connect reason code; for v3 one of the codes [`ReasonCode::to_v3_connack`] maps.
    pub reason: ReasonCode,
    /// CONNACK properties (v5).
    pub properties: Properties,
}

/// PUBLISH (§3.3).
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; None (an empty name on the wire) only in v5 with a Topic Alias property
    /// (§3.3.2.3.4), which the receiver resolves.
    pub topic: Option<TopicName>,
    /// Packet identifier; present exactly when QoS > 0.
    pub packet_id: Option<PacketId>,
    /// PUBLISH properties (v5).
    pub properties: Properties,
    /// Application message, a slice of the receive buffer.
    pub payload: Bytes,
}

impl std::fmt::Debug for Publish {
    // Payloads are application data: log their size, never their content.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publish")
            .field("dup", &self.dup)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("topic", &self.topic)
            .field("packet_id", &self.packet_id)
            .field("properties", &self.properties)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (§3.4-3.7): a packet id, a reason, properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PubResp {
    /// The packet id being acknowledged.
    pub packet_id: PacketId,
    /// Reason code (v5); `Success` for v3.
    pub reason: ReasonCode,
    /// Properties (v5).
    pub properties: Properties,
}

impl PubResp {
    /// A successful acknowledgement without properties.
    pub fn success(packet_id: PacketId) -> Self {
        Self { packet_id, reason: ReasonCode::Success, properties: Properties::new() }
    }
}

/// Retain Handling subscription option (§3.8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// Subscription options (§3.8.3.1). For v3 only `qos` is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling.
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE (§3.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Topic filters and their options, in order; never empty.
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
    /// Properties (v5).
    pub properties: Properties,
}

/// SUBACK (§3.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// One reason per filter, in order. For v3, granted QoS or 0x80 ([`ReasonCode::to_v3_suback`]).
    pub reasons: Vec<ReasonCode>,
    /// Properties (v5).
    pub properties: Properties,
}

/// UNSUBSCRIBE (§3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: PacketId,
    /// Topic filters; never empty.
    pub filters: Vec<TopicFilter>,
    /// Properties (v5).
    pub properties: Properties,
}

/// UNSUBACK (§3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// One reason per filter (v5); empty for v3, whose UNSUBACK has no payload.
    pub reasons: Vec<ReasonCode>,
    /// Properties (v5).
    pub properties: Properties,
}

/// DISCONNECT (§3.14) and AUTH (§3.15): a reason code and properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReasonPacket {
    /// Reason code; `Success` (normal disconnection) for v3.
    pub reason: ReasonCode,
    /// Properties (v5).
    pub properties: Properties,
}

impl ReasonPacket {
    /// A packet with this reason and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self { reason, properties: Properties::new() }
    }
}

/// Every MQTT control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT; boxed because it is the largest and the rarest.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubResp),
    /// PUBREC.
    PubRec(PubResp),
    /// PUBREL.
    PubRel(PubResp),
    /// PUBCOMP.
    PubComp(PubResp),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(ReasonPacket),
    /// AUTH (v5 only).
    Auth(ReasonPacket),
}

impl Packet {
    /// The control packet type.
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}
