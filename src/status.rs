//! The retained status document each node publishes per folder on
//! `{prefix}/{folder}/status/{node}` (public, stable JSON for monitoring tools), and
//! the topic names of the public and internal topics.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Scanning,
    Syncing,
    Idle,
    Offline,
    Error,
}

impl State {
    /// The name used in the status JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Scanning => "scanning",
            State::Syncing => "syncing",
            State::Idle => "idle",
            State::Offline => "offline",
            State::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderStatus {
    pub node: String,
    pub folder: String,
    pub state: State,
    /// mqsync version of the node.
    pub version: String,
    /// Files, directories and symlinks present (tombstones excluded).
    pub files: u64,
    pub bytes: u64,
    /// Remote changes accepted but not yet on disk.
    pub pending: u64,
    /// Hex summary of the node's confirmed state; equal digests mean equal trees.
    pub digest: String,
    /// Local changes not sent (receive-only folders).
    pub local_changes: u64,
    pub last_error: Option<String>,
    /// Whether the node's connections to the broker are up.
    pub connected: bool,
    /// The node talks to the broker over plain TCP (`insecure_plaintext`).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

/// Where a node writes its latest status per folder for `mqsync healthcheck`.
pub fn health_file(state_dir: &std::path::Path, folder: &str) -> std::path::PathBuf {
    state_dir.join("health").join(format!("{folder}.json"))
}

/// A node counts as healthy while its status file is this fresh.
pub const HEALTH_MAX_AGE_MS: u64 = 30_000;

/// Why a folder's status is unhealthy, if it is.
pub fn unhealthy(doc: &FolderStatus, now_ms: u64) -> Option<String> {
    if now_ms.saturating_sub(doc.updated_ms) > HEALTH_MAX_AGE_MS {
        return Some(format!(
            "folder {}: status is {} s old (daemon not running or stuck)",
            doc.folder,
            now_ms.saturating_sub(doc.updated_ms) / 1000
        ));
    }
    match doc.state {
        State::Error | State::Offline => Some(format!(
            "folder {}: state {:?}: {}",
            doc.folder,
            doc.state,
            doc.last_error.as_deref().unwrap_or("no detail")
        )),
        _ if !doc.connected => Some(format!(
            "folder {}: not connected to the broker: {}",
            doc.folder,
            doc.last_error.as_deref().unwrap_or("no detail")
        )),
        _ => None,
    }
}

/// Topic names for one folder.
#[derive(Debug, Clone)]
pub struct Topics {
    pub prefix: String,
    pub folder: String,
}

impl Topics {
    /// Internal data topic of `node`: `{prefix}/{folder}/v1/{node}`.
    pub fn data(&self, node: &str) -> String {
        format!("{}/{}/v1/{}", self.prefix, self.folder, node)
    }

    pub fn data_filter(&self) -> String {
        format!("{}/{}/v1/+", self.prefix, self.folder)
    }

    pub fn status(&self, node: &str) -> String {
        format!("{}/{}/status/{}", self.prefix, self.folder, node)
    }

    /// All status topics under `prefix` (every folder, every node).
    pub fn all_status_filter(prefix: &str) -> String {
        format!("{prefix}/+/status/+")
    }

    pub fn cmd(&self) -> String {
        format!("{}/{}/cmd", self.prefix, self.folder)
    }

    /// The sending node of a data topic, if `topic` is one of this folder's.
    pub fn data_sender<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        let rest = rest
            .strip_prefix(self.folder.as_str())?
            .strip_prefix("/v1/")?;
        (!rest.is_empty() && !rest.contains('/')).then_some(rest)
    }
}
