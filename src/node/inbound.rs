//! What a folder receives on its data topics: each message is decoded and verified
//! (MAC, bounds), then handed on with its sender: entries and patches to the engine,
//! chunks (checked against their hashes, deltas rebuilt) to the applier, requests
//! and progress to the outbound side.

use super::folder::Folder;
use super::outbound::delta_cost;
use crate::engine::{Hash, Mode, Origin, Summary};
use crate::protocol::chunker;
use crate::protocol::delta::{ChunkDelta, Signature};
use crate::protocol::wire::parts::Joined;
use crate::protocol::wire::{self, Envelope, FilePatch, Message};
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tracing::{debug, warn};

impl Folder {
    /// A message on a data topic: decoded and verified under the group key, or
    /// counted and dropped.
    pub(super) fn on_data(&mut self, topic: &str, payload: &[u8]) {
        let Some(sender) = self.out.topics.data_sender(topic) else {
            return;
        };
        if sender == self.out.node {
            return;
        }
        let folder = self.cfg.id.clone();
        metrics::counter!("mqsync_messages_received_total", "folder" => folder.clone())
            .increment(1);
        metrics::counter!("mqsync_bytes_received_total", "folder" => folder.clone())
            .increment(payload.len() as u64);
        match wire::decode(payload, topic, sender, &self.out.keys) {
            Ok(Envelope {
                msg:
                    Message::Part {
                        id,
                        total,
                        offset,
                        data,
                    },
                ..
            }) => {
                self.health.trust.verified(sender, Instant::now());
                match self.parts.add(sender, id, total, offset, &data) {
                    Joined::Waiting => {}
                    Joined::Dropped(why) => {
                        debug!(folder = %self.cfg.id, %sender, "dropping a message in parts: {why}")
                    }
                    Joined::Complete(whole) => {
                        match wire::decode(&whole, topic, sender, &self.out.keys) {
                            Ok(Envelope {
                                msg: Message::Part { .. },
                                ..
                            }) => {
                                warn!(folder = %self.cfg.id, %sender, "dropping a part made of parts")
                            }
                            Ok(env) => self.on_message(env),
                            Err(e) => {
                                warn!(folder = %self.cfg.id, %topic, bytes = whole.len(), "dropping a message joined from parts: {e}")
                            }
                        }
                    }
                }
            }
            Ok(env) => {
                self.health.trust.verified(sender, Instant::now());
                self.on_message(env)
            }
            Err(e) => {
                // Judged per sender: a peer none of whose messages verify has
                // another group key, and the status says so (node/trust.rs).
                if matches!(e, wire::DecodeError::BadMac) {
                    self.health.trust.failed(sender, Instant::now());
                }
                if let wire::DecodeError::UnknownKind(kind) = e {
                    debug!(folder = %self.cfg.id, %topic, kind, "ignoring a message of a newer kind");
                    return;
                }
                metrics::counter!("mqsync_messages_rejected_total", "folder" => folder)
                    .increment(1);
                warn!(folder = %self.cfg.id, %topic, bytes = payload.len(), "dropping message: {e}")
            }
        }
    }

    fn on_message(&mut self, env: Envelope) {
        if self.health.paused.is_some() {
            return;
        }
        let now = Instant::now();
        self.out.window.hello(&env.from, now);
        let from = env.from;
        match env.msg {
            Message::Manifest { live, entries } => {
                let origin = Origin { node: from, live };
                for e in entries {
                    if !self.local.ignore.is_ignored(&e.path) {
                        self.engine.handle_remote_from(e, &origin);
                    }
                }
            }
            Message::Chunks { chunks } => {
                self.last_chunk_at = Some(now);
                let bytes: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
                if let Some(last) = chunks.last().map(|c| c.hash) {
                    self.report_progress(&from, last, bytes, now);
                }
                for c in chunks {
                    self.take_chunk(&from, c.hash, c.data);
                }
            }
            Message::Deltas { deltas } => {
                self.last_chunk_at = Some(now);
                if let Some(last) = deltas.last().map(|d| d.hash) {
                    let bytes = deltas.iter().map(delta_cost).sum();
                    self.report_progress(&from, last, bytes, now);
                }
                self.take_deltas(&from, deltas);
            }
            Message::Patch { patches } => self.take_patches(&from, patches, now),
            Message::Digest { reply, buckets } => {
                self.engine.handle_digest(&from, &buckets, reply, now);
            }
            Message::Summary {
                to,
                reply,
                round,
                groups,
            } => {
                let s = Summary {
                    to: &to,
                    reply,
                    round,
                    groups: &groups,
                };
                self.engine.handle_summary(&from, &s, now);
            }
            Message::Descent { to, items } => {
                self.engine.handle_descent(&from, &to, &items, now);
            }
            Message::Progress { to, last } => {
                if to == self.out.node {
                    self.out.window.progress(&from, &last, now);
                }
                return;
            }
            // Joined in `on_data`; one that is itself made of parts is dropped there.
            Message::Part { .. } => return,
            Message::Request { to, hashes } => {
                if to == self.out.node || to == "*" {
                    let found = self.locations.relocate_asked(&hashes, &self.engine, now);
                    if found > 0 {
                        debug!(folder = %self.cfg.id, %from, chunks = found, "found asked chunks in other files");
                    }
                    let n = hashes
                        .into_iter()
                        .filter(|h| self.locations.contains(h) && self.out.queue_asked(*h, now))
                        .count();
                    if n > 0 {
                        debug!(folder = %self.cfg.id, %from, chunks = n, "serving chunks");
                    }
                }
                return;
            }
        }
        self.process();
    }

    /// Tells a writer how far its pushes have arrived, when the report is due.
    fn report_progress(&mut self, writer: &str, last: Hash, bytes: u64, now: Instant) {
        if let Some(last) = self.out.reports.received(writer, last, bytes, now) {
            self.out.send(Message::Progress {
                to: writer.to_string(),
                last,
            });
        }
    }

    /// Patches of large files: expanded against the version this node holds (the
    /// engine names it), or, for an unknown base, a repair is asked for.
    fn take_patches(&mut self, from: &str, patches: Vec<FilePatch>, now: Instant) {
        let origin = Origin {
            node: from.to_string(),
            live: true,
        };
        let mut unknown_base = 0;
        let mut seen = HashSet::new();
        for p in patches {
            // One patch per path and message: each costs a hash of the list it edits.
            if self.local.ignore.is_ignored(&p.path) || !seen.insert(p.path.clone()) {
                continue;
            }
            let expanded = self
                .engine
                .patch_bases(&p.path)
                .map(|chunks| p.expand(chunks))
                .find(|r| !matches!(r, Ok(None)));
            match expanded {
                Some(Ok(Some(e))) => self.engine.handle_remote_from(e, &origin),
                Some(Ok(None)) | None => unknown_base += 1,
                Some(Err(e)) => warn!(folder = %self.cfg.id, %from, "dropping a patch: {e}"),
            }
        }
        if unknown_base > 0 {
            // This node lacks the version a patch edits: comparing digests makes the
            // writer send its entries of those paths whole.
            debug!(folder = %self.cfg.id, %from, patches = unknown_base, "patch of a version this node does not hold; comparing digests");
            self.engine.handle_unknown_base(now);
        }
    }

    /// Chunks sent as deltas: rebuilt from the old chunks they name; one that cannot
    /// be rebuilt but is wanted is asked for whole.
    fn take_deltas(&mut self, from: &str, deltas: Vec<ChunkDelta>) {
        let mut refetch = vec![];
        // Old chunks read for this message, and chunks already tried: a message
        // naming the same chunk or base again costs no second read.
        let mut bases: HashMap<Hash, Option<Vec<u8>>> = HashMap::new();
        let mut tried = HashSet::new();
        for d in deltas {
            if !tried.insert(d.hash) {
                continue;
            }
            let applier = &self.applies.applier;
            let wanted = applier.wants(&d.hash);
            // A delta may arrive before its file's fetch starts (every apply slot
            // busy): rebuilt now, the chunk waits in the applier's cache like a whole
            // chunk would. Skipped where nothing would use it: the chunk is here
            // already, or this folder applies no remote change.
            if !wanted
                && (self.cfg.mode == Mode::SendOnly
                    || applier.has_cached(&d.hash)
                    || self.locations.contains(&d.hash))
            {
                continue;
            }
            match self.rebuild(&d, &mut bases) {
                Ok(data) => self.take_chunk(from, d.hash, data),
                Err(e) if wanted => {
                    debug!(folder = %self.cfg.id, %from, "cannot rebuild a chunk from its delta ({e}); asking for it whole");
                    refetch.push(d.hash);
                }
                // Not asked for here: a fetch that starts later asks for it.
                Err(_) => {}
            }
        }
        if !refetch.is_empty() {
            self.out.request(from.to_string(), refetch);
        }
    }

    /// A chunk from the network: checked against its hash, its signature kept (a later
    /// local edit can then go out as a delta), and handed to the applier.
    fn take_chunk(&mut self, from: &str, hash: Hash, data: Vec<u8>) {
        if chunker::hash(&data) != hash {
            warn!(folder = %self.cfg.id, %from, "dropping a chunk whose content does not match its hash");
            return;
        }
        if let Some(sig) = Signature::of(&data) {
            self.records.signatures.push((hash, sig));
        }
        // A failed write (a full disk) is retried like any failed apply: dropping it
        // here left the file pending for good.
        for o in self.applies.applier.on_verified_chunk(hash, data) {
            self.on_outcome(o);
        }
    }

    /// Rebuilds a chunk from a delta and the old chunks it names, read from local files
    /// (or from `read`, the ones this message already read).
    fn rebuild(
        &self,
        d: &ChunkDelta,
        read: &mut HashMap<Hash, Option<Vec<u8>>>,
    ) -> Result<Vec<u8>, String> {
        if read.len() + d.bases.len() > 2 * crate::protocol::delta::MAX_BASES {
            // Kept for deltas of neighbouring chunks; bounded against a message naming
            // many different bases.
            read.clear();
        }
        let chunks = self.local_chunks();
        for b in &d.bases {
            read.entry(*b)
                .or_insert_with(|| tokio::task::block_in_place(|| chunks.read_verified(b)));
        }
        let bases = d
            .bases
            .iter()
            .map(|b| read.get(b).and_then(|d| d.as_deref()))
            .collect::<Option<Vec<&[u8]>>>()
            .ok_or("an old chunk it edits is not on this node")?;
        crate::protocol::delta::patch(d, &bases).map_err(|e| e.to_string())
    }
}
