//! Tern's configuration: a TOML file → the declared settings → range and cross-field checks → an
//! immutable, validated [`Config`].
//!
//! This module owns the meaning, default and bound of every setting. It must not do IO beyond
//! reading the one file in [`Config::load`] and, to validate them, the `[auth]` files it names
//! (parsed by [`crate::auth`]); it must not touch the runtime or any global state, and
//! must never "fix" a bad value by clamping it: a value outside its bound is refused with an
//! error that names the file, line, column, dotted key and reason, e.g.
//!
//! ```text
//! tern.toml:12:16: limits.inflight_max: must be between 1 and 65535 (got 0)
//! ```
//!
//! Rules every setting follows:
//!
//! - Every limit has a documented default and a maximum. **0 never means unlimited.** The
//!   settings that accept 0 take it as a real value: [`LimitsConfig::topic_alias_max`] (0 = the
//!   client may not use topic aliases), [`RuntimeConfig::spin_before_park_us`] (0 = park without
//!   spinning), `limits.user_properties_max` and `limits.user_property_bytes_max` (0 = no User
//!   Properties accepted) and a bridge topic's `qos` (0 = QoS 0); the test
//!   `bounds_fit_their_field_types` lists them.
//! - Limits are named `<thing>_<unit>_max`.
//! - Unknown keys are errors, so a typo is never silently ignored.
//!
//! # One declaration per setting
//!
//! Each table of the file is one `settings!` block, and each key one line in it: its doc comment,
//! name, type, default and (for integers) bound:
//!
//! ```text
//! /// Outgoing QoS 1/2 window per client ... Default 32.
//! inflight_max: u16 = 32, 1..=65535;
//! ```
//!
//! From that line follow the public field, its default ([`Default`]), the serde shape of the key
//! in the file (unknown keys refused), the bound check (on the file's value before it is narrowed
//! to the field's type, and again in [`Config::validate`]), where the key is for later errors
//! ([`KeyPositions`]), and its entry in [`Config::reference`], the generated documentation of
//! every key. A unit test checks that the example `tern.toml` at the repository root documents
//! every declared key with its default and parses to exactly [`Config::default()`]. Rules that
//! tie several keys together are written by hand below the declarations.
//!
//! How errors get their position: TOML syntax errors come from the `toml` crate with a byte span
//! (and no key); unknown-key and wrong-type errors with a span and, through
//! `serde_path_to_error`, the dotted path of the key; range and cross-field errors use the spans
//! recorded from `toml::Spanned` values.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Spanned;

// ------------------------------------------------------------------------------------------------
// The declaration macro.
// ------------------------------------------------------------------------------------------------

/// Declares one table of the configuration file: the public struct (one field per key) and its
/// [`Default`], raw serde shape, conversion, bound checks and documentation. Each key is
///
/// ```text
/// /// doc (the first line is its summary in the generated reference)
/// field [as "toml_name"]: Type = default [, lo..=hi];
/// ```
///
/// A bound (`lo..=hi`, inclusive, written as `i64` expressions; wrap a compound one in
/// parentheses) makes the key an integer in the file, checked before it is narrowed to `Type`.
/// A `Type` that is itself a declared table (or a `Vec` / `Option` of one) is a nested table.
macro_rules! settings {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident ($raw:ident) {
            $(
                $(#[doc = $doc:literal])*
                $field:ident $(as $alias:literal)? : $ty:ty = $default:expr $(, $lo:tt ..= $hi:tt)? ;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $raw {
            $(
                $(#[serde(rename = $alias)])?
                #[serde(default)]
                $field: Option<settings!(@field $ty $(, $lo)?)>,
            )*
        }

        impl Section for $name {
            type Raw = $raw;

            fn apply(&mut self, raw: $raw, prefix: &str, spans: &mut Spans) -> Result<(), Issue> {
                $(
                    if let Some(value) = raw.$field {
                        let key = format!("{prefix}{}", settings!(@name $field $(as $alias)?));
                        self.$field = settings!(@convert value, &key, spans, $ty $(, $lo, $hi)?)?;
                    }
                )*
                Ok(())
            }

            fn check_bounds(&self, prefix: &str, spans: &Spans) -> Result<(), Issue> {
                $(
                    settings!(@check (&self.$field), prefix, spans,
                        settings!(@name $field $(as $alias)?) $(, $lo, $hi)?);
                )*
                Ok(())
            }

            fn describe_keys(path: &str, out: &mut Vec<TableDoc>) {
                let defaults = Self::default();
                let mut keys = Vec::new();
                $(
                    let name = settings!(@name $field $(as $alias)?);
                    if <$ty as Setting>::TABLE {
                        let first = out.len();
                        <$ty as Setting>::describe(&join(path, name), false, out);
                        if !Setting::present(&defaults.$field) {
                            out[first..].iter_mut().for_each(|t| t.optional = true);
                        }
                    } else {
                        keys.push(KeyDoc {
                            key: name,
                            default: Setting::toml(&defaults.$field),
                            bound: settings!(@bound $(, $lo, $hi)?),
                            doc: concat!($($doc, "\n"),*),
                        });
                    }
                )*
                if !keys.is_empty() {
                    // Before the nested tables it leads: a table's own keys come first.
                    let at = out.iter().position(|t| t.path.starts_with(&format!("{path}.")));
                    let doc = TableDoc {
                        path: path.to_owned(),
                        array: false,
                        doc: concat!($($sdoc, "\n"),*),
                        keys,
                        optional: false,
                    };
                    out.insert(at.unwrap_or(out.len()), doc);
                }
            }
        }

        impl Setting for $name {
            type Raw = $raw;
            // A table has no span of its own: `toml::Spanned` cannot read a table made by
            // dotted keys (`limits.inflight_max = 1`).
            type Field = $raw;
            const TABLE: bool = true;

            fn split(field: $raw) -> (Option<Range<usize>>, $raw) {
                (None, field)
            }

            fn from_raw(raw: $raw, key: &str, spans: &mut Spans) -> Result<Self, Issue> {
                let mut value = Self::default();
                let prefix = if key.is_empty() { String::new() } else { format!("{key}.") };
                value.apply(raw, &prefix, spans)?;
                Finish::finish(&mut value, key, spans)?;
                Ok(value)
            }

            fn check_nested(&self, key: &str, spans: &Spans) -> Result<(), Issue> {
                self.check_bounds(&format!("{key}."), spans)
            }

            fn describe(path: &str, array: bool, out: &mut Vec<TableDoc>) {
                let first = out.len();
                <$name as Section>::describe_keys(path, out);
                if let Some(t) = out[first..].iter_mut().find(|t| t.path == path) {
                    t.array = array;
                }
            }
        }
    };

    (@field $ty:ty, $lo:tt) => { Spanned<i64> };
    (@field $ty:ty) => { <$ty as Setting>::Field };

    (@name $field:ident as $alias:literal) => { $alias };
    (@name $field:ident) => { stringify!($field) };

    (@convert $value:expr, $key:expr, $spans:ident, $ty:ty, $lo:tt, $hi:tt) => {{
        $spans.insert($key, $value.span());
        bounded::<$ty>($value.into_inner(), $key, $spans, Bound { lo: $lo, hi: $hi })
    }};
    (@convert $value:expr, $key:expr, $spans:ident, $ty:ty) => {
        <$ty as Setting>::from_field($value, $key, $spans)
    };

    (@check $value:expr, $prefix:ident, $spans:ident, $name:expr, $lo:tt, $hi:tt) => {
        if let Some(v) = Int::wide($value) {
            Bound { lo: $lo, hi: $hi }.check(&format!("{}{}", $prefix, $name), v, $spans)?;
        }
    };
    (@check $value:expr, $prefix:ident, $spans:ident, $name:expr) => {
        Setting::check_nested($value, &format!("{}{}", $prefix, $name), $spans)?;
    };

    (@bound , $lo:tt, $hi:tt) => { Some(($lo, $hi)) };
    (@bound) => { None };
}

/// A declared table (generated by `settings!`).
trait Section: Default {
    /// The table as serde reads it: every key optional.
    type Raw;

    /// Overwrites the fields whose keys the file has; `prefix` is the table's dotted path and
    /// a `.` (empty at the top).
    fn apply(&mut self, raw: Self::Raw, prefix: &str, spans: &mut Spans) -> Result<(), Issue>;

    /// Checks every declared bound, nested tables included.
    fn check_bounds(&self, prefix: &str, spans: &Spans) -> Result<(), Issue>;

    /// Appends the documentation of the table at `path` and of its nested tables.
    fn describe_keys(path: &str, out: &mut Vec<TableDoc>);
}

/// Checks that need the whole table once it is read (a required key, a default that depends on
/// another key). Most tables have none.
trait Finish {
    fn finish(&mut self, _key: &str, _spans: &Spans) -> Result<(), Issue> {
        Ok(())
    }
}

/// A type a key can have: how it is read from the file and written in the documentation.
trait Setting: Sized {
    /// What serde reads from the file.
    type Raw: DeserializeOwned;
    /// How the key's value is held in its table: [`Spanned`] to know where it is, for all
    /// but tables.
    type Field: DeserializeOwned;
    /// Whether the key is a table of its own (documented as one).
    const TABLE: bool = false;

    /// Where the value is, if known, and the value.
    fn split(field: Self::Field) -> (Option<Range<usize>>, Self::Raw);

    /// The value from the file at `key`, recording where it is.
    fn from_field(field: Self::Field, key: &str, spans: &mut Spans) -> Result<Self, Issue> {
        let (span, raw) = Self::split(field);
        if let Some(span) = span {
            spans.insert(key, span);
        }
        Self::from_raw(raw, key, spans)
    }

    /// The value from what the file holds at `key`.
    fn from_raw(raw: Self::Raw, key: &str, spans: &mut Spans) -> Result<Self, Issue>;

    /// The value as TOML, for the documentation; `None` when it is absent or a table.
    fn toml(&self) -> Option<String> {
        None
    }

    /// Whether the default value is there at all (an absent option or an empty list is not).
    fn present(&self) -> bool {
        true
    }

    /// Checks the bounds of a nested table (nothing for a plain value).
    fn check_nested(&self, _key: &str, _spans: &Spans) -> Result<(), Issue> {
        Ok(())
    }

    /// Appends the documentation of a nested table at `path`.
    fn describe(_path: &str, _array: bool, _out: &mut Vec<TableDoc>) {}
}

/// The documentation of one table, generated from its declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDoc {
    /// Dotted path, e.g. `limits` or `listener.redirect`.
    pub path: String,
    /// Whether the table is an array of tables (`[[listener]]`).
    pub array: bool,
    /// What the table is for.
    pub doc: &'static str,
    /// Its keys, in declaration order.
    pub keys: Vec<KeyDoc>,
    /// Whether the table is absent from the default configuration (an optional table, or an
    /// array of tables that is empty by default).
    pub optional: bool,
}

/// The documentation of one key, generated from its declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key as written in the file.
    pub key: &'static str,
    /// Its default as TOML, or `None` when it is absent by default.
    pub default: Option<String>,
    /// Its inclusive bound, for integers.
    pub bound: Option<(i64, i64)>,
    /// What it means (the declaration's doc comment).
    pub doc: &'static str,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl<S: Setting> Setting for Vec<S> {
    type Raw = Vec<S::Field>;
    type Field = Spanned<Vec<S::Field>>;
    const TABLE: bool = S::TABLE;

    fn split(field: Self::Field) -> (Option<Range<usize>>, Self::Raw) {
        (Some(field.span()), field.into_inner())
    }

    /// A file with the array replaces the default list entirely.
    fn from_raw(raw: Self::Raw, key: &str, spans: &mut Spans) -> Result<Self, Issue> {
        let mut list = Vec::with_capacity(raw.len());
        for (i, entry) in raw.into_iter().enumerate() {
            list.push(S::from_field(entry, &format!("{key}[{i}]"), spans)?);
        }
        Ok(list)
    }

    fn present(&self) -> bool {
        !self.is_empty()
    }

    fn check_nested(&self, key: &str, spans: &Spans) -> Result<(), Issue> {
        for (i, entry) in self.iter().enumerate() {
            entry.check_nested(&format!("{key}[{i}]"), spans)?;
        }
        Ok(())
    }

    fn describe(path: &str, _array: bool, out: &mut Vec<TableDoc>) {
        S::describe(path, true, out);
    }
}

impl<T: Setting> Setting for Option<T> {
    type Raw = T::Raw;
    type Field = T::Field;
    const TABLE: bool = T::TABLE;

    fn split(field: T::Field) -> (Option<Range<usize>>, T::Raw) {
        T::split(field)
    }

    fn from_raw(raw: T::Raw, key: &str, spans: &mut Spans) -> Result<Self, Issue> {
        T::from_raw(raw, key, spans).map(Some)
    }

    fn toml(&self) -> Option<String> {
        self.as_ref().and_then(Setting::toml)
    }

    fn present(&self) -> bool {
        self.is_some()
    }

    fn check_nested(&self, key: &str, spans: &Spans) -> Result<(), Issue> {
        self.as_ref().map_or(Ok(()), |v| v.check_nested(key, spans))
    }

    fn describe(path: &str, array: bool, out: &mut Vec<TableDoc>) {
        T::describe(path, array, out);
    }
}

/// Values the file holds as they are (strings, booleans, paths, maps).
macro_rules! plain_setting {
    ($($ty:ty => $toml:expr),* $(,)?) => {$(
        impl Setting for $ty {
            type Raw = $ty;

            type Field = Spanned<Self::Raw>;

            fn split(field: Self::Field) -> (Option<Range<usize>>, Self::Raw) {
                (Some(field.span()), field.into_inner())
            }

            fn from_raw(raw: $ty, _key: &str, _spans: &mut Spans) -> Result<Self, Issue> {
                Ok(raw)
            }

            fn toml(&self) -> Option<String> {
                let to_toml: fn(&$ty) -> Option<String> = $toml;
                to_toml(self)
            }
        }
    )*};
}

plain_setting! {
    bool => |v| Some(v.to_string()),
    String => |v| Some(toml_string(v)),
    PathBuf => |v| Some(toml_string(&v.display().to_string())),
    BTreeMap<String, SharedStrategy> => |v| {
        let entries: Vec<String> =
            v.iter().map(|(k, s)| format!("{} = \"{}\"", toml_string(k), s.as_str())).collect();
        Some(format!("{{ {} }}", entries.join(", ")))
    },
}

/// The enums of the file: read by their serde names, documented by `as_str`.
macro_rules! enum_setting {
    ($($ty:ty),* $(,)?) => {$(
        impl Setting for $ty {
            type Raw = $ty;

            type Field = Spanned<Self::Raw>;

            fn split(field: Self::Field) -> (Option<Range<usize>>, Self::Raw) {
                (Some(field.span()), field.into_inner())
            }

            fn from_raw(raw: $ty, _key: &str, _spans: &mut Spans) -> Result<Self, Issue> {
                Ok(raw)
            }

            fn toml(&self) -> Option<String> {
                Some(format!("\"{}\"", self.as_str()))
            }
        }
    )*};
}

enum_setting!(
    FsyncMode,
    BridgeProtocol,
    BridgeDirection,
    SharedStrategy,
    Transport,
    QueueOverflow,
    SlowConsumer,
    LogLevel,
    LogFormat,
);

/// `IP:port`; no host names (no DNS at startup).
impl Setting for SocketAddr {
    type Raw = String;
    type Field = Spanned<String>;

    fn split(field: Self::Field) -> (Option<Range<usize>>, Self::Raw) {
        (Some(field.span()), field.into_inner())
    }

    fn from_raw(raw: String, key: &str, spans: &mut Spans) -> Result<Self, Issue> {
        raw.parse().map_err(|_| {
            let message = format!(
                "not an IP address and port like \"127.0.0.1:1883\" or \"[::]:1883\" (got \
                 {raw:?}; host names are not accepted)"
            );
            spans.issue(&[key], message)
        })
    }

    fn toml(&self) -> Option<String> {
        Some(format!("\"{self}\""))
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The integer types of bounded keys; `Option` for a key that is absent by default.
trait Int: Sized {
    /// The value from the file, `None` when it does not fit the type.
    fn narrow(value: i64) -> Option<Self>;
    /// The value for a bound check, `None` when absent; saturating, which is exact because
    /// every bound lies inside `i64`.
    fn wide(&self) -> Option<i64>;
}

macro_rules! int_setting {
    ($($ty:ty),*) => {$(
        impl Int for $ty {
            fn narrow(value: i64) -> Option<Self> {
                <$ty>::try_from(value).ok()
            }

            fn wide(&self) -> Option<i64> {
                Some(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }

        impl Setting for $ty {
            type Raw = i64;

            type Field = Spanned<Self::Raw>;

            fn split(field: Self::Field) -> (Option<Range<usize>>, Self::Raw) {
                (Some(field.span()), field.into_inner())
            }

            fn from_raw(raw: i64, key: &str, spans: &mut Spans) -> Result<Self, Issue> {
                <$ty>::try_from(raw)
                    .map_err(|_| spans.issue(&[key], format!("out of range (got {raw})")))
            }

            fn toml(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}

int_setting!(u8, u16, u32, u64, usize);

impl<T: Int> Int for Option<T> {
    fn narrow(value: i64) -> Option<Self> {
        T::narrow(value).map(Some)
    }

    fn wide(&self) -> Option<i64> {
        self.as_ref().and_then(Int::wide)
    }
}

/// Bound-checks and narrows an integer from the file, so a value too big for its type gets the
/// same message as any other out-of-range value.
fn bounded<T: Int>(value: i64, key: &str, spans: &Spans, bound: Bound) -> Result<T, Issue> {
    bound.check(key, value, spans)?;
    // Every bound lies inside its field's type (a unit test checks it), so this only fails on a
    // programming error; report it like an out-of-range value anyway.
    T::narrow(value).ok_or_else(|| spans.issue(&[key], format!("out of range (got {value})")))
}

/// An inclusive range of allowed values.
#[derive(Clone, Copy, Debug)]
struct Bound {
    lo: i64,
    hi: i64,
}

impl Bound {
    fn check(self, key: &str, value: i64, spans: &Spans) -> Result<(), Issue> {
        if (self.lo..=self.hi).contains(&value) {
            return Ok(());
        }
        let message = format!("must be between {} and {} (got {value})", self.lo, self.hi);
        Err(spans.issue(&[key], message))
    }
}

/// A length or count, for a bound check; saturating, which is exact because every bound lies
/// inside `i64`.
fn wide(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

const GIB: i64 = 1 << 30;
/// Largest configuration file read, so a wrong path (a log file, a device) cannot eat memory.
const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;
/// Most shards: the bound of `broker.shards` and of the per-core default.
const SHARDS_MAX: usize = 256;
const LISTENERS: Bound = Bound { lo: 1, hi: 16 };
const REDIRECT_REFERENCE_BYTES: Bound = Bound { lo: 1, hi: 1024 };
const WS_PATH_BYTES: Bound = Bound { lo: 1, hi: 256 };
const RESPONSE_INFORMATION_PREFIX_BYTES_MAX: usize = 256;
const BRIDGES: Bound = Bound { lo: 0, hi: 16 };
const BRIDGE_TOPICS: Bound = Bound { lo: 1, hi: 64 };
/// The WebSocket path mqtt.js, paho and Mosquitto users expect.
const DEFAULT_WS_PATH: &str = "/mqtt";
/// A shorter bearer token is refused: it could be guessed.
const ADMIN_TOKEN_BYTES_MIN: usize = 16;

// ------------------------------------------------------------------------------------------------
// The value types of keys.
// ------------------------------------------------------------------------------------------------

/// The MQTT version a bridge speaks to its remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum BridgeProtocol {
    /// MQTT 3.1.1.
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[serde(rename = "5")]
    V5,
}

impl BridgeProtocol {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            BridgeProtocol::V311 => "3.1.1",
            BridgeProtocol::V5 => "5",
        }
    }
}

/// Which way a bridge topic is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BridgeDirection {
    /// Local → remote.
    Out,
    /// Remote → local.
    In,
    /// Both ways; a message that came over the bridge is not sent back.
    Both,
}

impl BridgeDirection {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            BridgeDirection::Out => "out",
            BridgeDirection::In => "in",
            BridgeDirection::Both => "both",
        }
    }

    /// Local messages go to the remote.
    pub const fn outgoing(self) -> bool {
        matches!(self, BridgeDirection::Out | BridgeDirection::Both)
    }

    /// Remote messages come here.
    pub const fn incoming(self) -> bool {
        matches!(self, BridgeDirection::In | BridgeDirection::Both)
    }
}

pub use crate::shard::{SharedStrategy, SharedSubscriptionsConfig, SHARED_GROUP_OVERRIDES_MAX};

/// Wire transport of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Transport {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS 1.2 or 1.3 (rustls). Needs `certfile` and `keyfile`.
    Tls,
    /// MQTT over WebSocket (RFC 6455), subprotocol `mqtt`, on the path `ws_path`.
    Ws,
    /// MQTT over WebSocket over TLS. Needs `certfile` and `keyfile`.
    Wss,
}

impl Transport {
    /// Whether the transport runs over TLS (and so takes the certificate settings).
    pub const fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// Whether the transport is WebSocket (and so takes `ws_path`).
    pub const fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

impl Transport {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// What happens to a slow consumer (`limits.slow_consumer_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Close its connection (v5 reason 0x97); its publishers are read again.
    Disconnect,
    /// Drop new messages for it alone (counted) until it drains; its publishers are read again.
    Drop,
}

impl SlowConsumer {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            SlowConsumer::Disconnect => "disconnect",
            SlowConsumer::Drop => "drop",
        }
    }
}

/// What a full session queue drops.
///
/// The default is [`DropNewest`](Self::DropNewest): it is what Mosquitto does, costs nothing
/// (the new message is simply not queued, and counted), and never discards a message the broker
/// had already accepted for the session, so what the client eventually receives is an
/// uninterrupted prefix of the stream. Choose [`DropOldest`](Self::DropOldest) for telemetry
/// where only recent values matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum QueueOverflow {
    /// Drop the oldest queued message (not one already in flight) to make room.
    DropOldest,
    /// Drop the message that does not fit.
    DropNewest,
}

impl QueueOverflow {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            QueueOverflow::DropOldest => "drop_oldest",
            QueueOverflow::DropNewest => "drop_newest",
        }
    }
}

/// When the write-ahead log is synced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FsyncMode {
    /// Before every acknowledgement that depends on a record (group commit).
    Always,
    /// Every `fsync_interval_ms`; acknowledgements are not held (a crash loses up to one
    /// interval of acknowledged changes).
    Interval,
    /// Never (the OS writes back when it likes): for tests.
    Never,
}

impl FsyncMode {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Interval => "interval",
            FsyncMode::Never => "never",
        }
    }
}

/// The shape of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// One human-readable line per event; coloured only on a terminal without `NO_COLOR`; under
    /// systemd (`JOURNAL_STREAM` set) without a timestamp and with a `<N>` priority prefix.
    Text,
    /// One JSON object per line: timestamp, level, target, fields, and the connection span's
    /// fields (shard, peer, client id), for log shippers.
    Json,
}

impl LogFormat {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A log level, from most to least verbose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogLevel {
    /// Everything, including per-packet detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the broker handled.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The name used in the configuration file (also a valid `tracing` filter directive).
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The declarations: one line per key.
// ------------------------------------------------------------------------------------------------

settings! {
    /// The whole, validated broker configuration. Built by [`Config::load`],
    /// [`Config::from_str_named`] or [`Config::default`]; cloned once into each shard at startup
    /// and never changed afterwards (there is no hot reload of the configuration; only the files
    /// it names, the TLS certificates, are read again on SIGHUP).
    ///
    /// The fields are public so tests can build variants; code that builds one by hand should
    /// call [`Config::validate`] before using it.
    pub struct Config(RawConfig) {
        /// `[broker]`: process-wide settings.
        broker: BrokerConfig = BrokerConfig::default();
        /// `[[listener]]`: the sockets to accept clients on, in file order. Default: one TCP
        /// listener on `127.0.0.1:1883` with anonymous access (local-only, like Mosquitto 2). A
        /// file that has any `[[listener]]` replaces the default list entirely. Bound: 1..=16
        /// listeners.
        listeners as "listener": Vec<ListenerConfig> = vec![ListenerConfig::default()];
        /// `[limits]`: protocol and resource limits.
        limits: LimitsConfig = LimitsConfig::default();
        /// `[runtime]`: options passed explicitly to the io_uring runtime (glommio).
        runtime: RuntimeConfig = RuntimeConfig::default();
        /// `[log]`: logging.
        log: LogConfig = LogConfig::default();
        /// `[auth]`: the password and ACL files.
        auth: AuthConfig = AuthConfig::default();
        /// `[admin]`: the HTTP listener for `/metrics`, health checks and the admin API.
        admin: AdminConfig = AdminConfig::default();
        /// `[[bridge]]`: connections to other brokers that forward topics both ways. Default
        /// none. Bound: 0..=16 bridges.
        bridges as "bridge": Vec<BridgeConfig> = Vec::new();
        /// `[shared_subscriptions]`: how a shared subscription group picks a member.
        shared_subscriptions: SharedSubscriptionsConfig = SharedSubscriptionsConfig::default();
        /// `[persistence]`: durable sessions and retained messages (off without a directory).
        persistence: PersistenceConfig = PersistenceConfig::default();
    }
}

settings! {
    /// `[persistence]`: durable sessions and retained messages (issue 12). Off unless a
    /// directory is given (here or with `tern --data-dir DIR`).
    pub struct PersistenceConfig(RawPersistence) {
        /// The data directory: one write-ahead log per shard and a lock file. Created 0700 when
        /// missing; locked while the broker runs. Default: absent (in memory only).
        dir: Option<PathBuf> = None;
        /// When appended records reach the disk. Default [`FsyncMode::Always`].
        fsync: FsyncMode = FsyncMode::Always;
        /// Milliseconds between syncs with `fsync = "interval"` (and writes with "never").
        /// Default 100. Bound: 1..=60000.
        fsync_interval_ms: u32 = 100, 1..=60_000;
        /// A log segment that has grown past this many bytes is closed and the next one started
        /// (then the older ones are compacted away). Default 67108864 (64 MiB). Bound:
        /// 1048576..=1073741824.
        segment_bytes_max: u64 = 67_108_864, 1_048_576..=1_073_741_824;
        /// Records a shard may hold appended but not yet durable; at the bound the shard stops
        /// reading its clients until the log catches up (nothing is dropped; metric
        /// `wal_pending_full`). Default 65536. Bound: 64..=16777216.
        pending_records_max: u32 = 65_536, 64..=16_777_216;
    }
}

settings! {
    /// `[broker]`: process-wide settings.
    pub struct BrokerConfig(RawBroker) {
        /// Number of shards (one thread and one io_uring each). Default: absent, meaning one
        /// shard per available core (see [`Config::shard_count`]). Bound: 1..=256.
        shards: Option<u16> = None, 1..=256;
        /// Seconds between two publications of the `$SYS/broker/...` statistics topics.
        /// Default 10. Bound: 1..=3600.
        sys_interval_secs: u32 = 10, 1..=3600;
        /// MQTT v5 Response Information (§3.2.2.3.15) given to clients that ask for it: this
        /// prefix followed by the client id and `/`. An empty string means "not offered".
        /// Default `"responses/"`. Bound: at most 256 bytes.
        response_information_prefix: String = "responses/".into();
        /// Refuse v5 messages whose Payload Format Indicator says UTF-8 when the payload is not
        /// (PUBACK/PUBREC or DISCONNECT 0x99, CONNACK 0x99 for a will; §3.3.2.3.2 lets a server
        /// check). Default true.
        check_payload_format: bool = true;
        /// The older name of [`AdminConfig::bind`] (the HTTP listener of `/metrics`, the health
        /// checks and the admin API); setting both is an error. Default absent: off.
        metrics_bind: Option<SocketAddr> = None;
    }
}

settings! {
    /// One `[[listener]]`: a socket clients connect to, and what it allows.
    pub struct ListenerConfig(RawListener) {
        /// Address and port to bind, e.g. `127.0.0.1:1883` or `[::]:1883`. Host names are not
        /// accepted (no DNS at startup). Port 0 picks a free port (tests). Default
        /// `127.0.0.1:1883`. Two listeners may not overlap (same port and the same or an
        /// unspecified address), because with `SO_REUSEPORT` both binds would succeed and
        /// silently split the clients.
        bind: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 1883));
        /// Wire transport. Default [`Transport::Tcp`].
        transport: Transport = Transport::Tcp;
        /// Whether a client may connect without a user name. Default `true`, which is safe only
        /// because the default listener is bound to the loopback address.
        allow_anonymous: bool = true;
        /// Connections accepted on this listener, summed over all shards; one more is refused
        /// at accept. Default 100_000. Bound: 1..=10_000_000. Worst-case memory: each connection
        /// holds its buffers plus one session (see [`LimitsConfig`] for the per-session bounds).
        connections_max: u32 = 100_000, 1..=10_000_000;
        /// MQTT v5 server redirection for every client of this listener (CONNACK with a Server
        /// Reference). Default: absent. Kept as data; acting on it is the session's job.
        redirect: Option<Redirect> = None;
        /// `tls` / `wss` only, required there: the server's PEM certificate chain, leaf first.
        /// Read at start and again on SIGHUP; a relative path is relative to the working
        /// directory.
        certfile: Option<PathBuf> = None;
        /// `tls` / `wss` only, required there: the PEM private key of `certfile` (PKCS#8,
        /// PKCS#1 or SEC1). Read at start and on SIGHUP.
        keyfile: Option<PathBuf> = None;
        /// `tls` / `wss` only: PEM CA certificates that client certificates must chain to. With
        /// it, a client certificate is requested and verified when presented; required by
        /// [`require_certificate`](Self::require_certificate). Default: absent (no client
        /// certificates are requested).
        cafile: Option<PathBuf> = None;
        /// `tls` / `wss` only: refuse a TLS client that presents no valid certificate (mutual
        /// TLS). Needs `cafile`. Default `false`.
        require_certificate: bool = false;
        /// `tls` / `wss` only: the subject CN of the client certificate becomes the client's
        /// user name, replacing any user name in CONNECT. Needs `require_certificate`. A
        /// certificate without a CN is refused at the handshake. Default `false`.
        use_identity_as_username: bool = false;
        /// `ws` / `wss` only: the HTTP path the WebSocket upgrade must ask for; any other path
        /// gets 404. Default `"/mqtt"` (what mqtt.js and paho use). Bound: 1..=256 bytes,
        /// starting with `/`, printable ASCII without spaces, `?` or `#`.
        ws_path: String = DEFAULT_WS_PATH.to_owned();
    }
}

settings! {
    /// MQTT v5 server redirection (a `[listener.redirect]` table).
    pub struct Redirect(RawRedirect) {
        /// The Server Reference sent to the client, e.g. `"other.example.com:1883"`. Required.
        /// Bound: 1..=1024 bytes, because it is copied into every CONNACK of the listener.
        reference: String = String::new();
        /// `true`: reason code 0x9D (Server moved); `false`: 0x9C (Use another server).
        /// Default `false`.
        permanent: bool = false;
    }
}

settings! {
    /// `[limits]`: protocol and resource limits. None of them can be 0 except
    /// [`topic_alias_max`](Self::topic_alias_max).
    ///
    /// Worst-case memory per client session is roughly `session_queue_bytes_max` (queued
    /// messages, in-flight ones included) + `subscriptions_per_client_max * topic_bytes_max`
    /// (filters) + `topic_alias_max * topic_bytes_max` (aliases) + one packet of
    /// `packet_size_bytes_max` being read. At the defaults that is about 16 MiB + 256 KiB + 64
    /// KiB + 1 MiB. The broker-wide sum over `sessions_max` sessions is NOT a realistic bound (16
    /// TiB at the defaults): these limits stop one client from taking everything, they are not
    /// a global memory budget.
    pub struct LimitsConfig(RawLimits) {
        /// Largest MQTT packet accepted or sent, fixed header included; checked at the fixed
        /// header, before the body is buffered, and advertised as v5 Maximum Packet Size.
        /// Default 1 MiB (1_048_576). Bound: 64..=268_435_460 (the protocol maximum: a remaining
        /// length of 268_435_455 plus a 5-byte fixed header). Worst-case memory: one packet of
        /// this size per connection being read.
        packet_size_bytes_max: u32 = 1 << 20, 64..=268_435_460;
        /// Outgoing QoS 1/2 window per client: messages sent and not yet acknowledged. Also
        /// advertised to v5 clients as Receive Maximum (their window towards us). Default 32.
        /// Bound: 1..=65535. In-flight messages count towards the session queue limits.
        inflight_max: u16 = 32, 1..=65535;
        /// Messages queued for one session (offline, or online but beyond the in-flight
        /// window). Default 1000. Bound: 1..=1_000_000. On overflow,
        /// [`queue_overflow`](Self::queue_overflow) applies.
        session_queue_messages_max: u32 = 1000, 1..=1_000_000;
        /// Payload bytes queued for one session. Default 16 MiB. Bound: 1..=1 GiB, and at least
        /// `packet_size_bytes_max` so one maximum-size message always fits. Worst-case memory:
        /// this much per session.
        session_queue_bytes_max: u64 = 16 << 20, 1..=GIB;
        /// What to drop when a session queue is full. Default [`QueueOverflow::DropNewest`].
        queue_overflow: QueueOverflow = QueueOverflow::DropNewest;
        /// Retained messages kept by the whole broker. Default 100_000. Bound:
        /// 1..=100_000_000. A retained message beyond this is not stored (the publish itself
        /// still goes through).
        retained_messages_max: u32 = 100_000, 1..=100_000_000;
        /// Retained payload bytes kept by the whole broker. Default 256 MiB. Bound: 1..=64 GiB,
        /// and at least `packet_size_bytes_max`. Worst-case memory: this much, plus the topics.
        retained_bytes_max: u64 = 256 << 20, 1..=(64 * GIB);
        /// Levels (`/`-separated parts) in a topic name or filter. Default 32. Bound: 1..=256.
        /// Topics up to 32 levels are matched with no allocation (the trie's inline stack);
        /// deeper ones, when allowed here, spill the match stack to the heap.
        topic_levels_max: u16 = 32, 1..=256;
        /// Bytes in a topic name or filter. Default 1024. Bound: 1..=65535 (the MQTT string
        /// maximum).
        topic_bytes_max: u16 = 1024, 1..=65535;
        /// Bytes in a client identifier. Default 256. Bound: 23..=65535: the spec requires
        /// every server to accept 1 to 23 bytes [MQTT-3.1.3-5].
        client_id_bytes_max: u16 = 256, 23..=65535;
        /// Subscriptions (topic filters) one client may hold; more are refused with 0x97
        /// (Quota exceeded). Default 256. Bound: 1..=100_000. Worst-case memory: this times
        /// `topic_bytes_max` per client (256 KiB at the defaults).
        subscriptions_per_client_max: u32 = 256, 1..=100_000;
        /// Largest first packet of a connection (the CONNECT) and of each AUTH packet before
        /// the client is authenticated, fixed header included; checked at the fixed header,
        /// before the body is buffered. A first packet that is not a CONNECT is refused from
        /// its first byte. Default 98_304 (96 KiB): a will payload of the MQTT maximum (65_535
        /// bytes) plus 32 KiB for the will topic, client id, credentials and properties.
        /// Bound: 64..=268_435_460; the bound in force is the smaller of this and
        /// `packet_size_bytes_max`. Worst-case memory: this much per connection that has not
        /// finished its CONNECT.
        preauth_packet_bytes_max: u32 = 96 << 10, 64..=268_435_460;
        /// User Properties one packet may carry (all of its property lists together: a
        /// CONNECT's and its will's). More: the packet is refused with 0x95 (CONNECT: CONNACK
        /// 0x95; later: DISCONNECT 0x95). Default 128. Bound: 0..=65_535. Each costs about 64
        /// bytes of heap on top of its text while the packet lives.
        user_properties_max: u32 = 128, 0..=65535;
        /// Bytes of names plus values of the User Properties of one packet; more is refused
        /// like [`user_properties_max`](Self::user_properties_max). Default 32_768. Bound:
        /// 0..=268_435_455.
        user_property_bytes_max: u32 = 32 << 10, 0..=268_435_455;
        /// Seconds a new connection may take to send its CONNECT before it is closed; the same
        /// time again bounds the wait for CONNACK after it (registry and takeover), after which
        /// the connection is closed. Default 10. Bound: 1..=300.
        connect_timeout_secs: u32 = 10, 1..=300;
        /// Seconds a client may accept no bytes of its output before its connection is closed
        /// (and its will published). Default 30. Bound: 1..=3600.
        write_timeout_secs: u32 = 30, 1..=3600;
        /// Milliseconds a connection (any transport) that was parked and resumed (by its
        /// client's bytes or by output for it) keeps its task once it has nothing to read or write,
        /// before it parks again: its task ends and its socket waits in the shard's epoll set,
        /// about 1 KiB less per idle connection (a new connection parks as soon as it is idle
        /// after CONNACK). Shorter saves memory sooner; longer saves a park and a resume (a
        /// `dup`, two `epoll_ctl` and a task spawn) for clients that talk every few hundred
        /// ms. Default 1000. Bound: 10..=3_600_000.
        park_idle_ms: u32 = 1000, 10..=3_600_000;
        /// Connections per shard between accept and CONNACK at once (TLS or WebSocket
        /// handshake, waiting for CONNECT, for the client-id registry or a takeover). At the
        /// bound the shard stops accepting until one settles; the next clients wait in the
        /// kernel's listen backlog, and each wait counts in `accepts_deferred`. A storm of
        /// reconnecting devices then holds a bounded number of handshake states (a TLS
        /// handshake holds ~30-60 KB) and leaves the shard time for its connected clients.
        /// Silent connections hold their place up to `connect_timeout_secs`. Default 1024.
        /// Bound: 1..=1_000_000.
        connecting_max: u32 = 1024, 1..=1_000_000;
        /// Bytes of messages the whole broker may hold for delivery (queued, in flight,
        /// crossing between shards, wills, retained messages owed after a SUBACK; the retained
        /// store has its own bounds), each at payload + topic + properties + overhead. When
        /// reached, publishers' reads pause, new clean-start connections are refused and new
        /// queue entries are dropped. Default 2 GiB. Bound: 1 MiB..=1 TiB, and at least
        /// `packet_size_bytes_max`.
        memory_budget_bytes: u64 = 2 << 30, (1 << 20)..=(1024 * GIB);
        /// Largest keep-alive a client may use; a larger (or 0 = none) request is replaced by
        /// this (v5 Server Keep Alive) so no connection can sit idle longer. Default 3600.
        /// Bound: 1..=65535.
        keepalive_secs_max: u16 = 3600, 1..=65535;
        /// Persistent sessions kept, connected or not; a new one beyond this is refused with
        /// 0x97. Default 1_000_000. Bound: 1..=100_000_000.
        sessions_max: u32 = 1_000_000, 1..=100_000_000;
        /// Cap on the v5 Session Expiry Interval a client may ask for (and the expiry given to
        /// v3 clean_session=0 sessions). Default 604_800 (7 days). Bound: 1..=31_536_000 (365
        /// days); "never expires" (0xFFFFFFFF) is therefore not available.
        session_expiry_secs_max: u32 = 7 * 24 * 3600, 1..=(365 * 24 * 3600);
        /// Inbound topic aliases a v5 client may use (advertised as Topic Alias Maximum).
        /// Default 64. Bound: 0..=4096. **0 is a real value here: the client may not use topic
        /// aliases.** This is the one limit where 0 is allowed. Worst-case memory: this times
        /// `topic_bytes_max` per client (64 KiB at the defaults).
        topic_alias_max: u16 = 64, 0..=4096;
        /// Slots in each cross-shard channel (one channel per ordered pair of shards). When
        /// full, the publisher's connection gets backpressure. Default 1024. Bound: 1..=65536,
        /// and at least `mesh_batch_max`. Worst-case memory: `shards^2` channels of this many
        /// messages each.
        mesh_channel_capacity: u32 = 1024, 1..=65536;
        /// Messages a shard takes from one mesh channel per turn before it yields (bounded work
        /// per turn). Default 64. Bound: 1..=4096.
        mesh_batch_max: u32 = 64, 1..=4096;
        /// Bytes of publishes one shard may have crossing the mesh (sent, not yet handled by
        /// the receiving shard), each at its message cost; beyond it the publishers whose
        /// messages cross the mesh stop being read (until it is half used; the receiver that
        /// drains it says so). Default 256 KiB: what one stalled subscriber on another shard
        /// can hold in flight (issue 9), and below `flow_qos0_queue_bytes_max` minus
        /// `flow_high_water_bytes`, so a subscriber that is only slow loses no QoS 0 to the
        /// overshoot. Bound: 64 KiB..=1 GiB. A threshold, not a store: a larger message still
        /// crosses, and its publisher waits until it is handled.
        mesh_bytes_max: u64 = 256 * 1024, (64 * 1024)..=GIB;
        /// Flow control: messages queued for a connected subscriber at which the publishers
        /// that feed it stop being read (on every shard) until it drains. Deliveries to a
        /// connected subscriber are never dropped by a queue bound. Default 1000. Bound:
        /// 2..=1_000_000.
        flow_high_water_messages: u32 = 1000, 2..=1_000_000;
        /// Queued messages at which the paused publishers are read again. Default 500. Bound:
        /// 1..=999_999, and below `flow_high_water_messages`.
        flow_low_water_messages: u32 = 500, 1..=999_999;
        /// Queued messages at which a connected subscriber is a slow consumer at once (the
        /// memory bound of a connected session's queue). Default 100_000. Bound:
        /// 2..=10_000_000, and at least `flow_high_water_messages`.
        flow_hard_cap_messages: u32 = 100_000, 2..=10_000_000;
        /// Bytes queued and in flight for a connected subscriber (each message at its cost)
        /// at which it is a slow consumer at once: the byte bound of a connected session
        /// whatever its publishers do, a client publishing to its own subscription included
        /// (it is never paused on its own behalf). Default 32 MiB. Bound: 64 KiB..=1 GiB, and
        /// at least `packet_size_bytes_max`.
        flow_hard_cap_bytes: u64 = 32 << 20, (64 * 1024)..=GIB;
        /// Flow control in bytes: bytes queued for a connected subscriber (each message at its
        /// cost) at which the publishers that feed it stop being read, like
        /// `flow_high_water_messages`; they are read again once the queue is also at or under
        /// half of this. Default 262_144 (256 KiB; was 512 KiB: issue 9, a stalled subscriber on
        /// another shard cost up to 4.5 MiB of RSS). Bound: 4 KiB..=1 GiB.
        flow_high_water_bytes: u64 = 256 << 10, 4096..=GIB;
        /// Bytes queued for a connected subscriber past which a new QoS 0 delivery to it is
        /// dropped and counted (`messages_dropped_qos0_slow`) instead of queued (an empty
        /// queue always takes one message). A publisher on the subscriber's shard stops at
        /// the packet that reached the high-water mark (the rest of its read waits); one on
        /// another shard only after what it already sent across the mesh has arrived: this
        /// bounds that overshoot for QoS 0 (issue 9: a stalled subscriber held ~2 000 messages
        /// of 1 KiB past a mark of 1 000 before paused publishers stopped mid-read). QoS 1/2 is never dropped here: the hard caps apply.
        /// Default 786_432 (768 KiB; was 1 MiB): at least `flow_high_water_bytes` plus
        /// `mesh_bytes_max` plus a read, the largest overshoot of a subscriber that is only
        /// slow. Bound: 4 KiB..=1 GiB, and at least `flow_high_water_bytes`. Worst-case
        /// memory: this much per connected subscriber (plus its QoS 1/2 backlog, bounded by
        /// the hard caps).
        flow_qos0_queue_bytes_max: u64 = 768 << 10, 4096..=GIB;
        /// Milliseconds a subscriber may stay above its high-water mark before it is a slow
        /// consumer. Default 30_000. Bound: 100..=3_600_000.
        slow_consumer_timeout_ms: u32 = 30_000, 100..=3_600_000;
        /// What happens to a slow consumer. Default [`SlowConsumer::Disconnect`].
        slow_consumer_policy: SlowConsumer = SlowConsumer::Disconnect;
    }
}

settings! {
    /// `[runtime]`: options handed explicitly to the io_uring runtime instead of trusting its
    /// defaults (glommio reserves 10 MiB of locked io memory by default, more than `ulimit -l`
    /// allows on many machines).
    pub struct RuntimeConfig(RawRuntime) {
        /// Locked memory each shard registers with io_uring for its buffers. Default 65536.
        /// Bound: 4096..=1 GiB. Worst-case memory: this times the shard count, all of it
        /// locked, which must fit in `ulimit -l` (memlock).
        io_memory_bytes: usize = 64 << 10, 4096..=GIB;
        /// Entries in each io_uring submission ring. Default 256. Bound: a power of two in
        /// 8..=32768.
        ring_depth: usize = 256, 8..=32768;
        /// Microseconds a shard spins looking for work before it parks its thread. Default 50.
        /// Bound: 0..=100_000. **0 is a real value: park at once, without spinning** (saves
        /// CPU, costs latency). An idle shard does not spin; a busy one spends up to this much
        /// CPU per wake-up. Effective only with `pin_cores` (glommio spins only on a thread it
        /// bound to a CPU; before issue 10 the key was ignored for that reason).
        spin_before_park_us: u32 = 50, 0..=100_000;
        /// Pin each shard's thread to its own core. Default `true`.
        pin_cores: bool = true;
        /// Microseconds a task may run before glommio asks it to yield (checked at each
        /// connection's turn): how long one flooding connection can delay the others of its
        /// shard. Default 500. Bound: 100..=100_000 (glommio's own default is 100 ms).
        preempt_timer_us: u32 = 500, 100..=100_000;
        /// Let the kernel back the heap with transparent huge pages. Default `false`: the
        /// allocator asks for huge pages on its arena, and then every 2 MiB region touched
        /// counts whole, so idle connections cost about twice their records (issue 11:
        /// 988 instead of ~1 500 bytes per idle connection at 19 000), and RSS grows in 2 MiB
        /// steps the broker's bounds do not see (issue 9: +16-20 MiB instead of +3-4 MiB behind
        /// a stalled subscriber, ~17 MB more at start). `false` disables them for the process
        /// (`PR_SET_THP_DISABLE`) at start.
        transparent_huge_pages: bool = false;
        /// Milliseconds the allocator (mimalloc) keeps freed memory before returning it to
        /// the kernel. Default 10. Bound: 0..=60_000 (0 is a real value: return it at once,
        /// in many small calls). mimalloc's own default (1 000) returns
        /// a second of frees in one call: when a million sessions expired in one second that
        /// call held a shard for 2-3 ms (issue 11, `crates/tern-core/tests/timers.rs`); at 10
        /// no turn took 1 ms. Applied by setting `MIMALLOC_PURGE_DELAY` and `tern` replacing
        /// itself (same process id and arguments) once at start, since mimalloc reads it only
        /// when the process is loaded; an environment that already holds the value is kept.
        allocator_purge_delay_ms: u32 = 10, 0..=60_000;
    }
}

settings! {
    /// `[log]`: logging.
    pub struct LogConfig(RawLog) {
        /// The most verbose level emitted. Default [`LogLevel::Info`].
        level: LogLevel = LogLevel::Info;
        /// How each line is written. Default [`LogFormat::Text`].
        format: LogFormat = LogFormat::Text;
    }
}

settings! {
    /// `[admin]`: one plain-HTTP listener serving `GET /metrics` (Prometheus), `GET /healthz`,
    /// `GET /readyz` and, behind a bearer token, the `/api/v1/...` admin API. Off unless `bind`
    /// (or the older `broker.metrics_bind`) is set. Every request is bounded: head size, header
    /// count (32), concurrent requests (`workers`), the wait for the shards
    /// (`reply_timeout_ms`) and the items in one list (`list_items_max`).
    pub struct AdminConfig(RawAdmin) {
        /// Address of the HTTP listener. Default: absent (off).
        bind: Option<SocketAddr> = None;
        /// Bearer token the `/api/v1/...` endpoints require (`Authorization: Bearer TOKEN`). At
        /// least 16 bytes. Default: absent; without `token` or `token_file` the API answers 401
        /// to everything (`/metrics`, `/healthz` and `/readyz` need no token).
        token: Option<String> = None;
        /// A file whose first line is the token (so the token stays out of `tern.toml`). Read
        /// at start and checked at validation. Exclusive with `token`. Default: absent.
        token_file: Option<PathBuf> = None;
        /// Requests served at once, each by its own thread; a connection beyond them (and a
        /// queue of as many again) gets 503. Default 4. Bound: 1..=64.
        workers: u16 = 4, 1..=64;
        /// Largest request head (request line and headers) read, bytes; larger gets 431.
        /// Requests carry no body. Default 8192. Bound: 1024..=65536.
        request_bytes_max: u32 = 8192, 1024..=65536;
        /// How long a request waits for the shards' answers before it gets 504, milliseconds.
        /// Default 2000. Bound: 100..=60000.
        reply_timeout_ms: u32 = 2000, 100..=60_000;
        /// Most items in one list answer (clients, subscriptions), over all shards; the answer
        /// says when it was cut (`"truncated": true`). Default 1000. Bound: 1..=100000.
        list_items_max: u32 = 1000, 1..=100_000;
    }
}

settings! {
    /// `[auth]`: where user names, passwords and permissions come from. Both files are in
    /// Mosquitto's formats, so existing files work unchanged (see [`crate::auth`]). A relative
    /// path is relative to the working directory, as in Mosquitto. Validation reads and parses
    /// both files, so a missing or malformed file stops the broker at start with the file, line
    /// and reason; the broker reads them again on reload.
    pub struct AuthConfig(RawAuth) {
        /// The password file: `username:hash` lines as written by `tern passwd` or Mosquitto's
        /// `mosquitto_passwd` (`$7$` PBKDF2-SHA512, `$6$` SHA-512, Argon2id). A client that
        /// sends a user name must send that user's password. Whether a client may send no user
        /// name at all is each listener's `allow_anonymous`. Default: absent.
        password_file: Option<PathBuf> = None;
        /// The ACL file: `user`, `topic` and `pattern` lines in Mosquitto's syntax, deciding who
        /// may publish, subscribe to and receive which topics. Default: absent, and then every
        /// client may use every topic. When set, whatever the file does not grant is refused,
        /// so an empty file denies everything.
        acl_file: Option<PathBuf> = None;
        /// Threads that check passwords (the key derivations of the password file's hashes),
        /// so that no shard thread spends that time. Default 2. Bound: 1..=64. Worst-case
        /// memory: this many Argon2id checks at once, each at most 64 MiB (the cap on a file's
        /// memory cost).
        hash_workers: u32 = 2, 1..=64;
        /// Password checks waiting for a worker, all shards together; a CONNECT beyond it is
        /// refused at once with 0x89 (Server busy; v3: 0x03 Server unavailable). Default 1024.
        /// Bound: 1..=1_000_000.
        hash_queue_max: u32 = 1024, 1..=1_000_000;
        /// Failed logins from one source address within a minute, counted on each shard, after
        /// which CONNECTs with credentials from that address are refused without checking the
        /// password (0x9F Connection rate exceeded; v3: 0x05 Not authorized) until the minute
        /// ends. Default 30. Bound: 1..=1_000_000. Each shard remembers at most 16_384
        /// addresses.
        failed_logins_per_minute_max: u32 = 30, 1..=1_000_000;
    }
}

settings! {
    /// `[[bridge]]`: a connection to a remote broker, forwarding messages between it and this
    /// broker for the topics in `topics`. It runs on a thread of its own and attaches to this
    /// broker as a v5 client on the first TCP listener (see `crate::bridge`).
    pub struct BridgeConfig(RawBridge) {
        /// A name, unique among bridges: letters, digits, `-`, `_`; 1 to 64 bytes. Required.
        name: String = String::new();
        /// The remote broker, `host:port` (a host name is resolved at each connect). Required.
        address: String = String::new();
        /// The MQTT version spoken to the remote: 3.1.1 (default; the CONNECT carries the
        /// bridge bit Mosquitto uses to avoid echoing messages back) or 5 (No Local on
        /// subscriptions).
        protocol: BridgeProtocol = BridgeProtocol::V311;
        /// Client id at the remote broker, and of the local session. Default `tern-bridge-NAME`.
        client_id: String = String::new();
        /// User name at the remote broker. Default absent.
        username: Option<String> = None;
        /// Password at the remote broker. Default absent.
        password: Option<String> = None;
        /// Start a new session at the remote on each connect. Default `false`: the remote keeps
        /// the bridge's subscriptions and queues its QoS 1 messages while the bridge is away.
        clean_start: bool = false;
        /// Keep alive sent to the remote, seconds. Default 60. Bound: 5..=65535.
        keepalive_secs: u16 = 60, 5..=65535;
        /// First reconnect delay, seconds; doubles after each failure up to
        /// `reconnect_max_secs`. Default 1. Bound: 1..=3600.
        reconnect_min_secs: u32 = 1, 1..=3600;
        /// Longest reconnect delay, seconds. Default 60. Bound: 1..=3600, at least
        /// `reconnect_min_secs`.
        reconnect_max_secs: u32 = 60, 1..=3600;
        /// QoS 1 messages forwarded and not yet acknowledged, per direction; at the bound the
        /// bridge stops reading from the side that sends, so the messages wait in that broker's
        /// session queue (bounded there). Default 64. Bound: 1..=65535.
        inflight_max: u16 = 64, 1..=65535;
        /// TLS to the remote: the PEM CA certificates the remote's certificate must chain to.
        /// TLS is on when this is set. Default absent (plain TCP).
        cafile: Option<PathBuf> = None;
        /// PEM client certificate chain, for a remote that requires one (with `keyfile`).
        certfile: Option<PathBuf> = None;
        /// PEM private key of `certfile`.
        keyfile: Option<PathBuf> = None;
        /// Name the remote's certificate must carry. Default: the host of `address`.
        server_name: Option<String> = None;
        /// User name of the bridge's local connection, when the local listener needs one.
        local_username: Option<String> = None;
        /// Password of the bridge's local connection.
        local_password: Option<String> = None;
        /// The topics forwarded (`[[bridge.topic]]`). Bound: 1..=64.
        topics as "topic": Vec<BridgeTopic> = Vec::new();
    }
}

settings! {
    /// `[[bridge.topic]]`: one forwarded filter.
    pub struct BridgeTopic(RawBridgeTopic) {
        /// The topic filter, without the prefixes. Required.
        filter: String = String::new();
        /// Which way messages go. Default [`BridgeDirection::Out`].
        direction: BridgeDirection = BridgeDirection::Out;
        /// QoS of the bridge's subscriptions, so the highest QoS forwarded: 0 or 1 (QoS 2
        /// messages cross as QoS 1). Default 0.
        qos: u8 = 0, 0..=1;
        /// Prefix of the topic on this broker: local topic = `local_prefix` + topic. Default "".
        local_prefix: String = String::new();
        /// Prefix of the topic on the remote: remote topic = `remote_prefix` + topic. Default
        /// "".
        remote_prefix: String = String::new();
    }
}

/// `[shared_subscriptions]`: the type lives in the core ([`crate::shard`]), which routes by it,
/// so its two keys are read here by hand rather than declared with `settings!`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    strategy: Option<Spanned<SharedStrategy>>,
    groups: Option<Spanned<BTreeMap<String, SharedStrategy>>>,
}

impl Setting for SharedSubscriptionsConfig {
    type Raw = RawShared;
    type Field = RawShared;
    const TABLE: bool = true;

    fn split(field: RawShared) -> (Option<Range<usize>>, RawShared) {
        (None, field)
    }

    fn from_raw(raw: RawShared, key: &str, spans: &mut Spans) -> Result<Self, Issue> {
        let mut value = Self::default();
        if let Some(s) = raw.strategy {
            value.strategy = SharedStrategy::from_field(s, &format!("{key}.strategy"), spans)?;
        }
        let groups = format!("{key}.groups");
        if let Some(g) = raw.groups {
            value.groups = Setting::from_field(g, &groups, spans)?;
        }
        value.check().map_err(|message| spans.issue(&[&groups], message))?;
        Ok(value)
    }

    fn describe(path: &str, array: bool, out: &mut Vec<TableDoc>) {
        let d = Self::default();
        out.push(TableDoc {
            path: path.to_owned(),
            array,
            doc: "`[shared_subscriptions]`: how a shared subscription group picks a member.\n",
            keys: vec![
                KeyDoc {
                    key: "strategy",
                    default: d.strategy.toml(),
                    bound: None,
                    doc: "The strategy of groups without an override: round_robin, random, \
                          sticky, hash_client_id or hash_topic. Default round_robin.\n",
                },
                KeyDoc {
                    key: "groups",
                    default: d.groups.toml(),
                    bound: None,
                    doc: "Group name (the {group} of $share/{group}/{filter}) -> its strategy. \
                          Default empty. At most 1024 entries; a name is 1..=256 bytes without \
                          '/', '+' or '#'.\n",
                },
            ],
            optional: false,
        });
    }
}

// Tables whose keys need nothing once read.
impl Finish for Config {}
impl Finish for BrokerConfig {}
impl Finish for ListenerConfig {}
impl Finish for LimitsConfig {}
impl Finish for RuntimeConfig {}
impl Finish for LogConfig {}
impl Finish for AdminConfig {}
impl Finish for AuthConfig {}
impl Finish for PersistenceConfig {}

impl Finish for Redirect {
    fn finish(&mut self, key: &str, spans: &Spans) -> Result<(), Issue> {
        let reference = format!("{key}.reference");
        if spans.get(&reference).is_none() {
            let message = "missing required key \"reference\"".to_owned();
            return Err(spans.issue_near(&reference, &[&format!("{key}.permanent")], message));
        }
        Ok(())
    }
}

impl Finish for BridgeConfig {
    /// The client id defaults to `tern-bridge-NAME`.
    fn finish(&mut self, key: &str, spans: &Spans) -> Result<(), Issue> {
        if spans.get(&format!("{key}.client_id")).is_none() {
            self.client_id = format!("tern-bridge-{}", self.name);
        }
        Ok(())
    }
}

impl Finish for BridgeTopic {
    fn finish(&mut self, key: &str, spans: &Spans) -> Result<(), Issue> {
        if spans.get(&format!("{key}.filter")).is_none() {
            let message = "missing required key \"filter\"".to_owned();
            return Err(spans.issue_near(&format!("{key}.filter"), &[key], message));
        }
        Ok(())
    }
}

impl AdminConfig {
    /// The token from `token` or the first line of `token_file`; `None` when neither is set.
    pub fn load_token(&self) -> Result<Option<String>, String> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.token_file else { return Ok(None) };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(4096).read_to_string(&mut text))
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        if token.len() < ADMIN_TOKEN_BYTES_MIN {
            return Err(format!(
                "{}: the first line must hold a token of at least {ADMIN_TOKEN_BYTES_MIN} bytes",
                path.display()
            ));
        }
        Ok(Some(token))
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`. Errors name the file as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_located(path).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning where each key present in the file is, for errors found
    /// later (an address already in use, a certificate that does not load).
    pub fn load_located(path: &Path) -> Result<(Config, KeyPositions), ConfigError> {
        let name = path.display().to_string();
        let io_error =
            |e: std::io::Error| ConfigError::whole_file(&name, format!("cannot read: {e}"));
        let file = std::fs::File::open(path).map_err(io_error)?;
        let mut text = String::new();
        // Read one byte more than allowed, so an oversized file is detected, not truncated.
        file.take(CONFIG_FILE_BYTES_MAX + 1).read_to_string(&mut text).map_err(io_error)?;
        if text.len() as u64 > CONFIG_FILE_BYTES_MAX {
            let message = format!("file is larger than {CONFIG_FILE_BYTES_MAX} bytes");
            return Err(ConfigError::whole_file(&name, message));
        }
        Config::from_str_located(&text, &name)
    }

    /// Parses and validates `text`; `name` stands for the file in error messages.
    pub fn from_str_named(text: &str, name: &str) -> Result<Config, ConfigError> {
        Config::from_str_located(text, name).map(|(config, _)| config)
    }

    /// [`Config::from_str_named`], also returning where each key present in the file is.
    pub fn from_str_located(text: &str, name: &str) -> Result<(Config, KeyPositions), ConfigError> {
        let source = Source { name, text };
        let (config, spans) = source.parse()?;
        config.auth.check_files(&spans).map_err(|issue| source.error(issue))?;
        config.admin.check_token(&spans).map_err(|issue| source.error(issue))?;
        let keys = spans
            .0
            .iter()
            .map(|(key, span)| {
                let (line, column) = line_column(text, span.start);
                (key.clone(), line, column)
            })
            .collect();
        Ok((config, KeyPositions { file: name.to_owned(), keys }))
    }

    /// The documentation of every table and key, generated from the declarations, in
    /// declaration order.
    pub fn describe() -> Vec<TableDoc> {
        let mut out = Vec::new();
        <Config as Section>::describe_keys("", &mut out);
        out
    }

    /// A `tern.toml` with every key at its default (keys absent by default commented out) and
    /// each key's documentation and bound above it, generated from the declarations.
    pub fn reference() -> String {
        let mut out = String::from(
            "# Tern configuration: every key at its default, generated from the declarations\n\
             # in src/config.rs (`tern default-config`).\n",
        );
        for table in Config::describe() {
            out.push('\n');
            for line in table.doc.lines().take_while(|l| !l.trim().is_empty()) {
                out.push_str(&format!("# {}\n", line.trim()).replace("# \n", "#\n"));
            }
            // A table absent by default is shown commented out, with its keys.
            let off = if table.optional { "# " } else { "" };
            if table.array {
                out.push_str(&format!("{off}[[{}]]\n", table.path));
            } else {
                out.push_str(&format!("{off}[{}]\n", table.path));
            }
            for key in table.keys {
                out.push('\n');
                for line in key.doc.lines() {
                    out.push_str(&format!("# {}\n", line.trim()));
                }
                if let Some((lo, hi)) = key.bound {
                    out.push_str(&format!("# Bound: {lo}..={hi}.\n"));
                }
                match key.default {
                    Some(value) => out.push_str(&format!("{off}{} = {value}\n", key.key)),
                    None => out.push_str(&format!("# {} = (absent by default)\n", key.key)),
                }
            }
        }
        out
    }

    /// The address of the admin/metrics HTTP listener: `admin.bind`, or the older
    /// `broker.metrics_bind`.
    pub fn admin_bind(&self) -> Option<SocketAddr> {
        self.admin.bind.or(self.broker.metrics_bind)
    }

    /// [`Config::from_str_named`] without opening the `[auth]` files: for the fuzz body
    /// (`crate::fuzzing::config_text`), which must not read whatever path its input names.
    pub(crate) fn from_str_without_files(text: &str, name: &str) -> Result<Config, ConfigError> {
        Source { name, text }.parse().map(|(config, _)| config)
    }

    /// Checks every bound and cross-field rule, and that the `[auth]` files can be read and
    /// parsed. Configs from [`Config::load`] and [`Config::from_str_named`] already passed; call
    /// this on one built or changed by hand. Errors name the file `<built-in>` with line 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let source = Source { name: "<built-in>", text: "" };
        self.check(&Spans::default()).map_err(|issue| source.error(issue))?;
        self.auth.check_files(&Spans::default()).map_err(|issue| source.error(issue))?;
        self.admin.check_token(&Spans::default()).map_err(|issue| source.error(issue))
    }

    /// The number of shards to start: `broker.shards`, or one per available core (at most 256,
    /// at least 1) when it is absent.
    pub fn shard_count(&self) -> usize {
        match self.broker.shards {
            Some(n) => usize::from(n),
            None => {
                std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, SHARDS_MAX)
            }
        }
    }
}

impl RuntimeConfig {
    /// [`spin_before_park_us`](Self::spin_before_park_us) as the runtime wants it: `None` when
    /// it is 0 (do not spin).
    pub fn spin_before_park(&self) -> Option<Duration> {
        match self.spin_before_park_us {
            0 => None,
            us => Some(Duration::from_micros(u64::from(us))),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Errors.
// ------------------------------------------------------------------------------------------------

/// A configuration that was refused: where, which key, and why.
///
/// Displays as `file:line:column: key: message`. When the position is unknown (line 0, e.g. an
/// I/O error or a config built in code) the position is left out, and so is an empty key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given to [`Config::load`] or [`Config::from_str_named`].
    pub file: String,
    /// 1-based line, or 0 when unknown.
    pub line: usize,
    /// 1-based column in characters, or 0 when unknown.
    pub column: usize,
    /// Dotted path of the offending key, e.g. `limits.inflight_max` or `listener[1].bind`
    /// (array indices are 0-based). Empty when the error is not about one key.
    pub key: String,
    /// What is wrong, e.g. `must be between 1 and 65535 (got 0)`.
    pub message: String,
}

impl ConfigError {
    fn whole_file(file: &str, message: String) -> ConfigError {
        ConfigError { file: file.to_owned(), line: 0, column: 0, key: String::new(), message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Where each key present in a configuration file is (1-based line and column), so an error
/// found after validation, at start, can name the line: `tern.toml:7:8: listener bind =
/// "127.0.0.1:1883": address already in use`. Keys are dotted as in [`ConfigError::key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPositions {
    file: String,
    keys: Vec<(String, usize, usize)>,
}

impl KeyPositions {
    /// Positions for a configuration that came from no file (the embedded defaults).
    pub fn built_in() -> Self {
        KeyPositions { file: "<built-in>".into(), keys: Vec::new() }
    }

    /// The file name, as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Line and column of `key`, if the file has it.
    pub fn get(&self, key: &str) -> Option<(usize, usize)> {
        self.keys.iter().find(|(k, _, _)| k == key).map(|(_, line, column)| (*line, *column))
    }

    /// `FILE:LINE` of the first of `keys` in the file, or `FILE` when none is there.
    pub fn file_line(&self, keys: &[&str]) -> String {
        match keys.iter().find_map(|k| self.get(k)) {
            Some((line, _)) => format!("{}:{line}", self.file),
            None => self.file.clone(),
        }
    }

    /// `FILE:LINE:COL` of the first of `keys` in the file, or `FILE` when none is there.
    pub fn file_line_col(&self, keys: &[&str]) -> String {
        match keys.iter().find_map(|k| self.get(k)) {
            Some((line, column)) => format!("{}:{line}:{column}", self.file),
            None => self.file.clone(),
        }
    }

    /// `FILE:LINE:COL: key: message`, the [`ConfigError`] format, for a problem found after
    /// parsing (e.g. a certificate that does not load).
    pub fn error(&self, key: &str, message: String) -> ConfigError {
        let (line, column) = self.get(key).unwrap_or((0, 0));
        ConfigError { file: self.file.clone(), line, column, key: key.to_owned(), message }
    }
}

// ------------------------------------------------------------------------------------------------
// Validation of the typed config.
// ------------------------------------------------------------------------------------------------

impl Config {
    /// Every bound and cross-field rule. `spans` locates the keys that came from a file.
    fn check(&self, spans: &Spans) -> Result<(), Issue> {
        // Every declared bound first, then the rules that tie keys together.
        self.check_bounds("", spans)?;
        let b = &self.broker;
        if b.response_information_prefix.len() > RESPONSE_INFORMATION_PREFIX_BYTES_MAX {
            let message = format!("must be at most {RESPONSE_INFORMATION_PREFIX_BYTES_MAX} bytes");
            return Err(spans.issue(&["broker.response_information_prefix"], message));
        }
        self.check_listeners(spans)?;
        self.limits.check(spans)?;
        let key = "shared_subscriptions.groups";
        self.shared_subscriptions.check().map_err(|message| spans.issue(&[key], message))?;
        let r = &self.runtime;
        if !r.ring_depth.is_power_of_two() {
            let message = format!("must be a power of two (got {})", r.ring_depth);
            return Err(spans.issue(&["runtime.ring_depth"], message));
        }
        let a = &self.admin;
        if a.bind.is_some() && b.metrics_bind.is_some() {
            let message = "set admin.bind or the older broker.metrics_bind, not both".to_owned();
            return Err(spans.issue(&["admin.bind", "broker.metrics_bind"], message));
        }
        self.check_bridges(spans)?;
        if let Some(bind) = self.admin_bind() {
            if let Some(i) = self.listeners.iter().position(|l| overlaps(l.bind, bind)) {
                let message = format!("{bind} overlaps listener[{i}].bind");
                return Err(spans.issue(&["admin.bind", "broker.metrics_bind"], message));
            }
        }
        Ok(())
    }

    fn check_listeners(&self, spans: &Spans) -> Result<(), Issue> {
        let count = wide(self.listeners.len());
        if !(LISTENERS.lo..=LISTENERS.hi).contains(&count) {
            let message = format!(
                "must have between {} and {} [[listener]] entries (got {count})",
                LISTENERS.lo, LISTENERS.hi
            );
            return Err(spans.issue(&["listener"], message));
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            let key = |field: &str| format!("listener[{i}].{field}");
            listener.check_transport(i, spans)?;
            if let Some(redirect) = &listener.redirect {
                let len = redirect.reference.len();
                let keys = [key("redirect.reference"), key("redirect")];
                let (lo, hi) = (REDIRECT_REFERENCE_BYTES.lo, REDIRECT_REFERENCE_BYTES.hi);
                if !(lo..=hi).contains(&wide(len)) {
                    let message = format!("must be between {lo} and {hi} bytes long (got {len})");
                    return Err(spans.issue(&[&keys[0], &keys[1]], message));
                }
            }
            if let Some(j) =
                self.listeners[..i].iter().position(|o| overlaps(o.bind, listener.bind))
            {
                let message = format!(
                    "{} overlaps listener[{j}].bind ({}): both binds would succeed with \
                     SO_REUSEPORT and split the clients between them",
                    listener.bind, self.listeners[j].bind
                );
                return Err(spans.issue(&[&key("bind")], message));
            }
        }
        Ok(())
    }
}

impl Config {
    fn check_bridges(&self, spans: &Spans) -> Result<(), Issue> {
        BRIDGES.check("bridge", wide(self.bridges.len()), spans)?;
        if !self.bridges.is_empty() && !self.listeners.iter().any(|l| l.transport == Transport::Tcp)
        {
            let message = "a bridge attaches to this broker through a listener with transport \
                           \"tcp\"; there is none"
                .to_owned();
            return Err(spans.issue(&["bridge"], message));
        }
        for (i, b) in self.bridges.iter().enumerate() {
            let key = |field: &str| format!("bridge[{i}].{field}");
            let name_ok = !b.name.is_empty()
                && b.name.len() <= 64
                && b.name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            if !name_ok {
                let message =
                    format!("must be 1 to 64 letters, digits, '-' or '_' (got {:?})", b.name);
                return Err(spans.issue_near(&key("name"), &[&key("name"), "bridge"], message));
            }
            if self.bridges[..i].iter().any(|o| o.name == b.name) {
                let message = format!("another bridge is named {:?}", b.name);
                return Err(spans.issue(&[&key("name")], message));
            }
            let port_ok = b
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                let message = format!(
                    "must be host:port, like \"broker.example.com:1883\" (got {:?})",
                    b.address
                );
                return Err(spans.issue_near(
                    &key("address"),
                    &[&key("address"), &key("name")],
                    message,
                ));
            }
            let (lo, hi) = (b.reconnect_min_secs, b.reconnect_max_secs);
            if hi < lo {
                let message =
                    format!("reconnect_max_secs ({hi}) is below reconnect_min_secs ({lo})");
                return Err(spans.issue(&[&key("reconnect_max_secs")], message));
            }
            if b.certfile.is_some() != b.keyfile.is_some() {
                let message = "certfile and keyfile go together".to_owned();
                return Err(spans.issue(&[&key("certfile"), &key("keyfile")], message));
            }
            if b.cafile.is_none() && (b.certfile.is_some() || b.server_name.is_some()) {
                let message = "TLS keys need cafile (TLS is on when cafile is set)".to_owned();
                return Err(spans.issue(&[&key("certfile"), &key("server_name")], message));
            }
            BRIDGE_TOPICS.check(&key("topic"), wide(b.topics.len()), spans)?;
            for (j, t) in b.topics.iter().enumerate() {
                let tkey = |field: &str| format!("bridge[{i}].topic[{j}].{field}");
                for (field, prefix) in
                    [("local_prefix", &t.local_prefix), ("remote_prefix", &t.remote_prefix)]
                {
                    if prefix.contains(['+', '#']) {
                        let message = "a prefix is part of a topic name: no '+' or '#'".to_owned();
                        return Err(spans.issue(&[&tkey(field)], message));
                    }
                }
                let full = format!("{}{}", t.local_prefix, t.filter);
                let remote = format!("{}{}", t.remote_prefix, t.filter);
                let valid = crate::codec::topic::validate_topic_filter(&full, true)
                    .and_then(|_| crate::codec::topic::validate_topic_filter(&remote, true));
                if let Err(e) = valid {
                    let message = format!("not a valid topic filter with its prefixes: {e}");
                    return Err(spans.issue_near(
                        &tkey("filter"),
                        &[&tkey("filter"), &key("name")],
                        message,
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ListenerConfig {
    /// The transport-specific keys: each belongs to some transports only, and TLS needs its
    /// files. A missing key is reported at the listener's `transport` line.
    fn check_transport(&self, i: usize, spans: &Spans) -> Result<(), Issue> {
        let key = |field: &str| format!("listener[{i}].{field}");
        let t = self.transport;
        let name = t.as_str();
        let missing = |field: &str, why: &str| {
            let message = format!("missing: {why}");
            spans.issue_near(&key(field), &[&key("transport"), "listener"], message)
        };
        let tls_keys = [
            ("certfile", self.certfile.is_some()),
            ("keyfile", self.keyfile.is_some()),
            ("cafile", self.cafile.is_some()),
            ("require_certificate", self.require_certificate),
            ("use_identity_as_username", self.use_identity_as_username),
        ];
        if t.is_tls() {
            if self.certfile.is_none() {
                let why = format!(
                    "transport \"{name}\" needs certfile (the PEM certificate chain) and keyfile"
                );
                return Err(missing("certfile", &why));
            }
            if self.keyfile.is_none() {
                let why = format!("transport \"{name}\" needs keyfile (the PEM private key)");
                return Err(missing("keyfile", &why));
            }
            if self.require_certificate && self.cafile.is_none() {
                let why = "require_certificate needs cafile (the CA client certificates chain to)";
                return Err(spans.issue(&[&key("require_certificate")], format!("missing: {why}")));
            }
            if self.use_identity_as_username && !self.require_certificate {
                let message = "needs require_certificate = true (every client must then have \
                               a certificate to take the name from)"
                    .to_owned();
                return Err(spans.issue(&[&key("use_identity_as_username")], message));
            }
        } else if let Some((field, _)) = tls_keys.iter().find(|(_, set)| *set) {
            let message = format!(
                "only for transport \"tls\" or \"wss\" (this listener's transport is \"{name}\")"
            );
            return Err(spans.issue(&[&key(field)], message));
        }
        if !t.is_websocket() {
            if self.ws_path != DEFAULT_WS_PATH {
                let message = format!(
                    "only for transport \"ws\" or \"wss\" (this listener's transport is \"{name}\")"
                );
                return Err(spans.issue(&[&key("ws_path")], message));
            }
            return Ok(());
        }
        let path = &self.ws_path;
        let len = wide(path.len());
        let printable = path.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
        if !(WS_PATH_BYTES.lo..=WS_PATH_BYTES.hi).contains(&len)
            || !path.starts_with('/')
            || !printable
        {
            let message = format!(
                "must be an HTTP path of {} to {} bytes starting with '/', printable ASCII \
                 without spaces, '?' or '#' (got {path:?})",
                WS_PATH_BYTES.lo, WS_PATH_BYTES.hi
            );
            return Err(spans.issue(&[&key("ws_path")], message));
        }
        Ok(())
    }
}

/// Whether two listener addresses would accept the same connections: same port (other than 0,
/// which picks a fresh port per bind) and the same address, or either is the unspecified address
/// (`0.0.0.0` / `[::]`, which may also cover the other family on a dual-stack host).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl AuthConfig {
    /// Reads and parses each configured file, so a missing or malformed one is a configuration
    /// error at start: reported at the key, with the file's own name, line and reason in the
    /// message, e.g. `auth.acl_file: /etc/tern/acl:7: unknown access type "reed" ...`.
    fn check_files(&self, spans: &Spans) -> Result<(), Issue> {
        if let Some(path) = &self.password_file {
            crate::auth::load_passwords(path)
                .map_err(|e| spans.issue(&["auth.password_file"], e.to_string()))?;
        }
        if let Some(path) = &self.acl_file {
            crate::auth::load_acl(path)
                .map_err(|e| spans.issue(&["auth.acl_file"], e.to_string()))?;
        }
        Ok(())
    }
}

impl AdminConfig {
    /// The token rules, and that `token_file` can be read: a missing file stops the start.
    fn check_token(&self, spans: &Spans) -> Result<(), Issue> {
        if self.token.is_some() && self.token_file.is_some() {
            let message = "set token or token_file, not both".to_owned();
            return Err(spans.issue(&["admin.token_file", "admin.token"], message));
        }
        if let Some(t) = &self.token {
            if t.len() < ADMIN_TOKEN_BYTES_MIN || t.chars().any(char::is_whitespace) {
                let message = format!(
                    "must be at least {ADMIN_TOKEN_BYTES_MIN} bytes without spaces (got {} bytes)",
                    t.len()
                );
                return Err(spans.issue(&["admin.token"], message));
            }
        }
        self.load_token().map(|_| ()).map_err(|e| spans.issue(&["admin.token_file"], e))
    }
}

impl LimitsConfig {
    fn check(&self, spans: &Spans) -> Result<(), Issue> {
        let key = |field: &str| format!("limits.{field}");
        let packet = u64::from(self.packet_size_bytes_max);
        // A queue or store smaller than one packet could never hold a maximum-size message.
        let stores = [
            ("session_queue_bytes_max", self.session_queue_bytes_max),
            ("retained_bytes_max", self.retained_bytes_max),
            ("memory_budget_bytes", self.memory_budget_bytes),
            ("flow_hard_cap_bytes", self.flow_hard_cap_bytes),
        ];
        for (field, value) in stores {
            if value < packet {
                let message = format!(
                    "{field} ({value}) must be at least packet_size_bytes_max ({packet}), so one \
                     maximum-size message fits"
                );
                return Err(spans.issue(&[&key(field), &key("packet_size_bytes_max")], message));
            }
        }
        if self.flow_low_water_messages >= self.flow_high_water_messages {
            let message = format!(
                "flow_low_water_messages ({}) must be below flow_high_water_messages ({})",
                self.flow_low_water_messages, self.flow_high_water_messages
            );
            let keys = [key("flow_low_water_messages"), key("flow_high_water_messages")];
            return Err(spans.issue(&[&keys[0], &keys[1]], message));
        }
        if self.flow_qos0_queue_bytes_max < self.flow_high_water_bytes {
            let message = format!(
                "flow_qos0_queue_bytes_max ({}) must be at least flow_high_water_bytes ({})",
                self.flow_qos0_queue_bytes_max, self.flow_high_water_bytes
            );
            let keys = [key("flow_qos0_queue_bytes_max"), key("flow_high_water_bytes")];
            return Err(spans.issue(&[&keys[0], &keys[1]], message));
        }
        if self.flow_hard_cap_messages < self.flow_high_water_messages {
            let message = format!(
                "flow_hard_cap_messages ({}) must be at least flow_high_water_messages ({})",
                self.flow_hard_cap_messages, self.flow_high_water_messages
            );
            let keys = [key("flow_hard_cap_messages"), key("flow_high_water_messages")];
            return Err(spans.issue(&[&keys[0], &keys[1]], message));
        }
        // A shard drains up to one batch at a time from a channel; a smaller channel could never
        // fill a batch.
        if self.mesh_channel_capacity < self.mesh_batch_max {
            let message = format!(
                "mesh_channel_capacity ({}) must be at least mesh_batch_max ({})",
                self.mesh_channel_capacity, self.mesh_batch_max
            );
            let keys = [key("mesh_channel_capacity"), key("mesh_batch_max")];
            return Err(spans.issue(&[&keys[0], &keys[1]], message));
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Positions: spans of the keys present in the file, and turning spans into errors.
// ------------------------------------------------------------------------------------------------

/// A problem with one key, before it is placed in a file.
#[derive(Debug)]
struct Issue {
    key: String,
    span: Option<Range<usize>>,
    message: String,
}

/// Where each key present in the file has its value. A few dozen entries at most, so a list.
#[derive(Default)]
struct Spans(Vec<(String, Range<usize>)>);

impl Spans {
    fn insert(&mut self, key: &str, span: Range<usize>) {
        self.0.push((key.to_owned(), span));
    }

    fn get(&self, key: &str) -> Option<Range<usize>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, span)| span.clone())
    }

    /// An issue about the first of `keys` present in the file, or about `keys[0]` (without a
    /// position) when none is: a cross-field rule is reported where the user wrote something.
    fn issue(&self, keys: &[&str], message: String) -> Issue {
        let found = keys.iter().find_map(|k| self.get(k).map(|span| (*k, span)));
        let (key, span) = match found {
            Some((key, span)) => (key, Some(span)),
            None => (keys.first().copied().unwrap_or_default(), None),
        };
        Issue { key: key.to_owned(), span, message }
    }

    /// An issue about `key`, placed at the first of `near` present in the file: for a required
    /// key that is missing, so has no position of its own.
    fn issue_near(&self, key: &str, near: &[&str], message: String) -> Issue {
        let span = near.iter().find_map(|k| self.get(k));
        Issue { key: key.to_owned(), span, message }
    }
}

/// The text being parsed and its name, to turn spans into lines and columns.
struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, issue: Issue) -> ConfigError {
        let (line, column) = match issue.span {
            Some(span) => line_column(self.text, span.start),
            None => (0, 0),
        };
        ConfigError {
            file: self.name.to_owned(),
            line,
            column,
            key: issue.key,
            message: issue.message,
        }
    }

    /// Reads the text into the declared tables, then checks every bound and cross-field rule.
    fn parse(&self) -> Result<(Config, Spans), ConfigError> {
        let deserializer = toml::Deserializer::new(self.text);
        let raw: RawConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|e| self.toml_error(&e))?;
        let mut spans = Spans::default();
        let config = Config::from_raw(raw, "", &mut spans).map_err(|issue| self.error(issue))?;
        config.check(&spans).map_err(|issue| self.error(issue))?;
        Ok((config, spans))
    }

    /// A syntax, unknown-key or wrong-type error from the `toml` crate, with the dotted path
    /// of the key serde was reading (none for a syntax error: the file is parsed whole first).
    fn toml_error(&self, e: &serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let mut key = String::new();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => key.push_str(&format!("[{index}]")),
                serde_path_to_error::Segment::Map { key: name }
                | serde_path_to_error::Segment::Enum { variant: name } => {
                    // `toml::Spanned` reads a value through private keys; they are no part
                    // of the user's path.
                    if name.starts_with("$__") {
                        continue;
                    }
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(name);
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let inner = e.inner();
        // The crate's messages speak serde ("field", "i64"); say it in TOML terms, on one line.
        let mut message = inner
            .message()
            .trim()
            .replace('\n', "; ")
            .replace("unknown field", "unknown key")
            .replace("expected i64", "expected an integer");
        if key == "listener" && message.contains("expected a sequence") {
            message.push_str(" (write each listener as a [[listener]] table)");
        }
        self.error(Issue { key, span: inner.span(), message })
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_named(text, "tern.toml")
    }

    fn parse_err(text: &str) -> ConfigError {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the position and key of an error, and that the message contains `needle`.
    #[track_caller]
    fn assert_err(e: &ConfigError, line: usize, column: usize, key: &str, needle: &str) {
        assert_eq!(e.file, "tern.toml", "{e}");
        assert_eq!((e.line, e.column), (line, column), "{e}");
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(needle), "{e:?} should contain {needle:?}");
    }

    #[test]
    fn shared_subscription_strategy_and_group_overrides() {
        let c = parse(
            "[shared_subscriptions]\nstrategy = \"hash_topic\"\n\
             groups = { workers = \"sticky\", audit = \"random\" }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sh = &c.shared_subscriptions;
        assert_eq!(sh.strategy_for("workers"), SharedStrategy::Sticky);
        assert_eq!(sh.strategy_for("audit"), SharedStrategy::Random);
        assert_eq!(sh.strategy_for("other"), SharedStrategy::HashTopic);
        assert_eq!(Config::default().shared_subscriptions.strategy, SharedStrategy::RoundRobin);
        let e = parse_err("[shared_subscriptions]\nstrategy = \"fastest\"\n");
        assert_eq!(e.key, "shared_subscriptions.strategy", "{e}");
        // [MQTT-4.8.2-2]: a share name has no '/', '+' or '#'.
        let e = parse_err("[shared_subscriptions]\ngroups = { \"a+b\" = \"sticky\" }\n");
        assert_err(&e, 2, 10, "shared_subscriptions.groups", "without '/', '+' or '#'");
    }

    #[test]
    fn defaults_validate_and_empty_file_is_defaults() {
        let defaults = Config::default();
        assert_eq!(defaults.validate(), Ok(()));
        assert_eq!(parse("").expect("empty file"), defaults);
        assert_eq!(parse("# only a comment\n").expect("comment only"), defaults);
        let l = &defaults.listeners[..];
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].bind, "127.0.0.1:1883".parse().expect("literal"));
        assert_eq!(l[0].transport, Transport::Tcp);
        assert!(l[0].allow_anonymous);
    }

    #[test]
    fn log_format_and_admin_section() {
        let c = parse(
            "[log]\nformat = \"json\"\n[admin]\nbind = \"127.0.0.1:9883\"\n\
             token = \"0123456789abcdef\"\nworkers = 2\n",
        )
        .expect("valid");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.admin_bind(), Some("127.0.0.1:9883".parse().expect("literal")));
        assert_eq!(c.admin.workers, 2);
        let e = parse_err("[admin]\ntoken = \"short\"\n");
        assert_err(&e, 2, 9, "admin.token", "at least 16 bytes");
        let e = parse_err("[admin]\nworkers = 0\n");
        assert_err(&e, 2, 11, "admin.workers", "between 1 and 64");
        let e = parse_err("[admin]\ntoken_file = \"/nonexistent/token\"\n");
        assert_err(&e, 2, 14, "admin.token_file", "cannot read");
        let e = parse_err(
            "[broker]\nmetrics_bind = \"127.0.0.1:1\"\n[admin]\nbind = \"127.0.0.1:2\"\n",
        );
        assert_err(&e, 4, 8, "admin.bind", "not both");
        let e = parse_err("[admin]\nbind = \"127.0.0.1:1883\"\n");
        assert_err(&e, 2, 8, "admin.bind", "overlaps listener[0].bind");
        let e = parse_err("[log]\nformat = \"xml\"\n");
        assert_eq!(e.key, "log.format", "{e}");
    }

    #[test]
    fn positions_locate_keys_for_later_errors() {
        let (_, p) = Config::from_str_located("\n[[listener]]\nbind = \"127.0.0.1:1\"\n", "t.toml")
            .expect("valid");
        assert_eq!(p.get("listener[0].bind"), Some((3, 8)));
        assert_eq!(p.file_line(&["listener[0].bind"]), "t.toml:3");
        assert_eq!(p.file_line(&["admin.bind"]), "t.toml");
        assert_eq!(p.file_line_col(&["listener[0].bind"]), "t.toml:3:8");
        assert_eq!(p.file_line_col(&["admin.bind"]), "t.toml");
        assert_eq!(KeyPositions::built_in().file_line(&["x"]), "<built-in>");
    }

    #[test]
    fn bridges_parse_and_validate() {
        let text = "[[bridge]]\nname = \"cloud\"\naddress = \"h.example:1883\"\nprotocol = \"5\"\n\
                    [[bridge.topic]]\nfilter = \"a/#\"\ndirection = \"both\"\nqos = 1\n\
                    local_prefix = \"l/\"\n";
        let c = parse(text).expect("valid");
        let b = &c.bridges[0];
        assert_eq!(
            (b.name.as_str(), b.protocol, b.client_id.as_str()),
            ("cloud", BridgeProtocol::V5, "tern-bridge-cloud")
        );
        assert_eq!(
            (b.keepalive_secs, b.reconnect_min_secs, b.reconnect_max_secs, b.inflight_max),
            (60, 1, 60, 64)
        );
        assert_eq!(b.topics[0].direction, BridgeDirection::Both);
        assert_eq!((b.topics[0].qos, b.topics[0].local_prefix.as_str()), (1, "l/"));

        let e = parse_err(&text.replace("qos = 1", "qos = 2"));
        assert_err(&e, 8, 7, "bridge[0].topic[0].qos", "between 0 and 1");
        let e = parse_err(&text.replace("h.example:1883", "nohost"));
        assert_err(&e, 3, 11, "bridge[0].address", "host:port");
        let e = parse_err(&text.replace("\"cloud\"", "\"a b\""));
        assert_err(&e, 2, 8, "bridge[0].name", "letters, digits");
        let e = parse_err(&text.replace("\"l/\"", "\"l/+/\""));
        assert_err(&e, 9, 16, "bridge[0].topic[0].local_prefix", "no '+' or '#'");
        let e = parse_err(&text.replace("\"a/#\"", "\"a/#/b\""));
        assert_eq!(e.key, "bridge[0].topic[0].filter", "{e}");
        let e = parse_err("[[bridge]]\nname = \"x\"\naddress = \"h:1\"\n");
        assert_eq!(e.key, "bridge[0].topic", "no topic: {e}");
        let two = format!("{text}{text}");
        let e = parse_err(&two);
        assert!(e.message.contains("another bridge is named"), "{e}");
        let e = parse_err(&format!(
            "{text}[[listener]]\nbind = \"127.0.0.1:8080\"\ntransport = \"ws\"\n"
        ));
        assert!(e.message.contains("transport \"tcp\""), "{e}");
    }

    #[test]
    fn persistence_section_parses_and_checks_bounds() {
        let c = parse("").expect("empty");
        assert_eq!(c.persistence, PersistenceConfig::default());
        assert_eq!(c.persistence.dir, None, "in memory unless a directory is given");
        let c =
            parse("[persistence]\ndir = \"/tmp/d\"\nfsync = \"interval\"\nfsync_interval_ms = 5\n")
                .expect("valid");
        assert_eq!(c.persistence.dir.as_deref(), Some(Path::new("/tmp/d")));
        assert_eq!(c.persistence.fsync, FsyncMode::Interval);
        assert_eq!(c.persistence.fsync_interval_ms, 5);
        let c = parse("[persistence]\npending_records_max = 64\nsegment_bytes_max = 1048576\n")
            .expect("valid");
        assert_eq!(
            (c.persistence.pending_records_max, c.persistence.segment_bytes_max),
            (64, 1 << 20)
        );
        for bad in [
            "fsync_interval_ms = 0",
            "fsync_interval_ms = 60001",
            "segment_bytes_max = 1048575",
            "pending_records_max = 63",
            "fsync = \"sometimes\"",
            "unknown = 1",
        ] {
            let e = parse_err(&format!("[persistence]\n{bad}\n"));
            assert!(e.to_string().contains("persistence") || e.line == 2, "{bad}: {e}");
        }
    }

    #[test]
    fn example_file_equals_defaults() {
        let text = include_str!("../tern.toml");
        let config = Config::from_str_named(text, "tern.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config, Config::default());
    }

    #[test]
    fn every_key_of_the_example_is_honoured() {
        // Uncomment the optional keys of the example and change every value, to prove each key
        // is read into its own field (a mix-up would not show when the values equal defaults).
        let text = r#"
            [broker]
            shards = 3
            sys_interval_secs = 11
            [[listener]]
            bind = "0.0.0.0:1884"
            transport = "tcp"
            allow_anonymous = false
            connections_max = 12
            redirect = { reference = "b.example:1883", permanent = true }
            [[listener]]
            bind = "[::1]:1885"
            [limits]
            packet_size_bytes_max = 1000
            inflight_max = 13
            session_queue_messages_max = 14
            session_queue_bytes_max = 1001
            queue_overflow = "drop_oldest"
            retained_messages_max = 15
            retained_bytes_max = 1002
            topic_levels_max = 16
            topic_bytes_max = 17
            client_id_bytes_max = 23
            subscriptions_per_client_max = 19
            preauth_packet_bytes_max = 700
            user_properties_max = 0
            user_property_bytes_max = 27
            connect_timeout_secs = 20
            write_timeout_secs = 27
            park_idle_ms = 1234
            connecting_max = 77
            memory_budget_bytes = 2000000
            keepalive_secs_max = 21
            sessions_max = 22
            session_expiry_secs_max = 24
            topic_alias_max = 0
            mesh_channel_capacity = 26
            mesh_batch_max = 25
            flow_high_water_messages = 27
            flow_low_water_messages = 3
            flow_hard_cap_messages = 28
            flow_hard_cap_bytes = 3000000
            flow_high_water_bytes = 5000
            flow_qos0_queue_bytes_max = 6000
            slow_consumer_timeout_ms = 2900
            slow_consumer_policy = "drop"
            mesh_bytes_max = 2000000
            [runtime]
            io_memory_bytes = 8192
            ring_depth = 8
            spin_before_park_us = 0
            pin_cores = false
            preempt_timer_us = 250
            transparent_huge_pages = true
            allocator_purge_delay_ms = 0
            [log]
            level = "debug"
        "#;
        let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.broker.shards, Some(3));
        assert_eq!(c.broker.sys_interval_secs, 11);
        assert_eq!(c.shard_count(), 3);
        assert_eq!(
            c.listeners,
            vec![
                ListenerConfig {
                    bind: "0.0.0.0:1884".parse().expect("literal"),
                    transport: Transport::Tcp,
                    allow_anonymous: false,
                    connections_max: 12,
                    redirect: Some(Redirect {
                        reference: "b.example:1883".to_owned(),
                        permanent: true
                    }),
                    ..Default::default()
                },
                ListenerConfig {
                    bind: "[::1]:1885".parse().expect("literal"),
                    ..Default::default()
                },
            ]
        );
        let expected = LimitsConfig {
            packet_size_bytes_max: 1000,
            inflight_max: 13,
            session_queue_messages_max: 14,
            session_queue_bytes_max: 1001,
            queue_overflow: QueueOverflow::DropOldest,
            retained_messages_max: 15,
            retained_bytes_max: 1002,
            topic_levels_max: 16,
            topic_bytes_max: 17,
            client_id_bytes_max: 23,
            subscriptions_per_client_max: 19,
            preauth_packet_bytes_max: 700,
            user_properties_max: 0,
            user_property_bytes_max: 27,
            connect_timeout_secs: 20,
            write_timeout_secs: 27,
            park_idle_ms: 1234,
            connecting_max: 77,
            memory_budget_bytes: 2_000_000,
            keepalive_secs_max: 21,
            sessions_max: 22,
            session_expiry_secs_max: 24,
            topic_alias_max: 0,
            mesh_channel_capacity: 26,
            mesh_batch_max: 25,
            flow_high_water_messages: 27,
            flow_low_water_messages: 3,
            flow_hard_cap_messages: 28,
            flow_hard_cap_bytes: 3_000_000,
            flow_high_water_bytes: 5000,
            flow_qos0_queue_bytes_max: 6000,
            slow_consumer_timeout_ms: 2900,
            slow_consumer_policy: SlowConsumer::Drop,
            mesh_bytes_max: 2_000_000,
        };
        assert_eq!(c.limits, expected);
        let runtime = RuntimeConfig {
            io_memory_bytes: 8192,
            ring_depth: 8,
            spin_before_park_us: 0,
            pin_cores: false,
            preempt_timer_us: 250,
            transparent_huge_pages: true,
            allocator_purge_delay_ms: 0,
        };
        assert_eq!(c.runtime, runtime);
        assert_eq!(c.runtime.spin_before_park(), None);
        assert_eq!(RuntimeConfig::default().spin_before_park(), Some(Duration::from_micros(50)));
        assert_eq!(c.log.level, LogLevel::Debug);
    }

    /// The password-worker keys of `[auth]` (issue 9): read into their fields, bounds checked.
    #[test]
    fn auth_worker_keys_are_read_and_bounded() {
        let text =
            "[auth]\nhash_workers = 3\nhash_queue_max = 5\nfailed_logins_per_minute_max = 7\n";
        let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
        let a = &c.auth;
        assert_eq!((a.hash_workers, a.hash_queue_max, a.failed_logins_per_minute_max), (3, 5, 7));
        let d = AuthConfig::default();
        assert_eq!(
            (d.hash_workers, d.hash_queue_max, d.failed_logins_per_minute_max),
            (2, 1024, 30)
        );
        for (key, bad) in [
            ("hash_workers", "0"),
            ("hash_workers", "65"),
            ("hash_queue_max", "0"),
            ("failed_logins_per_minute_max", "0"),
        ] {
            let e = parse(&format!("[auth]\n{key} = {bad}\n")).expect_err(key);
            assert_eq!(e.key, format!("auth.{key}"), "{e}");
            assert_eq!(e.line, 2, "{e}");
        }
    }

    #[test]
    fn out_of_range_names_file_line_key_and_reason() {
        let mut text = String::new();
        for i in 1..=10 {
            text.push_str(&format!("# comment line {i}\n"));
        }
        text.push_str("[limits]\ninflight_max = 0\n");
        let e = parse_err(&text);
        assert_err(&e, 12, 16, "limits.inflight_max", "must be between 1 and 65535 (got 0)");
        assert_eq!(
            e.to_string(),
            "tern.toml:12:16: limits.inflight_max: must be between 1 and 65535 (got 0)"
        );
    }

    #[test]
    fn out_of_range_beyond_the_type_and_negative() {
        let e = parse_err("[limits]\ninflight_max = 70000\n");
        assert_err(&e, 2, 16, "limits.inflight_max", "must be between 1 and 65535 (got 70000)");
        let e = parse_err("[limits]\nretained_bytes_max = -5\n");
        assert_err(&e, 2, 22, "limits.retained_bytes_max", "(got -5)");
        let e = parse_err("[broker]\nshards = 0\n");
        assert_err(&e, 2, 10, "broker.shards", "must be between 1 and 256 (got 0)");
        let e = parse_err("[limits]\nclient_id_bytes_max = 22\n");
        assert_err(&e, 2, 23, "limits.client_id_bytes_max", "between 23 and 65535");
        let e = parse_err("[limits]\npark_idle_ms = 9\n");
        assert_err(&e, 2, 16, "limits.park_idle_ms", "between 10 and 3600000 (got 9)");
        let e = parse_err("[limits]\npark_idle_ms = 3600001\n");
        assert_err(&e, 2, 16, "limits.park_idle_ms", "between 10 and 3600000");
        let e = parse_err("[runtime]\nspin_before_park_us = 100001\n");
        assert_err(&e, 2, 23, "runtime.spin_before_park_us", "between 0 and 100000");
    }

    #[test]
    fn zero_is_refused_for_every_limit_but_topic_aliases_and_spin() {
        let limits = [
            "packet_size_bytes_max",
            "inflight_max",
            "session_queue_messages_max",
            "session_queue_bytes_max",
            "retained_messages_max",
            "retained_bytes_max",
            "topic_levels_max",
            "topic_bytes_max",
            "client_id_bytes_max",
            "subscriptions_per_client_max",
            "connect_timeout_secs",
            "write_timeout_secs",
            "park_idle_ms",
            "connecting_max",
            "memory_budget_bytes",
            "keepalive_secs_max",
            "sessions_max",
            "session_expiry_secs_max",
            "mesh_channel_capacity",
            "mesh_batch_max",
            "mesh_bytes_max",
            "flow_hard_cap_bytes",
            "flow_high_water_bytes",
            "flow_qos0_queue_bytes_max",
        ];
        for field in limits {
            let e = parse_err(&format!("[limits]\n{field} = 0\n"));
            assert_err(&e, 2, field.len() + 4, &format!("limits.{field}"), "(got 0)");
        }
        for (section, field) in [
            ("broker", "sys_interval_secs"),
            ("runtime", "io_memory_bytes"),
            ("runtime", "ring_depth"),
        ] {
            let e = parse_err(&format!("[{section}]\n{field} = 0\n"));
            assert_err(&e, 2, field.len() + 4, &format!("{section}.{field}"), "(got 0)");
        }
        let e = parse_err("[[listener]]\nconnections_max = 0\n");
        assert_err(&e, 2, 19, "listener[0].connections_max", "(got 0)");

        let c = parse("[limits]\ntopic_alias_max = 0\n[runtime]\nspin_before_park_us = 0\n");
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.limits.topic_alias_max, c.runtime.spin_before_park_us), (0, 0));
    }

    #[test]
    fn ring_depth_must_be_a_power_of_two() {
        let e = parse_err("[runtime]\nring_depth = 100\n");
        assert_err(&e, 2, 14, "runtime.ring_depth", "power of two (got 100)");
    }

    #[test]
    fn syntax_errors() {
        // The file is parsed whole before any key is read, so a syntax error has a position and
        // no key.
        let e = parse_err("[broker]\nsys_interval_secs = 10\n[limits\ninflight_max = 3\n");
        assert_err(&e, 3, 8, "", "invalid table header");
        assert!(e.to_string().starts_with("tern.toml:3:8: invalid table header"), "{e}");
        let e = parse_err("[limits]\ninflight_max = = 3\n");
        assert_eq!((e.line, e.key.as_str()), (2, ""), "{e}");
        let e = parse_err("[limits]\ninflight_max = 3\ninflight_max = 4\n");
        assert_err(&e, 3, 1, "", "duplicate key `inflight_max` in table `limits`");
        assert!(!e.message.contains('\n'), "{e:?}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse_err("[limits]\ninflight_max = 3\ninflight_maxx = 3\n");
        assert_err(&e, 3, 1, "limits.inflight_maxx", "unknown key `inflight_maxx`");
        let e = parse_err("# x\n[limitz]\n");
        assert_err(&e, 2, 2, "limitz", "unknown key `limitz`");
        let e = parse_err("[[listener]]\n[[listener]]\nbnid = \"127.0.0.1:1\"\n");
        assert_err(&e, 3, 1, "listener[1].bnid", "unknown key `bnid`");
        let e = parse_err("shards = 4\n");
        assert_err(&e, 1, 1, "shards", "unknown key `shards`");
        let e = parse_err("[[listener]]\nredirect = { reference = \"x\", parmanent = true }\n");
        assert_err(&e, 2, 31, "listener[0].redirect.parmanent", "unknown key `parmanent`");
        let e = parse_err("[[listener]]\n[listener.redirect]\nreference = \"x\"\nperm = true\n");
        assert_err(&e, 4, 1, "listener[0].redirect.perm", "unknown key `perm`");
    }

    #[test]
    fn wrong_types_are_refused() {
        let e = parse_err("[limits]\ninflight_max = \"32\"\n");
        assert_err(&e, 2, 16, "limits.inflight_max", "invalid type: string \"32\"");
        let e = parse_err("[limits]\ninflight_max = 1.5\n");
        assert_err(&e, 2, 16, "limits.inflight_max", "expected an integer");
        let e = parse_err("[runtime]\npin_cores = \"yes\"\n");
        assert_err(&e, 2, 13, "runtime.pin_cores", "expected a boolean");
        let e = parse_err("[[listener]]\nbind = 1883\n");
        assert_err(&e, 2, 8, "listener[0].bind", "invalid type: integer `1883`");
        let e = parse_err("[[listener]]\ntransport = \"quic\"\n");
        assert_err(&e, 2, 13, "listener[0].transport", "unknown variant `quic`");
        let e = parse_err("[limits]\nqueue_overflow = \"drop_all\"\n");
        assert_err(&e, 2, 18, "limits.queue_overflow", "unknown variant `drop_all`");
        let e = parse_err("[log]\nlevel = \"verbose\"\n");
        assert_err(&e, 2, 9, "log.level", "unknown variant `verbose`");
        let e = parse_err("limits = 5\n");
        assert_err(&e, 1, 10, "limits", "invalid type: integer `5`");
        let e = parse_err("[[listener]]\nredirect = { reference = 5 }\n");
        assert_err(&e, 2, 26, "listener[0].redirect.reference", "invalid type: integer `5`");
        let e = parse_err("[listener]\nbind = \"127.0.0.1:1883\"\n");
        assert_eq!((e.line, e.key.as_str()), (1, "listener"), "{e}");
        assert!(e.message.contains("[[listener]]"), "{e}");
    }

    #[test]
    fn dotted_keys_are_located() {
        let e = parse_err("# top\nlimits.inflight_max = 0\n");
        assert_err(&e, 2, 23, "limits.inflight_max", "(got 0)");
        let e = parse_err("limits.inflight_maxx = 1\n");
        assert_err(&e, 1, 8, "limits.inflight_maxx", "unknown key");
    }

    #[test]
    fn bad_bind_address() {
        let e = parse_err(
            "[[listener]]\nbind = \"127.0.0.1:1883\"\n[[listener]]\nbind = \"localhost:1884\"\n",
        );
        assert_err(&e, 4, 8, "listener[1].bind", "host names are not accepted");
        let e = parse_err("[[listener]]\nbind = \"127.0.0.1\"\n");
        assert_err(&e, 2, 8, "listener[0].bind", "not an IP address and port");
    }

    #[test]
    fn duplicate_listeners_are_refused() {
        let text =
            "[[listener]]\nbind = \"127.0.0.1:1883\"\n\n[[listener]]\nbind = \"127.0.0.1:1883\"\n";
        let e = parse_err(text);
        assert_err(&e, 5, 8, "listener[1].bind", "overlaps listener[0].bind (127.0.0.1:1883)");
        // The wildcard address covers every other address on the same port.
        let text = "[[listener]]\nbind = \"0.0.0.0:1883\"\n[[listener]]\nbind = \"[::1]:1883\"\n";
        assert_err(&parse_err(text), 4, 8, "listener[1].bind", "overlaps listener[0].bind");
        // Different ports, or port 0 (a fresh port per bind), are fine.
        let ok = "[[listener]]\nbind = \"0.0.0.0:1883\"\n[[listener]]\nbind = \"0.0.0.0:8883\"\n";
        assert_eq!(parse(ok).map(|c| c.listeners.len()), Ok(2));
        let ok = "[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n";
        assert_eq!(parse(ok).map(|c| c.listeners.len()), Ok(2));
        // Two listeners both relying on the default address collide too; no line is known.
        let e = parse_err("[[listener]]\nallow_anonymous = true\n[[listener]]\n");
        assert_eq!((e.line, e.key.as_str()), (0, "listener[1].bind"), "{e}");
    }

    #[test]
    fn transports_and_their_keys() {
        let text = "[[listener]]\nbind = \"0.0.0.0:8883\"\ntransport = \"tls\"\n\
                    certfile = \"/etc/tern/chain.pem\"\nkeyfile = \"/etc/tern/key.pem\"\n\
                    cafile = \"/etc/tern/ca.pem\"\nrequire_certificate = true\n\
                    use_identity_as_username = true\n\
                    [[listener]]\nbind = \"0.0.0.0:8080\"\ntransport = \"ws\"\n\
                    ws_path = \"/broker/mqtt\"\n\
                    [[listener]]\nbind = \"0.0.0.0:8443\"\ntransport = \"wss\"\n\
                    certfile = \"c.pem\"\nkeyfile = \"k.pem\"\n";
        let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
        let tls = &c.listeners[0];
        assert_eq!(tls.transport, Transport::Tls);
        assert_eq!(tls.certfile.as_deref(), Some(Path::new("/etc/tern/chain.pem")));
        assert_eq!(tls.keyfile.as_deref(), Some(Path::new("/etc/tern/key.pem")));
        assert_eq!(tls.cafile.as_deref(), Some(Path::new("/etc/tern/ca.pem")));
        assert!(tls.require_certificate && tls.use_identity_as_username);
        assert_eq!(tls.ws_path, "/mqtt");
        assert_eq!(
            (c.listeners[1].transport, c.listeners[1].ws_path.as_str()),
            (Transport::Ws, "/broker/mqtt")
        );
        let wss = &c.listeners[2];
        assert_eq!((wss.transport, wss.ws_path.as_str()), (Transport::Wss, "/mqtt"));
        assert!(wss.cafile.is_none() && !wss.require_certificate);
    }

    #[test]
    fn tls_needs_its_files() {
        for transport in ["tls", "wss"] {
            let text =
                format!("[[listener]]\nbind = \"0.0.0.0:8883\"\ntransport = \"{transport}\"\n");
            let e = parse_err(&text);
            assert_err(&e, 3, 13, "listener[0].certfile", "needs certfile");
            assert_eq!(
                e.to_string(),
                format!(
                    "tern.toml:3:13: listener[0].certfile: missing: transport \"{transport}\" needs \
                     certfile (the PEM certificate chain) and keyfile"
                )
            );
        }
        let e = parse_err("[[listener]]\ntransport = \"tls\"\ncertfile = \"c.pem\"\n");
        assert_err(&e, 2, 13, "listener[0].keyfile", "missing: transport \"tls\" needs keyfile");
        let base = "[[listener]]\ntransport = \"tls\"\ncertfile = \"c\"\nkeyfile = \"k\"\n";
        let e = parse_err(&format!("{base}require_certificate = true\n"));
        assert_err(&e, 5, 23, "listener[0].require_certificate", "needs cafile");
        let e = parse_err(&format!("{base}cafile = \"ca\"\nuse_identity_as_username = true\n"));
        assert_err(&e, 6, 28, "listener[0].use_identity_as_username", "require_certificate");
        // Optional client certificates: a CA without require_certificate is fine.
        let c = parse(&format!("{base}cafile = \"ca\"\n")).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.listeners[0].cafile.is_some() && !c.listeners[0].require_certificate);
    }

    #[test]
    fn keys_of_other_transports_are_refused() {
        let e = parse_err("[[listener]]\ncertfile = \"c.pem\"\n");
        assert_err(&e, 2, 12, "listener[0].certfile", "only for transport \"tls\" or \"wss\"");
        assert!(e.message.contains("transport is \"tcp\""), "{e}");
        let e = parse_err("[[listener]]\ntransport = \"ws\"\nrequire_certificate = true\n");
        assert_err(&e, 3, 23, "listener[0].require_certificate", "transport is \"ws\"");
        let e = parse_err("[[listener]]\ntransport = \"tls\"\ncertfile = \"c\"\nkeyfile = \"k\"\nws_path = \"/x\"\n");
        assert_err(&e, 5, 11, "listener[0].ws_path", "only for transport \"ws\" or \"wss\"");
    }

    #[test]
    fn ws_path_must_be_a_path() {
        for bad in ["mqtt", "", "/a b", "/a?b", "/a#b", "/\u{e9}"] {
            let text = format!("[[listener]]\ntransport = \"ws\"\nws_path = {bad:?}\n");
            let e = parse_err(&text);
            assert_err(&e, 3, 11, "listener[0].ws_path", "must be an HTTP path");
        }
        let long = format!("/{}", "a".repeat(256));
        let e = parse_err(&format!("[[listener]]\ntransport = \"ws\"\nws_path = \"{long}\"\n"));
        assert_err(&e, 3, 11, "listener[0].ws_path", "of 1 to 256 bytes");
        assert!(parse("[[listener]]\ntransport = \"ws\"\nws_path = \"/\"\n").is_ok());
    }

    #[test]
    fn listener_list_bounds() {
        let e = parse_err("listener = []\n");
        assert_err(&e, 1, 12, "listener", "between 1 and 16 [[listener]] entries (got 0)");
        let text: String =
            (0..17).map(|i| format!("[[listener]]\nbind = \"127.0.0.1:{}\"\n", 2000 + i)).collect();
        assert_err(&parse_err(&text), 1, 1, "listener", "(got 17)");
    }

    #[test]
    fn redirect_needs_a_reference() {
        let e = parse_err("[[listener]]\n[listener.redirect]\npermanent = true\n");
        assert_eq!((e.key.as_str(), e.line), ("listener[0].redirect.reference", 3), "{e}");
        assert!(e.message.contains("missing required key \"reference\""), "{e}");
        let e = parse_err("[[listener]]\nredirect = { reference = \"\" }\n");
        assert_err(&e, 2, 26, "listener[0].redirect.reference", "between 1 and 1024 bytes");
    }

    #[test]
    fn cross_field_rules() {
        // Reported at the key the user wrote, whichever side of the rule it is.
        let e = parse_err("[limits]\npacket_size_bytes_max = 33554432\n");
        assert_err(
            &e,
            2,
            25,
            "limits.packet_size_bytes_max",
            "session_queue_bytes_max (16777216) must be at least packet_size_bytes_max (33554432)",
        );
        let e = parse_err("[limits]\nsession_queue_bytes_max = 1000\n");
        assert_err(&e, 2, 27, "limits.session_queue_bytes_max", "at least packet_size_bytes_max");
        let e = parse_err("[limits]\nretained_bytes_max = 1000\n");
        assert_err(&e, 2, 22, "limits.retained_bytes_max", "at least packet_size_bytes_max");
        let e = parse_err("[limits]\nmesh_batch_max = 2048\n");
        assert_err(
            &e,
            2,
            18,
            "limits.mesh_batch_max",
            "mesh_channel_capacity (1024) must be at least",
        );
        let e = parse_err("[limits]\nmesh_batch_max = 8\nmesh_channel_capacity = 4\n");
        assert_err(
            &e,
            3,
            25,
            "limits.mesh_channel_capacity",
            "must be at least mesh_batch_max (8)",
        );
        // Issue 9: the QoS 0 overshoot bound sits at or above the byte high-water mark (below
        // it, QoS 0 would be dropped before any publisher is paused).
        let e = parse_err("[limits]\nflow_high_water_bytes = 2097152\n");
        assert_err(
            &e,
            2,
            25,
            "limits.flow_high_water_bytes",
            "flow_qos0_queue_bytes_max (786432) must be at least flow_high_water_bytes (2097152)",
        );
    }

    #[test]
    fn validate_catches_configs_built_in_code() {
        let mut c = Config::default();
        c.limits.inflight_max = 0;
        let e = c.validate().expect_err("inflight_max = 0");
        assert_eq!(e.key, "limits.inflight_max");
        assert_eq!(
            e.to_string(),
            "<built-in>: limits.inflight_max: must be between 1 and 65535 (got 0)"
        );
        let mut c = Config::default();
        c.listeners[0].transport = Transport::Wss;
        assert_eq!(c.validate().map_err(|e| e.key), Err("listener[0].certfile".to_owned()));
        let mut c = Config::default();
        c.listeners.clear();
        assert_eq!(c.validate().map_err(|e| e.key), Err("listener".to_owned()));
    }

    #[test]
    fn load_names_the_file() {
        let path = Path::new("/nonexistent/dir/tern.toml");
        let e = Config::load(path).expect_err("missing file");
        assert_eq!((e.file.as_str(), e.line, e.column), ("/nonexistent/dir/tern.toml", 0, 0));
        assert!(e.to_string().starts_with("/nonexistent/dir/tern.toml: cannot read: "), "{e}");

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[limits]\n\ninflight_max = 0\n").expect("write");
        let e = Config::load(&path).expect_err("bad value");
        assert_eq!(e.file, path.display().to_string());
        assert_eq!((e.line, e.column, e.key.as_str()), (3, 16, "limits.inflight_max"));
        std::fs::write(&path, "#".repeat(CONFIG_FILE_BYTES_MAX as usize + 1)).expect("write");
        let e = Config::load(&path).expect_err("too big");
        assert!(e.message.contains("larger than"), "{e}");
        std::fs::write(&path, "[limits]\ninflight_max = 7\n").expect("write");
        assert_eq!(Config::load(&path).map(|c| c.limits.inflight_max), Ok(7));
    }

    #[test]
    fn bounds_fit_their_field_types() {
        // `bounded` narrows after the bound check; this is what makes that infallible: both ends
        // of every declared bound are read into the field without "out of range".
        let mut zero_allowed = Vec::new();
        for table in Config::describe() {
            let header = if table.array {
                format!("[[{}]]", table.path)
            } else {
                format!("[{}]", table.path)
            };
            for key in &table.keys {
                let Some((lo, hi)) = key.bound else { continue };
                let path = format!("{}.{}", table.path, key.key);
                assert!(lo <= hi, "{path}");
                if lo == 0 {
                    zero_allowed.push(path.clone());
                }
                for v in [lo, hi] {
                    if let Err(e) = parse(&format!("{header}\n{} = {v}\n", key.key)) {
                        let own = e.key.ends_with(&format!(".{}", key.key));
                        assert!(!(own && e.message.contains("range")), "{path} = {v}: {e}");
                        assert!(!(own && e.message.contains("between")), "{path} = {v}: {e}");
                    }
                }
            }
        }
        // 0 is allowed only where it is a documented real value (or a count of optional
        // things, or QoS 0).
        assert_eq!(
            zero_allowed,
            [
                "limits.user_properties_max",
                "limits.user_property_bytes_max",
                "limits.topic_alias_max",
                "runtime.spin_before_park_us",
                "runtime.allocator_purge_delay_ms",
                "bridge.topic.qos",
            ]
        );
    }

    #[test]
    fn the_generated_reference_is_the_defaults() {
        let text = Config::reference();
        let config = Config::from_str_named(&text, "reference.toml").unwrap_or_else(|e| {
            panic!("{e}\n{text}");
        });
        assert_eq!(config, Config::default());
        assert!(text.contains("[limits]\n") && text.contains("[[listener]]\n"), "{text}");
        assert!(text.contains("\ninflight_max = 32\n"), "{text}");
        assert!(text.contains("# Bound: 1..=65535.\ninflight_max = 32\n"), "{text}");
    }

    /// The example `tern.toml` documents every declared key: a key with a default is set to it
    /// (or shown commented out with it), a key absent by default is shown commented out.
    #[test]
    fn example_file_documents_every_declared_key() {
        let text = include_str!("../tern.toml");
        let file: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<&str> = text.lines().map(|l| l.trim_start_matches(['#', ' '])).collect();
        let mut missing = Vec::new();
        for table in Config::describe() {
            // The table in the file: arrays of tables by their first entry.
            let mut here = Some(&file);
            for part in table.path.split('.') {
                here = here.and_then(|t| match t.get(part) {
                    Some(toml::Value::Table(t)) => Some(t),
                    Some(toml::Value::Array(a)) => a.first().and_then(|v| v.as_table()),
                    _ => None,
                });
            }
            for key in &table.keys {
                let path = format!("{}.{}", table.path, key.key);
                let set = here.and_then(|t| t.get(key.key));
                match (&key.default, set) {
                    (Some(default), Some(value)) => {
                        let want: toml::Table = toml::from_str(&format!("v = {default}"))
                            .unwrap_or_else(|e| panic!("{path}: {e}"));
                        assert_eq!(Some(value), want.get("v"), "{path} is not at its default");
                    }
                    (Some(default), None) => {
                        let shown = format!("{} = {default}", key.key);
                        let example = format!("{} = ", key.key);
                        if !lines.iter().any(|l| l.starts_with(&shown) || l.starts_with(&example)) {
                            missing.push(path);
                        }
                    }
                    (None, Some(_)) => panic!("{path} is absent by default, not set"),
                    (None, None) => {
                        let example = format!("{} = ", key.key);
                        if !lines.iter().any(|l| l.starts_with(&example)) {
                            missing.push(path);
                        }
                    }
                }
            }
        }
        assert!(missing.is_empty(), "tern.toml does not document {missing:?}");
    }

    /// A scratch directory for tests that write auth files; removed on drop.
    struct AuthDir(tempfile::TempDir);

    impl AuthDir {
        fn new() -> AuthDir {
            AuthDir(tempfile::tempdir().expect("temp dir"))
        }

        fn file(&self, name: &str, text: &str) -> String {
            let path = self.0.path().join(name);
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        }
    }

    #[test]
    fn auth_files_are_read_and_checked() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
        let pw = fixtures.join("mosquitto.passwd");
        let acl = fixtures.join("acl.conf");
        let text = format!(
            "[auth]\npassword_file = {:?}\nacl_file = {:?}\n",
            pw.display().to_string(),
            acl.display().to_string()
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.auth.password_file.as_deref(), Some(pw.as_path()));
        assert_eq!(c.auth.acl_file.as_deref(), Some(acl.as_path()));
        assert_eq!(Config::default().auth, AuthConfig::default());
        assert_eq!(c.validate(), Ok(()));

        // An empty ACL file is valid: it denies everything.
        let dir = AuthDir::new();
        let empty = dir.file("empty.acl", "");
        let c = parse(&format!("[auth]\nacl_file = {empty:?}\n")).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.auth.password_file.is_none());
    }

    #[test]
    fn auth_file_errors_name_the_file_line_and_reason() {
        let dir = AuthDir::new();
        let acl = dir.file("acl", "# acl\ntopic read a\ntopik read b\n");
        let e = parse_err(&format!("# x\n[auth]\nacl_file = {acl:?}\n"));
        assert_err(&e, 3, 12, "auth.acl_file", &format!("{acl}:3: unknown keyword \"topik\""));
        let pw = dir.file("pw", "# users\nalice\n");
        let e = parse_err(&format!("[auth]\npassword_file = {pw:?}\n"));
        assert_err(&e, 2, 17, "auth.password_file", &format!("{pw}:2: missing ':'"));
        let pw = dir.file("pw2", "alice:\n");
        let e = parse_err(&format!("[auth]\npassword_file = {pw:?}\n"));
        assert_err(&e, 2, 17, "auth.password_file", "pw2:1: empty hash for user \"alice\"");

        let e = parse_err("[auth]\nacl_file = \"/nonexistent/tern/acl\"\n");
        assert_err(&e, 2, 12, "auth.acl_file", "/nonexistent/tern/acl: cannot read: ");
        let e = parse_err("[auth]\npassword_file = \"/nonexistent/tern/pw\"\n");
        assert_err(&e, 2, 17, "auth.password_file", "/nonexistent/tern/pw: cannot read: ");

        let e = parse_err("[auth]\npasword_file = \"x\"\n");
        assert_err(&e, 2, 1, "auth.pasword_file", "unknown key `pasword_file`");
        let e = parse_err("[auth]\nacl_file = 5\n");
        assert_err(&e, 2, 12, "auth.acl_file", "invalid type: integer `5`");

        // A config built in code is checked the same way, without a position.
        let mut c = Config::default();
        c.auth.acl_file = Some("/nonexistent/tern/acl".into());
        let e = c.validate().expect_err("missing acl file");
        assert_eq!((e.key.as_str(), e.line), ("auth.acl_file", 0));
        assert!(e.message.starts_with("/nonexistent/tern/acl: cannot read: "), "{e}");
    }
}
