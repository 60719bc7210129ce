//! The one raw MQTT test client, [`RawClient`]: blocking, built on the project's codec, over any
//! [`Transport`] (plain TCP, the rustls client of `interop`, or `interop::WsClient` over either),
//! with the packet builders the tests share.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern::codec::{
    self, ConnAck, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS,
    SubscriptionOptions,
};

/// How long [`RawClient::recv`] (and a blocking read of the transports here) waits for a
/// packet the test expects. Generous for a loaded CI machine: a passing test never waits it
/// out; tests that check that nothing arrives pass their own, shorter, timeout.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(20);

/// A byte stream whose reads can be bounded in time, so that [`RawClient::recv_timeout`] ends
/// at its deadline whatever the transport.
pub trait Transport: Read + Write {
    /// Bounds each following read (`None`: reads block).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// A blocking MQTT client speaking raw packets through the project's codec over `S`.
/// Packets read while looking for a particular one (a SUBACK) wait in `pending` and are
/// returned first by the next `recv`, so nothing the broker sent is lost or reordered.
pub struct RawClient<S = TcpStream> {
    pub stream: S,
    pub version: ProtocolVersion,
    buf: BytesMut,
    pending: VecDeque<Packet>,
}

impl RawClient<TcpStream> {
    /// A TCP connection with Nagle off and no MQTT packet sent yet.
    pub fn connect_tcp(addr: SocketAddr, version: ProtocolVersion) -> Self {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(RECV_TIMEOUT)).expect("timeout");
        Self::new(stream, version)
    }

    /// Connects with CONNECT and expects CONNACK success; returns session present.
    pub fn mqtt_connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        id: &str,
        clean: bool,
    ) -> (Self, bool) {
        let mut c = Self::connect_tcp(addr, version);
        c.send(&connect(version, id, clean, 30));
        let a = c.connack();
        assert_eq!(a.reason, codec::ReasonCode::Success, "CONNACK refused: {a:?}");
        (c, a.session_present)
    }
}

impl<S: Transport> RawClient<S> {
    pub fn new(stream: S, version: ProtocolVersion) -> Self {
        Self { stream, version, buf: BytesMut::new(), pending: VecDeque::new() }
    }

    pub fn send(&mut self, p: &Packet) {
        self.send_raw(&encode(p, self.version));
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
        self.stream.flush().expect("flush");
    }

    /// The next packet, or None on EOF, error or when `timeout` passes first.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Packet> {
        if let Some(p) = self.pending.pop_front() {
            return Some(p);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.version, usize::MAX)
                .expect("broker output decodes")
            {
                return Some(p);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    pub fn recv(&mut self) -> Packet {
        self.recv_timeout(RECV_TIMEOUT)
            .unwrap_or_else(|| panic!("no packet within {RECV_TIMEOUT:?}"))
    }

    /// Receives until a PUBLISH arrives, skipping other packets (acks; bounded: 10 000).
    pub fn recv_publish(&mut self) -> Publish {
        for _ in 0..10_000 {
            if let Packet::Publish(p) = self.recv() {
                return p;
            }
        }
        panic!("no PUBLISH in 10 000 packets");
    }

    /// True once the broker has closed the connection (EOF) within `timeout`, skipping packets.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.pending.clear();
        while Instant::now() < deadline {
            let _ = self.buf.split();
            let mut chunk = [0u8; 4096];
            self.stream.set_read_timeout(Some(Duration::from_millis(50))).ok();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }

    /// The CONNACK that must be the first packet from the server [MQTT-3.2.0-1].
    pub fn connack(&mut self) -> ConnAck {
        match self.recv() {
            Packet::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends a clean CONNECT (keep alive 30 s) and returns the CONNACK, whatever its reason.
    pub fn connect(&mut self, id: &str, username: Option<&str>) -> ConnAck {
        let Packet::Connect(mut c) = connect_packet(self.version, id) else { unreachable!() };
        c.username = username.map(str::to_owned);
        self.send(&Packet::Connect(c));
        self.connack()
    }

    /// [`Self::connect`] that must succeed.
    pub fn connect_ok(&mut self, id: &str) {
        let a = self.connect(id, None);
        assert_eq!(a.reason, codec::ReasonCode::Success, "CONNACK refused: {a:?}");
    }

    /// Subscribes (packet id 1) and expects the filter granted. PUBLISHes may come before the
    /// SUBACK (MQTT 3.1.1 §3.8.4 allows matching ones; earlier subscriptions' traffic and acks
    /// can be queued too): they wait for the next `recv`.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        let a = self.subscribe_with(subscribe_packet(filter, qos, 1));
        assert!(!a.reasons[0].is_error(), "SUBACK refused: {a:?}");
    }

    /// Sends `subscribe` (a SUBSCRIBE) and returns its SUBACK: the first SUBACK with its packet
    /// id, other packets kept for the next `recv`s.
    pub fn subscribe_with(&mut self, subscribe: Packet) -> codec::SubAck {
        let Packet::Subscribe(s) = &subscribe else { panic!("not a SUBSCRIBE: {subscribe:?}") };
        let id = s.packet_id;
        self.send(&subscribe);
        let mut skipped = Vec::new();
        let found = loop {
            match self.recv_timeout(RECV_TIMEOUT) {
                Some(Packet::SubAck(a)) if a.packet_id == id => break a,
                Some(other) if skipped.len() < 10_000 => skipped.push(other),
                other => panic!("no SUBACK for id {id:?}: got {other:?} after {skipped:?}"),
            }
        };
        self.pending.extend(skipped);
        found
    }

    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, id: u16, retain: bool) {
        self.send(&publish(topic, payload, qos, id, retain));
    }
}

/// `p` encoded for `version`.
pub fn encode(p: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec::encode(p, version, &mut out).expect("encode");
    out.to_vec()
}

pub fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero")
}

pub fn connect(version: ProtocolVersion, id: &str, clean: bool, keep_alive: u16) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        clean_start: clean,
        keep_alive_secs: keep_alive,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::new(),
    }))
}

/// A clean CONNECT with keep alive 30 s.
pub fn connect_packet(version: ProtocolVersion, id: &str) -> Packet {
    connect(version, id, true, 30)
}

pub fn subscribe_packet(filter: &str, qos: QoS, id: u16) -> Packet {
    Packet::Subscribe(codec::Subscribe {
        packet_id: pid(id),
        filters: vec![(
            tern::codec::TopicFilter::new(filter, true).expect("valid filter"),
            SubscriptionOptions { qos, ..Default::default() },
        )],
        properties: Properties::new(),
    })
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        // "" is the v5 alias-only form; any other name must be valid (a test bug otherwise).
        topic: (!topic.is_empty())
            .then(|| tern::codec::TopicName::new(topic).expect("valid topic")),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        properties: Properties::new(),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// A QoS 0 publish, not retained.
pub fn publish_packet(topic: &str, payload: &[u8]) -> Packet {
    publish(topic, payload, QoS::AtMostOnce, 0, false)
}
