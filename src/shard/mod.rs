//! One shard: the broker state owned by one core, with no IO.
//!
//! A [`Shard`] owns a disjoint set of connections and their sessions, a replica of the
//! subscription trie (its own subscribers in full, other shards' as one counted entry per filter),
//! a replica of the shared-subscription groups, a replica of the retained messages, and one
//! partition of the client-id registry. It is driven from outside, with time as an argument:
//!
//! - inputs: [`Shard::accept`], [`Shard::handle_read`], [`Shard::handle_closed`],
//!   [`Shard::handle_peer`] (a message from another shard), [`Shard::tick`];
//! - outputs: each connection's pending bytes ([`Shard::take_tx`]) and close request, the
//!   per-peer outboxes of [`ShardMsg`] ([`Shard::outbox`]), and the connection wakers it fires.
//!
//! The runtime (`crate::runtime`, `crate::net`) moves bytes and messages; the tests drive
//! several shards in one thread through the same calls. Nothing here blocks, awaits or allocates
//! without a bound.

mod connect;
pub mod message;
mod publish;
mod retained;
mod subscribe;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::codec::{self, Packet, ProtocolVersion, ReasonCode, ReasonPacket, Will};
use crate::metrics::Metrics;
use crate::session::{Session, SessionLimits};
use crate::topic::SubscriptionTrie;
pub use message::{Member, ShardMsg};
use retained::RetainedStore;
use subscribe::SharedGroups;

/// Identifies a connection within its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

/// Per-listener policy the shard applies at CONNECT.
#[derive(Clone, Debug)]
pub struct ListenerPolicy {
    /// Whether clients without a user name are accepted.
    pub allow_anonymous: bool,
    /// Connections this listener accepts on this shard at once.
    pub connections_max: usize,
    /// v5 server redirection: refuse every CONNECT with Use Another Server (0x9C), or Server
    /// Moved (0x9D) when `permanent`, naming `reference` (MQTT 3.x clients get CONNACK 3).
    pub redirect: Option<Redirect>,
}

/// Where a listener sends its clients (§4.11).
#[derive(Clone, Debug)]
pub struct Redirect {
    /// Server Reference sent to the client.
    pub reference: String,
    /// Server Moved (permanent) rather than Use Another Server.
    pub permanent: bool,
}

/// Everything a shard needs from the configuration, copied in at start.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Number of shards in the process.
    pub shards: u16,
    /// Policies, indexed by listener.
    pub listeners: Vec<ListenerPolicy>,
    /// Largest packet accepted from a client (and advertised as Maximum Packet Size).
    pub packet_size_bytes_max: usize,
    /// Largest packet accepted before the client is authenticated (its CONNECT, and AUTH
    /// packets of the exchange), at most `packet_size_bytes_max`; checked at the fixed header.
    pub preauth_packet_bytes_max: usize,
    /// User Properties one packet may carry (0x95 beyond).
    pub user_properties_max: usize,
    /// Bytes of User Property names and values one packet may carry (0x95 beyond).
    pub user_property_bytes_max: usize,
    /// Session bounds (in-flight window, queue).
    pub session: SessionLimits,
    /// Retained messages kept (replicated on every shard).
    pub retained_messages_max: usize,
    /// Retained bytes kept (replicated on every shard).
    pub retained_bytes_max: usize,
    /// Topic levels in a topic name or filter.
    pub topic_levels_max: usize,
    /// Bytes in a topic name or filter.
    pub topic_bytes_max: usize,
    /// Bytes in a client identifier.
    pub client_id_bytes_max: usize,
    /// Subscriptions one session may hold.
    pub subscriptions_per_client_max: usize,
    /// Time from accept to CONNECT.
    pub connect_timeout: Duration,
    /// Largest keep alive accepted (v5: imposed with Server Keep Alive).
    pub keepalive_secs_max: u16,
    /// Sessions (connected or not) this shard holds.
    pub sessions_max: usize,
    /// Cap on any session expiry interval.
    pub session_expiry_secs_max: u32,
    /// Inbound topic aliases per v5 connection.
    pub topic_alias_max: u16,
    /// Enhanced authentication methods offered to v5 clients (§4.12), besides the
    /// SCRAM-SHA-256 that [`ShardConfig::security`] provides over the password file.
    pub mechanisms: crate::enhanced_auth::Mechanisms,
    /// Password file and ACL; replaced on reload with [`Shard::set_security`].
    pub security: std::sync::Arc<crate::auth::Security>,
    /// Where the password file and ACL are read from again on reload; also the password
    /// workers' settings.
    pub auth_files: crate::config::AuthConfig,
    /// The worker threads that check passwords. `None`: [`crate::runtime::Broker::start`]
    /// starts one from `auth_files`; a shard without one (tests, tools) checks inline.
    pub hash_pool: Option<std::sync::Arc<crate::auth::HashPool>>,
    /// Failed logins per source address per minute on this shard before its CONNECTs with
    /// credentials are refused with 0x9F.
    pub failed_logins_per_minute_max: u32,
    /// Bytes waiting to be written to one connection before QoS 0 deliveries to it are dropped
    /// and reading from it pauses.
    pub tx_bytes_max: usize,
    /// Messages waiting for one peer shard before publishers on this shard are paused.
    pub outbox_messages_max: usize,
    /// v5 Response Information returned to clients that request it: this prefix followed by
    /// the client id and `/` (§3.2.2.3.15). `None`: not offered.
    pub response_information_prefix: Option<String>,
    /// Refuse v5 PUBLISH (and wills) whose Payload Format Indicator says UTF-8 when the payload
    /// is not (0x99, §3.3.2.3.2).
    pub check_payload_format: bool,
}

impl ShardConfig {
    /// Defaults used by tests: small bounds, two shards.
    pub fn for_tests(shards: u16) -> Self {
        Self {
            shards,
            listeners: vec![ListenerPolicy {
                allow_anonymous: true,
                connections_max: 1000,
                redirect: None,
            }],
            packet_size_bytes_max: 1 << 20,
            preauth_packet_bytes_max: 96 << 10,
            user_properties_max: 128,
            user_property_bytes_max: 32 << 10,
            session: SessionLimits {
                inflight_max: 16,
                queue_messages_max: 100,
                queue_bytes_max: 1 << 20,
                overflow: crate::session::OverflowPolicy::DropNewest,
            },
            retained_messages_max: 1000,
            retained_bytes_max: 1 << 20,
            topic_levels_max: 16,
            topic_bytes_max: 256,
            client_id_bytes_max: 64,
            subscriptions_per_client_max: 16,
            connect_timeout: Duration::from_secs(5),
            keepalive_secs_max: 600,
            sessions_max: 1000,
            session_expiry_secs_max: 3600,
            topic_alias_max: 8,
            mechanisms: Default::default(),
            security: Default::default(),
            auth_files: Default::default(),
            hash_pool: None,
            failed_logins_per_minute_max: 30,
            tx_bytes_max: 256 * 1024,
            outbox_messages_max: 1024,
            response_information_prefix: Some("responses/".into()),
            check_payload_format: true,
        }
    }
}

/// Why a connection is being closed; decides the will and the v5 DISCONNECT reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT (normal: no will).
    ClientDisconnect,
    /// The client sent DISCONNECT 0x04: publish the will.
    ClientDisconnectWithWill,
    /// The socket closed or failed without DISCONNECT.
    NetworkError,
    /// Protocol violation or malformed packet; the reason is sent to v5 clients.
    Protocol(ReasonCode),
    /// No packet within 1.5 times the keep alive.
    KeepAliveTimeout,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// Another connection took the client id over.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
    /// CONNACK with a refusal was sent.
    Refused,
}

impl CloseReason {
    fn publishes_will(self) -> bool {
        !matches!(self, CloseReason::ClientDisconnect | CloseReason::Refused)
    }

    /// Reason String for the server's DISCONNECT (always allowed there, [MQTT-3.1.2-29]).
    fn description(self) -> &'static str {
        match self {
            CloseReason::Protocol(ReasonCode::PacketTooLarge) => {
                "packet exceeds maximum packet size"
            }
            CloseReason::Protocol(ReasonCode::ReceiveMaximumExceeded) => {
                "more QoS 2 messages unacknowledged than Receive Maximum"
            }
            CloseReason::Protocol(ReasonCode::TopicAliasInvalid) => "topic alias out of range",
            CloseReason::Protocol(ReasonCode::MalformedPacket) => "malformed packet",
            CloseReason::Protocol(ReasonCode::PayloadFormatInvalid) => {
                "payload is not valid UTF-8 but its format indicator says it is"
            }
            CloseReason::Protocol(_) => "protocol error",
            CloseReason::KeepAliveTimeout => "no packet within 1.5 times the keep alive",
            CloseReason::TakenOver => "another connection took this client id over",
            CloseReason::Shutdown => "server shutting down",
            _ => "",
        }
    }

    fn disconnect_reason(self) -> Option<ReasonCode> {
        match self {
            CloseReason::Protocol(r) => Some(r),
            CloseReason::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            CloseReason::TakenOver => Some(ReasonCode::SessionTakenOver),
            CloseReason::Shutdown => Some(ReasonCode::ServerShuttingDown),
            _ => None,
        }
    }
}

/// Where a connection stands.
#[derive(Debug)]
enum Phase {
    /// Accepted, waiting for CONNECT until the deadline.
    AwaitConnect { deadline: Instant },
    /// CONNECT with an Authentication Method received; AUTH exchange under way (§4.12).
    Authenticating { deadline: Instant },
    /// CONNECT received; its password is being checked on a worker thread (`ticket` names the
    /// job). Nothing is read meanwhile.
    Verifying { deadline: Instant, ticket: u64 },
    /// CONNECT received; waiting for the registry and maybe a takeover.
    Connecting,
    /// Bound to a session slot.
    Active { slot: u32 },
    /// Closed by the shard; bytes in `tx` are flushed, then the socket is closed.
    Closing,
}

/// One network connection.
#[derive(Debug)]
pub(crate) struct Conn {
    phase: Phase,
    /// Negotiated version (V311 until CONNECT says otherwise).
    version: ProtocolVersion,
    /// Listener the connection came in on.
    listener: usize,
    /// Peer address, for logs.
    peer: SocketAddr,
    /// Received bytes not yet decoded (a partial packet). Empty and unallocated when idle.
    rx: BytesMut,
    /// Encoded bytes waiting to be written.
    tx: BytesMut,
    /// Wakes the connection's task when `tx` grows or the connection must close.
    waker: Option<Waker>,
    /// Keep alive granted, 0 = none.
    keep_alive_secs: u16,
    /// Last time a packet arrived.
    last_rx: Instant,
    /// Will to publish on abnormal close.
    will: Option<Will>,
    /// Client's Receive Maximum (v5), 65535 for v3.
    client_receive_max: u16,
    /// Client's Maximum Packet Size (v5), unlimited for v3.
    client_packet_max: usize,
    /// Inbound topic aliases (v5): alias → topic. At most `topic_alias_max` entries.
    aliases: HashMap<u16, String>,
    /// Outbound topic aliases (v5): topic → alias, assigned on first use up to
    /// min(client's Topic Alias Maximum, our `topic_alias_max`).
    out_aliases: HashMap<String, u16>,
    /// Outbound aliases this connection may hold.
    out_alias_max: u16,
    /// Client id once known.
    client_id: String,
    /// Whether the client asked for problem information (v5), default true.
    problem_info: bool,
    /// The user name the transport vouches for (TLS listener with `use_identity_as_username`:
    /// the client certificate's CN). When set, it replaces the CONNECT user name. Set only by
    /// [`Shard::accept_with_identity`]; the shard knows nothing else about transports.
    tls_username: Option<Box<str>>,
    /// A SUBSCRIBE waits for the other shards: later packets wait in `rx` so that responses
    /// keep the order of requests.
    awaiting_peers: bool,
    /// Enhanced authentication exchange under way (CONNECT or re-authentication).
    auth: Option<connect::AuthInProgress>,
    /// The Authentication Method of the CONNECT, which re-authentication must repeat.
    auth_method: Option<String>,
    /// The user name was proven by the transport (TLS client certificate) or by enhanced
    /// authentication, not just claimed in CONNECT.
    identity_verified: bool,
}

/// A session slot: the session and whatever binds it to a connection.
#[derive(Debug)]
pub(crate) struct SessionSlot {
    session: Session,
    generation: u32,
    conn: Option<ConnId>,
    /// When an unconnected session expires.
    expires_at: Option<Instant>,
    /// A v5 will waiting for its Will Delay Interval (§3.1.3.2.2), and when it is due.
    pending_will: Option<(Will, Instant)>,
}

/// A CONNECT waiting for the registry or a takeover.
#[derive(Debug)]
struct PendingConnect {
    conn: ConnId,
    connect: Box<codec::Connect>,
    assigned_id: bool,
    /// Enhanced authentication that succeeded: method and final data for the CONNACK.
    auth_done: Option<(String, bytes::Bytes)>,
}

/// A connection's state as the IO driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnStatus {
    /// Bytes wait in `tx`.
    pub has_tx: bool,
    /// The shard wants the socket closed once `tx` is flushed.
    pub closing: bool,
    /// Reading should pause (output or mesh backpressure).
    pub read_paused: bool,
}

/// The broker state of one core.
pub struct Shard {
    id: u16,
    cfg: ShardConfig,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<u32>,
    conns_per_listener: Vec<usize>,
    sessions: Vec<Option<SessionSlot>>,
    free_sessions: Vec<u32>,
    next_generation: u32,
    by_client: HashMap<String, u32>,
    trie: SubscriptionTrie<subscribe::SubKey, subscribe::SubVal>,
    local_filter_refs: HashMap<String, u32>,
    shared: SharedGroups,
    retained: RetainedStore,
    /// Registry partition: client id → owning shard.
    registry: HashMap<String, u16>,
    pending: HashMap<u64, PendingConnect>,
    /// CONNECTs whose password a worker is checking, by ticket. At most one per connection in
    /// `Phase::Verifying`, plus those whose connection closed before the verdict (bounded by
    /// the pool's queue).
    verifying: HashMap<u64, PendingConnect>,
    /// Failed logins per source address (bounded, see [`crate::auth::ratelimit`]).
    failed_logins: crate::auth::FailedLogins,
    /// Takeover requests for client ids with a connect in progress here, replayed after it.
    deferred: Vec<(u16, ShardMsg)>,
    /// Acknowledgements waiting for the other shards to apply subscriptions, by request id,
    /// with the number of peer answers still missing.
    pending_acks: HashMap<u64, (subscribe::PendingAck, usize)>,
    next_req: u64,
    outbox: Vec<VecDeque<ShardMsg>>,
    /// Counters, read by the metrics endpoint and `$SYS`.
    pub metrics: Metrics,
    /// Publish-to-deliver latency of deliveries written by this shard, microseconds.
    pub latency: hdrhistogram::Histogram<u64>,
    /// Reused per publish: local deliveries (slot, options, subscription id).
    scratch: Vec<publish::LocalMatch>,
    /// Reused per publish: which peer shards have non-shared subscribers (one flag per shard).
    peer_normal: Vec<bool>,
    /// Reused per publish: shared-subscription deliveries chosen for each peer shard.
    peer_shared: Vec<Vec<message::SharedDelivery>>,
    /// True while `handle_read` decodes packets. A CONNACK or SUBACK completed inside that
    /// loop must not decode the packets behind it by calling `handle_read` again: one frame
    /// per pipelined packet would overflow the shard stack (issue 9). It queues the
    /// connection in `resume_reads` instead, and the outermost `handle_read` drains the queue.
    reading: bool,
    /// Connections whose pipelined input waits for the outermost `handle_read` (see
    /// `reading`). Each id at most once, so its length is bounded by the connection count.
    resume_reads: Vec<ConnId>,
}

impl Shard {
    /// A new, empty shard `id` of `cfg.shards`.
    pub fn new(id: u16, cfg: ShardConfig) -> Self {
        assert!(id < cfg.shards, "invariant: shard id below shard count");
        assert!(cfg.tx_bytes_max >= 1024, "invariant: tx bound holds a few packets");
        let peers = cfg.shards as usize;
        let failed_logins_max = cfg.failed_logins_per_minute_max;
        Self {
            id,
            conns_per_listener: vec![0; cfg.listeners.len()],
            cfg,
            conns: Vec::new(),
            free_conns: Vec::new(),
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            next_generation: 1,
            by_client: HashMap::new(),
            trie: SubscriptionTrie::new(),
            local_filter_refs: HashMap::new(),
            shared: SharedGroups::default(),
            retained: RetainedStore::default(),
            registry: HashMap::new(),
            pending: HashMap::new(),
            verifying: HashMap::new(),
            failed_logins: crate::auth::FailedLogins::new(failed_logins_max),
            deferred: Vec::new(),
            pending_acks: HashMap::new(),
            next_req: 1,
            reading: false,
            resume_reads: Vec::new(),
            outbox: (0..peers).map(|_| VecDeque::new()).collect(),
            metrics: Metrics::default(),
            latency: crate::metrics::new_latency_histogram(),
            scratch: Vec::new(),
            peer_normal: vec![false; peers],
            peer_shared: (0..peers).map(|_| Vec::new()).collect(),
        }
    }

    /// Replaces the password file and ACL (reload). Connected clients keep their session; the
    /// new ACL applies from the next packet and delivery.
    pub fn set_security(&mut self, security: std::sync::Arc<crate::auth::Security>) {
        self.cfg.security = security;
    }

    /// Whether the ACL lets `slot`'s client receive `topic` (true without an ACL).
    pub(crate) fn can_read(&self, slot: u32, topic: &str) -> bool {
        let Some(acl) = &self.cfg.security.acl else { return true };
        let Some(s) = self.slot(slot) else { return false };
        acl.can_read(s.session.username.as_deref(), &s.session.client_id, topic)
    }

    /// This shard's id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    /// Registers a new connection from `peer` on `listener`; `None` when the listener's
    /// connection bound is reached (the caller closes the socket and it is counted).
    pub fn accept(&mut self, listener: usize, peer: SocketAddr, now: Instant) -> Option<ConnId> {
        self.accept_with_identity(listener, peer, now, None)
    }

    /// [`Shard::accept`] for a transport that authenticated the client itself: `tls_username`
    /// (the client certificate's CN, when the listener uses it as the identity) replaces the
    /// user name of the CONNECT that follows.
    pub fn accept_with_identity(
        &mut self,
        listener: usize,
        peer: SocketAddr,
        now: Instant,
        tls_username: Option<String>,
    ) -> Option<ConnId> {
        if self.conns_per_listener[listener] >= self.cfg.listeners[listener].connections_max {
            self.metrics.connections_refused_limit += 1;
            return None;
        }
        self.conns_per_listener[listener] += 1;
        let conn = Conn {
            phase: Phase::AwaitConnect { deadline: now + self.cfg.connect_timeout },
            version: ProtocolVersion::V311,
            listener,
            peer,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            waker: None,
            keep_alive_secs: 0,
            last_rx: now,
            will: None,
            client_receive_max: u16::MAX,
            client_packet_max: usize::MAX,
            aliases: HashMap::new(),
            out_aliases: HashMap::new(),
            out_alias_max: 0,
            client_id: String::new(),
            problem_info: true,
            awaiting_peers: false,
            auth: None,
            auth_method: None,
            identity_verified: false,
            tls_username: tls_username.map(String::into_boxed_str),
        };
        self.metrics.connections_total += 1;
        self.metrics.connections_current += 1;
        let id = match self.free_conns.pop() {
            Some(i) => {
                self.conns[i as usize] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        Some(ConnId(id))
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.0 as usize).and_then(Option::as_ref)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    /// The peer address of a connection, for logs.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.conn(id).map(|c| c.peer)
    }

    /// The client id of a connection once its CONNECT was accepted, for logs.
    pub fn client_id(&self, id: ConnId) -> Option<&str> {
        self.conn(id).map(|c| c.client_id.as_str()).filter(|c| !c.is_empty())
    }

    /// Stores the waker of the connection's task.
    pub fn register_waker(&mut self, id: ConnId, waker: &Waker) {
        if let Some(c) = self.conn_mut(id) {
            match &c.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => c.waker = Some(waker.clone()),
            }
        }
    }

    /// What the IO driver should do for this connection.
    pub fn status(&self, id: ConnId) -> ConnStatus {
        match self.conn(id) {
            Some(c) => ConnStatus {
                has_tx: !c.tx.is_empty(),
                closing: matches!(c.phase, Phase::Closing),
                read_paused: c.tx.len() >= self.cfg.tx_bytes_max
                    || self.outbox_full()
                    || c.awaiting_peers
                    || matches!(c.phase, Phase::Connecting | Phase::Verifying { .. }),
            },
            None => ConnStatus { has_tx: false, closing: true, read_paused: true },
        }
    }

    /// Takes the bytes waiting for the connection, leaving an empty buffer.
    pub fn take_tx(&mut self, id: ConnId) -> BytesMut {
        match self.conn_mut(id) {
            Some(c) => std::mem::take(&mut c.tx),
            None => BytesMut::new(),
        }
    }

    /// Bytes arrived on a connection. Decodes and handles every whole packet; keeps a partial
    /// one. A malformed packet closes this connection only.
    pub fn handle_read(&mut self, id: ConnId, data: &[u8], now: Instant) {
        let Some(c) = self.conn_mut(id) else { return };
        if matches!(c.phase, Phase::Closing) {
            return;
        }
        c.rx.extend_from_slice(data);
        c.last_rx = now;
        self.metrics.bytes_received += data.len() as u64;
        if self.reading {
            // Called from inside a decode loop (a completed CONNACK or SUBACK): resume later,
            // iteratively, never by recursion.
            if !self.resume_reads.contains(&id) {
                self.resume_reads.push(id);
            }
            return;
        }
        self.reading = true;
        self.decode_packets(id, now);
        // Bounded: an id is queued again only by a completion that consumed a held state.
        while let Some(next) = self.resume_reads.pop() {
            self.decode_packets(next, now);
        }
        self.reading = false;
    }

    /// Decodes and handles the whole packets buffered for `id` while the connection may
    /// read (not closing, not waiting for CONNACK or a held SUBACK).
    fn decode_packets(&mut self, id: ConnId, now: Instant) {
        // Bounded: each iteration consumes at least one packet from a finite buffer.
        loop {
            let Some(c) = self.conn_mut(id) else { return };
            match c.phase {
                Phase::Closing => return,
                // Pipelined packets wait until CONNACK (or a held SUBACK) is out.
                Phase::Connecting | Phase::Verifying { .. } => return,
                _ if c.awaiting_peers => return,
                _ => {}
            }
            let version = c.version;
            let pre_auth =
                matches!(c.phase, Phase::AwaitConnect { .. } | Phase::Authenticating { .. });
            // CVE-2023-0809's class: the first packet must be a CONNECT. Refused from its first
            // byte, before a remaining length is even read, so nothing else is ever buffered.
            let first_not_connect = matches!(c.phase, Phase::AwaitConnect { .. })
                && c.rx.first().is_some_and(|b| b >> 4 != codec::PacketType::Connect as u8);
            if first_not_connect {
                self.metrics.protocol_errors += 1;
                tracing::debug!(conn = id.0, "first packet is not CONNECT [MQTT-3.1.0-1]");
                self.close(id, CloseReason::Refused, now);
                return;
            }
            let limits = codec::DecodeLimits {
                // CVE-2017-7651's class: before authentication only a small packet is accepted,
                // checked at the fixed header, before its body is buffered.
                packet_bytes_max: if pre_auth {
                    self.cfg.preauth_packet_bytes_max
                } else {
                    self.cfg.packet_size_bytes_max
                },
                user_properties: codec::UserPropertyBudget {
                    count: self.cfg.user_properties_max,
                    bytes: self.cfg.user_property_bytes_max,
                },
            };
            let Some(c) = self.conn_mut(id) else { return };
            // Read before decoding consumes the bytes: how to refuse a CONNECT that fails.
            let connect_version = if pre_auth { codec::connect_version(&c.rx) } else { None };
            match codec::decode_with(&mut c.rx, version, &limits) {
                Ok(Some(packet)) => self.handle_packet(id, packet, now),
                Ok(None) => break,
                Err(e) => {
                    self.metrics.protocol_errors += 1;
                    tracing::debug!(conn = id.0, error = %e, "malformed packet");
                    if matches!(self.conn(id).map(|c| &c.phase), Some(Phase::AwaitConnect { .. })) {
                        self.refuse_connect_error(id, &e, connect_version);
                    } else {
                        self.close(id, CloseReason::Protocol(e.reason_code()), now);
                    }
                    return;
                }
            }
        }
        // An idle connection keeps no receive buffer.
        if let Some(c) = self.conn_mut(id) {
            if c.rx.is_empty() && c.rx.capacity() > 0 {
                c.rx = BytesMut::new();
            }
        }
    }

    /// The socket reached end of stream or failed.
    pub fn handle_closed(&mut self, id: ConnId, now: Instant) {
        self.close(id, CloseReason::NetworkError, now);
    }

    /// The driver closed the socket: the connection slot is freed.
    pub fn release(&mut self, id: ConnId, now: Instant) {
        if self.conn(id).is_some_and(|c| !matches!(c.phase, Phase::Closing)) {
            self.close(id, CloseReason::NetworkError, now);
        }
        if let Some(c) = self.conns.get_mut(id.0 as usize).and_then(Option::take) {
            self.conns_per_listener[c.listener] -= 1;
            self.metrics.connections_current -= 1;
            self.free_conns.push(id.0);
        }
    }

    fn handle_packet(&mut self, id: ConnId, packet: Packet, now: Instant) {
        let Some(c) = self.conn(id) else { return };
        let phase_active = match c.phase {
            Phase::Active { slot } => Some(slot),
            _ => None,
        };
        match (packet, phase_active) {
            (Packet::Connect(connect), None) if matches!(c.phase, Phase::AwaitConnect { .. }) => {
                self.handle_connect(id, connect, now)
            }
            (Packet::Auth(a), None) if matches!(c.phase, Phase::Authenticating { .. }) => {
                self.handle_auth(id, a, now)
            }
            (Packet::Auth(a), Some(_)) => self.handle_auth(id, a, now),
            // [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
            (Packet::Connect(_), _) => {
                self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError), now)
            }
            // [MQTT-3.1.0-1]: the first packet must be CONNECT.
            (_, None) => {
                self.metrics.protocol_errors += 1;
                self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError), now)
            }
            (Packet::Publish(p), Some(slot)) => self.handle_publish(id, slot, p, now),
            (Packet::PubAck(r), Some(slot)) => self.handle_puback(id, slot, r, now),
            (Packet::PubRec(r), Some(slot)) => self.handle_pubrec(id, slot, r, now),
            (Packet::PubRel(r), Some(slot)) => self.handle_pubrel(id, slot, r),
            (Packet::PubComp(r), Some(slot)) => self.handle_pubcomp(id, slot, r, now),
            (Packet::Subscribe(s), Some(slot)) => self.handle_subscribe(id, slot, s, now),
            (Packet::Unsubscribe(u), Some(slot)) => self.handle_unsubscribe(id, slot, u),
            (Packet::PingReq, Some(_)) => self.send(id, &Packet::PingResp),
            (Packet::Disconnect(d), Some(slot)) => self.handle_disconnect(id, slot, d, now),
            // Server-to-client packets and AUTH (not negotiated) from a client.
            (_, Some(_)) => {
                self.metrics.protocol_errors += 1;
                self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError), now)
            }
        }
    }

    fn handle_disconnect(&mut self, id: ConnId, slot: u32, d: ReasonPacket, now: Instant) {
        let v5 = self.conn(id).is_some_and(|c| c.version.is_v5());
        if v5 {
            if let Some(expiry) = d.properties.session_expiry_interval() {
                let cap = self.cfg.session_expiry_secs_max;
                let Some(s) = self.slot_mut(slot) else { return };
                // [MQTT-3.14.2-2]: a session that ended with the connection cannot be revived.
                if s.session.expiry_secs == 0 && expiry != 0 {
                    self.close(id, CloseReason::Protocol(ReasonCode::ProtocolError), now);
                    return;
                }
                s.session.expiry_secs = expiry.min(cap);
            }
        }
        let reason = if d.reason == ReasonCode::DisconnectWithWill {
            CloseReason::ClientDisconnectWithWill
        } else {
            CloseReason::ClientDisconnect
        };
        self.close(id, reason, now);
    }

    /// Encodes `packet` into the connection's output and wakes its task.
    fn send(&mut self, id: ConnId, packet: &Packet) {
        let Some(c) = self.conn_mut(id) else { return };
        let before = c.tx.len();
        if let Err(e) = codec::encode(packet, c.version, &mut c.tx) {
            // Only reachable with a packet the broker built wrong; keep serving others.
            tracing::error!(conn = id.0, error = %e, "could not encode packet");
            return;
        }
        let written = c.tx.len() - before;
        if let Some(w) = &c.waker {
            w.wake_by_ref();
        }
        self.metrics.bytes_sent += written as u64;
    }

    /// Closes a connection: sends the v5 DISCONNECT the reason calls for, publishes the will when
    /// the close was abnormal, detaches or ends the session. The socket is closed by the driver
    /// once the output is flushed.
    pub fn close(&mut self, id: ConnId, reason: CloseReason, now: Instant) {
        let Some((phase, will)) = self.close_conn_only(id, reason) else { return };
        if let Phase::Active { slot } = phase {
            if let Some(w) = will.filter(|_| reason.publishes_will()) {
                self.will_or_delay(slot, w, now);
            }
            self.detach_session(slot, now);
        }
    }

    /// Marks the connection closing and sends the v5 DISCONNECT, without touching its session.
    /// Returns the phase it was in and its will.
    fn close_conn_only(
        &mut self,
        id: ConnId,
        reason: CloseReason,
    ) -> Option<(Phase, Option<Will>)> {
        let c = self.conn_mut(id)?;
        if matches!(c.phase, Phase::Closing) {
            return None;
        }
        let phase = std::mem::replace(&mut c.phase, Phase::Closing);
        let v5 = c.version.is_v5();
        let will = c.will.take();
        if let Some(w) = &c.waker {
            w.wake_by_ref();
        }
        tracing::info!(conn = id.0, ?reason, "disconnected");
        match reason {
            CloseReason::KeepAliveTimeout => self.metrics.keepalive_timeouts += 1,
            CloseReason::ConnectTimeout => self.metrics.connect_timeouts += 1,
            CloseReason::Protocol(_) => self.metrics.protocol_closes += 1,
            _ => {}
        }
        if v5 && matches!(phase, Phase::Active { .. }) {
            if let Some(code) = reason.disconnect_reason() {
                let mut d = ReasonPacket::new(code);
                d.properties.push(codec::Property::ReasonString(reason.description().into()));
                self.send(id, &Packet::Disconnect(d));
            }
        }
        Some((phase, will))
    }

    /// Publishes a will now, or holds it for its v5 Will Delay Interval: it goes out when the
    /// delay or the session ends, whichever is first, unless the client reconnects before
    /// ([MQTT-3.1.3-9]).
    fn will_or_delay(&mut self, slot: u32, will: Will, now: Instant) {
        let delay = will.properties.will_delay_interval().unwrap_or(0);
        let expiry = self.slot(slot).map_or(0, |s| s.session.expiry_secs);
        if delay == 0 || expiry == 0 {
            return self.publish_will(slot, will, now);
        }
        let due = now + Duration::from_secs(u64::from(delay.min(expiry)));
        if let Some(s) = self.slot_mut(slot) {
            s.pending_will = Some((will, due));
        }
    }

    /// The connection of a session went away: end the session or start its expiry clock.
    fn detach_session(&mut self, slot: u32, now: Instant) {
        let Some(s) = self.slot_mut(slot) else { return };
        s.conn = None;
        let expiry = s.session.expiry_secs;
        if expiry == 0 {
            self.destroy_session(slot);
        } else if expiry != u32::MAX {
            let s = self.slot_mut(slot).expect("invariant: slot checked above");
            s.expires_at = Some(now + Duration::from_secs(u64::from(expiry)));
        }
    }

    fn slot(&self, slot: u32) -> Option<&SessionSlot> {
        self.sessions.get(slot as usize).and_then(Option::as_ref)
    }

    fn slot_mut(&mut self, slot: u32) -> Option<&mut SessionSlot> {
        self.sessions.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Removes a session: its subscriptions leave the trie (and the other shards' replicas),
    /// and the registry forgets this shard as the owner.
    fn destroy_session(&mut self, slot: u32) {
        // A delayed will goes out when its session ends ([MQTT-3.1.3-9]).
        if let Some((will, _)) = self.slot_mut(slot).and_then(|s| s.pending_will.take()) {
            self.publish_will(slot, will, Instant::now());
        }
        let Some(s) = self.sessions.get_mut(slot as usize).and_then(Option::take) else { return };
        self.free_sessions.push(slot);
        for filter in s.session.subscriptions.keys() {
            self.remove_subscription_entry(slot, filter);
        }
        self.metrics.messages_dropped_session_end += s.session.queue.len() as u64;
        self.by_client.remove(&s.session.client_id);
        self.metrics.sessions_current = self.by_client.len() as u64;
        let owner = self.id;
        let client_id = s.session.client_id;
        self.send_to_registry(ShardMsg::Release { client_id, owner });
    }

    /// Periodic work: keep alive and connect timeouts, session expiry. Call about once a second.
    pub fn tick(&mut self, now: Instant) {
        let mut to_close = Vec::new();
        for (i, c) in self.conns.iter().enumerate() {
            let Some(c) = c else { continue };
            match c.phase {
                Phase::AwaitConnect { deadline }
                | Phase::Authenticating { deadline }
                | Phase::Verifying { deadline, .. }
                    if now >= deadline =>
                {
                    to_close.push((i as u32, CloseReason::ConnectTimeout))
                }
                // [MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0): 1.5 times the keep alive.
                Phase::Active { .. } if c.keep_alive_secs > 0 => {
                    let limit = Duration::from_millis(u64::from(c.keep_alive_secs) * 1500);
                    if now.duration_since(c.last_rx) > limit {
                        to_close.push((i as u32, CloseReason::KeepAliveTimeout));
                    }
                }
                _ => {}
            }
        }
        for (i, reason) in to_close {
            self.close(ConnId(i), reason, now);
        }
        self.failed_logins.expire(now);
        let expired: Vec<u32> = self
            .sessions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                (s.conn.is_none() && s.expires_at.is_some_and(|t| now >= t)).then_some(i as u32)
            })
            .collect();
        for slot in expired {
            self.metrics.sessions_expired += 1;
            self.destroy_session(slot);
        }
        let due: Vec<u32> = self
            .sessions
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let (_, at) = s.as_ref()?.pending_will.as_ref()?;
                (now >= *at).then_some(i as u32)
            })
            .collect();
        for slot in due {
            if let Some((will, _)) = self.slot_mut(slot).and_then(|s| s.pending_will.take()) {
                self.publish_will(slot, will, now);
            }
        }
    }

    /// Closes every connection with "server shutting down". Sessions are kept until the process
    /// exits; the count of queued messages that will not be delivered is logged by the caller.
    pub fn shutdown(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            if self.conns[i].is_some() {
                self.close(ConnId(i as u32), CloseReason::Shutdown, now);
            }
        }
    }

    /// Messages accepted (acknowledged or queued) and not yet delivered, for the shutdown log.
    pub fn undelivered_messages(&self) -> usize {
        self.sessions
            .iter()
            .flatten()
            .map(|s| s.session.queue.len() + s.session.inflight.len())
            .sum()
    }

    /// The per-peer outboxes; the runtime drains them into the mesh.
    pub fn outbox(&mut self) -> &mut [VecDeque<ShardMsg>] {
        &mut self.outbox
    }

    fn outbox_full(&self) -> bool {
        self.outbox.iter().any(|q| q.len() >= self.cfg.outbox_messages_max)
    }

    /// Queues `msg` for `peer`; a message to this shard itself is handled at once.
    fn send_to_peer(&mut self, peer: u16, msg: ShardMsg, now: Instant) {
        if peer == self.id {
            self.handle_peer(peer, msg, now);
        } else {
            self.outbox[peer as usize].push_back(msg);
        }
    }

    /// Sends a control message to every other shard.
    fn broadcast(&mut self, make: impl Fn() -> ShardMsg) {
        for peer in 0..self.cfg.shards {
            if peer != self.id {
                self.outbox[peer as usize].push_back(make());
            }
        }
    }

    /// A message from shard `from`.
    pub fn handle_peer(&mut self, from: u16, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Publish { msg, normal, shared } => {
                self.deliver_forwarded(msg, normal, shared, now)
            }
            ShardMsg::SubAdd { filter, ack } => {
                self.remote_sub_add(from, &filter);
                if let Some(req) = ack {
                    self.send_to_peer(from, ShardMsg::DeltaAck { req }, now);
                }
            }
            ShardMsg::DeltaAck { req } => self.delta_acked(req, now),
            ShardMsg::SubRemove { filter } => self.remote_sub_remove(from, &filter),
            ShardMsg::SharedAdd { group, member, ack } => {
                self.shared_add(&group, member);
                if let Some(req) = ack {
                    self.send_to_peer(from, ShardMsg::DeltaAck { req }, now);
                }
            }
            ShardMsg::SharedRemove { group, shard, slot } => {
                self.shared_remove(&group, shard, slot)
            }
            ShardMsg::Retain { msg } => self.retained_apply(msg),
            ShardMsg::Claim { client_id, req } => self.registry_claim(from, client_id, req, now),
            ShardMsg::ClaimReply { req, previous } => self.claim_reply(req, previous, now),
            ShardMsg::Takeover { client_id, req, clean_start } => {
                self.handle_takeover(from, client_id, req, clean_start, now)
            }
            ShardMsg::TakeoverReply { req, state } => self.takeover_reply(req, state, now),
            ShardMsg::Release { client_id, owner } => {
                if self.registry.get(&client_id) == Some(&owner) {
                    self.registry.remove(&client_id);
                }
            }
        }
    }

    /// Connections open on this shard.
    pub fn connection_count(&self) -> usize {
        self.metrics.connections_current as usize
    }
}

#[cfg(test)]
mod tests;
