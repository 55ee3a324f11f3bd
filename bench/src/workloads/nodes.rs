//! The `nodes` workload (issue 25): repair amplification with many mqsync node
//! processes (12 by default) through the embedded broker. Four scenarios:
//!
//! 1. every node starts at once, a writer on a folder of 500 files (2 MB), the others
//!    empty, until every receiver holds the folder;
//! 2. the same with 20,000 files (27 MB; `--nodes-files`, 5,000 with `--quick`);
//! 3. one node restarts after missing 6 MB (two ninths of scenario 2's folder) of new
//!    files written on the writer while it was stopped;
//! 4. one empty node (one more node id) joins the others, which hold scenario 2's
//!    folder, in place of one of them.
//!
//! Scenarios 2, 4 and 3 run in that order in one cluster. For each: the bytes and
//! messages each receiver got (its `mqsync_bytes_received_total` and
//! `mqsync_messages_received_total`), per byte of the folder, or of what it lacked;
//! split by message kind from a passive observer on the data topics ([`Observer`]:
//! mqsync's received counters carry no kind); the messages every node sent by kind
//! (`mqsync_messages_sent_total`); the time until the receivers held the folder; and
//! the broker's TCP bytes out (the observer's own connection left out).

mod table;

pub use table::markdown;

use super::{Ctx, Row, poll_every};
use crate::data::{self, listing, tree_hash};
use crate::mqsync::{Cluster, Stopped, Wire, by_label, sum_metric, wire_between};
use crate::observer::{Observer, Seen};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The workload's sizes: node processes running at once, and scenario 2's files.
#[derive(Debug, Clone, Copy)]
pub struct NodesOpts {
    pub nodes: usize,
    pub files: usize,
}

/// Scenario 1's folder: 500 files of about 4,000 bytes (2 MB).
const SMALL_FILES: usize = 500;
const SMALL_MEAN: usize = 4_000;
/// Scenario 2's files are about 1,350 bytes (20,000 make 27 MB, as in the issue).
const LARGE_MEAN: usize = 1_350;
/// Scenario 3's new files: this share of scenario 2's (6 MB of 27 MB).
const RESTART_SHARE: (usize, usize) = (2, 9);
/// Seeds of the three trees.
const SEEDS: [u64; 3] = [25, 26, 27];

/// How long the receivers may take to hold the folder.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long the nodes together may take to report themselves idle once the receivers
/// hold the folder.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// The counters are read once no node has received anything for this long …
const QUIET: Duration = Duration::from_secs(3);
/// … or after this long, whichever comes first (periodic digests never stop).
const QUIET_TIMEOUT: Duration = Duration::from_secs(120);

/// One node's counters at one moment (zero for a node not running).
#[derive(Debug, Clone, Default)]
struct Counters {
    received_bytes: f64,
    received_messages: f64,
    sent_bytes: f64,
    /// `mqsync_messages_sent_total` by its `kind` label.
    sent: BTreeMap<String, f64>,
}

impl Counters {
    fn of(c: &Cluster, i: usize) -> Result<Counters> {
        if !c.running(i) {
            return Ok(Counters::default());
        }
        let body = c.scrape(i)?;
        let get = |name| sum_metric(&body, name, "").unwrap_or(0.0);
        Ok(Counters {
            received_bytes: get("mqsync_bytes_received_total"),
            received_messages: get("mqsync_messages_received_total"),
            sent_bytes: get("mqsync_bytes_sent_total"),
            sent: by_label(&body, "mqsync_messages_sent_total", "kind"),
        })
    }

    fn all(c: &Cluster, nodes: usize) -> Result<Vec<Counters>> {
        (0..nodes).map(|i| Counters::of(c, i)).collect()
    }

    fn sent_of(&self, kind: &str) -> f64 {
        self.sent.get(kind).copied().unwrap_or(0.0)
    }
}

/// What one receiver got during a scenario.
#[derive(Debug, Clone, Default)]
pub struct Receiver {
    pub bytes: f64,
    pub messages: f64,
    /// Request messages it sent.
    pub requests: f64,
    /// From the observer: (messages, bytes) by kind name, sent by the other nodes.
    pub kinds: BTreeMap<String, (u64, u64)>,
}

/// One scenario's results.
#[derive(Debug, Clone)]
pub struct Measured {
    pub scenario: String,
    /// The folder: files and bytes.
    pub folder: (usize, u64),
    /// What each receiver lacked at the start: files (each one chunk: all are under
    /// 64 KiB) and bytes, the denominator of the amplification.
    pub lacked: (usize, u64),
    pub receivers: Vec<Receiver>,
    /// Until every receiver listed the folder, and until the counters were still.
    pub converged: Duration,
    pub settled: Duration,
    /// Messages every node sent, by kind (from the metrics).
    pub sent: BTreeMap<String, f64>,
    /// Bytes every node published, and the writer (node 1) alone.
    pub sent_bytes: f64,
    pub writer_bytes: f64,
    /// The broker's TCP bytes in and out, the observer's connection left out.
    pub wire: Option<(u64, u64)>,
    /// Bytes the observer saw from the nodes over the bytes the receivers' own counters
    /// counted from the others (about 1 when it missed nothing).
    pub coverage: f64,
    /// Issue 25's goal for the largest receiver's amplification, where it has one.
    pub goal: Option<f64>,
    pub usage: Stopped,
}

impl Measured {
    /// Receivers' bytes per byte lacked, sorted.
    pub fn ratios(&self) -> Vec<f64> {
        let mut r: Vec<f64> = self
            .receivers
            .iter()
            .map(|x| x.bytes / self.lacked.1.max(1) as f64)
            .collect();
        r.sort_by(f64::total_cmp);
        r
    }

    /// The results table's row.
    pub fn row(&self) -> Row {
        let r = self.ratios();
        let requests: f64 = self.receivers.iter().map(|x| x.requests).sum();
        Row {
            workload: "nodes",
            system: format!("mqsync, {}", self.scenario),
            receivers: self.receivers.len(),
            value: r.last().copied().unwrap_or(0.0),
            unit: "× max",
            detail: format!(
                "bytes per receiver per byte lacked: median {:.2}×; {} files, {:.1} MB lacked; \
                 converged in {:.1} s; receivers sent {requests:.0} requests",
                median(&r),
                self.lacked.0,
                self.lacked.1 as f64 / 1e6,
                self.converged.as_secs_f64(),
            ),
            usage: Some(self.usage.all()),
            writer: self.usage.nodes.first().copied(),
            bytes: Some(self.writer_bytes as u64),
            broker: Some(self.usage.broker),
            wire: self.wire,
            p99: None,
        }
    }
}

/// The middle value of sorted values (the lower of the two middle ones).
pub fn median(sorted: &[f64]) -> f64 {
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// A running cluster with its observer, and what a scenario's start looked like.
struct Run {
    c: Cluster,
    obs: Observer,
    /// The observer's connection(s) at the broker, left out of the wire bytes.
    obs_peers: BTreeSet<String>,
    /// Node processes of the workload (`--nodes`); node `nodes` is the joiner of
    /// scenario 4, node `nodes + 1` lends the observer its certificate.
    nodes: usize,
}

/// The counters, usage and wire bytes at a scenario's start.
struct Start {
    at: Instant,
    counters: Vec<Counters>,
    usage: Stopped,
    wire: Option<Wire>,
}

impl Run {
    fn new(ctx: &Ctx, dir: &Path, nodes: usize) -> Result<Run> {
        let c = Cluster::new(&ctx.mqsync, dir, nodes + 1)?;
        let obs = Observer::start(&c.certs(), &format!("n{}", nodes + 2), c.port(), "bench")?;
        // Only the observer is connected yet.
        let obs_peers = c
            .broker_wire()
            .map(|w| w.into_keys().collect())
            .unwrap_or_default();
        Ok(Run {
            c,
            obs,
            obs_peers,
            nodes,
        })
    }

    fn wire(&self) -> Option<Wire> {
        let mut w = self.c.broker_wire().ok()?;
        w.retain(|peer, _| !self.obs_peers.contains(peer));
        Some(w)
    }

    fn start(&self) -> Result<Start> {
        Ok(Start {
            at: Instant::now(),
            counters: Counters::all(&self.c, self.nodes + 1)?,
            usage: self.c.usage_now(),
            wire: self.wire(),
        })
    }

    fn running(&self) -> Vec<usize> {
        (0..=self.nodes).filter(|&i| self.c.running(i)).collect()
    }

    /// Waits until every running node is idle and no node has received anything for
    /// [`QUIET`] (at most [`QUIET_TIMEOUT`]).
    fn settle(&mut self) -> Result<()> {
        let deadline = Instant::now() + IDLE_TIMEOUT;
        for i in self.running() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.c
                .wait_ready_within(i, left.max(Duration::from_secs(1)))?;
        }
        let total = |r: &Run| -> Result<f64> {
            Ok(Counters::all(&r.c, r.nodes + 1)?
                .iter()
                .map(|x| x.received_bytes)
                .sum())
        };
        let begin = Instant::now();
        let mut last = total(self)?;
        let mut still = Instant::now();
        while still.elapsed() < QUIET && begin.elapsed() < QUIET_TIMEOUT {
            std::thread::sleep(Duration::from_millis(250));
            let now = total(self)?;
            if now != last {
                last = now;
                still = Instant::now();
            }
        }
        Ok(())
    }

    /// Waits until every one of `receivers` lists `want`, the time from `from`. One
    /// listing per poll while they catch up (listing 11 trees of 20,000 files costs
    /// the nodes CPU): the first one that does not match yet is listed until it does,
    /// then the next; the bytes are checked at the end.
    fn converge(
        &mut self,
        what: &str,
        receivers: &[usize],
        want: &BTreeMap<String, u64>,
        from: Instant,
    ) -> Result<Duration> {
        let mut left: Vec<usize> = receivers.to_vec();
        loop {
            if let Some(why) = self.c.dead() {
                bail!("{what}: {why}");
            }
            while let Some(&i) = left.first()
                && &listing(&self.c.folder(i)) == want
            {
                left.remove(0);
            }
            if left.is_empty() {
                return Ok(from.elapsed());
            }
            if from.elapsed() > CONVERGE_TIMEOUT {
                let have: Vec<String> = left
                    .iter()
                    .map(|&i| format!("n{}: {}", i + 1, listing(&self.c.folder(i)).len()))
                    .collect();
                bail!(
                    "{what}: not converged within {} s (files of {}: {})",
                    CONVERGE_TIMEOUT.as_secs(),
                    want.len(),
                    have.join(", ")
                );
            }
            std::thread::sleep(poll_every(want.len(), from));
        }
    }

    /// From `start` until the receivers hold `want` and the cluster is still: the
    /// scenario's figures. `lacked`: files and bytes each receiver lacked.
    fn measure(
        &mut self,
        scenario: String,
        start: Start,
        receivers: &[usize],
        src: &Path,
        lacked: (usize, u64),
    ) -> Result<Measured> {
        let want = listing(src);
        let converged = self.converge(&scenario, receivers, &want, start.at)?;
        self.settle()?;
        let settled = start.at.elapsed();
        let end = Instant::now();
        let counters = Counters::all(&self.c, self.nodes + 1)?;
        let usage = self.c.usage_now().since(&start.usage);
        let wire = self
            .wire()
            .zip(start.wire.as_ref())
            .map(|(after, before)| wire_between(before, &after));
        let seen: Vec<Seen> = self
            .obs
            .seen()
            .into_iter()
            .filter(|s| s.at >= start.at && s.at <= end)
            .collect();
        let hash = tree_hash(src)?;
        for &i in receivers {
            if tree_hash(&self.c.folder(i))? != hash {
                bail!("{scenario}: n{} differs from the writer's folder", i + 1);
            }
        }
        let delta = |i: usize, f: &dyn Fn(&Counters) -> f64| {
            f(&counters[i]) - start.counters.get(i).map_or(0.0, f)
        };
        let mut sent = BTreeMap::new();
        for (i, now) in counters.iter().enumerate() {
            for k in now.sent.keys() {
                *sent.entry(k.clone()).or_insert(0.0) += delta(i, &|c| c.sent_of(k));
            }
        }
        let sent_bytes = (0..counters.len())
            .map(|i| delta(i, &|c| c.sent_bytes))
            .sum();
        let mut observed = 0u64;
        let rs: Vec<Receiver> = receivers
            .iter()
            .map(|&i| {
                let mut kinds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
                for s in seen.iter().filter(|s| s.sender != i) {
                    let e = kinds.entry(crate::observer::kind_name(s.kind)).or_default();
                    e.0 += 1;
                    e.1 += s.bytes;
                    observed += s.bytes;
                }
                Receiver {
                    bytes: delta(i, &|c| c.received_bytes),
                    messages: delta(i, &|c| c.received_messages),
                    requests: delta(i, &|c| c.sent_of("request")),
                    kinds,
                }
            })
            .collect();
        let counted: f64 = rs.iter().map(|r| r.bytes).sum();
        let files = want.len();
        Ok(Measured {
            scenario,
            folder: (files, data::total(&want)),
            lacked,
            receivers: rs,
            converged,
            settled,
            sent,
            sent_bytes,
            writer_bytes: delta(0, &|c| c.sent_bytes),
            wire,
            coverage: observed as f64 / counted.max(1.0),
            goal: None,
            usage,
        })
    }

    fn stop(mut self) {
        let _ = self.obs.finish();
        self.c.stop();
    }
}

/// Copies every file of `from` into `to` (written and closed, as a user writes new
/// files; hard links would show the watcher no writes).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for rel in listing(from).keys() {
        let dst = to.join(rel);
        if let Some(p) = dst.parent() {
            fs::create_dir_all(p)?;
        }
        fs::copy(from.join(rel), &dst).with_context(|| format!("copying {rel}"))?;
    }
    Ok(())
}

/// Scenario 1 or 2: the writer's folder linked in, every node started at once.
fn start_together(run: &mut Run, src: &Path, goal: Option<f64>) -> Result<Measured> {
    let want = listing(src);
    data::link_tree(src, &run.c.folder(0))?;
    let start = run.start()?;
    for i in 0..run.nodes {
        run.c.start(i)?;
    }
    let name = format!(
        "{} nodes start together, {} files",
        run.nodes,
        fmt_count(want.len())
    );
    let receivers: Vec<usize> = (1..run.nodes).collect();
    let lacked = (want.len(), data::total(&want));
    let mut m = run.measure(name, start, &receivers, src, lacked)?;
    m.goal = goal;
    Ok(m)
}

/// Scenario 4: the last node of the start stops, and the joiner starts empty.
fn join(run: &mut Run, src: &Path) -> Result<Measured> {
    let want = listing(src);
    run.c.stop_node(run.nodes - 1);
    let start = run.start()?;
    let joiner = run.nodes;
    run.c.start(joiner)?;
    let name = format!("one empty node joins {}", run.nodes - 1);
    let mut m = run.measure(
        name,
        start,
        &[joiner],
        src,
        (want.len(), data::total(&want)),
    )?;
    m.goal = Some(1.2);
    Ok(m)
}

/// Scenario 3: node 1 stops, the writer gets the new files, every other node takes
/// them, and node 1 starts again.
fn restart(run: &mut Run, new: &Path) -> Result<Measured> {
    let added = listing(new);
    run.c.stop_node(1);
    // Its status file says idle from before: gone, so that only its new one counts.
    let _ = fs::remove_file(run.c.health_file(1));
    copy_tree(new, &run.c.folder(0))?;
    let others: Vec<usize> = run.running().into_iter().filter(|&i| i != 0).collect();
    let t = Instant::now();
    run.converge(
        "restart: the others take the new files",
        &others,
        &listing(&run.c.folder(0)),
        t,
    )?;
    run.settle()?;
    let start = run.start()?;
    run.c.start(1)?;
    let name = format!(
        "one node restarts after missing {} files",
        fmt_count(added.len())
    );
    // The writer's folder is now the source of truth: the tree plus the new files.
    let writer = run.c.folder(0);
    let mut m = run.measure(
        name,
        start,
        &[1],
        &writer,
        (added.len(), data::total(&added)),
    )?;
    m.goal = Some(1.2);
    Ok(m)
}

/// `20000` as `20,000`.
pub fn fmt_count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Runs the four scenarios; each one's result (a failed one does not stop the others,
/// except that 3 and 4 need 2's cluster).
pub fn nodes_mqsync(ctx: &Ctx, opts: NodesOpts) -> Vec<(String, Result<Measured>)> {
    let mut out = vec![];
    if opts.nodes < 3 {
        out.push((
            "nodes".into(),
            Err(anyhow::anyhow!("--nodes must be at least 3")),
        ));
        return out;
    }
    let trees = (|| -> Result<[PathBuf; 3]> {
        let root = ctx.work.join("data");
        let restart_files = opts.files * RESTART_SHARE.0 / RESTART_SHARE.1;
        Ok([
            data::generate_nodes(&root, SMALL_FILES, SMALL_MEAN, SEEDS[0])?,
            data::generate_nodes(&root, opts.files, LARGE_MEAN, SEEDS[1])?,
            data::generate_nodes(&root, restart_files.max(1), LARGE_MEAN, SEEDS[2])?,
        ])
    })();
    let dir = trees.and_then(|t| Ok((t, ctx.fresh("nodes")?)));
    let ([small, large, new], dir) = match dir {
        Ok(x) => x,
        Err(e) => {
            out.push(("nodes".into(), Err(e)));
            return out;
        }
    };
    let one = Run::new(ctx, &dir.join("small"), opts.nodes).and_then(|mut run| {
        let m = start_together(&mut run, &small, None);
        run.stop();
        m
    });
    out.push(("nodes: start together, small folder".into(), one));
    let mut run = match Run::new(ctx, &dir.join("large"), opts.nodes) {
        Ok(r) => r,
        Err(e) => {
            out.push(("nodes: start together, large folder".into(), Err(e)));
            return out;
        }
    };
    let two = start_together(&mut run, &large, Some(1.5));
    let ok = two.is_ok();
    out.push(("nodes: start together, large folder".into(), two));
    if ok {
        let four = join(&mut run, &large);
        let ok = four.is_ok();
        let three = if ok {
            restart(&mut run, &new)
        } else {
            Err(anyhow::anyhow!("not run: the join failed"))
        };
        out.push(("nodes: restart".into(), three));
        out.push(("nodes: join".into(), four));
    }
    run.stop();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_and_medians_print_as_the_tables_want() {
        assert_eq!(super::fmt_count(0), "0");
        assert_eq!(super::fmt_count(500), "500");
        assert_eq!(super::fmt_count(4_444), "4,444");
        assert_eq!(super::fmt_count(1_000_000), "1,000,000");
        assert_eq!(super::median(&[]), 0.0);
        assert_eq!(super::median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(super::median(&[1.0, 2.0, 3.0, 9.0]), 2.0);
    }
}
