//! The checker, run after each round has healed:
//! - every node's tree converges to the same one (paths, types, modes, sizes, file
//!   modification times and contents), and `mqsync wait` agrees;
//! - every completed write is present (at its path, at the path a rename took it to,
//!   or as a conflict copy: contents are unique, so the hash anywhere in the tree
//!   counts) or was superseded by a causally later operation (history.rs);
//! - no temp file remains (mqsync's `.mqsync-tmp-` nor the workload's `.wtmp-`);
//! - nothing outside the folder roots changed (each node's home holds a sentinel tree
//!   beside its folder and state directory, and nothing else may appear there);
//! - no process exited but by the nemesis's hand;
//! - every full disk was reported in the node's status while it lasted.

use crate::cluster::Cluster;
use crate::history::{Hash, History, hash, hex};
use crate::nemesis::Nemesis;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Path → (is a directory, permission bits, size, mtime in seconds), without reading.
type Quick = BTreeMap<String, (bool, u32, u64, i64)>;

/// Path → description with the content hash, and every content hash in the tree.
struct Full {
    tree: BTreeMap<String, String>,
    hashes: HashSet<Hash>,
}

fn walk(root: &Path, mut each: impl FnMut(&str, &Path, &fs::Metadata)) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            let Ok(rel) = p.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            if rel == ".mqsync" {
                continue; // the marker is per node
            }
            if md.is_dir() {
                stack.push(p.clone());
            }
            each(&rel, &p, &md);
        }
    }
}

fn quick(root: &Path) -> Quick {
    let mut out = Quick::new();
    walk(root, |rel, _, md| {
        let v = if md.is_dir() {
            (true, md.mode() & 0o7777, 0, 0)
        } else {
            (false, md.mode() & 0o7777, md.len(), md.mtime())
        };
        out.insert(rel.to_string(), v);
    });
    out
}

fn read_hash(p: &Path) -> Option<Hash> {
    let mut f = fs::File::open(p).ok()?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(*h.finalize().as_bytes())
}

fn full(root: &Path) -> Full {
    let mut tree = BTreeMap::new();
    let mut hashes = HashSet::new();
    walk(root, |rel, p, md| {
        let v = if md.is_dir() {
            format!("dir {:o}", md.mode() & 0o7777)
        } else {
            let h = read_hash(p).unwrap_or([0; 32]);
            hashes.insert(h);
            format!(
                "file {:o} {} {} mtime {}",
                md.mode() & 0o7777,
                md.len(),
                hex(&h),
                md.mtime()
            )
        };
        tree.insert(rel.to_string(), v);
    });
    Full { tree, hashes }
}

/// The first few differences between two trees.
fn diff<V: std::fmt::Debug + PartialEq>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
) -> String {
    let mut lines = vec![];
    for (k, v) in a {
        match b.get(k) {
            None => lines.push(format!("only in first: {k} {v:?}")),
            Some(w) if w != v => lines.push(format!("differs: {k}: {v:?} vs {w:?}")),
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            lines.push(format!("only in second: {k} {v:?}"));
        }
    }
    let n = lines.len();
    lines.truncate(8);
    format!("{n} differences: {}", lines.join("; "))
}

/// What the checker found in a converged tree.
pub struct Converged {
    pub after: Duration,
    pub files: usize,
    pub hashes: HashSet<Hash>,
    pub conflict_copies: usize,
    pub temps: Vec<String>,
}

/// Polls every node's tree until all are equal (cheaply, then by content), within
/// `timeout`; the time it took is the heal-to-convergence time.
pub fn converge(c: &Cluster, timeout: Duration) -> Result<Converged, String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        let q: Vec<Quick> = c.nodes.iter().map(|n| quick(&n.folder)).collect();
        if let Some(k) = (1..q.len()).find(|&k| q[k] != q[0]) {
            last = format!(
                "{} vs {}: {}",
                c.nodes[0].name,
                c.nodes[k].name,
                diff(&q[0], &q[k])
            );
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        let after = start.elapsed();
        let f: Vec<Full> = c.nodes.iter().map(|n| full(&n.folder)).collect();
        if let Some(k) = (1..f.len()).find(|&k| f[k].tree != f[0].tree) {
            last = format!(
                "{} vs {}: {}",
                c.nodes[0].name,
                c.nodes[k].name,
                diff(&f[0].tree, &f[k].tree)
            );
            continue;
        }
        let f0 = f.into_iter().next().ok_or("no node")?;
        let name = |p: &String| p.rsplit('/').next().unwrap_or(p).to_string();
        return Ok(Converged {
            after,
            files: f0.tree.values().filter(|v| v.starts_with("file")).count(),
            conflict_copies: f0
                .tree
                .keys()
                .filter(|p| name(p).contains(".sync-conflict-"))
                .count(),
            temps: f0
                .tree
                .keys()
                .filter(|p| name(p).contains(".mqsync-tmp-") || name(p).contains(".wtmp-"))
                .cloned()
                .collect(),
            hashes: f0.hashes,
        });
    }
    Err(format!(
        "the trees did not converge within {timeout:?}: {last}"
    ))
}

/// Each node's home as it must stay: its entries and the sentinel tree's contents.
pub struct Outside(Vec<(BTreeSet<String>, BTreeMap<String, Hash>)>);

/// Writes the sentinel tree in every node's home and takes the baseline.
pub fn outside_baseline(c: &Cluster) -> std::io::Result<Outside> {
    for n in &c.nodes {
        let o = n.home.join("outside");
        fs::create_dir_all(o.join("sub"))?;
        fs::write(o.join("sibling.txt"), format!("beside {}'s folder", n.name))?;
        fs::write(o.join("sub/deeper.bin"), hash(n.name.as_bytes()))?;
    }
    Ok(outside_now(c))
}

fn outside_now(c: &Cluster) -> Outside {
    Outside(
        c.nodes
            .iter()
            .map(|n| {
                let entries = fs::read_dir(&n.home)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|e| e != "filler" && e != "lost+found")
                            .collect()
                    })
                    .unwrap_or_default();
                let mut files = BTreeMap::new();
                walk(&n.home.join("outside"), |rel, p, md| {
                    if !md.is_dir() {
                        files.insert(rel.to_string(), read_hash(p).unwrap_or([0; 32]));
                    }
                });
                (entries, files)
            })
            .collect(),
    )
}

/// Everything the round must satisfy once converged; an empty list is a pass.
pub fn check_round(
    c: &Cluster,
    history: &History,
    nemesis: &Nemesis,
    conv: &Converged,
    outside: &Outside,
) -> Vec<String> {
    let mut fails = vec![];
    for w in history.lost(&conv.hashes).take(20) {
        fails.push(format!(
            "lost write #{}: {} wrote {} ({} B, {}) at {:.1} s ({}{}), found nowhere and superseded by nothing",
            w.id,
            c.nodes[w.node].name,
            w.path,
            w.len,
            hex(&w.hash),
            w.at_ms as f64 / 1000.0,
            w.kind,
            if w.during_fault { ", during a fault" } else { "" }
        ));
    }
    for t in &conv.temps {
        fails.push(format!("a temp file remains: {t}"));
    }
    let now = outside_now(c);
    for (k, (was, is)) in outside.0.iter().zip(&now.0).enumerate() {
        if was.0 != is.0 {
            fails.push(format!(
                "{}'s home (outside its folder root) held {:?} and now holds {:?}",
                c.nodes[k].name, was.0, is.0
            ));
        }
        if was.1 != is.1 {
            let changed: Vec<&String> = was
                .1
                .keys()
                .chain(is.1.keys())
                .filter(|p| was.1.get(*p) != is.1.get(*p))
                .collect();
            fails.push(format!(
                "{}'s sentinel files outside its folder root changed: {changed:?}",
                c.nodes[k].name
            ));
        }
    }
    for e in &c.unexpected_exits {
        fails.push(format!("a process died without the nemesis: {e}"));
    }
    for d in &nemesis.disk_full {
        if !d.reported {
            fails.push(format!(
                "{}'s full disk was never reported in its status ({})",
                d.node, d.what
            ));
        }
    }
    fails
}

/// The number of completed writes that were lost (for the report).
pub fn lost_count(history: &History, conv: &Converged) -> usize {
    history.lost(&conv.hashes).count()
}
