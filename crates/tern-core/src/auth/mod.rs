//! Authentication and authorisation decisions over Mosquitto-compatible password files and ACL
//! files, parsed from text handed in.
//!
//! This module owns the *formats* and the *decisions*; it does not read files (the runtime,
//! `tern::auth::files`, does, at start and on reload) and does not own when checks are made.
//! Every check is pure and works on data parsed at load. It never touches sockets, files,
//! threads or a clock. The broker decides when to call it:
//!
//! | event | call |
//! |---|---|
//! | CONNECT with a user name | [`PasswordDb::check`] (slow on purpose: a key derivation), queued by the shard as a [`HashJob`] for the runtime's workers |
//! | SUBSCRIBE, per filter | [`Acl::can_subscribe`] |
//! | PUBLISH received (and a Will, at CONNECT) | [`Acl::can_publish`] |
//! | each message delivered, retained ones included | [`Acl::can_read`] |
//!
//! Both files are in Mosquitto's formats so that existing files can be used unchanged; where
//! Tern is stricter than Mosquitto (refusing a file Mosquitto would accept, or denying where
//! Mosquitto would allow), the item's documentation says so and why. The rule throughout is
//! *fail closed*: a line that cannot be understood is an error naming the file and line, never
//! something skipped or an entry with an empty field; an ACL file with no entries denies
//! everything.
//!
//! # Layout
//!
//! - [`password`]: the password file ([`PasswordDb`]) and its hash formats ([`PasswordHash`]).
//! - [`acl`]: the ACL file ([`Acl`]) and its [`Decision`]s.
//! - [`check`]: one password check as the shard asks for it, and its verdict.
//! - [`ratelimit`]: failed logins per source address.

use std::fmt;

pub mod acl;
pub mod check;
pub mod password;
pub mod ratelimit;

pub use acl::{Access, Acl, Decision};
pub use check::{HashJob, Verdict};
pub use password::{PasswordDb, PasswordHash};
pub use ratelimit::FailedLogins;

/// A password or ACL file that was refused: which file, which line, and why.
///
/// Displays as `file:line: reason`, or `file: reason` when the problem is not on one line (the
/// file cannot be read, or is too large).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFileError {
    /// The file, as given to the `load` function (or the name given to `parse`).
    pub file: String,
    /// 1-based line number, or 0 when the error is about the whole file.
    pub line: usize,
    /// What is wrong, e.g. `empty user name`. Never contains a password or a hash.
    pub reason: String,
}

impl AuthFileError {
    /// An error about `file` at `line` (0: the whole file).
    pub fn at(file: &str, line: usize, reason: impl Into<String>) -> AuthFileError {
        AuthFileError { file: file.to_owned(), line, reason: reason.into() }
    }
}

impl fmt::Display for AuthFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.reason)
        } else {
            write!(f, "{}: {}", self.file, self.reason)
        }
    }
}

impl std::error::Error for AuthFileError {}

/// The lines of `text` with their 1-based numbers, `\r\n` and `\n` endings removed, and any
/// `\r` left at the end of a line too (`str::lines` keeps a bare one), so that a file written
/// back by `tern passwd` reads the same as the original (found by the `password_file` fuzz
/// target: a line `\r` was written back as `\r\n` and read again as an empty line; then
/// `\r\r`, which stripping one `\r` did not fix).
pub(crate) fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, line)| (i + 1, line.trim_end_matches('\r')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display() {
        let e = AuthFileError::at("pw", 3, "empty user name");
        assert_eq!(e.to_string(), "pw:3: empty user name");
        let e = AuthFileError::at("pw", 0, "cannot read: gone");
        assert_eq!(e.to_string(), "pw: cannot read: gone");
    }

    #[test]
    fn lines_are_numbered_from_one_without_crlf() {
        let lines: Vec<_> = numbered_lines("a\r\nb\n\nc").collect();
        assert_eq!(lines, [(1, "a"), (2, "b"), (3, ""), (4, "c")]);
        let lines: Vec<_> = numbered_lines("a\n\r").collect();
        assert_eq!(lines, [(1, "a"), (2, "")]);
        let lines: Vec<_> = numbered_lines("a\r\r\n\r\r").collect();
        assert_eq!(lines, [(1, "a"), (2, "")]);
    }
}

/// What a shard checks clients against: the password file, the ACL file, and the SCRAM-SHA-256
/// mechanism over the password file's `$scram-sha-256$` entries. Immutable; a reload builds a
/// new one and each shard swaps its `Arc` (no lock on the hot path).
#[derive(Default)]
pub struct Security {
    /// The password file, if configured.
    pub passwords: Option<std::sync::Arc<PasswordDb>>,
    /// The ACL file, if configured (absent: everything allowed).
    pub acl: Option<Acl>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("passwords", &self.passwords.as_ref().map(|p| p.len()))
            .field("acl", &self.acl.is_some())
            .finish()
    }
}

impl Security {
    /// The SCRAM-SHA-256 mechanism over the password file, if there is one.
    pub fn scram(&self) -> Option<std::sync::Arc<dyn crate::enhanced_auth::Mechanism>> {
        let db = std::sync::Arc::clone(self.passwords.as_ref()?);
        let lookup = std::sync::Arc::new(move |user: &str| db.scram(user));
        Some(std::sync::Arc::new(crate::enhanced_auth::ScramSha256::new(lookup)))
    }
}
