//! The persistent state of one MQTT session (§4.1), with no IO and no clock of its own.
//!
//! A [`Session`] outlives its network connection when the client asked for a persistent
//! session: its subscriptions, the QoS 1/2 messages in flight toward the client, the queue of
//! messages not yet sent, and the packet ids of inbound QoS 2 messages awaiting PUBREL. The
//! shard that owns the session calls the methods here; nothing in this module touches sockets,
//! glommio or `Instant::now()`: time is an argument.
//!
//! Bounds: the in-flight window is `inflight_max` messages; the queue is bounded in messages and
//! bytes, with a configured overflow policy; inbound QoS 2 ids are bounded by the Receive
//! Maximum the broker advertises (a client that exceeds it is disconnected by the shard).

pub mod lazy;
pub mod message;

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use crate::codec::{PacketId, QoS, SubscriptionOptions, TopicFilter};
use lazy::{LazyMap, LazySet};
pub use message::{Message, SessionState, TransferredInflight};

/// What to do when a session queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Drop the oldest queued message to make room for the new one.
    DropOldest,
    /// Refuse the new message.
    DropNewest,
}

/// Bounds of one session, copied from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Outbound QoS 1/2 messages in flight (unacknowledged) at once.
    pub inflight_max: u16,
    /// Messages waiting in the queue.
    pub queue_messages_max: usize,
    /// Payload and topic bytes waiting in the queue.
    pub queue_bytes_max: usize,
    /// What to drop when the queue is full.
    pub overflow: OverflowPolicy,
}

/// One subscription of this session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The options of the SUBSCRIBE.
    pub options: SubscriptionOptions,
    /// v5 Subscription Identifier, if the SUBSCRIBE had one.
    pub identifier: Option<u32>,
}

/// A message waiting to be sent, with the QoS and flags it will be sent with.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The message.
    pub msg: Rc<Message>,
    /// QoS granted for this delivery: min(publish QoS, subscription QoS).
    pub qos: QoS,
    /// RETAIN flag on the wire for this delivery.
    pub retain: bool,
    /// Subscription identifiers that matched (v5).
    pub subscription_ids: Vec<u32>,
}

impl Outgoing {
    /// Bytes this delivery counts against the queue's byte bound.
    pub fn cost_bytes(&self) -> usize {
        self.msg.cost_bytes()
    }
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflightState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitAck,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP (QoS 2).
    AwaitComp,
}

/// An outbound message the client has not yet acknowledged.
#[derive(Clone, Debug)]
pub struct Inflight {
    /// The delivery.
    pub out: Outgoing,
    /// Its progress.
    pub state: InflightState,
    /// Send order: increases with every message put in flight. Packet ids wrap past 65535 and
    /// are reused, so only this keeps publication order on resend ([MQTT-4.6.0-1]).
    pub seq: u64,
}

/// What an acknowledgement from the client did to the outbound in-flight window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// It matched a message in the state that expects it.
    Done,
    /// No message is in flight with that packet id (a late duplicate, for instance).
    Unknown,
    /// The id is in flight, but this acknowledgement does not belong to its QoS or state (PUBREC
    /// for QoS 1, PUBACK for QoS 2, PUBCOMP before PUBREL): a protocol violation
    /// ([MQTT-4.8.0-1] in 3.1.1, [MQTT-4.13.1-1] in 5.0).
    WrongKind,
}

/// Why a message was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The queue was full and the policy dropped the new message.
    QueueFull,
    /// The queue was full and the oldest message was dropped for this one.
    EvictedOldest,
    /// QoS 0 message for a session without a connection.
    QoS0Offline,
    /// The message expired before it could be sent.
    Expired,
}

/// The persistent state of a session.
#[derive(Debug)]
pub struct Session {
    /// Client identifier, stored once: the shard's client-id map (and, on the registry's shard,
    /// the registry) key on this same allocation (issue 11).
    pub client_id: Rc<str>,
    /// User name of the connection that owns the session (for ACL checks on delivery).
    pub username: Option<String>,
    /// Topic filter → subscription (no table while there is none).
    pub subscriptions: LazyMap<TopicFilter, Subscription>,
    /// Outbound QoS 1/2 in flight, by packet id. Resend order is [`Inflight::seq`], not the
    /// id, which wraps.
    /// No table while nothing is in flight.
    pub inflight: LazyMap<u16, Inflight>,
    /// The `seq` of the next message put in flight.
    next_seq: u64,
    /// Messages not yet sent.
    pub queue: VecDeque<Outgoing>,
    /// Bytes in `queue`.
    pub queue_bytes: usize,
    /// Bytes in `inflight` (kept with it, so [`Session::held_bytes`] costs O(1)).
    pub inflight_bytes: usize,
    /// Inbound QoS 2 packet ids received and not yet released (exactly-once, §4.3.3).
    /// No table while there is none.
    pub inbound_qos2: LazySet<u16>,
    /// Next packet id to try.
    next_packet_id: u16,
    /// Session Expiry Interval in seconds; 0 ends the session with the connection,
    /// `u32::MAX` never expires.
    pub expiry_secs: u32,
    /// Bounds.
    pub limits: SessionLimits,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: impl Into<Rc<str>>, limits: SessionLimits, expiry_secs: u32) -> Self {
        assert!(limits.inflight_max > 0, "invariant: config validates inflight_max >= 1");
        Self {
            client_id: client_id.into(),
            username: None,
            subscriptions: LazyMap::new(),
            inflight: LazyMap::new(),
            next_seq: 0,
            queue: VecDeque::new(),
            queue_bytes: 0,
            inflight_bytes: 0,
            inbound_qos2: LazySet::new(),
            next_packet_id: 1,
            expiry_secs,
            limits,
        }
    }

    /// Whether another QoS 1/2 message may be sent now, given the client's receive maximum.
    pub fn window_open(&self, client_receive_max: u16) -> bool {
        self.inflight.len() < usize::from(self.limits.inflight_max.min(client_receive_max))
    }

    /// A free packet id for an outbound message, or `None` when all 65535 are in flight.
    fn allocate_packet_id(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            let candidate = self.next_packet_id;
            self.next_packet_id = if candidate == u16::MAX { 1 } else { candidate + 1 };
            if !self.inflight.contains_key(&candidate) {
                return PacketId::new(candidate);
            }
        }
        None
    }

    /// Starts sending `out` (QoS 1/2): assigns a packet id and records it in flight.
    pub fn begin_inflight(&mut self, out: Outgoing) -> Option<PacketId> {
        debug_assert!(out.qos != QoS::AtMostOnce);
        let id = self.allocate_packet_id()?;
        self.insert_inflight(id.get(), out, InflightState::AwaitAck);
        Some(id)
    }

    /// Test hook: the next packet id to try, to reach the wrap-around quickly.
    #[cfg(test)]
    pub(crate) fn set_next_packet_id(&mut self, id: u16) {
        self.next_packet_id = id;
    }

    /// Records a message in flight under `id`, last in send order.
    pub(crate) fn insert_inflight(&mut self, id: u16, out: Outgoing, state: InflightState) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight_bytes += out.cost_bytes();
        self.inflight.insert(id, Inflight { out, state, seq });
    }

    /// The in-flight messages in the order they were first sent ([MQTT-4.6.0-1]: resent in
    /// that order on resume, whatever their packet ids after wrap-around).
    pub fn inflight_in_send_order(&self) -> Vec<(u16, &Inflight)> {
        let mut v: Vec<(u16, &Inflight)> = self.inflight.iter().map(|(id, f)| (*id, f)).collect();
        v.sort_unstable_by_key(|(_, f)| f.seq);
        v
    }

    /// Appends a message to the queue under the bounds. Returns what was dropped, if anything.
    pub fn enqueue(&mut self, out: Outgoing) -> Result<(), Dropped> {
        let cost = out.cost_bytes();
        let full = |s: &Self| {
            s.queue.len() >= s.limits.queue_messages_max
                || s.queue_bytes + cost > s.limits.queue_bytes_max
        };
        if !full(self) {
            self.queue_bytes += cost;
            self.queue.push_back(out);
            return Ok(());
        }
        match self.limits.overflow {
            OverflowPolicy::DropNewest => Err(Dropped::QueueFull),
            OverflowPolicy::DropOldest => {
                // Evict from the front until the new message fits; bounded by the queue length.
                while full(self) {
                    match self.queue.pop_front() {
                        Some(old) => self.queue_bytes -= old.cost_bytes(),
                        None => return Err(Dropped::QueueFull), // larger than the whole bound
                    }
                }
                self.queue_bytes += cost;
                self.queue.push_back(out);
                Err(Dropped::EvictedOldest)
            }
        }
    }

    /// Appends a message for a connected client, past the queue bounds: flow control
    /// (`crate::shard`) keeps this queue near its high-water mark by pausing publishers, and
    /// applies its own hard cap.
    pub fn enqueue_connected(&mut self, out: Outgoing) {
        self.queue_bytes += out.cost_bytes();
        self.queue.push_back(out);
    }

    /// Drops the QoS 0 messages from the queue (a client went offline: an offline session keeps
    /// QoS 1/2 only). Returns how many were dropped.
    pub fn drop_qos0(&mut self) -> u64 {
        let before = self.queue.len();
        self.queue.retain(|o| o.qos != QoS::AtMostOnce);
        if self.queue.len() != before {
            self.queue_bytes = self.queue.iter().map(Outgoing::cost_bytes).sum();
        }
        (before - self.queue.len()) as u64
    }

    /// Cuts the queue to its bounds (a client went offline with more queued than an offline
    /// session may hold), by the overflow policy: `DropNewest` drops from the back,
    /// `DropOldest` from the front. Returns how many messages were dropped.
    pub fn trim_to_bounds(&mut self) -> u64 {
        let mut dropped = 0;
        // Bounded by the queue length.
        while self.queue.len() > self.limits.queue_messages_max
            || (self.queue_bytes > self.limits.queue_bytes_max && !self.queue.is_empty())
        {
            let out = match self.limits.overflow {
                OverflowPolicy::DropNewest => self.queue.pop_back(),
                OverflowPolicy::DropOldest => self.queue.pop_front(),
            };
            let Some(out) = out else { break };
            self.queue_bytes -= out.cost_bytes();
            dropped += 1;
        }
        dropped
    }

    /// Takes the next queued message, skipping (and counting in `expired`) expired ones.
    pub fn dequeue(&mut self, now: Instant, expired: &mut u64) -> Option<Outgoing> {
        while let Some(out) = self.queue.pop_front() {
            self.queue_bytes -= out.cost_bytes();
            if out.msg.is_expired(now) {
                *expired += 1;
                continue;
            }
            return Some(out);
        }
        None
    }

    /// PUBACK for an outbound message: frees a QoS 1 slot. PUBACK for a QoS 2 id, in either
    /// state, is the wrong acknowledgement.
    pub fn handle_puback(&mut self, id: PacketId) -> AckOutcome {
        match self.inflight.get(&id.get()) {
            None => AckOutcome::Unknown,
            Some(f) if f.out.qos == QoS::AtLeastOnce => {
                self.remove_inflight(id.get());
                AckOutcome::Done
            }
            Some(_) => AckOutcome::WrongKind,
        }
    }

    /// PUBREC for an outbound QoS 2 message: it moves to AwaitComp (again, for a duplicate
    /// PUBREC, so PUBREL is resent). PUBREC for a QoS 1 id is the wrong acknowledgement.
    pub fn handle_pubrec(&mut self, id: PacketId) -> AckOutcome {
        match self.inflight.get_mut(&id.get()) {
            None => AckOutcome::Unknown,
            Some(f) if f.out.qos == QoS::ExactlyOnce => {
                f.state = InflightState::AwaitComp;
                AckOutcome::Done
            }
            Some(_) => AckOutcome::WrongKind,
        }
    }

    /// PUBCOMP for an outbound QoS 2 message after PUBREL: frees its slot. PUBCOMP for a QoS 1
    /// id, or before the PUBREC/PUBREL exchange, is the wrong acknowledgement.
    pub fn handle_pubcomp(&mut self, id: PacketId) -> AckOutcome {
        match self.inflight.get(&id.get()) {
            None => AckOutcome::Unknown,
            Some(f) if f.state == InflightState::AwaitComp => {
                self.remove_inflight(id.get());
                AckOutcome::Done
            }
            Some(_) => AckOutcome::WrongKind,
        }
    }

    /// The QoS of the message in flight under `id`, if any.
    pub fn inflight_qos(&self, id: PacketId) -> Option<QoS> {
        self.inflight.get(&id.get()).map(|f| f.out.qos)
    }

    /// Drops a PUBREC'd message whose PUBREC carried an error reason (v5 §4.3.3): its id is free.
    pub fn abandon(&mut self, id: PacketId) {
        self.remove_inflight(id.get());
    }

    fn remove_inflight(&mut self, id: u16) {
        if let Some(f) = self.inflight.remove(&id) {
            self.inflight_bytes -= f.out.cost_bytes();
        }
    }

    /// Recounts `queue_bytes` and `inflight_bytes` after the queue or the in-flight map were
    /// edited directly (ACL re-check on takeover).
    pub fn recount_bytes(&mut self) {
        self.queue_bytes = self.queue.iter().map(Outgoing::cost_bytes).sum();
        self.inflight_bytes = self.inflight.values().map(|f| f.out.cost_bytes()).sum();
    }

    /// Bytes held by this session's messages (queue plus in flight).
    pub fn held_bytes(&self) -> usize {
        self.queue_bytes + self.inflight_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn limits(policy: OverflowPolicy) -> SessionLimits {
        SessionLimits {
            inflight_max: 2,
            queue_messages_max: 3,
            queue_bytes_max: 1 << 20,
            overflow: policy,
        }
    }

    fn out(n: u8, qos: QoS) -> Outgoing {
        let msg = Message::new(
            crate::codec::TopicName::new("t").expect("valid topic"),
            Bytes::from(vec![n]),
            qos,
            false,
        );
        Outgoing { msg: Rc::new(msg), qos, retain: false, subscription_ids: Vec::new() }
    }

    #[test]
    fn queue_drop_newest_keeps_old_messages() {
        let mut s = Session::new("c", limits(OverflowPolicy::DropNewest), 0);
        for n in 0..3 {
            assert_eq!(s.enqueue(out(n, QoS::AtLeastOnce)), Ok(()));
        }
        assert_eq!(s.enqueue(out(9, QoS::AtLeastOnce)), Err(Dropped::QueueFull));
        let mut expired = 0;
        let first = s.dequeue(crate::test_clock::test_epoch(), &mut expired).expect("queued");
        assert_eq!(first.msg.payload[0], 0);
    }

    #[test]
    fn queue_drop_oldest_evicts_front() {
        let mut s = Session::new("c", limits(OverflowPolicy::DropOldest), 0);
        for n in 0..3 {
            s.enqueue(out(n, QoS::AtLeastOnce)).expect("room");
        }
        assert_eq!(s.enqueue(out(9, QoS::AtLeastOnce)), Err(Dropped::EvictedOldest));
        assert_eq!(s.queue.len(), 3);
        let mut expired = 0;
        assert_eq!(
            s.dequeue(crate::test_clock::test_epoch(), &mut expired).expect("q").msg.payload[0],
            1
        );
    }

    #[test]
    fn queue_byte_bound_is_enforced() {
        let mut l = limits(OverflowPolicy::DropNewest);
        l.queue_bytes_max = out(0, QoS::AtLeastOnce).cost_bytes() * 2;
        let mut s = Session::new("c", l, 0);
        s.enqueue(out(0, QoS::AtLeastOnce)).expect("room");
        s.enqueue(out(1, QoS::AtLeastOnce)).expect("room");
        assert_eq!(s.enqueue(out(2, QoS::AtLeastOnce)), Err(Dropped::QueueFull));
        assert_eq!(s.queue_bytes, l.queue_bytes_max);
    }

    #[test]
    fn qos2_outbound_flow_and_window() {
        let mut s = Session::new("c", limits(OverflowPolicy::DropNewest), 0);
        assert!(s.window_open(u16::MAX));
        let a = s.begin_inflight(out(0, QoS::ExactlyOnce)).expect("id");
        let b = s.begin_inflight(out(1, QoS::AtLeastOnce)).expect("id");
        assert_ne!(a, b);
        assert!(!s.window_open(u16::MAX), "inflight_max = 2");
        // [MQTT-4.8.0-1] / [MQTT-4.13.1-1]: acknowledgements of the wrong kind are violations.
        assert_eq!(s.handle_pubcomp(a), AckOutcome::WrongKind, "PUBCOMP before PUBREC");
        assert_eq!(s.handle_puback(a), AckOutcome::WrongKind, "PUBACK for a QoS 2 id");
        assert_eq!(s.handle_pubrec(b), AckOutcome::WrongKind, "PUBREC for a QoS 1 id");
        assert_eq!(s.handle_pubcomp(b), AckOutcome::WrongKind, "PUBCOMP for a QoS 1 id");
        assert_eq!(s.handle_pubrec(a), AckOutcome::Done);
        assert_eq!(s.handle_puback(a), AckOutcome::WrongKind, "PUBACK after PUBREC");
        assert_eq!(s.handle_pubrec(a), AckOutcome::Done, "a duplicate PUBREC is allowed");
        assert_eq!(s.handle_pubcomp(a), AckOutcome::Done);
        assert_eq!(s.handle_puback(b), AckOutcome::Done);
        assert_eq!(s.handle_puback(b), AckOutcome::Unknown, "late duplicate");
        assert!(s.inflight.is_empty());
    }

    /// Issue 11: the in-flight table exists while a message is in flight and is freed with
    /// the last acknowledgement, so an idle session holds no table.
    #[test]
    fn inflight_table_freed_when_empty() {
        let mut s = Session::new("c", limits(OverflowPolicy::DropNewest), 0);
        assert!(!s.inflight.is_allocated());
        let a = s.begin_inflight(out(0, QoS::AtLeastOnce)).expect("id");
        assert!(s.inflight.is_allocated());
        assert_eq!(s.handle_puback(a), AckOutcome::Done);
        assert!(!s.inflight.is_allocated(), "freed with the last PUBACK");
    }

    #[test]
    fn packet_ids_skip_ids_in_flight_and_wrap() {
        let mut l = limits(OverflowPolicy::DropNewest);
        l.inflight_max = u16::MAX;
        let mut s = Session::new("c", l, 0);
        s.next_packet_id = u16::MAX;
        let a = s.begin_inflight(out(0, QoS::AtLeastOnce)).expect("id");
        assert_eq!(a.get(), u16::MAX);
        let b = s.begin_inflight(out(0, QoS::AtLeastOnce)).expect("id");
        assert_eq!(b.get(), 1, "wraps to 1, never 0 ([MQTT-2.2.1-3])");
    }

    /// [MQTT-4.6.0-1]: messages are resent in the order they were sent, even after the packet
    /// id wrapped past 65535 and the later message got the smaller id.
    #[test]
    fn send_order_survives_packet_id_wrap_around() {
        let mut l = limits(OverflowPolicy::DropNewest);
        l.inflight_max = 8;
        let mut s = Session::new("c", l, 0);
        s.next_packet_id = u16::MAX - 1;
        let ids: Vec<u16> = (0..4u8)
            .map(|n| s.begin_inflight(out(n, QoS::AtLeastOnce)).expect("id").get())
            .collect();
        assert_eq!(ids, [u16::MAX - 1, u16::MAX, 1, 2]);
        let order: Vec<u8> =
            s.inflight_in_send_order().iter().map(|(_, f)| f.out.msg.payload[0]).collect();
        assert_eq!(order, [0, 1, 2, 3]);
        // The sendable form (takeover) keeps the order too.
        let back = Session::from_state("c".into(), s.into_state(), l);
        let order: Vec<(u16, u8)> = back
            .inflight_in_send_order()
            .iter()
            .map(|(id, f)| (*id, f.out.msg.payload[0]))
            .collect();
        assert_eq!(order, [(u16::MAX - 1, 0), (u16::MAX, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn expired_messages_are_skipped() {
        let mut s = Session::new("c", limits(OverflowPolicy::DropNewest), 0);
        let now = crate::test_clock::test_epoch();
        let mut m = Message::new(
            crate::codec::TopicName::new("t").expect("valid topic"),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
        );
        m.expires_at = Some(now);
        let o = Outgoing {
            msg: Rc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
        };
        s.enqueue(o).expect("room");
        s.enqueue(out(7, QoS::AtLeastOnce)).expect("room");
        let mut expired = 0;
        let got = s.dequeue(now + std::time::Duration::from_secs(1), &mut expired).expect("one");
        assert_eq!(got.msg.payload[0], 7);
        assert_eq!(expired, 1);
    }
}
