//! The records of a shard's log: every state change that must survive a restart, encoded as
//! the body of one frame (`tern::persist::format` in the broker crate), with no IO and no clock.
//!
//! Each body starts with a kind byte. Strings are a u16 length then UTF-8; binary fields a u32
//! length then bytes; options a 0/1 byte then the value. Times are absolute Unix milliseconds,
//! because an `Instant` means nothing after a restart: the shard converts on the way in and out.
//!
//! The records describe a session the way the shard changes it, one step at a time, so that a
//! replay in log order rebuilds the state the broker had acknowledged:
//!
//! | record | written when |
//! |---|---|
//! | `SessionOpen` | a persistent session is created or resumed by a CONNECT |
//! | `SessionExpiry` | its expiry interval changes (v5 DISCONNECT) |
//! | `SessionEnd` | it expires, is discarded by a clean start, or moves to another shard |
//! | `Subscribe` / `Unsubscribe` | before the SUBACK / UNSUBACK |
//! | `Enqueue` | a QoS 1/2 message is routed to the session, before the publisher's PUBACK/PUBREC |
//! | `Sent` | the oldest queued message goes out under a packet id |
//! | `Released` | the client's PUBREC for an outbound QoS 2 message |
//! | `Acked` | the client's PUBACK / PUBCOMP: the message is done |
//! | `Qos2Received` / `Qos2Released` | an inbound QoS 2 id, before PUBREC / before PUBCOMP |
//! | `RetainSet` / `RetainClear` | a retained message is stored or cleared |
//! | `RetainSource` | after a client's `RetainSet`: who published it (the ACL check of CVE-2018-12546 survives a restart) |
//! | `Snapshot` | a whole session, written by compaction and by the shard a session moves to |
//! | `WillPending` | a v5 will starts waiting for its Will Delay Interval (and by compaction) |
//! | `WillDone` | that will was published or cancelled (the client came back) |

use bytes::{Bytes, BytesMut};

use crate::codec::primitives::Reader;
use crate::codec::{
    Properties, PropertyContext, QoS, RetainHandling, SubscriptionOptions, TopicFilter, TopicName,
    Will,
};

/// The client that published a retained message ([`Record::RetainSource`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSource {
    /// Client identifier.
    pub client_id: String,
    /// User name, if the client gave one.
    pub username: Option<String>,
}

/// A message as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Topic name (a record whose topic does not validate is refused when read).
    pub topic: TopicName,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag it was published with.
    pub retain: bool,
    /// v5 properties forwarded to subscribers.
    pub properties: Properties,
    /// When the Message Expiry Interval runs out, Unix milliseconds.
    pub expires_at_unix_ms: Option<u64>,
}

/// A delivery of a message to one session: the message and how it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDelivery {
    /// The message.
    pub msg: StoredMessage,
    /// Delivery QoS: min(publish QoS, subscription QoS).
    pub qos: QoS,
    /// RETAIN flag on the wire.
    pub retain: bool,
    /// Matching v5 subscription identifiers.
    pub subscription_ids: Vec<u32>,
}

/// An outbound message in flight, in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredInflight {
    /// Its packet id.
    pub packet_id: u16,
    /// The delivery.
    pub delivery: StoredDelivery,
    /// True once the client's PUBREC arrived (QoS 2, waiting for PUBCOMP).
    pub released: bool,
}

/// A whole session, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// User name of its last connection.
    pub username: Option<String>,
    /// Session Expiry Interval, seconds.
    pub expiry_secs: u32,
    /// When it went offline, Unix milliseconds (None while connected at snapshot time).
    pub offline_since_unix_ms: Option<u64>,
    /// Subscriptions: filter, options, identifier.
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<u32>)>,
    /// Outbound messages in flight, in send order.
    pub inflight: Vec<StoredInflight>,
    /// Queued deliveries, oldest first.
    pub queue: Vec<StoredDelivery>,
    /// Inbound QoS 2 ids waiting for PUBREL.
    pub inbound_qos2: Vec<u16>,
}

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// A persistent session was created (`clean`: any earlier state is discarded) or resumed.
    SessionOpen {
        /// Client identifier.
        client_id: String,
        /// Discard earlier state first.
        clean: bool,
        /// User name of the connection.
        username: Option<String>,
        /// Session Expiry Interval, seconds.
        expiry_secs: u32,
    },
    /// The Session Expiry Interval changed; `offline_since_unix_ms` is set when the
    /// connection ended.
    SessionExpiry {
        /// Client identifier.
        client_id: String,
        /// New interval, seconds.
        expiry_secs: u32,
        /// When the connection ended, if it did.
        offline_since_unix_ms: Option<u64>,
    },
    /// The session was installed on this shard at `stamp_us` (microseconds since the Unix
    /// epoch, from one clock reading shared by all shards). When a crash during a move between
    /// shards leaves a session in two logs, recovery keeps the copy with the later stamp.
    /// Additive kind: logs without it keep their session where it was first found.
    Owned {
        /// Client identifier.
        client_id: String,
        /// When the shard took the session.
        stamp_us: u64,
    },
    /// The session is gone from this shard's log.
    SessionEnd {
        /// Client identifier.
        client_id: String,
    },
    /// A subscription was added or replaced.
    Subscribe {
        /// Client identifier.
        client_id: String,
        /// Topic filter as sent (with `$share/` prefix when shared).
        filter: TopicFilter,
        /// Options.
        options: SubscriptionOptions,
        /// v5 Subscription Identifier.
        identifier: Option<u32>,
    },
    /// A subscription was removed.
    Unsubscribe {
        /// Client identifier.
        client_id: String,
        /// Topic filter.
        filter: TopicFilter,
    },
    /// A message was queued for the session.
    Enqueue {
        /// Client identifier.
        client_id: String,
        /// The delivery.
        delivery: StoredDelivery,
    },
    /// The oldest queued message was sent with this packet id.
    Sent {
        /// Client identifier.
        client_id: String,
        /// Packet id it was sent with.
        packet_id: u16,
    },
    /// The first `count` queued messages were taken off the queue without going in flight
    /// (expired, written at QoS 0, or too large for the client). Added after format 1's
    /// first records: an additive kind, older logs never hold it.
    Dequeued {
        /// Client identifier.
        client_id: String,
        /// How many.
        count: u32,
    },
    /// PUBREC received for an outbound QoS 2 message.
    Released {
        /// Client identifier.
        client_id: String,
        /// Packet id.
        packet_id: u16,
    },
    /// PUBACK or PUBCOMP received: the outbound message is done.
    Acked {
        /// Client identifier.
        client_id: String,
        /// Packet id.
        packet_id: u16,
    },
    /// An inbound QoS 2 PUBLISH was accepted (before its PUBREC).
    Qos2Received {
        /// Client identifier.
        client_id: String,
        /// Packet id.
        packet_id: u16,
    },
    /// An inbound QoS 2 exchange ended with PUBREL (before its PUBCOMP).
    Qos2Released {
        /// Client identifier.
        client_id: String,
        /// Packet id.
        packet_id: u16,
    },
    /// A retained message was stored.
    RetainSet(StoredMessage),
    /// Who published the retained message of `topic`, written right after its `RetainSet`
    /// (none for one the broker published): the ACL check of CVE-2018-12546 still applies
    /// after a restart. A `RetainSet` without one (the broker's, or a log written before
    /// sources were logged) restores with no source.
    RetainSource {
        /// Topic name.
        topic: String,
        /// The publishing client.
        source: StoredSource,
    },
    /// The retained message of a topic was cleared.
    RetainClear {
        /// Topic name.
        topic: String,
    },
    /// A whole session.
    Snapshot {
        /// Client identifier.
        client_id: String,
        /// Its state.
        session: SessionSnapshot,
    },
    /// A v5 will is waiting for its Will Delay Interval (or its session's expiry, whichever
    /// is first, [MQTT-3.1.3-9]): it is published at `due_unix_ms` unless a `WillDone`
    /// follows. The deadline is wall-clock time, so the downtime of a restart counts.
    /// Additive kind: older logs never hold it.
    WillPending {
        /// Client identifier.
        client_id: String,
        /// The will as the client sent it (properties as in CONNECT).
        will: Will,
        /// When it is due, Unix milliseconds.
        due_unix_ms: u64,
    },
    /// The pending will of the session was published, or cancelled by a reconnect.
    /// Additive kind: older logs never hold it.
    WillDone {
        /// Client identifier.
        client_id: String,
    },
}

/// Why a record body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The body ended inside a field.
    #[error("record truncated")]
    Truncated,
    /// An unknown kind byte.
    #[error("unknown record kind {0:#04x}")]
    Kind(u8),
    /// A field holds a value it cannot hold.
    #[error("invalid record field: {0}")]
    Invalid(&'static str),
    /// Bytes were left after the record.
    #[error("{0} bytes after the record")]
    Trailing(usize),
}

/// Largest string field (topic names, client ids, user names fit the MQTT limit of 65 535).
const STRING_MAX: usize = u16::MAX as usize;

mod kind {
    pub const SESSION_OPEN: u8 = 0x01;
    pub const SESSION_EXPIRY: u8 = 0x02;
    pub const SESSION_END: u8 = 0x03;
    pub const OWNED: u8 = 0x04;
    pub const SUBSCRIBE: u8 = 0x10;
    pub const UNSUBSCRIBE: u8 = 0x11;
    pub const ENQUEUE: u8 = 0x20;
    pub const SENT: u8 = 0x21;
    pub const RELEASED: u8 = 0x22;
    pub const ACKED: u8 = 0x23;
    pub const DEQUEUED: u8 = 0x24;
    pub const QOS2_RECEIVED: u8 = 0x30;
    pub const QOS2_RELEASED: u8 = 0x31;
    pub const RETAIN_SET: u8 = 0x40;
    pub const RETAIN_CLEAR: u8 = 0x41;
    pub const RETAIN_SOURCE: u8 = 0x42;
    pub const SNAPSHOT: u8 = 0x50;
    pub const WILL_PENDING: u8 = 0x60;
    pub const WILL_DONE: u8 = 0x61;
}

/// Writes fields of a record body.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    /// Strings longer than `STRING_MAX` cannot reach the log: the codec bounds every MQTT
    /// string at 65 535 bytes before the shard sees it.
    fn str(&mut self, s: &str) {
        assert!(s.len() <= STRING_MAX, "invariant: MQTT strings fit u16");
        self.u16(s.len() as u16);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bin(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).expect("invariant: payloads are bounded by the codec"));
        self.0.extend_from_slice(b);
    }
    fn opt_str(&mut self, s: Option<&str>) {
        self.bool(s.is_some());
        if let Some(s) = s {
            self.str(s);
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.u32(v);
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.u64(v);
        }
    }
    fn options(&mut self, o: &SubscriptionOptions) {
        let byte = o.qos as u8
            | u8::from(o.no_local) << 2
            | u8::from(o.retain_as_published) << 3
            | (o.retain_handling as u8) << 4;
        self.u8(byte);
    }
    /// What a stored message and a will both start with: topic, payload, QoS, retain and
    /// properties.
    fn head(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, props: &Properties) {
        self.str(topic);
        self.bin(payload);
        self.u8(qos as u8);
        self.bool(retain);
        let mut encoded = BytesMut::new();
        props.encode(&mut encoded);
        self.bin(&encoded);
    }
    fn message(&mut self, m: &StoredMessage) {
        self.head(&m.topic, &m.payload, m.qos, m.retain, &m.properties);
        self.opt_u64(m.expires_at_unix_ms);
    }
    fn will(&mut self, w: &Will) {
        self.head(&w.topic, &w.payload, w.qos, w.retain, &w.properties);
    }
    fn delivery(&mut self, d: &StoredDelivery) {
        self.message(&d.msg);
        self.u8(d.qos as u8);
        self.bool(d.retain);
        self.u32(d.subscription_ids.len() as u32);
        for id in &d.subscription_ids {
            self.u32(*id);
        }
    }
}

/// Reads fields of a record body; every read is bounds-checked.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bool(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Invalid("flag is not 0 or 1")),
        }
    }
    /// A topic filter, checked as a SUBSCRIBE's would be.
    fn filter(&mut self) -> Result<TopicFilter, RecordError> {
        TopicFilter::new(self.str()?, true).map_err(|_| RecordError::Invalid("topic filter"))
    }
    fn str(&mut self) -> Result<String, RecordError> {
        let n = usize::from(self.u16()?);
        let b = self.take(n)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| RecordError::Invalid("not UTF-8"))
    }
    fn bin(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn opt_str(&mut self) -> Result<Option<String>, RecordError> {
        Ok(if self.bool()? { Some(self.str()?) } else { None })
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, RecordError> {
        Ok(if self.bool()? { Some(self.u32()?) } else { None })
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, RecordError> {
        Ok(if self.bool()? { Some(self.u64()?) } else { None })
    }
    fn qos(&mut self) -> Result<QoS, RecordError> {
        QoS::from_u8(self.u8()?).ok_or(RecordError::Invalid("QoS above 2"))
    }
    fn packet_id(&mut self) -> Result<u16, RecordError> {
        match self.u16()? {
            0 => Err(RecordError::Invalid("packet id 0")),
            id => Ok(id),
        }
    }
    fn options(&mut self) -> Result<SubscriptionOptions, RecordError> {
        let b = self.u8()?;
        if b & 0b1100_0000 != 0 {
            return Err(RecordError::Invalid("reserved subscription option bits"));
        }
        let qos = QoS::from_u8(b & 0b11).ok_or(RecordError::Invalid("QoS above 2"))?;
        let retain_handling = match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(RecordError::Invalid("retain handling 3")),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: b & 0b0100 != 0,
            retain_as_published: b & 0b1000 != 0,
            retain_handling,
        })
    }
    /// See [`Writer::head`]; the properties are those allowed in `context`.
    fn head(&mut self, context: PropertyContext) -> Result<Will, RecordError> {
        let topic = TopicName::new(self.str()?).map_err(|_| RecordError::Invalid("topic"))?;
        let payload = Bytes::copy_from_slice(self.bin()?);
        let qos = self.qos()?;
        let retain = self.bool()?;
        let props = Bytes::copy_from_slice(self.bin()?);
        let mut r = Reader::new(props);
        let properties = Properties::decode(&mut r, context)
            .map_err(|_| RecordError::Invalid("message properties"))?;
        if r.remaining() != 0 {
            return Err(RecordError::Invalid("bytes after the message properties"));
        }
        Ok(Will { topic, payload, qos, retain, properties })
    }
    fn message(&mut self) -> Result<StoredMessage, RecordError> {
        let Will { topic, payload, qos, retain, properties } =
            self.head(PropertyContext::Publish)?;
        let expires_at_unix_ms = self.opt_u64()?;
        Ok(StoredMessage { topic, payload, qos, retain, properties, expires_at_unix_ms })
    }
    fn will(&mut self) -> Result<Will, RecordError> {
        self.head(PropertyContext::Will)
    }
    fn delivery(&mut self) -> Result<StoredDelivery, RecordError> {
        let msg = self.message()?;
        let qos = self.qos()?;
        let retain = self.bool()?;
        let n = self.u32()? as usize;
        // Each id is 4 bytes: a count the body cannot hold is refused before allocating.
        if n > self.0.len() / 4 {
            return Err(RecordError::Truncated);
        }
        let subscription_ids = (0..n).map(|_| self.u32()).collect::<Result<_, _>>()?;
        Ok(StoredDelivery { msg, qos, retain, subscription_ids })
    }
    /// A count of items of at least `min_size` bytes each, refused if the body cannot hold it.
    fn count(&mut self, min_size: usize) -> Result<usize, RecordError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / min_size {
            return Err(RecordError::Truncated);
        }
        Ok(n)
    }
}

impl Record {
    /// Appends the record's body (kind byte first) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Record::SessionOpen { client_id, clean, username, expiry_secs } => {
                w.u8(kind::SESSION_OPEN);
                w.str(client_id);
                w.bool(*clean);
                w.opt_str(username.as_deref());
                w.u32(*expiry_secs);
            }
            Record::SessionExpiry { client_id, expiry_secs, offline_since_unix_ms } => {
                w.u8(kind::SESSION_EXPIRY);
                w.str(client_id);
                w.u32(*expiry_secs);
                w.opt_u64(*offline_since_unix_ms);
            }
            Record::SessionEnd { client_id } => {
                w.u8(kind::SESSION_END);
                w.str(client_id);
            }
            Record::Owned { client_id, stamp_us } => {
                w.u8(kind::OWNED);
                w.str(client_id);
                w.u64(*stamp_us);
            }
            Record::Subscribe { client_id, filter, options, identifier } => {
                w.u8(kind::SUBSCRIBE);
                w.str(client_id);
                w.str(filter);
                w.options(options);
                w.opt_u32(*identifier);
            }
            Record::Unsubscribe { client_id, filter } => {
                w.u8(kind::UNSUBSCRIBE);
                w.str(client_id);
                w.str(filter);
            }
            Record::Enqueue { client_id, delivery } => {
                w.u8(kind::ENQUEUE);
                w.str(client_id);
                w.delivery(delivery);
            }
            Record::Sent { client_id, packet_id } => {
                id_record(&mut w, kind::SENT, client_id, *packet_id)
            }
            Record::Dequeued { client_id, count } => {
                w.u8(kind::DEQUEUED);
                w.str(client_id);
                w.u32(*count);
            }
            Record::Released { client_id, packet_id } => {
                id_record(&mut w, kind::RELEASED, client_id, *packet_id)
            }
            Record::Acked { client_id, packet_id } => {
                id_record(&mut w, kind::ACKED, client_id, *packet_id)
            }
            Record::Qos2Received { client_id, packet_id } => {
                id_record(&mut w, kind::QOS2_RECEIVED, client_id, *packet_id)
            }
            Record::Qos2Released { client_id, packet_id } => {
                id_record(&mut w, kind::QOS2_RELEASED, client_id, *packet_id)
            }
            Record::RetainSet(m) => {
                w.u8(kind::RETAIN_SET);
                w.message(m);
            }
            Record::RetainClear { topic } => {
                w.u8(kind::RETAIN_CLEAR);
                w.str(topic);
            }
            Record::RetainSource { topic, source } => {
                w.u8(kind::RETAIN_SOURCE);
                w.str(topic);
                w.str(&source.client_id);
                w.opt_str(source.username.as_deref());
            }
            Record::Snapshot { client_id, session: s } => {
                w.u8(kind::SNAPSHOT);
                w.str(client_id);
                w.opt_str(s.username.as_deref());
                w.u32(s.expiry_secs);
                w.opt_u64(s.offline_since_unix_ms);
                w.u32(s.subscriptions.len() as u32);
                for (filter, options, identifier) in &s.subscriptions {
                    w.str(filter);
                    w.options(options);
                    w.opt_u32(*identifier);
                }
                w.u32(s.inflight.len() as u32);
                for f in &s.inflight {
                    w.u16(f.packet_id);
                    w.delivery(&f.delivery);
                    w.bool(f.released);
                }
                w.u32(s.queue.len() as u32);
                for d in &s.queue {
                    w.delivery(d);
                }
                w.u32(s.inbound_qos2.len() as u32);
                for id in &s.inbound_qos2 {
                    w.u16(*id);
                }
            }
            Record::WillPending { client_id, will, due_unix_ms } => {
                w.u8(kind::WILL_PENDING);
                w.str(client_id);
                w.will(will);
                w.u64(*due_unix_ms);
            }
            Record::WillDone { client_id } => {
                w.u8(kind::WILL_DONE);
                w.str(client_id);
            }
        }
    }

    /// Reads a record body. Never panics; refuses unknown kinds, bad values and trailing bytes.
    pub fn decode(body: &[u8]) -> Result<Self, RecordError> {
        let mut f = Fields(body);
        let record = match f.u8()? {
            kind::SESSION_OPEN => Record::SessionOpen {
                client_id: f.str()?,
                clean: f.bool()?,
                username: f.opt_str()?,
                expiry_secs: f.u32()?,
            },
            kind::SESSION_EXPIRY => Record::SessionExpiry {
                client_id: f.str()?,
                expiry_secs: f.u32()?,
                offline_since_unix_ms: f.opt_u64()?,
            },
            kind::SESSION_END => Record::SessionEnd { client_id: f.str()? },
            kind::OWNED => Record::Owned { client_id: f.str()?, stamp_us: f.u64()? },
            kind::SUBSCRIBE => Record::Subscribe {
                client_id: f.str()?,
                filter: f.filter()?,
                options: f.options()?,
                identifier: f.opt_u32()?,
            },
            kind::UNSUBSCRIBE => Record::Unsubscribe { client_id: f.str()?, filter: f.filter()? },
            kind::ENQUEUE => Record::Enqueue { client_id: f.str()?, delivery: f.delivery()? },
            kind::SENT => Record::Sent { client_id: f.str()?, packet_id: f.packet_id()? },
            kind::DEQUEUED => Record::Dequeued { client_id: f.str()?, count: f.u32()? },
            kind::RELEASED => Record::Released { client_id: f.str()?, packet_id: f.packet_id()? },
            kind::ACKED => Record::Acked { client_id: f.str()?, packet_id: f.packet_id()? },
            kind::QOS2_RECEIVED => {
                Record::Qos2Received { client_id: f.str()?, packet_id: f.packet_id()? }
            }
            kind::QOS2_RELEASED => {
                Record::Qos2Released { client_id: f.str()?, packet_id: f.packet_id()? }
            }
            kind::RETAIN_SET => Record::RetainSet(f.message()?),
            kind::RETAIN_CLEAR => Record::RetainClear { topic: f.str()? },
            kind::RETAIN_SOURCE => Record::RetainSource {
                topic: f.str()?,
                source: StoredSource { client_id: f.str()?, username: f.opt_str()? },
            },
            kind::SNAPSHOT => {
                let client_id = f.str()?;
                let username = f.opt_str()?;
                let expiry_secs = f.u32()?;
                let offline_since_unix_ms = f.opt_u64()?;
                // Minimum encoded sizes bound each count by the bytes that remain.
                let n = f.count(4)?;
                let mut subscriptions = Vec::with_capacity(n);
                for _ in 0..n {
                    subscriptions.push((f.filter()?, f.options()?, f.opt_u32()?));
                }
                let n = f.count(20)?;
                let mut inflight = Vec::with_capacity(n);
                for _ in 0..n {
                    let packet_id = f.packet_id()?;
                    let delivery = f.delivery()?;
                    inflight.push(StoredInflight { packet_id, delivery, released: f.bool()? });
                }
                let n = f.count(18)?;
                let mut queue = Vec::with_capacity(n);
                for _ in 0..n {
                    queue.push(f.delivery()?);
                }
                let n = f.count(2)?;
                let mut inbound_qos2 = Vec::with_capacity(n);
                for _ in 0..n {
                    inbound_qos2.push(f.packet_id()?);
                }
                let session = SessionSnapshot {
                    username,
                    expiry_secs,
                    offline_since_unix_ms,
                    subscriptions,
                    inflight,
                    queue,
                    inbound_qos2,
                };
                Record::Snapshot { client_id, session }
            }
            kind::WILL_PENDING => {
                Record::WillPending { client_id: f.str()?, will: f.will()?, due_unix_ms: f.u64()? }
            }
            kind::WILL_DONE => Record::WillDone { client_id: f.str()? },
            other => return Err(RecordError::Kind(other)),
        };
        match f.0.len() {
            0 => Ok(record),
            n => Err(RecordError::Trailing(n)),
        }
    }
}

fn id_record(w: &mut Writer<'_>, kind: u8, client_id: &str, packet_id: u16) {
    w.u8(kind);
    w.str(client_id);
    w.u16(packet_id);
}

/// Example records (tests and the log-format fixtures of the `tern` crate).
#[doc(hidden)]
pub mod examples {
    use super::*;
    use crate::codec::Property;

    /// An example filter (each is a valid one).
    fn filter(f: &str) -> TopicFilter {
        TopicFilter::new(f, true).expect("invariant: example filters are valid")
    }

    fn msg(topic: &str) -> StoredMessage {
        let mut properties = Properties::new();
        properties.push(Property::ContentType("text/plain".into()));
        properties.push(Property::UserProperty("k".into(), "v".into()));
        StoredMessage {
            topic: TopicName::new(topic).expect("invariant: example topics are valid"),
            payload: Bytes::from_static(b"\x00payload\xff"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties,
            expires_at_unix_ms: Some(1_764_000_000_000),
        }
    }

    fn delivery() -> StoredDelivery {
        StoredDelivery {
            msg: msg("a/b"),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![1, 268_435_455],
        }
    }

    /// One record of every kind.
    pub fn every_kind() -> Vec<Record> {
        let cid = || "client-é".to_string();
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        vec![
            Record::SessionOpen {
                client_id: cid(),
                clean: true,
                username: Some("u".into()),
                expiry_secs: u32::MAX,
            },
            Record::SessionOpen { client_id: cid(), clean: false, username: None, expiry_secs: 0 },
            Record::SessionExpiry {
                client_id: cid(),
                expiry_secs: 60,
                offline_since_unix_ms: Some(5),
            },
            Record::SessionEnd { client_id: cid() },
            Record::Owned { client_id: cid(), stamp_us: 1_764_000_000_000_123 },
            Record::Subscribe {
                client_id: cid(),
                filter: filter("$share/g/a/#"),
                options,
                identifier: Some(7),
            },
            Record::Subscribe {
                client_id: cid(),
                filter: filter("+"),
                options: SubscriptionOptions::default(),
                identifier: None,
            },
            Record::Unsubscribe { client_id: cid(), filter: filter("a/+") },
            Record::Enqueue { client_id: cid(), delivery: delivery() },
            Record::Sent { client_id: cid(), packet_id: 65_535 },
            Record::Dequeued { client_id: cid(), count: 3 },
            Record::Released { client_id: cid(), packet_id: 1 },
            Record::Acked { client_id: cid(), packet_id: 2 },
            Record::Qos2Received { client_id: cid(), packet_id: 3 },
            Record::Qos2Released { client_id: cid(), packet_id: 4 },
            Record::RetainSet(msg("r/t")),
            Record::RetainClear { topic: "r/t".into() },
            Record::RetainSource {
                topic: "r/t".into(),
                source: StoredSource { client_id: cid(), username: Some("u".into()) },
            },
            Record::RetainSource {
                topic: String::new(),
                source: StoredSource { client_id: String::new(), username: None },
            },
            Record::Snapshot {
                client_id: cid(),
                session: SessionSnapshot {
                    username: Some("u".into()),
                    expiry_secs: 3600,
                    offline_since_unix_ms: Some(9),
                    subscriptions: vec![
                        (filter("a/#"), options, Some(1)),
                        (filter("b"), SubscriptionOptions::default(), None),
                    ],
                    inflight: vec![StoredInflight {
                        packet_id: 9,
                        delivery: delivery(),
                        released: true,
                    }],
                    queue: vec![delivery(), delivery()],
                    inbound_qos2: vec![1, 2, 65_535],
                },
            },
            Record::Snapshot { client_id: String::new(), session: SessionSnapshot::default() },
            Record::WillPending {
                client_id: cid(),
                will: Will {
                    topic: TopicName::new("w/t").expect("valid"),
                    payload: Bytes::from_static(b"gone\x00"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: {
                        let mut p = Properties::new();
                        p.push(Property::WillDelayInterval(2));
                        p.push(Property::MessageExpiryInterval(30));
                        p
                    },
                },
                due_unix_ms: 1_764_000_002_000,
            },
            Record::WillDone { client_id: cid() },
        ]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::examples::*;
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for r in every_kind() {
            let mut body = Vec::new();
            r.encode(&mut body);
            assert_eq!(Record::decode(&body), Ok(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        for r in every_kind() {
            let mut body = Vec::new();
            r.encode(&mut body);
            for cut in 0..body.len() {
                assert!(Record::decode(&body[..cut]).is_err(), "{r:?} cut at {cut}");
            }
            body.push(0);
            assert_eq!(Record::decode(&body), Err(RecordError::Trailing(1)));
        }
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(Record::decode(&[0xEE]), Err(RecordError::Kind(0xEE)));
        assert_eq!(Record::decode(&[]), Err(RecordError::Truncated));
        // Packet id 0, flag 2, QoS 3, invalid UTF-8.
        assert!(matches!(Record::decode(&[kind::ACKED, 0, 0, 0, 0]), Err(RecordError::Invalid(_))));
        assert!(matches!(
            Record::decode(&[kind::SESSION_OPEN, 0, 0, 2]),
            Err(RecordError::Invalid(_))
        ));
        assert!(matches!(
            Record::decode(&[kind::SESSION_END, 1, 0, 0xFF]),
            Err(RecordError::Invalid(_))
        ));
        // A snapshot claiming 2^32-1 subscriptions in a few bytes fails before allocating.
        let mut body = vec![kind::SNAPSHOT, 0, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Record::decode(&body), Err(RecordError::Truncated));
    }
}
