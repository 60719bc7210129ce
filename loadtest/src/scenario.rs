//! What a run does: the scenario kind, its parameters, and the plan that turns them into
//! connections with roles (publisher, subscriber, idle). Pure data: no sockets, no clock.
//!
//! Scenario names follow the Open MQTT Benchmark Suite: `conn`, `p2p`, `fanout`, `fanin`,
//! `sharedsub`; `retained` is the retained-heavy wildcard subscribe.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tern::codec::{ProtocolVersion, QoS};

/// The scenario kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Connection storm: N connections opened at R/s, then held idle (with keep-alive pings).
    Conn,
    /// Point-to-point: publisher i -> topic i -> subscriber i.
    P2p,
    /// Fan-out: every subscriber receives every publisher's topic (default 1 -> 8).
    Fanout,
    /// Fan-in: many publishers, one wildcard subscriber (default 8 -> 1).
    Fanin,
    /// Shared-subscription fan-in: publishers -> `$share/tl/...`, each message to one member.
    Sharedsub,
    /// Retained-heavy wildcard subscribe: R retained topics are stored first, then subscribers
    /// subscribe to `.../#` and receive all of them.
    Retained,
}

impl Kind {
    /// The name used on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Conn => "conn",
            Kind::P2p => "p2p",
            Kind::Fanout => "fanout",
            Kind::Fanin => "fanin",
            Kind::Sharedsub => "sharedsub",
            Kind::Retained => "retained",
        }
    }

    /// Default (publishers, subscribers) for the kind.
    const fn default_shape(self) -> (usize, usize) {
        match self {
            Kind::Conn => (0, 0),
            Kind::P2p => (8, 8),
            Kind::Fanout => (1, 8),
            Kind::Fanin => (8, 1),
            Kind::Sharedsub => (8, 4),
            Kind::Retained => (1, 4),
        }
    }
}

/// Bytes of the header every generated payload starts with:
/// magic u32 | publisher id u32 | sequence u64 | send time u64 (ns since the Unix epoch).
pub const PAYLOAD_HEADER_BYTES: usize = 24;
/// "TLT1": marks a payload this harness wrote, so stray messages are not misread.
pub const PAYLOAD_MAGIC: u32 = 0x544C_5431;

/// Every parameter of one run. Built by [`Scenario::from_args`], validated there; a
/// multi-process run hands each client process its own as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    /// Free-form label copied into the report (e.g. "fanout-qos0").
    pub label: String,
    /// What to run.
    pub kind: Kind,
    /// Broker host (an IP address).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT version: 4 (3.1.1) or 5.
    #[serde(serialize_with = "ser_version", deserialize_with = "de_version")]
    pub version: ProtocolVersion,
    /// QoS of every publish and subscription.
    #[serde(serialize_with = "ser_qos", deserialize_with = "de_qos")]
    pub qos: QoS,
    /// Publishing connections.
    pub publishers: usize,
    /// Subscribing connections.
    pub subscribers: usize,
    /// Payload bytes per message, at least [`PAYLOAD_HEADER_BYTES`].
    pub payload_bytes: usize,
    /// Target publish rate summed over all publishers, msg/s; 0 = as fast as possible.
    pub rate_per_sec: u64,
    /// Publish phase stops after this long...
    pub duration_secs: f64,
    /// ... or after this many messages in total, whichever comes first.
    pub messages_max: u64,
    /// After publishing, wait at most this long for outstanding deliveries.
    pub drain_secs: f64,
    /// Clean session (3.1.1) / clean start with expiry 0 (5.0); false = persistent sessions.
    pub clean: bool,
    /// QoS 1/2 publishes a publisher may have unacknowledged (capped by the broker's v5
    /// Receive Maximum).
    pub inflight_max: u16,
    /// Keep alive sent in CONNECT (rumqttd refuses 0).
    pub keepalive_secs: u16,
    /// `conn`: connections to open (in this process).
    pub connections: usize,
    /// `conn`: connection attempts per second (0 = as fast as possible, bounded by
    /// `connects_pending_max`).
    pub conn_rate_per_sec: u64,
    /// `conn`: seconds to hold the connections once all are up.
    pub hold_secs: f64,
    /// Connection attempts in flight at once per thread.
    pub connects_pending_max: usize,
    /// Seconds allowed for connecting (and subscribing) before the run goes on without the
    /// missing connections (counted as errors).
    pub connect_timeout_secs: f64,
    /// `retained`: retained messages stored before the subscribers subscribe.
    pub retained_messages: u64,
    /// Worker threads (default: the CPUs this process may run on).
    pub threads: usize,
    /// Loopback source addresses to spread connections over: 127.0.0.2 .. 127.0.0.(1+n).
    /// 0 = let the kernel choose (needed for a non-loopback broker).
    pub source_addrs: u8,
    /// Index of the first connection of this process (multi-process `conn` runs).
    pub conn_offset: usize,
    /// Prefix of every topic and client id, unique per run.
    pub run_id: String,
    /// Broker pid to read RSS and CPU from (/proc).
    pub broker_pid: Option<u32>,
    /// TLS, verifying the broker against this CA file (PEM).
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// TLS without verifying the broker's certificate (loopback measurements).
    #[serde(default)]
    pub tls_insecure: bool,
    /// TLS 1.2 only (default: 1.3, or 1.2 when the broker offers only that).
    #[serde(default)]
    pub tls12: bool,
    /// The name the broker's certificate is checked against (and sent as SNI).
    #[serde(default)]
    pub tls_server_name: String,
    /// MQTT over WebSocket (above TLS with a TLS option): `ws`/`wss` listeners.
    #[serde(default)]
    pub ws: bool,
    /// The WebSocket request path.
    #[serde(default)]
    pub ws_path: String,
}

fn ser_version<S: serde::Serializer>(v: &ProtocolVersion, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u8(v.level())
}

fn ser_qos<S: serde::Serializer>(q: &QoS, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u8(*q as u8)
}

fn de_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ProtocolVersion, D::Error> {
    match u8::deserialize(d)? {
        4 | 3 => Ok(ProtocolVersion::V311),
        5 => Ok(ProtocolVersion::V5),
        v => Err(serde::de::Error::custom(format!("MQTT version 4 or 5, got {v}"))),
    }
}

fn de_qos<'de, D: serde::Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
    let q = u8::deserialize(d)?;
    QoS::from_u8(q).ok_or_else(|| serde::de::Error::custom(format!("QoS 0, 1 or 2, got {q}")))
}

/// What one connection does.
#[derive(Clone, Debug)]
pub enum Role {
    /// Publishes to `topic`; `id` goes into every payload.
    Publisher {
        /// Publisher id, 0..publishers.
        id: u32,
        /// Topic name.
        topic: String,
        /// Messages this publisher may send at most.
        messages_max: u64,
        /// Messages per second (0 = as fast as possible).
        rate_per_sec: f64,
        /// Publish with RETAIN set (the `retained` scenario).
        retain: bool,
    },
    /// Subscribes to `filter`. `group` is the unit that must receive each message once: each
    /// plain subscriber is its own group, the members of a shared subscription form one.
    Subscriber {
        /// Delivery group (see above).
        group: u32,
        /// Topic filter.
        filter: String,
    },
    /// Connects and stays idle (`conn`).
    Idle,
}

/// One connection of the plan.
#[derive(Clone, Debug)]
pub struct ConnPlan {
    /// Global index (across processes), used for the client id and the source address.
    pub index: usize,
    /// MQTT client identifier.
    pub client_id: String,
    /// What it does.
    pub role: Role,
}

impl Scenario {
    /// Builds a scenario from the command line's options, filling in the defaults that
    /// depend on the kind.
    pub fn from_args(kind: Kind, args: &crate::ScenarioArgs) -> Result<Self> {
        let (pubs, subs) = kind.default_shape();
        let threads_default = std::thread::available_parallelism().map_or(1, |n| n.get());
        let version = match args.mqtt {
            4 | 3 => ProtocolVersion::V311,
            5 => ProtocolVersion::V5,
            v => bail!("--mqtt must be 4 (3.1.1) or 5, got {v}"),
        };
        let qos = QoS::from_u8(args.qos).context("--qos must be 0, 1 or 2")?;
        let s = Scenario {
            label: args.label.clone().unwrap_or_else(|| kind.name().to_owned()),
            kind,
            host: args.host.clone(),
            port: args.port,
            version,
            qos,
            publishers: args.publishers.unwrap_or(pubs),
            subscribers: args.subscribers.unwrap_or(subs),
            payload_bytes: args.payload,
            rate_per_sec: args.rate,
            duration_secs: args.duration,
            messages_max: args.messages,
            drain_secs: args.drain,
            clean: args.clean != 0,
            inflight_max: args.inflight,
            keepalive_secs: args.keepalive,
            connections: args.connections,
            conn_rate_per_sec: args.conn_rate,
            hold_secs: args.hold,
            connects_pending_max: args.connects_pending,
            connect_timeout_secs: args.connect_timeout,
            retained_messages: args.retained,
            threads: args.threads.unwrap_or(threads_default),
            source_addrs: args.source_addrs,
            conn_offset: 0,
            run_id: args.run_id.clone().unwrap_or_else(|| format!("{:x}", std::process::id())),
            broker_pid: args.broker_pid,
            tls_ca: args.tls_ca.clone(),
            tls_insecure: args.tls_insecure,
            tls12: args.tls12,
            tls_server_name: args.tls_server_name.clone(),
            ws: args.ws,
            ws_path: args.ws_path.clone(),
        };
        s.validate()?;
        Ok(s)
    }

    /// Every bound of a scenario (also checked again in a client process).
    pub fn validate(&self) -> Result<()> {
        crate::tls::client_config(self)?;
        if self.payload_bytes < PAYLOAD_HEADER_BYTES {
            bail!("--payload must be at least {PAYLOAD_HEADER_BYTES} bytes (timestamp + sequence)");
        }
        if self.payload_bytes > 256 * 1024 * 1024 {
            bail!("--payload must be at most 256 MiB");
        }
        if !(0.0..=86_400.0).contains(&self.duration_secs) || self.duration_secs == 0.0 {
            bail!("--duration must be in (0, 86400] seconds: every run is bounded in time");
        }
        if self.messages_max == 0 {
            bail!("--messages must be at least 1: every run is bounded in count");
        }
        if self.threads == 0 || self.threads > 256 {
            bail!("--threads must be in 1..=256");
        }
        if self.inflight_max == 0 {
            bail!("--inflight must be at least 1");
        }
        if self.kind == Kind::Conn {
            if self.connections == 0 || self.connections > 10_000_000 {
                bail!("--connections must be in 1..=10000000");
            }
            if !(0.0..=86_400.0).contains(&self.hold_secs) {
                bail!("--hold must be in [0, 86400] seconds");
            }
        } else if self.publishers == 0 || self.subscribers == 0 {
            bail!("--publishers and --subscribers must be at least 1");
        }
        if self.kind == Kind::P2p && self.publishers != self.subscribers {
            bail!("p2p pairs publishers with subscribers: give the same number of each");
        }
        if self.keepalive_secs == 0 {
            bail!("--keepalive 0 is refused by some brokers (rumqttd); use at least 1");
        }
        Ok(())
    }

    /// The topic every message goes under: unique per run so leftovers of an earlier run
    /// (retained messages, persistent sessions) never match.
    fn prefix(&self) -> String {
        format!("tl/{}/{}", self.run_id, self.kind.name())
    }

    /// Messages each receiving group should get per message published (fan factor).
    pub fn groups_per_message(&self) -> u64 {
        match self.kind {
            Kind::Conn => 0,
            Kind::P2p | Kind::Sharedsub => 1,
            Kind::Fanout | Kind::Fanin | Kind::Retained => self.subscribers as u64,
        }
    }

    /// Every connection of this process, subscribers first so they are in place before any
    /// publisher starts.
    pub fn plan(&self) -> Vec<ConnPlan> {
        let prefix = self.prefix();
        let cid = |role: &str, i: usize| format!("tl-{}-{role}-{i}", self.run_id);
        let mut out = Vec::new();
        if self.kind == Kind::Conn {
            for i in 0..self.connections {
                let index = self.conn_offset + i;
                out.push(ConnPlan { index, client_id: cid("c", index), role: Role::Idle });
            }
            return out;
        }
        for i in 0..self.subscribers {
            let (group, filter) = match self.kind {
                Kind::P2p => (i as u32, format!("{prefix}/{i}")),
                Kind::Sharedsub => (0, format!("$share/tl/{prefix}/+")),
                Kind::Retained => (i as u32, format!("{prefix}/#")),
                _ => (i as u32, format!("{prefix}/+")),
            };
            let role = Role::Subscriber { group, filter };
            out.push(ConnPlan { index: out.len(), client_id: cid("s", i), role });
        }
        let p = self.publishers as u64;
        let total =
            if self.kind == Kind::Retained { self.retained_messages } else { self.messages_max };
        for i in 0..self.publishers {
            // Split the count as evenly as possible: the first `total % p` get one more.
            let messages_max = total / p + u64::from((i as u64) < total % p);
            let topic = match self.kind {
                // One retained message per topic: the publisher appends the sequence number.
                Kind::Retained => format!("{prefix}/{i}"),
                _ => format!("{prefix}/{i}"),
            };
            let rate = self.rate_per_sec as f64 / p as f64;
            let role = Role::Publisher {
                id: i as u32,
                topic,
                messages_max,
                rate_per_sec: rate,
                retain: self.kind == Kind::Retained,
            };
            out.push(ConnPlan { index: out.len(), client_id: cid("p", i), role });
        }
        out
    }

    /// The publish phase's time limit.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options of `tern-loadtest p2p ARGS...` as clap parses them.
    fn args(v: &[&str]) -> crate::ScenarioArgs {
        use clap::Parser;
        let argv = ["tern-loadtest", "p2p"].iter().chain(v);
        match crate::Cli::try_parse_from(argv).expect("args").command {
            crate::Command::P2p(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// A client process gets the scenario its parent built, field for field.
    #[test]
    fn a_scenario_survives_the_trip_to_a_child() {
        let s = Scenario::from_args(Kind::Conn, &args(&["--qos", "2", "--mqtt", "5"]))
            .expect("scenario");
        let back: Scenario =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
    }

    #[test]
    fn p2p_plan_pairs_topics() {
        let s = Scenario::from_args(Kind::P2p, &args(&["--publishers", "3", "--subscribers", "3"]))
            .expect("scenario");
        let plan = s.plan();
        assert_eq!(plan.len(), 6);
        let filters: Vec<_> = plan
            .iter()
            .filter_map(|c| match &c.role {
                Role::Subscriber { filter, .. } => Some(filter.clone()),
                _ => None,
            })
            .collect();
        let topics: Vec<_> = plan
            .iter()
            .filter_map(|c| match &c.role {
                Role::Publisher { topic, .. } => Some(topic.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(filters, topics);
    }

    #[test]
    fn message_count_is_split_exactly() {
        let s = Scenario::from_args(Kind::Fanin, &args(&["--messages", "10", "--publishers", "3"]))
            .expect("scenario");
        let total: u64 = s
            .plan()
            .iter()
            .map(|c| match c.role {
                Role::Publisher { messages_max, .. } => messages_max,
                _ => 0,
            })
            .sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn unbounded_runs_are_refused() {
        assert!(Scenario::from_args(Kind::P2p, &args(&["--duration", "0"])).is_err());
        assert!(Scenario::from_args(Kind::P2p, &args(&["--messages", "0"])).is_err());
        assert!(Scenario::from_args(Kind::P2p, &args(&["--payload", "8"])).is_err());
    }
}
