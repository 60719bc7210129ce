//! TLS listeners: builds the rustls `ServerConfig` from PEM files (certificate chain, key, and
//! the CA for client certificates), reads the client certificate's subject CN for
//! `use_identity_as_username`, and is Tern's TLS stream ([`TlsStream`]).
//!
//! Reloading (SIGHUP) is building a new config with [`server_config`] and swapping the `Arc`
//! each shard hands to new connections; connections already up keep the config they started
//! with.
//!
//! The stream drives rustls' unbuffered connection ([`UnbufferedServerConnection`]) itself,
//! so that an idle connection holds no buffer at all (issue 11): ciphertext is read into one
//! scratch buffer per thread and decrypted from there, and the only per-connection buffers are
//! a partial record (the tail of a read that did not end on a record boundary), plaintext the
//! reader has not taken yet, and ciphertext the socket has not taken yet. Each is freed as soon
//! as it is empty. rustls' buffered `ServerConnection` (which futures-rustls wrapped, before
//! this stream) keeps a 4 KiB receive buffer for the connection's life.
//!
//! rustls runs the handshake only. At the first read or write after it (so the caller can take
//! the client's certificate first, [`TlsStream::peer_certificates`]) rustls hands the traffic
//! keys over and Tern's own record layer ([`records`]) seals and opens the records; what a
//! parked TLS connection keeps ([`TlsStream::into_parked`]) is that layer without its expanded
//! keys: cipher, keys, IVs, sequence numbers, and for TLS 1.3 rustls' key schedule for key
//! updates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use rustls::server::{UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

pub mod records;

/// Largest PEM file read, so a wrong path (a log, a device) cannot eat memory.
const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// What a TLS listener is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSpec {
    /// PEM certificate chain, leaf first.
    pub certfile: PathBuf,
    /// PEM private key of the leaf.
    pub keyfile: PathBuf,
    /// PEM CA certificates client certificates must chain to; `None`: none are requested.
    pub cafile: Option<PathBuf>,
    /// Refuse clients without a valid certificate.
    pub require_certificate: bool,
    /// The certificate's subject CN replaces the CONNECT user name.
    pub use_identity_as_username: bool,
}

/// Why a TLS configuration could not be built. Names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not what it should be (no certificate, bad PEM, larger than 1 MiB, ...).
    #[error("{}: {reason}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("{certfile} with {keyfile}: {reason}")]
    Config {
        /// The certificate file, for the message.
        certfile: String,
        /// The key file, for the message.
        keyfile: String,
        /// rustls' reason.
        reason: String,
    },
}

/// Builds the server configuration for `spec`: TLS 1.3 and 1.2 with the ring provider, the
/// certificate chain and key, and client certificate verification when `cafile` is set.
pub fn server_config(spec: &TlsSpec) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = read_certs(&spec.certfile)?;
    let key_pem = read_pem_file(&spec.keyfile)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Content {
        path: spec.keyfile.clone(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |reason: String| TlsError::Config {
        certfile: spec.certfile.display().to_string(),
        keyfile: spec.keyfile.display().to_string(),
        reason,
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config_error(e.to_string()))?;
    let builder = match &spec.cafile {
        None => builder.with_no_client_auth(),
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(cafile)? {
                roots.add(cert).map_err(|e| TlsError::Content {
                    path: cafile.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier =
                if spec.require_certificate { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(|e| TlsError::Content {
                path: cafile.clone(),
                reason: format!("cannot verify client certificates with it: {e}"),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder.with_single_cert(chain, key).map_err(|e| config_error(e.to_string()))?;
    // After the handshake the traffic keys move to Tern's own record layer (records.rs).
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_error = |source| TlsError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        let reason = format!("larger than {PEM_FILE_BYTES_MAX} bytes");
        return Err(TlsError::Content { path: path.to_owned(), reason });
    }
    Ok(bytes)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem_file(path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let certs = certs.map_err(|e| TlsError::Content {
        path: path.to_owned(),
        reason: format!("bad PEM: {e}"),
    })?;
    if certs.is_empty() {
        let reason = "no CERTIFICATE block".to_owned();
        return Err(TlsError::Content { path: path.to_owned(), reason });
    }
    Ok(certs)
}

/// The subject common name (OID 2.5.4.3) of a DER certificate: the first one, as Mosquitto
/// takes it. `None` when the DER is not a certificate, or it has no CN, or the CN is not a
/// UTF8String, PrintableString, IA5String or (ASCII-only) TeletexString, or is empty or holds
/// U+0000.
///
/// rustls has already verified the certificate; the DER is still parsed by `x509-cert`, which
/// checks every length, rather than trusted.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    use x509_cert::der::{Decode, Tag, Tagged};
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    let atv = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == CN)?;
    let text = match atv.value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => atv.value.value(),
        Tag::TeletexString if atv.value.value().is_ascii() => atv.value.value(),
        _ => return None,
    };
    let s = std::str::from_utf8(text).ok()?;
    (!s.is_empty() && !s.contains('\0')).then(|| s.to_owned())
}

/// Largest TLS record on the wire: the 5-byte header and 2^14 + 2048 bytes of ciphertext (TLS
/// 1.2 allows the most). A partial record kept between reads is shorter.
const RECORD_BYTES_MAX: usize = 5 + (1 << 14) + 2048;
/// Ciphertext read from the socket per read at most (after a partial record).
const READ_BYTES: usize = 32 * 1024;
/// Plaintext encrypted per `poll_write` at most (four full records): bounds the ciphertext a
/// connection holds while the socket does not take it.
const WRITE_CHUNK_BYTES: usize = 4 << 14;
/// Unsent ciphertext above which a read waits for the socket to take it: a write's chunk and
/// as much again of answers queued while reading (key updates), so a peer that sends key
/// updates and reads nothing is not read from until it does.
const TX_HELD_MAX: usize = 2 * WRITE_CHUNK_BYTES;
/// Reads of the socket in one `poll_read` that produced no plaintext (handshake or empty
/// records) before the task yields, so a peer cannot hold the shard with records that carry
/// nothing.
const EMPTY_READS_PER_POLL: usize = 8;

thread_local! {
    /// The ciphertext read buffer shared by every TLS connection of the thread (shard): a
    /// partial record left from the last read, then what the socket gives. Borrowed only inside
    /// one poll.
    static CIPHERTEXT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where the rustls state machine stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// It needs more records from the peer (the handshake, or a partial record).
    NeedData,
    /// The handshake is done and nothing is left to process: application data may be sent.
    Writable,
    /// The peer sent close_notify.
    PeerClosed,
}

fn tls_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// Appends to `tx` what a rustls call writes into a buffer it sizes: `write` gets the free
/// space and returns the bytes written, or the size it needs.
fn append_with<E: std::fmt::Display>(
    tx: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Result<usize, E>>,
) -> std::io::Result<()> {
    let at = tx.len();
    let mut room = guess;
    // Bounded: the second pass has the room rustls asked for.
    for _ in 0..2 {
        tx.resize(at + room, 0);
        match write(&mut tx[at..]) {
            Ok(n) => {
                tx.truncate(at + n);
                return Ok(());
            }
            Err(Ok(required)) if required > room => room = required,
            Err(Ok(_)) => break,
            Err(Err(e)) => {
                tx.truncate(at);
                return Err(tls_error(e));
            }
        }
    }
    tx.truncate(at);
    Err(tls_error("rustls kept asking for more output room"))
}

/// Runs rustls over `incoming` until it needs more records or the handshake is done:
/// plaintext goes to `sink`, the TLS messages to send are appended to `tx`. Returns how many
/// bytes of `incoming` are consumed (the rest is a partial record) and where it stopped.
fn pump(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    tx: &mut Vec<u8>,
    sink: &mut dyn FnMut(&[u8]),
) -> std::io::Result<(usize, Progress)> {
    use rustls::unbuffered::{ConnectionState, EncodeError, InsufficientSizeError};
    let mut used = 0;
    // Bounded: every pass consumes a record, hands out queued plaintext or TLS messages, or
    // returns.
    loop {
        // Once the client's Finished is processed the rest of the input is for Tern's record
        // layer (`records`): rustls is only drained of what it has to send (its tickets). Fed
        // more, it would act on a KeyUpdate there and seal an answer under a key the hand-over
        // drops (rustls keeps that answer outside what `dangerous_into_kernel_connection`
        // checks), leaving the client and Tern on different keys. rustls stops after Finished
        // to emit its tickets (`send_tls13_tickets` >= 1, the default), so nothing after
        // Finished reaches it.
        let rest: &mut [u8] = if conn.is_handshaking() { &mut incoming[used..] } else { &mut [] };
        let status = conn.process_tls_records(rest);
        let discard = status.discard;
        let state = match status.state {
            Ok(state) => state,
            Err(e) => {
                // rustls hands out the alert for the failure on the next call, which must see
                // the same rest of the buffer (its progress points into it); the caller never
                // calls it again after this.
                let next = conn.process_tls_records(&mut incoming[used + discard..]);
                if let Ok(ConnectionState::EncodeTlsData(mut alert)) = next.state {
                    let _ = append_with(tx, 64, |out| {
                        alert.encode(out).map_err(|err| match err {
                            EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            }) => Ok(required_size),
                            other => Err(other),
                        })
                    });
                }
                return Err(tls_error(e));
            }
        };
        let stop = match state {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    sink(record.map_err(tls_error)?.payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut e) => {
                append_with(tx, 512, |out| {
                    e.encode(out).map_err(|err| match err {
                        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                            Ok(required_size)
                        }
                        other => Err(other),
                    })
                })?;
                None
            }
            ConnectionState::TransmitTlsData(t) => {
                // Sent by the stream before it reads or writes anything else.
                t.done();
                None
            }
            ConnectionState::BlockedHandshake => Some(Progress::NeedData),
            ConnectionState::WriteTraffic(_) => Some(Progress::Writable),
            ConnectionState::PeerClosed => Some(Progress::PeerClosed),
            ConnectionState::Closed => Some(Progress::PeerClosed),
            // Early data is not enabled in the config; nothing else exists today.
            _ => return Err(tls_error("unexpected TLS state")),
        };
        used += discard;
        if let Some(stop) = stop {
            return Ok((used, stop));
        }
    }
}

/// The protocol engine of a stream: rustls during the handshake, Tern's own record layer
/// after it ([`records`]).
enum Layer {
    /// The handshake (and, until the first read or write after it, the finished connection,
    /// so the peer's certificates can be read).
    Handshake(Box<UnbufferedServerConnection>),
    /// After the handshake: keys, IVs and sequence numbers only.
    Records(Box<records::Records>),
    /// Handing over from rustls failed: the stream only returns errors.
    Gone,
}

/// What a parked TLS connection keeps: after the handshake, Tern's record layer without its
/// expanded keys (cipher, keys, IVs, sequence numbers, and for TLS 1.3 rustls' key schedule
/// for key updates) and no buffer. Built by [`TlsStream::into_parked`].
pub struct ParkedTls(Layer);

impl ParkedTls {
    /// Whether the connection runs on Tern's own record layer (else still on rustls).
    pub fn on_own_records(&self) -> bool {
        matches!(self.0, Layer::Records(_))
    }
}

/// A server-side TLS stream over `S` (glommio's `TcpStream` in the broker): rustls' unbuffered
/// API for the handshake, then Tern's record layer; see the module documentation for its
/// buffers.
pub struct TlsStream<S> {
    io: S,
    layer: Layer,
    /// The tail of the last read that is not a whole record yet; or, with `unread`, records
    /// that followed the client's Finished in the same read and are for Tern's record layer.
    partial: Vec<u8>,
    /// `partial` holds whole records not yet read (the handshake ended inside a read).
    unread: bool,
    /// Plaintext decrypted and not yet taken by the reader, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext to send, from `tx_at`.
    tx: Vec<u8>,
    tx_at: usize,
    /// The peer sent close_notify, or the socket reached its end.
    eof: bool,
    /// Our close_notify is queued.
    closing: bool,
    /// The protocol engine returned an error: it is never called again (after an error
    /// rustls' progress through the caller's buffer no longer matches any buffer we hold, and
    /// a call then panics inside rustls: found by the `tls_stream` fuzz body, a hostile client
    /// aborting the broker; Tern's record layer is not used after an error either).
    failed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Runs the server side of the handshake on `io` (bound it with a timer: a peer that stops
    /// mid-handshake keeps this waiting). Plaintext that arrives with the client's last
    /// handshake flight is kept for the first read.
    pub async fn accept(config: Arc<ServerConfig>, io: S) -> std::io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut s = Self::resume(io, ParkedTls(Layer::Handshake(Box::new(conn))));
        let result = std::future::poll_fn(|cx| s.poll_handshake(cx)).await;
        match result {
            Ok(()) => Ok(s),
            Err(e) => {
                // The alert `pump` queued for the failure, if the socket takes it at once.
                let _ = futures_lite::future::poll_once(std::future::poll_fn(|cx| s.poll_send(cx)))
                    .await;
                Err(e)
            }
        }
    }

    /// The stream of a parked connection, ready to serve again.
    pub fn resume(io: S, parked: ParkedTls) -> Self {
        let failed = matches!(parked.0, Layer::Gone);
        Self {
            io,
            layer: parked.0,
            partial: Vec::new(),
            unread: false,
            plain: Vec::new(),
            plain_at: 0,
            tx: Vec::new(),
            tx_at: 0,
            eof: false,
            closing: false,
            failed,
        }
    }

    /// Whether the connection can park now: the handshake is done and no byte is held (no
    /// partial record, no unread plaintext, no unsent ciphertext) and it is not closing.
    pub fn parkable(&self) -> bool {
        let done = match &self.layer {
            Layer::Handshake(conn) => !conn.is_handshaking(),
            Layer::Records(_) => true,
            Layer::Gone => false,
        };
        done && self.partial.is_empty()
            && self.plain.is_empty()
            && self.tx.is_empty()
            && !self.eof
            && !self.closing
            && !self.failed
    }

    /// Splits the stream into its transport and what a parked connection keeps: hands the
    /// connection over to Tern's record layer if that has not happened yet, and drops the
    /// expanded keys. Call only when [`Self::parkable`]; anything held would be lost.
    pub fn into_parked(mut self) -> (S, ParkedTls) {
        debug_assert!(self.parkable(), "invariant: only an idle TLS stream parks");
        // A failure leaves `Gone`: the resumed stream fails on its first use.
        let _ = self.switch();
        if let Layer::Records(r) = &mut self.layer {
            r.park();
        }
        (self.io, ParkedTls(self.layer))
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The client's certificate chain, leaf first (`None`: it sent none). Available from the
    /// end of [`Self::accept`] until the first read or write: after the hand-over to Tern's
    /// record layer this returns `None` (for TLS 1.3 rustls' `KernelConnection` still holds the
    /// chain, ~0.5 KB, and offers no way to read or drop it).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match &self.layer {
            Layer::Handshake(conn) => conn.peer_certificates(),
            _ => None,
        }
    }

    /// The negotiated protocol version (`None` during the handshake).
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.layer {
            Layer::Handshake(conn) => conn.protocol_version(),
            Layer::Records(r) => Some(match r.version() {
                records::Version::Tls13 => rustls::ProtocolVersion::TLSv1_3,
                records::Version::Tls12 => rustls::ProtocolVersion::TLSv1_2,
            }),
            Layer::Gone => None,
        }
    }

    /// Tern's record layer, once the stream runs on it (after the first read or write).
    pub fn records(&mut self) -> Option<&mut records::Records> {
        match &mut self.layer {
            Layer::Records(r) => Some(r),
            _ => None,
        }
    }

    /// Bytes this connection holds in its own buffers (their capacity): zero while idle.
    pub fn buffered_capacity(&self) -> usize {
        self.partial.capacity() + self.plain.capacity() + self.tx.capacity()
    }

    /// Hands a finished handshake over to Tern's record layer (a no-op during the handshake
    /// and after it). rustls' state is consumed; a failure leaves the stream failed.
    fn switch(&mut self) -> std::io::Result<()> {
        if !matches!(&self.layer, Layer::Handshake(conn) if !conn.is_handshaking()) {
            return Ok(());
        }
        let Layer::Handshake(conn) = std::mem::replace(&mut self.layer, Layer::Gone) else {
            return Ok(());
        };
        self.failed = true;
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(tls_error)?;
        let own = records::Records::new(secrets, kernel).map_err(tls_error)?;
        self.layer = Layer::Records(Box::new(own));
        self.failed = false;
        Ok(())
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Bounded: every pass reads from the socket (or returns).
        loop {
            std::task::ready!(self.poll_send(cx))?;
            let handshaking = match &self.layer {
                Layer::Handshake(conn) => conn.is_handshaking(),
                _ => false,
            };
            if !handshaking {
                return Poll::Ready(Ok(()));
            }
            let (n, _) = std::task::ready!(self.poll_fill(cx, &mut []))?;
            let still = matches!(&self.layer, Layer::Handshake(c) if c.is_handshaking());
            // The end of the stream after a complete handshake is the first read's to report
            // (the flight may have carried data and close_notify after Finished).
            if still && (n == 0 || self.eof) {
                return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Writes `tx` out before a read: `Ready(Ok)` once fewer than `TX_HELD_MAX` bytes wait
    /// (the socket registered the task for writability if any wait), `Pending` above that.
    fn poll_send_for_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.poll_send(cx) {
            Poll::Pending if self.tx.len() - self.tx_at >= TX_HELD_MAX => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Writes `tx` out; `Ready(Ok)` once it is empty (and freed).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Bounded: every pass writes at least one byte.
        while self.tx_at < self.tx.len() {
            let n =
                std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.tx[self.tx_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.tx_at += n;
        }
        if self.tx.capacity() > 0 {
            self.tx = Vec::new();
            self.tx_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads the socket once into the thread's ciphertext buffer (after the partial record)
    /// and runs the protocol engine over it: plaintext fills `out`, the rest goes to `plain`.
    /// Returns the ciphertext bytes read (0: end of stream) and the plaintext bytes put in
    /// `out`. After an error, the alert queued for it goes out if the socket takes it at once.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<std::io::Result<(usize, usize)>> {
        if self.failed {
            return Poll::Ready(Err(tls_error("the TLS connection failed")));
        }
        let filled = self.poll_fill_inner(cx, out);
        if self.failed {
            let _ = self.poll_send(cx);
        }
        filled
    }

    fn poll_fill_inner(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<std::io::Result<(usize, usize)>> {
        let unread = std::mem::take(&mut self.unread);
        if unread {
            // They are the record layer's: hand over first.
            self.switch()?;
        }
        CIPHERTEXT.with(|buf| {
            let mut buf = buf.borrow_mut();
            let k = self.partial.len();
            if k >= RECORD_BYTES_MAX {
                return Poll::Ready(Err(tls_error("TLS record larger than the protocol allows")));
            }
            if buf.len() < RECORD_BYTES_MAX + READ_BYTES {
                buf.resize(RECORD_BYTES_MAX + READ_BYTES, 0);
            }
            buf[..k].copy_from_slice(&self.partial);
            // Records left from the handshake's last read are read before the socket (their
            // client may send nothing more until it is answered); counted as read.
            let (n, end) = if unread {
                (k, k)
            } else {
                let n = std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf[k..]))?;
                if n == 0 {
                    self.eof = true;
                    return Poll::Ready(Ok((0, 0)));
                }
                (n, k + n)
            };
            let mut filled = 0;
            let plain = &mut self.plain;
            let mut sink = |p: &[u8]| {
                let take = (out.len() - filled).min(p.len());
                out[filled..filled + take].copy_from_slice(&p[..take]);
                filled += take;
                plain.extend_from_slice(&p[take..]);
            };
            let mut handshake_done = false;
            let read = match &mut self.layer {
                Layer::Handshake(conn) => {
                    pump(conn, &mut buf[..end], &mut self.tx, &mut sink).map(|(used, progress)| {
                        handshake_done = !conn.is_handshaking();
                        (used, progress == Progress::PeerClosed)
                    })
                }
                Layer::Records(r) => r
                    .read(&mut buf[..end], &mut self.tx, &mut sink)
                    .map(|(used, at)| (used, at == records::ReadEnd::Closed))
                    .map_err(tls_error),
                Layer::Gone => Err(tls_error("the TLS connection failed")),
            };
            let (used, closed) = match read {
                Ok(r) => r,
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Err(e));
                }
            };
            if closed {
                self.eof = true;
            }
            // Empty when the read ended on a record boundary: no allocation.
            self.partial = buf[used..end].to_vec();
            // What followed Finished is read by the record layer at the next read.
            self.unread = handshake_done && !self.partial.is_empty();
            Poll::Ready(Ok((n, filled)))
        })
    }

    /// Seals with Tern's record layer onto `tx` (application data, or close_notify when
    /// `data` is `None`), handing over from rustls first if the handshake just ended.
    fn seal(&mut self, data: Option<&[u8]>) -> std::io::Result<()> {
        if self.failed {
            return Err(tls_error("the TLS connection failed"));
        }
        self.switch()?;
        let Layer::Records(r) = &mut self.layer else {
            return Err(tls_error("write before the TLS handshake is done"));
        };
        let sealed = match data {
            Some(data) => r.write(data, &mut self.tx),
            None => r.close_notify(&mut self.tx),
        };
        sealed.map_err(|e| {
            self.failed = true;
            tls_error(e)
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.plain_at < this.plain.len() {
            let take = (this.plain.len() - this.plain_at).min(buf.len());
            buf[..take].copy_from_slice(&this.plain[this.plain_at..this.plain_at + take]);
            this.plain_at += take;
            if this.plain_at == this.plain.len() {
                this.plain = Vec::new();
                this.plain_at = 0;
            }
            return Poll::Ready(Ok(take));
        }
        if this.eof || buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if !this.failed {
            this.switch()?;
        }
        // TLS messages queued (key update answers) go out first; a full socket registers the
        // task for writability and stops the read only once `TX_HELD_MAX` bytes wait, so a
        // peer that sends key updates and reads nothing cannot grow `tx` without bound.
        std::task::ready!(this.poll_send_for_read(cx))?;
        for _ in 0..EMPTY_READS_PER_POLL {
            let (n, filled) = std::task::ready!(this.poll_fill(cx, buf))?;
            if filled > 0 {
                return Poll::Ready(Ok(filled));
            }
            if n == 0 || this.eof {
                // A close without close_notify ends the stream too (MQTT has its own framing).
                return Poll::Ready(Ok(0));
            }
            std::task::ready!(this.poll_send_for_read(cx))?;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        // What an earlier call encrypted goes first: bounds `tx` to one chunk.
        std::task::ready!(this.poll_send(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.closing {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(WRITE_CHUNK_BYTES)];
        this.tx.reserve(data.len() + (data.len() / (1 << 14) + 1) * 64);
        this.seal(Some(data))?;
        // Accepted: the ciphertext goes out now or with the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.closing && !this.failed {
            // Earlier output first; `closing` is set once close_notify is queued behind it, so
            // a `Pending` here comes back to queue it.
            std::task::ready!(this.poll_send(cx))?;
            // During the handshake there is nothing to notify.
            let handshaking =
                matches!(&this.layer, Layer::Handshake(conn) if conn.is_handshaking());
            if !handshaking {
                this.seal(None)?;
            }
        }
        this.closing = true;
        std::task::ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_generated_certificates() {
        let key = rcgen::KeyPair::generate().expect("key");
        for (cn, want) in [("device-42", Some("device-42")), ("", None)] {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            // rcgen starts with a default CN; start from an empty subject.
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(rcgen::DnType::OrganizationName, "Org first");
            if !cn.is_empty() {
                params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            }
            params.distinguished_name.push(rcgen::DnType::CountryName, "NZ");
            let cert = params.self_signed(&key).expect("cert");
            assert_eq!(subject_common_name(cert.der()).as_deref(), want, "cn {cn:?}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x00]), None);
        assert_eq!(subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_common_name(&[0x30, 0x80]), None); // indefinite length is not DER
    }
}
