//! The delta workload: 1 MiB changed in the middle of a large file that every receiver
//! already holds, timed until the receivers hold the change, with the bytes the writer
//! sent for it (mqsync; rsync through its daemon and over SSH, as `--stats` counts).

use super::{Ctx, Row, wait_tree};
use crate::data::{self, listing, tree_hash};
use crate::mqsync::Cluster;
use crate::peers::RsyncDaemon;
use crate::proc::wait_for;
use crate::ssh::Sshd;
use anyhow::{Result, bail};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes the changed middle of the delta file into `file` in place.
fn apply_change(ctx: &Ctx, file: &Path) -> Result<()> {
    let (at, len) = data::delta_change_range(ctx.sizes);
    let mut changed = vec![0u8; len];
    fs::File::open(ctx.data.delta_changed.join("big.bin"))?.read_exact_at(&mut changed, at)?;
    let f = fs::OpenOptions::new().write(true).open(file)?;
    let mtime = f.metadata()?.modified()?;
    f.write_all_at(&changed, at)?;
    // rsync's quick check compares whole seconds: a change within the second of the
    // first copy would go unseen.
    f.set_modified(mtime + Duration::from_secs(60))?;
    f.sync_all()?;
    Ok(())
}

pub fn delta_mqsync(ctx: &Ctx) -> Result<Row> {
    let dir = ctx.fresh("delta-mqsync")?;
    let mut c = Cluster::new(&ctx.mqsync, &dir, 2)?;
    fs::copy(
        ctx.data.delta_base.join("big.bin"),
        c.folder(0).join("big.bin"),
    )?;
    for i in 0..3 {
        c.start(i)?;
    }
    let targets = [c.folder(1), c.folder(2)];
    let base_hash = tree_hash(&ctx.data.delta_base)?;
    wait_tree(
        "delta base",
        &targets,
        &listing(&ctx.data.delta_base),
        base_hash,
        Instant::now(),
        || c.dead(),
    )?;
    for i in 0..3 {
        c.wait_ready(i)?;
    }
    let before = c.metric(0, "mqsync_bytes_sent_total")?;
    let wire_before = c.broker_wire().ok();
    let file = c.folder(0).join("big.bin");
    let start = Instant::now();
    apply_change(ctx, &file)?;
    let want_hash = tree_hash(&ctx.data.delta_changed)?;
    let mtime = fs::metadata(&file)?.mtime_nsec() + fs::metadata(&file)?.mtime() * 1_000_000_000;
    let res = wait_for(
        "delta",
        Duration::from_secs(300),
        Duration::from_millis(5),
        || {
            targets.iter().all(|t| {
                fs::metadata(t.join("big.bin"))
                    .is_ok_and(|m| m.mtime() * 1_000_000_000 + m.mtime_nsec() == mtime)
            })
        },
    );
    let wall = start.elapsed();
    let after = c.metric(0, "mqsync_bytes_sent_total");
    let wire = c.wire_since(wire_before.as_ref());
    let stopped = c.stop();
    res?;
    for t in &targets {
        if tree_hash(t)? != want_hash {
            bail!("delta: {} differs from the changed file", t.display());
        }
    }
    let sent = (after? - before) as u64;
    Ok(Row {
        workload: "delta",
        system: "mqsync".into(),
        receivers: 2,
        value: wall.as_secs_f64(),
        unit: "s",
        detail: format!("{:.2} MB sent for 1 MiB changed", sent as f64 / 1e6),
        usage: Some(stopped.all()),
        writer: stopped.nodes.first().copied(),
        bytes: Some(sent),
        broker: Some(stopped.broker),
        wire,
        p99: None,
    })
}

pub fn delta_rsync(ctx: &Ctx) -> Result<Row> {
    let dir = ctx.fresh("delta-rsync")?;
    let src = dir.join("src");
    fs::create_dir_all(&src)?;
    fs::copy(ctx.data.delta_base.join("big.bin"), src.join("big.bin"))?;
    let d = RsyncDaemon::start(&dir.join("daemon"))?;
    let res = d.push(&["-a"], &src, "run").and_then(|_| {
        apply_change(ctx, &src.join("big.bin"))?;
        d.push(&["-a"], &src, "run")
    });
    let target = d.root.join("run");
    let daemon = d.stop();
    let (client, wall, sent) = res?;
    if tree_hash(&target)? != tree_hash(&ctx.data.delta_changed)? {
        bail!("rsync delta: the target differs from the changed file");
    }
    Ok(Row {
        workload: "delta",
        system: "rsync -a, daemon (unencrypted)".into(),
        receivers: 1,
        value: wall.as_secs_f64(),
        unit: "s",
        detail: format!("{:.2} MB sent for 1 MiB changed", sent as f64 / 1e6),
        usage: Some(client.add(daemon)),
        writer: Some(client),
        bytes: Some(sent),
        broker: None,
        wire: None,
        p99: None,
    })
}

/// The same over SSH to two receivers at once, as lsyncd would: the base pushed first,
/// then the change, timed until both rsyncs ended. Bytes sent are both clients'
/// together, as `--stats` counts them (the rsync protocol's bytes, before SSH).
pub fn delta_ssh(ctx: &Ctx) -> Result<Row> {
    let dir = ctx.fresh("delta-ssh")?;
    let src = dir.join("src");
    fs::create_dir_all(&src)?;
    fs::copy(ctx.data.delta_base.join("big.bin"), src.join("big.bin"))?;
    let sshd = Sshd::start(&dir.join("sshd"))?;
    let targets = super::ssh::targets(&dir)?;
    let res = sshd.push_all(&["-a"], &src, &targets).and_then(|_| {
        apply_change(ctx, &src.join("big.bin"))?;
        sshd.push_all(&["-a"], &src, &targets)
    });
    let server = sshd.stop();
    let (client, wall, sent) = res?;
    let want = tree_hash(&ctx.data.delta_changed)?;
    for t in &targets {
        if tree_hash(t)? != want {
            bail!(
                "rsync over SSH delta: {} differs from the changed file",
                t.display()
            );
        }
    }
    let total: u64 = sent.iter().sum();
    Ok(Row {
        workload: "delta",
        system: super::ssh::SSH_SYSTEM.into(),
        receivers: targets.len(),
        value: wall.as_secs_f64(),
        unit: "s",
        detail: format!(
            "{:.2} MB sent for 1 MiB changed ({:.2} MB per receiver)",
            total as f64 / 1e6,
            total as f64 / 1e6 / targets.len() as f64
        ),
        usage: Some(client.add(server)),
        writer: Some(client),
        bytes: Some(total),
        ..Row::default()
    })
}
