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
//!   per-peer outboxes of [`ShardMsg`] on two lanes ([`Shard::take_batch`] for data,
//!   [`Shard::take_control`] for control), and the connections that became ready (new output,
//!   a close, a lifted pause), drained with [`Shard::take_ready`]: the runtime wakes its own
//!   tasks for them. The shard holds no task wakers.
//!
//! Each connection's own protocol state (framing, phase and deadlines, keep alive, topic
//! aliases, the client's limits, its output buffer) is a `Conn` of `conn.rs` with private
//! fields: the shard asks it for packets and deadlines and acts on the answers, and keeps to
//! itself what spans connections (sessions, registry, replicas, routing).
//!
//! The runtime (`tern::runtime`, `tern::net`) moves bytes and messages; the tests drive
//! several shards in one thread through the same calls. Nothing here blocks, awaits or allocates
//! without a bound.

pub mod admin;
pub mod budget;
mod conn;
mod connect;
mod flow;
mod handover;
pub mod message;
mod persist;
mod publish;
mod retained;
mod shared;
mod slab;
mod subscribe;
mod timers;

use crate::ids::{ShardId, SlotGen, SlotId};
use core::net::SocketAddr;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

#[cfg(test)]
use crate::codec::ProtocolVersion;
use crate::codec::{self, Packet, ReasonCode, ReasonPacket, Will};
use crate::counters::Metrics;
use crate::session::{Session, SessionLimits};
use crate::topic::SubscriptionTrie;
use conn::{Conn, ConnCold, Input, Phase};
pub use connect::registry_shard;
pub use flow::{FlowLimits, SlowConsumerPolicy};
pub use message::{ClaimGen, Member, Owner, ShardMsg};
use retained::RetainedStore;
pub use retained::RETAIN_SEQUENCER;
use shared::SharedGroups;
pub use shared::{SharedStrategy, SharedSubscriptionsConfig, SHARED_GROUP_OVERRIDES_MAX};

/// Output buffer capacity an idle connection may keep for reuse; larger ones are freed once
/// written. Zero (issue 11): a connection with nothing left to write holds no output buffer;
/// during a burst the buffers are swapped and reused, so this costs one allocation per burst,
/// which the allocator's per-thread free lists (the shard's pool, in effect) serve cheaply.
pub const IDLE_TX_CAPACITY_MAX: usize = 0;

/// Identifies a connection within its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u32);

/// A connection as a record that outlives a turn remembers it: its id and the serial of the
/// connection that held the id then. Ids are reused after [`Shard::release`]; serials are not,
/// so a CONNACK or a session can never go to the next connection on the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnRef {
    id: ConnId,
    serial: u64,
}

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
    /// Password file and ACL, parsed (the runtime reads the files); replaced on reload with
    /// [`Shard::set_security`].
    pub security: std::sync::Arc<crate::auth::Security>,
    /// Check passwords inside the shard call (tests, tools). Otherwise (the broker) the shard
    /// queues each check for the runtime ([`Shard::take_password_checks`]) and waits for its
    /// verdict ([`Shard::handle_password_verdict`]).
    pub password_checks_inline: bool,
    /// Failed logins per source address per minute on this shard before its CONNECTs with
    /// credentials are refused with 0x9F.
    pub failed_logins_per_minute_max: u32,
    /// Bytes of deliveries waiting to be written to one connection; beyond, deliveries wait in
    /// its session queue. Reading from the connection pauses at twice this (its own responses).
    pub tx_bytes_max: usize,
    /// Messages waiting for one peer shard before the publishers that add to it are paused.
    pub outbox_messages_max: usize,
    /// Flow control: subscriber high/low-water marks and the slow-consumer policy.
    pub flow: FlowLimits,
    /// Bytes of publishes this shard may have crossing the mesh before its publishers are
    /// paused (`limits.mesh_bytes_max`), counted in `mesh_bytes`.
    pub mesh_bytes_max: usize,
    /// Mesh bytes in flight by sending shard, shared by every shard.
    pub mesh_bytes: std::sync::Arc<budget::MeshBytes>,
    /// v5 Response Information returned to clients that request it: this prefix followed by
    /// the client id and `/` (§3.2.2.3.15). `None`: not offered.
    pub response_information_prefix: Option<String>,
    /// Refuse v5 PUBLISH (and wills) whose Payload Format Indicator says UTF-8 when the payload
    /// is not (0x99, §3.3.2.3.2).
    pub check_payload_format: bool,
    /// How shared subscription groups pick a member, by default and per group name.
    pub shared: SharedSubscriptionsConfig,
    /// The broker-wide memory budget, one counter shared by every shard (see [`budget`]).
    pub memory: std::sync::Arc<budget::MemoryBudget>,
    /// Time a peer may accept no output bytes before its connection is closed (the IO driver
    /// applies it; the will is published).
    pub write_timeout: Duration,
    /// Time a resumed plain-TCP connection with nothing to read or write keeps its task before
    /// the IO driver parks it (`limits.park_idle_ms`; issue 11). The core does not use it.
    pub park_idle: Duration,
    /// Connections of this shard between accept and CONNACK at once (`limits.connecting_max`);
    /// the IO driver stops accepting at the bound. The core does not use it.
    pub connecting_max: usize,
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
            password_checks_inline: true,
            failed_logins_per_minute_max: 30,
            tx_bytes_max: 256 * 1024,
            outbox_messages_max: 1024,
            flow: FlowLimits {
                high_water_messages: 20,
                low_water_messages: 10,
                hard_cap_messages: 1000,
                hard_cap_bytes: 4 << 20,
                high_water_bytes: 1 << 20,
                qos0_queue_bytes_max: 2 << 20,
                slow_consumer_timeout: Duration::from_secs(10),
                slow_consumer_policy: SlowConsumerPolicy::Disconnect,
            },
            mesh_bytes_max: 1 << 20,
            mesh_bytes: std::sync::Arc::new(budget::MeshBytes::new(shards)),
            response_information_prefix: Some("responses/".into()),
            check_payload_format: true,
            shared: Default::default(),
            memory: Default::default(),
            write_timeout: Duration::from_secs(30),
            park_idle: Duration::from_secs(1),
            connecting_max: 1024,
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
    /// The peer accepted no output for the write timeout (no DISCONNECT: it cannot be sent).
    WriteTimeout,
    /// Another connection took the client id over.
    TakenOver,
    /// The broker is shutting down.
    Shutdown,
    /// An operator disconnected the client through the admin API (v5 reason 0x98).
    Administrative,
    /// CONNACK with a refusal was sent.
    Refused,
    /// A subscriber stayed congested too long, or its queue reached the hard cap, under the
    /// slow-consumer policy `disconnect`.
    SlowConsumer,
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
            CloseReason::Administrative => "disconnected by an administrator",
            CloseReason::SlowConsumer => "slow consumer: messages arrive faster than acknowledged",
            _ => "",
        }
    }

    fn disconnect_reason(self) -> Option<ReasonCode> {
        match self {
            CloseReason::Protocol(r) => Some(r),
            CloseReason::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            CloseReason::TakenOver => Some(ReasonCode::SessionTakenOver),
            CloseReason::Shutdown => Some(ReasonCode::ServerShuttingDown),
            CloseReason::Administrative => Some(ReasonCode::AdministrativeAction),
            CloseReason::SlowConsumer => Some(flow::SLOW_CONSUMER_REASON),
            _ => None,
        }
    }
}

/// Sizes of the records a connection and a session hold, for the memory plan
/// (`crate::memory_plan`) and the size budgets (`size_tests`).
#[derive(Clone, Copy, Debug)]
pub struct RecordSizes {
    /// The hot connection record, in its slab entry.
    pub conn: usize,
    /// The rare connection state, allocated when used.
    pub conn_cold: usize,
    /// A session slot (the session and its binding), in its slab entry.
    pub session_slot: usize,
    /// One retained message owed to a connection.
    pub retained_out: usize,
}

/// The sizes of this build's records.
pub fn record_sizes() -> RecordSizes {
    RecordSizes {
        conn: std::mem::size_of::<Option<Conn>>(),
        conn_cold: std::mem::size_of::<ConnCold>(),
        session_slot: std::mem::size_of::<Option<SessionSlot>>(),
        retained_out: std::mem::size_of::<RetainedOut>(),
    }
}

/// A retained message owed to a connection after its SUBACK.
#[derive(Debug)]
pub(crate) struct RetainedOut {
    msg: std::rc::Rc<crate::session::Message>,
    /// Delivery QoS: min(message, subscription).
    qos: codec::QoS,
    /// v5 Subscription Identifier of the SUBSCRIBE.
    identifier: Option<u32>,
}

/// Deadlines (keep alive, connect timeout, expiry, delayed will) handled per turn of the shard.
/// `tests/timers.rs` (a million idle sessions) times each turn's thread CPU time: on a quiet
/// 2-vCPU VM (2026-11-26, allocator purge delay 10 ms) the 99.9th percentile was 0.47-0.56 ms
/// at 128 per turn and 0.21-0.27 ms at 64, hence 64 (a close or an expiry costs more than a
/// re-arm). At 64 the longest turn of the shard's own work (each turn's least CPU time over
/// three runs, which leaves out the VM's stalls) is 0.54-0.64 ms; see loadtest/README.md.
pub const DEADLINES_PER_TURN: usize = 64;

/// Retained messages written per drain of a connection's backlog.
const RETAINED_BATCH: usize = 64;

/// A session slot: the session and whatever binds it to a connection.
#[derive(Debug)]
pub(crate) struct SessionSlot {
    session: Session,
    /// Local generation of the slot index (reused slots differ), for shared-subscription
    /// members and No Local.
    generation: SlotGen,
    /// The registry generation of the claim that installed this session.
    claim: ClaimGen,
    conn: Option<ConnId>,
    /// When an unconnected session expires.
    expires_at: Option<Instant>,
    /// A v5 will waiting for its Will Delay Interval (§3.1.3.2.2), and when it is due.
    /// Boxed: few sessions have one, and a `Will` is large.
    pending_will: Option<Box<PendingWill>>,
    /// Flow control state, as subscriber and as publisher.
    flow: flow::SlotFlow,
    /// Expiry and will deadlines armed in the shard's heap.
    timers: timers::SlotTimers,
    /// Bytes this session's messages are charged to the memory budget (its `held_bytes` when
    /// last recharged).
    charged: usize,
}

/// A v5 will waiting for its Will Delay Interval (§3.1.3.2.2).
#[derive(Debug)]
pub(crate) struct PendingWill {
    will: Will,
    /// When it is published unless its client comes back first.
    due: Instant,
}

/// A CONNECT waiting for the registry or a takeover.
#[derive(Debug)]
struct PendingConnect {
    conn: ConnRef,
    connect: Box<codec::Connect>,
    assigned_id: bool,
    /// Enhanced authentication that succeeded: method and final data for the CONNACK.
    auth_done: Option<(String, bytes::Bytes)>,
    /// The registry's generation for this claim, once its `ClaimReply` arrived.
    generation: Option<ClaimGen>,
    /// A newer CONNECT for the client id took this one over before it finished: the
    /// connection is closed, and the session, once it arrives, is passed on there.
    handoff: Option<connect::Handoff>,
}

/// A connection's state as the IO driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnStatus {
    /// Bytes wait in `tx`.
    pub has_tx: bool,
    /// The shard wants the socket closed once `tx` is flushed.
    pub closing: bool,
    /// Reading should pause: its own output is full, flow control holds its publisher, it
    /// waits for other shards or owes retained messages, or `memory_paused`.
    pub read_paused: bool,
    /// The broker-wide memory budget is used up and this connection is owed nothing (no
    /// message queued or in flight for it), so what it sends could only add: its reads pause
    /// until the budget recovers. Included in `read_paused`.
    pub memory_paused: bool,
    /// Flow control stopped decoding this publisher's input mid-buffer and has let it go
    /// since: the driver calls [`Shard::handle_read`] with no new bytes, which decodes the
    /// rest, before it reads the socket again (the socket may have nothing more to say).
    pub input_waiting: bool,
}

/// The broker state of one core.
pub struct Shard {
    id: ShardId,
    cfg: ShardConfig,
    /// Connections, in chunks (see [`slab`]).
    conns: slab::Slab<Conn>,
    conns_per_listener: Vec<usize>,
    /// Session slots, in chunks.
    sessions: slab::Slab<SessionSlot, SlotId>,
    next_generation: SlotGen,
    /// Client id → session slot. The key is the session's own `client_id` (one allocation).
    by_client: HashMap<Rc<str>, SlotId>,
    trie: SubscriptionTrie<subscribe::SubKey, subscribe::SubVal>,
    local_filter_refs: HashMap<String, u32>,
    shared: SharedGroups,
    retained: RetainedStore,
    /// Registry partition: client id → owning shard and the generation of its claim.
    /// A session installed on this shard takes its client id from here when present, so
    /// both share one allocation (issue 11).
    registry: HashMap<Rc<str>, Owner>,
    /// The registry partition's generation counter (one for all its client ids).
    next_claim: u64,
    /// Per registry shard: the highest generation of our claims it has answered. Answers
    /// from one registry arrive in order, so a `Takeover` naming a larger generation is for a
    /// claim of ours whose answer is still on its way.
    claims_seen: Vec<ClaimGen>,
    /// CONNECTs waiting for the registry or a takeover, by request id.
    pending: HashMap<u64, PendingConnect>,
    /// The request ids in `pending` by client id, so a `Takeover` finds its claim without a
    /// walk over every pending CONNECT (a reconnect storm has many).
    pending_by_client: HashMap<String, Vec<u64>>,
    /// CONNECTs whose password a worker is checking, by ticket. At most one per connection in
    /// `Phase::Verifying`, plus those whose connection closed before the verdict (bounded by
    /// the pool's queue).
    verifying: HashMap<u64, connect::AwaitingVerdict>,
    /// Password checks for the runtime to run ([`Shard::take_password_checks`]): at most one per
    /// connection in `Phase::Verifying`, so bounded by the connection count.
    password_checks: Vec<crate::auth::HashJob>,
    /// Failed logins per source address (bounded, see [`crate::auth::ratelimit`]).
    failed_logins: crate::auth::FailedLogins,
    /// Takeovers that arrived before the `ClaimReply` of the claim they name (at most one per
    /// pending CONNECT without a generation, so bounded by `pending`).
    early_takeovers: Vec<connect::EarlyTakeover>,
    /// Sessions handed over or joining while messages may still arrive on their old shard.
    handover: handover::Handover,
    /// Acknowledgements waiting for the other shards to apply subscriptions, by request id,
    /// with the number of peer answers still missing.
    pending_acks: HashMap<u64, subscribe::HeldAck>,
    next_req: u64,
    /// Serial of the next accepted connection.
    next_conn_serial: u64,
    /// Data lane: publishes for each peer shard.
    outbox: Vec<VecDeque<ShardMsg>>,
    /// Control lane: everything else for each peer shard (never behind data).
    control: Vec<VecDeque<ShardMsg>>,
    /// Local publishers paused because the data outbox of a peer was full, by peer.
    outbox_blocked: Vec<HashSet<crate::session::message::Origin>>,
    /// Session slots above their high-water mark (visited by the slow-consumer check).
    congested: HashSet<SlotId>,
    /// Set when a full offline queue refused the message being routed (v5 PUBACK 0x97).
    route_refused: bool,
    /// The topic name of the last PUBLISH that entered through this shard, owning its bytes:
    /// the next PUBLISH to the same topic (a publisher's stream, a fan-in) shares them instead
    /// of copying its own out of the read buffer (`publish::own_topic`). One name, at most a
    /// topic's size (64 KiB).
    last_topic: Option<codec::TopicName>,
    /// Whether the packet being handled was decoded in place from the caller's read buffer:
    /// its payload is then a copy of its own size already, not a slice of `rx`.
    decoded_in_place: bool,
    /// Connect timeouts, keep alive, session expiry and delayed wills, earliest first.
    deadlines: timers::Deadlines,
    /// Counters, read by the metrics endpoint and `$SYS`.
    pub metrics: Metrics,
    /// Publish-to-deliver latency of deliveries written by this shard, microseconds.
    pub latency: hdrhistogram::Histogram<u64>,
    /// Latency samples not yet in `latency`: (value, count) of a run of equal values (the
    /// deliveries of one publish share one), recorded with one `record_n` (`publish`).
    latency_run: (u64, u64),
    /// The PUBLISH encoding shared by the subscribers of the message being delivered
    /// (`publish::SharedEncoding`); set only inside one `deliver_matches`.
    shared_encoding: publish::SharedEncoding,
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
    /// Records for the write-ahead log (`None`: persistence off). See [`persist`].
    journal: Option<persist::Journal>,
    /// Connections with new output or a state change since the runtime last asked
    /// ([`Shard::take_ready`]). Each id at most once (`Conn::ready`).
    ready: Vec<ConnId>,
}

impl Shard {
    /// A new, empty shard `id` of `cfg.shards`.
    pub fn new(id: ShardId, cfg: ShardConfig) -> Self {
        assert!(id.0 < cfg.shards, "invariant: shard id below shard count");
        assert!(cfg.tx_bytes_max >= 1024, "invariant: tx bound holds a few packets");
        assert!(cfg.listeners.len() <= usize::from(u16::MAX), "invariant: listener index fits u16");
        let peers = cfg.shards as usize;
        let failed_logins_max = cfg.failed_logins_per_minute_max;
        Self {
            id,
            conns_per_listener: vec![0; cfg.listeners.len()],
            cfg,
            conns: slab::Slab::default(),
            sessions: slab::Slab::default(),
            next_generation: SlotGen(1),
            by_client: HashMap::new(),
            trie: SubscriptionTrie::new(),
            local_filter_refs: HashMap::new(),
            shared: SharedGroups::default(),
            retained: RetainedStore::default(),
            registry: HashMap::new(),
            next_claim: 1,
            claims_seen: vec![ClaimGen(0); peers],
            pending: HashMap::new(),
            pending_by_client: HashMap::new(),
            verifying: HashMap::new(),
            password_checks: Vec::new(),
            failed_logins: crate::auth::FailedLogins::new(failed_logins_max),
            early_takeovers: Vec::new(),
            handover: handover::Handover::default(),
            pending_acks: HashMap::new(),
            next_req: 1,
            next_conn_serial: 1,
            reading: false,
            resume_reads: Vec::new(),
            journal: None,
            ready: Vec::new(),
            outbox: (0..peers).map(|_| VecDeque::new()).collect(),
            control: (0..peers).map(|_| VecDeque::new()).collect(),
            outbox_blocked: (0..peers).map(|_| HashSet::new()).collect(),
            congested: HashSet::new(),
            route_refused: false,
            last_topic: None,
            decoded_in_place: false,
            deadlines: Default::default(),
            metrics: Metrics::default(),
            latency: crate::counters::new_latency_histogram(),
            latency_run: (0, 0),
            shared_encoding: publish::SharedEncoding::default(),
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
    pub(crate) fn can_read(&self, slot: SlotId, topic: &codec::TopicName) -> bool {
        let Some(acl) = &self.cfg.security.acl else { return true };
        let Some(s) = self.slot(slot) else { return false };
        acl.can_read(s.session.username.as_deref(), &s.session.client_id, topic.as_str())
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
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
        let serial = self.next_conn_serial;
        self.next_conn_serial += 1;
        let deadline = now + self.cfg.connect_timeout;
        // Listener indexes come from the configuration's listener list (far below 65 536).
        let conn = Conn::new(serial, listener as u16, peer, now, deadline, tls_username);
        self.metrics.connections_total += 1;
        self.metrics.connections_current += 1;
        let id = self.conns.insert(conn);
        self.arm_conn(ConnId(id), serial, now);
        Some(ConnId(id))
    }

    fn conn_ref(&self, id: ConnId) -> Option<ConnRef> {
        self.conn(id).map(|c| ConnRef { id, serial: c.serial() })
    }

    /// Whether the very connection `r` names is still waiting for its CONNACK.
    fn still_connecting(&self, r: ConnRef) -> bool {
        self.conn(r.id).is_some_and(|c| c.serial() == r.serial && c.is_connecting())
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.0)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.0)
    }

    /// The peer address of a connection, for logs.
    pub fn peer(&self, id: ConnId) -> Option<SocketAddr> {
        self.conn(id).map(Conn::peer)
    }

    /// The client id of a connection once its CONNECT was accepted, for logs.
    pub fn client_id(&self, id: ConnId) -> Option<&str> {
        // Stored once, in the session: the connection knows its slot once CONNECT is accepted.
        let slot = self.conn(id)?.active_slot()?;
        self.slot(slot).map(|s| &*s.session.client_id)
    }

    /// Moves the connections that became ready since the last call (new output in `tx`, a
    /// close, a lifted flow-control pause) into `out`. The runtime calls it after each call into
    /// the shard and wakes the tasks that drive those connections. Each connection is listed
    /// at most once, so the list is bounded by the connection count.
    pub fn take_ready(&mut self, out: &mut Vec<ConnId>) {
        for id in self.ready.drain(..) {
            if let Some(c) = self.conns.get_mut(id.0) {
                c.clear_ready();
                out.push(id);
            }
        }
    }

    /// Lists connection `id` as ready (see [`Shard::take_ready`]).
    fn mark_ready(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id.0) {
            if c.mark_ready() {
                self.ready.push(id);
            }
        }
    }

    /// The driver's turn on [`ConnStatus::input_waiting`]: when flow control let this
    /// connection go with packets it sent before the pause still in `rx`, decodes those (the
    /// client may send nothing more to wake a read) and returns `true`; else does nothing.
    /// The IO driver, the simulation and the fuzz body all call this before reading more.
    pub fn decode_waiting_input(&mut self, id: ConnId, now: Instant) -> bool {
        let waiting = self.status(id).input_waiting;
        if waiting {
            self.handle_read(id, &[], now);
        }
        waiting
    }

    /// [`Shard::decode_waiting_input`] for every connection (the test cluster's turn).
    /// Returns how many connections it decoded for.
    #[cfg(test)]
    pub(crate) fn decode_waiting_inputs(&mut self, now: Instant) -> usize {
        let ids: Vec<ConnId> = self.conns.entries().map(|(i, _)| ConnId(i)).collect();
        ids.into_iter().filter(|&id| self.decode_waiting_input(id, now)).count()
    }

    /// What the IO driver should do for this connection.
    pub fn status(&self, id: ConnId) -> ConnStatus {
        match self.conn(id) {
            Some(c) => {
                let memory_paused = self.memory_exhausted()
                    && match c.active_slot() {
                        Some(slot) => self.slot(slot).is_none_or(|s| s.session.held_bytes() == 0),
                        // A CONNECT is read, to be refused with a reason code.
                        None => false,
                    };
                // No shard-wide condition here: a full peer outbox or mesh byte bound pauses
                // the publishers that add to it (`flow`).
                // Retained messages owed after a SUBACK hold reading while they are written
                // (bounded work per SUBSCRIBE), but not while the next one waits for the
                // client's PUBACK/PUBREC/PUBCOMP: those must be read for it to go out.
                let backlog_held = c.has_backlog() && !self.backlog_awaits_acks(c);
                let read_paused = c.output_bytes() >= 2 * self.cfg.tx_bytes_max
                    || self.publisher_paused(c.phase())
                    || c.read_held()
                    || backlog_held
                    || memory_paused;
                ConnStatus {
                    has_tx: c.has_output(),
                    closing: c.is_closing(),
                    read_paused,
                    memory_paused,
                    input_waiting: c.input_stopped() && !read_paused && !c.is_closing(),
                }
            }
            None => ConnStatus {
                has_tx: false,
                closing: true,
                read_paused: true,
                memory_paused: false,
                input_waiting: false,
            },
        }
    }

    /// Takes the bytes waiting for the connection as written at once (tests and tools that
    /// consume output whole), leaving an empty buffer, then refills the buffer from the
    /// session queue (up to `tx_bytes_max`).
    pub fn take_tx(&mut self, id: ConnId, now: Instant) -> BytesMut {
        let mut out = BytesMut::new();
        self.swap_tx(id, &mut out, now);
        self.output_unwritten(id, 0, now);
        out
    }

    /// The driver's turn: the bytes waiting for the connection go into the caller's (empty)
    /// buffer, whose allocation the connection keeps for its next output (no buffer is freed
    /// and regrown per write). An empty `buf` means the driver wrote everything it took
    /// before. What it takes now counts against `tx_bytes_max` until it reports it written
    /// ([`Shard::output_unwritten`]), so the buffer refilled meanwhile holds only the rest of
    /// the bound. Retained messages owed to it are encoded first, a batch at a time.
    pub fn swap_tx(&mut self, id: ConnId, buf: &mut BytesMut, now: Instant) {
        debug_assert!(buf.is_empty());
        let Some(c) = self.conn_mut(id) else { return };
        c.set_unwritten(0);
        if c.has_backlog() {
            self.drain_retained(id, now);
        }
        let Some(c) = self.conn_mut(id) else { return };
        let active = c.active_slot();
        if let (0, Some(slot)) = (c.tx_len(), active) {
            // The whole bound was the driver's until now: the queue waits for this turn.
            self.pump(id, slot, now);
        }
        let Some(c) = self.conn_mut(id) else { return };
        c.swap_tx(buf);
        c.set_unwritten(buf.len());
        if let Some(slot) = active {
            self.pump(id, slot, now);
        }
        // An idle connection keeps no large output buffer (the driver frees its own likewise).
        if let Some(c) = self.conn_mut(id) {
            c.trim_idle_tx(IDLE_TX_CAPACITY_MAX);
        }
    }

    /// The driver still holds `bytes` of what it took with [`Shard::swap_tx`] unwritten (it
    /// calls this as the socket takes them). The room that frees refills the output buffer
    /// from the session queue at once, so the next write is ready while this one goes out.
    pub fn output_unwritten(&mut self, id: ConnId, bytes: usize, now: Instant) {
        let Some(c) = self.conn_mut(id) else { return };
        c.set_unwritten(bytes);
        let Some(slot) = c.active_slot() else { return };
        if c.output_bytes() < self.cfg.tx_bytes_max
            && self.slot(slot).is_some_and(|s| !s.session.queue.is_empty())
        {
            self.pump(id, slot, now);
        }
    }

    /// Bytes arrived on a connection. Decodes and handles every whole packet; keeps a partial
    /// one. A malformed packet closes this connection only.
    pub fn handle_read(&mut self, id: ConnId, data: &[u8], now: Instant) {
        let reading = self.reading;
        let Some(c) = self.conn_mut(id) else { return };
        // No decode loop running: the whole packets of `data` are decoded straight from it,
        // and only what the loop leaves (a partial packet, or packets a held or paused
        // connection does not read yet) is copied into `rx` (issue 10: no copy of every read).
        // A partial packet buffered before gets just the bytes that complete it.
        let split = if reading { data.len() } else { c.completing_rx(data) };
        if !c.receive(&data[..split], now) {
            return;
        }
        self.metrics.bytes_received += data.len() as u64;
        if reading {
            // Called from inside a decode loop (a completed CONNACK or SUBACK): resume later,
            // iteratively, never by recursion.
            if !self.resume_reads.contains(&id) {
                self.resume_reads.push(id);
            }
            return;
        }
        self.reading = true;
        let mut input = &data[split..];
        self.decode_packets(id, now, &mut input);
        if !input.is_empty() {
            // Before any resumed connection decodes: this one's bytes stay in order. Dropped
            // if the loop closed the connection (as `receive` drops bytes for a closing one).
            if let Some(c) = self.conn_mut(id) {
                c.receive(input, now);
            }
        }
        // Bounded: an id is queued again only by a completion that consumed a held state.
        while let Some(next) = self.resume_reads.pop() {
            self.decode_packets(next, now, &mut &[][..]);
        }
        self.reading = false;
    }

    /// Decodes and handles the whole packets buffered for `id` while the connection may
    /// read (not closing, not waiting for CONNACK or a held SUBACK) and flow control does not
    /// hold its publisher: those of its `rx`, then those at the front of `input` (the caller's
    /// read buffer, decoded in place; what is not decoded is left in `input` for the caller to
    /// put in `rx`). A publisher paused mid-buffer stops at once: the rest of what it
    /// sent waits in `rx` ([`ConnStatus::input_waiting`]), so the overshoot past a
    /// subscriber's high-water mark is one packet per publisher, not a whole read of each
    /// (fan-in: 8 publishers x 64 KiB reads of small QoS 0 messages overran a subscriber's
    /// `flow_qos0_queue_bytes_max` and lost 3.4 % of them).
    fn decode_packets(&mut self, id: ConnId, now: Instant, input: &mut &[u8]) {
        let limits = conn::InputLimits {
            packet_bytes_max: self.cfg.packet_size_bytes_max,
            preauth_packet_bytes_max: self.cfg.preauth_packet_bytes_max,
            user_properties: codec::UserPropertyBudget {
                count: self.cfg.user_properties_max,
                bytes: self.cfg.user_property_bytes_max,
            },
        };
        // Bounded: each iteration consumes at least one packet from a finite buffer.
        loop {
            let Some(c) = self.conn(id) else { return };
            let paused = self.publisher_paused(c.phase());
            // The fields, not `conn_mut`: the last topic is lent beside the connection.
            let Some(c) = self.conns.get_mut(id.0) else { return };
            // What `input` still holds goes into `rx` when this returns (`handle_read`).
            c.set_input_stopped(paused, !input.is_empty());
            if paused {
                return;
            }
            self.decoded_in_place = c.rx_is_empty() && !input.is_empty();
            match c.poll_packet(&limits, input, self.last_topic.as_ref()) {
                Input::Packet(packet) => self.handle_packet(id, packet, now),
                Input::Incomplete | Input::Held => return,
                Input::NotConnect => {
                    self.metrics.protocol_errors += 1;
                    tracing::debug!(conn = id.0, "first packet is not CONNECT [MQTT-3.1.0-1]");
                    return self.close(id, CloseReason::Refused, now);
                }
                Input::Malformed { error, pre_auth, awaiting_connect, connect_version } => {
                    self.metrics.protocol_errors += 1;
                    match error.kind {
                        codec::ErrorKind::PacketTooLarge { .. } if pre_auth => {
                            self.metrics.preauth_packets_refused_size += 1;
                        }
                        codec::ErrorKind::UserPropertiesExceeded => {
                            self.metrics.user_properties_refused += 1;
                        }
                        _ => {}
                    }
                    tracing::debug!(conn = id.0, %error, "malformed packet");
                    if awaiting_connect {
                        self.refuse_connect_error(id, &error, connect_version, now);
                    } else {
                        self.close(id, CloseReason::Protocol(error.reason_code()), now);
                    }
                    return;
                }
            }
        }
    }

    /// Writes up to [`RETAINED_BATCH`] retained messages from the connection's backlog while
    /// its output is under half its bound.
    pub(crate) fn drain_retained(&mut self, id: ConnId, now: Instant) {
        let half = self.cfg.tx_bytes_max / 2;
        for _ in 0..RETAINED_BATCH {
            let Some(c) = self.conn(id) else { return };
            let Some(slot) = c.active_slot() else {
                if let Some(c) = self.conn_mut(id) {
                    c.clear_backlog();
                }
                break;
            };
            // A QoS 1/2 message behind a full in-flight window is not moved into the session
            // queue: it stays owed until the window opens (the client's acknowledgements are
            // read meanwhile, `status`), so the backlog, not the queue, holds the rest.
            if c.output_bytes() >= half || self.backlog_awaits_acks(c) {
                break;
            }
            let Some(r) = self.conn_mut(id).and_then(Conn::pop_backlog) else { break };
            let out = crate::session::Outgoing {
                msg: r.msg,
                qos: r.qos,
                retain: true,
                subscription_ids: r.identifier.into_iter().collect(),
            };
            self.deliver_retained(slot, out, now);
        }
        self.recharge_backlog(id);
    }

    /// Whether the next retained message owed to `c` is QoS 1 or 2 and its session's in-flight
    /// window is full: it can go out only after the client acknowledges what is in flight.
    fn backlog_awaits_acks(&self, c: &Conn) -> bool {
        let Some(qos) = c.next_backlog_qos() else { return false };
        qos != codec::QoS::AtMostOnce
            && c.active_slot()
                .and_then(|slot| self.slot(slot))
                .is_some_and(|s| !s.session.window_open(c.client_receive_max()))
    }

    /// Brings the memory-budget charge of a connection's retained backlog in line with its
    /// length (the messages are the store's; an entry costs its own size).
    fn recharge_backlog(&mut self, id: ConnId) {
        // The fields, not `conn_mut`: the memory budget is borrowed beside the connection.
        if let Some(c) = self.conns.get_mut(id.0) {
            c.recharge_backlog(&self.cfg.memory);
        }
    }

    /// The socket reached end of stream or failed.
    pub fn handle_closed(&mut self, id: ConnId, now: Instant) {
        self.close(id, CloseReason::NetworkError, now);
    }

    /// The peer accepted no output for `write_timeout`: the connection is closed as a network
    /// failure (its will is published) and its unsent output discarded.
    pub fn handle_write_timeout(&mut self, id: ConnId, now: Instant) {
        self.close(id, CloseReason::WriteTimeout, now);
        if let Some(c) = self.conn_mut(id) {
            c.discard_tx();
        }
    }

    /// The driver closed the socket: the connection slot is freed.
    pub fn release(&mut self, id: ConnId, now: Instant) {
        if self.conn(id).is_some_and(|c| !c.is_closing()) {
            self.close(id, CloseReason::NetworkError, now);
        }
        let Some(mut c) = self.conns.remove(id.0) else { return };
        // What it still holds is released from the memory budget with it.
        c.take_will(&self.cfg.memory);
        c.clear_backlog();
        c.recharge_backlog(&self.cfg.memory);
        self.conns_per_listener[c.listener()] -= 1;
        self.metrics.connections_current -= 1;
    }

    fn handle_packet(&mut self, id: ConnId, packet: Packet, now: Instant) {
        let Some(c) = self.conn(id) else { return };
        let phase_active = c.active_slot();
        let awaiting_connect = matches!(c.phase(), Phase::AwaitConnect { .. });
        let authenticating = matches!(c.phase(), Phase::Authenticating { .. });
        if let Some(slot) = phase_active {
            self.journal_packet(slot, &packet);
        }
        match (packet, phase_active) {
            (Packet::Connect(connect), None) if awaiting_connect => {
                self.handle_connect(id, connect, now)
            }
            (Packet::Auth(a), None) if authenticating => self.handle_auth(id, a, now),
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

    fn handle_disconnect(&mut self, id: ConnId, slot: SlotId, d: ReasonPacket, now: Instant) {
        let v5 = self.conn(id).is_some_and(|c| c.version().is_v5());
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

    /// Encodes `packet` into the connection's output and wakes its task. A v5 packet larger
    /// than the client's Maximum Packet Size loses its optional properties until it fits
    /// ([MQTT-3.1.2-24]); one that cannot fit is not sent, and a CONNACK that cannot fit closes
    /// the connection instead (see `complete_connack`).
    fn send(&mut self, id: ConnId, packet: &Packet) {
        self.send_fitted(id, packet);
    }

    /// [`Shard::send`], returning whether the packet was sent.
    fn send_fitted(&mut self, id: ConnId, packet: &Packet) -> bool {
        let Some(c) = self.conn_mut(id) else { return false };
        match c.send(packet) {
            Ok(written) => {
                self.mark_ready(id);
                self.metrics.bytes_sent += written as u64;
                true
            }
            Err(conn::Unsent::TooLarge) => {
                self.metrics.packets_dropped_too_large += 1;
                tracing::debug!(conn = id.0, "packet exceeds the client's maximum packet size");
                false
            }
            Err(conn::Unsent::Encode(e)) => {
                // Only reachable with a packet the broker built wrong; keep serving others.
                tracing::error!(conn = id.0, error = %e, "could not encode packet");
                false
            }
        }
    }

    /// Closes a connection: sends the v5 DISCONNECT the reason calls for, publishes the will when
    /// the close was abnormal, detaches or ends the session. The socket is closed by the driver
    /// once the output is flushed.
    ///
    /// Wills ([MQTT-3.1.2-8]): a connection's will is published when it closes without
    /// DISCONNECT once its CONNECT was accepted, that is once its session is installed: when
    /// Active, and when Connecting with the session installed and only the CONNACK held until
    /// the other shards apply its moved subscriptions (the will is stored on the connection
    /// then). Before that (waiting for CONNECT, authentication, the password check, the
    /// registry or a takeover) the CONNECT was not accepted and no will exists: a client that
    /// never got in cannot publish.
    pub fn close(&mut self, id: ConnId, reason: CloseReason, now: Instant) {
        let held = self.conn_ref(id).and_then(|r| self.held_connack_slot(r));
        let Some((phase, will)) = self.close_conn_only(id, reason) else { return };
        let will = will.filter(|_| reason.publishes_will());
        match phase {
            Phase::Active { slot } => {
                if let Some(w) = will {
                    self.will_or_delay(slot, w, now);
                }
                self.detach_session(slot, now);
            }
            // The session detaches when its held CONNACK completes and finds the connection
            // gone (`complete_connack`); the will goes now, or waits for its delay there.
            Phase::Connecting { .. } => {
                if let (Some(w), Some(slot)) = (will, held) {
                    self.will_or_delay(slot, w, now);
                }
            }
            _ => {}
        }
    }

    /// The session slot whose CONNACK waits for the other shards on behalf of connection `r`.
    /// Linear in the held acknowledgements (bounded by the connections waiting for peers).
    fn held_connack_slot(&self, r: ConnRef) -> Option<SlotId> {
        self.pending_acks.values().find_map(|held| match &held.ack {
            subscribe::PendingAck::Conn { conn, slot, claim, .. } if *conn == r => {
                self.slot(*slot).is_some_and(|s| s.claim == *claim).then_some(*slot)
            }
            _ => None,
        })
    }

    /// Marks the connection closing and sends the v5 DISCONNECT, without touching its session.
    /// Returns the phase it was in and its will.
    fn close_conn_only(
        &mut self,
        id: ConnId,
        reason: CloseReason,
    ) -> Option<(Phase, Option<Will>)> {
        // The fields, not `conn_mut`: the memory budget is borrowed beside the connection.
        let c = self.conns.get_mut(id.0)?;
        let phase = c.start_close()?;
        let v5 = c.version().is_v5();
        let will = c.take_will(&self.cfg.memory);
        let peer = c.peer();
        self.mark_ready(id);
        if tracing::enabled!(tracing::Level::INFO) {
            // The connection's own span exists at debug level only: name it here.
            let cid = match phase {
                Phase::Active { slot } => self.slot(slot).map(|s| &*s.session.client_id),
                _ => None,
            };
            let cid = cid.unwrap_or_default();
            tracing::info!(conn = id.0, %peer, client_id = cid, ?reason, "disconnected");
        }
        match reason {
            CloseReason::KeepAliveTimeout => self.metrics.keepalive_timeouts += 1,
            CloseReason::ConnectTimeout => self.metrics.connect_timeouts += 1,
            CloseReason::WriteTimeout => self.metrics.write_timeouts += 1,
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
    fn will_or_delay(&mut self, slot: SlotId, will: Will, now: Instant) {
        let delay = will.properties.will_delay_interval().unwrap_or(0);
        let expiry = self.slot(slot).map_or(0, |s| s.session.expiry_secs);
        if delay == 0 || expiry == 0 {
            return self.publish_will(slot, will, now);
        }
        let due = now + Duration::from_secs(u64::from(delay.min(expiry)));
        self.journal_will_pending(slot, &will, due);
        if let Some(s) = self.slot_mut(slot) {
            s.pending_will = Some(Box::new(PendingWill { will, due }));
            self.arm_will(slot, due);
        }
    }

    /// The connection of a session went away: end the session or start its expiry clock.
    fn detach_session(&mut self, slot: SlotId, now: Instant) {
        self.journal_touch(slot);
        self.flow_offline(slot);
        let Some(s) = self.slot_mut(slot) else { return };
        s.conn = None;
        match s.session.expiry_secs {
            0 => return self.destroy_session(slot, now),
            u32::MAX => {}
            expiry => {
                let at = now + Duration::from_secs(u64::from(expiry));
                s.expires_at = Some(at);
                self.arm_expiry(slot, at);
            }
        }
        // A persistent session stays in its shared groups, as an offline member.
        self.shared_presence(slot, false);
    }

    /// Brings the memory-budget charge of `slot` in line with what its session holds now.
    /// Called after every change to a session's queue or in-flight map.
    pub(crate) fn recharge_slot(&mut self, slot: SlotId) {
        let Some(s) = self.sessions.get_mut(slot) else {
            return;
        };
        let held = s.session.held_bytes();
        self.cfg.memory.recharge(s.charged, held);
        s.charged = held;
    }

    /// Whether the broker-wide memory budget is used up (see [`budget`]). Counted when it
    /// refuses something (`connect_refused_memory`, `messages_dropped_memory`).
    pub fn memory_exhausted(&self) -> bool {
        self.cfg.memory.exhausted()
    }

    fn slot(&self, slot: SlotId) -> Option<&SessionSlot> {
        self.sessions.get(slot)
    }

    fn slot_mut(&mut self, slot: SlotId) -> Option<&mut SessionSlot> {
        self.sessions.get_mut(slot)
    }

    /// Removes a session: its subscriptions leave the trie (and the other shards' replicas),
    /// and the registry forgets this shard as the owner.
    fn destroy_session(&mut self, slot: SlotId, now: Instant) {
        // A delayed will goes out when its session ends ([MQTT-3.1.3-9]).
        if let Some(pending) = self.take_pending_will(slot) {
            self.publish_will(slot, pending.will, now);
        }
        self.flow_forget(slot);
        let upstream = self.joining_take(slot).and_then(|t| t.upstream());
        let Some(s) = self.sessions.remove(slot) else { return };
        if let Some(up) = upstream {
            self.joining_abandoned(&s.session.client_id, up, now);
        }
        self.cfg.memory.recharge(s.charged, 0);
        for filter in s.session.subscriptions.keys() {
            self.remove_subscription_entry(slot, s.generation, filter);
        }
        self.metrics.messages_dropped_session_end += s.session.queue.len() as u64;
        self.by_client.remove(&s.session.client_id);
        self.journal_ended(&s.session.client_id);
        self.metrics.sessions_current = self.by_client.len() as u64;
        let owner = Owner { shard: self.id, generation: s.claim };
        let client_id = s.session.client_id.to_string();
        self.send_to_registry(ShardMsg::Release { client_id, owner }, now);
    }

    /// Periodic work: keep alive and connect timeouts, session expiry, delayed wills, slow
    /// consumers. Call about once a second; it visits only what is due (`timers`) and the
    /// congested subscribers (`flow`). Unbounded in the deadlines it handles: the runtime uses
    /// [`Shard::tick_bounded`].
    pub fn tick(&mut self, now: Instant) {
        self.tick_bounded(now, usize::MAX);
    }

    /// [`Shard::tick`] handling at most `budget` due deadlines; returns whether due ones remain,
    /// which [`Shard::run_due`] handles in later turns (with the same `now`).
    pub fn tick_bounded(&mut self, now: Instant, budget: usize) -> bool {
        self.flush_latency();
        self.metrics.memory_exhausted = u64::from(self.memory_exhausted());
        self.failed_logins.expire(now);
        let more = self.run_deadlines(now, budget);
        self.flow_tick(now);
        self.flow_retry_outboxes();
        more
    }

    /// Handles at most `budget` more deadlines due at `now` (the rest of a bounded tick);
    /// returns whether due ones remain.
    pub fn run_due(&mut self, now: Instant, budget: usize) -> bool {
        self.run_deadlines(now, budget)
    }

    /// Closes every connection with "server shutting down". Sessions are kept until the process
    /// exits; the count of queued messages that will not be delivered is logged by the caller.
    pub fn shutdown(&mut self, now: Instant) {
        for i in 0..self.conns.end() {
            if self.conns.get(i).is_some() {
                self.close(ConnId(i), CloseReason::Shutdown, now);
            }
        }
    }

    /// Messages accepted (acknowledged or queued) and not yet delivered, for the shutdown log.
    pub fn undelivered_messages(&self) -> usize {
        self.sessions.iter().map(|s| s.session.queue.len() + s.session.inflight.len()).sum()
    }

    /// Whether the data outbox for `peer`, or this shard's publishes crossing the mesh in
    /// bytes (`mesh_bytes_max`), are at their bound: a publisher adding to it is paused.
    fn outbox_full(&self, peer: usize) -> bool {
        self.outbox[peer].len() >= self.cfg.outbox_messages_max
            || self.cfg.mesh_bytes.in_flight(self.id) >= self.cfg.mesh_bytes_max
    }

    /// The data-lane outboxes, for tests that move or inspect messages by hand.
    #[cfg(test)]
    pub(crate) fn outbox(&mut self) -> &mut [VecDeque<ShardMsg>] {
        &mut self.outbox
    }

    /// The control-lane outboxes, for tests that move or inspect messages by hand.
    #[cfg(test)]
    pub(crate) fn control_lane(&mut self) -> &mut [VecDeque<ShardMsg>] {
        &mut self.control
    }

    /// Queues `msg` for `peer` on its lane; a message to this shard itself is handled at once.
    fn send_to_peer(&mut self, peer: ShardId, msg: ShardMsg, now: Instant) {
        if peer == self.id {
            self.handle_peer(peer, msg, now);
        } else if msg.is_data() {
            self.outbox[peer.index()].push_back(msg);
        } else {
            self.control[peer.index()].push_back(msg);
        }
    }

    /// Sends a control message to every other shard.
    fn broadcast(&mut self, make: impl Fn() -> ShardMsg) {
        for peer in (0..self.cfg.shards).map(ShardId) {
            if peer != self.id {
                let msg = make();
                let lane = if msg.is_data() { &mut self.outbox } else { &mut self.control };
                lane[peer.index()].push_back(msg);
            }
        }
    }

    /// A message from shard `from`.
    pub fn handle_peer(&mut self, from: ShardId, msg: ShardMsg, now: Instant) {
        match msg {
            ShardMsg::Publish { msg, normal, shared } => {
                // Charged by the sender while it crossed the mesh (see `route`).
                let cost = msg.cost_bytes();
                self.cfg.memory.recharge(cost, 0);
                let half = self.cfg.mesh_bytes_max / 2;
                if self.cfg.mesh_bytes.received(from, cost, half) {
                    self.send_to_peer(from, ShardMsg::MeshDrained, now);
                }
                self.deliver_forwarded(from, msg, normal, shared, now)
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
            ShardMsg::SharedRemove { group, shard, slot, generation } => {
                self.shared_remove(&group, shard, slot, generation)
            }
            ShardMsg::Retain { msg, source } => self.retained_apply(msg, source),
            ShardMsg::RetainRequest { msg, source } => self.retained_sequence(msg, source),
            ShardMsg::Claim { client_id, req } => self.registry_claim(from, client_id, req, now),
            ShardMsg::ClaimReply { req, generation, previous } => {
                self.claim_reply(from, req, generation, previous, now)
            }
            ShardMsg::Takeover { client_id, req, generation, target, clean_start } => {
                let ask = connect::Handoff { to: from, req, generation, clean_start };
                self.handle_takeover(client_id, target, ask, now)
            }
            ShardMsg::TakeoverReply { req, state, forwarding } => {
                let upstream = forwarding.then_some(from);
                self.finish_connect(req, state, upstream, now)
            }
            ShardMsg::Forwarded { client_id, generation, delivery } => {
                self.forwarded(from, client_id, generation, *delivery, now)
            }
            ShardMsg::ForwardStop { client_id, generation } => {
                self.forward_stop(from, &client_id, generation, now)
            }
            ShardMsg::ForwardEnd { client_id, generation } => {
                self.forward_ended(from, &client_id, generation, now)
            }
            ShardMsg::Fence { token } => self.send_to_peer(from, ShardMsg::FenceAck { token }, now),
            ShardMsg::FenceAck { token } => self.fence_acked(from, token, now),
            ShardMsg::Pause { session, generation } => self.publisher_pause(session, generation),
            ShardMsg::Resume { session, generation } => self.publisher_resume(session, generation),
            ShardMsg::MeshDrained => self.flow_retry_outboxes(),
            ShardMsg::Release { client_id, owner } => {
                // Only the claim it names: a newer claim stays ([MQTT-3.1.4-2] fencing).
                if self.registry.get(client_id.as_str()) == Some(&owner) {
                    self.registry.remove(client_id.as_str());
                }
            }
        }
    }

    /// Connections open on this shard.
    pub fn connection_count(&self) -> usize {
        self.metrics.connections_current as usize
    }
}

/// Bytes a will counts for in the memory budget, as a message would.
fn will_cost(w: &Will) -> usize {
    crate::session::message::MESSAGE_OVERHEAD_BYTES
        + w.topic.heap_bytes()
        + w.payload.len()
        + w.properties.heap_bytes()
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod size_tests;
#[cfg(test)]
mod tests;
