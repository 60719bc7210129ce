//! The one clock reading the tests of the core take: a base [`Instant`] to count from. The
//! core itself reads no clock (clippy's `disallowed-methods` bans `Instant::now` and
//! `SystemTime::now`); its tests advance time by adding to this base.

use std::time::Instant;

/// A base instant for a test's harness clock.
#[allow(clippy::disallowed_methods)] // the tests' one clock reading: `Instant` has no other constructor
pub(crate) fn test_epoch() -> Instant {
    Instant::now()
}
