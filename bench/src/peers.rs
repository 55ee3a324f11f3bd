//! The peers mqsync is measured against, from Debian's packages: an rsync daemon on
//! 127.0.0.1 fed by `rsync -a`/`-az`, and lsyncd watching a folder and running rsync
//! into local targets at a given delay; and Syncthing nodes on 127.0.0.1.

use crate::proc::{Proc, Usage, free_port, wait_for};
use anyhow::{Context, Result, bail};
use std::fs;
use std::io::{Read, Write};
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

/// The bytes the rsync client sent, from the output of `--stats`.
pub fn stats_sent(out: &str) -> Result<u64> {
    out.lines()
        .find_map(|l| l.strip_prefix("Total bytes sent:"))
        .map(|v| v.trim().replace(',', ""))
        .and_then(|v| v.parse().ok())
        .context("rsync --stats: no 'Total bytes sent'")
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
    pub fn push(&self, flags: &[&str], src: &Path, target: &str) -> Result<(Usage, Duration, u64)> {
        let src = format!("{}/", src.display());
        let url = self.url(target);
        let mut args = flags.to_vec();
        args.extend(["--stats", &src, &url]);
        let (u, wall, out) = crate::proc::run("rsync", &args)?;
        Ok((u, wall, stats_sent(&out)?))
    }

    /// The daemon's usage so far, the connections it has served included, to split a
    /// run into timed steps with [`Usage::since`]. A connection's process counts once
    /// the daemon has reaped it, which can lag the client's exit: up to 5 s are given
    /// for the daemon to have no child left.
    pub fn usage_now(&self) -> Usage {
        let Some(p) = &self.proc else {
            return Usage::default();
        };
        let children = |pid: libc::pid_t| {
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
        };
        let _ = wait_for(
            "rsync daemon idle",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || p.pid().is_none_or(|pid| children(pid).trim().is_empty()),
        );
        p.usage_now().unwrap_or_default()
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

/// Syncthing nodes on 127.0.0.1 sharing one folder `bench`: each with its own home
/// (keys, config, database), static `tcp://127.0.0.1:PORT` addresses for the others,
/// no discovery, relays, NAT traversal, usage reporting, upgrades or browser, and a
/// REST API on a loopback port with an API key. The folder's watcher keeps its default
/// delay unless one is given.
pub struct Syncthing {
    dir: PathBuf,
    procs: Vec<Option<Proc>>,
    gui: Vec<u16>,
    apikey: String,
}

impl Syncthing {
    pub fn new(dir: &Path, nodes: usize, watcher_delay_s: Option<u32>) -> Result<Syncthing> {
        let mut ids = vec![];
        for i in 0..nodes {
            let home = dir.join(format!("st{}", i + 1));
            let out = std::process::Command::new("syncthing")
                .args(["generate", "--no-default-folder", "--skip-port-probing"])
                .arg(format!("--home={}", home.display()))
                .output()
                .context("running syncthing generate")?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let id = text
                .lines()
                .find_map(|l| Some(l.split("Device ID:").nth(1)?.trim().to_string()))
                .with_context(|| format!("syncthing generate: no device ID in {text:?}"))?;
            ids.push(id);
        }
        let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<Result<_>>()?;
        let gui: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<Result<_>>()?;
        let apikey = "mqsync-bench-syncthing-key".to_string();
        for (i, &gui) in gui.iter().enumerate() {
            let folder = dir.join("data").join(format!("n{}", i + 1));
            // The folder marker Syncthing insists on before it syncs a folder.
            fs::create_dir_all(folder.join(".stfolder"))?;
            let path = dir.join(format!("st{}", i + 1)).join("config.xml");
            // Syncthing gives an element missing from config.xml its zero value, not
            // its default: the generated file (every default spelled out) is edited.
            let generated = fs::read_to_string(&path)?;
            let x = syncthing_config(
                &generated,
                &SyncthingNode {
                    folder: &folder,
                    ids: &ids,
                    ports: &ports,
                    me: i,
                    gui,
                    apikey: &apikey,
                    watcher_delay_s,
                },
            )?;
            fs::write(&path, x)?;
        }
        Ok(Syncthing {
            dir: dir.to_path_buf(),
            procs: (0..nodes).map(|_| None).collect(),
            gui,
            apikey,
        })
    }

    pub fn folder(&self, i: usize) -> PathBuf {
        self.dir.join("data").join(format!("n{}", i + 1))
    }

    pub fn start(&mut self, i: usize) -> Result<()> {
        let home = format!("--home={}", self.dir.join(format!("st{}", i + 1)).display());
        // STMONITORED: no monitor process that restarts Syncthing; the measured (and
        // stopped) process is Syncthing itself, never an orphaned child.
        let p = Proc::spawn_env(
            "syncthing",
            &[
                "serve",
                &home,
                "--no-browser",
                "--no-restart",
                "--no-upgrade",
                "--no-default-folder",
                "--logflags=3",
            ],
            &[("STMONITORED", "yes")],
            &self.dir.join(format!("st{}.log", i + 1)),
        )?;
        self.procs[i] = Some(p);
        Ok(())
    }

    /// A GET on node `i`'s REST API: the response body.
    pub fn rest(&self, i: usize, path: &str) -> Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.gui[i]))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(
            format!(
                "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-API-Key: {}\r\n\r\n",
                self.apikey
            )
            .as_bytes(),
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP body")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("syncthing {path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_string())
    }

    /// How many devices node `i` is connected to.
    fn connected(&self, i: usize) -> usize {
        self.rest(i, "/rest/system/connections").map_or(0, |b| {
            b.split_whitespace()
                .collect::<String>()
                .matches("\"connected\":true")
                .count()
        })
    }

    /// Waits until node `i` is connected to `peers` others.
    pub fn wait_connected(&mut self, i: usize, peers: usize) -> Result<Duration> {
        let mut died = None;
        let d = wait_for(
            &format!("syncthing node {} connected to {peers}", i + 1),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                died = self.dead();
                died.is_some() || self.connected(i) >= peers
            },
        )?;
        if let Some(why) = died {
            bail!("{why}");
        }
        Ok(d)
    }

    /// Waits until node `i` has its folder scanned and idle (REST `db/status`).
    pub fn wait_idle(&mut self, i: usize) -> Result<()> {
        let mut died = None;
        wait_for(
            &format!("syncthing node {} idle", i + 1),
            Duration::from_secs(300),
            Duration::from_millis(100),
            || {
                died = self.dead();
                died.is_some()
                    || self.rest(i, "/rest/db/status?folder=bench").is_ok_and(|b| {
                        b.split_whitespace()
                            .collect::<String>()
                            .contains("\"state\":\"idle\"")
                    })
            },
        )?;
        if let Some(why) = died {
            bail!("{why}");
        }
        Ok(())
    }

    /// Bytes node `i` has sent to all its peers (REST `system/connections`, total).
    pub fn bytes_out(&self, i: usize) -> Result<u64> {
        let body = self
            .rest(i, "/rest/system/connections")?
            .split_whitespace()
            .collect::<String>();
        let total = body.split("\"total\":").nth(1).context("no total")?;
        let v = total
            .split("\"outBytesTotal\":")
            .nth(1)
            .context("no outBytesTotal")?;
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        Ok(digits.parse()?)
    }

    /// The first started node that has ended by itself, with the tail of its log.
    pub fn dead(&mut self) -> Option<String> {
        for (i, p) in self.procs.iter_mut().enumerate() {
            if let Some(p) = p
                && p.exited()
            {
                let log = self.dir.join(format!("st{}.log", i + 1));
                let text = fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
                return Some(format!("syncthing node n{} exited: {tail}", i + 1));
            }
        }
        None
    }

    /// Every node's usage so far, in node order (a node not running counts zero), to
    /// split a run into timed steps with [`Usage::since`].
    pub fn usage_now(&self) -> Vec<Usage> {
        self.procs
            .iter()
            .map(|p| p.as_ref().and_then(Proc::usage_now).unwrap_or_default())
            .collect()
    }

    /// Stops every node; their usages, in node order.
    pub fn stop(mut self) -> Vec<Usage> {
        self.procs
            .iter_mut()
            .map(|p| p.take().map(Proc::stop).unwrap_or_default())
            .collect()
    }
}

struct SyncthingNode<'a> {
    folder: &'a Path,
    ids: &'a [String],
    ports: &'a [u16],
    me: usize,
    gui: u16,
    apikey: &'a str,
    watcher_delay_s: Option<u32>,
}

/// Replaces the one `from` in `text` with `to`, or fails (the generated config of
/// another Syncthing version may spell things differently).
fn swap(text: &str, from: &str, to: &str) -> Result<String> {
    if text.matches(from).count() != 1 {
        bail!("syncthing config.xml: expected one {from:?}");
    }
    Ok(text.replacen(from, to, 1))
}

/// The text between `start` (included) and the first `end` after it (included).
fn element<'a>(text: &'a str, start: &str, end: &str) -> Result<&'a str> {
    let a = text
        .find(start)
        .with_context(|| format!("syncthing config.xml: no {start:?}"))?;
    let from = a + start.len();
    let b = text[from..]
        .find(end)
        .with_context(|| format!("syncthing config.xml: no {end:?} after {start:?}"))?;
    Ok(&text[a..from + b + end.len()])
}

/// A node's config.xml from the one `syncthing generate` wrote: the shared folder and
/// every device built from the `<defaults>` templates, static loopback addresses, and
/// everything that reaches out (discovery, relays, NAT, usage and crash reports,
/// upgrades, the browser) off. Low priority (Syncthing's default) is off too, so it
/// competes for the CPU on the same terms as the others.
fn syncthing_config(generated: &str, n: &SyncthingNode) -> Result<String> {
    let mut x = generated.to_string();
    for (from, to) in [
        (
            "<globalAnnounceEnabled>true<",
            "<globalAnnounceEnabled>false<",
        ),
        (
            "<localAnnounceEnabled>true<",
            "<localAnnounceEnabled>false<",
        ),
        ("<relaysEnabled>true<", "<relaysEnabled>false<"),
        ("<natEnabled>true<", "<natEnabled>false<"),
        ("<startBrowser>true<", "<startBrowser>false<"),
        ("<urAccepted>0<", "<urAccepted>-1<"),
        ("<autoUpgradeIntervalH>12<", "<autoUpgradeIntervalH>0<"),
        (
            "<crashReportingEnabled>true<",
            "<crashReportingEnabled>false<",
        ),
        ("<setLowPriority>true<", "<setLowPriority>false<"),
    ] {
        x = swap(&x, from, to)?;
    }
    x = swap(
        &x,
        "<listenAddress>default</listenAddress>",
        &format!(
            "<listenAddress>tcp://127.0.0.1:{}</listenAddress>",
            n.ports[n.me]
        ),
    )?;
    let gui = element(&x, "<gui ", "</gui>")?.to_string();
    let addr = element(&gui, "<address>", "</address>")?;
    let key = element(&gui, "<apikey>", "</apikey>")?;
    let new_gui = gui
        .replace(addr, &format!("<address>127.0.0.1:{}</address>", n.gui))
        .replace(key, &format!("<apikey>{}</apikey>", n.apikey));
    x = swap(&x, &gui, &new_gui)?;

    let defaults = element(&x, "<defaults>", "</defaults>")?.to_string();
    let folder_t = element(&defaults, "<folder ", "</folder>")?;
    let own = element(folder_t, "<device ", "</device>")?;
    let mut folder = folder_t.replace(own, "@DEVICES@");
    folder = swap(
        &folder,
        "id=\"\" label=\"\" path=\"~\"",
        &format!(
            "id=\"bench\" label=\"bench\" path=\"{}\"",
            n.folder.display()
        ),
    )?;
    folder = swap(
        &folder,
        "fsWatcherEnabled=\"false\"",
        "fsWatcherEnabled=\"true\"",
    )
    .or_else(|_| {
        swap(
            &folder,
            "fsWatcherEnabled=\"true\"",
            "fsWatcherEnabled=\"true\"",
        )
    })?;
    if let Some(d) = n.watcher_delay_s {
        let at = element(&folder, "fsWatcherDelayS=\"", "\"")?.to_string();
        folder = swap(&folder, &at, &format!("fsWatcherDelayS=\"{d}\""))?;
    }
    let own_id = element(own, "id=\"", "\"")?;
    let shared: Vec<String> = n
        .ids
        .iter()
        .map(|id| own.replace(own_id, &format!("id=\"{id}\"")))
        .collect();
    folder = folder.replace("@DEVICES@", &shared.join("\n            "));

    let device_t = element(
        &defaults[defaults.find("</folder>").unwrap_or(0)..],
        "<device ",
        "</device>",
    )?;
    let mut devices = String::new();
    for (j, id) in n.ids.iter().enumerate() {
        let d = swap(
            device_t,
            "id=\"\"",
            &format!("id=\"{id}\" name=\"n{}\"", j + 1),
        )?;
        let d = swap(
            &d,
            "<address>dynamic</address>",
            &format!("<address>tcp://127.0.0.1:{}</address>", n.ports[j]),
        )?;
        devices.push_str(&format!("    {d}\n"));
    }
    // The device of this node as generated is replaced by the list of all of them.
    let mine = element(&x, "<device ", "</device>")?.to_string();
    x = swap(
        &x,
        &mine,
        &format!("{}\n    {folder}\n", devices.trim_start().trim_end()),
    )?;
    Ok(x)
}
