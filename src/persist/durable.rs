//! The driver's side of a shard's log: appends what the shard produced, syncs per the fsync
//! mode, and holds a connection's output until the records it depends on are durable
//! (`fsync = "always"`). Used by `crate::net` (connection tasks) and `crate::runtime`.

use std::cell::RefCell;
use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::wal::{Lsn, Wal};
use crate::config::FsyncMode;
use crate::net::{Notify, ShardCell};
use crate::shard::Shard;

/// A shard's open log and how it is synced.
pub struct Durability {
    /// The log.
    pub wal: Wal,
    /// When it is synced.
    pub mode: FsyncMode,
    /// Period of the sync with [`FsyncMode::Interval`].
    pub interval: Duration,
    /// Wakes the shard's sync task (records were appended, or produced outside a connection).
    pub wake: Notify,
    /// Cross-shard durability, see [`Progress`].
    pub progress: Progress,
    /// This shard's id and the shard count.
    me: usize,
    shards: usize,
    /// Messages this shard has moved from an outbox into the mesh, per lane and peer
    /// (index `lane * shards + peer`, lane 0 data, 1 control).
    sent: RefCell<Vec<u64>>,
    /// Messages this shard has handled from each peer, same indexing.
    handled: RefCell<Vec<u64>>,
    /// The segment whose older segments were last compacted away.
    compacted: std::cell::Cell<u64>,
    /// Sessions moved to other shards whose `SessionEnd` waits for those shards' progress
    /// (see [`Shard::take_moved`]), oldest first, with the marks they wait for.
    moved: RefCell<std::collections::VecDeque<MovedAway>>,
    /// Connection outputs held by a [`Gate`]: woken after every sync.
    gated: RefCell<Vec<Waker>>,
    /// Handled counts synced and not yet published (see [`Publications`]).
    publications: RefCell<Publications>,
    /// `handover_forwarded` of the shard when the last handled counts were taken.
    forwards_seen: std::cell::Cell<u64>,
    /// See [`PersistOptions::pending_records_max`].
    pending_max: u64,
    /// The shard is at that bound (counted once per episode).
    backlogged: std::cell::Cell<bool>,
}

/// Sessions moved to other shards in one batch: the peer marks their end waits for, and
/// their client ids.
type MovedAway = (Vec<(usize, u64)>, Vec<String>);

/// How often a gate that waits for other shards' logs is looked at again.
const PEER_POLL: Duration = Duration::from_micros(100);

/// How far each shard has made the messages of each other shard durable: entry
/// `(lane * shards + from) * shards + to` counts the messages from `from` on `lane` that `to`
/// handled and then synced. Entries from `2 * shards * shards` on (same indexing after that
/// offset, `origin_cell`) count the messages `from` sent `to` whose sender had synced every
/// record it produced before sending them.
///
/// A publisher's PUBACK can depend on a record another shard writes (a message queued for a
/// persistent session there, a retained update the sequencer logs). With `fsync = "always"` a
/// connection's output therefore also waits until every peer has synced the messages this
/// shard had sent it, or still held in its outboxes, when the output was taken. Lanes are
/// counted apart: each is FIFO, the two are not ordered with each other.
///
/// The other direction: a QoS 2 PUBLISH to a subscriber must not go out before the inbound
/// QoS 2 id of its publisher is durable ([`crate::persist::hold`]), and that id is in the log
/// of the shard the publisher is on. Held output with a barrier therefore also waits until
/// every peer has synced what it had written before the messages this shard handled from it.
pub type Progress = std::sync::Arc<[std::sync::atomic::AtomicU64]>;

/// A new all-zero [`Progress`] for `shards` shards.
pub fn new_progress(shards: usize) -> Progress {
    (0..4 * shards * shards).map(|_| std::sync::atomic::AtomicU64::new(0)).collect()
}

/// The [`Progress`] entry counting the messages `from` sent `to` on `lane` (0 data, 1 control)
/// after syncing the records it produced before them.
fn origin_cell(shards: usize, lane: usize, from: usize, to: usize) -> usize {
    2 * shards * shards + (lane * shards + from) * shards + to
}

/// What a connection's output waits for before it is written (`fsync = "always"`): the log
/// durable up to `lsn`, and each peer's progress (index into [`Progress`]) at its mark.
pub struct Gate {
    lsn: Lsn,
    marks: Vec<(usize, u64)>,
    /// While waiting for peers: when to look again (their progress is written by other
    /// threads, which cannot wake this task).
    recheck: Option<glommio::timer::Timer>,
}

impl Gate {
    /// A gate that is open already (output that depends on nothing not yet durable, held only
    /// to keep its place behind older held output).
    pub fn open() -> Self {
        Self { lsn: Lsn(0), marks: Vec::new(), recheck: None }
    }
}

impl Durability {
    /// Appends every record the shard produced since the last call; returns the last LSN.
    pub fn append_from(&self, shard: &mut Shard) -> Lsn {
        let records = shard.take_records(std::time::Instant::now());
        if !records.is_empty() {
            let before = self.wal.stats();
            for r in &records {
                self.wal.append(r);
            }
            let after = self.wal.stats();
            shard.metrics.wal_records += after.records - before.records;
            shard.metrics.wal_bytes += after.bytes - before.bytes;
            let moved = shard.take_moved();
            if !moved.is_empty() {
                let marks = self.marks(shard);
                self.moved.borrow_mut().push_back((marks, moved));
            }
            // Records with no output waiting on them (a client's PUBACK, a DISCONNECT) are
            // synced by the sync task soon rather than at the next acknowledgement.
            if self.mode == FsyncMode::Always {
                self.wake.notify();
            }
        }
        self.wal.appended()
    }

    /// Before a connection's output is taken from the shard (no await in between): appends
    /// every record produced so far (those behind this output among them: a session's queue
    /// for a PUBACK, a subscription for a SUBACK...) and, with `fsync = "always"`, returns what
    /// the output must wait for. `None`: it may be written at once.
    pub fn gate(&self, shard: &mut Shard) -> Option<Gate> {
        let lsn = self.append_from(shard);
        if self.mode != FsyncMode::Always {
            return None;
        }
        let marks = self.marks(shard);
        let durable = self.wal.durable().map_or(true, |d| d < lsn);
        (durable || !marks.is_empty()).then_some(Gate { lsn, marks, recheck: None })
    }

    /// Output held behind a barrier (a QoS 2 PUBLISH among it) also waits until every peer
    /// has synced the records it wrote before the messages this shard handled from it so far
    /// (a publisher's inbound QoS 2 id on its shard, see [`Progress`]).
    pub fn hold_for_origins(&self, gate: &mut Gate) {
        use std::sync::atomic::Ordering;
        let handled = self.handled.borrow();
        for lane in 0..2 {
            for peer in (0..self.shards).filter(|p| *p != self.me) {
                let mark = handled[lane * self.shards + peer];
                let cell = origin_cell(self.shards, lane, peer, self.me);
                if mark > 0 && self.progress[cell].load(Ordering::Acquire) < mark {
                    gate.marks.push((cell, mark));
                }
            }
        }
    }

    /// Per peer and lane, the messages produced so far (moved into the mesh or still in an
    /// outbox): every record produced before them is collected or appended by now.
    fn produced(&self, shard: &Shard) -> Vec<u64> {
        let sent = self.sent.borrow();
        (0..2 * self.shards)
            .map(|i| {
                let (lane, peer) = (i / self.shards, i % self.shards);
                let queued = if peer == self.me { 0 } else { shard.outbox_len(peer, lane == 1) };
                sent[i] + queued as u64
            })
            .collect()
    }

    /// Per peer and lane, the messages sent so far (moved into the mesh or still in an
    /// outbox) that the peer has not yet synced: (`Progress` index, count).
    fn marks(&self, shard: &Shard) -> Vec<(usize, u64)> {
        use std::sync::atomic::Ordering;
        let mut marks = Vec::new();
        let sent = self.sent.borrow();
        for lane in 0..2 {
            for peer in (0..self.shards).filter(|p| *p != self.me) {
                let queued = shard.outbox_len(peer, lane == 1) as u64;
                let mark = sent[lane * self.shards + peer] + queued;
                let cell = (lane * self.shards + self.me) * self.shards + peer;
                if mark > 0 && self.progress[cell].load(Ordering::Acquire) < mark {
                    marks.push((cell, mark));
                }
            }
        }
        marks
    }

    /// Appends the `SessionEnd` of moved sessions whose new shard has logged them.
    fn end_moved(&self, shard: &ShardCell) {
        use std::sync::atomic::Ordering;
        let mut moved = self.moved.borrow_mut();
        // Bounded by the list; each pass removes the front or stops.
        while let Some((marks, _)) = moved.front() {
            if marks.iter().any(|(cell, mark)| self.progress[*cell].load(Ordering::Acquire) < *mark)
            {
                break;
            }
            if let Some((_, names)) = moved.pop_front() {
                for client_id in names {
                    // Back here meanwhile: the log holds it again, under a newer stamp.
                    if !shard.borrow().journal_holds(&client_id) {
                        self.wal.append(&super::record::Record::SessionEnd { client_id });
                    }
                }
            }
        }
    }

    /// Whether the output held by `gate` may be written; registers the task to be woken when
    /// it may be. An error means the log cannot be written: the output must not be sent (its
    /// acknowledgements would lie).
    pub fn poll_gate(&self, cx: &mut Context<'_>, gate: &mut Gate) -> Poll<std::io::Result<()>> {
        use std::sync::atomic::Ordering;
        if self.wal.durable()? >= gate.lsn {
            // Bounded: re-armed at most once per pass, and a pass ends with Pending.
            loop {
                gate.marks
                    .retain(|(cell, mark)| self.progress[*cell].load(Ordering::Acquire) < *mark);
                if gate.marks.is_empty() {
                    gate.recheck = None;
                    return Poll::Ready(Ok(()));
                }
                let timer =
                    gate.recheck.get_or_insert_with(|| glommio::timer::Timer::new(PEER_POLL));
                if std::pin::Pin::new(timer).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                gate.recheck = None;
            }
        }
        let mut gated = self.gated.borrow_mut();
        // At most one entry per held connection (a task polled again before the sync).
        if !gated.iter().any(|w| w.will_wake(cx.waker())) {
            gated.push(cx.waker().clone());
        }
        self.wake.notify();
        Poll::Pending
    }

    /// Whether the shard must stop reading its clients: `pending_records_max` records are
    /// appended (or collected) and not yet durable. The connection is woken after the next
    /// sync. Back-pressure instead of a drop: a publisher waits, its messages are not lost.
    pub fn poll_backlog(&self, cx: &mut Context<'_>, shard: &mut Shard) -> Poll<()> {
        let durable = self.wal.durable().unwrap_or(Lsn(0));
        let pending = self.wal.appended().0 - durable.0 + shard.records_pending() as u64;
        if pending < self.pending_max {
            self.backlogged.set(false);
            return Poll::Ready(());
        }
        if !self.backlogged.replace(true) {
            shard.metrics.wal_pending_full += 1;
        }
        let mut gated = self.gated.borrow_mut();
        if !gated.iter().any(|w| w.will_wake(cx.waker())) {
            gated.push(cx.waker().clone());
        }
        self.wake.notify();
        Poll::Pending
    }

    async fn sync(&self, shard: &ShardCell, lsn: Lsn) -> std::io::Result<()> {
        let before = self.wal.stats();
        let start = std::time::Instant::now();
        self.wal.sync(lsn).await?;
        let after = self.wal.stats();
        if after.fsyncs > before.fsyncs {
            let mut s = shard.borrow_mut();
            s.metrics.wal_fsyncs += after.fsyncs - before.fsyncs;
            s.metrics.wal_records_synced += after.records_synced - before.records_synced;
            s.note_wal_commit(start.elapsed());
        }
        Ok(())
    }

    /// Compaction: once the log has moved to a new segment (the old one reached
    /// `segment_bytes_max`), writes a snapshot of the whole durable state after the records
    /// already there, syncs it, and deletes the older segments. Replay of the remaining
    /// segments gives the same state: earlier records of the new segment are superseded by the
    /// snapshots, later ones apply on top.
    async fn compact_if_rotated(&self, shard: &ShardCell) -> std::io::Result<()> {
        let seq = self.wal.segment_seq();
        if seq == 0 || self.compacted.get() >= seq {
            return Ok(());
        }
        let lsn = self.append_from(&mut shard.borrow_mut());
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

    /// A flusher moved `n` messages for `peer` from an outbox (`control` lane or data) into
    /// the mesh. The sync task is woken: the peer may wait for it to say that the records
    /// before them are durable (see [`Progress`]), even when this shard has none to write.
    pub fn note_sent(&self, peer: usize, control: bool, n: usize) {
        let i = usize::from(control) * self.shards + peer;
        if let Some(v) = self.sent.borrow_mut().get_mut(i) {
            *v += n as u64;
        }
        if self.mode == FsyncMode::Always {
            self.wake.notify();
        }
    }

    /// The shard handled `n` messages from `peer` on the `control` lane or the data lane.
    pub fn note_handled(&self, peer: usize, control: bool, n: usize) {
        let i = usize::from(control) * self.shards + peer;
        if let Some(v) = self.handled.borrow_mut().get_mut(i) {
            *v += n as u64;
        }
    }

    /// The shard's sync task: records produced by peer messages and ticks are appended and,
    /// per the mode, synced at once (`always`) or every `interval` (`interval`; `never`
    /// writes on the same period without `fdatasync`, see [`Wal::set_fdatasync`]). Held
    /// outputs are woken after every sync.
    pub async fn run(&self, shard: &ShardCell) {
        loop {
            match self.mode {
                // Moved sessions wait for peers, whose progress does not wake this shard.
                FsyncMode::Always
                    if !self.moved.borrow().is_empty() || self.publications.borrow().waiting() =>
                {
                    futures_lite::future::or(self.wake.wait(), glommio::timer::sleep(PEER_POLL))
                        .await
                }
                FsyncMode::Always => self.wake.wait().await,
                _ => glommio::timer::sleep(self.interval).await,
            }
            let handled = self.handled.borrow().clone();
            // Before the append: the records behind these messages are all appended below.
            let produced = self.produced(&shard.borrow());
            let forwards = shard.borrow().metrics.handover_forwarded;
            let lsn = self.append_from(&mut shard.borrow_mut());
            if lsn > self.wal.durable().unwrap_or(lsn) {
                if let Err(e) = self.sync(shard, lsn).await {
                    tracing::error!(error = %e, "write-ahead log sync failed; acknowledgements stop");
                    self.wake_gated();
                    return;
                }
            }
            // A message handled here may have been forwarded to a session's new shard
            // (`shard::handover`), which alone logs it: its sender's acknowledgement then also
            // waits for that shard, so these counts wait until the control-lane messages
            // produced so far are synced where they went.
            let waits = if forwards > self.forwards_seen.replace(forwards) {
                (0..self.shards)
                    .filter(|to| *to != self.me)
                    .map(|to| {
                        ((self.shards + self.me) * self.shards + to, produced[self.shards + to])
                    })
                    .collect()
            } else {
                Vec::new()
            };
            {
                let mut publications = self.publications.borrow_mut();
                publications.push(handled, waits);
                publications.publish(&self.progress, self.me, self.shards);
            }
            for (i, n) in produced.iter().enumerate() {
                let (lane, to) = (i / self.shards, i % self.shards);
                if to != self.me {
                    let cell = &self.progress[origin_cell(self.shards, lane, self.me, to)];
                    cell.fetch_max(*n, std::sync::atomic::Ordering::AcqRel);
                }
            }
            self.wake_gated();
            self.end_moved(shard);
            if let Err(e) = self.compact_if_rotated(shard).await {
                tracing::error!(error = %e, "write-ahead log compaction failed");
                self.wake_gated();
                return;
            }
        }
    }

    fn wake_gated(&self) {
        let woken = std::mem::take(&mut *self.gated.borrow_mut());
        for w in woken {
            w.wake();
        }
    }
}

/// Handled counts (one per lane and peer) that are synced here but wait, before they are
/// published in [`Progress`], for peers to sync the control-lane messages this shard produced
/// while handling them (a message forwarded to a session's new shard is logged only there).
/// Published in order: a later snapshot includes the earlier ones. Bounded: past
/// [`PUBLICATIONS_MAX`] entries a new snapshot is merged into the last (it waits for both).
#[derive(Debug, Default)]
struct Publications {
    queue: std::collections::VecDeque<Snapshot>,
}

/// Handled counts per lane and peer, and the `(Progress index, mark)` pairs they wait for.
#[derive(Debug)]
struct Snapshot {
    handled: Vec<u64>,
    waits: Vec<(usize, u64)>,
}

/// See [`Publications`].
const PUBLICATIONS_MAX: usize = 64;

impl Publications {
    /// Whether a snapshot waits for peers (whose progress does not wake this shard).
    fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Queues the handled counts `handled`, publishable once every `(cell, mark)` of `waits`
    /// has reached its mark.
    fn push(&mut self, handled: Vec<u64>, waits: Vec<(usize, u64)>) {
        // Nothing new to wait for: the last snapshot waiting takes the newer counts.
        if waits.is_empty() || self.queue.len() >= PUBLICATIONS_MAX {
            if let Some(last) = self.queue.back_mut() {
                last.handled = handled;
                last.waits.extend(waits);
                return;
            }
        }
        self.queue.push_back(Snapshot { handled, waits });
    }

    /// Publishes, oldest first, every snapshot whose waits are over; stops at the first that
    /// still waits (the later ones include its counts).
    fn publish(&mut self, progress: &Progress, me: usize, shards: usize) {
        use std::sync::atomic::Ordering;
        while let Some(Snapshot { handled, waits }) = self.queue.front_mut() {
            waits.retain(|(cell, mark)| progress[*cell].load(Ordering::Acquire) < *mark);
            if !waits.is_empty() {
                return;
            }
            for (i, n) in handled.iter().enumerate() {
                let (lane, from) = (i / shards, i % shards);
                progress[(lane * shards + from) * shards + me].fetch_max(*n, Ordering::AcqRel);
            }
            self.queue.pop_front();
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
    /// Records appended and not yet durable at which the shard stops reading its clients.
    pub pending_records_max: u64,
    /// Shared by the shards, see [`Progress`].
    pub progress: Progress,
    /// One reading of both clocks for every shard (stamps taken on different shards compare).
    pub clock: super::journal::Clock,
}

/// What one shard starts from: its repaired log and the state it describes.
#[derive(Debug, Default)]
pub struct ShardRestore {
    recovered: super::wal::Recovered,
    sessions: Vec<(String, super::record::SessionSnapshot, crate::shard::ClaimGen, u64)>,
    registry: Vec<(String, crate::shard::Owner)>,
    retained: Vec<(super::record::StoredMessage, Option<super::record::StoredSource>)>,
    /// Delayed wills pending in the restored sessions: client id, will, due (Unix ms).
    wills: Vec<(String, crate::codec::Will, u64)>,
    recovery_ms: u64,
    discarded_bytes: u64,
    /// Sessions this log holds that another shard's log holds more recently.
    superseded: Vec<String>,
}

/// Start-up, before any shard serves: recovers every shard's log (blocking file IO, one shard
/// after the other), replays it, and decides which shard owns each restored session and
/// which registry shard learns it. Torn tails are truncated and counted, never refused.
pub fn recover_all(opts: &PersistOptions, shards: u16) -> std::io::Result<Vec<ShardRestore>> {
    use super::journal::{owners, replay};
    use super::wal::{recover, WalConfig};
    use crate::shard::{registry_shard, ClaimGen, Owner};
    // Every shard's log at once, one thread each (start-up, before any shard serves).
    let one =
        |shard: u16| -> std::io::Result<(super::wal::Recovered, super::journal::Replayed, u64)> {
            let start = std::time::Instant::now();
            let cfg = WalConfig {
                dir: opts.dir.clone(),
                shard,
                segment_bytes_max: opts.segment_bytes_max,
            };
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
                pending_wills = replayed.wills.len(),
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
            Ok((r, replayed, ms))
        };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shards).map(|shard| scope.spawn(move || one(shard))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("recovery panicked"))))
            .collect()
    });
    let mut recovered = Vec::new();
    let mut replays = Vec::new();
    let mut times = Vec::new();
    for r in results {
        let (r, replayed, ms) = r?;
        recovered.push(r);
        replays.push(replayed);
        times.push(ms);
    }
    let (owner, duplicates) = owners(&replays);
    let sequencer = usize::from(crate::shard::RETAIN_SEQUENCER);
    let retained: Vec<_> = replays
        .get(sequencer)
        .map(|r| {
            let source = |t: &String| r.retained_sources.get(t).cloned();
            r.retained.iter().map(|(t, m)| (m.clone(), source(t))).collect()
        })
        .unwrap_or_default();
    if duplicates > 0 {
        tracing::warn!(duplicates, "sessions found in two shards' logs; kept the first");
    }
    let mut out: Vec<ShardRestore> = (0..shards).map(|_| ShardRestore::default()).collect();
    let mut next_gen = vec![1u64; usize::from(shards)];
    for (shard, (r, replayed)) in recovered.into_iter().zip(replays).enumerate() {
        out[shard].discarded_bytes = r.discarded_bytes as u64;
        out[shard].recovered = r;
        out[shard].recovery_ms = times[shard];
        // Retained updates are logged by the sequencer only; every replica starts from its set.
        out[shard].retained = retained.clone();
        let mut wills = replayed.wills;
        for (cid, snap) in replayed.sessions {
            if owner.get(&cid) != Some(&(shard as u16)) {
                // A stale copy left by a crash during a move: ended in this log at start, so
                // it cannot come back once the owner ends the session.
                out[shard].superseded.push(cid);
                continue;
            }
            let reg = usize::from(registry_shard(&cid, shards));
            let generation = ClaimGen(next_gen[reg]);
            next_gen[reg] += 1;
            let stamp = replayed.stamps.get(&cid).copied().unwrap_or(0);
            if let Some((will, due)) = wills.remove(&cid) {
                out[shard].wills.push((cid.clone(), will, due));
            }
            out[shard].sessions.push((cid.clone(), snap, generation, stamp));
            out[reg]
                .registry
                .push((cid, Owner { shard: tern_core::ids::ShardId(shard as u16), generation }));
        }
    }
    Ok(out)
}

/// In the shard's thread, once its id is known: installs the restored state into the shard,
/// turns record collection on and opens the log for appending.
pub async fn open_shard(
    shard: &ShardCell,
    mut restore: ShardRestore,
    opts: &PersistOptions,
) -> std::io::Result<Durability> {
    use super::wal::WalConfig;
    let id = shard.borrow().id();
    let cfg =
        WalConfig { dir: opts.dir.clone(), shard: id.0, segment_bytes_max: opts.segment_bytes_max };
    let wal = Wal::open(cfg, &mut restore.recovered).await?;
    wal.set_fdatasync(opts.mode != FsyncMode::Never);
    for client_id in std::mem::take(&mut restore.superseded) {
        wal.append(&super::record::Record::SessionEnd { client_id });
    }
    let mut s = shard.borrow_mut();
    s.enable_persistence(opts.clock);
    let now = std::time::Instant::now();
    s.restore(restore.sessions, restore.registry, restore.retained, now);
    s.restore_wills(std::mem::take(&mut restore.wills), now);
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
        sent: RefCell::new(vec![0; 2 * shards]),
        handled: RefCell::new(vec![0; 2 * shards]),
        publications: RefCell::new(Publications::default()),
        forwards_seen: std::cell::Cell::new(0),
        compacted: std::cell::Cell::new(0),
        gated: RefCell::new(Vec::new()),
        moved: RefCell::default(),
        pending_max: opts.pending_records_max,
        backlogged: std::cell::Cell::new(false),
    })
}

fn s_count(shard: &ShardCell) -> u16 {
    shard.borrow().config().shards
}

/// Reads both clocks once, to convert instants to wall-clock time for the log.
pub fn clock_now() -> super::journal::Clock {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    super::journal::Clock { instant: std::time::Instant::now(), unix_ms }
}

#[cfg(test)]
mod tests {
    use super::{new_progress, Publications, PUBLICATIONS_MAX};
    use std::sync::atomic::Ordering;

    /// Two shards; this is shard 0. Cell `(lane * 2 + from) * 2 + to` of "messages from
    /// shard 1 on the data lane handled by shard 0" (lane 0, from 1, to 0), and of "shard 0's
    /// control-lane messages handled by shard 1" (lane 1, from 0, to 1).
    const HANDLED_FROM_1: usize = 2;
    const CONTROL_0_TO_1: usize = 5;

    #[test]
    fn handled_counts_wait_for_the_forwards_they_produced() {
        let progress = new_progress(2);
        let mut p = Publications::default();
        // Handled 5 messages from shard 1 (data lane); one was forwarded: 3 control messages
        // produced for shard 1, which has synced 2 of them.
        progress[CONTROL_0_TO_1].store(2, Ordering::Release);
        p.push(vec![0, 5, 0, 0], vec![(CONTROL_0_TO_1, 3)]);
        p.publish(&progress, 0, 2);
        assert_eq!(progress[HANDLED_FROM_1].load(Ordering::Acquire), 0, "not before the forward");
        // A later snapshot with no new forward is not published ahead of the earlier one.
        p.push(vec![0, 7, 0, 0], Vec::new());
        p.publish(&progress, 0, 2);
        assert_eq!(progress[HANDLED_FROM_1].load(Ordering::Acquire), 0);
        assert!(p.waiting());
        // The peer synced the forward: both snapshots' counts are published.
        progress[CONTROL_0_TO_1].store(3, Ordering::Release);
        p.publish(&progress, 0, 2);
        assert_eq!(progress[HANDLED_FROM_1].load(Ordering::Acquire), 7);
        assert!(!p.waiting());
        // Without a forward, counts are published at once.
        p.push(vec![0, 9, 0, 0], Vec::new());
        p.publish(&progress, 0, 2);
        assert_eq!(progress[HANDLED_FROM_1].load(Ordering::Acquire), 9);
    }

    #[test]
    fn waiting_snapshots_are_bounded() {
        let progress = new_progress(2);
        let mut p = Publications::default();
        for i in 1..=(PUBLICATIONS_MAX as u64 + 10) {
            p.push(vec![0, i, 0, 0], vec![(CONTROL_0_TO_1, i)]);
            p.publish(&progress, 0, 2);
        }
        assert_eq!(p.queue.len(), PUBLICATIONS_MAX, "merged past the bound");
        let last = PUBLICATIONS_MAX as u64 + 10;
        progress[CONTROL_0_TO_1].store(last - 1, Ordering::Release);
        p.publish(&progress, 0, 2);
        assert_eq!(
            progress[HANDLED_FROM_1].load(Ordering::Acquire),
            PUBLICATIONS_MAX as u64 - 1,
            "published up to the merged snapshot, which waits for every merged mark"
        );
        progress[CONTROL_0_TO_1].store(last, Ordering::Release);
        p.publish(&progress, 0, 2);
        assert_eq!(progress[HANDLED_FROM_1].load(Ordering::Acquire), last);
    }
}
