//! Applied batches for an in-process observer (`mqsync demo` prints them): what each
//! batch of remote changes did to a folder (files written, deleted, local versions moved
//! aside as conflict copies) and which node made each change. Nothing is kept unless
//! the folder has an observer.

use super::folder::Folder;
use crate::engine::intern::NodeId;
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Where a folder sends its applied batches.
pub type AppliedSender = tokio::sync::mpsc::UnboundedSender<AppliedBatch>;

/// A batch still collecting is sent after this long even while more keeps arriving,
/// so a long transfer is reported as it goes.
const MAX_BATCH_AGE: Duration = Duration::from_secs(1);

/// Remote changes applied to one folder of one node, in the order they were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedBatch {
    pub folder: String,
    /// The node that applied them.
    pub node: String,
    pub changes: Vec<Applied>,
}

/// One applied change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub path: RelPath,
    /// The node that made the change (its author: the message that brought it may
    /// have come from another node that had it already).
    pub from: String,
    pub change: Change,
    /// Where the local version went when this change won a conflict over it.
    pub conflict_copy: Option<RelPath>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A file or symlink now on disk.
    File,
    Dir,
    Deleted,
}

/// The batch being collected, and who sent each apply still running.
#[derive(Default)]
pub(super) struct Report {
    tx: Option<AppliedSender>,
    from: HashMap<RelPath, NodeId>,
    batch: Vec<Applied>,
    since: Option<Instant>,
}

impl Report {
    pub fn new(tx: Option<AppliedSender>) -> Self {
        Report {
            tx,
            ..Report::default()
        }
    }

    /// An apply of `path` to a version made by `author` has started.
    pub fn started(&mut self, path: &RelPath, author: &NodeId) {
        if self.tx.is_some() {
            self.from.insert(path.clone(), author.clone());
        }
    }

    /// The apply of `path` ended without changing the disk.
    pub fn dropped(&mut self, path: &RelPath) {
        self.from.remove(path);
    }

    /// The apply of `path` is done: the disk now holds `meta` (`None`: nothing).
    pub fn applied(
        &mut self,
        path: &RelPath,
        meta: Option<&LocalMeta>,
        conflict_copy: Option<&RelPath>,
    ) {
        if self.tx.is_none() {
            return;
        }
        let change = match meta {
            None => Change::Deleted,
            Some(m) if m.mode & libc::S_IFMT == libc::S_IFDIR => Change::Dir,
            Some(_) => Change::File,
        };
        self.batch.push(Applied {
            path: path.clone(),
            from: self
                .from
                .remove(path)
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            change,
            conflict_copy: conflict_copy.cloned(),
        });
        self.since.get_or_insert_with(Instant::now);
    }

    /// Takes the batch when it is complete (`settled`: nothing pending or running) or
    /// has been collecting for [`MAX_BATCH_AGE`].
    fn take(&mut self, settled: bool) -> Option<(AppliedSender, Vec<Applied>)> {
        let tx = self.tx.as_ref()?;
        let since = self.since?;
        if !settled && since.elapsed() < MAX_BATCH_AGE {
            return None;
        }
        self.since = None;
        self.from.shrink_to_fit();
        Some((tx.clone(), std::mem::take(&mut self.batch)))
    }
}

impl Folder {
    /// Sends the applied batch to the observer once it is complete.
    pub(super) fn report_applied(&mut self) {
        let settled = self.engine.pending_count() == 0 && self.applies.is_idle();
        if let Some((tx, changes)) = self.applies.report.take(settled) {
            // The observer may have gone (the demo stopping): nothing to do then.
            let _ = tx.send(AppliedBatch {
                folder: self.cfg.id.clone(),
                node: self.out.node.clone(),
                changes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::intern::node_id;

    fn meta(mode: u32) -> LocalMeta {
        LocalMeta {
            size: 1,
            mtime_ns: 0,
            ino: 1,
            mode,
            ctime_ns: 0,
        }
    }

    #[test]
    fn collects_nothing_without_an_observer() {
        let mut r = Report::new(None);
        let p = RelPath::new("a.txt").unwrap();
        r.started(&p, &node_id("n1"));
        r.applied(&p, Some(&meta(libc::S_IFREG | 0o644)), None);
        assert!(r.from.is_empty() && r.batch.is_empty());
        assert!(r.take(true).is_none());
    }

    #[test]
    fn a_batch_names_each_change_and_its_sender() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut r = Report::new(Some(tx));
        let (f, d, g) = (
            RelPath::new("d/f.txt").unwrap(),
            RelPath::new("d").unwrap(),
            RelPath::new("gone").unwrap(),
        );
        r.started(&d, &node_id("a"));
        r.started(&f, &node_id("a"));
        r.started(&g, &node_id("c"));
        assert!(r.take(true).is_none(), "nothing applied yet");
        r.applied(&d, Some(&meta(libc::S_IFDIR | 0o755)), None);
        let copy = RelPath::new("d/f.sync-conflict-20260101-000000-b.txt").unwrap();
        r.applied(&f, Some(&meta(libc::S_IFREG | 0o644)), Some(&copy));
        assert!(r.take(false).is_none(), "still collecting");
        r.applied(&g, None, None);
        let (_, batch) = r.take(true).unwrap();
        let kinds: Vec<_> = batch
            .iter()
            .map(|a| (a.path.as_str(), a.from.as_str(), a.change))
            .collect();
        assert_eq!(
            kinds,
            [
                ("d", "a", Change::Dir),
                ("d/f.txt", "a", Change::File),
                ("gone", "c", Change::Deleted)
            ]
        );
        assert_eq!(batch[1].conflict_copy.as_ref(), Some(&copy));
        assert!(r.take(true).is_none(), "sent once");
    }
}
