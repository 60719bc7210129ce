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
