//! The `MQSYNC_*` environment overlay: applied on the raw values before validation, so
//! the environment wins over the file; a value that does not parse is reported under
//! the variable's name.

use std::path::PathBuf;

use super::error::Errors;
use super::raw::{RawConfig, RawFolder};
use super::{ENV_FOLDERS, folder_env_id};

/// Environment lookup that records parse failures under the variable's name.
pub(super) struct Env<'a> {
    pub(super) get: &'a dyn Fn(&str) -> Option<String>,
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
    pub(super) fn apply_env(
        &mut self,
        env: &Env<'_>,
        folder_keys: &mut Vec<String>,
        errors: &mut Errors,
    ) {
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
        env.bool(
            "MQSYNC_BROKER_SHARED_NODE_CERT",
            &mut b.shared_node_cert,
            errors,
        );
        env.u64(
            "MQSYNC_BROKER_MAX_MESSAGE_BYTES",
            &mut b.max_message_bytes,
            errors,
        );

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
            env.bool(&format!("{prefix}CREATE"), &mut folder.create, errors);
            env.string(&format!("{prefix}MODE"), &mut folder.mode);
            env.string(&format!("{prefix}COMPRESSION"), &mut folder.compression);
            env.string(&format!("{prefix}OWNERSHIP"), &mut folder.ownership);
            env.bool(&format!("{prefix}XATTRS"), &mut folder.xattrs, errors);
            env.list(&format!("{prefix}IGNORE"), &mut folder.ignore);
            env.string(&format!("{prefix}WATCH"), &mut folder.watch);
            let poll = &mut folder.poll_interval_s;
            env.u64(&format!("{prefix}POLL_INTERVAL_S"), poll, errors);
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
            if let Some(v) = (env.get)(&format!("{prefix}ON_CHANGE")) {
                folder.on_change = crate::ops::hook::Hook::from_env_value(&v);
            }
        }
    }
}
