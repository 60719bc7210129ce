//! Parked connections (issue 11): an idle plain-TCP connection gives up its task and waits in
//! the shard's epoll set, and still behaves like any connection: it answers PINGREQ, receives
//! what it subscribed to, and is closed by keep alive. `connections_parked` shows the parking.

mod common;

use std::time::{Duration, Instant};

use common::{connect, start_with, RawClient, TestBroker};
use tern::codec::{Packet, ProtocolVersion, QoS};

const V311: ProtocolVersion = ProtocolVersion::V311;

/// Waits (bounded) until the broker reports `n` parked connections.
fn wait_parked(b: &TestBroker, n: u64) {
    // The gauge is published with the shard's 1 s tick; a resumed connection parks after `limits.park_idle_ms`.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let parked = b.stats.total().connections_parked;
        if parked == n {
            return;
        }
        assert!(Instant::now() < deadline, "{parked} parked, {n} expected");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A parked connection answers PINGREQ (its socket's readiness resumes it) and parks again
/// [MQTT-3.12.4-1].
#[test]
fn a_parked_connection_answers_pingreq_and_parks_again() {
    let b = start_with(1, |_| {});
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V311, "parked-ping", true);
    wait_parked(&b, 1);
    for _ in 0..2 {
        c.send(&Packet::PingReq);
        assert_eq!(c.recv(), Packet::PingResp);
        wait_parked(&b, 1);
    }
}

/// `limits.park_idle_ms` is how long a resumed connection keeps its task once idle: at one
/// hour, a connection resumed by its PINGREQ [MQTT-3.12.4-1] stays unparked (a new connection
/// still parks as soon as it is idle after CONNACK); at 10 ms it parks again at once.
#[test]
fn park_idle_ms_sets_when_a_resumed_connection_parks_again() {
    let b = start_with(1, |c| c.limits.park_idle_ms = 3_600_000);
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V311, "park-late", true);
    wait_parked(&b, 1);
    c.send(&Packet::PingReq);
    assert_eq!(c.recv(), Packet::PingResp);
    wait_parked(&b, 0);
    // Three of the shard's 1 s gauge ticks: a 1 s delay (the default) would have parked it.
    std::thread::sleep(Duration::from_millis(3_000));
    assert_eq!(b.stats.total().connections_parked, 0, "still serving after 3 s idle");
    drop(c);
    let b = start_with(1, |c| c.limits.park_idle_ms = 10);
    let (mut c, _) = RawClient::mqtt_connect(b.addr, V311, "park-soon", true);
    wait_parked(&b, 1);
    c.send(&Packet::PingReq);
    assert_eq!(c.recv(), Packet::PingResp);
    wait_parked(&b, 1);
}

/// A parked subscriber receives a matching publish (the shard's output resumes it)
/// [MQTT-3.3.5-1], and a parked publisher's PUBLISH is read and acknowledged [MQTT-4.3.2-2].
#[test]
fn a_parked_subscriber_receives_a_parked_publishers_message() {
    let b = start_with(1, |_| {});
    let (mut sub, _) = RawClient::mqtt_connect(b.addr, V311, "parked-sub", true);
    sub.subscribe("park/t", QoS::AtLeastOnce);
    let (mut publ, _) = RawClient::mqtt_connect(b.addr, V311, "parked-pub", true);
    wait_parked(&b, 2);
    publ.publish("park/t", b"woken", QoS::AtLeastOnce, 7, false);
    assert!(matches!(publ.recv(), Packet::PubAck(_)), "PUBACK to the parked publisher");
    let p = sub.recv_publish();
    assert_eq!(&p.payload[..], b"woken");
    wait_parked(&b, 2);
}

/// Keep alive still closes a parked connection that goes silent [MQTT-3.1.2-24].
#[test]
fn keep_alive_closes_a_parked_connection() {
    let b = start_with(1, |_| {});
    let mut c = RawClient::connect_tcp(b.addr, V311);
    c.send(&connect(V311, "parked-silent", true, 2));
    assert!(matches!(c.recv(), Packet::ConnAck(_)));
    wait_parked(&b, 1);
    // 1.5 x keep alive = 3 s after CONNECT, checked on the shard's 1 s tick.
    assert!(c.closed_within(Duration::from_secs(6)), "closed by keep alive");
    wait_parked(&b, 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.stats.total().connections_current != 0 {
        assert!(Instant::now() < deadline, "connection released");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client that closes its parked connection is noticed (the socket's hang-up resumes the
/// connection, which reads the end of stream and releases it).
#[test]
fn a_parked_connection_closed_by_the_client_is_released() {
    let b = start_with(1, |_| {});
    let (c, _) = RawClient::mqtt_connect(b.addr, V311, "parked-gone", true);
    wait_parked(&b, 1);
    drop(c);
    wait_parked(&b, 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.stats.total().connections_current != 0 {
        assert!(Instant::now() < deadline, "connection released");
        std::thread::sleep(Duration::from_millis(50));
    }
}
