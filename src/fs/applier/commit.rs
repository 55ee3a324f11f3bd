//! Making staged files and removals durable: one flush per batch, then each file is
//! checked against what the index expects, a conflict loser moved aside, and the temp
//! file renamed over its target.

use super::fetch::{RELEASE_EVERY, release_cache};
use super::outcome::io_err;
use super::parent::ParentDir;
use super::{Applier, ApplyError, Outcome};
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use std::fs::File;
use std::io;

impl Applier {
    /// Makes the staged files durable and renames them into place. One file is
    /// fsynced on its own (the latency case); a batch is flushed with one `syncfs`
    /// before the renames and one after, instead of two fsyncs per file.
    pub fn commit(&mut self) -> Vec<Outcome> {
        let mut out = self.commit_removals();
        let staged = std::mem::take(&mut self.staged);
        let batch = staged.len() > 1;
        let flushed = match staged.first() {
            Some(f) if batch => f.parent.sync_fs(),
            _ => Ok(()),
        };
        out.reserve(staged.len());
        for f in &staged {
            let shown = f.parent.shown(f.entry.path.file_name());
            let res = match &flushed {
                Err(e) => Err(ApplyError::Io {
                    path: shown,
                    source: std::io::Error::new(e.kind(), e.to_string()),
                }),
                Ok(()) if batch => Ok(()),
                Ok(()) => f.file.sync_all().map_err(io_err(&shown)),
            }
            .inspect(|()| {
                if f.entry.content.size() >= RELEASE_EVERY {
                    release_cache(&f.file);
                }
            })
            .and_then(|()| {
                self.replace(
                    &f.parent,
                    &f.entry.path,
                    &f.tmp,
                    f.expected,
                    f.conflict_copy.as_ref(),
                    !batch,
                )
            });
            let outcome = match res {
                Ok(meta) => Outcome::Done {
                    path: f.entry.path.clone(),
                    version: f.entry.version.clone(),
                    meta,
                    conflict_copy: f.conflict_copy.clone(),
                },
                Err(error) => {
                    let _ = f.parent.remove_file(&f.tmp);
                    // The directory may be gone: a retry opens it again.
                    self.forget_parent(&f.entry.path);
                    Outcome::Failed {
                        entry: f.entry.clone(),
                        conflict_copy: f.conflict_copy.clone(),
                        error,
                    }
                }
            };
            out.push(outcome);
        }
        if batch && let Some(f) = staged.first() {
            // The renames: durable before the index records them as applied.
            let _ = f.parent.sync_fs();
        }
        out
    }

    /// Makes the removals since the last commit durable with one `syncfs` of the
    /// folder's file system and reports them, first: a file staged at the same path
    /// since is reported after, so the node ends up knowing the file.
    fn commit_removals(&mut self) -> Vec<Outcome> {
        if self.deleted.is_empty() {
            return Vec::new();
        }
        let deleted = std::mem::take(&mut self.deleted);
        if let Err(e) = File::open(&self.root)
            .and_then(|root| rustix::fs::syncfs(&root).map_err(io::Error::from))
        {
            // The files are gone either way; should a crash lose the removals, the
            // start-up scan finds the files again and compares them with the index.
            tracing::warn!("flushing removals in {}: {e}", self.root.display());
        }
        deleted
            .into_iter()
            .map(|(path, version)| Outcome::Done {
                path,
                version,
                meta: None,
                conflict_copy: None,
            })
            .collect()
    }

    /// Checks the target still is what the index expects, moves a conflict loser
    /// aside, renames `tmp` over the target and makes the rename durable.
    pub(super) fn replace(
        &self,
        parent: &ParentDir,
        path: &RelPath,
        tmp: &str,
        expected: Option<LocalMeta>,
        conflict_copy: Option<&RelPath>,
        sync_dirs: bool,
    ) -> Result<Option<LocalMeta>, ApplyError> {
        let name = path.file_name();
        let shown = parent.shown(name);
        let current = parent.meta(name).map_err(io_err(&shown))?;
        if current != expected {
            if let (Some(cur), Some(_)) = (current, expected) {
                tracing::debug!(?cur, ?expected, "target changed");
            }
            if current.is_some() {
                return Err(ApplyError::ChangedLocally(shown));
            }
        }
        if current.is_some_and(|m| m.mode & libc::S_IFMT == libc::S_IFDIR) {
            // A directory cannot be replaced by a file; the engine deletes children
            // first, so an empty one is removed here.
            parent
                .remove_dir(name)
                .map_err(|_| ApplyError::NotEmpty(shown.clone()))?;
        }
        if let (Some(cc), Some(_)) = (conflict_copy, current) {
            let cc_parent = ParentDir::open(&self.root, cc, true)?;
            let cc_shown = cc_parent.shown(cc.file_name());
            // Never over another file: that may be an earlier conflict copy (of a loser
            // the engine did not know yet), the only place its write survives. The
            // conflict is decided again once the scan has found that file.
            match parent.move_new(name, &cc_parent, cc.file_name()) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    return Err(ApplyError::ChangedLocally(cc_shown));
                }
                Err(e) if unsupported(&e) => parent
                    .rename(name, &cc_parent, cc.file_name())
                    .map_err(io_err(&cc_shown))?,
                res => res.map_err(io_err(&cc_shown))?,
            }
            if sync_dirs {
                cc_parent.sync();
            }
        }
        let kept =
            current.filter(|m| m.mode & libc::S_IFMT != libc::S_IFDIR && conflict_copy.is_none());
        let staged = parent.meta(tmp).map_err(io_err(&shown))?;
        install(parent, tmp, name, kept).map_err(|e| e.at(&shown))?;
        if sync_dirs {
            parent.sync();
        }
        let placed = parent.meta(name).map_err(io_err(&shown))?;
        Ok(attributed(staged, placed))
    }
}

/// The metadata to record for an applied file: what the disk shows after the rename,
/// unless a local write already changed the file by then (anything but the ctime,
/// which the rename moves, differs from the staged file): then the staged file's.
/// Recorded as the applied version's, a local write's metadata would hide that write
/// from every later scan, which skips files whose metadata the index holds, and a
/// conflict would then move it aside as if it held the applied version.
pub(super) fn attributed(
    staged: Option<LocalMeta>,
    placed: Option<LocalMeta>,
) -> Option<LocalMeta> {
    match (staged, placed) {
        (Some(s), Some(p)) if s.same_but_ctime(&p) => placed,
        _ => staged,
    }
}

/// A file system without the rename flags (some FUSE ones): the plain rename then.
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

pub(super) enum Installed {
    /// A local write landed on the target after it was checked.
    Changed,
    Io(std::io::Error),
}

impl Installed {
    /// The apply's error for the file shown as `shown`.
    pub(super) fn at(self, shown: &std::path::Path) -> ApplyError {
        match self {
            Installed::Changed => ApplyError::ChangedLocally(shown.to_path_buf()),
            Installed::Io(e) => io_err(shown)(e),
        }
    }
}

/// Puts `tmp` in place of `name` without losing a local write that lands between the
/// check of the target and the rename (found by the fault campaign: the write was
/// replaced, and the scan then took the winner's bytes for the local version). Where
/// the target was `checked` to hold a file, the two are swapped in one step and what
/// came out is compared with what was checked (less the ctime, which the rename
/// moves); a change is swapped back. Where the target was absent (or moved aside), the
/// rename refuses to replace a file that appeared since. File systems without these
/// rename flags (some FUSE ones) get the plain rename.
pub(super) fn install(
    parent: &ParentDir,
    tmp: &str,
    name: &str,
    checked: Option<LocalMeta>,
) -> Result<(), Installed> {
    let plain = || parent.rename(tmp, parent, name).map_err(Installed::Io);
    let Some(checked) = checked else {
        return match parent.rename_new(tmp, name) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(Installed::Changed),
            Err(e) if unsupported(&e) => plain(),
            Err(e) => Err(Installed::Io(e)),
        };
    };
    match parent.exchange(tmp, name) {
        Ok(()) => {}
        Err(e) if unsupported(&e) => return plain(),
        Err(e) => return Err(Installed::Io(e)),
    }
    let out = parent.meta(tmp).map_err(Installed::Io)?;
    if !out.is_some_and(|o| o.same_but_ctime(&checked)) {
        parent.exchange(tmp, name).map_err(Installed::Io)?;
        return Err(Installed::Changed);
    }
    parent.remove_file(tmp).map_err(Installed::Io)
}

/// Removes `name`, which was `checked` to hold a file, without losing a local write
/// that lands between the check and the removal: the file is first renamed to a temp
/// name and compared with what was checked; a change is renamed back (or, when the
/// name was taken again meanwhile by a still later write, dropped for that one).
pub(super) fn remove_checked(
    parent: &ParentDir,
    name: &str,
    checked: LocalMeta,
) -> Result<(), Installed> {
    let aside = super::temp_name(name);
    parent.rename(name, parent, &aside).map_err(Installed::Io)?;
    let out = parent.meta(&aside).map_err(Installed::Io)?;
    if out.is_some_and(|o| o.same_but_ctime(&checked)) {
        return parent.remove_file(&aside).map_err(Installed::Io);
    }
    match parent.rename_new(&aside, name) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let _ = parent.remove_file(&aside);
        }
        // No RENAME_NOREPLACE here (some FUSE file systems): put it back as it was.
        Err(_) => parent.rename(&aside, parent, name).map_err(Installed::Io)?,
    }
    Err(Installed::Changed)
}
