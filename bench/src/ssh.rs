//! The peers over SSH, as lsyncd runs rsync: Debian's sshd on 127.0.0.1 with its own
//! configuration, a throwaway host key and client key in the run directory (nothing in
//! `/etc/ssh` or `~/.ssh` is read or written), `rsync -a -e ssh` pushes to each
//! receiver at once, and lsyncd's `rsyncssh` mode watching a folder.

use crate::proc::{Proc, Usage, free_port, wait_for};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// sshd re-executes itself for every connection, which needs its absolute path.
const SSHD: &str = "/usr/sbin/sshd";

/// An sshd on 127.0.0.1 that lets root in with the run's client key only.
pub struct Sshd {
    proc: Option<Proc>,
    pub port: u16,
    dir: PathBuf,
}

/// Writes a new ed25519 key pair `path` and `path.pub`.
fn keygen(path: &Path, comment: &str) -> Result<()> {
    crate::proc::run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            path.to_str().context("path")?,
        ],
    )?;
    Ok(())
}

impl Sshd {
    pub fn start(dir: &Path) -> Result<Sshd> {
        // The key's path goes unquoted into `rsync -e` and sshd_config.
        if dir.to_string_lossy().contains(char::is_whitespace) {
            bail!(
                "{}: the SSH rows need a run directory without spaces (--work)",
                dir.display()
            );
        }
        fs::create_dir_all(dir)?;
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key, "mqsync-bench host")?;
        keygen(&client_key, "mqsync-bench client")?;
        fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )?;
        let port = free_port()?;
        // Only the client is told the host key: a different sshd on this port fails.
        let host_pub = fs::read_to_string(host_key.with_extension("pub"))?;
        fs::write(
            dir.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )?;
        let d = dir.display();
        // StrictModes off: the run directory's permissions are the bench's business.
        // No PAM: a root login with a key needs none of it, and it keeps the machine's
        // session and limits configuration out of the measurement.
        fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPrintMotd no\n\
                 MaxStartups 100\nLogLevel ERROR\n"
            ),
        )?;
        // Started as root, sshd insists on its privilege separation directory, which
        // Debian's service creates at start (the package installed here never started).
        fs::create_dir_all("/run/sshd").context("creating /run/sshd for sshd")?;
        let conf = dir.join("sshd_config");
        let proc = Proc::spawn(
            SSHD,
            &["-D", "-e", "-f", conf.to_str().context("path")?],
            &dir.join("sshd.log"),
        )?;
        let mut s = Sshd {
            proc: Some(proc),
            port,
            dir: dir.to_path_buf(),
        };
        let mut died = false;
        wait_for(
            "sshd",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                died = s.proc.as_mut().is_none_or(Proc::exited);
                died || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        )?;
        if died {
            let log = fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
            bail!("sshd exited: {}", log.trim());
        }
        // One login before anything is timed: keys, host key and shell all work.
        let mut argv = s.ssh_argv();
        argv.extend(["root@127.0.0.1".to_string(), "true".to_string()]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        crate::proc::run("ssh", &argv).context("ssh to the bench's sshd")?;
        Ok(s)
    }

    /// The `-o` options that confine the client to the run's keys.
    fn options(&self) -> Vec<(String, String)> {
        let d = self.dir.display();
        [
            ("UserKnownHostsFile", format!("{d}/known_hosts")),
            ("GlobalKnownHostsFile", "/dev/null".into()),
            ("StrictHostKeyChecking", "yes".into()),
            ("IdentitiesOnly", "yes".into()),
            ("BatchMode", "yes".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The client's arguments before the destination: port, client key, options.
    fn ssh_argv(&self) -> Vec<String> {
        let mut argv = vec![
            "-p".to_string(),
            self.port.to_string(),
            "-i".to_string(),
            format!("{}/client_key", self.dir.display()),
        ];
        for (k, v) in self.options() {
            argv.extend(["-o".to_string(), format!("{k}={v}")]);
        }
        argv
    }

    /// `ssh …` with the port, the client key and the options, for `rsync -e` (the run
    /// directory's path must hold no space).
    pub fn ssh_command(&self) -> String {
        format!("ssh {}", self.ssh_argv().join(" "))
    }

    /// `rsync FLAGS -e ssh… src/ root@127.0.0.1:target/` to every target at once: the
    /// clients' usage summed, the wall time until the last ended, and the bytes each
    /// client sent (from `--stats`), in target order.
    pub fn push_all(
        &self,
        flags: &[&str],
        src: &Path,
        targets: &[PathBuf],
    ) -> Result<(Usage, Duration, Vec<u64>)> {
        let src = format!("{}/", src.display());
        let rsh = self.ssh_command();
        let start = Instant::now();
        let results: Vec<Result<(Usage, Duration, String)>> = std::thread::scope(|s| {
            let handles: Vec<_> = targets
                .iter()
                .map(|t| {
                    let dest = format!("root@127.0.0.1:{}/", t.display());
                    let mut args = flags.to_vec();
                    args.extend(["--stats", "-e", &rsh]);
                    let (src, args) = (src.clone(), args.clone());
                    s.spawn(move || {
                        let mut args = args;
                        args.extend([src.as_str(), dest.as_str()]);
                        crate::proc::run("rsync", &args)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("rsync thread panicked")))
                .collect()
        });
        let wall = start.elapsed();
        let mut usage = Usage::default();
        let mut sent = vec![];
        for r in results {
            let (u, _, out) = r?;
            usage = usage.add(u);
            sent.push(crate::peers::stats_sent(&out)?);
        }
        Ok((usage, wall, sent))
    }

    /// sshd's usage, its ended sessions included (a session's processes count once
    /// sshd has reaped them: up to 5 s are given for it to have no child left).
    pub fn stop(mut self) -> Usage {
        let Some(p) = self.proc.take() else {
            return Usage::default();
        };
        let children = |pid: libc::pid_t| {
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default()
        };
        let _ = wait_for(
            "sshd idle",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || p.pid().is_none_or(|pid| children(pid).trim().is_empty()),
        );
        p.stop()
    }
}

/// lsyncd in its `rsyncssh` mode: one sync per `(source, target)` pair, each target a
/// directory reached through `sshd` as `root@127.0.0.1`, at `delay` seconds.
pub struct LsyncdSsh {
    proc: Option<Proc>,
}

impl LsyncdSsh {
    pub fn start(
        dir: &Path,
        sshd: &Sshd,
        syncs: &[(PathBuf, PathBuf)],
        delay: u32,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let mut conf = format!(
            "settings {{ nodaemon = true, insist = true, logfile = \"{d}/lsyncd.log\", \
             statusFile = \"{d}/lsyncd.status\" }}\n",
            d = dir.display()
        );
        let options: Vec<String> = sshd
            .options()
            .into_iter()
            .map(|(k, v)| format!("{k} = \"{v}\""))
            .collect();
        for (source, target) in syncs {
            fs::create_dir_all(target)?;
            conf.push_str(&format!(
                "sync {{ default.rsyncssh, source = \"{}/\", host = \"root@127.0.0.1\", \
                 targetdir = \"{}/\", delay = {delay}, rsync = {{ archive = true }}, \
                 ssh = {{ port = {}, identityFile = \"{}/client_key\", options = {{ {} }} }} }}\n",
                source.display(),
                target.display(),
                sshd.port,
                sshd.dir.display(),
                options.join(", ")
            ));
        }
        let path = dir.join("lsyncd.conf.lua");
        fs::write(&path, conf)?;
        let proc = Proc::spawn(
            "lsyncd",
            &[path.to_str().context("path")?],
            &dir.join("lsyncd.out"),
        )?;
        Ok(LsyncdSsh { proc: Some(proc) })
    }

    pub fn stop(mut self) -> Usage {
        self.proc.take().map(Proc::stop).unwrap_or_default()
    }
}
