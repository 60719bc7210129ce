//! What the workers count and how their counts are merged: latency histograms, per-publisher
//! sequence tracking (losses, duplicates, reordering), errors, and the shared progress counters
//! the main thread prints once a second.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Histograms record nanoseconds, 1 ns to 100 s, 2 significant digits (1 % resolution): the
/// counts array stays ~32 KiB, so recording on the per-message path stays in cache (3 digits
/// made it ~600 KiB and the top symbol of a fan-out profile).
pub fn new_histogram() -> Histogram<u64> {
    // invariant: constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig 2).
    Histogram::new_with_bounds(1, 100_000_000_000, 2).expect("invariant: valid histogram bounds")
}

/// Sequence numbers seen from one publisher by one delivery group.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    /// Bit `seq` set when that sequence number arrived.
    bits: Vec<u64>,
    /// Deliveries, duplicates included.
    pub received: u64,
}

impl SeqTracker {
    /// Records `seq`; returns true when it had already been seen (a duplicate).
    pub fn record(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let mask = 1u64 << (seq % 64);
        let dup = self.bits[word] & mask != 0;
        self.bits[word] |= mask;
        self.received += 1;
        dup
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Adds another group member's view (shared subscriptions spread one group over many
    /// connections and threads).
    pub fn merge(&mut self, other: &SeqTracker) {
        if other.bits.len() > self.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
        self.received += other.received;
    }
}

/// Run phases, advanced only by the main thread.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Open every connection (CONNECT / CONNACK).
    Connect = 0,
    /// Subscribers send SUBSCRIBE.
    Subscribe = 1,
    /// Publishers publish (for `conn`: connections are held).
    Publish = 2,
    /// Publishers are done; waiting for outstanding deliveries.
    Drain = 3,
    /// Send DISCONNECT, close, hand the results back.
    Stop = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Connect,
            1 => Phase::Subscribe,
            2 => Phase::Publish,
            3 => Phase::Drain,
            _ => Phase::Stop,
        }
    }
}

/// Counters shared by the workers and the main thread. Workers add their local counts once per
/// loop turn, not once per message, so the atomics cost little.
#[derive(Debug, Default)]
pub struct Shared {
    phase: AtomicU8,
    /// Subscribers subscribe once this is set (before the publish phase, or after it for
    /// `retained`, whose messages must be stored first).
    subscribe: AtomicBool,
    /// Set by the main thread when the publish phase starts.
    pub publish_start: OnceLock<Instant>,
    /// Connections with a successful CONNACK.
    pub connected: AtomicU64,
    /// Connections that failed (refused, reset, timed out).
    pub failed: AtomicU64,
    /// Subscribers whose SUBACK arrived.
    pub subscribed: AtomicU64,
    /// PUBLISH packets written.
    pub sent: AtomicU64,
    /// QoS 1/2 publishes acknowledged (PUBACK / PUBCOMP).
    pub acked: AtomicU64,
    /// PUBLISH packets received by subscribers.
    pub received: AtomicU64,
    /// Publishers that have sent everything and had it acknowledged.
    pub publishers_done: AtomicU64,
    /// Errors of any kind.
    pub errors: AtomicU64,
}

impl Shared {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `p` (main thread only).
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    /// True once subscribers should subscribe.
    pub fn subscribe_now(&self) -> bool {
        self.subscribe.load(Ordering::Acquire)
    }

    /// Tells subscribers to subscribe (main thread only).
    pub fn start_subscribe(&self) {
        self.subscribe.store(true, Ordering::Release);
    }

    /// Relaxed read of a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Per-publisher totals.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublisherTotals {
    /// Publisher id.
    pub id: u32,
    /// PUBLISH packets written.
    pub sent: u64,
    /// Acknowledged (QoS 1/2).
    pub acked: u64,
}

/// Everything one worker thread measured; merged by [`WorkerResult::merge`].
#[derive(Debug)]
pub struct WorkerResult {
    /// Publish-to-deliver latency, ns (retained deliveries excluded: they are old by design).
    pub latency: Histogram<u64>,
    /// Connect-to-CONNACK time, ns.
    pub connack: Histogram<u64>,
    /// (group, publisher) -> sequence numbers seen.
    pub seqs: HashMap<(u32, u32), SeqTracker>,
    /// Deliveries that arrived with a lower sequence than an earlier one on the same
    /// subscription (per subscriber, per publisher).
    pub reordered: u64,
    /// Deliveries with the RETAIN flag.
    pub retained_received: u64,
    /// Per publisher.
    pub publishers: Vec<PublisherTotals>,
    /// Error counts by kind.
    pub errors: BTreeMap<String, u64>,
    /// Connections that got a CONNACK.
    pub connected: u64,
    /// Connections that did not.
    pub failed: u64,
    /// First connection attempt of this worker.
    pub first_connect: Option<Instant>,
    /// Last CONNACK of this worker.
    pub last_connack: Option<Instant>,
    /// Last PUBLISH written.
    pub last_send: Option<Instant>,
    /// Last PUBLISH received.
    pub last_recv: Option<Instant>,
    /// Last SUBACK received (retained: delivery time is measured from here).
    pub first_subscribe: Option<Instant>,
}

impl Default for WorkerResult {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            connack: new_histogram(),
            seqs: HashMap::new(),
            reordered: 0,
            retained_received: 0,
            publishers: Vec::new(),
            errors: BTreeMap::new(),
            connected: 0,
            failed: 0,
            first_connect: None,
            last_connack: None,
            last_send: None,
            last_recv: None,
            first_subscribe: None,
        }
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

impl WorkerResult {
    /// Counts one error of kind `what`.
    pub fn error(&mut self, what: &str) {
        *self.errors.entry(what.to_string()).or_default() += 1;
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: WorkerResult) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.connack.add(&other.connack);
        for (k, v) in other.seqs {
            self.seqs.entry(k).or_default().merge(&v);
        }
        self.reordered += other.reordered;
        self.retained_received += other.retained_received;
        self.publishers.extend(other.publishers);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.connected += other.connected;
        self.failed += other.failed;
        self.first_connect = min_opt(self.first_connect, other.first_connect);
        self.last_connack = max_opt(self.last_connack, other.last_connack);
        self.last_send = max_opt(self.last_send, other.last_send);
        self.last_recv = max_opt(self.last_recv, other.last_recv);
        self.first_subscribe = min_opt(self.first_subscribe, other.first_subscribe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_duplicates_and_unions() {
        let mut a = SeqTracker::default();
        assert!(!a.record(0));
        assert!(!a.record(65));
        assert!(a.record(65));
        let mut b = SeqTracker::default();
        b.record(1);
        b.record(65);
        a.merge(&b);
        assert_eq!(a.unique(), 3);
        assert_eq!(a.received, 5);
    }
}
