//! End-to-end MQTT 5.0 features over loopback against a two-shard broker, with raw packets so
//! every property and reason code is visible. Each test names the spec statement or section.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{pid, start, start_with, RawClient};
use tern::codec::{
    Connect, Packet, Property, ProtocolVersion, PubResp, Publish, QoS, ReasonCode, ReasonPacket,
    RetainHandling, Subscribe, SubscriptionOptions, Will,
};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn connect_props(id: &str, clean: bool, props: Vec<Property>) -> Connect {
    Connect {
        version: V5,
        clean_start: clean,
        keep_alive_secs: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: props.into(),
    }
}

/// Connects with `connect`; returns the client and its CONNACK.
fn open(addr: std::net::SocketAddr, connect: Connect) -> (RawClient, tern::codec::ConnAck) {
    let mut c = RawClient::connect_tcp(addr, V5);
    c.send(&Packet::Connect(Box::new(connect)));
    match c.recv() {
        Packet::ConnAck(a) => (c, a),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn ok(addr: std::net::SocketAddr, id: &str, props: Vec<Property>) -> RawClient {
    let (c, a) = open(addr, connect_props(id, true, props));
    assert_eq!(a.reason, ReasonCode::Success);
    c
}

fn sub(
    c: &mut RawClient,
    filter: &str,
    opts: SubscriptionOptions,
    props: Vec<Property>,
) -> Vec<ReasonCode> {
    c.subscribe_with(Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(tern::codec::TopicFilter::new(filter, true).expect("valid filter"), opts)],
        properties: props.into(),
    }))
    .reasons
}

fn qos(q: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos: q, ..Default::default() }
}

fn publish(
    topic: &str,
    payload: &[u8],
    q: QoS,
    id: u16,
    retain: bool,
    props: Vec<Property>,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: q,
        retain,
        // "" is the v5 alias-only form; any other name must be valid (a test bug otherwise).
        topic: (!topic.is_empty())
            .then(|| tern::codec::TopicName::new(topic).expect("valid topic")),
        packet_id: (q != QoS::AtMostOnce).then(|| pid(id)),
        properties: props.into(),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// Receives the server's DISCONNECT (skipping other packets) and returns its reason code.
fn disconnect_reason(c: &mut RawClient) -> ReasonCode {
    for _ in 0..100 {
        match c.recv_timeout(Duration::from_secs(5)) {
            Some(Packet::Disconnect(d)) => return d.reason,
            Some(_) => continue,
            None => panic!("closed without DISCONNECT"),
        }
    }
    panic!("no DISCONNECT")
}

#[test]
fn connack_advertises_limits_and_features() {
    // §3.2.2.3: Receive Maximum, Maximum Packet Size, Topic Alias Maximum, availability flags,
    // Assigned Client Identifier for an empty id ([MQTT-3.2.2-16]), Server Keep Alive.
    let b = start_with(2, |c| {
        c.limits.inflight_max = 20;
        c.limits.packet_size_bytes_max = 4096;
        c.limits.topic_alias_max = 10;
        c.limits.keepalive_secs_max = 60;
    });
    let mut cp = connect_props("", true, vec![]);
    cp.keep_alive_secs = 600;
    let (_c, a) = open(b.addr, cp);
    assert_eq!(a.reason, ReasonCode::Success);
    let p = &a.properties;
    assert_eq!(p.receive_maximum(), Some(20));
    assert_eq!(p.maximum_packet_size(), Some(4096));
    assert_eq!(p.topic_alias_maximum(), Some(10));
    assert_eq!(p.server_keep_alive(), Some(60), "[MQTT-3.2.2-21] server keep alive imposed");
    assert_eq!(p.maximum_qos(), None, "absent: QoS 2 supported");
    assert_eq!(p.retain_available(), Some(1));
    assert_eq!(p.wildcard_subscription_available(), Some(1));
    assert_eq!(p.subscription_identifier_available(), Some(1));
    assert_eq!(p.shared_subscription_available(), Some(1));
    assert!(p.assigned_client_identifier().is_some_and(|id| !id.is_empty()));
}

#[test]
fn session_expiry_keeps_the_session_until_it_runs_out() {
    // §3.1.2.11.2 Session Expiry Interval; [MQTT-3.1.2-23] state kept after the connection.
    let b = start();
    let expiry = vec![Property::SessionExpiryInterval(2)];
    let (mut c, _) = open(b.shard_addrs[0], connect_props("exp", true, expiry.clone()));
    sub(&mut c, "exp/t", qos(QoS::AtLeastOnce), vec![]);
    drop(c);
    let mut p = ok(b.shard_addrs[1], "exp-pub", vec![]);
    p.send(&publish("exp/t", b"queued", QoS::AtLeastOnce, 1, false, vec![]));
    assert!(matches!(p.recv(), Packet::PubAck(_)));
    let (mut c, a) = open(b.shard_addrs[1], connect_props("exp", false, expiry.clone()));
    assert!(a.session_present, "resumed within the interval");
    assert_eq!(&c.recv_publish().payload[..], b"queued");
    c.send(&Packet::Disconnect(ReasonPacket::new(ReasonCode::Success)));
    // The runtime's clock ends it: wait for the broker to count the expiry (the bounds on both
    // sides of the deadline are checked on the harness clock, in tern-core's
    // `shard::tests::expiry`), then the session is gone.
    assert!(b.wait_stats(|m| m.sessions_expired >= 1), "the session expired");
    let (_c, a) = open(b.shard_addrs[0], connect_props("exp", false, expiry));
    assert!(!a.session_present, "expired after 2 s");
}

#[test]
fn disconnect_cannot_revive_a_session_with_expiry_zero() {
    // [MQTT-3.14.2-2]: Session Expiry set on DISCONNECT when CONNECT had 0 is a Protocol Error.
    let b = start();
    let mut c = ok(b.addr, "zero", vec![]);
    let mut d = ReasonPacket::new(ReasonCode::Success);
    d.properties.push(Property::SessionExpiryInterval(60));
    c.send(&Packet::Disconnect(d));
    assert_eq!(disconnect_reason(&mut c), ReasonCode::ProtocolError);
}

// Message expiry (§3.3.2.3.3, [MQTT-3.3.2-6]) is a matter of time only: it is checked on the
// harness clock in tern-core's `shard::tests::expiry`, exactly, rather than waited out here.

#[test]
fn inbound_topic_aliases_resolve_and_out_of_range_alias_disconnects() {
    // §3.3.2.3.4; [MQTT-3.3.2-9] alias above our Topic Alias Maximum → DISCONNECT 0x94.
    let b = start_with(2, |c| c.limits.topic_alias_max = 4);
    let mut s = ok(b.shard_addrs[0], "alias-sub", vec![]);
    sub(&mut s, "alias/#", qos(QoS::AtMostOnce), vec![]);
    let mut p = ok(b.shard_addrs[1], "alias-pub", vec![]);
    p.send(&publish(
        "alias/long/topic",
        b"1",
        QoS::AtMostOnce,
        0,
        false,
        vec![Property::TopicAlias(3)],
    ));
    p.send(&publish("", b"2", QoS::AtMostOnce, 0, false, vec![Property::TopicAlias(3)]));
    for want in [b"1", b"2"] {
        let m = s.recv_publish();
        assert_eq!(m.topic.as_deref(), Some("alias/long/topic"));
        assert_eq!(&m.payload[..], want);
        assert_eq!(m.properties.topic_alias(), None, "aliases are per connection");
    }
    p.send(&publish("alias/x", b"3", QoS::AtMostOnce, 0, false, vec![Property::TopicAlias(5)]));
    assert_eq!(disconnect_reason(&mut p), ReasonCode::TopicAliasInvalid);
}

#[test]
fn outbound_topic_aliases_up_to_the_clients_maximum() {
    // §3.3.2.3.4: the server may send an alias the client allowed with Topic Alias Maximum.
    let b = start();
    let mut s = ok(b.shard_addrs[0], "oa-sub", vec![Property::TopicAliasMaximum(2)]);
    sub(&mut s, "oa/#", qos(QoS::AtMostOnce), vec![]);
    let mut p = ok(b.shard_addrs[1], "oa-pub", vec![]);
    for t in ["oa/a", "oa/a", "oa/b", "oa/c"] {
        p.send(&publish(t, b"x", QoS::AtMostOnce, 0, false, vec![]));
    }
    let first = s.recv_publish();
    assert_eq!(
        (first.topic.as_deref().unwrap_or(""), first.properties.topic_alias()),
        ("oa/a", Some(1))
    );
    let second = s.recv_publish();
    assert_eq!(
        (second.topic.as_deref().unwrap_or(""), second.properties.topic_alias()),
        ("", Some(1))
    );
    let third = s.recv_publish();
    assert_eq!(
        (third.topic.as_deref().unwrap_or(""), third.properties.topic_alias()),
        ("oa/b", Some(2))
    );
    let fourth = s.recv_publish();
    assert_eq!(
        (fourth.topic.as_deref().unwrap_or(""), fourth.properties.topic_alias()),
        ("oa/c", None)
    );
}

#[test]
fn flow_control_respects_the_clients_receive_maximum() {
    // [MQTT-3.3.4-9]: no more unacknowledged QoS 1/2 than the client's Receive Maximum.
    let b = start();
    let mut s = ok(b.shard_addrs[0], "rm-sub", vec![Property::ReceiveMaximum(2)]);
    sub(&mut s, "rm", qos(QoS::AtLeastOnce), vec![]);
    let mut p = ok(b.shard_addrs[1], "rm-pub", vec![]);
    for i in 1..=5u16 {
        p.send(&publish("rm", &[i as u8], QoS::AtLeastOnce, i, false, vec![]));
    }
    let a = s.recv_publish();
    let b2 = s.recv_publish();
    assert!(s.recv_timeout(Duration::from_millis(300)).is_none(), "window of 2 is full");
    s.send(&Packet::PubAck(PubResp::success(a.packet_id.expect("qos1"))));
    let c = s.recv_publish();
    assert_eq!((a.payload[0], b2.payload[0], c.payload[0]), (1, 2, 3), "in order");
}

#[test]
fn exceeding_our_receive_maximum_disconnects_with_0x93() {
    // [MQTT-3.3.4-9] from the client side: more QoS 2 PUBLISH unacknowledged than we allow.
    let b = start_with(2, |c| c.limits.inflight_max = 2);
    let mut p = ok(b.addr, "greedy", vec![]);
    for i in 1..=3u16 {
        p.send(&publish("q2", b"x", QoS::ExactlyOnce, i, false, vec![]));
    }
    assert_eq!(disconnect_reason(&mut p), ReasonCode::ReceiveMaximumExceeded);
}

#[test]
fn maximum_packet_size_both_ways() {
    // Inbound: DISCONNECT 0x95 (§4.13). Outbound: [MQTT-3.1.2-25] a message larger than the
    // client's Maximum Packet Size is not sent to it.
    let b = start_with(2, |c| c.limits.packet_size_bytes_max = 512);
    let mut s = ok(b.shard_addrs[0], "small", vec![Property::MaximumPacketSize(64)]);
    sub(&mut s, "mps", qos(QoS::AtLeastOnce), vec![]);
    let mut p = ok(b.shard_addrs[1], "mps-pub", vec![]);
    p.send(&publish("mps", &[7u8; 200], QoS::AtLeastOnce, 1, false, vec![]));
    p.send(&publish("mps", b"tiny", QoS::AtLeastOnce, 2, false, vec![]));
    assert_eq!(&s.recv_publish().payload[..], b"tiny", "the 200-byte message was dropped");
    p.send(&publish("mps", &[0u8; 1000], QoS::AtMostOnce, 0, false, vec![]));
    assert_eq!(disconnect_reason(&mut p), ReasonCode::PacketTooLarge);
}

#[test]
fn subscription_identifiers_no_local_and_retain_as_published() {
    // §3.8.2.1.2 Subscription Identifier; [MQTT-3.8.3-3] No Local; [MQTT-3.3.1-12/13] RAP.
    let b = start();
    let mut c = ok(b.addr, "opts", vec![]);
    let nl = SubscriptionOptions { no_local: true, ..qos(QoS::AtMostOnce) };
    sub(&mut c, "own/#", nl, vec![Property::SubscriptionIdentifier(7)]);
    let rap = SubscriptionOptions { retain_as_published: true, ..qos(QoS::AtMostOnce) };
    sub(&mut c, "rap/#", rap, vec![Property::SubscriptionIdentifier(9)]);
    c.send(&publish("own/x", b"mine", QoS::AtMostOnce, 0, false, vec![]));
    let mut other = ok(b.addr, "other", vec![]);
    other.send(&publish("own/x", b"theirs", QoS::AtMostOnce, 0, false, vec![]));
    other.send(&publish("rap/x", b"kept-flag", QoS::AtMostOnce, 0, true, vec![]));
    let m = c.recv_publish();
    assert_eq!(&m.payload[..], b"theirs", "No Local: own message not delivered");
    assert_eq!(m.properties.subscription_identifiers().collect::<Vec<_>>(), vec![7]);
    let m = c.recv_publish();
    assert!(m.retain, "Retain As Published keeps the flag");
    assert_eq!(m.properties.subscription_identifiers().collect::<Vec<_>>(), vec![9]);
}

#[test]
fn retain_handling_0_1_2() {
    // §3.8.3.1 Retain Handling; [MQTT-3.3.1-9..11].
    let b = start();
    let mut p = ok(b.addr, "rh-pub", vec![]);
    p.send(&publish("rh/t", b"r", QoS::AtLeastOnce, 1, true, vec![]));
    assert!(matches!(p.recv(), Packet::PubAck(_)));
    for shard in &b.shard_addrs {
        common::wait_retained(*shard, "rh/t", b"r");
    }
    let mut c = ok(b.addr, "rh", vec![]);
    let with = |rh| SubscriptionOptions { retain_handling: rh, ..qos(QoS::AtMostOnce) };
    sub(&mut c, "rh/#", with(RetainHandling::DoNotSend), vec![]);
    assert!(c.recv_timeout(Duration::from_millis(300)).is_none(), "2: not sent");
    sub(&mut c, "rh/+", with(RetainHandling::SendIfNew), vec![]);
    assert!(c.recv_publish().retain, "1: sent for a new subscription");
    sub(&mut c, "rh/+", with(RetainHandling::SendIfNew), vec![]);
    assert!(c.recv_timeout(Duration::from_millis(300)).is_none(), "1: not sent when it existed");
    sub(&mut c, "rh/+", with(RetainHandling::SendAtSubscribe), vec![]);
    assert!(c.recv_publish().retain, "0: sent at every subscribe");
}

#[test]
fn request_response_and_user_properties_are_forwarded_in_order() {
    // §4.10 request/response; [MQTT-3.3.2-17] user properties forwarded in order; content type
    // and payload format indicator unchanged ([MQTT-3.3.2-4]).
    let b = start();
    let mut s = ok(b.shard_addrs[0], "rr-sub", vec![]);
    sub(&mut s, "req/+", qos(QoS::AtMostOnce), vec![]);
    let mut p = ok(b.shard_addrs[1], "rr-pub", vec![]);
    let props = vec![
        Property::PayloadFormatIndicator(1),
        Property::ContentType("application/json".into()),
        Property::ResponseTopic("resp/rr-pub".into()),
        Property::CorrelationData(Bytes::from_static(b"\x01\x02")),
        Property::UserProperty("b".into(), "2".into()),
        Property::UserProperty("a".into(), "1".into()),
        Property::UserProperty("b".into(), "3".into()),
    ];
    p.send(&publish("req/x", b"{}", QoS::AtMostOnce, 0, false, props));
    let m = s.recv_publish();
    let p = &m.properties;
    assert_eq!(p.payload_format_indicator(), Some(1));
    assert_eq!(p.content_type().as_deref(), Some("application/json"));
    assert_eq!(p.response_topic().as_deref(), Some("resp/rr-pub"));
    assert_eq!(p.correlation_data().as_deref(), Some(&b"\x01\x02"[..]));
    let users: Vec<(&str, &str)> = p.user_properties().collect();
    assert_eq!(users, vec![("b", "2"), ("a", "1"), ("b", "3")]);
}

#[test]
fn response_information_when_requested() {
    // §3.1.2.11.7 Request Response Information → §3.2.2.3.15 Response Information.
    let b = start();
    let (_c, a) =
        open(b.addr, connect_props("asker", true, vec![Property::RequestResponseInformation(1)]));
    assert_eq!(a.properties.response_information().as_deref(), Some("responses/asker/"));
    let (_c, a) = open(b.addr, connect_props("quiet", true, vec![]));
    assert_eq!(a.properties.response_information(), None);
}

#[test]
fn payload_format_indicator_with_bad_utf8_is_refused() {
    // §3.3.2.3.2: PUBACK 0x99 Payload format invalid; with a Reason String unless the client
    // asked for no problem information ([MQTT-3.1.2-29]).
    let b = start();
    let mut p = ok(b.addr, "pfi", vec![]);
    p.send(&publish(
        "pfi",
        &[0xFF, 0xFE],
        QoS::AtLeastOnce,
        1,
        false,
        vec![Property::PayloadFormatIndicator(1)],
    ));
    match p.recv() {
        Packet::PubAck(r) => {
            assert_eq!(r.reason, ReasonCode::PayloadFormatInvalid);
            assert!(r.properties.reason_string().is_some());
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let mut q = ok(b.addr, "pfi-quiet", vec![Property::RequestProblemInformation(0)]);
    q.send(&publish(
        "pfi",
        &[0xFF],
        QoS::AtLeastOnce,
        1,
        false,
        vec![Property::PayloadFormatIndicator(1)],
    ));
    match q.recv() {
        Packet::PubAck(r) => {
            assert_eq!(r.reason, ReasonCode::PayloadFormatInvalid);
            assert!(r.properties.reason_string().is_none(), "[MQTT-3.1.2-29]");
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

fn will_connect(id: &str, delay: u32, expiry: u32) -> Connect {
    let mut c = connect_props(id, true, vec![Property::SessionExpiryInterval(expiry)]);
    c.will = Some(Will {
        topic: tern::codec::TopicName::new(format!("wd/{id}")).expect("valid topic"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: vec![Property::WillDelayInterval(delay)].into(),
    });
    c
}

#[test]
fn will_delay_is_cancelled_by_a_reconnect_and_honoured_otherwise() {
    // §3.1.3.2.2 Will Delay Interval; [MQTT-3.1.3-9].
    let b = start();
    let mut w = ok(b.shard_addrs[1], "wd-watch", vec![]);
    sub(&mut w, "wd/#", qos(QoS::AtMostOnce), vec![]);
    let (back, _) = open(b.shard_addrs[0], will_connect("back", 2, 60));
    let (late, _) = open(b.shard_addrs[0], will_connect("late", 1, 60));
    drop(back);
    drop(late);
    // Whether the broker has seen `back` go before it comes back or takes the live connection
    // over, the will waits its delay and the reconnect cancels it ([MQTT-3.1.2-8]); the exact
    // timing is checked on the harness clock in tern-core's `shard::tests::expiry`.
    let mut again = connect_props("back", false, vec![Property::SessionExpiryInterval(60)]);
    again.keep_alive_secs = 30;
    let (_back, a) = open(b.shard_addrs[1], again);
    assert!(a.session_present);
    let m = w.recv_publish();
    assert_eq!(m.topic.as_deref(), Some("wd/late"), "published after its 1 s delay");
    assert!(w.recv_timeout(Duration::from_millis(2500)).is_none(), "wd/back was cancelled");
}

#[test]
fn server_redirection_refuses_with_a_server_reference() {
    // §4.11: CONNACK 0x9C Use another server with Server Reference.
    let b = start_with(2, |c| {
        c.listeners[0].redirect = Some(tern::config::Redirect {
            reference: "other.example:1883".into(),
            permanent: false,
        });
    });
    let (_c, a) = open(b.addr, connect_props("r", true, vec![]));
    assert_eq!(a.reason, ReasonCode::UseAnotherServer);
    assert_eq!(a.properties.server_reference().as_deref(), Some("other.example:1883"));
}

#[test]
fn takeover_sends_disconnect_0x8e_with_a_reason_string() {
    // [MQTT-3.1.4-3] / §3.14.2.1: Session taken over.
    let b = start();
    let mut old = ok(b.shard_addrs[0], "twice", vec![]);
    let _new = ok(b.shard_addrs[1], "twice", vec![]);
    match old.recv() {
        Packet::Disconnect(d) => {
            assert_eq!(d.reason, ReasonCode::SessionTakenOver);
            assert!(d.properties.reason_string().is_some());
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

#[test]
fn keepalive_timeout_sends_disconnect_0x8d() {
    let b = start();
    let mut cp = connect_props("ka", true, vec![]);
    cp.keep_alive_secs = 1;
    let (mut c, _) = open(b.addr, cp);
    assert_eq!(disconnect_reason(&mut c), ReasonCode::KeepAliveTimeout);
}

#[test]
fn v311_and_v5_clients_interoperate() {
    // Properties are dropped toward 3.1.1 subscribers; QoS and payload kept both ways.
    let b = start();
    let (mut v3, _) = RawClient::mqtt_connect(b.shard_addrs[0], ProtocolVersion::V311, "old", true);
    v3.subscribe("mix/#", QoS::AtLeastOnce);
    let mut v5 = ok(b.shard_addrs[1], "new", vec![]);
    sub(&mut v5, "mix/#", qos(QoS::AtLeastOnce), vec![]);
    v5.send(&publish(
        "mix/a",
        b"from5",
        QoS::AtLeastOnce,
        1,
        false,
        vec![Property::UserProperty("k".into(), "v".into())],
    ));
    let m = v3.recv_publish();
    assert_eq!(&m.payload[..], b"from5");
    assert!(m.properties.is_empty());
    v3.publish("mix/b", b"from3", QoS::AtLeastOnce, 2, false);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(v5.recv_publish().payload.to_vec());
    }
    assert!(got.contains(&b"from3".to_vec()));
}

#[test]
fn shared_subscriptions_v5_native() {
    // §4.8.2: one member of the group receives each message; no retained messages on them.
    let b = start();
    let mut a = ok(b.shard_addrs[0], "sa", vec![]);
    let mut c = ok(b.shard_addrs[1], "sb", vec![]);
    assert_eq!(
        sub(&mut a, "$share/g5/work/+", qos(QoS::AtLeastOnce), vec![]),
        vec![ReasonCode::GrantedQoS1]
    );
    sub(&mut c, "$share/g5/work/+", qos(QoS::AtLeastOnce), vec![]);
    let mut p = ok(b.shard_addrs[0], "sp", vec![]);
    for i in 1..=10u16 {
        p.send(&publish("work/x", &[i as u8], QoS::AtLeastOnce, i, false, vec![]));
    }
    let mut n = 0;
    for client in [&mut a, &mut c] {
        while let Some(pk) = client.recv_timeout(Duration::from_millis(300)) {
            if let Packet::Publish(m) = pk {
                n += 1;
                client.send(&Packet::PubAck(PubResp::success(m.packet_id.expect("qos1"))));
            }
        }
    }
    assert_eq!(n, 10);
}
