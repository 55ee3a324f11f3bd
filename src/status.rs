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
    /// Milliseconds since the Unix epoch.
    pub updated_ms: u64,
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
