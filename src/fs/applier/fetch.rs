//! Files being assembled: each fetch's temp file and the chunks it still misses, the
//! cache of recently received chunks, and the requests for chunks that stalled or were
//! overtaken. A file complete here is staged for [`Applier::commit`].

use super::outcome::io_err;
use super::parent::ParentDir;
use super::{Applier, ApplyError, Outcome, temp_name};
use crate::engine::{Content, Entry, Hash};
use crate::protocol::chunker;
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One file being assembled in its temp file next to the target.
pub(super) struct Fetch {
    pub(super) entry: Entry,
    pub(super) conflict_copy: Option<RelPath>,
    pub(super) expected: Option<LocalMeta>,
    pub(super) parent: Arc<ParentDir>,
    /// The temp file's name in `parent`.
    pub(super) tmp: String,
    pub(super) file: File,
    pub(super) missing: HashMap<Hash, Vec<u64>>,
    pub(super) source: String,
    pub(super) last_progress: Instant,
    pub(super) requests: u32,
    /// Start order among fetches: pushed chunks arrive in this order per source.
    pub(super) seq: u64,
    /// Bytes written into `file` since its writeback was last started.
    pub(super) unflushed: u64,
}

/// Requests without progress after which a fetch is given up ([`Applier::abandoned`]):
/// 20 at the node's 3 s stall interval is a minute.
pub const GIVE_UP_REQUESTS: u32 = 20;

/// Bytes written into a temp file between two [`release_cache`] calls, and the size
/// from which a file leaves the page cache once it is durable.
pub(super) const RELEASE_EVERY: u64 = 4 << 20;

impl Fetch {
    fn wrote(&mut self, bytes: u64) {
        self.unflushed += bytes;
        if self.unflushed >= RELEASE_EVERY {
            release_cache(&self.file);
            self.unflushed = 0;
        }
    }
}

/// `POSIX_FADV_DONTNEED` on the whole file: starts writing its dirty pages to disk
/// without waiting, and drops the pages already written, like `dd oflag=nocache`.
/// Called every [`RELEASE_EVERY`] bytes while a large file arrives and once after its
/// flush, so a large transfer neither evicts the applications' cache nor makes the
/// commit's fsync (which blocks the node's loop) write the whole file. Fresh page-cache
/// pages also cost far more than reused ones on VMs that hand freed memory back to the
/// host: there, writing 1 GiB this way took 0.2 s of CPU instead of 2.7 s. Only a
/// hint: durability still comes from the commit's fsync or syncfs, which reports
/// errors.
pub(super) fn release_cache(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

/// Recently received chunks: ones nobody asked for yet (they may precede their
/// manifest), and ones just written into a file (wanted again by a copy or a rename).
pub(super) struct ChunkCache {
    pub(super) map: HashMap<Hash, Vec<u8>>,
    order: VecDeque<Hash>,
    bytes: usize,
    limit: usize,
}

impl ChunkCache {
    /// An empty cache holding at most `limit` bytes.
    pub(super) fn new(limit: usize) -> Self {
        ChunkCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    fn insert(&mut self, hash: Hash, data: Vec<u8>) {
        if data.len() > self.limit || self.map.contains_key(&hash) {
            return;
        }
        self.bytes += data.len();
        self.map.insert(hash, data);
        self.order.push_back(hash);
        while self.bytes > self.limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }
}

/// Requests to send: which node to ask, for which chunks.
pub type ChunkRequests = Vec<(String, Vec<Hash>)>;

/// Each source's hashes sorted, without repeats (fetches may share chunks).
fn requests(by_source: HashMap<String, Vec<Hash>>) -> ChunkRequests {
    by_source
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            v.dedup();
            (k, v)
        })
        .collect()
}

impl Applier {
    /// A chunk arrived from the network. Returns the applies it completed.
    pub fn on_chunk(&mut self, hash: Hash, data: Vec<u8>) -> Vec<Outcome> {
        if chunker::hash(&data) != hash {
            tracing::warn!("dropping chunk whose content does not match its hash");
            return vec![];
        }
        self.on_verified_chunk(hash, data)
    }

    /// Whether a fetch in flight waits for this chunk.
    pub fn wants(&self, hash: &Hash) -> bool {
        self.needs.contains_key(hash)
    }

    /// Whether this chunk waits among the early arrivals for a fetch to start.
    pub fn has_cached(&self, hash: &Hash) -> bool {
        self.cache.map.contains_key(hash)
    }

    /// [`Applier::on_chunk`] for a chunk whose bytes the caller checked against `hash`.
    pub fn on_verified_chunk(&mut self, hash: Hash, data: Vec<u8>) -> Vec<Outcome> {
        let Some(paths) = self.needs.remove(&hash) else {
            self.cache.insert(hash, data);
            return vec![];
        };
        let mut out = vec![];
        for p in paths {
            let Some(f) = self.fetches.get_mut(&p) else {
                continue;
            };
            let Some(offsets) = f.missing.remove(&hash) else {
                continue;
            };
            let mut failed = None;
            for off in offsets {
                if let Err(e) = f.file.write_all_at(&data, off) {
                    failed = Some(e);
                    break;
                }
                f.wrote(data.len() as u64);
            }
            f.last_progress = Instant::now();
            match self.progressed.get_mut(&f.source) {
                Some(s) => *s = (*s).max(f.seq),
                None => {
                    self.progressed.insert(f.source.clone(), f.seq);
                }
            }
            if let Some(e) = failed {
                if let Some(f) = self.fetches.remove(&p) {
                    let _ = f.parent.remove_file(&f.tmp);
                    out.push(Outcome::Failed {
                        error: ApplyError::Io {
                            path: f.parent.shown(p.file_name()),
                            source: e,
                        },
                        entry: f.entry,
                        conflict_copy: f.conflict_copy,
                    });
                }
                continue;
            }
            if f.missing.is_empty()
                && let Some(f) = self.fetches.remove(&p)
            {
                out.push(self.finish_file(f));
            }
        }
        // Kept a while: the same content often arrives again under another name at
        // once (a temp file renamed into place, a copy), before this file is
        // committed and can be read back from the disk.
        self.cache.insert(hash, data);
        out
    }

    /// Fetches that asked [`GIVE_UP_REQUESTS`] times without progress, taken out (their
    /// temp files removed) and returned as failed: no node holds or serves what they
    /// miss. Seen in the fault campaign after a partition healed (docs/RELIABILITY.md):
    /// a version whose chunks were superseded everywhere was asked for every 3 s for
    /// ever, and its node never converged.
    pub fn abandoned(&mut self, now: Instant, after: Duration) -> Vec<Outcome> {
        let gone: Vec<RelPath> = self
            .fetches
            .iter()
            .filter(|(_, f)| {
                f.requests >= GIVE_UP_REQUESTS
                    && !f.missing.is_empty()
                    && now.duration_since(f.last_progress) >= after
            })
            .map(|(p, _)| p.clone())
            .collect();
        let mut out = Vec::new();
        for path in gone {
            let Some(f) = self.fetches.get(&path) else {
                continue;
            };
            let error = ApplyError::Unavailable {
                path: path.clone(),
                chunks: f.missing.len(),
                requests: f.requests,
            };
            let (entry, conflict_copy) = (f.entry.clone(), f.conflict_copy.clone());
            self.cancel(&path);
            out.push(Outcome::Failed {
                entry,
                conflict_copy,
                error,
            });
        }
        out
    }

    /// Chunks of fetches that made no progress for `after`, grouped by the node to ask.
    /// After two unanswered requests a fetch asks every node (`"*"`).
    pub fn stalled(&mut self, now: Instant, after: Duration) -> ChunkRequests {
        let mut by_source: HashMap<String, Vec<Hash>> = HashMap::new();
        for f in self.fetches.values_mut() {
            if f.missing.is_empty()
                || f.requests >= GIVE_UP_REQUESTS
                || now.duration_since(f.last_progress) < after
            {
                continue;
            }
            f.last_progress = now;
            f.requests += 1;
            let to = if f.requests > 2 {
                "*".to_string()
            } else {
                f.source.clone()
            };
            by_source
                .entry(to)
                .or_default()
                .extend(f.missing.keys().copied());
        }
        requests(by_source)
    }

    /// Missing chunks of fetches that a later-started fetch from the same source has
    /// overtaken, grouped by that source; each fetch is asked for this way once. A
    /// writer pushes new chunks in the order it announced their files, so progress on a
    /// later file means an earlier file's chunks were lost on the way (a broker drops
    /// messages for a subscriber that lags too far) or were never pushed (the writer
    /// already held them): asking now beats waiting for the stream to end and stall.
    pub fn overtaken(&mut self, now: Instant) -> ChunkRequests {
        let mut by_source: HashMap<String, Vec<Hash>> = HashMap::new();
        for f in self.fetches.values_mut() {
            let overtaken = self.progressed.get(&f.source).is_some_and(|&p| p > f.seq);
            if f.requests > 0 || f.missing.is_empty() || !overtaken {
                continue;
            }
            f.requests += 1;
            f.last_progress = now;
            by_source
                .entry(f.source.clone())
                .or_default()
                .extend(f.missing.keys().copied());
        }
        requests(by_source)
    }

    /// Records that the missing chunks of the fetch for `path` were just asked for.
    pub fn mark_requested(&mut self, path: &RelPath) {
        if let Some(f) = self.fetches.get_mut(path) {
            f.requests += 1;
        }
    }

    /// Missing chunks of the fetch for `path`, for an immediate request, in the
    /// file's order (a chunk that repeats, once).
    pub fn missing(&self, path: &RelPath) -> Vec<Hash> {
        let Some(f) = self.fetches.get(path) else {
            return vec![];
        };
        let Content::File { chunks, .. } = &f.entry.content else {
            return f.missing.keys().copied().collect();
        };
        let mut seen = HashSet::new();
        chunks
            .iter()
            .map(|c| c.hash)
            .filter(|h| f.missing.contains_key(h) && seen.insert(*h))
            .collect()
    }

    pub(super) fn start_file(
        &mut self,
        entry: Entry,
        conflict_copy: Option<RelPath>,
        expected: Option<LocalMeta>,
        source: &str,
        local: &dyn Fn(&Hash) -> Option<Vec<u8>>,
    ) -> Outcome {
        let path = entry.path.clone();
        let fail = |error| Outcome::Failed {
            entry: entry.clone(),
            conflict_copy: conflict_copy.clone(),
            error,
        };
        let Content::File { size, chunks, .. } = &entry.content else {
            return Outcome::Waiting;
        };
        let parent = match self.parent_of(&path) {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let tmp = temp_name(path.file_name());
        let file = match parent.create_new(&tmp) {
            Ok(f) => f,
            Err(e) => {
                // A shared parent may have been removed meanwhile: the retry opens it
                // again from the root.
                self.forget_parent(&path);
                return fail(ApplyError::Io {
                    path: parent.shown(&tmp),
                    source: e,
                });
            }
        };
        // Chunks written at their offsets extend the file to its size anyway; sizing it
        // first only matters when a later chunk may land before an earlier one.
        if chunks.len() > 1
            && let Err(e) = file.set_len(*size)
        {
            let _ = parent.remove_file(&tmp);
            return fail(ApplyError::Io {
                path: parent.shown(&tmp),
                source: e,
            });
        }
        let mut missing: HashMap<Hash, Vec<u64>> = HashMap::new();
        // Where a chunk found here was already written into the temp file: a repeat is
        // copied from there. Only offsets are kept, so a large file's delta never holds
        // its unchanged chunks in memory.
        let mut written: HashMap<Hash, u64> = HashMap::new();
        let mut unflushed = 0;
        for (off, c) in chunker::offsets(chunks) {
            let data = if let Some(&at) = written.get(&c.hash) {
                let mut d = vec![0u8; c.len as usize];
                file.read_exact_at(&mut d, at).ok().map(|()| d)
            } else {
                self.cache
                    .map
                    .get(&c.hash)
                    .cloned()
                    .or_else(|| local(&c.hash))
            };
            match data {
                Some(d) => {
                    written.entry(c.hash).or_insert(off);
                    if let Err(e) = file.write_all_at(&d, off) {
                        let _ = parent.remove_file(&tmp);
                        return fail(ApplyError::Io {
                            path: parent.shown(&tmp),
                            source: e,
                        });
                    }
                    unflushed += d.len() as u64;
                    if unflushed >= RELEASE_EVERY {
                        release_cache(&file);
                        unflushed = 0;
                    }
                }
                None => missing.entry(c.hash).or_default().push(off),
            }
        }
        let fetch = Fetch {
            entry,
            conflict_copy,
            expected,
            parent,
            tmp,
            file,
            missing,
            source: source.to_string(),
            last_progress: Instant::now(),
            requests: 0,
            seq: self.next_seq,
            unflushed,
        };
        self.next_seq += 1;
        if fetch.missing.is_empty() {
            return self.finish_file(fetch);
        }
        for h in fetch.missing.keys() {
            self.needs.entry(*h).or_default().push(path.clone());
        }
        self.fetches.insert(path, fetch);
        Outcome::Waiting
    }

    /// Sets the complete file's owner, attributes, mode and time (in that order: a
    /// chown clears set-id bits) and stages it for the next commit.
    fn finish_file(&mut self, f: Fetch) -> Outcome {
        let Content::File { mode, mtime_ns, .. } = f.entry.content else {
            return Outcome::Waiting;
        };
        let shown = f.parent.shown(f.entry.path.file_name());
        let res = (|| {
            let replaced = f.parent.owner(f.entry.path.file_name());
            self.keep
                .apply_fd(&f.file, &f.entry.attrs, self.chown, replaced)
                .map_err(io_err(&shown))?;
            f.file
                .set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io_err(&shown))?;
            let mtime = filetime::FileTime::from_unix_time(
                mtime_ns.div_euclid(1_000_000_000),
                mtime_ns.rem_euclid(1_000_000_000) as u32,
            );
            filetime::set_file_handle_times(&f.file, None, Some(mtime)).map_err(io_err(&shown))
        })();
        match res {
            Ok(()) => {
                self.staged.push(f);
                Outcome::Staged
            }
            Err(error) => {
                let _ = f.parent.remove_file(&f.tmp);
                Outcome::Failed {
                    entry: f.entry,
                    conflict_copy: f.conflict_copy,
                    error,
                }
            }
        }
    }
}
