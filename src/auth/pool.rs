//! Password checks off the shard threads: a small pool of blocking worker threads, fed by a
//! bounded `crossbeam-channel` queue, that runs the key derivations of [`super::PasswordDb::check`]
//! (PBKDF2, Argon2id, SCRAM's PBKDF2 for a plain CONNECT password) and hands each verdict back
//! to the shard that asked.
//!
//! Why: a key derivation takes 0.1 ms to hundreds of milliseconds by design. Run on a shard
//! thread, every CONNECT with a password stalls every client of that shard for that long, and a
//! burst of bad logins freezes it. Here a shard only submits a [`HashJob`] (never blocking:
//! a full queue refuses the CONNECT with "server busy") and moves on; the connection waits in its
//! own phase until [`Verdict`] comes back.
//!
//! How a verdict wakes a shard: each shard has a [`Replies`] queue (a bounded crossbeam channel)
//! and one registered [`Waker`]. A worker sends the verdict, then wakes that waker; glommio
//! accepts wakes from foreign threads. The shard's verdict task registers its waker *before*
//! draining the queue, so a verdict sent in between is never missed.
//!
//! Bounds: at most `queue_max` jobs wait, `workers` run (each Argon2id check allocates its
//! memory cost, at most [`super::password::ARGON2_MEMORY_KIB_MAX`], so the pool's peak is
//! `workers` times that), and each shard's reply queue holds at most `queue_max + workers`
//! verdicts (every verdict answers one accepted job). Workers exit when the pool is dropped.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::Waker;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

pub use super::check::{HashJob, Verdict};

/// Verdicts for one shard, and the waker of the task that drains them.
pub struct Replies {
    tx: Sender<Verdict>,
    rx: Receiver<Verdict>,
    waker: Mutex<Option<Waker>>,
}

impl Replies {
    fn new(capacity: usize) -> Replies {
        let (tx, rx) = bounded(capacity);
        Replies { tx, rx, waker: Mutex::new(None) }
    }

    /// Registers the waker to wake when a verdict arrives. Call before [`Replies::try_recv`]
    /// returns `None`, so no verdict is missed.
    pub fn register(&self, waker: &Waker) {
        if let Ok(mut w) = self.waker.lock() {
            match w.as_ref() {
                Some(old) if old.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
        }
    }

    /// The next verdict, if one is waiting.
    pub fn try_recv(&self) -> Option<Verdict> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next verdict, at most `timeout` (tests, which have no executor).
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<Verdict> {
        self.rx.recv_timeout(timeout).ok()
    }

    fn deliver(&self, v: Verdict) {
        // Bounded by the accepted jobs (see the module docs), so this never waits for long; a
        // shard that is gone simply never reads it.
        let _ = self.tx.send(v);
        let waker = self.waker.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The worker pool. One per broker, shared by every shard.
pub struct HashPool {
    jobs: Sender<HashJob>,
    replies: Arc<[Replies]>,
    workers: usize,
    /// Keeps the queue open in a pool without workers (tests of the queue bound only).
    #[cfg(test)]
    _idle_jobs: Option<Receiver<HashJob>>,
}

impl fmt::Debug for HashPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashPool")
            .field("workers", &self.workers)
            .field("queued", &self.jobs.len())
            .finish()
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// `queue_max` jobs are waiting: the CONNECT is refused as "server busy".
    Full,
    /// The workers are gone (shutting down).
    Closed,
}

impl HashPool {
    /// Starts `workers` threads (`tern-hash-N`) with a queue of `queue_max` jobs, answering
    /// `shards` shards.
    pub fn start(workers: usize, queue_max: usize, shards: u16) -> std::io::Result<Arc<HashPool>> {
        assert!(workers >= 1 && queue_max >= 1, "invariant: config bounds are at least 1");
        let (tx, rx) = bounded::<HashJob>(queue_max);
        let replies: Arc<[Replies]> =
            (0..shards).map(|_| Replies::new(queue_max + workers)).collect();
        for i in 0..workers {
            let rx = rx.clone();
            let replies = Arc::clone(&replies);
            std::thread::Builder::new().name(format!("tern-hash-{i}")).spawn(move || {
                // Ends when every sender (the pool) is dropped.
                for job in rx.iter() {
                    let verdict = job.run();
                    if let Some(r) = replies.get(usize::from(job.shard)) {
                        r.deliver(verdict);
                    }
                }
            })?;
        }
        Ok(Arc::new(HashPool {
            jobs: tx,
            replies,
            workers,
            #[cfg(test)]
            _idle_jobs: None,
        }))
    }

    /// A pool whose queue nobody drains: it fills after `queue_max` jobs. For tests of the
    /// queue bound that must not depend on how fast a worker hashes.
    #[cfg(test)]
    pub(crate) fn without_workers(queue_max: usize, shards: u16) -> Arc<HashPool> {
        let (tx, rx) = bounded::<HashJob>(queue_max);
        let replies: Arc<[Replies]> = (0..shards).map(|_| Replies::new(queue_max)).collect();
        Arc::new(HashPool { jobs: tx, replies, workers: 0, _idle_jobs: Some(rx) })
    }

    /// Queues `job` without waiting.
    pub fn try_submit(&self, job: HashJob) -> Result<(), SubmitError> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Full,
            TrySendError::Disconnected(_) => SubmitError::Closed,
        })
    }

    /// The verdict queue of `shard`.
    pub fn replies(&self, shard: tern_core::ids::ShardId) -> Option<&Replies> {
        self.replies.get(shard.index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PasswordDb;
    use bytes::Bytes;
    use std::time::Duration;

    fn db() -> Arc<PasswordDb> {
        let hash = crate::auth::PasswordHash::new_pbkdf2_sha512(b"pw", 10).expect("hash");
        let mut db = PasswordDb::new();
        db.upsert("u", hash).expect("user");
        Arc::new(db)
    }

    fn job(shard: u16, ticket: u64, password: &'static [u8]) -> HashJob {
        HashJob {
            shard: tern_core::ids::ShardId(shard),
            ticket,
            db: db(),
            username: "u".into(),
            password: Some(Bytes::from_static(password)),
        }
    }

    #[test]
    fn verdicts_come_back_to_the_shard_that_asked() {
        let pool = HashPool::start(2, 8, 2).expect("pool");
        pool.try_submit(job(1, 7, b"pw")).expect("queued");
        pool.try_submit(job(0, 9, b"wrong")).expect("queued");
        let r1 = pool.replies(tern_core::ids::ShardId(1)).expect("shard 1");
        let r0 = pool.replies(tern_core::ids::ShardId(0)).expect("shard 0");
        assert_eq!(r1.recv_timeout(Duration::from_secs(10)), Some(Verdict { ticket: 7, ok: true }));
        assert_eq!(
            r0.recv_timeout(Duration::from_secs(10)),
            Some(Verdict { ticket: 9, ok: false })
        );
        assert!(pool.replies(tern_core::ids::ShardId(2)).is_none());
    }

    /// The queue bound: with one worker busy on a slow check, `queue_max` more are accepted and
    /// the next is refused at once, without waiting.
    #[test]
    fn a_full_queue_refuses_without_waiting() {
        let pool = HashPool::start(1, 2, 1).expect("pool");
        let slow = PasswordDb::parse(
            "slow",
            "s:$7$2000$ovTPebm9XGjn5I6M$b6bZX5QLUAo8/AYJqyLDa2mrsYl9C/mw38c1Aaw8rkkS+igwOoaBN0\
             44GhvY3Kr5yCneoRE83p59+wQfyFNAMA==",
        )
        .expect("parses");
        let slow = Arc::new(slow);
        let mut refused = 0;
        for ticket in 0..10 {
            let mut j = job(0, ticket, b"x");
            j.db = Arc::clone(&slow);
            j.username = "s".into();
            if pool.try_submit(j) == Err(SubmitError::Full) {
                refused += 1;
            }
        }
        // One running (maybe), two queued: at least 7 of 10 refused.
        assert!(refused >= 7, "refused {refused}");
    }
}
