//! Byte vectors for the wire codec, written by hand from the OASIS specifications of MQTT 3.1.1
//! and 5.0 (and the IBM MQTT 3.1 specification for protocol name `MQIsdp`, level 3).
//!
//! - Valid vectors: every control packet of every version. Each one must decode to the packet
//!   built explicitly in the test, decode the same when fed one byte at a time, and encode back to
//!   exactly the same bytes. Forms that are valid but not the encoder's choice (a v5 PUBACK that
//!   spells out a Success reason, say) are decode-only.
//! - Malformed vectors: one or more for every rule the decoder enforces. Each asserts the
//!   normative statement id the error cites (`spec`) and the reason code a v5 server answers with.
//!
//! Ids in test names and comments: `MQTT-x.y.z-n` are normative statements (5.0 unless the test
//! says 3.1.1, whose numbering differs); `§x.y.z` are sections without a numbered statement.

use bytes::{Bytes, BytesMut};
use hex_literal::hex;
use tern::codec::ProtocolVersion::{self, V31, V311, V5};
use tern::codec::{
    check, decode, encode, encoded_len, ConnAck, Connect, EncodeError, ErrorKind, FixedHeader,
    Packet, PacketId, PacketType, Properties, Property, PubResp, Publish, QoS, ReasonCode,
    ReasonPacket, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
    Will,
};

/// Large enough for every vector here; the size limit has its own tests.
const MAX: usize = 1 << 20;

const V3: [ProtocolVersion; 2] = [V31, V311];
const ALL: [ProtocolVersion; 3] = [V31, V311, V5];

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn id(v: u16) -> PacketId {
    PacketId::new(v).expect("test packet ids are non-zero")
}

fn props(list: Vec<Property>) -> Properties {
    Properties::from(list)
}

fn user(k: &str, v: &str) -> Property {
    Property::UserProperty(k.to_owned(), v.to_owned())
}

fn publish(qos: QoS, topic: &str, packet_id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        // "" stands for the v5 alias-only form (no topic name on the wire).
        topic: tern::codec::TopicName::new(topic).ok(),
        packet_id: packet_id.map(id),
        properties: Properties::new(),
        payload: Bytes::from_static(payload),
    }
}

fn pub_resp(packet_id: u16, reason: ReasonCode, properties: Vec<Property>) -> PubResp {
    PubResp { packet_id: id(packet_id), reason, properties: props(properties) }
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos, ..SubscriptionOptions::default() }
}

fn connack(session_present: bool, reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck { session_present, reason, properties: Properties::new() })
}

/// Decodes `bytes`, which must hold exactly one whole packet.
#[track_caller]
fn decode_one(version: ProtocolVersion, bytes: &[u8]) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = match decode(&mut buf, version, MAX) {
        Ok(Some(p)) => p,
        Ok(None) => panic!("{version:?}: incomplete packet"),
        Err(e) => panic!("{version:?}: {e}"),
    };
    assert!(buf.is_empty(), "{version:?}: decode left {} bytes", buf.len());
    packet
}

#[track_caller]
fn encode_bytes(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    let n = encode(packet, version, &mut out).unwrap_or_else(|e| panic!("{version:?}: {e}"));
    assert_eq!(n, out.len(), "encode returns the bytes written");
    out.to_vec()
}

/// Feeds `bytes` one at a time: `Ok(None)` with the buffer untouched until the last byte, then
/// the packet, with nothing left over.
#[track_caller]
fn assert_streams(version: ProtocolVersion, bytes: &[u8], expected: &Packet) {
    let mut buf = BytesMut::new();
    for (i, &b) in bytes[..bytes.len() - 1].iter().enumerate() {
        buf.extend_from_slice(&[b]);
        assert_eq!(decode(&mut buf, version, MAX), Ok(None), "{version:?}: {} bytes", i + 1);
        assert_eq!(&buf[..], &bytes[..=i], "{version:?}: Ok(None) must not consume");
    }
    buf.extend_from_slice(&bytes[bytes.len() - 1..]);
    assert_eq!(decode(&mut buf, version, MAX), Ok(Some(expected.clone())), "{version:?}");
    assert!(buf.is_empty());
}

/// A valid, canonical vector: decodes to `expected` (whole and byte by byte) and `expected`
/// encodes to exactly `bytes`.
#[track_caller]
fn vector(version: ProtocolVersion, bytes: &[u8], expected: &Packet) {
    assert_eq!(&decode_one(version, bytes), expected, "{version:?}: decode");
    assert_streams(version, bytes, expected);
    assert_eq!(encode_bytes(expected, version), bytes, "{version:?}: encode");
    assert_eq!(encoded_len(expected, version), Ok(bytes.len()), "{version:?}: encoded_len");
}

/// A valid vector in a form the encoder does not produce: decode only.
#[track_caller]
fn decodes_to(version: ProtocolVersion, bytes: &[u8], expected: &Packet) {
    assert_eq!(&decode_one(version, bytes), expected, "{version:?}: decode");
}

/// A malformed vector: decoding fails citing `spec`, with `reason` as the v5 reason code.
/// Returns the error kind for further checks.
#[track_caller]
fn reject(version: ProtocolVersion, bytes: &[u8], spec: &str, reason: ReasonCode) -> ErrorKind {
    let mut buf = BytesMut::from(bytes);
    let err = match decode(&mut buf, version, MAX) {
        Err(e) => e,
        Ok(p) => panic!("{version:?}: expected [{spec}], got {p:?}"),
    };
    assert_eq!(err.spec, spec, "{version:?}: {err}");
    assert_eq!(err.reason_code(), reason, "{version:?}: {err}");
    assert!(err.to_string().starts_with(&format!("[{spec}] ")), "message cites the id: {err}");
    err.kind
}

// ------------------------------------------------------------------------------------------------
// CONNECT (§3.1)
// ------------------------------------------------------------------------------------------------

/// 3.1.1 §3.1: protocol name "MQTT", level 4, Clean Session, keep alive 60, client id "tern".
#[test]
fn connect_v311_minimal() {
    let bytes = hex!("10 10" "00 04 4D 51 54 54" "04" "02" "00 3C" "00 04 74 65 72 6E");
    let expected = Packet::Connect(Box::new(Connect {
        version: V311,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: "tern".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::new(),
    }));
    vector(V311, &bytes, &expected);
    // CONNECT carries its own version: the connection's version does not matter.
    assert_eq!(decode_one(V5, &bytes), expected);
}

/// MQTT 3.1: protocol name "MQIsdp", level 3, with user name and password.
#[test]
fn connect_v31_with_username_and_password() {
    let bytes = hex!(
        "10 17" "00 06 4D 51 49 73 64 70" "03" "C2" "00 0A"
        "00 02 63 31" // client id "c1"
        "00 01 75" // user name "u"
        "00 02 70 77" // password "pw"
    );
    let expected = Packet::Connect(Box::new(Connect {
        version: V31,
        clean_start: true,
        keep_alive_secs: 10,
        client_id: "c1".into(),
        will: None,
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties::new(),
    }));
    vector(V31, &bytes, &expected);
}

/// 3.1.1 §3.1.2.5-3.1.2.9, §3.1.3: Will (QoS 1, retained), user name and a binary password;
/// Clean Session 0. Flags 0xEC = user name | password | will retain | will QoS 1 | will flag.
#[test]
fn connect_v311_with_will_username_password() {
    let bytes = hex!(
        "10 23" "00 04 4D 51 54 54" "04" "EC" "01 2C"
        "00 02 69 64" // client id "id"
        "00 03 77 2F 74" // will topic "w/t"
        "00 03 62 79 65" // will payload "bye"
        "00 04 75 73 65 72" // user name "user"
        "00 03 00 FF 01" // password: binary, not UTF-8
    );
    let expected = Packet::Connect(Box::new(Connect {
        version: V311,
        clean_start: false,
        keep_alive_secs: 300,
        client_id: "id".into(),
        will: Some(Will {
            topic: tern::codec::TopicName::new("w/t").expect("valid topic"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::new(),
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(&[0x00, 0xFF, 0x01])),
        properties: Properties::new(),
    }));
    vector(V311, &bytes, &expected);
}

/// 3.1.1 [MQTT-3.1.3-6]: a zero-byte client id; a QoS 2 will with an empty payload; keep alive 0.
#[test]
fn connect_v311_empty_client_id_and_will_payload() {
    let bytes = hex!("10 11" "00 04 4D 51 54 54" "04" "16" "00 00" "00 00" "00 01 61" "00 00");
    let expected = Packet::Connect(Box::new(Connect {
        version: V311,
        clean_start: true,
        keep_alive_secs: 0,
        client_id: String::new(),
        will: Some(Will {
            topic: tern::codec::TopicName::new("a").expect("valid topic"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties::new(),
        }),
        username: None,
        password: None,
        properties: Properties::new(),
    }));
    vector(V311, &bytes, &expected);
}

/// 5.0 §3.1.2: level 5 and an empty property list.
#[test]
fn connect_v5_minimal() {
    let bytes = hex!("10 0E" "00 04 4D 51 54 54" "05" "02" "00 3C" "00" "00 01 61");
    let expected = Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: "a".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::new(),
    }));
    vector(V5, &bytes, &expected);
}

/// 5.0 §3.1.2.11 and §3.1.3.2: every CONNECT property, every Will property, user properties
/// with a repeated key kept in order (§3.1.2.11.8), a will, user name and password.
#[test]
fn connect_v5_full_properties_and_will_properties() {
    let bytes = hex!(
        "10 71" "00 04 4D 51 54 54" "05" "CE" "00 1E"
        "2F" // property length 47
        "11 00 00 0E 10" // Session Expiry Interval 3600
        "21 00 14" // Receive Maximum 20
        "27 00 01 00 00" // Maximum Packet Size 65536
        "22 00 0A" // Topic Alias Maximum 10
        "17 00" // Request Problem Information 0
        "26 00 02 6B 31 00 02 76 31" // User Property k1=v1
        "26 00 02 6B 31 00 02 76 32" // User Property k1=v2
        "15 00 01 6D" // Authentication Method "m"
        "16 00 02 01 02" // Authentication Data 01 02
        "19 01" // Request Response Information 1
        "00 03 63 69 64" // client id "cid"
        "21" // will property length 33
        "18 00 00 00 05" // Will Delay Interval 5
        "01 01" // Payload Format Indicator 1
        "02 00 00 00 3C" // Message Expiry Interval 60
        "03 00 03 74 2F 70" // Content Type "t/p"
        "08 00 01 72" // Response Topic "r"
        "09 00 01 AB" // Correlation Data AB
        "26 00 01 61 00 01 62" // User Property a=b
        "00 04 77 69 6C 6C" // will topic "will"
        "00 01 78" // will payload "x"
        "00 01 75" // user name "u"
        "00 02 70 77" // password "pw"
    );
    let expected = Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive_secs: 30,
        client_id: "cid".into(),
        will: Some(Will {
            topic: tern::codec::TopicName::new("will").expect("valid topic"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: props(vec![
                Property::WillDelayInterval(5),
                Property::PayloadFormatIndicator(1),
                Property::MessageExpiryInterval(60),
                Property::ContentType("t/p".into()),
                Property::ResponseTopic("r".into()),
                Property::CorrelationData(Bytes::from_static(&[0xAB])),
                user("a", "b"),
            ]),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"pw")),
        properties: props(vec![
            Property::SessionExpiryInterval(3600),
            Property::ReceiveMaximum(20),
            Property::MaximumPacketSize(65_536),
            Property::TopicAliasMaximum(10),
            Property::RequestProblemInformation(0),
            user("k1", "v1"),
            user("k1", "v2"),
            Property::AuthenticationMethod("m".into()),
            Property::AuthenticationData(Bytes::from_static(&[1, 2])),
            Property::RequestResponseInformation(1),
        ]),
    }));
    vector(V5, &bytes, &expected);
    let Packet::Connect(c) = decode_one(V5, &bytes) else { panic!("not a CONNECT") };
    let users: Vec<_> = c.properties.user_properties().collect();
    assert_eq!(users, [("k1", "v1"), ("k1", "v2")], "user properties keep their order");
}

/// 5.0 §3.1.2.9: a password without a user name is allowed in v5 (3.1.1 forbids it).
#[test]
fn connect_v5_password_without_username() {
    let bytes = hex!("10 11" "00 04 4D 51 54 54" "05" "42" "00 3C" "00" "00 01 61" "00 01 70");
    let expected = Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: "a".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"p")),
        properties: Properties::new(),
    }));
    vector(V5, &bytes, &expected);
}

// ------------------------------------------------------------------------------------------------
// CONNACK (§3.2)
// ------------------------------------------------------------------------------------------------

/// 3.1.1 §3.2.2.3 Table 3.1: return codes 0 to 5, and Session Present (§3.2.2.2).
#[test]
fn connack_v311_return_codes() {
    let codes = [
        (0x00, ReasonCode::Success),
        (0x01, ReasonCode::UnsupportedProtocolVersion),
        (0x02, ReasonCode::ClientIdentifierNotValid),
        (0x03, ReasonCode::ServerUnavailable),
        (0x04, ReasonCode::BadUserNameOrPassword),
        (0x05, ReasonCode::NotAuthorized),
    ];
    for (byte, reason) in codes {
        for version in V3 {
            vector(version, &[0x20, 0x02, 0x00, byte], &connack(false, reason));
        }
    }
    vector(V311, &hex!("20 02 01 00"), &connack(true, ReasonCode::Success));
}

/// MQTT 3.1 has no Session Present flag: it is neither decoded nor encoded.
#[test]
fn connack_v31_has_no_session_present() {
    decodes_to(V31, &hex!("20 02 01 00"), &connack(false, ReasonCode::Success));
    assert_eq!(encode_bytes(&connack(true, ReasonCode::Success), V31), hex!("20 02 00 00"));
}

/// 5.0 §3.2.2: reason codes with an empty property list.
#[test]
fn connack_v5_reasons() {
    vector(V5, &hex!("20 03 00 00 00"), &connack(false, ReasonCode::Success));
    vector(V5, &hex!("20 03 01 00 00"), &connack(true, ReasonCode::Success));
    vector(V5, &hex!("20 03 00 87 00"), &connack(false, ReasonCode::NotAuthorized));
    vector(V5, &hex!("20 03 00 84 00"), &connack(false, ReasonCode::UnsupportedProtocolVersion));
    vector(V5, &hex!("20 03 00 9F 00"), &connack(false, ReasonCode::ConnectionRateExceeded));
}

/// 5.0 §3.2.2.3: the CONNACK properties a server announces.
#[test]
fn connack_v5_properties() {
    let bytes = hex!(
        "20 37" "00" "00"
        "34" // property length 52
        "12 00 03 67 65 6E" // Assigned Client Identifier "gen"
        "13 00 14" // Server Keep Alive 20
        "24 01" // Maximum QoS 1
        "25 00" // Retain Available 0
        "28 01" // Wildcard Subscription Available 1
        "29 00" // Subscription Identifiers Available 0
        "2A 01" // Shared Subscription Available 1
        "22 00 05" // Topic Alias Maximum 5
        "21 00 0A" // Receive Maximum 10
        "27 00 00 10 00" // Maximum Packet Size 4096
        "1F 00 02 6F 6B" // Reason String "ok"
        "1A 00 02 72 69" // Response Information "ri"
        "11 00 00 00 00" // Session Expiry Interval 0
        "26 00 01 78 00 01 79" // User Property x=y
    );
    let expected = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: props(vec![
            Property::AssignedClientIdentifier("gen".into()),
            Property::ServerKeepAlive(20),
            Property::MaximumQoS(1),
            Property::RetainAvailable(0),
            Property::WildcardSubscriptionAvailable(1),
            Property::SubscriptionIdentifierAvailable(0),
            Property::SharedSubscriptionAvailable(1),
            Property::TopicAliasMaximum(5),
            Property::ReceiveMaximum(10),
            Property::MaximumPacketSize(4096),
            Property::ReasonString("ok".into()),
            Property::ResponseInformation("ri".into()),
            Property::SessionExpiryInterval(0),
            user("x", "y"),
        ]),
    });
    vector(V5, &bytes, &expected);

    // §4.11 Server redirection: Use another server with a Server Reference.
    let expected = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::UseAnotherServer,
        properties: props(vec![Property::ServerReference("s".into())]),
    });
    vector(V5, &hex!("20 07 00 9C 04 1C 00 01 73"), &expected);
}

// ------------------------------------------------------------------------------------------------
// PUBLISH (§3.3)
// ------------------------------------------------------------------------------------------------

/// §3.3.1: QoS 0, 1, 2 with DUP and RETAIN, in both 3.x versions; payload is opaque binary.
#[test]
fn publish_v3_qos_dup_retain() {
    for version in V3 {
        let p = publish(QoS::AtMostOnce, "a/b", None, b"hello");
        vector(version, &hex!("30 0A 00 03 61 2F 62 68 65 6C 6C 6F"), &Packet::Publish(p));

        let mut p = publish(QoS::AtMostOnce, "a/b", None, b"");
        p.retain = true;
        vector(version, &hex!("31 05 00 03 61 2F 62"), &Packet::Publish(p));

        let mut p = publish(QoS::AtLeastOnce, "a/b", Some(1), b"x");
        p.dup = true;
        vector(version, &hex!("3A 08 00 03 61 2F 62 00 01 78"), &Packet::Publish(p));

        let mut p = publish(QoS::ExactlyOnce, "a/b", Some(0xFFFF), &[0x00, 0xFF]);
        p.retain = true;
        vector(version, &hex!("35 09 00 03 61 2F 62 FF FF 00 FF"), &Packet::Publish(p));

        let mut p = publish(QoS::ExactlyOnce, "a/b", Some(2), b"");
        p.dup = true;
        p.retain = true;
        vector(version, &hex!("3D 07 00 03 61 2F 62 00 02"), &Packet::Publish(p));
    }
}

/// §2.1.4 / 3.1.1 §2.2.3: a remaining length of 130 takes two bytes (0x82 0x01).
#[test]
fn publish_two_byte_remaining_length() {
    let mut bytes = hex!("30 82 01 00 01 74").to_vec();
    bytes.extend_from_slice(&[0x55; 127]);
    let payload: &'static [u8] = &[0x55; 127];
    let p = publish(QoS::AtMostOnce, "t", None, payload);
    for version in V3 {
        vector(version, &bytes, &Packet::Publish(p.clone()));
    }
    // v5: one byte of the 130 is the empty property list.
    let mut bytes = hex!("30 82 01 00 01 74 00").to_vec();
    bytes.extend_from_slice(&[0x55; 126]);
    let p = publish(QoS::AtMostOnce, "t", None, &payload[..126]);
    vector(V5, &bytes, &Packet::Publish(p));
}

/// [MQTT-1.5.4-3] / 3.1.1 [MQTT-1.5.3-3]: U+FEFF is kept, never stripped.
#[test]
fn publish_topic_keeps_bom() {
    let p = publish(QoS::AtMostOnce, "\u{FEFF}a", None, b"");
    vector(V311, &hex!("30 06 00 04 EF BB BF 61"), &Packet::Publish(p));
}

/// 5.0 §3.3.2.3: QoS 0 with an empty property list.
#[test]
fn publish_v5_no_properties() {
    let p = publish(QoS::AtMostOnce, "a/b", None, b"hello");
    vector(V5, &hex!("30 0B 00 03 61 2F 62 00 68 65 6C 6C 6F"), &Packet::Publish(p));
}

/// 5.0 §3.3.2.3.4: a Topic Alias set up with a topic, then used with a zero-length topic.
#[test]
fn publish_v5_topic_alias_and_empty_topic() {
    let mut p = publish(QoS::AtMostOnce, "a/b", None, b"");
    p.properties = props(vec![Property::TopicAlias(2)]);
    vector(V5, &hex!("30 09 00 03 61 2F 62 03 23 00 02"), &Packet::Publish(p));

    let mut p = publish(QoS::AtLeastOnce, "", Some(7), b"p");
    p.properties = props(vec![Property::TopicAlias(2)]);
    vector(V5, &hex!("32 09 00 00 00 07 03 23 00 02 70"), &Packet::Publish(p));
}

/// 5.0 §3.3.2.3: several properties, two Subscription Identifiers (§3.3.2.3.8, one needing a
/// two-byte variable byte integer) and two User Properties kept in order.
#[test]
fn publish_v5_properties_and_subscription_identifiers() {
    let bytes = hex!(
        "34 36" "00 03 73 2F 74" "00 2A"
        "2C" // property length 44
        "01 01" // Payload Format Indicator 1
        "02 00 00 01 2C" // Message Expiry Interval 300
        "03 00 04 6A 73 6F 6E" // Content Type "json"
        "08 00 03 72 2F 31" // Response Topic "r/1"
        "09 00 02 CA FE" // Correlation Data
        "26 00 01 6B 00 01 76" // User Property k=v
        "0B 01" // Subscription Identifier 1
        "0B 80 01" // Subscription Identifier 128
        "26 00 01 6B 00 01 77" // User Property k=w
        "7B 7D" // payload "{}"
    );
    let mut p = publish(QoS::ExactlyOnce, "s/t", Some(42), b"{}");
    p.properties = props(vec![
        Property::PayloadFormatIndicator(1),
        Property::MessageExpiryInterval(300),
        Property::ContentType("json".into()),
        Property::ResponseTopic("r/1".into()),
        Property::CorrelationData(Bytes::from_static(&[0xCA, 0xFE])),
        user("k", "v"),
        Property::SubscriptionIdentifier(1),
        Property::SubscriptionIdentifier(128),
        user("k", "w"),
    ]);
    vector(V5, &bytes, &Packet::Publish(p.clone()));
    let ids: Vec<u32> = p.properties.subscription_identifiers().collect();
    assert_eq!(ids, [1, 128]);
}

/// 5.0 QoS 1/2 PUBLISH with DUP and RETAIN.
#[test]
fn publish_v5_dup_retain() {
    let mut p = publish(QoS::AtLeastOnce, "a", Some(3), b"z");
    p.dup = true;
    p.retain = true;
    vector(V5, &hex!("3B 07 00 01 61 00 03 00 7A"), &Packet::Publish(p));
}

// ------------------------------------------------------------------------------------------------
// PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4-§3.7)
// ------------------------------------------------------------------------------------------------

#[test]
fn pub_responses_v3() {
    for version in V3 {
        let ok = |v| pub_resp(v, ReasonCode::Success, vec![]);
        vector(version, &hex!("40 02 00 01"), &Packet::PubAck(ok(1)));
        vector(version, &hex!("50 02 00 02"), &Packet::PubRec(ok(2)));
        vector(version, &hex!("62 02 00 03"), &Packet::PubRel(ok(3)));
        vector(version, &hex!("70 02 FF FF"), &Packet::PubComp(ok(0xFFFF)));
    }
}

/// 5.0 §3.4.2.1 (and §3.5.2.1, §3.6.2.1, §3.7.2.1): remaining length 2 means Success without
/// properties; 3 means a reason without properties; longer carries a property list.
#[test]
fn pub_responses_v5_short_and_full_forms() {
    let ok = |v| pub_resp(v, ReasonCode::Success, vec![]);
    vector(V5, &hex!("40 02 00 01"), &Packet::PubAck(ok(1)));
    vector(V5, &hex!("50 02 00 01"), &Packet::PubRec(ok(1)));
    vector(V5, &hex!("62 02 00 01"), &Packet::PubRel(ok(1)));
    vector(V5, &hex!("70 02 00 01"), &Packet::PubComp(ok(1)));

    let r = |c| pub_resp(1, c, vec![]);
    vector(V5, &hex!("40 03 00 01 10"), &Packet::PubAck(r(ReasonCode::NoMatchingSubscribers)));
    vector(V5, &hex!("50 03 00 01 80"), &Packet::PubRec(r(ReasonCode::UnspecifiedError)));
    vector(V5, &hex!("62 03 00 01 92"), &Packet::PubRel(r(ReasonCode::PacketIdentifierNotFound)));
    vector(V5, &hex!("70 03 00 01 92"), &Packet::PubComp(r(ReasonCode::PacketIdentifierNotFound)));

    let p = pub_resp(1, ReasonCode::NotAuthorized, vec![Property::ReasonString("no".into())]);
    vector(V5, &hex!("40 09 00 01 87 05 1F 00 02 6E 6F"), &Packet::PubAck(p));
    let p = pub_resp(5, ReasonCode::Success, vec![user("a", "b")]);
    vector(V5, &hex!("70 0B 00 05 00 07 26 00 01 61 00 01 62"), &Packet::PubComp(p));
    let p = pub_resp(9, ReasonCode::QuotaExceeded, vec![user("a", "b")]);
    vector(V5, &hex!("50 0B 00 09 97 07 26 00 01 61 00 01 62"), &Packet::PubRec(p));
}

/// 5.0 §3.4.2.1: a Success reason spelled out, and an empty property list spelled out, are
/// valid; the encoder picks the shortest form.
#[test]
fn pub_responses_v5_long_forms_of_success() {
    let ok = Packet::PubAck(pub_resp(1, ReasonCode::Success, vec![]));
    decodes_to(V5, &hex!("40 03 00 01 00"), &ok);
    decodes_to(V5, &hex!("40 04 00 01 00 00"), &ok);
    let nms = Packet::PubAck(pub_resp(1, ReasonCode::NoMatchingSubscribers, vec![]));
    decodes_to(V5, &hex!("40 04 00 01 10 00"), &nms);
    assert_eq!(encode_bytes(&ok, V5), hex!("40 02 00 01"));
}

// ------------------------------------------------------------------------------------------------
// SUBSCRIBE (§3.8), SUBACK (§3.9)
// ------------------------------------------------------------------------------------------------

/// 3.1.1 §3.8.3: filters with requested QoS, wildcards included.
#[test]
fn subscribe_v3() {
    let bytes = hex!(
        "82 12" "00 0A"
        "00 03 61 2F 2B 01" // "a/+" QoS 1
        "00 01 23 00" // "#" QoS 0
        "00 03 78 2F 79 02" // "x/y" QoS 2
    );
    let expected = Packet::Subscribe(Subscribe {
        packet_id: id(10),
        filters: vec![
            (
                tern::codec::TopicFilter::new("a/+", true).expect("valid filter"),
                opts(QoS::AtLeastOnce),
            ),
            (
                tern::codec::TopicFilter::new("#", true).expect("valid filter"),
                opts(QoS::AtMostOnce),
            ),
            (
                tern::codec::TopicFilter::new("x/y", true).expect("valid filter"),
                opts(QoS::ExactlyOnce),
            ),
        ],
        properties: Properties::new(),
    });
    for version in V3 {
        vector(version, &bytes, &expected);
    }
}

/// 5.0 §3.8.2.1 and §3.8.3.1: Subscription Identifier and User Property; options No Local,
/// Retain As Published and Retain Handling 0, 1, 2; a shared subscription (§4.8.2).
#[test]
fn subscribe_v5_options_and_properties() {
    let bytes = hex!(
        "82 25" "00 0B"
        "09" "0B 05" "26 00 01 6B 00 01 76"
        "00 03 61 2F 62" "1D" // QoS 1, No Local, Retain As Published, Retain Handling 1
        "00 0C 24 73 68 61 72 65 2F 67 2F 63 2F 23" "22" // "$share/g/c/#" QoS 2, RH 2
        "00 01 64" "00"
    );
    let expected = Packet::Subscribe(Subscribe {
        packet_id: id(11),
        filters: vec![
            (
                tern::codec::TopicFilter::new("a/b", true).expect("valid filter"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendIfNew,
                },
            ),
            (
                tern::codec::TopicFilter::new("$share/g/c/#", true).expect("valid filter"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::DoNotSend,
                },
            ),
            (
                tern::codec::TopicFilter::new("d", true).expect("valid filter"),
                opts(QoS::AtMostOnce),
            ),
        ],
        properties: props(vec![Property::SubscriptionIdentifier(5), user("k", "v")]),
    });
    vector(V5, &bytes, &expected);
}

/// v5-only subscription options cannot be said in 3.1.1, whose upper option bits are reserved
/// ([MQTT-3.8.3-4]): the encoder refuses them rather than drop them; QoS alone encodes.
#[test]
fn subscribe_v5_options_are_refused_for_v3() {
    let sub = |options| {
        Packet::Subscribe(Subscribe {
            packet_id: id(1),
            filters: vec![(
                tern::codec::TopicFilter::new("a", true).expect("valid filter"),
                options,
            )],
            properties: props(vec![Property::SubscriptionIdentifier(5)]),
        })
    };
    let v5_only = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    assert!(matches!(
        encode(&sub(v5_only), V311, &mut BytesMut::new()),
        Err(EncodeError::NotForVersion { spec: "MQTT-3.8.3-4", .. })
    ));
    let plain = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    assert_eq!(encode_bytes(&sub(plain), V311), hex!("82 06 00 01 00 01 61 01"));
}

/// 3.1.1 §3.9.3: granted QoS 0, 1, 2 and Failure 0x80.
#[test]
fn suback_v3() {
    let expected = Packet::SubAck(SubAck {
        packet_id: id(10),
        reasons: vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ],
        properties: Properties::new(),
    });
    vector(V311, &hex!("90 06 00 0A 01 00 02 80"), &expected);
    // MQTT 3.1 has no failure code.
    let expected = Packet::SubAck(SubAck {
        packet_id: id(1),
        reasons: vec![ReasonCode::Success, ReasonCode::GrantedQoS2],
        properties: Properties::new(),
    });
    vector(V31, &hex!("90 04 00 01 00 02"), &expected);
}

/// 5.0 §3.9.3: SUBACK reason codes and a Reason String.
#[test]
fn suback_v5() {
    let expected = Packet::SubAck(SubAck {
        packet_id: id(11),
        reasons: vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::Success,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::SharedSubscriptionsNotSupported,
            ReasonCode::SubscriptionIdentifiersNotSupported,
            ReasonCode::WildcardSubscriptionsNotSupported,
            ReasonCode::NotAuthorized,
        ],
        properties: props(vec![Property::ReasonString("r".into())]),
    });
    vector(V5, &hex!("90 0F 00 0B 04 1F 00 01 72 01 02 00 8F 9E A1 A2 87"), &expected);
    let expected = Packet::SubAck(SubAck {
        packet_id: id(1),
        reasons: vec![ReasonCode::GrantedQoS1],
        properties: Properties::new(),
    });
    vector(V5, &hex!("90 04 00 01 00 01"), &expected);
}

// ------------------------------------------------------------------------------------------------
// UNSUBSCRIBE (§3.10), UNSUBACK (§3.11)
// ------------------------------------------------------------------------------------------------

#[test]
fn unsubscribe_v3() {
    let expected = Packet::Unsubscribe(Unsubscribe {
        packet_id: id(12),
        filters: vec![
            tern::codec::TopicFilter::new("a/b", true).expect("valid filter"),
            tern::codec::TopicFilter::new("#", true).expect("valid filter"),
        ],
        properties: Properties::new(),
    });
    for version in V3 {
        vector(version, &hex!("A2 0A 00 0C 00 03 61 2F 62 00 01 23"), &expected);
    }
}

#[test]
fn unsubscribe_v5() {
    let bytes = hex!(
        "A2 1B" "00 0D" "07 26 00 01 6B 00 01 76"
        "00 03 61 2F 2B" // "a/+"
        "00 0A 24 73 68 61 72 65 2F 67 2F 78" // "$share/g/x"
    );
    let expected = Packet::Unsubscribe(Unsubscribe {
        packet_id: id(13),
        filters: vec![
            tern::codec::TopicFilter::new("a/+", true).expect("valid filter"),
            tern::codec::TopicFilter::new("$share/g/x", true).expect("valid filter"),
        ],
        properties: props(vec![user("k", "v")]),
    });
    vector(V5, &bytes, &expected);
}

/// 3.1.1 §3.11.3: UNSUBACK has no payload.
#[test]
fn unsuback_v3() {
    let expected = Packet::UnsubAck(UnsubAck {
        packet_id: id(12),
        reasons: vec![],
        properties: Properties::new(),
    });
    for version in V3 {
        vector(version, &hex!("B0 02 00 0C"), &expected);
    }
}

/// 5.0 §3.11.3: one reason code per filter.
#[test]
fn unsuback_v5() {
    let expected = Packet::UnsubAck(UnsubAck {
        packet_id: id(13),
        reasons: vec![
            ReasonCode::Success,
            ReasonCode::NoSubscriptionExisted,
            ReasonCode::TopicFilterInvalid,
            ReasonCode::NotAuthorized,
            ReasonCode::UnspecifiedError,
            ReasonCode::ImplementationSpecificError,
            ReasonCode::PacketIdentifierInUse,
        ],
        properties: Properties::new(),
    });
    vector(V5, &hex!("B0 0A 00 0D 00 00 11 8F 87 80 83 91"), &expected);
    let expected = Packet::UnsubAck(UnsubAck {
        packet_id: id(13),
        reasons: vec![ReasonCode::Success],
        properties: props(vec![Property::ReasonString("r".into())]),
    });
    vector(V5, &hex!("B0 08 00 0D 04 1F 00 01 72 00"), &expected);
}

// ------------------------------------------------------------------------------------------------
// PINGREQ (§3.12), PINGRESP (§3.13), DISCONNECT (§3.14), AUTH (§3.15)
// ------------------------------------------------------------------------------------------------

#[test]
fn ping_all_versions() {
    for version in ALL {
        vector(version, &hex!("C0 00"), &Packet::PingReq);
        vector(version, &hex!("D0 00"), &Packet::PingResp);
    }
}

/// 3.1.1 §3.14: DISCONNECT has no variable header and no payload.
#[test]
fn disconnect_v3() {
    for version in V3 {
        vector(
            version,
            &hex!("E0 00"),
            &Packet::Disconnect(ReasonPacket::new(ReasonCode::Success)),
        );
    }
    // A v5 reason cannot be said in 3.x: refused, not dropped.
    let p = Packet::Disconnect(ReasonPacket::new(ReasonCode::DisconnectWithWill));
    assert!(matches!(
        encode(&p, V311, &mut BytesMut::new()),
        Err(EncodeError::NotForVersion { spec: "§3.14.2.1", .. })
    ));
}

/// 5.0 §3.14.2.1: remaining length 0 (Normal disconnection), 1 (reason only) and n (properties).
#[test]
fn disconnect_v5_0_1_n_bytes() {
    let d = |c| Packet::Disconnect(ReasonPacket::new(c));
    vector(V5, &hex!("E0 00"), &d(ReasonCode::Success));
    vector(V5, &hex!("E0 01 04"), &d(ReasonCode::DisconnectWithWill));
    vector(V5, &hex!("E0 01 8E"), &d(ReasonCode::SessionTakenOver));
    let bytes = hex!(
        "E0 12" "9C" "10"
        "1C 00 02 73 32" // Server Reference "s2"
        "11 00 00 00 0A" // Session Expiry Interval 10
        "1F 00 03 62 79 65" // Reason String "bye"
    );
    let expected = Packet::Disconnect(ReasonPacket {
        reason: ReasonCode::UseAnotherServer,
        properties: props(vec![
            Property::ServerReference("s2".into()),
            Property::SessionExpiryInterval(10),
            Property::ReasonString("bye".into()),
        ]),
    });
    vector(V5, &bytes, &expected);
    // Spelled-out Success and empty property list are valid too.
    decodes_to(V5, &hex!("E0 01 00"), &d(ReasonCode::Success));
    decodes_to(V5, &hex!("E0 02 00 00"), &d(ReasonCode::Success));
}

/// 5.0 §3.15: AUTH with remaining length 0 (Success) and with method and data.
#[test]
fn auth_v5() {
    vector(V5, &hex!("F0 00"), &Packet::Auth(ReasonPacket::new(ReasonCode::Success)));
    let bytes = hex!("F0 0D" "18" "0B" "15 00 02 6D 31" "16 00 03 01 02 03");
    let expected = Packet::Auth(ReasonPacket {
        reason: ReasonCode::ContinueAuthentication,
        properties: props(vec![
            Property::AuthenticationMethod("m1".into()),
            Property::AuthenticationData(Bytes::from_static(&[1, 2, 3])),
        ]),
    });
    vector(V5, &bytes, &expected);
    let expected = Packet::Auth(ReasonPacket {
        reason: ReasonCode::ReAuthenticate,
        properties: props(vec![Property::AuthenticationMethod("m1".into())]),
    });
    vector(V5, &hex!("F0 07 19 05 15 00 02 6D 31"), &expected);
}

// ------------------------------------------------------------------------------------------------
// Streaming
// ------------------------------------------------------------------------------------------------

/// Two packets and the start of a third in one buffer: they come out one at a time, and the
/// partial one stays buffered.
#[test]
fn stream_two_packets_then_partial() {
    let mut buf = BytesMut::from(&hex!("30 06 00 01 74 61 62 63" "C0 00" "32 07 00")[..]);
    let first = publish(QoS::AtMostOnce, "t", None, b"abc");
    assert_eq!(decode(&mut buf, V311, MAX), Ok(Some(Packet::Publish(first))));
    assert_eq!(decode(&mut buf, V311, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, V311, MAX), Ok(None));
    assert_eq!(&buf[..], hex!("32 07 00"));
    buf.extend_from_slice(&hex!("01 61 00 05 78 79"));
    let third = publish(QoS::AtLeastOnce, "a", Some(5), b"xy");
    assert_eq!(decode(&mut buf, V311, MAX), Ok(Some(Packet::Publish(third))));
    assert!(buf.is_empty());
}

/// The payload is a slice of the receive buffer, not a copy.
#[test]
fn stream_payload_is_zero_copy() {
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&hex!("30 08 00 01 74 01 02 03 04 05"));
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, V311, MAX) else { panic!("PUBLISH") };
    assert_eq!(&p.payload[..], [1, 2, 3, 4, 5]);
    let at = p.payload.as_ptr() as usize;
    assert!(at >= start && at + p.payload.len() <= end, "payload points into the buffer");
    assert_eq!(at, start + 5, "payload starts right after the topic");
}

/// `check` answers from the fixed header alone, and `Ok(None)` until the header is whole.
#[test]
fn check_reads_only_the_fixed_header() {
    assert_eq!(check(&[], MAX, Some(V5)), Ok(None));
    assert_eq!(check(&[0x30], MAX, Some(V5)), Ok(None));
    assert_eq!(check(&[0x30, 0x80], MAX, Some(V5)), Ok(None));
    let header = check(&[0x30, 0x82, 0x01], MAX, Some(V5)).expect("valid").expect("whole");
    let expected = FixedHeader {
        packet_type: PacketType::Publish,
        flags: 0,
        remaining_len: 130,
        header_len: 3,
    };
    assert_eq!(header, expected);
    assert_eq!(header.packet_len(), 133);
    // §1.5.5 Table 1-1: the largest remaining length, in four bytes.
    let header = check(&hex!("30 FF FF FF 7F"), usize::MAX, None).expect("valid").expect("whole");
    assert_eq!((header.remaining_len, header.header_len), (268_435_455, 5));
}

// ------------------------------------------------------------------------------------------------
// Malformed: fixed header, variable byte integers, sizes
// ------------------------------------------------------------------------------------------------

/// [MQTT-1.5.5-1]: a variable byte integer of at most four bytes.
#[test]
fn malformed_vbi_five_bytes_mqtt_1_5_5_1() {
    for version in ALL {
        let kind = reject(
            version,
            &hex!("30 FF FF FF FF 7F"),
            "MQTT-1.5.5-1",
            ReasonCode::MalformedPacket,
        );
        assert_eq!(kind, ErrorKind::MalformedVarInt);
        // Detected as soon as the fourth length byte has a continuation bit.
        let err = check(&hex!("30 80 80 80 80"), MAX, Some(version)).expect_err("5-byte VBI");
        assert_eq!(err.spec, "MQTT-1.5.5-1");
    }
}

/// [MQTT-1.5.5-1]: the minimum number of bytes, in the fixed header and inside a packet.
#[test]
fn malformed_vbi_not_minimal_mqtt_1_5_5_1() {
    for version in ALL {
        reject(version, &hex!("C0 80 00"), "MQTT-1.5.5-1", ReasonCode::MalformedPacket);
        reject(version, &hex!("30 FF 00"), "MQTT-1.5.5-1", ReasonCode::MalformedPacket);
    }
    // Property length 0 written in two bytes.
    reject(V5, &hex!("30 05 00 01 74 80 00"), "MQTT-1.5.5-1", ReasonCode::MalformedPacket);
    // Subscription Identifier 1 written in two bytes.
    reject(V5, &hex!("30 07 00 01 74 03 0B 81 00"), "MQTT-1.5.5-1", ReasonCode::MalformedPacket);
}

/// §2.1.2 (3.1.1 §2.2.1): packet type 0 is reserved.
#[test]
fn malformed_packet_type_0() {
    for version in ALL {
        let kind = reject(version, &hex!("00 00"), "§2.1.2", ReasonCode::ProtocolError);
        assert_eq!(kind, ErrorKind::ReservedPacketType(0));
    }
}

/// 5.0 [MQTT-2.1.3-1] and 3.1.1 [MQTT-2.2.2-1]/[MQTT-2.2.2-2]: every wrong flag nibble of every
/// packet type with fixed flags, both from `check` (header only) and `decode`.
#[test]
fn malformed_reserved_header_flags_mqtt_2_1_3_1_and_2_2_2_2() {
    let fixed: [(u8, u8); 14] = [
        (1, 0),
        (2, 0),
        (4, 0),
        (5, 0),
        (6, 2),
        (7, 0),
        (8, 2),
        (9, 0),
        (10, 2),
        (11, 0),
        (12, 0),
        (13, 0),
        (14, 0),
        (15, 0),
    ];
    for (packet_type, required) in fixed {
        for flags in (0..16u8).filter(|f| *f != required) {
            let first = (packet_type << 4) | flags;
            for (version, spec) in [(V5, "MQTT-2.1.3-1"), (V311, "MQTT-2.2.2-2")] {
                let expected = ErrorKind::InvalidHeaderFlags { packet_type, flags };
                let err = check(&[first], MAX, Some(version)).expect_err("bad flags");
                assert_eq!((&err.kind, err.spec), (&expected, spec), "{first:#04x}");
                let kind = reject(version, &[first, 0], spec, ReasonCode::MalformedPacket);
                assert_eq!(kind, expected);
            }
        }
    }
    // Before CONNECT the decoder uses the v5 id.
    let err = check(&[0x11], MAX, None).expect_err("bad flags");
    assert_eq!(err.spec, "MQTT-2.1.3-1");
    // Whole packets: PUBREL with 0011, SUBSCRIBE with 0000, UNSUBSCRIBE with DUP set.
    reject(V311, &hex!("63 02 00 01"), "MQTT-2.2.2-2", ReasonCode::MalformedPacket);
    reject(V5, &hex!("80 06 00 01 00 01 61 00"), "MQTT-2.1.3-1", ReasonCode::MalformedPacket);
    reject(V311, &hex!("AA 05 00 01 00 01 61"), "MQTT-2.2.2-2", ReasonCode::MalformedPacket);
}

/// MQTT 3.1 marks the fixed-header flags of non-PUBLISH packets "not used", and sets DUP when
/// re-sending PUBREL, SUBSCRIBE and UNSUBSCRIBE: a 3.1 connection accepts them.
#[test]
fn v31_accepts_dup_on_resent_subscribe_unsubscribe_pubrel() {
    let sub = Packet::Subscribe(Subscribe {
        packet_id: id(1),
        filters: vec![(
            tern::codec::TopicFilter::new("a/b", true).expect("valid filter"),
            opts(QoS::AtMostOnce),
        )],
        properties: Properties::new(),
    });
    decodes_to(V31, &hex!("8A 08 00 01 00 03 61 2F 62 00"), &sub);
    let unsub = Packet::Unsubscribe(Unsubscribe {
        packet_id: id(1),
        filters: vec![tern::codec::TopicFilter::new("a/b", true).expect("valid filter")],
        properties: Properties::new(),
    });
    decodes_to(V31, &hex!("AA 07 00 01 00 03 61 2F 62"), &unsub);
    let rel = Packet::PubRel(pub_resp(1, ReasonCode::Success, vec![]));
    decodes_to(V31, &hex!("6A 02 00 01"), &rel);
    // The encoder always writes the 3.1.1 values, which 3.1 also uses on a first send.
    assert_eq!(encode_bytes(&rel, V31), hex!("62 02 00 01"));
}

/// 5.0 [MQTT-3.2.2-15] (3.1.1 §2.2.3): a packet larger than the maximum is refused from its
/// fixed header, before the body is buffered.
#[test]
fn malformed_packet_too_large_from_header_alone() {
    // Remaining length 16383: only the three header bytes are present.
    for (version, spec) in [(V5, "MQTT-3.2.2-15"), (V311, "§2.2.3"), (V31, "§2.2.3")] {
        let err = check(&hex!("30 FF 7F"), 1000, Some(version)).expect_err("too large");
        assert_eq!(err.kind, ErrorKind::PacketTooLarge { size: 16_386, max: 1000 });
        assert_eq!((err.spec, err.reason_code()), (spec, ReasonCode::PacketTooLarge));
        let mut buf = BytesMut::from(&hex!("30 FF 7F")[..]);
        let err = decode(&mut buf, version, 1000).expect_err("too large");
        assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
    }
    // The limit counts the whole packet, fixed header included: 2 + 3 = 5.
    let packet = hex!("30 03 00 01 74");
    assert!(check(&packet, 5, Some(V5)).is_ok());
    let err = check(&packet, 4, Some(V5)).expect_err("too large");
    assert_eq!(err.kind, ErrorKind::PacketTooLarge { size: 5, max: 4 });
}

/// §2.1.4: the content ends inside a field (remaining length too short).
#[test]
fn malformed_remaining_length_too_short() {
    for version in ALL {
        reject(version, &hex!("40 01 00"), "§2.1.4", ReasonCode::MalformedPacket);
        // Topic length 5, only 3 bytes left.
        let kind =
            reject(version, &hex!("30 05 00 05 61 2F 62"), "§2.1.4", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::UnexpectedEnd);
    }
    // CONNECT cut inside the client id.
    let bytes = hex!("10 0C 00 04 4D 51 54 54 04 02 00 3C 00 04");
    reject(V311, &bytes, "§2.1.4", ReasonCode::MalformedPacket);
    // QoS 1 PUBLISH cut inside the packet id.
    reject(V311, &hex!("32 04 00 01 74 00"), "§2.1.4", ReasonCode::MalformedPacket);
    // v5 property length runs past the packet.
    reject(V5, &hex!("40 04 00 01 00 05"), "§2.1.4", ReasonCode::MalformedPacket);
    // v5 property runs past the property length (Message Expiry needs 4 bytes, 2 announced).
    reject(V5, &hex!("30 08 00 01 74 03 02 00 00 00"), "§2.1.4", ReasonCode::MalformedPacket);
}

/// §2.1.4: bytes left over after the last field (remaining length too long).
#[test]
fn malformed_remaining_length_too_long() {
    for version in V3 {
        let kind = reject(version, &hex!("40 03 00 01 00"), "§2.1.4", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::TrailingBytes);
        // 3.1.1 §3.11.3: UNSUBACK has no payload; §3.14: DISCONNECT has no body.
        reject(version, &hex!("B0 03 00 01 00"), "§2.1.4", ReasonCode::MalformedPacket);
        reject(version, &hex!("E0 01 00"), "§2.1.4", ReasonCode::MalformedPacket);
        reject(version, &hex!("20 03 00 00 00"), "§2.1.4", ReasonCode::MalformedPacket);
    }
    let bytes = hex!("10 11 00 04 4D 51 54 54 04 02 00 3C 00 04 74 65 72 6E FF");
    reject(V311, &bytes, "§2.1.4", ReasonCode::MalformedPacket);
    // v5 PUBACK with properties followed by a stray byte.
    reject(V5, &hex!("40 05 00 01 10 00 FF"), "§2.1.4", ReasonCode::MalformedPacket);
}

/// §3.12 / §3.13: PINGREQ and PINGRESP have no body.
#[test]
fn malformed_ping_with_body() {
    for version in ALL {
        reject(version, &hex!("C0 01 00"), "§2.1.4", ReasonCode::MalformedPacket);
        reject(version, &hex!("D0 02 00 00"), "§2.1.4", ReasonCode::MalformedPacket);
    }
}

// ------------------------------------------------------------------------------------------------
// Malformed: UTF-8 strings
// ------------------------------------------------------------------------------------------------

/// The UTF-8 statement of the connection's version: [MQTT-1.5.4-n] in 5.0, [MQTT-1.5.3-n] in
/// 3.1.1 (and 3.1, which has no numbered statements).
fn utf8_spec(version: ProtocolVersion, n: u8) -> &'static str {
    match (version, n) {
        (V5, 1) => "MQTT-1.5.4-1",
        (V5, _) => "MQTT-1.5.4-2",
        (_, 1) => "MQTT-1.5.3-1",
        (_, _) => "MQTT-1.5.3-2",
    }
}

/// [MQTT-1.5.4-1] (3.1.1 [MQTT-1.5.3-1]): ill-formed UTF-8 and surrogates.
#[test]
fn malformed_utf8_mqtt_1_5_4_1() {
    for version in ALL {
        let spec = utf8_spec(version, 1);
        // C3 28: a lead byte followed by a non-continuation byte.
        let bytes = hex!("30 04 00 02 C3 28");
        let kind = reject(version, &bytes, spec, ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::InvalidUtf8);
        // ED A0 80: U+D800 encoded as if it were a character.
        reject(version, &hex!("30 05 00 03 ED A0 80"), spec, ReasonCode::MalformedPacket);
        // C0 AF: overlong encoding of '/'.
        reject(version, &hex!("30 04 00 02 C0 AF"), spec, ReasonCode::MalformedPacket);
    }
    // In a CONNECT client id: the statement of the version the CONNECT names, whatever the
    // connection expected.
    let bytes = hex!("10 0F 00 04 4D 51 54 54 04 02 00 3C 00 03 ED BF BF");
    reject(V311, &bytes, "MQTT-1.5.3-1", ReasonCode::MalformedPacket);
    reject(V5, &bytes, "MQTT-1.5.3-1", ReasonCode::MalformedPacket);
    let bytes = hex!("10 10 00 04 4D 51 54 54 05 02 00 3C 00 00 03 ED BF BF");
    reject(V311, &bytes, "MQTT-1.5.4-1", ReasonCode::MalformedPacket);
}

/// [MQTT-1.5.4-2] (3.1.1 [MQTT-1.5.3-2]): U+0000 in a string.
#[test]
fn malformed_null_character_mqtt_1_5_4_2() {
    for version in ALL {
        let bytes = hex!("30 05 00 03 61 00 62");
        let kind = reject(version, &bytes, utf8_spec(version, 2), ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::NullCharacter);
    }
    // In a v5 User Property key.
    let bytes = hex!("30 0B 00 01 74 07 26 00 01 00 00 01 62");
    reject(V5, &bytes, "MQTT-1.5.4-2", ReasonCode::MalformedPacket);
    // In a SUBSCRIBE topic filter.
    reject(V311, &hex!("82 06 00 01 00 01 00 00"), "MQTT-1.5.3-2", ReasonCode::MalformedPacket);
}

/// A SUBACK without a reason code acknowledges no filter: every SUBSCRIBE has one, so it is
/// malformed ([MQTT-3.8.4-6] in 5.0, [MQTT-3.8.4-5] in 3.1.1); so is a v5 UNSUBACK without one
/// ([MQTT-3.11.3-1]). A 3.1.1 UNSUBACK has no payload at all.
#[test]
fn malformed_suback_unsuback_without_reason_codes() {
    let kind = reject(V5, &hex!("90 03 00 01 00"), "MQTT-3.8.4-6", ReasonCode::MalformedPacket);
    assert_eq!(kind, ErrorKind::NoReasonCodes { packet_type: 9 });
    reject(V311, &hex!("90 02 00 01"), "MQTT-3.8.4-5", ReasonCode::MalformedPacket);
    let kind = reject(V5, &hex!("B0 03 00 01 00"), "MQTT-3.11.3-1", ReasonCode::MalformedPacket);
    assert_eq!(kind, ErrorKind::NoReasonCodes { packet_type: 11 });
    decodes_to(
        V311,
        &hex!("B0 02 00 01"),
        &Packet::UnsubAck(UnsubAck {
            packet_id: id(1),
            reasons: vec![],
            properties: Properties::new(),
        }),
    );
}

// ------------------------------------------------------------------------------------------------
// Malformed: PUBLISH
// ------------------------------------------------------------------------------------------------

/// [MQTT-3.3.1-4]: both QoS bits set.
#[test]
fn malformed_publish_qos3_mqtt_3_3_1_4() {
    for version in ALL {
        let bytes = hex!("36 07 00 03 61 2F 62 00 01");
        let kind = reject(version, &bytes, "MQTT-3.3.1-4", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::InvalidQoS);
    }
}

/// [MQTT-3.3.1-2]: DUP must be 0 on QoS 0.
#[test]
fn malformed_publish_dup_on_qos0_mqtt_3_3_1_2() {
    for version in ALL {
        let bytes = hex!("38 05 00 03 61 2F 62");
        let kind = reject(version, &bytes, "MQTT-3.3.1-2", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::DupOnQoS0);
    }
}

/// 5.0 [MQTT-2.2.1-3], 3.1.1 [MQTT-2.3.1-1]: packet identifier 0.
#[test]
fn malformed_packet_id_zero() {
    let cases: [(&[u8], &[u8]); 4] = [
        // PUBLISH QoS 1
        (&hex!("32 07 00 03 61 2F 62 00 00"), &hex!("32 08 00 03 61 2F 62 00 00 00")),
        // SUBSCRIBE
        (&hex!("82 08 00 00 00 03 61 2F 62 00"), &hex!("82 09 00 00 00 00 03 61 2F 62 00")),
        // UNSUBSCRIBE
        (&hex!("A2 07 00 00 00 03 61 2F 62"), &hex!("A2 08 00 00 00 00 03 61 2F 62")),
        // PUBACK
        (&hex!("40 02 00 00"), &hex!("40 02 00 00")),
    ];
    for (v3, v5) in cases {
        for version in V3 {
            let kind = reject(version, v3, "MQTT-2.3.1-1", ReasonCode::MalformedPacket);
            assert_eq!(kind, ErrorKind::ZeroPacketId);
        }
        reject(V5, v5, "MQTT-2.2.1-3", ReasonCode::MalformedPacket);
    }
    for first in [0x50, 0x62, 0x70, 0x90, 0xB0] {
        reject(V311, &[first, 2, 0, 0], "MQTT-2.3.1-1", ReasonCode::MalformedPacket);
    }
}

/// [MQTT-3.3.2-2]: no wildcards in a topic name.
#[test]
fn malformed_publish_wildcard_in_topic_mqtt_3_3_2_2() {
    for version in V3 {
        let kind = reject(
            version,
            &hex!("30 05 00 03 61 2F 2B"),
            "MQTT-3.3.2-2",
            ReasonCode::TopicNameInvalid,
        );
        assert_eq!(kind, ErrorKind::WildcardInTopicName);
        reject(
            version,
            &hex!("30 05 00 03 61 2F 23"),
            "MQTT-3.3.2-2",
            ReasonCode::TopicNameInvalid,
        );
    }
    reject(V5, &hex!("30 06 00 03 61 2F 23 00"), "MQTT-3.3.2-2", ReasonCode::TopicNameInvalid);
    reject(V5, &hex!("30 05 00 02 61 2B 00"), "MQTT-3.3.2-2", ReasonCode::TopicNameInvalid);
}

/// [MQTT-4.7.3-1]: a 3.x topic name is at least one character long.
#[test]
fn malformed_publish_empty_topic_v3_mqtt_4_7_3_1() {
    for version in V3 {
        let kind =
            reject(version, &hex!("30 02 00 00"), "MQTT-4.7.3-1", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::EmptyTopic);
    }
}

/// 5.0 §3.3.2.3.4: a zero-length topic is a Protocol Error without a Topic Alias.
#[test]
fn malformed_publish_v5_empty_topic_without_alias() {
    let kind = reject(V5, &hex!("30 03 00 00 00"), "MQTT-3.3.2-1", ReasonCode::ProtocolError);
    assert_eq!(kind, ErrorKind::EmptyTopicWithoutAlias);
    // Other properties do not stand in for the alias.
    let bytes = hex!("30 05 00 00 02 01 01");
    reject(V5, &bytes, "MQTT-3.3.2-1", ReasonCode::ProtocolError);
}

/// 5.0 [MQTT-3.3.2-14]: the Response Topic is a topic name, without wildcards.
#[test]
fn malformed_publish_v5_response_topic_wildcard_mqtt_3_3_2_14() {
    let bytes = hex!("30 09 00 01 74 05 08 00 02 72 23");
    let kind = reject(V5, &bytes, "MQTT-3.3.2-14", ReasonCode::TopicNameInvalid);
    assert_eq!(kind, ErrorKind::WildcardInTopicName);
}

/// [MQTT-3.1.3-...] 3.1.1 §3.1.3.2: the Will Topic is a topic name: no wildcards, not empty.
#[test]
fn malformed_connect_will_topic() {
    let bytes = hex!("10 11 00 04 4D 51 54 54 04 06 00 00 00 00 00 01 23 00 00");
    reject(V311, &bytes, "MQTT-3.3.2-2", ReasonCode::TopicNameInvalid);
    let bytes = hex!("10 10 00 04 4D 51 54 54 04 06 00 00 00 00 00 00 00 00");
    reject(V311, &bytes, "MQTT-4.7.3-1", ReasonCode::MalformedPacket);
}

// ------------------------------------------------------------------------------------------------
// Malformed: SUBSCRIBE, UNSUBSCRIBE
// ------------------------------------------------------------------------------------------------

/// SUBSCRIBE with one filter `f` and options byte `o`, for v3 (no property length) or v5.
fn subscribe_bytes(v5: bool, filter: &str, options: u8) -> Vec<u8> {
    let props_len = usize::from(v5);
    let remaining = 2 + props_len + 2 + filter.len() + 1;
    let mut b = vec![0x82, u8::try_from(remaining).expect("short test filter"), 0x00, 0x01];
    if v5 {
        b.push(0x00);
    }
    b.extend_from_slice(&u16::try_from(filter.len()).expect("short").to_be_bytes());
    b.extend_from_slice(filter.as_bytes());
    b.push(options);
    b
}

/// UNSUBSCRIBE with one filter.
fn unsubscribe_bytes(v5: bool, filter: &str) -> Vec<u8> {
    let mut b = subscribe_bytes(v5, filter, 0);
    b.pop();
    b[0] = 0xA2;
    b[1] -= 1;
    b
}

#[test]
fn helpers_build_the_same_bytes_as_the_vectors() {
    assert_eq!(subscribe_bytes(false, "a/b", 0), hex!("82 08 00 01 00 03 61 2F 62 00"));
    assert_eq!(unsubscribe_bytes(true, "a/b"), hex!("A2 08 00 01 00 00 03 61 2F 62"));
}

/// 5.0 [MQTT-4.7.1-1] / 3.1.1 [MQTT-4.7.1-2]: '#' alone and last; 5.0 [MQTT-4.7.1-2] / 3.1.1
/// [MQTT-4.7.1-3]: '+' alone in its level. In SUBSCRIBE and UNSUBSCRIBE.
#[test]
fn malformed_topic_filters_version_specific_ids() {
    let hash = ["a/#/b", "a#", "#/", "sport/tennis#", "a/#b", "$share/g/a/#/b"];
    let plus = ["a+", "+a/b", "a/b+", "a/+b/c", "$share/g/a+"];
    for v5 in [false, true] {
        let (version, hash_id, plus_id) = if v5 {
            (V5, "MQTT-4.7.1-1", "MQTT-4.7.1-2")
        } else {
            (V311, "MQTT-4.7.1-2", "MQTT-4.7.1-3")
        };
        for f in hash {
            for bytes in [subscribe_bytes(v5, f, 0), unsubscribe_bytes(v5, f)] {
                let kind = reject(version, &bytes, hash_id, ReasonCode::TopicFilterInvalid);
                assert_eq!(kind, ErrorKind::InvalidMultiLevelWildcard, "{f}");
            }
        }
        for f in plus {
            for bytes in [subscribe_bytes(v5, f, 0), unsubscribe_bytes(v5, f)] {
                let kind = reject(version, &bytes, plus_id, ReasonCode::TopicFilterInvalid);
                assert_eq!(kind, ErrorKind::InvalidSingleLevelWildcard, "{f}");
            }
        }
        // [MQTT-4.7.3-1]: not empty.
        for bytes in [subscribe_bytes(v5, "", 0), unsubscribe_bytes(v5, "")] {
            reject(version, &bytes, "MQTT-4.7.3-1", ReasonCode::MalformedPacket);
        }
    }
    // Valid filters from §4.7.1 pass.
    for f in ["#", "+", "+/+", "/+", "sport/+/player1", "+/tennis/#", "$SYS/#", "a//b"] {
        for (version, v5) in [(V311, false), (V5, true)] {
            let Packet::Subscribe(s) = decode_one(version, &subscribe_bytes(v5, f, 0)) else {
                panic!("SUBSCRIBE")
            };
            assert_eq!(s.filters[0].0, f);
        }
    }
}

/// 5.0 [MQTT-4.8.2-1]: a non-empty ShareName; [MQTT-4.8.2-2]: no '+', '#' or '/' in it, and a
/// '/' and a topic filter after it.
#[test]
fn malformed_shared_subscription_filters_mqtt_4_8_2() {
    let cases = [
        ("$share//a", "MQTT-4.8.2-1"),
        ("$share/", "MQTT-4.8.2-2"),
        ("$share/g", "MQTT-4.8.2-2"),
        ("$share/g/", "MQTT-4.8.2-2"),
        ("$share/g+/a", "MQTT-4.8.2-2"),
        ("$share/#/a", "MQTT-4.8.2-2"),
    ];
    for (f, spec) in cases {
        let kind = reject(V5, &subscribe_bytes(true, f, 0), spec, ReasonCode::TopicFilterInvalid);
        assert_eq!(kind, ErrorKind::InvalidSharedSubscription, "{f}");
    }
}

/// 5.0 [MQTT-3.8.3-2], 3.1.1 [MQTT-3.8.3-3]; [MQTT-3.10.3-2] in both: at least one filter.
/// 5.0 calls a SUBSCRIBE or UNSUBSCRIBE with no payload a Protocol Error.
#[test]
fn malformed_no_topic_filter() {
    for version in V3 {
        let kind = reject(version, &hex!("82 02 00 01"), "MQTT-3.8.3-3", ReasonCode::ProtocolError);
        assert_eq!(kind, ErrorKind::NoTopicFilters);
        reject(version, &hex!("A2 02 00 01"), "MQTT-3.10.3-2", ReasonCode::ProtocolError);
    }
    reject(V5, &hex!("82 03 00 01 00"), "MQTT-3.8.3-2", ReasonCode::ProtocolError);
    reject(V5, &hex!("A2 03 00 01 00"), "MQTT-3.10.3-2", ReasonCode::ProtocolError);
    // Properties alone are not a payload.
    let bytes = hex!("82 05 00 01 02 0B 01");
    reject(V5, &bytes, "MQTT-3.8.3-2", ReasonCode::ProtocolError);
}

/// 3.1.1 [MQTT-3-8.3-4] (the spec's own spelling): upper six bits reserved; QoS 3 malformed.
#[test]
fn malformed_subscription_options_v3() {
    for version in V3 {
        for options in [0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFC] {
            let bytes = subscribe_bytes(false, "a/b", options);
            let kind = reject(version, &bytes, "MQTT-3-8.3-4", ReasonCode::MalformedPacket);
            assert_eq!(kind, ErrorKind::SubscriptionOptionsReserved, "{options:#04x}");
        }
        let bytes = subscribe_bytes(false, "a/b", 0x03);
        let kind = reject(version, &bytes, "MQTT-3-8.3-4", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::InvalidQoS);
    }
}

/// 5.0 [MQTT-3.8.3-5]: bits 6 and 7 reserved (malformed).
#[test]
fn malformed_subscription_options_v5_reserved_mqtt_3_8_3_5() {
    for options in [0x40, 0x80, 0xC1] {
        let bytes = subscribe_bytes(true, "a/b", options);
        let kind = reject(V5, &bytes, "MQTT-3.8.3-5", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::SubscriptionOptionsReserved);
    }
}

/// 5.0 §3.8.3.1: Maximum QoS 3 and Retain Handling 3 are Protocol Errors.
#[test]
fn malformed_subscription_options_v5_qos3_and_retain_handling3() {
    let kind = reject(V5, &subscribe_bytes(true, "a", 0x03), "§3.8.3.1", ReasonCode::ProtocolError);
    assert_eq!(kind, ErrorKind::InvalidMaximumQoS);
    let kind = reject(V5, &subscribe_bytes(true, "a", 0x30), "§3.8.3.1", ReasonCode::ProtocolError);
    assert_eq!(kind, ErrorKind::InvalidRetainHandling);
}

/// 5.0 [MQTT-3.8.3-4]: No Local on a shared subscription.
#[test]
fn malformed_no_local_on_shared_subscription_mqtt_3_8_3_4() {
    let bytes = subscribe_bytes(true, "$share/g/a", 0x04);
    let kind = reject(V5, &bytes, "MQTT-3.8.3-4", ReasonCode::ProtocolError);
    assert_eq!(kind, ErrorKind::NoLocalOnSharedSubscription);
    // No Local on an ordinary filter is fine.
    assert!(matches!(decode_one(V5, &subscribe_bytes(true, "a", 0x04)), Packet::Subscribe(_)));
}

// ------------------------------------------------------------------------------------------------
// Malformed: CONNECT
// ------------------------------------------------------------------------------------------------

/// A CONNECT with this protocol name, level and flags, keep alive 60, client id "a", and no
/// will, user name or password fields (flag tests stop before those are read).
fn connect_bytes(name: &str, level: u8, flags: u8) -> Vec<u8> {
    let v5 = level == 5 && name == "MQTT";
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(name.len()).expect("short").to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    if v5 {
        body.push(0x00);
    }
    body.extend_from_slice(&hex!("00 01 61"));
    let mut b = vec![0x10, u8::try_from(body.len()).expect("short")];
    b.extend_from_slice(&body);
    b
}

#[test]
fn connect_helper_matches_hand_vector() {
    assert_eq!(
        connect_bytes("MQTT", 5, 0x02),
        hex!("10 0E 00 04 4D 51 54 54 05 02 00 3C 00 00 01 61")
    );
}

/// 5.0 and 3.1.1 [MQTT-3.1.2-1]: a protocol name other than "MQTT" (or "MQIsdp").
#[test]
fn malformed_connect_protocol_name_mqtt_3_1_2_1() {
    for name in ["MQTX", "mqtt", "MQIsdq", ""] {
        for version in ALL {
            let bytes = connect_bytes(name, 4, 0x02);
            let kind =
                reject(version, &bytes, "MQTT-3.1.2-1", ReasonCode::UnsupportedProtocolVersion);
            assert_eq!(kind, ErrorKind::InvalidProtocolName, "{name}");
        }
    }
}

/// [MQTT-3.1.2-2]: an unsupported protocol level, answered with CONNACK 0x84 (v3: 0x01).
#[test]
fn malformed_connect_unsupported_level_mqtt_3_1_2_2() {
    for (name, level) in [("MQTT", 6), ("MQTT", 3), ("MQTT", 0), ("MQIsdp", 4), ("MQIsdp", 5)] {
        let bytes = connect_bytes(name, level, 0x02);
        let kind = reject(V311, &bytes, "MQTT-3.1.2-2", ReasonCode::UnsupportedProtocolVersion);
        assert_eq!(kind, ErrorKind::UnsupportedProtocolLevel(level));
    }
    assert_eq!(ReasonCode::UnsupportedProtocolVersion.to_v3_connack(), 0x01);
}

/// [MQTT-3.1.2-3]: the reserved Connect Flags bit 0 must be 0.
#[test]
fn malformed_connect_reserved_flag_mqtt_3_1_2_3() {
    for (name, level) in [("MQIsdp", 3), ("MQTT", 4), ("MQTT", 5)] {
        let kind = reject(
            V5,
            &connect_bytes(name, level, 0x03),
            "MQTT-3.1.2-3",
            ReasonCode::MalformedPacket,
        );
        assert_eq!(kind, ErrorKind::ConnectReservedFlag);
    }
}

/// Will QoS or Will Retain without the Will Flag: 5.0 [MQTT-3.1.2-11] and [MQTT-3.1.2-13];
/// 3.1.1 [MQTT-3.1.2-13] and [MQTT-3.1.2-15].
#[test]
fn malformed_connect_will_flags_without_will() {
    let cases = [
        (0x0A, "MQTT-3.1.2-11", "MQTT-3.1.2-13"), // Will QoS 1
        (0x12, "MQTT-3.1.2-11", "MQTT-3.1.2-13"), // Will QoS 2
        (0x1A, "MQTT-3.1.2-11", "MQTT-3.1.2-13"), // Will QoS 3
        (0x22, "MQTT-3.1.2-13", "MQTT-3.1.2-15"), // Will Retain
    ];
    for (flags, v5_id, v3_id) in cases {
        let kind = reject(V5, &connect_bytes("MQTT", 5, flags), v5_id, ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::WillFlagsWithoutWill);
        reject(V311, &connect_bytes("MQTT", 4, flags), v3_id, ReasonCode::MalformedPacket);
        reject(V31, &connect_bytes("MQIsdp", 3, flags), v3_id, ReasonCode::MalformedPacket);
    }
}

/// Will QoS 3: 5.0 [MQTT-3.1.2-12], 3.1.1 [MQTT-3.1.2-14].
#[test]
fn malformed_connect_will_qos3() {
    let kind =
        reject(V5, &connect_bytes("MQTT", 5, 0x1E), "MQTT-3.1.2-12", ReasonCode::MalformedPacket);
    assert_eq!(kind, ErrorKind::InvalidQoS);
    reject(V311, &connect_bytes("MQTT", 4, 0x1E), "MQTT-3.1.2-14", ReasonCode::MalformedPacket);
}

/// 3.1.1 [MQTT-3.1.2-22]: the password flag needs the user name flag (v5 allows it, see
/// `connect_v5_password_without_username`).
#[test]
fn malformed_connect_password_without_username_v311_mqtt_3_1_2_22() {
    let bytes = hex!("10 10 00 04 4D 51 54 54 04 42 00 3C 00 01 61 00 01 70");
    let kind = reject(V311, &bytes, "MQTT-3.1.2-22", ReasonCode::MalformedPacket);
    assert_eq!(kind, ErrorKind::PasswordWithoutUsername);
}

/// A field its flag announces but the packet lacks (3.1.1 [MQTT-3.1.2-19], [MQTT-3.1.2-21]).
#[test]
fn malformed_connect_flagged_field_missing() {
    // User name flag set, no user name.
    let bytes = connect_bytes("MQTT", 4, 0x82);
    reject(V311, &bytes, "§2.1.4", ReasonCode::MalformedPacket);
    // Will flag set, no will topic.
    reject(V311, &connect_bytes("MQTT", 4, 0x06), "§2.1.4", ReasonCode::MalformedPacket);
}

// ------------------------------------------------------------------------------------------------
// Malformed: AUTH on 3.x, CONNACK
// ------------------------------------------------------------------------------------------------

/// 3.1.1 §2.2.1: packet type 15 is reserved; AUTH only exists in 5.0.
#[test]
fn malformed_auth_on_v3_connection() {
    for version in V3 {
        let kind = reject(version, &hex!("F0 00"), "MQTT-2.2.2-2", ReasonCode::ProtocolError);
        assert_eq!(kind, ErrorKind::ReservedPacketType(15));
    }
    let auth = Packet::Auth(ReasonPacket::new(ReasonCode::Success));
    let mut out = BytesMut::new();
    assert_eq!(encode(&auth, V311, &mut out), Err(EncodeError::NotInVersion("AUTH")));
    assert_eq!(encoded_len(&auth, V31), Err(EncodeError::NotInVersion("AUTH")));
}

/// §3.2.2.1: Connect Acknowledge Flags bits 7-1 are reserved.
#[test]
fn malformed_connack_reserved_flags() {
    for version in V3 {
        let kind = reject(version, &hex!("20 02 02 00"), "§3.2.2.1", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::ConnAckReservedFlags);
    }
    reject(V5, &hex!("20 03 80 00 00"), "§3.2.2.1", ReasonCode::MalformedPacket);
}

/// 3.1.1 §3.2.2.3: return codes 6-255 are reserved.
#[test]
fn malformed_connack_v3_return_code_6() {
    for version in V3 {
        let kind = reject(version, &hex!("20 02 00 06"), "§3.2.2.3", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::InvalidReasonCode { packet_type: 2, code: 6 });
    }
}

// ------------------------------------------------------------------------------------------------
// Malformed: v5 properties (§2.2.2)
// ------------------------------------------------------------------------------------------------

/// A v5 QoS 0 PUBLISH to "t" with this property list body.
fn publish_with_props(body: &[u8]) -> Vec<u8> {
    let mut b = vec![0x30, u8::try_from(3 + 1 + body.len()).expect("short"), 0x00, 0x01, 0x74];
    b.push(u8::try_from(body.len()).expect("short"));
    b.extend_from_slice(body);
    b
}

/// A v5 CONNECT (client id "a") with this property list body.
fn connect_with_props(body: &[u8]) -> Vec<u8> {
    let mut b = hex!("10 00 00 04 4D 51 54 54 05 02 00 3C").to_vec();
    b.push(u8::try_from(body.len()).expect("short"));
    b.extend_from_slice(body);
    b.extend_from_slice(&hex!("00 01 61"));
    b[1] = u8::try_from(b.len() - 2).expect("short");
    b
}

#[test]
fn property_helpers_match_hand_vectors() {
    assert_eq!(publish_with_props(&hex!("23 00 02")), hex!("30 07 00 01 74 03 23 00 02"));
    assert_eq!(connect_with_props(&[]), hex!("10 0E 00 04 4D 51 54 54 05 02 00 3C 00 00 01 61"));
}

/// §2.2.2.2: an identifier the spec does not define is malformed.
#[test]
fn malformed_unknown_property() {
    for (body, raw) in
        [(&hex!("05 00")[..], 0x05), (&hex!("00")[..], 0x00), (&hex!("80 01")[..], 0x80)]
    {
        let kind = reject(V5, &publish_with_props(body), "§2.2.2.2", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::UnknownProperty(raw));
    }
}

/// §2.2.2.2: a property used in a packet it does not belong to is malformed.
#[test]
fn malformed_property_not_allowed_in_packet() {
    let not_allowed = |bytes: &[u8], pid: u8| {
        let kind = reject(V5, bytes, "§2.2.2.2", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::PropertyNotAllowed { id: pid });
    };
    // Session Expiry Interval in PUBLISH.
    not_allowed(&publish_with_props(&hex!("11 00 00 00 01")), 0x11);
    // Reason String in PUBLISH.
    not_allowed(&publish_with_props(&hex!("1F 00 01 72")), 0x1F);
    // Topic Alias in CONNECT.
    not_allowed(&connect_with_props(&hex!("23 00 01")), 0x23);
    // Will Delay Interval in CONNECT (it belongs to the will properties).
    not_allowed(&connect_with_props(&hex!("18 00 00 00 01")), 0x18);
    // Maximum QoS in CONNECT (CONNACK only).
    not_allowed(&connect_with_props(&hex!("24 01")), 0x24);
    // Subscription Identifier in PUBACK.
    not_allowed(&hex!("40 06 00 01 00 02 0B 01"), 0x0B);
    // Session Expiry Interval in a will.
    let bytes = hex!(
        "10 19 00 04 4D 51 54 54 05 06 00 3C 00" "00 01 61"
        "05 11 00 00 00 01" // will properties: Session Expiry Interval 1
        "00 01 74" "00 00"
    );
    not_allowed(&bytes, 0x11);
    // Topic Alias in SUBSCRIBE.
    not_allowed(&hex!("82 0A 00 01 03 23 00 01 00 01 61 00"), 0x23);
    // Server Reference in AUTH.
    not_allowed(&hex!("F0 07 18 05 1C 00 02 73 31"), 0x1C);
}

/// §2.2.2.2: a property other than User Property (or Subscription Identifier in PUBLISH)
/// included twice is a Protocol Error.
#[test]
fn malformed_duplicate_property() {
    let bytes = publish_with_props(&hex!("02 00 00 00 01" "02 00 00 00 02"));
    let kind = reject(V5, &bytes, "§2.2.2.2", ReasonCode::ProtocolError);
    assert_eq!(kind, ErrorKind::DuplicateProperty { id: 0x02 });
    let bytes = connect_with_props(&hex!("21 00 01" "11 00 00 00 01" "21 00 02"));
    reject(V5, &bytes, "§2.2.2.2", ReasonCode::ProtocolError);
    // Subscription Identifier twice in SUBSCRIBE (§3.8.2.1.2).
    let bytes = hex!("82 0B 00 01 04 0B 01 0B 02 00 01 61 00");
    let kind = reject(V5, &bytes, "§2.2.2.2", ReasonCode::ProtocolError);
    assert_eq!(kind, ErrorKind::DuplicateProperty { id: 0x0B });
}

/// §2.2.2.2, §3.3.2.3.8: User Property may repeat anywhere, Subscription Identifier in PUBLISH.
#[test]
fn repeated_user_property_and_publish_subscription_identifier_are_allowed() {
    let bytes = publish_with_props(&hex!("26 00 01 61 00 01 62" "26 00 01 61 00 01 62"));
    let Packet::Publish(p) = decode_one(V5, &bytes) else { panic!("PUBLISH") };
    assert_eq!(p.properties.user_properties().count(), 2);
    let bytes = publish_with_props(&hex!("0B 01" "0B 02" "0B 01"));
    let Packet::Publish(p) = decode_one(V5, &bytes) else { panic!("PUBLISH") };
    assert_eq!(p.properties.subscription_identifiers().collect::<Vec<_>>(), [1, 2, 1]);
}

/// Property values outside their range are Protocol Errors: Receive Maximum 0 (§3.1.2.11.3),
/// Topic Alias 0 ([MQTT-3.3.2-8]), Maximum Packet Size 0 (§3.1.2.11.4), Request Problem
/// Information 2 (§3.1.2.11.7), Subscription Identifier 0 (§3.8.2.1.2), Maximum QoS 2
/// (§3.2.2.3.4), Retain Available 2 (§3.2.2.3.5), Payload Format Indicator 2 (§3.3.2.3.2).
#[test]
fn malformed_property_value_out_of_range() {
    let out_of_range = |bytes: &[u8], pid: u8| {
        let kind = reject(V5, bytes, "§2.2.2.2", ReasonCode::ProtocolError);
        assert_eq!(kind, ErrorKind::InvalidPropertyValue { id: pid });
    };
    out_of_range(&connect_with_props(&hex!("21 00 00")), 0x21);
    // Topic Alias 0 is a Protocol Error answered with 0x94 Topic Alias invalid (§3.2.2.3.8).
    let bytes = publish_with_props(&hex!("23 00 00"));
    let kind = reject(V5, &bytes, "§2.2.2.2", ReasonCode::TopicAliasInvalid);
    assert_eq!(kind, ErrorKind::InvalidPropertyValue { id: 0x23 });
    out_of_range(&connect_with_props(&hex!("27 00 00 00 00")), 0x27);
    out_of_range(&connect_with_props(&hex!("17 02")), 0x17);
    out_of_range(&connect_with_props(&hex!("19 02")), 0x19);
    out_of_range(&hex!("82 09 00 01 02 0B 00 00 01 61 00"), 0x0B);
    out_of_range(&publish_with_props(&hex!("0B 00")), 0x0B);
    out_of_range(&hex!("20 05 00 00 02 24 02"), 0x24);
    out_of_range(&hex!("20 05 00 00 02 25 02"), 0x25);
    out_of_range(&publish_with_props(&hex!("01 02")), 0x01);
    // Topic Alias Maximum 0 is allowed: it means "no aliases" (§3.1.2.11.5).
    let Packet::Connect(c) = decode_one(V5, &connect_with_props(&hex!("22 00 00"))) else {
        panic!("CONNECT")
    };
    assert_eq!(c.properties.topic_alias_maximum(), Some(0));
}

// ------------------------------------------------------------------------------------------------
// Malformed: v5 reason codes (§2.4)
// ------------------------------------------------------------------------------------------------

/// §2.4 Table 2-6: a reason code the packet does not allow, or no reason code at all.
#[test]
fn malformed_reason_code_not_allowed_in_packet() {
    let cases: [(&[u8], u8, u8); 11] = [
        (&hex!("40 03 00 01 04"), 4, 0x04), // Disconnect with Will in PUBACK
        (&hex!("50 03 00 01 92"), 5, 0x92), // Packet Identifier not found in PUBREC
        (&hex!("62 03 00 01 10"), 6, 0x10), // No matching subscribers in PUBREL
        (&hex!("70 03 00 01 87"), 7, 0x87), // Not authorized in PUBCOMP
        (&hex!("20 03 00 10 00"), 2, 0x10), // No matching subscribers in CONNACK
        (&hex!("90 04 00 01 00 11"), 9, 0x11), // No subscription existed in SUBACK
        (&hex!("B0 04 00 01 00 01"), 11, 0x01), // Granted QoS 1 in UNSUBACK
        (&hex!("E0 01 01"), 14, 0x01),      // Granted QoS 1 in DISCONNECT
        (&hex!("E0 01 03"), 14, 0x03),      // 0x03 is not a reason code
        (&hex!("F0 01 87"), 15, 0x87),      // Not authorized in AUTH
        (&hex!("40 03 00 01 FF"), 4, 0xFF), // 0xFF is not a reason code
    ];
    for (bytes, packet_type, code) in cases {
        let kind = reject(V5, bytes, "§2.4", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::InvalidReasonCode { packet_type, code }, "{bytes:02x?}");
    }
}

/// 3.1.1 [MQTT-3.9.3-2]: SUBACK return codes other than 0, 1, 2 and 0x80 are reserved; MQTT 3.1
/// has no 0x80.
#[test]
fn malformed_suback_v3_return_codes_mqtt_3_9_3_2() {
    for version in V3 {
        let kind =
            reject(version, &hex!("90 03 00 01 03"), "MQTT-3.9.3-2", ReasonCode::MalformedPacket);
        assert_eq!(kind, ErrorKind::InvalidReasonCode { packet_type: 9, code: 3 });
    }
    reject(V31, &hex!("90 03 00 01 80"), "MQTT-3.9.3-2", ReasonCode::MalformedPacket);
}

// ------------------------------------------------------------------------------------------------
// Encoder rules
// ------------------------------------------------------------------------------------------------

/// [MQTT-2.2.1-2]: a packet id exactly when QoS > 0; the encoder refuses anything else.
#[test]
fn encode_refuses_packet_id_mismatch_mqtt_2_2_1_2() {
    let mut out = BytesMut::new();
    let p = Packet::Publish(publish(QoS::AtLeastOnce, "t", None, b""));
    assert_eq!(encode(&p, V311, &mut out), Err(EncodeError::PacketIdMismatch));
    let p = Packet::Publish(publish(QoS::AtMostOnce, "t", Some(1), b""));
    assert_eq!(encode(&p, V5, &mut out), Err(EncodeError::PacketIdMismatch));
    assert!(out.is_empty(), "nothing written on error");
}

/// Properties are left out for 3.x (a v5 message forwarded to a 3.x subscriber loses them by
/// design); v3 SUBACK failure codes all become 0x80; a 3.1.1 UNSUBACK carries no reasons.
#[test]
fn encode_drops_v5_fields_for_v3() {
    let mut p = publish(QoS::AtMostOnce, "t", None, b"x");
    p.properties = props(vec![Property::MessageExpiryInterval(5), user("a", "b")]);
    assert_eq!(encode_bytes(&Packet::Publish(p), V311), hex!("30 04 00 01 74 78"));
    let ack = Packet::PubAck(pub_resp(1, ReasonCode::Success, vec![user("a", "b")]));
    assert_eq!(encode_bytes(&ack, V311), hex!("40 02 00 01"));
    let suback = Packet::SubAck(SubAck {
        packet_id: id(1),
        reasons: vec![ReasonCode::TopicFilterInvalid, ReasonCode::GrantedQoS1],
        properties: Properties::new(),
    });
    assert_eq!(encode_bytes(&suback, V311), hex!("90 04 00 01 80 01"));
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: id(1),
        reasons: vec![ReasonCode::NoSubscriptionExisted],
        properties: Properties::new(),
    });
    assert_eq!(encode_bytes(&unsuback, V311), hex!("B0 02 00 01"));
    // v5 CONNACK reasons map to the closest v3 return code (3.1.1 §3.2.2.3).
    assert_eq!(encode_bytes(&connack(false, ReasonCode::Banned), V311), hex!("20 02 00 05"));
    assert_eq!(encode_bytes(&connack(false, ReasonCode::ServerBusy), V311), hex!("20 02 00 03"));
}

/// The encoder refuses what the version cannot carry instead of sending something else: a 3.x
/// CONNECT with a password but no user name ([MQTT-3.1.2-22]), an empty topic in a 3.x PUBLISH
/// or in a will ([MQTT-4.7.3-1]), a v5 PUBLISH with an empty topic and no alias
/// ([MQTT-3.3.2-1]), a failure code in a 3.1 SUBACK, a reason on a 3.x acknowledgement, a
/// SUBACK or v5 UNSUBACK without reason codes, AUTH before 5.0.
#[test]
fn encode_refuses_what_the_version_cannot_carry() {
    let spec_of = |p: &Packet, v| match encode(p, v, &mut BytesMut::new()) {
        Err(EncodeError::NotForVersion { spec, .. }) => spec,
        other => panic!("{v:?}: expected a refusal, got {other:?}"),
    };
    let mut c = Connect {
        version: V311,
        clean_start: true,
        keep_alive_secs: 10,
        client_id: "c".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties::new(),
    };
    assert_eq!(spec_of(&Packet::Connect(Box::new(c.clone())), V311), "MQTT-3.1.2-22");
    c.version = V5; // allowed in 5.0 (§3.1.2.9)
    assert!(encode(&Packet::Connect(Box::new(c)), V5, &mut BytesMut::new()).is_ok());
    let empty = Packet::Publish(publish(QoS::AtMostOnce, "", None, b"x"));
    assert_eq!(spec_of(&empty, V311), "MQTT-4.7.3-1");
    assert_eq!(spec_of(&empty, V31), "MQTT-4.7.3-1");
    assert_eq!(spec_of(&empty, V5), "MQTT-3.3.2-1");
    let mut aliased = publish(QoS::AtMostOnce, "", None, b"x");
    aliased.properties = props(vec![Property::TopicAlias(1)]);
    assert!(encode(&Packet::Publish(aliased), V5, &mut BytesMut::new()).is_ok());
    let refused = Packet::SubAck(SubAck {
        packet_id: id(1),
        reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized],
        properties: Properties::new(),
    });
    assert_eq!(spec_of(&refused, V31), "§3.9.3");
    assert_eq!(encode_bytes(&refused, V311), hex!("90 04 00 01 01 80"));
    let none =
        Packet::SubAck(SubAck { packet_id: id(1), reasons: vec![], properties: Properties::new() });
    assert_eq!(spec_of(&none, V5), "MQTT-3.8.4-6");
    assert_eq!(spec_of(&none, V311), "MQTT-3.8.4-5");
    let none = Packet::UnsubAck(UnsubAck {
        packet_id: id(1),
        reasons: vec![],
        properties: Properties::new(),
    });
    assert_eq!(spec_of(&none, V5), "MQTT-3.11.3-1");
    let ack = Packet::PubRec(pub_resp(1, ReasonCode::QuotaExceeded, vec![]));
    assert_eq!(spec_of(&ack, V311), "§3.4.2.1");
    let auth = Packet::Auth(ReasonPacket::new(ReasonCode::ContinueAuthentication));
    assert_eq!(encode(&auth, V311, &mut BytesMut::new()), Err(EncodeError::NotInVersion("AUTH")));
}

/// [MQTT-1.5.4-1] §1.5.4: a string longer than 65535 bytes cannot be encoded.
#[test]
fn encode_refuses_overlong_string() {
    let long = "a".repeat(65_536);
    let p = Packet::Publish(publish(QoS::AtMostOnce, &long, None, b""));
    let mut out = BytesMut::new();
    assert_eq!(encode(&p, V311, &mut out), Err(EncodeError::FieldTooLong(65_536)));
    let p = Packet::Publish(publish(QoS::AtMostOnce, &long[..65_535], None, b""));
    assert!(encode(&p, V311, &mut out).is_ok(), "65535 bytes is the limit");
}
