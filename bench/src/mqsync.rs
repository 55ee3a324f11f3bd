//! mqsync under test: an `mqsync broker` process and one writer plus N receiver
//! `mqsync run` processes (release build), each with its own folder, state and metrics
//! port, in a fresh directory per workload.

use crate::proc::{Proc, Usage, free_port, wait_for};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    broker: Option<Proc>,
    nodes: Vec<Option<Proc>>,
    metrics: Vec<u16>,
    port: u16,
    /// Folders beside `bench` ([`Cluster::with_folders`]).
    extra: Vec<String>,
}

/// TCP bytes per client connection of the broker, keyed by the client's address:
/// (received by the broker, sent by it and acknowledged).
pub type Wire = BTreeMap<String, (u64, u64)>;

/// Bytes the broker received and sent between two snapshots. A connection opened in
/// between counts from zero; one closed in between is lost (the nodes of a workload
/// stay connected while it runs).
pub fn wire_between(before: &Wire, after: &Wire) -> (u64, u64) {
    after.iter().fold((0, 0), |(i, o), (peer, (a_in, a_out))| {
        let (b_in, b_out) = before.get(peer).copied().unwrap_or_default();
        (
            i + a_in.saturating_sub(b_in),
            o + a_out.saturating_sub(b_out),
        )
    })
}

/// `mqsync certs init`: a CA, the broker's certificate, one per node in `names` and
/// the group key, in `certs`.
pub fn certs_init(bin: &Path, certs: &Path, names: &[String]) -> Result<()> {
    crate::proc::run(
        bin.to_str().context("binary path")?,
        &[
            "certs",
            "init",
            "--out",
            certs.to_str().context("path")?,
            "--nodes",
            &names.join(","),
        ],
    )?;
    Ok(())
}

/// `mqsync broker` on 127.0.0.1:`port` with the certificates of [`certs_init`], once it
/// accepts connections.
pub fn start_broker(bin: &Path, certs: &Path, port: u16, log: &Path) -> Result<Proc> {
    let listen = format!("127.0.0.1:{port}");
    let mut broker = Proc::spawn(
        bin.to_str().context("binary path")?,
        &[
            "broker",
            "--listen",
            &listen,
            "--certs",
            certs.to_str().context("path")?,
        ],
        log,
    )?;
    let mut died = false;
    wait_for(
        "broker",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            died = broker.exited();
            died || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        },
    )?;
    if died {
        let text = fs::read_to_string(log).unwrap_or_default();
        bail!("mqsync broker exited: {}", text.trim());
    }
    Ok(broker)
}

/// The TCP bytes of every client connection of the broker listening on `port`
/// ([`Cluster::broker_wire`]).
pub fn wire_of(port: u16) -> Result<Wire> {
    let filter = format!("( sport = :{port} )");
    let out = std::process::Command::new("ss")
        .args(["-Htin", "state", "established", &filter])
        .output()
        .context("running ss (iproute2)")?;
    if !out.status.success() {
        bail!("ss: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_ss(&String::from_utf8_lossy(&out.stdout))
}

impl Cluster {
    /// Certificates, configurations and a running broker for `1 + receivers` nodes.
    pub fn new(bin: &Path, dir: &Path, receivers: usize) -> Result<Cluster> {
        Cluster::with_folders(bin, dir, receivers, &[])
    }

    /// [`Cluster::new`] with more folders beside `bench` on every node, each with its
    /// own id and directory ([`Cluster::folder_of`]).
    pub fn with_folders(
        bin: &Path,
        dir: &Path,
        receivers: usize,
        extra: &[&str],
    ) -> Result<Cluster> {
        fs::create_dir_all(dir)?;
        let n = 1 + receivers;
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let certs = dir.join("certs");
        certs_init(bin, &certs, &names)?;
        let port = free_port()?;
        let mut metrics = vec![];
        for name in &names {
            let m = free_port()?;
            metrics.push(m);
            let mut text = format!(
                r#"node_id = "{name}"
state_dir = "{state}"
metrics_listen = "127.0.0.1:{m}"

[broker]
url = "mqtts://127.0.0.1:{port}"
ca_file = "{certs}/ca.pem"
cert_file = "{certs}/{name}.pem"
key_file = "{certs}/{name}.key"

[security]
group_key_file = "{certs}/group.key"

[[folder]]
id = "bench"
path = "{folder}"
"#,
                state = dir.join("state").join(name).display(),
                certs = certs.display(),
                folder = dir.join("data").join(name).display(),
            );
            fs::create_dir_all(dir.join("data").join(name))?;
            for id in extra {
                let folder = dir.join("data").join(format!("{name}-{id}"));
                fs::create_dir_all(&folder)?;
                text.push_str(&format!(
                    "\n[[folder]]\nid = \"{id}\"\npath = \"{}\"\n",
                    folder.display()
                ));
            }
            fs::write(dir.join(format!("{name}.toml")), text)?;
        }
        let broker = start_broker(bin, &certs, port, &dir.join("broker.log"))?;
        Ok(Cluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            broker: Some(broker),
            nodes: (0..n).map(|_| None).collect(),
            metrics,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn folder(&self, i: usize) -> PathBuf {
        self.dir.join("data").join(format!("n{}", i + 1))
    }

    /// Node `i`'s directory of the extra folder `id` (see [`Cluster::with_folders`]).
    pub fn folder_of(&self, i: usize, id: &str) -> PathBuf {
        self.dir.join("data").join(format!("n{}-{id}", i + 1))
    }

    pub fn start(&mut self, i: usize) -> Result<()> {
        let name = format!("n{}", i + 1);
        let cfg = self.dir.join(format!("{name}.toml"));
        let p = Proc::spawn(
            self.bin.to_str().context("binary path")?,
            &["run", "--config", cfg.to_str().context("path")?],
            &self.dir.join(format!("{name}.log")),
        )?;
        self.nodes[i] = Some(p);
        Ok(())
    }

    /// The directory `mqsync certs init` wrote (a certificate per node name).
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether node `i` has been started and not stopped.
    pub fn running(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(Option::is_some)
    }

    /// Node `i`'s state directory.
    pub fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.join("state").join(format!("n{}", i + 1))
    }

    /// Node `i`'s log (stdout and stderr of its process, rewritten at each start).
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.log", i + 1))
    }

    /// The status file node `i` keeps for `mqsync healthcheck`.
    pub fn health_file(&self, i: usize) -> PathBuf {
        self.state_dir(i).join("health").join("bench.json")
    }

    /// Waits until node `i` reports itself connected and idle.
    pub fn wait_ready(&mut self, i: usize) -> Result<()> {
        self.wait_ready_within(i, Duration::from_secs(60))
            .map(|_| ())
    }

    /// Waits up to `timeout` until node `i` reports itself connected and idle in every
    /// folder (or a process of the cluster exits); the time waited.
    pub fn wait_ready_within(&mut self, i: usize, timeout: Duration) -> Result<Duration> {
        let health: Vec<PathBuf> = std::iter::once(self.health_file(i))
            .chain(
                self.extra
                    .iter()
                    .map(|id| self.state_dir(i).join("health").join(format!("{id}.json"))),
            )
            .collect();
        let every = Duration::from_millis(20);
        let mut died = None;
        let d = wait_for(
            &format!("mqsync node {} ready", i + 1),
            timeout,
            every,
            || {
                died = self.dead();
                died.is_some()
                    || health.iter().all(|h| {
                        fs::read_to_string(h).is_ok_and(|s| {
                            s.contains("\"connected\":true") && s.contains("\"state\":\"idle\"")
                        })
                    })
            },
        )?;
        if let Some(why) = died {
            bail!("mqsync node {}: {why}", i + 1);
        }
        Ok(d)
    }

    /// Node `i`'s current and peak resident memory in KiB, while it runs.
    pub fn rss_kib(&self, i: usize) -> Option<(u64, u64)> {
        self.nodes[i].as_ref()?.rss_kib()
    }

    /// Stops node `i` alone (SIGTERM) and returns its usage.
    pub fn stop_node(&mut self, i: usize) -> Usage {
        self.nodes[i].take().map(Proc::stop).unwrap_or_default()
    }

    /// The first started process that has ended by itself, with the tail of its log.
    pub fn dead(&mut self) -> Option<String> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(p) = n
                && p.exited()
            {
                let log = self.dir.join(format!("n{}.log", i + 1));
                let text = fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().take(5).collect();
                return Some(format!("node n{} exited: {}", i + 1, tail.join(" | ")));
            }
        }
        self.broker
            .as_mut()
            .is_some_and(Proc::exited)
            .then(|| "the broker exited".to_string())
    }

    /// A counter of node `i` from its Prometheus endpoint, summed over labels.
    pub fn metric(&self, i: usize, name: &str) -> Result<f64> {
        self.metric_where(i, name, "")
    }

    /// A counter of node `i` summed over the series whose labels contain `label` (such
    /// as `kind="request"`; empty: all of them).
    pub fn metric_where(&self, i: usize, name: &str, label: &str) -> Result<f64> {
        let body = self.scrape(i)?;
        Ok(sum_metric(&body, name, label).unwrap_or(0.0))
    }

    /// Node `i`'s whole Prometheus page (`GET /metrics`), to read several counters
    /// from one moment ([`sum_metric`], [`by_label`]).
    pub fn scrape(&self, i: usize) -> Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics[i]))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        if !body.contains("HTTP/1") {
            bail!("no metrics from node {}", i + 1);
        }
        Ok(body)
    }

    /// The broker's wire bytes so far, from the kernel's TCP counters of its client
    /// connections (`ss -tin`: `bytes_received`, `bytes_acked`). These are the TLS
    /// bytes on the wire, framing and encryption included.
    pub fn broker_wire(&self) -> Result<Wire> {
        wire_of(self.port)
    }

    /// The broker's bytes in and out since `before`, if `ss` answered both times.
    pub fn wire_since(&self, before: Option<&Wire>) -> Option<(u64, u64)> {
        let after = self.broker_wire().ok()?;
        Some(wire_between(before?, &after))
    }

    /// Every process's usage so far, while they run (a node not running counts zero),
    /// to split a run into timed steps with [`Stopped::since`].
    pub fn usage_now(&self) -> Stopped {
        let now = |p: &Option<Proc>| p.as_ref().and_then(Proc::usage_now).unwrap_or_default();
        Stopped {
            nodes: self.nodes.iter().map(now).collect(),
            broker: now(&self.broker),
        }
    }

    /// Stops everything; the usage of the writer (node 0), the largest receiver
    /// figures summed, and the broker.
    pub fn stop(mut self) -> Stopped {
        let mut nodes: Vec<Usage> = vec![];
        for n in self.nodes.iter_mut() {
            nodes.push(n.take().map(Proc::stop).unwrap_or_default());
        }
        let broker = self.broker.take().map(Proc::stop).unwrap_or_default();
        Stopped { nodes, broker }
    }
}

/// The sum of the series of `name` in a Prometheus page whose labels contain `label`
/// (empty: all of them); `None` when there is none (a counter that never moved is not
/// exported yet).
pub fn sum_metric(body: &str, name: &str, label: &str) -> Option<f64> {
    let mut sum = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix(name)
            && (rest.starts_with('{') || rest.starts_with(' '))
            && rest.contains(label)
            && let Some(v) = rest.rsplit(' ').next()
            && let Ok(v) = v.parse::<f64>()
        {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

/// The series of `name` summed per value of the label `key` (such as `kind`).
pub fn by_label(body: &str, name: &str, key: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let prefix = format!("{key}=\"");
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) else {
            continue;
        };
        let value = labels
            .0
            .split(',')
            .find_map(|l| l.trim().strip_prefix(&prefix));
        if let (Some(value), Some(Ok(n))) = (
            value.and_then(|v| v.strip_suffix('"')),
            labels.1.rsplit(' ').next().map(str::parse::<f64>),
        ) {
            *out.entry(value.to_string()).or_insert(0.0) += n;
        }
    }
    out
}

/// `ss -Htin` prints a line per connection (`Recv-Q Send-Q local peer`) followed by
/// an indented line of its TCP info.
fn parse_ss(text: &str) -> Result<Wire> {
    let mut wire = Wire::new();
    let mut peer: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            peer = line.split_whitespace().nth(3).map(str::to_string);
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix(':')?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if let Some(p) = peer.take() {
            wire.insert(p, (field("bytes_received"), field("bytes_acked")));
        }
    }
    Ok(wire)
}

#[derive(Debug, Clone)]
pub struct Stopped {
    pub nodes: Vec<Usage>,
    pub broker: Usage,
}

impl Stopped {
    /// All processes of the system together (CPU summed, the largest peak memory).
    pub fn all(&self) -> Usage {
        self.nodes.iter().fold(self.broker, |acc, u| acc.add(*u))
    }

    /// Each process's usage between the snapshot `before` and this one.
    pub fn since(&self, before: &Stopped) -> Stopped {
        let at = |i: usize| before.nodes.get(i).copied().unwrap_or_default();
        Stopped {
            nodes: self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, u)| u.since(at(i)))
                .collect(),
            broker: self.broker.since(before.broker),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ss_output_parses_per_connection() {
        let text = "0 0 127.0.0.1:4000 127.0.0.1:50000\n\t cubic wscale:7,7 bytes_sent:900 bytes_acked:800 bytes_received:1234 segs_out:3\n0 0 127.0.0.1:4000 127.0.0.1:50002\n\t cubic bytes_acked:1 bytes_received:2\n";
        let w = super::parse_ss(text).unwrap();
        assert_eq!(w.get("127.0.0.1:50000"), Some(&(1234, 800)));
        assert_eq!(w.get("127.0.0.1:50002"), Some(&(2, 1)));
        let mut later = w.clone();
        later.insert("127.0.0.1:50000".into(), (2234, 1800));
        later.insert("127.0.0.1:50004".into(), (10, 20));
        assert_eq!(super::wire_between(&w, &later), (1010, 1020));
    }

    #[test]
    fn metrics_sum_and_split_by_label() {
        let body = "HTTP/1.1 200 OK\r\n\r\n# TYPE mqsync_messages_sent_total counter\nmqsync_messages_sent_total{folder=\"bench\",kind=\"request\"} 3\nmqsync_messages_sent_total{folder=\"bench\",kind=\"chunks\"} 5\nmqsync_messages_sent_total_other 9\nmqsync_bytes_received_total{folder=\"bench\"} 1200\n";
        assert_eq!(
            super::sum_metric(body, "mqsync_messages_sent_total", ""),
            Some(8.0)
        );
        assert_eq!(
            super::sum_metric(body, "mqsync_messages_sent_total", "kind=\"request\""),
            Some(3.0)
        );
        assert_eq!(super::sum_metric(body, "mqsync_files", ""), None);
        let kinds = super::by_label(body, "mqsync_messages_sent_total", "kind");
        assert_eq!(kinds.get("chunks"), Some(&5.0));
        assert_eq!(kinds.len(), 2);
        assert_eq!(
            super::by_label(body, "mqsync_bytes_received_total", "kind").len(),
            0
        );
    }
}
