//! Shards driven in one thread: bytes in, bytes out, mesh messages moved by hand. No sockets,
//! no glommio; time is passed in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::codec::{
    Connect, PacketId, Properties, PubResp, Publish, QoS, Subscribe, SubscriptionOptions,
};

/// Several shards and their connections, with the mesh emptied by `settle`.
struct Cluster {
    shards: Vec<Shard>,
    now: Instant,
}

/// A client connection on one shard: what it sent and what it got back.
#[derive(Clone, Copy)]
struct Client {
    shard: usize,
    conn: ConnId,
    version: ProtocolVersion,
}

fn peer() -> SocketAddr {
    "127.0.0.1:5000".parse().expect("literal address")
}

impl Cluster {
    fn new(n: u16) -> Self {
        let shards = (0..n).map(|i| Shard::new(i, ShardConfig::for_tests(n))).collect();
        Self { shards, now: Instant::now() }
    }

    /// Moves mesh messages until every outbox is empty (bounded to catch loops).
    fn settle(&mut self) {
        self.settle_within(100);
    }

    /// `settle` with a bound of `rounds` (a pipeline of N held SUBACKs takes N rounds).
    fn settle_within(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let mut moved = false;
            for from in 0..self.shards.len() {
                for to in 0..self.shards.len() {
                    let msgs: Vec<ShardMsg> = self.shards[from].outbox()[to].drain(..).collect();
                    for m in msgs {
                        moved = true;
                        let now = self.now;
                        self.shards[to].handle_peer(from as u16, m, now);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("mesh did not settle in {rounds} rounds");
    }

    fn open(&mut self, shard: usize, version: ProtocolVersion) -> Client {
        let conn = self.shards[shard].accept(0, peer(), self.now).expect("under the limit");
        Client { shard, conn, version }
    }

    fn send(&mut self, c: Client, packet: Packet) {
        let mut buf = BytesMut::new();
        codec::encode(&packet, c.version, &mut buf).expect("test packets encode");
        let now = self.now;
        self.shards[c.shard].handle_read(c.conn, &buf, now);
        self.settle();
    }

    fn send_raw(&mut self, c: Client, bytes: &[u8]) {
        let now = self.now;
        self.shards[c.shard].handle_read(c.conn, bytes, now);
        self.settle();
    }

    /// Every packet the client has been sent since the last call.
    fn recv(&mut self, c: Client) -> Vec<Packet> {
        let mut tx = self.shards[c.shard].take_tx(c.conn);
        let mut out = Vec::new();
        while let Some(p) =
            codec::decode(&mut tx, c.version, usize::MAX).expect("broker output decodes")
        {
            out.push(p);
        }
        assert!(tx.is_empty(), "broker wrote a partial packet");
        out
    }

    fn connect(&mut self, shard: usize, version: ProtocolVersion, id: &str, clean: bool) -> Client {
        let c = self.open(shard, version);
        self.send(c, connect_packet(version, id, clean));
        let got = self.recv(c);
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success),
            "CONNACK success expected, got {got:?}"
        );
        c
    }

    fn subscribe(&mut self, c: Client, filter: &str, qos: QoS) {
        let s = Subscribe {
            packet_id: pid(1),
            filters: vec![(filter.into(), SubscriptionOptions { qos, ..Default::default() })],
            properties: Properties::new(),
        };
        self.send(c, Packet::Subscribe(s));
        let got = self.recv(c);
        assert!(matches!(&got[..], [Packet::SubAck(_), ..]), "SUBACK expected, got {got:?}");
    }

    fn publish(&mut self, c: Client, topic: &str, payload: &'static [u8], qos: QoS, id: u16) {
        self.send(c, publish_packet(topic, payload, qos, id, false));
    }
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero test id")
}

fn connect_packet(version: ProtocolVersion, id: &str, clean: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        clean_start: clean,
        keep_alive_secs: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::new(),
    }))
}

fn publish_packet(topic: &str, payload: &'static [u8], qos: QoS, id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        properties: Properties::new(),
        payload: Bytes::from_static(payload),
    })
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets.iter().filter_map(|p| if let Packet::Publish(p) = p { Some(p) } else { None }).collect()
}

const V4: ProtocolVersion = ProtocolVersion::V311;

#[test]
fn publish_reaches_subscriber_on_the_same_and_the_other_shard() {
    let mut cl = Cluster::new(2);
    let local = cl.connect(0, V4, "local", true);
    let remote = cl.connect(1, V4, "remote", true);
    let publisher = cl.connect(0, V4, "pub", true);
    cl.subscribe(local, "a/+", QoS::AtMostOnce);
    cl.subscribe(remote, "a/#", QoS::AtMostOnce);
    cl.publish(publisher, "a/b", b"hi", QoS::AtMostOnce, 0);
    for c in [local, remote] {
        let got = cl.recv(c);
        let p = publishes(&got);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].topic, "a/b");
        assert_eq!(&p[0].payload[..], b"hi");
    }
    assert_eq!(cl.shards[0].metrics.messages_forwarded, 1, "one hop to shard 1");
}

#[test]
fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    let mut cl = Cluster::new(1);
    let c = cl.open(0, V4);
    cl.send(c, Packet::PingReq);
    assert!(cl.shards[0].status(c.conn).closing);
}

#[test]
fn second_connect_is_a_protocol_violation() {
    // [MQTT-3.1.0-2]
    let mut cl = Cluster::new(1);
    let c = cl.connect(0, V4, "x", true);
    cl.send(c, connect_packet(V4, "x", true));
    assert!(cl.shards[0].status(c.conn).closing);
}

#[test]
fn malformed_packet_closes_only_that_connection() {
    let mut cl = Cluster::new(1);
    let good = cl.connect(0, V4, "good", true);
    let bad = cl.connect(0, V4, "bad", true);
    cl.subscribe(good, "t", QoS::AtMostOnce);
    // PUBLISH with QoS 3 ([MQTT-3.3.1-4]).
    cl.send_raw(bad, &[0x36, 0x03, 0x00, 0x01, b't']);
    assert!(cl.shards[0].status(bad.conn).closing);
    assert!(!cl.shards[0].status(good.conn).closing);
    let publisher = cl.connect(0, V4, "p", true);
    cl.publish(publisher, "t", b"x", QoS::AtMostOnce, 0);
    assert_eq!(publishes(&cl.recv(good)).len(), 1);
}

#[test]
fn zero_length_client_id_rules() {
    // [MQTT-3.1.3-8]: empty id with clean session 0 is refused with 0x02.
    let mut cl = Cluster::new(1);
    let c = cl.open(0, V4);
    cl.send(c, connect_packet(V4, "", false));
    let got = cl.recv(c);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::ClientIdentifierNotValid)
    );
    // [MQTT-3.1.3-6]: empty id with clean session 1 gets an id assigned.
    let c = cl.open(0, V4);
    cl.send(c, connect_packet(V4, "", true));
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success));
}

#[test]
fn qos1_downgraded_to_subscription_qos_and_acked() {
    let mut cl = Cluster::new(2);
    let sub = cl.connect(1, V4, "s", true);
    cl.subscribe(sub, "q", QoS::AtMostOnce);
    let publisher = cl.connect(0, V4, "p", true);
    cl.publish(publisher, "q", b"1", QoS::AtLeastOnce, 7);
    let acks = cl.recv(publisher);
    assert!(matches!(&acks[..], [Packet::PubAck(r)] if r.packet_id == pid(7)));
    let got = cl.recv(sub);
    assert_eq!(publishes(&got)[0].qos, QoS::AtMostOnce, "[MQTT-3.8.4-8] min(1, 0)");
}

#[test]
fn qos2_inbound_is_exactly_once() {
    let mut cl = Cluster::new(1);
    let sub = cl.connect(0, V4, "s", true);
    cl.subscribe(sub, "q", QoS::ExactlyOnce);
    let p = cl.connect(0, V4, "p", true);
    cl.publish(p, "q", b"once", QoS::ExactlyOnce, 3);
    // Resent before PUBREL (DUP): acknowledged again, not routed again (§4.3.3).
    cl.publish(p, "q", b"once", QoS::ExactlyOnce, 3);
    let acks = cl.recv(p);
    assert_eq!(acks.iter().filter(|a| matches!(a, Packet::PubRec(_))).count(), 2);
    cl.send(p, Packet::PubRel(PubResp::success(pid(3))));
    assert!(matches!(&cl.recv(p)[..], [Packet::PubComp(_)]));
    let got = cl.recv(sub);
    assert_eq!(publishes(&got).len(), 1);
    assert_eq!(cl.shards[0].metrics.inbound_qos2_duplicates, 1);
}

#[test]
fn persistent_session_queues_qos1_while_offline_and_resends_on_resume() {
    let mut cl = Cluster::new(2);
    let sub = cl.connect(0, V4, "dev", false);
    cl.subscribe(sub, "cmd", QoS::AtLeastOnce);
    let p = cl.connect(1, V4, "p", true);
    cl.publish(p, "cmd", b"first", QoS::AtLeastOnce, 1);
    let first = cl.recv(sub);
    assert_eq!(publishes(&first).len(), 1, "delivered, not acknowledged");
    // The device drops off without DISCONNECT.
    let now = cl.now;
    cl.shards[0].handle_closed(sub.conn, now);
    cl.shards[0].release(sub.conn, now);
    cl.publish(p, "cmd", b"second", QoS::AtLeastOnce, 2);
    cl.publish(p, "cmd", b"qos0-dropped", QoS::AtMostOnce, 0);
    // It comes back on the other shard: session present, unacked resent with DUP, then queue.
    let back = cl.open(1, V4);
    cl.send(back, connect_packet(V4, "dev", false));
    let got = cl.recv(back);
    assert!(matches!(&got[0], Packet::ConnAck(a) if a.session_present));
    let p = publishes(&got);
    assert_eq!(p.len(), 2);
    assert!(p[0].dup && &p[0].payload[..] == b"first", "[MQTT-4.4.0-1] resent with DUP");
    assert!(!p[1].dup && &p[1].payload[..] == b"second");
    assert_eq!(cl.shards[0].metrics.messages_dropped_qos0_offline, 1);
}

#[test]
fn takeover_across_shards_closes_the_old_connection() {
    // [MQTT-3.1.4-2]
    let mut cl = Cluster::new(2);
    let old = cl.connect(0, V4, "same", false);
    cl.subscribe(old, "x", QoS::AtLeastOnce);
    let new = cl.connect(1, V4, "same", false);
    assert!(cl.shards[0].status(old.conn).closing, "old connection closed");
    // The subscription moved with the session.
    let p = cl.connect(0, V4, "p", true);
    cl.publish(p, "x", b"m", QoS::AtLeastOnce, 1);
    assert_eq!(publishes(&cl.recv(new)).len(), 1);
    assert_eq!(cl.shards[1].metrics.takeovers, 1);
}

#[test]
fn will_is_published_on_abnormal_close_only() {
    let mut cl = Cluster::new(2);
    let watcher = cl.connect(1, V4, "w", true);
    cl.subscribe(watcher, "will/#", QoS::AtMostOnce);
    for (id, graceful) in [("a", true), ("b", false)] {
        let c = cl.open(0, V4);
        let mut connect = connect_packet(V4, id, true);
        if let Packet::Connect(cp) = &mut connect {
            cp.will = Some(Will {
                topic: format!("will/{id}"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties::new(),
            });
        }
        cl.send(c, connect);
        cl.recv(c);
        let now = cl.now;
        if graceful {
            cl.send(c, Packet::Disconnect(ReasonPacket::new(ReasonCode::Success)));
        } else {
            cl.shards[0].handle_closed(c.conn, now);
            cl.settle();
        }
    }
    let got = cl.recv(watcher);
    let p = publishes(&got);
    assert_eq!(p.len(), 1, "[MQTT-3.1.2-10] will not published after DISCONNECT");
    assert_eq!(p[0].topic, "will/b");
}

#[test]
fn keepalive_timeout_at_one_and_a_half_times() {
    // [MQTT-3.1.2-24]
    let mut cl = Cluster::new(1);
    let c = cl.connect(0, V4, "k", true); // keep alive 60 s
    let start = cl.now;
    cl.shards[0].tick(start + Duration::from_secs(89));
    assert!(!cl.shards[0].status(c.conn).closing);
    cl.shards[0].tick(start + Duration::from_secs(91));
    assert!(cl.shards[0].status(c.conn).closing);
}

#[test]
fn retained_delivered_on_subscribe_with_retain_flag_and_cleared_by_empty_payload() {
    let mut cl = Cluster::new(2);
    let p = cl.connect(0, V4, "p", true);
    cl.send(p, publish_packet("r/1", b"keep", QoS::AtLeastOnce, 1, true));
    cl.send(p, publish_packet("r/2", b"gone", QoS::AtMostOnce, 0, true));
    cl.send(p, publish_packet("r/2", b"", QoS::AtMostOnce, 0, true));
    let s = cl.connect(1, V4, "s", true);
    cl.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![(
                "r/+".into(),
                SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            )],
            properties: Properties::new(),
        }),
    );
    let got = cl.recv(s);
    assert!(matches!(got[0], Packet::SubAck(_)));
    let p = publishes(&got);
    assert_eq!(p.len(), 1, "[MQTT-3.3.1-10] empty payload cleared r/2");
    assert!(p[0].retain, "[MQTT-3.3.1-8]");
    assert_eq!(&p[0].payload[..], b"keep");
}

#[test]
fn shared_subscription_round_robin_across_shards() {
    let mut cl = Cluster::new(2);
    let a = cl.connect(0, V4, "a", true);
    let b = cl.connect(1, V4, "b", true);
    cl.subscribe(a, "$share/g/jobs/#", QoS::AtMostOnce);
    cl.subscribe(b, "$share/g/jobs/#", QoS::AtMostOnce);
    let p = cl.connect(0, V4, "p", true);
    for _ in 0..10 {
        cl.publish(p, "jobs/1", b"j", QoS::AtMostOnce, 0);
    }
    let na = publishes(&cl.recv(a)).len();
    let nb = publishes(&cl.recv(b)).len();
    assert_eq!(na + nb, 10, "each message to exactly one member");
    assert_eq!((na, nb), (5, 5), "round robin");
}

#[test]
fn offline_queue_is_bounded_and_counts_drops() {
    let mut cl = Cluster::new(1);
    let s = cl.connect(0, V4, "slow", false);
    cl.subscribe(s, "f", QoS::AtLeastOnce);
    let now = cl.now;
    cl.shards[0].handle_closed(s.conn, now);
    let p = cl.connect(0, V4, "p", true);
    let limit = cl.shards[0].config().session.queue_messages_max;
    for i in 0..(limit + 5) {
        cl.publish(p, "f", b"m", QoS::AtLeastOnce, (i % 60000 + 1) as u16);
    }
    assert_eq!(cl.shards[0].metrics.messages_dropped_queue_full, 5);
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01() {
    // [MQTT-3.1.2-2]
    let mut cl = Cluster::new(1);
    let c = cl.open(0, V4);
    cl.send_raw(
        c,
        &[0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x09, 0x02, 0x00, 0x3C, 0x00, 0x00],
    );
    let got = cl.recv(c);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::UnsupportedProtocolVersion)
    );
    assert!(cl.shards[0].status(c.conn).closing);
}

#[test]
fn packets_pipelined_after_connect_wait_for_connack() {
    // [MQTT-3.1.4-5] clients may send packets before CONNACK; they are handled after it.
    let mut cl = Cluster::new(2);
    for shard in 0..2 {
        let c = cl.open(shard, V4);
        let mut bytes = BytesMut::new();
        let id = format!("pipelined-{shard}");
        codec::encode(&connect_packet(V4, &id, true), V4, &mut bytes).expect("encode");
        let sub = Subscribe {
            packet_id: pid(4),
            filters: vec![("p/#".into(), SubscriptionOptions::default())],
            properties: Properties::new(),
        };
        codec::encode(&Packet::Subscribe(sub), V4, &mut bytes).expect("encode");
        codec::encode(&Packet::PingReq, V4, &mut bytes).expect("encode");
        cl.send_raw(c, &bytes);
        let got = cl.recv(c);
        assert!(matches!(got[0], Packet::ConnAck(_)), "CONNACK first, got {got:?}");
        assert!(matches!(got[1], Packet::SubAck(_)));
        assert!(matches!(got[2], Packet::PingResp));
    }
}

/// Issue 9 regression: 3 000 pipelined SUBSCRIBEs in one read once recursed
/// `handle_read` → `complete_suback` → `handle_read` once per packet and overflowed the shard
/// stack. Every SUBSCRIBE is answered, in order, from one call.
#[test]
fn pipelined_subscribes_do_not_recurse_per_packet() {
    const N: u16 = 3_000;
    for shards in [1, 2] {
        // On a small stack, so that recursion per packet fails here in release builds too,
        // where frames are smaller than in debug ones.
        let got = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut cl = Cluster::new(shards);
                let c = cl.open(0, V4);
                let mut buf = BytesMut::new();
                codec::encode(&connect_packet(V4, "piper", true), V4, &mut buf).expect("encodes");
                for i in 1..=N {
                    let s = Subscribe {
                        packet_id: pid(i),
                        filters: vec![("p".into(), SubscriptionOptions::default())],
                        properties: Properties::new(),
                    };
                    codec::encode(&Packet::Subscribe(s), V4, &mut buf).expect("encodes");
                }
                let now = cl.now;
                cl.shards[0].handle_read(c.conn, &buf, now);
                cl.settle_within(2 * usize::from(N));
                cl.recv(c)
            })
            .expect("spawn")
            .join()
            .expect("no stack overflow or panic");
        assert!(matches!(got.first(), Some(Packet::ConnAck(_))), "{shards} shards");
        let ids: Vec<u16> = got
            .iter()
            .filter_map(|p| if let Packet::SubAck(a) = p { Some(a.packet_id.get()) } else { None })
            .collect();
        assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "{shards} shards: every SUBACK, in order");
    }
}

// ------------------------------------------------------------------------------------------------
// Pre-auth size and user-property bounds (issue 9 item 3, CVE-2017-7651, CVE-2023-0809,
// CVE-2021-41039 classes).
// ------------------------------------------------------------------------------------------------

const V5: ProtocolVersion = ProtocolVersion::V5;

fn is_closing(cl: &Cluster, c: Client) -> bool {
    cl.shards[c.shard].status(c.conn).closing
}

/// A v5 CONNECT for `id` whose own properties and will properties carry `connect_props` and
/// `will_props` empty User Properties.
fn connect_with_user_properties(id: &str, connect_props: usize, will_props: usize) -> Packet {
    let empties = |n: usize| -> Properties {
        (0..n).map(|_| crate::codec::Property::UserProperty(String::new(), String::new())).collect()
    };
    let Packet::Connect(mut c) = connect_packet(V5, id, true) else { unreachable!() };
    c.properties = empties(connect_props);
    c.will = Some(crate::codec::Will {
        topic: "will/t".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: empties(will_props),
    });
    Packet::Connect(c)
}

/// [MQTT-3.1.0-1] / CVE-2017-7651: a CONNECT announcing more than `preauth_packet_bytes_max` is
/// refused from its fixed header (v5: CONNACK 0x95; v3.1.1: closed), before its body arrives.
#[test]
fn preauth_bound_is_checked_at_the_fixed_header() {
    let mut cl = Cluster::new(1);
    let max = cl.shards[0].config().preauth_packet_bytes_max;
    for (version, level) in [(V5, 5u8), (V4, 4)] {
        let c = cl.open(0, version);
        let mut head = BytesMut::from(&[0x10u8][..]);
        codec::primitives::put_varint(&mut head, max + 1);
        head.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', level]);
        cl.send_raw(c, &head);
        let got = cl.recv(c);
        if version == V5 {
            assert!(
                matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::PacketTooLarge),
                "CONNACK 0x95 expected, got {got:?}"
            );
        } else {
            assert!(got.is_empty(), "v3 is closed without CONNACK, got {got:?}");
        }
        assert!(is_closing(&cl, c), "{version:?}: closed before the body was buffered");
    }
    // After CONNECT the full packet size applies: a PUBLISH twice the pre-auth bound is fine.
    let c = cl.connect(0, V4, "big-publisher", true);
    let payload: &'static [u8] = Box::leak(vec![b'x'; 2 * max].into_boxed_slice());
    cl.publish(c, "t", payload, QoS::AtLeastOnce, 1);
    assert!(matches!(&cl.recv(c)[..], [Packet::PubAck(_)]));
    assert!(!is_closing(&cl, c));
}

/// A CONNECT with a will payload of the MQTT maximum (65 535 bytes) fits the default pre-auth
/// bound: the default was chosen for it.
#[test]
fn preauth_bound_admits_a_maximum_will_payload() {
    let mut cl = Cluster::new(1);
    let c = cl.open(0, V5);
    let Packet::Connect(mut p) = connect_with_user_properties("willful", 0, 0) else {
        unreachable!()
    };
    if let Some(w) = p.will.as_mut() {
        w.payload = Bytes::from(vec![7u8; 65_535]);
    }
    cl.send(c, Packet::Connect(p));
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success), "{got:?}");
}

/// CVE-2023-0809: the first packet must be a CONNECT ([MQTT-3.1.0-1]); anything else is refused
/// from its first byte, with nothing buffered.
#[test]
fn first_packet_other_than_connect_is_refused_from_its_first_byte() {
    let mut cl = Cluster::new(1);
    for first in [0x30u8, 0x82, 0x20, 0xC0, 0xF0, 0x00] {
        let c = cl.open(0, V4);
        cl.send_raw(c, &[first]);
        assert!(is_closing(&cl, c), "first byte {first:#04x}: closed");
        assert!(cl.recv(c).is_empty());
    }
}

/// CVE-2021-41039 class: the User Properties of one packet are bounded in count and bytes;
/// a CONNECT's and its will's count together. Over the bound: CONNACK 0x95.
#[test]
fn user_properties_in_connect_and_will_are_capped_together() {
    let mut cl = Cluster::new(1);
    let max = cl.shards[0].config().user_properties_max;
    for (own, will, ok) in [(max, 0, true), (max / 2, max - max / 2, true), (max, 1, false)] {
        let c = cl.open(0, V5);
        cl.send(c, connect_with_user_properties("props", own, will));
        let got = cl.recv(c);
        let want = if ok { ReasonCode::Success } else { ReasonCode::PacketTooLarge };
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.reason == want),
            "{own}+{will}: {want:?} expected, got {got:?}"
        );
        assert_eq!(is_closing(&cl, c), !ok);
    }
}

/// CVE-2021-41039 class on PUBLISH: 180 000 empty User Properties (900 KB, under the 1 MiB
/// packet size) are refused with DISCONNECT 0x95; so is one property larger than the byte bound.
#[test]
fn user_properties_in_publish_are_capped_in_count_and_bytes() {
    let mut cl = Cluster::new(1);
    let bytes_max = cl.shards[0].config().user_property_bytes_max;
    let many: Properties = (0..180_000)
        .map(|_| crate::codec::Property::UserProperty(String::new(), String::new()))
        .collect();
    let big: Properties =
        vec![crate::codec::Property::UserProperty("k".into(), "v".repeat(bytes_max))].into();
    for props in [many, big] {
        let c = cl.connect(0, V5, "publisher", true);
        let Packet::Publish(mut p) = publish_packet("t", b"x", QoS::AtMostOnce, 0, false) else {
            unreachable!()
        };
        p.properties = props;
        cl.send(c, Packet::Publish(p));
        let got = cl.recv(c);
        assert!(
            matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::PacketTooLarge),
            "DISCONNECT 0x95 expected, got {got:?}"
        );
        assert!(is_closing(&cl, c));
    }
}

// ------------------------------------------------------------------------------------------------
// Password checks off the shard thread, failed-login rate limit (issue 9 item 5).
// ------------------------------------------------------------------------------------------------

/// One shard with a password file (`alice` / `pw`, 10 PBKDF2 iterations) and, if `workers > 0`,
/// a password pool of that many workers and a queue of `queue` jobs.
fn cluster_with_passwords(workers: usize, queue: usize) -> Cluster {
    let mut cfg = ShardConfig::for_tests(1);
    let mut db = crate::auth::PasswordDb::new();
    let hash = crate::auth::PasswordHash::new_pbkdf2_sha512(b"pw", 10).expect("hash");
    db.upsert("alice", hash).expect("user");
    cfg.security = std::sync::Arc::new(crate::auth::Security {
        passwords: Some(std::sync::Arc::new(db)),
        acl: None,
    });
    cfg.failed_logins_per_minute_max = 3;
    if workers > 0 {
        cfg.hash_pool = Some(crate::auth::HashPool::start(workers, queue, 1).expect("pool"));
    }
    Cluster { shards: vec![Shard::new(0, cfg)], now: Instant::now() }
}

fn login(version: ProtocolVersion, id: &str, password: &'static [u8]) -> Packet {
    let Packet::Connect(mut c) = connect_packet(version, id, true) else { unreachable!() };
    c.username = Some("alice".into());
    c.password = Some(Bytes::from_static(password));
    Packet::Connect(c)
}

impl Cluster {
    /// Waits for the password workers' next verdict and hands it to the shard.
    fn deliver_verdict(&mut self) {
        let pool = self.shards[0].config().hash_pool.clone().expect("a pool");
        let replies = pool.replies(0).expect("shard 0");
        let v = replies.recv_timeout(Duration::from_secs(30)).expect("a verdict");
        let now = self.now;
        self.shards[0].handle_password_verdict(v, now);
        self.settle();
    }
}

/// The key derivation runs on a worker, not in `handle_read`: the CONNECT waits (no CONNACK,
/// reading paused) until the verdict is handed back, then CONNACK follows.
#[test]
fn password_check_runs_on_a_worker_and_the_connect_waits_for_it() {
    let mut cl = cluster_with_passwords(1, 8);
    let c = cl.open(0, V5);
    cl.send(c, login(V5, "a1", b"pw"));
    assert!(cl.recv(c).is_empty(), "no CONNACK before the verdict");
    assert!(cl.shards[0].status(c.conn).read_paused, "nothing is read while verifying");
    cl.deliver_verdict();
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success), "{got:?}");

    let bad = cl.open(0, V5);
    cl.send(bad, login(V5, "a2", b"wrong"));
    assert!(cl.recv(bad).is_empty());
    cl.deliver_verdict();
    let got = cl.recv(bad);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::BadUserNameOrPassword),
        "{got:?}"
    );
}

/// A verdict for a connection that closed meanwhile is dropped; it cannot complete the CONNECT
/// of another connection that reused the id.
#[test]
fn a_verdict_for_a_closed_connection_is_dropped() {
    let mut cl = cluster_with_passwords(1, 8);
    let c = cl.open(0, V4);
    cl.send(c, login(V4, "gone", b"pw"));
    let now = cl.now;
    cl.shards[0].handle_closed(c.conn, now);
    let reused = cl.open(0, V4);
    cl.deliver_verdict();
    assert!(cl.recv(reused).is_empty(), "the new connection got no CONNACK");
    assert!(!is_closing(&cl, reused));
}

/// The failed-login bound: after `failed_logins_per_minute_max` bad passwords from one address
/// the next CONNECT with credentials is refused at once with 0x9F, without a key derivation
/// (the CONNACK comes synchronously, no verdict is awaited), even with the right password;
/// after the minute it may try again.
#[test]
fn failed_logins_from_one_address_are_rate_limited() {
    let mut cl = cluster_with_passwords(1, 8);
    for i in 0..3 {
        let c = cl.open(0, V5);
        cl.send(c, login(V5, &format!("f{i}"), b"wrong"));
        cl.deliver_verdict();
        let got = cl.recv(c);
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::BadUserNameOrPassword)
        );
    }
    let c = cl.open(0, V5);
    cl.send(c, login(V5, "f3", b"pw"));
    let got = cl.recv(c);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::ConnectionRateExceeded),
        "{got:?}"
    );
    // v3 has no 0x9F: refused as not authorized.
    let c = cl.open(0, V4);
    cl.send(c, login(V4, "f4", b"pw"));
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason != ReasonCode::Success), "{got:?}");
    cl.now += crate::auth::ratelimit::FAILED_LOGIN_WINDOW;
    let now = cl.now;
    cl.shards[0].tick(now);
    let c = cl.open(0, V5);
    cl.send(c, login(V5, "f5", b"pw"));
    cl.deliver_verdict();
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success), "{got:?}");
}

/// The password queue bound: when `hash_queue_max` checks wait for a worker, a CONNECT is
/// refused at once with 0x89 Server busy (a pool whose queue nobody drains makes it exact).
#[test]
fn a_full_password_queue_refuses_with_server_busy() {
    let mut cl = cluster_with_passwords(1, 8);
    let pool = crate::auth::HashPool::without_workers(1, 1);
    let filler = crate::auth::HashJob {
        shard: 0,
        ticket: u64::MAX,
        db: std::sync::Arc::new(crate::auth::PasswordDb::new()),
        username: "nobody".into(),
        password: None,
    };
    pool.try_submit(filler).expect("one job fits");
    let mut cfg = cl.shards[0].config().clone();
    cfg.hash_pool = Some(pool);
    cl.shards[0] = Shard::new(0, cfg);
    let c = cl.open(0, V5);
    cl.send(c, login(V5, "busy", b"pw"));
    let got = cl.recv(c);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::ServerBusy),
        "{got:?}"
    );
    // v3 has no 0x89: refused as server unavailable.
    let c = cl.open(0, V4);
    cl.send(c, login(V4, "busy3", b"pw"));
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason != ReasonCode::Success), "{got:?}");
}

/// Without a pool (tools, these tests' default) the check runs inline and answers at once.
#[test]
fn without_a_pool_the_check_runs_inline() {
    let mut cl = cluster_with_passwords(0, 0);
    let c = cl.open(0, V4);
    cl.send(c, login(V4, "inline", b"pw"));
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success), "{got:?}");
}
