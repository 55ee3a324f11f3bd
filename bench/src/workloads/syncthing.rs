//! Syncthing's rows: latency with its watcher at its default delay, and the bulk and
//! small-files workloads, three nodes on 127.0.0.1 (a writer and two receivers).

use super::{Ctx, Row, latency_row, latency_trials, rate, wait_tree};
use crate::data::{self, listing, tree_hash};
use crate::peers::Syncthing;
use crate::proc::Usage;
use anyhow::Result;
use std::path::Path;
use std::time::{Duration, Instant};

/// Syncthing with its watcher at its default delay (10 s): one writer and two
/// receivers, connected and idle, then `slow_trials` small files.
pub fn latency_syncthing(ctx: &Ctx) -> Result<Row> {
    let dir = ctx.fresh("latency-syncthing")?;
    let mut s = Syncthing::new(&dir, 3, None)?;
    let run = |s: &mut Syncthing| -> Result<Vec<f64>> {
        for i in 0..3 {
            s.start(i)?;
        }
        for i in 0..3 {
            s.wait_connected(i, 2)?;
        }
        for i in 0..3 {
            s.wait_idle(i)?;
        }
        let targets = [s.folder(1), s.folder(2)];
        // A first file shows the whole path (watcher, index exchange, pull) works.
        latency_trials(&s.folder(0), &targets, "warm", 1, Duration::from_secs(120))?;
        latency_trials(
            &s.folder(0),
            &targets,
            "lat",
            ctx.slow_trials,
            Duration::from_secs(120),
        )
    };
    let ms = run(&mut s);
    let usages = s.stop();
    let ms = ms?;
    let mut row = latency_row(
        "Syncthing, watcher delay 10 s".into(),
        &ms,
        Some(usages.iter().fold(Usage::default(), |a, u| a.add(*u))),
    );
    row.writer = usages.first().copied();
    Ok(row)
}

/// The bulk or small-files workload with Syncthing: two receivers running, the writer
/// started on a folder that already holds the data (hard links), timed until both
/// receivers hold every byte. Bytes sent are the writer's total to its peers.
pub fn tree_syncthing(ctx: &Ctx, workload: &'static str, src: &Path) -> Result<Row> {
    let want = listing(src);
    let hash = tree_hash(src)?;
    let dir = ctx.fresh(&format!("{workload}-syncthing"))?;
    let mut s = Syncthing::new(&dir, 3, None)?;
    let run = |s: &mut Syncthing| -> Result<(Duration, Option<u64>)> {
        for i in 1..3 {
            s.start(i)?;
        }
        s.wait_connected(1, 1)?;
        s.wait_connected(2, 1)?;
        data::link_tree(src, &s.folder(0))?;
        let start = Instant::now();
        s.start(0)?;
        let targets = [s.folder(1), s.folder(2)];
        let wall = wait_tree(workload, &targets, &want, hash, start, || s.dead())?;
        Ok((wall, s.bytes_out(0).ok()))
    };
    let res = run(&mut s);
    let usages = s.stop();
    let (wall, bytes) = res?;
    Ok(Row {
        workload,
        system: "Syncthing".into(),
        receivers: 2,
        value: wall.as_secs_f64(),
        unit: "s",
        detail: format!("{} MB/s per receiver", rate(data::total(&want), wall)),
        usage: Some(usages.iter().fold(Usage::default(), |a, u| a.add(*u))),
        writer: usages.first().copied(),
        bytes,
        broker: None,
        wire: None,
        p99: None,
    })
}
