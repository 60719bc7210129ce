//! Tern's own TLS record layer after the handshake (src/net/tls/records.rs, issue 11) against
//! a real rustls client: every cipher suite on TLS 1.3 and 1.2 through a running broker (QoS 1
//! both ways after the switch, a client key update mid-stream, close_notify, a corrupt record
//! answered with bad_record_mac), and in memory a hostile client that holds the client's
//! traffic keys and seals whatever it likes: every refusal the layer makes, with the alert it
//! sends.

mod common;
use common::interop as support;
use common::pipe::{Bytes, Pipe};

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{start_with, RawClient, TestBroker};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use rustls::crypto::ring::cipher_suite as cs;
use rustls::SupportedCipherSuite;
use support::Pki;
use tern::codec::{Packet, ProtocolVersion, QoS};
use tern::config::Transport;
use tern::net::tls::records::{self, alert, Records, Version};
use tern::net::tls::{self, TlsStream};

const V4: ProtocolVersion = ProtocolVersion::V311;

/// The six suites of the ring provider for the test PKI's ECDSA certificate, with their
/// protocol version (true: TLS 1.2).
fn suites() -> [(SupportedCipherSuite, bool); 6] {
    [
        (cs::TLS13_AES_128_GCM_SHA256, false),
        (cs::TLS13_AES_256_GCM_SHA384, false),
        (cs::TLS13_CHACHA20_POLY1305_SHA256, false),
        (cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, true),
        (cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, true),
        (cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, true),
    ]
}

fn client_config(ca_file: &std::path::Path, suite: SupportedCipherSuite) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca_file).expect("CA file") {
        roots.add(c.expect("CA PEM")).expect("CA");
    }
    let version = match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_secret_extraction = true;
    config
}

/// A rustls client with only `suite`, connected to the broker's TLS listener.
fn connect(addr: SocketAddr, pki: &Pki, suite: SupportedCipherSuite) -> support::TlsStream {
    let tcp = std::net::TcpStream::connect(addr).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(common::client::RECV_TIMEOUT)).expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(client_config(&pki.ca_file, suite)), name)
        .expect("client");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("handshake");
    }
    assert_eq!(s.conn.negotiated_cipher_suite(), Some(suite));
    s
}

fn start_tls(pki: &Pki) -> TestBroker {
    start_with(2, |c| {
        let l = &mut c.listeners[0];
        l.transport = Transport::Tls;
        l.certfile = Some(pki.server_cert.clone());
        l.keyfile = Some(pki.server_key.clone());
    })
}

/// Publishes `payload` at QoS 1 from `publ` and checks `sub` gets it and both acks flow
/// [MQTT-4.3.2-1]: the broker's PUBACK to the publisher, the subscriber's PUBACK to the broker.
fn qos1_round(
    publ: &mut RawClient<support::TlsStream>,
    sub: &mut RawClient<support::TlsStream>,
    topic: &str,
    payload: &[u8],
    id: u16,
) {
    publ.publish(topic, payload, QoS::AtLeastOnce, id, false);
    match publ.recv() {
        Packet::PubAck(a) => assert_eq!(a.packet_id.get(), id),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let p = sub.recv_publish();
    assert_eq!(p.topic.as_deref(), Some(topic));
    assert_eq!(&p.payload[..], payload, "{topic}: payload");
    let pid = p.packet_id.expect("QoS 1 has a packet id");
    sub.send(&Packet::PubAck(tern::codec::PubResp::success(pid)));
}

#[test]
fn every_suite_on_tls13_and_tls12_carries_qos1_both_ways_after_the_switch() {
    let pki = Pki::new("tls-records-suites");
    let b = start_tls(&pki);
    for (i, (suite, _)) in suites().into_iter().enumerate() {
        let mut sub = RawClient::new(connect(b.addr, &pki, suite), V4);
        sub.connect_ok(&format!("sub-{i}"));
        sub.subscribe(&format!("suite/{i}/#"), QoS::AtLeastOnce);
        let mut publ = RawClient::new(connect(b.addr, &pki, suite), V4);
        publ.connect_ok(&format!("pub-{i}"));
        qos1_round(&mut publ, &mut sub, &format!("suite/{i}/small"), b"hello", 1);
        // Several full records each way (2^14 bytes of plaintext per record).
        let big: Vec<u8> = (0..70_000u32).map(|x| (x % 251) as u8).collect();
        qos1_round(&mut publ, &mut sub, &format!("suite/{i}/big"), &big, 2);
    }
}

/// RFC 8446 §4.6.3: the client's KeyUpdate (rustls' `refresh_traffic_keys` sends one with
/// update_requested) switches the broker's receiving key, and the broker answers with its own
/// KeyUpdate and switches its sending key; the session carries on, several times over.
#[test]
fn a_client_key_update_mid_stream_keeps_the_session() {
    let pki = Pki::new("tls-records-key-update");
    let b = start_tls(&pki);
    for (i, (suite, tls12)) in suites().into_iter().enumerate() {
        if tls12 {
            continue;
        }
        let mut sub = RawClient::new(connect(b.addr, &pki, suite), V4);
        sub.connect_ok(&format!("ku-sub-{i}"));
        sub.subscribe(&format!("ku/{i}/#"), QoS::AtLeastOnce);
        let mut publ = RawClient::new(connect(b.addr, &pki, suite), V4);
        publ.connect_ok(&format!("ku-pub-{i}"));
        qos1_round(&mut publ, &mut sub, &format!("ku/{i}/before"), b"before", 1);
        for round in 0..3u16 {
            publ.stream.conn.refresh_traffic_keys().expect("TLS 1.3 key update");
            sub.stream.conn.refresh_traffic_keys().expect("TLS 1.3 key update");
            let topic = format!("ku/{i}/after-{round}");
            qos1_round(&mut publ, &mut sub, &topic, b"after the update", 10 + round);
        }
    }
}

/// A client's close_notify ends its connection: the broker closes the socket.
#[test]
fn a_client_close_notify_closes_the_connection() {
    let pki = Pki::new("tls-records-close");
    let b = start_tls(&pki);
    for (suite, _) in suites() {
        let mut c = RawClient::new(connect(b.addr, &pki, suite), V4);
        c.connect_ok("closing");
        c.stream.conn.send_close_notify();
        c.stream.flush().expect("flush close_notify");
        c.stream.conn.complete_io(&mut c.stream.sock).expect("send close_notify");
        assert!(c.closed_within(Duration::from_secs(10)), "{suite:?}: broker closed");
    }
}

/// A record whose tag does not verify: the broker answers bad_record_mac (RFC 8446 §5.2) and
/// closes that connection only; the other client's session carries on.
#[test]
fn a_corrupt_record_gets_bad_record_mac_and_closes_only_that_connection() {
    let pki = Pki::new("tls-records-corrupt");
    let b = start_tls(&pki);
    for (i, (suite, _)) in suites().into_iter().enumerate() {
        let mut good = RawClient::new(connect(b.addr, &pki, suite), V4);
        good.connect_ok(&format!("good-{i}"));
        good.subscribe(&format!("c/{i}"), QoS::AtLeastOnce);
        let mut bad = RawClient::new(connect(b.addr, &pki, suite), V4);
        bad.connect_ok(&format!("bad-{i}"));
        // A PINGREQ sealed by the client, its last byte (in the tag) flipped, sent raw.
        bad.stream.conn.writer().write_all(&[0xC0, 0x00]).expect("plaintext");
        let mut wire = Vec::new();
        bad.stream.conn.write_tls(&mut wire).expect("records");
        *wire.last_mut().expect("a record") ^= 0x01;
        bad.stream.sock.write_all(&wire).expect("raw write");
        let mut got = Vec::new();
        let _ = bad.stream.sock.read_to_end(&mut got);
        let mut rd = &got[..];
        let mut alert = None;
        while !rd.is_empty() && alert.is_none() {
            if bad.stream.conn.read_tls(&mut rd).expect("read") == 0 {
                break;
            }
            if let Err(e) = bad.stream.conn.process_new_packets() {
                alert = Some(e);
            }
        }
        assert_eq!(
            alert,
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)),
            "{suite:?}"
        );
        let mut publ = RawClient::new(connect(b.addr, &pki, suite), V4);
        publ.connect_ok(&format!("pub-{i}"));
        qos1_round(&mut publ, &mut good, &format!("c/{i}"), b"still here", 1);
    }
}

/// The bound on records without application data, through the broker: a client holding its
/// own traffic keys sends 33 empty application data records after CONNECT; the broker sends
/// unexpected_message, closes that connection, and counts it in
/// `tls_empty_record_runs_refused`; 32 then data pass on another connection.
#[test]
fn a_run_of_empty_records_is_bounded_and_counted() {
    let pki = Pki::new("tls-records-empty-run");
    let b = start_tls(&pki);
    for (i, (suite, tls12)) in suites().into_iter().enumerate() {
        let version = if tls12 { Version::Tls12 } else { Version::Tls13 };
        for extra in [false, true] {
            let mut c = RawClient::new(connect(b.addr, &pki, suite), V4);
            c.connect_ok(&format!("empty-{i}-{extra}"));
            let s = c.stream;
            let mut sock = s.sock.try_clone().expect("socket");
            #[allow(deprecated)] // the one way to a rustls client's keys; fine in a test
            let secrets = s.conn.dangerous_extract_secrets().expect("client secrets");
            let mut keys = Records::from_secrets(secrets, version).expect("client record layer");
            let mut wire = Vec::new();
            for _ in 0..records::EMPTY_RECORDS_RUN_MAX {
                keys.seal_padded(APP, b"", 0, &mut wire).expect("seal");
            }
            let ping = [0xC0u8, 0x00]; // PINGREQ
            keys.seal_padded(APP, if extra { b"" } else { &ping }, 0, &mut wire).expect("seal");
            sock.write_all(&wire).expect("write");
            sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let (mut back, mut plain) = (Vec::new(), Vec::new());
            let mut end = Ok(records::ReadEnd::NeedData);
            // Bounded: each pass reads from the socket, which the timeout bounds.
            while plain.len() < 2 && end == Ok(records::ReadEnd::NeedData) {
                let mut chunk = [0u8; 4096];
                let n = sock.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&chunk[..n]);
                end = keys
                    .read(&mut back, &mut Vec::new(), &mut |p| plain.extend_from_slice(p))
                    .map(|(used, at)| {
                        back.drain(..used);
                        at
                    });
            }
            if extra {
                let e = end.expect_err("refused");
                assert_eq!(e.peer, Some(alert::UNEXPECTED_MESSAGE), "{suite:?}");
            } else {
                // Within the bound: the PINGRESP [MQTT-3.12.4-1] arrives.
                assert_eq!(plain, [0xD0, 0x00], "{suite:?}");
            }
        }
    }
    let want = suites().len() as u64;
    assert!(b.wait_stats(|m| m.tls_empty_record_runs_refused == want), "counted once each");
}

// ------------------------------------------------------------------------------------------
// In memory: Tern's stream against a rustls client, then a hostile client with its keys.
// ------------------------------------------------------------------------------------------

/// Moves the client's records to the server and the server's into the client.
fn shuttle(c: &mut rustls::ClientConnection, to_server: &Bytes, to_client: &Bytes) {
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).expect("client records");
    }
    to_server.borrow_mut().extend(out);
    let bytes: Vec<u8> = to_client.borrow_mut().drain(..).collect();
    let mut rd = &bytes[..];
    while !rd.is_empty() {
        c.read_tls(&mut rd).expect("client read");
        c.process_new_packets().expect("client state");
    }
}

fn poll_once<T>(fut: Pin<&mut impl std::future::Future<Output = T>>) -> Poll<T> {
    fut.poll(&mut Context::from_waker(std::task::Waker::noop()))
}

fn drive<T>(
    mut fut: Pin<&mut impl std::future::Future<Output = T>>,
    c: &mut rustls::ClientConnection,
    pipes: &(Bytes, Bytes),
) -> T {
    for _ in 0..100 {
        let r = poll_once(fut.as_mut());
        shuttle(c, &pipes.0, &pipes.1);
        if let Poll::Ready(x) = r {
            return x;
        }
    }
    panic!("no progress in 100 polls");
}

struct Session {
    server: TlsStream<Pipe>,
    client: rustls::ClientConnection,
    pipes: (Bytes, Bytes),
    blocked: Rc<std::cell::Cell<bool>>,
}

/// Handshake with `suite` and one round trip (so the server runs on its own record layer).
fn session(pki: &Pki, suite: SupportedCipherSuite) -> Session {
    let (io, mut client, pipes) = unstarted(pki, suite);
    let blocked = Rc::clone(&io.blocked);
    let accept = TlsStream::accept(server_config_of(pki), io);
    let mut server = drive(std::pin::pin!(accept), &mut client, &pipes).expect("hs");
    client.writer().write_all(b"ping").expect("plaintext");
    let mut buf = [0u8; 8];
    let n = drive(std::pin::pin!(server.read(&mut buf)), &mut client, &pipes).expect("read");
    assert_eq!(&buf[..n], b"ping");
    drive(std::pin::pin!(server.write_all(b"pong")), &mut client, &pipes).expect("write");
    let mut got = [0u8; 4];
    client.reader().read_exact(&mut got).expect("client read");
    assert_eq!(&got, b"pong");
    assert!(server.records().is_some(), "on Tern's record layer after the first read");
    Session { server, client, pipes, blocked }
}

/// The hostile client: the rustls client's traffic keys in a record layer of our own, which
/// seals whatever it is told to.
struct Hostile {
    records: Records,
    server: TlsStream<Pipe>,
    pipes: (Bytes, Bytes),
}

fn hostile(pki: &Pki, suite: SupportedCipherSuite) -> Hostile {
    let s = session(pki, suite);
    let tls12 = matches!(suite, SupportedCipherSuite::Tls12(_));
    let version = if tls12 { Version::Tls12 } else { Version::Tls13 };
    #[allow(deprecated)] // the one way to a rustls client's keys; fine in a test
    let secrets = s.client.dangerous_extract_secrets().expect("client secrets");
    let records = Records::from_secrets(secrets, version).expect("client record layer");
    Hostile { records, server: s.server, pipes: s.pipes }
}

impl Hostile {
    /// Seals one record (TLS 1.3: `padding` zero bytes after the type) and sends it.
    fn send(&mut self, content_type: u8, content: &[u8], padding: usize) {
        let mut wire = Vec::new();
        self.records.seal_padded(content_type, content, padding, &mut wire).expect("seal");
        self.pipes.0.borrow_mut().extend(wire);
    }

    fn send_raw(&mut self, wire: &[u8]) {
        self.pipes.0.borrow_mut().extend(wire);
    }

    /// Reads the server until it returns: plaintext, end of stream or an error; polls until
    /// the server's read ends (bounded).
    fn server_read(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..200 {
            let mut buf = [0u8; 1 << 15];
            match poll_once(std::pin::pin!(self.server.read(&mut buf))) {
                Poll::Ready(Ok(0)) => return Ok(out),
                Poll::Ready(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending if self.pipes.0.borrow().is_empty() => return Ok(out),
                Poll::Pending => {}
            }
        }
        panic!("the server's read did not end");
    }

    /// What the server sent back, opened with the client's keys: plaintext and how it ended
    /// (an error names the alert the server sent).
    fn opened_answers(&mut self) -> (Vec<u8>, Result<records::ReadEnd, records::Fatal>) {
        let mut wire: Vec<u8> = self.pipes.1.borrow_mut().drain(..).collect();
        let mut out = Vec::new();
        let mut answers = Vec::new();
        let end = self
            .records
            .read(&mut wire, &mut answers, &mut |p| out.extend_from_slice(p))
            .map(|(_, end)| end);
        (out, end)
    }

    /// The server refuses: its read fails and the alert it sent is `alert`.
    fn refused_with(&mut self, alert: u8, what: &str) {
        assert!(self.server_read().is_err(), "{what}: the server's read fails");
        let (_, end) = self.opened_answers();
        let e = end.expect_err("the server's alert");
        assert_eq!(e.peer, Some(alert), "{what}: alert sent");
        // And it stays failed.
        assert!(self.server_read().is_err(), "{what}: failed for good");
    }
}

const HANDSHAKE: u8 = 22;
const APP: u8 = 23;

#[test]
fn hostile_records_after_the_handshake_are_refused_with_the_right_alert() {
    let pki = Pki::new("tls-records-hostile");
    for (suite, tls12) in suites() {
        let name = format!("{suite:?}");
        // A change_cipher_spec record after the handshake (RFC 8446 §5: unexpected_message).
        let mut h = hostile(&pki, suite);
        h.send_raw(&[20, 3, 3, 0, 1, 1]);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: outer CCS"));
        // A record longer than the version allows: record_overflow before reading it whole.
        let mut h = hostile(&pki, suite);
        let max = if tls12 { records::TLS12_CIPHERTEXT_MAX } else { records::TLS13_CIPHERTEXT_MAX };
        let len = u16::try_from(max + 1).expect("fits");
        h.send_raw(&[APP, 3, 3, len.to_be_bytes()[0], len.to_be_bytes()[1]]);
        h.refused_with(alert::RECORD_OVERFLOW, &format!("{name}: oversized record"));
        // Plaintext longer than 2^14 (sealed correctly).
        let mut h = hostile(&pki, suite);
        h.send(APP, &vec![7; records::PLAINTEXT_MAX + 1], 0);
        h.refused_with(alert::RECORD_OVERFLOW, &format!("{name}: oversized plaintext"));
        // An unknown content type.
        let mut h = hostile(&pki, suite);
        h.send(99, b"x", 0);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: content type 99"));
        // A handshake message that is not KeyUpdate (a NewSessionTicket from a client).
        let mut h = hostile(&pki, suite);
        h.send(HANDSHAKE, &[4, 0, 0, 1, 0], 0);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: NewSessionTicket"));
        // A run of empty application data records: EMPTY_RECORDS_RUN_MAX pass, one more not.
        let mut h = hostile(&pki, suite);
        let before = records::empty_runs_refused();
        for _ in 0..records::EMPTY_RECORDS_RUN_MAX {
            h.send(APP, b"", 0);
        }
        h.send(APP, b"data resets the run", 0);
        for _ in 0..records::EMPTY_RECORDS_RUN_MAX {
            h.send(APP, b"", 0);
        }
        assert_eq!(h.server_read().expect("within the bound"), b"data resets the run");
        h.send(APP, b"", 0);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: empty run"));
        assert_eq!(records::empty_runs_refused(), before + 1, "counted");
        // A fatal alert from the client ends the stream with no alert back.
        let mut h = hostile(&pki, suite);
        h.send(21, &[2, alert::INTERNAL_ERROR], 0);
        assert!(h.server_read().is_err());
        assert!(h.pipes.1.borrow().is_empty(), "{name}: no answer to a fatal alert");
        if tls12 {
            // Renegotiation (a ClientHello after the handshake) is refused.
            let mut h = hostile(&pki, suite);
            h.send(HANDSHAKE, &[1, 0, 0, 0], 0);
            h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: renegotiation"));
            // A warning alert is ignored; close_notify ends the stream.
            let mut h = hostile(&pki, suite);
            h.send(21, &[1, 100], 0);
            h.send(APP, b"after a warning", 0);
            h.send(21, &[1, alert::CLOSE_NOTIFY], 0);
            assert_eq!(h.server_read().expect("clean"), b"after a warning");
            continue;
        }
        // TLS 1.3 only: padding is stripped, the inner type found behind it.
        let mut h = hostile(&pki, suite);
        h.send(APP, b"padded", 300);
        assert_eq!(h.server_read().expect("padding is fine"), b"padded");
        // An inner plaintext of zeros only has no content type.
        let mut h = hostile(&pki, suite);
        h.send(0, b"", 20);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: all zeros"));
        // An inner change_cipher_spec.
        let mut h = hostile(&pki, suite);
        h.send(20, &[1], 0);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: inner CCS"));
        // KeyUpdate with a request value other than 0 or 1.
        let mut h = hostile(&pki, suite);
        h.send(HANDSHAKE, &[24, 0, 0, 1, 2], 0);
        h.refused_with(alert::ILLEGAL_PARAMETER, &format!("{name}: KeyUpdate(2)"));
        // KeyUpdate split over two records.
        let mut h = hostile(&pki, suite);
        h.send(HANDSHAKE, &[24, 0, 0], 0);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: split KeyUpdate"));
        // Data after KeyUpdate in its record.
        let mut h = hostile(&pki, suite);
        h.send(HANDSHAKE, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0], 0);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: two KeyUpdates"));
        // An empty handshake record.
        let mut h = hostile(&pki, suite);
        h.send(HANDSHAKE, b"", 0);
        h.refused_with(alert::UNEXPECTED_MESSAGE, &format!("{name}: empty handshake"));
        // user_canceled is a warning; close_notify ends the stream cleanly.
        let mut h = hostile(&pki, suite);
        h.send(21, &[1, alert::USER_CANCELED], 0);
        h.send(APP, b"then more", 0);
        h.send(21, &[1, alert::CLOSE_NOTIFY], 0);
        assert_eq!(h.server_read().expect("clean"), b"then more");
    }
}

/// A corrupt record in memory: bad_record_mac, and the stream fails for good.
#[test]
fn a_record_that_does_not_verify_gets_bad_record_mac() {
    let pki = Pki::new("tls-records-mac");
    for (suite, _) in suites() {
        let mut h = hostile(&pki, suite);
        let mut wire = Vec::new();
        h.records.write(b"payload", &mut wire).expect("seal");
        let at = wire.len() / 2 + 3;
        wire[at] ^= 0x80;
        h.send_raw(&wire);
        h.refused_with(alert::BAD_RECORD_MAC, &format!("{suite:?}"));
    }
}

/// Near the suite's confidentiality limit the broker updates its sending key itself (TLS 1.3,
/// RFC 8446 §5.5) and the real client reads on; TLS 1.2 cannot update keys, so the
/// connection ends instead of sealing past the limit.
#[test]
fn the_confidentiality_limit_updates_the_key_or_closes() {
    let pki = Pki::new("tls-records-limit");
    for (suite, tls12) in suites() {
        let mut s = session(&pki, suite);
        let (_, sent) = s.server.records().expect("own layer").sequence_numbers();
        s.server.records().expect("own layer").set_confidentiality_limit(sent + 20);
        let mut wrote = 0;
        let mut failed = false;
        for i in 0..40u8 {
            let w = drive(std::pin::pin!(s.server.write_all(&[i; 100])), &mut s.client, &s.pipes);
            if w.is_err() {
                failed = true;
                break;
            }
            wrote += 1;
        }
        if tls12 {
            assert!(failed && wrote < 20, "{suite:?}: TLS 1.2 stops before the limit ({wrote})");
        } else {
            assert!(!failed, "{suite:?}: TLS 1.3 updates its key");
            let (_, seq) = s.server.records().expect("own layer").sequence_numbers();
            assert!(seq < 20, "{suite:?}: the sequence restarted with the new key ({seq})");
            let mut got = vec![0u8; 4000];
            s.client.reader().read_exact(&mut got).expect("the client reads every record");
            assert!(got.chunks(100).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        }
    }
}

/// The expanded keys are dropped at park and rebuilt on the next record.
#[test]
fn parking_drops_the_expanded_keys() {
    let pki = Pki::new("tls-records-park");
    for (suite, _) in suites() {
        let mut s = session(&pki, suite);
        assert!(s.server.records().expect("own").keys_expanded());
        assert!(s.server.parkable());
        let (io, parked) = s.server.into_parked();
        let mut server = TlsStream::resume(io, parked);
        assert!(!server.records().expect("own").keys_expanded(), "{suite:?}: dropped at park");
        s.client.writer().write_all(b"again").expect("plaintext");
        let mut buf = [0u8; 8];
        let n = drive(std::pin::pin!(server.read(&mut buf)), &mut s.client, &s.pipes)
            .expect("read after resume");
        assert_eq!(&buf[..n], b"again");
        assert!(server.records().expect("own").keys_expanded());
    }
}

/// The answer to update_requested (RFC 8446 §4.6.3): the broker sends its own KeyUpdate under
/// the old key and seals from then on under the next one (its sequence number restarts), and
/// the client reads on with the key it derived.
#[test]
fn update_requested_is_answered_with_our_own_key_update() {
    let pki = Pki::new("tls-records-answer");
    for (suite, tls12) in suites() {
        if tls12 {
            continue;
        }
        let mut s = session(&pki, suite);
        let (_, sent_before) = s.server.records().expect("own").sequence_numbers();
        assert!(sent_before > 0, "{suite:?}: pong (and tickets) were sealed");
        s.client.refresh_traffic_keys().expect("KeyUpdate(update_requested)");
        s.client.writer().write_all(b"after").expect("plaintext");
        let mut buf = [0u8; 8];
        let n = drive(std::pin::pin!(s.server.read(&mut buf)), &mut s.client, &s.pipes)
            .expect("read after the client's KeyUpdate");
        assert_eq!(&buf[..n], b"after");
        // One record opened under the client's next key; nothing sealed yet under ours.
        assert_eq!(s.server.records().expect("own").sequence_numbers(), (1, 0), "{suite:?}");
        drive(std::pin::pin!(s.server.write_all(b"pong2")), &mut s.client, &s.pipes)
            .expect("write");
        let mut got = [0u8; 5];
        s.client.reader().read_exact(&mut got).expect("the client opens it with the next key");
        assert_eq!(&got, b"pong2");
    }
}

/// A peer that asks for key update after key update and reads nothing: the answers wait in the
/// stream's output, and past a bound (twice the 64 KiB write chunk) the stream stops reading
/// until the socket takes them; then everything is read.
#[test]
fn key_update_answers_to_a_peer_that_reads_nothing_are_bounded() {
    let pki = Pki::new("tls-records-answers-bound");
    let mut s = session(&pki, cs::TLS13_AES_128_GCM_SHA256);
    s.blocked.set(true);
    let mut wire = Vec::new();
    for i in 0..6_000 {
        s.client.refresh_traffic_keys().expect("KeyUpdate(update_requested)");
        // Data often enough that the bound on records without data does not end it first.
        if i % 16 == 15 {
            s.client.writer().write_all(b"x").expect("plaintext");
        }
        while s.client.wants_write() {
            s.client.write_tls(&mut wire).expect("records");
        }
    }
    s.pipes.0.borrow_mut().extend(wire);
    let mut got = 0;
    let mut buf = [0u8; 4096];
    // Bounded: the input is finite; a `Pending` ends the pass.
    for _ in 0..100_000 {
        match poll_once(std::pin::pin!(s.server.read(&mut buf))) {
            Poll::Ready(Ok(n)) if n > 0 => got += n,
            Poll::Ready(other) => panic!("the stream ended: {other:?}"),
            Poll::Pending => break,
        }
    }
    assert!(!s.pipes.0.borrow().is_empty(), "the stream stopped reading");
    let held = s.server.buffered_capacity();
    assert!(held <= 512 << 10, "{held} B held");
    assert!(got < 375, "not everything was read yet ({got})");
    s.blocked.set(false);
    for _ in 0..100_000 {
        match poll_once(std::pin::pin!(s.server.read(&mut buf))) {
            Poll::Ready(Ok(n)) if n > 0 => got += n,
            Poll::Ready(other) => panic!("the stream ended: {other:?}"),
            Poll::Pending => break,
        }
    }
    assert_eq!(got, 6_000 / 16, "every byte arrives once the peer reads");
}

/// A server stream and a rustls client for `suite`, before the handshake.
fn unstarted(
    pki: &Pki,
    suite: SupportedCipherSuite,
) -> (Pipe, rustls::ClientConnection, (Bytes, Bytes)) {
    let pipes: (Bytes, Bytes) = (Rc::default(), Rc::default());
    let io = Pipe::new(&pipes.0, &pipes.1);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let client = rustls::ClientConnection::new(Arc::new(client_config(&pki.ca_file, suite)), name)
        .expect("client");
    (io, client, pipes)
}

fn server_config_of(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let spec = tls::TlsSpec {
        certfile: pki.server_cert.clone(),
        keyfile: pki.server_key.clone(),
        cafile: None,
        require_certificate: false,
        use_identity_as_username: false,
    };
    tls::server_config(&spec).expect("server config")
}

/// Runs the handshake; as soon as the client is done it queues `after` (KeyUpdate, data,
/// close_notify) so that it leaves in the same flight as its Finished (TLS 1.3; in TLS 1.2
/// the client's Finished is not its last handshake message, so it follows). Returns the
/// server stream (or the handshake's error).
fn handshake_with_flight(
    pki: &Pki,
    suite: SupportedCipherSuite,
    after: impl FnOnce(&mut rustls::ClientConnection),
) -> (std::io::Result<TlsStream<Pipe>>, rustls::ClientConnection, (Bytes, Bytes)) {
    let (io, mut client, pipes) = unstarted(pki, suite);
    let mut accept = std::pin::pin!(TlsStream::accept(server_config_of(pki), io));
    let mut after = Some(after);
    // Bounded: a handshake takes a few round trips.
    for _ in 0..100 {
        if let Poll::Ready(r) = poll_once(accept.as_mut()) {
            // TLS 1.2: the server is done first (the client finishes on the server's Finished),
            // so what `after` adds arrives in the next flight.
            if let Some(f) = after.take() {
                shuttle(&mut client, &pipes.0, &pipes.1);
                assert!(!client.is_handshaking(), "the client has the server's Finished");
                f(&mut client);
                shuttle(&mut client, &pipes.0, &pipes.1);
            }
            return (r, client, pipes);
        }
        // Before the client's records move: its Finished is still queued, so what `after`
        // adds goes out with it.
        if !client.is_handshaking() {
            if let Some(f) = after.take() {
                f(&mut client);
            }
        }
        shuttle(&mut client, &pipes.0, &pipes.1);
    }
    panic!("the handshake did not end");
}

/// Review of the record layer (issue 11): a client KeyUpdate(update_requested) in the same
/// flight as its Finished. Before the fix rustls acted on it during the hand-over, sealed its
/// answer under a key the hand-over then dropped, and the client could not open anything the
/// server sent afterwards (`DecryptError`). [RFC 8446 §4.6.3]
#[test]
fn a_key_update_in_the_flight_of_finished_keeps_both_sides_on_the_same_keys() {
    let pki = Pki::new("tls-records-ku-flight");
    for (suite, tls12) in suites() {
        if tls12 {
            continue; // no KeyUpdate in TLS 1.2
        }
        let (server, mut client, pipes) = handshake_with_flight(&pki, suite, |c| {
            c.refresh_traffic_keys().expect("KeyUpdate(update_requested)");
            c.writer().write_all(b"ping").expect("plaintext");
        });
        let mut server = server.expect("handshake");
        let mut buf = [0u8; 8];
        let n = drive(std::pin::pin!(server.read(&mut buf)), &mut client, &pipes).expect("read");
        assert_eq!(&buf[..n], b"ping", "{suite:?}");
        drive(std::pin::pin!(server.write_all(b"pong")), &mut client, &pipes).expect("write");
        let mut got = [0u8; 4];
        client.reader().read_exact(&mut got).expect("the client opens the server's records");
        assert_eq!(&got, b"pong", "{suite:?}");
    }
}

/// Review: data and close_notify in the flight of the client's Finished: the handshake
/// succeeds and the first read returns the data, then the end of the stream (before, the
/// handshake failed with `UnexpectedEof` and the data was dropped).
#[test]
fn data_and_close_notify_in_the_flight_of_finished_are_read() {
    let pki = Pki::new("tls-records-cn-flight");
    for (suite, _) in suites() {
        let (server, mut client, pipes) = handshake_with_flight(&pki, suite, |c| {
            c.writer().write_all(b"CONNECT+PUBLISH").expect("plaintext");
            c.send_close_notify();
        });
        let mut server = server.unwrap_or_else(|e| panic!("{suite:?}: handshake: {e}"));
        let mut got = Vec::new();
        drive(std::pin::pin!(server.read_to_end(&mut got)), &mut client, &pipes)
            .unwrap_or_else(|e| panic!("{suite:?}: read: {e}"));
        assert_eq!(got, b"CONNECT+PUBLISH", "{suite:?}");
    }
}

/// Review: RFC 8446 §5.4, the inner plaintext (content, type, padding) is at most 2^14 + 1
/// bytes: 2^14 bytes of content with 200 bytes of padding is record_overflow.
#[test]
fn a_padded_inner_plaintext_over_the_limit_is_record_overflow() {
    let pki = Pki::new("tls-records-padding");
    let mut h = hostile(&pki, cs::TLS13_AES_128_GCM_SHA256);
    // At the limit exactly: accepted.
    h.send(APP, &vec![7; records::PLAINTEXT_MAX], 0);
    assert_eq!(h.server_read().expect("at the limit").len(), records::PLAINTEXT_MAX);
    h.send(APP, &vec![7; records::PLAINTEXT_MAX], 200);
    h.refused_with(alert::RECORD_OVERFLOW, "2^14 + 1 + 200 byte inner plaintext");
}

/// Review: after our close_notify nothing more is sent [RFC 8446 §6.1]: a KeyUpdate
/// (update_requested) from the client then moves only the receive key.
#[test]
fn no_key_update_answer_after_our_close_notify() {
    let pki = Pki::new("tls-records-ku-after-close");
    let mut s = session(&pki, cs::TLS13_AES_128_GCM_SHA256);
    drive(std::pin::pin!(s.server.close()), &mut s.client, &s.pipes).expect("close");
    assert!(s.pipes.1.borrow().is_empty(), "close_notify delivered");
    s.client.refresh_traffic_keys().expect("KeyUpdate(update_requested)");
    s.client.writer().write_all(b"late").expect("plaintext");
    let mut out = Vec::new();
    while s.client.wants_write() {
        s.client.write_tls(&mut out).expect("records");
    }
    s.pipes.0.borrow_mut().extend(out);
    let mut buf = [0u8; 64];
    let _ = poll_once(std::pin::pin!(s.server.read(&mut buf)));
    assert_eq!(s.pipes.1.borrow().len(), 0, "bytes sent after close_notify");
}
