//! `mqsync resync`: publishes a resync command on the cmd topic of each chosen folder
//! and prints, per node, whether it accepted the command or ignored it (the nodes
//! answer in their status documents); exits 1 unless every targeted node accepted.

use super::args::ResyncArgs;
use super::folder_ids;
use super::status::{explain_without_config, reader};
use crate::ops::resync::{self, ResyncOutcome};
use anyhow::{Result, bail};
use std::time::Duration;
use tokio::runtime::Runtime;

/// How long the nodes get to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

pub fn resync(rt: &Runtime, log: &str, a: ResyncArgs) -> Result<()> {
    let given = a.config.is_some();
    let (cfg, connect, keys, prefix) = reader(a.config.as_deref(), log, "resync")?;
    let folders = folder_ids(&cfg, a.folder)?;
    let node = a.node;
    let reports = explain_without_config(
        "resync",
        given,
        rt.block_on(resync::resync(
            &connect,
            &prefix,
            keys.as_ref(),
            &folders,
            &node,
            ANSWER_WAIT,
        ))
        .map_err(anyhow::Error::from),
    )?;
    let mut not_accepted = 0;
    for f in &folders {
        let rows: Vec<_> = reports.iter().filter(|r| &r.folder == f).collect();
        if rows.is_empty() {
            println!("folder {f}: resync requested; no node reports this folder");
            not_accepted += 1;
        }
        for r in rows {
            println!("folder {f}: node {}: {}", r.node, r.outcome);
            if r.outcome != ResyncOutcome::Accepted {
                not_accepted += 1;
            }
        }
    }
    if not_accepted > 0 {
        bail!("the resync was not accepted everywhere ({not_accepted} not accepted)");
    }
    Ok(())
}
