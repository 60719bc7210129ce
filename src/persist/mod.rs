//! Durable state (issue 12), first layers: the write-ahead log of a shard.
//!
//! - [`format`]: segment header, checksummed record frames and the recovery scan. No IO.
//! - [`record`]: the typed records (session, subscription, message, QoS 2 and retained state
//!   changes) and their encoding. No IO, no clock.
//! - [`wal`]: the log on glommio DMA files: group commit and recovery.
//!
//! Not wired into the shard yet: the broker still keeps sessions in memory only. The records
//! are designed so that a replay in log order rebuilds what the shard acknowledged; which
//! acknowledgement waits for which record is described in [`record`].

pub mod format;
pub mod record;
pub mod wal;

/// Fuzz bodies shared by the cargo-fuzz target `wal` and the property tests.
#[doc(hidden)]
pub mod fuzzing {
    use super::format::{scan_frames, ScanEnd};
    use super::record::Record;

    /// Scans arbitrary bytes as a segment body and decodes every frame as a record. Checks:
    /// no panic; the scan never claims more than it was given; every record that decodes
    /// encodes back to the same body (the format has one encoding per record); a clean end
    /// leaves only zero bytes behind.
    pub fn scan_and_decode(bytes: &[u8]) {
        let scan = scan_frames(bytes);
        assert!(scan.valid_len <= bytes.len());
        if scan.end == ScanEnd::Clean {
            assert_eq!(scan.discarded_bytes, 0);
        }
        for body in scan.bodies {
            if let Ok(r) = Record::decode(body) {
                let mut again = Vec::new();
                r.encode(&mut again);
                assert_eq!(again, body, "one encoding per record");
            }
        }
        // The same bytes as a lone record body.
        if let Ok(r) = Record::decode(bytes) {
            let mut again = Vec::new();
            r.encode(&mut again);
            assert_eq!(again, bytes);
        }
    }
}

#[cfg(test)]
mod tests;
