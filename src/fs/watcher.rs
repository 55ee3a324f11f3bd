//! Turns inotify events (through `notify`) into folder-relative paths to rescan.
//! Events are hints, never the truth: the scanner looks at the disk itself. A file
//! closed after writing or moved into place is flagged urgent (scanned at once);
//! everything else waits for the folder's debounce.
//!
//! One recursive watch covers a folder while the kernel grants a watch per directory.
//! When it runs out (`fs.inotify.max_user_watches`), the watcher switches to one watch
//! per directory, handed out breadth first until none is left, and keeps the roots of
//! the subtrees without a watch ([`FolderWatcher::unwatched`]) for the folder to poll;
//! every poll first tries to watch them again (the limit may have been raised).

use crate::fs::ignore::Ignore;
use crate::protocol::relpath::RelPath;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Config, ErrorKind, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;

/// How a folder notices changes (`[[folder]] watch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// inotify, with polling for what no watch covers.
    #[default]
    Inotify,
    /// No watcher: the whole folder is scanned every `poll_interval_s` (NFS, CIFS,
    /// FUSE: inotify sees only the changes made through this machine, if any).
    Poll,
}

impl std::str::FromStr for WatchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "inotify" => Ok(WatchMode::Inotify),
            "poll" => Ok(WatchMode::Poll),
            other => Err(format!(
                "unknown watch {other:?} (expected \"inotify\" or \"poll\")"
            )),
        }
    }
}

#[derive(Debug)]
pub enum FsEvent {
    Paths {
        paths: Vec<RelPath>,
        urgent: bool,
    },
    /// New directories (or, once watches ran out, directories moved into place). notify
    /// emits this event before it watches the directory, so files created in between
    /// produce no event: the directory must be scanned again once the watch is in place.
    NewDirs(Vec<RelPath>),
    /// The kernel queue overflowed: only a full rescan is trustworthy.
    Rescan,
    /// The recursive watch could not watch a new directory: the kernel has no watch
    /// left. The folder switches the watcher to per-directory watches and polling.
    OutOfWatches,
    /// The watcher failed otherwise; polling covers the folder.
    Error(String),
}

/// Keeps the watch alive; dropping it stops watching.
pub struct FolderWatcher {
    inner: RecommendedWatcher,
    root: PathBuf,
    /// Set once watches ran out (see the module doc): the handler then reports
    /// directories moved into place as new, since only the folder can watch them.
    limited: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<FsEvent>,
    /// With per-directory watches: the roots of the subtrees that have none.
    unwatched: BTreeSet<RelPath>,
    /// The folder root itself has no watch: everything is polled.
    root_unwatched: bool,
    /// Per-directory watches handed out since the switch.
    watched: u64,
    /// The kernel refused the last watch for want of watches.
    out: bool,
}

/// Watches `root` recursively; when the kernel has too few watches for the whole tree,
/// per directory, as far as they go (see the module doc). `ignore` names directories
/// not worth a watch.
pub fn watch(
    root: &Path,
    ignore: &Ignore,
) -> Result<(FolderWatcher, mpsc::UnboundedReceiver<FsEvent>), notify::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    let limited = Arc::new(AtomicBool::new(false));
    let mut w = new_inner(root, &tx, &limited)?;
    let recursive = w.watch(root, RecursiveMode::Recursive);
    let mut fw = FolderWatcher {
        inner: w,
        root: root.to_path_buf(),
        limited,
        tx,
        unwatched: BTreeSet::new(),
        root_unwatched: false,
        watched: 0,
        out: false,
    };
    match recursive {
        Ok(()) => {}
        Err(e) if matches!(e.kind, ErrorKind::MaxFilesWatch) => fw.limit(ignore)?,
        Err(e) => return Err(e),
    }
    Ok((fw, rx))
}

impl FolderWatcher {
    /// Whether watches ran out: [`unwatched`](Self::unwatched) is then to be polled.
    pub fn is_limited(&self) -> bool {
        self.limited.load(Ordering::Relaxed)
    }

    /// The roots of the subtrees without a watch; `None` when the root has none
    /// (poll everything).
    pub fn unwatched(&self) -> Option<&BTreeSet<RelPath>> {
        (!self.root_unwatched).then_some(&self.unwatched)
    }

    /// A sender on the watcher's event channel: held, it keeps the channel open should
    /// the watcher go.
    pub fn sender(&self) -> mpsc::UnboundedSender<FsEvent> {
        self.tx.clone()
    }

    /// Directories watched one by one since watches ran out.
    pub fn watched_dirs(&self) -> u64 {
        self.watched
    }

    /// Switches to per-directory watches: drops the recursive watch (whose coverage is
    /// unknown after a failure) and hands out watches breadth first. Events between the
    /// two are lost: the caller rescans.
    pub fn limit(&mut self, ignore: &Ignore) -> Result<(), notify::Error> {
        self.limited.store(true, Ordering::Relaxed);
        // Synchronous, unlike dropping the watcher: its watches are free before the
        // new ones are asked for.
        let _ = self.inner.unwatch(&self.root);
        self.inner = new_inner(&self.root, &self.tx, &self.limited)?;
        self.unwatched.clear();
        (self.root_unwatched, self.out, self.watched) = (false, false, 0);
        self.watch_tree(None, ignore);
        Ok(())
    }

    /// Watches new directories (or directories moved into place) and what is in them,
    /// as far as watches go; those inside an unwatched subtree are polled already.
    pub fn watch_new(&mut self, dirs: &[RelPath], ignore: &Ignore) {
        if !self.is_limited() || self.root_unwatched {
            return;
        }
        for d in dirs {
            if !ignore.is_ignored(d) && !self.is_unwatched(d) {
                self.watch_tree(Some(d), ignore);
            }
        }
    }

    /// Tries to watch the unwatched subtrees again, as far as watches go (a single
    /// refused call while none is free). Returns whether any got a watch.
    pub fn retry(&mut self, ignore: &Ignore) -> bool {
        if !self.is_limited() {
            return false;
        }
        let before = self.watched;
        self.out = false;
        if std::mem::take(&mut self.root_unwatched) {
            self.watch_tree(None, ignore);
        } else {
            for root in std::mem::take(&mut self.unwatched) {
                self.watch_tree(Some(&root), ignore);
            }
        }
        self.watched > before
    }

    /// Watches `start` (the root when `None`) and the directories below it, breadth
    /// first. Once the kernel refuses a watch for want of watches, that directory and
    /// every one still queued become roots of unwatched subtrees (breadth first, what is
    /// below them is unwatched too).
    fn watch_tree(&mut self, start: Option<&RelPath>, ignore: &Ignore) {
        let mut queue: VecDeque<Option<RelPath>> = VecDeque::from([start.cloned()]);
        while let Some(dir) = queue.pop_front() {
            let full = dir
                .as_ref()
                .map_or_else(|| self.root.clone(), |d| d.to_local(&self.root));
            if !self.out {
                match self.inner.watch(&full, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.watched += 1;
                        queue.extend(subdirs(&self.root, &full, ignore).map(Some));
                        continue;
                    }
                    Err(e) if matches!(e.kind, ErrorKind::MaxFilesWatch) => self.out = true,
                    // Gone meanwhile (its parent's events say so), or unreadable.
                    Err(_) => continue,
                }
            }
            match dir {
                Some(d) => {
                    self.unwatched.insert(d);
                }
                None => self.root_unwatched = true,
            }
        }
    }

    /// Whether `p` is in an unwatched subtree.
    fn is_unwatched(&self, p: &RelPath) -> bool {
        let s = p.as_str();
        s.match_indices('/')
            .map(|(i, _)| &s[..i])
            .chain(std::iter::once(s))
            .any(|a| RelPath::new(a).is_ok_and(|a| self.unwatched.contains(&a)))
    }
}

/// The directories in `dir` (not symlinks to them), except ignored ones.
fn subdirs<'a>(
    root: &'a Path,
    dir: &Path,
    ignore: &'a Ignore,
) -> impl Iterator<Item = RelPath> + 'a {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|de| de.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(move |de| RelPath::from_local(root, &de.path()).ok())
        .filter(move |rel| !ignore.is_ignored(rel))
}

/// A notify watcher whose events go to `tx`.
fn new_inner(
    root: &Path,
    tx: &mpsc::UnboundedSender<FsEvent>,
    limited: &Arc<AtomicBool>,
) -> Result<RecommendedWatcher, notify::Error> {
    let (tx, limited) = (tx.clone(), limited.clone());
    let root_buf: PathBuf = root.to_path_buf();
    let handler = move |res: notify::Result<notify::Event>| {
        let ev = match res {
            Ok(ev) if ev.need_rescan() => FsEvent::Rescan,
            Ok(ev) => {
                if matches!(
                    ev.kind,
                    EventKind::Access(AccessKind::Open(_)) | EventKind::Access(AccessKind::Read)
                ) {
                    return;
                }
                // The applier's own temp files come and go on every received file;
                // the scanner skips them, so they are dropped here before any stat.
                let own: Vec<&Path> = ev
                    .paths
                    .iter()
                    .map(PathBuf::as_path)
                    .filter(|p| !is_temp(p))
                    .collect();
                if own.is_empty() {
                    return;
                }
                let moved_in = matches!(
                    ev.kind,
                    EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                );
                let urgent = moved_in
                    || matches!(
                        ev.kind,
                        EventKind::Access(AccessKind::Close(AccessMode::Write))
                            | EventKind::Create(CreateKind::Folder)
                    )
                    || is_symlink_create(&ev.kind, &own);
                let rel = |ps: &[&Path]| -> Vec<RelPath> {
                    ps.iter()
                        .filter_map(|p| RelPath::from_local(&root_buf, p).ok())
                        .collect()
                };
                let paths = rel(&own);
                if paths.is_empty() {
                    return;
                }
                // Per-directory watches do not follow a directory moved into place:
                // the folder watches it as a new one.
                if moved_in && limited.load(Ordering::Relaxed) {
                    let dirs: Vec<&Path> = own.iter().copied().filter(|p| p.is_dir()).collect();
                    if !dirs.is_empty() {
                        let _ = tx.send(FsEvent::NewDirs(rel(&dirs)));
                    }
                }
                if ev.kind == EventKind::Create(CreateKind::Folder) {
                    FsEvent::NewDirs(paths)
                } else {
                    FsEvent::Paths { paths, urgent }
                }
            }
            Err(e) if matches!(e.kind, ErrorKind::MaxFilesWatch) => FsEvent::OutOfWatches,
            Err(e) => FsEvent::Error(e.to_string()),
        };
        let _ = tx.send(ev);
    };
    // Symlinks are synced as links, never followed: following them would watch trees
    // outside the folder, and makes the recursive setup stat every file rather than
    // read each directory's entry types (a fifth of an unchanged 1,000,000-file start).
    RecommendedWatcher::new(handler, Config::default().with_follow_symlinks(false))
}

/// A new symlink gets no close event: it is complete as soon as it exists.
fn is_symlink_create(kind: &EventKind, paths: &[&Path]) -> bool {
    matches!(kind, EventKind::Create(_))
        && paths
            .iter()
            .any(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(crate::fs::ignore::is_temp_name)
}
