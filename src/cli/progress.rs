//! Progress bars for a terminal, read from the status files the nodes write for
//! `mqsync healthcheck`: while `mqsync run` makes its first pass (scan, then applying
//! what peers have), one line per folder ([`initial_sync`]); for `mqsync demo`, one line
//! per node for as long as it runs ([`LiveBars`]). Nothing is drawn when stderr is not
//! a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ops::status::{FolderStatus, State, health_file};

/// How often the status files are read.
const POLL: Duration = Duration::from_millis(200);
/// Give up drawing after this long without every folder reaching idle (a node that
/// cannot connect keeps logging why; the bars would only add noise).
const GIVE_UP: Duration = Duration::from_secs(600);

/// Shows the initial sync of `folders` (`(label, state_dir, folder id)`) until each one
/// is idle with nothing pending, when stderr is a terminal. Returns at once otherwise.
/// Idle is all a node knows of itself: peers may still have more to send, so the bar
/// says `idle`, not `in sync` (`mqsync wait` compares the nodes).
pub async fn initial_sync(folders: Vec<(String, PathBuf, String)>) {
    if !std::io::stderr().is_terminal() || folders.is_empty() {
        return;
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = bar_style();
    let mut bars: Vec<(ProgressBar, PathBuf, bool)> = folders
        .into_iter()
        .map(|(label, state_dir, folder)| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(label);
            bar.set_message("starting");
            bar.enable_steady_tick(Duration::from_millis(120));
            (bar, health_file(&state_dir, &folder), false)
        })
        .collect();
    let started = tokio::time::Instant::now();
    while bars.iter().any(|(_, _, done)| !done) && started.elapsed() < GIVE_UP {
        for (bar, file, done) in bars.iter_mut().filter(|(_, _, done)| !*done) {
            let Some(doc) = std::fs::read(&*file)
                .ok()
                .and_then(|b| serde_json::from_slice::<FolderStatus>(&b).ok())
            else {
                continue;
            };
            // The bar counts applied changes against the most ever pending at once.
            if doc.pending > bar.length().unwrap_or(0).saturating_sub(bar.position()) {
                bar.set_length(bar.position() + doc.pending);
            }
            let len = bar.length().unwrap_or(0);
            bar.set_position(len.saturating_sub(doc.pending));
            bar.set_message(format!(
                "{} · {}, {}",
                doc.state.as_str(),
                files(doc.files),
                human_bytes(doc.bytes)
            ));
            if doc.state == State::Idle && doc.pending == 0 && doc.connected {
                bar.finish_with_message(format!(
                    "idle · {}, {}",
                    files(doc.files),
                    human_bytes(doc.bytes)
                ));
                *done = true;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    for (bar, _, done) in &bars {
        if !done {
            bar.abandon();
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:<16} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// One bar per node of a cluster whose status files are all local (the demo), kept up
/// to date for as long as it runs: each bar counts the node's files against the most
/// any node has, and says `in sync` only while every node is idle, connected, with
/// nothing pending and the same digest (the same tree). Lines printed through
/// [`LiveBars::println`] appear above the bars.
pub struct LiveBars {
    multi: Option<MultiProgress>,
    nodes: Vec<LiveNode>,
}

struct LiveNode {
    label: String,
    file: PathBuf,
    bar: Option<ProgressBar>,
    doc: Option<FolderStatus>,
}

impl LiveBars {
    /// `nodes`: `(label, state_dir, folder id)`. Draws only when stderr is a terminal.
    pub fn new(nodes: Vec<(String, PathBuf, String)>) -> Self {
        let multi = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let nodes = nodes
            .into_iter()
            .map(|(label, state_dir, folder)| {
                let bar = multi.as_ref().map(|m| {
                    let bar = m.add(ProgressBar::new(0));
                    bar.set_style(bar_style());
                    bar.set_prefix(label.clone());
                    bar.set_message("starting");
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                LiveNode {
                    label,
                    file: health_file(&state_dir, &folder),
                    bar,
                    doc: None,
                }
            })
            .collect();
        LiveBars { multi, nodes }
    }

    /// Reads the status files again and redraws.
    pub fn refresh(&mut self) {
        for n in &mut self.nodes {
            if let Some(doc) = read_status(&n.file) {
                n.doc = Some(doc);
            }
        }
        let docs: Vec<Option<&FolderStatus>> = self.nodes.iter().map(|n| n.doc.as_ref()).collect();
        let most = docs.iter().flatten().map(|d| d.files).max().unwrap_or(0);
        for (n, msg) in self.nodes.iter().zip(describe(&docs)) {
            if let Some(bar) = &n.bar {
                bar.set_length(most);
                bar.set_position(n.doc.as_ref().map_or(0, |d| d.files));
                bar.set_message(msg);
            }
        }
    }

    /// What each bar says now, as `label: message` lines.
    pub fn lines(&self) -> Vec<String> {
        let docs: Vec<Option<&FolderStatus>> = self.nodes.iter().map(|n| n.doc.as_ref()).collect();
        self.nodes
            .iter()
            .zip(describe(&docs))
            .map(|(n, msg)| format!("{}: {msg}", n.label))
            .collect()
    }

    /// Prints `line` on stdout, above the bars.
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => m.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Takes the bars off the terminal.
    pub fn clear(&self) {
        for n in &self.nodes {
            if let Some(bar) = &n.bar {
                bar.finish_and_clear();
            }
        }
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

fn read_status(file: &Path) -> Option<FolderStatus> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice::<FolderStatus>(&b).ok())
}

/// The message of each node's bar (`None`: no status file yet).
fn describe(docs: &[Option<&FolderStatus>]) -> Vec<String> {
    let settled = |d: &FolderStatus| {
        d.state == State::Idle && d.pending == 0 && d.connected && d.held_deletes == 0
    };
    let in_sync = docs.iter().all(|d| d.is_some_and(settled))
        && docs
            .iter()
            .flatten()
            .all(|d| docs.iter().flatten().all(|e| e.digest == d.digest));
    docs.iter()
        .map(|d| {
            let Some(d) = d else {
                return "starting".to_string();
            };
            let state = if in_sync { "in sync" } else { d.state.as_str() };
            let mut msg = format!("{state} · {}, {}", files(d.files), human_bytes(d.bytes));
            if d.pending > 0 {
                msg.push_str(&format!(", {} pending", d.pending));
            }
            if d.held_deletes > 0 {
                msg.push_str(&format!(", {} deletions held", d.held_deletes));
            }
            msg
        })
        .collect()
}

/// `1 file`, `3 files` (files, directories and symlinks, as the status counts them).
fn files(n: u64) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(state: State, files: u64, pending: u64, digest: &str) -> FolderStatus {
        FolderStatus {
            node: "n".into(),
            folder: "demo".into(),
            state,
            version: "0".into(),
            files,
            bytes: files * 10,
            pending,
            digest: digest.into(),
            local_changes: 0,
            last_error: None,
            failing_since_ms: None,
            connected: true,
            insecure_plaintext: false,
            updated_ms: 0,
            ignore: None,
            held_deletes: 0,
            resync: None,
            cert_days_left: None,
            notes: vec![],
            polled: None,
        }
    }

    #[test]
    fn in_sync_only_when_every_node_holds_the_same_tree() {
        let a = doc(State::Idle, 3, 0, "d1");
        // A node that has not heard of a's files yet is idle too, but not in sync.
        let b = doc(State::Idle, 0, 0, "d0");
        assert_eq!(
            describe(&[Some(&a), Some(&b), None]),
            ["idle · 3 files, 30 B", "idle · 0 files, 0 B", "starting"]
        );
        let c = doc(State::Syncing, 1, 2, "d2");
        assert_eq!(describe(&[Some(&c)]), ["syncing · 1 file, 10 B, 2 pending"]);
        let b = doc(State::Idle, 3, 0, "d1");
        assert_eq!(
            describe(&[Some(&a), Some(&b)]),
            ["in sync · 3 files, 30 B", "in sync · 3 files, 30 B"]
        );
    }

    #[test]
    fn bytes_read_like_ls_h() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}
