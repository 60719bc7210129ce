//! MQTT 5.0 properties (§2.2.2): every property identifier, its wire type, the packets it may
//! appear in, and the duplicate rules.
//!
//! Properties are kept as an ordered list rather than a struct of options: an empty list costs no
//! allocation (every v3 packet and most v5 ones), the order the client sent is kept (user properties
//! must be forwarded in order, §3.3.2.3.7), and the few lookups a broker makes scan 0-5 entries.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, ErrorKind};
use super::primitives::{self, Reader};

/// Where a property list sits; decides which identifiers are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyContext {
    /// CONNECT variable header.
    Connect,
    /// Will properties in the CONNECT payload.
    Will,
    /// CONNACK.
    ConnAck,
    /// PUBLISH.
    Publish,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubResp,
    /// SUBSCRIBE.
    Subscribe,
    /// SUBACK.
    SubAck,
    /// UNSUBSCRIBE.
    Unsubscribe,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

impl PropertyContext {
    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// One property. Variant names follow §2.2.2.2 Table 2-4.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the names are the spec's
pub enum Property {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(String),
    ResponseTopic(String),
    CorrelationData(Bytes),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(String),
    ServerKeepAlive(u16),
    AuthenticationMethod(String),
    AuthenticationData(Bytes),
    RequestProblemInformation(u8),
    WillDelayInterval(u32),
    RequestResponseInformation(u8),
    ResponseInformation(String),
    ServerReference(String),
    ReasonString(String),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(u8),
    RetainAvailable(u8),
    UserProperty(String, String),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(u8),
    SubscriptionIdentifierAvailable(u8),
    SharedSubscriptionAvailable(u8),
}

/// Property identifiers (§2.2.2.2).
#[allow(missing_docs)]
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// The largest Subscription Identifier (§3.8.2.1.2: 1 to 268 435 455).
pub const SUBSCRIPTION_IDENTIFIER_MAX: u32 = 268_435_455;

/// Packets where a property is allowed, as a bitmask of [`PropertyContext::bit`].
fn allowed_contexts(id: u8) -> u16 {
    use PropertyContext as C;
    let b = |cs: &[C]| cs.iter().fold(0u16, |acc, c| acc | c.bit());
    match id {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => b(&[C::Publish, C::Will]),
        id::SUBSCRIPTION_IDENTIFIER => b(&[C::Publish, C::Subscribe]),
        id::SESSION_EXPIRY_INTERVAL => b(&[C::Connect, C::ConnAck, C::Disconnect]),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => b(&[C::ConnAck]),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
            b(&[C::Connect, C::ConnAck, C::Auth])
        }
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => b(&[C::Connect]),
        id::WILL_DELAY_INTERVAL => b(&[C::Will]),
        id::SERVER_REFERENCE => b(&[C::ConnAck, C::Disconnect]),
        id::REASON_STRING => {
            b(&[C::ConnAck, C::PubResp, C::SubAck, C::UnsubAck, C::Disconnect, C::Auth])
        }
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            b(&[C::Connect, C::ConnAck])
        }
        id::TOPIC_ALIAS => b(&[C::Publish]),
        id::USER_PROPERTY => 0xFFFF,
        _ => 0,
    }
}

/// A property's variable-length values ([`Property::variable`]).
#[derive(Clone, Copy, Debug)]
pub enum Variable<'a> {
    /// None: the value has a fixed size (or is a Variable Byte Integer).
    Fixed,
    /// A UTF-8 string.
    Str(&'a String),
    /// Binary data.
    Bin(&'a Bytes),
    /// A user property's name and value.
    Pair(&'a String, &'a String),
}

impl Variable<'_> {
    /// The longest single field (each is bounded to 65 535 bytes on the wire).
    pub fn longest_field(self) -> usize {
        match self {
            Variable::Fixed => 0,
            Variable::Str(s) => s.len(),
            Variable::Bin(b) => b.len(),
            Variable::Pair(k, v) => k.len().max(v.len()),
        }
    }
}

impl Property {
    /// The identifier byte of this property.
    pub const fn id(&self) -> u8 {
        match self {
            Property::PayloadFormatIndicator(_) => id::PAYLOAD_FORMAT_INDICATOR,
            Property::MessageExpiryInterval(_) => id::MESSAGE_EXPIRY_INTERVAL,
            Property::ContentType(_) => id::CONTENT_TYPE,
            Property::ResponseTopic(_) => id::RESPONSE_TOPIC,
            Property::CorrelationData(_) => id::CORRELATION_DATA,
            Property::SubscriptionIdentifier(_) => id::SUBSCRIPTION_IDENTIFIER,
            Property::SessionExpiryInterval(_) => id::SESSION_EXPIRY_INTERVAL,
            Property::AssignedClientIdentifier(_) => id::ASSIGNED_CLIENT_IDENTIFIER,
            Property::ServerKeepAlive(_) => id::SERVER_KEEP_ALIVE,
            Property::AuthenticationMethod(_) => id::AUTHENTICATION_METHOD,
            Property::AuthenticationData(_) => id::AUTHENTICATION_DATA,
            Property::RequestProblemInformation(_) => id::REQUEST_PROBLEM_INFORMATION,
            Property::WillDelayInterval(_) => id::WILL_DELAY_INTERVAL,
            Property::RequestResponseInformation(_) => id::REQUEST_RESPONSE_INFORMATION,
            Property::ResponseInformation(_) => id::RESPONSE_INFORMATION,
            Property::ServerReference(_) => id::SERVER_REFERENCE,
            Property::ReasonString(_) => id::REASON_STRING,
            Property::ReceiveMaximum(_) => id::RECEIVE_MAXIMUM,
            Property::TopicAliasMaximum(_) => id::TOPIC_ALIAS_MAXIMUM,
            Property::TopicAlias(_) => id::TOPIC_ALIAS,
            Property::MaximumQoS(_) => id::MAXIMUM_QOS,
            Property::RetainAvailable(_) => id::RETAIN_AVAILABLE,
            Property::UserProperty(..) => id::USER_PROPERTY,
            Property::MaximumPacketSize(_) => id::MAXIMUM_PACKET_SIZE,
            Property::WildcardSubscriptionAvailable(_) => id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            Property::SubscriptionIdentifierAvailable(_) => id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            Property::SharedSubscriptionAvailable(_) => id::SHARED_SUBSCRIPTION_AVAILABLE,
        }
    }

    /// Whether this property may appear in `ctx`.
    pub fn allowed_in(&self, ctx: PropertyContext) -> bool {
        allowed_contexts(self.id()) & ctx.bit() != 0
    }

    /// The variable-length values of this property (strings, binary data, the user property
    /// pair), for the measures that only concern them: wire length, heap held, the 65 535-byte
    /// field bound.
    pub fn variable(&self) -> Variable<'_> {
        match self {
            Property::ContentType(s)
            | Property::ResponseTopic(s)
            | Property::AssignedClientIdentifier(s)
            | Property::AuthenticationMethod(s)
            | Property::ResponseInformation(s)
            | Property::ServerReference(s)
            | Property::ReasonString(s) => Variable::Str(s),
            Property::CorrelationData(b) | Property::AuthenticationData(b) => Variable::Bin(b),
            Property::UserProperty(k, v) => Variable::Pair(k, v),
            _ => Variable::Fixed,
        }
    }

    /// Bytes this property takes on the wire, identifier included.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Property::PayloadFormatIndicator(_)
            | Property::RequestProblemInformation(_)
            | Property::RequestResponseInformation(_)
            | Property::MaximumQoS(_)
            | Property::RetainAvailable(_)
            | Property::WildcardSubscriptionAvailable(_)
            | Property::SubscriptionIdentifierAvailable(_)
            | Property::SharedSubscriptionAvailable(_) => 1,
            Property::ServerKeepAlive(_)
            | Property::ReceiveMaximum(_)
            | Property::TopicAliasMaximum(_)
            | Property::TopicAlias(_) => 2,
            Property::MessageExpiryInterval(_)
            | Property::SessionExpiryInterval(_)
            | Property::WillDelayInterval(_)
            | Property::MaximumPacketSize(_) => 4,
            Property::SubscriptionIdentifier(v) => primitives::varint_len(*v as usize),
            _ => match self.variable() {
                Variable::Str(s) => 2 + s.len(),
                Variable::Bin(b) => 2 + b.len(),
                Variable::Pair(k, v) => 4 + k.len() + v.len(),
                Variable::Fixed => 0,
            },
        }
    }

    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.id());
        match self {
            Property::PayloadFormatIndicator(v)
            | Property::RequestProblemInformation(v)
            | Property::RequestResponseInformation(v)
            | Property::MaximumQoS(v)
            | Property::RetainAvailable(v)
            | Property::WildcardSubscriptionAvailable(v)
            | Property::SubscriptionIdentifierAvailable(v)
            | Property::SharedSubscriptionAvailable(v) => buf.put_u8(*v),
            Property::ServerKeepAlive(v)
            | Property::ReceiveMaximum(v)
            | Property::TopicAliasMaximum(v)
            | Property::TopicAlias(v) => buf.put_u16(*v),
            Property::MessageExpiryInterval(v)
            | Property::SessionExpiryInterval(v)
            | Property::WillDelayInterval(v)
            | Property::MaximumPacketSize(v) => buf.put_u32(*v),
            Property::SubscriptionIdentifier(v) => primitives::put_varint(buf, *v as usize),
            Property::ContentType(s)
            | Property::ResponseTopic(s)
            | Property::AssignedClientIdentifier(s)
            | Property::AuthenticationMethod(s)
            | Property::ResponseInformation(s)
            | Property::ServerReference(s)
            | Property::ReasonString(s) => primitives::put_bytes(buf, s.as_bytes()),
            Property::CorrelationData(b) | Property::AuthenticationData(b) => {
                primitives::put_bytes(buf, b)
            }
            Property::UserProperty(k, v) => {
                primitives::put_bytes(buf, k.as_bytes());
                primitives::put_bytes(buf, v.as_bytes());
            }
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let raw = r.varint()?;
        let pid = u8::try_from(raw)
            .map_err(|_| DecodeError::new(ErrorKind::UnknownProperty(raw as u32), "§2.2.2.2"))?;
        let bad_value =
            || DecodeError::new(ErrorKind::InvalidPropertyValue { id: pid }, "§2.2.2.2");
        let flag = |r: &mut Reader| -> Result<u8, DecodeError> {
            let v = r.u8()?;
            if v > 1 {
                return Err(bad_value());
            }
            Ok(v)
        };
        let nonzero_u16 = |r: &mut Reader| -> Result<u16, DecodeError> {
            let v = r.u16()?;
            if v == 0 {
                return Err(bad_value());
            }
            Ok(v)
        };
        Ok(match pid {
            id::PAYLOAD_FORMAT_INDICATOR => Property::PayloadFormatIndicator(flag(r)?),
            id::MESSAGE_EXPIRY_INTERVAL => Property::MessageExpiryInterval(r.u32()?),
            id::CONTENT_TYPE => Property::ContentType(r.string()?),
            id::RESPONSE_TOPIC => {
                let topic = r.string()?;
                // [MQTT-3.3.2-14]: the Response Topic is a topic name, no wildcards.
                super::topic::validate_topic_name(&topic, true).map_err(|e| match e.kind {
                    ErrorKind::WildcardInTopicName => DecodeError::new(e.kind, "MQTT-3.3.2-14"),
                    _ => e,
                })?;
                Property::ResponseTopic(topic)
            }
            id::CORRELATION_DATA => Property::CorrelationData(r.binary()?),
            id::SUBSCRIPTION_IDENTIFIER => {
                let v = r.varint()? as u32;
                if v == 0 {
                    return Err(bad_value());
                }
                Property::SubscriptionIdentifier(v)
            }
            id::SESSION_EXPIRY_INTERVAL => Property::SessionExpiryInterval(r.u32()?),
            id::ASSIGNED_CLIENT_IDENTIFIER => Property::AssignedClientIdentifier(r.string()?),
            id::SERVER_KEEP_ALIVE => Property::ServerKeepAlive(r.u16()?),
            id::AUTHENTICATION_METHOD => Property::AuthenticationMethod(r.string()?),
            id::AUTHENTICATION_DATA => Property::AuthenticationData(r.binary()?),
            id::REQUEST_PROBLEM_INFORMATION => Property::RequestProblemInformation(flag(r)?),
            id::WILL_DELAY_INTERVAL => Property::WillDelayInterval(r.u32()?),
            id::REQUEST_RESPONSE_INFORMATION => Property::RequestResponseInformation(flag(r)?),
            id::RESPONSE_INFORMATION => Property::ResponseInformation(r.string()?),
            id::SERVER_REFERENCE => Property::ServerReference(r.string()?),
            id::REASON_STRING => Property::ReasonString(r.string()?),
            id::RECEIVE_MAXIMUM => Property::ReceiveMaximum(nonzero_u16(r)?),
            id::TOPIC_ALIAS_MAXIMUM => Property::TopicAliasMaximum(r.u16()?),
            id::TOPIC_ALIAS => Property::TopicAlias(nonzero_u16(r)?),
            id::MAXIMUM_QOS => Property::MaximumQoS(flag(r)?),
            id::RETAIN_AVAILABLE => Property::RetainAvailable(flag(r)?),
            id::USER_PROPERTY => Property::UserProperty(r.string()?, r.string()?),
            id::MAXIMUM_PACKET_SIZE => {
                let v = r.u32()?;
                if v == 0 {
                    return Err(bad_value());
                }
                Property::MaximumPacketSize(v)
            }
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                Property::WildcardSubscriptionAvailable(flag(r)?)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                Property::SubscriptionIdentifierAvailable(flag(r)?)
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => Property::SharedSubscriptionAvailable(flag(r)?),
            other => {
                return Err(DecodeError::new(ErrorKind::UnknownProperty(other as u32), "§2.2.2.2"))
            }
        })
    }
}

/// An ordered list of properties. Empty for every MQTT 3.x packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties(Vec<Property>);

macro_rules! getter {
    ($(#[$doc:meta] $name:ident: $variant:ident -> $ty:ty;)*) => {
        $(
            #[$doc]
            pub fn $name(&self) -> Option<$ty> {
                self.0.iter().find_map(|p| match p {
                    Property::$variant(v) => Some(v.clone()),
                    _ => None,
                })
            }
        )*
    };
}

impl Properties {
    /// An empty list; allocates nothing.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Heap bytes these properties hold: the list itself (at its capacity) and every string
    /// and binary value in it. What a stored message's properties cost in the memory bounds:
    /// 180 000 empty user properties are ~10 MB here however few bytes they took on the wire.
    pub fn heap_bytes(&self) -> usize {
        let values: usize = self
            .0
            .iter()
            .map(|p| match p.variable() {
                Variable::Str(s) => s.capacity(),
                Variable::Bin(b) => b.len(),
                Variable::Pair(k, v) => k.capacity() + v.capacity(),
                Variable::Fixed => 0,
            })
            .sum();
        self.0.capacity() * std::mem::size_of::<Property>() + values
    }

    /// Releases spare list capacity and copies binary values out of the buffer they were
    /// decoded from, so a stored message holds only its own bytes.
    pub fn detach(&mut self) {
        self.0.shrink_to_fit();
        for p in &mut self.0 {
            if let Property::CorrelationData(b) | Property::AuthenticationData(b) = p {
                *b = Bytes::copy_from_slice(b);
            }
        }
    }

    /// True when no property is present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The properties, in wire order.
    pub fn iter(&self) -> std::slice::Iter<'_, Property> {
        self.0.iter()
    }

    /// Appends a property (no duplicate check: the caller builds outgoing packets).
    pub fn push(&mut self, p: Property) {
        self.0.push(p);
    }

    /// Replaces the first property with the same identifier, or appends.
    pub fn set(&mut self, p: Property) {
        match self.0.iter_mut().find(|q| q.id() == p.id()) {
            Some(slot) => *slot = p,
            None => self.0.push(p),
        }
    }

    /// Removes every property with this identifier.
    pub fn remove(&mut self, pid: u8) {
        self.0.retain(|p| p.id() != pid);
    }

    /// Keeps only the properties for which `keep` returns true.
    pub fn retain(&mut self, keep: impl FnMut(&Property) -> bool) {
        self.0.retain(keep);
    }

    /// User properties in order.
    pub fn user_properties(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|p| match p {
            Property::UserProperty(k, v) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }

    /// Every Subscription Identifier, in order (PUBLISH may carry several, §3.3.2.3.8).
    pub fn subscription_identifiers(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().filter_map(|p| match p {
            Property::SubscriptionIdentifier(v) => Some(*v),
            _ => None,
        })
    }

    getter! {
        /// Payload Format Indicator (0x01).
        payload_format_indicator: PayloadFormatIndicator -> u8;
        /// Message Expiry Interval in seconds (0x02).
        message_expiry_interval: MessageExpiryInterval -> u32;
        /// Content Type (0x03).
        content_type: ContentType -> String;
        /// Response Topic (0x08).
        response_topic: ResponseTopic -> String;
        /// Correlation Data (0x09).
        correlation_data: CorrelationData -> Bytes;
        /// Session Expiry Interval in seconds (0x11).
        session_expiry_interval: SessionExpiryInterval -> u32;
        /// Assigned Client Identifier (0x12).
        assigned_client_identifier: AssignedClientIdentifier -> String;
        /// Server Keep Alive in seconds (0x13).
        server_keep_alive: ServerKeepAlive -> u16;
        /// Authentication Method (0x15).
        authentication_method: AuthenticationMethod -> String;
        /// Authentication Data (0x16).
        authentication_data: AuthenticationData -> Bytes;
        /// Request Problem Information (0x17).
        request_problem_information: RequestProblemInformation -> u8;
        /// Will Delay Interval in seconds (0x18).
        will_delay_interval: WillDelayInterval -> u32;
        /// Request Response Information (0x19).
        request_response_information: RequestResponseInformation -> u8;
        /// Response Information (0x1A).
        response_information: ResponseInformation -> String;
        /// Server Reference (0x1C).
        server_reference: ServerReference -> String;
        /// Reason String (0x1F).
        reason_string: ReasonString -> String;
        /// Receive Maximum (0x21).
        receive_maximum: ReceiveMaximum -> u16;
        /// Topic Alias Maximum (0x22).
        topic_alias_maximum: TopicAliasMaximum -> u16;
        /// Topic Alias (0x23).
        topic_alias: TopicAlias -> u16;
        /// Maximum QoS (0x24).
        maximum_qos: MaximumQoS -> u8;
        /// Retain Available (0x25).
        retain_available: RetainAvailable -> u8;
        /// Maximum Packet Size (0x27).
        maximum_packet_size: MaximumPacketSize -> u32;
        /// Wildcard Subscription Available (0x28).
        wildcard_subscription_available: WildcardSubscriptionAvailable -> u8;
        /// Subscription Identifier Available (0x29).
        subscription_identifier_available: SubscriptionIdentifierAvailable -> u8;
        /// Shared Subscription Available (0x2A).
        shared_subscription_available: SharedSubscriptionAvailable -> u8;
    }

    /// Bytes of the property list without its length prefix.
    pub fn body_len(&self) -> usize {
        self.0.iter().map(Property::encoded_len).sum()
    }

    /// Bytes of the property list with its variable byte integer length prefix.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        primitives::varint_len(body) + body
    }

    /// Writes the length prefix and the properties.
    pub fn encode(&self, buf: &mut BytesMut) {
        primitives::put_varint(buf, self.body_len());
        for p in &self.0 {
            p.encode(buf);
        }
    }

    /// Reads a length-prefixed property list and checks it against `ctx`: unknown identifiers and
    /// identifiers not allowed in the packet are malformed, a second copy of a property that may
    /// appear once is a protocol error (§2.2.2.2).
    pub fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Self, DecodeError> {
        let mut unlimited = UserPropertyBudget::UNLIMITED;
        Self::decode_bounded(r, ctx, &mut unlimited)
    }

    /// [`Properties::decode`], charging each User Property to `budget` (shared by every
    /// property list of one packet). A property beyond the budget's count or bytes ends the
    /// decode at once with [`ErrorKind::UserPropertiesExceeded`]: at most one property more than
    /// the bound is ever allocated, so 180 000 empty user properties cost the same as 129
    /// (CVE-2021-41039's class).
    pub fn decode_bounded(
        r: &mut Reader,
        ctx: PropertyContext,
        budget: &mut UserPropertyBudget,
    ) -> Result<Self, DecodeError> {
        let len = r.varint()?;
        let mut sub = r.take(len)?;
        let mut list = Vec::new();
        // Bit i set: property id i already seen. Ids are below 0x40.
        let mut seen: u64 = 0;
        while sub.remaining() > 0 {
            let p = Property::decode(&mut sub)?;
            let pid = p.id();
            if !p.allowed_in(ctx) {
                return Err(DecodeError::new(
                    ErrorKind::PropertyNotAllowed { id: pid },
                    "§2.2.2.2",
                ));
            }
            let repeatable = pid == id::USER_PROPERTY
                || (pid == id::SUBSCRIPTION_IDENTIFIER && ctx == PropertyContext::Publish);
            if !repeatable && seen & (1 << pid) != 0 {
                return Err(DecodeError::new(ErrorKind::DuplicateProperty { id: pid }, "§2.2.2.2"));
            }
            seen |= 1 << pid;
            if let Property::UserProperty(k, v) = &p {
                budget.charge(k.len() + v.len())?;
            }
            list.push(p);
        }
        Ok(Self(list))
    }
}

/// What is left of a packet's allowance of User Properties (v5 §3.1.2.11.8 and the other
/// packets' equivalents): how many more, and how many more bytes of names and values. One
/// budget is shared by every property list of a packet (CONNECT: its own and the will's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserPropertyBudget {
    /// User Properties still allowed.
    pub count: usize,
    /// Bytes of names plus values still allowed.
    pub bytes: usize,
}

impl UserPropertyBudget {
    /// No bound (clients, tests and tools that decode what a server sent).
    pub const UNLIMITED: UserPropertyBudget =
        UserPropertyBudget { count: usize::MAX, bytes: usize::MAX };

    /// Takes one property of `bytes` name+value bytes, or refuses it.
    fn charge(&mut self, bytes: usize) -> Result<(), DecodeError> {
        if self.count == 0 || bytes > self.bytes {
            return Err(DecodeError::new(ErrorKind::UserPropertiesExceeded, "§3.1.2.11.8"));
        }
        self.count -= 1;
        self.bytes -= bytes;
        Ok(())
    }
}

impl FromIterator<Property> for Properties {
    fn from_iter<I: IntoIterator<Item = Property>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl From<Vec<Property>> for Properties {
    fn from(v: Vec<Property>) -> Self {
        Self(v)
    }
}
