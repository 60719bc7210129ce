//! Durable state (issue 12), first layers: the write-ahead log of a shard.
//!
//! - [`mod@format`]: segment header, checksummed record frames and the recovery scan. No IO.
//! - [`record`]: the typed records (session, subscription, message, QoS 2 and retained state
//!   changes) and their encoding. No IO, no clock.
//! - [`wal`]: the log on glommio DMA files: group commit and recovery.
//! - [`journal`]: conversions between the shard's state and records, and the replay. No IO.
//! - [`hold`]: which outgoing packets wait for the log (acknowledgements), which do not
//!   (QoS 0/1 deliveries). No IO.
//! - [`dir`]: the data directory and its lock.
//!
//! Wiring: the shard (`crate::shard`, sans-IO) collects records in a list the driver drains
//! ([`crate::shard::Shard::take_records`]) and appends to the shard's [`wal::Wal`]; with
//! `fsync = "always"` the connection driver writes a connection's acknowledgements (and what
//! must stay behind them, see [`hold`]) only after the log is durable up to the last record
//! appended when that output was produced; QoS 0/1 deliveries go out at once (`crate::net`). At
//! start, every shard's log is recovered and replayed before the shards serve
//! (`crate::runtime`).

pub mod dir;
pub mod durable;
pub mod format;
pub use tern_core::persist::{hold, journal, record};
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
