//! Failed logins per source address: after `max` failures within a window (a minute) from one
//! address, CONNECTs with credentials from it are refused without running a key derivation,
//! until the window ends. No IO and no clock: time is an argument. One per shard, so an address
//! whose connections land on N shards gets N times the allowance (documented in `tern.toml`).
//!
//! Bounded: at most [`FAILED_LOGIN_SOURCES_MAX`] addresses are remembered. When full, windows
//! that ended are dropped first; if none has, the address with the oldest window is forgotten
//! (an attacker with many addresses can shorten others' lockouts, not lengthen them).

use core::net::IpAddr;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Addresses one limiter remembers.
pub const FAILED_LOGIN_SOURCES_MAX: usize = 16_384;

/// Length of a counting window.
pub const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Counts failed logins per source address.
#[derive(Clone, Debug)]
pub struct FailedLogins {
    max: u32,
    /// Address → (start of its window, failures in it).
    by_source: HashMap<IpAddr, (Instant, u32)>,
}

impl FailedLogins {
    /// A limiter allowing `max` failures per address per window.
    pub fn new(max: u32) -> FailedLogins {
        FailedLogins { max, by_source: HashMap::new() }
    }

    /// Whether `ip` has used up its failures for the current window.
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.by_source
            .get(&ip)
            .is_some_and(|(start, n)| *n >= self.max && now < *start + FAILED_LOGIN_WINDOW)
    }

    /// Counts a failed login from `ip`.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        if !self.by_source.contains_key(&ip) && self.by_source.len() >= FAILED_LOGIN_SOURCES_MAX {
            self.expire(now);
            if self.by_source.len() >= FAILED_LOGIN_SOURCES_MAX {
                let oldest = self.by_source.iter().min_by_key(|(_, (start, _))| *start);
                if let Some(ip) = oldest.map(|(ip, _)| *ip) {
                    self.by_source.remove(&ip);
                }
            }
        }
        let entry = self.by_source.entry(ip).or_insert((now, 0));
        if now >= entry.0 + FAILED_LOGIN_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Forgets windows that have ended (called from the shard's tick).
    pub fn expire(&mut self, now: Instant) {
        self.by_source.retain(|_, (start, _)| now < *start + FAILED_LOGIN_WINDOW);
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.by_source.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn blocks_after_max_failures_until_the_window_ends() {
        let t0 = crate::test_clock::test_epoch();
        let mut f = FailedLogins::new(3);
        for _ in 0..2 {
            f.record_failure(ip(1), t0);
        }
        assert!(!f.is_blocked(ip(1), t0));
        f.record_failure(ip(1), t0);
        assert!(f.is_blocked(ip(1), t0));
        assert!(!f.is_blocked(ip(2), t0), "other addresses are not affected");
        let later = t0 + FAILED_LOGIN_WINDOW;
        assert!(!f.is_blocked(ip(1), later), "a new window starts");
        f.record_failure(ip(1), later);
        assert!(!f.is_blocked(ip(1), later), "counting restarts");
        f.expire(later + FAILED_LOGIN_WINDOW);
        assert!(f.is_empty());
    }

    /// The map bound: one more address than the bound evicts the oldest window.
    #[test]
    fn remembers_at_most_the_bound() {
        let t0 = crate::test_clock::test_epoch();
        let mut f = FailedLogins::new(1);
        for n in 0..FAILED_LOGIN_SOURCES_MAX as u32 {
            f.record_failure(ip(n), t0 + Duration::from_micros(u64::from(n)));
        }
        assert_eq!(f.len(), FAILED_LOGIN_SOURCES_MAX);
        let t1 = t0 + Duration::from_secs(2);
        f.record_failure(ip(u32::MAX), t1);
        assert_eq!(f.len(), FAILED_LOGIN_SOURCES_MAX);
        assert!(f.is_blocked(ip(u32::MAX), t1));
        assert!(!f.is_blocked(ip(0), t1), "the oldest window was forgotten");
    }
}
