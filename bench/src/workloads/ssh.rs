//! The bulk and small-files workloads with rsync over SSH as lsyncd runs it (one
//! `rsync -a -e ssh` per receiver, all at once), and the transport floor: the bulk
//! bytes as plain MQTT messages through mqsync's broker and through Mosquitto.

use super::{Ctx, Row, rate};
use crate::data::{self, listing, tree_hash};
use crate::floor;
use crate::mqsync::{certs_init, start_broker};
use crate::proc::free_port;
use crate::ssh::Sshd;
use anyhow::{Result, bail};
use std::fs;
use std::path::{Path, PathBuf};

/// Receivers of rsync over SSH, as mqsync's two.
pub const RECEIVERS: usize = 2;

/// The row's system name, which the targets table looks for.
pub const SSH_SYSTEM: &str = "rsync -a over SSH";

/// Fresh empty target directories `t1`, `t2`, … in `dir`.
pub fn targets(dir: &Path) -> Result<Vec<PathBuf>> {
    (1..=RECEIVERS)
        .map(|i| {
            let t = dir.join(format!("t{i}"));
            fs::create_dir_all(&t)?;
            Ok(t)
        })
        .collect()
}

/// The row of `rsync -a --fsync` over SSH: durable on the receivers before rsync
/// ends, as mqsync's applies are (plain `-a` leaves the bytes in the page cache).
pub const SSH_FSYNC_SYSTEM: &str = "rsync -a --fsync over SSH";

/// `src` pushed with `rsync -a -e ssh` to two receivers at once through the bench's
/// sshd, timed until the last rsync ended; bytes sent are both clients' together.
/// `fsync` adds `--fsync` (row [`SSH_FSYNC_SYSTEM`]).
pub fn tree_ssh(ctx: &Ctx, workload: &'static str, src: &Path, fsync: bool) -> Result<Row> {
    let want = listing(src);
    let hash = tree_hash(src)?;
    let (flags, system, tag): (&[&str], _, _) = if fsync {
        (&["-a", "--fsync"], SSH_FSYNC_SYSTEM, "ssh-fsync")
    } else {
        (&["-a"], SSH_SYSTEM, "ssh")
    };
    let dir = ctx.fresh(&format!("{workload}-{tag}"))?;
    let sshd = Sshd::start(&dir.join("sshd"))?;
    let targets = targets(&dir)?;
    let res = sshd.push_all(flags, src, &targets);
    let server = sshd.stop();
    let (client, wall, sent) = res?;
    for t in &targets {
        if listing(t) != want || tree_hash(t)? != hash {
            bail!("rsync over SSH: {} differs from the source", t.display());
        }
    }
    Ok(Row {
        workload,
        system: system.into(),
        receivers: RECEIVERS,
        value: wall.as_secs_f64(),
        unit: "s",
        detail: format!(
            "{} MB/s per receiver; sshd CPU {:.2} s",
            rate(data::total(&want), wall),
            server.cpu_s
        ),
        usage: Some(client.add(server)),
        writer: Some(client),
        bytes: Some(sent.iter().sum()),
        ..Row::default()
    })
}

/// The broker of a floor run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorBroker {
    /// `mqsync broker`: its TLS front and the embedded rumqttd.
    Mqsync,
    Mosquitto,
}

/// The row's system name for `broker`, which the targets table looks for.
pub fn floor_system(broker: FloorBroker) -> &'static str {
    match broker {
        FloorBroker::Mqsync => "MQTT floor, mqsync broker",
        FloorBroker::Mosquitto => "MQTT floor, Mosquitto",
    }
}

/// The bulk workload's bytes (read into memory first) as ~1 MiB QoS 1 messages from one
/// client to two subscribers through `broker`, over mutual TLS with mqsync's
/// certificates.
pub fn floor_run(ctx: &Ctx, broker: FloorBroker, msgs: &[bytes::Bytes]) -> Result<Row> {
    let name = match broker {
        FloorBroker::Mqsync => "floor-mqsync",
        FloorBroker::Mosquitto => "floor-mosquitto",
    };
    let dir = ctx.fresh(name)?;
    let certs = dir.join("certs");
    let names: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
    certs_init(&ctx.mqsync, &certs, &names)?;
    let port = free_port()?;
    let proc = match broker {
        FloorBroker::Mqsync => start_broker(&ctx.mqsync, &certs, port, &dir.join("broker.log"))?,
        FloorBroker::Mosquitto => floor::start_mosquitto(&certs, port, &dir)?,
    };
    let res = floor::run(&certs, port, msgs);
    let broker_usage = proc.stop();
    let r = res?;
    Ok(Row {
        workload: "floor",
        system: floor_system(broker).into(),
        receivers: 2,
        value: r.wall.as_secs_f64(),
        unit: "s",
        detail: format!(
            "{} MB/s per receiver; {} QoS 1 messages of up to {} KiB, at most {} ahead",
            rate(r.bytes, r.wall),
            r.messages,
            floor::MESSAGE_BYTES / 1024,
            floor::WINDOW,
        ),
        usage: Some(r.client.add(broker_usage)),
        writer: Some(r.client),
        bytes: Some(r.bytes),
        broker: Some(broker_usage),
        wire: r.wire,
        ..Row::default()
    })
}
