//! The cost of one delivery in the sans-IO shard (issue 10, "cheaper messages"): one MQTT 5
//! publisher, 20 MQTT 5 subscribers of `bench/#` at QoS 1, 100 000 publishes of 64 B to one topic,
//! every other one at QoS 1. Printed: shard time per delivery and per publish.
//!
//! `cargo test -p tern-core --release --test fanout -- --ignored --nocapture`
//! (`TERN_BENCH_PUBLISHES`, `TERN_BENCH_SUBSCRIBERS`, `TERN_BENCH_BATCH` change the shape;
//! `TERN_BENCH_READ_BYTES=N` cuts the publisher's input into reads of N bytes instead, most of
//! them ending inside a packet).
//!
//! The publisher's packets arrive `TERN_BENCH_BATCH` (default 16) to a read, as a socket read of a
//! busy publisher hands them over. Timed: only the shard's calls (the publisher's reads, each
//! subscriber's output turn and its PUBACKs); the clients' encoding and decoding are not. Not
//! a criterion bench: one number per run, to compare builds side by side in one window.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

// The broker's allocator (src/main.rs): allocation costs are part of what this measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::BytesMut;
use tern_core::codec::{
    self, Connect, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions, TopicFilter, TopicName,
};
use tern_core::shard::{ConnId, Shard, ShardConfig};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn encode(p: &Packet, out: &mut BytesMut) {
    codec::encode(p, V5, out).expect("the bench's packets encode");
}

fn connect(shard: &mut Shard, name: &str, now: Instant) -> ConnId {
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("literal address");
    let id = shard.accept(0, peer, now).expect("under connections_max");
    let c = Connect {
        version: V5,
        clean_start: true,
        keep_alive_secs: 0,
        client_id: name.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let mut buf = BytesMut::new();
    encode(&Packet::Connect(Box::new(c)), &mut buf);
    shard.handle_read(id, &buf, now);
    assert!(!shard.take_tx(id, now).is_empty(), "CONNACK for {name}");
    id
}

/// Scans a subscriber's output (the PUBLISH frames of this bench only, parsed by hand so
/// the client's side costs little in a profile): the PUBACKs it owes go into `acks`; returns
/// the PUBLISH count.
fn answer(out: &[u8], acks: &mut BytesMut) -> usize {
    let mut n = 0;
    let mut at = 0;
    while at < out.len() {
        let first = out[at];
        let (len, used) = codec::primitives::decode_varint(&out[at + 1..])
            .expect("a valid length")
            .expect("whole frames");
        let body = &out[at + 1 + used..at + 1 + used + len];
        if first >> 4 == 3 {
            n += 1;
            if (first >> 1) & 0b11 == 1 {
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let pid = &body[2 + topic_len..4 + topic_len];
                // PUBACK, Success, no properties (v5 §3.4.2.1).
                acks.extend_from_slice(&[0x40, 2, pid[0], pid[1]]);
            }
        }
        at += 1 + used + len;
    }
    n
}

#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn fan_out_cost_per_delivery() {
    let publishes = env("TERN_BENCH_PUBLISHES", 100_000);
    let subscribers = env("TERN_BENCH_SUBSCRIBERS", 20);
    let batch = env("TERN_BENCH_BATCH", 16).max(1);
    let read_bytes = env("TERN_BENCH_READ_BYTES", 0);
    let mut cfg = ShardConfig::for_tests(1);
    cfg.listeners[0].connections_max = subscribers + 1;
    let mut shard = Shard::new(tern_core::ids::ShardId(0), cfg);
    let now = Instant::now();
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let id = connect(&mut shard, &format!("sub-{i}"), now);
        let s = Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            filters: vec![(
                TopicFilter::new("bench/#", true).expect("valid filter"),
                SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            )],
            properties: Properties::default(),
        };
        let mut buf = BytesMut::new();
        encode(&Packet::Subscribe(s), &mut buf);
        shard.handle_read(id, &buf, now);
        assert!(!shard.take_tx(id, now).is_empty(), "SUBACK for subscriber {i}");
        subs.push(id);
    }
    let publisher = connect(&mut shard, "pub", now);
    let topic = TopicName::new("bench/building-7/floor-3/temperature").expect("valid topic");
    let payload = bytes::Bytes::from(vec![0x5A; 64]);
    // The publisher's reads, encoded before the clock starts.
    let mut reads = Vec::new();
    let mut buf = BytesMut::new();
    for i in 0..publishes {
        let qos1 = i % 2 == 1;
        let p = Publish {
            dup: false,
            qos: if qos1 { QoS::AtLeastOnce } else { QoS::AtMostOnce },
            retain: false,
            topic: Some(topic.clone()),
            packet_id: qos1.then(|| PacketId::new((i % 60_000 + 1) as u16).expect("non-zero")),
            properties: Properties::default(),
            payload: payload.clone(),
        };
        encode(&Packet::Publish(p), &mut buf);
        if read_bytes == 0 && ((i + 1) % batch == 0 || i + 1 == publishes) {
            reads.push(buf.split().freeze());
        }
    }
    // Reads of a fixed size instead, cut anywhere in a packet, as a socket's are.
    while read_bytes > 0 && !buf.is_empty() {
        reads.push(buf.split_to(read_bytes.min(buf.len())).freeze());
    }
    let cpu_start = on_cpu_ns();
    let mut timed = Duration::ZERO;
    let mut delivered = 0usize;
    let mut out = vec![BytesMut::new(); subscribers];
    let mut acks = BytesMut::new();
    let mut pub_out = BytesMut::new();
    for read in &reads {
        let start = Instant::now();
        shard.handle_read(publisher, read, now);
        shard.swap_tx(publisher, &mut pub_out, now);
        shard.output_unwritten(publisher, 0, now);
        for (i, &id) in subs.iter().enumerate() {
            shard.swap_tx(id, &mut out[i], now);
            shard.output_unwritten(id, 0, now);
        }
        timed += start.elapsed();
        pub_out.clear();
        for (i, &id) in subs.iter().enumerate() {
            delivered += answer(&out[i], &mut acks);
            out[i].clear();
            if !acks.is_empty() {
                let start = Instant::now();
                shard.handle_read(id, &acks, now);
                timed += start.elapsed();
                acks.clear();
            }
        }
    }
    // The whole loop on the CPU (the clients' small share included): unlike the wall time, it
    // leaves out the time other processes held the core, on a shared machine.
    let cpu = on_cpu_ns().zip(cpu_start).map(|(end, start)| end.saturating_sub(start));
    let m = &shard.metrics;
    if let Some(cpu) = cpu {
        println!(
            "fan-out on-CPU: {:.1} ns per delivery ({subscribers} subscribers)",
            cpu as f64 / delivered.max(1) as f64
        );
    }
    println!(
        "fan-out: 1 publisher, {subscribers} v5 subscribers, {publishes} publishes (half QoS 1, \
         {batch} per read): {delivered} deliveries, {:.1} ns per delivery, {:.0} ns per publish, \
         {:.1} ms in the shard",
        timed.as_nanos() as f64 / delivered.max(1) as f64,
        timed.as_nanos() as f64 / publishes.max(1) as f64,
        timed.as_secs_f64() * 1e3,
    );
    assert_eq!(m.messages_received, publishes as u64, "every publish was read");
    // Every QoS 1 copy arrives (acknowledged as it comes); QoS 0 copies too at this pace.
    assert_eq!(delivered, publishes * subscribers, "nothing dropped");
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`; `None` without it).
fn on_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Issue 10, "cross-shard batches without a fresh `Vec` per flush": what the fresh `Vec` costs.
/// One thread fills batches of `n` publishes as the flusher does (`Shard::take_batch` collects
/// them into a new `Vec`) and sends them to a second thread, which handles each message (drops
/// it here) and frees the `Vec`, as a receiving shard does; or, reused, sends the emptied
/// `Vec` back on a bounded return channel for the next batch. Printed: ns per message of both.
///
/// `cargo test -p tern-core --release --test fanout mesh_batch -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
fn mesh_batch_vec_fresh_or_reused() {
    use std::sync::mpsc;
    use tern_core::session::Message;
    use tern_core::shard::ShardMsg;
    let topic = TopicName::new("bench/building-7/floor-3/temperature").expect("valid topic");
    let msg = Message::new(topic, bytes::Bytes::from(vec![0x5A; 64]), QoS::AtMostOnce, false);
    let messages = env("TERN_BENCH_MESH_MESSAGES", 2_000_000);
    println!("size_of::<ShardMsg>() = {} B", std::mem::size_of::<ShardMsg>());
    for n in [1usize, 4, 16, 64] {
        for reuse in [false, true] {
            let (tx, rx) = mpsc::sync_channel::<Vec<ShardMsg>>(1024);
            let (back_tx, back_rx) = mpsc::sync_channel::<Vec<ShardMsg>>(2);
            let receiver = std::thread::spawn(move || {
                let start = on_cpu_ns();
                for mut batch in rx {
                    for m in batch.drain(..) {
                        drop(m);
                    }
                    if reuse {
                        let _ = back_tx.try_send(batch);
                    }
                }
                on_cpu_ns().zip(start).map(|(e, s)| e - s)
            });
            let start = on_cpu_ns();
            for _ in 0..messages / n {
                let mut batch = if reuse {
                    back_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(n))
                } else {
                    Vec::with_capacity(n)
                };
                batch.extend((0..n).map(|_| ShardMsg::Publish {
                    msg: msg.clone(),
                    normal: true,
                    shared: Vec::new(),
                }));
                tx.send(batch).expect("receiver runs");
            }
            drop(tx);
            let sent = on_cpu_ns().zip(start).map(|(e, s)| e - s).unwrap_or(0);
            let received = receiver.join().expect("receiver thread").unwrap_or(0);
            let per = |ns: u64| ns as f64 / (messages / n * n) as f64;
            println!(
                "mesh batches of {n:>2}, {}: sender {:.1} ns/msg, receiver {:.1} ns/msg on-CPU",
                if reuse { "Vec reused" } else { "fresh Vec " },
                per(sent),
                per(received),
            );
        }
    }
}
