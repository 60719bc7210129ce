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
    let mut cfg = ShardConfig::for_tests(n);
    change(&mut cfg);
    Cluster::with_config(cfg)
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
        filters: vec![(
            crate::codec::TopicFilter::new("#", true).expect("valid filter"),
            SubscriptionOptions::default(),
        )],
        properties: Properties::new(),
    };
    cl.send(c, Packet::Subscribe(s));
    let got = cl.recv(c);
    let mut topics: Vec<String> =
        publishes(&got).iter().map(|p| p.topic.as_deref().unwrap_or("").to_owned()).collect();
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
    let now = cl.now;
    let raw = cl.shards[0].take_tx(c.conn, now);
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
    // The least useful optional properties went first; what fits stays.
    assert_eq!(ack.properties.retain_available(), None, "absent means 1 anyway");
    assert_eq!(ack.properties.topic_alias_maximum(), Some(8), "still fits in 20 bytes");
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
    let now = cl.now;
    let raw = cl.shards[0].take_tx(c.conn, now);
    assert!(raw.len() <= 20);
    let mut buf = raw.clone();
    let got = codec::decode(&mut buf, V5, usize::MAX).expect("decodes");
    assert!(matches!(got, Some(Packet::Disconnect(d))
        if d.reason == ReasonCode::ProtocolError && d.properties.reason_string().is_none()));
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions (§4.8.2).
// ---------------------------------------------------------------------------------------------

use crate::shard::SharedStrategy;

/// Connects `id` (optionally as `user`, with a persistent session when `persistent`) and
/// subscribes it to `filter` at QoS 1.
fn member(cl: &mut Cluster, shard: usize, id: &str, user: Option<&str>, filter: &str) -> Client {
    member_with(cl, shard, id, user, filter, false)
}

fn member_with(
    cl: &mut Cluster,
    shard: usize,
    id: &str,
    user: Option<&str>,
    filter: &str,
    persistent: bool,
) -> Client {
    let c = cl.open(shard, V4);
    let Packet::Connect(mut connect) = connect_packet(V4, id, !persistent) else { unreachable!() };
    connect.username = user.map(Into::into);
    cl.send(c, Packet::Connect(connect));
    assert!(matches!(&cl.recv(c)[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success));
    cl.subscribe(c, filter, QoS::AtLeastOnce);
    c
}

/// Payloads of the PUBLISH packets `c` was sent since the last call.
fn got(cl: &mut Cluster, c: Client) -> Vec<Vec<u8>> {
    publishes(&cl.recv(c)).iter().map(|p| p.payload.to_vec()).collect()
}

/// The network connection of `c` goes away without DISCONNECT; the mesh is not moved.
fn drop_unsettled(cl: &mut Cluster, c: Client) {
    let now = cl.now;
    cl.shards[c.shard].handle_closed(c.conn, now);
    cl.shards[c.shard].release(c.conn, now);
}

const PAYLOADS: [&[u8]; 8] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"];

/// [MQTT-4.8.2-4]: each message goes to one member. A member that left after the publishing
/// shard picked it (its removal still in flight) does not lose the message: another member
/// gets it.
#[test]
fn shared_message_for_a_member_that_left_goes_to_another() {
    let mut cl = Cluster::new(3);
    let gone = member(&mut cl, 1, "gone", None, "$share/g/jobs/#");
    let stays = member(&mut cl, 2, "stays", None, "$share/g/jobs/#");
    let p = cl.connect(0, V4, "p", true);
    drop_unsettled(&mut cl, gone);
    for payload in PAYLOADS {
        send_unsettled(&mut cl, p, publish_packet("jobs/a", payload, QoS::AtLeastOnce, 1, false));
    }
    cl.settle();
    assert_eq!(got(&mut cl, stays).len(), PAYLOADS.len(), "every message reached a member");
    assert_eq!(cl.shards.iter().map(|s| s.metrics.messages_dropped_no_member).sum::<u64>(), 0);
}

/// A member the ACL does not let read the topic is skipped for that message (the delivery
/// check, [MQTT-3.8.3-*] / §4.8.2): the other member gets it, none is dropped.
#[test]
fn shared_message_for_an_unauthorised_member_goes_to_another() {
    let acl = crate::auth::Acl::parse(
        "acl",
        "topic write jobs/#\nuser bad\ntopic read jobs/#\ntopic deny jobs/secret\n\
         user good\ntopic read jobs/#\n",
    )
    .expect("valid ACL");
    let security = std::sync::Arc::new(crate::auth::Security { passwords: None, acl: Some(acl) });
    let mut cl = cluster_with(2, |c| c.security = std::sync::Arc::clone(&security));
    let bad = member(&mut cl, 0, "b", Some("bad"), "$share/g/jobs/#");
    let good = member(&mut cl, 1, "g", Some("good"), "$share/g/jobs/#");
    let p = cl.connect(0, V4, "p", true);
    for payload in PAYLOADS {
        cl.publish(p, "jobs/secret", payload, QoS::AtLeastOnce, 1);
    }
    assert!(got(&mut cl, bad).is_empty(), "the ACL withholds jobs/secret from bad");
    assert_eq!(got(&mut cl, good).len(), PAYLOADS.len(), "good got every one");
    // Topics both may read are still shared between them.
    for payload in PAYLOADS {
        cl.publish(p, "jobs/open", payload, QoS::AtLeastOnce, 1);
    }
    assert_eq!(got(&mut cl, bad).len() + got(&mut cl, good).len(), PAYLOADS.len());
}

/// Offline members with a persistent session are skipped while an online member exists; once
/// none is online, they get the message queued (§4.8.2: a message to a member that is not
/// connected is kept for it).
#[test]
fn shared_offline_persistent_members_are_skipped_while_others_are_online() {
    let mut cl = Cluster::new(2);
    let away = member_with(&mut cl, 0, "away", None, "$share/g/t", true);
    let here = member(&mut cl, 1, "here", None, "$share/g/t");
    drop_unsettled(&mut cl, away);
    cl.settle();
    let p = cl.connect(0, V4, "p", true);
    for payload in PAYLOADS {
        cl.publish(p, "t", payload, QoS::AtLeastOnce, 1);
    }
    assert_eq!(got(&mut cl, here).len(), PAYLOADS.len(), "online member got all");
    // The online member leaves for good: now the offline one gets the messages, queued.
    let now = cl.now;
    cl.shards[1].handle_closed(here.conn, now);
    cl.shards[1].release(here.conn, now);
    cl.settle();
    cl.publish(p, "t", b"queued", QoS::AtLeastOnce, 1);
    let back = cl.open(1, V4);
    cl.send(back, connect_packet(V4, "away", false));
    let payloads: Vec<Vec<u8>> =
        publishes(&cl.recv(back)).iter().map(|p| p.payload.to_vec()).collect();
    assert_eq!(payloads, vec![b"queued".to_vec()]);
}

/// Runs `n` publishes from `p` on topics from `topic(i)`; returns who got each, in order.
fn spread(
    cl: &mut Cluster,
    p: Client,
    members: &[Client],
    n: usize,
    topic: impl Fn(usize) -> String,
) -> Vec<usize> {
    let mut who = Vec::new();
    for i in 0..n {
        // QoS 0: no acknowledgements to send, no in-flight window to fill.
        cl.publish(p, &topic(i), PAYLOADS[i % PAYLOADS.len()], QoS::AtMostOnce, 0);
        let receivers: Vec<usize> =
            (0..members.len()).filter(|&m| !got(cl, members[m]).is_empty()).collect();
        assert_eq!(receivers.len(), 1, "message {i} went to exactly one member ([MQTT-4.8.2-4])");
        who.push(receivers[0]);
    }
    who
}

fn strategy_cluster(strategy: SharedStrategy) -> (Cluster, Vec<Client>, Client) {
    let mut cl = cluster_with(2, |c| c.shared.strategy = strategy);
    let members = vec![
        member(&mut cl, 0, "m0", None, "$share/g/s/#"),
        member(&mut cl, 1, "m1", None, "$share/g/s/#"),
        member(&mut cl, 1, "m2", None, "$share/g/s/#"),
    ];
    let p = cl.connect(0, V4, "pub-a", true);
    (cl, members, p)
}

/// `round_robin` (the default): each member in turn.
#[test]
fn shared_strategy_round_robin() {
    let (mut cl, m, p) = strategy_cluster(SharedStrategy::RoundRobin);
    assert_eq!(spread(&mut cl, p, &m, 6, |_| "s/x".into()), [0, 1, 2, 0, 1, 2]);
}

/// `random`: every member gets some, not in a fixed turn.
#[test]
fn shared_strategy_random() {
    let (mut cl, m, p) = strategy_cluster(SharedStrategy::Random);
    let who = spread(&mut cl, p, &m, 60, |_| "s/x".into());
    for i in 0..3 {
        assert!(who.contains(&i), "member {i} never drawn: {who:?}");
    }
    let turns: Vec<usize> = (0..60).map(|i| who[0].wrapping_add(i) % 3).collect();
    assert_ne!(who, turns, "random must not be round robin");
}

/// `sticky`: one member while it is online, another after it leaves.
#[test]
fn shared_strategy_sticky() {
    let (mut cl, m, p) = strategy_cluster(SharedStrategy::Sticky);
    let who = spread(&mut cl, p, &m, 6, |_| "s/x".into());
    assert!(who.iter().all(|&w| w == who[0]), "{who:?}");
    let first = m[who[0]];
    let now = cl.now;
    cl.shards[first.shard].handle_closed(first.conn, now);
    cl.shards[first.shard].release(first.conn, now);
    cl.settle();
    let rest: Vec<Client> =
        m.iter().copied().filter(|c| c.conn != first.conn || c.shard != first.shard).collect();
    let who = spread(&mut cl, p, &rest, 6, |_| "s/x".into());
    assert!(who.iter().all(|&w| w == who[0]), "sticks to the new member: {who:?}");
}

/// `hash_topic`: one topic always goes to one member; different topics spread.
#[test]
fn shared_strategy_hash_topic() {
    let (mut cl, m, p) = strategy_cluster(SharedStrategy::HashTopic);
    let topics = |i: usize| format!("s/{}", i % 12);
    let who = spread(&mut cl, p, &m, 36, topics);
    for i in 0..12 {
        assert_eq!(who[i], who[i + 12], "topic s/{i} moved");
        assert_eq!(who[i], who[i + 24], "topic s/{i} moved");
    }
    let mut used = who.clone();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() > 1, "12 topics all on one member: {who:?}");
}

/// `hash_client_id`: one publisher's messages go to one member, whatever the topic, also when
/// it publishes from another shard; other publishers spread.
#[test]
fn shared_strategy_hash_client_id() {
    let (mut cl, m, _) = strategy_cluster(SharedStrategy::HashClientId);
    let mut firsts = Vec::new();
    for i in 0..8 {
        let p = cl.connect(i % 2, V4, &format!("publisher-{i}"), true);
        let who = spread(&mut cl, p, &m, 4, |k| format!("s/{k}"));
        assert!(who.iter().all(|&w| w == who[0]), "publisher-{i}: {who:?}");
        firsts.push(who[0]);
    }
    firsts.sort_unstable();
    firsts.dedup();
    assert!(firsts.len() > 1, "8 publishers all on one member");
}

/// The strategy is per broker and can be overridden per group name (`[shared_subscriptions]
/// groups`): here `pinned` is sticky while the default stays round robin.
#[test]
fn shared_strategy_overridden_per_group() {
    let mut cl = cluster_with(2, |c| {
        c.shared.groups.insert("pinned".into(), SharedStrategy::Sticky);
    });
    let rr = [
        member(&mut cl, 0, "a0", None, "$share/rr/x"),
        member(&mut cl, 1, "a1", None, "$share/rr/x"),
    ];
    let pinned = [
        member(&mut cl, 0, "b0", None, "$share/pinned/y"),
        member(&mut cl, 1, "b1", None, "$share/pinned/y"),
    ];
    let p = cl.connect(0, V4, "p", true);
    assert_eq!(spread(&mut cl, p, &rr, 4, |_| "x".into()), [0, 1, 0, 1]);
    let who = spread(&mut cl, p, &pinned, 4, |_| "y".into());
    assert!(who.iter().all(|&w| w == who[0]), "{who:?}");
}

/// MQTT 3.1 has no failure return code in SUBACK (the codec refuses to encode 0x80 for it):
/// a refused subscription closes a 3.1 connection instead of lying with a grant.
#[test]
fn refused_subscription_closes_an_mqtt_3_1_connection() {
    let mut cl = cluster_with(1, |c| c.topic_levels_max = 2);
    let c = cl.connect(0, ProtocolVersion::V31, "old", true);
    let s = Subscribe {
        packet_id: pid(1),
        filters: vec![(
            crate::codec::TopicFilter::new("a/b/c/d", true).expect("valid filter"),
            SubscriptionOptions::default(),
        )],
        properties: Properties::new(),
    };
    cl.send(c, Packet::Subscribe(s));
    assert!(cl.recv(c).is_empty(), "no SUBACK");
    assert!(cl.shards[0].status(c.conn).closing);
}

/// [MQTT-4.6.0-1] / [MQTT-4.4.0-1]: on resume, unacknowledged messages are resent in the order
/// they were first sent, also when their packet ids wrapped past 65535 (id order would put the
/// newest first), and also after the session moved to another shard.
#[test]
fn resend_after_packet_id_wrap_keeps_publication_order() {
    let mut cl = Cluster::new(2);
    let sub = member_with(&mut cl, 0, "dev", None, "w", true);
    let slot = cl.shards[0].by_client["dev"];
    let s = cl.shards[0].slot_mut(slot).expect("session");
    s.session.set_next_packet_id(u16::MAX - 1);
    let p = cl.connect(1, V4, "p", true);
    for payload in &PAYLOADS[..4] {
        cl.publish(p, "w", payload, QoS::AtLeastOnce, 1);
    }
    let first: Vec<u16> =
        publishes(&cl.recv(sub)).iter().map(|p| p.packet_id.expect("QoS 1").get()).collect();
    assert_eq!(first, [u16::MAX - 1, u16::MAX, 1, 2], "ids wrapped");
    drop_unsettled(&mut cl, sub);
    cl.settle();
    let back = cl.open(1, V4);
    cl.send(back, connect_packet(V4, "dev", false));
    let resent: Vec<(Vec<u8>, bool)> =
        publishes(&cl.recv(back)).iter().map(|p| (p.payload.to_vec(), p.dup)).collect();
    let expected: Vec<(Vec<u8>, bool)> = PAYLOADS[..4].iter().map(|p| (p.to_vec(), true)).collect();
    assert_eq!(resent, expected);
}
