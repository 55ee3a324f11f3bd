//! Builds and publishes a folder's pending list (`ops::pending`): what this node has
//! not brought in sync and why, from the engine, the apply queue, the health's retry
//! errors and the delete guard. Takes at most the first few of each, never all.

use super::apply::ApplyQueue;
use super::folder::Folder;
use super::health::Health;
use super::now_ms;
use crate::engine::Engine;
use crate::engine::guard::DeleteGuard;
use crate::ops::pending::{MAX_LISTED, PendingDoc, Reason};
use crate::protocol::wire::Keys;
use crate::transport::Publisher;
use std::time::{Duration, Instant};

/// Least time between two published lists.
const MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Where a pending list is read from.
pub(super) struct Sources<'a> {
    pub engine: &'a Engine,
    pub applies: &'a ApplyQueue,
    pub health: &'a Health,
    pub guard: &'a DeleteGuard,
}

/// The list as it stands: failing applies first (the first [`MAX_LISTED`]), then the
/// other pending applies, held deletions and local changes. `previous` supplies the
/// error of a failing path whose retry is under way (its error is then not known).
pub(super) fn build(
    node: &str,
    folder: &str,
    s: &Sources,
    previous: Option<&PendingDoc>,
) -> PendingDoc {
    let mut doc = PendingDoc::new(node, folder);
    doc.total = (s.engine.pending_count() + s.engine.local_change_count() + s.guard.held()) as u64;
    let earlier = |path: &str| {
        previous?
            .paths
            .iter()
            .find(|p| p.path == path && p.reason == Reason::ApplyFailed)?
            .detail
            .clone()
    };
    for (path, _) in s.engine.failing_paths().take(MAX_LISTED) {
        let detail = s
            .health
            .retry_error(path)
            .map(str::to_string)
            .or_else(|| earlier(path.as_str()));
        doc.push(path.to_string(), Reason::ApplyFailed, detail);
    }
    let others = s.engine.pending_paths().filter(|(_, _, failing)| !failing);
    for (path, from, _) in others.take(MAX_LISTED) {
        if !doc.has_room() {
            break;
        }
        let applier = &s.applies.applier;
        let (reason, detail) = if let Some(source) = applier.fetch_source(path) {
            (Reason::Fetching, Some(format!("from {source}")))
        } else if s.applies.is_queued(path) {
            (Reason::Queued, None)
        } else {
            (
                Reason::Waiting,
                (!from.is_empty()).then(|| format!("from {from}")),
            )
        };
        doc.push(path.to_string(), reason, detail);
    }
    for path in s.guard.held_paths().take(MAX_LISTED) {
        if !doc.has_room() {
            break;
        }
        doc.push(path.to_string(), Reason::HeldDelete, None);
    }
    for path in s.engine.local_change_paths().take(MAX_LISTED) {
        if !doc.has_room() {
            break;
        }
        doc.push(
            path.to_string(),
            Reason::LocalChange,
            Some("not sent".into()),
        );
    }
    doc
}

impl Folder {
    /// Publishes the pending list when it is due and changed (`mqsync pending`).
    pub(super) fn publish_pending(&mut self, now: Instant) {
        if !self.pending.due(now) {
            return;
        }
        let sources = Sources {
            engine: &self.engine,
            applies: &self.applies,
            health: &self.health,
            guard: &self.local.guard,
        };
        let doc = build(&self.out.node, &self.cfg.id, &sources, self.pending.last());
        self.pending.publish(now, doc, self.out.publisher.as_ref());
    }
}

/// Publishes the list, retained and signed, when it changed, at most every
/// [`MIN_INTERVAL`].
pub(super) struct PendingPublisher {
    topic: String,
    keys: Keys,
    last: Option<PendingDoc>,
    last_at: Option<Instant>,
}

impl PendingPublisher {
    pub fn new(topic: String, keys: Keys) -> Self {
        PendingPublisher {
            topic,
            keys,
            last: None,
            last_at: None,
        }
    }

    /// Whether a list may be published at `now` (build it only then).
    pub fn due(&self, now: Instant) -> bool {
        self.last_at
            .is_none_or(|t| now.duration_since(t) >= MIN_INTERVAL)
    }

    pub fn last(&self) -> Option<&PendingDoc> {
        self.last.as_ref()
    }

    /// Publishes `doc` unless it equals the last one published.
    pub fn publish(&mut self, now: Instant, doc: PendingDoc, publisher: Option<&Publisher>) {
        let Some(p) = publisher else { return };
        self.last_at = Some(now);
        if self.last.as_ref() == Some(&doc) {
            return;
        }
        let mut stamped = doc.clone();
        stamped.updated_ms = now_ms();
        // Up to 100 paths of up to 4 KiB each may not fit `broker.max_message_bytes`:
        // fewer are listed then (`total` still counts them all).
        let bytes = loop {
            let Ok(bytes) = crate::ops::status::signed_json(&stamped, &self.topic, &self.keys)
            else {
                return;
            };
            if p.fits(&self.topic, bytes.len()) || stamped.paths.is_empty() {
                break bytes;
            }
            stamped.paths.truncate(stamped.paths.len() / 2);
        };
        p.publish(self.topic.clone(), bytes, true);
        self.last = Some(doc);
    }

    /// Publishes the next list in any case (after a reconnect).
    pub fn invalidate(&mut self) {
        self.last = None;
        self.last_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChunkRef, Content, Mode};
    use crate::fs::applier::Applier;
    use crate::fs::ignore::Ignore;
    use crate::protocol::relpath::RelPath;

    #[test]
    fn the_list_takes_the_first_hundred_and_counts_all() {
        let mut engine = Engine::new("n2", Mode::ReceiveOnly, vec![]);
        for i in 0..250 {
            let content = Content::File {
                size: 1,
                mode: 0o644,
                mtime_ns: 1,
                chunks: [ChunkRef {
                    hash: [1; 32],
                    len: 1,
                }]
                .into(),
            };
            engine.handle_local(RelPath::new(format!("f{i:03}")).unwrap(), content);
        }
        let dir = std::env::temp_dir();
        let applies = ApplyQueue::new(Applier::new(dir.clone(), Ignore::new(&[]).unwrap()), 4);
        let keys = Keys::new(vec![Keys::derive(b"k")]).unwrap();
        let health = Health::new(
            "docs".into(),
            "n2".into(),
            dir,
            keys,
            "t".into(),
            false,
            &[],
        );
        let guard = DeleteGuard::new(50);
        let s = Sources {
            engine: &engine,
            applies: &applies,
            health: &health,
            guard: &guard,
        };
        let doc = build("n2", "docs", &s, None);
        assert_eq!((doc.total, doc.paths.len()), (250, MAX_LISTED));
        assert_eq!(doc.paths[0].path, "f000");
        assert!(doc.paths.iter().all(|p| p.reason == Reason::LocalChange));
    }
}
