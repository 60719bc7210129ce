//! The one support module of the integration tests (`mod common;` in each): a broker on
//! 127.0.0.1 port 0 with two shards, each shard also reachable on a private port (so a test can
//! place a client on a given shard); `client` is the one blocking raw-packet MQTT client, over
//! TCP, TLS or WebSocket; [`eventually`] waits for a condition instead of sleeping;
//! `process` runs the real binary in a scratch directory (`tempfile`); `interop` has test
//! certificates, a TLS client and a WebSocket transport.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern::config::Config;
use tern::runtime::Broker;

pub mod client;
pub mod interop;
pub mod pipe;
pub mod process;

#[allow(unused_imports)] // each test binary uses a different subset
pub use client::{
    connect, connect_packet, encode, pid, publish, publish_packet, subscribe_packet, RawClient,
    Transport,
};

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

impl TestBroker {
    /// Waits until the shards' counters (each shard reports them once a second) satisfy `ok`;
    /// false after [`PATIENCE`].
    pub fn wait_stats(&self, ok: impl Fn(&tern::metrics::Metrics) -> bool) -> bool {
        poll_until(PATIENCE, || ok(&self.stats.total()).then_some(())).is_some()
    }

    /// [`Self::wait_stats`] over one shard's counters.
    pub fn wait_shard_stats(
        &self,
        shard: usize,
        ok: impl Fn(&tern::metrics::Metrics) -> bool,
    ) -> bool {
        poll_until(PATIENCE, || ok(&self.stats.per_shard()[shard]).then_some(())).is_some()
    }
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

/// How long a test waits for a condition that normally holds within milliseconds to a second.
/// Generous: the tests run on a loaded 2-core CI machine, and a wait ends as soon as the
/// condition holds, so only a failing test pays for it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `f` (every 20 ms) until it returns `Some`, or `None` once `timeout` has passed.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Some` (within [`PATIENCE`]), else fails the test with `what`.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(PATIENCE, f).unwrap_or_else(|| panic!("not within {PATIENCE:?}: {what}"))
}

/// Waits until the retained message `payload` on `topic` is in the replica of the shard that
/// serves `addr`: a probe client subscribes (again and again: each SUBSCRIBE re-sends the
/// retained messages, [MQTT-3.3.1-6]) until it arrives. Retained updates reach the replicas in
/// the order shard 0 sequenced them, so once a later update of a publisher is seen, its earlier
/// ones are applied too.
pub fn wait_retained(addr: SocketAddr, topic: &str, payload: &[u8]) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let id = format!("retained-probe-{}", PROBES.fetch_add(1, Ordering::Relaxed));
    let v = tern::codec::ProtocolVersion::V311;
    let (mut probe, _) = RawClient::mqtt_connect(addr, v, &id, true);
    eventually(&format!("retained {topic} at {addr}"), || {
        probe.subscribe(topic, tern::codec::QoS::AtMostOnce);
        while let Some(p) = probe.recv_timeout(Duration::from_millis(100)) {
            if let tern::codec::Packet::Publish(m) = p {
                if m.retain
                    && m.topic.as_deref().unwrap_or("") == topic
                    && m.payload[..] == *payload
                {
                    return Some(());
                }
            }
        }
        None
    });
}
