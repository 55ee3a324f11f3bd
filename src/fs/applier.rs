//! Makes the disk hold an entry: files are assembled in a temp file next to their
//! target from local chunks (renames and copies cost no transfer) and received chunks,
//! then staged and, at the next commit, flushed (one `syncfs` per batch) and renamed
//! into place, so a half-received file is never visible under its name. Every write
//! stays below the folder root: no path component on the way may be a symlink (parents
//! are opened with `O_NOFOLLOW` and held open, so one swapped in during an apply changes
//! nothing), and the target is re-checked against what the index expects before it is
//! replaced, so a local edit made meanwhile is never overwritten blindly.
//!
//! Here: directories, symlinks and removals, and the shared parent directories. Files
//! are assembled in `fetch`, made durable and renamed in `commit`; `outcome` holds what
//! an apply reports, `parent` the held-open parent directory, `kept` which directories
//! are kept for the ignored files in them.

use crate::engine::{Content, Entry, Hash, VersionVector};
use crate::fs::attrs::Keep;
use crate::fs::ignore::{Ignore, TEMP_INFIX};
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::ops::Bound;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

mod commit;
mod fetch;
mod kept;
mod outcome;
mod parent;
pub use fetch::ChunkRequests;
use fetch::{ChunkCache, Fetch};
pub use kept::holds_only_ignored;
use outcome::io_err;
pub use outcome::{ApplyError, Outcome};
use parent::ParentDir;

/// Bytes an unprivileged writer can still use on the file system holding `path`
/// (`None` if it cannot be asked).
pub fn free_space(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// How long a parent directory opened for one file is reused for the next files into
/// it while applies hold it open: a burst of small files into one directory then opens
/// it once, not once per file. A directory moved or removed locally is forgotten as
/// soon as the watcher reports it ([`Applier::forget_dir`]), and after this time in any
/// case.
const PARENT_REUSE: Duration = Duration::from_secs(1);

pub struct Applier {
    root: PathBuf,
    /// The folder's ignore rules: a directory to delete that holds only ignored
    /// files is kept, and its delete done.
    ignore: Ignore,
    fetches: HashMap<RelPath, Fetch>,
    /// Parent directories of files being applied, by their path below the root.
    parents: BTreeMap<String, (Weak<ParentDir>, Instant)>,
    /// Complete files waiting for the next [`Applier::commit`].
    staged: Vec<Fetch>,
    /// Files removed since the last commit, with the version removed: the commit makes
    /// the removals durable (one `syncfs`) and reports them. Paths only: a descriptor
    /// per removal ran out of descriptors on a large renamed tree.
    deleted: HashMap<RelPath, VersionVector>,
    needs: HashMap<Hash, Vec<RelPath>>,
    cache: ChunkCache,
    next_seq: u64,
    /// Per source, the latest-started fetch that received a chunk.
    progressed: HashMap<String, u64>,
    /// What the folder keeps besides contents and permission bits.
    keep: Keep,
    /// Whether owners are set (the daemon runs as root).
    chown: bool,
}

impl Applier {
    /// New rules (a changed `.mqsyncignore`).
    pub fn set_ignore(&mut self, ignore: Ignore) {
        self.ignore = ignore;
    }

    pub fn new(root: PathBuf, ignore: Ignore) -> Self {
        Applier {
            root,
            ignore,
            fetches: HashMap::new(),
            parents: BTreeMap::new(),
            staged: Vec::new(),
            deleted: HashMap::new(),
            needs: HashMap::new(),
            cache: ChunkCache::new(32 << 20),
            next_seq: 0,
            progressed: HashMap::new(),
            keep: Keep::default(),
            chown: false,
        }
    }

    /// Keeps what `keep` names; owners only when `chown` (the daemon runs as root).
    pub fn with_keep(mut self, keep: Keep, chown: bool) -> Self {
        self.keep = keep;
        self.chown = chown;
        self
    }

    pub fn in_flight(&self) -> usize {
        self.fetches.len() + self.staged.len()
    }

    /// Complete files waiting for [`Applier::commit`].
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Paths removed by deletes that the next commit reports: a scan must not take
    /// their absence for a local deletion.
    pub fn removing(&self) -> &HashMap<RelPath, VersionVector> {
        &self.deleted
    }

    pub fn is_fetching(&self, path: &RelPath) -> bool {
        self.fetches.contains_key(path) || self.staged.iter().any(|f| &f.entry.path == path)
    }

    /// The node a running fetch of `path` asks for its chunks.
    pub fn fetch_source(&self, path: &RelPath) -> Option<&str> {
        self.fetches.get(path).map(|f| f.source.as_str())
    }

    /// Starts making the disk hold `entry`. `expected` is the disk state the index
    /// knows for the target; `local` returns verified chunk bytes found on this node.
    pub fn start(
        &mut self,
        entry: Entry,
        conflict_copy: Option<RelPath>,
        expected: Option<LocalMeta>,
        source: &str,
        local: &dyn Fn(&Hash) -> Option<Vec<u8>>,
    ) -> Outcome {
        self.cancel(&entry.path);
        let path = entry.path.clone();
        let version = entry.version.clone();
        let res = match &entry.content {
            Content::File { .. } => {
                return self.start_file(entry, conflict_copy, expected, source, local);
            }
            Content::Dir { mode } => self.apply_dir(&path, *mode, &entry.attrs, expected),
            Content::Symlink { target } => self.apply_symlink(
                &path,
                target,
                &entry.attrs,
                expected,
                conflict_copy.as_ref(),
            ),
            Content::Deleted => match self.apply_delete(&path, expected) {
                // Made durable by the next commit's one flush, with the files: a
                // directory fsync per deleted file made a renamed tree's deletions
                // take longer than its new files.
                Ok(true) => {
                    self.deleted.insert(path, version);
                    return Outcome::Staged;
                }
                res => res.map(|_| None),
            },
        };
        match res {
            Ok(meta) => Outcome::Done {
                path,
                version,
                meta,
                conflict_copy,
            },
            Err(error) => Outcome::Failed {
                entry,
                conflict_copy,
                error,
            },
        }
    }

    pub fn cancel(&mut self, path: &RelPath) {
        // A removal already happened: it is still reported at the commit (before any
        // file of the same path), so the node knows the path is gone.
        if let Some(i) = self.staged.iter().position(|f| &f.entry.path == path) {
            let f = self.staged.swap_remove(i);
            let _ = f.parent.remove_file(&f.tmp);
        }
        if let Some(f) = self.fetches.remove(path) {
            let _ = f.parent.remove_file(&f.tmp);
            for h in f.missing.keys() {
                if let Some(v) = self.needs.get_mut(h) {
                    v.retain(|p| p != path);
                    if v.is_empty() {
                        self.needs.remove(h);
                    }
                }
            }
        }
    }

    /// Forgets the open descriptors of `dir` and of directories below it, after the
    /// watcher saw it change: it may have been moved or removed.
    pub fn forget_dir(&mut self, dir: &RelPath) {
        let d = dir.as_str();
        if self.parents.is_empty() {
            return;
        }
        let below: Vec<String> = self
            .parents
            .range::<str, _>((Bound::Included(d), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(d))
            .filter(|k| k.len() == d.len() || k.as_bytes()[d.len()] == b'/')
            .cloned()
            .collect();
        for k in below {
            self.parents.remove(&k);
        }
    }

    fn forget_parent(&mut self, path: &RelPath) {
        self.parents.remove(parent_key(path));
    }

    /// The open parent directory of `path`, shared with the applies into it that are
    /// still running if it was opened within [`PARENT_REUSE`].
    fn parent_of(&mut self, path: &RelPath) -> Result<Arc<ParentDir>, ApplyError> {
        let dir = parent_key(path);
        let now = Instant::now();
        if let Some((held, at)) = self.parents.get(dir)
            && now.duration_since(*at) < PARENT_REUSE
            && let Some(p) = held.upgrade()
        {
            return Ok(p);
        }
        let p = Arc::new(ParentDir::open(&self.root, path, true)?);
        if self.parents.len() >= 1024 {
            self.parents.retain(|_, (held, at)| {
                held.strong_count() > 0 && now.duration_since(*at) < PARENT_REUSE
            });
        }
        self.parents
            .insert(dir.to_string(), (Arc::downgrade(&p), now));
        Ok(p)
    }

    fn apply_dir(
        &self,
        path: &RelPath,
        mode: u32,
        attrs: &crate::engine::SharedAttrs,
        expected: Option<LocalMeta>,
    ) -> Result<Option<LocalMeta>, ApplyError> {
        let parent = ParentDir::open(&self.root, path, true)?;
        let name = path.file_name();
        let shown = parent.shown(name);
        match parent.meta(name).map_err(io_err(&shown))? {
            Some(m) if m.mode & libc::S_IFMT == libc::S_IFDIR => {}
            Some(m) => {
                if Some(m) != expected {
                    return Err(ApplyError::ChangedLocally(shown));
                }
                commit::remove_checked(&parent, name, m).map_err(|e| e.at(&shown))?;
                parent.create_dir(name).map_err(io_err(&shown))?;
            }
            None => parent.create_dir(name).map_err(io_err(&shown))?,
        }
        // Through a descriptor opened without following links: chmod on the path would
        // follow a symlink swapped in since the check.
        parent
            .open_dir(name)
            .and_then(|d| {
                // An existing directory is kept, with its owner.
                self.keep.apply_fd(&d, attrs, self.chown, None)?;
                d.set_permissions(fs::Permissions::from_mode(mode))
            })
            .map_err(io_err(&shown))?;
        parent.sync();
        parent.meta(name).map_err(io_err(&shown))
    }

    fn apply_symlink(
        &self,
        path: &RelPath,
        link_target: &str,
        attrs: &crate::engine::SharedAttrs,
        expected: Option<LocalMeta>,
        conflict_copy: Option<&RelPath>,
    ) -> Result<Option<LocalMeta>, ApplyError> {
        let parent = ParentDir::open(&self.root, path, true)?;
        let tmp = temp_name(path.file_name());
        let shown = parent.shown(path.file_name());
        parent.symlink(link_target, &tmp).map_err(io_err(&shown))?;
        if let Err(e) = parent.chown_link(&tmp, path.file_name(), &self.keep, attrs, self.chown) {
            let _ = parent.remove_file(&tmp);
            return Err(io_err(&shown)(e));
        }
        self.replace(&parent, path, &tmp, expected, conflict_copy, true)
            .inspect_err(|_| {
                let _ = parent.remove_file(&tmp);
            })
    }

    /// Removes `path`. Returns whether a file was removed, whose removal is durable
    /// only after a flush ([`Applier::commit`]); a removed directory is flushed here.
    fn apply_delete(
        &self,
        path: &RelPath,
        expected: Option<LocalMeta>,
    ) -> Result<bool, ApplyError> {
        let parent = match ParentDir::open(&self.root, path, false) {
            Ok(p) => p,
            // A parent is gone or unsafe: the path cannot be there (below the root).
            Err(ApplyError::UnsafeParent(_)) => return Ok(false),
            Err(ApplyError::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
            {
                return Ok(false);
            }
            // Anything else (out of descriptors, permission) may pass: retried.
            Err(e) => return Err(e),
        };
        let name = path.file_name();
        let shown = parent.shown(name);
        match parent.meta(name).map_err(io_err(&shown))? {
            None => Ok(false),
            Some(m) if m.mode & libc::S_IFMT == libc::S_IFDIR => match parent.remove_dir(name) {
                Ok(()) => {
                    parent.sync();
                    Ok(false)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                // Not empty for files this node ignores only: they are not synced, so
                // never deleted; the directory stays for them, and its delete is done.
                Err(_)
                    if parent
                        .open_dir(name)
                        .is_ok_and(|d| kept::only_ignored(d.into(), path, &self.ignore)) =>
                {
                    tracing::info!(dir = %shown.display(), "kept a directory deleted elsewhere: it holds only ignored files, which are never deleted");
                    Ok(false)
                }
                Err(_) => Err(ApplyError::NotEmpty(shown)),
            },
            Some(m) => {
                if Some(m) != expected {
                    return Err(ApplyError::ChangedLocally(shown));
                }
                commit::remove_checked(&parent, name, m).map_err(|e| e.at(&shown))?;
                Ok(true)
            }
        }
    }
}

/// Creates missing parent directories of `rel` below `root`, refusing to pass through
/// a symlink or a non-directory (which could lead outside the root).
pub fn ensure_parents(root: &Path, rel: &RelPath) -> Result<(), ApplyError> {
    ParentDir::open(root, rel, true).map(|_| ())
}

/// The path of `path`'s parent below the root ("" for the root itself).
fn parent_key(path: &RelPath) -> &str {
    path.as_str().rsplit_once('/').map_or("", |(d, _)| d)
}

/// A temp file's name next to the file `name`: hidden, marked for the scanner to skip,
/// and unique enough that an interrupted apply's leftover never collides.
fn temp_name(name: &str) -> String {
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let tag: u32 = rand::random();
    format!(".{}{TEMP_INFIX}{tag:08x}", &name[..cut])
}

#[cfg(test)]
mod tests;
