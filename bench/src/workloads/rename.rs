//! The rename workload: a tree of small files synced to the receivers, then its top
//! directory renamed on the writer with one `mv`. The target for mqsync: the
//! receivers hold the renamed tree within 2x the time of the initial sync of the same
//! tree, with under 5 % of its bytes sent, since every byte is already on them. rsync
//! matches files by name and sends everything again; Syncthing rebuilds the files from
//! blocks the receivers already hold. Each system gives two rows, the initial sync and
//! the rename, and the rename's row compares the two.

use super::{Ctx, Row, poll_every, rate, wait_tree};
use crate::data::{self, RENAME_TOP, listing, tree_hash};
use crate::mqsync::{Cluster, Stopped, Wire, wire_between};
use crate::peers::{RsyncDaemon, Syncthing};
use crate::proc::Usage;
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The top directory's new name.
const RENAMED: &str = "renamed";

/// How long the receivers may take to hold the renamed tree: past it the rename counts
/// as not converging, and its row shows the time given and what was sent meanwhile.
const RENAME_TIMEOUT: Duration = Duration::from_secs(300);

/// The target: converged within this multiple of the initial sync's time …
const TARGET_TIME: f64 = 2.0;
/// … having sent under this share of its bytes.
const TARGET_BYTES: f64 = 0.05;

/// Receivers of mqsync and Syncthing, as in the other two-receiver workloads.
const RECEIVERS: usize = 2;

/// One system's run: its two rows, and why the rename did not converge, if it did not
/// (the rows are still worth having: the time given and the bytes sent meanwhile).
pub struct RenameRun {
    pub rows: Vec<Row>,
    pub timed_out: Option<String>,
}

/// One timed step of a system: the initial sync or the rename.
struct Step {
    wall: Duration,
    /// Bytes the writer sent during the step.
    bytes: u64,
    /// All processes (CPU summed, the largest peak memory so far).
    usage: Usage,
    writer: Usage,
    broker: Option<Usage>,
    wire: Option<(u64, u64)>,
    /// What the system reports beyond the writer's bytes (the receivers' part).
    note: String,
}

/// `want` with its top directory renamed: what the receivers must hold afterwards.
fn renamed(want: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let old = format!("{RENAME_TOP}/");
    want.iter()
        .map(|(rel, &len)| match rel.strip_prefix(&old) {
            Some(rest) => (format!("{RENAMED}/{rest}"), len),
            None => (rel.clone(), len),
        })
        .collect()
}

/// Renames the writer's top directory, as `mv tree renamed` does (one rename(2)).
fn rename_top(folder: &Path) -> Result<()> {
    fs::rename(folder.join(RENAME_TOP), folder.join(RENAMED))?;
    Ok(())
}

/// Waits until every receiver lists exactly `want` and no longer has the old top
/// directory (an empty directory left behind is not converged either), up to
/// `timeout` from `start`: the time it took, or `None` when it never did. Polled as
/// the initial sync is, so the polling costs both steps alike.
fn wait_renamed(
    what: &str,
    receivers: &[PathBuf],
    want: &BTreeMap<String, u64>,
    start: Instant,
    mut dead: impl FnMut() -> Option<String>,
) -> Result<Option<Duration>> {
    loop {
        if let Some(why) = dead() {
            bail!("{what}: {why}");
        }
        if receivers
            .iter()
            .all(|r| !r.join(RENAME_TOP).exists() && &listing(r) == want)
        {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > RENAME_TIMEOUT {
            return Ok(None);
        }
        std::thread::sleep(poll_every(want.len(), start));
    }
}

/// Where each receiver stands, for the error of a rename that did not converge: its
/// files under the new and the old name.
fn progress(receivers: &[PathBuf]) -> String {
    let count = |l: &BTreeMap<String, u64>, top: &str| {
        l.keys()
            .filter(|k| k.starts_with(&format!("{top}/")))
            .count()
    };
    receivers
        .iter()
        .map(|r| {
            let l = listing(r);
            let name = r.file_name().unwrap_or_default().to_string_lossy();
            format!(
                "{name}: {} files under {RENAMED}/, {} under {RENAME_TOP}/",
                count(&l, RENAMED),
                count(&l, RENAME_TOP)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks that every receiver holds the writer's bytes (after the rename converged;
/// not timed).
fn check_same(what: &str, writer: &Path, receivers: &[PathBuf]) -> Result<()> {
    let hash = tree_hash(writer)?;
    for r in receivers {
        if tree_hash(r)? != hash {
            bail!("{what}: {} differs from the writer", r.display());
        }
    }
    Ok(())
}

/// The two rows of a system, the rename's compared with the initial sync against
/// the target; and the error of a rename that timed out (`stuck`: where the
/// receivers stood then).
fn rows(
    system: &str,
    receivers: usize,
    want: &BTreeMap<String, u64>,
    (initial, rename): (Step, Step),
    stuck: Option<String>,
) -> RenameRun {
    let converged = stuck.is_none();
    let time = rename.wall.as_secs_f64() / initial.wall.as_secs_f64();
    let share = rename.bytes as f64 / initial.bytes.max(1) as f64;
    let met = converged && time <= TARGET_TIME && share < TARGET_BYTES;
    let verdict = if converged {
        format!(
            "rename/initial: time {time:.2}x, bytes {:.2} % (target ≤ {TARGET_TIME}x, < {:.0} %: {})",
            share * 100.0,
            TARGET_BYTES * 100.0,
            if met { "met" } else { "missed" }
        )
    } else {
        format!(
            "NOT converged within {} s (timeout); bytes so far {:.2} % of the initial sync",
            RENAME_TIMEOUT.as_secs(),
            share * 100.0
        )
    };
    let row = |step: Step, what: &str, detail: String| Row {
        workload: "rename",
        system: format!("{system}, {what}"),
        receivers,
        value: step.wall.as_secs_f64(),
        unit: "s",
        detail: if step.note.is_empty() {
            detail
        } else {
            format!("{detail}; {}", step.note)
        },
        usage: Some(step.usage),
        writer: Some(step.writer),
        bytes: Some(step.bytes),
        broker: step.broker,
        wire: step.wire,
        p99: None,
    };
    let initial_detail = format!(
        "{} files, {:.1} MB; {} MB/s{}",
        want.len(),
        data::total(want) as f64 / 1e6,
        rate(data::total(want), initial.wall),
        if receivers > 1 { " per receiver" } else { "" }
    );
    let timed_out = stuck.map(|why| {
        format!(
            "the receivers did not hold the renamed tree within {} s ({why})",
            RENAME_TIMEOUT.as_secs()
        )
    });
    RenameRun {
        rows: vec![
            row(initial, "initial sync", initial_detail),
            row(rename, "rename", verdict),
        ],
        timed_out,
    }
}

/// What the mqsync nodes have sent so far: the writer's bytes published, and the
/// receivers' request messages (a receiver asks for chunks it lacks) and bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    writer: f64,
    requests: f64,
    receivers: f64,
}

/// An mqsync cluster's counters and usage at one moment, to split the run into steps.
struct Snapshot {
    sent: Sent,
    usage: Stopped,
    wire: Option<Wire>,
}

impl Snapshot {
    /// The counters of every node; the writer's only once it runs (before its start
    /// its metrics endpoint does not answer, and it has sent nothing).
    fn take(c: &Cluster, writer_running: bool) -> Result<Snapshot> {
        let mut sent = Sent::default();
        if writer_running {
            sent.writer = c.metric(0, "mqsync_bytes_sent_total")?;
        }
        for i in 1..=RECEIVERS {
            sent.requests += c.metric_where(i, "mqsync_messages_sent_total", "kind=\"request\"")?;
            sent.receivers += c.metric(i, "mqsync_bytes_sent_total")?;
        }
        Ok(Snapshot {
            sent,
            usage: c.usage_now(),
            // Without iproute2's `ss` the column stays empty.
            wire: c.broker_wire().ok(),
        })
    }

    /// The step from `before` to this snapshot, which took `wall`.
    fn step_since(&self, before: &Snapshot, wall: Duration) -> Step {
        let usage = self.usage.since(&before.usage);
        let wire = self
            .wire
            .as_ref()
            .zip(before.wire.as_ref())
            .map(|(after, before)| wire_between(before, after));
        Step {
            wall,
            bytes: (self.sent.writer - before.sent.writer).max(0.0) as u64,
            usage: usage.all(),
            writer: usage.nodes.first().copied().unwrap_or_default(),
            broker: Some(usage.broker),
            wire,
            note: format!(
                "receivers sent {:.0} requests, {:.2} MB",
                self.sent.requests - before.sent.requests,
                (self.sent.receivers - before.sent.receivers) / 1e6
            ),
        }
    }
}

/// Waits until every node of the cluster reports itself idle, so that what a step
/// sent after the receivers matched (digests, acknowledgements) counts with it.
fn wait_idle(c: &mut Cluster) -> Result<()> {
    for i in 0..=RECEIVERS {
        c.wait_ready(i)?;
    }
    Ok(())
}

/// The steps with mqsync: receivers running and idle, the writer started on a folder
/// that already holds the tree (hard links), timed until both receivers hold it, as
/// the small-files workload runs; then, with every node idle, the rename.
fn mqsync_steps(
    c: &mut Cluster,
    src: &Path,
    want: &BTreeMap<String, u64>,
) -> Result<((Step, Step), Option<String>)> {
    let hash = tree_hash(src)?;
    for i in 1..=RECEIVERS {
        c.start(i)?;
    }
    for i in 1..=RECEIVERS {
        c.wait_ready(i)?;
    }
    data::link_tree(src, &c.folder(0))?;
    let targets: Vec<PathBuf> = (1..=RECEIVERS).map(|i| c.folder(i)).collect();
    let before = Snapshot::take(c, false)?;
    let start = Instant::now();
    c.start(0)?;
    let wall = wait_tree("rename: initial sync", &targets, want, hash, start, || {
        c.dead()
    })?;
    wait_idle(c)?;
    let synced = Snapshot::take(c, true)?;
    let initial = synced.step_since(&before, wall);

    let start = Instant::now();
    rename_top(&c.folder(0))?;
    let done = wait_renamed("rename", &targets, &renamed(want), start, || c.dead())?;
    let wall = done.unwrap_or_else(|| start.elapsed());
    let stuck = match done {
        Some(_) => {
            wait_idle(c)?;
            check_same("rename", &c.folder(0), &targets)?;
            None
        }
        None => Some(format!("{}{}", progress(&targets), last_warning(&c.log(0)))),
    };
    let rename = Snapshot::take(c, true)?.step_since(&synced, wall);
    Ok(((initial, rename), stuck))
}

/// The last warning or error in a node's log, as `; writer: LINE`, or nothing: why a
/// rename is stuck is usually there (the mass-delete guard holding the old names).
fn last_warning(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.contains("WARN") || l.contains("ERROR"))
        .map(|l| format!("; writer: {}", l.chars().take(400).collect::<String>()))
        .unwrap_or_default()
}

/// The rename workload with mqsync, one writer and two receivers. Bytes are the
/// writer's `mqsync_bytes_sent_total` (what it published); the receivers' request
/// messages and bytes go in the detail, the broker's TCP bytes in their column.
pub fn rename_mqsync(ctx: &Ctx, src: &Path) -> Result<RenameRun> {
    let want = listing(src);
    let dir = ctx.fresh("rename-mqsync")?;
    let mut c = Cluster::new(&ctx.mqsync, &dir, RECEIVERS)?;
    let res = mqsync_steps(&mut c, src, &want);
    // The steps' usage comes from snapshots taken while everything ran.
    c.stop();
    let (steps, stuck) = res?;
    Ok(rows("mqsync", RECEIVERS, &want, steps, stuck))
}

/// Bytes every Syncthing node has sent so far (to all its peers), in node order; a
/// node not running counts zero.
fn syncthing_out(s: &Syncthing, running: &[usize]) -> Result<Vec<u64>> {
    (0..=RECEIVERS)
        .map(|i| {
            if running.contains(&i) {
                s.bytes_out(i)
            } else {
                Ok(0)
            }
        })
        .collect()
}

/// A Syncthing step from the counters and usages before and after it.
fn syncthing_step(
    wall: Duration,
    (out_before, out_after): (&[u64], &[u64]),
    (use_before, use_after): (&[Usage], &[Usage]),
) -> Step {
    let usage: Vec<Usage> = use_after
        .iter()
        .zip(use_before)
        .map(|(a, b)| a.since(*b))
        .collect();
    let sent = |i: usize| out_after[i].saturating_sub(out_before[i]);
    let receivers: u64 = (1..=RECEIVERS).map(sent).sum();
    Step {
        wall,
        bytes: sent(0),
        usage: usage.iter().fold(Usage::default(), |a, u| a.add(*u)),
        writer: usage.first().copied().unwrap_or_default(),
        broker: None,
        wire: None,
        note: format!("receivers sent {:.2} MB", receivers as f64 / 1e6),
    }
}

/// The steps with Syncthing, as its small-files workload runs them (receivers
/// connected, the writer started on the tree), every node idle between the steps.
fn syncthing_steps(
    s: &mut Syncthing,
    src: &Path,
    want: &BTreeMap<String, u64>,
) -> Result<((Step, Step), Option<String>)> {
    let hash = tree_hash(src)?;
    for i in 1..=RECEIVERS {
        s.start(i)?;
    }
    for i in 1..=RECEIVERS {
        s.wait_connected(i, 1)?;
    }
    data::link_tree(src, &s.folder(0))?;
    let targets: Vec<PathBuf> = (1..=RECEIVERS).map(|i| s.folder(i)).collect();
    let receivers: Vec<usize> = (1..=RECEIVERS).collect();
    let out0 = syncthing_out(s, &receivers)?;
    let use0 = s.usage_now();
    let start = Instant::now();
    s.start(0)?;
    let wall = wait_tree("rename: initial sync", &targets, want, hash, start, || {
        s.dead()
    })?;
    let all: Vec<usize> = (0..=RECEIVERS).collect();
    for &i in &all {
        s.wait_idle(i)?;
    }
    let out1 = syncthing_out(s, &all)?;
    let use1 = s.usage_now();
    let initial = syncthing_step(wall, (&out0, &out1), (&use0, &use1));

    let start = Instant::now();
    rename_top(&s.folder(0))?;
    let done = wait_renamed("rename", &targets, &renamed(want), start, || s.dead())?;
    let wall = done.unwrap_or_else(|| start.elapsed());
    let stuck = match done {
        Some(_) => {
            for &i in &all {
                s.wait_idle(i)?;
            }
            check_same("rename", &s.folder(0), &targets)?;
            None
        }
        None => Some(progress(&targets)),
    };
    let out2 = syncthing_out(s, &all)?;
    let use2 = s.usage_now();
    let rename = syncthing_step(wall, (&out1, &out2), (&use1, &use2));
    Ok(((initial, rename), stuck))
}

/// The rename workload with Syncthing (watcher at its default delay, 10 s, which the
/// rename's time includes). Bytes are the writer's total sent to its peers; the
/// receivers' (to each other and the writer) go in the detail.
pub fn rename_syncthing(ctx: &Ctx, src: &Path) -> Result<RenameRun> {
    let want = listing(src);
    let dir = ctx.fresh("rename-syncthing")?;
    let mut s = Syncthing::new(&dir, 1 + RECEIVERS, None)?;
    let res = syncthing_steps(&mut s, src, &want);
    s.stop();
    let (steps, stuck) = res?;
    Ok(rows("Syncthing", RECEIVERS, &want, steps, stuck))
}

/// rsync's flags: `-a` as in the other rows, `--delete` so that the target drops the
/// old tree (without it rsync leaves it, and the target never matches the source),
/// and an I/O timeout so that a stalled transfer fails instead of hanging the run.
const RSYNC_FLAGS: [&str; 3] = ["-a", "--delete", "--timeout=300"];

/// One push of `source` into the daemon's module directory `run`, as a step.
fn rsync_step(d: &RsyncDaemon, source: &Path) -> Result<Step> {
    let daemon_before = d.usage_now();
    let (client, wall, sent) = d.push(&RSYNC_FLAGS, source, "run")?;
    let daemon = d.usage_now().since(daemon_before);
    Ok(Step {
        wall,
        bytes: sent,
        usage: client.add(daemon),
        writer: client,
        broker: None,
        wire: None,
        note: String::new(),
    })
}

/// The steps with rsync: a push of the tree, the rename, a second push (its whole
/// run is the rename's time).
fn rsync_steps(
    d: &RsyncDaemon,
    source: &Path,
    want: &BTreeMap<String, u64>,
    hash: blake3::Hash,
) -> Result<(Step, Step)> {
    let target = d.root.join("run");
    let initial = rsync_step(d, source)?;
    if &listing(&target) != want || tree_hash(&target)? != hash {
        bail!("rsync, initial sync: the target differs from the source");
    }
    rename_top(source)?;
    let rename = rsync_step(d, source)?;
    if target.join(RENAME_TOP).exists() || listing(&target) != renamed(want) {
        bail!("rsync, rename: the target does not hold the renamed tree alone");
    }
    check_same("rsync, rename", source, &[target])?;
    Ok((initial, rename))
}

/// The rename workload with rsync through its daemon on 127.0.0.1, one receiver.
/// Bytes are the client's (from `--stats`).
pub fn rename_rsync(ctx: &Ctx, src: &Path) -> Result<RenameRun> {
    let want = listing(src);
    let hash = tree_hash(src)?;
    let dir = ctx.fresh("rename-rsync")?;
    let source = dir.join("src");
    data::link_tree(src, &source)?;
    let d = RsyncDaemon::start(&dir.join("daemon"))?;
    let res = rsync_steps(&d, &source, &want, hash);
    d.stop();
    let steps = res?;
    let system = format!("rsync {}, daemon (unencrypted)", RSYNC_FLAGS[..2].join(" "));
    Ok(rows(&system, 1, &want, steps, None))
}

#[cfg(test)]
mod tests {
    #[test]
    fn renamed_moves_only_the_top_directory() {
        let want = [
            ("tree/d000/f00000.txt".to_string(), 3),
            ("x".to_string(), 1),
        ]
        .into_iter()
        .collect();
        let got: Vec<(String, u64)> = super::renamed(&want).into_iter().collect();
        assert_eq!(
            got,
            [
                ("renamed/d000/f00000.txt".to_string(), 3),
                ("x".to_string(), 1)
            ]
        );
    }
}
