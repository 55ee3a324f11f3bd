//! The runtime of one node: for each folder, a task that owns the engine and drives it
//! from the watcher, the scanner, the MQTT transport and the applier, carrying out the
//! engine's effects (publish, store, apply). All I/O of the sync path meets here; the
//! decisions stay in `engine`.
//!
//! A folder ([`folder`]) is made of parts that own their state: the local side
//! ([`local`]: scans, the dirty set, the delete guard), the apply queue ([`apply`]),
//! inbound messages ([`inbound`]), outbound messages and chunk pushes ([`outbound`]),
//! the index writes ([`records`]) and health ([`health`]); the folder's loop routes
//! events and effects between them. A folder may send what it applied, batch by
//! batch, to an in-process observer ([`AppliedBatch`]; the demo prints them).

mod apply;
mod folder;
mod from_config;
mod health;
mod inbound;
mod local;
mod outbound;
mod pending;
mod records;
mod report;
mod requests;
mod shared_ignore;
mod trust;
mod watching;

pub use from_config::folder_settings;
pub use report::{Applied, AppliedBatch, AppliedSender, Change};

use crate::engine::Mode;
use crate::protocol::wire::Keys;
use crate::store::index::IndexError;
use crate::transport::ConnectSettings;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

use folder::Folder;

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
    /// Run after a batch of remote changes was applied.
    pub on_change: Option<crate::ops::hook::Hook>,
    /// Whether chunk data goes out compressed.
    pub compression: crate::transfer::compression::Mode,
    /// What is kept besides contents and permission bits (`ownership`, `xattrs`).
    pub keep: crate::fs::attrs::Keep,
    /// inotify or polling, and how often what no watch covers is scanned.
    pub watch: crate::fs::watcher::WatchMode,
    pub poll_interval: Duration,
    /// Receives each batch of remote changes once applied (the demo prints them).
    pub applied: Option<AppliedSender>,
}

#[derive(Clone)]
pub struct NodeSettings {
    pub node_id: String,
    pub state_dir: PathBuf,
    pub topic_prefix: String,
    pub connect: ConnectSettings,
    pub keys: Keys,
    pub folders: Vec<FolderSettings>,
    /// When the client certificate the node connects with expires (ms since the
    /// epoch), for the status document's `cert_days_left`.
    pub client_cert_expires_ms: Option<u64>,
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
        source: crate::fs::ignore::PatternError,
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
    crate::ops::metrics::register_folder(&folder.id);
    // Setting up the watcher walks the whole tree (one inotify watch per directory) and
    // loading the index reads every record: independent work, done at the same time.
    let ignore = shared_ignore::SharedIgnore::load(&folder.path, &folder.ignore, None).1;
    let early_watch = watching::early_watch(folder.path.clone(), ignore, folder.watch);
    let folder = match Folder::open(settings, folder) {
        Ok(f) => f,
        Err(e) => {
            if let Some(h) = early_watch {
                h.abort();
            }
            return Err(e);
        }
    };
    Ok(tokio::spawn(async move {
        folder.run(shutdown, early_watch).await
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

/// The wall clock in ms since the epoch: what the engine stamps changes with.
fn now_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_add_signed(test_clock_offset_ms())
}

/// Test only, undocumented for users: `MQSYNC_TEST_CLOCK_OFFSET_MS` (signed ms) shifts
/// the wall clock the engine is given, so the fault campaign (`campaign/`) can run one
/// node with a skewed clock without faking the whole process's time. Read once.
fn test_clock_offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::env::var("MQSYNC_TEST_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}
