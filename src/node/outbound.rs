//! What a folder publishes: manifests and patches of local changes in announce order,
//! answers to digests, chunk requests (gathered per addressee and sent once a turn),
//! and the queue of chunks to push, read from local files and sent whole or as deltas
//! under flow control and a per-turn budget.

use super::records::Records;
use super::requests::RequestBatch;
use crate::engine::{Chunks, Content, Engine, Entry, Hash};
use crate::fs::locations::ChunkLocations;
use crate::protocol::delta::{ChunkDelta, Signature};
use crate::protocol::relpath::RelPath;
use crate::protocol::topics::Topics;
use crate::protocol::wire::{self, ChunkData, Envelope, FilePatch, Keys, Message};
use crate::store::index::LocalMeta;
use crate::transfer::compression::Compression;
use crate::transfer::push_window::{ProgressReports, PushWindow};
use crate::transport::Publisher;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::time::Instant;
use tracing::{debug, error};

/// Most chunk bytes per Chunks message (less when `broker.max_message_bytes` is
/// smaller).
const CHUNK_MSG_BYTES: usize = 1 << 20;
/// What a message costs besides its items, at most: the header and MAC of the wire
/// format, the sender's id (at most 64 bytes and its length), the message kind and
/// the list's length.
const MESSAGE_OVERHEAD: usize = wire::HEADER_LEN + wire::MAC_LEN + 65 + 1 + 5 + 16;
/// What a whole chunk costs in a Chunks message besides its bytes: its hash and the
/// length of its data (a varint).
const CHUNK_OVERHEAD: usize = 32 + 3;
/// Serialized entry bytes per manifest message.
const MANIFEST_MSG_BYTES: usize = 512 << 10;
/// Bytes the folder may have queued for publishing before it stops reading chunks.
const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Chunk bytes the writer may publish per turn of its event loop (checked between
/// messages of about 1 MiB). The publisher drains its queue while chunks are read and
/// encoded, so without a bound one call could push a whole first scan (148 MB in one
/// bench run) without reading a single progress report, and the flow-control window
/// never closed.
pub(super) const PUMP_BUDGET: usize = 4 << 20;
/// Bound of [`Outbound::unpushed`]: past it, receivers ask for what was not pushed.
const MAX_UNPUSHED: usize = 65_536;

/// Where the chunks of this node's files are read from, and what the scan saw of each
/// file (a chunk of an unchanged file is not hashed again).
pub(super) struct LocalChunks<'a> {
    root: &'a Path,
    locations: &'a ChunkLocations,
    engine: &'a Engine,
    known: &'a BTreeMap<RelPath, LocalMeta>,
}

impl<'a> LocalChunks<'a> {
    pub fn new(
        root: &'a Path,
        locations: &'a ChunkLocations,
        engine: &'a Engine,
        known: &'a BTreeMap<RelPath, LocalMeta>,
    ) -> Self {
        LocalChunks {
            root,
            locations,
            engine,
            known,
        }
    }

    /// Reads a chunk to push. While its file's metadata is what the scan that hashed
    /// it saw (the test the start-up scan also trusts), the bytes are not hashed again:
    /// that second pass was a quarter of a writer's CPU in the bulk benchmark. A file
    /// changed since is verified, and every receiver checks every chunk's hash anyway.
    fn read(&self, hash: &Hash) -> Option<Vec<u8>> {
        let (path, off, len) = self.locations.find(hash, self.engine)?;
        let file = std::fs::File::open(path.to_local(self.root)).ok()?;
        // The confirmed entry must describe the file too: on a receive-only folder a
        // local change can leave a file that is not the entry's.
        let confirmed = self.engine.entry(&path).map(|e| &e.content);
        let unchanged = self.known.get(&path).is_some_and(|known| {
            matches!(confirmed, Some(Content::File { size, mtime_ns, .. })
                if *size == known.size && *mtime_ns == known.mtime_ns)
                && file
                    .metadata()
                    .is_ok_and(|md| md.is_file() && crate::fs::meta::local_meta(&md) == *known)
        });
        crate::fs::chunks::read_chunk(&file, off, len, (!unchanged).then_some(hash))
    }

    /// Reads and verifies a chunk from whichever local file holds it.
    pub fn read_verified(&self, hash: &Hash) -> Option<Vec<u8>> {
        let (p, off, len) = self.locations.find(hash, self.engine)?;
        crate::fs::chunks::read_verified(&p.to_local(self.root), off, len, hash)
    }
}

/// The folder's publishing side.
pub(super) struct Outbound {
    pub node: String,
    folder: String,
    pub topics: Topics,
    pub keys: Keys,
    pub publisher: Option<Publisher>,
    /// Chunks to publish, with a set to skip duplicates.
    push: VecDeque<Hash>,
    pushing: HashSet<Hash>,
    /// Flow control of chunk pushes: how far behind our receivers are.
    pub window: PushWindow,
    /// Whether chunk messages go out compressed (the folder's `compression`).
    compression: Compression,
    /// Progress still to report to each writer we receive chunks from.
    pub reports: ProgressReports,
    /// Chunks whose push found their file gone: new again for the next scan that
    /// finds them (the renamed file), which pushes them after its manifest.
    unpushed: HashSet<Hash>,
    /// Chunks to push as deltas, with the old chunks to describe them by
    /// ([`crate::protocol::delta::bases`]); pushed whole when asked for again.
    delta_bases: HashMap<Hash, Vec<Hash>>,
    /// Chunk bytes still to publish in this turn of the event loop ([`PUMP_BUDGET`]).
    pump_budget: usize,
    /// The budget ran out with chunks left to push: the loop turns again at once
    /// instead of waiting for the queue to drain (it may already be empty).
    pump_more: bool,
    /// Chunk requests of this turn, sent by [`Outbound::flush_requests`].
    requests: RequestBatch,
    /// A chunk read for a message it did not fit: the next message starts with it
    /// (read once, not twice).
    carried: Option<(Hash, Vec<u8>)>,
    /// Largest MQTT packet to publish (`broker.max_message_bytes`): messages are
    /// sized to fit, and a larger one goes out in parts.
    max_packet: usize,
    /// When each chunk was last published: a request for one published moments ago
    /// comes from a node that got it with everyone else, or will ask again when its
    /// fetch stalls ([`SERVED_WINDOW`]).
    served: HashMap<Hash, Instant>,
}

/// A chunk published this recently is not published again for a request. Shorter than
/// a fetch's stall timeout (3 s), so a node that really missed it gets it on asking
/// again: while N nodes start together each asks for the same chunks, and each answer
/// reaches all of them.
const SERVED_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

impl Outbound {
    pub fn new(
        node: String,
        folder: String,
        topics: Topics,
        keys: Keys,
        compression: crate::transfer::compression::Mode,
        max_packet: usize,
    ) -> Self {
        Outbound {
            node,
            folder,
            topics,
            keys,
            publisher: None,
            push: VecDeque::new(),
            pushing: HashSet::new(),
            window: Default::default(),
            compression: Compression::new(compression),
            reports: Default::default(),
            unpushed: HashSet::new(),
            delta_bases: HashMap::new(),
            pump_budget: PUMP_BUDGET,
            pump_more: false,
            requests: RequestBatch::default(),
            carried: None,
            max_packet,
            served: HashMap::new(),
        }
    }

    /// Starts a turn of the folder's loop: requests asked outside a turn (before the
    /// loop) go out, and a fresh push budget. Returns whether the last turn ran out of
    /// it (then the loop turns again at once), and whether the loop should wait for
    /// room in the publisher's queue.
    pub fn start_turn(&mut self) -> (bool, bool) {
        self.flush_requests();
        let more = std::mem::take(&mut self.pump_more);
        self.pump_budget = PUMP_BUDGET;
        (more, !self.push.is_empty() && !more)
    }

    /// Whether a chunk of a file a scan found is new to receivers: no local file held
    /// it, or its push found its file gone (it was renamed meanwhile).
    pub fn is_fresh(&mut self, locations: &ChunkLocations, hash: &Hash) -> bool {
        !locations.contains(hash) || self.unpushed.remove(hash)
    }

    /// Queues a chunk a peer asked for; false when it is queued already, or was
    /// published within [`SERVED_WINDOW`].
    pub fn queue_asked(&mut self, hash: Hash, now: Instant) -> bool {
        if self
            .served
            .get(&hash)
            .is_some_and(|t| now.saturating_duration_since(*t) < SERVED_WINDOW)
        {
            return false;
        }
        self.queue(hash)
    }

    /// Queues a chunk to push; false when it is queued already.
    fn queue(&mut self, hash: Hash) -> bool {
        let new = self.pushing.insert(hash);
        if new {
            self.push.push_back(hash);
        }
        new
    }

    /// Asks `to` for chunks: gathered with this turn's other requests to the same node
    /// and sent by [`Outbound::flush_requests`], so a turn that starts many fetches
    /// sends one message per addressee instead of one per file. Order is kept: the
    /// first file's chunks come first, as its sender will push them.
    pub fn request(&mut self, to: String, hashes: Vec<Hash>) {
        self.requests.add(to, hashes);
    }

    /// Sends this turn's requests: per addressee, messages of at most
    /// [`wire::MAX_REQUEST_HASHES`] hashes and of what fits `broker.max_message_bytes`.
    /// Called at the end of every turn of the folder's loop, before it waits, so no
    /// request waits longer than the turn.
    pub fn flush_requests(&mut self) {
        // A hash costs 32 bytes; the addressee's name at most 65.
        let per_message = ((self.message_room().saturating_sub(65)) / 32).max(1);
        for (to, hashes) in self.requests.take() {
            debug!(folder = %self.folder, %to, chunks = hashes.len(), "requesting chunks");
            for part in hashes.chunks(per_message) {
                self.send(Message::Request {
                    to: to.clone(),
                    hashes: part.to_vec(),
                });
            }
        }
    }

    /// Publishes entries in manifests in the engine's announce order; local changes
    /// (`live`) of large files go out as patches of what receivers hold, and their
    /// chunks that are `fresh` follow, in the same order, as deltas where they can.
    pub fn publish_entries(
        &mut self,
        mut entries: Vec<(Entry, Option<Chunks>)>,
        fresh: &mut HashSet<Hash>,
        live: bool,
        chunks: &LocalChunks,
        records: &mut Records,
    ) {
        entries.sort_by(|(a, _), (b, _)| crate::engine::announce_order(a, b));
        let mut push = Vec::new();
        let mut patches = Vec::new();
        let mut whole = Vec::new();
        if live {
            debug!(folder = %self.folder, entries = entries.len(), "announce");
            // A large file's edit goes out as a patch of the chunk list its receivers
            // hold, before the manifests; chunks are pushed in the same order as the
            // files they belong to are announced.
            let mut patched = Vec::new();
            let mut plain = Vec::new();
            for (e, old) in entries {
                match old.as_ref().and_then(|old| FilePatch::of(&e, old)) {
                    Some(p) => patched.push((e, p, old)),
                    None => plain.push((e, old)),
                }
            }
            let order = patched
                .iter()
                .map(|(e, _, old)| (e, old))
                .chain(plain.iter().map(|(e, old)| (e, old)));
            for (e, old) in order {
                if let Content::File { chunks: cs, .. } = &e.content {
                    let first = push.len();
                    for c in cs {
                        if fresh.remove(&c.hash) {
                            push.push(c.hash);
                        }
                    }
                    if let Some(old) = old {
                        for (h, bases) in crate::protocol::delta::bases(old, cs) {
                            if push[first..].contains(&h) {
                                self.delta_bases.insert(h, bases);
                            }
                        }
                    }
                }
            }
            patches = patched.into_iter().map(|(_, p, _)| p).collect();
            whole = plain.into_iter().map(|(e, _)| e).collect();
        } else {
            whole.extend(entries.into_iter().map(|(e, _)| e));
        }
        if !patches.is_empty() {
            debug!(folder = %self.folder, files = patches.len(), "sending patches");
        }
        let room = self.message_room().min(MANIFEST_MSG_BYTES);
        for batch in batches(patches, room, wire::MAX_ENTRIES) {
            self.send(Message::Patch { patches: batch });
        }
        for batch in batches(whole, room, wire::MAX_ENTRIES) {
            self.send(Message::Manifest {
                live,
                entries: batch,
            });
        }
        if !push.is_empty() {
            debug!(folder = %self.folder, chunks = push.len(), "pushing new chunks");
        }
        for h in push {
            self.queue(h);
        }
        self.pump(chunks, records);
    }

    /// Publishes queued chunks while the outgoing queue has room and this turn's
    /// [`PUMP_BUDGET`] lasts.
    pub fn pump(&mut self, chunks: &LocalChunks, records: &mut Records) {
        let Some(p) = self.publisher.clone() else {
            return;
        };
        if !self.delta_bases.is_empty() {
            // Deltas read the signatures of their bases from the index.
            records.flush_signatures();
        }
        while !self.push.is_empty() && p.queued_bytes() < MAX_QUEUED_BYTES {
            if self.pump_budget == 0 {
                self.pump_more = true;
                break;
            }
            let was_waiting = self.window.waiting();
            if !self.window.open(Instant::now()) {
                if !was_waiting {
                    debug!(folder = %self.folder, behind = self.window.behind(Instant::now()), "waiting for receivers to catch up");
                }
                break;
            }
            let (msg, deltas, bytes) = self.fill_message(chunks, records);
            if self.push.is_empty() {
                // Chunks planned as deltas that were never pushed (gone meanwhile).
                self.delta_bases.clear();
            }
            self.pump_budget = self.pump_budget.saturating_sub(bytes);
            let last = msg
                .last()
                .map(|c| c.hash)
                .or_else(|| deltas.last().map(|d| d.hash));
            let Some(last) = last else {
                break;
            };
            let now = Instant::now();
            self.window.pushed(last, bytes as u64, now);
            if self.served.len() > 100_000 {
                self.served
                    .retain(|_, t| now.saturating_duration_since(*t) < SERVED_WINDOW);
            }
            for h in msg
                .iter()
                .map(|c| c.hash)
                .chain(deltas.iter().map(|d| d.hash))
            {
                self.served.insert(h, now);
            }
            let was = self.compression.on();
            self.compression.pushed(bytes as u64, Instant::now());
            if self.compression.on() != was {
                let [off, on] = self
                    .compression
                    .rates()
                    .map(|r| r.map(|r| (r / 1e6).round()));
                debug!(folder = %self.folder, compress = self.compression.on(), mb_s_without = ?off, mb_s_with = ?on, "chunk compression switched");
            }
            if msg.is_empty() {
                debug!(folder = %self.folder, chunks = deltas.len(), bytes = deltas.iter().map(ChunkDelta::data_len).sum::<usize>(), "pushing chunks as deltas");
                self.send(Message::Deltas { deltas });
            } else {
                self.send(Message::Chunks { chunks: msg });
            }
        }
        if self.push.is_empty() {
            self.compression.drained(Instant::now());
        }
    }

    /// Takes queued chunks for one message: whole chunks or deltas, in queue order
    /// (receivers start fetching files in that order, and a file whose chunks arrive
    /// after a later file's counts as overtaken and asks for them again). A message
    /// holds what fits [`Outbound::chunk_room`]; a chunk larger than that goes alone and
    /// is sent in parts.
    fn fill_message(
        &mut self,
        chunks: &LocalChunks,
        records: &mut Records,
    ) -> (Vec<ChunkData>, Vec<ChunkDelta>, usize) {
        let room = self.chunk_room();
        let mut msg = Vec::new();
        let mut deltas = Vec::new();
        let mut bytes = 0;
        let mut size = 0;
        while deltas.len() < wire::MAX_DELTAS {
            let Some(h) = self.push.pop_front() else {
                break;
            };
            self.pushing.remove(&h);
            let carried = self.carried.take().filter(|(c, _)| *c == h);
            let data = match carried {
                Some((_, data)) => data,
                None => {
                    let Some(data) = tokio::task::block_in_place(|| chunks.read(&h)) else {
                        // Its file went before it was read (a temp file renamed into
                        // place at once): the file that holds it now pushes it.
                        debug!(folder = %self.folder, "chunk no longer available locally");
                        if self.unpushed.len() < MAX_UNPUSHED {
                            self.unpushed.insert(h);
                        }
                        continue;
                    };
                    if let Some(sig) = Signature::of(&data) {
                        records.signatures.push((h, sig));
                    }
                    data
                }
            };
            let bases = self.delta_bases.remove(&h);
            let delta = bases.clone().and_then(|b| delta(records, h, &data, b));
            let switches = if delta.is_some() {
                !msg.is_empty()
            } else {
                !deltas.is_empty()
            };
            let cost = match &delta {
                Some(d) => delta_size(d),
                None => data.len() + CHUNK_OVERHEAD,
            };
            if switches || (size > 0 && size + cost > room) {
                // The other kind, or no room left: it starts the next message.
                self.push.push_front(h);
                self.pushing.insert(h);
                if let Some(b) = bases {
                    self.delta_bases.insert(h, b);
                }
                self.carried = Some((h, data));
                break;
            }
            size += cost;
            match delta {
                Some(d) => {
                    bytes += delta_cost(&d) as usize;
                    deltas.push(d);
                }
                None => {
                    bytes += data.len();
                    msg.push(ChunkData { hash: h, data });
                }
            }
        }
        (msg, deltas, bytes)
    }

    /// Room for chunk data in one message: [`CHUNK_MSG_BYTES`], or less when the
    /// broker's packet limit (`broker.max_message_bytes`) is smaller.
    fn chunk_room(&self) -> usize {
        self.message_room().min(CHUNK_MSG_BYTES)
    }

    /// Bytes of items one message may carry under `broker.max_message_bytes`: the
    /// packet limit less the MQTT header and topic, and [`MESSAGE_OVERHEAD`].
    fn message_room(&self) -> usize {
        let topic = self.topics.data(&self.node);
        self.max_packet
            .saturating_sub(wire::parts::packet_overhead(&topic) + MESSAGE_OVERHEAD)
            .max(1)
    }

    pub fn send(&mut self, msg: Message) {
        let Some(p) = &self.publisher else { return };
        let topic = self.topics.data(&self.node);
        let env = Envelope {
            from: self.node.clone(),
            msg,
        };
        let kind = match &env.msg {
            Message::Manifest { .. } => "manifest",
            Message::Chunks { .. } => "chunks",
            Message::Digest { .. } => "digest",
            Message::Request { .. } => "request",
            Message::Progress { .. } => "progress",
            Message::Deltas { .. } => "deltas",
            Message::Patch { .. } => "patch",
            Message::Part { .. } => "part",
            Message::Summary { .. } => "summary",
            Message::Descent { .. } => "descent",
        };
        // Chunk data is compressed as the folder's setting (or its measurement)
        // says; everything else always is (small, and compresses well).
        let compress = match &env.msg {
            Message::Chunks { .. } | Message::Deltas { .. } => self.compression.on(),
            _ => true,
        };
        match wire::encode_fitting(&env, &topic, &self.keys, compress, self.max_packet) {
            Ok(payloads) => {
                let folder = self.folder.clone();
                metrics::counter!("mqsync_messages_sent_total", "folder" => folder.clone(), "kind" => kind).increment(1);
                let bytes: usize = payloads.iter().map(Vec::len).sum();
                metrics::counter!("mqsync_bytes_sent_total", "folder" => folder)
                    .increment(bytes as u64);
                if payloads.len() > 1 {
                    debug!(folder = %self.folder, kind, bytes, parts = payloads.len(), "message larger than broker.max_message_bytes: sent in parts");
                }
                for payload in payloads {
                    p.publish(topic.clone(), payload, false);
                }
            }
            Err(e) => error!(folder = %self.folder, "cannot encode message: {e}"),
        }
    }

    /// Drops the capacity the queues grew to in a busy period.
    pub fn shrink_buffers(&mut self) {
        self.push.shrink_to_fit();
        self.pushing.shrink_to_fit();
        self.unpushed = HashSet::new();
    }
}

/// Chunk `hash` (read as `data`) as a delta of the old chunks `bases`, when their
/// signatures are at hand and the delta carries less than 7/8 of the chunk.
fn delta(records: &Records, hash: Hash, data: &[u8], bases: Vec<Hash>) -> Option<ChunkDelta> {
    let (bases, sigs): (Vec<Hash>, Vec<Signature>) = tokio::task::block_in_place(|| {
        bases
            .into_iter()
            .filter_map(|b| Some((b, records.signature(&b)?)))
            .unzip()
    });
    if sigs.is_empty() {
        return None;
    }
    let ops = crate::protocol::delta::diff(data, &sigs.iter().collect::<Vec<_>>());
    let d = ChunkDelta {
        hash,
        len: data.len() as u32,
        bases,
        ops,
    };
    (d.data_len() < data.len() / 8 * 7).then_some(d)
}

/// What a delta counts for in push budgets and flow control: its new bytes, and at
/// least an eighth of its chunk (a receiver reads its bases, and a message of deltas
/// that carry almost nothing must still end).
pub(super) fn delta_cost(d: &ChunkDelta) -> u64 {
    d.data_len().max(d.len as usize / 8) as u64
}

/// What a delta costs in a Deltas message, at most: its new bytes, each step's
/// varints, its bases' hashes and its own hash and lengths.
fn delta_size(d: &ChunkDelta) -> usize {
    d.data_len() + 12 * d.ops.len() + 32 * d.bases.len() + 48
}

/// Splits `items` into message batches of about `max_bytes` encoded and at most
/// `max_items` each, in order.
fn batches<T: serde::Serialize + wire::extension::HasAttrs>(
    items: Vec<T>,
    max_bytes: usize,
    max_items: usize,
) -> Vec<Vec<T>> {
    let mut out = vec![];
    let mut batch = Vec::new();
    let mut size = 0;
    for item in items {
        // Attributes travel in the message's extension, outside the item's encoding.
        let len = postcard::experimental::serialized_size(&item).unwrap_or(256)
            + wire::extension::attrs_size(&item);
        if !batch.is_empty() && (size + len > max_bytes || batch.len() >= max_items) {
            out.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += len;
        batch.push(item);
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}
