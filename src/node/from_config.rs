//! A configured folder (a `[[folder]]` table, or a Docker volume's folder) turned into
//! what a node runs: the settings the configuration leaves to the code (rescan, digest
//! and status intervals) are fixed here, once, for the daemon and the volume service.

use super::FolderSettings;
use crate::config::FolderConfig;
use std::time::Duration;

/// What a node runs for one configured folder (or Docker volume).
pub fn folder_settings(f: &FolderConfig) -> FolderSettings {
    FolderSettings {
        id: f.id.clone(),
        path: f.path.clone(),
        mode: f.mode,
        ignore: f.ignore.clone(),
        debounce: Duration::from_millis(f.debounce_ms),
        rescan_interval: Duration::from_secs(3600),
        digest_interval: Duration::from_secs(30),
        status_interval: Duration::from_secs(10),
        max_delete_percent: f.max_delete_percent,
        tombstone_ttl: Some(Duration::from_secs(f.tombstone_days * 86_400)),
        on_change: f.on_change.clone(),
        compression: f.compression,
        keep: crate::fs::attrs::Keep {
            ownership: f.ownership,
            xattrs: f.xattrs,
            carry_owner: false,
        },
        watch: f.watch,
        poll_interval: Duration::from_secs(f.poll_interval_s),
        applied: None,
    }
}
