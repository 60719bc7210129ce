//! The admin HTTP listener (`[admin] bind`): `GET /metrics`, `GET /healthz`, `GET /readyz` and,
//! behind a bearer token, the `/api/v1/...` admin API.
//!
//! Plain blocking HTTP/1.1 on threads of its own, one request per connection
//! (`connection: close`); requests are parsed by `httparse`. The shard threads do no HTTP work:
//! a request about clients, subscriptions or retained messages becomes an
//! [`AdminRequest`] sent to every shard over a bounded channel; each shard answers from its own
//! loop ([`crate::shard::Shard::admin`], polled every 100 ms) and this side merges the answers.
//!
//! Every resource is bounded, and each refusal is counted in `/metrics`
//! (`tern_admin_refused_total{reason=...}`):
//! - concurrent requests: `admin.workers` threads, and a queue of as many connections; one more
//!   gets 503 at once (`busy`);
//! - the request head: `admin.request_bytes_max` bytes and 32 headers, else 431 (`too_large`);
//!   requests carry no body; 2 s to send the head and to read the answer;
//! - the shards' answers: `admin.reply_timeout_ms`, then 504 (`timeout`); each shard's request
//!   channel holds 16 requests, then 503 (`busy`);
//! - list answers: `admin.list_items_max` items, then `"truncated": true`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};

use crate::metrics::StatsBoard;
pub use crate::shard::admin::{AdminReply, AdminRequest};

/// Requests waiting in one shard's admin channel.
const SHARD_QUEUE: usize = 16;
/// Headers parsed in one request.
const HEADERS_MAX: usize = 32;
/// Time a client has to send its request head, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// An admin request on its way to a shard, with where to answer.
#[derive(Debug)]
pub struct ShardRequest {
    /// The question.
    pub request: AdminRequest,
    /// Where the shard sends `(shard id, answer)`.
    pub reply: Sender<(u16, AdminReply)>,
}

/// The bounded channels between the HTTP thread and `shards` shards: senders for the HTTP
/// side, receivers for the runtime (indexed by shard id).
pub fn channels(shards: usize) -> (Vec<Sender<ShardRequest>>, Vec<Receiver<ShardRequest>>) {
    (0..shards).map(|_| crossbeam_channel::bounded(SHARD_QUEUE)).unzip()
}

/// The bounds of the admin listener (see `AdminConfig`).
#[derive(Clone, Debug)]
pub struct AdminLimits {
    /// Requests served at once.
    pub workers: usize,
    /// Largest request head, bytes.
    pub request_bytes_max: usize,
    /// Wait for the shards' answers.
    pub reply_timeout: Duration,
    /// Items in one list answer.
    pub list_items_max: usize,
}

impl AdminLimits {
    /// The limits configured in `admin`.
    pub fn from_config(admin: &crate::config::AdminConfig) -> Self {
        AdminLimits {
            workers: usize::from(admin.workers),
            request_bytes_max: admin.request_bytes_max as usize,
            reply_timeout: Duration::from_millis(u64::from(admin.reply_timeout_ms)),
            list_items_max: admin.list_items_max as usize,
        }
    }
}

/// Requests refused because a bound was hit, by reason (exported in `/metrics`).
#[derive(Debug, Default)]
pub struct AdminCounters {
    /// Every worker busy and the queue full, or a shard's channel full.
    pub busy: AtomicU64,
    /// Request head larger than `request_bytes_max` or with more than 32 headers.
    pub too_large: AtomicU64,
    /// The shards did not answer within `reply_timeout_ms`.
    pub timeout: AtomicU64,
    /// Missing or wrong bearer token.
    pub unauthorized: AtomicU64,
}

/// What the HTTP threads share.
#[derive(Debug)]
pub struct AdminState {
    /// The shards' counters.
    pub stats: Arc<StatsBoard>,
    /// One request channel per shard, by shard id. Empty: the API answers 503.
    pub shards: Vec<Sender<ShardRequest>>,
    /// The bearer token; `None` refuses every API request.
    pub token: Option<String>,
    /// Set once every listener accepts connections (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// The broker's stop flag: the threads end, and `/readyz` fails, once it is set.
    pub stop: Arc<AtomicBool>,
    /// Bounds.
    pub limits: AdminLimits,
    /// Refusals by reason.
    pub counters: AdminCounters,
}

/// Serves `listener` until `state.stop` is set: an accepting thread and `workers` request
/// threads. Returns the accepting thread, which joins the workers before it ends.
pub fn serve(listener: TcpListener, state: Arc<AdminState>) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let workers = state.limits.workers.max(1);
    let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(workers);
    let mut handles = Vec::new();
    for i in 0..workers {
        let (rx, state) = (rx.clone(), Arc::clone(&state));
        let h = std::thread::Builder::new().name(format!("tern-admin-{i}")).spawn(move || {
            while let Ok(conn) = rx.recv() {
                handle(conn, &state);
            }
        })?;
        handles.push(h);
    }
    std::thread::Builder::new().name("tern-admin".into()).spawn(move || {
        while !state.stop.load(Ordering::Relaxed) {
            let conn = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            let _ = conn.set_nonblocking(false);
            if let Err(TrySendError::Full(mut c)) = tx.try_send(conn) {
                state.counters.busy.fetch_add(1, Ordering::Relaxed);
                let _ = c.set_write_timeout(Some(Duration::from_millis(500)));
                let r = Response::text(503, "busy: too many admin requests at once\n");
                let _ = c.write_all(&r.to_bytes());
            }
        }
        drop(tx);
        for h in handles {
            let _ = h.join();
        }
    })
}

/// An answer.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }

    fn json(status: u16, value: &Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response { status, content_type: "application/json", body }
    }

    fn error(status: u16, message: &str) -> Self {
        Response::json(status, &json!({ "error": message }))
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Error",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
             connection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 401 {
            head.push_str("www-authenticate: Bearer\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// A parsed request head.
struct Request {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
}

/// Serves one connection: read the head (bounded), answer, close.
fn handle(mut conn: TcpStream, state: &AdminState) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let response = match read_request(&mut conn, state.limits.request_bytes_max) {
        Ok(Some(req)) => route(&req, state),
        Ok(None) => return, // closed or timed out before a whole head
        Err(r) => {
            if r.status == 431 {
                state.counters.too_large.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
    };
    let _ = conn.write_all(&response.to_bytes());
}

/// Reads until the head is complete. `Err` carries the error answer (400, 431).
fn read_request(conn: &mut TcpStream, bytes_max: usize) -> Result<Option<Request>, Response> {
    let mut buf = vec![0u8; bytes_max];
    let mut len = 0;
    loop {
        let n = match conn.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => n,
        };
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let authorization = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_owned);
                return Ok(Some(Request {
                    method: req.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    authorization,
                }));
            }
            Ok(httparse::Status::Partial) if len == buf.len() => {
                return Err(Response::error(431, "request head too large"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Response::error(431, "too many headers"));
            }
            Err(e) => return Err(Response::error(400, &format!("malformed request: {e}"))),
        }
    }
}

fn route(req: &Request, state: &AdminState) -> Response {
    let get = req.method == "GET";
    match req.path.as_str() {
        "/metrics" if get => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: metrics_text(state).into_bytes(),
        },
        "/healthz" if get => Response::text(200, "ok\n"),
        "/readyz" if get => {
            if state.stop.load(Ordering::Relaxed) {
                Response::text(503, "stopping\n")
            } else if state.ready.load(Ordering::Relaxed) {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, "starting: listeners not up yet\n")
            }
        }
        "/metrics" | "/healthz" | "/readyz" => Response::error(405, "only GET"),
        p if p.starts_with("/api/v1/") => {
            if !authorized(req, state) {
                state.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
                return Response::error(401, "missing or wrong bearer token");
            }
            api(req, &p["/api/v1/".len()..], state)
        }
        _ => Response::error(404, "no such endpoint"),
    }
}

/// `Authorization: Bearer TOKEN`, compared in constant time.
fn authorized(req: &Request, state: &AdminState) -> bool {
    use subtle::ConstantTimeEq;
    let (Some(token), Some(header)) = (&state.token, &req.authorization) else { return false };
    let Some(given) = header.strip_prefix("Bearer ") else { return false };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

fn api(req: &Request, rest: &str, state: &AdminState) -> Response {
    let method = req.method.as_str();
    let (resource, arg) = rest.split_once('/').unwrap_or((rest, ""));
    let arg = match percent_decode(arg) {
        Some(a) => a,
        None => return Response::error(400, "bad percent-encoding in the path"),
    };
    let max = state.limits.list_items_max;
    let limit = match query_param(&req.query, "limit") {
        None => max,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(max),
            _ => return Response::error(400, "limit must be a positive integer"),
        },
    };
    match (method, resource, arg.is_empty()) {
        ("GET", "clients", true) => {
            let replies = match ask(state, &AdminRequest::Clients { limit }) {
                Ok(r) => r,
                Err(e) => return e,
            };
            let mut all = Vec::new();
            let mut truncated = false;
            for r in replies {
                if let AdminReply::Clients(list, cut) = r {
                    truncated |= cut;
                    all.extend(list);
                }
            }
            truncated |= all.len() > limit;
            all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
            all.truncate(limit);
            Response::json(200, &json!({ "clients": all, "truncated": truncated }))
        }
        ("GET", "clients", false) => {
            let replies = match ask(state, &AdminRequest::Client { id: arg.clone() }) {
                Ok(r) => r,
                Err(e) => return e,
            };
            let found = replies.into_iter().find_map(|r| match r {
                AdminReply::Client(c) => c,
                _ => None,
            });
            match found {
                Some(c) => Response::json(200, &json!(c)),
                None => Response::error(404, "no session with this client id"),
            }
        }
        ("DELETE", "clients", false) => {
            let replies = match ask(state, &AdminRequest::Disconnect { id: arg.clone() }) {
                Ok(r) => r,
                Err(e) => return e,
            };
            let (mut found, mut disconnected) = (false, false);
            for r in replies {
                if let AdminReply::Disconnect { found: f, disconnected: d } = r {
                    found |= f;
                    disconnected |= d;
                }
            }
            if !found {
                return Response::error(404, "no session with this client id");
            }
            Response::json(200, &json!({ "client_id": arg, "disconnected": disconnected }))
        }
        ("GET", "subscriptions", true) => {
            let filter = match query_param(&req.query, "filter").map(percent_decode) {
                None => None,
                Some(Some(f)) if !f.is_empty() => Some(f),
                Some(_) => return Response::error(400, "bad filter"),
            };
            let replies = match ask(state, &AdminRequest::Subscriptions { filter, limit }) {
                Ok(r) => r,
                Err(e) => return e,
            };
            let mut all = Vec::new();
            let mut truncated = false;
            for r in replies {
                if let AdminReply::Subscriptions(list, cut) = r {
                    truncated |= cut;
                    all.extend(list);
                }
            }
            truncated |= all.len() > limit;
            all.sort_by(|a, b| (&a.client_id, &a.filter).cmp(&(&b.client_id, &b.filter)));
            all.truncate(limit);
            Response::json(200, &json!({ "subscriptions": all, "truncated": truncated }))
        }
        ("GET", "retained", false) => {
            // Every shard holds a replica: shard 0's answers.
            let req = AdminRequest::RetainedGet { topic: arg };
            let replies = match ask_some(state, &req, 1) {
                Ok(r) => r,
                Err(e) => return e,
            };
            match replies.into_iter().find_map(|r| match r {
                AdminReply::Retained(m) => m,
                _ => None,
            }) {
                Some(m) => {
                    use base64::Engine;
                    let utf8 = std::str::from_utf8(&m.payload).ok();
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&m.payload);
                    Response::json(
                        200,
                        &json!({
                            "topic": m.topic,
                            "qos": m.qos,
                            "payload_bytes": m.payload_bytes,
                            "payload_utf8": utf8,
                            "payload_base64": b64,
                        }),
                    )
                }
                None => Response::error(404, "no retained message on this topic"),
            }
        }
        ("DELETE", "retained", false) => {
            let replies = match ask(state, &AdminRequest::RetainedDelete { topic: arg.clone() }) {
                Ok(r) => r,
                Err(e) => return e,
            };
            let held = replies.iter().any(|r| matches!(r, AdminReply::RetainedDeleted(true)));
            if !held {
                return Response::error(404, "no retained message on this topic");
            }
            Response::json(200, &json!({ "topic": arg, "deleted": true }))
        }
        ("GET", "stats", true) => Response::json(200, &stats_json(&state.stats)),
        (_, "clients" | "subscriptions" | "retained" | "stats", _) => {
            Response::error(405, "method not allowed on this resource")
        }
        _ => Response::error(404, "no such endpoint"),
    }
}

/// Asks every shard and waits (bounded) for all answers.
fn ask(state: &AdminState, req: &AdminRequest) -> Result<Vec<AdminReply>, Response> {
    ask_some(state, req, state.shards.len())
}

/// Asks the first `count` shards and waits up to `reply_timeout` for their answers.
fn ask_some(
    state: &AdminState,
    req: &AdminRequest,
    count: usize,
) -> Result<Vec<AdminReply>, Response> {
    let shards = &state.shards[..count.min(state.shards.len())];
    if shards.is_empty() {
        return Err(Response::error(503, "no shard to ask"));
    }
    let (tx, rx) = crossbeam_channel::bounded(shards.len());
    for s in shards {
        let msg = ShardRequest { request: req.clone(), reply: tx.clone() };
        if s.try_send(msg).is_err() {
            state.counters.busy.fetch_add(1, Ordering::Relaxed);
            return Err(Response::error(503, "a shard has too many admin requests waiting"));
        }
    }
    drop(tx);
    let deadline = Instant::now() + state.limits.reply_timeout;
    let mut out = Vec::with_capacity(shards.len());
    while out.len() < shards.len() {
        match rx.recv_deadline(deadline) {
            Ok((_, reply)) => out.push(reply),
            Err(_) => {
                state.counters.timeout.fetch_add(1, Ordering::Relaxed);
                return Err(Response::error(504, "the shards did not answer in time"));
            }
        }
    }
    Ok(out)
}

/// `GET /api/v1/stats`: the counters in total and by shard, and the uptime.
fn stats_json(stats: &StatsBoard) -> Value {
    let per = stats.per_shard();
    let as_map = |m: &crate::metrics::Metrics| {
        let mut map = serde_json::Map::new();
        m.visit(|name, value, _, _| {
            map.insert(name.to_owned(), json!(value));
        });
        Value::Object(map)
    };
    let mut total = stats.total();
    // Every shard holds a replica of the retained store: the count is one shard's.
    total.retained_messages = per.first().map_or(0, |m| m.retained_messages);
    json!({
        "version": crate::VERSION,
        "uptime_secs": stats.uptime_secs(),
        "total": as_map(&total),
        "shards": per.iter().map(as_map).collect::<Vec<_>>(),
    })
}

/// The Prometheus text, and the admin listener's own refusal counters.
fn metrics_text(state: &AdminState) -> String {
    use std::fmt::Write;
    let mut out = state.stats.prometheus();
    let name = "tern_admin_refused_total";
    let _ = writeln!(out, "# HELP {name} Admin HTTP requests refused because a bound was hit.");
    let _ = writeln!(out, "# TYPE {name} counter");
    let c = &state.counters;
    for (reason, v) in [
        ("busy", &c.busy),
        ("too_large", &c.too_large),
        ("timeout", &c.timeout),
        ("unauthorized", &c.unauthorized),
    ] {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", v.load(Ordering::Relaxed));
    }
    out
}

/// The raw value of `key` in a query string (`a=1&b=2`), not yet decoded.
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Decodes `%XX` escapes (UTF-8). `+` stays `+`: it is the MQTT single-level wildcard, so a
/// filter's `+` may be sent as is or as `%2B`. `None` for a bad escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_and_query() {
        assert_eq!(percent_decode("a%2Fb%2B+c").as_deref(), Some("a/b++c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(query_param("filter=a%2F%23&limit=3", "limit"), Some("3"));
        assert_eq!(query_param("filter=a", "limit"), None);
        assert_eq!(query_param("limits=3", "limit"), None);
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef";

    /// An admin server whose shard channels nobody reads (`keep` holds the receivers).
    fn server(
        workers: usize,
    ) -> (std::net::SocketAddr, Arc<AdminState>, Vec<Receiver<ShardRequest>>) {
        server_waiting(workers, Duration::from_millis(100))
    }

    /// [`server`] whose requests wait `reply_timeout` for the shards.
    fn server_waiting(
        workers: usize,
        reply_timeout: Duration,
    ) -> (std::net::SocketAddr, Arc<AdminState>, Vec<Receiver<ShardRequest>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (senders, receivers) = channels(2);
        let state = Arc::new(AdminState {
            stats: Arc::new(StatsBoard::new(2)),
            shards: senders,
            token: Some(TOKEN.into()),
            ready: Arc::new(AtomicBool::new(true)),
            stop: Arc::new(AtomicBool::new(false)),
            limits: AdminLimits {
                workers,
                request_bytes_max: 1024,
                reply_timeout,
                list_items_max: 10,
            },
            counters: AdminCounters::default(),
        });
        serve(listener, Arc::clone(&state)).expect("serve");
        (addr, state, receivers)
    }

    fn request(addr: std::net::SocketAddr, head: &str) -> String {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        c.write_all(head.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[test]
    fn shards_that_do_not_answer_get_504_then_a_full_channel_503() {
        let (addr, state, _keep) = server(2);
        let get = format!("GET /api/v1/clients HTTP/1.1\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
        for _ in 0..SHARD_QUEUE {
            let r = request(addr, &get);
            assert!(r.starts_with("HTTP/1.1 504 "), "{r}");
        }
        // Each shard's channel now holds SHARD_QUEUE unanswered requests: the next is refused
        // at once rather than queued without bound.
        let r = request(addr, &get);
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert_eq!(state.counters.timeout.load(Ordering::Relaxed), SHARD_QUEUE as u64);
        assert_eq!(state.counters.busy.load(Ordering::Relaxed), 1);
        state.stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn connections_beyond_the_workers_and_their_queue_get_503() {
        let (addr, state, keep) = server_waiting(1, Duration::from_secs(60));
        // The only worker is held by a request waiting for shard answers that the test holds
        // back; it has taken the request once the question reaches shard 0's channel (no
        // fixed sleep: a loaded machine may take long to get there).
        let get = format!("GET /api/v1/clients HTTP/1.1\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
        let mut busy = TcpStream::connect(addr).expect("connect");
        busy.write_all(get.as_bytes()).expect("write");
        let held = keep[0].recv_timeout(Duration::from_secs(30)).expect("the worker is busy");
        // The next connection waits in the queue (as many places as workers), the one after
        // is refused at once: the accept thread takes them in the order they connected.
        let _queued = TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        let r = request(addr, "GET /healthz HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(started.elapsed() < Duration::from_secs(5), "refused at once");
        assert_eq!(state.counters.busy.load(Ordering::Relaxed), 1);
        // Dropping every copy of the reply channel ends the held request (504) at once.
        drop(held);
        drop(keep[1].try_recv());
        state.stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn oversized_heads_and_too_many_headers_get_431() {
        let (addr, state, _keep) = server(2);
        let big = format!("GET /healthz HTTP/1.1\r\nx-pad: {}\r\n\r\n", "a".repeat(2000));
        let r = request(addr, &big);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let many: String = (0..HEADERS_MAX + 1).map(|i| format!("h{i}: v\r\n")).collect();
        let r = request(addr, &format!("GET /healthz HTTP/1.1\r\n{many}\r\n"));
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let r = request(addr, "GET /healthz HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 ") && r.ends_with("ok\n"), "{r}");
        assert_eq!(state.counters.too_large.load(Ordering::Relaxed), 2);
        let r = request(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.contains("tern_admin_refused_total{reason=\"too_large\"} 2"), "{r}");
        state.stop.store(true, Ordering::SeqCst);
    }
}
