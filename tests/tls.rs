//! TLS listeners end to end against a real two-shard broker: a rustls client (TLS 1.3 and
//! 1.2), `openssl s_client`, Python paho-mqtt with TLS, mutual TLS, the certificate CN as the
//! user name, and certificate reload (in process, and SIGHUP to the `tern` binary). The
//! certificates are generated at run time (tests/common/interop.rs).

mod common;
use common::interop as support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{start_with, RawClient, TestBroker};
use support::{file_cert_der, run_bounded, server_cert_der, Pki, TlsClient};
use tern::codec::{ProtocolVersion, QoS, ReasonCode};
use tern::config::{Config, Transport};

const V4: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Makes listener 0 a TLS listener with the PKI's server certificate.
fn tls_listener(config: &mut Config, pki: &Pki) {
    let l = &mut config.listeners[0];
    l.transport = Transport::Tls;
    l.certfile = Some(pki.server_cert.clone());
    l.keyfile = Some(pki.server_key.clone());
}

/// Listener 0: TLS; listener 1: plain TCP (both on ephemeral ports).
fn start_tls(pki: &Pki, edit: impl FnOnce(&mut Config)) -> TestBroker {
    start_with(2, |c| {
        tls_listener(c, pki);
        let tcp = tern::config::ListenerConfig {
            bind: "127.0.0.1:0".parse().expect("literal"),
            ..Default::default()
        };
        c.listeners.push(tcp);
        edit(c);
    })
}

fn addr(b: &TestBroker, listener: usize) -> SocketAddr {
    b.broker.as_ref().expect("running").local_addrs[listener]
}

#[test]
fn rustls_client_tls13_and_tls12_publish_and_subscribe() {
    let pki = Pki::new("tls-basic");
    let b = start_tls(&pki, |_| {});
    let tls13 = TlsClient::default().connect(b.addr, &pki.ca_file).expect("TLS 1.3 handshake");
    assert_eq!(tls13.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(server_cert_der(&tls13), file_cert_der(&pki.server_cert));
    let mut sub = RawClient::new(tls13, V5);
    sub.connect_ok("tls-sub");
    sub.subscribe("secure/#", QoS::AtLeastOnce);

    let tls12 = TlsClient { tls12_only: true, ..Default::default() };
    let tls12 = tls12.connect(b.addr, &pki.ca_file).expect("TLS 1.2 handshake");
    assert_eq!(tls12.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let mut publ = RawClient::new(tls12, V4);
    publ.connect_ok("tls-pub");
    publ.publish("secure/a", b"over tls 1.2", QoS::AtMostOnce, 0, false);
    let p = sub.recv_publish();
    assert_eq!(
        (p.topic.as_deref().unwrap_or(""), &p.payload[..]),
        ("secure/a", &b"over tls 1.2"[..])
    );

    // Listeners share the broker: a plain TCP client reaches the TLS subscriber.
    let mut tcp = RawClient::connect_tcp(addr(&b, 1), V4);
    tcp.connect_ok("tcp-pub");
    tcp.publish("secure/b", b"from tcp", QoS::AtMostOnce, 0, false);
    assert_eq!(&sub.recv_publish().payload[..], b"from tcp");

    // A large publish crosses many TLS records in both directions.
    let big = vec![0x5A; 200_000];
    publ.publish("secure/big", &big, QoS::AtMostOnce, 0, false);
    assert_eq!(sub.recv_publish().payload.len(), big.len());
}

#[test]
fn plain_mqtt_on_a_tls_listener_is_refused() {
    let pki = Pki::new("tls-plain");
    let b = start_tls(&pki, |_| {});
    let mut raw = support::tcp(b.addr);
    let connect = common::encode(&common::connect_packet(V4, "x"), V4);
    raw.write_all(&connect).expect("write");
    let mut buf = [0u8; 64];
    // rustls answers a non-TLS first record with an alert or just closes; never a CONNACK.
    let n = raw.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || buf[0] == 0x15, "expected a TLS alert or EOF, got {:x?}", &buf[..n]);
}

#[test]
fn mutual_tls_accepts_a_good_certificate_and_refuses_others() {
    let pki = Pki::new("mtls");
    let b = start_tls(&pki, |c| {
        c.listeners[0].cafile = Some(pki.ca_file.clone());
        c.listeners[0].require_certificate = true;
    });
    let good = TlsClient {
        client_cert: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..Default::default()
    };
    let mut c = RawClient::new(good.connect(b.addr, &pki.ca_file).expect("mTLS handshake"), V4);
    c.connect_ok("with-cert");
    c.subscribe("m/#", QoS::AtMostOnce);

    // No certificate: the handshake (or the first read after it, for TLS 1.3) fails.
    assert!(refused(&TlsClient::default(), b.addr, &pki.ca_file), "no client certificate");
    // A certificate from another CA.
    let other = Pki::new("mtls-other");
    let stranger = TlsClient {
        client_cert: Some((other.client_cert.clone(), other.client_key.clone())),
        ..Default::default()
    };
    assert!(refused(&stranger, b.addr, &pki.ca_file), "certificate from an unknown CA");
    // The good client is still served.
    c.publish("m/1", b"still here", QoS::AtMostOnce, 0, false);
    assert_eq!(&c.recv_publish().payload[..], b"still here");
}

/// True when the server refuses this client: the handshake fails, or (TLS 1.3, where the
/// client finishes first) the connection fails instead of answering CONNECT.
fn refused(client: &TlsClient, addr: SocketAddr, ca: &Path) -> bool {
    let Ok(s) = client.connect(addr, ca) else { return true };
    let mut m = RawClient::new(s, V4);
    m.send(&common::connect_packet(V4, "refused"));
    m.recv_timeout(Duration::from_secs(3)).is_none()
}

#[test]
fn optional_client_certificate_is_verified_when_presented() {
    let pki = Pki::new("mtls-optional");
    let b = start_tls(&pki, |c| c.listeners[0].cafile = Some(pki.ca_file.clone()));
    let mut anon =
        RawClient::new(TlsClient::default().connect(b.addr, &pki.ca_file).expect("tls"), V4);
    anon.connect_ok("no-cert");
    let good = TlsClient {
        client_cert: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..Default::default()
    };
    let mut c = RawClient::new(good.connect(b.addr, &pki.ca_file).expect("tls"), V4);
    c.connect_ok("cert");
    let other = Pki::new("mtls-optional-other");
    let stranger = TlsClient {
        client_cert: Some((other.client_cert.clone(), other.client_key.clone())),
        ..Default::default()
    };
    assert!(refused(&stranger, b.addr, &pki.ca_file), "a bad certificate is still refused");
}

#[test]
fn certificate_cn_is_the_user_name() {
    let pki = Pki::new("cn-user");
    // Listener 0: CN as user name; listener 2: the same mTLS without it. Neither allows
    // anonymous clients, so a CONNECT without a user name only succeeds where the CN is used.
    let b = start_tls(&pki, |c| {
        let l = &mut c.listeners[0];
        l.cafile = Some(pki.ca_file.clone());
        l.require_certificate = true;
        l.use_identity_as_username = true;
        l.allow_anonymous = false;
        let mut plain_mtls = l.clone();
        plain_mtls.use_identity_as_username = false;
        plain_mtls.bind = "127.0.0.1:0".parse().expect("literal");
        c.listeners.push(plain_mtls);
    });
    let client = TlsClient {
        client_cert: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..Default::default()
    };
    for version in [V4, V5] {
        let mut m = RawClient::new(client.connect(b.addr, &pki.ca_file).expect("tls"), version);
        let ack = m.connect("cn-user", None);
        assert_eq!(ack.reason, ReasonCode::Success, "the CN device-42 is the user name");
    }
    let mut m = RawClient::new(client.connect(addr(&b, 2), &pki.ca_file).expect("tls"), V4);
    assert_eq!(m.connect("no-cn-user", None).reason, ReasonCode::NotAuthorized);
    // A certificate without a CN cannot log in where the CN is the identity.
    let (cert, key) = no_cn_client(&pki);
    let no_cn = TlsClient { client_cert: Some((cert, key)), ..Default::default() };
    assert!(refused(&no_cn, b.addr, &pki.ca_file), "certificate without a CN");
}

fn no_cn_client(pki: &Pki) -> (std::path::PathBuf, std::path::PathBuf) {
    // rcgen puts a default CN only when asked; an empty subject has none.
    let (cert, key) = pki.issue_client("");
    let (c, k) = (pki.dir.path("nocn.pem"), pki.dir.path("nocn-key.pem"));
    std::fs::write(&c, cert).expect("write");
    std::fs::write(&k, key).expect("write");
    (c, k)
}

#[test]
fn reload_swaps_certificates_for_new_connections_only() {
    let pki = Pki::new("reload");
    let b = start_tls(&pki, |_| {});
    let broker = b.broker.as_ref().expect("running");
    let old_der = file_cert_der(&pki.server_cert);
    let mut before =
        RawClient::new(TlsClient::default().connect(b.addr, &pki.ca_file).expect("tls"), V4);
    before.connect_ok("before-reload");
    before.subscribe("r/#", QoS::AtMostOnce);

    // New certificate files, then a reload.
    let (cert, key) = pki.issue_server("tern-test-server-2");
    std::fs::write(&pki.server_cert, cert).expect("write");
    std::fs::write(&pki.server_key, key).expect("write");
    let new_der = file_cert_der(&pki.server_cert);
    assert_ne!(old_der, new_der);
    assert!(broker.reload(Duration::from_secs(5)), "every shard reloaded");
    for _ in 0..4 {
        // Several connections, so both shards are asked.
        let s = TlsClient::default().connect(b.addr, &pki.ca_file).expect("tls after reload");
        assert_eq!(server_cert_der(&s), new_der, "new connections get the new certificate");
    }
    // The connection made before the reload is still up and served.
    let mut after =
        RawClient::new(TlsClient::default().connect(b.addr, &pki.ca_file).expect("tls"), V4);
    after.connect_ok("after-reload");
    after.publish("r/1", b"across the reload", QoS::AtMostOnce, 0, false);
    assert_eq!(&before.recv_publish().payload[..], b"across the reload");

    // A bad certificate: the previous one stays in use.
    std::fs::write(&pki.server_cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    assert!(broker.reload(Duration::from_secs(5)));
    let s = TlsClient::default().connect(b.addr, &pki.ca_file).expect("tls after bad reload");
    assert_eq!(server_cert_der(&s), new_der, "a bad file keeps the previous certificate");
    // A key that does not match the certificate: kept too.
    let (cert, _) = pki.issue_server("tern-test-server-3");
    let (_, other_key) = pki.issue_server("unrelated");
    std::fs::write(&pki.server_cert, cert).expect("write");
    std::fs::write(&pki.server_key, other_key).expect("write");
    assert!(broker.reload(Duration::from_secs(5)));
    let s = TlsClient::default().connect(b.addr, &pki.ca_file).expect("tls after mismatch");
    assert_eq!(server_cert_der(&s), new_der, "a mismatched key keeps the previous certificate");
    after.publish("r/2", b"still", QoS::AtMostOnce, 0, false);
    assert_eq!(&before.recv_publish().payload[..], b"still");
}

#[test]
fn bad_certificate_files_stop_the_start_with_the_file_named() {
    let pki = Pki::new("bad-start");
    let mut config = Config::default();
    config.broker.shards = Some(1);
    config.listeners[0].bind = "127.0.0.1:0".parse().expect("literal");
    config.runtime.pin_cores = false;
    tls_listener(&mut config, &pki);
    config.listeners[0].keyfile = Some(pki.dir.path("missing-key.pem"));
    let e = tern::broker::start(&config).err().expect("refused");
    let text = e.to_string();
    assert!(text.contains("missing-key.pem") && text.contains("cannot read"), "{text}");
    config.listeners[0].keyfile = Some(pki.server_cert.clone()); // a certificate, not a key
    let text = tern::broker::start(&config).err().expect("refused").to_string();
    assert!(text.contains("server.pem") && text.contains("no usable private key"), "{text}");
}

#[test]
fn openssl_s_client_speaks_mqtt_over_tls12_and_tls13() {
    let pki = Pki::new("openssl");
    let b = start_tls(&pki, |c| c.listeners[0].cafile = Some(pki.ca_file.clone()));
    let connect = common::encode(&common::connect_packet(V4, "openssl"), V4);
    let port = b.addr.port().to_string();
    let client_cert = pki.client_cert.display().to_string();
    let client_key = pki.client_key.display().to_string();
    for extra in
        [&["-tls1_3"][..], &["-tls1_2"][..], &["-cert", &client_cert, "-key", &client_key][..]]
    {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .args(["-CAfile", &pki.ca_file.display().to_string(), "-verify_return_error"])
            .args(["-verify_hostname", "localhost", "-quiet", "-ign_eof"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is installed (Debian package openssl; scripts/test.sh installs it)");
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&connect).expect("write CONNECT");
        stdin.flush().expect("flush");
        // CONNACK, 3.1.1: 20 02 00 00. Read it with a bound, then close our side.
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut ack = [0u8; 4];
            stdout.read_exact(&mut ack).map(|_| ack)
        });
        let _ = common::poll_until(Duration::from_secs(10), || reader.is_finished().then_some(()));
        drop(stdin);
        let _ = child.kill();
        let output = child.wait_with_output().expect("wait");
        assert!(
            reader.is_finished(),
            "no CONNACK within 10 s ({extra:?}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let ack = reader.join().expect("join");
        assert_eq!(
            ack.ok(),
            Some([0x20, 0x02, 0x00, 0x00]),
            "openssl {extra:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn paho_mqtt_with_tls_and_client_certificate() {
    let python = support::python_with_paho();
    let pki = Pki::new("paho-tls");
    let b = start_tls(&pki, |c| c.listeners[0].cafile = Some(pki.ca_file.clone()));
    let script = support::interop_dir().join("paho_roundtrip.py");
    let port = b.addr.port().to_string();
    let ca = pki.ca_file.display().to_string();
    let (cert, key) = (pki.client_cert.display().to_string(), pki.client_key.display().to_string());
    for (protocol, with_cert) in [("4", false), ("5", true)] {
        let mut cmd = Command::new(python);
        cmd.arg(&script).args(["--port", &port, "--cafile", &ca, "--protocol", protocol]);
        if with_cert {
            cmd.args(["--cert", &cert, "--key", &key]);
        }
        let (ok, out, err) = run_bounded(&mut cmd, Duration::from_secs(20));
        assert!(ok && out.starts_with("OK hello over tcp tls"), "paho: {out}\n{err}");
    }
}

#[test]
fn sighup_reloads_the_certificates_of_the_tern_binary() {
    let pki = Pki::new("sighup");
    let config = pki.dir.path("tern.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nshards = 2\n[runtime]\npin_cores = false\n[log]\nlevel = \"info\"\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\ntransport = \"tls\"\n\
             certfile = {:?}\nkeyfile = {:?}\n",
            pki.server_cert.display().to_string(),
            pki.server_key.display().to_string()
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["--config", &config.display().to_string()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tern");
    let guard = KillOnDrop(child.id());
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = wait_for_line(&rx, "listening", Duration::from_secs(30))
        .and_then(|l| {
            l.split("addr=").nth(1).map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
        })
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .expect("tern logs its listening address");
    let old = TlsClient::default().connect(addr, &pki.ca_file).expect("tls");
    assert_eq!(server_cert_der(&old), file_cert_der(&pki.server_cert));
    let mut old = RawClient::new(old, V4);
    old.connect_ok("before-sighup");

    let (cert, key) = pki.issue_server("tern-after-sighup");
    std::fs::write(&pki.server_cert, cert).expect("write");
    std::fs::write(&pki.server_key, key).expect("write");
    let status =
        Command::new("kill").args(["-HUP", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    assert!(wait_for_line(&rx, "TLS certificates reloaded", Duration::from_secs(10)).is_some());
    // Both shards reload; give the second one its 100 ms poll.
    let new_der = file_cert_der(&pki.server_cert);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen_new = 0;
    while seen_new < 4 && Instant::now() < deadline {
        // A handshake can time out on a loaded 2-core machine; only answers count.
        let Ok(s) = TlsClient::default().connect(addr, &pki.ca_file) else { continue };
        if server_cert_der(&s) == new_der {
            seen_new += 1;
        }
    }
    assert_eq!(seen_new, 4, "new connections get the new certificate after SIGHUP");
    old.subscribe("alive", QoS::AtMostOnce);
    drop(guard);
    let _ = child.wait();
}

fn wait_for_line(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Stops the child broker (SIGTERM: graceful) when the test ends, even on failure.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.to_string()]).status();
    }
}

/// Connection storms (issue 11): a TLS handshake holds one of the shard's
/// `limits.connecting_max` places. With one place, a client that opened TCP and never starts its
/// handshake keeps the next client's handshake waiting (in the listen backlog, counted in
/// `accepts_deferred`) until it goes away; then the next is served [MQTT-3.2.0-1].
#[test]
fn a_tls_handshake_holds_a_connecting_place() {
    let pki = Pki::new("tls-storm");
    let b = start_with(1, |c| {
        tls_listener(c, &pki);
        c.limits.connecting_max = 1;
    });
    let silent = std::net::TcpStream::connect(b.addr).expect("tcp connect");
    let deadline = Instant::now() + Duration::from_secs(6);
    while b.stats.total().accepts_deferred == 0 {
        assert!(Instant::now() < deadline, "the accept loop never waited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, ca) = (b.addr, pki.ca_file.clone());
    let client = std::thread::spawn(move || {
        let tls = TlsClient::default().connect(addr, &ca).map_err(|e| e.to_string());
        let _ = tx.send(());
        tls
    });
    assert!(rx.recv_timeout(Duration::from_millis(1_500)).is_err(), "handshake waits");
    drop(silent);
    let tls = client.join().expect("client thread").expect("handshake once the place is free");
    let mut c = RawClient::new(tls, V4);
    c.connect_ok("tls-storm");
}

/// Runs `attack` (one or more hostile connections to the TLS listener) beside a TLS subscriber,
/// then checks that the broker still serves: a new TLS publisher's QoS 1 message reaches the
/// subscriber.
fn carries_on_after(name: &str, attack: impl FnOnce(SocketAddr, &Pki)) {
    let pki = Pki::new(name);
    let b = start_tls(&pki, |_| {});
    let mut good =
        RawClient::new(TlsClient::default().connect(b.addr, &pki.ca_file).expect("handshake"), V4);
    good.connect_ok("tls-good");
    good.subscribe("still/#", QoS::AtLeastOnce);
    attack(b.addr, &pki);
    let mut publisher =
        RawClient::new(TlsClient::default().connect(b.addr, &pki.ca_file).expect("handshake"), V4);
    publisher.connect_ok("tls-publisher");
    publisher.publish("still/up", b"yes", QoS::AtLeastOnce, 1, false);
    let got = good.recv_publish();
    assert_eq!(&got.payload[..], b"yes", "the broker and the other connection carry on");
}

/// Six bytes and a close crashed the broker: a handshake record holding one byte of a
/// handshake message (`16 03 03 00 01 00`), then end of stream. rustls keeps such a record
/// until the message is whole; the failed handshake then asked rustls for its alert over an
/// empty buffer, which its progress pointed past, and rustls panicked on the slice (found by the
/// `tls_stream` fuzz body, `tests/parsers_props.rs`, on its first run). Now the alert is taken
/// over the same buffer and rustls is never called after an error; the broker, and TLS clients
/// connected beside it, carry on. Each shard gets a few of these.
#[test]
fn a_cut_handshake_message_then_end_of_stream_does_not_crash_the_broker() {
    carries_on_after("tls-cut-handshake", |addr, _| {
        for _ in 0..8 {
            let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
            tcp.write_all(&[0x16, 0x03, 0x03, 0x00, 0x01, 0x00]).expect("write");
            tcp.shutdown(std::net::Shutdown::Write).expect("half close");
            tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest); // the broker's alert, if any, then its close
        }
    });
}

/// A client that completes the TLS handshake and then sends a record that does not decrypt
/// loses its own connection only; one that sends a cut record after the handshake just waits
/// for the rest. The broker, and a TLS client connected beside it, carry on.
#[test]
fn a_record_that_does_not_decrypt_closes_only_that_connection() {
    carries_on_after("tls-forged-record", |addr, pki| {
        for forged in [
            // Application data (0x17), TLS 1.2 legacy version, 40 bytes that are no ciphertext.
            [&[0x17u8, 0x03, 0x03, 0x00, 0x28][..], &[0xAB; 40]].concat(),
            // A handshake record after the handshake, cut short.
            vec![0x16, 0x03, 0x03, 0x00, 0x10, 0x01, 0x02],
        ] {
            let mut bad = TlsClient::default().connect(addr, &pki.ca_file).expect("handshake");
            // Raw bytes on the socket, under the TLS layer.
            bad.sock.write_all(&forged).expect("write");
            bad.sock.flush().expect("flush");
            bad.sock.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            let mut rest = Vec::new();
            // The broker closes it (an alert may come first), or waits for the rest of the cut
            // record: end of stream, a reset or the timeout.
            let _ = bad.sock.read_to_end(&mut rest);
        }
    });
}
