//! Progress bars for a terminal: while `mqsync run` or `mqsync demo` makes its first
//! pass (scan, then applying what peers have), one line per node and folder, read from
//! the status files the nodes write for `mqsync healthcheck`. Nothing is drawn when
//! stderr is not a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
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
pub async fn initial_sync(folders: Vec<(String, PathBuf, String)>) {
    if !std::io::stderr().is_terminal() || folders.is_empty() {
        return;
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {prefix:<16} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
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
                "{} · {} files, {}",
                doc.state.as_str(),
                doc.files,
                human_bytes(doc.bytes)
            ));
            if doc.state == State::Idle && doc.pending == 0 && doc.connected {
                bar.finish_with_message(format!(
                    "in sync · {} files, {}",
                    doc.files,
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
    #[test]
    fn bytes_read_like_ls_h() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}
