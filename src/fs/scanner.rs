//! Finds what changed on disk: walks a folder (or only the paths the watcher named),
//! compares each path's metadata with what the index last saw, and chunks only files
//! whose metadata differ. Produces observations for the engine; never writes anything
//! except removing stale temp files of interrupted applies.

use crate::engine::{Content, SharedAttrs};
use crate::fs::attrs::Keep;
use crate::fs::chunks::chunk_file;
use crate::fs::ignore::{Ignore, is_temp_name};
use crate::fs::meta::{local_meta, meta_of_stat, mtime_ns};
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use rustix::fs::{AtFlags, FileType, OFlags};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One path whose state differs from what the index last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub path: RelPath,
    pub content: Content,
    /// Owner and extended attributes, as far as the folder keeps them.
    pub attrs: SharedAttrs,
    /// `None` when the path is absent.
    pub meta: Option<LocalMeta>,
}

#[derive(Debug, Default)]
pub struct ScanResult {
    pub changed: Vec<Observed>,
    /// Paths that changed while being read: scan again later.
    pub unstable: Vec<RelPath>,
    /// Paths that could not be read, with the reason (reported in status).
    pub errors: Vec<(PathBuf, String)>,
}

pub struct Scanner<'a> {
    pub root: &'a Path,
    pub ignore: &'a Ignore,
    pub known: &'a BTreeMap<RelPath, LocalMeta>,
    /// What the folder keeps besides contents and permission bits.
    pub keep: Keep,
}

/// How recently a file found by a directory walk may have been written and still be
/// taken as complete.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// A file older than this is taken as it is even while it keeps changing (a log that
/// is appended to all the time would otherwise wait for the hourly scan).
const SETTLE_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Written in the last [`SETTLE`] and created in the last [`SETTLE_MAX`] (where the
/// file system records creation times; elsewhere never deferred).
fn just_written(md: &Metadata) -> bool {
    let now = std::time::SystemTime::now();
    let age =
        |t: std::io::Result<std::time::SystemTime>| t.ok().and_then(|t| now.duration_since(t).ok());
    age(md.modified()).is_some_and(|a| a < SETTLE)
        && age(md.created()).is_some_and(|a| a < SETTLE_MAX)
}

impl Scanner<'_> {
    /// Walks the whole folder. `remove_temps` deletes leftovers of interrupted applies
    /// (only safe at start-up, before the applier runs).
    pub fn full(&self, remove_temps: bool) -> ScanResult {
        self.full_walk(remove_temps, false)
    }

    /// [`Scanner::full`] for a poll: a file written in the last [`SETTLE`] is reported
    /// unstable, as by [`Scanner::watched_paths`] (a poll finds files being written).
    pub fn polled(&self) -> ScanResult {
        self.full_walk(false, true)
    }

    fn full_walk(&self, remove_temps: bool, settle: bool) -> ScanResult {
        let mut res = ScanResult::default();
        let mut seen = HashSet::new();
        self.walk(self.root, &mut seen, &mut res, remove_temps, settle);
        self.vanished(None, &seen, &mut res);
        res
    }

    /// Looks only at `paths` (and below them, for directories).
    pub fn paths(&self, paths: &[RelPath]) -> ScanResult {
        self.look_at(paths, None)
    }

    /// [`Scanner::paths`] for paths the watcher named: a file written in the last
    /// [`SETTLE`] is reported unstable, to be looked at again after the debounce,
    /// unless `closed` names it (its writer closed it or moved it into place). A file
    /// found while another path's close event hurried the scan, or by walking a new
    /// directory before its own close event, is likely still being written: sending
    /// it now would push the chunks of a half-written file.
    pub fn watched_paths(&self, paths: &[RelPath], closed: &HashSet<RelPath>) -> ScanResult {
        self.look_at(paths, Some(closed))
    }

    fn look_at(&self, paths: &[RelPath], closed: Option<&HashSet<RelPath>>) -> ScanResult {
        let mut res = ScanResult::default();
        let mut done: Vec<&RelPath> = Vec::new();
        let mut sorted: Vec<&RelPath> = paths.iter().collect();
        sorted.sort();
        sorted.dedup();
        for p in sorted {
            if done.iter().any(|d| p.starts_with(d)) || self.ignore.is_ignored(p) {
                continue;
            }
            let full = p.to_local(self.root);
            match fs::symlink_metadata(&full) {
                Ok(md) => {
                    let mut seen = HashSet::new();
                    let settle = closed.is_some_and(|c| !c.contains(p));
                    self.observe(p, &full, &md, &mut res, settle);
                    seen.insert(p.clone());
                    if md.is_dir() {
                        self.walk(&full, &mut seen, &mut res, false, closed.is_some());
                        self.vanished(Some(p), &seen, &mut res);
                        done.push(p);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.vanished(Some(p), &HashSet::new(), &mut res);
                    done.push(p);
                }
                Err(e) => res.errors.push((full, e.to_string())),
            }
        }
        res
    }

    fn walk(
        &self,
        dir: &Path,
        seen: &mut HashSet<RelPath>,
        res: &mut ScanResult,
        remove_temps: bool,
        settle: bool,
    ) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) => {
                    res.errors.push((d.clone(), e.to_string()));
                    continue;
                }
            };
            // Unchanged entries are checked with fstatat relative to the directory: a
            // stat by full path resolves every component again, which was the largest
            // cost of rescanning a million unchanged files.
            let dir_fd = rustix::fs::open(
                &d,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok();
            for de in rd.flatten() {
                let full = de.path();
                let Ok(rel) = RelPath::from_local(self.root, &full) else {
                    res.errors
                        .push((full, "name is not valid UTF-8 or too long".into()));
                    continue;
                };
                if is_temp_name(rel.file_name()) {
                    if remove_temps {
                        let _ = fs::remove_file(&full);
                    }
                    continue;
                }
                if self.ignore.is_ignored(&rel) {
                    continue;
                }
                if let Some(fd) = &dir_fd {
                    if let Ok(st) = rustix::fs::statat(
                        fd,
                        de.file_name().as_os_str(),
                        AtFlags::SYMLINK_NOFOLLOW,
                    ) {
                        let meta = meta_of_stat(&st);
                        if self.known.get(&rel) == Some(&meta) {
                            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                                stack.push(full);
                            }
                            seen.insert(rel);
                            continue;
                        }
                    }
                }
                let md = match fs::symlink_metadata(&full) {
                    Ok(md) => md,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::NotFound {
                            res.errors.push((full, e.to_string()));
                        }
                        continue;
                    }
                };
                seen.insert(rel.clone());
                self.observe(&rel, &full, &md, res, settle);
                if md.is_dir() {
                    stack.push(full);
                }
            }
        }
    }

    /// Reports known paths at or below `under` that were not seen as deleted.
    fn vanished(&self, under: Option<&RelPath>, seen: &HashSet<RelPath>, res: &mut ScanResult) {
        let iter: Box<dyn Iterator<Item = &RelPath>> = match under {
            None => Box::new(self.known.keys()),
            Some(u) => Box::new(
                self.known
                    .range(u.clone()..)
                    .take_while(|(p, _)| p.as_str().starts_with(u.as_str()))
                    .filter(|(p, _)| p.starts_with(u))
                    .map(|(p, _)| p),
            ),
        };
        for p in iter {
            if !seen.contains(p) {
                res.changed.push(Observed {
                    path: p.clone(),
                    content: Content::Deleted,
                    attrs: None,
                    meta: None,
                });
            }
        }
    }

    /// `settle`: a file written in the last [`SETTLE`] is reported unstable (see
    /// [`Scanner::watched_paths`]).
    fn observe(
        &self,
        rel: &RelPath,
        full: &Path,
        md: &Metadata,
        res: &mut ScanResult,
        settle: bool,
    ) {
        let meta = local_meta(md);
        if self.known.get(rel) == Some(&meta) {
            return;
        }
        if settle && md.is_file() && just_written(md) {
            res.unstable.push(rel.clone());
            return;
        }
        let ft = md.file_type();
        let mode = md.permissions().mode() & 0o7777;
        let content = if ft.is_dir() {
            Content::Dir { mode }
        } else if ft.is_symlink() {
            match fs::read_link(full) {
                Ok(t) => match t.into_os_string().into_string() {
                    Ok(target) => Content::Symlink { target },
                    Err(_) => {
                        res.errors
                            .push((full.into(), "symlink target is not UTF-8".into()));
                        return;
                    }
                },
                Err(e) => {
                    res.errors.push((full.into(), e.to_string()));
                    return;
                }
            }
        } else if ft.is_file() {
            match self.hash_stable(full, md) {
                Ok(Some((chunks, size))) => Content::File {
                    size,
                    mode,
                    mtime_ns: meta.mtime_ns,
                    chunks,
                },
                Ok(None) => {
                    res.unstable.push(rel.clone());
                    return;
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::NotFound {
                        res.errors.push((full.into(), e.to_string()));
                    }
                    return;
                }
            }
        } else {
            // Sockets, FIFOs and devices are not synced.
            return;
        };
        res.changed.push(Observed {
            path: rel.clone(),
            content,
            attrs: self.keep.read(full, md),
            meta: Some(meta),
        });
    }

    /// Chunks a file; `None` when it changed while being read.
    fn hash_stable(
        &self,
        full: &Path,
        before: &Metadata,
    ) -> io::Result<Option<(crate::engine::Chunks, u64)>> {
        let f = fs::File::open(full)?;
        let (chunks, size) = chunk_file(&f)?;
        let after = f.metadata()?;
        let same = size == before.len()
            && after.len() == before.len()
            && mtime_ns(&after) == mtime_ns(before)
            && after.ino() == before.ino();
        Ok(same.then_some((chunks, size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::ignore::MARKER;
    use std::os::unix::fs::symlink;

    /// The walk's fast path compares `meta_of_stat` with what `local_meta` stored: if
    /// they ever disagreed, every rescan would rehash every file.
    #[test]
    fn fast_path_metadata_matches_the_stored_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("f"), b"data").unwrap();
        fs::create_dir(root.join("d")).unwrap();
        symlink("f", root.join("l")).unwrap();
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        for name in ["f", "d", "l"] {
            let st = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            let md = fs::symlink_metadata(root.join(name)).unwrap();
            assert_eq!(meta_of_stat(&st), local_meta(&md), "{name}");
        }
    }

    fn names(r: &ScanResult) -> Vec<String> {
        let mut v: Vec<_> = r
            .changed
            .iter()
            .map(|o| {
                format!(
                    "{}{}",
                    o.path,
                    if o.content.is_deleted() {
                        " (deleted)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn full_scan_fast_path_and_deletes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("a/empty")).unwrap();
        fs::write(root.join("a/f.txt"), b"hello").unwrap();
        fs::write(root.join("x.swp"), b"ignored").unwrap();
        fs::write(root.join(MARKER), b"").unwrap();
        fs::write(root.join(".f.txt.mqsync-tmp-1"), b"stale").unwrap();
        symlink("../nowhere", root.join("link")).unwrap();
        let ignore = Ignore::new(&["*.swp".into()]).unwrap();
        let mut known = BTreeMap::new();
        let r = Scanner {
            root,
            ignore: &ignore,
            known: &known,
            keep: Keep::default(),
        }
        .full(true);
        assert_eq!(names(&r), ["a", "a/empty", "a/f.txt", "link"]);
        assert!(
            !root.join(".f.txt.mqsync-tmp-1").exists(),
            "stale temp removed"
        );
        for o in &r.changed {
            known.insert(o.path.clone(), o.meta.unwrap());
        }
        let r = Scanner {
            root,
            ignore: &ignore,
            known: &known,
            keep: Keep::default(),
        }
        .full(false);
        assert!(r.changed.is_empty(), "nothing re-hashed: {:?}", names(&r));
        fs::remove_dir_all(root.join("a")).unwrap();
        let r = Scanner {
            root,
            ignore: &ignore,
            known: &known,
            keep: Keep::default(),
        }
        .paths(&[RelPath::new("a").unwrap()]);
        assert_eq!(
            names(&r),
            ["a (deleted)", "a/empty (deleted)", "a/f.txt (deleted)"]
        );
    }
}
