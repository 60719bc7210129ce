//! The one support module of the integration tests (`mod common;` in each): a broker on
//! 127.0.0.1 port 0 with two shards, each shard also reachable on a private port (so a test can
//! place a client on a given shard), and a blocking raw-packet client built on the project's
//! codec; `process` runs the real binary in a scratch directory
//! (`tempfile`); `interop` has test certificates, a TLS client, a client over any stream and a
//! WebSocket client.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern::codec::{self, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS};
use tern::config::Config;
use tern::runtime::Broker;

pub mod interop;
pub mod process;

/// A running test broker.
pub struct TestBroker {
    pub broker: Option<Broker>,
    /// The shared SO_REUSEPORT listener.
    pub addr: SocketAddr,
    /// Each shard's private listener, by shard id.
    pub shard_addrs: Vec<SocketAddr>,
    /// Where the shards report their counters.
    pub stats: std::sync::Arc<tern::metrics::StatsBoard>,
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown();
            b.join();
        }
    }
}

/// Starts a broker with `shards` shards and the given config edits.
pub fn start_with(shards: u16, edit: impl FnOnce(&mut Config)) -> TestBroker {
    start_custom(shards, edit, |_| {})
}

/// Starts a broker with config edits and edits of the derived shard settings (for what the
/// configuration file cannot express, such as an in-memory credential store).
pub fn start_custom(
    shards: u16,
    edit: impl FnOnce(&mut Config),
    edit_shard: impl FnOnce(&mut tern::shard::ShardConfig),
) -> TestBroker {
    // RUST_LOG=debug shows the broker's logs in a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = Config::default();
    config.broker.shards = Some(shards);
    config.listeners[0].bind = "127.0.0.1:0".parse().expect("literal");
    config.runtime.pin_cores = false;
    edit(&mut config);
    let mut opts = tern::broker::runtime_options(&config);
    opts.shard_ports = true;
    let stats = std::sync::Arc::clone(&opts.stats);
    let mut shard_cfg = tern::broker::shard_config(&config);
    edit_shard(&mut shard_cfg);
    let broker = Broker::start(opts, shard_cfg).expect("broker starts");
    let addr = broker.local_addrs[0];
    let shard_addrs = broker.shard_addrs.clone();
    assert_eq!(shard_addrs.len(), usize::from(shards));
    TestBroker { broker: Some(broker), addr, shard_addrs, stats }
}

/// Starts a broker with two shards and default limits.
pub fn start() -> TestBroker {
    start_with(2, |_| {})
}

/// A blocking MQTT client speaking raw packets through the project's codec.
pub struct RawClient {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    buf: BytesMut,
    /// PUBLISHes that arrived before the SUBACK `subscribe` waited for: returned first by the
    /// next receive.
    early: std::collections::VecDeque<Packet>,
}

impl RawClient {
    pub fn connect_tcp(addr: SocketAddr, version: ProtocolVersion) -> Self {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        Self { stream, version, buf: BytesMut::new(), early: Default::default() }
    }

    pub fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.version, &mut out).expect("encode");
        self.stream.write_all(&out).expect("write");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next packet, or None on EOF / timeout.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Packet> {
        if let Some(p) = self.early.pop_front() {
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
                Err(_) => return None,
            }
        }
    }

    pub fn recv(&mut self) -> Packet {
        self.recv_timeout(Duration::from_secs(5)).expect("a packet within 5 s")
    }

    /// True once the broker has closed the connection (EOF) within `timeout`, skipping packets.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let _ = self.buf.split();
            let mut chunk = [0u8; 4096];
            self.stream.set_read_timeout(Some(Duration::from_millis(50))).ok();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
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
        match c.recv() {
            Packet::ConnAck(a) => {
                assert_eq!(a.reason, codec::ReasonCode::Success, "CONNACK refused: {a:?}");
                (c, a.session_present)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes and waits for the SUBACK. Matching PUBLISHes (retained ones) may come
    /// before it ("The Server is permitted to start sending PUBLISH packets matching the
    /// Subscription before the Server sends the SUBACK", §3.8.4; with persistence the SUBACK
    /// waits for the log and they do not): they are kept for the next receive.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&interop::subscribe_packet(filter, qos, 1));
        let mut early = std::collections::VecDeque::new();
        // Bounded: a SUBACK within 100 packets.
        for _ in 0..100 {
            match self.recv() {
                Packet::SubAck(a) => {
                    assert!(!a.reasons[0].is_error(), "SUBACK refused: {a:?}");
                    early.append(&mut self.early);
                    self.early = early;
                    return;
                }
                p @ Packet::Publish(_) => early.push_back(p),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
        panic!("no SUBACK in 100 packets");
    }

    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, id: u16, retain: bool) {
        self.send(&publish(topic, payload, qos, id, retain));
    }

    /// Receives until a PUBLISH arrives (acks and others are returned in `skipped`).
    pub fn recv_publish(&mut self) -> Publish {
        for _ in 0..100 {
            if let Packet::Publish(p) = self.recv() {
                return p;
            }
        }
        panic!("no PUBLISH in 100 packets");
    }
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

pub fn publish(topic: &str, payload: &[u8], qos: QoS, id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        properties: Properties::new(),
        payload: Bytes::copy_from_slice(payload),
    })
}
