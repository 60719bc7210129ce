//! Size budgets of the records every connection and session holds (issue 11). At a million
//! connections each byte of these records is a megabyte, so a test fails when one grows past
//! its budget: a new field that every connection needs must be argued for here (raise the
//! budget in the same commit); one that few connections need belongs in [`ConnCold`] or behind a
//! `Box` in the session slot.

use std::mem::size_of;

use super::*;

/// The hot connection record, as stored in its slab entry (measured: 192; with parking it is
/// most of what an idle plain-TCP connection costs besides its session, issue 11).
const CONN_BUDGET: usize = 192;
/// A session slot as stored in its slab entry (the `Session` itself is most of it). Measured
/// 272 once the session's maps became one pointer each while empty (was 392).
const SESSION_SLOT_BUDGET: usize = 272;
/// The `Session` inside it (measured 152; three empty `HashMap`s were 144 of its 272).
const SESSION_BUDGET: usize = 152;

#[test]
fn hot_connection_record_within_budget() {
    let sizes = record_sizes();
    eprintln!(
        "Conn {} (cold part {} when used), session slot {}, Session {}, SlotFlow {}, Phase {}",
        sizes.conn,
        sizes.conn_cold,
        sizes.session_slot,
        size_of::<Session>(),
        size_of::<flow::SlotFlow>(),
        size_of::<Phase>(),
    );
    assert!(sizes.conn <= CONN_BUDGET, "Conn is {} bytes, budget {CONN_BUDGET}", sizes.conn);
    // The slab stores `Option<Conn>` without a separate tag.
    assert_eq!(size_of::<Option<Conn>>(), size_of::<Conn>());
}

#[test]
fn session_slot_within_budget() {
    let sizes = record_sizes();
    assert!(
        sizes.session_slot <= SESSION_SLOT_BUDGET,
        "session slot is {} bytes, budget {SESSION_SLOT_BUDGET}",
        sizes.session_slot
    );
    assert!(size_of::<Session>() <= SESSION_BUDGET, "Session is {}", size_of::<Session>());
    // Rare state stays boxed: a pending will is one pointer in the slot.
    assert_eq!(size_of::<Option<Box<(Will, Instant)>>>(), size_of::<usize>());
}

/// An idle connection holds no cold part, no receive buffer and no will: after CONNECT,
/// CONNACK and a PINGREQ/PINGRESP round, the connection is its hot record only.
#[test]
fn idle_connection_holds_no_cold_state() {
    let now = crate::test_clock::test_epoch();
    let mut shard = Shard::new(crate::ids::ShardId(0), ShardConfig::for_tests(1));
    let peer = "127.0.0.1:5000".parse().expect("literal address");
    let id = shard.accept(0, peer, now).expect("accepted");
    let connect = codec::Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive_secs: 30,
        client_id: "idle".into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    let mut bytes = BytesMut::new();
    codec::encode(&Packet::Connect(Box::new(connect)), ProtocolVersion::V5, &mut bytes)
        .expect("encodes");
    // A partial packet is kept until it completes, then the buffer is freed.
    shard.handle_read(id, &bytes[..5], now);
    assert!(shard.conn(id).is_some_and(|c| c.footprint().0 > 0), "partial CONNECT kept");
    shard.handle_read(id, &bytes[5..], now);
    assert!(!shard.take_tx(id, now).is_empty(), "CONNACK");
    shard.handle_read(id, &[0xC0, 0x00], now); // PINGREQ
    assert_eq!(&shard.take_tx(id, now)[..], &[0xD0, 0x00], "PINGRESP");
    // The driver hands its written buffer back (`swap_tx`): with nothing more to send, the
    // connection does not keep it.
    let mut written = BytesMut::with_capacity(64);
    shard.swap_tx(id, &mut written, now);
    assert!(written.is_empty());
    let c = shard.conn(id).expect("connected");
    let (rx, tx, cold) = c.footprint();
    assert_eq!(tx, 0, "no output buffer between packets");
    assert!(!cold, "no cold part on an idle connection");
    assert_eq!(rx, 0, "no receive buffer between packets");
    // The client id is stored once, in the session, and found through the slot.
    assert_eq!(shard.client_id(id), Some("idle"));
    let Some(slot) = c.active_slot() else { panic!("connected: {:?}", c.phase()) };
    let s = &shard.slot(slot).expect("session").session;
    // An idle session holds no table for subscriptions, messages in flight or QoS 2 ids.
    assert!(!s.subscriptions.is_allocated() && !s.inflight.is_allocated());
    assert!(!s.inbound_qos2.is_allocated());
    assert_eq!(s.queue.capacity(), 0);
    // One allocation for the client id: the client-id map and the registry (on this, the
    // only shard) key on the session's own.
    let (by_client, _) = shard.by_client.get_key_value("idle").expect("mapped");
    let (registry, _) = shard.registry.get_key_value("idle").expect("registered");
    assert!(std::rc::Rc::ptr_eq(by_client, &s.client_id));
    assert!(std::rc::Rc::ptr_eq(registry, &s.client_id));
    assert_eq!(std::rc::Rc::strong_count(&s.client_id), 3);
}

/// The cold part is allocated when something rare happens, and freed when it is over.
#[test]
fn cold_state_comes_and_goes() {
    let now = crate::test_clock::test_epoch();
    let mut shard = Shard::new(crate::ids::ShardId(0), ShardConfig::for_tests(1));
    let peer = "127.0.0.1:5000".parse().expect("literal address");
    let id = shard.accept(0, peer, now).expect("accepted");
    let will = Will {
        topic: crate::codec::TopicName::new("w").expect("valid topic"),
        payload: bytes::Bytes::from_static(b"x"),
        qos: codec::QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    };
    let memory = std::sync::Arc::clone(&shard.cfg.memory);
    let cost = super::will_cost(&will);
    shard.conn_mut(id).expect("accepted").set_will(Some(will), cost, &memory);
    assert!(shard.conn(id).is_some_and(|c| c.footprint().2), "a will lives in the cold part");
    assert!(shard.conn_mut(id).and_then(|c| c.take_will(&memory)).is_some());
    assert!(shard.conn(id).is_some_and(|c| !c.footprint().2), "freed once the will is gone");
    let used = shard.cfg.memory.used();
    assert_eq!(used, 0, "the will's charge is released with it");
}
