//! Shards driven in one thread: bytes in, bytes out, mesh messages moved by hand. No sockets,
//! no glommio; time is passed in.

use core::net::SocketAddr;
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
        Self::with_config(ShardConfig::for_tests(n))
    }

    /// Shards sharing `cfg` (and so one memory budget).
    fn with_config(cfg: ShardConfig) -> Self {
        let shards =
            (0..cfg.shards).map(|i| Shard::new(crate::ids::ShardId(i), cfg.clone())).collect();
        Self { shards, now: crate::test_clock::test_epoch() }
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
                    // Control lane first, as the runtime's flushers may deliver it.
                    let mut msgs = self.shards[from].take_control(to, usize::MAX);
                    msgs.extend(self.shards[from].take_batch(to, usize::MAX));
                    for m in msgs {
                        moved = true;
                        let now = self.now;
                        self.shards[to].handle_peer(crate::ids::ShardId(from as u16), m, now);
                    }
                }
            }
            // Resumed publishers decode what they had sent before the pause, as the driver
            // does when it wakes them.
            for shard in &mut self.shards {
                moved |= shard.decode_waiting_inputs(self.now) > 0;
            }
            if !moved {
                return;
            }
        }
        panic!("mesh did not settle in {rounds} rounds");
    }

    /// `settle`, except that channel `from` → `to` stops at its first `DeltaAck` (FIFO: what
    /// follows it waits too).
    fn settle_holding_delta_acks(&mut self, from: usize, to: usize) {
        for _ in 0..100 {
            let mut moved = false;
            for f in 0..self.shards.len() {
                for t in 0..self.shards.len() {
                    // Bounded by the messages queued; handling may queue more for the next round.
                    while let Some(m) = self.shards[f].control_lane()[t].front() {
                        if (f, t) == (from, to) && matches!(m, ShardMsg::DeltaAck { .. }) {
                            break;
                        }
                        let Some(m) = self.shards[f].control_lane()[t].pop_front() else { break };
                        moved = true;
                        let now = self.now;
                        self.shards[t].handle_peer(crate::ids::ShardId(f as u16), m, now);
                    }
                    // The data lane is a channel of its own: never held.
                    for m in self.shards[f].take_batch(t, usize::MAX) {
                        moved = true;
                        let now = self.now;
                        self.shards[t].handle_peer(crate::ids::ShardId(f as u16), m, now);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("mesh did not settle");
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
        let now = self.now;
        let mut tx = self.shards[c.shard].take_tx(c.conn, now);
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
            filters: vec![(
                crate::codec::TopicFilter::new(filter, true).expect("valid filter"),
                SubscriptionOptions { qos, ..Default::default() },
            )],
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
        topic: Some(crate::codec::TopicName::new(topic).expect("valid topic")),
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
        assert_eq!(p[0].topic.as_deref(), Some("a/b"));
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
                topic: crate::codec::TopicName::new(format!("will/{id}")).expect("valid topic"),
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
    assert_eq!(p[0].topic.as_deref(), Some("will/b"));
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
                crate::codec::TopicFilter::new("r/+", true).expect("valid filter"),
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
            filters: vec![(
                crate::codec::TopicFilter::new("p/#", true).expect("valid filter"),
                SubscriptionOptions::default(),
            )],
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

const V5: ProtocolVersion = ProtocolVersion::V5;

fn subscribe_packet(id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        filters: filters
            .iter()
            .map(|(f, qos)| {
                (
                    crate::codec::TopicFilter::new(*f, true).expect("valid filter"),
                    SubscriptionOptions { qos: *qos, ..Default::default() },
                )
            })
            .collect(),
        properties: Properties::new(),
    })
}

fn subacks(packets: &[Packet]) -> Vec<&codec::SubAck> {
    packets.iter().filter_map(|p| if let Packet::SubAck(a) = p { Some(a) } else { None }).collect()
}

/// Issue 9: one SUBSCRIBE repeating `r/#` re-broadcast the filter to every shard and rescanned
/// every retained message once per repeat. A repeated filter is one subscription
/// ([MQTT-3.8.4-3]: the later replaces the earlier): one delta, one retained scan, and a
/// reason code for every position ([MQTT-3.9.3-1] / [MQTT-3.8.4-6] in 3.1.1).
#[test]
fn repeated_filter_in_one_subscribe_counts_once() {
    let mut cl = Cluster::new(2);
    let p = cl.connect(0, V4, "p", true);
    for i in 0..50 {
        let topic = format!("r/{i}");
        let msg = publish_packet(&topic, b"v", QoS::AtMostOnce, 0, true);
        cl.send(p, msg);
    }
    let s = cl.connect(1, V4, "s", true);
    // Within subscriptions_per_client_max (16 in the test config): 10 copies, the last QoS 1.
    let mut filters = vec![("r/#", QoS::AtMostOnce); 9];
    filters.push(("r/#", QoS::AtLeastOnce));
    let now = cl.now;
    let mut buf = BytesMut::new();
    codec::encode(&subscribe_packet(7, &filters), V4, &mut buf).expect("encodes");
    cl.shards[1].handle_read(s.conn, &buf, now);
    let deltas = cl.shards[1].control_lane()[0].len();
    assert_eq!(deltas, 1, "one SubAdd for the filter, not one per repeat");
    cl.settle();
    let got = cl.recv(s);
    let acks = subacks(&got);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].reasons.len(), 10, "one reason per filter position");
    assert_eq!(acks[0].reasons[9], ReasonCode::GrantedQoS1, "the last occurrence wins");
    let retained = publishes(&got);
    assert_eq!(retained.len(), 50, "each retained message once, not once per repeat");
    assert!(retained.iter().all(|p| p.qos == QoS::AtMostOnce && p.retain));
    assert_eq!(cl.shards[1].metrics.subscriptions_current, 1);
    let sess = cl.shards[1].by_client["s"];
    let sub = &cl.shards[1]
        .slot(sess)
        .expect("session")
        .session
        .subscriptions
        .get("r/#")
        .expect("subscribed");
    assert_eq!(sub.options.qos, QoS::AtLeastOnce, "[MQTT-3.8.4-3] the later one replaces");
}

/// More filters in one SUBSCRIBE than a session may hold: the packet is refused whole, every
/// filter with 0x97 Quota exceeded (v5) or 0x80 Failure (v3), and nothing is applied.
#[test]
fn subscribe_with_more_filters_than_the_limit_is_refused() {
    for version in [V4, V5] {
        let mut cl = Cluster::new(2);
        let max = cl.shards[0].config().subscriptions_per_client_max;
        let c = cl.connect(0, version, "many", true);
        let names: Vec<String> = (0..=max).map(|i| format!("t/{i}")).collect();
        let filters: Vec<(&str, QoS)> =
            names.iter().map(|n| (n.as_str(), QoS::AtMostOnce)).collect();
        cl.send(c, subscribe_packet(3, &filters));
        let got = cl.recv(c);
        let acks = subacks(&got);
        let want =
            if version.is_v5() { ReasonCode::QuotaExceeded } else { ReasonCode::UnspecifiedError };
        assert_eq!(acks[0].reasons, vec![want; max + 1], "{version:?}");
        assert_eq!(cl.shards[0].metrics.subscribe_refused_too_many, 1);
        assert_eq!(cl.shards[0].metrics.subscriptions_current, 0);
        assert!(cl.shards[1].control_lane().iter().all(|q| q.is_empty()));
        assert!(cl.shards[1].outbox().iter().all(|q| q.is_empty()));
        // Exactly the limit is accepted.
        cl.send(c, subscribe_packet(4, &filters[..max]));
        let got = cl.recv(c);
        assert!(subacks(&got)[0].reasons.iter().all(|r| *r == ReasonCode::Success));
        assert_eq!(cl.shards[0].metrics.subscriptions_current, max as u64);
    }
}

/// The subscription gauge is kept as subscriptions come and go (no walk over the sessions).
#[test]
fn subscription_count_is_incremental_and_exact() {
    let mut cl = Cluster::new(2);
    let a = cl.connect(0, V4, "a", true);
    let b = cl.connect(0, V4, "b", false);
    cl.subscribe(a, "x/+", QoS::AtMostOnce);
    cl.subscribe(a, "x/+", QoS::AtLeastOnce); // replaces
    cl.subscribe(a, "$share/g/y", QoS::AtMostOnce);
    cl.subscribe(b, "x/+", QoS::AtMostOnce);
    cl.subscribe(b, "z", QoS::AtMostOnce);
    assert_eq!(cl.shards[0].metrics.subscriptions_current, 4);
    assert_eq!(cl.shards[1].metrics.subscriptions_current, 0, "remote entries are not counted");
    let un = codec::Unsubscribe {
        packet_id: pid(9),
        filters: vec![crate::codec::TopicFilter::new("z", true).expect("valid filter")],
        properties: Properties::new(),
    };
    cl.send(b, Packet::Unsubscribe(un));
    assert_eq!(cl.shards[0].metrics.subscriptions_current, 3);
    // a ends (clean session): its two go; b is taken over by shard 1 with its session.
    let now = cl.now;
    cl.shards[0].handle_closed(a.conn, now);
    cl.settle();
    assert_eq!(cl.shards[0].metrics.subscriptions_current, 1);
    cl.connect(1, V4, "b", false);
    assert_eq!(cl.shards[0].metrics.subscriptions_current, 0);
    assert_eq!(cl.shards[1].metrics.subscriptions_current, 1);
}

/// A message owns its payload once it enters the broker: a 1-byte retained payload no longer
/// pins the read buffer it arrived in (issue 9).
#[test]
fn stored_payload_does_not_pin_the_read_buffer() {
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let mut msg = crate::session::Message::new(
        crate::codec::TopicName::new("t").expect("valid topic"),
        chunk.slice(10..11),
        QoS::AtMostOnce,
        true,
    );
    assert!(!chunk.is_unique(), "the slice shares the chunk");
    msg.detach();
    assert!(chunk.is_unique(), "after detach the message holds its own copy");
    assert_eq!(&msg.payload[..], &[7]);
}

fn user_properties(n: usize) -> Properties {
    let mut props = Properties::new();
    for _ in 0..n {
        props.push(codec::Property::UserProperty(String::new(), String::new()));
    }
    props
}

/// Issue 9: ~180 000 empty user properties cost ~10 MB of heap but counted as ~100 bytes.
/// Now a message's cost includes its properties: a queue bound of 1 MiB refuses a message
/// whose properties alone take more, and the retained store counts them.
#[test]
fn properties_count_in_queue_and_retained_bounds() {
    let mut cl = Cluster::new(1);
    // About accounting, not the per-packet user-property cap (tested on its own below).
    cl.shards[0].cfg.user_properties_max = usize::MAX;
    cl.shards[0].cfg.user_property_bytes_max = usize::MAX;
    let s = cl.connect(0, V4, "s", false); // persistent: queues while offline
    cl.subscribe(s, "u", QoS::AtLeastOnce);
    let now = cl.now;
    cl.shards[0].handle_closed(s.conn, now);
    let p = cl.connect(0, V5, "p", true);
    let n = (1 << 20) / std::mem::size_of::<codec::Property>() + 1;
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: Some(crate::codec::TopicName::new("u").expect("valid topic")),
        packet_id: Some(pid(1)),
        properties: user_properties(n),
        payload: Bytes::from_static(b"x"),
    };
    cl.send(p, Packet::Publish(publish));
    assert_eq!(cl.shards[0].metrics.messages_dropped_queue_full, 1, "queue bound counts them");
    assert_eq!(cl.shards[0].metrics.retained_refused, 1, "retained bound (1 MiB) counts them");
    let held = cl.shards[0].config().memory.used();
    assert!(held < 4096, "nothing was stored, nothing stays charged ({held})");
}

fn small_budget_config(shards: u16, budget: usize) -> ShardConfig {
    let mut cfg = ShardConfig::for_tests(shards);
    cfg.memory = std::sync::Arc::new(budget::MemoryBudget::new(budget));
    cfg
}

/// The broker-wide memory budget: once queued messages reach it, new connections are refused
/// (v5 0x97, v3 return code 3), publishers' reads pause, deliveries that would queue are
/// dropped and counted; acknowledgements free it again.
#[test]
fn memory_budget_refuses_connects_pauses_publishers_and_recovers() {
    let mut cl = Cluster::with_config(small_budget_config(2, 64 * 1024));
    let s = cl.connect(1, V4, "sub", false);
    cl.subscribe(s, "m", QoS::AtLeastOnce);
    let now = cl.now;
    cl.shards[1].handle_closed(s.conn, now);
    cl.settle();
    let p = cl.connect(0, V4, "pub", true);
    let payload: &'static [u8] = &[1u8; 1000];
    let mut sent = 0u16;
    while !cl.shards[0].memory_exhausted() {
        sent += 1;
        assert!(sent < 200, "the budget is reached");
        cl.publish(p, "m", payload, QoS::AtLeastOnce, sent);
    }
    cl.recv(p);
    assert!(cl.shards[0].status(p.conn).memory_paused, "the publisher is owed nothing: paused");
    assert!(cl.shards[0].status(p.conn).read_paused);
    // The budget is broker-wide: shard 0 sees what shard 1's queue holds.
    assert!(cl.shards[1].config().memory.used() >= 64 * 1024);
    for (version, want) in [(V5, ReasonCode::QuotaExceeded), (V4, ReasonCode::ServerUnavailable)] {
        let c = cl.open(0, version);
        cl.send(c, connect_packet(version, "late", true));
        let got = cl.recv(c);
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.reason == want),
            "{version:?}: {got:?}"
        );
    }
    assert_eq!(cl.shards[0].metrics.connect_refused_memory, 2);
    // Another delivery while exhausted is dropped, not queued.
    cl.publish(p, "m", payload, QoS::AtLeastOnce, sent + 1);
    assert_eq!(cl.shards[1].metrics.messages_dropped_memory, 1);
    // The subscriber comes back, receives and acknowledges: the budget recovers.
    let s = cl.open(1, V4);
    cl.send(s, connect_packet(V4, "sub", false));
    let got = cl.recv(s);
    assert!(matches!(&got[0], Packet::ConnAck(a) if a.session_present), "resume is let in");
    let mut acked = 0;
    let mut pending: Vec<PacketId> = publishes(&got).iter().filter_map(|p| p.packet_id).collect();
    while let Some(id) = pending.pop() {
        cl.send(s, Packet::PubAck(PubResp::success(id)));
        acked += 1;
        assert!(acked <= 200);
        pending.extend(publishes(&cl.recv(s)).iter().filter_map(|p| p.packet_id));
    }
    assert_eq!(acked, usize::from(sent));
    assert_eq!(cl.shards[0].config().memory.used(), 0, "every charge released");
    assert!(!cl.shards[0].status(p.conn).read_paused);
    cl.connect(0, V5, "late", true);
}

/// Wills are charged to the budget while their connection lives.
#[test]
fn wills_are_charged_while_held() {
    let mut cl = Cluster::new(1);
    // About accounting, not the per-packet user-property cap (tested on its own below).
    cl.shards[0].cfg.user_properties_max = usize::MAX;
    cl.shards[0].cfg.user_property_bytes_max = usize::MAX;
    let c = cl.open(0, V5);
    let mut connect = connect_packet(V5, "w", true);
    if let Packet::Connect(cp) = &mut connect {
        cp.will = Some(Will {
            topic: crate::codec::TopicName::new("will/w").expect("valid topic"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: user_properties(1000),
        });
    }
    cl.send(c, connect);
    cl.recv(c);
    let held = cl.shards[0].config().memory.used();
    assert!(held >= 1000 * std::mem::size_of::<codec::Property>(), "will charged: {held}");
    let now = cl.now;
    cl.shards[0].handle_closed(c.conn, now);
    cl.shards[0].release(c.conn, now);
    assert_eq!(cl.shards[0].config().memory.used(), 0);
}

/// `tern.toml`: keep alive 0 is not "forever". v5 is told the maximum with Server Keep Alive
/// ([MQTT-3.2.2-21]/[MQTT-3.2.2-22]); v3 is held to it silently.
#[test]
fn keep_alive_zero_gets_the_configured_maximum() {
    let mut cl = Cluster::new(1);
    let max = cl.shards[0].config().keepalive_secs_max;
    for version in [V5, V4] {
        let c = cl.open(0, version);
        let mut connect = connect_packet(version, &format!("ka-{version:?}"), true);
        if let Packet::Connect(cp) = &mut connect {
            cp.keep_alive_secs = 0;
        }
        cl.send(c, connect);
        let got = cl.recv(c);
        let Some(Packet::ConnAck(ack)) = got.first() else { panic!("CONNACK expected: {got:?}") };
        assert_eq!(ack.reason, ReasonCode::Success);
        if version.is_v5() {
            assert_eq!(ack.properties.server_keep_alive(), Some(max));
        }
        let start = cl.now;
        let limit = u64::from(max) * 3 / 2;
        cl.shards[0].tick(start + Duration::from_secs(limit - 1));
        assert!(!cl.shards[0].status(c.conn).closing, "{version:?}");
        cl.shards[0].tick(start + Duration::from_secs(limit + 1));
        assert!(cl.shards[0].status(c.conn).closing, "{version:?}: closed after 1.5 x max");
    }
}

fn with_acl(shards: u16, text: &str) -> Cluster {
    let mut cfg = ShardConfig::for_tests(shards);
    let acl = crate::auth::Acl::parse("acl", text).expect("test ACL parses");
    cfg.security = std::sync::Arc::new(crate::auth::Security { passwords: None, acl: Some(acl) });
    Cluster::with_config(cfg)
}

fn connect_as(version: ProtocolVersion, id: &str, user: &str, clean: bool) -> Packet {
    let mut p = connect_packet(version, id, clean);
    if let Packet::Connect(c) = &mut p {
        c.username = Some(user.into());
    }
    p
}

fn with_will(mut p: Packet, topic: &str) -> Packet {
    if let Packet::Connect(c) = &mut p {
        c.will = Some(Will {
            topic: crate::codec::TopicName::new(topic).expect("valid topic"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::new(),
        });
    }
    p
}

/// Issue 9: a will could publish to `$SYS/...` when no ACL file was set, which PUBLISH
/// cannot. Now a CONNECT with such a will is refused (v5 0x87, v3 return code 5).
#[test]
fn will_to_sys_is_refused_without_an_acl() {
    let mut cl = Cluster::new(1);
    for (version, want) in [(V5, ReasonCode::NotAuthorized), (V4, ReasonCode::NotAuthorized)] {
        let c = cl.open(0, version);
        cl.send(c, with_will(connect_packet(version, "w", true), "$SYS/broker/uptime"));
        let got = cl.recv(c);
        assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason == want), "{got:?}");
    }
}

/// The ACL is checked when the will is published, not only at CONNECT: a reload that took
/// the right away in between stops it.
#[test]
fn will_acl_is_checked_at_publish_time() {
    let text = "user alice\ntopic readwrite will/#\n";
    let mut cl = with_acl(1, text);
    let w = cl.open(0, V4);
    cl.send(w, connect_as(V4, "watch", "alice", true));
    cl.recv(w);
    cl.subscribe(w, "will/#", QoS::AtMostOnce);
    for allowed in [true, false] {
        let c = cl.open(0, V4);
        cl.send(c, with_will(connect_as(V4, "dies", "alice", true), "will/x"));
        assert!(
            matches!(cl.recv(c)[..], [Packet::ConnAck(ref a)] if a.reason == ReasonCode::Success)
        );
        if !allowed {
            let acl =
                crate::auth::Acl::parse("acl", "user alice\ntopic read will/#\n").expect("parses");
            let sec = crate::auth::Security { passwords: None, acl: Some(acl) };
            cl.shards[0].set_security(std::sync::Arc::new(sec));
        }
        let now = cl.now;
        cl.shards[0].handle_closed(c.conn, now);
        cl.settle();
        let got = publishes(&cl.recv(w)).len();
        assert_eq!(got, usize::from(allowed), "will published only while the ACL allows it");
    }
}

/// Issue 9: a client id taken over by a different user resent the previous user's in-flight
/// messages without an ACL check. In-flight and queued messages the new user may not read
/// are dropped; the rest are resent with DUP ([MQTT-4.4.0-1]).
#[test]
fn takeover_by_another_user_rechecks_inflight_messages() {
    let text = "user alice\ntopic readwrite secret/#\ntopic readwrite pub/#\n\
                user bob\ntopic readwrite pub/#\n";
    let mut cl = with_acl(2, text);
    let dev = cl.open(0, V4);
    cl.send(dev, connect_as(V4, "dev", "alice", false));
    cl.recv(dev);
    cl.subscribe(dev, "secret/#", QoS::AtLeastOnce);
    cl.subscribe(dev, "pub/#", QoS::AtLeastOnce);
    let p = cl.open(0, V4);
    cl.send(p, connect_as(V4, "alice-pub", "alice", true));
    cl.recv(p);
    cl.publish(p, "secret/1", b"s", QoS::AtLeastOnce, 1);
    cl.publish(p, "pub/1", b"p", QoS::AtLeastOnce, 2);
    assert_eq!(publishes(&cl.recv(dev)).len(), 2, "both in flight, not acknowledged");
    // Bob takes the client id over from the other shard.
    let bob = cl.open(1, V4);
    cl.send(bob, connect_as(V4, "dev", "bob", false));
    let got = cl.recv(bob);
    assert!(matches!(&got[0], Packet::ConnAck(a) if a.session_present));
    let resent = publishes(&got);
    assert_eq!(resent.len(), 1, "only what bob may read: {got:?}");
    assert_eq!(resent[0].topic.as_deref(), Some("pub/1"));
    assert!(resent[0].dup);
}

/// Issue 9: assigned client ids were `tern-{shard}-{counter}-{counter}`, guessable. Now they
/// are random, 23 bytes ([MQTT-3.1.3-5]), and differ between connections.
#[test]
fn assigned_client_ids_are_random() {
    let mut cl = Cluster::new(1);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let c = cl.open(0, V5);
        cl.send(c, connect_packet(V5, "", true));
        let got = cl.recv(c);
        let Some(Packet::ConnAck(a)) = got.first() else { panic!("{got:?}") };
        let id = a.properties.assigned_client_identifier().expect("[MQTT-3.2.2-16]");
        assert_eq!(id.len(), 23);
        assert!(id.starts_with("tern-") && id[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[0][5..13], ids[1][5..13], "not a counter: the leading bits differ too");
}

/// Retained messages after a SUBACK are written a batch at a time as the output drains: a
/// SUBSCRIBE matching thousands costs bounded work per turn, reading pauses meanwhile, and
/// no QoS 0 retained message is dropped for a full output buffer.
#[test]
fn retained_messages_are_sent_in_batches_as_output_drains() {
    let mut cfg = ShardConfig::for_tests(1);
    cfg.retained_messages_max = 3000;
    cfg.tx_bytes_max = 8 * 1024;
    let mut cl = Cluster::with_config(cfg);
    let p = cl.connect(0, V4, "p", true);
    for i in 0..3000 {
        let topic = format!("r/{i}");
        cl.send(p, publish_packet(&topic, &[b'v'; 100], QoS::AtMostOnce, 0, true));
    }
    let s = cl.connect(0, V4, "s", true);
    cl.send(s, subscribe_packet(1, &[("r/#", QoS::AtMostOnce)]));
    let first = cl.recv(s);
    assert!(matches!(first[0], Packet::SubAck(_)));
    let mut got = publishes(&first).len();
    assert!(got <= RETAINED_BATCH, "one batch per turn, not all 3000 ({got})");
    let mut turns = 1;
    while cl.shards[0].status(s.conn).has_tx {
        assert!(cl.shards[0].status(s.conn).read_paused, "no new packets while retained wait");
        got += publishes(&cl.recv(s)).len();
        turns += 1;
        assert!(turns < 1000);
    }
    assert_eq!(got, 3000, "every retained message delivered");
    assert_eq!(cl.shards[0].metrics.messages_dropped_qos0_slow, 0);
    assert_eq!(cl.shards[0].config().memory.used(), 0, "the drained backlog is released");
    assert!(!cl.shards[0].status(s.conn).read_paused);
}

/// The retained backlog of one connection is capped at `retained_messages_max`: overlapping
/// filters in one SUBSCRIBE cannot multiply it, and the second filter's walk of the store
/// stops at once (nothing fits): counted once, for that filter.
#[test]
fn retained_backlog_is_capped() {
    let mut cfg = ShardConfig::for_tests(1);
    cfg.retained_messages_max = 10;
    let mut cl = Cluster::with_config(cfg);
    let p = cl.connect(0, V4, "p", true);
    for i in 0..10 {
        cl.send(p, publish_packet(&format!("r/{i}"), b"v", QoS::AtMostOnce, 0, true));
    }
    let s = cl.connect(0, V4, "s", true);
    cl.send(s, subscribe_packet(1, &[("r/#", QoS::AtMostOnce), ("r/+", QoS::AtMostOnce)]));
    let mut got = 0;
    for _ in 0..10 {
        got += publishes(&cl.recv(s)).len();
    }
    assert_eq!(got, 10, "one store's worth");
    assert_eq!(cl.shards[0].metrics.retained_dropped_backlog, 1);
}

/// Publishes crossing the mesh count against the budget until the receiving shard handles
/// them: the mesh is where a fast publisher's backlog sits.
#[test]
fn publishes_in_the_mesh_are_charged_until_received() {
    let mut cl = Cluster::new(2);
    let s = cl.connect(1, V4, "s", true);
    cl.subscribe(s, "m", QoS::AtMostOnce);
    let p = cl.connect(0, V4, "p", true);
    let mut buf = BytesMut::new();
    let packet = publish_packet("m", &[0u8; 1000], QoS::AtMostOnce, 0, false);
    codec::encode(&packet, V4, &mut buf).expect("encodes");
    let now = cl.now;
    cl.shards[0].handle_read(p.conn, &buf, now);
    assert!(cl.shards[0].config().memory.used() >= 1000, "charged while in the outbox");
    cl.settle();
    assert_eq!(cl.shards[0].config().memory.used(), 0, "released by the receiver");
    assert_eq!(publishes(&cl.recv(s)).len(), 1);
}

/// `mesh_bytes_max`: a shard whose publishes crossing the mesh reach the bound stops reading
/// its publishers until the receivers catch up.
#[test]
fn mesh_bytes_bound_pauses_publishers_until_received() {
    let mut cfg = ShardConfig::for_tests(2);
    cfg.mesh_bytes_max = 4096;
    let mut cl = Cluster::with_config(cfg);
    let s = cl.connect(1, V4, "s", true);
    cl.subscribe(s, "m", QoS::AtMostOnce);
    let p = cl.connect(0, V4, "p", true);
    let mut buf = BytesMut::new();
    let packet = publish_packet("m", &[0u8; 1000], QoS::AtMostOnce, 0, false);
    codec::encode(&packet, V4, &mut buf).expect("encodes");
    let now = cl.now;
    let mut sent = 0;
    while !cl.shards[0].status(p.conn).read_paused {
        cl.shards[0].handle_read(p.conn, &buf, now);
        sent += 1;
        assert!(sent <= 5, "paused once ~4 KiB are in the mesh");
    }
    assert!(cl.shards[0].config().mesh_bytes.in_flight(crate::ids::ShardId(0)) >= 4096);
    cl.settle();
    assert_eq!(cl.shards[0].config().mesh_bytes.in_flight(crate::ids::ShardId(0)), 0);
    assert!(!cl.shards[0].status(p.conn).read_paused, "reads resume");
    assert_eq!(publishes(&cl.recv(s)).len(), sent);
}

/// Issue 9: a Takeover that reaches the shard of a new connection while that connection
/// waits for its CONNACK (the moved subscriptions are not yet acknowledged by every shard)
/// used to remove the session and then panic at `expect("installed by finish_connect")`, or
/// bind the connection to whatever reused the slot. The newest CONNECT wins
/// ([MQTT-3.1.4-2]): the waiting connection is closed without CONNACK and the session moves on.
#[test]
fn takeover_while_the_new_connection_waits_for_connack() {
    let mut cl = Cluster::new(2);
    // A client id whose registry is shard 1, so that a claim from shard 1 is answered at once.
    let id = (0..)
        .map(|i| format!("x{i}"))
        .find(|id| connect::registry_shard(id, 2) == crate::ids::ShardId(1))
        .expect("some id hashes to shard 1");
    let old = cl.connect(0, V4, &id, false);
    cl.subscribe(old, "s", QoS::AtLeastOnce);
    // The second connection resumes the session on shard 1; its CONNACK waits for shard 0 to
    // acknowledge the moved subscription, which we hold back.
    let waiting = cl.open(1, V4);
    let mut buf = BytesMut::new();
    codec::encode(&connect_packet(V4, &id, false), V4, &mut buf).expect("encodes");
    let now = cl.now;
    cl.shards[1].handle_read(waiting.conn, &buf, now);
    cl.settle_holding_delta_acks(0, 1);
    assert!(cl.recv(waiting).is_empty(), "no CONNACK while the subscription moves");
    assert!(!cl.shards[1].status(waiting.conn).closing);
    assert!(cl.shards[0].status(old.conn).closing, "the first connection was taken over");
    // A third CONNECT for the id, on shard 1: its Takeover reaches the waiting connection.
    let newest = cl.open(1, V4);
    cl.send(newest, connect_packet(V4, &id, false));
    let got = cl.recv(newest);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success && a.session_present),
        "the newest CONNECT resumes the session, got {got:?}"
    );
    assert!(cl.recv(waiting).is_empty(), "the superseded connection never gets CONNACK");
    assert!(cl.shards[1].status(waiting.conn).closing, "and is closed");
    assert_eq!(cl.shards[1].metrics.takeovers_superseded, 1);
    // The subscription moved with the session to the newest connection.
    let p = cl.connect(0, V4, "p", true);
    cl.publish(p, "s", b"m", QoS::AtLeastOnce, 1);
    assert_eq!(publishes(&cl.recv(newest)).len(), 1);
}

/// Issue 9: `Release` carries the generation of the claim it ends, so a release that arrives
/// after a newer claim for the same client id does not erase it.
#[test]
fn late_release_does_not_erase_a_newer_claim() {
    let mut cl = Cluster::new(2);
    let id = "late-release".to_string();
    let reg = usize::from(connect::registry_shard(&id, 2));
    let now = cl.now;
    let claim = |req| ShardMsg::Claim { client_id: id.clone(), req };
    cl.shards[reg].handle_peer(crate::ids::ShardId(0), claim(1), now);
    let first = cl.shards[reg].registry_owner(&id).expect("claimed");
    cl.shards[reg].handle_peer(crate::ids::ShardId(1), claim(2), now);
    let second = cl.shards[reg].registry_owner(&id).expect("claimed");
    assert!(second.generation > first.generation, "a newer claim has a larger generation");
    cl.shards[reg].handle_peer(
        crate::ids::ShardId(0),
        ShardMsg::Release { client_id: id.clone(), owner: first },
        now,
    );
    assert_eq!(cl.shards[reg].registry_owner(&id), Some(second), "the newer claim stays");
    cl.shards[reg].handle_peer(
        crate::ids::ShardId(1),
        ShardMsg::Release { client_id: id.clone(), owner: second },
        now,
    );
    assert_eq!(cl.shards[reg].registry_owner(&id), None, "its own release ends it");
}

/// Issue 9: a connection waiting for CONNACK (here: the registry's answer never comes) is
/// closed at the connect deadline instead of waiting forever; the late answer then finds no
/// connection and does not panic.
#[test]
fn connecting_has_a_deadline() {
    let mut cl = Cluster::new(2);
    let id = (0..)
        .map(|i| format!("d{i}"))
        .find(|id| connect::registry_shard(id, 2) == crate::ids::ShardId(0))
        .expect("some id hashes to shard 0");
    let c = cl.open(1, V4);
    let mut buf = BytesMut::new();
    codec::encode(&connect_packet(V4, &id, true), V4, &mut buf).expect("encodes");
    let now = cl.now;
    cl.shards[1].handle_read(c.conn, &buf, now);
    // The Claim sits in shard 1's outbox: nobody answers.
    let timeout = cl.shards[1].config().connect_timeout;
    cl.shards[1].tick(now + timeout - Duration::from_millis(1));
    assert!(!cl.shards[1].status(c.conn).closing, "still within the deadline");
    cl.shards[1].tick(now + timeout);
    assert!(cl.shards[1].status(c.conn).closing, "closed at the deadline");
    assert_eq!(cl.shards[1].metrics.connect_timeouts, 1);
    cl.settle();
    assert!(cl.recv(c).is_empty(), "no CONNACK for a closed connection");
    assert_eq!(cl.shards[0].registry_owner(&id), None, "the clean session ended and released");
}

/// Issue 9 (found by the simulation, seed 324): a SUBACK held for the other shards was sent to
/// whatever connection held its connection id when the answers came. A client that dropped
/// after SUBSCRIBE and came back on the same id and slot got a SUBACK it never asked for (and
/// the retained messages of a subscription it does not have).
#[test]
fn held_suback_does_not_reach_the_next_connection_on_the_same_id() {
    let mut cl = Cluster::new(2);
    let id = (0..)
        .map(|i| format!("s{i}"))
        .find(|id| connect::registry_shard(id, 2) == crate::ids::ShardId(1))
        .expect("some id hashes to shard 1");
    let old = cl.connect(1, V4, &id, false);
    let s = Subscribe {
        packet_id: pid(8),
        filters: vec![(
            crate::codec::TopicFilter::new("held/1", true).expect("valid filter"),
            SubscriptionOptions::default(),
        )],
        properties: Properties::new(),
    };
    let mut buf = BytesMut::new();
    codec::encode(&Packet::Subscribe(s), V4, &mut buf).expect("encodes");
    let now = cl.now;
    cl.shards[1].handle_read(old.conn, &buf, now);
    // The SUBACK waits for shard 0; the client drops and its socket is released.
    cl.shards[1].handle_closed(old.conn, now);
    cl.shards[1].release(old.conn, now);
    // It comes back at once: same shard, same connection id (and slot), registry on this shard.
    let new = cl.open(1, V4);
    assert_eq!(new.conn, old.conn, "precondition: the id is reused");
    cl.send(new, connect_packet(V4, &id, true));
    let got = cl.recv(new);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success),
        "CONNACK only, no stray SUBACK: {got:?}"
    );
}

/// Issue 15: session expiry, message expiry and will delay on the harness clock.
mod expiry;
#[path = "flow_tests.rs"]
mod flow_tests;
/// Issue 13: wrong acknowledgements, CONNACK size, retained replicas, shared subscriptions.
mod protocol;

// ------------------------------------------------------------------------------------------------
// Pre-auth size and user-property bounds (issue 9 item 3, CVE-2017-7651, CVE-2023-0809,
// CVE-2021-41039 classes).
// ------------------------------------------------------------------------------------------------

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
        topic: crate::codec::TopicName::new("will/t").expect("valid topic"),
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
    // Each refusal has a counter of its own (besides `protocol_errors`).
    assert_eq!(cl.shards[0].metrics.preauth_packets_refused_size, 2);
    assert_eq!(cl.shards[0].metrics.user_properties_refused, 0);
    // After CONNECT the full packet size applies: a PUBLISH twice the pre-auth bound is fine.
    let c = cl.connect(0, V4, "big-publisher", true);
    let payload: &'static [u8] = Box::leak(vec![b'x'; 2 * max].into_boxed_slice());
    cl.publish(c, "t", payload, QoS::AtLeastOnce, 1);
    assert!(matches!(&cl.recv(c)[..], [Packet::PubAck(_)]));
    assert!(!is_closing(&cl, c));
    assert_eq!(cl.shards[0].metrics.preauth_packets_refused_size, 2, "not a pre-auth refusal");
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
    assert_eq!(cl.shards[0].metrics.user_properties_refused, 1, "the one over the cap counted");
    assert_eq!(cl.shards[0].metrics.preauth_packets_refused_size, 0);
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
    assert_eq!(cl.shards[0].metrics.user_properties_refused, 2, "count and bytes caps counted");
}

// ------------------------------------------------------------------------------------------------
// Password checks off the shard thread, failed-login rate limit (issue 9 item 5).
// ------------------------------------------------------------------------------------------------

/// One shard with a password file (`alice` / `pw`, 10 PBKDF2 iterations) that, with `queued`,
/// queues its password checks for the runtime (as the broker does) instead of running them
/// inline.
fn cluster_with_passwords(queued: bool) -> Cluster {
    let mut cfg = ShardConfig::for_tests(1);
    let mut db = crate::auth::PasswordDb::new();
    let hash = crate::auth::PasswordHash::new_pbkdf2_sha512(b"pw", 10).expect("hash");
    db.upsert("alice", hash).expect("user");
    cfg.security = std::sync::Arc::new(crate::auth::Security {
        passwords: Some(std::sync::Arc::new(db)),
        acl: None,
    });
    cfg.failed_logins_per_minute_max = 3;
    cfg.password_checks_inline = !queued;
    Cluster {
        shards: vec![Shard::new(crate::ids::ShardId(0), cfg)],
        now: crate::test_clock::test_epoch(),
    }
}

fn login(version: ProtocolVersion, id: &str, password: &'static [u8]) -> Packet {
    let Packet::Connect(mut c) = connect_packet(version, id, true) else { unreachable!() };
    c.username = Some("alice".into());
    c.password = Some(Bytes::from_static(password));
    Packet::Connect(c)
}

impl Cluster {
    /// The password checks the shard queued since the last call.
    fn take_checks(&mut self) -> Vec<crate::auth::HashJob> {
        let mut jobs = Vec::new();
        self.shards[0].take_password_checks(&mut jobs);
        jobs
    }

    /// Runs the one queued password check, as a worker would, and hands its verdict back.
    fn deliver_verdict(&mut self) {
        let jobs = self.take_checks();
        assert_eq!(jobs.len(), 1, "one check queued");
        let v = jobs[0].run();
        let now = self.now;
        self.shards[0].handle_password_verdict(v, now);
        self.settle();
    }
}

/// The key derivation runs on a worker, not in `handle_read`: the CONNECT waits (no CONNACK,
/// reading paused) until the verdict is handed back, then CONNACK follows.
#[test]
fn password_check_runs_on_a_worker_and_the_connect_waits_for_it() {
    let mut cl = cluster_with_passwords(true);
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
    let mut cl = cluster_with_passwords(true);
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
    let mut cl = cluster_with_passwords(true);
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

/// The password queue bound, as the shard sees it: when the runtime cannot queue a check (its
/// workers' queue holds `hash_queue_max` jobs, see `auth::pool`'s tests) it answers
/// `password_check_refused`, and the CONNECT is refused with 0x89 Server busy.
#[test]
fn a_refused_password_check_refuses_with_server_busy() {
    let mut cl = cluster_with_passwords(true);
    let c = cl.open(0, V5);
    cl.send(c, login(V5, "busy", b"pw"));
    assert!(cl.recv(c).is_empty(), "waiting for the check");
    let now = cl.now;
    for job in cl.take_checks() {
        cl.shards[0].password_check_refused(job.ticket, now);
    }
    let got = cl.recv(c);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::ServerBusy),
        "{got:?}"
    );
    // v3 has no 0x89: refused as server unavailable.
    let c = cl.open(0, V4);
    cl.send(c, login(V4, "busy3", b"pw"));
    let now = cl.now;
    for job in cl.take_checks() {
        cl.shards[0].password_check_refused(job.ticket, now);
    }
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason != ReasonCode::Success), "{got:?}");
}

/// With `password_checks_inline` (tools, these tests' default) the check runs inline and answers at once.
#[test]
fn without_a_pool_the_check_runs_inline() {
    let mut cl = cluster_with_passwords(false);
    let c = cl.open(0, V4);
    cl.send(c, login(V4, "inline", b"pw"));
    let got = cl.recv(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success), "{got:?}");
}

/// A fan-out encodes the PUBLISH once and copies it to every subscriber that gets the same
/// bytes (`publish::SharedEncoding`); each copy still carries that subscriber's own packet id
/// ([MQTT-2.2.1-2]: a QoS 1 PUBLISH carries a non-zero id unused by that session), and
/// subscribers with another version, QoS or properties of their own get their own encoding.
#[test]
fn fan_out_shares_one_encoding_with_per_subscriber_packet_ids() {
    let mut cl = Cluster::new(1);
    let p = cl.connect(0, V4, "pub", true);
    let mut subs = Vec::new();
    for (i, (version, qos)) in [
        (V4, QoS::AtLeastOnce),
        (V4, QoS::AtLeastOnce),
        (V4, QoS::AtMostOnce),
        (ProtocolVersion::V31, QoS::AtLeastOnce),
        (V5, QoS::AtLeastOnce),
        (V5, QoS::AtLeastOnce),
    ]
    .into_iter()
    .enumerate()
    {
        let c = cl.connect(0, version, &format!("s{i}"), true);
        cl.subscribe(c, "fan/+", qos);
        subs.push((c, qos));
    }
    // Subscriber 1 alone gets a message first, so its next packet id differs from the others'.
    let solo = cl.connect(0, V4, "solo", true);
    cl.subscribe(solo, "solo/1", QoS::AtLeastOnce);
    let (s1, _) = subs[1];
    cl.subscribe(s1, "solo/1", QoS::AtLeastOnce);
    cl.publish(p, "solo/1", b"first", QoS::AtLeastOnce, 1);
    assert_eq!(publishes(&cl.recv(s1)).len(), 1);
    assert_eq!(publishes(&cl.recv(solo)).len(), 1);
    let before = cl.shards[0].metrics.messages_sent;

    cl.publish(p, "fan/x", b"shared payload", QoS::AtLeastOnce, 2);
    let mut ids = Vec::new();
    for (c, qos) in &subs {
        let got = cl.recv(*c);
        let got = publishes(&got);
        assert_eq!(got.len(), 1, "one PUBLISH each");
        let m = got[0];
        assert_eq!(
            (m.topic.as_deref().unwrap_or(""), &m.payload[..], m.qos),
            ("fan/x", &b"shared payload"[..], *qos)
        );
        assert!(!m.dup && !m.retain);
        ids.push(m.packet_id.map(PacketId::get));
    }
    // Fresh sessions start at id 1; subscriber 1 used id 1 for the first message.
    assert_eq!(ids, [Some(1), Some(2), None, Some(1), Some(1), Some(1)]);
    assert_eq!(cl.shards[0].metrics.messages_sent - before, subs.len() as u64);
    // The latency samples of the fan-out (one run of equal values) all reach the histogram.
    cl.shards[0].flush_latency();
    assert_eq!(cl.shards[0].latency.len(), 2 + subs.len() as u64);
}

// ------------------------------------------------------------------------------------------------
// Wills of connections closed before their CONNACK (issue 9).
// ------------------------------------------------------------------------------------------------

/// A client id whose registry partition is on shard `reg` of 2.
fn id_registered_on(prefix: &str, reg: u16) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| connect::registry_shard(id, 2) == crate::ids::ShardId(reg))
        .expect("some id hashes to that shard")
}

/// Wills to `will/#` the watcher has received.
fn wills_seen(cl: &mut Cluster, watcher: Client) -> Vec<String> {
    publishes(&cl.recv(watcher))
        .iter()
        .map(|p| p.topic.as_deref().unwrap_or("").to_owned())
        .collect()
}

/// [MQTT-3.1.2-8]: a will exists once the CONNECT is accepted. A connection closed while its
/// CONNECT waits for the registry (socket closed, Connecting deadline) or superseded by a newer
/// CONNECT for the same id before its claim was answered never had a session: its will is not
/// published (Mosquitto likewise drops the will of a CONNECT it refuses).
#[test]
fn will_of_a_connect_not_yet_accepted_is_not_published() {
    let mut cl = Cluster::new(2);
    let watcher = cl.connect(0, V4, "watcher", true);
    cl.subscribe(watcher, "will/#", QoS::AtMostOnce);
    let encoded = |id: &str| {
        let mut buf = BytesMut::new();
        let p = with_will(connect_packet(V4, id, true), &format!("will/{id}"));
        codec::encode(&p, V4, &mut buf).expect("encodes");
        buf
    };
    // 1. The socket fails while the claim is on its way to the registry on shard 0.
    let id = id_registered_on("n", 0);
    let c = cl.open(1, V4);
    let now = cl.now;
    cl.shards[1].handle_read(c.conn, &encoded(&id), now);
    cl.shards[1].handle_closed(c.conn, now);
    cl.settle();
    assert!(cl.recv(c).is_empty());
    // 2. The Connecting deadline passes with the registry's answer held back.
    let id2 = id_registered_on("t", 0);
    let c2 = cl.open(1, V4);
    cl.shards[1].handle_read(c2.conn, &encoded(&id2), now);
    let timeout = cl.shards[1].config().connect_timeout;
    cl.shards[1].tick(now + timeout);
    assert!(cl.shards[1].status(c2.conn).closing, "closed at the connect deadline");
    cl.settle();
    // 3. Two CONNECTs for one id before either claim is answered by the registry on the other
    //    shard: the older is superseded without CONNACK.
    let id3 = id_registered_on("s", 0);
    // A session for the id on shard 0 (no will), so the older CONNECT waits for its takeover.
    let holder = cl.connect(0, V4, &id3, true);
    let older = cl.open(1, V4);
    let newer = cl.open(1, V4);
    cl.shards[1].handle_read(older.conn, &encoded(&id3), now);
    cl.shards[1].handle_read(newer.conn, &encoded(&id3), now);
    cl.settle();
    let (older_got, newer_got) = (cl.recv(older), cl.recv(newer));
    assert!(older_got.is_empty(), "the superseded CONNECT gets no CONNACK: {older_got:?}");
    assert!(cl.shards[1].status(older.conn).closing);
    assert_eq!(cl.shards[1].metrics.takeovers_superseded, 1);
    assert!(cl.shards[0].status(holder.conn).closing, "the holder was taken over");
    assert!(cl.shards[0].status(holder.conn).closing, "the holder was taken over");
    assert!(matches!(&newer_got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success));
    assert_eq!(wills_seen(&mut cl, watcher), Vec::<String>::new(), "no will from any of them");
    // The newest connection's own will works as usual.
    cl.shards[1].handle_closed(newer.conn, now);
    cl.settle();
    assert_eq!(wills_seen(&mut cl, watcher), vec![format!("will/{id3}")]);
}

/// [MQTT-3.1.2-8], [MQTT-3.1.4-3]: a CONNECT that resumed a session whose subscriptions are
/// moving here was accepted (the session is installed; only the CONNACK waits for the other
/// shards). Closed without DISCONNECT in that window — socket failure, Connecting deadline, or
/// taken over by a newer CONNECT — its will is published, as it would be a moment later.
#[test]
fn will_of_a_connection_whose_connack_is_held_is_published() {
    for how in ["socket", "deadline", "takeover"] {
        let mut cl = Cluster::new(2);
        let watcher = cl.connect(0, V4, "watcher", true);
        cl.subscribe(watcher, "will/#", QoS::AtMostOnce);
        let id = id_registered_on("h", 1);
        let old = cl.connect(0, V4, &id, false);
        cl.subscribe(old, "s", QoS::AtLeastOnce);
        // Resume on shard 1; shard 0's acknowledgement of the moved subscription is held.
        let waiting = cl.open(1, V4);
        let mut buf = BytesMut::new();
        let p = with_will(connect_packet(V4, &id, false), "will/held");
        codec::encode(&p, V4, &mut buf).expect("encodes");
        let now = cl.now;
        cl.shards[1].handle_read(waiting.conn, &buf, now);
        cl.settle_holding_delta_acks(0, 1);
        assert!(cl.recv(waiting).is_empty(), "{how}: CONNACK held");
        assert!(cl.shards[0].status(old.conn).closing, "{how}: the first connection taken over");
        match how {
            "socket" => cl.shards[1].handle_closed(waiting.conn, now),
            "deadline" => {
                let timeout = cl.shards[1].config().connect_timeout;
                cl.shards[1].tick(now + timeout);
            }
            _ => {
                let newest = cl.open(1, V4);
                cl.send(newest, connect_packet(V4, &id, false));
                assert!(matches!(&cl.recv(newest)[..], [Packet::ConnAck(_)]), "{how}");
            }
        }
        assert!(cl.shards[1].status(waiting.conn).closing, "{how}: closed");
        cl.settle();
        assert!(cl.recv(waiting).is_empty(), "{how}: no CONNACK after the close");
        assert_eq!(wills_seen(&mut cl, watcher), vec!["will/held".to_string()], "{how}");
        assert_eq!(cl.shards[1].metrics.wills_published, 1, "{how}: once");
    }
}

/// Moves one mesh message (control lane first), the first found from shard 0 up; false when
/// the mesh is empty.
fn step_one(cl: &mut Cluster) -> bool {
    let n = cl.shards.len();
    for f in 0..n {
        for t in 0..n {
            let m = cl.shards[f].control_lane()[t].pop_front();
            let m = m.or_else(|| cl.shards[f].take_batch(t, 1).pop());
            if let Some(m) = m {
                let now = cl.now;
                cl.shards[t].handle_peer(crate::ids::ShardId(f as u16), m, now);
                return true;
            }
        }
    }
    false
}

/// [MQTT-3.1.2-5], [MQTT-4.5.0-1]: a QoS 1/2 message published (and acknowledged) while a
/// persistent session resumes on the shard that holds it is queued for it, whatever mesh
/// message the resume has reached when the publish is routed. Every interleaving point of the
/// resume's mesh traffic is tried, with the publisher on either shard, the client id's registry
/// on either shard, the old connection still open or already gone. Before the fix the removed
/// session's `SubRemove` reached the other shard before the resumed one's `SubAdd`, and a
/// publish routed there in between was acknowledged and matched nobody.
#[test]
fn publish_during_a_same_shard_resume_reaches_the_resumed_session() {
    publish_during_resume(&[(0, 0), (1, 1)], "cmd");
}

/// The same across shards (session taken over by a connection on the other shard). Before
/// the `handover` protocol, 96 of these 256 cases lost the message: after the old shard handed
/// the session over, a publish it routed (or one in flight to it on the data lane, which the
/// control-lane `Takeover` overtakes) matched nobody until the new shard had installed the
/// session and announced its filters. Now the old shard forwards it, and the new one delivers
/// each message id once.
#[test]
fn publish_during_a_cross_shard_resume_reaches_the_resumed_session() {
    publish_during_resume(&[(0, 1), (1, 0)], "cmd");
}

/// The same for a session that is the only member of a shared subscription group (§4.8.2):
/// a delivery another shard picked for the member at its old place is forwarded to it, not
/// dropped for want of a member (`messages_dropped_no_member`).
#[test]
fn shared_delivery_during_a_resume_reaches_the_moved_member() {
    publish_during_resume(&[(0, 0), (1, 1), (0, 1), (1, 0)], "$share/g/cmd");
}

fn publish_during_resume(moves: &[(usize, usize)], filter: &str) {
    for registry in 0..2u16 {
        let id = (0..)
            .map(|i| format!("dev{i}"))
            .find(|id| connect::registry_shard(id, 2) == crate::ids::ShardId(registry))
            .expect("some id hashes to each shard");
        for &(old_shard, new_shard) in moves {
            for publisher in 0..2usize {
                for offline in [false, true] {
                    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
                        for at in 0.. {
                            let case = format!(
                                "registry {registry}, {old_shard}->{new_shard}, publisher on \
                                 {publisher}, offline {offline}, {qos:?}, after {at} messages"
                            );
                            let (o, n, p) = (old_shard, new_shard, publisher);
                            let case = format!("{filter}: {case}");
                            if !resume_case(&id, filter, o, n, p, offline, qos, at, &case) {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One case of `publish_during_resume`; false when the resume
/// needed fewer than `at` mesh messages (no more interleavings to try).
#[allow(clippy::too_many_arguments)]
fn resume_case(
    id: &str,
    filter: &str,
    old_shard: usize,
    new_shard: usize,
    publisher: usize,
    offline: bool,
    qos: QoS,
    at: usize,
    case: &str,
) -> bool {
    let mut cl = Cluster::new(2);
    let old = cl.connect(old_shard, V4, id, false);
    cl.subscribe(old, filter, QoS::ExactlyOnce);
    let p = cl.connect(publisher, V4, "pub", true);
    if offline {
        let now = cl.now;
        cl.shards[old_shard].handle_closed(old.conn, now);
        cl.shards[old_shard].release(old.conn, now);
        cl.settle();
    }
    let back = cl.open(new_shard, V4);
    let mut buf = BytesMut::new();
    codec::encode(&connect_packet(V4, id, false), V4, &mut buf).expect("encodes");
    let now = cl.now;
    cl.shards[new_shard].handle_read(back.conn, &buf, now);
    let mut moved = 0;
    while moved < at && step_one(&mut cl) {
        moved += 1;
    }
    if moved < at {
        return false;
    }
    // The publish is routed now, in the middle of the move.
    let mut buf = BytesMut::new();
    codec::encode(&publish_packet("cmd", b"mid", qos, 7, false), V4, &mut buf).expect("encodes");
    let now = cl.now;
    cl.shards[publisher].handle_read(p.conn, &buf, now);
    cl.settle();
    let acked = cl.recv(p);
    assert!(
        acked.iter().any(|a| matches!(a, Packet::PubAck(_) | Packet::PubRec(_))),
        "{case}: publish acknowledged, got {acked:?}"
    );
    let dropped: u64 = cl
        .shards
        .iter()
        .map(|s| {
            let m = &s.metrics;
            m.messages_dropped_session_end
                + m.messages_dropped_queue_full
                + m.messages_dropped_no_member
        })
        .sum();
    let got = cl.recv(back);
    assert!(
        matches!(&got.first(), Some(Packet::ConnAck(a)) if a.session_present),
        "{case}: resumed, got {got:?}"
    );
    let mids = publishes(&got).iter().filter(|p| &p.payload[..] == b"mid").count();
    assert_eq!(dropped, 0, "{case}: nothing dropped by a bound");
    assert_eq!(mids, 1, "{case}: the acknowledged message reaches the resumed session once");
    // The handover finished everywhere: no forward record, joining session or fence is left.
    for (i, s) in cl.shards.iter().enumerate() {
        assert_eq!(s.handover.in_transit(), 0, "{case}: shard {i} settled");
    }
    true
}

/// The set-up of the handover bound tests: two shards whose sessions keep 2 queued messages and
/// 1 in flight; persistent session "mover" subscribed to `cmd` on shard 0; a publisher on
/// `pub_shard`; and a connection on shard 1 whose CONNECT resuming "mover" has been read, with
/// no mesh message moved yet. Returns the cluster, the publisher and the resuming connection.
fn session_moving_to_shard_1(pub_shard: usize) -> (Cluster, Client, Client) {
    let mut cfg = ShardConfig::for_tests(2);
    cfg.session.queue_messages_max = 2;
    cfg.session.inflight_max = 1;
    let mut cl = Cluster::with_config(cfg);
    let old = cl.connect(0, V4, "mover", false);
    cl.subscribe(old, "cmd", QoS::AtLeastOnce);
    let publisher = cl.connect(pub_shard, V4, "pub", true);
    let back = cl.open(1, V4);
    let mut buf = BytesMut::new();
    codec::encode(&connect_packet(V4, "mover", false), V4, &mut buf).expect("encodes");
    let now = cl.now;
    cl.shards[1].handle_read(back.conn, &buf, now);
    (cl, publisher, back)
}

/// The bound on what one forward record forwards (the session's queue bound plus its window,
/// `handover`): while a session moves, messages past it are dropped and counted in
/// `messages_dropped_queue_full` on the old shard, not held without limit.
#[test]
fn a_forward_record_forwards_at_most_its_bound() {
    let (mut cl, p, _back) = session_moving_to_shard_1(0);
    // Move mesh messages until shard 0 has handed the session over.
    while cl.shards[0].metrics.handover_records == 0 {
        assert!(step_one(&mut cl), "the takeover reaches shard 0");
    }
    // Five publishes on shard 0 while its forward record is live: 2 + 1 forwarded, 2 dropped.
    let mut buf = BytesMut::new();
    for i in 1..=5u16 {
        let m = publish_packet("cmd", b"m", QoS::AtLeastOnce, i, false);
        codec::encode(&m, V4, &mut buf).expect("encodes");
    }
    let now = cl.now;
    cl.shards[0].handle_read(p.conn, &buf, now);
    assert_eq!(cl.shards[0].metrics.handover_forwarded, 3, "forwarded up to the bound");
    assert_eq!(cl.shards[0].metrics.messages_dropped_queue_full, 2, "the rest counted");
    cl.settle();
    for (i, s) in cl.shards.iter().enumerate() {
        assert_eq!(s.handover.in_transit(), 0, "shard {i}: the handover finished");
    }
}

/// A joining session's de-duplication set is bounded like a forward record (queue bound +
/// window): ids past it are counted in `handover_dedup_full`, and their messages are still
/// delivered — a full set may let a QoS 1 copy through twice (allowed: QoS 1 is "at least
/// once", [MQTT-4.3.2-1]), never drop one.
#[test]
fn a_joining_sessions_dedup_set_is_bounded_and_counts_what_it_cannot_record() {
    let (mut cl, p, back) = session_moving_to_shard_1(1);
    // Move mesh messages one at a time until its CONNACK is out.
    while !cl.recv(back).iter().any(|p| matches!(p, Packet::ConnAck(_))) {
        assert!(step_one(&mut cl), "the resume is answered");
    }
    assert!(cl.shards[1].handover.any_joining(), "the session is still joining");
    // Five publishes routed on shard 1 while it joins, each delivered and acknowledged before
    // the next: three ids recorded, two not (the set is full), all five delivered.
    let mut got = 0;
    for i in 1..=5u16 {
        let mut buf = BytesMut::new();
        let m = publish_packet("cmd", b"m", QoS::AtLeastOnce, i, false);
        codec::encode(&m, V4, &mut buf).expect("encodes");
        let now = cl.now;
        cl.shards[1].handle_read(p.conn, &buf, now);
        let packets = cl.recv(back);
        for id in publishes(&packets).iter().filter_map(|m| m.packet_id) {
            got += 1;
            let mut buf = BytesMut::new();
            codec::encode(&Packet::PubAck(PubResp::success(id)), V4, &mut buf).expect("encodes");
            cl.shards[1].handle_read(back.conn, &buf, now);
        }
    }
    assert!(cl.shards[1].handover.any_joining(), "all five arrived inside the window");
    assert_eq!(cl.shards[1].metrics.handover_dedup_full, 2, "ids past the bound counted");
    assert_eq!(got, 5, "every acknowledged publish delivered");
    // The old shard forwards its copies (up to its own bound); the recorded ids are not
    // delivered twice.
    cl.settle();
    for (i, s) in cl.shards.iter().enumerate() {
        assert_eq!(s.handover.in_transit(), 0, "shard {i}: the handover finished");
    }
    assert!(cl.shards[1].metrics.handover_duplicates >= 1, "a forwarded copy was recognised");
    assert!(publishes(&cl.recv(back)).is_empty(), "no recorded id delivered twice");
    assert_eq!(cl.shards[1].metrics.messages_dropped_queue_full, 0, "nothing dropped for it");
}

/// [MQTT-3.8.4-3]: a SUBSCRIBE repeating an existing filter replaces the subscription, and
/// the subscription is there throughout: a QoS 1 publish on the other shard reaches it
/// whichever of the re-SUBSCRIBE's mesh messages that shard has applied. Before the fix the
/// shard withdrew the filter (`SubRemove` / `SharedRemove`) and announced it again, and a
/// publish routed between the two matched nobody.
#[test]
fn resubscribing_keeps_the_subscription_for_publishes_on_other_shards() {
    for filter in ["t", "$share/g/t"] {
        for cut in 0..6 {
            let mut cl = Cluster::new(2);
            let sub = cl.connect(0, V4, "sub", true);
            cl.subscribe(sub, filter, QoS::AtLeastOnce);
            let p = cl.connect(1, V4, "pub", true);
            let mut buf = BytesMut::new();
            let again = subscribe_packet(2, &[(filter, QoS::AtLeastOnce)]);
            codec::encode(&again, V4, &mut buf).expect("encodes");
            let now = cl.now;
            cl.shards[0].handle_read(sub.conn, &buf, now);
            for _ in 0..cut {
                step_one(&mut cl);
            }
            let mut buf = BytesMut::new();
            codec::encode(&publish_packet("t", b"m", QoS::AtLeastOnce, 1, false), V4, &mut buf)
                .expect("encodes");
            cl.shards[1].handle_read(p.conn, &buf, now);
            cl.settle();
            let got = cl.recv(sub);
            assert_eq!(publishes(&got).len(), 1, "{filter}, cut {cut}: delivered once: {got:?}");
        }
    }
}

#[test]
fn whole_packets_decode_in_place_and_only_a_partial_one_is_buffered() {
    // Issue 10: packets whole in the read buffer are decoded from it (no copy into `rx`); a
    // trailing partial packet is kept and completed by the next read, in order.
    let mut cl = Cluster::new(1);
    let sub = cl.connect(0, V4, "sub", true);
    let publisher = cl.connect(0, V4, "pub", true);
    cl.subscribe(sub, "t/#", QoS::AtLeastOnce);
    let mut wire = BytesMut::new();
    for (i, payload) in [&b"one"[..], b"two", b"three"].into_iter().enumerate() {
        let mut p = publish_packet("t/a", b"", QoS::AtLeastOnce, i as u16 + 1, false);
        if let Packet::Publish(p) = &mut p {
            p.payload = Bytes::copy_from_slice(payload);
        }
        codec::encode(&p, V4, &mut wire).expect("test packets encode");
    }
    let cut = wire.len() - 4;
    let now = cl.now;
    cl.shards[0].handle_read(publisher.conn, &wire[..cut], now);
    let rx = cl.shards[0].conn(publisher.conn).expect("open").footprint().0;
    assert!(rx > 0 && rx < 16, "only the partial third packet is buffered ({rx} B)");
    let got = cl.recv(sub);
    let payloads: Vec<&[u8]> = publishes(&got).iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"one"[..], b"two"], "the two whole packets, in order");
    // The next read completes it and carries one more whole packet: only the completing
    // bytes go into `rx`, the rest is decoded in place, and nothing stays buffered.
    let mut next = BytesMut::from(&wire[cut..]);
    let p = publish_packet("t/b", b"four", QoS::AtMostOnce, 0, false);
    codec::encode(&p, V4, &mut next).expect("test packets encode");
    cl.shards[0].handle_read(publisher.conn, &next, now);
    assert_eq!(cl.shards[0].conn(publisher.conn).expect("open").footprint().0, 0);
    let got = cl.recv(sub);
    let payloads: Vec<&[u8]> = publishes(&got).iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"three"[..], b"four"], "completed by the next read, in order");
    // Every QoS 1 PUBLISH was acknowledged once ([MQTT-4.3.2-2]).
    let acks = cl.recv(publisher).iter().filter(|p| matches!(p, Packet::PubAck(_))).count();
    assert_eq!(acks, 3);
}
