//! Interoperability with Eclipse paho-mqtt (Python), an independent client implementation, in
//! MQTT 3.1, 3.1.1 and 5.0, against a two-shard broker. The tests are `#[ignore]`d so that
//! `cargo test` alone needs no Python package; `scripts/test.sh` installs paho-mqtt and runs them
//! with `--ignored`, where without it they fail (they never skip silently).

mod common;

use std::process::Command;

fn run_paho(version: &str) {
    let b = common::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_core.py");
    let out = Command::new("timeout")
        .args(["60", "python3", script, "127.0.0.1"])
        .arg(b.shard_addrs[0].port().to_string())
        .arg(b.shard_addrs[1].port().to_string())
        .arg(version)
        .output()
        .expect("python3 runs (scripts/test.sh installs paho-mqtt)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "paho {version} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("paho: 6 checks passed"), "paho {version}: {stdout}");
}

#[test]
#[ignore = "needs Python paho-mqtt: scripts/test.sh installs it and runs this"]
fn paho_mqtt_v311() {
    run_paho("v311");
}

#[test]
#[ignore = "needs Python paho-mqtt: scripts/test.sh installs it and runs this"]
fn paho_mqtt_v31() {
    run_paho("v31");
}

#[test]
#[ignore = "needs Python paho-mqtt: scripts/test.sh installs it and runs this"]
fn paho_mqtt_v5() {
    run_paho("v5");
}
