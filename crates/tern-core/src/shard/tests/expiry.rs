//! Session expiry, message expiry and will delay on the harness clock (issue 15: the
//! integration tests used to wait these out with `sleep` against a running broker). Time moves
//! only when a test says so, so the bounds are checked on both sides of each deadline.

use super::*;
use crate::codec::Property;

const V5: ProtocolVersion = ProtocolVersion::V5;

impl Cluster {
    /// Moves the harness clock forward by `by` and runs every shard's periodic work at the new
    /// time, as the runtime's once-a-second tick does.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        for shard in &mut self.shards {
            shard.tick(now);
        }
        self.settle();
    }

    /// The client's socket is gone (no DISCONNECT): the driver reports it and frees the slot.
    fn drop_connection(&mut self, c: Client) {
        let now = self.now;
        self.shards[c.shard].handle_closed(c.conn, now);
        self.shards[c.shard].release(c.conn, now);
        self.settle();
    }

    /// A counter summed over the shards.
    fn total(&self, counter: impl Fn(&crate::counters::Metrics) -> u64) -> u64 {
        self.shards.iter().map(|s| counter(&s.metrics)).sum()
    }

    /// Opens a connection on `shard` with `connect` and returns it with its CONNACK and what
    /// followed it.
    fn open_with(
        &mut self,
        shard: usize,
        connect: Packet,
    ) -> (Client, codec::ConnAck, Vec<Packet>) {
        let c = self.open(shard, V5);
        self.send(c, connect);
        let mut got = self.recv(c).into_iter();
        let Some(Packet::ConnAck(ack)) = got.next() else { panic!("CONNACK expected first") };
        assert_eq!(ack.reason, ReasonCode::Success, "{ack:?}");
        (c, ack, got.collect())
    }
}

/// A v5 CONNECT with a Session Expiry Interval of `expiry_secs`.
fn v5_connect(id: &str, clean: bool, expiry_secs: u32) -> Packet {
    let mut p = connect_packet(V5, id, clean);
    if let Packet::Connect(c) = &mut p {
        c.properties.push(Property::SessionExpiryInterval(expiry_secs));
    }
    p
}

/// A QoS 1 PUBLISH with a Message Expiry Interval of `expiry_secs`.
fn expiring(topic: &str, payload: &'static [u8], id: u16, expiry_secs: u32) -> Packet {
    let mut p = publish_packet(topic, payload, QoS::AtLeastOnce, id, false);
    if let Packet::Publish(m) = &mut p {
        m.properties.push(Property::MessageExpiryInterval(expiry_secs));
    }
    p
}

/// §3.1.2.11.2 Session Expiry Interval: a session with expiry 2 s outlives its connection and is
/// resumed within the interval, with the message queued meanwhile ([MQTT-3.1.2-23]); once the
/// interval after its last connection has run out it is gone (session present 0).
#[test]
fn session_expiry_keeps_the_session_until_it_runs_out() {
    let mut cl = Cluster::new(2);
    let (c, _, _) = cl.open_with(0, v5_connect("exp", true, 2));
    cl.subscribe(c, "exp/t", QoS::AtLeastOnce);
    cl.drop_connection(c);
    let p = cl.connect(1, V5, "exp-pub", true);
    cl.publish(p, "exp/t", b"queued", QoS::AtLeastOnce, 1);

    cl.advance(Duration::from_millis(1_900));
    assert_eq!(cl.total(|m| m.sessions_expired), 0, "kept within the interval");
    let (c, ack, after) = cl.open_with(1, v5_connect("exp", false, 2));
    assert!(ack.session_present, "resumed within the interval, on the other shard");
    let queued = publishes(&after);
    assert!(
        matches!(&queued[..], [m] if &m.payload[..] == b"queued"),
        "the queued message follows CONNACK: {after:?}"
    );
    cl.send(c, Packet::PubAck(PubResp::success(queued[0].packet_id.expect("QoS 1"))));
    cl.send(c, Packet::Disconnect(ReasonPacket::new(ReasonCode::Success)));
    cl.drop_connection(c);

    // The interval counts from this last connection's end.
    cl.advance(Duration::from_millis(1_900));
    assert_eq!(cl.total(|m| m.sessions_expired), 0, "1.9 s after the close");
    cl.advance(Duration::from_millis(200));
    assert_eq!(cl.total(|m| m.sessions_expired), 1, "2.1 s after the close");
    let (_c, ack, after) = cl.open_with(0, v5_connect("exp", false, 2));
    assert!(!ack.session_present, "expired after 2 s");
    assert!(after.is_empty(), "nothing of the expired session: {after:?}");
}

/// §3.3.2.3.3 Message Expiry Interval: a message queued for an offline session whose interval
/// ran out is not delivered (and is counted), one still alive is delivered with the interval
/// reduced by the time it waited, exactly ([MQTT-3.3.2-6]).
#[test]
fn message_expiry_drops_stale_messages_and_counts_down() {
    let mut cl = Cluster::new(2);
    let (c, _, _) = cl.open_with(0, v5_connect("mexp", true, 60));
    cl.subscribe(c, "mexp/#", QoS::AtLeastOnce);
    cl.drop_connection(c);
    let p = cl.connect(1, V5, "mexp-pub", true);
    cl.send(p, expiring("mexp/short", b"stale", 1, 1));
    cl.send(p, expiring("mexp/long", b"fresh", 2, 30));
    let acks = cl.recv(p);
    assert!(matches!(&acks[..], [Packet::PubAck(_), Packet::PubAck(_)]), "{acks:?}");

    cl.advance(Duration::from_secs(2));
    let (_c, ack, after) = cl.open_with(0, v5_connect("mexp", false, 60));
    assert!(ack.session_present);
    let got = publishes(&after);
    assert!(
        matches!(&got[..], [m] if &m.payload[..] == b"fresh"),
        "the expired message was skipped: {after:?}"
    );
    assert_eq!(got[0].properties.message_expiry_interval(), Some(28), "30 s less the 2 s waited");
    assert_eq!(cl.total(|m| m.messages_dropped_expired), 1);
}

/// §3.1.3.2.2 Will Delay Interval ([MQTT-3.1.3-9], [MQTT-3.1.2-8]): a will waits its delay after
/// the connection is lost and is then published; a new connection for the client id within the
/// delay cancels it.
#[test]
fn will_delay_is_cancelled_by_a_reconnect_and_honoured_otherwise() {
    let mut cl = Cluster::new(2);
    let w = cl.connect(1, V5, "wd-watch", true);
    cl.subscribe(w, "wd/#", QoS::AtMostOnce);
    let with_will = |id: &str, delay: u32| {
        let mut p = v5_connect(id, true, 60);
        if let Packet::Connect(c) = &mut p {
            let mut properties = Properties::new();
            properties.push(Property::WillDelayInterval(delay));
            c.will = Some(Will {
                topic: crate::codec::TopicName::new(format!("wd/{id}")).expect("valid topic"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties,
            });
        }
        p
    };
    let (back, _, _) = cl.open_with(0, with_will("back", 2));
    let (late, _, _) = cl.open_with(0, with_will("late", 1));
    cl.drop_connection(back);
    cl.drop_connection(late);

    cl.advance(Duration::from_millis(300));
    let (_back, ack, _) = cl.open_with(1, v5_connect("back", false, 60));
    assert!(ack.session_present, "the session outlived the connection");
    assert!(publishes(&cl.recv(w)).is_empty(), "no will before its delay");

    cl.advance(Duration::from_millis(600));
    assert!(publishes(&cl.recv(w)).is_empty(), "0.9 s: late's 1 s delay has not run out");
    cl.advance(Duration::from_millis(200));
    let got = cl.recv(w);
    let wills: Vec<&str> =
        publishes(&got).iter().map(|m| m.topic.as_deref().unwrap_or("")).collect();
    assert_eq!(wills, ["wd/late"], "published once its 1 s delay ran out");

    cl.advance(Duration::from_secs(5));
    assert!(publishes(&cl.recv(w)).is_empty(), "wd/back was cancelled by the reconnect");
    assert_eq!(cl.total(|m| m.wills_published), 1);
}
