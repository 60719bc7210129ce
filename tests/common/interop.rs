//! Helpers shared by the transport tests (`tests/tls.rs`, `tests/ws.rs`, `tests/browser.rs`,
//! `tests/cve.rs`, `tests/bridge_mosquitto.rs`), part of the one test support module `common`:
//! test certificates generated at run time with rcgen (no private key is committed), a rustls
//! client, and a small WebSocket client that can split and pack frames as the tests need. MQTT
//! goes over either through `common::RawClient` (both are a `common::Transport`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

pub use super::process::TempDir;

// ------------------------------------------------------------------------------------------------
// Certificates.
// ------------------------------------------------------------------------------------------------

/// A certificate authority that issues server and client certificates, all written as PEM
/// files into `dir`.
pub struct Pki {
    pub dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate, PEM file.
    pub ca_file: PathBuf,
    /// A server certificate for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate with subject CN `device-42`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("Tern test CA {tag}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).expect("CA cert");
        let ca_file = dir.path("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        let pki = Pki {
            ca_file,
            server_cert: dir.path("server.pem"),
            server_key: dir.path("server-key.pem"),
            client_cert: dir.path("client.pem"),
            client_key: dir.path("client-key.pem"),
            dir,
            ca,
            ca_key,
        };
        let (cert, key) = pki.issue_server("tern-test-server");
        std::fs::write(&pki.server_cert, cert).expect("write");
        std::fs::write(&pki.server_key, key).expect("write");
        let (cert, key) = pki.issue_client("device-42");
        std::fs::write(&pki.client_cert, cert).expect("write");
        std::fs::write(&pki.client_key, key).expect("write");
        pki
    }

    /// A server certificate (PEM chain, PEM key) for localhost and 127.0.0.1 with subject `cn`.
    pub fn issue_server(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("dns name")),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate (PEM, PEM key) with subject CN `cn`.
    pub fn issue_client(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::OrganizationName, "Tern tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a client certificate for `cn` and returns (cert file, key file).
    pub fn client_files(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue_client(cn);
        let (c, k) = (self.dir.path(&format!("{cn}.pem")), self.dir.path(&format!("{cn}-key.pem")));
        std::fs::write(&c, cert).expect("write");
        std::fs::write(&k, key).expect("write");
        (c, k)
    }
}

fn pem_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .expect("read PEM")
        .collect::<Result<_, _>>()
        .expect("PEM certs")
}

// ------------------------------------------------------------------------------------------------
// A rustls client.
// ------------------------------------------------------------------------------------------------

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl super::Transport for TlsStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
}

/// Client options: which TLS versions, and an optional client certificate.
#[derive(Default, Clone)]
pub struct TlsClient {
    pub tls12_only: bool,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsClient {
    pub fn config(&self, ca_file: &Path) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(ca_file) {
            roots.add(c).expect("CA");
        }
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                use rustls::pki_types::pem::PemObject;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
                builder.with_client_auth_cert(pem_certs(cert), key).expect("client cert")
            }
        };
        Arc::new(config)
    }

    /// Connects and completes the handshake (an error if the server refuses it).
    pub fn connect(&self, addr: SocketAddr, ca_file: &Path) -> io::Result<TlsStream> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(super::client::RECV_TIMEOUT))?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let conn =
            rustls::ClientConnection::new(self.config(ca_file), name).map_err(io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(s)
    }
}

/// The DER of the certificate the server presented.
pub fn server_cert_der(s: &TlsStream) -> Vec<u8> {
    s.conn.peer_certificates().and_then(|c| c.first()).expect("server certificate").to_vec()
}

/// The DER of the first certificate in a PEM file.
pub fn file_cert_der(path: &Path) -> Vec<u8> {
    pem_certs(path)[0].to_vec()
}

// ------------------------------------------------------------------------------------------------
// A WebSocket client.
// ------------------------------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub op: u8,
    pub payload: Vec<u8>,
}

/// A masked client frame (the crate's one builder, with a fixed mask).
pub fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    tern::net::ws::frame::client_frame(
        if fin { 0x80 } else { 0 } | op,
        payload,
        [0x11, 0x7E, 0xC3, 0x05],
    )
}

/// A WebSocket client over `S`. As `Read + Write` it carries MQTT bytes: each write is one
/// binary frame, reads return binary payloads, answer nothing, and end (Ok(0)) at a close frame.
pub struct WsClient<S> {
    pub s: S,
    /// Payload bytes of received binary frames not yet read.
    pending: Vec<u8>,
    /// Control frames received (pongs, close), in order.
    pub control: Vec<Frame>,
}

/// The upgrade request for `path` offering `protocols` (e.g. "mqtt").
pub fn upgrade_request(path: &str, protocols: Option<&str>) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Reads an HTTP response head (up to the blank line) byte by byte, so nothing after it is
/// consumed. A head cut short ends with a note saying why (EOF, or the read error and when), so
/// a failing assertion on it tells a reset from a timeout.
pub fn read_http_head<S: Read>(s: &mut S) -> String {
    let started = std::time::Instant::now();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => {
                head.extend_from_slice(b"[EOF before the end of the head]");
                break;
            }
            Err(e) => {
                let note = format!("[read failed after {:?}: {e}]", started.elapsed());
                head.extend_from_slice(note.as_bytes());
                break;
            }
        }
        assert!(head.len() < 16 * 1024, "response head too long");
    }
    String::from_utf8_lossy(&head).into_owned()
}

impl<S: Read + Write> WsClient<S> {
    /// Sends the upgrade request and checks the 101 response.
    pub fn upgrade(mut s: S, path: &str) -> Self {
        s.write_all(upgrade_request(path, Some("mqtt")).as_bytes()).expect("write");
        s.flush().expect("flush");
        let head = read_http_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101 "), "upgrade refused: {head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
        assert!(head.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{head}");
        Self { s, pending: Vec::new(), control: Vec::new() }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write");
        self.s.flush().expect("flush");
    }

    pub fn send_frame(&mut self, fin: bool, op: u8, payload: &[u8]) {
        self.send_raw(&client_frame(fin, op, payload));
    }

    /// The next frame from the server, or None on EOF / error.
    pub fn read_frame(&mut self) -> Option<Frame> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7F {
            126 => {
                let mut l = [0u8; 2];
                self.s.read_exact(&mut l).ok()?;
                u64::from(u16::from_be_bytes(l))
            }
            127 => {
                let mut l = [0u8; 8];
                self.s.read_exact(&mut l).ok()?;
                u64::from_be_bytes(l)
            }
            l => u64::from(l),
        };
        let mut payload = vec![0u8; len as usize];
        self.s.read_exact(&mut payload).ok()?;
        Some(Frame { fin: h[0] & 0x80 != 0, op: h[0] & 0x0F, payload })
    }

    /// Reads frames until a control frame arrives (binary payloads are kept for `read`).
    pub fn next_control(&mut self) -> Option<Frame> {
        loop {
            let f = self.read_frame()?;
            if f.op == OP_BINARY || f.op == OP_CONT {
                self.pending.extend_from_slice(&f.payload);
            } else {
                return Some(f);
            }
        }
    }
}

impl<S: super::Transport> super::Transport for WsClient<S> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.s.set_read_timeout(timeout)
    }
}

impl<S: Read + Write> Read for WsClient<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            let Some(f) = self.read_frame() else {
                return Err(io::ErrorKind::TimedOut.into());
            };
            match f.op {
                OP_BINARY | OP_CONT => self.pending = f.payload,
                OP_CLOSE => {
                    self.control.push(f);
                    return Ok(0);
                }
                _ => self.control.push(f),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

impl<S: Read + Write> Write for WsClient<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.s.write_all(&client_frame(true, OP_BINARY, buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

/// A TCP connection to `addr` with reads bounded by [`super::client::RECV_TIMEOUT`].
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(super::client::RECV_TIMEOUT)).expect("timeout");
    s
}

// ------------------------------------------------------------------------------------------------
// Child processes (openssl, python, chromium), always bounded in time.
// ------------------------------------------------------------------------------------------------

/// Runs `cmd` to completion within `timeout`, killing it otherwise. Returns (status success,
/// stdout, stderr).
pub fn run_bounded(cmd: &mut std::process::Command, timeout: Duration) -> (bool, String, String) {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = super::poll_until(timeout, || child.try_wait().expect("wait"));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (out, mut err) = (out_t.join().expect("join"), err_t.join().expect("join"));
    if status.is_none() {
        err.push_str(&format!("\n[killed after {timeout:?}]"));
    }
    (status.is_some_and(|s| s.success()), out, err)
}

/// The directory of the interop scripts.
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Python 3 with paho-mqtt 2, or a panic that says how to get it (scripts/test.sh installs it).
pub fn python_with_paho() -> &'static str {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt; assert paho.mqtt.__version__.startswith('2')"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with paho-mqtt 2.x is required (scripts/test.sh installs it: \
         python3 -m pip install 'paho-mqtt>=2,<3')"
    );
    "python3"
}
