//! Wire primitives (§1.5): integers, variable byte integers, UTF-8 strings and binary data.
//!
//! [`Reader`] walks a frozen frame (`Bytes`) so binary fields and payloads are handed out as
//! slices of the receive buffer, never copied. Every read is bounds-checked and reports
//! [`ErrorKind::UnexpectedEnd`] instead of panicking.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, ErrorKind};

/// Largest value a 4-byte variable byte integer holds (§1.5.5).
pub const VARINT_MAX: usize = 268_435_455;

/// Cursor over one packet's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    src: Src<'a>,
    pos: usize,
}

/// What a [`Reader`] reads: a frame it shares (fields are slices of it) or the caller's read
/// buffer (fields that outlive the packet are copied out of it).
#[derive(Debug)]
enum Src<'a> {
    Shared(Bytes),
    Borrowed(&'a [u8]),
}

fn invalid_utf8() -> DecodeError {
    DecodeError::new(ErrorKind::InvalidUtf8, "MQTT-1.5.4-1")
}

fn end() -> DecodeError {
    // A field that runs past the Remaining Length (§2.1.4).
    DecodeError::new(ErrorKind::UnexpectedEnd, "§2.1.4")
}

impl Reader<'static> {
    /// A reader over `buf`, starting at its first byte. Binary fields and payloads are slices
    /// of `buf` (no copy).
    pub fn new(buf: Bytes) -> Self {
        Self { src: Src::Shared(buf), pos: 0 }
    }
}

impl<'a> Reader<'a> {
    /// A reader over the caller's buffer (decoding in place, issue 10): binary fields and
    /// payloads are copied out, each into an allocation of its own size.
    pub fn borrowed(buf: &'a [u8]) -> Self {
        Self { src: Src::Borrowed(buf), pos: 0 }
    }

    fn buf(&self) -> &[u8] {
        match &self.src {
            Src::Shared(b) => b,
            Src::Borrowed(s) => s,
        }
    }

    /// `self.buf()[from..to]` as `Bytes`: a slice of a shared frame, or a copy.
    fn bytes(&self, from: usize, to: usize) -> Bytes {
        match &self.src {
            Src::Shared(b) => b.slice(from..to),
            Src::Borrowed(s) => Bytes::copy_from_slice(&s[from..to]),
        }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf().len() - self.pos
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf().get(self.pos).ok_or_else(end)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads a big-endian two byte integer (§1.5.2).
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.slice(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    /// Reads a big-endian four byte integer (§1.5.3).
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.slice(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn slice(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.remaining() < n {
            return Err(end());
        }
        let at = self.pos;
        self.pos += n;
        Ok(&self.buf()[at..at + n])
    }

    /// Reads a variable byte integer of at most 4 bytes in its shortest form ([MQTT-1.5.5-1]).
    pub fn varint(&mut self) -> Result<usize, DecodeError> {
        match decode_varint(&self.buf()[self.pos..])? {
            Some((value, used)) => {
                self.pos += used;
                Ok(value)
            }
            None => Err(end()),
        }
    }

    /// Reads `n` bytes as a sub-reader (a property list) without copying.
    pub fn take(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        if self.remaining() < n {
            return Err(end());
        }
        let at = self.pos;
        self.pos += n;
        Ok(match &self.src {
            Src::Shared(b) => Reader::new(b.slice(at..at + n)),
            Src::Borrowed(s) => Reader::borrowed(&s[at..at + n]),
        })
    }

    /// Reads two-byte-length-prefixed binary data (§1.5.6) without copying.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        if self.remaining() < len {
            return Err(end());
        }
        let b = self.bytes(self.pos, self.pos + len);
        self.pos += len;
        Ok(b)
    }

    /// Reads a UTF-8 encoded string (§1.5.4): well-formed, no surrogates ([MQTT-1.5.4-1]), no
    /// U+0000 ([MQTT-1.5.4-2]). A U+FEFF is kept as is ([MQTT-1.5.4-3]).
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.string_bytes()?;
        // Checked as UTF-8 just above; the second check cannot fail.
        Ok(std::str::from_utf8(&b).map_err(|_| invalid_utf8())?.to_owned())
    }

    /// [`Reader::string`] without the copy: the string's bytes (a slice of a shared frame),
    /// checked exactly as there (well-formed UTF-8, no U+0000).
    pub fn string_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let span = self.string_span()?;
        self.checked_span(span)
    }

    /// Reads a two-byte length and steps over that many bytes, unchecked: their range.
    pub(crate) fn string_span(&mut self) -> Result<(usize, usize), DecodeError> {
        let len = self.u16()? as usize;
        if self.remaining() < len {
            return Err(end());
        }
        let from = self.pos;
        self.pos += len;
        Ok((from, from + len))
    }

    /// The bytes of a range [`Reader::string_span`] returned.
    pub(crate) fn span(&self, (from, to): (usize, usize)) -> &[u8] {
        &self.buf()[from..to]
    }

    /// A range [`Reader::string_span`] returned, checked as [`Reader::string_bytes`] checks.
    pub(crate) fn checked_span(&self, (from, to): (usize, usize)) -> Result<Bytes, DecodeError> {
        let raw = &self.buf()[from..to];
        std::str::from_utf8(raw).map_err(|_| invalid_utf8())?;
        if raw.contains(&0) {
            return Err(DecodeError::new(ErrorKind::NullCharacter, "MQTT-1.5.4-2"));
        }
        Ok(self.bytes(from, to))
    }

    /// Everything not yet read, without copying (a PUBLISH payload).
    pub fn rest(&mut self) -> Bytes {
        let end = self.buf().len();
        let b = self.bytes(self.pos, end);
        self.pos = end;
        b
    }
}

/// Decodes a variable byte integer at the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((value, bytes_used)))`, or an error for a fifth byte or a non-minimal encoding.
pub fn decode_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            // A trailing zero group (e.g. 0x80 0x00) encodes the value in more bytes than needed.
            if i > 0 && byte == 0 {
                return Err(DecodeError::new(ErrorKind::MalformedVarInt, "MQTT-1.5.5-1"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::new(ErrorKind::MalformedVarInt, "MQTT-1.5.5-1"));
    }
    Ok(None)
}

/// Bytes a variable byte integer takes for `value` (1 to 4).
pub const fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` as a variable byte integer. The caller guarantees `value <= VARINT_MAX`.
pub fn put_varint(buf: &mut BytesMut, mut value: usize) {
    debug_assert!(value <= VARINT_MAX, "invariant: callers check VARINT_MAX");
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes a two-byte length and the bytes. The caller guarantees `data.len() <= 65535`.
pub fn put_bytes(buf: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= u16::MAX as usize, "invariant: callers check field lengths");
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_from_spec_table_1_5_5() {
        // §1.5.5 Table 1-1: the first and last value of each length.
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(&buf[..], bytes, "encode {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(decode_varint(bytes), Ok(Some((value, bytes.len()))));
        }
    }

    #[test]
    fn varint_rejects_five_bytes_and_non_minimal() {
        // [MQTT-1.5.5-1] four bytes at most, minimal form.
        let five = decode_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(five.map_err(|e| e.kind), Err(ErrorKind::MalformedVarInt));
        let long_zero = decode_varint(&[0x80, 0x00]);
        assert_eq!(long_zero.map_err(|e| e.spec), Err("MQTT-1.5.5-1"));
        assert_eq!(decode_varint(&[0x80, 0x80]), Ok(None));
        assert_eq!(decode_varint(&[]), Ok(None));
    }

    #[test]
    fn strings_reject_null_and_surrogates() {
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a', 0, b'b']));
        assert_eq!(r.string().map_err(|e| e.spec), Err("MQTT-1.5.4-2"));
        // U+D800 encoded as ED A0 80 is not well-formed UTF-8.
        let mut r = Reader::new(Bytes::from_static(&[0, 3, 0xED, 0xA0, 0x80]));
        assert_eq!(r.string().map_err(|e| e.spec), Err("MQTT-1.5.4-1"));
        // U+FEFF is kept, not stripped ([MQTT-1.5.4-3]).
        let mut r = Reader::new(Bytes::from_static(&[0, 4, 0xEF, 0xBB, 0xBF, b'x']));
        assert_eq!(r.string().as_deref(), Ok("\u{FEFF}x"));
    }

    #[test]
    fn reads_past_end_are_errors() {
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert_eq!(r.string().map_err(|e| e.kind), Err(ErrorKind::UnexpectedEnd));
        let mut r = Reader::new(Bytes::from_static(&[1]));
        assert_eq!(r.u16().map_err(|e| e.kind), Err(ErrorKind::UnexpectedEnd));
    }
}
