//! Handing a persistent session over to another shard without losing what was acknowledged.
//!
//! When a CONNECT on shard N takes over the session of a client id held by shard O
//! ([MQTT-3.1.4-2], [MQTT-3.1.2-5]), O sends the session to N and N announces the session's
//! filters to every shard. Until every shard routes to N, a publish matching the session can
//! still be routed to O only: by O itself, by a peer whose replica has not applied N's `SubAdd`
//! yet, or sitting in a peer's data lane to O, which the control-lane `Takeover` overtook. Such
//! a publish was acknowledged to its publisher; it must reach the session (issue 9, the
//! `publish_during_a_cross_shard_resume_reaches_the_resumed_session` test).
//!
//! The protocol:
//! 1. **Forward.** O keeps the session's non-shared filters announced and its trie entries
//!    (keyed [`super::subscribe::SubKey::Forward`]) after the handover, and forwards every
//!    matching message to N ([`ShardMsg::Forwarded`], on the control lane behind the
//!    `TakeoverReply`, so N has the session when they arrive).
//! 2. **Join.** N installs the session, announces its filters, then sends every peer a
//!    [`ShardMsg::Fence`]. A peer answers [`ShardMsg::FenceAck`] on its *data* lane: what the
//!    peer routed to N before it is behind the fence (it also went to O, whose filters were
//!    pinned, so O holds or forwards it), and N skips it for this session; what it routes
//!    after reaches N directly. When every peer has answered, every peer has applied N's
//!    filters (the fence followed them on the control lane), and N sends O
//!    [`ShardMsg::ForwardStop`].
//! 3. **Drain.** O fences every peer in turn: once each has answered on its data lane, nothing
//!    routed before it applied N's filters is still on its way to O. O then withdraws its
//!    entries (the filters are withdrawn from the other shards if no other session holds
//!    them) and sends N [`ShardMsg::ForwardEnd`] behind the last forwarded message.
//!
//! A message can reach N both directly and forwarded (routed after a peer applied N's filters,
//! while O still had them): every routed message carries an id (`Message::id`, the routing
//! shard and a sequence), and N delivers each id once to a joining session (a set bounded by the
//! session's queue bound, counted in `handover_dedup_full` when full). Order between forwarded
//! and direct messages is not kept during the window (as in EMQX's takeover "pendings"); each
//! path keeps its own order.
//!
//! Chains: a session can move again before its previous move has drained (O → N → M). N then
//! keeps a forward record too, relays what O forwards, and passes `ForwardStop` on to O only
//! when M's arrives, so the first owner drains only once the last one is announced everywhere.
//! The record inherits the joining state (the ids already given, the peers not yet fenced and
//! their fence), so a late copy reaching N is neither forwarded as new nor lost; a session
//! resumed on the shard where it was joining keeps that state in its new slot.
//! A session that ends while joining stops its upstream at once; what arrives for it after is
//! counted in `messages_dropped_session_end`.
//!
//! Shared subscriptions: the session's memberships stay announced until its new place is —
//! withdrawn after the new member's `SharedAdd` on the same shard, or when the forward record
//! ends, deliveries picked for the old member meanwhile being forwarded ([`Shard::forward_shared`]).

use crate::ids::{MessageId, ShardId, SlotId, SlotRef};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Instant;

use super::message::{ClaimGen, ShardMsg};
use super::publish::LocalMatch;
use super::subscribe::{SubKey, SubVal};
use super::Shard;
use crate::codec::{QoS, SubscriptionOptions};
use crate::session::message::Message;
use crate::session::Outgoing;

/// A delivery an old owner forwards to the session's new shard: the message and the options
/// and identifiers of the session's subscriptions it matched.
#[derive(Debug)]
pub struct ForwardedDelivery {
    /// The message.
    pub msg: Message,
    /// Options and identifier of each matching subscription.
    pub matches: Vec<(SubscriptionOptions, Option<u32>)>,
    /// A shared-subscription delivery: the group picked this session once, so it is not
    /// de-duplicated against the session's other subscriptions.
    pub shared: bool,
}

/// The shard a session came from, while that shard may still forward messages for it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Upstream {
    /// Shard forwarding to us.
    from: ShardId,
    /// The claim under which we received the session (the upstream's record names it).
    generation: ClaimGen,
    /// We told it to drain ([`ShardMsg::ForwardStop`]).
    stop_sent: bool,
}

impl Upstream {
    /// Shard `from`, which handed the session on under claim `generation` and has not been
    /// told to drain yet.
    pub(super) fn new(from: ShardId, generation: ClaimGen) -> Self {
        Upstream { from, generation, stop_sent: false }
    }
}

/// What a joining session that moves on leaves to its forward record: the ids it was given
/// (so a late copy is not forwarded as new) and the peers whose fence answer is missing
/// (their direct copies reach the next owner through the previous shard).
#[derive(Debug, Default)]
pub(super) struct Carry {
    seen: HashSet<MessageId>,
    unfenced: Vec<bool>,
    /// The joining session's fence, whose answers still clear `unfenced`.
    fence: Option<u64>,
}

/// A joining session's state taken as it leaves its slot.
#[derive(Debug)]
pub(super) struct Taken(Joining);

impl Taken {
    /// Its upstream; None once that sent its last forward.
    pub(super) fn upstream(&self) -> Option<Upstream> {
        (!self.0.ended).then_some(self.0.upstream)
    }

    /// What a forward record inherits when the session moves to another shard.
    fn into_carry(self, fences: &HashMap<u64, FenceWait>) -> Carry {
        let fence = fences.contains_key(&self.0.fence).then_some(self.0.fence);
        Carry { seen: self.0.seen, unfenced: self.0.unfenced, fence }
    }
}

/// This shard handed a session on and forwards what still arrives for it.
#[derive(Debug)]
struct Forward {
    client_id: String,
    /// The next owner and the claim it holds the session under.
    to: ShardId,
    generation: ClaimGen,
    /// Filters held in the trie under `SubKey::Forward` (each counted in `local_filter_refs`).
    filters: Vec<String>,
    /// Messages forwarded so far (bounded, see [`Shard::forward_cap`]).
    sent: usize,
    /// The shard that still forwards to us for this session, if any.
    upstream: Option<Upstream>,
    /// The next owner asked us to drain: a fence runs (or ran).
    stopping: bool,
    /// Every peer answered the drain fence.
    fenced: bool,
    /// Inherited from the session's joining state here, if it moved on while joining.
    carry: Carry,
    /// Its shared memberships here (group, slot, slot generation; one slot for all), withdrawn
    /// when it ends; their (slot, generation) keys `Handover::by_member`.
    shared: Vec<SharedMembership>,
}

/// A shared-subscription membership of a session that leaves its slot: the group (the full
/// `$share/{group}/{filter}` text) and the member's key on this shard.
#[derive(Clone, Debug)]
pub(super) struct SharedMembership {
    pub(super) group: String,
    pub(super) member: SlotRef,
}

/// A session installed here whose previous owner may still forward messages for it.
#[derive(Debug)]
struct Joining {
    claim: ClaimGen,
    upstream: Upstream,
    /// Per peer: its fence answer has not arrived, so what it routes directly is skipped.
    unfenced: Vec<bool>,
    /// Ids delivered during the window (bounded).
    seen: HashSet<MessageId>,
    /// The upstream's [`ShardMsg::ForwardEnd`] arrived (the final fence runs).
    ended: bool,
    /// Token of the fence that clears `unfenced`.
    fence: u64,
}

/// What a fence does once every peer has answered.
#[derive(Debug, Clone, Copy)]
enum FenceThen {
    /// The joining session in `slot` (of `claim`) may stop its upstream.
    Joined { slot: SlotId, claim: ClaimGen },
    /// Forward record `fid` has drained its peers.
    Drained { fid: ForwardId },
    /// The joining session in `slot` (of `claim`) got its upstream's last forward, and every
    /// peer's data lane is past what it routed before: the session has joined.
    Settled { slot: SlotId, claim: ClaimGen },
}

#[derive(Debug)]
struct FenceWait {
    waiting: Vec<bool>,
    left: usize,
    then: FenceThen,
}

/// A forward record's number (a session handed on from here, see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ForwardId(pub(crate) u32);

/// A shard's handover state. Every map is bounded by the sessions in transit: one record per
/// handover not yet drained, one joining entry per session installed from a forwarding shard,
/// one fence per record or joining session.
#[derive(Debug, Default)]
pub(crate) struct Handover {
    forwards: HashMap<ForwardId, Forward>,
    by_client: HashMap<String, Vec<ForwardId>>,
    next_forward: u32,
    joining: HashMap<SlotId, Joining>,
    fences: HashMap<u64, FenceWait>,
    /// Joining fences whose session moved on: token → the forward record that inherited it.
    fence_records: HashMap<u64, ForwardId>,
    /// Shared-subscription members handed on: (slot, slot generation) → forward record.
    by_member: HashMap<SlotRef, ForwardId>,
    /// Set around a session's removal for a handover: its shared memberships (group, slot,
    /// slot generation) are collected here instead of withdrawn (never set between calls).
    pub(super) held_shared: Option<Vec<SharedMembership>>,
    /// A joining session resumed on this same shard, between its removal and the inline
    /// reply that installs it (never set between calls).
    inherit: Option<(String, Taken)>,
    next_fence: u64,
    next_msg: u64,
    /// Reused per publish: matches of forward entries.
    pub(super) scratch: Vec<LocalMatch<ForwardId>>,
}

impl Handover {
    /// Whether any session on this shard is joining (the hot path checks this first).
    pub(super) fn any_joining(&self) -> bool {
        !self.joining.is_empty()
    }

    /// Records, joining sessions and fences not finished (0 once the cluster settles).
    #[cfg(test)]
    pub(crate) fn in_transit(&self) -> usize {
        self.forwards.len()
            + self.by_client.len()
            + self.joining.len()
            + self.fences.len()
            + self.fence_records.len()
            + self.by_member.len()
            + usize::from(self.held_shared.is_some())
            + usize::from(self.inherit.is_some())
    }
}

impl Shard {
    /// Gives a message routed here its id: this shard in the top 16 bits, a sequence below.
    pub(super) fn stamp_message(&mut self, msg: &mut Message) {
        if msg.id.is_unrouted() {
            self.handover.next_msg += 1;
            msg.id = MessageId::new(self.id, self.handover.next_msg);
        }
    }

    /// The most messages one record forwards: what the session could queue, plus its window.
    fn forward_cap(&self) -> usize {
        self.cfg.session.queue_messages_max + usize::from(self.cfg.session.inflight_max)
    }

    /// On the old owner, right after sending the session of `client_id` to `to` (which holds it
    /// under `generation`): keep its non-shared `filters` (with their options) matching here,
    /// forwarding to `to`, until `to` says every shard routes to it. `upstream` is the shard
    /// that still forwards to us for this session, if any. Returns whether a record was made.
    pub(super) fn forward_start(
        &mut self,
        client_id: &str,
        to: ShardId,
        generation: ClaimGen,
        filters: Vec<(String, SubVal)>,
        upstream: Option<Upstream>,
        carry: Carry,
    ) -> ForwardId {
        let fid = ForwardId(self.handover.next_forward);
        self.handover.next_forward = self.handover.next_forward.wrapping_add(1);
        let mut held = Vec::with_capacity(filters.len());
        for (filter, val) in filters {
            let Some(refs) = self.local_filter_refs.get_mut(&filter) else { continue };
            *refs += 1;
            self.trie.insert(&filter, SubKey::Forward(fid), val);
            held.push(filter);
        }
        let record = Forward {
            client_id: client_id.to_owned(),
            to,
            generation,
            filters: held,
            sent: 0,
            upstream,
            stopping: false,
            fenced: false,
            carry,
            shared: Vec::new(),
        };
        if let Some(token) = record.carry.fence {
            self.handover.fence_records.insert(token, fid);
        }
        self.handover.forwards.insert(fid, record);
        self.handover.by_client.entry(client_id.to_owned()).or_default().push(fid);
        self.metrics.handover_records += 1;
        fid
    }

    /// Record `fid` also stands for the session's shared-subscription memberships `shared`
    /// (group, its old slot, slot generation), kept announced until the record ends: a delivery
    /// other shards still pick for that member is forwarded too, until their replicas know the
    /// member's new place.
    pub(super) fn forward_member(&mut self, fid: ForwardId, shared: Vec<SharedMembership>) {
        let Some(member) = shared.first().map(|m| m.member) else { return };
        if let Some(f) = self.handover.forwards.get_mut(&fid) {
            f.shared = shared;
            self.handover.by_member.insert(member, fid);
        }
    }

    /// A shared delivery for `group` picked for `member`: if that member is a session of ours
    /// handed on, it is sent to its new shard; with `any_member`, if no member here can take it,
    /// to any session of the group handed on from here (a replica picked a member that had
    /// already been replaced, §4.8.2 lets another member of the group have it). False if
    /// neither applies.
    pub(super) fn forward_shared(
        &mut self,
        group: &str,
        member: &super::message::Member,
        msg: &Message,
        any_member: bool,
        now: Instant,
    ) -> bool {
        if self.handover.forwards.is_empty() {
            return false;
        }
        let exact = (member.shard == self.id)
            .then(|| {
                self.handover
                    .by_member
                    .get(&SlotRef { slot: member.slot, generation: member.generation })
                    .copied()
            })
            .flatten();
        let in_group = || {
            let ids = self.handover.forwards.iter();
            // The lowest id, so that a seeded simulation replays the same choice.
            ids.filter(|(_, f)| f.shared.iter().any(|m| m.group == group)).map(|(id, _)| *id).min()
        };
        let Some(fid) = exact.or_else(|| any_member.then(in_group).flatten()) else {
            return false;
        };
        let matches = vec![(member.options, member.identifier)];
        let delivery = ForwardedDelivery { msg: msg.clone(), matches, shared: true };
        self.forward_through(fid, delivery, now);
        true
    }

    /// The filters (non-shared, announced) and trie values of a session about to be handed on.
    pub(super) fn forwardable_filters(&self, slot: SlotId) -> Vec<(String, SubVal)> {
        let Some(s) = self.slot(slot) else { return Vec::new() };
        s.session
            .subscriptions
            .iter()
            .filter(|(f, _)| {
                !crate::codec::topic::is_shared(f)
                    && self.local_filter_refs.contains_key(f.as_str())
            })
            .map(|(f, sub)| {
                let val = SubVal::Local { options: sub.options, identifier: sub.identifier };
                (f.to_string(), val)
            })
            .collect()
    }

    /// Takes the joining state of a session leaving `slot`: its upstream, as
    /// (shard, generation, stop sent).
    /// None if it has none, or if its upstream has already sent its last forward.
    pub(super) fn joining_take(&mut self, slot: SlotId) -> Option<Taken> {
        self.handover.joining.remove(&slot).map(Taken)
    }

    /// The forward record's inheritance from a joining session that moves to another shard.
    pub(super) fn carry_of(&self, taken: Option<Taken>) -> Carry {
        taken.map(|t| t.into_carry(&self.handover.fences)).unwrap_or_default()
    }

    /// A joining session resumed on this same shard: the new session in `slot` (claim
    /// `claim`) continues its joining (same upstream, same ids, same fence).
    pub(super) fn joining_inherit(&mut self, slot: SlotId, claim: ClaimGen, taken: Taken) {
        let mut j = taken.0;
        j.claim = claim;
        if let Some(w) = self.handover.fences.get_mut(&j.fence) {
            w.then = match w.then {
                FenceThen::Joined { .. } => FenceThen::Joined { slot, claim },
                FenceThen::Settled { .. } => FenceThen::Settled { slot, claim },
                other => other,
            };
        }
        self.handover.joining.insert(slot, j);
    }

    /// Stashes a joining session resumed on this same shard until the inline reply installs
    /// it (or passes it on).
    pub(super) fn inherit_stash(&mut self, client_id: &str, taken: Taken) {
        self.handover.inherit = Some((client_id.to_owned(), taken));
    }

    /// The stashed joining state for `client_id`, if any.
    pub(super) fn inherit_take(&mut self, client_id: &str) -> Option<Taken> {
        if self.handover.inherit.as_ref().is_some_and(|(c, _)| c == client_id) {
            return self.handover.inherit.take().map(|(_, t)| t);
        }
        None
    }

    /// A joining session left without being handed on (ended, or discarded by a clean start):
    /// its upstream may drain now; what it still forwards is dropped and counted.
    pub(super) fn joining_abandoned(&mut self, client_id: &str, upstream: Upstream, now: Instant) {
        let Upstream { from, generation, stop_sent } = upstream;
        if !stop_sent {
            let msg = ShardMsg::ForwardStop { client_id: client_id.to_owned(), generation };
            self.send_to_peer(from, msg, now);
        }
    }

    /// On the new owner, after installing a session that `from` still forwards to (under
    /// `claim`): fence every peer (see the module doc, step 2).
    pub(super) fn joining_start(
        &mut self,
        slot: SlotId,
        claim: ClaimGen,
        from: ShardId,
        now: Instant,
    ) {
        let shards = usize::from(self.cfg.shards);
        let mut unfenced = vec![true; shards];
        unfenced[usize::from(self.id)] = false;
        let upstream = Upstream { from, generation: claim, stop_sent: false };
        let fence = self.handover.next_fence;
        let joining =
            Joining { claim, upstream, unfenced, seen: HashSet::new(), ended: false, fence };
        self.handover.joining.insert(slot, joining);
        let token = self.fence(FenceThen::Joined { slot, claim }, now);
        debug_assert_eq!(token, fence, "invariant: the fence took the next token");
    }

    /// Sends every peer a fence; `then` runs when all have answered (at once without peers).
    /// Returns its token.
    fn fence(&mut self, then: FenceThen, now: Instant) -> u64 {
        let token = self.handover.next_fence;
        self.handover.next_fence += 1;
        let shards = usize::from(self.cfg.shards);
        let mut waiting = vec![true; shards];
        waiting[usize::from(self.id)] = false;
        let left = shards - 1;
        if left == 0 {
            self.fence_done(then, now);
            return token;
        }
        self.handover.fences.insert(token, FenceWait { waiting, left, then });
        self.broadcast(|| ShardMsg::Fence { token });
        token
    }

    /// A peer answered fence `token` on its data lane.
    pub(super) fn fence_acked(&mut self, from: ShardId, token: u64, now: Instant) {
        let Some(w) = self.handover.fences.get_mut(&token) else { return };
        let Some(flag) = w.waiting.get_mut(usize::from(from)) else { return };
        if !std::mem::replace(flag, false) {
            return;
        }
        w.left -= 1;
        let then = w.then;
        let done = w.left == 0;
        if let FenceThen::Joined { slot, claim } = then {
            match self.handover.joining.get_mut(&slot) {
                Some(j) if j.claim == claim => j.unfenced[usize::from(from)] = false,
                _ => {
                    // The session moved on: its forward record inherited the fence.
                    let fid = self.handover.fence_records.get(&token).copied();
                    let record = fid.and_then(|f| self.handover.forwards.get_mut(&f));
                    if let Some(unfenced) =
                        record.and_then(|r| r.carry.unfenced.get_mut(usize::from(from)))
                    {
                        *unfenced = false;
                    }
                }
            }
        }
        if done {
            self.handover.fences.remove(&token);
            self.handover.fence_records.remove(&token);
            self.fence_done(then, now);
        }
    }

    fn fence_done(&mut self, then: FenceThen, now: Instant) {
        match then {
            FenceThen::Joined { slot, claim } => {
                let Some(j) = self.handover.joining.get_mut(&slot) else { return };
                if j.claim != claim || j.upstream.stop_sent {
                    return;
                }
                j.upstream.stop_sent = true;
                let (from, generation) = (j.upstream.from, j.upstream.generation);
                let Some(client_id) = self.slot(slot).map(|s| s.session.client_id.to_string())
                else {
                    return;
                };
                self.send_to_peer(from, ShardMsg::ForwardStop { client_id, generation }, now);
            }
            FenceThen::Settled { slot, claim } => {
                if self.handover.joining.get(&slot).is_some_and(|j| j.claim == claim) {
                    self.handover.joining.remove(&slot);
                }
            }
            FenceThen::Drained { fid } => {
                if let Some(f) = self.handover.forwards.get_mut(&fid) {
                    f.fenced = true;
                }
                self.forward_try_end(fid, now);
            }
        }
    }

    /// Which record of `client_id` matches `pred`.
    fn forward_find(&self, client_id: &str, pred: impl Fn(&Forward) -> bool) -> Option<ForwardId> {
        let ids = self.handover.by_client.get(client_id)?;
        ids.iter().copied().find(|fid| self.handover.forwards.get(fid).is_some_and(&pred))
    }

    /// The next owner (`from`) of the session it holds under `generation` says every shard
    /// routes to it: stop our upstream (if any) and drain our peers.
    pub(super) fn forward_stop(
        &mut self,
        from: ShardId,
        client_id: &str,
        generation: ClaimGen,
        now: Instant,
    ) {
        let fid = self
            .forward_find(client_id, |f| f.to == from && f.generation == generation && !f.stopping);
        let Some(fid) = fid else { return };
        let Some(f) = self.handover.forwards.get_mut(&fid) else { return };
        f.stopping = true;
        if let Some(up) = f.upstream.as_mut().filter(|u| !u.stop_sent) {
            up.stop_sent = true;
            let (to, generation) = (up.from, up.generation);
            let msg = ShardMsg::ForwardStop { client_id: client_id.to_owned(), generation };
            self.send_to_peer(to, msg, now);
        }
        let _ = self.fence(FenceThen::Drained { fid }, now);
    }

    /// Ends record `fid` once its peers are drained and its upstream has ended.
    fn forward_try_end(&mut self, fid: ForwardId, now: Instant) {
        let done =
            self.handover.forwards.get(&fid).is_some_and(|f| f.fenced && f.upstream.is_none());
        if !done {
            return;
        }
        let Some(f) = self.handover.forwards.remove(&fid) else { return };
        if let Some(token) = f.carry.fence {
            self.handover.fence_records.remove(&token);
        }
        if let Some(m) = f.shared.first() {
            self.handover.by_member.remove(&m.member);
        }
        for m in &f.shared {
            self.remove_shared_member(&m.group, m.member.slot, m.member.generation);
        }
        if let Some(ids) = self.handover.by_client.get_mut(&f.client_id) {
            ids.retain(|i| *i != fid);
            if ids.is_empty() {
                self.handover.by_client.remove(&f.client_id);
            }
        }
        for filter in &f.filters {
            self.trie.remove(filter, &SubKey::Forward(fid));
            let Some(refs) = self.local_filter_refs.get_mut(filter) else { continue };
            *refs -= 1;
            if *refs == 0 {
                self.local_filter_refs.remove(filter);
                let f = filter.clone();
                self.broadcast(|| ShardMsg::SubRemove { filter: f.clone() });
            }
        }
        let msg = ShardMsg::ForwardEnd { client_id: f.client_id, generation: f.generation };
        self.send_to_peer(f.to, msg, now);
    }

    /// `from` forwards nothing more for `client_id` (held here under `generation`).
    pub(super) fn forward_ended(
        &mut self,
        from: ShardId,
        client_id: &str,
        generation: ClaimGen,
        now: Instant,
    ) {
        // A record of ours whose upstream this was.
        let fid = self.forward_find(client_id, |f| {
            f.upstream.is_some_and(|u| u.from == from && u.generation == generation)
        });
        if let Some(fid) = fid {
            if let Some(f) = self.handover.forwards.get_mut(&fid) {
                f.upstream = None;
            }
            return self.forward_try_end(fid, now);
        }
        // Or the joining session itself.
        let Some(slot) = self.by_client.get(client_id).copied() else { return };
        let Some(j) = self.handover.joining.get_mut(&slot) else { return };
        // The upstream names the claim it handed the session to, which a resume on this
        // shard since has replaced (`joining_inherit`): match the upstream, not the claim.
        let ends = j.upstream.from == from && j.upstream.generation == generation && !j.ended;
        if ends {
            j.ended = true;
            let claim = j.claim;
            // Copies routed by a peer before the old shard drained may still be on their way
            // here directly: keep de-duplicating until every peer's data lane is past them.
            let token = self.fence(FenceThen::Settled { slot, claim }, now);
            if let Some(j) = self.handover.joining.get_mut(&slot) {
                j.fence = token;
            }
        }
    }

    /// Forwards the matches of forward entries (collected in `handover.scratch` by the routing
    /// walk) for `msg`.
    pub(super) fn forward_matches(
        &mut self,
        msg: &Message,
        matches: &mut Vec<LocalMatch<ForwardId>>,
        from: Option<ShardId>,
        now: Instant,
    ) {
        if matches.is_empty() {
            return;
        }
        matches.sort_unstable_by_key(|m| m.slot);
        let mut i = 0;
        while i < matches.len() {
            let fid = matches[i].slot;
            let mut these = Vec::new();
            while i < matches.len() && matches[i].slot == fid {
                these.push((matches[i].options, matches[i].identifier));
                i += 1;
            }
            let Some(f) = self.handover.forwards.get_mut(&fid) else { continue };
            // Inherited from a joining session that moved on: a direct copy from a peer it had
            // not fenced comes through its previous shard, and an id it was given is not new.
            if from.is_some_and(|p| f.carry.unfenced.get(usize::from(p)).copied().unwrap_or(false))
            {
                self.metrics.handover_skipped += 1;
                continue;
            }
            let delivery = ForwardedDelivery { msg: msg.clone(), matches: these, shared: false };
            self.forward_through(fid, delivery, now);
        }
        matches.clear();
    }

    /// Sends `delivery` on through record `fid`: not if the record inherited its id as already
    /// given (shared deliveries excepted: a group picks a session once), dropped and counted
    /// past the record's bound.
    fn forward_through(&mut self, fid: ForwardId, delivery: ForwardedDelivery, now: Instant) {
        let cap = self.forward_cap();
        let Some(f) = self.handover.forwards.get_mut(&fid) else { return };
        let id = delivery.msg.id;
        if !delivery.shared && !id.is_unrouted() && f.carry.seen.contains(&id) {
            self.metrics.handover_duplicates += 1;
            return;
        }
        if f.sent >= cap {
            self.metrics.messages_dropped_queue_full += 1;
            return;
        }
        f.sent += 1;
        let (to, client_id, generation) = (f.to, f.client_id.clone(), f.generation);
        self.send_forwarded(to, client_id, generation, delivery, now);
    }

    fn send_forwarded(
        &mut self,
        to: ShardId,
        client_id: String,
        generation: ClaimGen,
        delivery: ForwardedDelivery,
        now: Instant,
    ) {
        // Charged while it crosses the mesh, like a routed publish; the receiver releases it.
        self.cfg.memory.recharge(0, delivery.msg.cost_bytes());
        self.metrics.handover_forwarded += 1;
        let delivery = Box::new(delivery);
        self.send_to_peer(to, ShardMsg::Forwarded { client_id, generation, delivery }, now);
    }

    /// A delivery forwarded by `from` for `client_id`, which it handed over under `generation`.
    pub(super) fn forwarded(
        &mut self,
        from: ShardId,
        client_id: String,
        generation: ClaimGen,
        delivery: ForwardedDelivery,
        now: Instant,
    ) {
        let ForwardedDelivery { msg, matches, shared } = delivery;
        self.cfg.memory.recharge(msg.cost_bytes(), 0);
        // Passed on by a record of ours (the session moved on from here).
        let fid = self.forward_find(&client_id, |f| {
            f.upstream.is_some_and(|u| u.from == from && u.generation == generation)
        });
        if let Some(fid) = fid {
            let delivery = ForwardedDelivery { msg, matches, shared };
            return self.forward_through(fid, delivery, now);
        }
        // Or delivered to the session, if it is still the one handed over.
        let slot =
            self.by_client.get(client_id.as_str()).copied().filter(|s| {
                self.slot(*s).is_some_and(|x| x.claim == generation)
                    || self.handover.joining.get(s).is_some_and(|j| {
                        j.upstream.from == from && j.upstream.generation == generation
                    })
            });
        let Some(slot) = slot else {
            self.metrics.messages_dropped_session_end += 1;
            return;
        };
        if !shared && !self.handover_admit(slot, None, msg.id) {
            return;
        }
        let generation_here = self.slot(slot).map(|s| s.generation);
        let own = msg.origin.is_some_and(|o| {
            o.shard == self.id && o.session == slot && Some(o.generation) == generation_here
        });
        let mut qos = QoS::AtMostOnce;
        let mut retain_as_published = false;
        let mut ids = Vec::new();
        let mut any = false;
        for (options, identifier) in matches {
            // No Local ([MQTT-3.8.3-3]): the session's own publish, on its new shard.
            if options.no_local && own {
                continue;
            }
            any = true;
            qos = qos.max(options.qos);
            retain_as_published |= options.retain_as_published;
            ids.extend(identifier);
        }
        if !any {
            return;
        }
        let out = Outgoing {
            qos: super::message::delivery_qos(msg.qos, qos),
            retain: retain_as_published && msg.retain,
            msg: Rc::new(msg),
            subscription_ids: ids,
        };
        self.deliver(slot, out, now);
    }

    /// Keeps the matches whose session admits message `id` arriving from `from`
    /// ([`Shard::handover_admit`], asked once per session).
    pub(super) fn admit_matches(
        &mut self,
        matches: &mut Vec<LocalMatch>,
        from: Option<ShardId>,
        id: MessageId,
    ) {
        if !self.handover.any_joining() {
            return;
        }
        matches.sort_unstable_by_key(|m| m.slot);
        let mut verdict: Option<(SlotId, bool)> = None;
        matches.retain(|m| match verdict {
            Some((slot, keep)) if slot == m.slot => keep,
            _ => {
                let keep = self.handover_admit(m.slot, from, id);
                verdict = Some((m.slot, keep));
                keep
            }
        });
    }

    /// Whether a delivery of message `id` (0: unknown) to the session in `slot`, arriving
    /// directly from peer `from` (None: routed here or forwarded), is to be made: a joining
    /// session skips what a peer routed before its fence and takes each id once.
    pub(super) fn handover_admit(
        &mut self,
        slot: SlotId,
        from: Option<ShardId>,
        id: MessageId,
    ) -> bool {
        let cap = self.forward_cap();
        let Some(j) = self.handover.joining.get_mut(&slot) else { return true };
        if from.is_some_and(|p| j.unfenced.get(usize::from(p)).copied().unwrap_or(false)) {
            self.metrics.handover_skipped += 1;
            return false;
        }
        if id.is_unrouted() {
            return true;
        }
        if j.seen.contains(&id) {
            self.metrics.handover_duplicates += 1;
            return false;
        }
        if j.seen.len() < cap {
            j.seen.insert(id);
        } else {
            self.metrics.handover_dedup_full += 1;
        }
        true
    }
}
