//! `mqsync resync`: publishes one resync command on the cmd topic of each chosen
//! folder and returns once the broker has acknowledged them all.

use super::args::ResyncArgs;
use super::{folder_ids, init_logging, load_config};
use crate::protocol::topics::Topics;
use anyhow::Result;
use std::collections::HashMap;
use tokio::runtime::Runtime;

pub fn resync(rt: &Runtime, log: &str, a: ResyncArgs) -> Result<()> {
    let cfg = load_config(a.config.as_deref(), HashMap::new())?;
    init_logging(log, cfg.log_format);
    let folders = folder_ids(&cfg, a.folder)?;
    let connect = crate::daemon::connect_settings(&cfg)?;
    let topics: Vec<String> = folders
        .iter()
        .map(|f| Topics::new(&cfg.broker.topic_prefix, f).cmd())
        .collect();
    let node = a.node;
    let payload = crate::ops::control::resync_command(&node);
    rt.block_on(crate::ops::control::publish(&connect, &topics, &payload))?;
    println!(
        "resync requested for node {node} on folder(s) {}",
        folders.join(", ")
    );
    Ok(())
}
