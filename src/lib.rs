//! Tern: a thread-per-core MQTT broker.
#![forbid(unsafe_code)]

pub mod codec;

/// The crate version, as published in `$SYS/broker/version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
