//! The processes under test: one broker (`mqsync broker` or Debian's Mosquitto) and N
//! `mqsync run` nodes, each behind its own [`Proxy`], with certificates from
//! `mqsync certs init`. Owns starting, killing and pausing them, and notices a process
//! that exits when the nemesis did not kill it (recorded, then restarted, so the
//! campaign goes on and the checker fails at the end).
//!
//! Layout under the campaign directory: `certs/`, `broker.log`, and per node
//! `home/nK/{folder,state,outside}` (the full-disk node's `home/nK` is a tmpfs) with
//! its configuration `nK.toml` and one log per start `logs/nK.S.log`.

use crate::proxy::Proxy;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Embedded,
    Mosquitto,
}

impl BrokerKind {
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Embedded => "embedded",
            BrokerKind::Mosquitto => "mosquitto",
        }
    }
}

/// One `mqsync run` process and what the campaign knows about it.
pub struct Node {
    pub name: String,
    pub home: PathBuf,
    pub folder: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub proxy: Proxy,
    pub child: Option<Child>,
    /// The clock offset the next start gets (MQSYNC_TEST_CLOCK_OFFSET_MS).
    pub clock_offset_ms: i64,
    pub starts: u32,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub kind: BrokerKind,
    pub port: u16,
    pub broker: Option<Child>,
    pub nodes: Vec<Node>,
    /// The tmpfs mounted for the full-disk node, if mounting worked.
    pub tmpfs: Option<PathBuf>,
    /// Processes that exited without the nemesis killing them: what and when.
    pub unexpected_exits: Vec<String>,
    broker_starts: u32,
}

/// Where a child's stdout and stderr go; the child dies with the campaign.
fn command(program: &Path, log: &Path) -> std::io::Result<Command> {
    let out = fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child
    // when the campaign (the thread that forked it: always the main thread) exits, so
    // an interrupted campaign leaves no daemon behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(cmd)
}

fn run_ok(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A free port below the ephemeral range, so an outgoing connection cannot take it
/// between the check and the broker's bind (restarts reuse it).
fn free_port(seed: u64) -> u16 {
    for k in 0..500u64 {
        let port = 20_000 + ((seed.wrapping_mul(7919).wrapping_add(k * 104_729)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    31_999
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Certificates, broker, proxies and configurations; nodes are not started yet.
    /// `full_disk` is the node whose home is mounted as a tmpfs of `tmpfs_mib`.
    pub fn new(
        dir: &Path,
        bin: &Path,
        kind: BrokerKind,
        n: usize,
        seed: u64,
        full_disk: usize,
        tmpfs_mib: u64,
    ) -> Result<Cluster, String> {
        fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        run_ok(
            Command::new(bin)
                .args(["certs", "init", "--out"])
                .arg(dir.join("certs"))
                .args(["--nodes", &names.join(",")]),
        )?;
        // The process id too: two campaigns of one seed started together (one per
        // broker) would otherwise pick the same port, and one's nodes reach the other's
        // broker. The port plays no part in the schedule.
        let port = free_port(seed ^ u64::from(std::process::id()));
        let mut nodes = Vec::new();
        let mut tmpfs = None;
        for (i, name) in names.iter().enumerate() {
            let home = dir.join("home").join(name);
            fs::create_dir_all(&home).map_err(|e| e.to_string())?;
            if i == full_disk {
                match mount_tmpfs(&home, tmpfs_mib) {
                    Ok(()) => tmpfs = Some(home.clone()),
                    Err(e) => eprintln!("campaign: no full-disk faults: {e}"),
                }
            }
            let node = Node {
                name: name.clone(),
                folder: home.join("folder"),
                state: home.join("state"),
                config: dir.join(format!("{name}.toml")),
                home,
                proxy: Proxy::start(port).map_err(|e| format!("proxy: {e}"))?,
                child: None,
                clock_offset_ms: 0,
                starts: 0,
            };
            fs::create_dir_all(&node.folder).map_err(|e| e.to_string())?;
            fs::write(&node.config, config_text(dir, &node)).map_err(|e| e.to_string())?;
            nodes.push(node);
        }
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            kind,
            port,
            broker: None,
            nodes,
            tmpfs,
            unexpected_exits: vec![],
            broker_starts: 0,
        };
        c.start_broker()?;
        Ok(c)
    }

    pub fn start_broker(&mut self) -> Result<(), String> {
        let log = self
            .dir
            .join(format!("logs/broker.{}.log", self.broker_starts));
        self.broker_starts += 1;
        let certs = self.dir.join("certs");
        let child = match self.kind {
            BrokerKind::Embedded => command(&self.bin, &log)
                .and_then(|mut c| {
                    c.arg("broker")
                        .arg("--listen")
                        .arg(format!("127.0.0.1:{}", self.port))
                        .arg("--certs")
                        .arg(&certs)
                        .env("MQSYNC_LOG", "warn")
                        .spawn()
                })
                .map_err(|e| format!("broker: {e}"))?,
            BrokerKind::Mosquitto => {
                let c = certs.display();
                let conf = format!(
                    "user root\nlistener {} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/broker.pem\nkeyfile {c}/broker.key\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous false\nmax_queued_messages 10000\n",
                    self.port
                );
                let path = self.dir.join("mosquitto.conf");
                fs::write(&path, conf).map_err(|e| e.to_string())?;
                command(Path::new(&mosquitto_bin()?), &log)
                    .and_then(|mut c| c.arg("-c").arg(&path).spawn())
                    .map_err(|e| format!("mosquitto: {e}"))?
            }
        };
        self.broker = Some(child);
        let port = self.port;
        if !wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }) {
            return Err(format!(
                "the broker did not listen on {port}: see {}",
                log.display()
            ));
        }
        Ok(())
    }

    pub fn kill_broker(&mut self) {
        if let Some(mut b) = self.broker.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
    }

    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let log = self
            .dir
            .join(format!("logs/{}.{}.log", node.name, node.starts));
        node.starts += 1;
        let child = command(&self.bin, &log)
            .and_then(|mut c| {
                c.arg("run")
                    .arg("--config")
                    .arg(&node.config)
                    .env(
                        "MQSYNC_LOG",
                        std::env::var("MQSYNC_CAMPAIGN_LOG").unwrap_or_else(|_| {
                            "info,rumqttd=warn,rumqttc=warn,notify=warn".into()
                        }),
                    )
                    .env(
                        "MQSYNC_TEST_CLOCK_OFFSET_MS",
                        node.clock_offset_ms.to_string(),
                    )
                    .spawn()
            })
            .map_err(|e| format!("{}: {e}", node.name))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            signal(&c, libc::SIGCONT);
            signal(&c, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pause_node(&mut self, i: usize, pause: bool) {
        if let Some(c) = &self.nodes[i].child {
            signal(c, if pause { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }

    /// Notices processes that exited on their own: recorded and restarted.
    pub fn reap(&mut self, now: &str) {
        for i in 0..self.nodes.len() {
            let exited = match self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(st))) => Some(st.to_string()),
                _ => None,
            };
            if let Some(st) = exited {
                let n = &self.nodes[i];
                self.unexpected_exits.push(format!(
                    "{} exited by itself ({st}) at {now}; log: logs/{}.{}.log",
                    n.name,
                    n.name,
                    n.starts - 1
                ));
                self.nodes[i].child = None;
                let _ = self.start_node(i);
            }
        }
        let exited = match self.broker.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Some(st.to_string()),
            _ => None,
        };
        if let Some(st) = exited {
            self.unexpected_exits.push(format!(
                "the broker exited by itself ({st}) at {now}; log: logs/broker.{}.log",
                self.broker_starts - 1
            ));
            self.broker = None;
            let _ = self.start_broker();
        }
    }

    /// The health document node `i` writes for `mqsync healthcheck`.
    pub fn health(&self, i: usize) -> serde_json::Value {
        fs::read(self.nodes[i].state.join("health/shared.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// `mqsync wait` as node 1 sees the cluster: whether every node reports in sync.
    pub fn mqsync_wait(&self, timeout_s: u64) -> Result<(), String> {
        run_ok(
            Command::new(&self.bin)
                .args(["wait", "--timeout", &timeout_s.to_string(), "--config"])
                .arg(&self.nodes[0].config)
                .env_remove("RUST_BACKTRACE"),
        )
        .map(|_| ())
        // Its reason is the message's last line (the command line comes first).
        .map_err(|e| {
            e.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string()
        })
    }

    /// For a post-mortem of a failed round: every running node's threads, as gdb
    /// prints them, in `logs/nK.stacks.txt` (nothing where gdb is missing).
    pub fn dump_stacks(&self) {
        for n in &self.nodes {
            let Some(c) = &n.child else { continue };
            let out = Command::new("timeout")
                .args(["60", "gdb", "-p", &c.id().to_string(), "-batch", "-ex"])
                .arg("thread apply all bt")
                .stdin(Stdio::null())
                .output();
            if let Ok(out) = out {
                let _ = fs::write(
                    self.dir.join(format!("logs/{}.stacks.txt", n.name)),
                    [out.stdout, out.stderr].concat(),
                );
            }
        }
    }

    /// The text of every log of node `i`, oldest start first.
    pub fn node_logs(&self, i: usize) -> String {
        let n = &self.nodes[i];
        (0..n.starts)
            .filter_map(|k| {
                fs::read_to_string(self.dir.join(format!("logs/{}.{k}.log", n.name))).ok()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet (we hold it).
    unsafe {
        libc::kill(c.id() as i32, sig);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
        self.kill_broker();
        if let Some(t) = self.tmpfs.take() {
            let _ = Command::new("umount").arg("-l").arg(&t).status();
        }
    }
}

fn mount_tmpfs(dir: &Path, mib: u64) -> Result<(), String> {
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir),
    )
    .map(|_| ())
}

fn mosquitto_bin() -> Result<String, String> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .map(str::to_string)
    .ok_or_else(|| "mosquitto is not installed (apt-get install -y mosquitto)".into())
}

/// A node's configuration: its proxy as the broker, a 5 s keep-alive (so a pause or
/// a blackhole of a few seconds outlasts it), and the mass-delete guard off (100 %):
/// a node killed while the workload deletes would otherwise hold those deletions for
/// an operator, which tests/simulation.rs and tests/guard.rs cover.
fn config_text(dir: &Path, n: &Node) -> String {
    let certs = dir.join("certs");
    format!(
        r#"node_id = "{name}"
state_dir = "{state}"

[broker]
url = "mqtts://127.0.0.1:{port}"
ca_file = "{certs}/ca.pem"
cert_file = "{certs}/{name}.pem"
key_file = "{certs}/{name}.key"
keepalive_s = {keepalive}

[security]
group_key_file = "{certs}/group.key"

[[folder]]
id = "shared"
path = "{folder}"
max_delete_percent = 100
"#,
        name = n.name,
        state = n.state.display(),
        port = n.proxy.port,
        certs = certs.display(),
        folder = n.folder.display(),
        keepalive = KEEPALIVE_S,
    )
}

/// The nodes' `broker.keepalive_s`; pauses and blackholes last longer than 1.5 times
/// this, when brokers drop a silent client.
pub const KEEPALIVE_S: u64 = 5;
