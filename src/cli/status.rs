//! `mqsync status` (a table or JSON of every node of every folder, once or until
//! Ctrl-C) and `mqsync wait` (block until the folders are in sync, for deploy
//! scripts), both read from the retained status topics.

use super::args::{StatusArgs, WaitArgs};
use super::{folder_ids, init_logging, load_config_checked, shutdown_signal};
use crate::config::{Checks, Config};
use crate::ops::control::{self, StatusMap};
use crate::ops::status::{FolderStatus, State};
use crate::protocol::wire::Keys;
use anyhow::Context;
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
    let given = config.is_some();
    let (_, connect, keys, prefix) = reader(config.as_deref(), log, "status")?;
    let quiet = Duration::from_millis(500);
    let shown = rt.block_on(async {
        if !watch {
            let map = control::read_status(&connect, &prefix, keys.as_ref(), quiet).await?;
            print_status(&map, json)?;
            return Ok(());
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            control::watch_status(&connect, &prefix, keys.as_ref(), tx).await
        });
        let clear = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !json;
        let printed: Result<()> = async {
            // The first frame waits for the burst of retained statuses that follows
            // the subscription, instead of showing an empty table.
            let first = tokio::select! {
                m = control::settled(&mut rx, quiet) => m,
                _ = shutdown_signal() => return Ok(()),
            };
            match first {
                Some(map) => print_status(&map, json)?,
                None => return Ok(()),
            }
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(map) => {
                            if clear {
                                print!("\x1b[2J\x1b[H");
                            }
                            print_status(&map, json)?;
                        }
                        None => return Ok(()),
                    },
                    _ = shutdown_signal() => return Ok(()),
                }
            }
        }
        .await;
        // Dropping the receiver makes the subscription disconnect cleanly.
        drop(rx);
        match control::finish(task).await {
            Some(Err(e)) => Err(e.into()),
            _ => printed,
        }
    });
    explain_without_config("status", given, shown)
}

pub fn wait(rt: &Runtime, log: &str, a: WaitArgs) -> Result<()> {
    let WaitArgs {
        config,
        folder,
        timeout,
    } = a;
    let given = config.is_some();
    let (cfg, connect, keys, prefix) = reader(config.as_deref(), log, "wait")?;
    // Without --folder: the configuration's folders, or, when it has none (an
    // operator's configuration), every folder a node reports.
    let folders = match folder {
        Some(f) => Some(vec![f]),
        None if cfg.folders.is_empty() => None,
        None => Some(folder_ids(&cfg, None)?),
    };
    let limit = Duration::from_secs(timeout);
    let waited = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let task = tokio::spawn(async move {
            control::watch_status(&connect, &prefix, keys.as_ref(), tx).await
        });
        let deadline = tokio::time::Instant::now() + limit;
        let started_ms = crate::ops::status::now_ms();
        // In sync must hold for a moment: a change may not have reached anyone.
        let settle = Duration::from_secs(1);
        let mut last = String::from("no status received yet");
        let mut map = StatusMap::new();
        let outcome: Option<Result<String, String>> = loop {
            let folders = match &folders {
                Some(f) => f.clone(),
                None => reported_folders(&map),
            };
            let check = if folders.is_empty() {
                Err("no node reports any folder yet".to_string())
            } else {
                folders
                    .iter()
                    .map(|f| control::folder_in_sync(&map, f, started_ms))
                    .collect::<Result<Vec<_>, _>>()
            };
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
                    None => break None,
                },
                _ = tokio::time::sleep(wait) => {
                    if let Ok(counts) = check {
                        break Some(Ok(format!("in sync: {}", folders.iter().zip(counts).map(|(f, n)| format!("{f} ({n} nodes)")).collect::<Vec<_>>().join(", "))));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    break Some(Err(format!("not in sync after {timeout} s: {last}")));
                }
            }
        };
        // Dropping the receiver makes the subscription disconnect cleanly.
        drop(rx);
        let ended = control::finish(task).await;
        match (outcome, ended) {
            (Some(Ok(line)), _) => {
                println!("{line}");
                Ok(())
            }
            (Some(Err(why)), _) => bail!("{why}"),
            (None, Some(Err(e))) => Err(e.into()),
            (None, _) => bail!("status subscription ended: {last}"),
        }
    });
    explain_without_config("wait", given, waited)
}

/// Every folder some online node reports a status for (a folder whose nodes all left
/// keeps its offline statuses on the broker).
fn reported_folders(map: &StatusMap) -> Vec<String> {
    let mut folders: Vec<String> = map
        .values()
        .filter(|d| d.state != State::Offline)
        .map(|d| d.folder.clone())
        .collect();
    folders.dedup();
    folders
}

/// What a broker client needs, added to an error met without a configuration file
/// (the defaults point at the embedded broker of a node on this machine).
pub(super) fn explain_without_config<T>(cmd: &str, given: bool, r: Result<T>) -> Result<T> {
    if given {
        return r;
    }
    r.with_context(|| {
        format!(
            "mqsync {cmd} is a client of the cluster's broker and reads its address and \
             credentials from a node's configuration: give --config FILE (or set \
             MQSYNC_CONFIG=FILE), or set MQSYNC_BROKER_URL, MQSYNC_BROKER_CA_FILE, \
             MQSYNC_BROKER_CERT_FILE and MQSYNC_BROKER_KEY_FILE (plus \
             MQSYNC_SECURITY_GROUP_KEY_FILE to check status MACs). Without either it tries \
             the embedded broker of a node on this machine (MQSYNC_STATE_DIR/certs, \
             default /var/lib/mqsync/certs)"
        )
    })
}

/// What a reader of the retained topics needs from the configuration at `path`
/// (logging set up on the way): broker settings, the group key if readable, the
/// prefix.
pub(super) fn reader(
    path: Option<&std::path::Path>,
    log: &str,
    cmd: &str,
) -> Result<(
    Config,
    crate::transport::ConnectSettings,
    Option<Keys>,
    String,
)> {
    let cfg = explain_without_config(
        cmd,
        path.is_some(),
        load_config_checked(path, HashMap::new(), Checks::Broker),
    )?;
    init_logging(log, cfg.log_format);
    let connect = explain_without_config(
        cmd,
        path.is_some(),
        crate::daemon::connect_settings(&cfg).map_err(anyhow::Error::from),
    )?;
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
            match (in_sync, d.polled.is_some()) {
                (true, false) => "yes",
                // As of its last poll: see the note below the table.
                (true, true) => "yes*",
                (false, _) => "no",
            },
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
    for d in map.values() {
        for n in &d.notes {
            println!("node {} ({}): {n}", d.node, d.folder);
        }
    }
    let now = crate::ops::status::now_ms();
    for d in map.values().filter(|d| counted(d)) {
        if let Some(p) = &d.polled {
            let ago = now.saturating_sub(p.last_poll_ms) / 1000;
            println!("* {}; last poll {ago} s ago", p.describe(&d.node));
        }
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
