//! Messages between shards. Every variant is `Send`: it crosses threads through the mesh.
//!
//! Data plane: [`ShardMsg::Publish`]. Control plane: subscription deltas, retained updates,
//! client-id claims, session takeover and flow control ([`ShardMsg::Pause`]). The two planes
//! travel on separate lanes (outboxes and mesh channels), so control never waits behind data.

use crate::codec::{QoS, SubscriptionOptions};
use crate::ids::{ShardId, SlotGen, SlotId};
use crate::session::{Message, SessionState};

/// A claim's fencing token. The registry shard of a client id numbers every claim it records
/// from one counter, so for one client id a larger generation is a newer CONNECT. A session, a
/// pending CONNECT, a CONNACK and a `Release` each carry the generation of their claim, and an
/// action meant for an older generation cannot touch a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimGen(pub u64);

/// Who the registry records as the owner of a client id: a shard and the claim's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Shard that claimed the client id.
    pub shard: ShardId,
    /// Generation of that claim.
    pub generation: ClaimGen,
}

/// A member of a shared subscription group, as every shard's replica records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Shard that owns the member's session.
    pub shard: ShardId,
    /// Session slot on that shard.
    pub slot: SlotId,
    /// Generation of the slot.
    pub generation: SlotGen,
    /// Subscription options of the member.
    pub options: SubscriptionOptions,
    /// v5 Subscription Identifier.
    pub identifier: Option<u32>,
    /// The session has a connection (as its shard last said): online members are preferred.
    pub online: bool,
}

impl Member {
    /// Session `slot` (of `generation`) on `shard` as a member, with the options and
    /// identifier of its subscription `sub`.
    pub(crate) fn of(
        shard: ShardId,
        slot: SlotId,
        generation: SlotGen,
        sub: &crate::session::Subscription,
        online: bool,
    ) -> Self {
        Member { shard, slot, generation, options: sub.options, identifier: sub.identifier, online }
    }
}

/// A delivery chosen by the publishing shard for one shared-subscription member.
#[derive(Clone, Debug)]
pub struct SharedDelivery {
    /// Full `$share/{group}/{filter}` text, to find the group again on the receiving side.
    pub group: String,
    /// The chosen member.
    pub member: Member,
    /// The member was chosen among online ones: an offline member is not acceptable yet.
    pub online_only: bool,
    /// Times this delivery was passed on to another shard because no member here could take
    /// it; bounded by the shard count (twice: online members first, then any).
    pub hops: u16,
}

/// The client that published a retained message: its user name and client id, checked against
/// the ACL in force whenever the message is delivered from the store (CVE-2018-12546: a
/// retained message must not outlive its publisher's right to publish it). Shared by every
/// replica of the message.
pub type RetainSource = std::sync::Arc<Publisher>;

/// A publishing client's identity, as the ACL sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Publisher {
    /// User name, if the client gave one.
    pub username: Option<String>,
    /// Client identifier.
    pub client_id: String,
}

/// One message from a shard to another.
#[derive(Debug)]
pub enum ShardMsg {
    /// A publish with subscribers on the receiving shard. `normal`: match the receiving shard's
    /// local non-shared subscriptions; `shared`: deliveries already chosen for shared groups.
    Publish {
        /// The message.
        msg: Message,
        /// Whether non-shared local subscribers may match.
        normal: bool,
        /// Shared-subscription deliveries picked by the publisher's shard.
        shared: Vec<SharedDelivery>,
    },
    /// The sending shard now has at least one subscriber on `filter`.
    SubAdd {
        /// Topic filter (never `$share/`).
        filter: String,
        /// Ask the receiver to answer [`ShardMsg::DeltaAck`] with this request id.
        ack: Option<u64>,
    },
    /// The sending shard has no subscriber left on `filter`.
    SubRemove {
        /// Topic filter.
        filter: String,
    },
    /// A shared-subscription member joined (`$share/{group}/{filter}` in `group`).
    SharedAdd {
        /// Full shared filter.
        group: String,
        /// The member.
        member: Member,
        /// Ask the receiver to answer [`ShardMsg::DeltaAck`] with this request id.
        ack: Option<u64>,
    },
    /// A subscription delta with an `ack` id was applied: the sender's SUBACK may go out once
    /// every peer has answered, so a publish on any shard after the SUBACK reaches the new
    /// subscriber.
    DeltaAck {
        /// Request id of the delta.
        req: u64,
    },
    /// A shared-subscription member left.
    SharedRemove {
        /// Full shared filter.
        group: String,
        /// Shard of the member.
        shard: ShardId,
        /// Slot of the member.
        slot: SlotId,
        /// Slot generation of the member (a newer session in the same slot stays).
        generation: SlotGen,
    },
    /// To the retained sequencer (shard 0): a client set (non-empty payload) or cleared (empty
    /// payload) a retained message on the sending shard. The sequencer applies the bounds and
    /// answers every replica with [`ShardMsg::Retain`].
    RetainRequest {
        /// The retained message.
        msg: Message,
        /// Who published it (None: the broker).
        source: Option<RetainSource>,
    },
    /// From the retained sequencer: a retained message was set (non-empty payload) or cleared
    /// (empty payload), within the bounds, in the order every replica applies.
    Retain {
        /// The retained message.
        msg: Message,
        /// Who published it (None: the broker).
        source: Option<RetainSource>,
    },
    /// To the registry shard of `client_id`: the sender wants to own it.
    Claim {
        /// Client identifier.
        client_id: String,
        /// Request id, echoed in the reply.
        req: u64,
    },
    /// Reply to a claim: its generation, and who owned the client id before (None: nobody).
    ClaimReply {
        /// Request id of the claim.
        req: u64,
        /// Generation the registry gave the claim.
        generation: ClaimGen,
        /// Previous owner and its generation.
        previous: Option<Owner>,
    },
    /// To the previous owner: close the client's connection (or supersede its pending CONNECT)
    /// and hand the session of generation `target` over.
    Takeover {
        /// Client identifier.
        client_id: String,
        /// Request id, echoed in the reply.
        req: u64,
        /// Generation of the claim asking (newer than `target`).
        generation: ClaimGen,
        /// Generation whose session is asked for: the previous owner in the registry.
        target: ClaimGen,
        /// The new connection asked for a clean start: the old session is discarded.
        clean_start: bool,
    },
    /// Reply to a takeover with the session, if there was one to keep.
    TakeoverReply {
        /// Request id of the takeover.
        req: u64,
        /// The session state, boxed to keep the enum small.
        state: Option<Box<SessionState>>,
        /// The sender keeps forwarding what still arrives for the session
        /// ([`ShardMsg::Forwarded`]) until told [`ShardMsg::ForwardStop`] (`shard::handover`).
        forwarding: bool,
    },
    /// From a session's previous shard: a message that matched the session there after the
    /// handover (`shard::handover`, step 1).
    Forwarded {
        /// Client identifier of the session.
        client_id: String,
        /// The claim under which the receiver holds the session.
        generation: ClaimGen,
        /// The message and the subscriptions it matched, boxed to keep the enum small.
        delivery: Box<super::handover::ForwardedDelivery>,
    },
    /// To a session's previous shard: every shard routes to the sender now; drain and stop
    /// forwarding (`shard::handover`, step 3).
    ForwardStop {
        /// Client identifier.
        client_id: String,
        /// The claim under which the sender holds the session.
        generation: ClaimGen,
    },
    /// From a session's previous shard: nothing more is forwarded for it.
    ForwardEnd {
        /// Client identifier.
        client_id: String,
        /// The claim under which the receiver holds the session.
        generation: ClaimGen,
    },
    /// Answer [`ShardMsg::FenceAck`] on the data lane (behind everything routed before).
    Fence {
        /// Echoed in the answer.
        token: u64,
    },
    /// Answer to [`ShardMsg::Fence`], on the data lane.
    FenceAck {
        /// The fence's token.
        token: u64,
    },
    /// Flow control, to the publisher's shard: a subscriber here is above its high-water mark;
    /// stop reading the connection of session `session` (if still `generation`).
    Pause {
        /// Session slot of the publisher.
        session: SlotId,
        /// Its generation.
        generation: SlotGen,
    },
    /// Flow control: that subscriber drained; one pause of the publisher is lifted.
    Resume {
        /// Session slot of the publisher.
        session: SlotId,
        /// Its generation.
        generation: SlotGen,
    },
    /// To the registry shard: `owner` no longer holds a session for `client_id`. Applied only
    /// while the registry still records that very owner and generation, so a late release
    /// cannot erase a newer claim.
    Release {
        /// Client identifier.
        client_id: String,
        /// The shard releasing it and the generation of its claim.
        owner: Owner,
    },
}

impl ShardMsg {
    /// Whether the message travels on the data lane: publishes, retained updates (which
    /// must stay in order with the publishes they come with) and fence answers (behind the
    /// publishes routed before them). Everything else takes the control
    /// lane, which is never behind data.
    pub fn is_data(&self) -> bool {
        matches!(
            self,
            ShardMsg::Publish { .. } | ShardMsg::Retain { .. } | ShardMsg::FenceAck { .. }
        )
    }
}

/// The QoS of a delivery: the publish QoS downgraded to the subscription's maximum
/// ([MQTT-3.8.4-8] in 3.1.1, §3.8.4 in 5.0).
pub fn delivery_qos(publish: QoS, subscription: QoS) -> QoS {
    publish.min(subscription)
}
