//! Flow control against a running broker (issue 10): a QoS 1 flood into a subscriber that reads
//! slowly loses nothing across shards (the publisher is slowed, then resumed), and a
//! subscriber's PINGREQs are read while its output is still pending (full duplex).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{publish, start_with, RawClient};
use tern::codec::{self, Packet, ProtocolVersion, PubResp, QoS};

const V4: ProtocolVersion = ProtocolVersion::V311;

/// 20 000 QoS 1 messages pipelined from shard 1 into a subscriber on shard 0 that reads nothing
/// until the publisher has been paused: every PUBACKed message arrives, in order, once; the publisher was paused by
/// a Pause message across shards and resumed; nothing was dropped.
#[test]
fn qos1_flood_across_shards_loses_nothing() {
    const N: u16 = 20_000;
    let b = start_with(2, |c| {
        c.limits.flow_high_water_messages = 200;
        c.limits.flow_low_water_messages = 100;
    });
    let (mut sub, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "slow-sub", true);
    sub.subscribe("flood", QoS::AtLeastOnce);
    let (publ, _) = RawClient::mqtt_connect(b.shard_addrs[1], V4, "flooder", true);
    let mut writer = publ.stream.try_clone().expect("clone");
    let mut reader = publ;
    // Acks are read on their own thread so the publisher never stops on its own account.
    let acks = std::thread::spawn(move || {
        let mut n = 0u32;
        while n < u32::from(N) {
            match reader.recv_timeout(Duration::from_secs(30)) {
                Some(Packet::PubAck(_)) => n += 1,
                Some(p) => panic!("PUBACK expected, got {p:?}"),
                None => break,
            }
        }
        n
    });
    let pubs = std::thread::spawn(move || {
        let mut out = BytesMut::new();
        for seq in 1..=N {
            let p = publish("flood", &u64::from(seq).to_be_bytes(), QoS::AtLeastOnce, seq, false);
            codec::encode(&p, V4, &mut out).expect("encode");
            if out.len() > 16 * 1024 {
                // Blocks when the broker stops reading: that is the back-pressure.
                writer.write_all(&out).expect("write");
                out.clear();
            }
        }
        writer.write_all(&out).expect("write");
        writer
    });
    // The subscriber reads nothing until the flood has paused the publisher.
    assert!(b.wait_stats(|m| m.flow_pauses > 0), "the publisher was paused");
    let mut next = 1u64;
    while next <= u64::from(N) {
        let Some(p) = sub.recv_timeout(Duration::from_secs(20)) else {
            // The shards' counters tell a publisher left paused from a lost delivery.
            panic!("delivery stopped at {next} of {N}; per shard: {:#?}", b.stats.per_shard());
        };
        let Packet::Publish(p) = p else { continue };
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&p.payload[..8]);
        assert_eq!(u64::from_be_bytes(seq), next, "in order, once");
        next += 1;
        if let Some(id) = p.packet_id {
            sub.send(&Packet::PubAck(PubResp::success(id)));
        }
    }
    let _writer = pubs.join().expect("publisher thread");
    assert_eq!(acks.join().expect("ack thread"), u32::from(N), "every PUBLISH acknowledged");
    assert!(b.wait_stats(|m| m.flow_resumes >= m.flow_pauses && m.flow_paused_publishers == 0));
    let m = b.stats.total();
    assert_eq!(m.messages_dropped(), 0, "{m:?}");
}

/// Full duplex: a subscriber that does not read its output for 5 s while the broker's write to
/// it is blocked keeps its connection alive with PINGREQs every second (keep alive 2 s: the
/// broker closes after 3 s without a packet it has read, [MQTT-3.1.2-24]). A driver that read
/// only after its pending output was written would miss them and time the client out. Then
/// every message arrives.
#[test]
fn pingreqs_are_read_while_output_is_pending() {
    const N: u16 = 200;
    let b = start_with(1, |_| {});
    let mut sub = RawClient::connect_tcp(b.shard_addrs[0], V4);
    sub.send(&common::connect(V4, "stalled", true, 2));
    assert!(matches!(sub.recv(), Packet::ConnAck(_)));
    sub.subscribe("big", QoS::AtMostOnce);
    let (mut publ, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "big-pub", true);
    let payload = vec![0x5a; 64 * 1024];
    for seq in 1..=N {
        publ.publish("big", &payload, QoS::AtMostOnce, seq, false);
    }
    // 12.8 MB: more than the loopback socket buffers take, so the broker's write blocks.
    let start = Instant::now();
    let mut ping = BytesMut::new();
    codec::encode(&Packet::PingReq, V4, &mut ping).expect("encode");
    while start.elapsed() < Duration::from_secs(5) {
        sub.send_raw(&ping);
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut got = 0;
    let mut pongs = 0;
    // The client keeps its keep alive while it reads (a slow debug-build reader on a busy
    // machine may take more than 3 s after the last PINGREQ above).
    let mut last_ping = Instant::now();
    while got < N {
        if last_ping.elapsed() >= Duration::from_secs(1) {
            sub.send_raw(&ping);
            last_ping = Instant::now();
        }
        match sub.recv_timeout(Duration::from_secs(10)) {
            Some(Packet::Publish(_)) => got += 1,
            Some(Packet::PingResp) => pongs += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("connection closed or stalled after {got} of {N} messages"),
        }
    }
    // Each PINGREQ was read while the output was blocked; the PINGRESPs queue behind the
    // deliveries, so the first ones arrive with them.
    assert!(pongs >= 1, "PINGREQs answered");
    assert!(b.wait_stats(|m| m.keepalive_timeouts == 0 && m.messages_sent >= u64::from(N)));
}

/// Fair turns: while one connection floods its shard with QoS 0 publishes (to a subscriber that
/// reads), a probe pair on the same shard at 200 msg/s still gets its messages through within
/// a few milliseconds: the flooder is read one buffer per turn and preempted every
/// `runtime.preempt_timer_us`, not allowed to hold the shard for glommio's default 100 ms.
///
/// Ignored by default: on a shared 2-vCPU machine at load 10-20 and in a debug build one turn of
/// the flooder (a 64 KiB read, ~800 publishes) takes tens of milliseconds of wall time, so any
/// bound tight enough to mean something is noise there. Run it in release on a quiet machine:
/// `cargo test --release --test flow -- --ignored` (`TERN_TEST_PREEMPT_US=100000` for the old
/// timer, to compare).
#[test]
#[ignore = "timing: release build on a quiet machine"]
fn a_flooding_publisher_does_not_starve_a_probe_on_the_same_shard() {
    let preempt: u32 =
        std::env::var("TERN_TEST_PREEMPT_US").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    let b = start_with(1, |c| c.runtime.preempt_timer_us = preempt);
    let addr = b.shard_addrs[0];
    let (mut sink, _) = RawClient::mqtt_connect(addr, V4, "sink", true);
    sink.subscribe("flood", QoS::AtMostOnce);
    let (mut probe_sub, _) = RawClient::mqtt_connect(addr, V4, "probe-sub", true);
    probe_sub.subscribe("probe", QoS::AtMostOnce);
    let (mut probe_pub, _) = RawClient::mqtt_connect(addr, V4, "probe-pub", true);
    let (flooder, _) = RawClient::mqtt_connect(addr, V4, "flooder", true);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink_thread = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; 1 << 16];
            sink.stream.set_read_timeout(Some(Duration::from_millis(100))).ok();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sink.stream.read(&mut chunk);
            }
        })
    };
    let flood_thread = {
        let stop = std::sync::Arc::clone(&stop);
        let mut w = flooder.stream;
        std::thread::spawn(move || {
            let mut batch = BytesMut::new();
            for _ in 0..500 {
                let p = publish("flood", &[0u8; 64], QoS::AtMostOnce, 1, false);
                codec::encode(&p, V4, &mut batch).expect("encode");
            }
            // Bounded: 30 s at most, or until the probe is done.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if w.write_all(&batch).is_err() {
                    break;
                }
            }
        })
    };
    // The flood is running before the probes start.
    assert!(b.wait_stats(|m| m.messages_received > 1_000), "the flood started");
    let mut lat = Vec::new();
    for i in 0..200u16 {
        let sent = Instant::now();
        probe_pub.publish("probe", &i.to_be_bytes(), QoS::AtMostOnce, 1, false);
        let Some(Packet::Publish(_)) = probe_sub.recv_timeout(Duration::from_secs(5)) else {
            panic!("probe {i} not delivered");
        };
        lat.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood_thread.join().expect("flood thread");
    sink_thread.join().expect("sink thread");
    lat.sort();
    let p90 = lat[lat.len() * 9 / 10];
    let m = b.stats.total();
    eprintln!(
        "probe latency p50 {:?} p90 {:?} max {:?}; {m:?}",
        lat[lat.len() / 2],
        p90,
        lat[lat.len() - 1]
    );
    assert!(m.messages_received > 10_000, "the flood ran: {}", m.messages_received);
    // A flooder holding the shard for 100 ms turns would put p90 near 100 ms.
    assert!(p90 < Duration::from_millis(5), "probe p90 {p90:?}");
}
