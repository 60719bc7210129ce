//! The MQTT client: one worker thread drives many connections through one `mio` poller
//! (epoll), with non-blocking sockets. No async runtime: each connection is a small state
//! machine (`State`), and the loop decides each turn what every publisher may send.
//!
//! Why plain threads and epoll rather than glommio like the broker: a load generator's work per
//! turn is "write as much as the window and the socket allow, read everything that is there",
//! which a readiness loop does with one `write`/`read` syscall per socket per turn and no task
//! wake-ups. It also keeps the harness runnable on hosts without io_uring, against any broker.
//!
//! Frames are split with the project's codec ([`tern::codec::check`]); PUBLISH is encoded with
//! [`tern::codec::encode_publish`] and every control packet with [`tern::codec::encode`] /
//! [`tern::codec::decode`]. The receive path parses PUBLISH and the 4-byte acknowledgements in
//! place (no allocation per message), which the unit tests check against the codec.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use mio::{Events, Interest, Poll, Token};
use tern::codec::{
    self, Connect, Packet, PacketId, PacketType, Properties, Property, ProtocolVersion,
    PublishView, QoS, ReasonCode, ReasonPacket, Subscribe, SubscriptionOptions,
};

use crate::scenario::{ConnPlan, Kind, Role, Scenario, PAYLOAD_HEADER_BYTES, PAYLOAD_MAGIC};
use crate::stats::{Phase, PublisherTotals, SeqTracker, Shared, WorkerResult};
use crate::tls::Sock;

/// Largest packet accepted from the broker (the protocol maximum).
const PACKET_BYTES_MAX: usize = 268_435_460;
/// A publisher stops encoding when this much is waiting to be written.
const OUT_HIGH_BYTES: usize = 64 * 1024;
/// Messages one publisher encodes per loop turn, so one connection cannot starve the others.
const PUBLISH_BATCH_MAX: u64 = 256;
/// Receive scratch buffer, one per worker: idle connections hold no receive buffer.
const SCRATCH_BYTES: usize = 256 * 1024;
/// Reads from one socket per readiness event before moving on. mio is edge-triggered, so a
/// socket left with data is remembered in `Worker::rearm` and read again next turn.
const READS_PER_EVENT_MAX: usize = 16;

/// Nanoseconds since the Unix epoch: the payload timestamp. The wall clock (not `Instant`) so
/// the number means the same in every thread and process of the run.
pub fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotStarted,
    Connecting,
    AwaitConnAck,
    Ready,
    Closed,
}

struct Publisher {
    totals: PublisherTotals,
    topic: String,
    messages_max: u64,
    rate_per_sec: f64,
    retain: bool,
    inflight: u16,
    window: u16,
    next_pid: u16,
    payload: Vec<u8>,
    /// No more PUBLISH will be encoded.
    stopped: bool,
    /// Counted in `Shared::publishers_done`.
    reported: bool,
}

struct Subscriber {
    group: u32,
    filter: String,
    subscribe_sent: bool,
    /// Indexed by publisher id (dense ids 0..publishers): what arrived from each. A vector,
    /// not a map: this lookup is on the per-message path.
    from: Vec<FromPublisher>,
}

/// What one subscriber saw from one publisher.
#[derive(Default)]
struct FromPublisher {
    seqs: SeqTracker,
    /// Highest sequence seen, for the reordering count (None before the first).
    last_seq: Option<u64>,
}

struct Conn {
    plan: ConnPlan,
    stream: Option<Sock>,
    state: State,
    out: BytesMut,
    write_blocked: bool,
    /// A partial frame carried over between reads.
    pending: Vec<u8>,
    connect_at: Instant,
    last_tx: Instant,
    publisher: Option<Publisher>,
    subscriber: Option<Subscriber>,
}

/// Counts a worker owns between two flushes to [`Shared`].
#[derive(Default)]
struct Deltas {
    connected: u64,
    failed: u64,
    subscribed: u64,
    sent: u64,
    acked: u64,
    received: u64,
    publishers_done: u64,
    errors: u64,
}

/// Per-worker context the frame handlers need besides the connection itself.
struct Ctx {
    scenario: Arc<Scenario>,
    shared: Arc<Shared>,
    result: WorkerResult,
    deltas: Deltas,
    pending_connects: usize,
    empty_props: Properties,
}

/// One thread's share of the connections.
pub struct Worker {
    poll: Poll,
    conns: Vec<Conn>,
    ctx: Ctx,
    scratch: Vec<u8>,
    /// Connections whose socket may still hold data (read budget ran out).
    rearm: Vec<usize>,
    /// The TLS client configuration (`None`: plain TCP).
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
}

impl Worker {
    /// A worker for `plans` (this thread's slice of the scenario plan).
    pub fn new(scenario: Arc<Scenario>, shared: Arc<Shared>, plans: Vec<ConnPlan>) -> Self {
        let now = Instant::now();
        let conns = plans
            .into_iter()
            .map(|plan| {
                let publisher = match &plan.role {
                    Role::Publisher { id, topic, messages_max, rate_per_sec, retain } => {
                        Some(Publisher {
                            totals: PublisherTotals { id: *id, sent: 0, acked: 0 },
                            topic: topic.clone(),
                            messages_max: *messages_max,
                            rate_per_sec: *rate_per_sec,
                            retain: *retain,
                            inflight: 0,
                            window: scenario.inflight_max,
                            next_pid: 1,
                            payload: vec![0x5A; scenario.payload_bytes],
                            stopped: false,
                            reported: false,
                        })
                    }
                    _ => None,
                };
                let subscriber = match &plan.role {
                    Role::Subscriber { group, filter, .. } => Some(Subscriber {
                        group: *group,
                        filter: filter.clone(),
                        subscribe_sent: false,
                        from: Vec::new(),
                    }),
                    _ => None,
                };
                Conn {
                    plan,
                    stream: None,
                    state: State::NotStarted,
                    out: BytesMut::new(),
                    write_blocked: false,
                    pending: Vec::new(),
                    connect_at: now,
                    last_tx: now,
                    publisher,
                    subscriber,
                }
            })
            .collect();
        // Checked by `Scenario::validate` before any worker starts.
        let tls = crate::tls::client_config(&scenario).ok().flatten();
        Self {
            // invariant-free: a poller failing to start means the process cannot work at all.
            poll: Poll::new().expect("epoll_create failed"),
            conns,
            ctx: Ctx {
                scenario,
                shared,
                result: WorkerResult::default(),
                deltas: Deltas::default(),
                pending_connects: 0,
                empty_props: Properties::new(),
            },
            scratch: vec![0; SCRATCH_BYTES],
            rearm: Vec::new(),
            tls,
        }
    }

    /// Runs until the main thread moves to [`Phase::Stop`]; returns what was measured.
    pub fn run(mut self) -> WorkerResult {
        let mut events = Events::with_capacity(1024);
        let started = Instant::now();
        let threads = self.ctx.scenario.threads.max(1) as f64;
        let conn_rate = self.ctx.scenario.conn_rate_per_sec as f64 / threads;
        let mut next_conn = 0usize;
        let mut subscribe_seen = false;
        let mut last_keepalive = started;
        loop {
            let phase = self.ctx.shared.phase();
            let now = Instant::now();
            if phase == Phase::Stop {
                self.shutdown();
                break;
            }
            // Open connections, paced by the connection rate and the pending cap.
            if next_conn < self.conns.len() {
                let allowed = if conn_rate > 0.0 {
                    (now.duration_since(started).as_secs_f64() * conn_rate) as usize + 1
                } else {
                    usize::MAX
                };
                while next_conn < self.conns.len()
                    && next_conn < allowed
                    && self.ctx.pending_connects < self.ctx.scenario.connects_pending_max
                {
                    self.start_connect(next_conn, now);
                    next_conn += 1;
                }
            }
            if !subscribe_seen && self.ctx.shared.subscribe_now() {
                subscribe_seen = true;
                for i in 0..self.conns.len() {
                    self.maybe_subscribe(i, now);
                }
            }
            let mut busy = false;
            if phase == Phase::Publish || phase == Phase::Drain {
                busy = self.publish_turn(phase, now);
            }
            if now.duration_since(last_keepalive) >= Duration::from_secs(1) {
                last_keepalive = now;
                self.keepalive(now);
            }
            self.flush_deltas();
            let timeout = if busy || !self.rearm.is_empty() {
                Duration::ZERO
            } else if (next_conn < self.conns.len() && conn_rate > 0.0) || phase == Phase::Publish {
                // Paced work is due within the next millisecond (epoll's resolution).
                Duration::from_millis(1)
            } else {
                Duration::from_millis(20)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    self.ctx.result.error(&format!("poll: {e}"));
                }
                continue;
            }
            let rearm = std::mem::take(&mut self.rearm);
            for i in rearm {
                self.on_readable(i);
            }
            for ev in events.iter() {
                let i = ev.token().0;
                if ev.is_writable() {
                    self.on_writable(i);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(i);
                }
            }
        }
        for c in &mut self.conns {
            if let Some(p) = &c.publisher {
                self.ctx.result.publishers.push(p.totals);
            }
            if let Some(sub) = c.subscriber.as_mut() {
                for (pub_id, f) in sub.from.drain(..).enumerate() {
                    if f.seqs.received > 0 {
                        let key = (sub.group, pub_id as u32);
                        self.ctx.result.seqs.entry(key).or_default().merge(&f.seqs);
                    }
                }
            }
        }
        self.flush_deltas();
        self.ctx.result
    }

    fn start_connect(&mut self, i: usize, now: Instant) {
        let s = &self.ctx.scenario;
        self.ctx.result.first_connect.get_or_insert(now);
        let c = &mut self.conns[i];
        c.connect_at = now;
        let ws = s.ws.then_some(("localhost", s.ws_path.as_str()));
        let seed = c.plan.index as u32;
        match open_socket(s, c.plan.index)
            .and_then(|tcp| Sock::new(tcp, self.tls.as_ref(), ws, seed))
        {
            Ok(mut stream) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(e) = self.poll.registry().register(&mut stream.tcp, Token(i), interest) {
                    self.ctx.result.error(&format!("register: {}", e.kind()));
                    fail(c, &mut self.ctx, false);
                    return;
                }
                c.stream = Some(stream);
                c.state = State::Connecting;
                self.ctx.pending_connects += 1;
            }
            Err(e) => {
                self.ctx.result.error(&format!("connect: {}", e.kind()));
                fail(c, &mut self.ctx, false);
            }
        }
    }

    fn maybe_subscribe(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        if c.state == State::Ready && self.ctx.shared.subscribe_now() {
            send_subscribe(c, &mut self.ctx, now);
            flush(c, &mut self.ctx);
        }
    }

    /// Lets every publisher send what it may; returns true when one could send more at once.
    fn publish_turn(&mut self, phase: Phase, now: Instant) -> bool {
        let Some(&start) = self.ctx.shared.publish_start.get() else { return false };
        let elapsed = now.duration_since(start).as_secs_f64();
        let out_of_time = elapsed >= self.ctx.scenario.duration_secs || phase == Phase::Drain;
        let mut busy = false;
        for c in &mut self.conns {
            let ctx = &mut self.ctx;
            let Some(p) = c.publisher.as_mut() else { continue };
            if c.state != State::Ready {
                continue;
            }
            if !p.stopped && (out_of_time || p.totals.sent >= p.messages_max) {
                p.stopped = true;
            }
            if !p.stopped {
                let due = if p.rate_per_sec > 0.0 {
                    ((elapsed * p.rate_per_sec) as u64 + 1).min(p.messages_max)
                } else {
                    p.messages_max
                };
                let mut n = 0;
                while p.totals.sent < due
                    && (ctx.scenario.qos == QoS::AtMostOnce || p.inflight < p.window)
                    && c.out.len() < OUT_HIGH_BYTES
                    && n < PUBLISH_BATCH_MAX
                {
                    encode_message(p, ctx, &mut c.out);
                    n += 1;
                }
                if n > 0 {
                    ctx.result.last_send = Some(now);
                }
                let window_open = ctx.scenario.qos == QoS::AtMostOnce || p.inflight < p.window;
                if p.rate_per_sec == 0.0 && window_open && !c.write_blocked && p.totals.sent < due {
                    busy = true;
                }
            }
            if !c.out.is_empty() && !c.write_blocked {
                flush(c, ctx);
            }
            let Some(p) = c.publisher.as_mut() else { continue };
            if p.stopped && !p.reported && p.inflight == 0 && c.out.is_empty() {
                p.reported = true;
                ctx.deltas.publishers_done += 1;
            }
        }
        busy
    }

    fn keepalive(&mut self, now: Instant) {
        let half = Duration::from_secs(u64::from(self.ctx.scenario.keepalive_secs)) / 2;
        for c in &mut self.conns {
            if c.state == State::Ready && now.duration_since(c.last_tx) >= half {
                encode_into(&Packet::PingReq, self.ctx.scenario.version, &mut c.out);
                flush(c, &mut self.ctx);
            }
        }
    }

    fn on_writable(&mut self, i: usize) {
        let ctx = &mut self.ctx;
        let c = &mut self.conns[i];
        match c.state {
            State::Connecting => {
                let Some(stream) = c.stream.as_ref() else { return };
                match stream.tcp.take_error() {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => {
                        ctx.result.error(&format!("connect: {}", e.kind()));
                        fail(c, ctx, true);
                        return;
                    }
                }
                match stream.tcp.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotConnected => return,
                    Err(e) => {
                        ctx.result.error(&format!("connect: {}", e.kind()));
                        fail(c, ctx, true);
                        return;
                    }
                }
                c.state = State::AwaitConnAck;
                let packet = connect_packet(&ctx.scenario, &c.plan.client_id);
                encode_into(&packet, ctx.scenario.version, &mut c.out);
                flush(c, ctx);
            }
            State::AwaitConnAck | State::Ready => {
                c.write_blocked = false;
                // TLS records rustls could not send yet (the handshake, the tail of a write).
                if let Some(stream) = c.stream.as_mut() {
                    match stream.flush_tls() {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            c.write_blocked = true;
                            return;
                        }
                        Err(e) => {
                            ctx.result.error(&format!("write: {}", e.kind()));
                            fail(c, ctx, true);
                            return;
                        }
                    }
                }
                if !c.out.is_empty() {
                    flush(c, ctx);
                }
            }
            State::NotStarted | State::Closed => {}
        }
    }

    fn on_readable(&mut self, i: usize) {
        let now = Instant::now();
        let mut maybe_more = false;
        for _ in 0..READS_PER_EVENT_MAX {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else { return };
            if c.state == State::Connecting {
                // Readable before writable: let the writable path confirm the connection.
                return;
            }
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    let what = if c.state == State::AwaitConnAck {
                        "closed before CONNACK"
                    } else {
                        "closed by broker"
                    };
                    if self.ctx.shared.phase() != Phase::Stop {
                        self.ctx.result.error(what);
                    }
                    fail(c, &mut self.ctx, true);
                    return;
                }
                Ok(n) => {
                    if let Err(e) = self.ingest(i, n, now) {
                        self.ctx.result.error(&e);
                        fail(&mut self.conns[i], &mut self.ctx, true);
                        return;
                    }
                    maybe_more = n == self.scratch.len();
                    if !maybe_more {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    maybe_more = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.ctx.result.error(&format!("read: {}", e.kind()));
                    fail(c, &mut self.ctx, true);
                    return;
                }
            }
        }
        if maybe_more {
            // The read budget ran out with data left: edge-triggered epoll will not report
            // it again, so read it next turn.
            self.rearm.push(i);
        }
        let c = &mut self.conns[i];
        if c.state != State::Closed && !c.out.is_empty() && !c.write_blocked {
            flush(c, &mut self.ctx);
        }
    }

    /// Handles `n` fresh bytes in the scratch buffer for connection `i`. A frame split across
    /// reads is completed in `pending` with just the bytes it lacks; the rest is parsed in place
    /// in the scratch buffer, so a full read is never copied.
    fn ingest(&mut self, i: usize, n: usize, now: Instant) -> Result<(), String> {
        let c = &mut self.conns[i];
        let now_ns = wall_ns();
        let mut data = &self.scratch[..n];
        if !c.pending.is_empty() {
            let version = Some(self.ctx.scenario.version);
            loop {
                let want = match codec::check(&c.pending, PACKET_BYTES_MAX, version) {
                    Ok(Some(h)) => h.packet_len().saturating_sub(c.pending.len()),
                    // The fixed header itself is incomplete: take one more byte.
                    Ok(None) => 1,
                    Err(e) => return Err(format!("malformed from broker: {e}")),
                };
                if want == 0 {
                    break;
                }
                if data.is_empty() {
                    return Ok(());
                }
                let take = want.min(data.len());
                c.pending.extend_from_slice(&data[..take]);
                data = &data[take..];
            }
            let frame = std::mem::take(&mut c.pending);
            let used = process(c, &mut self.ctx, &frame, now, now_ns)?;
            debug_assert_eq!(used, frame.len(), "exactly one whole frame was pending");
            c.pending = frame;
            c.pending.clear();
        }
        let used = process(c, &mut self.ctx, data, now, now_ns)?;
        c.pending.extend_from_slice(&data[used..]);
        Ok(())
    }

    fn shutdown(&mut self) {
        for c in &mut self.conns {
            match c.state {
                State::Ready => {
                    let d = Packet::Disconnect(ReasonPacket::new(ReasonCode::Success));
                    encode_into(&d, self.ctx.scenario.version, &mut c.out);
                    flush(c, &mut self.ctx);
                }
                State::Connecting | State::AwaitConnAck => {
                    self.ctx.result.error("connect timed out");
                    fail(c, &mut self.ctx, true);
                }
                State::NotStarted => {
                    self.ctx.result.error("never started (connect phase timed out)");
                    fail(c, &mut self.ctx, false);
                }
                State::Closed => {}
            }
            c.stream = None;
        }
    }

    fn flush_deltas(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let d = std::mem::take(&mut self.ctx.deltas);
        let s = &self.ctx.shared;
        for (v, c) in [
            (d.connected, &s.connected),
            (d.failed, &s.failed),
            (d.subscribed, &s.subscribed),
            (d.sent, &s.sent),
            (d.acked, &s.acked),
            (d.received, &s.received),
            (d.publishers_done, &s.publishers_done),
            (d.errors, &s.errors),
        ] {
            if v != 0 {
                c.fetch_add(v, Relaxed);
            }
        }
    }
}

/// A non-blocking socket, bound to a loopback source address when the broker is on loopback,
/// connecting.
fn open_socket(s: &Scenario, index: usize) -> std::io::Result<mio::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ip: IpAddr =
        s.host.parse().map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "bad host"))?;
    let addr = SocketAddr::new(ip, s.port);
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if s.source_addrs > 0 && ip.is_loopback() && ip.is_ipv4() {
        // 127.0.0.2 ... : each source address has its own ephemeral port range, so
        // n addresses give n * ~28k connections to one broker port.
        let last = 2 + (index % usize::from(s.source_addrs)) as u8;
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0);
        sock.bind(&src.into())?;
    }
    sock.set_nodelay(true)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) || e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(sock.into()))
}

fn connect_packet(s: &Scenario, client_id: &str) -> Packet {
    let mut properties = Properties::new();
    if s.version.is_v5() && !s.clean {
        properties.push(Property::SessionExpiryInterval(3600));
    }
    Packet::Connect(Box::new(Connect {
        version: s.version,
        clean_start: s.clean,
        keep_alive_secs: s.keepalive_secs,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties,
    }))
}

/// Queues this subscriber's SUBSCRIBE unless it was sent already.
fn send_subscribe(c: &mut Conn, ctx: &mut Ctx, now: Instant) {
    let Some(sub) = c.subscriber.as_mut() else { return };
    if sub.subscribe_sent {
        return;
    }
    sub.subscribe_sent = true;
    let filter = match tern::codec::TopicFilter::new(sub.filter.clone(), true) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tern-loadtest: not subscribing to invalid filter {:?}: {e}", sub.filter);
            return;
        }
    };
    let opts = SubscriptionOptions { qos: ctx.scenario.qos, ..Default::default() };
    let packet = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).expect("invariant: 1 is a valid packet id"),
        filters: vec![(filter, opts)],
        properties: Properties::new(),
    });
    encode_into(&packet, ctx.scenario.version, &mut c.out);
    ctx.result.first_subscribe.get_or_insert(now);
}

fn encode_into(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    // invariant: every packet the harness builds is small and well-formed.
    codec::encode(packet, version, out).expect("invariant: harness packets encode");
}

/// A 4-byte acknowledgement (PUBACK/PUBREC/PUBREL/PUBCOMP with reason Success): the same bytes
/// in 3.1.1 and 5.0 (§3.4.2.1 lets v5 omit a Success reason). `ack_matches_codec` checks them.
fn put_ack(out: &mut BytesMut, first: u8, pid: u16) {
    out.extend_from_slice(&[first, 2, (pid >> 8) as u8, pid as u8]);
}

const PUBACK: u8 = 0x40;
const PUBREC: u8 = 0x50;
const PUBREL: u8 = 0x62;
const PUBCOMP: u8 = 0x70;

fn encode_message(p: &mut Publisher, ctx: &mut Ctx, out: &mut BytesMut) {
    let seq = p.totals.sent;
    p.payload[0..4].copy_from_slice(&PAYLOAD_MAGIC.to_be_bytes());
    p.payload[4..8].copy_from_slice(&p.totals.id.to_be_bytes());
    p.payload[8..16].copy_from_slice(&seq.to_be_bytes());
    p.payload[16..24].copy_from_slice(&wall_ns().to_be_bytes());
    let qos = ctx.scenario.qos;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        let id = PacketId::new(p.next_pid);
        p.next_pid = p.next_pid.checked_add(1).unwrap_or(1);
        p.inflight += 1;
        id
    };
    let retained_topic;
    let topic = if p.retain {
        retained_topic = format!("{}/{seq}", p.topic);
        &retained_topic
    } else {
        &p.topic
    };
    let view = PublishView {
        dup: false,
        qos,
        retain: p.retain,
        topic: topic.as_bytes(),
        packet_id,
        properties: &ctx.empty_props,
        payload: &p.payload,
    };
    // invariant: topic and payload sizes were validated with the scenario.
    codec::encode_publish(&view, ctx.scenario.version, out).expect("invariant: publish encodes");
    p.totals.sent += 1;
    ctx.deltas.sent += 1;
}

/// Writes what `c.out` holds until the socket would block.
fn flush(c: &mut Conn, ctx: &mut Ctx) {
    let Some(stream) = c.stream.as_mut() else { return };
    while !c.out.is_empty() {
        match stream.write(&c.out) {
            Ok(0) => {
                ctx.result.error("write returned 0");
                fail(c, ctx, true);
                return;
            }
            Ok(n) => {
                c.out.advance(n);
                c.last_tx = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.write_blocked = true;
                return;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                if ctx.shared.phase() != Phase::Stop {
                    ctx.result.error(&format!("write: {}", e.kind()));
                }
                fail(c, ctx, true);
                return;
            }
        }
    }
}

/// Closes `c`. `started`: it had been counted in `pending_connects` or `connected`.
fn fail(c: &mut Conn, ctx: &mut Ctx, started: bool) {
    let was = c.state;
    c.state = State::Closed;
    c.stream = None;
    c.out.clear();
    match was {
        State::Connecting | State::AwaitConnAck if started => {
            ctx.pending_connects -= 1;
            ctx.deltas.failed += 1;
            ctx.result.failed += 1;
        }
        State::NotStarted => {
            ctx.deltas.failed += 1;
            ctx.result.failed += 1;
        }
        _ => {}
    }
    ctx.deltas.errors += 1;
    if let Some(p) = c.publisher.as_mut() {
        p.stopped = true;
        if !p.reported {
            p.reported = true;
            ctx.deltas.publishers_done += 1;
        }
    }
}

/// Handles every whole frame at the front of `data`; returns the bytes consumed.
fn process(
    c: &mut Conn,
    ctx: &mut Ctx,
    data: &[u8],
    now: Instant,
    now_ns: u64,
) -> Result<usize, String> {
    let version = ctx.scenario.version;
    let mut pos = 0;
    while pos < data.len() {
        let h = match codec::check(&data[pos..], PACKET_BYTES_MAX, Some(version)) {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => return Err(format!("malformed from broker: {e}")),
        };
        let len = h.packet_len();
        if data.len() - pos < len {
            break;
        }
        let body = &data[pos + h.header_len..pos + len];
        match h.packet_type {
            PacketType::Publish => on_publish(c, ctx, h.flags, body, now, now_ns)?,
            PacketType::PubAck | PacketType::PubRec | PacketType::PubRel | PacketType::PubComp => {
                on_ack(c, ctx, h.packet_type, body)?
            }
            _ => {
                let mut frame = BytesMut::from(&data[pos..pos + len]);
                let packet = codec::decode(&mut frame, version, PACKET_BYTES_MAX)
                    .map_err(|e| format!("malformed from broker: {e}"))?
                    .ok_or("invariant: a whole frame decodes")?;
                on_control(c, ctx, packet, now)?;
            }
        }
        pos += len;
    }
    Ok(pos)
}

/// The parts of a PUBLISH body the harness needs, parsed in place.
#[derive(Debug, PartialEq, Eq)]
struct PublishRef<'a> {
    qos: u8,
    retain: bool,
    packet_id: u16,
    payload: &'a [u8],
}

fn parse_publish(flags: u8, body: &[u8], v5: bool) -> Option<PublishRef<'_>> {
    let qos = (flags >> 1) & 3;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut pos = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes([*body.get(pos)?, *body.get(pos + 1)?]);
        pos += 2;
    }
    if v5 {
        // Property length: a variable byte integer.
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = *body.get(pos)?;
            pos += 1;
            len |= usize::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                return None;
            }
        }
        pos += len;
    }
    let payload = body.get(pos..)?;
    Some(PublishRef { qos, retain: flags & 1 != 0, packet_id, payload })
}

fn on_publish(
    c: &mut Conn,
    ctx: &mut Ctx,
    flags: u8,
    body: &[u8],
    now: Instant,
    now_ns: u64,
) -> Result<(), String> {
    let p = parse_publish(flags, body, ctx.scenario.version.is_v5())
        .ok_or("malformed PUBLISH from broker")?;
    match p.qos {
        1 => put_ack(&mut c.out, PUBACK, p.packet_id),
        2 => put_ack(&mut c.out, PUBREC, p.packet_id),
        _ => {}
    }
    ctx.deltas.received += 1;
    ctx.result.last_recv = Some(now);
    let pl = p.payload;
    if pl.len() < PAYLOAD_HEADER_BYTES || pl[0..4] != PAYLOAD_MAGIC.to_be_bytes() {
        ctx.result.error("foreign payload");
        return Ok(());
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[8 - r.len()..].copy_from_slice(&pl[r]);
        u64::from_be_bytes(b)
    };
    let pub_id = word(4..8) as u32;
    let seq = word(8..16);
    let sent_ns = word(16..24);
    let Some(sub) = c.subscriber.as_mut() else {
        ctx.result.error("PUBLISH to a non-subscriber");
        return Ok(());
    };
    if p.retain && ctx.scenario.kind == Kind::Retained {
        ctx.result.retained_received += 1;
    } else {
        ctx.result.latency.saturating_record(now_ns.saturating_sub(sent_ns).max(1));
    }
    let idx = pub_id as usize;
    if idx >= sub.from.len() {
        if idx >= ctx.scenario.publishers.max(1) {
            ctx.result.error("publisher id out of range");
            return Ok(());
        }
        sub.from.resize_with(idx + 1, FromPublisher::default);
    }
    let f = &mut sub.from[idx];
    f.seqs.record(seq);
    if p.retain {
        // Retained messages come in the broker's store order, one per topic: MQTT orders
        // messages per topic only, so their order says nothing.
        return Ok(());
    }
    match f.last_seq {
        Some(last) if seq < last => ctx.result.reordered += 1,
        _ => f.last_seq = Some(seq),
    }
    Ok(())
}

fn on_ack(c: &mut Conn, ctx: &mut Ctx, t: PacketType, body: &[u8]) -> Result<(), String> {
    if body.len() < 2 {
        return Err("malformed acknowledgement from broker".into());
    }
    let pid = u16::from_be_bytes([body[0], body[1]]);
    if let Some(&reason) = body.get(2) {
        if reason >= 0x80 {
            ctx.result.error(&format!("{t:?} reason 0x{reason:02x}"));
        }
    }
    match t {
        PacketType::PubRel => put_ack(&mut c.out, PUBCOMP, pid),
        PacketType::PubRec => {
            put_ack(&mut c.out, PUBREL, pid);
        }
        PacketType::PubAck | PacketType::PubComp => {
            let Some(p) = c.publisher.as_mut() else {
                return Err(format!("{t:?} on a connection that does not publish"));
            };
            if p.inflight == 0 {
                return Err(format!("{t:?} for nothing in flight"));
            }
            p.inflight -= 1;
            p.totals.acked += 1;
            ctx.deltas.acked += 1;
        }
        _ => {}
    }
    Ok(())
}

fn on_control(c: &mut Conn, ctx: &mut Ctx, packet: Packet, now: Instant) -> Result<(), String> {
    match packet {
        Packet::ConnAck(ack) if c.state == State::AwaitConnAck => {
            ctx.pending_connects -= 1;
            if ack.reason != ReasonCode::Success {
                c.state = State::Closed;
                ctx.deltas.failed += 1;
                ctx.result.failed += 1;
                return Err(format!("CONNACK refused: {:?}", ack.reason));
            }
            c.state = State::Ready;
            ctx.deltas.connected += 1;
            ctx.result.connected += 1;
            ctx.result.last_connack = Some(now);
            let took = now.duration_since(c.connect_at).as_nanos() as u64;
            ctx.result.connack.saturating_record(took.max(1));
            if let (Some(p), Some(rm)) = (c.publisher.as_mut(), ack.properties.receive_maximum()) {
                p.window = p.window.min(rm.max(1));
            }
            if ctx.shared.subscribe_now() {
                send_subscribe(c, ctx, now);
            }
            Ok(())
        }
        Packet::SubAck(ack) => {
            ctx.deltas.subscribed += 1;
            for r in ack.reasons {
                if (r as u8) >= 0x80 {
                    ctx.result.error(&format!("SUBACK refused: {r:?}"));
                }
            }
            Ok(())
        }
        Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => Err(format!("DISCONNECT from broker: {:?}", d.reason)),
        other => Err(format!("unexpected {:?} from broker", other.packet_type())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tern::codec::{PubResp, Publish};

    #[test]
    fn ack_matches_codec() {
        for (first, make) in [
            (PUBACK, Packet::PubAck as fn(PubResp) -> Packet),
            (PUBREC, Packet::PubRec),
            (PUBREL, Packet::PubRel),
            (PUBCOMP, Packet::PubComp),
        ] {
            for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
                let pid = PacketId::new(0x1234).expect("non-zero");
                let mut want = BytesMut::new();
                codec::encode(&make(PubResp::success(pid)), v, &mut want).expect("encodes");
                let mut got = BytesMut::new();
                put_ack(&mut got, first, 0x1234);
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn publish_parse_matches_codec() {
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut properties = Properties::new();
                if v.is_v5() {
                    properties.push(Property::SubscriptionIdentifier(7));
                }
                let p = Publish {
                    dup: false,
                    qos,
                    retain: true,
                    topic: Some(tern::codec::TopicName::new("a/b").expect("valid topic")),
                    packet_id: if qos == QoS::AtMostOnce { None } else { PacketId::new(9) },
                    properties,
                    payload: Bytes::from_static(b"hello"),
                };
                let mut buf = BytesMut::new();
                codec::encode(&Packet::Publish(p), v, &mut buf).expect("encodes");
                let h = codec::check(&buf, 1 << 20, Some(v)).expect("ok").expect("whole");
                let got = parse_publish(h.flags, &buf[h.header_len..], v.is_v5()).expect("parses");
                assert_eq!(got.qos, qos as u8);
                assert!(got.retain);
                assert_eq!(got.payload, b"hello");
                assert_eq!(got.packet_id, if qos == QoS::AtMostOnce { 0 } else { 9 });
            }
        }
    }

    #[test]
    fn truncated_publish_is_refused() {
        assert_eq!(parse_publish(0x02, &[0, 5, b'a'], false), None);
        assert_eq!(parse_publish(0x00, &[0], false), None);
    }
}
