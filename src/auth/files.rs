//! The auth files on disk: read whole (bounded, UTF-8), then parsed by [`PasswordDb::parse`] and
//! [`Acl::parse`], which decide with no IO. Errors name the file as given and the line.

use std::io::Read;
use std::path::Path;

use super::{Acl, AuthFileError, PasswordDb, Security};

/// Largest password or ACL file read. Both are small text files; the bound keeps a wrong path
/// (a log file, a device) from filling memory. Worst-case memory: about three times this while a
/// file is parsed (the text, plus the parsed entries).
pub const AUTH_FILE_BYTES_MAX: u64 = 16 << 20;

/// Reads a whole auth file as UTF-8, at most [`AUTH_FILE_BYTES_MAX`] bytes. Errors name the file
/// as given; a non-UTF-8 byte is reported with its line number.
pub(crate) fn read_file(path: &Path) -> Result<(String, String), AuthFileError> {
    let name = path.display().to_string();
    let io_error = |e: std::io::Error| AuthFileError::at(&name, 0, format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    // One byte more than allowed, so an oversized file is detected instead of truncated.
    file.take(AUTH_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(io_error)?;
    if bytes.len() as u64 > AUTH_FILE_BYTES_MAX {
        let reason = format!("file is larger than {AUTH_FILE_BYTES_MAX} bytes");
        return Err(AuthFileError::at(&name, 0, reason));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok((name, text)),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count() + 1;
            Err(AuthFileError::at(&name, line, "not valid UTF-8"))
        }
    }
}

/// Reads and parses the password file at `path`. The whole file is refused if any line is
/// malformed.
pub fn load_passwords(path: &Path) -> Result<PasswordDb, AuthFileError> {
    let (name, text) = read_file(path)?;
    PasswordDb::parse(&name, &text)
}

/// Reads and parses the ACL file at `path`.
pub fn load_acl(path: &Path) -> Result<Acl, AuthFileError> {
    let (name, text) = read_file(path)?;
    Acl::parse(&name, &text)
}

/// Loads the configured password file and ACL file (either may be absent).
pub fn load_security(
    password_file: Option<&Path>,
    acl_file: Option<&Path>,
) -> Result<Security, AuthFileError> {
    let passwords = match password_file {
        Some(p) => Some(std::sync::Arc::new(load_passwords(p)?)),
        None => None,
    };
    let acl = match acl_file {
        Some(p) => {
            let acl = load_acl(p)?;
            for w in acl.warnings() {
                tracing::warn!(file = %p.display(), "{w}");
            }
            Some(acl)
        }
        None => None,
    };
    Ok(Security { passwords, acl })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_file_errors() {
        let e = read_file(Path::new("/nonexistent/tern/pw")).expect_err("missing");
        assert_eq!((e.file.as_str(), e.line), ("/nonexistent/tern/pw", 0));
        assert!(e.reason.starts_with("cannot read: "), "{e}");

        let dir = std::env::temp_dir().join(format!("tern-auth-mod-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad-utf8");
        std::fs::write(&path, b"a:b\nc:\xff\n").expect("write");
        let e = read_file(&path).expect_err("bad utf-8");
        assert_eq!((e.line, e.reason.as_str()), (2, "not valid UTF-8"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn missing_acl_file_is_an_error() {
        let e = load_acl(Path::new("/nonexistent/tern/acl")).expect_err("missing");
        assert_eq!((e.file.as_str(), e.line), ("/nonexistent/tern/acl", 0));
    }

    /// The fixture files load from disk and decide as their comments say.
    #[test]
    fn fixture_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth");
        let a = load_acl(&dir.join("acl.conf")).expect("fixture loads");
        assert!(a.can_read(None, "c", "public/news"));
        assert!(!a.can_publish(None, "c", "public/news"));
        let db = load_passwords(&dir.join("mosquitto.passwd")).expect("fixture loads");
        assert_eq!(db.len(), 5);
        assert!(db.check("bob", Some(b"hunter2")));
    }
}
