//! One connection's protocol state, apart from the shard's (routing, registry, replicas,
//! sessions): what a [`Conn`] holds and the logic that needs nothing shard-wide.

use core::net::SocketAddr;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::BytesMut;

use super::{connect, RetainedOut};
use crate::codec::{self, Packet, ProtocolVersion, Will};

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
    Active { slot: u32 },
    /// Closed by the shard; bytes in `tx` are flushed, then the socket is closed.
    Closing,
}

/// One network connection: the hot record, what every connection needs between packets
/// (issue 11: at a million mostly idle connections each byte here is a megabyte; the budget is
/// checked in `size_tests`). Whatever only some connections use lives in [`ConnCold`], boxed
/// and allocated on first use.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(super) phase: Phase,
    /// Unique per shard over its life (see [`ConnRef`]).
    pub(super) serial: u64,
    /// Received bytes not yet decoded (a partial packet). Empty and unallocated when idle.
    pub(super) rx: BytesMut,
    /// Encoded bytes waiting to be written.
    pub(super) tx: BytesMut,
    /// Already listed in [`Shard::take_ready`]'s list (each connection at most once).
    pub(super) ready: bool,
    /// Last time a packet arrived.
    pub(super) last_rx: Instant,
    /// When the connection was accepted (the admin API's connected-since).
    pub(super) accepted_at: Instant,
    /// Peer address, for logs, the failed-login limit and the admin API.
    pub(super) peer: SocketAddr,
    /// Client's Maximum Packet Size (v5), unlimited for v3.
    pub(super) client_packet_max: u32,
    /// Listener the connection came in on.
    pub(super) listener: u16,
    /// Keep alive granted, 0 = none.
    pub(super) keep_alive_secs: u16,
    /// Client's Receive Maximum (v5), 65535 for v3.
    pub(super) client_receive_max: u16,
    /// Outbound aliases this connection may hold (the map is in `cold`, made on first use).
    pub(super) out_alias_max: u16,
    /// Negotiated version (V311 until CONNECT says otherwise).
    pub(super) version: ProtocolVersion,
    /// Whether the client asked for problem information (v5), default true.
    pub(super) problem_info: bool,
    /// A SUBSCRIBE waits for the other shards: later packets wait in `rx` so that responses
    /// keep the order of requests.
    pub(super) awaiting_peers: bool,
    /// The user name was proven by the transport (TLS client certificate) or by enhanced
    /// authentication, not just claimed in CONNECT.
    pub(super) identity_verified: bool,
    /// Flow control resumed reading: the keep-alive clock restarts at the next tick (the
    /// broker, not the client, was the one not reading).
    pub(super) flow_resumed: bool,
    /// The rare state, `None` until something needs it (see [`Conn::cold_mut`]).
    pub(super) cold: Option<Box<ConnCold>>,
}

/// What few connections use: allocated on first use, freed when it holds nothing again
/// ([`Conn::trim_cold`]). The client id is not here: it is the session's (stored once).
#[derive(Debug, Default)]
pub(crate) struct ConnCold {
    /// Will to publish on abnormal close.
    pub(super) will: Option<Will>,
    /// Bytes `will` is charged to the memory budget.
    pub(super) will_charged: usize,
    /// Inbound topic aliases (v5): alias → topic. At most `topic_alias_max` entries.
    pub(super) aliases: HashMap<u16, String>,
    /// Outbound topic aliases (v5): topic → alias, assigned on first use up to
    /// min(client's Topic Alias Maximum, our `topic_alias_max`).
    pub(super) out_aliases: HashMap<String, u16>,
    /// The user name the transport vouches for (TLS listener with `use_identity_as_username`:
    /// the client certificate's CN). When set, it replaces the CONNECT user name. Set only by
    /// [`Shard::accept_with_identity`]; the shard knows nothing else about transports.
    pub(super) tls_username: Option<Box<str>>,
    /// Enhanced authentication exchange under way (CONNECT or re-authentication).
    pub(super) auth: Option<connect::AuthInProgress>,
    /// The Authentication Method of the CONNECT, which re-authentication must repeat.
    pub(super) auth_method: Option<String>,
    /// Retained messages owed after a SUBACK, written a batch at a time as `tx` drains
    /// ([`Shard::drain_retained`]). At most `retained_messages_max` entries; reading pauses
    /// while any wait, so one connection holds one SUBSCRIBE's worth at a time.
    pub(super) retained_backlog: VecDeque<RetainedOut>,
    /// Bytes `retained_backlog` is charged to the memory budget.
    pub(super) backlog_charged: usize,
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

impl Conn {
    /// The rare state, allocated now if it was not.
    pub(super) fn cold_mut(&mut self) -> &mut ConnCold {
        self.cold.get_or_insert_with(Box::default)
    }

    /// Frees the rare state when it holds nothing.
    pub(super) fn trim_cold(&mut self) {
        if self.cold.as_ref().is_some_and(|c| c.is_empty()) {
            self.cold = None;
        }
    }

    /// Whether retained messages are owed to this connection.
    pub(super) fn has_backlog(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| !c.retained_backlog.is_empty())
    }

    /// The Authentication Method of the CONNECT, if enhanced authentication was used.
    pub(super) fn auth_method(&self) -> Option<&String> {
        self.cold.as_ref().and_then(|c| c.auth_method.as_ref())
    }

    /// The client's Maximum Packet Size in bytes.
    pub(super) fn packet_max(&self) -> usize {
        self.client_packet_max as usize
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
pub(super) fn fit_packet(packet: &Packet, fits: impl Fn(&Packet) -> bool) -> Option<Packet> {
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
