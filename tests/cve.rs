//! One regression test per class of vulnerability that shipped in a production MQTT broker
//! (`/work/shared/CVE-CLASSES.md`), each named after its CVE and run against a running broker
//! over loopback. Each sends what the CVE's exploit sent (or its class's equivalent), checks
//! the answer the specification or Tern's documented bound gives, and then that the broker still
//! serves an honest client: in Rust most of these bugs would be a panic (an abort of the whole
//! process under `panic = "abort"`) or unbounded growth rather than memory corruption.

mod common;
use common::interop as support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{start_with, RawClient};
use tern::codec::{
    self, Connect, Packet, Properties, Property, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions, Will,
};

const V4: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// An honest client on `addr` still gets CONNACK, SUBACK and its own message back.
fn still_serves(addr: SocketAddr, id: &str) {
    let (mut c, _) = RawClient::mqtt_connect(addr, V4, id, true);
    c.subscribe("alive", QoS::AtLeastOnce);
    c.publish("alive", b"yes", QoS::AtMostOnce, 0, false);
    assert_eq!(&c.recv_publish().payload[..], b"yes");
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-cve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn connect_v5(id: &str, properties: Properties, will: Option<Will>) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive_secs: 30,
        client_id: id.into(),
        will,
        username: None,
        password: None,
        properties,
    }))
}

fn empty_user_properties(n: usize) -> Properties {
    (0..n).map(|_| Property::UserProperty(String::new(), String::new())).collect()
}

fn varint(n: usize) -> Vec<u8> {
    let mut b = BytesMut::new();
    codec::primitives::put_varint(&mut b, n);
    b.to_vec()
}

/// The CONNACK's reason, or None when the broker closed without one.
fn connack_reason(c: &mut RawClient) -> Option<ReasonCode> {
    match c.recv_timeout(Duration::from_secs(5)) {
        Some(Packet::ConnAck(a)) => Some(a.reason),
        Some(other) => panic!("CONNACK expected, got {other:?}"),
        None => None,
    }
}

/// A DISCONNECT's reason (v5) before the broker closes, or None when it just closed.
fn disconnect_reason(c: &mut RawClient) -> Option<ReasonCode> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(p) = c.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Packet::Disconnect(d) = p {
            return Some(d.reason);
        }
    }
    None
}

/// CVE-2017-7650 (Mosquitto <= 1.4.11): a client id or user name holding `+` or `#`,
/// substituted into a `%c`/`%u` pattern, widened the pattern into a wildcard. Here a client
/// whose id is `#` or `+` gets nothing beyond what the literal id would: it can neither
/// subscribe to other devices' topics nor publish into them.
#[test]
fn cve_2017_7650_wildcards_in_identities_never_widen_pattern_acls() {
    let acl = temp_file("7650.acl", "pattern readwrite devices/%c/#\n");
    let b = start_with(1, |c| c.auth.acl_file = Some(acl));
    let (mut victim, _) = RawClient::mqtt_connect(b.addr, V4, "victim", true);
    victim.subscribe("devices/victim/#", QoS::AtMostOnce);
    for id in ["#", "+", "a/#", "+/+"] {
        let (mut evil, _) = RawClient::mqtt_connect(b.addr, V4, id, true);
        let s = Subscribe {
            packet_id: common::pid(1),
            filters: vec![(
                tern::codec::TopicFilter::new("devices/victim/#", true).expect("valid filter"),
                SubscriptionOptions::default(),
            )],
            properties: Properties::new(),
        };
        evil.send(&Packet::Subscribe(s));
        match evil.recv() {
            Packet::SubAck(a) => assert!(a.reasons[0].is_error(), "{id}: {a:?}"),
            other => panic!("{id}: SUBACK expected, got {other:?}"),
        }
        evil.publish("devices/victim/cmd", b"pwned", QoS::AtMostOnce, 0, false);
    }
    // The victim's own message arrives; none of the attackers' did.
    victim.publish("devices/victim/self", b"mine", QoS::AtMostOnce, 0, false);
    let p = victim.recv_publish();
    assert_eq!(
        (p.topic.as_deref().unwrap_or(""), &p.payload[..]),
        ("devices/victim/self", &b"mine"[..])
    );
}

/// CVE-2017-7651 (Mosquitto <= 1.4.14): a huge Remaining Length on an unauthenticated
/// connection made the broker allocate it. Here the first packet is bounded by
/// `limits.preauth_packet_bytes_max`, checked at the fixed header: a CONNECT announcing 256 MB
/// (v5: CONNACK 0x95) or just over the bound is refused before any body is sent, on 200
/// connections at once, and the shard serves on.
#[test]
fn cve_2017_7651_pre_auth_allocation_is_capped() {
    let b = start_with(1, |c| c.limits.preauth_packet_bytes_max = 4096);
    let mut conns = Vec::new();
    for i in 0..200 {
        let mut c = RawClient::connect_tcp(b.addr, V5);
        let len = if i % 2 == 0 { 268_435_455 } else { 4096 };
        let mut head = vec![0x10];
        head.extend(varint(len));
        head.extend([0, 4, b'M', b'Q', b'T', b'T', 5]);
        c.send_raw(&head);
        conns.push(c);
    }
    for mut c in conns {
        assert_eq!(connack_reason(&mut c), Some(ReasonCode::PacketTooLarge));
        assert!(c.closed_within(Duration::from_secs(5)), "closed at the fixed header");
    }
    still_serves(b.addr, "honest");
}

/// CVE-2023-0809 (Mosquitto <= 2.0.15): excessive allocation from a first packet that is not a
/// CONNECT. Here anything but CONNECT as the first packet closes the connection from its first
/// byte, even when it announces 256 MB ([MQTT-3.1.0-1]).
#[test]
fn cve_2023_0809_first_packet_must_be_connect() {
    let b = start_with(1, |_| {});
    for first in [0x30u8, 0x32, 0x82, 0xA2, 0xC0, 0xE0, 0xF0, 0x20] {
        let mut c = RawClient::connect_tcp(b.addr, V4);
        let mut bytes = vec![first];
        bytes.extend(varint(268_435_455));
        c.send_raw(&bytes);
        assert!(c.closed_within(Duration::from_secs(5)), "first byte {first:#04x}");
    }
    still_serves(b.addr, "honest");
}

/// CVE-2017-7652 (Mosquitto <= 1.4.14): a reload that could not read the configuration fell
/// back to open defaults. Here a reload whose ACL file is unreadable or malformed keeps the
/// previous ACL in force: what was denied stays denied.
#[test]
fn cve_2017_7652_failed_reload_keeps_the_old_rules() {
    let acl = temp_file("7652.acl", "topic read public/#\n");
    let path = acl.clone();
    let b = start_with(2, |c| c.auth.acl_file = Some(acl));
    let broker = b.broker.as_ref().expect("running");
    for bad in [Some("topic bogus x\n"), None] {
        match bad {
            Some(text) => std::fs::write(&path, text).expect("write"),
            None => std::fs::remove_file(&path).expect("remove"),
        }
        assert!(broker.reload(Duration::from_secs(10)), "every shard applied the reload");
        let (mut c, _) = RawClient::mqtt_connect(b.addr, V4, "after-reload", true);
        let s = Subscribe {
            packet_id: common::pid(1),
            filters: vec![(
                tern::codec::TopicFilter::new("secret/#", true).expect("valid filter"),
                SubscriptionOptions::default(),
            )],
            properties: Properties::new(),
        };
        c.send(&Packet::Subscribe(s));
        match c.recv() {
            Packet::SubAck(a) => assert!(a.reasons[0].is_error(), "{bad:?}: {a:?}"),
            other => panic!("SUBACK expected, got {other:?}"),
        }
        c.subscribe("public/#", QoS::AtMostOnce);
    }
}

/// CVE-2018-12550 / CVE-2018-12551 (Mosquitto <= 1.5.5): an empty ACL file allowed everything;
/// a malformed or blank-field password-file line became a valid user with an empty password.
/// Here an empty ACL denies everything, and a password file with an empty hash or user name
/// (or no `:`) is refused at start, naming the file and line.
#[test]
fn cve_2018_12550_12551_empty_or_malformed_auth_files_fail_closed() {
    let empty = temp_file("12550.acl", "");
    let b = start_with(1, |c| c.auth.acl_file = Some(empty));
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V4, "anyone", true);
    let s = Subscribe {
        packet_id: common::pid(1),
        filters: vec![(
            tern::codec::TopicFilter::new("#", true).expect("valid filter"),
            SubscriptionOptions::default(),
        )],
        properties: Properties::new(),
    };
    c.send(&Packet::Subscribe(s));
    match c.recv() {
        Packet::SubAck(a) => assert!(a.reasons[0].is_error(), "{a:?}"),
        other => panic!("SUBACK expected, got {other:?}"),
    }
    for (i, line) in ["alice:", ":$7$101$x$y", "alice", "   :   ", "alice: "].iter().enumerate() {
        let pw = temp_file(&format!("12551-{i}.passwd"), &format!("# users\n{line}\n"));
        let text = format!("[auth]\npassword_file = {:?}\n", pw.display().to_string());
        let e = tern::config::Config::from_str_named(&text, "tern.toml").expect_err(line);
        let msg = e.to_string();
        assert!(msg.contains(&format!("{}:2:", pw.display())), "{line:?}: {msg}");
    }
}

/// CVE-2018-12543 (Mosquitto 1.5-1.5.2): a PUBLISH to a `$`-prefixed topic other than `$SYS`
/// hit an assert. Here `$` topics of every shape are handled (delivered to a matching `$`
/// subscription, never to `#` [MQTT-4.7.2-1]) or refused, and the shard serves on.
#[test]
fn cve_2018_12543_dollar_topics_never_panic() {
    let b = start_with(1, |_| {});
    let (mut sub, _) = RawClient::mqtt_connect(b.addr, V4, "dollar-sub", true);
    sub.subscribe("$xyz/#", QoS::AtMostOnce);
    sub.subscribe("#", QoS::AtMostOnce);
    let (mut p, _) = RawClient::mqtt_connect(b.addr, V5, "dollar-pub", true);
    for topic in ["$xyz", "$xyz/a", "$", "$/", "$SYS", "$SYS/x", "$share", "$€/x"] {
        p.publish(topic, b"d", QoS::AtMostOnce, 0, false);
    }
    p.publish("$xyz/end", b"end", QoS::AtMostOnce, 0, false);
    // `$xyz` and `$xyz/a` arrive through `$xyz/#`, and nothing through `#`.
    let mut topics = Vec::new();
    while let Some(Packet::Publish(m)) = sub.recv_timeout(Duration::from_secs(2)) {
        topics.push(m.topic.as_deref().unwrap_or("").to_owned());
        if m.topic.as_deref() == Some("$xyz/end") {
            break;
        }
    }
    assert_eq!(topics, ["$xyz", "$xyz/a", "$xyz/end"]);
    still_serves(b.addr, "honest");
}

/// CVE-2019-11779 (Mosquitto 1.5-1.6.5): a SUBSCRIBE with about 65 400 `/` overflowed the stack
/// of a recursive topic walk. Here such a filter (and such a topic in PUBLISH) is refused by
/// `limits.topic_levels_max` (SUBACK 0x8F / DISCONNECT), and the trie walk is iterative.
#[test]
fn cve_2019_11779_deep_topics_are_refused_without_recursion() {
    let b = start_with(1, |c| c.limits.topic_bytes_max = 65535);
    let deep = "/".repeat(65_400);
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V5, "deep", true);
    let s = Subscribe {
        packet_id: common::pid(1),
        filters: vec![(
            tern::codec::TopicFilter::new(format!("{deep}#"), true).expect("valid filter"),
            SubscriptionOptions::default(),
        )],
        properties: Properties::new(),
    };
    c.send(&Packet::Subscribe(s));
    match c.recv() {
        Packet::SubAck(a) => assert_eq!(a.reasons, [ReasonCode::TopicFilterInvalid]),
        other => panic!("SUBACK expected, got {other:?}"),
    }
    c.publish(&format!("{deep}x"), b"deep", QoS::AtMostOnce, 0, false);
    assert!(disconnect_reason(&mut c).is_some_and(|r| r.is_error()));
    still_serves(b.addr, "honest");
}

/// CVE-2019-11778 (Mosquitto 1.6-1.6.4): a Will Delay longer than the Session Expiry freed the
/// session under the will timer. Here the will goes out when the session ends, the earlier of
/// the two ([MQTT-3.1.3-9]), exactly once, and the shard serves on.
#[test]
fn cve_2019_11778_will_delay_longer_than_session_expiry() {
    let b = start_with(2, |_| {});
    let (mut watcher, _) = RawClient::mqtt_connect(b.addr, V4, "will-watcher", true);
    watcher.subscribe("will/11778", QoS::AtMostOnce);
    let mut c = RawClient::connect_tcp(b.addr, V5);
    let will = Will {
        topic: tern::codec::TopicName::new("will/11778").expect("valid topic"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: vec![Property::WillDelayInterval(3600)].into(),
    };
    let props: Properties = vec![Property::SessionExpiryInterval(1)].into();
    c.send(&connect_v5("will-delay", props, Some(will)));
    assert_eq!(connack_reason(&mut c), Some(ReasonCode::Success));
    drop(c); // no DISCONNECT: the will is due at session end, 1 s later.
    let p = watcher.recv_timeout(Duration::from_secs(6)).expect("the will at session end");
    assert!(matches!(&p, Packet::Publish(m) if &m.payload[..] == b"gone"), "{p:?}");
    assert!(watcher.recv_timeout(Duration::from_secs(2)).is_none(), "published once");
    still_serves(b.addr, "honest");
}

/// CVE-2021-28166 (Mosquitto 2.0.0-2.0.9): a client sending CONNACK (a server-only packet) hit
/// a NULL dereference. Here every server-only packet from a client is a protocol error that
/// closes that connection only.
#[test]
fn cve_2021_28166_server_only_packets_from_a_client_are_refused() {
    let b = start_with(1, |_| {});
    let server_only: [&[u8]; 4] = [
        &[0x20, 0x02, 0x00, 0x00],       // CONNACK
        &[0x90, 0x03, 0x00, 0x01, 0x00], // SUBACK
        &[0xB0, 0x02, 0x00, 0x01],       // UNSUBACK
        &[0xD0, 0x00],                   // PINGRESP
    ];
    for (i, bytes) in server_only.iter().enumerate() {
        for version in [V4, V5] {
            let (mut c, _) = RawClient::mqtt_connect(b.addr, version, &format!("wd{i}"), true);
            c.send_raw(bytes);
            if version == V5 {
                assert!(disconnect_reason(&mut c).is_some_and(|r| r.is_error()), "{bytes:?}");
            }
            assert!(c.closed_within(Duration::from_secs(5)), "{bytes:?} {version:?}");
        }
    }
    still_serves(b.addr, "honest");
}

/// CVE-2021-34432 (Mosquitto <= 2.0.7): a v5 PUBLISH with a zero-length topic and no Topic
/// Alias crashed the broker. Here it is a Protocol Error ([MQTT-3.3.2-1], §3.3.2.3.4):
/// DISCONNECT 0x82; a v3 one closes the connection ([MQTT-4.7.3-1]).
#[test]
fn cve_2021_34432_empty_topic_without_alias_is_a_protocol_error() {
    let b = start_with(1, |_| {});
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V5, "empty-topic-5", true);
    // PUBLISH QoS 0, topic "", properties empty, payload "x".
    c.send_raw(&[0x30, 0x04, 0x00, 0x00, 0x00, b'x']);
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::ProtocolError));
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V4, "empty-topic-4", true);
    c.send_raw(&[0x30, 0x03, 0x00, 0x00, b'x']);
    assert!(c.closed_within(Duration::from_secs(5)));
    still_serves(b.addr, "honest");
}

/// CVE-2021-41039 (Mosquitto 1.6-2.0.11): a CONNECT with a huge number of user properties cost
/// excessive CPU. Here user properties are capped per packet (`limits.user_properties_max`,
/// CONNECT and will together; `..._bytes_max`): 129 in a CONNECT get CONNACK 0x95, 180 000 empty
/// ones in a PUBLISH (900 KB) DISCONNECT 0x95, each answered within a second.
#[test]
fn cve_2021_41039_user_properties_are_capped_per_packet() {
    let b = start_with(1, |_| {});
    let max = tern::config::LimitsConfig::default().user_properties_max as usize;
    let will = Will {
        topic: tern::codec::TopicName::new("w").expect("valid topic"),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: empty_user_properties(2),
    };
    let mut c = RawClient::connect_tcp(b.addr, V5);
    c.send(&connect_v5("props", empty_user_properties(max - 1), Some(will)));
    assert_eq!(connack_reason(&mut c), Some(ReasonCode::PacketTooLarge));
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V5, "props-pub", true);
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Some(tern::codec::TopicName::new("t").expect("valid topic")),
        packet_id: None,
        properties: empty_user_properties(180_000),
        payload: Bytes::from_static(b"x"),
    };
    let t0 = Instant::now();
    c.send(&Packet::Publish(publish));
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::PacketTooLarge));
    assert!(t0.elapsed() < Duration::from_secs(2), "refused in {:?}", t0.elapsed());
    still_serves(b.addr, "honest");
}

/// CVE-2021-34434 (Mosquitto): a durable session kept subscriptions its user
/// lost the right to. Here a resumed session is checked against the ACL in force: after a
/// reload revokes the right, messages on the revoked topic no longer reach it.
#[test]
fn cve_2021_34434_resumed_session_is_rechecked_against_the_acl() {
    let acl = temp_file("34434.acl", "topic readwrite news/#\n");
    let path = acl.clone();
    let b = start_with(1, |c| c.auth.acl_file = Some(acl));
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V4, "durable", false);
    c.subscribe("news/#", QoS::AtLeastOnce);
    drop(c);
    std::fs::write(&path, "topic write news/#\n").expect("write");
    assert!(b.broker.as_ref().expect("running").reload(Duration::from_secs(10)));
    let (mut publisher, _) = RawClient::mqtt_connect(b.addr, V4, "newsroom", true);
    publisher.publish("news/today", b"revoked", QoS::AtLeastOnce, 1, false);
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    let (mut c, present) = RawClient::mqtt_connect(b.addr, V4, "durable", false);
    assert!(present, "the session resumed");
    publisher.publish("news/today", b"revoked too", QoS::AtLeastOnce, 2, false);
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    assert!(c.recv_timeout(Duration::from_secs(2)).is_none(), "nothing on a revoked topic");
}

/// CVE-2018-12546 (Mosquitto <= 1.5.4): a retained message stayed deliverable after its
/// publisher lost the right to publish to its topic. Here each retained message keeps who
/// published it, and delivery from the store checks that client against the ACL in force: after
/// a reload that revokes the write right, a new subscriber gets nothing (counted in
/// `retained_denied_source`), while the subscribers' own read right is unchanged.
#[test]
fn cve_2018_12546_retained_message_is_not_served_after_its_publisher_is_revoked() {
    let acl = temp_file("12546.acl", "topic readwrite news/#\ntopic readwrite alive\n");
    let path = acl.clone();
    let b = start_with(2, |c| c.auth.acl_file = Some(acl));
    let (mut publisher, _) = RawClient::mqtt_connect(b.addr, V4, "newsroom", true);
    publisher.publish("news/flash", b"retained", QoS::AtLeastOnce, 1, true);
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    // While the right holds, a subscriber gets the retained message.
    let (mut before, _) = RawClient::mqtt_connect(b.addr, V4, "before", true);
    before.subscribe("news/#", QoS::AtMostOnce);
    let p = before.recv_publish();
    assert!(p.retain && &p.payload[..] == b"retained", "{p:?}");
    std::fs::write(&path, "topic read news/#\ntopic readwrite alive\n").expect("write");
    assert!(b.broker.as_ref().expect("running").reload(Duration::from_secs(10)));
    for id in ["after-1", "after-2"] {
        let (mut after, _) = RawClient::mqtt_connect(b.addr, V4, id, true);
        after.subscribe("news/#", QoS::AtMostOnce);
        let got = after.recv_timeout(Duration::from_millis(500));
        assert!(got.is_none(), "{id}: retained message of a revoked publisher served: {got:?}");
    }
    still_serves(b.addr, "honest");
}

/// CVE-2023-28366 (Mosquitto 1.3.2-2.0.15): QoS 2 PUBLISHes with repeated packet ids whose
/// PUBREC was never answered leaked memory. Here a repeated id is acknowledged again without
/// a second delivery or a second entry, and more distinct unreleased ids than Receive Maximum
/// end the connection with 0x93 ([MQTT-3.3.4-9]).
#[test]
fn cve_2023_28366_inbound_qos2_state_is_bounded() {
    let b = start_with(1, |c| c.limits.inflight_max = 8);
    let (mut sub, _) = RawClient::mqtt_connect(b.addr, V4, "q2-sub", true);
    sub.subscribe("q2", QoS::AtMostOnce);
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V5, "q2-pub", true);
    for _ in 0..100 {
        c.publish("q2", b"same id", QoS::ExactlyOnce, 1, false);
        assert!(matches!(c.recv(), Packet::PubRec(r) if r.packet_id.get() == 1));
    }
    assert!(matches!(sub.recv(), Packet::Publish(_)), "delivered once");
    assert!(sub.recv_timeout(Duration::from_millis(500)).is_none(), "not again");
    for id in 2..=9 {
        c.publish("q2", b"new id", QoS::ExactlyOnce, id, false);
    }
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::ReceiveMaximumExceeded));
    still_serves(b.addr, "honest");
}

/// CVE-2023-3592 (Mosquitto 1.6-2.0.15): a v5 will with property types not allowed there
/// leaked memory. Here a will property list holding any property not allowed in a will
/// (§3.1.3.2) makes the CONNECT malformed: closed (no session, no will).
#[test]
fn cve_2023_3592_will_properties_are_validated() {
    let b = start_with(1, |_| {});
    let (mut watcher, _) = RawClient::mqtt_connect(b.addr, V4, "3592-watch", true);
    watcher.subscribe("w/3592", QoS::AtMostOnce);
    for p in [
        Property::TopicAlias(1),
        Property::SessionExpiryInterval(1),
        Property::ReceiveMaximum(5),
        Property::SubscriptionIdentifier(1),
        Property::ServerKeepAlive(1),
    ] {
        let will = Will {
            topic: tern::codec::TopicName::new("w/3592").expect("valid topic"),
            payload: Bytes::from_static(b"leak"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: vec![p.clone()].into(),
        };
        let mut c = RawClient::connect_tcp(b.addr, V5);
        c.send(&connect_v5("3592", Properties::new(), Some(will)));
        match c.recv_timeout(Duration::from_secs(5)) {
            None => {}
            Some(Packet::ConnAck(a)) => assert!(a.reason.is_error(), "{p:?}: {a:?}"),
            Some(other) => panic!("{p:?}: {other:?}"),
        }
        assert!(c.closed_within(Duration::from_secs(5)), "{p:?}");
    }
    assert!(watcher.recv_timeout(Duration::from_secs(1)).is_none(), "no will went out");
    still_serves(b.addr, "honest");
}

/// CVE-2020-13849 (MQTT 3.1.1 protocol): clients asking for a huge keep alive hold resources
/// forever. Here `limits.keepalive_secs_max` applies: v5 gets it as Server Keep Alive
/// ([MQTT-3.2.2-21]); v3, which cannot be told, is refused.
#[test]
fn cve_2020_13849_keep_alive_is_bounded() {
    let b = start_with(1, |c| c.limits.keepalive_secs_max = 60);
    let mut c = RawClient::connect_tcp(b.addr, V5);
    let Packet::Connect(mut p) = connect_v5("ka5", Properties::new(), None) else { unreachable!() };
    p.keep_alive_secs = 65_535;
    c.send(&Packet::Connect(p));
    match c.recv() {
        Packet::ConnAck(a) => {
            assert_eq!(a.reason, ReasonCode::Success);
            assert_eq!(a.properties.server_keep_alive(), Some(60));
        }
        other => panic!("CONNACK expected, got {other:?}"),
    }
    let mut c = RawClient::connect_tcp(b.addr, V4);
    c.send(&common::connect(V4, "ka4", true, 65_535));
    assert!(connack_reason(&mut c).is_some_and(|r| r != ReasonCode::Success));
    assert!(c.closed_within(Duration::from_secs(5)));
}

/// CVE-2021-33175 / CVE-2021-33176 (EMQ X, VerneMQ), CVE-2021-22116 (RabbitMQ): crafted
/// packets found by Defensics bloated memory. Here, after CONNECT too, a packet larger than
/// `limits.packet_size_bytes_max` is refused at its fixed header (DISCONNECT 0x95) before its
/// body arrives, and a body that never completes costs at most that bound.
#[test]
fn cve_2021_33175_crafted_packet_sizes_are_refused_at_the_fixed_header() {
    let b = start_with(1, |c| c.limits.packet_size_bytes_max = 64 * 1024);
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V5, "bloat", true);
    let mut head = vec![0x30];
    head.extend(varint(268_435_455));
    c.send_raw(&head);
    assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::PacketTooLarge));
    assert!(c.closed_within(Duration::from_secs(5)));
    still_serves(b.addr, "honest");
}

/// CVE-2021-33175 (EMQ X), per-connection half: one connection must not grow the broker's
/// memory however it behaves once connected. Here a client subscribes to its own topic and
/// writes 1 KiB publishes to it without ever reading: its deliveries fill its output bound
/// (1 MiB), then its queue; it is never paused on its own behalf (it could not read what would
/// resume it), so `limits.flow_hard_cap_bytes` (4 MiB here) makes it a slow consumer: closed,
/// nothing more read from it. What it manages to write is bounded by those bounds plus the
/// kernel's socket buffers (a few MiB on loopback), not by what it offers (64 MiB: before the
/// byte cap, all of it was read and queued up to the 100 000-message cap), and other clients
/// are served meanwhile.
#[test]
fn cve_2021_33175_one_connection_cannot_grow_without_bound() {
    use std::io::{ErrorKind, Read, Write};
    let b = start_with(1, |c| c.limits.flow_hard_cap_bytes = 4 << 20);
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V4, "hoarder", true);
    c.subscribe("hoard/#", QoS::AtMostOnce);
    let mut batch = BytesMut::new();
    for _ in 0..64 {
        let p = common::publish("hoard/x", &[b'x'; 1024], QoS::AtMostOnce, 0, false);
        codec::encode(&p, V4, &mut batch).expect("encodes");
    }
    // Writes block while the broker does not read; one that makes no progress for 2 s ends
    // the offer (the broker stopped reading this connection).
    c.stream.set_write_timeout(Some(Duration::from_secs(2))).expect("write timeout");
    let offered = 64usize << 20;
    let (mut written, mut at) = (0usize, 0usize);
    let started = Instant::now();
    while written < offered {
        assert!(started.elapsed() < Duration::from_secs(60), "bounded in time");
        match c.stream.write(&batch[at..]) {
            Ok(n) => {
                written += n;
                at = (at + n) % batch.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        written < 24 << 20,
        "the broker kept reading a connection it could not write to: {} MiB accepted",
        written >> 20
    );
    // What the broker wrote is readable, then the connection ends (slow consumer).
    let mut sink = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the broker closed the hoarder");
        match c.stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the hoarder is still open: {e}")
            }
            Err(_) => break, // reset: closed too
        }
    }
    still_serves(b.addr, "honest");
}

/// CVE-2026-21888 (NanoMQ <= 0.24.6): a 5-byte Variable Byte Integer was accepted and read out
/// of bounds. Here a remaining length longer than 4 bytes, or not minimal, is malformed
/// (§1.5.5): the connection is closed, before and after CONNECT.
#[test]
fn cve_2026_21888_five_byte_varint_is_malformed() {
    let b = start_with(1, |_| {});
    let mut c = RawClient::connect_tcp(b.addr, V4);
    c.send_raw(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
    assert!(c.closed_within(Duration::from_secs(5)));
    for bytes in [&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01][..], &[0x30, 0x80, 0x00]] {
        let (mut c, _) = RawClient::mqtt_connect(b.addr, V5, "varint", true);
        c.send_raw(bytes);
        assert_eq!(disconnect_reason(&mut c), Some(ReasonCode::MalformedPacket), "{bytes:?}");
    }
    still_serves(b.addr, "honest");
}

/// CVE-2026-25627 (NanoMQ < 0.24.8): a WebSocket frame shorter than the MQTT Remaining Length
/// was read out of bounds. Here the MQTT stream is reassembled across frames: a CONNECT and a
/// PUBLISH cut into frames of 1 to 3 bytes work, and a frame that ends the stream inside a
/// packet leaves nothing half-read.
#[test]
fn cve_2026_25627_mqtt_over_websocket_is_reassembled_across_frames() {
    use support::{WsClient, OP_BINARY};
    let b = start_with(2, |c| {
        c.listeners[0].transport = tern::config::Transport::Ws;
        c.listeners.push(tern::config::ListenerConfig {
            bind: "127.0.0.1:0".parse().expect("literal"),
            ..Default::default()
        });
    });
    let mut ws = WsClient::upgrade(support::tcp(b.addr), "/mqtt");
    let mut wire = common::encode(&common::connect_packet(V4, "ws-cve"), V4);
    wire.extend(common::encode(&common::subscribe_packet("ws/cve", QoS::AtMostOnce, 3), V4));
    wire.extend(common::encode(&common::publish_packet("ws/cve", b"x"), V4));
    let mut at = 0;
    for i in 0.. {
        if at >= wire.len() {
            break;
        }
        let end = (at + 1 + i % 3).min(wire.len());
        ws.send_frame(true, OP_BINARY, &wire[at..end]);
        at = end;
    }
    let mut m = RawClient::new(ws, V4);
    assert!(matches!(m.recv(), Packet::ConnAck(a) if a.reason == ReasonCode::Success));
    assert!(matches!(m.recv(), Packet::SubAck(_)));
    assert!(matches!(m.recv(), Packet::Publish(p) if &p.payload[..] == b"x"));
    // A PUBLISH header announcing 100 bytes followed by a 3-byte frame and a close: no crash.
    m.stream.send_frame(true, OP_BINARY, &[0x30, 100, 0x00]);
    m.stream.send_frame(true, support::OP_CLOSE, &[0x03, 0xE8]);
    drop(m);
    // Listener 1 is plain TCP (the shards' private ports speak WebSocket like listener 0).
    still_serves(b.broker.as_ref().expect("running").local_addrs[1], "honest");
}

/// CVE-2025-59946 (NanoMQ < 0.24.2): a race on a shared subscription list. Here shards share
/// no mutable state; subscription changes cross shards as messages. Subscribing and
/// unsubscribing on one shard while another publishes ends consistent: the final subscription
/// gets exactly the messages published after its SUBACK.
#[test]
fn cve_2025_59946_cross_shard_subscription_updates_are_messages() {
    let b = start_with(2, |_| {});
    let (mut s, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "churn-sub", true);
    let (mut p, _) = RawClient::mqtt_connect(b.shard_addrs[1], V4, "churn-pub", true);
    for i in 0..200u16 {
        let sub = Subscribe {
            packet_id: common::pid(i + 1),
            filters: vec![(
                tern::codec::TopicFilter::new("churn/#", true).expect("valid filter"),
                SubscriptionOptions::default(),
            )],
            properties: Properties::new(),
        };
        s.send(&Packet::Subscribe(sub));
        let unsub = tern::codec::Unsubscribe {
            packet_id: common::pid(i + 1),
            filters: vec![tern::codec::TopicFilter::new("churn/#", true).expect("valid filter")],
            properties: Properties::new(),
        };
        s.send(&Packet::Unsubscribe(unsub));
        p.publish("churn/x", b"noise", QoS::AtMostOnce, 0, false);
    }
    // The final SUBSCRIBE (id 1000): earlier acks and noise may still be queued ahead of its
    // SUBACK, and the server may send matching PUBLISHes before it (MQTT 3.1.1 §3.8.4 allows it);
    // `subscribe_with` reads until its own SUBACK.
    let a = s.subscribe_with(common::subscribe_packet("churn/#", QoS::AtLeastOnce, 1000));
    assert!(!a.reasons[0].is_error(), "final SUBACK refused: {a:?}");
    // A marker from the same publisher: once it arrives, every earlier noise message has
    // (one publisher's messages keep their order), whatever the machine's load.
    p.publish("churn/x", b"marker", QoS::AtLeastOnce, 100, false);
    assert!(matches!(p.recv(), Packet::PubAck(_)));
    loop {
        let m = s.recv_publish();
        if let Some(id) = m.packet_id {
            s.send(&Packet::PubAck(tern::codec::PubResp::success(id)));
        }
        if &m.payload[..] == b"marker" {
            break;
        }
        assert_eq!(&m.payload[..], b"noise");
    }
    for i in 0..20u16 {
        p.publish("churn/x", format!("m{i}").as_bytes(), QoS::AtLeastOnce, i + 1, false);
        assert!(matches!(p.recv(), Packet::PubAck(_)));
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let m = s.recv_publish();
        got.push(String::from_utf8(m.payload.to_vec()).expect("utf8"));
        if let Some(id) = m.packet_id {
            s.send(&Packet::PubAck(tern::codec::PubResp::success(id)));
        }
    }
    assert!(s.recv_timeout(Duration::from_millis(300)).is_none(), "nothing twice");
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
}

/// CVE-2026-8741 (EMQX <= 6.2.0): a QoS 2 message was routed before its packet id was
/// committed, so a resend after reconnect delivered it twice. Here the id is recorded before
/// PUBREC and kept in the session: a DUP resend on a resumed session is acknowledged without a
/// second delivery ([MQTT-4.3.3-10]).
#[test]
fn cve_2026_8741_qos2_is_delivered_once_across_reconnect() {
    let b = start_with(2, |_| {});
    let (mut sub, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "eo-sub", true);
    sub.subscribe("eo", QoS::AtMostOnce);
    let (mut c, _) = RawClient::mqtt_connect(b.shard_addrs[1], V4, "eo-pub", false);
    c.publish("eo", b"once", QoS::ExactlyOnce, 7, false);
    assert!(matches!(c.recv(), Packet::PubRec(r) if r.packet_id.get() == 7));
    drop(c); // PUBREC lost with the connection, as far as the client knows.
    let (mut c, present) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "eo-pub", false);
    assert!(present);
    let Packet::Publish(mut again) = common::publish("eo", b"once", QoS::ExactlyOnce, 7, false)
    else {
        unreachable!()
    };
    again.dup = true;
    c.send(&Packet::Publish(again));
    assert!(matches!(c.recv(), Packet::PubRec(r) if r.packet_id.get() == 7));
    c.send(&Packet::PubRel(tern::codec::PubResp::success(common::pid(7))));
    assert!(matches!(c.recv(), Packet::PubComp(_)));
    assert!(matches!(sub.recv(), Packet::Publish(p) if &p.payload[..] == b"once"));
    assert!(sub.recv_timeout(Duration::from_secs(1)).is_none(), "delivered exactly once");
}

/// Mosquitto 2.0.12 changelog: a default listener opened remotely with anonymous access when
/// only `cafile` was given (fail-open default listener). Here the default listener binds to
/// loopback only, whatever else is configured.
#[test]
fn mosquitto_2_0_12_default_listener_is_loopback_only() {
    let c = tern::config::Config::from_str_named("[auth]\n", "tern.toml").expect("parses");
    assert!(c.listeners.iter().all(|l| l.bind.ip().is_loopback()), "{:?}", c.listeners);
    let text = "[[listener]]\ntransport = \"tcp\"\n";
    let c = tern::config::Config::from_str_named(text, "tern.toml").expect("parses");
    assert!(c.listeners[0].bind.ip().is_loopback(), "{:?}", c.listeners[0].bind);
}

/// Mode bits of `path` that anyone but the owner has.
fn others_bits(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o077
}

/// CVE-2017-9868 (Mosquitto <= 1.4.12): the persistence file was world readable. Every file
/// Tern creates holding secrets or state is private to its user, whatever the umask: the
/// password file written by `tern passwd -c` (run here under `umask 000`) and the write-ahead
/// log's segments.
#[test]
fn cve_2017_9868_state_files_are_not_world_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" passwd -c -b \"$1\" alice s3cret-pw")
        .arg(env!("CARGO_BIN_EXE_tern"))
        .arg(&passwd)
        .status()
        .expect("tern passwd runs");
    assert!(status.success());
    assert_eq!(others_bits(&passwd), 0, "password file readable by others");
    // Updating it (a temporary file renamed over it) keeps it private too.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" passwd -b \"$1\" bob other-pw")
        .arg(env!("CARGO_BIN_EXE_tern"))
        .arg(&passwd)
        .status()
        .expect("tern passwd runs");
    assert!(status.success());
    assert_eq!(others_bits(&passwd), 0, "updated password file readable by others");

    use tern::persist::{record::Record, wal};
    let cfg = wal::WalConfig { dir: dir.path().join("wal"), shard: 0, segment_bytes_max: 4096 };
    std::fs::create_dir_all(&cfg.dir).expect("wal dir");
    let wal_dir = cfg.dir.clone();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(64)
        .spawn(move || async move {
            let mut recovered = wal::recover(&cfg).expect("recover");
            let log = wal::Wal::open(cfg, &mut recovered).await.expect("open");
            // Enough records to rotate into a second segment.
            for i in 0..200u32 {
                let r = Record::SessionExpiry {
                    client_id: format!("client-{i}"),
                    expiry_secs: i,
                    offline_since_unix_ms: None,
                };
                let lsn = log.append(&r);
                log.sync(lsn).await.expect("sync");
            }
        })
        .expect("executor starts")
        .join()
        .expect("executor ran");
    let segments: Vec<_> = std::fs::read_dir(&wal_dir).expect("read_dir").collect();
    assert!(segments.len() >= 2, "the log rotated: {segments:?}");
    for e in segments {
        let path = e.expect("entry").path();
        assert_eq!(others_bits(&path), 0, "{} readable by others", path.display());
    }
}
