//! One connection's protocol state, apart from the shard's (routing, registry, replicas,
//! sessions): what a [`Conn`] holds and the logic that needs nothing shard-wide.

use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::budget::MemoryBudget;
use super::connect::AuthInProgress;
use super::{publish, CloseReason, RetainedOut};
use crate::codec::{self, Packet, ProtocolVersion, ReasonCode, Will};
use crate::ids::SlotId;
use crate::session::Outgoing;

/// Where a connection stands.
#[derive(Debug)]
pub(super) enum Phase {
    /// Accepted, waiting for CONNECT until the deadline.
    AwaitConnect { deadline: Instant },
    /// CONNECT with an Authentication Method received; AUTH exchange under way (§4.12).
    Authenticating { deadline: Instant },
    /// CONNECT received; its password is being checked on a worker thread (`ticket` names the
    /// job). Nothing is read meanwhile.
    Verifying { deadline: Instant, ticket: u64 },
    /// CONNECT received; waiting for the registry, maybe a takeover, and the subscriptions of
    /// a moved session. Closed at `deadline` (the connect timeout again) if still waiting.
    Connecting { deadline: Instant },
    /// Bound to a session slot.
    Active { slot: SlotId },
    /// Closed by the shard; bytes in `tx` are flushed, then the socket is closed.
    Closing,
}

/// One network connection: the hot record, what every connection needs between packets
/// (issue 11: at a million mostly idle connections each byte here is a megabyte; the budget is
/// checked in `size_tests`). Whatever only some connections use lives in [`ConnCold`], boxed
/// and allocated on first use.
#[derive(Debug)]
pub(crate) struct Conn {
    phase: Phase,
    /// Unique per shard over its life (see [`super::ConnRef`]).
    serial: u64,
    /// Received bytes not yet decoded (a partial packet). Empty and unallocated when idle.
    rx: BytesMut,
    /// Encoded bytes waiting to be written.
    tx: BytesMut,
    /// Bytes the driver took with [`super::Shard::swap_tx`] and has not written yet, as it last
    /// told ([`super::Shard::output_unwritten`]). Counted with `tx` against `tx_bytes_max` (issue 9): a
    /// socket that stops taking bytes holds one bound of output, not the driver's buffer and
    /// a refilled `tx` beside it. Saturated at `u32::MAX` (four bytes: the record's budget).
    unwritten: u32,
    /// Already listed in [`super::Shard::take_ready`]'s list (each connection at most once).
    ready: bool,
    /// Last time a packet arrived.
    last_rx: Instant,
    /// When the connection was accepted (the admin API's connected-since).
    accepted_at: Instant,
    /// Peer address, for logs, the failed-login limit and the admin API.
    peer: SocketAddr,
    /// Client's Maximum Packet Size (v5), unlimited for v3.
    client_packet_max: u32,
    /// Listener the connection came in on.
    listener: u16,
    /// Keep alive granted, 0 = none.
    keep_alive_secs: u16,
    /// Client's Receive Maximum (v5), 65535 for v3.
    client_receive_max: u16,
    /// Outbound aliases this connection may hold (the map is in `cold`, made on first use).
    out_alias_max: u16,
    /// Negotiated version (V311 until CONNECT says otherwise).
    version: ProtocolVersion,
    /// Whether the client asked for problem information (v5), default true.
    problem_info: bool,
    /// A SUBSCRIBE waits for the other shards: later packets wait in `rx` so that responses
    /// keep the order of requests.
    awaiting_peers: bool,
    /// The user name was proven by the transport (TLS client certificate) or by enhanced
    /// authentication, not just claimed in CONNECT.
    identity_verified: bool,
    /// Flow control resumed reading: the keep-alive clock restarts at the next tick (the
    /// broker, not the client, was the one not reading).
    flow_resumed: bool,
    /// Decoding stopped with bytes left in `rx` because flow control paused this publisher:
    /// once it may read again, what it had sent is decoded before the socket is read
    /// ([`super::ConnStatus::input_waiting`]).
    input_stopped: bool,
    /// The rare state, `None` until something needs it (see [`Conn::cold_mut`]).
    cold: Option<Box<ConnCold>>,
}

/// What few connections use: allocated on first use, freed when it holds nothing again
/// ([`Conn::trim_cold`]). The client id is not here: it is the session's (stored once).
#[derive(Debug, Default)]
pub(crate) struct ConnCold {
    /// Will to publish on abnormal close.
    will: Option<Will>,
    /// Bytes `will` is charged to the memory budget.
    will_charged: usize,
    /// Inbound topic aliases (v5): alias → topic. At most `topic_alias_max` entries.
    aliases: HashMap<u16, codec::TopicName>,
    /// Outbound topic aliases (v5): topic → alias, assigned on first use up to
    /// min(client's Topic Alias Maximum, our `topic_alias_max`).
    out_aliases: HashMap<String, u16>,
    /// The user name the transport vouches for (TLS listener with `use_identity_as_username`:
    /// the client certificate's CN). When set, it replaces the CONNECT user name. Set only by
    /// [`super::Shard::accept_with_identity`]; the shard knows nothing else about transports.
    tls_username: Option<Box<str>>,
    /// Enhanced authentication exchange under way (CONNECT or re-authentication).
    auth: Option<AuthInProgress>,
    /// The Authentication Method of the CONNECT, which re-authentication must repeat.
    auth_method: Option<String>,
    /// Retained messages owed after a SUBACK, written a batch at a time as `tx` drains
    /// ([`super::Shard::drain_retained`]). At most `retained_messages_max` entries; reading pauses
    /// while any wait, so one connection holds one SUBSCRIBE's worth at a time.
    retained_backlog: VecDeque<RetainedOut>,
    /// Bytes `retained_backlog` is charged to the memory budget.
    backlog_charged: usize,
}

impl ConnCold {
    /// Whether it holds nothing that a fresh one would not (so it can be freed).
    fn is_empty(&self) -> bool {
        self.will.is_none()
            && self.will_charged == 0
            && self.aliases.is_empty()
            && self.out_aliases.is_empty()
            && self.tls_username.is_none()
            && self.auth.is_none()
            && self.auth_method.is_none()
            && self.retained_backlog.is_empty()
            && self.backlog_charged == 0
    }
}

/// What [`Conn::poll_packet`] found in the connection's input.
#[derive(Debug)]
pub(super) enum Input {
    /// A whole packet, taken from the input.
    Packet(Packet),
    /// No whole packet is buffered; the rest comes with a later read. An input buffer left
    /// empty has been freed (an idle connection holds none).
    Incomplete,
    /// The connection does not read now: it is closing, or waits for its CONNACK (registry,
    /// takeover, password verdict) or for the other shards to apply a SUBSCRIBE. What it
    /// pipelined stays buffered, so responses keep the order of requests.
    Held,
    /// CVE-2023-0809's class: the first packet is not a CONNECT ([MQTT-3.1.0-1]), seen from its
    /// first byte, before a remaining length is read, so nothing else was buffered.
    NotConnect,
    /// The next packet is malformed or over a bound.
    Malformed {
        error: codec::DecodeError,
        /// The packet came before authentication (so the pre-auth size bound applied).
        pre_auth: bool,
        /// The connection was waiting for its CONNECT (refused with a CONNACK where one can be).
        awaiting_connect: bool,
        /// The protocol version the CONNECT's first bytes name, read before decoding.
        connect_version: Option<ProtocolVersion>,
    },
}

/// The input bounds [`Conn::poll_packet`] applies (from the shard's configuration).
#[derive(Clone, Copy, Debug)]
pub(super) struct InputLimits {
    /// Largest packet once authenticated.
    pub(super) packet_bytes_max: usize,
    /// Largest packet before authentication (CVE-2017-7651's class).
    pub(super) preauth_packet_bytes_max: usize,
    /// User Properties one packet may carry.
    pub(super) user_properties: codec::UserPropertyBudget,
}

/// What the connection's deadline says at `now` (see [`Conn::poll_timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deadline {
    /// No deadline: closing, or active without keep alive.
    None,
    /// Look again at this time.
    At(Instant),
    /// The deadline passed: close for this reason.
    Expired(CloseReason),
}

/// Why [`Conn::send`] wrote nothing.
#[derive(Debug)]
pub(super) enum Unsent {
    /// The packet could not be encoded (a packet the broker built wrong).
    Encode(codec::EncodeError),
    /// Not even without its optional properties does it fit the client's Maximum Packet
    /// Size ([MQTT-3.1.2-24]).
    TooLarge,
}

impl Conn {
    /// A connection accepted at `now` from `peer` on `listener`, waiting for its CONNECT until
    /// `connect_deadline`. `tls_username` is the identity its transport proved, if any.
    pub(super) fn new(
        serial: u64,
        listener: u16,
        peer: SocketAddr,
        now: Instant,
        connect_deadline: Instant,
        tls_username: Option<String>,
    ) -> Self {
        let cold = tls_username.map(|name| {
            Box::new(ConnCold { tls_username: Some(name.into_boxed_str()), ..Default::default() })
        });
        Conn {
            phase: Phase::AwaitConnect { deadline: connect_deadline },
            serial,
            version: ProtocolVersion::V311,
            listener,
            peer,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            unwritten: 0,
            ready: false,
            keep_alive_secs: 0,
            last_rx: now,
            accepted_at: now,
            client_receive_max: u16::MAX,
            client_packet_max: u32::MAX,
            out_alias_max: 0,
            problem_info: true,
            awaiting_peers: false,
            flow_resumed: false,
            input_stopped: false,
            identity_verified: false,
            cold,
        }
    }

    // --- What it is -------------------------------------------------------------------------

    /// Where the connection stands.
    pub(super) fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The session slot it is bound to, once active.
    pub(super) fn active_slot(&self) -> Option<SlotId> {
        match self.phase {
            Phase::Active { slot } => Some(slot),
            _ => None,
        }
    }

    /// Whether the shard closed it (its output is being flushed).
    pub(super) fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing)
    }

    /// Whether it waits for the registry, a takeover or the other shards before its CONNACK.
    pub(super) fn is_connecting(&self) -> bool {
        matches!(self.phase, Phase::Connecting { .. })
    }

    /// Whether its password check `ticket` is the one it waits for.
    pub(super) fn awaits_verdict(&self, ticket: u64) -> bool {
        matches!(self.phase, Phase::Verifying { ticket: t, .. } if t == ticket)
    }

    /// Unique per shard over its life (see [`super::ConnRef`]).
    pub(super) fn serial(&self) -> u64 {
        self.serial
    }

    /// The negotiated protocol version (3.1.1 until a CONNECT says otherwise).
    pub(super) fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Peer address.
    pub(super) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Index of the listener it came in on.
    pub(super) fn listener(&self) -> usize {
        usize::from(self.listener)
    }

    /// When it was accepted.
    pub(super) fn accepted_at(&self) -> Instant {
        self.accepted_at
    }

    /// Whether the user name was proven (TLS client certificate, enhanced authentication).
    pub(super) fn identity_verified(&self) -> bool {
        self.identity_verified
    }

    // --- Phase transitions --------------------------------------------------------------------

    /// Answers in `version` from now on (a CONNECT, or the refusal of one, named it).
    pub(super) fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    /// CONNECT accepted for processing: waits for the registry, a takeover or the other shards
    /// until `deadline`. Reading stops until CONNACK.
    pub(super) fn start_connecting(&mut self, deadline: Instant) {
        self.phase = Phase::Connecting { deadline };
    }

    /// Its password is being checked as job `ticket`, until `deadline`. Reading stops.
    pub(super) fn start_verifying(&mut self, deadline: Instant, ticket: u64) {
        self.phase = Phase::Verifying { deadline, ticket };
    }

    /// An enhanced-authentication exchange started by CONNECT runs until `deadline`.
    pub(super) fn start_authenticating(&mut self, deadline: Instant, progress: AuthInProgress) {
        self.phase = Phase::Authenticating { deadline };
        self.cold_mut().auth = Some(progress);
    }

    /// CONNACK is being sent: bound to session `slot`.
    pub(super) fn activate(&mut self, slot: SlotId) {
        self.phase = Phase::Active { slot };
    }

    /// Marks it closing; returns the phase it left, or `None` when it was closing already.
    pub(super) fn start_close(&mut self) -> Option<Phase> {
        if self.is_closing() {
            return None;
        }
        Some(std::mem::replace(&mut self.phase, Phase::Closing))
    }

    /// A SUBSCRIBE waits for the other shards (`true`) or was answered (`false`): reading is
    /// held meanwhile.
    pub(super) fn set_awaiting_peers(&mut self, waiting: bool) {
        self.awaiting_peers = waiting;
    }

    /// Lists it as ready; false if it was listed already (see `Shard::take_ready`).
    pub(super) fn mark_ready(&mut self) -> bool {
        !std::mem::replace(&mut self.ready, true)
    }

    /// Taken off the ready list.
    pub(super) fn clear_ready(&mut self) {
        self.ready = false;
    }

    // --- Input --------------------------------------------------------------------------------

    /// Bytes arrived at `now`: buffered behind any partial packet, and the keep-alive clock
    /// restarts. False (and dropped) when the connection is closing.
    pub(super) fn receive(&mut self, data: &[u8], now: Instant) -> bool {
        if self.is_closing() {
            return false;
        }
        self.rx.extend_from_slice(data);
        self.last_rx = now;
        true
    }

    /// Whether no partial packet is buffered (the next read may be decoded in place).
    pub(super) fn rx_is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// How many bytes at the front of `data` complete the partial packet `rx` holds: the
    /// rest of `data` can then be decoded in place. All of `data` when `rx` holds a whole
    /// packet already, or when its header is not whole even with `data`'s first bytes.
    pub(super) fn completing_rx(&self, data: &[u8]) -> usize {
        if self.rx.is_empty() {
            return 0;
        }
        let mut head = [0u8; 5];
        let n = self.rx.len().min(head.len());
        head[..n].copy_from_slice(&self.rx[..n]);
        let m = (head.len() - n).min(data.len());
        head[n..n + m].copy_from_slice(&data[..m]);
        match codec::primitives::decode_varint(&head[1..n + m]) {
            Ok(Some((len, used))) => {
                let total = 1 + used + len;
                if total <= self.rx.len() {
                    data.len()
                } else {
                    (total - self.rx.len()).min(data.len())
                }
            }
            _ => data.len(),
        }
    }

    /// The next whole packet from the input, under `limits`: before authentication only a
    /// small packet is accepted, checked at its fixed header before its body is buffered
    /// (CVE-2017-7651's class), and the first packet must be a CONNECT.
    ///
    /// The input is `rx` while it holds bytes (older bytes), then the caller's read buffer
    /// `input` (decoded in place, issue 10), whose packets are consumed from its front; what
    /// the caller's loop leaves of `input` goes into `rx` afterwards ([`Conn::receive`]). A
    /// PUBLISH repeating the topic `hint` shares it.
    pub(super) fn poll_packet(
        &mut self,
        limits: &InputLimits,
        input: &mut &[u8],
        hint: Option<&codec::TopicName>,
    ) -> Input {
        match self.phase {
            Phase::Closing | Phase::Connecting { .. } | Phase::Verifying { .. } => {
                return Input::Held
            }
            _ if self.awaiting_peers => return Input::Held,
            _ => {}
        }
        let in_place = self.rx.is_empty();
        let awaiting_connect = matches!(self.phase, Phase::AwaitConnect { .. });
        let pre_auth = awaiting_connect || matches!(self.phase, Phase::Authenticating { .. });
        let buffered: &[u8] = if in_place { input } else { &self.rx };
        if awaiting_connect
            && buffered.first().is_some_and(|b| b >> 4 != codec::PacketType::Connect as u8)
        {
            return Input::NotConnect;
        }
        let decode = codec::DecodeLimits {
            packet_bytes_max: if pre_auth {
                limits.preauth_packet_bytes_max
            } else {
                limits.packet_bytes_max
            },
            user_properties: limits.user_properties,
        };
        // Read before decoding consumes the bytes: how to refuse a CONNECT that fails.
        let connect_version = if pre_auth { codec::connect_version(buffered) } else { None };
        if in_place {
            return match codec::decode_slice(input, self.version, &decode, hint) {
                Ok(Some((packet, n))) => {
                    *input = &input[n..];
                    Input::Packet(packet)
                }
                Ok(None) => {
                    // An idle connection keeps no receive buffer (`rx` is empty here).
                    if self.rx.capacity() > 0 {
                        self.rx = BytesMut::new();
                    }
                    Input::Incomplete
                }
                Err(error) => {
                    Input::Malformed { error, pre_auth, awaiting_connect, connect_version }
                }
            };
        }
        match codec::decode_with_hint(&mut self.rx, self.version, &decode, hint) {
            Ok(Some(packet)) => Input::Packet(packet),
            Ok(None) => {
                // An idle connection keeps no receive buffer.
                if self.rx.is_empty() && self.rx.capacity() > 0 {
                    self.rx = BytesMut::new();
                }
                Input::Incomplete
            }
            Err(error) => Input::Malformed { error, pre_auth, awaiting_connect, connect_version },
        }
    }

    /// Flow control paused the publisher with input left (`true`): in `rx`, or (`more`) in
    /// the read being decoded in place, which goes into `rx` next; or decoding resumed
    /// (`false`).
    pub(super) fn set_input_stopped(&mut self, stopped: bool, more: bool) {
        self.input_stopped = stopped && (more || !self.rx.is_empty());
    }

    /// Whether decoding stopped for flow control with bytes left to decode.
    pub(super) fn input_stopped(&self) -> bool {
        self.input_stopped
    }

    /// Whether reading waits for something other than its own output or flow control: a
    /// CONNACK (registry, takeover, password verdict) or the other shards. (Retained messages
    /// owed hold it too, unless they wait for the client's acknowledgements: `Shard::status`.)
    pub(super) fn read_held(&self) -> bool {
        self.awaiting_peers
            || matches!(self.phase, Phase::Connecting { .. } | Phase::Verifying { .. })
    }

    // --- Deadlines ----------------------------------------------------------------------------

    /// Keep alive granted, in seconds (0: none).
    pub(super) fn set_keep_alive(&mut self, secs: u16) {
        self.keep_alive_secs = secs;
    }

    /// Flow control resumed reading: the keep-alive clock restarts at the next check (the
    /// broker, not the client, was the one not reading).
    pub(super) fn note_flow_resumed(&mut self) {
        self.flow_resumed = true;
    }

    /// Its deadline at `now`: the connect timeout of the phases before CONNACK (looked at
    /// again no later than `recheck`, to see the phase change), or 1.5 times the keep alive
    /// since the last packet once active ([MQTT-3.1.2-24] in 3.1.1, [MQTT-3.1.2-22] in 5.0).
    /// `read_paused`: flow control holds its reading now, so silence is not the client's.
    pub(super) fn poll_timeout(
        &mut self,
        now: Instant,
        read_paused: bool,
        recheck: Duration,
    ) -> Deadline {
        match self.phase {
            Phase::AwaitConnect { deadline }
            | Phase::Authenticating { deadline }
            | Phase::Verifying { deadline, .. }
            | Phase::Connecting { deadline } => {
                if now >= deadline {
                    return Deadline::Expired(CloseReason::ConnectTimeout);
                }
                // At the deadline, or sooner to see it become active.
                Deadline::At(deadline.min(now + recheck))
            }
            Phase::Closing => Deadline::None,
            Phase::Active { .. } if self.keep_alive_secs == 0 => Deadline::None,
            Phase::Active { .. } => {
                if read_paused || self.flow_resumed {
                    // Not read because of flow control: its packets wait in the socket. The
                    // clock restarts here, at the first check after a resume: never early, at
                    // most one keep-alive period late (and any packet read sets it anyway).
                    self.last_rx = now;
                    self.flow_resumed = false;
                }
                let limit = Duration::from_millis(u64::from(self.keep_alive_secs) * 1500);
                let deadline = self.last_rx + limit;
                if now > deadline {
                    return Deadline::Expired(CloseReason::KeepAliveTimeout);
                }
                // Strictly after `now`, and at the same one-second grain as the tick.
                Deadline::At(deadline.max(now + Duration::from_millis(1)))
            }
        }
    }

    // --- Client limits and topic aliases (v5) -------------------------------------------------

    /// Records what a v5 client said it can take in its CONNECT; `alias_cap` bounds the
    /// outbound topic aliases.
    pub(super) fn apply_client_limits(&mut self, props: &codec::Properties, alias_cap: u16) {
        // Outbound aliases: as many as the client takes, bounded by our own maximum.
        self.out_alias_max = props.topic_alias_maximum().unwrap_or(0).min(alias_cap);
        if let Some(r) = props.receive_maximum() {
            self.client_receive_max = r;
        }
        if let Some(m) = props.maximum_packet_size() {
            self.client_packet_max = m;
        }
        if props.request_problem_information() == Some(0) {
            self.problem_info = false;
        }
    }

    /// The client's Receive Maximum (65 535 for v3).
    pub(super) fn client_receive_max(&self) -> u16 {
        self.client_receive_max
    }

    /// Whether refusals may carry a Reason String: v5, and the client did not turn problem
    /// information off ([MQTT-3.1.2-29]).
    pub(super) fn wants_reason_strings(&self) -> bool {
        self.problem_info && self.version.is_v5()
    }

    /// The client's Maximum Packet Size in bytes.
    fn packet_max(&self) -> usize {
        self.client_packet_max as usize
    }

    /// Resolves the Topic Alias of an inbound v5 PUBLISH (§3.3.2.3.4), then removes it (aliases
    /// are per hop). `alias_max` is the maximum we advertised. At most `alias_max` entries.
    pub(super) fn resolve_topic_alias(
        &mut self,
        p: &mut codec::Publish,
        alias_max: u16,
    ) -> Result<(), ReasonCode> {
        let Some(alias) = p.properties.topic_alias() else { return Ok(()) };
        if alias > alias_max {
            // [MQTT-3.3.2-9]: alias above the maximum we advertised.
            return Err(ReasonCode::TopicAliasInvalid);
        }
        match &p.topic {
            None => match self.cold.as_ref().and_then(|cold| cold.aliases.get(&alias)) {
                Some(t) => p.topic = Some(t.clone()),
                None => return Err(ReasonCode::ProtocolError),
            },
            Some(t) => {
                // Kept beyond this packet: its own bytes, not a slice pinning the frame.
                let mut t = t.clone();
                t.detach();
                self.cold_mut().aliases.insert(alias, t);
            }
        }
        p.properties.remove(codec::properties::id::TOPIC_ALIAS);
        Ok(())
    }

    /// The outbound Topic Alias for `topic` (§3.3.2.3.4), assigning the next one on first use
    /// while the client's maximum allows; and whether the topic name must still be sent (true
    /// when the alias is new or there is none).
    fn outbound_alias(&mut self, topic: &codec::TopicName) -> (Option<u16>, bool) {
        if self.out_alias_max == 0 || !self.version.is_v5() {
            return (None, true);
        }
        let topic = topic.as_str();
        if let Some(&a) = self.cold.as_ref().and_then(|cold| cold.out_aliases.get(topic)) {
            return (Some(a), false);
        }
        let max = usize::from(self.out_alias_max);
        let out_aliases = &mut self.cold_mut().out_aliases;
        if out_aliases.len() < max {
            let a = out_aliases.len() as u16 + 1;
            out_aliases.insert(topic.to_owned(), a);
            return (Some(a), true);
        }
        (None, true)
    }

    // --- Output -------------------------------------------------------------------------------

    /// Bytes waiting to be written.
    pub(super) fn tx_len(&self) -> usize {
        self.tx.len()
    }

    /// Output held for this connection: the buffer being filled and what the driver took and
    /// has not written. `tx_bytes_max` bounds this, not `tx` alone (issue 9).
    pub(super) fn output_bytes(&self) -> usize {
        self.tx.len() + self.unwritten as usize
    }

    /// The driver holds `bytes` of its output unwritten.
    pub(super) fn set_unwritten(&mut self, bytes: usize) {
        self.unwritten = u32::try_from(bytes).unwrap_or(u32::MAX);
    }

    /// Whether anything is owed to the peer: bytes, or retained messages to encode.
    pub(super) fn has_output(&self) -> bool {
        !self.tx.is_empty() || self.has_backlog()
    }

    /// Exchanges the output with `buf` (the driver's empty buffer, whose allocation is kept
    /// for the next output).
    pub(super) fn swap_tx(&mut self, buf: &mut BytesMut) {
        std::mem::swap(&mut self.tx, buf);
    }

    /// Frees an empty output buffer larger than `idle_max` (an idle connection keeps none).
    pub(super) fn trim_idle_tx(&mut self, idle_max: usize) {
        if self.tx.is_empty() && self.tx.capacity() > idle_max {
            self.tx = BytesMut::new();
        }
    }

    /// Drops the unsent output (the peer stopped reading).
    pub(super) fn discard_tx(&mut self) {
        self.tx = BytesMut::new();
    }

    /// Encodes `packet` into the output; returns the bytes written. A v5 packet larger than the
    /// client's Maximum Packet Size loses its optional properties until it fits
    /// ([MQTT-3.1.2-24], see [`fit_packet`]).
    pub(super) fn send(&mut self, packet: &Packet) -> Result<usize, Unsent> {
        let before = self.tx.len();
        codec::encode(packet, self.version, &mut self.tx).map_err(Unsent::Encode)?;
        if self.tx.len() - before > self.packet_max() {
            self.tx.truncate(before);
            let (version, max) = (self.version, self.packet_max());
            let fitted =
                fit_packet(packet, |p| codec::encoded_len(p, version).is_ok_and(|n| n <= max));
            let fitted = fitted.ok_or(Unsent::TooLarge)?;
            codec::encode(&fitted, version, &mut self.tx).map_err(Unsent::Encode)?;
        }
        Ok(self.tx.len() - before)
    }

    /// Whether the PUBLISH of `out` fits the client's Maximum Packet Size ([MQTT-3.1.2-25]).
    pub(super) fn fits(&self, out: &Outgoing, now: Instant) -> bool {
        if self.client_packet_max == u32::MAX {
            return true;
        }
        let props = publish::outgoing_properties(out, self.version.is_v5(), now, None);
        let view = codec::PublishView {
            dup: false,
            qos: out.qos,
            retain: out.retain,
            topic: out.msg.topic.as_bytes(),
            packet_id: codec::PacketId::new(1).filter(|_| out.qos != codec::QoS::AtMostOnce),
            properties: props.as_ref().unwrap_or(&out.msg.properties),
            payload: &out.msg.payload,
        };
        codec::publish_len(&view, self.version).is_ok_and(|n| n <= self.packet_max())
    }

    /// Encodes the PUBLISH of `out` into the output, with an outbound topic alias where the
    /// client takes them; returns the bytes written. Without properties of its own it reuses
    /// (and otherwise stores) the bytes `shared` holds for the subscribers of this fan-out.
    pub(super) fn write_publish(
        &mut self,
        out: &Outgoing,
        packet_id: Option<codec::PacketId>,
        dup: bool,
        now: Instant,
        shared: &mut publish::SharedEncoding,
    ) -> Result<usize, codec::EncodeError> {
        let v5 = self.version.is_v5();
        let (alias, with_topic) = self.outbound_alias(&out.msg.topic);
        let props = publish::outgoing_properties(out, v5, now, alias);
        // The same bytes as every other subscriber of this fan-out: no properties of its own.
        let reusable = shared.is_active() && props.is_none() && alias.is_none() && !dup;
        let key = (v5, out.qos, out.retain);
        let found = if reusable { shared.find(&out.msg, key) } else { None };
        if let Some((bytes, pid_at)) = found {
            let start = self.tx.len();
            self.tx.extend_from_slice(bytes);
            if let Some(pid) = packet_id {
                let at = start + pid_at;
                self.tx[at..at + 2].copy_from_slice(&pid.get().to_be_bytes());
            }
            return Ok(bytes.len());
        }
        let view = codec::PublishView {
            dup,
            qos: out.qos,
            retain: out.retain,
            topic: if with_topic { out.msg.topic.as_bytes() } else { b"" },
            packet_id,
            properties: props.as_ref().unwrap_or(&out.msg.properties),
            payload: &out.msg.payload,
        };
        let start = self.tx.len();
        let n = codec::encode_publish(&view, self.version, &mut self.tx)?;
        if reusable {
            // Remembered for the next subscriber: fixed header, topic, then the packet id.
            let frame = &self.tx[start..start + n];
            let pid_at = publish::fixed_header_len(frame) + 2 + out.msg.topic.len();
            shared.store(&out.msg, key, frame, pid_at);
        }
        Ok(n)
    }

    // --- Rare state: will, authentication, retained backlog -----------------------------------

    /// The rare state, allocated now if it was not.
    fn cold_mut(&mut self) -> &mut ConnCold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Frees the rare state when it holds nothing.
    fn trim_cold(&mut self) {
        if self.cold.as_ref().is_some_and(|c| c.is_empty()) {
            self.cold = None;
        }
    }

    /// Stores the will (replacing any) and charges it to `memory` at `cost` bytes.
    pub(super) fn set_will(&mut self, will: Option<Will>, cost: usize, memory: &MemoryBudget) {
        if will.is_none() && self.cold.is_none() {
            return;
        }
        let cold = self.cold_mut();
        memory.recharge(cold.will_charged, cost);
        cold.will_charged = cost;
        cold.will = will;
        self.trim_cold();
    }

    /// Takes the will and releases its charge to `memory`.
    pub(super) fn take_will(&mut self, memory: &MemoryBudget) -> Option<Will> {
        let cold = self.cold.as_mut()?;
        memory.recharge(cold.will_charged, 0);
        cold.will_charged = 0;
        let will = cold.will.take();
        self.trim_cold();
        will
    }

    /// The user name its transport proved (TLS client certificate), taken once, at CONNECT:
    /// from then on the identity counts as verified.
    pub(super) fn take_transport_identity(&mut self) -> Option<Box<str>> {
        let name = self.cold.as_mut().and_then(|cold| cold.tls_username.take())?;
        self.identity_verified = true;
        self.trim_cold();
        Some(name)
    }

    /// The enhanced-authentication exchange under way, taken (the caller puts back the next
    /// step with [`Conn::set_auth`]).
    pub(super) fn take_auth(&mut self) -> Option<AuthInProgress> {
        let progress = self.cold.as_mut().and_then(|cold| cold.auth.take());
        self.trim_cold();
        progress
    }

    /// Stores the enhanced-authentication exchange under way.
    pub(super) fn set_auth(&mut self, progress: AuthInProgress) {
        self.cold_mut().auth = Some(progress);
    }

    /// The Authentication Method of the CONNECT, if enhanced authentication was used.
    pub(super) fn auth_method(&self) -> Option<&String> {
        self.cold.as_ref().and_then(|c| c.auth_method.as_ref())
    }

    /// Records the Authentication Method the CONNECT used (re-authentication repeats it).
    pub(super) fn set_auth_method(&mut self, method: String) {
        self.cold_mut().auth_method = Some(method);
    }

    /// Whether retained messages are owed to this connection.
    pub(super) fn has_backlog(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| !c.retained_backlog.is_empty())
    }

    /// The retained messages owed, taken (empty if none).
    pub(super) fn take_backlog(&mut self) -> VecDeque<RetainedOut> {
        self.cold
            .as_mut()
            .map(|cold| std::mem::take(&mut cold.retained_backlog))
            .unwrap_or_default()
    }

    /// Stores the retained messages owed.
    pub(super) fn set_backlog(&mut self, backlog: VecDeque<RetainedOut>) {
        if !backlog.is_empty() || self.cold.is_some() {
            self.cold_mut().retained_backlog = backlog;
        }
    }

    /// The delivery QoS of the next retained message owed.
    pub(super) fn next_backlog_qos(&self) -> Option<crate::codec::QoS> {
        self.cold.as_ref().and_then(|cold| cold.retained_backlog.front()).map(|r| r.qos)
    }

    /// The next retained message owed.
    pub(super) fn pop_backlog(&mut self) -> Option<RetainedOut> {
        self.cold.as_mut().and_then(|cold| cold.retained_backlog.pop_front())
    }

    /// Drops the retained messages owed, and their buffer.
    pub(super) fn clear_backlog(&mut self) {
        if let Some(cold) = self.cold.as_mut() {
            cold.retained_backlog = VecDeque::new();
        }
    }

    /// Brings the charge of the retained backlog to `memory` in line with its length (the
    /// messages are the store's; an entry costs its own size).
    pub(super) fn recharge_backlog(&mut self, memory: &MemoryBudget) {
        let Some(cold) = self.cold.as_mut() else { return };
        let now = cold.retained_backlog.len() * std::mem::size_of::<RetainedOut>();
        memory.recharge(cold.backlog_charged, now);
        cold.backlog_charged = now;
        if now == 0 {
            cold.retained_backlog = VecDeque::new();
            self.trim_cold();
        }
    }

    // --- For the size tests -------------------------------------------------------------------

    /// Capacities of the input and output buffers, and whether the rare state is allocated.
    #[cfg(test)]
    pub(super) fn footprint(&self) -> (usize, usize, bool) {
        (self.rx.capacity(), self.tx.capacity(), self.cold.is_some())
    }
}

/// `packet` with optional v5 properties left out, step by step, until `fits` says it does: first
/// Reason String and User Properties, which the server must not send when they would exceed
/// the client's Maximum Packet Size ([MQTT-3.2.2-19], [MQTT-3.2.2-20], [MQTT-3.4.2-2],
/// [MQTT-3.14.2-3] and the like for every packet); then, in a CONNACK, the properties whose
/// absence means what we would say anyway or something more restrictive: Retain, Wildcard,
/// Subscription Identifier and Shared Subscription Available (absent = 1), Topic Alias Maximum
/// (absent = 0: the client uses no aliases), Response Information (optional, §3.2.2.3.15),
/// Receive Maximum when it is 65 535 and Maximum Packet Size when it is the protocol maximum.
/// `None` when even that does not fit.
fn fit_packet(packet: &Packet, fits: impl Fn(&Packet) -> bool) -> Option<Packet> {
    use codec::Property as P;
    let diagnostic = |p: &P| !matches!(p, P::ReasonString(_) | P::UserProperty(..));
    let mut p = packet.clone();
    let props = match &mut p {
        Packet::ConnAck(a) => &mut a.properties,
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            &mut r.properties
        }
        Packet::SubAck(a) => &mut a.properties,
        Packet::UnsubAck(a) => &mut a.properties,
        Packet::Disconnect(d) | Packet::Auth(d) => &mut d.properties,
        _ => return None,
    };
    props.retain(diagnostic);
    if fits(&p) {
        return Some(p);
    }
    // Left out one kind at a time, least useful first, so as much as fits is kept.
    let optional: [fn(&P) -> bool; 6] = [
        |p| matches!(p, P::RetainAvailable(1) | P::WildcardSubscriptionAvailable(1)),
        |p| matches!(p, P::SubscriptionIdentifierAvailable(1) | P::SharedSubscriptionAvailable(1)),
        |p| matches!(p, P::ResponseInformation(_)),
        |p| matches!(p, P::TopicAliasMaximum(_)),
        |p| matches!(p, P::ReceiveMaximum(u16::MAX)),
        |p| matches!(p, P::MaximumPacketSize(268_435_455..)),
    ];
    let Packet::ConnAck(a) = &mut p else { return None };
    for is_optional in optional {
        a.properties.retain(|p| !is_optional(p));
        let fitted = Packet::ConnAck(a.clone());
        if fits(&fitted) {
            return Some(fitted);
        }
    }
    None
}

/// The connection state machine alone: no shard, no socket, time passed in.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Connect, Properties, Property, PubResp, Publish, QoS};
    use bytes::Bytes;

    const LIMITS: InputLimits = InputLimits {
        packet_bytes_max: 1 << 20,
        preauth_packet_bytes_max: 1024,
        user_properties: codec::UserPropertyBudget { count: 16, bytes: 1024 },
    };

    fn conn(now: Instant) -> Conn {
        let peer = "127.0.0.1:1".parse().expect("test address");
        Conn::new(1, 0, peer, now, now + Duration::from_secs(5), None)
    }

    fn connect_bytes(version: ProtocolVersion, password_bytes: usize) -> BytesMut {
        let connect = Connect {
            version,
            clean_start: true,
            keep_alive_secs: 60,
            client_id: "c".into(),
            will: None,
            username: Some("u".into()),
            password: Some(Bytes::from(vec![b'p'; password_bytes])),
            properties: Properties::new(),
        };
        let mut buf = BytesMut::new();
        codec::encode(&Packet::Connect(Box::new(connect)), version, &mut buf).expect("encodes");
        buf
    }

    fn publish(topic: &str, alias: Option<u16>) -> codec::Publish {
        let mut properties = Properties::new();
        if let Some(a) = alias {
            properties.push(Property::TopicAlias(a));
        }
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: (!topic.is_empty())
                .then(|| crate::codec::TopicName::new(topic).expect("valid topic")),
            packet_id: None,
            properties,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn a_partial_packet_waits_for_the_rest_then_the_buffer_is_freed() {
        let t0 = crate::test_clock::test_epoch();
        let mut c = conn(t0);
        let bytes = connect_bytes(ProtocolVersion::V311, 4);
        let (head, tail) = bytes.split_at(5);
        assert!(c.receive(head, t0));
        assert!(matches!(c.poll_packet(&LIMITS, &mut &[][..], None), Input::Incomplete));
        assert!(c.footprint().0 > 0, "the partial CONNECT is kept");
        assert!(c.receive(tail, t0));
        assert!(matches!(
            c.poll_packet(&LIMITS, &mut &[][..], None),
            Input::Packet(Packet::Connect(_))
        ));
        assert!(matches!(c.poll_packet(&LIMITS, &mut &[][..], None), Input::Incomplete));
        assert_eq!(c.footprint().0, 0, "no receive buffer once idle");
    }

    /// CVE-2023-0809's class, [MQTT-3.1.0-1]: refused from its first byte.
    #[test]
    fn the_first_packet_must_be_connect() {
        let t0 = crate::test_clock::test_epoch();
        let mut c = conn(t0);
        assert!(c.receive(&[0xC0], t0)); // PINGREQ's first byte, no length yet
        assert!(matches!(c.poll_packet(&LIMITS, &mut &[][..], None), Input::NotConnect));
    }

    /// CVE-2017-7651's class: before authentication the small bound applies, after it the
    /// configured one.
    #[test]
    fn the_preauth_bound_applies_until_connect_is_accepted() {
        let t0 = crate::test_clock::test_epoch();
        let mut c = conn(t0);
        let big = connect_bytes(ProtocolVersion::V5, 2000);
        // Refused from its first bytes (the fixed header, and the level for the CONNACK).
        assert!(c.receive(&big[..16], t0));
        match c.poll_packet(&LIMITS, &mut &[][..], None) {
            Input::Malformed { error, pre_auth, awaiting_connect, connect_version } => {
                assert!(matches!(error.kind, codec::ErrorKind::PacketTooLarge { .. }));
                assert!(pre_auth && awaiting_connect);
                assert_eq!(connect_version, Some(ProtocolVersion::V5));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let mut c = conn(t0);
        c.set_version(ProtocolVersion::V5);
        c.activate(SlotId(1));
        let mut pubs = BytesMut::new();
        let mut p = publish("t", None);
        p.payload = Bytes::from(vec![0; 2000]);
        codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut pubs).expect("encodes");
        assert!(c.receive(&pubs, t0));
        assert!(matches!(
            c.poll_packet(&LIMITS, &mut &[][..], None),
            Input::Packet(Packet::Publish(_))
        ));
    }

    #[test]
    fn reading_is_held_while_connecting_and_resumes_in_order() {
        let t0 = crate::test_clock::test_epoch();
        let mut c = conn(t0);
        c.start_connecting(t0 + Duration::from_secs(5));
        assert!(c.receive(&[0xC0, 0x00], t0));
        assert!(matches!(c.poll_packet(&LIMITS, &mut &[][..], None), Input::Held));
        assert!(c.read_held());
        c.activate(SlotId(3));
        assert_eq!(c.active_slot(), Some(SlotId(3)));
        assert!(matches!(
            c.poll_packet(&LIMITS, &mut &[][..], None),
            Input::Packet(Packet::PingReq)
        ));
        assert_eq!(
            c.start_close().map(|p| matches!(p, Phase::Active { slot: SlotId(3) })),
            Some(true)
        );
        assert!(c.start_close().is_none(), "closing twice does nothing");
        assert!(!c.receive(&[0xC0, 0x00], t0), "a closing connection reads nothing");
    }

    #[test]
    fn the_connect_timeout_then_the_keep_alive_deadline() {
        let t0 = crate::test_clock::test_epoch();
        let recheck = Duration::from_secs(1);
        let mut c = conn(t0);
        assert_eq!(c.poll_timeout(t0, false, recheck), Deadline::At(t0 + recheck));
        let late = t0 + Duration::from_secs(5);
        assert_eq!(
            c.poll_timeout(late, false, recheck),
            Deadline::Expired(CloseReason::ConnectTimeout)
        );
        c.activate(SlotId(1));
        assert_eq!(c.poll_timeout(late, false, recheck), Deadline::None, "keep alive 0: none");
        // [MQTT-3.1.2-24]: 1.5 times the keep alive since the last packet.
        c.set_keep_alive(10);
        assert_eq!(c.poll_timeout(t0, false, recheck), Deadline::At(t0 + Duration::from_secs(15)));
        let after = t0 + Duration::from_millis(15_001);
        // Flow control held its reading: the silence is not the client's, the clock restarts.
        assert_eq!(
            c.poll_timeout(after, true, recheck),
            Deadline::At(after + Duration::from_secs(15))
        );
        let silent = after + Duration::from_millis(15_001);
        assert_eq!(
            c.poll_timeout(silent, false, recheck),
            Deadline::Expired(CloseReason::KeepAliveTimeout)
        );
        assert!(c.receive(&[], silent));
        assert!(matches!(c.poll_timeout(silent, false, recheck), Deadline::At(_)));
    }

    /// §3.3.2.3.4: an alias is set by a PUBLISH with a topic and used by one without.
    #[test]
    fn inbound_topic_aliases() {
        let t0 = crate::test_clock::test_epoch();
        let mut c = conn(t0);
        let mut p = publish("", Some(2));
        assert_eq!(c.resolve_topic_alias(&mut p, 4), Err(ReasonCode::ProtocolError));
        let mut p = publish("a/b", Some(2));
        assert_eq!(c.resolve_topic_alias(&mut p, 4), Ok(()));
        assert_eq!(p.properties.topic_alias(), None, "aliases are per hop");
        let mut p = publish("", Some(2));
        assert_eq!(c.resolve_topic_alias(&mut p, 4), Ok(()));
        assert_eq!(p.topic.as_deref(), Some("a/b"));
        // [MQTT-3.3.2-9]: above the maximum we advertised.
        let mut p = publish("x", Some(5));
        assert_eq!(c.resolve_topic_alias(&mut p, 4), Err(ReasonCode::TopicAliasInvalid));
    }

    #[test]
    fn outbound_aliases_are_bounded_by_the_clients_maximum() {
        let t0 = crate::test_clock::test_epoch();
        let mut c = conn(t0);
        c.set_version(ProtocolVersion::V5);
        let mut props = Properties::new();
        props.push(Property::TopicAliasMaximum(1));
        c.apply_client_limits(&props, 8);
        let name = |t: &str| codec::TopicName::new(t).expect("valid topic");
        assert_eq!(c.outbound_alias(&name("a")), (Some(1), true));
        assert_eq!(c.outbound_alias(&name("a")), (Some(1), false));
        assert_eq!(c.outbound_alias(&name("b")), (None, true), "the client takes one alias only");
    }

    /// [MQTT-3.1.2-24], [MQTT-3.4.2-2]: the Reason String goes when the packet would exceed the
    /// client's Maximum Packet Size; a packet that cannot fit is not written.
    #[test]
    fn output_fits_the_clients_maximum_packet_size() {
        let t0 = crate::test_clock::test_epoch();
        let mut c = conn(t0);
        c.set_version(ProtocolVersion::V5);
        let mut props = Properties::new();
        props.push(Property::MaximumPacketSize(16));
        c.apply_client_limits(&props, 8);
        let mut ack = PubResp {
            packet_id: codec::PacketId::new(1).expect("non-zero"),
            reason: ReasonCode::NotAuthorized,
            properties: Properties::new(),
        };
        ack.properties.push(Property::ReasonString("a reason far longer than sixteen".into()));
        let n = c.send(&Packet::PubAck(ack)).expect("fits without its Reason String");
        assert!(n <= 16 && c.tx_len() == n);
        let mut big = publish("t", None);
        big.payload = Bytes::from(vec![0; 64]);
        assert!(matches!(c.send(&Packet::Publish(big)), Err(Unsent::TooLarge)));
        assert_eq!(c.tx_len(), n, "nothing of the refused packet stays");
    }
}
