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

    /// The unexpired retained message of `topic`, if any.
    pub(crate) fn get(&self, topic: &str, now: Instant) -> Option<&Rc<Message>> {
        self.by_topic.get(topic).filter(|m| !m.is_expired(now))
    }

    /// Retained messages held.
    pub(crate) fn len(&self) -> usize {
        self.by_topic.len()
    }
}

impl Shard {
    /// Applies a retained update here and sends it to every other shard's replica.
    pub(super) fn retain_local_and_broadcast(&mut self, msg: &Message) {
        let mut stored = msg.clone();
        stored.origin = None;
        self.retained_apply(stored.clone());
        self.broadcast(|| ShardMsg::Retain { msg: stored.clone() });
    }

    pub(super) fn retained_apply(&mut self, msg: Message) {
        let max = (self.cfg.retained_messages_max, self.cfg.retained_bytes_max);
        if self.retained.apply(msg, max.0, max.1) == RetainOutcome::Refused {
            self.metrics.retained_refused += 1;
        }
        self.metrics.retained_messages = self.retained.len() as u64;
    }
}
