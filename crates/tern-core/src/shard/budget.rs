//! The broker-wide memory budget (`[limits] memory_budget_bytes`).
//!
//! Every shard charges what it holds beyond the fixed per-connection cost: the messages queued
//! and in flight for its sessions, the wills of its connections, their retained backlogs, and
//! the publishes it has sent across the mesh and the receiver has not yet handled, each at [`crate::session::Message::cost_bytes`] (payload, topic, the heap of
//! its properties and a fixed overhead). The shards share one counter (an atomic touched when a
//! session's or the retained store's holdings change, not per byte). Once the total reaches the
//! budget the broker stops growing: reads from connections that are owed nothing pause (their
//! input could only add), new clean-start connections are refused (v5 CONNACK 0x97 Quota exceeded, v3
//! return code 3 Server unavailable; resuming a session is allowed, it is how queues drain),
//! and messages that would be queued are dropped and
//! counted. Connections with messages queued or in flight keep reading: their
//! acknowledgements are what frees memory.
//!
//! The retained messages are not charged: they have bounds of their own
//! (`retained_messages_max`, `retained_bytes_max` per replica, counted at the same cost), and
//! since nothing drains them, a budget they filled would pause publishers for good.

use crate::ids::ShardId;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The shared counter and its limit.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: usize) -> Self {
        Self { used: AtomicUsize::new(0), limit }
    }

    /// Moves the charge of one holder from `old` to `new` bytes.
    pub fn recharge(&self, old: usize, new: usize) {
        if new > old {
            self.used.fetch_add(new - old, Ordering::Relaxed);
        } else if old > new {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    /// Bytes charged now, over every shard.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// True once the charged bytes reach the limit.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }
}

impl Default for MemoryBudget {
    /// The `tern.toml` default: 2 GiB.
    fn default() -> Self {
        Self::new(2 << 30)
    }
}

/// Bytes of publishes each shard has sent across the mesh and the receiver has not yet handled,
/// by sending shard. The sender adds, the receiver subtracts; a shard whose count reaches
/// `limits.mesh_bytes_max` stops reading its publishers (issue 9: the cross-shard queues held
/// up to ~130 000 messages, ~100 MB, behind a subscriber that stopped reading).
///
/// A sender whose publishers wait for these bytes to drain raises its `waiting` flag; the
/// receiver that brings the count down to half the bound clears it and tells the sender
/// ([`super::ShardMsg::MeshDrained`]), so the publishers resume as soon as the bytes are
/// handled, not at the sender's next periodic check (issue 10: up to 100 ms of a paused
/// cross-shard flow per episode).
#[derive(Debug)]
pub struct MeshBytes {
    by_sender: Box<[AtomicUsize]>,
    waiting: Box<[AtomicBool]>,
}

impl MeshBytes {
    /// Counters for `shards` shards.
    pub fn new(shards: u16) -> Self {
        Self {
            by_sender: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            waiting: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Shard `sender` put `bytes` on the mesh.
    pub fn sent(&self, sender: ShardId, bytes: usize) {
        if let Some(c) = self.by_sender.get(usize::from(sender)) {
            c.fetch_add(bytes, Ordering::SeqCst);
        }
    }

    /// A publish from `sender` of `bytes` was handled by its receiver. True when the sender
    /// waits for its count to fall to `half` and it now has: the caller tells it (once per
    /// wait).
    pub fn received(&self, sender: ShardId, bytes: usize, half: usize) -> bool {
        let Some(c) = self.by_sender.get(usize::from(sender)) else { return false };
        // SeqCst with `wait`: either the sender sees the lower count, or this sees its flag.
        let left = c.fetch_sub(bytes, Ordering::SeqCst).saturating_sub(bytes);
        left <= half
            && self
                .waiting
                .get(usize::from(sender))
                .is_some_and(|w| w.swap(false, Ordering::SeqCst))
    }

    /// Shard `sender` has publishers waiting until its count is at most `half`: true if it
    /// already is (the flag is then left down), else the flag is up for the receivers.
    pub fn wait(&self, sender: ShardId, half: usize) -> bool {
        let Some(w) = self.waiting.get(usize::from(sender)) else { return true };
        w.store(true, Ordering::SeqCst);
        if self.in_flight(sender) <= half {
            w.store(false, Ordering::SeqCst);
            return true;
        }
        false
    }

    /// Bytes `sender` has crossing the mesh now.
    pub fn in_flight(&self, sender: ShardId) -> usize {
        self.by_sender.get(usize::from(sender)).map_or(0, |c| c.load(Ordering::SeqCst))
    }
}
