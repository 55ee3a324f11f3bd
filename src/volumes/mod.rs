//! Docker volumes backed by mqsync folders (`[docker] volume_plugin = true`): the
//! engine's plugin API on a unix socket ([`plugin`]), the signed retained documents
//! that announce volumes and mounts to the other nodes ([`messages`]), the pure state
//! of all volumes ([`registry`]) and the task that carries it out ([`manager`]).

pub mod manager;
pub mod messages;
pub mod plugin;
pub mod registry;

pub use manager::run;

use crate::node::NodeSettings;
use std::path::PathBuf;

/// What the volume service needs.
#[derive(Clone)]
pub struct VolumeSettings {
    /// One sub-directory per volume.
    pub root: PathBuf,
    /// The plugin API's unix socket.
    pub socket: PathBuf,
    /// Node identity, broker, keys and state directory; `folders` are the configured
    /// folders, whose ids volumes may not take.
    pub node: NodeSettings,
}

/// Makes the volumes root and binds the plugin socket: what can fail before the
/// service runs.
pub fn prepare(s: &VolumeSettings) -> Result<tokio::net::UnixListener, VolumeServiceError> {
    std::fs::create_dir_all(&s.root).map_err(|source| VolumeServiceError::Root {
        path: s.root.clone(),
        source,
    })?;
    plugin::bind(&s.socket)
}

/// The folder ids of the volumes this node has health files for (`vol.NAME`), for
/// `mqsync healthcheck`.
pub fn health_ids(state_dir: &std::path::Path) -> Vec<String> {
    let dir = crate::ops::status::health_file(state_dir, "x");
    let Some(dir) = dir.parent() else {
        return Vec::new();
    };
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?;
            id.starts_with("vol.").then(|| id.to_string())
        })
        .collect();
    ids.sort();
    ids
}

/// Why the volume service could not run.
#[derive(Debug, thiserror::Error)]
pub enum VolumeServiceError {
    #[error("docker.plugin_socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("docker.volumes_root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
