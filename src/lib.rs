//! Tern: a thread-per-core MQTT 3.1 / 3.1.1 / 5.0 broker on io_uring (glommio).
//!
//! # Architecture
//!
//! One shard per core. A shard owns a disjoint set of connections and their sessions, a replica
//! of the subscription trie, a replica of the retained messages and one partition of the
//! client-id registry. Shards never share mutable state: they exchange [`shard::ShardMsg`]s over
//! bounded lock-free channels (glommio's channel mesh). A publish is matched on the publishing
//! shard; local subscribers get it directly, and each other shard with a matching subscriber
//! gets one copy, which it fans out locally. See `docs/ARCHITECTURE.md`.
//!
//! # Layout
//!
//! - [`codec`]: the wire codec, no IO.
//! - [`topic`]: topic filters and the subscription trie, no IO.
//! - [`session`]: the state of one MQTT session, no IO.
//! - [`shard`]: the broker logic of one core, no IO: bytes and shard messages in, bytes and
//!   shard messages out, time passed in.
//! - [`net`], [`runtime`]: glommio: sockets, executors, the mesh. With `persist::wal` (DMA
//!   files), the only modules that import glommio.
//! - [`config`], [`broker`]: the configuration file and its mapping onto the layers.
//! - [`metrics`]: per-shard counters.
//! - `fuzzing` (hidden): the bodies of the fuzz targets and parser property tests.
//! - [`admin`]: the admin HTTP listener (`/metrics`, health checks, `/api/v1`) on threads of its
//!   own; it asks the shards over bounded channels ([`shard::admin`] answers).
//! - [`bridge`]: `[[bridge]]` forwarding to other brokers, a client thread per bridge.
//! - [`check`], [`mosquitto_conf`], [`logging`]: `tern check-config`,
//!   `tern import-mosquitto-conf` and the log output, for the binary (`src/main.rs`).
//! - [`persist`]: the write-ahead log (format and records with no IO; the glommio writer).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod check;
pub mod codec;
pub mod config;
pub mod enhanced_auth;
pub mod fuzzing;
pub mod logging;
pub mod memory_plan;
pub mod metrics;
pub mod mosquitto_conf;
pub mod net;
pub mod persist;
pub mod runtime;
pub mod session;
pub mod shard;
pub mod topic;

/// The crate version, as published in `$SYS/broker/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
