//! The runtime of one node: for each folder, a task that owns the engine and drives it
//! from the watcher, the scanner, the MQTT transport and the applier, carrying out the
//! engine's effects (publish, store, apply). All I/O of the sync path meets here; the
//! decisions stay in `engine`.

use crate::engine::{Chunks, Content, Digest, Effect, Engine, Entry, Hash, Mode};
use crate::fs::applier::{Applier, ApplyError, Outcome};
use crate::fs::casefold::CaseFolds;
use crate::fs::locations::ChunkLocations;
use crate::fs::scanner::{Ignore, MARKER, Observed, Scanner};
use crate::fs::watcher::{self, FsEvent};
use crate::ops::status::{FolderStatus, State};
use crate::protocol::chunker;
use crate::protocol::delta::{ChunkDelta, Signature};
use crate::protocol::relpath::RelPath;
use crate::protocol::topics::Topics;
use crate::protocol::wire::{self, ChunkData, Envelope, FilePatch, Keys, Message};
use crate::store::index::{Index, IndexError, LocalMeta, Record};
use crate::transport::{self, ConnectSettings, NetEvent, Publisher};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

mod from_config;
pub use from_config::folder_settings;

/// Chunk bytes per Chunks message before another message is started.
const CHUNK_MSG_BYTES: usize = 1 << 20;
/// Serialized entry bytes per manifest message.
const MANIFEST_MSG_BYTES: usize = 512 << 10;
/// Bytes the folder may have queued for publishing before it stops reading chunks.
const MAX_QUEUED_BYTES: usize = 16 << 20;
/// How long a fetch may wait for pushed chunks before asking for them.
const FETCH_STALL: Duration = Duration::from_secs(3);
/// Network events taken in one loop turn before staged files are committed.
const MAX_BATCH_EVENTS: usize = 256;
/// Chunk bytes the writer may publish per turn of its event loop (checked between
/// messages of about 1 MiB). The publisher drains its queue while chunks are read and
/// encoded, so without a bound one call could push a whole first scan (148 MB in one
/// bench run) without reading a single progress report, and the flow-control window
/// never closed.
const PUMP_BUDGET: usize = 4 << 20;
/// Least time between two digest exchanges asked for by patches of versions this node
/// lacks: a file edited continuously must not make every peer answer each edit.
const PATCH_REPAIR_INTERVAL: Duration = Duration::from_secs(2);
/// Chunk signatures collected before they are written on their own (about 256 MiB
/// of chunks).
const SIGNATURE_BATCH: usize = 1024;
/// Bound of [`Folder::unpushed`]: past it, receivers ask for what was not pushed.
const MAX_UNPUSHED: usize = 65_536;
/// How often a failed index write (a full state directory) is tried again.
const INDEX_RETRY: Duration = Duration::from_secs(1);
/// How long a failed apply waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Fewest stored changes after which the per-file maps are rebuilt when idle.
const COMPACT_MIN_CHANGES: usize = 10_000;
/// Files a folder may have open for applying (fetching or staged) at once; each holds
/// its temp file and its parent directory open. Further applies wait in order, so a
/// tree of many thousands of files never runs the process out of file descriptors.
const MAX_OPEN_APPLIES: usize = 256;
/// Descriptors left for everything but applies: connections, watches, the index.
const RESERVED_FDS: u64 = 256;

/// Apply slots per folder: [`MAX_OPEN_APPLIES`], fewer when the open-file limit
/// shared by `folders` folders could not hold two descriptors per slot.
fn apply_slots(open_files: Option<u64>, folders: usize) -> usize {
    let Some(limit) = open_files else {
        return MAX_OPEN_APPLIES;
    };
    let per_folder = limit.saturating_sub(RESERVED_FDS) / (2 * folders.max(1) as u64);
    (per_folder as usize).clamp(8, MAX_OPEN_APPLIES)
}

#[derive(Clone)]
pub struct FolderSettings {
    pub id: String,
    pub path: PathBuf,
    pub mode: Mode,
    pub ignore: Vec<String>,
    pub debounce: Duration,
    pub rescan_interval: Duration,
    pub digest_interval: Duration,
    pub status_interval: Duration,
    /// Percent of the folder's files a local scan may delete before it is held.
    pub max_delete_percent: u64,
    /// How long deletion records are kept (`None`: forever).
    pub tombstone_ttl: Option<Duration>,
    /// Run with `sh -c` after a batch of remote changes was applied.
    pub on_change: Option<String>,
    /// Whether chunk data goes out compressed.
    pub compression: crate::transfer::compression::Mode,
}

/// A held mass deletion needs at least this many files: deleting 1 of 2 files is normal.
const MASS_DELETE_MIN_FILES: usize = 10;
/// Local deletions are sent once no new one has been seen for this long.
const DELETE_GRACE: Duration = Duration::from_secs(1);
/// A file this node wrote and deleted within this many ms was transient (a temp file
/// renamed into place): the mass-delete guard does not count it.
const TRANSIENT_MS: u64 = 1_000;
/// Least time between two resyncs of a folder (the cmd topic needs no key).
const RESYNC_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// A command on the public `{prefix}/{folder}/cmd` topic.
#[derive(Debug, serde::Deserialize)]
struct Command {
    op: String,
    #[serde(default = "any_node")]
    node: String,
}

fn any_node() -> String {
    "*".into()
}

#[derive(Clone)]
pub struct NodeSettings {
    pub node_id: String,
    pub state_dir: PathBuf,
    pub topic_prefix: String,
    pub connect: ConnectSettings,
    pub keys: Keys,
    pub folders: Vec<FolderSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("folder {folder}: {source}")]
    Index {
        folder: String,
        #[source]
        source: IndexError,
    },
    #[error("folder {folder}: bad ignore pattern: {source}")]
    Ignore {
        folder: String,
        #[source]
        source: globset::Error,
    },
    #[error("folder {folder}: {path}: {source}")]
    Io {
        folder: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs every folder until `shutdown` turns true.
pub async fn run(settings: NodeSettings, shutdown: watch::Receiver<bool>) -> Result<(), NodeError> {
    let mut tasks = Vec::new();
    for f in &settings.folders {
        tasks.push(spawn_folder(&settings, f, shutdown.clone())?);
    }
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            return Err(e);
        }
    }
    Ok(())
}

/// Opens one folder (its index in `state_dir/folders`) and runs it in its own task
/// until `shutdown` turns true. `settings.folders` is not consulted.
pub fn spawn_folder(
    settings: &NodeSettings,
    folder: &FolderSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), NodeError>>, NodeError> {
    // Setting up the watcher walks the whole tree (one inotify watch per directory) and
    // loading the index reads every record: independent work, done at the same time.
    let root = folder.path.clone();
    let early_watch = tokio::task::spawn_blocking(move || watcher::watch(&root));
    let folder = match Folder::open(settings, folder) {
        Ok(f) => f,
        Err(e) => {
            early_watch.abort();
            return Err(e);
        }
    };
    Ok(tokio::spawn(async move {
        folder.run(shutdown, Some(early_watch)).await
    }))
}

/// The index file of folder `id`.
fn index_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("folders").join(format!("{id}.redb"))
}

/// Deletes what a stopped folder kept in `state_dir` (index, health file), so a folder
/// of the same id starts from nothing.
pub fn forget_folder(state_dir: &Path, id: &str) -> std::io::Result<()> {
    for path in [
        index_path(state_dir, id),
        crate::ops::status::health_file(state_dir, id),
    ] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Splits `items` into message batches of about `max_bytes` encoded and at most
/// `max_items` each, in order.
fn batches<T: serde::Serialize>(items: Vec<T>, max_bytes: usize, max_items: usize) -> Vec<Vec<T>> {
    let mut out = vec![];
    let mut batch = Vec::new();
    let mut size = 0;
    for item in items {
        let len = postcard::experimental::serialized_size(&item).unwrap_or(256);
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

/// What a delta counts for in push budgets and flow control: its new bytes, and at
/// least an eighth of its chunk (a receiver reads its bases, and a message of deltas
/// that carry almost nothing must still end).
fn delta_cost(d: &ChunkDelta) -> u64 {
    d.data_len().max(d.len as usize / 8) as u64
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type WatchResult = Result<
    (
        watcher::FolderWatcher,
        tokio::sync::mpsc::UnboundedReceiver<FsEvent>,
    ),
    notify::Error,
>;

/// A failed apply to try again at `at`, asking `source` for the chunks it lacks.
struct Retry {
    entry: Entry,
    conflict_copy: Option<RelPath>,
    source: String,
    /// The apply failed on a full disk: tried again only once the folder's file
    /// system has this many bytes free, so a full disk costs no refetched chunks.
    needs_space: Option<u64>,
    at: Instant,
}

/// A file apply waiting for a free slot, with the node and mode of the message that
/// caused it (the chunk source to ask).
struct QueuedApply {
    entry: Entry,
    conflict_copy: Option<RelPath>,
    source: String,
    live: bool,
}

struct Folder {
    node: String,
    state_dir: PathBuf,
    cfg: FolderSettings,
    topics: Topics,
    keys: Keys,
    connect: ConnectSettings,
    index: Index,
    engine: Engine,
    /// Disk metadata last reported to the engine, per path.
    known: BTreeMap<RelPath, LocalMeta>,
    /// The names in `known` by folded spelling, on a case-insensitive file system only.
    case_folds: Option<CaseFolds>,
    /// Where each chunk can be read locally (verified on read).
    locations: ChunkLocations,
    applier: Applier,
    ignore: Ignore,
    publisher: Option<Publisher>,
    connected: bool,
    /// Paths the watcher named, waiting for the debounce.
    dirty: BTreeSet<RelPath>,
    /// Those of them whose writer closed them or moved them into place: complete.
    closed: HashSet<RelPath>,
    dirty_due: Option<Instant>,
    /// New directories to scan again once the watcher surely covers them.
    recheck: Vec<(RelPath, Instant)>,
    full_rescan_due: bool,
    /// Chunks to publish, with a set to skip duplicates.
    push: VecDeque<Hash>,
    pushing: HashSet<Hash>,
    /// Flow control of chunk pushes: how far behind our receivers are.
    window: crate::transfer::push_window::PushWindow,
    /// Whether chunk messages go out compressed (the folder's `compression`).
    compression: crate::transfer::compression::Compression,
    /// Progress still to report to each writer we receive chunks from.
    reports: crate::transfer::push_window::ProgressReports,
    /// Chunks new to this node in the latest scan: sent right after their manifest.
    fresh: HashSet<Hash>,
    /// Chunks whose push found their file gone: new again for the next scan that
    /// finds them (the renamed file), which pushes them after its manifest.
    unpushed: HashSet<Hash>,
    /// The confirmed chunk lists of files the latest scan found changed: what their
    /// manifests are patches of, and their new chunks deltas of.
    previous: HashMap<RelPath, Chunks>,
    /// Chunks to push as deltas, with the old chunks to describe them by
    /// ([`crate::protocol::delta::bases`]); pushed whole when asked for again.
    delta_bases: HashMap<Hash, Vec<Hash>>,
    /// Signatures of large chunks pushed or received, to store with the next batch.
    signatures: Vec<(Hash, Signature)>,
    /// A patch of a version this node lacks arrived: compare digests at the next tick.
    repair_due: bool,
    last_repair: Option<Instant>,
    announce: Vec<Entry>,
    answer: Vec<Entry>,
    store: Vec<Record>,
    forget: Vec<RelPath>,
    retries: HashMap<RelPath, Retry>,
    /// Files that may be open for applying at once (see [`apply_slots`]).
    apply_slots: usize,
    /// File applies waiting for one of the `apply_slots`, in arrival
    /// order (a path may be listed again after it left `queued_applies`: then skipped).
    queued: VecDeque<RelPath>,
    queued_applies: HashMap<RelPath, QueuedApply>,
    /// Node whose message caused the effects being processed (chunk source).
    source: String,
    source_live: bool,
    last_error: Option<String>,
    /// The path whose failed apply set `last_error`, and that error: the path's success
    /// clears it unless another error came since.
    last_error_path: Option<(RelPath, String)>,
    /// The error last logged per retried path, so a retry every few seconds does not
    /// log the same warning again.
    retry_warned: HashMap<RelPath, String>,
    /// The index write that last failed (a full or read-only state directory); the
    /// records stay in `store` and are written again at the next flush.
    index_failed: Option<(String, Instant)>,
    /// Since when (ms since the epoch) an apply or the index has kept failing.
    failing_since_ms: Option<u64>,
    /// Paths whose apply failed and is retried, until one succeeds or the change is
    /// no longer wanted (kept while a retry fetches, so the failure stays visible).
    failing: HashSet<RelPath>,
    /// When the last chunk message arrived (from anyone).
    last_chunk_at: Option<Instant>,
    paused: Option<String>,
    last_status: Option<FolderStatus>,
    /// Local deletions held back by the mass-delete guard, until a resync.
    held_deletes: usize,
    /// Set during a resync: the operator confirmed that mass deletions are wanted.
    allow_mass_delete: bool,
    last_resync: Option<Instant>,
    /// Local deletions waiting for the grace period (or held), with when first seen.
    pending_deletes: BTreeMap<RelPath, Instant>,
    last_delete_seen: Option<Instant>,
    /// Paths changed by remote applies since the hook last ran.
    hook_paths: BTreeSet<RelPath>,
    hook_running: bool,
    /// When each in-flight apply started, for the latency histogram.
    apply_started: HashMap<RelPath, Instant>,
    /// When the folder was opened: start-up time is reported with the first scan.
    started: Instant,
    /// Entries stored since the in-memory maps were last rebuilt (see `compact`).
    stored_since_compact: usize,
    /// Chunk bytes still to publish in this turn of the event loop ([`PUMP_BUDGET`]).
    pump_budget: usize,
    /// The budget ran out with chunks left to push: the loop turns again at once
    /// instead of waiting for the queue to drain (it may already be empty).
    pump_more: bool,
}

impl Folder {
    fn open(s: &NodeSettings, f: &FolderSettings) -> Result<Self, NodeError> {
        let started = Instant::now();
        let path = index_path(&s.state_dir, &f.id);
        let dir = path.parent().unwrap_or(&s.state_dir);
        std::fs::create_dir_all(dir).map_err(|source| NodeError::Io {
            folder: f.id.clone(),
            path: dir.to_path_buf(),
            source,
        })?;
        let index = Index::open(&path).map_err(|source| NodeError::Index {
            folder: f.id.clone(),
            source,
        })?;
        let records = index.load().map_err(|source| NodeError::Index {
            folder: f.id.clone(),
            source,
        })?;
        debug!(folder = %f.id, records = records.len(), ms = started.elapsed().as_millis() as u64, "index loaded");
        let ignore = Ignore::new(&f.ignore).map_err(|source| NodeError::Ignore {
            folder: f.id.clone(),
            source,
        })?;
        // Records come sorted by path: collecting them builds full B-tree nodes, where
        // inserting one by one leaves most nodes half empty.
        let known: BTreeMap<RelPath, LocalMeta> = records
            .iter()
            .filter_map(|r| Some((r.entry.path.clone(), r.local?)))
            .collect();
        let entries: Vec<Entry> = records.into_iter().map(|r| r.entry).collect();
        let mut folder = Folder {
            node: s.node_id.clone(),
            state_dir: s.state_dir.clone(),
            topics: Topics {
                prefix: s.topic_prefix.clone(),
                folder: f.id.clone(),
            },
            keys: s.keys.clone(),
            connect: ConnectSettings {
                client_id: format!("{}-{}", s.connect.client_id, f.id),
                ..s.connect.clone()
            },
            index,
            engine: {
                let e = Engine::new(s.node_id.clone(), f.mode, entries);
                match f.tombstone_ttl {
                    Some(ttl) => e.with_tombstone_ttl(ttl.as_millis() as u64),
                    None => e,
                }
            },
            known,
            case_folds: None,
            locations: ChunkLocations::default(),
            applier: Applier::new(f.path.clone()),
            ignore,
            publisher: None,
            connected: false,
            dirty: BTreeSet::new(),
            closed: HashSet::new(),
            dirty_due: None,
            recheck: Vec::new(),
            full_rescan_due: false,
            push: VecDeque::new(),
            pushing: HashSet::new(),
            window: Default::default(),
            compression: crate::transfer::compression::Compression::new(f.compression),
            reports: Default::default(),
            fresh: HashSet::new(),
            unpushed: HashSet::new(),
            previous: HashMap::new(),
            delta_bases: HashMap::new(),
            signatures: vec![],
            repair_due: false,
            last_repair: None,
            announce: vec![],
            answer: vec![],
            store: vec![],
            forget: vec![],
            retries: HashMap::new(),
            apply_slots: apply_slots(crate::sys::rlimit::open_files(), s.folders.len()),
            queued: VecDeque::new(),
            queued_applies: HashMap::new(),
            source: "*".into(),
            source_live: false,
            last_error: None,
            last_error_path: None,
            retry_warned: HashMap::new(),
            index_failed: None,
            failing_since_ms: None,
            failing: HashSet::new(),
            last_chunk_at: None,
            paused: None,
            last_status: None,
            held_deletes: 0,
            allow_mass_delete: false,
            last_resync: None,
            pending_deletes: BTreeMap::new(),
            last_delete_seen: None,
            hook_paths: BTreeSet::new(),
            hook_running: false,
            apply_started: HashMap::new(),
            started,
            stored_since_compact: 0,
            pump_budget: PUMP_BUDGET,
            pump_more: false,
            cfg: f.clone(),
        };
        folder.rebuild_locations();
        folder.drop_stale_signatures();
        debug!(folder = %f.id, ms = started.elapsed().as_millis() as u64, "folder state built");
        Ok(folder)
    }

    /// Checks the folder root and its marker. A folder that has synced before but whose
    /// root or marker is gone is paused: it may be an unmounted volume, and mirroring it
    /// would delete everything everywhere.
    fn check_root(&mut self) -> bool {
        let root = &self.cfg.path;
        let marker = root.join(MARKER);
        let has_history = self.engine.entries().next().is_some();
        let problem = if !root.is_dir() {
            if has_history {
                Some(format!(
                    "folder root {} is missing (unmounted volume?); paused",
                    root.display()
                ))
            } else {
                std::fs::create_dir_all(root)
                    .err()
                    .map(|e| format!("cannot create folder root {}: {e}", root.display()))
            }
        } else {
            None
        };
        let problem = problem.or_else(|| {
            if marker.exists() {
                None
            } else if has_history {
                Some(format!(
                    "marker {} is missing (unmounted or replaced volume?); paused. Recreate it to resume.",
                    marker.display()
                ))
            } else {
                std::fs::write(&marker, b"")
                    .err()
                    .map(|e| format!("cannot create marker {}: {e}", marker.display()))
            }
        });
        if let Some(p) = &problem {
            if self.paused.as_ref() != Some(p) {
                error!(folder = %self.cfg.id, "{p}");
            }
        }
        self.paused = problem;
        self.paused.is_none()
    }

    async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut early_watch: Option<tokio::task::JoinHandle<WatchResult>>,
    ) -> Result<(), NodeError> {
        let will = self.signed_status(&self.status_doc(State::Offline));
        let (publisher, mut net) = transport::connect(
            &self.connect,
            vec![self.topics.data_filter(), self.topics.cmd()],
            Some(self.topics.data(&self.node)),
            Some((self.topics.status(&self.node), will)),
        );
        self.publisher = Some(publisher);
        self.publish_status(State::Starting);

        // The watcher set up while the index loaded serves only a root that was in place
        // at once: one that appears later (a mount) gets a watcher of its own.
        while !self.check_root() {
            if let Some(h) = early_watch.take() {
                h.abort();
            }
            self.publish_status(State::Error);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
        self.probe_case();
        let (mut _watcher, mut fs_rx) = match early_watch {
            // Failed early (e.g. check_root has just created the root): try again now.
            Some(h) => match h.await {
                Ok(Ok((w, rx))) => (Some(w), rx),
                _ => self.start_watcher(),
            },
            None => self.start_watcher(),
        };
        debug!(folder = %self.cfg.id, ms = self.started.elapsed().as_millis() as u64, "watcher ready");
        self.publish_status(State::Scanning);
        self.engine.set_clock(now_ms());
        self.engine.collect_tombstones();
        let scan_started = Instant::now();
        self.full_scan(true);
        self.process();
        info!(
            folder = %self.cfg.id,
            files = self.engine.entries().count(),
            scan_ms = scan_started.elapsed().as_millis() as u64,
            since_start_ms = self.started.elapsed().as_millis() as u64,
            "initial scan done"
        );

        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut last_digest = Instant::now();
        let mut last_rescan = Instant::now();
        let mut last_status = Instant::now();
        let mut last_root_check = Instant::now();
        let (hook_tx, mut hook_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
        loop {
            self.engine.set_clock(now_ms());
            let publisher = self.publisher.clone();
            let pump_more = std::mem::take(&mut self.pump_more);
            self.pump_budget = PUMP_BUDGET;
            let want_room = !self.push.is_empty() && !pump_more;
            tokio::select! {
                // Out of budget, not out of room: take what has arrived and push on.
                _ = std::future::ready(()), if pump_more => {}
                ev = net.recv() => match ev {
                    Some(ev) => self.on_net(ev),
                    None => break,
                },
                ev = fs_rx.recv() => if let Some(ev) = ev { self.on_fs(ev) },
                _ = async { if let Some(p) = &publisher { p.drained().await } }, if want_room => {}
                _ = tick.tick() => {
                    let now = Instant::now();
                    if self.paused.is_some() && now.duration_since(last_root_check) >= Duration::from_secs(2) {
                        last_root_check = now;
                        if self.check_root() {
                            // The volume is back (a remount replaces the watched inode).
                            info!(folder = %self.cfg.id, "folder root and marker are back; resuming");
                            (_watcher, fs_rx) = self.start_watcher();
                            self.full_rescan_due = true;
                            self.send_digest(true);
                        }
                    }
                    if self.connected && now.duration_since(last_digest) >= self.cfg.digest_interval {
                        last_digest = now;
                        self.send_digest(false);
                    }
                    if now.duration_since(last_rescan) >= self.cfg.rescan_interval {
                        last_rescan = now;
                        self.full_rescan_due = true;
                        self.engine.set_clock(now_ms());
                        self.engine.collect_tombstones();
                    }
                    self.on_tick(now);
                    if now.duration_since(last_status) >= self.cfg.status_interval {
                        last_status = now;
                        self.last_status = None;
                    }
                    self.publish_status(self.current_state());
                }
                Some(res) = hook_rx.recv() => {
                    self.hook_running = false;
                    if let Err(e) = res {
                        warn!(folder = %self.cfg.id, "{e}");
                        self.last_error = Some(e);
                    }
                }
                _ = shutdown.changed() => break,
            }
            self.maybe_run_hook(&hook_tx);
            // Drain what else is already queued before the expensive steps.
            while let Ok(ev) = fs_rx.try_recv() {
                self.on_fs(ev);
            }
            if self.full_rescan_due {
                self.full_rescan_due = false;
                if self.check_root() {
                    self.full_scan(false);
                }
            }
            if self.dirty_due.is_some_and(|d| Instant::now() >= d) {
                self.scan_dirty();
            }
            // Take what else has arrived, so the files it completes commit together.
            for _ in 0..MAX_BATCH_EVENTS {
                if self.commit_frees_slots() {
                    break;
                }
                match net.try_recv() {
                    Ok(ev) => self.on_net(ev),
                    Err(_) => break,
                }
            }
            self.commit_applies();
            self.process();
            self.pump_chunks();
        }
        // Leave no temp files and say goodbye so peers do not wait for us.
        self.commit_applies();
        self.process();
        let paths: Vec<RelPath> = self.retries.keys().cloned().collect();
        for p in paths {
            self.applier.cancel(&p);
        }
        self.flush_store();
        let mut doc = self.status_doc(State::Offline);
        doc.updated_ms = now_ms();
        let bytes = self.signed_status(&doc);
        self.write_health(&bytes);
        if let Some(p) = &self.publisher {
            p.publish(self.topics.status(&self.node), bytes, true);
            p.disconnect().await;
        }
        Ok(())
    }

    fn start_watcher(
        &mut self,
    ) -> (
        Option<watcher::FolderWatcher>,
        tokio::sync::mpsc::UnboundedReceiver<FsEvent>,
    ) {
        match watcher::watch(&self.cfg.path) {
            Ok((w, rx)) => (Some(w), rx),
            Err(e) => {
                let msg = format!("watcher unavailable ({e}); relying on periodic scans");
                warn!(folder = %self.cfg.id, "{msg}");
                self.last_error = Some(msg);
                (None, tokio::sync::mpsc::unbounded_channel().1)
            }
        }
    }

    /// Starts the on_change hook once a batch of remote changes is complete (nothing
    /// pending) and no earlier run is still going.
    fn maybe_run_hook(&mut self, tx: &tokio::sync::mpsc::UnboundedSender<Result<(), String>>) {
        let Some(cmd) = self.cfg.on_change.clone() else {
            return;
        };
        if self.hook_running
            || self.hook_paths.is_empty()
            || self.engine.pending_count() > 0
            || self.applier.in_flight() > 0
        {
            return;
        }
        self.hook_running = true;
        let paths: Vec<RelPath> = std::mem::take(&mut self.hook_paths).into_iter().collect();
        debug!(folder = %self.cfg.id, paths = paths.len(), "running on_change hook");
        let (root, folder, node, tx) = (
            self.cfg.path.clone(),
            self.cfg.id.clone(),
            self.node.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let res = crate::ops::hook::run(&cmd, &root, &folder, &node, &paths).await;
            let _ = tx.send(res);
        });
    }

    fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connected => {
                info!(folder = %self.cfg.id, "connected to broker");
                self.connected = true;
                if self
                    .last_error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("broker:"))
                {
                    self.last_error = None;
                }
                self.last_status = None;
                // Compare full state with every peer: catch-up never relies on the
                // broker having queued anything for us.
                self.send_digest(true);
            }
            NetEvent::Disconnected { reason, fatal } => {
                if fatal {
                    error!(folder = %self.cfg.id, "{reason}");
                } else if self.connected
                    || self
                        .last_error
                        .as_deref()
                        .and_then(|e| e.strip_prefix("broker: "))
                        != Some(reason.as_str())
                {
                    // Losing the connection, or a failed attempt unlike the previous one.
                    warn!(folder = %self.cfg.id, "{reason}");
                } else {
                    debug!(folder = %self.cfg.id, "{reason}");
                }
                self.connected = false;
                self.last_error = Some(format!("broker: {reason}"));
            }
            NetEvent::Message { topic, payload } if topic == self.topics.cmd() => {
                self.on_command(&payload);
            }
            NetEvent::Message { topic, payload } => {
                let Some(sender) = self.topics.data_sender(&topic) else {
                    return;
                };
                if sender == self.node {
                    return;
                }
                let folder = self.cfg.id.clone();
                metrics::counter!("mqsync_messages_received_total", "folder" => folder.clone())
                    .increment(1);
                metrics::counter!("mqsync_bytes_received_total", "folder" => folder.clone())
                    .increment(payload.len() as u64);
                match wire::decode(&payload, &topic, sender, &self.keys) {
                    Ok(env) => self.on_message(env),
                    Err(e) => {
                        metrics::counter!("mqsync_messages_rejected_total", "folder" => folder)
                            .increment(1);
                        warn!(folder = %self.cfg.id, %topic, bytes = payload.len(), "dropping message: {e}")
                    }
                }
            }
        }
    }

    /// A JSON command from the public cmd topic. Only `resync` exists: it can only make
    /// nodes compare and repair, so it needs no key, but it is rate-limited.
    fn on_command(&mut self, payload: &[u8]) {
        let cmd: Command = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                warn!(folder = %self.cfg.id, "ignoring malformed command: {e}");
                return;
            }
        };
        if cmd.node != "*" && cmd.node != self.node {
            return;
        }
        if cmd.op != "resync" {
            warn!(folder = %self.cfg.id, op = %cmd.op, "ignoring unknown command");
            return;
        }
        let now = Instant::now();
        if self
            .last_resync
            .is_some_and(|t| now.duration_since(t) < RESYNC_MIN_INTERVAL)
        {
            warn!(folder = %self.cfg.id, "resync ignored: the last one was less than {RESYNC_MIN_INTERVAL:?} ago");
            return;
        }
        self.last_resync = Some(now);
        self.resync();
    }

    /// Rescans everything (applying held mass deletions, which the operator's command
    /// confirms), reverts local changes of a receive-only folder, and compares full state
    /// with every peer.
    fn resync(&mut self) {
        info!(folder = %self.cfg.id, held_deletes = self.held_deletes, "resync requested");
        if self.held_deletes > 0 {
            self.last_error = None;
        }
        self.allow_mass_delete = true;
        self.full_scan(false);
        self.allow_mass_delete = false;
        self.engine.handle_resync();
        self.process();
        self.send_digest(true);
        self.last_status = None;
    }

    fn on_message(&mut self, env: Envelope) {
        if self.paused.is_some() {
            return;
        }
        self.window.hello(&env.from, Instant::now());
        self.source = env.from.clone();
        match env.msg {
            Message::Manifest { live, entries } => {
                self.source_live = live;
                for e in entries {
                    if self.ignore.is_ignored(&e.path) {
                        continue;
                    }
                    self.engine.handle_remote(e);
                }
                self.process();
            }
            Message::Chunks { chunks } => {
                self.last_chunk_at = Some(Instant::now());
                let bytes: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
                if let Some(last) = chunks.last().map(|c| c.hash)
                    && let Some(last) =
                        self.reports
                            .received(&env.from, last, bytes, Instant::now())
                {
                    self.send(Message::Progress {
                        to: env.from.clone(),
                        last,
                    });
                }
                for c in chunks {
                    self.take_chunk(c.hash, c.data);
                }
                self.process();
            }
            Message::Deltas { deltas } => {
                self.last_chunk_at = Some(Instant::now());
                if let Some(last) = deltas.last().map(|d| d.hash) {
                    let bytes = deltas.iter().map(delta_cost).sum();
                    if let Some(last) =
                        self.reports
                            .received(&env.from, last, bytes, Instant::now())
                    {
                        self.send(Message::Progress {
                            to: env.from.clone(),
                            last,
                        });
                    }
                }
                let mut refetch = vec![];
                // Old chunks read for this message, and chunks already tried: a message
                // naming the same chunk or base again costs no second read.
                let mut bases: HashMap<Hash, Option<Vec<u8>>> = HashMap::new();
                let mut tried = HashSet::new();
                for d in deltas {
                    if !tried.insert(d.hash) {
                        continue;
                    }
                    let wanted = self.applier.wants(&d.hash);
                    // A delta may arrive before its file's fetch starts (every apply
                    // slot busy): rebuilt now, the chunk waits in the applier's cache
                    // like a whole chunk would. Skipped where nothing would use it: the
                    // chunk is here already, or this folder applies no remote change.
                    if !wanted
                        && (self.cfg.mode == Mode::SendOnly
                            || self.applier.has_cached(&d.hash)
                            || self.locations.contains(&d.hash))
                    {
                        continue;
                    }
                    match self.rebuild(&d, &mut bases) {
                        Ok(data) => self.take_chunk(d.hash, data),
                        Err(e) if wanted => {
                            debug!(folder = %self.cfg.id, from = %self.source, "cannot rebuild a chunk from its delta ({e}); asking for it whole");
                            refetch.push(d.hash);
                        }
                        // Not asked for here: a fetch that starts later asks for it.
                        Err(_) => {}
                    }
                }
                if !refetch.is_empty() {
                    self.request(self.source.clone(), refetch);
                }
                self.process();
            }
            Message::Patch { patches } => {
                self.source_live = true;
                let mut unknown_base = 0;
                let mut seen = HashSet::new();
                for p in patches {
                    // One patch per path and message: each costs a hash of the list it
                    // edits.
                    if self.ignore.is_ignored(&p.path) || !seen.insert(p.path.clone()) {
                        continue;
                    }
                    // The version being applied, else the one on disk; `expand` checks
                    // the base's id.
                    let held = [
                        self.engine.pending_entry(&p.path),
                        self.engine.entry(&p.path),
                    ];
                    let expanded = held
                        .into_iter()
                        .flatten()
                        .filter_map(|e| match &e.content {
                            Content::File { chunks, .. } => Some(p.expand(chunks)),
                            _ => None,
                        })
                        .find(|r| !matches!(r, Ok(None)));
                    match expanded {
                        Some(Ok(Some(e))) => self.engine.handle_remote(e),
                        Some(Ok(None)) | None => unknown_base += 1,
                        Some(Err(e)) => {
                            warn!(folder = %self.cfg.id, from = %self.source, "dropping a patch: {e}")
                        }
                    }
                }
                if unknown_base > 0 {
                    // This node lacks the version a patch edits: comparing digests makes
                    // the writer send its entries of those paths whole (at the next tick,
                    // at most every PATCH_REPAIR_INTERVAL).
                    debug!(folder = %self.cfg.id, from = %self.source, patches = unknown_base, "patch of a version this node does not hold; comparing digests");
                    self.repair_due = true;
                }
                self.process();
            }
            Message::Digest { reply, buckets } => {
                if let Some(d) = Digest::from_buckets(buckets) {
                    self.engine.handle_digest(&d, reply);
                    self.process();
                }
            }
            Message::Progress { to, last } => {
                if to == self.node {
                    self.window.progress(&self.source, &last, Instant::now());
                }
            }
            Message::Request { to, hashes } => {
                if to == self.node || to == "*" {
                    let mut n = 0;
                    for h in hashes {
                        if self.locations.contains(&h) && self.pushing.insert(h) {
                            self.push.push_back(h);
                            n += 1;
                        }
                    }
                    if n > 0 {
                        debug!(folder = %self.cfg.id, from = %self.source, chunks = n, "serving chunks");
                    }
                }
            }
        }
        self.source = "*".into();
        self.source_live = false;
    }

    /// A chunk from the network: checked against its hash, its signature kept (a later
    /// local edit can then go out as a delta), and handed to the applier.
    fn take_chunk(&mut self, hash: Hash, data: Vec<u8>) {
        if chunker::hash(&data) != hash {
            warn!(folder = %self.cfg.id, from = %self.source, "dropping a chunk whose content does not match its hash");
            return;
        }
        if let Some(sig) = Signature::of(&data) {
            self.signatures.push((hash, sig));
        }
        // A failed write (a full disk) is retried like any failed apply: dropping it
        // here left the file pending for good.
        for o in self.applier.on_verified_chunk(hash, data) {
            self.take_outcome(o);
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
        for b in &d.bases {
            read.entry(*b).or_insert_with(|| {
                tokio::task::block_in_place(|| {
                    let (p, off, len) = self.locations.find(b, &self.engine)?;
                    chunker::read_verified(&p.to_local(&self.cfg.path), off, len, b)
                })
            });
        }
        let bases = d
            .bases
            .iter()
            .map(|b| read.get(b).and_then(|d| d.as_deref()))
            .collect::<Option<Vec<&[u8]>>>()
            .ok_or("an old chunk it edits is not on this node")?;
        crate::protocol::delta::patch(d, &bases).map_err(|e| e.to_string())
    }

    fn on_fs(&mut self, ev: FsEvent) {
        match ev {
            FsEvent::Paths { paths, urgent } => {
                let now = Instant::now();
                for p in paths {
                    // A directory moved or removed here: files arriving into it open
                    // its path again instead of a descriptor held from before.
                    self.applier.forget_dir(&p);
                    if !self.ignore.is_ignored(&p) {
                        if urgent {
                            self.closed.insert(p.clone());
                        }
                        self.dirty.insert(p);
                    }
                }
                if !self.dirty.is_empty() {
                    let due = if urgent { now } else { now + self.cfg.debounce };
                    self.dirty_due = Some(self.dirty_due.map_or(due, |d| d.min(due)));
                }
            }
            FsEvent::NewDirs(dirs) => {
                let now = Instant::now();
                for d in dirs {
                    if self.ignore.is_ignored(&d) {
                        continue;
                    }
                    self.recheck
                        .push((d.clone(), now + Duration::from_millis(250)));
                    self.recheck.push((d.clone(), now + Duration::from_secs(2)));
                    self.dirty.insert(d);
                }
                self.dirty_due = Some(now);
            }
            FsEvent::Rescan => self.full_rescan_due = true,
            FsEvent::Error(e) => {
                warn!(folder = %self.cfg.id, "watcher: {e}; falling back to periodic scans");
                self.last_error = Some(format!("watcher: {e}"));
            }
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.release_deletes(now);
        if self.repair_due
            && self
                .last_repair
                .is_none_or(|t| now.duration_since(t) >= PATCH_REPAIR_INTERVAL)
        {
            self.repair_due = false;
            self.last_repair = Some(now);
            self.send_digest(true);
        }
        if self.recheck.iter().any(|(_, at)| now >= *at) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.recheck)
                .into_iter()
                .partition(|(_, at)| now >= *at);
            self.recheck = later;
            self.dirty.extend(due.into_iter().map(|(p, _)| p));
            self.dirty_due = Some(now);
        }
        for (to, hashes) in self.applier.overtaken(now) {
            self.request(to, hashes);
        }
        // While chunks keep arriving, a fetch without progress is only further back
        // in the writer's queue: asking again would make the writer send it twice.
        let streaming = self
            .last_chunk_at
            .is_some_and(|t| now.duration_since(t) < FETCH_STALL);
        if !streaming {
            for (to, hashes) in self.applier.stalled(now, FETCH_STALL) {
                self.request(to, hashes);
            }
        }
        let due: Vec<RelPath> = self
            .retries
            .iter()
            .filter(|(_, r)| now >= r.at)
            .map(|(p, _)| p.clone())
            .collect();
        // One look at the free space per tick, for every retry that waits for it.
        for p in due {
            let Some(mut r) = self.retries.remove(&p) else {
                continue;
            };
            if !self.engine.is_pending(&p) {
                self.failing.remove(&p);
                continue;
            }
            // Asked where the file goes: a mount inside the folder is another file
            // system. (A full quota does not show here: those retries refetch.)
            if let Some(needs) = r.needs_space
                && needs
                    > p.to_local(&self.cfg.path)
                        .parent()
                        .and_then(crate::fs::applier::free_space)
                        .unwrap_or(u64::MAX)
            {
                r.at = now + RETRY_AFTER;
                self.retries.insert(p, r);
                continue;
            }
            // Not live: whatever chunks the failed attempt dropped are asked for.
            self.enqueue_apply(QueuedApply {
                entry: r.entry,
                conflict_copy: r.conflict_copy,
                source: r.source,
                live: false,
            });
        }
        if self.retries.is_empty() {
            self.retry_warned.clear();
        }
        self.process();
    }

    fn full_scan(&mut self, remove_temps: bool) {
        self.scan(None, remove_temps, None);
    }

    /// Scans `paths` (everything when `None`) and feeds the result to the engine.
    fn scan(
        &mut self,
        paths: Option<&[RelPath]>,
        remove_temps: bool,
        closed: Option<&HashSet<RelPath>>,
    ) {
        // Never mirror a vanished volume as a mass delete.
        if paths.is_some_and(|p| p.is_empty()) || !self.check_root() {
            return;
        }
        let res = tokio::task::block_in_place(|| {
            let scanner = Scanner {
                root: &self.cfg.path,
                ignore: &self.ignore,
                known: &self.known,
            };
            match (paths, closed) {
                (Some(p), Some(c)) => scanner.watched_paths(p, c),
                (Some(p), None) => scanner.paths(p),
                (None, _) => scanner.full(remove_temps),
            }
        });
        self.take_scan(res);
    }

    fn scan_dirty(&mut self) {
        self.dirty_due = None;
        let closed = std::mem::take(&mut self.closed);
        let paths: Vec<RelPath> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter(|p| !self.applier.is_fetching(p))
            .collect();
        self.scan_paths_with(&paths, Some(&closed));
    }

    fn scan_paths(&mut self, paths: &[RelPath]) {
        self.scan_paths_with(paths, None);
    }

    /// `closed`: for paths from the watcher, those its writer closed or moved into
    /// place (see [`Scanner::watched_paths`]).
    fn scan_paths_with(&mut self, paths: &[RelPath], closed: Option<&HashSet<RelPath>>) {
        match &self.case_folds {
            // A name spelled differently from the one on disk would be read as that
            // file: only the spelling on disk is scanned.
            Some(folds) => {
                let paths: Vec<RelPath> = paths
                    .iter()
                    .filter(|p| folds.collision(p).is_none())
                    .cloned()
                    .collect();
                self.scan(Some(&paths), false, closed);
            }
            None => self.scan(Some(paths), false, closed),
        }
    }

    /// Records what a scan or an apply left on disk at `path`.
    fn know(&mut self, path: &RelPath, m: LocalMeta) {
        self.known.insert(path.clone(), m);
        if let Some(f) = &mut self.case_folds {
            f.insert(path);
        }
    }

    fn unknow(&mut self, path: &RelPath) {
        self.known.remove(path);
        if let Some(f) = &mut self.case_folds {
            f.remove(path);
        }
    }

    /// Finds out whether the folder's file system folds case (probing in its root); if so, applies are checked for case collisions from now on.
    fn probe_case(&mut self) {
        let dir = &self.cfg.path;
        match crate::fs::casefold::probe(dir) {
            Ok(true) => {
                info!(folder = %self.cfg.id, "case-insensitive file system: names that differ only in case will be refused and reported");
                self.case_folds = Some(CaseFolds::new(self.known.keys()));
            }
            Ok(false) => self.case_folds = None,
            Err(e) => {
                warn!(folder = %self.cfg.id, "cannot probe case sensitivity in {}: {e}", dir.display())
            }
        }
    }

    fn take_scan(&mut self, res: crate::fs::scanner::ScanResult) {
        for (path, e) in &res.errors {
            warn!(folder = %self.cfg.id, path = %path.display(), "scan: {e}");
            self.last_error = Some(format!("{}: {e}", path.display()));
        }
        if !res.unstable.is_empty() {
            let due = Instant::now() + self.cfg.debounce.max(Duration::from_millis(200));
            self.dirty.extend(res.unstable);
            self.dirty_due = Some(self.dirty_due.map_or(due, |d| d.min(due)));
        }
        let mut changed = res.changed;
        // A file this node's applier removed is reported by the applier's next
        // commit; seen missing before that, it is not a local deletion.
        let removing = self.applier.removing();
        if !removing.is_empty() {
            changed.retain(|o| !(o.content.is_deleted() && removing.contains_key(&o.path)));
        }
        // Parents before children, so a created tree arrives in order.
        changed.sort_by(|a, b| a.path.cmp(&b.path));
        self.guard_mass_delete(&mut changed);
        for Observed {
            path,
            content,
            meta,
        } in changed
        {
            if let Content::File { chunks, .. } = &content {
                for c in chunks {
                    if !self.locations.contains(&c.hash) || self.unpushed.remove(&c.hash) {
                        self.fresh.insert(c.hash);
                    }
                }
            }
            let file = (meta.is_some() && matches!(content, Content::File { .. }))
                .then(|| content.clone());
            if file.is_some()
                && let Some(Content::File { chunks, .. }) =
                    self.engine.entry(&path).map(|e| &e.content)
            {
                self.previous.insert(path.clone(), chunks.clone());
            }
            match meta {
                Some(m) => self.know(&path, m),
                None => self.unknow(&path),
            }
            self.engine.handle_local(path.clone(), content);
            // Locations resolve through the confirmed entry: a change the engine did
            // not take (a receive-only folder's) must not displace a confirmed holder
            // of the same chunk.
            if let Some(file) = file
                && self.engine.entry(&path).is_some_and(|e| e.content == file)
            {
                self.locations.insert(&path, &file);
            }
        }
    }

    /// Local deletions wait until no new one has been seen for `DELETE_GRACE`, so that
    /// a large delete (a wiped or swapped volume, an `rm -rf` slower than the debounce)
    /// is judged as a whole by `release_deletes`. A resync lets them through at once.
    fn guard_mass_delete(&mut self, changed: &mut Vec<Observed>) {
        if self.allow_mass_delete || self.cfg.max_delete_percent >= 100 {
            self.held_deletes = 0;
            let waiting = std::mem::take(&mut self.pending_deletes);
            changed.extend(
                waiting
                    .into_keys()
                    .filter(|p| self.is_absent(p))
                    .map(|path| Observed {
                        path,
                        content: Content::Deleted,
                        meta: None,
                    }),
            );
            return;
        }
        let now = Instant::now();
        let before = changed.len();
        let engine = &self.engine;
        let pending = &mut self.pending_deletes;
        changed.retain(|o| {
            let is_delete = o.content.is_deleted()
                && engine
                    .entry(&o.path)
                    .is_some_and(|e| !e.content.is_deleted());
            if is_delete {
                pending.entry(o.path.clone()).or_insert(now);
            }
            !is_delete
        });
        if changed.len() != before {
            self.last_delete_seen = Some(now);
        }
    }

    fn is_absent(&self, path: &RelPath) -> bool {
        std::fs::symlink_metadata(path.to_local(&self.cfg.path))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }

    /// Sends the waiting local deletions once they have been quiet for `DELETE_GRACE`,
    /// unless together they would delete more than `max_delete_percent` of the folder
    /// (and at least `MASS_DELETE_MIN_FILES` files): then they are held, reported, and
    /// wait for an operator's resync.
    fn release_deletes(&mut self, now: Instant) {
        if self.pending_deletes.is_empty()
            || self
                .last_delete_seen
                .is_some_and(|t| now.duration_since(t) < DELETE_GRACE)
        {
            return;
        }
        let waiting = std::mem::take(&mut self.pending_deletes);
        let (gone, back): (Vec<_>, Vec<_>) =
            waiting.into_iter().partition(|(p, _)| self.is_absent(p));
        // Paths that came back are ordinary changes again; the scan sees them.
        self.dirty.extend(back.into_iter().map(|(p, _)| p));
        // A file whose content another present file holds was renamed or moved (a
        // renamed directory), and one written moments ago was transient (temp files
        // renamed into place one after another): neither loses the folder's data.
        let leaving: HashSet<&RelPath> = gone.iter().map(|(p, _)| p).collect();
        let wall = now_ms();
        let transient = |p: &RelPath, seen: &Instant| {
            let seen_ms = wall.saturating_sub(now.duration_since(*seen).as_millis() as u64);
            self.engine.entry(p).is_some_and(|e| {
                // Only this node's own writes: their times come from this clock (and
                // one from the future, after the clock stepped back, is not recent).
                &*e.modified_by == self.node.as_str()
                    && seen_ms
                        .checked_sub(e.changed_ms)
                        .is_some_and(|age| age < TRANSIENT_MS)
            })
        };
        let deletes = gone
            .iter()
            .filter(|(p, seen)| !transient(p, seen) && !self.moved_elsewhere(p, &leaving))
            .count();
        let (present, _) = self.engine.present();
        if deletes >= MASS_DELETE_MIN_FILES
            && (deletes as u64) * 100 > self.cfg.max_delete_percent * present
        {
            if deletes != self.held_deletes {
                let msg = format!(
                    "{deletes} of {present} files were deleted locally, more than max_delete_percent = {}%; holding the deletions. If they are wanted, run `mqsync resync --folder {}`",
                    self.cfg.max_delete_percent, self.cfg.id
                );
                warn!(folder = %self.cfg.id, "{msg}");
                self.last_error = Some(msg);
            }
            self.held_deletes = deletes;
            self.pending_deletes = gone.into_iter().collect();
            // Checked again at the next new deletion (or resync), not on every tick.
            self.last_delete_seen = Some(now + Duration::from_secs(3600));
            return;
        }
        self.held_deletes = 0;
        for (p, _) in gone {
            self.unknow(&p);
            self.engine.handle_local(p, Content::Deleted);
        }
        self.process();
    }

    /// Whether the content of the file confirmed at `path` is held by another file that
    /// stays (not among `leaving`): then its deletion is the other half of a move.
    /// Its first, middle and last chunks are checked (each lookup walks the holder's
    /// chunk list, so all of a large file's would cost its chunk count squared).
    fn moved_elsewhere(&self, path: &RelPath, leaving: &HashSet<&RelPath>) -> bool {
        let Some(Content::File { chunks, size, .. }) = self.engine.entry(path).map(|e| &e.content)
        else {
            return false;
        };
        let n = chunks.len();
        // The holder must be the same file, not another version sharing some chunks.
        let same_file = |holder: &RelPath| {
            matches!(self.engine.entry(holder).map(|e| &e.content),
                Some(Content::File { chunks: c, size: s, .. }) if s == size && c.len() == n)
        };
        n > 0
            && [0, n / 2, n - 1].iter().all(|&i| {
                let c = &chunks[i];
                self.locations
                    .find(&c.hash, &self.engine)
                    .is_some_and(|(holder, _, _)| {
                        &holder != path && !leaving.contains(&holder) && same_file(&holder)
                    })
            })
    }

    /// Reads a chunk to push. While its file's metadata is what the scan that hashed it
    /// saw (the test the start-up scan also trusts), the bytes are not hashed again: that
    /// second pass was a quarter of a writer's CPU in the bulk benchmark. A file changed
    /// since is verified, and every receiver checks every chunk's hash anyway.
    fn read_local(&self, hash: &Hash) -> Option<Vec<u8>> {
        let (path, off, len) = self.locations.find(hash, &self.engine)?;
        let file = std::fs::File::open(path.to_local(&self.cfg.path)).ok()?;
        // The confirmed entry must describe the file too: on a receive-only folder a
        // local change can leave a file that is not the entry's.
        let confirmed = self.engine.entry(&path).map(|e| &e.content);
        let unchanged = self.known.get(&path).is_some_and(|known| {
            matches!(confirmed, Some(Content::File { size, mtime_ns, .. })
                if *size == known.size && *mtime_ns == known.mtime_ns)
                && file
                    .metadata()
                    .is_ok_and(|md| md.is_file() && crate::fs::scanner::local_meta(&md) == *known)
        });
        chunker::read_chunk(&file, off, len, (!unchanged).then_some(hash))
    }

    /// Carries out the engine's effects until it has nothing more to say.
    fn process(&mut self) {
        while let Some(eff) = self.engine.poll_effect() {
            match eff {
                Effect::Announce(e) => self.announce.push(e),
                Effect::Store(e) => {
                    let local = if e.content.is_deleted() {
                        None
                    } else {
                        self.known.get(&e.path).copied()
                    };
                    self.store.push(Record { entry: e, local });
                    self.stored_since_compact += 1;
                }
                Effect::Apply {
                    entry,
                    conflict_copy,
                } => {
                    self.retries.remove(&entry.path);
                    self.start_apply(entry, conflict_copy);
                }
                Effect::Cancel(p) => {
                    self.retries.remove(&p);
                    self.failing.remove(&p);
                    self.queued_applies.remove(&p);
                    self.applier.cancel(&p);
                    self.release_name(&p);
                }
                Effect::Forget(p) => {
                    self.unknow(&p);
                    self.forget.push(p);
                }
                Effect::SendEntries(es) => self.answer.extend(es),
                Effect::SendDigest { reply } => self.send_digest(reply),
            }
        }
        self.flush_store();
        let announce = std::mem::take(&mut self.announce);
        if !announce.is_empty() {
            self.publish_entries(announce, true);
        }
        let answer = std::mem::take(&mut self.answer);
        if !answer.is_empty() {
            self.publish_entries(answer, false);
        }
        self.fresh.clear();
        self.previous.clear();
    }

    /// Writes the chunk signatures collected so far.
    fn flush_signatures(&mut self) {
        if self.signatures.is_empty() {
            return;
        }
        let sigs = std::mem::take(&mut self.signatures);
        if let Err(e) = tokio::task::block_in_place(|| self.index.put_signatures(&sigs)) {
            // Only costs whole chunks instead of deltas later.
            warn!(folder = %self.cfg.id, "storing chunk signatures failed: {e}");
        }
    }

    fn flush_store(&mut self) {
        // After a failed write, try again once a second, not at every turn of the loop
        // (each try reopens the database).
        if self
            .index_failed
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < INDEX_RETRY)
        {
            return;
        }
        // Signatures go with entries, or in batches: a transaction per chunk message
        // made a receiver of 512 MiB three times slower.
        if self.signatures.len() >= SIGNATURE_BATCH || !self.store.is_empty() {
            self.flush_signatures();
        }
        if self.forget.is_empty() && self.store.is_empty() {
            return;
        }
        if !self.forget.is_empty() {
            let paths = std::mem::take(&mut self.forget);
            if let Err(e) = tokio::task::block_in_place(|| self.index.remove(&paths)) {
                self.forget = paths;
                return self.index_write_failed(e);
            }
        }
        let batch = std::mem::take(&mut self.store);
        for r in &batch {
            if r.local.is_some() {
                self.locations.insert(&r.entry.path, &r.entry.content);
            }
        }
        if let Err(e) = tokio::task::block_in_place(|| self.index.put(&batch)) {
            // Kept and written again: a record dropped here would make the next start
            // take a received file for a local change.
            self.store = batch;
            return self.index_write_failed(e);
        }
        if self.index_failed.take().is_some() {
            info!(folder = %self.cfg.id, "index writes work again");
        }
    }

    fn index_write_failed(&mut self, e: crate::store::index::IndexError) {
        let msg = format!("index: {e}");
        if self.index_failed.as_ref().map(|(m, _)| m) != Some(&msg) {
            error!(folder = %self.cfg.id, "index write failed, will retry: {e}");
            metrics::counter!("mqsync_index_errors_total", "folder" => self.cfg.id.clone())
                .increment(1);
        }
        self.index_failed = Some((msg, Instant::now()));
    }

    fn start_apply(&mut self, entry: Entry, conflict_copy: Option<RelPath>) {
        let queued = QueuedApply {
            entry,
            conflict_copy,
            source: self.source.clone(),
            live: self.source_live,
        };
        self.enqueue_apply(queued);
    }

    /// Starts an apply now, or queues it while every apply slot is taken.
    fn enqueue_apply(&mut self, queued: QueuedApply) {
        let is_file = matches!(queued.entry.content, Content::File { .. });
        // Behind a file that waits for a slot, every apply waits, in order: a delete
        // that overtook it removed the old file that a renamed or copied file is
        // rebuilt from, which then had to be fetched from the writer.
        if (is_file && self.applier.in_flight() >= self.apply_slots)
            || !self.queued_applies.is_empty()
        {
            self.apply_started
                .entry(queued.entry.path.clone())
                .or_insert_with(Instant::now);
            let path = queued.entry.path.clone();
            if self.queued_applies.insert(path.clone(), queued).is_none() {
                self.queued.push_back(path);
            }
            return;
        }
        self.queued_applies.remove(&queued.entry.path);
        self.begin_apply(queued);
    }

    /// Whether applies wait for slots that a commit of the staged files would free:
    /// then the next chunks should find their fetches started, not pile up unclaimed.
    fn commit_frees_slots(&self) -> bool {
        !self.queued_applies.is_empty()
            && self.applier.staged_len() > 0
            && self.applier.in_flight() >= self.apply_slots
    }

    /// Starts the queued applies, in order, while files find free slots (other applies
    /// take none).
    fn start_queued(&mut self) {
        while let Some(path) = self.queued.front() {
            let needs_slot = match self.queued_applies.get(path) {
                Some(q) => matches!(q.entry.content, Content::File { .. }),
                None => false,
            };
            if needs_slot && self.applier.in_flight() >= self.apply_slots {
                break;
            }
            let Some(path) = self.queued.pop_front() else {
                break;
            };
            if let Some(q) = self.queued_applies.remove(&path) {
                self.begin_apply(q);
            }
        }
    }

    fn begin_apply(&mut self, q: QueuedApply) {
        let QueuedApply {
            entry,
            conflict_copy,
            source,
            live,
        } = q;
        if let Some(folds) = &mut self.case_folds {
            if let Some(c) = folds.collision(&entry.path) {
                return self.refuse_case_collision(entry, conflict_copy, c);
            }
            // Claim the name now: a twin arriving while this one fetches its chunks
            // must see it.
            if !entry.content.is_deleted() {
                folds.insert(&entry.path);
            }
        }
        self.apply_started
            .entry(entry.path.clone())
            .or_insert_with(Instant::now);
        let expected = self.known.get(&entry.path).copied();
        let path = entry.path.clone();
        let outcome = tokio::task::block_in_place(|| {
            let (locations, engine) = (&self.locations, &self.engine);
            let root = &self.cfg.path;
            let local = |h: &Hash| {
                let (p, off, len) = locations.find(h, engine)?;
                chunker::read_verified(&p.to_local(root), off, len, h)
            };
            self.applier
                .start(entry, conflict_copy, expected, &source, &local)
        });
        if matches!(outcome, Outcome::Waiting) {
            debug!(folder = %self.cfg.id, %path, from = %source, live, "fetching");
            // Chunks of a live change follow their manifest; anything else is asked for.
            if !live {
                let missing = self.applier.missing(&path);
                self.applier.mark_requested(&path);
                self.request(source, missing);
            }
            return;
        }
        self.take_outcome(outcome);
    }

    /// Takes the outcome of an apply; a failure worth retrying (a full disk, a
    /// permission) is tried again in 2 s with the same entry and conflict copy, its
    /// chunks asked for again from the node whose message caused it.
    fn take_outcome(&mut self, outcome: Outcome) {
        if let Outcome::Failed {
            entry,
            conflict_copy,
            error,
        } = &outcome
            && error.retryable()
        {
            let source = if self.source == "*" {
                entry.modified_by.to_string()
            } else {
                self.source.clone()
            };
            self.retries.insert(
                entry.path.clone(),
                Retry {
                    entry: entry.clone(),
                    conflict_copy: conflict_copy.clone(),
                    source,
                    needs_space: error.no_space().then(|| entry.content.size()),
                    at: Instant::now() + RETRY_AFTER,
                },
            );
            // A directory that waits for its entries to go is ordinary order.
            if !matches!(error, ApplyError::NotEmpty(_)) {
                self.failing.insert(entry.path.clone());
            }
        }
        self.on_outcome(outcome);
    }

    /// Renames the files staged since the last commit into place (one disk flush for
    /// the batch) and takes their outcomes.
    fn commit_applies(&mut self) {
        let outcomes = tokio::task::block_in_place(|| self.applier.commit());
        for o in outcomes {
            self.take_outcome(o);
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
        let failed = Outcome::Failed {
            entry,
            conflict_copy,
            error: ApplyError::CaseCollision(c),
        };
        self.take_outcome(failed);
    }

    fn on_outcome(&mut self, o: Outcome) {
        match o {
            Outcome::Waiting | Outcome::Staged => {}
            Outcome::Done {
                path,
                version,
                meta,
                conflict_copy,
            } => {
                debug!(folder = %self.cfg.id, %path, "applied");
                self.retry_warned.remove(&path);
                self.failing.remove(&path);
                if let Some((p, msg)) = &self.last_error_path
                    && p == &path
                {
                    if self.last_error.as_ref() == Some(msg) {
                        self.last_error = None;
                    }
                    self.last_error_path = None;
                }
                let folder = self.cfg.id.clone();
                metrics::counter!("mqsync_applied_total", "folder" => folder.clone()).increment(1);
                if let Some(t) = self.apply_started.remove(&path) {
                    metrics::histogram!("mqsync_apply_seconds", "folder" => folder.clone())
                        .record(t.elapsed().as_secs_f64());
                }
                if conflict_copy.is_some() {
                    metrics::counter!("mqsync_conflicts_total", "folder" => folder).increment(1);
                }
                if self.cfg.on_change.is_some() {
                    self.hook_paths.insert(path.clone());
                }
                match meta {
                    Some(m) => self.know(&path, m),
                    None => self.unknow(&path),
                }
                self.engine.handle_applied(&path, &version, true);
                if let Some(cc) = conflict_copy {
                    info!(folder = %self.cfg.id, %path, copy = %cc, "conflict: kept the local version as a copy");
                    self.scan_paths(&[cc]);
                }
            }
            Outcome::Failed { entry, error, .. } => {
                self.release_name(&entry.path);
                self.on_failed(entry.path, entry.version, error);
            }
        }
    }

    /// A name claimed in `start_apply` whose apply did not happen goes back to what
    /// is on disk.
    fn release_name(&mut self, path: &RelPath) {
        if let Some(f) = &mut self.case_folds
            && !self.known.contains_key(path)
        {
            f.remove(path);
        }
    }

    fn on_failed(
        &mut self,
        path: RelPath,
        version: crate::engine::VersionVector,
        error: ApplyError,
    ) {
        match error {
            ApplyError::ChangedLocally(_) => {
                self.apply_started.remove(&path);
                self.failing.remove(&path);
                debug!(folder = %self.cfg.id, %path, "changed locally during apply; rescanning");
                self.scan_paths(std::slice::from_ref(&path));
                self.engine.handle_applied(&path, &version, false);
            }
            e if e.retryable() => {
                if !matches!(e, ApplyError::NotEmpty(_)) {
                    metrics::counter!("mqsync_apply_errors_total", "folder" => self.cfg.id.clone())
                        .increment(1);
                    let msg = e.to_string();
                    // Retried every few seconds: say it once, not at every retry.
                    if self.retry_warned.get(&path) != Some(&msg) {
                        self.retry_warned.insert(path.clone(), msg.clone());
                        warn!(folder = %self.cfg.id, %path, "apply failed, will retry: {e}");
                    } else {
                        debug!(folder = %self.cfg.id, %path, "apply failed again: {e}");
                    }
                    self.last_error = Some(msg.clone());
                    self.last_error_path = Some((path, msg));
                }
            }
            e => {
                self.apply_started.remove(&path);
                self.failing.remove(&path);
                metrics::counter!("mqsync_apply_errors_total", "folder" => self.cfg.id.clone())
                    .increment(1);
                error!(folder = %self.cfg.id, %path, "apply refused: {e}");
                self.last_error = Some(e.to_string());
                self.engine.handle_applied(&path, &version, false);
            }
        }
    }

    fn request(&mut self, to: String, hashes: Vec<Hash>) {
        debug!(folder = %self.cfg.id, %to, chunks = hashes.len(), "requesting chunks");
        for part in hashes.chunks(wire::MAX_REQUEST_HASHES) {
            self.send(Message::Request {
                to: to.clone(),
                hashes: part.to_vec(),
            });
        }
    }

    fn send_digest(&mut self, reply: bool) {
        let buckets = self.engine.digest().buckets().to_vec();
        self.send(Message::Digest { reply, buckets });
    }

    /// Publishes entries in manifests (parents first, deletions deepest first, so the
    /// receiver can apply them in order), then the new chunks of a live change.
    fn publish_entries(&mut self, mut entries: Vec<Entry>, live: bool) {
        entries.sort_by(|a, b| {
            let (ad, bd) = (a.content.is_deleted(), b.content.is_deleted());
            ad.cmp(&bd).then_with(|| {
                if ad {
                    b.path
                        .depth()
                        .cmp(&a.path.depth())
                        .then(a.path.cmp(&b.path))
                } else {
                    a.path.cmp(&b.path)
                }
            })
        });
        let mut chunks = Vec::new();
        let mut patches = Vec::new();
        if live {
            debug!(folder = %self.cfg.id, entries = entries.len(), "announce");
            // A large file's edit goes out as a patch of the chunk list its receivers
            // hold, before the manifests; chunks are pushed in the same order as the
            // files they belong to are announced.
            let mut patched = Vec::new();
            let mut whole = Vec::new();
            for e in entries {
                match self
                    .previous
                    .get(&e.path)
                    .and_then(|old| FilePatch::of(&e, old))
                {
                    Some(p) => patched.push((e, p)),
                    None => whole.push(e),
                }
            }
            for e in patched.iter().map(|(e, _)| e).chain(&whole) {
                if let Content::File { chunks: cs, .. } = &e.content {
                    let first = chunks.len();
                    for c in cs {
                        if self.fresh.remove(&c.hash) {
                            chunks.push(c.hash);
                        }
                    }
                    if let Some(old) = self.previous.get(&e.path) {
                        for (h, bases) in crate::protocol::delta::bases(old, cs) {
                            if chunks[first..].contains(&h) {
                                self.delta_bases.insert(h, bases);
                            }
                        }
                    }
                }
            }
            patches = patched.into_iter().map(|(_, p)| p).collect();
            entries = whole;
        }
        if !patches.is_empty() {
            debug!(folder = %self.cfg.id, files = patches.len(), "sending patches");
        }
        for batch in batches(patches, MANIFEST_MSG_BYTES, wire::MAX_ENTRIES) {
            self.send(Message::Patch { patches: batch });
        }
        for batch in batches(entries, MANIFEST_MSG_BYTES, wire::MAX_ENTRIES) {
            self.send(Message::Manifest {
                live,
                entries: batch,
            });
        }
        if !chunks.is_empty() {
            debug!(folder = %self.cfg.id, chunks = chunks.len(), "pushing new chunks");
        }
        for h in chunks {
            if self.pushing.insert(h) {
                self.push.push_back(h);
            }
        }
        self.pump_chunks();
    }

    /// Publishes queued chunks while the outgoing queue has room and this turn's
    /// [`PUMP_BUDGET`] lasts.
    fn pump_chunks(&mut self) {
        let Some(p) = self.publisher.clone() else {
            return;
        };
        if !self.delta_bases.is_empty() {
            // Deltas read the signatures of their bases from the index.
            self.flush_signatures();
        }
        while !self.push.is_empty() && p.queued_bytes() < MAX_QUEUED_BYTES {
            if self.pump_budget == 0 {
                self.pump_more = true;
                break;
            }
            let was_waiting = self.window.waiting();
            if !self.window.open(Instant::now()) {
                if !was_waiting {
                    debug!(folder = %self.cfg.id, behind = self.window.behind(Instant::now()), "waiting for receivers to catch up");
                }
                break;
            }
            // One message holds whole chunks or deltas, in queue order: receivers start
            // fetching files in that order, and a file whose chunks arrive after a
            // later file's counts as overtaken and asks for them again.
            let mut msg = Vec::new();
            let mut deltas = Vec::new();
            let mut bytes = 0;
            while bytes < CHUNK_MSG_BYTES && deltas.len() < wire::MAX_DELTAS {
                let Some(h) = self.push.pop_front() else {
                    break;
                };
                self.pushing.remove(&h);
                let Some(data) = tokio::task::block_in_place(|| self.read_local(&h)) else {
                    // Its file went before it was read (a temp file renamed into
                    // place at once): the file that holds it now pushes it.
                    debug!(folder = %self.cfg.id, "chunk no longer available locally");
                    if self.unpushed.len() < MAX_UNPUSHED {
                        self.unpushed.insert(h);
                    }
                    continue;
                };
                if let Some(sig) = Signature::of(&data) {
                    self.signatures.push((h, sig));
                }
                let bases = self.delta_bases.remove(&h);
                let delta = bases.clone().and_then(|b| self.delta(h, &data, b));
                let switches = if delta.is_some() {
                    !msg.is_empty()
                } else {
                    !deltas.is_empty()
                };
                if switches {
                    // The other kind: it starts the next message.
                    self.push.push_front(h);
                    self.pushing.insert(h);
                    if let Some(b) = bases {
                        self.delta_bases.insert(h, b);
                    }
                    break;
                }
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
            self.window.pushed(last, bytes as u64, Instant::now());
            let was = self.compression.on();
            self.compression.pushed(bytes as u64, Instant::now());
            if self.compression.on() != was {
                let [off, on] = self
                    .compression
                    .rates()
                    .map(|r| r.map(|r| (r / 1e6).round()));
                debug!(folder = %self.cfg.id, compress = self.compression.on(), mb_s_without = ?off, mb_s_with = ?on, "chunk compression switched");
            }
            if msg.is_empty() {
                debug!(folder = %self.cfg.id, chunks = deltas.len(), bytes = deltas.iter().map(ChunkDelta::data_len).sum::<usize>(), "pushing chunks as deltas");
                self.send(Message::Deltas { deltas });
            } else {
                self.send(Message::Chunks { chunks: msg });
            }
        }
        if self.push.is_empty() {
            self.compression.drained(Instant::now());
        }
    }

    /// Chunk `hash` (read as `data`) as a delta of the old chunks `bases`, when their
    /// signatures are at hand and the delta carries less than 7/8 of the chunk.
    fn delta(&self, hash: Hash, data: &[u8], bases: Vec<Hash>) -> Option<ChunkDelta> {
        let (bases, sigs): (Vec<Hash>, Vec<Signature>) = tokio::task::block_in_place(|| {
            bases
                .into_iter()
                .filter_map(|b| Some((b, self.index.signature(&b).ok().flatten()?)))
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

    fn send(&mut self, msg: Message) {
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
        };
        // Chunk data is compressed as the folder's setting (or its measurement)
        // says; everything else always is (small, and compresses well).
        let compress = match &env.msg {
            Message::Chunks { .. } | Message::Deltas { .. } => self.compression.on(),
            _ => true,
        };
        match wire::encode_with(&env, &topic, &self.keys, compress) {
            Ok(bytes) => {
                let folder = self.cfg.id.clone();
                metrics::counter!("mqsync_messages_sent_total", "folder" => folder.clone(), "kind" => kind).increment(1);
                metrics::counter!("mqsync_bytes_sent_total", "folder" => folder)
                    .increment(bytes.len() as u64);
                p.publish(topic, bytes, false)
            }
            Err(e) => error!(folder = %self.cfg.id, "cannot encode message: {e}"),
        }
    }

    fn current_state(&self) -> State {
        if self.paused.is_some() {
            State::Error
        } else if self.engine.pending_count() > 0
            || self.applier.in_flight() > 0
            || self.index_failed.is_some()
        {
            // Not idle while what was applied is not yet recorded.
            State::Syncing
        } else {
            State::Idle
        }
    }

    fn status_doc(&self, state: State) -> FolderStatus {
        let (files, bytes) = self.engine.present();
        FolderStatus {
            node: self.node.clone(),
            folder: self.cfg.id.clone(),
            state,
            version: env!("CARGO_PKG_VERSION").to_string(),
            files,
            bytes,
            pending: self.engine.pending_count() as u64,
            digest: self.engine.digest().root(),
            local_changes: self.engine.local_change_count() as u64,
            last_error: self
                .paused
                .clone()
                .or_else(|| self.index_failed.as_ref().map(|(m, _)| m.clone()))
                .or_else(|| self.last_error.clone()),
            failing_since_ms: self.failing_since_ms,
            connected: self.connected,
            insecure_plaintext: self.connect.tls.is_none(),
            updated_ms: 0,
        }
    }

    /// Publishes the retained status when it changed (or was invalidated by the timer).
    fn publish_status(&mut self, state: State) {
        let failing = self.index_failed.is_some() || !self.failing.is_empty();
        match (failing, self.failing_since_ms) {
            (true, None) => self.failing_since_ms = Some(now_ms()),
            (false, Some(_)) => self.failing_since_ms = None,
            _ => {}
        }
        let doc = self.status_doc(state);
        if self.last_status.as_ref() == Some(&doc) {
            return;
        }
        let was_idle = self
            .last_status
            .as_ref()
            .is_some_and(|d| d.state == State::Idle);
        if doc.state == State::Idle && !was_idle {
            // The end of a busy period (the first scan, a large sync): what it freed
            // goes back to the system instead of staying in the allocator.
            self.shrink_buffers();
            crate::sys::heap::release_free_memory();
        }
        self.last_status = Some(doc.clone());
        let mut doc = doc;
        doc.updated_ms = now_ms();
        let folder = self.cfg.id.clone();
        metrics::gauge!("mqsync_files", "folder" => folder.clone()).set(doc.files as f64);
        metrics::gauge!("mqsync_bytes", "folder" => folder.clone()).set(doc.bytes as f64);
        metrics::gauge!("mqsync_pending", "folder" => folder.clone()).set(doc.pending as f64);
        metrics::gauge!("mqsync_connected", "folder" => folder).set(if doc.connected {
            1.0
        } else {
            0.0
        });
        let bytes = self.signed_status(&doc);
        self.write_health(&bytes);
        if let Some(p) = &self.publisher {
            p.publish(self.topics.status(&self.node), bytes, true);
        }
    }

    /// Drops the capacity that queues grew to in a busy period: a first scan of a
    /// million files leaves queues sized for a million effects and chunks, empty.
    fn shrink_buffers(&mut self) {
        self.flush_signatures();
        self.push.shrink_to_fit();
        self.pushing.shrink_to_fit();
        self.fresh.shrink_to_fit();
        self.unpushed = HashSet::new();
        self.recheck.shrink_to_fit();
        self.retries.shrink_to_fit();
        self.queued.shrink_to_fit();
        self.queued_applies.shrink_to_fit();
        self.retry_warned.shrink_to_fit();
        self.apply_started.shrink_to_fit();
        self.engine.shrink_buffers();
        self.compact();
    }

    /// Where each chunk of the files on disk is, from the confirmed entries (borrowed,
    /// not cloned: a copy of every entry here was once the peak of a start).
    fn rebuild_locations(&mut self) {
        let known = &self.known;
        self.locations = ChunkLocations::build(
            self.engine
                .entries()
                .filter(|e| known.contains_key(&e.path))
                .map(|e| (&e.path, &e.content)),
        );
    }

    /// Forgets the signatures of chunks no local file holds any more.
    fn drop_stale_signatures(&mut self) {
        let locations = &self.locations;
        match self.index.retain_signatures(|h| locations.contains(h)) {
            Ok(0) => {}
            Ok(n) => {
                debug!(folder = %self.cfg.id, dropped = n, "chunk signatures of chunks no file holds")
            }
            Err(e) => warn!(folder = %self.cfg.id, "pruning chunk signatures failed: {e}"),
        }
    }

    /// After many changes, rebuilds the per-file maps from their sorted contents. Filled
    /// one insert at a time (a first scan, a large sync), their B-tree nodes are about
    /// half empty; a start from the index builds them full. Rebuilding a million entries
    /// takes a fraction of a second, so it waits for a change of an eighth of the folder.
    fn compact(&mut self) {
        let files = self.known.len().max(self.engine.present().0 as usize);
        if self.stored_since_compact < COMPACT_MIN_CHANGES.max(files / 8) {
            return;
        }
        let started = Instant::now();
        self.stored_since_compact = 0;
        self.engine.compact();
        self.known = std::mem::take(&mut self.known).into_iter().collect();
        self.rebuild_locations();
        self.drop_stale_signatures();
        debug!(folder = %self.cfg.id, files, ms = started.elapsed().as_millis() as u64, "maps compacted");
    }

    /// The status JSON as published: signed under the group key (`status::signed_json`).
    fn signed_status(&self, doc: &FolderStatus) -> Vec<u8> {
        crate::ops::status::signed_json(doc, &self.topics.status(&self.node), &self.keys)
            .unwrap_or_default()
    }

    /// The local copy of the status for `mqsync healthcheck` (written atomically).
    fn write_health(&self, bytes: &[u8]) {
        let path = crate::ops::status::health_file(&self.state_dir, &self.cfg.id);
        let tmp = path.with_extension("json.tmp");
        let res = std::fs::create_dir_all(path.parent().unwrap_or(&self.state_dir))
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .or_else(|e| {
                // A full state directory has no block for a new file, but the old
                // file's block takes the new document (one block, so in practice
                // whole): the healthcheck then says why, not just that it is stale.
                let _ = std::fs::remove_file(&tmp);
                let f = std::fs::OpenOptions::new().write(true).open(&path);
                f.and_then(|f| {
                    std::os::unix::fs::FileExt::write_all_at(&f, bytes, 0)?;
                    f.set_len(bytes.len() as u64)
                })
                .map_err(|_| e)
            });
        if let Err(e) = res {
            debug!(folder = %self.cfg.id, "cannot write {}: {e}", path.display());
        }
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
