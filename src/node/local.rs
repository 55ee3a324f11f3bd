//! The local side of a folder: what the watcher named (debounced into a dirty set),
//! scans of those paths or of the whole tree, what the disk held at each path, case
//! folding, and the mass-delete guard between local deletions and the engine.

use super::folder::Folder;
use super::now_ms;
use super::shared_ignore::SharedIgnore;
use crate::engine::{Content, DeleteGuard, Engine, Hash};
use crate::fs::applier::{Applier, holds_only_ignored};
use crate::fs::casefold::CaseFolds;
use crate::fs::ignore::{Ignore, MARKER};
use crate::fs::scanner::{Observed, ScanResult, Scanner};
use crate::fs::watcher::FsEvent;
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// When a new directory is scanned again, after the watcher surely covers it.
const RECHECK_AFTER: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(2)];

pub(super) struct Local {
    folder: String,
    root: PathBuf,
    debounce: Duration,
    pub ignore: Ignore,
    /// What the folder keeps besides contents and permission bits.
    pub keep: crate::fs::attrs::Keep,
    /// Where `ignore` comes from: the config and `.mqsyncignore`.
    pub shared: SharedIgnore,
    /// Disk metadata last reported to the engine, per path.
    pub known: BTreeMap<RelPath, LocalMeta>,
    /// The names in `known` by folded spelling, on a case-insensitive file system only.
    pub case_folds: Option<CaseFolds>,
    /// Paths the watcher named, waiting for the debounce.
    dirty: BTreeSet<RelPath>,
    /// Those of them whose writer closed them or moved them into place: complete.
    closed: HashSet<RelPath>,
    dirty_due: Option<Instant>,
    /// New directories to scan again once the watcher surely covers them.
    recheck: Vec<(RelPath, Instant)>,
    /// The whole tree is to be scanned at the next turn.
    pub rescan_due: bool,
    /// The periodic full scan: how often, and when next.
    rescan_every: Duration,
    next_rescan: Instant,
    pub guard: DeleteGuard,
    /// Set during a resync: the operator confirmed that mass deletions are wanted.
    pub resyncing: bool,
}

impl Local {
    pub fn new(
        folder: String,
        root: PathBuf,
        (debounce, rescan_every): (Duration, Duration),
        (ignore, shared): (Ignore, SharedIgnore),
        known: BTreeMap<RelPath, LocalMeta>,
        max_delete_percent: u64,
    ) -> Self {
        Local {
            folder,
            root,
            debounce,
            ignore,
            keep: crate::fs::attrs::Keep::default(),
            shared,
            known,
            case_folds: None,
            dirty: BTreeSet::new(),
            closed: HashSet::new(),
            dirty_due: None,
            recheck: Vec::new(),
            rescan_due: false,
            rescan_every,
            next_rescan: Instant::now() + rescan_every,
            guard: DeleteGuard::new(max_delete_percent),
            resyncing: false,
        }
    }

    /// Keeps what `keep` names besides contents and permission bits.
    pub fn with_keep(mut self, keep: crate::fs::attrs::Keep) -> Self {
        self.keep = keep;
        self
    }

    /// Takes a watcher event; returns an error to report, if any.
    pub fn on_fs(&mut self, ev: FsEvent, applier: &mut Applier) -> Option<String> {
        let now = Instant::now();
        match ev {
            FsEvent::Paths { paths, urgent } => {
                for p in paths {
                    // A directory moved or removed here: files arriving into it open
                    // its path again instead of a descriptor held from before.
                    applier.forget_dir(&p);
                    if !self.ignore.is_ignored(&p) {
                        if urgent {
                            self.closed.insert(p.clone());
                        }
                        self.dirty.insert(p);
                    }
                }
                if !self.dirty.is_empty() {
                    let due = if urgent { now } else { now + self.debounce };
                    self.dirty_due = Some(self.dirty_due.map_or(due, |d| d.min(due)));
                }
            }
            FsEvent::NewDirs(dirs) => {
                for d in dirs {
                    if self.ignore.is_ignored(&d) {
                        continue;
                    }
                    for after in RECHECK_AFTER {
                        self.recheck.push((d.clone(), now + after));
                    }
                    self.dirty.insert(d);
                }
                self.dirty_due = Some(now);
            }
            FsEvent::Rescan => {
                // Said once per overflow, so an operator (and the fault campaign) can
                // tell a lost-events rescan from the hourly one.
                info!(
                    folder = %self.folder,
                    "watcher lost events (inotify queue overflow): rescanning the folder"
                );
                self.rescan_due = true;
            }
            // The watcher's own business (see `watching`).
            FsEvent::OutOfWatches => {}
            FsEvent::Error(e) => {
                warn!(folder = %self.folder, "watcher: {e}; falling back to periodic scans");
                return Some(format!("watcher: {e}"));
            }
        }
        None
    }

    /// Marks `paths` to be scanned again after `delay`.
    pub fn mark_dirty(&mut self, paths: impl IntoIterator<Item = RelPath>, delay: Duration) {
        let due = Instant::now() + delay;
        let before = self.dirty.len();
        self.dirty.extend(paths);
        if self.dirty.len() != before {
            self.dirty_due = Some(self.dirty_due.map_or(due, |d| d.min(due)));
        }
    }

    /// Starts the periodic full scan's timer (after the first scan, however long the
    /// start took).
    pub fn rescan_after(&mut self, now: Instant) {
        self.next_rescan = now + self.rescan_every;
    }

    /// Moves the new directories whose recheck is due into the dirty set, and asks
    /// for the periodic full scan when it is due.
    pub fn on_tick(&mut self, now: Instant) {
        if now >= self.next_rescan {
            self.next_rescan = now + self.rescan_every;
            self.rescan_due = true;
        }
        if self.recheck.iter().any(|(_, at)| now >= *at) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.recheck)
                .into_iter()
                .partition(|(_, at)| now >= *at);
            self.recheck = later;
            self.dirty.extend(due.into_iter().map(|(p, _)| p));
            self.dirty_due = Some(now);
        }
    }

    /// The dirty paths, once their debounce is over (not those being fetched), with
    /// those among them that are complete.
    pub fn take_dirty(
        &mut self,
        now: Instant,
        applier: &Applier,
    ) -> Option<(Vec<RelPath>, HashSet<RelPath>)> {
        if self.dirty_due.is_none_or(|d| now < d) {
            return None;
        }
        self.dirty_due = None;
        let closed = std::mem::take(&mut self.closed);
        let paths = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter(|p| !applier.is_fetching(p))
            .collect();
        Some((paths, closed))
    }

    /// Scans `paths` (everything when `None`). `closed`: for paths from the watcher,
    /// those whose writer closed them or moved them into place; for a poll, empty (a
    /// file written a moment ago waits for the debounce).
    pub fn scan(
        &self,
        paths: Option<&[RelPath]>,
        remove_temps: bool,
        closed: Option<&HashSet<RelPath>>,
    ) -> ScanResult {
        // A name spelled differently from the one on disk would be read as that file:
        // only the spelling on disk is scanned.
        let folded: Option<Vec<RelPath>> = match (&self.case_folds, paths) {
            (Some(folds), Some(p)) => Some(
                p.iter()
                    .filter(|p| folds.collision(p).is_none())
                    .cloned()
                    .collect(),
            ),
            _ => None,
        };
        let paths = folded.as_deref().or(paths);
        tokio::task::block_in_place(|| {
            let scanner = Scanner {
                root: &self.root,
                ignore: &self.ignore,
                known: &self.known,
                keep: self.keep,
            };
            match (paths, closed) {
                (Some(p), Some(c)) => scanner.watched_paths(p, c),
                (Some(p), None) => scanner.paths(p),
                (None, Some(_)) => scanner.polled(),
                (None, None) => scanner.full(remove_temps),
            }
        })
    }

    /// Records what a scan or an apply left on disk at `path`.
    pub fn know(&mut self, path: &RelPath, m: Option<LocalMeta>) {
        match m {
            Some(m) => {
                self.known.insert(path.clone(), m);
                if let Some(f) = &mut self.case_folds {
                    f.insert(path);
                }
            }
            None => {
                self.known.remove(path);
                if let Some(f) = &mut self.case_folds {
                    f.remove(path);
                }
            }
        }
    }

    /// Finds out whether the folder's file system folds case (probing in its root);
    /// if so, applies are checked for case collisions from now on.
    pub fn probe_case(&mut self) {
        match crate::fs::casefold::probe(&self.root) {
            Ok(true) => {
                info!(folder = %self.folder, "case-insensitive file system: names that differ only in case will be refused and reported");
                self.case_folds = Some(CaseFolds::new(self.known.keys()));
            }
            Ok(false) => self.case_folds = None,
            Err(e) => {
                warn!(folder = %self.folder, "cannot probe case sensitivity in {}: {e}", self.root.display())
            }
        }
    }

    /// A name claimed for an apply that did not happen goes back to what is on disk.
    pub fn release_name(&mut self, path: &RelPath) {
        if let Some(f) = &mut self.case_folds
            && !self.known.contains_key(path)
        {
            f.remove(path);
        }
    }

    pub fn is_absent(&self, path: &RelPath) -> bool {
        is_absent(&self.root, path)
    }

    pub fn shrink_buffers(&mut self) {
        self.recheck.shrink_to_fit();
    }

    /// Rebuilds `known` with full B-tree nodes (see `Folder::compact`).
    pub fn compact(&mut self) {
        self.known = std::mem::take(&mut self.known).into_iter().collect();
    }
}

impl Folder {
    /// Checks the folder root and its marker. A folder that has synced before but whose
    /// root or marker is gone is paused: it may be an unmounted volume, and mirroring it
    /// would delete everything everywhere.
    pub(super) fn check_root(&mut self) -> bool {
        let root = &self.cfg.path;
        let marker = root.join(MARKER);
        let has_history = self.engine.entries().next().is_some();
        let problem = if !root.is_dir() {
            if has_history {
                Some(format!(
                    "folder root {} is missing (unmounted volume?); paused",
                    root.display()
                ))
            } else {
                std::fs::create_dir_all(root)
                    .err()
                    .map(|e| format!("cannot create folder root {}: {e}", root.display()))
            }
        } else {
            None
        };
        let problem = problem.or_else(|| {
            if marker.exists() {
                None
            } else if has_history {
                Some(format!(
                    "marker {} is missing (unmounted or replaced volume?); paused. Recreate it to resume.",
                    marker.display()
                ))
            } else {
                std::fs::write(&marker, b"")
                    .err()
                    .map(|e| format!("cannot create marker {}: {e}", marker.display()))
            }
        });
        if let Some(p) = &problem
            && self.health.paused.as_ref() != Some(p)
        {
            error!(folder = %self.cfg.id, "{p}");
        }
        self.health.paused = problem;
        self.health.paused.is_none()
    }

    /// Scans the whole tree.
    pub(super) fn full_scan(&mut self, remove_temps: bool) {
        if self.check_root() {
            let res = self.local.scan(None, remove_temps, None);
            self.take_scan(res);
        }
    }

    /// Scans `paths`; `closed` as for [`Local::scan`].
    pub(super) fn scan_paths(&mut self, paths: &[RelPath], closed: Option<&HashSet<RelPath>>) {
        // Never mirror a vanished volume as a mass delete.
        if paths.is_empty() || !self.check_root() {
            return;
        }
        let res = self.local.scan(Some(paths), false, closed);
        self.take_scan(res);
    }

    /// A poll: scans `paths` (everything when `None`), taking what was written a
    /// moment ago only once it has settled.
    pub(super) fn poll_scan(&mut self, paths: Option<&[RelPath]>) {
        if paths.is_some_and(<[RelPath]>::is_empty) || !self.check_root() {
            return;
        }
        let res = self.local.scan(paths, false, Some(&HashSet::new()));
        self.take_scan(res);
    }

    /// Feeds a scan's findings to the engine (deletions through the guard), and
    /// publishes the resulting changes with the chunks new to this node.
    fn take_scan(&mut self, res: ScanResult) {
        for (path, e) in &res.errors {
            warn!(folder = %self.cfg.id, path = %path.display(), "scan: {e}");
            self.health.last_error = Some(format!("{}: {e}", path.display()));
        }
        let debounce = self.cfg.debounce.max(Duration::from_millis(200));
        self.local.mark_dirty(res.unstable, debounce);
        let mut changed = res.changed;
        // A file this node's applier removed is reported by the applier's next
        // commit; seen missing before that, it is not a local deletion.
        let removing = self.applies.applier.removing();
        if !removing.is_empty() {
            changed.retain(|o| !(o.content.is_deleted() && removing.contains_key(&o.path)));
        }
        // A directory deleted elsewhere but kept for the ignored files in it is not
        // synced back while it holds nothing else.
        let (engine, local) = (&self.engine, &self.local);
        changed.retain(|o| {
            !(matches!(o.content, Content::Dir { .. })
                && engine
                    .entry(&o.path)
                    .is_some_and(|e| e.content.is_deleted())
                && holds_only_ignored(&local.root, &o.path, &local.ignore))
        });
        // Parents before children, so a created tree arrives in order.
        changed.sort_by(|a, b| a.path.cmp(&b.path));
        self.guard_deletions(&mut changed);
        let mut fresh: HashSet<Hash> = HashSet::new();
        for Observed {
            path,
            content,
            attrs,
            meta,
        } in changed
        {
            if let Content::File { chunks, .. } = &content {
                for c in chunks {
                    if self.out.is_fresh(&self.locations, &c.hash) {
                        fresh.insert(c.hash);
                    }
                }
            }
            let file = (meta.is_some() && matches!(content, Content::File { .. }))
                .then(|| content.clone());
            let before = self.local.known.get(&path).copied();
            self.local.know(&path, meta);
            let known = self.engine.entry(&path).and_then(|e| e.attrs.clone());
            let attrs = self.local.keep.settle(attrs, &known);
            // Metadata that moved with the same state (a directory's ctime when a child
            // comes or goes, a hard link) is recorded, or each start would look again.
            let same = self
                .engine
                .entry(&path)
                .filter(|e| e.content == content && e.attrs == attrs)
                .cloned();
            if let (Some(entry), Some(m)) = (same, meta)
                && before.is_none_or(|b| b.ctime_ns != m.ctime_ns || b != m)
            {
                self.records.push(crate::store::index::Record {
                    entry,
                    local: Some(m),
                });
            }
            self.engine.handle_local_with(path.clone(), content, attrs);
            // Locations resolve through the confirmed entry: a change the engine did
            // not take (a receive-only folder's) must not displace a confirmed holder
            // of the same chunk.
            if let Some(file) = file
                && self.engine.entry(&path).is_some_and(|e| e.content == file)
            {
                self.locations.insert(&path, &file);
            }
        }
        self.process_with(fresh);
    }

    /// Deletions of present entries wait in the guard, so that a large delete (a
    /// wiped or swapped volume, an `rm -rf` slower than the debounce) is judged as a
    /// whole by `release_deletes`. A resync lets them through at once.
    fn guard_deletions(&mut self, changed: &mut Vec<Observed>) {
        if self.local.resyncing || self.local.guard.is_off() {
            let waiting = self.local.guard.take_all();
            changed.extend(
                waiting
                    .into_iter()
                    .filter(|p| self.local.is_absent(p))
                    .map(|path| Observed {
                        path,
                        content: Content::Deleted,
                        attrs: None,
                        meta: None,
                    }),
            );
            return;
        }
        let now = Instant::now();
        let (engine, guard) = (&self.engine, &mut self.local.guard);
        changed.retain(|o| !(o.content.is_deleted() && guard.hold(engine, &o.path, now)));
    }

    /// Hands the waiting local deletions to the engine once the guard lets them go;
    /// a held mass deletion is reported and waits for an operator's resync, or ends
    /// when its files come back (the guard rechecks them).
    pub(super) fn release_deletes(&mut self, now: Instant) {
        if self.local.guard.poll_timeout().is_none_or(|t| now < t) {
            return;
        }
        let (engine, locations, root) = (&self.engine, &self.locations, &self.local.root);
        let r = self.local.guard.release(
            now,
            now_ms(),
            engine,
            |p| is_absent(root, p),
            |p, leaving| moved_elsewhere(engine, locations, p, leaving),
        );
        // Paths that came back are ordinary changes again; the scan sees them.
        self.local.mark_dirty(r.back, Duration::ZERO);
        if r.restored {
            info!(folder = %self.cfg.id, still_deleted = r.send.len(), "the held mass deletion is over: its files are back");
            if self
                .health
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(HELD_MARK))
            {
                self.health.last_error = None;
            }
        }
        if let Some((deletes, present, new)) = r.held {
            if new {
                let msg = format!(
                    "{deletes} of {present} files were deleted locally, more than max_delete_percent = {}%; {HELD_MARK}. If they are wanted, run `mqsync resync --folder {}`; if not, put the files back",
                    self.cfg.max_delete_percent, self.cfg.id
                );
                warn!(folder = %self.cfg.id, "{msg}");
                self.health.last_error = Some(msg);
            }
            return;
        }
        for p in r.send {
            self.local.know(&p, None);
            self.engine.handle_local(p, Content::Deleted);
        }
        self.process();
    }
}

/// In the error a held mass deletion sets: the hold's end clears only that error.
const HELD_MARK: &str = "holding the deletions";

fn is_absent(root: &Path, path: &RelPath) -> bool {
    std::fs::symlink_metadata(path.to_local(root))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// Whether the content of the file confirmed at `path` is held by another file that
/// stays (not among `leaving`): then its deletion is the other half of a move. Its
/// first, middle and last chunks are checked (each lookup walks the holder's chunk
/// list, so all of a large file's would cost its chunk count squared).
fn moved_elsewhere(
    engine: &Engine,
    locations: &crate::fs::locations::ChunkLocations,
    path: &RelPath,
    leaving: &HashSet<&RelPath>,
) -> bool {
    let Some(Content::File { chunks, size, .. }) = engine.entry(path).map(|e| &e.content) else {
        return false;
    };
    let n = chunks.len();
    // The holder must be the same file, not another version sharing some chunks.
    let same_file = |holder: &RelPath| {
        matches!(engine.entry(holder).map(|e| &e.content),
            Some(Content::File { chunks: c, size: s, .. }) if s == size && c.len() == n)
    };
    n > 0
        && [0, n / 2, n - 1].iter().all(|&i| {
            locations
                .find(&chunks[i].hash, engine)
                .is_some_and(|(holder, _, _)| {
                    &holder != path && !leaving.contains(&holder) && same_file(&holder)
                })
        })
}
