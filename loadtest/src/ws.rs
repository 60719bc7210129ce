//! MQTT over WebSocket for the load generator's connections (`--ws`, issue 11: the broker's
//! memory per idle `ws`/`wss` connection). The client side of RFC 6455, only what MQTT needs:
//! the upgrade request (sent at once, the first frames pipelined behind it), masked binary
//! frames out, unmasked binary frames in, a close frame as the end of the stream, pings
//! answered.

use std::io::{Error, ErrorKind};

/// The largest frame payload accepted from the broker (it sends one MQTT packet or less per
/// frame; the generator's packets are far smaller).
const FRAME_BYTES_MAX: u64 = 16 << 20;

/// The response head is refused past this size.
const RESPONSE_HEAD_MAX: usize = 8 << 10;

/// One connection's WebSocket state above its byte stream.
pub struct WsClient {
    /// Encoded bytes (request, frames) the byte stream has not taken yet.
    pub out: Vec<u8>,
    /// Bytes read and not yet parsed (response head, partial frame).
    inbuf: Vec<u8>,
    /// Payload parsed and not yet handed to the reader.
    plain: Vec<u8>,
    upgraded: bool,
    closed: bool,
    mask_state: u32,
}

impl WsClient {
    /// A client that asks for `path` on `host`, with the MQTT subprotocol.
    pub fn new(host: &str, path: &str, seed: u32) -> Self {
        // A fixed key: the broker only echoes its digest (the generator checks the status line).
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        Self {
            out: request.into_bytes(),
            inbuf: Vec::new(),
            plain: Vec::new(),
            upgraded: false,
            closed: false,
            mask_state: seed | 1,
        }
    }

    /// Frames `data` as one masked binary frame behind what waits in `out`.
    pub fn frame(&mut self, data: &[u8]) {
        self.out.push(0x82);
        let len = data.len();
        if len < 126 {
            self.out.push(0x80 | len as u8);
        } else if len <= usize::from(u16::MAX) {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift32: the masks need not be secret here, only to vary.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        let mask = x.to_be_bytes();
        self.out.extend_from_slice(&mask);
        self.out.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }

    /// Takes `bytes` read from the stream; returns pong frames to send for pings in `out`.
    pub fn ingest(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.inbuf.extend_from_slice(bytes);
        if !self.upgraded {
            let Some(end) = self.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if self.inbuf.len() > RESPONSE_HEAD_MAX {
                    return Err(Error::other("WebSocket response head too long"));
                }
                return Ok(());
            };
            let head = String::from_utf8_lossy(&self.inbuf[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                let line = head.lines().next().unwrap_or_default().to_owned();
                return Err(Error::other(format!("WebSocket upgrade refused: {line}")));
            }
            self.inbuf.drain(..end + 4);
            self.upgraded = true;
        }
        // Bounded: each pass consumes one whole frame or returns.
        while !self.closed {
            let Some((opcode, header, len)) = frame_header(&self.inbuf)? else { return Ok(()) };
            let total = header + len;
            if self.inbuf.len() < total {
                return Ok(());
            }
            let payload = &self.inbuf[header..total];
            match opcode {
                0x0..=0x2 => self.plain.extend_from_slice(payload),
                0x8 => self.closed = true,
                0x9 => {
                    let pong = payload.to_vec();
                    self.frame_control(0x8A, &pong);
                }
                0xA => {}
                _ => return Err(Error::other(format!("WebSocket opcode {opcode:#x}"))),
            }
            self.inbuf.drain(..total);
        }
        Ok(())
    }

    fn frame_control(&mut self, first: u8, payload: &[u8]) {
        let len = payload.len().min(125);
        self.out.extend_from_slice(&[first, 0x80 | len as u8, 0, 0, 0, 0]);
        self.out.extend_from_slice(&payload[..len]);
    }

    /// Copies parsed payload into `buf`: `Ok(0)` once the broker's close frame was read and
    /// everything before it handed over, `WouldBlock` when nothing is there yet.
    pub fn read_into(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.plain.is_empty() {
            return if self.closed { Ok(0) } else { Err(ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(self.plain.len());
        buf[..n].copy_from_slice(&self.plain[..n]);
        self.plain.drain(..n);
        Ok(n)
    }
}

/// The opcode, header length and payload length of the frame at the start of `b`, if its
/// header is whole. Server frames must not be masked.
fn frame_header(b: &[u8]) -> Result<Option<(u8, usize, usize)>, Error> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err(Error::other("masked frame from the server"));
    }
    let (header, len) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (4, u64::from(u16::from_be_bytes([b[2], b[3]]))),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (10, u64::from_be_bytes(n))
        }
        126 | 127 => return Ok(None),
        n => (2, u64::from(n)),
    };
    if len > FRAME_BYTES_MAX {
        return Err(Error::other(format!("WebSocket frame of {len} bytes")));
    }
    Ok(Some((b[0] & 0x0F, header, len as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        if payload.len() < 126 {
            f.push(payload.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_are_masked_and_responses_unframed() {
        let mut ws = WsClient::new("localhost", "/mqtt", 7);
        let request_len = ws.out.len();
        assert!(String::from_utf8_lossy(&ws.out).starts_with("GET /mqtt HTTP/1.1\r\n"));
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        ws.frame(&data);
        let f = &ws.out[request_len..];
        assert_eq!(f[0], 0x82);
        assert_eq!(f[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 300);
        let mask = &f[4..8];
        let unmasked: Vec<u8> = f[8..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(unmasked, data);

        let mut buf = [0u8; 64];
        assert_eq!(ws.read_into(&mut buf).map_err(|e| e.kind()), Err(ErrorKind::WouldBlock));
        let mut input = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        input.extend(server_frame(0x2, b"\x20\x02\x00\x00"));
        input.extend(server_frame(0x9, b"hi"));
        let partial = server_frame(0x2, b"\xd0\x00");
        input.extend_from_slice(&partial[..1]);
        // In pieces of three bytes: the head and the frames arrive split anywhere.
        let out_before = ws.out.len();
        for chunk in input.chunks(3) {
            ws.ingest(chunk).expect("valid input");
        }
        assert_eq!(ws.read_into(&mut buf).expect("CONNACK"), 4);
        assert_eq!(&buf[..4], b"\x20\x02\x00\x00");
        assert_eq!(&ws.out[out_before..out_before + 2], &[0x8A, 0x82], "the ping is answered");
        ws.ingest(&partial[1..]).expect("the rest of the frame");
        ws.ingest(&server_frame(0x8, &[0x03, 0xe8])).expect("close");
        assert_eq!(ws.read_into(&mut buf).expect("PINGRESP"), 2);
        assert_eq!(ws.read_into(&mut buf).expect("end"), 0, "the close frame ends the stream");
    }

    #[test]
    fn a_refused_upgrade_and_bad_frames_are_errors() {
        let mut ws = WsClient::new("localhost", "/mqtt", 1);
        assert!(ws.ingest(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        let mut ws = WsClient::new("localhost", "/mqtt", 1);
        ws.ingest(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").expect("upgraded");
        assert!(ws.ingest(&[0x82, 0x81, 0, 0, 0, 0, 1]).is_err(), "masked server frame");
        let mut ws = WsClient::new("localhost", "/mqtt", 1);
        ws.ingest(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").expect("upgraded");
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(ws.ingest(&huge).is_err(), "oversized frame");
        let mut ws = WsClient::new("localhost", "/mqtt", 1);
        assert!(ws.ingest(&vec![b'x'; RESPONSE_HEAD_MAX + 1]).is_err(), "endless head");
    }
}
