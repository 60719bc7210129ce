//! TLS for the load generator's connections (`--tls-ca FILE` or `--tls-insecure`): a rustls
//! client connection beside each non-blocking socket, so `conn` can measure the broker's memory
//! per idle TLS connection (issue 11). The handshake runs inside the first reads and writes.
//! [`Sock`] also carries the WebSocket layer (`--ws`, `crate::ws`) above TCP or TLS.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConnection;

use crate::scenario::Scenario;

/// The client configuration of a scenario (`None`: plain TCP).
pub fn client_config(
    s: &Scenario,
) -> Result<Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>> {
    if !s.tls_insecure && s.tls_ca.is_none() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if s.tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .context("TLS versions")?;
    let config = if let Some(ca) = &s.tls_ca {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("{ca}: read"))? {
            roots.add(cert.with_context(|| format!("{ca}: bad PEM"))?).context("CA certificate")?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    };
    let name = ServerName::try_from(s.tls_server_name.clone()).context("--tls-server-name")?;
    Ok(Some((Arc::new(config), name)))
}

/// A connection's socket, with TLS and/or WebSocket framing when the scenario asks for them.
pub struct Sock {
    pub tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
    ws: Option<Box<crate::ws::WsClient>>,
}

impl Sock {
    /// `tcp`, wrapped in a TLS client for `config` and, with `ws` (host, path), in WebSocket
    /// frames.
    pub fn new(
        tcp: TcpStream,
        config: Option<&(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        ws: Option<(&str, &str)>,
        seed: u32,
    ) -> std::io::Result<Self> {
        let tls = match config {
            None => None,
            Some((config, name)) => Some(Box::new(
                ClientConnection::new(Arc::clone(config), name.clone())
                    .map_err(std::io::Error::other)?,
            )),
        };
        let ws = ws.map(|(host, path)| Box::new(crate::ws::WsClient::new(host, path, seed)));
        Ok(Self { tcp, tls, ws })
    }

    /// Plaintext (MQTT bytes) from the broker; `WouldBlock` when there is none yet (the
    /// handshakes too run here), `Ok(0)` at the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(ws) = self.ws.as_deref_mut() else {
            return read_raw(&mut self.tcp, self.tls.as_deref_mut(), buf);
        };
        // Bounded: every pass reads socket bytes or returns.
        loop {
            match ws.read_into(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                r => return r,
            }
            let mut raw = [0u8; 16 << 10];
            let n = read_raw(&mut self.tcp, self.tls.as_deref_mut(), &mut raw)?;
            if n == 0 {
                return Ok(0);
            }
            ws.ingest(&raw[..n])?;
            // Pongs for pings, if any (the next writable event sends what does not fit).
            match flush_ws(&mut self.tcp, self.tls.as_deref_mut(), ws) {
                Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }

    /// Takes MQTT bytes for the broker (buffered by rustls during the handshake, or framed
    /// and buffered here behind the WebSocket request).
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let Some(ws) = self.ws.as_deref_mut() else {
            return write_raw(&mut self.tcp, self.tls.as_deref_mut(), data);
        };
        // Frames already made go first; new ones only once they are gone (bounded buffer).
        flush_ws(&mut self.tcp, self.tls.as_deref_mut(), ws)?;
        ws.frame(data);
        match flush_ws(&mut self.tcp, self.tls.as_deref_mut(), ws) {
            Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
            _ => Ok(data.len()),
        }
    }

    /// Sends what rustls and the WebSocket layer hold (on a writable event); `WouldBlock`
    /// when the socket is full.
    pub fn flush_tls(&mut self) -> std::io::Result<()> {
        if let Some(tls) = self.tls.as_deref_mut() {
            send_tls(tls, &mut self.tcp)?;
        }
        match self.ws.as_deref_mut() {
            None => Ok(()),
            Some(ws) => flush_ws(&mut self.tcp, self.tls.as_deref_mut(), ws),
        }
    }
}

/// Plaintext from the socket, through TLS when there is a TLS client.
fn read_raw(
    tcp: &mut TcpStream,
    tls: Option<&mut ClientConnection>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let Some(tls) = tls else { return tcp.read(buf) };
    // Bounded: every pass reads socket bytes or returns.
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if tls.read_tls(tcp)? == 0 {
            return Ok(0);
        }
        tls.process_new_packets().map_err(std::io::Error::other)?;
        match send_tls(tls, tcp) {
            Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
    }
}

/// Bytes to the socket, through TLS when there is a TLS client.
fn write_raw(
    tcp: &mut TcpStream,
    tls: Option<&mut ClientConnection>,
    data: &[u8],
) -> std::io::Result<usize> {
    let Some(tls) = tls else { return tcp.write(data) };
    send_tls(tls, tcp)?;
    let n = tls.writer().write(data)?;
    match send_tls(tls, tcp) {
        Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
        _ => Ok(n),
    }
}

/// Writes the WebSocket layer's pending bytes; `WouldBlock` when some are left.
fn flush_ws(
    tcp: &mut TcpStream,
    mut tls: Option<&mut ClientConnection>,
    ws: &mut crate::ws::WsClient,
) -> std::io::Result<()> {
    // Bounded: every pass writes bytes or returns.
    while !ws.out.is_empty() {
        let n = write_raw(tcp, tls.as_deref_mut(), &ws.out)?;
        if n == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        ws.out.drain(..n);
    }
    Ok(())
}

fn send_tls(tls: &mut ClientConnection, tcp: &mut TcpStream) -> std::io::Result<()> {
    // Bounded: every pass writes bytes or returns.
    while tls.wants_write() {
        if tls.write_tls(tcp)? == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// Accepts any server certificate: `--tls-insecure`, for loopback measurements only.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
