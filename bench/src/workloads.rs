//! The workloads, each run by each system into fresh directories: latency of one small
//! file, bulk files, many small files, fan-out of the bulk files to 1, 2 and 4
//! receivers and the scale of one node's index here; a delta to a large file
//! ([`delta`]), latency by write pattern ([`patterns`]), rsync over SSH and the
//! transport floor ([`ssh`]), Syncthing ([`syncthing`]), the rename of a synced tree
//! ([`rename`]) and repair traffic among many nodes ([`nodes`]) in their modules.
//! Every run checks that the receivers hold exactly the source's bytes before its
//! numbers count.

pub mod delta;
pub mod nodes;
pub mod patterns;
pub mod rename;
pub mod ssh;
pub mod syncthing;

use crate::data::{self, DataSet, listing, tree_hash};
use crate::mqsync::Cluster;
use crate::peers::{Lsyncd, RsyncDaemon};
use crate::proc::{Usage, wait_for};
use anyhow::{Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One line of the results table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub workload: &'static str,
    pub system: String,
    pub receivers: usize,
    /// The headline number: milliseconds (latency p50) or seconds.
    pub value: f64,
    pub unit: &'static str,
    pub detail: String,
    /// All processes of the system: CPU summed, largest peak memory.
    pub usage: Option<Usage>,
    /// The writer's CPU and peak memory, where the system has a writer process.
    pub writer: Option<Usage>,
    /// Bytes the writer sent.
    pub bytes: Option<u64>,
    /// The broker's CPU and peak memory (mqsync).
    pub broker: Option<Usage>,
    /// The broker's TCP bytes in and out during the timed part (mqsync).
    pub wire: Option<(u64, u64)>,
    /// The 99th percentile in milliseconds (latency rows).
    pub p99: Option<f64>,
}

pub struct Ctx {
    pub mqsync: PathBuf,
    pub work: PathBuf,
    pub data: DataSet,
    pub sizes: data::Sizes,
    pub trials: usize,
    pub slow_trials: usize,
    run: std::cell::Cell<u32>,
}

impl Ctx {
    pub fn new(
        mqsync: PathBuf,
        work: PathBuf,
        (data, sizes): (DataSet, data::Sizes),
        trials: usize,
        slow_trials: usize,
    ) -> Ctx {
        Ctx {
            mqsync,
            work,
            data,
            sizes,
            trials,
            slow_trials,
            run: std::cell::Cell::new(0),
        }
    }

    /// A fresh directory for one run; this machine's page cache and file creation
    /// are slow right after large deletes, so old runs are removed first, with a pause.
    /// After many files, the pause outlasts ext4's `recently_deleted` window: without
    /// a journal, it skips inodes freed in the last 60 s when it allocates new ones,
    /// and a small-files run right after another's cleanup took twice the time.
    fn fresh(&self, name: &str) -> Result<PathBuf> {
        let runs = self.work.join("runs");
        if runs.exists() && std::env::var_os("MQSYNC_BENCH_KEEP").is_none() {
            remove_runs(&self.work)?;
            std::thread::sleep(Duration::from_secs(2));
        }
        wait_for_cleanup(&self.work);
        self.run.set(self.run.get() + 1);
        // No spaces: the SSH rows pass paths in `rsync -e` and sshd_config unquoted.
        let name = name.replace(' ', "-");
        let dir = runs.join(format!("{}-{name}", self.run.get()));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// Removed runs with at least this many entries are followed by the long pause.
const MANY_FILES: usize = 5_000;
/// ext4's window for recently freed inodes (60 s), with a margin.
const INODE_SETTLE: Duration = Duration::from_secs(65);

/// Removes the runs below `work`; after many files, notes when in `work/last-cleanup`
/// for [`wait_for_cleanup`] (also across invocations: the previous one cleans up last).
pub fn remove_runs(work: &Path) -> std::io::Result<()> {
    let runs = work.join("runs");
    let files = count_entries(&runs, MANY_FILES);
    fs::remove_dir_all(&runs)?;
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    if files >= MANY_FILES {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        fs::write(work.join("last-cleanup"), now.to_string())?;
    }
    Ok(())
}

/// Waits until [`INODE_SETTLE`] has passed since the last removal of many files.
pub fn wait_for_cleanup(work: &Path) {
    let Some(at) = fs::read_to_string(work.join("last-cleanup"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = (at + INODE_SETTLE.as_secs()).saturating_sub(now);
    if left > 0 {
        eprintln!(
            "  (many files were removed {}s ago: waiting {left} s before the next run)",
            now.saturating_sub(at)
        );
        std::thread::sleep(Duration::from_secs(left));
    }
}

/// Entries below `dir`, counting stopped at `limit`.
fn count_entries(dir: &Path, limit: usize) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            n += 1;
            if n >= limit {
                return n;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    n
}

/// MB/s, with a decimal when small.
pub(crate) fn rate(bytes: u64, wall: Duration) -> String {
    let r = bytes as f64 / wall.as_secs_f64() / 1e6;
    if r < 10.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn same(path: &Path, data: &[u8]) -> bool {
    fs::read(path).is_ok_and(|d| d == data)
}

/// Writes `trials` small files into `src` and times each until every target holds it.
pub(crate) fn latency_trials(
    src: &Path,
    targets: &[PathBuf],
    prefix: &str,
    trials: usize,
    timeout: Duration,
) -> Result<Vec<f64>> {
    let mut ms = vec![];
    for t in 0..trials {
        let data = format!("{prefix} trial {t} {}\n", "x".repeat(200));
        let name = format!("{prefix}-{t}.txt");
        let start = Instant::now();
        fs::write(src.join(&name), &data)?;
        wait_for(
            &format!("trial {t}"),
            timeout,
            Duration::from_micros(200),
            || {
                targets
                    .iter()
                    .all(|d| same(&d.join(&name), data.as_bytes()))
            },
        )?;
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(50));
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

pub(crate) fn latency_row(system: String, ms: &[f64], usage: Option<Usage>) -> Row {
    Row {
        workload: "latency",
        system,
        receivers: 2,
        value: percentile(ms, 0.5),
        unit: "ms p50",
        detail: format!("p99 {:.1} ms, {} trials", percentile(ms, 0.99), ms.len()),
        usage,
        writer: None,
        bytes: None,
        broker: None,
        wire: None,
        p99: Some(percentile(ms, 0.99)),
    }
}

pub fn latency_mqsync(ctx: &Ctx) -> Result<Row> {
    let dir = ctx.fresh("latency-mqsync")?;
    let mut c = Cluster::new(&ctx.mqsync, &dir, 2)?;
    for i in 0..3 {
        c.start(i)?;
    }
    for i in 0..3 {
        c.wait_ready(i)?;
    }
    let targets = [c.folder(1), c.folder(2)];
    let ms = latency_trials(
        &c.folder(0),
        &targets,
        "lat",
        ctx.trials,
        Duration::from_secs(30),
    )?;
    let stopped = c.stop();
    let mut row = latency_row("mqsync".into(), &ms, Some(stopped.all()));
    row.writer = stopped.nodes.first().copied();
    Ok(row)
}

pub fn latency_lsyncd(ctx: &Ctx, delay: u32) -> Result<Row> {
    let dir = ctx.fresh(&format!("latency-lsyncd-{delay}"))?;
    let src = dir.join("src");
    fs::create_dir_all(&src)?;
    let targets = [dir.join("t1"), dir.join("t2")];
    let l = Lsyncd::start(&dir.join("lsyncd"), &src, &targets, delay)?;
    // lsyncd copies everything once at start; a first file shows it is watching.
    let warm = latency_trials(
        &src,
        &targets,
        "warm",
        1,
        Duration::from_secs(u64::from(delay) + 60),
    );
    let trials = if delay > 1 {
        ctx.slow_trials
    } else {
        ctx.trials
    };
    let ms = warm.and_then(|_| {
        latency_trials(
            &src,
            &targets,
            "lat",
            trials,
            Duration::from_secs(u64::from(delay) + 60),
        )
    });
    let usage = l.stop();
    let ms = ms?;
    Ok(latency_row(
        format!("lsyncd, delay {delay} s"),
        &ms,
        Some(usage),
    ))
}

/// How long to sleep between two listings of receivers that should hold `files` files.
/// Listing a large tree costs CPU the system under test could use: a slow run is
/// polled less often (about 1% of the time so far, at most once a second).
fn poll_every(files: usize, start: Instant) -> Duration {
    let base = if files > 1000 {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(10)
    };
    (start.elapsed() / 100).clamp(base, Duration::from_secs(1))
}

/// Waits until every receiver lists exactly `want` (names and sizes), then checks the
/// bytes. The time from `start` until the listings matched: checking the bytes
/// afterwards (gigabytes with four receivers) is not counted.
pub(crate) fn wait_tree(
    what: &str,
    receivers: &[PathBuf],
    want: &std::collections::BTreeMap<String, u64>,
    hash: blake3::Hash,
    start: Instant,
    mut dead: impl FnMut() -> Option<String>,
) -> Result<Duration> {
    let d = loop {
        if let Some(why) = dead() {
            bail!("{what}: {why}");
        }
        if receivers.iter().all(|r| &listing(r) == want) {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("{what}: not done within 900 s");
        }
        std::thread::sleep(poll_every(want.len(), start));
    };
    for r in receivers {
        if tree_hash(r)? != hash {
            bail!("{what}: {} differs from the source", r.display());
        }
    }
    Ok(d)
}

/// The bulk or small-files workload with mqsync: receivers running and idle, the
/// writer started on a folder that already holds the data (hard links), timed until
/// both receivers hold every byte.
pub fn tree_mqsync(ctx: &Ctx, workload: &'static str, src: &Path, receivers: usize) -> Result<Row> {
    let want = listing(src);
    let hash = tree_hash(src)?;
    let dir = ctx.fresh(&format!("{workload}-mqsync-{receivers}"))?;
    let mut c = Cluster::new(&ctx.mqsync, &dir, receivers)?;
    for i in 1..=receivers {
        c.start(i)?;
    }
    for i in 1..=receivers {
        c.wait_ready(i)?;
    }
    data::link_tree(src, &c.folder(0))?;
    // Without iproute2's `ss` the column stays empty.
    let wire_before = c.broker_wire().ok();
    let start = Instant::now();
    c.start(0)?;
    let targets: Vec<PathBuf> = (1..=receivers).map(|i| c.folder(i)).collect();
    let res = wait_tree(workload, &targets, &want, hash, start, || c.dead());
    let bytes = c.metric(0, "mqsync_bytes_sent_total").ok();
    let wire = c.wire_since(wire_before.as_ref());
    let stopped = c.stop();
    let wall = res?;
    Ok(Row {
        workload,
        system: "mqsync".into(),
        receivers,
        value: wall.as_secs_f64(),
        unit: "s",
        detail: format!("{} MB/s per receiver", rate(data::total(&want), wall)),
        usage: Some(stopped.all()),
        writer: stopped.nodes.first().copied(),
        bytes: bytes.map(|b| b as u64),
        broker: Some(stopped.broker),
        wire,
        p99: None,
    })
}

/// The same through an rsync daemon on 127.0.0.1 into an empty module directory.
pub fn tree_rsync(ctx: &Ctx, workload: &'static str, src: &Path, flags: &[&str]) -> Result<Row> {
    let want = listing(src);
    let hash = tree_hash(src)?;
    let shown = flags.join(" ");
    let dir = ctx.fresh(&format!("{workload}-rsync{}", flags.concat()))?;
    let d = RsyncDaemon::start(&dir)?;
    let res = d.push(flags, src, "run");
    let target = d.root.join("run");
    let daemon = d.stop();
    let (client, wall, sent) = res?;
    if listing(&target) != want || tree_hash(&target)? != hash {
        bail!("rsync {shown}: the target differs from the source");
    }
    Ok(Row {
        workload,
        system: format!("rsync {shown}, daemon (unencrypted)"),
        receivers: 1,
        value: wall.as_secs_f64(),
        unit: "s",
        detail: format!("{} MB/s", rate(data::total(&want), wall)),
        usage: Some(client.add(daemon)),
        writer: Some(client),
        bytes: Some(sent),
        broker: None,
        wire: None,
        p99: None,
    })
}

/// Fan-out: the bulk workload with mqsync to `receivers` receivers. The broker fans
/// out, so the writer's CPU and bytes should not grow with the count.
pub fn fanout_mqsync(ctx: &Ctx, receivers: usize) -> Result<Row> {
    let src = ctx.data.bulk.clone();
    let mut row = tree_mqsync(ctx, "fan-out", &src, receivers)?;
    row.detail = format!(
        "{}; broker CPU {}",
        row.detail,
        row.broker
            .map_or("–".into(), |u| format!("{:.2} s", u.cpu_s))
    );
    Ok(row)
}

/// Waits until `log` holds `line` (or a process of the cluster exits).
fn wait_log(c: &mut Cluster, i: usize, line: &str, timeout: Duration) -> Result<Duration> {
    let log = c.log(i);
    let mut died = None;
    let d = wait_for(line, timeout, Duration::from_millis(20), || {
        died = c.dead();
        died.is_some() || fs::read_to_string(&log).is_ok_and(|t| t.contains(line))
    })?;
    if let Some(why) = died {
        bail!("{line}: {why}");
    }
    Ok(d)
}

/// Total size of the node's index files (`state_dir/folders/*.redb`).
fn index_bytes(state: &Path) -> u64 {
    fs::read_dir(state.join("folders"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "redb"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Scale: one mqsync node (and the broker, with no other node) on a folder of many
/// small files. The first start indexes (hashes) them all; the second, with nothing
/// changed, only rescans. Times to the log line "initial scan done" from the start of
/// the process; memory from the running node (`VmRSS` once idle, `VmHWM` peak) and
/// `/usr/bin/time`; the index's size on disk.
pub fn scale_mqsync(ctx: &Ctx, src: &Path) -> Result<Vec<Row>> {
    let files = listing(src).len() as u64;
    let dir = ctx.fresh("scale-mqsync")?;
    let mut c = Cluster::new(&ctx.mqsync, &dir, 0)?;
    eprintln!("scale: linking {files} files");
    data::link_tree(src, &c.folder(0))?;
    let long = Duration::from_secs(3 * 3600);
    const DONE: &str = "initial scan done";

    c.start(0)?;
    let first_scan = wait_log(&mut c, 0, DONE, long)?;
    eprintln!("scale: first start, initial scan done after {first_scan:.1?}");
    let first_idle = first_scan + c.wait_ready_within(0, long)?;
    let first_rss = c.rss_kib(0).unwrap_or_default();
    let bytes = c.metric(0, "mqsync_bytes_sent_total").ok();
    let first = c.stop_node(0);
    let index_first = index_bytes(&c.state_dir(0));

    // Nothing changed: the second start only rescans.
    let _ = fs::remove_file(c.health_file(0));
    std::thread::sleep(Duration::from_secs(1));
    c.start(0)?;
    let rescan = wait_log(&mut c, 0, DONE, long)?;
    let idle = rescan + c.wait_ready_within(0, long)?;
    let (rss, hwm) = c.rss_kib(0).unwrap_or_default();
    let state = c.state_dir(0);
    let stopped = c.stop();
    let again = stopped.nodes[0];
    let index = index_bytes(&state);
    let per_file = |kib: u64| kib as f64 * 1024.0 / files as f64;
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(vec![
        Row {
            workload: "scale",
            system: "mqsync, first start (index)".into(),
            receivers: 0,
            value: first_scan.as_secs_f64(),
            unit: "s",
            detail: format!(
                "{files} files; idle after {:.1} s; RSS {:.0} MiB idle ({:.0} B/file), \
                 peak {:.0} MiB; index {:.1} MB",
                first_idle.as_secs_f64(),
                mib(first_rss.0),
                per_file(first_rss.0),
                mib(first.max_rss_kib),
                index_first as f64 / 1e6,
            ),
            usage: Some(first),
            writer: Some(first),
            bytes: bytes.map(|b| b as u64),
            broker: None,
            wire: None,
            p99: None,
        },
        Row {
            workload: "scale",
            system: "mqsync, restart (unchanged rescan)".into(),
            receivers: 0,
            value: rescan.as_secs_f64(),
            unit: "s",
            detail: format!(
                "{files} files; idle after {:.1} s; RSS {:.0} MiB idle ({:.0} B/file), \
                 peak {:.0} MiB ({:.0} B/file); index {:.1} MB ({:.0} B/file)",
                idle.as_secs_f64(),
                mib(rss),
                per_file(rss),
                mib(hwm.max(again.max_rss_kib)),
                per_file(hwm.max(again.max_rss_kib)),
                index as f64 / 1e6,
                index as f64 / files as f64,
            ),
            usage: Some(again),
            writer: Some(again),
            bytes: None,
            broker: Some(stopped.broker),
            wire: None,
            p99: None,
        },
    ])
}
