//! The peers mqsync is measured against, from Debian's packages: an rsync daemon on
//! 127.0.0.1 fed by `rsync -a`/`-az`, and lsyncd watching a folder and running rsync
//! into local targets at a given delay.

use crate::proc::{Proc, Usage, free_port, wait_for};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Installs the Debian packages that are missing (root only; otherwise says what to
/// install).
pub fn ensure_installed(pkgs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    let ok = std::process::Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success())
        || (std::process::Command::new("apt-get")
            .args(["update", "-q"])
            .status()
            .is_ok_and(|s| s.success())
            && std::process::Command::new("apt-get")
                .args(["install", "-y", "-q"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success()));
    if !ok {
        bail!(
            "cannot install {}: install them and run again",
            missing.join(" ")
        );
    }
    Ok(())
}

pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

/// An rsync daemon with one writable module `m` rooted at `dir/targets`.
pub struct RsyncDaemon {
    proc: Option<Proc>,
    pub port: u16,
    pub root: PathBuf,
}

impl RsyncDaemon {
    pub fn start(dir: &Path) -> Result<RsyncDaemon> {
        fs::create_dir_all(dir.join("targets"))?;
        let port = free_port()?;
        let conf = dir.join("rsyncd.conf");
        fs::write(
            &conf,
            format!(
                "pid file = {d}/rsyncd.pid\nuse chroot = false\nlog file = {d}/rsyncd.log\n\
                 [m]\npath = {d}/targets\nread only = false\nuid = 0\ngid = 0\n",
                d = dir.display()
            ),
        )?;
        let port_s = port.to_string();
        let proc = Proc::spawn(
            "rsync",
            &[
                "--daemon",
                "--no-detach",
                "--address=127.0.0.1",
                &format!("--port={port_s}"),
                &format!("--config={}", conf.display()),
            ],
            &dir.join("rsyncd.out"),
        )?;
        wait_for(
            "rsync daemon",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        )?;
        Ok(RsyncDaemon {
            proc: Some(proc),
            port,
            root: dir.join("targets"),
        })
    }

    pub fn url(&self, target: &str) -> String {
        format!("rsync://127.0.0.1:{}/m/{target}/", self.port)
    }

    /// `rsync FLAGS src/ rsync://…/m/target/`: client usage, wall time, and the bytes
    /// the client sent (from `--stats`).
    pub fn push(&self, flags: &str, src: &Path, target: &str) -> Result<(Usage, Duration, u64)> {
        let src = format!("{}/", src.display());
        let (u, wall, out) =
            crate::proc::run("rsync", &[flags, "--stats", &src, &self.url(target)])?;
        let sent = out
            .lines()
            .find_map(|l| l.strip_prefix("Total bytes sent:"))
            .map(|v| v.trim().replace(',', ""))
            .and_then(|v| v.parse().ok())
            .context("rsync --stats: no 'Total bytes sent'")?;
        Ok((u, wall, sent))
    }

    pub fn stop(mut self) -> Usage {
        self.proc.take().map(Proc::stop).unwrap_or_default()
    }
}

/// lsyncd syncing `source` into each of `targets` with `delay` seconds (its
/// `default.rsync` mode, local targets).
pub struct Lsyncd {
    proc: Option<Proc>,
}

impl Lsyncd {
    pub fn start(dir: &Path, source: &Path, targets: &[PathBuf], delay: u32) -> Result<Lsyncd> {
        fs::create_dir_all(dir)?;
        let mut conf = format!(
            "settings {{ nodaemon = true, insist = true, logfile = \"{d}/lsyncd.log\", \
             statusFile = \"{d}/lsyncd.status\" }}\n",
            d = dir.display()
        );
        for t in targets {
            fs::create_dir_all(t)?;
            conf.push_str(&format!(
                "sync {{ default.rsync, source = \"{}/\", target = \"{}/\", delay = {delay} }}\n",
                source.display(),
                t.display()
            ));
        }
        let path = dir.join("lsyncd.conf.lua");
        fs::write(&path, conf)?;
        let proc = Proc::spawn(
            "lsyncd",
            &[path.to_str().context("path")?],
            &dir.join("lsyncd.out"),
        )?;
        Ok(Lsyncd { proc: Some(proc) })
    }

    pub fn stop(mut self) -> Usage {
        self.proc.take().map(Proc::stop).unwrap_or_default()
    }
}
