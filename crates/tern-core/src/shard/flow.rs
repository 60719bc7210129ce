//! Flow control: a subscriber that cannot keep up slows down the publishers that feed it,
//! instead of the broker dropping what it has acknowledged.
//!
//! The measure of a connected subscriber's backlog is its session queue (messages routed to it
//! that are not yet in its output buffer; the output buffer itself is bounded by
//! `tx_bytes_max`, and the queue takes over when it is full or the in-flight window is closed).
//!
//! - **High-water mark.** A delivery that leaves the queue at or above
//!   [`FlowLimits::high_water_messages`] or [`FlowLimits::high_water_bytes`] pauses the
//!   message's publishing session: its
//!   connection is not read until every subscriber that paused it has drained. A publisher on
//!   this shard is paused at once; one on another shard gets [`ShardMsg::Pause`] on the control
//!   lane (never queued behind data), and later [`ShardMsg::Resume`].
//! - **Low-water mark.** When the queue falls to [`FlowLimits::low_water_messages`] and to half
//!   of [`FlowLimits::high_water_bytes`] (a PUBACK,
//!   a write, a pump), every publisher it paused is resumed. A subscriber pauses each publisher
//!   at most once per congestion episode, so the pause count of a publisher is the number of
//!   subscribers (and peer outboxes) it is waiting for.
//! - **Peer outboxes.** A publish routed to a peer shard whose outbox holds
//!   `outbox_messages_max` messages pauses its publisher until that outbox is half empty:
//!   publishers feeding other shards and local subscribers keep flowing (no shard-wide pause).
//! - **No QoS 1/2 drop while connected.** Deliveries to a connected subscriber are queued past
//!   the offline bounds; the pauses keep the queue near the high-water mark.
//! - **The QoS 0 overshoot is bounded.** A paused publisher on this shard stops decoding at
//!   the packet that paused it (the rest of its read waits in its input,
//!   [`super::ConnStatus::input_waiting`]); one on another shard is paused only once what it
//!   had sent across the mesh has arrived (issue 9: ~2 000 messages of 1 KiB past a mark of
//!   1 000 behind a stalled subscriber). A QoS 0 delivery that would take the
//!   queue past [`FlowLimits::qos0_queue_bytes_max`] is dropped and counted
//!   (`messages_dropped_qos0_slow`) instead; an empty queue always takes one message. QoS 0 is
//!   at most once, acknowledged to nobody: no promise is broken.
//! - **Slow consumers.** A subscriber congested longer than
//!   [`FlowLimits::slow_consumer_timeout`], or whose queue reaches
//!   [`FlowLimits::hard_cap_messages`] or holds [`FlowLimits::hard_cap_bytes`], is a slow consumer: it is disconnected, or (policy
//!   `drop`) it alone loses new messages until it drains, and its publishers are resumed either
//!   way. Then a persistent session keeps at most the offline queue bounds.
//!
//! Known limit: two clients that each publish heavily to the other and both fall behind pause
//! each other (neither reads the other's acknowledgements); the slow-consumer timeout breaks
//! that cycle.

use crate::ids::{SlotGen, SlotId};
use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{CloseReason, Phase, Shard, ShardMsg};
use crate::codec::ReasonCode;
use crate::session::message::Origin;

/// What happens to a slow consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close its connection (v5: DISCONNECT 0x97 Quota exceeded); a persistent session keeps
    /// its queue within the offline bounds.
    Disconnect,
    /// Keep it connected, drop new messages for it (counted) until it drains to the low-water
    /// mark.
    Drop,
}

/// The flow-control bounds, copied from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct FlowLimits {
    /// Queued messages of a connected subscriber at which its publishers are paused.
    pub high_water_messages: usize,
    /// Queued messages at which they are resumed (below the high-water mark).
    pub low_water_messages: usize,
    /// Queued messages at which a subscriber is a slow consumer at once.
    pub hard_cap_messages: usize,
    /// Bytes queued and in flight at which a subscriber is a slow consumer at once.
    pub hard_cap_bytes: usize,
    /// Bytes queued (each message at its cost) at which its publishers are paused too; they
    /// are resumed at the low-water mark once the queue also holds at most half of this.
    pub high_water_bytes: usize,
    /// Bytes queued past which a QoS 0 delivery to a connected subscriber is dropped and
    /// counted instead of queued (an empty queue always takes one message).
    pub qos0_queue_bytes_max: usize,
    /// Time a subscriber may stay above its high-water mark before it is a slow consumer.
    pub slow_consumer_timeout: Duration,
    /// What happens to a slow consumer.
    pub slow_consumer_policy: SlowConsumerPolicy,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            high_water_messages: 1000,
            low_water_messages: 500,
            hard_cap_messages: 100_000,
            hard_cap_bytes: 32 << 20,
            high_water_bytes: 256 << 10,
            qos0_queue_bytes_max: 768 << 10,
            slow_consumer_timeout: Duration::from_secs(30),
            slow_consumer_policy: SlowConsumerPolicy::Disconnect,
        }
    }
}

/// Flow state of one session slot, as subscriber and as publisher.
#[derive(Debug, Default)]
pub(crate) struct SlotFlow {
    /// As a subscriber: the publishers it paused in this congestion episode.
    /// Boxed (issue 11): only a congested subscriber has one, and an empty `HashSet` is
    /// 48 bytes in every session slot.
    #[allow(clippy::box_collection)] // the point: 8 bytes in every slot instead of 48
    blocking: Option<Box<HashSet<Origin>>>,
    /// As a subscriber: since when it is above its high-water mark.
    congested_since: Option<Instant>,
    /// As a subscriber (policy `drop`): new messages are dropped until it drains.
    dropping: bool,
    /// As a publisher: subscribers and peer outboxes it waits for. Read while 0.
    paused_by: u32,
}

impl SlotFlow {
    /// Whether the publisher's connection must not be read.
    pub(crate) fn paused(&self) -> bool {
        self.paused_by > 0
    }

    /// Whether new messages for this subscriber are dropped (slow consumer, policy `drop`).
    pub(crate) fn dropping(&self) -> bool {
        self.dropping
    }
}

impl Shard {
    /// After a delivery to the connected subscriber `slot`: at or above its high-water mark,
    /// pause the message's publisher; at the hard cap, apply the slow-consumer policy.
    pub(super) fn flow_after_delivery(
        &mut self,
        slot: SlotId,
        origin: Option<Origin>,
        now: Instant,
    ) {
        let limits = self.cfg.flow;
        let me = self.id;
        let Some(s) = self.slot_mut(slot) else { return };
        let queued = s.session.queue.len();
        if s.session.held_bytes() >= limits.hard_cap_bytes && !s.flow.dropping {
            // The byte bound of a connected session, whoever feeds it (issue 9: a client
            // publishing to its own subscription is never paused and reached the message cap,
            // ~100 MiB of 1 KiB messages).
            s.flow.congested_since.get_or_insert(now);
            self.congested.insert(slot);
            return self.slow_consumer(slot, now);
        }
        let over = queued >= limits.high_water_messages
            || s.session.queue_bytes >= limits.high_water_bytes;
        if !over || s.flow.dropping {
            return;
        }
        if s.flow.congested_since.is_none() {
            s.flow.congested_since = Some(now);
            self.congested.insert(slot);
        }
        if queued >= limits.hard_cap_messages {
            return self.slow_consumer(slot, now);
        }
        let Some(s) = self.slot_mut(slot) else { return };
        // Never pause a connection on its own behalf: it could not read the acknowledgements
        // that would resume it.
        let Some(o) = origin.filter(|o| !(o.shard == me && o.session == slot)) else { return };
        if !s.flow.blocking.get_or_insert_with(Box::default).insert(o) {
            return;
        }
        self.metrics.flow_pauses += 1;
        if o.shard == me {
            self.publisher_pause(o.session, o.generation);
        } else {
            let msg = ShardMsg::Pause { session: o.session, generation: o.generation };
            self.control[usize::from(o.shard)].push_back(msg);
        }
    }

    /// After the queue of `slot` shrank: at or below the low-water mark, resume every
    /// publisher it paused and end its congestion episode.
    pub(super) fn flow_check_drained(&mut self, slot: SlotId) {
        let low = self.cfg.flow.low_water_messages;
        let low_bytes = self.cfg.flow.high_water_bytes / 2;
        let Some(s) = self.slot(slot) else { return };
        let episode = s.flow.congested_since.is_some() || s.flow.dropping;
        if !episode || s.session.queue.len() > low || s.session.queue_bytes > low_bytes {
            return;
        }
        self.flow_release(slot);
    }

    /// Ends the congestion episode of `slot`: resumes the publishers it paused. Called when it
    /// drains, goes offline, is taken over or ends.
    pub(super) fn flow_release(&mut self, slot: SlotId) {
        let Some(s) = self.slot_mut(slot) else { return };
        s.flow.congested_since = None;
        s.flow.dropping = false;
        let blocking = s.flow.blocking.take().map(|b| *b).unwrap_or_default();
        self.congested.remove(&slot);
        for o in blocking {
            self.metrics.flow_resumes += 1;
            if o.shard == self.id {
                self.publisher_resume(o.session, o.generation);
            } else {
                let msg = ShardMsg::Resume { session: o.session, generation: o.generation };
                self.control[usize::from(o.shard)].push_back(msg);
            }
        }
    }

    /// The session `slot` is about to leave this shard (ended or taken over): resume what it
    /// paused as a subscriber, and take it out of the paused-publisher gauge.
    pub(super) fn flow_forget(&mut self, slot: SlotId) {
        self.flow_release(slot);
        if self.slot(slot).is_some_and(|s| s.flow.paused()) {
            self.metrics.flow_paused_publishers -= 1;
        }
    }

    /// A subscriber paused the publishing session `slot` (if it is still that generation).
    pub(super) fn publisher_pause(&mut self, slot: SlotId, generation: SlotGen) {
        let Some(s) = self.slot_mut(slot).filter(|s| s.generation == generation) else { return };
        s.flow.paused_by += 1;
        if s.flow.paused_by == 1 {
            self.metrics.flow_paused_publishers += 1;
        }
    }

    /// A subscriber resumed the publishing session `slot`; its connection is woken when no
    /// one holds it any more.
    pub(super) fn publisher_resume(&mut self, slot: SlotId, generation: SlotGen) {
        let Some(s) = self.slot_mut(slot).filter(|s| s.generation == generation) else { return };
        if s.flow.paused_by == 0 {
            return;
        }
        s.flow.paused_by -= 1;
        if s.flow.paused_by > 0 {
            return;
        }
        let conn = s.conn;
        self.metrics.flow_paused_publishers -= 1;
        if let Some(id) = conn {
            if let Some(c) = self.conn_mut(id) {
                c.note_flow_resumed();
                self.mark_ready(id);
            }
        }
    }

    /// Whether the connection `c` of session `slot` is held by flow control.
    pub(super) fn publisher_paused(&self, phase: &Phase) -> bool {
        match phase {
            Phase::Active { slot } => self.slot(*slot).is_some_and(|s| s.flow.paused()),
            _ => false,
        }
    }

    /// A publish from local session `origin` went into the outbox of `peer`, which is full:
    /// that publisher waits until the outbox is half empty.
    pub(super) fn flow_outbox_full(&mut self, peer: usize, origin: Origin) {
        if origin.shard != self.id || !self.outbox_blocked[peer].insert(origin) {
            return;
        }
        self.metrics.flow_pauses += 1;
        self.publisher_pause(origin.session, origin.generation);
        // Woken by the receiver that drains the mesh bytes, not by the periodic retry.
        self.cfg.mesh_bytes.wait(self.id, self.cfg.mesh_bytes_max / 2);
    }

    /// Takes up to `n` data messages for `peer` (the runtime's flusher); resumes the publishers
    /// the outbox paused once it is half empty.
    pub fn take_batch(&mut self, peer: usize, n: usize) -> Vec<ShardMsg> {
        let q = &mut self.outbox[peer];
        let n = q.len().min(n);
        let batch: Vec<ShardMsg> = q.drain(..n).collect();
        self.flow_retry_outboxes();
        batch
    }

    /// Resumes the publishers paused by a peer outbox once it is half empty and this shard's
    /// bytes crossing the mesh are under half their bound. Called when a batch is taken, when
    /// a receiver says the mesh bytes drained ([`ShardMsg::MeshDrained`]; the wait is re-armed
    /// if they are above half again) and, as a fallback, by the runtime's 100 ms loop; a no-op
    /// while nobody waits.
    pub fn flow_retry_outboxes(&mut self) {
        if self.outbox_blocked.iter().all(HashSet::is_empty)
            || !self.cfg.mesh_bytes.wait(self.id, self.cfg.mesh_bytes_max / 2)
        {
            return;
        }
        for peer in 0..self.outbox.len() {
            if self.outbox[peer].len() > self.cfg.outbox_messages_max / 2 {
                continue;
            }
            for o in std::mem::take(&mut self.outbox_blocked[peer]) {
                self.metrics.flow_resumes += 1;
                self.publisher_resume(o.session, o.generation);
            }
        }
    }

    /// Whether anything waits for `peer` on the control lane (`control`) or the data lane.
    pub fn has_outgoing_on(&self, peer: usize, control: bool) -> bool {
        if control {
            !self.control[peer].is_empty()
        } else {
            !self.outbox[peer].is_empty()
        }
    }

    /// Takes up to `n` control messages for `peer`.
    pub fn take_control(&mut self, peer: usize, n: usize) -> Vec<ShardMsg> {
        let q = &mut self.control[peer];
        let n = q.len().min(n);
        q.drain(..n).collect()
    }

    /// Applies the slow-consumer policy to the connected subscriber `slot`.
    fn slow_consumer(&mut self, slot: SlotId, now: Instant) {
        let Some(s) = self.slot(slot) else { return };
        let conn = s.conn;
        match self.cfg.flow.slow_consumer_policy {
            SlowConsumerPolicy::Disconnect => {
                self.metrics.slow_consumers_disconnected += 1;
                match conn {
                    Some(conn) => self.close(conn, CloseReason::SlowConsumer, now),
                    None => self.flow_release(slot),
                }
            }
            SlowConsumerPolicy::Drop => {
                self.metrics.slow_consumers_dropping += 1;
                self.flow_release(slot);
                if let Some(s) = self.slot_mut(slot) {
                    s.flow.dropping = true;
                }
            }
        }
    }

    /// Once a second: subscribers congested longer than the slow-consumer timeout. Visits only
    /// the congested ones.
    pub(super) fn flow_tick(&mut self, now: Instant) {
        let timeout = self.cfg.flow.slow_consumer_timeout;
        let slow: Vec<SlotId> = self
            .congested
            .iter()
            .copied()
            .filter(|slot| {
                self.slot(*slot)
                    .and_then(|s| s.flow.congested_since)
                    .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
            })
            .collect();
        for slot in slow {
            self.slow_consumer(slot, now);
        }
    }

    /// A session went offline: its publishers are resumed, the QoS 0 messages queued while it
    /// was connected are dropped (an offline session keeps none), and its queue is cut to the
    /// offline bounds (what the overflow policy drops is counted).
    pub(super) fn flow_offline(&mut self, slot: SlotId) {
        self.flow_release(slot);
        let Some(s) = self.slot_mut(slot) else { return };
        let qos0 = s.session.drop_qos0();
        let dropped = s.session.trim_to_bounds();
        self.metrics.messages_dropped_qos0_offline += qos0;
        self.metrics.messages_dropped_queue_full += dropped;
    }
}

/// The v5 DISCONNECT reason for a slow consumer.
pub(super) const SLOW_CONSUMER_REASON: ReasonCode = ReasonCode::QuotaExceeded;

/// What flow control holds on one shard, for the simulation's quiet-state check (issue 9: a
/// publisher left paused once everything drained stops for good, and nothing wakes it).
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct FlowLedger {
    /// Every live session of the shard that is paused, with its pause count.
    pub paused: Vec<(Origin, u32)>,
    /// Every pause this shard holds on a publisher (here or on another shard): one per
    /// subscriber episode that paused it, one per full peer outbox it waits for.
    pub holds: Vec<Origin>,
    /// Subscribers whose congestion episode is still open although they drained to their
    /// low-water mark or are not connected: nothing will ever release what they paused.
    pub stale_episodes: Vec<SlotId>,
}

#[cfg(test)]
impl Shard {
    /// See [`FlowLedger`].
    pub(super) fn flow_ledger(&self) -> FlowLedger {
        let mut l = FlowLedger::default();
        let low = self.cfg.flow.low_water_messages;
        let low_bytes = self.cfg.flow.high_water_bytes / 2;
        for (slot, s) in self.sessions.entries() {
            if s.flow.paused_by > 0 {
                let o = Origin { shard: self.id, session: slot, generation: s.generation };
                l.paused.push((o, s.flow.paused_by));
            }
            if let Some(b) = &s.flow.blocking {
                l.holds.extend(b.iter().copied());
            }
            let open = s.flow.congested_since.is_some() || s.flow.blocking.is_some();
            let drained = s.session.queue.len() <= low && s.session.queue_bytes <= low_bytes;
            if open && !s.flow.dropping && (drained || s.conn.is_none()) {
                l.stale_episodes.push(slot);
            }
        }
        for blocked in &self.outbox_blocked {
            l.holds.extend(blocked.iter().copied());
        }
        l
    }
}
