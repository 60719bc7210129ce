//! The WebSocket opening handshake (RFC 6455 §4.2), server side, without IO: the HTTP/1.1
//! upgrade request, parsed by `httparse`, and the responses (101, or an HTTP error).
//!
//! Memory: nothing is kept between calls. The caller buffers the request (at most
//! [`HANDSHAKE_BYTES_MAX`] bytes) and calls [`parse_request`] again when more arrives; the
//! headers are parsed into a fixed array of [`HEADERS_MAX`] slots on the stack.

use std::fmt;

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Largest upgrade request accepted (request line and headers). Browsers send well under 2 KiB.
pub const HANDSHAKE_BYTES_MAX: usize = 8 * 1024;

/// Header lines accepted in an upgrade request. Browsers send about 15; more is refused with
/// 431 rather than parsed into a growing list.
pub const HEADERS_MAX: usize = 48;

/// The GUID of RFC 6455 §1.3, appended to the client's key to compute the accept value.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Subprotocols we speak, in order of preference: `mqtt` (MQTT 3.1.1 and 5.0), then the name
/// MQTT 3.1 clients used.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// A valid upgrade request: what the 101 response needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
    /// The chosen subprotocol, `None` when the client offered none.
    pub protocol: Option<&'static str>,
}

impl Upgrade {
    /// The `101 Switching Protocols` response.
    pub fn response(&self) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n",
            self.accept
        );
        if let Some(p) = self.protocol {
            r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        r.push_str("\r\n");
        r.into_bytes()
    }
}

/// Why an upgrade request was refused; each maps to an HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Malformed request or missing/invalid WebSocket header: 400.
    BadRequest(&'static str),
    /// The path is not the listener's `ws_path`: 404.
    NotFound,
    /// Not a GET: 405.
    MethodNotAllowed,
    /// `Sec-WebSocket-Version` is not 13: 426, advertising 13.
    UnsupportedVersion,
    /// The request is larger than [`HANDSHAKE_BYTES_MAX`] or has more than [`HEADERS_MAX`]
    /// header lines: 431.
    TooLarge,
}

impl HandshakeError {
    /// The HTTP status code and reason phrase.
    pub const fn status(&self) -> (u16, &'static str) {
        match self {
            HandshakeError::BadRequest(_) => (400, "Bad Request"),
            HandshakeError::NotFound => (404, "Not Found"),
            HandshakeError::MethodNotAllowed => (405, "Method Not Allowed"),
            HandshakeError::UnsupportedVersion => (426, "Upgrade Required"),
            HandshakeError::TooLarge => (431, "Request Header Fields Too Large"),
        }
    }

    /// The HTTP response sent before closing the connection.
    pub fn response(&self) -> Vec<u8> {
        let (code, phrase) = self.status();
        let body = format!("{self}\n");
        let mut r = format!("HTTP/1.1 {code} {phrase}\r\nConnection: close\r\n");
        if matches!(self, HandshakeError::UnsupportedVersion) {
            r.push_str("Sec-WebSocket-Version: 13\r\n");
        }
        if matches!(self, HandshakeError::MethodNotAllowed) {
            r.push_str("Allow: GET\r\n");
        }
        r.push_str(&format!(
            "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        r.into_bytes()
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::BadRequest(why) => write!(f, "bad WebSocket upgrade request: {why}"),
            HandshakeError::NotFound => write!(f, "no MQTT WebSocket endpoint at this path"),
            HandshakeError::MethodNotAllowed => write!(f, "the WebSocket upgrade must be a GET"),
            HandshakeError::UnsupportedVersion => write!(f, "only WebSocket version 13 is spoken"),
            HandshakeError::TooLarge => write!(
                f,
                "upgrade request larger than {HANDSHAKE_BYTES_MAX} bytes or {HEADERS_MAX} headers"
            ),
        }
    }
}

/// Parses an upgrade request from the start of `buf`. `Ok(None)`: the headers are not complete
/// yet (the caller reads more, up to [`HANDSHAKE_BYTES_MAX`]). `Ok(Some((upgrade, n)))`: the
/// request took `n` bytes; anything after it is already WebSocket frames.
pub fn parse_request(buf: &[u8], path: &str) -> Result<Option<(Upgrade, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    // Never look past the bound: the request must end within it.
    let window = &buf[..buf.len().min(HANDSHAKE_BYTES_MAX)];
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= HANDSHAKE_BYTES_MAX => {
            return Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(httparse::Error::Version) => return Err(HandshakeError::BadRequest("not HTTP/1.1")),
        Err(_) => return Err(HandshakeError::BadRequest("malformed request")),
    };
    if req.version != Some(1) {
        return Err(HandshakeError::BadRequest("not HTTP/1.1"));
    }
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    // The query string, if any, is not part of the path.
    if req.path.and_then(|t| t.split('?').next()) != Some(path) {
        return Err(HandshakeError::NotFound);
    }
    let upgrade = websocket_headers(req.headers)?;
    Ok(Some((upgrade, len)))
}

/// Checks the WebSocket headers of a parsed GET (RFC 6455 §4.2.1) and picks the subprotocol.
fn websocket_headers(headers: &[httparse::Header<'_>]) -> Result<Upgrade, HandshakeError> {
    let mut upgrade = false;
    let mut connection_upgrade = false;
    let mut ws_version = None;
    let mut key = None;
    let mut offered = false;
    let mut protocol: Option<&'static str> = None;
    for h in headers {
        // Header values may carry obs-text; the ones we read must be ASCII, others are ignored.
        let value = std::str::from_utf8(h.value).map(str::trim);
        let has_token = |token: &str| {
            value.is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token("upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            ws_version = Some(value.unwrap_or(""));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value.unwrap_or(""));
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            offered = true;
            for p in value.unwrap_or("").split(',').map(str::trim) {
                let ours = SUBPROTOCOLS.iter().position(|s| s.eq_ignore_ascii_case(p));
                let current = protocol.and_then(|c| SUBPROTOCOLS.iter().position(|s| *s == c));
                if let Some(i) = ours {
                    if current.is_none_or(|c| i < c) {
                        protocol = Some(SUBPROTOCOLS[i]);
                    }
                }
            }
        }
    }
    if !upgrade {
        return Err(HandshakeError::BadRequest("missing Upgrade: websocket"));
    }
    if !connection_upgrade {
        return Err(HandshakeError::BadRequest("missing Connection: Upgrade"));
    }
    match ws_version {
        Some("13") => {}
        Some(_) => return Err(HandshakeError::UnsupportedVersion),
        None => return Err(HandshakeError::BadRequest("missing Sec-WebSocket-Version")),
    }
    let key = key.ok_or(HandshakeError::BadRequest("missing Sec-WebSocket-Key"))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if decoded.map(|k| k.len()) != Ok(16) {
        return Err(HandshakeError::BadRequest("Sec-WebSocket-Key is not 16 bytes in base64"));
    }
    // A client that offers subprotocols fails the connection unless one is selected; say why
    // instead. A client that offers none (some embedded libraries) is accepted.
    if offered && protocol.is_none() {
        return Err(HandshakeError::BadRequest("subprotocol mqtt not offered"));
    }
    Ok(Upgrade { accept: accept_key(key), protocol })
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: &str) -> String {
        format!(
            "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn upgrade_request_is_accepted() {
        let text = request("Sec-WebSocket-Protocol: foo, mqttv3.1, mqtt\r\n");
        let mut buf = text.clone().into_bytes();
        buf.extend_from_slice(&[0x82, 0x80]); // the first frame may follow at once
        let (up, n) = parse_request(&buf, "/mqtt").expect("valid").expect("complete");
        assert_eq!(n, text.len());
        assert_eq!(up.protocol, Some("mqtt"));
        let resp = String::from_utf8(up.response()).expect("ascii");
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{resp}");
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: mqtt\r\n") && resp.ends_with("\r\n\r\n"));

        let old = request("Sec-WebSocket-Protocol: mqttv3.1\r\n");
        let (up, _) = parse_request(old.as_bytes(), "/mqtt").expect("ok").expect("complete");
        assert_eq!(up.protocol, Some("mqttv3.1"));
        let none = request("");
        let (up, _) = parse_request(none.as_bytes(), "/mqtt").expect("ok").expect("complete");
        assert_eq!(up.protocol, None);
        assert!(!String::from_utf8_lossy(&up.response()).contains("Sec-WebSocket-Protocol"));
        // A query string is not part of the path.
        let q = request("").replacen("/mqtt", "/mqtt?x=1", 1);
        assert!(parse_request(q.as_bytes(), "/mqtt").expect("ok").is_some());
    }

    #[test]
    fn incomplete_and_oversized_requests() {
        let text = request("");
        assert_eq!(parse_request(&text.as_bytes()[..text.len() - 1], "/mqtt"), Ok(None));
        let big = vec![b'a'; HANDSHAKE_BYTES_MAX];
        assert_eq!(parse_request(&big, "/mqtt"), Err(HandshakeError::TooLarge));
        let long = request(&format!("X-Pad: {}\r\n", "p".repeat(HANDSHAKE_BYTES_MAX)));
        assert_eq!(parse_request(long.as_bytes(), "/mqtt"), Err(HandshakeError::TooLarge));
    }

    #[test]
    fn bad_requests_are_refused_with_a_status() {
        let cases: [(String, u16); 9] = [
            (request("").replacen("/mqtt", "/other", 1), 404),
            (request("").replacen("GET", "POST", 1), 405),
            (request("").replace("Version: 13", "Version: 8"), 426),
            (request("").replace("Upgrade: websocket", "Upgrade: h2c"), 400),
            (request("").replace("keep-alive, Upgrade", "keep-alive"), 400),
            (request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), 400),
            (request("Sec-WebSocket-Protocol: chat\r\n"), 400),
            (request("").replace("HTTP/1.1", "HTTP/1.0"), 400),
            (request("bad header line\r\n"), 400),
        ];
        for (text, status) in cases {
            let e = parse_request(text.as_bytes(), "/mqtt").expect_err(&text);
            assert_eq!(e.status().0, status, "{text}");
            let resp = String::from_utf8(e.response()).expect("ascii");
            assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
        }
        let e = HandshakeError::UnsupportedVersion.response();
        assert!(String::from_utf8_lossy(&e).contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn too_many_headers_is_431() {
        let pad: String = (0..HEADERS_MAX).map(|i| format!("X-{i}: v\r\n")).collect();
        let e = parse_request(request(&pad).as_bytes(), "/mqtt").expect_err("too many");
        assert_eq!(e, HandshakeError::TooLarge);
    }
}
