//! The shard's side of durability (issue 12), still without IO: which records a turn produced.
//!
//! With persistence on ([`Shard::enable_persistence`]) the shard notes every session slot a
//! turn touched (a packet from its client, a delivery, a CONNECT, a detach) and every session
//! that ended. [`Shard::take_records`] then turns them into records: a `Snapshot` of each
//! touched persistent session (session expiry > 0), a `SessionEnd` for each one that ended or
//! stopped being persistent, and the records queued directly (an `Enqueue` for a message
//! queued to an offline session that is already in the log, `RetainSet` / `RetainClear` for
//! every retained update the replica applied). The driver appends them to the shard's log, and
//! with `fsync = "always"` holds the output produced in that turn until they are durable.

use crate::ids::SlotId;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{ClaimGen, Owner, PendingWill, Shard};
use crate::codec::Will;
use crate::persist::journal::{self, Clock};
use crate::persist::record::{Record, SessionSnapshot, StoredMessage, StoredSource};
use crate::session::{Outgoing, Session};

/// What the shard has to write to its log.
#[derive(Debug)]
pub(crate) struct Journal {
    clock: Clock,
    /// Records in the order they must be appended.
    records: Vec<Record>,
    /// Slots touched since the last `take_records`, in first-touch order.
    touched: Vec<SlotId>,
    touched_set: HashSet<SlotId>,
    /// Sessions that left this shard since the last `take_records`, and whether each lives
    /// on (handed to a new connection, maybe on another shard) rather than ended.
    ended: Vec<(String, bool)>,
    /// Sessions handed to another shard: their `SessionEnd` waits until that shard has
    /// logged them (see [`Shard::take_moved`]).
    moved: Vec<String>,
    /// Client ids whose session the log holds (a snapshot written and no end since), with
    /// when this shard took it (the stamp of its `Owned` record).
    persisted: HashMap<Rc<str>, u64>,
}

impl Shard {
    /// Turns record collection on. `clock` converts instants to wall-clock time for the log.
    pub fn enable_persistence(&mut self, clock: Clock) {
        self.journal = Some(Journal {
            clock,
            records: Vec::new(),
            touched: Vec::new(),
            touched_set: HashSet::new(),
            ended: Vec::new(),
            moved: Vec::new(),
            persisted: HashMap::new(),
        });
    }

    /// Whether records are collected.
    pub fn persistence_enabled(&self) -> bool {
        self.journal.is_some()
    }

    /// Records produced since the last call, in log order (empty when persistence is off).
    /// `now` stamps the sessions this shard took since the last call ([`Record::Owned`]).
    pub fn take_records(&mut self, now: Instant) -> Vec<Record> {
        let Some(mut j) = self.journal.take() else { return Vec::new() };
        for (client_id, lives_on) in std::mem::take(&mut j.ended) {
            if j.persisted.remove(client_id.as_str()).is_none() {
                continue;
            }
            if lives_on && !self.by_client.contains_key(client_id.as_str()) {
                // Moved to another shard: ending it here now could leave it in no log.
                j.moved.push(client_id);
            } else {
                j.records.push(Record::SessionEnd { client_id });
            }
        }
        let touched = std::mem::take(&mut j.touched);
        j.touched_set.clear();
        for slot in touched {
            let Some(s) = self.slot(slot) else { continue };
            let cid = &s.session.client_id;
            if s.session.expiry_secs == 0 {
                if j.persisted.remove(cid).is_some() {
                    j.records.push(Record::SessionEnd { client_id: cid.to_string() });
                }
                continue;
            }
            let session = slot_snapshot(s, &j.clock);
            j.records.push(Record::Snapshot { client_id: cid.to_string(), session });
            if !j.persisted.contains_key(cid) {
                // New in this log (created, resumed after an end, or moved here).
                let stamp_us = j.clock.to_unix_us(now);
                j.persisted.insert(Rc::clone(cid), stamp_us);
                j.records.push(Record::Owned { client_id: cid.to_string(), stamp_us });
            }
        }
        let out = std::mem::take(&mut j.records);
        self.journal = Some(j);
        out
    }

    /// Compaction: records that rebuild everything this shard holds durably (a snapshot of
    /// every persistent session and every retained message), written to a fresh segment so
    /// that older segments can be deleted once they are durable.
    pub fn compaction_records(&self) -> Vec<Record> {
        let Some(j) = &self.journal else { return Vec::new() };
        let mut out = Vec::new();
        for s in self.sessions.iter() {
            if s.session.expiry_secs > 0 {
                let session = slot_snapshot(s, &j.clock);
                let client_id = s.session.client_id.to_string();
                let stamp = j.persisted.get(client_id.as_str()).copied();
                out.push(Record::Snapshot { client_id: client_id.clone(), session });
                if let Some(PendingWill { will, due }) = s.pending_will.as_deref() {
                    out.push(Record::WillPending {
                        client_id: client_id.clone(),
                        will: will.clone(),
                        due_unix_ms: j.clock.to_unix(*due),
                    });
                }
                if let Some(stamp_us) = stamp {
                    out.push(Record::Owned { client_id, stamp_us });
                }
            }
        }
        // Only the sequencer's log holds retained messages (see `retained_sequence`).
        let retained =
            if self.id == super::retained::RETAIN_SEQUENCER { self.retained.all() } else { vec![] };
        for (m, source) in retained {
            out.push(Record::RetainSet(journal::store_message(&m, &j.clock)));
            if let Some(source) = source {
                out.push(retain_source(&m.topic, &source));
            }
        }
        out
    }

    /// Records collected and not yet taken by the driver.
    pub fn records_pending(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.records.len() + j.touched.len() + j.ended.len())
    }

    /// A fine-grained change to the persistent session in `slot` (the hot path: a delivery, an
    /// acknowledgement, an inbound QoS 2 id). Written only for a session the log already
    /// holds and that no snapshot follows in this batch; a session not in the log yet gets
    /// a snapshot instead, and a clean session (expiry 0) writes nothing.
    pub(super) fn journal_op(&mut self, slot: SlotId, make: impl FnOnce(String) -> Record) {
        let Some(j) = &self.journal else { return };
        if j.touched_set.contains(&slot) {
            return; // the snapshot taken with this batch holds the change
        }
        let Some(s) = self.slot(slot) else { return };
        let cid = &s.session.client_id;
        let persisted = j.persisted.contains_key(cid);
        if s.session.expiry_secs == 0 && !persisted {
            return;
        }
        if s.session.expiry_secs == 0 || !persisted {
            return self.journal_touch(slot);
        }
        let record = make(cid.to_string());
        if let Some(j) = &mut self.journal {
            j.records.push(record);
        }
    }

    /// Messages waiting in this shard's outbox for `peer` on the `control` lane or the data
    /// lane (the log's cross-shard marks count them as sent).
    pub fn outbox_len(&self, peer: usize, control: bool) -> usize {
        let lane = if control { &self.control } else { &self.outbox };
        lane.get(peer).map_or(0, |q| q.len())
    }

    /// One group commit of the log took `took`: the commit latency histogram.
    pub fn note_wal_commit(&mut self, took: Duration) {
        let us = took.as_micros() as u64;
        let m = &mut self.metrics;
        m.wal_commit_us_sum += us;
        m.wal_commit_le_250us += u64::from(us <= 250);
        m.wal_commit_le_1ms += u64::from(us <= 1_000);
        m.wal_commit_le_4ms += u64::from(us <= 4_000);
        m.wal_commit_le_16ms += u64::from(us <= 16_000);
        m.wal_commit_le_64ms += u64::from(us <= 64_000);
    }

    /// A packet from the connected client of `slot`, before it is handled: the packets of the
    /// hot path (PUBLISH, the acknowledgements, PINGREQ) write fine-grained records where
    /// they change the session; any other (SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, AUTH) may
    /// change it in other ways and is followed by a snapshot of it.
    pub(super) fn journal_packet(&mut self, slot: SlotId, packet: &crate::codec::Packet) {
        use crate::codec::Packet;
        if self.journal.is_none() {
            return;
        }
        match packet {
            Packet::Publish(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::PingReq => {}
            _ => self.journal_touch(slot),
        }
    }

    /// A turn changed the session in `slot`.
    pub(super) fn journal_touch(&mut self, slot: SlotId) {
        if let Some(j) = &mut self.journal {
            if j.touched_set.insert(slot) {
                j.touched.push(slot);
            }
        }
    }

    /// The session of `client_id` ended on this shard.
    pub(super) fn journal_ended(&mut self, client_id: &str) {
        self.journal_left(client_id, false);
    }

    /// The session of `client_id` left this shard: ended, or (`lives_on`) handed to a new
    /// connection, here or on another shard.
    pub(super) fn journal_left(&mut self, client_id: &str, lives_on: bool) {
        if let Some(j) = &mut self.journal {
            if j.persisted.contains_key(client_id) {
                j.ended.push((client_id.to_owned(), lives_on));
            }
        }
    }

    /// Whether this shard's log holds the session of `client_id` now.
    pub fn journal_holds(&self, client_id: &str) -> bool {
        self.journal.as_ref().is_some_and(|j| j.persisted.contains_key(client_id))
    }

    /// Sessions moved to another shard since the last call (after [`Shard::take_records`]):
    /// the driver writes their `SessionEnd` once the other shards have synced what this one
    /// had sent them by then (the session among it), so a crash leaves each in at least one
    /// log; a copy left in two is resolved by the `Owned` stamps.
    pub fn take_moved(&mut self) -> Vec<String> {
        self.journal.as_mut().map(|j| std::mem::take(&mut j.moved)).unwrap_or_default()
    }

    /// `out` was queued to the session in `slot` (at the back of its queue).
    pub(super) fn journal_enqueued(&mut self, slot: SlotId, out: &Outgoing) {
        let Some(j) = &self.journal else { return };
        let clock = j.clock;
        self.journal_op(slot, |client_id| Record::Enqueue {
            client_id,
            delivery: journal::store_outgoing(out, &clock),
        });
    }

    /// The head of the queue of `slot` went in flight under `packet_id`.
    pub(super) fn journal_sent(&mut self, slot: SlotId, packet_id: u16) {
        self.journal_op(slot, |client_id| Record::Sent { client_id, packet_id });
    }

    /// `count` messages left the head of the queue of `slot` without going in flight.
    pub(super) fn journal_dequeued(&mut self, slot: SlotId, count: u64) {
        if count > 0 {
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            self.journal_op(slot, |client_id| Record::Dequeued { client_id, count });
        }
    }

    /// The outbound message `packet_id` of `slot` is done (PUBACK, PUBCOMP, error PUBREC).
    pub(super) fn journal_acked(&mut self, slot: SlotId, packet_id: u16) {
        self.journal_op(slot, |client_id| Record::Acked { client_id, packet_id });
    }

    /// PUBREC received for the outbound QoS 2 message `packet_id` of `slot`.
    pub(super) fn journal_released(&mut self, slot: SlotId, packet_id: u16) {
        self.journal_op(slot, |client_id| Record::Released { client_id, packet_id });
    }

    /// An inbound QoS 2 id was accepted (`received`) or released by PUBREL.
    pub(super) fn journal_inbound_qos2(&mut self, slot: SlotId, packet_id: u16, received: bool) {
        self.journal_op(slot, |client_id| match received {
            true => Record::Qos2Received { client_id, packet_id },
            false => Record::Qos2Released { client_id, packet_id },
        });
    }

    /// The session in `slot` holds `will` until `due` (its Will Delay Interval started). Written
    /// whatever the session's other records: replay keeps pending wills apart from sessions.
    pub(super) fn journal_will_pending(&mut self, slot: SlotId, will: &Will, due: Instant) {
        let Some(cid) = self.slot(slot).map(|s| s.session.client_id.to_string()) else { return };
        if let Some(j) = &mut self.journal {
            let due_unix_ms = j.clock.to_unix(due);
            j.records.push(Record::WillPending { client_id: cid, will: will.clone(), due_unix_ms });
        }
    }

    /// Takes the pending will of `slot` (to publish it, or because its client came back),
    /// writing `WillDone` so that a restart does not publish it again.
    pub(super) fn take_pending_will(&mut self, slot: SlotId) -> Option<Box<PendingWill>> {
        let s = self.slot_mut(slot)?;
        let pending = s.pending_will.take()?;
        let client_id = s.session.client_id.to_string();
        if let Some(j) = &mut self.journal {
            j.records.push(Record::WillDone { client_id });
        }
        Some(pending)
    }

    /// Start-up, after [`Shard::restore`]: the wills recovered as pending (client id, will,
    /// due in Unix ms) wait again in their restored sessions. The deadline is wall-clock time,
    /// so the broker's downtime counts towards it; one that passed while the broker was down
    /// is published on the first tick. A will whose session was not restored is dropped and
    /// counted. Nothing is written again.
    pub fn restore_wills(&mut self, wills: Vec<(String, Will, u64)>, now: Instant) {
        let Some(clock) = self.journal.as_ref().map(|j| j.clock) else { return };
        for (client_id, will, due_unix_ms) in wills {
            let slot = self.by_client.get(client_id.as_str()).copied();
            let Some(s) = slot.and_then(|slot| self.slot_mut(slot)).filter(|s| s.conn.is_none())
            else {
                self.metrics.wills_not_restored += 1;
                continue;
            };
            let mut due = clock.to_instant(due_unix_ms).max(now);
            if let Some(at) = s.expires_at {
                // [MQTT-3.1.3-9]: no later than the session's end.
                due = due.min(at);
            }
            s.pending_will = Some(Box::new(PendingWill { will, due }));
            self.metrics.wills_restored += 1;
            if let Some(slot) = slot {
                self.arm_will(slot, due);
            }
        }
    }

    /// The retained replica stored or cleared a message.
    /// `source`: its publisher (None: the broker), logged after it (see
    /// [`Record::RetainSource`]).
    pub(super) fn journal_retained(
        &mut self,
        msg: &crate::session::Message,
        source: Option<&super::message::Publisher>,
    ) {
        if let Some(j) = &mut self.journal {
            if msg.payload.is_empty() {
                j.records.push(Record::RetainClear { topic: msg.topic.to_string() });
                return;
            }
            j.records.push(Record::RetainSet(journal::store_message(msg, &j.clock)));
            if let Some(source) = source {
                j.records.push(retain_source(msg.topic.as_str(), source));
            }
        }
    }

    /// Start-up, before serving: installs sessions recovered from this shard's log (offline,
    /// each under the claim generation its registry shard was told), the registry entries this
    /// shard's partition holds for recovered sessions, and the retained messages of its log.
    /// Call [`Shard::enable_persistence`] first; nothing restored here is written again.
    pub fn restore(
        &mut self,
        sessions: Vec<(String, SessionSnapshot, ClaimGen, u64)>,
        registry: Vec<(String, Owner)>,
        retained: Vec<(StoredMessage, Option<StoredSource>)>,
        now: Instant,
    ) {
        let Some(mut j) = self.journal.take() else { return };
        for (client_id, snap, claim, stamp_us) in sessions {
            if self.by_client.contains_key(client_id.as_str())
                || self.by_client.len() >= self.cfg.sessions_max
            {
                self.metrics.sessions_not_restored += 1;
                continue;
            }
            let username = snap.username.clone();
            let offline_since = snap.offline_since_unix_ms;
            let state = journal::load_state(snap, &j.clock);
            let expiry = state.expiry_secs.min(self.cfg.session_expiry_secs_max);
            let mut session = Session::from_state(client_id, state, self.cfg.session);
            session.expiry_secs = expiry;
            session.username = username;
            let slot = self.install_session(session, claim, None).slot;
            if expiry != u32::MAX {
                // Offline since the snapshot said, or (connected at the crash) since now.
                let since = match offline_since {
                    Some(ms) if ms > 0 => j.clock.to_instant(ms),
                    _ => now,
                };
                let at = since + Duration::from_secs(u64::from(expiry));
                if let Some(s) = self.slot_mut(slot) {
                    s.expires_at = Some(at.max(now));
                }
            }
            if let Some(s) = self.slot(slot) {
                j.persisted.insert(Rc::clone(&s.session.client_id), stamp_us);
            }
            self.metrics.sessions_restored += 1;
        }
        for (client_id, owner) in registry {
            self.next_claim = self.next_claim.max(owner.generation.0 + 1);
            let key = self.shared_client_id(client_id);
            self.registry.insert(key, owner);
        }
        for (m, source) in retained {
            // Its publisher, checked against the ACL whenever it is delivered (CVE-2018-12546).
            let source = source.map(|s| {
                std::sync::Arc::new(super::message::Publisher {
                    username: s.username,
                    client_id: s.client_id,
                })
            });
            self.retained_apply(journal::load_message(m, &j.clock), source);
        }
        self.journal = Some(j);
        // The restored state is in the log already.
        if let Some(j) = &mut self.journal {
            j.records.clear();
        }
    }
}

/// The record naming `source` as the publisher of the retained message of `topic`.
fn retain_source(topic: &str, source: &super::message::Publisher) -> Record {
    Record::RetainSource {
        topic: topic.to_owned(),
        source: StoredSource {
            client_id: source.client_id.clone(),
            username: source.username.clone(),
        },
    }
}

/// The snapshot of a slot's session, with when it went offline.
fn slot_snapshot(s: &super::SessionSlot, clock: &Clock) -> SessionSnapshot {
    let offline_since = match (s.conn, s.expires_at) {
        (Some(_), _) => None,
        (None, Some(at)) => Some(
            clock.to_unix(at).saturating_sub(u64::from(s.session.expiry_secs).saturating_mul(1000)),
        ),
        // Offline and never expiring.
        (None, None) => Some(0),
    };
    snapshot_of(&s.session, offline_since, clock)
}

/// A session as a snapshot record, by reference.
fn snapshot_of(s: &Session, offline_since: Option<u64>, clock: &Clock) -> SessionSnapshot {
    use crate::persist::record::StoredInflight;
    SessionSnapshot {
        username: s.username.clone(),
        expiry_secs: s.expiry_secs,
        offline_since_unix_ms: offline_since,
        subscriptions: s
            .subscriptions
            .iter()
            .map(|(f, sub)| (f.clone(), sub.options, sub.identifier))
            .collect(),
        inflight: s
            .inflight
            .iter()
            .map(|(id, f)| StoredInflight {
                packet_id: *id,
                delivery: journal::store_outgoing(&f.out, clock),
                released: f.state == crate::session::InflightState::AwaitComp,
            })
            .collect(),
        queue: s.queue.iter().map(|o| journal::store_outgoing(o, clock)).collect(),
        inbound_qos2: {
            let mut v: Vec<u16> = s.inbound_qos2.iter().copied().collect();
            v.sort_unstable();
            v
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{
        self, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
        SubscriptionOptions,
    };
    use crate::persist::journal::replay;
    use crate::shard::{ConnId, ShardConfig};
    use bytes::{Bytes, BytesMut};

    const V4: ProtocolVersion = ProtocolVersion::V311;

    fn send(s: &mut Shard, c: ConnId, p: Packet, now: Instant) {
        let mut buf = BytesMut::new();
        codec::encode(&p, V4, &mut buf).expect("encode");
        s.handle_read(c, &buf, now);
    }

    fn recv(s: &mut Shard, c: ConnId) -> Vec<Packet> {
        let mut tx = s.take_tx(c, crate::test_clock::test_epoch());
        let mut out = Vec::new();
        while let Some(p) = codec::decode(&mut tx, V4, usize::MAX).expect("decodes") {
            out.push(p);
        }
        out
    }

    fn connect(s: &mut Shard, id: &str, clean: bool, now: Instant) -> (ConnId, bool) {
        let c = s.accept(0, "127.0.0.1:1".parse().expect("addr"), now).expect("accept");
        let connect = Connect {
            version: V4,
            clean_start: clean,
            keep_alive_secs: 30,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::new(),
        };
        send(s, c, Packet::Connect(Box::new(connect)), now);
        match recv(s, c).first() {
            Some(Packet::ConnAck(a)) => (c, a.session_present),
            other => panic!("CONNACK expected, got {other:?}"),
        }
    }

    fn publish(topic: &str, payload: &'static [u8], id: u16, retain: bool) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain,
            topic: Some(crate::codec::TopicName::new(topic).expect("valid topic")),
            packet_id: crate::codec::PacketId::new(id),
            properties: Properties::new(),
            payload: Bytes::from_static(payload),
        })
    }

    /// CVE-2018-12546 across a restart: the log keeps who published a retained message
    /// ([`Record::RetainSource`], in the update's records and in compaction), so after a
    /// restart whose ACL revokes the publisher's write right the message is not served
    /// (counted in `retained_denied_source`), and with the right kept it is. Before, a
    /// restored retained message had no publisher and was served like the broker's own.
    #[test]
    fn retained_message_keeps_its_publisher_across_a_restart() {
        let now = crate::test_clock::test_epoch();
        let clock = Clock { instant: now, unix_ms: 1_700_000_000_000 };
        let with_acl = |text: &str| {
            let mut cfg = ShardConfig::for_tests(1);
            let acl = crate::auth::Acl::parse("acl", text).expect("test ACL parses");
            cfg.security =
                std::sync::Arc::new(crate::auth::Security { passwords: None, acl: Some(acl) });
            Shard::new(crate::ids::ShardId(0), cfg)
        };
        let granted = "topic readwrite news/#\n";
        let mut s = with_acl(granted);
        s.enable_persistence(clock);
        let (p, _) = connect(&mut s, "newsroom", true, now);
        send(&mut s, p, publish("news/flash", b"kept", 1, true), now);
        let source = StoredSource { client_id: "newsroom".into(), username: None };
        let logged = replay(s.take_records(now));
        assert_eq!(logged.retained_sources.get("news/flash"), Some(&source));
        let compacted = replay(s.compaction_records());
        assert_eq!(compacted.retained_sources, logged.retained_sources, "compaction keeps it");
        // A broker-side clear removes it with the message.
        let cleared = {
            let mut recs = s.compaction_records();
            recs.push(Record::RetainClear { topic: "news/flash".into() });
            replay(recs)
        };
        assert!(cleared.retained.is_empty() && cleared.retained_sources.is_empty());
        let retained: Vec<_> = logged
            .retained
            .iter()
            .map(|(t, m)| (m.clone(), logged.retained_sources.get(t).cloned()))
            .collect();
        for (acl, served) in [(granted, true), ("topic read news/#\n", false)] {
            let mut t = with_acl(acl);
            t.enable_persistence(clock);
            t.restore(Vec::new(), Vec::new(), retained.clone(), now);
            let (reader, _) = connect(&mut t, "reader", true, now);
            let sub = Subscribe {
                packet_id: crate::codec::PacketId::new(1).expect("id"),
                filters: vec![(
                    crate::codec::TopicFilter::new("news/#", true).expect("valid filter"),
                    SubscriptionOptions::default(),
                )],
                properties: Properties::new(),
            };
            send(&mut t, reader, Packet::Subscribe(sub), now);
            let got = recv(&mut t, reader);
            let delivered = got.iter().any(|p| matches!(p, Packet::Publish(m) if m.retain));
            assert_eq!(delivered, served, "ACL {acl:?}: {got:?}");
            assert_eq!(t.metrics.retained_denied_source, u64::from(!served));
        }
    }

    /// The records a persistent session's life produces replay into a shard that serves the
    /// session again: subscription, queued message and retained message survive [MQTT-3.1.2-4]
    /// (session state of a clean_session=0 session is kept), while a clean session writes none.
    #[test]
    fn records_of_a_persistent_session_restore_it() {
        let now = crate::test_clock::test_epoch();
        let clock = Clock { instant: now, unix_ms: 1_700_000_000_000 };
        let mut s = Shard::new(crate::ids::ShardId(0), ShardConfig::for_tests(1));
        s.enable_persistence(clock);
        let mut log = Vec::new();
        let (dev, _) = connect(&mut s, "dev", false, now);
        let sub = Subscribe {
            packet_id: crate::codec::PacketId::new(1).expect("id"),
            filters: vec![(
                crate::codec::TopicFilter::new("t", true).expect("valid filter"),
                SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            )],
            properties: Properties::new(),
        };
        send(&mut s, dev, Packet::Subscribe(sub), now);
        let recs = s.take_records(now);
        assert!(recs.iter().any(|r| matches!(r, Record::Snapshot { client_id, session }
            if client_id == "dev" && session.subscriptions.len() == 1)));
        log.extend(recs);
        s.handle_closed(dev, now);
        s.release(dev, now);
        log.extend(s.take_records(now));
        let (p, _) = connect(&mut s, "pub", true, now);
        send(&mut s, p, publish("t", b"queued", 1, false), now);
        send(&mut s, p, publish("r", b"kept", 2, true), now);
        let recs = s.take_records(now);
        assert!(recs
            .iter()
            .any(|r| matches!(r, Record::Enqueue { client_id, .. } if client_id == "dev")));
        assert!(recs.iter().any(|r| matches!(r, Record::RetainSet(m) if m.topic == "r")));
        assert!(
            recs.iter()
                .all(|r| !matches!(r, Record::Snapshot { client_id, .. } if client_id == "pub")),
            "a clean session writes no snapshot"
        );
        log.extend(recs);
        // Compaction writes the same state in one go.
        let compact = replay(s.compaction_records());
        let replayed = replay(log);
        assert_eq!(compact.sessions, replayed.sessions);
        assert_eq!(replayed.sessions["dev"].queue.len(), 1);

        // A new shard restores it; the client finds its session and its message.
        let mut t = Shard::new(crate::ids::ShardId(0), ShardConfig::for_tests(1));
        t.enable_persistence(clock);
        let sessions = replayed
            .sessions
            .into_iter()
            .map(|(cid, snap)| (cid, snap, ClaimGen(1), 1))
            .collect::<Vec<_>>();
        let registry = vec![(
            "dev".to_string(),
            Owner { shard: crate::ids::ShardId(0), generation: ClaimGen(1) },
        )];
        t.restore(
            sessions,
            registry,
            replayed.retained.into_values().map(|m| (m, None)).collect(),
            now,
        );
        assert!(t.take_records(now).is_empty(), "restored state is not written again");
        assert_eq!(t.metrics.sessions_restored, 1);
        let c = t.accept(0, "127.0.0.1:1".parse().expect("addr"), now).expect("accept");
        let resume = Connect {
            version: V4,
            clean_start: false,
            keep_alive_secs: 30,
            client_id: "dev".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::new(),
        };
        send(&mut t, c, Packet::Connect(Box::new(resume)), now);
        let got = recv(&mut t, c);
        assert!(matches!(&got[0], Packet::ConnAck(a) if a.session_present), "{got:?}");
        assert!(got.iter().any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"queued")));
        let (probe, _) = connect(&mut t, "probe", true, now);
        let sub = Subscribe {
            packet_id: crate::codec::PacketId::new(1).expect("id"),
            filters: vec![(
                crate::codec::TopicFilter::new("r", true).expect("valid filter"),
                SubscriptionOptions::default(),
            )],
            properties: Properties::new(),
        };
        send(&mut t, probe, Packet::Subscribe(sub), now);
        assert!(recv(&mut t, probe)
            .iter()
            .any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"kept" && p.retain)));
    }

    /// The hot path of a connected persistent subscriber writes fine-grained records, never a
    /// snapshot, and they replay to the same state a compaction snapshot describes: queued,
    /// in flight, released (PUBREC) and acknowledged deliveries [MQTT-4.4.0-1] (unacknowledged
    /// messages are resent on resume), and the publisher's inbound QoS 2 id [MQTT-4.3.3-10].
    #[test]
    fn hot_path_writes_fine_grained_records_that_replay_like_a_snapshot() {
        use crate::codec::{PacketId, PubResp};
        let now = crate::test_clock::test_epoch();
        let clock = Clock { instant: now, unix_ms: 1_700_000_000_000 };
        let mut cfg = ShardConfig::for_tests(1);
        cfg.session.inflight_max = 2;
        let mut s = Shard::new(crate::ids::ShardId(0), cfg);
        s.enable_persistence(clock);
        let mut log = Vec::new();
        let (dev, _) = connect(&mut s, "dev", false, now);
        let sub = Subscribe {
            packet_id: PacketId::new(1).expect("id"),
            filters: vec![(
                crate::codec::TopicFilter::new("t/#", true).expect("valid filter"),
                SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() },
            )],
            properties: Properties::new(),
        };
        send(&mut s, dev, Packet::Subscribe(sub), now);
        let _ = recv(&mut s, dev);
        log.extend(s.take_records(now));
        let (p, _) = connect(&mut s, "pub", false, now);
        log.extend(s.take_records(now));
        // Four QoS 1 and one QoS 2 inbound: two go in flight, three wait in the queue.
        for i in 1..=4u16 {
            send(&mut s, p, publish("t/a", b"m", i, false), now);
        }
        let q2 = Packet::Publish(crate::codec::Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: Some(crate::codec::TopicName::new("t/b").expect("valid topic")),
            packet_id: PacketId::new(9),
            properties: Properties::new(),
            payload: Bytes::from_static(b"two"),
        });
        send(&mut s, p, q2, now);
        let recs = s.take_records(now);
        assert!(
            recs.iter().all(|r| !matches!(r, Record::Snapshot { .. })),
            "no snapshot on the hot path: {recs:?}"
        );
        assert!(recs.iter().any(|r| matches!(r, Record::Sent { .. })));
        assert!(recs.iter().any(|r| matches!(r, Record::Qos2Received { packet_id: 9, .. })));
        log.extend(recs);
        // The subscriber acknowledges what it got; the queue moves into flight.
        let got = recv(&mut s, dev);
        for pkt in got {
            if let Packet::Publish(p) = pkt {
                let id = p.packet_id.expect("QoS > 0");
                send(&mut s, dev, Packet::PubAck(PubResp::success(id)), now);
            }
        }
        let got = recv(&mut s, dev);
        let mut released = false;
        for pkt in got {
            if let Packet::Publish(p) = pkt {
                let id = p.packet_id.expect("QoS > 0");
                match p.qos {
                    QoS::ExactlyOnce if !released => {
                        send(&mut s, dev, Packet::PubRec(PubResp::success(id)), now);
                        released = true;
                    }
                    _ => send(&mut s, dev, Packet::PubAck(PubResp::success(id)), now),
                }
            }
        }
        let recs = s.take_records(now);
        assert!(recs.iter().all(|r| !matches!(r, Record::Snapshot { .. })), "{recs:?}");
        assert!(recs.iter().any(|r| matches!(r, Record::Acked { .. })));
        log.extend(recs);
        let replayed = replay(log);
        let compact = replay(s.compaction_records());
        assert_eq!(replayed.sessions, compact.sessions);
        let dev = &replayed.sessions["dev"];
        // Every QoS 1 message was acknowledged; the QoS 2 one is still owed.
        let owed: Vec<_> = dev.inflight.iter().map(|i| &i.delivery).chain(&dev.queue).collect();
        assert_eq!(owed.len(), 1, "{dev:?}");
        assert_eq!(&owed[0].msg.payload[..], b"two");
        assert_eq!(replayed.sessions["pub"].inbound_qos2, vec![9]);
    }
}

#[cfg(test)]
mod will_tests {
    use super::*;
    use crate::codec::{
        self, Connect, Packet, Properties, Property, ProtocolVersion, QoS, Subscribe,
        SubscriptionOptions,
    };
    use crate::persist::journal::replay;
    use crate::shard::{ConnId, ShardConfig};
    use bytes::{Bytes, BytesMut};

    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn send(s: &mut Shard, c: ConnId, p: Packet, now: Instant) {
        let mut buf = BytesMut::new();
        codec::encode(&p, V5, &mut buf).expect("encode");
        s.handle_read(c, &buf, now);
    }

    fn recv(s: &mut Shard, c: ConnId) -> Vec<Packet> {
        let mut tx = s.take_tx(c, crate::test_clock::test_epoch());
        let mut out = Vec::new();
        while let Some(p) = codec::decode(&mut tx, V5, usize::MAX).expect("decodes") {
            out.push(p);
        }
        out
    }

    /// A v5 client with session expiry 60 s and, when `will_delay` is set, a will on `w/t`.
    fn connect(s: &mut Shard, id: &str, will_delay: Option<u32>, now: Instant) -> ConnId {
        let c = s.accept(0, "127.0.0.1:1".parse().expect("addr"), now).expect("accept");
        let mut properties = Properties::new();
        properties.push(Property::SessionExpiryInterval(60));
        let will = will_delay.map(|d| {
            let mut p = Properties::new();
            p.push(Property::WillDelayInterval(d));
            codec::Will {
                topic: crate::codec::TopicName::new("w/t").expect("valid topic"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: p,
            }
        });
        let connect = Connect {
            version: V5,
            clean_start: false,
            keep_alive_secs: 0,
            client_id: id.into(),
            will,
            username: None,
            password: None,
            properties,
        };
        send(s, c, Packet::Connect(Box::new(connect)), now);
        assert!(matches!(recv(s, c).first(), Some(Packet::ConnAck(_))));
        c
    }

    fn subscribe(s: &mut Shard, c: ConnId, now: Instant) {
        let sub = Subscribe {
            packet_id: crate::codec::PacketId::new(1).expect("id"),
            filters: vec![(
                crate::codec::TopicFilter::new("w/t", true).expect("valid filter"),
                SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            )],
            properties: Properties::new(),
        };
        send(s, c, Packet::Subscribe(sub), now);
        let _ = recv(s, c);
    }

    fn wills_received(s: &mut Shard, c: ConnId) -> usize {
        recv(s, c)
            .iter()
            .filter(|p| matches!(p, Packet::Publish(p) if p.topic.as_deref() == Some("w/t") && &p.payload[..] == b"gone"))
            .count()
    }

    /// The log of a shard where the client `w` (will delay 2 s) lost its connection at `now`,
    /// and, when `back`, reconnected 1 s later; with the compaction of the end state.
    fn log_of_a_drop(clock: Clock, back: bool) -> (Vec<Record>, Vec<Record>) {
        let now = clock.instant;
        let mut s = Shard::new(crate::ids::ShardId(0), ShardConfig::for_tests(1));
        s.enable_persistence(clock);
        let mut log = Vec::new();
        let w = connect(&mut s, "w", Some(2), now);
        log.extend(s.take_records(now));
        s.handle_closed(w, now);
        s.release(w, now);
        assert_eq!(s.metrics.wills_published, 0, "the will waits for its delay");
        log.extend(s.take_records(now));
        if back {
            let later = now + Duration::from_secs(1);
            let _w = connect(&mut s, "w", None, later);
            log.extend(s.take_records(later));
            s.tick(later + Duration::from_secs(5));
            assert_eq!(s.metrics.wills_published, 0, "[MQTT-3.1.3-9] not sent after a reconnect");
        }
        (log, s.compaction_records())
    }

    /// Restores `log` into a fresh shard whose clock reads `at` (the broker restarted then),
    /// with a subscriber to `w/t`; returns the shard and the subscriber.
    fn restart(log: Vec<Record>, clock: Clock, at: Instant) -> (Shard, ConnId) {
        let replayed = replay(log);
        let mut t = Shard::new(crate::ids::ShardId(0), ShardConfig::for_tests(1));
        t.enable_persistence(clock);
        let sessions: Vec<_> =
            replayed.sessions.into_iter().map(|(cid, snap)| (cid, snap, ClaimGen(1), 1)).collect();
        let registry = sessions
            .iter()
            .map(|(cid, ..)| {
                (cid.clone(), Owner { shard: crate::ids::ShardId(0), generation: ClaimGen(1) })
            })
            .collect();
        t.restore(sessions, registry, Vec::new(), at);
        let wills = replayed.wills.into_iter().map(|(c, (w, due))| (c, w, due)).collect();
        t.restore_wills(wills, at);
        assert!(t.take_records(at).is_empty(), "restored state is not written again");
        let sub = connect(&mut t, "sub", None, at);
        subscribe(&mut t, sub, at);
        (t, sub)
    }

    /// A delayed will pending at a crash is published after the restart when its delay ends,
    /// counted from the disconnect in wall-clock time (the downtime counts) [MQTT-3.1.3-9];
    /// compaction writes the same pending will.
    #[test]
    fn a_pending_delayed_will_is_published_after_a_restart_at_its_time() {
        let t0 = crate::test_clock::test_epoch();
        let clock = Clock { instant: t0, unix_ms: 1_700_000_000_000 };
        let (log, compact) = log_of_a_drop(clock, false);
        let replayed = replay(log.clone());
        assert_eq!(replayed.wills["w"].1, 1_700_000_002_000, "due 2 s after the drop");
        assert_eq!(replay(compact).wills, replayed.wills);
        // Restarted 1.5 s after the drop: the new process's clock has another origin.
        let t1 = t0 + Duration::from_secs(100);
        let restarted = Clock { instant: t1, unix_ms: 1_700_000_001_500 };
        let (mut t, sub) = restart(log.clone(), restarted, t1);
        assert_eq!(t.metrics.wills_restored, 1);
        t.tick(t1 + Duration::from_millis(400));
        assert_eq!(wills_received(&mut t, sub), 0, "0.5 s of the delay left");
        t.tick(t1 + Duration::from_millis(600));
        assert_eq!(wills_received(&mut t, sub), 1, "published when the delay ends");
        let recs = t.take_records(t1 + Duration::from_millis(600));
        assert!(recs
            .iter()
            .any(|r| matches!(r, Record::WillDone { client_id } if client_id == "w")));
        // Restarted after the delay had passed: published on the first tick.
        let late = Clock { instant: t1, unix_ms: 1_700_000_030_000 };
        let (mut t, sub) = restart(log, late, t1);
        t.tick(t1);
        assert_eq!(wills_received(&mut t, sub), 1);
    }

    /// A client that came back before the crash cancelled its will: the log says so and the
    /// restarted broker never publishes it [MQTT-3.1.3-9].
    #[test]
    fn a_will_cancelled_by_a_reconnect_stays_cancelled_after_a_restart() {
        let t0 = crate::test_clock::test_epoch();
        let clock = Clock { instant: t0, unix_ms: 1_700_000_000_000 };
        let (log, compact) = log_of_a_drop(clock, true);
        assert!(log.iter().any(|r| matches!(r, Record::WillDone { .. })));
        assert!(replay(log.clone()).wills.is_empty());
        assert!(replay(compact).wills.is_empty());
        let restarted = Clock { instant: t0, unix_ms: 1_700_000_001_500 };
        let (mut t, sub) = restart(log, restarted, t0);
        t.tick(t0 + Duration::from_secs(10));
        assert_eq!(wills_received(&mut t, sub), 0);
        assert_eq!(t.metrics.wills_published, 0);
    }
}
