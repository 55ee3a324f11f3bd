//! The seeded workload: writes, in-place edits, appends, temp-file-and-rename writes,
//! renames and deletes of files and directories, on random nodes' folders, and the
//! same file edited on several nodes at once. Sizes from 0 B to 64 MiB, large files
//! rare, the tree kept under a byte budget.
//!
//! Every operation is recorded in the [`History`] the way the checker needs it: see
//! history.rs for why the workload never replaces content it has not seen. The
//! workload's temp names (`.NAME.wtmp-ID`) are ordinary names to mqsync, as an
//! editor's would be; each lives for one operation.

use crate::history::{Hash, History, Write, hash};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore};
use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Past this many bytes in a node's tree, no large file is written and deletes are
/// more likely (every node holds the whole tree; one of them on a tmpfs).
const TREE_BUDGET: u64 = 256 << 20;

pub struct Workload {
    pub rng: StdRng,
    pub history: History,
    next_id: u64,
    started: std::time::Instant,
    /// Operations done, by kind.
    pub ops: std::collections::BTreeMap<&'static str, u64>,
    /// Per node, the clock skew its files get as modification times (a machine
    /// whose clock is off stamps its files with that clock).
    pub skew_ms: Vec<i64>,
}

/// One file on a node's disk as a listing sees it.
struct Listed {
    rel: String,
    len: u64,
}

impl Workload {
    pub fn new(rng: StdRng, nodes: usize) -> Workload {
        Workload {
            skew_ms: vec![0; nodes],
            rng,
            history: History::default(),
            next_id: 1,
            started: std::time::Instant::now(),
            ops: Default::default(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// One random operation on one of `roots` (the folder of each node; `node` is
    /// the index the operation runs on, or several for a concurrent edit).
    pub fn step(&mut self, roots: &[PathBuf], during_fault: bool) {
        let node = self.rng.random_range(0..roots.len());
        let root = &roots[node];
        let files = list_files(root);
        let tree: u64 = files.iter().map(|f| f.len).sum();
        let over = tree > TREE_BUDGET;
        let weights: [(&'static str, u32); 11] = [
            ("create", 20),
            ("overwrite", 12),
            ("edit", 14),
            ("append", 10),
            ("replace", 12),
            ("rename", 7),
            ("delete", if over { 40 } else { 7 }),
            ("rename-dir", 3),
            ("delete-dir", if over { 10 } else { 2 }),
            ("concurrent", 10),
            ("mkdir", 3),
        ];
        let total: u32 = weights.iter().map(|w| w.1).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut kind = "create";
        for (k, w) in weights {
            if pick < w {
                kind = k;
                break;
            }
            pick -= w;
        }
        let existing = files.choose(&mut self.rng).map(|f| f.rel.clone());
        let cx = Ctx { node, during_fault };
        let done = match (kind, existing) {
            ("overwrite", Some(p)) => {
                let data = self.content(over);
                self.in_place(root, &p, cx, "overwrite", move |_| data);
                true
            }
            ("edit", Some(p)) => {
                let id = self.id();
                let seed = self.rng.random::<u64>();
                self.in_place(root, &p, cx, "edit", move |old| edit(old, id, seed));
                true
            }
            ("append", Some(p)) => {
                let extra = self.small(16, 64 << 10);
                self.in_place(root, &p, cx, "append", move |old| {
                    let mut v = old.to_vec();
                    v.extend_from_slice(&extra);
                    v
                });
                true
            }
            ("replace", Some(p)) => {
                let data = self.content(over);
                self.replace(root, &p, cx, "replace", data);
                true
            }
            ("rename", Some(p)) => {
                let to = self.new_path();
                rename_noreplace(&root.join(&p), &root.join(&to));
                true
            }
            ("delete", Some(p)) => {
                self.delete(root, &p);
                true
            }
            ("rename-dir", _) => {
                let (from, to) = (self.dir_name(), self.dir_name());
                if root.join(&from).is_dir() {
                    rename_noreplace(&root.join(&from), &root.join(&to));
                }
                true
            }
            ("delete-dir", _) => {
                let d = self.dir_name();
                self.delete_dir(root, &d);
                true
            }
            ("concurrent", Some(p)) => {
                // The same file on two or three nodes, before any of them can have
                // heard of the others' write: concurrent versions, so conflicts.
                let k = self.rng.random_range(2..=3.min(roots.len()));
                let mut nodes: Vec<usize> = (0..roots.len()).collect();
                for _ in 0..k {
                    let i = self.rng.random_range(0..nodes.len());
                    let n = nodes.swap_remove(i);
                    let cx = Ctx {
                        node: n,
                        during_fault,
                    };
                    let data = self.small(16, 256 << 10);
                    if self.rng.random_bool(0.5) {
                        self.replace(&roots[n], &p, cx, "concurrent", data);
                    } else {
                        self.in_place(&roots[n], &p, cx, "concurrent", move |_| data);
                    }
                }
                true
            }
            ("mkdir", _) => {
                let d = format!("{}/s{}", self.dir_name(), self.rng.random_range(0..3));
                let _ = fs::create_dir_all(root.join(d));
                true
            }
            _ => false,
        };
        let kind = if done { kind } else { "create" };
        if !done {
            let p = self.new_path();
            let data = self.content(over);
            if self.rng.random_bool(0.5) {
                self.replace(root, &p, cx, "create", data);
            } else {
                self.in_place(root, &p, cx, "create", move |_| data);
            }
        }
        *self.ops.entry(kind).or_default() += 1;
    }

    fn dir_name(&mut self) -> String {
        format!("d{}", self.rng.random_range(0..8))
    }

    /// A file name from a small name space, so nodes often touch the same files.
    fn new_path(&mut self) -> String {
        let f = format!("f{}.dat", self.rng.random_range(0..40));
        match self.rng.random_range(0..3) {
            0 => f,
            1 => format!("{}/{f}", self.dir_name()),
            _ => format!("{}/s{}/{f}", self.dir_name(), self.rng.random_range(0..3)),
        }
    }

    /// Unique bytes (the write id first) of a random size: 0 B (5 %), up to 4 KiB
    /// (55 %), up to 1 MiB (30 %), up to 8 MiB (9 %), up to 64 MiB (1 %; none over
    /// the budget).
    fn content(&mut self, over_budget: bool) -> Vec<u8> {
        let c = self.rng.random_range(0..100);
        match c {
            0..5 => Vec::new(),
            5..60 => self.small(16, 4 << 10),
            60..90 => self.small(4 << 10, 1 << 20),
            90..99 => self.small(1 << 20, 8 << 20),
            _ if over_budget => self.small(16, 4 << 10),
            _ => self.small(8 << 20, (64 << 20) + 1),
        }
    }

    fn small(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let len = self.rng.random_range(lo..hi);
        let mut v = vec![0u8; len];
        self.rng.fill_bytes(&mut v);
        let id = self.id().to_le_bytes();
        let n = id.len().min(v.len());
        v[..n].copy_from_slice(&id[..n]);
        v
    }

    fn record(&mut self, cx: Ctx, path: &str, data: &[u8], kind: &'static str, outcome: Outcome) {
        let w = Write {
            id: self.next_id,
            node: cx.node,
            path: path.to_string(),
            hash: hash(data),
            len: data.len() as u64,
            at_ms: self.elapsed_ms(),
            wall_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            completed: outcome == Outcome::Done,
            orphaned: outcome == Outcome::Orphaned,
            during_fault: cx.during_fault,
            kind,
        };
        self.history.record(w);
    }

    /// Writes through one descriptor: reads what the inode holds (the content
    /// replaced), writes `make(old)`, then checks that the path still names this
    /// inode (an apply may have renamed a new file over it meanwhile).
    fn in_place(
        &mut self,
        root: &Path,
        rel: &str,
        cx: Ctx,
        kind: &'static str,
        make: impl FnOnce(&[u8]) -> Vec<u8>,
    ) {
        let path = root.join(rel);
        // Set once the file is being changed: a write that fails halfway (a full
        // disk) has still destroyed what it read, as any program's would.
        let mut touched: Option<Hash> = None;
        let r = (|| -> std::io::Result<(Vec<u8>, Option<Hash>, Outcome)> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            let mut old = Vec::new();
            f.read_to_end(&mut old)?;
            let data = make(&old);
            let parent = (!old.is_empty()).then(|| hash(&old));
            touched = parent;
            if data.starts_with(&old) && !old.is_empty() {
                f.seek(SeekFrom::End(0))?;
                f.write_all(&data[old.len()..])?;
            } else {
                f.set_len(0)?;
                f.seek(SeekFrom::Start(0))?;
                f.write_all(&data)?;
            }
            skew_mtime(&f, self.skew_ms[cx.node])?;
            let ino = f.metadata()?.ino();
            let still = fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == ino);
            let outcome = if still {
                Outcome::Done
            } else {
                Outcome::Orphaned
            };
            Ok((data, parent, outcome))
        })();
        match r {
            Ok((data, parent, outcome)) => {
                if let (Some(p), Outcome::Done) = (parent, outcome) {
                    self.history.supersede(p);
                }
                self.record(cx, rel, &data, kind, outcome);
            }
            Err(_) => {
                if let Some(p) = touched {
                    self.history.supersede(p);
                }
                self.record(cx, rel, b"", kind, Outcome::Failed)
            }
        }
    }

    /// Temp file and rename: the temp file is exchanged with the target atomically,
    /// so what it replaced is read back from the temp name before that goes.
    fn replace(&mut self, root: &Path, rel: &str, cx: Ctx, kind: &'static str, data: Vec<u8>) {
        let path = root.join(rel);
        let tmp = temp_of(&path, self.id());
        let r = (|| -> std::io::Result<Option<Hash>> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&data)?;
            skew_mtime(&f, self.skew_ms[cx.node])?;
            drop(f);
            for _ in 0..3 {
                match renameat2(&tmp, &path, libc::RENAME_EXCHANGE) {
                    Ok(()) => {
                        // If the target was a directory (a name used both ways), undo.
                        if tmp.is_dir() {
                            renameat2(&tmp, &path, libc::RENAME_EXCHANGE)?;
                            return Err(std::io::Error::other("a directory"));
                        }
                        let old = fs::read(&tmp)?;
                        fs::remove_file(&tmp)?;
                        return Ok((!old.is_empty()).then(|| hash(&old)));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        match renameat2(&tmp, &path, libc::RENAME_NOREPLACE) {
                            Ok(()) => return Ok(None),
                            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(std::io::Error::other("target kept changing"))
        })();
        match r {
            Ok(parent) => {
                if let Some(p) = parent {
                    self.history.supersede(p);
                }
                self.record(cx, rel, &data, kind, Outcome::Done);
            }
            Err(_) => {
                let _ = fs::remove_file(&tmp);
                self.record(cx, rel, &data, kind, Outcome::Failed);
            }
        }
    }

    /// Deletes a file after taking it out of the path (a rename to a private name),
    /// so the content deleted is the content read.
    fn delete(&mut self, root: &Path, rel: &str) {
        let path = root.join(rel);
        let tmp = temp_of(&path, self.id());
        if renameat2(&path, &tmp, libc::RENAME_NOREPLACE).is_err() {
            return;
        }
        if tmp.is_dir() {
            let _ = renameat2(&tmp, &path, libc::RENAME_NOREPLACE);
            return;
        }
        if let Ok(old) = fs::read(&tmp)
            && !old.is_empty()
        {
            self.history.supersede(hash(&old));
        }
        let _ = fs::remove_file(&tmp);
    }

    /// `rm -r`, file by file, so that each content deleted is known.
    fn delete_dir(&mut self, root: &Path, rel: &str) {
        let dir = root.join(rel);
        if !dir.is_dir() {
            return;
        }
        for f in list(&dir, true) {
            self.delete(&dir, &f.rel);
        }
        let mut dirs = list_dirs(&dir);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in dirs {
            let _ = fs::remove_dir(d);
        }
        let _ = fs::remove_dir(&dir);
    }

    /// A 4 MiB file another node must store (written while the full-disk node is full).
    pub fn write_for_full_disk(&mut self, root: &Path, cx: Ctx) {
        let data = self.small(4 << 20, (4 << 20) + 1);
        let rel = format!("full/x{}.dat", self.next_id);
        self.replace(root, &rel, cx, "for-full-disk", data);
    }

    /// `n` files created in `dir` on a node and all but `keep` deleted again, as fast
    /// as possible (the inotify-overflow fault); the kept ones are recorded.
    pub fn burst(&mut self, root: &Path, dir: &str, n: usize, keep: usize, cx: Ctx) -> usize {
        let d = root.join(dir);
        let mut made = 0;
        for k in 0..n {
            let p = d.join(format!("b{k}.dat"));
            if fs::write(&p, k.to_le_bytes()).is_ok() {
                made += 1;
            }
            if k + keep < n {
                let _ = fs::remove_file(&p);
            }
        }
        for k in n - keep..n {
            let rel = format!("{dir}/b{k}.dat");
            let data = self.small(16, 1024);
            self.in_place(root, &rel, cx, "burst", move |_| data);
        }
        made
    }
}

#[derive(Clone, Copy)]
pub struct Ctx {
    pub node: usize,
    pub during_fault: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Failed,
    Orphaned,
}

/// `old` with a range overwritten by unique bytes (or fresh bytes if it was empty).
fn edit(old: &[u8], id: u64, seed: u64) -> Vec<u8> {
    let mut v = old.to_vec();
    if v.len() < 16 {
        v.resize(16, 0);
    }
    let len = 16.max((v.len() / 8).min(64 << 10));
    let off = (seed as usize) % (v.len() - len.min(v.len()) + 1);
    let end = (off + len).min(v.len());
    let mut x = seed | 1;
    for b in &mut v[off..end] {
        // xorshift: cheap bytes, determined by the seed.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v[off..off + 8].copy_from_slice(&id.to_le_bytes());
    v
}

/// Sets the file's modification time to now plus `skew_ms` (nothing if 0).
fn skew_mtime(f: &fs::File, skew_ms: i64) -> std::io::Result<()> {
    if skew_ms == 0 {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let t = now + skew_ms;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: t.div_euclid(1000),
            tv_nsec: t.rem_euclid(1000) * 1_000_000,
        },
    ];
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and a two-element array, as futimens requires.
    if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn temp_of(path: &Path, id: u64) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.wtmp-{id}"))
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let a = CString::new(from.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let b = CString::new(to.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: two valid NUL-terminated paths; renameat2 reads them only.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn rename_noreplace(from: &Path, to: &Path) {
    if let Some(p) = to.parent() {
        let _ = fs::create_dir_all(p);
    }
    if from == to || to.starts_with(from) {
        return;
    }
    let _ = renameat2(from, to, libc::RENAME_NOREPLACE);
}

/// Files below `root` the workload may pick: not the marker, not a temp name, not a
/// conflict copy (those are mqsync's to make; a directory delete still takes them).
fn list_files(root: &Path) -> Vec<Listed> {
    list(root, false)
}

fn list(root: &Path, conflict_copies: bool) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".mqsync"
                || name.contains(".wtmp-")
                || name.contains(".mqsync-tmp-")
                || (!conflict_copies && name.contains(".sync-conflict-"))
            {
                continue;
            }
            let Ok(rel) = p.strip_prefix(root) else {
                continue;
            };
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(Listed {
                rel: rel.to_string_lossy().into_owned(),
                len,
            });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn list_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
                out.push(e.path());
            }
        }
    }
    out
}
