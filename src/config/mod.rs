//! Configuration: one TOML file plus `MQSYNC_*` environment overrides, turned into one
//! validated [`Config`] value, once, at start.
//!
//! Pipeline (the "vector" style): the file is walked key by key into a *raw* struct
//! (every field optional; unknown keys and values of the wrong type are collected with
//! their line), environment overrides are applied on the raw values, then
//! [`validate`](RawConfig) resolves defaults and relative paths and checks everything,
//! and with [`Checks::Run`] the files and folders on this machine are checked too: **every**
//! problem is collected as a [`KeyError`] with its key (`folder[1].mode`, `broker.url`,
//! or the environment variable's name) instead of stopping at the first. Only a TOML
//! syntax error stops at once ([`ConfigError::Parse`]).
//!
//! # Environment overrides
//!
//! Every key can be overridden by `MQSYNC_<SECTION>_<KEY>` (upper case); the
//! environment wins over the file:
//!
//! * top level: `MQSYNC_NODE_ID`, `MQSYNC_STATE_DIR`, `MQSYNC_LOG_FORMAT`;
//! * `[broker]`: `MQSYNC_BROKER_URL`, `MQSYNC_BROKER_CA_FILE`, `MQSYNC_BROKER_CERT_FILE`,
//!   `MQSYNC_BROKER_KEY_FILE`, `MQSYNC_BROKER_TOPIC_PREFIX`, `MQSYNC_BROKER_CLIENT_ID`,
//!   `MQSYNC_BROKER_KEEPALIVE_S`, `MQSYNC_BROKER_INSECURE_PLAINTEXT`,
//!   `MQSYNC_BROKER_EMBEDDED_LISTEN`;
//! * `[security]`: `MQSYNC_SECURITY_GROUP_KEY_FILE`;
//! * `[docker]`: `MQSYNC_DOCKER_VOLUME_PLUGIN`, `MQSYNC_DOCKER_VOLUMES_ROOT`,
//!   `MQSYNC_DOCKER_PLUGIN_SOCKET`;
//! * folders, addressed by id: `MQSYNC_FOLDER_<ID>_PATH`, `_CREATE`, `_MODE`, `_IGNORE`
//!   (comma-separated patterns, replaces the file's list), `_DEBOUNCE_MS`, `_WATCH`,
//!   `_POLL_INTERVAL_S`, where `<ID>` is
//!   the folder id upper-cased with `-` and `.` turned into `_` (`media-2` →
//!   `MQSYNC_FOLDER_MEDIA_2_PATH`);
//! * whole folders from the environment alone (containers without a config file):
//!   `MQSYNC_FOLDERS="media=/srv/media,conf=/etc/app"`. Each `id=path` entry sets the
//!   path of the folder with that id, or declares a new folder (defaults for every other
//!   key, which `MQSYNC_FOLDER_<ID>_*` can then set) appended after the file's folders.
//!
//! An empty value unsets an optional key (`MQSYNC_BROKER_URL=` selects the embedded
//! broker). Booleans accept `true/false/1/0/yes/no/on/off`. A value that does not parse
//! is reported with the variable's name as its key. Relative paths (file or
//! environment) are resolved against the directory of the config file (the current
//! directory when there is none).
//!
//! # Secrets
//!
//! Secrets are never written inline: every secret is read from a file named by a
//! `*_file` key (`broker.key_file`, `security.group_key_file`), which is what Docker
//! secrets mount under `/run/secrets/`. With [`Checks::Values`] this module only records
//! those paths and reads nothing but the config file itself (and the hostname for the
//! default `node_id`); [`Checks::Run`] also opens the files the keys name and looks up
//! the folders' paths, reading nothing in them.
//!
//! This module must not open network connections or write anything.
//!
//! # Layout
//!
//! `raw` walks the file into raw structs, `env` the `MQSYNC_*` overlay on them,
//! `validate` the defaults, paths and checks, `check` what `run` checks on disk, `error`
//! the error types and the mapping of TOML syntax errors to file, line and key. This
//! file holds the validated types and the entry points.

mod check;
mod env;
mod error;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

pub use crate::engine::Mode;
pub use error::{ConfigError, KeyError};

use env::Env;
use error::{Errors, parse_error};
use raw::RawConfig;

/// What loading a configuration checks beyond its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checks {
    /// Keys and values only; nothing on disk is looked at (`status`, `wait`,
    /// `healthcheck`, tests of example files).
    #[default]
    Values,
    /// Also the TLS files a client of an external `mqtts://` broker opens
    /// (`broker.ca_file`, `cert_file`, `key_file`) readable: `status`, `wait`,
    /// `pending`, `resync` and `forget`, which only talk to the broker.
    Broker,
    /// Also what `mqsync run` needs on this machine: at least one folder (or Docker
    /// volumes), every file a key names (`broker.ca_file`, `cert_file`, `key_file`,
    /// `security.group_key_file`, which an external broker requires) readable, and every
    /// folder's path an existing directory unless the folder says `create = true`.
    Run,
}

/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mqsync";
/// Default `broker.topic_prefix`.
pub const DEFAULT_TOPIC_PREFIX: &str = "mqsync";
/// Default `broker.keepalive_s`.
pub const DEFAULT_KEEPALIVE_S: u64 = 30;
/// Default `broker.max_message_bytes`: fits a broker limited to 1,000,000 bytes per
/// packet (EMQX's `1MB`, and every broker with a limit of 1 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 1_000_000;
/// Smallest accepted `broker.max_message_bytes`: room for a digest (about 10 KB) and a
/// status document whole, with headroom; anything larger than a message is split.
pub const MIN_MAX_MESSAGE_BYTES: u64 = 32_768;
/// Largest accepted `broker.max_message_bytes`: what every node accepts from the
/// broker ([`crate::broker::DEFAULT_MAX_PACKET_BYTES`]).
pub const MAX_MAX_MESSAGE_BYTES: u64 = crate::broker::DEFAULT_MAX_PACKET_BYTES as u64;
/// Default `broker.embedded_listen`.
pub const DEFAULT_EMBEDDED_LISTEN: &str = "127.0.0.1:8883";
/// Default port of an `mqtts://` URL.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// Default port of an `mqtt://` URL.
pub const DEFAULT_PLAIN_PORT: u16 = 1883;
/// Default `folder.debounce_ms`.
pub const DEFAULT_DEBOUNCE_MS: u64 = 100;
/// Largest accepted `folder.debounce_ms`.
pub const MAX_DEBOUNCE_MS: u64 = 60_000;
/// Default `folder.poll_interval_s`.
pub const DEFAULT_POLL_INTERVAL_S: u64 = 10;
/// Default `folder.max_delete_percent`.
pub const DEFAULT_MAX_DELETE_PERCENT: u64 = 50;
/// Default `folder.tombstone_days`.
pub const DEFAULT_TOMBSTONE_DAYS: u64 = 30;
/// Environment variable declaring whole folders (`id=path,id=path`).
pub const ENV_FOLDERS: &str = "MQSYNC_FOLDERS";
/// Default `docker.plugin_socket`: where the Docker engine discovers a plugin named
/// `mqsync`.
pub const DEFAULT_PLUGIN_SOCKET: &str = "/run/docker/plugins/mqsync.sock";

/// The validated configuration of one mqsync process.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This node's identity (topics, conflict file names); `[A-Za-z0-9._-]{1,64}`.
    pub node_id: String,
    /// Index, keys and other local state; absolute, never inside a synced folder.
    pub state_dir: PathBuf,
    /// Log output format.
    pub log_format: LogFormat,
    /// Address of the optional Prometheus metrics listener (`GET /metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// How to reach (or start) the MQTT broker.
    pub broker: BrokerConfig,
    /// Keys.
    pub security: SecurityConfig,
    /// Synced folders (`[[folder]]`), ids unique, paths absolute and disjoint.
    pub folders: Vec<FolderConfig>,
    /// The Docker volume plugin (`[docker]`).
    pub docker: DockerConfig,
    /// Where this configuration came from (file path, or `<environment>`), for messages.
    pub source: PathBuf,
}

/// `[broker]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// External broker; `None` starts the embedded broker.
    pub url: Option<BrokerUrl>,
    /// CA certificate(s) that sign the broker's certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mTLS (PEM).
    pub cert_file: Option<PathBuf>,
    /// Client private key for mTLS (PEM); a secret.
    pub key_file: Option<PathBuf>,
    /// First topic level of every mqsync topic.
    pub topic_prefix: String,
    /// MQTT client id; `None` means `mqsync-{node_id}` (see [`Config::client_id`]).
    pub client_id: Option<String>,
    /// MQTT keep-alive in seconds (1..=65535).
    pub keepalive_s: u64,
    /// Allow `mqtt://` (plain TCP).
    pub insecure_plaintext: bool,
    /// Where the embedded broker listens when `url` is absent.
    pub embedded_listen: SocketAddr,
    /// Every node presents the same client certificate (a Swarm global service): the
    /// node does not require its certificate to name its `node_id`.
    pub shared_node_cert: bool,
    /// Largest MQTT packet this node publishes, topic and headers included
    /// ([`MIN_MAX_MESSAGE_BYTES`]..=[`MAX_MAX_MESSAGE_BYTES`]): set to the broker's
    /// packet size limit; larger messages are split.
    pub max_message_bytes: usize,
}

/// A parsed `mqtts://host:port` or `mqtt://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `true` for `mqtts://`.
    pub tls: bool,
}

/// `[security]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityConfig {
    /// File holding the group key that authenticates control messages (a secret).
    pub group_key_file: Option<PathBuf>,
}

/// `[docker]`: the Docker volume plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Serve the Docker volume plugin API on `plugin_socket`.
    pub volume_plugin: bool,
    /// Directory holding one sub-directory per volume; absolute, disjoint from the
    /// folders and `state_dir`. Set whenever `volume_plugin` is.
    pub volumes_root: Option<PathBuf>,
    /// Unix socket of the plugin API; the engine finds `/run/docker/plugins/NAME.sock`
    /// as the driver `NAME`.
    pub plugin_socket: PathBuf,
}

/// One `[[folder]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderConfig {
    /// Folder id, used in MQTT topics; `[A-Za-z0-9._-]{1,64}`.
    pub id: String,
    /// Absolute root of the folder on this node.
    pub path: PathBuf,
    /// Create `path` when it is missing at start (`create = true`); otherwise `run`
    /// refuses a folder whose path does not exist, so that a typo does not join the
    /// cluster as an empty folder.
    pub create: bool,
    /// Direction of sync.
    pub mode: Mode,
    /// Ignore patterns, gitignore style (see `crate::fs::ignore`).
    pub ignore: Vec<String>,
    /// Delay before sending ordinary changes, in milliseconds (0..=60000).
    pub debounce_ms: u64,
    /// A local scan that would delete more than this share of the folder (percent,
    /// 1..=100; 100 disables the guard) waits for a resync command.
    pub max_delete_percent: u64,
    /// Days a deletion record is kept before it is forgotten (1..=36500).
    pub tombstone_days: u64,
    /// Command run after a batch of remote changes was applied (`sh -c`, or an
    /// argument list executed directly), with the changed paths on stdin, one per line.
    pub on_change: Option<crate::ops::hook::Hook>,
    /// Whether chunk data is sent zstd-compressed: measured (`auto`), `always`, `never`.
    pub compression: crate::transfer::compression::Mode,
    /// Whether owner and group are kept: by name (default), by number, or not. Needs
    /// a daemon running as root; otherwise only reported.
    pub ownership: crate::fs::attrs::Ownership,
    /// Whether extended attributes and POSIX ACLs are kept (`user.*`, and `security.*`
    /// and `system.posix_acl_*` where the daemon may set them).
    pub xattrs: bool,
    /// How changes are noticed (`inotify`, or `poll` for network file systems), and
    /// how often (1..=86400 s) what no watch covers is scanned.
    pub watch: crate::fs::watcher::WatchMode,
    pub poll_interval_s: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected \"text\" or \"json\")"
            )),
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = String;
    /// Parses `mqtts://host[:port]` (default 8883) or `mqtt://host[:port]` (1883).
    fn from_str(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = s.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = s.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!(
                "unsupported URL {s:?}: expected mqtts://HOST[:PORT] (or mqtt:// with insecure_plaintext)"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "URL {s:?} must be only scheme, host and port (no user, path or query)"
            ));
        }
        let default_port = if tls {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PLAIN_PORT
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(format!("URL {s:?}: unclosed '[' in IPv6 address"));
            };
            match after {
                "" => (host, None),
                p => match p.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return Err(format!("URL {s:?}: unexpected {p:?} after ']'")),
                },
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("URL {s:?} has no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Err(format!(
                        "URL {s:?}: port {p:?} is not a number in 1..=65535"
                    ));
                }
                Ok(p) => p,
            },
        };
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl Config {
    /// Reads and validates the config file at `path`, with overrides from the process
    /// environment. Relative paths are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text` ([`Checks::Values`]). `origin` is the file it came
    /// from: it names the file in messages and its directory anchors relative paths.
    /// `env` looks up environment variables (tests pass their own).
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::from_toml_checked(text, origin, env, Checks::Values)
    }

    /// [`Config::from_toml`] with the `checks` a command needs; every problem, from
    /// unknown keys to unreadable files, comes in one [`ConfigError::Invalid`].
    pub fn from_toml_checked(
        text: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        checks: Checks,
    ) -> Result<Config, ConfigError> {
        let mut errors = Errors::default();
        let raw = raw::parse(text, &mut errors).map_err(|e| parse_error(text, origin, &e))?;
        let base = origin.parent().unwrap_or(Path::new(""));
        raw.finish(origin, base, env, checks, errors)
    }

    /// The configuration without a file (`mqsync run` with no `--config`): defaults plus
    /// the environment `env`. Relative paths are resolved against the current directory.
    pub fn from_env_only(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_env_only_checked(env, Checks::Values)
    }

    /// [`Config::from_env_only`] with the `checks` a command needs.
    pub fn from_env_only_checked(
        env: &dyn Fn(&str) -> Option<String>,
        checks: Checks,
    ) -> Result<Config, ConfigError> {
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        RawConfig::default().finish(
            Path::new("<environment>"),
            &base,
            env,
            checks,
            Errors::default(),
        )
    }

    /// The one check of [`Checks::Run`] that needs no disk: at least one folder must be
    /// configured, unless the node serves Docker volumes.
    pub fn validate_for_run(&self) -> Result<(), ConfigError> {
        match check::no_folder(self) {
            Some(reason) => Err(ConfigError::Invalid {
                file: self.source.clone(),
                errors: vec![KeyError {
                    key: "folder".into(),
                    line: None,
                    reason,
                }],
            }),
            None => Ok(()),
        }
    }

    /// The MQTT client id to use: `broker.client_id`, or `mqsync-{node_id}`.
    pub fn client_id(&self) -> String {
        self.broker
            .client_id
            .clone()
            .unwrap_or_else(|| format!("mqsync-{}", self.node_id))
    }

    /// The folder with this id.
    pub fn folder(&self, id: &str) -> Option<&FolderConfig> {
        self.folders.iter().find(|f| f.id == id)
    }
}

/// The environment-variable form of a folder id: upper case, `-` and `.` → `_`.
pub fn folder_env_id(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

impl RawConfig {
    /// Applies the environment, fills defaults, resolves paths, validates and makes the
    /// `checks`; `errors` holds what parsing the file found.
    fn finish(
        mut self,
        origin: &Path,
        base: &Path,
        get: &dyn Fn(&str) -> Option<String>,
        checks: Checks,
        mut errors: Errors,
    ) -> Result<Config, ConfigError> {
        // A key the file got wrong is unset in `self`: validation would report it
        // again (as missing), so only the file's own error is kept for it.
        errors.0.sort_by_key(|e| e.line);
        let from_file: Vec<String> = errors.0.iter().map(|e| e.key.clone()).collect();
        let parsed = errors.0.len();
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        // Keys under which each folder is reported: `folder[i]` for the file's folders,
        // the env variable for folders declared by MQSYNC_FOLDERS.
        let mut folder_keys: Vec<String> = (0..self.folders.len())
            .map(|i| format!("folder[{i}]"))
            .collect();
        self.apply_env(&Env { get }, &mut folder_keys, &mut errors);
        let config = self.validate(origin, &base, &folder_keys, &mut errors);
        match checks {
            Checks::Values => {}
            Checks::Broker => check::tls_files(&config, &mut errors),
            Checks::Run => check::for_run(&config, &folder_keys, &mut errors),
        }
        let later = errors.0.split_off(parsed);
        errors.0.extend(later.into_iter().filter(|e| {
            !from_file.iter().any(|k| {
                e.key == *k
                    || e.key
                        .strip_prefix(k.as_str())
                        .is_some_and(|rest| rest.starts_with(['.', '[']))
            })
        }));
        if errors.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: origin.to_owned(),
                errors: errors.0,
            })
        }
    }
}
