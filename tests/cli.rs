//! The `tern` binary as an operator runs it: a second broker on a used address is refused
//! (issue 16), log output fits files and log shippers (issue 17), the command line (clap),
//! `tern check-config` and `tern import-mosquitto-conf` (issue 14).

mod common;

use std::time::Duration;

use common::process::{free_port, run, TempDir, Tern};
use common::RawClient;
use tern::codec::{Packet, ProtocolVersion, ReasonCode, ReasonPacket};

const V4: ProtocolVersion = ProtocolVersion::V311;

fn listener_config(port: u16) -> String {
    format!("# a comment line\n[[listener]]\nbind = \"127.0.0.1:{port}\"\n")
}

#[test]
fn second_instance_on_the_same_port_is_refused_and_the_first_keeps_serving() {
    let dir = TempDir::new("dup-port");
    let port = free_port();
    let config = dir.file("tern.toml", &listener_config(port));
    let first = Tern::start(&config, &[]);
    let addr = first.listening();

    let (code, _, stderr) = run(&["--config", &config.display().to_string()]);
    assert_eq!(code, 1, "the second instance must fail: {stderr}");
    let want = format!(
        "{}:3:8: listener bind = \"127.0.0.1:{port}\": address already in use",
        config.display()
    );
    assert!(stderr.contains(&want), "expected {want:?} in {stderr:?}");

    // The first still accepts, and every connection reaches it (none goes to a second process).
    for i in 0..8 {
        let (mut c, _) = RawClient::mqtt_connect(addr, V4, &format!("still-{i}"), true);
        c.send(&Packet::PingReq);
        assert!(matches!(c.recv(), Packet::PingResp));
    }
}

#[test]
fn the_admin_listener_is_probed_too() {
    let dir = TempDir::new("dup-admin");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = busy.local_addr().expect("addr");
    let text = format!("{}\n[admin]\nbind = \"{taken}\"\n", listener_config(free_port()));
    let config = dir.file("tern.toml", &text);
    let (code, _, stderr) = run(&["--config", &config.display().to_string()]);
    assert_eq!(code, 1, "{stderr}");
    let want =
        format!("{}:6:8: admin.bind = \"{taken}\": address already in use", config.display());
    assert!(stderr.contains(&want), "expected {want:?} in {stderr:?}");
}

#[test]
fn two_instances_on_different_ports_both_start() {
    let dir = TempDir::new("two-ports");
    let a = Tern::start(&dir.file("a.toml", &listener_config(free_port())), &[]);
    let b = Tern::start(&dir.file("b.toml", &listener_config(free_port())), &[]);
    for (t, id) in [(&a, "on-a"), (&b, "on-b")] {
        let (mut c, _) = RawClient::mqtt_connect(t.listening(), V4, id, true);
        c.send(&Packet::PingReq);
        assert!(matches!(c.recv(), Packet::PingResp));
    }
}

/// Waits until a `tern` started without a log pipe accepts connections on `addr`.
fn listens(addr: std::net::SocketAddr) {
    common::eventually("tern listens", || std::net::TcpStream::connect(addr).ok());
}

#[test]
fn log_written_to_a_file_has_no_escape_sequences() {
    let dir = TempDir::new("log-file");
    let port = free_port();
    let config = dir.file("tern.toml", &listener_config(port));
    let log = dir.0.join("tern.log");
    let file = std::fs::File::create(&log).expect("log file");
    // A colour terminal type and no NO_COLOR: only the output not being a terminal decides.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["--config", &config.display().to_string(), "--shards", "2"])
        .env("RUST_LOG", "info")
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .stdout(file.try_clone().expect("clone"))
        .stderr(file)
        .spawn()
        .expect("start tern");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    listens(addr);
    let (mut c, _) = RawClient::mqtt_connect(addr, V4, "file-probe", true);
    c.send(&Packet::Disconnect(ReasonPacket::new(ReasonCode::Success)));
    common::eventually("the connection in the log file", || {
        std::fs::read_to_string(&log).ok()?.contains("file-probe").then_some(())
    });
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let text = std::fs::read(&log).expect("read log");
    let shown = String::from_utf8_lossy(&text);
    assert!(shown.contains("file-probe"), "the connection is logged: {shown}");
    assert!(!text.contains(&0x1b), "escape sequences in a log file: {shown:?}");
}

#[test]
fn json_logs_parse_line_by_line_and_carry_the_connection_span() {
    let dir = TempDir::new("log-json");
    let port = free_port();
    let config =
        dir.file("tern.toml", &format!("{}\n[log]\nformat = \"json\"\n", listener_config(port)));
    let tern = Tern::start(&config, &[]);
    let first = tern.wait_line(&["listening"]).expect("a listening line");
    let v: serde_json::Value = serde_json::from_str(&first).expect("JSON line");
    assert_eq!(v["level"], "INFO", "{v}");
    assert!(v["timestamp"].is_string(), "{v}");
    let addr = v["fields"]["addr"].as_str().expect("addr field").parse().expect("an address");
    let (mut c, _) = RawClient::mqtt_connect(addr, V4, "json-probe", true);
    let line = tern.wait_line(&["connected", "json-probe"]).expect("a connect event");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    // The event names the connection (the per-connection span is debug-level, issue 11).
    assert_eq!(v["fields"]["client_id"], "json-probe", "{v}");
    assert!(v["fields"]["shard"].is_u64(), "{v}");
    assert!(v["fields"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{v}");
    c.send(&Packet::Disconnect(ReasonPacket::new(ReasonCode::Success)));
    let line = tern.wait_line(&["disconnected"]).expect("a disconnect event");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(v["fields"]["client_id"], "json-probe", "{v}");
    // Every other line parses too.
    while let Ok(line) = tern.lines.recv_timeout(Duration::from_millis(200)) {
        serde_json::from_str::<serde_json::Value>(&line).expect("every line is JSON");
    }
}

#[test]
fn command_line_flags_and_errors() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!((code, out.trim()), (0, format!("tern {}", tern::VERSION).as_str()));
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for word in ["--config", "--shards", "passwd", "check-config", "import-mosquitto-conf"] {
        assert!(out.contains(word), "{word} in --help: {out}");
    }
    let (code, _, err) = run(&["--shards", "0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--shards"), "{err}");
    let (code, _, err) = run(&["--bogus"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["--config", "/nonexistent/tern.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/tern.toml: cannot read"), "{err}");
}

#[test]
fn passwd_subcommand_writes_a_file_the_broker_reads() {
    let dir = TempDir::new("cli-passwd");
    let file = dir.0.join("passwd").display().to_string();
    let (code, _, err) = run(&["passwd", "-c", "-b", &file, "alice", "s3cret-pw"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["passwd", "-b", "-H", "argon2id", &file, "bob", "other-pw"]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("alice:$7$") && text.contains("\nbob:$argon2id$"), "{text}");
    let (code, _, err) = run(&["passwd", "-c", "-D", &file, "alice"]);
    assert_eq!(code, 1);
    assert!(err.contains("-c and -D"), "{err}");
}

/// `tern default-config` prints every declared key at its default: the file it prints is a
/// valid configuration, and the same keys as the example `tern.toml` hold the same values.
#[test]
fn default_config_prints_a_valid_reference() {
    let dir = TempDir::new("default-config");
    let (code, out, err) = run(&["default-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[limits]\n") && out.contains("\ninflight_max = 32\n"), "{out}");
    let file = dir.file("reference.toml", &out);
    let (code, out, err) = run(&["check-config", &file.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK (1 listener(s), 0 with TLS)"), "{out}");
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_line_of_a_bad_one() {
    let dir = TempDir::new("check-config");
    let acl = dir.file("acl", "topic readwrite sensors/#\n");
    let good = dir.file(
        "good.toml",
        &format!(
            "[auth]\nacl_file = \"{}\"\n\n[[listener]]\nbind = \"127.0.0.1:1883\"\n",
            acl.display()
        ),
    );
    let (code, out, err) = run(&["check-config", &good.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK (1 listener(s), 0 with TLS)"), "{out}");

    // A bound: file, line, column, key, reason.
    let bad = dir.file("bad.toml", "[limits]\n\ninflight_max = 0\n");
    let (code, _, err) = run(&["check-config", &bad.display().to_string()]);
    assert_eq!(code, 1);
    let want = format!("{}:3:16: limits.inflight_max: must be between 1 and 65535", bad.display());
    assert!(err.contains(&want), "{err}");

    // An ACL file that does not parse.
    let bad_acl = dir.file("bad-acl", "topic reed sensors/#\n");
    let bad = dir.file("acl.toml", &format!("[auth]\nacl_file = \"{}\"\n", bad_acl.display()));
    let (code, _, err) = run(&["check-config", &bad.display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("{}:2:12: auth.acl_file: ", bad.display())), "{err}");

    // A TLS listener whose certificate file holds no certificate: the certfile line.
    let cert = dir.file("cert.pem", "not a certificate\n");
    let text = format!(
        "[[listener]]\nbind = \"127.0.0.1:8883\"\ntransport = \"tls\"\ncertfile = \"{}\"\n\
         keyfile = \"{}/missing-key.pem\"\n",
        cert.display(),
        dir.0.display()
    );
    let bad = dir.file("tls.toml", &text);
    let (code, _, err) = run(&["check-config", &bad.display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("{}:4:12: listener[0].certfile: ", bad.display())), "{err}");

    // A missing file.
    let (code, _, err) = run(&["check-config", "/nonexistent.toml"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.toml: cannot read"), "{err}");
}

#[test]
fn import_mosquitto_conf_writes_a_file_check_config_accepts() {
    let dir = TempDir::new("import");
    let passwd = dir.file("passwd", "");
    let conf = dir.file(
        "mosquitto.conf",
        &format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\n\
             listener 1883 127.0.0.1\nmax_connections 500\nlistener 9001 127.0.0.1\n\
             protocol websockets\npersistence true\nlog_dest syslog\nmax_inflight_messages 40\n\
             connection cloud\naddress cloud.example.com:8883\ntopic # out 1\n",
            passwd.display()
        ),
    );
    let out = dir.0.join("tern.toml").display().to_string();
    let (code, _, err) = run(&["import-mosquitto-conf", &conf.display().to_string(), "-o", &out]);
    assert_eq!(code, 0, "{err}");
    for skipped in [":8: not translated: persistence true", ":9: not translated: log_dest"] {
        assert!(err.contains(skipped), "{skipped} in {err}");
    }
    assert!(!err.contains(":11:") && !err.contains(":13:"), "the bridge is translated: {err}");
    let (code, stdout, err) = run(&["check-config", &out]);
    assert_eq!(code, 0, "the imported file is valid: {err}");
    assert!(stdout.contains("2 listener(s)"), "{stdout}");
    let config = tern::config::Config::load(std::path::Path::new(&out)).expect("loads");
    assert_eq!(config.listeners[0].connections_max, 500);
    assert!(!config.listeners[1].allow_anonymous);
    assert_eq!(config.listeners[1].transport, tern::config::Transport::Ws);
    assert_eq!(config.limits.inflight_max, 40);
    assert_eq!(config.auth.password_file.as_deref(), Some(passwd.as_path()));
    assert_eq!(config.bridges[0].name, "cloud");
    assert_eq!(config.bridges[0].address, "cloud.example.com:8883");
    assert_eq!(config.bridges[0].topics[0].filter, "#");
    assert_eq!(config.bridges[0].topics[0].qos, 1);
}

#[test]
fn systemd_readiness_is_sent_once_the_listeners_accept() {
    let dir = TempDir::new("notify");
    let port = free_port();
    let config = dir.file("tern.toml", &listener_config(port));
    let socket_path = dir.0.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let _tern = Tern::start(&config, &[("NOTIFY_SOCKET", &socket_path.display().to_string())]);
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    // READY=1 means accepting: a client connects at once, without retrying.
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (mut c, _) = RawClient::mqtt_connect(addr, V4, "after-ready", true);
    c.send(&Packet::PingReq);
    assert!(matches!(c.recv(), Packet::PingResp));
}

#[test]
fn under_systemd_lines_have_journal_priorities_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("journal");
    let port = free_port();
    let config = dir.file("tern.toml", &listener_config(port));
    let log = dir.0.join("journal.log");
    let file = std::fs::File::create(&log).expect("log file");
    let meta = file.metadata().expect("metadata");
    // JOURNAL_STREAM names the file standard output is, as systemd does for the journal socket.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["--config", &config.display().to_string(), "--shards", "2"])
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(file)
        .spawn()
        .expect("start tern");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    listens(addr);
    common::eventually("the listening line in the journal file", || {
        std::fs::read_to_string(&log).ok()?.contains("listening").then_some(())
    });
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("read log");
    let listening = text.lines().find(|l| l.contains("listening")).expect("listening line");
    assert!(listening.starts_with("<6> INFO tern"), "priority prefix, no timestamp: {listening:?}");
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
}

/// The environment a running process was started with, as `KEY=VALUE` strings.
fn environment_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read /proc/PID/environ");
    raw.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect()
}

#[test]
fn the_allocator_purge_delay_is_in_effect_in_the_same_process() {
    // `runtime.allocator_purge_delay_ms` can only reach mimalloc through the environment it
    // reads when the process is loaded: tern replaces itself once, keeping its process id.
    let dir = TempDir::new("purge-delay");
    let port = free_port();
    let config = dir.file(
        "tern.toml",
        &format!("{}\n[runtime]\nallocator_purge_delay_ms = 25\n", listener_config(port)),
    );
    // An operator's different value is replaced by the configured one.
    let tern = Tern::start(&config, &[("MIMALLOC_PURGE_DELAY", "1000")]);
    let addr = tern.listening();
    let env = environment_of(tern.child.id());
    assert!(env.iter().any(|v| v == "MIMALLOC_PURGE_DELAY=25"), "{env:?}");
    let (mut c, _) = RawClient::mqtt_connect(addr, V4, "after-reexec", true);
    c.send(&Packet::PingReq);
    assert!(matches!(c.recv(), Packet::PingResp), "the replaced process serves");
    // Nothing warned about the replacement.
    drop(c);
    let _ =
        std::process::Command::new("kill").args(["-TERM", &tern.child.id().to_string()]).status();
    let mut tern = tern;
    let _ = tern.child.wait();
    while let Ok(line) = tern.lines.recv_timeout(Duration::from_millis(100)) {
        assert!(!line.contains("purge delay"), "unexpected warning: {line}");
    }

    // Already in the environment: kept as it is, the default (10) included.
    let port = free_port();
    let config = dir.file("default.toml", &listener_config(port));
    let tern = Tern::start(&config, &[("MIMALLOC_PURGE_DELAY", "10")]);
    tern.listening();
    let env = environment_of(tern.child.id());
    assert!(env.iter().any(|v| v == "MIMALLOC_PURGE_DELAY=10"), "{env:?}");
    assert!(
        !env.iter().any(|v| v.starts_with("TERN_ALLOCATOR_REEXEC=")),
        "no replacement when the value is already there: {env:?}"
    );
}
