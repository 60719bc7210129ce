//! Connection storms (issue 11): `limits.connecting_max` bounds the connections of a shard
//! between accept and CONNACK; the next clients wait in the listen backlog, counted in
//! `accepts_deferred`, and are served once the earlier ones settle.

mod common;

use std::time::{Duration, Instant};

use common::{start_with, RawClient, TestBroker};
use tern::codec::{ProtocolVersion, ReasonCode};

const V311: ProtocolVersion = ProtocolVersion::V311;

/// Waits (bounded) until `f` holds for the broker's published counters (1 s tick).
fn wait_for(b: &TestBroker, what: &str, f: impl Fn(&tern::counters::Metrics) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let m = b.stats.total();
        if f(&m) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {m:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With `connecting_max = 2`, two silent connections fill the shard's room: a third is not
/// accepted (it waits in the backlog, `accepts_deferred` counts the wait) until one of the
/// first two sends its CONNECT and gets its CONNACK [MQTT-3.2.0-1]; then the third is served.
#[test]
fn connecting_max_defers_accepts_until_connack() {
    let b = start_with(1, |c| c.limits.connecting_max = 2);
    let mut first = RawClient::connect_tcp(b.addr, V311);
    let mut second = RawClient::connect_tcp(b.addr, V311);
    wait_for(&b, "two accepted", |m| m.connections_total == 2);
    // Complete at the TCP level only (the kernel's backlog): its CONNECT waits there too.
    let mut third = RawClient::connect_tcp(b.addr, V311);
    third.send(&common::connect(V311, "storm-3", true, 30));
    wait_for(&b, "accept deferred", |m| m.accepts_deferred >= 1);
    std::thread::sleep(Duration::from_millis(1_200));
    let m = b.stats.total();
    assert_eq!(m.connections_total, 2, "the third waits while two are connecting");
    assert!(third.recv_timeout(Duration::from_millis(100)).is_none(), "no CONNACK yet");
    // One CONNACK makes room: the third is accepted and its CONNECT answered.
    first.connect_ok("storm-1");
    assert_eq!(third.connack().reason, ReasonCode::Success, "the deferred client is served");
    second.connect_ok("storm-2");
    wait_for(&b, "all accepted", |m| m.connections_total == 3 && m.connects == 3);
}

/// After a storm the broker's side of every connection it closed first waits in TIME_WAIT on
/// the listening port for a minute. A broker restarted on that port must still start: the
/// start-up check that refuses a second broker on a port in use (a bind without
/// `SO_REUSEPORT`) took those leftovers for a listener (found by `scripts/storm-probe.sh`,
/// whose restart after 18 000 connections failed with "address already in use").
#[test]
fn a_restart_binds_over_connections_left_in_time_wait() {
    let b = start_with(1, |_| {});
    let addr = b.addr;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = RawClient::connect_tcp(addr, V311);
        c.connect_ok(&format!("tw-{i}"));
        // DISCONNECT: the broker closes its side first, so its socket goes to TIME_WAIT.
        c.send(&tern::codec::Packet::Disconnect(tern::codec::ReasonPacket::new(
            ReasonCode::Success,
        )));
        assert!(c.closed_within(Duration::from_secs(5)), "closed by the broker");
        clients.push(c);
    }
    drop(clients);
    drop(b);
    let mut config = tern::config::Config::default();
    config.broker.shards = Some(1);
    config.listeners[0].bind = addr;
    config.runtime.pin_cores = false;
    let running = tern::broker::start(&config).expect("starts over TIME_WAIT leftovers");
    let mut c = RawClient::connect_tcp(addr, V311);
    c.connect_ok("after-restart");
    // A second broker on the same port is still refused: a listener is there now.
    let e = tern::broker::start(&config).err().expect("a second broker is refused");
    assert!(matches!(e, tern::runtime::StartError::AddrInUse { .. }), "{e}");
    drop(c);
    running.broker.shutdown();
    running.broker.join();
}
