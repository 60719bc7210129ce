//! Bridges against a real Mosquitto (the Debian package, installed by `scripts/test.sh`; these
//! tests fail, never skip, without it), started by the test: both directions, prefixes, no loop
//! on "both", QoS 1 messages queued while the remote is down and delivered when it is back, and
//! a bridge over mutual TLS.

mod common;
use common::interop as support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{free_port, TempDir, Tern};
use common::RawClient;
use tern::codec::{Packet, ProtocolVersion, QoS};

const V4: ProtocolVersion = ProtocolVersion::V311;

/// A Mosquitto on 127.0.0.1:`port`, with persistence in `dir` (so sessions survive a restart).
struct Mosquitto(Child);

impl Mosquitto {
    fn start(dir: &TempDir, port: u16) -> Mosquitto {
        Mosquitto::start_with(dir, port, "")
    }

    /// With `extra` configuration lines after the plain listener on `port`.
    fn start_with(dir: &TempDir, port: u16, extra: &str) -> Mosquitto {
        let conf = dir.file(
            "mosquitto.conf",
            &format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nuser root\n{extra}",
                dir.0.display()
            ),
        );
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("mosquitto is installed (scripts/test.sh installs the Debian package)");
        let child = Command::new(bin)
            .args(["-c", &conf.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        common::eventually("mosquitto listens", || std::net::TcpStream::connect(addr).ok());
        Mosquitto(child)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The PUBLISH packets received within `wait`, as (topic, payload).
fn drain(c: &mut RawClient, wait: Duration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.recv_timeout(left) {
            Some(Packet::Publish(p)) => {
                if let Some(id) = p.packet_id {
                    c.send(&Packet::PubAck(tern::codec::PubResp::success(id)));
                }
                out.push((
                    p.topic.as_deref().unwrap_or("").to_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
            }
            Some(_) => {}
            None => break,
        }
    }
    out
}

/// The value of `series` (e.g. `tern_bridge_connected{bridge="cloud"}`) in `/metrics`.
fn metric(admin: SocketAddr, series: &str) -> Option<u64> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{admin}/metrics")])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok());
    value
}

/// Waits until the bridge's connected gauge reads `want`.
fn wait_connected(admin: SocketAddr, want: u64) {
    common::eventually(&format!("bridge connected == {want}"), || {
        (metric(admin, "tern_bridge_connected{bridge=\"cloud\"}") == Some(want)).then_some(())
    });
}

/// Starts tern and returns it with its MQTT and admin addresses, once the bridge is up.
fn start_tern(dir: &TempDir, config: &str) -> (Tern, SocketAddr, SocketAddr) {
    let tern = Tern::start(&dir.file("tern.toml", config), &[]);
    let local = tern.listening();
    let admin = common::process::address_in(
        &tern.wait_line(&["admin HTTP listening"]).expect("admin line"),
    );
    wait_connected(admin, 1);
    (tern, local, admin)
}

fn publish_acked(c: &mut RawClient, topic: &str, payload: &str, id: u16) {
    c.publish(topic, payload.as_bytes(), QoS::AtLeastOnce, id, false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(Packet::PubAck(_)) = c.recv_timeout(Duration::from_millis(500)) {
            return;
        }
    }
    panic!("no PUBACK for {topic}");
}

fn bridge_config(tern_port: u16, mosquitto_port: u16, protocol: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:{tern_port}\"\n\n\
         [[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:{mosquitto_port}\"\n\
         protocol = \"{protocol}\"\nreconnect_min_secs = 1\nreconnect_max_secs = 2\n\
         [[bridge.topic]]\nfilter = \"out/#\"\ndirection = \"out\"\nqos = 1\n\
         [[bridge.topic]]\nfilter = \"in/#\"\ndirection = \"in\"\nqos = 1\n\
         [[bridge.topic]]\nfilter = \"both/#\"\ndirection = \"both\"\nqos = 1\n\
         [[bridge.topic]]\nfilter = \"p/#\"\ndirection = \"out\"\nlocal_prefix = \"site1/\"\n\
         remote_prefix = \"cloud/site1/\"\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n"
    )
}

fn both_directions_and_no_loop(protocol: &str) {
    let dir = TempDir::new(&format!("bridge-{protocol}"));
    let (tern_port, mosq_port) = (free_port(), free_port());
    let _mosquitto = Mosquitto::start(&dir, mosq_port);
    let mosq: SocketAddr = format!("127.0.0.1:{mosq_port}").parse().expect("addr");
    let (_tern, local, admin) = start_tern(&dir, &bridge_config(tern_port, mosq_port, protocol));

    let (mut remote_sub, _) = RawClient::mqtt_connect(mosq, V4, "remote-sub", true);
    for f in ["out/#", "both/#", "cloud/site1/#"] {
        remote_sub.subscribe(f, QoS::AtLeastOnce);
    }
    let (mut local_sub, _) = RawClient::mqtt_connect(local, V4, "local-sub", true);
    for f in ["in/#", "both/#"] {
        local_sub.subscribe(f, QoS::AtLeastOnce);
    }
    let (mut local_pub, _) = RawClient::mqtt_connect(local, V4, "local-pub", true);
    let (mut remote_pub, _) = RawClient::mqtt_connect(mosq, V4, "remote-pub", true);

    publish_acked(&mut local_pub, "out/a", "1", 1);
    publish_acked(&mut local_pub, "site1/p/x", "2", 2);
    publish_acked(&mut local_pub, "both/l", "3", 3);
    publish_acked(&mut remote_pub, "in/b", "4", 4);
    publish_acked(&mut remote_pub, "both/r", "5", 5);
    let mut at_remote = drain(&mut remote_sub, Duration::from_secs(2));
    let mut at_local = drain(&mut local_sub, Duration::from_secs(1));
    at_remote.sort();
    at_local.sort();
    // Each message exactly once on each side: a "both" message is not sent back over the
    // bridge (which would deliver it a second time).
    let pair = |t: &str, p: &str| (t.to_owned(), p.to_owned());
    assert_eq!(
        at_remote,
        [
            pair("both/l", "3"),
            pair("both/r", "5"),
            pair("cloud/site1/p/x", "2"),
            pair("out/a", "1")
        ],
        "{protocol}"
    );
    assert_eq!(
        at_local,
        [pair("both/l", "3"), pair("both/r", "5"), pair("in/b", "4")],
        "{protocol}"
    );
    assert_eq!(metric(admin, "tern_bridge_sent_total{bridge=\"cloud\"}"), Some(3));
    assert_eq!(metric(admin, "tern_bridge_received_total{bridge=\"cloud\"}"), Some(2));
}

#[test]
fn bridge_to_mosquitto_v311_both_directions_without_loops() {
    both_directions_and_no_loop("3.1.1");
}

#[test]
fn bridge_to_mosquitto_v5_both_directions_without_loops() {
    both_directions_and_no_loop("5");
}

#[test]
fn messages_wait_while_the_remote_restarts() {
    let dir = TempDir::new("bridge-restart");
    let (tern_port, mosq_port) = (free_port(), free_port());
    let mut mosquitto = Mosquitto::start(&dir, mosq_port);
    let mosq: SocketAddr = format!("127.0.0.1:{mosq_port}").parse().expect("addr");
    let (_tern, local, admin) = start_tern(&dir, &bridge_config(tern_port, mosq_port, "3.1.1"));
    // A persistent subscriber at the remote, so the remote keeps its queue over the restart.
    let (mut sub, _) = RawClient::mqtt_connect(mosq, V4, "remote-durable", false);
    sub.subscribe("out/#", QoS::AtLeastOnce);
    let (mut p, _) = RawClient::mqtt_connect(local, V4, "local-pub", true);
    publish_acked(&mut p, "out/before", "0", 1);
    assert_eq!(drain(&mut sub, Duration::from_secs(2)).len(), 1);
    drop(sub);

    mosquitto.stop();
    wait_connected(admin, 0);
    for i in 1..=5u16 {
        publish_acked(&mut p, &format!("out/while-down/{i}"), &i.to_string(), i + 1);
    }
    let _mosquitto = Mosquitto::start(&dir, mosq_port);
    let (mut sub, present) = RawClient::mqtt_connect(mosq, V4, "remote-durable", false);
    assert!(present, "mosquitto kept the subscriber's session");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while got.len() < 5 && Instant::now() < deadline {
        got.extend(drain(&mut sub, Duration::from_millis(500)));
    }
    let mut topics: Vec<String> = got.into_iter().map(|(t, _)| t).collect();
    topics.sort();
    topics.dedup(); // at least once: a message may come twice after a reconnect
    let want: Vec<String> = (1..=5).map(|i| format!("out/while-down/{i}")).collect();
    assert_eq!(topics, want);
    wait_connected(admin, 1);
    assert!(metric(admin, "tern_bridge_connects_total{bridge=\"cloud\"}") >= Some(2));
}

#[test]
fn bridge_over_mutual_tls() {
    let dir = TempDir::new("bridge-tls");
    let pki = support::Pki::new("bridge-tls");
    let (tern_port, plain_port, tls_port) = (free_port(), free_port(), free_port());
    // Mosquitto's TLS listener requires a client certificate from the test CA.
    let tls = format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        pki.ca_file.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let _mosquitto = Mosquitto::start_with(&dir, plain_port, &tls);
    common::eventually("mosquitto's TLS listener", || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).ok()
    });
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:{tern_port}\"\n\n\
         [[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:{tls_port}\"\n\
         cafile = \"{}\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n\
         [[bridge.topic]]\nfilter = \"t/#\"\ndirection = \"both\"\nqos = 1\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\n",
        pki.ca_file.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let (code, out, err) = common::process::run(&[
        "check-config",
        &dir.file("check.toml", &config).display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (_tern, local, _admin) = start_tern(&dir, &config);
    let mosq: SocketAddr = format!("127.0.0.1:{plain_port}").parse().expect("addr");
    let (mut remote_sub, _) = RawClient::mqtt_connect(mosq, V4, "remote-sub", true);
    remote_sub.subscribe("t/#", QoS::AtLeastOnce);
    let (mut local_sub, _) = RawClient::mqtt_connect(local, V4, "local-sub", true);
    local_sub.subscribe("t/#", QoS::AtLeastOnce);
    let (mut local_pub, _) = RawClient::mqtt_connect(local, V4, "local-pub", true);
    publish_acked(&mut local_pub, "t/out", "over tls", 1);
    let (mut remote_pub, _) = RawClient::mqtt_connect(mosq, V4, "remote-pub", true);
    publish_acked(&mut remote_pub, "t/in", "back", 2);
    let mut at_remote = drain(&mut remote_sub, Duration::from_secs(2));
    at_remote.sort();
    assert_eq!(
        at_remote,
        [("t/in".to_owned(), "back".to_owned()), ("t/out".to_owned(), "over tls".to_owned())]
    );
    let mut at_local = drain(&mut local_sub, Duration::from_secs(1));
    at_local.sort();
    assert_eq!(at_local, at_remote, "each message once on each side");

    // A CA the remote's certificate does not chain to: the bridge never connects.
    let other = support::Pki::new("bridge-tls-other");
    let wrong =
        config.replace(&pki.ca_file.display().to_string(), &other.ca_file.display().to_string());
    let tern = Tern::start(
        &dir.file(
            "wrong.toml",
            &wrong
                .replace(&format!("127.0.0.1:{tern_port}"), &format!("127.0.0.1:{}", free_port())),
        ),
        &[],
    );
    let line = tern.wait_line(&["bridge down"]).expect("a TLS failure is logged");
    assert!(line.contains("certificate") || line.contains("Certificate"), "{line}");
}
