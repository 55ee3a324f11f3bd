//! `mqsync run`: loads the configuration (flags over `MQSYNC_*` variables over the
//! file), runs the daemon until Ctrl-C or SIGTERM, then gives its folders
//! [`SHUTDOWN_GRACE`] to stop cleanly.

use super::args::RunArgs;
use super::{init_logging, load_config_checked, shutdown_signal};
use crate::config::Checks;
use anyhow::Result;
use std::collections::HashMap;
use tokio::runtime::Runtime;
use tokio::sync::watch;

/// How long `run` waits for its folders to say goodbye after SIGTERM or Ctrl-C.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

pub fn run(rt: &Runtime, log: &str, a: RunArgs) -> Result<()> {
    let mut o = HashMap::new();
    if let Some(v) = a.node_id {
        o.insert("MQSYNC_NODE_ID", v);
    }
    if let Some(v) = a.state_dir {
        o.insert("MQSYNC_STATE_DIR", v.display().to_string());
    }
    if let Some(v) = a.broker_url {
        o.insert("MQSYNC_BROKER_URL", v);
    }
    if a.insecure_plaintext {
        o.insert("MQSYNC_BROKER_INSECURE_PLAINTEXT", "true".into());
    }
    // Every problem of the file, the environment and the files and folders it names,
    // listed at once, before anything starts.
    let cfg = load_config_checked(a.config.as_deref(), o, Checks::Run)?;
    if a.check {
        println!(
            "configuration OK: node {}, {} folder(s)",
            cfg.node_id,
            cfg.folders.len()
        );
        return Ok(());
    }
    init_logging(log, cfg.log_format);
    // Raised outside the log macro: its fields are not evaluated when the level is
    // filtered out.
    let open_files = crate::sys::rlimit::raise_open_files();
    tracing::info!(node = %cfg.node_id, folders = cfg.folders.len(), open_files, "mqsync {} starting", env!("CARGO_PKG_VERSION"));
    let progress: Vec<_> = cfg
        .folders
        .iter()
        .map(|f| (f.id.clone(), cfg.state_dir.clone(), f.id.clone()))
        .collect();
    rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        let mut daemon = tokio::spawn(crate::daemon::run(cfg, rx));
        tokio::spawn(super::progress::initial_sync(progress));
        tokio::select! {
            r = &mut daemon => return r?.map_err(anyhow::Error::from),
            _ = shutdown_signal() => {}
        }
        tracing::info!("shutting down");
        crate::sys::notify::notify("STOPPING=1");
        let _ = tx.send(true);
        // Every folder removes its temp files, records what it applied, publishes its
        // offline status and disconnects; bounded, so a stuck broker connection cannot
        // hold the exit.
        match tokio::time::timeout(SHUTDOWN_GRACE, daemon).await {
            Ok(r) => r?.map_err(anyhow::Error::from),
            Err(_) => {
                tracing::warn!(
                    "shutdown took longer than {} s; exiting",
                    SHUTDOWN_GRACE.as_secs()
                );
                Ok(())
            }
        }
    })
}
