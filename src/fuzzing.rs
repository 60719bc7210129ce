//! Bodies shared by the property tests (`tests/parsers_props.rs`) and the cargo-fuzz targets
//! (`tests/fuzz/fuzz_targets/`) for every parser of outside input except the MQTT codec (whose
//! bodies are in [`crate::codec::fuzzing`]): SCRAM messages, the WebSocket upgrade request and
//! frames, the client certificate's subject CN, the ACL and password files, and `tern.toml`.
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
