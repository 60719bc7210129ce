//! `tern import-mosquitto-conf FILE`: a `tern.toml` from a `mosquitto.conf` (issue 14).
//!
//! Translates what has a Tern equivalent: listeners (`listener`, `port`, `bind_address`,
//! `protocol`), TLS (`certfile`, `keyfile`, `cafile`, `require_certificate`,
//! `use_identity_as_username`), `allow_anonymous`, `password_file`, `acl_file`, `max_connections`
//! and the limits that map (`max_packet_size`, `max_inflight_messages`, `max_queued_messages`,
//! `max_queued_bytes`, `max_keepalive`, `max_topic_alias`, `sys_interval`) and bridges
//! (`connection`, `address`, `topic` with direction, QoS and prefixes, credentials, client id,
//! `cleansession`, `keepalive_interval`, `restart_timeout`, `bridge_protocol_version`, the
//! bridge TLS files). Every other directive is listed, with its line, as not translated:
//! persistence (Tern has none yet), logging destinations, `include_dir`, TLS versions and
//! ciphers, bridge notifications, and the rest.
//!
//! Mosquitto 2 semantics are kept where Tern's defaults differ: each listener gets
//! `allow_anonymous` explicitly (Mosquitto 2 refuses anonymous clients unless told otherwise),
//! and a file without listeners gets Mosquitto's default one on 127.0.0.1:1883.

use std::fmt::Write;

/// A directive that was not translated: its line and text, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line in the mosquitto.conf.
    pub line: usize,
    /// The directive as written.
    pub text: String,
    /// Why it was not translated.
    pub reason: String,
}

/// The translation.
#[derive(Debug)]
pub struct Import {
    /// The `tern.toml` text (with the skipped directives listed in a comment at its top).
    pub toml: String,
    /// The directives not translated, in file order.
    pub skipped: Vec<Skipped>,
}

#[derive(Default)]
struct Listener {
    bind: String,
    websockets: bool,
    certfile: Option<String>,
    keyfile: Option<String>,
    cafile: Option<String>,
    require_certificate: Option<bool>,
    use_identity_as_username: Option<bool>,
    connections_max: Option<u64>,
}

/// Translates the text of a mosquitto.conf.
pub fn import(text: &str) -> Import {
    let mut listeners: Vec<Listener> = Vec::new();
    // `port`/`bind_address` configure Mosquitto's default listener.
    let mut default_listener: Option<Listener> = None;
    let mut allow_anonymous = false;
    let mut broker: Vec<(String, String)> = Vec::new();
    let mut limits: Vec<(String, String)> = Vec::new();
    let mut auth: Vec<(String, String)> = Vec::new();
    let mut skipped = Vec::new();
    let mut bridges: Vec<Bridge> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim();
        let mut skip = |reason: &str| {
            skipped.push(Skipped { line: n + 1, text: line.to_owned(), reason: reason.to_owned() })
        };
        if key == "connection" {
            let name: String = value
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
                .take(64)
                .collect();
            bridges.push(Bridge { name, ..Default::default() });
            continue;
        }
        if let Some(b) = bridges.last_mut() {
            if let Some(reason) = bridge_directive(b, key, value) {
                if !reason.is_empty() {
                    skip(reason);
                }
                continue;
            }
        }
        let flag = |v: &str| match v {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        let number = |v: &str| v.parse::<i64>().ok();
        match key {
            "listener" => {
                let mut parts = value.split_whitespace();
                let port = parts.next().and_then(|p| p.parse::<u16>().ok());
                let host = parts.next();
                match (port, host.map(ip_of)) {
                    (Some(port), None) => listeners
                        .push(Listener { bind: format!("0.0.0.0:{port}"), ..Default::default() }),
                    (Some(port), Some(Some(ip))) => {
                        listeners.push(Listener { bind: join(&ip, port), ..Default::default() })
                    }
                    (Some(_), Some(None)) => {
                        skip("Tern binds IP addresses only: give the address, not a host name")
                    }
                    (None, _) => skip("unix sockets and port-less listeners are not supported"),
                }
            }
            "port" | "bind_address" => {
                let d = default_listener.get_or_insert_with(|| Listener {
                    bind: "0.0.0.0:1883".into(),
                    ..Default::default()
                });
                let (ip, port) = d.bind.rsplit_once(':').unwrap_or(("0.0.0.0", "1883"));
                let (mut ip, mut port) = (ip.trim_matches(['[', ']']).to_owned(), port.to_owned());
                if key == "port" {
                    match value.parse::<u16>() {
                        Ok(p) => port = p.to_string(),
                        Err(_) => skip("not a port number"),
                    }
                } else {
                    match ip_of(value) {
                        Some(i) => ip = i,
                        None => skip("Tern binds IP addresses only"),
                    }
                }
                d.bind = join(&ip, port.parse().unwrap_or(1883));
            }
            "protocol"
            | "certfile"
            | "keyfile"
            | "cafile"
            | "require_certificate"
            | "use_identity_as_username"
            | "max_connections" => {
                // The last `listener`, or Mosquitto's default listener before any.
                let l = match listeners.last_mut() {
                    Some(l) => l,
                    None => default_listener.get_or_insert_with(|| Listener {
                        bind: "0.0.0.0:1883".into(),
                        ..Default::default()
                    }),
                };
                match key {
                    "protocol" => match value {
                        "mqtt" => l.websockets = false,
                        "websockets" => l.websockets = true,
                        _ => skip("only the mqtt and websockets protocols exist in Tern"),
                    },
                    "certfile" => l.certfile = Some(value.into()),
                    "keyfile" => l.keyfile = Some(value.into()),
                    "cafile" => l.cafile = Some(value.into()),
                    "require_certificate" => match flag(value) {
                        Some(b) => l.require_certificate = Some(b),
                        None => skip("not true or false"),
                    },
                    "use_identity_as_username" => match flag(value) {
                        Some(b) => l.use_identity_as_username = Some(b),
                        None => skip("not true or false"),
                    },
                    _ => match number(value) {
                        Some(n) if n > 0 => l.connections_max = Some(n as u64),
                        Some(_) => skip("unlimited: Tern keeps its bound (connections_max)"),
                        None => skip("not a number"),
                    },
                }
            }
            "allow_anonymous" => match flag(value) {
                Some(b) => allow_anonymous = b,
                None => skip("not true or false"),
            },
            "password_file" | "acl_file" => auth.push((key.into(), quote(value))),
            "max_packet_size"
            | "max_inflight_messages"
            | "max_queued_messages"
            | "max_queued_bytes"
            | "max_keepalive"
            | "max_topic_alias"
            | "sys_interval" => {
                let tern_key = match key {
                    "max_packet_size" => "packet_size_bytes_max",
                    "max_inflight_messages" => "inflight_max",
                    "max_queued_messages" => "session_queue_messages_max",
                    "max_queued_bytes" => "session_queue_bytes_max",
                    "max_keepalive" => "keepalive_secs_max",
                    "max_topic_alias" => "topic_alias_max",
                    _ => "sys_interval_secs",
                };
                match number(value) {
                    Some(n) if n > 0 || (key == "max_topic_alias" && n == 0) => {
                        let table = if key == "sys_interval" { &mut broker } else { &mut limits };
                        table.push((tern_key.into(), n.to_string()));
                    }
                    Some(_) => skip("0 means unlimited or off in Mosquitto; Tern keeps its bound"),
                    None => skip("not a number"),
                }
            }
            "persistence"
            | "persistence_location"
            | "persistence_file"
            | "autosave_interval"
            | "autosave_on_changes" => skip("Tern has no on-disk persistence yet"),
            "per_listener_settings" if value == "false" => {}
            "per_listener_settings" => skip(
                "authentication settings are global in Tern (allow_anonymous stays per listener)",
            ),
            _ => skip("no Tern equivalent"),
        }
    }
    if let Some(d) = default_listener {
        listeners.insert(0, d);
    }
    let default_only = listeners.is_empty();
    if default_only {
        // Mosquitto 2 without any listener: local connections only, on 1883.
        listeners.push(Listener { bind: "127.0.0.1:1883".into(), ..Default::default() });
    }
    let mut toml = render(&listeners, allow_anonymous, &broker, &limits, &auth, &skipped);
    for b in &bridges {
        render_bridge(&mut toml, b);
    }
    Import { toml, skipped }
}

/// A bridge being translated.
#[derive(Default)]
struct Bridge {
    name: String,
    address: Option<String>,
    keys: Vec<(&'static str, String)>,
    /// filter, direction, qos, local prefix, remote prefix.
    topics: Vec<(String, &'static str, u8, String, String)>,
}

/// Handles a directive inside a `connection` section: `None` when it is not a bridge directive
/// (it is then a global one), `Some("")` when translated, `Some(reason)` when not.
fn bridge_directive(b: &mut Bridge, key: &str, value: &str) -> Option<&'static str> {
    let quoted = || quote(value);
    let bool_key = |b: &mut Bridge, k: &'static str| match value {
        "true" | "false" => {
            b.keys.push((k, value.to_owned()));
            ""
        }
        _ => "not true or false",
    };
    Some(match key {
        "address" | "addresses" => {
            let mut hosts = value.split_whitespace();
            let first = hosts.next().unwrap_or("");
            let with_port = if first.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                first.to_owned()
            } else {
                format!("{first}:1883")
            };
            b.address = Some(with_port);
            if hosts.next().is_some() {
                "only the first address is used: Tern bridges have one remote"
            } else {
                ""
            }
        }
        "topic" => {
            let words: Vec<&str> = value.split_whitespace().collect();
            let unquote =
                |w: Option<&&str>| w.map_or(String::new(), |w| w.trim_matches('"').to_owned());
            let direction = match words.get(1).copied().unwrap_or("out") {
                "out" => "out",
                "in" => "in",
                "both" => "both",
                _ => return Some("direction is not in, out or both"),
            };
            let qos = match words.get(2).copied().unwrap_or("0") {
                "0" => 0,
                "1" | "2" => 1,
                _ => return Some("qos is not 0, 1 or 2"),
            };
            let Some(filter) = words.first() else { return Some("no topic pattern") };
            b.topics.push((
                filter.to_string(),
                direction,
                qos,
                unquote(words.get(3)),
                unquote(words.get(4)),
            ));
            if words.get(2) == Some(&"2") {
                "bridged at QoS 1 (QoS 2 crosses a Tern bridge as QoS 1)"
            } else {
                ""
            }
        }
        "remote_clientid" | "clientid" => {
            b.keys.push(("client_id", quoted()));
            ""
        }
        "remote_username" | "username" => {
            b.keys.push(("username", quoted()));
            ""
        }
        "remote_password" | "password" => {
            b.keys.push(("password", quoted()));
            ""
        }
        "local_username" => {
            b.keys.push(("local_username", quoted()));
            ""
        }
        "local_password" => {
            b.keys.push(("local_password", quoted()));
            ""
        }
        "bridge_cafile" => {
            b.keys.push(("cafile", quoted()));
            ""
        }
        "bridge_certfile" => {
            b.keys.push(("certfile", quoted()));
            ""
        }
        "bridge_keyfile" => {
            b.keys.push(("keyfile", quoted()));
            ""
        }
        "cleansession" => bool_key(b, "clean_start"),
        "bridge_protocol_version" => match value {
            "mqttv311" => "",
            "mqttv50" => {
                b.keys.push(("protocol", "\"5\"".into()));
                ""
            }
            _ => "MQTT 3.1 bridges are not supported: 3.1.1 is used",
        },
        "keepalive_interval" => match value.parse::<u32>() {
            Ok(n) if (5..=65535).contains(&n) => {
                b.keys.push(("keepalive_secs", n.to_string()));
                ""
            }
            _ => "keep alive outside 5..=65535",
        },
        "restart_timeout" => {
            let n: Vec<u32> = value.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            match n[..] {
                [t] if (1..=3600).contains(&t) => {
                    b.keys.push(("reconnect_min_secs", t.to_string()));
                    b.keys.push(("reconnect_max_secs", t.to_string()));
                    ""
                }
                [lo, hi] if (1..=3600).contains(&lo) && (lo..=3600).contains(&hi) => {
                    b.keys.push(("reconnect_min_secs", lo.to_string()));
                    b.keys.push(("reconnect_max_secs", hi.to_string()));
                    ""
                }
                _ => "restart_timeout outside 1..=3600 seconds",
            }
        }
        "try_private" => "Tern always sets the bridge bit on 3.1.1",
        "bridge_insecure"
        | "bridge_capath"
        | "bridge_alpn"
        | "bridge_identity"
        | "bridge_psk"
        | "bridge_tls_version"
        | "bridge_require_ocsp"
        | "bridge_max_packet_size"
        | "bridge_outgoing_retain"
        | "bridge_attempt_unsubscribe"
        | "local_clientid"
        | "local_cleansession"
        | "notifications"
        | "notifications_local_only"
        | "notification_topic"
        | "round_robin"
        | "start_type"
        | "idle_timeout"
        | "threshold" => "no Tern bridge equivalent",
        _ => return None,
    })
}

fn render_bridge(out: &mut String, b: &Bridge) {
    let _ = writeln!(out, "\n[[bridge]]");
    let _ = writeln!(out, "name = {}", quote(&b.name));
    let _ = writeln!(out, "address = {}", quote(b.address.as_deref().unwrap_or("MISSING:1883")));
    for (k, v) in &b.keys {
        let _ = writeln!(out, "{k} = {v}");
    }
    for (filter, direction, qos, local, remote) in &b.topics {
        let _ = writeln!(out, "[[bridge.topic]]");
        let _ = writeln!(out, "filter = {}", quote(filter));
        let _ = writeln!(out, "direction = \"{direction}\"");
        let _ = writeln!(out, "qos = {qos}");
        if !local.is_empty() {
            let _ = writeln!(out, "local_prefix = {}", quote(local));
        }
        if !remote.is_empty() {
            let _ = writeln!(out, "remote_prefix = {}", quote(remote));
        }
    }
}

/// `localhost` and IP addresses; `None` for host names.
fn ip_of(host: &str) -> Option<String> {
    if host == "localhost" {
        return Some("127.0.0.1".into());
    }
    host.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_string())
}

fn join(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn render(
    listeners: &[Listener],
    allow_anonymous: bool,
    broker: &[(String, String)],
    limits: &[(String, String)],
    auth: &[(String, String)],
    skipped: &[Skipped],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Written by `tern import-mosquitto-conf` from a mosquitto.conf.");
    if skipped.is_empty() {
        let _ = writeln!(out, "# Every directive was translated.");
    } else {
        let _ = writeln!(out, "# Not translated ({}):", skipped.len());
        for s in skipped {
            let _ = writeln!(out, "#   line {}: {}  ({})", s.line, s.text, s.reason);
        }
    }
    let section = |out: &mut String, name: &str, keys: &[(String, String)]| {
        if !keys.is_empty() {
            let _ = writeln!(out, "\n[{name}]");
            for (k, v) in keys {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
    };
    section(&mut out, "broker", broker);
    for l in listeners {
        let _ = writeln!(out, "\n[[listener]]");
        let _ = writeln!(out, "bind = {}", quote(&l.bind));
        let tls = l.certfile.is_some() || l.keyfile.is_some();
        let transport = match (tls, l.websockets) {
            (false, false) => "tcp",
            (true, false) => "tls",
            (false, true) => "ws",
            (true, true) => "wss",
        };
        let _ = writeln!(out, "transport = \"{transport}\"");
        let _ = writeln!(
            out,
            "# Mosquitto 2 refuses anonymous clients unless allow_anonymous is true."
        );
        let _ = writeln!(out, "allow_anonymous = {allow_anonymous}");
        if let Some(n) = l.connections_max {
            let _ = writeln!(out, "connections_max = {n}");
        }
        if tls {
            for (k, v) in
                [("certfile", &l.certfile), ("keyfile", &l.keyfile), ("cafile", &l.cafile)]
            {
                if let Some(v) = v {
                    let _ = writeln!(out, "{k} = {}", quote(v));
                }
            }
            if let Some(b) = l.require_certificate {
                let _ = writeln!(out, "require_certificate = {b}");
            }
            if let Some(b) = l.use_identity_as_username {
                let _ = writeln!(out, "use_identity_as_username = {b}");
            }
        }
    }
    section(&mut out, "limits", limits);
    section(&mut out, "auth", auth);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Transport};

    fn parsed(conf: &str) -> (Config, Vec<Skipped>) {
        let out = import(conf);
        let config = Config::from_str_named(&out.toml, "imported.toml")
            .unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
        (config, out.skipped)
    }

    #[test]
    fn no_listener_is_mosquitto_2s_local_default() {
        let (c, skipped) = parsed("# nothing\n");
        assert!(skipped.is_empty());
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:1883");
        assert!(!c.listeners[0].allow_anonymous, "Mosquitto 2 refuses anonymous by default");
    }

    #[test]
    fn listeners_tls_and_limits_translate() {
        let conf = "allow_anonymous true\nport 1884\nbind_address localhost\n\
                    listener 8883 ::1\ncertfile /c.pem\nkeyfile /k.pem\ncafile /ca.pem\n\
                    require_certificate true\nuse_identity_as_username true\n\
                    listener 8081 127.0.0.1\nprotocol websockets\n\
                    max_packet_size 65536\nmax_queued_messages 50\nmax_queued_bytes 1000000\n\
                    max_keepalive 120\nmax_topic_alias 0\nsys_interval 30\n";
        let out = import(conf);
        assert!(out.skipped.is_empty(), "{:?}", out.skipped);
        // The TLS files do not exist here: check the text, then a config without them.
        assert!(
            out.toml.contains("transport = \"tls\"\nallow_anonymous")
                || out.toml.contains("transport = \"tls\"")
        );
        assert!(out.toml.contains("certfile = \"/c.pem\""), "{}", out.toml);
        assert!(out.toml.contains("require_certificate = true"), "{}", out.toml);
        let (c, _) = parsed(&conf.replace("certfile /c.pem\nkeyfile /k.pem\ncafile /ca.pem\nrequire_certificate true\nuse_identity_as_username true\n", ""));
        assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:1884");
        assert_eq!(c.listeners[1].bind.to_string(), "[::1]:8883");
        assert_eq!(c.listeners[2].transport, Transport::Ws);
        assert!(c.listeners.iter().all(|l| l.allow_anonymous));
        assert_eq!(c.limits.packet_size_bytes_max, 65536);
        assert_eq!(c.limits.session_queue_messages_max, 50);
        assert_eq!(c.limits.session_queue_bytes_max, 1_000_000);
        assert_eq!(c.limits.keepalive_secs_max, 120);
        assert_eq!(c.limits.topic_alias_max, 0);
        assert_eq!(c.broker.sys_interval_secs, 30);
    }

    #[test]
    fn untranslatable_directives_are_listed_with_their_lines() {
        let conf = "listener 1883\npersistence true\npersistence_location /var/lib/m/\n\
                    log_dest file /var/log/m.log\nmax_inflight_messages 0\nlistener 1884 broker.local\n\
                    connection cloud\naddress remote:1883\ntopic # both 1\nlistener 1885\n\
                    per_listener_settings true\n";
        let (c, skipped) = parsed(conf);
        let lines: Vec<usize> = skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 11], "{skipped:?}");
        assert!(skipped[0].reason.contains("persistence"));
        assert!(skipped[4].reason.contains("IP addresses"));
        assert!(skipped[5].reason.contains("global"));
        // The listener after the bridge section is a listener again.
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.bridges.len(), 1);
        assert_eq!(c.listeners[1].bind.to_string(), "0.0.0.0:1885");
        let out = import(conf);
        assert!(out.toml.contains("#   line 2: persistence true"), "{}", out.toml);
    }

    #[test]
    fn bridges_translate() {
        use crate::config::{BridgeDirection, BridgeProtocol};
        let conf = "listener 1883 127.0.0.1\nallow_anonymous true\n\
                    connection cloud.1\naddress cloud.example.com:8883 backup.example.com\n\
                    bridge_protocol_version mqttv50\nremote_clientid edge-1\nremote_username u\n\
                    remote_password p\ncleansession true\nkeepalive_interval 30\n\
                    restart_timeout 2 30\nnotifications false\n\
                    topic sensors/# out 1 site1/ edge/site1/\ntopic cmd/# in 2 \"\" \"\"\n\
                    topic both/# both\n\
                    connection second\naddress 10.0.0.2\ntopic x\n";
        let (c, skipped) = parsed(conf);
        let lines: Vec<usize> = skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [4, 12, 14], "{skipped:?}");
        let b = &c.bridges[0];
        assert_eq!(b.name, "cloud-1");
        assert_eq!(b.address, "cloud.example.com:8883");
        assert_eq!(b.protocol, BridgeProtocol::V5);
        assert_eq!(
            (b.client_id.as_str(), b.username.as_deref(), b.password.as_deref()),
            ("edge-1", Some("u"), Some("p"))
        );
        assert!(b.clean_start);
        assert_eq!((b.keepalive_secs, b.reconnect_min_secs, b.reconnect_max_secs), (30, 2, 30));
        let t = &b.topics;
        assert_eq!(
            (t[0].filter.as_str(), t[0].direction, t[0].qos),
            ("sensors/#", BridgeDirection::Out, 1)
        );
        assert_eq!(
            (t[0].local_prefix.as_str(), t[0].remote_prefix.as_str()),
            ("site1/", "edge/site1/")
        );
        assert_eq!(
            (t[1].direction, t[1].qos, t[1].local_prefix.as_str()),
            (BridgeDirection::In, 1, "")
        );
        assert_eq!((t[2].direction, t[2].qos), (BridgeDirection::Both, 0));
        assert_eq!(c.bridges[1].address, "10.0.0.2:1883");
        assert_eq!(c.bridges[1].topics[0].direction, BridgeDirection::Out);
    }
}
