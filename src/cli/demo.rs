//! `mqsync demo`: the embedded broker plus several nodes in one process, each syncing
//! its own sub-folder of a demo directory, so a newcomer can watch files propagate
//! without writing any configuration. [`demo`] is the command: it prints what to try,
//! then one line per batch of changes a node applied (from the nodes themselves, see
//! `node::AppliedBatch`) above a bar per node, and runs until Ctrl-C (or `--for S`).

use super::args::DemoArgs;
use super::{init_logging, shutdown_signal};
use crate::broker::certs;
use crate::broker::{self, BrokerSettings};
use crate::config::LogFormat;
use crate::daemon::{DaemonError, MAX_PACKET, read_group_key};
use crate::engine::Mode;
use crate::node::{self, AppliedBatch, AppliedSender, Change, FolderSettings, NodeSettings};
use crate::transport::ConnectSettings;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::watch;

pub const DEMO_NODES: &[&str] = &["a", "b", "c"];

/// Port 8883 when free, otherwise any free port.
pub fn free_port() -> u16 {
    for port in [8883, 0] {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port))
            && let Ok(addr) = l.local_addr()
        {
            return addr.port();
        }
    }
    8883
}

/// Everything the demo set up, for printing.
pub struct DemoLayout {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub folders: Vec<PathBuf>,
}

/// Starts the broker and the nodes; returns once they are running (the node tasks
/// keep going until `shutdown` turns true). Each node sends its applied batches to
/// `applied`.
pub async fn start(
    dir: &Path,
    shutdown: watch::Receiver<bool>,
    applied: Option<AppliedSender>,
) -> Result<(DemoLayout, Vec<tokio::task::JoinHandle<()>>), DaemonError> {
    let state = dir.join(".state");
    let certs_dir = state.join("certs");
    let nodes: Vec<String> = DEMO_NODES.iter().map(|s| s.to_string()).collect();
    certs::init(
        &certs_dir,
        &nodes,
        &["localhost".into(), "127.0.0.1".into()],
    )?;
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _broker = broker::start(&BrokerSettings::with_certs_dir(listen, &certs_dir))?;
    let keys = read_group_key(&certs_dir.join(certs::GROUP_KEY))?;
    let mut tasks = vec![];
    let mut folders = vec![];
    for n in &nodes {
        let path = dir.join(n);
        folders.push(path.clone());
        let tls = crate::transport::tls::client_config(
            &certs_dir.join(certs::CA_CERT),
            Some(&certs_dir.join(format!("{n}.pem"))),
            Some(&certs_dir.join(format!("{n}.key"))),
        )?;
        let settings = NodeSettings {
            node_id: n.clone(),
            state_dir: state.join(n),
            topic_prefix: "mqsync".into(),
            connect: ConnectSettings {
                host: "127.0.0.1".into(),
                port: listen.port(),
                tls: Some(Arc::new(tls)),
                client_id: format!("mqsync-{n}"),
                keepalive: Duration::from_secs(30),
                max_packet: MAX_PACKET,
                max_message: crate::config::DEFAULT_MAX_MESSAGE_BYTES as usize,
            },
            keys: keys.clone(),
            client_cert_expires_ms: None,
            folders: vec![FolderSettings {
                id: "demo".into(),
                path,
                mode: Mode::SendReceive,
                ignore: vec!["*.swp".into(), "*~".into()],
                debounce: Duration::from_millis(100),
                rescan_interval: Duration::from_secs(3600),
                digest_interval: Duration::from_secs(30),
                status_interval: Duration::from_secs(10),
                max_delete_percent: crate::config::DEFAULT_MAX_DELETE_PERCENT,
                tombstone_ttl: Some(Duration::from_secs(
                    crate::config::DEFAULT_TOMBSTONE_DAYS * 86_400,
                )),
                on_change: None,
                // The demo's nodes share one machine and its owners.
                keep: crate::fs::attrs::Keep::default(),
                compression: Default::default(),
                watch: Default::default(),
                poll_interval: Duration::from_secs(crate::config::DEFAULT_POLL_INTERVAL_S),
                applied: applied.clone(),
            }],
        };
        let sd = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = node::run(settings, sd).await {
                tracing::error!("demo node: {e}");
            }
        }));
    }
    Ok((
        DemoLayout {
            dir: dir.to_path_buf(),
            listen,
            folders,
        },
        tasks,
    ))
}

/// How often the bars read the nodes' status files.
const REFRESH: Duration = Duration::from_millis(200);

/// `mqsync demo`: starts everything in `a.dir` (relative to the working directory),
/// prints the layout, a few commands to try and what each node applies, and stops the
/// nodes on Ctrl-C or after `--for` seconds, printing what each node holds.
pub fn demo(rt: &Runtime, log: &str, a: DemoArgs) -> anyhow::Result<()> {
    init_logging(log, LogFormat::Text);
    let dir = std::env::current_dir()?.join(a.dir);
    rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        let (applied_tx, mut applied) = tokio::sync::mpsc::unbounded_channel();
        let (layout, tasks) = start(&dir, rx, Some(applied_tx)).await?;
        print_intro(&layout);
        let mut bars = super::progress::LiveBars::new(
            DEMO_NODES
                .iter()
                .map(|n| {
                    let state = layout.dir.join(".state").join(n);
                    (n.to_string(), state, "demo".to_string())
                })
                .collect(),
        );
        let stop_after = async {
            match a.run_for {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        let signal = shutdown_signal();
        tokio::pin!(stop_after, signal);
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                Some(batch) = applied.recv() => {
                    for line in batch_lines(&batch) {
                        bars.println(&line);
                    }
                }
                _ = refresh.tick() => bars.refresh(),
                _ = &mut signal => break,
                _ = &mut stop_after => break,
            }
        }
        while let Ok(batch) = applied.try_recv() {
            for line in batch_lines(&batch) {
                bars.println(&line);
            }
        }
        bars.refresh();
        bars.clear();
        println!();
        println!("Demo stopped. The nodes held:");
        for line in bars.lines() {
            println!("  {line}");
        }
        let _ = tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

fn print_intro(layout: &DemoLayout) {
    let f: Vec<String> = layout
        .folders
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    println!();
    println!(
        "mqsync demo: broker on mqtts://{} with three nodes",
        layout.listen
    );
    for (n, p) in DEMO_NODES.iter().zip(&f) {
        println!("  node {n}: {p}");
    }
    println!();
    println!("Try, in another terminal:");
    println!(
        "  echo hello > {}/hello.txt; sleep 1; cat {}/hello.txt",
        f[0], f[1]
    );
    println!(
        "  mkdir -p {}/docs && cp /etc/os-release {}/docs/",
        f[1], f[1]
    );
    println!(
        "  mv {}/hello.txt {}/renamed.txt; sleep 2; ls {}",
        f[2], f[2], f[0]
    );
    println!("  rm -r {}/docs; sleep 2; ls {}", f[1], f[2]);
    println!("A new or changed file goes out at once; deletions (a rename deletes the old");
    println!("name) go out once none has followed for a second, so they show within a");
    println!("second or two. Each change a node applies is printed here (b ← a: hello.txt).");
    println!(
        "Ctrl-C stops the demo (the files stay in {}).",
        layout.dir.display()
    );
    println!();
}

/// What a node applied, one line per author and kind (written, deleted), naming the
/// first file: `b ← a: hello.txt, 2 more`; and one line per conflict.
pub fn batch_lines(b: &AppliedBatch) -> Vec<String> {
    // (from, deleted) in the order first seen, with their changes.
    let mut groups: Vec<((&str, bool), Vec<&node::Applied>)> = vec![];
    for c in &b.changes {
        let key = (c.from.as_str(), c.change == Change::Deleted);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(c),
            None => groups.push((key, vec![c])),
        }
    }
    let who = |from: &str| format!("{} ← {from}", b.node);
    let mut lines = vec![];
    for ((from, deleted), changes) in &groups {
        // Name a file rather than the directory it came in.
        let shown = changes
            .iter()
            .find(|c| c.change != Change::Dir)
            .unwrap_or(&changes[0]);
        let mut line = format!(
            "{}: {}{}",
            who(from),
            if *deleted { "deleted " } else { "" },
            shown.path
        );
        if shown.path.as_str().contains(".sync-conflict-") {
            line.push_str(" (a conflict copy)");
        }
        if changes.len() > 1 {
            line.push_str(&format!(", {} more", changes.len() - 1));
        }
        lines.push(line);
    }
    for c in &b.changes {
        if let Some(copy) = &c.conflict_copy {
            lines.push(format!(
                "{}: conflict on {}: {}'s version wins, {}'s is kept as {copy}",
                who(&c.from),
                c.path,
                c.from,
                b.node
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Applied;
    use crate::protocol::relpath::RelPath;

    fn change(path: &str, from: &str, change: Change) -> Applied {
        Applied {
            path: RelPath::new(path).unwrap(),
            from: from.into(),
            change,
            conflict_copy: None,
        }
    }

    #[test]
    fn a_batch_prints_one_line_per_sender_and_kind() {
        let mut conflict = change("notes.txt", "c", Change::File);
        conflict.conflict_copy =
            Some(RelPath::new("notes.sync-conflict-20260101-120000-b.txt").unwrap());
        let b = AppliedBatch {
            folder: "demo".into(),
            node: "b".into(),
            changes: vec![
                change("docs", "a", Change::Dir),
                change("docs/os-release", "a", Change::File),
                change("hello.txt", "a", Change::File),
                change("old.txt", "a", Change::Deleted),
                conflict,
                change("x.sync-conflict-20260101-120000-a.txt", "a", Change::File),
            ],
        };
        assert_eq!(
            batch_lines(&b),
            [
                "b ← a: docs/os-release, 3 more",
                "b ← a: deleted old.txt",
                "b ← c: notes.txt",
                "b ← c: conflict on notes.txt: c's version wins, b's is kept as notes.sync-conflict-20260101-120000-b.txt",
            ]
        );
        let b = AppliedBatch {
            folder: "demo".into(),
            node: "c".into(),
            changes: vec![change(
                "x.sync-conflict-20260101-120000-a.txt",
                "a",
                Change::File,
            )],
        };
        assert_eq!(
            batch_lines(&b),
            ["c ← a: x.sync-conflict-20260101-120000-a.txt (a conflict copy)"]
        );
    }
}
