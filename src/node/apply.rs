//! The apply side of a folder: applies the engine asked for wait in arrival order for
//! one of a bounded number of slots (open temp files), run in the applier, and their
//! outcomes go back to the engine (which keeps the retry policy) and to the hook.

use super::folder::Folder;
use super::outbound::LocalChunks;
use super::report::Report;
use crate::engine::{Content, Entry, Failure, Hash, Origin, VersionVector};
use crate::fs::applier::{Applier, ApplyError, Outcome};
use crate::protocol::relpath::RelPath;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;
use tracing::{debug, error, info};

/// Files a folder may have open for applying (fetching or staged) at once; each holds
/// its temp file and its parent directory open. Further applies wait in order, so a
/// tree of many thousands of files never runs the process out of file descriptors.
const MAX_OPEN_APPLIES: usize = 256;
/// Descriptors left for everything but applies: connections, watches, the index.
const RESERVED_FDS: u64 = 256;

/// Apply slots per folder: [`MAX_OPEN_APPLIES`], fewer when the open-file limit
/// shared by `folders` folders could not hold two descriptors per slot.
pub(super) fn apply_slots(open_files: Option<u64>, folders: usize) -> usize {
    let Some(limit) = open_files else {
        return MAX_OPEN_APPLIES;
    };
    let per_folder = limit.saturating_sub(RESERVED_FDS) / (2 * folders.max(1) as u64);
    (per_folder as usize).clamp(8, MAX_OPEN_APPLIES)
}

/// An apply waiting for a free slot, with the node and mode of the message that
/// caused it (the chunk source to ask).
pub(super) struct QueuedApply {
    entry: Entry,
    conflict_copy: Option<RelPath>,
    from: Origin,
}

pub(super) struct ApplyQueue {
    pub applier: Applier,
    /// Files that may be open for applying at once (see [`apply_slots`]).
    slots: usize,
    /// Applies waiting for a slot, in arrival order (a path may be listed again
    /// after it left `waiting`: then skipped).
    order: VecDeque<RelPath>,
    waiting: HashMap<RelPath, QueuedApply>,
    /// When each apply started, for the latency histogram.
    started: HashMap<RelPath, Instant>,
    /// Paths changed by remote applies since the hook last ran, and whether it runs.
    pub hook_paths: BTreeSet<RelPath>,
    pub hook_running: bool,
    /// The batch for an in-process observer (the demo).
    pub report: Report,
}

impl ApplyQueue {
    pub fn new(applier: Applier, slots: usize) -> Self {
        ApplyQueue {
            applier,
            slots,
            order: VecDeque::new(),
            waiting: HashMap::new(),
            started: HashMap::new(),
            hook_paths: BTreeSet::new(),
            hook_running: false,
            report: Report::default(),
        }
    }

    /// Sends each applied batch to `observer` (the demo).
    pub fn with_observer(mut self, observer: Option<super::report::AppliedSender>) -> Self {
        self.report = Report::new(observer);
        self
    }

    /// Gives `q` back when it may start now, or queues it while every slot is taken.
    /// Behind a file that waits for a slot every apply waits, in order: a delete that
    /// overtook it removed the old file that a renamed or copied file is rebuilt
    /// from, which then had to be fetched from the writer.
    fn admit(&mut self, q: QueuedApply) -> Option<QueuedApply> {
        let is_file = matches!(q.entry.content, Content::File { .. });
        if (is_file && self.applier.in_flight() >= self.slots) || !self.waiting.is_empty() {
            self.started
                .entry(q.entry.path.clone())
                .or_insert_with(Instant::now);
            let path = q.entry.path.clone();
            if self.waiting.insert(path.clone(), q).is_none() {
                self.order.push_back(path);
            }
            return None;
        }
        self.waiting.remove(&q.entry.path);
        Some(q)
    }

    /// The next queued apply, in order, while files find free slots (other applies
    /// take none).
    fn next_ready(&mut self) -> Option<QueuedApply> {
        while let Some(path) = self.order.front() {
            let needs_slot = match self.waiting.get(path) {
                Some(q) => matches!(q.entry.content, Content::File { .. }),
                None => false,
            };
            if needs_slot && self.applier.in_flight() >= self.slots {
                return None;
            }
            let path = self.order.pop_front()?;
            if let Some(q) = self.waiting.remove(&path) {
                return Some(q);
            }
        }
        None
    }

    /// Whether the apply of `path` waits for a free slot.
    pub fn is_queued(&self, path: &RelPath) -> bool {
        self.waiting.contains_key(path)
    }

    /// Drops the apply of `path`, queued or running.
    pub fn cancel(&mut self, path: &RelPath) {
        self.waiting.remove(path);
        self.report.dropped(path);
        self.applier.cancel(path);
    }

    /// Whether applies wait for slots that a commit of the staged files would free:
    /// then the next chunks should find their fetches started, not pile up unclaimed.
    pub fn commit_frees_slots(&self) -> bool {
        !self.waiting.is_empty()
            && self.applier.staged_len() > 0
            && self.applier.in_flight() >= self.slots
    }

    /// Whether every apply is done (none queued or running).
    pub fn is_idle(&self) -> bool {
        self.applier.in_flight() == 0
    }

    pub fn shrink_buffers(&mut self) {
        self.order.shrink_to_fit();
        self.waiting.shrink_to_fit();
        self.started.shrink_to_fit();
    }
}

impl Folder {
    /// The engine's `Apply`: a retry after a full disk waits until the file fits
    /// (asked where the file goes: a mount inside the folder is another file system;
    /// a full quota does not show there, so those retries refetch).
    pub(super) fn apply(
        &mut self,
        entry: Entry,
        conflict_copy: Option<RelPath>,
        from: Origin,
        needs_space: Option<u64>,
    ) {
        if let Some(needs) = needs_space
            && needs
                > entry
                    .path
                    .to_local(&self.cfg.path)
                    .parent()
                    .and_then(crate::fs::applier::free_space)
                    .unwrap_or(u64::MAX)
        {
            let failure = Failure::Retry {
                needs_space,
                reported: true,
            };
            let (path, version) = (entry.path, entry.version);
            return self
                .engine
                .handle_apply_failed(&path, &version, failure, Instant::now());
        }
        // With the vectors, a replay's log shows why a version was installed over what
        // the disk held (RELIABILITY.md, finding 5).
        debug!(folder = %self.cfg.id, path = %entry.path, version = ?entry.version, local = ?self.engine.entry(&entry.path).map(|e| &e.version), copy = ?conflict_copy, "apply decided");
        let q = QueuedApply {
            entry,
            conflict_copy,
            from,
        };
        if let Some(q) = self.applies.admit(q) {
            self.begin_apply(q);
        }
    }

    /// Starts the queued applies that found slots.
    pub(super) fn start_queued(&mut self) {
        while let Some(q) = self.applies.next_ready() {
            self.begin_apply(q);
        }
    }

    fn begin_apply(&mut self, q: QueuedApply) {
        let QueuedApply {
            entry,
            conflict_copy,
            from,
        } = q;
        self.applies.report.started(&entry.path, &entry.modified_by);
        if let Some(folds) = &mut self.local.case_folds {
            if let Some(c) = folds.collision(&entry.path) {
                return self.refuse_case_collision(entry, conflict_copy, c);
            }
            // Claim the name now: a twin arriving while this one fetches its chunks
            // must see it.
            if !entry.content.is_deleted() {
                folds.insert(&entry.path);
            }
        }
        self.applies
            .started
            .entry(entry.path.clone())
            .or_insert_with(Instant::now);
        let expected = self.local.known.get(&entry.path).copied();
        let path = entry.path.clone();
        let outcome = tokio::task::block_in_place(|| {
            let chunks = LocalChunks::new(
                &self.cfg.path,
                &self.locations,
                &self.engine,
                &self.local.known,
            );
            let local = |h: &Hash| chunks.read_verified(h);
            self.applies
                .applier
                .start(entry, conflict_copy, expected, &from.node, &local)
        });
        if matches!(outcome, Outcome::Waiting) {
            debug!(folder = %self.cfg.id, %path, from = %from.node, live = from.live, "fetching");
            // Chunks of a live change follow their manifest; anything else is asked for.
            if !from.live {
                let missing = self.applies.applier.missing(&path);
                self.applies.applier.mark_requested(&path);
                self.out.request(from.node, missing);
            }
            return;
        }
        self.on_outcome(outcome);
    }

    /// Renames the files staged since the last commit into place (one disk flush for
    /// the batch) and takes their outcomes.
    pub(super) fn commit_applies(&mut self) {
        let outcomes = tokio::task::block_in_place(|| self.applies.applier.commit());
        for o in outcomes {
            self.on_outcome(o);
        }
        self.start_queued();
    }

    /// An apply whose name (or a directory on its way) exists on disk under another
    /// spelling. A delete is done: the name on disk is the twin, not this path. Anything
    /// else would overwrite the twin, so it is reported and retried until the twin goes.
    fn refuse_case_collision(
        &mut self,
        entry: Entry,
        conflict_copy: Option<RelPath>,
        c: crate::fs::casefold::Collision,
    ) {
        if entry.content.is_deleted() {
            return self.on_outcome(Outcome::Done {
                path: entry.path,
                version: entry.version,
                meta: None,
                conflict_copy: None,
            });
        }
        self.on_outcome(Outcome::Failed {
            entry,
            conflict_copy,
            error: ApplyError::CaseCollision(c),
        });
    }

    pub(super) fn on_outcome(&mut self, o: Outcome) {
        match o {
            Outcome::Waiting | Outcome::Staged => {}
            Outcome::Done {
                path,
                version,
                meta,
                conflict_copy,
            } => {
                debug!(folder = %self.cfg.id, %path, "applied");
                self.health.applied(&path);
                let folder = self.cfg.id.clone();
                metrics::counter!("mqsync_applied_total", "folder" => folder.clone()).increment(1);
                if let Some(t) = self.applies.started.remove(&path) {
                    metrics::histogram!("mqsync_apply_seconds", "folder" => folder.clone())
                        .record(t.elapsed().as_secs_f64());
                }
                if conflict_copy.is_some() {
                    metrics::counter!("mqsync_conflicts_total", "folder" => folder).increment(1);
                }
                if self.cfg.on_change.is_some() {
                    self.applies.hook_paths.insert(path.clone());
                }
                self.applies
                    .report
                    .applied(&path, meta.as_ref(), conflict_copy.as_ref());
                self.local.know(&path, meta);
                self.engine.handle_applied(&path, &version, true);
                if let Some(cc) = conflict_copy {
                    info!(folder = %self.cfg.id, %path, copy = %cc, "conflict: kept the local version as a copy");
                    self.scan_paths(&[cc], None);
                }
            }
            Outcome::Failed {
                entry,
                error,
                conflict_copy,
            } => {
                self.local.release_name(&entry.path);
                self.on_failed(entry, conflict_copy, error);
            }
        }
    }

    /// A failed apply: a local change under it is scanned; a failure worth retrying
    /// (a full disk, a permission) goes to the engine's retry policy; anything else
    /// is given up and reported.
    fn on_failed(&mut self, entry: Entry, conflict_copy: Option<RelPath>, error: ApplyError) {
        let (path, version): (RelPath, VersionVector) = (entry.path, entry.version);
        match error {
            ApplyError::ChangedLocally(_) => {
                self.applies.started.remove(&path);
                self.applies.report.dropped(&path);
                debug!(folder = %self.cfg.id, %path, "changed locally during apply; rescanning");
                // The conflict copy's name too: a file found there is why a loser could
                // not be moved aside, and the engine picks another name once it knows it.
                let paths: Vec<RelPath> = std::iter::once(path.clone())
                    .chain(conflict_copy.clone())
                    .collect();
                self.scan_paths(&paths, None);
                let still_pending = self
                    .engine
                    .pending_entry(&path)
                    .is_some_and(|p| p.version == version);
                self.engine.handle_applied(&path, &version, false);
                // No local change took the version's place (the copy's name was taken):
                // the peers send it again now, not at the next summary, and it is
                // decided with that name known.
                if still_pending && conflict_copy.is_some_and(|cc| self.engine.entry(&cc).is_some())
                {
                    self.ask_peers_to_compare();
                }
            }
            e if e.retryable() => {
                // A directory that waits for its entries to go is ordinary order; so is
                // a file whose directory was deleted here while it arrived: the delete
                // did not know the file, and an edit beats a concurrent delete, so it
                // is written again with its directory.
                let dir_gone = matches!(&e, ApplyError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound)
                    && path
                        .to_local(&self.cfg.path)
                        .parent()
                        .is_some_and(|d| !d.exists());
                if dir_gone {
                    info!(folder = %self.cfg.id, %path, "its directory was deleted here while the file arrived; an edit beats a concurrent delete, so the file is written again with its directory (delete it again to remove it)");
                }
                let reported = !matches!(e, ApplyError::NotEmpty(_)) && !dir_gone;
                let failure = Failure::Retry {
                    needs_space: e.no_space().then(|| entry.content.size()),
                    reported,
                };
                self.engine
                    .handle_apply_failed(&path, &version, failure, Instant::now());
                if reported {
                    metrics::counter!("mqsync_apply_errors_total", "folder" => self.cfg.id.clone())
                        .increment(1);
                    // Retried every few seconds: said once, not at every retry.
                    self.health.apply_failed(path, e.to_string());
                }
            }
            e => {
                self.applies.started.remove(&path);
                self.applies.report.dropped(&path);
                metrics::counter!("mqsync_apply_errors_total", "folder" => self.cfg.id.clone())
                    .increment(1);
                error!(folder = %self.cfg.id, %path, "apply refused: {e}");
                self.health.gave_up(path.clone(), e.to_string());
                self.engine
                    .handle_apply_failed(&path, &version, Failure::Refused, Instant::now());
            }
        }
    }

    /// Starts the on_change hook once a batch of remote changes is complete (nothing
    /// pending) and no earlier run is still going.
    pub(super) fn maybe_run_hook(
        &mut self,
        tx: &tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
    ) {
        let Some(cmd) = self.cfg.on_change.clone() else {
            return;
        };
        let a = &mut self.applies;
        if a.hook_running
            || a.hook_paths.is_empty()
            || self.engine.pending_count() > 0
            || !a.is_idle()
        {
            return;
        }
        a.hook_running = true;
        let paths: Vec<RelPath> = std::mem::take(&mut a.hook_paths).into_iter().collect();
        debug!(folder = %self.cfg.id, paths = paths.len(), "running on_change hook");
        let (root, folder, node, tx) = (
            self.cfg.path.clone(),
            self.cfg.id.clone(),
            self.out.node.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let res = crate::ops::hook::run(&cmd, &root, &folder, &node, &paths).await;
            let _ = tx.send(res);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_slots_fit_the_open_file_limit() {
        assert_eq!(apply_slots(None, 1), MAX_OPEN_APPLIES);
        assert_eq!(apply_slots(Some(1 << 20), 4), MAX_OPEN_APPLIES);
        // 512 descriptors: 256 reserved, two per slot.
        assert_eq!(apply_slots(Some(512), 1), 128);
        assert_eq!(apply_slots(Some(512), 2), 64);
        // Never none at all: a tiny limit still makes progress.
        assert_eq!(apply_slots(Some(100), 1), 8);
    }
}
