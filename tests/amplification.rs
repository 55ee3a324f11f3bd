//! Repair traffic among many engines (10 to 50), counted as the wire encodes it: every
//! message a node publishes is encoded with `wire::encode` (compressed, signed) and
//! delivered to every other node, as the broker fans it out. The network is perfect
//! except where a scenario drops a node's traffic; applies succeed at once. Asserted:
//! one answer per need (a summary is answered by one node, not N − 1), repair bytes in
//! proportion to the difference, and a quiet cluster exchanging summaries only.
//!
//! The figures are printed (`cargo nextest run --test amplification --no-capture`) and
//! recorded in docs/SCALING.md.

use mqsync::engine::{ChunkRef, Content, Effect, Engine, Entry, Mode, Region, Summary};
use mqsync::protocol::relpath::RelPath;
use mqsync::protocol::wire::{self, Envelope, Keys, Message};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

#[derive(Clone)]
enum Msg {
    Entries {
        live: bool,
        entries: Vec<Entry>,
    },
    Summary {
        to: String,
        reply: bool,
        round: u32,
        groups: Vec<u64>,
    },
    Descent {
        to: String,
        items: Vec<Region>,
    },
}

impl Msg {
    fn kind(&self) -> &'static str {
        match self {
            Msg::Entries { live: true, .. } => "live manifest",
            Msg::Entries { live: false, .. } => "repair manifest",
            Msg::Summary { .. } => "summary",
            Msg::Descent { .. } => "descent",
        }
    }

    fn wire(&self) -> Message {
        match self.clone() {
            Msg::Entries { live, entries } => Message::Manifest { live, entries },
            Msg::Summary {
                to,
                reply,
                round,
                groups,
            } => Message::Summary {
                to,
                reply,
                round,
                groups,
            },
            Msg::Descent { to, items } => Message::Descent { to, items },
        }
    }
}

#[derive(Default)]
struct Stats {
    /// Per kind: messages published, bytes published.
    published: BTreeMap<&'static str, (usize, usize)>,
    /// Bytes each node received (all kinds but live manifests).
    received: Vec<usize>,
    /// Nodes that published a descent or repair entries.
    answerers: BTreeSet<usize>,
}

impl Stats {
    fn repair_bytes(&self) -> usize {
        self.published
            .iter()
            .filter(|(k, _)| **k != "live manifest")
            .map(|(_, (_, b))| b)
            .sum()
    }

    fn count(&self, kind: &str) -> usize {
        self.published.get(kind).map_or(0, |(n, _)| *n)
    }

    fn table(&self, title: &str) {
        println!("{title}");
        println!("| kind | messages | bytes published |");
        println!("| --- | ---: | ---: |");
        for (k, (n, b)) in &self.published {
            println!("| {k} | {n} | {b} |");
        }
    }
}

struct Cluster {
    engines: Vec<Engine>,
    names: Vec<String>,
    queue: VecDeque<(usize, Msg)>,
    /// Nodes whose traffic is dropped both ways.
    down: BTreeSet<usize>,
    stats: Stats,
    keys: Keys,
    now: Instant,
}

fn file(i: u64) -> Content {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&i.to_le_bytes());
    Content::File {
        size: 1000 + i % 5000,
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000 + i as i64,
        chunks: [ChunkRef {
            hash,
            len: (1000 + i % 5000) as u32,
        }]
        .into(),
    }
}

fn path(i: u64) -> RelPath {
    RelPath::new(format!("data/d{:04}/file-{i:07}.conf", i / 1000)).unwrap()
}

impl Cluster {
    /// `n` nodes; the first `full` hold the same `files` entries, written by node 0.
    fn new(n: usize, files: u64, full: usize) -> Cluster {
        let mut seed = Engine::new("n0", Mode::SendReceive, []);
        seed.set_clock(1_700_000_000_000);
        for i in 0..files {
            seed.handle_local(path(i), file(i));
        }
        while seed.poll_effect().is_some() {}
        let entries: Vec<Entry> = seed.entries().cloned().collect();
        drop(seed);
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let engines = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let held = if i < full { entries.clone() } else { vec![] };
                let mut e = Engine::new(name.clone(), Mode::SendReceive, held)
                    .with_intervals(Duration::from_secs(30), Duration::from_secs(3600));
                e.set_clock(1_700_000_100_000);
                e
            })
            .collect();
        Cluster {
            engines,
            names,
            queue: VecDeque::new(),
            down: BTreeSet::new(),
            stats: Stats {
                received: vec![0; n],
                ..Stats::default()
            },
            keys: Keys::new(vec![[7; 32]]).unwrap(),
            now: Instant::now(),
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(eff) = self.engines[i].poll_effect() {
            let msg = match eff {
                Effect::Announce { entry, .. } => Msg::Entries {
                    live: true,
                    entries: vec![entry],
                },
                Effect::SendEntries(entries) => Msg::Entries {
                    live: false,
                    entries,
                },
                Effect::SendSummary {
                    to,
                    reply,
                    round,
                    groups,
                } => Msg::Summary {
                    to,
                    reply,
                    round,
                    groups,
                },
                Effect::SendDescent { to, items } => Msg::Descent { to, items },
                Effect::Apply { entry, .. } => {
                    self.engines[i].handle_applied(&entry.path, &entry.version, true);
                    continue;
                }
                // No version-1 peer here.
                Effect::SendDigest { .. }
                | Effect::Store(_)
                | Effect::Cancel(_)
                | Effect::Forget(_) => continue,
            };
            self.publish(i, msg);
        }
    }

    fn publish(&mut self, from: usize, msg: Msg) {
        if self.down.contains(&from) {
            return;
        }
        let env = Envelope {
            from: self.names[from].clone(),
            msg: msg.wire(),
        };
        let topic = format!("mqsync/f/v1/{}", self.names[from]);
        let bytes = wire::encode(&env, &topic, &self.keys).unwrap().len();
        let s = self.stats.published.entry(msg.kind()).or_default();
        s.0 += 1;
        s.1 += bytes;
        if matches!(msg, Msg::Descent { .. } | Msg::Entries { live: false, .. }) {
            self.stats.answerers.insert(from);
        }
        if !matches!(msg, Msg::Entries { live: true, .. }) {
            for (j, r) in self.stats.received.iter_mut().enumerate() {
                if j != from && !self.down.contains(&j) {
                    *r += bytes;
                }
            }
        }
        self.queue.push_back((from, msg));
    }

    /// Delivers every message to every other node until nothing is left to send.
    fn run(&mut self) {
        for _ in 0..1_000_000 {
            let Some((from, msg)) = self.queue.pop_front() else {
                return;
            };
            self.now += Duration::from_millis(1);
            let now = self.now;
            let sender = self.names[from].clone();
            for j in 0..self.engines.len() {
                if j == from || self.down.contains(&j) {
                    continue;
                }
                let e = &mut self.engines[j];
                match &msg {
                    Msg::Entries { entries, .. } => {
                        for entry in entries {
                            e.handle_remote(entry.clone());
                        }
                    }
                    Msg::Summary {
                        to,
                        reply,
                        round,
                        groups,
                    } => {
                        let s = Summary {
                            to,
                            reply: *reply,
                            round: *round,
                            groups,
                        };
                        e.handle_summary(&sender, &s, now)
                    }
                    Msg::Descent { to, items } => e.handle_descent(&sender, to, items, now),
                }
                self.drain(j);
            }
        }
        panic!("no quiescence");
    }

    /// Every node publishes its periodic summary once, in turn, as in a real cluster
    /// over one 30 s interval.
    fn round(&mut self) {
        for i in 0..self.engines.len() {
            if !self.down.contains(&i) {
                let now = self.now;
                self.engines[i].send_summary(false, now);
                self.drain(i);
                self.run();
            }
        }
    }

    fn reset_stats(&mut self) {
        self.stats = Stats {
            received: vec![0; self.engines.len()],
            ..Stats::default()
        };
    }

    fn assert_converged(&self) {
        let d0 = self.engines[0].digest();
        for (i, e) in self.engines.iter().enumerate() {
            assert!(e.digest() == d0, "node {i}'s digest differs from node 0's");
            assert_eq!(e.present(), self.engines[0].present(), "node {i}");
        }
    }

    /// Bytes of one manifest holding `entries`, as sent.
    fn manifest_bytes(&self, entries: Vec<Entry>) -> usize {
        let env = Envelope {
            from: "n0".into(),
            msg: Message::Manifest {
                live: false,
                entries,
            },
        };
        wire::encode(&env, "mqsync/f/v1/n0", &self.keys)
            .unwrap()
            .len()
    }
}

/// Every node has heard every other once, as after the first minute of a cluster.
fn introduce(c: &mut Cluster) {
    c.round();
    c.reset_stats();
}

#[test]
fn one_lost_change_among_a_million_files_and_ten_nodes_is_repaired_in_under_64_kib() {
    let files = std::env::var("MQSYNC_AMP_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut c = Cluster::new(10, files, 10);
    introduce(&mut c);
    assert_eq!(c.stats.repair_bytes(), 0);
    // Node 3 edits one file; its live manifest reaches nobody.
    c.down.insert(3);
    c.engines[3].handle_local(path(777), file(10_000_000));
    c.drain(3);
    c.down.clear();
    assert_eq!(c.stats.count("live manifest"), 0);
    c.round();
    c.assert_converged();
    c.stats.table(&format!(
        "one lost change, {files} files, 10 nodes: {} B of repair published, {} B received by the node receiving most",
        c.stats.repair_bytes(),
        c.stats.received.iter().max().unwrap()
    ));
    assert!(
        c.stats.repair_bytes() <= 64 * 1024,
        "repair cost {} B",
        c.stats.repair_bytes()
    );
    // One exchange: node 3 and the one that compared with it.
    assert!(c.stats.answerers.len() <= 2, "{:?}", c.stats.answerers);
    assert!(c.stats.answerers.contains(&3));
}

/// A cluster of `n` nodes through a quiet round, a restart, a join and a cold start.
fn many_nodes(n: usize) {
    let files = 2_000;
    let joiner = n - 1;
    let mut c = Cluster::new(n, files, n - 1);
    // The joiner is not there yet: the others know each other.
    c.down.insert(joiner);
    introduce(&mut c);
    c.down.clear();

    // A quiet cluster: a summary from each node, nothing else.
    c.down.insert(joiner);
    c.round();
    c.down.clear();
    assert_eq!(c.stats.count("summary"), n - 1);
    assert_eq!(c.stats.repair_bytes(), c.stats.published["summary"].1);
    c.reset_stats();

    // The last node joins empty: one node answers it, with about its entries once.
    c.engines[joiner].handle_connected(c.now);
    c.drain(joiner);
    c.run();
    c.assert_converged();
    let lacked = c.manifest_bytes(c.engines[0].entries().cloned().collect());
    let got = c.stats.received[joiner];
    c.stats.table(&format!(
        "{n} nodes, an empty node joins {files} files: it received {got} B for {lacked} B of entries ({:.2}x)",
        got as f64 / lacked as f64
    ));
    assert!(c.stats.answerers.len() <= 2, "{:?}", c.stats.answerers);
    assert!(got as f64 <= 1.2 * lacked as f64, "{got} B for {lacked} B");
    c.reset_stats();

    // Node 5 misses 200 changes, then reconnects.
    c.down.insert(5);
    for k in 0..200u64 {
        let w = (k % 3) as usize;
        c.engines[w].handle_local(path(k * 7), file(20_000_000 + k));
        c.drain(w);
        c.run();
    }
    c.down.clear();
    let missed: Vec<Entry> = (0..200)
        .filter_map(|k| c.engines[0].entry(&path(k * 7)).cloned())
        .collect();
    let lacked = c.manifest_bytes(missed);
    c.reset_stats();
    c.engines[5].handle_connected(c.now);
    c.drain(5);
    c.run();
    c.assert_converged();
    let got = c.stats.received[5];
    c.stats.table(&format!(
        "{n} nodes, a node restarts after missing 200 changes: it received {got} B for {lacked} B of entries ({:.2}x)",
        got as f64 / lacked as f64
    ));
    assert!(c.stats.answerers.len() <= 2, "{:?}", c.stats.answerers);
    // Regions go whole: 200 changes among 2,000 files touch most buckets, each of
    // about two entries, and the two nodes step down once through all 32 groups.
    assert!(got <= 8 * lacked + 4096, "{got} B for {lacked} B");
    c.reset_stats();

    // A periodic round after all that: summaries only.
    c.round();
    assert_eq!(c.stats.count("summary"), n);
    assert_eq!(
        c.stats.repair_bytes(),
        c.stats.published["summary"].1,
        "a converged cluster only sends summaries"
    );
    println!(
        "{n} nodes, a quiet round: {} B of summaries in all",
        c.stats.repair_bytes()
    );
}

#[test]
fn twenty_nodes_answer_each_need_once() {
    many_nodes(20);
}

#[test]
fn fifty_nodes_answer_each_need_once() {
    many_nodes(50);
}

/// All nodes start at once, one holding the folder: nobody knows its peers yet, so the
/// first summaries go to everyone; what each receiver gets stays a small multiple of
/// the folder's entries.
#[test]
fn a_cold_start_of_twenty_nodes_costs_each_a_small_multiple_of_the_entries() {
    let n = 20;
    let mut c = Cluster::new(n, 2_000, 1);
    for i in 0..n {
        let now = c.now;
        c.engines[i].handle_connected(now);
        c.drain(i);
    }
    c.run();
    c.assert_converged();
    let folder = c.manifest_bytes(c.engines[0].entries().cloned().collect());
    let worst = *c.stats.received.iter().max().unwrap();
    c.stats.table(&format!(
        "{n} nodes start together, one holding 2,000 files: the node receiving most got {worst} B for {folder} B of entries ({:.2}x)",
        worst as f64 / folder as f64
    ));
    assert!(
        worst as f64 <= 2.0 * folder as f64,
        "{worst} B for {folder} B"
    );
}
