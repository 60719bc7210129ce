//! Tern's protocol core, with no IO: the MQTT codec, topic filters and the subscription trie,
//! sessions, the shard state machine (connections, routing, the client-id registry, retained
//! messages, shared subscriptions, flow control), and the authentication decisions that need
//! no file (ACL rules, password verification, SCRAM-SHA-256, the failed-login limit).
//!
//! # The boundary
//!
//! Nothing here opens a socket or a file, starts a thread, holds a task waker or reads a clock.
//! The `tern` crate (the runtime) drives a [`shard::Shard`] with calls that take what happened
//! and the time it happened (`now: Instant`), and collects what to do:
//!
//! - bytes to write per connection ([`shard::Shard::swap_tx`]) and whether to close it
//!   ([`shard::Shard::status`]);
//! - the connections that became ready since the last call ([`shard::Shard::take_ready`]): the
//!   runtime wakes its own tasks for them;
//! - messages for the other shards ([`shard::Shard::take_batch`], [`shard::Shard::take_control`]);
//! - password checks to run off the shard thread ([`shard::Shard::take_password_checks`]), whose
//!   verdicts come back as inputs ([`shard::Shard::handle_password_verdict`]);
//! - counters ([`counters::Metrics`]) the runtime copies out once a second.
//!
//! Files (the password file, the ACL) are read by the runtime, which hands the shard parsed
//! snapshots ([`auth::Security`]). `tests/tidy.rs` fails if a source here names `std::net`,
//! `std::fs`, `std::thread`, `Waker`, `glommio` or `rustls`; `clippy.toml` bans `Instant::now`
//! and `SystemTime::now`. Peer addresses are `core::net::SocketAddr`, a plain value type.
//!
//! # Layout
//!
//! - [`codec`]: the wire codec.
//! - [`topic`]: topic filters and the subscription trie.
//! - [`session`]: the state of one MQTT session.
//! - [`shard`]: the broker logic of one core.
//! - [`auth`]: ACL rules, password hashes and their verification, the failed-login limit, the
//!   password-check request and verdict.
//! - [`enhanced_auth`]: v5 enhanced authentication (SCRAM-SHA-256).
//! - [`counters`]: one shard's counters and latency histogram.
//! - [`ids`]: shard, session-slot, slot-generation and message ids.
#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod counters;
pub mod enhanced_auth;
pub mod ids;
pub mod persist;
pub mod session;
pub mod shard;
#[cfg(test)]
mod test_clock;
pub mod topic;
