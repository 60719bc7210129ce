//! The ACL file, in Mosquitto's syntax, and the access decisions made from it.
//!
//! ```text
//! # Lines before any `user` line apply to clients that connect without a user name.
//! topic read public/#
//!
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret/#
//!
//! # `pattern` lines apply to every client, wherever they appear (as in Mosquitto).
//! pattern write devices/%c/status
//! pattern read users/%u/#
//! ```
//!
//! - `topic [read|write|readwrite|deny] <filter>`: an entry for the current section (the
//!   anonymous section before the first `user` line, else the last `user <name>`). Without an
//!   access type it is `readwrite`. The filter is the rest of the line, so it may contain spaces.
//! - `pattern [read|write|readwrite|deny] <filter>`: an entry for every client, in which `%c`
//!   stands for the client identifier and `%u` for the user name (anywhere in a level, e.g.
//!   `dev-%c`). An entry with `%u` does not grant anything to a client without a user name.
//! - `user <name>`: starts the section of that user (the rest of the line; repeated sections
//!   add up).
//! - `#` starts a comment line; blank lines are ignored.
//!
//! # Semantics (Mosquitto's, with the differences listed)
//!
//! - **Publish** ([`Acl::can_publish`]): an entry with `write` must match the topic, as a
//!   subscription filter matches a topic name. Writing to `$SYS` is always refused (Mosquitto's
//!   `acl__check_dollar`).
//! - **Delivery** ([`Acl::can_read`]): an entry with `read` must match the topic of each message
//!   delivered, retained messages included. This is the check that actually keeps data from a
//!   client; the broker must make it for every message, as Mosquitto does.
//! - **Subscribe** ([`Acl::can_subscribe`]): the filter is refused unless it lies entirely
//!   within an entry with `read` (every topic the filter can match, the entry matches too):
//!   `sensors/+/temp` is within `sensors/#`, `#` is not. This is the wildcard-aware check of
//!   Mosquitto's `mosquitto_sub_matches_acl`, used by its dynamic-security plugin; its ACL-file
//!   check accepts every subscription and relies on the per-message check alone. A filter that
//!   merely overlaps a `deny` entry is accepted, and the delivery check withholds the denied
//!   messages. `$share/<group>/<filter>` is checked as `<filter>`.
//! - **`$` topics**: an entry matches a topic starting with `$` only if the entry starts with
//!   `$` too, so `#` does not open `$SYS` (as Mosquitto).
//! - **Deny first**: a matching `deny` entry refuses access whatever else grants it. Mosquitto
//!   checks deny entries first within the user's list and within the pattern list, but a user's
//!   grant is returned before pattern denies are looked at; Tern checks every deny first.
//! - **No entries, no access**: with an ACL file configured, what no entry grants is refused. An
//!   empty file therefore denies everything, as does [`Acl::deny_all`].
//! - **Dangerous identities** (the CVE class where a client id such as `#` or `a/b` widens a
//!   pattern): a client id or user name containing `+`, `#` or `/`, or empty, is never
//!   substituted. A pattern that needs such an identity grants nothing; a `deny` pattern that
//!   needs it matches as if the placeholder were `+` (any one level), so the refusal can only
//!   get wider. Mosquitto refuses such clients all pattern access in the same spirit. Patterns
//!   are also checked after the raw-text `$` rule above, so a client id `$SYS` gains nothing
//!   from `pattern read %c/#`.
//! - **Stricter parsing**: an unknown keyword, an unknown access type, a `topic` line with an
//!   access type but no filter, or an invalid filter (`a/#/b`, `a+`) is an error naming the line
//!   (Mosquitto ignores unknown keywords and reads `topic read` as the topic `read`).
//!
//! Matching does not allocate: filters are split into levels once, at load, and topics are
//! walked with a splitting iterator. A check costs one pass over the deny entries and the grant
//! entries that apply to the client (its user's, or the anonymous ones, and the patterns).

use std::collections::HashMap;
use std::fmt;

use super::{numbered_lines, AuthFileError};

/// What a client wants to do with a topic or filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Receive a message published to this topic name (delivery, retained included).
    Read,
    /// Publish to this topic name.
    Write,
    /// Subscribe to this topic filter.
    Subscribe,
}

/// The answer to one check, with the ACL line that decided it (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Granted by the entry on this line.
    Allowed {
        /// 1-based line of the granting entry.
        line: u32,
    },
    /// Refused by the `deny` entry on this line.
    Denied {
        /// 1-based line of the `deny` entry.
        line: u32,
    },
    /// Refused because no entry grants it (the default; always the answer of an empty ACL).
    NotGranted,
    /// Refused whatever the file says: publishing to `$SYS`, or a malformed `$share` filter.
    Reserved,
}

impl Decision {
    /// Whether the access is granted.
    pub const fn is_allowed(self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// A parsed ACL file. Immutable after [`Acl::parse`]; holds no file handle and is
/// `Send + Sync`, so one loaded copy can be shared by every shard.
#[derive(Clone, Debug)]
pub struct Acl {
    /// `topic` entries before the first `user` line: for clients without a user name.
    anonymous: Rules,
    /// `topic` entries of each `user` section.
    users: HashMap<String, Rules>,
    /// `pattern` entries, for every client.
    patterns: Rules,
    /// Things that are legal but probably not what the author meant, one per line, for the
    /// broker to log at load.
    warnings: Vec<String>,
}

/// Entries of one section, deny entries apart so they can be checked first.
#[derive(Clone, Debug, Default)]
struct Rules {
    deny: Vec<Rule>,
    grant: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    /// 1-based line in the file.
    line: u32,
    /// Grants reading (delivery and subscribe). Unused for deny entries.
    read: bool,
    /// Grants publishing. Unused for deny entries.
    write: bool,
    /// The entry's text starts with `$`; only then may it match a `$` topic.
    dollar: bool,
    /// The filter, split at `/`.
    levels: Box<[Level]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `+`: any one level.
    Plus,
    /// `#`: any number of levels, including none (`a/#` matches `a`). Always the last level.
    Hash,
    /// A level with `%c` or `%u` in it (pattern entries only).
    Pattern(Box<[Segment]>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    ClientId,
    Username,
}

/// The identities of the client being checked, `None` where one cannot be substituted.
#[derive(Clone, Copy)]
struct Identity<'a> {
    client_id: Option<&'a str>,
    username: Option<&'a str>,
}

impl<'a> Identity<'a> {
    fn new(username: Option<&'a str>, client_id: &'a str) -> Identity<'a> {
        // An identity with a wildcard or a level separator could widen a pattern, and an
        // empty one would turn `a/%c` into `a/`: neither is substituted.
        let usable = |s: &&str| !s.is_empty() && !s.contains(['+', '#', '/']);
        Identity { client_id: Some(client_id).filter(usable), username: username.filter(usable) }
    }
}

/// What a level that names an unusable identity does: nothing for a grant, anything for a deny.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Grant,
    Deny,
}

impl Acl {
    /// An ACL with no entries: every check is [`Decision::NotGranted`]. What an empty file
    /// gives; for the broker when a configured ACL file has gone missing on reload.
    pub fn deny_all() -> Acl {
        Acl {
            anonymous: Rules::default(),
            users: HashMap::new(),
            patterns: Rules::default(),
            warnings: Vec::new(),
        }
    }

    /// Parses the text of an ACL file; `name` stands for the file in errors and warnings.
    pub fn parse(name: &str, text: &str) -> Result<Acl, AuthFileError> {
        let mut acl = Acl::deny_all();
        // `None` while in the anonymous section.
        let mut user: Option<String> = None;
        for (n, raw) in numbered_lines(text) {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| AuthFileError::at(name, n, reason);
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a user name".into()));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let is_pattern = keyword == "pattern";
                    let rule = parse_entry(rest, is_pattern, n).map_err(err)?;
                    let deny = !rule.read && !rule.write;
                    let rules = match (&user, is_pattern) {
                        (_, true) => {
                            if user.is_some() {
                                acl.warnings.push(format!(
                                    "{name}:{n}: `pattern` applies to every client, not only \
                                     to the user of this section"
                                ));
                            }
                            &mut acl.patterns
                        }
                        (None, false) => &mut acl.anonymous,
                        (Some(u), false) => acl.users.entry(u.clone()).or_default(),
                    };
                    if deny {
                        rules.deny.push(rule);
                    } else {
                        rules.grant.push(rule);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected `topic`, `pattern` or `user`)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// The full decision for `access` to `topic` (a topic name for [`Access::Read`] and
    /// [`Access::Write`], a topic filter for [`Access::Subscribe`]) by the client with this user
    /// name (`None`: connected without one) and client identifier.
    pub fn check(
        &self,
        access: Access,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
    ) -> Decision {
        let mut topic = topic;
        match access {
            Access::Write if topic == "$SYS" || topic.starts_with("$SYS/") => {
                return Decision::Reserved;
            }
            Access::Subscribe => {
                if let Some(shared) = topic.strip_prefix("$share/") {
                    match shared.split_once('/') {
                        Some((group, filter)) if !group.is_empty() && !filter.is_empty() => {
                            topic = filter;
                        }
                        _ => return Decision::Reserved,
                    }
                }
            }
            _ => {}
        }
        let who = Identity::new(username, client_id);
        let own = match username {
            Some(u) => self.users.get(u),
            None => Some(&self.anonymous),
        };
        let matches = |rule: &Rule, mode: Mode| match access {
            Access::Read | Access::Write => topic_matches(rule, topic, who, mode),
            Access::Subscribe => filter_within(rule, topic, who, mode),
        };
        let denied = own
            .into_iter()
            .flat_map(|r| &r.deny)
            .chain(&self.patterns.deny)
            .find(|rule| matches(rule, Mode::Deny));
        if let Some(rule) = denied {
            return Decision::Denied { line: rule.line };
        }
        let wanted = |rule: &&Rule| match access {
            Access::Read | Access::Subscribe => rule.read,
            Access::Write => rule.write,
        };
        let granted = own
            .into_iter()
            .flat_map(|r| &r.grant)
            .chain(&self.patterns.grant)
            .filter(wanted)
            .find(|rule| matches(rule, Mode::Grant));
        match granted {
            Some(rule) => Decision::Allowed { line: rule.line },
            None => Decision::NotGranted,
        }
    }

    /// Whether the client may publish to the topic name `topic` (PUBLISH, and a Will at
    /// CONNECT).
    pub fn can_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.check(Access::Write, username, client_id, topic).is_allowed()
    }

    /// Whether the client may subscribe to the topic filter `filter` (each filter of a
    /// SUBSCRIBE). Granting a subscription does not replace [`Acl::can_read`] on delivery.
    pub fn can_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        self.check(Access::Subscribe, username, client_id, filter).is_allowed()
    }

    /// Whether a message published to `topic` may be delivered to the client: call it for every
    /// message delivered, retained messages and resumed sessions included.
    pub fn can_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.check(Access::Read, username, client_id, topic).is_allowed()
    }

    /// Legal lines that are probably mistakes (e.g. a `pattern` inside a `user` section, which
    /// applies to everyone), formatted `file:line: text`, for the broker to log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allowed { line } => write!(f, "allowed by ACL line {line}"),
            Decision::Denied { line } => write!(f, "denied by ACL line {line}"),
            Decision::NotGranted => f.write_str("not granted by any ACL entry"),
            Decision::Reserved => f.write_str("reserved topic"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Parsing.
// ------------------------------------------------------------------------------------------------

/// The first blank-separated word of `line` and the rest, trimmed.
fn split_word(line: &str) -> (&str, &str) {
    match line.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    }
}

/// `[access] <filter>` after `topic` or `pattern`.
fn parse_entry(rest: &str, is_pattern: bool, line: usize) -> Result<Rule, String> {
    if rest.is_empty() {
        return Err("missing topic filter".into());
    }
    let (first, after) = split_word(rest);
    let access = match first {
        "read" => Some((true, false)),
        "write" => Some((false, true)),
        "readwrite" => Some((true, true)),
        "deny" => Some((false, false)),
        _ => None,
    };
    let ((read, write), filter) = match (access, after.is_empty()) {
        (Some(access), false) => (access, after),
        (Some(_), true) => {
            // Mosquitto would read `topic read` as readwrite access to the topic "read".
            return Err(format!("access type `{first}` but no topic filter"));
        }
        (None, true) => ((true, true), rest),
        (None, false) => {
            return Err(format!(
                "unknown access type {first:?} (expected read, write, readwrite or deny)"
            ));
        }
    };
    let levels = parse_filter(filter, is_pattern)?;
    let line = u32::try_from(line).map_err(|_| "file has too many lines".to_owned())?;
    Ok(Rule { line, read, write, dollar: filter.starts_with('$'), levels })
}

/// Splits and checks a filter as Mosquitto's `mosquitto_sub_topic_check` does: `+` and `#` only
/// as whole levels, `#` only last.
fn parse_filter(filter: &str, is_pattern: bool) -> Result<Box<[Level]>, String> {
    let count = filter.split('/').count();
    let mut levels = Vec::with_capacity(count);
    for (i, level) in filter.split('/').enumerate() {
        let parsed = match level {
            "+" => Level::Plus,
            "#" if i + 1 == count => Level::Hash,
            "#" => return Err(format!("invalid topic filter {filter:?}: '#' must be last")),
            _ if level.contains(['+', '#']) => {
                return Err(format!(
                    "invalid topic filter {filter:?}: '+' and '#' must be whole levels"
                ));
            }
            _ if is_pattern && (level.contains("%c") || level.contains("%u")) => {
                Level::Pattern(parse_segments(level))
            }
            _ => Level::Literal(level.into()),
        };
        levels.push(parsed);
    }
    Ok(levels.into_boxed_slice())
}

/// `dev-%c-x` → [Literal("dev-"), ClientId, Literal("-x")].
fn parse_segments(level: &str) -> Box<[Segment]> {
    let mut segments = Vec::new();
    let mut rest = level;
    while let Some(at) = rest.find("%c").into_iter().chain(rest.find("%u")).min() {
        if at > 0 {
            segments.push(Segment::Literal(rest[..at].into()));
        }
        segments.push(if rest[at..].starts_with("%c") {
            Segment::ClientId
        } else {
            Segment::Username
        });
        rest = &rest[at + 2..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest.into()));
    }
    segments.into_boxed_slice()
}

// ------------------------------------------------------------------------------------------------
// Matching. No allocation: the topic is walked with `split`, the entry was split at load.
// ------------------------------------------------------------------------------------------------

/// How one entry level compares with one level of a topic or filter.
enum Test<'r> {
    /// Any one level (`+`, or a placeholder that cannot be substituted, in deny mode).
    AnyLevel,
    /// Nothing matches (a placeholder that cannot be substituted, in grant mode).
    Nothing,
    /// Exactly this text.
    Literal(&'r str),
    /// The concatenation of these segments, with the placeholders substituted.
    Segments(&'r [Segment]),
}

fn test<'r>(level: &'r Level, who: Identity<'_>, mode: Mode) -> Test<'r> {
    match level {
        Level::Plus => Test::AnyLevel,
        // Callers deal with `#` before asking.
        Level::Hash => Test::AnyLevel,
        Level::Literal(text) => Test::Literal(text),
        Level::Pattern(segments) => {
            let substitutable = segments.iter().all(|s| match s {
                Segment::ClientId => who.client_id.is_some(),
                Segment::Username => who.username.is_some(),
                Segment::Literal(_) => true,
            });
            match (substitutable, mode) {
                (true, _) => Test::Segments(segments),
                (false, Mode::Grant) => Test::Nothing,
                (false, Mode::Deny) => Test::AnyLevel,
            }
        }
    }
}

/// Whether `level` (of a topic name, or a literal level of a filter) passes `test`.
fn passes(test: &Test<'_>, level: &str, who: Identity<'_>) -> bool {
    match test {
        Test::AnyLevel => true,
        Test::Nothing => false,
        Test::Literal(text) => *text == level,
        Test::Segments(segments) => {
            let mut rest = level;
            for segment in segments.iter() {
                let piece = match segment {
                    Segment::Literal(text) => text,
                    // `test` returned Segments only if both are present.
                    Segment::ClientId => who.client_id.unwrap_or_default(),
                    Segment::Username => who.username.unwrap_or_default(),
                };
                match rest.strip_prefix(piece) {
                    Some(after) => rest = after,
                    None => return false,
                }
            }
            rest.is_empty()
        }
    }
}

/// Whether the entry matches the topic name `topic`, as a subscription filter would.
fn topic_matches(rule: &Rule, topic: &str, who: Identity<'_>, mode: Mode) -> bool {
    if topic.starts_with('$') && !rule.dollar {
        return false;
    }
    let mut levels = topic.split('/');
    for level in rule.levels.iter() {
        if *level == Level::Hash {
            return true;
        }
        let Some(topic_level) = levels.next() else {
            return false;
        };
        if !passes(&test(level, who, mode), topic_level, who) {
            return false;
        }
    }
    levels.next().is_none()
}

/// Whether every topic the filter `filter` matches is matched by the entry.
fn filter_within(rule: &Rule, filter: &str, who: Identity<'_>, mode: Mode) -> bool {
    // A filter starting with `$` can match `$` topics, which only a `$` entry matches. A filter
    // starting with a wildcard matches no `$` topic, so any entry may cover it.
    if filter.starts_with('$') && !rule.dollar {
        return false;
    }
    let mut levels = filter.split('/');
    for level in rule.levels.iter() {
        if *level == Level::Hash {
            return true;
        }
        // The filter ended where the entry still wants a level: the filter matches a topic
        // the entry does not (`a` vs `a/+`).
        let Some(filter_level) = levels.next() else {
            return false;
        };
        let covered = match (test(level, who, mode), filter_level) {
            // `#` in the filter reaches any depth; only the entry's `#` (handled above) does.
            (_, "#") => false,
            (Test::AnyLevel, _) => true,
            // `+` in the filter is any level; a literal or substituted level is one value.
            (_, "+") => false,
            (t, text) => passes(&t, text, who),
        };
        if !covered {
            return false;
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Acl {
        Acl::parse("acl", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> AuthFileError {
        match Acl::parse("acl", text) {
            Ok(acl) => panic!("accepted {text:?}: {acl:?}"),
            Err(e) => e,
        }
    }

    const ALICE: Option<&str> = Some("alice");

    #[test]
    fn topic_entries_per_user_and_access_type() {
        let a = acl("user alice\n\
                     topic read r/#\n\
                     topic write w/+/x\n\
                     topic readwrite rw\n\
                     topic both\n");
        assert!(a.can_read(ALICE, "c", "r/1/2") && a.can_read(ALICE, "c", "r"));
        assert!(!a.can_publish(ALICE, "c", "r/1"));
        assert!(a.can_publish(ALICE, "c", "w/1/x") && !a.can_publish(ALICE, "c", "w/1/2/x"));
        assert!(!a.can_read(ALICE, "c", "w/1/x"));
        assert!(a.can_publish(ALICE, "c", "rw") && a.can_read(ALICE, "c", "rw"));
        assert!(!a.can_read(ALICE, "c", "rw/sub"));
        // No access type means readwrite (Mosquitto).
        assert!(a.can_publish(ALICE, "c", "both") && a.can_read(ALICE, "c", "both"));
        // Another user, or no user, gets nothing from alice's section.
        assert!(!a.can_read(Some("bob"), "c", "r/1") && !a.can_read(None, "c", "r/1"));
        assert_eq!(a.check(Access::Read, ALICE, "c", "r/1"), Decision::Allowed { line: 2 });
        assert_eq!(a.check(Access::Read, ALICE, "c", "zzz"), Decision::NotGranted);
    }

    #[test]
    fn anonymous_section_is_for_clients_without_a_user_name() {
        let a = acl("# public\ntopic read public/#\n\nuser alice\ntopic read alice/#\n");
        assert!(a.can_read(None, "c", "public/news"));
        assert!(!a.can_read(None, "c", "alice/x"));
        assert!(a.can_read(ALICE, "c", "alice/x"));
        // Mosquitto: the anonymous entries are not inherited by named users.
        assert!(!a.can_read(ALICE, "c", "public/news"));
        // An empty user name is a user name, not anonymity.
        assert!(!a.can_read(Some(""), "c", "public/news"));
    }

    #[test]
    fn repeated_user_sections_add_up() {
        let a = acl("user alice\ntopic read a\nuser bob\ntopic read b\nuser alice\ntopic read c\n");
        assert!(a.can_read(ALICE, "x", "a") && a.can_read(ALICE, "x", "c"));
        assert!(!a.can_read(ALICE, "x", "b"));
        // The user name is the rest of the line: it may contain blanks.
        let a = acl("user  John Smith \ntopic read j\n");
        assert!(a.can_read(Some("John Smith"), "x", "j"));
    }

    #[test]
    fn deny_takes_precedence() {
        let a = acl("user alice\n\
                     topic readwrite home/#\n\
                     topic deny home/secret/#\n\
                     pattern deny %u/private\n\
                     user bob\n\
                     topic readwrite #\n");
        assert!(a.can_read(ALICE, "c", "home/lamp"));
        assert_eq!(a.check(Access::Read, ALICE, "c", "home/secret"), Decision::Denied { line: 3 });
        assert!(!a.can_publish(ALICE, "c", "home/secret/x"));
        // A deny entry after the grant still wins, and pattern denies beat user grants (Tern
        // checks every deny first; Mosquitto would let bob's grant through).
        assert!(a.can_read(Some("bob"), "c", "bob/public"));
        assert_eq!(
            a.check(Access::Read, Some("bob"), "c", "bob/private"),
            Decision::Denied { line: 4 }
        );
        // Subscribing to a filter that overlaps a deny is allowed, the deny applies per message.
        assert!(a.can_subscribe(ALICE, "c", "home/#"));
        assert!(!a.can_read(ALICE, "c", "home/secret/plans"));
        // A filter inside the deny is refused outright.
        assert!(!a.can_subscribe(ALICE, "c", "home/secret/+"));
        assert!(!a.can_subscribe(ALICE, "c", "home/secret"));
    }

    #[test]
    fn patterns_substitute_client_id_and_user_name() {
        let a = acl("pattern readwrite devices/%c/#\n\
                     pattern read users/%u/inbox\n\
                     pattern write logs/dev-%c-%u\n");
        assert!(a.can_publish(None, "d1", "devices/d1/temp"));
        assert!(a.can_read(ALICE, "d1", "devices/d1"));
        assert!(!a.can_read(None, "d1", "devices/d2/temp"));
        assert!(!a.can_read(None, "d1", "devices/d1x/temp"));
        assert!(a.can_read(ALICE, "d1", "users/alice/inbox"));
        assert!(!a.can_read(Some("bob"), "d1", "users/alice/inbox"));
        // %u grants nothing to a client without a user name.
        assert!(!a.can_read(None, "d1", "users//inbox"));
        assert!(!a.can_read(None, "%u", "users/%u/inbox"));
        // Inside a level.
        assert!(a.can_publish(ALICE, "d1", "logs/dev-d1-alice"));
        assert!(!a.can_publish(ALICE, "d1", "logs/dev-d1-bob"));
        assert!(!a.can_publish(ALICE, "d1", "logs/dev-d1-alicex"));
        // In a `topic` line, %c is literal (Mosquitto).
        let a = acl("topic read t/%c\n");
        assert!(a.can_read(None, "x", "t/%c") && !a.can_read(None, "x", "t/x"));
    }

    #[test]
    fn dangerous_identities_never_widen_a_pattern() {
        let a = acl("pattern readwrite devices/%c/#\npattern read users/%u/#\n");
        for bad in ["+", "#", "a/b", "a/+", "+/#", "x#", ""] {
            // As a client id: no access under devices/, not even to the literal topic.
            assert!(!a.can_read(None, bad, "devices/a/b/c"), "client id {bad:?}");
            assert!(!a.can_read(None, bad, "devices/x/y"), "client id {bad:?}");
            assert!(!a.can_subscribe(None, bad, "devices/#"), "client id {bad:?}");
            assert!(!a.can_subscribe(None, bad, "devices/+/#"), "client id {bad:?}");
            assert!(!a.can_subscribe(None, bad, "#"), "client id {bad:?}");
            assert!(!a.can_publish(None, bad, "devices/a/b"), "client id {bad:?}");
            // As a user name.
            assert!(!a.can_read(Some(bad), "c", "users/a/b"), "user {bad:?}");
            assert!(!a.can_subscribe(Some(bad), "c", "users/#"), "user {bad:?}");
        }
        // The same client with a plain id gets its own subtree only.
        assert!(a.can_subscribe(None, "a", "devices/a/#"));
        assert!(!a.can_subscribe(None, "a", "devices/+/#"));
        assert!(!a.can_subscribe(None, "a", "devices/#"));
        // A user section still works for a client with a dangerous id: only patterns are off.
        let a = acl("user alice\ntopic read own/#\npattern read devices/%c/#\n");
        assert!(a.can_read(ALICE, "#", "own/x"));
        assert!(!a.can_read(ALICE, "#", "devices/#"));
    }

    #[test]
    fn deny_patterns_fail_closed_for_dangerous_identities() {
        let a = acl("topic readwrite #\npattern deny private/%c/#\n");
        assert!(a.can_read(None, "me", "private/other/x"));
        assert!(!a.can_read(None, "me", "private/me/x"));
        // An id that cannot be substituted makes the deny cover every id.
        for bad in ["a/b", "+", "#", ""] {
            assert!(!a.can_read(None, bad, "private/other/x"), "{bad:?}");
            assert!(a.can_read(None, bad, "public/x"), "{bad:?}");
        }
    }

    #[test]
    fn subscribe_checks_the_filter_against_entries_with_wildcards() {
        let a =
            acl("user alice\ntopic read sensors/#\ntopic read rooms/+/temp\ntopic write cmd/#\n");
        let can = |f: &str| a.can_subscribe(ALICE, "c", f);
        for allowed in
            ["sensors/#", "sensors", "sensors/+/x", "sensors/a/#", "rooms/+/temp", "rooms/1/temp"]
        {
            assert!(can(allowed), "{allowed}");
        }
        for refused in [
            "#",
            "+/#",
            "+",
            "sensor/#",
            "rooms/#",
            "rooms/+/#",
            "rooms/+",
            "rooms/1/temp/x",
            "cmd/#",
        ] {
            assert!(!can(refused), "{refused}");
        }
        // Shared subscriptions are checked on the filter inside.
        assert!(can("$share/g1/sensors/#") && !can("$share/g1/#"));
        assert_eq!(a.check(Access::Subscribe, ALICE, "c", "$share/g1"), Decision::Reserved);
        assert_eq!(a.check(Access::Subscribe, ALICE, "c", "$share//x"), Decision::Reserved);
    }

    #[test]
    fn dollar_topics_need_dollar_entries() {
        let a = acl("topic readwrite #\ntopic read $SYS/broker/#\npattern read %c/#\n");
        assert!(a.can_read(None, "c", "anything/here"));
        assert!(!a.can_read(None, "c", "$SYS/x") && !a.can_read(None, "c", "$other"));
        assert!(a.can_read(None, "c", "$SYS/broker/uptime"));
        assert!(a.can_subscribe(None, "c", "$SYS/broker/#"));
        assert!(!a.can_subscribe(None, "c", "$SYS/#"));
        // `#` covers a filter starting with a wildcard, which matches no `$` topic.
        assert!(a.can_subscribe(None, "c", "#") && a.can_subscribe(None, "c", "+/x"));
        // A client id starting with `$` gains no `$` topics from a pattern.
        assert!(!a.can_read(None, "$SYS", "$SYS/x"));
        assert!(!a.can_subscribe(None, "$SYS", "$SYS/#"));
        // Publishing to $SYS is refused whatever the file says.
        let a = acl("topic readwrite $SYS/#\n");
        assert_eq!(a.check(Access::Write, None, "c", "$SYS/x"), Decision::Reserved);
        assert!(a.can_read(None, "c", "$SYS/x"));
    }

    #[test]
    fn empty_acl_denies_everything() {
        for text in ["", "\n\n", "# only a comment\n", "user alice\n"] {
            let a = acl(text);
            for (user, id) in [(None, "c"), (ALICE, "c"), (ALICE, "#")] {
                assert_eq!(a.check(Access::Read, user, id, "x"), Decision::NotGranted);
                assert!(!a.can_publish(user, id, "x") && !a.can_subscribe(user, id, "#"));
            }
        }
        assert!(!Acl::deny_all().can_read(None, "c", "x"));
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        let cases = [
            ("topic", "missing topic filter"),
            ("topic   ", "missing topic filter"),
            ("pattern", "missing topic filter"),
            ("topic read", "access type `read` but no topic filter"),
            ("topic deny", "access type `deny` but no topic filter"),
            ("topic reed a/b", "unknown access type \"reed\""),
            ("topic read a/#/b", "'#' must be last"),
            ("topic read a+/b", "whole levels"),
            ("pattern read a/%c#", "whole levels"),
            ("user", "`user` needs a user name"),
            ("topik read a", "unknown keyword \"topik\""),
            ("users alice", "unknown keyword \"users\""),
        ];
        for (line, reason) in cases {
            let e = parse_err(&format!("# header\ntopic read ok\n\n{line}\n"));
            assert_eq!((e.file.as_str(), e.line), ("acl", 4), "{line:?}: {e}");
            assert!(e.reason.contains(reason), "{line:?}: got {e}, want {reason:?}");
        }
    }

    #[test]
    fn filters_may_contain_blanks_and_tabs_separate_words() {
        let a = acl("topic\tread\ta b/c d\n  topic write  x  \n");
        assert!(a.can_read(None, "c", "a b/c d") && !a.can_publish(None, "c", "a b/c d"));
        assert!(a.can_publish(None, "c", "x"));
    }

    #[test]
    fn patterns_in_user_sections_apply_to_everyone_with_a_warning() {
        let a = acl("user admin\npattern read status/%c\n");
        assert!(a.can_read(Some("bob"), "d1", "status/d1"));
        assert_eq!(a.warnings().len(), 1);
        assert!(a.warnings()[0].starts_with("acl:2: "), "{:?}", a.warnings());
    }

    #[test]
    fn segments_split_around_placeholders() {
        let s = parse_segments("a%cb%u%c");
        let lit = |t: &str| Segment::Literal(t.into());
        assert_eq!(
            &*s,
            [lit("a"), Segment::ClientId, lit("b"), Segment::Username, Segment::ClientId]
        );
        assert_eq!(&*parse_segments("%u"), [Segment::Username]);
    }

    #[test]
    fn fixture_file() {
        let a = Acl::parse("acl.conf", include_str!("../../../../tests/fixtures/auth/acl.conf"))
            .expect("fixture parses");
        assert!(a.can_read(None, "c", "public/news"));
        assert!(!a.can_publish(None, "c", "public/news"));
        assert!(a.can_publish(ALICE, "c", "home/alice/lamp"));
        assert!(!a.can_read(ALICE, "c", "home/alice/secret/x"));
        assert!(a.can_publish(Some("bob"), "sensor-7", "devices/sensor-7/temp"));
        assert!(!a.can_publish(Some("bob"), "sensor-7", "devices/sensor-8/temp"));
        assert!(!a.can_publish(Some("bob"), "+", "devices/x/temp"));
        assert!(a.can_read(Some("bob"), "c", "$SYS/broker/uptime"));
    }
}
