//! Shared subscriptions (§4.8.2): the replicated groups, the strategy that picks one member per
//! message, and what happens when the picked member cannot take it.
//!
//! Every shard holds every group with all its members (shard, slot, generation, options, and
//! whether the session has a connection). The publishing shard picks a member with the group's
//! strategy ([`SharedStrategy`]), preferring online members; offline members with a persistent
//! session are picked (their message is queued) only when no member is online. The member's
//! shard checks the pick: a member that has left, lost its connection or may not read the topic
//! (ACL) is replaced by another acceptable member on that shard, or the delivery is passed on to
//! the next shard that has one. The hops are bounded: at most one round of the shards looking
//! for an online member, then one round for any member; after that the message is dropped and
//! counted in `messages_dropped_no_member`.

use crate::ids::{ShardId, SlotGen, SlotId};
use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::message::{Member, SharedDelivery};
use super::publish::LocalMatch;
use super::{Shard, ShardMsg};
use crate::topic::{parse_shared, SubscriptionTrie};

/// One shared group `$share/{name}/{filter}`.
#[derive(Debug)]
struct Group {
    key: u64,
    filter: String,
    /// Sorted by (shard, slot), so every replica lists the same members in the same order and
    /// the hash strategies pick the same member wherever the message was published.
    members: Vec<Member>,
    strategy: SharedStrategy,
    /// Round robin: the next turn.
    next: usize,
    /// Sticky: the member picked last, as (shard, slot).
    sticky: Option<(ShardId, SlotId)>,
}

/// The replica of every shared-subscription group.
#[derive(Default)]
pub(crate) struct SharedGroups {
    groups: HashMap<String, Group>,
    names: HashMap<u64, String>,
    trie: SubscriptionTrie<u64, ()>,
    next_key: u64,
    /// State of the xorshift generator of the `random` strategy (0: not seeded yet).
    rng: u64,
}

/// One pick: the full group filter, the member, and whether it was picked among online members.
pub(crate) type Pick = (String, Member, bool);

impl SharedGroups {
    /// Adds a member, or updates it (options, generation, online) if it is there already;
    /// true when it is new.
    pub(crate) fn add(&mut self, group: &str, member: Member, strategy: SharedStrategy) -> bool {
        let Some((_, filter)) = parse_shared(group) else { return false };
        if !self.groups.contains_key(group) {
            self.next_key += 1;
            let key = self.next_key;
            self.trie.insert(filter, key, ());
            self.names.insert(key, group.to_owned());
            let g = Group {
                key,
                filter: filter.to_owned(),
                members: Vec::new(),
                strategy,
                next: 0,
                sticky: None,
            };
            self.groups.insert(group.to_owned(), g);
        }
        let Some(g) = self.groups.get_mut(group) else { return false }; // inserted above
        match g.members.binary_search_by_key(&(member.shard, member.slot), |m| (m.shard, m.slot)) {
            Ok(i) => {
                g.members[i] = member;
                false
            }
            Err(i) => {
                g.members.insert(i, member);
                true
            }
        }
    }

    /// Removes the member (`shard`, `slot`) of slot `generation` (a newer session in a reused
    /// slot stays); the group goes when its last member does. True when it was there.
    pub(crate) fn remove(
        &mut self,
        group: &str,
        shard: ShardId,
        slot: SlotId,
        generation: SlotGen,
    ) -> bool {
        let Some(g) = self.groups.get_mut(group) else { return false };
        let before = g.members.len();
        g.members.retain(|m| !(m.shard == shard && m.slot == slot && m.generation == generation));
        let removed = g.members.len() != before;
        if g.members.is_empty() {
            if let Some(g) = self.groups.remove(group) {
                self.trie.remove(&g.filter, &g.key);
                self.names.remove(&g.key);
            }
        }
        removed
    }

    /// The members of `group`, sorted by (shard, slot).
    pub(crate) fn members(&self, group: &str) -> &[Member] {
        self.groups.get(group).map_or(&[], |g| &g.members)
    }

    /// One member per matching group ([MQTT-4.8.2-4]: each message goes to one member of each
    /// group), by the group's strategy, among the online members if there are any.
    /// `publisher` is the publishing client's id ("" for the broker's own messages).
    pub(crate) fn pick(&mut self, topic: &crate::codec::TopicName, publisher: &str) -> Vec<Pick> {
        if self.groups.is_empty() {
            return Vec::new();
        }
        let topic = topic.as_str();
        let mut keys = Vec::new();
        self.trie.for_each_match(topic, |k, _| keys.push(*k));
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(name) = self.names.get(&key).cloned() else { continue };
            let draw = match self.groups.get(&name).map(|g| g.strategy) {
                Some(SharedStrategy::Random) => self.next_random(),
                _ => 0,
            };
            let Some(g) = self.groups.get_mut(&name) else { continue };
            let online_only = g.members.iter().any(|m| m.online);
            let candidates: Vec<&Member> =
                g.members.iter().filter(|m| m.online || !online_only).collect();
            let n = candidates.len();
            if n == 0 {
                continue;
            }
            let index = match g.strategy {
                SharedStrategy::RoundRobin => {
                    let i = g.next % n;
                    g.next = g.next.wrapping_add(1);
                    i
                }
                SharedStrategy::Random => (draw % n as u64) as usize,
                SharedStrategy::Sticky => g
                    .sticky
                    .and_then(|s| candidates.iter().position(|m| (m.shard, m.slot) == s))
                    .unwrap_or(0),
                SharedStrategy::HashClientId => (fnv1a(publisher.as_bytes()) % n as u64) as usize,
                SharedStrategy::HashTopic => (fnv1a(topic.as_bytes()) % n as u64) as usize,
            };
            let m = *candidates[index];
            g.sticky = Some((m.shard, m.slot));
            out.push((name, m, online_only));
        }
        out
    }

    /// xorshift64*: enough to spread messages, no cryptographic claim.
    fn next_random(&mut self) -> u64 {
        if self.rng == 0 {
            self.rng = 0x9E37_79B9_7F4A_7C15;
        }
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// FNV-1a, 64 bits: stable across shards and runs, unlike the std `RandomState`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where a shared delivery ends up.
pub(crate) enum Resolved {
    /// A member on this shard takes it.
    Local(LocalMatch),
    /// Passed on to another shard, with the member picked there.
    Forward(ShardId, SharedDelivery),
    /// No member anywhere can take it.
    Dropped,
}

impl Shard {
    /// The strategy of the group `$share/{name}/...` from the configuration.
    pub(super) fn shared_strategy(&self, group: &str) -> SharedStrategy {
        let name = parse_shared(group).map_or("", |(n, _)| n);
        self.cfg.shared.strategy_for(name)
    }

    /// Whether `m`, a member of `group` on this shard, can take a message on `topic` now: its
    /// session is the one that subscribed, it still holds the subscription, the ACL lets it
    /// read the topic, and it is online unless `online_only` is false.
    fn member_can_take(
        &self,
        group: &str,
        m: &Member,
        topic: &crate::codec::TopicName,
        online_only: bool,
    ) -> bool {
        m.shard == self.id
            && self.slot(m.slot).is_some_and(|s| {
                s.generation == m.generation
                    && s.session.subscriptions.contains_key(group)
                    && (s.conn.is_some() || !online_only)
            })
            && self.can_read(m.slot, topic)
    }

    /// Decides where a shared delivery goes: the picked member if it can take the message,
    /// else another member on this shard, else the next shard with a member that may. Each
    /// shard passes a delivery on at most once per round ([`SharedDelivery::hops`]).
    pub(crate) fn resolve_shared(
        &self,
        mut d: SharedDelivery,
        topic: &crate::codec::TopicName,
    ) -> Resolved {
        let shards = self.cfg.shards;
        // Bounded: two passes (online members, then any), each returning or changing the pass.
        for _ in 0..2 {
            if self.member_can_take(&d.group, &d.member, topic, d.online_only) {
                return Resolved::Local(local_match(&d.member));
            }
            let members = self.shared.members(&d.group);
            let here =
                members.iter().find(|m| self.member_can_take(&d.group, m, topic, d.online_only));
            if let Some(m) = here {
                return Resolved::Local(local_match(m));
            }
            if d.hops + 1 < shards {
                // The next shard in ring order whose members (as this replica knows them) may
                // take it; that shard checks again.
                let next =
                    (1..shards).map(|k| ShardId((self.id.0 + k) % shards)).find_map(|peer| {
                        members.iter().find(|m| m.shard == peer && (m.online || !d.online_only))
                    });
                if let Some(m) = next {
                    d.hops += 1;
                    d.member = *m;
                    return Resolved::Forward(m.shard, d);
                }
            }
            if !d.online_only {
                break;
            }
            // No online member could take it: offline members with a persistent session may.
            d.online_only = false;
            d.hops = 0;
        }
        Resolved::Dropped
    }

    /// Delivers the result of [`Shard::resolve_shared`]: local members are added to `matches`,
    /// forwarded ones are queued for their shard, dropped ones are counted.
    pub(super) fn place_shared(
        &mut self,
        d: SharedDelivery,
        msg: &crate::session::Message,
        matches: &mut Vec<LocalMatch>,
        now: std::time::Instant,
    ) {
        // The member's session moved to another shard and this replica does not know yet:
        // it still gets the delivery (`handover`).
        if self.forward_shared(&d.group, &d.member, msg, false, now) {
            return;
        }
        let group = d.group.clone();
        let member = d.member;
        match self.resolve_shared(d, &msg.topic) {
            Resolved::Local(m) => matches.push(m),
            Resolved::Forward(peer, d) => {
                self.metrics.messages_forwarded += 1;
                // Charged while it crosses the mesh, as in `route`: the receiver releases every
                // Publish it handles, so an uncharged one would wrap this shard's count.
                let copy = msg.clone();
                let cost = copy.cost_bytes();
                self.cfg.memory.recharge(0, cost);
                self.cfg.mesh_bytes.sent(self.id, cost);
                let m = ShardMsg::Publish { msg: copy, normal: false, shared: vec![d] };
                self.outbox[usize::from(peer)].push_back(m);
            }
            Resolved::Dropped => {
                if !self.forward_shared(&group, &member, msg, true, now) {
                    self.metrics.messages_dropped_no_member += 1;
                }
            }
        }
    }

    /// The session in `slot` gained or lost its connection: its shared memberships say so on
    /// every replica, so that publishers prefer online members.
    pub(super) fn shared_presence(&mut self, slot: SlotId, online: bool) {
        let Some(s) = self.slot(slot) else { return };
        let generation = s.generation;
        let subs: Vec<(String, Member)> = s
            .session
            .subscriptions
            .iter()
            .filter(|(f, _)| crate::codec::topic::is_shared(f))
            .map(|(f, sub)| (f.to_string(), Member::of(self.id, slot, generation, sub, online)))
            .collect();
        for (group, member) in subs {
            let strategy = self.shared_strategy(&group);
            self.shared.add(&group, member, strategy);
            self.broadcast(|| ShardMsg::SharedAdd { group: group.clone(), member, ack: None });
        }
    }
}

fn local_match(m: &Member) -> LocalMatch {
    LocalMatch { slot: m.slot, options: m.options, identifier: m.identifier }
}

/// How a message for a shared subscription group (`$share/{group}/{filter}`, §4.8.2) picks the
/// one member that gets it. Whatever the strategy, members with a connection are preferred to
/// offline ones with a persistent session (those get the message queued only when no member is
/// online), and a message whose member has left or may not read the topic goes to another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SharedStrategy {
    /// Each member in turn (each shard keeps its own turn for the messages published on it).
    #[default]
    RoundRobin,
    /// A member drawn at random for each message.
    Random,
    /// The same member while it stays online and subscribed; another one after that.
    Sticky,
    /// By a hash of the publisher's client id: one publisher's messages go to one member while
    /// the group does not change, which keeps their order.
    HashClientId,
    /// By a hash of the topic: one topic's messages go to one member while the group does not
    /// change.
    HashTopic,
}

impl SharedStrategy {
    /// The name used in the configuration file.
    pub const fn as_str(self) -> &'static str {
        match self {
            SharedStrategy::RoundRobin => "round_robin",
            SharedStrategy::Random => "random",
            SharedStrategy::Sticky => "sticky",
            SharedStrategy::HashClientId => "hash_client_id",
            SharedStrategy::HashTopic => "hash_topic",
        }
    }
}

/// Per-group strategy overrides allowed in `[shared_subscriptions.groups]`.
pub const SHARED_GROUP_OVERRIDES_MAX: usize = 1024;

/// `[shared_subscriptions]`: the strategy of every group, and overrides by group name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedSubscriptionsConfig {
    /// The strategy of groups without an override. Default [`SharedStrategy::RoundRobin`].
    pub strategy: SharedStrategy,
    /// Group name (the `{group}` of `$share/{group}/{filter}`) → its strategy. Default empty.
    /// Bound: [`SHARED_GROUP_OVERRIDES_MAX`] entries; a name is 1..=256 bytes without `/`, `+`
    /// or `#` ([MQTT-4.8.2-2]).
    pub groups: BTreeMap<String, SharedStrategy>,
}

impl SharedSubscriptionsConfig {
    /// The strategy of the group named `name`.
    pub fn strategy_for(&self, name: &str) -> SharedStrategy {
        self.groups.get(name).copied().unwrap_or(self.strategy)
    }

    /// The bounds: at most [`SHARED_GROUP_OVERRIDES_MAX`] overrides, valid group names.
    pub fn check(&self) -> Result<(), String> {
        if self.groups.len() > SHARED_GROUP_OVERRIDES_MAX {
            return Err(format!(
                "at most {SHARED_GROUP_OVERRIDES_MAX} groups (got {})",
                self.groups.len()
            ));
        }
        for name in self.groups.keys() {
            if name.is_empty() || name.len() > 256 || name.contains(['/', '+', '#']) {
                return Err(format!(
                    "group name {name:?} must be 1 to 256 bytes without '/', '+' or '#'"
                ));
            }
        }
        Ok(())
    }
}
