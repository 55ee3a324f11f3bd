//! Makes the disk hold an entry: files are assembled in a temp file next to their
//! target from local chunks (renames and copies cost no transfer) and received chunks,
//! then staged and, at the next commit, flushed (one `syncfs` per batch) and renamed
//! into place, so a half-received file is never visible under its name. Every write stays below the folder root: no path component on the way may
//! be a symlink (parents are opened with `O_NOFOLLOW` and held open, so one swapped in
//! during an apply changes nothing), and the target is re-checked against what the index expects before it
//! is replaced, so a local edit made meanwhile is never overwritten blindly.

use crate::engine::{Content, Entry, Hash, VersionVector};
use crate::fs::scanner::TEMP_INFIX;
use crate::protocol::chunker;
use crate::protocol::relpath::RelPath;
use crate::store::index::LocalMeta;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

mod parent;
use parent::ParentDir;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: a parent is a symlink or not a directory; refusing to write through it")]
    UnsafeParent(PathBuf),
    #[error("{0}: changed locally since it was indexed; rescanning")]
    ChangedLocally(PathBuf),
    #[error("{0}: directory not empty yet")]
    NotEmpty(PathBuf),
    /// Checked by the node before an apply; retried, since the twin may go away.
    #[error("{0}")]
    CaseCollision(crate::fs::casefold::Collision),
}

impl ApplyError {
    /// Worth trying again later without new information (e.g. a full disk).
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            ApplyError::ChangedLocally(_) | ApplyError::UnsafeParent(_)
        )
    }

    /// The file system (or the user's quota) is full: a retry is worth it only once
    /// space is back.
    pub fn no_space(&self) -> bool {
        matches!(self, ApplyError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)))
    }
}

/// Bytes an unprivileged writer can still use on the file system holding `path`
/// (`None` if it cannot be asked).
pub fn free_space(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The result of starting or advancing an apply.
#[derive(Debug)]
pub enum Outcome {
    Done {
        path: RelPath,
        version: VersionVector,
        /// What is now on disk (`None`: absent).
        meta: Option<LocalMeta>,
        /// Where the local loser of a conflict was moved.
        conflict_copy: Option<RelPath>,
    },
    /// The entry and conflict copy come back with the error, so a failure worth
    /// retrying (a full disk) can be tried again wherever it surfaced.
    Failed {
        entry: Entry,
        conflict_copy: Option<RelPath>,
        error: ApplyError,
    },
    /// Waiting for chunks from the network.
    Waiting,
    /// Written to its temp file; [`Applier::commit`] makes it durable and renames it
    /// into place, together with the other files staged since the last commit.
    Staged,
}

struct Fetch {
    entry: Entry,
    conflict_copy: Option<RelPath>,
    expected: Option<LocalMeta>,
    parent: Arc<ParentDir>,
    /// The temp file's name in `parent`.
    tmp: String,
    file: File,
    missing: HashMap<Hash, Vec<u64>>,
    source: String,
    last_progress: Instant,
    requests: u32,
    /// Start order among fetches: pushed chunks arrive in this order per source.
    seq: u64,
    /// Bytes written into `file` since its writeback was last started.
    unflushed: u64,
}

/// Bytes written into a temp file between two [`release_cache`] calls, and the size
/// from which a file leaves the page cache once it is durable.
const RELEASE_EVERY: u64 = 4 << 20;

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
fn release_cache(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

/// Recently received chunks: ones nobody asked for yet (they may precede their
/// manifest), and ones just written into a file (wanted again by a copy or a rename).
struct ChunkCache {
    map: HashMap<Hash, Vec<u8>>,
    order: VecDeque<Hash>,
    bytes: usize,
    limit: usize,
}

impl ChunkCache {
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

/// How long a parent directory opened for one file is reused for the next files into
/// it while applies hold it open: a burst of small files into one directory then opens
/// it once, not once per file. A directory moved or removed locally is forgotten as
/// soon as the watcher reports it ([`Applier::forget_dir`]), and after this time in any
/// case.
const PARENT_REUSE: Duration = Duration::from_secs(1);

pub struct Applier {
    root: PathBuf,
    fetches: HashMap<RelPath, Fetch>,
    /// Parent directories of files being applied, by their path below the root.
    parents: BTreeMap<String, (Weak<ParentDir>, Instant)>,
    /// Complete files waiting for the next [`Applier::commit`].
    staged: Vec<Fetch>,
    /// Files removed since the last commit, with the version removed: the commit makes
    /// the removals durable (one `syncfs`) and reports them. Paths only: a descriptor
    /// per removal ran out of descriptors on a large renamed tree.
    deleted: HashMap<RelPath, VersionVector>,
    needs: HashMap<Hash, Vec<RelPath>>,
    cache: ChunkCache,
    next_seq: u64,
    /// Per source, the latest-started fetch that received a chunk.
    progressed: HashMap<String, u64>,
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
    pub fn new(root: PathBuf) -> Self {
        Applier {
            root,
            fetches: HashMap::new(),
            parents: BTreeMap::new(),
            staged: Vec::new(),
            deleted: HashMap::new(),
            needs: HashMap::new(),
            cache: ChunkCache {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                limit: 32 << 20,
            },
            next_seq: 0,
            progressed: HashMap::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.fetches.len() + self.staged.len()
    }

    /// Complete files waiting for [`Applier::commit`].
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Paths removed by deletes that the next commit reports: a scan must not take
    /// their absence for a local deletion.
    pub fn removing(&self) -> &HashMap<RelPath, VersionVector> {
        &self.deleted
    }

    pub fn is_fetching(&self, path: &RelPath) -> bool {
        self.fetches.contains_key(path) || self.staged.iter().any(|f| &f.entry.path == path)
    }

    /// Starts making the disk hold `entry`. `expected` is the disk state the index
    /// knows for the target; `local` returns verified chunk bytes found on this node.
    pub fn start(
        &mut self,
        entry: Entry,
        conflict_copy: Option<RelPath>,
        expected: Option<LocalMeta>,
        source: &str,
        local: &dyn Fn(&Hash) -> Option<Vec<u8>>,
    ) -> Outcome {
        self.cancel(&entry.path);
        let path = entry.path.clone();
        let version = entry.version.clone();
        let res = match &entry.content {
            Content::File { .. } => {
                return self.start_file(entry, conflict_copy, expected, source, local);
            }
            Content::Dir { mode } => self.apply_dir(&path, *mode, expected),
            Content::Symlink { target } => {
                self.apply_symlink(&path, target, expected, conflict_copy.as_ref())
            }
            Content::Deleted => match self.apply_delete(&path, expected) {
                // Made durable by the next commit's one flush, with the files: a
                // directory fsync per deleted file made a renamed tree's deletions
                // take longer than its new files.
                Ok(true) => {
                    self.deleted.insert(path, version);
                    return Outcome::Staged;
                }
                res => res.map(|_| None),
            },
        };
        match res {
            Ok(meta) => Outcome::Done {
                path,
                version,
                meta,
                conflict_copy,
            },
            Err(error) => Outcome::Failed {
                entry,
                conflict_copy,
                error,
            },
        }
    }

    pub fn cancel(&mut self, path: &RelPath) {
        // A removal already happened: it is still reported at the commit (before any
        // file of the same path), so the node knows the path is gone.
        if let Some(i) = self.staged.iter().position(|f| &f.entry.path == path) {
            let f = self.staged.swap_remove(i);
            let _ = f.parent.remove_file(&f.tmp);
        }
        if let Some(f) = self.fetches.remove(path) {
            let _ = f.parent.remove_file(&f.tmp);
            for h in f.missing.keys() {
                if let Some(v) = self.needs.get_mut(h) {
                    v.retain(|p| p != path);
                    if v.is_empty() {
                        self.needs.remove(h);
                    }
                }
            }
        }
    }

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

    /// Forgets the open descriptors of `dir` and of directories below it, after the
    /// watcher saw it change: it may have been moved or removed.
    pub fn forget_dir(&mut self, dir: &RelPath) {
        let d = dir.as_str();
        if self.parents.is_empty() {
            return;
        }
        let below: Vec<String> = self
            .parents
            .range::<str, _>((Bound::Included(d), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(d))
            .filter(|k| k.len() == d.len() || k.as_bytes()[d.len()] == b'/')
            .cloned()
            .collect();
        for k in below {
            self.parents.remove(&k);
        }
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

    /// Chunks of fetches that made no progress for `after`, grouped by the node to ask.
    /// After two unanswered requests a fetch asks every node (`"*"`).
    pub fn stalled(&mut self, now: Instant, after: Duration) -> ChunkRequests {
        let mut by_source: HashMap<String, Vec<Hash>> = HashMap::new();
        for f in self.fetches.values_mut() {
            if f.missing.is_empty() || now.duration_since(f.last_progress) < after {
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

    /// Missing chunks of the fetch for `path`, for an immediate request.
    pub fn missing(&self, path: &RelPath) -> Vec<Hash> {
        self.fetches
            .get(path)
            .map(|f| f.missing.keys().copied().collect())
            .unwrap_or_default()
    }

    fn start_file(
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

    /// Sets the complete file's mode and time and stages it for the next commit.
    fn finish_file(&mut self, f: Fetch) -> Outcome {
        let Content::File { mode, mtime_ns, .. } = f.entry.content else {
            return Outcome::Waiting;
        };
        let shown = f.parent.shown(f.entry.path.file_name());
        let res = (|| {
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

    /// Makes the staged files durable and renames them into place. One file is
    /// fsynced on its own (the latency case); a batch is flushed with one `syncfs`
    /// before the renames and one after, instead of two fsyncs per file.
    pub fn commit(&mut self) -> Vec<Outcome> {
        let mut out = self.commit_removals();
        let staged = std::mem::take(&mut self.staged);
        let batch = staged.len() > 1;
        let flushed = match staged.first() {
            Some(f) if batch => f.parent.sync_fs(),
            _ => Ok(()),
        };
        out.reserve(staged.len());
        for f in &staged {
            let shown = f.parent.shown(f.entry.path.file_name());
            let res = match &flushed {
                Err(e) => Err(ApplyError::Io {
                    path: shown,
                    source: std::io::Error::new(e.kind(), e.to_string()),
                }),
                Ok(()) if batch => Ok(()),
                Ok(()) => f.file.sync_all().map_err(io_err(&shown)),
            }
            .inspect(|()| {
                if f.entry.content.size() >= RELEASE_EVERY {
                    release_cache(&f.file);
                }
            })
            .and_then(|()| {
                self.replace(
                    &f.parent,
                    &f.entry.path,
                    &f.tmp,
                    f.expected,
                    f.conflict_copy.as_ref(),
                    !batch,
                )
            });
            let outcome = match res {
                Ok(meta) => Outcome::Done {
                    path: f.entry.path.clone(),
                    version: f.entry.version.clone(),
                    meta,
                    conflict_copy: f.conflict_copy.clone(),
                },
                Err(error) => {
                    let _ = f.parent.remove_file(&f.tmp);
                    // The directory may be gone: a retry opens it again.
                    self.forget_parent(&f.entry.path);
                    Outcome::Failed {
                        entry: f.entry.clone(),
                        conflict_copy: f.conflict_copy.clone(),
                        error,
                    }
                }
            };
            out.push(outcome);
        }
        if batch && let Some(f) = staged.first() {
            // The renames: durable before the index records them as applied.
            let _ = f.parent.sync_fs();
        }
        out
    }

    /// Makes the removals since the last commit durable with one `syncfs` of the
    /// folder's file system and reports them, first: a file staged at the same path
    /// since is reported after, so the node ends up knowing the file.
    fn commit_removals(&mut self) -> Vec<Outcome> {
        if self.deleted.is_empty() {
            return Vec::new();
        }
        let deleted = std::mem::take(&mut self.deleted);
        if let Err(e) = File::open(&self.root)
            .and_then(|root| rustix::fs::syncfs(&root).map_err(io::Error::from))
        {
            // The files are gone either way; should a crash lose the removals, the
            // start-up scan finds the files again and compares them with the index.
            tracing::warn!("flushing removals in {}: {e}", self.root.display());
        }
        deleted
            .into_iter()
            .map(|(path, version)| Outcome::Done {
                path,
                version,
                meta: None,
                conflict_copy: None,
            })
            .collect()
    }

    /// Checks the target still is what the index expects, moves a conflict loser
    /// aside, renames `tmp` over the target and makes the rename durable.
    fn replace(
        &self,
        parent: &ParentDir,
        path: &RelPath,
        tmp: &str,
        expected: Option<LocalMeta>,
        conflict_copy: Option<&RelPath>,
        sync_dirs: bool,
    ) -> Result<Option<LocalMeta>, ApplyError> {
        let name = path.file_name();
        let shown = parent.shown(name);
        let current = parent.meta(name).map_err(io_err(&shown))?;
        if current != expected {
            if let (Some(cur), Some(_)) = (current, expected) {
                tracing::debug!(?cur, ?expected, "target changed");
            }
            if current.is_some() {
                return Err(ApplyError::ChangedLocally(shown));
            }
        }
        if current.is_some_and(|m| m.mode & libc::S_IFMT == libc::S_IFDIR) {
            // A directory cannot be replaced by a file; the engine deletes children
            // first, so an empty one is removed here.
            parent
                .remove_dir(name)
                .map_err(|_| ApplyError::NotEmpty(shown.clone()))?;
        }
        if let (Some(cc), Some(_)) = (conflict_copy, current) {
            let cc_parent = ParentDir::open(&self.root, cc, true)?;
            parent
                .rename(name, &cc_parent, cc.file_name())
                .map_err(io_err(&cc_parent.shown(cc.file_name())))?;
            if sync_dirs {
                cc_parent.sync();
            }
        }
        parent.rename(tmp, parent, name).map_err(io_err(&shown))?;
        if sync_dirs {
            parent.sync();
        }
        parent.meta(name).map_err(io_err(&shown))
    }

    fn forget_parent(&mut self, path: &RelPath) {
        self.parents.remove(parent_key(path));
    }

    /// The open parent directory of `path`, shared with the applies into it that are
    /// still running if it was opened within [`PARENT_REUSE`].
    fn parent_of(&mut self, path: &RelPath) -> Result<Arc<ParentDir>, ApplyError> {
        let dir = parent_key(path);
        let now = Instant::now();
        if let Some((held, at)) = self.parents.get(dir)
            && now.duration_since(*at) < PARENT_REUSE
            && let Some(p) = held.upgrade()
        {
            return Ok(p);
        }
        let p = Arc::new(ParentDir::open(&self.root, path, true)?);
        if self.parents.len() >= 1024 {
            self.parents.retain(|_, (held, at)| {
                held.strong_count() > 0 && now.duration_since(*at) < PARENT_REUSE
            });
        }
        self.parents
            .insert(dir.to_string(), (Arc::downgrade(&p), now));
        Ok(p)
    }

    fn apply_dir(
        &self,
        path: &RelPath,
        mode: u32,
        expected: Option<LocalMeta>,
    ) -> Result<Option<LocalMeta>, ApplyError> {
        let parent = ParentDir::open(&self.root, path, true)?;
        let name = path.file_name();
        let shown = parent.shown(name);
        match parent.meta(name).map_err(io_err(&shown))? {
            Some(m) if m.mode & libc::S_IFMT == libc::S_IFDIR => {}
            Some(m) => {
                if Some(m) != expected {
                    return Err(ApplyError::ChangedLocally(shown));
                }
                parent.remove_file(name).map_err(io_err(&shown))?;
                parent.create_dir(name).map_err(io_err(&shown))?;
            }
            None => parent.create_dir(name).map_err(io_err(&shown))?,
        }
        // Through a descriptor opened without following links: chmod on the path would
        // follow a symlink swapped in since the check.
        parent
            .open_dir(name)
            .and_then(|d| d.set_permissions(fs::Permissions::from_mode(mode)))
            .map_err(io_err(&shown))?;
        parent.sync();
        parent.meta(name).map_err(io_err(&shown))
    }

    fn apply_symlink(
        &self,
        path: &RelPath,
        link_target: &str,
        expected: Option<LocalMeta>,
        conflict_copy: Option<&RelPath>,
    ) -> Result<Option<LocalMeta>, ApplyError> {
        let parent = ParentDir::open(&self.root, path, true)?;
        let tmp = temp_name(path.file_name());
        parent
            .symlink(link_target, &tmp)
            .map_err(io_err(&parent.shown(path.file_name())))?;
        self.replace(&parent, path, &tmp, expected, conflict_copy, true)
            .inspect_err(|_| {
                let _ = parent.remove_file(&tmp);
            })
    }

    /// Removes `path`. Returns whether a file was removed, whose removal is durable
    /// only after a flush ([`Applier::commit`]); a removed directory is flushed here.
    fn apply_delete(
        &self,
        path: &RelPath,
        expected: Option<LocalMeta>,
    ) -> Result<bool, ApplyError> {
        let parent = match ParentDir::open(&self.root, path, false) {
            Ok(p) => p,
            // A parent is gone or unsafe: the path cannot be there (below the root).
            Err(ApplyError::UnsafeParent(_)) => return Ok(false),
            Err(ApplyError::Io { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
            {
                return Ok(false);
            }
            // Anything else (out of descriptors, permission) may pass: retried.
            Err(e) => return Err(e),
        };
        let name = path.file_name();
        let shown = parent.shown(name);
        match parent.meta(name).map_err(io_err(&shown))? {
            None => Ok(false),
            Some(m) if m.mode & libc::S_IFMT == libc::S_IFDIR => match parent.remove_dir(name) {
                Ok(()) => {
                    parent.sync();
                    Ok(false)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(_) => Err(ApplyError::NotEmpty(shown)),
            },
            Some(m) => {
                if Some(m) != expected {
                    return Err(ApplyError::ChangedLocally(shown));
                }
                parent.remove_file(name).map_err(io_err(&shown))?;
                Ok(true)
            }
        }
    }
}

/// Creates missing parent directories of `rel` below `root`, refusing to pass through
/// a symlink or a non-directory (which could lead outside the root).
pub fn ensure_parents(root: &Path, rel: &RelPath) -> Result<(), ApplyError> {
    ParentDir::open(root, rel, true).map(|_| ())
}

/// The path of `path`'s parent below the root ("" for the root itself).
fn parent_key(path: &RelPath) -> &str {
    path.as_str().rsplit_once('/').map_or("", |(d, _)| d)
}

/// A temp file's name next to the file `name`: hidden, marked for the scanner to skip,
/// and unique enough that an interrupted apply's leftover never collides.
fn temp_name(name: &str) -> String {
    let mut cut = name.len().min(200);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let tag: u32 = rand::random();
    format!(".{}{TEMP_INFIX}{tag:08x}", &name[..cut])
}

#[cfg(test)]
mod tests;
