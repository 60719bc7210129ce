//! Bodies shared by the property tests (`tests/parsers_props.rs`) and the cargo-fuzz targets
//! (`tests/fuzz/fuzz_targets/`) for every parser of outside input except the MQTT codec (whose
//! bodies are in [`crate::codec::fuzzing`]): SCRAM messages, the WebSocket upgrade request and
//! frames, the TLS stream's input and its record layer after the handshake, the client certificate's subject CN, the ACL and password files, and `tern.toml`.
//!
//! Each body takes arbitrary bytes, must never panic, and asserts what the parser promises on
//! every input (a consumed length within what was given, a round trip, split invariance), so a
//! fuzzer finds wrong answers as well as crashes. Nothing here reads files or sockets.
#![doc(hidden)]

use std::sync::Arc;

use crate::auth::{Acl, PasswordDb};
use crate::enhanced_auth::{self, Mechanism, ScramCredential, ScramSha256, Step};
use crate::net::ws;

/// SCRAM-SHA-256 server side (RFC 5802) on client messages: `data` is the client-first message,
/// then, after the first 0x00 byte if any, the client-final message. The mechanism knows one
/// user, `user`, with a one-iteration credential so that each run stays cheap.
///
/// Checks: no panic; a server-first message is `r=<client nonce + server nonce>,s=..,i=..`; the
/// exchange never succeeds for a user that does not exist or without the right proof (the
/// input has no way to compute it for the fixed nonce except by chance, which the fuzzer cannot
/// reach); a parsed credential string re-encodes to itself.
pub fn scram(data: &[u8]) {
    let (first, last) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let cred = ScramCredential::derive(b"pencil", b"fuzz-salt", 1);
    let m = ScramSha256::for_fuzzing(Arc::new(move |u| (u == "user").then(|| cred.clone())));
    if let Ok(Step::Continue(server_first, ex)) = m.start(first) {
        let server_first = String::from_utf8(server_first).expect("server-first is UTF-8");
        assert!(server_first.starts_with("r="), "{server_first}");
        assert!(server_first.contains(",s=") && server_first.contains(",i="), "{server_first}");
        if let Ok(Step::Success { username, .. }) = ex.step(last) {
            panic!("exchange succeeded for {username:?} without the password");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(c) = ScramCredential::parse(text) {
            assert_eq!(ScramCredential::parse(&c.to_hash_string()), Some(c));
        }
        // The client side parses a server-first message too (the load harness uses it); a
        // small iteration bound keeps each run cheap, the real bound is tested in enhanced_auth.
        let _ = enhanced_auth::client::finish_bounded(b"pw", "n,,n=user,r=a", text, 64);
    }
}

/// The WebSocket upgrade request parser on `data` for path `/mqtt`.
///
/// Checks: no panic; a complete request consumed at most what was given and at most
/// [`ws::HANDSHAKE_BYTES_MAX`]; parsing exactly that prefix gives the same answer; every
/// response (101 or error) is a complete HTTP/1.1 response with the right status code.
pub fn ws_handshake(data: &[u8]) {
    let result = ws::parse_request(data, "/mqtt");
    let (status, response) = match &result {
        Ok(None) => {
            assert!(data.len() < ws::HANDSHAKE_BYTES_MAX, "incomplete beyond the bound");
            return;
        }
        Ok(Some((up, n))) => {
            assert!(*n <= data.len() && *n <= ws::HANDSHAKE_BYTES_MAX, "consumed {n}");
            let again = ws::parse_request(&data[..*n], "/mqtt");
            assert_eq!(again, Ok(Some((up.clone(), *n))), "prefix parses the same");
            (101, up.response())
        }
        Err(e) => (e.status().0, e.response()),
    };
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = resp.parse(&response).expect("our response is valid HTTP");
    assert!(parsed.is_complete(), "our response is complete");
    assert_eq!(resp.code, Some(status));
}

/// Largest frame payload the frame body accepts (small, so the limit is reached).
const FUZZ_FRAME_BYTES_MAX: usize = 1024;

/// The WebSocket frame decoder on `data[1..]` fed in chunks of `data[0] + 1` bytes.
///
/// Checks: no panic; the decoder never writes more bytes than it read; the outcome does not
/// depend on the split: the same payload bytes, the same error code, the same close code and
/// the same pending pong as one call over the whole input.
pub fn ws_frames(data: &[u8]) {
    let Some((&chunk, wire)) = data.split_first() else { return };
    let whole = {
        let mut dec = ws::FrameDecoder::new(FUZZ_FRAME_BYTES_MAX);
        let mut buf = wire.to_vec();
        let r = dec.decode_in_place(&mut buf).map(|n| {
            assert!(n <= wire.len());
            buf.truncate(n);
            buf
        });
        (r, dec.close_received(), dec.take_pong())
    };
    let mut dec = ws::FrameDecoder::new(FUZZ_FRAME_BYTES_MAX);
    let mut out = Vec::new();
    let mut err = None;
    for piece in wire.chunks(usize::from(chunk) + 1) {
        let mut buf = piece.to_vec();
        match dec.decode_in_place(&mut buf) {
            Ok(n) => {
                assert!(n <= piece.len(), "wrote {n} from {}", piece.len());
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    match (&whole.0, err) {
        (Ok(bytes), None) => {
            assert_eq!(bytes, &out, "payload depends on the split");
            assert_eq!(whole.1, dec.close_received(), "close depends on the split");
            assert_eq!(whole.2, dec.take_pong(), "pong depends on the split");
        }
        (Err(a), Some(b)) => assert_eq!(a.code, b.code, "error depends on the split"),
        (a, b) => panic!("one split failed and the other did not: {a:?} / {b:?}"),
    }
}

/// The subject CN extraction on arbitrary DER. Checks: no panic; a name found is non-empty and
/// holds no U+0000 (it becomes an MQTT user name).
pub fn certificate_cn(data: &[u8]) {
    if let Some(cn) = crate::net::tls::subject_common_name(data) {
        assert!(!cn.is_empty() && !cn.contains('\0'), "{cn:?}");
    }
}

/// Identities and topics the ACL body asks about, wildcards and `$` topics included
/// (CVE-2017-7650: an identity holding `+` or `#` must not widen a pattern).
const ACL_PROBES: [(Option<&str>, &str, &str); 6] = [
    (None, "c", "a/b"),
    (Some("u"), "c", "$SYS/x"),
    (Some("+"), "#", "a/+/#"),
    (Some("#"), "+", "#"),
    (Some("u/v"), "c/d", "u/v/c/d"),
    (Some("ü"), "\u{1F600}", "$xyz/€"),
];

/// The ACL file parser on `data` (as UTF-8, lossily). Checks: no panic in parsing or in any
/// check; an identity made of wildcards gets no more than an ordinary one would on a topic
/// whose pattern it would match by substitution (asked in both directions, no panic); a file
/// with no rule grants nothing.
pub fn acl_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(acl) = Acl::parse("fuzz.acl", &text) else { return };
    let mut any_rule = false;
    for (user, client, topic) in ACL_PROBES {
        for t in [topic, text.lines().next().unwrap_or("")] {
            any_rule |= acl.can_publish(user, client, t);
            any_rule |= acl.can_read(user, client, t);
            any_rule |= acl.can_subscribe(user, client, t);
        }
        // Writing to $SYS is never granted by an ACL.
        assert!(!acl.can_publish(user, client, "$SYS/broker/x"), "$SYS write granted");
    }
    let has_rules = text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("topic") || l.starts_with("pattern")
    });
    assert!(has_rules || !any_rule, "a file without rules granted access");
}

/// The password file parser on `data` (as UTF-8, lossily). Checks: no panic; a parsed file
/// written back ([`PasswordDb::to_file_string`]) parses again to the same users. No password is
/// checked: that is the slow part by design and not a parser.
pub fn password_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(db) = PasswordDb::parse("fuzz.passwd", &text) else { return };
    let again = PasswordDb::parse("again", &db.to_file_string()).expect("written file parses");
    assert_eq!(again.len(), db.len());
    assert_eq!(again.to_file_string(), db.to_file_string());
}

/// `tern.toml` parsing and validation on `data` (as UTF-8, lossily), without opening the files
/// it names. Checks: no panic; an error names the file; an accepted config passes
/// [`crate::config::Config`]'s own checks again.
pub fn config_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::config::Config::from_str_without_files(&text, "fuzz.toml") {
        Ok(c) => {
            let shards = c.shard_count();
            assert!((1..=256).contains(&shards), "{shards} shards");
        }
        Err(e) => assert_eq!(e.file, "fuzz.toml"),
    }
}

/// A throw-away self-signed P-256 certificate and key for `localhost`, made for the TLS fuzz
/// body only (not a secret: it protects nothing).
const FUZZ_TLS_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASWgAwIBAgIUD3c/evdNsJryymo/XYZh035+Xh4wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNjA1NDExMVoYDzIxMjYxMTAy
MDU0MTExWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATED7znpK6F8zpcsIweIx33Y5LEYxodDMbJBhyOe7UsmMfb6piz5QrV
LrNBhSyJ5Kn/D2YFXkBKKPr5YArR+CAvo1MwUTAdBgNVHQ4EFgQUYG0PLUHxW6xr
8XWj1R728tp7LWUwHwYDVR0jBBgwFoAUYG0PLUHxW6xr8XWj1R728tp7LWUwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA9Pt5hFlgu9cOAnmD3v18
Apcu6/ReScfO9E7hD5rNn68CIQCOeybgF+yjNZsnX4wY0b7PZDzPorrBtp2nqwPx
SEj5Dg==
-----END CERTIFICATE-----
";
const FUZZ_TLS_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0c0ImevxNDnj7loi
Zgd3YTDBXlghQkpf9dRkYRvz9ZWhRANCAATED7znpK6F8zpcsIweIx33Y5LEYxod
DMbJBhyOe7UsmMfb6piz5QrVLrNBhSyJ5Kn/D2YFXkBKKPr5YArR+CAv
-----END PRIVATE KEY-----
";

/// The server configuration and a real ClientHello for it, made once.
fn fuzz_tls() -> &'static (Arc<rustls::ServerConfig>, Vec<u8>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    static TLS: std::sync::OnceLock<(Arc<rustls::ServerConfig>, Vec<u8>)> =
        std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = CertificateDer::from_pem_slice(FUZZ_TLS_CERT.as_bytes()).expect("fixed cert");
        let key = PrivateKeyDer::from_pem_slice(FUZZ_TLS_KEY.as_bytes()).expect("fixed key");
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("fixed cert and key match");
        // As `tls::server_config` sets it: the keys move to Tern's record layer.
        server.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("fixed cert");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("literal name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut hello = Vec::new();
        c.write_tls(&mut hello).expect("into a Vec");
        (Arc::new(server), hello)
    })
}

/// A peer in memory: reads give `input` in chunks of at most `chunk` bytes, then end of
/// stream (never pending); writes are taken whole and counted.
struct MemoryPeer {
    input: Vec<u8>,
    at: usize,
    chunk: usize,
    written: usize,
}

impl futures_lite::io::AsyncRead for MemoryPeer {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = self.chunk.min(buf.len()).min(self.input.len() - self.at);
        let at = self.at;
        buf[..n].copy_from_slice(&self.input[at..at + n]);
        self.at += n;
        std::task::Poll::Ready(Ok(n))
    }
}

impl futures_lite::io::AsyncWrite for MemoryPeer {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.written += buf.len();
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Tern's TLS stream ([`crate::net::tls::TlsStream`], the server side) on what a hostile
/// client sends: the first byte picks the read size (1..=255 bytes per read, so records arrive
/// split anywhere) and, when odd, puts a real ClientHello before the rest, so that the rest
/// meets a server that has answered and waits for the client's next flight. The handshake
/// runs to its end (it cannot succeed: the rest is not the client's keyed flight), then, if it
/// did, the plaintext is read to the end.
///
/// Checks: no panic; the stream ends (error or end of stream) within the input; the stream's
/// own buffers stay within `TLS_HELD_MAX` (256 KiB).
pub fn tls_stream(data: &[u8]) {
    use futures_lite::io::AsyncReadExt;
    let (config, hello) = fuzz_tls();
    let (first, rest) = data.split_first().map_or((1, data), |(f, r)| (*f, r));
    let mut input = Vec::with_capacity(hello.len() + rest.len());
    if first & 1 == 1 {
        input.extend_from_slice(hello);
    }
    input.extend_from_slice(rest);
    let peer = MemoryPeer { input, at: 0, chunk: usize::from(first.max(1)), written: 0 };
    futures_lite::future::block_on(async {
        let Ok(mut s) = crate::net::tls::TlsStream::accept(Arc::clone(config), peer).await else {
            return;
        };
        assert!(s.buffered_capacity() <= TLS_HELD_MAX, "{} B held", s.buffered_capacity());
        let mut buf = [0u8; 4096];
        // Bounded: every read either returns data taken from the finite input or ends.
        for _ in 0..=data.len() + 1 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    assert!(s.buffered_capacity() <= TLS_HELD_MAX, "{} B", s.buffered_capacity())
                }
            }
        }
        panic!("the stream did not end with its input");
    });
}

/// What [`tls_stream`] allows the stream to hold in its own buffers: a partial record, a
/// read's plaintext and a few records of output (src/net/tls.rs has the exact bounds).
const TLS_HELD_MAX: usize = 256 << 10;

/// Tern's TLS record layer after the handshake ([`crate::net::tls::records`]) on what a hostile
/// client that holds the client's traffic keys sends. Both sides start from fixed secrets; the
/// first byte picks the version (bit 0: TLS 1.2), the cipher (bits 1-2) and how the bytes
/// arrive (bits 3-7: read size). The rest is a list of operations building the client's bytes:
/// `0`: a sealed application data record (2 length bytes, then the content, or a fill byte when
/// the high bit of the length is set), `1`: a sealed record of any inner type (type byte, 2
/// length bytes, padding byte for TLS 1.3, content), `2`: raw bytes (length byte, bytes), `3`:
/// flip bits of a byte already written (2 position bytes, mask byte).
///
/// Checks: no panic; the plaintext the server hands out is a prefix of the application data
/// the client sealed, in order, and all of it when every record was a valid non-empty
/// application data record; the bytes held between reads are less than one record; the server
/// only ever answers with one alert, and that alert opens on the client side as the one the
/// server's error names.
pub fn tls_records(data: &[u8]) {
    use crate::net::tls::records::{Cipher, ReadEnd, Records, Version, PLAINTEXT_MAX};
    let Some((&setup, mut ops)) = data.split_first() else {
        return;
    };
    let version = if setup & 1 == 0 { Version::Tls13 } else { Version::Tls12 };
    let cipher = match (setup >> 1) & 3 {
        0 => Cipher::Aes128Gcm,
        1 => Cipher::Aes256Gcm,
        _ => Cipher::Chacha20Poly1305,
    };
    let chunk = match setup >> 3 {
        0 => usize::MAX,
        n => usize::from(n) * usize::from(n) * 20,
    };
    let (ck, civ, sk, siv) = ([0x11u8; 32], [0x22u8; 12], [0x33u8; 32], [0x44u8; 12]);
    let klen = cipher.key_len();
    let (ck, sk) = (&ck[..klen], &sk[..klen]);
    let fixed = "fixed secrets of the right size";
    let mut server = Records::from_fixed(version, cipher, (ck, &civ), (sk, &siv)).expect(fixed);
    let mut client = Records::from_fixed(version, cipher, (sk, &siv), (ck, &civ)).expect(fixed);

    let mut take = |n: usize| -> &[u8] {
        let (head, rest) = ops.split_at(n.min(ops.len()));
        ops = rest;
        head
    };
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut clean = true;
    // Bounded: every pass takes at least the operation byte.
    while let Some(&op) = take(1).first() {
        match op % 4 {
            0 | 1 => {
                let (typ, padding) = if op % 4 == 0 {
                    (23, 0)
                } else {
                    let t = take(2);
                    (t.first().copied().unwrap_or(23), usize::from(t.get(1).copied().unwrap_or(0)))
                };
                let l = take(2);
                let len = u16::from_be_bytes([
                    l.first().copied().unwrap_or(0),
                    l.get(1).copied().unwrap_or(0),
                ]);
                let content = if len & 0x8000 != 0 {
                    let fill = take(1).first().copied().unwrap_or(0);
                    vec![fill; usize::from(len & 0x7fff).min(PLAINTEXT_MAX + 1)]
                } else {
                    take(usize::from(len)).to_vec()
                };
                if client.seal_padded(typ, &content, padding, &mut wire).is_err() {
                    break;
                }
                // TLS 1.3 with type 0 (which is padding, RFC 8446 §5.2): the receiver takes the
                // last non-zero byte of the content as the type.
                let (typ, content) = match (version, typ) {
                    (Version::Tls13, 0) => match content.iter().rposition(|&b| b != 0) {
                        Some(at) => (content[at], &content[..at]),
                        None => (0, &content[..0]),
                    },
                    _ => (typ, &content[..]),
                };
                if typ == 23 {
                    expected.extend_from_slice(content);
                }
                clean &= typ == 23 && !content.is_empty() && content.len() <= PLAINTEXT_MAX;
            }
            2 => {
                let n = take(1).first().copied().unwrap_or(0);
                wire.extend_from_slice(take(usize::from(n)));
                clean = false;
            }
            _ => {
                let p = take(3);
                if let (Some(&a), Some(&b), Some(&mask)) = (p.first(), p.get(1), p.get(2)) {
                    if !wire.is_empty() {
                        let at = usize::from(u16::from_be_bytes([a, b])) % wire.len();
                        wire[at] ^= mask | 1;
                        clean = false;
                    }
                }
            }
        }
    }

    let record_max = 5 + match version {
        Version::Tls13 => crate::net::tls::records::TLS13_CIPHERTEXT_MAX,
        Version::Tls12 => crate::net::tls::records::TLS12_CIPHERTEXT_MAX,
    };
    let mut held = Vec::new();
    let mut plain = Vec::new();
    let mut answers = Vec::new();
    let mut outcome = Ok(ReadEnd::NeedData);
    for piece in wire.chunks(chunk.max(1)) {
        held.extend_from_slice(piece);
        match server.read(&mut held, &mut answers, &mut |p| plain.extend_from_slice(p)) {
            Ok((used, end)) => {
                assert!(used <= held.len());
                held.drain(..used);
                outcome = Ok(end);
                if end == ReadEnd::Closed {
                    // Nothing after close_notify is read.
                    break;
                }
                assert!(held.len() < record_max, "{} B held between reads", held.len());
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    assert!(expected.starts_with(&plain), "plaintext that the client did not seal");
    if clean {
        assert_eq!(outcome, Ok(ReadEnd::NeedData), "valid records refused");
        assert_eq!(plain, expected, "valid records lost");
    }
    match outcome {
        Err(e) if e.alert.is_some() => {
            assert!(answers.len() <= 64, "{} B of answers", answers.len());
            let mut got = Vec::new();
            let opened =
                client.read(&mut answers, &mut Vec::new(), &mut |p| got.extend_from_slice(p));
            assert!(got.is_empty());
            assert_eq!(opened.map_err(|f| f.peer), Err(e.alert), "the alert sent is the one named");
        }
        _ => assert!(answers.is_empty(), "answers without a key update: {} B", answers.len()),
    }
}
