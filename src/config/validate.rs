//! Validation: raw values (after the environment overlay) become a [`Config`], with
//! defaults filled and paths resolved; every problem is collected under its key instead
//! of stopping at the first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use super::error::Errors;
use super::raw::{RawBroker, RawConfig, RawDocker, RawFolder};
use super::{
    BrokerConfig, BrokerUrl, Config, DEFAULT_DEBOUNCE_MS, DEFAULT_KEEPALIVE_S,
    DEFAULT_MAX_DELETE_PERCENT, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PLUGIN_SOCKET,
    DEFAULT_POLL_INTERVAL_S, DEFAULT_STATE_DIR, DEFAULT_TLS_PORT, DEFAULT_TOMBSTONE_DAYS,
    DEFAULT_TOPIC_PREFIX, DockerConfig, FolderConfig, LogFormat, MAX_DEBOUNCE_MS,
    MAX_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES, Mode, SecurityConfig, folder_env_id,
};
use crate::ops::hook::Hook;

impl RawConfig {
    pub(super) fn validate(
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

    let max_message_bytes = raw.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    let max_message_bytes = if (MIN_MAX_MESSAGE_BYTES..=MAX_MAX_MESSAGE_BYTES)
        .contains(&max_message_bytes)
    {
        max_message_bytes as usize
    } else {
        errors.push(
            "broker.max_message_bytes",
            format!(
                "{max_message_bytes} is out of range {MIN_MAX_MESSAGE_BYTES}..={MAX_MAX_MESSAGE_BYTES}: \
                 set it to the broker's packet size limit (Mosquitto max_packet_size, EMQX \
                 mqtt.max_packet_size), at least {MIN_MAX_MESSAGE_BYTES} bytes"
            ),
        );
        DEFAULT_MAX_MESSAGE_BYTES as usize
    };

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
        shared_node_cert: raw.shared_node_cert.unwrap_or(false),
        max_message_bytes,
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
        if let Err(e) = crate::fs::ignore::check_pattern(pattern) {
            errors.push(format!("{key}.ignore[{j}]"), format!("folder {id:?}: {e}"));
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
    let on_change = check_hook(raw.on_change, &format!("{key}.on_change"), errors);
    let compression = match raw.compression.as_deref() {
        None => crate::transfer::compression::Mode::default(),
        Some(s) => s.parse().unwrap_or_else(|e: String| {
            errors.push(format!("{key}.compression"), e);
            crate::transfer::compression::Mode::default()
        }),
    };
    let ownership = match raw.ownership.as_deref() {
        None => crate::fs::attrs::Ownership::default(),
        Some(s) => s.parse().unwrap_or_else(|e: String| {
            errors.push(format!("{key}.ownership"), e);
            crate::fs::attrs::Ownership::default()
        }),
    };
    let watch = raw.watch.as_deref().map_or(Default::default(), |s| {
        s.parse().unwrap_or_else(|e: String| {
            errors.push(format!("{key}.watch"), e);
            Default::default()
        })
    });
    let poll_interval_s = raw.poll_interval_s.unwrap_or(DEFAULT_POLL_INTERVAL_S);
    if !(1..=86_400).contains(&poll_interval_s) {
        let why = format!("{poll_interval_s} is not a number of seconds from 1 to 86400");
        errors.push(format!("{key}.poll_interval_s"), why);
    }
    FolderConfig {
        id,
        path,
        create: raw.create.unwrap_or(false),
        mode,
        ignore,
        debounce_ms,
        max_delete_percent,
        tombstone_days,
        on_change,
        compression,
        ownership,
        xattrs: raw.xattrs.unwrap_or(false),
        watch,
        poll_interval_s,
    }
}

/// An empty shell command means no hook; an argument list needs a program, and no
/// argument can hold a NUL byte (the kernel could not pass it).
fn check_hook(hook: Option<Hook>, key: &str, errors: &mut Errors) -> Option<Hook> {
    let hook = hook?;
    let args: &[String] = match &hook {
        Hook::Shell(cmd) if cmd.trim().is_empty() => return None,
        Hook::Shell(cmd) => std::slice::from_ref(cmd),
        Hook::Exec(argv) => argv,
    };
    if args.first().is_none_or(|program| program.trim().is_empty()) {
        errors.push(
            key,
            "the argument list needs a program first, e.g. [\"/usr/bin/kill\", \"-HUP\", \"1\"] (or remove the key)",
        );
        return None;
    }
    if let Some(j) = args.iter().position(|a| a.contains('\0')) {
        errors.push(key, format!("argument {j} contains a NUL byte"));
        return None;
    }
    Some(hook)
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
