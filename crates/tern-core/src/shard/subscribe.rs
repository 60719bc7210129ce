//! SUBSCRIBE and UNSUBSCRIBE, the trie replica's entries, and shared-subscription groups.
//!
//! Trie entries: a local subscription is `Local(slot)` with its options; another shard's
//! subscriptions on one filter collapse into one `Remote(shard)` entry with a count, kept up to
//! date by `SubAdd`/`SubRemove` deltas. A publish therefore reaches each other shard once,
//! whatever its number of subscribers there.

use crate::ids::{ShardId, SlotGen, SlotId};
use std::collections::HashMap;
use std::time::Instant;

use super::message::Member;
use super::{ConnId, ConnRef, Shard, ShardMsg};
use crate::codec::topic::is_shared;
use crate::codec::TopicFilter;
use crate::codec::{
    Packet, Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::session::Subscription;
use crate::topic::{levels, parse_shared};

/// Key of a trie entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SubKey {
    /// A session on this shard.
    Local(SlotId),
    /// Every subscription of another shard on this filter.
    Remote(ShardId),
    /// A session handed to another shard, still matched here to forward what arrives for it
    /// (`shard::handover`); the number is its forward record.
    Forward(super::handover::ForwardId),
}

/// Value of a trie entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SubVal {
    /// A local subscription.
    Local {
        /// Its options.
        options: crate::codec::SubscriptionOptions,
        /// v5 Subscription Identifier.
        identifier: Option<u32>,
    },
    /// How many of the remote shard's sessions subscribe to this filter.
    Remote {
        /// Count, at least 1.
        count: u32,
    },
}

/// A [`PendingAck`] and the number of peer answers ([`ShardMsg::DeltaAck`]) it still waits for.
#[derive(Debug)]
pub(crate) struct HeldAck {
    pub(super) ack: PendingAck,
    /// Peer answers missing, at least 1 while held.
    pub(super) left: usize,
}

/// An acknowledgement held until every other shard has applied the subscriptions it covers,
/// so that a publish accepted anywhere after the client sees it reaches the client.
#[derive(Debug)]
pub(crate) enum PendingAck {
    /// A SUBACK (and the retained messages that follow it).
    Sub(PendingSubAck),
    /// The CONNACK of a resumed session whose subscriptions moved here.
    Conn {
        /// Connection.
        conn: super::ConnRef,
        /// Session slot.
        slot: SlotId,
        /// Generation of the claim that installed the session in `slot`.
        claim: super::ClaimGen,
        /// The CONNACK.
        ack: crate::codec::ConnAck,
    },
}

/// A SUBACK held until every other shard has applied the new subscriptions.
#[derive(Debug)]
pub(crate) struct PendingSubAck {
    /// The connection by (id, serial): the id may be reused before the peers answer.
    conn: super::ConnRef,
    slot: SlotId,
    ack: SubAck,
    retained_for: Vec<(TopicFilter, QoS)>,
    identifier: Option<u32>,
}

impl Shard {
    /// Whether a topic name is within the configured bounds.
    pub(super) fn topic_name_allowed(&self, topic: &[u8]) -> bool {
        // As `topic::levels`, on the bytes (a `TopicName` without its UTF-8 re-check).
        let levels = topic.iter().filter(|&&b| b == b'/').count() + 1;
        topic.len() <= self.cfg.topic_bytes_max && levels <= self.cfg.topic_levels_max
    }

    pub(super) fn handle_subscribe(
        &mut self,
        id: ConnId,
        slot: SlotId,
        s: Subscribe,
        now: Instant,
    ) {
        let version = self.conn(id).map_or(ProtocolVersion::V311, super::Conn::version);
        let (v5, v31) = (version.is_v5(), version == ProtocolVersion::V31);
        let identifier = s.properties.subscription_identifiers().next();
        let req = self.next_req;
        self.next_req += 1;
        let mut told = 0usize;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained_for = Vec::new();
        if s.filters.len() > self.cfg.subscriptions_per_client_max {
            // More filters in one packet than a session may hold: refused whole, each with
            // Quota exceeded (v3: 0x80 Failure), so one packet's work is bounded by the limit.
            self.metrics.subscribe_refused_too_many += 1;
            if v31 {
                // MQTT 3.1 has no failure return code in SUBACK: close instead.
                return self.close(
                    id,
                    super::CloseReason::Protocol(ReasonCode::QuotaExceeded),
                    now,
                );
            }
            let reason = if v5 { ReasonCode::QuotaExceeded } else { ReasonCode::UnspecifiedError };
            let ack = SubAck {
                packet_id: s.packet_id,
                reasons: vec![reason; s.filters.len()],
                properties: Properties::new(),
            };
            self.send(id, &Packet::SubAck(ack));
            return;
        }
        // A filter repeated within one SUBSCRIBE is one subscription: the last occurrence
        // replaces the earlier ones ([MQTT-3.8.4-3]), so only it is applied (one delta to the
        // other shards, one retained scan). Earlier occurrences answer as it does.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(s.filters.len());
        for (i, (filter, _)) in s.filters.iter().enumerate() {
            last.insert(filter.as_str(), i);
        }
        let winner: Vec<usize> = s.filters.iter().map(|(f, _)| last[f.as_str()]).collect();
        drop(last);
        let mut answer: Vec<Option<ReasonCode>> = vec![None; s.filters.len()];
        for (i, (filter, options)) in s.filters.into_iter().enumerate() {
            if winner[i] != i {
                continue;
            }
            let inner = parse_shared(&filter).map_or(filter.as_str(), |(_, f)| f);
            let acl_denied = self.cfg.security.acl.as_ref().is_some_and(|acl| {
                let s = self.slot(slot);
                let user = s.and_then(|s| s.session.username.as_deref());
                let cid = s.map_or("", |s| &*s.session.client_id);
                !acl.can_subscribe(user, cid, inner)
            });
            let reason = if filter.len() > self.cfg.topic_bytes_max
                || levels(inner) > self.cfg.topic_levels_max
            {
                ReasonCode::TopicFilterInvalid
            } else if acl_denied {
                self.metrics.subscribe_denied += 1;
                ReasonCode::NotAuthorized
            } else {
                let subs_max = self.cfg.subscriptions_per_client_max;
                let Some(sess) = self.slot_mut(slot) else { return };
                let existing = sess.session.subscriptions.contains_key(&filter);
                if !existing && sess.session.subscriptions.len() >= subs_max {
                    self.metrics.subscriptions_refused_limit += 1;
                    ReasonCode::QuotaExceeded
                } else {
                    let sub = Subscription { options, identifier };
                    sess.session.subscriptions.insert(filter.clone(), sub.clone());
                    // [MQTT-3.8.4-3]: an existing subscription is replaced in place (the
                    // trie entry and the shared member are overwritten here and on every
                    // replica): removing it first would leave the other shards a moment with
                    // no subscriber on the filter, and a publish routed then would be lost.
                    told +=
                        usize::from(self.add_subscription_entry(slot, &filter, &sub, Some(req)));
                    let send_retained = match options.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => !existing,
                        RetainHandling::DoNotSend => false,
                    };
                    // Retained messages are not sent for shared subscriptions (§4.8.2).
                    if send_retained && !is_shared(&filter) {
                        retained_for.push((filter.clone(), options.qos));
                    }
                    match options.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                    }
                }
            };
            if reason.is_error() && v31 {
                // MQTT 3.1 has no failure return code in SUBACK (the codec refuses to encode
                // 0x80 for it): a refused subscription closes the connection instead.
                return self.close(id, super::CloseReason::Protocol(reason), now);
            }
            answer[i] =
                Some(if reason.is_error() && !v5 { ReasonCode::UnspecifiedError } else { reason });
        }
        for w in winner {
            reasons.push(answer[w].unwrap_or(ReasonCode::UnspecifiedError));
        }
        let ack = SubAck { packet_id: s.packet_id, reasons, properties: Properties::new() };
        let peers = usize::from(self.cfg.shards) - 1;
        let Some(c) = self.conn_mut(id) else { return };
        let conn = ConnRef { id, serial: c.serial() };
        let pending = PendingSubAck { conn, slot, ack, retained_for, identifier };
        if told == 0 || peers == 0 {
            self.complete_suback(pending, now);
        } else {
            c.set_awaiting_peers(true);
            self.pending_acks
                .insert(req, HeldAck { ack: PendingAck::Sub(pending), left: told * peers });
        }
    }

    /// A peer applied one of our subscription deltas.
    pub(super) fn delta_acked(&mut self, req: u64, now: Instant) {
        let Some(held) = self.pending_acks.get_mut(&req) else { return };
        held.left -= 1;
        if held.left == 0 {
            let Some(HeldAck { ack, .. }) = self.pending_acks.remove(&req) else { return };
            match ack {
                PendingAck::Sub(p) => self.complete_suback(p, now),
                PendingAck::Conn { conn, slot, claim, ack } => {
                    self.complete_connack(conn, slot, claim, ack, now)
                }
            }
        }
    }

    /// Sends the SUBACK, then the retained messages for the new subscriptions.
    fn complete_suback(&mut self, p: PendingSubAck, now: Instant) {
        // The very connection that subscribed, still on its session: a connection that reused
        // the id (even on the same slot, after a takeover) never sees this SUBACK (issue 9).
        let conn = p.conn.id;
        let still_bound =
            |c: &&mut super::Conn| c.serial() == p.conn.serial && c.active_slot() == Some(p.slot);
        let Some(c) = self.conn_mut(conn).filter(still_bound) else { return };
        c.set_awaiting_peers(false);
        // Taken before the SUBACK is written (which leaves it alone), put back below.
        let mut backlog = c.take_backlog();
        self.send(conn, &Packet::SubAck(p.ack));
        let identifier = p.identifier;
        // Retained messages follow the SUBACK, with RETAIN set ([MQTT-3.3.1-8]). They are
        // queued on the connection and written as its output drains (`drain_retained`), a
        // batch at a time: a SUBSCRIBE matching thousands of them costs one trie walk now
        // and bounded work per turn after, and QoS 0 ones are not dropped for a full buffer.
        // The backlog holds at most `retained_messages_max`, and each filter's walk of the
        // store stops one message past the room left (to tell that some were left out): a
        // client that keeps its backlog full (a QoS 1 one that does not acknowledge, whose
        // packets are still read) cannot make every SUBSCRIBE walk the whole store.
        let cap = self.cfg.retained_messages_max;
        let mut msgs = Vec::new();
        for (filter, qos) in p.retained_for {
            msgs.clear();
            let room = cap.saturating_sub(backlog.len());
            let denied = self.retained.matching(
                &filter,
                now,
                room.saturating_add(1),
                |m| self.retained_source_allowed(&m.topic),
                &mut msgs,
            );
            self.metrics.retained_denied_source += denied as u64;
            if msgs.len() > room {
                msgs.truncate(room);
                self.metrics.retained_dropped_backlog += 1;
            }
            for msg in msgs.drain(..) {
                let qos = crate::shard::message::delivery_qos(msg.qos, qos);
                backlog.push_back(super::RetainedOut { msg, qos, identifier });
            }
        }
        if let Some(c) = self.conn_mut(conn) {
            c.set_backlog(backlog);
        }
        self.drain_retained(conn, now);
        // Packets that arrived behind the SUBSCRIBE.
        self.handle_read(conn, &[], now);
    }

    /// CVE-2018-12546: a retained message is delivered only while the client that published
    /// it may still publish to its topic under the ACL in force (a reload may have revoked it
    /// since). Messages the broker published itself, and every message without an ACL, pass.
    fn retained_source_allowed(&self, topic: &str) -> bool {
        let Some(acl) = &self.cfg.security.acl else { return true };
        let Some(src) = self.retained.source(topic) else { return true };
        acl.can_publish(src.username.as_deref(), &src.client_id, topic)
    }

    pub(super) fn handle_unsubscribe(&mut self, id: ConnId, slot: SlotId, u: Unsubscribe) {
        let v5 = self.conn(id).is_some_and(|c| c.version().is_v5());
        let mut reasons = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            let Some(s) = self.slot_mut(slot) else { return };
            let generation = s.generation;
            if s.session.subscriptions.remove(filter).is_some() {
                self.remove_subscription_entry(slot, generation, filter);
                reasons.push(ReasonCode::Success);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        if !v5 {
            reasons.clear();
        }
        let ack = UnsubAck { packet_id: u.packet_id, reasons, properties: Properties::new() };
        self.send(id, &Packet::UnsubAck(ack));
    }

    /// Adds a session's subscription to the trie (or the shared groups) and tells the other
    /// shards when this shard gains its first subscriber on the filter.
    /// Returns whether other shards were told (and, with `ack`, will answer).
    pub(super) fn add_subscription_entry(
        &mut self,
        slot: SlotId,
        filter: &str,
        sub: &Subscription,
        ack: Option<u64>,
    ) -> bool {
        if is_shared(filter) {
            let Some(generation) = self.slot(slot).map(|s| s.generation) else { return false };
            let online = self.slot(slot).is_some_and(|s| s.conn.is_some());
            let member = Member::of(self.id, slot, generation, sub, online);
            let strategy = self.shared_strategy(filter);
            if self.shared.add(filter, member, strategy) {
                self.metrics.subscriptions_current += 1;
            }
            let group = filter.to_owned();
            self.broadcast(|| ShardMsg::SharedAdd { group: group.clone(), member, ack });
            return true;
        }
        let val = SubVal::Local { options: sub.options, identifier: sub.identifier };
        if self.trie.insert(filter, SubKey::Local(slot), val).is_some() {
            return false; // replaced in place: the filter count is unchanged
        }
        self.metrics.subscriptions_current += 1;
        let refs = self.local_filter_refs.entry(filter.to_owned()).or_insert(0);
        *refs += 1;
        if *refs == 1 {
            let f = filter.to_owned();
            self.broadcast(|| ShardMsg::SubAdd { filter: f.clone(), ack });
            return true;
        }
        false
    }

    /// Removes a session's subscription entry; tells the other shards when this shard has no
    /// subscriber left on the filter.
    /// `generation`: the slot generation of the session the entry belongs to.
    pub(super) fn remove_subscription_entry(
        &mut self,
        slot: SlotId,
        generation: SlotGen,
        filter: &str,
    ) {
        if is_shared(filter) {
            return self.remove_shared_member(filter, slot, generation);
        }
        if self.trie.remove(filter, &SubKey::Local(slot)).is_none() {
            return;
        }
        self.metrics.subscriptions_current -= 1;
        let Some(refs) = self.local_filter_refs.get_mut(filter) else { return };
        *refs -= 1;
        if *refs == 0 {
            self.local_filter_refs.remove(filter);
            let f = filter.to_owned();
            self.broadcast(|| ShardMsg::SubRemove { filter: f.clone() });
        }
    }

    /// Removes the shared-group member (this shard, `slot`, `generation`) here and on every
    /// replica.
    pub(super) fn remove_shared_member(&mut self, group: &str, slot: SlotId, generation: SlotGen) {
        if self.shared.remove(group, self.id, slot, generation) {
            self.metrics.subscriptions_current -= 1;
        }
        let (group, shard) = (group.to_owned(), self.id);
        self.broadcast(|| ShardMsg::SharedRemove { group: group.clone(), shard, slot, generation });
    }

    pub(super) fn remote_sub_add(&mut self, from: ShardId, filter: &str) {
        let key = SubKey::Remote(from);
        let count = match self.trie.get(filter, &key) {
            Some(SubVal::Remote { count }) => count + 1,
            _ => 1,
        };
        self.trie.insert(filter, key, SubVal::Remote { count });
    }

    pub(super) fn remote_sub_remove(&mut self, from: ShardId, filter: &str) {
        let key = SubKey::Remote(from);
        match self.trie.get(filter, &key) {
            Some(SubVal::Remote { count }) if *count > 1 => {
                let count = count - 1;
                self.trie.insert(filter, key, SubVal::Remote { count });
            }
            Some(_) => {
                self.trie.remove(filter, &key);
            }
            None => {}
        }
    }

    pub(super) fn shared_add(&mut self, group: &str, member: Member) {
        let strategy = self.shared_strategy(group);
        self.shared.add(group, member, strategy);
    }

    pub(super) fn shared_remove(
        &mut self,
        group: &str,
        shard: ShardId,
        slot: SlotId,
        generation: SlotGen,
    ) {
        self.shared.remove(group, shard, slot, generation);
    }
}
