//! The allocator's settings that can only be given before the process starts (issue 11).
//!
//! mimalloc reads its options from the environment when the process is loaded, before `main`.
//! The one that matters here is how long it keeps freed memory before returning it to the
//! kernel (`MIMALLOC_PURGE_DELAY`, milliseconds): mimalloc 3's default of 1 000 ms lets a
//! second of frees pile up and returns them in one `madvise` inside whichever free comes
//! next; when a million sessions expire in the same second that single call took 2-3 ms of
//! the shard's turn (`crates/tern-core/tests/timers.rs`). At 10 ms (mimalloc 2's default)
//! the same work is spread over many short calls and no turn exceeded 1 ms.
//!
//! `runtime.allocator_purge_delay_ms` sets it: when the environment does not already say the
//! configured value, `tern` replaces itself (`execve` of `/proc/self/exe`, same process id,
//! same arguments) with the variable set, once, before any thread or listener exists.

use std::ffi::OsString;

/// The environment variable mimalloc reads its purge delay from.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Set in the replaced process so that it never replaces itself a second time.
pub const REEXEC_GUARD_ENV: &str = "TERN_ALLOCATOR_REEXEC";

/// What `tern` does about the allocator's purge delay at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeDelay {
    /// The environment already holds the configured value: nothing to do.
    InEffect,
    /// Replace the process with the variable set to this value.
    Reexec(String),
    /// A replacement already happened and the value still differs (the environment was
    /// changed in between): run with what mimalloc read rather than loop.
    Mismatch {
        /// What the environment holds.
        found: Option<OsString>,
        /// What the configuration asks for.
        wanted: String,
    },
}

/// Decides from the configured delay and the environment's two variables (`current`: the
/// purge delay variable, `guard`: whether this process is already a replacement).
pub fn plan(delay_ms: u32, current: Option<OsString>, guard: bool) -> PurgeDelay {
    let wanted = delay_ms.to_string();
    if current.as_deref() == Some(std::ffi::OsStr::new(&wanted)) {
        PurgeDelay::InEffect
    } else if guard {
        PurgeDelay::Mismatch { found: current, wanted }
    } else {
        PurgeDelay::Reexec(wanted)
    }
}

/// The plan for this process from its environment.
pub fn plan_from_env(delay_ms: u32) -> PurgeDelay {
    plan(delay_ms, std::env::var_os(PURGE_DELAY_ENV), std::env::var_os(REEXEC_GUARD_ENV).is_some())
}

/// Replaces this process with `/proc/self/exe`, the same arguments and the variable set to
/// `value`. Returns only when the replacement failed, with the reason.
pub fn reexec(value: &str) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args).env(PURGE_DELAY_ENV, value).env(REEXEC_GUARD_ENV, "1").exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_itself_once_when_the_environment_differs() {
        assert_eq!(plan(10, None, false), PurgeDelay::Reexec("10".into()));
        assert_eq!(plan(10, Some("1000".into()), false), PurgeDelay::Reexec("10".into()));
        assert_eq!(plan(10, Some("10".into()), false), PurgeDelay::InEffect);
        assert_eq!(plan(10, Some("10".into()), true), PurgeDelay::InEffect);
        // Already replaced once and still not the value: no second replacement (no loop).
        assert_eq!(
            plan(250, Some("10".into()), true),
            PurgeDelay::Mismatch { found: Some("10".into()), wanted: "250".into() }
        );
        assert_eq!(plan(0, None, true), PurgeDelay::Mismatch { found: None, wanted: "0".into() });
    }
}
