//! One password check as the shard asks for it ([`HashJob`]) and its answer ([`Verdict`]).
//! The shard does not run slow key derivations itself: it queues a job
//! (`Shard::take_password_checks`), the runtime hands it to the worker pool
//! (`tern::auth::pool`), and the verdict comes back as an input
//! (`Shard::handle_password_verdict`). No IO, no threads.

use crate::ids::ShardId;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::PasswordDb;

/// One password to check, for `shard`'s connection waiting on `ticket`.
pub struct HashJob {
    /// The shard that waits for the verdict.
    pub shard: ShardId,
    /// Identifies the waiting connection within the shard.
    pub ticket: u64,
    /// The password file in force when the CONNECT arrived.
    pub db: Arc<PasswordDb>,
    /// The user name of the CONNECT.
    pub username: String,
    /// The password of the CONNECT, if any (none never matches).
    pub password: Option<Bytes>,
}

impl HashJob {
    /// Runs the check (slow on purpose). Workers call this; tests may call it inline.
    pub fn run(&self) -> Verdict {
        let ok = self.db.check(&self.username, self.password.as_deref());
        Verdict { ticket: self.ticket, ok }
    }
}

impl fmt::Debug for HashJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("HashJob")
            .field("shard", &self.shard)
            .field("ticket", &self.ticket)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The answer to one [`HashJob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The job's ticket.
    pub ticket: u64,
    /// Whether the password matched.
    pub ok: bool,
}
