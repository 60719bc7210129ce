//! A shard's write-ahead log on glommio's DMA files (io_uring, `O_DIRECT`): appends in memory,
//! group commit to disk, and the recovery scan at start-up.
//!
//! # Group commit
//!
//! [`Wal::append`] encodes a record into the in-memory tail and returns its log sequence number
//! ([`Lsn`]) at once. [`Wal::sync`] waits until that record is on disk. The first waiter to find
//! no write in progress becomes the leader: it writes every record appended so far in one DMA
//! write (whole blocks, the last one zero-padded), then `fdatasync`s, then wakes every waiter
//! the write covered. Waiters that arrive while a write is in flight are covered by the next
//! one. So under load one fsync serves as many records as arrived during the previous fsync,
//! and an acknowledgement that waits for `sync` is sent only once its record is durable.
//!
//! The last, partial block stays in memory and is written again, longer, by the next commit:
//! `O_DIRECT` writes whole blocks only.
//!
//! # Recovery
//!
//! [`recover`] reads a shard's segments in order, keeps every record up to the first torn or
//! corrupt frame, truncates the file there (so stale bytes can never reappear behind new
//! records), sets later segments aside as `*.corrupt`, and returns the records and what it
//! discarded. It never refuses to start because of the log's content; it fails only when the
//! directory cannot be read or written.
//!
//! This is the IO layer only: which records the shard writes, and when acknowledgements wait
//! for them, is the shard's business (issue 12).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::io::{DmaFile, OpenOptions};

use super::format::{self, SegmentHeader, HEADER_LEN};
use super::record::Record;

/// Log sequence number: 1 for the first record appended since the log was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

/// Where and how a shard's log is kept.
#[derive(Clone, Debug)]
pub struct WalConfig {
    /// The data directory (shared by all shards; file names carry the shard id).
    pub dir: PathBuf,
    /// The shard whose log this is.
    pub shard: u16,
    /// A segment that has grown past this many bytes is closed and a new one started.
    pub segment_bytes_max: u64,
}

/// Counters of one log, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended.
    pub records: u64,
    /// Bytes of frames appended.
    pub bytes: u64,
    /// Commits (one DMA write and one `fdatasync` each).
    pub fsyncs: u64,
    /// Records made durable by those commits.
    pub records_synced: u64,
    /// Segments started.
    pub segments: u64,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every good record, in log order.
    pub records: Vec<Record>,
    /// Segments read.
    pub segments: usize,
    /// Non-padding bytes dropped from torn or corrupt tails (never acknowledged ones).
    pub discarded_bytes: usize,
    /// Frames whose body did not decode as a record (counted, skipped).
    pub bad_records: usize,
    /// Segments set aside as `*.corrupt` because an earlier one ended corrupt.
    pub set_aside: usize,
    /// The segment to continue appending to: its sequence number and valid length.
    tail: Option<(u64, usize, Vec<u8>)>,
}

fn segment_path(dir: &Path, shard: u16, seq: u64) -> PathBuf {
    dir.join(format!("shard-{shard:03}-{seq:016x}.wal"))
}

/// The segments of `shard` in `dir`, by sequence number.
fn list_segments(dir: &Path, shard: u16) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let prefix = format!("shard-{shard:03}-");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hex) = name.strip_prefix(&prefix).and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(seq) = u64::from_str_radix(hex, 16) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads, checks and repairs the log of `cfg.shard` (blocking file IO: run it before the shard
/// serves). Torn and corrupt tails are truncated and counted; see the module docs.
pub fn recover(cfg: &WalConfig) -> std::io::Result<Recovered> {
    let mut out = Recovered::default();
    let segments = list_segments(&cfg.dir, cfg.shard)?;
    let mut damaged = false;
    for (seq, path) in segments {
        if damaged {
            std::fs::rename(&path, path.with_extension("corrupt"))?;
            out.set_aside += 1;
            continue;
        }
        let bytes = std::fs::read(&path)?;
        out.segments += 1;
        let header = match SegmentHeader::decode(&bytes) {
            Ok(h) if h.shard == cfg.shard && h.seq == seq => h,
            // A segment created just before a crash, whose header never reached the disk.
            Err(format::HeaderError::Short) if bytes.iter().all(|&b| b == 0) => {
                std::fs::remove_file(&path)?;
                continue;
            }
            _ => {
                out.discarded_bytes += bytes.iter().filter(|&&b| b != 0).count();
                std::fs::rename(&path, path.with_extension("corrupt"))?;
                out.set_aside += 1;
                damaged = true;
                continue;
            }
        };
        let scan = format::scan_frames(&bytes[HEADER_LEN..]);
        for body in &scan.bodies {
            match Record::decode(body) {
                Ok(r) => out.records.push(r),
                Err(_) => out.bad_records += 1,
            }
        }
        out.discarded_bytes += scan.discarded_bytes;
        let valid = HEADER_LEN + scan.valid_len;
        if valid < bytes.len() {
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.set_len(valid as u64)?;
            f.sync_all()?;
        }
        // Only the last segment can end torn by a crash (a segment is started after the one
        // before it is durable): a damaged end anywhere means later segments cannot be
        // trusted to follow on.
        if scan.end != format::ScanEnd::Clean {
            damaged = true;
        }
        debug_assert_eq!(header.seq, seq);
        out.tail = Some((seq, valid, bytes[..valid].to_vec()));
    }
    Ok(out)
}

/// A shard's open log. Single-threaded (glommio): shared as `Rc<Wal>` by the shard's tasks.
pub struct Wal {
    cfg: WalConfig,
    inner: RefCell<Inner>,
}

struct Inner {
    file: Rc<DmaFile>,
    seq: u64,
    /// DMA block size of the file.
    align: usize,
    /// File offset of `tail[0]`; always a multiple of `align`.
    tail_start: u64,
    /// Bytes from `tail_start` on that are not durable yet (the first block may be durable in
    /// part: it is written again, longer).
    tail: Vec<u8>,
    /// Last record appended.
    appended: Lsn,
    /// Last record on disk.
    durable: Lsn,
    /// A commit is writing.
    writing: bool,
    /// The first error of a commit; every later `sync` returns it (the log is then unusable).
    failed: Option<String>,
    /// Commits call `fdatasync` (off for `fsync = "never"`: the write goes to the page cache).
    fdatasync: bool,
    waiters: Vec<Waker>,
    stats: WalStats,
}

impl Wal {
    /// Opens the log for appending after [`recover`] ran: continues the last segment, or
    /// starts segment 0 in an empty directory. Files are created with mode 0600.
    pub async fn open(cfg: WalConfig, recovered: &mut Recovered) -> std::io::Result<Self> {
        let (seq, valid, bytes) = recovered.tail.take().unwrap_or_default();
        let (file, tail_start, tail) = if valid == 0 {
            let file = create_segment(&cfg, seq).await?;
            let mut tail = Vec::new();
            SegmentHeader { format: format::FORMAT, shard: cfg.shard, seq }.encode(&mut tail);
            (file, 0, tail)
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(segment_path(&cfg.dir, cfg.shard, seq))
                .await?;
            let start = file.align_down(valid as u64);
            (file, start, bytes[start as usize..].to_vec())
        };
        let align = file.alignment() as usize;
        let inner = Inner {
            file: Rc::new(file),
            seq,
            align,
            tail_start,
            tail,
            appended: Lsn(0),
            durable: Lsn(0),
            writing: false,
            failed: None,
            fdatasync: true,
            waiters: Vec::new(),
            stats: WalStats { segments: 1, ..WalStats::default() },
        };
        Ok(Self { cfg, inner: RefCell::new(inner) })
    }

    /// Appends a record to the in-memory tail; [`sync`](Self::sync) makes it durable.
    pub fn append(&self, record: &Record) -> Lsn {
        let mut body = Vec::new();
        record.encode(&mut body);
        let mut inner = self.inner.borrow_mut();
        let before = inner.tail.len();
        format::encode_frame(&body, &mut inner.tail);
        inner.stats.records += 1;
        inner.stats.bytes += (inner.tail.len() - before) as u64;
        inner.appended.0 += 1;
        inner.appended
    }

    /// Whether commits `fdatasync` (default true). Without it a commit only writes: the
    /// records survive a crash of the process but not of the machine.
    pub fn set_fdatasync(&self, on: bool) {
        self.inner.borrow_mut().fdatasync = on;
    }

    /// Sequence number of the segment being appended to.
    pub fn segment_seq(&self) -> u64 {
        self.inner.borrow().seq
    }

    /// Deletes every segment of this shard numbered below `seq` (compaction, once a snapshot
    /// of the whole state in segment `seq` or later is durable). Returns how many it deleted.
    pub fn remove_segments_before(&self, seq: u64) -> std::io::Result<usize> {
        let mut n = 0;
        for (s, path) in list_segments(&self.cfg.dir, self.cfg.shard)? {
            if s < seq {
                std::fs::remove_file(path)?;
                n += 1;
            }
        }
        if n > 0 {
            std::fs::File::open(&self.cfg.dir)?.sync_all()?;
        }
        Ok(n)
    }

    /// Last record appended.
    pub fn appended(&self) -> Lsn {
        self.inner.borrow().appended
    }

    /// Last record on disk, or the error that stopped the log (acknowledgements must stop).
    pub fn durable(&self) -> std::io::Result<Lsn> {
        let inner = self.inner.borrow();
        match &inner.failed {
            Some(e) => Err(std::io::Error::other(e.clone())),
            None => Ok(inner.durable),
        }
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        self.inner.borrow().stats
    }

    /// Waits until record `lsn` (and every one before it) is on disk, committing if no commit
    /// is in progress. Fails if a commit failed: the caller must then stop acknowledging.
    pub async fn sync(&self, lsn: Lsn) -> std::io::Result<()> {
        loop {
            let lead = futures_lite::future::poll_fn(|cx| {
                let mut inner = self.inner.borrow_mut();
                if let Some(e) = &inner.failed {
                    return Poll::Ready(Err(std::io::Error::other(e.clone())));
                }
                if inner.durable >= lsn {
                    return Poll::Ready(Ok(false));
                }
                if !inner.writing {
                    inner.writing = true;
                    return Poll::Ready(Ok(true));
                }
                inner.waiters.push(cx.waker().clone());
                Poll::Pending
            })
            .await?;
            if !lead {
                return Ok(());
            }
            let result = self.commit().await;
            let mut inner = self.inner.borrow_mut();
            inner.writing = false;
            if let Err(e) = &result {
                inner.failed = Some(e.to_string());
            }
            for w in inner.waiters.drain(..) {
                w.wake();
            }
            drop(inner);
            result?;
        }
    }

    /// One group commit: writes the whole tail, `fdatasync`s, then drops the blocks that are
    /// complete on disk from memory, and starts a new segment when this one is full.
    async fn commit(&self) -> std::io::Result<()> {
        let (file, pos, buf, len, upto) = {
            let inner = self.inner.borrow();
            let len = inner.tail.len();
            let padded = len.div_ceil(inner.align) * inner.align;
            let mut buf = inner.file.alloc_dma_buffer(padded);
            let bytes = buf.as_bytes_mut();
            bytes[..len].copy_from_slice(&inner.tail);
            bytes[len..].fill(0);
            (Rc::clone(&inner.file), inner.tail_start, buf, len, inner.appended)
        };
        let padded = buf.len();
        let written = file.write_at(buf, pos).await?;
        if written != padded {
            return Err(std::io::Error::other(format!("short DMA write: {written} of {padded}")));
        }
        if self.inner.borrow().fdatasync {
            file.fdatasync().await?;
        }
        let end = {
            let mut inner = self.inner.borrow_mut();
            let full = len / inner.align * inner.align;
            inner.tail.drain(..full);
            inner.tail_start += full as u64;
            inner.stats.fsyncs += 1;
            inner.stats.records_synced += upto.0 - inner.durable.0;
            inner.durable = upto;
            pos + len as u64
        };
        if end >= self.cfg.segment_bytes_max {
            self.rotate(len).await?;
        }
        Ok(())
    }

    /// Starts the next segment after a commit that wrote `len` bytes of the tail and left the
    /// current one full. The old segment ends with that commit (its zero padding ends the
    /// recovery scan); records appended while the commit ran move to the new segment, after
    /// its header. The new file's name is synced before it is used.
    async fn rotate(&self, len: usize) -> std::io::Result<()> {
        let seq = self.inner.borrow().seq + 1;
        let file = create_segment(&self.cfg, seq).await?;
        let mut inner = self.inner.borrow_mut();
        // `len` was a frame boundary when the commit took its snapshot; the tail has since
        // lost its complete blocks (`len / align` of them) and gained the new records.
        let kept = len % inner.align;
        let mut tail = Vec::with_capacity(HEADER_LEN + inner.tail.len() - kept);
        SegmentHeader { format: format::FORMAT, shard: self.cfg.shard, seq }.encode(&mut tail);
        tail.extend_from_slice(&inner.tail[kept..]);
        inner.file = Rc::new(file);
        inner.seq = seq;
        inner.tail_start = 0;
        inner.tail = tail;
        inner.stats.segments += 1;
        Ok(())
    }
}

async fn create_segment(cfg: &WalConfig, seq: u64) -> std::io::Result<DmaFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .dma_open(segment_path(&cfg.dir, cfg.shard, seq))
        .await?;
    // The new name must survive a crash too.
    std::fs::File::open(&cfg.dir)?.sync_all()?;
    Ok(file)
}
