//! The [`Packet`] model to bytes, for every version. Properties are left out before v5; other
//! fields a version cannot carry make the encoder refuse the packet (`check_version`).

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::primitives::{put_bytes, put_varint, varint_len, VARINT_MAX};
use super::*;

/// Bytes the whole packet takes when encoded for `version`, or why it cannot be encoded. A broker
/// calls this before sending to honour the peer's Maximum Packet Size.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = body_len(packet, version)?;
    if remaining > VARINT_MAX {
        return Err(EncodeError::TooLarge(remaining));
    }
    Ok(1 + varint_len(remaining) + remaining)
}

/// Appends `packet`, encoded for `version`, to `buf`; returns the bytes written.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let remaining = body_len(packet, version)?;
    if remaining > VARINT_MAX {
        return Err(EncodeError::TooLarge(remaining));
    }
    let total = 1 + varint_len(remaining) + remaining;
    buf.reserve(total);
    let start = buf.len();
    buf.put_u8(first_byte(packet));
    put_varint(buf, remaining);
    let body_start = buf.len();
    write_body(packet, version, buf);
    // Paired with body_len: what was written is exactly what was announced.
    assert_eq!(buf.len() - body_start, remaining, "invariant: body_len matches write_body");
    debug_assert_eq!(buf.len() - start, total);
    Ok(total)
}

fn first_byte(packet: &Packet) -> u8 {
    let pt = packet.packet_type();
    let flags = match packet {
        Packet::Publish(p) => PublishView::of(p).first_byte() & 0x0F,
        _ => pt.required_flags().unwrap_or(0),
    };
    ((pt as u8) << 4) | flags
}

fn str_len(s: &str) -> Result<usize, EncodeError> {
    bin_len(s.as_bytes())
}

fn bin_len(b: &[u8]) -> Result<usize, EncodeError> {
    if b.len() > u16::MAX as usize {
        return Err(EncodeError::FieldTooLong(b.len()));
    }
    Ok(2 + b.len())
}

fn props_len(props: &Properties, v5: bool) -> Result<usize, EncodeError> {
    if !v5 {
        return Ok(0);
    }
    for p in props.iter() {
        let field = p.variable().longest_field();
        if field > u16::MAX as usize {
            return Err(EncodeError::FieldTooLong(field));
        }
    }
    let len = props.encoded_len();
    if len > VARINT_MAX {
        return Err(EncodeError::TooLarge(len));
    }
    Ok(len)
}

/// v5 acknowledgements drop a trailing Success reason and empty properties (§3.4.2.1, §3.14.2.1).
fn reason_tail_len(reason: ReasonCode, props: &Properties) -> Result<usize, EncodeError> {
    Ok(match (reason, props.is_empty()) {
        (ReasonCode::Success, true) => 0,
        (_, true) => 1,
        (_, false) => 1 + props_len(props, true)?,
    })
}

/// Refuses a packet that `version` cannot carry as given, rather than silently dropping what
/// does not fit: the decoder of a peer speaking that version would refuse it or read something
/// else. Properties are the exception: a v5 message forwarded to a 3.x subscriber loses them
/// by design, so they are left out without error.
fn check_version(packet: &Packet, version: ProtocolVersion) -> Result<(), EncodeError> {
    let v5 = version.is_v5();
    let refuse = |spec, what| Err(EncodeError::NotForVersion { spec, what });
    match packet {
        Packet::Connect(c) => {
            // CONNECT is checked against the version it names.
            if !c.version.is_v5() && c.password.is_some() && c.username.is_none() {
                return refuse(
                    "MQTT-3.1.2-22",
                    "MQTT 3.x CONNECT with a password but no user name",
                );
            }
            if c.will.as_ref().is_some_and(|w| w.topic.is_empty()) {
                return refuse("MQTT-4.7.3-1", "will topic is empty");
            }
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r)
            if !v5 && r.reason != ReasonCode::Success =>
        {
            return refuse("§3.4.2.1", "reason codes on acknowledgements are MQTT 5 only");
        }
        Packet::Disconnect(d) if !v5 && d.reason != ReasonCode::Success => {
            return refuse("§3.14.2.1", "DISCONNECT reason codes are MQTT 5 only");
        }
        Packet::Subscribe(s) if !v5 => {
            let v5_only = |o: &SubscriptionOptions| {
                o.no_local
                    || o.retain_as_published
                    || o.retain_handling != RetainHandling::default()
            };
            if s.filters.iter().any(|(_, o)| v5_only(o)) {
                // 3.1.1: the upper bits of the options byte are reserved and 0.
                return refuse(
                    "MQTT-3.8.3-4",
                    "No Local, Retain As Published and Retain Handling are MQTT 5 only",
                );
            }
        }
        Packet::SubAck(s) => {
            if s.reasons.is_empty() {
                let spec = if v5 { "MQTT-3.8.4-6" } else { "MQTT-3.8.4-5" };
                return refuse(spec, "SUBACK without a reason code");
            }
            let failure = s.reasons.iter().any(|r| r.to_v3_suback() == 0x80);
            if version == ProtocolVersion::V31 && failure {
                return refuse("§3.9.3", "MQTT 3.1 SUBACK has no failure return code");
            }
        }
        Packet::UnsubAck(u) if v5 && u.reasons.is_empty() => {
            return refuse("MQTT-3.11.3-1", "UNSUBACK without a reason code");
        }
        _ => {}
    }
    Ok(())
}

fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    check_version(packet, version)?;
    let v5 = version.is_v5();
    Ok(match packet {
        Packet::Connect(c) => {
            // CONNECT is encoded in its own version, whatever the connection's.
            let v5 = c.version.is_v5();
            let mut n = str_len(c.version.protocol_name())? + 1 + 1 + 2;
            n += props_len(&c.properties, v5)?;
            n += str_len(&c.client_id)?;
            if let Some(w) = &c.will {
                n += props_len(&w.properties, v5)? + str_len(&w.topic)? + bin_len(&w.payload)?;
            }
            if let Some(u) = &c.username {
                n += str_len(u)?;
            }
            if let Some(p) = &c.password {
                n += bin_len(p)?;
            }
            n
        }
        Packet::ConnAck(c) => 2 + props_len(&c.properties, v5)?,
        Packet::Publish(p) => publish_body_len(&PublishView::of(p), v5)?,
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            2 + if v5 { reason_tail_len(r.reason, &r.properties)? } else { 0 }
        }
        Packet::Subscribe(s) => {
            let mut n = 2 + props_len(&s.properties, v5)?;
            for (f, _) in &s.filters {
                n += str_len(f)? + 1;
            }
            n
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, v5)? + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            let mut n = 2 + props_len(&u.properties, v5)?;
            for f in &u.filters {
                n += str_len(f)?;
            }
            n
        }
        Packet::UnsubAck(u) => {
            2 + if v5 { props_len(&u.properties, v5)? + u.reasons.len() } else { 0 }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 {
                reason_tail_len(d.reason, &d.properties)?
            } else {
                0
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInVersion("AUTH"));
            }
            reason_tail_len(a.reason, &a.properties)?
        }
    })
}

fn put_props(buf: &mut BytesMut, props: &Properties, v5: bool) {
    if v5 {
        props.encode(buf);
    }
}

fn put_reason_tail(buf: &mut BytesMut, reason: ReasonCode, props: &Properties) {
    if reason == ReasonCode::Success && props.is_empty() {
        return;
    }
    buf.put_u8(reason as u8);
    if !props.is_empty() {
        props.encode(buf);
    }
}

fn subscription_options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let mut b = o.qos as u8;
    if v5 {
        b |= u8::from(o.no_local) << 2;
        b |= u8::from(o.retain_as_published) << 3;
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

fn write_body(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => write_connect(c, buf),
        Packet::ConnAck(c) => {
            let present = c.session_present && version != ProtocolVersion::V31;
            buf.put_u8(u8::from(present));
            buf.put_u8(if v5 { c.reason as u8 } else { c.reason.to_v3_connack() });
            put_props(buf, &c.properties, v5);
        }
        Packet::Publish(p) => write_publish_body(&PublishView::of(p), v5, buf),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            buf.put_u16(r.packet_id.get());
            if v5 {
                put_reason_tail(buf, r.reason, &r.properties);
            }
        }
        Packet::Subscribe(s) => {
            buf.put_u16(s.packet_id.get());
            put_props(buf, &s.properties, v5);
            for (f, o) in &s.filters {
                put_bytes(buf, f.as_bytes());
                buf.put_u8(subscription_options_byte(o, v5));
            }
        }
        Packet::SubAck(s) => {
            buf.put_u16(s.packet_id.get());
            put_props(buf, &s.properties, v5);
            for r in &s.reasons {
                buf.put_u8(if v5 { *r as u8 } else { r.to_v3_suback() });
            }
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.packet_id.get());
            put_props(buf, &u.properties, v5);
            for f in &u.filters {
                put_bytes(buf, f.as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            buf.put_u16(u.packet_id.get());
            if v5 {
                u.properties.encode(buf);
                buf.extend(u.reasons.iter().map(|r| *r as u8));
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) | Packet::Auth(d) => {
            if v5 {
                put_reason_tail(buf, d.reason, &d.properties);
            }
        }
    }
}

fn write_connect(c: &Connect, buf: &mut BytesMut) {
    // CONNECT is encoded in its own version, whatever the connection's.
    let v5 = c.version.is_v5();
    put_bytes(buf, c.version.protocol_name().as_bytes());
    buf.put_u8(c.version.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive_secs);
    put_props(buf, &c.properties, v5);
    put_bytes(buf, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        put_props(buf, &w.properties, v5);
        put_bytes(buf, w.topic.as_bytes());
        put_bytes(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        put_bytes(buf, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_bytes(buf, p);
    }
}

/// A PUBLISH by reference: lets the broker encode one stored message for many subscribers
/// without building an owned [`Publish`] (and copying the topic) for each.
#[derive(Clone, Copy, Debug)]
pub struct PublishView<'a> {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name, UTF-8 (a [`crate::codec::TopicName`]'s bytes, or empty when a v5 Topic
    /// Alias stands for it). Bytes rather than `&str`: the broker encodes from a `TopicName`
    /// without re-checking its UTF-8.
    pub topic: &'a [u8],
    /// Packet id; present exactly when QoS > 0.
    pub packet_id: Option<PacketId>,
    /// Properties (v5 only).
    pub properties: &'a Properties,
    /// Payload.
    pub payload: &'a [u8],
}

impl<'a> PublishView<'a> {
    /// A view of an owned PUBLISH.
    pub fn of(p: &'a Publish) -> Self {
        Self {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic.as_ref().map_or(&[][..], |t| t.as_bytes()),
            packet_id: p.packet_id,
            properties: &p.properties,
            payload: &p.payload,
        }
    }

    fn first_byte(&self) -> u8 {
        ((PacketType::Publish as u8) << 4)
            | (u8::from(self.dup) << 3)
            | ((self.qos as u8) << 1)
            | u8::from(self.retain)
    }
}

fn publish_body_len(p: &PublishView, v5: bool) -> Result<usize, EncodeError> {
    if p.qos == QoS::AtMostOnce && p.packet_id.is_some()
        || p.qos != QoS::AtMostOnce && p.packet_id.is_none()
    {
        return Err(EncodeError::PacketIdMismatch);
    }
    if p.topic.is_empty() {
        // 3.x: a topic name has at least one character ([MQTT-4.7.3-1]); v5 may leave it
        // empty only when a Topic Alias stands for it ([MQTT-3.3.2-1], §3.3.2.3.4).
        if !v5 {
            let what = "MQTT 3.x PUBLISH with an empty topic";
            return Err(EncodeError::NotForVersion { spec: "MQTT-4.7.3-1", what });
        }
        if p.properties.topic_alias().is_none() {
            let what = "PUBLISH with an empty topic and no Topic Alias";
            return Err(EncodeError::NotForVersion { spec: "MQTT-3.3.2-1", what });
        }
    }
    let id = if p.packet_id.is_some() { 2 } else { 0 };
    Ok(bin_len(p.topic)? + id + props_len(p.properties, v5)? + p.payload.len())
}

fn write_publish_body(p: &PublishView, v5: bool, buf: &mut BytesMut) {
    put_bytes(buf, p.topic);
    if let Some(id) = p.packet_id {
        buf.put_u16(id.get());
    }
    put_props(buf, p.properties, v5);
    buf.put_slice(p.payload);
}

/// Bytes a PUBLISH view takes when encoded for `version`.
pub fn publish_len(p: &PublishView, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = publish_body_len(p, version.is_v5())?;
    if remaining > VARINT_MAX {
        return Err(EncodeError::TooLarge(remaining));
    }
    Ok(1 + varint_len(remaining) + remaining)
}

/// Appends a PUBLISH view encoded for `version`; returns the bytes written.
pub fn encode_publish(
    p: &PublishView,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let v5 = version.is_v5();
    let remaining = publish_body_len(p, v5)?;
    if remaining > VARINT_MAX {
        return Err(EncodeError::TooLarge(remaining));
    }
    let total = 1 + varint_len(remaining) + remaining;
    buf.reserve(total);
    buf.put_u8(p.first_byte());
    put_varint(buf, remaining);
    let body_start = buf.len();
    write_publish_body(p, v5, buf);
    assert_eq!(buf.len() - body_start, remaining, "invariant: publish_body_len matches the write");
    Ok(total)
}
