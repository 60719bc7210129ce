//! Topic name and topic filter syntax (§4.7), as the codec checks it on every packet.
//! Matching lives in `crate::topic`; this file only decides what is well-formed.

use bytes::Bytes;

use super::error::{DecodeError, ErrorKind};

/// Prefix of a shared subscription filter (§4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Checks a topic name: non-empty ([MQTT-4.7.3-1]) and free of wildcards ([MQTT-3.3.2-2]).
pub fn validate_topic_name(name: &str, _v5: bool) -> Result<(), DecodeError> {
    if name.is_empty() {
        return Err(DecodeError::new(ErrorKind::EmptyTopic, "MQTT-4.7.3-1"));
    }
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::new(ErrorKind::WildcardInTopicName, "MQTT-3.3.2-2"));
    }
    Ok(())
}

/// Checks a topic filter: non-empty ([MQTT-4.7.3-1]); `#` alone in the last level; `+` alone in
/// its level (v5: [MQTT-4.7.1-1], [MQTT-4.7.1-2]; 3.1.1: [MQTT-4.7.1-2], [MQTT-4.7.1-3]). A
/// `$share/{name}/{filter}` filter needs a non-empty share name without `/`, `+` or `#`, and a
/// valid filter after it ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
pub fn validate_topic_filter(filter: &str, v5: bool) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::new(ErrorKind::EmptyTopic, "MQTT-4.7.3-1"));
    }
    let body = match filter.strip_prefix(SHARE_PREFIX) {
        Some(rest) => {
            let invalid = || DecodeError::new(ErrorKind::InvalidSharedSubscription, "MQTT-4.8.2-2");
            let (name, inner) = rest.split_once('/').ok_or_else(invalid)?;
            if name.is_empty() {
                return Err(DecodeError::new(ErrorKind::InvalidSharedSubscription, "MQTT-4.8.2-1"));
            }
            if name.contains(['+', '#']) {
                return Err(invalid());
            }
            if inner.is_empty() {
                return Err(invalid());
            }
            inner
        }
        None => filter,
    };
    let (hash_id, plus_id) =
        if v5 { ("MQTT-4.7.1-1", "MQTT-4.7.1-2") } else { ("MQTT-4.7.1-2", "MQTT-4.7.1-3") };
    let mut levels = body.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(DecodeError::new(ErrorKind::InvalidMultiLevelWildcard, hash_id));
        }
        if level.contains('+') && level != "+" {
            return Err(DecodeError::new(ErrorKind::InvalidSingleLevelWildcard, plus_id));
        }
    }
    Ok(())
}

/// True for a `$share/...` filter.
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARE_PREFIX)
}

/// [MQTT-1.5.4-2]: no U+0000 in a UTF-8 string. The wire decoder checks this for every
/// string; the newtypes check it again for names that come from elsewhere (config, ACL, logs).
fn reject_nul(s: &str) -> Result<(), DecodeError> {
    if s.contains('\0') {
        return Err(DecodeError::new(ErrorKind::NullCharacter, "MQTT-1.5.4-2"));
    }
    Ok(())
}

/// A topic name (§4.7): non-empty ([MQTT-4.7.3-1]), without wildcards ([MQTT-3.3.2-2]) or
/// U+0000 ([MQTT-1.5.4-2]), well-formed UTF-8. Made only by [`TopicName::new`] or by the
/// decoder, so holding one means it is valid.
/// (A v5 PUBLISH that names its topic by alias alone has no topic name until the alias is
/// resolved: [`crate::codec::Publish::topic`] is empty then.)
///
/// Backed by [`Bytes`] (issue 10): the decoder slices the name out of the frame without a
/// copy, and a clone (a message sent to another shard, an alias, the shard's last-topic
/// cache) shares the bytes instead of allocating. A name sliced from a frame pins the
/// frame's buffer: whatever keeps one beyond the packet calls [`TopicName::detach`].
/// [`TopicName::as_str`] re-checks UTF-8 (no `unsafe` here): a scan of the name that takes a
/// few nanoseconds for a short topic; hot paths that only compare or copy bytes use
/// [`TopicName::as_bytes`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopicName(Bytes);

impl TopicName {
    /// Checks `name` and wraps it (no copy: the `String`'s buffer becomes the `Bytes`').
    pub fn new(name: impl Into<String>) -> Result<Self, DecodeError> {
        let name = name.into();
        validate_topic_name(&name, true)?;
        reject_nul(&name)?;
        Ok(TopicName(Bytes::from(name)))
    }

    /// Wraps a name the decoder read with [`super::primitives::Reader::string_bytes`], which
    /// already checked UTF-8 and U+0000: only the topic name rules remain.
    pub(crate) fn from_wire(name: Bytes) -> Result<Self, DecodeError> {
        if name.is_empty() {
            return Err(DecodeError::new(ErrorKind::EmptyTopic, "MQTT-4.7.3-1"));
        }
        if name.iter().any(|&b| b == b'+' || b == b'#') {
            return Err(DecodeError::new(ErrorKind::WildcardInTopicName, "MQTT-3.3.2-2"));
        }
        debug_assert!(std::str::from_utf8(&name).is_ok() && !name.contains(&0));
        Ok(TopicName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Valid UTF-8 by construction (both constructors check it), so this never fails; the
        // check is the price of `#![forbid(unsafe_code)]`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The name's bytes (UTF-8), without the check of [`TopicName::as_str`].
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a topic name is not empty, [MQTT-4.7.3-1]); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name as a `String` (a copy).
    pub fn into_string(self) -> String {
        self.as_str().to_owned()
    }

    /// Bytes of the name counted in memory accounting: its length. Clones share the bytes,
    /// so each message that holds the name counts it again (an over-count, never an under-).
    pub fn heap_bytes(&self) -> usize {
        self.0.len()
    }

    /// Makes the name own exactly its bytes (a copy), so that it no longer pins the buffer it
    /// was decoded from: for names kept beyond their packet (messages, aliases, wills).
    pub fn detach(&mut self) {
        self.0 = Bytes::copy_from_slice(&self.0);
    }
}

impl std::ops::Deref for TopicName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}
impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}
impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
// By the `str` (not the bytes): `Borrow<str>` needs a name and its `&str` to hash alike.
impl std::hash::Hash for TopicName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}
impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
impl std::fmt::Debug for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}
impl PartialEq<str> for TopicName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl PartialEq<&str> for TopicName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl From<TopicName> for String {
    fn from(v: TopicName) -> String {
        v.into_string()
    }
}

/// A topic filter (§4.7): non-empty ([MQTT-4.7.3-1]), `#` only as the whole last level
/// ([MQTT-4.7.1-1] in v5, [MQTT-4.7.1-2] in 3.1.1), `+` only as a whole level ([MQTT-4.7.1-2]
/// / [MQTT-4.7.1-3]), a well-formed `$share/{group}/` prefix if it has one ([MQTT-4.8.2-1],
/// [MQTT-4.8.2-2]), no U+0000 ([MQTT-1.5.4-2]). Made only by [`TopicFilter::new`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Checks `filter` and wraps it. `v5` only picks the statement ids of the error (the rules
    /// are the same in both versions).
    pub fn new(filter: impl Into<String>, v5: bool) -> Result<Self, DecodeError> {
        let filter = filter.into();
        validate_topic_filter(&filter, v5)?;
        reject_nul(&filter)?;
        Ok(TopicFilter(filter))
    }

    /// The filter.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The filter as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Whether it is a shared subscription (`$share/{group}/{filter}`, §4.8.2).
    pub fn is_shared(&self) -> bool {
        is_shared(&self.0)
    }
}

macro_rules! str_newtype {
    ($t:ident) => {
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    };
}
str_newtype!(TopicFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("a/b", true).is_ok());
        assert!(validate_topic_name("/", true).is_ok());
        assert_eq!(validate_topic_name("", false).map_err(|e| e.spec), Err("MQTT-4.7.3-1"));
        assert_eq!(validate_topic_name("a/+", false).map_err(|e| e.spec), Err("MQTT-3.3.2-2"));
        assert_eq!(validate_topic_name("a#", true).map_err(|e| e.spec), Err("MQTT-3.3.2-2"));
    }

    #[test]
    fn topic_filters_from_spec_section_4_7_1() {
        for ok in
            ["#", "+", "sport/#", "sport/tennis/#", "+/tennis/#", "sport/+/player1", "/+", "+/+"]
        {
            assert!(validate_topic_filter(ok, true).is_ok(), "{ok}");
        }
        // Non-normative examples of §4.7.1.2 and §4.7.1.3.
        let bad_hash = ["sport/tennis#", "sport/tennis/#/ranking", "#/a", "a/#b"];
        for bad in bad_hash {
            let e = validate_topic_filter(bad, true).expect_err(bad);
            assert_eq!(e.spec, "MQTT-4.7.1-1", "{bad}");
            let e = validate_topic_filter(bad, false).expect_err(bad);
            assert_eq!(e.spec, "MQTT-4.7.1-2", "{bad}");
        }
        let e = validate_topic_filter("sport+", true).expect_err("sport+");
        assert_eq!(e.spec, "MQTT-4.7.1-2");
        let e = validate_topic_filter("sport+", false).expect_err("sport+");
        assert_eq!(e.spec, "MQTT-4.7.1-3");
    }

    #[test]
    fn newtypes_accept_only_what_validates() {
        assert_eq!(TopicName::new("a/b").map(String::from), Ok("a/b".to_owned()));
        assert_eq!(TopicName::new("").map_err(|e| e.spec), Err("MQTT-4.7.3-1"));
        assert_eq!(TopicName::new("a/#").map_err(|e| e.spec), Err("MQTT-3.3.2-2"));
        assert_eq!(TopicName::new("a\0b").map_err(|e| e.spec), Err("MQTT-1.5.4-2"));
        let f = TopicFilter::new("$share/g/a/+", true).expect("valid");
        assert!(f.is_shared());
        assert_eq!(f, "$share/g/a/+");
        assert_eq!(TopicFilter::new("", false).map_err(|e| e.spec), Err("MQTT-4.7.3-1"));
        assert_eq!(TopicFilter::new("a/#/b", true).map_err(|e| e.spec), Err("MQTT-4.7.1-1"));
        assert_eq!(TopicFilter::new("a/#/b", false).map_err(|e| e.spec), Err("MQTT-4.7.1-2"));
        assert_eq!(TopicFilter::new("a+", false).map_err(|e| e.spec), Err("MQTT-4.7.1-3"));
        assert_eq!(TopicFilter::new("a/\0", true).map_err(|e| e.spec), Err("MQTT-1.5.4-2"));
    }

    #[test]
    fn shared_filters() {
        assert!(validate_topic_filter("$share/g/a/+", true).is_ok());
        assert!(validate_topic_filter("$share/g/#", false).is_ok());
        for bad in ["$share/", "$share/g", "$share/g/", "$share//a", "$share/g+/a", "$share/#/a"] {
            assert!(validate_topic_filter(bad, true).is_err(), "{bad}");
        }
    }
}
