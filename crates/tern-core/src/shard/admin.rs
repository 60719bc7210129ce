//! The shard's side of the admin API: one request in, one answer out, about this shard's own
//! connections, sessions and retained replica. No IO and no HTTP: the admin HTTP thread
//! (`crate::admin`) asks every shard over a channel and merges the answers; the runtime calls
//! [`Shard::admin`] from the shard's own loop, so the shard state is never shared.
//!
//! Every list answer is bounded by the `limit` the request carries.

use crate::ids::{ShardId, SlotId};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use super::{CloseReason, ConnId, Shard};
use crate::codec::{ProtocolVersion, QoS};
use crate::session::Message;
use crate::topic::matches;

/// A question to one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// The sessions this shard holds, at most `limit`.
    Clients {
        /// Most entries returned.
        limit: usize,
    },
    /// One session by client id.
    Client {
        /// The client id.
        id: String,
    },
    /// Close the connection of a client (v5: DISCONNECT 0x98 Administrative action).
    Disconnect {
        /// The client id.
        id: String,
    },
    /// Subscriptions of this shard's sessions whose filter falls under `filter` (read as a
    /// topic filter, the subscription's filter as a topic: `sensors/#` lists `sensors/+/t`),
    /// every one when `None`; at most `limit`.
    Subscriptions {
        /// The filter to look under.
        filter: Option<String>,
        /// Most entries returned.
        limit: usize,
    },
    /// The retained message of a topic (this shard's replica).
    RetainedGet {
        /// The topic name.
        topic: String,
    },
    /// Clears the retained message of a topic in this shard's replica (every shard is asked).
    RetainedDelete {
        /// The topic name.
        topic: String,
    },
}

/// One shard's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminReply {
    /// [`AdminRequest::Clients`]: the entries, and whether the list was cut at the limit.
    Clients(Vec<ClientInfo>, bool),
    /// [`AdminRequest::Client`]: the session, if this shard holds it.
    Client(Option<ClientInfo>),
    /// [`AdminRequest::Disconnect`]: whether this shard held the session, and whether it had
    /// a connection that is now closing.
    Disconnect {
        /// The session is on this shard.
        found: bool,
        /// Its connection was closed.
        disconnected: bool,
    },
    /// [`AdminRequest::Subscriptions`]: the entries, and whether the list was cut.
    Subscriptions(Vec<SubscriptionInfo>, bool),
    /// [`AdminRequest::RetainedGet`].
    Retained(Option<RetainedInfo>),
    /// [`AdminRequest::RetainedDelete`]: whether this replica held a message for the topic.
    RetainedDeleted(bool),
}

/// What the admin API shows of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    /// Client identifier.
    pub client_id: String,
    /// The user name it authenticated with.
    pub username: Option<String>,
    /// Whether a connection is attached now.
    pub connected: bool,
    /// The connection's peer address, when connected.
    pub peer: Option<String>,
    /// "3.1", "3.1.1" or "5", when connected.
    pub protocol: Option<&'static str>,
    /// The shard that holds the session.
    pub shard: ShardId,
    /// Seconds since the connection was accepted, when connected.
    pub connected_secs: Option<u64>,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Messages queued for the client, not yet sent.
    pub queued: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// The Session Expiry Interval, seconds (`u32::MAX` = never).
    pub session_expiry_secs: u32,
}

/// One subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubscriptionInfo {
    /// Client identifier.
    pub client_id: String,
    /// The topic filter as subscribed (with `$share/{group}/` for a shared subscription).
    pub filter: String,
    /// Maximum QoS granted.
    pub qos: u8,
    /// The shard of the session.
    pub shard: ShardId,
}

/// A retained message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetainedInfo {
    /// Topic name.
    pub topic: String,
    /// QoS it was published with.
    pub qos: u8,
    /// Payload bytes.
    #[serde(skip)]
    pub payload: Bytes,
    /// Payload length.
    pub payload_bytes: usize,
}

fn protocol_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5",
    }
}

const fn qos_number(q: QoS) -> u8 {
    q as u8
}

impl Shard {
    /// Answers one admin request about this shard. Closing a connection queues its DISCONNECT
    /// and wakes its task, like any close; the caller then lets the outbox flush.
    pub fn admin(&mut self, req: &AdminRequest, now: Instant) -> AdminReply {
        match req {
            AdminRequest::Clients { limit } => {
                let mut out = Vec::new();
                let mut cut = false;
                for slot in self.sessions.keys() {
                    let Some(info) = self.client_info(slot, now) else { continue };
                    if out.len() >= *limit {
                        cut = true;
                        break;
                    }
                    out.push(info);
                }
                AdminReply::Clients(out, cut)
            }
            AdminRequest::Client { id } => {
                let slot = self.by_client.get(id.as_str()).copied();
                AdminReply::Client(slot.and_then(|s| self.client_info(s, now)))
            }
            AdminRequest::Disconnect { id } => {
                let Some(&slot) = self.by_client.get(id.as_str()) else {
                    return AdminReply::Disconnect { found: false, disconnected: false };
                };
                let conn = self.slot(slot).and_then(|s| s.conn);
                if let Some(c) = conn {
                    tracing::info!(shard = self.id.0, client_id = %id, "admin API: disconnect");
                    self.close(c, CloseReason::Administrative, now);
                }
                AdminReply::Disconnect { found: true, disconnected: conn.is_some() }
            }
            AdminRequest::Subscriptions { filter, limit } => {
                let mut out = Vec::new();
                let mut cut = false;
                'sessions: for s in self.sessions.iter() {
                    for (f, sub) in &s.session.subscriptions {
                        if filter.as_deref().is_some_and(|want| !matches(want, f)) {
                            continue;
                        }
                        if out.len() >= *limit {
                            cut = true;
                            break 'sessions;
                        }
                        out.push(SubscriptionInfo {
                            client_id: s.session.client_id.to_string(),
                            filter: f.to_string(),
                            qos: qos_number(sub.options.qos),
                            shard: self.id,
                        });
                    }
                }
                AdminReply::Subscriptions(out, cut)
            }
            AdminRequest::RetainedGet { topic } => {
                let found = self.retained.get(topic, now).map(|m| RetainedInfo {
                    topic: m.topic.to_string(),
                    qos: qos_number(m.qos),
                    payload_bytes: m.payload.len(),
                    payload: m.payload.clone(),
                });
                AdminReply::Retained(found)
            }
            AdminRequest::RetainedDelete { topic } => {
                let held = self.retained.get(topic, now).is_some();
                // An empty retained message clears the topic ([MQTT-3.3.1-10]); applied to this
                // replica only, because the HTTP thread asks every shard.
                // A topic that is not a valid name holds no retained message to delete.
                if let Ok(topic) = crate::codec::TopicName::new(topic.clone()) {
                    let clear = Message::new(topic, Bytes::new(), QoS::AtMostOnce, true);
                    self.retained_apply(clear, None);
                }
                AdminReply::RetainedDeleted(held)
            }
        }
    }

    fn client_info(&self, slot: SlotId, now: Instant) -> Option<ClientInfo> {
        let s = self.slot(slot)?;
        let conn = s.conn.and_then(|c: ConnId| self.conn(c));
        let conn = conn.filter(|c| c.active_slot().is_some());
        Some(ClientInfo {
            client_id: s.session.client_id.to_string(),
            username: s.session.username.clone(),
            connected: conn.is_some(),
            peer: conn.map(|c| c.peer().to_string()),
            protocol: conn.map(|c| protocol_name(c.version())),
            shard: self.id,
            connected_secs: conn.map(|c| now.saturating_duration_since(c.accepted_at()).as_secs()),
            subscriptions: s.session.subscriptions.len(),
            queued: s.session.queue.len(),
            inflight: s.session.inflight.len(),
            session_expiry_secs: s.session.expiry_secs,
        })
    }
}
