//! Packet bodies, from bytes to the [`Packet`] model, for every version.

use std::cell::Cell;

use bytes::{Bytes, BytesMut};

use super::error::{DecodeError, ErrorKind};
use super::header::{check, FixedHeader, PacketType};
use super::primitives::Reader;
use super::properties::{Properties, PropertyContext, UserPropertyBudget};
use super::reason::{ReasonCode, ReasonContext};
use super::topic::is_shared;
use super::*;

/// Decodes one packet from the front of `buf`.
///
/// `Ok(None)`: not a whole packet yet; `buf` is untouched and the caller reads more. `Ok(Some)`:
/// exactly that packet's bytes were split off `buf`. `Err`: the stream is unusable; the
/// connection gets the error's reason code and is closed. `version` is the connection's version
/// (CONNECT names its own version and ignores it); before CONNECT pass the version you expect.
///
/// User Properties are not bounded here (this is the decoder for clients, tests and tools); the
/// broker decodes with [`decode_with`] and its configured [`DecodeLimits`].
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let limits = DecodeLimits {
        packet_bytes_max: max_packet_size,
        user_properties: UserPropertyBudget::UNLIMITED,
    };
    decode_with(buf, version, &limits)
}

/// What the decoder accepts from one peer, beyond well-formedness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest whole packet, checked at the fixed header before the body is buffered.
    pub packet_bytes_max: usize,
    /// User Properties allowed in one packet (count, and bytes of names plus values), over all
    /// of its property lists. Beyond it: [`ErrorKind::UserPropertiesExceeded`] (0x95).
    pub user_properties: UserPropertyBudget,
}

/// [`decode`] with every bound of `limits`.
pub fn decode_with(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    decode_with_hint(buf, version, limits, None)
}

/// [`decode_with`], and a PUBLISH whose topic name has the bytes of `hint` gets a clone of
/// `hint` (shared bytes, no check: `hint` is a valid name) instead of its own.
pub fn decode_with_hint(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: &DecodeLimits,
    hint: Option<&TopicName>,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = check(buf, limits.packet_bytes_max, Some(version))? else {
        return Ok(None);
    };
    if buf.len() < header.packet_len() {
        return Ok(None);
    }
    let frame = buf.split_to(header.packet_len()).freeze();
    let body = Reader::new(frame.slice(header.header_len..));
    decode_frame(&header, body, version, limits.user_properties, hint).map(Some)
}

/// Decodes one packet from the front of the caller's buffer in place, without copying it into
/// a receive buffer first (issue 10): what the packet keeps (payload, binary properties, a
/// topic name unlike `hint`) is copied out of `buf` into allocations of its own size.
/// `Ok(Some((packet, n)))`: the packet was the first `n` bytes of `buf`; `Ok(None)`: `buf`
/// does not hold a whole packet (its header is checked against `limits` all the same).
pub fn decode_slice(
    buf: &[u8],
    version: ProtocolVersion,
    limits: &DecodeLimits,
    hint: Option<&TopicName>,
) -> Result<Option<(Packet, usize)>, DecodeError> {
    let Some(header) = check(buf, limits.packet_bytes_max, Some(version))? else {
        return Ok(None);
    };
    let n = header.packet_len();
    let Some(frame) = buf.get(..n) else { return Ok(None) };
    let body = Reader::borrowed(&frame[header.header_len..]);
    decode_frame(&header, body, version, limits.user_properties, hint).map(|p| Some((p, n)))
}

/// Decodes the body of a packet whose fixed header is `header`. `body` holds exactly the
/// remaining length; its User Properties are charged to `budget`.
fn decode_frame(
    header: &FixedHeader,
    body: Reader,
    version: ProtocolVersion,
    budget: UserPropertyBudget,
    hint: Option<&TopicName>,
) -> Result<Packet, DecodeError> {
    debug_assert_eq!(body.remaining(), header.remaining_len);
    // Errors cite the statements of the connection's version; CONNECT cites those of the
    // version it names itself (see `decode_connect`).
    let connect = header.packet_type == PacketType::Connect;
    decode_body(header, body, version, budget, hint).map_err(|e| {
        if connect {
            e
        } else {
            e.for_version(version)
        }
    })
}

fn decode_body(
    header: &FixedHeader,
    mut r: Reader,
    version: ProtocolVersion,
    budget: UserPropertyBudget,
    hint: Option<&TopicName>,
) -> Result<Packet, DecodeError> {
    let d = Dec {
        v5: version.is_v5(),
        v31: version == ProtocolVersion::V31,
        budget: Cell::new(budget),
        hint,
    };
    let packet = match header.packet_type {
        PacketType::Connect => Packet::Connect(Box::new(decode_connect(&mut r, budget)?)),
        PacketType::ConnAck => Packet::ConnAck(d.connack(&mut r)?),
        PacketType::Publish => Packet::Publish(d.publish(header.flags, &mut r)?),
        PacketType::PubAck => Packet::PubAck(d.pub_resp(&mut r, header.packet_type)?),
        PacketType::PubRec => Packet::PubRec(d.pub_resp(&mut r, header.packet_type)?),
        PacketType::PubRel => Packet::PubRel(d.pub_resp(&mut r, header.packet_type)?),
        PacketType::PubComp => Packet::PubComp(d.pub_resp(&mut r, header.packet_type)?),
        PacketType::Subscribe => Packet::Subscribe(d.subscribe(&mut r)?),
        PacketType::SubAck => Packet::SubAck(d.suback(&mut r)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(d.unsubscribe(&mut r)?),
        PacketType::UnsubAck => Packet::UnsubAck(d.unsuback(&mut r)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => {
            Packet::Disconnect(d.reason_packet(&mut r, ReasonContext::Disconnect)?)
        }
        PacketType::Auth if d.v5 => Packet::Auth(d.reason_packet(&mut r, ReasonContext::Auth)?),
        PacketType::Auth => {
            return Err(DecodeError::new(ErrorKind::ReservedPacketType(15), "MQTT-2.2.2-2"))
        }
    };
    // The remaining length must match the content exactly: leftover bytes are malformed.
    if r.remaining() != 0 {
        return Err(DecodeError::new(ErrorKind::TrailingBytes, "§2.1.4"));
    }
    Ok(packet)
}

/// Version-dependent decoding context.
struct Dec<'h> {
    v5: bool,
    v31: bool,
    /// User Properties the rest of the packet may still carry.
    budget: Cell<UserPropertyBudget>,
    /// A valid topic name a PUBLISH probably repeats (the last one the shard saw).
    hint: Option<&'h TopicName>,
}

impl Dec<'_> {
    fn spec(&self, v5: &'static str, v3: &'static str) -> &'static str {
        if self.v5 {
            v5
        } else {
            v3
        }
    }

    fn packet_id(&self, r: &mut Reader) -> Result<PacketId, DecodeError> {
        let raw = r.u16()?;
        PacketId::new(raw).ok_or_else(|| {
            DecodeError::new(ErrorKind::ZeroPacketId, self.spec("MQTT-2.2.1-3", "MQTT-2.3.1-1"))
        })
    }

    fn properties(&self, r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        if self.v5 {
            self.bounded(r, ctx)
        } else {
            Ok(Properties::new())
        }
    }

    /// A property list charged to the packet's User Property budget.
    fn bounded(&self, r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        let mut budget = self.budget.get();
        let result = Properties::decode_bounded(r, ctx, &mut budget);
        self.budget.set(budget);
        result
    }

    fn reason(&self, byte: u8, ctx: ReasonContext, pt: u8) -> Result<ReasonCode, DecodeError> {
        ReasonCode::from_u8(byte).filter(|c| c.allowed_in(ctx)).ok_or_else(|| {
            DecodeError::new(ErrorKind::InvalidReasonCode { packet_type: pt, code: byte }, "§2.4")
        })
    }

    fn connack(&self, r: &mut Reader) -> Result<ConnAck, DecodeError> {
        let flags = r.u8()?;
        if flags & 0xFE != 0 {
            return Err(DecodeError::new(ErrorKind::ConnAckReservedFlags, "§3.2.2.1"));
        }
        let code = r.u8()?;
        let reason = if self.v5 {
            self.reason(code, ReasonContext::ConnAck, 2)?
        } else {
            ReasonCode::from_v3_connack(code).ok_or_else(|| {
                DecodeError::new(ErrorKind::InvalidReasonCode { packet_type: 2, code }, "§3.2.2.3")
            })?
        };
        let properties = self.properties(r, PropertyContext::ConnAck)?;
        // MQTT 3.1 has no Session Present flag: the byte is unused there.
        let session_present = flags & 1 == 1 && !self.v31;
        Ok(ConnAck { session_present, reason, properties })
    }

    fn publish(&self, flags: u8, r: &mut Reader) -> Result<Publish, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0b11)
            .ok_or_else(|| DecodeError::new(ErrorKind::InvalidQoS, "MQTT-3.3.1-4"))?;
        let dup = flags & 0b1000 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::new(ErrorKind::DupOnQoS0, "MQTT-3.3.1-2"));
        }
        // The hint's bytes need no check; any other name is checked here, before the fields
        // behind it (the order of the errors a malformed packet gets).
        let span = r.string_span()?;
        let (known, raw) = match self.hint.filter(|h| h.as_bytes() == r.span(span)) {
            Some(h) => (Some(h.clone()), Bytes::new()),
            None => (None, r.checked_span(span)?),
        };
        let packet_id = if qos == QoS::AtMostOnce { None } else { Some(self.packet_id(r)?) };
        let properties = self.properties(r, PropertyContext::Publish)?;
        let topic = if known.is_some() {
            known
        } else if raw.is_empty() && self.v5 {
            // A v5 PUBLISH may leave the topic empty and name it by alias (§3.3.2.3.4).
            if properties.topic_alias().is_none() {
                return Err(DecodeError::new(ErrorKind::EmptyTopicWithoutAlias, "MQTT-3.3.2-1"));
            }
            None
        } else {
            Some(TopicName::from_wire(raw)?)
        };
        Ok(Publish {
            dup,
            qos,
            retain: flags & 1 != 0,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })
    }

    fn pub_resp(&self, r: &mut Reader, packet_type: PacketType) -> Result<PubResp, DecodeError> {
        let packet_id = self.packet_id(r)?;
        let ctx = match packet_type {
            PacketType::PubAck | PacketType::PubRec => ReasonContext::PubAckRec,
            _ => ReasonContext::PubRelComp,
        };
        let pt = packet_type as u8;
        // v5 §3.4.2.1: the reason code and properties may be omitted (Success, none).
        let reason = if self.v5 && r.remaining() > 0 {
            self.reason(r.u8()?, ctx, pt)?
        } else {
            ReasonCode::Success
        };
        let properties = if self.v5 && r.remaining() > 0 {
            self.bounded(r, PropertyContext::PubResp)?
        } else {
            Properties::new()
        };
        Ok(PubResp { packet_id, reason, properties })
    }

    fn subscribe(&self, r: &mut Reader) -> Result<Subscribe, DecodeError> {
        let packet_id = self.packet_id(r)?;
        let properties = self.properties(r, PropertyContext::Subscribe)?;
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            let filter = TopicFilter::new(r.string()?, self.v5)?;
            let opts = self.subscription_options(r.u8()?, &filter)?;
            filters.push((filter, opts));
        }
        if filters.is_empty() {
            let spec = self.spec("MQTT-3.8.3-2", "MQTT-3.8.3-3");
            return Err(DecodeError::new(ErrorKind::NoTopicFilters, spec));
        }
        Ok(Subscribe { packet_id, filters, properties })
    }

    fn subscription_options(
        &self,
        byte: u8,
        filter: &str,
    ) -> Result<SubscriptionOptions, DecodeError> {
        let reserved_mask = if self.v5 { 0b1100_0000 } else { 0b1111_1100 };
        let reserved_spec = self.spec("MQTT-3.8.3-5", "MQTT-3-8.3-4");
        if byte & reserved_mask != 0 {
            return Err(DecodeError::new(ErrorKind::SubscriptionOptionsReserved, reserved_spec));
        }
        // v5 makes Maximum QoS 3 a Protocol Error; 3.1.1 makes it malformed.
        let qos = QoS::from_u8(byte & 0b11).ok_or_else(|| {
            if self.v5 {
                DecodeError::new(ErrorKind::InvalidMaximumQoS, "§3.8.3.1")
            } else {
                DecodeError::new(ErrorKind::InvalidQoS, "MQTT-3-8.3-4")
            }
        })?;
        let no_local = byte & 0b0100 != 0;
        if no_local && is_shared(filter) {
            return Err(DecodeError::new(ErrorKind::NoLocalOnSharedSubscription, "MQTT-3.8.3-4"));
        }
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::new(ErrorKind::InvalidRetainHandling, "§3.8.3.1")),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn suback(&self, r: &mut Reader) -> Result<SubAck, DecodeError> {
        let packet_id = self.packet_id(r)?;
        let properties = self.properties(r, PropertyContext::SubAck)?;
        let mut reasons = Vec::with_capacity(r.remaining().min(64));
        while r.remaining() > 0 {
            let byte = r.u8()?;
            let reason = if self.v5 {
                self.reason(byte, ReasonContext::SubAck, 9)?
            } else {
                match byte {
                    0 => ReasonCode::Success,
                    1 => ReasonCode::GrantedQoS1,
                    2 => ReasonCode::GrantedQoS2,
                    0x80 if !self.v31 => ReasonCode::UnspecifiedError,
                    _ => {
                        return Err(DecodeError::new(
                            ErrorKind::InvalidReasonCode { packet_type: 9, code: byte },
                            "MQTT-3.9.3-2",
                        ))
                    }
                }
            };
            reasons.push(reason);
        }
        if reasons.is_empty() {
            // One code per filter of the SUBSCRIBE, which has at least one ([MQTT-3.8.4-6] in
            // 5.0, [MQTT-3.8.4-5] in 3.1.1).
            let spec = self.spec("MQTT-3.8.4-6", "MQTT-3.8.4-5");
            return Err(DecodeError::new(ErrorKind::NoReasonCodes { packet_type: 9 }, spec));
        }
        Ok(SubAck { packet_id, reasons, properties })
    }

    fn unsubscribe(&self, r: &mut Reader) -> Result<Unsubscribe, DecodeError> {
        let packet_id = self.packet_id(r)?;
        let properties = self.properties(r, PropertyContext::Unsubscribe)?;
        let mut filters = Vec::new();
        while r.remaining() > 0 {
            filters.push(TopicFilter::new(r.string()?, self.v5)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::new(ErrorKind::NoTopicFilters, "MQTT-3.10.3-2"));
        }
        Ok(Unsubscribe { packet_id, filters, properties })
    }

    fn unsuback(&self, r: &mut Reader) -> Result<UnsubAck, DecodeError> {
        let packet_id = self.packet_id(r)?;
        let properties = self.properties(r, PropertyContext::UnsubAck)?;
        let mut reasons = Vec::new();
        while self.v5 && r.remaining() > 0 {
            reasons.push(self.reason(r.u8()?, ReasonContext::UnsubAck, 11)?);
        }
        if self.v5 && reasons.is_empty() {
            // v5: one code per filter of the UNSUBSCRIBE ([MQTT-3.11.3-1]), which has at least
            // one ([MQTT-3.10.3-2]). A 3.1.1 UNSUBACK has no payload.
            let kind = ErrorKind::NoReasonCodes { packet_type: 11 };
            return Err(DecodeError::new(kind, "MQTT-3.11.3-1"));
        }
        Ok(UnsubAck { packet_id, reasons, properties })
    }

    fn reason_packet(
        &self,
        r: &mut Reader,
        ctx: ReasonContext,
    ) -> Result<ReasonPacket, DecodeError> {
        // v5 §3.14.2.1 / §3.15.2.1: a remaining length of 0 means Success and no properties.
        if !self.v5 || r.remaining() == 0 {
            return Ok(ReasonPacket::new(ReasonCode::Success));
        }
        let pt = if ctx == ReasonContext::Auth { 15 } else { 14 };
        let reason = self.reason(r.u8()?, ctx, pt)?;
        let properties = if r.remaining() > 0 {
            let pctx = if pt == 15 { PropertyContext::Auth } else { PropertyContext::Disconnect };
            self.bounded(r, pctx)?
        } else {
            Properties::new()
        };
        Ok(ReasonPacket { reason, properties })
    }
}

/// CONNECT names its own version, so it is decoded before the connection has one.
fn decode_connect(r: &mut Reader, budget: UserPropertyBudget) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V31,
        ("MQTT", _) | ("MQIsdp", _) => {
            return Err(DecodeError::new(
                ErrorKind::UnsupportedProtocolLevel(level),
                "MQTT-3.1.2-2",
            ))
        }
        _ => return Err(DecodeError::new(ErrorKind::InvalidProtocolName, "MQTT-3.1.2-1")),
    };
    decode_connect_rest(r, version, budget).map_err(|e| e.for_version(version))
}

/// CONNECT after its protocol name and level.
fn decode_connect_rest(
    r: &mut Reader,
    version: ProtocolVersion,
    budget: UserPropertyBudget,
) -> Result<Connect, DecodeError> {
    let d = Dec {
        v5: version.is_v5(),
        v31: version == ProtocolVersion::V31,
        budget: Cell::new(budget),
        hint: None,
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::new(ErrorKind::ConnectReservedFlag, "MQTT-3.1.2-3"));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && will_qos_bits != 0 {
        let spec = d.spec("MQTT-3.1.2-11", "MQTT-3.1.2-13");
        return Err(DecodeError::new(ErrorKind::WillFlagsWithoutWill, spec));
    }
    if !will_flag && will_retain {
        let spec = d.spec("MQTT-3.1.2-13", "MQTT-3.1.2-15");
        return Err(DecodeError::new(ErrorKind::WillFlagsWithoutWill, spec));
    }
    let will_qos = QoS::from_u8(will_qos_bits).ok_or_else(|| {
        DecodeError::new(ErrorKind::InvalidQoS, d.spec("MQTT-3.1.2-12", "MQTT-3.1.2-14"))
    })?;
    // MQTT 5 allows a password without a user name (§3.1.2.9); 3.x does not.
    if !d.v5 && has_password && !has_username {
        return Err(DecodeError::new(ErrorKind::PasswordWithoutUsername, "MQTT-3.1.2-22"));
    }
    let keep_alive_secs = r.u16()?;
    let properties = d.properties(r, PropertyContext::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = d.properties(r, PropertyContext::Will)?;
        let topic = TopicName::from_wire(r.string_bytes()?)?;
        let payload = r.binary()?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string()?) } else { None };
    let password = if has_password { Some(r.binary()?) } else { None };
    Ok(Connect {
        version,
        clean_start: flags & 0x02 != 0,
        keep_alive_secs,
        client_id,
        will,
        username,
        password,
        properties,
    })
}
