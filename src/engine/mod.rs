//! The sync engine: pure decisions with no I/O, clocks or sockets. The node runtime
//! feeds it what the scanner saw, what peers published and what the applier finished
//! (`handle_*`), and drains the actions to carry out (`poll_effect`). Because it is
//! pure, a seeded simulation can drive many engines through lossy networks.
//!
//! Invariant: `entries` holds what is on this node's disk (confirmed); `pending` holds
//! accepted remote versions that the applier has not finished yet. Digests cover only
//! confirmed entries, so a node never claims data it does not have.

pub mod attrs;
mod copies;
pub mod digest;
pub mod effect;
pub mod entries;
pub mod entry;
mod forget;
pub mod guard;
pub mod intern;
mod repair;
pub mod resolve;
pub mod schedule;
mod under_apply;
pub mod version;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

pub use attrs::{Attrs, Owner, SharedAttrs, Xattr};
pub use digest::{BUCKETS, Digest, GROUPS, LEAVES, bucket_of, leaf_of};
pub use effect::{Effect, Failure, Origin, RETRY_AFTER, announce_order};
pub use entries::Entries;
pub use entry::{ChunkRef, Chunks, Content, Entry, Hash};
pub use guard::{DeleteGuard, Release};
pub use repair::{ANSWER_TIMEOUT, ANYONE, LEAF_MAX, Region, SERVED_WINDOW, Summary};
pub use resolve::{Decision, beats, conflict_name, resolve};
pub use schedule::Schedule;
pub use version::{Causality, VersionVector};

use crate::protocol::relpath::RelPath;

/// How a folder treats local and remote changes: the config's `mode`, the volume
/// option, and the engine's rule, one type.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Send local changes and apply remote ones (default).
    #[default]
    SendReceive,
    /// A master: local changes are sent, remote changes are not applied.
    SendOnly,
    /// A replica: remote changes are applied, local changes are not sent.
    ReceiveOnly,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::SendReceive => "send-receive",
            Mode::SendOnly => "send-only",
            Mode::ReceiveOnly => "receive-only",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "send-receive" => Ok(Mode::SendReceive),
            "send-only" => Ok(Mode::SendOnly),
            "receive-only" => Ok(Mode::ReceiveOnly),
            other => Err(format!(
                "unknown mode {other:?} (expected \"send-receive\", \"send-only\" or \"receive-only\")"
            )),
        }
    }
}

/// An accepted remote version the applier has not finished.
#[derive(Debug, Clone)]
struct Pending {
    entry: Entry,
    conflict_copy: Option<RelPath>,
    from: Origin,
    /// A version made here (a resolved conflict): published once written.
    publish: bool,
}

/// The sync state of one folder on one node.
pub struct Engine {
    node: intern::NodeId,
    mode: Mode,
    entries: Entries,
    pending: BTreeMap<RelPath, Pending>,
    digest: Digest,
    /// Present (non-deleted) entries and their bytes, kept up to date for status.
    present: u64,
    present_bytes: u64,
    /// Paths changed locally on a receive-only folder (reported, not sent).
    local_changes: BTreeMap<RelPath, ()>,
    effects: VecDeque<Effect>,
    /// The runtime's wall clock, given as input (`set_clock`): stamps changes.
    now_ms: u64,
    /// How long tombstones are kept; `None` keeps them forever.
    tombstone_ttl_ms: Option<u64>,
    /// Failed applies to start again, by when (the retry policy).
    retries: BTreeMap<RelPath, (Instant, Option<u64>)>,
    /// Pending paths whose apply failed and is retried: reported until one attempt
    /// succeeds or the version is no longer wanted.
    failing: BTreeSet<RelPath>,
    /// Digests, repairs and tombstone collection over time.
    schedule: Schedule,
    /// Who answers this node's summaries, and what it published for whom.
    repair: repair::Repair,
}

impl Engine {
    /// An engine over the confirmed entries loaded from the index.
    pub fn new(
        node: impl Into<String>,
        mode: Mode,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Self {
        let mut digest = Digest::default();
        let (mut present, mut present_bytes) = (0, 0);
        let entries: Entries = entries
            .into_iter()
            .inspect(|e| {
                digest.add(e);
                if !e.content.is_deleted() {
                    present += 1;
                    present_bytes += e.content.size();
                }
            })
            .collect();
        Engine {
            node: intern::node_id(&node.into()),
            mode,
            entries,
            pending: BTreeMap::new(),
            digest,
            present,
            present_bytes,
            local_changes: BTreeMap::new(),
            effects: VecDeque::new(),
            now_ms: 0,
            tombstone_ttl_ms: None,
            retries: BTreeMap::new(),
            failing: BTreeSet::new(),
            schedule: Schedule::default(),
            repair: repair::Repair::default(),
        }
    }

    /// Compares digests with peers every `digest` while connected, and collects
    /// expired tombstones every `collect` (see [`Schedule`]).
    pub fn with_intervals(mut self, digest: Duration, collect: Duration) -> Self {
        self.schedule = Schedule::new(digest, collect);
        self.repair.set_digest_interval(digest);
        self
    }

    /// Keeps deletion records for `ttl_ms`, then forgets them (see `collect_tombstones`).
    pub fn with_tombstone_ttl(mut self, ttl_ms: u64) -> Self {
        self.tombstone_ttl_ms = Some(ttl_ms);
        self
    }

    /// The current wall-clock time, in ms since the epoch. The engine reads no clock
    /// itself; the runtime sets it before feeding inputs.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    fn expired(&self, e: &Entry) -> bool {
        match self.tombstone_ttl_ms {
            Some(ttl) => {
                e.content.is_deleted()
                    && e.changed_ms > 0
                    && e.changed_ms.saturating_add(ttl) < self.now_ms
            }
            None => false,
        }
    }

    /// Forgets tombstones older than the TTL: every node does so at about the same time
    /// (the age comes from the entry, not from when each node learned it), and an
    /// expired tombstone offered by a peer is not taken back. A node that was offline
    /// for longer than the TTL may bring a deleted file back, as in Syncthing.
    pub fn collect_tombstones(&mut self) -> usize {
        let expired: Vec<RelPath> = self
            .entries
            .iter()
            .filter(|e| self.expired(e))
            .map(|e| e.path.clone())
            .collect();
        for p in &expired {
            if let Some(old) = self.entries.remove(p) {
                self.digest.remove(&old);
            }
            self.effects.push_back(Effect::Forget(p.clone()));
        }
        expired.len()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn entry(&self, path: &RelPath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Confirmed entries at or below `path`.
    pub fn entries_under<'a>(&'a self, path: &'a RelPath) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .from_path(path)
            .take_while(move |e| e.path.as_str().starts_with(path.as_str()))
            .filter(move |e| e.path.starts_with(path))
    }

    /// Files, directories and symlinks present, and the bytes of the files.
    pub fn present(&self) -> (u64, u64) {
        (self.present, self.present_bytes)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The accepted remote version of `path` still being applied, if any.
    pub fn pending_entry(&self, path: &RelPath) -> Option<&Entry> {
        self.pending.get(path).map(|p| &p.entry)
    }

    pub fn is_pending(&self, path: &RelPath) -> bool {
        self.pending.contains_key(path)
    }

    pub fn local_change_count(&self) -> usize {
        self.local_changes.len()
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Gives back the effect queue's capacity once it is drained (a first scan of a
    /// million files queues millions of effects).
    pub fn shrink_buffers(&mut self) {
        self.effects.shrink_to_fit();
    }

    /// Rebuilds the entry tree with full nodes (see [`Entries::compact`]).
    pub fn compact(&mut self) {
        self.entries.compact();
    }

    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// When `handle_timeout` has something to do next (a retry, a digest, a repair,
    /// a tombstone collection), if anything.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.retries.values().map(|(at, _)| *at).min();
        [retry, self.schedule.poll_timeout(), self.repair.timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does what is due at `now`: starts failed applies again (as `Apply` effects,
    /// asking their source, or the entry's author, for chunks), publishes the digest,
    /// asks for a repair, forgets expired tombstones.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<RelPath> = self
            .retries
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for path in due {
            let Some((_, needs_space)) = self.retries.remove(&path) else {
                continue;
            };
            let Some(p) = self.pending.get(&path) else {
                continue;
            };
            // Not live: whatever chunks the failed attempt dropped are asked for.
            let node = if p.from.node == "*" {
                p.entry.modified_by.to_string()
            } else {
                p.from.node.clone()
            };
            self.effects.push_back(Effect::Apply {
                entry: p.entry.clone(),
                conflict_copy: p.conflict_copy.clone(),
                from: Origin { node, live: false },
                needs_space,
            });
        }
        let due = self.schedule.due(now);
        if due.collect {
            self.collect_tombstones();
        }
        if let Some(reply) = due.digest {
            self.send_summary(reply, now);
        }
        self.repair_due(now);
    }

    /// The folder starts at `now`: forgets expired tombstones, and starts the timers.
    pub fn start(&mut self, now: Instant) {
        self.schedule.start(now);
        self.collect_tombstones();
    }

    /// The node (re)connected to the broker: compare full state with every peer, so
    /// catch-up never relies on the broker having queued anything.
    pub fn handle_connected(&mut self, now: Instant) {
        self.schedule.connected(now);
        self.send_summary(true, now);
    }

    pub fn handle_disconnected(&mut self) {
        self.schedule.disconnected();
    }

    /// A patch of a version this node does not hold arrived: compare digests soon (at
    /// most every [`schedule::REPAIR_INTERVAL`]), so the writer sends those entries whole.
    pub fn handle_unknown_base(&mut self, now: Instant) {
        self.schedule.repair(now);
    }

    /// The chunk lists a patch of `path` may edit: the version being applied, then
    /// the one on disk (a patch names its base by id, so at most one matches).
    pub fn patch_bases(&self, path: &RelPath) -> impl Iterator<Item = &Chunks> {
        [self.pending_entry(path), self.entry(path)]
            .into_iter()
            .flatten()
            .filter_map(|e| match &e.content {
                Content::File { chunks, .. } => Some(chunks),
                _ => None,
            })
    }

    /// Pending paths whose apply keeps failing (see [`Failure::Retry`]).
    pub fn failing_count(&self) -> usize {
        self.failing.len()
    }

    /// Pending applies in path order, each with the node it came from and whether its
    /// apply keeps failing (`mqsync pending`; callers take only the first few).
    pub fn pending_paths(&self) -> impl Iterator<Item = (&RelPath, &str, bool)> {
        self.pending
            .iter()
            .map(|(p, v)| (p, v.from.node.as_str(), self.failing.contains(p)))
    }

    /// Pending paths whose apply keeps failing, in path order, with their origin node.
    pub fn failing_paths(&self) -> impl Iterator<Item = (&RelPath, &str)> {
        self.failing.iter().map(|p| {
            let from = self.pending.get(p).map_or("", |v| v.from.node.as_str());
            (p, from)
        })
    }

    /// Paths changed locally on a receive-only folder, in path order.
    pub fn local_change_paths(&self) -> impl Iterator<Item = &RelPath> {
        self.local_changes.keys()
    }

    /// Paths whose failed apply waits for its retry.
    pub fn retrying(&self) -> impl Iterator<Item = &RelPath> {
        self.retries.keys()
    }

    /// The scanner saw `content` at `path` on the local disk (`Content::Deleted` when
    /// the path is absent).
    pub fn handle_local(&mut self, path: RelPath, content: Content) {
        self.handle_local_with(path, content, None);
    }

    /// [`Engine::handle_local`] with the owner and extended attributes the scanner saw
    /// (`None` when the folder keeps neither): a change of them alone is a new version.
    pub fn handle_local_with(&mut self, path: RelPath, content: Content, attrs: SharedAttrs) {
        let current = self.entries.get(&path);
        let attrs = if content.is_deleted() { None } else { attrs };
        let unchanged = match current {
            Some(e) => e.content == content && e.attrs == attrs,
            None => content.is_deleted(),
        };
        if unchanged {
            self.local_changes.remove(&path);
            return;
        }
        if self.mode == Mode::ReceiveOnly {
            self.local_changes.insert(path, ());
            return;
        }
        let version = current
            .map(|e| e.version.clone())
            .unwrap_or_default()
            .incremented(&self.node);
        let local = Entry {
            path: path.clone(),
            version,
            modified_by: self.node.clone(),
            changed_ms: self.now_ms,
            content,
            attrs,
        };
        let previous = match (current.map(|e| &e.content), &local.content) {
            (Some(Content::File { chunks, .. }), Content::File { .. }) => Some(chunks.clone()),
            _ => None,
        };
        if let Some(p) = self.take_pending(&path)
            && self.changed_under_apply(&local, p, previous.clone())
        {
            return;
        }
        self.confirm(local.clone());
        self.effects.push_back(Effect::Announce {
            entry: local,
            previous,
        });
    }

    /// A peer published `entry` (in a live manifest or in answer to a digest); no
    /// particular node is asked for its chunks.
    pub fn handle_remote(&mut self, entry: Entry) {
        self.handle_remote_from(entry, &Origin::any());
    }

    /// A peer published `entry` in a message of `from`.
    pub fn handle_remote_from(&mut self, entry: Entry, from: &Origin) {
        if self.mode == Mode::SendOnly {
            return;
        }
        if self.expired(&entry) && !self.entries.contains(&entry.path) {
            return;
        }
        if let Some(p) = self.pending.get(&entry.path) {
            match entry.version.compare(&p.entry.version) {
                Causality::Equal | Causality::Less => return,
                // A concurrent loser loses as to a confirmed entry (its holder gets the
                // winner too and resolves); dropping the winner left this node behind.
                Causality::Concurrent if beats(&p.entry, &entry) && !p.entry.same_data(&entry) => {
                    return;
                }
                Causality::Greater | Causality::Concurrent => {
                    // Re-decide against what is on disk; the old target is dropped
                    // (its author still holds it and resolves when this one reaches it).
                    self.take_pending(&entry.path);
                    self.effects.push_back(Effect::Cancel(entry.path.clone()));
                }
            }
        }
        let local = self.entries.get(&entry.path);
        let (entry, conflict_copy, publish) = match resolve(&self.node, local, &entry) {
            Decision::Ignore => return,
            Decision::Adopt(e) => return self.confirm(e),
            Decision::Install {
                entry,
                conflict_copy,
            } => (entry, conflict_copy, false),
            Decision::Resolve {
                entry,
                conflict_copy,
            } => (entry, conflict_copy, true),
        };
        let conflict_copy = match (conflict_copy, local) {
            (Some(cc), Some(loser)) => self.free_copy_name(loser, cc),
            (cc, _) => cc,
        };
        self.local_changes.remove(&entry.path);
        self.start_apply(entry, conflict_copy, from.clone(), publish);
    }

    /// An operator asked for a resync. On a receive-only folder this puts back the
    /// confirmed version of every path changed locally (removing files created
    /// locally). Comparing with peers is the runtime's part (a digest with reply).
    pub fn handle_resync(&mut self) {
        if self.mode != Mode::ReceiveOnly {
            return;
        }
        let paths: Vec<RelPath> = std::mem::take(&mut self.local_changes)
            .into_keys()
            .collect();
        for p in paths {
            let entry = self.entries.get(&p).cloned().unwrap_or_else(|| Entry {
                attrs: None,
                path: p.clone(),
                // An empty version marks a revert that is not itself a state to record.
                version: VersionVector::new(),
                modified_by: self.node.clone(),
                changed_ms: self.now_ms,
                content: Content::Deleted,
            });
            self.start_apply(entry, None, Origin::any(), false);
        }
    }

    /// The applier finished (or gave up on) making the disk hold `version` at `path`.
    pub fn handle_applied(&mut self, path: &RelPath, version: &VersionVector, ok: bool) {
        let Some(p) = self.pending.get(path) else {
            return;
        };
        if &p.entry.version != version {
            return;
        }
        if let Some(p) = self.take_pending(path)
            && ok
            && !p.entry.version.is_empty()
        {
            let publish = p.publish.then(|| p.entry.clone());
            self.confirm(p.entry);
            if let Some(e) = publish {
                // A resolution, on disk with the loser moved aside: peers take or merge
                // it at once. Not live: whoever lacks chunks asks this node.
                self.effects.push_back(Effect::SendEntries(vec![e]));
            }
        }
    }

    /// The apply of `version` at `path` failed. A retryable failure is tried again
    /// after [`RETRY_AFTER`] with the same entry and conflict copy; a refused one is
    /// given up like `handle_applied(.., false)`.
    pub fn handle_apply_failed(
        &mut self,
        path: &RelPath,
        version: &VersionVector,
        failure: Failure,
        now: Instant,
    ) {
        if self
            .pending
            .get(path)
            .is_none_or(|p| &p.entry.version != version)
        {
            return;
        }
        match failure {
            Failure::Refused => self.handle_applied(path, version, false),
            Failure::Retry {
                needs_space,
                reported,
            } => {
                self.retries
                    .insert(path.clone(), (now + RETRY_AFTER, needs_space));
                if reported {
                    self.failing.insert(path.clone());
                }
            }
        }
    }

    /// `publish`: a version made here, published once written (see `Decision::Resolve`).
    fn start_apply(&mut self, entry: Entry, copy: Option<RelPath>, from: Origin, publish: bool) {
        // A new version replaces a failed one and its retry (and its failure).
        self.retries.remove(&entry.path);
        self.failing.remove(&entry.path);
        self.pending.insert(
            entry.path.clone(),
            Pending {
                entry: entry.clone(),
                conflict_copy: copy.clone(),
                from: from.clone(),
                publish,
            },
        );
        self.effects.push_back(Effect::Apply {
            entry,
            conflict_copy: copy,
            from,
            needs_space: None,
        });
    }

    /// Takes an entry that is being replaced or forgotten out of the digest and the
    /// counts of present files and bytes.
    fn uncount(&mut self, old: &Entry) {
        self.digest.remove(old);
        if !old.content.is_deleted() {
            self.present -= 1;
            self.present_bytes -= old.content.size();
        }
    }

    /// Removes a pending apply with its retry and failure.
    fn take_pending(&mut self, path: &RelPath) -> Option<Pending> {
        self.retries.remove(path);
        self.failing.remove(path);
        self.pending.remove(path)
    }

    fn confirm(&mut self, entry: Entry) {
        if let Some(old) = self.entries.remove(&entry.path) {
            self.uncount(&old);
        }
        self.digest.add(&entry);
        if !entry.content.is_deleted() {
            self.present += 1;
            self.present_bytes += entry.content.size();
        }
        self.entries.insert(entry.clone());
        self.effects.push_back(Effect::Store(entry));
    }
}

#[cfg(test)]
mod tests;
