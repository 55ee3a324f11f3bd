//! `mqsync conflicts`: lists the conflict copies in the folders of a configuration
//! (each with the path it was copied from, the node whose version lost, and when that
//! version was written), as a table or as JSON. Reads the folders on this node only.

use super::args::ConflictsArgs;
use super::{folder_ids, load_config};
use crate::fs::ignore::Ignore;
use crate::ops::conflicts::{ConflictCopy, find};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;

pub fn conflicts(a: ConflictsArgs) -> Result<()> {
    let cfg = load_config(a.config.as_deref(), HashMap::new())?;
    let ids = folder_ids(&cfg, a.folder)?;
    let mut all: Vec<ConflictCopy> = vec![];
    for id in &ids {
        let Some(f) = cfg.folders.iter().find(|f| &f.id == id) else {
            bail!("no folder {id:?} in the configuration");
        };
        // The folder's rules in force: the config's and its .mqsyncignore's.
        let shared = crate::fs::ignore::read_ignore_file(&f.path).0;
        let patterns: Vec<String> = f.ignore.iter().chain(&shared).cloned().collect();
        let ignore =
            Ignore::new(&patterns).with_context(|| format!("folder {id}: bad ignore pattern"))?;
        all.extend(find(&f.path, id, &ignore));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no conflict copies in {}", ids.join(", "));
        return Ok(());
    }
    let w = |f: fn(&ConflictCopy) -> &str, title: &str| {
        all.iter()
            .map(|c| f(c).len())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (wf, wo, wl) = (
        w(|c| &c.folder, "FOLDER"),
        w(|c| &c.original, "ORIGINAL"),
        w(|c| &c.lost_by, "LOST BY"),
    );
    println!(
        "{:wf$}  {:wo$}  {:wl$}  {:20}  COPY",
        "FOLDER", "ORIGINAL", "LOST BY", "WRITTEN (UTC)"
    );
    for c in &all {
        println!(
            "{:wf$}  {:wo$}  {:wl$}  {:20}  {}",
            c.folder, c.original, c.lost_by, c.written, c.copy
        );
    }
    println!(
        "{} conflict cop{}: the winner is at ORIGINAL; keep or delete the copy like any file",
        all.len(),
        if all.len() == 1 { "y" } else { "ies" }
    );
    Ok(())
}
