//! The pure half of durability (issue 12): the log's typed records and their encoding
//! ([`record`]), and the conversions between the shard's state and records with the replay
//! that folds a log back into sessions and retained messages ([`journal`]), and which outgoing
//! packets wait for the log ([`hold`]). No IO and no clock: the `tern` crate's `persist`
//! module writes, syncs and recovers the files, and reads the clock.

pub mod hold;
pub mod journal;
pub mod record;
