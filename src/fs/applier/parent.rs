//! A target's parent directory, opened one component at a time from the folder root
//! with `O_NOFOLLOW` and held open while applies into it run. Every operation on a name
//! in it then goes through the descriptor (`openat`, `renameat`, `unlinkat`, ...), so a
//! symlink swapped into the path after the check cannot redirect a write outside the root.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::ApplyError;
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;

/// An open parent directory of a relative path below a folder root.
#[derive(Debug)]
pub struct ParentDir {
    fd: OwnedFd,
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
        Ok(ParentDir { fd, shown })
    }

    /// The plain path of `name` in this directory, for messages.
    pub fn shown(&self, name: &str) -> PathBuf {
        self.shown.join(name)
    }

    /// Creates `name` as a new, empty file readable and writable by the owner only;
    /// fails if anything is there already, a symlink included.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Opens the directory `name` without following a symlink there.
    pub fn open_dir(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(
            &self.fd,
            name,
            flags,
            Mode::empty(),
        )?))
    }

    /// What is at `name` (not following a symlink), `None` if nothing is.
    pub fn meta(&self, name: &str) -> io::Result<Option<LocalMeta>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(crate::fs::meta::meta_of_stat(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` in this directory to `to` in `dir` (which may be this one).
    pub fn rename(&self, from: &str, dir: &ParentDir, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, from, &dir.fd, to)?)
    }

    /// Swaps `a` and `b` in this directory in one step (`RENAME_EXCHANGE`).
    pub fn exchange(&self, a: &str, b: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat_with(
            &self.fd,
            a,
            &self.fd,
            b,
            rustix::fs::RenameFlags::EXCHANGE,
        )?)
    }

    /// Renames `from` to `to` in this directory unless `to` exists (`RENAME_NOREPLACE`).
    pub fn rename_new(&self, from: &str, to: &str) -> io::Result<()> {
        self.move_new(from, self, to)
    }

    /// Renames `from` in this directory to `to` in `dir` unless `to` exists there.
    pub fn move_new(&self, from: &str, dir: &ParentDir, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat_with(
            &self.fd,
            from,
            &dir.fd,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        )?)
    }

    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)?)
    }

    pub fn create_dir(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(
            &self.fd,
            name,
            Mode::from_raw_mode(0o777),
        )?)
    }

    /// Creates the symlink `name` pointing at `target`.
    pub fn symlink(&self, target: &str, name: &str) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(target, &self.fd, name)?)
    }

    /// Gives the symlink `name` the owner of `attrs`, or that of `replaced`'s current
    /// link (see [`crate::fs::attrs::Keep::apply_link`]).
    pub fn chown_link(
        &self,
        name: &str,
        replaced: &str,
        keep: &crate::fs::attrs::Keep,
        attrs: &crate::engine::SharedAttrs,
        chown: bool,
    ) -> io::Result<()> {
        keep.apply_link(&self.fd, name, attrs, chown, self.owner(replaced))
    }

    /// The owner and group of `name`, if it exists.
    pub fn owner(&self, name: &str) -> Option<(u32, u32)> {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| (st.st_uid, st.st_gid))
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
