//! The configuration as written in the TOML file: every key optional, unknown keys
//! refused. The environment overlay edits these values and validation alone turns them
//! into a [`Config`](super::Config); nothing here checks a value.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) node_id: Option<String>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) log_format: Option<String>,
    pub(super) metrics_listen: Option<String>,
    #[serde(default)]
    pub(super) broker: RawBroker,
    #[serde(default)]
    pub(super) security: RawSecurity,
    #[serde(default, rename = "folder")]
    pub(super) folders: Vec<RawFolder>,
    #[serde(default)]
    pub(super) docker: RawDocker,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    pub(super) volume_plugin: Option<bool>,
    pub(super) volumes_root: Option<PathBuf>,
    pub(super) plugin_socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    pub(super) url: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) topic_prefix: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) keepalive_s: Option<u64>,
    pub(super) insecure_plaintext: Option<bool>,
    pub(super) embedded_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecurity {
    pub(super) group_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFolder {
    pub(super) id: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) mode: Option<String>,
    pub(super) ignore: Option<Vec<String>>,
    pub(super) debounce_ms: Option<u64>,
    pub(super) max_delete_percent: Option<u64>,
    pub(super) tombstone_days: Option<u64>,
    pub(super) on_change: Option<String>,
    pub(super) compression: Option<String>,
}
