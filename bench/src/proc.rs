//! Processes under measurement, each started under GNU `/usr/bin/time`, which reports
//! its CPU time and peak resident memory when it ends. (Reading `wait4`'s rusage here
//! would not do: a child's peak memory starts at this process's own, inherited
//! through fork.) Long-running processes are stopped with SIGTERM.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU seconds and peak memory of one process (its reaped children included).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_s: f64,
    pub max_rss_kib: u64,
}

impl Usage {
    pub fn add(self, o: Usage) -> Usage {
        Usage {
            cpu_s: self.cpu_s + o.cpu_s,
            max_rss_kib: self.max_rss_kib.max(o.max_rss_kib),
        }
    }

    /// What was used after `before`, for a step of a longer run: the CPU between two
    /// snapshots, and the peak memory so far (a peak cannot be split).
    pub fn since(self, before: Usage) -> Usage {
        Usage {
            cpu_s: (self.cpu_s - before.cpu_s).max(0.0),
            max_rss_kib: self.max_rss_kib,
        }
    }
}

pub struct Proc {
    /// The `time` process; the measured program is its only child.
    child: Option<Child>,
    report: PathBuf,
}

/// `time`'s report: user and system seconds, then the peak RSS in KiB.
const TIME_FORMAT: &str = "%U %S %M";

fn timed(program: &str, args: &[&str], report: &Path) -> Command {
    let mut c = Command::new("/usr/bin/time");
    c.arg("-f")
        .arg(TIME_FORMAT)
        .arg("-o")
        .arg(report)
        .arg(program)
        .args(args);
    c
}

/// Parses the last line of `time`'s report (the program's own output comes first
/// when it is killed by a signal: "Command terminated by signal 15").
fn read_report(report: &Path) -> Option<Usage> {
    let text = std::fs::read_to_string(report).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut f = line.split_whitespace();
    let user: f64 = f.next()?.parse().ok()?;
    let sys: f64 = f.next()?.parse().ok()?;
    let rss: u64 = f.next()?.parse().ok()?;
    Some(Usage {
        cpu_s: user + sys,
        max_rss_kib: rss,
    })
}

impl Proc {
    pub fn spawn(program: &str, args: &[&str], log: &Path) -> Result<Proc> {
        Proc::spawn_env(program, args, &[], log)
    }

    /// `spawn` with extra environment variables.
    pub fn spawn_env(
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Proc> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let report = log.with_extension("time");
        let child = timed(program, args, &report)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {program} under /usr/bin/time"))?;
        Ok(Proc {
            child: Some(child),
            report,
        })
    }

    /// Whether the program has ended on its own (for example refused to start).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The measured program's process id (the only child of `time`), while it runs.
    pub fn pid(&self) -> Option<libc::pid_t> {
        let time_pid = self.child.as_ref()?.id();
        std::fs::read_to_string(format!("/proc/{time_pid}/task/{time_pid}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<libc::pid_t>().ok())
    }

    /// The program's current and peak resident memory in KiB (`VmRSS`, `VmHWM`).
    pub fn rss_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The program's usage so far, while it runs: user and system CPU of it and its
    /// reaped children (`/proc/PID/stat`, as `time` counts them at the end) and its peak
    /// memory (`VmHWM`). A workload with several timed steps takes their difference.
    pub fn usage_now(&self) -> Option<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name (which may hold spaces), from field 3 (state):
        // utime, stime, cutime, cstime are fields 14 to 17.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..15)?
            .iter()
            .map(|f| f.parse::<u64>().ok())
            .sum::<Option<u64>>()?;
        // SAFETY: sysconf(3) only reads a system constant.
        let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let (_, hwm) = self.rss_kib()?;
        Some(Usage {
            cpu_s: ticks as f64 / per_s.max(1) as f64,
            max_rss_kib: hwm,
        })
    }

    /// Stops the program (SIGTERM, then SIGKILL after 10 s) and returns its usage.
    pub fn stop(mut self) -> Usage {
        let program = self.pid();
        let Some(mut child) = self.child.take() else {
            return Usage::default();
        };
        let Some(pid) = program else {
            let _ = child.wait();
            return read_report(&self.report).unwrap_or_default();
        };
        // SAFETY: kill(2) on the program `time` started, which `time` has not reaped
        // while it is still waiting for it.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        read_report(&self.report).unwrap_or_default()
    }
}

/// A run that fails part-way drops its processes: the program is killed first (killing
/// only `time` would leave it running as an orphan), then `time` is reaped.
impl Drop for Proc {
    fn drop(&mut self) {
        let program = self.pid();
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = program {
                // SAFETY: kill(2) on the child of `time`, not reaped while `time` waits.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(c.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a command to its end and returns its usage, wall time and standard output.
pub fn run(program: &str, args: &[&str]) -> Result<(Usage, Duration, String)> {
    // One report per call: several commands may run at once (one rsync per receiver).
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let report =
        std::env::temp_dir().join(format!("mqsync-bench-{}-{call}.time", std::process::id()));
    let start = Instant::now();
    let out = timed(program, args, &report)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {program} under /usr/bin/time"))?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let usage = read_report(&report).context("no report from /usr/bin/time")?;
    let _ = std::fs::remove_file(&report);
    Ok((
        usage,
        wall,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range. A port the kernel
/// hands out for `bind(0)` comes from the range it also uses for outgoing connections,
/// so between this call and the server's bind, a client connection (the broker's front,
/// a node) could take it: a scale run once failed on exactly that.
pub fn free_port() -> Result<u16> {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `cond` every `every` until it holds; the elapsed time, or an error after
/// `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not done within {timeout:?}");
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process dropped without `stop` (a run that failed) is killed, not orphaned.
    #[test]
    fn drop_kills_the_program_not_only_time() {
        let log =
            std::env::temp_dir().join(format!("mqsync-bench-drop-{}.log", std::process::id()));
        let p = Proc::spawn("sleep", &["60"], &log).expect("spawn sleep");
        let pid = wait_for(
            "sleep started",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || p.pid().is_some(),
        )
        .map(|_| p.pid().expect("pid"))
        .expect("sleep under time");
        drop(p);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sleep {pid} still runs"
        );
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(log.with_extension("time"));
    }
}
