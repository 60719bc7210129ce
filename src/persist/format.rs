//! The bytes of a log segment, with no IO: the segment header, record frames, and the scan that
//! recovery runs over whatever a crash left on disk.
//!
//! A segment file is a header followed by frames:
//!
//! ```text
//! header (32 bytes):  magic "TERNWAL\0" | format u16 | shard u16 | reserved u32 | seq u64 | crc u32 | 0u32
//! frame:              len u32 | crc32c u32 | body (len bytes: kind u8, then the record)
//! ```
//!
//! All integers are little endian. A frame's CRC32C covers its length and its body, so a torn
//! length is caught as well as a torn body. A zero length ends the segment: the writer pads the
//! last block of every write with zeros, so the scan stops exactly where the durable records end.
//! Recovery truncates the file there before anything new is appended, so bytes of a write that
//! was torn by a crash can never reappear behind newer records.

/// First bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"TERNWAL\0";

/// The format this build writes. Readers accept every format listed in [`FORMATS_READ`].
pub const FORMAT: u16 = 1;

/// Formats this build can recover from (a test keeps a committed file of each one).
pub const FORMATS_READ: &[u16] = &[1];

/// Bytes of the segment header.
pub const HEADER_LEN: usize = 32;

/// Bytes of a frame's length and checksum.
pub const FRAME_OVERHEAD: usize = 8;

/// Largest frame body accepted (a record holds at most one MQTT packet's worth of data, which
/// the codec bounds far below this). A larger length in a scan is corruption, not a record.
pub const BODY_MAX: usize = 256 * 1024 * 1024;

/// The identity of one segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format of the frames that follow.
    pub format: u16,
    /// The shard whose log this is.
    pub shard: u16,
    /// Position of this segment in the shard's log (0, 1, 2, … without gaps).
    pub seq: u64,
}

/// Why a segment header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("segment shorter than its header")]
    Short,
    /// Not a Tern log segment.
    #[error("not a Tern log segment (bad magic)")]
    Magic,
    /// The header's own checksum does not match.
    #[error("segment header checksum mismatch")]
    Checksum,
    /// Written by a format this build does not read.
    #[error("segment format {0} is not one this build reads")]
    Format(u16),
}

impl SegmentHeader {
    /// Appends the 32 header bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.format.to_le_bytes());
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        debug_assert_eq!(out.len() - start, HEADER_LEN);
    }

    /// Reads the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let h = bytes.get(..HEADER_LEN).ok_or(HeaderError::Short)?;
        if h[..8] != MAGIC {
            return Err(HeaderError::Magic);
        }
        let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
        if crc32c::crc32c(&h[..24]) != crc {
            return Err(HeaderError::Checksum);
        }
        let format = u16::from_le_bytes([h[8], h[9]]);
        if !FORMATS_READ.contains(&format) {
            return Err(HeaderError::Format(format));
        }
        let shard = u16::from_le_bytes([h[10], h[11]]);
        let seq = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
        Ok(Self { format, shard, seq })
    }
}

/// Appends one frame holding `body` to `out`.
///
/// `body` must be non-empty and at most [`BODY_MAX`] bytes: records always carry their kind
/// byte, and the encoder of records bounds their size.
pub fn encode_frame(body: &[u8], out: &mut Vec<u8>) {
    assert!(!body.is_empty() && body.len() <= BODY_MAX, "invariant: record body size");
    let len = (body.len() as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len);
    crc = crc32c::crc32c_append(crc, body);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
}

/// How a scan of frames ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// A zero length followed by zeros only (the writer's padding), or the end of the bytes,
    /// exactly at a frame boundary: everything before `valid_len` is records.
    Clean,
    /// A frame whose length runs past the end of the bytes: a write torn by a crash.
    Torn,
    /// A frame whose checksum does not match, or whose length is impossible.
    Corrupt,
}

/// The result of scanning a segment's frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Bodies of the good frames, in order.
    pub bodies: Vec<&'a [u8]>,
    /// Offset (from the start of the scanned bytes) just past the last good frame: recovery
    /// truncates the file there.
    pub valid_len: usize,
    /// Why the scan stopped.
    pub end: ScanEnd,
    /// Bytes after `valid_len` that are not zero padding: what a torn or corrupt tail lost
    /// (never acknowledged, since acknowledgement waits for the fsync that covers a record).
    pub discarded_bytes: usize,
}

/// Reads frames from `bytes` (a segment without its header) up to the first zero length, torn
/// frame or bad checksum. Never panics, whatever the bytes; work is linear in their length.
pub fn scan_frames(bytes: &[u8]) -> Scan<'_> {
    let mut bodies = Vec::new();
    let mut at = 0usize;
    let end = loop {
        let Some(head) = bytes.get(at..at + FRAME_OVERHEAD) else {
            // Fewer than 8 bytes left: clean if they are padding (or nothing), torn otherwise.
            break if bytes[at..].iter().all(|&b| b == 0) { ScanEnd::Clean } else { ScanEnd::Torn };
        };
        let len_bytes = [head[0], head[1], head[2], head[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len == 0 {
            // The writer's padding. Anything but zeros after it is a write that reached the
            // disk in part (a later block without the one before it) or damage: torn.
            break if bytes[at..].iter().all(|&b| b == 0) { ScanEnd::Clean } else { ScanEnd::Torn };
        }
        if len > BODY_MAX {
            break ScanEnd::Corrupt;
        }
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = bytes.get(at + FRAME_OVERHEAD..at + FRAME_OVERHEAD + len) else {
            break ScanEnd::Torn;
        };
        let want = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), body);
        if want != crc {
            break ScanEnd::Corrupt;
        }
        bodies.push(body);
        at += FRAME_OVERHEAD + len;
    };
    let discarded_bytes = bytes[at..].iter().filter(|&&b| b != 0).count();
    Scan { bodies, valid_len: at, end, discarded_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            encode_frame(b, &mut out);
        }
        out
    }

    const THREE: [&[u8]; 3] = [b"\x01first", b"\x02second record", b"\x03third"];

    /// Offsets where each of `THREE`'s frames starts, and the total length.
    fn starts() -> (Vec<usize>, usize) {
        let mut at = 0;
        let starts = THREE
            .iter()
            .map(|b| {
                let s = at;
                at += FRAME_OVERHEAD + b.len();
                s
            })
            .collect();
        (starts, at)
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let h = SegmentHeader { format: FORMAT, shard: 3, seq: 0x0102_0304_0506 };
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(SegmentHeader::decode(&out), Ok(h));
        assert_eq!(SegmentHeader::decode(&out[..31]), Err(HeaderError::Short));
        let mut bad = out.clone();
        bad[0] = b'X';
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::Magic));
        let mut bad = out.clone();
        bad[17] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::Checksum));
        let mut future = Vec::new();
        SegmentHeader { format: 99, ..h }.encode(&mut future);
        assert_eq!(SegmentHeader::decode(&future), Err(HeaderError::Format(99)));
    }

    #[test]
    fn clean_log_with_padding_scans_whole() {
        let mut log = frames(&[b"\x01abc", b"\x02", b"\x03defgh"]);
        let records_len = log.len();
        log.resize(4096, 0);
        let s = scan_frames(&log);
        assert_eq!(s.bodies, vec![&b"\x01abc"[..], b"\x02", b"\x03defgh"]);
        assert_eq!((s.valid_len, s.end, s.discarded_bytes), (records_len, ScanEnd::Clean, 0));
        // Exactly at the end of the bytes, with no padding, is clean too.
        let s = scan_frames(&log[..records_len]);
        assert_eq!((s.bodies.len(), s.end), (3, ScanEnd::Clean));
    }

    #[test]
    fn every_torn_prefix_keeps_exactly_the_whole_frames_before_it() {
        let log = frames(&THREE);
        let (starts, total) = starts();
        assert_eq!(log.len(), total);
        let ends = [starts[1], starts[2], total];
        for cut in 0..log.len() {
            let s = scan_frames(&log[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(s.bodies.len(), whole, "cut at {cut}");
            assert_eq!(s.valid_len, if whole == 0 { 0 } else { ends[whole - 1] });
            if cut != s.valid_len {
                assert_eq!(s.end, ScanEnd::Torn, "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_ends_the_scan_at_the_frame_before_it() {
        let log = frames(&THREE);
        let (starts, _) = starts();
        for at in 0..log.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = log.clone();
                bad[at] ^= bit;
                let s = scan_frames(&bad);
                let frame = starts.iter().rposition(|&st| st <= at).unwrap_or(0);
                assert_eq!(s.bodies.len(), frame, "flip at {at}");
                assert_eq!(s.valid_len, starts[frame]);
                assert_ne!(s.end, ScanEnd::Clean, "flip at {at} must be seen");
                assert!(s.discarded_bytes > 0);
            }
        }
    }

    /// A zeroed length inside a log (found by the property test) is not the clean end: the
    /// frames after it are damage, and recovery must count them.
    #[test]
    fn zero_length_followed_by_data_is_torn() {
        let mut log = frames(&THREE);
        let (starts, _) = starts();
        log[starts[1]..starts[1] + 4].fill(0);
        let s = scan_frames(&log);
        assert_eq!((s.bodies.len(), s.end), (1, ScanEnd::Torn));
        assert!(s.discarded_bytes > 0);
    }

    #[test]
    fn impossible_length_is_corruption() {
        let mut log = frames(&[b"\x01ok"]);
        log.extend_from_slice(&u32::MAX.to_le_bytes());
        log.extend_from_slice(&[0xAA; 12]);
        let s = scan_frames(&log);
        assert_eq!((s.bodies.len(), s.end), (1, ScanEnd::Corrupt));
    }
}
