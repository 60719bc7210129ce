//! What an idle connection costs in the sans-IO shard alone (issue 11): `N` MQTT 3.1.1 clients
//! connect (client ids shaped as `tern-loadtest conn` sends them) and stay; the process's RSS
//! grows by the shard's records only (no sockets, tasks or runtime). Compare with the broker's
//! figure from `tern-loadtest conn` to see what the runtime adds.
//!
//! `cargo test -p tern-core --release --test idle_memory -- --ignored --nocapture`
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::Instant;

// The broker's allocator (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::BytesMut;
use tern_core::codec::{self, Connect, Packet, Properties, ProtocolVersion};
use tern_core::shard::{Shard, ShardConfig};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number");
    kib * 1024
}

#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn idle_connection_records_per_connection() {
    let n: usize =
        std::env::var("TERN_BENCH_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(19_000);
    let mut cfg = ShardConfig::for_tests(1);
    cfg.listeners[0].connections_max = n;
    cfg.sessions_max = n;
    let mut shard = Shard::new(tern_core::ids::ShardId(0), cfg);
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("literal address");
    let now = Instant::now();
    let before = rss_bytes();
    let mut written = BytesMut::new();
    let ids: Vec<_> =
        (0..n).map(|_| shard.accept(0, peer, now).expect("under the limit")).collect();
    let accepted = rss_bytes();
    eprintln!("accepted: {:.0} B per connection", (accepted - before) as f64 / n as f64);
    for (i, &id) in ids.iter().enumerate() {
        let c = Connect {
            version: ProtocolVersion::V311,
            clean_start: true,
            keep_alive_secs: 60,
            client_id: format!("tl-1764107000-c-{i}"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        let mut buf = BytesMut::new();
        codec::encode(&Packet::Connect(Box::new(c)), ProtocolVersion::V311, &mut buf)
            .expect("a CONNECT encodes");
        shard.handle_read(id, &buf, now);
        // As the driver does: take the CONNACK, write it, hand the buffer back.
        shard.swap_tx(id, &mut written, now);
        assert_eq!(written.len(), 4, "CONNACK");
        written.clear();
        shard.swap_tx(id, &mut written, now);
    }
    let after = rss_bytes();
    let per = (after - before) as f64 / n as f64;
    eprintln!("{n} idle connections: RSS {before} -> {after}, {per:.0} B per connection");
}
