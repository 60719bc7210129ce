//! Decode and encode errors. Every decode error names the normative statement of the specification
//! it enforces (`[MQTT-x.y.z-n]`, or the section `§x.y.z` where the spec has no numbered statement)
//! and maps to the reason code a broker answers with: a v5 DISCONNECT (or CONNACK) reason code, or,
//! for v3 clients, simply closing the network connection.

use std::fmt;

use super::reason::ReasonCode;

/// What went wrong while decoding. The variant decides the reason code; the spec id lives in
/// [`DecodeError`] because it differs between MQTT 3.1.1 and 5.0 for the same rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The packet (fixed header included) is larger than the configured maximum packet size.
    PacketTooLarge {
        /// Size of the whole packet as announced by the fixed header.
        size: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A variable byte integer longer than 4 bytes, or not in its shortest form.
    MalformedVarInt,
    /// Packet type 0, or 15 (AUTH) on an MQTT 3.x connection.
    ReservedPacketType(u8),
    /// The reserved flag bits of the fixed header are not the value the spec lists.
    InvalidHeaderFlags {
        /// Control packet type (1..=15).
        packet_type: u8,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// A QoS field holds 3.
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH.
    DupOnQoS0,
    /// A packet identifier of 0.
    ZeroPacketId,
    /// A UTF-8 string that is not well-formed UTF-8 (surrogates included).
    InvalidUtf8,
    /// A UTF-8 string containing U+0000.
    NullCharacter,
    /// The content ended before a field was complete: the remaining length is too short.
    UnexpectedEnd,
    /// Bytes are left over after the last field: the remaining length is too long.
    TrailingBytes,
    /// CONNECT protocol name is neither `MQTT` nor `MQIsdp`, or does not match the level.
    InvalidProtocolName,
    /// CONNECT protocol level this broker does not speak.
    UnsupportedProtocolLevel(u8),
    /// CONNECT reserved flag bit 0 is set.
    ConnectReservedFlag,
    /// Will QoS or Will Retain set while the Will Flag is 0.
    WillFlagsWithoutWill,
    /// Password flag set without the user name flag (MQTT 3.x only).
    PasswordWithoutUsername,
    /// A topic name containing `+` or `#`.
    WildcardInTopicName,
    /// A zero-length topic name or topic filter where one is required.
    EmptyTopic,
    /// `#` not last or not alone in its level.
    InvalidMultiLevelWildcard,
    /// `+` not alone in its level.
    InvalidSingleLevelWildcard,
    /// A SUBSCRIBE or UNSUBSCRIBE with no topic filter.
    NoTopicFilters,
    /// Reserved bits of the subscription options byte are set.
    SubscriptionOptionsReserved,
    /// Retain Handling 3.
    InvalidRetainHandling,
    /// Maximum QoS 3 in v5 subscription options: a Protocol Error there (§3.8.3.1), where QoS 3
    /// in a PUBLISH or a will is a Malformed Packet.
    InvalidMaximumQoS,
    /// No Local set on a shared subscription.
    NoLocalOnSharedSubscription,
    /// A `$share/` filter without a valid share name or filter.
    InvalidSharedSubscription,
    /// A reason code that the spec does not allow in this packet.
    InvalidReasonCode {
        /// Control packet type.
        packet_type: u8,
        /// The offending byte.
        code: u8,
    },
    /// A property identifier the spec does not define.
    UnknownProperty(u32),
    /// A property that the spec does not allow in this packet.
    PropertyNotAllowed {
        /// Property identifier.
        id: u8,
    },
    /// A property that may appear once appears twice.
    DuplicateProperty {
        /// Property identifier.
        id: u8,
    },
    /// A property value outside its allowed range (e.g. Receive Maximum 0).
    InvalidPropertyValue {
        /// Property identifier.
        id: u8,
    },
    /// A v5 PUBLISH with a zero-length topic and no Topic Alias.
    EmptyTopicWithoutAlias,
    /// CONNACK acknowledge flags with reserved bits set.
    ConnAckReservedFlags,
    /// A SUBACK (any version) or v5 UNSUBACK without a single reason code, where there is one
    /// per topic filter of the request and a request has at least one.
    NoReasonCodes {
        /// Control packet type (9 or 11).
        packet_type: u8,
    },
    /// More User Properties in one packet than the server accepts, or more bytes of them
    /// ([`crate::codec::DecodeLimits`]). Not a malformed packet: a server limit on how much a
    /// packet may carry, so it maps to Packet Too Large (0x95), like the size limit.
    UserPropertiesExceeded,
}

impl ErrorKind {
    /// The v5 reason code a server sends (in DISCONNECT, or CONNACK before the session exists).
    pub const fn reason_code(&self) -> ReasonCode {
        match self {
            ErrorKind::PacketTooLarge { .. } | ErrorKind::UserPropertiesExceeded => {
                ReasonCode::PacketTooLarge
            }
            // [MQTT-3.3.2-8]: Topic Alias 0 is "Topic Alias invalid".
            ErrorKind::InvalidPropertyValue { id: 0x23 } => ReasonCode::TopicAliasInvalid,
            ErrorKind::UnsupportedProtocolLevel(_) | ErrorKind::InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            ErrorKind::DuplicateProperty { .. }
            | ErrorKind::InvalidPropertyValue { .. }
            | ErrorKind::EmptyTopicWithoutAlias
            | ErrorKind::InvalidRetainHandling
            | ErrorKind::InvalidMaximumQoS
            | ErrorKind::NoTopicFilters
            | ErrorKind::NoLocalOnSharedSubscription
            | ErrorKind::ReservedPacketType(_) => ReasonCode::ProtocolError,
            ErrorKind::InvalidSharedSubscription
            | ErrorKind::InvalidMultiLevelWildcard
            | ErrorKind::InvalidSingleLevelWildcard => ReasonCode::TopicFilterInvalid,
            ErrorKind::WildcardInTopicName => ReasonCode::TopicNameInvalid,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum packet size {max}")
            }
            ErrorKind::MalformedVarInt => {
                f.write_str("variable byte integer longer than 4 bytes or not minimal")
            }
            ErrorKind::ReservedPacketType(t) => write!(f, "reserved control packet type {t}"),
            ErrorKind::InvalidHeaderFlags { packet_type, flags } => {
                write!(f, "invalid fixed header flags {flags:#06b} for packet type {packet_type}")
            }
            ErrorKind::InvalidQoS => f.write_str("QoS 3 is not a valid QoS"),
            ErrorKind::DupOnQoS0 => f.write_str("DUP flag set on a QoS 0 PUBLISH"),
            ErrorKind::ZeroPacketId => f.write_str("packet identifier 0"),
            ErrorKind::InvalidUtf8 => f.write_str("string is not well-formed UTF-8"),
            ErrorKind::NullCharacter => f.write_str("string contains U+0000"),
            ErrorKind::UnexpectedEnd => f.write_str("packet ends inside a field"),
            ErrorKind::TrailingBytes => f.write_str("bytes left over after the last field"),
            ErrorKind::InvalidProtocolName => f.write_str("invalid protocol name"),
            ErrorKind::UnsupportedProtocolLevel(l) => write!(f, "unsupported protocol level {l}"),
            ErrorKind::ConnectReservedFlag => f.write_str("CONNECT reserved flag is set"),
            ErrorKind::WillFlagsWithoutWill => {
                f.write_str("Will QoS or Will Retain set while the Will Flag is 0")
            }
            ErrorKind::PasswordWithoutUsername => {
                f.write_str("password flag set without the user name flag")
            }
            ErrorKind::WildcardInTopicName => f.write_str("topic name contains a wildcard"),
            ErrorKind::EmptyTopic => f.write_str("zero-length topic"),
            ErrorKind::InvalidMultiLevelWildcard => {
                f.write_str("'#' must be the last character and occupy a whole level")
            }
            ErrorKind::InvalidSingleLevelWildcard => f.write_str("'+' must occupy a whole level"),
            ErrorKind::NoTopicFilters => f.write_str("no topic filter in the packet"),
            ErrorKind::SubscriptionOptionsReserved => {
                f.write_str("reserved bits of the subscription options are set")
            }
            ErrorKind::InvalidRetainHandling => f.write_str("retain handling 3"),
            ErrorKind::InvalidMaximumQoS => f.write_str("subscription Maximum QoS 3"),
            ErrorKind::NoLocalOnSharedSubscription => {
                f.write_str("No Local set on a shared subscription")
            }
            ErrorKind::InvalidSharedSubscription => f.write_str("malformed shared subscription"),
            ErrorKind::InvalidReasonCode { packet_type, code } => {
                write!(f, "reason code {code:#04x} is not allowed in packet type {packet_type}")
            }
            ErrorKind::UnknownProperty(id) => write!(f, "unknown property identifier {id:#04x}"),
            ErrorKind::PropertyNotAllowed { id } => {
                write!(f, "property {id:#04x} is not allowed in this packet")
            }
            ErrorKind::DuplicateProperty { id } => {
                write!(f, "property {id:#04x} included more than once")
            }
            ErrorKind::InvalidPropertyValue { id } => {
                write!(f, "property {id:#04x} has a value outside its range")
            }
            ErrorKind::EmptyTopicWithoutAlias => {
                f.write_str("zero-length topic name without a Topic Alias")
            }
            ErrorKind::ConnAckReservedFlags => f.write_str("CONNACK reserved flag bits are set"),
            ErrorKind::NoReasonCodes { packet_type } => {
                write!(f, "packet type {packet_type} without a reason code")
            }
            ErrorKind::UserPropertiesExceeded => {
                f.write_str("more user properties, or bytes of them, than the server accepts")
            }
        }
    }
}

/// A decoding failure: what went wrong and which normative statement it breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("[{spec}] {kind}")]
pub struct DecodeError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The normative statement id (`MQTT-3.3.1-4`) or section (`§3.3.2.3.4`) it breaks.
    pub spec: &'static str,
}

impl DecodeError {
    /// Builds an error for `kind` citing `spec`.
    pub const fn new(kind: ErrorKind, spec: &'static str) -> Self {
        Self { kind, spec }
    }

    /// The reason code a v5 server answers with. MQTT 3.x has no reason codes on DISCONNECT: the
    /// server closes the connection (or, for an unsupported level, answers CONNACK 0x01 first).
    pub const fn reason_code(&self) -> ReasonCode {
        self.kind.reason_code()
    }

    /// The same error citing the statement of `version`'s specification where the two differ
    /// in number: the UTF-8 string rules are [MQTT-1.5.3-x] in 3.1.1 (and 3.1) and
    /// [MQTT-1.5.4-x] in 5.0.
    pub fn for_version(mut self, version: super::ProtocolVersion) -> Self {
        if !version.is_v5() {
            self.spec = match self.spec {
                "MQTT-1.5.4-1" => "MQTT-1.5.3-1",
                "MQTT-1.5.4-2" => "MQTT-1.5.3-2",
                "MQTT-1.5.4-3" => "MQTT-1.5.3-3",
                other => other,
            };
        }
        self
    }
}

/// An encoding failure: the packet cannot be represented on the wire in this version.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The remaining length would exceed 268 435 455 bytes ([MQTT-1.5.5]: 4-byte varint limit).
    #[error("remaining length {0} exceeds the 4-byte variable byte integer maximum")]
    TooLarge(usize),
    /// A string or binary field longer than 65 535 bytes.
    #[error("field of {0} bytes exceeds the 65535-byte limit of a length-prefixed field")]
    FieldTooLong(usize),
    /// A packet that the negotiated version does not have (AUTH before MQTT 5).
    #[error("packet {0} does not exist in this protocol version")]
    NotInVersion(&'static str),
    /// A PUBLISH with QoS > 0 and no packet id, or QoS 0 with one.
    #[error("[MQTT-2.2.1-2] packet identifier presence does not match the QoS")]
    PacketIdMismatch,
    /// A packet whose fields this version cannot carry or forbids: the encoder refuses it
    /// rather than send something else than what was asked.
    #[error("[{spec}] {what}")]
    NotForVersion {
        /// The normative statement (or section) it breaks.
        spec: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}
