//! WebSocket frames (RFC 6455 §5), server side, without IO: a decoder that turns masked client
//! frames into the MQTT byte stream in place, and the encoders of the server's frames.
//!
//! What MQTT over WebSocket needs (MQTT 5.0 §6, 3.1.1 §6): binary frames only, the MQTT bytes in
//! any split (a packet over several frames, several packets in one frame; the shard reassembles
//! the byte stream, so frame boundaries carry no meaning here). Text frames are refused with
//! close code 1003.
//!
//! Memory: the decoder keeps at most one partial frame header (14 bytes) and one partial
//! control-frame payload (125 bytes) per connection; data payload bytes are never buffered, they
//! are unmasked where they lie and passed on. It must stay that way: no per-connection buffer.

use std::fmt;

/// Largest payload of a control frame (RFC 6455 §5.5).
const CONTROL_PAYLOAD_MAX: usize = 125;

/// Frame opcodes (RFC 6455 §5.2).
mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Close status codes (RFC 6455 §7.4.1) the server sends.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Data of a type we do not accept (text frames).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A close reason that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame larger than the bound.
    pub const TOO_BIG: u16 = 1009;
}

/// A peer frame that ends the WebSocket: the close code to send and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// Close status code sent to the client.
    pub code: u16,
    /// Human-readable reason, also sent in the close frame.
    pub reason: &'static str,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebSocket close {}: {}", self.code, self.reason)
    }
}

impl std::error::Error for FrameError {}

const fn frame_error(code: u16, reason: &'static str) -> FrameError {
    FrameError { code, reason }
}

/// Where the decoder is within the current frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// Collecting the header into `hdr`.
    Header,
    /// In a binary or continuation frame's payload: bytes go to the output.
    Data,
    /// In a control frame's payload: bytes go to `control`.
    Control,
    /// A close frame was received: nothing after it is read.
    Closed,
}

/// Decodes masked client frames, streaming binary payloads in place.
#[derive(Debug)]
pub struct FrameDecoder {
    part: Part,
    /// The header being collected: at most 2 + 8 (length) + 4 (mask) bytes.
    hdr: [u8; 14],
    hdr_len: u8,
    /// Current frame: opcode, masking key, position in the key, payload bytes left.
    op: u8,
    mask: [u8; 4],
    mask_pos: usize,
    remaining: u64,
    /// A fragmented binary message is in progress: the next data frame is a continuation.
    in_message: bool,
    /// Payload of the control frame being received (at most 125 bytes).
    control: Vec<u8>,
    /// Payload of the latest ping not answered yet.
    pong: Option<Vec<u8>>,
    /// The close code received (1005 "no status" when the close frame had none).
    close: Option<u16>,
    /// Largest payload of one frame accepted.
    frame_bytes_max: u64,
}

impl FrameDecoder {
    /// A decoder refusing frames with more than `frame_bytes_max` payload bytes (close 1009).
    pub fn new(frame_bytes_max: usize) -> Self {
        Self {
            part: Part::Header,
            hdr: [0; 14],
            hdr_len: 0,
            op: 0,
            mask: [0; 4],
            mask_pos: 0,
            remaining: 0,
            in_message: false,
            control: Vec::new(),
            pong: None,
            close: None,
            frame_bytes_max: frame_bytes_max as u64,
        }
    }

    /// Between frames with nothing held: no partial header, no fragmented message, no control
    /// payload, ping or close pending. A decoder in this state is the same as a new one with
    /// the same bound, so a parked connection keeps only [`Self::frame_bytes_max`].
    pub fn is_idle(&self) -> bool {
        self.part == Part::Header
            && self.hdr_len == 0
            && !self.in_message
            && self.control.is_empty()
            && self.pong.is_none()
            && self.close.is_none()
    }

    /// The largest frame payload accepted.
    pub fn frame_bytes_max(&self) -> usize {
        usize::try_from(self.frame_bytes_max).unwrap_or(usize::MAX)
    }

    /// Decodes the frames in `buf` (bytes as read from the socket). The unmasked payload of
    /// data frames is moved to the front of `buf`; returns its length. Pings and a close are
    /// recorded for [`take_pong`](Self::take_pong) and [`close_received`](Self::close_received).
    /// Input after a close frame is ignored. Bounded: one pass over `buf`.
    pub fn decode_in_place(&mut self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let mut read = 0;
        let mut written = 0;
        while read < buf.len() {
            match self.part {
                Part::Closed => return Ok(written),
                Part::Header => {
                    self.hdr[usize::from(self.hdr_len)] = buf[read];
                    self.hdr_len += 1;
                    read += 1;
                    if usize::from(self.hdr_len) == self.header_len() {
                        self.start_frame()?;
                    }
                }
                Part::Data => {
                    let n = (buf.len() - read)
                        .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                    for i in 0..n {
                        buf[written + i] = buf[read + i] ^ self.mask[(self.mask_pos + i) & 3];
                    }
                    self.mask_pos = (self.mask_pos + n) & 3;
                    read += n;
                    written += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.part = Part::Header;
                    }
                }
                Part::Control => {
                    let n = (buf.len() - read).min(self.remaining as usize);
                    for &b in &buf[read..read + n] {
                        let m = self.mask[self.mask_pos & 3];
                        self.control.push(b ^ m);
                        self.mask_pos += 1;
                    }
                    read += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.end_control()?;
                    }
                }
            }
        }
        Ok(written)
    }

    /// The payload of the latest ping, to answer with a pong (RFC 6455 §5.5.3 allows answering
    /// only the most recent one).
    pub fn take_pong(&mut self) -> Option<Vec<u8>> {
        self.pong.take()
    }

    /// The code of the close frame received, if any (1005 when it carried none).
    pub fn close_received(&self) -> Option<u16> {
        self.close
    }

    /// Header length once the second byte is known: 2, plus 2 or 8 length bytes, plus the mask.
    fn header_len(&self) -> usize {
        if self.hdr_len < 2 {
            return 2;
        }
        let ext = match self.hdr[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        // Unmasked frames are refused in `start_frame`; count the mask so that happens after
        // the whole header, at one place.
        2 + ext + if self.hdr[1] & 0x80 != 0 { 4 } else { 0 }
    }

    fn start_frame(&mut self) -> Result<(), FrameError> {
        let h = self.hdr;
        let n = usize::from(self.hdr_len);
        self.hdr_len = 0;
        let fin = h[0] & 0x80 != 0;
        let op = h[0] & 0x0F;
        if h[0] & 0x70 != 0 {
            return Err(frame_error(close_code::PROTOCOL_ERROR, "reserved bits set"));
        }
        if h[1] & 0x80 == 0 {
            return Err(frame_error(close_code::PROTOCOL_ERROR, "client frame not masked"));
        }
        let len = match h[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => {
                let len = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if len >> 63 != 0 {
                    return Err(frame_error(close_code::PROTOCOL_ERROR, "length MSB set"));
                }
                len
            }
            l => u64::from(l),
        };
        self.mask.copy_from_slice(&h[n - 4..n]);
        self.mask_pos = 0;
        self.remaining = len;
        self.op = op;
        match op {
            opcode::TEXT => {
                return Err(frame_error(close_code::UNSUPPORTED_DATA, "MQTT needs binary frames"))
            }
            opcode::BINARY | opcode::CONTINUATION => {
                if (op == opcode::CONTINUATION) != self.in_message {
                    let why = if self.in_message {
                        "new message inside a fragmented one"
                    } else {
                        "continuation without a message"
                    };
                    return Err(frame_error(close_code::PROTOCOL_ERROR, why));
                }
                if len > self.frame_bytes_max {
                    return Err(frame_error(close_code::TOO_BIG, "frame larger than allowed"));
                }
                self.in_message = !fin;
                self.part = if len == 0 { Part::Header } else { Part::Data };
            }
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin {
                    return Err(frame_error(close_code::PROTOCOL_ERROR, "fragmented control"));
                }
                if len > CONTROL_PAYLOAD_MAX as u64 {
                    return Err(frame_error(close_code::PROTOCOL_ERROR, "control frame too long"));
                }
                self.control.clear();
                self.part = Part::Control;
                if len == 0 {
                    self.end_control()?;
                }
            }
            _ => return Err(frame_error(close_code::PROTOCOL_ERROR, "unknown opcode")),
        }
        Ok(())
    }

    fn end_control(&mut self) -> Result<(), FrameError> {
        self.part = Part::Header;
        let payload = std::mem::take(&mut self.control);
        match self.op {
            opcode::PING => self.pong = Some(payload),
            opcode::PONG => {} // unsolicited pongs are allowed and ignored
            _ => {
                debug_assert_eq!(self.op, opcode::CLOSE);
                self.part = Part::Closed;
                self.close = Some(close_code_of(&payload)?);
            }
        }
        Ok(())
    }
}

/// The status code of a received close payload (RFC 6455 §5.5.1, §7.4).
fn close_code_of(payload: &[u8]) -> Result<u16, FrameError> {
    match payload {
        [] => Ok(1005),
        [_] => Err(frame_error(close_code::PROTOCOL_ERROR, "close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(frame_error(close_code::PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(frame_error(close_code::INVALID_PAYLOAD, "close reason not UTF-8"));
            }
            Ok(code)
        }
    }
}

/// Appends the header of an unmasked server frame (FIN set) carrying `len` payload bytes.
pub fn encode_header(op: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | op);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends a binary frame carrying `payload`.
pub fn encode_binary(payload: &[u8], out: &mut Vec<u8>) {
    encode_header(opcode::BINARY, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends a pong frame answering a ping with `payload` (at most 125 bytes, checked by the
/// decoder).
pub fn encode_pong(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= CONTROL_PAYLOAD_MAX);
    encode_header(opcode::PONG, payload.len(), out);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (the reason is cut to fit 125 bytes).
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let reason = &reason.as_bytes()[..reason.len().min(CONTROL_PAYLOAD_MAX - 2)];
    encode_header(opcode::CLOSE, 2 + reason.len(), out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// A client frame as a browser sends it: first byte `first` (FIN, RSV and opcode bits), the
/// payload length, `mask` and the masked payload (RFC 6455 §5.2). The broker never sends one;
/// this is the one builder the unit tests, the property tests and the integration tests'
/// WebSocket client use.
#[doc(hidden)]
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    #[test]
    fn binary_frames_in_any_split() {
        let payload: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let mut wire = client_frame(0x02, &payload[..10], MASK); // fin=0: start of a message
        wire[0] = 0x02;
        wire.extend(client_frame(0x00, &payload[10..200], [1, 2, 3, 4])); // continuation, not fin
        wire.extend(client_frame(0x80, &payload[200..], [9, 8, 7, 6])); // final continuation
        wire.extend(client_frame(0x82, &[], MASK)); // empty binary frame
        wire.extend(client_frame(0x82, b"xyz", MASK));
        let mut want = payload.clone();
        want.extend_from_slice(b"xyz");
        // Every split point, and byte by byte.
        for chunk in [1, 2, 3, 7, 64, wire.len()] {
            let mut dec = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                let mut buf = piece.to_vec();
                let n = dec.decode_in_place(&mut buf).expect("valid frames");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!((dec.take_pong(), dec.close_received()), (None, None));
        }
    }

    #[test]
    fn extended_lengths() {
        for len in [125usize, 126, 65535, 65536, 70_000] {
            let payload = vec![0xA5; len];
            let mut buf = client_frame(0x82, &payload, MASK);
            let mut dec = FrameDecoder::new(100_000);
            let n = dec.decode_in_place(&mut buf).expect("valid");
            assert_eq!(&buf[..n], &payload[..], "len {len}");
        }
    }

    #[test]
    fn ping_pong_and_close() {
        let mut wire = client_frame(0x89, b"hi", MASK);
        wire.extend(client_frame(0x8A, b"unsolicited", MASK));
        wire.extend(client_frame(0x82, b"ab", MASK));
        wire.extend(client_frame(0x89, b"again", MASK));
        let mut close = vec![0x03, 0xE8];
        close.extend_from_slice(b"bye");
        wire.extend(client_frame(0x88, &close, MASK));
        wire.extend(client_frame(0x82, b"after close", MASK));
        let mut dec = FrameDecoder::new(1024);
        let n = dec.decode_in_place(&mut wire).expect("valid");
        assert_eq!(&wire[..n], b"ab");
        assert_eq!(dec.take_pong().as_deref(), Some(&b"again"[..]));
        assert_eq!(dec.take_pong(), None);
        assert_eq!(dec.close_received(), Some(1000));

        let mut empty_close = client_frame(0x88, &[], MASK);
        let mut dec = FrameDecoder::new(1024);
        assert_eq!(dec.decode_in_place(&mut empty_close), Ok(0));
        assert_eq!(dec.close_received(), Some(1005));
    }

    #[test]
    fn protocol_errors_carry_close_codes() {
        let mut unmasked = vec![0x82, 0x01, 0x00];
        let mut long_control = client_frame(0x89, &[0; 126], MASK);
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(0x81, b"text", MASK), close_code::UNSUPPORTED_DATA),
            (std::mem::take(&mut unmasked), close_code::PROTOCOL_ERROR),
            (client_frame(0xC2, b"rsv1", MASK), close_code::PROTOCOL_ERROR),
            (client_frame(0x83, b"op3", MASK), close_code::PROTOCOL_ERROR),
            (client_frame(0x80, b"cont", MASK), close_code::PROTOCOL_ERROR),
            (client_frame(0x09, b"frag ping", MASK), close_code::PROTOCOL_ERROR),
            (std::mem::take(&mut long_control), close_code::PROTOCOL_ERROR),
            (client_frame(0x82, &[0; 101], MASK), close_code::TOO_BIG),
            (client_frame(0x88, &[0x03], MASK), close_code::PROTOCOL_ERROR),
            (client_frame(0x88, &[0x03, 0xED], MASK), close_code::PROTOCOL_ERROR), // 1005 not on wire
            (client_frame(0x88, &[0x03, 0xE8, 0xFF], MASK), close_code::INVALID_PAYLOAD),
        ];
        for (mut wire, code) in cases {
            let mut dec = FrameDecoder::new(100);
            let e = dec.decode_in_place(&mut wire).expect_err("refused");
            assert_eq!(e.code, code, "{e}");
        }
        // A new binary message while a fragmented one is open.
        let mut wire = client_frame(0x02, b"a", MASK);
        wire.extend(client_frame(0x82, b"b", MASK));
        let e = FrameDecoder::new(100).decode_in_place(&mut wire).expect_err("refused");
        assert_eq!(e.code, close_code::PROTOCOL_ERROR);
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        encode_binary(b"abc", &mut out);
        assert_eq!(out, [0x82, 3, b'a', b'b', b'c']);
        out.clear();
        encode_header(opcode::BINARY, 300, &mut out);
        assert_eq!(out, [0x82, 126, 0x01, 0x2C]);
        out.clear();
        encode_header(opcode::BINARY, 70_000, &mut out);
        assert_eq!(out, [0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
        out.clear();
        encode_close(1003, "text", &mut out);
        assert_eq!(out, [0x88, 6, 0x03, 0xEB, b't', b'e', b'x', b't']);
        out.clear();
        encode_close(1000, &"x".repeat(200), &mut out);
        assert_eq!(out.len(), 2 + 125);
        out.clear();
        encode_pong(b"hi", &mut out);
        assert_eq!(out, [0x8A, 2, b'h', b'i']);
    }
}
