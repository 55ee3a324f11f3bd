//! `mqsync pending`: per node and folder, the paths not yet in sync and why, read
//! from the retained pending lists (`ops::pending`), as a table or JSON.

use super::args::PendingArgs;
use super::status::{explain_without_config, reader};
use crate::ops::pending::{self, PendingDoc};
use anyhow::Result;
use std::time::Duration;
use tokio::runtime::Runtime;

pub fn pending(rt: &Runtime, log: &str, a: PendingArgs) -> Result<()> {
    let PendingArgs {
        config,
        folder,
        node,
        json,
    } = a;
    let (_, connect, keys, prefix) = reader(config.as_deref(), log, "pending")?;
    let map = explain_without_config(
        "pending",
        config.is_some(),
        rt.block_on(pending::read_pending(
            &connect,
            &prefix,
            keys.as_ref(),
            Duration::from_millis(500),
        ))
        .map_err(anyhow::Error::from),
    )?;
    let docs: Vec<&PendingDoc> = map
        .values()
        .filter(|d| folder.as_ref().is_none_or(|f| &d.folder == f))
        .filter(|d| node.as_ref().is_none_or(|n| &d.node == n))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&docs)?);
    } else {
        print!("{}", table(&docs));
    }
    Ok(())
}

/// The table NODE FOLDER PATH REASON DETAIL, each node's rows followed by its totals.
fn table(docs: &[&PendingDoc]) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "FOLDER".into(),
        "PATH".into(),
        "REASON".into(),
        "DETAIL".into(),
    ]];
    let mut totals = vec![];
    for d in docs {
        for p in &d.paths {
            rows.push([
                d.node.clone(),
                d.folder.clone(),
                p.path.clone(),
                p.reason.as_str().to_string(),
                p.detail.clone().unwrap_or_default(),
            ]);
        }
        totals.push(format!(
            "{} ({}): {} pending, showing {}",
            d.node,
            d.folder,
            d.total,
            d.paths.len()
        ));
    }
    let mut widths = [0; 5];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for t in totals {
        out.push_str(&t);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::pending::Reason;

    #[test]
    fn the_table_lists_paths_and_per_node_totals() {
        let mut d = PendingDoc::new("n2", "docs");
        d.total = 3;
        d.push(
            "a/b".into(),
            Reason::ApplyFailed,
            Some("Operation not permitted".into()),
        );
        let clear = PendingDoc::new("n1", "docs");
        let t = table(&[&d, &clear]);
        assert!(
            t.contains("n2    docs    a/b   apply_failed  Operation not permitted"),
            "{t}"
        );
        assert!(t.contains("n2 (docs): 3 pending, showing 1"), "{t}");
        assert!(t.contains("n1 (docs): 0 pending, showing 0"), "{t}");
    }
}
