//! The retained-message store (§3.3.1.3), one replica per shard. Bounded in messages and bytes:
//! a new retained topic beyond either bound is refused and counted; replacing or clearing an
//! existing one always works.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::{Shard, ShardMsg};
use crate::session::Message;
use crate::topic::matches;

/// Retained messages by topic.
#[derive(Default)]
pub(crate) struct RetainedStore {
    by_topic: HashMap<String, Rc<Message>>,
    bytes: usize,
}

/// What happened to a retained update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetainOutcome {
    Stored,
    Cleared,
    Refused,
}

impl RetainedStore {
    /// Sets, replaces or (empty payload, [MQTT-3.3.1-10]) clears the retained message of a topic.
    pub(crate) fn apply(
        &mut self,
        msg: Message,
        count_max: usize,
        bytes_max: usize,
    ) -> RetainOutcome {
        if msg.payload.is_empty() {
            if let Some(old) = self.by_topic.remove(&msg.topic) {
                self.bytes -= old.cost_bytes();
            }
            return RetainOutcome::Cleared;
        }
        let old_cost = self.by_topic.get(&msg.topic).map_or(0, |m| m.cost_bytes());
        let new_count = self.by_topic.len() + usize::from(old_cost == 0);
        if new_count > count_max || self.bytes - old_cost + msg.cost_bytes() > bytes_max {
            return RetainOutcome::Refused;
        }
        self.bytes = self.bytes - old_cost + msg.cost_bytes();
        self.by_topic.insert(msg.topic.clone(), Rc::new(msg));
        RetainOutcome::Stored
    }

    /// Unexpired retained messages whose topic matches `filter`.
    ///
    /// Cost: a scan of every retained topic. Subscribes are rare next to publishes, but a store
    /// of 10^5+ topics with subscribe storms wants a topic trie here (noted in the issue).
    pub(crate) fn matching(&self, filter: &str, now: Instant) -> Vec<Rc<Message>> {
        self.by_topic
            .values()
            .filter(|m| !m.is_expired(now) && matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    /// Retained messages held.
    pub(crate) fn len(&self) -> usize {
        self.by_topic.len()
    }
}

/// The shard that orders every retained update. Each shard keeps a full replica, and the
/// bounds are applied by this one shard only: it decides whether an update is stored, then
/// sends it to every other replica in that order over the FIFO mesh channels, so every replica
/// applies the same updates in the same order and holds the same set, whichever shard the
/// publishers were on. The cost is one extra mesh hop for a retained publish made on another
/// shard before its replica shows it.
pub(crate) const RETAIN_SEQUENCER: u16 = 0;

impl Shard {
    /// A retained update (set, replace or clear) from a client, a will or `$SYS` on this
    /// shard: applied through the sequencer so that replicas stay identical.
    pub(super) fn retain_local_and_broadcast(&mut self, msg: &Message) {
        let mut stored = msg.clone();
        stored.origin = None;
        stored.received_at = None;
        if self.id == RETAIN_SEQUENCER {
            self.retained_sequence(stored);
        } else {
            let to = usize::from(RETAIN_SEQUENCER);
            self.outbox[to].push_back(ShardMsg::RetainRequest { msg: stored });
        }
    }

    /// On the sequencer: applies the bounds, and when the update is kept sends it to every
    /// other replica. A refused update goes nowhere, so no replica holds it.
    pub(super) fn retained_sequence(&mut self, msg: Message) {
        let max = (self.cfg.retained_messages_max, self.cfg.retained_bytes_max);
        let outcome = self.retained.apply(msg.clone(), max.0, max.1);
        self.metrics.retained_messages = self.retained.len() as u64;
        if outcome == RetainOutcome::Refused {
            self.metrics.retained_refused += 1;
            return;
        }
        self.broadcast(|| ShardMsg::Retain { msg: msg.clone() });
    }

    /// On a replica: an update the sequencer kept. The sequencer checked the bounds against the
    /// same content this replica holds, so it is applied as it is.
    pub(super) fn retained_apply(&mut self, msg: Message) {
        self.retained.apply(msg, usize::MAX, usize::MAX);
        self.metrics.retained_messages = self.retained.len() as u64;
    }
}
