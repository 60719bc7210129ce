//! Issue 9 regression, on a small stack: 3 000 pipelined SUBSCRIBEs in one read once recursed
//! `handle_read` -> `complete_suback` -> `handle_read` once per packet and overflowed the shard
//! stack. Every SUBSCRIBE is answered, in order, from one call. Here rather than in the core's
//! unit tests because it needs a thread of its own (the core names no `std::thread`).

use std::time::Instant;

use bytes::BytesMut;
use tern::codec::{
    self, Connect, Packet, PacketId, Properties, ProtocolVersion, Subscribe, SubscriptionOptions,
};
use tern::shard::{Shard, ShardConfig};

const V4: ProtocolVersion = ProtocolVersion::V311;

/// Delivers every queued cross-shard message until the mesh is quiet (at most `rounds` passes).
fn settle(shards: &mut [Shard], rounds: usize, now: Instant) {
    for _ in 0..rounds {
        let mut moved = false;
        for from in 0..shards.len() {
            for to in 0..shards.len() {
                let mut msgs = shards[from].take_control(to, usize::MAX);
                msgs.extend(shards[from].take_batch(to, usize::MAX));
                for m in msgs {
                    moved = true;
                    shards[to].handle_peer(tern::ids::ShardId(from as u16), m, now);
                }
            }
        }
        if !moved {
            return;
        }
    }
}

fn run(shards: u16) -> Vec<Packet> {
    const N: u16 = 3_000;
    let now = Instant::now();
    let mut cluster: Vec<Shard> = (0..shards)
        .map(|i| Shard::new(tern::ids::ShardId(i), ShardConfig::for_tests(shards)))
        .collect();
    let peer = "127.0.0.1:40000".parse().expect("addr");
    let conn = cluster[0].accept(0, peer, now).expect("under the limit");
    let mut buf = BytesMut::new();
    let connect = Packet::Connect(Box::new(Connect {
        version: V4,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: "piper".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::new(),
    }));
    codec::encode(&connect, V4, &mut buf).expect("encodes");
    for i in 1..=N {
        let s = Subscribe {
            packet_id: PacketId::new(i).expect("nonzero"),
            filters: vec![(
                tern::codec::TopicFilter::new("p", true).expect("valid filter"),
                SubscriptionOptions::default(),
            )],
            properties: Properties::new(),
        };
        codec::encode(&Packet::Subscribe(s), V4, &mut buf).expect("encodes");
    }
    cluster[0].handle_read(conn, &buf, now);
    settle(&mut cluster, 2 * usize::from(N), now);
    let mut tx = cluster[0].take_tx(conn, now);
    let mut out = Vec::new();
    while let Some(p) = codec::decode(&mut tx, V4, usize::MAX).expect("broker output decodes") {
        out.push(p);
    }
    out
}

#[test]
fn pipelined_subscribes_do_not_recurse_per_packet() {
    for shards in [1, 2] {
        // On a small stack, so that recursion per packet fails here in release builds too,
        // where frames are smaller than in debug ones.
        let got = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || run(shards))
            .expect("spawn")
            .join()
            .expect("no stack overflow or panic");
        assert!(matches!(got.first(), Some(Packet::ConnAck(_))), "{shards} shards");
        let ids: Vec<u16> = got
            .iter()
            .filter_map(|p| if let Packet::SubAck(a) = p { Some(a.packet_id.get()) } else { None })
            .collect();
        assert_eq!(ids, (1..=3_000).collect::<Vec<_>>(), "{shards} shards: every SUBACK, in order");
    }
}
