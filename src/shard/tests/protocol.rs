//! Issue 13: the last protocol gaps, driven through the in-memory cluster.

use super::*;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A subscriber `s` (QoS 2 subscription on `t`) that has just been sent one PUBLISH of `qos`;
/// returns the cluster, the subscriber and the packet id it got.
fn delivered(version: ProtocolVersion, qos: QoS) -> (Cluster, Client, PacketId) {
    let mut cl = Cluster::new(1);
    let sub = cl.connect(0, version, "s", true);
    cl.subscribe(sub, "t", QoS::ExactlyOnce);
    let p = cl.connect(0, version, "p", true);
    cl.publish(p, "t", b"m", qos, 1);
    let got = cl.recv(sub);
    let id = publishes(&got)[0].packet_id.expect("QoS 1/2 delivery has an id");
    (cl, sub, id)
}

/// The connection was closed for a protocol error: v5 got DISCONNECT 0x82 first, 3.1.1 got
/// nothing (there is no DISCONNECT from a 3.1.1 server).
fn assert_protocol_close(cl: &mut Cluster, c: Client) {
    assert!(cl.shards[c.shard].status(c.conn).closing, "connection must close");
    let got = cl.recv(c);
    if c.version.is_v5() {
        assert!(
            matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError),
            "DISCONNECT 0x82 expected, got {got:?}"
        );
    } else {
        assert!(got.is_empty(), "3.1.1 just closes, got {got:?}");
    }
}

fn ack(id: PacketId) -> PubResp {
    PubResp::success(id)
}

/// [MQTT-4.8.0-1] (3.1.1) / [MQTT-4.13.1-1] (5.0): a QoS 1 PUBLISH answered with PUBREC is a
/// protocol violation ([MQTT-4.3.2-3]: only PUBACK acknowledges QoS 1).
#[test]
fn qos1_answered_with_pubrec_closes() {
    for v in [V4, V5] {
        let (mut cl, sub, id) = delivered(v, QoS::AtLeastOnce);
        cl.send(sub, Packet::PubRec(ack(id)));
        assert_protocol_close(&mut cl, sub);
    }
}

/// [MQTT-4.8.0-1] / [MQTT-4.13.1-1]: a QoS 1 PUBLISH answered with PUBCOMP.
#[test]
fn qos1_answered_with_pubcomp_closes() {
    for v in [V4, V5] {
        let (mut cl, sub, id) = delivered(v, QoS::AtLeastOnce);
        cl.send(sub, Packet::PubComp(ack(id)));
        assert_protocol_close(&mut cl, sub);
    }
}

/// [MQTT-4.8.0-1] / [MQTT-4.13.1-1]: a QoS 2 PUBLISH answered with PUBACK ([MQTT-4.3.3-3]:
/// PUBREC acknowledges it).
#[test]
fn qos2_answered_with_puback_closes() {
    for v in [V4, V5] {
        let (mut cl, sub, id) = delivered(v, QoS::ExactlyOnce);
        cl.send(sub, Packet::PubAck(ack(id)));
        assert_protocol_close(&mut cl, sub);
    }
}

/// [MQTT-4.8.0-1] / [MQTT-4.13.1-1]: PUBCOMP before the PUBREC/PUBREL exchange.
#[test]
fn qos2_pubcomp_before_pubrel_closes() {
    for v in [V4, V5] {
        let (mut cl, sub, id) = delivered(v, QoS::ExactlyOnce);
        cl.send(sub, Packet::PubComp(ack(id)));
        assert_protocol_close(&mut cl, sub);
    }
}

/// [MQTT-4.8.0-1] / [MQTT-4.13.1-1]: PUBACK after PUBREC/PUBREL ([MQTT-4.3.3-5]: PUBCOMP
/// ends the exchange).
#[test]
fn qos2_puback_after_pubrel_closes() {
    for v in [V4, V5] {
        let (mut cl, sub, id) = delivered(v, QoS::ExactlyOnce);
        cl.send(sub, Packet::PubRec(ack(id)));
        assert!(matches!(&cl.recv(sub)[..], [Packet::PubRel(r)] if r.packet_id == id));
        cl.send(sub, Packet::PubAck(ack(id)));
        assert_protocol_close(&mut cl, sub);
    }
}

/// The right acknowledgements, unknown ids and duplicates are not violations: PUBACK or PUBCOMP
/// for an id not in flight is ignored, PUBREC for one gets PUBREL 0x92 in 5.0 (§3.6.2), a
/// duplicate PUBREC gets PUBREL again ([MQTT-4.3.3-4]).
#[test]
fn right_and_unknown_acknowledgements_keep_the_connection() {
    let (mut cl, sub, id) = delivered(V5, QoS::ExactlyOnce);
    cl.send(sub, Packet::PubRec(ack(id)));
    cl.send(sub, Packet::PubRec(ack(id)));
    let got = cl.recv(sub);
    assert!(matches!(&got[..], [Packet::PubRel(a), Packet::PubRel(b)]
        if a.reason == ReasonCode::Success && b.reason == ReasonCode::Success));
    cl.send(sub, Packet::PubComp(ack(id)));
    cl.send(sub, Packet::PubComp(ack(id)));
    cl.send(sub, Packet::PubAck(ack(pid(999))));
    cl.send(sub, Packet::PubRec(ack(pid(998))));
    let got = cl.recv(sub);
    assert!(
        matches!(&got[..], [Packet::PubRel(r)] if r.reason == ReasonCode::PacketIdentifierNotFound),
        "got {got:?}"
    );
    assert!(!cl.shards[0].status(sub.conn).closing);
}

/// A cluster of `n` shards with a changed configuration.
fn cluster_with(n: u16, change: impl Fn(&mut ShardConfig)) -> Cluster {
    let shards = (0..n)
        .map(|i| {
            let mut cfg = ShardConfig::for_tests(n);
            change(&mut cfg);
            Shard::new(i, cfg)
        })
        .collect();
    Cluster { shards, now: Instant::now() }
}

/// Hands `packet` to the client's shard without moving mesh messages afterwards.
fn send_unsettled(cl: &mut Cluster, c: Client, packet: Packet) {
    let mut buf = BytesMut::new();
    codec::encode(&packet, c.version, &mut buf).expect("test packets encode");
    let now = cl.now;
    cl.shards[c.shard].handle_read(c.conn, &buf, now);
}

/// The retained topics a new `#` subscriber on `shard` is sent ([MQTT-3.3.1-6]), sorted.
fn retained_on(cl: &mut Cluster, shard: usize, id: &str) -> Vec<String> {
    let c = cl.connect(shard, V4, id, true);
    let s = Subscribe {
        packet_id: pid(1),
        filters: vec![("#".into(), SubscriptionOptions::default())],
        properties: Properties::new(),
    };
    cl.send(c, Packet::Subscribe(s));
    let got = cl.recv(c);
    let mut topics: Vec<String> = publishes(&got).iter().map(|p| p.topic.clone()).collect();
    topics.sort();
    topics
}

/// Retained replicas stay identical once the bound is hit: two shards store different new
/// topics at the same time with room for one; every shard keeps the same one ([MQTT-3.3.1-5]:
/// the server stores the message, so every subscriber must see the same store).
#[test]
fn retained_replicas_stay_identical_when_the_bound_is_hit() {
    let mut cl = cluster_with(3, |c| c.retained_messages_max = 2);
    let p1 = cl.connect(1, V4, "p1", true);
    let p2 = cl.connect(2, V4, "p2", true);
    cl.send(p1, publish_packet("base", b"0", QoS::AtMostOnce, 0, true));
    // Both in flight at once: shard 1 and shard 2 each see their own update first.
    send_unsettled(&mut cl, p1, publish_packet("from/1", b"1", QoS::AtMostOnce, 0, true));
    send_unsettled(&mut cl, p2, publish_packet("from/2", b"2", QoS::AtMostOnce, 0, true));
    cl.settle();
    let sets: Vec<Vec<String>> =
        (0..3).map(|s| retained_on(&mut cl, s, &format!("s{s}"))).collect();
    assert_eq!(sets[0].len(), 2, "the bound holds: {sets:?}");
    assert_eq!(sets[0], sets[1], "replicas differ: {sets:?}");
    assert_eq!(sets[0], sets[2], "replicas differ: {sets:?}");
    let refused: u64 = cl.shards.iter().map(|s| s.metrics.retained_refused).sum();
    assert_eq!(refused, 1, "one refusal, counted once");
    // A clear frees the room on every replica alike.
    send_unsettled(&mut cl, p2, publish_packet("base", b"", QoS::AtMostOnce, 0, true));
    send_unsettled(&mut cl, p1, publish_packet("from/1b", b"x", QoS::AtMostOnce, 0, true));
    cl.settle();
    let sets: Vec<Vec<String>> =
        (0..3).map(|s| retained_on(&mut cl, s, &format!("t{s}"))).collect();
    assert_eq!(sets[0], sets[1]);
    assert_eq!(sets[0], sets[2]);
}

/// Opens a v5 connection that announces Maximum Packet Size `max`; returns what it got.
fn connect_with_max(cl: &mut Cluster, id: &str, max: u32) -> (Client, Vec<Packet>, BytesMut) {
    let c = cl.open(0, V5);
    let Packet::Connect(mut connect) = connect_packet(V5, id, true) else { unreachable!() };
    connect.properties.push(codec::Property::MaximumPacketSize(max));
    cl.send(c, Packet::Connect(connect));
    let raw = cl.shards[0].take_tx(c.conn);
    let mut buf = raw.clone();
    let mut got = Vec::new();
    while let Some(p) = codec::decode(&mut buf, V5, usize::MAX).expect("broker output decodes") {
        got.push(p);
    }
    (c, got, raw)
}

/// [MQTT-3.1.2-24]: the CONNACK respects the client's Maximum Packet Size too. With room for
/// less than the full CONNACK (24 bytes), optional properties are left out and the ones that
/// change behaviour stay; with no room even for those, the connection closes without a CONNACK.
#[test]
fn connack_fits_the_client_maximum_packet_size() {
    let mut cl = Cluster::new(1);
    let (_, got, raw) = connect_with_max(&mut cl, "big", 1000);
    assert!(matches!(&got[..], [Packet::ConnAck(_)]));
    let full = raw.len();
    assert!(full > 20, "the full CONNACK is {full} bytes");

    let (c, got, raw) = connect_with_max(&mut cl, "small", 20);
    let [Packet::ConnAck(ack)] = &got[..] else { panic!("one CONNACK expected, got {got:?}") };
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(raw.len() <= 20, "CONNACK of {} bytes over the client's 20", raw.len());
    assert_eq!(ack.properties.receive_maximum(), Some(16), "behaviour-changing property kept");
    assert!(ack.properties.maximum_packet_size().is_some());
    assert!(!cl.shards[0].status(c.conn).closing);

    let (c, got, _) = connect_with_max(&mut cl, "tiny", 10);
    assert!(got.is_empty(), "nothing fits in 10 bytes, got {got:?}");
    assert!(cl.shards[0].status(c.conn).closing);
    assert_eq!(cl.shards[0].metrics.packets_dropped_too_large, 1);
}

/// [MQTT-3.14.2-3]: the server's DISCONNECT leaves its Reason String out rather than exceed
/// the client's Maximum Packet Size.
#[test]
fn disconnect_reason_string_left_out_to_fit() {
    let mut cl = Cluster::new(1);
    let (c, _, _) = connect_with_max(&mut cl, "d", 20);
    cl.send(c, connect_packet(V5, "d", true)); // [MQTT-3.1.0-2]: a second CONNECT
    let raw = cl.shards[0].take_tx(c.conn);
    assert!(raw.len() <= 20);
    let mut buf = raw.clone();
    let got = codec::decode(&mut buf, V5, usize::MAX).expect("decodes");
    assert!(matches!(got, Some(Packet::Disconnect(d))
        if d.reason == ReasonCode::ProtocolError && d.properties.reason_string().is_none()));
}
