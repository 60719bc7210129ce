//! Property tests for the codec (`src/codec`), for MQTT 3.1, 3.1.1 and 5.0:
//!
//! - every valid packet round-trips: `decode(encode(p)) == p`, and `encoded_len` is what
//!   `encode` writes;
//! - arbitrary bytes (raw, behind a valid fixed header, or a mutated valid encoding) never make
//!   the decoder panic or consume more than it was given;
//! - every proper prefix of a valid encoding is "need more bytes" (`Ok(None)`), untouched.
//!
//! The strategies generate only *valid* packets: for v3 only what v3 can carry (no properties,
//! `Success` reasons, v3 CONNACK and SUBACK codes, no AUTH); for v5 only properties and reason
//! codes that the spec allows in that packet, with in-range values and no forbidden duplicates.
//! The checks themselves are the bodies in `tern::codec::fuzzing`, which the cargo-fuzz targets in
//! `tests/fuzz/` also call.
//!
//! Cases per property default to 256 to keep CI fast on 2 cores; set `PROPTEST_CASES` to run more.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::TestRunner;
use tern::codec::fuzzing::{check_round_trip, decode_stream};
use tern::codec::primitives::put_varint;
use tern::codec::properties::{id, SUBSCRIPTION_IDENTIFIER_MAX};
use tern::codec::reason::ALL_REASON_CODES;
use tern::codec::{
    decode, encode, encoded_len, ConnAck, Connect, Packet, PacketId, Properties, Property,
    PropertyContext, ProtocolVersion, PubResp, Publish, QoS, ReasonCode, ReasonContext,
    ReasonPacket, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
    Will,
};

const ALL_VERSIONS: [ProtocolVersion; 3] =
    [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5];

/// 256 cases per property unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 256;
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Primitive strategies
// ---------------------------------------------------------------------------------------------

/// A character allowed in a UTF-8 string field (anything but U+0000, [MQTT-1.5.4-2]). Mostly
/// ASCII so topic structure is exercised, sometimes any scalar value.
fn field_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        1 => any::<char>().prop_filter("no U+0000", |c| *c != '\0'),
    ]
}

fn string(max: usize) -> impl Strategy<Value = String> {
    vec(field_char(), 0..=max).prop_map(String::from_iter)
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// One topic level without wildcards or separators.
fn topic_level() -> impl Strategy<Value = String> {
    vec(field_char().prop_filter("no / + #", |c| !matches!(c, '/' | '+' | '#')), 0..6)
        .prop_map(String::from_iter)
}

/// A valid topic name: non-empty, no wildcards ([MQTT-4.7.3-1], [MQTT-3.3.2-2]).
fn topic_name() -> impl Strategy<Value = String> {
    vec(topic_level(), 1..5).prop_map(|levels| {
        let name = levels.join("/");
        if name.is_empty() {
            "t".to_owned()
        } else {
            name
        }
    })
}

/// A valid topic filter: `+` alone in a level, `#` alone in the last level, optionally a
/// `$share/{name}/` prefix ([MQTT-4.7.1-*], [MQTT-4.8.2-*]).
fn topic_filter() -> impl Strategy<Value = tern::codec::TopicFilter> {
    let level = prop_oneof![3 => topic_level(), 1 => Just("+".to_owned())];
    let share_name = vec(topic_level(), 1..2).prop_map(|l| {
        let name = l.concat();
        if name.is_empty() {
            "g".to_owned()
        } else {
            name
        }
    });
    (vec(level, 1..5), any::<bool>(), proptest::option::weighted(0.2, share_name))
        .prop_map(|(mut levels, hash, share)| {
            if hash {
                levels.push("#".to_owned());
            }
            let mut filter = levels.join("/");
            if filter.is_empty() {
                filter.push('#');
            }
            match share {
                Some(name) => format!("$share/{name}/{filter}"),
                None => filter,
            }
        })
        .prop_map(|f| {
            tern::codec::TopicFilter::new(f, true).expect("the strategy makes valid filters")
        })
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|v| PacketId::new(v).expect("1..=65535 is non-zero"))
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

/// A reason code the spec allows in `ctx` (v5).
fn reason(ctx: ReasonContext) -> impl Strategy<Value = ReasonCode> {
    let allowed: Vec<ReasonCode> =
        ALL_REASON_CODES.iter().copied().filter(|c| c.allowed_in(ctx)).collect();
    proptest::sample::select(allowed)
}

// ---------------------------------------------------------------------------------------------
// Properties (v5)
// ---------------------------------------------------------------------------------------------

/// Every property identifier of §2.2.2.2.
const ALL_PROPERTY_IDS: [u8; 27] = [
    id::PAYLOAD_FORMAT_INDICATOR,
    id::MESSAGE_EXPIRY_INTERVAL,
    id::CONTENT_TYPE,
    id::RESPONSE_TOPIC,
    id::CORRELATION_DATA,
    id::SUBSCRIPTION_IDENTIFIER,
    id::SESSION_EXPIRY_INTERVAL,
    id::ASSIGNED_CLIENT_IDENTIFIER,
    id::SERVER_KEEP_ALIVE,
    id::AUTHENTICATION_METHOD,
    id::AUTHENTICATION_DATA,
    id::REQUEST_PROBLEM_INFORMATION,
    id::WILL_DELAY_INTERVAL,
    id::REQUEST_RESPONSE_INFORMATION,
    id::RESPONSE_INFORMATION,
    id::SERVER_REFERENCE,
    id::REASON_STRING,
    id::RECEIVE_MAXIMUM,
    id::TOPIC_ALIAS_MAXIMUM,
    id::TOPIC_ALIAS,
    id::MAXIMUM_QOS,
    id::RETAIN_AVAILABLE,
    id::USER_PROPERTY,
    id::MAXIMUM_PACKET_SIZE,
    id::WILDCARD_SUBSCRIPTION_AVAILABLE,
    id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    id::SHARED_SUBSCRIPTION_AVAILABLE,
];

/// A property with identifier `pid` and a value in its allowed range.
fn property(pid: u8) -> BoxedStrategy<Property> {
    use Property as P;
    let flag = || 0..=1u8;
    match pid {
        id::PAYLOAD_FORMAT_INDICATOR => flag().prop_map(P::PayloadFormatIndicator).boxed(),
        id::MESSAGE_EXPIRY_INTERVAL => any::<u32>().prop_map(P::MessageExpiryInterval).boxed(),
        id::CONTENT_TYPE => string(12).prop_map(P::ContentType).boxed(),
        // [MQTT-3.3.2-14]: a topic name.
        id::RESPONSE_TOPIC => topic_name().prop_map(P::ResponseTopic).boxed(),
        id::CORRELATION_DATA => binary(12).prop_map(P::CorrelationData).boxed(),
        id::SUBSCRIPTION_IDENTIFIER => {
            (1..=SUBSCRIPTION_IDENTIFIER_MAX).prop_map(P::SubscriptionIdentifier).boxed()
        }
        id::SESSION_EXPIRY_INTERVAL => any::<u32>().prop_map(P::SessionExpiryInterval).boxed(),
        id::ASSIGNED_CLIENT_IDENTIFIER => string(12).prop_map(P::AssignedClientIdentifier).boxed(),
        id::SERVER_KEEP_ALIVE => any::<u16>().prop_map(P::ServerKeepAlive).boxed(),
        id::AUTHENTICATION_METHOD => string(12).prop_map(P::AuthenticationMethod).boxed(),
        id::AUTHENTICATION_DATA => binary(12).prop_map(P::AuthenticationData).boxed(),
        id::REQUEST_PROBLEM_INFORMATION => flag().prop_map(P::RequestProblemInformation).boxed(),
        id::WILL_DELAY_INTERVAL => any::<u32>().prop_map(P::WillDelayInterval).boxed(),
        id::REQUEST_RESPONSE_INFORMATION => flag().prop_map(P::RequestResponseInformation).boxed(),
        id::RESPONSE_INFORMATION => string(12).prop_map(P::ResponseInformation).boxed(),
        id::SERVER_REFERENCE => string(12).prop_map(P::ServerReference).boxed(),
        id::REASON_STRING => string(12).prop_map(P::ReasonString).boxed(),
        id::RECEIVE_MAXIMUM => (1..=u16::MAX).prop_map(P::ReceiveMaximum).boxed(),
        id::TOPIC_ALIAS_MAXIMUM => any::<u16>().prop_map(P::TopicAliasMaximum).boxed(),
        id::TOPIC_ALIAS => (1..=u16::MAX).prop_map(P::TopicAlias).boxed(),
        id::MAXIMUM_QOS => flag().prop_map(P::MaximumQoS).boxed(),
        id::RETAIN_AVAILABLE => flag().prop_map(P::RetainAvailable).boxed(),
        id::USER_PROPERTY => {
            (string(8), string(8)).prop_map(|(k, v)| P::UserProperty(k, v)).boxed()
        }
        id::MAXIMUM_PACKET_SIZE => (1..=u32::MAX).prop_map(P::MaximumPacketSize).boxed(),
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
            flag().prop_map(P::WildcardSubscriptionAvailable).boxed()
        }
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            flag().prop_map(P::SubscriptionIdentifierAvailable).boxed()
        }
        id::SHARED_SUBSCRIPTION_AVAILABLE => {
            flag().prop_map(P::SharedSubscriptionAvailable).boxed()
        }
        other => panic!("no strategy for property {other:#04x}"),
    }
}

/// Whether a property with identifier `pid` may appear in `ctx`, as the codec's own table says.
fn id_allowed_in(pid: u8, ctx: PropertyContext) -> bool {
    // `allowed_in` depends only on the identifier, so any value of the property will do.
    let mut runner = TestRunner::deterministic();
    let sample = property(pid).new_tree(&mut runner).expect("strategy yields a value").current();
    sample.allowed_in(ctx)
}

/// A property list valid in `ctx`: only allowed identifiers, and a second copy only of User
/// Property (and of Subscription Identifier in PUBLISH, §3.3.2.3.8).
fn properties(ctx: PropertyContext) -> BoxedStrategy<Properties> {
    let allowed: Vec<BoxedStrategy<Property>> = ALL_PROPERTY_IDS
        .iter()
        .filter(|&&pid| id_allowed_in(pid, ctx))
        .map(|&pid| property(pid))
        .collect();
    assert!(!allowed.is_empty(), "User Property is allowed everywhere");
    vec(Union::new(allowed), 0..6)
        .prop_map(move |list| {
            let mut seen = [false; 64];
            list.into_iter()
                .filter(|p| {
                    let pid = p.id();
                    let repeatable = pid == id::USER_PROPERTY
                        || (pid == id::SUBSCRIPTION_IDENTIFIER && ctx == PropertyContext::Publish);
                    let first = !seen[pid as usize];
                    seen[pid as usize] = true;
                    repeatable || first
                })
                .collect()
        })
        .boxed()
}

/// Empty for v3, a valid v5 list otherwise.
fn props_for(v: ProtocolVersion, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    if v.is_v5() {
        properties(ctx)
    } else {
        Just(Properties::new()).boxed()
    }
}

// ---------------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------------

fn will(v: ProtocolVersion) -> impl Strategy<Value = Will> {
    (topic_name(), binary(32), qos(), any::<bool>(), props_for(v, PropertyContext::Will)).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic: tern::codec::TopicName::new(topic).expect("the strategy makes valid names"),
            payload,
            qos,
            retain,
            properties,
        },
    )
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        (any::<bool>(), any::<u16>(), string(23)),
        proptest::option::of(will(v)),
        proptest::option::of(string(12)),
        proptest::option::of(binary(12)),
        props_for(v, PropertyContext::Connect),
    )
        .prop_map(
            move |(
                (clean_start, keep_alive_secs, client_id),
                will,
                username,
                password,
                properties,
            )| {
                // MQTT 3.x: no password without a user name ([MQTT-3.1.2-22]); v5 allows it.
                let password = if v.is_v5() || username.is_some() { password } else { None };
                Packet::Connect(Box::new(Connect {
                    version: v,
                    clean_start,
                    keep_alive_secs,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reason = if v.is_v5() {
        reason(ReasonContext::ConnAck).boxed()
    } else {
        (0..=5u8)
            .prop_map(|c| ReasonCode::from_v3_connack(c).expect("0..=5 are v3 return codes"))
            .boxed()
    };
    // MQTT 3.1 has no Session Present flag.
    let present =
        if v == ProtocolVersion::V31 { Just(false).boxed() } else { any::<bool>().boxed() };
    (present, reason, props_for(v, PropertyContext::ConnAck))
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck { session_present, reason, properties })
        })
        .boxed()
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    // v5 may leave the topic empty when a Topic Alias names it (§3.3.2.3.4).
    let topic = if v.is_v5() {
        prop_oneof![4 => topic_name(), 1 => Just(String::new())].boxed()
    } else {
        topic_name().boxed()
    };
    (
        (qos(), any::<bool>(), any::<bool>()),
        topic,
        packet_id(),
        props_for(v, PropertyContext::Publish),
        prop_oneof![4 => binary(64), 1 => binary(400)],
        1..=u16::MAX,
    )
        .prop_map(|((qos, dup, retain), topic, id, mut properties, payload, alias)| {
            if topic.is_empty() && properties.topic_alias().is_none() {
                properties.push(Property::TopicAlias(alias));
            }
            let at_most_once = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                // [MQTT-3.3.1-2]: DUP is 0 for QoS 0.
                dup: dup && !at_most_once,
                qos,
                retain,
                topic: tern::codec::TopicName::new(topic).ok(), // empty: named by the alias
                packet_id: if at_most_once { None } else { Some(id) },
                properties,
                payload,
            })
        })
}

fn pub_resp(v: ProtocolVersion, ctx: ReasonContext) -> BoxedStrategy<PubResp> {
    if v.is_v5() {
        (packet_id(), reason(ctx), properties(PropertyContext::PubResp))
            .prop_map(|(packet_id, reason, properties)| PubResp { packet_id, reason, properties })
            .boxed()
    } else {
        packet_id().prop_map(PubResp::success).boxed()
    }
}

fn subscription_options(v: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if !v.is_v5() {
        return qos().prop_map(|qos| SubscriptionOptions { qos, ..Default::default() }).boxed();
    }
    let rh = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), rh)
        .prop_map(|(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
            qos,
            no_local,
            retain_as_published,
            retain_handling,
        })
        .boxed()
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let filter = (topic_filter(), subscription_options(v)).prop_map(|(f, mut o)| {
        // [MQTT-3.8.3-4]: No Local is not allowed on a shared subscription.
        if f.starts_with("$share/") {
            o.no_local = false;
        }
        (f, o)
    });
    (packet_id(), vec(filter, 1..6), props_for(v, PropertyContext::Subscribe)).prop_map(
        |(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe { packet_id, filters, properties })
        },
    )
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = match v {
        ProtocolVersion::V5 => reason(ReasonContext::SubAck).boxed(),
        // 3.1.1 adds the 0x80 failure code; 3.1 only grants a QoS.
        ProtocolVersion::V311 => proptest::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed(),
        ProtocolVersion::V31 => proptest::sample::select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
        ])
        .boxed(),
    };
    (packet_id(), vec(code, 1..6), props_for(v, PropertyContext::SubAck)).prop_map(
        |(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck { packet_id, reasons, properties })
        },
    )
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (packet_id(), vec(topic_filter(), 1..6), props_for(v, PropertyContext::Unsubscribe)).prop_map(
        |(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe { packet_id, filters, properties })
        },
    )
}

fn unsuback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    if !v.is_v5() {
        // A v3 UNSUBACK has no payload.
        return packet_id()
            .prop_map(|packet_id| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    reasons: Vec::new(),
                    properties: Properties::new(),
                })
            })
            .boxed();
    }
    (packet_id(), vec(reason(ReasonContext::UnsubAck), 1..6), properties(PropertyContext::UnsubAck))
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck { packet_id, reasons, properties })
        })
        .boxed()
}

fn reason_packet(v: ProtocolVersion, ctx: ReasonContext) -> BoxedStrategy<ReasonPacket> {
    if !v.is_v5() {
        return Just(ReasonPacket::new(ReasonCode::Success)).boxed();
    }
    let pctx = if ctx == ReasonContext::Auth {
        PropertyContext::Auth
    } else {
        PropertyContext::Disconnect
    };
    (reason(ctx), properties(pctx))
        .prop_map(|(reason, properties)| ReasonPacket { reason, properties })
        .boxed()
}

/// Any valid packet of `v`, every packet type equally likely.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut types: Vec<BoxedStrategy<Packet>> = vec![
        connect(v).boxed(),
        connack(v),
        publish(v).boxed(),
        pub_resp(v, ReasonContext::PubAckRec).prop_map(Packet::PubAck).boxed(),
        pub_resp(v, ReasonContext::PubAckRec).prop_map(Packet::PubRec).boxed(),
        pub_resp(v, ReasonContext::PubRelComp).prop_map(Packet::PubRel).boxed(),
        pub_resp(v, ReasonContext::PubRelComp).prop_map(Packet::PubComp).boxed(),
        subscribe(v).boxed(),
        suback(v).boxed(),
        unsubscribe(v).boxed(),
        unsuback(v),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        reason_packet(v, ReasonContext::Disconnect).prop_map(Packet::Disconnect).boxed(),
    ];
    if v.is_v5() {
        types.push(reason_packet(v, ReasonContext::Auth).prop_map(Packet::Auth).boxed());
    }
    Union::new(types).boxed()
}

/// A version and a valid packet of that version.
fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    prop_oneof![
        packet(ProtocolVersion::V31).prop_map(|p| (ProtocolVersion::V31, p)),
        packet(ProtocolVersion::V311).prop_map(|p| (ProtocolVersion::V311, p)),
        packet(ProtocolVersion::V5).prop_map(|p| (ProtocolVersion::V5, p)),
    ]
}

/// A version and 1 to 4 valid packets of that version.
fn versioned_packets() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    prop_oneof![
        vec(packet(ProtocolVersion::V31), 1..5).prop_map(|p| (ProtocolVersion::V31, p)),
        vec(packet(ProtocolVersion::V311), 1..5).prop_map(|p| (ProtocolVersion::V311, p)),
        vec(packet(ProtocolVersion::V5), 1..5).prop_map(|p| (ProtocolVersion::V5, p)),
    ]
}

/// Encodes `p` for `v`, checking that `encoded_len` is exactly what `encode` writes.
fn encode_checked(p: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    let written = encode(p, v, &mut buf).expect("a valid packet encodes");
    assert_eq!(written, buf.len(), "encode returns the bytes it wrote");
    assert_eq!(encoded_len(p, v), Ok(written), "encoded_len matches encode");
    buf
}

/// A valid fixed header for any packet type, announcing `remaining` bytes.
fn fixed_header(type_nibble: u8, publish_flags: u8, remaining: usize) -> Vec<u8> {
    let flags = match type_nibble {
        3 => publish_flags & 0x0F,
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(&[(type_nibble << 4) | flags]);
    put_varint(&mut out, remaining);
    out.to_vec()
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// decode(encode(p)) == p for every version, and encoded_len == bytes written.
    #[test]
    fn valid_packets_round_trip((v, p) in versioned_packet()) {
        let mut buf = encode_checked(&p, v);
        check_round_trip(&p, v);
        let decoded = decode(&mut buf, v, usize::MAX)
            .expect("a valid encoding decodes")
            .expect("a whole packet is buffered");
        prop_assert_eq!(decoded, p);
        prop_assert!(buf.is_empty());
    }

    /// Several valid packets back to back, fed in random chunks, all come out, in order.
    #[test]
    fn packet_streams_decode_in_order(
        (v, packets) in versioned_packets(),
        chunk in 1usize..64,
    ) {
        let mut wire = Vec::new();
        for p in &packets {
            wire.extend_from_slice(&encode_checked(p, v));
        }
        prop_assert_eq!(decode_stream(&wire, v, chunk), packets.len());
        let mut buf = BytesMut::from(&wire[..]);
        for p in &packets {
            let got = decode(&mut buf, v, usize::MAX).expect("valid").expect("whole");
            prop_assert_eq!(&got, p);
        }
        prop_assert!(buf.is_empty());
    }

    /// Every proper prefix of a valid encoding is "need more bytes" and is left untouched.
    #[test]
    fn every_prefix_needs_more_bytes((v, p) in versioned_packet()) {
        let wire = encode_checked(&p, v);
        for cut in 0..wire.len() {
            let mut prefix = BytesMut::from(&wire[..cut]);
            let got = decode(&mut prefix, v, usize::MAX);
            prop_assert_eq!(got, Ok(None), "prefix of {} of {} bytes", cut, wire.len());
            prop_assert_eq!(&prefix[..], &wire[..cut]);
        }
    }

    /// Arbitrary bytes never panic and never consume more than given, in any chunking.
    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512), chunk in 1usize..80) {
        for v in ALL_VERSIONS {
            decode_stream(&data, v, chunk);
        }
    }

    /// Arbitrary bodies behind a well-formed fixed header reach the body decoders.
    #[test]
    fn arbitrary_bodies_never_panic(
        type_nibble in 1u8..=15,
        publish_flags in any::<u8>(),
        body in vec(any::<u8>(), 0..300),
        slack in 0usize..4,
        chunk in 1usize..80,
    ) {
        // The header announces the body's length, or a little more (a truncated stream).
        let mut data = fixed_header(type_nibble, publish_flags, body.len() + slack);
        data.extend_from_slice(&body);
        for v in ALL_VERSIONS {
            decode_stream(&data, v, chunk);
        }
    }

    /// A valid encoding with a few bytes overwritten: deep in the decoder, never a panic.
    #[test]
    fn mutated_packets_never_panic(
        (v, p) in versioned_packet(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        chunk in 1usize..80,
    ) {
        let mut wire = encode_checked(&p, v).to_vec();
        for (at, byte) in edits {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        decode_stream(&wire, v, chunk);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------------------------

/// Remaining lengths at each variable byte integer boundary (§1.5.5 Table 1-1) round-trip.
#[test]
fn publish_at_remaining_length_boundaries() {
    // Topic "t" (3 bytes) + packet id (2) + v5 property length (1): the payload fills the rest.
    for (v, overhead) in [(ProtocolVersion::V311, 5), (ProtocolVersion::V5, 6)] {
        for remaining in [127usize, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let p = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: Some(tern::codec::TopicName::new("t").expect("valid topic")),
                packet_id: PacketId::new(1),
                properties: Properties::new(),
                payload: Bytes::from(vec![0xA5; remaining - overhead]),
            });
            let wire = encode_checked(&p, v);
            let varint_len = match remaining {
                0..=127 => 1,
                128..=16_383 => 2,
                16_384..=2_097_151 => 3,
                _ => 4,
            };
            assert_eq!(wire.len(), 1 + varint_len + remaining, "remaining length {remaining}");
            check_round_trip(&p, v);
        }
    }
}

/// The compact v5 forms: PUBACK-like packets with Success and no properties are 4 bytes, and
/// DISCONNECT/AUTH with Success and no properties are 2; the model survives the compaction.
#[test]
fn v5_compact_acknowledgements_round_trip() {
    let id = PacketId::new(7).expect("non-zero");
    let ack = PubResp::success(id);
    for p in [
        Packet::PubAck(ack.clone()),
        Packet::PubRec(ack.clone()),
        Packet::PubRel(ack.clone()),
        Packet::PubComp(ack),
    ] {
        assert_eq!(encode_checked(&p, ProtocolVersion::V5).len(), 4);
        check_round_trip(&p, ProtocolVersion::V5);
    }
    for p in [
        Packet::Disconnect(ReasonPacket::new(ReasonCode::Success)),
        Packet::Auth(ReasonPacket::new(ReasonCode::Success)),
    ] {
        assert_eq!(encode_checked(&p, ProtocolVersion::V5).len(), 2);
        check_round_trip(&p, ProtocolVersion::V5);
    }
}
