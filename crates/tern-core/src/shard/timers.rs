//! Deadlines without scans: one min-heap of (due time, what) for connect timeouts, keep alive,
//! session expiry and delayed wills. [`Shard::tick`] pops only what is due, so its cost is the
//! number of deadlines reached, not the number of connections and sessions.
//!
//! Entries are checked, not trusted: a popped entry is compared with the state it refers to (a
//! connection's serial, a session's generation and armed time), and either acts, re-arms itself
//! at the real deadline (a keep alive that was refreshed by traffic since), or is dropped as
//! stale. So traffic never touches the heap, and each connection has exactly one entry.
//!
//! - Connection: armed at accept for the next tick; while it waits for CONNECT, authenticates
//!   or waits for its session, it re-arms a second ahead (these phases are short and bounded
//!   by the connect timeout); once active, at `last_rx + 1.5 * keep alive`; with keep alive 0
//!   it is dropped.
//! - Session expiry and delayed will: armed when set, unless an earlier entry is already armed
//!   for the slot (it re-arms at the real time when it pops); a flapping client therefore adds
//!   no entries.

use crate::ids::{SlotGen, SlotId};
use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::conn::Deadline;
use super::{ConnId, Shard};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// Connect timeout or keep alive of connection `id` with this serial.
    Conn { id: u32, serial: u64 },
    /// Expiry of the offline session in `slot` of this generation.
    Expiry { slot: SlotId, generation: SlotGen },
    /// The delayed will of the session in `slot` of this generation.
    Will { slot: SlotId, generation: SlotGen },
}

/// The heap: earliest deadline first.
pub(crate) type Deadlines = std::collections::BinaryHeap<Reverse<(Instant, Due)>>;

/// The armed deadlines of a session slot (one entry each at most in the heap).
#[derive(Debug, Default)]
pub(crate) struct SlotTimers {
    expiry: Option<Instant>,
    will: Option<Instant>,
}

/// How often a connection that has no deadline of its own yet is looked at.
const PHASE_RECHECK: Duration = Duration::from_secs(1);

impl Shard {
    /// Arms the first deadline of a new connection.
    pub(super) fn arm_conn(&mut self, id: ConnId, serial: u64, now: Instant) {
        let first = (now + PHASE_RECHECK).min(now + self.cfg.connect_timeout);
        self.deadlines.push(Reverse((first, Due::Conn { id: id.0, serial })));
    }

    /// Arms the expiry of the offline session in `slot` at `at`.
    pub(super) fn arm_expiry(&mut self, slot: SlotId, at: Instant) {
        let Some(s) = self.slot_mut(slot) else { return };
        if s.timers.expiry.is_some_and(|armed| armed <= at) {
            return; // an earlier entry re-arms at the real time
        }
        s.timers.expiry = Some(at);
        let generation = s.generation;
        self.deadlines.push(Reverse((at, Due::Expiry { slot, generation })));
    }

    /// Arms the delayed will of `slot` at `at`.
    pub(super) fn arm_will(&mut self, slot: SlotId, at: Instant) {
        let Some(s) = self.slot_mut(slot) else { return };
        if s.timers.will.is_some_and(|armed| armed <= at) {
            return;
        }
        s.timers.will = Some(at);
        let generation = s.generation;
        self.deadlines.push(Reverse((at, Due::Will { slot, generation })));
    }

    /// Handles the deadlines due at `now`, at most `budget` of them; returns whether due ones
    /// remain (the caller runs the rest in later turns, so one turn stays short however many
    /// connections fall due in the same second: `tests/timers.rs`). Bounded: each popped
    /// entry is acted on, dropped, or re-armed strictly later than `now`.
    pub(super) fn run_deadlines(&mut self, now: Instant, budget: usize) -> bool {
        for _ in 0..budget {
            let Some(Reverse((at, due))) = self.deadlines.peek().copied() else { return false };
            if at > now {
                return false;
            }
            self.deadlines.pop();
            match due {
                Due::Conn { id, serial } => self.conn_deadline(ConnId(id), serial, now),
                Due::Expiry { slot, generation } => self.expiry_deadline(slot, generation, at, now),
                Due::Will { slot, generation } => self.will_deadline(slot, generation, at, now),
            }
        }
        self.deadlines.peek().is_some_and(|Reverse((at, _))| *at <= now)
    }

    fn conn_deadline(&mut self, id: ConnId, serial: u64, now: Instant) {
        // The fields, not `conn_mut`: the session is read beside the connection.
        let Some(c) = self.conns.get_mut(id.0).filter(|c| c.serial() == serial) else {
            return; // released; the slot may hold another connection now
        };
        // Flow control holds its reading (`Shard::publisher_paused`).
        let session = c.active_slot().and_then(|slot| self.sessions.get(slot));
        let paused = session.is_some_and(|s| s.flow.paused());
        match c.poll_timeout(now, paused, PHASE_RECHECK) {
            Deadline::None => {}
            Deadline::Expired(reason) => self.close(id, reason, now),
            Deadline::At(next) => {
                self.deadlines.push(Reverse((next, Due::Conn { id: id.0, serial })));
            }
        }
    }

    fn expiry_deadline(&mut self, slot: SlotId, generation: SlotGen, at: Instant, now: Instant) {
        let Some(s) = self.slot_mut(slot).filter(|s| s.generation == generation) else { return };
        if s.timers.expiry != Some(at) {
            return; // superseded by an earlier entry
        }
        s.timers.expiry = None;
        if s.conn.is_some() {
            return;
        }
        match s.expires_at {
            Some(t) if now >= t => {
                self.metrics.sessions_expired += 1;
                self.destroy_session(slot, now);
            }
            Some(t) => self.arm_expiry(slot, t),
            None => {}
        }
    }

    fn will_deadline(&mut self, slot: SlotId, generation: SlotGen, at: Instant, now: Instant) {
        let Some(s) = self.slot_mut(slot).filter(|s| s.generation == generation) else { return };
        if s.timers.will != Some(at) {
            return;
        }
        s.timers.will = None;
        match s.pending_will.as_ref().map(|p| p.due) {
            Some(due) if now >= due => {
                if let Some(pending) = self.take_pending_will(slot) {
                    self.publish_will(slot, pending.will, now);
                }
            }
            Some(due) => self.arm_will(slot, due),
            None => {}
        }
    }
}
