//! The data directory: created 0700 when missing, and locked (an exclusive `flock` on
//! `tern.lock`, held for the life of the process) so that a second Tern on the same directory
//! is refused instead of corrupting the logs. The kernel drops the lock when the process dies,
//! `kill -9` included, so a crash never leaves a stale lock behind.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "tern.lock";

/// A locked data directory. The lock is released when this is dropped (or the process ends).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error(
        "data directory {0} is in use by another running tern (lock file {LOCK_FILE} is held)"
    )]
    Locked(PathBuf),
    /// The directory or its lock file cannot be created or opened.
    #[error("data directory {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl DataDir {
    /// Creates `path` (mode 0700) if missing and takes its lock.
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        let io = |e| DataDirError::Io(path.to_path_buf(), e);
        DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path.join(LOCK_FILE))
            .map_err(io)?;
        use nix::fcntl::{flock, FlockArg};
        use std::os::fd::AsRawFd;
        match flock(lock.as_raw_fd(), FlockArg::LockExclusiveNonblock) {
            Ok(()) => {}
            Err(nix::errno::Errno::EWOULDBLOCK) => {
                return Err(DataDirError::Locked(path.to_path_buf()))
            }
            Err(e) => return Err(io(std::io::Error::from(e))),
        }
        Ok(Self { path: path.to_path_buf(), _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn second_open_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let first = DataDir::open(&dir).expect("first");
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let lock = std::fs::metadata(dir.join(LOCK_FILE)).expect("meta").permissions().mode();
        assert_eq!(lock & 0o777, 0o600);
        assert!(matches!(DataDir::open(&dir), Err(DataDirError::Locked(_))));
        drop(first);
        DataDir::open(&dir).expect("free again");
    }
}
