//! The retained-message store (§3.3.1.3), one replica per shard. Bounded in messages and bytes:
//! a new retained topic beyond either bound is refused and counted; replacing or clearing an
//! existing one always works.
//!
//! Indexed by topic level (a trie), so a SUBSCRIBE visits only the retained topics its filter
//! can match: a literal level follows one child, `+` every child of one node, `#` the subtree
//! below it. The walks use an explicit stack (no recursion), bounded by the number of nodes.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::message::RetainSource;
use super::{Shard, ShardMsg};
use crate::session::Message;

/// One topic level: the retained message whose topic ends here, and the next levels.
#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    msg: Option<Rc<Message>>,
    /// Who published `msg` (None: the broker, or a store built before sources were kept).
    source: Option<RetainSource>,
}

/// Retained messages by topic, as a trie of topic levels.
#[derive(Default)]
pub(crate) struct RetainedStore {
    root: Node,
    count: usize,
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
    fn node(&self, topic: &str) -> Option<&Node> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        Some(node)
    }

    fn find(&self, topic: &str) -> Option<&Rc<Message>> {
        self.node(topic)?.msg.as_ref()
    }

    /// Who published the retained message of `topic`.
    pub(crate) fn source(&self, topic: &str) -> Option<&RetainSource> {
        self.node(topic)?.source.as_ref()
    }

    /// Sets, replaces or (empty payload, [MQTT-3.3.1-10]) clears the retained message of a topic.
    pub(crate) fn apply(
        &mut self,
        msg: Message,
        source: Option<RetainSource>,
        count_max: usize,
        bytes_max: usize,
    ) -> RetainOutcome {
        if msg.payload.is_empty() {
            self.clear(&msg.topic);
            return RetainOutcome::Cleared;
        }
        let old_cost = self.find(&msg.topic).map_or(0, |m| m.cost_bytes());
        let new_count = self.count + usize::from(old_cost == 0);
        if new_count > count_max || self.bytes - old_cost + msg.cost_bytes() > bytes_max {
            return RetainOutcome::Refused;
        }
        self.bytes = self.bytes - old_cost + msg.cost_bytes();
        self.count = new_count;
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node.msg = Some(Rc::new(msg));
        node.source = source;
        RetainOutcome::Stored
    }

    /// Removes the message of `topic` and the levels left empty by it.
    fn clear(&mut self, topic: &str) {
        // The path down, as (parent, level) pairs, walked again from the root to prune: no
        // parent pointers, no recursion; the depth is bounded by `topic_levels_max`.
        let levels: Vec<&str> = topic.split('/').collect();
        let mut node = &mut self.root;
        for level in &levels {
            match node.children.get_mut(*level) {
                Some(n) => node = n,
                None => return,
            }
        }
        let Some(old) = node.msg.take() else { return };
        node.source = None;
        self.bytes -= old.cost_bytes();
        self.count -= 1;
        // Prune: find the deepest ancestor that must stay (has a message or another child),
        // then cut the chain of now-empty nodes below it.
        let mut keep_depth = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            if node.msg.is_some() || node.children.len() > 1 {
                keep_depth = depth;
            }
            match node.children.get(*level) {
                Some(n) => node = n,
                None => return,
            }
        }
        if node.msg.is_some() || !node.children.is_empty() {
            return;
        }
        let mut node = &mut self.root;
        for level in &levels[..keep_depth] {
            match node.children.get_mut(*level) {
                Some(n) => node = n,
                None => return,
            }
        }
        node.children.remove(levels[keep_depth]);
    }

    /// Unexpired retained messages whose topic matches `filter` and that `keep` accepts,
    /// appended to `out` until it holds `max`; returns how many matching ones `keep` refused.
    ///
    /// Cost: the trie nodes the filter can reach, not the whole store, and the walk stops at
    /// `max` (a SUBSCRIBE whose connection has room for few more retained messages walks no
    /// further). A topic starting with `$` is not matched by a first-level wildcard
    /// ([MQTT-4.7.2-1]).
    pub(crate) fn matching(
        &self,
        filter: &str,
        now: Instant,
        max: usize,
        keep: impl Fn(&Message) -> bool,
        out: &mut Vec<Rc<Message>>,
    ) -> usize {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut stack: Vec<(&Node, usize)> = vec![(&self.root, 0)];
        let mut refused = 0;
        // Whether the walk is done (`out` full).
        let mut push = |out: &mut Vec<Rc<Message>>, m: &Option<Rc<Message>>| {
            if let Some(m) = m.as_ref().filter(|m| !m.is_expired(now)) {
                if keep(m) {
                    out.push(Rc::clone(m));
                } else {
                    refused += 1;
                }
            }
            out.len() >= max
        };
        if max == 0 {
            return 0;
        }
        // Bounded: each trie node is pushed at most once per filter level.
        while let Some((node, depth)) = stack.pop() {
            let Some(&level) = levels.get(depth) else {
                if push(out, &node.msg) {
                    break;
                }
                continue;
            };
            let wild_ok = |name: &str| depth > 0 || !name.starts_with('$');
            match level {
                "#" => {
                    // [MQTT-4.7.1-2]: `a/#` matches `a` too.
                    if depth > 0 && push(out, &node.msg) {
                        break;
                    }
                    let mut below: Vec<&Node> = node
                        .children
                        .iter()
                        .filter(|(name, _)| wild_ok(name))
                        .map(|(_, n)| n)
                        .collect();
                    let mut full = false;
                    while let Some(n) = below.pop() {
                        if push(out, &n.msg) {
                            full = true;
                            break;
                        }
                        below.extend(n.children.values());
                    }
                    if full {
                        break;
                    }
                }
                "+" => {
                    for (name, child) in &node.children {
                        if wild_ok(name) {
                            stack.push((child, depth + 1));
                        }
                    }
                }
                literal => {
                    if let Some(child) = node.children.get(literal) {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
        refused
    }

    /// Every retained message (compaction), `$` topics included.
    pub(crate) fn all(&self) -> Vec<(Rc<Message>, Option<RetainSource>)> {
        let mut out = Vec::new();
        let mut stack = vec![&self.root];
        // Bounded by the trie's nodes.
        while let Some(n) = stack.pop() {
            if let Some(m) = &n.msg {
                out.push((Rc::clone(m), n.source.clone()));
            }
            stack.extend(n.children.values());
        }
        out
    }

    /// The unexpired retained message of `topic`, if any.
    pub(crate) fn get(&self, topic: &str, now: Instant) -> Option<&Rc<Message>> {
        self.find(topic).filter(|m| !m.is_expired(now))
    }

    /// Retained messages held.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Bytes the retained messages count for.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The shard that orders every retained update. Each shard keeps a full replica, and the
/// bounds are applied by this one shard only: it decides whether an update is stored, then
/// sends it to every other replica in that order over the FIFO mesh channels, so every replica
/// applies the same updates in the same order and holds the same set, whichever shard the
/// publishers were on. The cost is one extra mesh hop for a retained publish made on another
/// shard before its replica shows it.
pub const RETAIN_SEQUENCER: crate::ids::ShardId = crate::ids::ShardId(0);

impl Shard {
    /// A retained update (set, replace or clear) from a client, a will or `$SYS` on this
    /// shard: applied through the sequencer so that replicas stay identical.
    ///
    /// `source` is the publishing client, whose right to publish the topic is checked again
    /// each time the message is delivered from the store (see [`RetainSource`]).
    pub(super) fn retain_local_and_broadcast(
        &mut self,
        msg: &Message,
        source: Option<RetainSource>,
    ) {
        let mut stored = msg.clone();
        stored.origin = None;
        stored.received_at = None;
        stored.id = crate::ids::MessageId::UNROUTED;
        if self.id == RETAIN_SEQUENCER {
            self.retained_sequence(stored, source);
        } else {
            let to = usize::from(RETAIN_SEQUENCER);
            self.outbox[to].push_back(ShardMsg::RetainRequest { msg: stored, source });
        }
    }

    /// On the sequencer: applies the bounds, and when the update is kept sends it to every
    /// other replica. A refused update goes nowhere, so no replica holds it.
    pub(super) fn retained_sequence(&mut self, msg: Message, source: Option<RetainSource>) {
        let max = (self.cfg.retained_messages_max, self.cfg.retained_bytes_max);
        // Not charged to the memory budget: the store has bounds of its own and never drains,
        // so a budget it could fill would pause publishers for good (see `budget`).
        let outcome = self.retained.apply(msg.clone(), source.clone(), max.0, max.1);
        self.metrics.retained_messages = self.retained.len() as u64;
        self.metrics.retained_bytes = self.retained.bytes() as u64;
        if outcome == RetainOutcome::Refused {
            self.metrics.retained_refused += 1;
            return;
        }
        // The sequencer's log holds the retained set (every replica is restored from it).
        self.journal_retained(&msg, source.as_deref());
        self.broadcast(|| ShardMsg::Retain { msg: msg.clone(), source: source.clone() });
    }

    /// On a replica: an update the sequencer kept. The sequencer checked the bounds against the
    /// same content this replica holds, so it is applied as it is.
    pub(super) fn retained_apply(&mut self, msg: Message, source: Option<RetainSource>) {
        self.retained.apply(msg, source, usize::MAX, usize::MAX);
        self.metrics.retained_messages = self.retained.len() as u64;
        self.metrics.retained_bytes = self.retained.bytes() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::topic::matches;

    fn msg(topic: &str, payload: &'static [u8]) -> Message {
        Message::new(
            crate::codec::TopicName::new(topic).expect("valid topic"),
            bytes::Bytes::from_static(payload),
            QoS::AtMostOnce,
            true,
        )
    }

    impl RetainedStore {
        fn apply_test(&mut self, m: Message, count_max: usize, bytes_max: usize) -> RetainOutcome {
            self.apply(m, None, count_max, bytes_max)
        }
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        store.matching(filter, crate::test_clock::test_epoch(), usize::MAX, |_| true, &mut out);
        let mut t: Vec<String> = out.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    }

    /// The trie answers every filter as the reference matcher (§4.7) does over a full scan,
    /// `$` topics and empty levels included, and visits no more than it returns for literal
    /// filters.
    #[test]
    fn trie_agrees_with_a_full_scan() {
        let names =
            ["a", "a/b", "a/b/c", "a//c", "/a", "/", "b/b", "$SYS/x", "$SYS", "a/$x", "c/d/e/f"];
        let mut store = RetainedStore::default();
        for n in names {
            assert_eq!(store.apply_test(msg(n, b"v"), 100, 1 << 20), RetainOutcome::Stored);
        }
        let filters = [
            "#", "+", "a/#", "a/+", "+/b", "+/+", "/+", "+/#", "a/+/c", "$SYS/#", "$SYS", "+/$x",
            "a//c", "c/+/+/f", "c/#", "x/#", "a/b/c/#", "+/+/+", "/#",
        ];
        for f in filters {
            let mut want: Vec<String> =
                names.iter().filter(|n| matches(f, n)).map(|n| n.to_string()).collect();
            want.sort();
            assert_eq!(topics(&store, f), want, "filter {f}");
        }
    }

    /// The walk stops once `max` messages are kept: every filter shape gives exactly
    /// `min(max, matches)` of the full answer, and refused ones are counted, not kept.
    #[test]
    fn the_walk_stops_at_max_and_counts_what_keep_refuses() {
        let mut store = RetainedStore::default();
        for i in 0..50 {
            let topic = format!("r/{i}/x");
            let m = Message::new(
                crate::codec::TopicName::new(topic).expect("valid topic"),
                bytes::Bytes::from_static(b"v"),
                QoS::AtMostOnce,
                true,
            );
            store.apply_test(m, 100, 1 << 20);
        }
        let now = crate::test_clock::test_epoch();
        for filter in ["#", "r/#", "r/+/x", "+/+/+"] {
            let all = topics(&store, filter);
            assert_eq!(all.len(), 50, "{filter}");
            for max in [0, 1, 7, 50, 51] {
                let mut out = Vec::new();
                let refused = store.matching(filter, now, max, |_| true, &mut out);
                assert_eq!((out.len(), refused), (max.min(50), 0), "{filter} max {max}");
                assert!(out.iter().all(|m| all.contains(&m.topic.to_string())));
            }
            // Odd-numbered topics refused: they are counted until the walk stops.
            let odd = |m: &Message| {
                m.topic.split('/').nth(1).is_some_and(|n| n.ends_with(['1', '3', '5', '7', '9']))
            };
            let mut out = Vec::new();
            let refused = store.matching(filter, now, usize::MAX, |m| !odd(m), &mut out);
            assert_eq!((out.len(), refused), (25, 25), "{filter}");
            assert!(out.iter().all(|m| !odd(m)));
        }
    }

    #[test]
    fn clearing_prunes_and_keeps_the_counts() {
        let mut store = RetainedStore::default();
        store.apply_test(msg("a/b/c", b"1"), 10, 1 << 20);
        store.apply_test(msg("a", b"2"), 10, 1 << 20);
        store.apply_test(msg("a/b/c", b"33"), 10, 1 << 20); // replace
        assert_eq!(store.len(), 2);
        assert_eq!(store.apply_test(msg("a/b/c", b""), 10, 1 << 20), RetainOutcome::Cleared);
        assert_eq!(store.len(), 1);
        assert!(store.root.children["a"].children.is_empty(), "empty levels pruned");
        store.apply_test(msg("a", b""), 10, 1 << 20);
        assert!(store.root.children.is_empty());
        assert_eq!((store.len(), store.bytes()), (0, 0));
        // Bounds: a new topic beyond the count is refused, a replacement is not.
        store.apply_test(msg("x", b"1"), 1, 1 << 20);
        assert_eq!(store.apply_test(msg("y", b"1"), 1, 1 << 20), RetainOutcome::Refused);
        assert_eq!(store.apply_test(msg("x", b"2"), 1, 1 << 20), RetainOutcome::Stored);
    }
}
