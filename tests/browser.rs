//! MQTT over WebSocket from a real browser: headless Chromium (Debian package `chromium`) loads
//! a page served by this test on localhost; the page uses mqtt.js (npm package `mqtt`, installed
//! by scripts/test.sh into tests/browser/node_modules, which git ignores) to connect to the broker's
//! `ws://` listener with MQTT 3.1.1 and 5.0, subscribe, publish to itself, and write what it
//! received into the page. Chromium's `--dump-dom` prints the page once it has loaded; the page
//! holds its load event (an image the server answers only after the page reports `/done`), so
//! the dump shows the MQTT result. A TCP subscriber checks the broker saw the browser's
//! messages too.
//!
//! The test is `#[ignore]`d so that `cargo test` alone downloads nothing; scripts/test.sh
//! installs Chromium and mqtt.js and runs it with `--ignored`. Run that way it fails, never
//! skips: without Chromium or mqtt.js it says how to get them. Every step is bounded in time.

mod common;
use common::interop as support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start_with, RawClient};
use support::{run_bounded, TempDir};
use tern::codec::{ProtocolVersion, QoS};
use tern::config::Transport;

/// How long the page may take for both round trips before it reports a timeout itself.
const PAGE_TIMEOUT_MS: u64 = 15_000;

#[test]
#[ignore = "needs Chromium and mqtt.js from npm: scripts/test.sh installs them and runs it"]
fn mqtt_js_in_headless_chromium_over_websocket() {
    let chromium = find_chromium();
    let mqtt_js = mqtt_js_bundle();
    let b = start_with(2, |c| {
        c.listeners[0].transport = Transport::Ws;
        let tcp = "127.0.0.1:0".parse().expect("literal");
        c.listeners.push(tern::config::ListenerConfig { bind: tcp, ..Default::default() });
    });
    let tcp_addr = b.broker.as_ref().expect("running").local_addrs[1];
    let mut watcher = RawClient::connect_tcp(tcp_addr, ProtocolVersion::V311);
    watcher.connect_ok("tcp-watcher");
    watcher.subscribe("browser/+", QoS::AtMostOnce);

    let page = page_html(b.addr.port());
    let site = Site::start(page, std::fs::read(&mqtt_js).expect("read mqtt.min.js"));
    let profile = TempDir::new("chromium-profile");
    let url = format!("http://127.0.0.1:{}/", site.port);
    let mut cmd = Command::new(&chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.0.display()))
    .args(["--dump-dom", &url]);
    let (_, dom, stderr) = run_bounded(&mut cmd, Duration::from_secs(90));
    let result = dom
        .split("<div id=\"result\">")
        .nth(1)
        .and_then(|rest| rest.split("</div>").next())
        .unwrap_or_else(|| panic!("no result in the DOM dump:\n{dom}\nchromium stderr:\n{stderr}"));
    assert_eq!(
        result, "OK v4: hello from chromium v4 | OK v5: hello from chromium v5",
        "page result; chromium stderr:\n{stderr}"
    );
    assert!(site.done.load(Ordering::SeqCst), "the page reported /done");
    // The broker routed the browser's publishes to a plain TCP client too.
    let mut seen: Vec<String> = (0..2)
        .map(|_| String::from_utf8(watcher.recv_publish().payload.to_vec()).expect("utf8"))
        .collect();
    seen.sort();
    assert_eq!(seen, ["hello from chromium v4", "hello from chromium v5"]);
}

/// The test page: two mqtt.js clients (MQTT 3.1.1 and 5.0) each subscribe to their own topic
/// and publish to it; the page writes both outcomes into `#result`, then reports `/done`.
fn page_html(ws_port: u16) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Tern browser test</title>
<script src="/mqtt.min.js"></script></head>
<body><div id="result">pending</div>
<script>
(function () {{
  var out = document.getElementById('result');
  var results = {{}};
  var finished = false;
  function finish(text) {{
    if (finished) return;
    finished = true;
    out.textContent = text;
    fetch('/done').catch(function () {{}});
  }}
  function record(v, text) {{
    results[v] = text;
    if (results[4] && results[5]) finish(results[4] + ' | ' + results[5]);
  }}
  setTimeout(function () {{ finish('ERR timeout ' + JSON.stringify(results)); }}, {PAGE_TIMEOUT_MS});
  [4, 5].forEach(function (v) {{
    try {{
      var topic = 'browser/v' + v;
      var client = mqtt.connect('ws://127.0.0.1:{ws_port}/mqtt', {{
        clientId: 'chromium-v' + v + '-' + Math.random().toString(16).slice(2),
        protocolVersion: v, reconnectPeriod: 0, connectTimeout: 5000, clean: true
      }});
      client.on('connect', function () {{
        client.subscribe(topic, {{ qos: 1 }}, function (err) {{
          if (err) return record(v, 'ERR v' + v + ' subscribe ' + err.message);
          client.publish(topic, 'hello from chromium v' + v, {{ qos: 1 }});
        }});
      }});
      client.on('message', function (t, payload) {{
        record(v, 'OK v' + v + ': ' + payload.toString());
        client.end();
      }});
      client.on('error', function (e) {{ record(v, 'ERR v' + v + ' ' + e.message); }});
    }} catch (e) {{ record(v, 'ERR v' + v + ' ' + e); }}
  }});
}})();
</script>
<img src="/hold" alt="">
</body></html>
"#
    )
}

/// A tiny HTTP server for the page: `/`, `/mqtt.min.js`, `/hold` (answered once `/done` has
/// been requested, or after a bound), `/done`. One thread per connection; every wait bounded.
struct Site {
    port: u16,
    done: Arc<AtomicBool>,
}

impl Site {
    fn start(page: String, script: Vec<u8>) -> Site {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let done = Arc::new(AtomicBool::new(false));
        let page = Arc::new(page.into_bytes());
        let script = Arc::new(script);
        let flag = Arc::clone(&done);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (page, script, done) =
                    (Arc::clone(&page), Arc::clone(&script), Arc::clone(&flag));
                std::thread::spawn(move || serve(stream, &page, &script, &done));
            }
        });
        Site { port, done }
    }
}

fn serve(mut stream: TcpStream, page: &[u8], script: &[u8], done: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, kind, body): (&str, &str, &[u8]) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", page),
        "/mqtt.min.js" => ("200 OK", "application/javascript", script),
        "/done" => {
            done.store(true, Ordering::SeqCst);
            ("200 OK", "text/plain", b"done")
        }
        "/hold" => {
            let timeout = Duration::from_millis(PAGE_TIMEOUT_MS + 5_000);
            let _ = common::poll_until(timeout, || done.load(Ordering::SeqCst).then_some(()));
            ("200 OK", "text/plain", b"released")
        }
        _ => ("404 Not Found", "text/plain", b"not found"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// The Chromium binary, or a failure that says how to install it.
fn find_chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "Chromium is required for the browser test and was not found on PATH. Install the \
         Debian package: apt-get install -y --no-install-recommends chromium (scripts/test.sh \
         does this)"
    );
}

/// mqtt.js's browser bundle in tests/browser/node_modules, which scripts/test.sh installs with
/// npm (the test itself downloads nothing).
fn mqtt_js_bundle() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let bundle = dir.join("node_modules/mqtt/dist/mqtt.min.js");
    assert!(
        bundle.is_file(),
        "mqtt.js is not installed in {}: run scripts/test.sh, or `npm install` there",
        dir.display()
    );
    bundle
}
