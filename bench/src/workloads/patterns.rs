//! Latency by write pattern: a small file written in place, written to a dot-temp file
//! and renamed into place (as Ansible, rsync and editors do), or moved in from outside
//! the folder; and latency under load: files written in place in one folder while
//! another folder of the same nodes receives the bulk data. mqsync, and lsyncd in its
//! `rsyncssh` mode at delay 0 through the bench's sshd.

use super::{Ctx, Row, latency_row, same, wait_tree};
use crate::data::{self, link_tree, listing, tree_hash};
use crate::mqsync::Cluster;
use crate::proc::{Usage, wait_for};
use crate::ssh::{LsyncdSsh, Sshd};
use anyhow::{Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    InPlace,
    TempRename,
    MoveIn,
}

impl Pattern {
    pub const ALL: [Pattern; 3] = [Pattern::InPlace, Pattern::TempRename, Pattern::MoveIn];

    /// The row's label (after "system: "), which the targets table looks for.
    pub fn label(self) -> &'static str {
        match self {
            Pattern::InPlace => "in place",
            Pattern::TempRename => "dot-temp renamed into place",
            Pattern::MoveIn => "moved in from outside",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Pattern::InPlace => "place",
            Pattern::TempRename => "temp",
            Pattern::MoveIn => "moved",
        }
    }
}

/// The label of the under-load rows starts with this.
pub const UNDER_LOAD: &str = "under load";

/// Where one system's trials happen.
struct Setup {
    /// The watched folder on the writer, and a directory beside it (same file system).
    src: PathBuf,
    outside: PathBuf,
    targets: Vec<PathBuf>,
    /// The other folder, which receives the load, on the writer and the receivers.
    load_src: PathBuf,
    load_targets: Vec<PathBuf>,
}

/// Makes `name` appear in `src` with `data` by `pattern`; the time the pattern began in
/// the folder (for a move, the rename: the file was written outside before).
fn write(p: Pattern, s: &Setup, name: &str, data: &[u8]) -> std::io::Result<Instant> {
    let dst = s.src.join(name);
    match p {
        Pattern::InPlace => {
            let start = Instant::now();
            fs::write(dst, data)?;
            Ok(start)
        }
        Pattern::TempRename => {
            let start = Instant::now();
            let tmp = s.src.join(format!(".{name}.tmp"));
            fs::write(&tmp, data)?;
            fs::rename(tmp, dst)?;
            Ok(start)
        }
        Pattern::MoveIn => {
            let out = s.outside.join(name);
            fs::write(&out, data)?;
            let start = Instant::now();
            fs::rename(out, dst)?;
            Ok(start)
        }
    }
}

/// Up to `trials` files by `pattern`, each timed until every target holds it; stops
/// early once `stop` holds (checked before each trial). Sorted milliseconds.
fn trials(
    s: &Setup,
    p: Pattern,
    prefix: &str,
    trials: usize,
    timeout: Duration,
    mut stop: impl FnMut() -> bool,
) -> Result<Vec<f64>> {
    let mut ms = vec![];
    for t in 0..trials {
        if stop() {
            break;
        }
        let data = format!("{prefix} trial {t} {}\n", "x".repeat(200));
        let name = format!("{prefix}-{t}.txt");
        let start = write(p, s, &name, data.as_bytes())?;
        wait_for(
            &format!("{} trial {t}", p.label()),
            timeout,
            Duration::from_micros(200),
            || {
                s.targets
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

/// Every pattern, then the in-place pattern while the bulk data goes to the other
/// folder (trials stop when it has arrived); then waits for the load to be complete.
fn run(ctx: &Ctx, system: &str, s: &Setup, timeout: Duration) -> Result<Vec<Row>> {
    let mut rows = vec![];
    for p in Pattern::ALL {
        let ms = trials(s, p, p.prefix(), ctx.trials, timeout, || false)?;
        let mut row = latency_row(format!("{system}: {}", p.label()), &ms, None);
        row.workload = "patterns";
        rows.push(row);
    }
    let load = &ctx.data.bulk;
    let want = listing(load);
    let hash = tree_hash(load)?;
    let mib = data::total(&want) >> 20;
    let arrived = || s.load_targets.iter().all(|t| listing(t) == want);
    let start = Instant::now();
    link_tree(load, &s.load_src)?;
    let ms = trials(s, Pattern::InPlace, "load", ctx.trials, timeout, arrived)?;
    let load_wall = wait_tree("load", &s.load_targets, &want, hash, start, || None)?;
    if ms.is_empty() {
        bail!("under load: the load had arrived before the first trial");
    }
    let mut row = latency_row(
        format!("{system}: {UNDER_LOAD}, in place while another folder receives {mib} MiB"),
        &ms,
        None,
    );
    row.workload = "patterns";
    row.detail = format!(
        "{}; the load took {:.2} s",
        row.detail,
        load_wall.as_secs_f64()
    );
    rows.push(row);
    Ok(rows)
}

/// The patterns with mqsync: three nodes sharing two folders, `bench` and `load`.
pub fn patterns_mqsync(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.fresh("patterns-mqsync")?;
    let mut c = Cluster::with_folders(&ctx.mqsync, &dir, 2, &["load"])?;
    for i in 0..3 {
        c.start(i)?;
    }
    for i in 0..3 {
        c.wait_ready(i)?;
    }
    let s = Setup {
        src: c.folder(0),
        outside: dir.join("outside"),
        targets: vec![c.folder(1), c.folder(2)],
        load_src: c.folder_of(0, "load"),
        load_targets: vec![c.folder_of(1, "load"), c.folder_of(2, "load")],
    };
    fs::create_dir_all(&s.outside)?;
    let res = run(ctx, "mqsync", &s, Duration::from_secs(30));
    let died = c.dead();
    let stopped = c.stop();
    let mut rows = res.map_err(|e| match died {
        Some(why) => e.context(why),
        None => e,
    })?;
    // The CPU of the whole run (every pattern and the load) on its last row.
    if let Some(last) = rows.last_mut() {
        last.usage = Some(stopped.all());
        last.broker = Some(stopped.broker);
    }
    Ok(rows)
}

/// Runs `body` while lsyncd (`rsyncssh`, delay 0) runs `syncs` through the bench's
/// sshd; its result and the usage of lsyncd (its rsync and ssh children included) and
/// sshd together.
fn with_lsyncd<T>(
    dir: &Path,
    syncs: &[(PathBuf, PathBuf)],
    body: impl FnOnce() -> Result<T>,
) -> Result<(T, Usage)> {
    let sshd = Sshd::start(&dir.join("sshd"))?;
    let l = LsyncdSsh::start(&dir.join("lsyncd"), &sshd, syncs, 0);
    let l = match l {
        Ok(l) => l,
        Err(e) => {
            sshd.stop();
            return Err(e);
        }
    };
    let res = body();
    let usage = l.stop().add(sshd.stop());
    Ok((res?, usage))
}

fn lsyncd_setup(dir: &Path) -> Result<Setup> {
    let s = Setup {
        src: dir.join("src"),
        outside: dir.join("outside"),
        targets: vec![dir.join("t1"), dir.join("t2")],
        load_src: dir.join("load-src"),
        load_targets: vec![dir.join("load-t1"), dir.join("load-t2")],
    };
    for d in [&s.src, &s.outside, &s.load_src] {
        fs::create_dir_all(d)?;
    }
    Ok(s)
}

/// The system name of lsyncd's rows.
const LSYNCD_SSH: &str = "lsyncd rsyncssh, delay 0 s";

/// The patterns with lsyncd (`rsyncssh`, delay 0): one sync per folder and receiver.
pub fn patterns_lsyncd(ctx: &Ctx) -> Result<Vec<Row>> {
    let dir = ctx.fresh("patterns-lsyncd-ssh")?;
    let s = lsyncd_setup(&dir)?;
    let mut syncs = vec![];
    for t in &s.targets {
        syncs.push((s.src.clone(), t.clone()));
    }
    for t in &s.load_targets {
        syncs.push((s.load_src.clone(), t.clone()));
    }
    let timeout = Duration::from_secs(60);
    let (mut rows, usage) = with_lsyncd(&dir, &syncs, || {
        // lsyncd copies everything once at start; a first file shows it is watching.
        trials(&s, Pattern::InPlace, "warm", 1, timeout, || false)?;
        run(ctx, LSYNCD_SSH, &s, timeout)
    })?;
    if let Some(last) = rows.last_mut() {
        last.usage = Some(usage);
    }
    Ok(rows)
}

/// The latency workload's row for lsyncd `rsyncssh` at delay 0: files written in place.
pub fn latency_lsyncd_ssh(ctx: &Ctx) -> Result<Row> {
    let dir = ctx.fresh("latency-lsyncd-ssh")?;
    let s = lsyncd_setup(&dir)?;
    let syncs: Vec<(PathBuf, PathBuf)> = s
        .targets
        .iter()
        .map(|t| (s.src.clone(), t.clone()))
        .collect();
    let timeout = Duration::from_secs(60);
    let (ms, usage) = with_lsyncd(&dir, &syncs, || {
        trials(&s, Pattern::InPlace, "warm", 1, timeout, || false)?;
        trials(&s, Pattern::InPlace, "lat", ctx.trials, timeout, || false)
    })?;
    Ok(latency_row(LSYNCD_SSH.into(), &ms, Some(usage)))
}
