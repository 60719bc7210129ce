//! How the broker closes a connection: the client reads the DISCONNECT (or refusing CONNACK)
//! even when it is still sending, because the broker shuts down its write side and drains
//! input for a bounded time instead of closing a socket with unread data (a TCP reset).

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{pid, start_with, RawClient};
use tern::codec::{self, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn connect(id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive_secs: 30,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::new(),
    }))
}

/// `n` QoS 2 PUBLISH packets with ids from `first`, encoded back to back.
fn qos2_burst(first: u16, n: u16, payload: usize) -> BytesMut {
    let mut out = BytesMut::new();
    for i in 0..n {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: Some(tern::codec::TopicName::new("flood").expect("valid topic")),
            packet_id: Some(pid(first.wrapping_add(i).max(1))),
            properties: Properties::new(),
            payload: Bytes::from(vec![b'x'; payload]),
        });
        codec::encode(&p, V5, &mut out).expect("encode");
    }
    out
}

/// Between two bursts of a client that writes on without reading: after the first, blocks until
/// the broker's answer is waiting in the socket, unread (`peek`), so the later bursts are
/// written after the broker decided to close; then a pause before each, which is the behaviour
/// under test (a client still writing a while later, when a broker that closed without
/// draining would have reset the connection, as the kernel does; no harness clock has that).
fn client_keeps_writing(c: &RawClient, burst: u16) {
    if burst == 0 {
        let mut first = [0u8; 1];
        c.stream.set_read_timeout(Some(common::PATIENCE)).expect("timeout");
        assert_eq!(c.stream.peek(&mut first).expect("the broker answers"), 1);
    } else {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Paho's `test_flow_control2`: a client that exceeds our Receive Maximum and keeps sending
/// reads DISCONNECT 0x93 ([MQTT-3.3.4-9]; [MQTT-4.13.1-1]: the server sends the reason before
/// closing), not a connection reset. The writer sends far more than one read of the broker
/// takes, so input is still unread when the broker closes.
#[test]
fn disconnect_is_readable_while_the_client_keeps_sending() {
    let b = start_with(1, |c| c.limits.inflight_max = 4);
    for round in 0..3 {
        let mut c = RawClient::connect_tcp(b.addr, V5);
        c.send(&connect(&format!("flood-{round}")));
        assert!(matches!(c.recv(), Packet::ConnAck(a) if a.reason == ReasonCode::Success));
        // One thread, as Paho's client: it goes on writing after the broker has decided to
        // close, and reads only later. A broker that closes a socket it has not read to the
        // end answers the later data with a reset: the writes fail ("Broken pipe") and the
        // client never reads the DISCONNECT. Bounded: 4 bursts of ~16 KiB, the last three
        // written once the broker has decided (its DISCONNECT is waiting to be read).
        for burst in 0..4u16 {
            let bytes = qos2_burst(1 + burst * 16, 16, 1000);
            if let Err(e) = c.stream.write_all(&bytes) {
                panic!("round {round}, burst {burst}: write failed: {e} (connection reset)");
            }
            client_keeps_writing(&c, burst);
        }
        let mut reason = None;
        for _ in 0..1000 {
            match c.recv_timeout(Duration::from_secs(5)) {
                Some(Packet::Disconnect(d)) => {
                    reason = Some(d.reason);
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        assert_eq!(reason, Some(ReasonCode::ReceiveMaximumExceeded), "round {round}");
    }
}

/// The same for a refusing CONNACK ([MQTT-3.2.2-7] in 5.0: CONNACK with the reason, then
/// close): a client that pipelines packets behind its CONNECT still reads 0x85.
#[test]
fn refusing_connack_is_readable_while_the_client_keeps_sending() {
    let b = start_with(1, |c| c.limits.client_id_bytes_max = 8);
    let mut c = RawClient::connect_tcp(b.addr, V5);
    c.send(&connect("far-too-long-a-client-id"));
    for burst in 0..3u16 {
        let bytes = qos2_burst(1 + burst * 16, 16, 1000);
        if let Err(e) = c.stream.write_all(&bytes) {
            panic!("burst {burst}: write failed: {e} (connection reset)");
        }
        client_keeps_writing(&c, burst);
    }
    match c.recv_timeout(Duration::from_secs(5)) {
        Some(Packet::ConnAck(a)) => assert_eq!(a.reason, ReasonCode::ClientIdentifierNotValid),
        other => panic!("CONNACK 0x85 expected, got {other:?}"),
    }
    assert!(c.closed_within(Duration::from_secs(5)), "closed after the CONNACK");
}

/// The drain is bounded: a client that never stops sending after its DISCONNECT is cut off
/// after 1 MiB (or 2 s), and the cut is counted in `close_drains_cut`.
#[test]
fn close_drain_is_bounded_and_counted() {
    let b = start_with(1, |c| c.limits.inflight_max = 4);
    let mut c = RawClient::connect_tcp(b.addr, V5);
    c.send(&connect("endless"));
    assert!(matches!(c.recv(), Packet::ConnAck(a) if a.reason == ReasonCode::Success));
    let started = std::time::Instant::now();
    // Bounded: at most 64 MiB or 10 s; the broker must give up well before either.
    let mut cut = false;
    for burst in 0..4096u16 {
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        if c.stream.write_all(&qos2_burst(1 + burst.wrapping_mul(16), 16, 1000)).is_err() {
            cut = true;
            break;
        }
    }
    assert!(cut, "the broker kept reading for {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5), "cut after {:?}", started.elapsed());
    assert!(b.wait_stats(|m| m.close_drains_cut > 0), "close_drains_cut not counted");
}
