//! The subscription trie: topic filters, one level per edge, with subscribers on the nodes.
//!
//! Each shard owns one replica and changes it only on its own thread (subscription deltas travel
//! between shards as messages), so there is no locking here. Matching a topic name is the data
//! plane and is built for it: no recursion, no allocation for topics of up to
//! [`MATCH_STACK_INLINE`] levels, and subscribers of a node stored densely so fan-out walks a
//! slice. Insertion and removal are the control plane: a few hash lookups per level.
//!
//! Shape of a node: literal levels are keyed by their string in a `HashMap`; the `+` and `#`
//! wildcards have their own slots, so matching a level costs one map lookup plus two pointer
//! checks, whatever the number of wildcard filters. A `#` node never has children (`#` is always
//! the last level of a valid filter).
//!
//! Nothing here recurses, including `Drop`: a filter of 65 535 bytes can have 65 536 levels (all
//! of them empty), and the default drop glue of a chain that deep would overflow a thread stack.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::mem;

use crate::codec::topic::validate_topic_filter;

/// Topic depth up to which matching uses only the thread's stack. The walk keeps at most one
/// pending `+` branch per level, so a topic of up to this many levels never spills to the heap;
/// a deeper one with `+` filters at every level allocates. Matches the default
/// `topic_levels_max`, which caps topic depth before a topic gets here.
pub const MATCH_STACK_INLINE: usize = 32;

/// Largest subscriber set kept as a plain `Vec` with linear lookup. Beyond it the set gains a
/// hash index (see [`Subscribers`]). Scanning 32 small keys costs about one SipHash lookup.
const SUBSCRIBERS_VEC_MAX: usize = 32;

/// An indexed subscriber set that shrinks below this goes back to a plain `Vec`. Lower than
/// [`SUBSCRIBERS_VEC_MAX`] so that a set hovering around the boundary does not rebuild its index
/// on every subscribe/unsubscribe.
const SUBSCRIBERS_INDEXED_MIN: usize = 8;

const _: () = assert!(SUBSCRIBERS_INDEXED_MIN < SUBSCRIBERS_VEC_MAX);
const _: () = assert!(MATCH_STACK_INLINE >= 1);

/// An index from topic filters to subscriptions, answering "who is subscribed to this topic
/// name" (§4.7).
///
/// `K` identifies a subscriber (a session or client handle), `V` is the per-subscription data
/// (options, subscription identifier). One key has at most one subscription per filter; the same
/// key on several overlapping filters is several subscriptions, and matching reports each of
/// them: merging overlaps (§3.3.4: deliver once with the highest QoS, or once per subscription)
/// is the broker's choice, not the trie's.
///
/// Filters must be valid ([`validate_topic_filter`], checked with `debug_assert!`) and must not
/// carry a `$share/{group}/` prefix: strip it with [`super::parse_shared`]. An invalid filter is
/// stored anyway but may never match anything.
pub struct SubscriptionTrie<K, V> {
    /// The node for the empty prefix. It never holds subscribers, since every filter has at
    /// least one level, and it is never pruned.
    root: Node<K, V>,
    /// Number of subscriptions, i.e. of (filter, key) pairs.
    len: usize,
}

/// One level of one or more filters.
struct Node<K, V> {
    /// Children for literal levels, empty level (`""`) included.
    /// Keyed with aHash under a random per-process seed (hash flooding by crafted topic levels
    /// needs the seed).
    children: HashMap<Box<str>, Node<K, V>, ahash::RandomState>,
    /// The child for a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// The child for a `#` level. It only ever holds subscribers.
    hash: Option<Box<Node<K, V>>>,
    /// Subscriptions whose filter ends at this node.
    subscribers: Subscribers<K, V>,
}

/// The edge a filter level takes out of a node.
#[derive(Clone, Copy)]
enum Edge<'f> {
    Plus,
    Hash,
    Level(&'f str),
}

impl<'f> Edge<'f> {
    fn of(level: &'f str) -> Self {
        match level {
            "+" => Edge::Plus,
            "#" => Edge::Hash,
            literal => Edge::Level(literal),
        }
    }
}

impl<K: Copy + Eq + Hash, V> SubscriptionTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        SubscriptionTrie { root: Node::new(), len: 0 }
    }

    /// Inserts the subscription of `key` to `filter`, or replaces its value if it exists, and
    /// returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        debug_assert!(validate_topic_filter(filter, true).is_ok(), "invalid filter {filter:?}");
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(Edge::of(level));
        }
        let previous = node.subscribers.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the subscription of `key` to `filter` and returns its value. Nodes left with
    /// neither subscribers nor children are freed, so the trie's size follows its contents.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        // The deepest node on the path that survives if the target node empties: the root, or
        // one with subscribers or with another child. Everything below it on the path holds only
        // this path, so cutting the edge under it frees exactly what the removal emptied.
        let mut keep_depth = 0;
        let mut node = &mut self.root;
        for (depth, level) in filter.split('/').enumerate() {
            if depth > 0 && (!node.subscribers.is_empty() || node.child_count() > 1) {
                keep_depth = depth;
            }
            node = node.child_mut(Edge::of(level))?;
        }
        let value = node.subscribers.remove(key)?;
        self.len -= 1;
        if node.is_empty() {
            self.prune(filter, keep_depth);
        }
        Some(value)
    }

    /// Cuts the edge taken by level `keep_depth` of `filter` (0-based) out of the node at depth
    /// `keep_depth` (the root is depth 0), dropping the subtree below it.
    fn prune(&mut self, filter: &str, keep_depth: usize) {
        let mut levels = filter.split('/');
        let mut node = &mut self.root;
        for level in levels.by_ref().take(keep_depth) {
            let Some(child) = node.child_mut(Edge::of(level)) else {
                debug_assert!(false, "prune path of {filter:?} vanished");
                return;
            };
            node = child;
        }
        let cut = levels.next().and_then(|level| node.remove_child(Edge::of(level)));
        debug_assert!(cut.as_ref().is_some_and(Node::is_chain_of_empty_nodes));
        if let Some(subtree) = cut {
            dismantle(subtree);
        }
    }

    /// The value of `key`'s subscription to `filter`, if it exists.
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.child(Edge::of(level))?;
        }
        node.subscribers.get(key)
    }

    /// Calls `visit` once per subscription whose filter matches the topic name `topic`, in no
    /// particular order.
    ///
    /// Follows §4.7: `+` matches exactly one level, an empty one included; `#` matches any
    /// number of levels, zero included (`sport/#` matches `sport`); and a topic name starting
    /// with `$` is not matched by a filter whose first level is a wildcard ([MQTT-4.7.2-1]), so
    /// `#` does not see `$SYS/uptime` while `$SYS/#` does.
    ///
    /// Does not recurse and does not allocate unless `topic` is deeper than
    /// [`MATCH_STACK_INLINE`] levels. `topic` should be a valid topic name; a `+` or `#` in it
    /// is compared literally and matches only wildcards.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&K, &V)) {
        // A frame is a node whose path matched the topic up to byte `pos`: the next level starts
        // there, and `done` means every level has been matched. The literal child is followed
        // in place; only `+` branches wait on the stack, so it holds at most one frame per level.
        let done = topic.len() + 1;
        let dollar = topic.starts_with('$');
        let mut plus_branches = MatchStack::new();
        let mut literal = Some((&self.root, 0));
        while let Some((node, pos)) = literal.take().or_else(|| plus_branches.pop()) {
            if pos == done {
                node.subscribers.visit(&mut visit);
                // `#` also matches its parent level: `sport/#` matches `sport`.
                if let Some(hash) = &node.hash {
                    hash.subscribers.visit(&mut visit);
                }
                continue;
            }
            // Only the root is at byte 0, so this is "a wildcard as first level" [MQTT-4.7.2-1].
            let wildcards = !(dollar && pos == 0);
            if wildcards {
                if let Some(hash) = &node.hash {
                    hash.subscribers.visit(&mut visit);
                }
            }
            // A byte loop: levels are short, and `str::find` pays memchr's set-up on each.
            let (level, next) = match topic.as_bytes()[pos..].iter().position(|&b| b == b'/') {
                Some(len) => (&topic[pos..pos + len], pos + len + 1),
                None => (&topic[pos..], done),
            };
            if wildcards {
                if let Some(plus) = &node.plus {
                    plus_branches.push((plus, next));
                }
            }
            literal = node.children.get(level).map(|child| (child, next));
        }
    }

    /// Calls `visit(filter, key, value)` once per subscription, in no particular order: to copy
    /// a replica to a new shard, or to count subscriptions per filter.
    ///
    /// Control plane only: it allocates the rebuilt filter string and a stack that grows with
    /// the number of pending siblings.
    pub fn for_each(&self, mut visit: impl FnMut(&str, &K, &V)) {
        let mut filter = String::new();
        // (node, length of its parent's filter, its level, whether it is a first level)
        let mut stack: Vec<(&Node<K, V>, usize, &str, bool)> = Vec::new();
        self.root.for_each_child(|level, child| stack.push((child, 0, level, true)));
        while let Some((node, parent_len, level, first)) = stack.pop() {
            filter.truncate(parent_len);
            if !first {
                filter.push('/');
            }
            filter.push_str(level);
            node.subscribers.visit(|key, value| visit(&filter, key, value));
            let len = filter.len();
            node.for_each_child(|level, child| stack.push((child, len, level, false)));
        }
    }

    /// The number of subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of nodes, the root included (so 1 when empty). Walks the whole trie; meant for
    /// tests and memory diagnostics.
    #[doc(hidden)]
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            node.for_each_child(|_, child| stack.push(child));
        }
        count
    }
}

impl<K: Copy + Eq + Hash, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie").field("len", &self.len).finish_non_exhaustive()
    }
}

impl<K, V> Drop for SubscriptionTrie<K, V> {
    fn drop(&mut self) {
        dismantle(mem::replace(&mut self.root, Node::new()));
    }
}

/// Drops a subtree without recursing: children are moved to an explicit stack before their
/// parent is dropped, so each drop only frees an empty map.
fn dismantle<K, V>(subtree: Node<K, V>) {
    let mut stack = vec![subtree];
    while let Some(mut node) = stack.pop() {
        stack.extend(node.children.drain().map(|(_, child)| child));
        stack.extend(node.plus.take().map(|child| *child));
        stack.extend(node.hash.take().map(|child| *child));
    }
}

impl<K, V> Node<K, V> {
    fn new() -> Self {
        Node {
            children: HashMap::default(),
            plus: None,
            hash: None,
            subscribers: Subscribers::new(),
        }
    }

    fn child(&self, edge: Edge<'_>) -> Option<&Node<K, V>> {
        match edge {
            Edge::Plus => self.plus.as_deref(),
            Edge::Hash => self.hash.as_deref(),
            Edge::Level(level) => self.children.get(level),
        }
    }

    fn child_mut(&mut self, edge: Edge<'_>) -> Option<&mut Node<K, V>> {
        match edge {
            Edge::Plus => self.plus.as_deref_mut(),
            Edge::Hash => self.hash.as_deref_mut(),
            Edge::Level(level) => self.children.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, edge: Edge<'_>) -> &mut Node<K, V> {
        match edge {
            Edge::Plus => self.plus.get_or_insert_with(|| Box::new(Node::new())),
            Edge::Hash => self.hash.get_or_insert_with(|| Box::new(Node::new())),
            Edge::Level(level) => {
                // Look up before inserting so an existing level does not allocate its key.
                if !self.children.contains_key(level) {
                    self.children.insert(level.into(), Node::new());
                }
                // Invariant: the key is present, it was found or inserted just above.
                self.children.get_mut(level).expect("invariant: child inserted above")
            }
        }
    }

    fn remove_child(&mut self, edge: Edge<'_>) -> Option<Node<K, V>> {
        match edge {
            Edge::Plus => self.plus.take().map(|child| *child),
            Edge::Hash => self.hash.take().map(|child| *child),
            Edge::Level(level) => self.children.remove(level),
        }
    }

    fn for_each_child<'a>(&'a self, mut f: impl FnMut(&'a str, &'a Node<K, V>)) {
        for (level, child) in &self.children {
            f(level, child);
        }
        if let Some(plus) = &self.plus {
            f("+", plus);
        }
        if let Some(hash) = &self.hash {
            f("#", hash);
        }
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.child_count() == 0
    }

    /// True for a path of nodes without subscribers, each with one child, ending in an empty
    /// node: what [`SubscriptionTrie::prune`] may cut. For `debug_assert!` only.
    fn is_chain_of_empty_nodes(&self) -> bool {
        let mut node = self;
        loop {
            if !node.subscribers.is_empty() || node.child_count() > 1 {
                return false;
            }
            let mut next = None;
            node.for_each_child(|_, child| next = Some(child));
            match next {
                Some(child) => node = child,
                None => return true,
            }
        }
    }
}

/// The subscribers of one node.
///
/// Most nodes have one or a few subscribers, and a `Vec` with linear lookup is the smallest and
/// fastest there. But one filter can have very many subscribers (a million devices on
/// `fleet/broadcast`), and with a plain `Vec` each unsubscribe would scan the whole set: O(n) per
/// removal, O(n²) to empty it. So past [`SUBSCRIBERS_VEC_MAX`] the set keeps a key → position
/// index beside the `Vec` and removes with `swap_remove` in O(1). Either way the pairs stay
/// contiguous, so fan-out in [`SubscriptionTrie::for_each_match`] walks a slice.
enum Subscribers<K, V> {
    Few(Vec<(K, V)>),
    /// Boxed so that the common case keeps nodes small.
    Many(Box<Indexed<K, V>>),
}

/// A subscriber set with a position index; `index[entries[i].0] == i` for every `i`.
struct Indexed<K, V> {
    entries: Vec<(K, V)>,
    index: HashMap<K, usize>,
}

impl<K: Copy + Eq + Hash, V> Subscribers<K, V> {
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Subscribers::Few(entries) => {
                if let Some((_, slot)) = entries.iter_mut().find(|(k, _)| *k == key) {
                    return Some(mem::replace(slot, value));
                }
                entries.push((key, value));
                if entries.len() > SUBSCRIBERS_VEC_MAX {
                    let entries = mem::take(entries);
                    let index = entries.iter().enumerate().map(|(i, (k, _))| (*k, i)).collect();
                    *self = Subscribers::Many(Box::new(Indexed { entries, index }));
                }
                None
            }
            Subscribers::Many(set) => {
                if let Some(&i) = set.index.get(&key) {
                    return Some(mem::replace(&mut set.entries[i].1, value));
                }
                set.index.insert(key, set.entries.len());
                set.entries.push((key, value));
                None
            }
        }
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Subscribers::Few(entries) => {
                let i = entries.iter().position(|(k, _)| k == key)?;
                Some(entries.swap_remove(i).1)
            }
            Subscribers::Many(set) => {
                let i = set.index.remove(key)?;
                let (_, value) = set.entries.swap_remove(i);
                if let Some((moved, _)) = set.entries.get(i) {
                    set.index.insert(*moved, i);
                }
                debug_assert_eq!(set.index.len(), set.entries.len());
                if set.entries.len() < SUBSCRIBERS_INDEXED_MIN {
                    *self = Subscribers::Few(mem::take(&mut set.entries));
                }
                Some(value)
            }
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        match self {
            Subscribers::Few(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Subscribers::Many(set) => set.index.get(key).map(|&i| &set.entries[i].1),
        }
    }
}

impl<K, V> Subscribers<K, V> {
    fn new() -> Self {
        Subscribers::Few(Vec::new())
    }

    fn as_slice(&self) -> &[(K, V)] {
        match self {
            Subscribers::Few(entries) => entries,
            Subscribers::Many(set) => &set.entries,
        }
    }

    fn visit(&self, mut visit: impl FnMut(&K, &V)) {
        for (key, value) in self.as_slice() {
            visit(key, value);
        }
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

/// The pending `+` branches of [`SubscriptionTrie::for_each_match`]: [`MATCH_STACK_INLINE`]
/// frames in an array, then a `Vec` that only allocates for a topic deeper than that.
///
/// Frames on it have strictly increasing depths from bottom to top (a popped branch only pushes
/// deeper ones), so a topic of `n` levels needs at most `n` frames.
struct MatchStack<'t, K, V> {
    /// Frames `0..inline_len`; `None` beyond.
    inline: [Option<(&'t Node<K, V>, usize)>; MATCH_STACK_INLINE],
    inline_len: usize,
    /// Frames pushed while `inline` was full; popped before any inline frame.
    spill: Vec<(&'t Node<K, V>, usize)>,
}

impl<'t, K, V> MatchStack<'t, K, V> {
    fn new() -> Self {
        MatchStack { inline: [None; MATCH_STACK_INLINE], inline_len: 0, spill: Vec::new() }
    }

    fn push(&mut self, frame: (&'t Node<K, V>, usize)) {
        if self.inline_len < MATCH_STACK_INLINE {
            self.inline[self.inline_len] = Some(frame);
            self.inline_len += 1;
        } else {
            self.spill.push(frame);
        }
    }

    fn pop(&mut self) -> Option<(&'t Node<K, V>, usize)> {
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        self.inline_len = self.inline_len.checked_sub(1)?;
        self.inline[self.inline_len].take()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// The obviously correct matcher the trie is checked against: §4.7 read level by level.
    fn matches(filter: &str, topic: &str) -> bool {
        let filter: Vec<&str> = filter.split('/').collect();
        let topic_levels: Vec<&str> = topic.split('/').collect();
        // [MQTT-4.7.2-1]
        if topic.starts_with('$') && (filter[0] == "+" || filter[0] == "#") {
            return false;
        }
        for i in 0.. {
            match (filter.get(i), topic_levels.get(i)) {
                (Some(&"#"), _) => return true,
                (None, None) => return true,
                (Some(&"+"), Some(_)) => {}
                (Some(f), Some(t)) if f == t => {}
                _ => return false,
            }
        }
        unreachable!()
    }

    /// Filters of the trie's subscriptions matching `topic`, found through the values.
    fn matched(trie: &SubscriptionTrie<u32, &'static str>, topic: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        trie.for_each_match(topic, |_, filter| assert!(found.insert(filter.to_string())));
        found
    }

    /// Checks the structure: every node but the root has subscribers or children, `#` nodes
    /// have no children, `len` is the number of subscribers, and indexes are consistent.
    fn check_invariants<K: Copy + Eq + Hash, V>(trie: &SubscriptionTrie<K, V>) {
        let mut count = 0;
        let mut stack = vec![(&trie.root, true)];
        while let Some((node, is_root)) = stack.pop() {
            assert!(is_root || !node.is_empty(), "empty node left behind");
            if let Some(hash) = &node.hash {
                assert_eq!(hash.child_count(), 0, "# node with children");
            }
            if let Subscribers::Many(set) = &node.subscribers {
                assert_eq!(set.index.len(), set.entries.len());
                for (i, (k, _)) in set.entries.iter().enumerate() {
                    assert_eq!(set.index[k], i);
                }
            }
            count += node.subscribers.as_slice().len();
            node.for_each_child(|_, child| stack.push((child, false)));
        }
        assert!(trie.root.subscribers.is_empty());
        assert_eq!(count, trie.len());
    }

    /// (filter, topic, matches): the non-normative examples of §4.7 (3.1.1 and 5.0 alike), then
    /// empty levels, which are levels.
    const CASES: &[(&str, &str, bool)] = &[
        // §4.7.1.2 multi-level wildcard.
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
        ("sport/tennis/player1/#", "sport/tennis/player2", false),
        ("sport/tennis/player1/#", "sport/tennis", false),
        ("sport/#", "sport", true),
        ("sport/#", "sport/tennis/player1", true),
        ("#", "sport/tennis/player1", true),
        ("#", "sport", true),
        // §4.7.1.3 single-level wildcard.
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player2", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/tennis/+", "sport/tennis", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+", "sport", true),
        ("+/tennis/#", "sport/tennis", true),
        ("+/tennis/#", "sport/tennis/player1/ranking", true),
        ("+/tennis/#", "sport/football", false),
        ("sport/+/player1", "sport/tennis/player1", true),
        ("sport/+/player1", "sport/tennis/player2", false),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        // §4.7.2 topics beginning with $ [MQTT-4.7.2-1].
        ("#", "$SYS/monitor/Clients", false),
        ("#", "$SYS", false),
        ("+", "$SYS", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("+/#", "$SYS/monitor", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ("$SYS/+/Clients", "$SYS/monitor/Clients", true),
        // '$' only counts as the first character of the topic name.
        ("+/#", "a/$SYS", true),
        ("a/+", "a/$x", true),
        ("#", "a$", true),
        // §4.7.3 topic semantics: case-sensitive, spaces are ordinary characters.
        ("ACCOUNTS", "Accounts", false),
        ("Accounts payable", "Accounts payable", true),
        // Empty levels are levels.
        ("/", "/", true),
        ("+/+", "/", true),
        ("+", "/", false),
        ("#", "/", true),
        ("/#", "/", true),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("a//b", "a/b", false),
        ("a/b", "a//b", false),
        ("/a", "a", false),
        ("a/", "a", false),
        ("a/#", "a/", true),
        ("a/+", "a/", true),
        ("+/+/+", "//", true),
    ];

    #[test]
    fn matching_follows_section_4_7() {
        for &(filter, topic, expected) in CASES {
            assert_eq!(matches(filter, topic), expected, "oracle: {filter:?} vs {topic:?}");
            let mut trie = SubscriptionTrie::new();
            trie.insert(filter, 1_u32, filter);
            assert_eq!(!matched(&trie, topic).is_empty(), expected, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn every_matching_filter_is_reported_once() {
        let mut trie = SubscriptionTrie::new();
        let filters: BTreeSet<&str> = CASES.iter().map(|&(f, _, _)| f).collect();
        for filter in &filters {
            trie.insert(filter, 7_u32, *filter);
        }
        assert_eq!(trie.len(), filters.len());
        check_invariants(&trie);
        for &(_, topic, _) in CASES {
            let expected: BTreeSet<String> =
                filters.iter().filter(|f| matches(f, topic)).map(|f| f.to_string()).collect();
            assert_eq!(matched(&trie, topic), expected, "{topic:?}");
        }
    }

    #[test]
    fn insert_replaces_the_value_of_the_same_key_and_filter() {
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert("a/+", 1_u32, "qos0"), None);
        assert_eq!(trie.insert("a/+", 2, "qos1"), None);
        assert_eq!(trie.insert("a/+", 1, "qos2"), Some("qos0"));
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.get("a/+", &1), Some(&"qos2"));
        assert_eq!(trie.get("a/+", &2), Some(&"qos1"));
        assert_eq!(trie.get("a/+", &3), None);
        assert_eq!(trie.get("a", &1), None);
        assert_eq!(trie.get("a/+/b", &1), None);
        let mut seen = Vec::new();
        trie.for_each_match("a/x", |k, v| seen.push((*k, *v)));
        seen.sort_unstable();
        assert_eq!(seen, [(1, "qos2"), (2, "qos1")]);
    }

    #[test]
    fn remove_prunes_back_to_the_root() {
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.node_count(), 1);
        let filters = ["a/b/c", "a/b", "a/+/c/#", "a//", "#", "+", "$SYS/#", "a/b/c/d/e/f"];
        for (key, filter) in (0_u32..).zip(filters) {
            trie.insert(filter, key, filter);
        }
        let full = trie.node_count();
        assert_eq!(full, 1 + 15);
        // Removing what is not there changes nothing.
        assert_eq!(trie.remove("a/b", &99), None);
        assert_eq!(trie.remove("a/b/x", &1), None);
        assert_eq!(trie.remove("a/b/c/d", &0), None);
        assert_eq!(trie.node_count(), full);
        // An inner node with subscribers stays while a deeper filter needs it, and vice versa.
        assert_eq!(trie.remove("a/b", &1), Some("a/b"));
        assert_eq!(trie.node_count(), full);
        assert_eq!(trie.remove("a/b/c/d/e/f", &7), Some("a/b/c/d/e/f"));
        assert_eq!(trie.node_count(), full - 3);
        check_invariants(&trie);
        for (key, filter) in (0_u32..).zip(filters) {
            trie.remove(filter, &key);
            check_invariants(&trie);
        }
        assert_eq!(trie.len(), 0);
        assert!(trie.is_empty());
        assert_eq!(trie.node_count(), 1);
        assert!(matched(&trie, "a/b/c").is_empty());
    }

    #[test]
    fn many_subscribers_on_one_filter_switch_to_an_index_and_back() {
        let mut trie = SubscriptionTrie::new();
        let n = 10 * SUBSCRIBERS_VEC_MAX as u32;
        for key in 0..n {
            assert_eq!(trie.insert("fleet/broadcast", key, key * 10), None);
        }
        assert!(matches!(
            trie.root.children["fleet"].children["broadcast"].subscribers,
            Subscribers::Many(_)
        ));
        assert_eq!(trie.insert("fleet/broadcast", 3, 31), Some(30));
        assert_eq!(trie.get("fleet/broadcast", &3), Some(&31));
        check_invariants(&trie);
        let mut count = 0;
        trie.for_each_match("fleet/broadcast", |_, _| count += 1);
        assert_eq!(count, n);
        // Remove from the front so every removal moves the last entry.
        for key in 0..n {
            let expected = if key == 3 { 31 } else { key * 10 };
            assert_eq!(trie.remove("fleet/broadcast", &key), Some(expected));
            assert_eq!(trie.remove("fleet/broadcast", &key), None);
            if key % 16 == 0 {
                check_invariants(&trie);
            }
        }
        assert_eq!(trie.node_count(), 1);
    }

    #[test]
    fn for_each_rebuilds_every_filter() {
        let mut trie = SubscriptionTrie::new();
        let filters = ["a/b", "a", "/", "//a", "a/+/#", "#", "+", "$SYS/#", "a//"];
        for (key, filter) in (0_u32..).zip(filters) {
            trie.insert(filter, key, ());
            trie.insert(filter, key + 100, ());
        }
        let mut seen = BTreeSet::new();
        trie.for_each(|filter, key, ()| assert!(seen.insert((filter.to_string(), *key))));
        let expected: BTreeSet<(String, u32)> = (0_u32..)
            .zip(filters)
            .flat_map(|(key, f)| [(f.to_string(), key), (f.to_string(), key + 100)])
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn deep_topics_spill_and_deep_tries_drop_without_recursion() {
        // Deeper than the codec allows (65 535 bytes): a recursive walk or drop would overflow.
        let depth = 100_000;
        let filter = vec!["x"; depth].join("/");
        let mut trie = SubscriptionTrie::new();
        trie.insert(&filter, 1_u32, ());
        trie.insert("+/#", 2, ());
        let mut keys = Vec::new();
        trie.for_each_match(&filter, |k, ()| keys.push(*k));
        keys.sort_unstable();
        assert_eq!(keys, [1, 2]);
        // A topic deeper than the inline stack with a `+` branch pending at every level: `+`
        // after every prefix `y/…/y/` of the topic, so the stack spills to the heap.
        let n = MATCH_STACK_INLINE * 2;
        let mut prefix = String::new();
        for key in 100..100 + n as u32 {
            trie.insert(&format!("{prefix}+"), key, ());
            prefix.push_str("y/");
        }
        let topic = vec!["y"; n].join("/");
        trie.insert(&topic, 3, ());
        keys.clear();
        trie.for_each_match(&topic, |k, ()| keys.push(*k));
        keys.sort_unstable();
        assert_eq!(keys, [2, 3, 100 + n as u32 - 1]);
        // Root, the `x` chain, `+/#`, the `y` chain and the `+` after each `y` (the first `+`
        // is shared with `+/#`).
        assert_eq!(trie.node_count(), 1 + depth + 2 + n + (n - 1));
        trie.remove(&filter, &1);
        assert_eq!(trie.node_count(), 1 + 2 + n + (n - 1));
        trie.insert(&filter, 1_u32, ());
        drop(trie);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(String, u8),
        Remove(String, u8),
    }

    /// Levels from a small alphabet so that filters collide and topics match often; `$` and
    /// empty levels included.
    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&["a", "b", "", "$s", "$SYS"][..])
    }

    /// Topic names; the empty one is invalid ([MQTT-4.7.3-1]) and never reaches the trie.
    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("empty topic name", |topic| !topic.is_empty())
    }

    /// Valid topic filters: levels of [`level`] or `+`, maybe a final `#`, never empty.
    fn filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![3 => level(), 1 => Just("+")];
        (prop::collection::vec(level, 1..=4), any::<bool>())
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#");
                }
                levels.join("/")
            })
            .prop_filter("empty topic filter", |filter| !filter.is_empty())
    }

    /// Subscribe/unsubscribe with keys below `keys`: few keys make filters collide, many keys
    /// push nodes past [`SUBSCRIBERS_VEC_MAX`] into the indexed set and back.
    fn op(filters: BoxedStrategy<String>, keys: u8) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (filters.clone(), 0..keys).prop_map(|(f, k)| Op::Insert(f, k)),
            2 => (filters, 0..keys).prop_map(|(f, k)| Op::Remove(f, k)),
        ]
    }

    /// Applies `ops` to a trie and to a map, then checks that they agree on every answer, and
    /// that removing everything leaves only the root.
    fn check_against_model(ops: Vec<Op>, topics: &[String]) -> Result<(), TestCaseError> {
        let mut trie = SubscriptionTrie::new();
        // (filter, key) → value; values are unique so that a match names its subscription.
        let mut model: HashMap<(String, u8), u32> = HashMap::new();
        for (value, op) in (0_u32..).zip(ops) {
            match op {
                Op::Insert(f, k) => {
                    let expected = model.insert((f.clone(), k), value);
                    prop_assert_eq!(trie.insert(&f, k, value), expected);
                }
                Op::Remove(f, k) => {
                    let expected = model.remove(&(f.clone(), k));
                    prop_assert_eq!(trie.remove(&f, &k), expected);
                }
            }
            prop_assert_eq!(trie.len(), model.len());
        }
        check_invariants(&trie);
        for topic in topics {
            let mut got: Vec<(u8, u32)> = Vec::new();
            trie.for_each_match(topic, |k, v| got.push((*k, *v)));
            got.sort_unstable();
            let mut expected: Vec<(u8, u32)> = model
                .iter()
                .filter(|((f, _), _)| matches(f, topic))
                .map(|((_, k), v)| (*k, *v))
                .collect();
            expected.sort_unstable();
            prop_assert_eq!(got, expected, "topic {:?}", topic);
        }
        let mut all = Vec::new();
        trie.for_each(|f, k, v| all.push(((f.to_string(), *k), *v)));
        all.sort_unstable();
        let mut expected: Vec<_> = model.clone().into_iter().collect();
        expected.sort_unstable();
        prop_assert_eq!(all, expected);
        for ((f, k), v) in model {
            prop_assert_eq!(trie.get(&f, &k), Some(&v));
            prop_assert_eq!(trie.remove(&f, &k), Some(v));
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.node_count(), 1);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn trie_agrees_with_brute_force(
            ops in prop::collection::vec(op(filter().boxed(), 4), 0..64),
            topics in prop::collection::vec(topic(), 1..16),
        ) {
            check_against_model(ops, &topics)?;
        }

        #[test]
        fn crowded_filters_agree_with_brute_force(
            ops in prop::collection::vec(
                op(prop::sample::select(&["a", "a/+", "#", "$s/#"][..]).prop_map(String::from).boxed(), 96),
                0..400,
            ),
            topics in prop::collection::vec(topic(), 1..8),
        ) {
            check_against_model(ops, &topics)?;
        }
    }
}
