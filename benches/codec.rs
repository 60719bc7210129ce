//! Codec throughput: decode and encode of the packets a broker handles most, per version.
//!
//! - PUBLISH QoS 1 with 16 B, 256 B and 4 KiB payloads, MQTT 3.1.1 and 5.0 (the v5 one carries
//!   Message Expiry Interval and Content Type, as a typical v5 client sends);
//! - CONNECT v5 with connect properties, a will with will properties, user name and password;
//! - SUBSCRIBE with 10 topic filters, 3.1.1 and 5.0 (v5 with a Subscription Identifier).
//!
//! One iteration decodes or encodes exactly one packet, so packets/s = 1 / time; criterion's
//! `thrpt` line is wire bytes/s (`Throughput::Bytes` of the whole encoded packet). Decoding
//! starts from a receive buffer holding that one packet, built outside the timed section; encoding
//! appends to a reused buffer that is cleared each time, as a connection's send buffer is.
//!
//! Run: `cargo bench --bench codec` (add `-- --warm-up-time 1 --measurement-time 3` for a short
//! run, or a name filter such as `-- decode/publish`).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tern::codec::{
    decode, encode, Connect, Packet, PacketId, Properties, Property, ProtocolVersion, Publish, QoS,
    RetainHandling, Subscribe, SubscriptionOptions, Will,
};

/// Largest packet the decoder accepts in these benches; above every case.
const MAX_PACKET_SIZE: usize = 1 << 20;

fn packet_id(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero packet id")
}

fn publish(version: ProtocolVersion, payload_len: usize) -> Packet {
    let properties = if version.is_v5() {
        Properties::from(vec![
            Property::MessageExpiryInterval(3600),
            Property::ContentType("application/json".to_owned()),
        ])
    } else {
        Properties::new()
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Some(
            tern::codec::TopicName::new("sensors/building-7/floor-3/room-12/temperature")
                .expect("valid topic"),
        ),
        packet_id: Some(packet_id(4242)),
        properties,
        payload: Bytes::from(vec![0x5A; payload_len]),
    })
}

fn connect_v5() -> Packet {
    Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive_secs: 60,
        client_id: "sensor-gateway-0042".to_owned(),
        will: Some(Will {
            topic: tern::codec::TopicName::new("clients/sensor-gateway-0042/status")
                .expect("valid topic"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::from(vec![
                Property::WillDelayInterval(30),
                Property::PayloadFormatIndicator(1),
            ]),
        }),
        username: Some("gateway".to_owned()),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
        properties: Properties::from(vec![
            Property::SessionExpiryInterval(3600),
            Property::ReceiveMaximum(100),
            Property::MaximumPacketSize(1 << 20),
            Property::TopicAliasMaximum(16),
            Property::RequestProblemInformation(1),
            Property::UserProperty("region".to_owned(), "eu-west".to_owned()),
        ]),
    }))
}

fn subscribe(version: ProtocolVersion) -> Packet {
    let filters = (0..10)
        .map(|i| {
            let filter = match i % 3 {
                0 => format!("sensors/building-{i}/+/temperature"),
                1 => format!("alerts/zone-{i}/#"),
                _ => format!("devices/gw-{i}/status"),
            };
            let options = SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: version.is_v5() && i % 2 == 0,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            };
            (tern::codec::TopicFilter::new(filter, true).expect("valid filter"), options)
        })
        .collect();
    let properties = if version.is_v5() {
        Properties::from(vec![Property::SubscriptionIdentifier(17)])
    } else {
        Properties::new()
    };
    Packet::Subscribe(Subscribe { packet_id: packet_id(7), filters, properties })
}

/// Every bench case: (name, version, packet).
fn cases() -> Vec<(String, ProtocolVersion, Packet)> {
    let mut cases = Vec::new();
    for (tag, version) in [("v311", ProtocolVersion::V311), ("v5", ProtocolVersion::V5)] {
        for (size, len) in [("16B", 16), ("256B", 256), ("4KiB", 4096)] {
            cases.push((format!("publish_{tag}_{size}"), version, publish(version, len)));
        }
    }
    cases.push(("connect_v5_props".to_owned(), ProtocolVersion::V5, connect_v5()));
    for (tag, version) in [("v311", ProtocolVersion::V311), ("v5", ProtocolVersion::V5)] {
        cases.push((format!("subscribe_{tag}_10_filters"), version, subscribe(version)));
    }
    cases
}

fn wire(packet: &Packet, version: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("bench packets are encodable");
    buf.freeze()
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, version, packet) in cases() {
        let wire = wire(&packet, version);
        // Paired check: the bench measures a successful decode of exactly this packet.
        let mut check = BytesMut::from(&wire[..]);
        let decoded = decode(&mut check, version, MAX_PACKET_SIZE).expect("decodes");
        assert_eq!(decoded.as_ref(), Some(&packet));
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| decode(black_box(&mut buf), version, MAX_PACKET_SIZE),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, version, packet) in cases() {
        let len = wire(&packet, version).len();
        group.throughput(Throughput::Bytes(len as u64));
        let mut buf = BytesMut::with_capacity(len);
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                encode(black_box(&packet), version, &mut buf)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
