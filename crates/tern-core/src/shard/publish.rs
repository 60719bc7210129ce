//! PUBLISH in both directions: inbound QoS flows, routing through the trie replica to local
//! sessions and to other shards, outbound delivery under the in-flight window, and wills.

use crate::ids::{MessageId, ShardId, SlotId};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::message::{delivery_qos, SharedDelivery};
use super::subscribe::{SubKey, SubVal};
use super::{CloseReason, Conn, ConnId, Shard, ShardMsg};
use crate::codec::{
    self, Packet, PacketId, Properties, Property, PubResp, Publish, QoS, ReasonCode,
    SubscriptionOptions, TopicName, Will,
};
use crate::session::message::Origin;
use crate::session::{AckOutcome, Dropped, InflightState, Message, Outgoing};

/// One local subscription that matched a topic: of the session in a slot, or (`K` =
/// [`ForwardId`](super::handover::ForwardId)) of a session handed on and forwarded to.
#[derive(Clone, Debug)]
pub(crate) struct LocalMatch<K = SlotId> {
    pub(super) slot: K,
    pub(super) options: SubscriptionOptions,
    pub(super) identifier: Option<u32>,
}

/// The encoded PUBLISH of the message being fanned out, one per variant (protocol family 3.x
/// or 5, QoS, RETAIN), reused for every subscriber that gets those bytes: no properties of its
/// own (Topic Alias, remaining expiry, Subscription Identifiers). QoS 1/2 copies differ only in
/// the packet id, patched in place. Filled by the first delivery of each variant and cleared
/// when the fan-out ends, so it never outlives the message it holds (which also keeps the
/// `Rc`'s address from being reused while it is compared). At most 12 variants (2 x 3 x 2); the
/// buffers are kept across fan-outs.
#[derive(Default)]
pub(crate) struct SharedEncoding {
    /// On while one `deliver_matches` delivers to more than one subscriber.
    active: bool,
    /// The message the live variants encode.
    msg: Option<Rc<Message>>,
    variants: Vec<Variant>,
}

/// One encoding of [`SharedEncoding`].
struct Variant {
    /// Protocol family (v5), QoS, RETAIN.
    key: (bool, QoS, bool),
    /// Whether `bytes` encode the current message (false: a buffer kept for reuse).
    live: bool,
    bytes: Vec<u8>,
    /// Offset of the packet id in `bytes` (QoS 1/2).
    pid_at: usize,
}

impl SharedEncoding {
    /// Whether a fan-out to more than one subscriber is under way.
    pub(super) fn is_active(&self) -> bool {
        self.active
    }

    /// The live encoding of `msg` in variant `key`, and the offset of its packet id.
    pub(super) fn find(&self, msg: &Rc<Message>, key: (bool, QoS, bool)) -> Option<(&[u8], usize)> {
        if !self.msg.as_ref().is_some_and(|m| Rc::ptr_eq(m, msg)) {
            return None;
        }
        let v = self.variants.iter().find(|v| v.live && v.key == key)?;
        Some((&v.bytes, v.pid_at))
    }

    /// Stores `frame` as the encoding of `msg` in variant `key`.
    pub(super) fn store(
        &mut self,
        msg: &Rc<Message>,
        key: (bool, QoS, bool),
        frame: &[u8],
        pid_at: usize,
    ) {
        if !self.msg.as_ref().is_some_and(|m| Rc::ptr_eq(m, msg)) {
            self.clear();
            self.msg = Some(Rc::clone(msg));
        }
        // Bounded: one live entry per key, so at most 12 entries ever exist.
        let i = match self.variants.iter().position(|v| v.key == key || !v.live) {
            Some(i) => i,
            None => {
                self.variants.push(Variant { key, live: false, bytes: Vec::new(), pid_at: 0 });
                self.variants.len() - 1
            }
        };
        let v = &mut self.variants[i];
        v.key = key;
        v.live = true;
        v.bytes.clear();
        v.bytes.extend_from_slice(frame);
        v.pid_at = pid_at;
    }

    /// Ends the fan-out: drops the message, keeps the buffers.
    fn clear(&mut self) {
        self.msg = None;
        for v in &mut self.variants {
            v.live = false;
        }
    }
}

impl Shard {
    /// Records one publish-to-deliver latency sample. Equal consecutive samples (every
    /// delivery of one fan-out) are counted and recorded together.
    fn record_latency(&mut self, us: u64) {
        let us = us.clamp(1, 60_000_000);
        if self.latency_run.0 == us {
            self.latency_run.1 += 1;
            return;
        }
        self.flush_latency();
        self.latency_run = (us, 1);
    }

    /// Moves the pending run of latency samples into the histogram (before it is read).
    pub fn flush_latency(&mut self) {
        let (us, n) = std::mem::take(&mut self.latency_run);
        if n > 0 {
            let _ = self.latency.record_n(us, n);
        }
    }

    /// The identity of the client of `slot`, kept with its retained messages.
    fn retain_source(&self, slot: SlotId) -> Option<super::message::RetainSource> {
        let s = &self.slot(slot)?.session;
        let p = super::message::Publisher {
            username: s.username.clone(),
            client_id: s.client_id.to_string(),
        };
        Some(std::sync::Arc::new(p))
    }

    fn origin(&self, slot: SlotId) -> Option<Origin> {
        let s = self.slot(slot)?;
        Some(Origin { shard: self.id, session: slot, generation: s.generation })
    }

    /// Whether a v5 payload matches its Payload Format Indicator (1 = UTF-8), when checked.
    pub(super) fn payload_format_ok(&self, props: &Properties, payload: &[u8]) -> bool {
        !self.cfg.check_payload_format
            || props.payload_format_indicator() != Some(1)
            || std::str::from_utf8(payload).is_ok()
    }

    fn ack(&mut self, id: ConnId, qos: QoS, packet_id: Option<PacketId>, reason: ReasonCode) {
        let Some(pid) = packet_id else { return };
        let mut resp = PubResp { packet_id: pid, reason, properties: Properties::new() };
        // A Reason String only if the client did not turn problem information off
        // ([MQTT-3.1.2-29]).
        if reason.is_error() && self.conn(id).is_some_and(Conn::wants_reason_strings) {
            resp.properties.push(Property::ReasonString(refusal_text(reason).into()));
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(id, &Packet::PubAck(resp)),
            QoS::ExactlyOnce => self.send(id, &Packet::PubRec(resp)),
        }
    }

    pub(super) fn handle_publish(
        &mut self,
        id: ConnId,
        slot: SlotId,
        mut p: Publish,
        now: Instant,
    ) {
        self.metrics.messages_received += 1;
        let alias_max = self.cfg.topic_alias_max;
        let Some(c) = self.conn_mut(id) else { return };
        let v5 = c.version().is_v5();
        if v5 {
            // Topic Alias (§3.3.2.3.4): resolve it, then forget it (aliases are per hop).
            if let Err(reason) = c.resolve_topic_alias(&mut p, alias_max) {
                return self.close(id, CloseReason::Protocol(reason), now);
            }
            // [MQTT-3.3.4-6]: a client must not send a Subscription Identifier.
            if p.properties.subscription_identifiers().next().is_some() {
                return self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError), now);
            }
        }
        // The decoder lets only a v5 PUBLISH with a Topic Alias leave the name out, and an
        // unknown alias was closed above ([MQTT-3.3.2-1]).
        let Some(topic) = p.topic.take() else {
            return self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError), now);
        };
        if !self.topic_name_allowed(topic.as_bytes()) {
            if v5 && p.qos != QoS::AtMostOnce {
                return self.ack(id, p.qos, p.packet_id, ReasonCode::TopicNameInvalid);
            }
            // v3 cannot refuse a PUBLISH: close rather than acknowledge and lose it.
            return self.close(id, CloseReason::Protocol(ReasonCode::TopicNameInvalid), now);
        }
        let denied = self.cfg.security.acl.as_ref().is_some_and(|acl| {
            let s = self.slot(slot);
            let user = s.and_then(|s| s.session.username.as_deref());
            let cid = s.map_or("", |s| &*s.session.client_id);
            !acl.can_publish(user, cid, &topic)
        });
        if topic.as_bytes().starts_with(b"$SYS") || denied {
            // `$SYS/` is the broker's: refused (v5) or dropped (v3) like an ACL denial.
            self.metrics.publish_denied += 1;
            let reason = if v5 { ReasonCode::NotAuthorized } else { ReasonCode::Success };
            return self.ack(id, p.qos, p.packet_id, reason);
        }
        if v5 && !self.payload_format_ok(&p.properties, &p.payload) {
            self.metrics.publish_denied += 1;
            if p.qos == QoS::AtMostOnce {
                return self.close(
                    id,
                    CloseReason::Protocol(ReasonCode::PayloadFormatInvalid),
                    now,
                );
            }
            return self.ack(id, p.qos, p.packet_id, ReasonCode::PayloadFormatInvalid);
        }
        if p.qos == QoS::ExactlyOnce {
            let pid = p.packet_id.expect("invariant: codec requires an id for QoS 2").get();
            let receive_max = usize::from(self.cfg.session.inflight_max);
            let Some(s) = self.slot_mut(slot) else { return };
            if s.session.inbound_qos2.contains(&pid) {
                // Exactly once (§4.3.3): a resent PUBLISH before PUBREL is not routed again.
                self.metrics.inbound_qos2_duplicates += 1;
                return self.ack(id, p.qos, p.packet_id, ReasonCode::Success);
            }
            if s.session.inbound_qos2.len() >= receive_max {
                // [MQTT-3.3.4-9]: more unacknowledged QoS 2 than our Receive Maximum.
                return self.close(
                    id,
                    CloseReason::Protocol(ReasonCode::ReceiveMaximumExceeded),
                    now,
                );
            }
            s.session.inbound_qos2.insert(pid);
            // Durable before PUBREC and before routing: a crash never routes it twice.
            self.journal_inbound_qos2(slot, pid, true);
        }
        let expires_at = p
            .properties
            .message_expiry_interval()
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        p.properties.remove(codec::properties::id::MESSAGE_EXPIRY_INTERVAL);
        let topic = self.own_topic(topic);
        let mut msg = Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at,
            origin: self.origin(slot),
            received_at: Some(now),
            id: MessageId::UNROUTED,
        };
        // A payload sliced from the read buffer would pin all of it for as long as the
        // message is queued or retained (issue 9: a 1-byte retained payload held 64 KiB).
        if self.decoded_in_place {
            // Decoded from the caller's read buffer: the payload is its own copy already.
            msg.properties.detach();
        } else {
            msg.detach_body();
        }
        if msg.retain {
            self.retain_local_and_broadcast(&msg, self.retain_source(slot));
        }
        self.route_refused = false;
        let matched = self.route(msg, now);
        let reason = if v5 && self.route_refused && p.qos != QoS::AtMostOnce {
            // A full offline queue on this shard refused it: say so where the protocol can.
            self.metrics.publish_quota_exceeded += 1;
            ReasonCode::QuotaExceeded
        } else if v5 && !matched {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        self.ack(id, p.qos, p.packet_id, reason);
    }

    /// `topic` owning its bytes (not a slice pinning the read buffer): the shard's copy when
    /// the last PUBLISH had the same topic (shared, no allocation), else a copy, which becomes
    /// the shard's (issue 10: no topic allocation per PUBLISH of a stream to one topic).
    fn own_topic(&mut self, mut topic: TopicName) -> TopicName {
        if let Some(last) = &self.last_topic {
            if last.as_bytes() == topic.as_bytes() {
                return last.clone();
            }
        }
        if !self.decoded_in_place {
            // In place, the decoder copied it already.
            topic.detach();
        }
        self.last_topic = Some(topic.clone());
        topic
    }

    /// Publishes a will as if its client had sent it ([MQTT-3.1.2-8]).
    pub(super) fn publish_will(&mut self, slot: SlotId, will: Will, now: Instant) {
        // The rules of PUBLISH, checked now rather than only at CONNECT: the ACL may have been
        // reloaded since, and `$SYS/` is the broker's whatever the ACL says.
        let denied = self.cfg.security.acl.as_ref().is_some_and(|acl| {
            let s = self.slot(slot);
            let user = s.and_then(|s| s.session.username.as_deref());
            let cid = s.map_or("", |s| &*s.session.client_id);
            !acl.can_publish(user, cid, &will.topic)
        });
        if denied || will.topic.starts_with("$SYS") {
            self.metrics.publish_denied += 1;
            return;
        }
        self.metrics.wills_published += 1;
        let mut properties = will.properties;
        let expires_at = properties
            .message_expiry_interval()
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        properties.retain(|p| {
            !matches!(p, Property::WillDelayInterval(_) | Property::MessageExpiryInterval(_))
        });
        let msg = Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            expires_at,
            origin: self.origin(slot),
            received_at: None,
            id: MessageId::UNROUTED,
        };
        if msg.retain {
            self.retain_local_and_broadcast(&msg, self.retain_source(slot));
        }
        self.route(msg, now);
    }

    /// Publishes the `$SYS/broker/...` statistics as retained messages (as Mosquitto does), so a
    /// subscriber gets the latest values at once.
    pub fn publish_sys(&mut self, topics: Vec<(String, String)>, now: Instant) {
        for (topic, value) in topics {
            // The runtime's own `$SYS/...` names; one that does not validate is skipped.
            let Ok(topic) = TopicName::new(topic) else { continue };
            let msg = Message::new(topic, value.into(), QoS::AtMostOnce, true);
            self.retain_local_and_broadcast(&msg, None);
            self.route(msg, now);
        }
    }

    /// Routes a message to every matching subscriber: local ones directly, other shards by one
    /// message each. Returns whether anyone matched.
    pub(crate) fn route(&mut self, mut msg: Message, now: Instant) -> bool {
        self.stamp_message(&mut msg);
        let shards = usize::from(self.cfg.shards);
        // Per-peer marks, reused across publishes (sized at start, left all-false and empty).
        let mut peer_normal = std::mem::take(&mut self.peer_normal);
        let mut peer_shared = std::mem::take(&mut self.peer_shared);
        debug_assert!(peer_normal.len() == shards && peer_normal.iter().all(|b| !b));
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut forwards = std::mem::take(&mut self.handover.scratch);
        self.trie.for_each_match(&msg.topic, |key, val| match (key, val) {
            (SubKey::Local(slot), SubVal::Local { options, identifier }) => {
                scratch.push(LocalMatch { slot: *slot, options: *options, identifier: *identifier })
            }
            (SubKey::Remote(shard), _) => peer_normal[usize::from(*shard)] = true,
            (SubKey::Forward(f), SubVal::Local { options, identifier }) => {
                forwards.push(LocalMatch { slot: *f, options: *options, identifier: *identifier })
            }
            _ => {}
        });
        self.admit_matches(&mut scratch, None, msg.id);
        // The publisher's client id, for the `hash_client_id` strategy.
        let publisher = msg
            .origin
            .filter(|o| o.shard == self.id)
            .and_then(|o| self.sessions.get(o.session))
            .map_or("", |s| &*s.session.client_id);
        for (group, member, online_only) in self.shared.pick(&msg.topic, publisher) {
            let d = SharedDelivery { group, member, online_only, hops: 0 };
            if member.shard == self.id {
                self.place_shared(d, &msg, &mut scratch, now);
            } else {
                peer_shared[usize::from(member.shard)].push(d);
            }
        }
        let mut matched = !scratch.is_empty() || !forwards.is_empty();
        self.forward_matches(&msg, &mut forwards, None, now);
        self.handover.scratch = forwards;
        for peer in 0..shards {
            let shared = std::mem::take(&mut peer_shared[peer]);
            if peer_normal[peer] || !shared.is_empty() {
                matched = true;
                self.metrics.messages_forwarded += 1;
                // Charged while it crosses the mesh; the receiving shard releases it. Counted
                // on the copy that travels: `cost_bytes` counts the topic's capacity, which a
                // clone does not keep (found by the `shard_core` fuzz target: the sender
                // charged a topic with spare capacity, the receiver released less).
                let copy = msg.clone();
                let cost = copy.cost_bytes();
                self.cfg.memory.recharge(0, cost);
                self.cfg.mesh_bytes.sent(self.id, cost);
                let m = ShardMsg::Publish { msg: copy, normal: peer_normal[peer], shared };
                self.outbox[peer].push_back(m);
                if self.outbox_full(peer) {
                    if let Some(o) = msg.origin {
                        self.flow_outbox_full(peer, o);
                    }
                }
            }
            peer_normal[peer] = false;
        }
        self.peer_normal = peer_normal;
        self.peer_shared = peer_shared;
        let rc = Rc::new(msg);
        self.deliver_matches(&rc, &mut scratch, now);
        self.scratch = scratch;
        matched
    }

    /// A publish routed here by another shard.
    pub(super) fn deliver_forwarded(
        &mut self,
        from: ShardId,
        msg: Message,
        normal: bool,
        shared: Vec<SharedDelivery>,
        now: Instant,
    ) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        if normal {
            let mut forwards = std::mem::take(&mut self.handover.scratch);
            self.trie.for_each_match(&msg.topic, |key, val| match (key, val) {
                (SubKey::Local(slot), SubVal::Local { options, identifier }) => scratch
                    .push(LocalMatch { slot: *slot, options: *options, identifier: *identifier }),
                (SubKey::Forward(f), SubVal::Local { options, identifier }) => forwards
                    .push(LocalMatch { slot: *f, options: *options, identifier: *identifier }),
                _ => {}
            });
            self.admit_matches(&mut scratch, Some(from), msg.id);
            self.forward_matches(&msg, &mut forwards, Some(from), now);
            self.handover.scratch = forwards;
        }
        // A member that left, went offline or may not read the topic is replaced (§4.8.2).
        for d in shared {
            self.place_shared(d, &msg, &mut scratch, now);
        }
        let rc = Rc::new(msg);
        self.deliver_matches(&rc, &mut scratch, now);
        self.scratch = scratch;
    }

    /// Delivers to each matched session once, at the highest QoS of its matching subscriptions
    /// and with all their identifiers (§3.3.4 of 5.0).
    fn deliver_matches(&mut self, msg: &Rc<Message>, matches: &mut Vec<LocalMatch>, now: Instant) {
        let origin = msg.origin;
        let me = self.id;
        let generation_of = |shard: &Shard, slot: SlotId| shard.slot(slot).map(|s| s.generation);
        // No Local (v5): never back to the publishing session ([MQTT-3.8.3-3]).
        matches.retain(|m| {
            !(m.options.no_local
                && origin.is_some_and(|o| {
                    o.shard == me
                        && o.session == m.slot
                        && Some(o.generation) == generation_of(self, m.slot)
                }))
        });
        matches.sort_unstable_by_key(|m| m.slot);
        // Several subscribers: the first one's PUBLISH encoding serves the others.
        self.shared_encoding.active = matches.len() > 1;
        let mut i = 0;
        while i < matches.len() {
            let slot = matches[i].slot;
            let mut qos = QoS::AtMostOnce;
            let mut retain_as_published = false;
            let mut ids = Vec::new();
            while i < matches.len() && matches[i].slot == slot {
                qos = qos.max(matches[i].options.qos);
                retain_as_published |= matches[i].options.retain_as_published;
                ids.extend(matches[i].identifier);
                i += 1;
            }
            let out = Outgoing {
                msg: Rc::clone(msg),
                qos: delivery_qos(msg.qos, qos),
                // [MQTT-3.3.1-9] (3.1.1): RETAIN is 0 for established subscriptions; v5 keeps it
                // when Retain As Published is set ([MQTT-3.3.1-13]).
                retain: retain_as_published && msg.retain,
                subscription_ids: ids,
            };
            self.deliver(slot, out, now);
        }
        self.shared_encoding.active = false;
        self.shared_encoding.clear();
    }

    /// Hands one delivery to a session. Connected: written at once if its output buffer and
    /// in-flight window have room and nothing waits before it, queued otherwise (any QoS, past
    /// the offline bounds: flow control slows the publisher down instead, `super::flow`).
    /// Offline: queued under the offline bounds (QoS 1/2) or dropped and counted (QoS 0).
    pub(super) fn deliver(&mut self, slot: SlotId, out: Outgoing, now: Instant) {
        self.deliver_from(slot, out, true, now)
    }

    /// [`Shard::deliver`] of a stored retained message at SUBSCRIBE: its publisher, who may
    /// have published it long ago, is not the one to slow down.
    pub(super) fn deliver_retained(&mut self, slot: SlotId, out: Outgoing, now: Instant) {
        self.deliver_from(slot, out, false, now)
    }

    fn deliver_from(&mut self, slot: SlotId, out: Outgoing, live: bool, now: Instant) {
        // Read access is checked on every delivery, retained ones included.
        if !self.can_read(slot, &out.msg.topic) {
            return;
        }
        let Some(s) = self.slot_mut(slot) else { return };
        match s.conn {
            Some(conn) => self.deliver_connected(conn, slot, out, live, now),
            None if out.qos == QoS::AtMostOnce => self.metrics.messages_dropped_qos0_offline += 1,
            None => self.enqueue(slot, out),
        }
        self.recharge_slot(slot);
    }

    fn deliver_connected(
        &mut self,
        conn: ConnId,
        slot: SlotId,
        out: Outgoing,
        live: bool,
        now: Instant,
    ) {
        let tx_max = self.cfg.tx_bytes_max;
        let Some(c) = self.conn(conn) else { return };
        let (receive_max, tx_room) = (c.client_receive_max(), c.output_bytes() < tx_max);
        let origin = out.msg.origin.filter(|_| live);
        let qos0_max = self.cfg.flow.qos0_queue_bytes_max;
        // A client fed by itself is never paused on its own behalf: its QoS 0 is left to the
        // hard caps, which close it (issue 9, CVE-2021-33175's class), rather than dropped
        // while the broker goes on reading it.
        let me = self.id;
        let own = out.msg.origin.is_some_and(|o| o.shard == me && o.session == slot);
        let journaled = self.persistence_enabled();
        // The field, not `slot_mut`: the counters are borrowed beside the session.
        let Some(s) = self.sessions.get_mut(slot) else { return };
        if s.flow.dropping() {
            // A slow consumer under policy `drop`: it alone loses messages until it drains.
            self.metrics.messages_dropped_slow_consumer += 1;
            return;
        }
        if s.session.queue.is_empty() && tx_room {
            if out.qos == QoS::AtMostOnce {
                return self.write_publish(conn, &out, None, false, now);
            }
            if s.session.window_open(receive_max) {
                // Logged as queued, then sent from the head (`send_inflight`).
                self.journal_enqueued(slot, &out);
                return self.send_inflight(conn, slot, out, now);
            }
        }
        if out.qos == QoS::AtMostOnce
            && !own
            && !s.session.queue.is_empty()
            && s.session.queue_bytes + out.cost_bytes() > qos0_max
        {
            // What arrives before the pause takes hold (`super::flow`): QoS 0 is dropped and
            // counted past its byte bound; the publisher is paused all the same.
            self.metrics.messages_dropped_qos0_slow += 1;
            return self.flow_after_delivery(slot, origin, now);
        }
        let journaled = journaled.then(|| out.clone());
        s.session.enqueue_connected(out);
        if let Some(out) = journaled {
            self.journal_enqueued(slot, &out);
        }
        self.flow_after_delivery(slot, origin, now);
    }

    /// Queues for an offline session, under its bounds; a refusal is counted and noted for the
    /// PUBACK of the message being routed.
    fn enqueue(&mut self, slot: SlotId, out: Outgoing) {
        if self.memory_exhausted() {
            // The broker-wide budget is used up: queues stop growing (see `budget`).
            self.metrics.messages_dropped_memory += 1;
            return;
        }
        let journaled = self.persistence_enabled().then(|| out.clone());
        let Some(s) = self.slot_mut(slot) else { return };
        match s.session.enqueue(out) {
            Ok(()) => {
                if let Some(out) = journaled {
                    self.journal_enqueued(slot, &out);
                }
            }
            Err(Dropped::EvictedOldest) => {
                self.metrics.messages_dropped_queue_full += 1;
                self.journal_touch(slot);
            }
            Err(_) => {
                self.metrics.messages_dropped_queue_full += 1;
                self.route_refused = true;
            }
        }
    }

    /// Starts a QoS 1/2 delivery: assigns a packet id and writes the PUBLISH.
    fn send_inflight(&mut self, conn: ConnId, slot: SlotId, out: Outgoing, now: Instant) {
        // `out` is the head of the queue (taken by `pump_queue`, or logged as queued by
        // `deliver_connected`): the log records where it went.
        if !self.fits_client(conn, &out, now) {
            self.metrics.messages_dropped_too_large += 1;
            self.journal_dequeued(slot, 1);
            return;
        }
        let Some(s) = self.slot_mut(slot) else { return };
        let Some(pid) = s.session.begin_inflight(out.clone()) else {
            // All 65535 ids in flight: cannot happen below inflight_max, but never lose it.
            s.session.queue_bytes += out.cost_bytes();
            s.session.queue.push_front(out);
            return;
        };
        self.journal_sent(slot, pid.get());
        self.write_publish(conn, &out, Some(pid), false, now);
    }

    /// Whether the encoded PUBLISH fits the client's Maximum Packet Size ([MQTT-3.1.2-25]).
    fn fits_client(&self, conn: ConnId, out: &Outgoing, now: Instant) -> bool {
        self.conn(conn).is_some_and(|c| c.fits(out, now))
    }

    fn write_publish(
        &mut self,
        conn: ConnId,
        out: &Outgoing,
        packet_id: Option<PacketId>,
        dup: bool,
        now: Instant,
    ) {
        // The field, not `conn_mut`: the counters and the shared encoding are borrowed beside
        // the connection.
        let Some(c) = self.conns.get_mut(conn.0) else { return };
        if out.qos == QoS::AtMostOnce && !c.fits(out, now) {
            self.metrics.messages_dropped_too_large += 1;
            return;
        }
        match c.write_publish(out, packet_id, dup, now, &mut self.shared_encoding) {
            Ok(n) => {
                self.mark_ready(conn);
                self.metrics.bytes_sent += n as u64;
                self.metrics.messages_sent += 1;
                if let Some(t) = out.msg.received_at {
                    self.record_latency(now.saturating_duration_since(t).as_micros() as u64);
                }
            }
            Err(e) => tracing::error!(conn = conn.0, error = %e, "could not encode PUBLISH"),
        }
    }

    /// Sends queued messages while the in-flight window and the output buffer have room, then
    /// resumes the publishers this subscriber paused if it drained to its low-water mark.
    pub(super) fn pump(&mut self, conn: ConnId, slot: SlotId, now: Instant) {
        self.pump_queue(conn, slot, now);
        self.recharge_slot(slot);
        self.flow_check_drained(slot);
    }

    fn pump_queue(&mut self, conn: ConnId, slot: SlotId, now: Instant) {
        let tx_max = self.cfg.tx_bytes_max;
        let Some(c) = self.conn(conn) else { return };
        let receive_max = c.client_receive_max();
        // Bounded by the queue length.
        loop {
            if self.conn(conn).is_none_or(|c| c.output_bytes() >= tx_max) {
                return;
            }
            let Some(s) = self.slot_mut(slot) else { return };
            let head_qos = s.session.queue.front().map(|o| o.qos);
            if head_qos != Some(QoS::AtMostOnce) && !s.session.window_open(receive_max) {
                return;
            }
            let mut expired = 0;
            let next = s.session.dequeue(now, &mut expired);
            self.metrics.messages_dropped_expired += expired;
            self.journal_dequeued(slot, expired);
            let Some(out) = next else { return };
            if out.qos == QoS::AtMostOnce {
                self.journal_dequeued(slot, 1);
                self.write_publish(conn, &out, None, false, now);
            } else {
                self.send_inflight(conn, slot, out, now);
            }
        }
    }

    /// On session resume: PUBLISH again with DUP for unacknowledged messages, PUBREL again for
    /// released ones, in their original order ([MQTT-4.4.0-1]).
    pub(super) fn resend_inflight(&mut self, conn: ConnId, slot: SlotId, now: Instant) {
        let Some(s) = self.slot(slot) else { return };
        // Send order, not id order: ids wrap past 65535 ([MQTT-4.6.0-1]).
        let items: Vec<(u16, Outgoing, InflightState)> = s
            .session
            .inflight_in_send_order()
            .into_iter()
            .map(|(id, f)| (id, f.out.clone(), f.state))
            .collect();
        for (id, out, state) in items {
            let pid = PacketId::new(id).expect("invariant: inflight ids are non-zero");
            match state {
                InflightState::AwaitAck => self.write_publish(conn, &out, Some(pid), true, now),
                InflightState::AwaitComp => self.send(conn, &Packet::PubRel(PubResp::success(pid))),
            }
        }
    }

    /// An acknowledgement that does not fit the QoS or state of the message in flight under its
    /// id: a protocol violation ([MQTT-4.8.0-1] in 3.1.1: close; [MQTT-4.13.1-1] in 5.0:
    /// DISCONNECT 0x82 and close).
    fn wrong_ack(&mut self, id: ConnId, now: Instant) {
        self.metrics.protocol_errors += 1;
        self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError), now);
    }

    pub(super) fn handle_puback(&mut self, id: ConnId, slot: SlotId, r: PubResp, now: Instant) {
        let Some(s) = self.slot_mut(slot) else { return };
        // An unknown id (a late duplicate) is ignored; PUBACK for a QoS 2 message is not.
        match s.session.handle_puback(r.packet_id) {
            AckOutcome::WrongKind => return self.wrong_ack(id, now),
            AckOutcome::Done => self.journal_acked(slot, r.packet_id.get()),
            AckOutcome::Unknown => {}
        }
        self.pump(id, slot, now);
    }

    pub(super) fn handle_pubrec(&mut self, id: ConnId, slot: SlotId, r: PubResp, now: Instant) {
        let Some(s) = self.slot_mut(slot) else { return };
        if r.reason.is_error() {
            // v5 §4.3.3: an error PUBREC ends the exchange; the id is free again. On a QoS 1 id
            // it is still the wrong acknowledgement.
            if s.session.inflight_qos(r.packet_id) == Some(QoS::AtLeastOnce) {
                return self.wrong_ack(id, now);
            }
            if s.session.inflight_qos(r.packet_id).is_some() {
                s.session.abandon(r.packet_id);
                self.journal_acked(slot, r.packet_id.get());
            }
            return self.pump(id, slot, now);
        }
        let reason = match s.session.handle_pubrec(r.packet_id) {
            AckOutcome::WrongKind => return self.wrong_ack(id, now),
            AckOutcome::Done => {
                self.journal_released(slot, r.packet_id.get());
                ReasonCode::Success
            }
            // v5 §3.6.2: PUBREL 0x92 for an id we do not know; 3.1.1 has no reason codes.
            AckOutcome::Unknown if self.conn(id).is_some_and(|c| c.version().is_v5()) => {
                ReasonCode::PacketIdentifierNotFound
            }
            AckOutcome::Unknown => ReasonCode::Success,
        };
        let resp = PubResp { packet_id: r.packet_id, reason, properties: Properties::new() };
        self.send(id, &Packet::PubRel(resp));
    }

    pub(super) fn handle_pubrel(&mut self, id: ConnId, slot: SlotId, r: PubResp) {
        let Some(s) = self.slot_mut(slot) else { return };
        let known = s.session.inbound_qos2.remove(&r.packet_id.get());
        if known {
            self.journal_inbound_qos2(slot, r.packet_id.get(), false);
        }
        let reason = if known || !self.conn(id).is_some_and(|c| c.version().is_v5()) {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        let resp = PubResp { packet_id: r.packet_id, reason, properties: Properties::new() };
        self.send(id, &Packet::PubComp(resp));
    }

    pub(super) fn handle_pubcomp(&mut self, id: ConnId, slot: SlotId, r: PubResp, now: Instant) {
        let Some(s) = self.slot_mut(slot) else { return };
        // An unknown id is ignored (v5 §3.7.2 lets the client say 0x92 about its own side);
        // PUBCOMP for a QoS 1 message or before our PUBREL is a violation.
        match s.session.handle_pubcomp(r.packet_id) {
            AckOutcome::WrongKind => return self.wrong_ack(id, now),
            AckOutcome::Done => self.journal_acked(slot, r.packet_id.get()),
            AckOutcome::Unknown => {}
        }
        self.pump(id, slot, now);
    }
}

/// Bytes of an encoded packet's fixed header: the type byte and the Remaining Length varint
/// (a byte with the high bit clear ends it; at most 4).
pub(super) fn fixed_header_len(frame: &[u8]) -> usize {
    1 + frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0).map_or(4, |i| i + 1)
}

/// Human-readable text for a refused PUBLISH.
fn refusal_text(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::NotAuthorized => "not authorized to publish to this topic",
        ReasonCode::TopicNameInvalid => "topic exceeds the configured length or levels",
        ReasonCode::PayloadFormatInvalid => "payload is not the UTF-8 its format indicator says",
        _ => "publish refused",
    }
}

/// The v5 properties of an outgoing PUBLISH when they differ from the stored message's: the
/// remaining Message Expiry Interval ([MQTT-3.3.2-6]) and the matching Subscription
/// Identifiers. `None` means "send the stored properties as they are" (and always for v3).
pub(super) fn outgoing_properties(
    out: &Outgoing,
    v5: bool,
    now: Instant,
    alias: Option<u16>,
) -> Option<Properties> {
    if !v5 || (out.msg.expires_at.is_none() && out.subscription_ids.is_empty() && alias.is_none()) {
        return None;
    }
    let mut props = out.msg.properties.clone();
    if let Some(a) = alias {
        props.push(Property::TopicAlias(a));
    }
    if let Some(at) = out.msg.expires_at {
        let left = at.saturating_duration_since(now).as_secs().max(1);
        props.push(Property::MessageExpiryInterval(left.min(u64::from(u32::MAX)) as u32));
    }
    for id in &out.subscription_ids {
        props.push(Property::SubscriptionIdentifier(*id));
    }
    Some(props)
}
