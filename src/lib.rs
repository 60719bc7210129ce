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
//! The protocol is the `tern-core` crate (`crates/tern-core`), re-exported here so that
//! `tern::shard` and `crate::shard` name it. It does no IO, starts no thread, holds no task
//! waker and reads no clock: bytes, shard messages, parsed auth files and the time go in; bytes,
//! shard messages, the connections that became ready and the password checks to run come out.
//!
//! - [`codec`]: the wire codec.
//! - [`topic`]: topic filters and the subscription trie.
//! - [`session`]: the state of one MQTT session.
//! - [`shard`]: the broker logic of one core.
//! - [`enhanced_auth`]: v5 enhanced authentication (SCRAM-SHA-256).
//! - [`counters`]: one shard's counters.
//! - [`auth`]: the core's ACL and password decisions, re-exported with this crate's file
//!   loading ([`auth::files`]), password workers ([`auth::pool`]) and `tern passwd`.
//!
//! This crate is the runtime around it:
//!
//! - [`net`], [`runtime`]: glommio: sockets, executors, the mesh; [`net::ShardCell`] keeps the
//!   connection tasks' wakers and wakes those the shard reports ready. With `persist::wal`
//!   (DMA files), the only modules that import glommio.
//! - [`config`], [`broker`]: the configuration file and its mapping onto the layers.
//! - [`metrics`]: the board the shards copy their counters to; `/metrics` and `$SYS`.
//! - `fuzzing` (hidden): the bodies of the fuzz targets and parser property tests.
//! - [`admin`]: the admin HTTP listener (`/metrics`, health checks, `/api/v1`) on threads of its
//!   own; it asks the shards over bounded channels ([`shard::admin`] answers).
//! - [`bridge`]: `[[bridge]]` forwarding to other brokers, a client thread per bridge.
//! - [`check`], [`mosquitto_conf`], [`logging`]: `tern check-config`,
//!   `tern import-mosquitto-conf` and the log output, for the binary (`src/main.rs`).
//! - [`persist`]: the write-ahead log (format and records with no IO; the glommio writer).
#![forbid(unsafe_code)]

pub use tern_core::{codec, counters, enhanced_auth, ids, session, shard, topic};

pub mod admin;
pub mod allocator;
pub mod auth;
pub mod bridge;
pub mod broker;
pub mod check;
pub mod config;
pub mod fuzzing;
pub mod logging;
pub mod memory_plan;
pub mod metrics;
pub mod mosquitto_conf;
pub mod net;
pub mod persist;
pub mod runtime;

/// The crate version, as published in `$SYS/broker/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
