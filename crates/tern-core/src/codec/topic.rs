//! Topic name and topic filter syntax (§4.7), as the codec checks it on every packet.
//! Matching lives in `crate::topic`; this file only decides what is well-formed.

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
    fn shared_filters() {
        assert!(validate_topic_filter("$share/g/a/+", true).is_ok());
        assert!(validate_topic_filter("$share/g/#", false).is_ok());
        for bad in ["$share/", "$share/g", "$share/g/", "$share//a", "$share/g+/a", "$share/#/a"] {
            assert!(validate_topic_filter(bad, true).is_err(), "{bad}");
        }
    }
}
