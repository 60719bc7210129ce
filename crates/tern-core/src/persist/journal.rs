//! Between the shard's in-memory state and the log's records, with no IO and no clock reads:
//! conversions (an `Instant` becomes Unix milliseconds through a [`Clock`] the driver reads
//! once), and [`replay`], which folds a shard's records, in log order, into the sessions and
//! retained messages they describe.
//!
//! The shard writes a [`Record::Snapshot`] of a persistent session after every turn that
//! changed it, and a [`Record::Enqueue`] for a message queued to an offline session (so a
//! backlog does not rewrite the whole queue per message); [`Record::SessionEnd`] when it ends
//! or moves away; `RetainSet` / `RetainClear` for every retained update its replica applies.
//! Replay understands every record kind, so logs with the fine-grained records also replay.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::record::{
    Record, SessionSnapshot, StoredDelivery, StoredInflight, StoredMessage, StoredSource,
};
use crate::session::{Message, Outgoing, SessionState, TransferredInflight};

/// One reading of both clocks, taken by the driver, to convert instants to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// A monotonic instant...
    pub instant: Instant,
    /// ...and the Unix time in milliseconds at that instant.
    pub unix_ms: u64,
}

impl Clock {
    /// `t` as Unix milliseconds.
    pub fn to_unix(&self, t: Instant) -> u64 {
        if t >= self.instant {
            self.unix_ms.saturating_add((t - self.instant).as_millis() as u64)
        } else {
            self.unix_ms.saturating_sub((self.instant - t).as_millis() as u64)
        }
    }

    /// `t` as Unix microseconds (the stamps of [`Record::Owned`]: one clock reading shared
    /// by every shard, so stamps taken on different shards compare).
    pub fn to_unix_us(&self, t: Instant) -> u64 {
        let base = self.unix_ms.saturating_mul(1000);
        if t >= self.instant {
            base.saturating_add((t - self.instant).as_micros() as u64)
        } else {
            base.saturating_sub((self.instant - t).as_micros() as u64)
        }
    }

    /// Unix milliseconds as an instant (clamped to this clock's reading for times before it
    /// that an `Instant` cannot hold).
    pub fn to_instant(&self, unix_ms: u64) -> Instant {
        if unix_ms >= self.unix_ms {
            self.instant + Duration::from_millis(unix_ms - self.unix_ms)
        } else {
            self.instant
                .checked_sub(Duration::from_millis(self.unix_ms - unix_ms))
                .unwrap_or(self.instant)
        }
    }
}

/// A message as the log keeps it.
pub fn store_message(m: &Message, clock: &Clock) -> StoredMessage {
    StoredMessage {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
        properties: m.properties.clone(),
        expires_at_unix_ms: m.expires_at.map(|t| clock.to_unix(t)),
    }
}

/// A stored message back in memory (no origin: a restored message has no publishing session).
pub fn load_message(m: StoredMessage, clock: &Clock) -> Message {
    let mut msg = Message::new(m.topic, m.payload, m.qos, m.retain);
    msg.properties = m.properties;
    msg.expires_at = m.expires_at_unix_ms.map(|t| clock.to_instant(t));
    msg
}

/// A queued delivery as the log keeps it.
pub fn store_outgoing(o: &Outgoing, clock: &Clock) -> StoredDelivery {
    StoredDelivery {
        msg: store_message(&o.msg, clock),
        qos: o.qos,
        retain: o.retain,
        subscription_ids: o.subscription_ids.clone(),
    }
}

/// A session's sendable state as a snapshot.
pub fn store_state(
    st: &SessionState,
    username: Option<String>,
    offline_since_unix_ms: Option<u64>,
    clock: &Clock,
) -> SessionSnapshot {
    let delivery = |msg: &Message, qos, retain, ids: &Vec<u32>| StoredDelivery {
        msg: store_message(msg, clock),
        qos,
        retain,
        subscription_ids: ids.clone(),
    };
    SessionSnapshot {
        username,
        expiry_secs: st.expiry_secs,
        offline_since_unix_ms,
        subscriptions: st
            .subscriptions
            .iter()
            .map(|(f, s)| (f.clone(), s.options, s.identifier))
            .collect(),
        inflight: st
            .inflight
            .iter()
            .map(|t| StoredInflight {
                packet_id: t.packet_id,
                delivery: delivery(&t.msg, t.qos, t.retain, &t.subscription_ids),
                released: t.released,
            })
            .collect(),
        queue: st.queue.iter().map(|(m, q, r, ids)| delivery(m, *q, *r, ids)).collect(),
        inbound_qos2: {
            let mut v = st.inbound_qos2.clone();
            v.sort_unstable();
            v
        },
    }
}

/// A snapshot back as sendable session state.
pub fn load_state(s: SessionSnapshot, clock: &Clock) -> SessionState {
    SessionState {
        subscriptions: s
            .subscriptions
            .into_iter()
            .map(|(f, options, identifier)| {
                (f, crate::session::Subscription { options, identifier })
            })
            .collect(),
        inflight: s
            .inflight
            .into_iter()
            .map(|i| TransferredInflight {
                packet_id: i.packet_id,
                msg: load_message(i.delivery.msg, clock),
                qos: i.delivery.qos,
                retain: i.delivery.retain,
                subscription_ids: i.delivery.subscription_ids,
                released: i.released,
            })
            .collect(),
        queue: s
            .queue
            .into_iter()
            .map(|d| (load_message(d.msg, clock), d.qos, d.retain, d.subscription_ids))
            .collect(),
        inbound_qos2: s.inbound_qos2,
        expiry_secs: s.expiry_secs,
    }
}

/// What a shard's log describes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Persistent sessions by client id.
    pub sessions: BTreeMap<String, SessionSnapshot>,
    /// Retained messages by topic.
    pub retained: BTreeMap<String, StoredMessage>,
    /// Publishers of retained messages by topic (a topic absent here has none).
    pub retained_sources: BTreeMap<String, StoredSource>,
    /// Records that named a session or packet id the replay did not know (counted, skipped).
    pub orphans: usize,
    /// When this shard took each session ([`Record::Owned`]), where the log says.
    pub stamps: BTreeMap<String, u64>,
    /// v5 wills waiting for their delay, by client id, with when each is due (Unix ms).
    pub wills: BTreeMap<String, (crate::codec::Will, u64)>,
}

/// Folds records, in log order, into sessions and retained messages.
pub fn replay(records: impl IntoIterator<Item = Record>) -> Replayed {
    let mut out = Replayed::default();
    let mut orphan = 0usize;
    // Per session, how many entries at the front of its queue are gone (taken by `Sent` or
    // `Dequeued`): removed in bulk, so a long backlog drained one by one replays in linear
    // time rather than quadratic.
    let mut heads: HashMap<String, usize> = HashMap::new();
    for r in records {
        let s = &mut out.sessions;
        match r {
            Record::SessionOpen { client_id, clean, username, expiry_secs } => {
                if clean {
                    heads.remove(&client_id);
                }
                let e = if clean {
                    s.insert(client_id.clone(), SessionSnapshot::default());
                    s.get_mut(&client_id)
                } else {
                    Some(s.entry(client_id).or_default())
                };
                if let Some(e) = e {
                    e.username = username;
                    e.expiry_secs = expiry_secs;
                    e.offline_since_unix_ms = None;
                }
            }
            Record::SessionExpiry { client_id, expiry_secs, offline_since_unix_ms } => {
                match s.get_mut(&client_id) {
                    Some(e) => {
                        e.expiry_secs = expiry_secs;
                        e.offline_since_unix_ms = offline_since_unix_ms;
                    }
                    None => orphan += 1,
                }
            }
            Record::SessionEnd { client_id } => {
                heads.remove(&client_id);
                out.stamps.remove(&client_id);
                s.remove(&client_id);
            }
            Record::Owned { client_id, stamp_us } => {
                if s.contains_key(&client_id) {
                    out.stamps.insert(client_id, stamp_us);
                } else {
                    orphan += 1;
                }
            }
            Record::Subscribe { client_id, filter, options, identifier } => {
                match s.get_mut(&client_id) {
                    Some(e) => {
                        e.subscriptions.retain(|(f, _, _)| *f != filter);
                        e.subscriptions.push((filter, options, identifier));
                    }
                    None => orphan += 1,
                }
            }
            Record::Unsubscribe { client_id, filter } => match s.get_mut(&client_id) {
                Some(e) => e.subscriptions.retain(|(f, _, _)| *f != filter),
                None => orphan += 1,
            },
            Record::Enqueue { client_id, delivery } => match s.get_mut(&client_id) {
                Some(e) => e.queue.push(delivery),
                None => orphan += 1,
            },
            Record::Sent { client_id, packet_id } => {
                let head = heads.entry(client_id.clone()).or_default();
                match s.get_mut(&client_id) {
                    Some(e) if *head < e.queue.len() => {
                        let delivery = e.queue[*head].clone();
                        skip_front(e, head, 1);
                        e.inflight.retain(|i| i.packet_id != packet_id);
                        e.inflight.push(StoredInflight { packet_id, delivery, released: false });
                    }
                    _ => orphan += 1,
                }
            }
            Record::Dequeued { client_id, count } => {
                let head = heads.entry(client_id.clone()).or_default();
                match s.get_mut(&client_id) {
                    Some(e) if e.queue.len() - *head >= count as usize => {
                        skip_front(e, head, count as usize);
                    }
                    _ => orphan += 1,
                }
            }
            Record::Released { client_id, packet_id } => {
                match s
                    .get_mut(&client_id)
                    .and_then(|e| e.inflight.iter_mut().find(|i| i.packet_id == packet_id))
                {
                    Some(i) => i.released = true,
                    None => orphan += 1,
                }
            }
            Record::Acked { client_id, packet_id } => match s.get_mut(&client_id) {
                Some(e) => e.inflight.retain(|i| i.packet_id != packet_id),
                None => orphan += 1,
            },
            Record::Qos2Received { client_id, packet_id } => match s.get_mut(&client_id) {
                Some(e) => {
                    if !e.inbound_qos2.contains(&packet_id) {
                        e.inbound_qos2.push(packet_id);
                    }
                }
                None => orphan += 1,
            },
            Record::Qos2Released { client_id, packet_id } => match s.get_mut(&client_id) {
                Some(e) => e.inbound_qos2.retain(|p| *p != packet_id),
                None => orphan += 1,
            },
            Record::RetainSet(m) => {
                // A new message: its source, if any, follows it.
                out.retained_sources.remove(m.topic.as_str());
                out.retained.insert(m.topic.to_string(), m);
            }
            Record::RetainSource { topic, source } => {
                if out.retained.contains_key(&topic) {
                    out.retained_sources.insert(topic, source);
                } else {
                    orphan += 1;
                }
            }
            Record::RetainClear { topic } => {
                out.retained.remove(&topic);
                out.retained_sources.remove(&topic);
            }
            Record::Snapshot { client_id, session } => {
                heads.remove(&client_id);
                s.insert(client_id, session);
            }
            // Kept apart from the session: a snapshot does not hold the will, and the shard
            // writes `WillDone` whenever a pending will leaves its session.
            Record::WillPending { client_id, will, due_unix_ms } => {
                out.wills.insert(client_id, (will, due_unix_ms));
            }
            Record::WillDone { client_id } => {
                if out.wills.remove(&client_id).is_none() {
                    orphan += 1;
                }
            } // Record is non_exhaustive within the crate only for outside users.
        }
    }
    for (client_id, head) in heads {
        if let Some(e) = out.sessions.get_mut(&client_id) {
            e.queue.drain(..head.min(e.queue.len()));
        }
    }
    out.orphans = orphan;
    out
}

/// Marks `n` more entries at the front of `e.queue` as gone; removes the gone ones once they
/// are most of the queue (amortised constant time per entry).
fn skip_front(e: &mut SessionSnapshot, head: &mut usize, n: usize) {
    *head += n;
    if *head >= 64 && *head * 2 >= e.queue.len() {
        e.queue.drain(..*head);
        *head = 0;
    }
}

/// Merges the replays of every shard's log. A client id found in more than one log (a crash
/// during a move between shards) is kept in the log that took it last (the highest
/// [`Record::Owned`] stamp; on a tie, or without stamps, the lowest shard), and the others are
/// dropped and counted.
pub fn owners(replays: &[Replayed]) -> (HashMap<String, u16>, usize) {
    let mut owner: HashMap<String, (u16, u64)> = HashMap::new();
    let mut duplicates = 0;
    for (shard, r) in replays.iter().enumerate() {
        for cid in r.sessions.keys() {
            let stamp = r.stamps.get(cid).copied().unwrap_or(0);
            match owner.get_mut(cid) {
                Some(o) => {
                    duplicates += 1;
                    if stamp > o.1 {
                        *o = (shard as u16, stamp);
                    }
                }
                None => {
                    owner.insert(cid.clone(), (shard as u16, stamp));
                }
            }
        }
    }
    (owner.into_iter().map(|(c, (s, _))| (c, s)).collect(), duplicates)
}

/// Restored queued messages as `Outgoing`s (used by tests).
#[cfg(test)]
pub(crate) fn outgoing(d: StoredDelivery, clock: &Clock) -> Outgoing {
    Outgoing {
        msg: std::rc::Rc::new(load_message(d.msg, clock)),
        qos: d.qos,
        retain: d.retain,
        subscription_ids: d.subscription_ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{QoS, SubscriptionOptions};
    use bytes::Bytes;

    fn delivery(payload: &'static [u8]) -> StoredDelivery {
        StoredDelivery {
            msg: StoredMessage {
                topic: crate::codec::TopicName::new("t").expect("valid"),
                payload: Bytes::from_static(payload),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                expires_at_unix_ms: None,
            },
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
        }
    }

    #[test]
    fn replay_folds_records_in_order() {
        let c = || "c".to_string();
        let records = vec![
            Record::SessionOpen { client_id: c(), clean: true, username: None, expiry_secs: 60 },
            Record::Subscribe {
                client_id: c(),
                filter: crate::codec::TopicFilter::new("t", true).expect("valid filter"),
                options: SubscriptionOptions::default(),
                identifier: None,
            },
            Record::Enqueue { client_id: c(), delivery: delivery(b"1") },
            Record::Enqueue { client_id: c(), delivery: delivery(b"2") },
            Record::Sent { client_id: c(), packet_id: 7 },
            Record::Acked { client_id: c(), packet_id: 7 },
            Record::Qos2Received { client_id: c(), packet_id: 3 },
            Record::RetainSet(delivery(b"r").msg),
            Record::Enqueue { client_id: "gone".into(), delivery: delivery(b"x") },
        ];
        let r = replay(records);
        let s = &r.sessions["c"];
        assert_eq!(s.expiry_secs, 60);
        assert_eq!(s.subscriptions.len(), 1);
        assert_eq!(s.queue, vec![delivery(b"2")]);
        assert!(s.inflight.is_empty());
        assert_eq!(s.inbound_qos2, vec![3]);
        assert_eq!(r.retained["t"].payload, Bytes::from_static(b"r"));
        assert_eq!(r.orphans, 1);
        // A snapshot replaces, an end removes, a clean open discards.
        let r = replay(vec![
            Record::Snapshot { client_id: c(), session: SessionSnapshot::default() },
            Record::Enqueue { client_id: c(), delivery: delivery(b"1") },
            Record::SessionOpen { client_id: c(), clean: true, username: None, expiry_secs: 1 },
            Record::RetainSet(delivery(b"r").msg),
            Record::RetainClear { topic: "t".into() },
        ]);
        assert!(r.sessions["c"].queue.is_empty());
        assert!(r.retained.is_empty());
        let r = replay(vec![
            Record::Snapshot { client_id: c(), session: SessionSnapshot::default() },
            Record::SessionEnd { client_id: c() },
        ]);
        assert!(r.sessions.is_empty());
    }

    #[test]
    fn clock_round_trips_instants() {
        let clock = Clock { instant: crate::test_clock::test_epoch(), unix_ms: 1_000_000 };
        let later = clock.instant + Duration::from_millis(1500);
        assert_eq!(clock.to_unix(later), 1_001_500);
        assert_eq!(clock.to_instant(1_001_500), later);
        let d = outgoing(delivery(b"p"), &clock);
        assert_eq!(d.msg.payload, Bytes::from_static(b"p"));
    }

    #[test]
    fn owners_keep_the_first_shard() {
        let mut a = Replayed::default();
        a.sessions.insert("x".into(), SessionSnapshot::default());
        let b = Replayed { sessions: a.sessions.clone(), ..Default::default() };
        let (o, dup) = owners(&[a, b]);
        assert_eq!(o["x"], 0);
        assert_eq!(dup, 1);
    }

    /// A long offline backlog drained message by message replays in linear time, and each
    /// `Sent` takes the queue's head in order (in-flight ids reused after `Acked`).
    #[test]
    fn a_drained_backlog_replays_in_order_and_in_linear_time() {
        let c = || "c".to_string();
        let n = 200_000u32;
        let mut log =
            vec![Record::Snapshot { client_id: c(), session: SessionSnapshot::default() }];
        for i in 0..n {
            let mut d = delivery(b"");
            d.msg.payload = Bytes::from(i.to_le_bytes().to_vec());
            log.push(Record::Enqueue { client_id: c(), delivery: d });
        }
        for i in 0..n - 3 {
            let packet_id = (i % 10 + 1) as u16;
            if i % 5 == 4 {
                log.push(Record::Dequeued { client_id: c(), count: 1 });
                continue;
            }
            log.push(Record::Sent { client_id: c(), packet_id });
            log.push(Record::Acked { client_id: c(), packet_id });
        }
        log.push(Record::Sent { client_id: c(), packet_id: 1 });
        // Linear: with the head removed entry by entry this replay took minutes.
        let r = replay(log);
        let e = &r.sessions["c"];
        assert_eq!(r.orphans, 0);
        assert_eq!(e.inflight.len(), 1);
        assert_eq!(&e.inflight[0].delivery.msg.payload[..], (n - 3).to_le_bytes());
        let left: Vec<u32> = e
            .queue
            .iter()
            .map(|d| u32::from_le_bytes(d.msg.payload[..].try_into().expect("4 bytes")))
            .collect();
        assert_eq!(left, vec![n - 2, n - 1]);
    }

    /// A session left in two logs by a crash during a move between shards is kept where it
    /// was taken last (the higher `Owned` stamp), whatever the shard order; a log without
    /// stamps keeps the first.
    #[test]
    fn a_session_in_two_logs_is_kept_where_it_was_taken_last() {
        let c = || "c".to_string();
        let log = |stamp: u64, payload: &'static [u8]| {
            let mut l = vec![
                Record::Snapshot { client_id: c(), session: SessionSnapshot::default() },
                Record::Owned { client_id: c(), stamp_us: stamp },
            ];
            l.push(Record::Enqueue { client_id: c(), delivery: delivery(payload) });
            replay(l)
        };
        let (owner, dup) = owners(&[log(200, b"new"), log(100, b"old")]);
        assert_eq!((owner["c"], dup), (0, 1));
        let (owner, dup) = owners(&[log(100, b"old"), log(200, b"new")]);
        assert_eq!((owner["c"], dup), (1, 1));
        let unstamped = || {
            replay(vec![Record::Snapshot { client_id: c(), session: SessionSnapshot::default() }])
        };
        assert_eq!(owners(&[unstamped(), unstamped()]).0["c"], 0);
        // An end forgets the stamp with the session.
        let mut l = vec![
            Record::Snapshot { client_id: c(), session: SessionSnapshot::default() },
            Record::Owned { client_id: c(), stamp_us: 5 },
            Record::SessionEnd { client_id: c() },
        ];
        l.push(Record::Owned { client_id: c(), stamp_us: 6 });
        let r = replay(l);
        assert!(r.stamps.is_empty() && r.sessions.is_empty());
        assert_eq!(r.orphans, 1);
    }
}
