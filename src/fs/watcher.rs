//! Turns inotify events (through `notify`) into folder-relative paths to rescan.
//! Events are hints, never the truth: the scanner looks at the disk itself. A file
//! closed after writing or moved into place is flagged urgent (scanned at once);
//! everything else waits for the folder's debounce.

use crate::protocol::relpath::RelPath;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Config, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

#[derive(Debug)]
pub enum FsEvent {
    Paths {
        paths: Vec<RelPath>,
        urgent: bool,
    },
    /// New directories. notify emits this event before it watches the directory, so
    /// files created in between produce no event: the directory must be scanned again
    /// once the watch is in place.
    NewDirs(Vec<RelPath>),
    /// The kernel queue overflowed: only a full rescan is trustworthy.
    Rescan,
    /// The watcher failed (e.g. out of inotify watches); periodic scans cover it.
    Error(String),
}

/// Keeps the watch alive; dropping it stops watching.
pub struct FolderWatcher {
    _inner: RecommendedWatcher,
}

pub fn watch(
    root: &Path,
) -> Result<(FolderWatcher, mpsc::UnboundedReceiver<FsEvent>), notify::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
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
                let urgent = matches!(
                    ev.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                        | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                        | EventKind::Create(CreateKind::Folder)
                ) || is_symlink_create(&ev.kind, &own);
                let paths: Vec<RelPath> = own
                    .iter()
                    .filter_map(|p| RelPath::from_local(&root_buf, p).ok())
                    .collect();
                if paths.is_empty() {
                    return;
                }
                if ev.kind == EventKind::Create(CreateKind::Folder) {
                    FsEvent::NewDirs(paths)
                } else {
                    FsEvent::Paths { paths, urgent }
                }
            }
            Err(e) => FsEvent::Error(e.to_string()),
        };
        let _ = tx.send(ev);
    };
    // Symlinks are synced as links, never followed: following them would watch trees
    // outside the folder, and makes the recursive setup stat every file rather than
    // read each directory's entry types (a fifth of an unchanged 1,000,000-file start).
    let mut w = RecommendedWatcher::new(handler, Config::default().with_follow_symlinks(false))?;
    w.watch(root, RecursiveMode::Recursive)?;
    Ok((FolderWatcher { _inner: w }, rx))
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
