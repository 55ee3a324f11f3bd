//! `mqsync healthcheck` (Docker HEALTHCHECK): reads the status file the local daemon
//! keeps per folder in `state_dir/health` and exits 1 naming every folder that is
//! failing, offline, stale or missing, or when the node's client certificate has
//! expired. A certificate that expires within 14 days is a warning: exit 0, so a
//! service is not restarted for what a restart cannot fix.

use super::args::HealthcheckArgs;
use super::load_config;
use crate::ops::status::{self, FolderStatus};
use anyhow::{Result, bail};
use std::collections::HashMap;

pub fn healthcheck(a: HealthcheckArgs) -> Result<()> {
    let cfg = load_config(a.config.as_deref(), HashMap::new())?;
    let mut ids: Vec<String> = cfg.folders.iter().map(|f| f.id.clone()).collect();
    if cfg.docker.volume_plugin {
        // Docker volumes are folders `vol.NAME` that the daemon runs as they come.
        ids.extend(crate::volumes::health_ids(&cfg.state_dir));
    }
    if ids.is_empty() && !cfg.docker.volume_plugin {
        bail!("no [[folder]] in the configuration: nothing to check");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut problems = vec![];
    let mut warnings = vec![];
    for id in &ids {
        let path = status::health_file(&cfg.state_dir, id);
        let doc = std::fs::read(&path)
            .map_err(|e| {
                format!(
                    "folder {id}: {}: {e} (is the daemon running?)",
                    path.display()
                )
            })
            .and_then(|b| {
                serde_json::from_slice::<FolderStatus>(&b)
                    .map_err(|e| format!("folder {id}: {}: {e}", path.display()))
            });
        match doc {
            Ok(d) => {
                if let Some(p) = status::unhealthy(&d, now, a.error_grace.saturating_mul(1000)) {
                    problems.push(p);
                }
                // One certificate per node: say it once, not per folder.
                if let Some(note) = status::cert_note(&d, status::CERT_WARN_DAYS) {
                    let expired = d.cert_days_left.is_some_and(|days| days < 0);
                    let list = if expired {
                        &mut problems
                    } else {
                        &mut warnings
                    };
                    if !list.contains(&note) {
                        list.push(note);
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    if problems.is_empty() {
        println!("healthy: {} folder(s)", ids.len());
        Ok(())
    } else {
        bail!("unhealthy:\n  {}", problems.join("\n  "))
    }
}
