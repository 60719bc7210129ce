//! Interoperability with rumqttc (Rust, tokio), a second independent client implementation, in
//! MQTT 3.1.1 and 5.0, across two shards.

mod common;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    o
}

/// Polls the event loop until `want` returns Some, or fails after 5 s.
async fn until<T>(ev: &mut EventLoop, mut want: impl FnMut(&Packet) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, ev.poll()).await {
            Ok(Ok(Event::Incoming(p))) => {
                if let Some(t) = want(&p) {
                    return t;
                }
            }
            Ok(Ok(Event::Outgoing(_))) => {}
            Ok(Err(e)) => panic!("rumqttc connection error: {e}"),
            Err(_) => panic!("timed out waiting for a packet"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rumqttc_v311_qos_levels_across_shards() {
    let b = common::start();
    let (sub, mut sub_ev) = AsyncClient::new(options("rq-sub", b.shard_addrs[0].port()), 16);
    let (publ, mut pub_ev) = AsyncClient::new(options("rq-pub", b.shard_addrs[1].port()), 16);
    until(&mut sub_ev, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    until(&mut pub_ev, |p| matches!(p, Packet::ConnAck(_)).then_some(())).await;
    sub.subscribe("rq/#", QoS::ExactlyOnce).await.expect("queue subscribe");
    until(&mut sub_ev, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
        publ.publish(format!("rq/{i}"), qos, false, vec![i as u8; 8]).await.expect("queue");
        // Drive the publisher until its acknowledgement (or the write, for QoS 0).
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                if pub_ev.poll().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let got = until(&mut sub_ev, |p| match p {
            Packet::Publish(m) => Some((m.topic.clone(), m.qos, m.payload.clone())),
            _ => None,
        })
        .await;
        assert_eq!(got.0, format!("rq/{i}"));
        assert_eq!(got.1, qos);
        assert_eq!(&got.2[..], &[i as u8; 8][..]);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rumqttc_v5_subscribe_and_publish_across_shards() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
    let b = common::start();
    let mut o = O5::new("rq5-sub", "127.0.0.1", b.shard_addrs[0].port());
    o.set_keep_alive(Duration::from_secs(10));
    let (sub, mut sub_ev) = C5::new(o, 16);
    let mut o = O5::new("rq5-pub", "127.0.0.1", b.shard_addrs[1].port());
    o.set_keep_alive(Duration::from_secs(10));
    let (publ, mut pub_ev) = C5::new(o, 16);
    sub.subscribe("rq5/t", Q5::AtLeastOnce).await.expect("queue subscribe");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut subscribed = false;
    while !subscribed {
        let ev = tokio::time::timeout_at(deadline, sub_ev.poll()).await.expect("in time");
        subscribed = matches!(ev, Ok(E5::Incoming(P5::SubAck(_))));
    }
    publ.publish("rq5/t", Q5::AtLeastOnce, false, b"v5".to_vec()).await.expect("queue");
    let mut acked = false;
    while !acked {
        let ev = tokio::time::timeout_at(deadline, pub_ev.poll()).await.expect("in time");
        acked = matches!(ev, Ok(E5::Incoming(P5::PubAck(_))));
    }
    loop {
        let ev = tokio::time::timeout_at(deadline, sub_ev.poll()).await.expect("in time");
        if let Ok(E5::Incoming(P5::Publish(m))) = ev {
            assert_eq!(&m.topic[..], b"rq5/t");
            assert_eq!(&m.payload[..], b"v5");
            break;
        }
    }
}
