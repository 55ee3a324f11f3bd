//! The seeded nemesis: per round a schedule of faults (kind, start, duration, target)
//! drawn from its own random stream, started and ended as the round's clock passes,
//! and all ended at once when the round heals.
//!
//! Kinds: SIGKILL and restart of a node or of the broker; a partition of one or two
//! nodes (the proxy cuts their links, or blackholes them); SIGSTOP/SIGCONT for longer
//! than the keep-alive; a full disk (the full-disk node's tmpfs filled by a filler
//! file outside its folder, then freed); clock skew (the node restarted with
//! `MQSYNC_TEST_CLOCK_OFFSET_MS` and its files stamped with the skewed clock); and an
//! inotify queue overflow (the node stopped while 20,000 files are created and
//! deleted in a watched directory, so its kernel queue of 16,384 events overflows).
//! A node has at most one fault at a time; the broker one.

use crate::cluster::{Cluster, KEEPALIVE_S};
use crate::workload::{Ctx, Workload};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    KillNode,
    KillBroker,
    Cut,
    Blackhole,
    Pause,
    DiskFull,
    ClockSkew,
    Overflow,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillNode => "kill node",
            Kind::KillBroker => "kill broker",
            Kind::Cut => "partition (cut)",
            Kind::Blackhole => "partition (blackhole)",
            Kind::Pause => "pause (SIGSTOP)",
            Kind::DiskFull => "full disk",
            Kind::ClockSkew => "clock skew",
            Kind::Overflow => "inotify overflow",
        }
    }
}

const ALL: [Kind; 8] = [
    Kind::KillNode,
    Kind::KillBroker,
    Kind::Cut,
    Kind::Blackhole,
    Kind::Pause,
    Kind::DiskFull,
    Kind::ClockSkew,
    Kind::Overflow,
];

/// Files an overflow burst creates and deletes, and how many it keeps.
const BURST: usize = 20_000;
const BURST_KEEP: usize = 20;

struct Planned {
    at: Instant,
    kind: Kind,
    len: Duration,
}

struct Active {
    kind: Kind,
    nodes: Vec<usize>,
    until: Instant,
    /// Full disk: whether the node's status said so while it lasted.
    reported: bool,
}

/// What one full-disk fault showed.
pub struct DiskFullSeen {
    pub node: String,
    pub reported: bool,
    pub what: String,
}

pub struct Nemesis {
    rng: StdRng,
    plan: Vec<Planned>,
    active: Vec<Active>,
    full_node: Option<usize>,
    pub counts: BTreeMap<Kind, u64>,
    pub disk_full: Vec<DiskFullSeen>,
    /// Overflow bursts made, per node.
    pub bursts: Vec<u32>,
    /// A line per fault started, for the campaign's log.
    pub log: Vec<String>,
    burst_no: u32,
    deck: Vec<Kind>,
}

impl Nemesis {
    pub fn new(rng: StdRng, nodes: usize, full_node: Option<usize>) -> Nemesis {
        Nemesis {
            rng,
            plan: vec![],
            active: vec![],
            full_node,
            counts: BTreeMap::new(),
            disk_full: vec![],
            bursts: vec![0; nodes],
            log: vec![],
            burst_no: 0,
            deck: vec![],
        }
    }

    pub fn any_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// Draws this round's faults: two to four, starting in its first 70 %.
    pub fn plan(&mut self, start: Instant, round: Duration) {
        let n = self.rng.random_range(2..=4);
        for _ in 0..n {
            // Kinds are dealt from a shuffled deck of all of them, so every kind comes
            // up within any eight faults (a short campaign still sees each).
            if self.deck.is_empty() {
                self.deck = ALL.to_vec();
                self.deck.shuffle(&mut self.rng);
            }
            let mut kind = self.deck.pop().unwrap_or(Kind::KillNode);
            if kind == Kind::DiskFull && self.full_node.is_none() {
                kind = Kind::KillNode;
            }
            let secs =
                |r: &mut StdRng, lo: u64, hi: u64| Duration::from_secs(r.random_range(lo..=hi));
            let ka = KEEPALIVE_S * 3 / 2 + 1;
            let len = match kind {
                Kind::KillNode => secs(&mut self.rng, 1, 10),
                Kind::KillBroker => secs(&mut self.rng, 1, 8),
                Kind::Cut => secs(&mut self.rng, 3, 20),
                Kind::Blackhole | Kind::Pause => secs(&mut self.rng, ka, ka + 15),
                Kind::DiskFull => secs(&mut self.rng, 15, 30),
                Kind::ClockSkew => secs(&mut self.rng, 15, 40),
                Kind::Overflow => Duration::ZERO,
            };
            let at = start + round.mul_f64(self.rng.random_range(0.0..0.7));
            self.plan.push(Planned { at, kind, len });
        }
        self.plan.sort_by_key(|p| p.at);
    }

    fn busy(&self, node: usize) -> bool {
        self.active.iter().any(|a| a.nodes.contains(&node))
    }

    /// A node without a fault, or none.
    fn free_node(&mut self, n: usize) -> Option<usize> {
        let free: Vec<usize> = (0..n).filter(|&i| !self.busy(i)).collect();
        (!free.is_empty()).then(|| free[self.rng.random_range(0..free.len())])
    }

    /// Starts what is due, ends what has run its time, and watches a full disk.
    pub fn tick(&mut self, c: &mut Cluster, w: &mut Workload) {
        let now = Instant::now();
        while self.plan.first().is_some_and(|p| p.at <= now) {
            let p = self.plan.remove(0);
            self.start(p, c, w);
        }
        for a in self.active.iter_mut() {
            if a.kind == Kind::DiskFull && !a.reported {
                a.reported = reports_full_disk(&c.health(a.nodes[0]));
            }
        }
        let (done, keep): (Vec<Active>, Vec<Active>) =
            self.active.drain(..).partition(|a| a.until <= now);
        self.active = keep;
        for a in done {
            self.end(a, c, w);
        }
    }

    /// Ends every fault now and drops what was still planned: the round heals.
    pub fn heal_all(&mut self, c: &mut Cluster, w: &mut Workload) {
        self.plan.clear();
        for a in std::mem::take(&mut self.active) {
            self.end(a, c, w);
        }
    }

    fn start(&mut self, p: Planned, c: &mut Cluster, w: &mut Workload) {
        let n = c.nodes.len();
        let until = Instant::now() + p.len;
        let nodes = match p.kind {
            Kind::KillBroker => {
                // Not during a full disk either: the full node must receive something
                // while it is full, to show that it reports it.
                if self
                    .active
                    .iter()
                    .any(|a| matches!(a.kind, Kind::KillBroker | Kind::DiskFull))
                {
                    return;
                }
                c.kill_broker();
                vec![]
            }
            Kind::DiskFull => {
                let Some(i) = self.full_node.filter(|&i| !self.busy(i)) else {
                    return;
                };
                if self.active.iter().any(|a| a.kind == Kind::KillBroker) {
                    return;
                }
                if let Err(e) = fill(&c.nodes[i].home.join("filler")) {
                    self.log.push(format!("full disk: cannot fill: {e}"));
                    return;
                }
                // Something the full node must store while it is full.
                let other = (i + 1) % n;
                let root = c.nodes[other].folder.clone();
                let cx = Ctx {
                    node: other,
                    during_fault: true,
                };
                w.write_for_full_disk(&root, cx);
                vec![i]
            }
            Kind::Cut | Kind::Blackhole => {
                let Some(first) = self.free_node(n) else {
                    return;
                };
                let mut nodes = vec![first];
                if self.rng.random_bool(0.3)
                    && let Some(second) = self.free_node(n).filter(|&s| s != first)
                {
                    nodes.push(second);
                }
                for &i in &nodes {
                    if p.kind == Kind::Cut {
                        c.nodes[i].proxy.cut();
                    } else {
                        c.nodes[i].proxy.blackhole();
                    }
                }
                nodes
            }
            kind => {
                let Some(i) = self.free_node(n) else { return };
                if c.nodes[i].child.is_none() {
                    return;
                }
                match kind {
                    Kind::KillNode => c.kill_node(i),
                    Kind::Pause => c.pause_node(i, true),
                    Kind::ClockSkew => {
                        let mag = self.rng.random_range(30_000..600_000i64);
                        let off = if self.rng.random_bool(0.5) { mag } else { -mag };
                        c.nodes[i].clock_offset_ms = off;
                        w.skew_ms[i] = off;
                        c.stop_node(i);
                        let _ = c.start_node(i);
                        self.log
                            .push(format!("{}: clock offset {off} ms", c.nodes[i].name));
                    }
                    Kind::Overflow => {
                        self.overflow(i, c, w);
                        return;
                    }
                    _ => {}
                }
                vec![i]
            }
        };
        *self.counts.entry(p.kind).or_default() += 1;
        let names: Vec<&str> = nodes.iter().map(|&i| c.nodes[i].name.as_str()).collect();
        self.log.push(format!(
            "{:>7.1} s ({})  {} {} for {:.0} s",
            w.elapsed_ms() as f64 / 1000.0,
            crate::history::clock_now(),
            p.kind.name(),
            names.join(","),
            p.len.as_secs_f64()
        ));
        self.active.push(Active {
            kind: p.kind,
            nodes,
            until,
            reported: false,
        });
    }

    fn end(&mut self, a: Active, c: &mut Cluster, w: &mut Workload) {
        match a.kind {
            Kind::KillNode => {
                let _ = c.start_node(a.nodes[0]);
            }
            Kind::KillBroker => {
                if let Err(e) = c.start_broker() {
                    c.unexpected_exits.push(format!("broker restart: {e}"));
                }
            }
            Kind::Cut | Kind::Blackhole => {
                for &i in &a.nodes {
                    c.nodes[i].proxy.heal();
                }
            }
            Kind::Pause => c.pause_node(a.nodes[0], false),
            Kind::DiskFull => {
                let i = a.nodes[0];
                // The disk stays full until the node has said so (the file it must
                // store may still be on its way), for at most a minute.
                let mut reported = a.reported;
                let deadline = Instant::now() + Duration::from_secs(60);
                while !reported && Instant::now() < deadline {
                    reported = reports_full_disk(&c.health(i));
                    std::thread::sleep(Duration::from_millis(200));
                }
                let _ = fs::remove_file(c.nodes[i].home.join("filler"));
                let h = c.health(i);
                self.disk_full.push(DiskFullSeen {
                    node: c.nodes[i].name.clone(),
                    reported,
                    what: format!(
                        "last_error {:?}, pending {}",
                        h["last_error"].as_str().unwrap_or(""),
                        h["pending"]
                    ),
                });
            }
            Kind::ClockSkew => {
                let i = a.nodes[0];
                c.nodes[i].clock_offset_ms = 0;
                w.skew_ms[i] = 0;
                c.stop_node(i);
                let _ = c.start_node(i);
            }
            Kind::Overflow => {}
        }
    }

    /// A watched directory, then, with the node stopped, 20,000 files created and
    /// deleted in it (20 kept): its inotify queue (16,384 events) overflows, and the
    /// node must find the kept files by rescanning.
    fn overflow(&mut self, i: usize, c: &mut Cluster, w: &mut Workload) {
        self.burst_no += 1;
        let dir = format!("burst{}", self.burst_no);
        let root = c.nodes[i].folder.clone();
        if fs::create_dir_all(root.join(&dir)).is_err() {
            return;
        }
        // Time for the node to put a watch on the new directory.
        std::thread::sleep(Duration::from_millis(1500));
        c.pause_node(i, true);
        let cx = Ctx {
            node: i,
            during_fault: true,
        };
        let made = w.burst(&root, &dir, BURST, BURST_KEEP, cx);
        c.pause_node(i, false);
        self.bursts[i] += 1;
        *self.counts.entry(Kind::Overflow).or_default() += 1;
        self.log.push(format!(
            "{:>7.1} s ({})  inotify overflow {}: {made} files made, {BURST_KEEP} kept",
            w.elapsed_ms() as f64 / 1000.0,
            crate::history::clock_now(),
            c.nodes[i].name
        ));
    }
}

/// Whether a node's health document says its disk is full.
fn reports_full_disk(health: &serde_json::Value) -> bool {
    let err = health["last_error"].as_str().unwrap_or("").to_lowercase();
    err.contains("space") || err.contains("os error 28")
}

/// Writes `path` until its file system is full.
fn fill(path: &std::path::Path) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    let block = vec![0u8; 1 << 20];
    for _ in 0..100_000 {
        if let Err(e) = f.write_all(&block) {
            return if e.raw_os_error() == Some(libc::ENOSPC) {
                Ok(())
            } else {
                Err(e)
            };
        }
    }
    Err(std::io::Error::other("never filled up"))
}
