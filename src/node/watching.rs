//! How a folder notices changes: its watcher, and polls of what no inotify watch
//! covers (the whole folder with `watch = "poll"` or without a watcher, the unwatched
//! subtrees once watches ran out) every `poll_interval_s`, with the scanner's metadata
//! fast path. What is polled goes into the status (`polled`), so that a node never
//! claims to be in sync for changes it has not looked for yet.

use super::folder::Folder;
use super::now_ms;
use crate::fs::ignore::Ignore;
use crate::fs::watcher::{self, FolderWatcher, FsEvent, WatchMode};
use crate::ops::status::Polled;
use crate::protocol::relpath::RelPath;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::{debug, info, warn};

/// What `watcher::watch` gives, run on a blocking thread while the index loads.
pub(super) type WatchResult = Result<(FolderWatcher, UnboundedReceiver<FsEvent>), notify::Error>;

/// Why a folder is polled, as the status says it.
const WHY_POLL: &str = "watch = \"poll\"";
const WHY_LIMIT: &str = "out of inotify watches";

pub(super) struct Watching {
    folder: String,
    mode: WatchMode,
    every: Duration,
    watcher: Option<FolderWatcher>,
    /// Keeps the event channel open even without a watcher: a closed channel would
    /// wake the folder's loop at once, on every turn.
    idle_tx: Option<UnboundedSender<FsEvent>>,
    /// Why the watcher is missing, in inotify mode.
    failed: Option<String>,
    next_poll: Instant,
}

impl Watching {
    pub fn new(folder: String, mode: WatchMode, every: Duration) -> Self {
        Watching {
            folder,
            mode,
            every,
            watcher: None,
            idle_tx: None,
            failed: None,
            next_poll: Instant::now() + every,
        }
    }

    /// Why the folder is polled now, if it is: everything (`None` roots), or the
    /// roots of the unwatched subtrees.
    fn polled(&self) -> Option<(&str, Option<Vec<RelPath>>)> {
        match (self.mode, &self.watcher) {
            (WatchMode::Poll, _) => Some((WHY_POLL, None)),
            (WatchMode::Inotify, None) => {
                Some((self.failed.as_deref().unwrap_or("no watcher"), None))
            }
            (WatchMode::Inotify, Some(w)) if w.is_limited() => Some((
                WHY_LIMIT,
                w.unwatched().map(|u| u.iter().cloned().collect()),
            )),
            _ => None,
        }
    }

    /// Installs a watcher (or, `Err`, why there is none) and returns its events.
    fn install(&mut self, w: WatchResult) -> UnboundedReceiver<FsEvent> {
        match w {
            Ok((w, rx)) => {
                if w.is_limited() {
                    self.warn_limited(&w);
                }
                // Should the watcher go, its channel stays open (and quiet).
                self.idle_tx = Some(w.sender());
                self.watcher = Some(w);
                self.failed = None;
                rx
            }
            Err(e) => {
                self.watcher = None;
                self.failed = Some(format!("watcher unavailable: {e}"));
                warn!(folder = %self.folder, "watcher unavailable ({e}); polling the folder every {} s", self.every.as_secs());
                self.idle()
            }
        }
    }

    /// An event channel that stays open and quiet.
    fn idle(&mut self) -> UnboundedReceiver<FsEvent> {
        let (tx, rx) = unbounded_channel();
        self.idle_tx = Some(tx);
        rx
    }

    fn warn_limited(&self, w: &FolderWatcher) {
        let polled = match w.unwatched() {
            None => "the whole folder".to_string(),
            Some(u) => format!("{} subtree(s)", u.len()),
        };
        warn!(
            folder = %self.folder,
            watched = w.watched_dirs(),
            "out of inotify watches (fs.inotify.max_user_watches): {polled} without a watch, polled every {} s; raise the limit (docs/DEPLOY.md)",
            self.every.as_secs()
        );
    }
}

impl Folder {
    /// Starts watching the folder (with the watcher made while the index loaded, if
    /// any) and returns the watcher's events; none in poll mode.
    pub(super) async fn start_watching(
        &mut self,
        early: Option<tokio::task::JoinHandle<WatchResult>>,
    ) -> UnboundedReceiver<FsEvent> {
        if self.watching.mode == WatchMode::Poll {
            if let Some(h) = early {
                h.abort();
            }
            info!(folder = %self.cfg.id, "watch = \"poll\": scanning the folder every {} s", self.watching.every.as_secs());
            return self.watching.idle();
        }
        match early {
            Some(h) => match h.await {
                Ok(w @ Ok(_)) => self.watching.install(w),
                // Failed early (e.g. check_root has just created the root): try again.
                _ => self.restart_watcher(),
            },
            None => self.restart_watcher(),
        }
    }

    /// A new watcher (a remounted root replaces the watched inode).
    pub(super) fn restart_watcher(&mut self) -> UnboundedReceiver<FsEvent> {
        if self.watching.mode == WatchMode::Poll {
            return self.watching.idle();
        }
        self.watching.watcher = None;
        let w = watcher::watch(&self.cfg.path, &self.local.ignore);
        self.watching.install(w)
    }

    /// What the watcher's own state needs from an event (watches for new directories,
    /// the switch to per-directory watches); the event goes on to the local side.
    pub(super) fn on_watch_event(&mut self, ev: &FsEvent) {
        let Some(w) = &mut self.watching.watcher else {
            return;
        };
        match ev {
            FsEvent::NewDirs(dirs) => w.watch_new(dirs, &self.local.ignore),
            FsEvent::OutOfWatches if !w.is_limited() => {
                match w.limit(&self.local.ignore) {
                    Ok(()) => {
                        let w = self.watching.watcher.as_ref();
                        if let Some(w) = w {
                            self.watching.warn_limited(w);
                        }
                    }
                    Err(e) => {
                        self.watching.watcher = None;
                        self.watching.failed = Some(format!("watcher unavailable: {e}"));
                    }
                }
                // Events were lost while the watches changed hands: the full scan this
                // turn covers them, and the unwatched part.
                self.local.rescan_due = true;
                self.report_polled(now_ms());
            }
            _ => {}
        }
    }

    /// Polls when a poll is due (see the module doc).
    pub(super) fn poll_if_due(&mut self, now: Instant) {
        if now >= self.watching.next_poll {
            self.watching.next_poll = now + self.watching.every;
            self.poll_now();
        }
    }

    /// Polls what no watch covers, first trying to watch it again, and says in the
    /// status what is polled.
    fn poll_now(&mut self) {
        let (started, started_ms) = (Instant::now(), now_ms());
        if let Some(w) = &mut self.watching.watcher
            && w.retry(&self.local.ignore)
        {
            info!(folder = %self.cfg.id, watched = w.watched_dirs(), "more directories have an inotify watch again");
        }
        match self.watching.polled().map(|(_, roots)| roots) {
            None => {}
            Some(None) => self.poll_scan(None),
            Some(Some(roots)) => self.poll_scan(Some(&roots)),
        }
        self.report_polled(started_ms);
        if let Some(p) = &self.health.polled {
            let ms = started.elapsed().as_millis() as u64;
            debug!(folder = %self.cfg.id, dirs = p.dirs, ms, "polled");
        }
    }

    /// Says in the status what is polled, and that everything was looked at by a scan
    /// that began at `started_ms` (a poll, or the first scan).
    pub(super) fn report_polled(&mut self, started_ms: u64) {
        let Some((why, roots)) = self.watching.polled() else {
            self.health.polled = None;
            return;
        };
        let why = why.to_string();
        let of_dirs = dir_count(self, None);
        let dirs = match &roots {
            None => of_dirs,
            Some(r) => r.iter().map(|p| dir_count(self, Some(p))).sum(),
        };
        self.health.polled = (dirs > 0).then_some(Polled {
            reason: why,
            dirs,
            of_dirs,
            interval_s: self.watching.every.as_secs(),
            last_poll_ms: started_ms,
        });
    }
}

/// Directories at or below `under` the folder holds (the whole folder, its root
/// included, for `None`).
fn dir_count(f: &Folder, under: Option<&RelPath>) -> u64 {
    let is_dir =
        |e: &&crate::engine::Entry| matches!(e.content, crate::engine::Content::Dir { .. });
    match under {
        None => 1 + f.engine.entries().filter(is_dir).count() as u64,
        Some(p) => f.engine.entries_under(p).filter(is_dir).count() as u64,
    }
}

/// Sets up the watcher on a blocking thread (inotify mode only), while the index
/// loads; `ignore` names directories not worth a watch.
pub(super) fn early_watch(
    root: std::path::PathBuf,
    ignore: Ignore,
    mode: WatchMode,
) -> Option<tokio::task::JoinHandle<WatchResult>> {
    (mode == WatchMode::Inotify)
        .then(|| tokio::task::spawn_blocking(move || watcher::watch(&root, &ignore)))
}
