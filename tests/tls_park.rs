//! Parked TLS connections (issue 11): an idle TLS connection gives up its task and its buffers
//! and waits in the shard's epoll set with only rustls' state, then resumes and exchanges
//! packets as before, in both directions, on TLS 1.3 and 1.2 and with a client certificate.
//! A connection holding a partial TLS record does not park. WebSocket connections (`ws`, `wss`)
//! park the same way between frames.

mod common;
use common::interop as support;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{start_with, RawClient, TestBroker};
use support::{Pki, TlsClient, WsClient, OP_BINARY, OP_CONT, OP_PING, OP_PONG};
use tern::codec::{Packet, ProtocolVersion, QoS};
use tern::config::Transport;

const V4: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// One shard; listener 0 TLS (client certificates optional, verified when presented),
/// listener 1 plain TCP.
fn start(pki: &Pki, park_idle_ms: u32) -> TestBroker {
    start_with(1, |c| {
        let l = &mut c.listeners[0];
        l.transport = Transport::Tls;
        l.certfile = Some(pki.server_cert.clone());
        l.keyfile = Some(pki.server_key.clone());
        l.cafile = Some(pki.ca_file.clone());
        c.listeners.push(tern::config::ListenerConfig {
            bind: "127.0.0.1:0".parse().expect("literal"),
            ..Default::default()
        });
        c.limits.park_idle_ms = park_idle_ms;
    })
}

/// Waits (bounded) until the broker reports `n` parked connections.
fn wait_parked(b: &TestBroker, n: u64) {
    // The gauge is published with the shard's 1 s tick.
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

fn tcp_addr(b: &TestBroker) -> std::net::SocketAddr {
    b.broker.as_ref().expect("running").local_addrs[1]
}

/// A parked TLS subscriber receives what is published to it (the shard's wake resumes it), a
/// parked TLS publisher's PUBLISH (its socket's readiness resumes it) reaches others and is
/// acknowledged [MQTT-3.3.4-1], and both park again; TLS 1.3 and 1.2, one with a client
/// certificate.
#[test]
fn parked_tls_connections_resume_and_exchange_packets() {
    let pki = Pki::new("tls-park");
    let b = start(&pki, 10);
    let tls13 = TlsClient::default().connect(b.addr, &pki.ca_file).expect("TLS 1.3");
    assert_eq!(tls13.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let mut sub = RawClient::new(tls13, V5);
    sub.connect_ok("park-sub");
    sub.subscribe("park/#", QoS::AtLeastOnce);
    let with_cert =
        TlsClient { tls12_only: true, client_cert: Some(pki.client_files("park-device")) };
    let tls12 = with_cert.connect(b.addr, &pki.ca_file).expect("TLS 1.2 with a certificate");
    assert_eq!(tls12.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let mut publ = RawClient::new(tls12, V4);
    publ.connect_ok("park-pub");
    wait_parked(&b, 2);

    for round in 0..3u8 {
        // From plain TCP to the parked TLS subscriber.
        let mut tcp = RawClient::connect_tcp(tcp_addr(&b), V4);
        tcp.connect_ok(&format!("park-tcp-{round}"));
        tcp.publish("park/tcp", &[round; 3], QoS::AtMostOnce, 0, false);
        let p = sub.recv_publish();
        assert_eq!((p.topic.as_deref(), &p.payload[..]), (Some("park/tcp"), &[round; 3][..]));
        drop(tcp);
        wait_parked(&b, 2);

        // From the parked TLS 1.2 publisher: QoS 1, acknowledged, delivered; a payload that
        // spans several TLS records.
        let payload = vec![round; 40_000];
        publ.publish("park/tls", &payload, QoS::AtLeastOnce, 7, false);
        match publ.recv() {
            Packet::PubAck(a) => assert_eq!(a.packet_id.get(), 7),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        let p = sub.recv_publish();
        assert_eq!(p.payload.len(), payload.len());
        assert!(p.payload.iter().all(|&x| x == round));
        wait_parked(&b, 2);
    }
}

/// A connection whose socket holds only part of a TLS record keeps its task (the record's
/// head would be lost with the buffer): it does not park until the record is whole, and the
/// record then decrypts to the PUBLISH it carries.
#[test]
fn a_tls_connection_with_a_partial_record_does_not_park() {
    let pki = Pki::new("tls-partial");
    let b = start(&pki, 10);
    let tls = TlsClient::default().connect(b.addr, &pki.ca_file).expect("TLS 1.3");
    let mut sub = RawClient::new(tls, V5);
    sub.connect_ok("partial-sub");
    sub.subscribe("partial/#", QoS::AtMostOnce);
    let tls = TlsClient::default().connect(b.addr, &pki.ca_file).expect("TLS 1.3");
    let mut publ = RawClient::new(tls, V4);
    publ.connect_ok("partial-pub");
    wait_parked(&b, 2);

    // Encrypt a PUBLISH, send all but its last 10 bytes.
    let packet = common::client::publish("partial/a", b"split record", QoS::AtMostOnce, 0, false);
    let bytes = common::client::encode(&packet, V4);
    publ.stream.conn.writer().write_all(&bytes).expect("plaintext");
    let mut records = Vec::new();
    while publ.stream.conn.wants_write() {
        publ.stream.conn.write_tls(&mut records).expect("records");
    }
    let cut = records.len() - 10;
    publ.stream.sock.write_all(&records[..cut]).expect("head");
    // The head resumes the connection; it must not park again while the tail is missing.
    wait_parked(&b, 1);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(b.stats.total().connections_parked, 1, "parked with a partial record");

    publ.stream.sock.write_all(&records[cut..]).expect("tail");
    let p = sub.recv_publish();
    assert_eq!(&p.payload[..], b"split record");
    wait_parked(&b, 2);
}

/// Keep alive closes a parked TLS connection that goes silent [MQTT-3.1.2-24]: the shard's
/// close resumes it with its rustls state, and the client gets a close_notify (a clean end of
/// the TLS stream, not a truncation); the connection is released.
#[test]
fn keep_alive_closes_a_parked_tls_connection_with_close_notify() {
    use std::io::Read;
    let pki = Pki::new("tls-park-keepalive");
    let b = start(&pki, 1000);
    let tls = TlsClient::default().connect(b.addr, &pki.ca_file).expect("TLS 1.3");
    let mut c = RawClient::new(tls, V4);
    c.send(&common::connect(V4, "parked-tls-silent", true, 2));
    assert!(matches!(c.recv(), Packet::ConnAck(_)));
    wait_parked(&b, 1);
    // 1.5 x keep alive = 3 s after CONNECT, checked on the shard's 1 s tick.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut buf = [0u8; 64];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("unexpected {n} bytes from the broker"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert!(Instant::now() < deadline, "not closed by keep alive");
            }
            Err(e) => panic!("not a clean TLS close: {e}"),
        }
    }
    wait_parked(&b, 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.stats.total().connections_current != 0 {
        assert!(Instant::now() < deadline, "connection released");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// WebSocket and secure WebSocket connections park between frames and resume: a parked `ws`
/// subscriber receives, a parked `wss` publisher's QoS 1 PUBLISH is acknowledged and delivered
/// [MQTT-3.3.4-1], a ping resumes a parked `wss` connection and gets its pong, and a connection
/// in the middle of a fragmented WebSocket message does not park until the message is whole.
#[test]
fn parked_ws_and_wss_connections_resume_between_frames() {
    let pki = Pki::new("ws-park");
    let b = start_with(1, |c| {
        let l = &mut c.listeners[0];
        l.transport = Transport::Wss;
        l.certfile = Some(pki.server_cert.clone());
        l.keyfile = Some(pki.server_key.clone());
        for transport in [Transport::Ws, Transport::Tcp] {
            c.listeners.push(tern::config::ListenerConfig {
                bind: "127.0.0.1:0".parse().expect("literal"),
                transport,
                ..Default::default()
            });
        }
        c.limits.park_idle_ms = 10;
    });
    let addrs = b.broker.as_ref().expect("running").local_addrs.clone();
    let mut sub = RawClient::new(WsClient::upgrade(support::tcp(addrs[1]), "/mqtt"), V5);
    sub.connect_ok("ws-park-sub");
    sub.subscribe("wspark/#", QoS::AtLeastOnce);
    let tls = TlsClient::default().connect(addrs[0], &pki.ca_file).expect("tls");
    let mut publ = RawClient::new(WsClient::upgrade(tls, "/mqtt"), V4);
    publ.connect_ok("wss-park-pub");
    wait_parked(&b, 2);

    let mut tcp = RawClient::connect_tcp(addrs[2], V4);
    tcp.connect_ok("ws-park-tcp");
    tcp.publish("wspark/tcp", b"to parked ws", QoS::AtMostOnce, 0, false);
    assert_eq!(&sub.recv_publish().payload[..], b"to parked ws");
    drop(tcp);
    wait_parked(&b, 2);

    publ.publish("wspark/wss", b"from parked wss", QoS::AtLeastOnce, 3, false);
    match publ.recv() {
        Packet::PubAck(a) => assert_eq!(a.packet_id.get(), 3),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(&sub.recv_publish().payload[..], b"from parked wss");
    wait_parked(&b, 2);

    publ.stream.send_frame(true, OP_PING, b"p");
    assert_eq!(publ.stream.next_control().map(|f| f.op), Some(OP_PONG));
    wait_parked(&b, 2);

    // The first fragment of a message: the publisher resumes and must not park again.
    let packet = common::client::publish("wspark/frag", b"fragmented", QoS::AtMostOnce, 0, false);
    let bytes = common::client::encode(&packet, V4);
    publ.stream.send_frame(false, OP_BINARY, &bytes[..4]);
    wait_parked(&b, 1);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(b.stats.total().connections_parked, 1, "parked inside a fragmented message");
    publ.stream.send_frame(true, OP_CONT, &bytes[4..]);
    assert_eq!(&sub.recv_publish().payload[..], b"fragmented");
    wait_parked(&b, 2);
}
