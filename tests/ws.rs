//! WebSocket and secure WebSocket listeners end to end against a real two-shard broker: a raw
//! WebSocket client that splits MQTT packets across frames and packs several into one, ping and
//! pong, close frames both ways, refused handshakes and frames, and Python paho-mqtt with
//! `transport="websockets"` (plain and TLS).

mod common;
use common::interop as support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{start_with, RawClient, TestBroker};
use support::{
    client_frame, read_http_head, run_bounded, upgrade_request, Pki, TlsClient, WsClient,
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
use tern::codec::{Packet, ProtocolVersion, QoS};
use tern::config::{Config, ListenerConfig, Transport};

const V4: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Listener 0: WebSocket on `/mqtt`; listener 1: plain TCP.
fn start_ws(edit: impl FnOnce(&mut Config)) -> TestBroker {
    start_with(2, |c| {
        c.listeners[0].transport = Transport::Ws;
        c.listeners.push(ListenerConfig {
            bind: "127.0.0.1:0".parse().expect("literal"),
            ..Default::default()
        });
        edit(c);
    })
}

fn addr(b: &TestBroker, listener: usize) -> SocketAddr {
    b.broker.as_ref().expect("running").local_addrs[listener]
}

fn encode(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    common::encode(p, v)
}

#[test]
fn mqtt_packets_split_across_frames_and_packed_into_one() {
    let b = start_ws(|_| {});
    let mut ws = WsClient::upgrade(support::tcp(b.addr), "/mqtt");
    // CONNECT split over three frames of one fragmented message (binary + 2 continuations).
    let connect = encode(&common::connect_packet(V4, "ws-split"), V4);
    ws.send_frame(false, OP_BINARY, &connect[..3]);
    ws.send_frame(false, OP_CONT, &connect[3..10]);
    ws.send_frame(true, OP_CONT, &connect[10..]);
    let mut m = RawClient::new(ws, V4);
    assert!(matches!(m.recv(), Packet::ConnAck(a) if a.reason == tern::codec::ReasonCode::Success));
    // SUBSCRIBE split over two separate binary messages, byte 1 alone.
    let sub = encode(&common::subscribe_packet("ws/#", QoS::AtLeastOnce, 7), V4);
    m.stream.send_frame(true, OP_BINARY, &sub[..1]);
    m.stream.send_frame(true, OP_BINARY, &sub[1..]);
    assert!(matches!(m.recv(), Packet::SubAck(_)));
    // Three PUBLISHes and a PINGREQ packed into one frame.
    let mut packed = Vec::new();
    for i in 0..3 {
        packed.extend(encode(&common::publish_packet("ws/packed", format!("m{i}").as_bytes()), V4));
    }
    packed.extend(encode(&Packet::PingReq, V4));
    m.stream.send_frame(true, OP_BINARY, &packed);
    let mut got = Vec::new();
    let mut pong = false;
    while got.len() < 3 || !pong {
        match m.recv() {
            Packet::Publish(p) => got.push(String::from_utf8(p.payload.to_vec()).expect("utf8")),
            Packet::PingResp => pong = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ["m0", "m1", "m2"]);
    // Cross-transport: a TCP publisher reaches the WebSocket subscriber, and a payload larger
    // than one 64 KiB output frame arrives whole.
    let mut tcp = RawClient::connect_tcp(addr(&b, 1), V4);
    tcp.connect_ok("tcp-pub");
    let big = vec![0xA7; 150_000];
    tcp.publish("ws/big", &big, QoS::AtMostOnce, 0, false);
    assert_eq!(m.recv_publish().payload.len(), big.len());
    // Mixed with control frames between fragments.
    let publ = encode(&common::publish_packet("ws/x", b"around a ping"), V4);
    m.stream.send_frame(false, OP_BINARY, &publ[..4]);
    m.stream.send_frame(true, OP_PING, b"mid");
    m.stream.send_frame(true, OP_CONT, &publ[4..]);
    assert_eq!(&m.recv_publish().payload[..], b"around a ping");
}

#[test]
fn ping_gets_pong_and_close_is_answered() {
    let b = start_ws(|_| {});
    let mut ws = WsClient::upgrade(support::tcp(b.addr), "/mqtt");
    ws.write_all(&encode(&common::connect_packet(V5, "ws-ping"), V5)).expect("write");
    ws.send_frame(true, OP_PING, b"are you there");
    let f = ws.next_control().expect("pong");
    assert_eq!((f.op, f.payload.as_slice()), (OP_PONG, &b"are you there"[..]));
    let mut m = RawClient::new(ws, V5);
    assert!(matches!(m.recv(), Packet::ConnAck(_)));
    // Client-initiated close: the server answers with the same code and closes the socket.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    m.stream.send_frame(true, OP_CLOSE, &close);
    let f = m.stream.next_control().expect("close reply");
    assert_eq!(f.op, OP_CLOSE);
    assert_eq!(&f.payload[..2], &1000u16.to_be_bytes());
    // EOF, not a read timeout: the server closed its side.
    let mut rest = [0u8; 1];
    let end = m.stream.s.read(&mut rest).map_err(|e| e.kind());
    assert_eq!(end, Ok(0), "socket closed after the close handshake");
}

#[test]
fn server_closes_with_a_close_frame_after_disconnect() {
    let b = start_ws(|_| {});
    let mut m = RawClient::new(WsClient::upgrade(support::tcp(b.addr), "/mqtt"), V4);
    m.connect_ok("ws-bye");
    m.send(&Packet::Disconnect(tern::codec::ReasonPacket::new(tern::codec::ReasonCode::Success)));
    let f = m.stream.next_control().expect("close frame");
    assert_eq!((f.op, &f.payload[..2]), (OP_CLOSE, &1000u16.to_be_bytes()[..]));
}

#[test]
fn bad_frames_close_with_their_code() {
    let b = start_ws(|c| c.limits.packet_size_bytes_max = 1024);
    let cases: [(Vec<u8>, u16); 4] = [
        (client_frame(true, OP_TEXT, b"{\"mqtt\": true}"), 1003),
        (vec![0x82, 0x02, 0x10, 0x00], 1002), // unmasked
        (client_frame(true, OP_BINARY, &[0; 1100]), 1009), // over 1024 + 14
        (client_frame(false, OP_PING, b"frag"), 1002),
    ];
    for (frame, code) in cases {
        let mut ws = WsClient::upgrade(support::tcp(b.addr), "/mqtt");
        ws.send_raw(&frame);
        let f = ws.next_control().expect("close frame");
        assert_eq!(f.op, OP_CLOSE);
        assert_eq!(u16::from_be_bytes([f.payload[0], f.payload[1]]), code);
        assert!(ws.read_frame().is_none(), "closed after code {code}");
    }
    // A frame that fits but carries a packet over the MQTT limit: the shard refuses it.
    let mut m = RawClient::new(WsClient::upgrade(support::tcp(b.addr), "/mqtt"), V4);
    m.connect_ok("ws-limit");
    m.publish("big", &[1; 1030], QoS::AtMostOnce, 0, false);
    assert!(m.recv_timeout(Duration::from_secs(3)).is_none(), "closed on the oversized packet");
}

#[test]
fn refused_upgrades_get_an_http_status() {
    let b = start_ws(|c| c.listeners[0].ws_path = "/broker".into());
    let cases = [
        (upgrade_request("/mqtt", Some("mqtt")), "404"),
        (upgrade_request("/broker", Some("chat")), "400"),
        (upgrade_request("/broker", Some("mqtt")).replace("Version: 13", "Version: 8"), "426"),
        (upgrade_request("/broker", Some("mqtt")).replace("GET", "POST"), "405"),
        (format!("GET /broker HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)), "431"),
    ];
    for (request, status) in cases {
        let mut s = support::tcp(b.addr);
        s.write_all(request.as_bytes()).expect("write");
        let head = read_http_head(&mut s);
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{status}: {head}");
    }
    // mqttv3.1 for old clients; the configured path works.
    let mut s = support::tcp(b.addr);
    s.write_all(upgrade_request("/broker", Some("mqttv3.1")).as_bytes()).expect("write");
    let head = read_http_head(&mut s);
    assert!(head.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"), "{head}");
}

#[test]
fn a_stalled_handshake_is_dropped_after_the_connect_timeout() {
    let b = start_ws(|c| c.limits.connect_timeout_secs = 1);
    let mut s = support::tcp(b.addr);
    s.write_all(b"GET /mqtt HTTP/1.1\r\n").expect("write");
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
}

#[test]
fn secure_websocket_with_rustls() {
    let pki = Pki::new("wss");
    let b = start_with(2, |c| {
        let l = &mut c.listeners[0];
        l.transport = Transport::Wss;
        l.certfile = Some(pki.server_cert.clone());
        l.keyfile = Some(pki.server_key.clone());
    });
    let tls = TlsClient::default().connect(b.addr, &pki.ca_file).expect("tls");
    let mut sub = RawClient::new(WsClient::upgrade(tls, "/mqtt"), V5);
    sub.connect_ok("wss-sub");
    sub.subscribe("wss/#", QoS::AtLeastOnce);
    let tls = TlsClient { tls12_only: true, ..Default::default() };
    let mut publ = RawClient::new(
        WsClient::upgrade(tls.connect(b.addr, &pki.ca_file).expect("tls"), "/mqtt"),
        V4,
    );
    publ.connect_ok("wss-pub");
    let connect_and_publish = encode(&common::publish_packet("wss/a", b"secure ws"), V4);
    publ.stream.send_frame(false, OP_BINARY, &connect_and_publish[..5]);
    publ.stream.send_frame(true, OP_CONT, &connect_and_publish[5..]);
    assert_eq!(&sub.recv_publish().payload[..], b"secure ws");
    sub.stream.send_frame(true, OP_PING, b"p");
    assert_eq!(sub.stream.next_control().map(|f| f.op), Some(OP_PONG));
}

#[test]
fn paho_mqtt_over_websockets_plain_and_tls() {
    let python = support::python_with_paho();
    let pki = Pki::new("paho-ws");
    let b = start_with(2, |c| {
        c.listeners[0].transport = Transport::Ws;
        let wss = ListenerConfig {
            bind: "127.0.0.1:0".parse().expect("literal"),
            transport: Transport::Wss,
            certfile: Some(pki.server_cert.clone()),
            keyfile: Some(pki.server_key.clone()),
            ws_path: "/secure".into(),
            ..Default::default()
        };
        c.listeners.push(wss);
    });
    let script = support::interop_dir().join("paho_roundtrip.py");
    let ca = pki.ca_file.display().to_string();
    for (port, path, tls, protocol) in [
        (b.addr.port(), "/mqtt", false, "4"),
        (b.addr.port(), "/mqtt", false, "5"),
        (addr(&b, 1).port(), "/secure", true, "5"),
    ] {
        let mut cmd = Command::new(python);
        cmd.arg(&script).args(["--port", &port.to_string(), "--transport", "websockets"]);
        cmd.args(["--path", path, "--protocol", protocol]);
        if tls {
            cmd.args(["--cafile", &ca]);
        }
        let (ok, out, err) = run_bounded(&mut cmd, Duration::from_secs(20));
        assert!(ok && out.starts_with("OK hello over websockets"), "paho {path}: {out}\n{err}");
    }
}
