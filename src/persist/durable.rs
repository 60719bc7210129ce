//! The driver's side of a shard's log: appends what the shard produced, syncs per the fsync
//! mode, and holds a connection's output until the records it depends on are durable
//! (`fsync = "always"`). Used by `crate::net` (connection tasks) and `crate::runtime`.

use std::cell::RefCell;
use std::time::Duration;

use super::wal::{Lsn, Wal};
use crate::config::FsyncMode;
use crate::net::Notify;
use crate::shard::Shard;

/// A shard's open log and how it is synced.
pub struct Durability {
    /// The log.
    pub wal: Wal,
    /// When it is synced.
    pub mode: FsyncMode,
    /// Period of the sync with [`FsyncMode::Interval`].
    pub interval: Duration,
    /// Wakes the shard's sync task (records were produced outside a connection task).
    pub wake: Notify,
    /// Cross-shard durability, see [`Progress`].
    pub progress: Progress,
    /// This shard's id and the shard count.
    me: usize,
    shards: usize,
    /// Messages this shard has moved from its outbox into the mesh, per peer.
    sent: RefCell<Vec<u64>>,
    /// Messages this shard has handled from each peer.
    handled: RefCell<Vec<u64>>,
    /// The segment whose older segments were last compacted away.
    compacted: std::cell::Cell<u64>,
}

/// How far each shard has made the messages of each other shard durable: entry
/// `from * shards + to` counts the messages from `from` that `to` handled and then synced.
///
/// A publisher's PUBACK can depend on a record another shard writes (a message queued for a
/// persistent session there). With `fsync = "always"` a connection's output therefore also
/// waits until every peer has synced the messages this shard had sent it, or still held in
/// its outbox, when the output was taken.
pub type Progress = std::sync::Arc<[std::sync::atomic::AtomicU64]>;

/// A new all-zero [`Progress`] for `shards` shards.
pub fn new_progress(shards: usize) -> Progress {
    (0..shards * shards).map(|_| std::sync::atomic::AtomicU64::new(0)).collect()
}

impl Durability {
    /// Appends every record the shard produced since the last call; returns the last LSN.
    pub fn append_from(&self, shard: &RefCell<Shard>) -> Lsn {
        let mut shard = shard.borrow_mut();
        let records = shard.take_records();
        if !records.is_empty() {
            let before = self.wal.stats();
            for r in &records {
                self.wal.append(r);
            }
            let after = self.wal.stats();
            shard.metrics.wal_records += after.records - before.records;
            shard.metrics.wal_bytes += after.bytes - before.bytes;
            // Records with no output waiting on them (a client's PUBACK, a DISCONNECT) are
            // synced by the sync task soon rather than at the next acknowledgement.
            if self.mode == FsyncMode::Always {
                self.wake.notify();
            }
        }
        self.wal.appended()
    }

    /// Before output produced when `lsn` was the last record appended is written: with
    /// `fsync = "always"`, waits until the log is durable up to `lsn` (other modes return at
    /// once). An error means the log cannot be written: the caller must not send the output
    /// (its acknowledgements would lie).
    pub async fn wait_durable(&self, shard: &RefCell<Shard>, lsn: Lsn) -> std::io::Result<()> {
        if self.mode == FsyncMode::Always && lsn > Lsn(0) {
            self.sync(shard, lsn).await?;
        }
        Ok(())
    }

    async fn sync(&self, shard: &RefCell<Shard>, lsn: Lsn) -> std::io::Result<()> {
        let before = self.wal.stats().fsyncs;
        self.wal.sync(lsn).await?;
        let after = self.wal.stats().fsyncs;
        if after > before {
            shard.borrow_mut().metrics.wal_fsyncs += after - before;
        }
        Ok(())
    }

    /// Compaction: once the log has moved to a new segment (the old one reached
    /// `segment_bytes_max`), writes a snapshot of the whole durable state after the records
    /// already there, syncs it, and deletes the older segments. Replay of the remaining
    /// segments gives the same state: earlier records of the new segment are superseded by the
    /// snapshots, later ones apply on top.
    async fn compact_if_rotated(&self, shard: &RefCell<Shard>) -> std::io::Result<()> {
        let seq = self.wal.segment_seq();
        if seq == 0 || self.compacted.get() >= seq {
            return Ok(());
        }
        let lsn = self.append_from(shard);
        let records = shard.borrow().compaction_records();
        for r in &records {
            self.wal.append(r);
        }
        let lsn = lsn.max(self.wal.appended());
        self.sync(shard, lsn).await?;
        // The snapshot may itself have filled the segment: it is still whole in the segments
        // from `seq` on.
        let removed = self.wal.remove_segments_before(seq)?;
        self.compacted.set(seq);
        tracing::info!(
            records = records.len(),
            removed,
            segment = seq,
            "write-ahead log compacted"
        );
        Ok(())
    }

    /// The flusher moved `n` messages for `peer` from the outbox into the mesh.
    pub fn note_sent(&self, peer: usize, n: usize) {
        if let Some(v) = self.sent.borrow_mut().get_mut(peer) {
            *v += n as u64;
        }
    }

    /// The shard handled `n` messages from `peer`.
    pub fn note_handled(&self, peer: usize, n: usize) {
        if let Some(v) = self.handled.borrow_mut().get_mut(peer) {
            *v += n as u64;
        }
    }

    /// Per peer, the messages sent so far (moved into the mesh or still in the outbox). Take
    /// it with the output, with no await in between.
    pub fn sent_marks(&self, shard: &RefCell<Shard>) -> Vec<u64> {
        let mut s = shard.borrow_mut();
        let outbox = s.outbox();
        self.sent
            .borrow()
            .iter()
            .enumerate()
            .map(|(p, n)| n + outbox.get(p).map_or(0, |q| q.len() as u64))
            .collect()
    }

    /// With `fsync = "always"`: waits until every peer has synced the messages counted in
    /// `marks`. Returns early when `stopping` says the shard is going down.
    pub async fn wait_peers(&self, marks: &[u64], stopping: &std::cell::Cell<bool>) {
        use std::sync::atomic::Ordering;
        if self.mode != FsyncMode::Always {
            return;
        }
        for (peer, mark) in marks.iter().enumerate() {
            if peer == self.me || *mark == 0 {
                continue;
            }
            let cell = &self.progress[self.me * self.shards + peer];
            while cell.load(Ordering::Acquire) < *mark && !stopping.get() {
                glommio::timer::sleep(Duration::from_micros(100)).await;
            }
        }
    }

    /// The shard's sync task: records produced by peer messages and ticks are appended and,
    /// per the mode, synced at once (`always`) or every `interval` (`interval`; `never`
    /// writes on the same period without `fdatasync`, see [`Wal::set_fdatasync`]).
    pub async fn run(&self, shard: &RefCell<Shard>) {
        loop {
            match self.mode {
                FsyncMode::Always => self.wake.wait().await,
                _ => glommio::timer::sleep(self.interval).await,
            }
            let handled = self.handled.borrow().clone();
            let lsn = self.append_from(shard);
            if lsn > Lsn(0) {
                if let Err(e) = self.sync(shard, lsn).await {
                    tracing::error!(error = %e, "write-ahead log sync failed; acknowledgements stop");
                    return;
                }
            }
            for (from, n) in handled.iter().enumerate() {
                let cell = &self.progress[from * self.shards + self.me];
                cell.store(*n, std::sync::atomic::Ordering::Release);
            }
            if let Err(e) = self.compact_if_rotated(shard).await {
                tracing::error!(error = %e, "write-ahead log compaction failed");
                return;
            }
        }
    }
}

/// Persistence settings the runtime takes.
#[derive(Clone, Debug)]
pub struct PersistOptions {
    /// The data directory.
    pub dir: std::path::PathBuf,
    /// When the log is synced.
    pub mode: FsyncMode,
    /// Period for `interval` (and the write period for `never`).
    pub interval: Duration,
    /// Segment size bound.
    pub segment_bytes_max: u64,
    /// Shared by the shards, see [`Progress`].
    pub progress: Progress,
}

/// What one shard starts from: its repaired log and the state it describes.
#[derive(Debug, Default)]
pub struct ShardRestore {
    recovered: super::wal::Recovered,
    sessions: Vec<(String, super::record::SessionSnapshot, crate::shard::ClaimGen)>,
    registry: Vec<(String, crate::shard::Owner)>,
    retained: Vec<super::record::StoredMessage>,
    recovery_ms: u64,
    discarded_bytes: u64,
}

/// Start-up, before any shard serves: recovers every shard's log (blocking file IO, one shard
/// after the other), replays it, and decides which shard owns each restored session and
/// which registry shard learns it. Torn tails are truncated and counted, never refused.
pub fn recover_all(opts: &PersistOptions, shards: u16) -> std::io::Result<Vec<ShardRestore>> {
    use super::journal::{owners, replay};
    use super::wal::{recover, WalConfig};
    use crate::shard::{registry_shard, ClaimGen, Owner};
    let mut recovered = Vec::new();
    let mut replays = Vec::new();
    let mut times = Vec::new();
    for shard in 0..shards {
        let start = std::time::Instant::now();
        let cfg =
            WalConfig { dir: opts.dir.clone(), shard, segment_bytes_max: opts.segment_bytes_max };
        let mut r = recover(&cfg)?;
        let records = std::mem::take(&mut r.records);
        let n = records.len();
        let replayed = replay(records);
        let ms = start.elapsed().as_millis() as u64;
        tracing::info!(
            shard,
            segments = r.segments,
            records = n,
            sessions = replayed.sessions.len(),
            retained = replayed.retained.len(),
            torn_bytes = r.discarded_bytes,
            bad_records = r.bad_records,
            set_aside = r.set_aside,
            orphan_records = replayed.orphans,
            ms,
            "write-ahead log recovered"
        );
        if r.discarded_bytes > 0 || r.set_aside > 0 {
            tracing::warn!(
                shard,
                torn_bytes = r.discarded_bytes,
                set_aside = r.set_aside,
                "torn or corrupt log tail truncated (records after the last whole one were never acknowledged)"
            );
        }
        recovered.push(r);
        replays.push(replayed);
        times.push(ms);
    }
    let (owner, duplicates) = owners(&replays);
    if duplicates > 0 {
        tracing::warn!(duplicates, "sessions found in two shards' logs; kept the first");
    }
    let mut out: Vec<ShardRestore> = (0..shards).map(|_| ShardRestore::default()).collect();
    let mut next_gen = vec![1u64; usize::from(shards)];
    for (shard, (r, replayed)) in recovered.into_iter().zip(replays).enumerate() {
        out[shard].discarded_bytes = r.discarded_bytes as u64;
        out[shard].recovered = r;
        out[shard].recovery_ms = times[shard];
        out[shard].retained = replayed.retained.into_values().collect();
        for (cid, snap) in replayed.sessions {
            if owner.get(&cid) != Some(&(shard as u16)) {
                continue;
            }
            let reg = usize::from(registry_shard(&cid, shards));
            let generation = ClaimGen(next_gen[reg]);
            next_gen[reg] += 1;
            out[shard].sessions.push((cid.clone(), snap, generation));
            out[reg].registry.push((cid, Owner { shard: shard as u16, generation }));
        }
    }
    Ok(out)
}

/// In the shard's thread, once its id is known: installs the restored state into the shard,
/// turns record collection on and opens the log for appending.
pub async fn open_shard(
    shard: &RefCell<Shard>,
    mut restore: ShardRestore,
    opts: &PersistOptions,
) -> std::io::Result<Durability> {
    use super::wal::WalConfig;
    let id = shard.borrow().id();
    let cfg =
        WalConfig { dir: opts.dir.clone(), shard: id, segment_bytes_max: opts.segment_bytes_max };
    let wal = Wal::open(cfg, &mut restore.recovered).await?;
    wal.set_fdatasync(opts.mode != FsyncMode::Never);
    let mut s = shard.borrow_mut();
    s.enable_persistence(super::journal::Clock::now());
    let now = std::time::Instant::now();
    s.restore(restore.sessions, restore.registry, restore.retained, now);
    s.metrics.wal_discarded_bytes = restore.discarded_bytes;
    s.metrics.wal_recovery_ms = restore.recovery_ms;
    drop(s);
    let shards = usize::from(s_count(shard));
    Ok(Durability {
        wal,
        mode: opts.mode,
        interval: opts.interval,
        wake: Notify::default(),
        progress: std::sync::Arc::clone(&opts.progress),
        me: usize::from(id),
        shards,
        sent: RefCell::new(vec![0; shards]),
        handled: RefCell::new(vec![0; shards]),
        compacted: std::cell::Cell::new(0),
    })
}

fn s_count(shard: &RefCell<Shard>) -> u16 {
    shard.borrow().config().shards
}
