//! What an idle TLS connection costs on the heap (issue 11), measured with a counting
//! allocator over an in-memory transport: rustls' buffered `ServerConnection` (what
//! futures-rustls wraps, the stream before Tern's own) against Tern's [`TlsStream`] and the
//! state a parked TLS connection keeps ([`ParkedTls`]). Each number is the heap freed when the
//! connection state is dropped after a handshake and one round trip of application data, so it
//! is what the connection holds while idle. `cargo test --test tls_footprint -- --nocapture`
//! prints them.

use std::alloc::System;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

#[path = "common/pipe.rs"]
mod pipe;
use pipe::{Bytes, Pipe};

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tern::net::tls::{self, ParkedTls, TlsStream};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap a parked TLS connection may keep on Tern's record layer: per direction the cipher, key,
/// IV and sequence number (TLS 1.2: 144 B measured, x86-64, ring) and, for TLS 1.3, rustls'
/// `KernelConnection` for key updates (its key schedule: 928 B in all measured), which also
/// keeps the client's certificate chain when there is one (1 434 B measured with a small
/// rcgen chain). Before Tern's record layer the parked state was rustls' whole connection:
/// 1 088 B inline and ~2 200 B heap.
fn parked_tls_heap_max(tls12: bool, with_cert: bool) -> usize {
    match (tls12, with_cert) {
        (true, _) => 256,
        (false, false) => 1_024,
        (false, true) => 1_536,
    }
}

/// The bytes in flight: (client to server, server to client).
type Pipes = (Bytes, Bytes);

struct Pki {
    _dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
    client_cert: (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let server = server.signed_by(&key, &ca, &ca_key).expect("server");
    let ckey = rcgen::KeyPair::generate().expect("key");
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    client.distinguished_name.push(rcgen::DnType::CommonName, "device-1");
    let client = client.signed_by(&ckey, &ca, &ca_key).expect("client");
    let dir = tempfile::tempdir().expect("dir");
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("ca.pem"), ca.pem()).expect("write");
    std::fs::write(path("server.pem"), server.pem()).expect("write");
    std::fs::write(path("server-key.pem"), key.serialize_pem()).expect("write");
    let spec = tls::TlsSpec {
        certfile: path("server.pem"),
        keyfile: path("server-key.pem"),
        cafile: Some(path("ca.pem")),
        require_certificate: false,
        use_identity_as_username: false,
    };
    let server = tls::server_config(&spec).expect("server config");
    let ckey = rustls::pki_types::PrivateKeyDer::try_from(ckey.serialize_der()).expect("key der");
    Pki {
        _dir: dir,
        server,
        client_cert: (vec![client.der().clone()], ckey),
        ca_der: ca.der().clone(),
    }
}

fn client(p: &Pki, tls12: bool, with_cert: bool) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(p.ca_der.clone()).expect("ca");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls12 { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13] };
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let config = if with_cert {
        b.with_client_auth_cert(p.client_cert.0.clone(), p.client_cert.1.clone_key()).expect("cert")
    } else {
        b.with_no_client_auth()
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    rustls::ClientConnection::new(Arc::new(config), name).expect("client")
}

/// Moves the client's records into `to_server` and the server's into the client.
fn shuttle(
    c: &mut rustls::ClientConnection,
    to_server: &RefCell<VecDeque<u8>>,
    to_client: &RefCell<VecDeque<u8>>,
) {
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

/// Polls `fut` to completion, moving records between it and the client after each poll.
fn drive<T>(
    mut fut: Pin<&mut impl std::future::Future<Output = T>>,
    c: &mut rustls::ClientConnection,
    pipes: &Pipes,
) -> T {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    for _ in 0..100 {
        if let Poll::Ready(x) = fut.as_mut().poll(&mut cx) {
            shuttle(c, &pipes.0, &pipes.1);
            return x;
        }
        shuttle(c, &pipes.0, &pipes.1);
    }
    panic!("no progress in 100 polls");
}

/// Handshake and one round trip through Tern's stream; returns the stream and the client.
fn tern_stream(
    p: &Pki,
    tls12: bool,
    with_cert: bool,
) -> (TlsStream<Pipe>, rustls::ClientConnection) {
    let pipes = (Rc::default(), Rc::default());
    let io = Pipe::new(&pipes.0, &pipes.1);
    let mut c = client(p, tls12, with_cert);
    c.writer().write_all(b"ping").expect("plaintext");
    let accept = std::pin::pin!(TlsStream::accept(Arc::clone(&p.server), io));
    let mut s = drive(accept, &mut c, &pipes).expect("handshake");
    assert_eq!(s.peer_certificates().is_some(), with_cert);
    let mut buf = [0u8; 16];
    let n = drive(std::pin::pin!(s.read(&mut buf)), &mut c, &pipes).expect("read");
    assert_eq!(&buf[..n], b"ping");
    drive(std::pin::pin!(s.write_all(b"pong")), &mut c, &pipes).expect("write");
    drive(std::pin::pin!(s.flush()), &mut c, &pipes).expect("flush");
    let mut got = [0u8; 4];
    c.reader().read_exact(&mut got).expect("client read");
    assert_eq!(&got, b"pong");
    (s, c)
}

/// Handshake and one round trip through rustls' buffered connection; returns it.
fn buffered(p: &Pki, tls12: bool, with_cert: bool) -> rustls::ServerConnection {
    let mut c = client(p, tls12, with_cert);
    let mut s = rustls::ServerConnection::new(Arc::clone(&p.server)).expect("server");
    c.writer().write_all(b"ping").expect("plaintext");
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client records");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
            s.process_new_packets().expect("server state");
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server records");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            c.process_new_packets().expect("client state");
        }
    }
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).expect("server read");
    s.writer().write_all(b"pong").expect("server write");
    let mut buf = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut buf).expect("server records");
    }
    s
}

fn freed_by_drop<T>(x: T) -> usize {
    let region = Region::new(GLOBAL);
    drop(x);
    let c = region.change();
    if std::env::var_os("TERN_FOOTPRINT_DETAIL").is_some() {
        println!("  freed {} B in {} allocations", c.bytes_deallocated, c.deallocations);
    }
    c.bytes_deallocated
}

/// An idle connection on Tern's stream holds no buffer; the parked state (Tern's record layer
/// without expanded keys) stays within [`parked_tls_heap_max`] and is much smaller than rustls' buffered
/// connection, on TLS 1.3 and 1.2, with and without a client certificate.
#[test]
fn idle_tls_state_has_no_buffers_and_stays_within_its_budget() {
    let p = pki();
    assert!(std::mem::size_of::<ParkedTls>() <= 2 * std::mem::size_of::<usize>(), "one box");
    for (tls12, with_cert) in [(false, false), (true, false), (false, true), (true, true)] {
        let label = format!("TLS 1.{} client cert {with_cert}", if tls12 { 2 } else { 3 });
        let old = freed_by_drop(buffered(&p, tls12, with_cert));
        let (s, _c) = tern_stream(&p, tls12, with_cert);
        assert_eq!(s.buffered_capacity(), 0, "{label}: idle stream holds buffers");
        assert!(s.parkable(), "{label}: an idle stream can park");
        let (_io, parked) = s.into_parked();
        assert!(parked.on_own_records(), "{label}: parked on Tern's record layer");
        let new = freed_by_drop(parked);
        println!(
            "{label}: rustls ServerConnection {old} B heap + {} B inline; \
             parked Tern TLS {new} B heap + {} B inline",
            std::mem::size_of::<rustls::ServerConnection>(),
            std::mem::size_of::<ParkedTls>(),
        );
        println!(
            "  rustls UnbufferedServerConnection inline {} B; Tern's Records {} B (boxed), \
             and for TLS 1.3 rustls' KernelConnection {} B (boxed) and its state",
            std::mem::size_of::<rustls::server::UnbufferedServerConnection>(),
            std::mem::size_of::<tls::records::Records>(),
            std::mem::size_of::<
                rustls::kernel::KernelConnection<rustls::server::ServerConnectionData>,
            >(),
        );
        println!(
            "  while active only: two expanded ring keys, {} B each (boxed together)",
            std::mem::size_of::<ring::aead::LessSafeKey>()
        );
        let max = parked_tls_heap_max(tls12, with_cert);
        assert!(new <= max, "{label}: parked TLS state {new} B > {max}");
        assert!(
            new + 2048 <= old + std::mem::size_of::<rustls::ServerConnection>(),
            "{label}: {new} vs {old}"
        );
    }
}

/// A stream with a partial record cannot park (the record's head lives only in its buffer);
/// once the record is whole it decrypts and the stream can park again.
#[test]
fn a_partial_record_keeps_the_stream_from_parking() {
    let p = pki();
    let pipes: Pipes = (Rc::default(), Rc::default());
    let io = Pipe::new(&pipes.0, &pipes.1);
    let mut c = client(&p, false, false);
    let accept = std::pin::pin!(TlsStream::accept(Arc::clone(&p.server), io));
    let mut s = drive(accept, &mut c, &pipes).expect("handshake");
    assert!(s.parkable());
    c.writer().write_all(b"split across reads").expect("plaintext");
    let mut records = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut records).expect("records");
    }
    let cut = records.len() - 7;
    pipes.0.borrow_mut().extend(&records[..cut]);
    let mut buf = [0u8; 64];
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(Pin::new(&mut s).poll_read(&mut cx, &mut buf).is_pending(), "no whole record yet");
    assert!(!s.parkable(), "parkable with a partial record");
    assert!(s.buffered_capacity() > 0);
    pipes.0.borrow_mut().extend(&records[cut..]);
    match Pin::new(&mut s).poll_read(&mut cx, &mut buf) {
        Poll::Ready(Ok(n)) => assert_eq!(&buf[..n], b"split across reads"),
        other => panic!("expected the plaintext, got {other:?}"),
    }
    assert!(s.parkable());
    assert_eq!(s.buffered_capacity(), 0);
}

/// Closing the stream sends close_notify: the client sees a clean end of stream, not a
/// truncation.
#[test]
fn close_sends_close_notify() {
    let p = pki();
    let pipes: Pipes = (Rc::default(), Rc::default());
    let io = Pipe::new(&pipes.0, &pipes.1);
    let mut c = client(&p, true, false);
    let accept = std::pin::pin!(TlsStream::accept(Arc::clone(&p.server), io));
    let mut s = drive(accept, &mut c, &pipes).expect("handshake");
    drive(std::pin::pin!(s.close()), &mut c, &pipes).expect("close");
    let mut buf = [0u8; 8];
    assert_eq!(c.reader().read(&mut buf).expect("clean end"), 0);
}
