//! `$SYS/broker/...` topics and the Prometheus endpoint, end to end on a two-shard broker.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{start_with, RawClient};
use tern::codec::{Packet, ProtocolVersion, QoS};

const V4: ProtocolVersion = ProtocolVersion::V311;

#[test]
fn sys_topics_are_published_and_retained() {
    let b = start_with(2, |c| c.broker.sys_interval_secs = 1);
    let (mut p, _) = RawClient::mqtt_connect(b.shard_addrs[1], V4, "sys-pub", true);
    for i in 0..5u16 {
        p.publish("data/x", b"v", QoS::AtLeastOnce, i + 1, false);
        assert!(matches!(p.recv(), Packet::PubAck(_)));
    }
    // A first subscriber reads the $SYS rounds (one a second) until one reports the publishes.
    let (mut watch, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "sys-watch", true);
    watch.subscribe("$SYS/broker/messages/received", QoS::AtMostOnce);
    common::eventually("a $SYS round counting the 5 publishes", || {
        let m = watch.recv_publish();
        (String::from_utf8_lossy(&m.payload).parse::<u64>().ok()? >= 5).then_some(())
    });
    // A later subscriber gets the values of that round at once: they are retained
    // ([MQTT-3.3.1-6]), flagged RETAIN ([MQTT-3.3.1-8]).
    let (mut s, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "sys-sub", true);
    s.subscribe("$SYS/broker/#", QoS::AtMostOnce);
    let mut seen = std::collections::HashMap::new();
    // Read until every topic checked below has arrived: the broker publishes many more $SYS
    // topics than these, in no promised order.
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/messages/received",
        "$SYS/broker/clients/connected",
        "$SYS/broker/uptime",
        "$SYS/broker/subscriptions/count",
    ];
    let deadline = Instant::now() + common::PATIENCE;
    while !wanted.iter().all(|t| seen.contains_key(*t)) && Instant::now() < deadline {
        if let Some(Packet::Publish(m)) = s.recv_timeout(Duration::from_millis(500)) {
            if wanted.contains(&m.topic.as_deref().unwrap_or(""))
                && !seen.contains_key(m.topic.as_deref().unwrap_or(""))
            {
                assert!(
                    m.retain,
                    "the first {} is the retained value",
                    m.topic.as_deref().unwrap_or("")
                );
            }
            seen.entry(m.topic.as_deref().unwrap_or("").to_owned())
                .or_insert_with(|| String::from_utf8_lossy(&m.payload).to_string());
        }
    }
    let missing: Vec<_> = wanted.iter().filter(|t| !seen.contains_key(**t)).collect();
    assert!(missing.is_empty(), "not received: {missing:?}");
    assert!(seen["$SYS/broker/version"].starts_with("tern "));
    let received: u64 = seen["$SYS/broker/messages/received"].parse().expect("a number");
    assert!(received >= 5, "{received}");
    let connected: u64 = seen["$SYS/broker/clients/connected"].parse().expect("a number");
    assert!(connected >= 1);
    assert!(seen.contains_key("$SYS/broker/uptime"));
    assert!(seen.contains_key("$SYS/broker/subscriptions/count"));
}

#[test]
fn wildcard_subscriptions_do_not_see_sys() {
    // [MQTT-4.7.2-1]: '#' does not match topics beginning with '$'.
    let b = start_with(2, |c| c.broker.sys_interval_secs = 1);
    let (mut s, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "hash", true);
    s.subscribe("#", QoS::AtMostOnce);
    // A $SYS round after the subscription (not a retained value): delivered on the same shard
    // in the same turn as it would be to `#`.
    let (mut sys, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "sys", true);
    sys.subscribe("$SYS/broker/uptime", QoS::AtMostOnce);
    common::eventually("a live $SYS round", || (!sys.recv_publish().retain).then_some(()));
    assert!(s.recv_timeout(Duration::from_millis(300)).is_none());
}

#[test]
fn prometheus_endpoint_serves_per_shard_counters_without_a_double_counting_total() {
    let b = start_with(2, |_| {});
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = tern::admin::AdminState {
        stats: b.stats.clone(),
        shards: Vec::new(),
        token: None,
        ready: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        stop: stop.clone(),
        limits: tern::admin::AdminLimits::from_config(&Default::default()),
        counters: Default::default(),
    };
    let handle = tern::admin::serve(listener, std::sync::Arc::new(state)).expect("serve");
    let (mut s, _) = RawClient::mqtt_connect(b.shard_addrs[0], V4, "m-sub", true);
    s.subscribe("m", QoS::AtMostOnce);
    let (mut p, _) = RawClient::mqtt_connect(b.shard_addrs[1], V4, "m-pub", true);
    p.publish("m", b"x", QoS::AtMostOnce, 0, false);
    assert!(matches!(s.recv(), Packet::Publish(_)));
    // Each shard reports once a second, on its own: read until both reports after the publish
    // are served.
    let wanted = [
        "tern_messages_received_total{shard=\"1\"} 1\n",
        "tern_messages_sent_total{shard=\"0\"} 1\n",
        "tern_publish_latency_seconds_count 1\n",
    ];
    let mut body = String::new();
    let served = common::poll_until(common::PATIENCE, || {
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").expect("write");
        body.clear();
        conn.read_to_string(&mut body).expect("read");
        wanted.iter().all(|w| body.contains(w)).then_some(())
    });
    assert!(served.is_some(), "{wanted:?} not in {body}");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    // `sum(tern_connections_current)` is the total: no `shard="total"` series doubles it.
    let connections: u64 = body
        .lines()
        .filter(|l| l.starts_with("tern_connections_current{"))
        .map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).expect("a value"))
        .sum();
    assert_eq!(connections, 2, "{body}");
    assert!(!body.contains("shard=\"total\""), "{body}");
    assert!(body.contains("tern_publish_latency_seconds_count 1"), "{body}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    handle.join().expect("endpoint thread");
}

/// Reads the child's stdout lines on a thread.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needles: &[&str]) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn logs_name_the_connection_in_connect_disconnect_events() {
    // The real binary, with its own logging setup: RUST_LOG picks the level.
    let dir = std::env::temp_dir().join(format!("tern-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("tern.toml");
    std::fs::write(&config, "[[listener]]\nbind = \"127.0.0.1:0\"\n").expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["--config", &config.display().to_string(), "--shards", "2"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start tern");
    let rx = lines_of(&mut child);
    let line = wait_line(&rx, &["listening"]).expect("listening line");
    let addr: std::net::SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("address in the listening line");
    let (mut c, _) = RawClient::mqtt_connect(addr, V4, "log-probe", true);
    let connected = wait_line(&rx, &["connected", "log-probe"]);
    c.send(&Packet::Disconnect(tern::codec::ReasonPacket::new(tern::codec::ReasonCode::Success)));
    let disconnected = wait_line(&rx, &["disconnected", "ClientDisconnect"]);
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let connected = connected.expect("a connect event");
    // At info the events name the connection themselves (the per-connection span is a debug
    // span: at info it would hold ~0.7 KB for every idle connection, issue 11).
    assert!(connected.contains("shard="), "event with shard: {connected}");
    assert!(connected.contains("peer=127.0.0.1:"), "event with peer: {connected}");
    assert!(connected.contains("client_id=\"log-probe\""), "event with client id: {connected}");
    let disconnected = disconnected.expect("a disconnect event with its reason");
    assert!(
        disconnected.contains("client_id=\"log-probe\""),
        "event with client id: {disconnected}"
    );
    assert!(disconnected.contains("peer=127.0.0.1:"), "event with peer: {disconnected}");
}
