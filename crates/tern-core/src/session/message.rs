//! Application messages as the broker holds them, and the sendable form of a session that moves
//! between shards on takeover.

use crate::ids::{MessageId, ShardId, SlotGen, SlotId};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::{Inflight, InflightState, Outgoing, Session, SessionLimits, Subscription};
use crate::codec::{Properties, QoS, TopicFilter, TopicName};

/// Who published a message: used for the v5 No Local option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Shard of the publishing connection.
    pub shard: ShardId,
    /// Session slot on that shard.
    pub session: SlotId,
    /// Generation of that slot, so a reused slot is not mistaken for the publisher.
    pub generation: SlotGen,
}

/// An application message. Held as `Rc<Message>` inside a shard (one copy however many local
/// subscribers) and sent by value to another shard (the payload is shared `Bytes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Topic name (never an alias: aliases are resolved on receipt).
    pub topic: TopicName,
    /// Payload. A message built from a client's packet owns it ([`Message::detach`]): a slice
    /// of the receive buffer would pin the whole buffer (up to 64 KiB per 1-byte payload).
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag it was published with.
    pub retain: bool,
    /// Properties forwarded to subscribers (v5): payload format, content type, response topic,
    /// correlation data, user properties.
    pub properties: Properties,
    /// When the v5 Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// The publisher, if a client (None for wills of gone sessions and broker messages).
    pub origin: Option<Origin>,
    /// When the broker received it, for the publish-to-deliver latency histogram.
    pub received_at: Option<Instant>,
    /// Identity given by the shard that routed it (that shard in the top 16 bits, a sequence
    /// below); 0 until routed. A session that moves between shards gets each id once.
    pub id: MessageId,
}

/// Fixed per-message overhead counted against queue byte bounds (struct and allocator slack).
pub const MESSAGE_OVERHEAD_BYTES: usize = 96;

impl Message {
    /// A message with no properties, no expiry and no origin.
    pub fn new(topic: TopicName, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Self {
            topic,
            payload,
            qos,
            retain,
            properties: Properties::new(),
            expires_at: None,
            origin: None,
            received_at: None,
            id: MessageId::UNROUTED,
        }
    }

    /// Bytes this message counts for in queue and retained-store bounds and the memory budget:
    /// the fixed overhead, the topic, the payload and the heap its properties hold.
    pub fn cost_bytes(&self) -> usize {
        MESSAGE_OVERHEAD_BYTES
            + self.topic.heap_bytes()
            + self.payload.len()
            + self.properties.heap_bytes()
    }

    /// Makes the message own exactly its bytes: the payload (and binary properties) are copied
    /// out of the receive buffer they were decoded from, spare capacity is released. Called once
    /// when a message enters the broker, so what the bounds count is what it holds.
    pub fn detach(&mut self) {
        self.topic.detach();
        self.detach_body();
    }

    /// [`Message::detach`] but for the topic, which the caller made its own already (the
    /// shard shares one copy of a topic among the messages published to it).
    pub fn detach_body(&mut self) {
        self.payload = Bytes::copy_from_slice(&self.payload);
        self.properties.detach();
    }

    /// True once the Message Expiry Interval has run out.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

/// An in-flight message in sendable form.
#[derive(Clone, Debug)]
pub struct TransferredInflight {
    /// Packet id.
    pub packet_id: u16,
    /// The message.
    pub msg: Message,
    /// Delivery QoS.
    pub qos: QoS,
    /// Delivery RETAIN flag.
    pub retain: bool,
    /// Matching subscription ids.
    pub subscription_ids: Vec<u32>,
    /// True once PUBREC was received.
    pub released: bool,
}

/// A session in sendable form (`Send`), moved to the shard of a new connection on takeover.
#[derive(Clone, Debug, Default)]
pub struct SessionState {
    /// Subscriptions.
    pub subscriptions: Vec<(TopicFilter, Subscription)>,
    /// Outbound messages in flight, in the order they were sent ([MQTT-4.6.0-1]).
    pub inflight: Vec<TransferredInflight>,
    /// Queued deliveries: message, QoS, retain, subscription ids.
    pub queue: Vec<(Message, QoS, bool, Vec<u32>)>,
    /// Inbound QoS 2 ids awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// Session expiry interval in seconds.
    pub expiry_secs: u32,
}

impl Session {
    /// Converts into the sendable form, consuming the session.
    pub fn into_state(self) -> SessionState {
        let mut inflight: Vec<(u16, Inflight)> = self.inflight.into_iter().collect();
        inflight.sort_unstable_by_key(|(_, f)| f.seq);
        SessionState {
            subscriptions: self.subscriptions.into_iter().collect(),
            inflight: inflight
                .into_iter()
                .map(|(id, f)| TransferredInflight {
                    packet_id: id,
                    msg: (*f.out.msg).clone(),
                    qos: f.out.qos,
                    retain: f.out.retain,
                    subscription_ids: f.out.subscription_ids,
                    released: f.state == InflightState::AwaitComp,
                })
                .collect(),
            queue: self
                .queue
                .into_iter()
                .map(|o| ((*o.msg).clone(), o.qos, o.retain, o.subscription_ids))
                .collect(),
            inbound_qos2: self.inbound_qos2.into_iter().collect(),
            expiry_secs: self.expiry_secs,
        }
    }

    /// Rebuilds a session from its sendable form.
    pub fn from_state(client_id: String, state: SessionState, limits: SessionLimits) -> Self {
        let mut s = Session::new(client_id, limits, state.expiry_secs);
        s.subscriptions = state.subscriptions.into_iter().collect();
        for t in state.inflight {
            let out = Outgoing {
                msg: Rc::new(t.msg),
                qos: t.qos,
                retain: t.retain,
                subscription_ids: t.subscription_ids,
            };
            let state = if t.released { InflightState::AwaitComp } else { InflightState::AwaitAck };
            s.insert_inflight(t.packet_id, out, state);
        }
        for (msg, qos, retain, subscription_ids) in state.queue {
            let out = Outgoing { msg: Rc::new(msg), qos, retain, subscription_ids };
            s.queue_bytes += out.cost_bytes();
            s.queue.push_back(out);
        }
        s.inbound_qos2 = state.inbound_qos2.into_iter().collect();
        s
    }
}
