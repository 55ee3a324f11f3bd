//! Configuration: one TOML file plus `MQSYNC_*` environment overrides, turned into one
//! validated [`Config`] value, once, at start.
//!
//! Pipeline (the "vector" style): the file is deserialized into a *raw* serde struct
//! (every field optional, unknown keys refused), environment overrides are applied on
//! the raw values, then [`validate`](RawConfig) resolves defaults and relative paths
//! and checks everything, collecting **every** problem as a [`KeyError`] with its key
//! (`folder[1].mode`, `broker.url`, or the environment variable's name) instead of
//! stopping at the first.
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
//! * folders, addressed by id: `MQSYNC_FOLDER_<ID>_PATH`, `_MODE`, `_IGNORE`
//!   (comma-separated globs, replaces the file's list), `_DEBOUNCE_MS`, where `<ID>` is
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
//! secrets mount under `/run/secrets/`. This module only records those paths; it reads
//! nothing but the config file itself (and the hostname for the default `node_id`).
//!
//! This module must not open network connections or touch the synced folders.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

pub use crate::engine::Mode;

/// Default `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/mqsync";
/// Default `broker.topic_prefix`.
pub const DEFAULT_TOPIC_PREFIX: &str = "mqsync";
/// Default `broker.keepalive_s`.
pub const DEFAULT_KEEPALIVE_S: u64 = 30;
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
    /// Direction of sync.
    pub mode: Mode,
    /// Glob patterns of ignored paths (each compiles with `globset`).
    pub ignore: Vec<String>,
    /// Delay before sending ordinary changes, in milliseconds (0..=60000).
    pub debounce_ms: u64,
    /// A local scan that would delete more than this share of the folder (percent,
    /// 1..=100; 100 disables the guard) waits for a resync command.
    pub max_delete_percent: u64,
    /// Days a deletion record is kept before it is forgotten (1..=36500).
    pub tombstone_days: u64,
    /// Command run with `sh -c` after a batch of remote changes was applied, with the
    /// changed paths on stdin, one per line.
    pub on_change: Option<String>,
    /// Whether chunk data is sent zstd-compressed: measured (`auto`), `always`, `never`.
    pub compression: crate::transfer::compression::Mode,
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

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// The key (`folder[1].mode`, `broker.url`) or environment variable name.
    pub key: String,
    /// What is wrong and what to do.
    pub reason: String,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{}:{line}:{column}: {key}: {message}", file.display())]
    Parse {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The offending key, as far as it could be determined (`?` otherwise).
        key: String,
        /// The parser's message.
        message: String,
    },
    /// The values are wrong; every problem found is listed.
    #[error("{}", render_invalid(file, errors))]
    Invalid {
        /// The file (or `<environment>`).
        file: PathBuf,
        /// Every problem, in key order of discovery.
        errors: Vec<KeyError>,
    },
}

fn render_invalid(file: &Path, errors: &[KeyError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}: {}", file.display(), e.key, e.reason))
        .collect::<Vec<_>>()
        .join("\n")
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

    /// Parses and validates `text`. `origin` is the file it came from: it names the file
    /// in messages and its directory anchors relative paths. `env` looks up environment
    /// variables (tests pass their own).
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
        let base = origin.parent().unwrap_or(Path::new(""));
        raw.finish(origin, base, env)
    }

    /// The configuration without a file (`mqsync run` with no `--config`): defaults plus
    /// the environment `env`. Relative paths are resolved against the current directory.
    pub fn from_env_only(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        RawConfig::default().finish(Path::new("<environment>"), &base, env)
    }

    /// Extra checks for `mqsync run`: at least one folder must be configured, unless the
    /// node serves Docker volumes.
    pub fn validate_for_run(&self) -> Result<(), ConfigError> {
        if self.folders.is_empty() && !self.docker.volume_plugin {
            return Err(ConfigError::Invalid {
                file: self.source.clone(),
                errors: vec![KeyError {
                    key: "folder".into(),
                    reason: format!(
                        "no folder configured: add a [[folder]] table with id and path, or set {ENV_FOLDERS}=\"id=/path\" (or serve Docker volumes with [docker] volume_plugin = true)"
                    ),
                }],
            });
        }
        Ok(())
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

// ---------------------------------------------------------------------------------------
// Raw (as written) configuration.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: Option<String>,
    state_dir: Option<PathBuf>,
    log_format: Option<String>,
    metrics_listen: Option<String>,
    #[serde(default)]
    broker: RawBroker,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default, rename = "folder")]
    folders: Vec<RawFolder>,
    #[serde(default)]
    docker: RawDocker,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    volume_plugin: Option<bool>,
    volumes_root: Option<PathBuf>,
    plugin_socket: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    topic_prefix: Option<String>,
    client_id: Option<String>,
    keepalive_s: Option<u64>,
    insecure_plaintext: Option<bool>,
    embedded_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    group_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFolder {
    id: Option<String>,
    path: Option<PathBuf>,
    mode: Option<String>,
    ignore: Option<Vec<String>>,
    debounce_ms: Option<u64>,
    max_delete_percent: Option<u64>,
    tombstone_days: Option<u64>,
    on_change: Option<String>,
    compression: Option<String>,
}

/// Collects every problem found.
#[derive(Default)]
struct Errors(Vec<KeyError>);

impl Errors {
    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(KeyError {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

/// Environment lookup that records parse failures under the variable's name.
struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn string(&self, var: &str, slot: &mut Option<String>) {
        if let Some(v) = (self.get)(var) {
            *slot = Some(v);
        }
    }

    /// Empty value unsets.
    fn optional_string(&self, var: &str, slot: &mut Option<String>) {
        if let Some(v) = (self.get)(var) {
            *slot = if v.is_empty() { None } else { Some(v) };
        }
    }

    /// Empty value unsets.
    fn optional_path(&self, var: &str, slot: &mut Option<PathBuf>) {
        if let Some(v) = (self.get)(var) {
            *slot = if v.is_empty() {
                None
            } else {
                Some(PathBuf::from(v))
            };
        }
    }

    fn path(&self, var: &str, slot: &mut Option<PathBuf>) {
        if let Some(v) = (self.get)(var) {
            *slot = Some(PathBuf::from(v));
        }
    }

    fn u64(&self, var: &str, slot: &mut Option<u64>, errors: &mut Errors) {
        if let Some(v) = (self.get)(var) {
            match v.trim().parse::<u64>() {
                Ok(n) => *slot = Some(n),
                Err(_) => errors.push(var, format!("{v:?} is not a non-negative integer")),
            }
        }
    }

    fn bool(&self, var: &str, slot: &mut Option<bool>, errors: &mut Errors) {
        if let Some(v) = (self.get)(var) {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => *slot = Some(true),
                "false" | "0" | "no" | "off" => *slot = Some(false),
                _ => errors.push(
                    var,
                    format!("{v:?} is not a boolean (expected true or false)"),
                ),
            }
        }
    }

    fn list(&self, var: &str, slot: &mut Option<Vec<String>>) {
        if let Some(v) = (self.get)(var) {
            *slot = Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
}

impl RawConfig {
    /// Applies the environment, fills defaults, resolves paths and validates.
    fn finish(
        mut self,
        origin: &Path,
        base: &Path,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut errors = Errors::default();
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        // Keys under which each folder is reported: `folder[i]` for the file's folders,
        // the env variable for folders declared by MQSYNC_FOLDERS.
        let mut folder_keys: Vec<String> = (0..self.folders.len())
            .map(|i| format!("folder[{i}]"))
            .collect();
        self.apply_env(&Env { get }, &mut folder_keys, &mut errors);
        let config = self.validate(origin, &base, &folder_keys, &mut errors);
        if errors.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: origin.to_owned(),
                errors: errors.0,
            })
        }
    }

    fn apply_env(&mut self, env: &Env<'_>, folder_keys: &mut Vec<String>, errors: &mut Errors) {
        env.string("MQSYNC_NODE_ID", &mut self.node_id);
        env.path("MQSYNC_STATE_DIR", &mut self.state_dir);
        env.string("MQSYNC_LOG_FORMAT", &mut self.log_format);
        env.optional_string("MQSYNC_METRICS_LISTEN", &mut self.metrics_listen);

        let b = &mut self.broker;
        env.optional_string("MQSYNC_BROKER_URL", &mut b.url);
        env.optional_path("MQSYNC_BROKER_CA_FILE", &mut b.ca_file);
        env.optional_path("MQSYNC_BROKER_CERT_FILE", &mut b.cert_file);
        env.optional_path("MQSYNC_BROKER_KEY_FILE", &mut b.key_file);
        env.string("MQSYNC_BROKER_TOPIC_PREFIX", &mut b.topic_prefix);
        env.optional_string("MQSYNC_BROKER_CLIENT_ID", &mut b.client_id);
        env.u64("MQSYNC_BROKER_KEEPALIVE_S", &mut b.keepalive_s, errors);
        env.bool(
            "MQSYNC_BROKER_INSECURE_PLAINTEXT",
            &mut b.insecure_plaintext,
            errors,
        );
        env.string("MQSYNC_BROKER_EMBEDDED_LISTEN", &mut b.embedded_listen);

        env.optional_path(
            "MQSYNC_SECURITY_GROUP_KEY_FILE",
            &mut self.security.group_key_file,
        );

        let d = &mut self.docker;
        env.bool("MQSYNC_DOCKER_VOLUME_PLUGIN", &mut d.volume_plugin, errors);
        env.optional_path("MQSYNC_DOCKER_VOLUMES_ROOT", &mut d.volumes_root);
        env.path("MQSYNC_DOCKER_PLUGIN_SOCKET", &mut d.plugin_socket);

        if let Some(list) = (env.get)(ENV_FOLDERS) {
            for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let Some((id, path)) = entry.split_once('=') else {
                    errors.push(
                        ENV_FOLDERS,
                        format!("entry {entry:?} is not of the form id=/path"),
                    );
                    continue;
                };
                let (id, path) = (id.trim(), path.trim());
                match self
                    .folders
                    .iter_mut()
                    .find(|f| f.id.as_deref() == Some(id))
                {
                    Some(folder) => folder.path = Some(PathBuf::from(path)),
                    None => {
                        self.folders.push(RawFolder {
                            id: Some(id.to_owned()),
                            path: Some(PathBuf::from(path)),
                            ..RawFolder::default()
                        });
                        folder_keys.push(format!("{ENV_FOLDERS}[{id}]"));
                    }
                }
            }
        }

        for folder in &mut self.folders {
            let Some(id) = folder.id.as_deref() else {
                continue;
            };
            let prefix = format!("MQSYNC_FOLDER_{}_", folder_env_id(id));
            env.path(&format!("{prefix}PATH"), &mut folder.path);
            env.string(&format!("{prefix}MODE"), &mut folder.mode);
            env.string(&format!("{prefix}COMPRESSION"), &mut folder.compression);
            env.list(&format!("{prefix}IGNORE"), &mut folder.ignore);
            env.u64(
                &format!("{prefix}DEBOUNCE_MS"),
                &mut folder.debounce_ms,
                errors,
            );
            env.u64(
                &format!("{prefix}MAX_DELETE_PERCENT"),
                &mut folder.max_delete_percent,
                errors,
            );
            env.u64(
                &format!("{prefix}TOMBSTONE_DAYS"),
                &mut folder.tombstone_days,
                errors,
            );
            env.optional_string(&format!("{prefix}ON_CHANGE"), &mut folder.on_change);
        }
    }

    fn validate(
        self,
        origin: &Path,
        base: &Path,
        folder_keys: &[String],
        errors: &mut Errors,
    ) -> Config {
        let node_id = match self.node_id {
            Some(id) => {
                check_id(&id, "node_id", errors);
                id
            }
            None => match hostname::get().ok().and_then(|h| h.into_string().ok()) {
                Some(h) if id_problem(&h).is_none() => h,
                Some(h) => {
                    errors.push(
                        "node_id",
                        format!(
                            "not set, and the hostname {h:?} is not a valid node id ({}); set node_id or MQSYNC_NODE_ID",
                            id_problem(&h).unwrap_or_default()
                        ),
                    );
                    h
                }
                None => {
                    errors.push(
                        "node_id",
                        "not set and the hostname could not be read; set node_id or MQSYNC_NODE_ID",
                    );
                    String::new()
                }
            },
        };

        let state_dir = resolve(
            base,
            self.state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        );
        if state_dir.as_os_str().is_empty() || state_dir == Path::new("/") {
            errors.push(
                "state_dir",
                "must be a dedicated directory, not empty or `/`",
            );
        }

        let log_format = match self.log_format.as_deref() {
            None => LogFormat::default(),
            Some(s) => s.parse().unwrap_or_else(|e: String| {
                errors.push("log_format", e);
                LogFormat::default()
            }),
        };

        let metrics_listen = self.metrics_listen.as_deref().and_then(|s| {
            s.parse::<SocketAddr>()
                .map_err(|e| errors.push("metrics_listen", format!("{s:?} is not IP:PORT: {e}")))
                .ok()
        });

        let broker = validate_broker(self.broker, base, errors);
        let security = SecurityConfig {
            group_key_file: self.security.group_key_file.map(|p| resolve(base, p)),
        };

        let mut folders = Vec::with_capacity(self.folders.len());
        for (i, raw) in self.folders.into_iter().enumerate() {
            let key = folder_keys
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("folder[{i}]"));
            folders.push(validate_folder(raw, &key, base, errors));
        }
        check_folder_set(&folders, folder_keys, &state_dir, errors);
        let docker = validate_docker(self.docker, base, &folders, folder_keys, &state_dir, errors);

        Config {
            node_id,
            state_dir,
            log_format,
            metrics_listen,
            broker,
            security,
            folders,
            docker,
            source: origin.to_owned(),
        }
    }
}

fn validate_docker(
    raw: RawDocker,
    base: &Path,
    folders: &[FolderConfig],
    folder_keys: &[String],
    state_dir: &Path,
    errors: &mut Errors,
) -> DockerConfig {
    let volume_plugin = raw.volume_plugin.unwrap_or(false);
    let volumes_root = raw.volumes_root.map(|p| resolve(base, p));
    let plugin_socket = resolve(
        base,
        raw.plugin_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGIN_SOCKET)),
    );
    if volume_plugin && volumes_root.is_none() {
        errors.push(
            "docker.volumes_root",
            "missing: volume_plugin = true needs the directory that holds the volumes (for example /var/lib/mqsync-volumes)",
        );
    }
    if let Some(root) = &volumes_root {
        if root == Path::new("/") {
            errors.push(
                "docker.volumes_root",
                "must be a dedicated directory, not `/`",
            );
        } else if state_dir.starts_with(root) || root.starts_with(state_dir) {
            errors.push(
                "docker.volumes_root",
                format!(
                    "{} and state_dir ({}) overlap; keep volumes out of the state directory",
                    root.display(),
                    state_dir.display()
                ),
            );
        }
        for (i, f) in folders.iter().enumerate() {
            if f.path.as_os_str().is_empty() {
                continue;
            }
            if f.path.starts_with(root) || root.starts_with(&f.path) {
                let key = folder_keys
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("folder[{i}]"));
                errors.push(
                    "docker.volumes_root",
                    format!(
                        "{} overlaps {key} ({}); volumes and folders must not overlap",
                        root.display(),
                        f.path.display()
                    ),
                );
            }
        }
    }
    if plugin_socket.file_name().is_none() {
        errors.push(
            "docker.plugin_socket",
            format!("{} is not a socket file path", plugin_socket.display()),
        );
    }
    DockerConfig {
        volume_plugin,
        volumes_root,
        plugin_socket,
    }
}

fn validate_broker(raw: RawBroker, base: &Path, errors: &mut Errors) -> BrokerConfig {
    let insecure_plaintext = raw.insecure_plaintext.unwrap_or(false);
    let url = raw
        .url
        .as_deref()
        .and_then(|s| match s.parse::<BrokerUrl>() {
            Ok(url) => Some(url),
            Err(e) => {
                errors.push("broker.url", e);
                None
            }
        });
    let ca_file = raw.ca_file.map(|p| resolve(base, p));
    let cert_file = raw.cert_file.map(|p| resolve(base, p));
    let key_file = raw.key_file.map(|p| resolve(base, p));
    if let Some(url) = &url {
        if !url.tls && !insecure_plaintext {
            errors.push(
                "broker.url",
                format!(
                    "{url} is plain TCP: use mqtts://, or set broker.insecure_plaintext = true \
                     (MQSYNC_BROKER_INSECURE_PLAINTEXT=true) to allow it"
                ),
            );
        }
        if url.tls && ca_file.is_none() {
            errors.push(
                "broker.ca_file",
                format!("required with {url}: the CA certificate (PEM) that signed the broker's certificate"),
            );
        }
    }
    match (&cert_file, &key_file) {
        (Some(_), None) => errors.push(
            "broker.key_file",
            "missing: broker.cert_file is set, and a client certificate needs its key",
        ),
        (None, Some(_)) => errors.push(
            "broker.cert_file",
            "missing: broker.key_file is set, and a client key needs its certificate",
        ),
        _ => {}
    }

    let topic_prefix = raw
        .topic_prefix
        .unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.to_owned());
    if let Some(problem) = topic_prefix_problem(&topic_prefix) {
        errors.push("broker.topic_prefix", problem);
    }

    if let Some(id) = &raw.client_id {
        if id.is_empty() || id.len() > 256 || id.contains('\0') {
            errors.push(
                "broker.client_id",
                "must be 1 to 256 bytes without NUL (omit it for the default mqsync-NODE_ID)",
            );
        }
    }

    let keepalive_s = raw.keepalive_s.unwrap_or(DEFAULT_KEEPALIVE_S);
    if !(1..=u64::from(u16::MAX)).contains(&keepalive_s) {
        errors.push(
            "broker.keepalive_s",
            format!(
                "{keepalive_s} is out of range 1..=65535 (0 would disable keep-alive and the offline last will)"
            ),
        );
    }

    let default_listen = SocketAddr::from(([127, 0, 0, 1], DEFAULT_TLS_PORT));
    let embedded_listen = match raw.embedded_listen.as_deref() {
        None => default_listen,
        Some(s) => s.parse().unwrap_or_else(|_| {
            errors.push(
                "broker.embedded_listen",
                format!("{s:?} is not an IP:PORT socket address (e.g. \"0.0.0.0:8883\")"),
            );
            default_listen
        }),
    };

    BrokerConfig {
        url,
        ca_file,
        cert_file,
        key_file,
        topic_prefix,
        client_id: raw.client_id,
        keepalive_s,
        insecure_plaintext,
        embedded_listen,
    }
}

fn validate_folder(raw: RawFolder, key: &str, base: &Path, errors: &mut Errors) -> FolderConfig {
    let id = match raw.id {
        Some(id) => {
            check_id(&id, &format!("{key}.id"), errors);
            id
        }
        None => {
            errors.push(format!("{key}.id"), "missing: every folder needs an id");
            String::new()
        }
    };
    let path = match raw.path {
        Some(p) if !p.as_os_str().is_empty() => resolve(base, p),
        _ => {
            errors.push(
                format!("{key}.path"),
                "missing: every folder needs the path of its root",
            );
            PathBuf::new()
        }
    };
    let mode = match raw.mode.as_deref() {
        None => Mode::default(),
        Some(s) => s.parse().unwrap_or_else(|e: String| {
            errors.push(format!("{key}.mode"), e);
            Mode::default()
        }),
    };
    let ignore = raw.ignore.unwrap_or_default();
    for (j, pattern) in ignore.iter().enumerate() {
        if let Err(e) = globset::Glob::new(pattern) {
            errors.push(
                format!("{key}.ignore[{j}]"),
                format!(
                    "folder {id:?}: invalid glob pattern {pattern:?}: {}",
                    e.kind()
                ),
            );
        }
    }
    let debounce_ms = raw.debounce_ms.unwrap_or(DEFAULT_DEBOUNCE_MS);
    if debounce_ms > MAX_DEBOUNCE_MS {
        errors.push(
            format!("{key}.debounce_ms"),
            format!("{debounce_ms} is above the maximum of {MAX_DEBOUNCE_MS}"),
        );
    }
    let max_delete_percent = raw.max_delete_percent.unwrap_or(DEFAULT_MAX_DELETE_PERCENT);
    if !(1..=100).contains(&max_delete_percent) {
        errors.push(
            format!("{key}.max_delete_percent"),
            format!("{max_delete_percent} is not a percentage from 1 to 100"),
        );
    }
    let tombstone_days = raw.tombstone_days.unwrap_or(DEFAULT_TOMBSTONE_DAYS);
    if !(1..=36_500).contains(&tombstone_days) {
        errors.push(
            format!("{key}.tombstone_days"),
            format!("{tombstone_days} is not a number of days from 1 to 36500"),
        );
    }
    let compression = match raw.compression.as_deref() {
        None => crate::transfer::compression::Mode::default(),
        Some(s) => s.parse().unwrap_or_else(|e: String| {
            errors.push(format!("{key}.compression"), e);
            crate::transfer::compression::Mode::default()
        }),
    };
    FolderConfig {
        id,
        path,
        mode,
        ignore,
        debounce_ms,
        max_delete_percent,
        tombstone_days,
        on_change: raw.on_change.filter(|c| !c.trim().is_empty()),
        compression,
    }
}

/// Checks between folders, and against `state_dir`.
fn check_folder_set(
    folders: &[FolderConfig],
    keys: &[String],
    state_dir: &Path,
    errors: &mut Errors,
) {
    let key = |i: usize| {
        keys.get(i)
            .cloned()
            .unwrap_or_else(|| format!("folder[{i}]"))
    };
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut by_env_id: HashMap<String, usize> = HashMap::new();
    for (i, f) in folders.iter().enumerate() {
        if f.id.is_empty() {
            continue;
        }
        if let Some(&j) = by_id.get(f.id.as_str()) {
            errors.push(
                format!("{}.id", key(i)),
                format!("duplicate folder id {:?} (also {})", f.id, key(j)),
            );
            continue;
        }
        by_id.insert(&f.id, i);
        let env_id = folder_env_id(&f.id);
        if let Some(&j) = by_env_id.get(&env_id) {
            errors.push(
                format!("{}.id", key(i)),
                format!(
                    "folder ids {:?} and {:?} ({}) share the environment name MQSYNC_FOLDER_{env_id}_*; rename one",
                    f.id,
                    folders[j].id,
                    key(j)
                ),
            );
        } else {
            by_env_id.insert(env_id, i);
        }
    }

    for (i, f) in folders.iter().enumerate() {
        if f.path.as_os_str().is_empty() {
            continue;
        }
        for (j, g) in folders.iter().enumerate().skip(i + 1) {
            if g.path.as_os_str().is_empty() {
                continue;
            }
            if f.path == g.path {
                errors.push(
                    format!("{}.path", key(j)),
                    format!(
                        "{} is also the path of {}; a directory can belong to one folder only",
                        g.path.display(),
                        key(i)
                    ),
                );
            } else if g.path.starts_with(&f.path) || f.path.starts_with(&g.path) {
                let (inner, outer) = if g.path.starts_with(&f.path) {
                    (j, i)
                } else {
                    (i, j)
                };
                errors.push(
                    format!("{}.path", key(inner)),
                    format!(
                        "{} is inside {} ({}); synced folders must not overlap",
                        folders[inner].path.display(),
                        key(outer),
                        folders[outer].path.display()
                    ),
                );
            }
        }
        if state_dir.starts_with(&f.path) {
            errors.push(
                "state_dir",
                format!(
                    "{} is inside {} ({}); the state directory must never be synced",
                    state_dir.display(),
                    key(i),
                    f.path.display()
                ),
            );
        } else if f.path.starts_with(state_dir) {
            errors.push(
                format!("{}.path", key(i)),
                format!(
                    "{} is inside state_dir ({}); keep synced folders out of the state directory",
                    f.path.display(),
                    state_dir.display()
                ),
            );
        }
    }
}

/// Why `id` is not a valid node or folder id, if it is not.
fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > 64 {
        return Some(format!(
            "{id:?} must be 1 to 64 characters (has {})",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "{id:?} contains {c:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
        ));
    }
    None
}

fn check_id(id: &str, key: &str, errors: &mut Errors) {
    if let Some(problem) = id_problem(id) {
        errors.push(key, problem);
    }
}

fn topic_prefix_problem(prefix: &str) -> Option<String> {
    if prefix.is_empty() {
        Some("must not be empty".into())
    } else if prefix.contains(['+', '#', '\0']) {
        Some(format!(
            "{prefix:?} contains an MQTT wildcard or NUL ('+', '#', NUL are not allowed)"
        ))
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        Some(format!("{prefix:?} must not start or end with '/'"))
    } else {
        None
    }
}

/// `path` made absolute against `base`, with `.` and `..` removed lexically (the path
/// need not exist; symlinks are not followed).
fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    let joined = if path.is_absolute() {
        path
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Turns a toml/serde error into [`ConfigError::Parse`], naming the key from the span.
fn parse_error(text: &str, file: &Path, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return ConfigError::Parse {
            file: file.to_owned(),
            line: 1,
            column: 1,
            key: "?".into(),
            message,
        };
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_idx = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let column = text[line_start..start].chars().count() + 1;
    let key = key_at(text, line_idx, &message);
    ConfigError::Parse {
        file: file.to_owned(),
        line: line_idx + 1,
        column,
        key,
        message,
    }
}

/// Best-effort dotted key (`broker.url`, `folder[1].mode`) for an error on line
/// `line_idx` (0-based), from the table headers above it and the `key =` on the line.
fn key_at(text: &str, line_idx: usize, message: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
        .map(str::to_owned);
    let Some(line) = lines.get(line_idx).map(|l| l.trim()) else {
        return unknown.unwrap_or_else(|| "?".into());
    };
    // The error is on a table header: the header names the key.
    if line.starts_with('[') {
        let name = line.trim_matches(|c| c == '[' || c == ']' || c == ' ');
        return match unknown {
            Some(u) if !name.ends_with(&u) => format!("{name}.{u}"),
            _ => name.to_owned(),
        };
    }
    // Section from the headers above.
    let mut section = String::new();
    let mut folder_count = 0usize;
    for l in lines.iter().take(line_idx).map(|l| l.trim()) {
        if l.starts_with("[[") {
            let name = l.trim_matches(|c| c == '[' || c == ']' || c == ' ');
            if name == "folder" {
                section = format!("folder[{folder_count}]");
                folder_count += 1;
            } else {
                section = name.to_owned();
            }
        } else if l.starts_with('[') {
            section = l
                .trim_matches(|c| c == '[' || c == ']' || c == ' ')
                .to_owned();
        }
    }
    let leaf = unknown.or_else(|| {
        line.split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty())
    });
    match (section.is_empty(), leaf) {
        (true, Some(leaf)) => leaf,
        (false, Some(leaf)) => format!("{section}.{leaf}"),
        (true, None) => "?".into(),
        (false, None) => section,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    const ORIGIN: &str = "/etc/mqsync/mqsync.toml";

    fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new(ORIGIN), env)
    }

    fn invalid(err: ConfigError) -> Vec<KeyError> {
        match err {
            ConfigError::Invalid { file, errors } => {
                assert_eq!(file, Path::new(ORIGIN));
                errors
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn has(errors: &[KeyError], key: &str, needle: &str) -> bool {
        errors
            .iter()
            .any(|e| e.key == key && e.reason.contains(needle))
    }

    const BASIC: &str = r#"
node_id = "n1"
state_dir = "/var/lib/mqsync"
[broker]
url = "mqtts://broker.example:8884"
ca_file = "/run/secrets/ca.pem"
[[folder]]
id = "media"
path = "/srv/media"
"#;

    #[test]
    fn defaults_and_basic_values() {
        let c = load(BASIC, &no_env).expect("valid");
        assert_eq!(c.node_id, "n1");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(
            c.broker.url,
            Some(BrokerUrl {
                host: "broker.example".into(),
                port: 8884,
                tls: true
            })
        );
        assert_eq!(c.broker.topic_prefix, "mqsync");
        assert_eq!(c.broker.keepalive_s, 30);
        assert_eq!(
            c.broker.embedded_listen,
            "127.0.0.1:8883".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(c.client_id(), "mqsync-n1");
        let f = &c.folders[0];
        assert_eq!(f.mode, Mode::SendReceive);
        assert_eq!(f.debounce_ms, 100);
        assert!(c.validate_for_run().is_ok());
    }

    #[test]
    fn url_forms() {
        let u: BrokerUrl = "mqtts://h".parse().expect("url");
        assert_eq!((u.port, u.tls), (8883, true));
        let u: BrokerUrl = "mqtt://h".parse().expect("url");
        assert_eq!((u.port, u.tls), (1883, false));
        let u: BrokerUrl = "mqtts://[::1]:9000".parse().expect("url");
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert!("https://h".parse::<BrokerUrl>().is_err());
        assert!("mqtts://h:0".parse::<BrokerUrl>().is_err());
        assert!("mqtts://h:99999".parse::<BrokerUrl>().is_err());
        assert!("mqtts://:8883".parse::<BrokerUrl>().is_err());
        assert!("mqtts://h/path".parse::<BrokerUrl>().is_err());
    }

    #[test]
    fn unknown_top_level_table_is_named_with_file_and_line() {
        let text = "node_id = \"n1\"\n[brokr]\nurl = \"mqtts://h\"\n";
        let err = load(text, &no_env).expect_err("unknown key");
        let ConfigError::Parse {
            file, line, key, ..
        } = &err
        else {
            panic!("expected Parse, got {err:?}");
        };
        assert_eq!(file, Path::new(ORIGIN));
        assert_eq!(*line, 2);
        assert_eq!(key, "brokr");
        let shown = err.to_string();
        assert!(shown.starts_with("/etc/mqsync/mqsync.toml:2:"), "{shown}");
        assert!(shown.contains("brokr"), "{shown}");
    }

    #[test]
    fn unknown_nested_key_and_type_error_are_named() {
        let text = "[broker]\nurll = \"x\"\n";
        let err = load(text, &no_env).expect_err("unknown key");
        assert!(
            matches!(&err, ConfigError::Parse { key, line: 2, .. } if key == "broker.urll"),
            "{err:?}"
        );

        let text = "[[folder]]\nid = \"a\"\npath = \"/a\"\n[[folder]]\nid = \"b\"\npath = \"/b\"\ndebounce_ms = \"fast\"\n";
        let err = load(text, &no_env).expect_err("type error");
        assert!(
            matches!(&err, ConfigError::Parse { key, line: 7, .. } if key == "folder[1].debounce_ms"),
            "{err:?}"
        );
    }

    #[test]
    fn bad_mode_is_named() {
        let text =
            "node_id = \"n\"\n[[folder]]\nid = \"m\"\npath = \"/srv/m\"\nmode = \"sendonly\"\n";
        let errors = invalid(load(text, &no_env).expect_err("bad mode"));
        assert!(
            has(&errors, "folder[0].mode", "unknown mode \"sendonly\""),
            "{errors:?}"
        );
    }

    #[test]
    fn several_errors_reported_at_once() {
        let text = r#"
node_id = "bad id!"
state_dir = "/srv/media/.state"
log_format = "xml"
[broker]
url = "mqtts://h"
cert_file = "/run/secrets/c.pem"
topic_prefix = "/a/#"
keepalive_s = 0
embedded_listen = "localhost"
[[folder]]
id = "media"
path = "/srv/media"
ignore = ["*.tmp", "a[b"]
debounce_ms = 60001
compression = "fast"
[[folder]]
id = "media"
path = "/srv/media/sub"
"#;
        let err = load(text, &no_env).expect_err("many errors");
        let shown = err.to_string();
        let errors = invalid(err);
        for (key, needle) in [
            ("node_id", "contains ' '"),
            ("state_dir", "inside folder[0]"),
            ("log_format", "xml"),
            ("broker.ca_file", "required"),
            ("broker.key_file", "missing"),
            ("broker.topic_prefix", "wildcard"),
            ("broker.keepalive_s", "out of range"),
            ("broker.embedded_listen", "localhost"),
            (
                "folder[0].ignore[1]",
                "folder \"media\": invalid glob pattern \"a[b\"",
            ),
            ("folder[0].debounce_ms", "60001"),
            ("folder[0].compression", "\"fast\" is not one of"),
            ("folder[1].id", "duplicate folder id"),
            ("folder[1].path", "inside folder[0]"),
        ] {
            assert!(
                has(&errors, key, needle),
                "{key}: {needle} not in {errors:?}"
            );
        }
        assert_eq!(shown.lines().count(), errors.len());
        assert!(
            shown
                .lines()
                .all(|l| l.starts_with("/etc/mqsync/mqsync.toml: "))
        );
    }

    #[test]
    fn plaintext_needs_explicit_opt_in() {
        let text = "node_id = \"n\"\n[broker]\nurl = \"mqtt://h\"\n";
        let errors = invalid(load(text, &no_env).expect_err("plaintext"));
        assert!(
            has(&errors, "broker.url", "broker.insecure_plaintext"),
            "{errors:?}"
        );
        let text = "node_id = \"n\"\n[broker]\nurl = \"mqtt://h\"\ninsecure_plaintext = true\n";
        let c = load(text, &no_env).expect("allowed");
        assert_eq!(c.broker.url.map(|u| u.port), Some(1883));
        // The opt-in also works from the environment.
        let env = env_of(&[("MQSYNC_BROKER_INSECURE_PLAINTEXT", "yes")]);
        let text = "node_id = \"n\"\n[broker]\nurl = \"mqtt://h\"\n";
        assert!(load(text, &env).is_ok());
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let env = env_of(&[
            ("MQSYNC_NODE_ID", "from-env"),
            ("MQSYNC_LOG_FORMAT", "json"),
            ("MQSYNC_BROKER_URL", "mqtts://other:9999"),
            ("MQSYNC_BROKER_KEEPALIVE_S", "60"),
            ("MQSYNC_SECURITY_GROUP_KEY_FILE", "/run/secrets/gk"),
            ("MQSYNC_FOLDER_MEDIA_PATH", "/data/media"),
            ("MQSYNC_FOLDER_MEDIA_MODE", "receive-only"),
            ("MQSYNC_FOLDER_MEDIA_IGNORE", "*.swp, *.tmp"),
            ("MQSYNC_FOLDERS", "conf-2=/etc/app"),
            ("MQSYNC_FOLDER_CONF_2_DEBOUNCE_MS", "250"),
        ]);
        let c = load(BASIC, &env).expect("valid");
        assert_eq!(c.node_id, "from-env");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.broker.url.as_ref().map(|u| u.port), Some(9999));
        assert_eq!(c.broker.keepalive_s, 60);
        assert_eq!(
            c.security.group_key_file.as_deref(),
            Some(Path::new("/run/secrets/gk"))
        );
        let media = c.folder("media").expect("media");
        assert_eq!(media.path, Path::new("/data/media"));
        assert_eq!(media.mode, Mode::ReceiveOnly);
        assert_eq!(media.ignore, ["*.swp", "*.tmp"]);
        let conf = c.folder("conf-2").expect("declared by env");
        assert_eq!(conf.path, Path::new("/etc/app"));
        assert_eq!(conf.debounce_ms, 250);

        // Empty URL selects the embedded broker.
        let c = load(BASIC, &env_of(&[("MQSYNC_BROKER_URL", "")])).expect("valid");
        assert_eq!(c.broker.url, None);
    }

    #[test]
    fn unparsable_env_value_names_the_variable() {
        let env = env_of(&[
            ("MQSYNC_BROKER_KEEPALIVE_S", "soon"),
            ("MQSYNC_BROKER_INSECURE_PLAINTEXT", "maybe"),
            ("MQSYNC_FOLDERS", "nopath"),
        ]);
        let errors = invalid(load(BASIC, &env).expect_err("bad env"));
        assert!(
            has(&errors, "MQSYNC_BROKER_KEEPALIVE_S", "soon"),
            "{errors:?}"
        );
        assert!(has(&errors, "MQSYNC_BROKER_INSECURE_PLAINTEXT", "maybe"));
        assert!(has(&errors, "MQSYNC_FOLDERS", "nopath"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let text = r#"
node_id = "n"
state_dir = "state"
[broker]
url = "mqtts://h"
ca_file = "certs/ca.pem"
[security]
group_key_file = "../secrets/gk"
[[folder]]
id = "m"
path = "./data/m"
"#;
        let c = load(text, &no_env).expect("valid");
        assert_eq!(c.state_dir, Path::new("/etc/mqsync/state"));
        assert_eq!(
            c.broker.ca_file.as_deref(),
            Some(Path::new("/etc/mqsync/certs/ca.pem"))
        );
        assert_eq!(
            c.security.group_key_file.as_deref(),
            Some(Path::new("/etc/secrets/gk"))
        );
        assert_eq!(c.folders[0].path, Path::new("/etc/mqsync/data/m"));
    }

    #[test]
    fn env_only_and_run_validation() {
        let c = Config::from_env_only(&env_of(&[("MQSYNC_NODE_ID", "n")])).expect("defaults");
        assert!(c.folders.is_empty());
        assert_eq!(c.broker.url, None);
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        let err = c.validate_for_run().expect_err("no folder");
        assert!(
            err.to_string().contains("folder: no folder configured"),
            "{err}"
        );

        let env = env_of(&[
            ("MQSYNC_NODE_ID", "n"),
            ("MQSYNC_FOLDERS", "media=/srv/media,conf=/etc/app"),
        ]);
        let c = Config::from_env_only(&env).expect("env folders");
        assert_eq!(c.folders.len(), 2);
        assert!(c.validate_for_run().is_ok());
    }

    #[test]
    fn folder_paths_and_state_dir_must_not_overlap() {
        let text = r#"
node_id = "n"
state_dir = "/srv"
[[folder]]
id = "a"
path = "/data/a"
[[folder]]
id = "b"
path = "/data/a"
[[folder]]
id = "c"
path = "/srv/c"
[[folder]]
id = "d-1"
path = "/data/d1"
[[folder]]
id = "d.1"
path = "/data/d2"
"#;
        let errors = invalid(load(text, &no_env).expect_err("overlap"));
        assert!(
            has(&errors, "folder[1].path", "also the path of folder[0]"),
            "{errors:?}"
        );
        assert!(
            has(&errors, "folder[2].path", "inside state_dir"),
            "{errors:?}"
        );
        assert!(
            has(&errors, "folder[4].id", "MQSYNC_FOLDER_D_1_"),
            "{errors:?}"
        );
        // "/data/ab" is not inside "/data/a".
        let text = "node_id = \"n\"\n[[folder]]\nid = \"a\"\npath = \"/data/a\"\n[[folder]]\nid = \"b\"\npath = \"/data/ab\"\n";
        assert!(load(text, &no_env).is_ok());
    }

    #[test]
    fn docker_volume_plugin() {
        // Volumes only: no [[folder]] needed, defaults filled in, env overrides.
        let text = "node_id = \"n\"\nstate_dir = \"/var/lib/mqsync\"\n[docker]\nvolume_plugin = true\nvolumes_root = \"/var/lib/vols\"\n";
        let c = load(text, &no_env).expect("valid");
        assert!(c.docker.volume_plugin);
        assert_eq!(
            c.docker.volumes_root.as_deref(),
            Some(Path::new("/var/lib/vols"))
        );
        assert_eq!(c.docker.plugin_socket, Path::new(DEFAULT_PLUGIN_SOCKET));
        assert!(c.validate_for_run().is_ok());
        let env = |k: &str| match k {
            "MQSYNC_DOCKER_PLUGIN_SOCKET" => Some("/tmp/p.sock".to_string()),
            "MQSYNC_DOCKER_VOLUME_PLUGIN" => Some("off".to_string()),
            _ => None,
        };
        let c = load(text, &env).expect("valid");
        assert!(!c.docker.volume_plugin);
        assert_eq!(c.docker.plugin_socket, Path::new("/tmp/p.sock"));
        assert!(c.validate_for_run().is_err(), "no folder and no volumes");

        let errors = invalid(
            load("node_id = \"n\"\n[docker]\nvolume_plugin = true\n", &no_env)
                .expect_err("no root"),
        );
        assert!(has(&errors, "docker.volumes_root", "missing"), "{errors:?}");
        let text = "node_id = \"n\"\nstate_dir = \"/srv/state\"\n[docker]\nvolumes_root = \"/srv\"\n[[folder]]\nid = \"a\"\npath = \"/srv/vols/a\"\n";
        let errors = invalid(load(text, &no_env).expect_err("overlaps"));
        assert!(
            has(&errors, "docker.volumes_root", "state_dir"),
            "{errors:?}"
        );
        assert!(
            has(&errors, "docker.volumes_root", "folder[0]"),
            "{errors:?}"
        );
        let err =
            load("node_id = \"n\"\n[docker]\nsocket = \"x\"\n", &no_env).expect_err("unknown key");
        assert!(err.to_string().contains("socket"), "{err}");
    }

    #[test]
    fn folder_without_id_or_path() {
        let text = "node_id = \"n\"\n[[folder]]\nmode = \"send-only\"\n";
        let errors = invalid(load(text, &no_env).expect_err("missing"));
        assert!(has(&errors, "folder[0].id", "missing"));
        assert!(has(&errors, "folder[0].path", "missing"));
    }
}
