//! Authentication and authorisation, the runtime's side: reading the password and ACL files
//! ([`files`]), the worker threads that check passwords off the shard threads ([`pool`]), and
//! `tern passwd` ([`passwd_cmd`]). The parsing and every decision (ACL rules, password
//! verification, SCRAM, the failed-login limit) are in the core, `tern_core::auth`, re-exported
//! here so `crate::auth::...` names both.

pub use tern_core::auth::*;

pub mod files;
pub mod passwd_cmd;
pub mod pool;

pub use files::{load_acl, load_passwords, load_security, AUTH_FILE_BYTES_MAX};
pub use pool::HashPool;
