//! CONNECT: validation, the client-id registry, session takeover across shards, CONNACK.
//!
//! Ownership protocol (described in full in `docs/ARCHITECTURE.md`, "Takeover"). The registry
//! is partitioned: client id `c` is recorded on shard `hash(c) % shards`, as (owner shard,
//! generation). A shard that receives CONNECT for `c` sends `Claim` there; the registry gives
//! the claim the next generation (a fencing token) and answers with the previous owner and its
//! generation. The new shard asks that owner (`Takeover`, maybe to itself) for the session of
//! exactly that generation: an installed session is handed over with its connection closed; a
//! CONNECT of that generation still pending there is superseded (closed without CONNACK, its
//! session passed on when it arrives) rather than waited for. Each claim waits only for an
//! older one, so no two shards wait for each other, and the newest CONNECT wins
//! ([MQTT-3.1.4-2]). CONNACK is bound to (slot, generation); `Release` carries its generation.

use super::handover::SharedMembership;
use crate::ids::{ShardId, SlotGen, SlotId, SlotRef};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::time::Instant;

use super::subscribe::{HeldAck, PendingAck};
use super::{
    ClaimGen, CloseReason, Conn, ConnId, ConnRef, Owner, PendingConnect, Phase, SessionSlot, Shard,
    ShardMsg,
};
use crate::codec::{
    ConnAck, Connect, DecodeError, ErrorKind, Packet, Properties, Property, ProtocolVersion,
    ReasonCode, ReasonPacket,
};
use crate::enhanced_auth::{Exchange, Step};
use crate::session::{Session, SessionState};

/// The registry shard of a client id.
pub fn registry_shard(client_id: &str, shards: u16) -> ShardId {
    // FNV-1a: stable across processes and shards, unlike the std RandomState.
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    client_id.hash(&mut h);
    ShardId((h.finish() % u64::from(shards)) as u16)
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl Shard {
    pub(super) fn send_to_registry(&mut self, msg: ShardMsg, now: Instant) {
        let client_id = match &msg {
            ShardMsg::Claim { client_id, .. } | ShardMsg::Release { client_id, .. } => client_id,
            _ => unreachable!("invariant: only claims and releases go to the registry"),
        };
        let target = registry_shard(client_id, self.cfg.shards);
        self.send_to_peer(target, msg, now);
    }

    /// A CONNECT that failed to decode: v3.x answers CONNACK 0x01 for an unsupported level
    /// ([MQTT-3.1.2-2]); a v5 CONNECT (`version`, read from its first bytes) over the pre-auth
    /// size or the user-property bounds gets CONNACK 0x95 (§4.13.1 allows a CONNACK with the
    /// reason before closing); anything else just closes.
    pub(super) fn refuse_connect_error(
        &mut self,
        id: ConnId,
        e: &DecodeError,
        version: Option<ProtocolVersion>,
        now: Instant,
    ) {
        match e.kind {
            // Answer in the 3.1.1 format every client can parse.
            ErrorKind::UnsupportedProtocolLevel(_) => {
                self.send(id, &connack(false, ReasonCode::UnsupportedProtocolVersion));
            }
            ErrorKind::PacketTooLarge { .. } | ErrorKind::UserPropertiesExceeded
                if version == Some(ProtocolVersion::V5) =>
            {
                if let Some(c) = self.conn_mut(id) {
                    c.set_version(ProtocolVersion::V5);
                }
                self.metrics.connect_refused += 1;
                self.send(id, &connack(false, e.reason_code()));
            }
            _ => {}
        }
        self.close(id, CloseReason::Refused, now);
    }

    fn refuse(&mut self, id: ConnId, version: ProtocolVersion, reason: ReasonCode, now: Instant) {
        if let Some(c) = self.conn_mut(id) {
            c.set_version(version);
        }
        self.metrics.connect_refused += 1;
        self.send(id, &connack(false, reason));
        self.close(id, CloseReason::Refused, now);
    }

    /// Server redirection (§4.11): v5 CONNACK 0x9C/0x9D with a Server Reference; v3 clients,
    /// which cannot be told where to go, get "server unavailable".
    fn redirect(&mut self, id: ConnId, version: ProtocolVersion, r: super::Redirect, now: Instant) {
        if let Some(c) = self.conn_mut(id) {
            c.set_version(version);
        }
        let reason =
            if r.permanent { ReasonCode::ServerMoved } else { ReasonCode::UseAnotherServer };
        let mut ack = ConnAck { session_present: false, reason, properties: Properties::new() };
        if version.is_v5() {
            ack.properties.push(Property::ServerReference(r.reference));
        }
        self.metrics.connect_refused += 1;
        self.send(id, &Packet::ConnAck(ack));
        self.close(id, CloseReason::Refused, now);
    }

    pub(super) fn handle_connect(&mut self, id: ConnId, mut connect: Box<Connect>, now: Instant) {
        let version = connect.version;
        let v5 = version.is_v5();
        let deadline = now + self.cfg.connect_timeout;
        let Some(c) = self.conn_mut(id) else { return };
        c.set_version(version);
        c.start_connecting(deadline);
        let listener = c.listener();
        // The transport's identity (TLS client certificate CN) wins over the CONNECT user name.
        if let Some(name) = c.take_transport_identity() {
            connect.username = Some(name.into());
        }

        // Client identifier rules ([MQTT-3.1.3-5..9] in 3.1.1, §3.1.3.1 in 5.0).
        let mut assigned_id = false;
        if connect.client_id.is_empty() {
            let allowed = v5 || (version == ProtocolVersion::V311 && connect.clean_start);
            if !allowed {
                // [MQTT-3.1.3-8]: zero-byte id without clean session → 0x02.
                return self.refuse(id, version, ReasonCode::ClientIdentifierNotValid, now);
            }
            let Some(generated) = generate_client_id() else {
                // No randomness from the OS: refuse rather than hand out a guessable id.
                return self.refuse(id, version, ReasonCode::ServerUnavailable, now);
            };
            connect.client_id = generated;
            assigned_id = true;
        }
        let id_len = connect.client_id.len();
        if id_len > self.cfg.client_id_bytes_max || (version == ProtocolVersion::V31 && id_len > 23)
        {
            return self.refuse(id, version, ReasonCode::ClientIdentifierNotValid, now);
        }
        if connect.keep_alive_secs > self.cfg.keepalive_secs_max && !v5 {
            // v3 has no way to impose a keep alive: refuse, as Mosquitto does.
            return self.refuse(id, version, ReasonCode::ClientIdentifierNotValid, now);
        }
        if let Some(r) = self.cfg.listeners[listener].redirect.clone() {
            return self.redirect(id, version, r, now);
        }
        if self.memory_exhausted() && connect.clean_start {
            // The broker-wide memory budget is used up: no new session until it recovers.
            // v5 Quota exceeded (0x97); v3 has no such code and gets 3, Server unavailable.
            // A client resuming its session (clean start 0) is let in: receiving what is
            // queued for it is how the budget recovers (nothing new is queued meanwhile).
            self.metrics.connect_refused_memory += 1;
            return self.refuse(id, version, ReasonCode::QuotaExceeded, now);
        }
        if let Some(w) = &mut connect.will {
            // Held for the life of the connection: own its bytes rather than pin the buffer
            // the CONNECT was read into.
            w.payload = bytes::Bytes::copy_from_slice(&w.payload);
            w.topic.detach();
            w.properties.detach();
        }
        if let Some(w) = &connect.will {
            if !self.topic_name_allowed(w.topic.as_bytes()) {
                return self.refuse(id, version, ReasonCode::TopicNameInvalid, now);
            }
            // The same rule as PUBLISH: `$SYS/` is the broker's, ACL file or not.
            if w.topic.starts_with("$SYS") {
                self.metrics.publish_denied += 1;
                return self.refuse(id, version, ReasonCode::NotAuthorized, now);
            }
            if v5 && !self.payload_format_ok(&w.properties, &w.payload) {
                return self.refuse(id, version, ReasonCode::PayloadFormatInvalid, now);
            }
        }
        if let Some(method) = connect.properties.authentication_method().filter(|_| v5) {
            return self.start_auth(id, connect, method, assigned_id, now);
        }
        if connect.properties.authentication_data().is_some() {
            // §3.1.2.11.10: Authentication Data without a method is a Protocol Error.
            return self.refuse(id, version, ReasonCode::ProtocolError, now);
        }
        self.begin_claim(id, connect, assigned_id, None, now);
    }

    /// After authentication: anonymous access, the session quota, then the client-id claim.
    fn begin_claim(
        &mut self,
        id: ConnId,
        connect: Box<Connect>,
        assigned_id: bool,
        auth_done: Option<(String, bytes::Bytes)>,
        now: Instant,
    ) {
        let version = connect.version;
        let Some(c) = self.conn(id) else { return };
        let listener = c.listener();
        let verified = auth_done.is_some() || c.identity_verified();
        match self.authenticate(listener, &connect, verified) {
            Auth::Pass => {}
            Auth::Refuse(reason) => {
                self.metrics.auth_failures += 1;
                // Logged without the password.
                tracing::info!(conn = id.0, user = ?connect.username,
                    client_id = %connect.client_id, ?reason, "authentication failed");
                return self.refuse(id, version, reason, now);
            }
            Auth::CheckPassword(db) => {
                let pending = AwaitingVerdict { conn: id, connect, assigned_id, auth_done };
                return self.verify_password(db, pending, now);
            }
        }
        self.claim_after_auth(id, connect, assigned_id, auth_done, now);
    }

    /// The rest of [`Shard::begin_claim`] once the client is authenticated: the will's ACL,
    /// the session quota, then the client-id claim.
    fn claim_after_auth(
        &mut self,
        id: ConnId,
        connect: Box<Connect>,
        assigned_id: bool,
        auth_done: Option<(String, bytes::Bytes)>,
        now: Instant,
    ) {
        let version = connect.version;
        if let Some(w) = &connect.will {
            let acl = self.cfg.security.acl.as_ref();
            if acl.is_some_and(|a| {
                !a.can_publish(connect.username.as_deref(), &connect.client_id, &w.topic)
            }) {
                return self.refuse(id, version, ReasonCode::NotAuthorized, now);
            }
        }
        // From an AUTH exchange, too: the connect timeout starts again for the claim.
        let deadline = now + self.cfg.connect_timeout;
        if let Some(c) = self.conn_mut(id) {
            c.start_connecting(deadline);
        }
        if self.by_client.len() >= self.cfg.sessions_max
            && !self.by_client.contains_key(connect.client_id.as_str())
        {
            return self.refuse(id, version, ReasonCode::QuotaExceeded, now);
        }
        let req = self.next_req;
        self.next_req += 1;
        let client_id = connect.client_id.clone();
        let Some(conn) = self.conn_ref(id) else { return };
        let pending = PendingConnect {
            conn,
            connect,
            assigned_id,
            auth_done,
            generation: None,
            handoff: None,
        };
        self.pending.insert(req, pending);
        self.pending_by_client.entry(client_id.clone()).or_default().push(req);
        self.send_to_registry(ShardMsg::Claim { client_id, req }, now);
    }

    /// The shard this registry partition names as the owner of `client_id` (tests and fuzzing only).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn registry_owner(&self, client_id: &str) -> Option<Owner> {
        self.registry.get(client_id).copied()
    }

    /// `client_id` as one shared allocation: that of a session or registry entry of the same
    /// id already on this shard, else a new one (issue 11: a client id is stored once).
    pub(super) fn shared_client_id(&self, client_id: String) -> Rc<str> {
        match self.by_client.get_key_value(client_id.as_str()) {
            Some((k, _)) => Rc::clone(k),
            None => match self.registry.get_key_value(client_id.as_str()) {
                Some((k, _)) => Rc::clone(k),
                None => Rc::from(client_id),
            },
        }
    }

    /// On the registry shard: record `from` as the owner under a new generation, answer with
    /// the generation and the previous owner.
    pub(super) fn registry_claim(
        &mut self,
        from: ShardId,
        client_id: String,
        req: u64,
        now: Instant,
    ) {
        let generation = ClaimGen(self.next_claim);
        self.next_claim += 1;
        // An existing entry keeps its key (`insert` does not replace it); a new one shares the
        // allocation of a session of that id already on this shard.
        let key = self.shared_client_id(client_id);
        let previous = self.registry.insert(key, Owner { shard: from, generation });
        self.send_to_peer(from, ShardMsg::ClaimReply { req, generation, previous }, now);
    }

    /// The registry answered our claim: ask the previous owner (maybe this shard) for the
    /// session, or start a new one.
    pub(super) fn claim_reply(
        &mut self,
        registry: ShardId,
        req: u64,
        generation: ClaimGen,
        previous: Option<Owner>,
        now: Instant,
    ) {
        if let Some(seen) = self.claims_seen.get_mut(usize::from(registry)) {
            *seen = (*seen).max(generation);
        }
        let Some(p) = self.pending.get_mut(&req) else { return };
        p.generation = Some(generation);
        let client_id = p.connect.client_id.clone();
        let clean_start = p.connect.clean_start;
        // A takeover that overtook this answer: this CONNECT is superseded already.
        let early = self
            .early_takeovers
            .iter()
            .position(|e| e.client_id == client_id && e.target == generation);
        if let Some(i) = early {
            let e = self.early_takeovers.swap_remove(i);
            self.supersede(req, e.ask, now);
        }
        // Waiting takeovers for an older claim of ours cannot match any more (answers come in
        // order): answer them empty-handed rather than keep them.
        let (stale, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.early_takeovers)
            .into_iter()
            .partition(|e| e.client_id == client_id && e.target < generation);
        self.early_takeovers = keep;
        for e in stale {
            let reply = ShardMsg::TakeoverReply { req: e.ask.req, state: None, forwarding: false };
            self.send_to_peer(e.ask.to, reply, now);
        }
        match previous {
            Some(owner) => {
                if owner.shard != self.id {
                    self.metrics.takeovers += 1;
                }
                let target = owner.generation;
                let msg = ShardMsg::Takeover { client_id, req, generation, target, clean_start };
                self.send_to_peer(owner.shard, msg, now);
            }
            None => self.finish_connect(req, None, None, now),
        }
    }

    /// A newer CONNECT (`ask`) took over the pending CONNECT `req`: its connection closes
    /// without CONNACK, and the session it waits for goes on to `ask` when it arrives.
    fn supersede(&mut self, req: u64, ask: Handoff, now: Instant) {
        let Some(p) = self.pending.get_mut(&req) else {
            return self.send_to_peer(
                ask.to,
                ShardMsg::TakeoverReply { req: ask.req, state: None, forwarding: false },
                now,
            );
        };
        if p.handoff.as_ref().is_some_and(|h| h.generation >= ask.generation) {
            // A stale request: the newer one keeps the session.
            return self.send_to_peer(
                ask.to,
                ShardMsg::TakeoverReply { req: ask.req, state: None, forwarding: false },
                now,
            );
        }
        let conn = p.conn;
        if let Some(older) = p.handoff.replace(ask) {
            // Only one claim names this one as its predecessor; answer any other empty-handed.
            self.send_to_peer(
                older.to,
                ShardMsg::TakeoverReply { req: older.req, state: None, forwarding: false },
                now,
            );
        }
        if self.still_connecting(conn) {
            self.metrics.takeovers_superseded += 1;
            self.close(conn.id, CloseReason::TakenOver, now);
        }
    }

    /// On the previous owner: hand over the session of generation `target` to `ask` — closing
    /// its connection ([MQTT-3.1.4-2]) — or, if that claim is still pending here, supersede it.
    pub(super) fn handle_takeover(
        &mut self,
        client_id: String,
        target: ClaimGen,
        ask: Handoff,
        now: Instant,
    ) {
        if let Some(slot) = self.by_client.get(client_id.as_str()).copied() {
            if self.slot(slot).is_some_and(|s| s.claim == target) {
                // Resumed on this same shard: the reply below installs the session inline. Its
                // filters stay announced to the other shards meanwhile, or a publish routed on
                // another shard between our SubRemove and SubAdd would find no subscriber
                // although the session exists ([MQTT-3.1.2-5], issue: resume loss).
                let same_shard = ask.to == self.id;
                let pinned = if same_shard && !ask.clean_start {
                    self.pin_filters(slot)
                } else {
                    Vec::new()
                };
                // Moving to another shard (or moving on while a previous shard still forwards
                // to it): keep matching here and forward until the new shard is announced
                // everywhere (`handover`). The forward entries go in before the session's own
                // leave, so its filters stay announced throughout.
                // A session still joining (its previous shard may still forward) carries that
                // on: to the next shard's forward record, or to its new slot here.
                let taken = self.joining_take(slot);
                let upstream = taken.as_ref().and_then(super::handover::Taken::upstream);
                let forwarding = !ask.clean_start && !same_shard;
                let mut fid = None;
                let held_here;
                if forwarding {
                    let filters = self.forwardable_filters(slot);
                    let carry = self.carry_of(taken);
                    let (to, generation) = (ask.to, ask.generation);
                    fid = Some(
                        self.forward_start(&client_id, to, generation, filters, upstream, carry),
                    );
                } else if let Some(t) = taken.filter(|_| !ask.clean_start) {
                    self.inherit_stash(&client_id, t);
                } else if let Some(up) = upstream {
                    self.joining_abandoned(&client_id, up, now);
                }
                // Its shared memberships stay announced until its new place is: withdrawn
                // by the forward record's end, or after the inline reply installed it here.
                if !ask.clean_start {
                    self.handover.held_shared = Some(Vec::new());
                }
                let state = self.take_local_session(slot, ask.clean_start, now);
                let held = self.handover.held_shared.take().unwrap_or_default();
                if let Some(fid) = fid {
                    self.forward_member(fid, held);
                    held_here = Vec::new();
                } else {
                    held_here = held;
                }
                let reply = ShardMsg::TakeoverReply { req: ask.req, state, forwarding };
                self.send_to_peer(ask.to, reply, now);
                // After the new member's SharedAdd (installed inline above), so no replica is
                // ever left without the session as a member.
                for m in held_here {
                    self.remove_shared_member(&m.group, m.member.slot, m.member.generation);
                }
                // The inline reply took the stash, unless the session went nowhere.
                if let Some(up) = self.inherit_take(&client_id).and_then(|t| t.upstream()) {
                    self.joining_abandoned(&client_id, up, now);
                }
                return self.unpin_filters(pinned);
            }
        }
        let reqs = self.pending_by_client.get(&client_id).map_or(&[][..], |v| &v[..]);
        let claims = reqs.iter().filter_map(|r| self.pending.get(r).map(|p| (*r, p.generation)));
        let pending = claims.clone().find_map(|(req, g)| (g == Some(target)).then_some(req));
        if let Some(req) = pending {
            return self.supersede(req, ask, now);
        }
        let registry = usize::from(registry_shard(&client_id, self.cfg.shards));
        let answered = self.claims_seen.get(registry).is_some_and(|g| *g >= target);
        let unanswered_here = claims.clone().any(|(_, g)| g.is_none());
        if !answered && unanswered_here {
            // Our claim `target` is on its way back from the registry: wait for it there.
            self.early_takeovers.push(EarlyTakeover { client_id, target, ask });
            return;
        }
        // The session of `target` ended here (its release lost the race): nothing to hand over.
        self.send_to_peer(
            ask.to,
            ShardMsg::TakeoverReply { req: ask.req, state: None, forwarding: false },
            now,
        );
    }

    /// Holds one extra reference on each non-shared filter of `slot` announced to the other
    /// shards, so that removing the session does not broadcast `SubRemove`; returns the filters
    /// held, for [`Shard::unpin_filters`].
    fn pin_filters(&mut self, slot: SlotId) -> Vec<String> {
        let Some(s) = self.slot(slot) else { return Vec::new() };
        let filters: Vec<String> = s
            .session
            .subscriptions
            .keys()
            .filter(|f| {
                !crate::codec::topic::is_shared(f)
                    && self.local_filter_refs.contains_key(f.as_str())
            })
            .map(|f| f.to_string())
            .collect();
        for f in &filters {
            if let Some(refs) = self.local_filter_refs.get_mut(f) {
                *refs += 1;
            }
        }
        filters
    }

    /// Drops the references [`Shard::pin_filters`] took; a filter no session holds any more
    /// is withdrawn from the other shards then.
    fn unpin_filters(&mut self, filters: Vec<String>) {
        for f in filters {
            let Some(refs) = self.local_filter_refs.get_mut(&f) else { continue };
            *refs -= 1;
            if *refs == 0 {
                self.local_filter_refs.remove(&f);
                self.broadcast(|| ShardMsg::SubRemove { filter: f.clone() });
            }
        }
    }

    /// Detaches a local session from its connection (closing it) and removes it; returns its
    /// state unless `clean_start` discards it. The registry is not released: the claim that
    /// asked owns the client id now.
    fn take_local_session(
        &mut self,
        slot: SlotId,
        clean_start: bool,
        now: Instant,
    ) -> Option<Box<SessionState>> {
        // A connection waiting for this session's CONNACK never gets it.
        let claim = self.slot(slot)?.claim;
        let waiting: Vec<u64> = self
            .pending_acks
            .iter()
            .filter(|(_, held)| {
                matches!(&held.ack, PendingAck::Conn { slot: s, claim: g, .. } if *s == slot && *g == claim)
            })
            .map(|(req, _)| *req)
            .collect();
        // [MQTT-3.1.4-2]: the existing connection is closed; its will is published because
        // it did not end with DISCONNECT, unless it has a Will Delay and the session lives
        // on in the new connection ([MQTT-3.1.3-9]). The session is handed over below. A
        // connection whose CONNECT was accepted but whose CONNACK waits for the other shards
        // counts as the existing connection (its will is stored, see `Shard::close`).
        let mut old_wills = Vec::new();
        for req in waiting {
            if let Some(HeldAck { ack: PendingAck::Conn { conn, .. }, .. }) =
                self.pending_acks.remove(&req)
            {
                if self.still_connecting(conn) {
                    self.metrics.takeovers_superseded += 1;
                    if let Some((_, Some(w))) =
                        self.close_conn_only(conn.id, CloseReason::TakenOver)
                    {
                        old_wills.push(w);
                    }
                }
            }
        }
        if let Some(old) = self.slot_mut(slot).and_then(|s| s.conn.take()) {
            if let Some((_, Some(will))) = self.close_conn_only(old, CloseReason::TakenOver) {
                old_wills.push(will);
            }
        }
        for will in old_wills {
            let delayed = will.properties.will_delay_interval().unwrap_or(0) > 0;
            if !delayed || clean_start {
                self.publish_will(slot, will, now);
            }
        }
        // A will waiting for its delay: the client is back, so it is not sent — unless the new
        // connection starts clean and the old session ends here.
        if let Some(pending) = self.take_pending_will(slot) {
            if clean_start {
                self.publish_will(slot, pending.will, now);
            }
        }
        // Remove without releasing the registry (the new connection owns the id now).
        self.flow_forget(slot);
        let s = self.sessions.remove(slot)?;
        self.cfg.memory.recharge(s.charged, 0);
        for filter in s.session.subscriptions.keys() {
            // A moving session's shared memberships stay announced until its new place is
            // known everywhere (`handover`): the caller removes them.
            if let Some(held) = self
                .handover
                .held_shared
                .as_mut()
                .filter(|_| crate::codec::topic::is_shared(filter))
            {
                let member = SlotRef { slot, generation: s.generation };
                held.push(SharedMembership { group: filter.to_string(), member });
                continue;
            }
            self.remove_subscription_entry(slot, s.generation, filter);
        }
        self.by_client.remove(&s.session.client_id);
        self.journal_left(&s.session.client_id, !clean_start);
        self.metrics.sessions_current = self.by_client.len() as u64;
        if clean_start {
            self.metrics.messages_dropped_session_end += s.session.queue.len() as u64;
            return None;
        }
        Some(Box::new(s.session.into_state()))
    }

    /// The previous owner answered (or there was none): install the session (resumed from
    /// `state` or new) and answer CONNACK — or, if a newer CONNECT superseded this one, pass
    /// the session on to it.
    /// `upstream`: the shard that sent the session and still forwards what arrives for it.
    pub(super) fn finish_connect(
        &mut self,
        req: u64,
        state: Option<Box<SessionState>>,
        upstream: Option<ShardId>,
        now: Instant,
    ) {
        let Some(p) = self.pending.remove(&req) else { return };
        if let Some(reqs) = self.pending_by_client.get_mut(&p.connect.client_id) {
            reqs.retain(|r| *r != req);
            if reqs.is_empty() {
                self.pending_by_client.remove(&p.connect.client_id);
            }
        }
        let PendingConnect { conn: cref, connect, assigned_id, auth_done, generation, handoff } = p;
        let conn = cref.id;
        if let Some(ask) = handoff {
            let state = match state {
                Some(st) if ask.clean_start => {
                    self.metrics.messages_dropped_session_end += st.queue.len() as u64;
                    None
                }
                other => other,
            };
            // The session only passes through: relay what its previous shard still forwards.
            let inherited = self.inherit_take(&connect.client_id);
            let relay = upstream
                .zip(generation)
                .map(|(from, g)| super::handover::Upstream::new(from, g))
                .or_else(|| inherited.as_ref().and_then(super::handover::Taken::upstream));
            let forwarding = relay.is_some() && state.is_some();
            if forwarding {
                let client_id = connect.client_id.clone();
                let (to, generation) = (ask.to, ask.generation);
                let carry = self.carry_of(inherited);
                let _ = self.forward_start(&client_id, to, generation, Vec::new(), relay, carry);
            } else if let Some(up) = relay {
                self.joining_abandoned(&connect.client_id, up, now);
            }
            let reply = ShardMsg::TakeoverReply { req: ask.req, state, forwarding };
            return self.send_to_peer(ask.to, reply, now);
        }
        let Some(claim) = generation else {
            // Unreachable: a takeover reply follows the claim reply. Refuse rather than guess.
            tracing::error!(conn = conn.0, "session arrived for a claim without generation");
            return self.close(conn, CloseReason::Protocol(ReasonCode::UnspecifiedError), now);
        };
        let connect = *connect;
        let still_open = self.still_connecting(cref);
        let v5 = connect.version.is_v5();
        let expiry = if v5 {
            connect.properties.session_expiry_interval().unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        }
        .min(self.cfg.session_expiry_secs_max);
        let resumed = state.is_some() && !connect.clean_start;
        let mut session = match state.filter(|_| !connect.clean_start) {
            Some(st) => Session::from_state(connect.client_id.clone(), *st, self.cfg.session),
            None => Session::new(connect.client_id.clone(), self.cfg.session, expiry),
        };
        session.username = connect.username.clone();
        if resumed {
            self.recheck_acl(&mut session);
        }
        let req = self.next_req;
        self.next_req += 1;
        let Installed { slot, told } = self.install_session(session, claim, Some(req));
        let inherited = self.inherit_take(&connect.client_id);
        match upstream {
            // Resumed on the shard where it was joining: the joining goes on in this slot.
            _ if inherited.is_some() => match inherited {
                Some(t) if resumed => self.joining_inherit(slot, claim, t),
                Some(t) => {
                    if let Some(up) = t.upstream() {
                        self.joining_abandoned(&connect.client_id, up, now);
                    }
                }
                None => {}
            },
            // Its previous shard forwards until every shard routes here (`handover`).
            Some(from) if resumed => self.joining_start(slot, claim, from, now),
            Some(from) => {
                let up = super::handover::Upstream::new(from, claim);
                self.joining_abandoned(&connect.client_id, up, now);
            }
            None => {}
        }
        if !still_open {
            // The connection went away while we waited: keep a persistent session offline.
            self.detach_session(slot, now);
            return;
        }
        // Keep alive 0 (none) gets the configured maximum too, so no connection is exempt
        // from the idle check: v5 is told with Server Keep Alive ([MQTT-3.2.2-22]); v3 cannot
        // be told, and is closed after 1.5 times the maximum of silence.
        let keep_alive = match connect.keep_alive_secs {
            0 => self.cfg.keepalive_secs_max,
            k => k.min(self.cfg.keepalive_secs_max),
        };
        let alias_cap = self.cfg.topic_alias_max;
        // The phase stays Connecting until CONNACK is sent: packets the client pipelines after
        // CONNECT wait in `rx` ([MQTT-3.1.4-5] allows them), deliveries wait in the session.
        // The field, not `conn_mut`: the memory budget is borrowed beside the connection.
        let Some(c) = self.conns.get_mut(conn.0) else { return self.detach_session(slot, now) };
        c.set_keep_alive(keep_alive);
        if v5 {
            c.apply_client_limits(&connect.properties, alias_cap);
        }
        if let Some((method, _)) = auth_done.as_ref().filter(|_| v5) {
            // Re-authentication must repeat it (§4.12.1).
            c.set_auth_method(method.clone());
        }
        let will_cost = connect.will.as_ref().map_or(0, super::will_cost);
        c.set_will(connect.will.clone(), will_cost, &self.cfg.memory);
        let peer = c.peer();
        let mut ack = ConnAck {
            session_present: resumed,
            reason: ReasonCode::Success,
            properties: Properties::new(),
        };
        if v5 {
            self.connack_properties(&mut ack.properties, &connect, keep_alive, assigned_id, expiry);
            if let Some((method, data)) = auth_done {
                ack.properties.push(Property::AuthenticationMethod(method));
                ack.properties.push(Property::AuthenticationData(data));
            }
        }
        tracing::debug!(conn = conn.0, %peer, client_id = %connect.client_id, resumed, "session bound");
        let peers = usize::from(self.cfg.shards) - 1;
        if told == 0 || peers == 0 {
            self.complete_connack(cref, slot, claim, ack, now);
        } else {
            // The moved subscriptions must be live on every shard before the client is told.
            let pending = PendingAck::Conn { conn: cref, slot, claim, ack };
            self.pending_acks.insert(req, HeldAck { ack: pending, left: told * peers });
        }
    }

    /// A resumed session may belong to a user with other rights now: subscriptions and queued
    /// messages the ACL no longer allows are dropped (and counted).
    fn recheck_acl(&mut self, session: &mut Session) {
        let Some(acl) = &self.cfg.security.acl else { return };
        let user = session.username.clone();
        let cid = session.client_id.clone();
        let before = session.subscriptions.len();
        session.subscriptions.retain(|filter, _| {
            let inner = crate::topic::parse_shared(filter).map_or(filter.as_str(), |(_, f)| f);
            acl.can_subscribe(user.as_deref(), &cid, inner)
        });
        self.metrics.subscribe_denied += (before - session.subscriptions.len()) as u64;
        let before = session.queue.len() + session.inflight.len();
        session.queue.retain(|o| acl.can_read(user.as_deref(), &cid, &o.msg.topic));
        // In-flight messages too: they would be resent to the new user ([MQTT-4.4.0-1])
        // without passing the delivery check again. A dropped one frees its packet id.
        session.inflight.retain(|_, f| acl.can_read(user.as_deref(), &cid, &f.out.msg.topic));
        session.recount_bytes();
        let after = session.queue.len() + session.inflight.len();
        self.metrics.publish_denied += (before - after) as u64;
    }

    /// Sends CONNACK, then what the resumed session owes the client. The CONNACK is bound to
    /// (slot, claim generation): if that session was taken over meanwhile, or its slot reused,
    /// nothing is sent (the takeover closed the connection).
    pub(super) fn complete_connack(
        &mut self,
        cref: ConnRef,
        slot: SlotId,
        claim: ClaimGen,
        ack: ConnAck,
        now: Instant,
    ) {
        if !self.slot(slot).is_some_and(|s| s.claim == claim && s.conn.is_none()) {
            // The session went on to a newer CONNECT: this connection gets no CONNACK.
            if self.still_connecting(cref) {
                self.close(cref.id, CloseReason::TakenOver, now);
            }
            return;
        }
        let conn = cref.id;
        if !self.still_connecting(cref) {
            // The connection went away while the subscriptions moved: the session stays
            // offline (or ends, with expiry 0).
            self.detach_session(slot, now);
            return;
        }
        let Some(c) = self.conn_mut(conn) else { return };
        c.activate(slot);
        if let Some(s) = self.slot_mut(slot) {
            s.conn = Some(conn);
        }
        // Shared memberships of the session are online now (installed offline).
        self.shared_presence(slot, true);
        let resumed = ack.session_present;
        if !self.send_fitted(conn, &Packet::ConnAck(ack)) {
            // Not even the CONNACK without its optional properties fits the client's Maximum
            // Packet Size ([MQTT-3.1.2-24]): close without sending anything.
            self.close(conn, CloseReason::Refused, now);
            return;
        }
        self.metrics.connects += 1;
        // [MQTT-4.4.0-1]: resend unacknowledged messages on resume, then drain the queue.
        if resumed {
            self.resend_inflight(conn, slot, now);
        }
        self.pump(conn, slot, now);
        // Packets the client sent right after CONNECT.
        self.handle_read(conn, &[], now);
    }

    fn connack_properties(
        &self,
        props: &mut Properties,
        connect: &Connect,
        keep_alive: u16,
        assigned_id: bool,
        expiry: u32,
    ) {
        let requested = connect.properties.session_expiry_interval().unwrap_or(0);
        if requested != expiry {
            props.push(Property::SessionExpiryInterval(expiry));
        }
        props.push(Property::ReceiveMaximum(self.cfg.session.inflight_max));
        props.push(Property::MaximumPacketSize(self.cfg.packet_size_bytes_max as u32));
        props.push(Property::TopicAliasMaximum(self.cfg.topic_alias_max));
        // Maximum QoS is absent: QoS 2 is supported ([MQTT-3.2.2-9]). The rest are said
        // explicitly although 1 is their default, so clients need not guess.
        props.push(Property::RetainAvailable(1));
        props.push(Property::WildcardSubscriptionAvailable(1));
        props.push(Property::SubscriptionIdentifierAvailable(1));
        props.push(Property::SharedSubscriptionAvailable(1));
        if connect.properties.request_response_information() == Some(1) {
            if let Some(prefix) = &self.cfg.response_information_prefix {
                let info = format!("{prefix}{}/", connect.client_id);
                props.push(Property::ResponseInformation(info));
            }
        }
        if assigned_id {
            props.push(Property::AssignedClientIdentifier(connect.client_id.clone()));
        }
        if keep_alive != connect.keep_alive_secs {
            props.push(Property::ServerKeepAlive(keep_alive));
        }
    }

    /// Installs a session and its subscriptions; returns its slot and how many subscription
    /// deltas were broadcast with `ack`.
    pub(super) fn install_session(
        &mut self,
        mut session: Session,
        claim: ClaimGen,
        ack: Option<u64>,
    ) -> Installed {
        let generation = self.next_generation;
        self.next_generation = SlotGen(self.next_generation.0.wrapping_add(1).max(1));
        // One allocation for the client id: the registry's key when it lives here.
        if let Some((k, _)) = self.registry.get_key_value(&*session.client_id) {
            session.client_id = Rc::clone(k);
        }
        let client_id = Rc::clone(&session.client_id);
        let filters: Vec<(crate::codec::TopicFilter, crate::session::Subscription)> =
            session.subscriptions.iter().map(|(f, s)| (f.clone(), s.clone())).collect();
        let entry = SessionSlot {
            charged: 0,
            session,
            generation,
            claim,
            conn: None,
            expires_at: None,
            pending_will: None,
            flow: Default::default(),
            timers: Default::default(),
        };
        let slot = self.sessions.insert(entry);
        self.by_client.insert(client_id, slot);
        self.journal_touch(slot);
        self.metrics.sessions_current = self.by_client.len() as u64;
        self.recharge_slot(slot);
        let mut told = 0;
        for (filter, sub) in filters {
            told += usize::from(self.add_subscription_entry(slot, &filter, &sub, ack));
        }
        Installed { slot, told }
    }
}

/// A session [`Shard::install_session`] installed: its slot, and how many subscription deltas
/// went to the other shards with its acknowledgement.
#[derive(Clone, Copy, Debug)]
pub(super) struct Installed {
    pub(super) slot: SlotId,
    pub(super) told: usize,
}

/// Where a superseded (or superseding) claim's session goes: the shard and request of the
/// newer CONNECT that asked for it, with that claim's generation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Handoff {
    /// Shard of the newer CONNECT.
    pub(super) to: ShardId,
    /// Its request id, echoed in the `TakeoverReply`.
    pub(super) req: u64,
    /// Its claim's generation.
    pub(super) generation: ClaimGen,
    /// It asked for a clean start: the session is discarded on the way.
    pub(super) clean_start: bool,
}

/// A `Takeover` naming a claim of ours whose `ClaimReply` has not arrived yet.
#[derive(Debug)]
pub(crate) struct EarlyTakeover {
    pub(super) client_id: String,
    pub(super) target: ClaimGen,
    pub(super) ask: Handoff,
}

/// An enhanced-authentication exchange waiting for the client's next AUTH.
pub(crate) struct AuthInProgress {
    exchange: Box<dyn Exchange>,
    method: String,
    /// For an exchange started by CONNECT: the CONNECT to continue with on success.
    connect: Option<(Box<Connect>, bool)>,
}

impl std::fmt::Debug for AuthInProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInProgress").field("method", &self.method).finish_non_exhaustive()
    }
}

fn auth_packet(reason: ReasonCode, method: &str, data: Vec<u8>) -> Packet {
    let mut a = ReasonPacket::new(reason);
    a.properties.push(Property::AuthenticationMethod(method.to_owned()));
    if !data.is_empty() || reason == ReasonCode::ContinueAuthentication {
        a.properties.push(Property::AuthenticationData(data.into()));
    }
    Packet::Auth(a)
}

/// A CONNECT whose password a worker is checking (`Shard::verifying`, by ticket). The ticket is
/// also in the connection's `Phase::Verifying`, so a verdict can only resume the connection
/// that asked, never one that reused its id.
#[derive(Debug)]
pub(crate) struct AwaitingVerdict {
    conn: ConnId,
    connect: Box<Connect>,
    assigned_id: bool,
    auth_done: Option<(String, bytes::Bytes)>,
}

/// What [`Shard::authenticate`] decided.
enum Auth {
    /// Go on with the claim.
    Pass,
    /// Refuse with this reason.
    Refuse(ReasonCode),
    /// The password must be checked against this file: a key derivation, done on a worker.
    CheckPassword(std::sync::Arc<crate::auth::PasswordDb>),
}

impl Shard {
    /// Who may connect (Mosquitto's rules): a user name proven by TLS or enhanced
    /// authentication passes; a claimed user name needs its password when a password file is
    /// configured, and is refused outright on a listener without anonymous access that has no
    /// way to check it; no user name needs anonymous access.
    fn authenticate(&self, listener: usize, connect: &Connect, verified: bool) -> Auth {
        let anonymous_ok = self.cfg.listeners[listener].allow_anonymous;
        let anonymous =
            if anonymous_ok { Auth::Pass } else { Auth::Refuse(ReasonCode::NotAuthorized) };
        match (&connect.username, verified, &self.cfg.security.passwords) {
            (Some(_), true, _) => Auth::Pass,
            (Some(_), false, Some(db)) => Auth::CheckPassword(std::sync::Arc::clone(db)),
            // A user name nobody can check: only where anonymous access is allowed anyway.
            (Some(_), false, None) | (None, _, _) => anonymous,
        }
    }

    /// Queues the password check for the runtime ([`Shard::take_password_checks`]) and parks
    /// the connection until its verdict ([`Shard::handle_password_verdict`]). Refused at once,
    /// without a key derivation, when the source address has too many recent failures (0x9F).
    /// With [`ShardConfig::password_checks_inline`] (tests, tools) the check runs here.
    ///
    /// [`ShardConfig::password_checks_inline`]: super::ShardConfig::password_checks_inline
    fn verify_password(
        &mut self,
        db: std::sync::Arc<crate::auth::PasswordDb>,
        pending: AwaitingVerdict,
        now: Instant,
    ) {
        let id = pending.conn;
        let version = pending.connect.version;
        let Some(peer) = self.conn(id).map(Conn::peer) else { return };
        if self.failed_logins.is_blocked(peer.ip(), now) {
            self.metrics.auth_failures += 1;
            tracing::info!(conn = id.0, %peer, "too many failed logins from this address");
            return self.refuse(id, version, ReasonCode::ConnectionRateExceeded, now);
        }
        let ticket = self.next_req;
        self.next_req += 1;
        let job = crate::auth::HashJob {
            shard: self.id,
            ticket,
            db,
            username: pending.connect.username.clone().unwrap_or_default(),
            password: pending.connect.password.clone(),
        };
        self.verifying.insert(ticket, pending);
        self.set_phase_verifying(id, ticket, now);
        if self.cfg.password_checks_inline {
            let verdict = job.run();
            return self.handle_password_verdict(verdict, now);
        }
        self.password_checks.push(job);
    }

    /// Moves the password checks queued since the last call into `out`. The runtime runs them
    /// off the shard (a key derivation is slow on purpose) and answers each with
    /// [`Shard::handle_password_verdict`], or [`Shard::password_check_refused`] when it cannot
    /// take it.
    pub fn take_password_checks(&mut self, out: &mut Vec<crate::auth::HashJob>) {
        out.append(&mut self.password_checks);
    }

    /// The runtime could not queue the check of `ticket` (its workers' queue is full): the
    /// CONNECT is refused with 0x89 (Server busy).
    pub fn password_check_refused(&mut self, ticket: u64, now: Instant) {
        let Some(pending) = self.verifying.remove(&ticket) else { return };
        let id = pending.conn;
        let waiting = self.conn(id).is_some_and(|c| c.awaits_verdict(ticket));
        if waiting {
            tracing::warn!(conn = id.0, "password check queue full: refusing CONNECT");
            self.refuse(id, pending.connect.version, ReasonCode::ServerBusy, now);
        }
    }

    fn set_phase_verifying(&mut self, id: ConnId, ticket: u64, now: Instant) {
        let deadline = now + self.cfg.connect_timeout;
        if let Some(c) = self.conn_mut(id) {
            c.start_verifying(deadline, ticket);
        }
    }

    /// A password check finished (see [`Shard::take_password_checks`]). The CONNECT waiting on it goes
    /// on to the claim, or is refused with 0x86 and counted against its source address. A
    /// verdict for a connection that has gone meanwhile is dropped.
    pub fn handle_password_verdict(&mut self, verdict: crate::auth::Verdict, now: Instant) {
        let Some(pending) = self.verifying.remove(&verdict.ticket) else { return };
        let AwaitingVerdict { conn: id, connect, assigned_id, auth_done } = pending;
        let Some(c) = self.conn(id).filter(|c| c.awaits_verdict(verdict.ticket)) else { return };
        let peer = c.peer();
        if verdict.ok {
            return self.claim_after_auth(id, connect, assigned_id, auth_done, now);
        }
        self.metrics.auth_failures += 1;
        self.failed_logins.record_failure(peer.ip(), now);
        tracing::info!(conn = id.0, user = ?connect.username, client_id = %connect.client_id,
            "authentication failed: bad user name or password");
        self.refuse(id, connect.version, ReasonCode::BadUserNameOrPassword, now);
    }

    /// The mechanism called `method`: SCRAM-SHA-256 over the password file, or a configured one.
    fn mechanism(
        &self,
        method: &str,
    ) -> Option<std::sync::Arc<dyn crate::enhanced_auth::Mechanism>> {
        if method == crate::enhanced_auth::SCRAM_SHA_256 {
            if let Some(m) = self.cfg.security.scram() {
                return Some(m);
            }
        }
        self.cfg.mechanisms.find(method).cloned()
    }

    /// CONNECT with an Authentication Method: start the exchange (§4.12).
    fn start_auth(
        &mut self,
        id: ConnId,
        mut connect: Box<Connect>,
        method: String,
        assigned_id: bool,
        now: Instant,
    ) {
        let version = connect.version;
        let Some(mech) = self.mechanism(&method) else {
            self.metrics.auth_failures += 1;
            return self.refuse(id, version, ReasonCode::BadAuthenticationMethod, now);
        };
        let data = connect.properties.authentication_data().unwrap_or_default();
        match mech.start(&data) {
            Ok(Step::Continue(out, exchange)) => {
                let deadline = now + self.cfg.connect_timeout;
                let Some(c) = self.conn_mut(id) else { return };
                let connect = Some((connect, assigned_id));
                let progress = AuthInProgress { exchange, method: method.clone(), connect };
                c.start_authenticating(deadline, progress);
                self.send(id, &auth_packet(ReasonCode::ContinueAuthentication, &method, out));
            }
            Ok(Step::Success { username, data }) => {
                connect.username = Some(username);
                self.begin_claim(id, connect, assigned_id, Some((method, data.into())), now);
            }
            Err(e) => {
                tracing::debug!(conn = id.0, error = %e, "enhanced authentication failed");
                self.metrics.auth_failures += 1;
                self.refuse(id, version, ReasonCode::NotAuthorized, now);
            }
        }
    }

    /// An AUTH packet: the next step of an exchange, or the start of re-authentication.
    pub(super) fn handle_auth(&mut self, id: ConnId, a: ReasonPacket, now: Instant) {
        let Some(c) = self.conn_mut(id) else { return };
        let method = a.properties.authentication_method();
        let data = a.properties.authentication_data().unwrap_or_default();
        let authenticating = matches!(c.phase(), Phase::Authenticating { .. });
        let reauth_method = c.auth_method().cloned();
        let progress = c.take_auth();
        match (a.reason, progress, method) {
            (ReasonCode::ContinueAuthentication, Some(progress), Some(method))
                if method == progress.method =>
            {
                self.auth_step(id, progress, &data, now)
            }
            // §4.12.1: re-authentication repeats the CONNECT's method, while connected.
            (ReasonCode::ReAuthenticate, None, Some(method))
                if !authenticating && reauth_method.as_ref() == Some(&method) =>
            {
                self.reauth_start(id, method, &data, now)
            }
            // Any other AUTH is a Protocol Error (§4.12, §3.15.2.1).
            _ => {
                self.metrics.protocol_errors += 1;
                if authenticating {
                    self.refuse(id, ProtocolVersion::V5, ReasonCode::ProtocolError, now);
                } else {
                    self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError), now);
                }
            }
        }
    }

    fn reauth_start(&mut self, id: ConnId, method: String, data: &[u8], now: Instant) {
        let Some(mech) = self.mechanism(&method) else { return };
        match mech.start(data) {
            Ok(Step::Continue(out, exchange)) => {
                let Some(c) = self.conn_mut(id) else { return };
                let progress = AuthInProgress { exchange, method: method.clone(), connect: None };
                c.set_auth(progress);
                self.send(id, &auth_packet(ReasonCode::ContinueAuthentication, &method, out));
            }
            Ok(Step::Success { data, .. }) => {
                self.send(id, &auth_packet(ReasonCode::Success, &method, data));
            }
            Err(_) => {
                self.metrics.auth_failures += 1;
                self.close(id, CloseReason::Protocol(ReasonCode::NotAuthorized), now);
            }
        }
    }

    fn auth_step(&mut self, id: ConnId, progress: AuthInProgress, data: &[u8], now: Instant) {
        let AuthInProgress { exchange, method, connect } = progress;
        match (exchange.step(data), connect) {
            (Ok(Step::Continue(out, exchange)), connect) => {
                let Some(c) = self.conn_mut(id) else { return };
                c.set_auth(AuthInProgress { exchange, method: method.clone(), connect });
                self.send(id, &auth_packet(ReasonCode::ContinueAuthentication, &method, out));
            }
            (Ok(Step::Success { username, data }), Some((mut connect, assigned_id))) => {
                connect.username = Some(username);
                self.begin_claim(id, connect, assigned_id, Some((method, data.into())), now);
            }
            (Ok(Step::Success { data, .. }), None) => {
                // Re-authentication succeeded: AUTH 0x00 with the final data.
                self.send(id, &auth_packet(ReasonCode::Success, &method, data));
            }
            (Err(e), connect) => {
                tracing::debug!(conn = id.0, error = %e, "enhanced authentication failed");
                self.metrics.auth_failures += 1;
                if connect.is_some() {
                    self.refuse(id, ProtocolVersion::V5, ReasonCode::NotAuthorized, now);
                } else {
                    self.close(id, CloseReason::Protocol(ReasonCode::NotAuthorized), now);
                }
            }
        }
    }
}

/// A client identifier for a client that sent none: `tern-` and 72 random bits in hex,
/// 23 bytes, the length every server must accept ([MQTT-3.1.3-5]). Random, so nobody can
/// guess the id given to another client and take its session over. `None` if the OS has no
/// randomness to give.
fn generate_client_id() -> Option<String> {
    let mut raw = [0u8; 9];
    getrandom::getrandom(&mut raw).ok()?;
    let mut id = String::with_capacity(23);
    id.push_str("tern-");
    for b in raw {
        id.push_str(&format!("{b:02x}"));
    }
    Some(id)
}

fn connack(session_present: bool, reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck { session_present, reason, properties: Properties::new() })
}
