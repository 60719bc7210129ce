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
use std::sync::atomic::{AtomicUsize, Ordering};

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
#[derive(Debug)]
pub struct MeshBytes {
    by_sender: Box<[AtomicUsize]>,
}

impl MeshBytes {
    /// Counters for `shards` shards.
    pub fn new(shards: u16) -> Self {
        Self { by_sender: (0..shards).map(|_| AtomicUsize::new(0)).collect() }
    }

    /// Shard `sender` put `bytes` on the mesh.
    pub fn sent(&self, sender: ShardId, bytes: usize) {
        if let Some(c) = self.by_sender.get(usize::from(sender)) {
            c.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// A publish from `sender` of `bytes` was handled by its receiver.
    pub fn received(&self, sender: ShardId, bytes: usize) {
        if let Some(c) = self.by_sender.get(usize::from(sender)) {
            c.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes `sender` has crossing the mesh now.
    pub fn in_flight(&self, sender: ShardId) -> usize {
        self.by_sender.get(usize::from(sender)).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}
