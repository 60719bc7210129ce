//! Hostile clients against a running broker (issue 9): each test sends what an attacker would
//! and then checks that the broker still serves an honest client on the same shard.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{start_custom, start_with, RawClient};
use tern::codec::{
    self, Connect, Packet, Properties, Property, ProtocolVersion, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use tern::enhanced_auth::{ScramCredential, ScramSha256, SCRAM_SHA_256};

const V4: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// An honest client on `addr` still gets CONNACK, SUBACK and its own message back.
fn still_serves(addr: std::net::SocketAddr, id: &str) {
    let (mut c, _) = RawClient::mqtt_connect(addr, V4, id, true);
    c.subscribe("alive", QoS::AtLeastOnce);
    c.publish("alive", b"yes", QoS::AtMostOnce, 0, false);
    assert_eq!(&c.recv_publish().payload[..], b"yes");
}

/// Issue 9, first abort: a v5 CONNECT with SCRAM-SHA-256 data `n,,€=x` sliced a string inside
/// a multi-byte character and panicked the shard (the whole process under `panic = "abort"`).
/// Now it is refused with CONNACK 0x87 and the shard goes on.
#[test]
fn scram_attribute_with_multibyte_name_is_refused_not_a_crash() {
    let cred = ScramCredential::derive(b"pw", b"fixed-test-salt!", 4096);
    let b = start_custom(
        1,
        |c| c.listeners[0].allow_anonymous = true,
        move |s| {
            let lookup = Arc::new(move |u: &str| (u == "meter").then(|| cred.clone()));
            s.mechanisms.push(Arc::new(ScramSha256::new(lookup)));
        },
    );
    for data in ["n,,€=x", "n,,n=€,r=€=", "n,,\u{7f}€"] {
        let mut c = RawClient::connect_tcp(b.addr, V5);
        let props: Properties = vec![
            Property::AuthenticationMethod(SCRAM_SHA_256.into()),
            Property::AuthenticationData(data.as_bytes().to_vec().into()),
        ]
        .into();
        c.send(&Packet::Connect(Box::new(Connect {
            version: V5,
            clean_start: true,
            keep_alive_secs: 30,
            client_id: "attacker".into(),
            will: None,
            username: None,
            password: None,
            properties: props,
        })));
        match c.recv() {
            // §4.12: a failed authentication ends with CONNACK 0x87 (or 0x18 to go on, for
            // the one input above that is well formed).
            Packet::ConnAck(a) => assert_eq!(a.reason, ReasonCode::NotAuthorized, "{data}"),
            Packet::Auth(a) => assert_eq!(a.reason, ReasonCode::ContinueAuthentication, "{data}"),
            other => panic!("{data}: expected CONNACK 0x87, got {other:?}"),
        }
    }
    still_serves(b.addr, "honest");
}

/// Issue 9, second abort: 3 000 eight-byte SUBSCRIBEs written in one go recursed once per
/// packet on the shard thread and overflowed its stack. Every one is answered, in order.
#[test]
fn pipelined_subscribes_are_answered_without_overflowing_the_shard_stack() {
    let b = start_with(1, |_| {});
    let mut c = RawClient::connect_tcp(b.addr, V4);
    let mut buf = BytesMut::new();
    codec::encode(&common::connect(V4, "piper", true, 30), V4, &mut buf).expect("encode");
    const N: u16 = 3_000;
    for i in 1..=N {
        let s = Subscribe {
            packet_id: common::pid(i),
            filters: vec![(
                tern::codec::TopicFilter::new("p", true).expect("valid filter"),
                SubscriptionOptions::default(),
            )],
            properties: Properties::new(),
        };
        codec::encode(&Packet::Subscribe(s), V4, &mut buf).expect("encode");
    }
    c.send_raw(&buf);
    assert!(matches!(c.recv(), Packet::ConnAck(_)));
    for i in 1..=N {
        match c.recv_timeout(Duration::from_secs(10)) {
            Some(Packet::SubAck(a)) => assert_eq!(a.packet_id.get(), i),
            other => panic!("SUBACK {i} expected, got {other:?}"),
        }
    }
    still_serves(b.addr, "honest");
}

/// Issue 9, connections that never die: a subscriber that stops reading parked its connection
/// task in `write_all` forever. Now a peer that accepts no byte for `write_timeout_secs` is
/// closed and its will published (it did not DISCONNECT, [MQTT-3.1.2-8]).
#[test]
fn subscriber_that_stops_reading_is_closed_by_the_write_deadline() {
    let b = start_with(1, |c| c.limits.write_timeout_secs = 1);
    let (mut watcher, _) = RawClient::mqtt_connect(b.addr, V4, "watcher", true);
    watcher.subscribe("will/#", QoS::AtMostOnce);
    let mut stalled = RawClient::connect_tcp(b.addr, V4);
    let mut connect = common::connect(V4, "stalled", true, 600);
    if let Packet::Connect(c) = &mut connect {
        c.will = Some(codec::Will {
            topic: tern::codec::TopicName::new("will/stalled").expect("valid topic"),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::new(),
        });
    }
    stalled.send(&connect);
    assert!(matches!(stalled.recv(), Packet::ConnAck(_)));
    stalled.subscribe("flood", QoS::AtMostOnce);
    // From here `stalled` reads nothing. Fill the kernel buffers on both sides (bounded:
    // 64 MiB at most), checking for the will between bursts.
    let (mut publisher, _) = RawClient::mqtt_connect(b.addr, V4, "flooder", true);
    let payload = vec![0u8; 1024];
    let mut burst = BytesMut::new();
    for _ in 0..1024 {
        codec::encode(
            &common::publish("flood", &payload, QoS::AtMostOnce, 0, false),
            V4,
            &mut burst,
        )
        .expect("encode");
    }
    let start = std::time::Instant::now();
    let mut will = None;
    for _ in 0..64 {
        publisher.send_raw(&burst);
        if let Some(Packet::Publish(p)) = watcher.recv_timeout(Duration::from_millis(100)) {
            will = Some(p);
            break;
        }
    }
    let will = will.or_else(|| match watcher.recv_timeout(Duration::from_secs(10)) {
        Some(Packet::Publish(p)) => Some(p),
        _ => None,
    });
    let will = will.expect("the stalled subscriber's will is published");
    assert_eq!(will.topic.as_deref(), Some("will/stalled"));
    assert!(start.elapsed() < Duration::from_secs(15));
    assert!(stalled.closed_within(Duration::from_secs(5)), "its socket is closed");
    still_serves(b.addr, "honest");
}

/// Issue 9: one ~240 KB SUBSCRIBE repeating `r/#` over 5 000 retained messages re-broadcast
/// the filter and rescanned the store once per repeat, and the broker stopped answering. Now
/// a packet with more filters than `subscriptions_per_client_max` is refused whole (v3: 0x80
/// per filter), repeats within the limit count once (each retained message is sent once), and
/// other clients are answered throughout.
#[test]
fn repeated_filter_subscribe_over_retained_messages_keeps_the_broker_answering() {
    let b = start_with(2, |_| {});
    let (mut filler, _) = RawClient::mqtt_connect(b.addr, V4, "filler", true);
    let mut buf = BytesMut::new();
    for i in 0..5000 {
        let p = common::publish(&format!("r/{i}"), b"0123456789abcdef", QoS::AtMostOnce, 0, true);
        codec::encode(&p, V4, &mut buf).expect("encode");
    }
    filler.send_raw(&buf);
    filler.send(&Packet::PingReq);
    assert!(matches!(filler.recv_timeout(Duration::from_secs(10)), Some(Packet::PingResp)));

    let subscribe = |n: usize| {
        Packet::Subscribe(Subscribe {
            packet_id: common::pid(1),
            filters: vec![
                (
                    tern::codec::TopicFilter::new("r/#", true).expect("valid filter"),
                    SubscriptionOptions::default()
                );
                n
            ],
            properties: Properties::new(),
        })
    };
    let (mut attacker, _) = RawClient::mqtt_connect(b.addr, V4, "attacker", true);
    attacker.send(&subscribe(40_000));
    let started = std::time::Instant::now();
    still_serves(b.addr, "honest");
    assert!(started.elapsed() < Duration::from_secs(3), "others answered meanwhile");
    match attacker.recv_timeout(Duration::from_secs(5)) {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.reasons.len(), 40_000);
            assert!(a.reasons.iter().all(|r| r.is_error()), "refused whole");
        }
        other => panic!("SUBACK expected, got {other:?}"),
    }
    // Within the limit (256 by default): 200 repeats, each retained message once.
    let (mut sub, _) = RawClient::mqtt_connect(b.addr, V4, "repeater", true);
    sub.send(&subscribe(200));
    let mut retained = 0;
    while let Some(p) = sub.recv_timeout(Duration::from_secs(2)) {
        match p {
            Packet::SubAck(a) => assert_eq!(a.reasons.len(), 200),
            Packet::Publish(p) => {
                assert!(p.retain);
                retained += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(retained, 5000, "each retained message once, not once per repeat");
}

/// What one connection of a CONNECT burst saw before the broker settled.
#[derive(Debug, Default)]
struct BurstOutcome {
    connack: Option<ReasonCode>,
    disconnect: Option<ReasonCode>,
    closed: bool,
}

/// Reads a connection of the burst until its CONNECT is answered (CONNACK or close, within
/// 10 s), then what follows until it is closed or quiet for `quiet`.
fn burst_outcome(c: &mut RawClient, quiet: Duration) -> BurstOutcome {
    let mut out = BurstOutcome::default();
    // Bounded: each packet is one of a handful the broker sends before it goes quiet.
    for _ in 0..16 {
        let wait = if out.connack.is_none() { Duration::from_secs(10) } else { quiet };
        match c.recv_timeout(wait) {
            Some(Packet::ConnAck(a)) => {
                assert!(out.connack.is_none(), "two CONNACKs on one connection");
                out.connack = Some(a.reason);
            }
            Some(Packet::Disconnect(d)) => out.disconnect = Some(d.reason),
            Some(other) => panic!("unexpected packet in a CONNECT burst: {other:?}"),
            None => break,
        }
    }
    out.closed = c.closed_within(Duration::from_millis(100));
    out
}

/// Issue 9, the takeover burst: ten CONNECTs with one client id, sent over both shards without
/// waiting for CONNACK, left 2 to 6 of them connected. The server disconnects the existing
/// client for each new one ([MQTT-3.1.4-2], v5 with DISCONNECT 0x8E [MQTT-3.1.4-3]): once the
/// broker settles exactly one connection is alive, and it works.
#[test]
fn ten_concurrent_connects_with_one_client_id_leave_exactly_one_alive() {
    let b = common::start();
    for version in [V4, V5] {
        for round in 0..3 {
            let id = format!("burst-{}-{round}", if version.is_v5() { 5 } else { 4 });
            let mut conns: Vec<RawClient> = (0..10)
                .map(|i| RawClient::connect_tcp(b.shard_addrs[i % b.shard_addrs.len()], version))
                .collect();
            for (i, c) in conns.iter_mut().enumerate() {
                c.send(&common::connect(version, &id, i % 3 == 0, 30));
            }
            // Every CONNECT is answered; once the last one is, the closes of the others were
            // written before it (a takeover closes the old connection first), so a short quiet
            // time after the answer suffices.
            let mut outcomes: Vec<BurstOutcome> =
                conns.iter_mut().map(|c| burst_outcome(c, Duration::from_millis(300))).collect();
            for (c, o) in conns.iter_mut().zip(&mut outcomes) {
                if !o.closed {
                    o.closed = c.closed_within(Duration::from_millis(200));
                }
            }
            let alive: Vec<usize> = (0..conns.len())
                .filter(|&i| {
                    outcomes[i].connack == Some(ReasonCode::Success) && !outcomes[i].closed
                })
                .collect();
            assert_eq!(alive.len(), 1, "{version:?} round {round}: {outcomes:#?}");
            for (i, o) in outcomes.iter().enumerate().filter(|(i, _)| *i != alive[0]) {
                assert!(o.closed, "{version:?}: connection {i} neither alive nor closed: {o:?}");
                if version.is_v5() && o.connack == Some(ReasonCode::Success) {
                    // A connection that was connected is told why it goes ([MQTT-3.1.4-3]).
                    assert_eq!(o.disconnect, Some(ReasonCode::SessionTakenOver), "{i}: {o:?}");
                }
            }
            let live = &mut conns[alive[0]];
            live.send(&Packet::PingReq);
            assert!(matches!(live.recv(), Packet::PingResp), "the survivor answers PINGREQ");
            live.subscribe(&format!("{id}/t"), QoS::AtLeastOnce);
            live.publish(&format!("{id}/t"), b"still here", QoS::AtMostOnce, 0, false);
            assert_eq!(&live.recv_publish().payload[..], b"still here");
        }
    }
    still_serves(b.addr, "honest");
}

/// Issue 9 (acknowledged means kept, [MQTT-3.1.2-5], [MQTT-4.4.0-1]): a persistent subscriber
/// that keeps reconnecting, alternately on each shard and with its previous connection still
/// open (the new CONNECT takes it over, [MQTT-3.1.4-2]), while another client publishes at
/// QoS 1, receives every message whose PUBACK the publisher got. Before the `handover`
/// protocol a message routed to the old shard while the session moved matched nobody.
#[test]
fn persistent_subscriber_moving_between_shards_loses_no_acknowledged_message() {
    const MESSAGES: u32 = 3_000;
    let b = start_with(2, |_| {});
    let addrs = b.shard_addrs.clone();
    let (mut sub, _) = RawClient::mqtt_connect(addrs[0], V4, "mover", false);
    sub.subscribe("move/#", QoS::AtLeastOnce);
    let publisher = std::thread::spawn(move || {
        let (mut p, _) = RawClient::mqtt_connect(addrs[1], V4, "mover-pub", true);
        let mut acked = Vec::new();
        for seq in 0..MESSAGES {
            let id = (seq % 60_000 + 1) as u16;
            p.publish("move/x", &seq.to_be_bytes(), QoS::AtLeastOnce, id, false);
            match p.recv() {
                Packet::PubAck(a) if a.packet_id.get() == id && !a.reason.is_error() => {
                    acked.push(seq)
                }
                other => panic!("seq {seq}: expected PUBACK {id}, got {other:?}"),
            }
        }
        acked
    });
    let mut received = HashSet::new();
    let mut moves = 0;
    while !publisher.is_finished() && moves < 200 {
        // Read for a while (a few messages), then move on.
        read_until(&mut sub, Instant::now() + Duration::from_millis(15), &mut received);
        // The next connection takes the session over while this one is still open.
        let shard = b.shard_addrs[(moves + 1) % 2];
        let (next, present) = RawClient::mqtt_connect(shard, V4, "mover", false);
        assert!(present, "move {moves}: the session is resumed ([MQTT-3.2.2-2])");
        drop(std::mem::replace(&mut sub, next));
        moves += 1;
    }
    let acked = publisher.join().expect("publisher ran");
    // Then until quiet: what the session still holds arrives now.
    while read_until(&mut sub, Instant::now() + Duration::from_secs(2), &mut received) > 0 {}
    let lost: Vec<u32> = acked.iter().copied().filter(|s| !received.contains(s)).collect();
    assert!(moves >= 5, "the subscriber moved while messages flowed ({moves} moves)");
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages lost over {moves} moves: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    still_serves(b.addr, "honest-mover");
}

/// Reads and acknowledges PUBLISHes until `deadline`, recording their sequence numbers;
/// returns how many arrived.
fn read_until(c: &mut RawClient, deadline: Instant, received: &mut HashSet<u32>) -> usize {
    let mut n = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(p) = c.recv_timeout(left) else { break };
        if let Packet::Publish(m) = p {
            n += 1;
            let seq = u32::from_be_bytes(m.payload[..4].try_into().expect("4 bytes"));
            received.insert(seq);
            if let Some(id) = m.packet_id {
                c.send(&Packet::PubAck(codec::PubResp::success(id)));
            }
        }
    }
    n
}
