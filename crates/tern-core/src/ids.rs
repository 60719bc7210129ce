//! The identifiers the shards pass around, as types of their own so that a slot index cannot
//! be given where a shard index or a slot generation is expected (issue 15).
//!
//! Each is a `Copy` wrapper over the integer it always was: the sizes, the wire and the record
//! encodings do not change. The field is public like [`crate::shard::ConnId`]'s, because the
//! runtime creates shard ids from the configured shard count and the records hold the numbers.

use std::fmt;

use serde::Serialize;

/// The index of a shard (one per core), `0..shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct ShardId(pub u16);

impl From<ShardId> for usize {
    fn from(id: ShardId) -> usize {
        usize::from(id.0)
    }
}

impl From<ShardId> for u64 {
    fn from(id: ShardId) -> u64 {
        u64::from(id.0)
    }
}

impl ShardId {
    /// The index into per-shard vectors (outboxes, peer flags).
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The index of a session slot inside one shard. Slots are reused after a session ends; a
/// [`SlotGen`] tells the sessions that held one slot apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SlotId(pub u32);

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The shard-local generation of a session slot: each session installed in a slot gets the
/// shard's next one, so a record that names (slot, generation) never reaches the slot's next
/// session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotGen(pub u32);

impl fmt::Display for SlotGen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One session as a record that outlives a turn names it on its own shard: the slot and the
/// generation of the session in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotRef {
    /// The slot.
    pub slot: SlotId,
    /// The generation of the session that held it.
    pub generation: SlotGen,
}

/// A message's identity, given by the shard that routed it: that shard in the top 16 bits, a
/// sequence number of that shard below. [`MessageId::UNROUTED`] (0) until routed. A session
/// that moves between shards uses it to receive each message once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId(pub u64);

impl MessageId {
    /// Not routed yet.
    pub const UNROUTED: MessageId = MessageId(0);

    /// Bits of the sequence number.
    const SEQ_BITS: u32 = 48;

    /// The id `shard` gives its message number `seq` (only the low 48 bits of `seq` count).
    pub fn new(shard: ShardId, seq: u64) -> Self {
        MessageId((u64::from(shard.0) << Self::SEQ_BITS) | (seq & ((1 << Self::SEQ_BITS) - 1)))
    }

    /// Whether no shard has routed it yet.
    pub fn is_unrouted(self) -> bool {
        self == Self::UNROUTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_keeps_the_shard_in_the_top_16_bits() {
        assert_eq!(MessageId::new(ShardId(0), 5).0, 5);
        assert_eq!(MessageId::new(ShardId(3), 7).0, (3 << 48) | 7);
        assert_eq!(MessageId::new(ShardId(1), u64::MAX).0, (1 << 48) | ((1 << 48) - 1));
        assert!(!MessageId::new(ShardId(0), 1).is_unrouted());
        assert!(MessageId::default().is_unrouted());
    }
}
