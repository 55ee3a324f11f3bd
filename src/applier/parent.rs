//! A target's parent directory, opened one component at a time from the folder root
//! with `O_NOFOLLOW` and held open while an apply runs. Every operation then goes through
//! `/proc/self/fd/N/NAME`, so a symlink swapped into the path after the check cannot
//! redirect a write outside the root.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::ApplyError;
use crate::relpath::RelPath;

/// An open parent directory of a relative path below a folder root.
#[derive(Debug)]
pub struct ParentDir {
    fd: OwnedFd,
    /// Path through the open descriptor, or the plain path where `/proc` is missing.
    via: PathBuf,
    /// The plain path, for messages.
    shown: PathBuf,
}

impl ParentDir {
    /// Opens the parent of `rel` below `root`, refusing any component that is a symlink
    /// or not a directory. Creates missing directories when `create` is set; fails on
    /// them otherwise.
    pub fn open(root: &Path, rel: &RelPath, create: bool) -> Result<ParentDir, ApplyError> {
        let dir_flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let io_at = |path: &Path, e: Errno| ApplyError::Io {
            path: path.to_path_buf(),
            source: io::Error::from(e),
        };
        let mut fd =
            rustix::fs::open(root, dir_flags, Mode::empty()).map_err(|e| io_at(root, e))?;
        let mut shown = root.to_path_buf();
        let parts: Vec<&str> = rel.as_str().split('/').collect();
        for part in &parts[..parts.len() - 1] {
            shown.push(part);
            let open = |fd: &OwnedFd| {
                rustix::fs::openat(fd, *part, dir_flags | OFlags::NOFOLLOW, Mode::empty())
            };
            fd = match open(&fd) {
                Ok(next) => next,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&fd, *part, Mode::from_raw_mode(0o777)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_at(&shown, e)),
                    }
                    open(&fd).map_err(|e| unsafe_or_io(&shown, e))?
                }
                Err(e) => return Err(unsafe_or_io(&shown, e)),
            };
        }
        let via = if proc_fd_usable() {
            PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ))
        } else {
            shown.clone()
        };
        Ok(ParentDir { fd, via, shown })
    }

    /// The path of `name` in this directory, for file system calls.
    pub fn entry(&self, name: &str) -> PathBuf {
        self.via.join(name)
    }

    /// The plain path of `name` in this directory, for messages.
    pub fn shown(&self, name: &str) -> PathBuf {
        self.shown.join(name)
    }

    /// Makes renames and creations in this directory durable.
    pub fn sync(&self) {
        let _ = rustix::fs::fsync(&self.fd);
    }

    /// Flushes everything written to this directory's file system: one call makes a
    /// whole batch of files durable, where an fsync per file costs a disk flush each.
    pub fn sync_fs(&self) -> std::io::Result<()> {
        rustix::fs::syncfs(&self.fd).map_err(std::io::Error::from)
    }
}

/// A symlink (`ELOOP` under `O_NOFOLLOW`) or a non-directory on the way is refused as
/// unsafe; anything else is an I/O error.
fn unsafe_or_io(path: &Path, e: Errno) -> ApplyError {
    match e {
        Errno::LOOP | Errno::NOTDIR => ApplyError::UnsafeParent(path.to_path_buf()),
        e => ApplyError::Io {
            path: path.to_path_buf(),
            source: io::Error::from(e),
        },
    }
}

/// `/proc/self/fd` is there on every Linux host and container; without it (a chroot
/// without /proc) the parent is still checked, only not pinned against later swaps.
fn proc_fd_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let ok = Path::new("/proc/self/fd").is_dir();
        if !ok {
            tracing::warn!(
                "/proc/self/fd is missing: applies check parent directories but cannot pin them"
            );
        }
        ok
    })
}
