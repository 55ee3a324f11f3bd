//! `mqsync status` (a table or JSON of every node of every folder, once or until
//! Ctrl-C) and `mqsync wait` (block until the folders are in sync, for deploy
//! scripts), both read from the retained status topics.

use super::args::{StatusArgs, WaitArgs};
use super::{folder_ids, init_logging, load_config, shutdown_signal};
use crate::config::Config;
use crate::ops::control::{self, StatusMap};
use crate::ops::status::{FolderStatus, State};
use crate::protocol::wire::Keys;
use anyhow::{Result, bail};
use std::collections::HashMap;
use std::time::Duration;
use tokio::runtime::Runtime;

pub fn status(rt: &Runtime, log: &str, a: StatusArgs) -> Result<()> {
    let StatusArgs {
        config,
        json,
        watch,
    } = a;
    let (_, connect, keys, prefix) = reader(config.as_deref(), log)?;
    rt.block_on(async {
        if !watch {
            let map =
                control::read_status(&connect, &prefix, keys.as_ref(), Duration::from_millis(500))
                    .await?;
            print_status(&map, json)?;
            return Ok(());
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            control::watch_status(&connect, &prefix, keys.as_ref(), tx).await
        });
        let clear = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !json;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(map) => {
                        if clear {
                            print!("\x1b[2J\x1b[H");
                        }
                        print_status(&map, json)?;
                    }
                    None => break,
                },
                _ = shutdown_signal() => return Ok(()),
            }
        }
        match task.await {
            Ok(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    })
}

pub fn wait(rt: &Runtime, log: &str, a: WaitArgs) -> Result<()> {
    let WaitArgs {
        config,
        folder,
        timeout,
    } = a;
    let (cfg, connect, keys, prefix) = reader(config.as_deref(), log)?;
    let folders = folder_ids(&cfg, folder)?;
    let limit = Duration::from_secs(timeout);
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            control::watch_status(&connect, &prefix, keys.as_ref(), tx).await
        });
        let deadline = tokio::time::Instant::now() + limit;
        // In sync must hold for a moment: a change may not have reached anyone.
        let settle = Duration::from_secs(1);
        let mut last = String::from("no status received yet");
        let mut map = StatusMap::new();
        loop {
            let check = folders
                .iter()
                .map(|f| control::folder_in_sync(&map, f))
                .collect::<Result<Vec<_>, _>>();
            let wait = match &check {
                Ok(_) => settle,
                Err(e) => {
                    last = e.clone();
                    Duration::from_secs(3600)
                }
            };
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => map = m,
                    None => break,
                },
                _ = tokio::time::sleep(wait) => {
                    if let Ok(counts) = check {
                        println!("in sync: {}", folders.iter().zip(counts).map(|(f, n)| format!("{f} ({n} nodes)")).collect::<Vec<_>>().join(", "));
                        task.abort();
                        return Ok(());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    task.abort();
                    bail!("not in sync after {timeout} s: {last}");
                }
            }
        }
        match task.await {
            Ok(Err(e)) => Err(e.into()),
            _ => bail!("status subscription ended: {last}"),
        }
    })
}

/// What a reader of the retained topics needs from the configuration at `path`
/// (logging set up on the way): broker settings, the group key if readable, the
/// prefix.
pub(super) fn reader(
    path: Option<&std::path::Path>,
    log: &str,
) -> Result<(
    Config,
    crate::transport::ConnectSettings,
    Option<Keys>,
    String,
)> {
    let cfg = load_config(path, HashMap::new())?;
    init_logging(log, cfg.log_format);
    let connect = crate::daemon::connect_settings(&cfg)?;
    let keys = status_keys(&cfg);
    let prefix = cfg.broker.topic_prefix.clone();
    Ok((cfg, connect, keys, prefix))
}

/// The group key for checking status MACs, when this user can read it. Without it
/// `status` and `wait` still work but cannot tell a forged status, so they say so.
fn status_keys(cfg: &Config) -> Option<Keys> {
    match crate::daemon::status_keys(cfg) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!("status MACs are not checked: {e}");
            None
        }
    }
}

/// Prints statuses as a table (or JSON), marking nodes whose digest differs from the
/// most common one among the folder's online nodes.
fn print_status(map: &StatusMap, json: bool) -> Result<()> {
    // Differing ignore rules explain digests that differ for good.
    let mut folders: Vec<&str> = map.keys().map(|(f, _)| f.as_str()).collect();
    folders.dedup();
    let notes: Vec<String> = folders
        .iter()
        .filter_map(|f| control::ignore_differences(map, f))
        .collect();
    if json {
        let docs: Vec<_> = map.values().collect();
        println!("{}", serde_json::to_string_pretty(&docs)?);
        for n in notes {
            eprintln!("{n}");
        }
        return Ok(());
    }
    let mut majority: HashMap<&str, &str> = HashMap::new();
    let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
    let counted = |d: &&FolderStatus| !matches!(d.state, State::Offline | State::Unverified);
    for d in map.values().filter(counted) {
        *counts
            .entry((d.folder.as_str(), d.digest.as_str()))
            .or_default() += 1;
    }
    for ((f, dg), n) in &counts {
        let best = majority.get(f).map(|b| counts[&(*f, *b)]).unwrap_or(0);
        if *n > best || (*n == best && majority.get(f).is_some_and(|b| dg < b)) {
            majority.insert(f, dg);
        }
    }
    println!(
        "{:<16} {:<16} {:<9} {:>8} {:>12} {:>8} {:<8} {:<17} LAST ERROR",
        "FOLDER", "NODE", "STATE", "FILES", "BYTES", "PENDING", "IN SYNC", "DIGEST"
    );
    for d in map.values() {
        let state = serde_json::to_value(d.state)?
            .as_str()
            .unwrap_or("?")
            .to_string();
        let in_sync = counted(&d)
            && d.pending == 0
            && majority.get(d.folder.as_str()) == Some(&d.digest.as_str());
        println!(
            "{:<16} {:<16} {:<9} {:>8} {:>12} {:>8} {:<8} {:<17} {}",
            d.folder,
            d.node,
            state,
            d.files,
            d.bytes,
            d.pending,
            if in_sync { "yes" } else { "no" },
            d.digest,
            match (&d.last_error, d.insecure_plaintext) {
                (Some(e), true) => format!("PLAINTEXT; {e}"),
                (Some(e), false) => e.clone(),
                (None, true) => "PLAINTEXT (insecure_plaintext: not encrypted)".to_string(),
                (None, false) => String::new(),
            }
        );
    }
    for n in notes {
        println!("{n}");
    }
    let mut certs: Vec<String> = map
        .values()
        .filter_map(|d| crate::ops::status::cert_note(d, crate::ops::status::CERT_NOTE_DAYS))
        .collect();
    certs.sort();
    certs.dedup();
    for n in certs {
        println!("{n}");
    }
    if map.is_empty() {
        println!("(no status received: no node has published under this topic prefix yet)");
    }
    Ok(())
}
