//! A directory deleted elsewhere that still holds files this node ignores is kept: its
//! delete counts as done, the ignored files are never deleted, and a scan does not sync
//! the directory back while it holds nothing else.

use crate::fs::ignore::{Ignore, is_temp_name};
use crate::protocol::relpath::RelPath;
use rustix::fs::{Dir, Mode, OFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::parent::ParentDir;

/// Entries looked at before giving up: a larger directory is treated as not empty
/// (retried as any directory that waits for its entries to go).
const MAX_ENTRIES: usize = 4096;
/// Directory levels looked into below the one deleted.
const MAX_DEPTH: usize = 16;

/// Whether the directory at `rel` below `root` holds at least one ignored entry and
/// nothing else but directories that do the same (read without following symlinks).
pub fn holds_only_ignored(root: &Path, rel: &RelPath, ignore: &Ignore) -> bool {
    let Ok(parent) = ParentDir::open(root, rel, false) else {
        return false;
    };
    parent
        .open_dir(rel.file_name())
        .is_ok_and(|d| only_ignored(d.into(), rel, ignore))
}

/// [`holds_only_ignored`] for the directory `dir`, open, at `rel`.
pub(super) fn only_ignored(dir: OwnedFd, rel: &RelPath, ignore: &Ignore) -> bool {
    let mut budget = MAX_ENTRIES;
    let mut ignored = 0;
    walk(dir, rel, ignore, 0, &mut budget, &mut ignored) && ignored > 0
}

fn walk(
    fd: OwnedFd,
    rel: &RelPath,
    ignore: &Ignore,
    depth: usize,
    budget: &mut usize,
    ignored: &mut usize,
) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    let Ok(entries) = Dir::read_from(fd.as_fd()) else {
        return false;
    };
    for e in entries {
        let Ok(e) = e else { return false };
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        // A name that is not UTF-8 is not synced but not ignored either; an apply's
        // temp file means a file there is still being written.
        let Ok(name) = std::str::from_utf8(name) else {
            return false;
        };
        if is_temp_name(name) {
            return false;
        }
        let Ok(child) = RelPath::new(format!("{}/{name}", rel.as_str())) else {
            return false;
        };
        if ignore.is_ignored(&child) {
            *ignored += 1;
            continue;
        }
        // Anything synced but a directory holding only ignored entries is still to
        // be deleted first.
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(sub) = rustix::fs::openat(&fd, name, flags, Mode::empty()) else {
            return false;
        };
        if !walk(sub, &child, ignore, depth + 1, budget, ignored) {
            return false;
        }
    }
    true
}
