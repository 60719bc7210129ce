//! The log on real files, driven by a glommio executor: group commit, recovery after torn and
//! corrupt tails, segment rotation.

use std::path::Path;
use std::rc::Rc;

use glommio::{LocalExecutorBuilder, Placement};

use super::format::{self, HEADER_LEN};
use super::record::Record;
use super::wal::{recover, Wal, WalConfig, WalStats};

fn cfg(dir: &Path, segment_bytes_max: u64) -> WalConfig {
    WalConfig { dir: dir.to_path_buf(), shard: 1, segment_bytes_max }
}

fn rec(i: u32) -> Record {
    Record::SessionExpiry {
        client_id: format!("client-{i}"),
        expiry_secs: i,
        offline_since_unix_ms: Some(u64::from(i) * 1000),
    }
}

/// Appends `n` records from `writers` concurrent tasks, each awaiting its own `sync` as an
/// acknowledgement would, and returns the log's counters.
fn write_concurrently(dir: &Path, first: u32, n: u32, writers: u32, seg: u64) -> WalStats {
    let cfg = cfg(dir, seg);
    // As the broker configures its shards: a small DMA pool, a modest ring.
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(128)
        .spawn(move || async move {
            let mut recovered = recover(&cfg).expect("recover");
            let wal = Rc::new(Wal::open(cfg, &mut recovered).await.expect("open"));
            let per = n / writers;
            let mut tasks = Vec::new();
            for w in 0..writers {
                let wal = Rc::clone(&wal);
                tasks.push(glommio::spawn_local(async move {
                    for i in 0..per {
                        let lsn = wal.append(&rec(first + w * per + i));
                        wal.sync(lsn).await.expect("sync");
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            wal.stats()
        })
        .expect("executor starts")
        .join()
        .expect("executor ran")
}

#[test]
fn group_commit_makes_every_synced_record_durable_with_fewer_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stats = write_concurrently(dir.path(), 0, 2_000, 50, 64 << 20);
    assert_eq!(stats.records, 2_000);
    assert_eq!(stats.records_synced, 2_000, "every record synced");
    assert!(
        stats.fsyncs < stats.records / 4,
        "50 concurrent writers share fsyncs: {} fsyncs for {} records",
        stats.fsyncs,
        stats.records
    );
    let got = recover(&cfg(dir.path(), 64 << 20)).expect("recover");
    assert_eq!(got.records.len(), 2_000);
    assert_eq!((got.discarded_bytes, got.bad_records, got.set_aside), (0, 0, 0));
    let mut ids: Vec<u32> = got
        .records
        .iter()
        .map(|r| match r {
            Record::SessionExpiry { expiry_secs, .. } => *expiry_secs,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..2_000).collect::<Vec<_>>());
    // Files are private to the broker's user.
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir.path()).expect("read_dir") {
        let mode = e.expect("entry").metadata().expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// One commit in flight per log, and the next one takes everything appended meanwhile: a
/// record synced while a commit runs waits for it, then 100 records appended during it go to
/// disk in one more commit (2 fsyncs for 101 records).
#[test]
fn records_appended_during_a_commit_go_in_the_next_one_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = cfg(dir.path(), 64 << 20);
    let stats = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 10)
        .ring_depth(128)
        .spawn(move || async move {
            let mut recovered = recover(&cfg).expect("recover");
            let wal = Rc::new(Wal::open(cfg, &mut recovered).await.expect("open"));
            let first = {
                let wal = Rc::clone(&wal);
                glommio::spawn_local(async move {
                    let lsn = wal.append(&rec(0));
                    wal.sync(lsn).await.expect("sync");
                })
            };
            // Back here once the first task awaits its commit's write.
            glommio::executor().yield_now().await;
            let in_flight = wal.stats().fsyncs == 0 && wal.durable().expect("ok").0 == 0;
            let mut last = wal.appended();
            for i in 1..=100 {
                last = wal.append(&rec(i));
            }
            wal.sync(last).await.expect("sync");
            first.await;
            (in_flight, wal.stats())
        })
        .expect("executor starts")
        .join()
        .expect("executor ran");
    let (in_flight, stats) = stats;
    assert!(in_flight, "the first commit was still running when the 100 were appended");
    assert_eq!(stats.records_synced, 101);
    assert_eq!(stats.fsyncs, 2, "one commit for the first record, one for the 100 after it");
}

fn only_segment(dir: &Path) -> std::path::PathBuf {
    let mut v: Vec<_> =
        std::fs::read_dir(dir).expect("dir").map(|e| e.expect("e").path()).collect();
    v.sort();
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

#[test]
fn torn_tail_is_truncated_and_new_records_follow_the_good_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_concurrently(dir.path(), 0, 100, 1, 64 << 20);
    let path = only_segment(dir.path());
    let good = std::fs::read(&path).expect("read");
    // A crash in the middle of a commit: half a frame after the last good one, past padding.
    let scan = format::scan_frames(&good[HEADER_LEN..]);
    let valid = HEADER_LEN + scan.valid_len;
    let mut torn = good[..valid].to_vec();
    let mut extra = Vec::new();
    let mut body = Vec::new();
    rec(999).encode(&mut body);
    format::encode_frame(&body, &mut extra);
    torn.extend_from_slice(&extra[..extra.len() / 2]);
    std::fs::write(&path, &torn).expect("write");

    let got = recover(&cfg(dir.path(), 64 << 20)).expect("recover");
    assert_eq!(got.records.len(), 100);
    assert!(got.discarded_bytes > 0, "the torn frame is counted");
    assert_eq!(std::fs::metadata(&path).expect("meta").len(), valid as u64, "truncated");

    // Appending after recovery continues the segment; the torn bytes never come back.
    write_concurrently(dir.path(), 100, 10, 1, 64 << 20);
    let got = recover(&cfg(dir.path(), 64 << 20)).expect("recover");
    assert_eq!(got.records.len(), 110);
    assert_eq!(got.records[100], rec(100));
    assert_eq!(got.discarded_bytes, 0);
}

#[test]
fn corrupt_record_ends_the_log_there_and_later_segments_are_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small segments: several files.
    let stats = write_concurrently(dir.path(), 0, 600, 3, 8 << 10);
    assert!(stats.segments >= 3, "rotated: {stats:?}");
    let all = recover(&cfg(dir.path(), 8 << 10)).expect("recover");
    assert_eq!(all.records.len(), 600);
    assert_eq!(all.segments as u64, stats.segments);
    // Flip one byte in the middle of the first segment.
    let mut files: Vec<_> =
        std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("e").path()).collect();
    files.sort();
    let mut bytes = std::fs::read(&files[0]).expect("read");
    let mid = HEADER_LEN + 200;
    bytes[mid] ^= 0x40;
    std::fs::write(&files[0], &bytes).expect("write");
    let got = recover(&cfg(dir.path(), 8 << 10)).expect("recover");
    assert!(got.records.len() < 20, "only the records before the flip: {}", got.records.len());
    assert_eq!(got.records[..], all.records[..got.records.len()]);
    assert_eq!(got.set_aside, files.len() - 1);
    assert!(got.discarded_bytes > 0);
    // The broker starts and appends after the damage.
    write_concurrently(dir.path(), 1_000, 5, 1, 8 << 10);
    let again = recover(&cfg(dir.path(), 8 << 10)).expect("recover");
    assert_eq!(again.records.len(), got.records.len() + 5);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]
    /// The fuzz target's body on arbitrary bytes, and on valid logs with one byte changed.
    #[test]
    fn arbitrary_bytes_never_panic_the_scan_or_the_decoder(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        super::fuzzing::scan_and_decode(&bytes);
    }

    #[test]
    fn damaged_valid_logs_never_panic_and_a_zeroed_length_is_not_clean(at in 0usize..4096, byte in proptest::prelude::any::<u8>()) {
        let mut log = Vec::new();
        for r in super::record::examples::every_kind() {
            let mut body = Vec::new();
            r.encode(&mut body);
            format::encode_frame(&body, &mut log);
        }
        let at = at % log.len();
        log[at] = byte;
        super::fuzzing::scan_and_decode(&log);
    }
}

/// Where the logs of every committed format are kept: `format-N/` holds a shard-0 segment
/// written by format N and `records.txt`, the records it holds (`{:?}`, one per line).
fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal")
}

/// Writes the fixture of the format this build writes (run once when a format is committed:
/// `cargo test --lib persist::tests::write_format_fixture -- --ignored`). One record of every
/// kind, framed as the log frames them.
#[test]
#[ignore = "writes tests/fixtures/wal/format-N once per committed format"]
fn write_format_fixture() {
    let dir = fixtures().join(format!("format-{}", format::FORMAT));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let records = super::record::examples::every_kind();
    let mut bytes = Vec::new();
    format::SegmentHeader { format: format::FORMAT, shard: 0, seq: 0 }.encode(&mut bytes);
    let mut text = String::new();
    for r in &records {
        let mut body = Vec::new();
        r.encode(&mut body);
        format::encode_frame(&body, &mut bytes);
        text.push_str(&format!("{r:?}\n"));
    }
    std::fs::write(dir.join("shard-000-0000000000000000.wal"), bytes).expect("write segment");
    std::fs::write(dir.join("records.txt"), text).expect("write records");
}

/// Recovery of every earlier committed format keeps working (issue 12): each fixture log is
/// recovered by this build with no damage found and yields exactly the records it was
/// written with, and they replay.
#[test]
fn every_committed_format_recovers() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(fixtures()).expect("fixtures") {
        let path = entry.expect("entry").path();
        let Some(n) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("format-"))
            .and_then(|n| n.parse::<u16>().ok())
        else {
            continue;
        };
        assert!(format::FORMATS_READ.contains(&n), "format {n} is no longer read");
        let tmp = tempfile::tempdir().expect("tempdir");
        let seg = "shard-000-0000000000000000.wal";
        std::fs::copy(path.join(seg), tmp.path().join(seg)).expect("copy");
        let cfg = WalConfig { dir: tmp.path().to_path_buf(), shard: 0, segment_bytes_max: 1 << 20 };
        let r = recover(&cfg).expect("recover");
        assert_eq!((r.discarded_bytes, r.bad_records, r.set_aside), (0, 0, 0), "format {n}");
        let want = std::fs::read_to_string(path.join("records.txt")).expect("records.txt");
        let got: Vec<String> = r.records.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(got, want.lines().collect::<Vec<_>>(), "format {n}");
        let _ = super::journal::replay(r.records);
        seen.push(n);
    }
    assert!(seen.contains(&format::FORMAT), "no fixture for the current format: {seen:?}");
}
