//! Tern's own TLS record layer, used after the handshake (issue 11): rustls runs the
//! handshake, then hands over the traffic keys
//! ([`rustls::server::UnbufferedServerConnection::dangerous_into_kernel_connection`], the
//! split kernel TLS uses), and this module seals and opens the records itself with ring's
//! AEAD. What a parked connection keeps is then per direction the cipher, the key, the IV and
//! the sequence number (and for TLS 1.3 rustls' small key schedule, for key updates): a few
//! hundred bytes instead of rustls' whole connection with its two expanded keys. The expanded ring keys exist only
//! while the connection is active ([`Records::park`] drops them).
//!
//! Record formats (RFC 8446 §5.2, RFC 5246 §6.2.3.3, RFC 5288 §3, RFC 7905 §2):
//! - TLS 1.3: nonce = IV XOR sequence number, AAD = the 5-byte record header, the sealed
//!   plaintext is the content, its real content type and zero padding; the outer type is
//!   always application_data.
//! - TLS 1.2 AES-GCM: nonce = the 4-byte implicit salt and an 8-byte explicit nonce carried at
//!   the front of the record. rustls hands over the IV as `salt ‖ 8 bytes of its key block`
//!   and makes its explicit nonces as `IV XOR sequence number` (the low 8 bytes), which is what
//!   we send too; on receipt the explicit nonce is taken from the record as the RFC says.
//!   AAD = sequence number ‖ type ‖ version ‖ plaintext length.
//! - TLS 1.2 ChaCha20-Poly1305: nonce = IV XOR sequence number, same AAD, no explicit nonce.
//!
//! Everything read is hostile: every length is checked before it is used, and a failure is an
//! [`Fatal`] error that names the alert to send (the stream then closes).

use ring::aead;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};

/// Largest plaintext of one record (RFC 8446 §5.1, RFC 5246 §6.2.1).
pub const PLAINTEXT_MAX: usize = 1 << 14;
/// Largest TLS 1.3 record body (RFC 8446 §5.2: 2^14 + 256).
pub const TLS13_CIPHERTEXT_MAX: usize = PLAINTEXT_MAX + 256;
/// Largest TLS 1.2 record body (RFC 5246 §6.2.3: 2^14 + 2048).
pub const TLS12_CIPHERTEXT_MAX: usize = PLAINTEXT_MAX + 2048;
/// Records in a row that carry no application data (empty application data records, key
/// updates, warning alerts) before the connection is closed: a peer cannot keep the shard busy
/// with records that deliver nothing. rustls' own reader allows a similar number.
pub const EMPTY_RECORDS_RUN_MAX: u32 = 32;
/// Records sealed under one key before the end of the suite's confidentiality limit at which
/// Tern acts (a TLS 1.3 key update; a TLS 1.2 connection closes): this many before it.
const LIMIT_MARGIN: u64 = 16;

const HEADER: usize = 5;
const TAG: usize = 16;
const EXPLICIT_NONCE: usize = 8;

/// Record content types (RFC 8446 §5.1).
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message type key_update (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;

/// Alert descriptions Tern sends or recognises (RFC 8446 §6).
pub mod alert {
    /// close_notify.
    pub const CLOSE_NOTIFY: u8 = 0;
    /// unexpected_message.
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    /// bad_record_mac: a record did not decrypt.
    pub const BAD_RECORD_MAC: u8 = 20;
    /// record_overflow.
    pub const RECORD_OVERFLOW: u8 = 22;
    /// illegal_parameter.
    pub const ILLEGAL_PARAMETER: u8 = 47;
    /// decode_error.
    pub const DECODE_ERROR: u8 = 50;
    /// internal_error.
    pub const INTERNAL_ERROR: u8 = 80;
    /// user_canceled (a warning, followed by close_notify).
    pub const USER_CANCELED: u8 = 90;
}

/// Why the record layer stopped the connection: the alert to send (`None`: none, the peer
/// ended it with its own fatal alert) and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    /// The alert description sent to the peer, if any.
    pub alert: Option<u8>,
    /// What happened.
    pub reason: &'static str,
    /// The alert description the peer sent, when it ended the connection with one.
    pub peer: Option<u8>,
}

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.alert {
            Some(a) => write!(f, "TLS record layer: {} (alert {a})", self.reason),
            None => write!(f, "TLS record layer: {}", self.reason),
        }
    }
}

fn fatal(alert: u8, reason: &'static str) -> Fatal {
    Fatal { alert: Some(alert), reason, peer: None }
}

/// The AEAD of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// AES-128-GCM.
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    Chacha20Poly1305,
}

impl Cipher {
    /// Records one key may protect when no negotiated suite gives its limit (the test and
    /// fuzz constructors): 2^24 for AES-GCM (RFC 8446 §5.5, rustls' figure), none for
    /// ChaCha20-Poly1305.
    fn default_limit(self) -> u64 {
        match self {
            Cipher::Chacha20Poly1305 => u64::MAX,
            _ => 1 << 24,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// The key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
        }
    }
}

/// Which half of the connection a key update is for.
#[derive(Clone, Copy)]
enum Direction {
    /// What the peer sends.
    Rx,
    /// What we send.
    Tx,
}

/// One direction's traffic secret as a record layer needs it: key, IV, sequence number.
#[derive(Clone)]
struct Secret {
    key: [u8; 32],
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Secret {
    fn from_rustls(seq: u64, s: &ConnectionTrafficSecrets) -> Result<(Cipher, Self), Fatal> {
        let (cipher, key, iv) = match s {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return Err(fatal(alert::INTERNAL_ERROR, "unsupported cipher suite")),
        };
        Ok((cipher, Self::new(cipher, key.as_ref(), iv.as_ref(), seq)?))
    }

    fn new(cipher: Cipher, key: &[u8], iv: &[u8], seq: u64) -> Result<Self, Fatal> {
        let bad = || fatal(alert::INTERNAL_ERROR, "traffic secret of the wrong size");
        if key.len() != cipher.key_len() {
            return Err(bad());
        }
        let mut s = Self { key: [0; 32], iv: iv.try_into().map_err(|_| bad())?, seq };
        s.key[..key.len()].copy_from_slice(key);
        Ok(s)
    }

    /// IV XOR the sequence number (big-endian, in the low 8 bytes).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn expand(&self, cipher: Cipher) -> Result<aead::LessSafeKey, Fatal> {
        let key = aead::UnboundKey::new(cipher.algorithm(), &self.key[..cipher.key_len()])
            .map_err(|_| fatal(alert::INTERNAL_ERROR, "traffic key refused by ring"))?;
        Ok(aead::LessSafeKey::new(key))
    }

    /// The next sequence number (RFC 8446 §5.3: it must not wrap).
    /// Refuses when no number is left for one more record (before its nonce is used).
    fn check_left(&self) -> Result<(), Fatal> {
        if self.seq == u64::MAX {
            return Err(fatal(alert::INTERNAL_ERROR, "record sequence number exhausted"));
        }
        Ok(())
    }

    fn advance(&mut self) -> Result<(), Fatal> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(fatal(alert::INTERNAL_ERROR, "record sequence number exhausted"))?;
        Ok(())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Not a guaranteed wipe (no volatile writes under forbid(unsafe_code)); best effort.
        self.key = [0; 32];
        self.iv = [0; aead::NONCE_LEN];
    }
}

/// The expanded ring keys: built on the first record after a wake, dropped at park.
struct Keys {
    rx: aead::LessSafeKey,
    tx: aead::LessSafeKey,
}

/// The negotiated protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// What [`Records::read`] stopped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// It needs more bytes (the rest, if any, is the head of a record).
    NeedData,
    /// The peer sent close_notify: nothing after it is read.
    Closed,
}

/// The record layer of one connection after its handshake.
pub struct Records {
    version: Version,
    cipher: Cipher,
    rx: Secret,
    tx: Secret,
    /// Records one key may seal or open (the suite's confidentiality limit).
    limit: u64,
    /// Records in a row without application data.
    empty_run: u32,
    /// Our close_notify is sealed: nothing more is sent (RFC 8446 §6.1), a KeyUpdate from the
    /// peer then only moves the receive key.
    sent_close: bool,
    /// rustls' key schedule for TLS 1.3 key updates (`None` for TLS 1.2, and in the fuzz body).
    /// Boxed: 560 B inline, which TLS 1.2 does not pay.
    kernel: Option<Box<KernelConnection<ServerConnectionData>>>,
    keys: Option<Box<Keys>>,
}

impl Records {
    /// The record layer rustls' handshake handed over.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, Fatal> {
        let version = match kernel.protocol_version() {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(fatal(alert::INTERNAL_ERROR, "unsupported protocol version")),
        };
        let limit = match kernel.negotiated_cipher_suite() {
            rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        let (cipher, rx) = Secret::from_rustls(secrets.rx.0, &secrets.rx.1)?;
        let (tx_cipher, tx) = Secret::from_rustls(secrets.tx.0, &secrets.tx.1)?;
        if cipher != tx_cipher {
            return Err(fatal(alert::INTERNAL_ERROR, "suites differ per direction"));
        }
        // Only TLS 1.3 updates keys; TLS 1.2 needs nothing more from rustls.
        let kernel = (version == Version::Tls13).then(|| Box::new(kernel));
        Ok(Self::from_parts(version, cipher, (rx, tx), limit, kernel))
    }

    /// A record layer at the start of its traffic keys: nothing sealed or opened under them yet
    /// beyond the sequence numbers in `rx` and `tx`, no expanded keys (built at the first record).
    fn from_parts(
        version: Version,
        cipher: Cipher,
        (rx, tx): (Secret, Secret),
        limit: u64,
        kernel: Option<Box<KernelConnection<ServerConnectionData>>>,
    ) -> Self {
        Self { version, cipher, rx, tx, limit, empty_run: 0, sent_close: false, kernel, keys: None }
    }

    /// A record layer from secrets extracted from a rustls connection, with no key schedule
    /// (a key update is refused): tests play a hostile client with the client's secrets
    /// (`tx` is what the client sends).
    #[doc(hidden)]
    pub fn from_secrets(secrets: ExtractedSecrets, version: Version) -> Result<Self, Fatal> {
        let (cipher, rx) = Secret::from_rustls(secrets.rx.0, &secrets.rx.1)?;
        let (_, tx) = Secret::from_rustls(secrets.tx.0, &secrets.tx.1)?;
        Ok(Self::from_parts(version, cipher, (rx, tx), cipher.default_limit(), None))
    }

    /// A record layer from fixed secrets, with no key schedule (a key update is refused):
    /// the fuzz body and the unit tests. `rx` and `tx` are `(key, iv)`.
    pub fn from_fixed(
        version: Version,
        cipher: Cipher,
        rx: (&[u8], &[u8]),
        tx: (&[u8], &[u8]),
    ) -> Result<Self, Fatal> {
        let secrets = (Secret::new(cipher, rx.0, rx.1, 0)?, Secret::new(cipher, tx.0, tx.1, 0)?);
        Ok(Self::from_parts(version, cipher, secrets, cipher.default_limit(), None))
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The AEAD.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Sequence numbers of the next record (received, sent).
    pub fn sequence_numbers(&self) -> (u64, u64) {
        (self.rx.seq, self.tx.seq)
    }

    /// Lowers the records one key may seal (tests of the confidentiality limit).
    #[doc(hidden)]
    pub fn set_confidentiality_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Drops the expanded keys (the connection parks); the next record expands them again.
    pub fn park(&mut self) {
        self.keys = None;
    }

    /// Whether the expanded keys are held.
    pub fn keys_expanded(&self) -> bool {
        self.keys.is_some()
    }

    fn keys(&mut self) -> Result<&mut Keys, Fatal> {
        if self.keys.is_none() {
            let rx = self.rx.expand(self.cipher)?;
            let tx = self.tx.expand(self.cipher)?;
            self.keys = Some(Box::new(Keys { rx, tx }));
        }
        self.keys.as_deref_mut().ok_or(fatal(alert::INTERNAL_ERROR, "no keys"))
    }

    fn ciphertext_max(&self) -> usize {
        match self.version {
            Version::Tls13 => TLS13_CIPHERTEXT_MAX,
            Version::Tls12 => TLS12_CIPHERTEXT_MAX,
        }
    }

    /// Opens the whole records at the front of `buf` (decrypting in place): application data
    /// goes to `sink`, answers (a key update's) are sealed onto `tx`. Returns the bytes used
    /// (the rest is the head of a record) and where it stopped. On an error the alert it names
    /// is already sealed onto `tx` (when the keys allow) and the layer must not be used again.
    pub fn read(
        &mut self,
        buf: &mut [u8],
        tx: &mut Vec<u8>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(usize, ReadEnd), Fatal> {
        match self.read_records(buf, tx, sink) {
            Ok(x) => Ok(x),
            Err(e) => {
                if let Some(a) = e.alert {
                    // Best effort: a failure to seal the alert leaves only the close.
                    let _ = self.seal(ALERT, &[2, a], tx);
                }
                Err(e)
            }
        }
    }

    fn read_records(
        &mut self,
        buf: &mut [u8],
        tx: &mut Vec<u8>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(usize, ReadEnd), Fatal> {
        let mut used = 0;
        // Bounded: every pass consumes a whole record or returns.
        loop {
            let rest = &mut buf[used..];
            let Some(&[typ, v0, v1, l0, l1]) = rest.get(..HEADER) else {
                return Ok((used, ReadEnd::NeedData));
            };
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            if len > self.ciphertext_max() {
                return Err(fatal(
                    alert::RECORD_OVERFLOW,
                    "record larger than the protocol allows",
                ));
            }
            if rest.len() < HEADER + len {
                return Ok((used, ReadEnd::NeedData));
            }
            let record = &mut rest[..HEADER + len];
            let header = [typ, v0, v1, l0, l1];
            let (content_type, content) = match self.version {
                Version::Tls13 => self.open13(header, &mut record[HEADER..])?,
                Version::Tls12 => self.open12(header, &mut record[HEADER..])?,
            };
            used += HEADER + len;
            let carried = match content_type {
                APPLICATION_DATA => {
                    if !content.is_empty() {
                        sink(content);
                    }
                    !content.is_empty()
                }
                ALERT => {
                    let &[level, description] = content else {
                        return Err(fatal(alert::DECODE_ERROR, "alert of the wrong length"));
                    };
                    match (self.version, level, description) {
                        (_, _, alert::CLOSE_NOTIFY) => return Ok((used, ReadEnd::Closed)),
                        (Version::Tls13, _, alert::USER_CANCELED) | (Version::Tls12, 1, _) => false,
                        _ => {
                            return Err(Fatal {
                                alert: None,
                                reason: "the peer sent a fatal alert",
                                peer: Some(description),
                            })
                        }
                    }
                }
                HANDSHAKE if self.version == Version::Tls13 => {
                    self.handshake13(content, tx)?;
                    false
                }
                HANDSHAKE => {
                    return Err(fatal(
                        alert::UNEXPECTED_MESSAGE,
                        "handshake message after the TLS 1.2 handshake (renegotiation)",
                    ))
                }
                CHANGE_CIPHER_SPEC => {
                    return Err(fatal(
                        alert::UNEXPECTED_MESSAGE,
                        "change_cipher_spec after the handshake",
                    ))
                }
                _ => return Err(fatal(alert::UNEXPECTED_MESSAGE, "unknown record content type")),
            };
            if carried {
                self.empty_run = 0;
            } else {
                self.empty_run += 1;
                if self.empty_run > EMPTY_RECORDS_RUN_MAX {
                    EMPTY_RUNS_REFUSED.with(|c| c.set(c.get() + 1));
                    return Err(fatal(
                        alert::UNEXPECTED_MESSAGE,
                        "too many records in a row without application data",
                    ));
                }
            }
        }
    }

    /// Opens a TLS 1.3 record body in place: the content type and the content.
    fn open13<'b>(
        &mut self,
        header: [u8; HEADER],
        body: &'b mut [u8],
    ) -> Result<(u8, &'b [u8]), Fatal> {
        match header[0] {
            APPLICATION_DATA => {}
            CHANGE_CIPHER_SPEC => {
                return Err(fatal(
                    alert::UNEXPECTED_MESSAGE,
                    "change_cipher_spec after the handshake",
                ))
            }
            _ => {
                return Err(fatal(
                    alert::UNEXPECTED_MESSAGE,
                    "unprotected record after the handshake",
                ))
            }
        }
        if body.len() < TAG + 1 {
            return Err(fatal(alert::BAD_RECORD_MAC, "record shorter than its tag"));
        }
        self.rx.check_left()?;
        let nonce = aead::Nonce::assume_unique_for_key(self.rx.nonce());
        let keys = self.keys()?;
        let plain = keys
            .rx
            .open_in_place(nonce, aead::Aad::from(header), body)
            .map_err(|_| fatal(alert::BAD_RECORD_MAC, "record does not decrypt"))?;
        self.rx.advance()?;
        // RFC 8446 §5.4: the whole inner plaintext (content, type, padding) is at most
        // 2^14 + 1 bytes.
        if plain.len() > PLAINTEXT_MAX + 1 {
            return Err(fatal(
                alert::RECORD_OVERFLOW,
                "inner plaintext larger than 2^14 + 1 bytes",
            ));
        }
        // The inner plaintext: content, content type, zero padding (RFC 8446 §5.2).
        let Some(at) = plain.iter().rposition(|&b| b != 0) else {
            return Err(fatal(alert::UNEXPECTED_MESSAGE, "record without a content type"));
        };
        if at > PLAINTEXT_MAX {
            return Err(fatal(alert::RECORD_OVERFLOW, "plaintext larger than 2^14 bytes"));
        }
        Ok((plain[at], &plain[..at]))
    }

    /// Opens a TLS 1.2 record body in place: the content type and the content.
    fn open12<'b>(
        &mut self,
        header: [u8; HEADER],
        body: &'b mut [u8],
    ) -> Result<(u8, &'b [u8]), Fatal> {
        match header[0] {
            ALERT | HANDSHAKE | APPLICATION_DATA => {}
            CHANGE_CIPHER_SPEC => {
                return Err(fatal(
                    alert::UNEXPECTED_MESSAGE,
                    "change_cipher_spec after the handshake",
                ))
            }
            _ => return Err(fatal(alert::UNEXPECTED_MESSAGE, "unknown record content type")),
        }
        let explicit = match self.cipher {
            Cipher::Chacha20Poly1305 => 0,
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => EXPLICIT_NONCE,
        };
        if body.len() < explicit + TAG {
            return Err(fatal(alert::BAD_RECORD_MAC, "record shorter than its tag"));
        }
        let plain_len = body.len() - explicit - TAG;
        if plain_len > PLAINTEXT_MAX {
            return Err(fatal(alert::RECORD_OVERFLOW, "plaintext larger than 2^14 bytes"));
        }
        self.rx.check_left()?;
        let nonce = if explicit == 0 {
            self.rx.nonce()
        } else {
            let mut n = self.rx.iv;
            n[4..].copy_from_slice(&body[..EXPLICIT_NONCE]);
            n
        };
        let aad = aad12(self.rx.seq, header, plain_len);
        let keys = self.keys()?;
        let plain = keys
            .rx
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut body[explicit..],
            )
            .map_err(|_| fatal(alert::BAD_RECORD_MAC, "record does not decrypt"))?;
        self.rx.advance()?;
        Ok((header[0], plain))
    }

    /// The handshake messages of one TLS 1.3 record after the handshake: only KeyUpdate is
    /// accepted (a client never sends NewSessionTicket; post-handshake authentication is not
    /// offered). Each message must be whole in its record: Tern does not join fragments after
    /// the handshake (rustls' clients never fragment these).
    fn handshake13(&mut self, msgs: &[u8], tx: &mut Vec<u8>) -> Result<(), Fatal> {
        let Some(&[typ, a, b, c]) = msgs.get(..4) else {
            let reason = if msgs.is_empty() {
                "empty handshake record"
            } else {
                "handshake message split across records after the handshake"
            };
            return Err(fatal(alert::UNEXPECTED_MESSAGE, reason));
        };
        if typ != KEY_UPDATE {
            return Err(fatal(
                alert::UNEXPECTED_MESSAGE,
                "handshake message other than KeyUpdate after the handshake",
            ));
        }
        // At most 2^24 - 1: no overflow.
        let end = 4 + u32::from_be_bytes([0, a, b, c]) as usize;
        let Some(body) = msgs.get(4..end) else {
            return Err(fatal(
                alert::UNEXPECTED_MESSAGE,
                "handshake message split across records after the handshake",
            ));
        };
        let &[request] = body else {
            return Err(fatal(alert::DECODE_ERROR, "KeyUpdate of the wrong length"));
        };
        if request > 1 {
            return Err(fatal(alert::ILLEGAL_PARAMETER, "KeyUpdate request not 0 or 1"));
        }
        // RFC 8446 §5.1: a message before a key change ends its record.
        if msgs.len() > end {
            return Err(fatal(alert::UNEXPECTED_MESSAGE, "data after KeyUpdate in its record"));
        }
        self.update_rx()?;
        if request == 1 && !self.sent_close {
            self.update_tx(tx)?;
        }
        Ok(())
    }

    fn update_rx(&mut self) -> Result<(), Fatal> {
        let rx = self.next_secret(Direction::Rx)?;
        if let Some(keys) = self.keys.as_deref_mut() {
            keys.rx = rx.expand(self.cipher)?;
        }
        self.rx = rx;
        Ok(())
    }

    /// Sends KeyUpdate(update_not_requested) under the current key, then switches to the next.
    fn update_tx(&mut self, tx: &mut Vec<u8>) -> Result<(), Fatal> {
        let next = self.next_secret(Direction::Tx)?;
        self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], tx)?;
        if let Some(keys) = self.keys.as_deref_mut() {
            keys.tx = next.expand(self.cipher)?;
        }
        self.tx = next;
        Ok(())
    }

    /// The next traffic secret of one direction from rustls' TLS 1.3 key schedule
    /// (RFC 8446 §7.2), checked to keep the cipher.
    fn next_secret(&mut self, direction: Direction) -> Result<Secret, Fatal> {
        let kernel = self.kernel.as_mut().ok_or(match direction {
            Direction::Rx => fatal(alert::UNEXPECTED_MESSAGE, "KeyUpdate without a key schedule"),
            Direction::Tx => fatal(alert::INTERNAL_ERROR, "key update without a key schedule"),
        })?;
        let updated = match direction {
            Direction::Rx => kernel.update_rx_secret(),
            Direction::Tx => kernel.update_tx_secret(),
        };
        let (seq, secret) =
            updated.map_err(|_| fatal(alert::INTERNAL_ERROR, "rustls refused the key update"))?;
        let (cipher, next) = Secret::from_rustls(seq, &secret)?;
        if cipher != self.cipher {
            return Err(fatal(alert::INTERNAL_ERROR, "the key update changed the cipher"));
        }
        Ok(next)
    }

    /// Seals `data` as application data records onto `tx`.
    pub fn write(&mut self, data: &[u8], tx: &mut Vec<u8>) -> Result<(), Fatal> {
        self.seal(APPLICATION_DATA, data, tx)
    }

    /// Seals close_notify onto `tx`.
    pub fn close_notify(&mut self, tx: &mut Vec<u8>) -> Result<(), Fatal> {
        self.seal(ALERT, &[1, alert::CLOSE_NOTIFY], tx)?;
        self.sent_close = true;
        Ok(())
    }

    /// Seals `data` as records of `content_type`, 2^14 bytes each at most (one empty record
    /// for empty data), updating the key (TLS 1.3) or refusing (TLS 1.2) before the suite's
    /// confidentiality limit.
    fn seal(&mut self, content_type: u8, data: &[u8], tx: &mut Vec<u8>) -> Result<(), Fatal> {
        let mut chunks = data.chunks(PLAINTEXT_MAX);
        let first = chunks.next().unwrap_or(&[]);
        for chunk in std::iter::once(first).chain(chunks) {
            if self.tx.seq.saturating_add(LIMIT_MARGIN) >= self.limit {
                match self.version {
                    Version::Tls13 => self.update_tx(tx)?,
                    Version::Tls12 => {
                        return Err(Fatal {
                            alert: None,
                            reason: "the cipher's confidentiality limit is reached \
                                     (TLS 1.2 cannot update keys)",
                            peer: None,
                        })
                    }
                }
            }
            self.seal_one(content_type, chunk, tx)?;
        }
        Ok(())
    }

    /// Seals one record of at most 2^14 bytes onto `tx`.
    fn seal_one(&mut self, content_type: u8, chunk: &[u8], tx: &mut Vec<u8>) -> Result<(), Fatal> {
        self.seal_padded(content_type, chunk, 0, tx)
    }

    /// Seals one record with `padding` zero bytes after the content type (TLS 1.3 only;
    /// ignored for TLS 1.2). Public for the fuzz body, which plays the client.
    #[doc(hidden)]
    pub fn seal_padded(
        &mut self,
        content_type: u8,
        chunk: &[u8],
        padding: usize,
        tx: &mut Vec<u8>,
    ) -> Result<(), Fatal> {
        let at = tx.len();
        let sealed = self.seal_padded_at(content_type, chunk, padding, tx, at);
        if sealed.is_err() {
            // Nothing of a record that failed goes out: no plaintext, and no second record
            // under the same nonce (the sequence number was taken before sealing).
            tx.truncate(at);
        }
        sealed
    }

    fn seal_padded_at(
        &mut self,
        content_type: u8,
        chunk: &[u8],
        padding: usize,
        tx: &mut Vec<u8>,
        at: usize,
    ) -> Result<(), Fatal> {
        let too_long = || fatal(alert::INTERNAL_ERROR, "record too long to seal");
        match self.version {
            Version::Tls13 => {
                let len = chunk.len() + 1 + padding + TAG;
                let len16 = u16::try_from(len).map_err(|_| too_long())?;
                let header =
                    [APPLICATION_DATA, 3, 3, len16.to_be_bytes()[0], len16.to_be_bytes()[1]];
                let nonce = aead::Nonce::assume_unique_for_key(self.tx.nonce());
                // Taken before anything is written: an exhausted number seals nothing.
                self.tx.advance()?;
                tx.extend_from_slice(&header);
                tx.extend_from_slice(chunk);
                tx.push(content_type);
                tx.resize(tx.len() + padding, 0);
                let keys = self.keys()?;
                let tag = keys
                    .tx
                    .seal_in_place_separate_tag(
                        nonce,
                        aead::Aad::from(header),
                        &mut tx[at + HEADER..],
                    )
                    .map_err(|_| fatal(alert::INTERNAL_ERROR, "sealing failed"))?;
                tx.extend_from_slice(tag.as_ref());
            }
            Version::Tls12 => {
                let explicit = match self.cipher {
                    Cipher::Chacha20Poly1305 => 0,
                    Cipher::Aes128Gcm | Cipher::Aes256Gcm => EXPLICIT_NONCE,
                };
                let len = explicit + chunk.len() + TAG;
                let len16 = u16::try_from(len).map_err(|_| too_long())?;
                let header = [content_type, 3, 3, len16.to_be_bytes()[0], len16.to_be_bytes()[1]];
                let nonce = self.tx.nonce();
                let aad = aad12(self.tx.seq, header, chunk.len());
                self.tx.advance()?;
                tx.extend_from_slice(&header);
                tx.extend_from_slice(&nonce[4..4 + explicit]);
                tx.extend_from_slice(chunk);
                let keys = self.keys()?;
                let tag = keys
                    .tx
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        &mut tx[at + HEADER + explicit..],
                    )
                    .map_err(|_| fatal(alert::INTERNAL_ERROR, "sealing failed"))?;
                tx.extend_from_slice(tag.as_ref());
            }
        }
        Ok(())
    }
}

/// The TLS 1.2 AEAD additional data: sequence number, type, version, plaintext length.
fn aad12(seq: u64, header: [u8; HEADER], plain_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..11].copy_from_slice(&header[..3]);
    // plain_len <= 2^14 + 2048, checked by the callers.
    aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
    aad
}

thread_local! {
    static EMPTY_RUNS_REFUSED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Connections this thread (shard) closed for a run of more than [`EMPTY_RECORDS_RUN_MAX`]
/// records without application data.
pub fn empty_runs_refused() -> u64 {
    EMPTY_RUNS_REFUSED.with(|c| c.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server and a client layer on fixed secrets (the client's `tx` is the server's `rx`).
    fn pair(version: Version, cipher: Cipher) -> (Records, Records) {
        let (ck, civ, sk, siv) = ([1u8; 32], [2u8; 12], [3u8; 32], [4u8; 12]);
        let n = cipher.key_len();
        let server = Records::from_fixed(version, cipher, (&ck[..n], &civ), (&sk[..n], &siv));
        let client = Records::from_fixed(version, cipher, (&sk[..n], &siv), (&ck[..n], &civ));
        (server.expect("server"), client.expect("client"))
    }

    const ALL: [(Version, Cipher); 6] = [
        (Version::Tls13, Cipher::Aes128Gcm),
        (Version::Tls13, Cipher::Aes256Gcm),
        (Version::Tls13, Cipher::Chacha20Poly1305),
        (Version::Tls12, Cipher::Aes128Gcm),
        (Version::Tls12, Cipher::Aes256Gcm),
        (Version::Tls12, Cipher::Chacha20Poly1305),
    ];

    #[test]
    fn records_round_trip_split_anywhere() {
        for (version, cipher) in ALL {
            let (mut server, mut client) = pair(version, cipher);
            let data: Vec<u8> = (0..40_000u32).map(|x| x as u8).collect();
            let mut wire = Vec::new();
            client.write(&data, &mut wire).expect("seal");
            client.write(b"tail", &mut wire).expect("seal");
            let mut got = Vec::new();
            let mut held = Vec::new();
            for piece in wire.chunks(777) {
                held.extend_from_slice(piece);
                let (used, end) = server
                    .read(&mut held, &mut Vec::new(), &mut |p| got.extend_from_slice(p))
                    .expect("open");
                assert_eq!(end, ReadEnd::NeedData);
                held.drain(..used);
            }
            assert!(held.is_empty());
            assert_eq!(got.len(), data.len() + 4, "{version:?} {cipher:?}");
            assert_eq!(&got[..data.len()], &data[..]);
            // 40 000 bytes: three records of 2^14 and one more, then "tail".
            assert_eq!(server.sequence_numbers().0, 4);
        }
    }

    /// TLS 1.2 GCM: the explicit nonce on the wire is the low 8 bytes of IV XOR sequence
    /// number (rustls' construction), and on receipt it is taken from the record.
    #[test]
    fn tls12_gcm_explicit_nonce_is_iv_xor_sequence() {
        let (_, mut client) = pair(Version::Tls12, Cipher::Aes128Gcm);
        let mut wire = Vec::new();
        client.write(b"a", &mut wire).expect("seal");
        client.write(b"b", &mut wire).expect("seal");
        let first = &wire[5..13];
        assert_eq!(first, &[2u8; 8]);
        let second = &wire[5 + 8 + 1 + 16 + 5..][..8];
        assert_eq!(second, &[2, 2, 2, 2, 2, 2, 2, 3]);
    }

    /// RFC 8446 §5.3: a sequence number must not wrap. The last number opens its record, then
    /// the layer refuses; sealing at the end of the numbers is refused before it seals.
    #[test]
    fn sequence_numbers_do_not_wrap() {
        for (version, cipher) in ALL {
            let (mut server, mut client) = pair(version, cipher);
            client.tx.seq = u64::MAX;
            client.limit = u64::MAX;
            server.rx.seq = u64::MAX;
            let mut wire = Vec::new();
            // The client's number u64::MAX - 1 seals; the last one does not, and writes
            // nothing (no plaintext, no record under a used nonce).
            client.tx.seq = u64::MAX - 1;
            client.seal_one(APPLICATION_DATA, b"x", &mut wire).expect("the last usable number");
            let sealed_len = wire.len();
            let sealed = client.seal_one(APPLICATION_DATA, b"x", &mut wire);
            assert!(sealed.is_err());
            assert_eq!(wire.len(), sealed_len, "a failed seal writes nothing");
            assert_eq!(client.tx.seq, u64::MAX);
            // A receiver with no number left refuses any record before opening it.
            server.rx.seq = u64::MAX;
            let mut answers = Vec::new();
            let e = server.read(&mut wire, &mut answers, &mut |_| {}).expect_err("exhausted");
            assert_eq!(e.alert, Some(alert::INTERNAL_ERROR), "{version:?} {cipher:?}");
            // Sealing near the end of the numbers: the limit check refuses first (no key
            // schedule here to update the key with).
            let (mut server, _) = pair(version, cipher);
            server.tx.seq = u64::MAX - 3;
            server.limit = u64::MAX;
            assert!(server.write(b"y", &mut Vec::new()).is_err(), "{version:?} {cipher:?}");
        }
    }

    /// A KeyUpdate without rustls' key schedule (the fuzz body's layers) is refused, not a
    /// panic.
    #[test]
    fn key_update_without_a_key_schedule_is_refused() {
        let (mut server, mut client) = pair(Version::Tls13, Cipher::Aes128Gcm);
        let mut wire = Vec::new();
        client.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1], &mut wire).expect("seal");
        let e = server.read(&mut wire, &mut Vec::new(), &mut |_| {}).expect_err("refused");
        assert_eq!(e.alert, Some(alert::UNEXPECTED_MESSAGE));
    }
}
