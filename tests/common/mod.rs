//! Shared fixtures of the integration tests: real `mqsync` processes (broker and
//! nodes) on 127.0.0.1 with certificates made by `mqsync certs init`, stopped on drop,
//! and helpers to compare trees and poll with deadlines.
#![allow(dead_code)]

pub mod exfat;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mqsync");

/// A child process killed (and reaped) when dropped, on every exit path of a test.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], log: &Path) -> Proc {
        Proc::spawn_program(BIN, args, log)
    }

    pub fn spawn_program(program: &str, args: &[&str], log: &Path) -> Proc {
        let out = fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .env(
                "MQSYNC_LOG",
                "info,mqsync=debug,rumqttd=warn,rumqttc=warn,notify=warn",
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
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

    /// Sends `sig` (SIGSTOP, SIGCONT, …) to the running process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `mqsync ARGS`: whether it succeeded, its stdout and its stderr.
pub fn mqsync_out(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mqsync certs init --out DIR --nodes NODES` (an existing CA in DIR is reused).
pub fn certs_init(dir: &Path, nodes: &str) {
    let out = Command::new(BIN)
        .args([
            "certs",
            "init",
            "--out",
            dir.to_str().unwrap(),
            "--nodes",
            nodes,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "certs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free port below the kernel's ephemeral range (32768 and up): a port from
/// `bind(0)` can be taken by an outgoing connection before the server binds it. Picked
/// at random, as the kernel would, so that tests running side by side rarely try the
/// same one.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let port = rand::random_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Prometheus text a node serves on `port` (empty if it does not answer).
pub fn scrape_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The value of the series `series` (name and labels, as printed) in a scrape.
pub fn metric_value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
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

/// What a synced tree holds, path by path: type, permission bits and content hash
/// (or link target). The marker file is per node and `*.swp` is ignored by the test
/// configuration, so neither is compared.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (rel, p) in walk(root) {
        if rel.ends_with(".swp") {
            continue;
        }
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let mode = md.permissions().mode() & 0o7777;
        let v = if md.file_type().is_symlink() {
            format!(
                "link -> {}",
                fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            )
        } else if md.is_dir() {
            format!("dir {mode:o}")
        } else {
            let mut h = blake3::Hasher::new();
            let mut f = match fs::File::open(&p) {
                Ok(f) => f,
                Err(_) => continue,
            };
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            format!(
                "file {mode:o} {} {} mtime {}",
                md.len(),
                &h.finalize().to_hex()[..16],
                md.mtime()
            )
        };
        out.insert(rel, v);
    }
    out
}

/// Every path below `root` but the marker, relative and full, as the directories list
/// them (their real spelling); symlinks are not followed.
pub fn walk(root: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            if rel == ".mqsync" {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push((rel, p));
        }
    }
    out
}

/// Describes how two snapshots differ (first few paths), for failure messages.
pub fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let mut lines = vec![];
    for (k, v) in a {
        match b.get(k) {
            None => lines.push(format!("only in first: {k} ({v})")),
            Some(w) if w != v => lines.push(format!("differs: {k}: {v} vs {w}")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            lines.push(format!("only in second: {k} ({v})"));
        }
    }
    let n = lines.len();
    lines.truncate(10);
    format!("{n} differences: {}", lines.join("; "))
}

/// Which broker a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// `mqsync broker` (rumqttd) as its own process.
    Embedded,
    /// Mosquitto from Debian with TLS and `require_certificate` (scripts/test installs it).
    Mosquitto,
}

/// The mosquitto binary (Debian installs it in /usr/sbin, often not on PATH).
pub fn mosquitto_bin() -> String {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!(
        "mosquitto is not installed: run scripts/test, which installs it (apt-get install -y mosquitto)"
    );
}

/// A test cluster: certificates, one broker process and node processes.
pub struct Cluster {
    pub kind: BrokerKind,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub broker: Option<Proc>,
    pub nodes: Vec<Option<Proc>>,
    pub names: Vec<String>,
}

impl Cluster {
    /// Makes certificates for `n` nodes (n1..nN) and starts the embedded broker as its
    /// own process.
    pub fn new(n: usize) -> Cluster {
        Cluster::with_broker(n, BrokerKind::Embedded)
    }

    pub fn with_broker(n: usize, kind: BrokerKind) -> Cluster {
        // MQSYNC_TEST_KEEP=1 keeps the directory (logs, trees) for a post-mortem.
        let keep = std::env::var_os("MQSYNC_TEST_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("mqsync-test-")
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        if keep {
            eprintln!("test directory kept: {}", dir.path().display());
        }
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let certs = dir.path().join("certs");
        certs_init(&certs, &names.join(","));
        let mut c = Cluster {
            kind,
            port: free_port(),
            dir,
            broker: None,
            nodes: (0..n).map(|_| None).collect(),
            names,
        };
        c.start_broker();
        c
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn folder(&self, i: usize) -> PathBuf {
        self.path(&format!("data/{}", self.names[i]))
    }

    pub fn start_broker(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let certs = self.path("certs");
        let p = match self.kind {
            BrokerKind::Embedded => Proc::spawn(
                &[
                    "broker",
                    "--listen",
                    &listen,
                    "--certs",
                    certs.to_str().unwrap(),
                ],
                &self.path("broker.log"),
            ),
            BrokerKind::Mosquitto => self.spawn_mosquitto("broker", self.port, ""),
        };
        self.broker = Some(p);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "broker did not start"
        );
    }

    /// Starts a Mosquitto with TLS and required client certificates on `port`, with
    /// `extra` appended to its configuration (e.g. a bridge).
    pub fn spawn_mosquitto(&self, name: &str, port: u16, extra: &str) -> Proc {
        let c = self.path("certs");
        let c = c.display();
        let conf = format!(
            "user root\nlistener {port} 127.0.0.1\ncafile {c}/ca.pem\ncertfile {c}/broker.pem\nkeyfile {c}/broker.key\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous false\n{extra}"
        );
        let path = self.path(&format!("{name}.conf"));
        fs::write(&path, conf).unwrap();
        let p = Proc::spawn_program(
            &mosquitto_bin(),
            &["-c", path.to_str().unwrap()],
            &self.path(&format!("{name}.log")),
        );
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "mosquitto {name} did not start"
        );
        p
    }

    /// Writes node i's config; `tweak` may edit the TOML text.
    pub fn write_config(&self, i: usize, tweak: impl Fn(String) -> String) -> PathBuf {
        let name = &self.names[i];
        let certs = self.path("certs");
        let text = format!(
            r#"node_id = "{name}"
state_dir = "{state}"

[broker]
url = "mqtts://127.0.0.1:{port}"
ca_file = "{certs}/ca.pem"
cert_file = "{certs}/{name}.pem"
key_file = "{certs}/{name}.key"

[security]
group_key_file = "{certs}/group.key"

[[folder]]
id = "shared"
path = "{folder}"
ignore = ["*.swp"]
"#,
            state = self.path(&format!("state/{name}")).display(),
            port = self.port,
            certs = certs.display(),
            folder = self.folder(i).display(),
        );
        let path = self.path(&format!("{name}.toml"));
        fs::write(&path, tweak(text)).unwrap();
        // `run` refuses a folder whose path does not exist (unless `create = true`).
        fs::create_dir_all(self.folder(i)).unwrap();
        path
    }

    pub fn start_node(&mut self, i: usize) {
        let cfg = self.path(&format!("{}.toml", self.names[i]));
        if !cfg.exists() {
            self.write_config(i, |t| t);
        }
        // One log per start, so a restart keeps the earlier logs.
        let k = (0..1000)
            .find(|k| !self.path(&format!("{}.{k}.log", self.names[i])).exists())
            .unwrap_or(0);
        let log = self.path(&format!("{}.{k}.log", self.names[i]));
        self.nodes[i] = Some(Proc::spawn(
            &["run", "--config", cfg.to_str().unwrap()],
            &log,
        ));
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.kill();
        }
    }

    pub fn kill_broker(&mut self) {
        if let Some(mut b) = self.broker.take() {
            b.kill();
        }
    }

    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            p.stop();
        }
    }

    /// Waits until every running node's folder equals node `reference`'s and the
    /// reference tree satisfies `check`. Panics with a diff on timeout.
    pub fn converge(
        &self,
        nodes: &[usize],
        timeout: Duration,
        check: impl Fn(&BTreeMap<String, String>) -> bool,
    ) {
        let mut last = String::new();
        let ok = wait_until(timeout, || {
            let snaps: Vec<_> = nodes.iter().map(|&i| snapshot(&self.folder(i))).collect();
            if !check(&snaps[0]) {
                last = format!(
                    "check not yet satisfied on node {}: {} paths",
                    nodes[0],
                    snaps[0].len()
                );
                return false;
            }
            for (k, s) in snaps.iter().enumerate().skip(1) {
                if s != &snaps[0] {
                    last = format!(
                        "node {} vs node {}: {}",
                        nodes[0],
                        nodes[k],
                        diff(&snaps[0], s)
                    );
                    return false;
                }
            }
            true
        });
        if !ok {
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(p) = n {
                    let log = p.log_text();
                    let tail: String = log
                        .lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n");
                    eprintln!("--- log of node {i} (tail) ---\n{tail}");
                }
            }
            panic!("trees did not converge within {timeout:?}: {last}");
        }
    }
}

/// broker/mosquitto.conf with its paths and port pointed at this test's files.
pub fn shipped_mosquitto(c: &Cluster, port: u16) -> Proc {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let conf = fs::read_to_string(repo.join("broker/mosquitto.conf")).unwrap();
    let certs = c.path("certs");
    let conf = conf
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"))
        .replace("/etc/mosquitto/certs", certs.to_str().unwrap())
        .replace(
            "/etc/mosquitto/mqsync.acl",
            repo.join("broker/mosquitto.acl").to_str().unwrap(),
        );
    assert!(conf.contains(&format!("listener {port}")), "{conf}");
    let path = c.path("shipped-mosquitto.conf");
    fs::write(&path, format!("user root\n{conf}")).unwrap();
    let p = Proc::spawn_program(
        &mosquitto_bin(),
        &["-c", path.to_str().unwrap()],
        &c.path("shipped-mosquitto.log"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "mosquitto did not start: {}",
        p.log_text()
    );
    p
}

/// The status document of `node` as `mqsync status --json` with the first node's
/// configuration shows it (`Null` if there is none).
pub fn status_of(c: &Cluster, node: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--config"])
        .arg(c.path(&format!("{}.toml", c.names[0])))
        .output()
        .unwrap();
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    docs.into_iter()
        .find(|d| d["node"] == node)
        .unwrap_or_default()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.iter_mut().flatten() {
            n.kill();
        }
        if let Some(b) = &mut self.broker {
            b.kill();
        }
    }
}

/// An in-test TCP proxy between a node and the broker, to cut and heal its link.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<ProxyState>,
    accept: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    conns: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(ProxyState::default());
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(down) = conn else { continue };
                if st.cut.load(Ordering::SeqCst) {
                    continue; // dropped: the link is down
                }
                let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let pairs = [
                    (down.try_clone(), up.try_clone()),
                    (up.try_clone(), down.try_clone()),
                ];
                if let Ok(mut conns) = st.conns.lock() {
                    conns.extend([down.try_clone(), up.try_clone()].into_iter().flatten());
                }
                for (r, w) in pairs {
                    if let (Ok(mut r), Ok(mut w)) = (r, w) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut r, &mut w);
                            let _ = w.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Proxy {
            port,
            state,
            accept: Some(accept),
        }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut conns) = self.state.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    pub fn heal(&self) {
        self.state
            .cut
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Docker volume plugin API (tests/volumes.rs, tests/security.rs).

/// One HTTP/1.1 exchange on a unix socket: `raw` is sent as is.
pub fn plugin_exchange(sock: &Path, raw: &[u8]) -> (u16, serde_json::Value) {
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body:?}: {e}"));
    (status, json)
}

/// A plugin API call as the engine makes it.
pub fn plugin_call(sock: &Path, endpoint: &str, body: &str) -> (u16, serde_json::Value) {
    let raw = format!(
        "POST /{endpoint} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    plugin_exchange(sock, raw.as_bytes())
}

/// Publishes `msgs` as a rogue client: n3's broker certificate, not the group's key.
/// Returns once the broker has acknowledged them (a loaded machine may take longer
/// than any fixed sleep to flush them).
pub fn rogue_publish(c: &Cluster, msgs: &[(&str, Vec<u8>)], retain: bool) {
    let certs = c.path("certs");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = mqsync::transport::tls::client_config(
            &certs.join("ca.pem"),
            Some(&certs.join("n3.pem")),
            Some(&certs.join("n3.key")),
        )
        .unwrap();
        let mut opts = rumqttc::MqttOptions::new("rogue", "127.0.0.1", c.port);
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(tls)),
        ));
        opts.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 10);
        let (acked, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let poll = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        let _ = acked.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for (topic, payload) in msgs {
            client
                .publish(*topic, rumqttc::QoS::AtLeastOnce, retain, payload.clone())
                .await
                .unwrap();
        }
        for _ in msgs {
            let _ = tokio::time::timeout(Duration::from_secs(30), acks.recv()).await;
        }
        poll.abort();
    });
}
