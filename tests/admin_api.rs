//! The admin HTTP API of the real binary, with a real HTTP client (curl): health checks, the
//! bearer token, clients, subscriptions, retained messages, stats (issue 14 item 2).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::process::{address_in, free_port, TempDir, Tern};
use common::RawClient;
use tern::codec::{Packet, ProtocolVersion, QoS, ReasonCode};

const TOKEN: &str = "test-token-0123456789";

/// `curl -X METHOD URL` with the token when `auth`: status and body.
fn curl(method: &str, url: &str, auth: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(token) = auth {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn start(dir: &TempDir) -> (Tern, SocketAddr, String) {
    let text = format!(
        "[[listener]]\nbind = \"127.0.0.1:{}\"\n\n[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        free_port()
    );
    let tern = Tern::start(&dir.file("tern.toml", &text), &[("NO_COLOR", "1")]);
    let mqtt = tern.listening();
    let admin = address_in(&tern.wait_line(&["admin HTTP listening"]).expect("admin line"));
    (tern, mqtt, format!("http://{admin}"))
}

#[test]
fn health_checks_and_token() {
    let dir = TempDir::new("api-health");
    let (_tern, _, base) = start(&dir);
    assert_eq!(curl("GET", &format!("{base}/healthz"), None), (200, "ok\n".into()));
    assert_eq!(curl("GET", &format!("{base}/readyz"), None), (200, "ready\n".into()));
    assert_eq!(curl("GET", &format!("{base}/api/v1/stats"), None).0, 401);
    assert_eq!(curl("GET", &format!("{base}/api/v1/stats"), Some("wrong-token-0123456")).0, 401);
    let (code, body) = curl("GET", &format!("{base}/api/v1/stats"), Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["version"], tern::VERSION);
    assert_eq!(v["shards"].as_array().map(Vec::len), Some(2));
    assert!(v["total"]["connections_current"].is_u64(), "{v}");
    let (_, metrics) = curl("GET", &format!("{base}/metrics"), None);
    assert!(metrics.contains("tern_admin_refused_total{reason=\"unauthorized\"} 2"), "{metrics}");
    assert!(!metrics.contains("shard=\"total\""), "{metrics}");
    assert_eq!(curl("GET", &format!("{base}/nothing"), None).0, 404);
    assert_eq!(curl("POST", &format!("{base}/api/v1/stats"), Some(TOKEN)).0, 405);
}

#[test]
fn clients_subscriptions_disconnect_and_retained() {
    let dir = TempDir::new("api-clients");
    let (_tern, mqtt, base) = start(&dir);
    let api = |m: &str, path: &str| curl(m, &format!("{base}/api/v1/{path}"), Some(TOKEN));

    let (mut v5, _) = RawClient::mqtt_connect(mqtt, ProtocolVersion::V5, "api-v5", true);
    v5.subscribe("sensors/+/temp", QoS::AtLeastOnce);
    let (mut v4, _) = RawClient::mqtt_connect(mqtt, ProtocolVersion::V311, "api-v4", true);
    v4.subscribe("other/#", QoS::AtMostOnce);
    v4.publish("sensors/a/temp", b"21.5", QoS::AtMostOnce, 0, true);
    assert!(matches!(v5.recv(), Packet::Publish(_)));

    let (code, body) = api("GET", "clients");
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let clients = v["clients"].as_array().expect("a list");
    assert_eq!(clients.len(), 2, "{v}");
    assert_eq!(clients[0]["client_id"], "api-v4");
    assert_eq!(clients[0]["protocol"], "3.1.1");
    assert_eq!(clients[1]["client_id"], "api-v5");
    assert_eq!(clients[1]["protocol"], "5");
    assert_eq!(clients[1]["subscriptions"], 1);
    assert_eq!(v["truncated"], false);
    let (_, body) = api("GET", "clients?limit=1");
    assert_eq!(json(&body)["truncated"], true, "{body}");

    let (code, body) = api("GET", "clients/api-v5");
    assert_eq!(code, 200, "{body}");
    let c = json(&body);
    assert_eq!(c["connected"], true);
    assert!(c["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{c}");
    assert!(c["connected_secs"].is_u64(), "{c}");
    assert_eq!(api("GET", "clients/nobody").0, 404);

    let (code, body) = api("GET", "subscriptions?filter=sensors/%23");
    assert_eq!(code, 200, "{body}");
    let subs = json(&body);
    assert_eq!(subs["subscriptions"].as_array().map(Vec::len), Some(1), "{subs}");
    assert_eq!(subs["subscriptions"][0]["client_id"], "api-v5");
    assert_eq!(subs["subscriptions"][0]["filter"], "sensors/+/temp");
    assert_eq!(subs["subscriptions"][0]["qos"], 1);
    let (_, body) = api("GET", "subscriptions");
    assert_eq!(json(&body)["subscriptions"].as_array().map(Vec::len), Some(2), "{body}");

    // Retained: every shard's replica, read and cleared through the API.
    let body = common::eventually("the retained message in every replica", || {
        let (code, body) = api("GET", "retained/sensors/a/temp");
        (code == 200).then_some(body)
    });
    let r = json(&body);
    assert_eq!(r["payload_utf8"], "21.5");
    assert_eq!(r["payload_bytes"], 4);
    assert_eq!(api("DELETE", "retained/sensors/a/temp").0, 200);
    assert_eq!(api("GET", "retained/sensors/a/temp").0, 404);
    assert_eq!(api("DELETE", "retained/sensors/a/temp").0, 404);
    // [MQTT-3.3.1-9]: a new subscription gets the retained messages: there is none left, on
    // whichever shard the new client lands.
    for i in 0..4 {
        let (mut s, _) =
            RawClient::mqtt_connect(mqtt, ProtocolVersion::V311, &format!("late-{i}"), true);
        s.subscribe("sensors/#", QoS::AtMostOnce);
        assert!(s.recv_timeout(Duration::from_millis(300)).is_none(), "retained message cleared");
    }

    // Disconnect: the v5 client gets DISCONNECT 0x98 Administrative action, then the close.
    let (code, body) = api("DELETE", "clients/api-v5");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["disconnected"], true);
    match v5.recv() {
        Packet::Disconnect(d) => assert_eq!(d.reason, ReasonCode::AdministrativeAction),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(v5.closed_within(Duration::from_secs(2)));
    assert_eq!(api("DELETE", "clients/nobody").0, 404);
    // A 3.1.1 client has no DISCONNECT from the server: its connection is closed.
    assert_eq!(api("DELETE", "clients/api-v4").0, 200);
    assert!(v4.closed_within(Duration::from_secs(2)));
}
