//! Topic matching (§4.7): which subscriptions does a PUBLISH reach.
//!
//! This module owns the [`SubscriptionTrie`], the index from topic filters to subscribers that
//! every shard keeps one replica of, and two small helpers the broker needs around it
//! ([`parse_shared`], [`levels`]).
//!
//! It must not do IO, know about glommio, sessions or shards, or validate syntax: whether a
//! filter or name is well-formed is decided once, by [`crate::codec::topic`], when the packet is
//! decoded. Shared subscriptions (`$share/{group}/{filter}`, §4.8.2) are not the trie's concern
//! either: the broker splits them with [`parse_shared`] and stores the inner filter.

mod trie;

pub use trie::{SubscriptionTrie, MATCH_STACK_INLINE};

use crate::codec::topic::SHARE_PREFIX;

/// The topic level separator (§4.7.1.1).
pub const LEVEL_SEPARATOR: char = '/';

/// Splits a shared subscription filter `$share/{group}/{filter}` into `(group, filter)`.
///
/// Returns `None` when `filter` is not a shared subscription. It does not validate: a filter that
/// [`crate::codec::topic::validate_topic_filter`] accepted always has a non-empty group and a
/// non-empty inner filter, and for anything else this returns `None` rather than guess.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let (group, inner) = rest.split_once(LEVEL_SEPARATOR)?;
    if group.is_empty() || inner.is_empty() {
        return None;
    }
    Some((group, inner))
}

/// The number of levels of a topic name or filter, as limited by `topic_levels_max`.
///
/// Empty levels count (`"a//b"` has 3, `"/"` has 2), and so does every wildcard (`"a/#"` has 2).
/// An empty string has one (empty) level; the codec rejects it before it gets here. For a shared
/// subscription, count the inner filter from [`parse_shared`], not the `$share/{group}/` prefix.
pub fn levels(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Whether topic name `topic` matches topic filter `filter` (§4.7): `+` one level, `#` the rest
/// (and the parent level); a topic starting with `$` is not matched by a filter starting with a
/// wildcard ([MQTT-4.7.2-1]). Used for the retained scan and the load
/// harness's relay; publishes go through the trie.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filters_split_into_group_and_filter() {
        assert_eq!(parse_shared("$share/g/a/+"), Some(("g", "a/+")));
        assert_eq!(parse_shared("$share/group/#"), Some(("group", "#")));
        assert_eq!(parse_shared("$share/g//"), Some(("g", "/")));
        for not_shared in ["a/b", "$SYS/#", "$share", "share/g/a", "$shared/g/a", "#"] {
            assert_eq!(parse_shared(not_shared), None, "{not_shared}");
        }
        // Malformed ones never pass the codec; the helper still refuses to guess.
        for malformed in ["$share/", "$share/g", "$share/g/", "$share//a"] {
            assert_eq!(parse_shared(malformed), None, "{malformed}");
        }
    }

    #[test]
    fn levels_count_empty_levels_and_wildcards() {
        let cases = [
            ("a", 1),
            ("a/b", 2),
            ("/", 2),
            ("/a", 2),
            ("a/", 2),
            ("a//b", 3),
            ("sport/tennis/player1/#", 4),
            ("+/+/+", 3),
            ("", 1),
        ];
        for (topic, expected) in cases {
            assert_eq!(levels(topic), expected, "{topic:?}");
            assert_eq!(levels(topic), topic.split('/').count(), "{topic:?}");
        }
    }
}

#[cfg(test)]
mod matches_tests {
    use super::matches;

    #[test]
    fn filter_matching_follows_section_4_7() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        // [MQTT-4.7.2-1]
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/broker"));
    }
}
